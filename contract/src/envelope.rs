//! The message envelope: what the api stores in the outbox and the relay
//! publishes, byte for byte the same document.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::values::{Amount, Identity, PersonName};

/// The version of the envelope's shape that this crate writes and reads.
/// Readers reject any other version rather than guess at its meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// A globally unique event id. It is the SQS `MessageDeduplicationId` and
/// the key by which the consumer recognises a duplicate.
///
/// Always serialized as the hyphenated text form, whatever the format (a
/// plain `Uuid` would turn into bytes in a non-human-readable format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    /// A new, time-ordered (v7) id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The kinds of event in this contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    SpendingRecorded,
}

/// The payload of a `SpendingRecorded` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendingRecorded {
    pub name: PersonName,
    pub surname: PersonName,
    pub amount: Amount,
}

/// One event, as stored in the outbox and as published.
///
/// `seq` numbers the events of one identity 1, 2, 3 ... without gaps, in
/// the order in which their writes committed; the consumer applies them in
/// that order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: EventId,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub schema_version: u32,
    pub identity: Identity,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub data: SpendingRecorded,
}

/// Why a message body is not an [`Envelope`] this version can apply.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the message is not a valid SpendingRecorded envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("schema_version {found} is not supported (this build reads version {SCHEMA_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("seq must be 1 or more")]
    ZeroSeq,
}

impl Envelope {
    /// A new `SpendingRecorded` event at `seq`, occurring now.
    pub fn spending_recorded(identity: Identity, seq: u64, data: SpendingRecorded) -> Self {
        Self {
            event_id: EventId::new(),
            event_type: EventType::SpendingRecorded,
            schema_version: SCHEMA_VERSION,
            identity,
            seq,
            occurred_at: now_millis(),
            data,
        }
    }

    /// Reads and validates a published message body.
    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        let envelope: Self = serde_json::from_str(body)?;
        if envelope.schema_version != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: envelope.schema_version,
            });
        }
        if envelope.seq == 0 {
            return Err(DecodeError::ZeroSeq);
        }
        Ok(envelope)
    }

    /// The message body to publish.
    pub fn encode(&self) -> String {
        // A struct of strings and integers: serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("envelope serializes: {e}"))
    }
}

/// The current time, truncated to milliseconds so that it survives every
/// store and format it passes through unchanged.
fn now_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::spending_recorded(
            Identity::parse("AB1").expect("valid"),
            1,
            SpendingRecorded {
                name: PersonName::parse("Martin").expect("valid"),
                surname: PersonName::parse("Robi").expect("valid"),
                amount: Amount::parse("51.3").expect("valid"),
            },
        )
    }

    #[test]
    fn an_envelope_round_trips_through_its_json_form() {
        let envelope = sample();
        assert_eq!(
            Envelope::decode(&envelope.encode()).expect("decodes"),
            envelope
        );
    }

    #[test]
    fn the_json_form_is_the_documented_one() {
        let envelope = sample();
        let json: serde_json::Value = serde_json::from_str(&envelope.encode()).expect("json");
        assert_eq!(json["type"], "SpendingRecorded");
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["identity"], "AB1");
        assert_eq!(json["seq"], 1);
        assert_eq!(json["data"]["amount"], "51.30");
        assert_eq!(json["event_id"], envelope.event_id.to_string());
        let occurred = json["occurred_at"].as_str().expect("a string");
        assert!(occurred.ends_with('Z'), "RFC 3339 in UTC: {occurred}");
    }

    #[test]
    fn decoding_rejects_what_this_version_cannot_apply() {
        let good: serde_json::Value = serde_json::from_str(&sample().encode()).expect("json");
        let with = |path: &[&str], value: serde_json::Value| {
            let mut doc = good.clone();
            let mut target = &mut doc;
            for key in &path[..path.len() - 1] {
                target = &mut target[*key];
            }
            target[path[path.len() - 1]] = value;
            doc.to_string()
        };
        let cases = [
            with(&["schema_version"], 2.into()),
            with(&["seq"], 0.into()),
            with(&["type"], "SpendingDeleted".into()),
            with(&["identity"], "has space".into()),
            with(&["data", "amount"], "-5.00".into()),
            with(&["event_id"], "not-a-uuid".into()),
            "not json".to_owned(),
        ];
        for body in cases {
            assert!(Envelope::decode(&body).is_err(), "accepted {body}");
        }
    }
}
