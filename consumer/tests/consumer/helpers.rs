//! What the tests share: a fresh [`TestStack`] in the backend under test,
//! a consumer running in-process against it, events, sending, reading the
//! queue and the consumer's records, and the consumer's log lines.

use std::io::Write;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use std::collections::BTreeMap;

use obt_consumer::parking::ParkedIdentity;
use obt_consumer::{
    AppliedIdentity, Consumer, DatabaseUrl, IdentityHead, Ledger, LedgerReader, Records, RunError,
    Settings, StorageArgs,
};
use obt_contract::Identity;
use obt_runtime::args::QueueArgs;
use obt_testkit::Stack;
use obt_testkit::mysql::Backend;
pub use obt_testkit::{event, identity, send, send_raw};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing_subscriber::EnvFilter;

/// The consumer's log lines, captured for the test that installed it.
///
/// It is the default subscriber of the test's thread only; the consumer
/// carries it into the tasks it spawns, so that tests running in parallel
/// each see their own consumer's logs. Printed when the test fails.
pub struct Logs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn capture() -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info,obt_consumer=debug"))
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// The lines that contain every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- the consumer's logs ----\n{}", self.text());
        }
    }
}

/// Fresh queues and consumer records (a DynamoDB table, or a MySQL
/// database with its least-privilege user) in the backend under test,
/// which the testkit's [`Backend`] picks from `OBT_TEST_STORAGE`
/// (`scripts/test.sh` runs the suite in both modes). Dereferences to the
/// [`Stack`] of the queues.
pub struct TestStack {
    backend: Backend,
    /// The consumer's records, opened as the consumer opens them: the
    /// tests write and read them through it.
    records: Records,
}

impl Deref for TestStack {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        self.backend.stack()
    }
}

impl TestStack {
    /// Creates everything with `max_receive_count` receives before the
    /// dead-letter queue.
    pub async fn create(max_receive_count: u32) -> Self {
        let backend = Backend::create(max_receive_count).await;
        let storage = storage_args(&backend);
        let records =
            obt_consumer::store::open(&backend.stack().config, &storage, 2, "consumer tests")
                .await
                .unwrap_or_else(|e| panic!("opening the consumer's records: {e}"));
        Self { backend, records }
    }

    /// The consumer's storage settings for this stack.
    pub fn storage_args(&self) -> StorageArgs {
        storage_args(&self.backend)
    }

    /// The environment of the consumer binary (and `consumer-show`) on
    /// this stack.
    pub fn consumer_env(&self) -> Vec<(&'static str, String)> {
        self.backend.env("consumer")
    }

    /// The address of the consumer's records: DynamoDB Local's, or the
    /// MariaDB server's.
    pub fn records_addr(&self) -> std::net::SocketAddr {
        let url = match &self.backend {
            Backend::DynamoDb(_) => std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
                .expect("AWS_ENDPOINT_URL_DYNAMODB is set (scripts/test.sh)"),
            Backend::MySql(mysql) => mysql.urls.consumer_url.clone(),
        };
        host_port(&url)
            .parse()
            .unwrap_or_else(|e| panic!("the records' address in {url:?}: {e}"))
    }

    /// The consumer's records reached through `addr` (a fault proxy)
    /// instead of their own address, opened as the consumer opens them.
    pub async fn ledger_through(&self, addr: std::net::SocketAddr) -> Arc<dyn Ledger> {
        match &self.backend {
            Backend::DynamoDb(stack) => {
                let config = aws_sdk_dynamodb::config::Builder::from(&stack.config)
                    .endpoint_url(format!("http://{addr}"))
                    .build();
                Arc::new(obt_consumer::DynamoDbLedger::new(
                    aws_sdk_dynamodb::Client::from_conf(config),
                    &stack.names.consumer_table,
                ))
            }
            #[cfg(feature = "mysql")]
            Backend::MySql(mysql) => {
                let url = &mysql.urls.consumer_url;
                let url = url.replacen(host_port(url), &addr.to_string(), 1);
                Arc::new(
                    obt_consumer::MySqlLedger::connect(
                        &url,
                        4,
                        Duration::from_secs(2),
                        obt_runtime::mysql::IDLE_SESSION_TIMEOUT,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("opening the records through {addr}: {e}")),
                )
            }
            #[cfg(not(feature = "mysql"))]
            Backend::MySql(_) => panic!("OBT_TEST_STORAGE=mysql needs --features mysql"),
        }
    }

    /// The write path of the records.
    pub fn ledger(&self) -> &dyn Ledger {
        self.records.ledger().as_ref()
    }

    /// The read path of the records.
    pub fn reader(&self) -> &dyn LedgerReader {
        self.records.reader().as_ref()
    }

    /// Every identity's head, as the consumer recorded them.
    pub async fn heads(&self) -> Vec<IdentityHead> {
        self.reader()
            .list_identities()
            .await
            .unwrap_or_else(|e| panic!("listing the identities: {e}"))
    }
}

/// `HOST:PORT` of a URL (`scheme://[user:password@]HOST:PORT[/path]`).
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

fn storage_args(backend: &Backend) -> StorageArgs {
    match backend {
        Backend::DynamoDb(stack) => StorageArgs::dynamodb(&stack.names.consumer_table),
        Backend::MySql(mysql) => {
            StorageArgs::mysql(DatabaseUrl::new(mysql.urls.consumer_url.clone()))
        }
    }
}

/// A consumer running in-process, the way the binary runs it.
pub struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RunError>>,
}

impl Running {
    /// The settings the tests run with: the stack's queue (found by name,
    /// as in production) and records.
    pub fn settings(stack: &TestStack) -> Settings {
        Settings {
            queue: QueueArgs {
                queue_url: None,
                queue_name: stack.names.queue.clone(),
            },
            storage: stack.storage_args(),
            ..Settings::defaults()
        }
    }

    pub async fn start(stack: &TestStack) -> Self {
        let consumer = Consumer::connect(&stack.config, &Self::settings(stack))
            .await
            .unwrap_or_else(|e| panic!("starting the consumer: {e}"));
        Self::spawn(consumer)
    }

    /// Runs `consumer` as the binary runs it.
    pub fn spawn(consumer: Consumer) -> Self {
        let shutdown = CancellationToken::new();
        let serve = consumer.serve(shutdown.clone().cancelled_owned(), Duration::from_secs(20));
        let task = tokio::spawn(serve.with_current_subscriber());
        Self { shutdown, task }
    }

    /// Shuts down as on SIGTERM and checks that it went cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(25), self.task)
            .await
            .expect("the consumer stops within its grace period")
            .expect("the consumer task does not panic");
        result.unwrap_or_else(|e| panic!("the consumer stopped with an error: {e}"));
    }
}

pub async fn load(stack: &TestStack, identity: &Identity) -> Option<AppliedIdentity> {
    stack
        .reader()
        .load_identity(identity.as_str())
        .await
        .unwrap_or_else(|e| panic!("loading {identity}: {e}"))
}

/// Waits until `identity`'s head has reached `seq`.
pub async fn wait_applied(
    stack: &TestStack,
    identity: &Identity,
    seq: u64,
    deadline: Duration,
) -> AppliedIdentity {
    obt_testkit::eventually(
        &format!("{identity} to reach seq {seq}"),
        deadline,
        || async {
            match load(stack, identity).await {
                Some(applied) if applied.last_seq >= seq => Ok(applied),
                other => Err(format!("{:?}", other.map(|a| a.last_seq))),
            }
        },
    )
    .await
}

/// (visible, in flight) messages of the main queue.
pub async fn queue_depth(stack: &Stack) -> (u64, u64) {
    let out = stack
        .sqs()
        .get_queue_attributes()
        .queue_url(&stack.queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "GetQueueAttributes: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        });
    let count = |name: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the queue reports {name:?}"))
    };
    (
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

pub async fn wait_queue_empty(stack: &Stack, deadline: Duration) {
    obt_testkit::eventually(
        "the queue to be empty, nothing in flight",
        deadline,
        || async {
            match queue_depth(stack).await {
                (0, 0) => Ok(()),
                depth => Err(format!("(visible, in flight) = {depth:?}")),
            }
        },
    )
    .await
}

/// Waits until `identity` is parked.
pub async fn wait_parked(
    stack: &TestStack,
    identity: &Identity,
    deadline: Duration,
) -> ParkedIdentity {
    obt_testkit::eventually(&format!("{identity} to be parked"), deadline, || async {
        let parked = stack
            .reader()
            .list_parked()
            .await
            .map_err(|e| e.to_string())?;
        parked
            .into_iter()
            .find(|p| p.identity == identity.as_str())
            .ok_or_else(|| "not parked".to_owned())
    })
    .await
}

/// Waits until `identity` is not parked (any more).
pub async fn wait_unparked(stack: &TestStack, identity: &Identity, deadline: Duration) {
    obt_testkit::eventually(&format!("{identity} to be unparked"), deadline, || async {
        let parked = stack
            .reader()
            .list_parked()
            .await
            .map_err(|e| e.to_string())?;
        match parked.iter().find(|p| p.identity == identity.as_str()) {
            Some(p) => Err(format!("parked: {:?}", p.parking)),
            None => Ok(()),
        }
    })
    .await
}

/// Waits until `count` events are held for `identity`.
pub async fn wait_held(stack: &TestStack, identity: &Identity, count: usize, deadline: Duration) {
    obt_testkit::eventually(
        &format!("{count} events of {identity} held"),
        deadline,
        || async {
            match stack.ledger().held(identity.as_str()).await {
                Ok(held) if held.len() == count => Ok(()),
                Ok(held) => Err(format!(
                    "held: {:?}",
                    held.iter().map(|e| e.seq).collect::<Vec<_>>()
                )),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

/// A message of a dead-letter queue, with its message attributes.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub group: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
}

impl DeadLetter {
    /// A message attribute's value, or "" when it has none.
    pub fn attribute(&self, name: &str) -> &str {
        self.attributes.get(name).map_or("", String::as_str)
    }
}

/// Every message of the dead-letter queue at `url` (up to 10), left there:
/// received with a visibility timeout of 0.
pub async fn receive_dead_letters(stack: &Stack, url: &str) -> Vec<DeadLetter> {
    let out = stack
        .sqs()
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .visibility_timeout(0)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId,
        )
        .message_attribute_names("All")
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "ReceiveMessage: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )
        });
    out.messages
        .unwrap_or_default()
        .into_iter()
        .map(|m| DeadLetter {
            group: m
                .attributes()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
                })
                .cloned()
                .unwrap_or_default(),
            attributes: m
                .message_attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            body: m.body.unwrap_or_default(),
        })
        .collect()
}
