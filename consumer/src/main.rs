//! The consumer binary: settings, logging and AWS configuration, then the
//! library's [`Consumer`] until SIGTERM or SIGINT.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use obt_consumer::{Consumer, Settings};

/// How long the messages in progress may take to finish after SIGTERM:
/// below the 30 s that ECS and Kubernetes wait before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    obt_runtime::init_tracing(settings.log.log_format);
    obt_runtime::metrics::serve_prometheus(&settings.metrics)?;
    let result = run(&settings).await;
    if let Err(e) = &result {
        // Also as a log line, for the log pipeline; the return prints it
        // for a person at a terminal.
        tracing::error!(error = format!("{e:#}"), "the consumer stopped on an error");
    }
    // The last spans, when they are exported (OTEL_EXPORTER_OTLP_ENDPOINT).
    obt_runtime::trace::export::shutdown().await;
    result
}

async fn run(settings: &Settings) -> anyhow::Result<()> {
    let config = obt_runtime::aws_config().await;
    let consumer = Consumer::connect(&config, settings)
        .await
        .context("starting the consumer")?;
    consumer
        .serve(obt_runtime::shutdown_signal(), SHUTDOWN_GRACE)
        .await
        .context("running the consumer")?;
    Ok(())
}
