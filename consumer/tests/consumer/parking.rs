//! The records' parking operations on their own, in either backend
//! (`OBT_TEST_STORAGE`): both must give the same answers. The unpark must
//! never lose an event held at the same moment.

use obt_consumer::parking::{self, Cause, Held, ParkRequest};
use obt_consumer::{Applied, ApplyError, HoldError};

use crate::helpers::{TestStack, event, identity};

fn request(cause: Cause, reason: &str) -> ParkRequest {
    ParkRequest {
        cause,
        reason: reason.to_owned(),
        seq: Some(2),
        message_id: Some("m-1".to_owned()),
    }
}

#[tokio::test]
async fn a_parked_identity_applies_nothing_and_holds_its_events_in_seq_order() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let reader = stack.reader();
    let who = identity("held");
    ledger
        .apply(&event(&who, 1, "1.00"))
        .await
        .expect("applied");
    let parked = ledger
        .park(who.as_str(), &request(Cause::Poison, "unreadable"), false)
        .await
        .expect("parks");
    assert_eq!((parked.cause, parked.seq), (Cause::Poison, Some(2)));

    let second = event(&who, 2, "2.00");
    match ledger.apply(&second).await {
        Err(ApplyError::Parked { last_seq: 1, .. }) => {}
        other => panic!("expected the parking to refuse it, got {other:?}"),
    }
    let fourth = event(&who, 4, "4.00");
    let third = event(&who, 3, "3.00");
    assert_eq!(ledger.hold(&fourth).await.expect("held"), Held::New);
    assert_eq!(ledger.hold(&third).await.expect("held"), Held::New);
    assert_eq!(ledger.hold(&third).await.expect("held"), Held::Duplicate);
    let impostor = event(&who, 3, "9.00");
    assert!(matches!(
        ledger.hold(&impostor).await,
        Err(HoldError::Conflict { seq: 3, .. })
    ));
    let held: Vec<u64> = ledger
        .held(who.as_str())
        .await
        .expect("reads")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(held, [3, 4]);
    let listed = reader.list_parked().await.expect("lists");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].identity.as_str(), listed[0].held),
        (who.as_str(), 2)
    );

    // What the read model shows is what is applied, nothing held.
    let applied = reader
        .load_identity(who.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!((applied.last_seq, applied.spendings.len()), (1, 1));

    // The operator's path: apply in order regardless of the parking.
    assert_eq!(
        ledger.apply_parked(&second).await.expect("applied"),
        Applied::New
    );
    let drained = parking::drain(ledger, who.as_str(), |_| true)
        .await
        .expect("drains");
    assert_eq!((drained.applied, drained.last_seq), (2, 4));
    assert!(drained.parking.is_none(), "{drained:?}");
    assert!(ledger.held(who.as_str()).await.expect("reads").is_empty());
    assert!(reader.list_parked().await.expect("lists").is_empty());
    let applied = reader
        .load_identity(who.as_str())
        .await
        .expect("loads")
        .expect("exists");
    assert_eq!((applied.last_seq, applied.count), (4, 4));
    assert_eq!(applied.total.to_string(), "10.00");
}

#[tokio::test]
async fn an_unpark_fails_once_an_event_was_held_after_the_version_it_saw() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let who = identity("race");
    let parked = ledger
        .park(who.as_str(), &request(Cause::Gap, "expected seq 1"), false)
        .await
        .expect("parks");
    // An event held between the operator's look and its unpark.
    ledger.hold(&event(&who, 2, "2.00")).await.expect("held");
    assert!(
        !ledger
            .unpark(who.as_str(), parked.version)
            .await
            .expect("answers"),
        "unparked with an event held"
    );
    let now = ledger
        .state(who.as_str())
        .await
        .expect("reads")
        .parking
        .expect("still parked");
    assert_ne!(now.version, parked.version);
    assert!(
        !ledger
            .unpark(who.as_str(), now.version)
            .await
            .expect("answers"),
        "unparked with an event held, at the current version"
    );
    // Once nothing is held, the current version unparks; the next hold
    // then finds it unparked.
    ledger
        .apply_parked(&event(&who, 1, "1.00"))
        .await
        .expect("applied");
    let held = ledger.held(who.as_str()).await.expect("reads");
    ledger.apply_parked(&held[0]).await.expect("applied");
    let now = ledger.state(who.as_str()).await.expect("reads");
    let version = now.parking.expect("still parked").version;
    assert!(ledger.unpark(who.as_str(), version).await.expect("answers"));
    assert!(matches!(
        ledger.hold(&event(&who, 3, "3.00")).await,
        Err(HoldError::NotParked { .. })
    ));
    assert_eq!(ledger.state(who.as_str()).await.expect("reads").last_seq, 2);
}

#[tokio::test]
async fn a_poison_or_conflict_replaces_a_gap_parking_and_is_never_replaced_by_one() {
    let stack = TestStack::create(5).await;
    let ledger = stack.ledger();
    let reader = stack.reader();
    let who = identity("causes");
    ledger
        .park(who.as_str(), &request(Cause::Gap, "expected seq 2"), false)
        .await
        .expect("parks");
    let poison = ledger
        .park(who.as_str(), &request(Cause::Poison, "unreadable"), false)
        .await
        .expect("parks");
    assert_eq!(poison.cause, Cause::Poison);
    let kept = ledger
        .park(who.as_str(), &request(Cause::Gap, "expected seq 5"), false)
        .await
        .expect("parks");
    assert_eq!(
        (kept.cause, kept.reason.as_str()),
        (Cause::Poison, "unreadable")
    );
    // The operator's retry, which knows better, may.
    let replaced = ledger
        .park(who.as_str(), &request(Cause::Gap, "expected seq 5"), true)
        .await
        .expect("parks");
    assert_eq!(replaced.cause, Cause::Gap);
    // Parked before anything was applied: nothing shows as applied.
    assert_eq!(
        reader.load_identity(who.as_str()).await.expect("loads"),
        None
    );
    assert!(stack.heads().await.is_empty());
}

/// An operator's retry while the consumer keeps holding new events of the
/// identity (POSTs to it go on): every time the drain tries to unpark, an
/// event was held just before, as a proxy in front of the drain's records
/// holds one as each unpark goes out, 30 times, more than the 20 lost races
/// in a row the drain used to allow before giving up ("retry again"). It
/// applies what was held, round after round, and unparks once nothing new
/// came; no event is stranded. The drain is the same code for both
/// backends; the race is staged through the DynamoDB proxy, so this runs
/// in DynamoDB mode.
#[tokio::test]
async fn a_drain_keeps_up_with_events_held_while_it_runs_and_unparks() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use obt_consumer::{DynamoDbLedger, Ledger};
    use obt_testkit::dynamo_proxy::{DynamoProxy, hook};

    if obt_testkit::storage_under_test() != obt_runtime::Storage::Dynamodb {
        return;
    }
    const RACES: u64 = 30;
    let stack = TestStack::create(5).await;
    let who = identity("busy");
    let consumer: Arc<dyn Ledger> = Arc::new(DynamoDbLedger::new(
        stack.dynamodb(),
        &stack.names.consumer_table,
    ));
    consumer
        .park(who.as_str(), &request(Cause::Gap, "expected seq 1"), false)
        .await
        .expect("parks");
    consumer.hold(&event(&who, 1, "1.00")).await.expect("held");
    let next = Arc::new(AtomicU64::new(2));
    let proxy = DynamoProxy::start(hook({
        let (consumer, who, next) = (consumer.clone(), who.clone(), next.clone());
        move |operation| {
            let (consumer, who, next) = (consumer.clone(), who.clone(), next.clone());
            async move {
                // The drain's unpark is its only UpdateItem (but for the
                // "last applied" marker, now and then).
                let seq = next.load(Ordering::SeqCst);
                if operation == "UpdateItem" && seq <= RACES + 1 {
                    consumer
                        .hold(&event(&who, seq, "1.00"))
                        .await
                        .expect("held");
                    next.store(seq + 1, Ordering::SeqCst);
                }
                None
            }
        }
    }))
    .await;
    let operator = DynamoDbLedger::new(proxy.client(&stack), &stack.names.consumer_table);

    let drained = parking::drain(&operator, who.as_str(), |_| true)
        .await
        .expect("drains");
    assert!(
        drained.parking.is_none(),
        "unparked once nothing new was held: {drained:?}"
    );
    assert_eq!(drained.applied as u64, RACES + 1);
    let state = consumer.state(who.as_str()).await.expect("reads");
    assert!(state.parking.is_none());
    assert_eq!(state.last_seq, RACES + 1, "every event applied");
    assert!(consumer.held(who.as_str()).await.expect("reads").is_empty());
}
