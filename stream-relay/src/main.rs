//! `stream-relay` in daemon mode. See the library's docs for the design.

use std::sync::Arc;

use clap::Parser;
use obt_stream_relay::config::Settings;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    obt_runtime::init_tracing(settings.relay.log_format);
    let config = obt_runtime::aws_config().await;
    let daemon = obt_stream_relay::startup::daemon(&config, &settings).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            obt_runtime::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    Arc::new(daemon).run(shutdown).await;
    Ok(())
}
