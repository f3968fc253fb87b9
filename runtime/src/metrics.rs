//! Metrics: the services record with the [`metrics`] facade; this module
//! installs where the figures go. The long-running services serve them as
//! Prometheus text on a listener of their own ([`MetricsArgs`],
//! [`serve_prometheus`]); the Lambdas print them as CloudWatch Embedded
//! Metric Format lines after each invocation ([`Emf`]). Every AWS SDK
//! client counts its request attempts through [`AwsRequests`]. The names
//! and what they mean: docs/OPERATIONS.md, "Metrics".

use std::io::Write;
use std::net::SocketAddr;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use clap::Args;
use metrics_exporter_prometheus::PrometheusBuilder;

/// AWS requests by service and operation, one per attempt.
pub const AWS_REQUESTS: &str = "obt_aws_requests_total";
/// MySQL statements (MySQL mode) by a short name of the statement.
pub const DB_QUERIES: &str = "obt_db_queries_total";

/// The latencies (`obt_api_post_duration_seconds`,
/// `obt_consumer_apply_duration_seconds`, `obt_consumer_end_to_end_seconds`)
/// are served as Prometheus *summaries* (the exporter's quantiles 0, 0.5,
/// 0.9, 0.95, 0.99, 0.999 and 1 over a sliding minute), not histograms:
/// the CloudWatch agent that scrapes the hosts drops histograms entirely,
/// and the alarms and the dashboard read the quantiles
/// (docs/OPERATIONS.md, "Metrics").
const SUMMARY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// `OBT_METRICS_LISTEN`.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Where to serve the metrics as Prometheus text
    /// (`http://ADDRESS/metrics`), e.g. 127.0.0.1:9464: a listener of its
    /// own, without authentication, for the scraper only (never expose it
    /// publicly). Unset: no metrics are served.
    #[arg(long, env = "OBT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// `OBT_METRICS_NAMESPACE`: the Lambdas' CloudWatch namespace.
#[derive(Debug, Clone, Args)]
pub struct EmfArgs {
    /// The CloudWatch namespace of the metrics this Lambda prints in
    /// Embedded Metric Format (the stack sets `outboxtable/<NamePrefix>`).
    #[arg(long, env = "OBT_METRICS_NAMESPACE", default_value = "outboxtable")]
    pub metrics_namespace: String,
}

/// Why the metrics could not be set up: the service does not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot serve metrics on OBT_METRICS_LISTEN={addr}: {reason}; choose a free port on an \
         address of this host, or unset OBT_METRICS_LISTEN to serve none"
    )]
    Listen { addr: SocketAddr, reason: String },
    #[error("cannot set up the metrics: {0}")]
    Build(String),
}

/// Serves the process's metrics as Prometheus text on
/// `args.metrics_listen`, when it is set (else records nothing). Call once,
/// inside the Tokio runtime, before the work starts.
pub fn serve_prometheus(args: &MetricsArgs) -> Result<(), MetricsError> {
    let Some(addr) = args.metrics_listen else {
        return Ok(());
    };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_bucket_duration(SUMMARY_WINDOW / 3)
        .map_err(|e| MetricsError::Build(e.to_string()))?
        .install()
        .map_err(|e| match e {
            metrics_exporter_prometheus::BuildError::FailedToCreateHTTPListener(reason) => {
                MetricsError::Listen { addr, reason }
            }
            other => MetricsError::Build(other.to_string()),
        })?;
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(())
}

/// The Lambdas' metrics: recorded as everywhere else, printed on stdout (the
/// function's log) as CloudWatch Embedded Metric Format lines by
/// [`Emf::flush`], at the end of each invocation. Counters print what was
/// added since the last flush, gauges their value, histograms their
/// samples.
#[derive(Clone, Copy)]
pub struct Emf {
    collector: &'static metrics_cloudwatch_embedded::Collector,
}

impl std::fmt::Debug for Emf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emf").finish_non_exhaustive()
    }
}

impl Emf {
    /// Installs the EMF recorder for the namespace of `args`.
    pub fn install(args: &EmfArgs) -> Result<Self, MetricsError> {
        let collector = metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(args.metrics_namespace.clone())
            .init()
            .map_err(|e| MetricsError::Build(e.to_string()))?;
        Ok(Self { collector })
    }

    /// Prints what was recorded since the last flush, one JSON document a
    /// line per label set, on stdout in one write. A failed write is
    /// logged: the metrics of one invocation are not worth failing it.
    pub fn flush(&self) {
        let mut lines = Vec::new();
        let written = self.collector.flush(&mut lines).and_then(|()| {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&lines)?;
            stdout.flush()
        });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot print the invocation's metrics");
        }
    }
}

/// Counts every request attempt of an AWS SDK client in
/// `obt_aws_requests_total{service,operation}` (what AWS bills: retries
/// included). Add it where the client is built:
/// `Builder::from(&sdk_config).interceptor(AwsRequests)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsRequests;

impl Intercept for AwsRequests {
    fn name(&self) -> &'static str {
        "obt_runtime::metrics::AwsRequests"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(metadata) = cfg.load::<Metadata>() {
            metrics::counter!(
                AWS_REQUESTS,
                "service" => service_label(metadata.service()),
                "operation" => metadata.name().to_owned(),
            )
            .increment(1);
        }
        Ok(())
    }
}

/// An AWS SDK client whose request attempts are counted ([`AwsRequests`]):
/// `aws_client!(aws_sdk_sqs, &sdk_config)` in place of
/// `aws_sdk_sqs::Client::new(&sdk_config)`.
#[macro_export]
macro_rules! aws_client {
    ($sdk:ident, $config:expr) => {
        $sdk::Client::from_conf(
            $sdk::config::Builder::from($config)
                .interceptor($crate::metrics::AwsRequests)
                .build(),
        )
    };
}

/// The SDK's service name without spaces: `DynamoDB Streams` is
/// `DynamoDBStreams`, as in the CloudWatch dashboards.
fn service_label(service: &str) -> String {
    service.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Counts one MySQL statement in `obt_db_queries_total{operation}`.
pub fn db_query(operation: &'static str) {
    metrics::counter!(DB_QUERIES, "operation" => operation).increment(1);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        metrics: MetricsArgs,
        #[command(flatten)]
        emf: EmfArgs,
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        let cli = Cli::try_parse_from(["x"]).expect("nothing is required");
        assert_eq!(cli.metrics.metrics_listen, None);
        assert_eq!(cli.emf.metrics_namespace, "outboxtable");
    }

    #[test]
    fn a_listen_value_that_is_no_socket_address_is_refused_at_start_up() {
        let error = Cli::try_parse_from(["x", "--metrics-listen", "localhost"])
            .expect_err("not an address");
        assert!(error.to_string().contains("metrics-listen"), "{error}");
    }

    #[test]
    fn service_names_lose_their_spaces() {
        assert_eq!(service_label("DynamoDB Streams"), "DynamoDBStreams");
        assert_eq!(service_label("SQS"), "SQS");
    }

    #[tokio::test]
    async fn a_taken_port_is_a_start_up_error_that_names_the_variable() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("address");
        let error = serve_prometheus(&MetricsArgs {
            metrics_listen: Some(addr),
        })
        .expect_err("the port is taken");
        assert!(matches!(error, MetricsError::Listen { .. }), "{error:?}");
        assert!(error.to_string().contains("OBT_METRICS_LISTEN"), "{error}");
    }
}
