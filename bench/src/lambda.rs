//! The Lambda phase's pieces: the stream records of a table, read back,
//! and a Lambda function binary behind cargo-lambda's Runtime API emulator
//! (`cargo lambda watch --only-lambda-apis`), as the relay's Lambda tests
//! run it (testkit/src/lambda.rs), with errors instead of panics.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};
use bytes::Bytes;
use obt_check::http::Http;
use obt_runtime::error_chain;

use crate::BenchError;
use crate::deploy::{Resources, free_port};

fn error(detail: String) -> BenchError {
    BenchError::Phase {
        phase: "lambda",
        detail,
    }
}

/// The first `count` records of the resources' stream, in order.
pub async fn read_stream(resources: &Resources, count: u64) -> Result<Vec<Record>, BenchError> {
    let streams = aws_sdk_dynamodbstreams::Client::new(&resources.config);
    let shards = streams
        .describe_stream()
        .stream_arn(&resources.stream_arn)
        .send()
        .await
        .map_err(|e| error(format!("DescribeStream: {}", error_chain(&e))))?
        .stream_description
        .and_then(|d| d.shards)
        .unwrap_or_default();
    let started = Instant::now();
    let mut records = Vec::new();
    for shard in shards {
        let Some(shard_id) = shard.shard_id else {
            continue;
        };
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&resources.stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| error(format!("GetShardIterator: {}", error_chain(&e))))?
            .shard_iterator;
        while let Some(current) = iterator {
            let page = streams
                .get_records()
                .shard_iterator(current)
                .send()
                .await
                .map_err(|e| error(format!("GetRecords: {}", error_chain(&e))))?;
            let page_records = page.records.unwrap_or_default();
            let empty = page_records.is_empty();
            records.extend(page_records);
            if (empty && records.len() as u64 >= count)
                || started.elapsed() > Duration::from_secs(120)
            {
                break;
            }
            iterator = page.next_shard_iterator;
        }
    }
    if (records.len() as u64) < count {
        return Err(error(format!(
            "the stream held {} of the {count} records written",
            records.len()
        )));
    }
    records.truncate(usize::try_from(count).unwrap_or(usize::MAX));
    Ok(records)
}

/// cargo-lambda: on `PATH`, or in the workspace's `.venv` (which
/// scripts/bench.sh fills with `python_tools`).
fn cargo_lambda() -> Result<PathBuf, BenchError> {
    obt_testkit::lambda::find_cargo_lambda().ok_or_else(|| {
        BenchError::Setup(
            "cargo-lambda is not installed: scripts/bench.sh installs it into .venv \
             (tools/python/requirements.txt); or `source scripts/python.sh && python_tools`"
                .to_owned(),
        )
    })
}

/// A Lambda function binary polling the emulator; both killed on drop.
pub struct Function {
    http: Http,
    path: String,
    log: PathBuf,
    emulator: tokio::process::Child,
    function: tokio::process::Child,
    /// When the function was started: the first invocation's latency is
    /// counted from here.
    spawned: Option<Instant>,
}

impl Function {
    /// The `init_ms` the function logged once initialised, if it did.
    pub fn reported_init_ms(&self) -> Option<f64> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines().find_map(init_ms)
    }

    /// Starts the emulator (in the package directory `stream-relay` of the
    /// working directory: cargo-lambda accepts the invocations of that
    /// package's binaries only), then `bin_dir/name` with `env`.
    pub async fn start(
        bin_dir: &Path,
        name: &str,
        env: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self, BenchError> {
        let package_dir = PathBuf::from("stream-relay");
        if !package_dir.join("Cargo.toml").is_file() {
            return Err(BenchError::Setup(
                "the lambda phase runs from the repository's root (it needs stream-relay/ for \
                 cargo lambda watch): run it through scripts/bench.sh"
                    .to_owned(),
            ));
        }
        let binary = bin_dir.join(name);
        if !binary.is_file() {
            return Err(BenchError::Setup(format!(
                "{} does not exist: build the binaries",
                binary.display()
            )));
        }
        std::fs::create_dir_all(log_dir).map_err(|e| BenchError::io(log_dir, e))?;
        let log = log_dir.join("lambda-cargo-lambda.log");
        let function_log = log_dir.join(format!("lambda-{name}.log"));
        let port = free_port()?;
        let file = std::fs::File::create(&log).map_err(|e| BenchError::io(&log, e))?;
        let err = file.try_clone().map_err(|e| BenchError::io(&log, e))?;
        let mut emulator = tokio::process::Command::new(cargo_lambda()?)
            .args(["lambda", "watch", "--only-lambda-apis", "--ignore-changes"])
            .args(["-A", "127.0.0.1", "-P", &port.to_string()])
            .current_dir(&package_dir)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting cargo lambda watch: {e}")))?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = emulator.try_wait() {
                return Err(BenchError::ServiceDied {
                    service: "cargo lambda watch".to_owned(),
                    status: status.to_string(),
                    log: log.display().to_string(),
                });
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(BenchError::NotUp {
                    service: "cargo lambda watch".to_owned(),
                    secs: 30,
                    last: format!("nothing listens on {address}"),
                    log: log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let file =
            std::fs::File::create(&function_log).map_err(|e| BenchError::io(&function_log, e))?;
        let err = file
            .try_clone()
            .map_err(|e| BenchError::io(&function_log, e))?;
        let spawned = Instant::now();
        let function = tokio::process::Command::new(&binary)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt/{name}"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env(
                "RUST_LOG",
                // The function's init line is at INFO.
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| "warn,stream_relay_lambda=info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting {}: {e}", binary.display())))?;
        let http = Http::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(60),
        )
        .map_err(|e| BenchError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            path: format!("/2015-03-31/functions/{name}/invocations"),
            log: function_log,
            emulator,
            function,
            spawned: Some(spawned),
        })
    }

    /// Invokes the function with `event`: how long until it answered (the
    /// first time, since the process started). A function error is an
    /// error.
    pub async fn invoke(&mut self, event: &serde_json::Value) -> Result<Duration, BenchError> {
        let start = self.spawned.take().unwrap_or_else(Instant::now);
        let body = Bytes::from(event.to_string());
        let result = self.http.post_json(&self.path, &[], body).await;
        let elapsed = start.elapsed();
        for (what, child) in [
            ("the Lambda function", &mut self.function),
            ("cargo lambda watch", &mut self.emulator),
        ] {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(BenchError::ServiceDied {
                    service: what.to_owned(),
                    status: status.to_string(),
                    log: self.log.display().to_string(),
                });
            }
        }
        match result {
            Ok(answer) if answer.status.is_success() => {
                let failures = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|v| v["batchItemFailures"].as_array().map(Vec::len))
                    .unwrap_or(0);
                if failures > 0 {
                    return Err(error(format!(
                        "the function reported failed records: {} (its log: {})",
                        answer.excerpt(300),
                        self.log.display()
                    )));
                }
                Ok(elapsed)
            }
            Ok(answer) => Err(error(format!(
                "the invocation answered {}: {} (its log: {})",
                answer.status,
                answer.excerpt(300),
                self.log.display()
            ))),
            Err(e) => Err(error(format!(
                "the invocation got no answer: {e} (its log: {})",
                self.log.display()
            ))),
        }
    }
}

/// The value of `init_ms` in a log line, JSON (`"init_ms":12.5`) or text
/// (`init_ms=12.5`).
fn init_ms(line: &str) -> Option<f64> {
    let rest = &line[line.find("init_ms")? + "init_ms".len()..];
    let rest = rest.trim_start_matches(['"', ':', '=', ' ']);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::init_ms;

    #[test]
    fn init_ms_is_read_from_json_and_text_lines() {
        assert_eq!(
            init_ms(r#"{"level":"INFO","init_ms":12.5,"message":"initialised"}"#),
            Some(12.5)
        );
        assert_eq!(
            init_ms("INFO stream_relay_lambda: initialised init_ms=7.25"),
            Some(7.25)
        );
        assert_eq!(init_ms("INFO nothing here"), None);
    }
}
