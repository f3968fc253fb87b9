//! The outboxtable api: records a spending and its `SpendingRecorded` event
//! in one atomic write, and reports an identity's totals. The write is one
//! DynamoDB write (a conditional update of the identity's item) by default, or one MySQL transaction
//! (`OBT_STORAGE=mysql`, in builds with the cargo feature `mysql`).
//!
//! Map of the modules:
//!
//! - [`settings`]: the command line and environment ([`Settings`]).
//! - [`startup`]: builds the router ([`app`]), binds the listener and runs
//!   the server until a shutdown signal ([`Application`]).
//! - [`routes`]: the HTTP handlers; they parse and answer, nothing more.
//! - [`idempotency`]: the `Idempotency-Key` header: the key, the request's
//!   fingerprint, the stored 201 answer that a retry gets again.
//! - [`input`]: turns a request body into a validated [`input::NewSpending`]
//!   without letting money pass through a float, collecting every field
//!   error.
//! - [`store`]: the only module that speaks to a database, behind
//!   [`Store`]: [`store::dynamodb`] (the aggregate item, its outbox,
//!   optimistic concurrency and the conflict retries) and `store::mysql`
//!   (the same in one transaction under a row lock).
//! - [`auth`]: the bearer tokens of the spending routes (JWT against a
//!   JWKS, as Amazon Cognito issues them) and the [`auth::Principal`].
//! - [`rate_limit`]: the per-client rate limit of the spending routes.
//! - [`error`]: the one error type of the HTTP layer ([`ApiError`]) and how
//!   each variant answers.
//!
//! The invariant this crate owns is atomicity: a POST is exactly one
//! conditional update of the item that updates the totals and adds the event to the
//! item's outbox (or one MySQL transaction that inserts the spending and
//! its outbox row), so the spending and its event are stored together or
//! not at all, and a rejected request writes nothing. With an
//! `Idempotency-Key`, the key's record joins that same write (a
//! TransactWriteItems of the key's Put and the item's update, or one more
//! INSERT in the transaction).

pub mod auth;
pub mod error;
pub mod idempotency;
pub mod input;
pub mod rate_limit;
pub mod routes;
pub mod settings;
pub mod startup;
pub mod store;

pub use error::ApiError;
pub use settings::Settings;
pub use startup::{AppState, Application, app};
#[cfg(feature = "mysql")]
pub use store::MySqlStore;
pub use store::{RetryPolicy, SpendingStore, Store, StoreError, StoreOptions};
