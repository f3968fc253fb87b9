//! Invariant 6 at the relay, against the real emulators: an event that can
//! never be published as it is (SQS refuses it for good, the relay cannot
//! read it) parks its identity alone. The other identities, written before,
//! during and after, all go out exactly once and in order without waiting;
//! the daemon's checkpoint moves on; the parked identity's events wait in
//! its outbox and, once the cause is repaired, `obt-admin parked retry`
//! (the library behind it) lets them go, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use obt_admin::{RelayParkings, RetryOutcome};
use obt_contract::outbox::{OUTBOX_ATTR, PARKED_ATTR, outbox_key};
use obt_contract::{Envelope, Identity};
use obt_stream_relay::daemon::Daemon;
use obt_stream_relay::image::Parked;
use obt_stream_relay::lease::{LeaseTable, Position};
use obt_stream_relay::outbox::OutboxTable;
use obt_stream_relay::publisher::Publisher;
use obt_stream_relay::relay::Relay;
use obt_testkit::sqs_proxy::SqsProxy;
use obt_testkit::{Stack, eventually, outbox, stream};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

/// The identities that must flow whatever happens to the parked one.
fn others(prefix: &str) -> Vec<Identity> {
    (0..20)
        .map(|i| obt_testkit::identity(&format!("{prefix}{i}")))
        .collect()
}

/// Appends events `seqs` of each identity, interleaved.
async fn write(stack: &Stack, identities: &[&Identity], seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        for identity in identities {
            outbox::append(stack, &obt_testkit::event(identity, seq, "1.50")).await;
        }
    }
}

/// A relay daemon in this process, publishing through `sqs`.
fn daemon(stack: &Stack, sqs: aws_sdk_sqs::Client) -> Daemon {
    let dynamodb = stack.dynamodb();
    Daemon {
        streams: aws_sdk_dynamodbstreams::Client::new(&stack.config),
        relay: Arc::new(Relay::new(
            Publisher::new(sqs, stack.queue_url.clone()),
            OutboxTable::new(dynamodb.clone(), stack.names.table.clone()),
        )),
        leases: LeaseTable::new(
            dynamodb,
            stack.names.lease_table.clone(),
            stack.stream_arn.clone(),
            "parking-test".to_owned(),
        ),
        stream_arn: stack.stream_arn.clone(),
        idle_poll: Duration::from_millis(50),
        discover_interval: Duration::from_secs(1),
        lease_duration: Duration::from_secs(3),
        sweeper: None,
    }
}

/// An SQS client whose calls go through `proxy`.
fn through(stack: &Stack, proxy: &SqsProxy) -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::config::Builder::from(&stack.config)
        .endpoint_url(&proxy.url)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// Receives until `count` messages came: seqs per identity, in order.
async fn received(stack: &Stack, count: usize) -> BTreeMap<String, Vec<u64>> {
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for body in obt_testkit::drain(stack, &stack.queue_url, count, DEADLINE).await {
        let event = Envelope::decode(&body).expect("an envelope");
        seqs.entry(event.identity.to_string())
            .or_default()
            .push(event.seq);
    }
    seqs
}

/// The parking mark on `identity`'s item, once there is one.
async fn parked(stack: &Stack, identity: &Identity) -> Parked {
    eventually(&format!("{identity} parked"), DEADLINE, || async {
        let item = outbox::item(stack, identity.as_str())
            .await
            .ok_or("no item")?;
        let mark = item.get(PARKED_ATTR).ok_or("no mark")?.clone();
        serde_dynamo::aws_sdk_dynamodb_1::from_attribute_value::<Parked>(mark)
            .map_err(|e| format!("an unreadable mark: {e}"))
    })
    .await
}

/// Waits until the lease of the stream's shard is checkpointed at the
/// stream's newest record: the daemon passed every record.
async fn checkpoint_reaches_the_end(stack: &Stack) {
    let leases = LeaseTable::new(
        stack.dynamodb(),
        stack.names.lease_table.clone(),
        stack.stream_arn.clone(),
        "observer".to_owned(),
    );
    eventually("the checkpoint at the newest record", DEADLINE, || async {
        let records = stream::records(stack, 1, DEADLINE).await;
        let newest = records
            .last()
            .and_then(|r| r.dynamodb())
            .and_then(|d| d.sequence_number())
            .ok_or("no record")?
            .to_owned();
        let lease = leases.list().await.map_err(|e| e.to_string())?;
        let checkpoint = lease.first().and_then(|l| l.checkpoint.clone());
        if checkpoint == Some(Position::After(newest.clone())) {
            Ok(())
        } else {
            Err(format!("checkpoint {checkpoint:?}, newest record {newest}"))
        }
    })
    .await;
}

fn assert_all_in_order(seqs: &BTreeMap<String, Vec<u64>>, identities: &[Identity], count: u64) {
    let expected: Vec<u64> = (1..=count).collect();
    for identity in identities {
        assert_eq!(
            seqs.get(identity.as_str()),
            Some(&expected),
            "{identity}: every event once, in order"
        );
    }
}

#[tokio::test]
async fn an_event_sqs_refuses_for_good_parks_its_identity_alone_and_a_retry_after_the_repair_delivers_it_in_order()
 {
    let stack = Stack::create(3).await;
    let victim = obt_testkit::identity("RV");
    let others = others("RO");
    let group = victim.to_string();
    let proxy = SqsProxy::start(move |entry, _| {
        let body: serde_json::Value =
            serde_json::from_str(entry["MessageBody"].as_str().unwrap_or_default())
                .unwrap_or_default();
        entry["MessageGroupId"] == group.as_str() && body["seq"] == 2
    })
    .await;
    proxy.refuse_for_good();
    let mut all: Vec<&Identity> = vec![&victim];
    all.extend(others.iter());
    write(&stack, &all, 1..=3).await;

    let shutdown = CancellationToken::new();
    let running =
        tokio::spawn(Arc::new(daemon(&stack, through(&stack, &proxy))).run(shutdown.clone()));

    let mark = parked(&stack, &victim).await;
    assert_eq!(mark.cause, "sqs_refused");
    assert_eq!(mark.seq, Some(2));
    assert!(
        mark.reason.contains("InvalidMessageContents"),
        "{}",
        mark.reason
    );
    // Others keep writing after the parking; the victim too.
    write(&stack, &all, 4..=5).await;
    let seqs = received(&stack, others.len() * 5 + 1).await;
    assert_all_in_order(&seqs, &others, 5);
    assert_eq!(seqs[victim.as_str()], [1], "nothing past the refused event");
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
    assert_eq!(
        outbox::pending(&stack, victim.as_str()).await,
        Some(vec![2, 3, 4, 5]),
        "the held events wait in the outbox"
    );
    checkpoint_reaches_the_end(&stack).await;

    // The listing shows it.
    let parkings = RelayParkings::DynamoDb(OutboxTable::new(
        stack.dynamodb(),
        stack.names.table.clone(),
    ));
    let listed = eventually("the victim listed", DEADLINE, || async {
        let listed = parkings.list().await.map_err(|e| e.to_string())?;
        if listed.len() == 1 {
            Ok(listed)
        } else {
            Err(format!("{listed:?}"))
        }
    })
    .await;
    assert_eq!(listed[0].identity, victim.as_str());
    assert_eq!(listed[0].waiting, 4);

    // SQS would refuse it again: the retry says so.
    let outcome = parkings
        .retry(victim.as_str(), DEADLINE)
        .await
        .expect("a retry");
    assert!(
        matches!(outcome, RetryOutcome::ParkedAgain { .. }),
        "{outcome:?}"
    );
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);

    // Repaired (here: SQS takes it now), the retry delivers it, in order.
    proxy.heal();
    let outcome = parkings
        .retry(victim.as_str(), DEADLINE)
        .await
        .expect("a retry");
    assert_eq!(
        outcome,
        RetryOutcome::Published {
            identity: victim.to_string(),
            events: 4
        }
    );
    let seqs = received(&stack, 4).await;
    assert_eq!(seqs[victim.as_str()], [2, 3, 4, 5]);
    assert_eq!(outbox::pending(&stack, victim.as_str()).await, Some(vec![]));
    assert!(
        parkings.list().await.expect("a list").is_empty() || {
            // The index is eventually consistent; the mark itself is gone.
            outbox::item(&stack, victim.as_str())
                .await
                .is_some_and(|item| !item.contains_key(PARKED_ATTR))
        }
    );
    shutdown.cancel();
    running.await.expect("the daemon stops");
}

/// Appends `event` to its identity's outbox as a writer that this relay
/// cannot read would (another service, an older build): its `event_id` is
/// no UUID. Like the api, the write bumps the version.
async fn append_unreadable(stack: &Stack, event: &Envelope) {
    let mut value: std::collections::HashMap<String, AttributeValue> =
        serde_dynamo::aws_sdk_dynamodb_1::to_item(event).expect("serializes");
    value.insert(
        "event_id".to_owned(),
        AttributeValue::S("not-a-uuid".to_owned()),
    );
    stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S(event.identity.to_string()))
        .update_expression("SET #v = :seq, #o.#k = :event")
        .condition_expression("#v = :prev")
        .expression_attribute_names("#v", "version")
        .expression_attribute_names("#o", OUTBOX_ATTR)
        .expression_attribute_names("#k", outbox_key(event.seq))
        .expression_attribute_values(":event", AttributeValue::M(value))
        .expression_attribute_values(":seq", AttributeValue::N(event.seq.to_string()))
        .expression_attribute_values(":prev", AttributeValue::N((event.seq - 1).to_string()))
        .send()
        .await
        .expect("append the unreadable entry");
}

/// Puts `event` back in its outbox entry: the operator's repair.
async fn repair(stack: &Stack, event: &Envelope) {
    let value = serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(event).expect("serializes");
    stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S(event.identity.to_string()))
        .update_expression("SET #o.#k = :event")
        .expression_attribute_names("#o", OUTBOX_ATTR)
        .expression_attribute_names("#k", outbox_key(event.seq))
        .expression_attribute_values(":event", value)
        .send()
        .await
        .expect("repair the entry");
}

#[tokio::test]
async fn an_outbox_entry_the_relay_cannot_read_parks_its_identity_alone_until_it_is_repaired() {
    let stack = Stack::create(3).await;
    let victim = obt_testkit::identity("UV");
    let others = others("UO");
    let mut all: Vec<&Identity> = vec![&victim];
    all.extend(others.iter());
    outbox::append(&stack, &obt_testkit::event(&victim, 1, "1.50")).await;
    let second = obt_testkit::event(&victim, 2, "1.50");
    append_unreadable(&stack, &second).await;
    write(&stack, &others.iter().collect::<Vec<_>>(), 1..=2).await;

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Arc::new(daemon(&stack, stack.sqs())).run(shutdown.clone()));
    let mark = parked(&stack, &victim).await;
    assert_eq!((mark.cause.as_str(), mark.seq), ("undecodable", Some(2)));
    assert!(mark.reason.contains("entry 2"), "{}", mark.reason);
    for seq in 3..=4 {
        outbox::append(&stack, &obt_testkit::event(&victim, seq, "1.50")).await;
    }
    write(&stack, &others.iter().collect::<Vec<_>>(), 3..=4).await;
    let seqs = received(&stack, others.len() * 4 + 1).await;
    assert_all_in_order(&seqs, &others, 4);
    assert_eq!(seqs[victim.as_str()], [1]);
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
    checkpoint_reaches_the_end(&stack).await;

    repair(&stack, &second).await;
    let parkings = RelayParkings::DynamoDb(OutboxTable::new(
        stack.dynamodb(),
        stack.names.table.clone(),
    ));
    let outcome = parkings
        .retry(victim.as_str(), DEADLINE)
        .await
        .expect("a retry");
    assert!(
        matches!(outcome, RetryOutcome::Published { events: 3, .. }),
        "{outcome:?}"
    );
    let seqs = received(&stack, 3).await;
    assert_eq!(seqs[victim.as_str()], [2, 3, 4]);
    shutdown.cancel();
    running.await.expect("the daemon stops");
}
