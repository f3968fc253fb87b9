//! The DynamoDB backend (the default), all of it: the consumer's table
//! (`migrations/dynamodb/consumer_spending.json`), with per identity one
//! item per applied event at its `seq` (1, 2, ...), a head item at `seq` 0
//! (`last_seq`, the totals, and a parking's `parked_*`) and each held event
//! at `-seq`. The write path is in `apply` and `parking`, the read path
//! in `read`; docs/ARCHITECTURE.md ("The consumer") says why.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use obt_contract::Envelope;

use super::{Applied, ApplyError, BoxFuture, HoldError, Ledger, LedgerError, LedgerReader};
use crate::parking::{Held, IdentityState, ParkRequest, ParkedIdentity, Parking};
use crate::read_model::{AppliedIdentity, IdentityHead};

mod activity;
mod apply;
mod parking;
mod read;

pub use activity::{APPLIED_MARK_EVERY, APPLIED_MARK_IDENTITY};

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
) -> impl FnOnce(SdkError<E, R>) -> LedgerError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let table = table.to_owned();
    move |e| LedgerError::DynamoDb {
        call,
        table,
        detail: obt_runtime::error_chain(&e),
    }
}

/// The consumer's records in its DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoDbLedger {
    pub(crate) client: aws_sdk_dynamodb::Client,
    pub(crate) name: String,
    /// When this process last refreshed the "last applied" marker, shared
    /// by its clones, so that it writes at most one every
    /// [`APPLIED_MARK_EVERY`].
    applied_mark: activity::AppliedMark,
}

impl DynamoDbLedger {
    pub fn new(client: aws_sdk_dynamodb::Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
            applied_mark: activity::AppliedMark::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the records are, for logs and messages.
    pub fn describe(&self) -> String {
        format!("DynamoDB table {}", self.name)
    }

    /// One item, read consistently: it must see every committed write.
    pub(crate) async fn get(
        &self,
        identity: &str,
        seq: u64,
    ) -> Result<Option<HashMap<String, AttributeValue>>, LedgerError> {
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

    pub(crate) fn malformed(&self, identity: &str, seq: u64, reason: &str) -> LedgerError {
        LedgerError::Malformed {
            table: self.name.clone(),
            identity: identity.to_owned(),
            seq: seq.to_string(),
            reason: reason.to_owned(),
        }
    }
}

impl Ledger for DynamoDbLedger {
    fn apply<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Applied, ApplyError>> {
        Box::pin(DynamoDbLedger::apply(self, event))
    }

    fn max_applied_together(&self) -> usize {
        apply::MAX_EVENTS_PER_WRITE
    }

    fn apply_all<'a>(
        &'a self,
        events: &'a [&'a Envelope],
    ) -> BoxFuture<'a, Result<bool, ApplyError>> {
        Box::pin(DynamoDbLedger::apply_all(self, events))
    }

    fn apply_parked<'a>(
        &'a self,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<Applied, ApplyError>> {
        Box::pin(DynamoDbLedger::apply_parked(self, event))
    }

    fn state<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<IdentityState, LedgerError>> {
        Box::pin(DynamoDbLedger::state(self, identity))
    }

    fn park<'a>(
        &'a self,
        identity: &'a str,
        request: &'a ParkRequest,
        replace: bool,
    ) -> BoxFuture<'a, Result<Parking, LedgerError>> {
        Box::pin(DynamoDbLedger::park(self, identity, request, replace))
    }

    fn hold<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Held, HoldError>> {
        Box::pin(DynamoDbLedger::hold(self, event))
    }

    fn held<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Vec<Envelope>, LedgerError>> {
        Box::pin(DynamoDbLedger::held(self, identity))
    }

    fn unpark<'a>(
        &'a self,
        identity: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        Box::pin(DynamoDbLedger::unpark(self, identity, version))
    }

    fn describe(&self) -> String {
        DynamoDbLedger::describe(self)
    }
}

impl LedgerReader for DynamoDbLedger {
    fn load_identity<'a>(
        &'a self,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<Option<AppliedIdentity>, LedgerError>> {
        Box::pin(DynamoDbLedger::load_identity(self, identity))
    }

    fn list_identities(&self) -> BoxFuture<'_, Result<Vec<IdentityHead>, LedgerError>> {
        Box::pin(DynamoDbLedger::list_identities(self))
    }

    fn list_parked(&self) -> BoxFuture<'_, Result<Vec<ParkedIdentity>, LedgerError>> {
        Box::pin(DynamoDbLedger::list_parked(self))
    }

    fn last_applied(&self) -> BoxFuture<'_, Result<Option<time::OffsetDateTime>, LedgerError>> {
        Box::pin(DynamoDbLedger::last_applied(self))
    }

    fn describe(&self) -> String {
        DynamoDbLedger::describe(self)
    }
}
