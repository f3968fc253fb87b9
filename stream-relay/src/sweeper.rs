//! The sweeper: publishes what the stream did not deliver in time (records
//! trimmed after 24 h, a Lambda that gave up, a stream disabled or
//! re-created). It queries the sparse index [`PENDING_INDEX`](obt_contract::outbox::PENDING_INDEX) for items whose
//! oldest pending event is older than the threshold, and hands each to the
//! same [`Relay::handle`] as the stream does; racing the stream relay adds
//! only duplicates. A parked item is skipped; an item or bucket that fails
//! does not end the pass and is reported at its end. Design:
//! `docs/ARCHITECTURE.md` ("The sweeper, and the sparse index").

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use futures::{StreamExt, stream};
use obt_contract::outbox::{PENDING_BUCKETS, pending_since};

use crate::change::Change;
use crate::outbox::{OutboxError, OutboxTable};
use crate::relay::Relay;

/// Items swept at once.
const CONCURRENT_ITEMS: usize = 16;

/// The sequence number given to a sweep's changes (they come from no
/// stream; nothing checkpoints them).
pub const SWEEP_SEQUENCE_NUMBER: &str = "sweep";

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("could not republish the events of {identity}: {message}")]
    Relay { identity: String, message: String },
    /// The pass went on past these failures; they are retried at the next.
    #[error(
        "{} part(s) of the sweep failed and are retried at the next one (the first: {first}); \
         everything else was swept",
        summary.failed
    )]
    Incomplete {
        summary: SweepSummary,
        first: Box<SweepError>,
    },
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SweepSummary {
    /// Items found in the index older than the threshold.
    pub items: usize,
    /// Events published again (their stream records never came, or came
    /// too late).
    pub republished: usize,
    /// Items skipped because their identity is parked.
    pub parked: usize,
    /// Items (or index buckets) that could not be swept this time.
    pub failed: usize,
}

/// Sweeps one table. Cheap to share.
#[derive(Debug, Clone)]
pub struct Sweeper {
    table: String,
    outbox: OutboxTable,
    relay: Arc<Relay>,
    /// How long an event may wait in an outbox before the sweeper takes it:
    /// well above the stream relay's normal delay, so that the sweeper only
    /// acts when the stream did not.
    older_than: Duration,
}

/// How one item was swept.
enum Swept {
    Published(usize),
    Parked,
}

impl Sweeper {
    pub fn new(client: Client, table: String, relay: Arc<Relay>, older_than: Duration) -> Self {
        Self {
            outbox: OutboxTable::new(client, table.clone()),
            table,
            relay,
            older_than,
        }
    }

    /// One pass over every bucket of the index. A bucket or an item that
    /// fails does not stop the pass: the others are swept, and the failure
    /// is reported at the end ([`SweepError::Incomplete`]).
    #[tracing::instrument(skip_all, fields(table = %self.table))]
    pub async fn sweep(&self) -> Result<SweepSummary, SweepError> {
        let cutoff = pending_since(time::OffsetDateTime::now_utc())
            .saturating_sub(u64::try_from(self.older_than.as_millis()).unwrap_or(u64::MAX));
        let mut summary = SweepSummary::default();
        let mut first_failure: Option<SweepError> = None;
        let mut failed = |summary: &mut SweepSummary, error: SweepError| {
            tracing::error!(error = %error, "could not sweep part of the table; going on");
            summary.failed += 1;
            first_failure.get_or_insert(error);
        };
        for bucket in 0..PENDING_BUCKETS {
            let identities = match self.overdue(bucket, cutoff).await {
                Ok(identities) => identities,
                Err(e) => {
                    failed(&mut summary, e);
                    continue;
                }
            };
            summary.items += identities.len();
            let swept: Vec<Result<Swept, SweepError>> = stream::iter(identities)
                .map(|identity| async move { self.sweep_item(&identity).await })
                .buffer_unordered(CONCURRENT_ITEMS)
                .collect()
                .await;
            for result in swept {
                match result {
                    Ok(Swept::Published(count)) => summary.republished += count,
                    Ok(Swept::Parked) => summary.parked += 1,
                    Err(e) => failed(&mut summary, e),
                }
            }
        }
        count_parked(self.relay.outbox()).await;
        let outcome = if first_failure.is_none() {
            "complete"
        } else {
            "incomplete"
        };
        metrics::counter!("obt_relay_sweeper_runs_total", "outcome" => outcome).increment(1);
        metrics::counter!("obt_relay_sweeper_republished_total")
            .increment(u64::try_from(summary.republished).unwrap_or(u64::MAX));
        if summary.republished > 0 {
            tracing::warn!(
                items = summary.items,
                republished = summary.republished,
                "the sweeper published events the stream had not delivered in time"
            );
        } else {
            tracing::debug!(items = summary.items, parked = summary.parked, "sweep done");
        }
        match first_failure {
            None => Ok(summary),
            Some(first) => Err(SweepError::Incomplete {
                summary,
                first: Box::new(first),
            }),
        }
    }

    /// The identities in `bucket` with an event pending since before `cutoff`.
    async fn overdue(&self, bucket: u32, cutoff: u64) -> Result<Vec<String>, SweepError> {
        let entries = self.outbox.pending(bucket, Some(cutoff)).await?;
        Ok(entries.into_iter().map(|(_, identity)| identity).collect())
    }

    /// Publishes and acknowledges what `identity` has pending (or parks it,
    /// when that cannot be published); an item with nothing pending leaves
    /// the index; a parked item is left to its operator.
    async fn sweep_item(&self, identity: &str) -> Result<Swept, SweepError> {
        let Some(image) = self.outbox.image(identity).await? else {
            return Ok(Swept::Published(0));
        };
        if image.parked.is_some() {
            return Ok(Swept::Parked);
        }
        let version = image.version;
        let change = Change::from_images(SWEEP_SEQUENCE_NUMBER.to_owned(), None, image);
        if !change.adds_events {
            // The outbox is empty: a stale index entry (an acknowledgement
            // that raced a write). Clear it if the item is still as read.
            self.outbox.acknowledge(identity, &[], version).await?;
            return Ok(Swept::Published(0));
        }
        let summary = self
            .relay
            .handle(std::slice::from_ref(&change))
            .await
            .map_err(|e| SweepError::Relay {
                identity: identity.to_owned(),
                message: e.to_string(),
            })?;
        Ok(if summary.parked > 0 {
            Swept::Parked
        } else {
            Swept::Published(summary.published)
        })
    }
}
/// Sets `obt_relay_identities_parked` from the parked index, once per
/// sweep (16 small queries). Left as it was when the index cannot be read:
/// the sweep's own result is what matters.
async fn count_parked(outbox: &OutboxTable) {
    match outbox.parked_identities().await {
        #[allow(clippy::cast_precision_loss)] // far below 2^53
        Ok(parked) => metrics::gauge!("obt_relay_identities_parked").set(parked.len() as f64),
        Err(e) => tracing::warn!(error = %e, "cannot count the parked identities"),
    }
}
