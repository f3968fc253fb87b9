//! The metrics of the real `api`, `stream-relay` and `consumer` binaries,
//! in the storage mode under test (`OBT_TEST_STORAGE`), scraped from
//! `OBT_METRICS_LISTEN` as Prometheus would: after N POSTs converge, each
//! stage counted N and its lag reads 0; AWS (or MySQL) requests are counted
//! by operation; a parked identity shows. And the metrics are never on the
//! api's own listener, nor served at all without `OBT_METRICS_LISTEN`.

use std::collections::HashSet;
use std::time::Duration;

use obt_testkit::mysql::Backend;
use obt_testkit::sqs_proxy::SqsProxy;
use obt_testkit::{Service, eventually, free_port};
use prometheus_parse::{Scrape, Value};

const DEADLINE: Duration = Duration::from_secs(90);

/// Spendings posted, over a few identities.
const N: u64 = 12;
const IDENTITIES: u64 = 4;

fn env(backend: &Backend, service: &str) -> Vec<(&'static str, String)> {
    let mut env = backend.env(service);
    env.extend([
        ("OBT_IDLE_POLL_MS", "50".to_owned()),
        ("OBT_POLL_MAX_IDLE_MS", "50".to_owned()),
        ("OBT_DISCOVER_INTERVAL_SECS", "1".to_owned()),
        ("OBT_WAIT_TIME_SECS", "1".to_owned()),
        // Each sweep counts the parked identities (DynamoDB mode).
        ("OBT_SWEEP_INTERVAL_SECS", "1".to_owned()),
    ]);
    env
}

/// A sample's labels (a subset of them) to look for.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One scrape of a service's `/metrics`.
struct Metrics(Scrape);

impl Metrics {
    async fn scrape(http: &reqwest::Client, port: u16) -> Result<Self, String> {
        let response = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("/metrics answered {}", response.status()));
        }
        let text = response.text().await.map_err(|e| e.to_string())?;
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Scrape::parse(lines).map(Self).map_err(|e| e.to_string())
    }

    /// The value of the sample `name` whose labels include `labels`
    /// (summed over the other labels); `None` when there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let values: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

struct Deployment {
    backend: Backend,
    api_url: String,
    /// The metrics ports of the api, the relay and the consumer.
    api_metrics: u16,
    relay_metrics: u16,
    consumer_metrics: u16,
    http: reqwest::Client,
    _services: Vec<Service>,
}

impl Deployment {
    async fn start(proxy: &SqsProxy) -> Self {
        let backend = Backend::create(5).await;
        let (port, api_metrics, relay_metrics, consumer_metrics) =
            (free_port(), free_port(), free_port(), free_port());
        let listen = |port: u16| ("OBT_METRICS_LISTEN", format!("127.0.0.1:{port}"));
        let mut api_env = env(&backend, "api");
        api_env.extend([
            ("OBT_LISTEN", format!("127.0.0.1:{port}")),
            listen(api_metrics),
        ]);
        let mut relay_env = env(&backend, "stream-relay");
        relay_env.extend([
            ("AWS_ENDPOINT_URL_SQS", proxy.url.clone()),
            listen(relay_metrics),
        ]);
        let mut consumer_env = env(&backend, "consumer");
        consumer_env.push(listen(consumer_metrics));
        let services = vec![
            Service::start("api", &api_env),
            Service::start("stream-relay", &relay_env),
            Service::start("consumer", &consumer_env),
        ];
        let deployment = Self {
            backend,
            api_url: format!("http://127.0.0.1:{port}"),
            api_metrics,
            relay_metrics,
            consumer_metrics,
            http: reqwest::Client::new(),
            _services: services,
        };
        obt_testkit::api_ready(&deployment.http, &deployment.api_url, DEADLINE).await;
        deployment
    }

    async fn post(&self, identity: &str, cents: u64) {
        let body = serde_json::json!({
            "identity": identity,
            "name": "Zoë",
            "surname": "Robi",
            "amount": format!("{}.{:02}", cents / 100, cents % 100),
        });
        let response = self
            .http
            .post(format!("{}/api/v1/spending", self.api_url))
            .json(&body)
            .send()
            .await
            .expect("POST reaches the api");
        assert_eq!(response.status(), 201, "POST {identity}");
    }

    /// Waits until `check` accepts a scrape of the service on `port`.
    async fn wait_for(
        &self,
        what: &str,
        port: u16,
        check: impl Fn(&Metrics) -> Result<(), String>,
    ) -> Metrics {
        eventually(what, DEADLINE, || async {
            let metrics = Metrics::scrape(&self.http, port).await?;
            check(&metrics).map(|()| metrics)
        })
        .await
    }
}

fn equals(metrics: &Metrics, name: &str, labels: &[(&str, &str)], want: f64) -> Result<(), String> {
    match metrics.value(name, labels) {
        Some(v) if (v - want).abs() < f64::EPSILON => Ok(()),
        other => Err(format!("{name}{labels:?} is {other:?}, not {want}")),
    }
}

fn positive(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Result<(), String> {
    match metrics.value(name, labels) {
        Some(v) if v > 0.0 => Ok(()),
        other => Err(format!("{name}{labels:?} is {other:?}, not positive")),
    }
}

#[tokio::test]
async fn each_stage_counts_the_spendings_its_lag_returns_to_zero_and_a_parked_identity_shows() {
    let victim = obt_testkit::identity("MV").to_string();
    let group = victim.clone();
    let proxy = SqsProxy::start(move |entry, _| entry["MessageGroupId"] == group.as_str()).await;
    proxy.refuse_for_good();
    let deployment = Deployment::start(&proxy).await;
    let mysql = deployment.backend.is_mysql();
    let identities: Vec<String> = (0..IDENTITIES)
        .map(|i| obt_testkit::identity(&format!("MI{i}")).to_string())
        .collect();

    for round in 0..N / IDENTITIES {
        for identity in &identities {
            deployment.post(identity, 100 + round).await;
        }
    }
    let n = N as f64;
    let consumer = deployment
        .wait_for(
            "the consumer to apply N",
            deployment.consumer_metrics,
            |m| equals(m, "obt_consumer_events_applied_total", &[], n),
        )
        .await;
    let api = Metrics::scrape(&deployment.http, deployment.api_metrics)
        .await
        .expect("the api's metrics");
    equals(&api, "obt_api_spendings_recorded_total", &[], n).unwrap_or_else(|e| panic!("{e}"));
    let post = [
        ("route", "/api/v1/spending"),
        ("method", "POST"),
        ("status", "201"),
    ];
    equals(&api, "obt_api_requests_total", &post, n).unwrap_or_else(|e| panic!("{e}"));
    let relay = deployment
        .wait_for("the relay to be caught up", deployment.relay_metrics, |m| {
            equals(m, "obt_relay_events_published_total", &[], n)?;
            if mysql {
                equals(m, "obt_relay_oldest_unpublished_age_seconds", &[], 0.0)
            } else {
                equals(m, "obt_relay_behind_stream_head_milliseconds", &[], 0.0)
            }
        })
        .await;
    positive(&relay, "obt_relay_send_batches_total", &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        consumer.count("obt_consumer_duplicates_total", &[]),
        0.0,
        "no duplicate"
    );

    // Requests by operation: what each stage sent to AWS, or to MySQL.
    let aws = |service, operation| vec![("service", service), ("operation", operation)];
    let db = |operation| vec![("operation", operation)];
    let expected: Vec<(&Metrics, &str, Labels)> = if mysql {
        vec![
            (&api, "obt_db_queries_total", db("INSERT obt")),
            (&relay, "obt_db_queries_total", db("SELECT from obt")),
            (&relay, "obt_db_queries_total", db("DELETE from obt")),
            (
                &relay,
                "obt_aws_requests_total",
                aws("SQS", "SendMessageBatch"),
            ),
            (&consumer, "obt_db_queries_total", db("INSERT obt_spending")),
            (
                &consumer,
                "obt_aws_requests_total",
                aws("SQS", "ReceiveMessage"),
            ),
        ]
    } else {
        vec![
            (
                &api,
                "obt_aws_requests_total",
                aws("DynamoDB", "TransactWriteItems"),
            ),
            (
                &relay,
                "obt_aws_requests_total",
                aws("DynamoDBStreams", "GetRecords"),
            ),
            (
                &relay,
                "obt_aws_requests_total",
                aws("SQS", "SendMessageBatch"),
            ),
            (
                &consumer,
                "obt_aws_requests_total",
                aws("SQS", "ReceiveMessage"),
            ),
        ]
    };
    for (metrics, name, labels) in &expected {
        positive(metrics, name, labels).unwrap_or_else(|e| panic!("{e}"));
    }
    if mysql {
        equals(&api, "obt_db_queries_total", &db("INSERT obt"), n)
            .unwrap_or_else(|e| panic!("one outbox row a spending: {e}"));
    } else {
        // One attempt a spending: no conflict, no retry here.
        equals(
            &api,
            "obt_aws_requests_total",
            &aws("DynamoDB", "TransactWriteItems"),
            n,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    // SQS refuses the victim's event for good: the relay parks it.
    deployment.post(&victim, 100).await;
    deployment
        .wait_for(
            "the parked identity to show",
            deployment.relay_metrics,
            |m| {
                equals(m, "obt_relay_identities_parked", &[], 1.0)?;
                equals(m, "obt_relay_parked_total", &[], 1.0)?;
                positive(m, "obt_relay_send_failed_entries_total", &[])
            },
        )
        .await;
}

/// The ports `pid` listens on (TCP, IPv4 and IPv6), from /proc.
fn listening_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

#[tokio::test]
async fn the_metrics_are_never_on_the_apis_listener_and_not_served_without_obt_metrics_listen() {
    let backend = Backend::create(5).await;
    let http = reqwest::Client::new();
    let start = |metrics: Option<u16>| {
        let port = free_port();
        let mut api_env = env(&backend, "api");
        api_env.push(("OBT_LISTEN", format!("127.0.0.1:{port}")));
        if let Some(metrics) = metrics {
            api_env.push(("OBT_METRICS_LISTEN", format!("127.0.0.1:{metrics}")));
        }
        (port, Service::start("api", &api_env))
    };
    let ready = |port: u16| {
        let api_url = format!("http://127.0.0.1:{port}");
        let http = http.clone();
        async move { obt_testkit::api_ready(&http, &api_url, DEADLINE).await }
    };

    // Without OBT_METRICS_LISTEN: the api's own port is its only listener,
    // and /metrics there is an unknown path.
    let (port, api) = start(None);
    ready(port).await;
    assert_eq!(listening_ports(api.pid()), HashSet::from([port]));
    let response = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("the api answers");
    assert_eq!(response.status(), 404);
    drop(api);

    // With it: a second listener, which serves them; still not the api's.
    let metrics_port = free_port();
    let (port, api) = start(Some(metrics_port));
    ready(port).await;
    assert_eq!(
        listening_ports(api.pid()),
        HashSet::from([port, metrics_port])
    );
    let response = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("the api answers");
    assert_eq!(response.status(), 404, "not on the api's listener");
    let scraped = Metrics::scrape(&http, metrics_port)
        .await
        .expect("served on OBT_METRICS_LISTEN");
    positive(
        &scraped,
        "obt_api_requests_total",
        &[("route", "/health/ready")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_taken_metrics_port_stops_the_service_with_an_error_that_names_the_variable() {
    let backend = Backend::create(5).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("address").port();
    let mut consumer_env = env(&backend, "consumer");
    consumer_env.push(("OBT_METRICS_LISTEN", format!("127.0.0.1:{taken_port}")));
    let output = tokio::process::Command::new(obt_testkit::bin_path("consumer"))
        .envs(consumer_env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .expect("the consumer stops at once")
        .expect("run the consumer");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OBT_METRICS_LISTEN"), "{stderr}");
}
