//! Reads every stage's figures, concurrently, each bounded by the
//! timeout: a stage that fails or hangs becomes a [`StageError`] that
//! says what to check, and the others are still reported.

use std::future::Future;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use obt_consumer::{DeadLetterQueue, Queue as ConsumerQueue, Records};
use obt_contract::outbox::PENDING_BUCKETS;
use obt_runtime::Storage;
use obt_stream_relay::lease::LeaseTable;
use obt_stream_relay::outbox::OutboxTable;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Consumer, Lease, Outbox, Parked, Queue, Relay, Report, StageError};
use crate::cli::{Settings, StatusArgs};
use crate::parking::{AdminError, RelayParkings, age_secs};

/// Items read at most to find the oldest pending event (DynamoDB mode):
/// the index's time is a lower bound, so only the oldest entries need a
/// look; parked items in front are passed by.
const MAX_ITEMS_READ: usize = 200;

/// What every stage is read from.
struct Sources {
    relay: RelayParkings,
    dynamodb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
}

/// Reads everything `settings` point at. Only settings that cannot work
/// (a missing database URL, a build without MySQL) are an `Err`; what
/// cannot be reached is in the report's `errors`.
pub async fn report(settings: &Settings, args: &StatusArgs) -> Result<Report, AdminError> {
    if settings.storage == Storage::Mysql && args.consumer_database_url.is_none() {
        return Err(AdminError::NoConsumerDatabaseUrl);
    }
    let config = obt_runtime::aws_config().await;
    let sources = Sources {
        relay: RelayParkings::connect(settings).await?,
        dynamodb: aws_sdk_dynamodb::Client::new(&config),
        sqs: aws_sdk_sqs::Client::new(&config),
    };
    let limit = Duration::from_secs(args.timeout_secs.max(1));
    let consumer_records = bounded(
        limit,
        "consumer's records",
        open_records(&config, settings, args),
    );
    let (outbox, relay, queues, parked_relay, records) = tokio::join!(
        bounded(limit, "outbox", outbox(&sources)),
        bounded(limit, "relay", relay(&sources, settings, args)),
        bounded(limit, "queue", queues(&sources.sqs, settings)),
        bounded(limit, "relay's parkings", sources.relay.list()),
        consumer_records,
    );
    let (parked_consumer, consumer) = match &records {
        Ok(records) => {
            let (parked, last) = tokio::join!(
                bounded(
                    limit,
                    "consumer's parkings",
                    crate::consumer_stage::list(records)
                ),
                bounded(limit, "consumer's records", last_applied(records)),
            );
            (parked, last)
        }
        Err(e) => (Err(e.clone()), Err(e.clone())),
    };
    let mut errors = Vec::new();
    let mut keep = |stage: &'static str, error: String| errors.push(StageError { stage, error });
    let (queue, dead_letter_queue) = match queues {
        Ok((queue, dlq)) => (
            Some(queue),
            dlq.map_err(|e| keep("dead_letter_queue", e)).ok(),
        ),
        Err(e) => {
            keep("queue", e);
            (None, None)
        }
    };
    let mut report = Report {
        healthy: false,
        storage: match settings.storage {
            Storage::Dynamodb => "dynamodb",
            Storage::Mysql => "mysql",
        },
        checked_at: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default(),
        outbox: outbox.map_err(|e| keep("outbox", e)).ok(),
        relay: relay.map_err(|e| keep("relay", e)).ok(),
        queue,
        dead_letter_queue,
        parked: Parked {
            relay: parked_relay.map_err(|e| keep("parked_relay", e)).ok(),
            consumer: parked_consumer.map_err(|e| keep("parked_consumer", e)).ok(),
        },
        consumer: consumer.map_err(|e| keep("consumer", e)).ok(),
        checks: Vec::new(),
        errors: Vec::new(),
    };
    report.errors = errors;
    report.judge(args);
    Ok(report)
}

/// `read`, or its error as text, or a timeout naming `what`.
async fn bounded<T, E: std::error::Error>(
    limit: Duration,
    what: &str,
    read: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(obt_runtime::error_chain(&e)),
        Err(_) => Err(format!(
            "reading the {what} did not finish within {} s (--timeout-secs): the endpoint or \
             the network to it hangs",
            limit.as_secs()
        )),
    }
}

async fn open_records(
    config: &aws_config::SdkConfig,
    settings: &Settings,
    args: &StatusArgs,
) -> Result<Records, AdminError> {
    let storage = obt_consumer::StorageArgs {
        backend: obt_runtime::args::StorageArgs {
            storage: settings.storage,
            database_url: args.consumer_database_url.clone(),
        },
        table: settings.consumer_table.clone(),
    };
    obt_consumer::store::open(config, &storage, 1, "obt-admin")
        .await
        .map_err(|e| AdminError::ConsumerRecords(obt_runtime::error_chain(&e)))
}

async fn last_applied(records: &Records) -> Result<Consumer, AdminError> {
    let at = records.reader().last_applied().await?;
    let at = at.and_then(|at| at.format(&Rfc3339).ok());
    Ok(Consumer {
        last_applied_age_secs: at.as_deref().and_then(age_secs),
        last_applied_at: at,
    })
}

// ---- the outbox ----

async fn outbox(sources: &Sources) -> Result<Outbox, AdminError> {
    match &sources.relay {
        RelayParkings::DynamoDb(table) => outbox_dynamodb(table).await,
        #[cfg(feature = "mysql")]
        RelayParkings::MySql(pool) => mysql::outbox(pool).await,
    }
}

/// Every entry of the sparse pending index: (pending_since, identity),
/// oldest first.
async fn pending_entries(outbox: &OutboxTable) -> Result<Vec<(u64, String)>, AdminError> {
    let mut entries = Vec::new();
    for bucket in 0..PENDING_BUCKETS {
        entries.extend(outbox.pending(bucket, None).await?);
    }
    entries.sort();
    Ok(entries)
}

fn from_epoch_ms(ms: u64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// The pending index counts the identities. Its time is a lower bound of
/// each item's oldest pending event (an acknowledgement that raced a
/// write leaves it older), so the oldest entries are read until the
/// oldest real event of an identity that is not parked is known.
async fn outbox_dynamodb(outbox: &OutboxTable) -> Result<Outbox, AdminError> {
    let entries = pending_entries(outbox).await?;
    let mut oldest: Option<OffsetDateTime> = None;
    for (read, (since, identity)) in entries.iter().enumerate() {
        let since_at = from_epoch_ms(*since);
        if oldest.is_some_and(|o| since_at.is_some_and(|s| o <= s)) {
            break;
        }
        if read == MAX_ITEMS_READ {
            // Too many to look at: the index's time is the bound.
            oldest = match (oldest, since_at) {
                (Some(o), Some(s)) => Some(o.min(s)),
                (o, s) => o.or(s),
            };
            break;
        }
        let Some(image) = outbox.image(identity).await? else {
            continue;
        };
        if image.parked.is_some() || image.keys.is_empty() {
            continue;
        }
        // An unreadable first entry has no time: the index's stands.
        let first = image.pending.first().map(|e| e.occurred_at).or(since_at);
        oldest = match (oldest, first) {
            (Some(o), Some(f)) => Some(o.min(f)),
            (o, f) => o.or(f),
        };
    }
    let at = oldest.and_then(|o| o.format(&Rfc3339).ok());
    Ok(Outbox {
        pending_identities: u64::try_from(entries.len()).unwrap_or(u64::MAX),
        pending_events: None,
        oldest_pending_age_secs: at.as_deref().and_then(age_secs),
        oldest_pending_at: at,
    })
}

// ---- the relay ----

async fn relay(
    sources: &Sources,
    settings: &Settings,
    args: &StatusArgs,
) -> Result<Relay, AdminError> {
    match &sources.relay {
        RelayParkings::DynamoDb(_) => leases(&sources.dynamodb, settings, args).await,
        #[cfg(feature = "mysql")]
        RelayParkings::MySql(pool) => mysql::leader(pool).await,
    }
}

async fn stream_arn(
    client: &aws_sdk_dynamodb::Client,
    settings: &Settings,
    args: &StatusArgs,
) -> Result<String, AdminError> {
    if let Some(arn) = &args.stream_arn {
        return Ok(arn.clone());
    }
    let out = client
        .describe_table()
        .table_name(&settings.table)
        .send()
        .await
        .map_err(|e| AdminError::Table {
            table: settings.table.clone(),
            message: obt_runtime::error_chain(&e),
        })?;
    out.table
        .and_then(|t| t.latest_stream_arn)
        .ok_or_else(|| AdminError::NoStream(settings.table.clone()))
}

async fn leases(
    client: &aws_sdk_dynamodb::Client,
    settings: &Settings,
    args: &StatusArgs,
) -> Result<Relay, AdminError> {
    let stream_arn = stream_arn(client, settings, args).await?;
    let rows = LeaseTable::new(
        client.clone(),
        args.lease_table.clone(),
        stream_arn.clone(),
        "obt-admin-status".to_owned(),
    )
    .list()
    .await?;
    let unfinished = |shard: &str| rows.iter().any(|r| r.shard_id == shard && !r.finished());
    let leases = rows
        .iter()
        .map(|row| Lease {
            shard_id: row.shard_id.clone(),
            owner: row.owner.clone(),
            checkpoint: row.checkpoint.as_ref().map(|c| match c {
                obt_stream_relay::lease::Position::After(seq) => seq.clone(),
                obt_stream_relay::lease::Position::ShardEnd => {
                    obt_stream_relay::lease::SHARD_END.to_owned()
                }
            }),
            finished: row.finished(),
            waiting_for_parent: row.parent_shard_id.as_deref().is_some_and(unfinished),
            renewed_age_secs: row.updated_at.as_deref().and_then(age_secs),
            renewed_at: row.updated_at.clone(),
        })
        .collect();
    Ok(Relay::Leases { stream_arn, leases })
}

// ---- the queues ----

/// The events queue's depth, and its dead-letter queue's (an error of its
/// own: the main queue's figures stand without it).
async fn queues(
    sqs: &aws_sdk_sqs::Client,
    settings: &Settings,
) -> Result<(Queue, Result<Queue, String>), AdminError> {
    let url = match &settings.queue_url {
        Some(url) => url.clone(),
        None => ConsumerQueue::resolve_url(sqs, &settings.queue_name).await?,
    };
    let queue = depth(sqs, &url).await?;
    let dlq = async {
        let dlq_url = match &settings.dlq_url {
            Some(url) => url.clone(),
            None => DeadLetterQueue::of_queue(sqs, &url).await?.url().to_owned(),
        };
        depth(sqs, &dlq_url).await
    }
    .await
    .map_err(|e| obt_runtime::error_chain(&e));
    Ok((queue, dlq))
}

async fn depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<Queue, AdminError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| AdminError::Sqs {
            call: "GetQueueAttributes",
            queue: url.to_owned(),
            message: obt_runtime::error_chain(&e),
        })?;
    let count = |name: QueueAttributeName| -> u64 {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok(Queue {
        url: url.to_owned(),
        visible: count(QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    })
}

#[cfg(feature = "mysql")]
mod mysql {
    //! The MySQL mode's outbox (`obt`) and relay (the leader lock of
    //! `obt_stream_relay::poller`), read as the relay's user.

    use sqlx::{MySqlPool, Row};

    use super::super::{Leader, Outbox, Relay};
    use crate::parking::AdminError;

    fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> AdminError {
        move |source| AdminError::MySql { what, source }
    }

    pub async fn outbox(pool: &MySqlPool) -> Result<Outbox, AdminError> {
        let counts = sqlx::query(
            "SELECT COUNT(*) AS events, COUNT(DISTINCT identity) AS identities FROM obt",
        )
        .fetch_one(pool)
        .await
        .map_err(db("SELECT COUNT(*) FROM obt"))?;
        // The oldest row of an identity that is not parked, by the primary
        // key: no scan. created_at is the event's occurred_at, in UTC.
        let oldest = sqlx::query(
            "SELECT DATE_FORMAT(o.created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS at, \
             TIMESTAMPDIFF(SECOND, o.created_at, UTC_TIMESTAMP(3)) AS age \
             FROM obt o WHERE NOT EXISTS \
             (SELECT 1 FROM obt_parked p WHERE p.identity = o.identity) \
             ORDER BY o.id LIMIT 1",
        )
        .fetch_optional(pool)
        .await
        .map_err(db("SELECT the oldest row of obt"))?;
        let read = db("reading obt");
        let figures = (|| {
            let (at, age) = match &oldest {
                Some(row) => (
                    Some(row.try_get::<String, _>("at")?),
                    row.try_get::<Option<i64>, _>("age")?,
                ),
                None => (None, None),
            };
            Ok::<_, sqlx::Error>(Outbox {
                pending_identities: u64::try_from(counts.try_get::<i64, _>("identities")?)
                    .unwrap_or(0),
                pending_events: Some(
                    u64::try_from(counts.try_get::<i64, _>("events")?).unwrap_or(0),
                ),
                oldest_pending_at: at,
                oldest_pending_age_secs: age.map(|a| u64::try_from(a).unwrap_or(0)),
            })
        })();
        figures.map_err(read)
    }

    /// The connection holding the poller's lock, if any (user locks need
    /// no privilege; the processlist shows the relay user its own
    /// connections).
    pub async fn leader(pool: &MySqlPool) -> Result<Relay, AdminError> {
        let holder: Option<i64> = sqlx::query_scalar("SELECT IS_USED_LOCK(CONCAT(?, DATABASE()))")
            .bind(obt_stream_relay::poller::LOCK_PREFIX)
            .fetch_one(pool)
            .await
            .map_err(db("SELECT IS_USED_LOCK"))?;
        let Some(connection_id) = holder.and_then(|id| u64::try_from(id).ok()) else {
            return Ok(Relay::Poller { leader: None });
        };
        let host: Option<String> = sqlx::query_scalar(
            "SELECT CAST(HOST AS CHAR) FROM information_schema.PROCESSLIST WHERE ID = ?",
        )
        .bind(connection_id)
        .fetch_optional(pool)
        .await
        .map_err(db("SELECT from information_schema.PROCESSLIST"))?;
        Ok(Relay::Poller {
            leader: Some(Leader {
                connection_id,
                host,
            }),
        })
    }
}
