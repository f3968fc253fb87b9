//! The api's write, reduced to what the relay reads: one conditional
//! `UpdateItem` that bumps the item's `version` and adds the event to its
//! `outbox` map under its `seq` (the api sends its update inside a one-item
//! `TransactWriteItems`; the item and the stream record are the same). The
//! api's full write (totals, names, the sweeper's index) is covered by its
//! own tests and the end-to-end ones.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use obt_contract::Envelope;
use obt_contract::outbox::{IDENTITY_ATTR, OUTBOX_ATTR, VERSION_ATTR, outbox_key};

use crate::Stack;

/// Appends `event` to its identity's outbox in the stack's api table, as
/// the api does: event 1 creates the item, event n needs version n - 1.
pub async fn append(stack: &Stack, event: &Envelope) {
    let value = serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value(event)
        .expect("an envelope serializes");
    let update = stack
        .dynamodb()
        .update_item()
        .table_name(&stack.names.table)
        .key(IDENTITY_ATTR, AttributeValue::S(event.identity.to_string()))
        .expression_attribute_names("#v", VERSION_ATTR)
        .expression_attribute_names("#o", OUTBOX_ATTR)
        .expression_attribute_values(":seq", AttributeValue::N(event.seq.to_string()));
    let update = if event.seq == 1 {
        update
            .update_expression("SET #v = :seq, #o = :outbox")
            .condition_expression("attribute_not_exists(#v)")
            .expression_attribute_values(
                ":outbox",
                AttributeValue::M(HashMap::from([(outbox_key(1), value)])),
            )
    } else {
        update
            .update_expression("SET #v = :seq, #o.#k = :event")
            .condition_expression("#v = :prev")
            .expression_attribute_names("#k", outbox_key(event.seq))
            .expression_attribute_values(":event", value)
            .expression_attribute_values(":prev", AttributeValue::N((event.seq - 1).to_string()))
    };
    update.send().await.unwrap_or_else(|e| {
        panic!(
            "append event {} of {}: {}",
            event.seq,
            event.identity,
            DisplayErrorContext(&e)
        )
    });
}

/// The item of `identity` in the stack's api table, read consistently;
/// `None` when there is none.
pub async fn item(stack: &Stack, identity: &str) -> Option<HashMap<String, AttributeValue>> {
    stack
        .dynamodb()
        .get_item()
        .table_name(&stack.names.table)
        .key(IDENTITY_ATTR, AttributeValue::S(identity.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetItem {identity}: {}", DisplayErrorContext(&e)))
        .item
}

/// The seqs pending in `identity`'s outbox, read consistently; `None` when
/// the item does not exist.
pub async fn pending(stack: &Stack, identity: &str) -> Option<Vec<u64>> {
    let item = item(stack, identity).await?;
    let mut seqs: Vec<u64> = match item.get(OUTBOX_ATTR) {
        Some(AttributeValue::M(outbox)) => outbox
            .keys()
            .map(|k| k.parse().expect("outbox keys are seqs"))
            .collect(),
        _ => Vec::new(),
    };
    seqs.sort_unstable();
    Some(seqs)
}
