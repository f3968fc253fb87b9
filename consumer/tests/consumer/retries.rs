//! Transient failures of the consumer's records (unreachable, hanging) are
//! retried in process, with the message kept invisible meanwhile, rather
//! than left to come back after its visibility timeout. The records are
//! reached through a fault proxy; in either backend (`OBT_TEST_STORAGE`).

use std::sync::Arc;
use std::time::Duration;

use obt_consumer::consumer::{Redelivery, StoreRetry};
use obt_consumer::{Consumer, DeadLetterQueue, Queue};
use obt_testkit::fault_proxy::{FaultProxy, Mode};
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;

use crate::helpers::{Logs, TestStack, event, identity, send, wait_applied, wait_queue_empty};

fn dead_letters(stack: &TestStack) -> DeadLetterQueue {
    DeadLetterQueue::new(stack.sqs(), stack.dead_letter_queue_url.clone())
}

/// Far longer than the test waits: a message left to its visibility
/// timeout would not come back in time to pass.
const VISIBILITY_SECS: i32 = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_then_hanging_database_is_retried_in_process_and_the_event_applied_once_healed() {
    let logs = Logs::capture();
    let stack = TestStack::create(5).await;
    let proxy = FaultProxy::start(stack.records_addr())
        .await
        .expect("proxy");
    let ledger = stack.ledger_through(proxy.addr()).await;
    let queue = Queue::new(
        stack.sqs(),
        stack.queue_url.clone(),
        1,
        Some(VISIBILITY_SECS),
    );
    let consumer = Consumer::new(queue, dead_letters(&stack), ledger, 2).with_retry(StoreRetry {
        attempt_timeout: Duration::from_secs(1),
        budget: Duration::from_secs(60),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    });

    proxy.set_mode(Mode::Refuse);
    let who = identity("retried");
    let sent = event(&who, 1, "7.25");
    send(&stack, &sent).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        consumer
            .serve(shutdown.clone().cancelled_owned(), Duration::from_secs(20))
            .with_current_subscriber(),
    );

    // Refused: failures come back at once, and are retried.
    obt_testkit::eventually(
        "refused writes retried",
        Duration::from_secs(20),
        || async {
            match logs
                .lines_with(&["transient failure; retrying in process"])
                .len()
            {
                n if n >= 2 && proxy.reset_on_arrival() >= 2 => Ok(()),
                n => Err(format!(
                    "{n} retries logged, {} resets",
                    proxy.reset_on_arrival()
                )),
            }
        },
    )
    .await;
    // Hanging: only the attempt timeout gets the consumer out.
    proxy.set_mode(Mode::Blackhole);
    obt_testkit::eventually(
        "a hanging write abandoned",
        Duration::from_secs(20),
        || async {
            match logs.lines_with(&["took longer than 1 s"]).len() {
                0 => Err("none yet".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    proxy.set_mode(Mode::Pass);
    proxy.cut();

    // Within a quarter of the visibility timeout of the heal: by a retry,
    // not a redelivery.
    let applied = wait_applied(
        &stack,
        &who,
        1,
        Duration::from_secs(VISIBILITY_SECS as u64 / 4),
    )
    .await;
    assert_eq!(applied.total.to_string(), "7.25");
    assert_eq!(applied.spendings.len(), 1, "applied once");
    // Deleted after the commit, in the same receive.
    wait_queue_empty(&stack, Duration::from_secs(20)).await;
    assert!(
        !logs
            .lines_with(&["applied after transient failures"])
            .is_empty()
    );
    assert!(
        !logs
            .lines_with(&["extended the message's visibility"])
            .is_empty(),
        "the message was kept invisible while retried"
    );
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(25), running)
        .await
        .expect("stops within the grace")
        .expect("no panic");
    stopped.unwrap_or_else(|e| panic!("the consumer stopped with an error: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_retries_used_up_the_message_is_left_to_come_back_after_its_redelivery_delay_undeleted()
 {
    let logs = Logs::capture();
    let stack = TestStack::create(5).await;
    let proxy = FaultProxy::start(stack.records_addr())
        .await
        .expect("proxy");
    let ledger = stack.ledger_through(proxy.addr()).await;
    let queue = Queue::new(stack.sqs(), stack.queue_url.clone(), 1, Some(3));
    let consumer = Consumer::new(queue, dead_letters(&stack), ledger, 1)
        .with_retry(StoreRetry {
            attempt_timeout: Duration::from_secs(1),
            budget: Duration::from_secs(2),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        })
        .with_redelivery(Redelivery {
            base: Duration::from_secs(1),
        });
    let consumer = Arc::new(consumer);
    proxy.set_mode(Mode::Refuse);
    let who = identity("given-up");
    send(&stack, &event(&who, 1, "1.00")).await;

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        consumer
            .clone()
            .run(shutdown.clone())
            .with_current_subscriber(),
    );
    obt_testkit::eventually("the retries given up", Duration::from_secs(30), || async {
        match logs
            .lines_with(&["gave up retrying in process"])
            .len()
            .min(logs.lines_with(&["the message comes back in 1 s"]).len())
        {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    // Not deleted: it comes back, and is applied once the records heal.
    proxy.set_mode(Mode::Pass);
    let applied = wait_applied(&stack, &who, 1, Duration::from_secs(30)).await;
    assert_eq!(applied.spendings.len(), 1);
    wait_queue_empty(&stack, Duration::from_secs(20)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(25), running)
        .await
        .expect("stops")
        .expect("no panic");
}

/// The message's visibility is extended while its write is retried: with a
/// 2 s visibility timeout, 2 receives before the dead-letter queue and a
/// second poller waiting, an outage of several seconds would otherwise
/// hand the message to the other poller, count receives, and send it to
/// the dead-letter queue. It is applied once, and the DLQ stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_stays_invisible_while_its_write_is_retried() {
    let logs = Logs::capture();
    let stack = TestStack::create(2).await;
    let proxy = FaultProxy::start(stack.records_addr())
        .await
        .expect("proxy");
    let ledger = stack.ledger_through(proxy.addr()).await;
    let queue = Queue::new(stack.sqs(), stack.queue_url.clone(), 1, Some(2));
    let consumer = Consumer::new(queue, dead_letters(&stack), ledger, 2).with_retry(StoreRetry {
        attempt_timeout: Duration::from_secs(1),
        budget: Duration::from_secs(20),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
    });
    proxy.set_mode(Mode::Refuse);
    let who = identity("kept-invisible");
    send(&stack, &event(&who, 1, "3.50")).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(
        consumer
            .serve(shutdown.clone().cancelled_owned(), Duration::from_secs(20))
            .with_current_subscriber(),
    );

    obt_testkit::eventually("the write retried", Duration::from_secs(20), || async {
        match logs
            .lines_with(&["transient failure; retrying in process"])
            .len()
        {
            0 => Err("no retry yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    // The outage lasts three visibility timeouts (fault timing, not a wait
    // for a condition): without the extension the message would be
    // received three times meanwhile, and so reach the dead-letter queue.
    tokio::time::sleep(Duration::from_secs(7)).await;
    proxy.set_mode(Mode::Pass);

    let applied = wait_applied(&stack, &who, 1, Duration::from_secs(30)).await;
    assert_eq!(applied.spendings.len(), 1, "applied once");
    wait_queue_empty(&stack, Duration::from_secs(20)).await;
    assert!(
        obt_testkit::receives_nothing(&stack, &stack.dead_letter_queue_url).await,
        "nothing in the dead-letter queue"
    );
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(25), running)
        .await
        .expect("stops within the grace")
        .expect("no panic");
    stopped.unwrap_or_else(|e| panic!("the consumer stopped with an error: {e}"));
}
