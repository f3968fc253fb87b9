//! Lambda driver: the function behind an event source mapping on the api
//! table's stream (`stream-relay-lambda`), and the scheduled sweeper
//! ([`run_sweeper`], `outbox-sweeper-lambda`: one [`Sweeper::sweep`] per
//! invocation).
//!
//! The records become [`Change`]s for the same [`Relay::handle`] as the
//! daemon's. The answer is a partial batch response
//! (`ReportBatchItemFailures`): the sequence number of the first record not
//! fully done, so that the retry starts there and each identity's order
//! holds; a record whose identity was parked ([`crate::relay`]) is done.
//! Never an empty list for records that were not done, never a panic; only
//! a record without a sequence number fails the whole invocation. The event
//! source mapping must list `ReportBatchItemFailures` in its
//! `FunctionResponseTypes`, or Lambda ignores the list.
//!
//! Settings come from the function's environment ([`RelayArgs`], JSON logs
//! by default); the clients and the queue URL are made once, at cold start.
//! Each invocation's metrics are printed as CloudWatch Embedded Metric
//! Format lines on stdout before it is answered (`OBT_METRICS_NAMESPACE`).
//! More: `docs/ARCHITECTURE.md` ("Lambda").

use std::sync::Arc;

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use clap::{CommandFactory, FromArgMatches, Parser};
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use obt_runtime::metrics::{Emf, EmfArgs};

use crate::change::{Change, ChangeError};
use crate::config::{RelayArgs, SweepArgs};
use crate::relay::Relay;
use crate::sweeper::{SweepError, SweepSummary, Sweeper};

/// The name the function's settings are parsed under (`--help`, errors).
pub const FUNCTION_NAME: &str = "stream-relay-lambda";

/// Publish the outbox events of the api's DynamoDB table, delivered by a
/// Lambda event source mapping on its stream, to the SQS FIFO queue.
/// Settings come from the environment only.
#[derive(Debug, Parser)]
#[command(name = FUNCTION_NAME, version)]
struct LambdaSettings {
    #[command(flatten)]
    relay: RelayArgs,
}

/// The function's settings, from the environment alone: Lambda starts the
/// bootstrap binary with no arguments of ours, so the command line is
/// ignored. Logs default to JSON (CloudWatch); `OBT_LOG_FORMAT=text`
/// still wins.
pub fn settings_from_env() -> Result<RelayArgs, clap::Error> {
    let command = LambdaSettings::command().mut_arg("log_format", |arg| arg.default_value("json"));
    let matches = command.try_get_matches_from([FUNCTION_NAME])?;
    Ok(LambdaSettings::from_arg_matches(&matches)?.relay)
}

/// `OBT_METRICS_NAMESPACE`, from the environment alone: the CloudWatch
/// namespace of the metrics both functions print ([`Emf`]).
pub fn metrics_settings_from_env() -> Result<EmfArgs, clap::Error> {
    #[derive(Debug, Parser)]
    struct MetricsSettings {
        #[command(flatten)]
        emf: EmfArgs,
    }
    let matches = MetricsSettings::command().try_get_matches_from([FUNCTION_NAME])?;
    Ok(MetricsSettings::from_arg_matches(&matches)?.emf)
}

/// An invocation that cannot be answered with a partial batch response.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error(
        "record {index} of the batch cannot be read and has no sequence number to report \
         ({source}); failing the invocation, so that Lambda retries the whole batch"
    )]
    Unnamed {
        index: usize,
        #[source]
        source: ChangeError,
    },
}

impl From<LambdaError> for Diagnostic {
    fn from(error: LambdaError) -> Self {
        Diagnostic {
            error_type: "LambdaError".to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// The function's handler. Built once per execution environment.
#[derive(Debug, Clone)]
pub struct StreamHandler {
    relay: Arc<Relay>,
}

impl StreamHandler {
    pub fn new(relay: Relay) -> Self {
        Self {
            relay: Arc::new(relay),
        }
    }

    /// Handles one batch of stream records.
    #[tracing::instrument(skip_all, fields(records = event.records.len()))]
    pub async fn handle(&self, mut event: Event) -> Result<DynamoDbEventResponse, LambdaError> {
        crate::metrics::batch_received(
            event.records.len(),
            event
                .records
                .last()
                .map(|r| r.change.approximate_creation_date_time.timestamp_millis()),
        );
        let decoded = decode(&mut event.records);
        let first_unfinished = match self.relay.handle(&decoded.changes).await {
            Ok(summary) => {
                tracing::info!(
                    published = summary.published,
                    skipped = summary.skipped,
                    "records relayed"
                );
                decoded.unreadable.as_ref().map(|(index, error)| {
                    tracing::error!(record = index, %error, "a record cannot be read; it and the ones after it will be retried");
                    *index
                })
            }
            Err(e) => {
                // The changes come from records before any unreadable one,
                // so this is the earlier failure.
                let record = decoded
                    .record_of
                    .get(e.first_unfinished)
                    .copied()
                    .unwrap_or(0);
                tracing::error!(record, error = %e, "could not relay every record; the rest will be retried");
                Some(record)
            }
        };
        respond(
            &event.records,
            first_unfinished,
            decoded.unreadable.map(|(_, error)| error),
        )
    }
}

/// The records of a batch as changes, up to the first record that cannot
/// be read (the records after it are left for the retry, to keep order).
#[derive(Debug, Default)]
struct Decoded {
    changes: Vec<Change>,
    /// For each change, the index of its record in the batch.
    record_of: Vec<usize>,
    /// The first record that cannot be read, and why.
    unreadable: Option<(usize, ChangeError)>,
}

/// Takes the records' images (the records keep what the response names).
fn decode(records: &mut [EventRecord]) -> Decoded {
    let mut decoded = Decoded::default();
    for (index, record) in records.iter_mut().enumerate() {
        match Change::from_lambda_record(record) {
            Ok(Some(change)) => {
                decoded.changes.push(change);
                decoded.record_of.push(index);
            }
            Ok(None) => {}
            Err(error) => {
                decoded.unreadable = Some((index, error));
                break;
            }
        }
    }
    decoded
}

/// The partial batch response naming record `first_unfinished`, or an
/// empty one when every record is done.
fn respond(
    records: &[EventRecord],
    first_unfinished: Option<usize>,
    unreadable_error: Option<ChangeError>,
) -> Result<DynamoDbEventResponse, LambdaError> {
    let mut response = DynamoDbEventResponse::default();
    let Some(index) = first_unfinished else {
        return Ok(response);
    };
    let sequence_number = records
        .get(index)
        .and_then(|r| r.change.sequence_number.clone())
        .filter(|s| !s.is_empty());
    match sequence_number {
        Some(sequence_number) => {
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence_number);
            response.batch_item_failures.push(failure);
            Ok(response)
        }
        None => Err(LambdaError::Unnamed {
            index,
            source: unreadable_error.unwrap_or(ChangeError::Missing {
                sequence_number: String::new(),
                what: "sequence number",
            }),
        }),
    }
}

/// Serves invocations until the Lambda runtime stops the process; the
/// metrics of each are printed (`metrics`) before it is answered.
pub async fn run(relay: Relay, metrics: Emf) -> Result<(), lambda_runtime::Error> {
    let handler = StreamHandler::new(relay);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        let handler = handler.clone();
        async move {
            let answer = handler.handle(event.payload).await;
            metrics.flush();
            // Before the environment is frozen (OTEL_EXPORTER_OTLP_ENDPOINT).
            obt_runtime::trace::export::flush().await;
            answer
        }
    }))
    .await
}

/// The scheduled sweeper's name (`--help`, errors).
pub const SWEEPER_FUNCTION_NAME: &str = "outbox-sweeper-lambda";

/// Publish the events that waited too long in the outboxes of the api's
/// table (the stream lost them), run on a schedule. Settings come from the
/// environment only.
#[derive(Debug, Parser)]
#[command(name = SWEEPER_FUNCTION_NAME, version)]
struct SweeperSettings {
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    sweep: SweepArgs,
}

/// The scheduled sweeper's settings, from the environment alone (as
/// [`settings_from_env`]); `OBT_SWEEP_INTERVAL_SECS` is the schedule's
/// business and ignored here.
pub fn sweeper_settings_from_env() -> Result<(RelayArgs, SweepArgs), clap::Error> {
    let command = SweeperSettings::command()
        .name(SWEEPER_FUNCTION_NAME)
        .mut_arg("log_format", |arg| arg.default_value("json"));
    let matches = command.try_get_matches_from([SWEEPER_FUNCTION_NAME])?;
    let settings = SweeperSettings::from_arg_matches(&matches)?;
    Ok((settings.relay, settings.sweep))
}

/// A sweep that failed: the invocation fails (the `Errors` metric counts
/// it) and the next scheduled run tries again; nothing is lost meanwhile,
/// the events wait on their items.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SweepFailed(#[from] SweepError);

impl From<SweepFailed> for Diagnostic {
    fn from(error: SweepFailed) -> Self {
        Diagnostic {
            error_type: "SweepFailed".to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// Serves scheduled invocations (any payload: an EventBridge Scheduler or
/// rule event) until the Lambda runtime stops the process. Each is one
/// sweep; the answer is its [`SweepSummary`].
pub async fn run_sweeper(sweeper: Sweeper, metrics: Emf) -> Result<(), lambda_runtime::Error> {
    let sweeper = Arc::new(sweeper);
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| {
        let sweeper = Arc::clone(&sweeper);
        async move {
            let swept = sweeper.sweep().await;
            metrics.flush();
            obt_runtime::trace::export::flush().await;
            let summary: SweepSummary = swept.map_err(SweepFailed)?;
            Ok::<_, SweepFailed>(summary)
        }
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three records as Lambda delivers them: a write adding event 1, the
    /// relay's acknowledgement, and the item's deletion.
    fn fixture() -> Event {
        serde_json::from_str(include_str!("../tests/fixtures/dynamodb-stream-event.json"))
            .expect("the fixture is a DynamoDB stream event")
    }

    #[test]
    fn writes_become_changes_acknowledgements_add_nothing_and_deletions_are_skipped() {
        let mut event = fixture();
        let decoded = decode(&mut event.records);
        assert!(decoded.unreadable.is_none());
        assert_eq!(decoded.record_of, [0, 1], "the REMOVE record is skipped");
        let [write, ack] = &decoded.changes[..] else {
            panic!("two changes: {:?}", decoded.changes);
        };
        assert_eq!(write.sequence_number, "100000000000000000001");
        assert_eq!(write.identity, "AB1");
        assert_eq!(write.version, Some(1));
        assert!(write.adds_events);
        assert_eq!(write.pending.len(), 1);
        assert_eq!(write.pending[0].seq, 1);
        assert!(!ack.adds_events, "an acknowledgement adds no event");
    }

    #[test]
    fn an_outbox_this_relay_cannot_read_is_a_change_that_parks_not_a_failure() {
        let mut event = fixture();
        event.records[0].change.new_image.insert(
            "outbox".to_owned(),
            serde_dynamo::AttributeValue::S("?".to_owned()),
        );
        let decoded = decode(&mut event.records);
        assert!(decoded.unreadable.is_none(), "no record is unreadable");
        assert_eq!(decoded.record_of, [0, 1]);
        let write = &decoded.changes[0];
        assert!(write.pending.is_empty());
        assert_eq!(write.unreadable.as_ref().map(|u| u.seq), Some(None));
    }

    #[test]
    fn a_write_without_a_new_image_is_an_error_not_a_skip() {
        let mut event = fixture();
        event.records[0].change.new_image = serde_dynamo::Item::default();
        assert!(matches!(
            Change::from_lambda_record(&mut event.records[0]),
            Err(ChangeError::Missing { .. })
        ));
    }

    #[test]
    fn a_batch_fully_done_answers_an_empty_list() {
        let event = fixture();
        let response = respond(&event.records, None, None).expect("answer");
        assert!(response.batch_item_failures.is_empty());
        assert_eq!(
            serde_json::to_value(&response).expect("serializes"),
            serde_json::json!({ "batchItemFailures": [] })
        );
    }

    #[test]
    fn a_record_without_a_sequence_number_fails_the_whole_invocation() {
        let mut event = fixture();
        event.records[0].change.sequence_number = None;
        let decoded = decode(&mut event.records);
        assert_eq!(decoded.unreadable.as_ref().map(|(i, _)| *i), Some(0));
        let error = decoded.unreadable.map(|(_, e)| e);
        assert!(matches!(
            respond(&event.records, Some(0), error),
            Err(LambdaError::Unnamed { index: 0, .. })
        ));
    }

    #[test]
    fn the_settings_are_consistent() {
        LambdaSettings::command().debug_assert();
    }

    #[test]
    fn settings_come_from_the_environment_with_json_logs_by_default() {
        // The environment of the test process sets none of OBT_*, or the
        // values a developer chose; either way parsing ignores argv.
        let settings = settings_from_env().expect("defaults parse");
        if std::env::var_os("OBT_LOG_FORMAT").is_none() {
            assert_eq!(settings.log.log_format, obt_runtime::LogFormat::Json);
        }
    }
}
