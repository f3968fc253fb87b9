//! Publishing to the SQS FIFO queue. A batch never holds two events of one
//! message group, and an event is sent only once its identity's previous
//! event was accepted (or refused for good), so that a partial failure of
//! `SendMessageBatch` can never put an identity's later event ahead of an
//! earlier one (`docs/ARCHITECTURE.md`, "Batches never hold two events of
//! one identity"). Batches whose events wait for nothing are sent
//! concurrently, up to [`Publisher::with_concurrency`] at once.
//!
//! Two kinds of failure: a **refusal** (SQS blames the message:
//! [`PERMANENT_CODES`] with `SenderFault`; or the body is larger than SQS
//! takes) holds back that identity's later events ([`PublishReport::held`])
//! and the caller parks it; anything else may pass, is tried again a few
//! times, then reported ([`PublishFailure`]) for the caller to retry later.
//! Either way what was not accepted is, for each identity, a tail of its
//! events, so "published up to" stays a plain number.
//!
//! An event with a trace context travels with it twice: the message
//! attribute [`TRACEPARENT_ATTRIBUTE`] (W3C) and the `AWSTraceHeader`
//! system attribute (X-Ray), so that either kind of tracer can follow it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeNameForSends, MessageSystemAttributeValue,
    SendMessageBatchRequestEntry,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use obt_contract::Envelope;

use crate::backoff::Backoff;

/// `SendMessageBatch` calls in flight at once by default
/// ([`Publisher::with_concurrency`]).
pub const DEFAULT_CONCURRENCY: usize = 8;

/// The most entries SQS accepts in one `SendMessageBatch`.
pub const MAX_BATCH: usize = 10;

/// The largest message SQS accepts (its body and its message attributes,
/// see [`message_bytes`]), and the largest sum of the messages of one
/// batch: 256 KiB, which every queue takes (a queue may be set lower; an
/// event of this contract is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 262_144;

/// The message attribute holding the event's W3C `traceparent`.
pub const TRACEPARENT_ATTRIBUTE: &str = "traceparent";

/// The data type of [`TRACEPARENT_ATTRIBUTE`].
const STRING: &str = "String";

/// What counts against SQS's size limits for `event`'s message: the body
/// and each message attribute's name, data type and value. The
/// `AWSTraceHeader` system attribute does not count ("The size of a
/// message system attribute doesn't count towards the total size of a
/// message", SendMessage).
pub fn message_bytes(event: &Envelope) -> usize {
    let attributes = event.trace.as_ref().map_or(0, |trace| {
        TRACEPARENT_ATTRIBUTE.len() + STRING.len() + trace.traceparent.to_string().len()
    });
    event.encode().len() + attributes
}

/// The error codes of a failed `SendMessageBatch` entry that blame the
/// message itself (with `SenderFault`): no retry can succeed. Any other
/// failed entry is tried again: codes such as KMS errors or throttling say
/// nothing against one identity, and parking every identity for them would
/// stop the pipeline instead of isolating a bad record.
pub const PERMANENT_CODES: &[&str] = &[
    "InvalidMessageContents",
    "MessageTooLong",
    "InvalidParameterValue",
];

/// The code of a [`Refusal`] for a body over [`MAX_BODY_BYTES`], which is
/// not sent at all.
pub const TOO_LONG: &str = "MessageTooLong";

/// Attempts at one batch before the publisher gives up and reports the
/// failure (the caller retries the whole change set later).
const ATTEMPTS: u32 = 5;

/// Whether a failed entry blames the message itself. SQS may prefix codes
/// (`AWS.SimpleQueueService.`), so the last part is compared.
pub fn is_permanent(code: &str, sender_fault: bool) -> bool {
    let code = code.rsplit('.').next().unwrap_or(code);
    sender_fault && PERMANENT_CODES.contains(&code)
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("SendMessageBatch to {queue_url} failed: {}", describe(.source))]
    Call {
        queue_url: String,
        #[source]
        source: Box<
            aws_sdk_sqs::error::SdkError<
                aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError,
            >,
        >,
    },
    #[error(
        "SQS did not accept event {event_id} of identity {identity} (seq {seq}) in {attempts} \
         attempts: {code}: {message}"
    )]
    NotAccepted {
        event_id: String,
        identity: String,
        seq: u64,
        attempts: u32,
        code: String,
        message: String,
    },
    #[error("could not build a SendMessageBatch entry: {0}")]
    Entry(String),
}

/// A [`Publisher::publish`] that stopped at a failure that may pass.
#[derive(Debug, thiserror::Error)]
#[error("{} of the events were not published", unpublished.len())]
pub struct PublishFailure {
    /// Indexes into the `events` given to [`Publisher::publish`] that were
    /// not accepted or never sent, in increasing order (refused and held
    /// events are in the [`PublishReport`] instead).
    pub unpublished: Vec<usize>,
    #[source]
    pub error: PublishError,
}

/// An event SQS will never accept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Index into the `events` given to [`Publisher::publish`].
    pub index: usize,
    /// SQS's error code (`InvalidMessageContents`, ...), or [`TOO_LONG`].
    pub code: String,
    pub message: String,
}

/// What [`Publisher::publish`] did. Every event not named here was
/// accepted by SQS.
#[derive(Debug, Default)]
pub struct PublishReport {
    /// Events refused for good, in increasing index order.
    pub refused: Vec<Refusal>,
    /// Events not sent because an earlier event of their identity was
    /// refused, in increasing index order.
    pub held: Vec<usize>,
    /// The failure that stopped the call, when one did.
    pub failure: Option<PublishFailure>,
}

impl PublishReport {
    /// Every event SQS did not accept, sorted.
    pub fn not_accepted(&self) -> Vec<usize> {
        let mut all: Vec<usize> = self.refused.iter().map(|r| r.index).collect();
        all.extend(&self.held);
        if let Some(failure) = &self.failure {
            all.extend(&failure.unpublished);
        }
        all.sort_unstable();
        all
    }
}

/// What went wrong in one line: the service's code and message when SQS
/// answered (the SDK's own rendering of a service error says only "service
/// error", its full context dumps the raw response), the error chain
/// otherwise (timeouts, connection failures).
fn describe(
    e: &aws_sdk_sqs::error::SdkError<
        aws_sdk_sqs::operation::send_message_batch::SendMessageBatchError,
    >,
) -> String {
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        _ => aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
    }
}

/// Sends events to one FIFO queue.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    queue_url: String,
    /// `SendMessageBatch` calls in flight at once: one call takes a round
    /// trip whatever its size, so a backlog drains only as fast as several
    /// of them at once.
    concurrency: usize,
}

impl Publisher {
    pub fn new(client: Client, queue_url: String) -> Self {
        Self {
            client,
            queue_url,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// At most `concurrency` (at least 1) `SendMessageBatch` calls in
    /// flight at once.
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Publishes `events`, which are in order per identity, keeping that
    /// order: an event is sent once its identity's previous one was
    /// accepted, and batches that wait for nothing go out concurrently.
    /// Returns what SQS did not accept and why.
    pub async fn publish(&self, events: &[Envelope]) -> PublishReport {
        let mut tally = Tally::new(events);
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < self.concurrency {
                let Some(batch) = tally.next_batch() else {
                    break;
                };
                in_flight.push(async move {
                    let result = self.send_batch(events, &batch).await;
                    (batch, result)
                });
            }
            match in_flight.next().await {
                Some((batch, Ok(refused))) => tally.finished(&batch, refused),
                Some((batch, Err(failure))) => tally.failed(&batch, failure),
                None => break,
            }
        }
        tally.finish()
    }

    /// Sends one batch (`batch` indexes into `events`), retrying the entries
    /// SQS did not accept for a reason that may pass. Returns the entries
    /// it refused for good; fails with the entries still not accepted when
    /// the attempts are used up.
    async fn send_batch(
        &self,
        events: &[Envelope],
        batch: &[usize],
    ) -> Result<Vec<Refusal>, PublishFailure> {
        let mut pending: Vec<usize> = batch.to_vec();
        let mut refused = Vec::new();
        let mut backoff =
            Backoff::new(Duration::from_millis(50), Duration::from_secs(2)).attempts();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let entries = pending
                .iter()
                .enumerate()
                .map(|(i, &event)| entry(i, &events[event]))
                .collect::<Result<Vec<_>, _>>();
            let entries = match entries {
                Ok(entries) => entries,
                Err(error) => {
                    return Err(PublishFailure {
                        unpublished: pending,
                        error,
                    });
                }
            };
            metrics::counter!("obt_relay_send_batches_total").increment(1);
            let result = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            let output = match result {
                Ok(output) => output,
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(error = %describe(&e), attempt, "SendMessageBatch failed, retrying");
                    backoff.wait().await;
                    continue;
                }
                Err(e) => {
                    // The call may have reached SQS or not: count its entries
                    // as not accepted (sending them again is harmless).
                    return Err(PublishFailure {
                        unpublished: pending,
                        error: PublishError::Call {
                            queue_url: self.queue_url.clone(),
                            source: Box::new(e),
                        },
                    });
                }
            };
            // Ids are indexes into `pending`. Whatever SQS neither confirmed
            // nor refused for good is sent again: a duplicate is harmless,
            // a loss is not.
            let accepted: HashSet<&str> = output.successful().iter().map(|e| e.id()).collect();
            metrics::counter!("obt_relay_events_published_total")
                .increment(u64::try_from(accepted.len()).unwrap_or(u64::MAX));
            let mut retry = Vec::new();
            let mut first_retried: Option<(usize, String, String)> = None;
            for (i, &index) in pending.iter().enumerate() {
                let id = i.to_string();
                if accepted.contains(id.as_str()) {
                    continue;
                }
                let failed = output.failed().iter().find(|f| f.id() == id);
                let code = failed.map_or("NotConfirmed", |f| f.code()).to_owned();
                let message = failed
                    .and_then(|f| f.message())
                    .unwrap_or_default()
                    .to_owned();
                let sender_fault = failed.is_some_and(|f| f.sender_fault());
                metrics::counter!("obt_relay_send_failed_entries_total", "code" => code.clone())
                    .increment(1);
                let event = &events[index];
                tracing::warn!(
                    event_id = %event.event_id, identity = %event.identity, seq = event.seq,
                    code, message, sender_fault, attempt,
                    "SQS did not accept an entry"
                );
                if is_permanent(&code, sender_fault) {
                    refused.push(Refusal {
                        index,
                        code,
                        message,
                    });
                } else {
                    first_retried.get_or_insert((index, code, message));
                    retry.push(index);
                }
            }
            let Some((first, code, message)) = first_retried else {
                return Ok(refused);
            };
            if attempt >= ATTEMPTS {
                let event = &events[first];
                // The refusals of this batch count as unpublished with the
                // failure (never as accepted): the retry of the whole call
                // refuses them again, and parks their identities then.
                retry.extend(refused.iter().map(|r| r.index));
                retry.sort_unstable();
                return Err(PublishFailure {
                    unpublished: retry,
                    error: PublishError::NotAccepted {
                        event_id: event.event_id.to_string(),
                        identity: event.identity.to_string(),
                        seq: event.seq,
                        attempts: attempt,
                        code,
                        message,
                    },
                });
            }
            pending = retry;
            backoff.wait().await;
        }
    }
}

/// The bookkeeping of one [`Publisher::publish`], free of I/O: which events
/// may go in the next batch. An event may go once its predecessor (the
/// previous event of its identity) was accepted, so a batch never holds two
/// events of one identity, and the batches that wait for nothing may be in
/// flight together.
struct Tally<'e> {
    events: &'e [Envelope],
    /// Events not sent yet, in order.
    remaining: Vec<usize>,
    /// For each event, the index of its identity's previous event.
    previous: Vec<Option<usize>>,
    /// For each event, its [`message_bytes`] (measured once: it encodes
    /// the event).
    sizes: Vec<usize>,
    /// Events SQS accepted.
    accepted: Vec<bool>,
    /// Identities with a refused event: nothing more of them is sent.
    stopped: HashSet<&'e str>,
    report: PublishReport,
}

impl<'e> Tally<'e> {
    fn new(events: &'e [Envelope]) -> Self {
        let mut last: HashMap<&str, usize> = HashMap::new();
        let previous = events
            .iter()
            .enumerate()
            .map(|(i, e)| last.insert(e.identity.as_str(), i))
            .collect();
        Self {
            events,
            remaining: (0..events.len()).collect(),
            previous,
            sizes: events.iter().map(message_bytes).collect(),
            accepted: vec![false; events.len()],
            stopped: HashSet::new(),
            report: PublishReport::default(),
        }
    }

    /// Whether `index` must wait: its predecessor is not accepted (yet).
    fn waits(&self, index: usize) -> bool {
        self.previous[index].is_some_and(|p| !self.accepted[p])
    }

    /// The events of the next batch, oldest first: at most [`MAX_BATCH`]
    /// and [`MAX_BODY_BYTES`], none waiting for another. `None` when
    /// nothing may be sent now: every event is done, the call stopped, or
    /// what is left waits for a batch in flight.
    fn next_batch(&mut self) -> Option<Vec<usize>> {
        if self.report.failure.is_some() {
            return None;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut left = Vec::with_capacity(self.remaining.len());
        for index in std::mem::take(&mut self.remaining) {
            let event = &self.events[index];
            let size = self.sizes[index];
            if self.stopped.contains(event.identity.as_str()) {
                self.report.held.push(index);
            } else if batch.len() == MAX_BATCH || self.waits(index) {
                left.push(index);
            } else if size > MAX_BODY_BYTES {
                self.refused(vec![Refusal {
                    index,
                    code: TOO_LONG.to_owned(),
                    message: format!(
                        "the message (body and attributes) is {size} bytes; SQS takes at most {MAX_BODY_BYTES}"
                    ),
                }]);
            } else if !batch.is_empty() && bytes + size > MAX_BODY_BYTES {
                left.push(index);
            } else {
                bytes += size;
                batch.push(index);
            }
        }
        self.remaining = left;
        self.report.held.sort_unstable();
        (!batch.is_empty()).then_some(batch)
    }

    /// `batch` came back: every entry but the `refused` ones was accepted.
    fn finished(&mut self, batch: &[usize], refused: Vec<Refusal>) {
        for &index in batch {
            if !refused.iter().any(|r| r.index == index) {
                self.accepted[index] = true;
            }
        }
        self.refused(refused);
    }

    fn refused(&mut self, refused: Vec<Refusal>) {
        for refusal in refused {
            self.stopped
                .insert(self.events[refusal.index].identity.as_str());
            self.report.refused.push(refusal);
        }
        self.report.refused.sort_by_key(|r| r.index);
    }

    /// `batch` failed for a reason that may pass: its entries not in
    /// `failure.unpublished` were accepted, and nothing more is sent (the
    /// batches in flight still come back).
    fn failed(&mut self, batch: &[usize], failure: PublishFailure) {
        for &index in batch {
            if !failure.unpublished.contains(&index) {
                self.accepted[index] = true;
            }
        }
        match &mut self.report.failure {
            Some(first) => first.unpublished.extend(failure.unpublished),
            None => self.report.failure = Some(failure),
        }
    }

    /// The report, once nothing is in flight any more: what was not sent
    /// after a failure is unpublished (or held, behind a refusal).
    fn finish(mut self) -> PublishReport {
        let mut unpublished = Vec::new();
        for index in std::mem::take(&mut self.remaining) {
            if self.stopped.contains(self.events[index].identity.as_str()) {
                self.report.held.push(index);
            } else {
                unpublished.push(index);
            }
        }
        if !unpublished.is_empty() && self.report.failure.is_none() {
            // Not reachable: with nothing in flight, an event waits only
            // behind a failed one.
            self.report.failure = Some(PublishFailure {
                unpublished: Vec::new(),
                error: PublishError::Entry("the publisher stopped before the end".to_owned()),
            });
        }
        if let Some(failure) = &mut self.report.failure {
            failure.unpublished.extend(unpublished);
            failure.unpublished.sort_unstable();
            failure.unpublished.dedup();
        }
        self.report.held.sort_unstable();
        self.report
    }
}

fn entry(index: usize, event: &Envelope) -> Result<SendMessageBatchRequestEntry, PublishError> {
    let failed = |e: aws_sdk_sqs::error::BuildError| PublishError::Entry(e.to_string());
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(event.encode())
        .message_group_id(event.identity.as_str())
        .message_deduplication_id(event.event_id.to_string());
    if let Some(trace) = &event.trace {
        let traceparent = MessageAttributeValue::builder()
            .data_type(STRING)
            .string_value(trace.traceparent.to_string())
            .build()
            .map_err(failed)?;
        let xray = MessageSystemAttributeValue::builder()
            .data_type(STRING)
            .string_value(trace.traceparent.to_xray())
            .build()
            .map_err(failed)?;
        entry = entry
            .message_attributes(TRACEPARENT_ATTRIBUTE, traceparent)
            .message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, xray);
    }
    entry.build().map_err(failed)
}

/// Splits `events` into batches of at most [`MAX_BATCH`] entries and
/// [`MAX_BODY_BYTES`] of bodies, with no two events of one identity in a
/// batch and each identity's events in increasing batch order.
pub fn plan_batches(events: &[Envelope]) -> Vec<Vec<&Envelope>> {
    plan_batch_indexes(events)
        .into_iter()
        .map(|batch| batch.into_iter().map(|i| &events[i]).collect())
        .collect()
}

/// [`plan_batches`] as indexes into `events`.
pub fn plan_batch_indexes(events: &[Envelope]) -> Vec<Vec<usize>> {
    // Each batch with the sum of its bodies' sizes.
    let mut batches: Vec<(Vec<usize>, usize)> = Vec::new();
    let mut last_batch_of: HashMap<&str, usize> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let group = event.identity.as_str();
        let size = message_bytes(event);
        let earliest = last_batch_of.get(group).map_or(0, |b| b + 1);
        let fits = |(batch, bytes): &(Vec<usize>, usize)| {
            batch.len() < MAX_BATCH && (batch.is_empty() || bytes + size <= MAX_BODY_BYTES)
        };
        let index = (earliest..batches.len())
            .find(|&b| fits(&batches[b]))
            .unwrap_or_else(|| {
                batches.push((Vec::new(), 0));
                batches.len() - 1
            });
        batches[index].0.push(i);
        batches[index].1 += size;
        last_batch_of.insert(group, index);
    }
    batches.into_iter().map(|(batch, _)| batch).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use obt_contract::Identity;

    fn event(identity: &str, seq: u64) -> Envelope {
        obt_testkit::event(&Identity::parse(identity).expect("valid"), seq, "1")
    }

    /// 3 identities x 4 events, then `singles` identities with one event.
    fn interleaved(singles: usize) -> Vec<Envelope> {
        let mut events = Vec::new();
        for seq in 1..=4 {
            for identity in ["A", "B", "C"] {
                events.push(event(identity, seq));
            }
        }
        for identity in 0..singles {
            events.push(event(&format!("X{identity}"), 1));
        }
        events
    }

    /// For each of A, B and C: whether each of its events is not accepted.
    fn tails_hold(events: &[Envelope], not_accepted: &[usize]) -> Result<(), String> {
        for identity in ["A", "B", "C"] {
            let flags: Vec<bool> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.identity.as_str() == identity)
                .map(|(i, _)| not_accepted.contains(&i))
                .collect();
            let first = flags.iter().position(|l| *l).unwrap_or(flags.len());
            if !flags[first..].iter().all(|l| *l) {
                return Err(format!("{identity}: {flags:?}"));
            }
        }
        Ok(())
    }

    #[test]
    fn a_batch_never_holds_two_events_of_one_identity_and_order_is_kept() {
        let events = interleaved(15);
        let batches = plan_batches(&events);
        let mut seen = 0;
        let mut last_seq: HashMap<String, (usize, u64)> = HashMap::new();
        for (b, batch) in batches.iter().enumerate() {
            assert!(batch.len() <= MAX_BATCH);
            let mut groups: Vec<&str> = batch.iter().map(|e| e.identity.as_str()).collect();
            groups.sort_unstable();
            groups.dedup();
            assert_eq!(groups.len(), batch.len(), "batch {b} repeats an identity");
            for e in batch {
                if let Some((prev_batch, prev_seq)) = last_seq.get(e.identity.as_str()) {
                    assert!(
                        *prev_batch < b && *prev_seq < e.seq,
                        "{} out of order",
                        e.identity
                    );
                }
                last_seq.insert(e.identity.to_string(), (b, e.seq));
                seen += 1;
            }
        }
        assert_eq!(seen, events.len(), "every event is planned once");
        // One identity's 4 events need 4 batches; the other 23 fill them.
        assert_eq!(batches.len(), 4);
    }

    #[test]
    fn a_refusal_holds_back_its_identity_only() {
        let events = interleaved(12);
        let batches = plan_batch_indexes(&events);
        for (b, batch) in batches.iter().enumerate() {
            for &refused in batch {
                let mut tally = Tally::new(&events);
                let mut sent = Vec::new();
                while let Some(next) = tally.next_batch() {
                    sent.extend(next.iter().copied());
                    if next.contains(&refused) {
                        tally.finished(
                            &next,
                            vec![Refusal {
                                index: refused,
                                code: "InvalidMessageContents".to_owned(),
                                message: String::new(),
                            }],
                        );
                    } else {
                        tally.finished(&next, Vec::new());
                    }
                }
                let identity = events[refused].identity.as_str();
                let report = tally.finish();
                assert!(report.failure.is_none());
                let not_accepted = report.not_accepted();
                tails_hold(&events, &not_accepted).unwrap_or_else(|e| panic!("batch {b}: {e}"));
                for (i, e) in events.iter().enumerate() {
                    let held_back = e.identity.as_str() == identity && e.seq >= events[refused].seq;
                    assert_eq!(
                        not_accepted.contains(&i),
                        held_back,
                        "event {i}, refused {refused}"
                    );
                    assert_eq!(
                        sent.contains(&i),
                        !held_back || i == refused,
                        "event {i} sent"
                    );
                }
            }
        }
    }

    #[test]
    fn a_failure_that_may_pass_stops_the_call_and_leaves_a_tail_of_each_identity() {
        let events = interleaved(12);
        let batches = plan_batch_indexes(&events);
        for b in 0..batches.len() {
            for pick_last in [false, true] {
                let mut tally = Tally::new(&events);
                // A is refused in the first batch; one entry of batch b fails.
                let mut number = 0;
                while let Some(next) = tally.next_batch() {
                    if number == b {
                        let failed = if pick_last {
                            next[next.len() - 1]
                        } else {
                            next[0]
                        };
                        tally.failed(
                            &next,
                            PublishFailure {
                                unpublished: vec![failed],
                                error: PublishError::Entry("injected".to_owned()),
                            },
                        );
                    } else if number == 0 {
                        tally.finished(
                            &next,
                            vec![Refusal {
                                index: next[0],
                                code: "InvalidMessageContents".to_owned(),
                                message: String::new(),
                            }],
                        );
                    } else {
                        tally.finished(&next, Vec::new());
                    }
                    number += 1;
                }
                let report = tally.finish();
                let not_accepted = report.not_accepted();
                assert!(not_accepted.windows(2).all(|w| w[0] < w[1]), "no repeats");
                tails_hold(&events, &not_accepted).unwrap_or_else(|e| panic!("batch {b}: {e}"));
                assert!(report.failure.is_some());
            }
        }
    }

    #[test]
    fn batches_that_wait_for_nothing_go_out_together_and_an_event_waits_for_its_predecessor() {
        // 3 identities x 4 events, then 25 identities with one: the first
        // batches hold first events only, so they may all be in flight.
        let events = interleaved(25);
        let mut tally = Tally::new(&events);
        let mut in_flight: Vec<Vec<usize>> = Vec::new();
        let mut sent = 0;
        let mut most_in_flight = 0;
        loop {
            while let Some(batch) = tally.next_batch() {
                for &i in &batch {
                    if let Some(p) = tally.previous[i] {
                        assert!(tally.accepted[p], "event {i} sent before {p} was accepted");
                    }
                }
                in_flight.push(batch);
            }
            most_in_flight = most_in_flight.max(in_flight.len());
            // Complete the batches in the reverse order of sending.
            let Some(done) = in_flight.pop() else { break };
            sent += done.len();
            tally.finished(&done, Vec::new());
        }
        let report = tally.finish();
        assert!(report.failure.is_none() && report.not_accepted().is_empty());
        assert_eq!(sent, events.len());
        assert!(most_in_flight >= 2, "independent batches went out together");
    }

    #[test]
    fn a_batch_still_in_flight_comes_back_after_a_failure_and_the_rest_is_unpublished() {
        let events = interleaved(25);
        let mut tally = Tally::new(&events);
        let first = tally.next_batch().expect("a batch");
        let second = tally.next_batch().expect("a second batch, independent");
        tally.failed(
            &first,
            PublishFailure {
                unpublished: first.clone(),
                error: PublishError::Entry("injected".to_owned()),
            },
        );
        assert!(tally.next_batch().is_none(), "nothing more is sent");
        tally.finished(&second, Vec::new());
        let report = tally.finish();
        let not_accepted = report.not_accepted();
        tails_hold(&events, &not_accepted).expect("tails");
        assert!(second.iter().all(|i| !not_accepted.contains(i)));
        assert_eq!(not_accepted.len(), events.len() - second.len());
    }

    #[test]
    fn distinct_identities_fill_batches_of_ten() {
        let events: Vec<Envelope> = (0..25).map(|i| event(&format!("I{i}"), 1)).collect();
        let sizes: Vec<usize> = plan_batches(&events).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
    }

    fn traced(identity: &str, seq: u64) -> Envelope {
        event(identity, seq).with_trace(obt_contract::TraceContext::from_headers(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("congo=t61rcWkgMzE"),
        ))
    }

    #[test]
    fn the_size_of_a_message_counts_its_traceparent_attribute() {
        let plain = event("A", 1);
        assert_eq!(message_bytes(&plain), plain.encode().len());
        let traced = traced("A", 1);
        // "traceparent" + "String" + the 55-character value.
        assert_eq!(message_bytes(&traced), traced.encode().len() + 11 + 6 + 55);
    }

    #[test]
    fn a_traced_event_carries_its_traceparent_and_xray_header() {
        let sent = entry(0, &traced("A", 1)).expect("an entry");
        let attribute = sent
            .message_attributes()
            .and_then(|a| a.get(TRACEPARENT_ATTRIBUTE))
            .expect("the traceparent attribute");
        assert_eq!(attribute.data_type(), "String");
        assert_eq!(
            attribute.string_value(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let xray = sent
            .message_system_attributes()
            .and_then(|a| a.get(&MessageSystemAttributeNameForSends::AwsTraceHeader))
            .expect("the AWSTraceHeader system attribute");
        assert_eq!(xray.data_type(), "String");
        assert_eq!(
            xray.string_value(),
            Some("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1")
        );

        let plain = entry(0, &event("A", 1)).expect("an entry");
        assert!(plain.message_attributes().is_none());
        assert!(plain.message_system_attributes().is_none());
    }

    #[test]
    fn only_a_sender_fault_that_blames_the_message_is_permanent() {
        assert!(is_permanent("InvalidMessageContents", true));
        assert!(is_permanent(
            "AWS.SimpleQueueService.InvalidMessageContents",
            true
        ));
        assert!(!is_permanent("InvalidMessageContents", false));
        assert!(!is_permanent("KmsThrottled", true));
        assert!(!is_permanent("InternalError", false));
    }
}
