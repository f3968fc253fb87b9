//! The real binary: it starts from its environment, consumes, and stops
//! cleanly on SIGTERM. In either backend (`OBT_TEST_STORAGE`).

use std::time::{Duration, Instant};

use obt_testkit::Service;

use crate::helpers::{TestStack, event, identity, send, wait_applied};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_with_0_within_seconds_of_sigterm_even_while_long_polling() {
    let stack = TestStack::create(5).await;
    let service = Service::start("consumer", &stack.consumer_env());

    let identity = identity("bin");
    send(&stack, &event(&identity, 1, "2.50")).await;
    wait_applied(&stack, &identity, 1, Duration::from_secs(30)).await;

    // Its pollers are now inside 20 s long polls.
    let asked = Instant::now();
    let status = service.terminate(Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status}");
    assert!(asked.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_to_start_when_its_queue_does_not_exist() {
    let stack = TestStack::create(5).await;
    let mut env = stack.consumer_env();
    env.retain(|(name, _)| *name != "OBT_QUEUE_NAME");
    env.push(("OBT_QUEUE_NAME", obt_testkit::unique("missing") + ".fifo"));
    let mut service = Service::start("consumer", &env);

    let status = obt_testkit::eventually("the consumer to exit", Duration::from_secs(20), || {
        let exited = service.try_exited();
        async move { exited.ok_or_else(|| "still running".to_owned()) }
    })
    .await;
    assert!(!status.success(), "exit status {status}");
}
