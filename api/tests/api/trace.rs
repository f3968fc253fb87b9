//! W3C trace context on `POST /api/v1/spending`: the event joins the
//! caller's trace (`traceparent`), or a new one when there is none or it is
//! not valid (never an error); a replay changes nothing. In both storage
//! modes, read from the outbox as the relay reads it.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use obt_contract::Envelope;

use crate::helpers::{TestApp, TestResponse, spending};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

async fn post_with(app: &TestApp, headers: &[(&str, &str)], body: &str) -> TestResponse {
    let mut builder = Request::post("/api/v1/spending").header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Body::from(body.to_owned()))
        .expect("a valid request");
    app.request(request).await
}

async fn only_event(app: &TestApp, identity: &str) -> Envelope {
    let mut events = app.outbox_events(identity).await;
    assert_eq!(events.len(), 1, "{events:?}");
    events.remove(0)
}

#[tokio::test]
async fn the_event_joins_the_callers_trace_with_the_request_as_its_parent() {
    let app = TestApp::new().await;
    let response = post_with(
        &app,
        &[
            ("traceparent", &traceparent()),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
        &spending("TR1", "Martin", "5"),
    )
    .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);

    let trace = only_event(&app, "TR1")
        .await
        .trace
        .expect("a trace context");
    assert_eq!(trace.traceparent.trace_id_hex(), TRACE_ID);
    assert_ne!(
        trace.traceparent.parent_id_hex(),
        PARENT_ID,
        "the parent of what follows is the api's request, not its caller"
    );
    assert!(trace.traceparent.sampled());
    assert_eq!(
        trace.tracestate.as_ref().map(|s| s.as_str()),
        Some("congo=t61rcWkgMzE")
    );
}

#[tokio::test]
async fn without_a_valid_traceparent_the_request_starts_a_trace_and_is_not_refused() {
    let app = TestApp::new().await;
    let invalid = [
        None,
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
        Some("garbage"),
    ];
    let mut trace_ids = Vec::new();
    for (i, value) in invalid.into_iter().enumerate() {
        let identity = format!("TR-NEW-{i}");
        let headers: Vec<(&str, &str)> = value
            .into_iter()
            .map(|v| ("traceparent", v))
            .chain([("tracestate", "congo=t61rcWkgMzE")])
            .collect();
        let response = post_with(&app, &headers, &spending(&identity, "Martin", "5")).await;
        assert_eq!(
            response.status,
            StatusCode::CREATED,
            "{value:?}: {}",
            response.text
        );

        let trace = only_event(&app, &identity)
            .await
            .trace
            .expect("a new trace");
        assert_ne!(trace.traceparent.trace_id_hex(), TRACE_ID, "{value:?}");
        assert_eq!(
            trace.tracestate, None,
            "{value:?}: no tracestate without its traceparent"
        );
        trace_ids.push(trace.traceparent.trace_id());
    }
    trace_ids.sort_unstable();
    trace_ids.dedup();
    assert_eq!(trace_ids.len(), 7, "each request a trace of its own");
}

#[tokio::test]
async fn a_replay_in_another_trace_answers_as_the_first_and_changes_no_event() {
    let app = TestApp::new().await;
    let body = spending("TR-KEY", "Martin", "5");
    let key = ("Idempotency-Key", "0b7c3f9e-1f51-4b43-9d3e-7a8e2f0b1c2d");
    let first = post_with(&app, &[key, ("traceparent", &traceparent())], &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    let other = "00-11111111111111111111111111111111-2222222222222222-01";
    let replay = post_with(&app, &[key, ("traceparent", other)], &body).await;
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.text, first.text, "the replay is the first answer");

    let trace = only_event(&app, "TR-KEY").await.trace.expect("a trace");
    assert_eq!(trace.traceparent.trace_id_hex(), TRACE_ID);
}
