//! The stream relay: moves the events that the api wrote into each
//! aggregate's `outbox` attribute to the SQS FIFO queue, in `seq` order per
//! identity, and then removes them from the item.
//!
//! One implementation of "stream records to SQS", independent of how the
//! records arrive:
//! - [`change`]: a stream record reduced to what the relay needs
//!   ([`Change`]), from the SDK's types (and, later, from Lambda events).
//! - [`relay`]: the core ([`Relay::handle`]): which events to publish, in
//!   which order, and the acknowledgement that removes them.
//! - [`publisher`]: `SendMessageBatch` to the FIFO queue, without ever
//!   letting a partial failure reorder one identity's events.
//! - [`outbox`]: reads and acknowledges outbox entries on the api's table.
//! - [`backoff`]: the waits between retries.
//!
//! The drivers:
//! - [`daemon`]: reads the stream itself (shards, iterators, checkpoints in
//!   [`checkpoint`]), for EC2 or any long-running host.

pub mod backoff;
pub mod change;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod outbox;
pub mod publisher;
pub mod relay;
pub mod startup;

pub use change::Change;
pub use relay::{Relay, RelayError};
