//! The settings every binary shares, as clap argument groups to flatten
//! into each binary's own settings, so that each variable is declared,
//! defaulted and documented once.

use clap::Args;

use crate::{DatabaseUrl, LogFormat, Storage};

/// `OBT_LOG_FORMAT`.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// How log lines are written: `text` for people, `json` (one object a
    /// line) for log pipelines.
    #[arg(long, env = "OBT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `OBT_STORAGE` and `OBT_DATABASE_URL`.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Where the data lives: `dynamodb` (the outbox on each item, read from
    /// the table's stream) or `mysql` (the outbox table in the same
    /// transaction; needs a build with the cargo feature `mysql`).
    #[arg(long, env = "OBT_STORAGE", value_enum, default_value_t = Storage::Dynamodb)]
    pub storage: Storage,
    /// With OBT_STORAGE=mysql, this service's database as its own user:
    /// mysql://USER:PASSWORD@HOST:PORT/DATABASE (TLS options as query
    /// parameters, docs/DEPLOY.md). Never logged.
    #[arg(long, env = "OBT_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
}

/// OBT_STORAGE=mysql without OBT_DATABASE_URL.
#[derive(Debug, thiserror::Error)]
#[error(
    "OBT_STORAGE=mysql needs OBT_DATABASE_URL (mysql://USER:PASSWORD@HOST:PORT/DATABASE, the \
     {binary}'s own user): set it, or set OBT_STORAGE=dynamodb"
)]
pub struct MissingDatabaseUrl {
    pub binary: &'static str,
}

impl StorageArgs {
    /// The database URL of the MySQL mode, or why there is none.
    pub fn mysql_url(&self, binary: &'static str) -> Result<&DatabaseUrl, MissingDatabaseUrl> {
        self.database_url
            .as_ref()
            .ok_or(MissingDatabaseUrl { binary })
    }
}

/// `OBT_QUEUE_URL` and `OBT_QUEUE_NAME`: the events queue.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// The events queue's URL [default: looked up from --queue-name].
    #[arg(long, env = "OBT_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// The events queue (SQS FIFO), when --queue-url is not given.
    #[arg(long, env = "OBT_QUEUE_NAME", default_value = "obt-events.fifo")]
    pub queue_name: String,
}

/// `OBT_TABLE`: the api's DynamoDB table (items with their outbox).
#[derive(Debug, Clone, Args)]
pub struct TableArgs {
    /// The api's table: one item per identity, with its pending events.
    #[arg(long, env = "OBT_TABLE", default_value = "obt-spending")]
    pub table: String,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        storage: StorageArgs,
        #[command(flatten)]
        queue: QueueArgs,
        #[command(flatten)]
        table: TableArgs,
    }

    #[test]
    fn the_defaults_are_the_local_names_and_dynamodb() {
        let cli = Cli::try_parse_from(["x"]).expect("no argument is required");
        assert_eq!(cli.log.log_format, LogFormat::Text);
        assert_eq!(cli.storage.storage, Storage::Dynamodb);
        assert!(cli.storage.database_url.is_none());
        assert_eq!(cli.queue.queue_name, "obt-events.fifo");
        assert_eq!(cli.table.table, "obt-spending");
    }

    #[test]
    fn the_mysql_mode_without_a_url_says_what_to_set() {
        let cli = Cli::try_parse_from(["x", "--storage", "mysql"]).expect("parses");
        let error = cli.storage.mysql_url("relay").expect_err("no URL");
        assert!(error.to_string().contains("OBT_DATABASE_URL"), "{error}");
        let with = Cli::try_parse_from([
            "x",
            "--storage",
            "mysql",
            "--database-url",
            "mysql://u:p@h/d",
        ])
        .expect("parses");
        assert_eq!(
            with.storage
                .mysql_url("relay")
                .map(DatabaseUrl::expose)
                .ok(),
            Some("mysql://u:p@h/d")
        );
    }
}
