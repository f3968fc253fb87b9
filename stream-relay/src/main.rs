//! `stream-relay` as a long-running process: reads the DynamoDB stream
//! (leases, sweeper) or, with OBT_STORAGE=mysql, polls the outbox table.
//! See the library's docs for the design.

use std::sync::Arc;

use clap::Parser;
use obt_runtime::Storage;
use obt_stream_relay::config::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    obt_runtime::init_tracing(settings.relay.log.log_format);
    obt_runtime::metrics::serve_prometheus(&settings.metrics)?;
    let config = settings.bounded(&obt_runtime::aws_config().await);
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            obt_runtime::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let result = match settings.mysql.storage.storage {
        Storage::Dynamodb => match obt_stream_relay::startup::daemon(&config, &settings).await {
            Ok(daemon) => {
                Arc::new(daemon).run(shutdown).await;
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        Storage::Mysql => run_poller(&config, &settings, shutdown).await,
    };
    // The last spans, when they are exported (OTEL_EXPORTER_OTLP_ENDPOINT).
    obt_runtime::trace::export::shutdown().await;
    result
}

#[cfg(feature = "mysql")]
async fn run_poller(
    config: &aws_config::SdkConfig,
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let poller = obt_stream_relay::startup::poller(config, settings).await?;
    poller.run(shutdown).await;
    Ok(())
}

#[cfg(not(feature = "mysql"))]
async fn run_poller(
    _: &aws_config::SdkConfig,
    _: &Settings,
    _: CancellationToken,
) -> anyhow::Result<()> {
    Err(obt_runtime::MySqlNotBuilt {
        binary: "stream-relay",
    }
    .into())
}
