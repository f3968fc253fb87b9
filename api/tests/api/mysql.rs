//! The MySQL backend's own tests, against a real MariaDB whatever
//! `OBT_TEST_STORAGE` says: the rows one POST writes, the rollback of a
//! transaction that fails half-way (invariants 1 and 5), the row lock
//! across processes, deadlocks, an unreachable database, and start-up.
//!
//! The HTTP contract itself is checked by the other modules, which run
//! against MySQL with `OBT_TEST_STORAGE=mysql`.

use std::str::FromStr;
use std::time::Duration;

use aws_config::SdkConfig;
use axum::http::StatusCode;
use obt_api::{Application, StoreOptions};
use obt_contract::Envelope;
use obt_testkit::fault_proxy::Mode;
use rust_decimal::Decimal;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::task::JoinSet;

use crate::helpers::{SpawnedApp, TestApp, TestResponse, get_request, retries, send, spending};
use crate::mysql_backend::{MySqlBackend, utf8};
use obt_testkit::mysql::{cut_off_mid_transaction, waits_for_a_lock};

/// Text columns are read as bytes: see `mysql_backend::utf8`.
type Text = Vec<u8>;
type SpendingRow = (Text, Text, Text, Decimal, u64, PrimitiveDateTime);
type OutboxRow = (Text, Text, u64, Text, Text, PrimitiveDateTime);
type IdentityRow = (String, String, u64, Decimal, u64);

async fn identity_row(db: &MySqlBackend, identity: &str) -> Option<IdentityRow> {
    let row: Option<(Text, Text, u64, Decimal, u64)> = sqlx::query_as(
        "SELECT name, surname, last_seq, total, count FROM obt_identity WHERE identity = ?",
    )
    .bind(identity)
    .fetch_optional(&db.admin)
    .await
    .expect("read obt_identity");
    row.map(|(name, surname, last_seq, total, count)| {
        (utf8(name), utf8(surname), last_seq, total, count)
    })
}

fn decimal(text: &str) -> Decimal {
    text.parse().expect("a decimal")
}

#[tokio::test]
async fn one_post_writes_one_spending_row_and_one_outbox_row_holding_the_envelope_it_answered() {
    let app = TestApp::mysql(StoreOptions::default()).await;
    let db = app.db();

    let response = app.post_json(&spending("AB1", "Martin", "51.3")).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    let answered = &response.json;
    let created_at = OffsetDateTime::parse(
        answered["created_at"].as_str().expect("a creation time"),
        &Rfc3339,
    )
    .expect("RFC 3339");

    assert_eq!(db.count("obt_spending").await, 1);
    assert_eq!(db.count("obt").await, 1);
    assert_eq!(db.count("obt_identity").await, 1);

    let (identity, name, surname, amount, seq, at): SpendingRow =
        sqlx::query_as("SELECT identity, name, surname, amount, seq, created_at FROM obt_spending")
            .fetch_one(&db.admin)
            .await
            .expect("the spending row");
    assert_eq!(
        (utf8(identity), utf8(name), utf8(surname), amount, seq, at),
        (
            "AB1".to_owned(),
            "Martin".to_owned(),
            "Robi".to_owned(),
            decimal("51.30"),
            1,
            PrimitiveDateTime::new(created_at.date(), created_at.time()),
        )
    );

    let (event_id, identity, seq, event_type, payload, outbox_created_at): OutboxRow =
        sqlx::query_as("SELECT event_id, identity, seq, type, payload, created_at FROM obt")
            .fetch_one(&db.admin)
            .await
            .expect("the outbox row");
    let (event_id, identity, event_type, payload) = (
        utf8(event_id),
        utf8(identity),
        utf8(event_type),
        utf8(payload),
    );
    assert_eq!(answered["event_id"], event_id.as_str());
    assert_eq!((identity.as_str(), seq), ("AB1", 1));
    assert_eq!(event_type, "SpendingRecorded");
    assert_eq!(outbox_created_at.assume_utc(), created_at);
    // The payload is the message body the relay will send, byte for byte.
    let envelope = Envelope::decode(&payload).expect("the payload is an envelope");
    assert_eq!(envelope.encode(), payload);
    assert_eq!(envelope.event_id.to_string(), event_id);
    assert_eq!(envelope.seq, 1);
    assert_eq!(envelope.identity.as_str(), "AB1");
    assert_eq!(envelope.occurred_at, created_at);
    assert_eq!(envelope.data.name.as_str(), "Martin");
    assert_eq!(envelope.data.surname.as_str(), "Robi");
    assert_eq!(envelope.data.amount.to_string(), "51.30");

    assert_eq!(
        identity_row(db, "AB1").await,
        Some((
            "Martin".to_owned(),
            "Robi".to_owned(),
            1,
            decimal("51.30"),
            1
        ))
    );
}

#[tokio::test]
async fn a_transaction_that_fails_after_the_spending_insert_publishes_nothing() {
    let app = TestApp::mysql(StoreOptions::default()).await;
    let db = app.db();
    let first = app.post_json(&spending("AB1", "Martin", "5")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let before = identity_row(db, "AB1").await;

    // Without INSERT on the outbox, a POST fails at its outbox row, after
    // its spending row went in (and, for a new identity, its identity row).
    let names = &db.stack.names;
    let grant = |verb: &str, direction: &str| {
        format!(
            "{verb} INSERT ON `{}`.`obt` {direction} '{}'@'%'",
            names.api_database, names.api_user
        )
    };
    db.admin_execute(&grant("REVOKE", "FROM")).await;
    for body in [
        spending("AB1", "Changed", "7"),
        spending("NEW1", "Ada", "3"),
    ] {
        let response = app.post_json(&body).await;
        assert_eq!(
            response.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{body}: {}",
            response.text
        );
        assert_eq!(
            response.json,
            serde_json::json!({"errors": {"server": ["internal error"]}}),
            "nothing internal in the answer"
        );
    }

    assert_eq!(
        identity_row(db, "AB1").await,
        before,
        "the totals did not move"
    );
    assert_eq!(identity_row(db, "NEW1").await, None);
    assert_eq!(db.seqs("obt_spending", "AB1").await, [1]);
    assert_eq!(db.seqs("obt_spending", "NEW1").await, Vec::<u64>::new());
    assert_eq!(db.seqs("obt", "AB1").await, [1], "no event was published");
    assert_eq!(db.count("obt").await, 1);

    // The failed transactions took no seq: the next spending has seq 2.
    db.admin_execute(&grant("GRANT", "TO")).await;
    let next = app.post_json(&spending("AB1", "Martin", "1")).await;
    assert_eq!(next.status, StatusCode::CREATED, "{}", next.text);
    assert_eq!(next.json["seq"], 2);
    assert_eq!(db.seqs("obt", "AB1").await, [1, 2]);
}

/// POSTs each body to the router it is paired with, all at once.
async fn post_concurrently(posts: Vec<(axum::Router, String)>) -> Vec<TestResponse> {
    let mut tasks = JoinSet::new();
    for (router, body) in posts {
        tasks.spawn(async move {
            send(
                &router,
                crate::helpers::post_request(Some("application/json"), &body),
            )
            .await
        });
    }
    let mut responses = Vec::new();
    while let Some(response) = tasks.join_next().await {
        responses.push(response.expect("the task ran"));
    }
    responses
}

#[tokio::test]
async fn thirty_six_concurrent_posts_from_three_instances_get_seqs_1_to_36_in_commit_order() {
    let app = TestApp::mysql(StoreOptions::default()).await;
    let db = app.db();
    // Three stores, each with its own pool and in-process locks: only the
    // row lock orders their writes.
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(obt_api::app(db.state(StoreOptions::default()).await));
    }
    let posts = (0..36)
        .map(|i| (instances[i % 3].clone(), spending("AB1", "Martin", "1.05")))
        .collect();

    let responses = post_concurrently(posts).await;
    let mut seqs: Vec<u64> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
            r.json["seq"].as_u64().expect("a seq")
        })
        .collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=36).collect();
    assert_eq!(seqs, expected);

    assert_eq!(db.seqs("obt_spending", "AB1").await, expected);
    assert_eq!(db.seqs("obt", "AB1").await, expected);
    // The outbox rows went in in seq order: what the relay reads in
    // insertion order is in seq order too.
    let by_insertion: Vec<u64> = sqlx::query_scalar("SELECT seq FROM obt ORDER BY id")
        .fetch_all(&db.admin)
        .await
        .expect("read the outbox");
    assert_eq!(by_insertion, expected);
    for event in db.outbox_events("AB1").await {
        let answered = responses
            .iter()
            .find(|r| r.json["seq"] == event.seq)
            .expect("an answer for every event");
        assert_eq!(answered.json["event_id"], event.event_id.to_string());
    }
    let summary = app.get("/api/v1/spending/AB1").await;
    assert_eq!(summary.json["count"], 36);
    assert_eq!(summary.json["last_seq"], 36);
    assert_eq!(summary.json["total"], "37.80");
    assert_eq!(summary.json["pending_events"], 36);
}

#[tokio::test]
async fn first_spendings_of_new_identities_at_once_do_not_deadlock() {
    // No retry: a deadlock would be a 503. The upsert that opens each
    // transaction takes only its own row's lock, so first writes of one
    // identity queue, and those of new neighbours do not meet at all
    // (a locking read of a missing row would take a shared gap lock).
    let no_retry = retries(0);
    let app = TestApp::mysql(no_retry).await;
    let db = app.db();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(obt_api::app(db.state(no_retry).await));
    }
    // 24 new identities side by side in the key order, and 12 first
    // writes of one more.
    let mut posts: Vec<(axum::Router, String)> = (0..24)
        .map(|i| {
            (
                instances[i % 3].clone(),
                spending(&format!("N{i:02}"), "Ada", "1"),
            )
        })
        .collect();
    posts.extend((0..12).map(|i| (instances[i % 3].clone(), spending("SAME", "Ada", "1"))));

    for response in post_concurrently(posts).await {
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    }
    assert_eq!(db.count("obt_identity").await, 25);
    assert_eq!(db.seqs("obt", "SAME").await, (1..=12).collect::<Vec<u64>>());
}

/// POSTs a spending of `AB1`, whose last seq is 1, and makes its
/// transaction the victim of a deadlock. A transaction of the admin holds
/// the `obt_spending` row (AB1, 2) uncommitted, so the api's insert of that
/// row waits for it; then the admin asks for the identity's row, which the
/// api holds. InnoDB rolls back the transaction that wrote less: the api's.
/// Returns the admin's transaction, which now holds the identity's row,
/// and the POST.
async fn post_into_a_deadlock(
    db: &MySqlBackend,
    router: axum::Router,
) -> (
    sqlx::Transaction<'static, sqlx::MySql>,
    tokio::task::JoinHandle<TestResponse>,
) {
    let mut admin = db.admin.begin().await.expect("begin");
    let insert = "INSERT INTO obt_spending (identity, name, surname, amount, seq, created_at) \
                  VALUES (?, 'Admin', 'Admin', 1, ?, UTC_TIMESTAMP(3))";
    // Weight, so that InnoDB picks the api's transaction as the victim.
    for seq in 1..=50_u64 {
        sqlx::query(insert)
            .bind("HEAVY")
            .bind(seq)
            .execute(&mut *admin)
            .await
            .expect("insert a heavy row");
    }
    sqlx::query(insert)
        .bind("AB1")
        .bind(2_u64)
        .execute(&mut *admin)
        .await
        .expect("take the api's next spending row");
    let post = tokio::spawn(async move {
        send(
            &router,
            crate::helpers::post_request(Some("application/json"), &spending("AB1", "Victim", "7")),
        )
        .await
    });
    waits_for_a_lock(&db.admin, &db.stack.names.api_user).await;
    sqlx::query("SELECT last_seq FROM obt_identity WHERE identity = 'AB1' FOR UPDATE")
        .fetch_one(&mut *admin)
        .await
        .expect("the admin's transaction is not the victim");
    (admin, post)
}

#[tokio::test]
async fn a_transaction_rolled_back_by_a_deadlock_is_tried_again() {
    let app = TestApp::mysql(StoreOptions::default()).await;
    let db = app.db();
    let first = app.post_json(&spending("AB1", "Martin", "5")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    let (admin, post) = post_into_a_deadlock(db, app.router.clone()).await;
    admin
        .rollback()
        .await
        .expect("roll back the admin's transaction");

    let response = post.await.expect("the POST ran");
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    assert_eq!(response.json["seq"], 2);
    assert_eq!(db.seqs("obt", "AB1").await, [1, 2]);
    assert_eq!(db.seqs("obt_spending", "AB1").await, [1, 2]);
}

#[tokio::test]
async fn a_deadlock_victim_out_of_retries_is_answered_503_and_writes_nothing() {
    let no_retry = retries(0);
    let app = TestApp::mysql(no_retry).await;
    let db = app.db();
    let first = app.post_json(&spending("AB1", "Martin", "5")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let before = identity_row(db, "AB1").await;

    let (admin, post) = post_into_a_deadlock(db, app.router.clone()).await;
    let response = post.await.expect("the POST ran");
    admin
        .rollback()
        .await
        .expect("roll back the admin's transaction");

    response.assert_retry_later(
        "1",
        "too many concurrent writes for this identity; retry later",
    );
    assert_eq!(identity_row(db, "AB1").await, before);
    assert_eq!(db.seqs("obt", "AB1").await, [1]);
    assert_eq!(db.seqs("obt_spending", "AB1").await, [1]);
}

#[tokio::test]
async fn the_readiness_probe_and_posts_answer_503_while_the_database_is_unreachable() {
    let app = TestApp::mysql(StoreOptions::default()).await;
    let db = app.db();
    let proxy = db.proxy().await;
    let router = obt_api::app(db.state_through(
        &proxy,
        Duration::from_secs(2),
        obt_runtime::mysql::IDLE_SESSION_TIMEOUT,
    ));
    let ready = || send(&router, get_request("/health/ready"));

    let response = ready().await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);

    proxy.set_mode(Mode::Refuse);
    let response = ready().await;
    assert_eq!(
        response.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        response.text
    );
    assert_eq!(response.json["status"], "unavailable");
    assert_eq!(response.errors("mysql"), ["the database does not answer"]);
    let post = send(
        &router,
        crate::helpers::post_request(Some("application/json"), &spending("AB1", "Martin", "1")),
    )
    .await;
    post.assert_retry_later("5", "the database is unavailable; retry later");
    assert_eq!(db.stored_count().await, 0);

    proxy.set_mode(Mode::Pass);
    let response = ready().await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
}

/// A POST cut off from the server mid-transaction: the server answered its
/// `SELECT ... FOR UPDATE` (so its transaction holds the identity's row),
/// the answer was lost, and the request was given up. Its `ROLLBACK` is
/// lost too, so only the server can end that transaction: it does once the
/// session has been silent for the store's idle bound, and the identity's
/// next POST is recorded. Without the bound the server kept the session for
/// `wait_timeout` (8 hours by default), and every later POST of the
/// identity waited on the row and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_cut_off_mid_transaction_holds_its_identity_only_until_the_server_ends_the_silent_session()
 {
    let app = TestApp::mysql(StoreOptions::default()).await;
    let db = app.db();
    let first = app.post_json(&spending("AB1", "Martin", "5")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);

    // The admin holds the row, so that the POST through the proxy waits
    // in its first statement.
    let mut lock = db.lock_row("AB1").await;
    let proxy = db.proxy().await;
    let cut_off =
        obt_api::app(db.state_through(&proxy, Duration::from_secs(10), Duration::from_secs(3)));
    let post = tokio::spawn({
        let cut_off = cut_off.clone();
        let request =
            crate::helpers::post_request(Some("application/json"), &spending("AB1", "Cut", "7"));
        async move { send(&cut_off, request).await }
    });
    lock.waited_for().await;

    cut_off_mid_transaction(&proxy, post, lock.release()).await;

    // Without the bound the row stays locked, and this waits out the
    // request timeout.
    let started = std::time::Instant::now();
    let second = app.post_json(&spending("AB1", "Martin", "6")).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    eprintln!("the row was free again after {:?}", started.elapsed());
    // The cut-off store's connection was freed too: it records again.
    let third = send(
        &cut_off,
        crate::helpers::post_request(Some("application/json"), &spending("AB1", "Martin", "1")),
    )
    .await;
    assert_eq!(third.status, StatusCode::CREATED, "{}", third.text);
    // Nothing of the given-up POST was kept.
    assert_eq!(db.seqs("obt", "AB1").await, [1, 2, 3]);
    assert_eq!(db.seqs("obt_spending", "AB1").await, [1, 2, 3]);
    let (_, _, last_seq, total, count) = identity_row(db, "AB1").await.expect("the row");
    assert_eq!((last_seq, total, count), (3, Decimal::new(1200, 2), 3));
}

#[tokio::test]
async fn the_api_built_from_its_settings_serves_from_mysql() {
    let app = TestApp::mysql(StoreOptions::default()).await;
    let application = Application::build(&app.settings(), &SdkConfig::builder().build())
        .await
        .expect("the api starts");
    let server = SpawnedApp::run(application);
    let client = reqwest::Client::new();

    let response = client
        .post(server.url("/api/v1/spending"))
        .header("content-type", "application/json")
        .body(spending("AB1", "Martin", "2.5"))
        .send()
        .await
        .expect("the api answers");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let summary: serde_json::Value = client
        .get(server.url("/api/v1/spending/AB1"))
        .send()
        .await
        .expect("the api answers")
        .json()
        .await
        .expect("JSON");
    assert_eq!(summary["total"], "2.50");
    assert_eq!(summary["pending_events"], 1);
    let ready = client
        .get(server.url("/health/ready"))
        .send()
        .await
        .expect("the api answers");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
}

#[tokio::test]
async fn an_unreachable_database_stops_the_start_up_saying_what_to_fix() {
    let app = TestApp::mysql(StoreOptions::default()).await;
    let db = app.db();
    let proxy = db.proxy().await;
    proxy.set_mode(Mode::Refuse);
    let options = sqlx::mysql::MySqlConnectOptions::from_str(db.url()).expect("a MySQL URL");
    let url = db.url().replace(
        &format!("@{}:{}/", options.get_host(), options.get_port()),
        &format!("@127.0.0.1:{}/", proxy.addr().port()),
    );
    let mut settings = app.settings();
    settings.storage.database_url = Some(url.into());

    let error = Application::build(&settings, &SdkConfig::builder().build())
        .await
        .expect_err("no database to connect to");
    let message = obt_runtime::error_chain(&error);
    assert!(
        message.contains(&format!(
            "cannot connect to MySQL at 127.0.0.1:{}",
            proxy.addr().port()
        )),
        "{message}"
    );
    assert!(message.contains("OBT_DATABASE_URL"), "{message}");
    let password = db.url().split([':', '@']).nth(2).expect("a password");
    assert!(
        !message.contains(password),
        "the password leaked: {message}"
    );
}

#[tokio::test]
async fn a_database_without_the_api_tables_stops_the_start_up_saying_what_to_fix() {
    let app = TestApp::mysql(StoreOptions::default()).await;
    app.db().admin_execute("DROP TABLE obt_identity").await;

    let error = Application::build(&app.settings(), &SdkConfig::builder().build())
        .await
        .expect_err("no schema");
    let message = obt_runtime::error_chain(&error);
    assert!(message.contains("obt-migrate --storage mysql"), "{message}");
}
