//! The SQS model of the testkit, through the real SDK client: it hands out
//! messages as SQS documents (several of a group per receive, receive
//! counts, redrive at maxReceiveCount), and where that differs from fauxqs
//! the difference is pinned down against fauxqs itself.

use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use obt_testkit::sqs_model::{GroupStrategy, SqsModel};
use obt_testkit::{eventually, unique};

/// The model with the project's queues, made by the project's migration.
struct Fixture {
    model: SqsModel,
    sqs: Client,
    names: obt_migrate::Names,
    queue_url: String,
    dead_letter_queue_url: String,
}

async fn fixture(max_receive_count: u32) -> Fixture {
    let model = SqsModel::start().await;
    let id = unique("m");
    let names = obt_migrate::Names {
        queue: format!("{id}-events.fifo"),
        dead_letter_queue: format!("{id}-dlq.fifo"),
        ..obt_migrate::Names::default()
    };
    let report = model.create_queues(&names, max_receive_count, 30).await;
    let sqs = model.client().await;
    Fixture {
        model,
        sqs,
        names,
        queue_url: report.queue_url,
        dead_letter_queue_url: report.dead_letter_queue_url,
    }
}

async fn send(sqs: &Client, url: &str, group: &str, body: &str) {
    sqs.send_message()
        .queue_url(url)
        .message_group_id(group)
        .message_deduplication_id(body)
        .message_body(body)
        .send()
        .await
        .expect("SendMessage");
}

/// One receive of up to `max` messages, waiting at most `wait` seconds,
/// with every system attribute.
async fn receive(sqs: &Client, url: &str, max: i32, wait: i32) -> Vec<Message> {
    sqs.receive_message()
        .queue_url(url)
        .max_number_of_messages(max)
        .wait_time_seconds(wait)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default()
}

fn bodies(messages: &[Message]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m.body().unwrap_or_default())
        .collect()
}

fn attribute<'a>(message: &'a Message, name: &MessageSystemAttributeName) -> &'a str {
    message
        .attributes()
        .and_then(|a| a.get(name))
        .map_or("", String::as_str)
}

fn receive_counts(messages: &[Message]) -> Vec<&str> {
    let name = MessageSystemAttributeName::ApproximateReceiveCount;
    messages.iter().map(|m| attribute(m, &name)).collect()
}

async fn release(sqs: &Client, url: &str, messages: &[Message]) {
    for message in messages {
        sqs.change_message_visibility()
            .queue_url(url)
            .receipt_handle(message.receipt_handle().unwrap_or_default())
            .visibility_timeout(0)
            .send()
            .await
            .expect("ChangeMessageVisibility 0");
    }
}

async fn delete(sqs: &Client, url: &str, message: &Message) {
    sqs.delete_message()
        .queue_url(url)
        .receipt_handle(message.receipt_handle().unwrap_or_default())
        .send()
        .await
        .expect("DeleteMessage");
}

#[tokio::test]
async fn one_receive_hands_out_a_whole_group_in_order_and_raises_its_receive_counts_together() {
    let f = fixture(5).await;
    for (group, body) in [("g", "g1"), ("h", "h1"), ("g", "g2"), ("g", "g3")] {
        send(&f.sqs, &f.queue_url, group, body).await;
    }
    let first = receive(&f.sqs, &f.queue_url, 10, 0).await;
    assert_eq!(
        bodies(&first),
        ["g1", "g2", "g3", "h1"],
        "one group first, then the next"
    );
    assert_eq!(receive_counts(&first), ["1", "1", "1", "1"]);
    let group = MessageSystemAttributeName::MessageGroupId;
    assert_eq!(attribute(&first[3], &group), "h");

    release(&f.sqs, &f.queue_url, &first).await;
    let again = receive(&f.sqs, &f.queue_url, 10, 0).await;
    assert_eq!(bodies(&again), ["g1", "g2", "g3", "h1"]);
    assert_eq!(
        receive_counts(&again),
        ["2", "2", "2", "2"],
        "handed out together, counted together"
    );

    f.model.set_strategy(GroupStrategy::Spread);
    release(&f.sqs, &f.queue_url, &again).await;
    let spread = receive(&f.sqs, &f.queue_url, 10, 0).await;
    assert_eq!(
        bodies(&spread),
        ["g1", "h1", "g2", "g3"],
        "the other strategy"
    );
}

#[tokio::test]
async fn a_group_in_flight_holds_back_its_later_messages_while_other_groups_flow() {
    let f = fixture(5).await;
    send(&f.sqs, &f.queue_url, "g", "g1").await;
    send(&f.sqs, &f.queue_url, "g", "g2").await;
    let first = receive(&f.sqs, &f.queue_url, 1, 0).await;
    assert_eq!(bodies(&first), ["g1"]);
    assert!(
        receive(&f.sqs, &f.queue_url, 10, 0).await.is_empty(),
        "g2 waits for g1"
    );

    send(&f.sqs, &f.queue_url, "h", "h1").await;
    let other = receive(&f.sqs, &f.queue_url, 10, 0).await;
    assert_eq!(bodies(&other), ["h1"], "another group is not held back");

    delete(&f.sqs, &f.queue_url, &first[0]).await;
    let next = receive(&f.sqs, &f.queue_url, 10, 0).await;
    assert_eq!(bodies(&next), ["g2"]);
}

#[tokio::test]
async fn visibility_zero_releases_a_group_once_none_of_its_messages_is_in_flight() {
    let f = fixture(5).await;
    for body in ["g1", "g2", "g3"] {
        send(&f.sqs, &f.queue_url, "g", body).await;
    }
    let got = receive(&f.sqs, &f.queue_url, 2, 0).await;
    assert_eq!(bodies(&got), ["g1", "g2"]);
    release(&f.sqs, &f.queue_url, &got[..1]).await;
    assert!(
        receive(&f.sqs, &f.queue_url, 10, 0).await.is_empty(),
        "g2 is still in flight: the group stays held, g3 never passes g1"
    );
    release(&f.sqs, &f.queue_url, &got[1..]).await;
    let again = receive(&f.sqs, &f.queue_url, 10, 0).await;
    assert_eq!(bodies(&again), ["g1", "g2", "g3"]);
    assert_eq!(receive_counts(&again), ["2", "2", "1"]);
}

#[tokio::test]
async fn a_visibility_timeout_that_runs_out_hands_the_message_out_again() {
    let f = fixture(5).await;
    send(&f.sqs, &f.queue_url, "g", "g1").await;
    let first = f
        .sqs
        .receive_message()
        .queue_url(&f.queue_url)
        .visibility_timeout(1)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default();
    assert_eq!(bodies(&first), ["g1"]);
    let started = Instant::now();
    let again = receive(&f.sqs, &f.queue_url, 10, 10).await;
    assert_eq!(bodies(&again), ["g1"]);
    assert_eq!(receive_counts(&again), ["2"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the long poll returned when the timeout ran out, not at its end: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_outdated_receipt_handle_is_refused_and_leaves_the_message_alone() {
    let f = fixture(5).await;
    send(&f.sqs, &f.queue_url, "g", "g1").await;
    let first = receive(&f.sqs, &f.queue_url, 1, 0).await;
    release(&f.sqs, &f.queue_url, &first).await;
    let second = receive(&f.sqs, &f.queue_url, 1, 0).await;
    assert_ne!(
        first[0].receipt_handle(),
        second[0].receipt_handle(),
        "a new handle per receive"
    );

    let stale = f
        .sqs
        .delete_message()
        .queue_url(&f.queue_url)
        .receipt_handle(first[0].receipt_handle().unwrap_or_default())
        .send()
        .await
        .expect_err("an outdated handle");
    assert_eq!(stale.code(), Some("InvalidParameterValue"), "{stale:?}");
    assert!(stale.message().unwrap_or_default().contains("expired"));
    let left = f.model.messages(&f.names.queue);
    assert_eq!(
        (left.len(), left[0].in_flight, left[0].receive_count),
        (1, true, 2)
    );

    let unknown = f
        .sqs
        .delete_message()
        .queue_url(&f.queue_url)
        .receipt_handle("never-issued")
        .send()
        .await
        .expect_err("a handle never issued");
    assert!(
        unknown
            .as_service_error()
            .is_some_and(|e| e.is_receipt_handle_is_invalid())
    );

    delete(&f.sqs, &f.queue_url, &second[0]).await;
    assert!(f.model.messages(&f.names.queue).is_empty());
}

#[tokio::test]
async fn redrive_moves_a_message_received_past_max_receive_count_and_lets_its_group_through() {
    let f = fixture(2).await;
    for body in ["poison", "f1", "f2"] {
        send(&f.sqs, &f.queue_url, "g", body).await;
    }
    for round in 1..=2 {
        let got = receive(&f.sqs, &f.queue_url, 1, 0).await;
        assert_eq!(bodies(&got), ["poison"], "receive {round}");
        release(&f.sqs, &f.queue_url, &got).await;
    }
    let next = receive(&f.sqs, &f.queue_url, 10, 0).await;
    assert_eq!(
        bodies(&next),
        ["f1", "f2"],
        "the third receive moved the poison instead"
    );
    assert_eq!(receive_counts(&next), ["1", "1"]);

    let moved = f.model.dead_letters(&f.names.queue);
    assert_eq!(
        moved.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["poison"]
    );
    let dead = receive(&f.sqs, &f.dead_letter_queue_url, 10, 0).await;
    assert_eq!(bodies(&dead), ["poison"]);
    let group = MessageSystemAttributeName::MessageGroupId;
    assert_eq!(attribute(&dead[0], &group), "g");
    assert_eq!(
        receive_counts(&dead),
        ["3"],
        "the count goes on across queues"
    );
}

#[tokio::test]
async fn releasing_a_whole_receive_dead_letters_the_valid_followers_with_the_poison() {
    // What issue 11 describes: on SQS, a consumer that releases a poison
    // message together with the followers it received with it sends them
    // all to the dead-letter queue. (fauxqs, one message per group per
    // receive, never shows this.)
    let f = fixture(2).await;
    for body in ["poison", "f1", "f2"] {
        send(&f.sqs, &f.queue_url, "g", body).await;
    }
    for _ in 0..2 {
        let got = receive(&f.sqs, &f.queue_url, 10, 0).await;
        assert_eq!(bodies(&got), ["poison", "f1", "f2"]);
        release(&f.sqs, &f.queue_url, &got).await;
    }
    assert!(receive(&f.sqs, &f.queue_url, 10, 0).await.is_empty());
    let moved = f.model.dead_letters(&f.names.queue);
    let moved: Vec<&str> = moved.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(moved, ["poison", "f1", "f2"]);
}

#[tokio::test]
async fn a_duplicate_within_five_minutes_is_answered_as_sent_but_not_enqueued() {
    let f = fixture(5).await;
    let sent = |body: &'static str| {
        f.sqs
            .send_message()
            .queue_url(&f.queue_url)
            .message_group_id("g")
            .message_deduplication_id("same-id")
            .message_body(body)
            .send()
    };
    let first = sent("first").await.expect("SendMessage");
    let second = sent("second").await.expect("a duplicate is accepted");
    assert_eq!(first.message_id(), second.message_id());
    assert_eq!(first.sequence_number(), second.sequence_number());
    let entry = SendMessageBatchRequestEntry::builder()
        .id("dup")
        .message_group_id("g")
        .message_deduplication_id("same-id")
        .message_body("third")
        .build()
        .expect("entry");
    let batch = f
        .sqs
        .send_message_batch()
        .queue_url(&f.queue_url)
        .entries(entry)
        .send()
        .await
        .expect("SendMessageBatch");
    assert_eq!(batch.successful().len(), 1);
    let queued = f.model.messages(&f.names.queue);
    assert_eq!(
        queued.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["first"]
    );
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_message_arrives() {
    let f = fixture(5).await;
    let (sqs, url) = (f.sqs.clone(), f.queue_url.clone());
    let poll = tokio::spawn(async move { receive(&sqs, &url, 10, 20).await });
    eventually(
        "the long poll to reach the model",
        Duration::from_secs(10),
        || async {
            match f.model.call_count("ReceiveMessage") {
                0 => Err("no ReceiveMessage yet".to_owned()),
                _ => Ok(()),
            }
        },
    )
    .await;
    assert!(!poll.is_finished(), "nothing to hand out yet");
    let sent_at = Instant::now();
    send(&f.sqs, &f.queue_url, "g", "g1").await;
    let got = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("the poll returned")
        .expect("the poll task");
    assert_eq!(bodies(&got), ["g1"]);
    assert!(
        sent_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent_at.elapsed()
    );
}

fn entry(id: &str, group: Option<&str>, body: &str) -> SendMessageBatchRequestEntry {
    SendMessageBatchRequestEntry::builder()
        .id(id)
        .set_message_group_id(group.map(str::to_owned))
        .message_deduplication_id(id)
        .message_body(body)
        .build()
        .expect("entry")
}

#[tokio::test]
async fn a_batch_answers_per_entry_and_a_bad_entry_fails_alone() {
    let f = fixture(5).await;
    let out = f
        .sqs
        .send_message_batch()
        .queue_url(&f.queue_url)
        .entries(entry("a", Some("g"), "a"))
        .entries(entry("b", None, "b"))
        .entries(entry("c", Some("g"), "c\u{ffff}"))
        .entries(entry("d", Some("g"), "d"))
        .send()
        .await
        .expect("SendMessageBatch");
    let ok: Vec<&str> = out.successful().iter().map(|s| s.id()).collect();
    assert_eq!(ok, ["a", "d"]);
    let failed: Vec<(&str, &str, bool)> = out
        .failed()
        .iter()
        .map(|e| (e.id(), e.code(), e.sender_fault()))
        .collect();
    assert_eq!(
        failed,
        [
            ("b", "MissingParameter", true),
            ("c", "InvalidMessageContents", true)
        ]
    );
    let queued = f.model.messages(&f.names.queue);
    assert_eq!(
        queued.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        ["a", "d"]
    );

    let repeated = f
        .sqs
        .send_message_batch()
        .queue_url(&f.queue_url)
        .entries(entry("x", Some("g"), "x"))
        .entries(entry("x", Some("g"), "y"))
        .send()
        .await
        .expect_err("repeated ids fail the whole request");
    assert!(
        repeated
            .as_service_error()
            .is_some_and(|e| e.is_batch_entry_ids_not_distinct())
    );

    let got = receive(&f.sqs, &f.queue_url, 10, 0).await;
    let handle = |i: usize| got[i].receipt_handle().unwrap_or_default().to_owned();
    let visibility = f
        .sqs
        .change_message_visibility_batch()
        .queue_url(&f.queue_url)
        .entries(visibility_entry("keep", &handle(1), 60))
        .entries(visibility_entry("bogus", "never-issued", 60))
        .send()
        .await
        .expect("ChangeMessageVisibilityBatch");
    assert_eq!(visibility.successful().len(), 1);
    assert_eq!(visibility.failed()[0].code(), "ReceiptHandleIsInvalid");
    let deleted = f
        .sqs
        .delete_message_batch()
        .queue_url(&f.queue_url)
        .entries(delete_entry("first", &handle(0)))
        .entries(delete_entry("bogus", "never-issued"))
        .send()
        .await
        .expect("DeleteMessageBatch");
    let ok: Vec<&str> = deleted.successful().iter().map(|s| s.id()).collect();
    assert_eq!(ok, ["first"]);
    assert_eq!(deleted.failed()[0].code(), "ReceiptHandleIsInvalid");
    assert_eq!(f.model.messages(&f.names.queue).len(), 1);
}

fn visibility_entry(id: &str, handle: &str, secs: i32) -> ChangeMessageVisibilityBatchRequestEntry {
    ChangeMessageVisibilityBatchRequestEntry::builder()
        .id(id)
        .receipt_handle(handle)
        .visibility_timeout(secs)
        .build()
        .expect("entry")
}

fn delete_entry(id: &str, handle: &str) -> DeleteMessageBatchRequestEntry {
    DeleteMessageBatchRequestEntry::builder()
        .id(id)
        .receipt_handle(handle)
        .build()
        .expect("entry")
}

#[tokio::test]
async fn message_attributes_round_trip_and_receives_pick_them_by_name() {
    let f = fixture(5).await;
    let text = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("attribute")
    };
    let number = MessageAttributeValue::builder()
        .data_type("Number")
        .string_value("3")
        .build()
        .expect("attribute");
    let binary = MessageAttributeValue::builder()
        .data_type("Binary")
        .binary_value(Blob::new(vec![0, 1, 255]))
        .build()
        .expect("attribute");
    f.sqs
        .send_message()
        .queue_url(&f.queue_url)
        .message_group_id("g")
        .message_deduplication_id("m1")
        .message_body("poison")
        .message_attributes("reason", text("undecodable: é 😀"))
        .message_attributes("attempts", number.clone())
        .message_attributes("raw", binary.clone())
        .send()
        .await
        .expect("SendMessage");
    let pick = |names: &'static [&'static str]| {
        let mut request = f.sqs.receive_message().queue_url(&f.queue_url);
        for name in names {
            request = request.message_attribute_names(*name);
        }
        request.send()
    };
    let all = pick(&["All"])
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    let attributes = all[0].message_attributes().expect("attributes");
    assert_eq!(attributes.get("reason"), Some(&text("undecodable: é 😀")));
    assert_eq!(attributes.get("attempts"), Some(&number));
    assert_eq!(attributes.get("raw"), Some(&binary));

    release(&f.sqs, &f.queue_url, &all).await;
    let one = pick(&["reason"])
        .await
        .expect("receive")
        .messages
        .unwrap_or_default();
    let names: Vec<&String> = one[0]
        .message_attributes()
        .expect("attributes")
        .keys()
        .collect();
    assert_eq!(names, ["reason"]);
    assert!(
        one[0].attributes().is_none(),
        "no system attribute was asked for"
    );
}

#[tokio::test]
async fn the_projects_migration_creates_the_queues_and_their_attributes_read_back() {
    let f = fixture(4).await;
    let again = f.model.create_queues(&f.names, 4, 30).await;
    assert_eq!(
        again.queue_url, f.queue_url,
        "a second migration finds the queues"
    );
    assert!(f.queue_url.starts_with(&f.model.url), "{}", f.queue_url);

    send(&f.sqs, &f.queue_url, "g", "g1").await;
    send(&f.sqs, &f.queue_url, "g", "g2").await;
    receive(&f.sqs, &f.queue_url, 1, 0).await;
    let out = f
        .sqs
        .get_queue_attributes()
        .queue_url(&f.queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes");
    let attributes = out.attributes().expect("attributes");
    let get = |name: QueueAttributeName| attributes.get(&name).map_or("", String::as_str);
    let dlq_arn = format!(
        "arn:aws:sqs:us-east-1:000000000000:{}",
        f.names.dead_letter_queue
    );
    let policy: serde_json::Value =
        serde_json::from_str(get(QueueAttributeName::RedrivePolicy)).expect("a JSON policy");
    assert_eq!(
        policy,
        serde_json::json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": 4 })
    );
    assert_eq!(get(QueueAttributeName::VisibilityTimeout), "30");
    assert_eq!(get(QueueAttributeName::FifoQueue), "true");
    assert_eq!(get(QueueAttributeName::ApproximateNumberOfMessages), "1");
    assert_eq!(
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        "1"
    );

    let missing = f
        .sqs
        .get_queue_url()
        .queue_name("no-such-queue.fifo")
        .send()
        .await
        .expect_err("no such queue");
    assert!(
        missing
            .as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist())
    );
    assert_eq!(
        f.model.call_count("GetQueueUrl"),
        5,
        "{:?}",
        f.model.calls()
    );
}

/// Creates a FIFO queue on fauxqs (`AWS_ENDPOINT_URL_SQS`); its URL.
async fn fauxqs_queue(sqs: &Client) -> String {
    sqs.create_queue()
        .queue_name(format!("{}.fifo", unique("model-vs-fauxqs")))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .send()
        .await
        .expect("CreateQueue on fauxqs")
        .queue_url
        .expect("a queue URL")
}

#[tokio::test]
async fn fauxqs_hands_out_one_message_of_a_group_per_receive_where_sqs_and_the_model_hand_out_several()
 {
    let fauxqs = Client::new(&obt_testkit::aws().await);
    let fauxqs_url = fauxqs_queue(&fauxqs).await;
    let f = fixture(5).await;
    for (sqs, url) in [(&fauxqs, &fauxqs_url), (&f.sqs, &f.queue_url)] {
        for body in ["g1", "g2", "g3"] {
            send(sqs, url, "g", body).await;
        }
    }
    let from_fauxqs = receive(&fauxqs, &fauxqs_url, 10, 1).await;
    let from_model = receive(&f.sqs, &f.queue_url, 10, 1).await;
    assert_eq!(
        bodies(&from_fauxqs),
        ["g1"],
        "fauxqs changed: docs/ARCHITECTURE.md's 'gentler than AWS' note and this model may no longer be needed"
    );
    assert_eq!(bodies(&from_model), ["g1", "g2", "g3"]);
}

fn trace_header(value: &str) -> aws_sdk_sqs::types::MessageSystemAttributeValue {
    aws_sdk_sqs::types::MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("system attribute")
}

const XRAY: &str = "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1";

/// Sends one message with the `AWSTraceHeader` system attribute `header`.
async fn send_traced(
    sqs: &Client,
    url: &str,
    body: &str,
    header: &str,
) -> Result<(), aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::send_message::SendMessageError>>
{
    sqs.send_message()
        .queue_url(url)
        .message_group_id("g")
        .message_deduplication_id(format!("d{}", body.len()))
        .message_body(body)
        .message_system_attributes(
            aws_sdk_sqs::types::MessageSystemAttributeNameForSends::AwsTraceHeader,
            trace_header(header),
        )
        .send()
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_aws_trace_header_round_trips_uncounted_and_a_malformed_one_is_refused() {
    let f = fixture(5).await;
    // A body at the size limit: the system attribute does not count.
    let body = "x".repeat(262_144);
    send_traced(&f.sqs, &f.queue_url, &body, XRAY)
        .await
        .expect("SendMessage with AWSTraceHeader");
    let refused = send_traced(&f.sqs, &f.queue_url, "m2", "Root=not-xray")
        .await
        .expect_err("a malformed X-Ray header");
    assert_eq!(refused.code(), Some("InvalidParameterValue"));

    let messages = receive(&f.sqs, &f.queue_url, 10, 1).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        attribute(&messages[0], &MessageSystemAttributeName::AwsTraceHeader),
        XRAY
    );
    let snapshot = &f.model.messages(&f.names.queue)[0];
    assert_eq!(snapshot.trace_header.as_deref(), Some(XRAY));
}

#[tokio::test]
async fn fauxqs_takes_the_aws_trace_header_and_drops_it_where_sqs_and_the_model_return_it() {
    let fauxqs = Client::new(&obt_testkit::aws().await);
    let fauxqs_url = fauxqs_queue(&fauxqs).await;
    let f = fixture(5).await;
    let mut returned = Vec::new();
    for (sqs, url) in [(&fauxqs, &fauxqs_url), (&f.sqs, &f.queue_url)] {
        send_traced(sqs, url, "traced", XRAY)
            .await
            .expect("SendMessage with AWSTraceHeader is accepted");
        let messages = receive(sqs, url, 10, 1).await;
        assert_eq!(bodies(&messages), ["traced"]);
        returned.push(
            messages[0]
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
                .cloned(),
        );
    }
    assert_eq!(returned, [None, Some(XRAY.to_owned())]);
}
