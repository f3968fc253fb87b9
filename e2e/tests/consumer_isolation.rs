//! The consumer binary on a queue that hands out messages as SQS does
//! (the testkit's SQS model: up to 10 messages of a group per receive,
//! receive counts, redrive past maxReceiveCount), with its records in the
//! storage mode under test (`OBT_TEST_STORAGE`): a poison message is
//! dead-lettered alone and parks its identity only, and the operator's
//! retry lets that identity flow again while its events keep coming.

use std::time::Duration;

use obt_consumer::parking::{self, Cause, RetryOptions, RetryOutcome};
use obt_consumer::{DeadLetterQueue, Ledger, LedgerReader, Records, StorageArgs};
use obt_contract::{Envelope, Identity};
use obt_testkit::mysql::Backend;
use obt_testkit::sqs_model::SqsModel;
use obt_testkit::{Service, event, eventually, identity};

const DEADLINE: Duration = Duration::from_secs(30);

/// The consumer's records, opened as the consumer opens them.
async fn records(backend: &Backend) -> Records {
    let args = match backend {
        Backend::DynamoDb(stack) => StorageArgs::dynamodb(&stack.names.consumer_table),
        Backend::MySql(mysql) => StorageArgs::mysql(obt_consumer::DatabaseUrl::new(
            mysql.urls.consumer_url.clone(),
        )),
    };
    obt_consumer::store::open(&backend.stack().config, &args, 2, "e2e")
        .await
        .unwrap_or_else(|e| panic!("opening the consumer's records: {e}"))
}

async fn send(sqs: &aws_sdk_sqs::Client, url: &str, group: &str, id: &str, body: &str) {
    sqs.send_message()
        .queue_url(url)
        .message_group_id(group)
        .message_deduplication_id(id)
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

async fn send_event(sqs: &aws_sdk_sqs::Client, url: &str, event: &Envelope) {
    let id = event.event_id.to_string();
    send(sqs, url, event.identity.as_str(), &id, &event.encode()).await;
}

/// Waits until `identity`'s record holds exactly `sent`, in order.
async fn wait_exactly(reader: &dyn LedgerReader, identity: &Identity, sent: &[Envelope]) {
    let want: Vec<(u64, String)> = sent
        .iter()
        .map(|e| (e.seq, e.event_id.to_string()))
        .collect();
    eventually(&format!("{identity} applied"), DEADLINE, || async {
        let applied = reader
            .load_identity(identity.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let got: Vec<(u64, String)> = applied
            .map(|a| {
                a.spendings
                    .into_iter()
                    .map(|s| (s.seq, s.event_id))
                    .collect()
            })
            .unwrap_or_default();
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
}

async fn wait_held(ledger: &dyn Ledger, identity: &Identity, seqs: &[u64]) {
    eventually(
        &format!("{identity} holding {seqs:?}"),
        DEADLINE,
        || async {
            let held: Vec<u64> = ledger
                .held(identity.as_str())
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(|e| e.seq)
                .collect();
            if held == seqs {
                Ok(())
            } else {
                Err(format!("{held:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_binary_parks_only_the_poisoned_identity_and_a_retry_lets_it_flow_again() {
    let backend = Backend::create(5).await;
    let model = SqsModel::start().await;
    let names = &backend.stack().names;
    let queues = model.create_queues(names, 2, 5).await;
    let sqs = model.client().await;
    let url = queues.queue_url.as_str();

    let who = identity("POISONED");
    let events: Vec<Envelope> = (1..=6).map(|seq| event(&who, seq, "1.00")).collect();
    send_event(&sqs, url, &events[0]).await;
    send_event(&sqs, url, &events[1]).await;
    send(
        &sqs,
        url,
        who.as_str(),
        "garbage",
        "{\"not\": \"an envelope\"}",
    )
    .await;
    send_event(&sqs, url, &events[2]).await;
    send_event(&sqs, url, &events[3]).await;
    let others: Vec<Identity> = (0..10).map(|i| identity(&format!("FLOW{i}"))).collect();
    let mut sent_others = vec![Vec::new(); others.len()];
    for seq in 1..=2 {
        for (i, other) in others.iter().enumerate() {
            let event = event(other, seq, "2.00");
            send_event(&sqs, url, &event).await;
            sent_others[i].push(event);
        }
    }
    let mut env = backend.env("consumer");
    env.extend(model.service_env());
    env.push(("OBT_WAIT_TIME_SECS", "1".to_owned()));
    let consumer = Service::start("consumer", &env);
    let records = records(&backend).await;

    for (other, sent) in others.iter().zip(&sent_others) {
        wait_exactly(records.reader().as_ref(), other, sent).await;
    }
    wait_exactly(records.reader().as_ref(), &who, &events[..2]).await;
    wait_held(records.ledger().as_ref(), &who, &[3, 4]).await;
    let parked = parking::list_parked(records.reader().as_ref())
        .await
        .expect("lists");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].identity, who.as_str());
    assert_eq!(parked[0].parking.cause, Cause::Poison);
    let dead = model.messages(&names.dead_letter_queue);
    assert_eq!(dead.len(), 1, "the poison alone: {dead:?}");
    assert_eq!(dead[0].body, "{\"not\": \"an envelope\"}");
    assert!(
        model.dead_letters(&names.queue).is_empty(),
        "nothing redriven"
    );

    // Garbage, not an event: the operator discards it; meanwhile the
    // identity keeps receiving events.
    send_event(&sqs, url, &events[4]).await;
    wait_held(records.ledger().as_ref(), &who, &[3, 4, 5]).await;
    let dead_letters = DeadLetterQueue::of_queue(&sqs, url)
        .await
        .expect("the dead-letter queue");
    let options = RetryOptions {
        discard: parked[0].parking.message_id.iter().cloned().collect(),
    };
    let report = parking::retry(
        records.ledger().as_ref(),
        &dead_letters,
        who.as_str(),
        &options,
    )
    .await
    .expect("retry");
    assert_eq!(report.outcome, RetryOutcome::Unparked, "{report}");
    assert_eq!(
        (report.replayed, report.discarded, report.applied),
        (1, 1, 3)
    );
    send_event(&sqs, url, &events[5]).await;
    wait_exactly(records.reader().as_ref(), &who, &events).await;
    assert!(model.messages(&names.dead_letter_queue).is_empty());
    assert!(
        parking::list_parked(records.reader().as_ref())
            .await
            .expect("lists")
            .is_empty()
    );

    let status = consumer.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}
