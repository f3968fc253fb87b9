//! The command line: `obt-admin [SETTINGS] parked list|retry` and
//! `obt-admin [SETTINGS] status`.

use clap::{Args, Parser, Subcommand};
use obt_runtime::{DatabaseUrl, LogFormat, Storage};

/// The operator's command for outboxtable: see and resolve the identities
/// that a stage parked because one of their events can never be published
/// or applied as it is: the relay (SQS refused it, or the relay cannot read
/// it) or the consumer (it cannot read or apply it, or an earlier event is
/// missing). Their events wait, in order; every other identity flows on.
#[derive(Debug, Parser)]
#[command(name = "obt-admin", version)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the parkings are: the api's table or database (the relay stage),
/// the consumer's table or database and its queues (the consumer stage).
/// The same names as the services'.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The stage whose parked identities to see: `relay` (the api's table
    /// or database) or `consumer` (the consumer's own, and its dead-letter
    /// queue).
    #[arg(long, value_enum, default_value = "relay", global = true)]
    pub stage: Stage,
    /// Where the api and its outbox live: `dynamodb` (the mark on each
    /// item) or `mysql` (the table `obt_parked`).
    #[arg(
        long,
        env = "OBT_STORAGE",
        value_enum,
        default_value = "dynamodb",
        global = true
    )]
    pub storage: Storage,
    /// The api's table (DynamoDB mode).
    #[arg(long, env = "OBT_TABLE", default_value = "obt-spending", global = true)]
    pub table: String,
    /// The consumer's table (DynamoDB mode, consumer stage).
    #[arg(
        long,
        env = "OBT_CONSUMER_TABLE",
        default_value = "obt-consumer-spending",
        global = true
    )]
    pub consumer_table: String,
    /// MySQL mode: the api's database as the relay's user (relay stage), or
    /// the consumer's database as its user (consumer stage):
    /// mysql://USER:PASSWORD@HOST:PORT/DATABASE. Never logged.
    #[arg(long, env = "OBT_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<DatabaseUrl>,
    /// The events queue's URL (consumer stage) [default: looked up from
    /// --queue-name]; its redrive policy names the dead-letter queue.
    #[arg(long, env = "OBT_QUEUE_URL", global = true)]
    pub queue_url: Option<String>,
    /// The events queue, when --queue-url is not given.
    #[arg(
        long,
        env = "OBT_QUEUE_NAME",
        default_value = "obt-events.fifo",
        global = true
    )]
    pub queue_name: String,
    /// The dead-letter queue's URL (consumer stage) [default: the target of
    /// the events queue's redrive policy].
    #[arg(long, env = "OBT_DLQ_URL", global = true)]
    pub dlq_url: Option<String>,
    /// The log format (logs go to stderr; results to stdout).
    #[arg(
        long,
        env = "OBT_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// A stage of the pipeline that parks identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Relay,
    Consumer,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::Consumer => "consumer",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Identities a relay parked.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Every stage's backlog and lag on one screen: the outbox, the
    /// relay, the queue and its dead-letter queue, the parked identities,
    /// the consumer. Exits 0 when healthy, 1 when a stage is stuck beyond
    /// a threshold, 3 when a stage could not be read (2: bad settings).
    /// Reads both sides at once: `--stage` does not apply.
    Status(StatusArgs),
}

/// The settings of `status` beyond the shared ones: where the relay's
/// leases and the consumer's database are, and the thresholds.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text (fields: docs/OPERATIONS.md#status).
    #[arg(long)]
    pub json: bool,
    /// Unhealthy when an event of an identity that is not parked has
    /// waited in the outbox longer than this, in seconds.
    #[arg(long, env = "OBT_STATUS_MAX_OUTBOX_AGE_SECS", default_value_t = 60)]
    pub max_outbox_age_secs: u64,
    /// DynamoDB mode: unhealthy when a shard that is not finished has had
    /// its lease not renewed for longer than this, in seconds (no relay
    /// daemon reads it); 0 skips the check (the Lambda relay has no
    /// leases).
    #[arg(long, env = "OBT_STATUS_MAX_LEASE_AGE_SECS", default_value_t = 60)]
    pub max_lease_age_secs: u64,
    /// Unhealthy when messages wait in the queue and the consumer applied
    /// nothing for longer than this, in seconds.
    #[arg(long, env = "OBT_STATUS_MAX_CONSUMER_IDLE_SECS", default_value_t = 300)]
    pub max_consumer_idle_secs: u64,
    /// Unhealthy when the dead-letter queue holds more messages than this.
    #[arg(long, env = "OBT_STATUS_MAX_DLQ_MESSAGES", default_value_t = 0)]
    pub max_dlq_messages: u64,
    /// Unhealthy when more identities than this are parked (relay and
    /// consumer together).
    #[arg(long, env = "OBT_STATUS_MAX_PARKED", default_value_t = 0)]
    pub max_parked: u64,
    /// The longest each stage's reads may take, in seconds; a stage that
    /// does not answer in time is reported as unreadable (exit 3).
    #[arg(long, env = "OBT_STATUS_TIMEOUT_SECS", default_value_t = 10)]
    pub timeout_secs: u64,
    /// DynamoDB mode: the relay daemons' lease table.
    #[arg(long, env = "OBT_LEASE_TABLE", default_value = "obt-relay-leases")]
    pub lease_table: String,
    /// DynamoDB mode: the stream whose leases to show [default: the api
    /// table's latest stream].
    #[arg(long, env = "OBT_STREAM_ARN")]
    pub stream_arn: Option<String>,
    /// MySQL mode: the consumer's database as its user,
    /// mysql://USER:PASSWORD@HOST:PORT/DATABASE (--database-url is the
    /// api's database as the relay's user). Never logged.
    #[arg(long, env = "OBT_CONSUMER_DATABASE_URL", hide_env_values = true)]
    pub consumer_database_url: Option<DatabaseUrl>,
}

#[derive(Debug, Subcommand)]
pub enum ParkedCommand {
    /// List the stage's parked identities: why, since when, and how many
    /// events wait.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// After repairing the cause, let the identity's held events go, in
    /// order. Relay stage: takes the mark off and waits until the running
    /// relay has published what waited (exits 1 if it parks the identity
    /// again or has not published within --wait-secs). Consumer stage:
    /// replays the identity's dead-lettered messages, applies them and the
    /// held events in seq order, and unparks it (exits 1 if it stays
    /// parked: the output says why).
    Retry {
        /// The parked identity.
        identity: String,
        /// Relay stage: how long to wait for the relay, in seconds; 0 takes
        /// the mark off and returns at once.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
        /// Consumer stage: a dead-lettered message of the identity to delete
        /// instead of replaying (garbage that is no event, looked at first):
        /// its message id, as `parked list` shows it. Repeatable.
        #[arg(long = "discard", value_name = "MESSAGE_ID")]
        discard: Vec<String>,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn settings_may_follow_the_subcommand() {
        let cli = Cli::try_parse_from([
            "obt-admin",
            "parked",
            "list",
            "--table",
            "t",
            "--json",
            "--stage",
            "consumer",
        ])
        .expect("parses");
        assert_eq!(cli.settings.table, "t");
        assert_eq!(cli.settings.stage, Stage::Consumer);
        assert!(matches!(
            cli.command,
            Command::Parked(ParkedCommand::List { json: true })
        ));
    }

    #[test]
    fn status_has_sensible_thresholds_by_default() {
        let cli = Cli::try_parse_from(["obt-admin", "status"]).expect("parses");
        let Command::Status(args) = cli.command else {
            panic!("not status: {:?}", cli.command)
        };
        assert_eq!(args.max_outbox_age_secs, 60);
        assert_eq!(args.max_dlq_messages, 0);
        assert_eq!(args.max_parked, 0);
        assert!(!args.json);
    }
}
