//! Lease logic against DynamoDB Local: the rows that let several daemon
//! instances share a stream's shards, and the fencing that keeps a former
//! owner from moving a checkpoint.

use std::time::{Duration, Instant};

use obt_stream_relay::lease::{Lease, LeaseError, LeaseTable, Observations, Position};
use obt_testkit::Stack;
use tokio_util::sync::CancellationToken;

const SHARD: &str = "shardId-00000001";
const DURATION: Duration = Duration::from_secs(10);

fn worker(stack: &Stack, owner: &str) -> LeaseTable {
    LeaseTable::new(
        stack.dynamodb(),
        stack.names.lease_table.clone(),
        stack.stream_arn.clone(),
        owner.to_owned(),
    )
}

async fn the_lease(table: &LeaseTable) -> Lease {
    let leases = table.list().await.expect("list leases");
    assert_eq!(leases.len(), 1, "one row per shard: {leases:?}");
    leases.into_iter().next().expect("one lease")
}

#[tokio::test]
async fn two_workers_racing_for_one_lease_leave_exactly_one_owner() {
    let stack = Stack::create(3).await;
    let (a, b) = (worker(&stack, "a"), worker(&stack, "b"));
    // Both create the row (the second is a no-op) and read it unowned.
    a.create_if_absent(SHARD, None).await.expect("create");
    b.create_if_absent(SHARD, None).await.expect("create again");
    let seen = the_lease(&a).await;
    assert_eq!((seen.owner.as_deref(), seen.counter), (None, 0));

    let shutdown = CancellationToken::new();
    let (took_a, took_b) = tokio::join!(a.take(&seen, &shutdown), b.take(&seen, &shutdown));
    let (took_a, took_b) = (took_a.expect("a's take"), took_b.expect("b's take"));
    assert!(
        took_a.is_some() != took_b.is_some(),
        "exactly one wins: a {:?}, b {:?}",
        took_a.is_some(),
        took_b.is_some()
    );
    let winner = if took_a.is_some() { "a" } else { "b" };
    let lease = the_lease(&a).await;
    assert_eq!(lease.owner.as_deref(), Some(winner));
    assert_eq!(lease.counter, 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_former_owner_is_fenced_off() {
    let stack = Stack::create(3).await;
    let (a, b) = (worker(&stack, "a"), worker(&stack, "b"));
    let shutdown = CancellationToken::new();
    a.create_if_absent(SHARD, None).await.expect("create");
    let held_by_a = a
        .take(&the_lease(&a).await, &shutdown)
        .await
        .expect("take")
        .expect("a owns it");
    let first = Position::After("100".to_owned());
    a.checkpoint(&held_by_a, &first)
        .await
        .expect("a checkpoints");
    a.heartbeat(&held_by_a).await.expect("a heartbeats");

    // b watches the row. While a heartbeats, the lease stays a's, however
    // long b watches.
    let mut watching = Observations::default();
    let t0 = Instant::now();
    let seen = the_lease(&b).await;
    watching.observe(std::slice::from_ref(&seen), t0);
    a.heartbeat(&held_by_a).await.expect("a heartbeats again");
    let seen = the_lease(&b).await;
    watching.observe(std::slice::from_ref(&seen), t0 + DURATION / 2);
    assert!(!watching.available(&seen, t0 + DURATION, DURATION));

    // a stops heartbeating: once b has seen the counter stand still for
    // the lease duration (on b's clock), b takes the lease.
    let expired_at = t0 + DURATION / 2 + DURATION;
    let seen = the_lease(&b).await;
    watching.observe(std::slice::from_ref(&seen), expired_at);
    assert!(watching.available(&seen, expired_at, DURATION));
    let held_by_b = b
        .take(&seen, &shutdown)
        .await
        .expect("take")
        .expect("b takes the expired lease");
    assert!(!held_by_b.stop.is_cancelled());

    // a wakes up: its checkpoint and heartbeat are refused, and its reader
    // is told to stop. The checkpoint is still a's last one.
    let stale = a
        .checkpoint(&held_by_a, &Position::After("200".to_owned()))
        .await;
    assert!(matches!(stale, Err(LeaseError::Lost { .. })), "{stale:?}");
    assert!(held_by_a.stop.is_cancelled(), "a's reader is stopped");
    assert!(matches!(
        a.heartbeat(&held_by_a).await,
        Err(LeaseError::Lost { .. })
    ));
    let lease = the_lease(&b).await;
    assert_eq!(lease.owner.as_deref(), Some("b"));
    assert_eq!(
        lease.checkpoint,
        Some(first),
        "the stale write changed nothing"
    );

    // b continues from there and checkpoints; then it releases the lease,
    // which anyone may take at once.
    let next = Position::After("150".to_owned());
    b.checkpoint(&held_by_b, &next)
        .await
        .expect("b checkpoints");
    b.release(&held_by_b).await.expect("b releases");
    assert!(held_by_b.stop.is_cancelled());
    let released = the_lease(&a).await;
    assert_eq!(
        (released.owner.as_deref(), released.checkpoint.clone()),
        (None, Some(next))
    );
    assert!(Observations::default().available(&released, Instant::now(), DURATION));
    assert!(a.take(&released, &shutdown).await.expect("take").is_some());
}

#[tokio::test]
async fn a_released_lease_cannot_be_written_by_its_former_owner() {
    let stack = Stack::create(3).await;
    let a = worker(&stack, "a");
    let shutdown = CancellationToken::new();
    a.create_if_absent(SHARD, Some("shardId-00000000"))
        .await
        .expect("create");
    let lease = the_lease(&a).await;
    assert_eq!(lease.parent_shard_id.as_deref(), Some("shardId-00000000"));
    let held = a
        .take(&lease, &shutdown)
        .await
        .expect("take")
        .expect("taken");
    a.release(&held).await.expect("release");
    let late = a.checkpoint(&held, &Position::ShardEnd).await;
    assert!(matches!(late, Err(LeaseError::Lost { .. })), "{late:?}");
    assert!(!the_lease(&a).await.finished());
}

#[tokio::test]
async fn stopping_the_daemon_stops_the_readers_of_its_leases() {
    let stack = Stack::create(3).await;
    let a = worker(&stack, "a");
    let shutdown = CancellationToken::new();
    a.create_if_absent(SHARD, None).await.expect("create");
    let held = a
        .take(&the_lease(&a).await, &shutdown)
        .await
        .expect("take")
        .expect("taken");
    shutdown.cancel();
    assert!(held.stop.is_cancelled());
    // Still the owner: a stopping daemon checkpoints the batch in hand.
    a.checkpoint(&held, &Position::After("7".to_owned()))
        .await
        .expect("the last checkpoint");
}
