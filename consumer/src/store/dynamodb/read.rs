//! The read path: what the table holds, read back consistently.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;
use rust_decimal::Decimal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{DynamoDbLedger, HEAD_SEQ, attr, dynamo_error, n, s};
use crate::read_model::{AppliedIdentity, AppliedSpending, IdentityHead};
use crate::store::LedgerError;

type Item = HashMap<String, AttributeValue>;

impl DynamoDbLedger {
    /// Everything applied for `identity`, or `None` if nothing is.
    pub async fn load_identity(
        &self,
        identity: &str,
    ) -> Result<Option<AppliedIdentity>, LedgerError> {
        let items = self
            .client
            .query()
            .table_name(&self.name)
            // Not the held events (negative sort keys): nothing applied.
            .key_condition_expression("#identity = :identity AND #seq >= :head")
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
        let mut head = None;
        let mut spendings = Vec::new();
        for item in &items {
            let reader = Reader::new(self, item)?;
            if reader.seq == HEAD_SEQ {
                // A head without `last_seq` is only a parking: nothing applied.
                if item.contains_key(attr::LAST_SEQ) {
                    head = Some(reader.head()?);
                }
            } else {
                spendings.push(reader.spending()?);
            }
        }
        let Some(head) = head else {
            return match spendings.first() {
                None => Ok(None),
                Some(first) => {
                    Err(self.malformed(identity, first.seq, "the identity has no head item"))
                }
            };
        };
        spendings.sort_by_key(|spending| spending.seq);
        Ok(Some(AppliedIdentity::new(head, spendings)))
    }

    /// The heads of every identity, sorted by identity. A full scan: for
    /// tests and checks, not for a request path.
    pub async fn list_identities(&self) -> Result<Vec<IdentityHead>, LedgerError> {
        let items = self
            .client
            .scan()
            .table_name(&self.name)
            .filter_expression("#seq = :head AND attribute_exists(#last_seq)")
            .expression_attribute_names("#seq", attr::SEQ)
            .expression_attribute_names("#last_seq", attr::LAST_SEQ)
            .expression_attribute_values(":head", n(HEAD_SEQ))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(dynamo_error("Scan", &self.name))?;
        let mut heads = items
            .iter()
            .map(|item| Reader::new(self, item)?.head())
            .collect::<Result<Vec<_>, _>>()?;
        heads.sort_by(|a, b| a.identity.cmp(&b.identity));
        Ok(heads)
    }
}

/// Reads the attributes of one item, naming the item in every error.
struct Reader<'a> {
    table: &'a DynamoDbLedger,
    item: &'a Item,
    identity: String,
    seq: u64,
}

impl<'a> Reader<'a> {
    fn new(table: &'a DynamoDbLedger, item: &'a Item) -> Result<Self, LedgerError> {
        let identity = match item.get(attr::IDENTITY) {
            Some(AttributeValue::S(identity)) => identity.clone(),
            _ => return Err(table.malformed("?", HEAD_SEQ, "identity is missing")),
        };
        let seq = match item.get(attr::SEQ) {
            Some(AttributeValue::N(text)) => text.parse().ok(),
            _ => None,
        };
        let Some(seq) = seq else {
            return Err(LedgerError::Malformed {
                table: table.name.clone(),
                identity,
                seq: "?".to_owned(),
                reason: "seq is missing or not a whole number".to_owned(),
            });
        };
        Ok(Self {
            table,
            item,
            identity,
            seq,
        })
    }

    fn error(&self, reason: String) -> LedgerError {
        self.table.malformed(&self.identity, self.seq, &reason)
    }

    fn text(&self, name: &str) -> Result<String, LedgerError> {
        match self.item.get(name) {
            Some(AttributeValue::S(text)) => Ok(text.clone()),
            Some(_) => Err(self.error(format!("{name} is not a string"))),
            None => Err(self.error(format!("{name} is missing"))),
        }
    }

    fn number_text(&self, name: &str) -> Result<&'a str, LedgerError> {
        match self.item.get(name) {
            Some(AttributeValue::N(text)) => Ok(text),
            Some(_) => Err(self.error(format!("{name} is not a number"))),
            None => Err(self.error(format!("{name} is missing"))),
        }
    }

    fn whole(&self, name: &str) -> Result<u64, LedgerError> {
        let text = self.number_text(name)?;
        text.parse()
            .map_err(|e| self.error(format!("{name} = {text}: {e}")))
    }

    /// DynamoDB hands numbers back normalised ("51.3" for "51.30"); the
    /// read model shows money with two fraction digits again.
    fn money(&self, name: &str) -> Result<Decimal, LedgerError> {
        let text = self.number_text(name)?;
        let mut value = Decimal::from_str(text)
            .or_else(|_| Decimal::from_scientific(text))
            .map_err(|e| self.error(format!("{name} = {text}: {e}")))?;
        value.rescale(2);
        Ok(value)
    }

    fn time(&self, name: &str) -> Result<OffsetDateTime, LedgerError> {
        let text = self.text(name)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map_err(|e| self.error(format!("{name} = {text}: {e}")))
    }

    fn head(&self) -> Result<IdentityHead, LedgerError> {
        Ok(IdentityHead {
            identity: self.identity.clone(),
            name: self.text(attr::NAME)?,
            surname: self.text(attr::SURNAME)?,
            last_seq: self.whole(attr::LAST_SEQ)?,
            total: self.money(attr::TOTAL)?,
            count: self.whole(attr::COUNT)?,
            updated_at: self.time(attr::UPDATED_AT)?,
        })
    }

    fn spending(&self) -> Result<AppliedSpending, LedgerError> {
        Ok(AppliedSpending {
            seq: self.seq,
            event_id: self.text(attr::EVENT_ID)?,
            name: self.text(attr::NAME)?,
            surname: self.text(attr::SURNAME)?,
            amount: self.money(attr::AMOUNT)?,
            occurred_at: self.time(attr::OCCURRED_AT)?,
            applied_at: self.time(attr::APPLIED_AT)?,
        })
    }
}
