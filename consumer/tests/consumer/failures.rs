//! What must not be applied: poison messages and events after a gap. Both
//! stay unacknowledged and end in the dead-letter queue, while other
//! identities keep flowing. In either backend (`OBT_TEST_STORAGE`).

use std::time::Duration;

use obt_contract::Envelope;

use crate::helpers::{
    Logs, Running, TestStack, event, identity, load, receive_dead_letter, send, send_raw,
    wait_applied,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_ends_in_the_dead_letter_queue_while_other_identities_keep_flowing() {
    let logs = Logs::capture();
    let stack = TestStack::create(2).await;
    let consumer = Running::start(&stack).await;

    send_raw(&stack, "poison", "poison-1", "not json").await;
    let healthy = identity("healthy");
    send(&stack, &event(&healthy, 1, "5.00")).await;
    send(&stack, &event(&healthy, 2, "6.00")).await;

    let applied = wait_applied(&stack, &healthy, 2, Duration::from_secs(30)).await;
    assert_eq!(applied.total.to_string(), "11.00");

    let (group, body) = receive_dead_letter(&stack, Duration::from_secs(30)).await;
    assert_eq!((group.as_str(), body.as_str()), ("poison", "not json"));
    let poison_logs = logs.lines_with(&["ERROR", "poison message", "poison"]);
    assert!(
        !poison_logs.is_empty(),
        "the poison message is logged as an error"
    );
    assert!(
        poison_logs
            .iter()
            .all(|line| line.contains("receive_count=Some(")),
        "the log says how often it was received: {poison_logs:?}"
    );
    let heads = stack.heads().await;
    assert_eq!(
        heads.len(),
        1,
        "the poison message applied nothing: {heads:?}"
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_after_a_gap_is_never_applied_is_reported_and_ends_in_the_dead_letter_queue() {
    let logs = Logs::capture();
    let stack = TestStack::create(2).await;
    let consumer = Running::start(&stack).await;

    let identity = identity("gap");
    let first = event(&identity, 1, "1.00");
    let third = event(&identity, 3, "3.00");
    send(&stack, &first).await;
    send(&stack, &third).await;

    wait_applied(&stack, &identity, 1, Duration::from_secs(30)).await;
    // Received twice (the visibility timeout is 5 s), then dead-lettered.
    let (group, body) = receive_dead_letter(&stack, Duration::from_secs(40)).await;
    assert_eq!(group, identity.as_str());
    let dead = Envelope::decode(&body).expect("the dead letter is the event");
    assert_eq!((dead.seq, dead.event_id), (3, third.event_id));

    let applied = load(&stack, &identity).await.expect("seq 1 is applied");
    assert_eq!(
        (applied.last_seq, applied.count),
        (1, 1),
        "seq 3 was never applied"
    );
    assert_eq!(applied.spendings.len(), 1);
    assert_eq!(applied.total.to_string(), "1.00");

    let gaps = logs.lines_with(&[
        "ERROR",
        "gap",
        identity.as_str(),
        "expected_seq=2",
        "received_seq=3",
    ]);
    assert!(
        gaps.len() >= 2,
        "the gap is logged at each of the 2 receives: {gaps:?}"
    );
    consumer.stop().await;
}
