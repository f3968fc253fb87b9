//! Invariant 6 in the MySQL mode, against a real MariaDB and fauxqs: an
//! `obt` row that cannot be read, or whose event SQS refuses for good,
//! parks its identity alone, however many rows of that identity follow it
//! (the poll window must not fill with them); after the repair, the retry
//! lets the held rows go, in order, through the running poller.
#![cfg(feature = "mysql")]

use std::collections::BTreeMap;
use std::time::Duration;

use obt_admin::cli::{Settings, Stage};
use obt_admin::{RelayParkings, RetryOutcome};
use obt_contract::{Envelope, Identity};
use obt_runtime::{DatabaseUrl, LogFormat, Storage};
use obt_stream_relay::poller::OutboxPoller;
use obt_stream_relay::publisher::Publisher;
use obt_testkit::eventually;
use obt_testkit::mysql::MySqlStack;
use obt_testkit::sqs_proxy::SqsProxy;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
/// Rows per poll: the victim has more than this many rows after its bad one.
const BATCH: u32 = 7;

async fn insert(stack: &MySqlStack, event: &Envelope, payload: &str) {
    let admin = stack.api_admin().await;
    sqlx::query(
        "INSERT INTO obt (event_id, identity, seq, type, payload, created_at) \
         VALUES (?, ?, ?, 'SpendingRecorded', ?, NOW(3))",
    )
    .bind(event.event_id.to_string())
    .bind(event.identity.to_string())
    .bind(event.seq)
    .bind(payload)
    .execute(&admin)
    .await
    .expect("insert an outbox row");
}

fn events(identity: &Identity, seqs: std::ops::RangeInclusive<u64>) -> Vec<Envelope> {
    seqs.map(|seq| obt_testkit::event(identity, seq, "2.25"))
        .collect()
}

/// Receives until `count` messages came: seqs per identity, in order.
async fn received(stack: &MySqlStack, count: usize) -> BTreeMap<String, Vec<u64>> {
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for body in obt_testkit::drain(&stack.stack, &stack.stack.queue_url, count, DEADLINE).await {
        let event = Envelope::decode(&body).expect("an envelope");
        seqs.entry(event.identity.to_string())
            .or_default()
            .push(event.seq);
    }
    seqs
}

/// The poller, publishing through `sqs`, running until the token is
/// cancelled.
fn start_poller(stack: &MySqlStack, sqs: aws_sdk_sqs::Client) -> CancellationToken {
    let poller = OutboxPoller::new(
        &stack.urls.relay_url,
        Publisher::new(sqs, stack.stack.queue_url.clone()),
        BATCH,
        Duration::from_millis(50),
    )
    .expect("a poller");
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move { poller.run(token).await });
    shutdown
}

async fn parkings(stack: &MySqlStack) -> RelayParkings {
    RelayParkings::connect(&Settings {
        stage: Stage::Relay,
        storage: Storage::Mysql,
        table: String::new(),
        consumer_table: String::new(),
        database_url: Some(DatabaseUrl::new(stack.urls.relay_url.clone())),
        queue_url: None,
        queue_name: String::new(),
        dlq_url: None,
        log_format: LogFormat::Text,
    })
    .await
    .expect("the relay's database")
}

/// The victim's rows, then 5 other identities' 3 rows each.
async fn fill(stack: &MySqlStack, victim: &[Envelope], bad: u64, others: &[Identity]) {
    for event in victim {
        let payload = if event.seq == bad {
            r#"{"not": "an envelope"}"#.to_owned()
        } else {
            event.encode()
        };
        insert(stack, event, &payload).await;
    }
    for seq in 1..=3 {
        for identity in others {
            let event = obt_testkit::event(identity, seq, "2.25");
            insert(stack, &event, &event.encode()).await;
        }
    }
}

fn others(prefix: &str) -> Vec<Identity> {
    (0..5)
        .map(|i| obt_testkit::identity(&format!("{prefix}{i}")))
        .collect()
}

#[tokio::test]
async fn an_unreadable_row_parks_its_identity_alone_even_with_more_than_a_window_of_rows_after_it()
{
    let stack = MySqlStack::create(3).await;
    let victim = obt_testkit::identity("PV");
    let others = others("PO");
    let victim_events = events(&victim, 1..=12);
    fill(&stack, &victim_events, 2, &others).await;
    let shutdown = start_poller(&stack, stack.stack.sqs());

    let seqs = received(&stack, others.len() * 3 + 1).await;
    for identity in &others {
        assert_eq!(seqs[identity.as_str()], [1, 2, 3], "{identity} flows");
    }
    assert_eq!(
        seqs[victim.as_str()],
        [1],
        "nothing past the unreadable row"
    );
    assert!(obt_testkit::receives_nothing(&stack.stack, &stack.stack.queue_url).await);
    let parkings = parkings(&stack).await;
    let listed = parkings.list().await.expect("a list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].identity, victim.as_str());
    assert_eq!(
        (listed[0].cause.as_str(), listed[0].seq),
        ("undecodable", Some(2))
    );
    assert_eq!(listed[0].waiting, 11);

    // Still unreadable: the retry says so.
    let outcome = parkings
        .retry(victim.as_str(), DEADLINE)
        .await
        .expect("a retry");
    assert!(
        matches!(outcome, RetryOutcome::ParkedAgain { .. }),
        "{outcome:?}"
    );

    // Repaired, it goes out in order.
    let admin = stack.api_admin().await;
    sqlx::query("UPDATE obt SET payload = ? WHERE identity = ? AND seq = 2")
        .bind(victim_events[1].encode())
        .bind(victim.as_str())
        .execute(&admin)
        .await
        .expect("repair the row");
    let outcome = parkings
        .retry(victim.as_str(), DEADLINE)
        .await
        .expect("a retry");
    assert_eq!(
        outcome,
        RetryOutcome::Published {
            identity: victim.to_string(),
            events: 11
        }
    );
    let seqs = received(&stack, 11).await;
    assert_eq!(seqs[victim.as_str()], (2..=12).collect::<Vec<u64>>());
    assert!(parkings.list().await.expect("a list").is_empty());
    shutdown.cancel();
}

#[tokio::test]
async fn an_event_sqs_refuses_for_good_parks_its_identity_alone_in_the_mysql_mode() {
    let stack = MySqlStack::create(3).await;
    let victim = obt_testkit::identity("QV");
    let others = others("QO");
    let victim_events = events(&victim, 1..=10);
    fill(&stack, &victim_events, 0, &others).await;
    let refused = victim_events[1].event_id.to_string();
    let proxy = SqsProxy::start(move |entry, _| {
        entry["MessageDeduplicationId"].as_str() == Some(refused.as_str())
    })
    .await;
    proxy.refuse_for_good();
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&stack.stack.config)
            .endpoint_url(&proxy.url)
            .build(),
    );
    let shutdown = start_poller(&stack, sqs);

    let seqs = received(&stack, others.len() * 3 + 1).await;
    for identity in &others {
        assert_eq!(seqs[identity.as_str()], [1, 2, 3], "{identity} flows");
    }
    assert_eq!(seqs[victim.as_str()], [1]);
    let parkings = parkings(&stack).await;
    let listed = eventually("the victim parked", DEADLINE, || async {
        let listed = parkings.list().await.map_err(|e| e.to_string())?;
        if listed.len() == 1 {
            Ok(listed)
        } else {
            Err(format!("{listed:?}"))
        }
    })
    .await;
    assert_eq!(
        (listed[0].cause.as_str(), listed[0].seq),
        ("sqs_refused", Some(2))
    );
    assert!(
        listed[0].reason.contains("InvalidMessageContents"),
        "{}",
        listed[0].reason
    );

    proxy.heal();
    let outcome = parkings
        .retry(victim.as_str(), DEADLINE)
        .await
        .expect("a retry");
    assert!(
        matches!(outcome, RetryOutcome::Published { events: 9, .. }),
        "{outcome:?}"
    );
    let seqs = received(&stack, 9).await;
    assert_eq!(seqs[victim.as_str()], (2..=10).collect::<Vec<u64>>());
    shutdown.cancel();
}
