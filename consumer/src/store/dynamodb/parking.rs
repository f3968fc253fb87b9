//! Parkings and held events in the consumer's DynamoDB table: the parking
//! on the identity's head item (`seq` 0), each held event its own item at
//! `seq` = -its seq, so that one item never holds more than one message
//! (at most 256 KB, under DynamoDB's 400 KB). Every hold bumps the head's
//! `parking_version` in the same transaction; the unpark is conditional on
//! it, so a hold and an unpark can never both succeed unseen.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, Select, TransactWriteItem, Update,
};
use obt_contract::Envelope;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{DynamoDbLedger, HEAD_SEQ, attr, dynamo_error, held_key, n, s};
use crate::parking::{Cause, Held, IdentityState, ParkRequest, ParkedIdentity, Parking};
use crate::store::{ApplyError, HoldError, LedgerError};

type Item = HashMap<String, AttributeValue>;

/// Every attribute of a parking, removed together by an unpark.
const PARKING_ATTRIBUTES: [&str; 6] = [
    attr::PARKED_CAUSE,
    attr::PARKED_REASON,
    attr::PARKED_SEQ,
    attr::PARKED_MESSAGE_ID,
    attr::PARKED_AT,
    attr::PARKING_VERSION,
];

fn now() -> Result<String, time::error::Format> {
    OffsetDateTime::now_utc().format(&Rfc3339)
}

impl DynamoDbLedger {
    /// The identity's last applied seq and its parking, read consistently.
    pub async fn state(&self, identity: &str) -> Result<IdentityState, LedgerError> {
        let head = self.get(identity, HEAD_SEQ).await?;
        self.state_of(identity, head.as_ref())
    }

    /// Reads a head item (`None`: there is none).
    pub(crate) fn state_of(
        &self,
        identity: &str,
        head: Option<&Item>,
    ) -> Result<IdentityState, LedgerError> {
        let Some(head) = head else {
            return Ok(IdentityState {
                last_seq: 0,
                parking: None,
            });
        };
        let bad = |reason: String| self.malformed(identity, HEAD_SEQ, &reason);
        let whole = |name: &str| -> Result<Option<u64>, LedgerError> {
            match head.get(name) {
                None => Ok(None),
                Some(AttributeValue::N(text)) => text
                    .parse()
                    .map(Some)
                    .map_err(|e| bad(format!("{name} {text}: {e}"))),
                Some(_) => Err(bad(format!("{name} is not a number"))),
            }
        };
        let text = |name: &str| -> Result<Option<String>, LedgerError> {
            match head.get(name) {
                None => Ok(None),
                Some(AttributeValue::S(text)) => Ok(Some(text.clone())),
                Some(_) => Err(bad(format!("{name} is not a string"))),
            }
        };
        let last_seq = whole(attr::LAST_SEQ)?.unwrap_or(0);
        let Some(cause) = text(attr::PARKED_CAUSE)? else {
            return Ok(IdentityState {
                last_seq,
                parking: None,
            });
        };
        let cause = Cause::parse(&cause).ok_or_else(|| bad(format!("parked_cause {cause:?}")))?;
        let parked_at = text(attr::PARKED_AT)?.unwrap_or_default();
        let parked_at = OffsetDateTime::parse(&parked_at, &Rfc3339)
            .map_err(|e| bad(format!("parked_at {parked_at:?}: {e}")))?;
        let parking = Parking {
            cause,
            reason: text(attr::PARKED_REASON)?.unwrap_or_default(),
            seq: whole(attr::PARKED_SEQ)?,
            message_id: text(attr::PARKED_MESSAGE_ID)?,
            parked_at,
            version: whole(attr::PARKING_VERSION)?.unwrap_or(0),
        };
        Ok(IdentityState {
            last_seq,
            parking: Some(parking),
        })
    }

    /// Records a parking on the head item (see [`crate::store::Ledger::park`]).
    pub async fn park(
        &self,
        identity: &str,
        request: &ParkRequest,
        replace: bool,
    ) -> Result<Parking, LedgerError> {
        let at = now().map_err(|e| self.malformed(identity, HEAD_SEQ, &e.to_string()))?;
        let mut set = vec![
            "#cause = :cause",
            "#reason = :reason",
            "#at = :at",
            "#version = if_not_exists(#version, :start) + :one",
        ];
        let mut remove = Vec::new();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.name)
            .key(attr::IDENTITY, s(identity))
            .key(attr::SEQ, n(HEAD_SEQ))
            .expression_attribute_names("#cause", attr::PARKED_CAUSE)
            .expression_attribute_names("#reason", attr::PARKED_REASON)
            .expression_attribute_names("#at", attr::PARKED_AT)
            .expression_attribute_names("#version", attr::PARKING_VERSION)
            .expression_attribute_names("#seq", attr::PARKED_SEQ)
            .expression_attribute_names("#message", attr::PARKED_MESSAGE_ID)
            .expression_attribute_values(":cause", s(request.cause.as_str()))
            .expression_attribute_values(":reason", s(&request.reason))
            .expression_attribute_values(":at", s(at))
            .expression_attribute_values(":start", n(rand::random::<u32>()))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew);
        match request.seq {
            Some(seq) => {
                set.push("#seq = :seq");
                update = update.expression_attribute_values(":seq", n(seq));
            }
            None => remove.push("#seq"),
        }
        match &request.message_id {
            Some(id) => {
                set.push("#message = :message");
                update = update.expression_attribute_values(":message", s(id));
            }
            None => remove.push("#message"),
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        update = update.update_expression(expression);
        if !replace {
            update = update
                .condition_expression("attribute_not_exists(#cause) OR #cause = :gap")
                .expression_attribute_values(":gap", s(Cause::Gap.as_str()));
        }
        let item = match update.send().await {
            Ok(out) => out.attributes,
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                self.get(identity, HEAD_SEQ).await?
            }
            Err(e) => return Err(dynamo_error("UpdateItem", &self.name)(e)),
        };
        self.state_of(identity, item.as_ref())?
            .parking
            .ok_or_else(|| self.malformed(identity, HEAD_SEQ, "the parking just written is gone"))
    }

    /// Holds `event` of a parked identity at `-seq`, bumping the version.
    pub async fn hold(&self, event: &Envelope) -> Result<Held, HoldError> {
        let identity = event.identity.as_str();
        let put = Put::builder()
            .table_name(&self.name)
            .item(attr::IDENTITY, s(identity))
            .item(attr::SEQ, held_key(event.seq))
            .item(attr::EVENT_ID, s(event.event_id.to_string()))
            .item(attr::ENVELOPE, s(event.encode()))
            .item(attr::HELD_AT, s(now()?))
            .condition_expression("attribute_not_exists(#identity)")
            .expression_attribute_names("#identity", attr::IDENTITY)
            .build()
            .map_err(|e| HoldError::Request(e.to_string()))?;
        let bump = Update::builder()
            .table_name(&self.name)
            .key(attr::IDENTITY, s(identity))
            .key(attr::SEQ, n(HEAD_SEQ))
            .update_expression("SET #version = #version + :one")
            .condition_expression("attribute_exists(#cause)")
            .expression_attribute_names("#version", attr::PARKING_VERSION)
            .expression_attribute_names("#cause", attr::PARKED_CAUSE)
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(|e| HoldError::Request(e.to_string()))?;
        let written = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().update(bump).build())
            .send()
            .await;
        match written {
            Ok(_) => Ok(Held::New),
            Err(SdkError::ServiceError(e)) if e.err().is_transaction_canceled_exception() => {
                let (head, held) = tokio::try_join!(
                    self.get(identity, HEAD_SEQ),
                    self.get_held(identity, event.seq)
                )?;
                if let Some(held) = held {
                    let held_event_id = match held.get(attr::EVENT_ID) {
                        Some(AttributeValue::S(id)) => id.clone(),
                        _ => String::new(),
                    };
                    return if held_event_id == event.event_id.to_string() {
                        Ok(Held::Duplicate)
                    } else {
                        Err(HoldError::Conflict {
                            identity: identity.to_owned(),
                            seq: event.seq,
                            held_event_id,
                            event_id: event.event_id.to_string(),
                        })
                    };
                }
                if self.state_of(identity, head.as_ref())?.parking.is_none() {
                    return Err(HoldError::NotParked {
                        identity: identity.to_owned(),
                        seq: event.seq,
                    });
                }
                Err(LedgerError::DynamoDb {
                    call: "TransactWriteItems",
                    table: self.name.clone(),
                    detail: "the hold was cancelled by a concurrent write; it will be retried"
                        .to_owned(),
                }
                .into())
            }
            Err(e) => Err(dynamo_error("TransactWriteItems", &self.name)(e).into()),
        }
    }

    async fn get_held(&self, identity: &str, seq: u64) -> Result<Option<Item>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .key(attr::IDENTITY, s(identity))
            .key(attr::SEQ, held_key(seq))
            .consistent_read(true)
            .send()
            .await
            .map_err(dynamo_error("GetItem", &self.name))?;
        Ok(out.item)
    }

    /// Takes away the held copy of an event found applied already.
    pub(crate) async fn forget_held(&self, event: &Envelope) -> Result<(), ApplyError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.name)
            .key(attr::IDENTITY, s(event.identity.as_str()))
            .key(attr::SEQ, held_key(event.seq))
            .condition_expression("attribute_not_exists(#event_id) OR #event_id = :event_id")
            .expression_attribute_names("#event_id", attr::EVENT_ID)
            .expression_attribute_values(":event_id", s(event.event_id.to_string()))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            // Another event is held there: the drain meets it as a conflict.
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(dynamo_error("DeleteItem", &self.name)(e).into()),
        }
    }

    /// The held events of `identity`, in seq order.
    pub async fn held(&self, identity: &str) -> Result<Vec<Envelope>, LedgerError> {
        let items = self
            .client
            .query()
            .table_name(&self.name)
            .key_condition_expression("#identity = :identity AND #seq < :head")
            .expression_attribute_names("#identity", attr::IDENTITY)
            .expression_attribute_names("#seq", attr::SEQ)
            .expression_attribute_values(":identity", s(identity))
            .expression_attribute_values(":head", n(HEAD_SEQ))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(dynamo_error("Query", &self.name))?;
        let mut events = items
            .iter()
            .map(|item| match item.get(attr::ENVELOPE) {
                Some(AttributeValue::S(body)) => Envelope::decode(body).map_err(|e| {
                    self.malformed(identity, HEAD_SEQ, &format!("a held envelope: {e}"))
                }),
                _ => Err(self.malformed(identity, HEAD_SEQ, "a held item has no envelope")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        events.sort_by_key(|event| event.seq);
        Ok(events)
    }

    async fn held_count(&self, identity: &str) -> Result<usize, LedgerError> {
        let pages = self
            .client
            .query()
            .table_name(&self.name)
            .key_condition_expression("#identity = :identity AND #seq < :head")
            .expression_attribute_names("#identity", attr::IDENTITY)
            .expression_attribute_names("#seq", attr::SEQ)
            .expression_attribute_values(":identity", s(identity))
            .expression_attribute_values(":head", n(HEAD_SEQ))
            .select(Select::Count)
            .consistent_read(true)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(dynamo_error("Query", &self.name))?;
        Ok(pages
            .iter()
            .map(|page| usize::try_from(page.count).unwrap_or(0))
            .sum())
    }

    /// Unparks `identity` if nothing is held and the version is `version`.
    pub async fn unpark(&self, identity: &str, version: u64) -> Result<bool, LedgerError> {
        if self.held_count(identity).await? > 0 {
            return Ok(false);
        }
        let head = self.get(identity, HEAD_SEQ).await?;
        let state = self.state_of(identity, head.as_ref())?;
        if state.parking.as_ref().map(|p| p.version) != Some(version) {
            return Ok(false);
        }
        let applied_any = head
            .as_ref()
            .is_some_and(|h| h.contains_key(attr::LAST_SEQ));
        if applied_any {
            let names: Vec<String> = (0..PARKING_ATTRIBUTES.len())
                .map(|i| format!("#p{i}"))
                .collect();
            let mut update = self
                .client
                .update_item()
                .table_name(&self.name)
                .key(attr::IDENTITY, s(identity))
                .key(attr::SEQ, n(HEAD_SEQ))
                .update_expression(format!("REMOVE {}", names.join(", ")))
                .condition_expression("#version = :version")
                .expression_attribute_names("#version", attr::PARKING_VERSION)
                .expression_attribute_values(":version", n(version));
            for (name, attribute) in names.iter().zip(PARKING_ATTRIBUTES) {
                update = update.expression_attribute_names(name, attribute);
            }
            match update.send().await {
                Ok(_) => Ok(true),
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() =>
                {
                    Ok(false)
                }
                Err(e) => Err(dynamo_error("UpdateItem", &self.name)(e)),
            }
        } else {
            // Parked before anything was applied: the head is only the parking.
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.name)
                .key(attr::IDENTITY, s(identity))
                .key(attr::SEQ, n(HEAD_SEQ))
                .condition_expression("#version = :version AND attribute_not_exists(#last_seq)")
                .expression_attribute_names("#version", attr::PARKING_VERSION)
                .expression_attribute_names("#last_seq", attr::LAST_SEQ)
                .expression_attribute_values(":version", n(version))
                .send()
                .await;
            match deleted {
                Ok(_) => Ok(true),
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() =>
                {
                    Ok(false)
                }
                Err(e) => Err(dynamo_error("DeleteItem", &self.name)(e)),
            }
        }
    }

    /// Every parked identity with its held count, sorted by identity.
    pub async fn list_parked(&self) -> Result<Vec<ParkedIdentity>, LedgerError> {
        let heads = self
            .client
            .scan()
            .table_name(&self.name)
            .filter_expression("#seq = :head AND attribute_exists(#cause)")
            .expression_attribute_names("#seq", attr::SEQ)
            .expression_attribute_names("#cause", attr::PARKED_CAUSE)
            .expression_attribute_values(":head", n(HEAD_SEQ))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(dynamo_error("Scan", &self.name))?;
        let mut parked = Vec::new();
        for head in &heads {
            let identity = match head.get(attr::IDENTITY) {
                Some(AttributeValue::S(identity)) => identity.clone(),
                _ => return Err(self.malformed("?", HEAD_SEQ, "identity is missing")),
            };
            let Some(parking) = self.state_of(&identity, Some(head))?.parking else {
                continue;
            };
            let held = self.held_count(&identity).await?;
            parked.push(ParkedIdentity {
                identity,
                parking,
                held,
            });
        }
        parked.sort_by(|a, b| a.identity.cmp(&b.identity));
        Ok(parked)
    }
}
