//! The ledger's apply on its own: idempotence, order, and the reasons an
//! event is refused, in either backend (`OBT_TEST_STORAGE`): both must
//! give the same answers.

use obt_consumer::{Applied, ApplyError};

use crate::helpers::{TestStack, event, identity};

#[tokio::test]
async fn applying_the_same_event_twice_changes_the_table_once() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let reader = stack.reader();
    let identity = identity("twice");
    let first = event(&identity, 1, "51.30");

    assert_eq!(ledger.apply(&first).await.expect("applied"), Applied::New);
    let before = reader
        .load_identity(identity.as_str())
        .await
        .expect("loads");
    assert_eq!(
        ledger.apply(&first).await.expect("recognised"),
        Applied::Duplicate
    );
    assert_eq!(
        reader
            .load_identity(identity.as_str())
            .await
            .expect("loads"),
        before
    );

    // Also once the identity has moved on.
    ledger
        .apply(&event(&identity, 2, "1.00"))
        .await
        .expect("applied");
    assert_eq!(
        ledger.apply(&first).await.expect("recognised"),
        Applied::Duplicate
    );
    let applied = reader
        .load_identity(identity.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!((applied.last_seq, applied.count), (2, 2));
    assert_eq!(applied.total.to_string(), "52.30");
}

#[tokio::test]
async fn an_event_whose_predecessor_is_missing_is_a_gap() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let reader = stack.reader();
    let identity = identity("gap");

    match ledger.apply(&event(&identity, 2, "1.00")).await {
        Err(ApplyError::Gap {
            expected: 1,
            received: 2,
            ..
        }) => {}
        other => panic!("expected a gap before seq 1, got {other:?}"),
    }
    assert_eq!(
        reader
            .load_identity(identity.as_str())
            .await
            .expect("loads"),
        None
    );

    ledger
        .apply(&event(&identity, 1, "1.00"))
        .await
        .expect("applied");
    match ledger.apply(&event(&identity, 3, "1.00")).await {
        Err(ApplyError::Gap {
            expected: 2,
            received: 3,
            ..
        }) => {}
        other => panic!("expected a gap before seq 2, got {other:?}"),
    }
    let applied = reader
        .load_identity(identity.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(
        (applied.last_seq, applied.count, applied.spendings.len()),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn another_event_at_an_applied_seq_is_a_conflict() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let reader = stack.reader();
    let identity = identity("conflict");
    ledger
        .apply(&event(&identity, 1, "1.00"))
        .await
        .expect("applied");

    let impostor = event(&identity, 1, "2.00");
    match ledger.apply(&impostor).await {
        Err(ApplyError::Conflict {
            seq: 1, event_id, ..
        }) => {
            assert_eq!(event_id, impostor.event_id.to_string());
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let applied = reader
        .load_identity(identity.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(applied.total.to_string(), "1.00");
}

#[tokio::test]
async fn amounts_are_added_exactly_without_floating_point() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let reader = stack.reader();
    let small = identity("cents");
    // 0.1 + 0.2 is 0.30000000000000004 in binary floating point.
    ledger
        .apply(&event(&small, 1, "0.10"))
        .await
        .expect("applied");
    ledger
        .apply(&event(&small, 2, "0.20"))
        .await
        .expect("applied");
    let applied = reader
        .load_identity(small.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(applied.total.to_string(), "0.30");
    assert_eq!(applied.spendings[0].amount.to_string(), "0.10");

    // The largest amounts, beyond what an f64 holds exactly.
    let large = identity("large");
    ledger
        .apply(&event(&large, 1, "999999999999999999.99"))
        .await
        .expect("applied");
    ledger
        .apply(&event(&large, 2, "999999999999999999.99"))
        .await
        .expect("applied");
    let applied = reader
        .load_identity(large.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(applied.total.to_string(), "1999999999999999999.98");
}

#[tokio::test]
async fn the_last_apply_is_known_cheaply_and_hides_from_the_listings() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let reader = stack.reader();
    assert_eq!(reader.last_applied().await.expect("reads"), None);

    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let identity = identity("last");
    ledger
        .apply(&event(&identity, 1, "2.00"))
        .await
        .expect("applied");
    // The DynamoDB marker is written in the background of the apply.
    let at = obt_testkit::eventually(
        "an apply is known",
        std::time::Duration::from_secs(10),
        || async {
            reader
                .last_applied()
                .await
                .expect("reads")
                .ok_or_else(|| "no apply known yet".to_owned())
        },
    )
    .await;
    let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    assert!(
        before <= at && at <= after,
        "{at} not within {before}..{after}"
    );

    // The DynamoDB marker is no identity and no parking.
    let heads = reader.list_identities().await.expect("lists");
    assert_eq!(
        heads
            .iter()
            .map(|h| h.identity.as_str())
            .collect::<Vec<_>>(),
        [identity.as_str()]
    );
    assert!(reader.list_parked().await.expect("lists").is_empty());
}

/// `apply_all`: every event applied, or none. DynamoDB makes it one
/// write; MySQL has none for it (`false`, nothing changed), and the
/// consumer then applies the events one by one.
#[tokio::test]
async fn several_events_are_applied_all_or_none() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let reader = stack.reader();
    let (a, b, c) = (identity("allA"), identity("allB"), identity("allC"));
    let last_seq = |who: obt_contract::Identity| async move {
        reader
            .load_identity(who.as_str())
            .await
            .expect("loads")
            .map(|applied| applied.last_seq)
    };
    let together = obt_testkit::storage_under_test() == obt_runtime::Storage::Dynamodb;
    assert_eq!(ledger.max_applied_together() >= 2, together);

    let (a1, b1) = (event(&a, 1, "1.00"), event(&b, 1, "2.00"));
    let all = ledger.apply_all(&[&a1, &b1]).await.expect("no error");
    assert_eq!(all, together);
    if !all {
        ledger.apply(&a1).await.expect("applied");
        ledger.apply(&b1).await.expect("applied");
    }
    assert_eq!(last_seq(a.clone()).await, Some(1));
    assert_eq!(last_seq(b.clone()).await, Some(1));

    // A gap (b3), a duplicate (b1), each with events that would apply:
    // refused whole, nothing changed.
    let (a2, c1, b3) = (
        event(&a, 2, "1.00"),
        event(&c, 1, "3.00"),
        event(&b, 3, "4.00"),
    );
    for refused in [vec![&a2, &c1, &b3], vec![&a2, &b1]] {
        assert!(!ledger.apply_all(&refused).await.expect("no error"));
        assert_eq!(last_seq(a.clone()).await, Some(1));
        assert_eq!(last_seq(c.clone()).await, None);
    }
    // Nor past a parked identity.
    let request = obt_consumer::parking::gap_request(2, 3);
    ledger
        .park(b.as_str(), &request, false)
        .await
        .expect("parked");
    let b2 = event(&b, 2, "5.00");
    assert!(!ledger.apply_all(&[&a2, &b2]).await.expect("no error"));
    assert_eq!(last_seq(a.clone()).await, Some(1));
    assert_eq!(last_seq(b.clone()).await, Some(1));
}
