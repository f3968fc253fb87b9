//! How many DynamoDB requests a POST costs: one in the common case
//! (docs/ARCHITECTURE.md, "One request per POST"). The api remembers each
//! item's version under the identity's lock and conditions its one
//! TransactWriteItems on it; a condition that fails returns the item
//! (`ALL_OLD`), so that what the api did not know costs one more write,
//! never a read, and never a wrong `seq`.
//!
//! A proxy in front of DynamoDB Local records the operation of every
//! request; the api's code is the production code. DynamoDB only: MySQL
//! writes in one transaction of several statements.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use obt_api::StoreOptions;
use obt_runtime::Storage;

use crate::helpers::{
    TestApp, TestResponse, item, number, outbox, post_request, runs_in, send, spending, state_on,
};
use crate::proxy::DynamoProxy;
use obt_testkit::dynamo_proxy::Recorded;

const WRITE: &str = "TransactWriteItems";

/// An api instance whose every DynamoDB request goes through a proxy that
/// records its operation.
struct Counted {
    router: Router,
    operations: Recorded,
    _proxy: DynamoProxy,
}

impl Counted {
    async fn on(app: &TestApp, options: StoreOptions) -> Self {
        let (proxy, operations) = DynamoProxy::recording().await;
        let router = obt_api::app(crate::proxy::state(&proxy, app.stack(), options));
        Self {
            router,
            operations,
            _proxy: proxy,
        }
    }

    /// Sends `request` and returns its answer with the DynamoDB operations
    /// it cost.
    async fn send(&self, request: Request<Body>) -> (TestResponse, Vec<String>) {
        self.operations.clear();
        let response = send(&self.router, request).await;
        let operations = self.operations.operations();
        (response, operations)
    }
}

fn keyed(key: &str, body: &str) -> Request<Body> {
    Request::post("/api/v1/spending")
        .header("content-type", "application/json")
        .header("Idempotency-Key", key)
        .body(Body::from(body.to_owned()))
        .expect("a valid request")
}

fn unkeyed(body: &str) -> Request<Body> {
    post_request(Some("application/json"), body)
}

#[tokio::test]
async fn a_post_is_one_transact_write_items_with_or_without_a_key() {
    if !runs_in(Storage::Dynamodb, "counts DynamoDB requests") {
        return;
    }
    let app = TestApp::new().await;
    let api = Counted::on(&app, StoreOptions::default()).await;

    // A new identity: the write is conditioned on the item's absence.
    let (first, operations) = api
        .send(keyed("k-1", &spending("AB1", "Martin", "1")))
        .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.json["seq"], 1);
    assert_eq!(operations, [WRITE], "a new identity's first POST");

    // The version this instance wrote is the one it conditions on next.
    for seq in 2..=4 {
        let (response, operations) = api
            .send(keyed(&format!("k-{seq}"), &spending("AB1", "Martin", "1")))
            .await;
        assert_eq!(response.json["seq"], seq, "{}", response.text);
        assert_eq!(operations, [WRITE], "POST {seq} of a known identity");
    }
    let (response, operations) = api.send(unkeyed(&spending("AB1", "Martin", "1"))).await;
    assert_eq!(response.json["seq"], 5, "{}", response.text);
    assert_eq!(operations, [WRITE], "a POST without a key");
}

#[tokio::test]
async fn an_instance_that_did_not_know_the_item_writes_at_the_version_the_failed_condition_returned()
 {
    if !runs_in(Storage::Dynamodb, "counts DynamoDB requests") {
        return;
    }
    let app = TestApp::new().await;
    // Another instance (another process, or this one before a restart)
    // recorded two spendings.
    let other = obt_api::app(state_on(app.stack(), StoreOptions::default()));
    for _ in 0..2 {
        let response = send(&other, unkeyed(&spending("AB1", "Other", "1"))).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    }
    let api = Counted::on(&app, StoreOptions::default()).await;

    let (response, operations) = api
        .send(keyed("k-1", &spending("AB1", "Martin", "2")))
        .await;

    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    assert_eq!(response.json["seq"], 3, "after the other instance's two");
    assert_eq!(
        operations,
        [WRITE, WRITE],
        "the write conditioned on absence fails and returns the item; no read"
    );
    // And the next is one request again. The other instance writes once
    // more in between: its stale memory costs it one more write.
    let (response, operations) = api.send(unkeyed(&spending("AB1", "Martin", "2"))).await;
    assert_eq!(response.json["seq"], 4, "{}", response.text);
    assert_eq!(operations, [WRITE]);
    let response = send(&other, unkeyed(&spending("AB1", "Other", "1"))).await;
    assert_eq!(response.json["seq"], 5, "{}", response.text);

    let item = item(app.stack(), "AB1").await.expect("the item exists");
    assert_eq!(number(&item, "version"), "5");
    assert_eq!(number(&item, "count"), "5");
    assert_eq!(number(&item, "total"), "7");
    let mut seqs: Vec<u64> = outbox(&item)
        .keys()
        .map(|k| k.parse().expect("seq keys"))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "one event per spending, no gap");
}

#[tokio::test]
async fn a_replay_takes_the_key_record_from_the_cancelled_write() {
    if !runs_in(Storage::Dynamodb, "counts DynamoDB requests") {
        return;
    }
    let app = TestApp::new().await;
    let body = spending("AB1", "Martin", "51.3");
    let first = Counted::on(&app, StoreOptions::default()).await;
    let (created, _) = first.send(keyed("k-1", &body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);

    // The same instance (it knows the version), and another one (it does
    // not): either way the key's failed condition returned its record.
    let other = Counted::on(&app, StoreOptions::default()).await;
    for api in [&first, &other] {
        let (replayed, operations) = api.send(keyed("k-1", &body)).await;
        assert_eq!(replayed.status, StatusCode::CREATED, "{}", replayed.text);
        assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
        assert_eq!(replayed.json, created.json, "the first answer");
        assert_eq!(operations, [WRITE], "no read of the key's record");
    }
    let item = item(app.stack(), "AB1").await.expect("the item exists");
    assert_eq!(number(&item, "count"), "1", "recorded once");
}

#[tokio::test]
async fn a_full_outbox_is_told_by_the_failed_write_alone() {
    if !runs_in(Storage::Dynamodb, "MySQL's outbox is not bounded") {
        return;
    }
    let app = TestApp::new().await;
    let options = StoreOptions {
        max_pending_events: 2,
        ..StoreOptions::default()
    };
    let api = Counted::on(&app, options).await;
    for seq in 1..=2 {
        let (response, _) = api.send(unkeyed(&spending("AB1", "Martin", "1"))).await;
        assert_eq!(response.json["seq"], seq, "{}", response.text);
    }

    let (refused, operations) = api.send(unkeyed(&spending("AB1", "Martin", "1"))).await;

    refused.assert_retry_later(
        "5",
        "too many events of this identity are waiting to be published; retry later",
    );
    assert_eq!(
        operations,
        [WRITE],
        "the returned item is at the version written against: the outbox is full"
    );
    // An instance that did not know the item learns its version first.
    let other = Counted::on(&app, options).await;
    let (refused, operations) = other.send(unkeyed(&spending("AB1", "Martin", "1"))).await;
    refused.assert_retry_later(
        "5",
        "too many events of this identity are waiting to be published; retry later",
    );
    assert_eq!(operations, [WRITE, WRITE]);
    let item = item(app.stack(), "AB1").await.expect("the item exists");
    assert_eq!(
        number(&item, "version"),
        "2",
        "the refused requests wrote nothing"
    );
}
