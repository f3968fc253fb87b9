//! The core of the relay, shared by every driver: given stream changes in
//! shard order, publish the events they add, in `seq` order per identity,
//! then acknowledge them on the item.
//!
//! Which events to publish: every pending event of the changed item above
//! the identity's "published up to" mark, not just the one the write added.
//! Normally that is the same thing; but when the stream lost a record (data
//! trimmed after 24 h, a stream re-created) the older event is still
//! pending on the item and goes out first, so the consumer never sees a
//! gap. The mark is kept in memory and, when unknown (a restart, a new
//! identity), read from the item: an event below the oldest pending one was
//! acknowledged, hence published. Re-sending is always safe (SQS
//! deduplicates by event id for 5 minutes, the consumer for ever); losing
//! is not, so a mark is only ever raised to what SQS accepted, and a
//! failure tells the caller where to resume.
//!
//! Where to resume ([`HandleError::first_unfinished`]): the first change
//! that is not fully done, so that a driver that can retry part of a batch
//! (the Lambda's partial batch response) starts there and keeps each
//! identity's order. Every change before it had all its events accepted by
//! SQS and acknowledged. A driver that retries whole batches (the daemon)
//! just retries.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use futures::{StreamExt, stream};
use obt_contract::Envelope;

use crate::change::Change;
use crate::outbox::{OutboxError, OutboxTable};
use crate::publisher::{PublishError, Publisher};

/// DynamoDB calls on different items made at once (mark look-ups,
/// acknowledgements): a batch of records may touch hundreds of items.
const CONCURRENT_ITEM_CALLS: usize = 32;

/// Identities whose mark is kept in memory; past that the cache starts
/// afresh (a miss only costs one read).
const MARK_CACHE_LIMIT: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// A [`Relay::handle`] that did not finish every change.
///
/// The message includes the cause, since drivers log it as one line; the
/// cause is also the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("change {first_unfinished} and the ones after it are not done: {error}")]
pub struct HandleError {
    /// Index into the `changes` given to [`Relay::handle`] of the first one
    /// not fully done. Every change before it had its events accepted by
    /// SQS and acknowledged; this one and the ones after it must be handled
    /// again (what of them was done already is then skipped or re-sent,
    /// which is harmless).
    pub first_unfinished: usize,
    /// What went wrong at that change (when several things failed, the
    /// others are logged).
    #[source]
    pub error: RelayError,
}

/// Publishes and acknowledges outbox events. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Relay {
    publisher: Publisher,
    outbox: OutboxTable,
    /// Per identity, the highest seq known to be published.
    published: Mutex<HashMap<String, u64>>,
}

impl Relay {
    pub fn new(publisher: Publisher, outbox: OutboxTable) -> Self {
        Self {
            publisher,
            outbox,
            published: Mutex::new(HashMap::new()),
        }
    }

    fn cached_mark(&self, identity: &str) -> Option<u64> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(identity)
            .copied()
    }

    fn raise_marks(&self, marks: &HashMap<String, u64>) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.len() + marks.len() > MARK_CACHE_LIMIT {
            published.clear();
        }
        for (identity, seq) in marks {
            let mark = published.entry(identity.clone()).or_default();
            *mark = (*mark).max(*seq);
        }
    }

    /// The marks of every identity that `changes` add events to: from
    /// memory, or read from the items (concurrently) when unknown; and the
    /// identities whose item could not be read.
    async fn marks_before(
        &self,
        changes: &[Change],
    ) -> (HashMap<String, u64>, Vec<(String, OutboxError)>) {
        let mut marks = HashMap::new();
        let mut unknown = HashSet::new();
        for change in changes.iter().filter(|c| c.adds_events) {
            if marks.contains_key(&change.identity) || unknown.contains(&change.identity) {
                continue;
            }
            match self.cached_mark(&change.identity) {
                Some(mark) => {
                    marks.insert(change.identity.clone(), mark);
                }
                None => {
                    unknown.insert(change.identity.clone());
                }
            }
        }
        let fetched: Vec<(String, Result<u64, OutboxError>)> = stream::iter(unknown)
            .map(|identity| async move {
                let mark = self.outbox.published_up_to(&identity).await;
                (identity, mark)
            })
            .buffer_unordered(CONCURRENT_ITEM_CALLS)
            .collect()
            .await;
        let mut failed = Vec::new();
        for (identity, mark) in fetched {
            match mark {
                Ok(mark) => {
                    marks.insert(identity, mark);
                }
                Err(e) => failed.push((identity, e)),
            }
        }
        (marks, failed)
    }

    /// Handles `changes` (in shard order). On `Ok`, every event they add has
    /// been accepted by SQS and acknowledged; the caller may checkpoint past
    /// the last change. On `Err`, the caller may checkpoint before
    /// [`HandleError::first_unfinished`], no further.
    pub async fn handle(&self, changes: &[Change]) -> Result<Summary, HandleError> {
        let mut failures = Failures::default();
        let (marks, unreadable) = self.marks_before(changes).await;
        for (identity, error) in unreadable {
            failures.add(first_adding_change(changes, &identity), error.into());
        }
        // No event of an identity with an unknown mark can be planned; the
        // changes after its first one will be handled again anyway.
        let planned = &changes[..failures.first().unwrap_or(changes.len())];
        let plan = plan(planned, &marks);

        let unpublished = match self.publisher.publish(&plan.events).await {
            Ok(()) => Vec::new(),
            Err(failure) => {
                failures.add(
                    plan.first_planner_of(&failure.unpublished),
                    failure.error.into(),
                );
                failure.unpublished
            }
        };
        let published = published_marks(&marks, &plan.events, &unpublished);

        let acknowledged: Vec<(usize, Result<(), OutboxError>)> =
            stream::iter(plan.acknowledgements(&published))
                .map(|ack| async move {
                    let result = self
                        .outbox
                        .acknowledge(&ack.identity, &ack.seqs, ack.version)
                        .await;
                    (ack.first_change, result)
                })
                .buffer_unordered(CONCURRENT_ITEM_CALLS)
                .collect()
                .await;
        for (first_change, result) in acknowledged {
            if let Err(error) = result {
                failures.add(Some(first_change), error.into());
            }
        }
        self.raise_marks(&published);

        match failures.into_first() {
            None => Ok(Summary {
                published: plan.events.len(),
                skipped: plan.skipped,
            }),
            Some((first_unfinished, error)) => Err(HandleError {
                first_unfinished,
                error,
            }),
        }
    }
}

/// What one [`Relay::handle`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Events accepted by SQS.
    pub published: usize,
    /// Changes that added no event (acknowledgements).
    pub skipped: usize,
}

/// The failures of one [`Relay::handle`], each at the index of the first
/// change it leaves unfinished.
#[derive(Debug, Default)]
struct Failures(Vec<(usize, RelayError)>);

impl Failures {
    /// `at` is `None` when no change can be blamed, which should not
    /// happen; the failure then counts from the first change, so that no
    /// caller ever takes an unfinished change for done.
    fn add(&mut self, at: Option<usize>, error: RelayError) {
        self.0.push((at.unwrap_or(0), error));
    }

    fn first(&self) -> Option<usize> {
        self.0.iter().map(|(at, _)| *at).min()
    }

    /// The earliest failure; the others are logged.
    fn into_first(self) -> Option<(usize, RelayError)> {
        let mut failures = self.0;
        failures.sort_by_key(|(at, _)| *at);
        let mut failures = failures.into_iter();
        let first = failures.next()?;
        for (at, error) in failures {
            tracing::warn!(change = at, error = %error, "another failure in the same batch");
        }
        Some(first)
    }
}

/// The first change of `identity` that adds events.
fn first_adding_change(changes: &[Change], identity: &str) -> Option<usize> {
    changes
        .iter()
        .position(|c| c.adds_events && c.identity == identity)
}

/// What [`Relay::handle`] sends and removes for some changes, given the
/// marks before them. No I/O, so that its bookkeeping can be unit-tested.
#[derive(Debug, Default)]
struct Plan {
    /// The events to publish, in order per identity.
    events: Vec<Envelope>,
    /// For each of `events`, the index of the change that planned it.
    planned_by: Vec<usize>,
    /// Per identity, what its acknowledgement may remove.
    acks: HashMap<String, PlannedAck>,
    /// Changes that added no event.
    skipped: usize,
}

#[derive(Debug, Default)]
struct PlannedAck {
    /// The first change of the identity with something to acknowledge: if
    /// the acknowledgement fails, the retry starts there.
    first_change: usize,
    /// Every seq of the changes' images at or below the mark after them.
    seqs: BTreeSet<u64>,
    /// The item's version in the identity's last image, and the highest
    /// seq pending in that image.
    version: Option<u64>,
    last_pending: u64,
}

/// One acknowledgement to make.
#[derive(Debug, PartialEq, Eq)]
struct Ack {
    identity: String,
    seqs: Vec<u64>,
    version: Option<u64>,
    first_change: usize,
}

fn plan(changes: &[Change], marks_before: &HashMap<String, u64>) -> Plan {
    let mut plan = Plan::default();
    let mut marks = marks_before.clone();
    for (index, change) in changes.iter().enumerate() {
        if !change.adds_events {
            plan.skipped += 1;
            continue;
        }
        let mark = marks.entry(change.identity.clone()).or_default();
        for event in &change.pending {
            if event.seq > *mark {
                plan.events.push(event.clone());
                plan.planned_by.push(index);
                *mark = event.seq;
            }
        }
        let published_up_to = *mark;
        let ack = plan
            .acks
            .entry(change.identity.clone())
            .or_insert_with(|| PlannedAck {
                first_change: index,
                ..PlannedAck::default()
            });
        ack.seqs.extend(
            change
                .pending
                .iter()
                .map(|e| e.seq)
                .filter(|seq| *seq <= published_up_to),
        );
        ack.version = change.version;
        ack.last_pending = change.pending.iter().map(|e| e.seq).max().unwrap_or(0);
    }
    plan
}

impl Plan {
    /// The first change that planned one of the `unpublished` events
    /// (indexes into `events`).
    fn first_planner_of(&self, unpublished: &[usize]) -> Option<usize> {
        unpublished
            .iter()
            .filter_map(|&event| self.planned_by.get(event).copied())
            .min()
    }

    /// The acknowledgements to make once SQS accepted up to `published`:
    /// only events at or below an identity's published mark are removed.
    /// The version goes along only when the whole outbox of the identity's
    /// last image was published: then, if the item is still at that
    /// version, its outbox is empty and it may leave the sweeper's index.
    fn acknowledgements(&self, published: &HashMap<String, u64>) -> Vec<Ack> {
        let mut acks: Vec<Ack> = self
            .acks
            .iter()
            .filter_map(|(identity, planned)| {
                let mark = published.get(identity).copied().unwrap_or(0);
                let seqs: Vec<u64> = planned.seqs.range(..=mark).copied().collect();
                let version = planned.version.filter(|_| planned.last_pending <= mark);
                (!seqs.is_empty() || version.is_some()).then(|| Ack {
                    identity: identity.clone(),
                    seqs,
                    version,
                    first_change: planned.first_change,
                })
            })
            .collect();
        acks.sort_by_key(|ack| ack.first_change);
        acks
    }
}

/// Per identity, the highest seq SQS has accepted: the mark before, raised
/// by the identity's accepted events up to its first one not accepted
/// (never past it, whatever came after, so that a mark never skips an
/// event).
fn published_marks(
    before: &HashMap<String, u64>,
    events: &[Envelope],
    unpublished: &[usize],
) -> HashMap<String, u64> {
    let unpublished: HashSet<usize> = unpublished.iter().copied().collect();
    let mut marks = before.clone();
    let mut stopped: HashSet<&str> = HashSet::new();
    for (index, event) in events.iter().enumerate() {
        let identity = event.identity.as_str();
        if stopped.contains(identity) {
            continue;
        }
        if unpublished.contains(&index) {
            stopped.insert(identity);
            continue;
        }
        let mark = marks.entry(identity.to_owned()).or_default();
        *mark = (*mark).max(event.seq);
    }
    marks
}

#[cfg(test)]
mod tests {
    use super::*;
    use obt_contract::Identity;

    fn event(identity: &str, seq: u64) -> Envelope {
        obt_testkit::event(&Identity::parse(identity).expect("valid"), seq, "1")
    }

    /// The record of the write of `seq`, with `pending` still in the outbox.
    fn write(identity: &str, seq: u64, pending: &[u64]) -> Change {
        Change {
            sequence_number: format!("{identity}{seq}"),
            identity: identity.to_owned(),
            version: Some(seq),
            adds_events: true,
            pending: pending.iter().map(|s| event(identity, *s)).collect(),
        }
    }

    /// The record of an acknowledgement.
    fn ack(identity: &str, version: u64) -> Change {
        Change {
            sequence_number: format!("{identity}ack{version}"),
            identity: identity.to_owned(),
            version: Some(version),
            adds_events: false,
            pending: Vec::new(),
        }
    }

    fn planned(plan: &Plan) -> Vec<(String, u64, usize)> {
        plan.events
            .iter()
            .zip(&plan.planned_by)
            .map(|(e, by)| (e.identity.to_string(), e.seq, *by))
            .collect()
    }

    fn marks(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(i, m)| ((*i).to_owned(), *m)).collect()
    }

    #[test]
    fn each_event_is_planned_once_by_the_first_change_that_shows_it() {
        let changes = [
            write("A", 1, &[1]),
            ack("B", 4),
            write("B", 5, &[5]),
            write("A", 2, &[1, 2]),
            write("A", 3, &[1, 2, 3]),
        ];
        let plan = plan(&changes, &marks(&[("A", 0), ("B", 4)]));
        assert_eq!(
            planned(&plan),
            [
                ("A".to_owned(), 1, 0),
                ("B".to_owned(), 5, 2),
                ("A".to_owned(), 2, 3),
                ("A".to_owned(), 3, 4)
            ]
        );
        assert_eq!(plan.skipped, 1);
    }

    #[test]
    fn events_below_the_mark_are_acknowledged_not_published() {
        let changes = [write("A", 3, &[2, 3])];
        let plan = plan(&changes, &marks(&[("A", 2)]));
        assert_eq!(planned(&plan), [("A".to_owned(), 3, 0)]);
        let acks = plan.acknowledgements(&marks(&[("A", 3)]));
        assert_eq!(
            acks,
            [Ack {
                identity: "A".to_owned(),
                seqs: vec![2, 3],
                version: Some(3),
                first_change: 0
            }]
        );
    }

    #[test]
    fn a_publish_failure_points_at_the_first_change_that_planned_an_unpublished_event() {
        let changes = [
            write("A", 1, &[1]),
            write("B", 1, &[1]),
            write("A", 2, &[1, 2]),
            write("B", 2, &[1, 2]),
            write("A", 3, &[1, 2, 3]),
        ];
        let plan = plan(&changes, &marks(&[("A", 0), ("B", 0)]));
        // Batches: [A1, B1], [A2, B2], [A3]; SQS refused B2 in the second.
        let unpublished = [3, 4];
        assert_eq!(plan.first_planner_of(&unpublished), Some(3));
        let published = published_marks(&marks(&[("A", 0), ("B", 0)]), &plan.events, &unpublished);
        assert_eq!(published, marks(&[("A", 2), ("B", 1)]));
        // Only what was published is removed, and without the version (the
        // outbox of the last image is not all published).
        let acks = plan.acknowledgements(&published);
        assert_eq!(
            acks,
            [
                Ack {
                    identity: "A".to_owned(),
                    seqs: vec![1, 2],
                    version: None,
                    first_change: 0
                },
                Ack {
                    identity: "B".to_owned(),
                    seqs: vec![1],
                    version: None,
                    first_change: 1
                },
            ]
        );
    }

    #[test]
    fn a_mark_never_passes_an_unpublished_event_even_if_later_ones_were_accepted() {
        // Not what the publisher does (it stops at the first failed batch),
        // but the mark must not depend on that.
        let events = [event("A", 1), event("A", 2), event("A", 3)];
        let published = published_marks(&marks(&[("A", 0)]), &events, &[1]);
        assert_eq!(published, marks(&[("A", 1)]));
    }

    #[test]
    fn the_first_unfinished_change_is_the_earliest_failure_and_blameless_failures_count_from_zero()
    {
        let outbox_error = || {
            RelayError::Outbox(OutboxError::Malformed {
                table: "t".to_owned(),
                identity: "A".to_owned(),
                attribute: "outbox",
            })
        };
        let mut failures = Failures::default();
        assert!(failures.first().is_none());
        failures.add(Some(7), outbox_error());
        failures.add(Some(3), outbox_error());
        assert_eq!(failures.first(), Some(3));
        assert_eq!(failures.into_first().map(|(at, _)| at), Some(3));

        let mut failures = Failures::default();
        failures.add(None, outbox_error());
        assert_eq!(failures.into_first().map(|(at, _)| at), Some(0));
    }

    #[test]
    fn an_identity_whose_mark_is_unknown_stops_at_its_first_adding_change() {
        let changes = [ack("A", 1), write("B", 1, &[1]), write("A", 2, &[2])];
        assert_eq!(first_adding_change(&changes, "A"), Some(2));
        assert_eq!(first_adding_change(&changes, "B"), Some(1));
        assert_eq!(first_adding_change(&changes, "C"), None);
    }
}
