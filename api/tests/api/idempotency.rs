//! `Idempotency-Key` on `POST /api/v1/spending`: a retry gets the first
//! answer again and records nothing; the key cannot be reused for another
//! request until it expires; concurrent retries record once; failures keep
//! no key. In both storage modes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use obt_api::StoreOptions;
use obt_api::idempotency::{Fingerprint, INVALID_KEY, KEY_REUSED};
use obt_api::input::NewSpending;
use obt_runtime::Storage;
use obt_testkit::eventually;
use tokio::task::JoinSet;

use crate::helpers::{KeyRecord, TestApp, TestResponse, runs_in, send, spending};

const KEY: &str = "Idempotency-Key";
const REPLAYED: &str = "idempotent-replayed";

fn post_with_keys(keys: &[&[u8]], body: &str) -> Request<Body> {
    let mut builder = Request::post("/api/v1/spending").header("content-type", "application/json");
    for key in keys {
        builder = builder.header(KEY, *key);
    }
    builder
        .body(Body::from(body.to_owned()))
        .expect("a valid request")
}

async fn post_with_key(app: &TestApp, key: &str, body: &str) -> TestResponse {
    app.request(post_with_keys(&[key.as_bytes()], body)).await
}

#[tokio::test]
async fn a_retry_with_the_same_key_replays_the_first_answer_and_records_nothing() {
    let app = TestApp::new().await;
    let key = "8e03978e-40d5-43e8-bc93-6894a57f9324";
    let first = post_with_key(
        &app,
        key,
        r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":51.3}"#,
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(
        first.header(REPLAYED),
        None,
        "the first answer is no replay"
    );

    // The same spending, written differently: the same request.
    let retry = post_with_key(
        &app,
        key,
        r#"{ "amount": "51.30", "surname": "Robi", "name": "Martin", "identity": "AB1" }"#,
    )
    .await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.header(REPLAYED), Some("true"));
    assert_eq!(retry.text, first.text, "the same body, byte for byte");
    assert_eq!(retry.header("location"), Some("/api/v1/spending/AB1"));
    assert_eq!(retry.header("location"), first.header("location"));
    assert_eq!(retry.header("content-type"), Some("application/json"));

    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 1, "{}", summary.text);
    assert_eq!(summary.json["total"], "51.30");
    let events = app.outbox_events("AB1").await;
    assert_eq!(events.len(), 1, "one event to publish: {events:?}");
    assert_eq!(
        events[0].event_id.to_string(),
        first.json["event_id"].as_str().expect("an event id")
    );

    // Without the key, the same body is a new spending.
    let without = app
        .post_json(r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":51.3}"#)
        .await;
    assert_eq!(without.status, StatusCode::CREATED);
    assert_eq!(without.json["seq"], 2);
}

fn fingerprint_of(body: &str) -> String {
    let spending = NewSpending::from_json(body.as_bytes()).expect("a valid spending");
    Fingerprint::of(&spending).as_str().to_owned()
}

/// What the deployed builds stored before the record had a type of its
/// own: the 201 body and its Location.
fn earlier_builds_record(key: &str, body: &str) -> KeyRecord {
    KeyRecord {
        key: key.to_owned(),
        fingerprint: fingerprint_of(body),
        location: "/api/v1/spending/AB1".to_owned(),
        body: r#"{"event_id":"0193b7c4-5f6e-7a1b-8c2d-3e4f5a6b7c8d","identity":"AB1","seq":1,"name":"Martin","surname":"Robi","amount":"51.30","created_at":"2026-11-03T10:15:42.123Z"}"#.to_owned(),
    }
}

#[tokio::test]
async fn a_key_record_of_an_earlier_build_replays_the_same_answer() {
    let app = TestApp::new().await;
    let body = r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":51.3}"#;
    let record = earlier_builds_record("from-the-last-release", body);
    app.put_key_record(&record).await;

    let retry = post_with_key(&app, &record.key, body).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.header(REPLAYED), Some("true"));
    assert_eq!(retry.text, record.body, "the same body, byte for byte");
    assert_eq!(retry.header("location"), Some(record.location.as_str()));
    assert_eq!(retry.header("content-type"), Some("application/json"));
    assert_eq!(app.stored_count().await, 0, "nothing recorded");

    // Another request with the key is refused, as it was.
    let other = post_with_key(&app, &record.key, &spending("AB1", "Martin", "1")).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.text
    );
    assert_eq!(other.errors(KEY), [KEY_REUSED]);
}

#[tokio::test]
async fn a_key_record_is_stored_as_the_earlier_builds_replay_it() {
    // They send the stored body and Location as they are: after a
    // rollback, they still answer a key first used by this build.
    let app = TestApp::new().await;
    let body = spending("AB1", "Martin", "51.3");
    let first = post_with_key(&app, "stored-as-before", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let record = app
        .key_record("stored-as-before")
        .await
        .expect("the key's record");
    assert_eq!(
        record,
        KeyRecord {
            key: "stored-as-before".to_owned(),
            fingerprint: fingerprint_of(&body),
            location: first.header("location").expect("a Location").to_owned(),
            body: first.text.clone(),
        }
    );
}

#[tokio::test]
async fn the_same_key_for_another_request_is_refused_and_writes_nothing() {
    let app = TestApp::new().await;
    let first = post_with_key(&app, "k-1", &spending("AB1", "Martin", "10")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    for other in [
        spending("AB1", "Martin", "10.01"),
        spending("AB1", "Marta", "10"),
        spending("AB2", "Martin", "10"),
    ] {
        let reused = post_with_key(&app, "k-1", &other).await;
        assert_eq!(
            reused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{other}: {}",
            reused.text
        );
        assert_eq!(reused.errors(KEY), [KEY_REUSED], "{}", reused.text);
        assert_eq!(reused.header(REPLAYED), None);
    }
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 1, "{}", summary.text);
    assert_eq!(summary.json["name"], "Martin");
    assert_eq!(app.outbox_events("AB1").await.len(), 1);
    assert_eq!(
        app.get("/api/v1/spending/AB2").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(app.outbox_events("AB2").await.is_empty());

    // Keys are compared exactly: another case is another key.
    let other_key = post_with_key(&app, "K-1", &spending("AB1", "Martin", "10.01")).await;
    assert_eq!(other_key.status, StatusCode::CREATED, "{}", other_key.text);
}

#[tokio::test]
async fn ten_concurrent_requests_with_one_key_record_one_spending() {
    let app = TestApp::new().await;
    // Two stores, like two processes: their requests do not queue on one
    // process's locks.
    let second = obt_api::app(app.state(StoreOptions::default()).await);
    let body = spending("AB1", "Martin", "3.50");
    let mut posts = JoinSet::new();
    for i in 0..10 {
        let router = if i % 2 == 0 {
            app.router.clone()
        } else {
            second.clone()
        };
        let body = body.clone();
        posts.spawn(async move { send(&router, post_with_keys(&[b"one-key"], &body)).await });
    }
    let mut answers = Vec::new();
    while let Some(response) = posts.join_next().await {
        answers.push(response.expect("the task ran"));
    }
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    }
    let first = answers
        .iter()
        .find(|a| a.header(REPLAYED).is_none())
        .expect("one request recorded");
    let recorded = answers
        .iter()
        .filter(|a| a.header(REPLAYED).is_none())
        .count();
    assert_eq!(recorded, 1, "exactly one request recorded");
    for answer in &answers {
        assert_eq!(answer.text, first.text, "every answer is the first one");
        assert_eq!(answer.json["event_id"], first.json["event_id"]);
    }
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 1, "{}", summary.text);
    assert_eq!(app.outbox_events("AB1").await.len(), 1);
}

#[tokio::test]
async fn invalid_keys_are_bad_requests_that_say_what_a_key_may_be() {
    let app = TestApp::new().await;
    let long = vec![b'k'; 256];
    let cases: [(&str, Vec<&[u8]>); 6] = [
        ("empty", vec![b""]),
        ("256 characters", vec![&long]),
        ("a space", vec![b"two words"]),
        ("a tab", vec![b"tab\tkey"]),
        ("non-ASCII", vec!["clé".as_bytes()]),
        ("sent twice", vec![b"k1", b"k1"]),
    ];
    for (what, keys) in cases {
        let response = app
            .request(post_with_keys(&keys, &spending("AB1", "Martin", "1")))
            .await;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(response.errors(KEY), [INVALID_KEY], "{what}");
        assert!(INVALID_KEY.contains("1 to 255 visible ASCII characters"));
    }
    assert_eq!(app.stored_count().await, 0, "nothing was written");
    assert_eq!(
        app.get("/api/v1/spending/AB1").await.status,
        StatusCode::NOT_FOUND
    );
    // The longest key and the whole visible range are fine.
    let longest = "~".repeat(255);
    let ok = post_with_key(&app, &longest, &spending("AB1", "Martin", "1")).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    let visible: String = (0x21u8..=0x7e).map(char::from).collect();
    let ok = post_with_key(&app, &visible, &spending("AB1", "Martin", "1")).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
}

#[tokio::test]
async fn an_expired_key_records_anew() {
    let app = TestApp::with_options(StoreOptions {
        idempotency_ttl: Duration::from_secs(1),
        ..StoreOptions::default()
    })
    .await;
    let first = post_with_key(&app, "short-lived", &spending("AB1", "Martin", "1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    // Another request with the key is refused until the key expires, then
    // recorded.
    let later = eventually("the key to expire", Duration::from_secs(15), || async {
        let response = post_with_key(&app, "short-lived", &spending("AB1", "Martin", "2")).await;
        match response.status {
            StatusCode::CREATED => Ok(response),
            StatusCode::UNPROCESSABLE_ENTITY => Err(response.text),
            other => panic!("unexpected {other}: {}", response.text),
        }
    })
    .await;
    assert_eq!(later.header(REPLAYED), None);
    assert_eq!(later.json["seq"], 2);
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 2, "{}", summary.text);
    assert_eq!(summary.json["total"], "3.00");
    assert_eq!(app.outbox_events("AB1").await.len(), 2);

    // And the key now answers for its new request.
    let retry = post_with_key(&app, "short-lived", &spending("AB1", "Martin", "2")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.header(REPLAYED), Some("true"));
    assert_eq!(retry.text, later.text);
}

#[tokio::test]
async fn a_rejected_request_keeps_no_key() {
    let app = TestApp::new().await;
    let invalid = post_with_key(&app, "k-after-422", &spending("AB1", "", "1")).await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!invalid.errors("name").is_empty(), "{}", invalid.text);

    let valid = post_with_key(&app, "k-after-422", &spending("AB1", "Martin", "1")).await;
    assert_eq!(valid.status, StatusCode::CREATED, "{}", valid.text);
    assert_eq!(valid.header(REPLAYED), None);
    assert_eq!(valid.json["seq"], 1);
    // The key now belongs to the valid request.
    let retry = post_with_key(&app, "k-after-422", &spending("AB1", "Martin", "1")).await;
    assert_eq!(retry.header(REPLAYED), Some("true"), "{}", retry.text);
    assert_eq!(app.outbox_events("AB1").await.len(), 1);
}

#[tokio::test]
async fn a_503_keeps_no_key_and_the_retry_records() {
    if !runs_in(Storage::Dynamodb, "the outbox bound is DynamoDB's") {
        return;
    }
    let app = TestApp::with_options(StoreOptions {
        max_pending_events: 1,
        ..StoreOptions::default()
    })
    .await;
    let first = app.post_json(&spending("AB1", "Martin", "1")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    // The outbox is full: the transaction is cancelled on the item's
    // condition, and the key's Put goes with it.
    let full = post_with_key(&app, "k-503", &spending("AB1", "Martin", "2")).await;
    full.assert_retry_later(
        "5",
        "too many events of this identity are waiting to be published; retry later",
    );
    let stack = app.stack();
    let record = stack
        .dynamodb()
        .get_item()
        .table_name(&stack.names.idempotency_table)
        .key(
            "idempotency_key",
            aws_sdk_dynamodb::types::AttributeValue::S("k-503".to_owned()),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("read the key's record");
    assert!(record.item.is_none(), "a key record without its spending");

    // The relay drains the outbox; the same request now records.
    app.remove_published("AB1", 1).await;
    let retry = post_with_key(&app, "k-503", &spending("AB1", "Martin", "2")).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.header(REPLAYED), None);
    assert_eq!(retry.json["seq"], 2);
    let again = post_with_key(&app, "k-503", &spending("AB1", "Martin", "2")).await;
    assert_eq!(again.header(REPLAYED), Some("true"));
    assert_eq!(again.text, retry.text);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_for_different_spendings_record_one() {
    let app = TestApp::new().await;
    let second = obt_api::app(app.state(StoreOptions::default()).await);
    let mut posts = JoinSet::new();
    for i in 0..10 {
        let router = if i % 2 == 0 {
            app.router.clone()
        } else {
            second.clone()
        };
        // Ten identities: nothing serialises these requests but the key.
        let body = spending(&format!("ID{i}"), "Martin", "1");
        posts.spawn(async move { send(&router, post_with_keys(&[b"contested"], &body)).await });
    }
    let mut recorded = Vec::new();
    while let Some(response) = posts.join_next().await {
        let response = response.expect("the task ran");
        match response.status {
            StatusCode::CREATED => recorded.push(response),
            StatusCode::UNPROCESSABLE_ENTITY => {
                assert_eq!(response.errors(KEY), [KEY_REUSED], "{}", response.text);
            }
            other => panic!("neither recorded nor refused: {other} {}", response.text),
        }
    }
    assert_eq!(recorded.len(), 1, "exactly one request got the key");
    let winner = recorded[0].json["identity"]
        .as_str()
        .expect("an identity")
        .to_owned();
    for i in 0..10 {
        let identity = format!("ID{i}");
        let events = app.outbox_events(&identity).await.len();
        assert_eq!(events, usize::from(identity == winner), "{identity}");
    }
}
