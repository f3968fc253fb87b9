//! One trace id from the POST to the consumer: the caller's `traceparent`
//! reaches the queue as the message's `traceparent` attribute, and the
//! consumer's log lines for the event carry its trace id; with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, the api's and the consumer's spans of
//! that trace are exported over OTLP. The real binaries, in both storage
//! modes (`OBT_TEST_STORAGE`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use obt_testkit::dynamo_proxy::{DynamoProxy, hook};
use obt_testkit::mysql::Backend;
use obt_testkit::otlp::OtlpReceiver;
use obt_testkit::{Service, eventually, free_port};

const DEADLINE: Duration = Duration::from_secs(60);
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

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

/// The event's message, received from the queue with every message
/// attribute and the `AWSTraceHeader` system attribute, then made visible
/// again for the consumer.
async fn message_at_the_queue(backend: &Backend) -> Message {
    let stack = backend.stack();
    let message = eventually("the event at the queue", DEADLINE, || async {
        let out = stack
            .sqs()
            .receive_message()
            .queue_url(&stack.queue_url)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        out.messages
            .unwrap_or_default()
            .into_iter()
            .next()
            .ok_or_else(|| "no message yet".to_owned())
    })
    .await;
    stack
        .sqs()
        .change_message_visibility()
        .queue_url(&stack.queue_url)
        .receipt_handle(message.receipt_handle().expect("a receipt handle"))
        .visibility_timeout(0)
        .send()
        .await
        .expect("make the message visible again");
    message
}

/// Whether an OTLP export body holds a span of `service` in the trace: the
/// protobuf carries the trace id as its 16 raw bytes and the resource's
/// `service.name` as text.
fn exported(body: &[u8], service: &str) -> bool {
    let trace_id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE_ID[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    // KeyValue { key: "service.name", value: AnyValue { string_value } }.
    let len = u8::try_from(service.len()).expect("a short name");
    let mut resource = b"\x0a\x0cservice.name\x12".to_vec();
    resource.extend([len + 2, 0x0a, len]);
    resource.extend(service.as_bytes());
    let holds = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    holds(&trace_id) && holds(&resource)
}

#[tokio::test]
async fn the_callers_trace_id_reaches_the_queue_and_the_consumers_log_lines_and_is_exported() {
    let backend = Backend::create(5).await;
    let collector = OtlpReceiver::start().await;
    let otlp = || ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.clone());
    let port = free_port();
    let api = Service::start(
        "api",
        &env(
            &backend,
            "api",
            &[
                ("OBT_LISTEN", format!("127.0.0.1:{port}")),
                // Spans below the log level are neither logged nor exported.
                ("RUST_LOG", "info".to_owned()),
                otlp(),
            ],
        ),
    );
    let _relay = Service::start("stream-relay", &env(&backend, "stream-relay", &[]));
    let http = reqwest::Client::new();
    let api_url = format!("http://127.0.0.1:{port}");
    obt_testkit::api_ready(&http, &api_url, DEADLINE).await;

    let identity = obt_testkit::identity("TRACE");
    let response = http
        .post(format!("{api_url}/api/v1/spending"))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .body(format!(
            r#"{{"identity":"{identity}","name":"Martin","surname":"Robi","amount":"7.00"}}"#
        ))
        .send()
        .await
        .expect("POST reaches the api");
    assert_eq!(response.status(), 201);
    let recorded: serde_json::Value = response.json().await.expect("a JSON body");
    let event_id = recorded["event_id"]
        .as_str()
        .expect("an event id")
        .to_owned();

    // At the queue, before any consumer runs.
    let message = message_at_the_queue(&backend).await;
    let traceparent = message
        .message_attributes()
        .and_then(|a| a.get("traceparent"))
        .and_then(|a| a.string_value())
        .expect("the traceparent message attribute");
    assert!(
        traceparent.starts_with(&format!("00-{TRACE_ID}-")) && traceparent.ends_with("-01"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains(CALLER_SPAN),
        "the parent is the api's span"
    );
    // fauxqs drops the AWSTraceHeader system attribute (see the testkit's
    // SQS model, where the relay's header is checked); SQS returns it.
    if let Some(xray) = message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
    {
        assert!(
            xray.starts_with(&format!("Root=1-{}-{}", &TRACE_ID[..8], &TRACE_ID[8..])),
            "{xray}"
        );
    }

    // In NoSQL mode the consumer's DynamoDB is behind a proxy that never
    // answers the write of its last-applied marker (the only UpdateItem
    // here), which runs in a task of its own after the apply: still in
    // flight at shutdown, it must not hold back the message's span.
    let marker_writes = Arc::new(AtomicUsize::new(0));
    let held = {
        let seen = Arc::clone(&marker_writes);
        DynamoProxy::start(hook(move |operation| {
            let marker = operation == "UpdateItem";
            if marker {
                seen.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                if marker {
                    std::future::pending::<()>().await;
                }
                None
            }
        }))
        .await
    };
    let mut consumer_env = vec![
        ("OBT_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
        otlp(),
    ];
    if !backend.is_mysql() {
        consumer_env.push(("AWS_ENDPOINT_URL_DYNAMODB", held.url.clone()));
    }

    // The consumer, JSON logs to a file.
    let log = std::env::temp_dir().join(format!("{}.log", obt_testkit::unique("consumer")));
    let consumer =
        Service::start_logging_to("consumer", &env(&backend, "consumer", &consumer_env), &log);
    let applied = eventually(
        "the consumer to log the applied event",
        DEADLINE,
        || async {
            let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
            text.lines()
                .find(|line| line.contains(&event_id) && line.contains("\"applied\""))
                .map(str::to_owned)
                .ok_or_else(|| "no applied line yet".to_owned())
        },
    )
    .await;
    let line: serde_json::Value = serde_json::from_str(&applied).expect("a JSON log line");
    assert_eq!(line["span"]["trace_id"], TRACE_ID, "{applied}");
    assert_eq!(line["span"]["identity"], identity.as_str(), "{applied}");

    if !backend.is_mysql() {
        eventually("the marker write, held", DEADLINE, || async {
            (marker_writes.load(Ordering::SeqCst) > 0)
                .then_some(())
                .ok_or_else(|| "no UpdateItem yet".to_owned())
        })
        .await;
    }

    // Exported at shutdown: the api's request and the consumer's message,
    // in the caller's trace.
    assert!(consumer.terminate(DEADLINE).await.success());
    assert!(api.terminate(DEADLINE).await.success());
    let exports = collector.received();
    assert!(
        exports.iter().all(|e| e.path == "/v1/traces"),
        "{:?}",
        exports.iter().map(|e| &e.path).collect::<Vec<_>>()
    );
    for service in ["api", "consumer"] {
        assert!(
            exports.iter().any(|e| exported(&e.body, service)),
            "no span of {service} in the trace among {} exports: {:?}",
            exports.len(),
            exports
                .iter()
                .map(|e| String::from_utf8_lossy(&e.body).into_owned())
                .collect::<Vec<_>>()
        );
    }
    let _ = std::fs::remove_file(&log);
}
