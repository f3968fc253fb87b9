//! What cannot be applied as it comes: a poison message or a conflicting
//! event is dead-lettered alone, explicitly, with its reason, and parks
//! its identity; an event past a gap parks its identity and is held until
//! the missing one arrives. Other identities keep flowing. On fauxqs, in
//! either backend (`OBT_TEST_STORAGE`); `model` runs the same against a
//! queue that hands out several messages of a group at once.

use std::time::Duration;

use obt_consumer::parking::Cause;

use crate::helpers::{
    Logs, Running, TestStack, event, identity, load, receive_dead_letters, send, send_raw,
    wait_applied, wait_held, wait_parked, wait_queue_empty, wait_unparked,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_alone_at_once_with_its_reason_and_parks_its_group() {
    let logs = Logs::capture();
    let stack = TestStack::create(5).await;
    let consumer = Running::start(&stack).await;

    let poisoned = identity("poison");
    send_raw(&stack, poisoned.as_str(), "poison-1", "not json").await;
    let healthy = identity("healthy");
    send(&stack, &event(&healthy, 1, "5.00")).await;
    send(&stack, &event(&healthy, 2, "6.00")).await;

    let applied = wait_applied(&stack, &healthy, 2, Duration::from_secs(30)).await;
    assert_eq!(applied.total.to_string(), "11.00");

    let parked = wait_parked(&stack, &poisoned, Duration::from_secs(30)).await;
    assert_eq!(parked.parking.cause, Cause::Poison);
    assert!(parked.parking.message_id.is_some(), "{parked:?}");
    let dead = receive_dead_letters(&stack, &stack.dead_letter_queue_url).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (dead[0].group.as_str(), dead[0].body.as_str()),
        (poisoned.as_str(), "not json")
    );
    assert_eq!(dead[0].attribute("obt-dead-letter-cause"), "poison");
    assert!(
        dead[0]
            .attribute("obt-dead-letter-reason")
            .contains("not a valid SpendingRecorded envelope"),
        "{dead:?}"
    );
    assert_eq!(
        Some(dead[0].attribute("obt-source-message-id")),
        parked.parking.message_id.as_deref()
    );
    // Dead-lettered at its first receive, not after maxReceiveCount.
    assert_eq!(dead[0].attribute("obt-receive-count"), "1");
    let poison_logs = logs.lines_with(&["ERROR", "poison message", "receive_count=Some(1)"]);
    assert_eq!(poison_logs.len(), 1, "logged once, as an error");
    assert_eq!(
        logs.lines_with(&["ERROR", "parked identity", poisoned.as_str()])
            .len(),
        1
    );
    assert_eq!(stack.heads().await.len(), 1, "the poison applied nothing");
    wait_queue_empty(&stack, Duration::from_secs(10)).await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_a_gap_are_held_not_dead_lettered_and_applied_in_order_once_the_gap_fills() {
    let logs = Logs::capture();
    let stack = TestStack::create(2).await;
    let consumer = Running::start(&stack).await;

    let who = identity("gap");
    let events: Vec<_> = (1..=4).map(|seq| event(&who, seq, "1.00")).collect();
    for seq in [1, 3, 4] {
        send(&stack, &events[seq - 1]).await;
    }
    wait_held(&stack, &who, 2, Duration::from_secs(30)).await;
    let parked = wait_parked(&stack, &who, Duration::from_secs(1)).await;
    assert_eq!(parked.parking.cause, Cause::Gap);
    assert_eq!(parked.parking.seq, Some(2));
    let applied = load(&stack, &who).await.expect("seq 1 is applied");
    assert_eq!(
        (applied.last_seq, applied.count),
        (1, 1),
        "3 and 4 not applied"
    );
    wait_queue_empty(&stack, Duration::from_secs(10)).await;
    assert!(
        receive_dead_letters(&stack, &stack.dead_letter_queue_url)
            .await
            .is_empty(),
        "a gap dead-letters nothing"
    );
    assert_eq!(
        logs.lines_with(&[
            "ERROR",
            "parked identity",
            who.as_str(),
            "expected seq 2, received seq 3"
        ])
        .len(),
        1
    );

    // The missing event arrives, later: no operator needed.
    send(&stack, &events[1]).await;
    let applied = wait_applied(&stack, &who, 4, Duration::from_secs(30)).await;
    let seqs: Vec<u64> = applied.spendings.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    for (stored, sent) in applied.spendings.iter().zip(&events) {
        assert_eq!(stored.event_id, sent.event_id.to_string());
    }
    assert!(
        applied.spendings.iter().map(|s| s.applied_at).is_sorted(),
        "applied in seq order"
    );
    // The unpark commits after the last held event's apply: wait for it.
    wait_unparked(&stack, &who, Duration::from_secs(10)).await;
    assert!(
        stack
            .reader()
            .list_parked()
            .await
            .expect("lists")
            .is_empty(),
        "no longer parked"
    );
    assert!(
        stack
            .ledger()
            .held(who.as_str())
            .await
            .expect("reads")
            .is_empty(),
        "nothing held"
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_event_is_dead_lettered_alone_with_its_reason_and_parks_its_identity() {
    let _logs = Logs::capture();
    let stack = TestStack::create(5).await;
    let consumer = Running::start(&stack).await;

    let who = identity("conflict");
    let first = event(&who, 1, "1.00");
    send(&stack, &first).await;
    wait_applied(&stack, &who, 1, Duration::from_secs(30)).await;
    // Another event numbered 1: a contract violation.
    let impostor = event(&who, 1, "9.00");
    send(&stack, &impostor).await;
    let parked = wait_parked(&stack, &who, Duration::from_secs(30)).await;
    assert_eq!(parked.parking.cause, Cause::Conflict);
    assert!(
        parked
            .parking
            .reason
            .contains(&impostor.event_id.to_string()),
        "{parked:?}"
    );
    // Its next event is held behind the conflict, not applied past it.
    send(&stack, &event(&who, 2, "2.00")).await;
    wait_held(&stack, &who, 1, Duration::from_secs(30)).await;

    let dead = receive_dead_letters(&stack, &stack.dead_letter_queue_url).await;
    assert_eq!(dead.len(), 1, "the conflicting message alone: {dead:?}");
    assert_eq!(dead[0].body, impostor.encode());
    assert_eq!(dead[0].attribute("obt-dead-letter-cause"), "conflict");
    assert!(
        dead[0]
            .attribute("obt-dead-letter-reason")
            .contains("conflict")
    );
    let applied = load(&stack, &who).await.expect("applied");
    assert_eq!(
        (applied.last_seq, applied.total.to_string().as_str()),
        (1, "1.00")
    );
    consumer.stop().await;
}
