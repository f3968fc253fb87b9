//! The stream relay: moves the events that the api wrote into each
//! aggregate's `outbox` attribute to the SQS FIFO queue, in `seq` order per
//! identity, and then removes them from the item.
//!
//! One implementation of "stream records to SQS", independent of how the
//! records arrive:
//! - [`change`]: a stream record reduced to what the relay needs
//!   ([`Change`]), from the SDK's types or from Lambda events, through one
//!   decoding path.
//! - [`relay`]: the core ([`Relay::handle`]): which events to publish, in
//!   which order, and the acknowledgement that removes them.
//! - [`publisher`]: `SendMessageBatch` to the FIFO queue, without ever
//!   letting a partial failure reorder one identity's events.
//! - [`image`]: an item read leniently, so that one entry the relay cannot
//!   read holds back its own identity only.
//! - [`outbox`]: reads, acknowledges and parks items of the api's table.
//! - [`backoff`]: the waits between retries.
//! - [`metrics`]: how far behind the stream head the relay reads.
//!
//! The drivers:
//! - [`daemon`]: reads the stream itself (shards, iterators), for EC2 or
//!   any long-running host; several instances share the shards through
//!   [`lease`]s, which also hold each shard's checkpoint.
//! - [`lambda`]: the function behind a Lambda event source mapping on the
//!   stream; answers with the first record not done (partial batch
//!   response), so that the retry starts there and order holds.
//! - `poller` (cargo feature `mysql`): the MySQL mode's relay, which polls
//!   the outbox table `obt` under a leader lock and publishes with the same
//!   [`publisher`].
//! - [`sweeper`]: finds items whose events waited too long (the stream lost
//!   them) through a sparse index, and hands them to the same core. Runs
//!   inside the daemon, or as a scheduled Lambda.

pub mod backoff;
pub mod change;
pub mod config;
pub mod daemon;
pub mod image;
pub mod lambda;
pub mod lease;
pub mod metrics;
pub mod outbox;
#[cfg(feature = "mysql")]
pub mod poller;
pub mod publisher;
pub mod relay;
pub mod startup;
pub mod sweeper;

pub use change::Change;
pub use relay::{HandleError, Relay, RelayError};
