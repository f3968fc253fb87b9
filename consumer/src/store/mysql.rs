//! The MySQL backend (cargo feature `mysql`), all of it: the consumer's
//! own database (`migrations/mysql/consumer`). An event is applied by one
//! transaction that locks the identity's head row (and its parking row),
//! records the spending with its event id under a unique key and moves the
//! head from `seq - 1` to `seq`. The write path is here and in `parking`,
//! the read path in `read`; docs/ARCHITECTURE.md ("Relational mode") says
//! why, and why sessions run at READ COMMITTED.

use std::str::FromStr;
use std::time::Duration;

use obt_contract::Envelope;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlRow};
use sqlx::{ConnectOptions, Connection, Executor, MySql, Row, Transaction};
use tracing::{debug, instrument};

use super::{
    Applied, ApplyError, BoxFuture, HoldError, Ledger, LedgerError, LedgerReader, OpenError,
};
use crate::parking::{Held, IdentityState, ParkRequest, ParkedIdentity, Parking};
use crate::read_model::{AppliedIdentity, IdentityHead};

mod parking;
mod read;

/// Whether an apply may go past a parking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not while the identity is parked.
    Normal,
    /// Whether parked or not; the held copy of the event goes.
    Parked,
}

/// How long start-up waits for the first connection, and an apply for a
/// free connection of the pool.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A statement waits 10 s for a row lock before giving up (the server's
/// default is 50 s). Only a stuck transaction holds a head for
/// that long; failing sooner leaves the message for redelivery well
/// within a typical visibility timeout.
const LOCK_WAIT_TIMEOUT: &str = "SET SESSION innodb_lock_wait_timeout = 10";

/// Transactions per apply when a concurrent one got in the way (the race
/// for a new identity's head, a deadlock).
const ATTEMPTS: u32 = 3;

/// The MySQL error numbers this module tells apart.
mod code {
    pub const DUPLICATE_KEY: u16 = 1062;
    pub const DEADLOCK: u16 = 1213;
    /// Errors after which the same statement can succeed on its own: a
    /// lock wait timeout, a deadlock, too many connections, the server
    /// shutting down, the query or connection killed, a server that is
    /// read-only for now (a failover), a connection closed for idleness.
    pub const TRANSIENT: [u16; 9] = [1205, 1213, 1040, 1053, 1317, 1927, 1290, 1836, 4031];
}

/// The consumer's records in its MySQL database.
#[derive(Clone)]
pub struct MySqlLedger {
    pool: MySqlPool,
    /// "database X at host:port as user": for logs, without the password.
    label: String,
}

impl std::fmt::Debug for MySqlLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlLedger")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// How one transaction went wrong.
enum Failure {
    /// A concurrent transaction got in the way; a new one can succeed.
    Retry {
        call: &'static str,
        error: sqlx::Error,
    },
    /// The answer for this event.
    Final(ApplyError),
}

impl From<ApplyError> for Failure {
    fn from(e: ApplyError) -> Self {
        Self::Final(e)
    }
}

fn error_number(e: &sqlx::Error) -> Option<u16> {
    e.as_database_error()?
        .try_downcast_ref::<MySqlDatabaseError>()
        .map(MySqlDatabaseError::number)
}

/// Whether the same statement can succeed later without anyone's help.
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        // A protocol error: a connection cut mid-packet, or left out of
        // step by a statement abandoned on a timeout.
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => error_number(e).is_some_and(|n| code::TRANSIENT.contains(&n)),
        _ => false,
    }
}

fn store_error(call: &'static str, e: &sqlx::Error) -> LedgerError {
    LedgerError::MySql {
        call,
        detail: e.to_string(),
        transient: is_transient(e),
    }
}

/// Maps a failed statement of an apply: a deadlock retries the whole
/// transaction (the server rolled it back), anything else is the answer.
fn failed(call: &'static str) -> impl FnOnce(sqlx::Error) -> Failure {
    move |error| {
        if error_number(&error) == Some(code::DEADLOCK) {
            Failure::Retry { call, error }
        } else {
            Failure::Final(store_error(call, &error).into())
        }
    }
}

fn read_failed(call: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
    move |e| store_error(call, &e)
}

/// Ends a transaction that wrote nothing. A failure here only loses the
/// connection, which the pool replaces.
async fn rollback(tx: Transaction<'_, MySql>) {
    if let Err(e) = tx.rollback().await {
        debug!(error = %e, "rolling back a transaction that wrote nothing failed");
    }
}

/// Why no connection could be made. The pool retries a refused
/// connection until its timeout and then only says that it timed out; one
/// more attempt of our own tells the cause (refused, unknown host).
async fn connect_failure(
    error: sqlx::Error,
    options: &MySqlConnectOptions,
    timeout: Duration,
) -> String {
    if !matches!(error, sqlx::Error::PoolTimedOut) {
        return error.to_string();
    }
    let waited = format!("no connection within {} s", timeout.as_secs_f32());
    match tokio::time::timeout(Duration::from_secs(2), options.connect()).await {
        Ok(Err(cause)) => format!("{waited} ({cause})"),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            format!("{waited} (the server answers now: it may be overloaded)")
        }
        Err(_) => format!("{waited} (the server does not answer)"),
    }
}

impl MySqlLedger {
    /// Connects to the database of `url` with a pool of at most
    /// `max_connections`, and checks that the consumer's tables are there
    /// and readable, so that a wrong URL or a missing migration stops the
    /// consumer at start-up rather than sending every message to the
    /// dead-letter queue. The server ends a session silent for
    /// `idle_session` (in production
    /// [`obt_runtime::mysql::IDLE_SESSION_TIMEOUT`]), and with it the
    /// transaction of an apply cut off from the consumer, whose lock on the
    /// identity's head would otherwise hold every later apply of it.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
        idle_session: Duration,
    ) -> Result<Self, OpenError> {
        // sqlx's parse errors describe the problem, never the URL itself.
        let options = MySqlConnectOptions::from_str(url).map_err(|e| OpenError::DatabaseUrl {
            detail: e.to_string(),
        })?;
        let Some(database) = options.get_database().map(str::to_owned) else {
            return Err(OpenError::DatabaseUrl {
                detail: "it names no database".to_owned(),
            });
        };
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let user = options.get_username().to_owned();
        let pool = obt_runtime::mysql::pool_options(
            max_connections,
            connect_timeout,
            idle_session,
            &[
                // At REPEATABLE READ, looking for a head that does not
                // exist yet locks the gap around it: the first events of
                // unrelated new identities would deadlock.
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                LOCK_WAIT_TIMEOUT,
            ],
        )
        .connect_with(options.clone())
        .await;
        let pool = match pool {
            Ok(pool) => pool,
            Err(e) => {
                return Err(OpenError::Connect {
                    server,
                    user,
                    detail: connect_failure(e, &options, connect_timeout).await,
                });
            }
        };
        for table in [
            "consumer_identity",
            "obt_spending",
            "obt_consumer_parked",
            "obt_consumer_held",
        ] {
            let probe = format!("SELECT 1 FROM {table} LIMIT 0");
            pool.execute(probe.as_str())
                .await
                .map_err(|e| OpenError::Schema {
                    database: database.clone(),
                    detail: e.to_string(),
                })?;
        }
        Ok(Self {
            pool,
            label: format!("MySQL database {database} at {server} as {user}"),
        })
    }

    /// Applies `event` if it is its identity's next one and the identity
    /// is not parked; recognises it if it was applied before.
    #[instrument(skip_all)]
    pub async fn apply(&self, event: &Envelope) -> Result<Applied, ApplyError> {
        self.write(event, Mode::Normal).await
    }

    /// Applies `event` if it is its identity's next one, parked or not,
    /// and deletes its held copy.
    #[instrument(skip_all)]
    pub async fn apply_parked(&self, event: &Envelope) -> Result<Applied, ApplyError> {
        self.write(event, Mode::Parked).await
    }

    async fn write(&self, event: &Envelope, mode: Mode) -> Result<Applied, ApplyError> {
        let mut attempt = 1;
        loop {
            match self.try_apply(event, mode).await {
                Ok(applied) => return Ok(applied),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry { call, error }) if attempt < ATTEMPTS => {
                    debug!(attempt, call, error = %error, "a concurrent transaction got in the way; trying again");
                    attempt += 1;
                }
                Err(Failure::Retry { call, error }) => {
                    // Still losing to concurrent transactions: a later
                    // delivery will not.
                    return Err(LedgerError::MySql {
                        call,
                        detail: format!("{error} ({ATTEMPTS} attempts)"),
                        transient: true,
                    }
                    .into());
                }
            }
        }
    }

    /// One transaction of [`Self::apply`].
    async fn try_apply(&self, event: &Envelope, mode: Mode) -> Result<Applied, Failure> {
        let identity = event.identity.as_str();
        let event_id = event.event_id.to_string();
        obt_runtime::metrics::db_query("BEGIN");
        let mut tx = self.pool.begin().await.map_err(failed("BEGIN"))?;

        obt_runtime::metrics::db_query("SELECT consumer_identity FOR UPDATE");
        let head: Option<u64> = sqlx::query_scalar(
            "SELECT last_seq FROM consumer_identity WHERE identity = ? FOR UPDATE",
        )
        .bind(identity)
        .fetch_optional(&mut *tx)
        .await
        .map_err(failed("SELECT consumer_identity FOR UPDATE"))?;
        let last_seq = head.unwrap_or(0);

        if event.seq <= last_seq {
            obt_runtime::metrics::db_query("SELECT obt_spending");
            let stored =
                sqlx::query("SELECT event_id FROM obt_spending WHERE identity = ? AND seq = ?")
                    .bind(identity)
                    .bind(event.seq)
                    .fetch_optional(&mut *tx)
                    .await
                    .and_then(|row| row.map(|row| text(&row, "event_id")).transpose())
                    .map_err(failed("SELECT obt_spending"))?;
            if mode == Mode::Parked && stored.as_deref() == Some(event_id.as_str()) {
                // Applied before: its held copy, if any, goes.
                obt_runtime::metrics::db_query("DELETE obt_consumer_held");
                sqlx::query(
                    "DELETE FROM obt_consumer_held WHERE identity = ? AND seq = ? AND event_id = ?",
                )
                .bind(identity)
                .bind(event.seq)
                .bind(&event_id)
                .execute(&mut *tx)
                .await
                .map_err(failed("DELETE obt_consumer_held"))?;
                obt_runtime::metrics::db_query("COMMIT");
                tx.commit().await.map_err(failed("COMMIT"))?;
                return Ok(Applied::Duplicate);
            }
            rollback(tx).await;
            return match stored {
                Some(stored) if stored == event_id => Ok(Applied::Duplicate),
                Some(stored_event_id) => Err(ApplyError::Conflict {
                    identity: identity.to_owned(),
                    seq: event.seq,
                    stored_event_id,
                    event_id,
                }
                .into()),
                None => Err(ApplyError::Inconsistent {
                    identity: identity.to_owned(),
                    seq: event.seq,
                    last_seq,
                }
                .into()),
            };
        }
        let parking = parking::lock_parking(&mut tx, identity).await?;
        if let (Some(parking), Mode::Normal) = (parking, mode) {
            rollback(tx).await;
            return Err(ApplyError::Parked {
                identity: identity.to_owned(),
                seq: event.seq,
                last_seq,
                parking: Box::new(parking),
            }
            .into());
        }
        if event.seq > last_seq + 1 {
            rollback(tx).await;
            return Err(ApplyError::Gap {
                identity: identity.to_owned(),
                expected: last_seq + 1,
                received: event.seq,
            }
            .into());
        }

        if head.is_none() {
            // The first event of the identity. A concurrent first event
            // makes this a duplicate key (or a deadlock): retried, the
            // transaction then finds and locks the other's head.
            obt_runtime::metrics::db_query("INSERT consumer_identity");
            sqlx::query(
                "INSERT INTO consumer_identity \
                 (identity, name, surname, last_seq, total, count, updated_at) \
                 VALUES (?, ?, ?, 0, 0, 0, UTC_TIMESTAMP(3))",
            )
            .bind(identity)
            .bind(event.data.name.as_str())
            .bind(event.data.surname.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|error| {
                if error_number(&error) == Some(code::DUPLICATE_KEY) {
                    Failure::Retry {
                        call: "INSERT consumer_identity",
                        error,
                    }
                } else {
                    failed("INSERT consumer_identity")(error)
                }
            })?;
        }

        // DATETIME(3) keeps milliseconds; MySQL would round the rest and
        // MariaDB truncate it: truncate here, the same on both.
        let sub_millis = i64::from(event.occurred_at.nanosecond() % 1_000_000);
        let occurred_at = event
            .occurred_at
            .checked_sub(time::Duration::nanoseconds(sub_millis))
            .unwrap_or(event.occurred_at);
        obt_runtime::metrics::db_query("INSERT obt_spending");
        let inserted = sqlx::query(
            "INSERT INTO obt_spending \
             (event_id, identity, seq, name, surname, amount, occurred_at, applied_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
        )
        .bind(&event_id)
        .bind(identity)
        .bind(event.seq)
        .bind(event.data.name.as_str())
        .bind(event.data.surname.as_str())
        .bind(event.data.amount.value())
        .bind(occurred_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if error_number(&error) == Some(code::DUPLICATE_KEY) => {
                rollback(tx).await;
                return self.already_recorded(event, error).await;
            }
            Err(error) => return Err(failed("INSERT obt_spending")(error)),
        }

        obt_runtime::metrics::db_query("UPDATE consumer_identity");
        let updated = sqlx::query(
            "UPDATE consumer_identity SET last_seq = ?, name = ?, surname = ?, \
             total = total + ?, count = count + 1, updated_at = UTC_TIMESTAMP(3) \
             WHERE identity = ? AND last_seq = ?",
        )
        .bind(event.seq)
        .bind(event.data.name.as_str())
        .bind(event.data.surname.as_str())
        .bind(event.data.amount.value())
        .bind(identity)
        .bind(last_seq)
        .execute(&mut *tx)
        .await
        .map_err(failed("UPDATE consumer_identity"))?;
        if updated.rows_affected() != 1 {
            // Cannot happen while the row is locked; if it does, write
            // nothing (dropping the transaction rolls it back).
            return Err(ApplyError::Contended {
                identity: identity.to_owned(),
                seq: event.seq,
                last_seq,
                reasons: format!("the head update matched {} rows", updated.rows_affected()),
            }
            .into());
        }
        if mode == Mode::Parked {
            obt_runtime::metrics::db_query("DELETE obt_consumer_held");
            sqlx::query("DELETE FROM obt_consumer_held WHERE identity = ? AND seq = ?")
                .bind(identity)
                .bind(event.seq)
                .execute(&mut *tx)
                .await
                .map_err(failed("DELETE obt_consumer_held"))?;
        }
        obt_runtime::metrics::db_query("COMMIT");
        tx.commit().await.map_err(failed("COMMIT"))?;
        Ok(Applied::New)
    }

    /// The spending's insert hit a unique key although the identity's head
    /// is right behind the event: its event id (or, in a damaged table,
    /// its seq) is taken. The same event at the same place is a duplicate;
    /// anything else is refused.
    async fn already_recorded(
        &self,
        event: &Envelope,
        error: sqlx::Error,
    ) -> Result<Applied, Failure> {
        let identity = event.identity.as_str();
        let event_id = event.event_id.to_string();
        obt_runtime::metrics::db_query("SELECT obt_spending by event_id");
        let by_id = sqlx::query("SELECT identity, seq FROM obt_spending WHERE event_id = ?")
            .bind(&event_id)
            .fetch_optional(&self.pool)
            .await
            .and_then(|row| {
                row.map(|row| Ok((text(&row, "identity")?, row.try_get::<u64, _>("seq")?)))
                    .transpose()
            })
            .map_err(failed("SELECT obt_spending by event_id"))?;
        match by_id {
            Some((stored_identity, stored_seq))
                if stored_identity == identity && stored_seq == event.seq =>
            {
                Ok(Applied::Duplicate)
            }
            Some((stored_identity, stored_seq)) => Err(ApplyError::EventIdReused {
                event_id,
                identity: identity.to_owned(),
                seq: event.seq,
                stored_identity,
                stored_seq,
            }
            .into()),
            None => {
                obt_runtime::metrics::db_query("SELECT obt_spending");
                let by_seq =
                    sqlx::query("SELECT event_id FROM obt_spending WHERE identity = ? AND seq = ?")
                        .bind(identity)
                        .bind(event.seq)
                        .fetch_optional(&self.pool)
                        .await
                        .and_then(|row| row.map(|row| text(&row, "event_id")).transpose())
                        .map_err(failed("SELECT obt_spending"))?;
                match by_seq {
                    Some(stored_event_id) => Err(ApplyError::Conflict {
                        identity: identity.to_owned(),
                        seq: event.seq,
                        stored_event_id,
                        event_id,
                    }
                    .into()),
                    // The row it collided with is gone (its transaction
                    // rolled back): try again.
                    None => Err(Failure::Retry {
                        call: "INSERT obt_spending",
                        error,
                    }),
                }
            }
        }
    }
}

/// A text column. They are all `utf8mb4_bin` (compared bytewise, as
/// DynamoDB compares strings), which the server reports with the binary
/// flag, and sqlx then refuses to decode them as text unless asked
/// explicitly. Decoding still checks that the bytes are UTF-8.
fn text(row: &MySqlRow, column: &str) -> Result<String, sqlx::Error> {
    row.try_get_unchecked(column)
}

impl Ledger for MySqlLedger {
    fn apply<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Applied, ApplyError>> {
        Box::pin(MySqlLedger::apply(self, event))
    }

    fn apply_parked<'a>(
        &'a self,
        event: &'a Envelope,
    ) -> BoxFuture<'a, Result<Applied, ApplyError>> {
        Box::pin(MySqlLedger::apply_parked(self, event))
    }

    fn state<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<IdentityState, LedgerError>> {
        Box::pin(MySqlLedger::state(self, identity))
    }

    fn park<'a>(
        &'a self,
        identity: &'a str,
        request: &'a ParkRequest,
        replace: bool,
    ) -> BoxFuture<'a, Result<Parking, LedgerError>> {
        Box::pin(MySqlLedger::park(self, identity, request, replace))
    }

    fn hold<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, Result<Held, HoldError>> {
        Box::pin(MySqlLedger::hold(self, event))
    }

    fn held<'a>(&'a self, identity: &'a str) -> BoxFuture<'a, Result<Vec<Envelope>, LedgerError>> {
        Box::pin(MySqlLedger::held(self, identity))
    }

    fn unpark<'a>(
        &'a self,
        identity: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<bool, LedgerError>> {
        Box::pin(MySqlLedger::unpark(self, identity, version))
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

impl LedgerReader for MySqlLedger {
    fn load_identity<'a>(
        &'a self,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<Option<AppliedIdentity>, LedgerError>> {
        Box::pin(MySqlLedger::load_identity(self, identity))
    }

    fn list_identities(&self) -> BoxFuture<'_, Result<Vec<IdentityHead>, LedgerError>> {
        Box::pin(MySqlLedger::list_identities(self))
    }

    fn list_parked(&self) -> BoxFuture<'_, Result<Vec<ParkedIdentity>, LedgerError>> {
        Box::pin(MySqlLedger::list_parked(self))
    }

    fn last_applied(&self) -> BoxFuture<'_, Result<Option<time::OffsetDateTime>, LedgerError>> {
        Box::pin(MySqlLedger::last_applied(self))
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_is_transient_and_a_bad_query_is_not() {
        let lost = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_transient(&sqlx::Error::Io(lost)));
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("x".to_owned())));
    }
}
