//! Every log line of a request carries its request id and its trace id
//! (the caller's, from `traceparent`).
//!
//! A test binary of its own: it installs the global subscriber, and tracing
//! caches per call site whether anyone listens, which tests running in
//! parallel threads with different subscribers would disturb.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use obt_api::{AppState, DynamoDbStore, StoreOptions};
use obt_testkit::Stack;
use tower::ServiceExt;
use tracing_subscriber::fmt::MakeWriter;

/// Log output collected in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id_and_trace_id() {
    let captured = Captured::default();
    tracing_subscriber::fmt()
        .with_env_filter("obt_api=debug,tower_http=debug")
        .with_ansi(false)
        .with_writer(captured.clone())
        .init();
    let stack = Stack::create(3).await;
    let store = DynamoDbStore::new(
        stack.dynamodb(),
        &stack.names.table,
        StoreOptions::default(),
    );
    let router = obt_api::app(AppState::new(store, Duration::from_secs(30)));

    let request = Request::post("/api/v1/spending")
        .header("content-type", "application/json")
        .header("x-request-id", "trace-me-7")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::from(
            r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":1}"#,
        ))
        .expect("a valid request");
    let response = router
        .oneshot(request)
        .await
        .expect("the router is infallible");
    assert_eq!(response.status(), StatusCode::CREATED);

    let output =
        String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    let lines: Vec<&str> = output.lines().collect();
    for expected in [
        "obt_api::store",
        "started processing request",
        "finished processing request",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "no line with {expected:?} in:\n{output}"
        );
    }
    for line in lines {
        assert!(
            line.contains("request_id=trace-me-7"),
            "a line without the request id: {line}"
        );
        assert!(
            line.contains("trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "a line without the caller's trace id: {line}"
        );
    }
}
