//! A stream record reduced to what the relay needs.

use aws_lambda_events::event::dynamodb::EventRecord;
use obt_contract::Envelope;
use obt_contract::outbox::OutboxImage;

/// The relay's view of one stream record of the api's table.
#[derive(Debug, Clone)]
pub struct Change {
    /// The record's sequence number in its shard: the checkpoint position.
    pub sequence_number: String,
    /// The item's key.
    pub identity: String,
    /// The item's `version` after the write (the seq of its last event).
    /// An acknowledgement conditioned on it knows the outbox held nothing
    /// else, and may take the item out of the sweeper's index.
    pub version: Option<u64>,
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

impl Change {
    /// Reads a record as returned by `GetRecords`. `None` for the records
    /// of deleted items; any other record without a new image is an error
    /// (see [`Change::from_lambda_record`]).
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
            if record.event_name() == Some(&aws_sdk_dynamodbstreams::types::OperationType::Remove) {
                return Ok(None);
            }
            return Err(ChangeError::Missing {
                sequence_number,
                what: "new image (the stream's view type must be NEW_AND_OLD_IMAGES)",
            });
        };
        let old = data.old_image().cloned().map(serde_dynamo::Item::from);
        Self::from_items(sequence_number, old, new_image.clone().into()).map(Some)
    }

    /// Reads a record of a Lambda DynamoDB stream event. `None` for the
    /// records of deleted items (`REMOVE`, no new image). Any other record
    /// without a new image is an error, not a skip: the stream's view type
    /// is wrong (it must be `NEW_AND_OLD_IMAGES`), and skipping would drop
    /// every event.
    pub fn from_lambda_record(record: &EventRecord) -> Result<Option<Self>, ChangeError> {
        let data = &record.change;
        let sequence_number = data.sequence_number.clone().unwrap_or_default();
        if sequence_number.is_empty() {
            return Err(ChangeError::Missing {
                sequence_number,
                what: "sequence number",
            });
        }
        if data.new_image.is_empty() {
            if record.event_name == "REMOVE" {
                return Ok(None);
            }
            return Err(ChangeError::Missing {
                sequence_number,
                what: "new image (the stream's view type must be NEW_AND_OLD_IMAGES)",
            });
        }
        // An absent OldImage (an INSERT) arrives as an empty item.
        let old = (!data.old_image.is_empty()).then(|| data.old_image.clone());
        Self::from_items(sequence_number, old, data.new_image.clone()).map(Some)
    }

    /// Decodes a record's images, whichever API delivered them: the one
    /// decoding path of every driver.
    fn from_items(
        sequence_number: String,
        old: Option<serde_dynamo::Item>,
        new: serde_dynamo::Item,
    ) -> Result<Self, ChangeError> {
        let decode = |item: serde_dynamo::Item| -> Result<OutboxImage, ChangeError> {
            serde_dynamo::from_item(item).map_err(|source| ChangeError::Undecodable {
                sequence_number: sequence_number.clone(),
                source,
            })
        };
        let new = decode(new)?;
        let old = old.map(decode).transpose()?;
        Ok(Self::from_images(sequence_number, old, new))
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
            version: new.version,
            identity: new.identity,
            adds_events,
            pending,
        }
    }
}
