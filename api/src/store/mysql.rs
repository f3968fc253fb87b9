//! The MySQL backend (cargo feature `mysql`): one transaction upserts and
//! locks the identity's `obt_identity` row, inserts the spending and its
//! outbox row `obt` (the envelope as the relay will send it), updates the
//! totals and, with a key, inserts the key's record last; a deadlock or
//! lock wait timeout is retried after a jittered backoff. The schema is
//! `migrations/mysql/api`; why the upsert comes first, why there is no
//! outbox bound here and when a failure is a 503 or a 500:
//! docs/ARCHITECTURE.md, "Relational mode".

use std::str::FromStr;
use std::time::Duration;

use obt_contract::{Envelope, EventType, Identity, SpendingRecorded, TraceContext};
use rust_decimal::Decimal;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{MySqlPool, Row};
use time::OffsetDateTime;
use tracing::instrument;

use super::locks::StripedLocks;
use super::outcome::{Outcome, StoredOutcome};
use super::{RetryPolicy, StoreError, StoreOptions, Summary};
use crate::idempotency::{Fingerprint, Idempotency, KeyedRequest};
use crate::input::NewSpending;

/// How long a request waits for a pooled connection (or for a new one to
/// connect) before it is answered 503; below the default request timeout,
/// so that an unreachable database is a 503 and not a 504. At start-up,
/// how long the first connection may take.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server error numbers this module tells apart.
mod code {
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    pub const DEADLOCK: u16 = 1213;
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    pub const SERVER_SHUTDOWN: u16 = 1053;
    /// MariaDB: the connection was killed.
    pub const CONNECTION_KILLED: u16 = 1927;
    pub const DUPLICATE_ENTRY: u16 = 1062;
}

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "OBT_DATABASE_URL is not a valid MySQL URL: expected \
         mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    Url(#[source] Option<sqlx::Error>),
    #[error(
        "OBT_DATABASE_URL names no database: expected mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    NoDatabase,
    #[error(
        "cannot connect to MySQL at {host}:{port} (database {database}, user {user}) within \
         {timeout:?}: check that the server runs and can be reached from here, and the user, \
         password and database in OBT_DATABASE_URL"
    )]
    Connect {
        host: String,
        port: u16,
        database: String,
        user: String,
        timeout: Duration,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "connected to MySQL, but user {user} cannot read table obt_identity of database \
         {database}: run `obt-migrate --storage mysql`, which creates the schema and the api's \
         user with its grants"
    )]
    Schema {
        database: String,
        user: String,
        #[source]
        source: StoreError,
    },
}

/// The pool settings of the store: at most `max_connections`,
/// [`ACQUIRE_TIMEOUT`], and sessions that the server ends after
/// `idle_session` of silence (in production
/// [`obt_runtime::mysql::IDLE_SESSION_TIMEOUT`]): so ends the transaction
/// of a request cut off from the server, whose lock on the identity's row
/// would otherwise hold every later write of that identity.
pub fn pool_options(max_connections: u32, idle_session: Duration) -> MySqlPoolOptions {
    obt_runtime::mysql::pool_options(max_connections, ACQUIRE_TIMEOUT, idle_session, &[])
}

/// The api's MySQL database, through a pool of connections as the api's
/// least-privilege user.
#[derive(Debug)]
pub struct MySqlStore {
    pool: MySqlPool,
    retry: RetryPolicy,
    idempotency_ttl: Duration,
    locks: StripedLocks,
}

/// How an attempt at the transaction failed.
enum Failure {
    /// A lock conflict rolled it back; trying again may succeed.
    Retry(sqlx::Error),
    Fail(StoreError),
}

impl MySqlStore {
    /// A store over `pool`; of `options`, the retry policy and the
    /// Idempotency-Key TTL apply.
    pub fn new(pool: MySqlPool, options: StoreOptions) -> Self {
        Self {
            pool,
            retry: options.retry,
            idempotency_ttl: options.idempotency_ttl,
            locks: StripedLocks::new(),
        }
    }

    /// Connects to `url` (`mysql://USER:PASSWORD@HOST:PORT/DATABASE`) and
    /// checks that the api's tables answer, so that a wrong URL, an
    /// unreachable server or a database without the schema stops the api
    /// at start-up with what to fix. The URL's password never appears in
    /// an error.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        options: StoreOptions,
    ) -> Result<Self, ConnectError> {
        // sqlx reads any scheme as MySQL's.
        if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
            return Err(ConnectError::Url(None));
        }
        let connect = MySqlConnectOptions::from_str(url).map_err(|e| ConnectError::Url(Some(e)))?;
        let database = connect
            .get_database()
            .ok_or(ConnectError::NoDatabase)?
            .to_owned();
        let user = connect.get_username().to_owned();
        let pool = pool_options(max_connections, obt_runtime::mysql::IDLE_SESSION_TIMEOUT)
            .connect_with(connect.clone())
            .await
            .map_err(|source| ConnectError::Connect {
                host: connect.get_host().to_owned(),
                port: connect.get_port(),
                database: database.clone(),
                user: user.clone(),
                timeout: ACQUIRE_TIMEOUT,
                source,
            })?;
        let store = Self::new(pool, options);
        store.ready().await.map_err(|source| ConnectError::Schema {
            database,
            user,
            source,
        })?;
        Ok(store)
    }

    /// Records a spending and its event in one transaction (with a key,
    /// the key's record too, or the key's first outcome is replayed).
    ///
    /// The writes of one identity in this process queue on
    /// [`StripedLocks`] first: a burst for one identity then keeps one
    /// pooled connection waiting for the row lock, not all of them.
    #[instrument(skip_all, fields(identity = %spending.identity))]
    pub async fn record(
        &self,
        spending: &NewSpending,
        idempotency: &Idempotency,
        trace: Option<&TraceContext>,
    ) -> Result<Outcome, StoreError> {
        let _turn = self.locks.lock(spending.identity.as_str()).await;
        let mut failures: u32 = 0;
        loop {
            match self.attempt(spending, idempotency, trace).await {
                Ok(outcome) => {
                    if let Outcome::Recorded(recorded) = &outcome {
                        tracing::debug!(seq = recorded.seq, failures, "recorded");
                    }
                    return Ok(outcome);
                }
                Err(Failure::Fail(e)) => return Err(e),
                Err(Failure::Retry(e)) => {
                    failures += 1;
                    tracing::debug!(error = %e, failures, "rolled back by a lock conflict");
                    metrics::counter!("obt_api_store_conflicts_total").increment(1);
                    if !self.retry.may_retry(failures) {
                        return Err(StoreError::Contention { attempts: failures });
                    }
                    metrics::counter!("obt_api_store_retries_total", "reason" => "conflict")
                        .increment(1);
                    tokio::time::sleep(self.retry.delay(failures)).await;
                }
            }
        }
    }

    /// One try at the transaction, rolled back unless it committed.
    async fn attempt(
        &self,
        spending: &NewSpending,
        idempotency: &Idempotency,
        trace: Option<&TraceContext>,
    ) -> Result<Outcome, Failure> {
        obt_runtime::metrics::db_query("BEGIN");
        let mut tx = self.pool.begin().await.map_err(classify("BEGIN"))?;
        let written = async {
            let recorded = StoredOutcome::from(&write(&mut tx, spending, trace).await?);
            let Idempotency::Keyed(request) = idempotency else {
                return Ok(Outcome::Recorded(recorded));
            };
            match insert_key(&mut tx, request, &recorded, self.idempotency_ttl).await? {
                None => Ok(Outcome::Recorded(recorded)),
                Some((fingerprint, _)) if fingerprint != request.fingerprint => {
                    Err(Failure::Fail(StoreError::KeyReused))
                }
                Some((_, stored)) => {
                    tracing::debug!("replaying the outcome of the key's first request");
                    Ok(Outcome::Replayed(stored))
                }
            }
        }
        .await;
        match written {
            Ok(recorded @ Outcome::Recorded(_)) => {
                obt_runtime::metrics::db_query("COMMIT");
                tx.commit().await.map_err(classify_commit)?;
                Ok(recorded)
            }
            Ok(replayed @ Outcome::Replayed(_)) => {
                // The spending of this attempt must not stay.
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(error = %e, "rollback failed");
                }
                Ok(replayed)
            }
            Err(failure) => {
                // Explicitly: a lock wait timeout rolls back only its
                // statement. Should the rollback fail, the connection is
                // broken, and the server rolls back when it closes.
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(error = %e, "rollback failed");
                }
                Err(failure)
            }
        }
    }

    /// An identity's totals, `None` when nothing was recorded for it.
    ///
    /// `pending_events` counts the identity's rows in `obt`, which the api's
    /// user may read (`SELECT` on `obt`, granted by obt-migrate).
    #[instrument(skip_all, fields(identity = %identity))]
    pub async fn summary(&self, identity: &Identity) -> Result<Option<Summary>, StoreError> {
        obt_runtime::metrics::db_query("SELECT obt_identity");
        let row = sqlx::query(
            "SELECT i.name, i.surname, i.total, i.count, i.last_seq, \
                    (SELECT COUNT(*) FROM obt o WHERE o.identity = i.identity) AS pending \
             FROM obt_identity i WHERE i.identity = ?",
        )
        .bind(identity.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(fail("SELECT obt_identity"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let decode = fail("reading obt_identity");
        let mut total: Decimal = row.try_get("total").map_err(&decode)?;
        total.rescale(2);
        let pending: i64 = row.try_get("pending").map_err(&decode)?;
        // Unchecked: a column with a `_bin` collation comes flagged BINARY,
        // which sqlx 0.8 takes for VARBINARY and refuses to read as a
        // String; the decode still checks that the bytes are UTF-8.
        Ok(Some(Summary {
            identity: identity.clone(),
            name: row.try_get_unchecked("name").map_err(&decode)?,
            surname: row.try_get_unchecked("surname").map_err(&decode)?,
            total,
            count: row.try_get("count").map_err(&decode)?,
            last_seq: row.try_get("last_seq").map_err(&decode)?,
            pending_events: usize::try_from(pending).unwrap_or(usize::MAX),
        }))
    }

    /// Whether the database answers and holds the api's table (the
    /// readiness probe).
    #[instrument(skip_all)]
    pub async fn ready(&self) -> Result<(), StoreError> {
        obt_runtime::metrics::db_query("SELECT obt_identity");
        sqlx::query("SELECT 1 FROM obt_identity LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map(|_| ())
            .map_err(fail("SELECT obt_identity"))
    }
}

/// The statements of one attempt, on the transaction's connection.
async fn write(
    conn: &mut MySqlConnection,
    spending: &NewSpending,
    trace: Option<&TraceContext>,
) -> Result<Envelope, Failure> {
    let identity = spending.identity.as_str();
    obt_runtime::metrics::db_query("INSERT obt_identity");
    sqlx::query(
        "INSERT INTO obt_identity \
             (identity, name, surname, last_seq, total, count, updated_at) \
         VALUES (?, ?, ?, 0, 0, 0, ?) \
         ON DUPLICATE KEY UPDATE last_seq = last_seq",
    )
    .bind(identity)
    .bind(spending.name.as_str())
    .bind(spending.surname.as_str())
    .bind(OffsetDateTime::now_utc())
    .execute(&mut *conn)
    .await
    .map_err(classify("INSERT obt_identity"))?;

    obt_runtime::metrics::db_query("SELECT obt_identity FOR UPDATE");
    let (last_seq, total, count): (u64, Decimal, u64) = sqlx::query_as(
        "SELECT last_seq, total, count FROM obt_identity WHERE identity = ? FOR UPDATE",
    )
    .bind(identity)
    .fetch_one(&mut *conn)
    .await
    .map_err(classify("SELECT obt_identity FOR UPDATE"))?;
    let amount = spending.amount.value();
    let overflow = |what: &str| {
        Failure::Fail(StoreError::Malformed {
            identity: identity.to_owned(),
            reason: format!("{what} cannot grow"),
        })
    };
    let seq = last_seq
        .checked_add(1)
        .ok_or_else(|| overflow("last_seq"))?;
    let count = count.checked_add(1).ok_or_else(|| overflow("count"))?;
    let total = total.checked_add(amount).ok_or_else(|| overflow("total"))?;

    let envelope = Envelope::spending_recorded(
        spending.identity.clone(),
        seq,
        SpendingRecorded {
            name: spending.name.clone(),
            surname: spending.surname.clone(),
            amount: spending.amount,
        },
    )
    .with_trace(trace.cloned());
    let at = envelope.occurred_at;
    obt_runtime::metrics::db_query("INSERT obt_spending");
    sqlx::query(
        "INSERT INTO obt_spending (identity, name, surname, amount, seq, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(identity)
    .bind(spending.name.as_str())
    .bind(spending.surname.as_str())
    .bind(amount)
    .bind(seq)
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(classify("INSERT obt_spending"))?;

    obt_runtime::metrics::db_query("INSERT obt");
    sqlx::query(
        "INSERT INTO obt (event_id, identity, seq, type, payload, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(envelope.event_id.to_string())
    .bind(identity)
    .bind(seq)
    .bind(type_name(envelope.event_type))
    .bind(envelope.encode())
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(classify("INSERT obt"))?;

    obt_runtime::metrics::db_query("UPDATE obt_identity");
    sqlx::query(
        "UPDATE obt_identity \
         SET name = ?, surname = ?, last_seq = ?, total = ?, count = ?, updated_at = ? \
         WHERE identity = ?",
    )
    .bind(spending.name.as_str())
    .bind(spending.surname.as_str())
    .bind(seq)
    .bind(total)
    .bind(count)
    .bind(at)
    .bind(identity)
    .execute(&mut *conn)
    .await
    .map_err(classify("UPDATE obt_identity"))?;
    Ok(envelope)
}

/// Inserts the record of the key, last in the transaction (so that no
/// statement of it waits for a lock while it holds the key's). Returns
/// `None` when the key is now this request's, or the fingerprint and
/// outcome of the unexpired request that holds it.
///
/// When another transaction inserted the key and has not finished, the
/// INSERT waits for it: after its COMMIT, this one finds the key
/// (duplicate entry) and the caller rolls back; after its ROLLBACK, this
/// one gets the key. A duplicate entry leaves a shared lock on the row:
/// it is read under that lock, and an expired record is replaced.
async fn insert_key(
    conn: &mut MySqlConnection,
    request: &KeyedRequest,
    recorded: &StoredOutcome,
    ttl: Duration,
) -> Result<Option<(Fingerprint, StoredOutcome)>, Failure> {
    let now = OffsetDateTime::now_utc();
    let expires_at = now + ttl;
    let key = request.key.as_str();
    let stored = recorded
        .encode()
        .map_err(|e| Failure::Fail(StoreError::Encode(e.to_string())))?;
    obt_runtime::metrics::db_query("INSERT obt_idempotency");
    let inserted = sqlx::query(
        "INSERT INTO obt_idempotency \
             (idempotency_key, fingerprint, response_location, response_body, created_at, \
              expires_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(key)
    .bind(request.fingerprint.as_str())
    .bind(&stored.location)
    .bind(&stored.body)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => return Ok(None),
        Err(e) if number(&e) == Some(code::DUPLICATE_ENTRY) => {}
        Err(e) => return Err(classify("INSERT obt_idempotency")(e)),
    }
    obt_runtime::metrics::db_query("SELECT obt_idempotency");
    let row = sqlx::query(
        "SELECT fingerprint, response_body, expires_at < ? AS expired \
         FROM obt_idempotency WHERE idempotency_key = ? LOCK IN SHARE MODE",
    )
    .bind(now)
    .bind(key)
    .fetch_one(&mut *conn)
    .await
    .map_err(classify("SELECT obt_idempotency"))?;
    let decode = |e| Failure::Fail(fail("reading obt_idempotency")(e));
    let expired: i64 = row.try_get_unchecked("expired").map_err(decode)?;
    if expired == 0 {
        // Unchecked: see `summary`.
        let fingerprint: String = row.try_get_unchecked("fingerprint").map_err(decode)?;
        let body: String = row.try_get_unchecked("response_body").map_err(decode)?;
        let stored = StoredOutcome::decode(&body).map_err(|e| {
            Failure::Fail(StoreError::Malformed {
                identity: format!("(Idempotency-Key record {key})"),
                reason: e.to_string(),
            })
        })?;
        return Ok(Some((Fingerprint::stored(fingerprint), stored)));
    }
    obt_runtime::metrics::db_query("UPDATE obt_idempotency");
    sqlx::query(
        "UPDATE obt_idempotency \
         SET fingerprint = ?, response_location = ?, response_body = ?, created_at = ?, \
             expires_at = ? \
         WHERE idempotency_key = ?",
    )
    .bind(request.fingerprint.as_str())
    .bind(&stored.location)
    .bind(&stored.body)
    .bind(now)
    .bind(expires_at)
    .bind(key)
    .execute(&mut *conn)
    .await
    .map_err(classify("UPDATE obt_idempotency"))?;
    Ok(None)
}

/// The outbox's `type` column: the envelope's `type`.
fn type_name(event_type: EventType) -> &'static str {
    match event_type {
        EventType::SpendingRecorded => "SpendingRecorded",
    }
}

/// Whether the database could not be reached or gave no connection: the
/// same request may succeed later.
fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => matches!(
            number(e),
            Some(code::TOO_MANY_CONNECTIONS | code::SERVER_SHUTDOWN | code::CONNECTION_KILLED)
        ),
        _ => false,
    }
}

/// The server's error number, for an error the server returned.
fn number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// A failed statement of the transaction: retried when a lock conflict
/// rolled it back.
fn classify(what: &'static str) -> impl Fn(sqlx::Error) -> Failure {
    move |e| match number(&e) {
        Some(code::DEADLOCK | code::LOCK_WAIT_TIMEOUT) => Failure::Retry(e),
        _ => Failure::Fail(fail(what)(e)),
    }
}

/// A failed COMMIT. A deadlock (or lock wait timeout) answered to it
/// rolled the transaction back, and it is tried again. Anything else
/// leaves it unknown whether the transaction committed: a connection that
/// failed, and also an answer such as "shutting down" (1053) or
/// "connection killed" (1927), which does not say whether the commit had
/// taken effect. So the error must not say "nothing was written, retry"
/// (a 503): it is a 500 (docs/ARCHITECTURE.md).
fn classify_commit(e: sqlx::Error) -> Failure {
    match number(&e) {
        Some(code::DEADLOCK | code::LOCK_WAIT_TIMEOUT) => Failure::Retry(e),
        _ => {
            tracing::warn!(error = %e, "COMMIT failed: the spending may or may not be stored");
            Failure::Fail(StoreError::MySql {
                what: "COMMIT",
                source: e,
            })
        }
    }
}

/// A failed statement outside the write's transaction, or one that is not
/// retried.
fn fail(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |source| {
        if is_unavailable(&source) {
            StoreError::MySqlUnavailable { what, source }
        } else {
            StoreError::MySql { what, source }
        }
    }
}
