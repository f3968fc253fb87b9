//! The consumer stage's parked identities (docs/OPERATIONS.md): the
//! consumer parks an identity when a message of its group cannot be read
//! or applied (dead-lettered alone), or when an earlier event is missing;
//! its later events are held in the consumer's records. The retry replays
//! the identity's dead letters and applies what waited, in seq order
//! (`obt_consumer::parking`).

use obt_consumer::parking::{self, RetryOptions, RetryOutcome, RetryReport};
use obt_consumer::{DeadLetterQueue, Queue, Records, StorageArgs};
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use crate::cli::Settings;
use crate::parking::{AdminError, ParkedIdentity, age_secs};

/// The consumer's records and its dead-letter queue.
#[derive(Debug)]
pub struct ConsumerParkings {
    records: Records,
    dead_letters: DeadLetterQueue,
}

impl ConsumerParkings {
    pub async fn connect(settings: &Settings) -> Result<Self, AdminError> {
        let config = obt_runtime::aws_config().await;
        let storage = StorageArgs {
            backend: obt_runtime::args::StorageArgs {
                storage: settings.storage,
                database_url: settings.database_url.clone(),
            },
            table: settings.consumer_table.clone(),
        };
        let records = obt_consumer::store::open(&config, &storage, 2, "obt-admin").await?;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let dead_letters = match &settings.dlq_url {
            Some(url) => DeadLetterQueue::new(sqs, url.clone()),
            None => {
                let queue_url = match &settings.queue_url {
                    Some(url) => url.clone(),
                    None => Queue::resolve_url(&sqs, &settings.queue_name).await?,
                };
                DeadLetterQueue::of_queue(&sqs, &queue_url).await?
            }
        };
        Ok(Self {
            records,
            dead_letters,
        })
    }

    pub async fn list(&self) -> Result<Vec<ParkedIdentity>, AdminError> {
        list(&self.records).await
    }

    pub async fn retry(
        &self,
        identity: &str,
        discard: &[String],
    ) -> Result<RetryReport, AdminError> {
        let options = RetryOptions {
            discard: discard.to_vec(),
        };
        Ok(parking::retry(
            self.records.ledger().as_ref(),
            &self.dead_letters,
            identity,
            &options,
        )
        .await?)
    }
}

/// The consumer's parked identities in `records`, as the operator sees
/// them.
pub async fn list(records: &Records) -> Result<Vec<ParkedIdentity>, AdminError> {
    let parked = parking::list_parked(records.reader().as_ref()).await?;
    Ok(parked
        .into_iter()
        .map(|p| {
            let at = p.parking.parked_at.format(&Rfc3339).unwrap_or_default();
            ParkedIdentity {
                identity: p.identity,
                stage: "consumer",
                cause: p.parking.cause.as_str().to_owned(),
                reason: p.parking.reason,
                seq: p.parking.seq,
                age_secs: age_secs(&at),
                parked_at: at,
                waiting: p.held,
                message_id: p.parking.message_id,
            }
        })
        .collect())
}

/// Whether the identity flows again (or never was parked).
pub fn succeeded(report: &RetryReport) -> bool {
    matches!(
        report.outcome,
        RetryOutcome::NotParked | RetryOutcome::Unparked
    )
}

/// A report as one JSON document.
pub fn to_json(report: &RetryReport) -> serde_json::Value {
    let (outcome, cause, because, gap_at) = match &report.outcome {
        RetryOutcome::NotParked => ("not_parked", None, None, None),
        RetryOutcome::Unparked => ("unparked", None, None, None),
        RetryOutcome::StillParked {
            cause,
            because,
            gap_at,
        } => ("still_parked", Some(cause.as_str()), Some(because), *gap_at),
        RetryOutcome::DeadLettersLeft { because } => {
            ("dead_letters_left", None, Some(because), None)
        }
    };
    json!({
        "identity": report.identity,
        "outcome": outcome,
        "cause": cause,
        "because": because,
        "gap_at": gap_at,
        "replayed": report.replayed,
        "discarded": report.discarded,
        "applied": report.applied,
        "last_seq": report.last_seq,
    })
}
