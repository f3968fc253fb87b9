//! The dead-letter queue, written to explicitly: a message that can never
//! be applied is sent there alone, with its reason as message attributes,
//! and deleted from the main queue, instead of being left to climb
//! receive counts with the valid messages received beside it (SQS hands
//! out up to 10 messages of one group at once). And read back, one
//! identity at a time, by the operator's [`crate::parking::retry`].

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use obt_contract::Envelope;
use tracing::{debug, warn};

use crate::consumer::{PoisonReason, decode_body};
use crate::parking::Cause;
use crate::queue::{QueueError, Received, sqs_error};

/// Message attributes of a dead letter the consumer sent.
pub mod attribute {
    pub const CAUSE: &str = "obt-dead-letter-cause";
    pub const REASON: &str = "obt-dead-letter-reason";
    pub const SOURCE_MESSAGE_ID: &str = "obt-source-message-id";
    pub const RECEIVE_COUNT: &str = "obt-receive-count";
}

/// The message group of a dead letter whose message had none (a queue
/// that is not FIFO by mistake).
pub const NO_GROUP: &str = "obt-no-group";

/// The longest reason text sent: message attributes count against the
/// message's size.
const MAX_REASON_BYTES: usize = 1024;

/// How long a scan keeps the messages it received invisible: the other
/// identities' dead letters must stay out of the way until it ends (a FIFO
/// queue would hand out the same group again otherwise).
const SCAN_VISIBILITY_SECS: i32 = 120;
/// The most messages one scan looks at (SQS allows 20,000 in flight in a
/// FIFO queue).
const MAX_SCANNED: usize = 10_000;
const SCAN_WAIT_SECS: i32 = 2;

/// How a dead letter's body is read: [`decode_body`], or a newer build's
/// reader (the repair of a message this build could not read).
pub type Decoder = fn(body: &str, group: Option<&str>) -> Result<Envelope, PoisonReason>;

/// A message of the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub message_id: String,
    pub receipt_handle: String,
    pub group_id: Option<String>,
    /// Its id on the main queue, when the consumer dead-lettered it.
    pub source_message_id: Option<String>,
    pub body: String,
}

impl Letter {
    /// Whether `id` names this letter (its own id or its source's).
    pub fn is(&self, id: &str) -> bool {
        self.message_id == id || self.source_message_id.as_deref() == Some(id)
    }
}

/// The queue's dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    decoder: Decoder,
}

impl DeadLetterQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
            decoder: decode_body,
        }
    }

    /// The dead-letter queue of the queue at `queue_url`: the target of its
    /// redrive policy, so that explicit dead letters land where SQS's own
    /// redrive would put them.
    pub async fn of_queue(
        client: &aws_sdk_sqs::Client,
        queue_url: &str,
    ) -> Result<Self, QueueError> {
        let out = client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(sqs_error("GetQueueAttributes", queue_url))?;
        let policy = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .ok_or_else(|| QueueError::NoDeadLetterQueue {
                queue: queue_url.to_owned(),
            })?;
        let name = dead_letter_name(policy).ok_or_else(|| QueueError::NoDeadLetterQueue {
            queue: queue_url.to_owned(),
        })?;
        Self::by_name(client, &name).await
    }

    /// The dead-letter queue called `name`.
    pub async fn by_name(client: &aws_sdk_sqs::Client, name: &str) -> Result<Self, QueueError> {
        let url = crate::queue::Queue::resolve_url(client, name).await?;
        Ok(Self::new(client.clone(), url))
    }

    /// Reads dead letters with `decoder` instead of this build's reader.
    pub fn with_decoder(mut self, decoder: Decoder) -> Self {
        self.decoder = decoder;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn decode(&self, letter: &Letter) -> Result<Envelope, PoisonReason> {
        (self.decoder)(&letter.body, letter.group_id.as_deref())
    }

    /// Sends `message` to the dead-letter queue with its cause and reason.
    /// Its deduplication id is its message id, so that sending it again
    /// after a crash (before its delete from the main queue) adds nothing.
    pub async fn send(
        &self,
        message: &Received,
        cause: Cause,
        reason: &str,
    ) -> Result<(), QueueError> {
        let text = |value: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
        };
        let mut request = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(&message.body)
            .message_group_id(message.group_id.as_deref().unwrap_or(NO_GROUP))
            .message_deduplication_id(&message.message_id);
        for (name, value) in [
            (attribute::CAUSE, text(cause.as_str())),
            (attribute::REASON, text(&attribute_text(reason))),
            (attribute::SOURCE_MESSAGE_ID, text(&message.message_id)),
        ] {
            let value = value.map_err(|e| QueueError::Request(e.to_string()))?;
            request = request.message_attributes(name, value);
        }
        if let Some(count) = message.receive_count {
            let value = MessageAttributeValue::builder()
                .data_type("Number")
                .string_value(count.to_string())
                .build()
                .map_err(|e| QueueError::Request(e.to_string()))?;
            request = request.message_attributes(attribute::RECEIVE_COUNT, value);
        }
        request
            .send()
            .await
            .map_err(sqs_error("SendMessage", &self.url))?;
        Ok(())
    }

    /// Starts reading the dead letters of `identity`, in their order.
    pub fn scan(&self, identity: &str) -> Scan<'_> {
        Scan {
            queue: self,
            identity: identity.to_owned(),
            in_flight: Vec::new(),
            scanned: 0,
            done: false,
        }
    }

    async fn receive(&self) -> Result<Vec<Letter>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(SCAN_WAIT_SECS)
            .visibility_timeout(SCAN_VISIBILITY_SECS)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names(attribute::SOURCE_MESSAGE_ID)
            .send()
            .await
            .map_err(sqs_error("ReceiveMessage", &self.url))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let source_message_id = message
                    .message_attributes()
                    .and_then(|a| a.get(attribute::SOURCE_MESSAGE_ID))
                    .and_then(|v| v.string_value())
                    .map(str::to_owned);
                let group_id = message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .cloned();
                Some(Letter {
                    message_id: message.message_id?,
                    receipt_handle: message.receipt_handle?,
                    group_id,
                    source_message_id,
                    body: message.body.unwrap_or_default(),
                })
            })
            .collect())
    }
}

/// The queue name of a redrive policy's `deadLetterTargetArn`.
fn dead_letter_name(policy: &str) -> Option<String> {
    let policy: serde_json::Value = serde_json::from_str(policy).ok()?;
    let arn = policy.get("deadLetterTargetArn")?.as_str()?;
    arn.rsplit(':').next().map(str::to_owned)
}

/// A reason as SQS takes it in a string attribute: its characters only,
/// and not too long.
fn attribute_text(reason: &str) -> String {
    let allowed = |c: char| matches!(u32::from(c), 0x9 | 0xA | 0xD | 0x20..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF);
    let mut text = String::new();
    for c in reason.chars().map(|c| if allowed(c) { c } else { '?' }) {
        if text.len() + c.len_utf8() > MAX_REASON_BYTES {
            break;
        }
        text.push(c);
    }
    if text.is_empty() {
        text.push('?');
    }
    text
}

/// One pass over the dead-letter queue for one identity. Every message
/// received stays invisible until [`Scan::release`], unless deleted: a
/// FIFO queue hands out a group's messages in order, and the next ones of
/// a group only once the earlier are gone, so the other groups' messages
/// must be kept out of the way, then released untouched.
#[derive(Debug)]
pub struct Scan<'a> {
    queue: &'a DeadLetterQueue,
    identity: String,
    /// Received and neither deleted nor released yet.
    in_flight: Vec<Letter>,
    scanned: usize,
    done: bool,
}

impl Scan<'_> {
    pub fn queue(&self) -> &DeadLetterQueue {
        self.queue
    }

    /// The identity's next dead letters, in order, or `None` once the
    /// queue has nothing more to hand out. The caller deletes or
    /// [`keep`](Self::keep)s each.
    pub async fn next_of_identity(&mut self) -> Result<Option<Vec<Letter>>, QueueError> {
        while !self.done {
            if self.scanned >= MAX_SCANNED {
                warn!(
                    scanned = self.scanned,
                    "the scan of the dead-letter queue stopped at its limit"
                );
                self.done = true;
                break;
            }
            let received = self.queue.receive().await?;
            if received.is_empty() {
                self.done = true;
                break;
            }
            self.scanned += received.len();
            let (mine, others): (Vec<Letter>, Vec<Letter>) = received
                .into_iter()
                .partition(|l| l.group_id.as_deref() == Some(self.identity.as_str()));
            self.in_flight.extend(others);
            if !mine.is_empty() {
                return Ok(Some(mine));
            }
        }
        Ok(None)
    }

    /// Leaves `letter` in the queue: released at the end of the scan.
    pub fn keep(&mut self, letter: Letter) {
        self.in_flight.push(letter);
    }

    /// Deletes a replayed letter, once what it carried is committed.
    pub async fn delete(&self, letter: &Letter) -> Result<(), QueueError> {
        self.queue
            .client
            .delete_message()
            .queue_url(&self.queue.url)
            .receipt_handle(&letter.receipt_handle)
            .send()
            .await
            .map_err(sqs_error("DeleteMessage", &self.queue.url))?;
        Ok(())
    }

    /// Makes every message still held visible again at once. A failure
    /// only delays a message by the scan's visibility timeout.
    pub async fn release(&mut self) {
        for letter in self.in_flight.drain(..) {
            let released = self
                .queue
                .client
                .change_message_visibility()
                .queue_url(&self.queue.url)
                .receipt_handle(&letter.receipt_handle)
                .visibility_timeout(0)
                .send()
                .await;
            match released {
                Ok(_) => debug!(message_id = %letter.message_id, "released a dead letter"),
                Err(e) => warn!(
                    message_id = %letter.message_id,
                    error = %obt_runtime::error_chain(&e),
                    "could not release a dead letter; it is visible again after {SCAN_VISIBILITY_SECS} s"
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_queue_is_named_by_the_redrive_policys_arn() {
        let policy = r#"{"deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:obt-events-dlq.fifo","maxReceiveCount":"5"}"#;
        assert_eq!(
            dead_letter_name(policy).as_deref(),
            Some("obt-events-dlq.fifo")
        );
        assert_eq!(dead_letter_name("{}"), None);
        assert_eq!(dead_letter_name("not json"), None);
    }

    #[test]
    fn a_reason_is_cut_to_what_sqs_takes_in_an_attribute() {
        assert_eq!(attribute_text("a\u{0}b\u{fffe}c"), "a?b?c");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = attribute_text(&long);
        assert!(cut.len() <= MAX_REASON_BYTES && cut.starts_with('é'));
        assert_eq!(attribute_text(""), "?");
    }
}
