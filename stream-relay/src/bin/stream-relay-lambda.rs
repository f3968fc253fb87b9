//! `stream-relay` as an AWS Lambda function (the `bootstrap` of a
//! `provided.al2023` runtime), behind an event source mapping on the api
//! table's stream. See `obt_stream_relay::lambda` for the design.

use std::time::Instant;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(started))
}

async fn run(started: Instant) -> anyhow::Result<()> {
    let settings = obt_stream_relay::lambda::settings_from_env()?;
    obt_runtime::init_tracing(settings.log.log_format);
    // Cold start: the clients and the queue URL are made once, here, and
    // serve every invocation of this execution environment.
    let metrics = obt_stream_relay::lambda::metrics_settings_from_env()?;
    let metrics = obt_runtime::metrics::Emf::install(&metrics)?;
    let config = obt_runtime::aws_config().await;
    let relay = obt_stream_relay::startup::relay(&config, &settings).await?;
    // The init's own length, from main (so without the exec and the
    // dynamic loader's few milliseconds), to weigh against AWS's "Init
    // Duration" (obt-bench reads it: docs/PERFORMANCE.md).
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1e3,
        "initialised; waiting for invocations"
    );
    obt_stream_relay::lambda::run(relay, metrics)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
