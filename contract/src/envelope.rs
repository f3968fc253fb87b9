//! The message envelope: what the api stores in the outbox and the relay
//! publishes, byte for byte the same document.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::trace::TraceContext;
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
    /// The trace of the request that wrote the event (W3C Trace Context),
    /// so that the consumer's work joins it. Optional both ways: absent
    /// from events of earlier builds, written only when present, and a
    /// value that is not valid reads as absent (`docs/CONTRACT.md`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::trace::lenient"
    )]
    pub trace: Option<TraceContext>,
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
            trace: None,
        }
    }

    /// The same event in the trace `trace`.
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace;
        self
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

    /// The message body to publish: compact JSON in printable ASCII, every
    /// other character written as a `\u` escape (see [`AsciiJson`]).
    /// [`decode`](Self::decode) reads it, and unescaped UTF-8 as well.
    pub fn encode(&self) -> String {
        let mut body = Vec::with_capacity(256);
        let mut serializer = serde_json::Serializer::with_formatter(&mut body, AsciiJson);
        // A struct of strings and integers into a Vec: this cannot fail.
        self.serialize(&mut serializer)
            .unwrap_or_else(|e| unreachable!("envelope serializes: {e}"));
        String::from_utf8(body).unwrap_or_else(|e| unreachable!("ASCII is UTF-8: {e}"))
    }
}

/// Compact JSON whose strings escape every character outside printable
/// ASCII: `ë` as `\u00eb`, `😀` (above U+FFFF) as the UTF-16 surrogate pair
/// `\ud83d\ude00`, as RFC 8259 spells it.
///
/// Why: a queue may refuse a body for its characters. SQS accepts only
/// #x9, #xA, #xD, #x20-#xD7FF, #xE000-#xFFFD and #x10000-#x10FFFF, and
/// fauxqs 1.9.2, the local stand-in, also refuses everything above U+FFFF.
/// Escaped, every name the api accepts travels as the same few ASCII
/// characters, and reaches the consumer unchanged. (serde_json itself
/// escapes `"`, `\` and the C0 controls, and has no option for the rest.)
struct AsciiJson;

impl serde_json::ser::Formatter for AsciiJson {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut plain = 0;
        for (at, c) in fragment.char_indices() {
            if matches!(c, ' '..='~') {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[plain..at])?;
            for unit in c.encode_utf16(&mut [0; 2]) {
                write!(writer, "\\u{unit:04x}")?;
            }
            plain = at + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[plain..])
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

    fn named(name: &str, surname: &str) -> Envelope {
        let mut envelope = sample();
        envelope.data.name = PersonName::parse(name).expect("valid");
        envelope.data.surname = PersonName::parse(surname).expect("valid");
        envelope
    }

    fn assert_printable_ascii(body: &str) {
        if let Some(byte) = body.bytes().find(|b| !(0x20..=0x7e).contains(b)) {
            panic!("byte {byte:#04x} outside printable ASCII in {body}");
        }
    }

    #[test]
    fn the_body_is_printable_ascii_and_round_trips_exactly() {
        let envelope = named("Zoë 😀", "李小龙");
        let body = envelope.encode();

        assert_printable_ascii(&body);
        assert!(body.contains(r#""name":"Zo\u00eb \ud83d\ude00""#), "{body}");
        assert!(body.contains(r#""surname":"\u674e\u5c0f\u9f99""#), "{body}");
        let decoded = Envelope::decode(&body).expect("decodes");
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.data.name.as_str(), "Zoë 😀");
        assert_eq!(decoded.data.surname.as_str(), "李小龙");
    }

    #[test]
    fn unescaped_utf8_bodies_of_earlier_builds_still_decode() {
        let envelope = named("Zoë 😀", "李小龙");
        let unescaped = serde_json::to_string(&envelope).expect("serializes");
        assert!(unescaped.contains("Zoë 😀"), "{unescaped}");
        assert_eq!(Envelope::decode(&unescaped).expect("decodes"), envelope);
    }

    #[test]
    fn every_character_a_name_may_hold_travels_as_ascii_and_comes_back() {
        let allowed: Vec<char> = ('\u{0}'..=char::MAX)
            .filter(|c| PersonName::parse(&c.to_string()).is_ok())
            .collect();
        for chunk in allowed.chunks(PersonName::MAX_CHARS) {
            let name: String = chunk.iter().collect();
            let envelope = named(&name, "Robi");
            let body = envelope.encode();
            assert_printable_ascii(&body);
            assert_eq!(Envelope::decode(&body).expect("decodes"), envelope);
        }
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

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn traced() -> Envelope {
        sample().with_trace(crate::trace::TraceContext::from_headers(
            Some(TRACEPARENT),
            Some("congo=t61rcWkgMzE"),
        ))
    }

    #[test]
    fn a_trace_context_is_written_only_when_present_and_round_trips() {
        let untraced: serde_json::Value = serde_json::from_str(&sample().encode()).expect("json");
        assert!(untraced.get("trace").is_none(), "{untraced}");

        let envelope = traced();
        let body = envelope.encode();
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(json["trace"]["traceparent"], TRACEPARENT);
        assert_eq!(json["trace"]["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(Envelope::decode(&body).expect("decodes"), envelope);
    }

    #[test]
    fn an_event_without_trace_context_still_decodes() {
        // The documented example of docs/CONTRACT.md, as earlier builds wrote it.
        let body = r#"{"event_id":"019ac8f4-5b7e-7d43-9a51-6f2f7f0c9b1e","type":"SpendingRecorded","schema_version":1,"identity":"AB1","seq":1,"occurred_at":"2026-11-28T00:41:07.123Z","data":{"name":"Martin","surname":"Robi","amount":"51.30"}}"#;
        let event = Envelope::decode(body).expect("decodes");
        assert_eq!(event.trace, None);
        assert_eq!(event.seq, 1);
    }

    #[test]
    fn an_unreadable_trace_context_reads_as_none_and_never_refuses_the_event() {
        let good: serde_json::Value = serde_json::from_str(&traced().encode()).expect("json");
        let cases = [
            serde_json::json!({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}),
            serde_json::json!({"traceparent": "not one"}),
            serde_json::json!({"traceparent": 5}),
            serde_json::json!({"tracestate": "congo=t61rcWkgMzE"}),
            serde_json::json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            serde_json::Value::Null,
        ];
        for trace in cases {
            let mut doc = good.clone();
            doc["trace"] = trace.clone();
            let event = Envelope::decode(&doc.to_string()).expect("still decodes");
            assert_eq!(event.trace, None, "{trace}");
            assert_eq!(event.data, sample().data);
        }
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
