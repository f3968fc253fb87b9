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

/// The key of an event in the outbox map.
pub fn outbox_key(seq: u64) -> String {
    seq.to_string()
}

/// The part of an aggregate item (from the table or a stream image) that
/// the relay reads.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxImage {
    pub identity: String,
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
