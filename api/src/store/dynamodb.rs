//! The DynamoDB backend: one conditional write of the identity's item (a
//! TransactWriteItems, with the Put of the Idempotency-Key's record when
//! there is a key) records the spending and puts its event in the item's
//! outbox; lost races are retried after a jittered backoff. Why it is a
//! TransactWriteItems, when a failure is a 503 and when a 500, and how the
//! outbox is bounded: docs/ARCHITECTURE.md, "The api's write".

use std::collections::HashMap;
use std::fmt::Debug;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};
use hashlink::LruCache;
use obt_contract::outbox::{
    PENDING_BUCKET_ATTR, PENDING_SINCE_ATTR, outbox_key, pending_bucket, pending_since,
};
use obt_contract::{Envelope, Identity, SpendingRecorded, TraceContext};
use obt_runtime::backoff::Backoff;
use time::format_description::well_known::Rfc3339;
use tracing::instrument;

use super::item::{
    self, COUNT_ATTR, IDENTITY_ATTR, Item, NAME_ATTR, OUTBOX_ATTR, SURNAME_ATTR, TOTAL_ATTR,
    UPDATED_AT_ATTR, VERSION_ATTR,
};
use super::locks::StripedLocks;
use super::outcome::{Outcome, StoredOutcome};
use super::{BoxError, RetryPolicy, StoreError, StoreOptions, Summary};
use crate::idempotency::{Fingerprint, Idempotency, IdempotencyKey, KeyedRequest};
use crate::input::NewSpending;

/// The api's table, and the table of its Idempotency-Key records.
#[derive(Debug)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
    idempotency_table: String,
    options: StoreOptions,
    locks: StripedLocks<Versions>,
}

/// How one conditional write ended, short of an error.
enum Written {
    Yes,
    /// The item's condition failed: the item is not at the version the
    /// write expected (another write of the identity came first, or this
    /// process did not know the item), or the outbox is full.
    LostRace(Current),
    /// The transaction collided with another one on one of its items:
    /// nothing is known about the conditions; try again.
    Conflict,
    /// The Idempotency-Key is in use (unexpired): its record, as the failed
    /// condition returned it (`ALL_OLD`), when DynamoDB sent it.
    KeyTaken(Option<Item>),
}

/// The item's version when its condition failed.
enum Current {
    /// From the item the failed condition returned (`ALL_OLD`).
    Told(u64),
    /// DynamoDB returned no item (there is none, or it did not say) or one
    /// without a readable version: [`DynamoDbStore::version`] reads it.
    Untold,
}

/// What this process knows of the items' versions, kept under the
/// identities' locks ([`StripedLocks`]): the version each was at after the
/// last write of this process. A write is conditioned on it, so that a
/// POST is one request; when another process wrote in between, the failed
/// condition returns the item (`ALL_OLD`) and the write is sent again at
/// the version it tells. Bounded: each stripe keeps the
/// [`Versions::PER_STRIPE`] identities written last.
#[derive(Debug)]
struct Versions(LruCache<Box<str>, u64>);

impl Versions {
    /// 64 x 256 stripes: 16,384 identities, about 2 MB at most.
    const PER_STRIPE: usize = 64;

    fn forget(&mut self, identity: &Identity) -> Option<u64> {
        self.0.remove(identity.as_str())
    }

    fn remember(&mut self, identity: &Identity, version: u64) {
        self.0.insert(identity.as_str().into(), version);
    }
}

impl Default for Versions {
    fn default() -> Self {
        Self(LruCache::new(Self::PER_STRIPE))
    }
}

/// The expressions of the update that records an event.
struct UpdateParts {
    update: &'static str,
    condition: &'static str,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

/// The attributes of a key record in the idempotency table
/// (`migrations/dynamodb/idempotency.json`).
const KEY_ATTR: &str = "idempotency_key";
const FINGERPRINT_ATTR: &str = "fingerprint";
/// The [`StoredOutcome`]'s text ([`super::outcome::StoredText`]).
const LOCATION_ATTR: &str = "response_location";
const BODY_ATTR: &str = "response_body";
const CREATED_AT_ATTR: &str = "created_at";
/// Epoch seconds; the table's Time to Live attribute.
const EXPIRES_AT_ATTR: &str = "expires_at";

/// The default name of the idempotency table.
pub const DEFAULT_IDEMPOTENCY_TABLE: &str = "obt-idempotency";

impl DynamoDbStore {
    /// A store on `table`, with its Idempotency-Key records in
    /// [`DEFAULT_IDEMPOTENCY_TABLE`] unless
    /// [`with_idempotency_table`](Self::with_idempotency_table) says
    /// otherwise.
    pub fn new(client: Client, table: impl Into<String>, options: StoreOptions) -> Self {
        Self {
            client,
            table: table.into(),
            idempotency_table: DEFAULT_IDEMPOTENCY_TABLE.to_owned(),
            options,
            locks: StripedLocks::new(),
        }
    }

    /// The table of the Idempotency-Key records.
    pub fn with_idempotency_table(mut self, table: impl Into<String>) -> Self {
        self.idempotency_table = table.into();
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Records a spending and its event in one write (with a key, the
    /// key's record too, or the key's first outcome is replayed), retrying
    /// lost races. Any failure after an attempt of the write whose outcome
    /// is unknown is [`StoreError::WriteOutcomeUnknown`], whatever failed
    /// last: the spending may be recorded, so the answer must not say it
    /// is not.
    #[instrument(skip_all, fields(identity = %spending.identity))]
    pub async fn record(
        &self,
        spending: &NewSpending,
        idempotency: &Idempotency,
        trace: Option<&TraceContext>,
    ) -> Result<Outcome, StoreError> {
        let mut known = self.locks.lock(spending.identity.as_str()).await;
        // Taken out, and put back only when the request ends knowing the
        // item's version: every other ending (an error, an outcome that
        // may have committed) forgets it.
        let remembered = known.forget(&spending.identity);
        let mut outcome_unknown = false;
        let mut learned = None;
        let result = self
            .try_record(
                spending,
                idempotency,
                trace,
                remembered,
                &mut learned,
                &mut outcome_unknown,
            )
            .await;
        if let Some(version) = learned.filter(|_| !outcome_unknown) {
            known.remember(&spending.identity, version);
        }
        result.map_err(|error| match error {
            // The key is another request's: true whatever this one did.
            StoreError::KeyReused => error,
            error if outcome_unknown => StoreError::WriteOutcomeUnknown {
                call: WRITE_CALL,
                last: Box::new(error),
            },
            error => error,
        })
    }

    /// The write and its retries. `remembered` is the version this
    /// process last knew of the item (`None`: it knows nothing, and the
    /// first attempt is conditioned on the item's absence); `learned` is
    /// set to the item's version whenever DynamoDB tells it (a success, or
    /// a failed condition's `ALL_OLD` item).
    async fn try_record(
        &self,
        spending: &NewSpending,
        idempotency: &Idempotency,
        trace: Option<&TraceContext>,
        remembered: Option<u64>,
        learned: &mut Option<u64>,
        outcome_unknown: &mut bool,
    ) -> Result<Outcome, StoreError> {
        let policy = self.options.retry;
        // The version the next attempt is conditioned on (`None`: the
        // item's absence), and whether DynamoDB just said so (then a failed
        // condition means another writer came in between: a lost race).
        let mut version = remembered;
        let mut told = false;
        // Attempts lost to other writers so far.
        let mut failures: u32 = 0;
        loop {
            if failures > 0 && !policy.may_retry(failures) {
                return Err(StoreError::Contention { attempts: failures });
            }
            let seq = match version {
                None => 1,
                Some(v) => v.checked_add(1).ok_or_else(|| {
                    malformed(&spending.identity, format!("version {v} cannot grow"))
                })?,
            };
            let envelope = Envelope::spending_recorded(
                spending.identity.clone(),
                seq,
                SpendingRecorded {
                    name: spending.name.clone(),
                    surname: spending.surname.clone(),
                    amount: spending.amount,
                },
            )
            .with_trace(trace.cloned());
            let written = match idempotency {
                Idempotency::Unkeyed => {
                    self.transact(&envelope, version, None, outcome_unknown)
                        .await?
                }
                Idempotency::Keyed(request) => {
                    let now = epoch_secs();
                    let written = self
                        .write_with_key(&envelope, version, request, now, outcome_unknown)
                        .await?;
                    if let Written::KeyTaken(record) = written {
                        // None: expired or removed since the write; the
                        // loop tries again.
                        let stored = match record {
                            Some(record) => key_record(&request.key, &record, now)?,
                            None => self.stored_key(&request.key, now).await?,
                        };
                        if let Some((fingerprint, stored)) = stored {
                            if fingerprint != request.fingerprint {
                                return Err(StoreError::KeyReused);
                            }
                            tracing::debug!("replaying the outcome of the key's first request");
                            return Ok(Outcome::Replayed(stored));
                        }
                        Written::Conflict
                    } else {
                        written
                    }
                }
            };
            match written {
                Written::Yes => {
                    tracing::debug!(seq, failures, "recorded");
                    *learned = Some(seq);
                    return Ok(Outcome::Recorded(StoredOutcome::from(&envelope)));
                }
                Written::LostRace(current) => {
                    let current = match current {
                        Current::Told(current) => Some(current),
                        // DynamoDB did not send the item (the condition
                        // said it exists): read its version.
                        Current::Untold => self.version(&spending.identity).await?,
                    };
                    *learned = current;
                    if current.is_some() && current == version {
                        // The version held, so the condition failed on
                        // the size of the outbox.
                        let limit = self.options.max_pending_events;
                        return Err(StoreError::OutboxFull { limit });
                    }
                    let stale = !told;
                    (version, told) = (current, true);
                    if stale {
                        // What this process remembered (or assumed) was
                        // out of date: another process wrote, or this one
                        // restarted. Now it knows; no race was lost.
                        tracing::debug!(seq, ?version, "the remembered version was stale");
                        metrics::counter!("obt_api_store_retries_total", "reason" => "stale_version")
                            .increment(1);
                        continue;
                    }
                    tracing::debug!(seq, ?version, "lost an optimistic-concurrency race");
                }
                Written::Conflict | Written::KeyTaken(_) => {
                    tracing::debug!(seq, "the transaction conflicted with another one");
                }
            }
            failures += 1;
            metrics::counter!("obt_api_store_conflicts_total").increment(1);
            if policy.may_retry(failures) {
                metrics::counter!("obt_api_store_retries_total", "reason" => "conflict")
                    .increment(1);
                tokio::time::sleep(policy.delay(failures)).await;
            }
        }
    }

    /// The current version (seq of the last event) of an identity's item,
    /// `None` when there is no item: read only when a failed condition's
    /// answer did not carry the item.
    async fn version(&self, identity: &Identity) -> Result<Option<u64>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(IDENTITY_ATTR, AttributeValue::S(identity.to_string()))
            .consistent_read(true)
            .projection_expression("#version")
            .expression_attribute_names("#version", VERSION_ATTR)
            .send()
            .await
            .map_err(classify("GetItem"))?;
        out.item
            .map(|item| item::integer(&item, VERSION_ATTR))
            .transpose()
            .map_err(|reason| malformed(identity, reason))
    }

    /// The update of the identity's item that records `envelope`,
    /// conditional on the item still being at `version` (or still absent).
    fn update_of(
        &self,
        envelope: &Envelope,
        version: Option<u64>,
    ) -> Result<UpdateParts, StoreError> {
        let event = serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(envelope)
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        let updated_at = envelope
            .occurred_at
            .format(&Rfc3339)
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        let data = &envelope.data;
        let mut names = HashMap::from([
            ("#name".to_owned(), NAME_ATTR.to_owned()),
            ("#surname".to_owned(), SURNAME_ATTR.to_owned()),
            ("#total".to_owned(), TOTAL_ATTR.to_owned()),
            ("#count".to_owned(), COUNT_ATTR.to_owned()),
            ("#version".to_owned(), VERSION_ATTR.to_owned()),
            ("#outbox".to_owned(), OUTBOX_ATTR.to_owned()),
            ("#updated_at".to_owned(), UPDATED_AT_ATTR.to_owned()),
            ("#pending_since".to_owned(), PENDING_SINCE_ATTR.to_owned()),
            ("#pending_bucket".to_owned(), PENDING_BUCKET_ATTR.to_owned()),
        ]);
        let mut values = HashMap::from([
            (":name".to_owned(), AttributeValue::S(data.name.to_string())),
            (
                ":surname".to_owned(),
                AttributeValue::S(data.surname.to_string()),
            ),
            // Display is the exact decimal with two fraction digits.
            (
                ":amount".to_owned(),
                AttributeValue::N(data.amount.to_string()),
            ),
            (":one".to_owned(), AttributeValue::N("1".to_owned())),
            (
                ":seq".to_owned(),
                AttributeValue::N(envelope.seq.to_string()),
            ),
            (":updated_at".to_owned(), AttributeValue::S(updated_at)),
            (
                ":pending_since".to_owned(),
                AttributeValue::N(pending_since(envelope.occurred_at).to_string()),
            ),
            (
                ":pending_bucket".to_owned(),
                AttributeValue::N(pending_bucket(envelope.identity.as_str()).to_string()),
            ),
        ]);
        let key = outbox_key(envelope.seq);
        let (update, condition) = match version {
            None => {
                names.insert("#identity".to_owned(), IDENTITY_ATTR.to_owned());
                values.insert(
                    ":outbox".to_owned(),
                    AttributeValue::M(HashMap::from([(key, event)])),
                );
                (
                    "SET #name = :name, #surname = :surname, #total = :amount, #count = :one, \
                     #version = :seq, #outbox = :outbox, #updated_at = :updated_at, \
                     #pending_since = :pending_since, #pending_bucket = :pending_bucket",
                    "attribute_not_exists(#identity)",
                )
            }
            Some(current) => {
                names.insert("#k".to_owned(), key);
                values.insert(":event".to_owned(), event);
                values.insert(":v".to_owned(), AttributeValue::N(current.to_string()));
                values.insert(
                    ":max_pending".to_owned(),
                    AttributeValue::N(self.options.max_pending_events.to_string()),
                );
                (
                    "SET #name = :name, #surname = :surname, #total = #total + :amount, \
                     #count = #count + :one, #version = :seq, #outbox.#k = :event, \
                     #updated_at = :updated_at, \
                     #pending_since = if_not_exists(#pending_since, :pending_since), \
                     #pending_bucket = :pending_bucket",
                    "#version = :v AND size(#outbox) < :max_pending",
                )
            }
        };
        Ok(UpdateParts {
            update,
            condition,
            names,
            values,
        })
    }

    /// The spending's update and the Put of its key record, in one
    /// TransactWriteItems: both or neither. The Put is conditional on the
    /// key being unused or expired.
    async fn write_with_key(
        &self,
        envelope: &Envelope,
        version: Option<u64>,
        request: &KeyedRequest,
        now: u64,
        outcome_unknown: &mut bool,
    ) -> Result<Written, StoreError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Encode(e.to_string());
        let stored = StoredOutcome::from(envelope)
            .encode()
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        let expires_at = now.saturating_add(self.options.idempotency_ttl.as_secs());
        let record = HashMap::from([
            (
                KEY_ATTR.to_owned(),
                AttributeValue::S(request.key.as_str().to_owned()),
            ),
            (
                FINGERPRINT_ATTR.to_owned(),
                AttributeValue::S(request.fingerprint.as_str().to_owned()),
            ),
            (LOCATION_ATTR.to_owned(), AttributeValue::S(stored.location)),
            (BODY_ATTR.to_owned(), AttributeValue::S(stored.body)),
            (
                CREATED_AT_ATTR.to_owned(),
                AttributeValue::N(now.to_string()),
            ),
            (
                EXPIRES_AT_ATTR.to_owned(),
                AttributeValue::N(expires_at.to_string()),
            ),
        ]);
        let put = Put::builder()
            .table_name(&self.idempotency_table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(#key) OR #expires_at < :now")
            .expression_attribute_names("#key", KEY_ATTR)
            .expression_attribute_names("#expires_at", EXPIRES_AT_ATTR)
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            // A taken key's record comes back with the cancellation.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build)?;
        self.transact(envelope, version, Some(put), outcome_unknown)
            .await
    }

    /// One TransactWriteItems: `key`'s Put (when there is one), then the
    /// conditional update of the identity's item that records `envelope`,
    /// with the event id as its ClientRequestToken, so that an attempt
    /// whose answer was lost can be sent again (docs/ARCHITECTURE.md).
    ///
    /// The attempts are counted here, not by the SDK (its retries are off
    /// for this call; the bounds are the client's, see [`Self::write_retry`]),
    /// so that an attempt whose outcome is unknown is known of: it sets
    /// `outcome_unknown`, and the request's final failure is then a 500
    /// even when the last attempt was merely throttled.
    async fn transact(
        &self,
        envelope: &Envelope,
        version: Option<u64>,
        key: Option<Put>,
        outcome_unknown: &mut bool,
    ) -> Result<Written, StoreError> {
        let parts = self.update_of(envelope, version)?;
        let update = Update::builder()
            .table_name(&self.table)
            .key(
                IDENTITY_ATTR,
                AttributeValue::S(envelope.identity.to_string()),
            )
            .update_expression(parts.update)
            .condition_expression(parts.condition)
            .set_expression_attribute_names(Some(parts.names))
            .set_expression_attribute_values(Some(parts.values))
            // A failed condition returns the item, and with it the version
            // to write at.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        let with_key = key.is_some();
        let mut request = self
            .client
            .transact_write_items()
            .client_request_token(envelope.event_id.to_string());
        if let Some(put) = key {
            request = request.transact_items(TransactWriteItem::builder().put(put).build());
        }
        let request = request.transact_items(TransactWriteItem::builder().update(update).build());
        let policy = self.write_retry();
        let mut failures: u32 = 0;
        loop {
            let result = request
                .clone()
                .customize()
                .config_override(
                    aws_sdk_dynamodb::config::Builder::new().retry_config(RetryConfig::disabled()),
                )
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(Written::Yes),
                Err(error) => error,
            };
            let error = match judge(error, with_key) {
                Attempt::Cancelled(outcome) => return outcome,
                Attempt::Final(error) => return Err(error),
                Attempt::NotWritten(error) => error,
                Attempt::Unknown(error) => {
                    tracing::warn!(
                        error = %obt_runtime::error_chain(&error),
                        "the outcome of TransactWriteItems is unknown: it may have committed"
                    );
                    *outcome_unknown = true;
                    error
                }
            };
            failures += 1;
            if !policy.may_retry(failures) {
                return Err(error);
            }
            metrics::counter!("obt_api_store_retries_total", "reason" => "attempt_failed")
                .increment(1);
            tokio::time::sleep(policy.delay(failures)).await;
        }
    }

    /// The bounds of the write's attempts: the client's retry
    /// configuration (the SDK's standard when it has none: 3 attempts,
    /// waits drawn below 1 s, 2 s, 4 s ... at most 20 s), as the SDK would
    /// apply them.
    fn write_retry(&self) -> RetryPolicy {
        let config = self
            .client
            .config()
            .retry_config()
            .cloned()
            .unwrap_or_else(RetryConfig::standard);
        RetryPolicy {
            max_retries: config.max_attempts().saturating_sub(1),
            backoff: Backoff::new(config.initial_backoff(), config.max_backoff()),
        }
    }

    /// The record of a key, read strongly consistently; `None` when there
    /// is none, or only an expired one.
    async fn stored_key(
        &self,
        key: &IdempotencyKey,
        now: u64,
    ) -> Result<Option<(Fingerprint, StoredOutcome)>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.idempotency_table)
            .key(KEY_ATTR, AttributeValue::S(key.as_str().to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(classify("GetItem"))?;
        match out.item {
            Some(record) => key_record(key, &record, now),
            None => Ok(None),
        }
    }

    /// An identity's totals, `None` when nothing was recorded for it.
    #[instrument(skip_all, fields(identity = %identity))]
    pub async fn summary(&self, identity: &Identity) -> Result<Option<Summary>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(IDENTITY_ATTR, AttributeValue::S(identity.to_string()))
            // Read-your-writes: a GET right after a POST sees it.
            .consistent_read(true)
            .send()
            .await
            .map_err(classify("GetItem"))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        summary_of(identity, &item)
            .map(Some)
            .map_err(|reason| malformed(identity, reason))
    }

    /// Whether the table answers (the readiness probe).
    #[instrument(skip_all, fields(table = %self.table))]
    pub async fn ready(&self) -> Result<(), StoreError> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map(|_| ())
            .map_err(classify("DescribeTable"))
    }
}

/// A key's record, read; `None` when it expired.
fn key_record(
    key: &IdempotencyKey,
    record: &Item,
    now: u64,
) -> Result<Option<(Fingerprint, StoredOutcome)>, StoreError> {
    let malformed = |reason: String| StoreError::Malformed {
        identity: format!("(Idempotency-Key record {})", key.as_str()),
        reason,
    };
    let expires_at: u64 = item::integer(record, EXPIRES_AT_ATTR).map_err(malformed)?;
    if expires_at < now {
        return Ok(None);
    }
    let fingerprint = item::string(record, FINGERPRINT_ATTR).map_err(malformed)?;
    let body = item::string(record, BODY_ATTR).map_err(malformed)?;
    let stored = StoredOutcome::decode(body).map_err(|e| malformed(e.to_string()))?;
    Ok(Some((Fingerprint::stored(fingerprint), stored)))
}

fn summary_of(identity: &Identity, item: &Item) -> Result<Summary, String> {
    let mut total = item::decimal(item, TOTAL_ATTR)?;
    total.rescale(2);
    Ok(Summary {
        identity: identity.clone(),
        name: item::string(item, NAME_ATTR)?.to_owned(),
        surname: item::string(item, SURNAME_ATTR)?.to_owned(),
        total,
        count: item::integer(item, COUNT_ATTR)?,
        last_seq: item::integer(item, VERSION_ATTR)?,
        pending_events: item::map_len(item, OUTBOX_ATTR)?,
    })
}

/// Now, in seconds since the epoch (DynamoDB's Time to Live unit).
fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn malformed(identity: &Identity, reason: String) -> StoreError {
    StoreError::Malformed {
        identity: identity.to_string(),
        reason,
    }
}

/// The one call that writes; any other call that gets no answer wrote
/// nothing.
const WRITE_CALL: &str = "TransactWriteItems";

/// Turns the SDK error of a call that writes nothing into a
/// [`StoreError`], telling throttling and no answer apart. (The write's
/// errors are judged by [`judge`].)
fn classify<E, R>(call: &'static str) -> impl FnOnce(SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    move |e| {
        let throttled = is_throttling(e.code());
        let unanswered = matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_));
        let source: BoxError = Box::new(e);
        if throttled {
            StoreError::Throttled { call, source }
        } else if unanswered {
            StoreError::DynamoDbUnreachable { call, source }
        } else {
            StoreError::DynamoDb { call, source }
        }
    }
}

fn is_throttling(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
        )
    )
}

/// What a failed attempt of the write says about it.
enum Attempt {
    /// DynamoDB cancelled the transaction and said why: how the write
    /// ended (a lost race, a taken key, a conflict), or why it failed.
    Cancelled(Result<Written, StoreError>),
    /// DynamoDB wrote nothing (throttled), or the request never left (the
    /// connection was refused); the same request may succeed later.
    NotWritten(StoreError),
    /// The request may have reached DynamoDB and committed: no answer (a
    /// timeout, a connection that failed after sending, an answer that
    /// could not be read), a 5xx, or the same transaction still in
    /// progress. Sent again, its token makes it safe.
    Unknown(StoreError),
    /// A failure that sending the same request again will not change.
    Final(StoreError),
}

fn judge(error: SdkError<TransactWriteItemsError, HttpResponse>, with_key: bool) -> Attempt {
    let dynamodb = |error| StoreError::DynamoDb {
        call: WRITE_CALL,
        source: Box::new(error),
    };
    let service = match &error {
        SdkError::ServiceError(service) => service,
        SdkError::ConstructionFailure(_) => return Attempt::Final(dynamodb(error)),
        SdkError::DispatchFailure(_) if connection_refused(&error) => {
            return Attempt::NotWritten(StoreError::DynamoDbUnreachable {
                call: WRITE_CALL,
                source: Box::new(error),
            });
        }
        _ => return Attempt::Unknown(dynamodb(error)),
    };
    match service.err() {
        TransactWriteItemsError::TransactionCanceledException(cancelled) => {
            let reasons = cancelled.cancellation_reasons();
            // The reasons' spelling of throttling.
            let for_capacity = |r: &CancellationReason| {
                matches!(
                    r.code(),
                    Some(
                        "ThrottlingError"
                            | "ProvisionedThroughputExceeded"
                            | "RequestLimitExceeded"
                    )
                )
            };
            let throttled = reasons.iter().any(for_capacity);
            match cancellation(reasons, with_key) {
                Some(written) => Attempt::Cancelled(Ok(written)),
                None if throttled => Attempt::NotWritten(StoreError::Throttled {
                    call: WRITE_CALL,
                    source: Box::new(error),
                }),
                None => Attempt::Final(dynamodb(error)),
            }
        }
        TransactWriteItemsError::TransactionInProgressException(_) => {
            Attempt::Unknown(dynamodb(error))
        }
        _ if service.raw().status().is_server_error() => Attempt::Unknown(dynamodb(error)),
        _ if is_throttling(error.code()) => Attempt::NotWritten(StoreError::Throttled {
            call: WRITE_CALL,
            source: Box::new(error),
        }),
        _ => Attempt::Final(dynamodb(error)),
    }
}

/// How a cancelled transaction ended, from its cancellation reasons (in
/// the order of its items: the key's Put, if any, then the update);
/// `None` when no condition or conflict explains it.
fn cancellation(reasons: &[CancellationReason], with_key: bool) -> Option<Written> {
    let reason = |i: usize| reasons.get(i);
    let (key, item) = if with_key {
        (reason(0), reason(1))
    } else {
        (None, reason(0))
    };
    fn code(reason: Option<&CancellationReason>) -> &str {
        reason.and_then(CancellationReason::code).unwrap_or("")
    }
    tracing::debug!(
        key = code(key),
        item = code(item),
        "TransactWriteItems cancelled"
    );
    if code(key) == "ConditionalCheckFailed" {
        let record = key.and_then(CancellationReason::item).cloned();
        Some(Written::KeyTaken(record))
    } else if code(item) == "ConditionalCheckFailed" {
        let told = item
            .and_then(CancellationReason::item)
            .and_then(|old| item::integer(old, VERSION_ATTR).ok());
        Some(Written::LostRace(
            told.map_or(Current::Untold, Current::Told),
        ))
    } else if [code(key), code(item)].contains(&"TransactionConflict") {
        Some(Written::Conflict)
    } else {
        None
    }
}

/// Whether the connection was refused: then the request never left.
fn connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        let refused = error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
    use aws_sdk_dynamodb::config::{Credentials, Region};

    use super::*;

    /// One attempt of a write to `endpoint`, as the store sends it.
    async fn write_to(endpoint: &str) -> SdkError<TransactWriteItemsError, HttpResponse> {
        let config = aws_sdk_dynamodb::Config::builder()
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .endpoint_url(endpoint)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_millis(300))
                    .build(),
            )
            .build();
        let put = Put::builder()
            .table_name("t")
            .item(IDENTITY_ATTR, AttributeValue::S("AB1".to_owned()))
            .build()
            .expect("a valid Put");
        Client::from_conf(config)
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .send()
            .await
            .expect_err("nothing answers")
    }

    #[tokio::test]
    async fn a_write_whose_connection_was_refused_is_known_to_have_written_nothing() {
        // A port that was free a moment ago: connections to it are refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let error = write_to(&format!("http://{closed}")).await;
        assert!(
            matches!(
                judge(error, false),
                Attempt::NotWritten(StoreError::DynamoDbUnreachable { .. })
            ),
            "a refused connection sent nothing"
        );
    }

    #[tokio::test]
    async fn a_write_that_timed_out_after_it_was_sent_may_have_committed() {
        // Accepts the connection and reads the request, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("its address");
        let silent = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("a connection");
            let mut buffer = vec![0; 64 * 1024];
            while tokio::io::AsyncReadExt::read(&mut socket, &mut buffer)
                .await
                .is_ok_and(|n| n > 0)
            {}
        });
        let error = write_to(&format!("http://{address}")).await;
        silent.abort();
        assert!(
            matches!(judge(error, false), Attempt::Unknown(_)),
            "an unanswered write may have committed"
        );
    }
}
