//! A stream record reduced to what the relay needs.

use aws_lambda_events::event::dynamodb::EventRecord;
use obt_contract::Envelope;

use crate::image::{Image, NoIdentity, Unreadable};

/// The relay's view of one stream record of the api's table.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// The record's sequence number in its shard: the checkpoint position.
    pub sequence_number: String,
    /// The item's key.
    pub identity: String,
    /// The item's `version` after the write (the seq of its last event).
    /// An acknowledgement conditioned on it knows the outbox held nothing
    /// else, and may take the item out of the sweeper's index.
    pub version: Option<u64>,
    /// Whether the write added events to the outbox, left an entry this
    /// relay cannot read, or took the parking mark off (an operator's
    /// retry: what waited goes out now). Writes that only removed events
    /// (the relay's own acknowledgements) or parked the item add none and
    /// are skipped.
    pub adds_events: bool,
    /// Every readable event pending in the outbox after the write, in `seq`
    /// order, up to the first unreadable one.
    pub pending: Vec<Envelope>,
    /// The first outbox entry that cannot be read: once the events before
    /// it are published, the identity is parked there.
    pub unreadable: Option<Unreadable>,
    /// The item is parked: none of its events is published.
    pub parked: bool,
    /// A lower bound of the identity's "published up to" mark, read off
    /// the record itself ([`Image::published_floor`] of the image before
    /// the write; 0 for the item's first write), so that a relay that
    /// meets the identity for the first time needs no read of the item.
    /// `None` when the record cannot tell (a change of the sweeper's, or
    /// a stream without old images): the relay reads the item.
    pub published_floor: Option<u64>,
}
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("stream record {sequence_number} has no {what}")]
    Missing {
        sequence_number: String,
        what: &'static str,
    },
    #[error(
        "stream record {sequence_number} is not of an item of the api's table ({source}); check \
         that the relay reads the stream of the api's table"
    )]
    NotAnAggregate {
        sequence_number: String,
        #[source]
        source: NoIdentity,
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
        let inserted =
            record.event_name() == Some(&aws_sdk_dynamodbstreams::types::OperationType::Insert);
        Self::from_items(sequence_number, inserted, old, new_image.clone().into()).map(Some)
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
        let inserted = record.event_name == "INSERT";
        Self::from_items(sequence_number, inserted, old, data.new_image.clone()).map(Some)
    }

    /// Reads a record's images, whichever API delivered them: the one
    /// decoding path of every driver. An item that is damaged (an outbox
    /// entry this relay cannot read) is no error: the change says so, and
    /// the relay parks its identity alone. `inserted`: the record is of
    /// the item's first write (so no old image is expected).
    fn from_items(
        sequence_number: String,
        inserted: bool,
        old: Option<serde_dynamo::Item>,
        new: serde_dynamo::Item,
    ) -> Result<Self, ChangeError> {
        let read = |item: serde_dynamo::Item| -> Result<Image, ChangeError> {
            Image::read(item).map_err(|source| ChangeError::NotAnAggregate {
                sequence_number: sequence_number.clone(),
                source,
            })
        };
        let new = read(new)?;
        let old = old.map(read).transpose()?;
        let mut change = Self::from_images(sequence_number, old.as_ref(), new);
        if inserted && old.is_none() {
            // Nothing of a new item was published before.
            change.published_floor = Some(0);
        }
        Ok(change)
    }

    /// The change between two images of one item (`old` is `None` for an
    /// item's first write, and for the sweeper, which treats every pending
    /// event as new).
    pub fn from_images(sequence_number: String, old: Option<&Image>, new: Image) -> Self {
        let added = new
            .keys
            .iter()
            .any(|key| old.is_none_or(|old| !old.keys.contains(key)));
        let unparked = new.parked.is_none() && old.is_some_and(|old| old.parked.is_some());
        // A write that left the outbox unreadable (not a map any more, an
        // entry overwritten) adds no key, but it must park the identity.
        let spoiled =
            new.unreadable.is_some() && old.is_none_or(|old| old.unreadable != new.unreadable);
        Self {
            sequence_number,
            identity: new.identity,
            version: new.version,
            adds_events: added || unparked || spoiled,
            pending: new.pending,
            unreadable: new.unreadable,
            parked: new.parked.is_some(),
            published_floor: old.and_then(Image::published_floor),
        }
    }
}
