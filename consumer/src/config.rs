//! The consumer's settings. Every flag can also come from an environment
//! variable, which is how the deployments and the tests set them; the doc
//! comments are the `--help` text.

use clap::Parser;
use obt_runtime::LogFormat;

/// Applies SpendingRecorded events from the SQS FIFO queue to the
/// consumer's table, idempotently and in seq order per identity.
#[derive(Debug, Clone, Parser)]
#[command(name = "consumer", version)]
pub struct Settings {
    /// The URL of the FIFO queue to consume. When absent, the queue is
    /// found by --queue-name.
    #[arg(long, env = "OBT_QUEUE_URL")]
    pub queue_url: Option<String>,

    /// The name of the FIFO queue, resolved to its URL with GetQueueUrl at
    /// start-up (unused when --queue-url is given).
    #[arg(long, env = "OBT_QUEUE_NAME", default_value = "obt-events.fifo")]
    pub queue_name: String,

    /// The consumer's DynamoDB table (partition key identity, sort key seq).
    #[arg(
        long,
        env = "OBT_CONSUMER_TABLE",
        default_value = "obt-consumer-spending"
    )]
    pub table: String,

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

    /// How log lines are written: json for production, text for people.
    #[arg(long, env = "OBT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Settings {
    /// The defaults, as if started without flags or environment (tests
    /// override fields from here).
    pub fn defaults() -> Self {
        Self {
            queue_url: None,
            queue_name: "obt-events.fifo".to_owned(),
            table: "obt-consumer-spending".to_owned(),
            pollers: 4,
            wait_time_secs: 20,
            visibility_timeout_secs: None,
            log_format: LogFormat::Text,
        }
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
        assert_eq!(parsed.queue_name, defaults.queue_name);
        assert_eq!(parsed.table, defaults.table);
        assert_eq!(parsed.pollers, defaults.pollers);
        assert_eq!(parsed.wait_time_secs, defaults.wait_time_secs);
        assert_eq!(
            parsed.visibility_timeout_secs,
            defaults.visibility_timeout_secs
        );
        assert_eq!(parsed.log_format, defaults.log_format);
    }

    #[test]
    fn out_of_range_values_are_refused_at_start_up() {
        for args in [
            &["consumer", "--pollers", "0"][..],
            &["consumer", "--wait-time-secs", "21"],
            &["consumer", "--visibility-timeout-secs", "0"],
        ] {
            assert!(Settings::try_parse_from(args).is_err(), "accepted {args:?}");
        }
    }
}
