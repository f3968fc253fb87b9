//! Invariant 6 end to end, as users run it: the real `api`, `stream-relay`
//! and `consumer` binaries, and the operator's `obt-admin`, in the storage
//! mode under test (`OBT_TEST_STORAGE`). SQS refuses one identity's event
//! for good (the testkit's proxy answers that entry with a sender fault):
//! that identity alone is parked; twenty others, posting before, during and
//! after, all reach the consumer exactly once, in order, without waiting;
//! once SQS takes the event, `obt-admin parked retry` lets the parked
//! identity's events go, in order.

use std::process::Output;
use std::time::Duration;

use obt_testkit::mysql::Backend;
use obt_testkit::sqs_proxy::SqsProxy;
use obt_testkit::{Service, eventually, free_port};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

/// The seq SQS refuses of the victim's events.
const REFUSED_SEQ: u64 = 3;

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

struct Deployment {
    backend: Backend,
    api_url: String,
    http: reqwest::Client,
    _services: Vec<Service>,
}

impl Deployment {
    async fn post(&self, identity: &str, cents: u64) -> Value {
        let body = serde_json::json!({
            "identity": identity,
            "name": "Zoë",
            "surname": "Robi",
            "amount": format!("{}.{:02}", cents / 100, cents % 100),
        });
        let response = self
            .http
            .post(format!("{}/api/v1/spending", self.api_url))
            .json(&body)
            .send()
            .await
            .expect("POST reaches the api");
        assert_eq!(response.status(), 201, "POST {identity}");
        response.json().await.expect("a JSON body")
    }

    /// The seqs the consumer applied for `identity`, by `consumer-show`.
    async fn applied(&self, identity: &str) -> Vec<u64> {
        let output = tokio::process::Command::new(obt_testkit::bin_path("consumer-show"))
            .arg(identity)
            .envs(env(&self.backend, "consumer"))
            .output()
            .await
            .expect("run consumer-show");
        match output.status.code() {
            Some(0) => {
                let json: Value =
                    serde_json::from_slice(&output.stdout).expect("consumer-show prints JSON");
                json["spendings"]
                    .as_array()
                    .expect("spendings")
                    .iter()
                    .map(|s| s["seq"].as_u64().expect("a seq"))
                    .collect()
            }
            Some(1) => Vec::new(),
            _ => panic!(
                "consumer-show failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    async fn wait_applied(&self, identity: &str, count: u64) {
        let expected: Vec<u64> = (1..=count).collect();
        eventually(
            &format!("{identity}'s {count} events applied in order"),
            DEADLINE,
            || async {
                let applied = self.applied(identity).await;
                if applied == expected {
                    Ok(())
                } else {
                    Err(format!("{applied:?}"))
                }
            },
        )
        .await;
    }

    async fn admin(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(obt_testkit::bin_path("obt-admin"))
            .args(args)
            .envs(env(&self.backend, "stream-relay"))
            .output()
            .await
            .expect("run obt-admin")
    }
}

async fn start(proxy: &SqsProxy) -> Deployment {
    let backend = Backend::create(5).await;
    let port = free_port();
    let mut api_env = env(&backend, "api");
    api_env.push(("OBT_LISTEN", format!("127.0.0.1:{port}")));
    let mut relay_env = env(&backend, "stream-relay");
    relay_env.push(("AWS_ENDPOINT_URL_SQS", proxy.url.clone()));
    let services = vec![
        Service::start("api", &api_env),
        Service::start("stream-relay", &relay_env),
        Service::start("consumer", &env(&backend, "consumer")),
    ];
    let deployment = Deployment {
        backend,
        api_url: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
        _services: services,
    };
    obt_testkit::api_ready(&deployment.http, &deployment.api_url, DEADLINE).await;
    deployment
}

#[tokio::test]
async fn an_event_sqs_refuses_for_good_holds_back_its_identity_only_until_the_operator_retries() {
    let victim = obt_testkit::identity("PK").to_string();
    let group = victim.clone();
    let proxy = SqsProxy::start(move |entry, _| {
        let body: Value = serde_json::from_str(entry["MessageBody"].as_str().unwrap_or_default())
            .unwrap_or_default();
        entry["MessageGroupId"] == group.as_str() && body["seq"] == REFUSED_SEQ
    })
    .await;
    proxy.refuse_for_good();
    let deployment = start(&proxy).await;
    let others: Vec<String> = (0..20)
        .map(|i| obt_testkit::identity(&format!("PO{i}")).to_string())
        .collect();

    // Before: everyone posts; the victim's third event is refused.
    for round in 1..=2 {
        for identity in &others {
            deployment.post(identity, round * 100).await;
        }
    }
    for cents in 1..=4 {
        deployment.post(&victim, cents * 100).await;
    }
    deployment.wait_applied(&victim, REFUSED_SEQ - 1).await;
    let listed = eventually("the victim listed as parked", DEADLINE, || async {
        let output = deployment.admin(&["parked", "list", "--json"]).await;
        let listed: Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&output.stderr)))?;
        let listed = listed.as_array().cloned().unwrap_or_default();
        if listed.len() == 1 {
            Ok(listed)
        } else {
            Err(format!("{listed:?}"))
        }
    })
    .await;
    assert_eq!(listed[0]["identity"], victim.as_str());
    assert_eq!(listed[0]["cause"], "sqs_refused");
    assert_eq!(listed[0]["seq"], REFUSED_SEQ);

    // During and after: the others keep posting and flow without waiting.
    for round in 3..=4 {
        for identity in &others {
            deployment.post(identity, round * 100).await;
        }
    }
    deployment.post(&victim, 500).await;
    for identity in &others {
        deployment.wait_applied(identity, 4).await;
    }
    assert_eq!(
        deployment.applied(&victim).await,
        (1..REFUSED_SEQ).collect::<Vec<u64>>(),
        "nothing of the victim past the refused event"
    );

    // SQS still refuses it: the retry says so, and exits 1.
    let output = deployment
        .admin(&["parked", "retry", &victim, "--wait-secs", "30"])
        .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("parked again"),
        "{output:?}"
    );

    // SQS takes it now: the retry delivers what waited, in order.
    proxy.heal();
    let output = deployment
        .admin(&["parked", "retry", &victim, "--wait-secs", "60"])
        .await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    deployment.wait_applied(&victim, 5).await;
    let output = deployment.admin(&["parked", "list"]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "No identity is parked.\n"
    );
}
