//! The DynamoDB backend (the default): the consumer's table and the one
//! write that applies an event.
//!
//! Layout (see `migrations/dynamodb/consumer_spending.json`): per identity,
//! one item per applied event at its `seq` (1, 2, ...), and a head item at
//! `seq` 0 holding `last_seq` and the running totals. A parked identity's
//! parking is on its head (`parked_*`; a head with no `last_seq` yet when
//! nothing is applied), its held events at negative sort keys (`-seq`),
//! one item each ([`parking`]).
//!
//! An event is applied by ONE `TransactWriteItems` of two conditional
//! writes: the event's item, only if that `seq` is still free, and the
//! head, only if it stands at `seq - 1` (and is not parked). So an event is applied at most
//! once (invariant 3) and only right after its predecessor (invariant 4);
//! DynamoDB's all-or-nothing transaction keeps the totals equal to the sum
//! of the items. When the transaction is refused, consistent reads of the
//! head and of the item at `seq` tell why ([`ApplyError`] or
//! [`Applied::Duplicate`]).

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use obt_contract::Envelope;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{debug, instrument};

use super::{Applied, ApplyError, BoxFuture, HoldError, Ledger, StoreError};
use crate::parking::{Held, IdentityState, ParkRequest, ParkedIdentity, Parking};
use crate::read_model::{AppliedIdentity, IdentityHead};

mod parking;

/// Attribute names of the consumer's table. All of them go through
/// expression attribute names: several (`name`, `count`, `total`) are
/// DynamoDB reserved words.
pub(crate) mod attr {
    pub const IDENTITY: &str = "identity";
    pub const SEQ: &str = "seq";
    pub const EVENT_ID: &str = "event_id";
    pub const NAME: &str = "name";
    pub const SURNAME: &str = "surname";
    pub const AMOUNT: &str = "amount";
    pub const OCCURRED_AT: &str = "occurred_at";
    pub const APPLIED_AT: &str = "applied_at";
    pub const LAST_SEQ: &str = "last_seq";
    pub const TOTAL: &str = "total";
    pub const COUNT: &str = "count";
    pub const UPDATED_AT: &str = "updated_at";
    pub const PARKED_CAUSE: &str = "parked_cause";
    pub const PARKED_REASON: &str = "parked_reason";
    pub const PARKED_SEQ: &str = "parked_seq";
    pub const PARKED_MESSAGE_ID: &str = "parked_message_id";
    pub const PARKED_AT: &str = "parked_at";
    pub const PARKING_VERSION: &str = "parking_version";
    /// A held event's envelope, as received.
    pub const ENVELOPE: &str = "envelope";
    pub const HELD_AT: &str = "held_at";
}

/// Whether an apply may go past a parking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not while the identity is parked.
    Normal,
    /// Whether parked or not; the held copy of the event goes.
    Parked,
}

/// The sort key of the event held at `seq`: below the head's 0, where no
/// applied event can be.
pub(crate) fn held_key(seq: u64) -> AttributeValue {
    AttributeValue::N(format!("-{seq}"))
}

/// The sort key of an identity's head item.
pub(crate) const HEAD_SEQ: u64 = 0;

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn dynamo_error<E, R>(
    call: &'static str,
    table: &str,
) -> impl FnOnce(SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let table = table.to_owned();
    move |e| StoreError::DynamoDb {
        call,
        table,
        detail: obt_runtime::error_chain(&e),
    }
}

/// The consumer's table.
#[derive(Debug, Clone)]
pub struct SpendingTable {
    pub(crate) client: aws_sdk_dynamodb::Client,
    pub(crate) name: String,
}

impl SpendingTable {
    pub fn new(client: aws_sdk_dynamodb::Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Applies `event` if it is the identity's next one and the identity
    /// is not parked; recognises it if it was applied before.
    #[instrument(skip_all, fields(table = %self.name))]
    pub async fn apply(&self, event: &Envelope) -> Result<Applied, ApplyError> {
        self.write(event, Mode::Normal).await
    }

    /// Applies `event` if it is the identity's next one, parked or not,
    /// and takes its held copy away.
    #[instrument(skip_all, fields(table = %self.name))]
    pub async fn apply_parked(&self, event: &Envelope) -> Result<Applied, ApplyError> {
        self.write(event, Mode::Parked).await
    }

    async fn write(&self, event: &Envelope, mode: Mode) -> Result<Applied, ApplyError> {
        let mut request = self
            .client
            .transact_write_items()
            .transact_items(
                TransactWriteItem::builder()
                    .put(self.put_event(event)?)
                    .build(),
            )
            .transact_items(
                TransactWriteItem::builder()
                    .update(self.update_head(event, mode)?)
                    .build(),
            );
        if mode == Mode::Parked {
            request = request.transact_items(
                TransactWriteItem::builder()
                    .delete(self.delete_held(event.identity.as_str(), event.seq)?)
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(Applied::New),
            Err(SdkError::ServiceError(e)) if e.err().is_transaction_canceled_exception() => {
                let reasons = match e.err() {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
                        cancelled,
                    ) => cancelled
                        .cancellation_reasons()
                        .iter()
                        .map(|r| r.code().unwrap_or("?"))
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => String::new(),
                };
                debug!(%reasons, "the write was refused; reading the table to tell why");
                self.classify(event, reasons, mode).await
            }
            Err(e) => Err(dynamo_error("TransactWriteItems", &self.name)(e).into()),
        }
    }

    /// The event's own item, only where no item is.
    fn put_event(&self, event: &Envelope) -> Result<Put, ApplyError> {
        let applied_at = OffsetDateTime::now_utc().format(&Rfc3339)?;
        Put::builder()
            .table_name(&self.name)
            .item(attr::IDENTITY, s(event.identity.as_str()))
            .item(attr::SEQ, n(event.seq))
            .item(attr::EVENT_ID, s(event.event_id.to_string()))
            .item(attr::NAME, s(event.data.name.as_str()))
            .item(attr::SURNAME, s(event.data.surname.as_str()))
            // Amount's Display is its exact decimal text ("51.30"): no float
            // anywhere between the message and the table.
            .item(attr::AMOUNT, n(event.data.amount))
            .item(attr::OCCURRED_AT, s(event.occurred_at.format(&Rfc3339)?))
            .item(attr::APPLIED_AT, s(applied_at))
            .condition_expression("attribute_not_exists(#identity)")
            .expression_attribute_names("#identity", attr::IDENTITY)
            .build()
            .map_err(|e| ApplyError::Request(e.to_string()))
    }

    /// The head moves from `seq - 1` to `seq` and adds the amount.
    fn update_head(&self, event: &Envelope, mode: Mode) -> Result<Update, ApplyError> {
        let now = OffsetDateTime::now_utc().format(&Rfc3339)?;
        let update = Update::builder()
            .table_name(&self.name)
            .key(attr::IDENTITY, s(event.identity.as_str()))
            .key(attr::SEQ, n(HEAD_SEQ))
            .update_expression(
                "SET #last_seq = :seq, #name = :name, #surname = :surname, \
                 #total = if_not_exists(#total, :zero) + :amount, \
                 #count = if_not_exists(#count, :zero) + :one, #updated_at = :now",
            )
            .expression_attribute_names("#last_seq", attr::LAST_SEQ)
            .expression_attribute_names("#name", attr::NAME)
            .expression_attribute_names("#surname", attr::SURNAME)
            .expression_attribute_names("#total", attr::TOTAL)
            .expression_attribute_names("#count", attr::COUNT)
            .expression_attribute_names("#updated_at", attr::UPDATED_AT)
            .expression_attribute_values(":seq", n(event.seq))
            .expression_attribute_values(":name", s(event.data.name.as_str()))
            .expression_attribute_values(":surname", s(event.data.surname.as_str()))
            .expression_attribute_values(":amount", n(event.data.amount))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", s(now));
        // DynamoDB refuses unused placeholders, so each branch names only
        // what its condition uses. A parked identity's head may exist with
        // no `last_seq` yet: the first event is the one that finds none.
        let (update, after) = if event.seq == 1 {
            (update, "attribute_not_exists(#last_seq)")
        } else {
            (
                update.expression_attribute_values(":prev", n(event.seq - 1)),
                "#last_seq = :prev",
            )
        };
        let update = match mode {
            Mode::Normal => update
                .condition_expression(format!("{after} AND attribute_not_exists(#parked_cause)"))
                .expression_attribute_names("#parked_cause", attr::PARKED_CAUSE),
            Mode::Parked => update.condition_expression(after),
        };
        update
            .build()
            .map_err(|e| ApplyError::Request(e.to_string()))
    }

    /// The held copy of an event, if there is one.
    fn delete_held(
        &self,
        identity: &str,
        seq: u64,
    ) -> Result<aws_sdk_dynamodb::types::Delete, ApplyError> {
        aws_sdk_dynamodb::types::Delete::builder()
            .table_name(&self.name)
            .key(attr::IDENTITY, s(identity))
            .key(attr::SEQ, held_key(seq))
            .build()
            .map_err(|e| ApplyError::Request(e.to_string()))
    }

    /// Tells why the transaction for `event` was refused, from consistent
    /// reads of the identity's head and of the item at the event's `seq`.
    async fn classify(
        &self,
        event: &Envelope,
        reasons: String,
        mode: Mode,
    ) -> Result<Applied, ApplyError> {
        let identity = event.identity.as_str();
        let (head, stored) =
            tokio::try_join!(self.get(identity, HEAD_SEQ), self.get(identity, event.seq))?;
        if let Some(stored) = stored {
            let stored_event_id = match stored.get(attr::EVENT_ID) {
                Some(AttributeValue::S(id)) => id.clone(),
                _ => {
                    return Err(self
                        .malformed(identity, event.seq, "event_id is missing")
                        .into());
                }
            };
            return if stored_event_id == event.event_id.to_string() {
                if mode == Mode::Parked {
                    self.forget_held(event).await?;
                }
                Ok(Applied::Duplicate)
            } else {
                Err(ApplyError::Conflict {
                    identity: identity.to_owned(),
                    seq: event.seq,
                    stored_event_id,
                    event_id: event.event_id.to_string(),
                })
            };
        }
        let IdentityState { last_seq, parking } = self.state_of(identity, head.as_ref())?;
        let identity = identity.to_owned();
        if let (Some(parking), Mode::Normal) = (parking, mode) {
            Err(ApplyError::Parked {
                identity,
                seq: event.seq,
                last_seq,
                parking: Box::new(parking),
            })
        } else if last_seq + 1 < event.seq {
            Err(ApplyError::Gap {
                identity,
                expected: last_seq + 1,
                received: event.seq,
            })
        } else if last_seq >= event.seq {
            Err(ApplyError::Inconsistent {
                identity,
                seq: event.seq,
                last_seq,
            })
        } else {
            Err(ApplyError::Contended {
                identity,
                seq: event.seq,
                last_seq,
                reasons,
            })
        }
    }

    /// One item, read consistently: it must see every committed write.
    pub(crate) async fn get(
        &self,
        identity: &str,
        seq: u64,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .key(attr::IDENTITY, s(identity))
            .key(attr::SEQ, n(seq))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo_error("GetItem", &self.name))?;
        Ok(out.item)
    }

    pub(crate) fn malformed(&self, identity: &str, seq: u64, reason: &str) -> StoreError {
        StoreError::Malformed {
            table: self.name.clone(),
            identity: identity.to_owned(),
            seq: seq.to_string(),
            reason: reason.to_owned(),
        }
    }
}

impl Ledger for SpendingTable {
    fn apply<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Applied, ApplyError>> {
        Box::pin(SpendingTable::apply(self, event))
    }

    fn apply_parked<'a>(
        &'a self,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<Applied, ApplyError>> {
        Box::pin(SpendingTable::apply_parked(self, event))
    }

    fn state<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<IdentityState, StoreError>> {
        Box::pin(SpendingTable::state(self, identity))
    }

    fn park<'a>(
        &'a self,
        identity: &'a str,
        request: &'a ParkRequest,
        replace: bool,
    ) -> BoxFuture<'a, Result<Parking, StoreError>> {
        Box::pin(SpendingTable::park(self, identity, request, replace))
    }

    fn hold<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Held, HoldError>> {
        Box::pin(SpendingTable::hold(self, event))
    }

    fn held<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Vec<Envelope>, StoreError>> {
        Box::pin(SpendingTable::held(self, identity))
    }

    fn unpark<'a>(
        &'a self,
        identity: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(SpendingTable::unpark(self, identity, version))
    }

    fn list_parked(&self) -> BoxFuture<'_, Result<Vec<ParkedIdentity>, StoreError>> {
        Box::pin(SpendingTable::list_parked(self))
    }

    fn load_identity<'a>(
        &'a self,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<Option<AppliedIdentity>, StoreError>> {
        Box::pin(SpendingTable::load_identity(self, identity))
    }

    fn list_identities(&self) -> BoxFuture<'_, Result<Vec<IdentityHead>, StoreError>> {
        Box::pin(SpendingTable::list_identities(self))
    }

    fn describe(&self) -> String {
        format!("DynamoDB table {}", self.name)
    }
}
