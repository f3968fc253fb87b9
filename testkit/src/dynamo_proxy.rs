//! A pass-through HTTP proxy in front of DynamoDB Local, with a hook that
//! runs before each request and may answer instead of DynamoDB, and one
//! that may replace DynamoDB's answer.
//!
//! It lets a test put something at an exact point between a service's
//! requests (another instance's write between a read and a write; a
//! request held until the test lets it go; an error answer; an answer
//! replaced or lost after the write committed) without any test hook in
//! the service's code: the service under test is unchanged, only its
//! DynamoDB endpoint differs. (`fault_proxy` works on bytes; this one on
//! DynamoDB calls.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::Stack;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type HookFuture = Pin<Box<dyn Future<Output = Option<Response>> + Send>>;
/// Called with the DynamoDB operation (`GetItem`, `UpdateItem`, ...) of
/// each request; `Some` is answered instead of forwarding.
pub type Hook = Arc<dyn Fn(String) -> HookFuture + Send + Sync>;
/// Called with the operation of each forwarded request once DynamoDB has
/// answered it; `Some` goes to the client instead of DynamoDB's answer
/// (which is lost: what the request did stays done). [`lost_answer`]
/// sends the client nothing at all.
pub type AfterHook = Arc<dyn Fn(&str) -> Option<Response> + Send + Sync>;

/// Marks the response of [`lost_answer`].
#[derive(Clone, Copy)]
struct LostAnswer;

/// For an [`AfterHook`]: the client gets no answer, ever, as when the answer
/// is lost on the network after the request did its work. The client's
/// own attempt timeout ends its wait; DynamoDB's answer is dropped.
pub fn lost_answer() -> Response {
    let mut response = Response::new(Body::empty());
    response.extensions_mut().insert(LostAnswer);
    response
}

struct Inner {
    upstream: String,
    client: reqwest::Client,
    hook: Hook,
    after: Option<AfterHook>,
}

pub struct DynamoProxy {
    pub url: String,
    task: JoinHandle<()>,
}

impl Drop for DynamoProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DynamoProxy {
    pub async fn start(hook: Hook) -> Self {
        Self::start_with(hook, None).await
    }

    /// A proxy whose `after` hook may replace DynamoDB's answers.
    pub async fn start_with(hook: Hook, after: Option<AfterHook>) -> Self {
        let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
            .expect("AWS_ENDPOINT_URL_DYNAMODB points at DynamoDB Local");
        let inner = Arc::new(Inner {
            upstream,
            client: reqwest::Client::new(),
            hook,
            after,
        });
        let router = Router::new().fallback(forward).with_state(inner);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("the proxy's address")
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { url, task }
    }

    /// A DynamoDB client for `stack` that goes through this proxy and
    /// never retries on its own (so that an injected error is final).
    pub fn client(&self, stack: &Stack) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::config::Builder::from(&stack.config)
            .endpoint_url(&self.url)
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// A DynamoDB client for `stack` through this proxy with the SDK's
    /// standard retries, as the api runs with.
    pub fn retrying_client(&self, stack: &Stack) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::config::Builder::from(&stack.config)
            .endpoint_url(&self.url)
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }
}

/// The operations a [`DynamoProxy::recording`] proxy forwarded, in order.
#[derive(Debug, Clone, Default)]
pub struct Recorded(Arc<std::sync::Mutex<Vec<String>>>);

impl Recorded {
    /// Every operation so far.
    pub fn operations(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many of them were `operation`.
    pub fn count(&self, operation: &str) -> usize {
        self.operations().iter().filter(|o| *o == operation).count()
    }

    /// Forgets them.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn push(&self, operation: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(operation);
    }
}

impl DynamoProxy {
    /// A proxy that forwards everything and records each operation, for
    /// tests that count the requests something makes.
    pub async fn recording() -> (Self, Recorded) {
        let recorded = Recorded::default();
        let seen = recorded.clone();
        let proxy = Self::start(hook(move |operation| {
            seen.push(operation);
            async { None }
        }))
        .await;
        (proxy, recorded)
    }
}

/// A hook from an async closure.
pub fn hook<F, Fut>(f: F) -> Hook
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Response>> + Send + 'static,
{
    Arc::new(move |operation| Box::pin(f(operation)))
}

/// The error answer DynamoDB gives, with the given `__type`.
pub fn dynamodb_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "__type": format!("com.amazonaws.dynamodb.v20120810#{error_type}"),
        "message": message,
    });
    json_response(status, &body)
}

/// A successful answer with `body`: for example a `BatchExecuteStatement`
/// whose statements were refused one by one (`{"Responses": [{"Error":
/// {"Code": "TransactionConflict", ...}}]}`).
pub fn dynamodb_answer(body: &serde_json::Value) -> Response {
    json_response(StatusCode::OK, body)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    response
}

async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let operation = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|target| target.rsplit('.').next())
        .unwrap_or_default()
        .to_owned();
    if let Some(answer) = (inner.hook)(operation.clone()).await {
        return answer;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("read the request");
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = inner
        .client
        .request(parts.method, format!("{}{path}", inner.upstream));
    for (name, value) in &parts.headers {
        if name != HOST && name != CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream
        .body(body)
        .send()
        .await
        .expect("DynamoDB Local answers");
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.expect("read DynamoDB Local's answer");
    if let Some(replaced) = inner.after.as_ref().and_then(|after| after(&operation)) {
        if replaced.extensions().get::<LostAnswer>().is_some() {
            // Never answers: the client's attempt timeout gives up.
            std::future::pending::<()>().await;
        }
        return replaced;
    }
    response.body(Body::from(bytes)).expect("a valid response")
}
