//! The api table's stream as the tests read it: every record of the
//! stack's stream, from the oldest, as `GetRecords` returns them.

use std::time::Duration;

use aws_sdk_dynamodbstreams::error::DisplayErrorContext;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};

use crate::{Stack, eventually};

/// Waits until the stack's stream holds at least `count` records and
/// returns all of them, shard by shard in the order listed, each shard's
/// in stream order. DynamoDB Local keeps one shard per table, so that is
/// the stream's order.
pub async fn records(stack: &Stack, count: usize, deadline: Duration) -> Vec<Record> {
    eventually(
        &format!("{count} records in the stream"),
        deadline,
        || async {
            let records = read_all(stack).await?;
            if records.len() >= count {
                Ok(records)
            } else {
                Err(format!("{} records", records.len()))
            }
        },
    )
    .await
}

async fn read_all(stack: &Stack) -> Result<Vec<Record>, String> {
    let streams = aws_sdk_dynamodbstreams::Client::new(&stack.config);
    let description = streams
        .describe_stream()
        .stream_arn(&stack.stream_arn)
        .send()
        .await
        .map_err(|e| format!("DescribeStream: {}", DisplayErrorContext(&e)))?
        .stream_description
        .ok_or("DescribeStream answered no description")?;
    let mut records = Vec::new();
    for shard in description.shards() {
        let Some(shard_id) = shard.shard_id() else {
            continue;
        };
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&stack.stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| format!("GetShardIterator: {}", DisplayErrorContext(&e)))?
            .shard_iterator;
        // On the emulator, an empty answer means "read to the end for now".
        while let Some(current) = iterator.take() {
            let out = streams
                .get_records()
                .shard_iterator(current)
                .send()
                .await
                .map_err(|e| format!("GetRecords: {}", DisplayErrorContext(&e)))?;
            let batch = out.records.unwrap_or_default();
            if batch.is_empty() {
                break;
            }
            records.extend(batch);
            iterator = out.next_shard_iterator;
        }
    }
    Ok(records)
}
