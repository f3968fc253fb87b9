//! The relay hands an event's trace context on at the queue: the
//! `traceparent` message attribute and the `AWSTraceHeader` system
//! attribute. Checked against the testkit's SQS model, which keeps the
//! system attribute as SQS does (fauxqs drops it; the e2e tests check the
//! message attribute there).

use obt_contract::{Envelope, TraceContext};
use obt_stream_relay::publisher::{Publisher, TRACEPARENT_ATTRIBUTE};
use obt_testkit::sqs_model::SqsModel;
use obt_testkit::unique;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn a_published_event_carries_its_trace_as_traceparent_and_aws_trace_header() {
    let model = SqsModel::start().await;
    let id = unique("tr");
    let names = obt_migrate::Names {
        queue: format!("{id}-events.fifo"),
        dead_letter_queue: format!("{id}-dlq.fifo"),
        ..obt_migrate::Names::default()
    };
    let report = model.create_queues(&names, 5, 30).await;
    let publisher = Publisher::new(model.client().await, report.queue_url);
    let identity = obt_testkit::identity("TR");
    let traced: Envelope = obt_testkit::event(&identity, 1, "1.00")
        .with_trace(TraceContext::from_headers(Some(TRACEPARENT), None));
    let untraced = obt_testkit::event(&identity, 2, "2.00");

    let report = publisher.publish(&[traced, untraced]).await;
    assert!(report.not_accepted().is_empty(), "{report:?}");

    let messages = model.messages(&names.queue);
    assert_eq!(messages.len(), 2);
    let attribute = messages[0]
        .attributes
        .get(TRACEPARENT_ATTRIBUTE)
        .expect("the traceparent attribute");
    assert_eq!(attribute.data_type, "String");
    assert_eq!(attribute.string_value.as_deref(), Some(TRACEPARENT));
    assert_eq!(
        messages[0].trace_header.as_deref(),
        Some("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1")
    );
    assert!(messages[1].attributes.is_empty(), "an event without trace");
    assert_eq!(messages[1].trace_header, None);
}
