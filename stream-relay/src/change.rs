//! A stream record reduced to what the relay needs.

use aws_lambda_events::event::dynamodb::EventRecord;
use obt_contract::Envelope;

use crate::image::{Image, NoIdentity, RawImage, Unreadable};

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
    /// order, up to the first unreadable one; none read for a change that
    /// adds no events.
    pub pending: Vec<Envelope>,
    /// The first outbox entry that cannot be read: once the events before
    /// it are published, the identity is parked there (not looked for in a
    /// change that adds no events).
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
    /// Reads a record as returned by `GetRecords`, taking its images.
    /// `None` for the records of deleted items; any other record without a
    /// new image is an error (see [`Change::from_lambda_record`]).
    pub fn from_stream_record(
        record: aws_sdk_dynamodbstreams::types::Record,
    ) -> Result<Option<Self>, ChangeError> {
        let removed =
            record.event_name == Some(aws_sdk_dynamodbstreams::types::OperationType::Remove);
        let inserted =
            record.event_name == Some(aws_sdk_dynamodbstreams::types::OperationType::Insert);
        let Some(data) = record.dynamodb else {
            return Err(ChangeError::Missing {
                sequence_number: String::new(),
                what: "dynamodb section",
            });
        };
        let sequence_number = data.sequence_number.unwrap_or_default();
        if sequence_number.is_empty() {
            return Err(ChangeError::Missing {
                sequence_number,
                what: "sequence number",
            });
        }
        let Some(new_image) = data.new_image else {
            if removed {
                return Ok(None);
            }
            return Err(ChangeError::Missing {
                sequence_number,
                what: "new image (the stream's view type must be NEW_AND_OLD_IMAGES)",
            });
        };
        let old = data.old_image.map(serde_dynamo::Item::from);
        Self::from_items(sequence_number, inserted, old, new_image.into()).map(Some)
    }

    /// Reads a record of a Lambda DynamoDB stream event, taking its images
    /// (the record keeps its other fields). `None` for the records of
    /// deleted items (`REMOVE`, no new image). Any other record without a
    /// new image is an error, not a skip: the stream's view type is wrong
    /// (it must be `NEW_AND_OLD_IMAGES`), and skipping would drop every
    /// event.
    pub fn from_lambda_record(record: &mut EventRecord) -> Result<Option<Self>, ChangeError> {
        let data = &mut record.change;
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
        let old = std::mem::take(&mut data.old_image);
        let old = (!old.is_empty()).then_some(old);
        let new = std::mem::take(&mut data.new_image);
        let inserted = record.event_name == "INSERT";
        Self::from_items(sequence_number, inserted, old, new).map(Some)
    }

    /// Reads a record's images, whichever API delivered them: the one
    /// decoding path of every driver. An item that is damaged (an outbox
    /// entry this relay cannot read) is no error: the change says so, and
    /// the relay parks its identity alone. `inserted`: the record is of
    /// the item's first write (so no old image is expected).
    ///
    /// Outbox entries are decoded only when the write put something into
    /// the outbox, and only those of the new image (the old image's too
    /// when the new one has an entry this relay cannot read, to tell
    /// whether this write spoiled it): half the stream is the relay's own
    /// acknowledgements, which decode nothing.
    fn from_items(
        sequence_number: String,
        inserted: bool,
        old: Option<serde_dynamo::Item>,
        new: serde_dynamo::Item,
    ) -> Result<Self, ChangeError> {
        let read = |item: serde_dynamo::Item| -> Result<RawImage, ChangeError> {
            RawImage::read(item).map_err(|source| ChangeError::NotAnAggregate {
                sequence_number: sequence_number.clone(),
                source,
            })
        };
        let new = read(new)?;
        let old = old.map(read).transpose()?;
        let first_write = inserted && old.is_none();
        let unparked = new.parked.is_none() && old.as_ref().is_some_and(|o| o.parked.is_some());
        let wrote = old.as_ref().is_none_or(|old| new.wrote_outbox_since(old));
        let mut change = if wrote || unparked {
            let new = new.decode();
            let old = old.map(|old| match new.unreadable {
                Some(_) => old.decode(),
                None => old.without_entries(),
            });
            Self::from_images(sequence_number, old.as_ref(), new)
        } else {
            Self {
                sequence_number,
                version: new.version,
                parked: new.parked.is_some(),
                published_floor: old.as_ref().and_then(RawImage::published_floor),
                identity: new.identity,
                ..Self::default()
            }
        };
        if first_write {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use obt_contract::Identity;
    use obt_contract::outbox::{IDENTITY_ATTR, OUTBOX_ATTR, PARKED_ATTR, VERSION_ATTR};
    use serde_dynamo::AttributeValue;

    use super::*;

    /// Events 0 to 4 of A as outbox entries, made once per test: an entry
    /// that a write leaves alone is the same value in both images.
    fn entries() -> Vec<AttributeValue> {
        let identity = Identity::parse("A").expect("valid");
        (0..5)
            .map(|seq| {
                serde_dynamo::to_attribute_value(obt_testkit::event(&identity, seq, "1"))
                    .expect("serializes")
            })
            .collect()
    }

    /// An item of identity A at `version` with these outbox entries.
    fn item(version: u64, entries: Vec<(u64, AttributeValue)>) -> serde_dynamo::Item {
        let outbox = entries
            .into_iter()
            .map(|(seq, value)| (seq.to_string(), value))
            .collect();
        HashMap::from([
            (IDENTITY_ATTR.to_owned(), AttributeValue::S("A".to_owned())),
            (
                VERSION_ATTR.to_owned(),
                AttributeValue::N(version.to_string()),
            ),
            (OUTBOX_ATTR.to_owned(), AttributeValue::M(outbox)),
        ])
        .into()
    }

    fn change(old: serde_dynamo::Item, new: serde_dynamo::Item) -> Change {
        Change::from_items("9".to_owned(), false, Some(old), new).expect("a change")
    }

    fn seqs(change: &Change) -> Vec<u64> {
        change.pending.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_write_that_adds_an_event_reads_every_pending_one() {
        let e = entries();
        let write = change(
            item(2, vec![(2, e[2].clone())]),
            item(3, vec![(2, e[2].clone()), (3, e[3].clone())]),
        );
        assert!(write.adds_events);
        assert_eq!(seqs(&write), [2, 3]);
        assert_eq!(write.published_floor, Some(1));
    }

    #[test]
    fn an_acknowledgement_adds_nothing_and_reads_no_entry() {
        let e = entries();
        // Events 1 and 2 acknowledged; 3 (written since) stays, and so does
        // an entry no relay can read: neither is read again.
        let junk = AttributeValue::S("junk".to_owned());
        let ack = change(
            item(
                4,
                vec![
                    (1, e[1].clone()),
                    (2, e[2].clone()),
                    (3, e[3].clone()),
                    (4, junk.clone()),
                ],
            ),
            item(4, vec![(3, e[3].clone()), (4, junk)]),
        );
        assert!(!ack.adds_events);
        assert!(ack.pending.is_empty() && ack.unreadable.is_none());
        assert_eq!(ack.published_floor, Some(0), "off the old image's keys");
        assert_eq!(ack.version, Some(4));
    }

    #[test]
    fn a_write_that_spoils_an_entry_without_adding_a_key_adds_a_change_to_park() {
        let e = entries();
        let spoiled = change(
            item(3, vec![(2, e[2].clone()), (3, e[3].clone())]),
            item(
                3,
                vec![(2, e[2].clone()), (3, AttributeValue::S("junk".to_owned()))],
            ),
        );
        assert!(spoiled.adds_events);
        assert_eq!(seqs(&spoiled), [2]);
        assert_eq!(spoiled.unreadable.map(|u| u.seq), Some(Some(3)));

        // An entry that was unreadable before stays the first unreadable
        // one when an event is added after it.
        let junk = AttributeValue::S("junk".to_owned());
        let rewritten = change(
            item(3, vec![(2, junk.clone()), (3, e[3].clone())]),
            item(3, vec![(2, junk), (3, e[3].clone()), (4, e[4].clone())]),
        );
        assert!(rewritten.adds_events, "a key was added");
        assert_eq!(rewritten.unreadable.map(|u| u.seq), Some(Some(2)));

        let mut no_map = item(3, vec![]).into_inner();
        no_map.insert(
            OUTBOX_ATTR.to_owned(),
            AttributeValue::S("by hand".to_owned()),
        );
        let spoiled = change(item(3, vec![(3, e[3].clone())]), no_map.into());
        assert!(spoiled.adds_events);
        assert_eq!(spoiled.unreadable.map(|u| u.seq), Some(None));
    }

    #[test]
    fn taking_the_parking_mark_off_reads_what_waited() {
        let e = entries();
        let mut parked = item(3, vec![(3, e[3].clone())]).into_inner();
        parked.insert(PARKED_ATTR.to_owned(), AttributeValue::M(HashMap::new()));
        let unparked = change(parked.clone().into(), item(3, vec![(3, e[3].clone())]));
        assert!(unparked.adds_events && !unparked.parked);
        assert_eq!(seqs(&unparked), [3]);

        let parking = change(item(3, vec![(3, e[3].clone())]), parked.into());
        assert!(!parking.adds_events && parking.parked);
    }
}
