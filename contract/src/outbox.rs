//! The layout of the api's aggregate item, as far as the relay needs it:
//! where the outbox lives and how its entries are keyed.
//!
//! The outbox is a map from `seq` (as decimal text) to the [`Envelope`],
//! not a list: the relay removes exactly the entries it published by key
//! (`REMOVE outbox.#seq`), which is idempotent and cannot hit a neighbour
//! the way a list index could after a concurrent change.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::envelope::Envelope;

/// The partition key of the api's table.
pub const IDENTITY_ATTR: &str = "identity";
/// The attribute holding the events not yet acknowledged by the relay.
pub const OUTBOX_ATTR: &str = "outbox";
/// The seq of the identity's last event (the optimistic-concurrency token).
pub const VERSION_ATTR: &str = "version";

/// Epoch milliseconds of the oldest event that may still be pending: set
/// with `if_not_exists` by every write that adds an event, removed by the
/// acknowledgement that empties the outbox. Never later than the truth, so
/// an item is swept too early at worst, never missed.
pub const PENDING_SINCE_ATTR: &str = "pending_since";
/// The value of [`PENDING_SINCE_ATTR`] for a time: milliseconds since the
/// Unix epoch (0 before it). The api writes it, the sweeper compares it.
pub fn pending_since(at: time::OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The item's partition of [`PENDING_INDEX`], [`pending_bucket`] of its
/// identity.
pub const PENDING_BUCKET_ATTR: &str = "pending_bucket";
/// The sparse global secondary index on (`pending_bucket`, `pending_since`).
pub const PENDING_INDEX: &str = "pending";
/// How many partitions [`PENDING_INDEX`] is spread over.
pub const PENDING_BUCKETS: u32 = 16;

/// The [`PENDING_INDEX`] partition of an identity: FNV-1a of its bytes,
/// modulo [`PENDING_BUCKETS`]. Stable across processes and releases (the
/// standard library's hasher is not), since it is stored.
pub fn pending_bucket(identity: &str) -> u32 {
    let hash = identity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash % u64::from(PENDING_BUCKETS)) as u32
}

/// Set by the relay on an identity whose next event can never be published
/// as it is (SQS refuses it, or the relay cannot read it): a map with the
/// `cause`, the `reason` in words, the `seq` of the event held (when known)
/// and the time (`at`, RFC 3339). While it is there, no event of the
/// identity is published; the events stay in the outbox, in order, until an
/// operator repairs the item and removes the mark (`obt-admin parked
/// retry`). Other identities are not held back (invariant 6).
pub const PARKED_ATTR: &str = "parked";
/// Epoch milliseconds of the parking, beside [`PARKED_ATTR`]: the sort key
/// of [`PARKED_INDEX`].
pub const PARKED_AT_ATTR: &str = "parked_at";
/// The sparse global secondary index on (`pending_bucket`, `parked_at`):
/// only parked items are in it, so listing them reads no other item.
pub const PARKED_INDEX: &str = "parked";

/// The key of an event in the outbox map.
pub fn outbox_key(seq: u64) -> String {
    seq.to_string()
}

/// The part of an aggregate item (from the table or a stream image) that
/// the relay reads.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxImage {
    pub identity: String,
    /// The seq of the item's last event (absent only on a malformed item).
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub outbox: BTreeMap<String, Envelope>,
}

impl OutboxImage {
    /// The pending events in `seq` order.
    pub fn events_in_order(&self) -> Vec<&Envelope> {
        let mut events: Vec<&Envelope> = self.outbox.values().collect();
        events.sort_by_key(|e| e.seq);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_buckets_are_stable_and_in_range() {
        // Stored values: a change here strands items in the wrong bucket.
        // (Computed independently, with Python's FNV-1a.)
        assert_eq!(pending_bucket(""), 5);
        assert_eq!(pending_bucket("AB1"), 1);
        assert_eq!(pending_bucket("identity-42"), 0);
        let used: std::collections::HashSet<u32> = (0..1000)
            .map(|i| pending_bucket(&format!("id-{i}")))
            .collect();
        assert_eq!(used.len(), PENDING_BUCKETS as usize, "every bucket is used");
        assert!(used.iter().all(|b| *b < PENDING_BUCKETS));
    }
}
