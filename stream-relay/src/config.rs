//! The relay's settings, from flags or the environment.
//!
//! [`RelayArgs`] is what every driver needs (the api's table and the
//! queue); the daemon's [`Settings`] add the stream, the leases and the
//! sweeper. The Lambda drivers read [`RelayArgs`] alone, from the
//! function's environment.

use std::time::Duration;

use clap::{Args, Parser};
use obt_runtime::args::{LogArgs, QueueArgs, StorageArgs, TableArgs};

/// Where the relay reads outbox events from and publishes them to, and
/// how it logs: what every driver needs.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub table: TableArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// SendMessageBatch calls in flight at once. Each identity's events
    /// still go one at a time (event n once n-1 was accepted); more calls
    /// at once let a backlog of many identities drain faster.
    #[arg(
        long,
        env = "OBT_PUBLISH_CONCURRENCY",
        default_value_t = RelayArgs::DEFAULT_PUBLISH_CONCURRENCY,
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    pub publish_concurrency: u16,
}

impl RelayArgs {
    pub const DEFAULT_PUBLISH_CONCURRENCY: u16 = 8;

    /// The settings of a relay of `table` publishing to the queue
    /// `queue_url`, with every other setting at its default (plain-text
    /// logs): what a program that embeds the relay, or a test, starts from.
    pub fn new(table: &str, queue_url: &str, queue_name: &str) -> Self {
        Self {
            table: TableArgs {
                table: table.to_owned(),
            },
            queue: QueueArgs {
                queue_url: Some(queue_url.to_owned()),
                queue_name: queue_name.to_owned(),
            },
            log: LogArgs {
                log_format: obt_runtime::LogFormat::Text,
            },
            publish_concurrency: Self::DEFAULT_PUBLISH_CONCURRENCY,
        }
    }
}

/// Publish the outbox events to the SQS FIFO queue, in order per identity:
/// by reading the api table's DynamoDB stream (several instances share its
/// shards through leases), or, with OBT_STORAGE=mysql, by polling the MySQL
/// outbox table (one instance leads, the others stand by). Stops cleanly on
/// SIGTERM: the batch in hand is published and checkpointed first.
#[derive(Debug, Clone, Parser)]
#[command(name = "stream-relay", version)]
pub struct Settings {
    #[command(flatten)]
    pub relay: RelayArgs,
    /// The stream to read [default: the table's latest stream].
    #[arg(long, env = "OBT_STREAM_ARN")]
    pub stream_arn: Option<String>,
    /// The table of the shards' leases and checkpoints, shared by every
    /// instance reading this stream.
    #[arg(long, env = "OBT_LEASE_TABLE", default_value = "obt-relay-leases")]
    pub lease_table: String,
    /// How long an instance keeps a lease without a heartbeat, in seconds:
    /// after it dies, another instance takes its shards within about this
    /// time. It heartbeats every third of it.
    #[arg(long, env = "OBT_LEASE_DURATION_SECS", default_value_t = 10)]
    pub lease_duration_secs: u64,
    /// This instance's name in the lease table [default: host name, process
    /// id and a random suffix]. Must differ between instances.
    #[arg(long, env = "OBT_WORKER_ID")]
    pub worker_id: Option<String>,
    /// How long a shard reader waits after an empty GetRecords, in
    /// milliseconds. DynamoDB Streams allows about 4 GetRecords a second
    /// per shard; a busy shard is read again at once.
    #[arg(long, env = "OBT_IDLE_POLL_MS", default_value_t = 250)]
    pub idle_poll_ms: u64,
    /// How often the shard list is read again to find new shards, in seconds.
    #[arg(long, env = "OBT_DISCOVER_INTERVAL_SECS", default_value_t = 10)]
    pub discover_interval_secs: u64,
    /// The longest one attempt of an AWS call (DynamoDB, DynamoDB Streams,
    /// SQS) may take, in seconds: an endpoint that accepts connections and
    /// never answers is given up on and the call retried, instead of
    /// holding the relay.
    #[arg(
        long,
        env = "OBT_AWS_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub aws_timeout_secs: u64,
    #[command(flatten)]
    pub sweep: SweepArgs,
    #[command(flatten)]
    pub mysql: MySqlArgs,
    /// OBT_METRICS_LISTEN: Prometheus metrics on a listener of their own.
    #[command(flatten)]
    pub metrics: obt_runtime::metrics::MetricsArgs,
}

/// The MySQL mode (`OBT_STORAGE=mysql`, cargo feature `mysql`): the relay
/// polls the outbox table instead of reading a stream. The stream, lease
/// and sweep settings do not apply then.
#[derive(Debug, Clone, Args)]
pub struct MySqlArgs {
    /// OBT_STORAGE and, in MySQL mode, the api's database as the relay's
    /// user (SELECT and DELETE on `obt`, its own `obt_parked`).
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Outbox rows read per round (at most 1000). A round publishes its
    /// rows with several SendMessageBatch calls at once and deletes them in
    /// one statement, so larger rounds drain a backlog faster.
    #[arg(long, env = "OBT_POLL_BATCH", default_value_t = 1000)]
    pub poll_batch: u32,
    /// The longest wait between two rounds when the outbox is empty, in
    /// milliseconds: the worst added latency of an event after a quiet
    /// spell. A busy outbox is read again at once.
    #[arg(long, env = "OBT_POLL_MAX_IDLE_MS", default_value_t = 500)]
    pub poll_max_idle_ms: u64,
    /// The longest a connection attempt or a statement may take, in
    /// seconds: a database that stops answering is given up on and the
    /// round retried on a new connection, instead of holding the relay.
    #[arg(
        long,
        env = "OBT_DATABASE_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub database_timeout_secs: u64,
}

impl MySqlArgs {
    pub fn database_timeout(&self) -> Duration {
        Duration::from_secs(self.database_timeout_secs)
    }
}
/// The sweeper's settings.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// How often the daemon looks for events the stream did not deliver, in
    /// seconds; 0 turns its sweeper off (when a scheduled Lambda sweeps).
    #[arg(long, env = "OBT_SWEEP_INTERVAL_SECS", default_value_t = 60)]
    pub sweep_interval_secs: u64,
    /// How long an event may wait in an outbox before the sweeper publishes
    /// it, in seconds. Keep it well above the relay's normal delay (a
    /// second or so), or the sweeper does the stream's work twice.
    #[arg(long, env = "OBT_SWEEP_AFTER_SECS", default_value_t = 300)]
    pub sweep_after_secs: u64,
}

impl SweepArgs {
    /// `None` when the daemon's sweeper is off.
    pub fn interval(&self) -> Option<Duration> {
        (self.sweep_interval_secs > 0).then(|| Duration::from_secs(self.sweep_interval_secs))
    }

    pub fn older_than(&self) -> Duration {
        Duration::from_secs(self.sweep_after_secs)
    }
}

impl Settings {
    pub fn idle_poll(&self) -> Duration {
        Duration::from_millis(self.idle_poll_ms)
    }

    pub fn discover_interval(&self) -> Duration {
        Duration::from_secs(self.discover_interval_secs.max(1))
    }

    /// The AWS configuration with every call attempt bounded by
    /// `--aws-timeout-secs`.
    pub fn bounded(&self, config: &aws_config::SdkConfig) -> aws_config::SdkConfig {
        obt_runtime::with_attempt_timeout(config, Duration::from_secs(self.aws_timeout_secs))
    }

    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration_secs.max(1))
    }

    /// The given worker id, or one unique to this process.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "relay".to_owned());
            let suffix: u32 = rand::random();
            format!("{host}-{}-{suffix:08x}", std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_aws_call_attempt_is_bounded_and_the_connect_timeout_kept() {
        let settings = Settings::try_parse_from(["stream-relay", "--aws-timeout-secs", "3"])
            .expect("valid flags");
        let loaded = aws_config::SdkConfig::builder()
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .build(),
            )
            .build();
        let bounded = settings.bounded(&loaded);
        let timeouts = bounded.timeout_config().expect("a timeout configuration");
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(timeouts.connect_timeout(), Some(Duration::from_secs(1)));
        assert!(Settings::try_parse_from(["stream-relay", "--aws-timeout-secs", "0"]).is_err());
        assert!(
            Settings::try_parse_from(["stream-relay", "--database-timeout-secs", "0"]).is_err()
        );
    }
}
