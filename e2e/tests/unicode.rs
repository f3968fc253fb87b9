//! Every name the api accepts reaches the consumer unchanged: accents, CJK
//! and characters above U+FFFF (emoji), through the real `api`,
//! `stream-relay` and `consumer` binaries, in the storage mode under test
//! (`OBT_TEST_STORAGE`). fauxqs 1.9.2 refuses a message body holding a
//! character above U+FFFF, as SQS refuses U+FFFE and U+FFFF: the relay must
//! publish bodies that no queue can refuse for their characters
//! (docs/CONTRACT.md).

use std::time::Duration;

use obt_testkit::mysql::Backend;
use obt_testkit::{Service, eventually, free_port};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

/// The api, the relay and the consumer on one fresh backend.
struct Pipeline {
    backend: Backend,
    api_url: String,
    _services: Vec<Service>,
    http: reqwest::Client,
}

/// A service's environment, with the fast idle polling of pipeline.rs.
fn env(backend: &Backend, service: &str) -> Vec<(&'static str, String)> {
    let mut env = backend.env(service);
    env.extend([
        ("OBT_IDLE_POLL_MS", "50".to_owned()),
        ("OBT_POLL_MAX_IDLE_MS", "50".to_owned()),
        ("OBT_DISCOVER_INTERVAL_SECS", "1".to_owned()),
        ("OBT_WAIT_TIME_SECS", "1".to_owned()),
        ("RUST_BACKTRACE", "0".to_owned()),
    ]);
    env
}

impl Pipeline {
    async fn start() -> Self {
        let backend = Backend::create(5).await;
        let port = free_port();
        let mut api_env = env(&backend, "api");
        api_env.push(("OBT_LISTEN", format!("127.0.0.1:{port}")));
        let services = vec![
            Service::start("api", &api_env),
            Service::start("stream-relay", &env(&backend, "stream-relay")),
            Service::start("consumer", &env(&backend, "consumer")),
        ];
        let pipeline = Self {
            backend,
            api_url: format!("http://127.0.0.1:{port}"),
            _services: services,
            http: reqwest::Client::new(),
        };
        obt_testkit::api_ready(&pipeline.http, &pipeline.api_url, DEADLINE).await;
        pipeline
    }

    /// POSTs a spending (serde_json writes the names as UTF-8, unescaped,
    /// as most clients do) and returns the 201's body.
    async fn post(&self, identity: &str, name: &str, surname: &str, amount: &str) -> Value {
        let body =
            json!({"identity": identity, "name": name, "surname": surname, "amount": amount});
        let response = self
            .http
            .post(format!("{}/api/v1/spending", self.api_url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST reaches the api");
        let status = response.status();
        let text = response.text().await.expect("a body");
        assert_eq!(status, 201, "POST {name:?} {surname:?}: {text}");
        serde_json::from_str(&text).expect("a JSON body")
    }

    /// What `consumer-show` prints of `identity` once `count` of its events
    /// were applied.
    async fn wait_applied(&self, identity: &str, count: u64) -> Value {
        eventually(
            &format!("{count} events of {identity} at the consumer"),
            DEADLINE,
            || async {
                let output = tokio::process::Command::new(obt_testkit::bin_path("consumer-show"))
                    .arg(identity)
                    .envs(env(&self.backend, "consumer"))
                    .output()
                    .await
                    .map_err(|e| format!("run consumer-show: {e}"))?;
                if output.status.code() != Some(0) {
                    return Err(String::from_utf8_lossy(&output.stderr).into_owned());
                }
                let shown: Value = serde_json::from_slice(&output.stdout)
                    .map_err(|e| format!("consumer-show printed no JSON: {e}"))?;
                match shown["count"].as_u64() {
                    Some(applied) if applied >= count => Ok(shown),
                    applied => Err(format!("{applied:?} applied")),
                }
            },
        )
        .await
    }
}

#[tokio::test]
async fn names_with_accents_cjk_and_emoji_reach_the_consumer_unchanged() {
    let pipeline = Pipeline::start().await;
    let identity = "UNICODE-1";
    // Two bytes (ë, Ñ, ú), three (李, 小, 龙) and four (😀, 𝄞) in UTF-8; the
    // last two are above U+FFFF.
    let spendings = [
        ("Zoë 李 😀", "Ñúñez", "12.34"),
        ("李小龙", "Ñúñez 𝄞", "1.00"),
    ];
    let mut posted = Vec::new();
    for (name, surname, amount) in spendings {
        posted.push(pipeline.post(identity, name, surname, amount).await);
    }

    let shown = pipeline.wait_applied(identity, 2).await;

    assert_eq!(shown["count"], 2, "{shown:#}");
    assert_eq!(shown["total"], "13.34");
    let applied = shown["spendings"].as_array().expect("spendings");
    assert_eq!(applied.len(), 2, "{shown:#}");
    for ((spending, (name, surname, amount)), response) in
        applied.iter().zip(spendings).zip(&posted)
    {
        assert_eq!(spending["event_id"], response["event_id"], "{shown:#}");
        assert_eq!(spending["seq"], response["seq"]);
        assert_eq!(spending["name"], name, "{shown:#}");
        assert_eq!(spending["surname"], surname, "{shown:#}");
        assert_eq!(spending["amount"], amount);
    }
    // The identity carries the names of its last spending.
    assert_eq!(shown["name"], "李小龙");
    assert_eq!(shown["surname"], "Ñúñez 𝄞");
}
