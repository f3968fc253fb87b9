//! The outboxtable api: records a spending and its `SpendingRecorded` event
//! in one atomic write, and reports an identity's totals. The write is one
//! DynamoDB transaction on the identity's item by default, or one MySQL
//! transaction (`OBT_STORAGE=mysql`, in builds with the cargo feature
//! `mysql`); docs/ARCHITECTURE.md says how and why.
//!
//! Map of the modules, from the HTTP edge down:
//!
//! - [`settings`]: the command line and environment ([`Settings`]).
//! - [`startup`]: builds the router ([`app`]), binds the listener and runs
//!   the server until a shutdown signal ([`Application`]).
//! - [`routes`]: the HTTP handlers; they parse and answer, nothing more.
//! - [`error`]: the one error type of the HTTP layer ([`ApiError`]), how
//!   each variant answers, and the conversions from the errors below.
//! - [`auth`]: the bearer tokens of the spending routes (JWT against a
//!   JWKS, as Amazon Cognito issues them) and the [`auth::Principal`].
//! - [`rate_limit`]: the per-client rate limit of the spending routes.
//! - [`metrics`]: requests by route, method and status, and the POST's
//!   latency (the other figures are counted where they happen).
//! - [`input`]: turns a request body into a validated [`input::NewSpending`]
//!   without letting money pass through a float, collecting every field
//!   error ([`input::InputError`]).
//! - [`idempotency`]: the `Idempotency-Key` header: the key, the request's
//!   fingerprint, and the choice of an idempotent write
//!   ([`idempotency::Idempotency`]).
//! - [`store`]: the only module that speaks to a database, behind
//!   [`Store`]: [`DynamoDbStore`] and `MySqlStore`; what a write answers,
//!   and keeps under a key, is its own [`store::StoredOutcome`].

pub mod auth;
pub mod config;
pub mod error;
pub mod idempotency;
pub mod input;
pub mod metrics;
pub mod rate_limit;
pub mod routes;
pub mod startup;
pub mod store;

pub use config::Settings;
pub use error::ApiError;
pub use startup::{AppState, Application, app};
#[cfg(feature = "mysql")]
pub use store::MySqlStore;
pub use store::{
    DynamoDbStore, Outcome, RetryPolicy, Store, StoreError, StoreOptions, StoredOutcome,
};
