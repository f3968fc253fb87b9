//! The SQS side of the consumer. The queue URL comes from the settings or
//! from GetQueueUrl; it is only ever passed to the SDK, which sends every
//! request to its configured endpoint (the URL's host may not even be
//! reachable, as with fauxqs).

use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use tracing::warn;

/// The most messages one ReceiveMessage may return.
const MAX_MESSAGES: i32 = 10;

/// A received message, reduced to what the consumer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// For logs: it names the message across receives.
    pub message_id: String,
    /// What DeleteMessage and ChangeMessageVisibility need; valid for this
    /// receive only.
    pub receipt_handle: String,
    /// The identity the relay published under. `None` only when the queue
    /// is not FIFO, a misconfiguration that makes every message poison.
    pub group_id: Option<String>,
    /// How often the queue has handed this message out, this time included:
    /// it tells how close a failing message is to the dead-letter queue.
    pub receive_count: Option<u32>,
    pub body: String,
}

impl Received {
    /// Reads an SDK message; `None` when it lacks a receipt handle, which
    /// SQS always sends (such a message could not be deleted anyway).
    pub fn from_sdk(message: Message) -> Option<Self> {
        let attribute = |name: &MessageSystemAttributeName| {
            message.attributes().and_then(|a| a.get(name)).cloned()
        };
        let group_id = attribute(&MessageSystemAttributeName::MessageGroupId);
        let receive_count = attribute(&MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|count| count.parse().ok());
        Some(Self {
            message_id: message.message_id?,
            receipt_handle: message.receipt_handle?,
            group_id,
            receive_count,
            body: message.body.unwrap_or_default(),
        })
    }

    /// The key that orders this message: its message group.
    pub fn group_key(&self) -> String {
        self.group_id.clone().unwrap_or_default()
    }
}

/// Why an SQS call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("SQS {call} on queue {queue} failed: {detail}")]
    Sqs {
        call: &'static str,
        queue: String,
        detail: String,
    },
    #[error("GetQueueUrl for queue {queue} returned no URL")]
    NoUrl { queue: String },
    #[error(
        "queue {queue} has no usable redrive policy, so its dead-letter queue is unknown: give it \
         one (obt-migrate does), or name the dead-letter queue with OBT_DLQ_URL"
    )]
    NoDeadLetterQueue { queue: String },
    #[error("cannot build the SQS request: {0}")]
    Request(String),
}

pub(crate) fn sqs_error<E, R>(
    call: &'static str,
    queue: &str,
) -> impl FnOnce(SdkError<E, R>) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let queue = queue.to_owned();
    move |e| QueueError::Sqs {
        call,
        queue,
        detail: obt_runtime::error_chain(&e),
    }
}

/// The queue the consumer receives from.
#[derive(Debug, Clone)]
pub struct Queue {
    client: aws_sdk_sqs::Client,
    url: String,
    /// Long-poll duration of each receive.
    wait_time_secs: i32,
    /// `None`: the queue's own visibility timeout.
    visibility_timeout_secs: Option<i32>,
}

impl Queue {
    pub fn new(
        client: aws_sdk_sqs::Client,
        url: String,
        wait_time_secs: i32,
        visibility_timeout_secs: Option<i32>,
    ) -> Self {
        Self {
            client,
            url,
            wait_time_secs,
            visibility_timeout_secs,
        }
    }

    /// The URL of the queue called `name`.
    pub async fn resolve_url(
        client: &aws_sdk_sqs::Client,
        name: &str,
    ) -> Result<String, QueueError> {
        let out = client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(sqs_error("GetQueueUrl", name))?;
        out.queue_url.ok_or_else(|| QueueError::NoUrl {
            queue: name.to_owned(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn wait_time_secs(&self) -> i32 {
        self.wait_time_secs
    }

    /// One long poll: up to 10 messages, possibly none.
    pub async fn receive(&self) -> Result<Vec<Received>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(MAX_MESSAGES)
            .wait_time_seconds(self.wait_time_secs)
            .set_visibility_timeout(self.visibility_timeout_secs)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(sqs_error("ReceiveMessage", &self.url))?;
        let mut received = Vec::new();
        for message in out.messages.unwrap_or_default() {
            let message_id = message.message_id.clone();
            match Received::from_sdk(message) {
                Some(message) => received.push(message),
                None => warn!(
                    ?message_id,
                    "skipping a received message without id or receipt handle"
                ),
            }
        }
        Ok(received)
    }

    /// Deletes a message whose effect is committed (or was already).
    pub async fn delete(&self, message: &Received) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt_handle)
            .send()
            .await
            .map_err(sqs_error("DeleteMessage", &self.url))?;
        Ok(())
    }

    /// Deletes messages whose effect is committed (or was already), up to
    /// [`MAX_MESSAGES`] per `DeleteMessageBatch`: one request for a
    /// received batch instead of one per message. Returns the messages
    /// that were not deleted, each with the reason (they come back and are
    /// recognised then, as after a crash).
    pub async fn delete_all<'m>(&self, messages: &'m [Received]) -> Vec<(&'m Received, String)> {
        let mut not_deleted = Vec::new();
        for chunk in messages.chunks(MAX_MESSAGES.unsigned_abs() as usize) {
            let entries: Result<Vec<_>, _> = chunk
                .iter()
                .enumerate()
                .map(|(i, message)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&message.receipt_handle)
                        .build()
                })
                .collect();
            let entries = match entries {
                Ok(entries) => entries,
                Err(e) => {
                    not_deleted.extend(chunk.iter().map(|m| (m, e.to_string())));
                    continue;
                }
            };
            let result = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(sqs_error("DeleteMessageBatch", &self.url));
            match result {
                Ok(out) => {
                    let deleted: std::collections::HashSet<&str> =
                        out.successful().iter().map(|e| e.id()).collect();
                    for (i, message) in chunk.iter().enumerate() {
                        if deleted.contains(i.to_string().as_str()) {
                            continue;
                        }
                        let reason = out
                            .failed()
                            .iter()
                            .find(|f| f.id() == i.to_string())
                            .map_or_else(
                                || "not confirmed".to_owned(),
                                |f| format!("{}: {}", f.code(), f.message().unwrap_or_default()),
                            );
                        not_deleted.push((message, reason));
                    }
                }
                Err(e) => not_deleted.extend(chunk.iter().map(|m| (m, e.to_string()))),
            }
        }
        not_deleted
    }

    /// Makes a message visible again at once (visibility timeout 0), so
    /// that it is received again without waiting for its timeout.
    pub async fn release(&self, message: &Received) -> Result<(), QueueError> {
        self.extend(message, 0).await
    }

    /// Keeps a message invisible for `secs` seconds from now, while it is
    /// being worked on longer than its visibility timeout allows.
    pub async fn extend(&self, message: &Received, secs: i32) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&message.receipt_handle)
            .visibility_timeout(secs.clamp(0, 43_200))
            .send()
            .await
            .map_err(sqs_error("ChangeMessageVisibility", &self.url))?;
        Ok(())
    }
}
