//! Where spendings and their events are kept: the one place that speaks to
//! a database. The handlers see [`Store`]: [`dynamodb`] ([`DynamoDbStore`],
//! the default) or [`mysql`] (`MySqlStore`, cargo feature `mysql`). Both
//! store the spending, its event and an Idempotency-Key's record in one
//! atomic write, and give the same outcomes for the same requests (the
//! api's integration tests run against either, `OBT_TEST_STORAGE`). How
//! each does it, and why, is in docs/ARCHITECTURE.md.
//!
//! [`Store`] is an enum, not a trait object: the backends are a closed set
//! chosen once at start-up, and an enum needs no boxed futures.

pub mod dynamodb;
pub mod item;
pub mod locks;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod outcome;
pub mod retry;

use obt_contract::{Identity, TraceContext};
use rust_decimal::Decimal;

use crate::idempotency::Idempotency;
use crate::input::NewSpending;
pub use dynamodb::DynamoDbStore;
#[cfg(feature = "mysql")]
pub use mysql::MySqlStore;
pub use outcome::{Outcome, StoredOutcome};
pub use retry::RetryPolicy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Every attempt lost to a concurrent write of the same identity (an
    /// optimistic-concurrency race in DynamoDB, a deadlock or lock wait
    /// timeout in MySQL); nothing was written.
    #[error(
        "gave up after {attempts} attempts: concurrent writes of the identity kept conflicting"
    )]
    Contention { attempts: u32 },
    /// The item's outbox holds `limit` events the relay has not taken;
    /// nothing was written.
    #[error("the outbox holds {limit} unpublished events, the most allowed")]
    OutboxFull { limit: u32 },
    /// DynamoDB refused the request for capacity; nothing was written.
    #[error("DynamoDB throttled {call}")]
    Throttled {
        call: &'static str,
        #[source]
        source: BoxError,
    },
    /// A DynamoDB call that writes nothing (a read before the write, a
    /// summary, the readiness probe) got no answer: the connection failed
    /// or the call timed out, after the SDK's retries. Or the connection
    /// of the write was refused, so that it was never sent. Nothing was
    /// written.
    #[error("DynamoDB did not answer {call}")]
    DynamoDbUnreachable {
        call: &'static str,
        #[source]
        source: BoxError,
    },
    /// Any other DynamoDB failure.
    #[error("DynamoDB call {call} failed")]
    DynamoDb {
        call: &'static str,
        #[source]
        source: BoxError,
    },
    /// An attempt of the write may have reached DynamoDB and committed
    /// (its answer was lost: a timeout, a connection that failed after
    /// sending, a 5xx), and the request then failed, `last` saying how
    /// (throttled, say, or out of attempts). The spending may be
    /// recorded: whatever `last` is, this must not be answered as if
    /// nothing was written.
    #[error("an attempt of {call} may have committed, then the request failed")]
    WriteOutcomeUnknown {
        call: &'static str,
        #[source]
        last: Box<StoreError>,
    },
    /// MySQL could not be reached, had no connection to give in time (the
    /// pool's acquire timeout), refused connections or was shutting down,
    /// or lost the connection before COMMIT was sent: nothing was
    /// committed, and the same request may succeed later.
    #[cfg(feature = "mysql")]
    #[error("MySQL is unavailable ({what})")]
    MySqlUnavailable {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A MySQL statement failed for another reason (a missing privilege, a
    /// broken constraint, an unreadable value); the transaction rolled
    /// back. Or COMMIT failed otherwise than by a deadlock (its answer was
    /// lost, or the server was shutting down or killed the connection),
    /// and nobody knows whether it committed.
    #[cfg(feature = "mysql")]
    #[error("MySQL {what} failed")]
    MySql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The Idempotency-Key was already used, unexpired, for a request
    /// with another fingerprint; nothing was written.
    #[error("the Idempotency-Key was already used for a different request")]
    KeyReused,
    /// The stored aggregate exists but is not what this code writes.
    #[error("the item of {identity} is malformed: {reason}")]
    Malformed { identity: String, reason: String },
    /// The event, or the outcome kept under an Idempotency-Key, could not
    /// be encoded for the database.
    #[error("cannot encode for the database: {0}")]
    Encode(String),
}

/// The limits of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub retry: RetryPolicy,
    /// The most events an item's outbox may hold (DynamoDB only: MySQL's
    /// outbox is a table, see [`mysql`]).
    pub max_pending_events: u32,
    /// How long an Idempotency-Key is kept after its first use; after
    /// that it may be used again.
    pub idempotency_ttl: std::time::Duration,
}

impl StoreOptions {
    /// A worst-case event (100 four-byte characters in both names, a
    /// 64-character identity, a trace context with a 512-character
    /// tracestate) takes about 1.7 KB of the item; 200 of them stay below
    /// the 400 KB item limit. Typical events are a quarter of that.
    pub const DEFAULT_MAX_PENDING_EVENTS: u32 = 200;
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            max_pending_events: Self::DEFAULT_MAX_PENDING_EVENTS,
            idempotency_ttl: crate::idempotency::DEFAULT_TTL,
        }
    }
}

/// An identity's totals, as answered by GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub identity: Identity,
    pub name: String,
    pub surname: String,
    pub total: Decimal,
    pub count: u64,
    pub last_seq: u64,
    /// Events the relay has not yet taken out of the outbox.
    pub pending_events: usize,
}

/// The backend the api runs with.
#[derive(Debug)]
pub enum Store {
    DynamoDb(DynamoDbStore),
    #[cfg(feature = "mysql")]
    MySql(MySqlStore),
}

impl Store {
    /// Records a spending and its event atomically. With a key, the key's
    /// record too, or the outcome of the key's first request is replayed
    /// (same fingerprint) or the request refused ([`StoreError::KeyReused`]).
    /// The event carries `trace`, the request's trace context.
    pub async fn record(
        &self,
        spending: &NewSpending,
        idempotency: &Idempotency,
        trace: Option<&TraceContext>,
    ) -> Result<Outcome, StoreError> {
        match self {
            Self::DynamoDb(store) => store.record(spending, idempotency, trace).await,
            #[cfg(feature = "mysql")]
            Self::MySql(store) => store.record(spending, idempotency, trace).await,
        }
    }

    /// An identity's totals, `None` when nothing was recorded for it.
    pub async fn summary(&self, identity: &Identity) -> Result<Option<Summary>, StoreError> {
        match self {
            Self::DynamoDb(store) => store.summary(identity).await,
            #[cfg(feature = "mysql")]
            Self::MySql(store) => store.summary(identity).await,
        }
    }

    /// Whether the database answers (the readiness probe).
    pub async fn ready(&self) -> Result<(), StoreError> {
        match self {
            Self::DynamoDb(store) => store.ready().await,
            #[cfg(feature = "mysql")]
            Self::MySql(store) => store.ready().await,
        }
    }

    /// The backend's name, as the readiness probe reports it.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::DynamoDb(_) => "dynamodb",
            #[cfg(feature = "mysql")]
            Self::MySql(_) => "mysql",
        }
    }
}

impl From<DynamoDbStore> for Store {
    fn from(store: DynamoDbStore) -> Self {
        Self::DynamoDb(store)
    }
}

#[cfg(feature = "mysql")]
impl From<MySqlStore> for Store {
    fn from(store: MySqlStore) -> Self {
        Self::MySql(store)
    }
}
