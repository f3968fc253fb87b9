//! The core of the relay, shared by every driver: given stream changes in
//! shard order, publish the events they add, in `seq` order per identity,
//! then acknowledge them on the item. It publishes every pending event of
//! the item above the identity's "published up to" mark, not only the one
//! the write added, and raises the mark only to what SQS accepted: why, in
//! `docs/ARCHITECTURE.md` ("The relay").
//!
//! A failure says where to resume ([`HandleError::first_unfinished`]): the
//! first change not fully done, so that a driver that retries part of a
//! batch (the Lambda's partial batch response) starts there and keeps each
//! identity's order. A driver that retries whole batches (the daemon) just
//! retries.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use futures::{StreamExt, stream};
use obt_contract::Envelope;

use crate::change::Change;
use crate::image::{Cause, Parked};
use crate::outbox::{Acknowledgement, OutboxError, OutboxTable};
use crate::publisher::{PublishError, Publisher, TOO_LONG};

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

/// Publishes and acknowledges outbox events, and parks the identities whose
/// events can never be published as they are. Cheap to share (`Arc`).
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

    /// The api's table, as this relay reads and writes it.
    pub fn outbox(&self) -> &OutboxTable {
        &self.outbox
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

    /// The marks of every identity that the `planned` changes add events
    /// to: the higher of what this relay remembers and what the identity's
    /// first change tells ([`Change::published_floor`]), both lower bounds
    /// of the truth; read from the items (concurrently) only when neither
    /// is known; and the identities whose item could not be read.
    async fn marks_before<'c>(
        &self,
        planned: impl Iterator<Item = &'c Change>,
    ) -> (HashMap<String, u64>, Vec<(String, OutboxError)>) {
        let mut marks = HashMap::new();
        let mut unknown = HashSet::new();
        for change in planned {
            if marks.contains_key(&change.identity) || unknown.contains(&change.identity) {
                continue;
            }
            match self
                .cached_mark(&change.identity)
                .max(change.published_floor)
            {
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

    /// Handles `changes` (in shard order). On `Ok`, every event they add
    /// has been accepted by SQS and acknowledged, or is held on a parked
    /// identity (durably marked so); the caller may checkpoint past the
    /// last change. On `Err`, the caller may checkpoint before
    /// [`HandleError::first_unfinished`], no further.
    pub async fn handle(&self, changes: &[Change]) -> Result<Summary, HandleError> {
        let (mut summary, acks, mut failures) = self.publish_and_park(changes).await;
        summary.parked += self.acknowledge_or_park(acks, &mut failures).await;
        match failures.into_first() {
            None => Ok(summary),
            Some((first_unfinished, error)) => Err(HandleError {
                first_unfinished,
                error,
            }),
        }
    }

    /// [`Relay::handle`] without the acknowledgements, for a driver that
    /// makes them later, together for several calls
    /// ([`Acknowledgements::merge`], then [`Relay::acknowledge`]) and
    /// checkpoints only after them. On `Ok`, every event the changes add
    /// was accepted by SQS, or is held on a parked identity.
    pub async fn publish(
        &self,
        changes: &[Change],
    ) -> Result<(Summary, Acknowledgements), HandleError> {
        let (summary, acks, failures) = self.publish_and_park(changes).await;
        match failures.into_first() {
            None => Ok((summary, Acknowledgements::from(acks))),
            Some((first_unfinished, error)) => Err(HandleError {
                first_unfinished,
                error,
            }),
        }
    }

    /// Makes the acknowledgements that [`Relay::publish`] returned (each
    /// idempotent, so a failed call may simply be repeated).
    pub async fn acknowledge(&self, acks: &Acknowledgements) -> Result<(), RelayError> {
        let acks: Vec<Ack> = acks.0.values().cloned().collect();
        let mut failures = Failures::default();
        self.acknowledge_or_park(acks, &mut failures).await;
        match failures.into_first() {
            None => Ok(()),
            Some((_, error)) => Err(error),
        }
    }

    /// Makes `acks`, adding what fails to `failures`. An identity whose
    /// acknowledgement DynamoDB refuses for good ([`OutboxError::Refused`]:
    /// its item no longer holds what the api writes) is parked instead, so
    /// that it holds back itself only, not its shard (invariant 6): its
    /// events were published, and stay in its outbox until an operator
    /// repairs the item. How many identities were parked.
    async fn acknowledge_or_park(&self, acks: Vec<Ack>, failures: &mut Failures) -> usize {
        let requests: Vec<Acknowledgement<'_>> = acks
            .iter()
            .map(|ack| Acknowledgement {
                identity: &ack.identity,
                seqs: &ack.seqs,
                version: ack.version,
            })
            .collect();
        let results = self.outbox.acknowledge_all(&requests).await;
        let mut parks = Vec::new();
        for (ack, result) in acks.iter().zip(results) {
            match result {
                Ok(()) => {}
                Err(error @ OutboxError::Refused { .. }) => {
                    let mark = Parked {
                        cause: Cause::Malformed.as_str().to_owned(),
                        reason: format!(
                            "{error}. Its events up to seq {} were published; repair the item, \
                             then retry it",
                            ack.seqs.last().copied().unwrap_or_default()
                        ),
                        seq: None,
                        at: now_rfc3339(),
                    };
                    parks.push((ack.identity.clone(), ack.first_change, mark));
                }
                Err(error) => failures.add(Some(ack.first_change), error.into()),
            }
        }
        self.park_all(parks, failures).await
    }

    /// Writes the parking `marks` (identity, the first change it concerns,
    /// the mark), adding what fails to `failures`: how many were written.
    async fn park_all(
        &self,
        marks: Vec<(String, usize, Parked)>,
        failures: &mut Failures,
    ) -> usize {
        let parked: Vec<(usize, Result<(), OutboxError>)> = stream::iter(marks)
            .map(|(identity, first_change, mark)| async move {
                tracing::error!(
                    parked = true,
                    identity = %identity,
                    seq = ?mark.seq,
                    cause = %mark.cause,
                    reason = %mark.reason,
                    "identity parked: its events wait, in order, until the item is repaired and \
                     `obt-admin parked retry {identity}` is run; other identities flow on"
                );
                (first_change, self.outbox.park(&identity, &mark).await)
            })
            .buffer_unordered(CONCURRENT_ITEM_CALLS)
            .collect()
            .await;
        let mut written = 0;
        for (first_change, result) in parked {
            match result {
                Ok(()) => {
                    metrics::counter!("obt_relay_parked_total").increment(1);
                    written += 1;
                }
                Err(error) => failures.add(Some(first_change), error.into()),
            }
        }
        written
    }

    /// Publishes what `changes` add and parks the identities that need it:
    /// what was done, the acknowledgements to make, and what failed.
    async fn publish_and_park(&self, changes: &[Change]) -> (Summary, Vec<Ack>, Failures) {
        let mut failures = Failures::default();
        let mut triage = triage(changes);
        let (marks, unreadable) = self
            .marks_before(triage.planned(changes).map(|(_, change)| change))
            .await;
        for (identity, error) in unreadable {
            let at = first_adding_change(changes, &identity);
            match error {
                // An item that is not what the api writes: its identity
                // alone waits for a repair.
                OutboxError::Malformed { .. } => {
                    triage.block(&identity, at.unwrap_or(0), error.to_string());
                }
                error => failures.add(at, error.into()),
            }
        }
        // No event of an identity with an unknown mark can be planned; the
        // changes after its first one will be handled again anyway.
        let end = failures.first().unwrap_or(changes.len());
        let plan = plan(triage.planned(&changes[..end]), &marks);

        let report = self.publisher.publish(&plan.events).await;
        let not_accepted = report.not_accepted();
        for refusal in &report.refused {
            let event = &plan.events[refusal.index];
            let cause = if refusal.code == TOO_LONG {
                Cause::TooLarge
            } else {
                Cause::Refused
            };
            triage.park(
                event.identity.as_str(),
                plan.planned_by[refusal.index],
                Some(event.seq),
                cause,
                format!(
                    "SQS refused event {} (seq {}): {}: {}",
                    event.event_id, event.seq, refusal.code, refusal.message
                ),
            );
        }
        if let Some(failure) = report.failure {
            // An identity whose earlier events wait for the retry is not
            // parked at a later unreadable entry yet.
            for &index in &failure.unpublished {
                triage.unpark_unreadable(plan.events[index].identity.as_str());
            }
            failures.add(
                plan.first_planner_of(&failure.unpublished),
                failure.error.into(),
            );
        }
        let published = published_marks(&marks, &plan.events, &not_accepted);
        // The marks rise with what SQS accepted, whatever happens to the
        // acknowledgements: a retry then only acknowledges.
        self.raise_marks(&published);

        let parks: Vec<(String, usize, Parked)> = triage
            .parks
            .iter()
            .map(|(identity, p)| (identity.clone(), p.first_change, p.mark.clone()))
            .collect();
        self.park_all(parks, &mut failures).await;
        let summary = Summary {
            published: plan.events.len() - not_accepted.len(),
            skipped: changes.iter().filter(|c| !c.adds_events).count(),
            parked: triage.parks.len(),
            held: triage.held.len(),
        };
        (summary, plan.acknowledgements(&published), failures)
    }
}

/// Acknowledgements not made yet, one per identity: those of several
/// [`Relay::publish`] calls, merged, make one write per identity instead
/// of one per call.
#[derive(Debug, Default)]
pub struct Acknowledgements(HashMap<String, Ack>);

impl From<Vec<Ack>> for Acknowledgements {
    fn from(acks: Vec<Ack>) -> Self {
        let mut merged = Self::default();
        for ack in acks {
            merged.add(ack);
        }
        merged
    }
}

impl Acknowledgements {
    /// Identities to acknowledge.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the acknowledgements of a later call (of later changes of the
    /// same shard). Per identity, the seqs add up and the later image's
    /// version wins: its outbox holds what the earlier images held and was
    /// not acknowledged yet, so when it was published whole (the version
    /// goes along) the union of the seqs is that whole outbox.
    pub fn merge(&mut self, later: Acknowledgements) {
        for ack in later.0.into_values() {
            self.add(ack);
        }
    }

    fn add(&mut self, later: Ack) {
        match self.0.get_mut(&later.identity) {
            None => {
                self.0.insert(later.identity.clone(), later);
            }
            Some(ack) => {
                ack.seqs.extend(later.seqs);
                ack.seqs.sort_unstable();
                ack.seqs.dedup();
                ack.version = later.version;
                ack.first_change = ack.first_change.min(later.first_change);
            }
        }
    }
}

/// What one [`Relay::handle`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Events accepted by SQS.
    pub published: usize,
    /// Changes that added no event (acknowledgements, parkings).
    pub skipped: usize,
    /// Identities parked by this call.
    pub parked: usize,
    /// Changes not handled because their identity is parked.
    pub held: usize,
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

/// Which changes wait on a parked identity, and which identities to park.
/// No I/O, so that it can be unit-tested.
#[derive(Debug, Default)]
struct Triage {
    /// Changes not handled because their identity is parked: the item was
    /// parked when the change was written, or an earlier change of this
    /// batch shows an entry that cannot be read.
    held: HashSet<usize>,
    /// Identities none of whose changes can be planned (their item cannot
    /// tell what was published).
    blocked: HashSet<String>,
    /// The identities to park, with the first change the parking concerns
    /// (if the parking write fails, the retry starts there).
    parks: HashMap<String, Parking>,
}

#[derive(Debug)]
struct Parking {
    first_change: usize,
    mark: Parked,
    /// Parked at an unreadable outbox entry (not at a refused event).
    unreadable: bool,
}

fn triage(changes: &[Change]) -> Triage {
    let mut triage = Triage::default();
    for (index, change) in changes.iter().enumerate() {
        if !change.adds_events {
            continue;
        }
        if change.parked || triage.parks.contains_key(&change.identity) {
            triage.held.insert(index);
            continue;
        }
        if let Some(unreadable) = &change.unreadable {
            triage.park(
                &change.identity,
                index,
                unreadable.seq,
                Cause::Undecodable,
                unreadable.reason.clone(),
            );
            if let Some(parking) = triage.parks.get_mut(&change.identity) {
                parking.unreadable = true;
            }
        }
    }
    triage
}

impl Triage {
    /// The changes to plan events from, with their indexes.
    fn planned<'c>(&'c self, changes: &'c [Change]) -> impl Iterator<Item = (usize, &'c Change)> {
        changes.iter().enumerate().filter(|(index, change)| {
            change.adds_events
                && !self.held.contains(index)
                && !self.blocked.contains(&change.identity)
        })
    }

    /// Parks `identity` at the change `first_change`. A refused event comes
    /// before any unreadable entry (events are read up to the first one),
    /// so it replaces such a parking.
    fn park(
        &mut self,
        identity: &str,
        first_change: usize,
        seq: Option<u64>,
        cause: Cause,
        reason: String,
    ) {
        let mark = Parked {
            cause: cause.as_str().to_owned(),
            reason,
            seq,
            at: now_rfc3339(),
        };
        match self.parks.get_mut(identity) {
            Some(parking) if parking.unreadable => {
                parking.first_change = parking.first_change.min(first_change);
                parking.mark = mark;
                parking.unreadable = false;
            }
            Some(_) => {}
            None => {
                self.parks.insert(
                    identity.to_owned(),
                    Parking {
                        first_change,
                        mark,
                        unreadable: false,
                    },
                );
            }
        }
    }

    /// Parks `identity` without planning any of its changes.
    fn block(&mut self, identity: &str, first_change: usize, reason: String) {
        self.blocked.insert(identity.to_owned());
        self.park(identity, first_change, None, Cause::Malformed, reason);
    }

    /// Not yet: the identity's earlier events wait for a retry, which will
    /// come to the unreadable entry again.
    fn unpark_unreadable(&mut self, identity: &str) {
        if self.parks.get(identity).is_some_and(|p| p.unreadable) {
            self.parks.remove(identity);
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    identity: String,
    seqs: Vec<u64>,
    version: Option<u64>,
    first_change: usize,
}

fn plan<'c>(
    changes: impl Iterator<Item = (usize, &'c Change)>,
    marks_before: &HashMap<String, u64>,
) -> Plan {
    let mut plan = Plan::default();
    let mut marks = marks_before.clone();
    for (index, change) in changes {
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
        // An unreadable entry stays in the outbox: the item keeps its
        // place in the sweeper's index.
        ack.last_pending = match change.unreadable {
            Some(_) => u64::MAX,
            None => change.pending.iter().map(|e| e.seq).max().unwrap_or(0),
        };
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
            ..Change::default()
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
            ..Change::default()
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
        let plan = plan(
            triage(&changes).planned(&changes),
            &marks(&[("A", 0), ("B", 4)]),
        );
        assert_eq!(
            planned(&plan),
            [
                ("A".to_owned(), 1, 0),
                ("B".to_owned(), 5, 2),
                ("A".to_owned(), 2, 3),
                ("A".to_owned(), 3, 4)
            ]
        );
    }

    #[test]
    fn events_below_the_mark_are_acknowledged_not_published() {
        let changes = [write("A", 3, &[2, 3])];
        let plan = plan(triage(&changes).planned(&changes), &marks(&[("A", 2)]));
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
        let plan = plan(
            triage(&changes).planned(&changes),
            &marks(&[("A", 0), ("B", 0)]),
        );
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
    fn acknowledgements_of_several_batches_make_one_write_per_identity() {
        // Batch 1: A1, B1 published; batch 2: A2, A3 (A3 refused: A's last
        // image is not all published) and B2.
        let first = [write("A", 1, &[1]), write("B", 1, &[1])];
        let second = [
            write("A", 2, &[1, 2]),
            write("B", 2, &[1, 2]),
            write("A", 3, &[1, 2, 3]),
        ];
        let plan1 = plan(
            triage(&first).planned(&first),
            &marks(&[("A", 0), ("B", 0)]),
        );
        let plan2 = plan(
            triage(&second).planned(&second),
            &marks(&[("A", 1), ("B", 1)]),
        );
        let mut acks =
            Acknowledgements::from(plan1.acknowledgements(&marks(&[("A", 1), ("B", 1)])));
        acks.merge(Acknowledgements::from(
            plan2.acknowledgements(&marks(&[("A", 2), ("B", 2)])),
        ));
        assert_eq!(acks.len(), 2);
        let a = &acks.0["A"];
        assert_eq!(a.seqs, [1, 2]);
        assert_eq!(a.version, None, "A3 is still pending on the item");
        let b = &acks.0["B"];
        assert_eq!(b.seqs, [1, 2]);
        assert_eq!(
            b.version,
            Some(2),
            "the later image's version, all of it published"
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

    fn unreadable_at(mut change: Change, seq: Option<u64>) -> Change {
        change.unreadable = Some(crate::image::Unreadable {
            seq,
            reason: "bad entry".to_owned(),
        });
        change
    }

    #[test]
    fn a_parked_image_is_held_and_so_is_what_follows_an_unreadable_entry() {
        let mut parked = write("B", 2, &[1, 2]);
        parked.parked = true;
        let changes = [
            write("A", 1, &[1]),
            parked,
            unreadable_at(write("A", 3, &[1, 2]), Some(3)),
            write("A", 4, &[1, 2]),
            write("C", 1, &[1]),
        ];
        let triage = triage(&changes);
        assert_eq!(triage.held, HashSet::from([1, 3]));
        let parking = &triage.parks["A"];
        assert_eq!((parking.first_change, parking.mark.seq), (2, Some(3)));
        assert_eq!(parking.mark.cause, Cause::Undecodable.as_str());
        let planned: Vec<usize> = triage.planned(&changes).map(|(i, _)| i).collect();
        assert_eq!(
            planned,
            [0, 2, 4],
            "the unreadable change's readable events go first"
        );
        let plan = plan(triage.planned(&changes), &marks(&[("A", 0), ("C", 0)]));
        assert_eq!(
            planned_events(&plan),
            [
                ("A".to_owned(), 1),
                ("A".to_owned(), 2),
                ("C".to_owned(), 1)
            ]
        );
    }

    fn planned_events(plan: &Plan) -> Vec<(String, u64)> {
        plan.events
            .iter()
            .map(|e| (e.identity.to_string(), e.seq))
            .collect()
    }

    #[test]
    fn a_refused_event_replaces_a_later_unreadable_entry_as_the_reason() {
        let changes = [unreadable_at(write("A", 3, &[1, 2]), Some(3))];
        let mut triage = triage(&changes);
        triage.park("A", 0, Some(1), Cause::Refused, "refused".to_owned());
        let parking = &triage.parks["A"];
        assert_eq!(parking.mark.seq, Some(1));
        assert_eq!(parking.mark.cause, Cause::Refused.as_str());
        // A second refusal does not move the parking.
        triage.park("A", 0, Some(2), Cause::Refused, "again".to_owned());
        assert_eq!(triage.parks["A"].mark.seq, Some(1));
    }

    #[test]
    fn an_unreadable_entry_waits_while_the_events_before_it_wait_for_a_retry() {
        let changes = [unreadable_at(write("A", 3, &[1, 2]), Some(3))];
        let mut triage = triage(&changes);
        triage.unpark_unreadable("A");
        assert!(triage.parks.is_empty());
        triage.park("B", 0, Some(1), Cause::Refused, "refused".to_owned());
        triage.unpark_unreadable("B");
        assert!(triage.parks.contains_key("B"), "a refusal stays");
    }

    #[test]
    fn an_item_that_cannot_tell_its_mark_is_parked_and_none_of_its_changes_planned() {
        let changes = [
            write("A", 1, &[1]),
            write("B", 1, &[1]),
            write("A", 2, &[1, 2]),
        ];
        let mut triage = triage(&changes);
        triage.block("A", 0, "malformed".to_owned());
        let planned: Vec<usize> = triage.planned(&changes).map(|(i, _)| i).collect();
        assert_eq!(planned, [1]);
        assert_eq!(triage.parks["A"].mark.cause, Cause::Malformed.as_str());
    }

    #[test]
    fn an_unreadable_change_does_not_clear_the_sweepers_index_entry() {
        let changes = [unreadable_at(write("A", 3, &[1, 2]), Some(3))];
        let plan = plan(triage(&changes).planned(&changes), &marks(&[("A", 0)]));
        let acks = plan.acknowledgements(&marks(&[("A", 2)]));
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].seqs, [1, 2]);
        assert_eq!(acks[0].version, None, "the unreadable entry stays pending");
    }
}
