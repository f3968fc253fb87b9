//! The consumer against a queue that behaves as SQS does
//! (`obt_testkit::sqs_model`): up to 10 messages of one group per receive,
//! receive counts that climb together, redrive at receive time past
//! maxReceiveCount. fauxqs hands out one message per group per receive,
//! which hides what goes wrong when a bad message shares a receive with
//! valid ones. The records are those of the backend under test
//! (`OBT_TEST_STORAGE`).

use std::sync::Arc;
use std::time::Duration;

use obt_consumer::consumer::{Redelivery, StoreRetry, decode_body};
use obt_consumer::parking::{self, Cause, RetryOptions, RetryOutcome};
use obt_consumer::{Consumer, DeadLetterQueue, Ledger, PoisonReason, Queue};
use obt_contract::{Envelope, Identity};
use obt_testkit::fault_proxy::{FaultProxy, Mode};
use obt_testkit::sqs_model::{MessageSnapshot, SqsModel};

use crate::helpers::{
    Logs, Running, TestStack, event, identity, load, wait_applied, wait_held, wait_parked,
    wait_unparked,
};

/// The records of the backend under test, and the project's queues on an
/// SQS model.
struct OnModel {
    stack: TestStack,
    model: SqsModel,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_queue_url: String,
}

impl OnModel {
    async fn create(max_receive_count: u32, visibility_timeout_secs: u32) -> Self {
        let stack = TestStack::create(5).await;
        let model = SqsModel::start().await;
        let queues = model
            .create_queues(&stack.names, max_receive_count, visibility_timeout_secs)
            .await;
        let sqs = model.client().await;
        Self {
            stack,
            model,
            sqs,
            queue_url: queues.queue_url,
            dead_letter_queue_url: queues.dead_letter_queue_url,
        }
    }

    /// The consumer on the model's queue; its dead-letter queue found as
    /// in production, from the queue's redrive policy.
    async fn consumer(&self, ledger: Arc<dyn Ledger>, pollers: u16) -> Consumer {
        let queue = Queue::new(self.sqs.clone(), self.queue_url.clone(), 1, None);
        let dead_letters = DeadLetterQueue::of_queue(&self.sqs, &self.queue_url)
            .await
            .unwrap_or_else(|e| panic!("finding the dead-letter queue: {e}"));
        assert_eq!(dead_letters.url(), self.dead_letter_queue_url);
        Consumer::new(queue, dead_letters, ledger, pollers)
    }

    async fn ledger(&self) -> Arc<dyn Ledger> {
        self.stack.ledger_through(self.stack.records_addr()).await
    }

    /// A consumer of `pollers` whose records are behind a fault proxy
    /// (passing for now): each store attempt gets `attempt_timeout`, none
    /// is retried in process (the receive counts alone tell), and a
    /// message whose attempt failed comes back after `redelivery`, longer
    /// with each receive.
    async fn consumer_behind_proxy(
        &self,
        pollers: u16,
        attempt_timeout: Duration,
        redelivery: Duration,
    ) -> (FaultProxy, Consumer) {
        let proxy = FaultProxy::start(self.stack.records_addr())
            .await
            .expect("proxy");
        let ledger = self.stack.ledger_through(proxy.addr()).await;
        let consumer = self
            .consumer(ledger, pollers)
            .await
            .with_retry(StoreRetry {
                attempt_timeout,
                budget: Duration::ZERO,
                ..StoreRetry::default()
            })
            .with_redelivery(Redelivery { base: redelivery });
        (proxy, consumer)
    }

    async fn send_raw(&self, group: &str, deduplication_id: &str, body: &str) {
        self.sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_group_id(group)
            .message_deduplication_id(deduplication_id)
            .message_body(body)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "SendMessage: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            });
    }

    async fn send(&self, event: &Envelope) {
        self.send_raw(
            event.identity.as_str(),
            &event.event_id.to_string(),
            &event.encode(),
        )
        .await;
    }

    /// What the dead-letter queue holds now.
    fn dead_letters(&self) -> Vec<MessageSnapshot> {
        self.model.messages(&self.stack.names.dead_letter_queue)
    }

    /// What SQS's own redrive moved there: valid messages would arrive
    /// this way, through their receive counts.
    fn redriven(&self) -> Vec<MessageSnapshot> {
        self.model.dead_letters(&self.stack.names.queue)
    }
}

/// Asserts that `identity`'s record holds exactly `sent`, in order.
async fn assert_exactly(stack: &TestStack, identity: &Identity, sent: &[Envelope]) {
    let applied = load(stack, identity).await.expect("applied");
    let got: Vec<(u64, String)> = applied
        .spendings
        .iter()
        .map(|s| (s.seq, s.event_id.clone()))
        .collect();
    let want: Vec<(u64, String)> = sent
        .iter()
        .map(|e| (e.seq, e.event_id.to_string()))
        .collect();
    assert_eq!(got, want, "{identity}: every event once, in seq order");
    assert_eq!(applied.count, sent.len() as u64);
    assert!(
        applied.spendings.iter().map(|s| s.applied_at).is_sorted(),
        "{identity}: applied in seq order"
    );
}

/// Event 3 as a newer relay would publish it: schema version 2, which this
/// build cannot read.
fn in_schema_2(event: &Envelope) -> String {
    let body = event.encode();
    assert!(body.contains(r#""schema_version":1"#), "{body}");
    body.replace(r#""schema_version":1"#, r#""schema_version":2"#)
}

/// The repair: a build that reads schema version 2 (here: as version 1).
fn reads_schema_2(body: &str, group: Option<&str>) -> Result<Envelope, PoisonReason> {
    decode_body(
        &body.replace(r#""schema_version":2"#, r#""schema_version":1"#),
        group,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_alone_reaches_the_dlq_its_followers_are_held_and_a_retry_converges_while_events_keep_coming()
 {
    let logs = Logs::capture();
    // Two receives before SQS's own redrive: releasing the poison with its
    // followers would send them all there within seconds.
    let on = OnModel::create(2, 5).await;
    let who = identity("parked");
    let events: Vec<Envelope> = (1..=8).map(|seq| event(&who, seq, "1.00")).collect();
    let poison_body = in_schema_2(&events[2]);
    // The parked identity's messages first: one receive takes them all.
    on.send(&events[0]).await;
    on.send(&events[1]).await;
    on.send_raw(who.as_str(), "poison-3", &poison_body).await;
    on.send(&events[3]).await;
    on.send(&events[4]).await;
    let others: Vec<Identity> = (0..10).map(|i| identity(&format!("other{i}"))).collect();
    let mut sent_others = vec![Vec::new(); others.len()];
    for seq in 1..=3 {
        for (i, other) in others.iter().enumerate() {
            let event = event(other, seq, "2.00");
            on.send(&event).await;
            sent_others[i].push(event);
        }
    }
    let consumer = Running::spawn(on.consumer(on.ledger().await, 2).await);

    for (other, sent) in others.iter().zip(&sent_others) {
        wait_applied(&on.stack, other, 3, Duration::from_secs(30)).await;
        assert_exactly(&on.stack, other, sent).await;
    }
    wait_held(&on.stack, &who, 2, Duration::from_secs(30)).await;
    let parked = wait_parked(&on.stack, &who, Duration::from_secs(1)).await;
    assert_eq!(parked.parking.cause, Cause::Poison);
    assert_eq!(
        parked.parking.seq,
        Some(3),
        "the poison's seq, read loosely"
    );
    assert_exactly(&on.stack, &who, &events[..2]).await;
    let dead = on.dead_letters();
    assert_eq!(dead.len(), 1, "the poison alone: {dead:?}");
    assert_eq!(
        (dead[0].group.as_str(), dead[0].body.as_str()),
        (who.as_str(), poison_body.as_str())
    );
    let attribute = |name: &str| {
        dead[0]
            .attributes
            .get(name)
            .and_then(|a| a.string_value.clone())
            .unwrap_or_default()
    };
    assert_eq!(attribute("obt-dead-letter-cause"), "poison");
    assert!(attribute("obt-dead-letter-reason").contains("schema_version 2"));
    assert_eq!(
        Some(attribute("obt-source-message-id")),
        parked.parking.message_id
    );
    assert_eq!(attribute("obt-receive-count"), "1");
    assert!(
        on.redriven().is_empty(),
        "nothing dead-lettered by receive counts"
    );

    // It keeps receiving events while parked: held, in order.
    on.send(&events[5]).await;
    wait_held(&on.stack, &who, 3, Duration::from_secs(30)).await;
    let listed = parking::list_parked(on.stack.reader())
        .await
        .expect("lists");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].identity.as_str(), listed[0].held),
        (who.as_str(), 3)
    );

    // A retry before the repair: the dead letter still cannot be read.
    let operator = on.ledger().await;
    let dead_letters = DeadLetterQueue::of_queue(&on.sqs, &on.queue_url)
        .await
        .expect("the dead-letter queue");
    let report = parking::retry(
        operator.as_ref(),
        &dead_letters,
        who.as_str(),
        &RetryOptions::default(),
    )
    .await
    .expect("retry");
    match &report.outcome {
        RetryOutcome::StillParked { cause, because, .. } => {
            assert_eq!(*cause, Cause::Poison);
            assert!(because.contains("still cannot be read"), "{because}");
        }
        other => panic!("expected it still parked, got {other:?}"),
    }
    assert_eq!(
        (report.replayed, report.applied, report.last_seq),
        (0, 0, 2)
    );
    assert_eq!(on.dead_letters().len(), 1, "the poison stays in the DLQ");

    // The repair is a build that reads it; events keep coming meanwhile.
    on.send(&events[6]).await;
    let late = {
        let (sqs, url, body, group, id) = (
            on.sqs.clone(),
            on.queue_url.clone(),
            events[7].encode(),
            who.to_string(),
            events[7].event_id.to_string(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sqs.send_message()
                .queue_url(url)
                .message_group_id(group)
                .message_deduplication_id(id)
                .message_body(body)
                .send()
                .await
                .map(|_| ())
        })
    };
    let repaired = dead_letters.with_decoder(reads_schema_2);
    let report = parking::retry(
        operator.as_ref(),
        &repaired,
        who.as_str(),
        &RetryOptions::default(),
    )
    .await
    .expect("retry");
    assert_eq!(report.outcome, RetryOutcome::Unparked, "{report}");
    assert_eq!(report.replayed, 1, "{report}");
    late.await.expect("no panic").expect("sent");

    let applied = wait_applied(&on.stack, &who, 8, Duration::from_secs(30)).await;
    assert_eq!(applied.last_seq, 8);
    assert_exactly(&on.stack, &who, &events).await;
    assert!(on.dead_letters().is_empty(), "nothing left in the DLQ");
    assert!(on.redriven().is_empty());
    assert!(
        parking::list_parked(on.stack.reader())
            .await
            .expect("lists")
            .is_empty()
    );
    assert!(
        on.stack
            .ledger()
            .held(who.as_str())
            .await
            .expect("reads")
            .is_empty()
    );
    for (other, sent) in others.iter().zip(&sent_others) {
        assert_exactly(&on.stack, other, sent).await;
    }
    assert_eq!(
        logs.lines_with(&["ERROR", "parked identity", who.as_str(), "poison"])
            .len(),
        1
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_received_with_its_followers_holds_them_and_heals_when_the_missing_event_arrives() {
    let _logs = Logs::capture();
    let on = OnModel::create(2, 5).await;
    let consumer = Running::spawn(on.consumer(on.ledger().await, 2).await);
    let who = identity("gap");
    let events: Vec<Envelope> = (1..=4).map(|seq| event(&who, seq, "1.00")).collect();
    for seq in [1, 3, 4] {
        on.send(&events[seq - 1]).await;
    }
    wait_held(&on.stack, &who, 2, Duration::from_secs(30)).await;
    let parked = wait_parked(&on.stack, &who, Duration::from_secs(1)).await;
    assert_eq!(
        (parked.parking.cause, parked.parking.seq),
        (Cause::Gap, Some(2))
    );
    assert_exactly(&on.stack, &who, &events[..1]).await;
    assert!(on.dead_letters().is_empty() && on.redriven().is_empty());

    // Later than two visibility timeouts: held messages are not waiting
    // in the queue for their receive count to run out.
    tokio::time::sleep(Duration::from_secs(11)).await;
    on.send(&events[1]).await;
    wait_applied(&on.stack, &who, 4, Duration::from_secs(30)).await;
    assert_exactly(&on.stack, &who, &events).await;
    assert!(on.dead_letters().is_empty() && on.redriven().is_empty());
    // The unpark commits after the last held event's apply: wait for it.
    wait_unparked(&on.stack, &who, Duration::from_secs(10)).await;
    assert!(
        parking::list_parked(on.stack.reader())
            .await
            .expect("lists")
            .is_empty()
    );
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_received_with_valid_messages_is_dead_lettered_alone_and_parks_its_identity() {
    let _logs = Logs::capture();
    let on = OnModel::create(2, 5).await;
    let who = identity("conflict");
    let first = event(&who, 1, "1.00");
    let impostor = event(&who, 1, "9.00");
    let later: Vec<Envelope> = (2..=3).map(|seq| event(&who, seq, "1.00")).collect();
    on.send(&first).await;
    on.send(&impostor).await;
    for event in &later {
        on.send(event).await;
    }
    let consumer = Running::spawn(on.consumer(on.ledger().await, 2).await);

    wait_held(&on.stack, &who, 2, Duration::from_secs(30)).await;
    let parked = wait_parked(&on.stack, &who, Duration::from_secs(1)).await;
    assert_eq!(parked.parking.cause, Cause::Conflict);
    assert_exactly(&on.stack, &who, std::slice::from_ref(&first)).await;
    let dead = on.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, impostor.encode());
    let cause = dead[0]
        .attributes
        .get("obt-dead-letter-cause")
        .and_then(|a| a.string_value.clone());
    assert_eq!(cause.as_deref(), Some("conflict"));
    assert!(on.redriven().is_empty());
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_longer_than_max_receive_count_visibility_timeouts_dead_letters_nothing() {
    let logs = Logs::capture();
    // Three receives of 4 s before SQS's redrive: 12 s.
    let on = OnModel::create(3, 4).await;
    // The write of the batch's first messages together, then the message's
    // own attempt, 1 s each, well within the visibility timeout, as in
    // production (10 + 10 s of 30 s): the receipt handle must still be
    // valid to delay the message. (1.5 s of 3 s each left no room: on a
    // loaded machine the handle expired first, the message came back at
    // once and was counted.) Redelivered after 4 s, then 16 s: 20 s
    // before the third receive.
    let (proxy, consumer) = on
        .consumer_behind_proxy(2, Duration::from_secs(1), Duration::from_secs(4))
        .await;
    proxy.set_mode(Mode::Refuse);
    let identities: Vec<Identity> = (0..3).map(|i| identity(&format!("outage{i}"))).collect();
    let mut sent = vec![Vec::new(); identities.len()];
    for seq in 1..=3 {
        for (i, who) in identities.iter().enumerate() {
            let event = event(who, seq, "1.00");
            on.send(&event).await;
            sent[i].push(event);
        }
    }
    let running = Running::spawn(consumer);
    obt_testkit::eventually("a failed receive", Duration::from_secs(10), || async {
        match logs.lines_with(&["the message comes back in 4 s"]).len() {
            0 => Err("none yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    // Fault timing: longer than 3 receives x 4 s visibility (without the
    // delays, the fourth receive would redrive the messages), shorter
    // than the 20 s the redelivery delays give.
    tokio::time::sleep(Duration::from_secs(14)).await;
    proxy.set_mode(Mode::Pass);

    for (who, sent) in identities.iter().zip(&sent) {
        wait_applied(&on.stack, who, 3, Duration::from_secs(30)).await;
        assert_exactly(&on.stack, who, sent).await;
    }
    assert!(
        on.redriven().is_empty(),
        "nothing dead-lettered: {:?}",
        on.redriven()
    );
    assert!(on.dead_letters().is_empty());
    assert!(
        !logs
            .lines_with(&["the message comes back in 16 s"])
            .is_empty(),
        "a second receive failed too, and waited longer"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_whose_writes_hang_delays_its_messages_before_their_visibility_ends() {
    let logs = Logs::capture();
    let on = OnModel::create(3, 3).await;
    // The write of the batch's first messages together, then each
    // message's own attempt, 2 s each: 4 s in all, past the 3 s visibility
    // timeout (as 2 x 20 s would be past SQS's 30 s). (The MySQL records
    // have no write together: there, 2 s of 3.)
    let (proxy, consumer) = on
        .consumer_behind_proxy(1, Duration::from_secs(2), Duration::from_secs(60))
        .await;
    // Every store request hangs: each attempt takes its whole timeout.
    proxy.set_mode(Mode::Blackhole);
    let identities: Vec<Identity> = (0..3).map(|i| identity(&format!("hang{i}"))).collect();
    for who in &identities {
        on.send(&event(who, 1, "1.00")).await;
    }
    let running = Running::spawn(consumer);
    let delayed = obt_testkit::eventually(
        "each message delayed after its attempts",
        Duration::from_secs(20),
        || async {
            let lines = logs.lines_with(&["the message comes back in 60 s"]);
            if identities
                .iter()
                .all(|who| lines.iter().any(|line| line.contains(who.as_str())))
            {
                Ok(lines)
            } else {
                Err(format!("{} so far", lines.len()))
            }
        },
    )
    .await;
    assert!(
        delayed
            .iter()
            .all(|line| line.contains("receive_count=Some(1)")),
        "each message was received once: {delayed:#?}"
    );
    let expired = logs.lines_with(&["could not delay the message"]);
    assert!(
        expired.is_empty(),
        "the receipt handles were still valid: {expired:#?}"
    );
    running.stop().await;
    proxy.set_mode(Mode::Pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_redriven_by_sqs_leaves_a_gap_that_the_retry_closes_and_other_dead_letters_stay() {
    let _logs = Logs::capture();
    let on = OnModel::create(2, 5).await;
    let who = identity("redriven");
    let events: Vec<Envelope> = (1..=3).map(|seq| event(&who, seq, "1.00")).collect();
    // As SQS's redrive leaves them after a long outage: another identity's
    // event first, then this one's first event, without attributes.
    let stranger = event(&identity("stranger"), 1, "5.00");
    for event in [&stranger, &events[0]] {
        on.sqs
            .send_message()
            .queue_url(&on.dead_letter_queue_url)
            .message_group_id(event.identity.as_str())
            .message_deduplication_id(event.event_id.to_string())
            .message_body(event.encode())
            .send()
            .await
            .expect("SendMessage to the DLQ");
    }
    on.send(&events[1]).await;
    on.send(&events[2]).await;
    let consumer = Running::spawn(on.consumer(on.ledger().await, 2).await);
    wait_held(&on.stack, &who, 2, Duration::from_secs(30)).await;
    let parked = wait_parked(&on.stack, &who, Duration::from_secs(1)).await;
    assert_eq!(
        (parked.parking.cause, parked.parking.seq),
        (Cause::Gap, Some(1))
    );

    let dead_letters = DeadLetterQueue::of_queue(&on.sqs, &on.queue_url)
        .await
        .expect("the dead-letter queue");
    let report = parking::retry(
        on.stack.ledger(),
        &dead_letters,
        who.as_str(),
        &RetryOptions::default(),
    )
    .await
    .expect("retry");
    assert_eq!(report.outcome, RetryOutcome::Unparked, "{report}");
    assert_eq!(
        (report.replayed, report.applied, report.last_seq),
        (1, 3, 3)
    );
    assert_exactly(&on.stack, &who, &events).await;
    let left = on.dead_letters();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        left[0].body,
        stranger.encode(),
        "the other group's dead letter stays"
    );
    assert!(!left[0].in_flight, "and is released at once");
    consumer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_of_a_receive_are_deleted_in_one_batch_call() {
    let on = OnModel::create(5, 30).await;
    let mut sent: Vec<Vec<Envelope>> = Vec::new();
    for i in 0..8 {
        let who = identity(&format!("del{i}"));
        let seqs = if i == 0 { 3 } else { 1 };
        sent.push((1..=seqs).map(|seq| event(&who, seq, "1.00")).collect());
    }
    for events in &sent {
        for e in events {
            on.send(e).await;
        }
    }
    // 10 messages, all there before the first receive: one receive, one
    // DeleteMessageBatch.
    let consumer = Running::spawn(on.consumer(on.ledger().await, 1).await);
    for events in &sent {
        let who = &events[0].identity;
        wait_applied(&on.stack, who, events.len() as u64, Duration::from_secs(30)).await;
        assert_exactly(&on.stack, who, events).await;
    }
    obt_testkit::eventually("the queue to be empty", Duration::from_secs(10), || async {
        let left = on.model.messages(&on.stack.names.queue);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{} messages", left.len()))
        }
    })
    .await;
    consumer.stop().await;
    assert_eq!(
        on.model.call_count("DeleteMessage"),
        0,
        "{:?}",
        on.model.calls()
    );
    assert_eq!(
        on.model.call_count("DeleteMessageBatch"),
        1,
        "{:?}",
        on.model.calls()
    );
}
