//! Where the daemon stands in each shard, stored in a DynamoDB table so
//! that a restart resumes there.
//!
//! A checkpoint is written only after every event of the records up to it
//! was published and acknowledged. A crash between the two re-reads those
//! records and re-sends their events (deduplicated downstream), never
//! skips them.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;

/// The checkpoint value of a shard that has been read to its end.
pub const SHARD_END: &str = "SHARD_END";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Resume after this sequence number.
    After(String),
    /// The shard is closed and fully handled.
    ShardEnd,
}

#[derive(Debug, thiserror::Error)]
#[error("DynamoDB {call} on checkpoint table {table} failed: {message}")]
pub struct CheckpointError {
    call: &'static str,
    table: String,
    message: String,
}

#[derive(Debug, Clone)]
pub struct Checkpoints {
    client: Client,
    table: String,
    stream_arn: String,
}

impl Checkpoints {
    pub fn new(client: Client, table: String, stream_arn: String) -> Self {
        Self {
            client,
            table,
            stream_arn,
        }
    }

    fn error(&self, call: &'static str) -> impl FnOnce(String) -> CheckpointError {
        let table = self.table.clone();
        move |message| CheckpointError {
            call,
            table,
            message,
        }
    }

    /// Every shard's position in this stream.
    pub async fn load_all(&self) -> Result<HashMap<String, Position>, CheckpointError> {
        let items = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("stream_arn = :s")
            .expression_attribute_values(":s", AttributeValue::S(self.stream_arn.clone()))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.error("Query")(DisplayErrorContext(&e).to_string()))?;
        let mut positions = HashMap::new();
        for item in items {
            let (Some(AttributeValue::S(shard)), Some(AttributeValue::S(checkpoint))) =
                (item.get("shard_id"), item.get("checkpoint"))
            else {
                continue;
            };
            let position = if checkpoint == SHARD_END {
                Position::ShardEnd
            } else {
                Position::After(checkpoint.clone())
            };
            positions.insert(shard.clone(), position);
        }
        Ok(positions)
    }

    /// Records that `shard_id` has been handled up to `position`.
    pub async fn save(&self, shard_id: &str, position: &Position) -> Result<(), CheckpointError> {
        let checkpoint = match position {
            Position::After(seq) => seq.clone(),
            Position::ShardEnd => SHARD_END.to_owned(),
        };
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.client
            .put_item()
            .table_name(&self.table)
            .item("stream_arn", AttributeValue::S(self.stream_arn.clone()))
            .item("shard_id", AttributeValue::S(shard_id.to_owned()))
            .item("checkpoint", AttributeValue::S(checkpoint))
            .item("updated_at", AttributeValue::S(now))
            .send()
            .await
            .map_err(|e| self.error("PutItem")(DisplayErrorContext(&e).to_string()))?;
        Ok(())
    }
}
