//! The sweeper as a scheduled AWS Lambda function (the `bootstrap` of a
//! `provided.al2023` runtime): each invocation publishes the events that
//! waited in their outboxes longer than `OBT_SWEEP_AFTER_SECS`. See
//! `obt_stream_relay::sweeper` for the design.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (relay, sweep) = obt_stream_relay::lambda::sweeper_settings_from_env()?;
    obt_runtime::init_tracing(relay.log.log_format);
    // Cold start: clients and the queue URL once, for every invocation.
    let metrics = obt_stream_relay::lambda::metrics_settings_from_env()?;
    let metrics = obt_runtime::metrics::Emf::install(&metrics)?;
    let config = obt_runtime::aws_config().await;
    let sweeper = obt_stream_relay::startup::sweeper(&config, &relay, sweep.older_than()).await?;
    obt_stream_relay::lambda::run_sweeper(sweeper, metrics)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
