//! The api's settings, from flags or `OBT_*` environment variables. The doc
//! comments below are the `--help` text.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use obt_runtime::LogFormat;

use crate::store::{RetryPolicy, StoreOptions};

/// outboxtable api: records a spending and its SpendingRecorded event in one
/// atomic DynamoDB write.
#[derive(Debug, Clone, Parser)]
#[command(name = "api", version)]
pub struct Settings {
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, env = "OBT_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// The DynamoDB table holding one aggregate item (and its outbox) per
    /// identity.
    #[arg(long, env = "OBT_TABLE", default_value = "obt-spending")]
    pub table: String,

    /// How many times a write that lost an optimistic-concurrency race is
    /// retried before the request is answered 503.
    #[arg(long, env = "OBT_MAX_CONFLICT_RETRIES", default_value_t = 10)]
    pub max_conflict_retries: u32,

    /// The most events an identity may have waiting for the relay; beyond
    /// it a POST is answered 503 instead of growing the item towards
    /// DynamoDB's 400 KB limit.
    #[arg(long, env = "OBT_MAX_PENDING_EVENTS", default_value_t = StoreOptions::DEFAULT_MAX_PENDING_EVENTS)]
    pub max_pending_events: u32,

    /// Seconds that in-flight requests get to finish after SIGTERM or
    /// SIGINT before the process exits anyway.
    #[arg(long, env = "OBT_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Seconds a request may take before it is answered 504.
    #[arg(long, env = "OBT_REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,

    /// The log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "OBT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Settings {
    /// The defaults, as if no flag and no variable were given; tests
    /// change what they need.
    pub fn defaults() -> Self {
        // Every argument has a default, so an empty command line parses.
        Self::try_parse_from(["api"]).unwrap_or_else(|e| unreachable!("defaults parse: {e}"))
    }

    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            retry: RetryPolicy {
                max_retries: self.max_conflict_retries,
                ..RetryPolicy::default()
            },
            max_pending_events: self.max_pending_events,
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_have_the_documented_defaults() {
        // Read from the definition, so that OBT_* variables in the test's
        // environment cannot change the outcome.
        let command = <Settings as clap::CommandFactory>::command();
        let default_of = |id: &str| {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .expect("an argument");
            let values: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            (
                values.join(","),
                arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            )
        };
        let expected = [
            ("listen", "127.0.0.1:8081", "OBT_LISTEN"),
            ("table", "obt-spending", "OBT_TABLE"),
            ("max_conflict_retries", "10", "OBT_MAX_CONFLICT_RETRIES"),
            ("max_pending_events", "200", "OBT_MAX_PENDING_EVENTS"),
            ("shutdown_timeout_secs", "10", "OBT_SHUTDOWN_TIMEOUT_SECS"),
            ("request_timeout_secs", "10", "OBT_REQUEST_TIMEOUT_SECS"),
            ("log_format", "text", "OBT_LOG_FORMAT"),
        ];
        for (id, default, env) in expected {
            assert_eq!(
                default_of(id),
                (default.to_owned(), Some(env.to_owned())),
                "{id}"
            );
        }
    }

    #[test]
    fn flags_override_the_defaults() {
        let settings = Settings::try_parse_from([
            "api",
            "--listen",
            "0.0.0.0:9000",
            "--table",
            "other",
            "--max-conflict-retries",
            "3",
            "--log-format",
            "json",
        ])
        .expect("parses");
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.table, "other");
        assert_eq!(settings.store_options().retry.max_retries, 3);
        assert_eq!(settings.log_format, LogFormat::Json);
    }
}
