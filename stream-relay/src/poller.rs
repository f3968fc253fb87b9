//! MySQL mode: the relay polls the outbox table `obt` (the original
//! project's "job", done right). Reading `obt` in id order is reading each
//! identity's events in seq order, since the api inserts a later seq only
//! after the earlier one committed, under the identity's row lock. The
//! poller publishes the oldest rows with the same [`Publisher`] as the
//! stream relay and deletes a row only after SQS accepted its event. A row
//! that cannot be read, or whose event SQS refuses for good, parks its
//! identity (a row in `obt_parked`), whose rows every window then leaves
//! out. One instance publishes: the holder of the MySQL user lock
//! [`LOCK_PREFIX`] + database, on a connection of its own; the others stand
//! by. Polling backs off to `max_idle` while the outbox is empty. Why each:
//! `docs/ARCHITECTURE.md` ("Relational mode").

use std::time::Duration;

use obt_contract::Envelope;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool};
use sqlx::{ConnectOptions, Connection, Row};
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, wait_or_stop};
use crate::image::Cause;
use crate::publisher::{Publisher, TOO_LONG};

/// The prefix of the user lock only the leading relay holds; the database
/// name completes it, since a lock name is global to the server and several
/// deployments (or tests) may share one.
pub const LOCK_PREFIX: &str = "outboxtable.relay.";

/// How often the leader counts the parked identities
/// (`obt_relay_identities_parked`).
const PARKED_COUNT_INTERVAL: Duration = Duration::from_secs(5);

/// How long a standby waits on the lock per attempt, in seconds.
const LOCK_WAIT_SECS: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PollerError {
    #[error(
        "OBT_DATABASE_URL is not a MySQL URL ({0}); expected mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    Url(#[source] sqlx::Error),
    #[error("MySQL {what} failed: {source}")]
    Database {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The server did not answer in time: it hangs, or the network to it
    /// does. The call is abandoned and retried on a new connection.
    #[error(
        "MySQL {what} did not answer within {secs} s (OBT_DATABASE_TIMEOUT_SECS); the server or \
         the network to it hangs; retrying"
    )]
    TimedOut { what: &'static str, secs: f32 },
}

/// The default of [`OutboxPoller::with_statement_timeout`].
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> PollerError {
    move |source| PollerError::Database { what, source }
}

/// One outbox row, decoded.
#[derive(Debug)]
struct OutboxRow {
    id: u64,
    event: Envelope,
}

/// An identity to park, at one of its rows.
#[derive(Debug)]
struct Parking {
    identity: String,
    obt_id: u64,
    seq: Option<u64>,
    cause: Cause,
    reason: String,
}

/// The relay of the MySQL mode.
#[derive(Debug)]
pub struct OutboxPoller {
    options: MySqlConnectOptions,
    /// [`LOCK_PREFIX`] and the database name.
    lock_name: String,
    pool: MySqlPool,
    publisher: Publisher,
    /// Rows read per round.
    batch: u32,
    /// The longest wait between two rounds when the outbox is empty.
    max_idle: Duration,
    /// The longest a connection attempt or a statement may take.
    statement_timeout: Duration,
}

impl OutboxPoller {
    /// Connects lazily: a database that is down at start-up is waited for,
    /// with errors logged, rather than failing the process.
    pub fn new(
        database_url: &str,
        publisher: Publisher,
        batch: u32,
        max_idle: Duration,
    ) -> Result<Self, PollerError> {
        let options: MySqlConnectOptions = database_url.parse().map_err(PollerError::Url)?;
        // Its statements are single ones, each its own transaction: none
        // holds a lock past its answer. The leader's lock is on a
        // connection of its own (`lead`).
        let pool = obt_runtime::mysql::pool_options(
            2,
            Duration::from_secs(10),
            obt_runtime::mysql::IDLE_SESSION_TIMEOUT,
            &[],
        )
        .connect_lazy_with(options.clone());
        let lock_name = format!(
            "{LOCK_PREFIX}{}",
            options.get_database().unwrap_or_default()
        );
        Ok(Self {
            lock_name,
            options,
            pool,
            publisher,
            batch: batch.clamp(1, 1000),
            max_idle,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        })
    }

    /// Bounds every connection attempt and statement by `timeout` (plus
    /// the lock wait for `GET_LOCK`) instead of the default 10 s: without
    /// a bound, a server that stops answering would hold the relay for
    /// ever.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Runs `call`, or fails with [`PollerError::TimedOut`] after `limit`.
    async fn bounded<T>(
        &self,
        what: &'static str,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, PollerError>>,
    ) -> Result<T, PollerError> {
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(PollerError::TimedOut {
                what,
                secs: limit.as_secs_f32(),
            }))
    }

    /// Runs until `shutdown`: waits to be the leader, then publishes; the
    /// round in hand is finished first.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut backoff =
            Backoff::new(Duration::from_millis(200), Duration::from_secs(10)).attempts();
        while !shutdown.is_cancelled() {
            let mut lock = match self.lead(&shutdown).await {
                Ok(Some(lock)) => lock,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot reach MySQL for the leader lock; retrying");
                    wait_or_stop(&mut backoff, &shutdown).await;
                    continue;
                }
            };
            backoff.reset();
            tracing::info!("leading: this relay publishes the outbox");
            if let Err(e) = self.publish_while_leading(&mut lock, &shutdown).await {
                tracing::error!(error = %e, "stopped leading");
                wait_or_stop(&mut backoff, &shutdown).await;
            }
            // Closing the connection frees the lock for a standby.
            let _ = tokio::time::timeout(self.statement_timeout, lock.close()).await;
        }
        self.pool.close().await;
        tracing::info!("relay stopped");
    }

    /// Waits until this relay holds the lock (`Some` of the connection
    /// holding it), or `None` on shutdown.
    async fn lead(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<MySqlConnection>, PollerError> {
        let mut conn = self
            .bounded("connect", self.statement_timeout, async {
                self.options.connect().await.map_err(db("connect"))
            })
            .await?;
        let mut waiting_logged = false;
        loop {
            if shutdown.is_cancelled() {
                let _ = conn.close().await;
                return Ok(None);
            }
            let lock_wait = Duration::from_secs(LOCK_WAIT_SECS.unsigned_abs().into());
            let got: Option<i64> = self
                .bounded("GET_LOCK", self.statement_timeout + lock_wait, async {
                    obt_runtime::metrics::db_query("GET_LOCK");
                    sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                        .bind(&self.lock_name)
                        .bind(LOCK_WAIT_SECS)
                        .fetch_one(&mut conn)
                        .await
                        .map_err(db("GET_LOCK"))
                })
                .await?;
            if got == Some(1) {
                return Ok(Some(conn));
            }
            if !waiting_logged {
                tracing::info!("standing by: another relay leads");
                waiting_logged = true;
            }
        }
    }

    /// Whether the lock is still this connection's.
    async fn still_leading(&self, lock: &mut MySqlConnection) -> Result<bool, PollerError> {
        let holder: Option<i64> = self
            .bounded("IS_USED_LOCK", self.statement_timeout, async {
                obt_runtime::metrics::db_query("IS_USED_LOCK");
                sqlx::query_scalar("SELECT IS_USED_LOCK(?) = CONNECTION_ID()")
                    .bind(&self.lock_name)
                    .fetch_one(lock)
                    .await
                    .map_err(db("IS_USED_LOCK"))
            })
            .await?;
        Ok(holder == Some(1))
    }

    async fn publish_while_leading(
        &self,
        lock: &mut MySqlConnection,
        shutdown: &CancellationToken,
    ) -> Result<(), PollerError> {
        let mut idle = Backoff::new(Duration::from_millis(25), self.max_idle).attempts();
        let mut parked_counted: Option<std::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if !self.still_leading(lock).await? {
                tracing::warn!("the leader lock was lost");
                return Ok(());
            }
            if parked_counted.is_none_or(|at| at.elapsed() >= PARKED_COUNT_INTERVAL) {
                self.count_parked().await;
                parked_counted = Some(std::time::Instant::now());
            }
            match self.round().await {
                Ok(0) => {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = idle.wait() => {}
                    }
                }
                Ok(_) => idle.reset(),
                Err(e) => {
                    tracing::error!(error = %e, "could not relay the outbox; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = idle.wait() => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads the oldest rows of identities that are not parked, publishes
    /// them, deletes those SQS accepted, and parks the identities of rows
    /// that cannot be read or that SQS refused for good. Returns how many
    /// were published.
    pub async fn round(&self) -> Result<usize, RoundError> {
        let (rows, unreadable) = self.oldest().await?;
        oldest_unpublished(rows.first().map(|row| row.event.occurred_at));
        for parking in &unreadable {
            self.park(parking).await?;
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let events: Vec<Envelope> = rows.iter().map(|r| r.event.clone()).collect();
        let report = self.publisher.publish(&events).await;
        let not_accepted = report.not_accepted();
        let published: Vec<u64> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| not_accepted.binary_search(i).is_err())
            .map(|(_, r)| r.id)
            .collect();
        self.delete(&published).await?;
        for refusal in &report.refused {
            let row = &rows[refusal.index];
            let cause = if refusal.code == TOO_LONG {
                Cause::TooLarge
            } else {
                Cause::Refused
            };
            self.park(&Parking {
                identity: row.event.identity.to_string(),
                obt_id: row.id,
                seq: Some(row.event.seq),
                cause,
                reason: format!(
                    "SQS refused event {} (seq {}): {}: {}",
                    row.event.event_id, row.event.seq, refusal.code, refusal.message
                ),
            })
            .await?;
        }
        match report.failure {
            None => Ok(published.len()),
            Some(failure) => Err(RoundError::Publish(failure.error)),
        }
    }

    /// Sets `obt_relay_identities_parked` from `obt_parked`; left as it was
    /// when the count fails (the rounds report their own errors).
    async fn count_parked(&self) {
        obt_runtime::metrics::db_query("SELECT COUNT(*) obt_parked");
        let count =
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM obt_parked").fetch_one(&self.pool);
        let counted = self
            .bounded(
                "SELECT COUNT(*) obt_parked",
                self.statement_timeout,
                async { count.await.map_err(db("SELECT COUNT(*) obt_parked")) },
            )
            .await;
        match counted {
            #[allow(clippy::cast_precision_loss)] // far below 2^53
            Ok(parked) => metrics::gauge!("obt_relay_identities_parked").set(parked as f64),
            Err(e) => tracing::warn!(error = %e, "cannot count the parked identities"),
        }
    }

    /// The oldest rows of the outbox whose identity is not parked, in id
    /// order (per identity, seq order); and the identities to park because
    /// a row of theirs cannot be read (their later rows are left out too,
    /// since they would be a gap downstream).
    async fn oldest(&self) -> Result<(Vec<OutboxRow>, Vec<Parking>), PollerError> {
        obt_runtime::metrics::db_query("SELECT from obt");
        let select = sqlx::query(
            // The text columns are utf8mb4_bin (identities are case
            // sensitive), which sqlx reports as VARBINARY: CAST reads them
            // as text. A parked identity's rows are not read at all, so
            // that however many of them wait, the window holds the rows of
            // the others.
            "SELECT id, CAST(identity AS CHAR) AS identity, seq, CAST(payload AS CHAR) AS payload \
             FROM obt WHERE NOT EXISTS \
             (SELECT 1 FROM obt_parked p WHERE p.identity = obt.identity) \
             ORDER BY id LIMIT ?",
        )
        .bind(self.batch)
        .fetch_all(&self.pool);
        let rows = self
            .bounded("SELECT from obt", self.statement_timeout, async {
                select.await.map_err(db("SELECT from obt"))
            })
            .await?;
        let mut parked: Vec<Parking> = Vec::new();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: u64 = row.try_get("id").map_err(db("reading obt.id"))?;
            let identity: String = row
                .try_get("identity")
                .map_err(db("reading obt.identity"))?;
            if parked.iter().any(|p| p.identity == identity) {
                continue;
            }
            let seq: u64 = row.try_get("seq").map_err(db("reading obt.seq"))?;
            let payload: String = row.try_get("payload").map_err(db("reading obt.payload"))?;
            match Envelope::decode(&payload) {
                Ok(event) if event.identity.as_str() == identity && event.seq == seq => {
                    out.push(OutboxRow { id, event })
                }
                Ok(event) => parked.push(Parking {
                    identity,
                    obt_id: id,
                    seq: Some(seq),
                    cause: Cause::Undecodable,
                    reason: format!(
                        "outbox row {id} holds event {} of identity {} at seq {}, not its own \
                         identity and seq {seq}",
                        event.event_id, event.identity, event.seq
                    ),
                }),
                Err(e) => parked.push(Parking {
                    identity,
                    obt_id: id,
                    seq: Some(seq),
                    cause: Cause::Undecodable,
                    reason: format!("outbox row {id} cannot be read: {e}"),
                }),
            }
        }
        Ok((out, parked))
    }

    /// Parks an identity: its rows are not read again until an operator
    /// deletes its `obt_parked` row. A parking already there is kept.
    async fn park(&self, parking: &Parking) -> Result<(), PollerError> {
        tracing::error!(
            parked = true,
            identity = %parking.identity,
            obt_id = parking.obt_id,
            seq = ?parking.seq,
            cause = parking.cause.as_str(),
            reason = %parking.reason,
            "identity parked: its events wait, in order, until the row is repaired and \
             `obt-admin parked retry {}` is run; other identities flow on",
            parking.identity
        );
        obt_runtime::metrics::db_query("INSERT into obt_parked");
        let insert = sqlx::query(
            "INSERT IGNORE INTO obt_parked (identity, obt_id, seq, cause, reason, parked_at) \
             VALUES (?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
        )
        .bind(&parking.identity)
        .bind(parking.obt_id)
        .bind(parking.seq)
        .bind(parking.cause.as_str())
        .bind(&parking.reason)
        .execute(&self.pool);
        let inserted = self
            .bounded("INSERT into obt_parked", self.statement_timeout, async {
                insert.await.map_err(db("INSERT into obt_parked"))
            })
            .await?;
        if inserted.rows_affected() > 0 {
            metrics::counter!("obt_relay_parked_total").increment(1);
        }
        Ok(())
    }

    async fn delete(&self, ids: &[u64]) -> Result<(), PollerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let placeholders = vec!["?"; ids.len()].join(", ");
        let sql = format!("DELETE FROM obt WHERE id IN ({placeholders})");
        obt_runtime::metrics::db_query("DELETE from obt");
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        self.bounded("DELETE from obt", self.statement_timeout, async {
            query
                .execute(&self.pool)
                .await
                .map_err(db("DELETE from obt"))
        })
        .await?;
        Ok(())
    }
}

/// Why one round did not publish everything it read.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Database(#[from] PollerError),
    #[error(transparent)]
    Publish(#[from] crate::publisher::PublishError),
}
/// Sets `obt_relay_oldest_unpublished_age_seconds` from a round's oldest
/// row (rows of parked identities aside): 0 when the round found none.
fn oldest_unpublished(occurred_at: Option<time::OffsetDateTime>) {
    let age = occurred_at.map_or(0.0, |at| {
        (time::OffsetDateTime::now_utc() - at)
            .as_seconds_f64()
            .max(0.0)
    });
    metrics::gauge!("obt_relay_oldest_unpublished_age_seconds").set(age);
}
