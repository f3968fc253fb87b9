//! The `Idempotency-Key` request header of `POST /api/v1/spending`
//! (IETF draft "The Idempotency-Key HTTP Header Field",
//! draft-ietf-httpapi-idempotency-key-header).
//!
//! - The header is optional. A key is 1 to 255 characters of visible ASCII
//!   (0x21 to 0x7E), taken as it is (the quotes of the draft's
//!   structured-field form, if sent, are part of the key); anything else is
//!   a 400.
//! - The request's [`Fingerprint`] is the SHA-256 of the *validated,
//!   canonical* spending, not of the body's bytes: `51.3`, `"51.30"` and
//!   `51.30` are one amount, and the order of the members or the
//!   whitespace do not matter. So two bodies that would record the same
//!   spending are the same request.
//! - The first successful (201) request with a key stores the key, the
//!   fingerprint and what was recorded (the store's own
//!   [`StoredOutcome`](crate::store::StoredOutcome), not the response) in
//!   the same atomic write as the spending and its event; a retry with the
//!   same key and fingerprint gets the same answer again, with
//!   `Idempotent-Replayed: true`, and records nothing. The same key with
//!   another fingerprint is a 422. Failures (4xx, 503) store nothing, so
//!   a retry after them may succeed.
//! - A key expires `OBT_IDEMPOTENCY_TTL_SECS` after its first use; then it
//!   may be used again, for any request.
//!
//! - With authentication, keys are the caller's own: the key is stored
//!   scoped to the [`Principal`] ([`IdempotencyKey::scoped_to`]), so two
//!   callers that pick the same key never see each other's answers.
//!
//! How each backend stores the key is in [`crate::store`].

use std::time::Duration;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::input::NewSpending;

/// The request header.
pub const HEADER: &str = "Idempotency-Key";
/// The response header of a replayed answer.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";
/// The longest key accepted, in characters (bytes: they are ASCII).
pub const MAX_LEN: usize = 255;
/// How long a key is kept by default: one day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(86_400);

/// The message of every invalid key.
pub const INVALID_KEY: &str = "must be 1 to 255 visible ASCII characters (0x21 to 0x7E: no spaces, \
     no control or non-ASCII characters), sent once";
/// The message of a key already used for another request.
pub const KEY_REUSED: &str = "was already used for a different request";

/// The header is not one valid key: [`INVALID_KEY`] (the HTTP layer
/// answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Idempotency-Key header {INVALID_KEY}")]
pub struct InvalidKey;

/// A valid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a header value, if it is one.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let valid =
            (1..=MAX_LEN).contains(&value.len()) && value.iter().all(|b| (0x21..=0x7e).contains(b));
        // Visible ASCII is UTF-8.
        valid.then(|| Self(String::from_utf8_lossy(value).into_owned()))
    }

    /// The request's key: `None` without the header, [`InvalidKey`] when
    /// it is invalid or sent more than once.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, InvalidKey> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(InvalidKey);
        }
        Self::parse(value.as_bytes()).map(Some).ok_or(InvalidKey)
    }

    /// The key as stored for `principal`: [`SCOPED_PREFIX`] and the
    /// SHA-256 (hex) of the principal's length, the principal and the key.
    /// The space of the prefix is never part of a key a client sends, so a
    /// scoped key cannot equal an unscoped one; it fits the stores' 255
    /// characters whatever the principal's length, and keeps principals
    /// out of the idempotency records.
    pub fn scoped_to(self, principal: &Principal) -> Self {
        let principal = principal.as_str().as_bytes();
        let mut hasher = Sha256::new();
        hasher.update((principal.len() as u64).to_be_bytes());
        hasher.update(principal);
        hasher.update(self.0.as_bytes());
        Self(format!("{SCOPED_PREFIX}{}", hex(&hasher.finalize())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The beginning of a key scoped to a principal.
pub const SCOPED_PREFIX: &str = "principal-sha256 ";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a validated spending in canonical form, as 64 lowercase
/// hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The canonical form is the JSON array `[identity, name, surname,
    /// amount]` of strings, the amount with exactly two fraction digits
    /// (`"51.30"`): unambiguous whatever the fields contain.
    pub fn of(spending: &NewSpending) -> Self {
        let amount = spending.amount.to_string();
        let canonical = serde_json::json!([
            spending.identity.as_str(),
            spending.name.as_str(),
            spending.surname.as_str(),
            amount,
        ]);
        Self(hex(&Sha256::digest(canonical.to_string().as_bytes())))
    }

    /// A fingerprint read back from the store.
    pub fn stored(hex: impl Into<String>) -> Self {
        Self(hex.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request with a key: what the store needs to make its write
/// idempotent.
#[derive(Debug, Clone)]
pub struct KeyedRequest {
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
}

/// Whether a write is made idempotent: chosen once per request, from its
/// `Idempotency-Key` header.
#[derive(Debug, Clone)]
pub enum Idempotency {
    /// No key: the spending is recorded, whatever came before.
    Unkeyed,
    /// A key: recorded once; a retry gets the first request's outcome.
    Keyed(KeyedRequest),
}

impl Idempotency {
    /// The choice of a request with `key` (or none) for `spending`.
    pub fn of(key: Option<IdempotencyKey>, spending: &NewSpending) -> Self {
        match key {
            None => Self::Unkeyed,
            Some(key) => Self::Keyed(KeyedRequest {
                key,
                fingerprint: Fingerprint::of(spending),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn spending(body: &str) -> NewSpending {
        NewSpending::from_json(body.as_bytes()).expect("valid")
    }

    #[test]
    fn keys_are_1_to_255_visible_ascii_characters() {
        assert!(IdempotencyKey::parse(b"a").is_some());
        assert!(IdempotencyKey::parse(&[b'!'; 255]).is_some());
        assert!(IdempotencyKey::parse(b"\"8e03978e-40d5\"").is_some());
        for bad in [
            &b""[..],
            &[b'a'; 256][..],
            b"a b",
            b"a\tb",
            b"\x7f",
            "é".as_bytes(),
        ] {
            assert_eq!(IdempotencyKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_key_sent_twice_is_refused() {
        let mut headers = HeaderMap::new();
        headers.append(HEADER, HeaderValue::from_static("k1"));
        headers.append(HEADER, HeaderValue::from_static("k1"));
        assert_eq!(IdempotencyKey::from_headers(&headers), Err(InvalidKey));
        // Answered 400 under the header's name.
        let error = crate::ApiError::from(InvalidKey);
        assert_eq!(error.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(matches!(
            error,
            crate::ApiError::BadRequest(errors) if errors.get(HEADER) == Some(&[INVALID_KEY.to_owned()][..])
        ));
    }

    #[test]
    fn scoped_keys_differ_per_principal_and_never_equal_a_sent_key() {
        let key = || IdempotencyKey::parse(b"k-1").expect("valid");
        let alice = key().scoped_to(&Principal::new("alice"));
        let bob = key().scoped_to(&Principal::new("bob"));
        assert_ne!(alice, bob);
        assert_eq!(alice, key().scoped_to(&Principal::new("alice")));
        assert!(alice.as_str().starts_with(SCOPED_PREFIX));
        assert!(alice.as_str().len() <= MAX_LEN);
        assert_eq!(IdempotencyKey::parse(alice.as_str().as_bytes()), None);
        // The principal's end and the key's start cannot be swapped.
        let a = IdempotencyKey::parse(b"bc").expect("valid");
        let b = IdempotencyKey::parse(b"c").expect("valid");
        assert_ne!(
            a.scoped_to(&Principal::new("a")),
            b.scoped_to(&Principal::new("ab"))
        );
    }

    #[test]
    fn the_fingerprint_is_of_the_canonical_spending() {
        let a = spending(r#"{"identity":"AB1","name":"M","surname":"R","amount":51.3}"#);
        let b = spending(r#"{"amount":"51.30", "surname":"R","name":"M","identity":"AB1"}"#);
        let c = spending(r#"{"identity":"AB1","name":"M","surname":"R","amount":51.31}"#);
        assert_eq!(Fingerprint::of(&a), Fingerprint::of(&b));
        assert_ne!(Fingerprint::of(&a), Fingerprint::of(&c));
        assert_eq!(Fingerprint::of(&a).as_str().len(), 64);
        // Fields cannot run into each other.
        let d = spending(r#"{"identity":"AB1","name":"M R","surname":"X","amount":1}"#);
        let e = spending(r#"{"identity":"AB1","name":"M","surname":"R X","amount":1}"#);
        assert_ne!(Fingerprint::of(&d), Fingerprint::of(&e));
    }
}
