//! "When did the consumer last apply an event?", cheaply. Nothing in the
//! table is sorted by time, so the answer would take a scan of every
//! item; instead each consumer process refreshes one marker item after an
//! apply, at most every [`APPLIED_MARK_EVERY`] (a write every few seconds
//! per process, whatever the traffic), and `obt-admin status` reads it
//! with one GetItem.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::error::SdkError;
use time::OffsetDateTime;

use super::{DynamoDbLedger, HEAD_SEQ, attr, n, s};
use crate::store::LedgerError;

/// How often a consumer process refreshes the marker at most: the
/// marker may be this much behind the last apply.
pub const APPLIED_MARK_EVERY: Duration = Duration::from_secs(5);

/// The marker's partition key: no identity can be it (`#` is not allowed
/// in one), and with no `last_seq` nor parking it is no head either, so
/// the listings of identities and parkings pass it by.
pub const APPLIED_MARK_IDENTITY: &str = "#last-applied";

/// Epoch milliseconds of the last apply, on the marker.
const LAST_APPLIED_MS: &str = "last_applied_ms";

/// When this process last wrote the marker (epoch ms; 0: never).
#[derive(Debug, Clone, Default)]
pub(super) struct AppliedMark(Arc<AtomicI64>);

fn epoch_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl DynamoDbLedger {
    /// Refreshes the marker after an apply, unless this process did less
    /// than [`APPLIED_MARK_EVERY`] ago. The write runs in a task of its
    /// own, so that the apply (and the message's deletion) does not wait
    /// for it; a failure is logged and otherwise ignored: the event is
    /// applied; the marker is only for operators.
    ///
    /// The task is outside the message's span on purpose: a span stays
    /// open while a task holds it, and with it the poller's above it, so
    /// a slow marker write would hold back the message's exported span,
    /// and one still in flight at shutdown would lose it (the exporter is
    /// shut down before the runtime drops the task).
    pub(super) fn mark_applied(&self) {
        let now = epoch_ms(OffsetDateTime::now_utc());
        let every = i64::try_from(APPLIED_MARK_EVERY.as_millis()).unwrap_or(i64::MAX);
        let last = self.applied_mark.0.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every
            || self
                .applied_mark
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let write = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::IDENTITY, s(APPLIED_MARK_IDENTITY))
            .key(attr::SEQ, n(HEAD_SEQ))
            .update_expression("SET #m = :now")
            // Several consumers: the marker never goes back.
            .condition_expression("attribute_not_exists(#m) OR #m < :now")
            .expression_attribute_names("#m", LAST_APPLIED_MS)
            .expression_attribute_values(":now", n(now));
        tokio::spawn(async move {
            match write.send().await {
                Ok(_) => {}
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => tracing::debug!(
                    error = %obt_runtime::error_chain(&e),
                    "could not refresh the last-applied marker; obt-admin status may show an older time"
                ),
            }
        });
    }

    /// The marker's time, or `None` when no consumer applied anything
    /// since the marker came to be.
    pub async fn last_applied(&self) -> Result<Option<OffsetDateTime>, LedgerError> {
        let Some(item) = self.get(APPLIED_MARK_IDENTITY, HEAD_SEQ).await? else {
            return Ok(None);
        };
        let malformed = || self.malformed(APPLIED_MARK_IDENTITY, HEAD_SEQ, LAST_APPLIED_MS);
        let ms: i128 = match item.get(LAST_APPLIED_MS) {
            Some(aws_sdk_dynamodb::types::AttributeValue::N(text)) => {
                text.parse().map_err(|_| malformed())?
            }
            _ => return Err(malformed()),
        };
        OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)
            .map(Some)
            .map_err(|_| malformed())
    }
}
