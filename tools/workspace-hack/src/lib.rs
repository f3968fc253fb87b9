//! No code: this crate's manifest turns on features of shared dependencies
//! in every build (see its Cargo.toml for why).
