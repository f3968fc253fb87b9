//! Builds the relay from its settings: SDK clients made once, the queue
//! URL and the stream ARN resolved, with errors that say what to fix.

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::DisplayErrorContext;

use crate::config::{RelayArgs, Settings};
use crate::daemon::Daemon;
use crate::lease::LeaseTable;
use crate::outbox::OutboxTable;
use crate::publisher::Publisher;
use crate::relay::Relay;
use crate::sweeper::Sweeper;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "cannot find the queue {name}: {message}. Create it with obt-migrate, or set OBT_QUEUE_URL"
    )]
    Queue { name: String, message: String },
    #[error(
        "cannot describe table {table}: {message}. Create it with obt-migrate, or set OBT_STREAM_ARN"
    )]
    Table { table: String, message: String },
    #[error(
        "table {table} has no stream. Enable one with view type NEW_AND_OLD_IMAGES (obt-migrate does)"
    )]
    NoStream { table: String },
    #[error(transparent)]
    NoDatabaseUrl(#[from] obt_runtime::args::MissingDatabaseUrl),
    #[error(transparent)]
    MySqlNotBuilt(#[from] obt_runtime::MySqlNotBuilt),
    #[cfg(feature = "mysql")]
    #[error(transparent)]
    Poller(#[from] crate::poller::PollerError),
}

/// The queue URL from the settings, or looked up by name.
pub async fn queue_url(
    sqs: &aws_sdk_sqs::Client,
    settings: &RelayArgs,
) -> Result<String, StartupError> {
    if let Some(url) = &settings.queue.queue_url {
        return Ok(url.clone());
    }
    let error = |message: String| StartupError::Queue {
        name: settings.queue.queue_name.clone(),
        message,
    };
    let out = sqs
        .get_queue_url()
        .queue_name(&settings.queue.queue_name)
        .send()
        .await
        .map_err(|e| error(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
    out.queue_url
        .ok_or_else(|| error("the response has no QueueUrl".to_owned()))
}

/// The stream ARN from the settings, or the table's latest stream.
pub async fn stream_arn(
    dynamodb: &aws_sdk_dynamodb::Client,
    settings: &Settings,
) -> Result<String, StartupError> {
    if let Some(arn) = &settings.stream_arn {
        return Ok(arn.clone());
    }
    let table = &settings.relay.table.table;
    let out = dynamodb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| StartupError::Table {
            table: table.clone(),
            message: DisplayErrorContext(&e).to_string(),
        })?;
    out.table
        .and_then(|t| t.latest_stream_arn)
        .ok_or_else(|| StartupError::NoStream {
            table: table.clone(),
        })
}

/// The transport-independent relay core.
pub async fn relay(config: &SdkConfig, settings: &RelayArgs) -> Result<Relay, StartupError> {
    let sqs = obt_runtime::aws_client!(aws_sdk_sqs, config);
    let queue_url = queue_url(&sqs, settings).await?;
    let outbox = OutboxTable::new(
        obt_runtime::aws_client!(aws_sdk_dynamodb, config),
        settings.table.table.clone(),
    );
    let publisher =
        Publisher::new(sqs, queue_url).with_concurrency(usize::from(settings.publish_concurrency));
    Ok(Relay::new(publisher, outbox))
}

/// The daemon, ready to run.
pub async fn daemon(config: &SdkConfig, settings: &Settings) -> Result<Daemon, StartupError> {
    let dynamodb = obt_runtime::aws_client!(aws_sdk_dynamodb, config);
    let stream_arn = stream_arn(&dynamodb, settings).await?;
    let relay = Arc::new(relay(config, &settings.relay).await?);
    let sweeper = settings.sweep.interval().map(|every| {
        let sweeper = Sweeper::new(
            dynamodb.clone(),
            settings.relay.table.table.clone(),
            Arc::clone(&relay),
            settings.sweep.older_than(),
        );
        (sweeper, every)
    });
    Ok(Daemon {
        streams: obt_runtime::aws_client!(aws_sdk_dynamodbstreams, config),
        relay,
        leases: LeaseTable::new(
            dynamodb,
            settings.lease_table.clone(),
            stream_arn.clone(),
            settings.worker_id(),
        ),
        stream_arn,
        idle_poll: settings.idle_poll(),
        discover_interval: settings.discover_interval(),
        lease_duration: settings.lease_duration(),
        sweeper,
    })
}

/// The sweeper alone (the scheduled Lambda's).
pub async fn sweeper(
    config: &SdkConfig,
    relay_args: &RelayArgs,
    older_than: std::time::Duration,
) -> Result<Sweeper, StartupError> {
    let relay = Arc::new(relay(config, relay_args).await?);
    Ok(Sweeper::new(
        obt_runtime::aws_client!(aws_sdk_dynamodb, config),
        relay_args.table.table.clone(),
        relay,
        older_than,
    ))
}

/// The MySQL mode's relay, ready to run.
#[cfg(feature = "mysql")]
pub async fn poller(
    config: &SdkConfig,
    settings: &Settings,
) -> Result<crate::poller::OutboxPoller, StartupError> {
    let url = settings.mysql.storage.mysql_url("relay")?;
    let sqs = obt_runtime::aws_client!(aws_sdk_sqs, config);
    let queue_url = queue_url(&sqs, &settings.relay).await?;
    Ok(crate::poller::OutboxPoller::new(
        url.expose(),
        Publisher::new(sqs, queue_url)
            .with_concurrency(usize::from(settings.relay.publish_concurrency)),
        settings.mysql.poll_batch,
        std::time::Duration::from_millis(settings.mysql.poll_max_idle_ms.max(1)),
    )?
    .with_statement_timeout(settings.mysql.database_timeout()))
}
