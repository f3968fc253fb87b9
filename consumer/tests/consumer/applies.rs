//! The happy paths: events applied exactly once, in order, with the right
//! totals, and duplicate deliveries recognised. In either backend
//! (`OBT_TEST_STORAGE`).

use std::time::Duration;

use rust_decimal::Decimal;

use crate::helpers::{
    Logs, Running, TestStack, event, identity, send, wait_applied, wait_queue_empty,
};

const AMOUNTS: [&str; 5] = ["10.05", "0.10", "0.20", "999.99", "7"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_several_identities_are_applied_once_each_in_seq_order_with_the_right_totals() {
    let _logs = Logs::capture();
    let stack = TestStack::create(5).await;
    let consumer = Running::start(&stack).await;

    let identities: Vec<_> = (0..4).map(|i| identity(&format!("many{i}"))).collect();
    let mut sent = vec![Vec::new(); identities.len()];
    // Interleaved, as the relay publishes many identities at once.
    for (seq, amount) in (1..).zip(AMOUNTS) {
        for (i, identity) in identities.iter().enumerate() {
            let event = event(identity, seq, amount);
            send(&stack, &event).await;
            sent[i].push(event);
        }
    }

    let expected_total: Decimal = AMOUNTS
        .iter()
        .map(|a| a.parse::<Decimal>().expect("decimal"))
        .sum();
    for (identity, sent) in identities.iter().zip(&sent) {
        let applied = wait_applied(&stack, identity, 5, Duration::from_secs(30)).await;
        assert_eq!(applied.last_seq, 5);
        assert_eq!(applied.count, 5, "each event counted once");
        assert_eq!(applied.total, expected_total);
        assert_eq!(
            applied.total.to_string(),
            "1017.34",
            "money keeps its cents"
        );
        assert_eq!(
            applied.name, "Name5",
            "the head carries the last event's name"
        );
        let seqs: Vec<u64> = applied.spendings.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        for (stored, sent) in applied.spendings.iter().zip(sent) {
            assert_eq!(stored.event_id, sent.event_id.to_string());
            assert_eq!(stored.amount, sent.data.amount.value());
            assert_eq!(stored.occurred_at, sent.occurred_at);
        }
        let applied_at: Vec<_> = applied.spendings.iter().map(|s| s.applied_at).collect();
        assert!(
            applied_at.is_sorted(),
            "applied in seq order: {applied_at:?}"
        );
    }

    let heads = stack.heads().await;
    let mut expected: Vec<&str> = identities.iter().map(|i| i.as_str()).collect();
    expected.sort();
    assert_eq!(
        heads
            .iter()
            .map(|h| h.identity.as_str())
            .collect::<Vec<_>>(),
        expected
    );
    assert!(
        heads
            .iter()
            .all(|h| h.last_seq == 5 && h.count == 5 && h.total == expected_total)
    );

    wait_queue_empty(&stack, Duration::from_secs(10)).await;
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_is_applied_once_and_both_messages_are_deleted() {
    let logs = Logs::capture();
    let stack = TestStack::create(5).await;
    let consumer = Running::start(&stack).await;

    let identity = identity("dup");
    let first = event(&identity, 1, "51.30");
    let second = event(&identity, 2, "1.00");
    // Two deduplication ids, so that SQS delivers both copies, as after a
    // relay crash more than 5 minutes before its retry.
    let body = first.encode();
    crate::helpers::send_raw(&stack, identity.as_str(), "copy-1", &body).await;
    crate::helpers::send_raw(&stack, identity.as_str(), "copy-2", &body).await;
    send(&stack, &second).await;

    let applied = wait_applied(&stack, &identity, 2, Duration::from_secs(30)).await;
    wait_queue_empty(&stack, Duration::from_secs(10)).await;
    let applied_again = crate::helpers::load(&stack, &identity)
        .await
        .expect("applied");
    assert_eq!(
        applied_again, applied,
        "nothing changed after the queue drained"
    );
    assert_eq!(applied.count, 2);
    assert_eq!(applied.total.to_string(), "52.30");
    assert_eq!(applied.spendings.len(), 2);
    assert_eq!(applied.spendings[0].event_id, first.event_id.to_string());
    assert_eq!(
        logs.lines_with(&["duplicate", identity.as_str()]).len(),
        1,
        "the second copy is logged as a duplicate"
    );
    consumer.stop().await;
}
