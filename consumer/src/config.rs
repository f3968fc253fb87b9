//! The consumer's settings: flags, each also an environment variable; the
//! doc comments are the `--help` text. The settings every binary shares
//! (queue, storage, log format) are `obt_runtime::args`' groups.

use std::time::Duration;

use clap::{Args, Parser};
use obt_runtime::args::{LogArgs, QueueArgs};
use obt_runtime::metrics::MetricsArgs;
use obt_runtime::{DatabaseUrl, LogFormat, Storage};

/// Applies SpendingRecorded events from the SQS FIFO queue to the
/// consumer's table, idempotently and in seq order per identity.
#[derive(Debug, Clone, Parser)]
#[command(name = "consumer", version)]
pub struct Settings {
    /// The events queue to consume (OBT_QUEUE_URL, or OBT_QUEUE_NAME
    /// resolved with GetQueueUrl at start-up).
    #[command(flatten)]
    pub queue: QueueArgs,

    /// The URL of the dead-letter queue that messages which can never be
    /// applied are sent to. When absent, the target of the queue's redrive
    /// policy (read at start-up).
    #[arg(long, env = "OBT_DLQ_URL")]
    pub dlq_url: Option<String>,

    /// Where the consumer records what it applied.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// How many receive loops run concurrently.
    #[arg(
        long,
        env = "OBT_CONSUMER_POLLERS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub pollers: u16,

    /// How long one ReceiveMessage waits for messages (long polling), in
    /// seconds, 0 to 20.
    #[arg(
        long,
        env = "OBT_WAIT_TIME_SECS",
        default_value_t = 20,
        value_parser = clap::value_parser!(i32).range(0..=20)
    )]
    pub wait_time_secs: i32,

    /// How long a received message stays invisible to other receivers, in
    /// seconds (1 to 43200). When absent, the queue's own setting applies.
    #[arg(
        long,
        env = "OBT_VISIBILITY_TIMEOUT_SECS",
        value_parser = clap::value_parser!(i32).range(1..=43_200)
    )]
    pub visibility_timeout_secs: Option<i32>,

    /// The longest one write of an event to the consumer's records may
    /// take, in seconds; a slower one (a database that hangs) is abandoned
    /// and counts as a transient failure. At most 20, so that a write in
    /// hand ends within the 25 s shutdown grace.
    #[arg(
        long,
        env = "OBT_STORE_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=20)
    )]
    pub store_timeout_secs: u64,

    /// How long a write that fails for a transient reason (the database
    /// unreachable, hanging or throttling) is retried in process, with
    /// jittered backoff, before the message is left to come back after its
    /// visibility timeout, in seconds; 0 retries only by redelivery. The
    /// message's visibility is extended to cover the retries. The budget
    /// covers whole attempts (no attempt starts that could end past it), and
    /// is at most 20, so that the retries end within the 25 s shutdown grace.
    #[arg(
        long,
        env = "OBT_STORE_RETRY_SECS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(0..=20)
    )]
    pub store_retry_secs: u64,

    /// How long a message whose write still failed after the in-process
    /// retries stays invisible after its first receive, in seconds; after
    /// each later receive 4 times longer (at most 12 hours), so that a
    /// store outage climbs receive counts slowly: with maxReceiveCount 5 and
    /// the default, an outage of 85 minutes dead-letters nothing.
    #[arg(
        long,
        env = "OBT_REDELIVERY_BACKOFF_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=43_200)
    )]
    pub redelivery_backoff_secs: u64,

    /// The longest one attempt of an AWS call (SQS, DynamoDB) may take, in
    /// seconds, ReceiveMessage's long poll not counted: an endpoint that
    /// hangs is given up on and the call retried.
    #[arg(
        long,
        env = "OBT_AWS_TIMEOUT_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub aws_timeout_secs: u64,

    #[command(flatten)]
    pub log: LogArgs,

    /// OBT_METRICS_LISTEN: Prometheus metrics on a listener of their own.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

impl Settings {
    /// The defaults, as if started without flags or environment (tests
    /// override fields from here).
    pub fn defaults() -> Self {
        Self {
            queue: QueueArgs {
                queue_url: None,
                queue_name: "obt-events.fifo".to_owned(),
            },
            dlq_url: None,
            storage: StorageArgs::defaults(),
            pollers: 4,
            wait_time_secs: 20,
            visibility_timeout_secs: None,
            store_timeout_secs: 10,
            store_retry_secs: 20,
            redelivery_backoff_secs: 60,
            aws_timeout_secs: 10,
            log: LogArgs {
                log_format: LogFormat::Text,
            },
            metrics: MetricsArgs {
                metrics_listen: None,
            },
        }
    }

    /// How transient failures of the records are retried in process.
    pub fn store_retry(&self) -> crate::consumer::StoreRetry {
        crate::consumer::StoreRetry {
            attempt_timeout: Duration::from_secs(self.store_timeout_secs),
            budget: Duration::from_secs(self.store_retry_secs),
            ..crate::consumer::StoreRetry::default()
        }
    }

    /// How messages whose retries gave up are kept away.
    pub fn redelivery(&self) -> crate::consumer::Redelivery {
        crate::consumer::Redelivery {
            base: Duration::from_secs(self.redelivery_backoff_secs),
        }
    }

    /// The longest one attempt of an AWS call may take (receives add their
    /// long poll).
    pub fn aws_timeout(&self) -> Duration {
        Duration::from_secs(self.aws_timeout_secs)
    }
}

/// Where the consumer records what it applied: shared by the consumer,
/// `consumer-show`, `obt-check` and `obt-admin`, so that all read the same
/// settings. With OBT_STORAGE=mysql, OBT_DATABASE_URL is the consumer's
/// own database, as the consumer's user.
#[derive(Debug, Clone, Args)]
// Its own group id: the default, the type's name, is the shared group's.
#[group(id = "ConsumerStorageArgs")]
pub struct StorageArgs {
    /// OBT_STORAGE and OBT_DATABASE_URL.
    #[command(flatten)]
    pub backend: obt_runtime::args::StorageArgs,

    /// The consumer's DynamoDB table (partition key identity, sort key
    /// seq), in dynamodb mode.
    #[arg(
        long,
        env = "OBT_CONSUMER_TABLE",
        default_value = "obt-consumer-spending"
    )]
    pub table: String,
}

/// The consumer's table when none is named.
const DEFAULT_TABLE: &str = "obt-consumer-spending";

impl StorageArgs {
    /// The defaults, as if started without flags or environment.
    pub fn defaults() -> Self {
        Self::dynamodb(DEFAULT_TABLE)
    }

    /// The DynamoDB mode on `table`.
    pub fn dynamodb(table: impl Into<String>) -> Self {
        Self {
            backend: obt_runtime::args::StorageArgs {
                storage: Storage::Dynamodb,
                database_url: None,
            },
            table: table.into(),
        }
    }

    /// The MySQL mode on the consumer's database at `url`.
    pub fn mysql(url: DatabaseUrl) -> Self {
        Self {
            backend: obt_runtime::args::StorageArgs {
                storage: Storage::Mysql,
                database_url: Some(url),
            },
            table: DEFAULT_TABLE.to_owned(),
        }
    }

    /// The backend chosen (OBT_STORAGE).
    pub fn storage(&self) -> Storage {
        self.backend.storage
    }

    /// OBT_DATABASE_URL, if set.
    pub fn database_url(&self) -> Option<&DatabaseUrl> {
        self.backend.database_url.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_consistent() {
        Settings::command().debug_assert();
    }

    #[test]
    fn the_defaults_match_the_documented_ones() {
        if std::env::vars().any(|(k, _)| k.starts_with("OBT_")) {
            // The environment overrides the defaults: nothing to compare.
            return;
        }
        let parsed = Settings::try_parse_from(["consumer"]).expect("no flags are required");
        let defaults = Settings::defaults();
        assert_eq!(parsed.queue.queue_name, defaults.queue.queue_name);
        assert_eq!(parsed.queue.queue_url, defaults.queue.queue_url);
        assert_eq!(parsed.storage.storage(), defaults.storage.storage());
        assert_eq!(parsed.storage.table, defaults.storage.table);
        assert_eq!(
            parsed.storage.database_url(),
            defaults.storage.database_url()
        );
        assert_eq!(parsed.pollers, defaults.pollers);
        assert_eq!(parsed.wait_time_secs, defaults.wait_time_secs);
        assert_eq!(
            parsed.visibility_timeout_secs,
            defaults.visibility_timeout_secs
        );
        assert_eq!(parsed.store_timeout_secs, defaults.store_timeout_secs);
        assert_eq!(parsed.store_retry_secs, defaults.store_retry_secs);
        assert_eq!(parsed.dlq_url, defaults.dlq_url);
        assert_eq!(
            parsed.redelivery_backoff_secs,
            defaults.redelivery_backoff_secs
        );
        assert_eq!(parsed.aws_timeout_secs, defaults.aws_timeout_secs);
        assert_eq!(parsed.log.log_format, defaults.log.log_format);
    }

    #[test]
    fn out_of_range_values_are_refused_at_start_up() {
        for args in [
            &["consumer", "--pollers", "0"][..],
            &["consumer", "--wait-time-secs", "21"],
            &["consumer", "--visibility-timeout-secs", "0"],
            &["consumer", "--store-timeout-secs", "0"],
            &["consumer", "--aws-timeout-secs", "0"],
            &["consumer", "--redelivery-backoff-secs", "0"],
        ] {
            assert!(Settings::try_parse_from(args).is_err(), "accepted {args:?}");
        }
    }

    #[test]
    fn the_database_url_is_read_but_never_shown() {
        let settings = Settings::try_parse_from([
            "consumer",
            "--storage",
            "mysql",
            "--database-url",
            "mysql://obt_consumer:s3cret-pass@db:3306/consumed",
        ])
        .expect("valid flags");
        assert_eq!(settings.storage.storage(), Storage::Mysql);
        let url = settings.storage.database_url().expect("given");
        assert_eq!(
            url.expose(),
            "mysql://obt_consumer:s3cret-pass@db:3306/consumed"
        );
        assert!(!format!("{settings:?}").contains("s3cret"));
        let help = Settings::command().render_long_help().to_string();
        assert!(help.contains("OBT_DATABASE_URL"), "{help}");
    }
}
