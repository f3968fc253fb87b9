//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the trace an
//! event belongs to, carried from the api's request through the outbox and
//! the queue to the consumer (`docs/OPERATIONS.md`, "Tracing").
//!
//! [`Traceparent`] parses and writes the `traceparent` header of version
//! `00`; [`TraceContext`] is what an [`Envelope`](crate::Envelope) carries.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A valid `traceparent` of version `00`:
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase, the
/// ids not all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Traceparent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Why a `traceparent` was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error(
        "a traceparent is 55 characters, 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"
    )]
    Shape,
    #[error("only traceparent version 00 is read")]
    Version,
    #[error("the trace id and the parent id must be lowercase hex")]
    NotHex,
    #[error("the trace id must not be all zero")]
    ZeroTraceId,
    #[error("the parent id must not be all zero")]
    ZeroParentId,
}

impl Traceparent {
    /// The `sampled` bit of the flags.
    pub const SAMPLED: u8 = 0x01;

    /// A traceparent of these ids; `None` when either is all zero, which
    /// the specification forbids.
    pub fn new(trace_id: [u8; 16], parent_id: [u8; 8], flags: u8) -> Option<Self> {
        (trace_id != [0; 16] && parent_id != [0; 8]).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Parses a `traceparent` header value, strictly: version `00` only,
    /// lowercase hex, no surrounding space.
    pub fn parse(s: &str) -> Result<Self, TraceparentError> {
        let b = s.as_bytes();
        if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(TraceparentError::Shape);
        }
        if &b[..2] != b"00" {
            return Err(TraceparentError::Version);
        }
        let mut trace_id = [0; 16];
        let mut parent_id = [0; 8];
        let mut flags = [0; 1];
        decode_hex(&b[3..35], &mut trace_id)?;
        decode_hex(&b[36..52], &mut parent_id)?;
        decode_hex(&b[53..55], &mut flags)?;
        if trace_id == [0; 16] {
            return Err(TraceparentError::ZeroTraceId);
        }
        if parent_id == [0; 8] {
            return Err(TraceparentError::ZeroParentId);
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags: flags[0],
        })
    }

    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    pub fn flags(&self) -> u8 {
        self.flags
    }

    pub fn sampled(&self) -> bool {
        self.flags & Self::SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits, as logs show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent id as 16 lowercase hex digits.
    pub fn parent_id_hex(&self) -> String {
        hex(&self.parent_id)
    }

    /// The same trace as an AWS X-Ray trace header, the form of the SQS
    /// `AWSTraceHeader` system attribute:
    /// `Root=1-<first 8 hex of the trace id>-<other 24>;Parent=<parent id>;Sampled=<0|1>`.
    pub fn to_xray(&self) -> String {
        let trace = self.trace_id_hex();
        format!(
            "Root=1-{}-{};Parent={};Sampled={}",
            &trace[..8],
            &trace[8..],
            self.parent_id_hex(),
            u8::from(self.sampled())
        )
    }
}

fn decode_hex(digits: &[u8], out: &mut [u8]) -> Result<(), TraceparentError> {
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Ok(d - b'0'),
        b'a'..=b'f' => Ok(d - b'a' + 10),
        _ => Err(TraceparentError::NotHex),
    };
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            self.parent_id_hex(),
            self.flags
        )
    }
}

impl fmt::Debug for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Traceparent({self})")
    }
}

impl FromStr for Traceparent {
    type Err = TraceparentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Traceparent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Traceparent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A `tracestate` header value carried along unchanged: vendor-specific
/// trace data of the caller. At most [`Tracestate::MAX_LEN`] printable
/// ASCII characters (the specification's limit for propagation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Tracestate(String);

impl Tracestate {
    pub const MAX_LEN: usize = 512;

    /// `None` for an empty, too long or non-printable value: such a
    /// tracestate is dropped, as the specification allows.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let printable = s.bytes().all(|b| (0x20..=0x7e).contains(&b));
        (!s.is_empty() && s.len() <= Self::MAX_LEN && printable).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The trace context of an event: the `traceparent` of the span that
/// wrote it (the api's request) and the caller's `tracestate`, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceContext {
    pub traceparent: Traceparent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<Tracestate>,
}

impl TraceContext {
    pub fn new(traceparent: Traceparent) -> Self {
        Self {
            traceparent,
            tracestate: None,
        }
    }

    /// The context of the `traceparent` and `tracestate` header values:
    /// `None` when the traceparent is missing or invalid (its tracestate
    /// is then ignored, as the specification says).
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let traceparent = Traceparent::parse(traceparent?).ok()?;
        Some(Self {
            traceparent,
            tracestate: tracestate.and_then(Tracestate::parse),
        })
    }
}

/// The envelope's `trace`, read leniently: a trace context that is not
/// valid is dropped (`None`), never a reason to refuse the event. Trace
/// data only helps to follow an event; it must not hold one back.
pub(crate) fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TraceContext>, D::Error> {
    #[derive(Deserialize)]
    struct Raw {
        traceparent: String,
        tracestate: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        Raw(Raw),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Any>::deserialize(d)? {
        Some(Any::Raw(raw)) => {
            TraceContext::from_headers(Some(&raw.traceparent), raw.tracestate.as_deref())
        }
        Some(Any::Other(_)) | None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses_and_writes_back_the_same() {
        let parsed = Traceparent::parse(VALID).expect("valid");
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id_hex(), "00f067aa0ba902b7");
        assert!(parsed.sampled());
        assert_eq!(parsed.to_string(), VALID);
        let unsampled =
            Traceparent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid");
        assert!(!unsampled.sampled());
    }

    #[test]
    fn an_invalid_traceparent_is_refused_with_its_reason() {
        use TraceparentError::*;
        let cases = [
            ("", Shape),
            (&VALID[..54], Shape),
            (&format!("{VALID}-"), Shape),
            (&format!(" {}", &VALID[1..]), Version),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Version,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Version,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                Shape,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                NotHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                NotHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                NotHex,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ZeroParentId,
            ),
        ];
        for (value, reason) in cases {
            assert_eq!(Traceparent::parse(value), Err(reason), "{value:?}");
        }
    }

    #[test]
    fn the_xray_header_splits_the_trace_id_after_eight_digits() {
        let parsed = Traceparent::parse(VALID).expect("valid");
        assert_eq!(
            parsed.to_xray(),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        let unsampled = Traceparent::new(parsed.trace_id(), parsed.parent_id(), 0).expect("ids");
        assert!(unsampled.to_xray().ends_with(";Sampled=0"));
    }

    #[test]
    fn ids_of_zeros_make_no_traceparent() {
        assert!(Traceparent::new([0; 16], [1; 8], 1).is_none());
        assert!(Traceparent::new([1; 16], [0; 8], 1).is_none());
        assert!(Traceparent::new([1; 16], [1; 8], 1).is_some());
    }

    #[test]
    fn a_tracestate_rides_only_with_a_valid_traceparent() {
        let context = TraceContext::from_headers(Some(VALID), Some("congo=t61rcWkgMzE"))
            .expect("valid traceparent");
        assert_eq!(
            context.tracestate.as_ref().map(Tracestate::as_str),
            Some("congo=t61rcWkgMzE")
        );
        assert!(TraceContext::from_headers(Some("00-zz"), Some("congo=t61rcWkgMzE")).is_none());
        assert!(TraceContext::from_headers(None, Some("congo=t61rcWkgMzE")).is_none());
        let too_long = "a=".to_owned() + &"b".repeat(Tracestate::MAX_LEN);
        let dropped = TraceContext::from_headers(Some(VALID), Some(&too_long)).expect("valid");
        assert_eq!(dropped.tracestate, None);
        assert_eq!(Tracestate::parse("a=\u{e9}"), None);
    }
}
