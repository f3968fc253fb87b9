//! The command line: `obt-admin [SETTINGS] parked list|retry`.

use clap::{Args, Parser, Subcommand};
use obt_runtime::{DatabaseUrl, LogFormat, Storage};

/// The operator's command for outboxtable: see and resolve the identities
/// a relay parked because one of their events can never be published as it
/// is (SQS refused it, or the relay cannot read it). Their events wait, in
/// order; every other identity flows on.
#[derive(Debug, Parser)]
#[command(name = "obt-admin", version)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the relay's parkings are: the api's table (DynamoDB) or database
/// (MySQL). The same names as the services'.
#[derive(Debug, Clone, Args)]
pub struct Settings {
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
    /// The api's database, as the relay's user (MySQL mode):
    /// mysql://USER:PASSWORD@HOST:PORT/DATABASE. Never logged.
    #[arg(long, env = "OBT_DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<DatabaseUrl>,
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Identities a relay parked.
    #[command(subcommand)]
    Parked(ParkedCommand),
}

#[derive(Debug, Subcommand)]
pub enum ParkedCommand {
    /// List the parked identities: why, since when, and how many events
    /// wait.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// After repairing the cause (the outbox entry, the row), take the
    /// identity's mark off and wait until the relay has published what
    /// waited, in order. Exits 1 if the relay parks it again or has not
    /// published it within --wait-secs (a running relay is needed).
    Retry {
        /// The parked identity.
        identity: String,
        /// How long to wait for the relay, in seconds; 0 takes the mark off
        /// and returns at once.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
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
        let cli = Cli::try_parse_from(["obt-admin", "parked", "list", "--table", "t", "--json"])
            .expect("parses");
        assert_eq!(cli.settings.table, "t");
        assert!(matches!(
            cli.command,
            Command::Parked(ParkedCommand::List { json: true })
        ));
    }
}
