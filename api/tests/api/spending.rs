//! Recording spendings and reading totals: the 201 answer, the event in
//! the outbox as the relay reads it, and GET; in DynamoDB mode, the item.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use obt_api::StoreOptions;
use obt_contract::outbox::OutboxImage;
use obt_runtime::Storage;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{TestApp, number, outbox, runs_in, spending};

#[tokio::test]
async fn a_recorded_spending_answers_201_with_its_location_and_event() {
    let app = TestApp::new().await;
    let body = r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":51.3}"#;

    let first = app.post_json(body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.header("location"), Some("/api/v1/spending/AB1"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    let json = &first.json;
    let event_id = json["event_id"].as_str().expect("an event id");
    uuid::Uuid::parse_str(event_id).expect("the event id is a UUID");
    assert_eq!(json["identity"], "AB1");
    assert_eq!(json["seq"], 1);
    assert_eq!(json["name"], "Martin");
    assert_eq!(json["surname"], "Robi");
    assert_eq!(json["amount"], "51.30");
    let created_at = json["created_at"].as_str().expect("a creation time");
    let created_at = OffsetDateTime::parse(created_at, &Rfc3339).expect("RFC 3339");
    assert!(
        (OffsetDateTime::now_utc() - created_at)
            .whole_minutes()
            .abs()
            < 5
    );
    let fields: Vec<&String> = json.as_object().expect("an object").keys().collect();
    assert_eq!(fields.len(), 7, "exactly the documented fields: {fields:?}");

    let second = app.post_json(body).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    assert_eq!(second.json["seq"], 2);
    assert_ne!(second.json["event_id"], first.json["event_id"]);

    // The outbox holds the event the answer describes, as the relay will
    // publish it.
    let events = app.outbox_events("AB1").await;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    let stored = &events[0];
    assert_eq!(stored.event_id.to_string(), event_id);
    assert_eq!(stored.seq, 1);
    assert_eq!(stored.identity.as_str(), "AB1");
    assert_eq!(stored.schema_version, obt_contract::SCHEMA_VERSION);
    assert_eq!(stored.occurred_at, created_at);
    assert_eq!(stored.data.name.as_str(), "Martin");
    assert_eq!(stored.data.surname.as_str(), "Robi");
    assert_eq!(stored.data.amount.to_string(), "51.30");
}

/// DynamoDB only: the item's layout (MySQL's rows: `mysql.rs`).
#[tokio::test]
async fn the_item_holds_the_totals_and_an_outbox_the_relay_can_read() {
    if !runs_in(Storage::Dynamodb, "the layout of the DynamoDB item") {
        return;
    }
    let app = TestApp::new().await;
    for _ in 0..2 {
        let response = app.post_json(&spending("AB1", "Martin", "51.3")).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    }

    let item = crate::helpers::item(app.stack(), "AB1")
        .await
        .expect("the item exists");
    assert_eq!(number(&item, "total"), "102.6");
    assert_eq!(number(&item, "count"), "2");
    assert_eq!(number(&item, "version"), "2");
    assert!(item.contains_key("updated_at"));
    assert_eq!(outbox(&item).len(), 2);

    // What the relay reads from a stream image of this item.
    let image: OutboxImage =
        serde_dynamo::aws_sdk_dynamodb_1::from_item(item).expect("an outbox image");
    let seqs: Vec<u64> = image.events_in_order().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
}

#[tokio::test]
async fn get_answers_the_exact_totals_of_an_identity() {
    let app = TestApp::new().await;
    for amount in ["51.3", "51.3"] {
        assert_eq!(
            app.post_json(&spending("AB1", "Martin", amount))
                .await
                .status,
            StatusCode::CREATED
        );
    }
    // 0.1 + 0.2 is 0.30000000000000004 in floats.
    for amount in ["0.1", "0.2"] {
        assert_eq!(
            app.post_json(&spending("F1", "Ada", amount)).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        app.post_json(&spending("Z", "Ada", "100")).await.status,
        StatusCode::CREATED
    );

    let response = app.get("/api/v1/spending/AB1").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    assert_eq!(
        response.json,
        serde_json::json!({
            "identity": "AB1",
            "name": "Martin",
            "surname": "Robi",
            "total": "102.60",
            "count": 2,
            "last_seq": 2,
            "pending_events": 2,
        })
    );
    assert_eq!(app.get("/api/v1/spending/F1").await.json["total"], "0.30");
    assert_eq!(app.get("/api/v1/spending/Z").await.json["total"], "100.00");
}

#[tokio::test]
async fn get_for_an_unknown_identity_is_404() {
    let app = TestApp::new().await;
    let response = app.get("/api/v1/spending/NOBODY").await;
    assert_eq!(response.status, StatusCode::NOT_FOUND);
    assert_eq!(
        response.json,
        serde_json::json!({"errors": {"identity": ["no spending recorded for this identity"]}})
    );
}

#[tokio::test]
async fn get_with_an_invalid_identity_is_422() {
    let app = TestApp::new().await;
    let long = format!("/api/v1/spending/{}", "x".repeat(65));
    let cases = [
        (
            "/api/v1/spending/AB%201",
            "may contain only letters A-Z and a-z, digits and . _ : -",
        ),
        (
            "/api/v1/spending/%C3%84B1",
            "may contain only letters A-Z and a-z, digits and . _ : -",
        ),
        (long.as_str(), "must be at most 64 characters long"),
    ];
    for (path, message) in cases {
        let response = app.get(path).await;
        assert_eq!(
            response.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            response.text
        );
        assert_eq!(response.errors("identity"), [message], "{path}");
    }
}

#[tokio::test]
async fn the_relay_removing_published_events_leaves_the_identity_writable() {
    let app = TestApp::new().await;
    for _ in 0..2 {
        assert_eq!(
            app.post_json(&spending("AB1", "Martin", "1")).await.status,
            StatusCode::CREATED
        );
    }
    app.remove_published("AB1", 1).await;
    assert_eq!(
        app.get("/api/v1/spending/AB1").await.json["pending_events"],
        1
    );
    app.remove_published("AB1", 2).await;
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["pending_events"], 0);
    assert_eq!(summary.json["last_seq"], 2);

    // An empty outbox (in DynamoDB an empty map, not a missing one) takes
    // the next event.
    let third = app.post_json(&spending("AB1", "Martin", "1")).await;
    assert_eq!(third.status, StatusCode::CREATED, "{}", third.text);
    assert_eq!(third.json["seq"], 3);
    let events = app.outbox_events("AB1").await;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 3);
    assert_eq!(summary.json["pending_events"], 1);
}

/// DynamoDB only: the bound protects the 400 KB item; MySQL's outbox is a
/// table and has none (see the api's `store::mysql`).
#[tokio::test]
async fn a_full_outbox_refuses_new_spendings_until_the_relay_catches_up() {
    if !runs_in(Storage::Dynamodb, "MySQL's outbox is not bounded") {
        return;
    }
    let app = TestApp::with_options(StoreOptions {
        max_pending_events: 3,
        ..StoreOptions::default()
    })
    .await;
    for seq in 1..=3 {
        let response = app.post_json(&spending("AB1", "Martin", "1")).await;
        assert_eq!(response.json["seq"], seq, "{}", response.text);
    }

    let refused = app.post_json(&spending("AB1", "Martin", "1")).await;
    refused.assert_retry_later(
        "5",
        "too many events of this identity are waiting to be published; retry later",
    );
    let item = crate::helpers::item(app.stack(), "AB1")
        .await
        .expect("the item exists");
    assert_eq!(
        number(&item, "version"),
        "3",
        "the refused request wrote nothing"
    );
    assert_eq!(number(&item, "count"), "3");
    assert_eq!(outbox(&item).len(), 3);

    // Other identities are not affected.
    let other = app.post_json(&spending("OTHER", "Ada", "1")).await;
    assert_eq!(other.status, StatusCode::CREATED);

    app.remove_published("AB1", 1).await;
    let accepted = app.post_json(&spending("AB1", "Martin", "1")).await;
    assert_eq!(accepted.status, StatusCode::CREATED, "{}", accepted.text);
    assert_eq!(accepted.json["seq"], 4);
    let item = crate::helpers::item(app.stack(), "AB1")
        .await
        .expect("the item exists");
    let keys: BTreeMap<&String, _> = outbox(&item).iter().collect();
    assert_eq!(
        keys.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        ["2", "3", "4"]
    );
}
