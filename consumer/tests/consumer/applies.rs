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

/// The first events of several identities in one receive are applied with
/// ONE write (DynamoDB: one TransactWriteItems for all of them); when that
/// write is refused (here a gap), each event goes its own way, and the
/// others are applied all the same (invariant 6). In MySQL mode, where
/// the records have no such write, the same batch is applied one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receives_first_events_go_in_one_write_and_a_refused_one_falls_back_to_one_by_one() {
    use obt_consumer::dead_letter::DeadLetterQueue;
    use obt_consumer::queue::Queue;
    use obt_consumer::{Consumer, Ledger};
    use obt_testkit::dynamo_proxy::DynamoProxy;
    use std::sync::Arc;

    let stack = TestStack::create(5).await;
    let (proxy, calls) = DynamoProxy::recording().await;
    let dynamodb = obt_testkit::storage_under_test() == obt_runtime::Storage::Dynamodb;
    let ledger: Arc<dyn Ledger> = if dynamodb {
        Arc::new(obt_consumer::DynamoDbLedger::new(
            proxy.client(&stack),
            &stack.names.consumer_table,
        ))
    } else {
        stack.ledger_through(stack.records_addr()).await
    };
    let queue = Queue::new(stack.sqs(), stack.queue_url.clone(), 1, Some(60));
    let dead_letters = DeadLetterQueue::new(stack.sqs(), stack.dead_letter_queue_url.clone());
    let consumer = Arc::new(Consumer::new(queue.clone(), dead_letters, ledger, 1));

    // Receives until `count` messages came, as one batch.
    let receive = |count: usize| {
        let queue = queue.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut batch = Vec::new();
            while batch.len() < count {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{count} messages to be received; got {}",
                    batch.len()
                );
                batch.extend(queue.receive().await.expect("receive"));
            }
            batch
        }
    };

    let who: Vec<_> = (0..4).map(|i| identity(&format!("together{i}"))).collect();
    for identity in &who {
        send(&stack, &event(identity, 1, "1.00")).await;
    }
    let batch = receive(who.len()).await;
    calls.clear();
    consumer.handle_batch(batch).await;
    for identity in &who {
        let applied = wait_applied(&stack, identity, 1, Duration::from_secs(10)).await;
        assert_eq!(applied.count, 1);
    }
    if dynamodb {
        assert_eq!(
            calls.count("TransactWriteItems"),
            1,
            "one write for the four events"
        );
    }

    // A gap of together0 in the next receive: the write of both is
    // refused; together1's event 2 is applied on its own, together0 is
    // parked, its event held.
    calls.clear();
    send(&stack, &event(&who[0], 3, "3.00")).await;
    send(&stack, &event(&who[1], 2, "2.00")).await;
    let batch = receive(2).await;
    consumer.handle_batch(batch).await;
    let applied = wait_applied(&stack, &who[1], 2, Duration::from_secs(10)).await;
    assert_eq!(applied.count, 2);
    crate::helpers::wait_held(&stack, &who[0], 1, Duration::from_secs(10)).await;
    if dynamodb {
        assert!(
            calls.count("TransactWriteItems") >= 3,
            "the refused write of both, then each on its own: {:?}",
            calls.operations()
        );
    }
    wait_queue_empty(&stack, Duration::from_secs(10)).await;
}
