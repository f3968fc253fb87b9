//! One message: what a sender gives (checked as SendMessage checks it,
//! <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html>),
//! what the queue keeps about it, and the snapshot tests read.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::error::{Code, ModelError};

/// A user message attribute: `String`, `Number` (in `string_value`) or
/// `Binary` (base64 in `binary_value`, as the JSON protocol carries it),
/// optionally with a custom type suffix (`Number.int`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageAttribute {
    pub data_type: String,
    pub string_value: Option<String>,
    pub binary_value: Option<String>,
}

impl MessageAttribute {
    pub fn string(value: impl Into<String>) -> Self {
        Self {
            data_type: "String".to_owned(),
            string_value: Some(value.into()),
            binary_value: None,
        }
    }

    fn size(&self, name: &str) -> usize {
        name.len()
            + self.data_type.len()
            + self.string_value.as_ref().map_or(0, String::len)
            + self.binary_value.as_ref().map_or(0, String::len)
    }
}

/// A message as a sender hands it to SendMessage or SendMessageBatch.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub body: String,
    pub group: Option<String>,
    pub deduplication_id: Option<String>,
    pub attributes: BTreeMap<String, MessageAttribute>,
    pub delay_seconds: Option<i64>,
    /// The `AWSTraceHeader` message system attribute (the only one SQS
    /// takes): an X-Ray trace header. It does not count against the size
    /// limits ("The size of a message system attribute doesn't count
    /// towards the total size of a message", SendMessage).
    pub trace_header: Option<String>,
}

impl Outgoing {
    /// Checks the message as SQS does; returns its group and deduplication id.
    pub fn validate(&self, maximum_size: usize) -> Result<(String, String), ModelError> {
        if !self.body.chars().all(allowed) {
            return Err(ModelError::new(
                Code::InvalidMessageContents,
                "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF",
            ));
        }
        if self.body.is_empty() {
            return Err(ModelError::missing("MessageBody"));
        }
        self.validate_attributes()?;
        if let Some(header) = &self.trace_header {
            if !is_xray_header(header) {
                return Err(ModelError::invalid(format!(
                    "The message system attribute AWSTraceHeader value '{header}' is not a valid X-Ray trace header."
                )));
            }
        }
        if self.size() > maximum_size {
            return Err(ModelError::invalid(format!(
                "One or more parameters are invalid. Reason: Message must be shorter than {maximum_size} bytes."
            )));
        }
        let group = self
            .group
            .clone()
            .ok_or_else(|| ModelError::missing("MessageGroupId"))?;
        fifo_id("MessageGroupId", &group)?;
        if self.delay_seconds.is_some_and(|d| d != 0) {
            return Err(ModelError::invalid(
                "Value for parameter DelaySeconds is invalid. Reason: The request include parameter that is not valid for this queue type.",
            ));
        }
        let deduplication_id = self.deduplication_id.clone().ok_or_else(|| {
            ModelError::invalid("The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly")
        })?;
        fifo_id("MessageDeduplicationId", &deduplication_id)?;
        Ok((group, deduplication_id))
    }

    /// What counts against the size limits: the body and the attributes'
    /// names, types and values.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(n, a)| a.size(n))
                .sum::<usize>()
    }

    fn validate_attributes(&self) -> Result<(), ModelError> {
        if self.attributes.len() > 10 {
            return Err(ModelError::invalid(format!(
                "Number of message attributes [{}] exceeds the allowed maximum [10].",
                self.attributes.len()
            )));
        }
        for (name, attribute) in &self.attributes {
            let reserved = ["aws.", "amazon."]
                .iter()
                .any(|p| name.to_ascii_lowercase().starts_with(p));
            let well_formed = (1..=256).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                && !name.starts_with('.')
                && !name.ends_with('.')
                && !name.contains("..");
            if reserved || !well_formed {
                return Err(ModelError::invalid(format!(
                    "Message attribute name '{name}' is invalid."
                )));
            }
            let base = attribute.data_type.split('.').next().unwrap_or_default();
            let value_ok = match base {
                "String" => attribute
                    .string_value
                    .as_deref()
                    .is_some_and(|v| v.chars().all(allowed)),
                "Number" => attribute.string_value.as_deref().is_some_and(is_number),
                "Binary" => attribute.binary_value.is_some(),
                _ => false,
            };
            if !value_ok {
                return Err(ModelError::invalid(format!(
                    "The message attribute '{name}' has an invalid value or data type {}.",
                    attribute.data_type
                )));
            }
        }
        Ok(())
    }
}

/// An X-Ray trace header: `Root=1-<8 hex>-<24 hex>`, and optionally
/// `Parent=<16 hex>` and `Sampled=0|1`, separated by `;`.
fn is_xray_header(value: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut root = false;
    for field in value.split(';') {
        let ok = match field.split_once('=') {
            Some(("Root", id)) => {
                let parts: Vec<&str> = id.split('-').collect();
                root =
                    matches!(parts.as_slice(), ["1", time, rest] if hex(time, 8) && hex(rest, 24));
                root
            }
            Some(("Parent", id)) => hex(id, 16),
            Some(("Sampled", flag)) => matches!(flag, "0" | "1" | "?"),
            Some((_, _)) => true,
            None => false,
        };
        if !ok {
            return false;
        }
    }
    root
}

/// The characters SQS takes in a body or a string attribute.
fn allowed(c: char) -> bool {
    matches!(u32::from(c), 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
}

fn is_number(value: &str) -> bool {
    value.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Group and deduplication ids: "alphanumeric and punctuation characters",
/// 1 to 128 of them.
fn fifo_id(parameter: &str, value: &str) -> Result<(), ModelError> {
    let ok = (1..=128).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_ascii_punctuation());
    if ok {
        Ok(())
    } else {
        Err(ModelError::invalid(format!(
            "Value {value} for parameter {parameter} is invalid. Reason: {parameter} can only include alphanumeric and punctuation characters. 1 to 128 in length."
        )))
    }
}

/// The receive a message is in flight under.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub handle: String,
    /// The end of its visibility timeout.
    pub visible_at: Instant,
}

/// A message in a queue.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub body: String,
    pub group: String,
    pub deduplication_id: String,
    pub sequence_number: String,
    pub sent_ms: u64,
    pub attributes: BTreeMap<String, MessageAttribute>,
    /// The `AWSTraceHeader` system attribute, when sent.
    pub trace_header: Option<String>,
    /// Receives so far, across queues ("ApproximateReceiveCount: the number
    /// of times a message has been received across all queues but not
    /// deleted"): a message moved to the dead-letter queue keeps it.
    pub receive_count: u32,
    pub first_receive_ms: Option<u64>,
    /// The latest receive; kept after its timeout, to tell an expired
    /// handle from one that was never issued.
    pub receipt: Option<Receipt>,
}

impl Message {
    pub fn in_flight(&self, now: Instant) -> bool {
        self.receipt.as_ref().is_some_and(|r| r.visible_at > now)
    }

    /// Whether `handle` is the receive the message is in flight under.
    pub fn held_by(&self, handle: &str, now: Instant) -> bool {
        self.in_flight(now) && self.receipt.as_ref().is_some_and(|r| r.handle == handle)
    }

    pub fn snapshot(&self, now: Instant) -> MessageSnapshot {
        MessageSnapshot {
            message_id: self.id.clone(),
            body: self.body.clone(),
            group: self.group.clone(),
            deduplication_id: self.deduplication_id.clone(),
            receive_count: self.receive_count,
            in_flight: self.in_flight(now),
            attributes: self.attributes.clone(),
            trace_header: self.trace_header.clone(),
        }
    }
}

/// A message as a test sees it through [`super::SqsModel::messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSnapshot {
    pub message_id: String,
    pub body: String,
    pub group: String,
    pub deduplication_id: String,
    pub receive_count: u32,
    /// Received, not deleted, and its visibility timeout not over.
    pub in_flight: bool,
    pub attributes: BTreeMap<String, MessageAttribute>,
    /// The `AWSTraceHeader` system attribute, when sent.
    pub trace_header: Option<String>,
}

pub fn epoch_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
