//! The relay's reads and writes on the api's table: what an identity still
//! has pending, and the acknowledgement that removes published events.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeValue, BatchStatementError, BatchStatementErrorCodeEnum, BatchStatementRequest,
};
use futures::{StreamExt, stream};
use obt_contract::outbox::{
    IDENTITY_ATTR, OUTBOX_ATTR, PARKED_AT_ATTR, PARKED_ATTR, PARKED_INDEX, PENDING_BUCKET_ATTR,
    PENDING_BUCKETS, PENDING_INDEX, PENDING_SINCE_ATTR, VERSION_ATTR, outbox_key, pending_bucket,
    pending_since,
};

use crate::backoff::Backoff;
use crate::image::{Image, Parked};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("DynamoDB {call} on table {table} for identity {identity} failed: {message}")]
    DynamoDb {
        call: &'static str,
        table: String,
        identity: String,
        message: String,
    },
    #[error(
        "DynamoDB Query on index {index} of table {table} failed: {message}. The table needs \
         the index (obt-migrate creates it), and the caller dynamodb:Query on it"
    )]
    Index {
        table: String,
        index: &'static str,
        message: String,
    },
    #[error(
        "DynamoDB refused for good to acknowledge events on the item of identity {identity} in \
         table {table}: {message}. The item is not what the api writes (was its outbox changed \
         by hand?)"
    )]
    Refused {
        table: String,
        identity: String,
        message: String,
    },
    #[error("the item of identity {identity} in table {table} has a malformed {attribute}")]
    Malformed {
        table: String,
        identity: String,
        attribute: &'static str,
    },
}

/// The api's table, as the relay uses it.
#[derive(Debug, Clone)]
pub struct OutboxTable {
    client: Client,
    table: String,
}

impl OutboxTable {
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table }
    }

    fn error<E: std::error::Error + 'static>(
        &self,
        call: &'static str,
        identity: &str,
    ) -> impl FnOnce(SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>) -> OutboxError {
        let (table, identity) = (self.table.clone(), identity.to_owned());
        move |e| OutboxError::DynamoDb {
            call,
            table,
            identity,
            message: DisplayErrorContext(&e).to_string(),
        }
    }

    /// The highest `seq` of `identity` known to be published, from a
    /// consistent read of its item ([`Image::published_floor`]). 0 when
    /// the item does not exist.
    #[tracing::instrument(skip_all, fields(identity))]
    pub async fn published_up_to(&self, identity: &str) -> Result<u64, OutboxError> {
        let Some(image) = self.image(identity).await? else {
            return Ok(0);
        };
        image
            .published_floor()
            .ok_or_else(|| OutboxError::Malformed {
                table: self.table.clone(),
                identity: identity.to_owned(),
                attribute: if image.version.is_none() {
                    VERSION_ATTR
                } else {
                    OUTBOX_ATTR
                },
            })
    }

    /// The item of `identity` as the relay sees it, read consistently;
    /// `None` when there is no item.
    #[tracing::instrument(skip_all, fields(identity))]
    pub async fn image(&self, identity: &str) -> Result<Option<Image>, OutboxError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(IDENTITY_ATTR, AttributeValue::S(identity.to_owned()))
            .consistent_read(true)
            .projection_expression("#id, #v, #o, #p")
            .expression_attribute_names("#id", IDENTITY_ATTR)
            .expression_attribute_names("#v", VERSION_ATTR)
            .expression_attribute_names("#o", OUTBOX_ATTR)
            .expression_attribute_names("#p", PARKED_ATTR)
            .send()
            .await
            .map_err(self.error("GetItem", identity))?;
        out.item
            .map(|item| {
                Image::read(item.into()).map_err(|_| OutboxError::Malformed {
                    table: self.table.clone(),
                    identity: identity.to_owned(),
                    attribute: IDENTITY_ATTR,
                })
            })
            .transpose()
    }

    /// The entries of `bucket` of the sparse index [`PENDING_INDEX`] (items
    /// with events not yet acknowledged), pending since before `before`
    /// when given: each identity with its `pending_since` (epoch ms, a
    /// lower bound of its oldest pending event), oldest first. Entries
    /// without those attributes are passed by.
    pub async fn pending(
        &self,
        bucket: u32,
        before: Option<u64>,
    ) -> Result<Vec<(u64, String)>, OutboxError> {
        let mut query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(PENDING_INDEX)
            .expression_attribute_names("#b", PENDING_BUCKET_ATTR)
            .expression_attribute_values(":b", AttributeValue::N(bucket.to_string()));
        query = match before {
            None => query.key_condition_expression("#b = :b"),
            Some(cutoff) => query
                .key_condition_expression("#b = :b AND #ps < :cutoff")
                .expression_attribute_names("#ps", PENDING_SINCE_ATTR)
                .expression_attribute_values(":cutoff", AttributeValue::N(cutoff.to_string())),
        };
        let items = query
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| OutboxError::Index {
                table: self.table.clone(),
                index: PENDING_INDEX,
                message: DisplayErrorContext(&e).to_string(),
            })?;
        Ok(items
            .into_iter()
            .filter_map(|mut item| {
                let since = match item.get(PENDING_SINCE_ATTR) {
                    Some(AttributeValue::N(n)) => n.parse().ok()?,
                    _ => return None,
                };
                match item.remove(IDENTITY_ATTR) {
                    Some(AttributeValue::S(identity)) => Some((since, identity)),
                    _ => None,
                }
            })
            .collect())
    }

    /// The identities whose items carry a parking mark, read from the
    /// sparse index [`PARKED_INDEX`] (every bucket; only parked items are
    /// in it), oldest parking first within a bucket.
    pub async fn parked_identities(&self) -> Result<Vec<String>, OutboxError> {
        let mut identities = Vec::new();
        for bucket in 0..PENDING_BUCKETS {
            let items = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(PARKED_INDEX)
                .key_condition_expression("#b = :b")
                .expression_attribute_names("#b", PENDING_BUCKET_ATTR)
                .expression_attribute_values(":b", AttributeValue::N(bucket.to_string()))
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| OutboxError::DynamoDb {
                    call: "Query (index parked)",
                    table: self.table.clone(),
                    identity: String::new(),
                    message: DisplayErrorContext(&e).to_string(),
                })?;
            identities.extend(items.into_iter().filter_map(|mut item| {
                match item.remove(IDENTITY_ATTR) {
                    Some(AttributeValue::S(identity)) => Some(identity),
                    _ => None,
                }
            }));
        }
        Ok(identities)
    }

    /// Parks `identity`: marks its item so that no relay publishes its
    /// events until an operator takes the mark off. The events stay in the
    /// outbox. A mark already there is kept (it names the first problem),
    /// and a deleted item stays deleted. The item also gets its
    /// `pending_bucket`, so that it is listed in the parked index.
    #[tracing::instrument(skip_all, fields(identity))]
    pub async fn park(&self, identity: &str, mark: &Parked) -> Result<(), OutboxError> {
        let value = serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(mark).map_err(|_| {
            OutboxError::Malformed {
                table: self.table.clone(),
                identity: identity.to_owned(),
                attribute: PARKED_ATTR,
            }
        })?;
        let now = pending_since(time::OffsetDateTime::now_utc());
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(IDENTITY_ATTR, AttributeValue::S(identity.to_owned()))
            .update_expression("SET #p = :p, #pa = :pa, #pb = if_not_exists(#pb, :pb)")
            .condition_expression("attribute_exists(#id) AND attribute_not_exists(#p)")
            .expression_attribute_names("#id", IDENTITY_ATTR)
            .expression_attribute_names("#p", PARKED_ATTR)
            .expression_attribute_names("#pa", PARKED_AT_ATTR)
            .expression_attribute_names("#pb", PENDING_BUCKET_ATTR)
            .expression_attribute_values(":p", value)
            .expression_attribute_values(":pa", AttributeValue::N(now.to_string()))
            .expression_attribute_values(
                ":pb",
                AttributeValue::N(pending_bucket(identity).to_string()),
            );
        match self.send_update(identity, request).await? {
            Removed::Yes => {}
            Removed::ConditionFailed => {
                tracing::debug!(identity, "parked already, or the item is gone");
            }
        }
        Ok(())
    }

    /// Takes the parking mark `at` off `identity`'s item. The write makes a
    /// stream record that the relay reads as "publish what waits"; the
    /// sweeper takes the item too if that record is lost. `false` when the
    /// item no longer carries that mark (unparked already, or parked anew).
    #[tracing::instrument(skip_all, fields(identity))]
    pub async fn unpark(&self, identity: &str, at: &str) -> Result<bool, OutboxError> {
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(IDENTITY_ATTR, AttributeValue::S(identity.to_owned()))
            .update_expression("REMOVE #p, #pa")
            .condition_expression("#p.#at = :at")
            .expression_attribute_names("#p", PARKED_ATTR)
            .expression_attribute_names("#pa", PARKED_AT_ATTR)
            .expression_attribute_names("#at", "at")
            .expression_attribute_values(":at", AttributeValue::S(at.to_owned()));
        Ok(matches!(
            self.send_update(identity, request).await?,
            Removed::Yes
        ))
    }

    /// Removes the events `seqs` of `identity` from its outbox: one
    /// [`Acknowledgement`] made by [`OutboxTable::acknowledge_all`].
    #[tracing::instrument(skip_all, fields(identity, count = seqs.len()))]
    pub async fn acknowledge(
        &self,
        identity: &str,
        seqs: &[u64],
        version: Option<u64>,
    ) -> Result<(), OutboxError> {
        let ack = Acknowledgement {
            identity,
            seqs,
            version,
        };
        self.acknowledge_all(&[ack])
            .await
            .into_iter()
            .next()
            .unwrap_or(Ok(()))
    }

    /// Removes published events from the outboxes of several identities,
    /// 25 identities to a `BatchExecuteStatement` of PartiQL `UPDATE`s
    /// (one request where `UpdateItem` took one per identity), batches
    /// sent concurrently. One result per acknowledgement, in order; each
    /// identity may appear once.
    ///
    /// Each statement removes only the outbox keys it names: removing a
    /// key that is gone already is a no-op, so an acknowledgement is
    /// idempotent and can only remove what SQS accepted. A deleted item
    /// stays deleted (an `UPDATE` never creates one).
    ///
    /// `version` is the item's version in the image the events were read
    /// from. While the item is still at that version, `seqs` is its whole
    /// outbox, so the same statement also takes the item out of the
    /// sweeper's index (`pending_since`). If the item moved on, a second
    /// statement removes only the events; the next acknowledgement (or the
    /// sweeper) clears the index entry. More than [`KEYS_PER_STATEMENT`]
    /// events take several statements, one round after another, the one
    /// conditioned on `version` last: `pending_since` never goes while an
    /// event of the acknowledgement is still there.
    ///
    /// A statement refused for a reason that passes (a POST's transaction
    /// under way on the item, throttling, an internal error) is tried
    /// again in the next round, after a backoff, a bounded number of times.
    /// One refused for good because of what the item holds (a
    /// `ValidationError`: its outbox is no longer a map, say) ends in
    /// [`OutboxError::Refused`] for its identity alone.
    pub async fn acknowledge_all(
        &self,
        acks: &[Acknowledgement<'_>],
    ) -> Vec<Result<(), OutboxError>> {
        let mut open: Vec<Removal<'_>> = acks.iter().map(Removal::from).collect();
        let mut results: Vec<Option<Result<(), OutboxError>>> = acks
            .iter()
            .map(|ack| (ack.seqs.is_empty() && ack.version.is_none()).then_some(Ok(())))
            .collect();
        let mut backoff =
            Backoff::new(Duration::from_millis(20), Duration::from_millis(500)).attempts();
        loop {
            let round: Vec<usize> = (0..acks.len()).filter(|i| results[*i].is_none()).collect();
            if round.is_empty() {
                break;
            }
            let batches: Vec<Vec<(usize, BatchStatementRequest)>> = round
                .chunks(STATEMENTS_PER_BATCH)
                .map(|chunk| {
                    chunk
                        .iter()
                        .map(|i| (*i, open[*i].statement(&self.table)))
                        .collect()
                })
                .collect();
            let answers: Vec<Vec<(usize, Answer)>> = stream::iter(batches)
                .map(|batch| self.execute(batch))
                .buffer_unordered(CONCURRENT_BATCHES)
                .collect()
                .await;
            let mut wait = false;
            for (i, answer) in answers.into_iter().flatten() {
                let removal = &mut open[i];
                results[i] = match removal.after(answer) {
                    Next::Done => Some(Ok(())),
                    Next::Again => None,
                    Next::Retry if removal.retries < MAX_STATEMENT_RETRIES => {
                        removal.retries += 1;
                        wait = true;
                        None
                    }
                    Next::Retry => Some(Err(OutboxError::DynamoDb {
                        call: "BatchExecuteStatement",
                        table: self.table.clone(),
                        identity: removal.identity.to_owned(),
                        message: format!(
                            "the acknowledgement was refused {} times for reasons that pass \
                             (a write under way on the item, throttling); it is made again \
                             with the next batch",
                            removal.retries + 1
                        ),
                    })),
                    Next::Failed(message) => Some(Err(OutboxError::DynamoDb {
                        call: "BatchExecuteStatement",
                        table: self.table.clone(),
                        identity: removal.identity.to_owned(),
                        message,
                    })),
                    Next::Refused(message) => Some(Err(OutboxError::Refused {
                        table: self.table.clone(),
                        identity: removal.identity.to_owned(),
                        message,
                    })),
                };
            }
            if wait {
                backoff.wait().await;
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    /// One `BatchExecuteStatement` of `batch`, statements of the removals
    /// they are numbered with: each one's answer.
    async fn execute(&self, batch: Vec<(usize, BatchStatementRequest)>) -> Vec<(usize, Answer)> {
        let (chunk, statements): (Vec<usize>, Vec<_>) = batch.into_iter().unzip();
        let sent = self
            .client
            .batch_execute_statement()
            .set_statements(Some(statements))
            .send()
            .await;
        let responses = match sent {
            Ok(out) => out.responses.unwrap_or_default(),
            Err(e) => {
                let message = DisplayErrorContext(&e).to_string();
                return chunk
                    .iter()
                    .map(|i| (*i, Answer::Failed(message.clone())))
                    .collect();
            }
        };
        let mut responses = responses.into_iter();
        chunk
            .iter()
            .map(|i| {
                let answer = match responses.next() {
                    None => Answer::Failed("DynamoDB answered fewer statements than sent".into()),
                    Some(response) => match response.error {
                        None => Answer::Done,
                        Some(error) => Answer::from(&error),
                    },
                };
                (*i, answer)
            })
            .collect()
    }

    /// Sends a conditional update of `identity`'s item. The api writes each
    /// spending with a TransactWriteItems; while one is under way on the
    /// item (milliseconds), DynamoDB refuses other writes to it with
    /// TransactionConflictException, which the SDK does not retry. Such a
    /// refusal says nothing about the condition: try again, a bounded
    /// number of times.
    async fn send_update(
        &self,
        identity: &str,
        request: aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder,
    ) -> Result<Removed, OutboxError> {
        let mut backoff =
            Backoff::new(Duration::from_millis(20), Duration::from_millis(500)).attempts();
        let mut conflicts = 0;
        loop {
            match request.clone().send().await {
                Ok(_) => return Ok(Removed::Yes),
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() =>
                {
                    return Ok(Removed::ConditionFailed);
                }
                Err(SdkError::ServiceError(e))
                    if e.err().is_transaction_conflict_exception()
                        && conflicts < MAX_TRANSACTION_CONFLICTS =>
                {
                    conflicts += 1;
                    tracing::debug!(identity, conflicts, "a POST's transaction held the item");
                    backoff.wait().await;
                }
                Err(e) => return Err(self.error("UpdateItem", identity)(e)),
            }
        }
    }
}

/// How many times a write is tried again after a transaction conflict.
const MAX_TRANSACTION_CONFLICTS: u32 = 8;

/// Statements in one `BatchExecuteStatement`: DynamoDB's limit.
const STATEMENTS_PER_BATCH: usize = 25;

/// `BatchExecuteStatement` calls of one [`OutboxTable::acknowledge_all`]
/// in flight at once.
const CONCURRENT_BATCHES: usize = 8;

/// Outbox entries one statement removes at most (a statement is at most
/// 8 KB of text).
pub const KEYS_PER_STATEMENT: usize = 100;

/// How many times an acknowledgement's statement is tried again after a
/// refusal that passes.
const MAX_STATEMENT_RETRIES: u32 = 8;

/// One identity's acknowledgement for [`OutboxTable::acknowledge_all`]:
/// `seqs` were accepted by SQS; `version` is the item's version in the
/// image they were read from, when that image's whole outbox was published.
#[derive(Debug, Clone, Copy)]
pub struct Acknowledgement<'a> {
    pub identity: &'a str,
    pub seqs: &'a [u64],
    pub version: Option<u64>,
}

/// An acknowledgement under way: what is left of it.
#[derive(Debug)]
struct Removal<'a> {
    identity: &'a str,
    /// The seqs not removed yet.
    seqs: &'a [u64],
    /// Dropped once a statement conditioned on it failed its condition.
    version: Option<u64>,
    retries: u32,
}

impl<'a> From<&Acknowledgement<'a>> for Removal<'a> {
    fn from(ack: &Acknowledgement<'a>) -> Self {
        Self {
            identity: ack.identity,
            seqs: ack.seqs,
            version: ack.version,
            retries: 0,
        }
    }
}

/// What DynamoDB said of one statement.
#[derive(Debug)]
enum Answer {
    Done,
    ConditionFailed,
    /// Refused for a reason that passes.
    Busy,
    /// Refused for good, for what this item holds.
    Refused(String),
    Failed(String),
}

impl From<&BatchStatementError> for Answer {
    fn from(error: &BatchStatementError) -> Self {
        use BatchStatementErrorCodeEnum as Code;
        match error.code() {
            Some(Code::ConditionalCheckFailed) => Self::ConditionFailed,
            Some(
                Code::TransactionConflict
                | Code::ThrottlingError
                | Code::ProvisionedThroughputExceeded
                | Code::RequestLimitExceeded
                | Code::InternalServerError,
            ) => Self::Busy,
            code => {
                let message = format!(
                    "{}: {}",
                    code.map_or("no error code", |c| c.as_str()),
                    error.message().unwrap_or("no message")
                );
                // Access and a missing table concern every statement: the
                // batch fails and is tried again. A statement invalid for
                // its item concerns that item only.
                if code == Some(&Code::ValidationError) {
                    Self::Refused(message)
                } else {
                    Self::Failed(message)
                }
            }
        }
    }
}

/// What a removal does after an answer.
enum Next {
    Done,
    /// Its next statement, in the next round.
    Again,
    /// The same statement, in the next round, after a backoff.
    Retry,
    Refused(String),
    Failed(String),
}

impl Removal<'_> {
    /// Whether the next statement is the last one: it removes what is left
    /// and, given the version, the index entry, on condition of it.
    fn last(&self) -> bool {
        self.seqs.len() <= KEYS_PER_STATEMENT
    }

    /// The next statement: `UPDATE` of the identity's item removing the
    /// next keys (and `pending_since`), on condition that the item exists
    /// (and is at `version`).
    fn statement(&self, table: &str) -> BatchStatementRequest {
        let take = self.seqs.len().min(KEYS_PER_STATEMENT);
        let mut text = format!("UPDATE {}", quoted(table));
        for seq in &self.seqs[..take] {
            text.push_str(&format!(
                " REMOVE {}.{}",
                quoted(OUTBOX_ATTR),
                quoted(&outbox_key(*seq))
            ));
        }
        let mut parameters = vec![AttributeValue::S(self.identity.to_owned())];
        let version = self.version.filter(|_| self.last());
        if version.is_some() {
            text.push_str(&format!(" REMOVE {}", quoted(PENDING_SINCE_ATTR)));
        }
        text.push_str(&format!(" WHERE {} = ?", quoted(IDENTITY_ATTR)));
        if let Some(version) = version {
            text.push_str(&format!(" AND {} = ?", quoted(VERSION_ATTR)));
            parameters.push(AttributeValue::N(version.to_string()));
        }
        BatchStatementRequest::builder()
            .statement(text)
            .set_parameters(Some(parameters))
            .build()
            .expect("a statement is set")
    }

    fn after(&mut self, answer: Answer) -> Next {
        let conditioned = self.version.is_some() && self.last();
        match answer {
            Answer::Done if self.last() => Next::Done,
            Answer::Done => {
                self.seqs = &self.seqs[KEYS_PER_STATEMENT..];
                self.retries = 0;
                Next::Again
            }
            Answer::ConditionFailed if conditioned => {
                tracing::debug!(
                    identity = self.identity,
                    version = self.version,
                    "the item moved on; removing the events only"
                );
                self.version = None;
                if self.seqs.is_empty() {
                    Next::Done
                } else {
                    Next::Again
                }
            }
            Answer::ConditionFailed => {
                tracing::warn!(
                    identity = self.identity,
                    "the item is gone; nothing to acknowledge"
                );
                Next::Done
            }
            Answer::Busy => Next::Retry,
            Answer::Refused(message) => Next::Refused(message),
            Answer::Failed(message) => Next::Failed(message),
        }
    }
}

/// A PartiQL quoted identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How a conditional write ended, short of an error.
enum Removed {
    Yes,
    ConditionFailed,
}
