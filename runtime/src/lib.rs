//! Start-up plumbing shared by the outboxtable binaries, so that all of
//! them log, load their AWS configuration and stop the same way, and the
//! few helpers they all need once: the settings they share ([`args`]),
//! the backoff of every retry ([`backoff`]), the one-line rendering of
//! an error and its causes ([`error_chain`]), where the metrics go
//! ([`metrics`]), and the W3C trace context of a unit of work, exported
//! over OTLP when asked ([`trace`]), and with the `mysql` feature the
//! settings every MySQL pool shares ([`mysql`]).

use std::io::IsTerminal;

pub mod args;
pub mod backoff;
mod error;
pub mod metrics;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod trace;

pub use error::error_chain;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Where the services keep their data (`OBT_STORAGE`): the api's aggregate
/// and outbox, the relay's source, the consumer's own records. The MySQL
/// backend is compiled in only with the cargo feature `mysql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Storage {
    /// DynamoDB, the outbox on each item, DynamoDB Streams (the default).
    Dynamodb,
    /// MySQL (or MariaDB): the outbox table in the same transaction.
    Mysql,
}

/// `OBT_STORAGE=mysql` asked of a binary built without the `mysql` feature.
#[derive(Debug, thiserror::Error)]
#[error(
    "OBT_STORAGE=mysql, but this {binary} was built without MySQL support: rebuild it with \
     `cargo build --features mysql`, or set OBT_STORAGE=dynamodb"
)]
pub struct MySqlNotBuilt {
    pub binary: &'static str,
}

/// A database connection URL. It holds a password, so its `Debug` shows
/// nothing of it and there is no `Display`: only [`DatabaseUrl::expose`]
/// hands it out, to the driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL itself, password included: for the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatabaseUrl(<hidden>)")
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line, for production log pipelines.
    Json,
    /// Human-readable lines, for development.
    Text,
}

/// Installs the global subscriber. The level comes from `RUST_LOG`
/// (default `info`). Logs go to stderr; stdout is left to the programs.
///
/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported over
/// OTLP ([`trace::export`]); call [`trace::export::shutdown`] before the
/// process exits so that the last ones are sent. An export that cannot be
/// set up is logged as a warning and the process runs on without it:
/// tracing must not stop the service.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
    });
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
    });
    let (tracer, export_error) = match trace::export::tracer() {
        Ok(tracer) => (tracer, None),
        Err(e) => (None, Some(e)),
    };
    let otel = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel)
        .try_init();
    if installed.is_ok() {
        if let Some(e) = export_error {
            tracing::warn!(error = %error_chain(&e), "spans are not exported");
        }
    }
}

/// The AWS configuration from the standard sources: `AWS_REGION`, the
/// credentials chain and the `AWS_ENDPOINT_URL_*` variables (which point
/// the clients at the emulators in development).
///
/// The SDK's stalled-stream protection is kept for responses (a body that
/// stops arriving fails after its grace period) and turned off for
/// uploads. Its upload check wraps the whole wait for the response and
/// wakes the task every 100 ms to measure a request body that, here, is a
/// few kilobytes sent at once: an idle consumer, its pollers each in a
/// 20-second long poll, woke about 36 times a second and spent 3 ms of CPU
/// a second on nothing (0 without it; docs/PERFORMANCE.md). What it would
/// catch, a server that stops reading the request, the relay's and the
/// consumer's attempt timeouts ([`with_attempt_timeout`]) and the api's
/// request timeout catch too.
pub async fn aws_config() -> aws_config::SdkConfig {
    aws_config::from_env()
        .stalled_stream_protection(stalled_stream_protection())
        .load()
        .await
}

fn stalled_stream_protection()
-> aws_config::stalled_stream_protection::StalledStreamProtectionConfig {
    aws_config::stalled_stream_protection::StalledStreamProtectionConfig::enabled()
        .upload_enabled(false)
        .build()
}

/// `config` with every call attempt bounded by `timeout` (the connect
/// timeout and the rest of its timeout configuration kept): an endpoint
/// that accepts connections and never answers is given up on and the call
/// retried, instead of holding the caller for ever.
pub fn with_attempt_timeout(
    config: &aws_config::SdkConfig,
    timeout: std::time::Duration,
) -> aws_config::SdkConfig {
    use aws_config::timeout::TimeoutConfig;
    config
        .to_builder()
        .timeout_config(
            config
                .timeout_config()
                .map_or_else(TimeoutConfig::builder, TimeoutConfig::to_builder)
                .operation_attempt_timeout(timeout)
                .build(),
        )
        .build()
}

/// An HTTP/1 client for `https://` (rustls on aws-lc-rs, the stack the AWS
/// SDK already compiles, with the system's root certificates;
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured) and plain `http://`. When the
/// system has no root certificates, that is an error only if `https` is
/// to be used: plain http needs none.
pub fn https_client<B>(
    https: bool,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        B,
    >,
    std::io::Error,
>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    use hyper_rustls::HttpsConnectorBuilder;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder =
        match HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
            Ok(builder) => builder,
            Err(e) if https => return Err(e),
            Err(_) => {
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(std::io::Error::other)?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector),
    )
}

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT, shutting down"),
        () = terminate => tracing::info!("received SIGTERM, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_keep_the_stalled_stream_check_and_uploads_do_without() {
        let config = aws_config().await;
        let protection = config
            .stalled_stream_protection()
            .expect("aws_config sets the stalled-stream protection");
        assert!(protection.download_enabled());
        assert!(!protection.upload_enabled());
    }
}
