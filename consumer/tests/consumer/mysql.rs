//! What only the MySQL backend has: the event id recorded in the same
//! transaction as the write, the head row lock that serialises concurrent
//! applies, least privilege, and its start-up errors. Against the MariaDB
//! server of `scripts/test.sh`, whatever `OBT_TEST_STORAGE` says.

use std::process::Output;
use std::time::Duration;

use obt_consumer::{Applied, ApplyError, MySqlLedger, OpenError};
use obt_contract::{Envelope, Identity};
use obt_runtime::mysql::IDLE_SESSION_TIMEOUT;
use obt_testkit::fault_proxy::FaultProxy;
use obt_testkit::mysql::{MySqlStack, cut_off_mid_transaction, waits_for_a_lock};
use obt_testkit::{Service, bin_path};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::MySqlPool;
use sqlx::mysql::MySqlDatabaseError;
use tokio::sync::Barrier;

use crate::helpers::{event, host_port, identity, send};

async fn ledger(mysql: &MySqlStack) -> MySqlLedger {
    MySqlLedger::connect(
        &mysql.urls.consumer_url,
        4,
        Duration::from_secs(10),
        IDLE_SESSION_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("connecting as the consumer: {e}"))
}

/// An identity's head row as the admin sees it: (last_seq, total, count).
async fn head(admin: &MySqlPool, identity: &Identity) -> Option<(u64, Decimal, u64)> {
    sqlx::query_as("SELECT last_seq, total, count FROM consumer_identity WHERE identity = ?")
        .bind(identity.as_str())
        .fetch_optional(admin)
        .await
        .expect("reading the head")
}

/// An identity's spending rows as the admin sees them: (seq, event_id).
async fn rows(admin: &MySqlPool, identity: &Identity) -> Vec<(u64, String)> {
    // CAST: the column's binary collation makes sqlx refuse it as text.
    sqlx::query_as(
        "SELECT seq, CAST(event_id AS CHAR) FROM obt_spending WHERE identity = ? ORDER BY seq",
    )
    .bind(identity.as_str())
    .fetch_all(admin)
    .await
    .expect("reading the spendings")
}

#[tokio::test]
async fn a_duplicate_delivery_finds_its_event_id_recorded_with_the_write_and_changes_nothing() {
    let mysql = MySqlStack::create(5).await;
    let ledger = ledger(&mysql).await;
    let admin = mysql.consumer_admin().await;
    let identity = identity("dup");
    let first = event(&identity, 1, "51.30");
    let second = event(&identity, 2, "1.00");

    assert_eq!(ledger.apply(&first).await.expect("applied"), Applied::New);
    assert_eq!(ledger.apply(&second).await.expect("applied"), Applied::New);
    let expected_rows = vec![
        (1, first.event_id.to_string()),
        (2, second.event_id.to_string()),
    ];
    assert_eq!(rows(&admin, &identity).await, expected_rows);
    let expected_head = Some((2, "52.30".parse().expect("decimal"), 2));
    assert_eq!(head(&admin, &identity).await, expected_head);

    // Redelivered, the older one too, several times.
    for event in [&first, &second, &first] {
        assert_eq!(
            ledger.apply(event).await.expect("recognised"),
            Applied::Duplicate
        );
    }
    assert_eq!(rows(&admin, &identity).await, expected_rows, "no new rows");
    assert_eq!(
        head(&admin, &identity).await,
        expected_head,
        "count and total unchanged"
    );
}

#[tokio::test]
async fn a_spending_row_is_never_kept_without_its_head_update_they_commit_together() {
    let mysql = MySqlStack::create(5).await;
    let ledger = ledger(&mysql).await;
    let admin = mysql.consumer_admin().await;
    let identity = identity("atomic");
    ledger
        .apply(&event(&identity, 1, "1.00"))
        .await
        .expect("applied");
    // The head's count can no longer grow: the head update, which comes
    // after the spending's insert, fails.
    sqlx::query("UPDATE consumer_identity SET count = 18446744073709551615 WHERE identity = ?")
        .bind(identity.as_str())
        .execute(&admin)
        .await
        .expect("the admin changes the head");

    let second = event(&identity, 2, "2.00");
    match ledger.apply(&second).await {
        Err(e @ ApplyError::Ledger(_)) => assert!(!e.is_transient(), "{e}"),
        other => panic!("expected the head update to fail, got {other:?}"),
    }
    assert_eq!(
        rows(&admin, &identity).await.len(),
        1,
        "the spending of seq 2 was rolled back with the failed head update"
    );
    assert_eq!(head(&admin, &identity).await.map(|h| h.0), Some(1));
}

#[tokio::test]
async fn an_event_whose_id_is_recorded_for_another_identity_is_refused_and_leaves_no_trace() {
    let mysql = MySqlStack::create(5).await;
    let ledger = ledger(&mysql).await;
    let admin = mysql.consumer_admin().await;
    let other = identity("other");
    let reused = event(&other, 1, "1.00");
    ledger.apply(&reused).await.expect("applied");

    // The same id on another identity's first event: its head is created
    // in the transaction, then the spending's insert hits the unique key.
    let identity = identity("reuser");
    let mut impostor = event(&identity, 1, "2.00");
    impostor.event_id = reused.event_id;
    match ledger.apply(&impostor).await {
        Err(ApplyError::EventIdReused {
            stored_identity,
            stored_seq: 1,
            ..
        }) => assert_eq!(stored_identity, other.as_str()),
        other => panic!("expected the reused id to be refused, got {other:?}"),
    }
    assert_eq!(
        head(&admin, &identity).await,
        None,
        "the head created in the same transaction was rolled back"
    );
    assert!(rows(&admin, &identity).await.is_empty());
}

#[tokio::test]
async fn a_conflicting_event_at_an_applied_seq_is_not_applied() {
    let mysql = MySqlStack::create(5).await;
    let ledger = ledger(&mysql).await;
    let admin = mysql.consumer_admin().await;
    let identity = identity("conflict");
    let first = event(&identity, 1, "1.00");
    ledger.apply(&first).await.expect("applied");

    let impostor = event(&identity, 1, "9.00");
    match ledger.apply(&impostor).await {
        Err(ApplyError::Conflict {
            seq: 1,
            stored_event_id,
            event_id,
            ..
        }) => {
            assert_eq!(stored_event_id, first.event_id.to_string());
            assert_eq!(event_id, impostor.event_id.to_string());
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        rows(&admin, &identity).await,
        [(1, first.event_id.to_string())]
    );
    assert_eq!(
        head(&admin, &identity).await,
        Some((1, "1.00".parse().expect("decimal"), 1))
    );
}

/// Applies `event` from `tasks` tasks at once, spread over `ledgers`;
/// returns how many saw it new and how many as a duplicate.
async fn apply_at_once(ledgers: &[MySqlLedger], tasks: usize, event: &Envelope) -> (usize, usize) {
    let barrier = std::sync::Arc::new(Barrier::new(tasks));
    let mut running = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let ledger = ledgers[task % ledgers.len()].clone();
        let barrier = barrier.clone();
        let event = event.clone();
        running.spawn(async move {
            barrier.wait().await;
            ledger.apply(&event).await
        });
    }
    let (mut new, mut duplicate) = (0, 0);
    while let Some(joined) = running.join_next().await {
        match joined.expect("the task does not panic") {
            Ok(Applied::New) => new += 1,
            Ok(Applied::Duplicate) => duplicate += 1,
            Err(e) => panic!("a concurrent apply failed: {e}"),
        }
    }
    (new, duplicate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_applies_of_the_same_event_from_two_consumers_apply_it_once() {
    let mysql = MySqlStack::create(5).await;
    // Two consumer instances, each with its own pool.
    let ledgers = [ledger(&mysql).await, ledger(&mysql).await];
    let admin = mysql.consumer_admin().await;
    let identity = identity("race");

    // Seq 1 races to create the identity's head; later ones to lock it.
    let amounts = ["1.00", "2.00", "3.00"];
    let events: Vec<_> = (1..)
        .zip(amounts)
        .map(|(seq, a)| event(&identity, seq, a))
        .collect();
    for event in &events {
        let (new, duplicate) = apply_at_once(&ledgers, 8, event).await;
        assert_eq!(
            (new, duplicate),
            (1, 7),
            "seq {}: applied once, recognised by the others",
            event.seq
        );
    }
    assert_eq!(rows(&admin, &identity).await.len(), 3);
    assert_eq!(
        head(&admin, &identity).await,
        Some((3, "6.00".parse().expect("decimal"), 3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_events_of_many_new_identities_applied_at_once_all_succeed() {
    // At REPEATABLE READ the look-ups of absent heads would lock the gaps
    // between them and the inserts deadlock; the ledger's sessions run at
    // READ COMMITTED.
    let mysql = MySqlStack::create(5).await;
    let ledger = MySqlLedger::connect(
        &mysql.urls.consumer_url,
        16,
        Duration::from_secs(10),
        IDLE_SESSION_TIMEOUT,
    )
    .await
    .expect("connects");
    let barrier = std::sync::Arc::new(Barrier::new(16));
    let mut running = tokio::task::JoinSet::new();
    for i in 0..16 {
        let (ledger, barrier) = (ledger.clone(), barrier.clone());
        let event = event(&identity(&format!("new{i:02}")), 1, "1.00");
        running.spawn(async move {
            barrier.wait().await;
            ledger.apply(&event).await
        });
    }
    while let Some(joined) = running.join_next().await {
        let applied = joined.expect("the task does not panic");
        assert!(
            matches!(applied, Ok(Applied::New)),
            "a first event was not applied: {applied:?}"
        );
    }
    let heads = ledger.list_identities().await.expect("lists");
    assert_eq!(heads.len(), 16);
    assert!(heads.is_sorted_by(|a, b| a.identity < b.identity));
}

/// An apply cut off from the server mid-transaction: the server answered
/// its `SELECT ... FOR UPDATE` (so its transaction holds the identity's
/// head), the answer was lost, and the consumer gave up on the apply. Its
/// `ROLLBACK` is lost too, so only the server can end that transaction: it
/// does once the session has been silent for the ledger's idle bound, and
/// the identity's next apply goes through. Without the bound the server
/// kept the session for `wait_timeout` (8 hours by default), the head
/// stayed locked, and every later apply of the identity failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_cut_off_mid_transaction_holds_its_identity_only_until_the_server_ends_the_silent_session()
 {
    let mysql = MySqlStack::create(5).await;
    let direct = ledger(&mysql).await;
    let admin = mysql.consumer_admin().await;
    let identity = identity("cutoff");
    let first = event(&identity, 1, "1.00");
    assert_eq!(direct.apply(&first).await.expect("applied"), Applied::New);

    // The admin holds the head, so that the apply through the proxy
    // waits in its first statement.
    let mut holder = admin.begin().await.expect("begin");
    sqlx::query("SELECT last_seq FROM consumer_identity WHERE identity = ? FOR UPDATE")
        .bind(identity.as_str())
        .fetch_one(&mut *holder)
        .await
        .expect("the admin locks the head");
    let url = &mysql.urls.consumer_url;
    let server = host_port(url).parse().expect("the server's address");
    let proxy = FaultProxy::start(server)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let through = url.replacen(host_port(url), &proxy.addr().to_string(), 1);
    let idle = Duration::from_secs(3);
    let cut_off = MySqlLedger::connect(&through, 1, Duration::from_secs(10), idle)
        .await
        .expect("connects through the proxy");
    let second = event(&identity, 2, "2.00");
    let attempt = tokio::spawn({
        let (cut_off, second) = (cut_off.clone(), second.clone());
        async move { cut_off.apply(&second).await }
    });
    waits_for_a_lock(&admin, &mysql.names.consumer_user).await;

    cut_off_mid_transaction(&proxy, attempt, async {
        holder.rollback().await.expect("the admin lets go");
    })
    .await;

    // Waits at most the ledger's lock wait (10 s); without the bound the
    // orphaned transaction outlasts it and this is a lock wait timeout.
    let started = std::time::Instant::now();
    assert_eq!(
        direct
            .apply(&second)
            .await
            .expect("applied once the session ended"),
        Applied::New
    );
    eprintln!("the head was free again after {:?}", started.elapsed());
    // The cut-off ledger's one connection was freed as well: its pool
    // hands out a new one.
    let third = event(&identity, 3, "3.00");
    assert_eq!(
        cut_off
            .apply(&third)
            .await
            .expect("the cut-off ledger applies again"),
        Applied::New
    );
    assert_eq!(
        head(&admin, &identity).await,
        Some((3, "6.00".parse().expect("decimal"), 3))
    );
}

async fn run(name: &str, env: &[(&'static str, String)], args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(bin_path(name));
    command
        .env_remove("OBT_DATABASE_URL")
        .env_remove("OBT_STORAGE")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish within 30 s"))
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_binary_in_mysql_mode_applies_sent_events_and_consumer_show_prints_them() {
    let mysql = MySqlStack::create(5).await;
    let env = mysql.consumer_env();
    let service = Service::start("consumer", &env);

    let identity = identity("bin");
    let sent = [
        event(&identity, 1, "10.05"),
        event(&identity, 2, "0.10"),
        event(&identity, 3, "7.00"),
    ];
    for event in &sent {
        send(&mysql.stack, event).await;
    }
    let shown = obt_testkit::eventually(
        "consumer-show to print seq 3",
        Duration::from_secs(30),
        || async {
            let output = run("consumer-show", &env, &[identity.as_str()]).await;
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            if !output.status.success() {
                return Err(format!("{}: {stderr}", output.status));
            }
            let shown: Value = serde_json::from_slice(&output.stdout)
                .map_err(|e| format!("not JSON ({e}): {stderr}"))?;
            match shown["last_seq"].as_u64() {
                Some(3) => Ok(shown),
                other => Err(format!("last_seq {other:?}")),
            }
        },
    )
    .await;

    assert_eq!(shown["identity"], identity.as_str());
    assert_eq!(shown["count"], 3);
    assert_eq!(shown["total"], "17.15");
    assert_eq!(shown["name"], "Name3");
    let spendings = shown["spendings"].as_array().expect("spendings");
    assert_eq!(spendings.len(), 3);
    for (shown, sent) in spendings.iter().zip(&sent) {
        assert_eq!(shown["seq"], sent.seq);
        assert_eq!(shown["event_id"], sent.event_id.to_string());
        assert_eq!(shown["amount"], sent.data.amount.to_string());
    }

    let unknown = run("consumer-show", &env, &["nobody"]).await;
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "nothing applied: exit status 1"
    );

    let status = service.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn the_consumers_database_user_may_not_delete_what_it_applied() {
    let mysql = MySqlStack::create(5).await;
    let ledger = ledger(&mysql).await;
    let identity = identity("keep");
    ledger
        .apply(&event(&identity, 1, "1.00"))
        .await
        .expect("applied");

    let as_consumer = MySqlPool::connect(&mysql.urls.consumer_url)
        .await
        .expect("connects as the consumer");
    for statement in [
        "DELETE FROM obt_spending",
        "DELETE FROM consumer_identity",
        "DROP TABLE obt_spending",
    ] {
        let error = sqlx::query(statement)
            .execute(&as_consumer)
            .await
            .expect_err("refused");
        let number = error
            .as_database_error()
            .and_then(|e| e.try_downcast_ref::<MySqlDatabaseError>())
            .map(MySqlDatabaseError::number);
        assert_eq!(number, Some(1142), "{statement}: {error}");
    }
    assert_eq!(
        rows(&mysql.consumer_admin().await, &identity).await.len(),
        1
    );
}

#[tokio::test]
async fn an_unreachable_database_stops_the_start_and_the_error_says_what_to_fix_without_the_password()
 {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address").port()
    };
    let url = format!("mysql://obt_consumer:s3cret-pass-123@127.0.0.1:{closed_port}/consumed");
    let error = MySqlLedger::connect(&url, 1, Duration::from_secs(1), IDLE_SESSION_TIMEOUT)
        .await
        .expect_err("nothing listens there");
    let text = error.to_string();
    assert!(matches!(error, OpenError::Connect { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{closed_port}")) && text.contains("OBT_DATABASE_URL"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn a_wrong_password_or_a_database_without_the_tables_stops_the_start() {
    let mysql = MySqlStack::create(5).await;
    let (credentials, server_and_database) = mysql
        .urls
        .consumer_url
        .split_once('@')
        .expect("a URL with credentials");
    let user = credentials
        .trim_start_matches("mysql://")
        .split(':')
        .next()
        .expect("a user");
    let wrong = format!("mysql://{user}:wrong-password-123@{server_and_database}");
    let error = MySqlLedger::connect(&wrong, 1, Duration::from_secs(5), IDLE_SESSION_TIMEOUT)
        .await
        .expect_err("refused");
    let text = error.to_string();
    assert!(matches!(error, OpenError::Connect { .. }), "{text}");
    assert!(text.contains("Access denied"), "{text}");
    assert!(!text.contains("wrong-password"), "{text}");

    // A database that exists but holds no consumer tables.
    let admin = obt_testkit::mysql::admin_url();
    let empty = format!("{}/information_schema", admin.trim_end_matches('/'));
    let error = MySqlLedger::connect(&empty, 1, Duration::from_secs(5), IDLE_SESSION_TIMEOUT)
        .await
        .expect_err("refused");
    assert!(matches!(error, OpenError::Schema { .. }), "{error}");
    assert!(error.to_string().contains("obt-migrate"), "{error}");
}

#[tokio::test]
async fn the_binaries_in_mysql_mode_without_a_database_url_refuse_to_start_and_name_the_setting() {
    let env = [("OBT_STORAGE", "mysql".to_owned())];
    for (name, args) in [("consumer", &[][..]), ("consumer-show", &["AB1"][..])] {
        let output = run(name, &env, args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name} started: {stderr}");
        assert!(stderr.contains("OBT_DATABASE_URL"), "{name}: {stderr}");
    }
}
