//! The sweeper against the emulators: events that the stream never
//! delivered (no relay ran, or the stream was off when they were written)
//! are found through the sparse index and published once, in order.
//! Events are written by the api's own store, which maintains the index.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, StreamSpecification, StreamViewType};
use obt_api::idempotency::Idempotency;
use obt_api::input::NewSpending;
use obt_api::{DynamoDbStore, StoreOptions};
use obt_contract::outbox::{PENDING_BUCKET_ATTR, PENDING_SINCE_ATTR, pending_bucket};
use obt_contract::{Amount, Envelope, Identity, PersonName};
use obt_stream_relay::config::RelayArgs;
use obt_stream_relay::startup;
use obt_stream_relay::sweeper::{SweepSummary, Sweeper};
use obt_testkit::{Service, Stack, eventually};

const DEADLINE: Duration = Duration::from_secs(30);
const AN_HOUR: Duration = Duration::from_secs(3600);

fn store(stack: &Stack) -> DynamoDbStore {
    DynamoDbStore::new(
        stack.dynamodb(),
        stack.names.table.clone(),
        StoreOptions::default(),
    )
}

/// Records `count` spendings of `identity` through the api's store.
async fn record(stack: &Stack, identity: &str, count: u64) {
    let store = store(stack);
    for i in 0..count {
        let spending = NewSpending {
            identity: Identity::parse(identity).expect("identity"),
            name: PersonName::parse("Martin").expect("name"),
            surname: PersonName::parse("Robi").expect("surname"),
            amount: Amount::parse(&format!("{}.10", i + 1)).expect("amount"),
        };
        store
            .record(&spending, &Idempotency::Unkeyed, None)
            .await
            .expect("record");
    }
}

fn relay_args(stack: &Stack) -> RelayArgs {
    RelayArgs::new(&stack.names.table, &stack.queue_url, &stack.names.queue)
}

async fn sweeper(stack: &Stack, older_than: Duration) -> Sweeper {
    startup::sweeper(&stack.config, &relay_args(stack), older_than)
        .await
        .expect("sweeper")
}

async fn item(stack: &Stack, identity: &str) -> std::collections::HashMap<String, AttributeValue> {
    obt_testkit::outbox::item(stack, identity)
        .await
        .expect("the item exists")
}

/// The item's pending events, and whether it is in the sweeper's index.
async fn pending(stack: &Stack, identity: &str) -> (usize, bool) {
    let item = item(stack, identity).await;
    let outbox = match item.get("outbox") {
        Some(AttributeValue::M(m)) => m.len(),
        _ => 0,
    };
    (outbox, item.contains_key(PENDING_SINCE_ATTR))
}

/// Every event in the queue, `count` of them, as seqs per identity in the
/// order received.
async fn received(stack: &Stack, count: usize) -> BTreeMap<String, Vec<u64>> {
    let bodies = obt_testkit::drain(stack, &stack.queue_url, count, DEADLINE).await;
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for body in bodies {
        let event = Envelope::decode(&body).expect("an envelope");
        seqs.entry(event.identity.to_string())
            .or_default()
            .push(event.seq);
    }
    seqs
}

#[tokio::test]
async fn events_left_past_the_threshold_are_published_once_in_order_and_leave_the_index() {
    let stack = Stack::create(3).await;
    record(&stack, "S1", 3).await;
    record(&stack, "S2", 2).await;
    let written = item(&stack, "S1").await;
    assert_eq!(
        written.get(PENDING_BUCKET_ATTR),
        Some(&AttributeValue::N(pending_bucket("S1").to_string()))
    );
    assert_eq!(pending(&stack, "S1").await, (3, true));

    // Younger than the threshold: not the sweeper's business yet.
    let patient = sweeper(&stack, AN_HOUR).await;
    assert_eq!(
        patient.sweep().await.expect("sweep"),
        SweepSummary::default()
    );
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);

    let sweeper = sweeper(&stack, Duration::ZERO).await;
    let summary = sweeper.sweep().await.expect("sweep");
    assert_eq!(
        summary,
        SweepSummary {
            items: 2,
            republished: 5,
            ..SweepSummary::default()
        }
    );
    let seqs = received(&stack, 5).await;
    assert_eq!(seqs["S1"], [1, 2, 3]);
    assert_eq!(seqs["S2"], [1, 2]);
    assert_eq!(pending(&stack, "S1").await, (0, false));
    assert_eq!(pending(&stack, "S2").await, (0, false));

    // Nothing left: the next pass finds nothing and sends nothing.
    assert_eq!(
        sweeper.sweep().await.expect("sweep"),
        SweepSummary::default()
    );
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
}

#[tokio::test]
async fn a_stale_index_entry_over_an_empty_outbox_is_cleared_without_publishing() {
    let stack = Stack::create(3).await;
    record(&stack, "E1", 1).await;
    // An acknowledgement that removed the event but, having raced a
    // write, left the index entry.
    stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S("E1".to_owned()))
        .update_expression("REMOVE #o.#k")
        .expression_attribute_names("#o", "outbox")
        .expression_attribute_names("#k", "1")
        .send()
        .await
        .expect("remove the event only");
    assert_eq!(pending(&stack, "E1").await, (0, true));

    let summary = sweeper(&stack, Duration::ZERO)
        .await
        .sweep()
        .await
        .expect("sweep");
    assert_eq!(
        summary,
        SweepSummary {
            items: 1,
            republished: 0,
            ..SweepSummary::default()
        }
    );
    assert_eq!(pending(&stack, "E1").await, (0, false));
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
}

async fn set_stream(stack: &Stack, enabled: bool) {
    let mut spec = StreamSpecification::builder().stream_enabled(enabled);
    if enabled {
        spec = spec.stream_view_type(StreamViewType::NewAndOldImages);
    }
    stack
        .dynamodb()
        .update_table()
        .table_name(&stack.names.table)
        .stream_specification(spec.build().expect("stream specification"))
        .send()
        .await
        .expect("switch the stream");
}

#[tokio::test]
async fn events_written_while_the_stream_was_off_reach_the_queue_through_the_daemons_sweeper() {
    let stack = Stack::create(3).await;
    // The stream is switched off, events are written, and a new stream is
    // switched on: its records begin after them, as after a re-created
    // stream. Only the sweeper can find those events.
    set_stream(&stack, false).await;
    record(&stack, "W1", 3).await;
    record(&stack, "W2", 1).await;
    set_stream(&stack, true).await;

    let mut env = stack.service_env();
    env.extend([
        ("OBT_IDLE_POLL_MS", "50".to_owned()),
        ("OBT_SWEEP_INTERVAL_SECS", "1".to_owned()),
        ("OBT_SWEEP_AFTER_SECS", "1".to_owned()),
    ]);
    let relay = Service::start("stream-relay", &env);
    let seqs = received(&stack, 4).await;
    assert_eq!(seqs["W1"], [1, 2, 3]);
    assert_eq!(seqs["W2"], [1]);

    // Later events of the same identity come through the new stream, after
    // the swept ones.
    record(&stack, "W1", 2).await;
    let seqs = received(&stack, 2).await;
    assert_eq!(seqs["W1"], [4, 5]);
    eventually(
        "the outboxes to be empty and out of the index",
        DEADLINE,
        || async {
            match (pending(&stack, "W1").await, pending(&stack, "W2").await) {
                ((0, false), (0, false)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
    let status = relay.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn the_relays_acknowledgement_takes_the_item_out_of_the_index() {
    let stack = Stack::create(3).await;
    let mut env = stack.service_env();
    env.extend([
        ("OBT_IDLE_POLL_MS", "50".to_owned()),
        ("OBT_SWEEP_INTERVAL_SECS", "0".to_owned()),
    ]);
    let relay = Service::start("stream-relay", &env);
    record(&stack, "A1", 4).await;
    assert_eq!(received(&stack, 4).await["A1"], [1, 2, 3, 4]);
    eventually("the item to leave the index", DEADLINE, || async {
        match pending(&stack, "A1").await {
            (0, false) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let status = relay.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn the_scheduled_sweeper_lambda_publishes_what_waited_too_long() {
    let stack = Stack::create(3).await;
    record(&stack, "L1", 2).await;
    record(&stack, "L2", 1).await;
    let env = vec![
        ("OBT_TABLE", stack.names.table.clone()),
        ("OBT_QUEUE_URL", stack.queue_url.clone()),
        ("OBT_SWEEP_AFTER_SECS", "0".to_owned()),
        ("OBT_LOG_FORMAT", "text".to_owned()),
    ];
    let mut function = obt_testkit::lambda::LambdaEmulator::start(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
        "outbox-sweeper-lambda",
        std::path::Path::new(env!("CARGO_BIN_EXE_outbox-sweeper-lambda")),
        &env,
    )
    .await;
    // What EventBridge Scheduler sends; the function ignores it.
    let scheduled = serde_json::json!({
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "time": "2026-11-28T00:00:00Z",
        "detail": {}
    });
    let answer = function.invoke(&scheduled).await;
    assert_eq!(
        answer,
        serde_json::json!({ "items": 2, "republished": 3, "parked": 0, "failed": 0 })
    );
    let seqs = received(&stack, 3).await;
    assert_eq!(seqs["L1"], [1, 2]);
    assert_eq!(seqs["L2"], [1]);
    assert_eq!(pending(&stack, "L1").await, (0, false));
    let documents = obt_testkit::lambda::emf_documents(&function.stdout());
    let sum = |name| obt_testkit::lambda::emf_sum(&documents, name);
    assert_eq!(sum("obt_relay_sweeper_republished_total"), 3.0);
    assert_eq!(sum("obt_relay_events_published_total"), 3.0);
    assert_eq!(sum("obt_relay_sweeper_runs_total"), 1.0);
    assert!(
        documents
            .iter()
            .any(|d| d.dimension("outcome") == Some("complete")
                && d.value("obt_relay_sweeper_runs_total") == Some(1.0)),
        "{documents:?}"
    );
    assert_eq!(
        documents
            .iter()
            .find_map(|d| d.value("obt_relay_identities_parked")),
        Some(0.0),
        "the parked identities counted"
    );

    let answer = function.invoke(&scheduled).await;
    assert_eq!(
        answer,
        serde_json::json!({ "items": 0, "republished": 0, "parked": 0, "failed": 0 })
    );
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
}

#[tokio::test]
async fn an_acknowledgement_from_an_older_image_keeps_the_item_in_the_index() {
    // The relay publishes from the image of event 1 while event 2 is being
    // written: its acknowledgement removes event 1 but must leave the
    // item in the index, since event 2 is still pending.
    let stack = Stack::create(3).await;
    record(&stack, "V1", 1).await;
    let outbox =
        obt_stream_relay::outbox::OutboxTable::new(stack.dynamodb(), stack.names.table.clone());
    let image = outbox.image("V1").await.expect("read").expect("the item");
    assert_eq!(image.version, Some(1));
    let change = obt_stream_relay::Change::from_images("1".to_owned(), None, image);
    record(&stack, "V1", 1).await;

    let relay = startup::relay(&stack.config, &relay_args(&stack))
        .await
        .expect("relay");
    let summary = relay.handle(&[change]).await.expect("handled");
    assert_eq!(summary.published, 1);
    assert_eq!(received(&stack, 1).await["V1"], [1]);
    assert_eq!(
        pending(&stack, "V1").await,
        (1, true),
        "event 2 is pending, and the item stays in the sweeper's index"
    );
}

#[tokio::test]
async fn the_sweeper_goes_past_a_malformed_item_parks_it_and_sweeps_the_rest() {
    let stack = Stack::create(3).await;
    // Items in every order of the index: the broken one among them.
    record(&stack, "M1", 2).await;
    record(&stack, "M2", 1).await;
    record(&stack, "M3", 2).await;
    // M2's outbox overwritten with something that is no map of events.
    stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S("M2".to_owned()))
        .update_expression("SET #o = :bad")
        .expression_attribute_names("#o", "outbox")
        .expression_attribute_values(":bad", AttributeValue::S("garbage".to_owned()))
        .send()
        .await
        .expect("break M2");

    let sweeper = sweeper(&stack, Duration::ZERO).await;
    let summary = sweeper.sweep().await.expect("the pass completes");
    assert_eq!(
        summary,
        SweepSummary {
            items: 3,
            republished: 4,
            parked: 1,
            failed: 0,
        }
    );
    let seqs = received(&stack, 4).await;
    assert_eq!(seqs["M1"], [1, 2]);
    assert_eq!(seqs["M3"], [1, 2]);
    assert!(!seqs.contains_key("M2"));
    let broken = item(&stack, "M2").await;
    let Some(AttributeValue::M(mark)) = broken.get("parked") else {
        panic!("M2 is parked: {broken:?}");
    };
    assert_eq!(
        mark.get("cause"),
        Some(&AttributeValue::S("malformed".to_owned()))
    );

    // The next pass leaves the parked item to its operator.
    let summary = sweeper.sweep().await.expect("the pass completes");
    assert_eq!(
        (summary.items, summary.parked, summary.republished),
        (1, 1, 0)
    );
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
}
