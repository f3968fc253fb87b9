//! The MySQL mode's relay against a real MariaDB and fauxqs: rows of the
//! outbox table `obt` go to the queue in seq order per identity and are
//! deleted only after SQS accepted them; one relay leads, a standby takes
//! over when it dies; the relay binary works over TLS with a verified
//! server certificate.
#![cfg(feature = "mysql")]

use std::collections::BTreeMap;
use std::time::Duration;

use obt_contract::{Envelope, Identity};
use obt_stream_relay::poller::OutboxPoller;
use obt_stream_relay::publisher::Publisher;
use obt_testkit::mysql::MySqlStack;
use obt_testkit::{Service, eventually};
use sqlx::{Connection, MySqlPool};

const DEADLINE: Duration = Duration::from_secs(30);

/// Inserts `event` into the outbox as the api's transaction does.
async fn insert(admin: &MySqlPool, event: &Envelope) {
    sqlx::query(
        "INSERT INTO obt (event_id, identity, seq, type, payload, created_at) \
         VALUES (?, ?, ?, 'SpendingRecorded', ?, NOW(3))",
    )
    .bind(event.event_id.to_string())
    .bind(event.identity.to_string())
    .bind(event.seq)
    .bind(event.encode())
    .execute(admin)
    .await
    .expect("insert an outbox row");
}

/// Events 1..=`count` of each identity, inserted interleaved.
async fn insert_interleaved(
    admin: &MySqlPool,
    identities: &[&str],
    seqs: std::ops::RangeInclusive<u64>,
) {
    for seq in seqs {
        for identity in identities {
            let identity = Identity::parse(identity).expect("identity");
            insert(admin, &obt_testkit::event(&identity, seq, "1.10")).await;
        }
    }
}

async fn outbox_rows(admin: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM obt")
        .fetch_one(admin)
        .await
        .expect("count obt")
}

/// `count` events from the queue, as seqs per identity in arrival order.
async fn received(stack: &MySqlStack, count: usize) -> BTreeMap<String, Vec<u64>> {
    let bodies = obt_testkit::drain(&stack.stack, &stack.stack.queue_url, count, DEADLINE).await;
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for body in bodies {
        let event = Envelope::decode(&body).expect("an envelope");
        seqs.entry(event.identity.to_string())
            .or_default()
            .push(event.seq);
    }
    seqs
}

fn poller(stack: &MySqlStack, queue_url: &str) -> OutboxPoller {
    let publisher = Publisher::new(stack.stack.sqs(), queue_url.to_owned());
    OutboxPoller::new(
        &stack.urls.relay_url,
        publisher,
        7,
        Duration::from_millis(50),
    )
    .expect("a poller")
}

#[tokio::test]
async fn rows_go_out_in_seq_order_per_identity_and_are_deleted_once_sqs_accepted_them() {
    let stack = MySqlStack::create(3).await;
    let admin = stack.api_admin().await;
    insert_interleaved(&admin, &["M1", "M2", "M3"], 1..=5).await;
    // Batches of 7 rows: the rounds cut across identities.
    let poller = poller(&stack, &stack.stack.queue_url);
    let mut published = 0;
    while published < 15 {
        let round = poller.round().await.expect("a round");
        assert!(round > 0, "every round publishes while rows remain");
        published += round;
    }
    assert_eq!(poller.round().await.expect("a last round"), 0);
    assert_eq!(outbox_rows(&admin).await, 0);
    let seqs = received(&stack, 15).await;
    for identity in ["M1", "M2", "M3"] {
        assert_eq!(seqs[identity], [1, 2, 3, 4, 5], "{identity}");
    }
    assert!(obt_testkit::receives_nothing(&stack.stack, &stack.stack.queue_url).await);
}

#[tokio::test]
async fn when_sqs_fails_no_row_is_deleted_and_a_later_round_publishes_in_order() {
    let stack = MySqlStack::create(3).await;
    let admin = stack.api_admin().await;
    insert_interleaved(&admin, &["F1"], 1..=3).await;
    let missing = format!(
        "{}-missing.fifo",
        stack.stack.queue_url.trim_end_matches(".fifo")
    );
    let broken = poller(&stack, &missing);
    assert!(broken.round().await.is_err());
    assert_eq!(outbox_rows(&admin).await, 3, "nothing deleted");

    let poller = poller(&stack, &stack.stack.queue_url);
    assert_eq!(poller.round().await.expect("a round"), 3);
    assert_eq!(received(&stack, 3).await["F1"], [1, 2, 3]);
    assert_eq!(outbox_rows(&admin).await, 0);
}

#[tokio::test]
async fn one_relay_leads_and_a_standby_takes_over_when_the_leader_is_killed() {
    let stack = MySqlStack::create(3).await;
    let admin = stack.api_admin().await;
    let mut env = stack.relay_env();
    env.push(("OBT_POLL_MAX_IDLE_MS", "50".to_owned()));
    insert_interleaved(&admin, &["L1", "L2"], 1..=3).await;
    let leader = Service::start("stream-relay", &env);
    assert_eq!(received(&stack, 6).await["L1"], [1, 2, 3]);
    // The leader published: it holds the lock. A second relay stands by.
    let standby = Service::start("stream-relay", &env);
    eventually("the outbox to be empty", DEADLINE, || async {
        match outbox_rows(&admin).await {
            0 => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    leader.kill().await;
    insert_interleaved(&admin, &["L1", "L2"], 4..=6).await;
    let seqs = received(&stack, 6).await;
    assert_eq!(seqs["L1"], [4, 5, 6]);
    assert_eq!(seqs["L2"], [4, 5, 6]);
    eventually("the standby to empty the outbox", DEADLINE, || async {
        match outbox_rows(&admin).await {
            0 => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    let status = standby.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_relay_whose_url_asks_for_verify_identity_publishes_over_tls() {
    let stack = MySqlStack::create(3).await;
    let admin = stack.api_admin().await;
    // The relay's account may not connect without TLS: whatever it does
    // below went over TLS.
    let account = format!("'{}'@'%'", stack.names.relay_user);
    sqlx::query(&format!("ALTER USER {account} REQUIRE SSL"))
        .execute(&admin)
        .await
        .expect("REQUIRE SSL");
    let plain = format!("{}?ssl-mode=DISABLED", stack.urls.relay_url);
    assert!(
        sqlx::MySqlConnection::connect(&plain).await.is_err(),
        "the relay's account refuses a connection without TLS"
    );
    let mut env = stack.relay_env();
    env.retain(|(name, _)| *name != "OBT_DATABASE_URL");
    env.push((
        "OBT_DATABASE_URL",
        obt_testkit::mysql::verify_identity(&stack.urls.relay_url),
    ));
    env.push(("OBT_POLL_MAX_IDLE_MS", "50".to_owned()));
    insert_interleaved(&admin, &["T1", "T2"], 1..=3).await;
    let relay = Service::start("stream-relay", &env);
    let seqs = received(&stack, 6).await;
    assert_eq!(seqs["T1"], [1, 2, 3]);
    assert_eq!(seqs["T2"], [1, 2, 3]);
    eventually("the relay to empty the outbox", DEADLINE, || async {
        match outbox_rows(&admin).await {
            0 => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    let status = relay.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_relay_without_its_database_url_says_what_to_set() {
    let output = tokio::process::Command::new(obt_testkit::bin_path("stream-relay"))
        .env("OBT_STORAGE", "mysql")
        .env("OBT_QUEUE_URL", "http://127.0.0.1:9/none.fifo")
        .env_remove("OBT_DATABASE_URL")
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .expect("run stream-relay");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OBT_DATABASE_URL"), "{stderr}");
}

#[tokio::test]
async fn an_unreadable_row_holds_back_its_identity_only() {
    let stack = MySqlStack::create(3).await;
    let admin = stack.api_admin().await;
    sqlx::query(
        "INSERT INTO obt (event_id, identity, seq, type, payload, created_at) \
         VALUES ('00000000-0000-7000-8000-000000000001', 'U1', 1, 'SpendingRecorded', \
         '{\"not\": \"an envelope\"}', NOW(3))",
    )
    .execute(&admin)
    .await
    .expect("insert a broken row");
    let u1 = Identity::parse("U1").expect("identity");
    insert(&admin, &obt_testkit::event(&u1, 2, "2.00")).await;
    insert_interleaved(&admin, &["U2"], 1..=2).await;

    let poller = poller(&stack, &stack.stack.queue_url);
    assert_eq!(poller.round().await.expect("a round"), 2);
    let seqs = received(&stack, 2).await;
    assert_eq!(seqs["U2"], [1, 2]);
    assert!(
        !seqs.contains_key("U1"),
        "U1's event 2 waits behind event 1"
    );
    assert_eq!(outbox_rows(&admin).await, 2, "U1's rows stay");
}

#[tokio::test]
async fn a_hanging_database_fails_the_round_within_the_statement_timeout_and_a_later_round_publishes()
 {
    use obt_testkit::fault_proxy::{FaultProxy, Mode};

    let stack = MySqlStack::create(3).await;
    let admin = stack.api_admin().await;
    insert_interleaved(&admin, &["H1"], 1..=3).await;
    let url = &stack.urls.relay_url;
    let server = url
        .rsplit_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("HOST:PORT in the URL");
    let proxy = FaultProxy::start(server.parse().expect("an address"))
        .await
        .expect("a proxy");
    let through = url.replacen(server, &proxy.addr().to_string(), 1);
    let publisher = Publisher::new(stack.stack.sqs(), stack.stack.queue_url.clone());
    let poller = OutboxPoller::new(&through, publisher, 7, Duration::from_millis(50))
        .expect("a poller")
        .with_statement_timeout(Duration::from_secs(1));

    // The server accepts connections and never answers: without a bound,
    // the round would wait for the pool's 10 s, or for ever on a
    // connection already open.
    proxy.set_mode(Mode::Blackhole);
    let started = std::time::Instant::now();
    let error = poller.round().await.expect_err("the round fails");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after {:?}",
        started.elapsed()
    );
    assert!(
        error.to_string().contains("did not answer within"),
        "{error}"
    );
    assert_eq!(outbox_rows(&admin).await, 3, "nothing deleted");

    proxy.set_mode(Mode::Pass);
    eventually("a round to publish after the heal", DEADLINE, || async {
        match poller.round().await {
            Ok(3) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(outbox_rows(&admin).await, 0);
    assert_eq!(received(&stack, 3).await["H1"], [1, 2, 3]);
}
