//! Span export over OTLP (HTTP/protobuf) when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set; without it no exporter is built and nothing leaves the process.
//! The requests go through [`crate::https_client`] (rustls on aws-lc-rs, the
//! AWS SDK's stack), on the Tokio runtime that was current at start-up: the
//! SDK's batch processor exports from a thread of its own.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The variables that turn export on.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// How long one export request may take (the OTLP default).
const TIMEOUT: Duration = Duration::from_secs(10);

/// The largest collector answer read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The provider built at start-up, for [`flush`] and [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why spans cannot be exported (the process runs on without export).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("span export needs a Tokio runtime: call init_tracing inside one (#[tokio::main])")]
    NoRuntime,
    #[error("cannot build the HTTP client of the span export: {0}")]
    Client(#[source] std::io::Error),
    #[error(
        "cannot build the OTLP span exporter (check OTEL_EXPORTER_OTLP_ENDPOINT: a URL such as \
         http://127.0.0.1:4318): {0}"
    )]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Whether the environment asks for export: an endpoint variable set and
/// not empty, and `OTEL_SDK_DISABLED` not `true`.
pub fn requested() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && ENDPOINT_VARS.into_iter().any(set)
}

/// The tracer of the OpenTelemetry layer; `Ok(None)` when export was not
/// asked for.
pub(crate) fn tracer() -> Result<Option<SdkTracer>, ExportError> {
    if !requested() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let https = ENDPOINT_VARS
        .into_iter()
        .any(|name| std::env::var(name).is_ok_and(|url| url.trim().starts_with("https:")));
    let client = crate::https_client(https).map_err(ExportError::Client)?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(TIMEOUT)
        .with_http_client(OtlpClient { client, runtime })
        .build()
        .map_err(ExportError::Exporter)?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        if let Some(name) = binary_name() {
            resource = resource.with_service_name(name);
        }
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("outboxtable");
    // A second init_tracing fails to install its subscriber anyway.
    let _ = PROVIDER.set(provider);
    Ok(Some(tracer))
}

/// The executable's file name: the service name unless `OTEL_SERVICE_NAME`
/// says otherwise.
fn binary_name() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.file_name()?.to_string_lossy().into_owned())
}

/// Sends the spans finished so far, waiting at most the export timeout: a
/// Lambda calls it at the end of each invocation, before it is frozen.
/// Does nothing without export.
pub async fn flush() {
    on_provider(|provider| provider.force_flush()).await;
}

/// Sends the spans finished so far and stops the export: the last thing a
/// binary does before it exits. Does nothing without export.
pub async fn shutdown() {
    on_provider(|provider| provider.shutdown()).await;
}

/// Runs a blocking call of the provider off the runtime's threads: the
/// export it waits for runs on the runtime.
async fn on_provider(
    call: impl FnOnce(&SdkTracerProvider) -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) {
    let Some(provider) = PROVIDER.get() else {
        return;
    };
    match tokio::task::spawn_blocking(move || call(provider)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not export the last spans"),
        Err(e) => tracing::warn!(error = %e, "could not export the last spans"),
    }
}

/// [`HttpClient`] over [`crate::https_client`]. Each request runs as a task
/// of `runtime`, so that it can be awaited from the batch processor's own
/// thread.
#[derive(Debug)]
struct OtlpClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(TIMEOUT, exchange).await });
        match task.await? {
            Ok(result) => result,
            Err(_) => {
                Err(format!("no answer from the collector in {} s", TIMEOUT.as_secs()).into())
            }
        }
    }
}
