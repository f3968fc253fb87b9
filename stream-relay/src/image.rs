//! An item of the api's table read leniently: one outbox entry that this
//! relay cannot read spoils only itself and what comes after it, never the
//! item's other events, and never another identity (invariant 6).
//!
//! The stream images, `GetItem` and the Lambda events all arrive here as a
//! [`serde_dynamo::Item`], so every driver reads items the same way.

use std::collections::{BTreeMap, BTreeSet};

use obt_contract::Envelope;
use obt_contract::outbox::{IDENTITY_ATTR, OUTBOX_ATTR, PARKED_ATTR, VERSION_ATTR};
use serde_dynamo::AttributeValue;

/// The part of an aggregate item that the relay reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Image {
    pub identity: String,
    /// The seq of the item's last event; `None` when absent or malformed
    /// (the acknowledgement then leaves the sweeper's index entry alone).
    pub version: Option<u64>,
    /// The keys of every outbox entry, readable or not: which entries a
    /// write added is told by keys alone.
    pub keys: BTreeSet<String>,
    /// The readable pending events in `seq` order, all of them before
    /// [`Image::unreadable`] when there is such an entry.
    pub pending: Vec<Envelope>,
    /// The first outbox entry that cannot be read: the identity is parked
    /// there, and nothing after it is published.
    pub unreadable: Option<Unreadable>,
    /// The parking mark, when the identity is parked.
    pub parked: Option<Parked>,
}

/// An outbox entry the relay cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Its seq, from its key; `None` when the key is no number (then no
    /// event of the item is published, since its place is unknown).
    pub seq: Option<u64>,
    pub reason: String,
}

/// A parking mark as stored on the item (see [`PARKED_ATTR`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    /// What kind of problem: [`Cause`] as text, kept as text so that a
    /// mark written by a newer relay is still shown.
    pub cause: String,
    /// The problem in words, with what to do.
    pub reason: String,
    /// The seq of the first event held, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When the identity was parked (RFC 3339).
    pub at: String,
}

/// Why an identity is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// SQS refused the event for its content (a sender fault).
    Refused,
    /// The event's body is larger than SQS takes.
    TooLarge,
    /// The outbox entry cannot be read by this relay.
    Undecodable,
    /// The item's outbox or version is not what the api writes.
    Malformed,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "sqs_refused",
            Self::TooLarge => "too_large",
            Self::Undecodable => "undecodable",
            Self::Malformed => "malformed",
        }
    }
}

/// An item that is not one of the api's aggregates at all.
#[derive(Debug, thiserror::Error)]
#[error("the item has no string attribute `{IDENTITY_ATTR}`")]
pub struct NoIdentity;

impl Image {
    /// Reads an item. Only an item without an identity is an error: any
    /// other damage is described in the image, for the relay to park it.
    pub fn read(item: serde_dynamo::Item) -> Result<Self, NoIdentity> {
        RawImage::read(item).map(RawImage::decode)
    }

    /// A lower bound of the highest seq of the identity that is published,
    /// read off this image alone: every event below the oldest one still
    /// in the outbox was acknowledged, which the relay does only after SQS
    /// accepted it (or an operator discarded it, and it is not to be sent);
    /// with an empty outbox, every event up to `version`. `None` when the
    /// image cannot tell: its version is missing or malformed, or its
    /// outbox is not a map.
    pub fn published_floor(&self) -> Option<u64> {
        // No key, yet an entry without a place: the outbox is no map.
        let no_map =
            self.keys.is_empty() && matches!(self.unreadable, Some(Unreadable { seq: None, .. }));
        published_floor(self.keys.iter(), self.version, no_map)
    }

    fn read_outbox(&mut self, outbox: std::collections::HashMap<String, AttributeValue>) {
        let mut events = BTreeMap::new();
        let mut unreadable: Vec<Unreadable> = Vec::new();
        for (key, value) in outbox {
            self.keys.insert(key.clone());
            let seq = key.parse::<u64>().ok();
            match (seq, serde_dynamo::from_attribute_value::<_, Envelope>(value)) {
                (Some(seq), Ok(event)) if event.seq == seq && event.identity.as_str() == self.identity => {
                    events.insert(seq, event);
                }
                (Some(seq), Ok(event)) => unreadable.push(Unreadable {
                    seq: Some(seq),
                    reason: format!(
                        "outbox entry {key} holds event {} of identity {} at seq {}, not this item's seq {seq}",
                        event.event_id, event.identity, event.seq
                    ),
                }),
                (Some(seq), Err(e)) => unreadable.push(Unreadable {
                    seq: Some(seq),
                    reason: format!("outbox entry {key} cannot be read: {e}"),
                }),
                (None, _) => unreadable.push(Unreadable {
                    seq: None,
                    reason: format!("outbox key {key:?} is not a seq"),
                }),
            }
        }
        // The first unreadable entry in seq order (an unknown place first).
        self.unreadable = unreadable
            .into_iter()
            .min_by_key(|u| u.seq.map_or((0, 0), |seq| (1, seq)));
        let limit = match &self.unreadable {
            Some(Unreadable { seq: Some(seq), .. }) => *seq,
            Some(Unreadable { seq: None, .. }) => 0,
            None => u64::MAX,
        };
        self.pending = events.range(..limit).map(|(_, e)| e.clone()).collect();
    }
}

/// [`Image::published_floor`] from an image's outbox keys, its version,
/// and whether its outbox is no map.
fn published_floor<'k>(
    keys: impl Iterator<Item = &'k String>,
    version: Option<u64>,
    no_map: bool,
) -> Option<u64> {
    match keys.filter_map(|k| k.parse::<u64>().ok()).min() {
        Some(oldest) => Some(oldest.saturating_sub(1)),
        None if no_map => None,
        None => version,
    }
}

/// An item read up to its outbox, whose entries stay as DynamoDB gave
/// them: what most stream records need (the relay's own acknowledgements
/// add nothing, and tell so without a decoded entry); [`RawImage::decode`]
/// reads the entries.
#[derive(Debug, Clone)]
pub struct RawImage {
    pub identity: String,
    pub version: Option<u64>,
    pub parked: Option<Parked>,
    outbox: RawOutbox,
}

#[derive(Debug, Clone)]
enum RawOutbox {
    /// The entries by key (an item without an outbox has none).
    Map(std::collections::HashMap<String, AttributeValue>),
    /// An outbox attribute that is no map.
    NoMap(AttributeValue),
}

impl RawImage {
    /// Reads an item up to its outbox. Only an item without an identity is
    /// an error.
    pub fn read(item: serde_dynamo::Item) -> Result<Self, NoIdentity> {
        let mut item = item.into_inner();
        let Some(AttributeValue::S(identity)) = item.remove(IDENTITY_ATTR) else {
            return Err(NoIdentity);
        };
        let version = match item.remove(VERSION_ATTR) {
            Some(AttributeValue::N(n)) => n.parse().ok(),
            _ => None,
        };
        let parked = item.remove(PARKED_ATTR).map(|value| {
            serde_dynamo::from_attribute_value(value).unwrap_or_else(|_| unknown_mark())
        });
        let outbox = match item.remove(OUTBOX_ATTR) {
            None => RawOutbox::Map(std::collections::HashMap::new()),
            Some(AttributeValue::M(entries)) => RawOutbox::Map(entries),
            Some(other) => RawOutbox::NoMap(other),
        };
        Ok(Self {
            identity,
            version,
            parked,
            outbox,
        })
    }

    /// Whether this image (after a write) holds an outbox entry that
    /// `before` did not hold as it is, a new key or a new value, or an
    /// outbox changed into or out of a map: whether the write touched the
    /// outbox other than by removing entries.
    pub fn wrote_outbox_since(&self, before: &RawImage) -> bool {
        match (&self.outbox, &before.outbox) {
            (RawOutbox::Map(after), RawOutbox::Map(before)) => after
                .iter()
                .any(|(key, value)| before.get(key) != Some(value)),
            (RawOutbox::NoMap(after), RawOutbox::NoMap(before)) => after != before,
            _ => true,
        }
    }

    /// [`Image::published_floor`], without decoding an entry.
    pub fn published_floor(&self) -> Option<u64> {
        match &self.outbox {
            RawOutbox::Map(entries) => published_floor(entries.keys(), self.version, false),
            RawOutbox::NoMap(_) => published_floor(std::iter::empty(), self.version, true),
        }
    }

    /// The image with every outbox entry decoded.
    pub fn decode(self) -> Image {
        self.into_image(true)
    }

    /// The image with the outbox's keys and no entry decoded (`pending`
    /// empty, an unreadable entry not seen): all that a change needs of the
    /// image before it, unless the image after it has an unreadable entry.
    pub fn without_entries(self) -> Image {
        self.into_image(false)
    }

    fn into_image(self, decode: bool) -> Image {
        let mut image = Image {
            identity: self.identity,
            version: self.version,
            parked: self.parked,
            ..Image::default()
        };
        match self.outbox {
            RawOutbox::Map(entries) if decode => image.read_outbox(entries),
            RawOutbox::Map(entries) => image.keys = entries.into_keys().collect(),
            RawOutbox::NoMap(_) => image.unreadable = Some(no_map()),
        }
        image
    }
}

fn no_map() -> Unreadable {
    Unreadable {
        seq: None,
        reason: format!("the `{OUTBOX_ATTR}` attribute is not a map"),
    }
}

/// A mark this relay cannot read (written by hand, or by a newer relay):
/// still a mark, so the identity stays parked.
fn unknown_mark() -> Parked {
    Parked {
        cause: "unknown".to_owned(),
        reason: format!("the `{PARKED_ATTR}` attribute cannot be read"),
        seq: None,
        at: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use obt_contract::Identity;

    fn event(seq: u64) -> Envelope {
        obt_testkit::event(&Identity::parse("A").expect("valid"), seq, "1")
    }

    fn item(entries: Vec<(&str, AttributeValue)>) -> serde_dynamo::Item {
        let outbox: HashMap<String, AttributeValue> = entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        HashMap::from([
            (IDENTITY_ATTR.to_owned(), AttributeValue::S("A".to_owned())),
            (VERSION_ATTR.to_owned(), AttributeValue::N("4".to_owned())),
            (OUTBOX_ATTR.to_owned(), AttributeValue::M(outbox)),
        ])
        .into()
    }

    fn entry(seq: u64) -> AttributeValue {
        serde_dynamo::to_attribute_value(event(seq)).expect("serializes")
    }

    fn seqs(image: &Image) -> Vec<u64> {
        image.pending.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_sound_item_reads_in_seq_order() {
        let image = Image::read(item(vec![("3", entry(3)), ("2", entry(2))])).expect("reads");
        assert_eq!(seqs(&image), [2, 3]);
        assert_eq!(image.version, Some(4));
        assert!(image.unreadable.is_none() && image.parked.is_none());
    }

    #[test]
    fn an_unreadable_entry_cuts_the_pending_events_at_its_seq() {
        let bad = AttributeValue::M(HashMap::from([(
            "event_id".to_owned(),
            AttributeValue::S("not-a-uuid".to_owned()),
        )]));
        let image =
            Image::read(item(vec![("2", entry(2)), ("3", bad), ("4", entry(4))])).expect("reads");
        assert_eq!(seqs(&image), [2], "nothing at or after the bad entry");
        let unreadable = image.unreadable.expect("described");
        assert_eq!(unreadable.seq, Some(3));
        assert!(
            unreadable.reason.contains("entry 3"),
            "{}",
            unreadable.reason
        );
        assert_eq!(image.keys.len(), 3);
    }

    #[test]
    fn an_entry_under_the_wrong_key_or_a_key_that_is_no_seq_is_unreadable() {
        let image = Image::read(item(vec![("2", entry(2)), ("5", entry(3))])).expect("reads");
        assert_eq!(seqs(&image), [2]);
        assert_eq!(image.unreadable.map(|u| u.seq), Some(Some(5)));

        let image = Image::read(item(vec![("2", entry(2)), ("x", entry(3))])).expect("reads");
        assert!(image.pending.is_empty(), "the bad entry's place is unknown");
        assert_eq!(image.unreadable.map(|u| u.seq), Some(None));
    }

    #[test]
    fn an_outbox_that_is_no_map_is_unreadable_and_a_bad_version_is_none() {
        let mut raw = item(vec![]).into_inner();
        raw.insert(OUTBOX_ATTR.to_owned(), AttributeValue::S("x".to_owned()));
        raw.insert(VERSION_ATTR.to_owned(), AttributeValue::S("4".to_owned()));
        let image = Image::read(raw.into()).expect("reads");
        assert_eq!(image.unreadable.map(|u| u.seq), Some(None));
        assert_eq!(image.version, None);
    }

    #[test]
    fn a_parking_mark_is_read_even_when_it_is_not_ours() {
        let mut raw = item(vec![("2", entry(2))]).into_inner();
        let mark = Parked {
            cause: Cause::Refused.as_str().to_owned(),
            reason: "refused".to_owned(),
            seq: Some(2),
            at: "2026-12-06T00:00:00Z".to_owned(),
        };
        raw.insert(
            PARKED_ATTR.to_owned(),
            serde_dynamo::to_attribute_value(&mark).expect("serializes"),
        );
        assert_eq!(
            Image::read(raw.clone().into()).expect("reads").parked,
            Some(mark)
        );
        raw.insert(
            PARKED_ATTR.to_owned(),
            AttributeValue::S("by hand".to_owned()),
        );
        let parked = Image::read(raw.into())
            .expect("reads")
            .parked
            .expect("parked");
        assert_eq!(parked.cause, "unknown");
    }

    #[test]
    fn an_item_without_an_identity_is_an_error() {
        let mut raw = item(vec![]).into_inner();
        raw.remove(IDENTITY_ATTR);
        assert!(Image::read(raw.into()).is_err());
    }

    #[test]
    fn the_published_floor_is_below_the_oldest_pending_entry_readable_or_not() {
        let read = |entries| Image::read(item(entries)).expect("reads");
        // version 4 in every item here
        assert_eq!(read(vec![]).published_floor(), Some(4), "all acknowledged");
        assert_eq!(
            read(vec![("3", entry(3)), ("4", entry(4))]).published_floor(),
            Some(2)
        );
        assert_eq!(
            read(vec![
                ("2", AttributeValue::S("junk".to_owned())),
                ("4", entry(4))
            ])
            .published_floor(),
            Some(1),
            "an unreadable entry is still pending"
        );
        assert_eq!(
            read(vec![("not a seq", entry(3)), ("4", entry(4))]).published_floor(),
            Some(3)
        );

        let mut raw = item(vec![]).into_inner();
        raw.insert(
            OUTBOX_ATTR.to_owned(),
            AttributeValue::S("no map".to_owned()),
        );
        let image = Image::read(raw.clone().into()).expect("reads");
        assert_eq!(
            image.published_floor(),
            None,
            "an outbox that is no map tells nothing"
        );
        raw.remove(OUTBOX_ATTR);
        raw.insert(VERSION_ATTR.to_owned(), AttributeValue::S("4".to_owned()));
        let image = Image::read(raw.into()).expect("reads");
        assert_eq!(
            image.published_floor(),
            None,
            "nor does a malformed version"
        );
    }
}
