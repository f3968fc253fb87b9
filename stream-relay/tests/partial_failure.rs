//! `SendMessageBatch` partial failures, made real: a proxy between the
//! relay and fauxqs takes one entry out of a batch before forwarding it and
//! reports that entry as failed, exactly as SQS does when it accepts some
//! entries of a batch and not others. The relay must send it again, lose
//! nothing and keep each identity's order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use obt_contract::{Envelope, Identity};
use obt_stream_relay::{Change, Relay, outbox::OutboxTable, publisher::Publisher};
use obt_testkit::Stack;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(30);

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    /// Entries failed so far; the proxy fails `to_fail` of them, one per batch.
    failed: AtomicUsize,
    to_fail: usize,
    /// Which entry of a batch (by position) is failed.
    victim: usize,
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("read the request");
    let mut document: Value = serde_json::from_slice(&body).expect("the SDK speaks JSON to SQS");

    let mut removed: Option<Value> = None;
    if target.ends_with(".SendMessageBatch") {
        let entries = document["Entries"].as_array_mut().expect("Entries");
        if entries.len() > proxy.victim && proxy.failed.load(Ordering::SeqCst) < proxy.to_fail {
            proxy.failed.fetch_add(1, Ordering::SeqCst);
            removed = Some(entries.remove(proxy.victim));
        }
    }

    let mut upstream = proxy
        .http
        .post(format!("{}{}", proxy.upstream, parts.uri.path()))
        .body(document.to_string());
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    let answer = upstream.send().await.expect("fauxqs answers");
    let status = answer.status();
    let headers = answer.headers().clone();
    let mut answer: Value = answer.json().await.expect("fauxqs answers JSON");
    if let Some(entry) = removed {
        let failed = json!({
            "Id": entry["Id"],
            "SenderFault": false,
            "Code": "InternalError",
            "Message": "injected by the test proxy",
        });
        match answer["Failed"].as_array_mut() {
            Some(list) => list.push(failed),
            None => answer["Failed"] = json!([failed]),
        }
    }
    let mut response = Response::builder().status(status);
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from(answer.to_string()))
        .expect("a response")
}

async fn start_proxy(to_fail: usize, victim: usize) -> (String, Arc<Proxy>) {
    let proxy = Arc::new(Proxy {
        upstream: std::env::var("AWS_ENDPOINT_URL_SQS")
            .expect("AWS_ENDPOINT_URL_SQS points at fauxqs"),
        http: reqwest::Client::new(),
        failed: AtomicUsize::new(0),
        to_fail,
        victim,
    });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let router = Router::new().fallback(forward).with_state(proxy.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (url, proxy)
}

fn change(event: &Envelope) -> Change {
    Change {
        sequence_number: event.seq.to_string(),
        identity: event.identity.to_string(),
        adds_events: true,
        pending: vec![event.clone()],
    }
}

#[tokio::test]
async fn entries_sqs_did_not_accept_are_sent_again_in_order_and_nothing_is_lost() {
    let stack = Stack::create(3).await;
    let identities: Vec<Identity> = (0..4)
        .map(|i| obt_testkit::identity(&format!("PF{i}")))
        .collect();
    // Two events per identity: the plan sends every identity's first event
    // in one batch and the second events in the next.
    let events: Vec<Envelope> = (1..=2)
        .flat_map(|seq| {
            identities
                .iter()
                .map(move |id| obt_testkit::event(id, seq, "1.00"))
        })
        .collect();
    let (proxy_url, proxy) = start_proxy(2, 1).await;
    let sqs_config = aws_sdk_sqs::config::Builder::from(&stack.config)
        .endpoint_url(&proxy_url)
        .build();
    let relay = Relay::new(
        Publisher::new(
            aws_sdk_sqs::Client::from_conf(sqs_config),
            stack.queue_url.clone(),
        ),
        OutboxTable::new(stack.dynamodb(), stack.names.table.clone()),
    );
    // The outbox items do not exist: the relay learns "nothing published
    // yet" and its acknowledgements leave the missing items alone.
    let changes: Vec<Change> = events.iter().map(change).collect();
    let summary = relay
        .handle(&changes)
        .await
        .expect("the relay retries the failed entries");
    assert_eq!(summary.published, 8);
    assert_eq!(
        proxy.failed.load(Ordering::SeqCst),
        2,
        "the proxy did fail two entries"
    );

    let received: Vec<Envelope> = obt_testkit::drain(&stack, &stack.queue_url, 8, DEADLINE)
        .await
        .iter()
        .map(|body| Envelope::decode(body).expect("an envelope"))
        .collect();
    for identity in &identities {
        let seqs: Vec<u64> = received
            .iter()
            .filter(|e| &e.identity == identity)
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2], "{identity}: each event once, in order");
    }
    assert!(obt_testkit::receives_nothing(&stack, &stack.queue_url).await);
}
