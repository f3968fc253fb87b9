//! `obt-migrate`: creates the DynamoDB tables and SQS queues that
//! outboxtable needs, whatever of them is missing. Safe to run again.

use clap::Parser;

/// Create the tables and queues described in migrations/, whatever of them is
/// missing. Existing resources are left as they are. Runs against real AWS or,
/// with AWS_ENDPOINT_URL_DYNAMODB and AWS_ENDPOINT_URL_SQS, the emulators.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The api's table (with its stream).
    #[command(flatten)]
    table: obt_runtime::args::TableArgs,
    /// The relay's checkpoint table.
    #[arg(long, env = "OBT_LEASE_TABLE", default_value = "obt-relay-leases")]
    lease_table: String,
    /// The consumer's table.
    #[arg(
        long,
        env = "OBT_CONSUMER_TABLE",
        default_value = "obt-consumer-spending"
    )]
    consumer_table: String,
    /// The api's Idempotency-Key records (with Time to Live on expires_at).
    #[arg(long, env = "OBT_IDEMPOTENCY_TABLE", default_value = "obt-idempotency")]
    idempotency_table: String,
    /// The FIFO queue the relay publishes to (must end in .fifo).
    #[arg(long, env = "OBT_QUEUE_NAME", default_value = "obt-events.fifo")]
    queue_name: String,
    /// The FIFO dead-letter queue (must end in .fifo).
    #[arg(long, env = "OBT_DLQ_NAME", default_value = "obt-events-dlq.fifo")]
    dlq_name: String,
    /// Receives before a message moves to the dead-letter queue
    /// [default: max_receive_count in migrations/sqs/events.json].
    #[arg(long, env = "OBT_MAX_RECEIVE_COUNT")]
    max_receive_count: Option<u32>,
    /// The queue's visibility timeout in seconds [default: from migrations/sqs/events.json].
    #[arg(long, env = "OBT_VISIBILITY_TIMEOUT")]
    visibility_timeout: Option<u32>,
    /// The storage mode: `dynamodb` creates the DynamoDB tables, `mysql` the
    /// MySQL databases, schema and users (the queues in both modes).
    #[arg(long, env = "OBT_STORAGE", value_enum, default_value = "dynamodb")]
    storage: obt_runtime::Storage,
    #[command(flatten)]
    mysql: MySqlArgs,
    #[command(flatten)]
    log: obt_runtime::args::LogArgs,
}

/// The MySQL mode's settings. Passwords are read from the environment only.
#[derive(Debug, clap::Args)]
struct MySqlArgs {
    /// An account that may create databases and users and grant privileges:
    /// mysql://USER:PASSWORD@HOST:PORT, with TLS options when the server
    /// needs them (`?ssl-mode=VERIFY_IDENTITY&ssl-ca=PATH`). Used only for
    /// this setup; the services connect as their own users.
    #[arg(long, env = "OBT_MYSQL_ADMIN_URL", hide_env_values = true)]
    mysql_admin_url: Option<String>,
    /// The api's database (with the outbox table `obt`).
    #[arg(long, env = "OBT_MYSQL_DATABASE", default_value = "outboxtable")]
    mysql_database: String,
    /// The consumer's own database.
    #[arg(
        long,
        env = "OBT_MYSQL_CONSUMER_DATABASE",
        default_value = "consumed_outboxtable"
    )]
    mysql_consumer_database: String,
    /// The api's user.
    #[arg(long, env = "OBT_MYSQL_API_USER", default_value = "obt_api")]
    mysql_api_user: String,
    /// The relay's user.
    #[arg(long, env = "OBT_MYSQL_RELAY_USER", default_value = "obt_relay")]
    mysql_relay_user: String,
    /// The consumer's user.
    #[arg(long, env = "OBT_MYSQL_CONSUMER_USER", default_value = "obt_consumer")]
    mysql_consumer_user: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    obt_runtime::init_tracing(args.log.log_format);
    for name in [&args.queue_name, &args.dlq_name] {
        anyhow::ensure!(
            name.ends_with(".fifo"),
            "queue name {name:?} must end in .fifo: outboxtable needs FIFO queues"
        );
    }
    let config = obt_runtime::aws_config().await;
    let names = obt_migrate::Names {
        table: args.table.table,
        lease_table: args.lease_table,
        consumer_table: args.consumer_table,
        idempotency_table: args.idempotency_table,
        queue: args.queue_name,
        dead_letter_queue: args.dlq_name,
    };
    let overrides = obt_migrate::Overrides {
        max_receive_count: args.max_receive_count,
        visibility_timeout_secs: args.visibility_timeout,
        skip_time_to_live: false,
    };
    if args.storage == obt_runtime::Storage::Mysql {
        if !cfg!(feature = "mysql") {
            return Err(mysql_not_built());
        }
        let queues = obt_migrate::apply_queues(&config, &names, &overrides).await?;
        print_steps(&queues.steps);
        setup_mysql(&args.mysql).await?;
        println!("queue          {}", queues.queue_url);
        println!("dead letters   {}", queues.dead_letter_queue_url);
        return Ok(());
    }
    let report = obt_migrate::apply(&config, &names, &overrides).await?;
    print_steps(&report.steps);
    println!("stream         {}", report.stream_arn);
    println!("queue          {}", report.queue_url);
    println!("dead letters   {}", report.dead_letter_queue_url);
    Ok(())
}

fn print_steps(steps: &[obt_migrate::Step]) {
    for step in steps {
        let what = match step.outcome {
            obt_migrate::Outcome::Created => "created",
            obt_migrate::Outcome::Existed => "exists",
            obt_migrate::Outcome::StreamEnabled => "stream enabled",
            obt_migrate::Outcome::IndexCreated => "index created",
            obt_migrate::Outcome::TtlEnabled => "ttl enabled",
        };
        println!("{what:>14}  {}", step.resource);
    }
}

#[cfg(feature = "mysql")]
async fn setup_mysql(args: &MySqlArgs) -> anyhow::Result<()> {
    let admin_url = args.mysql_admin_url.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "the MySQL mode needs OBT_MYSQL_ADMIN_URL (mysql://USER:PASSWORD@HOST:PORT of an \
             account that may create databases and users)"
        )
    })?;
    let password = |var: &str| {
        std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "the MySQL mode needs {var}: the password the setup gives that service's user"
            )
        })
    };
    let passwords = obt_migrate::mysql::Passwords {
        api: password("OBT_MYSQL_API_PASSWORD")?,
        relay: password("OBT_MYSQL_RELAY_PASSWORD")?,
        consumer: password("OBT_MYSQL_CONSUMER_PASSWORD")?,
    };
    let names = obt_migrate::mysql::MySqlNames {
        api_database: args.mysql_database.clone(),
        consumer_database: args.mysql_consumer_database.clone(),
        api_user: args.mysql_api_user.clone(),
        relay_user: args.mysql_relay_user.clone(),
        consumer_user: args.mysql_consumer_user.clone(),
    };
    let report = obt_migrate::mysql::setup(admin_url, &names, &passwords).await?;
    for migration in &report.applied {
        println!("{:>14}  {migration}", "migrated");
    }
    println!(
        "{:>14}  databases {} and {}; users {}, {}, {}",
        "mysql",
        names.api_database,
        names.consumer_database,
        names.api_user,
        names.relay_user,
        names.consumer_user
    );
    Ok(())
}

#[cfg(not(feature = "mysql"))]
async fn setup_mysql(_: &MySqlArgs) -> anyhow::Result<()> {
    Err(mysql_not_built())
}

fn mysql_not_built() -> anyhow::Error {
    obt_runtime::MySqlNotBuilt {
        binary: "obt-migrate",
    }
    .into()
}
