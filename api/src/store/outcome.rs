//! What the store answers for a recorded spending ([`StoredOutcome`]), and
//! how it is kept in an Idempotency-Key record to be answered again. The
//! HTTP layer makes its response from it, so a change of the response
//! never changes what is stored, and a record stays readable by later
//! builds (docs/ARCHITECTURE.md, "Idempotency-Key").

use obt_contract::{Amount, Envelope, EventId, Identity, PersonName};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A recorded spending: its event's id, identity, seq, payload and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    pub event_id: EventId,
    pub identity: Identity,
    pub seq: u64,
    pub name: PersonName,
    pub surname: PersonName,
    pub amount: Amount,
    /// When the event occurred (the envelope's `occurred_at`).
    pub occurred_at: OffsetDateTime,
}

impl From<&Envelope> for StoredOutcome {
    fn from(e: &Envelope) -> Self {
        Self {
            event_id: e.event_id,
            identity: e.identity.clone(),
            seq: e.seq,
            name: e.data.name.clone(),
            surname: e.data.surname.clone(),
            amount: e.data.amount,
            occurred_at: e.occurred_at,
        }
    }
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded now.
    Recorded(StoredOutcome),
    /// Recorded by an earlier request with the same Idempotency-Key and
    /// fingerprint: its outcome, nothing written now.
    Replayed(StoredOutcome),
}

/// A [`StoredOutcome`] as an Idempotency-Key record holds it: the text of
/// the record's `response_body` and `response_location` (the names of
/// `migrations/mysql/api/0002_idempotency.sql` and of the DynamoDB
/// attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredText {
    pub body: String,
    pub location: String,
}

/// Why a stored record cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the stored outcome is not a version-{VERSION} record: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "the stored outcome is version {0}, written by a newer build than this one (which reads \
         version {VERSION}): deploy that build again"
    )]
    UnknownVersion(u64),
}

/// The version this build writes and reads.
///
/// Version 1 is the layout every earlier build wrote (the 201 body and its
/// Location), and it is the one written still: earlier builds replay a
/// record's text as it is, so a rollback keeps answering correctly the
/// keys this build stored. Its body has no `version` member; a later
/// version adds one (a number), and must be deployed after a build that
/// reads it.
pub const VERSION: u64 = 1;

/// The body of a version-1 record. Its member names and order are the
/// stored format, fixed: they must not follow the response type's.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct V1 {
    /// Absent in what this build writes; 1 if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    event_id: EventId,
    identity: Identity,
    seq: u64,
    name: PersonName,
    surname: PersonName,
    amount: Amount,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// Where a version-1 record points: what earlier builds send as the
/// `Location` of a replay.
const V1_LOCATION: &str = "/api/v1/spending/";

/// Just the version of a stored body (absent: 1).
#[derive(Deserialize)]
struct Version {
    version: Option<u64>,
}

impl StoredOutcome {
    /// The text of a record of this outcome.
    pub fn encode(&self) -> Result<StoredText, serde_json::Error> {
        let body = serde_json::to_string(&V1 {
            version: None,
            event_id: self.event_id,
            identity: self.identity.clone(),
            seq: self.seq,
            name: self.name.clone(),
            surname: self.surname.clone(),
            amount: self.amount,
            created_at: self.occurred_at,
        })?;
        Ok(StoredText {
            body,
            location: format!("{V1_LOCATION}{}", self.identity),
        })
    }

    /// The outcome a record's `response_body` holds. (Its
    /// `response_location` says nothing the body does not.)
    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        match serde_json::from_str::<Version>(body)?.version {
            None | Some(VERSION) => {}
            Some(other) => return Err(DecodeError::UnknownVersion(other)),
        }
        let v1: V1 = serde_json::from_str(body)?;
        Ok(Self {
            event_id: v1.event_id,
            identity: v1.identity,
            seq: v1.seq,
            name: v1.name,
            surname: v1.surname,
            amount: v1.amount,
            occurred_at: v1.created_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the builds before this type stored it: the 201 body of
    /// `routes::spending::Recorded` and the Location.
    const RECORD_BODY: &str = r#"{"event_id":"0193b7c4-5f6e-7a1b-8c2d-3e4f5a6b7c8d","identity":"AB1","seq":7,"name":"Mártin \"M\"","surname":"Robi","amount":"51.30","created_at":"2026-11-03T10:15:42.123Z"}"#;
    const RECORD_LOCATION: &str = "/api/v1/spending/AB1";

    #[test]
    fn a_record_of_the_earlier_builds_is_read_and_written_back_the_same() {
        let outcome = StoredOutcome::decode(RECORD_BODY).expect("readable");
        assert_eq!(outcome.identity.as_str(), "AB1");
        assert_eq!(outcome.seq, 7);
        assert_eq!(outcome.name.as_str(), "Mártin \"M\"");
        assert_eq!(outcome.amount.to_string(), "51.30");
        assert_eq!(
            outcome.event_id.to_string(),
            "0193b7c4-5f6e-7a1b-8c2d-3e4f5a6b7c8d"
        );
        assert_eq!(outcome.occurred_at.unix_timestamp(), 1_793_700_942);
        // Written as they wrote it, so that they can replay it as it is.
        assert_eq!(
            outcome.encode().expect("encodable"),
            StoredText {
                body: RECORD_BODY.to_owned(),
                location: RECORD_LOCATION.to_owned(),
            }
        );
    }

    #[test]
    fn a_version_member_is_read_and_a_newer_version_refused() {
        let explicit = RECORD_BODY.replacen('{', r#"{"version":1,"#, 1);
        assert_eq!(
            StoredOutcome::decode(&explicit).expect("version 1"),
            StoredOutcome::decode(RECORD_BODY).expect("version 1")
        );
        let newer = RECORD_BODY.replacen('{', r#"{"version":2,"#, 1);
        let error = StoredOutcome::decode(&newer).expect_err("unknown");
        assert!(matches!(error, DecodeError::UnknownVersion(2)), "{error}");
        assert!(error.to_string().contains("newer build"), "{error}");
    }

    #[test]
    fn a_record_that_is_not_version_1_is_malformed() {
        for body in [
            "",
            "[]",
            r#"{"event_id":"x"}"#,
            &RECORD_BODY.replace("created_at", "occurred_at"),
            &RECORD_BODY.replace(r#""seq":7"#, r#""seq":7,"extra":1"#),
            &RECORD_BODY.replace("51.30", "-1"),
        ] {
            assert!(
                matches!(StoredOutcome::decode(body), Err(DecodeError::Malformed(_))),
                "{body}"
            );
        }
    }
}
