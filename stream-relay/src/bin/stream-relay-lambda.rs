//! `stream-relay` as an AWS Lambda function (the `bootstrap` of a
//! `provided.al2023` runtime), behind an event source mapping on the api
//! table's stream. See `obt_stream_relay::lambda` for the design.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = obt_stream_relay::lambda::settings_from_env()?;
    obt_runtime::init_tracing(settings.log.log_format);
    // Cold start: the clients and the queue URL are made once, here, and
    // serve every invocation of this execution environment.
    let metrics = obt_stream_relay::lambda::metrics_settings_from_env()?;
    let metrics = obt_runtime::metrics::Emf::install(&metrics)?;
    let config = obt_runtime::aws_config().await;
    let relay = obt_stream_relay::startup::relay(&config, &settings).await?;
    obt_stream_relay::lambda::run(relay, metrics)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("the Lambda runtime stopped")
}
