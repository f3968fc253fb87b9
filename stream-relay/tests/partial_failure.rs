//! `SendMessageBatch` partial failures, made real: a proxy between the
//! relay and fauxqs takes one entry out of a batch before forwarding it and
//! reports that entry as failed, exactly as SQS does when it accepts some
//! entries of a batch and not others. The relay must send it again, lose
//! nothing and keep each identity's order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use obt_contract::{Envelope, Identity};
use obt_stream_relay::{Change, Relay, outbox::OutboxTable, publisher::Publisher};
use obt_testkit::Stack;
use obt_testkit::sqs_proxy::SqsProxy;

const DEADLINE: Duration = Duration::from_secs(30);

/// A proxy that fails the entry at position `victim` of a batch, in
/// `to_fail` batches.
async fn start_proxy(to_fail: usize, victim: usize) -> SqsProxy {
    let budget = AtomicUsize::new(to_fail);
    SqsProxy::start(move |_entry, position| {
        position == victim
            && budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok()
    })
    .await
}

/// A relay whose SQS calls go through `proxy`.
fn relay_through(stack: &Stack, proxy: &SqsProxy) -> Relay {
    let sqs_config = aws_sdk_sqs::config::Builder::from(&stack.config)
        .endpoint_url(&proxy.url)
        .build();
    Relay::new(
        Publisher::new(
            aws_sdk_sqs::Client::from_conf(sqs_config),
            stack.queue_url.clone(),
        ),
        OutboxTable::new(stack.dynamodb(), stack.names.table.clone()),
    )
}

fn change(event: &Envelope) -> Change {
    Change {
        sequence_number: event.seq.to_string(),
        identity: event.identity.to_string(),
        version: Some(event.seq),
        adds_events: true,
        pending: vec![event.clone()],
        ..Change::default()
    }
}

#[tokio::test]
async fn entries_sqs_did_not_accept_are_sent_again_in_order_and_nothing_is_lost() {
    let stack = Stack::create(3).await;
    let identities: Vec<Identity> = (0..4)
        .map(|i| obt_testkit::identity(&format!("PF{i}")))
        .collect();
    // Two events per identity: the plan sends every identity's first event
    // in one batch and the second events in the next.
    let events: Vec<Envelope> = (1..=2)
        .flat_map(|seq| {
            identities
                .iter()
                .map(move |id| obt_testkit::event(id, seq, "1.00"))
        })
        .collect();
    let proxy = start_proxy(2, 1).await;
    let relay = relay_through(&stack, &proxy);
    // The outbox items do not exist: the relay learns "nothing published
    // yet" and its acknowledgements leave the missing items alone.
    let changes: Vec<Change> = events.iter().map(change).collect();
    let summary = relay
        .handle(&changes)
        .await
        .expect("the relay retries the failed entries");
    assert_eq!(summary.published, 8);
    assert_eq!(proxy.failed(), 2, "the proxy did fail two entries");

    let received: Vec<Envelope> = obt_testkit::drain(&stack, &stack.queue_url, 8, DEADLINE)
        .await
        .iter()
        .map(|body| Envelope::decode(body).expect("an envelope"))
        .collect();
    for identity in &identities {
        let seqs: Vec<u64> = received
            .iter()
            .filter(|e| &e.identity == identity)
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2], "{identity}: each event once, in order");
    }
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
}

/// A batch in which SQS refuses one entry for good (its content) and keeps
/// failing another for a reason that may pass, until the attempts are used
/// up: the call fails, and the refused event counts as not published,
/// never as accepted. So the change that planned it is not done, the retry
/// meets the refusal again and parks its identity; were the refusal taken
/// for published, its identity's mark would pass it and the event would be
/// skipped, neither published nor parked.
#[tokio::test]
async fn a_refusal_in_a_batch_whose_call_fails_is_not_taken_for_published() {
    let stack = Stack::create(3).await;
    let refused = obt_testkit::identity("PR1");
    let flaky = obt_testkit::identity("PR2");
    let events = [
        obt_testkit::event(&refused, 1, "1.00"),
        obt_testkit::event(&flaky, 1, "1.00"),
    ];
    for event in &events {
        obt_testkit::outbox::append(&stack, event).await;
    }
    // Every entry fails: PR1's for good, PR2's as SQS's own error.
    let proxy = SqsProxy::start(|_, _| true).await;
    let group = refused.to_string();
    proxy.refuse_for_good_when(move |entry| entry["MessageGroupId"] == group.as_str());
    let relay = relay_through(&stack, &proxy);
    let changes: Vec<Change> = events.iter().map(change).collect();

    let error = relay
        .handle(&changes)
        .await
        .expect_err("PR2 was never accepted");
    assert_eq!(
        error.first_unfinished, 0,
        "PR1's change is not done: its refusal is no publication ({error})"
    );

    // SQS takes PR2 again; PR1's content is still refused.
    let group = refused.to_string();
    proxy.set_rule(move |entry, _| entry["MessageGroupId"] == group.as_str());
    let summary = relay.handle(&changes).await.expect("handled");
    assert_eq!((summary.published, summary.parked), (1, 1));
    let item = obt_testkit::outbox::item(&stack, refused.as_str())
        .await
        .expect("the item exists");
    let mark = item
        .get(obt_contract::outbox::PARKED_ATTR)
        .and_then(|m| m.as_m().ok())
        .unwrap_or_else(|| panic!("PR1 is parked: {item:?}"));
    assert_eq!(
        mark.get("cause")
            .and_then(|c| c.as_s().ok())
            .map(String::as_str),
        Some("sqs_refused")
    );
    assert_eq!(
        mark.get("seq")
            .and_then(|c| c.as_n().ok())
            .map(String::as_str),
        Some("1"),
        "parked at the refused event"
    );
    let received = obt_testkit::drain(&stack, &stack.queue_url, 1, DEADLINE).await;
    let received = Envelope::decode(&received[0]).expect("an envelope");
    assert_eq!((received.identity, received.seq), (flaky, 1));
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
}
