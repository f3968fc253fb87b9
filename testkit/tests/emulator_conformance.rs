//! Pins down the emulator behaviour the project's tests rely on, so that a
//! wrong emulator cannot make a wrong test pass. If one of these fails
//! after an emulator upgrade, the other tests prove nothing until it is
//! understood.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodbstreams::types::{OperationType, ShardIteratorType};
use obt_testkit::{Stack, eventually};

const DEADLINE: Duration = Duration::from_secs(20);

async fn send(stack: &Stack, group: &str, dedup: &str, body: &str) {
    obt_testkit::send_raw(stack, group, dedup, body).await;
}

/// Receives up to `max` messages without waiting: (body, receipt handle).
async fn receive(stack: &Stack, queue_url: &str, max: i32) -> Vec<(String, String)> {
    let out = stack
        .sqs()
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max)
        .wait_time_seconds(0)
        .send()
        .await
        .expect("receive");
    out.messages()
        .iter()
        .map(|m| {
            (
                m.body().unwrap_or_default().to_owned(),
                m.receipt_handle().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn bodies(messages: &[(String, String)]) -> Vec<&str> {
    messages.iter().map(|m| m.0.as_str()).collect()
}

/// Receives and deletes until `count` messages came, in the order received.
/// (fauxqs hands out one message of a group per receive; SQS may hand out
/// several. Neither is promised, so the tests don't count on either.)
async fn drain(stack: &Stack, queue_url: &str, count: usize) -> Vec<String> {
    obt_testkit::drain(stack, queue_url, count, DEADLINE).await
}

async fn make_visible(stack: &Stack, receipt: &str) {
    stack
        .sqs()
        .change_message_visibility()
        .queue_url(&stack.queue_url)
        .receipt_handle(receipt)
        .visibility_timeout(0)
        .send()
        .await
        .expect("change visibility");
}

#[tokio::test]
async fn fifo_keeps_group_order_across_redelivery_and_holds_a_group_while_in_flight() {
    let stack = Stack::create(10).await;
    for (i, group) in [(1, "g"), (2, "g"), (3, "g"), (1, "h")] {
        let id = format!("{group}{i}");
        send(&stack, group, &id, &id).await;
    }
    let first = receive(&stack, &stack.queue_url, 1).await;
    assert_eq!(bodies(&first), ["g1"]);
    // While g1 is in flight no other message of g is handed out; h is.
    let others = receive(&stack, &stack.queue_url, 10).await;
    assert_eq!(bodies(&others), ["h1"]);
    // g1, not deleted and visible again, comes back before g2.
    make_visible(&stack, &first[0].1).await;
    let again = drain(&stack, &stack.queue_url, 3).await;
    assert_eq!(
        again,
        ["g1", "g2", "g3"],
        "redelivery keeps the group's order"
    );
}

#[tokio::test]
async fn fifo_deduplicates_by_deduplication_id() {
    let stack = Stack::create(10).await;
    send(&stack, "g", "same-id", "first").await;
    send(&stack, "g", "same-id", "second").await;
    send(&stack, "g", "other-id", "third").await;
    assert_eq!(drain(&stack, &stack.queue_url, 2).await, ["first", "third"]);
    assert!(
        receive(&stack, &stack.queue_url, 10).await.is_empty(),
        "the duplicate never arrives"
    );
}

#[tokio::test]
async fn fifo_moves_a_message_to_the_dead_letter_queue_after_max_receive_count() {
    let stack = Stack::create(2).await;
    send(&stack, "poison", "p1", "poison").await;
    send(&stack, "fine", "f1", "fine").await;
    let mut fine_seen = false;
    for round in 0..2 {
        let got = eventually(
            &format!("receive {round} of the poison message"),
            DEADLINE,
            || async {
                let got = receive(&stack, &stack.queue_url, 10).await;
                if got.iter().any(|m| m.0 == "poison") {
                    Ok(got)
                } else {
                    Err(format!("{got:?}"))
                }
            },
        )
        .await;
        for (body, receipt) in got {
            if body == "poison" {
                make_visible(&stack, &receipt).await;
            } else {
                fine_seen = true;
            }
        }
    }
    assert!(fine_seen, "the other group flowed");
    let dead = eventually("the poison message in the DLQ", DEADLINE, || async {
        // A receive past maxReceiveCount is what moves it.
        let main = receive(&stack, &stack.queue_url, 10).await;
        let dead = receive(&stack, &stack.dead_letter_queue_url, 10).await;
        if dead.is_empty() {
            Err(format!("main queue returned {main:?}"))
        } else {
            Ok(dead)
        }
    })
    .await;
    assert_eq!(bodies(&dead), ["poison"]);
}

type StreamImage = HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>;

#[tokio::test]
async fn dynamodb_streams_has_one_record_per_write_in_order_with_both_images() {
    let stack = Stack::create(10).await;
    let dynamodb = stack.dynamodb();
    for n in 1..=5 {
        dynamodb
            .update_item()
            .table_name(&stack.names.table)
            .key("identity", AttributeValue::S("S1".into()))
            .update_expression("SET #v = :v")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", AttributeValue::N(n.to_string()))
            .send()
            .await
            .expect("update");
    }
    let streams = aws_sdk_dynamodbstreams::Client::new(&stack.config);
    let described = streams
        .describe_stream()
        .stream_arn(&stack.stream_arn)
        .send()
        .await
        .expect("describe");
    let shards = described
        .stream_description()
        .map(|d| d.shards().to_vec())
        .unwrap_or_default();
    let mut records = Vec::new();
    for shard in shards {
        let it = streams
            .get_shard_iterator()
            .stream_arn(&stack.stream_arn)
            .shard_id(shard.shard_id().unwrap_or_default())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator");
        let out = streams
            .get_records()
            .shard_iterator(it.shard_iterator().unwrap_or_default())
            .send()
            .await
            .expect("records");
        records.extend(out.records().to_vec());
    }
    let version = |image: Option<&StreamImage>| {
        image
            .and_then(|i| i.get("version"))
            .and_then(|v| v.as_n().ok())
            .cloned()
    };
    let seen: Vec<(OperationType, Option<String>, Option<String>)> = records
        .iter()
        .map(|r| {
            let d = r.dynamodb().expect("dynamodb section");
            (
                r.event_name().cloned().expect("event name"),
                version(d.old_image()),
                version(d.new_image()),
            )
        })
        .collect();
    let expected: Vec<(OperationType, Option<String>, Option<String>)> = (1..=5u32)
        .map(|n| {
            let kind = if n == 1 {
                OperationType::Insert
            } else {
                OperationType::Modify
            };
            (
                kind,
                (n > 1).then(|| (n - 1).to_string()),
                Some(n.to_string()),
            )
        })
        .collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn dynamodb_local_enforces_reserved_words() {
    let stack = Stack::create(10).await;
    let result = stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key("identity", AttributeValue::S("R1".into()))
        .update_expression("SET name = :n")
        .expression_attribute_values(":n", AttributeValue::S("x".into()))
        .send()
        .await;
    assert!(
        result.is_err(),
        "an unescaped reserved word must be rejected as AWS does"
    );
}
