//! Publishing to the SQS FIFO queue.
//!
//! `SendMessageBatch` can fail for some entries and succeed for others. If
//! one batch held two events of one identity and only the first failed, the
//! second would be in the queue ahead of it, and no retry could restore the
//! order. So a batch never holds two events of one message group: an
//! identity's next event goes into a later batch, and a batch is sent only
//! when every entry of the batches before it was accepted.
//!
//! The same rule makes a failure easy to report precisely: what was not
//! accepted is the rest of the failing batch plus every later batch, and
//! for each identity that is a tail of its events (see [`PublishFailure`]).
//! The relay maps it back to the first stream record not done.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use obt_contract::Envelope;

use crate::backoff::Backoff;

/// The most entries SQS accepts in one `SendMessageBatch`.
pub const MAX_BATCH: usize = 10;

/// Attempts at one batch before the publisher gives up and reports the
/// failure (the caller retries the whole change set later).
const ATTEMPTS: u32 = 5;

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
        "SQS rejected event {event_id} of identity {identity} (seq {seq}) {attempts} times: {code}: {message}"
    )]
    Rejected {
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

/// A [`Publisher::publish`] that stopped short: which events SQS has not
/// accepted, and why.
#[derive(Debug, thiserror::Error)]
#[error("{} of the events were not published", unpublished.len())]
pub struct PublishFailure {
    /// Indexes into the `events` given to [`Publisher::publish`] that SQS
    /// did not accept (or that were never sent), in increasing order. Every
    /// other event was accepted. For each identity these are its last
    /// events (a tail), so "published up to" stays a plain number.
    pub unpublished: Vec<usize>,
    #[source]
    pub error: PublishError,
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
}

impl Publisher {
    pub fn new(client: Client, queue_url: String) -> Self {
        Self { client, queue_url }
    }

    /// Publishes `events`, which are in order per identity, keeping that
    /// order. Returns when SQS has accepted all of them, or with the events
    /// it has not accepted.
    pub async fn publish(&self, events: &[Envelope]) -> Result<(), PublishFailure> {
        let batches = plan_batch_indexes(events);
        for (b, batch) in batches.iter().enumerate() {
            if let Err(failure) = self.send_batch(events, batch).await {
                return Err(PublishFailure {
                    unpublished: unpublished(&batches, b, failure.unpublished),
                    error: failure.error,
                });
            }
        }
        Ok(())
    }

    /// Sends one batch (`batch` indexes into `events`), retrying the entries
    /// SQS did not accept. A failure lists the entries of this batch that
    /// are not accepted.
    async fn send_batch(&self, events: &[Envelope], batch: &[usize]) -> Result<(), PublishFailure> {
        let mut pending: Vec<usize> = batch.to_vec();
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let entries = match pending
                .iter()
                .enumerate()
                .map(|(i, &event)| entry(i, &events[event]))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(entries) => entries,
                Err(error) => {
                    return Err(PublishFailure {
                        unpublished: pending,
                        error,
                    });
                }
            };
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
            // Ids are indexes into `pending`. Whatever SQS did not confirm
            // as successful is sent again: a duplicate is harmless, a loss
            // is not.
            let accepted: HashSet<&str> = output.successful().iter().map(|e| e.id()).collect();
            let failed: Vec<usize> = (0..pending.len())
                .filter(|i| !accepted.contains(i.to_string().as_str()))
                .collect();
            let Some(&first_index) = failed.first() else {
                return Ok(());
            };
            let event = &events[pending[first_index]];
            let report = output
                .failed()
                .iter()
                .find(|f| f.id() == first_index.to_string());
            let code = report.map_or("NotConfirmed", |f| f.code());
            let message = report.and_then(|f| f.message()).unwrap_or_default();
            let sender_fault = report.is_some_and(|f| f.sender_fault());
            tracing::warn!(
                event_id = %event.event_id, identity = %event.identity, seq = event.seq,
                code, message, sender_fault, failed = failed.len(), attempt,
                "SQS did not accept some entries"
            );
            if sender_fault || attempt >= ATTEMPTS {
                let error = PublishError::Rejected {
                    event_id: event.event_id.to_string(),
                    identity: event.identity.to_string(),
                    seq: event.seq,
                    attempts: attempt,
                    code: code.to_owned(),
                    message: message.to_owned(),
                };
                return Err(PublishFailure {
                    unpublished: failed.iter().map(|&i| pending[i]).collect(),
                    error,
                });
            }
            pending = failed.iter().map(|&i| pending[i]).collect();
            backoff.wait().await;
        }
    }
}

fn entry(index: usize, event: &Envelope) -> Result<SendMessageBatchRequestEntry, PublishError> {
    SendMessageBatchRequestEntry::builder()
        .id(index.to_string())
        .message_body(event.encode())
        .message_group_id(event.identity.as_str())
        .message_deduplication_id(event.event_id.to_string())
        .build()
        .map_err(|e| PublishError::Entry(e.to_string()))
}

/// Splits `events` into batches of at most [`MAX_BATCH`], with no two
/// events of one identity in a batch and each identity's events in
/// increasing batch order.
pub fn plan_batches(events: &[Envelope]) -> Vec<Vec<&Envelope>> {
    plan_batch_indexes(events)
        .into_iter()
        .map(|batch| batch.into_iter().map(|i| &events[i]).collect())
        .collect()
}

/// [`plan_batches`] as indexes into `events`.
pub fn plan_batch_indexes(events: &[Envelope]) -> Vec<Vec<usize>> {
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut last_batch_of: HashMap<&str, usize> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        let group = event.identity.as_str();
        let earliest = last_batch_of.get(group).map_or(0, |b| b + 1);
        let index = (earliest..batches.len())
            .find(|&b| batches[b].len() < MAX_BATCH)
            .unwrap_or_else(|| {
                batches.push(Vec::new());
                batches.len() - 1
            });
        batches[index].push(i);
        last_batch_of.insert(group, index);
    }
    batches
}

/// The events not accepted when batch `failed` of `batches` stopped with
/// `left_in_batch` not accepted: those, and every event of the batches
/// after it (never sent), sorted.
fn unpublished(batches: &[Vec<usize>], failed: usize, left_in_batch: Vec<usize>) -> Vec<usize> {
    let mut unpublished = left_in_batch;
    unpublished.extend(batches.iter().skip(failed + 1).flatten().copied());
    unpublished.sort_unstable();
    unpublished
}

#[cfg(test)]
mod tests {
    use super::*;
    use obt_contract::Identity;

    fn event(identity: &str, seq: u64) -> Envelope {
        obt_testkit::event(&Identity::parse(identity).expect("valid"), seq, "1")
    }

    #[test]
    fn a_batch_never_holds_two_events_of_one_identity_and_order_is_kept() {
        let mut events = Vec::new();
        for seq in 1..=4 {
            for identity in ["A", "B", "C"] {
                events.push(event(identity, seq));
            }
        }
        for identity in 0..15 {
            events.push(event(&format!("X{identity}"), 1));
        }
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
    fn what_a_failed_batch_leaves_unpublished_is_a_tail_of_each_identity() {
        // 3 identities x 4 events, plus singles: whichever batch fails, and
        // whichever of its entries SQS refused, each identity's published
        // events are a prefix of its events (so a "published up to" mark
        // can never pass an unpublished event).
        let mut events = Vec::new();
        for seq in 1..=4 {
            for identity in ["A", "B", "C"] {
                events.push(event(identity, seq));
            }
        }
        for identity in 0..12 {
            events.push(event(&format!("X{identity}"), 1));
        }
        let batches = plan_batch_indexes(&events);
        for (failed, batch) in batches.iter().enumerate() {
            for refused in batch {
                let left = unpublished(&batches, failed, vec![*refused]);
                assert!(left.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
                for identity in ["A", "B", "C"] {
                    let flags: Vec<bool> = events
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| e.identity.as_str() == identity)
                        .map(|(i, _)| left.contains(&i))
                        .collect();
                    let first_left = flags.iter().position(|l| *l).unwrap_or(flags.len());
                    assert!(
                        flags[first_left..].iter().all(|l| *l),
                        "batch {failed}, refused {refused}: {identity} {flags:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn distinct_identities_fill_batches_of_ten() {
        let events: Vec<Envelope> = (0..25).map(|i| event(&format!("I{i}"), 1)).collect();
        let sizes: Vec<usize> = plan_batches(&events).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
    }
}
