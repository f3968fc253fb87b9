//! The relay stage's parked identities, in either storage mode, and the
//! retry that lets their events go.
//!
//! DynamoDB: the mark is the `parked` attribute of the identity's item;
//! taking it off makes a stream record that the relay reads as "publish
//! what waits" (the sweeper takes the item too, should that record be
//! lost). MySQL: the mark is the identity's row in `obt_parked`; without
//! it, the poller reads the identity's `obt` rows again, in order.
//!
//! Either way the retry only takes the mark off; the running relay
//! publishes, so that one writer keeps each identity's order. The retry
//! then watches the events that waited: gone from the outbox means
//! published; a new mark means the cause is still there.

use std::fmt;
use std::time::{Duration, Instant};

use obt_stream_relay::image::Image;
use obt_stream_relay::outbox::{OutboxError, OutboxTable};
use serde::Serialize;

use crate::cli::Settings;

/// How often a retry looks at the identity while it waits.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    DynamoDb(#[from] OutboxError),
    #[error(
        "OBT_STORAGE=mysql needs OBT_DATABASE_URL (or --database-url): the api's database as \
         the relay's user, mysql://USER:PASSWORD@HOST:PORT/DATABASE"
    )]
    NoDatabaseUrl,
    #[error(transparent)]
    NotBuilt(#[from] obt_runtime::MySqlNotBuilt),
    #[cfg(feature = "mysql")]
    #[error(
        "MySQL {what} failed: {source}. Check OBT_DATABASE_URL and that the schema is migrated (obt-migrate --storage mysql)"
    )]
    MySql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("identity {0} has no item in the api's table: nothing is parked or pending for it")]
    NoItem(String),
    #[error("cannot open the consumer's records: {0}")]
    ConsumerOpen(#[from] obt_consumer::OpenError),
    #[error(transparent)]
    ConsumerStore(#[from] obt_consumer::LedgerError),
    #[error(transparent)]
    ConsumerRetry(#[from] obt_consumer::parking::RetryError),
    #[error(transparent)]
    Queue(#[from] obt_consumer::QueueError),
    #[error(
        "status with OBT_STORAGE=mysql needs OBT_CONSUMER_DATABASE_URL (or \
         --consumer-database-url): the consumer's database as its user, \
         mysql://USER:PASSWORD@HOST:PORT/DATABASE (OBT_DATABASE_URL is the api's, as the relay's user)"
    )]
    NoConsumerDatabaseUrl,
    #[error(
        "cannot open the consumer's records (status reads them with OBT_CONSUMER_TABLE, or in \
         the MySQL mode OBT_CONSUMER_DATABASE_URL, whatever the message below names): {0}"
    )]
    ConsumerRecords(String),
    #[error(
        "DynamoDB DescribeTable of {table} failed: {message}. Check OBT_TABLE, or give the \
         stream with OBT_STREAM_ARN"
    )]
    Table { table: String, message: String },
    #[error("table {0} has no stream: enable one (obt-migrate does), or give OBT_STREAM_ARN")]
    NoStream(String),
    #[error("{0}. Check OBT_LEASE_TABLE and OBT_STREAM_ARN")]
    Lease(#[from] obt_stream_relay::lease::LeaseError),
    #[error(
        "SQS {call} on queue {queue} failed: {message}. Check OBT_QUEUE_URL or OBT_QUEUE_NAME \
         (OBT_DLQ_URL), the AWS credentials and region"
    )]
    Sqs {
        call: &'static str,
        queue: String,
        message: String,
    },
}

/// One parked identity, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedIdentity {
    pub identity: String,
    /// The stage that parked it.
    pub stage: &'static str,
    /// Relay: `sqs_refused`, `too_large`, `undecodable` or `malformed`.
    /// Consumer: `poison`, `conflict` or `gap`.
    pub cause: String,
    pub reason: String,
    /// The seq of the first event held, when known.
    pub seq: Option<u64>,
    /// When it was parked (RFC 3339), and how long ago in seconds.
    pub parked_at: String,
    pub age_secs: Option<u64>,
    /// Events of the identity waiting (the held one included).
    pub waiting: usize,
    /// Consumer stage: the dead-lettered message that parked it, for
    /// `retry --discard` when it is garbage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// How a retry ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RetryOutcome {
    /// The identity was not parked: nothing to do.
    NotParked { identity: String },
    /// The mark is off and the relay published every event that waited.
    Published { identity: String, events: usize },
    /// The mark is off; the wait was 0, so nothing was watched.
    Unparked { identity: String, events: usize },
    /// The relay parked the identity again: the cause is still there.
    ParkedAgain {
        identity: String,
        cause: String,
        reason: String,
    },
    /// The mark is off but the events are still waiting after the wait:
    /// is a relay running?
    StillWaiting {
        identity: String,
        events: usize,
        waited_secs: u64,
    },
}

impl RetryOutcome {
    /// Whether the identity flows again (or never was parked).
    pub fn succeeded(&self) -> bool {
        matches!(
            self,
            Self::NotParked { .. } | Self::Published { .. } | Self::Unparked { .. }
        )
    }
}

impl fmt::Display for RetryOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotParked { identity } => write!(f, "{identity} is not parked; nothing to do"),
            Self::Published { identity, events } => write!(
                f,
                "{identity} flows again: the relay published the {events} event(s) that waited, in order"
            ),
            Self::Unparked { identity, events } => write!(
                f,
                "{identity} is no longer parked; the relay publishes its {events} waiting event(s)"
            ),
            Self::ParkedAgain {
                identity,
                cause,
                reason,
            } => write!(
                f,
                "{identity} was parked again ({cause}): {reason}. Repair the cause, then retry"
            ),
            Self::StillWaiting {
                identity,
                events,
                waited_secs,
            } => write!(
                f,
                "{identity} is no longer parked, but {events} event(s) still wait after {waited_secs} s: \
                 check that a relay is running (its logs say why it does not publish them)"
            ),
        }
    }
}

/// Where the relay keeps its parkings.
#[derive(Debug)]
pub enum RelayParkings {
    DynamoDb(OutboxTable),
    #[cfg(feature = "mysql")]
    MySql(sqlx::MySqlPool),
}

impl RelayParkings {
    /// The parkings of the storage mode that `settings` choose.
    pub async fn connect(settings: &Settings) -> Result<Self, AdminError> {
        match settings.storage {
            obt_runtime::Storage::Dynamodb => {
                let config = obt_runtime::aws_config().await;
                let client = aws_sdk_dynamodb_client(&config);
                Ok(Self::DynamoDb(OutboxTable::new(
                    client,
                    settings.table.clone(),
                )))
            }
            obt_runtime::Storage::Mysql => Self::connect_mysql(settings),
        }
    }

    #[cfg(feature = "mysql")]
    fn connect_mysql(settings: &Settings) -> Result<Self, AdminError> {
        let url = settings
            .database_url
            .as_ref()
            .ok_or(AdminError::NoDatabaseUrl)?;
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy(url.expose())
            .map_err(|source| AdminError::MySql {
                what: "reading OBT_DATABASE_URL",
                source,
            })?;
        Ok(Self::MySql(pool))
    }

    #[cfg(not(feature = "mysql"))]
    fn connect_mysql(_: &Settings) -> Result<Self, AdminError> {
        Err(obt_runtime::MySqlNotBuilt {
            binary: "obt-admin",
        }
        .into())
    }

    /// Every parked identity, oldest parking first.
    pub async fn list(&self) -> Result<Vec<ParkedIdentity>, AdminError> {
        let mut parked = match self {
            Self::DynamoDb(outbox) => list_dynamodb(outbox).await?,
            #[cfg(feature = "mysql")]
            Self::MySql(pool) => crate::parking::mysql::list(pool).await?,
        };
        parked.sort_by(|a, b| (&a.parked_at, &a.identity).cmp(&(&b.parked_at, &b.identity)));
        Ok(parked)
    }

    /// Takes `identity`'s mark off and waits up to `wait` for the relay to
    /// publish what waited.
    pub async fn retry(&self, identity: &str, wait: Duration) -> Result<RetryOutcome, AdminError> {
        match self {
            Self::DynamoDb(outbox) => retry_dynamodb(outbox, identity, wait).await,
            #[cfg(feature = "mysql")]
            Self::MySql(pool) => mysql::retry(pool, identity, wait).await,
        }
    }
}

fn aws_sdk_dynamodb_client(config: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}

/// Seconds from an RFC 3339 time to now; `None` when it is not one.
pub(crate) fn age_secs(at: &str) -> Option<u64> {
    let at =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from((time::OffsetDateTime::now_utc() - at).whole_seconds()).ok()
}

fn waiting(image: &Image) -> usize {
    image.keys.len()
}

async fn list_dynamodb(outbox: &OutboxTable) -> Result<Vec<ParkedIdentity>, AdminError> {
    let mut parked = Vec::new();
    for identity in outbox.parked_identities().await? {
        // The index is eventually consistent: an identity retried a moment
        // ago may still be listed there, without its mark.
        let Some(image) = outbox.image(&identity).await? else {
            continue;
        };
        let Some(mark) = &image.parked else { continue };
        parked.push(ParkedIdentity {
            identity,
            stage: "relay",
            cause: mark.cause.clone(),
            reason: mark.reason.clone(),
            seq: mark.seq,
            age_secs: age_secs(&mark.at),
            parked_at: mark.at.clone(),
            waiting: waiting(&image),
            message_id: None,
        });
    }
    Ok(parked)
}

async fn retry_dynamodb(
    outbox: &OutboxTable,
    identity: &str,
    wait: Duration,
) -> Result<RetryOutcome, AdminError> {
    let image = outbox
        .image(identity)
        .await?
        .ok_or_else(|| AdminError::NoItem(identity.to_owned()))?;
    let Some(mark) = image.parked.clone() else {
        return Ok(RetryOutcome::NotParked {
            identity: identity.to_owned(),
        });
    };
    let held: Vec<String> = image.keys.iter().cloned().collect();
    if !outbox.unpark(identity, &mark.at).await? {
        // Unparked by someone else meanwhile, or parked anew: say which.
        let now = outbox.image(identity).await?;
        return Ok(match now.and_then(|image| image.parked) {
            Some(mark) => RetryOutcome::ParkedAgain {
                identity: identity.to_owned(),
                cause: mark.cause,
                reason: mark.reason,
            },
            None => RetryOutcome::NotParked {
                identity: identity.to_owned(),
            },
        });
    }
    tracing::info!(
        identity,
        events = held.len(),
        "mark taken off; the relay publishes what waited"
    );
    if wait.is_zero() {
        return Ok(RetryOutcome::Unparked {
            identity: identity.to_owned(),
            events: held.len(),
        });
    }
    let started = Instant::now();
    loop {
        let now = outbox.image(identity).await?;
        let left = now.as_ref().map_or(0, |image| {
            held.iter().filter(|k| image.keys.contains(*k)).count()
        });
        if let Some(mark) = now.as_ref().and_then(|image| image.parked.clone()) {
            return Ok(RetryOutcome::ParkedAgain {
                identity: identity.to_owned(),
                cause: mark.cause,
                reason: mark.reason,
            });
        }
        if left == 0 {
            return Ok(RetryOutcome::Published {
                identity: identity.to_owned(),
                events: held.len(),
            });
        }
        if started.elapsed() >= wait {
            return Ok(RetryOutcome::StillWaiting {
                identity: identity.to_owned(),
                events: left,
                waited_secs: wait.as_secs(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    //! The MySQL mode's parkings: rows of `obt_parked` (see
    //! migrations/mysql/api/0003_parked.sql).

    use std::time::{Duration, Instant};

    use sqlx::{MySqlPool, Row};

    use super::{AdminError, POLL, ParkedIdentity, RetryOutcome};

    fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> AdminError {
        move |source| AdminError::MySql { what, source }
    }

    pub async fn list(pool: &MySqlPool) -> Result<Vec<ParkedIdentity>, AdminError> {
        let rows = sqlx::query(
            // The text columns are utf8mb4_bin, which sqlx reads as
            // VARBINARY: CAST reads them as text.
            "SELECT CAST(p.identity AS CHAR) AS identity, p.seq, CAST(p.cause AS CHAR) AS cause, \
             CAST(p.reason AS CHAR) AS reason, \
             DATE_FORMAT(p.parked_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS parked_at, \
             TIMESTAMPDIFF(SECOND, p.parked_at, UTC_TIMESTAMP(3)) AS age, \
             (SELECT COUNT(*) FROM obt o WHERE o.identity = p.identity) AS waiting \
             FROM obt_parked p ORDER BY p.parked_at, p.identity",
        )
        .fetch_all(pool)
        .await
        .map_err(db("SELECT from obt_parked"))?;
        rows.iter()
            .map(|row| {
                let read = db("reading obt_parked");
                let parked = (|| {
                    Ok::<_, sqlx::Error>(ParkedIdentity {
                        identity: row.try_get("identity")?,
                        stage: "relay",
                        cause: row.try_get("cause")?,
                        reason: row.try_get("reason")?,
                        seq: row.try_get("seq")?,
                        parked_at: row.try_get("parked_at")?,
                        age_secs: row
                            .try_get::<Option<i64>, _>("age")?
                            .and_then(|a| u64::try_from(a).ok()),
                        waiting: usize::try_from(row.try_get::<i64, _>("waiting")?).unwrap_or(0),
                        message_id: None,
                    })
                })();
                parked.map_err(read)
            })
            .collect()
    }

    /// The parking of `identity`: its cause, reason and time (as stored).
    async fn parking(
        pool: &MySqlPool,
        identity: &str,
    ) -> Result<Option<(String, String, String)>, AdminError> {
        let row = sqlx::query(
            "SELECT CAST(cause AS CHAR) AS cause, CAST(reason AS CHAR) AS reason, \
             DATE_FORMAT(parked_at, '%Y-%m-%d %H:%i:%s.%f') AS at \
             FROM obt_parked WHERE identity = ?",
        )
        .bind(identity)
        .fetch_optional(pool)
        .await
        .map_err(db("SELECT from obt_parked"))?;
        row.map(|row| {
            Ok::<_, sqlx::Error>((
                row.try_get("cause")?,
                row.try_get("reason")?,
                row.try_get("at")?,
            ))
        })
        .transpose()
        .map_err(db("reading obt_parked"))
    }

    async fn held_ids(pool: &MySqlPool, identity: &str) -> Result<Vec<u64>, AdminError> {
        sqlx::query_scalar("SELECT id FROM obt WHERE identity = ? ORDER BY id")
            .bind(identity)
            .fetch_all(pool)
            .await
            .map_err(db("SELECT from obt"))
    }

    pub async fn retry(
        pool: &MySqlPool,
        identity: &str,
        wait: Duration,
    ) -> Result<RetryOutcome, AdminError> {
        let Some((_, _, at)) = parking(pool, identity).await? else {
            return Ok(RetryOutcome::NotParked {
                identity: identity.to_owned(),
            });
        };
        let held = held_ids(pool, identity).await?;
        // Only this parking: one made meanwhile names a new cause.
        sqlx::query("DELETE FROM obt_parked WHERE identity = ? AND parked_at = ?")
            .bind(identity)
            .bind(&at)
            .execute(pool)
            .await
            .map_err(db("DELETE from obt_parked"))?;
        tracing::info!(
            identity,
            events = held.len(),
            "parking removed; the relay publishes what waited"
        );
        if wait.is_zero() {
            return Ok(RetryOutcome::Unparked {
                identity: identity.to_owned(),
                events: held.len(),
            });
        }
        let started = Instant::now();
        loop {
            if let Some((cause, reason, _)) = parking(pool, identity).await? {
                return Ok(RetryOutcome::ParkedAgain {
                    identity: identity.to_owned(),
                    cause,
                    reason,
                });
            }
            let now = held_ids(pool, identity).await?;
            let left = held.iter().filter(|id| now.contains(id)).count();
            if left == 0 {
                return Ok(RetryOutcome::Published {
                    identity: identity.to_owned(),
                    events: held.len(),
                });
            }
            if started.elapsed() >= wait {
                return Ok(RetryOutcome::StillWaiting {
                    identity: identity.to_owned(),
                    events: left,
                    waited_secs: wait.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
