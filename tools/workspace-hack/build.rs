//! Empty: cargo reads a crate's build-dependencies only when it has a
//! build script, and this crate's are there for their features
//! (Cargo.toml).
fn main() {}
