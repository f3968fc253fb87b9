//! Builds the api over a fresh, real database and talks to it.
//!
//! The database is the one `OBT_TEST_STORAGE` names: `dynamodb` (the
//! default: DynamoDB Local) or `mysql` (the MariaDB server of
//! `scripts/test.sh`; needs `--features mysql`). The same tests then check
//! the same HTTP contract against either backend. A test of what only one
//! backend has starts with [`runs_in`], and passes without doing anything
//! in the other mode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, Select};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use obt_api::{AppState, Application, DynamoDbStore, RetryPolicy, Settings, StoreOptions};
use obt_contract::Envelope;
use obt_runtime::Storage;
use obt_runtime::args::TableArgs;
use obt_testkit::Stack;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tower::ServiceExt;

use crate::proxy::{DynamoProxy, holding_proxy};

pub type Item = HashMap<String, AttributeValue>;

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The backend the tests run against (`OBT_TEST_STORAGE`, read by the
/// testkit).
pub fn mode() -> Storage {
    let storage = obt_testkit::storage_under_test();
    if storage == Storage::Mysql && cfg!(not(feature = "mysql")) {
        panic!("OBT_TEST_STORAGE=mysql needs the api's MySQL backend: add --features mysql");
    }
    storage
}

/// Whether the tests run against `storage`; when not, says why the test
/// that asked has nothing to check.
pub fn runs_in(storage: Storage, why: &str) -> bool {
    let mode = mode();
    if mode != storage {
        eprintln!("nothing to check in {mode:?} mode: {why}");
    }
    mode == storage
}

/// A fresh database of the mode's backend (boxed: the two differ in size).
pub enum Backend {
    DynamoDb(Box<Stack>),
    #[cfg(feature = "mysql")]
    MySql(Box<crate::mysql_backend::MySqlBackend>),
}

impl Backend {
    pub async fn create() -> Self {
        match mode() {
            Storage::Dynamodb => Self::DynamoDb(Box::new(Stack::create(3).await)),
            #[cfg(feature = "mysql")]
            Storage::Mysql => {
                Self::MySql(Box::new(crate::mysql_backend::MySqlBackend::create().await))
            }
            #[cfg(not(feature = "mysql"))]
            Storage::Mysql => unreachable!("mode() refuses mysql in this build"),
        }
    }
}

/// The api's router over its own fresh database.
pub struct TestApp {
    pub backend: Backend,
    pub router: Router,
}

/// An answer, with the body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl TestResponse {
    pub async fn from(response: axum::response::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body is readable")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a 503 that tells the client to come back after
    /// `retry_after` seconds, with `message` as the server's one error.
    #[track_caller]
    pub fn assert_retry_later(&self, retry_after: &str, message: &str) {
        assert_eq!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            self.text
        );
        assert_eq!(self.header("retry-after"), Some(retry_after));
        assert_eq!(self.errors("server"), [message]);
    }

    /// The messages about `field` in an error answer.
    pub fn errors(&self, field: &str) -> Vec<String> {
        self.json["errors"][field]
            .as_array()
            .map(|messages| {
                messages
                    .iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A DynamoDB store on `table` through `client`.
pub fn state(client: aws_sdk_dynamodb::Client, table: &str, options: StoreOptions) -> AppState {
    AppState::new(DynamoDbStore::new(client, table, options), REQUEST_TIMEOUT)
}

/// A state with its own DynamoDB store (and so its own locks) on `stack`'s
/// table, like a second process.
pub fn state_on(stack: &Stack, options: StoreOptions) -> AppState {
    state_through(stack.dynamodb(), stack, options)
}

/// A DynamoDB store on `stack`'s tables (its Idempotency-Key table too)
/// through `client`.
pub fn state_through(
    client: aws_sdk_dynamodb::Client,
    stack: &Stack,
    options: StoreOptions,
) -> AppState {
    let store = DynamoDbStore::new(client, &stack.names.table, options)
        .with_idempotency_table(&stack.names.idempotency_table);
    AppState::new(store, REQUEST_TIMEOUT)
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with_options(StoreOptions::default()).await
    }

    pub async fn with_options(options: StoreOptions) -> Self {
        Self::on(Backend::create().await, options).await
    }

    /// The api over a fresh database of the mode's backend, with a state
    /// that `customize` made from the default one (authentication, a rate
    /// limit).
    pub async fn with_state(customize: impl FnOnce(AppState) -> AppState) -> Self {
        let backend = Backend::create().await;
        let state = customize(state_of(&backend, StoreOptions::default()).await);
        Self {
            router: obt_api::app(state),
            backend,
        }
    }

    /// The api on MySQL whatever the mode, for the MySQL backend's own
    /// tests.
    #[cfg(feature = "mysql")]
    pub async fn mysql(options: StoreOptions) -> Self {
        let backend = Backend::MySql(Box::new(crate::mysql_backend::MySqlBackend::create().await));
        Self::on(backend, options).await
    }

    async fn on(backend: Backend, options: StoreOptions) -> Self {
        let router = obt_api::app(state_of(&backend, options).await);
        Self { backend, router }
    }

    /// A state with its own store (its own locks, its own connections) on
    /// this app's database, like a second process.
    pub async fn state(&self, options: StoreOptions) -> AppState {
        state_of(&self.backend, options).await
    }

    /// Settings of a server on a free port of the loopback, on this app's
    /// database.
    pub fn settings(&self) -> Settings {
        match &self.backend {
            Backend::DynamoDb(stack) => Settings {
                idempotency_table: stack.names.idempotency_table.clone(),
                ..settings(&stack.names.table)
            },
            #[cfg(feature = "mysql")]
            Backend::MySql(mysql) => mysql.settings(),
        }
    }

    /// The DynamoDB stack, for tests that begin with
    /// `runs_in(Storage::Dynamodb, ..)`.
    pub fn stack(&self) -> &Stack {
        match &self.backend {
            Backend::DynamoDb(stack) => stack,
            #[cfg(feature = "mysql")]
            Backend::MySql(_) => panic!("a DynamoDB test ran in MySQL mode"),
        }
    }

    /// The MySQL database, for tests of the MySQL backend.
    #[cfg(feature = "mysql")]
    pub fn db(&self) -> &crate::mysql_backend::MySqlBackend {
        match &self.backend {
            Backend::MySql(mysql) => mysql,
            Backend::DynamoDb(_) => panic!("a MySQL test ran in DynamoDB mode"),
        }
    }

    pub async fn request(&self, request: Request<Body>) -> TestResponse {
        send(&self.router, request).await
    }

    pub async fn post_json(&self, body: &str) -> TestResponse {
        send(&self.router, post_request(Some("application/json"), body)).await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        send(&self.router, get_request(path)).await
    }

    /// How many records the database holds: items in DynamoDB; rows of
    /// `obt_identity`, `obt_spending` and `obt` together in MySQL.
    pub async fn stored_count(&self) -> i64 {
        match &self.backend {
            Backend::DynamoDb(stack) => i64::from(item_count(stack).await),
            #[cfg(feature = "mysql")]
            Backend::MySql(mysql) => mysql.stored_count().await,
        }
    }

    /// The events of `identity` waiting in the outbox for the relay, in
    /// seq order, read as the relay reads them.
    pub async fn outbox_events(&self, identity: &str) -> Vec<Envelope> {
        match &self.backend {
            Backend::DynamoDb(stack) => {
                let Some(item) = item(stack, identity).await else {
                    return Vec::new();
                };
                let mut events: Vec<Envelope> = outbox(&item)
                    .iter()
                    .map(|(key, value)| {
                        let event: Envelope =
                            serde_dynamo::aws_sdk_dynamodb_1::from_attribute_value(value.clone())
                                .expect("an envelope");
                        assert_eq!(
                            event.seq.to_string(),
                            *key,
                            "an event is stored under its own seq"
                        );
                        event
                    })
                    .collect();
                events.sort_by_key(|e| e.seq);
                events
            }
            #[cfg(feature = "mysql")]
            Backend::MySql(mysql) => mysql.outbox_events(identity).await,
        }
    }

    /// Stores an Idempotency-Key record as it is laid out in the table
    /// (key, fingerprint, `response_location`, `response_body`), unexpired
    /// for an hour: a record of another build.
    pub async fn put_key_record(&self, record: &KeyRecord) {
        match &self.backend {
            Backend::DynamoDb(stack) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs();
                let s = |v: &str| AttributeValue::S(v.to_owned());
                let n = |v: u64| AttributeValue::N(v.to_string());
                stack
                    .dynamodb()
                    .put_item()
                    .table_name(&stack.names.idempotency_table)
                    .item("idempotency_key", s(&record.key))
                    .item("fingerprint", s(&record.fingerprint))
                    .item("response_location", s(&record.location))
                    .item("response_body", s(&record.body))
                    .item("created_at", n(now))
                    .item("expires_at", n(now + 3600))
                    .send()
                    .await
                    .expect("put a key record");
            }
            #[cfg(feature = "mysql")]
            Backend::MySql(mysql) => mysql.put_key_record(record).await,
        }
    }

    /// The Idempotency-Key record of `key` as stored, if any.
    pub async fn key_record(&self, key: &str) -> Option<KeyRecord> {
        match &self.backend {
            Backend::DynamoDb(stack) => {
                let item = stack
                    .dynamodb()
                    .get_item()
                    .table_name(&stack.names.idempotency_table)
                    .key("idempotency_key", AttributeValue::S(key.to_owned()))
                    .consistent_read(true)
                    .send()
                    .await
                    .expect("read a key record")
                    .item?;
                let s = |attr: &str| match item.get(attr) {
                    Some(AttributeValue::S(s)) => s.clone(),
                    other => panic!("{attr} is not a string: {other:?}"),
                };
                Some(KeyRecord {
                    key: s("idempotency_key"),
                    fingerprint: s("fingerprint"),
                    location: s("response_location"),
                    body: s("response_body"),
                })
            }
            #[cfg(feature = "mysql")]
            Backend::MySql(mysql) => mysql.key_record(key).await,
        }
    }

    /// Removes an event from the outbox, as the relay does once it
    /// published it.
    pub async fn remove_published(&self, identity: &str, seq: u64) {
        match &self.backend {
            Backend::DynamoDb(stack) => remove_from_outbox(stack, identity, seq).await,
            #[cfg(feature = "mysql")]
            Backend::MySql(mysql) => mysql.remove_published(identity, seq).await,
        }
    }

    /// A state whose writes of `identity` are held at the database until
    /// the test lets them go: DynamoDB, a proxy holds each TransactWriteItems;
    /// MySQL, another session holds the identity's row lock.
    pub async fn hold_writes(&self, identity: &str, options: StoreOptions) -> HeldWrites {
        match &self.backend {
            Backend::DynamoDb(stack) => {
                // The proxy holds every write, whatever its identity.
                let _ = identity;
                let (proxy, arrived, gate) = holding_proxy().await;
                HeldWrites {
                    state: crate::proxy::state(&proxy, stack, options),
                    held: Held::DynamoDb {
                        _proxy: proxy,
                        arrived,
                        gate,
                    },
                }
            }
            #[cfg(feature = "mysql")]
            Backend::MySql(mysql) => HeldWrites {
                state: mysql.state(options).await,
                held: Held::MySql(mysql.lock_row(identity).await),
            },
        }
    }
}

async fn state_of(backend: &Backend, options: StoreOptions) -> AppState {
    match backend {
        Backend::DynamoDb(stack) => state_on(stack, options),
        #[cfg(feature = "mysql")]
        Backend::MySql(mysql) => mysql.state(options).await,
    }
}

/// An Idempotency-Key record, as the tables hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub key: String,
    pub fingerprint: String,
    pub location: String,
    pub body: String,
}

/// See [`TestApp::hold_writes`].
pub struct HeldWrites {
    /// Its store's writes are held.
    pub state: AppState,
    held: Held,
}

enum Held {
    DynamoDb {
        _proxy: DynamoProxy,
        arrived: mpsc::UnboundedReceiver<()>,
        gate: Arc<Semaphore>,
    },
    #[cfg(feature = "mysql")]
    MySql(crate::mysql_backend::RowLock),
}

impl HeldWrites {
    /// Waits until a write reached the database and is held there.
    pub async fn arrived(&mut self) {
        match &mut self.held {
            Held::DynamoDb { arrived, .. } => {
                tokio::time::timeout(Duration::from_secs(10), arrived.recv())
                    .await
                    .expect("the write reaches DynamoDB")
                    .expect("the proxy is running");
            }
            #[cfg(feature = "mysql")]
            Held::MySql(lock) => lock.waited_for().await,
        }
    }

    /// Lets the held writes go on, and every later one.
    pub async fn release(&mut self) {
        match &mut self.held {
            Held::DynamoDb { gate, .. } => gate.close(),
            #[cfg(feature = "mysql")]
            Held::MySql(lock) => lock.release().await,
        }
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> TestResponse {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    TestResponse::from(response).await
}

pub fn post_request(content_type: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::post("/api/v1/spending");
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder
        .body(Body::from(body.to_owned()))
        .expect("a valid request")
}

pub fn get_request(path: &str) -> Request<Body> {
    Request::get(path)
        .body(Body::empty())
        .expect("a valid request")
}

/// A request body for a spending.
pub fn spending(identity: &str, name: &str, amount: &str) -> String {
    format!(r#"{{"identity":"{identity}","name":"{name}","surname":"Robi","amount":{amount}}}"#)
}

/// The default store options with `max_retries` retries of a lost race.
pub fn retries(max_retries: u32) -> StoreOptions {
    StoreOptions {
        retry: RetryPolicy {
            max_retries,
            ..RetryPolicy::default()
        },
        ..StoreOptions::default()
    }
}

/// How many items the api's table holds (a consistent scan).
pub async fn item_count(stack: &Stack) -> i32 {
    stack
        .dynamodb()
        .scan()
        .table_name(&stack.names.table)
        .select(Select::Count)
        .consistent_read(true)
        .send()
        .await
        .expect("scan the table")
        .count()
}

pub use obt_testkit::outbox::item;

/// Removes outbox entries the way the relay does after publishing them.
pub async fn remove_from_outbox(stack: &Stack, identity: &str, seq: u64) {
    stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S(identity.to_owned()))
        .update_expression("REMOVE #outbox.#k")
        .expression_attribute_names("#outbox", "outbox")
        .expression_attribute_names("#k", seq.to_string())
        .send()
        .await
        .expect("remove an outbox entry");
}

/// A number attribute, normalized (`"102.60"` and `"102.6"` are one
/// number, and DynamoDB implementations differ in which they return).
pub fn number(item: &Item, attr: &str) -> String {
    match item.get(attr) {
        Some(AttributeValue::N(n)) => {
            let value: rust_decimal::Decimal =
                n.parse().unwrap_or_else(|e| panic!("{attr} = {n}: {e}"));
            value.normalize().to_string()
        }
        other => panic!("{attr} is not a number: {other:?}"),
    }
}

pub fn outbox(item: &Item) -> &HashMap<String, AttributeValue> {
    match item.get("outbox") {
        Some(AttributeValue::M(map)) => map,
        other => panic!("outbox is not a map: {other:?}"),
    }
}

/// Settings for a server on a free port of the loopback.
pub fn settings(table: &str) -> Settings {
    Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        table: TableArgs {
            table: table.to_owned(),
        },
        ..Settings::defaults()
    }
}

/// The real server on a free port, stopped when dropped or by `stop`.
pub struct SpawnedApp {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl SpawnedApp {
    pub async fn start(settings: &Settings, state: AppState) -> Self {
        let app = Application::bind(settings, state)
            .await
            .expect("bind a free port");
        Self::run(app)
    }

    /// Runs an application already built.
    pub fn run(app: Application) -> Self {
        let addr = app.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            // A dropped sender stops the server too.
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends the shutdown signal.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
