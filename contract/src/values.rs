//! Validated value types. Each has a `parse` constructor that is the only
//! way to build one, and deserializes through it, so a decoded message is
//! validated exactly like an HTTP request.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The aggregate key: who the spending belongs to.
///
/// It becomes the SQS `MessageGroupId`, so it is restricted to 1-64
/// characters of `[A-Za-z0-9._:-]`, a subset of what SQS accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(String);

/// Why a string is not an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters long", max = Identity::MAX_LEN)]
    TooLong,
    #[error("may contain only letters A-Z and a-z, digits and . _ : -")]
    InvalidCharacter,
}

impl Identity {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        if s.is_empty() {
            return Err(IdentityError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(IdentityError::TooLong);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if !s.chars().all(allowed) {
            return Err(IdentityError::InvalidCharacter);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A first name or a surname: 1-100 characters, none of them a control
/// character or a Unicode noncharacter.
///
/// Noncharacters (U+FDD0..=U+FDEF, and U+xFFFE and U+xFFFF in every plane)
/// are refused because SQS refuses U+FFFE and U+FFFF in a message body, and
/// the others are reserved for a program's internal use: none of them is
/// part of anybody's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PersonName(String);

/// Why a string is not a [`PersonName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters long", max = PersonName::MAX_CHARS)]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error(
        "must not contain Unicode noncharacters such as U+FFFF (U+FDD0 to U+FDEF, \
         and U+FFFE and U+FFFF in every plane)"
    )]
    Noncharacter,
}

impl PersonName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(NameError::TooLong);
        }
        if s.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        if s.chars().any(is_noncharacter) {
            return Err(NameError::Noncharacter);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` is one of Unicode's 66 noncharacters: U+FDD0..=U+FDEF, and
/// the last two code points of each of the 17 planes.
fn is_noncharacter(c: char) -> bool {
    let code = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
}

/// A positive amount of money with at most 2 fraction digits and at most 18
/// integer digits (the original `DECIMAL(20,2)`).
///
/// It is parsed from its decimal text, never from a float, and always
/// printed with exactly two fraction digits (`"51.30"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(Decimal);

/// Why a text is not an [`Amount`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal number such as 51.30")]
    NotANumber,
    #[error("must be written without an exponent, such as 1500.00 rather than 1.5e3")]
    Exponent,
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must have at most {max} fraction digits", max = Amount::MAX_FRACTION_DIGITS)]
    TooManyFractionDigits,
    #[error("must have at most {max} integer digits", max = Amount::MAX_INTEGER_DIGITS)]
    TooManyIntegerDigits,
}

impl Amount {
    pub const MAX_FRACTION_DIGITS: usize = 2;
    pub const MAX_INTEGER_DIGITS: usize = 18;

    /// Parses the plain decimal notation `[-+]digits[.digits]`, the text of
    /// a JSON number or of a string. The sign is accepted only to be
    /// rejected with a clear message when it makes the amount non-positive.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        if text.contains(['e', 'E']) {
            return Err(AmountError::Exponent);
        }
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (int, frac) = match unsigned.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (unsigned, None),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || !all_digits(int)
            || frac.is_some_and(|f| f.is_empty() || !all_digits(f))
        {
            return Err(AmountError::NotANumber);
        }
        if frac.map_or(0, str::len) > Self::MAX_FRACTION_DIGITS {
            return Err(AmountError::TooManyFractionDigits);
        }
        if int.trim_start_matches('0').len() > Self::MAX_INTEGER_DIGITS {
            return Err(AmountError::TooManyIntegerDigits);
        }
        // At most 18 + 2 digits: well inside Decimal's 28.
        let value = Decimal::from_str(unsigned).map_err(|_| AmountError::NotANumber)?;
        if negative || value.is_zero() {
            return Err(AmountError::NotPositive);
        }
        let mut value = value;
        value.rescale(Self::MAX_FRACTION_DIGITS as u32);
        Ok(Self(value))
    }

    pub fn value(&self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always scale 2, see `parse`.
        write!(f, "{}", self.0)
    }
}

macro_rules! string_serde {
    ($ty:ty, $as_str:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&$as_str(self))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$ty>::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_serde!(Identity, Identity::as_str);
string_serde!(PersonName, PersonName::as_str);

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Amount::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_follow_the_message_group_id_rules() {
        let cases: &[(&str, Result<(), IdentityError>)] = &[
            ("AB1", Ok(())),
            ("a.b_c:d-e", Ok(())),
            (&"x".repeat(64), Ok(())),
            ("", Err(IdentityError::Empty)),
            (&"x".repeat(65), Err(IdentityError::TooLong)),
            ("AB 1", Err(IdentityError::InvalidCharacter)),
            ("AB/1", Err(IdentityError::InvalidCharacter)),
            ("ÄB1", Err(IdentityError::InvalidCharacter)),
            ("AB1\n", Err(IdentityError::InvalidCharacter)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Identity::parse(input).map(|_| ()),
                *expected,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn names_are_1_to_100_characters_without_control_characters() {
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("Martin", Ok(())),
            ("Jean-Luc O'Neil", Ok(())),
            (&"é".repeat(100), Ok(())),
            ("", Err(NameError::Empty)),
            (&"é".repeat(101), Err(NameError::TooLong)),
            ("Mar\ttin", Err(NameError::ControlCharacter)),
            ("Mar\u{7f}tin", Err(NameError::ControlCharacter)),
            ("Mar\u{85}tin", Err(NameError::ControlCharacter)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                PersonName::parse(input).map(|_| ()),
                *expected,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn names_refuse_every_unicode_noncharacter_and_nothing_next_to_them() {
        let noncharacters = (0xFDD0..=0xFDEF)
            .chain((0..=0x10).flat_map(|plane| [(plane << 16) | 0xFFFE, (plane << 16) | 0xFFFF]));
        let mut refused = 0;
        for code in noncharacters {
            let c = char::from_u32(code).expect("a scalar value");
            for input in [c.to_string(), format!("a{c}"), format!("Mar{c}tin")] {
                assert_eq!(
                    PersonName::parse(&input),
                    Err(NameError::Noncharacter),
                    "U+{code:04X} in {input:?}"
                );
            }
            refused += 1;
        }
        assert_eq!(refused, 66, "Unicode has 66 noncharacters");
        // Their neighbours, and the other characters above U+FFFF, are fine.
        for name in [
            "\u{FDCF}",
            "\u{FDF0}",
            "\u{FFFD}",
            "\u{1FFFD}",
            "\u{10FFFD}",
            "\u{20000}",
            "Zoë 李 😀",
        ] {
            assert!(PersonName::parse(name).is_ok(), "{name:?} was refused");
        }
    }

    #[test]
    fn amounts_are_positive_decimals_with_two_fraction_digits_at_most() {
        let ok: &[(&str, &str)] = &[
            ("51.3", "51.30"),
            ("51.30", "51.30"),
            ("0.01", "0.01"),
            ("7", "7.00"),
            ("+7", "7.00"),
            ("007.5", "7.50"),
            ("999999999999999999.99", "999999999999999999.99"),
        ];
        for (input, printed) in ok {
            let amount = Amount::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(amount.to_string(), *printed);
        }
        let rejected: &[(&str, AmountError)] = &[
            ("0", AmountError::NotPositive),
            ("0.00", AmountError::NotPositive),
            ("-0", AmountError::NotPositive),
            ("-1.5", AmountError::NotPositive),
            ("1.234", AmountError::TooManyFractionDigits),
            ("1.000", AmountError::TooManyFractionDigits),
            ("1000000000000000000", AmountError::TooManyIntegerDigits),
            ("1e3", AmountError::Exponent),
            ("1.5E+2", AmountError::Exponent),
            ("", AmountError::NotANumber),
            ("abc", AmountError::NotANumber),
            ("1.", AmountError::NotANumber),
            (".5", AmountError::NotANumber),
            ("1,5", AmountError::NotANumber),
            ("NaN", AmountError::NotANumber),
            ("Infinity", AmountError::NotANumber),
            (" 1", AmountError::NotANumber),
            ("--1", AmountError::NotANumber),
        ];
        for (input, expected) in rejected {
            assert_eq!(
                Amount::parse(input),
                Err(expected.clone()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn amounts_serialize_as_two_digit_strings() {
        let amount = Amount::parse("51.3").expect("valid");
        assert_eq!(
            serde_json::to_string(&amount).expect("serializes"),
            r#""51.30""#
        );
        let back: Amount = serde_json::from_str(r#""51.30""#).expect("parses");
        assert_eq!(back, amount);
        assert!(serde_json::from_str::<Amount>(r#""-1""#).is_err());
    }
}
