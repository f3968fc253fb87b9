//! The real `obt-check` binary against the real `api`, `stream-relay` and
//! `consumer` binaries on the emulators (or MariaDB with
//! `OBT_TEST_STORAGE=mysql`): a healthy pipeline passes, a pipeline
//! without a consumer fails with "not converged", an unreachable api is a
//! configuration error.

use std::process::Output;
use std::time::{Duration, Instant};

use obt_testkit::mysql::Backend;
use obt_testkit::{Service, free_port};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);

/// The backend under test, with what these tests need of it.
struct Checked(Backend);

impl Checked {
    async fn create() -> Self {
        Self(Backend::create(5).await)
    }

    /// The environment of one service binary, with fast idle polling.
    fn env(&self, service: &str) -> Vec<(&'static str, String)> {
        let mut env = self.0.env(service);
        env.extend([
            ("OBT_IDLE_POLL_MS", "50".to_owned()),
            ("OBT_POLL_MAX_IDLE_MS", "50".to_owned()),
            ("OBT_DISCOVER_INTERVAL_SECS", "1".to_owned()),
            ("OBT_WAIT_TIME_SECS", "1".to_owned()),
        ]);
        env
    }

    /// What obt-check needs to read the consumer's records: the consumer's
    /// own storage settings.
    fn check_env(&self) -> Vec<(&'static str, String)> {
        self.env("consumer")
            .into_iter()
            .filter(|(k, _)| {
                matches!(
                    *k,
                    "OBT_STORAGE" | "OBT_CONSUMER_TABLE" | "OBT_DATABASE_URL"
                )
            })
            .collect()
    }
}

/// The api (and the relay, and the consumer if asked) on a fresh backend.
struct Deployment {
    backend: Checked,
    api_url: String,
    _services: Vec<Service>,
}

impl Deployment {
    async fn start(with_consumer: bool) -> Self {
        let backend = Checked::create().await;
        let port = free_port();
        let mut api_env = backend.env("api");
        api_env.push(("OBT_LISTEN", format!("127.0.0.1:{port}")));
        let mut services = vec![
            Service::start("api", &api_env),
            Service::start("stream-relay", &backend.env("stream-relay")),
        ];
        if with_consumer {
            services.push(Service::start("consumer", &backend.env("consumer")));
        }
        let api_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        obt_testkit::api_ready(&http, &api_url, DEADLINE).await;
        Self {
            backend,
            api_url,
            _services: services,
        }
    }
}

/// Runs the real obt-check with `args` and `env`, at most `deadline`.
async fn obt_check(args: &[&str], env: &[(&'static str, String)], deadline: Duration) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_obt-check"));
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(deadline, command.output())
        .await
        .unwrap_or_else(|_| panic!("obt-check {args:?} did not finish within {deadline:?}"))
        .expect("run obt-check")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The row of `invariant` in the JSON report.
fn row<'a>(report: &'a Value, invariant: &str) -> &'a Value {
    report["invariants"]
        .as_array()
        .expect("invariants")
        .iter()
        .find(|r| r["invariant"] == invariant)
        .unwrap_or_else(|| panic!("no row {invariant} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_pipeline_passes_every_invariant() {
    let deployment = Deployment::start(true).await;
    let report_path = std::env::temp_dir().join(format!("obt-check-{}.json", uuid_like()));
    let report_arg = report_path.display().to_string();
    let output = obt_check(
        &[
            "--api-url",
            &deployment.api_url,
            "--spendings",
            "80",
            "--identities",
            "4",
            "--concurrency",
            "12",
            "--seed",
            "7",
            "--progress",
            "never",
            "--converge-timeout-secs",
            "60",
            "--report",
            &report_arg,
        ],
        &deployment.backend.check_env(),
        Duration::from_secs(180),
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for needle in [
        "applied exactly once",
        "lost",
        "duplicated",
        "not converged",
        "POST throughput",
        "PASS: every invariant holds",
        "seed 7",
    ] {
        assert!(
            stdout.contains(needle),
            "stdout lacks {needle:?}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .unwrap_or_else(|e| panic!("no report ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}")),
    )
    .expect("the report is JSON");
    let _ = std::fs::remove_file(&report_path);
    assert_eq!(report["passed"], true);
    assert_eq!(row(&report, "committed")["count"], 80);
    assert_eq!(row(&report, "applied exactly once")["count"], 80);
    assert_eq!(report["parameters"]["seed"], 7);
    assert!(report["figures"]["convergence_secs_after_last_201"].is_number());
    assert!(report["figures"]["end_to_end_latency"]["samples"] == 80);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_consumer_it_fails_not_converged() {
    let deployment = Deployment::start(false).await;
    let output = obt_check(
        &[
            "--api-url",
            &deployment.api_url,
            "--spendings",
            "12",
            "--identities",
            "3",
            "--progress",
            "never",
            "--converge-timeout-secs",
            "3",
        ],
        &deployment.backend.check_env(),
        Duration::from_secs(120),
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("not converged"), "{stdout}");
    assert!(stdout.contains("FAIL: invariants violated"), "{stdout}");
    // The api's side holds: 12 committed, no api mismatch.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("committed") && l.contains("12") && l.contains("PASS")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("not converged") && l.contains("FAIL")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_is_a_configuration_error() {
    let port = free_port(); // Nothing listens there.
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let output = obt_check(
        &[
            "--api-url",
            &url,
            "--give-up-after-secs",
            "2",
            "--progress",
            "never",
        ],
        &[],
        Duration::from_secs(30),
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_flags_are_a_usage_error_and_help_explains_the_exit_codes() {
    let output = obt_check(
        &["--api-url", "http://127.0.0.1:1", "--spendings", "0"],
        &[],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{:?}", text(&output));
    let output = obt_check(&["--api-url", "ftp://x"], &[], Duration::from_secs(30)).await;
    assert_eq!(output.status.code(), Some(2), "{:?}", text(&output));
    assert!(
        text(&output).1.contains("http:// or https://"),
        "{:?}",
        text(&output)
    );
    let output = obt_check(&["--help"], &[], Duration::from_secs(30)).await;
    let (stdout, _) = text(&output);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout.contains("Exit codes"), "{stdout}");
    assert!(stdout.contains("Example"), "{stdout}");
}

/// A name no other run uses, without another dependency.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// A proxy in front of the api that forwards every request but, for every
/// fourth POST answered 201 (at most once per Idempotency-Key), answers
/// 503 instead: the spending was
/// recorded, the client never learns it (a response lost after the
/// commit). The client must retry with the same Idempotency-Key.
///
/// It also answers the first [`REFUSED_READS`] reads of each identity's
/// summary with 502, as a load balancer does while the api restarts: more
/// than a handful of quick retries would ride out.
struct LossyProxy {
    url: String,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refused_reads: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    server: tokio::task::JoinHandle<()>,
}

/// How many times the proxy refuses to read each identity's summary (the
/// reads back off 100 ms doubling: 6 refusals take about 6 s).
const REFUSED_READS: usize = 6;

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    posts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The Idempotency-Keys whose 201 was dropped once (never twice).
    dropped_keys: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The reads refused so far, per summary path.
    refused_reads: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl LossyProxy {
    async fn start(upstream: &str) -> Self {
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refused_reads = std::sync::Arc::default();
        let state = ProxyState {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            posts: Default::default(),
            dropped: dropped.clone(),
            dropped_keys: Default::default(),
            refused_reads: std::sync::Arc::clone(&refused_reads),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let router = axum::Router::new().fallback(forward).with_state(state);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url,
            dropped,
            refused_reads,
            server,
        }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(
    axum::extract::State(state): axum::extract::State<ProxyState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use std::sync::atomic::Ordering;
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        return status(400);
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if parts.method == axum::http::Method::GET && path.starts_with("/api/v1/spending/") {
        let mut refused = state.refused_reads.lock().expect("the read counts");
        let count = refused.entry(path.to_owned()).or_default();
        if *count < REFUSED_READS {
            *count += 1;
            return status(502);
        }
    }
    let mut upstream = state
        .http
        .request(parts.method.clone(), format!("{}{path}", state.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(answer) = upstream.send().await else {
        return status(502);
    };
    let code = answer.status();
    let headers = answer.headers().clone();
    let Ok(bytes) = answer.bytes().await else {
        return status(502);
    };
    let key = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if parts.method == axum::http::Method::POST
        && code == 201
        && !state
            .dropped_keys
            .lock()
            .expect("the key set")
            .contains(&key)
        && state.posts.fetch_add(1, Ordering::SeqCst) % 4 == 0
    {
        state.dropped_keys.lock().expect("the key set").insert(key);
        state.dropped.fetch_add(1, Ordering::SeqCst);
        return status(503);
    }
    let mut response = axum::response::Response::new(axum::body::Body::from(bytes));
    *response.status_mut() = code;
    for (name, value) in &headers {
        if name != axum::http::header::CONTENT_LENGTH
            && name != axum::http::header::TRANSFER_ENCODING
        {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

fn status(code: u16) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::empty());
    *response.status_mut() = axum::http::StatusCode::from_u16(code).expect("a valid status code");
    response
}

/// Responses lost after the commit: the checker retries with the same key,
/// the api answers the retries with the original 201
/// (`Idempotent-Replayed: true`), nothing is recorded twice and every
/// invariant holds. (An api that recorded a retry again would be reported
/// as `extra`: `verify`'s own tests.) The reads of the summaries, refused
/// for a while as during a restart, are retried too (before the
/// `--give-up-after-secs` fix, 5 quick attempts made that exit 2).
#[tokio::test(flavor = "multi_thread")]
async fn responses_lost_after_the_commit_are_retried_with_the_same_key() {
    let deployment = Deployment::start(true).await;
    let proxy = LossyProxy::start(&deployment.api_url).await;
    let report_path = std::env::temp_dir().join(format!("obt-check-{}.json", uuid_like()));
    let report_arg = report_path.display().to_string();
    let output = obt_check(
        &[
            "--api-url",
            &proxy.url,
            "--spendings",
            "40",
            "--identities",
            "4",
            "--concurrency",
            "8",
            "--progress",
            "never",
            "--converge-timeout-secs",
            "60",
            "--report",
            &report_arg,
        ],
        &deployment.backend.check_env(),
        Duration::from_secs(180),
    )
    .await;
    let (stdout, stderr) = text(&output);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path)
            .unwrap_or_else(|e| panic!("no report ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}")),
    )
    .expect("the report is JSON");
    let _ = std::fs::remove_file(&report_path);
    let dropped = proxy.dropped.load(std::sync::atomic::Ordering::SeqCst) as u64;
    assert!(dropped >= 10, "{dropped} responses dropped");
    assert_eq!(
        report["figures"]["retries"]["unavailable"], dropped,
        "{report:#}"
    );

    // What the api really recorded, read directly (not through obt-check).
    let http = reqwest::Client::new();
    let prefix = report["parameters"]["prefix"].as_str().expect("a prefix");
    let mut recorded = 0;
    for k in 0..4 {
        let summary: Value = http
            .get(format!(
                "{}/api/v1/spending/{prefix}-{k}",
                deployment.api_url
            ))
            .send()
            .await
            .expect("GET reaches the api")
            .json()
            .await
            .expect("a JSON summary");
        recorded += summary["count"].as_u64().expect("a count");
    }
    // Every retry was answered with the original 201.
    assert_eq!(recorded, 40, "{report:#}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(report["figures"]["replayed_answers"], dropped, "{report:#}");
    assert_eq!(row(&report, "committed")["count"], 40);
    // Every identity's summary was refused as often as the proxy refuses
    // (in the preflight), then read.
    let refused = proxy.refused_reads.lock().expect("the read counts").clone();
    assert_eq!(refused.len(), 4, "{refused:?}");
    assert!(refused.values().all(|n| *n == REFUSED_READS), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_consumer_records_are_a_configuration_error() {
    let deployment = Deployment::start(false).await;
    let mut env = deployment.backend.check_env();
    for (key, value) in &mut env {
        match *key {
            "OBT_CONSUMER_TABLE" => *value = "obt-check-no-such-table".to_owned(),
            // The right server and database, a wrong password.
            "OBT_DATABASE_URL" => {
                let (user, rest) = value.split_once('@').expect("user@host");
                let (user, _) = user.rsplit_once(':').expect("user:password");
                *value = format!("{user}:wrong-password@{rest}");
            }
            _ => {}
        }
    }
    let output = obt_check(
        &["--api-url", &deployment.api_url, "--progress", "never"],
        &env,
        Duration::from_secs(60),
    )
    .await;
    let (stdout, stderr) = text(&output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!("obt-check said: {stderr}");
    assert!(stderr.contains("consumer's records"), "{stderr}");
    assert!(!stderr.contains("wrong-password"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

/// An api stand-in that requires a token it never accepts: its probes
/// answer, every spending route is 401.
async fn api_refusing_every_token() -> String {
    let router = axum::Router::new()
        .route("/health/live", axum::routing::get(|| async { "ok" }))
        .fallback(|| async { status(401) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_at_preflight_is_a_configuration_error_that_never_shows_the_token() {
    let url = api_refusing_every_token().await;
    let token_file = std::env::temp_dir().join(format!("obt-check-test-token-{}", uuid_like()));
    std::fs::write(&token_file, "s3cret-test-token\n").expect("write the token");
    let path = token_file.to_string_lossy().into_owned();
    let runs = [
        (vec!["--token-file", path.as_str()], "was refused"),
        (vec![], "no bearer token was sent"),
    ];
    for (extra, says) in runs {
        let mut args = vec!["--api-url", url.as_str(), "--progress", "never"];
        args.extend(extra.iter().copied());
        let output = obt_check(&args, &[], Duration::from_secs(60)).await;
        let (stdout, stderr) = text(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "stdout:\n{stdout}\nstderr:\n{stderr}"
        );
        assert!(stderr.contains("401 Unauthorized"), "{stderr}");
        assert!(stderr.contains("--token-file"), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains("s3cret") && !stdout.contains("s3cret"));
    }
    let _ = std::fs::remove_file(&token_file);
}
