//! The outboxtable consumer: receives `SpendingRecorded` envelopes from the
//! SQS FIFO queue and applies each to its own records exactly once and, per
//! identity, in `seq` order (docs/ARCHITECTURE.md, "The consumer").
//!
//! Module map, from the edge inwards:
//! - [`config`]: the [`Settings`] (flags and environment variables).
//! - [`queue`]: receive, delete after commit, visibility extensions.
//! - [`dead_letter`]: the dead-letter queue, written to one message at a
//!   time and read back per identity.
//! - [`batch`]: the order-keeping core, free of AWS: groups run
//!   concurrently, each group's messages one by one, a group stopped at
//!   its first failure.
//! - [`store`]: the records, in DynamoDB ([`DynamoDbLedger`]) or MySQL
//!   (`MySqlLedger`), behind the write path [`Ledger`] and the read path
//!   [`LedgerReader`]; [`read_model`]: the values the read path returns.
//! - [`parking`]: parked identities, held events, the operator's retry.
//! - [`metrics`]: the figures counted in more than a line.
//! - [`consumer`]: the pollers, one message's handling, graceful shutdown
//!   ([`Consumer::serve`]).

pub mod batch;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod metrics;
pub mod parking;
pub mod queue;
pub mod read_model;
pub mod store;

pub use config::{Settings, StorageArgs};
pub use consumer::{
    Consumer, PoisonReason, Redelivery, RunError, StartupError, StopReason, StoreRetry,
};
pub use dead_letter::DeadLetterQueue;
pub use obt_runtime::DatabaseUrl;
pub use queue::{Queue, QueueError, Received};
pub use read_model::{AppliedIdentity, AppliedSpending, IdentityHead};
#[cfg(feature = "mysql")]
pub use store::MySqlLedger;
pub use store::{
    Applied, ApplyError, DynamoDbLedger, HoldError, Ledger, LedgerError, LedgerReader, OpenError,
    Records,
};
