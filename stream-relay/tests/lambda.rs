//! The Lambda driver as AWS runs it: the real `stream-relay-lambda` binary
//! polling the Lambda Runtime API (cargo-lambda's emulator), invoked with
//! DynamoDB stream events made from records read from DynamoDB Local's
//! stream, publishing to fauxqs. What the event source mapping adds (which
//! records to deliver again after a partial batch response) the tests do
//! themselves, as the mapping would: from the reported record on.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::Record;
use obt_consumer::{AppliedIdentity, DynamoDbLedger};
use obt_contract::{Envelope, Identity};
use obt_testkit::lambda::{LambdaEmulator, dynamodb_event};
use obt_testkit::sqs_proxy::SqsProxy;
use obt_testkit::{Service, Stack, eventually, outbox, stream};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

/// The function on `stack`, with `extra` settings (which win).
async fn start_function(stack: &Stack, extra: &[(&'static str, String)]) -> LambdaEmulator {
    let mut env = vec![
        ("OBT_TABLE", stack.names.table.clone()),
        ("OBT_QUEUE_URL", stack.queue_url.clone()),
        ("OBT_LOG_FORMAT", "text".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    LambdaEmulator::start(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        "stream-relay-lambda",
        Path::new(env!("CARGO_BIN_EXE_stream-relay-lambda")),
        &env,
    )
    .await
}

/// Appends events 1..=`count` of each identity, interleaved (1 of each,
/// then 2 of each, ...), and returns them in the order written.
async fn write_interleaved(stack: &Stack, identities: &[&Identity], count: u64) -> Vec<Envelope> {
    let mut written = Vec::new();
    for seq in 1..=count {
        for identity in identities {
            let event = obt_testkit::event(identity, seq, &format!("{seq}.10"));
            outbox::append(stack, &event).await;
            written.push(event);
        }
    }
    written
}

/// The sequence numbers a partial batch response lists.
fn failures(response: &Value) -> Vec<String> {
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("a partial batch response: {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn sequence_number(record: &Record) -> String {
    record
        .dynamodb()
        .and_then(|d| d.sequence_number())
        .expect("a stream record has a sequence number")
        .to_owned()
}

fn seqs_per_identity(events: &[Envelope]) -> HashMap<String, Vec<u64>> {
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for e in events {
        seqs.entry(e.identity.to_string()).or_default().push(e.seq);
    }
    seqs
}

async fn drain(stack: &Stack, count: usize) -> Vec<Envelope> {
    obt_testkit::drain(stack, &stack.queue_url, count, DEADLINE)
        .await
        .iter()
        .map(|body| Envelope::decode(body).expect("an envelope"))
        .collect()
}

async fn assert_outbox(stack: &Stack, identity: &Identity, expected: &[u64]) {
    assert_eq!(
        outbox::pending(stack, identity.as_str()).await.as_deref(),
        Some(expected),
        "the outbox of {identity}"
    );
}

#[tokio::test]
async fn a_batch_of_writes_is_published_once_in_order_and_acknowledged_and_its_acknowledgements_publish_nothing()
 {
    let stack = Stack::create(3).await;
    let (a, b, c) = (
        obt_testkit::identity("LA"),
        obt_testkit::identity("LB"),
        obt_testkit::identity("LC"),
    );
    let written = write_interleaved(&stack, &[&a, &b, &c], 3).await;
    let writes = stream::records(&stack, written.len(), DEADLINE).await;
    assert_eq!(writes.len(), written.len(), "one record per write");
    let mut function = start_function(&stack, &[]).await;

    let response = function
        .invoke(&dynamodb_event(&writes, &stack.stream_arn))
        .await;
    assert_eq!(failures(&response), Vec::<String>::new());
    let published = drain(&stack, written.len()).await;
    let expected: Vec<u64> = vec![1, 2, 3];
    let seqs = seqs_per_identity(&published);
    assert_eq!(seqs.len(), 3, "three identities: {seqs:?}");
    for identity in [&a, &b, &c] {
        assert_eq!(seqs.get(identity.as_str()), Some(&expected), "{identity}");
        assert_outbox(&stack, identity, &[]).await;
    }
    let mut published_ids: Vec<String> = published.iter().map(|e| e.event_id.to_string()).collect();
    let mut written_ids: Vec<String> = written.iter().map(|e| e.event_id.to_string()).collect();
    published_ids.sort();
    written_ids.sort();
    assert_eq!(published_ids, written_ids, "the events written, each once");
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);

    // The acknowledgements made records of their own: they add no event.
    let all = stream::records(&stack, written.len() + 3, DEADLINE).await;
    let acknowledgements = &all[writes.len()..];
    let response = function
        .invoke(&dynamodb_event(acknowledgements, &stack.stream_arn))
        .await;
    assert_eq!(failures(&response), Vec::<String>::new());
    assert!(
        obt_testkit::receives_nothing(&stack, &stack.queue_url).await,
        "acknowledgements publish nothing"
    );
}

#[tokio::test]
async fn each_invocation_prints_its_metrics_as_embedded_metric_format_in_the_namespace_set() {
    let stack = Stack::create(3).await;
    let (a, b) = (obt_testkit::identity("LM"), obt_testkit::identity("LN"));
    let written = write_interleaved(&stack, &[&a, &b], 3).await;
    let writes = stream::records(&stack, written.len(), DEADLINE).await;
    let namespace = format!("outboxtable/{}", obt_testkit::unique("emf"));
    let mut function =
        start_function(&stack, &[("OBT_METRICS_NAMESPACE", namespace.clone())]).await;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();

    let response = function
        .invoke(&dynamodb_event(&writes, &stack.stream_arn))
        .await;
    assert_eq!(failures(&response), Vec::<String>::new());
    assert_eq!(drain(&stack, written.len()).await.len(), written.len());

    let documents = obt_testkit::lambda::emf_documents(&function.stdout());
    assert!(!documents.is_empty(), "the invocation printed its metrics");
    for document in &documents {
        assert_eq!(document.namespace, namespace);
        assert!(u128::from(document.timestamp) >= started, "{document:?}");
        assert!(!document.metrics.is_empty(), "{document:?}");
    }
    let sum = |name| obt_testkit::lambda::emf_sum(&documents, name);
    assert_eq!(
        sum("obt_relay_events_published_total"),
        written.len() as f64
    );
    assert_eq!(
        sum("obt_relay_stream_records_read_total"),
        writes.len() as f64
    );
    assert!(sum("obt_relay_send_batches_total") >= 1.0);
    let lag = documents
        .iter()
        .find_map(|d| d.value("obt_relay_behind_stream_head_milliseconds"));
    assert!(lag.is_some_and(|ms| ms >= 0.0), "{documents:?}");
    // AWS requests by operation: the dimensions carry the labels.
    let sends = documents
        .iter()
        .filter(|d| {
            d.dimension("service") == Some("SQS")
                && d.dimension("operation") == Some("SendMessageBatch")
        })
        .filter_map(|d| d.value("obt_aws_requests_total"))
        .sum::<f64>();
    assert!(sends >= 1.0, "{documents:?}");

    // Counters are what changed since the last invocation: the
    // acknowledgements' records (one an identity) publish nothing.
    let all = stream::records(&stack, written.len() + 2, DEADLINE).await;
    let response = function
        .invoke(&dynamodb_event(&all[writes.len()..], &stack.stream_arn))
        .await;
    assert_eq!(failures(&response), Vec::<String>::new());
    let after = obt_testkit::lambda::emf_documents(&function.stdout());
    let second = &after[documents.len()..];
    assert_eq!(
        obt_testkit::lambda::emf_sum(second, "obt_relay_events_published_total"),
        0.0
    );
    assert_eq!(
        obt_testkit::lambda::emf_sum(second, "obt_relay_stream_records_read_total"),
        (all.len() - writes.len()) as f64
    );
}

/// What SQS accepted through `proxy`, as seqs per identity, in order.
fn accepted(proxy: &SqsProxy) -> HashMap<String, Vec<u64>> {
    let events: Vec<Envelope> = proxy
        .accepted()
        .iter()
        .map(|entry| Envelope::decode(&entry.body).expect("an envelope"))
        .collect();
    seqs_per_identity(&events)
}

async fn applied(stack: &Stack, identity: &Identity) -> Option<AppliedIdentity> {
    DynamoDbLedger::new(stack.dynamodb(), &stack.names.consumer_table)
        .load_identity(identity.as_str())
        .await
        .expect("read the consumer's table")
}

/// Waits until the consumer has applied exactly `count` events of
/// `identity`.
async fn wait_applied(stack: &Stack, identity: &Identity, count: u64) -> AppliedIdentity {
    eventually(
        &format!("{count} events of {identity} applied"),
        DEADLINE,
        || async {
            match applied(stack, identity).await {
                Some(applied) if applied.count == count => Ok(applied),
                other => Err(format!("{:?}", other.map(|a| a.count))),
            }
        },
    )
    .await
}

#[tokio::test]
async fn when_sqs_refuses_an_event_the_function_names_its_record_and_the_retry_from_there_completes_in_order()
 {
    let stack = Stack::create(3).await;
    let (a, b) = (obt_testkit::identity("PA"), obt_testkit::identity("PB"));
    // Records: A1 B1 A2 B2 A3 B3.
    let written = write_interleaved(&stack, &[&a, &b], 3).await;
    let writes = stream::records(&stack, written.len(), DEADLINE).await;
    assert_eq!(writes.len(), 6);
    let refused = written[3].event_id.to_string();
    assert_eq!(
        (written[3].identity.as_str(), written[3].seq),
        (b.as_str(), 2)
    );
    let proxy = SqsProxy::start(move |entry, _| {
        entry["MessageDeduplicationId"].as_str() == Some(refused.as_str())
    })
    .await;
    let mut consumer_env = stack.service_env();
    consumer_env.push(("OBT_WAIT_TIME_SECS", "1".to_owned()));
    let _consumer = Service::start("consumer", &consumer_env);
    let mut function = start_function(&stack, &[("AWS_ENDPOINT_URL_SQS", proxy.url.clone())]).await;

    let response = function
        .invoke(&dynamodb_event(&writes, &stack.stream_arn))
        .await;
    assert_eq!(
        failures(&response),
        [sequence_number(&writes[3])],
        "the record that carried B2"
    );
    assert!(proxy.failed() >= 1, "the proxy refused B2");
    // A2 shared B2's batch and went out; nothing of B after B1 did, and A3
    // (in the batch after) was not sent either.
    let published = accepted(&proxy);
    assert_eq!(published.get(a.as_str()), Some(&vec![1, 2]));
    assert_eq!(published.get(b.as_str()), Some(&vec![1]));
    assert_outbox(&stack, &a, &[3]).await;
    assert_outbox(&stack, &b, &[2, 3]).await;
    wait_applied(&stack, &a, 2).await;
    wait_applied(&stack, &b, 1).await;

    // The event source mapping delivers the records again from the one
    // named.
    proxy.heal();
    let response = function
        .invoke(&dynamodb_event(&writes[3..], &stack.stream_arn))
        .await;
    assert_eq!(failures(&response), Vec::<String>::new());
    let published = accepted(&proxy);
    for identity in [&a, &b] {
        assert_eq!(
            published.get(identity.as_str()),
            Some(&vec![1, 2, 3]),
            "{identity}: every event once, in order"
        );
        assert_outbox(&stack, identity, &[]).await;
    }

    for identity in [&a, &b] {
        let applied = wait_applied(&stack, identity, 3).await;
        let seqs: Vec<u64> = applied.spendings.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "{identity}: each seq applied once");
        assert_eq!(applied.last_seq, 3);
        assert_eq!(applied.total.to_string(), "6.30", "1.10 + 2.10 + 3.10");
        let expected_ids: Vec<String> = written
            .iter()
            .filter(|e| &e.identity == identity)
            .map(|e| e.event_id.to_string())
            .collect();
        let applied_ids: Vec<String> = applied
            .spendings
            .iter()
            .map(|s| s.event_id.clone())
            .collect();
        assert_eq!(applied_ids, expected_ids, "{identity}: the events written");
    }
}

#[tokio::test]
async fn a_record_whose_outbox_entry_cannot_be_read_parks_its_identity_and_the_batch_is_done() {
    let stack = Stack::create(3).await;
    let (x, y) = (obt_testkit::identity("UX"), obt_testkit::identity("UY"));
    write_interleaved(&stack, &[&x, &y], 3).await;
    let writes = stream::records(&stack, 6, DEADLINE).await;
    let mut event = dynamodb_event(&writes, &stack.stream_arn);
    // Record 2 (X's second write) shows event 2 as this relay cannot read
    // it (a schema from the future, say); so do X's later records.
    for record in [2, 4] {
        event["Records"][record]["dynamodb"]["NewImage"]["outbox"]["M"]["2"]["M"]["seq"] =
            json!({ "S": "two" });
    }
    let mut function = start_function(&stack, &[]).await;

    let response = function.invoke(&event).await;
    assert_eq!(
        failures(&response),
        Vec::<String>::new(),
        "the shard goes on"
    );
    let published = seqs_per_identity(&drain(&stack, 4).await);
    assert_eq!(published[x.as_str()], [1], "nothing of X past the entry");
    assert_eq!(published[y.as_str()], [1, 2, 3], "Y is not held back");
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
    assert_outbox(&stack, &x, &[2, 3]).await;
    assert_outbox(&stack, &y, &[]).await;
    assert_parked(&stack, &x, "undecodable", 2).await;
}

/// The item of `identity` carries a parking mark of `cause` at `seq`.
async fn assert_parked(stack: &Stack, identity: &Identity, cause: &str, seq: u64) {
    let item = outbox::item(stack, identity.as_str())
        .await
        .expect("the item exists");
    let mark = item
        .get("parked")
        .unwrap_or_else(|| panic!("{identity} is parked: {item:?}"))
        .as_m()
        .expect("a map");
    assert_eq!(
        mark.get("cause").and_then(|c| c.as_s().ok()),
        Some(&cause.to_owned())
    );
    assert_eq!(
        mark.get("seq").and_then(|c| c.as_n().ok()),
        Some(&seq.to_string())
    );
}

#[tokio::test]
async fn when_sqs_refuses_an_event_for_good_its_identity_is_parked_and_the_function_reports_no_failure()
 {
    let stack = Stack::create(3).await;
    let (a, b) = (obt_testkit::identity("GA"), obt_testkit::identity("GB"));
    let written = write_interleaved(&stack, &[&a, &b], 3).await;
    let writes = stream::records(&stack, written.len(), DEADLINE).await;
    let refused = written[3].event_id.to_string();
    assert_eq!(
        (written[3].identity.as_str(), written[3].seq),
        (b.as_str(), 2)
    );
    let proxy = SqsProxy::start(move |entry, _| {
        entry["MessageDeduplicationId"].as_str() == Some(refused.as_str())
    })
    .await;
    proxy.refuse_for_good();
    let mut function = start_function(&stack, &[("AWS_ENDPOINT_URL_SQS", proxy.url.clone())]).await;

    let response = function
        .invoke(&dynamodb_event(&writes, &stack.stream_arn))
        .await;
    assert_eq!(
        failures(&response),
        Vec::<String>::new(),
        "no record is retried"
    );
    let published = accepted(&proxy);
    assert_eq!(
        published.get(a.as_str()),
        Some(&vec![1, 2, 3]),
        "A is not held back"
    );
    assert_eq!(published.get(b.as_str()), Some(&vec![1]));
    assert_outbox(&stack, &a, &[]).await;
    assert_outbox(&stack, &b, &[2, 3]).await;
    assert_parked(&stack, &b, "sqs_refused", 2).await;

    // The operator's retry, once SQS takes the event: the mark comes off,
    // and its stream record lets the function publish what waited.
    proxy.heal();
    let table =
        obt_stream_relay::outbox::OutboxTable::new(stack.dynamodb(), stack.names.table.clone());
    let image = table
        .image(b.as_str())
        .await
        .expect("read")
        .expect("an item");
    let at = image.parked.expect("parked").at;
    assert!(table.unpark(b.as_str(), &at).await.expect("unpark"));
    let records = eventually("the unparking's record", DEADLINE, || async {
        let records = stream::records(&stack, writes.len(), DEADLINE).await;
        let unparked = records.last().and_then(|r| r.dynamodb()).is_some_and(|d| {
            d.old_image().is_some_and(|i| i.contains_key("parked"))
                && d.new_image().is_some_and(|i| !i.contains_key("parked"))
        });
        if unparked {
            Ok(records)
        } else {
            Err(format!("{} records", records.len()))
        }
    })
    .await;
    let response = function
        .invoke(&dynamodb_event(&records[writes.len()..], &stack.stream_arn))
        .await;
    assert_eq!(failures(&response), Vec::<String>::new());
    assert_eq!(accepted(&proxy).get(b.as_str()), Some(&vec![1, 2, 3]));
    assert_outbox(&stack, &b, &[]).await;
}

#[tokio::test]
async fn a_failure_about_no_record_in_particular_still_names_the_first_record_not_done() {
    // A misconfigured queue: nothing can be published, and the answer must
    // not say the batch is done.
    let stack = Stack::create(3).await;
    let m = obt_testkit::identity("MQ");
    write_interleaved(&stack, &[&m], 2).await;
    let writes = stream::records(&stack, 2, DEADLINE).await;
    let missing = format!("{}-missing.fifo", stack.queue_url.trim_end_matches(".fifo"));
    let mut function = start_function(&stack, &[("OBT_QUEUE_URL", missing)]).await;

    let response = function
        .invoke(&dynamodb_event(&writes, &stack.stream_arn))
        .await;
    assert_eq!(failures(&response), [sequence_number(&writes[0])]);
    assert_outbox(&stack, &m, &[1, 2]).await;
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
}
