//! The attributes of the aggregate item, and reading them back.
//!
//! One item per identity (partition key `identity`):
//!
//! | attribute    | type | meaning                                              |
//! |--------------|------|------------------------------------------------------|
//! | `identity`   | S    | the partition key                                    |
//! | `name`       | S    | the name given by the last spending                  |
//! | `surname`    | S    | the surname given by the last spending               |
//! | `total`      | N    | the exact sum of the amounts                         |
//! | `count`      | N    | how many spendings were recorded                     |
//! | `version`    | N    | the seq of the last event: the concurrency token     |
//! | `outbox`     | M    | seq (decimal text) -> envelope, not yet published    |
//! | `updated_at` | S    | RFC 3339 time of the last event                      |
//! | `pending_since` | N | epoch ms of the oldest event maybe pending; absent when the outbox is empty (sparse index key) |
//! | `pending_bucket` | N | partition of the sparse index `pending`, fixed per identity |
//!
//! `identity`, `version` and `outbox` are the names in
//! [`obt_contract::outbox`], which the relay reads too.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;
use rust_decimal::Decimal;

pub use obt_contract::outbox::{IDENTITY_ATTR, OUTBOX_ATTR, VERSION_ATTR};

pub const NAME_ATTR: &str = "name";
pub const SURNAME_ATTR: &str = "surname";
pub const TOTAL_ATTR: &str = "total";
pub const COUNT_ATTR: &str = "count";
pub const UPDATED_AT_ATTR: &str = "updated_at";

pub type Item = HashMap<String, AttributeValue>;

/// A string attribute.
pub fn string<'a>(item: &'a Item, attr: &str) -> Result<&'a str, String> {
    match item.get(attr) {
        Some(AttributeValue::S(s)) => Ok(s),
        Some(other) => Err(format!("{attr} is not a string: {other:?}")),
        None => Err(format!("{attr} is missing")),
    }
}

/// A number attribute as an integer.
pub fn integer<T: FromStr>(item: &Item, attr: &str) -> Result<T, String> {
    let text = number_text(item, attr)?;
    text.parse()
        .map_err(|_| format!("{attr} is not a whole number: {text}"))
}

/// A number attribute as an exact decimal.
pub fn decimal(item: &Item, attr: &str) -> Result<Decimal, String> {
    let text = number_text(item, attr)?;
    Decimal::from_str(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|e| format!("{attr} is not a decimal within range: {text}: {e}"))
}

/// How many entries a map attribute has; a missing map has none.
pub fn map_len(item: &Item, attr: &str) -> Result<usize, String> {
    match item.get(attr) {
        Some(AttributeValue::M(map)) => Ok(map.len()),
        Some(other) => Err(format!("{attr} is not a map: {other:?}")),
        None => Ok(0),
    }
}

fn number_text<'a>(item: &'a Item, attr: &str) -> Result<&'a str, String> {
    match item.get(attr) {
        Some(AttributeValue::N(n)) => Ok(n),
        Some(other) => Err(format!("{attr} is not a number: {other:?}")),
        None => Err(format!("{attr} is missing")),
    }
}
