//! Conflicts and DynamoDB failures, made to happen at an exact point by a
//! proxy in front of DynamoDB Local (see `proxy.rs`): deterministic, and
//! the api's code is the production code.
//!
//! DynamoDB only: MySQL's failures are in `mysql.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use obt_api::StoreOptions;
use obt_runtime::Storage;

use crate::helpers::{
    TestApp, TestResponse, item_count, number, outbox, post_request, retries, runs_in, send,
    spending, state_on,
};
use crate::proxy::{DynamoProxy, dynamodb_error, hook};

/// The DynamoDB operation of the api's one write of a spending.
const WRITE: &str = "TransactWriteItems";

/// A proxy that, before forwarding each of the first `races` writes
/// it sees, has another instance of the api record a spending for `AB1`,
/// so that the write it then forwards finds the version changed.
async fn racing_proxy(app: &TestApp, races: u32) -> (DynamoProxy, Arc<AtomicU32>) {
    let other = obt_api::app(state_on(app.stack(), StoreOptions::default()));
    let raced = Arc::new(AtomicU32::new(0));
    let counter = raced.clone();
    let proxy = DynamoProxy::start(hook(move |operation| {
        let other = other.clone();
        let counter = counter.clone();
        async move {
            if operation == WRITE && counter.fetch_add(1, Ordering::SeqCst) < races {
                let response = send(
                    &other,
                    post_request(Some("application/json"), &spending("AB1", "Winner", "1")),
                )
                .await;
                assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
            }
            None
        }
    }))
    .await;
    (proxy, raced)
}

#[tokio::test]
async fn a_write_that_loses_every_race_is_answered_503_with_retry_after_and_writes_nothing() {
    if !runs_in(
        Storage::Dynamodb,
        "faults injected between the api and DynamoDB",
    ) {
        return;
    }
    let app = TestApp::new().await;
    let (proxy, raced) = racing_proxy(&app, u32::MAX).await;
    let loser = obt_api::app(crate::proxy::state(&proxy, app.stack(), retries(2)));

    let response = send(
        &loser,
        post_request(Some("application/json"), &spending("AB1", "Loser", "7")),
    )
    .await;

    response.assert_retry_later(
        "1",
        "too many concurrent writes for this identity; retry later",
    );
    // The loser knew nothing of the item, so its first write, conditioned
    // on the item's absence, told it the version; that is not a lost race.
    // Then the first attempt at a known version, and 2 retries.
    assert_eq!(
        raced.load(Ordering::SeqCst),
        4,
        "the write that learnt the version, then 1 attempt and 2 retries"
    );
    let item = crate::helpers::item(app.stack(), "AB1")
        .await
        .expect("the other instance wrote");
    assert_eq!(
        number(&item, "count"),
        "4",
        "only the other instance's spendings"
    );
    assert_eq!(number(&item, "total"), "4");
    let names: Vec<String> = outbox(&item)
        .values()
        .map(|event| format!("{event:?}"))
        .filter(|event| event.contains("Loser"))
        .collect();
    assert!(
        names.is_empty(),
        "the losing event is not in the outbox: {names:?}"
    );
}

#[tokio::test]
async fn a_write_that_loses_a_race_is_retried_and_takes_the_next_seq() {
    if !runs_in(
        Storage::Dynamodb,
        "faults injected between the api and DynamoDB",
    ) {
        return;
    }
    let app = TestApp::new().await;
    let (proxy, raced) = racing_proxy(&app, 2).await;
    let retrying = obt_api::app(crate::proxy::state(&proxy, app.stack(), retries(2)));

    let response = send(
        &retrying,
        post_request(Some("application/json"), &spending("AB1", "Patient", "7")),
    )
    .await;

    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    assert_eq!(
        response.json["seq"], 3,
        "after the two spendings that won the races"
    );
    assert_eq!(raced.load(Ordering::SeqCst), 3);
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 3);
    assert_eq!(summary.json["total"], "9.00");
    assert_eq!(summary.json["name"], "Patient");
}

/// POSTs a spending through a proxy that answers every write with
/// the DynamoDB error `error_type` carrying `message`.
async fn post_against_failing_writes(
    app: &TestApp,
    error_type: &'static str,
    message: &'static str,
) -> TestResponse {
    let proxy = DynamoProxy::start(hook(move |operation| async move {
        (operation == WRITE).then(|| dynamodb_error(StatusCode::BAD_REQUEST, error_type, message))
    }))
    .await;
    let failing = obt_api::app(crate::proxy::state(&proxy, app.stack(), retries(2)));
    send(
        &failing,
        post_request(Some("application/json"), &spending("AB1", "Martin", "1")),
    )
    .await
}

#[tokio::test]
async fn a_failing_database_is_a_500_that_tells_nothing_internal() {
    if !runs_in(
        Storage::Dynamodb,
        "faults injected between the api and DynamoDB",
    ) {
        return;
    }
    let app = TestApp::new().await;
    let response =
        post_against_failing_writes(&app, "ValidationException", "secret internal detail").await;

    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.json,
        serde_json::json!({"errors": {"server": ["internal error"]}})
    );
    assert!(!response.text.contains("secret"));
    assert_eq!(item_count(app.stack()).await, 0);
}

#[tokio::test]
async fn a_throttled_write_is_a_503_with_retry_after() {
    if !runs_in(
        Storage::Dynamodb,
        "faults injected between the api and DynamoDB",
    ) {
        return;
    }
    let app = TestApp::new().await;
    let response =
        post_against_failing_writes(&app, "ProvisionedThroughputExceededException", "slow down")
            .await;

    response.assert_retry_later("1", "the database is busy; retry later");
    assert_eq!(item_count(app.stack()).await, 0);
}

/// The write reaches DynamoDB and commits, but its answer is lost (a 500
/// instead): the SDK sends the same request again. That retry must not
/// record the spending a second time: the write carries its event id as
/// the transaction's ClientRequestToken, so DynamoDB answers the retry as
/// it answered the first, without writing. (A plain conditional
/// UpdateItem would fail its version condition on the retry, look like a
/// lost race, and be recorded again at the next seq.)
#[tokio::test]
async fn a_committed_write_whose_answer_is_lost_is_not_recorded_twice() {
    if !runs_in(
        Storage::Dynamodb,
        "faults injected between the api and DynamoDB",
    ) {
        return;
    }
    let app = TestApp::new().await;
    let lost = Arc::new(AtomicU32::new(0));
    let counter = lost.clone();
    let after: crate::proxy::AfterHook = Arc::new(move |operation| {
        (operation == WRITE && counter.fetch_add(1, Ordering::SeqCst) == 0).then(|| {
            dynamodb_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalServerError",
                "the answer was lost",
            )
        })
    });
    let proxy = DynamoProxy::start_with(hook(|_| async { None }), Some(after)).await;
    let api = obt_api::app(crate::helpers::state_through(
        proxy.retrying_client(app.stack()),
        app.stack(),
        retries(2),
    ));

    let response = send(
        &api,
        post_request(Some("application/json"), &spending("AB1", "Once", "7")),
    )
    .await;

    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    assert_eq!(response.json["seq"], 1);
    assert!(
        lost.load(Ordering::SeqCst) >= 2,
        "the SDK sent the write again"
    );
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 1, "{}", summary.text);
    assert_eq!(summary.json["total"], "7.00");
    assert_eq!(app.outbox_events("AB1").await.len(), 1);
}

/// DynamoDB refuses connections: the read before the write gets no answer,
/// so nothing was written, and the api says so: 503 with Retry-After, like
/// MySQL's unreachable database, not a 500 that leaves the client unsure.
#[tokio::test]
async fn an_unreachable_dynamodb_is_a_503_with_retry_after_for_posts_and_gets() {
    if !runs_in(
        Storage::Dynamodb,
        "faults injected between the api and DynamoDB",
    ) {
        return;
    }
    let app = TestApp::new().await;
    // A port that was free a moment ago: connections to it are refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        listener.local_addr().expect("its address")
    };
    let config = aws_sdk_dynamodb::config::Builder::from(&app.stack().config)
        .endpoint_url(format!("http://{closed}"))
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .build();
    let api = obt_api::app(crate::helpers::state_through(
        aws_sdk_dynamodb::Client::from_conf(config),
        app.stack(),
        retries(2),
    ));

    let post = send(
        &api,
        post_request(Some("application/json"), &spending("AB1", "Martin", "1")),
    )
    .await;
    post.assert_retry_later("5", "the database is unavailable; retry later");
    let get = send(&api, crate::helpers::get_request("/api/v1/spending/AB1")).await;
    get.assert_retry_later("5", "the database is unavailable; retry later");
    assert_eq!(item_count(app.stack()).await, 0);
}

/// The write reaches DynamoDB and commits, but its answer never comes back
/// (the client's attempt timeout gives up), and every later attempt is
/// throttled. The last error alone says "throttled, nothing written"; but
/// the first attempt may have committed, and did: a 503 ("nothing was
/// recorded, send it again") would be false, and a retry without the key
/// would record the spending twice. The answer is 500; the client's retry
/// with its Idempotency-Key then gets the original 201.
#[tokio::test]
async fn a_committed_write_whose_answer_is_lost_and_whose_retries_are_throttled_is_a_500() {
    if !runs_in(
        Storage::Dynamodb,
        "faults injected between the api and DynamoDB",
    ) {
        return;
    }
    let app = TestApp::new().await;
    let writes = Arc::new(AtomicU32::new(0));
    let healed = Arc::new(AtomicBool::new(false));
    let (counter, heal) = (writes.clone(), healed.clone());
    let before = hook(move |operation| {
        let first = operation == WRITE && counter.fetch_add(1, Ordering::SeqCst) == 0;
        let throttle = operation == WRITE && !first && !heal.load(Ordering::SeqCst);
        async move {
            throttle.then(|| {
                dynamodb_error(
                    StatusCode::BAD_REQUEST,
                    "ProvisionedThroughputExceededException",
                    "slow down",
                )
            })
        }
    });
    let lost = Arc::new(AtomicU32::new(0));
    let lost_counter = lost.clone();
    let after: crate::proxy::AfterHook = Arc::new(move |operation| {
        (operation == WRITE && lost_counter.fetch_add(1, Ordering::SeqCst) == 0)
            .then(crate::proxy::lost_answer)
    });
    let proxy = DynamoProxy::start_with(before, Some(after)).await;
    // The SDK's standard retries (3 attempts), each attempt bounded.
    let config = obt_runtime::with_attempt_timeout(&app.stack().config, Duration::from_secs(1));
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .endpoint_url(&proxy.url)
            .build(),
    );
    let api = obt_api::app(crate::helpers::state_through(
        client,
        app.stack(),
        retries(2),
    ));
    let post = || {
        let mut request = post_request(Some("application/json"), &spending("AB1", "Once", "7"));
        request.headers_mut().insert(
            "idempotency-key",
            HeaderValue::from_static("lost-then-throttled"),
        );
        request
    };

    let response = send(&api, post()).await;

    assert_eq!(
        response.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        response.text
    );
    assert_eq!(
        response.json,
        serde_json::json!({"errors": {"server": ["internal error"]}})
    );
    assert_eq!(response.header("retry-after"), None);
    assert_eq!(
        writes.load(Ordering::SeqCst),
        3,
        "the committed attempt and two throttled ones"
    );
    assert_eq!(lost.load(Ordering::SeqCst), 1, "one write reached DynamoDB");
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 1, "recorded once: {}", summary.text);
    assert_eq!(summary.json["total"], "7.00");
    let events = app.outbox_events("AB1").await;
    assert_eq!(events.len(), 1, "{events:?}");

    healed.store(true, Ordering::SeqCst);
    let retry = send(&api, post()).await;

    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json["seq"], 1);
    assert_eq!(
        retry.json["event_id"].as_str(),
        Some(events[0].event_id.to_string().as_str()),
        "the answer of the write that committed"
    );
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 1, "{}", summary.text);
    assert_eq!(app.outbox_events("AB1").await.len(), 1);
}
