//! Graceful shutdown: after the signal the server takes no new connection,
//! lets the requests in flight finish, and waits for them no longer than
//! the shutdown timeout. The in-flight request's write is held at the
//! database until the test lets it go (`TestApp::hold_writes`: a proxy in
//! front of DynamoDB, or a row lock in MySQL), so nothing depends on
//! timing.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use obt_api::StoreOptions;
use obt_testkit::eventually;

use crate::helpers::{SpawnedApp, TestApp, post_request, send, spending};

fn post(server: &SpawnedApp) -> tokio::task::JoinHandle<reqwest::Result<reqwest::StatusCode>> {
    let request = reqwest::Client::new()
        .post(server.url("/api/v1/spending"))
        .header("content-type", "application/json")
        .body(spending("AB1", "Martin", "1"));
    tokio::spawn(async move { request.send().await.map(|r| r.status()) })
}

async fn wait_until_refused(addr: std::net::SocketAddr) {
    eventually(
        "the server to refuse new connections",
        Duration::from_secs(10),
        || async move {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => Err("a connection was accepted".to_owned()),
                Err(_) => Ok(()),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn requests_in_flight_finish_after_the_shutdown_signal() {
    let app = TestApp::new().await;
    let mut held = app.hold_writes("AB1", StoreOptions::default()).await;
    let mut server = SpawnedApp::start(&app.settings(), held.state.clone()).await;

    let in_flight = post(&server);
    held.arrived().await;
    server.stop();
    wait_until_refused(server.addr).await;
    assert!(
        !server.task.is_finished(),
        "the server waits for the request in flight"
    );

    held.release().await;
    let status = in_flight
        .await
        .expect("the task ran")
        .expect("the request got an answer");
    assert_eq!(status, reqwest::StatusCode::CREATED);
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("the server stops once the request is answered")
        .expect("the task ran")
        .expect("the server stopped cleanly");
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.status, StatusCode::OK);
    assert_eq!(summary.json["count"], 1);
}

#[tokio::test]
async fn the_shutdown_timeout_bounds_the_wait_for_requests_in_flight() {
    let app = TestApp::new().await;
    let mut held = app.hold_writes("AB1", StoreOptions::default()).await;
    let settings = obt_api::Settings {
        shutdown_timeout_secs: 1,
        ..app.settings()
    };
    let mut server = SpawnedApp::start(&settings, held.state.clone()).await;

    let _stuck = post(&server);
    held.arrived().await;
    let signalled = Instant::now();
    server.stop();
    tokio::time::timeout(Duration::from_secs(10), &mut server.task)
        .await
        .expect("the server gives up on the stuck request")
        .expect("the task ran")
        .expect("the server stopped without an error");
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "it waited for the shutdown timeout first"
    );
    // The stuck write never got past the hold: nothing was written.
    assert_eq!(app.stored_count().await, 0);
}

#[tokio::test]
async fn a_request_over_the_request_timeout_is_answered_504_in_json() {
    let app = TestApp::new().await;
    let held = app.hold_writes("AB1", StoreOptions::default()).await;
    let state = obt_api::AppState {
        request_timeout: Duration::from_secs(1),
        ..held.state.clone()
    };
    let router = obt_api::app(state);

    let response = send(
        &router,
        post_request(Some("application/json"), &spending("AB1", "Martin", "1")),
    )
    .await;

    assert_eq!(
        response.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        response.text
    );
    assert_eq!(
        response.json,
        serde_json::json!({"errors": {"request": ["gateway timeout"]}})
    );
    assert!(response.header("x-request-id").is_some());
    assert_eq!(
        app.stored_count().await,
        0,
        "the held write never reached the database"
    );
}
