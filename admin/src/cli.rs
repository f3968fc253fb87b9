//! The command line: `obt-admin [SETTINGS] parked list|retry`.

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
}
