//! Where the consumer records what it applied, and the one operation that
//! matters: apply an event once, right after its predecessor. Beside it,
//! the identities the consumer parked and the events it holds for them
//! ([`crate::parking`]).
//!
//! There are two backends, chosen at start-up by `OBT_STORAGE`:
//! - [`dynamodb`] ([`SpendingTable`], the default): one conditional
//!   `TransactWriteItems` per event on the consumer's table.
//! - `mysql` (`MySqlLedger`, cargo feature `mysql`): one transaction on the
//!   consumer's own database, the event id recorded with the write (the
//!   original project's `consumed_outboxtable_db`).
//!
//! Both answer with the same outcomes ([`Applied`], [`ApplyError`]) for the
//! same events, so the consumer's handling of a message (delete, leave it,
//! call it a gap) does not depend on the backend, and the consumer's
//! behaviour tests run against either (`OBT_TEST_STORAGE`).
//!
//! [`Ledger`] is a trait object rather than a generic parameter: the
//! backend is picked from the environment at run time, the tests and
//! `consumer-show` read either one through the same calls, and the cost,
//! one boxed future per event, is nothing next to the database round trip.

pub mod dynamodb;
#[cfg(feature = "mysql")]
pub mod mysql;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use aws_config::SdkConfig;
use obt_contract::Envelope;
use obt_runtime::Storage;

use crate::config::StorageArgs;
use crate::parking::{Held, IdentityState, ParkRequest, ParkedIdentity, Parking};
use crate::read_model::{AppliedIdentity, IdentityHead};
pub use dynamodb::SpendingTable;
#[cfg(feature = "mysql")]
pub use mysql::MySqlLedger;

/// A future that a [`Ledger`] method returns (trait objects cannot have
/// `async fn`s).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The consumer's record of applied events, in either backend.
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// Applies `event` if it is its identity's next one and the identity
    /// is not parked, recognises it if it was applied before, and
    /// otherwise says why not ([`ApplyError::Parked`] first, then a gap),
    /// changing nothing.
    fn apply<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Applied, ApplyError>>;

    /// As [`Self::apply`], but whether the identity is parked or not: for
    /// the event that heals a gap and for the held and replayed events of
    /// a parked identity, applied in order. Removes the event from the
    /// held ones in the same write (also when it is a duplicate).
    fn apply_parked<'a>(
        &'a self,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<Applied, ApplyError>>;

    /// The identity's last applied seq (0 when none) and its parking.
    fn state<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<IdentityState, StoreError>>;

    /// Parks `identity`. An identity already parked keeps its parking,
    /// unless that is a `gap` (a poison or conflict then replaces it, a
    /// newer gap updates it) or `replace` is set (the operator's retry,
    /// which knows better). Returns the parking in force.
    fn park<'a>(
        &'a self,
        identity: &'a str,
        request: &'a ParkRequest,
        replace: bool,
    ) -> BoxFuture<'a, Result<Parking, StoreError>>;

    /// Holds `event` of a parked identity, durably, until it can be
    /// applied in order; bumps the parking's version, so that no unpark
    /// can miss it.
    fn hold<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Held, HoldError>>;

    /// The events held for `identity`, in seq order.
    fn held<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Vec<Envelope>, StoreError>>;

    /// Unparks `identity` if its parking is still at `version` and nothing
    /// is held for it; `false` (nothing changed) otherwise.
    fn unpark<'a>(
        &'a self,
        identity: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every parked identity with its parking and how many events are held
    /// for it, sorted by identity. Reads everything: for operators.
    fn list_parked(&self) -> BoxFuture<'_, Result<Vec<ParkedIdentity>, StoreError>>;

    /// Everything applied for `identity`, or `None` if nothing is. For
    /// `consumer-show`, the tests and the end-to-end checks; the consumer
    /// itself only applies.
    fn load_identity<'a>(
        &'a self,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<Option<AppliedIdentity>, StoreError>>;

    /// The heads of every identity, sorted by identity. Reads everything:
    /// for tests and checks, not for a request path.
    fn list_identities(&self) -> BoxFuture<'_, Result<Vec<IdentityHead>, StoreError>>;

    /// Where the records are, for logs and messages; never a password.
    fn describe(&self) -> String;
}

/// Opens the backend that `args` choose. `max_connections` sizes the MySQL
/// pool; `binary` names the program in the error of a build without the
/// `mysql` feature.
pub async fn open(
    config: &SdkConfig,
    args: &StorageArgs,
    max_connections: u32,
    binary: &'static str,
) -> Result<Arc<dyn Ledger>, OpenError> {
    match args.storage {
        Storage::Dynamodb => Ok(Arc::new(SpendingTable::new(
            aws_sdk_dynamodb::Client::new(config),
            &args.table,
        ))),
        Storage::Mysql => open_mysql(args, max_connections, binary).await,
    }
}

#[cfg(feature = "mysql")]
async fn open_mysql(
    args: &StorageArgs,
    max_connections: u32,
    _binary: &'static str,
) -> Result<Arc<dyn Ledger>, OpenError> {
    let url = args.database_url.as_ref().ok_or(OpenError::NoDatabaseUrl)?;
    let ledger =
        MySqlLedger::connect(url.expose(), max_connections, mysql::CONNECT_TIMEOUT).await?;
    Ok(Arc::new(ledger))
}

#[cfg(not(feature = "mysql"))]
async fn open_mysql(
    _args: &StorageArgs,
    _max_connections: u32,
    binary: &'static str,
) -> Result<Arc<dyn Ledger>, OpenError> {
    Err(obt_runtime::MySqlNotBuilt { binary }.into())
}

/// Why the consumer's records cannot be opened. Each message says what to
/// fix; none shows the database password.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    NotBuilt(#[from] obt_runtime::MySqlNotBuilt),
    #[error(
        "OBT_STORAGE=mysql needs OBT_DATABASE_URL (or --database-url): \
         mysql://USER:PASSWORD@HOST:PORT/DATABASE, the consumer's own database and user"
    )]
    NoDatabaseUrl,
    #[error(
        "OBT_DATABASE_URL is not a usable MySQL URL ({detail}); expected \
         mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    DatabaseUrl { detail: String },
    #[error(
        "cannot connect to MySQL at {server} as {user}: {detail}. Check OBT_DATABASE_URL (host, \
         port, user, password, database) and that the server is running and reachable from here"
    )]
    Connect {
        server: String,
        user: String,
        detail: String,
    },
    #[error(
        "the consumer's tables in database {database} cannot be read ({detail}): create them with \
         `obt-migrate --storage mysql`, which also grants the consumer's user what it needs"
    )]
    Schema { database: String, detail: String },
}

/// What became of an event that the records accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written now.
    New,
    /// The same event (same `event_id` at the same `seq`) was applied
    /// before: nothing changed.
    Duplicate,
}

/// A failed read or write of the records.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("DynamoDB {call} on table {table} failed: {detail}")]
    DynamoDb {
        call: &'static str,
        table: String,
        detail: String,
    },
    /// A MySQL statement failed. `transient` when a retry can succeed on
    /// its own: the connection was lost, a deadlock or a lock wait timeout.
    #[error("MySQL {call} failed: {detail}")]
    MySql {
        call: &'static str,
        detail: String,
        transient: bool,
    },
    #[error("the item (identity {identity}, seq {seq}) of table {table} is malformed: {reason}")]
    Malformed {
        table: String,
        identity: String,
        seq: String,
        reason: String,
    },
    /// The call did not finish in time: the records hang or are unreachable.
    #[error("{what} took longer than {secs} s and was abandoned; it will be retried")]
    TimedOut { what: String, secs: f32 },
}

impl StoreError {
    /// Whether the same call can succeed later without anyone's help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::DynamoDb { .. }
                | Self::TimedOut { .. }
                | Self::MySql {
                    transient: true,
                    ..
                }
        )
    }
}

/// Why an event was not held.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The identity is not parked (any more): apply the event instead.
    #[error("identity {identity} is not parked: its event at seq {seq} is not held")]
    NotParked { identity: String, seq: u64 },
    /// Another event is held at this seq: two events with one number.
    #[error(
        "conflict for identity {identity} at seq {seq}: event {held_event_id} is held there, the \
         message carries event {event_id}"
    )]
    Conflict {
        identity: String,
        seq: u64,
        held_event_id: String,
        event_id: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the request: {0}")]
    Request(String),
    #[error("cannot format a timestamp: {0}")]
    Timestamp(#[from] time::error::Format),
}

impl HoldError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_transient())
    }
}

/// Why an event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An earlier event of the identity has not been applied (yet).
    #[error(
        "gap in the events of identity {identity}: expected seq {expected}, received seq {received}"
    )]
    Gap {
        identity: String,
        expected: u64,
        received: u64,
    },
    /// Another event holds this `seq`: two different events were published
    /// with the same number, a contract violation.
    #[error(
        "conflict for identity {identity} at seq {seq}: event {stored_event_id} is applied there, \
         the message carries event {event_id}"
    )]
    Conflict {
        identity: String,
        seq: u64,
        stored_event_id: String,
        event_id: String,
    },
    /// The identity is parked: the event is to be held, not applied (or,
    /// for the one that heals a gap, applied with [`Ledger::apply_parked`]).
    #[error("identity {identity} is parked ({}): seq {seq} is not applied past it", parking.cause)]
    Parked {
        identity: String,
        seq: u64,
        last_seq: u64,
        parking: Box<Parking>,
    },
    /// The event's id is recorded for another identity or seq: one id was
    /// given to two events, a contract violation (MySQL, which indexes the
    /// event ids, sees it).
    #[error(
        "event {event_id} (identity {identity}, seq {seq}) cannot be applied: its id is already \
         recorded for identity {stored_identity} at seq {stored_seq}"
    )]
    EventIdReused {
        event_id: String,
        identity: String,
        seq: u64,
        stored_identity: String,
        stored_seq: u64,
    },
    /// The head counts an event whose item is missing: the table was
    /// changed by hand or by a bug.
    #[error("identity {identity}'s head is at seq {last_seq} but there is no item at seq {seq}")]
    Inconsistent {
        identity: String,
        seq: u64,
        last_seq: u64,
    },
    /// The write was refused although the table is right behind this
    /// event (a concurrent transaction, throttling): a retry can succeed.
    #[error(
        "the write of identity {identity} seq {seq} was cancelled ({reasons}) while the head is at \
         seq {last_seq}; it will be retried"
    )]
    Contended {
        identity: String,
        seq: u64,
        last_seq: u64,
        reasons: String,
    },
    /// The write did not finish in time: the database hangs or is
    /// unreachable. Whether it committed is unknown; a retry finds out (a
    /// committed event is recognised as a duplicate).
    #[error(
        "the write of identity {identity} seq {seq} took longer than {secs} s and was abandoned; \
         it will be retried"
    )]
    TimedOut {
        identity: String,
        seq: u64,
        secs: f32,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the DynamoDB request: {0}")]
    Request(String),
    #[error("cannot format a timestamp: {0}")]
    Timestamp(#[from] time::error::Format),
}

impl ApplyError {
    /// Whether the same message can succeed later without anyone's help
    /// (the network, throttling, a concurrent writer).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Contended { .. } | Self::TimedOut { .. })
            || matches!(self, Self::Store(e) if e.is_transient())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mysql_args() -> StorageArgs {
        StorageArgs {
            storage: Storage::Mysql,
            ..StorageArgs::defaults()
        }
    }

    #[cfg(feature = "mysql")]
    #[tokio::test]
    async fn the_mysql_mode_without_a_database_url_is_refused_and_names_the_setting() {
        let config = SdkConfig::builder().build();
        let error = open(&config, &mysql_args(), 1, "consumer")
            .await
            .expect_err("refused");
        assert!(matches!(error, OpenError::NoDatabaseUrl), "{error}");
        assert!(error.to_string().contains("OBT_DATABASE_URL"));
    }

    #[cfg(not(feature = "mysql"))]
    #[tokio::test]
    async fn the_mysql_mode_in_a_build_without_the_feature_is_refused_and_says_how_to_get_it() {
        let config = SdkConfig::builder().build();
        let error = open(&config, &mysql_args(), 1, "consumer")
            .await
            .expect_err("refused");
        assert!(matches!(error, OpenError::NotBuilt(_)), "{error}");
        assert!(error.to_string().contains("--features mysql"), "{error}");
    }

    #[test]
    fn only_mysql_errors_that_a_retry_can_fix_are_transient() {
        let error = |transient| {
            ApplyError::Store(StoreError::MySql {
                call: "COMMIT",
                detail: String::new(),
                transient,
            })
        };
        assert!(error(true).is_transient());
        assert!(!error(false).is_transient());
    }
}
