//! An HTTP proxy between a service and fauxqs that makes `SendMessageBatch`
//! partial failures real: entries picked by a rule are taken out of the
//! batch before it is forwarded and reported back as failed, exactly as SQS
//! answers when it accepts some entries of a batch and not others. Every
//! other call goes through untouched.
//!
//! It also records every entry SQS accepted through it, in order: what was
//! published, as the service's SDK saw it confirmed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Decides, for one entry of a `SendMessageBatch` (its JSON: `Id`,
/// `MessageBody`, `MessageGroupId`, ...) at a position in the batch,
/// whether to fail it.
pub type Rule = Box<dyn FnMut(&Value, usize) -> bool + Send>;

/// Picks, among the entries a [`Rule`] fails, those refused for good.
pub type ForGood = Box<dyn Fn(&Value) -> bool + Send>;

/// An entry SQS accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub group: String,
    pub body: String,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    rule: Mutex<Rule>,
    /// The code and `SenderFault` of a failed entry.
    failure: Mutex<(String, bool)>,
    /// The failed entries refused for good whatever `failure` says.
    for_good: Mutex<Option<ForGood>>,
    failed: AtomicUsize,
    accepted: Mutex<Vec<Accepted>>,
}

/// A running proxy; stopped when dropped.
pub struct SqsProxy {
    /// Where to point the service (`AWS_ENDPOINT_URL_SQS`, or an SDK
    /// client's endpoint).
    pub url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl SqsProxy {
    /// A proxy in front of the fauxqs of `AWS_ENDPOINT_URL_SQS`, failing
    /// the entries `rule` picks.
    pub async fn start(rule: impl FnMut(&Value, usize) -> bool + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            upstream: std::env::var("AWS_ENDPOINT_URL_SQS").expect(
                "AWS_ENDPOINT_URL_SQS points at fauxqs (run the tests with scripts/test.sh)",
            ),
            http: reqwest::Client::new(),
            rule: Mutex::new(Box::new(rule)),
            failure: Mutex::new(("InternalError".to_owned(), false)),
            for_good: Mutex::new(None),
            failed: AtomicUsize::new(0),
            accepted: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let router = Router::new().fallback(forward).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url,
            shared,
            server,
        }
    }

    /// Replaces the rule (from the next batch on).
    pub fn set_rule(&self, rule: impl FnMut(&Value, usize) -> bool + Send + 'static) {
        *self.shared.rule.lock().unwrap_or_else(|p| p.into_inner()) = Box::new(rule);
    }

    /// Fails the entries the rule picks as SQS refuses a message for its
    /// content, for good: `InvalidMessageContents` with `SenderFault`
    /// (by default they fail as `InternalError`, which may pass).
    pub fn refuse_for_good(&self) {
        *self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ("InvalidMessageContents".to_owned(), true);
    }

    /// Of the entries the rule fails, those `pick` names are refused for
    /// good (as [`SqsProxy::refuse_for_good`]); the others fail as before:
    /// a batch with both kinds of failure.
    pub fn refuse_for_good_when(&self, pick: impl Fn(&Value) -> bool + Send + 'static) {
        *self
            .shared
            .for_good
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(pick));
    }

    /// Fails nothing from now on.
    pub fn heal(&self) {
        self.set_rule(|_, _| false);
    }

    /// How many entries the proxy failed so far.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Every entry SQS accepted through the proxy, in the order accepted.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared
            .accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for SqsProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn bad_gateway(message: String) -> Response {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return bad_gateway("cannot read the request".to_owned());
    };
    let is_batch = target.ends_with(".SendMessageBatch");

    // Take the entries the rule picks out of the batch.
    let mut failed: Vec<Value> = Vec::new();
    let mut forwarded: Vec<Value> = Vec::new();
    let mut upstream_body = body.to_vec();
    if is_batch {
        let Ok(mut document) = serde_json::from_slice::<Value>(&body) else {
            return bad_gateway("the SDK sent a SendMessageBatch that is not JSON".to_owned());
        };
        let entries = document["Entries"].as_array().cloned().unwrap_or_default();
        {
            let mut rule = shared.rule.lock().unwrap_or_else(|p| p.into_inner());
            for (position, entry) in entries.into_iter().enumerate() {
                if rule(&entry, position) {
                    failed.push(entry);
                } else {
                    forwarded.push(entry);
                }
            }
        }
        shared.failed.fetch_add(failed.len(), Ordering::SeqCst);
        document["Entries"] = Value::Array(forwarded.clone());
        upstream_body = document.to_string().into_bytes();
    }

    let (status, headers, mut answer) = if is_batch && forwarded.is_empty() {
        // SQS refuses an empty batch: answer for it.
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "content-type",
            axum::http::HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        (
            StatusCode::OK,
            headers,
            json!({ "Successful": [], "Failed": [] })
                .to_string()
                .into_bytes(),
        )
    } else {
        let mut upstream = shared
            .http
            .post(format!("{}{}", shared.upstream, parts.uri.path()))
            .body(upstream_body);
        for (name, value) in &parts.headers {
            if name != "host" && name != "content-length" {
                upstream = upstream.header(name, value);
            }
        }
        let answer = match upstream.send().await {
            Ok(answer) => answer,
            Err(e) => return bad_gateway(format!("fauxqs did not answer: {e}")),
        };
        let status = answer.status();
        let headers = answer.headers().clone();
        match answer.bytes().await {
            Ok(bytes) => (status, headers, bytes.to_vec()),
            Err(e) => return bad_gateway(format!("fauxqs's answer was cut: {e}")),
        }
    };

    if is_batch && status.is_success() {
        let Ok(mut document) = serde_json::from_slice::<Value>(&answer) else {
            return bad_gateway("fauxqs answered a SendMessageBatch with no JSON".to_owned());
        };
        record_accepted(&shared, &forwarded, &document);
        let (code, sender_fault) = shared
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let for_good = shared.for_good.lock().unwrap_or_else(|p| p.into_inner());
        for entry in &failed {
            let (code, sender_fault) = match &*for_good {
                Some(pick) if pick(entry) => ("InvalidMessageContents", true),
                _ => (code.as_str(), sender_fault),
            };
            let failure = json!({
                "Id": entry["Id"],
                "SenderFault": sender_fault,
                "Code": code,
                "Message": "injected by the test proxy",
            });
            match document["Failed"].as_array_mut() {
                Some(list) => list.push(failure),
                None => document["Failed"] = json!([failure]),
            }
        }
        answer = document.to_string().into_bytes();
    }

    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(answer))
        .unwrap_or_else(|e| bad_gateway(format!("cannot build the response: {e}")))
}

fn record_accepted(shared: &Shared, forwarded: &[Value], answer: &Value) {
    let successful: Vec<&str> = answer["Successful"]
        .as_array()
        .map(|list| list.iter().filter_map(|s| s["Id"].as_str()).collect())
        .unwrap_or_default();
    let mut accepted = shared.accepted.lock().unwrap_or_else(|p| p.into_inner());
    for entry in forwarded {
        if entry["Id"]
            .as_str()
            .is_some_and(|id| successful.contains(&id))
        {
            accepted.push(Accepted {
                group: entry["MessageGroupId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                body: entry["MessageBody"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
}
