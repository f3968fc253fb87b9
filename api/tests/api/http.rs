//! The cross-cutting HTTP behaviour: health probes, request ids, errors
//! outside the routes, the request id in every log line of a request.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use obt_api::StoreOptions;
use obt_runtime::Storage;
use obt_testkit::Stack;

use crate::helpers::{SpawnedApp, TestApp, runs_in, send};

#[tokio::test]
async fn the_liveness_probe_answers_ok() {
    let app = TestApp::new().await;
    let response = app.get("/health/live").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn the_readiness_probe_answers_ok_when_the_database_answers() {
    let app = TestApp::new().await;
    let response = app.get("/health/ready").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(response.json["status"], "ok");
}

/// DynamoDB only; in MySQL, see `mysql.rs`.
#[tokio::test]
async fn the_readiness_probe_answers_503_when_the_table_does_not_exist() {
    if !runs_in(Storage::Dynamodb, "a DynamoDB table") {
        return;
    }
    let stack = Stack::create(3).await;
    let router = obt_api::app(crate::helpers::state(
        stack.dynamodb(),
        &obt_testkit::unique("missing"),
        StoreOptions::default(),
    ));
    let response = send(&router, crate::helpers::get_request("/health/ready")).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json["status"], "unavailable");
    assert_eq!(
        response.errors("dynamodb"),
        ["the database does not answer"]
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let app = TestApp::new().await;
    let response = app.get("/api/v1/nothing").await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(
        response.json,
        serde_json::json!({"errors": {"path": ["not found"]}})
    );

    let response = app
        .request(
            Request::delete("/api/v1/spending/AB1")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response.json,
        serde_json::json!({"errors": {"method": ["method not allowed"]}})
    );
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_client_one_is_echoed() {
    let app = TestApp::new().await;
    let server = SpawnedApp::start(&app.settings(), app.state(StoreOptions::default()).await).await;
    let client = reqwest::Client::new();

    for (method, path) in [
        ("GET", "/health/live"),
        ("GET", "/api/v1/spending/NOBODY"),
        ("POST", "/api/v1/spending"),
    ] {
        let request = match method {
            "GET" => client.get(server.url(path)),
            _ => client
                .post(server.url(path))
                .header("content-type", "text/plain"),
        };
        let response = request.send().await.expect("the api answers");
        let id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no x-request-id"));
        uuid::Uuid::parse_str(id)
            .unwrap_or_else(|e| panic!("{method} {path}: {id} is not a UUID: {e}"));
    }

    let first = client
        .get(server.url("/health/live"))
        .send()
        .await
        .expect("answers");
    let second = client
        .get(server.url("/health/live"))
        .send()
        .await
        .expect("answers");
    assert_ne!(
        first.headers()["x-request-id"],
        second.headers()["x-request-id"],
        "a new id each time"
    );

    let echoed = client
        .get(server.url("/health/live"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .expect("answers");
    assert_eq!(echoed.headers()["x-request-id"], "client-chosen-42");
}
