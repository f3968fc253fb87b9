//! `obt-admin status`, the real binary, against the real emulators (and
//! MariaDB with `OBT_TEST_STORAGE=mysql`), with the real relay and
//! consumer binaries: healthy once everything is published and applied
//! (exit 0); with a backlog behind a stopped relay, a dead letter and
//! parked identities, it reports each and exits 1.
//!
//! Run after `cargo build --workspace --bins --all-features`.

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use obt_contract::outbox::{
    IDENTITY_ATTR, OUTBOX_ATTR, PENDING_BUCKET_ATTR, PENDING_SINCE_ATTR, VERSION_ATTR, outbox_key,
    pending_bucket, pending_since,
};
use obt_contract::{Envelope, Identity};
use obt_stream_relay::image::Parked;
use obt_stream_relay::outbox::OutboxTable;
use obt_testkit::mysql::Backend;
use obt_testkit::{Service, eventually};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const DEADLINE: Duration = Duration::from_secs(90);

fn env(backend: &Backend, service: &str) -> Vec<(&'static str, String)> {
    let mut env = backend.env(service);
    env.extend([
        ("OBT_IDLE_POLL_MS", "50".to_owned()),
        ("OBT_POLL_MAX_IDLE_MS", "50".to_owned()),
        ("OBT_DISCOVER_INTERVAL_SECS", "1".to_owned()),
        ("OBT_WAIT_TIME_SECS", "1".to_owned()),
    ]);
    env
}

/// `obt-admin status ARGS` with the relay's settings, and the consumer's
/// database in the MySQL mode.
async fn status(backend: &Backend, args: &[&str]) -> Output {
    let mut env = env(backend, "stream-relay");
    if let Backend::MySql(mysql) = backend {
        env.push(("OBT_CONSUMER_DATABASE_URL", mysql.urls.consumer_url.clone()));
    }
    tokio::process::Command::new(obt_testkit::bin_path("obt-admin"))
        .arg("status")
        .args(args)
        .envs(env)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run obt-admin")
}

/// `status --json`: the exit code and the document.
async fn status_json(backend: &Backend) -> Result<(Option<i32>, Value), String> {
    let output = status(backend, &["--json"]).await;
    let json = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "not JSON ({e}): {} / {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    Ok((output.status.code(), json))
}

/// Writes `event` as the api does: into its identity's outbox (the item,
/// and the sweeper's index, which `status` reads) or as an `obt` row.
async fn write(backend: &Backend, event: &Envelope) {
    match backend {
        Backend::DynamoDb(stack) => {
            // One write, as the api's: the event, the version and the
            // sweeper's index (a second write could race the relay's
            // acknowledgement and leave a stale index entry).
            let identity = event.identity.as_str();
            let value = serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(event)
                .expect("an envelope serializes");
            let update = stack
                .dynamodb()
                .update_item()
                .table_name(&stack.names.table)
                .key(IDENTITY_ATTR, AttributeValue::S(identity.to_owned()))
                .expression_attribute_names("#v", VERSION_ATTR)
                .expression_attribute_names("#o", OUTBOX_ATTR)
                .expression_attribute_names("#ps", PENDING_SINCE_ATTR)
                .expression_attribute_names("#pb", PENDING_BUCKET_ATTR)
                .expression_attribute_values(":seq", AttributeValue::N(event.seq.to_string()))
                .expression_attribute_values(
                    ":ps",
                    AttributeValue::N(pending_since(event.occurred_at).to_string()),
                )
                .expression_attribute_values(
                    ":pb",
                    AttributeValue::N(pending_bucket(identity).to_string()),
                );
            let index = "#ps = if_not_exists(#ps, :ps), #pb = :pb";
            let update = if event.seq == 1 {
                update
                    .update_expression(format!("SET #v = :seq, #o = :outbox, {index}"))
                    .condition_expression("attribute_not_exists(#v)")
                    .expression_attribute_values(
                        ":outbox",
                        AttributeValue::M(HashMap::from([(outbox_key(1), value)])),
                    )
            } else {
                update
                    .update_expression(format!("SET #v = :seq, #o.#k = :event, {index}"))
                    .condition_expression("#v = :prev")
                    .expression_attribute_names("#k", outbox_key(event.seq))
                    .expression_attribute_values(":event", value)
                    .expression_attribute_values(
                        ":prev",
                        AttributeValue::N((event.seq - 1).to_string()),
                    )
            };
            update.send().await.expect("write the event");
        }
        Backend::MySql(mysql) => {
            sqlx::query(
                "INSERT INTO obt (event_id, identity, seq, type, payload, created_at) \
                 VALUES (?, ?, ?, 'SpendingRecorded', ?, ?)",
            )
            .bind(event.event_id.to_string())
            .bind(event.identity.to_string())
            .bind(event.seq)
            .bind(event.encode())
            .bind(event.occurred_at)
            .execute(&mysql.api_admin().await)
            .await
            .expect("insert an outbox row");
        }
    }
}

/// Parks `identity` at the relay as the relay does.
async fn park_at_relay(backend: &Backend, identity: &Identity) {
    let reason = "SQS refused the event (test)";
    match backend {
        Backend::DynamoDb(stack) => {
            let mark = Parked {
                cause: "sqs_refused".to_owned(),
                reason: reason.to_owned(),
                seq: Some(1),
                at: OffsetDateTime::now_utc().format(&Rfc3339).expect("a time"),
            };
            OutboxTable::new(stack.dynamodb(), stack.names.table.clone())
                .park(identity.as_str(), &mark)
                .await
                .expect("park");
        }
        Backend::MySql(mysql) => {
            sqlx::query(
                "INSERT INTO obt_parked (identity, obt_id, seq, cause, reason, parked_at) \
                 SELECT identity, id, seq, 'sqs_refused', ?, UTC_TIMESTAMP(3) FROM obt \
                 WHERE identity = ? ORDER BY id LIMIT 1",
            )
            .bind(reason)
            .bind(identity.as_str())
            .execute(&mysql.api_admin().await)
            .await
            .expect("park");
        }
    }
}

/// An event of `identity` written `ago` in the past.
fn event_ago(identity: &Identity, seq: u64, ago: Duration) -> Envelope {
    let mut event = obt_testkit::event(identity, seq, "4.20");
    event.occurred_at -= ago;
    event
}

#[tokio::test]
async fn status_exits_0_once_everything_is_published_and_applied() {
    let backend = Backend::create(5).await;
    let _relay = Service::start("stream-relay", &env(&backend, "stream-relay"));
    let _consumer = Service::start("consumer", &env(&backend, "consumer"));
    let identities: Vec<Identity> = (0..3)
        .map(|i| obt_testkit::identity(&format!("SH{i}")))
        .collect();
    for seq in 1..=2 {
        for identity in &identities {
            write(&backend, &obt_testkit::event(identity, seq, "1.00")).await;
        }
    }

    let json = eventually("a healthy status", DEADLINE, || async {
        let (code, json) = status_json(&backend).await?;
        let settled = json["outbox"]["pending_identities"] == 0
            && json["queue"]["visible"] == 0
            && json["queue"]["in_flight"] == 0;
        if code == Some(0) && settled && json["consumer"]["last_applied_at"].is_string() {
            Ok(json)
        } else {
            Err(format!("exit {code:?}: {json}"))
        }
    })
    .await;
    assert_eq!(json["healthy"], true);
    assert_eq!(json["outbox"]["pending_identities"], 0);
    assert!(json["outbox"]["oldest_pending_at"].is_null());
    assert_eq!(json["queue"]["visible"], 0);
    assert_eq!(json["dead_letter_queue"]["visible"], 0);
    assert_eq!(json["parked"]["relay"], serde_json::json!([]));
    assert_eq!(json["parked"]["consumer"], serde_json::json!([]));
    assert!(json["consumer"]["last_applied_age_secs"].as_u64() < Some(60));
    assert_eq!(json["errors"], serde_json::json!([]));
    let checks = json["checks"].as_array().expect("checks");
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");
    if backend.is_mysql() {
        assert_eq!(json["relay"]["kind"], "poller");
        assert!(json["relay"]["leader"]["connection_id"].is_u64(), "{json}");
    } else {
        assert_eq!(json["relay"]["kind"], "leases");
        let leases = json["relay"]["leases"].as_array().expect("leases");
        assert!(
            leases.iter().any(|l| l["owner"].is_string()),
            "the daemon holds the shard: {leases:?}"
        );
    }

    let text = status(&backend, &[]).await;
    assert_eq!(text.status.code(), Some(0), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(": healthy"), "{text}");
    assert!(text.contains("ok   outbox_age"), "{text}");
}

#[tokio::test]
async fn status_reports_a_backlog_a_dead_letter_and_parked_identities_and_exits_1() {
    let backend = Backend::create(5).await;
    // No relay runs: what is written waits in the outbox.
    let backlog = obt_testkit::identity("SB");
    let parked = obt_testkit::identity("SP");
    write(&backend, &event_ago(&parked, 1, Duration::from_secs(3600))).await;
    park_at_relay(&backend, &parked).await;
    write(&backend, &event_ago(&backlog, 1, Duration::from_secs(600))).await;
    write(&backend, &event_ago(&backlog, 2, Duration::from_secs(300))).await;
    // A message the consumer cannot read: dead-lettered, its group parked.
    let poison = obt_testkit::identity("SX");
    let _consumer = Service::start("consumer", &env(&backend, "consumer"));
    obt_testkit::send_raw(
        backend.stack(),
        poison.as_str(),
        &uuid_like(&poison),
        "not an envelope",
    )
    .await;

    let (code, json) = eventually("the dead letter and both parkings", DEADLINE, || async {
        let (code, json) = status_json(&backend).await?;
        let dead = json["dead_letter_queue"]["visible"].as_u64().unwrap_or(0)
            + json["dead_letter_queue"]["in_flight"].as_u64().unwrap_or(0);
        let consumer_parked = json["parked"]["consumer"].as_array().map_or(0, Vec::len);
        // The consumer is done with it: nothing left in the main queue.
        let drained = json["queue"]["visible"] == 0 && json["queue"]["in_flight"] == 0;
        if dead == 1 && consumer_parked == 1 && drained {
            Ok((code, json))
        } else {
            Err(format!("exit {code:?}: {json}"))
        }
    })
    .await;
    assert_eq!(code, Some(1), "{json}");
    assert_eq!(json["healthy"], false);
    assert_eq!(json["errors"], serde_json::json!([]), "{json}");

    // The backlog: both identities wait; the oldest of the one not parked
    // is 10 minutes old (the parked one's hour does not count).
    assert_eq!(json["outbox"]["pending_identities"], 2, "{json}");
    if backend.is_mysql() {
        assert_eq!(json["outbox"]["pending_events"], 3);
    } else {
        assert!(json["outbox"]["pending_events"].is_null());
    }
    let age = json["outbox"]["oldest_pending_age_secs"]
        .as_u64()
        .expect("an age");
    assert!((600..900).contains(&age), "{json}");

    let relay_parked = json["parked"]["relay"].as_array().expect("relay's");
    assert_eq!(relay_parked.len(), 1, "{json}");
    assert_eq!(relay_parked[0]["identity"], parked.as_str());
    assert_eq!(relay_parked[0]["cause"], "sqs_refused");
    let consumer_parked = &json["parked"]["consumer"][0];
    assert_eq!(consumer_parked["identity"], poison.as_str());
    assert_eq!(consumer_parked["cause"], "poison");

    let failed: Vec<&str> = json["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] == false)
        .filter_map(|c| c["name"].as_str())
        .collect();
    let mut expected = vec!["outbox_age", "dead_letters", "parked"];
    if backend.is_mysql() {
        expected.insert(1, "relay_leader");
    }
    assert_eq!(failed, expected, "{json}");

    let output = status(&backend, &[]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "UNHEALTHY",
        "FAIL outbox_age",
        "FAIL dead_letters",
        "FAIL parked",
        "docs/OPERATIONS.md#status",
        parked.as_str(),
        poison.as_str(),
        "1 message(s) waiting",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }

    // Thresholds are flags: allowing what is there makes it healthy.
    let output = status(
        &backend,
        &[
            "--max-outbox-age-secs",
            "3600",
            "--max-dlq-messages",
            "1",
            "--max-parked",
            "2",
        ],
    )
    .await;
    let expected = if backend.is_mysql() { 1 } else { 0 };
    assert_eq!(output.status.code(), Some(expected), "{output:?}");
}

#[tokio::test]
async fn status_that_cannot_reach_a_stage_exits_3_and_says_which() {
    let backend = Backend::create(5).await;
    // A relay runs (in the MySQL mode, no leader would fail a check).
    let _relay = Service::start("stream-relay", &env(&backend, "stream-relay"));
    let mut env = env(&backend, "stream-relay");
    env.push(("OBT_QUEUE_NAME", "no-such-queue.fifo".to_owned()));
    if let Backend::MySql(mysql) = &backend {
        env.push(("OBT_CONSUMER_DATABASE_URL", mysql.urls.consumer_url.clone()));
    }
    let json = eventually("status exits 3", DEADLINE, || async {
        let output = tokio::process::Command::new(obt_testkit::bin_path("obt-admin"))
            .args(["status", "--json"])
            .envs(env.clone())
            .output()
            .await
            .expect("run obt-admin");
        let json: Value = serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
        if output.status.code() == Some(3) {
            Ok(json)
        } else {
            Err(format!("{output:?}"))
        }
    })
    .await;
    assert!(json["queue"].is_null());
    assert_eq!(json["errors"][0]["stage"], "queue", "{json}");
    assert!(
        json["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-queue.fifo")),
        "{json}"
    );
}

/// A deduplication id for the poison message.
fn uuid_like(identity: &Identity) -> String {
    format!("poison-{identity}")
}
