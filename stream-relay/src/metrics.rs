//! The relay's figures that need more than a line where they happen: how
//! far behind the stream head the shards are read. The names and what they
//! mean: docs/OPERATIONS.md, "Metrics".

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far behind the head of the stream the relay reads, in milliseconds
/// (the largest of the shards this process reads).
pub const BEHIND_STREAM_HEAD: &str = "obt_relay_behind_stream_head_milliseconds";

/// The lag of each shard this process reads: the gauge is their maximum.
static SHARDS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Mutex::default);

/// Records a batch of stream records read from `shard`: `last_created` is
/// the `ApproximateCreationDateTime` of its last record in milliseconds
/// since the epoch, `None` for an empty batch (the reader is at the head:
/// 0).
pub fn shard_read(shard: &str, records: usize, last_created_millis: Option<i64>) {
    metrics::counter!("obt_relay_stream_records_read_total")
        .increment(u64::try_from(records).unwrap_or(u64::MAX));
    let lag = last_created_millis.map_or(0, |created| behind(created, SystemTime::now()));
    let mut shards = SHARDS.lock().unwrap_or_else(PoisonError::into_inner);
    shards.insert(shard.to_owned(), lag);
    publish(&shards);
}

/// `shard` is no longer read by this process (its lease went, or it ended).
pub fn shard_left(shard: &str) {
    let mut shards = SHARDS.lock().unwrap_or_else(PoisonError::into_inner);
    shards.remove(shard);
    publish(&shards);
}

/// One batch handed to the Lambda relay: the same figures, for the records
/// of one invocation.
pub fn batch_received(records: usize, last_created_millis: Option<i64>) {
    metrics::counter!("obt_relay_stream_records_read_total")
        .increment(u64::try_from(records).unwrap_or(u64::MAX));
    let lag = last_created_millis.map_or(0, |created| behind(created, SystemTime::now()));
    #[allow(clippy::cast_precision_loss)] // exact below 2^53 ms
    metrics::gauge!(BEHIND_STREAM_HEAD).set(lag as f64);
}

#[allow(clippy::cast_precision_loss)] // exact below 2^53 ms
fn publish(shards: &HashMap<String, u64>) {
    let max = shards.values().copied().max().unwrap_or(0);
    metrics::gauge!(BEHIND_STREAM_HEAD).set(max as f64);
}

/// Milliseconds from `created_millis` to `now`; 0 for a time in the future
/// (clocks differ).
fn behind(created_millis: i64, now: SystemTime) -> u64 {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    u64::try_from(now.saturating_sub(created_millis)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_lag_is_the_time_since_the_last_record_was_written_and_never_negative() {
        let now = UNIX_EPOCH + Duration::from_millis(10_000);
        assert_eq!(behind(7_500, now), 2_500);
        assert_eq!(behind(12_000, now), 0, "a clock ahead is no lag");
    }
}
