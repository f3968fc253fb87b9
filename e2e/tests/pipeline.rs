//! The whole pipeline as users run it: the real `api`, `stream-relay` and
//! `consumer` binaries as processes, against DynamoDB Local and fauxqs.
//! Each test has its own tables and queues.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use obt_contract::{Envelope, EventId, EventType, Identity, PersonName, SCHEMA_VERSION};
use obt_testkit::mysql::Backend;
use obt_testkit::{Service, Stack, eventually, free_port};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const DEADLINE: Duration = Duration::from_secs(60);

/// The three services on one backend.
struct Pipeline {
    backend: Backend,
    api_url: String,
    _api: Service,
    relay: Option<Service>,
    _consumer: Service,
    http: reqwest::Client,
}

/// What `consumer-show` prints of an identity: the consumer's own record,
/// read the same way in both modes.
#[derive(Debug)]
struct Applied {
    identity: String,
    count: u64,
    last_seq: u64,
    total: Decimal,
    spendings: Vec<AppliedSpending>,
}

#[derive(Debug)]
struct AppliedSpending {
    seq: u64,
    event_id: String,
    amount: Decimal,
    applied_at: OffsetDateTime,
}

impl Applied {
    fn from_json(json: &Value) -> Self {
        let text = |v: &Value, field: &str| -> String {
            v[field]
                .as_str()
                .unwrap_or_else(|| panic!("consumer-show: {field} is not a string: {v}"))
                .to_owned()
        };
        let number = |v: &Value, field: &str| -> u64 {
            v[field]
                .as_u64()
                .unwrap_or_else(|| panic!("consumer-show: {field} is not a count: {v}"))
        };
        let decimal = |v: &Value, field: &str| -> Decimal {
            Decimal::from_str(&text(v, field)).expect("a decimal")
        };
        let spendings = json["spendings"]
            .as_array()
            .expect("consumer-show: spendings")
            .iter()
            .map(|s| AppliedSpending {
                seq: number(s, "seq"),
                event_id: text(s, "event_id"),
                amount: decimal(s, "amount"),
                applied_at: OffsetDateTime::parse(&text(s, "applied_at"), &Rfc3339)
                    .expect("applied_at is RFC 3339"),
            })
            .collect();
        Self {
            identity: text(json, "identity"),
            count: number(json, "count"),
            last_seq: number(json, "last_seq"),
            total: decimal(json, "total"),
            spendings,
        }
    }
}

/// Speeds up idle polling so that tests converge quickly; the behaviour
/// is the same as with the defaults.
fn env(
    backend: &Backend,
    service: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = backend.env(service);
    env.extend([
        ("OBT_IDLE_POLL_MS", "50".to_owned()),
        ("OBT_POLL_MAX_IDLE_MS", "50".to_owned()),
        ("OBT_DISCOVER_INTERVAL_SECS", "1".to_owned()),
        ("OBT_WAIT_TIME_SECS", "1".to_owned()),
    ]);
    env.extend(extra.iter().cloned());
    env
}

impl Pipeline {
    async fn start(max_receive_count: u32) -> Self {
        let mut pipeline = Self::start_without_relay(max_receive_count).await;
        pipeline.relay = Some(pipeline.start_relay(&[]));
        pipeline
    }

    /// The queues.
    fn stack(&self) -> &Stack {
        self.backend.stack()
    }

    fn start_relay(&self, extra: &[(&'static str, String)]) -> Service {
        Service::start("stream-relay", &env(&self.backend, "stream-relay", extra))
    }

    /// The api and the consumer only: the test runs its own relays.
    async fn start_without_relay(max_receive_count: u32) -> Self {
        let backend = Backend::create(max_receive_count).await;
        let port = free_port();
        let api = Service::start(
            "api",
            &env(
                &backend,
                "api",
                &[("OBT_LISTEN", format!("127.0.0.1:{port}"))],
            ),
        );
        let consumer = Service::start("consumer", &env(&backend, "consumer", &[]));
        let pipeline = Self {
            api_url: format!("http://127.0.0.1:{port}"),
            backend,
            _api: api,
            relay: None,
            _consumer: consumer,
            http: reqwest::Client::new(),
        };
        obt_testkit::api_ready(&pipeline.http, &pipeline.api_url, DEADLINE).await;
        pipeline
    }

    async fn post(&self, identity: &str, amount: &str) -> Value {
        let body = format!(
            r#"{{"identity":"{identity}","name":"Martin","surname":"Robi","amount":{amount}}}"#
        );
        let response = self
            .http
            .post(format!("{}/api/v1/spending", self.api_url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST reaches the api");
        assert_eq!(response.status(), 201, "POST {identity} {amount}");
        response.json().await.expect("a JSON body")
    }

    /// The consumer's record of `identity`, by `consumer-show`.
    async fn applied(&self, identity: &str) -> Option<Applied> {
        let output = tokio::process::Command::new(obt_testkit::bin_path("consumer-show"))
            .arg(identity)
            .envs(env(
                &self.backend,
                "consumer",
                &[("RUST_BACKTRACE", "0".to_owned())],
            ))
            .output()
            .await
            .expect("run consumer-show");
        match output.status.code() {
            Some(0) => {
                let json: Value =
                    serde_json::from_slice(&output.stdout).expect("consumer-show prints JSON");
                Some(Applied::from_json(&json))
            }
            Some(1) => None,
            _ => panic!(
                "consumer-show {identity} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// Waits until the consumer has applied `count` events of `identity`.
    async fn wait_applied(&self, identity: &str, count: u64) -> Applied {
        eventually(
            &format!("{count} events of {identity} at the consumer"),
            DEADLINE,
            || async {
                match self.applied(identity).await {
                    Some(applied) if applied.count >= count => Ok(applied),
                    other => Err(format!("{:?}", other.map(|a| a.count))),
                }
            },
        )
        .await
    }
}

/// Asserts that the consumer holds exactly the `posted` responses of
/// `identity`, each once, applied in seq order.
fn assert_exactly_once_in_order(applied: &Applied, posted: &[Value]) {
    let seqs: Vec<u64> = applied.spendings.iter().map(|s| s.seq).collect();
    let expected: Vec<u64> = (1..=posted.len() as u64).collect();
    assert_eq!(seqs, expected, "{}: every seq once", applied.identity);
    assert_eq!(applied.count, posted.len() as u64);
    assert_eq!(applied.last_seq, posted.len() as u64);
    let mut by_seq: HashMap<u64, &Value> = HashMap::new();
    for response in posted {
        by_seq.insert(response["seq"].as_u64().expect("seq"), response);
    }
    let mut total = Decimal::ZERO;
    for spending in &applied.spendings {
        let response = by_seq[&spending.seq];
        assert_eq!(
            spending.event_id,
            response["event_id"].as_str().expect("event_id")
        );
        assert_eq!(
            spending.amount,
            Decimal::from_str(response["amount"].as_str().expect("amount")).expect("a decimal")
        );
        total += spending.amount;
    }
    assert_eq!(
        applied.total, total,
        "{}: the total is the sum",
        applied.identity
    );
    for pair in applied.spendings.windows(2) {
        assert!(
            pair[0].applied_at <= pair[1].applied_at,
            "{}: seq {} was applied after seq {}",
            applied.identity,
            pair[0].seq,
            pair[1].seq
        );
    }
}

#[tokio::test]
async fn posts_over_several_identities_reach_the_consumer_exactly_once_in_seq_order() {
    let pipeline = Pipeline::start(5).await;
    let identities = ["E2E-A", "E2E-B", "E2E-C", "E2E-D"];
    let mut posted: HashMap<&str, Vec<Value>> = HashMap::new();
    for round in 1..=8 {
        let responses = futures::future::join_all(identities.iter().map(|identity| {
            let pipeline = &pipeline;
            async move {
                (
                    *identity,
                    pipeline.post(identity, &format!("{round}.{round}5")).await,
                )
            }
        }))
        .await;
        for (identity, response) in responses {
            posted.entry(identity).or_default().push(response);
        }
    }
    for identity in identities {
        let applied = pipeline.wait_applied(identity, 8).await;
        assert_exactly_once_in_order(&applied, &posted[identity]);
    }
}

/// Posts one spending per identity and round, keeping the responses.
async fn post_rounds<'a>(
    pipeline: &Pipeline,
    identities: &[&'a str],
    rounds: std::ops::RangeInclusive<u32>,
    posted: &mut HashMap<&'a str, Vec<Value>>,
) {
    for round in rounds {
        for identity in identities {
            let response = pipeline.post(identity, &format!("{round}.01")).await;
            posted.entry(identity).or_default().push(response);
        }
    }
}

#[tokio::test]
async fn a_relay_killed_mid_run_and_restarted_still_delivers_exactly_once() {
    let mut pipeline = Pipeline::start(5).await;
    let identities = ["KILL-A", "KILL-B", "KILL-C", "KILL-D", "KILL-E"];
    let mut posted: HashMap<&str, Vec<Value>> = HashMap::new();
    // A backlog written while no relay runs, so that the next relay is busy
    // with it for a while.
    pipeline.relay.take().expect("the relay runs").kill().await;
    post_rounds(&pipeline, &identities, 1..=30, &mut posted).await;
    let relay = pipeline.start_relay(&[]);
    // SIGKILL as soon as the first events arrive: mid-run, with events
    // published but not yet acknowledged or checkpointed, most likely.
    eventually("the first events at the consumer", DEADLINE, || async {
        for identity in identities {
            if pipeline.applied(identity).await.is_some() {
                return Ok(());
            }
        }
        Err("none yet".to_owned())
    })
    .await;
    relay.kill().await;
    let mut arrived = 0;
    for identity in identities {
        arrived += pipeline.applied(identity).await.map_or(0, |a| a.count);
    }
    eprintln!("the relay was killed with {arrived} of 150 events applied");

    post_rounds(&pipeline, &identities, 31..=35, &mut posted).await;
    pipeline.relay = Some(pipeline.start_relay(&[]));
    for identity in identities {
        let applied = pipeline.wait_applied(identity, 35).await;
        assert_exactly_once_in_order(&applied, &posted[identity]);
    }
}

/// The owners of the stream's unfinished shards in the lease table.
async fn lease_owners(stack: &Stack) -> Vec<String> {
    let out = stack
        .dynamodb()
        .scan()
        .table_name(&stack.names.lease_table)
        .consistent_read(true)
        .send()
        .await
        .expect("scan the lease table");
    out.items()
        .iter()
        .filter(|row| {
            row.get("checkpoint")
                != Some(&aws_sdk_dynamodb::types::AttributeValue::S(
                    "SHARD_END".to_owned(),
                ))
        })
        .filter_map(|row| match row.get("lease_owner") {
            Some(aws_sdk_dynamodb::types::AttributeValue::S(owner)) => Some(owner.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn three_relays_share_the_stream_and_another_takes_over_when_the_lease_holder_is_killed() {
    const LEASE_SECS: u64 = 3;
    let pipeline = Pipeline::start_without_relay(5).await;
    if pipeline.backend.is_mysql() {
        // Leases are the stream relay's; the MySQL mode's counterpart is
        // the leader lock, tested below.
        return;
    }
    let mut relays: HashMap<String, Service> = (0..3)
        .map(|i| {
            let worker = format!("relay-{i}");
            let relay = pipeline.start_relay(&[
                ("OBT_WORKER_ID", worker.clone()),
                ("OBT_LEASE_DURATION_SECS", LEASE_SECS.to_string()),
            ]);
            (worker, relay)
        })
        .collect();
    let identities = ["HA-A", "HA-B", "HA-C", "HA-D"];
    let mut posted: HashMap<&str, Vec<Value>> = HashMap::new();

    // Load runs throughout; the holder of the lease is SIGKILLed once
    // events flow, and the test measures how long the shard goes unowned.
    let load = post_rounds(&pipeline, &identities, 1..=40, &mut posted);
    let failover = async {
        pipeline.wait_applied("HA-A", 2).await;
        let holder = eventually("one relay to hold the lease", DEADLINE, || async {
            match lease_owners(pipeline.stack()).await.as_slice() {
                [owner] => Ok(owner.clone()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let killed_at = std::time::Instant::now();
        relays
            .remove(&holder)
            .expect("the holder is one of ours")
            .kill()
            .await;
        let successor = eventually("another relay to take the lease", DEADLINE, || async {
            match lease_owners(pipeline.stack()).await.as_slice() {
                [owner] if *owner != holder => Ok(owner.clone()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let took = killed_at.elapsed();
        eprintln!("{holder} killed; {successor} took its lease after {took:?}");
        assert!(relays.contains_key(&successor));
        took
    };
    let ((), took) = tokio::join!(load, failover);
    assert!(
        took < Duration::from_secs(3 * LEASE_SECS),
        "the lease expires after {LEASE_SECS} s without heartbeats; the takeover took {took:?}"
    );
    for identity in identities {
        let applied = pipeline.wait_applied(identity, 40).await;
        assert_exactly_once_in_order(&applied, &posted[identity]);
    }
}

#[tokio::test]
async fn two_mysql_relays_under_load_and_the_leader_killed_deliver_exactly_once_in_order() {
    let pipeline = Pipeline::start_without_relay(5).await;
    if !pipeline.backend.is_mysql() {
        // The leader lock is the MySQL mode's; the stream's leases are
        // tested above.
        return;
    }
    let identities = ["LEAD-A", "LEAD-B", "LEAD-C"];
    let mut posted: HashMap<&str, Vec<Value>> = HashMap::new();
    let leader = pipeline.start_relay(&[]);
    post_rounds(&pipeline, &identities, 1..=5, &mut posted).await;
    pipeline.wait_applied("LEAD-A", 5).await;
    // The first relay leads (it published); the second stands by.
    let standby = pipeline.start_relay(&[]);
    let load = post_rounds(&pipeline, &identities, 6..=30, &mut posted);
    let kill = async {
        pipeline.wait_applied("LEAD-B", 8).await;
        leader.kill().await;
    };
    tokio::join!(load, kill);
    for identity in identities {
        let applied = pipeline.wait_applied(identity, 30).await;
        assert_exactly_once_in_order(&applied, &posted[identity]);
    }
    let status = standby.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_message_sent_twice_by_hand_is_applied_once() {
    let pipeline = Pipeline::start(5).await;
    let first = pipeline.post("DUP-1", "10.00").await;
    pipeline.wait_applied("DUP-1", 1).await;

    // The same event again, as a redelivery from a second relay would be,
    // with a new deduplication id so that SQS delivers it.
    let duplicate = Envelope {
        event_id: first["event_id"]
            .as_str()
            .expect("event_id")
            .parse::<EventId>()
            .expect("a uuid"),
        event_type: EventType::SpendingRecorded,
        schema_version: SCHEMA_VERSION,
        identity: Identity::parse("DUP-1").expect("valid"),
        seq: 1,
        occurred_at: time::OffsetDateTime::parse(
            first["created_at"].as_str().expect("created_at"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339"),
        data: obt_contract::SpendingRecorded {
            name: PersonName::parse("Martin").expect("valid"),
            surname: PersonName::parse("Robi").expect("valid"),
            amount: obt_contract::Amount::parse("10.00").expect("valid"),
        },
        trace: None,
    };
    obt_testkit::send_raw(
        pipeline.stack(),
        "DUP-1",
        "a-different-dedup-id",
        &duplicate.encode(),
    )
    .await;
    // FIFO: once the next event is applied, the duplicate before it was
    // handled too.
    let second = pipeline.post("DUP-1", "5.00").await;
    let applied = pipeline.wait_applied("DUP-1", 2).await;
    assert_exactly_once_in_order(&applied, &[first, second]);
    assert_eq!(
        applied.total,
        Decimal::from_str("15.00").expect("a decimal")
    );
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dead_letter_queue_while_other_identities_flow() {
    let pipeline = Pipeline::start(2).await;
    let poison = json!({"not": "an envelope"}).to_string();
    obt_testkit::send_raw(pipeline.stack(), "POISON", "poison-1", &poison).await;
    let posted = vec![
        pipeline.post("CLEAN-1", "1.50").await,
        pipeline.post("CLEAN-1", "2.50").await,
    ];
    let applied = pipeline.wait_applied("CLEAN-1", 2).await;
    assert_exactly_once_in_order(&applied, &posted);

    let (group, body) = obt_testkit::receive_dead_letter(pipeline.stack(), DEADLINE).await;
    assert_eq!((group.as_str(), body.as_str()), ("POISON", poison.as_str()));
    assert!(
        pipeline.applied("POISON").await.is_none(),
        "nothing applied for the poison group"
    );
}

#[tokio::test]
async fn a_rejected_post_publishes_nothing() {
    let pipeline = Pipeline::start(5).await;
    let rejected = pipeline
        .http
        .post(format!("{}/api/v1/spending", pipeline.api_url))
        .header("content-type", "application/json")
        .body(r#"{"identity":"REJ-1","name":"Martin","surname":"Robi","amount":-5}"#)
        .send()
        .await
        .expect("POST reaches the api");
    assert_eq!(rejected.status(), 422);
    // The stream is read in order: once a later write has gone all the way
    // through, an earlier one would have too.
    let accepted = pipeline.post("REJ-2", "5.00").await;
    let applied = pipeline.wait_applied("REJ-2", 1).await;
    assert_exactly_once_in_order(&applied, &[accepted]);
    assert!(
        pipeline.applied("REJ-1").await.is_none(),
        "nothing of the rejected POST arrived"
    );
}
