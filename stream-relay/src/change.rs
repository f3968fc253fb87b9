//! A stream record reduced to what the relay needs.

use std::collections::HashMap;

use obt_contract::Envelope;
use obt_contract::outbox::OutboxImage;

/// The relay's view of one stream record of the api's table.
#[derive(Debug, Clone)]
pub struct Change {
    /// The record's sequence number in its shard: the checkpoint position.
    pub sequence_number: String,
    /// The item's key.
    pub identity: String,
    /// Whether the write added events to the outbox. Writes that only
    /// removed events (the relay's own acknowledgements) add none and are
    /// skipped.
    pub adds_events: bool,
    /// Every event pending in the outbox after the write, in `seq` order.
    pub pending: Vec<Envelope>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("stream record {sequence_number} has no {what}")]
    Missing {
        sequence_number: String,
        what: &'static str,
    },
    #[error(
        "stream record {sequence_number} holds an outbox this relay cannot read ({source}); \
         the relay will not pass it, so that no event is lost: deploy a relay that reads this \
         schema, or repair the item"
    )]
    Undecodable {
        sequence_number: String,
        #[source]
        source: serde_dynamo::Error,
    },
}

type StreamItem = HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>;

impl Change {
    /// Reads a record as returned by `GetRecords`. `None` for records that
    /// carry no new image (the item was deleted).
    pub fn from_stream_record(
        record: &aws_sdk_dynamodbstreams::types::Record,
    ) -> Result<Option<Self>, ChangeError> {
        let Some(data) = record.dynamodb() else {
            return Err(ChangeError::Missing {
                sequence_number: String::new(),
                what: "dynamodb section",
            });
        };
        let sequence_number = data.sequence_number().unwrap_or_default().to_owned();
        if sequence_number.is_empty() {
            return Err(ChangeError::Missing {
                sequence_number,
                what: "sequence number",
            });
        }
        let Some(new_image) = data.new_image() else {
            return Ok(None);
        };
        let decode = |item: &StreamItem| -> Result<OutboxImage, ChangeError> {
            serde_dynamo::aws_sdk_dynamodbstreams_1::from_item(item.clone()).map_err(|source| {
                ChangeError::Undecodable {
                    sequence_number: sequence_number.clone(),
                    source,
                }
            })
        };
        let new = decode(new_image)?;
        let old = data.old_image().map(decode).transpose()?;
        Ok(Some(Self::from_images(sequence_number, old, new)))
    }

    /// The change between two images of one item.
    pub fn from_images(
        sequence_number: String,
        old: Option<OutboxImage>,
        new: OutboxImage,
    ) -> Self {
        let adds_events = new
            .outbox
            .keys()
            .any(|key| old.as_ref().is_none_or(|old| !old.outbox.contains_key(key)));
        let pending = new.events_in_order().into_iter().cloned().collect();
        Self {
            sequence_number,
            identity: new.identity,
            adds_events,
            pending,
        }
    }
}
