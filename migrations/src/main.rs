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
    #[arg(long, env = "OBT_TABLE", default_value = "obt-spending")]
    table: String,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    for name in [&args.queue_name, &args.dlq_name] {
        anyhow::ensure!(
            name.ends_with(".fifo"),
            "queue name {name:?} must end in .fifo: outboxtable needs FIFO queues"
        );
    }
    let config = aws_config::load_from_env().await;
    let names = obt_migrate::Names {
        table: args.table,
        lease_table: args.lease_table,
        consumer_table: args.consumer_table,
        queue: args.queue_name,
        dead_letter_queue: args.dlq_name,
    };
    let overrides = obt_migrate::Overrides {
        max_receive_count: args.max_receive_count,
        visibility_timeout_secs: args.visibility_timeout,
    };
    let report = obt_migrate::apply(&config, &names, &overrides).await?;
    for step in &report.steps {
        let what = match step.outcome {
            obt_migrate::Outcome::Created => "created",
            obt_migrate::Outcome::Existed => "exists",
            obt_migrate::Outcome::StreamEnabled => "stream enabled",
            obt_migrate::Outcome::IndexCreated => "index created",
        };
        println!("{what:>14}  {}", step.resource);
    }
    println!("stream         {}", report.stream_arn);
    println!("queue          {}", report.queue_url);
    println!("dead letters   {}", report.dead_letter_queue_url);
    Ok(())
}
