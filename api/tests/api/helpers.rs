//! Builds the api over a fresh, real DynamoDB Local table and talks to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, Select};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use obt_api::{AppState, Application, Settings, SpendingStore, StoreOptions};
use obt_testkit::Stack;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

pub type Item = HashMap<String, AttributeValue>;

pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The api's router over its own fresh table.
pub struct TestApp {
    pub stack: Stack,
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

/// A store on `stack`'s table through `client`.
pub fn state(client: aws_sdk_dynamodb::Client, table: &str, options: StoreOptions) -> AppState {
    AppState::new(SpendingStore::new(client, table, options), REQUEST_TIMEOUT)
}

/// A state with its own store (and so its own locks) on `stack`'s table,
/// like a second process.
pub fn state_on(stack: &Stack, options: StoreOptions) -> AppState {
    state(stack.dynamodb(), &stack.names.table, options)
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with_options(StoreOptions::default()).await
    }

    pub async fn with_options(options: StoreOptions) -> Self {
        let stack = Stack::create(3).await;
        let router = obt_api::app(state_on(&stack, options));
        Self { stack, router }
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

    pub async fn item_count(&self) -> i32 {
        item_count(&self.stack).await
    }

    pub async fn item(&self, identity: &str) -> Option<Item> {
        item(&self.stack, identity).await
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

pub async fn item(stack: &Stack, identity: &str) -> Option<Item> {
    stack
        .dynamodb()
        .get_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S(identity.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get the item")
        .item
}

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
        table: table.to_owned(),
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
