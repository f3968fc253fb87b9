//! The consumer's figures that need more than a line where they happen.
//! The names and what they mean: docs/OPERATIONS.md, "Metrics".

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Instant;

use obt_contract::Envelope;
use time::OffsetDateTime;

/// The identities this process last saw parked: the gauge
/// `obt_consumer_identities_parked` is their number. Counting them in the
/// table would take a Scan of it; what the consumer sees is free: an
/// identity enters when it is parked or an event of it is held, and leaves
/// when an event of it is applied in the ordinary way or its gap heals.
static PARKED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// `identity` was parked, or found parked.
pub fn parked(identity: &str) {
    let mut parked = PARKED.lock().unwrap_or_else(PoisonError::into_inner);
    if parked.insert(identity.to_owned()) {
        publish(&parked);
    }
}

/// `identity` flows: an event of it was applied, or it was unparked.
pub fn flowing(identity: &str) {
    let mut parked = PARKED.lock().unwrap_or_else(PoisonError::into_inner);
    if parked.remove(identity) {
        publish(&parked);
    }
}

#[allow(clippy::cast_precision_loss)] // far below 2^53
fn publish(parked: &HashSet<String>) {
    metrics::gauge!("obt_consumer_identities_parked").set(parked.len() as f64);
}

/// `event` was applied; the apply took since `started`.
pub fn applied(event: &Envelope, started: Instant) {
    metrics::counter!("obt_consumer_events_applied_total").increment(1);
    metrics::histogram!("obt_consumer_apply_duration_seconds").record(started.elapsed());
    let end_to_end = (OffsetDateTime::now_utc() - event.occurred_at).as_seconds_f64();
    metrics::histogram!("obt_consumer_end_to_end_seconds").record(end_to_end.max(0.0));
}
