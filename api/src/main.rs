//! The `api` binary: settings, logging, AWS configuration, the store (a
//! MySQL pool is connected now), then the server of [`obt_api`] until
//! SIGTERM or SIGINT.

use anyhow::Context;
use clap::Parser;
use obt_api::{Application, Settings};
use obt_runtime::Storage;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    obt_runtime::init_tracing(settings.log.log_format);
    obt_runtime::metrics::serve_prometheus(&settings.metrics)?;
    let aws = obt_runtime::aws_config().await;
    let app = Application::build(&settings, &aws)
        .await
        .context("starting the api")?;
    match settings.storage.storage {
        Storage::Dynamodb => {
            tracing::info!(address = %app.local_addr(), table = %settings.table.table, "listening");
        }
        Storage::Mysql => {
            tracing::info!(address = %app.local_addr(), storage = "mysql", "listening")
        }
    }
    let served = app
        .run_until(obt_runtime::shutdown_signal())
        .await
        .context("serving the api");
    // The last spans, when they are exported (OTEL_EXPORTER_OTLP_ENDPOINT).
    obt_runtime::trace::export::shutdown().await;
    served?;
    tracing::info!("stopped");
    Ok(())
}
