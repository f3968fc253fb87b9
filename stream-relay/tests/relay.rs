//! The relay against the real emulators: DynamoDB Local's stream and
//! fauxqs. Items are written here as the api leaves them (the testkit's
//! conditional UpdateItem adding the event to the outbox map; the api sends
//! its update inside a one-item TransactWriteItems, which makes the same
//! item and stream record); the api's own writes are covered by the
//! end-to-end tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use obt_contract::{Amount, Envelope, Identity};
use obt_stream_relay::config::{MySqlArgs, RelayArgs, Settings, SweepArgs};
use obt_stream_relay::{Change, startup};
use obt_testkit::outbox::append;
use obt_testkit::{Stack, eventually};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

/// Event `seq` of `identity`, for `seq`.25.
fn event(identity: &str, seq: u64) -> Envelope {
    let identity = Identity::parse(identity).expect("a valid identity");
    obt_testkit::event(&identity, seq, &format!("{seq}.25"))
}

/// The seqs still pending in `identity`'s outbox.
async fn outbox_of(stack: &Stack, identity: &str) -> Vec<u64> {
    obt_testkit::outbox::pending(stack, identity)
        .await
        .expect("the item exists")
}

/// Receives and deletes until `count` messages came: the envelopes in the
/// order received.
async fn drain(stack: &Stack, count: usize) -> Vec<Envelope> {
    obt_testkit::drain(stack, &stack.queue_url, count, DEADLINE)
        .await
        .iter()
        .map(|body| Envelope::decode(body).expect("an envelope"))
        .collect()
}

async fn queue_is_empty(stack: &Stack) -> bool {
    obt_testkit::receives_nothing(stack, &stack.queue_url).await
}

fn settings(stack: &Stack) -> Settings {
    Settings {
        relay: RelayArgs::new(&stack.names.table, &stack.queue_url, &stack.names.queue),
        stream_arn: None,
        lease_table: stack.names.lease_table.clone(),
        idle_poll_ms: 50,
        discover_interval_secs: 1,
        aws_timeout_secs: 10,
        lease_duration_secs: 3,
        worker_id: None,
        sweep: SweepArgs {
            sweep_interval_secs: 0,
            sweep_after_secs: 300,
        },
        mysql: MySqlArgs {
            storage: obt_runtime::args::StorageArgs {
                storage: obt_runtime::Storage::Dynamodb,
                database_url: None,
            },
            poll_batch: 100,
            poll_max_idle_ms: 500,
            database_timeout_secs: 10,
        },
        metrics: obt_runtime::metrics::MetricsArgs {
            metrics_listen: None,
        },
    }
}

/// Runs the daemon in this process until the returned token is cancelled.
async fn start_daemon(stack: &Stack) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let daemon = startup::daemon(&stack.config, &settings(stack))
        .await
        .expect("daemon starts");
    let token = CancellationToken::new();
    let handle = tokio::spawn(Arc::new(daemon).run(token.clone()));
    (token, handle)
}

fn assert_in_order_per_identity(events: &[Envelope], expected_per_identity: &[(&str, u64)]) {
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for e in events {
        seqs.entry(e.identity.to_string()).or_default().push(e.seq);
    }
    for (identity, count) in expected_per_identity {
        let expected: Vec<u64> = (1..=*count).collect();
        assert_eq!(seqs.get(*identity), Some(&expected), "identity {identity}");
    }
    assert_eq!(
        seqs.len(),
        expected_per_identity.len(),
        "no other identity: {seqs:?}"
    );
}

#[tokio::test]
async fn the_daemon_publishes_every_event_once_in_seq_order_and_empties_the_outbox() {
    let stack = Stack::create(3).await;
    let identities = ["A1", "B2", "C3"];
    for seq in 1..=5 {
        for identity in identities {
            append(&stack, &event(identity, seq)).await;
        }
    }
    let (stop, daemon) = start_daemon(&stack).await;

    let published = drain(&stack, 15).await;
    assert_in_order_per_identity(&published, &[("A1", 5), ("B2", 5), ("C3", 5)]);
    for e in &published {
        assert_eq!(
            e.data.amount,
            Amount::parse(&format!("{}.25", e.seq)).expect("valid")
        );
    }
    for identity in identities {
        eventually(
            &format!("the outbox of {identity} to be empty"),
            DEADLINE,
            || async {
                let outbox = outbox_of(&stack, identity).await;
                if outbox.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{outbox:?}"))
                }
            },
        )
        .await;
    }
    assert!(queue_is_empty(&stack).await, "nothing else was published");
    stop.cancel();
    daemon.await.expect("the daemon stops");
}

#[tokio::test]
async fn a_restarted_daemon_resumes_from_its_checkpoint() {
    let stack = Stack::create(3).await;
    for seq in 1..=3 {
        append(&stack, &event("R1", seq)).await;
    }
    let (stop, daemon) = start_daemon(&stack).await;
    assert_in_order_per_identity(&drain(&stack, 3).await, &[("R1", 3)]);
    eventually("the outbox to be empty", DEADLINE, || async {
        let outbox = outbox_of(&stack, "R1").await;
        if outbox.is_empty() {
            Ok(())
        } else {
            Err(format!("{outbox:?}"))
        }
    })
    .await;
    stop.cancel();
    daemon.await.expect("the daemon stops");

    let checkpoints = stack
        .dynamodb()
        .scan()
        .table_name(&stack.names.lease_table)
        .send()
        .await
        .expect("scan checkpoints");
    assert!(
        checkpoints
            .items()
            .iter()
            .any(|item| item.contains_key("checkpoint")),
        "a checkpoint was saved"
    );

    for seq in 4..=6 {
        append(&stack, &event("R1", seq)).await;
    }
    let (stop, daemon) = start_daemon(&stack).await;
    let after_restart = drain(&stack, 3).await;
    let seqs: Vec<u64> = after_restart.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [4, 5, 6], "only what came after the checkpoint");
    assert!(queue_is_empty(&stack).await);
    stop.cancel();
    daemon.await.expect("the daemon stops");
}

fn change(sequence_number: &str, identity: &str, pending: Vec<Envelope>) -> Change {
    Change {
        sequence_number: sequence_number.to_owned(),
        identity: identity.to_owned(),
        version: pending.last().map(|e| e.seq),
        adds_events: true,
        pending,
        ..Change::default()
    }
}

#[tokio::test]
async fn events_older_than_the_change_that_are_still_pending_go_out_first() {
    // The stream lost the record of event 1 (trimmed, say); the record of
    // event 2 shows both pending. Both must go out, 1 before 2.
    let stack = Stack::create(3).await;
    let (e1, e2, e3) = (event("L1", 1), event("L1", 2), event("L1", 3));
    append(&stack, &e1).await;
    append(&stack, &e2).await;
    let relay = startup::relay(&stack.config, &settings(&stack).relay)
        .await
        .expect("relay");

    let summary = relay
        .handle(&[change("2", "L1", vec![e1.clone(), e2.clone()])])
        .await
        .expect("handled");
    assert_eq!(summary.published, 2);
    let seqs: Vec<u64> = drain(&stack, 2).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
    assert!(
        outbox_of(&stack, "L1").await.is_empty(),
        "both acknowledged"
    );

    // A later change still showing event 2 (captured before the
    // acknowledgement) publishes only event 3.
    append(&stack, &e3).await;
    let summary = relay
        .handle(&[change("3", "L1", vec![e2, e3])])
        .await
        .expect("handled");
    assert_eq!(summary.published, 1);
    let seqs: Vec<u64> = drain(&stack, 1).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3]);
}

#[tokio::test]
async fn a_fresh_relay_does_not_republish_what_was_acknowledged() {
    let stack = Stack::create(3).await;
    let (e1, e2) = (event("F1", 1), event("F1", 2));
    append(&stack, &e1).await;
    append(&stack, &e2).await;
    let first = startup::relay(&stack.config, &settings(&stack).relay)
        .await
        .expect("relay");
    first
        .handle(&[change("1", "F1", vec![e1.clone()])])
        .await
        .expect("handled");
    assert_eq!(drain(&stack, 1).await[0].seq, 1);

    // A new process (empty memory) replays the record of event 1, then
    // handles event 2: it learns from the item that 1 was acknowledged.
    let second = startup::relay(&stack.config, &settings(&stack).relay)
        .await
        .expect("relay");
    let summary = second
        .handle(&[
            change("1", "F1", vec![e1.clone()]),
            change("2", "F1", vec![e1, e2]),
        ])
        .await
        .expect("handled");
    assert_eq!(summary.published, 1, "only event 2");
    assert_eq!(drain(&stack, 1).await[0].seq, 2);
}

#[tokio::test]
async fn when_sqs_fails_nothing_is_acknowledged_and_a_retry_publishes_in_order() {
    let stack = Stack::create(3).await;
    let (e1, e2) = (event("P1", 1), event("P1", 2));
    append(&stack, &e1).await;
    append(&stack, &e2).await;
    let mut broken = settings(&stack);
    broken.relay.queue.queue_url = Some(format!(
        "{}-missing.fifo",
        stack.queue_url.trim_end_matches(".fifo")
    ));
    let relay = startup::relay(&stack.config, &broken.relay)
        .await
        .expect("relay");
    let changes = [
        change("1", "P1", vec![e1.clone()]),
        change("2", "P1", vec![e1, e2]),
    ];
    assert!(
        relay.handle(&changes).await.is_err(),
        "publishing to a missing queue fails"
    );
    assert_eq!(
        outbox_of(&stack, "P1").await.len(),
        2,
        "nothing acknowledged"
    );

    let relay = startup::relay(&stack.config, &settings(&stack).relay)
        .await
        .expect("relay");
    relay.handle(&changes).await.expect("the retry succeeds");
    let seqs: Vec<u64> = drain(&stack, 2).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
    assert!(outbox_of(&stack, "P1").await.is_empty());
}

#[tokio::test]
async fn acknowledgements_are_skipped() {
    let stack = Stack::create(3).await;
    let relay = startup::relay(&stack.config, &settings(&stack).relay)
        .await
        .expect("relay");
    let mut ack = change("9", "K1", vec![]);
    ack.adds_events = false;
    let summary = relay.handle(&[ack]).await.expect("handled");
    assert_eq!((summary.published, summary.skipped), (0, 1));
    assert!(queue_is_empty(&stack).await);
}

#[tokio::test]
async fn the_daemon_binary_exits_cleanly_on_sigterm_with_its_checkpoint_saved_and_its_lease_released()
 {
    let stack = Stack::create(3).await;
    for seq in 1..=3 {
        append(&stack, &event("T1", seq)).await;
    }
    let mut env = stack.service_env();
    env.push(("OBT_IDLE_POLL_MS", "50".to_owned()));
    env.push(("OBT_WORKER_ID", "relay-under-test".to_owned()));
    let relay = obt_testkit::Service::start("stream-relay", &env);
    assert_in_order_per_identity(&drain(&stack, 3).await, &[("T1", 3)]);
    let leases = || async {
        stack
            .dynamodb()
            .scan()
            .table_name(&stack.names.lease_table)
            .send()
            .await
            .map(|out| out.items().to_vec())
            .map_err(|e| e.to_string())
    };
    eventually("a checkpoint held by the relay", DEADLINE, || async {
        let rows = leases().await?;
        let held = rows.iter().any(|row| {
            row.contains_key("checkpoint")
                && row.get("lease_owner") == Some(&AttributeValue::S("relay-under-test".to_owned()))
        });
        if held {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .await;
    let status = relay.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    let rows = leases().await.expect("scan the lease table");
    assert!(!rows.is_empty());
    for row in rows {
        assert!(row.contains_key("checkpoint"), "{row:?}");
        assert!(
            !row.contains_key("lease_owner"),
            "released on SIGTERM: {row:?}"
        );
    }
}

#[tokio::test]
async fn the_daemon_refuses_to_start_without_its_table_and_says_how_to_fix_it() {
    let stack = Stack::create(3).await;
    let output = tokio::process::Command::new(obt_testkit::bin_path("stream-relay"))
        .env("OBT_TABLE", "no-such-table")
        .env("OBT_QUEUE_URL", &stack.queue_url)
        .env("OBT_LEASE_TABLE", &stack.names.lease_table)
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .expect("run stream-relay");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no-such-table") && stderr.contains("obt-migrate"),
        "the error names the table and the fix: {stderr}"
    );
}

/// While a POST's TransactWriteItems is under way on an item, DynamoDB
/// refuses the relay's acknowledgement (a statement of its
/// BatchExecuteStatement) with TransactionConflict, which the SDK cannot
/// retry (the request as a whole succeeded). The relay tries that
/// statement again: the acknowledgement succeeds, and the batch is not
/// failed (which would publish its events again).
#[tokio::test]
async fn an_acknowledgement_refused_by_a_posts_transaction_is_tried_again() {
    use obt_testkit::dynamo_proxy::{DynamoProxy, dynamodb_answer, hook};
    use std::sync::atomic::{AtomicU32, Ordering};

    let stack = Stack::create(3).await;
    let e1 = event("T1", 1);
    append(&stack, &e1).await;
    let refused = Arc::new(AtomicU32::new(0));
    let counter = refused.clone();
    let proxy = DynamoProxy::start(hook(move |operation| {
        let counter = counter.clone();
        async move {
            (operation == "BatchExecuteStatement" && counter.fetch_add(1, Ordering::SeqCst) < 2)
                .then(|| {
                    dynamodb_answer(&serde_json::json!({"Responses": [{"Error": {
                        "Code": "TransactionConflict",
                        "Message": "Transaction is ongoing for the item",
                    }}]}))
                })
        }
    }))
    .await;
    let outbox = obt_stream_relay::outbox::OutboxTable::new(
        proxy.retrying_client(&stack),
        stack.names.table.clone(),
    );

    outbox
        .acknowledge("T1", &[1], Some(1))
        .await
        .expect("acknowledged after the conflicts");
    assert_eq!(refused.load(Ordering::SeqCst), 3, "two refused, one done");
    assert!(outbox_of(&stack, "T1").await.is_empty());
}

/// Sets the sweeper's index attribute on `identity`'s item (the api does,
/// the testkit's append does not).
async fn set_pending_since(stack: &Stack, identity: &str) {
    stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S(identity.to_owned()))
        .update_expression("SET #ps = :ps")
        .expression_attribute_names("#ps", obt_contract::outbox::PENDING_SINCE_ATTR)
        .expression_attribute_values(":ps", AttributeValue::N("1".to_owned()))
        .send()
        .await
        .expect("pending_since set");
}

async fn has_pending_since(stack: &Stack, identity: &str) -> bool {
    obt_testkit::outbox::item(stack, identity)
        .await
        .expect("the item exists")
        .contains_key(obt_contract::outbox::PENDING_SINCE_ATTR)
}

/// The acknowledgements of many identities go 25 to a request; each one
/// removes only what it names, takes the index entry away only while the
/// item is at the acknowledged version, and an acknowledgement of more
/// events than a statement holds takes several, the index entry last.
#[tokio::test]
async fn acknowledgements_go_25_identities_to_a_request_and_remove_only_what_they_name() {
    use obt_stream_relay::outbox::{Acknowledgement, KEYS_PER_STATEMENT, OutboxTable};
    use obt_testkit::dynamo_proxy::DynamoProxy;

    let stack = Stack::create(3).await;
    let identities: Vec<String> = (0..30).map(|i| format!("BA{i}")).collect();
    for identity in &identities {
        append(&stack, &event(identity, 1)).await;
        append(&stack, &event(identity, 2)).await;
        set_pending_since(&stack, identity).await;
    }
    // One identity with more events than a statement removes.
    let long = KEYS_PER_STATEMENT as u64 + 20;
    for seq in 1..=long {
        append(&stack, &event("BIG", seq)).await;
    }
    set_pending_since(&stack, "BIG").await;
    let (proxy, calls) = DynamoProxy::recording().await;
    let outbox = OutboxTable::new(proxy.client(&stack), stack.names.table.clone());

    // The 30: 1 and 2 published; version 2 for the first 20, a stale
    // version for the next 5 (the item moved on), 1 only for the last 5.
    let both = [1, 2];
    let mut acks: Vec<Acknowledgement<'_>> = identities
        .iter()
        .enumerate()
        .map(|(i, identity)| Acknowledgement {
            identity,
            seqs: if i < 25 { &both } else { &both[..1] },
            version: match i {
                0..20 => Some(2),
                20..25 => Some(1),
                _ => None,
            },
        })
        .collect();
    let results = outbox.acknowledge_all(&acks).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        calls.operations(),
        ["BatchExecuteStatement"; 3],
        "30 identities in two requests, and the 5 stale versions in a third"
    );
    for (i, identity) in identities.iter().enumerate() {
        let expected: &[u64] = if i < 25 { &[] } else { &[2] };
        assert_eq!(outbox_of(&stack, identity).await, expected, "{identity}");
        assert_eq!(
            has_pending_since(&stack, identity).await,
            i >= 20,
            "{identity}: the index entry goes with the whole outbox only"
        );
    }

    calls.clear();
    let seqs: Vec<u64> = (1..=long).collect();
    acks = vec![Acknowledgement {
        identity: "BIG",
        seqs: &seqs,
        version: Some(long),
    }];
    let results = outbox.acknowledge_all(&acks).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(calls.operations().len(), 2, "two statements");
    assert!(outbox_of(&stack, "BIG").await.is_empty());
    assert!(!has_pending_since(&stack, "BIG").await);

    // Acknowledging again, or an item that is gone, is no error.
    let results = outbox.acknowledge_all(&acks).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let gone = [Acknowledgement {
        identity: "NO-SUCH",
        seqs: &[1],
        version: Some(1),
    }];
    assert!(outbox.acknowledge_all(&gone).await[0].is_ok());
}

/// A relay that meets an identity for the first time (a Lambda's cold
/// start, a daemon's restart, a shard taken over) takes the identity's
/// "published up to" mark from the stream record's old image instead of
/// reading the item: no `GetItem`, and still nothing pending left behind.
#[tokio::test]
async fn a_relay_new_to_an_identity_reads_its_mark_off_the_record_not_the_item() {
    use obt_testkit::dynamo_proxy::DynamoProxy;

    let stack = Stack::create(3).await;
    let (e1, e2, e3, e4, e5) = (
        event("PF1", 1),
        event("PF1", 2),
        event("PF1", 3),
        event("PF1", 4),
        event("PF1", 5),
    );
    // Events 1 and 2 relayed and acknowledged by one relay.
    append(&stack, &e1).await;
    append(&stack, &e2).await;
    let records = obt_testkit::stream::records(&stack, 2, DEADLINE).await;
    let first: Vec<Change> = records
        .iter()
        .filter_map(|r| Change::from_stream_record(r.clone()).expect("a change"))
        .collect();
    assert_eq!(first[0].published_floor, Some(0), "an item's first write");
    assert_eq!(first[1].published_floor, Some(0), "event 1 still pending");
    let relay = startup::relay(&stack.config, &settings(&stack).relay)
        .await
        .expect("relay");
    relay.handle(&first).await.expect("relayed");
    assert_eq!(drain(&stack, 2).await, [e1, e2]);
    assert!(outbox_of(&stack, "PF1").await.is_empty(), "acknowledged");

    // Event 3, then 4 and 5 with 4's record lost, each handled by a relay
    // that never saw PF1, whose every DynamoDB call is counted.
    let (proxy, calls) = DynamoProxy::recording().await;
    let fresh = || {
        obt_stream_relay::Relay::new(
            obt_stream_relay::publisher::Publisher::new(stack.sqs(), stack.queue_url.clone()),
            obt_stream_relay::outbox::OutboxTable::new(
                proxy.client(&stack),
                stack.names.table.clone(),
            ),
        )
    };
    let changes = |records: &[aws_sdk_dynamodbstreams::types::Record]| -> Vec<Change> {
        records
            .iter()
            .filter_map(|r| Change::from_stream_record(r.clone()).expect("a change"))
            .collect()
    };
    append(&stack, &e3).await;
    // The writes of 1 and 2, their acknowledgement, the write of 3.
    let records = obt_testkit::stream::records(&stack, 4, DEADLINE).await;
    let third = changes(&records[3..]);
    assert_eq!(
        third[0].published_floor,
        Some(2),
        "outbox empty at version 2"
    );
    fresh().handle(&third).await.expect("event 3 relayed");
    assert_eq!(drain(&stack, 1).await, [e3], "nothing published twice");
    append(&stack, &e4).await;
    append(&stack, &e5).await;
    // ..., the acknowledgement of 3, the writes of 4 and 5.
    let records = obt_testkit::stream::records(&stack, 7, DEADLINE).await;
    let fifth = changes(&records[6..]);
    assert_eq!(fifth[0].published_floor, Some(3), "4 pending before 5");
    fresh()
        .handle(&fifth)
        .await
        .expect("events 4 and 5 relayed");
    assert_eq!(drain(&stack, 2).await, [e4, e5], "what waited goes first");
    assert!(queue_is_empty(&stack).await);
    assert!(outbox_of(&stack, "PF1").await.is_empty());
    assert_eq!(calls.count("GetItem"), 0, "no read of the item");

    // The Lambda's records tell the same.
    let lambda = obt_testkit::lambda::dynamodb_event(&records, &stack.stream_arn);
    let mut lambda: aws_lambda_events::event::dynamodb::Event =
        serde_json::from_value(lambda).expect("a Lambda event");
    let floors: Vec<Option<u64>> = lambda
        .records
        .iter_mut()
        .map(|r| {
            Change::from_lambda_record(r)
                .expect("a change")
                .expect("not a removal")
                .published_floor
        })
        .collect();
    assert_eq!(
        floors,
        [
            Some(0),
            Some(0),
            Some(0),
            Some(2),
            Some(2),
            Some(3),
            Some(3)
        ]
    );

    // A change that cannot tell (the sweeper's) still reads the item.
    let blind = Change {
        published_floor: None,
        ..fifth[0].clone()
    };
    fresh().handle(&[blind]).await.expect("nothing to do");
    assert_eq!(calls.count("GetItem"), 1);
    assert!(queue_is_empty(&stack).await, "5 is known published");
}

/// Sets `identity`'s `outbox` attribute to a string, as a hand edit
/// might: DynamoDB then refuses every removal of an outbox entry.
async fn spoil_outbox(stack: &Stack, identity: &str) {
    stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S(identity.to_owned()))
        .update_expression("SET #o = :o")
        .expression_attribute_names("#o", obt_contract::outbox::OUTBOX_ATTR)
        .expression_attribute_values(":o", AttributeValue::S("edited by hand".to_owned()))
        .send()
        .await
        .expect("outbox spoiled");
}

/// The cause of `identity`'s parking mark, if it is parked.
async fn parked_cause(stack: &Stack, identity: &str) -> Option<String> {
    let item = obt_testkit::outbox::item(stack, identity)
        .await
        .expect("the item exists");
    let mark = item.get(obt_contract::outbox::PARKED_ATTR)?.as_m().ok()?;
    mark.get("cause")?.as_s().ok().cloned()
}

/// An acknowledgement that DynamoDB refuses for good (the item's outbox
/// was changed by hand after its events were read) holds back its own
/// identity only (invariant 6): the identity is parked, durably and
/// visibly, and the call that published it succeeds, so that the shard
/// moves on; the other identities of the batch are acknowledged. Both
/// ways a driver acknowledges: with the publication (the Lambda) and
/// after it, merged (the daemon).
#[tokio::test]
async fn an_acknowledgement_refused_for_good_parks_its_identity_and_the_batch_goes_on() {
    let stack = Stack::create(3).await;
    let relay = startup::relay(&stack.config, &settings(&stack).relay)
        .await
        .expect("relay");
    for identity in ["RA1", "RG1", "RA2", "RG2"] {
        append(&stack, &event(identity, 1)).await;
    }
    // The relay read the events (and its marks, off the records) before
    // the hand edit.
    spoil_outbox(&stack, "RA1").await;
    spoil_outbox(&stack, "RA2").await;
    let change = |sequence_number, identity| Change {
        published_floor: Some(0),
        ..change(sequence_number, identity, vec![event(identity, 1)])
    };

    let summary = relay
        .handle(&[change("1", "RA1"), change("2", "RG1")])
        .await
        .expect("the batch is done: the refused identity is parked, not failed");
    assert_eq!((summary.published, summary.parked), (2, 1));

    let (summary, acks) = relay
        .publish(&[change("3", "RA2"), change("4", "RG2")])
        .await
        .expect("published");
    assert_eq!(summary.published, 2);
    relay
        .acknowledge(&acks)
        .await
        .expect("the acknowledgements are done: the refused identity is parked, not failed");

    for identity in ["RA1", "RA2"] {
        assert_eq!(
            parked_cause(&stack, identity).await.as_deref(),
            Some("malformed"),
            "{identity} is parked"
        );
    }
    for identity in ["RG1", "RG2"] {
        assert!(outbox_of(&stack, identity).await.is_empty(), "{identity}");
        assert_eq!(parked_cause(&stack, identity).await, None, "{identity}");
    }
    assert_eq!(drain(&stack, 4).await.len(), 4, "every event published");
}
