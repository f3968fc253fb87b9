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
    let sqs_config = aws_sdk_sqs::config::Builder::from(&stack.config)
        .endpoint_url(&proxy.url)
        .build();
    let relay = Relay::new(
        Publisher::new(
            aws_sdk_sqs::Client::from_conf(sqs_config),
            stack.queue_url.clone(),
        ),
        OutboxTable::new(stack.dynamodb(), stack.names.table.clone()),
    );
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
