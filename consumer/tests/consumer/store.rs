//! The table's write on its own: idempotence, order, and the reasons a
//! write is refused, against DynamoDB Local.

use obt_consumer::{Applied, ApplyError, SpendingTable};
use obt_testkit::Stack;

use crate::helpers::{event, identity};

async fn table() -> (Stack, SpendingTable) {
    let stack = Stack::create(5).await;
    let table = SpendingTable::new(stack.dynamodb(), stack.names.consumer_table.clone());
    (stack, table)
}

#[tokio::test]
async fn applying_the_same_event_twice_changes_the_table_once() {
    let (_stack, table) = table().await;
    let identity = identity("twice");
    let first = event(&identity, 1, "51.30");

    assert_eq!(table.apply(&first).await.expect("applied"), Applied::New);
    let before = table.load_identity(identity.as_str()).await.expect("loads");
    assert_eq!(
        table.apply(&first).await.expect("recognised"),
        Applied::Duplicate
    );
    assert_eq!(
        table.load_identity(identity.as_str()).await.expect("loads"),
        before
    );

    // Also once the identity has moved on.
    table
        .apply(&event(&identity, 2, "1.00"))
        .await
        .expect("applied");
    assert_eq!(
        table.apply(&first).await.expect("recognised"),
        Applied::Duplicate
    );
    let applied = table
        .load_identity(identity.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!((applied.last_seq, applied.count), (2, 2));
    assert_eq!(applied.total.to_string(), "52.30");
}

#[tokio::test]
async fn an_event_whose_predecessor_is_missing_is_a_gap() {
    let (_stack, table) = table().await;
    let identity = identity("gap");

    match table.apply(&event(&identity, 2, "1.00")).await {
        Err(ApplyError::Gap {
            expected: 1,
            received: 2,
            ..
        }) => {}
        other => panic!("expected a gap before seq 1, got {other:?}"),
    }
    assert_eq!(
        table.load_identity(identity.as_str()).await.expect("loads"),
        None
    );

    table
        .apply(&event(&identity, 1, "1.00"))
        .await
        .expect("applied");
    match table.apply(&event(&identity, 3, "1.00")).await {
        Err(ApplyError::Gap {
            expected: 2,
            received: 3,
            ..
        }) => {}
        other => panic!("expected a gap before seq 2, got {other:?}"),
    }
    let applied = table
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
    let (_stack, table) = table().await;
    let identity = identity("conflict");
    table
        .apply(&event(&identity, 1, "1.00"))
        .await
        .expect("applied");

    let impostor = event(&identity, 1, "2.00");
    match table.apply(&impostor).await {
        Err(ApplyError::Conflict {
            seq: 1, event_id, ..
        }) => {
            assert_eq!(event_id, impostor.event_id.to_string());
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let applied = table
        .load_identity(identity.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(applied.total.to_string(), "1.00");
}

#[tokio::test]
async fn amounts_are_added_exactly_without_floating_point() {
    let (_stack, table) = table().await;
    let small = identity("cents");
    // 0.1 + 0.2 is 0.30000000000000004 in binary floating point.
    table
        .apply(&event(&small, 1, "0.10"))
        .await
        .expect("applied");
    table
        .apply(&event(&small, 2, "0.20"))
        .await
        .expect("applied");
    let applied = table
        .load_identity(small.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(applied.total.to_string(), "0.30");
    assert_eq!(applied.spendings[0].amount.to_string(), "0.10");

    // The largest amounts, beyond what an f64 holds exactly.
    let large = identity("large");
    table
        .apply(&event(&large, 1, "999999999999999999.99"))
        .await
        .expect("applied");
    table
        .apply(&event(&large, 2, "999999999999999999.99"))
        .await
        .expect("applied");
    let applied = table
        .load_identity(large.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!(applied.total.to_string(), "1999999999999999999.98");
}
