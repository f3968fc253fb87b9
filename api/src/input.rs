//! From request body to [`NewSpending`].
//!
//! The body is not deserialized into a struct with `f64` fields: an amount
//! such as `0.1` must reach [`Amount::parse`] as the text the client wrote,
//! never as the nearest binary float. So the body is read into its members
//! as raw JSON text ([`RawValue`]) and each field is checked on its own,
//! which also lets the answer list every broken rule at once, and lets a
//! key that appears twice be rejected rather than silently take the last
//! value (what a derived `Deserialize` would do).
//!
//! Its errors are its own ([`InputError`]); the HTTP layer decides the
//! status of each (`ApiError`'s `From<InputError>`).

use std::collections::BTreeMap;
use std::fmt;

use obt_contract::{Amount, AmountError, Identity, PersonName};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The messages about each field of a request, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// One field's single message.
    pub fn single(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut errors = Self::new();
        errors.add(field, message);
        errors
    }

    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.entry(field.into()).or_default().push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The messages about `field`, if any.
    pub fn get(&self, field: &str) -> Option<&[String]> {
        self.0.get(field).map(Vec::as_slice)
    }
}

/// Why a request body is not a [`NewSpending`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Not JSON: not UTF-8, a byte order mark, a syntax error (the HTTP
    /// layer answers 400).
    #[error("the body is not JSON: {0:?}")]
    Malformed(FieldErrors),
    /// JSON that is not an object, or an object that breaks a rule; every
    /// broken rule is listed (the HTTP layer answers 422).
    #[error("the spending is invalid: {0:?}")]
    Invalid(FieldErrors),
}

/// A spending as the client asked for it, every field valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSpending {
    pub identity: Identity,
    pub name: PersonName,
    pub surname: PersonName,
    pub amount: Amount,
}

const IDENTITY: &str = "identity";
const NAME: &str = "name";
const SURNAME: &str = "surname";
const AMOUNT: &str = "amount";
const FIELDS: [&str; 4] = [IDENTITY, NAME, SURNAME, AMOUNT];

impl NewSpending {
    /// Parses and validates a request body.
    ///
    /// Not JSON (or not UTF-8) is [`InputError::Malformed`]; JSON that is
    /// not an object, or an object that breaks any rule, is
    /// [`InputError::Invalid`], listing every broken rule.
    pub fn from_json(body: &[u8]) -> Result<Self, InputError> {
        let malformed = |reason: String| InputError::Malformed(FieldErrors::single("body", reason));
        let text =
            std::str::from_utf8(body).map_err(|e| malformed(format!("is not valid UTF-8: {e}")))?;
        if text.starts_with('\u{feff}') {
            return Err(malformed(
                "must not start with a byte order mark (U+FEFF): send UTF-8 JSON without one"
                    .to_owned(),
            ));
        }
        // Checks the whole document's syntax before looking at its shape,
        // so that a syntax error anywhere is a 400, never a 422.
        let document: &RawValue =
            serde_json::from_str(text).map_err(|e| malformed(not_json(&e)))?;
        if !document.get().trim_start().starts_with('{') {
            return Err(InputError::Invalid(FieldErrors::single(
                "body",
                "must be a JSON object",
            )));
        }
        let Members(members) =
            serde_json::from_str(document.get()).map_err(|e| malformed(not_json(&e)))?;
        validate(members).map_err(InputError::Invalid)
    }
}

/// Why a body is not JSON, for the client. serde_json checks the syntax of
/// nested values without recursion, so however deep a body nests, reading
/// it cannot overflow the stack.
fn not_json(e: &serde_json::Error) -> String {
    format!("is not valid JSON: {e}")
}

fn validate(members: Vec<(String, &RawValue)>) -> Result<NewSpending, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut by_key: BTreeMap<String, Vec<&RawValue>> = BTreeMap::new();
    for (key, value) in members {
        by_key.entry(key).or_default().push(value);
    }
    for (key, values) in &by_key {
        if !FIELDS.contains(&key.as_str()) {
            errors.add(key.as_str(), "is not a known field");
        } else if values.len() > 1 {
            errors.add(key.as_str(), "must appear only once");
        }
    }
    // The one value of a known field, or None after recording why not.
    let mut single = |field: &str| -> Option<&RawValue> {
        match by_key.get(field).map(Vec::as_slice) {
            None => {
                errors.add(field, "is required");
                None
            }
            Some([value]) => Some(*value),
            Some(_) => None, // reported above
        }
    };
    let identity = single(IDENTITY);
    let name = single(NAME);
    let surname = single(SURNAME);
    let amount = single(AMOUNT);

    let identity = identity.and_then(|v| check(&mut errors, IDENTITY, v, Identity::parse));
    let name = name.and_then(|v| check(&mut errors, NAME, v, PersonName::parse));
    let surname = surname.and_then(|v| check(&mut errors, SURNAME, v, PersonName::parse));
    let amount = amount.and_then(|v| match parse_amount(v) {
        Ok(amount) => Some(amount),
        Err(message) => {
            errors.add(AMOUNT, message);
            None
        }
    });
    match (identity, name, surname, amount) {
        (Some(identity), Some(name), Some(surname), Some(amount)) if errors.is_empty() => {
            Ok(NewSpending {
                identity,
                name,
                surname,
                amount,
            })
        }
        _ => Err(errors),
    }
}

/// Parses a field that must be a JSON string with `parse`, recording the
/// error under `field`.
fn check<T, E: fmt::Display>(
    errors: &mut FieldErrors,
    field: &str,
    value: &RawValue,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Option<T> {
    let result = json_string(value)
        .unwrap_or_else(|| Err("must be a string".to_owned()))
        .and_then(|s| parse(&s).map_err(|e| e.to_string()));
    match result {
        Ok(value) => Some(value),
        Err(message) => {
            errors.add(field, message);
            None
        }
    }
}

/// The amount: a JSON number, whose text goes to [`Amount::parse`] as it
/// was written (in exponent notation, as its exact plain decimal: see
/// [`plain_decimal`]), or a JSON string holding a decimal (plain notation
/// only, as the contract says).
fn parse_amount(value: &RawValue) -> Result<Amount, String> {
    let text = value.get().trim();
    let starts_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    if starts_number {
        let plain = plain_decimal(text)?;
        Amount::parse(&plain).map_err(|e| e.to_string())
    } else if let Some(s) = json_string(value) {
        Amount::parse(&s?).map_err(|e| e.to_string())
    } else {
        Err("must be a number, or a string holding a decimal number such as \"51.30\"".to_owned())
    }
}

/// The text of a JSON number (already checked to be one) in plain decimal
/// notation: `6.79e+17` becomes `679000000000000000`, `1.5e-1` becomes
/// `0.15`. Exact: only digits move. JSON encoders choose the exponent
/// notation themselves (Python and JavaScript print large floats so), so it
/// says nothing about the value, which is then judged like any other. An
/// exponent that would need more than 40 digits on either side of the
/// point is refused without building the digits.
fn plain_decimal(text: &str) -> Result<std::borrow::Cow<'_, str>, String> {
    let Some(at) = text.find(['e', 'E']) else {
        return Ok(std::borrow::Cow::Borrowed(text));
    };
    let (mantissa, exponent) = (&text[..at], &text[at + 1..]);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(unsigned) => ("-", unsigned),
        None => ("", mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let Some(first) = digits.find(|c| c != '0') else {
        // Zero, whatever the exponent: the amount's own rule refuses it.
        return Ok(std::borrow::Cow::Owned(format!("{sign}0")));
    };
    let last = digits.rfind(|c| c != '0').unwrap_or(first);
    let significant = &digits[first..=last];
    // An exponent beyond i64 is beyond any bound below as well.
    let exponent: i64 = exponent.parse().unwrap_or(if exponent.starts_with('-') {
        i64::MIN / 4
    } else {
        i64::MAX / 4
    });
    let length = i64::try_from(significant.len()).unwrap_or(i64::MAX / 4);
    let offset =
        i64::try_from(int.len()).unwrap_or(i64::MAX / 4) - i64::try_from(first).unwrap_or(0);
    // The point's position counted from the first significant digit.
    let point = offset.saturating_add(exponent);
    if point > 40 {
        return Err(AmountError::TooManyIntegerDigits.to_string());
    }
    if point - length < -40 {
        return Err(AmountError::TooManyFractionDigits.to_string());
    }
    let plain = if point >= length {
        let zeros = "0".repeat(usize::try_from(point - length).unwrap_or(0));
        format!("{sign}{significant}{zeros}")
    } else if point <= 0 {
        let zeros = "0".repeat(usize::try_from(-point).unwrap_or(0));
        format!("{sign}0.{zeros}{significant}")
    } else {
        let (int, frac) = significant.split_at(usize::try_from(point).unwrap_or(0));
        format!("{sign}{int}.{frac}")
    };
    Ok(std::borrow::Cow::Owned(plain))
}

/// The text of a JSON string value; `None` for any other JSON type. The
/// syntax is already checked, so a string fails to decode only when it
/// escapes half of a UTF-16 surrogate pair, which no Rust (or UTF-8)
/// string can hold.
fn json_string(value: &RawValue) -> Option<Result<String, String>> {
    if value.get().trim_start().starts_with('"') {
        Some(serde_json::from_str(value.get()).map_err(|_| {
            "is not a valid JSON string: it holds an unpaired surrogate escape \
             (\\uD800 to \\uDFFF)"
                .to_owned()
        }))
    } else {
        None
    }
}

/// A JSON object's members in document order, duplicate keys kept.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(body: &str) -> FieldErrors {
        match NewSpending::from_json(body.as_bytes()) {
            Err(InputError::Invalid(errors)) => errors,
            other => panic!("{body}: expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_body_keeps_the_amount_exact() {
        let body = r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":0.1}"#;
        let spending = NewSpending::from_json(body.as_bytes()).expect("valid");
        assert_eq!(spending.amount.to_string(), "0.10");
        assert_eq!(spending.identity.as_str(), "AB1");
    }

    #[test]
    fn numbers_in_exponent_notation_are_read_as_their_exact_value() {
        let cases = [
            ("1e3", Ok("1000")),
            ("1.5E+3", Ok("1500")),
            ("6.7902384220095e+17", Ok("679023842200950000")),
            ("1.5e-1", Ok("0.15")),
            ("15e-2", Ok("0.15")),
            ("0.0015e2", Ok("0.15")),
            ("1.230e0", Ok("1.23")),
            ("-2e1", Ok("-20")),
            ("0e9", Ok("0")),
            ("1e41", Err(AmountError::TooManyIntegerDigits)),
            (
                "1e99999999999999999999",
                Err(AmountError::TooManyIntegerDigits),
            ),
            ("1e-41", Err(AmountError::TooManyFractionDigits)),
            (
                "1e-99999999999999999999",
                Err(AmountError::TooManyFractionDigits),
            ),
            ("51.30", Ok("51.30")),
        ];
        for (text, expected) in cases {
            let got = plain_decimal(text);
            let expected = expected.map(str::to_owned).map_err(|e| e.to_string());
            assert_eq!(got.map(|c| c.into_owned()), expected, "{text}");
        }
        let amount = |json: &str| {
            let body = format!(r#"{{"identity":"AB1","name":"M","surname":"R","amount":{json}}}"#);
            NewSpending::from_json(body.as_bytes()).map(|s| s.amount.to_string())
        };
        assert_eq!(amount("1.5e3").expect("valid"), "1500.00");
        assert_eq!(amount("1e-2").expect("valid"), "0.01");
        assert!(amount("1e-3").is_err(), "three fraction digits");
        assert!(amount("1e18").is_err(), "nineteen integer digits");
        assert!(amount("\"1e3\"").is_err(), "strings stay in plain notation");
    }

    #[test]
    fn every_broken_rule_is_reported_at_once() {
        let errors = errors_of(r#"{"identity":"","name":1,"amount":-1,"extra":true}"#);
        assert_eq!(
            errors.get("identity"),
            Some(&["must not be empty".to_owned()][..])
        );
        assert_eq!(
            errors.get("name"),
            Some(&["must be a string".to_owned()][..])
        );
        assert_eq!(errors.get("surname"), Some(&["is required".to_owned()][..]));
        assert_eq!(
            errors.get("amount"),
            Some(&["must be greater than zero".to_owned()][..])
        );
        assert_eq!(
            errors.get("extra"),
            Some(&["is not a known field".to_owned()][..])
        );
    }

    #[test]
    fn a_key_given_twice_is_rejected_whatever_its_values() {
        let errors =
            errors_of(r#"{"identity":"AB1","name":"A","name":"A","surname":"Robi","amount":1}"#);
        assert_eq!(
            errors.get("name"),
            Some(&["must appear only once".to_owned()][..])
        );
    }

    #[test]
    fn escaped_keys_are_compared_after_unescaping() {
        let errors = errors_of(
            r#"{"identity":"AB1","na\u006de":"A","name":"B","surname":"Robi","amount":1}"#,
        );
        assert_eq!(
            errors.get("name"),
            Some(&["must appear only once".to_owned()][..])
        );
    }

    #[test]
    fn syntax_errors_are_bad_requests_even_after_valid_members() {
        let body = r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":1,}"#;
        assert!(matches!(
            NewSpending::from_json(body.as_bytes()),
            Err(InputError::Malformed(_))
        ));
        assert!(matches!(
            NewSpending::from_json(b"\xff"),
            Err(InputError::Malformed(_))
        ));
        assert!(matches!(
            NewSpending::from_json(b"{} {}"),
            Err(InputError::Malformed(_))
        ));
    }
}
