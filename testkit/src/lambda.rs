//! A Lambda function run as AWS runs it: the real binary, polling the
//! Lambda Runtime API, here emulated by `cargo lambda watch
//! --only-lambda-apis`; and the DynamoDB stream events Lambda would hand it,
//! made from records read from the emulator's stream.
//!
//! cargo-lambda comes from PyPI (`tools/python/requirements.txt`), installed
//! into the workspace's `.venv` by `scripts/python.sh`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use serde_json::Value;
use tokio::process::{Child, Command};

/// How long an invocation may take, start-up included.
const INVOKE_DEADLINE: Duration = Duration::from_secs(60);

/// How long the emulator may take to listen.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The emulator and the function binary; both killed when dropped.
pub struct LambdaEmulator {
    function_name: String,
    invoke_url: String,
    emulator: Child,
    emulator_log: PathBuf,
    function: Child,
    /// The function's stdout (its metrics, in Embedded Metric Format).
    function_stdout: PathBuf,
    http: reqwest::Client,
}

/// Where cargo-lambda is: on `PATH`, or in the workspace's `.venv`.
pub fn cargo_lambda() -> PathBuf {
    find_cargo_lambda().unwrap_or_else(|| {
        panic!(
            "cargo-lambda is not installed: run the tests with scripts/test.sh, which installs \
             it into .venv (tools/python/requirements.txt), or run \
             `source scripts/python.sh && python_tools` first"
        )
    })
}

/// cargo-lambda on `PATH`, else in the workspace's `.venv`; `None` when
/// neither has it.
pub fn find_cargo_lambda() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("cargo-lambda"))
            .find(|candidate| candidate.is_file())
    });
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let in_venv = workspace.join(".venv/bin/cargo-lambda");
    on_path.or_else(|| in_venv.is_file().then_some(in_venv))
}

impl LambdaEmulator {
    /// Starts the Runtime API emulator, then `binary` as function
    /// `function_name` with the current environment plus `env`.
    ///
    /// `package_dir` is the directory of the Cargo package that has a
    /// binary named `function_name`: cargo-lambda runs there and only
    /// accepts invocations of that package's binaries.
    pub async fn start(
        package_dir: &Path,
        function_name: &str,
        binary: &Path,
        env: &[(&str, String)],
    ) -> Self {
        let cargo_lambda = cargo_lambda();
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique("cargo-lambda")));
        // A port picked here may be taken before the emulator binds it:
        // then it exits, and another port is tried.
        let mut attempts = 0;
        let (emulator, port) = loop {
            attempts += 1;
            let port = crate::free_port();
            let log_file = std::fs::File::create(&log).expect("create the emulator's log");
            let stderr = log_file.try_clone().expect("clone the log file");
            let mut emulator = Command::new(&cargo_lambda)
                .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
                .args(["-A", "127.0.0.1", "-P", &port.to_string()])
                .current_dir(package_dir)
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", cargo_lambda.display()));
            if wait_listening(&mut emulator, port).await {
                break (emulator, port);
            }
            let _ = emulator.kill().await;
            assert!(
                attempts < 3,
                "cargo lambda watch did not start; its output:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };

        let function_stdout =
            std::env::temp_dir().join(format!("{}.out", crate::unique(function_name)));
        let stdout_file =
            std::fs::File::create(&function_stdout).expect("create the function's stdout file");
        let function = Command::new(binary)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                // lambda_runtime needs the scheme once there is a path; the
                // path names the function whose invocations this process
                // takes.
                format!("http://127.0.0.1:{port}/.rt/{function_name}"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", function_name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(stdout_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));

        Self {
            function_name: function_name.to_owned(),
            invoke_url: format!(
                "http://127.0.0.1:{port}/2015-03-31/functions/{function_name}/invocations"
            ),
            emulator,
            emulator_log: log,
            function,
            function_stdout,
            http: reqwest::Client::new(),
        }
    }

    /// What the function printed on stdout so far (its logs go to stderr):
    /// the metrics it flushed at the end of each invocation answered.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.function_stdout).unwrap_or_default()
    }

    /// Invokes the function synchronously with `payload`; its answer.
    /// Panics if the invocation fails (a function error included).
    pub async fn invoke(&mut self, payload: &Value) -> Value {
        let (status, body) = self.invoke_raw(payload).await;
        assert_eq!(
            status, 200,
            "{} answered {status}: {body}",
            self.function_name
        );
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{} answered no JSON ({e}): {body}", self.function_name))
    }

    /// Invokes the function synchronously: the HTTP status and body of the
    /// answer (a function error is a 500 with the error as body).
    pub async fn invoke_raw(&mut self, payload: &Value) -> (u16, String) {
        let request = self.http.post(&self.invoke_url).json(payload).send();
        tokio::pin!(request);
        let started = Instant::now();
        // The emulator holds the request until the function takes it: if
        // the function died, it would wait for ever. Watch both.
        let response = loop {
            tokio::select! {
                response = &mut request => break response,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if let Ok(Some(status)) = self.function.try_wait() {
                panic!(
                    "{} exited ({status}) instead of answering",
                    self.function_name
                );
            }
            if let Ok(Some(status)) = self.emulator.try_wait() {
                panic!(
                    "cargo lambda watch exited ({status}); its output:\n{}",
                    std::fs::read_to_string(&self.emulator_log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < INVOKE_DEADLINE,
                "{} did not answer within {INVOKE_DEADLINE:?}",
                self.function_name
            );
        };
        let response = response.unwrap_or_else(|e| panic!("invoking {}: {e}", self.function_name));
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        (status, body)
    }
}

impl Drop for LambdaEmulator {
    fn drop(&mut self) {
        let _ = self.function.start_kill();
        let _ = self.emulator.start_kill();
        let _ = std::fs::remove_file(&self.emulator_log);
        let _ = std::fs::remove_file(&self.function_stdout);
    }
}

/// Whether the emulator listens on `port` before [`START_DEADLINE`];
/// `false` as soon as it exits.
async fn wait_listening(emulator: &mut Child, port: u16) -> bool {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while started.elapsed() < START_DEADLINE {
        if let Ok(Some(_)) = emulator.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The event Lambda's event source mapping would deliver for `records`
/// (read with `GetRecords` from the stream `stream_arn`): aws_lambda_events'
/// own type, built with serde_dynamo's conversions, as JSON.
pub fn dynamodb_event(
    records: &[aws_sdk_dynamodbstreams::types::Record],
    stream_arn: &str,
) -> Value {
    let mut event = Event::default();
    event.records = records
        .iter()
        .map(|record| event_record(record, stream_arn))
        .collect();
    serde_json::to_value(&event).expect("an event serializes")
}

fn event_record(record: &aws_sdk_dynamodbstreams::types::Record, stream_arn: &str) -> EventRecord {
    let mut out = EventRecord::default();
    out.event_id = record.event_id().unwrap_or_default().to_owned();
    out.event_name = record
        .event_name()
        .map(|name| name.as_str().to_owned())
        .unwrap_or_default();
    out.event_version = record.event_version().map(str::to_owned);
    out.event_source = record.event_source().map(str::to_owned);
    out.aws_region = record.aws_region().unwrap_or_default().to_owned();
    out.event_source_arn = Some(stream_arn.to_owned());
    if let Some(data) = record.dynamodb() {
        let change = &mut out.change;
        change.approximate_creation_date_time = data
            .approximate_creation_date_time()
            .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
            .unwrap_or_default();
        let item = |image: Option<&std::collections::HashMap<String, _>>| {
            image
                .cloned()
                .map(serde_dynamo::Item::from)
                .unwrap_or_default()
        };
        change.keys = item(data.keys());
        change.new_image = item(data.new_image());
        change.old_image = item(data.old_image());
        change.sequence_number = data.sequence_number().map(str::to_owned);
        change.size_bytes = data.size_bytes().unwrap_or_default();
        // Same names in both APIs (NEW_AND_OLD_IMAGES, ...).
        change.stream_view_type = data
            .stream_view_type()
            .and_then(|v| serde_json::from_value(Value::from(v.as_str())).ok());
    }
    out
}

/// One CloudWatch Embedded Metric Format document, checked against the
/// specification's structure by [`emf_documents`].
#[derive(Debug, Clone)]
pub struct EmfDocument {
    pub namespace: String,
    /// `_aws.Timestamp`: milliseconds since the epoch.
    pub timestamp: u64,
    /// The dimension names of the (one) dimension set, with their values.
    pub dimensions: Vec<(String, String)>,
    /// Each declared metric with its value(s): a number, or an array of
    /// numbers (a histogram's samples).
    pub metrics: Vec<(String, Vec<f64>)>,
}

impl EmfDocument {
    /// The sum of the values of `name` in this document, if declared.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, values)| values.iter().sum())
    }

    pub fn dimension(&self, name: &str) -> Option<&str> {
        self.dimensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes every line of `output` as an EMF document; panics, saying
/// why, at the first line that is not one: not JSON, no `_aws.Timestamp`,
/// no `_aws.CloudWatchMetrics[0]` with `Namespace`, `Dimensions` and
/// `Metrics`, a dimension without its string value, a declared metric
/// without its number(s).
pub fn emf_documents(output: &str) -> Vec<EmfDocument> {
    output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            emf_document(line).unwrap_or_else(|e| panic!("not an EMF document ({e}): {line}"))
        })
        .collect()
}

fn emf_document(line: &str) -> Result<EmfDocument, String> {
    let doc: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let aws = &doc["_aws"];
    let timestamp = aws["Timestamp"]
        .as_u64()
        .ok_or("_aws.Timestamp is not a number")?;
    let directive = &aws["CloudWatchMetrics"][0];
    let namespace = directive["Namespace"]
        .as_str()
        .ok_or("no _aws.CloudWatchMetrics[0].Namespace")?
        .to_owned();
    let sets = directive["Dimensions"]
        .as_array()
        .ok_or("no _aws.CloudWatchMetrics[0].Dimensions")?;
    let mut dimensions = Vec::new();
    for set in sets {
        for name in set.as_array().ok_or("a dimension set is not an array")? {
            let name = name.as_str().ok_or("a dimension name is not a string")?;
            let value = doc[name]
                .as_str()
                .ok_or_else(|| format!("dimension {name} has no string value"))?;
            dimensions.push((name.to_owned(), value.to_owned()));
        }
    }
    let declared = directive["Metrics"]
        .as_array()
        .ok_or("no _aws.CloudWatchMetrics[0].Metrics")?;
    let mut metrics = Vec::new();
    for metric in declared {
        let name = metric["Name"].as_str().ok_or("a metric without Name")?;
        let values = match &doc[name] {
            Value::Number(n) => vec![n.as_f64().ok_or("not a finite number")?],
            Value::Array(values) => values
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| format!("{name}: {v} is no number"))
                })
                .collect::<Result<_, _>>()?,
            other => return Err(format!("metric {name} has no number: {other}")),
        };
        metrics.push((name.to_owned(), values));
    }
    Ok(EmfDocument {
        namespace,
        timestamp,
        dimensions,
        metrics,
    })
}

/// The sum of `name` over `documents`.
pub fn emf_sum(documents: &[EmfDocument], name: &str) -> f64 {
    documents.iter().filter_map(|d| d.value(name)).sum()
}
