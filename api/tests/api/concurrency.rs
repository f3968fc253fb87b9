//! Many writers on one identity: seqs stay consecutive, totals exact, and
//! every event is in the outbox, within one process and across two.

use axum::http::StatusCode;
use obt_api::{RetryPolicy, StoreOptions};
use tokio::task::JoinSet;

use crate::helpers::{SpawnedApp, TestApp, send, spending};

#[tokio::test]
async fn twenty_concurrent_posts_for_one_identity_get_seqs_1_to_20() {
    let app = TestApp::new().await;
    let mut posts = JoinSet::new();
    for _ in 0..20 {
        let router = app.router.clone();
        posts.spawn(async move {
            send(
                &router,
                crate::helpers::post_request(
                    Some("application/json"),
                    &spending("AB1", "Martin", "1.05"),
                ),
            )
            .await
        });
    }
    let mut seqs = Vec::new();
    while let Some(response) = posts.join_next().await {
        let response = response.expect("the task ran");
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        seqs.push(response.json["seq"].as_u64().expect("a seq"));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());

    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 20);
    assert_eq!(summary.json["last_seq"], 20);
    assert_eq!(summary.json["total"], "21.00");
    assert_eq!(summary.json["pending_events"], 20);

    let events = app.outbox_events("AB1").await;
    let stored: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(stored, (1..=20).collect::<Vec<u64>>());
}

#[tokio::test]
async fn two_instances_posting_concurrently_still_write_consecutive_seqs() {
    let app = TestApp::new().await;
    // More retries than the other instance has writes: a request cannot
    // lose every race, so the outcome is deterministic.
    let options = StoreOptions {
        retry: RetryPolicy {
            max_retries: 12,
            ..RetryPolicy::default()
        },
        ..StoreOptions::default()
    };
    let settings = app.settings();
    let first = SpawnedApp::start(&settings, app.state(options).await).await;
    let second = SpawnedApp::start(&settings, app.state(options).await).await;
    let client = reqwest::Client::new();

    let mut posts = JoinSet::new();
    for i in 0..20 {
        let url = if i % 2 == 0 {
            first.url("/api/v1/spending")
        } else {
            second.url("/api/v1/spending")
        };
        let request = client
            .post(url)
            .header("content-type", "application/json")
            .body(spending("AB1", "Martin", "2.50"));
        posts.spawn(async move {
            let response = request.send().await.expect("the api answers");
            let status = response.status();
            let json: serde_json::Value = response.json().await.expect("a JSON answer");
            (status, json)
        });
    }
    let mut seqs = Vec::new();
    while let Some(result) = posts.join_next().await {
        let (status, json) = result.expect("the task ran");
        assert_eq!(status, reqwest::StatusCode::CREATED, "{json}");
        seqs.push(json["seq"].as_u64().expect("a seq"));
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<u64>>(),
        "no gap and no duplicate"
    );

    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 20);
    assert_eq!(summary.json["total"], "50.00");
    assert_eq!(summary.json["last_seq"], 20);
    assert_eq!(app.outbox_events("AB1").await.len(), 20);
}
