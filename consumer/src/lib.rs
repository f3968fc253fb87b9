//! The outboxtable consumer: receives `SpendingRecorded` envelopes from the
//! SQS FIFO queue and applies each to the consumer's own records (its
//! DynamoDB table, or its MySQL database with the `mysql` feature) exactly
//! once and, per identity, in `seq` order.
//!
//! Module map, from the edge inwards:
//! - [`config`]: the [`Settings`] (flags and environment variables).
//! - [`queue`]: the SQS side: long-poll receive, delete after commit,
//!   visibility extensions. [`Received`] is a message reduced to what the
//!   consumer needs.
//! - [`dead_letter`]: the dead-letter queue, written to explicitly (one
//!   message alone, its reason as attributes) and read back per identity.
//! - [`batch`]: the order-keeping core, free of AWS: groups a received
//!   batch by `MessageGroupId`, runs groups concurrently and each group's
//!   messages one by one, and stops a group at its first failure so that
//!   nothing later in it is applied before it.
//! - [`store`]: the consumer's records behind the [`Ledger`] trait, chosen
//!   by `OBT_STORAGE`: one conditional `TransactWriteItems` per event
//!   ([`SpendingTable`]) or one MySQL transaction (`MySqlLedger`), and the
//!   classification of an event not applied as a gap, a conflict or a
//!   transient failure.
//! - [`parking`]: parked identities and their held events; the
//!   operator's [`parking::list_parked`] and [`parking::retry`].
//! - [`read_model`]: what the records hold, read back ([`AppliedIdentity`]),
//!   for `consumer-show`, tests, end-to-end checks and operators.
//! - [`consumer`]: ties them together: the pollers, the handling of one
//!   message, graceful shutdown ([`Consumer::serve`]).

pub mod batch;
pub mod config;
pub mod consumer;
pub mod dead_letter;
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
pub use read_model::{
    AppliedIdentity, AppliedSpending, IdentityHead, list_identities, load_identity,
};
#[cfg(feature = "mysql")]
pub use store::MySqlLedger;
pub use store::{Applied, ApplyError, HoldError, Ledger, OpenError, SpendingTable, StoreError};
