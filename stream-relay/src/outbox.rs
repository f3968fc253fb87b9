//! The relay's reads and writes on the api's table: what an identity still
//! has pending, and the acknowledgement that removes published events.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
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

    /// Removes the events `seqs` of `identity` from its outbox. Removing a
    /// key that is gone already is a no-op, so this is idempotent, and it
    /// can only remove what it names. A deleted item stays deleted.
    ///
    /// `version` is the item's version in the image the events were read
    /// from. While the item is still at that version, `seqs` is its whole
    /// outbox, so the same write also takes the item out of the sweeper's
    /// index (`pending_since`). If the item moved on, a second write
    /// removes only the events; the next acknowledgement (or the sweeper)
    /// clears the index entry.
    #[tracing::instrument(skip_all, fields(identity, count = seqs.len()))]
    pub async fn acknowledge(
        &self,
        identity: &str,
        seqs: &[u64],
        version: Option<u64>,
    ) -> Result<(), OutboxError> {
        if let Some(version) = version {
            match self.remove(identity, seqs, Some(version)).await? {
                Removed::Yes => return Ok(()),
                Removed::ConditionFailed => {
                    tracing::debug!(
                        identity,
                        version,
                        "the item moved on; removing the events only"
                    );
                }
            }
        }
        if seqs.is_empty() {
            return Ok(());
        }
        match self.remove(identity, seqs, None).await? {
            Removed::Yes => {}
            Removed::ConditionFailed => {
                tracing::warn!(identity, "the item is gone; nothing to acknowledge");
            }
        }
        Ok(())
    }

    /// One `REMOVE` of outbox entries; with `version`, also of the
    /// `pending_since` attribute, on condition that the item is still at
    /// that version. Without, on condition that the item exists.
    async fn remove(
        &self,
        identity: &str,
        seqs: &[u64],
        version: Option<u64>,
    ) -> Result<Removed, OutboxError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(IDENTITY_ATTR, AttributeValue::S(identity.to_owned()))
            .expression_attribute_names("#id", IDENTITY_ATTR);
        let mut paths = Vec::with_capacity(seqs.len() + 1);
        if !seqs.is_empty() {
            request = request.expression_attribute_names("#o", OUTBOX_ATTR);
        }
        for (i, seq) in seqs.iter().enumerate() {
            request = request.expression_attribute_names(format!("#k{i}"), outbox_key(*seq));
            paths.push(format!("#o.#k{i}"));
        }
        request = match version {
            Some(version) => {
                paths.push("#ps".to_owned());
                request
                    .expression_attribute_names("#ps", PENDING_SINCE_ATTR)
                    .expression_attribute_names("#v", VERSION_ATTR)
                    .expression_attribute_values(":v", AttributeValue::N(version.to_string()))
                    .condition_expression("attribute_exists(#id) AND #v = :v")
            }
            None => request.condition_expression("attribute_exists(#id)"),
        };
        let request = request.update_expression(format!("REMOVE {}", paths.join(", ")));
        self.send_update(identity, request).await
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

/// How many times a removal is tried again after a transaction conflict.
const MAX_TRANSACTION_CONFLICTS: u32 = 8;

/// How a conditional write ended, short of an error.
enum Removed {
    Yes,
    ConditionFailed,
}
