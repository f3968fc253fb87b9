//! How a use of the consumer's records can fail, in either backend.

use crate::parking::Parking;

/// Why the consumer's records cannot be opened. Each message says what to
/// fix; none shows the database password.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    NotBuilt(#[from] obt_runtime::MySqlNotBuilt),
    #[error(transparent)]
    NoDatabaseUrl(#[from] obt_runtime::args::MissingDatabaseUrl),
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

/// A failed read or write of the consumer's records.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
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

impl LedgerError {
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
    Ledger(#[from] LedgerError),
    #[error("cannot build the request: {0}")]
    Request(String),
    #[error("cannot format a timestamp: {0}")]
    Timestamp(#[from] time::error::Format),
}

impl HoldError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Ledger(e) if e.is_transient())
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
    /// for the one that heals a gap, applied with
    /// [`Ledger::apply_parked`](super::Ledger::apply_parked)).
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
    Ledger(#[from] LedgerError),
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
            || matches!(self, Self::Ledger(e) if e.is_transient())
    }
}
