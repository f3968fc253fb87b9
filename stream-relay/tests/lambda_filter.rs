//! The relay Lambda's event source mapping drops the stream records that
//! add no event (`FilterCriteria` in `infra/outboxtable.yaml`). A dropped
//! record that did add one would be an event left to the sweeper, minutes
//! late, so the template's patterns are checked here against real records
//! of DynamoDB Local's stream: the api's writes, the relay's
//! acknowledgements, a parking and an unparking. Every record that adds an
//! event must pass; the acknowledgements that emptied an outbox must not.

use std::time::Duration;

use obt_api::idempotency::Idempotency;
use obt_api::input::NewSpending;
use obt_api::{DynamoDbStore, StoreOptions};
use obt_contract::{Amount, Identity, PersonName};
use obt_stream_relay::image::Parked;
use obt_stream_relay::{Change, startup};
use obt_testkit::lambda::dynamodb_event;
use obt_testkit::{Stack, stream};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// The `Pattern`s of the relay's event source mapping, as JSON.
fn template_patterns() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/outboxtable.yaml");
    let template = std::fs::read_to_string(path).expect("the template");
    template
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- Pattern: '"))
        .map(|rest| {
            let json = rest
                .strip_suffix('\'')
                .expect("a pattern quoted on one line");
            serde_json::from_str(json).expect("a pattern is JSON")
        })
        .collect()
}

/// Whether `value` (a record of the Lambda event) matches `pattern`, for
/// the subset of Lambda's filter syntax the template uses: nested keys
/// ending in a list of literals or `{"exists": bool}`.
fn matches(pattern: &Value, value: Option<&Value>) -> bool {
    match pattern {
        Value::Object(keys) => keys
            .iter()
            .all(|(key, inner)| matches(inner, value.and_then(|v| v.get(key)))),
        Value::Array(rules) => rules.iter().any(|rule| match rule.get("exists") {
            Some(Value::Bool(true)) => value.is_some_and(|v| !v.is_object() && !v.is_array()),
            Some(Value::Bool(false)) => value.is_none(),
            _ => value == Some(rule),
        }),
        _ => false,
    }
}

async fn record(store: &DynamoDbStore, identity: &str, amount: &str) {
    let spending = NewSpending {
        identity: Identity::parse(identity).expect("identity"),
        name: PersonName::parse("Ada").expect("name"),
        surname: PersonName::parse("Byron").expect("surname"),
        amount: Amount::parse(amount).expect("amount"),
    };
    store
        .record(&spending, &Idempotency::Unkeyed, None)
        .await
        .expect("the api's write");
}

#[tokio::test]
async fn the_mapping_drops_emptying_acknowledgements_and_passes_every_record_that_adds_an_event() {
    let patterns = template_patterns();
    assert_eq!(patterns.len(), 2, "the relay mapping's two patterns");
    let stack = Stack::create(3).await;
    let store = DynamoDbStore::new(
        stack.dynamodb(),
        stack.names.table.clone(),
        StoreOptions::default(),
    );
    let relay = startup::relay(
        &stack.config,
        &obt_stream_relay::config::RelayArgs::new(
            &stack.names.table,
            &stack.queue_url,
            &stack.names.queue,
        ),
    )
    .await
    .expect("a relay");

    // Two writes, relayed (acknowledged: the outbox empties), a third.
    record(&store, "LF1", "1.00").await;
    record(&store, "LF1", "2.00").await;
    let writes = stream::records(&stack, 2, DEADLINE).await;
    let changes: Vec<Change> = writes
        .iter()
        .filter_map(|r| Change::from_stream_record(r.clone()).expect("a change"))
        .collect();
    relay.handle(&changes).await.expect("relayed");
    record(&store, "LF1", "3.00").await;
    // A parked identity, unparked by the operator.
    record(&store, "LF2", "4.00").await;
    let mark = Parked {
        cause: "sqs_refused".to_owned(),
        reason: "test".to_owned(),
        seq: Some(1),
        at: "2026-12-06T00:00:00Z".to_owned(),
    };
    relay.outbox().park("LF2", &mark).await.expect("parked");
    assert!(
        relay
            .outbox()
            .unpark("LF2", &mark.at)
            .await
            .expect("unparked")
    );

    // 2 writes, their acknowledgement, a write; a write, park, unpark.
    let records = stream::records(&stack, 7, DEADLINE).await;
    let event = dynamodb_event(&records, &stack.stream_arn);
    let delivered: Vec<bool> = event["Records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|record| patterns.iter().any(|p| matches(p, Some(record))))
        .collect();
    let adds: Vec<bool> = records
        .iter()
        .map(|r| {
            Change::from_stream_record(r.clone())
                .expect("a change")
                .is_some_and(|c| c.adds_events)
        })
        .collect();
    assert_eq!(
        adds,
        [true, true, false, true, true, false, true],
        "the records are the ones this test made"
    );
    for (i, (adds, delivered)) in adds.iter().zip(&delivered).enumerate() {
        assert!(
            !adds || *delivered,
            "record {i} adds an event and was dropped"
        );
    }
    assert!(
        !delivered[2],
        "the acknowledgement that emptied the outbox is dropped"
    );
}
