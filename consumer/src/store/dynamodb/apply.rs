//! The write of an event: ONE `TransactWriteItems` of the event's item
//! (only where no item is) and the head's move from `seq - 1` to `seq`
//! (only if not parked); when refused, consistent reads tell why
//! (docs/ARCHITECTURE.md, "The consumer").

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use obt_contract::Envelope;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{debug, instrument};

use super::{DynamoDbLedger, HEAD_SEQ, attr, dynamo_error, held_key, n, s};
use crate::parking::IdentityState;
use crate::store::{Applied, ApplyError};

/// Events one [`DynamoDbLedger::apply_all`] writes at most: two actions
/// each, and a `TransactWriteItems` takes 100.
pub const MAX_EVENTS_PER_WRITE: usize = 50;

/// Whether an apply may go past a parking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not while the identity is parked.
    Normal,
    /// Whether parked or not; the held copy of the event goes.
    Parked,
}

impl DynamoDbLedger {
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

    /// The writes of `events` (of distinct identities) in ONE
    /// `TransactWriteItems`, as [`Self::apply`] makes each: all or none.
    /// `false` when DynamoDB cancelled it (a duplicate, a gap, a parked
    /// identity among them): nothing changed.
    #[instrument(skip_all, fields(table = %self.name, events = events.len()))]
    pub async fn apply_all(&self, events: &[&Envelope]) -> Result<bool, ApplyError> {
        if events.len() > MAX_EVENTS_PER_WRITE {
            return Ok(false);
        }
        let mut request = self.client.transact_write_items();
        for event in events {
            for action in self.event_actions(event, Mode::Normal)? {
                request = request.transact_items(action);
            }
        }
        match request.send().await {
            Ok(_) => {
                self.mark_applied();
                Ok(true)
            }
            Err(SdkError::ServiceError(e)) if e.err().is_transaction_canceled_exception() => {
                debug!("the write of several events was refused; they go one by one");
                Ok(false)
            }
            Err(e) => Err(dynamo_error("TransactWriteItems", &self.name)(e).into()),
        }
    }

    async fn write(&self, event: &Envelope, mode: Mode) -> Result<Applied, ApplyError> {
        let mut request = self.client.transact_write_items();
        for action in self.event_actions(event, mode)? {
            request = request.transact_items(action);
        }
        if mode == Mode::Parked {
            request = request.transact_items(
                TransactWriteItem::builder()
                    .delete(self.delete_held(event.identity.as_str(), event.seq)?)
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                self.mark_applied();
                Ok(Applied::New)
            }
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

    /// The two actions of an event's write: its own item, and its
    /// identity's head.
    fn event_actions(
        &self,
        event: &Envelope,
        mode: Mode,
    ) -> Result<[TransactWriteItem; 2], ApplyError> {
        Ok([
            TransactWriteItem::builder()
                .put(self.put_event(event)?)
                .build(),
            TransactWriteItem::builder()
                .update(self.update_head(event, mode)?)
                .build(),
        ])
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
    fn delete_held(&self, identity: &str, seq: u64) -> Result<Delete, ApplyError> {
        Delete::builder()
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
}
