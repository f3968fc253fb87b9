//! What the consumer has applied, read back: the values the read path
//! ([`LedgerReader`](crate::store::LedgerReader)) returns from either
//! backend, for `consumer-show`, `obt-check`, operators and the tests.

use rust_decimal::Decimal;
use time::OffsetDateTime;

/// An identity's head: where it stands and its running totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHead {
    pub identity: String,
    /// The name and surname of the last applied event.
    pub name: String,
    pub surname: String,
    /// The seq of the last applied event.
    pub last_seq: u64,
    /// The sum of the applied amounts, with two fraction digits.
    pub total: Decimal,
    /// How many events were applied.
    pub count: u64,
    pub updated_at: OffsetDateTime,
}

/// Everything applied for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedIdentity {
    pub identity: String,
    pub name: String,
    pub surname: String,
    pub last_seq: u64,
    pub total: Decimal,
    pub count: u64,
    pub updated_at: OffsetDateTime,
    /// The applied events, in seq order.
    pub spendings: Vec<AppliedSpending>,
}

impl AppliedIdentity {
    /// An identity's head with its applied events (in seq order).
    pub fn new(head: IdentityHead, spendings: Vec<AppliedSpending>) -> Self {
        Self {
            identity: head.identity,
            name: head.name,
            surname: head.surname,
            last_seq: head.last_seq,
            total: head.total,
            count: head.count,
            updated_at: head.updated_at,
            spendings,
        }
    }
}

/// One applied event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedSpending {
    pub seq: u64,
    pub event_id: String,
    pub name: String,
    pub surname: String,
    /// With two fraction digits, as published.
    pub amount: Decimal,
    pub occurred_at: OffsetDateTime,
    pub applied_at: OffsetDateTime,
}
