//! Test support shared by the crates' integration tests and the end-to-end
//! tests. Everything here talks to the real emulators that `scripts/test.sh`
//! starts; nothing is mocked.
//!
//! - [`aws`]: the SDK configuration for the emulators, or a clear panic
//!   saying how to start them.
//! - [`Stack`]: a fresh set of tables and queues with unique names, so that
//!   tests run in parallel on one emulator without seeing each other.
//! - [`storage_under_test`]: the storage mode of the suites written for
//!   both (`OBT_TEST_STORAGE`).
//! - [`eventually`]: waits for a condition with a deadline (never a bare
//!   sleep).
//! - [`Service`]: one of the workspace's binaries as a child process, killed
//!   when dropped.
//! - [`event`], [`send`], [`send_raw`], [`drain`], [`receive_dead_letter`]:
//!   events and queue traffic as the relay and the consumer see them.
//! - [`outbox`]: the api's write as the relay sees it (an event appended
//!   to an item's outbox), and the outbox read back.
//! - [`stream`]: the records of a stack's DynamoDB stream.
//! - [`fault_proxy`]: a TCP proxy in front of an emulator or MariaDB that
//!   refuses, hangs, delays, resets or throttles connections on demand.
//! - [`sqs_proxy`]: a proxy in front of fauxqs that fails chosen entries of
//!   `SendMessageBatch` calls, as SQS does now and then.
//! - [`sqs_model`]: an in-process SQS FIFO server with SQS's receive
//!   semantics (several messages of a group per receive, receive counts,
//!   redrive at maxReceiveCount), where fauxqs is gentler.
//! - [`lambda`]: a Lambda function binary behind cargo-lambda's Runtime API
//!   emulator, and the DynamoDB stream events to invoke it with.
//! - [`otlp`]: an OTLP/HTTP receiver standing in for a trace collector.

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use obt_contract::{Amount, Envelope, Identity, PersonName, SpendingRecorded};
use tokio::process::{Child, Command};

pub mod dynamo_proxy;
pub mod fault_proxy;
pub mod lambda;
#[cfg(feature = "mysql")]
pub mod mysql;
pub mod otlp;
pub mod outbox;
pub mod sqs_model;
pub mod sqs_proxy;
pub mod stream;

/// The storage mode the suites written for both modes run in:
/// `OBT_TEST_STORAGE=mysql` for MariaDB, DynamoDB by default (or
/// `dynamodb`), in any letter case. Anything else panics, saying what to
/// set.
pub fn storage_under_test() -> obt_runtime::Storage {
    use obt_runtime::Storage;
    match std::env::var("OBT_TEST_STORAGE") {
        Err(std::env::VarError::NotPresent) => Storage::Dynamodb,
        Ok(value) if value.eq_ignore_ascii_case("dynamodb") => Storage::Dynamodb,
        Ok(value) if value.eq_ignore_ascii_case("mysql") => Storage::Mysql,
        other => panic!("OBT_TEST_STORAGE is dynamodb or mysql, not {other:?}"),
    }
}

/// The SDK configuration for the emulators started by `scripts/test.sh`.
pub async fn aws() -> SdkConfig {
    for var in ["AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"] {
        if std::env::var_os(var).is_none() {
            panic!(
                "{var} is not set: these tests need the emulators. Run them with scripts/test.sh \
                 (which starts DynamoDB Local and fauxqs), or start a stack that stays up with \
                 `scripts/stack.sh up` and `eval \"$(scripts/stack.sh env)\"` before cargo test."
            );
        }
    }
    aws_config::load_from_env().await
}

/// A loopback port that was free a moment ago, for a process to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// A name no other test uses: `prefix` and a random suffix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// A fresh set of the project's tables and queues.
pub struct Stack {
    pub config: SdkConfig,
    pub names: obt_migrate::Names,
    pub stream_arn: String,
    pub queue_url: String,
    pub dead_letter_queue_url: String,
}

impl Stack {
    /// Creates every resource under unique names with `max_receive_count`
    /// receives before the dead-letter queue.
    pub async fn create(max_receive_count: u32) -> Self {
        let config = aws().await;
        let id = unique("t");
        let names = obt_migrate::Names {
            table: format!("{id}-spending"),
            lease_table: format!("{id}-leases"),
            consumer_table: format!("{id}-consumer"),
            idempotency_table: format!("{id}-idempotency"),
            queue: format!("{id}-events.fifo"),
            dead_letter_queue: format!("{id}-dlq.fifo"),
        };
        let overrides = obt_migrate::Overrides {
            max_receive_count: Some(max_receive_count),
            visibility_timeout_secs: Some(5),
            // TTL on hundreds of test tables slows DynamoDB Local down
            // (see the field's documentation); the tests need none of it.
            skip_time_to_live: true,
        };
        let report = obt_migrate::apply(&config, &names, &overrides)
            .await
            .unwrap_or_else(|e| panic!("creating the test stack failed: {e}"));
        Self {
            config,
            names,
            stream_arn: report.stream_arn,
            queue_url: report.queue_url,
            dead_letter_queue_url: report.dead_letter_queue_url,
        }
    }

    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.config)
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.config)
    }

    /// The environment that points a service binary at this stack.
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OBT_TABLE", self.names.table.clone()),
            ("OBT_LEASE_TABLE", self.names.lease_table.clone()),
            ("OBT_CONSUMER_TABLE", self.names.consumer_table.clone()),
            (
                "OBT_IDEMPOTENCY_TABLE",
                self.names.idempotency_table.clone(),
            ),
            ("OBT_QUEUE_NAME", self.names.queue.clone()),
        ]
    }
}

/// Waits, up to `deadline`, until the api at `api_url` answers
/// `/health/ready` with a success (its store reachable, its keys loaded).
pub async fn api_ready(http: &reqwest::Client, api_url: &str, deadline: Duration) {
    eventually("the api to be ready", deadline, || async {
        let response = http
            .get(format!("{api_url}/health/ready"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(response.status().to_string())
        }
    })
    .await;
}

/// Polls `check` until it returns `Some`, or panics after `deadline` with
/// `what` and the last value seen by `describe`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// The path of one of the workspace's binaries, built by `cargo build` into
/// the same target directory as the running test.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the binaries first (cargo build --workspace --bins), as scripts/test.sh does",
        path.display()
    );
    path
}

/// A service binary running as a child process; SIGKILLed when dropped.
pub struct Service {
    pub name: String,
    child: Child,
}

impl Service {
    /// Starts `name` with the current environment plus `env`. Its log
    /// goes to the test's stderr, at `warn` unless `RUST_LOG` (in `env`, or
    /// the test's own) says otherwise (`RUST_LOG=info scripts/test.sh` to
    /// see everything).
    pub fn start(name: &str, env: &[(&str, String)]) -> Self {
        Self::spawn(name, env, None)
    }

    /// [`Service::start`] with the log (stderr) written to the file `log`
    /// instead, for a test to read.
    pub fn start_logging_to(name: &str, env: &[(&str, String)], log: &std::path::Path) -> Self {
        let file = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("creating the log {}: {e}", log.display()));
        Self::spawn(name, env, Some(file))
    }

    fn spawn(name: &str, env: &[(&str, String)], log: Option<std::fs::File>) -> Self {
        let mut command = Command::new(bin_path(name));
        if let Some(log) = log {
            command.stderr(log);
        }
        command
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            // A test's own RUST_LOG (to read a log line) wins.
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the service is running")
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("SIGKILL the service");
    }

    /// SIGTERM, then waits for the exit status (SIGKILL after `deadline`).
    pub async fn terminate(mut self, deadline: Duration) -> std::process::ExitStatus {
        let pid = self.pid();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => status.expect("wait for the service"),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!("{} did not exit within {deadline:?} of SIGTERM", self.name)
            }
        }
    }

    /// Whether the process has exited on its own.
    pub fn try_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// An identity no other test uses, starting with `prefix`.
pub fn identity(prefix: &str) -> Identity {
    let unique = unique(prefix);
    Identity::parse(&unique[..unique.len().min(Identity::MAX_LEN)]).expect("a valid identity")
}

/// A `SpendingRecorded` event of `identity` at `seq` for `amount`.
pub fn event(identity: &Identity, seq: u64, amount: &str) -> Envelope {
    Envelope::spending_recorded(
        identity.clone(),
        seq,
        SpendingRecorded {
            name: PersonName::parse(&format!("Name{seq}")).expect("valid"),
            surname: PersonName::parse("Surname").expect("valid"),
            amount: Amount::parse(amount).expect("a valid amount"),
        },
    )
}

/// Publishes `event` as the relay does (group = identity, deduplication
/// id = event id).
pub async fn send(stack: &Stack, event: &Envelope) {
    send_raw(
        stack,
        event.identity.as_str(),
        &event.event_id.to_string(),
        &event.encode(),
    )
    .await;
}

/// Publishes any body under any group and deduplication id.
pub async fn send_raw(stack: &Stack, group: &str, deduplication_id: &str, body: &str) {
    stack
        .sqs()
        .send_message()
        .queue_url(&stack.queue_url)
        .message_group_id(group)
        .message_deduplication_id(deduplication_id)
        .message_body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("SendMessage: {}", DisplayErrorContext(&e)));
}

/// One `ReceiveMessage` of up to 10 messages of `queue_url`, waiting at
/// most a second; the messages carry their group id.
pub async fn receive(stack: &Stack, queue_url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let out = stack
        .sqs()
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .send()
        .await
        .unwrap_or_else(|e| panic!("ReceiveMessage: {}", DisplayErrorContext(&e)));
    out.messages.unwrap_or_default()
}

/// Receives and deletes messages of `queue_url` until `count` came; their
/// bodies in the order received. Panics after `deadline`.
pub async fn drain(
    stack: &Stack,
    queue_url: &str,
    count: usize,
    deadline: Duration,
) -> Vec<String> {
    let started = Instant::now();
    let mut bodies = Vec::new();
    while bodies.len() < count {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {count} messages; got {bodies:?}"
        );
        for message in receive(stack, queue_url).await {
            stack
                .sqs()
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(message.receipt_handle.unwrap_or_default())
                .send()
                .await
                .unwrap_or_else(|e| panic!("DeleteMessage: {}", DisplayErrorContext(&e)));
            bodies.push(message.body.unwrap_or_default());
        }
    }
    bodies
}

/// Whether `queue_url` hands out nothing within a one-second long poll.
pub async fn receives_nothing(stack: &Stack, queue_url: &str) -> bool {
    receive(stack, queue_url).await.is_empty()
}

/// A message of the dead-letter queue: (group, body).
pub async fn receive_dead_letter(stack: &Stack, deadline: Duration) -> (String, String) {
    eventually("a message in the dead-letter queue", deadline, || async {
        let message = receive(stack, &stack.dead_letter_queue_url)
            .await
            .into_iter()
            .next()
            .ok_or("none yet")?;
        let group = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
            .cloned()
            .unwrap_or_default();
        Ok((group, message.body.unwrap_or_default()))
    })
    .await
}
