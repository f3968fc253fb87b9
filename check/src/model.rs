//! What a run collects: the answers to the POSTs, the api's view of each
//! identity and the consumer's. The verifier ([`crate::verify`]) is a pure
//! function of these, so that tests can build any situation by hand.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use time::OffsetDateTime;

/// The api's `201` answer to one POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Created {
    pub event_id: String,
    pub seq: u64,
    /// The amount the api says it recorded.
    pub amount: Decimal,
    /// The event's `created_at` (the envelope's `occurred_at`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    /// The answer carried `Idempotent-Replayed: true`: the api recognised a
    /// retried `Idempotency-Key` and answered the original 201.
    pub replayed: bool,
}

/// What one planned POST ended as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A `201 Created`.
    Created(Created),
    /// A definite refusal: a 4xx other than 429.
    Rejected { status: u16, body: String },
    /// No definite answer before `--give-up-after-secs`: it may or may not
    /// have been recorded.
    Unresolved { reason: String },
}

/// One planned spending and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostResult {
    /// Its index in the plan.
    pub index: usize,
    pub identity: String,
    /// The amount that was sent.
    pub amount: Decimal,
    pub idempotency_key: String,
    /// How many times the request was sent (1 without retries).
    pub attempts: u32,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The api's `GET /api/v1/spending/{identity}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiSummary {
    pub name: String,
    pub surname: String,
    pub total: Decimal,
    pub count: u64,
    pub last_seq: u64,
    pub pending_events: u64,
}

/// What the api said about an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApiState {
    Found(ApiSummary),
    /// `404`: nothing recorded for it.
    NotFound,
    /// No usable answer (the reason).
    Unreadable {
        reason: String,
    },
}

impl ApiState {
    /// The api's last seq, 0 when nothing is recorded or readable.
    pub fn last_seq(&self) -> u64 {
        match self {
            Self::Found(summary) => summary.last_seq,
            _ => 0,
        }
    }
}

/// One event as the consumer applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedEvent {
    pub seq: u64,
    pub event_id: String,
    pub amount: Decimal,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub applied_at: OffsetDateTime,
}

/// The consumer's record of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedView {
    pub total: Decimal,
    pub count: u64,
    pub last_seq: u64,
    /// In the order the consumer's records list them (seq order).
    pub events: Vec<AppliedEvent>,
}

impl From<obt_consumer::AppliedIdentity> for AppliedView {
    fn from(applied: obt_consumer::AppliedIdentity) -> Self {
        Self {
            total: applied.total,
            count: applied.count,
            last_seq: applied.last_seq,
            events: applied
                .spendings
                .into_iter()
                .map(|s| AppliedEvent {
                    seq: s.seq,
                    event_id: s.event_id,
                    amount: s.amount,
                    occurred_at: s.occurred_at,
                    applied_at: s.applied_at,
                })
                .collect(),
        }
    }
}

/// An identity the consumer had not caught up with when the convergence
/// wait ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lag {
    pub identity: String,
    pub api_last_seq: u64,
    pub applied_last_seq: u64,
}

/// Everything a run collected.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Every identity of the plan.
    pub identities: Vec<String>,
    /// One per planned spending.
    pub posts: Vec<PostResult>,
    /// The api's view of each identity, read after the load.
    pub api: BTreeMap<String, ApiState>,
    /// The consumer's view of each identity (`None`: nothing applied), read
    /// after the convergence wait.
    pub applied: BTreeMap<String, Option<AppliedView>>,
    /// The identities still behind when the wait ended (empty: converged).
    pub lagging: Vec<Lag>,
}
