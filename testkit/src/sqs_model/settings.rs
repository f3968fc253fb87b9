//! A queue's attributes: what CreateQueue and SetQueueAttributes take,
//! checked against the ranges of the CreateQueue reference
//! (<https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_CreateQueue.html>),
//! and what GetQueueAttributes answers.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::error::{Code, ModelError};

pub const MAX_VISIBILITY_TIMEOUT: u32 = 43_200;
/// SQS's largest message (and batch) since 2025: 1 MiB, also the default.
pub const MAX_MESSAGE_BYTES: usize = 1_048_576;

/// Where messages received too often go: the queue's `RedrivePolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    pub dead_letter_target_arn: String,
    /// "When the ReceiveCount for a message exceeds the maxReceiveCount for
    /// a queue, Amazon SQS moves the message to the dead-letter-queue."
    pub max_receive_count: u32,
}

/// The attributes of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub visibility_timeout: u32,
    /// The long poll of a ReceiveMessage that gives no `WaitTimeSeconds`.
    pub receive_wait: u32,
    pub maximum_message_size: usize,
    /// Answered, not enforced: no test runs for days.
    pub retention: u32,
    pub redrive: Option<Redrive>,
    /// `DeduplicationScope: messageGroup` (high-throughput FIFO): a
    /// deduplication id is remembered per message group, not per queue.
    pub deduplicate_per_group: bool,
    /// `FifoThroughputLimit`: answered; the model has no throughput limit.
    pub throughput_limit: String,
    /// Attributes SQS takes that the model answers but does not act on
    /// (policies, encryption, throughput mode).
    pub stored: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            visibility_timeout: 30,
            receive_wait: 0,
            maximum_message_size: MAX_MESSAGE_BYTES,
            retention: 345_600,
            redrive: None,
            deduplicate_per_group: false,
            throughput_limit: "perQueue".to_owned(),
            stored: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// Sets one attribute; `creating` because `FifoQueue` is only taken by
    /// CreateQueue. Values that would change a behaviour the model does not
    /// implement are refused rather than ignored.
    pub fn apply(&mut self, name: &str, value: &str, creating: bool) -> Result<(), ModelError> {
        let fixed = |expected: &str| {
            if value == expected {
                Ok(())
            } else {
                Err(not_modelled(name, value))
            }
        };
        match name {
            "FifoQueue" if creating => fixed("true"),
            "ContentBasedDeduplication" => fixed("false"),
            "DeduplicationScope" => {
                self.deduplicate_per_group = match value {
                    "queue" => false,
                    "messageGroup" => true,
                    _ => return Err(not_modelled(name, value)),
                };
                Ok(())
            }
            "FifoThroughputLimit" => match value {
                "perQueue" | "perMessageGroupId" => {
                    value.clone_into(&mut self.throughput_limit);
                    Ok(())
                }
                _ => Err(not_modelled(name, value)),
            },
            "DelaySeconds" => fixed("0"),
            "VisibilityTimeout" => {
                self.visibility_timeout = number(name, value, 0, MAX_VISIBILITY_TIMEOUT)?;
                Ok(())
            }
            "ReceiveMessageWaitTimeSeconds" => {
                self.receive_wait = number(name, value, 0, 20)?;
                Ok(())
            }
            "MaximumMessageSize" => {
                let max = u32::try_from(MAX_MESSAGE_BYTES).unwrap_or(u32::MAX);
                self.maximum_message_size = number(name, value, 1_024, max)? as usize;
                Ok(())
            }
            "MessageRetentionPeriod" => {
                self.retention = number(name, value, 60, 1_209_600)?;
                Ok(())
            }
            "RedrivePolicy" => {
                self.redrive = redrive(value)?;
                Ok(())
            }
            "Policy"
            | "RedriveAllowPolicy"
            | "KmsMasterKeyId"
            | "KmsDataKeyReusePeriodSeconds"
            | "SqsManagedSseEnabled" => {
                self.stored.insert(name.to_owned(), value.to_owned());
                Ok(())
            }
            other => Err(ModelError::new(
                Code::InvalidAttributeName,
                format!("Unknown Attribute {other}."),
            )),
        }
    }

    /// Every attribute these settings answer, as SQS spells them.
    pub fn render(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = [
            ("FifoQueue", "true".to_owned()),
            ("ContentBasedDeduplication", "false".to_owned()),
            (
                "DeduplicationScope",
                if self.deduplicate_per_group {
                    "messageGroup"
                } else {
                    "queue"
                }
                .to_owned(),
            ),
            ("FifoThroughputLimit", self.throughput_limit.clone()),
            ("DelaySeconds", "0".to_owned()),
            ("VisibilityTimeout", self.visibility_timeout.to_string()),
            (
                "ReceiveMessageWaitTimeSeconds",
                self.receive_wait.to_string(),
            ),
            ("MaximumMessageSize", self.maximum_message_size.to_string()),
            ("MessageRetentionPeriod", self.retention.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(redrive) = &self.redrive {
            let policy = json!({
                "deadLetterTargetArn": redrive.dead_letter_target_arn,
                "maxReceiveCount": redrive.max_receive_count,
            });
            out.insert("RedrivePolicy".to_owned(), policy.to_string());
        }
        out.extend(self.stored.clone());
        out
    }
}

fn not_modelled(name: &str, value: &str) -> ModelError {
    ModelError::new(
        Code::InvalidAttributeValue,
        format!(
            "Invalid value {value} for the parameter {name}: the SQS model of the testkit only models FIFO queues with explicit deduplication ids, no delay and queue-wide deduplication."
        ),
    )
}

fn number(name: &str, value: &str, min: u32, max: u32) -> Result<u32, ModelError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ModelError::new(
                Code::InvalidAttributeValue,
                format!("Invalid value for the parameter {name}: {value} is not between {min} and {max}."),
            )
        })
}

/// `""` removes the policy; otherwise `{deadLetterTargetArn, maxReceiveCount}`
/// with a count of 1 to 1000, as a number or a string (SQS takes both).
fn redrive(value: &str) -> Result<Option<Redrive>, ModelError> {
    if value.is_empty() {
        return Ok(None);
    }
    let refuse = |reason: &str| {
        ModelError::new(
            Code::InvalidAttributeValue,
            format!("Value {value} for parameter RedrivePolicy is invalid. Reason: {reason}"),
        )
    };
    let policy: Value = serde_json::from_str(value)
        .map_err(|_| refuse("Redrive policy is not a valid JSON map."))?;
    let arn = policy["deadLetterTargetArn"].as_str().ok_or_else(|| {
        refuse("Redrive policy does not contain mandatory attribute: deadLetterTargetArn.")
    })?;
    let count = match &policy["maxReceiveCount"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .and_then(|n| u32::try_from(n).ok())
    .filter(|n| (1..=1000).contains(n))
    .ok_or_else(|| {
        refuse("Invalid value for maxReceiveCount: must be an integer from 1 to 1000.")
    })?;
    Ok(Some(Redrive {
        dead_letter_target_arn: arn.to_owned(),
        max_receive_count: count,
    }))
}
