//! An in-process SQS FIFO server that hands out messages the way SQS does,
//! where fauxqs is gentler (docs/ARCHITECTURE.md, "Tests against real
//! emulators"). It speaks the AWS JSON 1.0 protocol of the real SDK
//! ([format](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-json-api-responses.html)),
//! so the project's clients and binaries talk to it unchanged.
//!
//! The rules it keeps, and where SQS documents them:
//! - **Several messages of one group per receive, in order.** "Amazon SQS
//!   attempts to return as many messages with the same message group ID as
//!   possible"; "if fewer than 10 messages are available for the same
//!   message group ID, Amazon SQS might include messages from other message
//!   group IDs in the same batch, but each group retains FIFO order"
//!   ([FIFO delivery logic](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/FIFO-queues-understanding-logic.html)).
//!   [`GroupStrategy::FillOneGroup`] (the default) does that;
//!   [`GroupStrategy::Spread`] takes one message per group in turn.
//! - **A group in flight holds back its later messages.** "Inflight
//!   messages block delivery of available messages within the same message
//!   group" ([knowledge center](https://repost.aws/knowledge-center/sqs-fifo-messages-not-returned));
//!   the group delivers again once every message received is deleted or
//!   visible again, oldest first.
//! - **Receive counts climb per receive** ("ApproximateReceiveCount: the
//!   number of times a message has been received across all queues but not
//!   deleted", [ReceiveMessage](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html)),
//!   so the messages handed out together climb together.
//! - **Redrive at receive time.** "When the ReceiveCount for a message
//!   exceeds the maxReceiveCount for a queue, Amazon SQS moves the message
//!   to the dead-letter-queue" ([SetQueueAttributes](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SetQueueAttributes.html)):
//!   the receive that would exceed it moves the message instead of handing
//!   it out, and goes on with the group's next message. The dead-letter
//!   queue must be a queue of the model (all are FIFO, as the [DLQ of a
//!   FIFO queue must be](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-dead-letter-queues.html)).
//! - **Visibility timeouts are deadlines** (tokio time); 0 makes a message
//!   visible at once ([ChangeMessageVisibility](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ChangeMessageVisibility.html):
//!   "The minimum is 0 seconds"). Long polls return as soon as a message
//!   is available ([ReceiveMessage](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_ReceiveMessage.html), WaitTimeSeconds).
//! - **Receipt handles are per receive.** "You must use the ReceiptHandle
//!   from the most recent time you received the message" ([DeleteMessage](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_DeleteMessage.html));
//!   on FIFO queues an older one, or one whose timeout ran out, is refused
//!   with InvalidParameterValue "The receipt handle has expired"
//!   ([knowledge center](https://repost.aws/knowledge-center/sqs-receipt-handle-error))
//!   and the message is left alone; a handle never issued is
//!   ReceiptHandleIsInvalid; ChangeMessageVisibility of a message no longer
//!   in flight is MessageNotInflight.
//! - **Deduplication for 5 minutes**: a duplicate is "accepted successfully
//!   but not delivered" ([SendMessage](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html), MessageDeduplicationId).
//! - **Batches answer per entry** ([SendMessageBatch](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessageBatch.html));
//!   an entry SendMessage would refuse (no group, characters SQS refuses,
//!   too large) fails alone.
//! - **`AWSTraceHeader`**, the one message system attribute SQS takes
//!   ([SendMessage](https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SendMessage.html),
//!   MessageSystemAttributes): a String holding an X-Ray trace header,
//!   refused otherwise, not counted in the message's size, and returned
//!   by a receive that asks for it (or `All`). fauxqs 1.9.2 drops it.
//!
//! Not modelled: standard queues, content-based deduplication, delays,
//! high-throughput mode, retention, throttling, the 20,000 in-flight limit,
//! MD5 digests (the Rust SDK does not check them), PurgeQueue's 60-second
//! lag (it empties at once), signatures (any credentials pass), and every
//! operation not listed in [`SqsModel`].

mod error;
mod message;
mod protocol;
mod settings;
mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use message::{MessageAttribute, MessageSnapshot};
pub use state::{ACCOUNT, GroupStrategy, REGION};

/// How the model behaves where SQS leaves a choice.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelConfig {
    pub strategy: GroupStrategy,
}

struct Shared {
    state: Mutex<state::State>,
    /// Woken on every change a long poll may be waiting for.
    changed: Notify,
    calls: Mutex<BTreeMap<String, usize>>,
}

impl Shared {
    fn with_state<T>(&self, f: impl FnOnce(&mut state::State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn count(&self, operation: &str) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        *calls.entry(operation.to_owned()).or_default() += 1;
    }
}

/// A running model; stopped when dropped. Operations: CreateQueue,
/// GetQueueUrl, Get/SetQueueAttributes, SendMessage(Batch),
/// ReceiveMessage, DeleteMessage(Batch), ChangeMessageVisibility(Batch),
/// PurgeQueue, DeleteQueue.
pub struct SqsModel {
    /// The endpoint: `AWS_ENDPOINT_URL_SQS` of a binary, or an SDK client's.
    pub url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl SqsModel {
    /// Starts a model with SQS's documented behaviour on a loopback port.
    pub async fn start() -> Self {
        Self::start_with(ModelConfig::default()).await
    }

    pub async fn start_with(config: ModelConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SQS model");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shared = Arc::new(Shared {
            state: Mutex::new(state::State::new(url.clone(), config.strategy)),
            changed: Notify::new(),
            calls: Mutex::new(BTreeMap::new()),
        });
        let router = Router::new()
            .fallback(protocol::handle)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url,
            shared,
            server,
        }
    }

    /// An SDK configuration whose endpoint is the model, for every service:
    /// use it for SQS only.
    pub async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new("model", "model", None, None, "sqs-model"))
            .endpoint_url(&self.url)
            .load()
            .await
    }

    pub async fn client(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    /// The environment that points a binary's SQS client at the model (on
    /// top of [`crate::Stack::service_env`] for the rest).
    pub fn service_env(&self) -> Vec<(&'static str, String)> {
        vec![("AWS_ENDPOINT_URL_SQS", self.url.clone())]
    }

    /// Creates `names.queue` and `names.dead_letter_queue` with the
    /// project's own migration, as on AWS: the redrive policy after
    /// `max_receive_count` receives and the given visibility timeout.
    pub async fn create_queues(
        &self,
        names: &obt_migrate::Names,
        max_receive_count: u32,
        visibility_timeout_secs: u32,
    ) -> obt_migrate::QueuesReport {
        let overrides = obt_migrate::Overrides {
            max_receive_count: Some(max_receive_count),
            visibility_timeout_secs: Some(visibility_timeout_secs),
            skip_time_to_live: true,
        };
        obt_migrate::apply_queues(&self.sdk_config().await, names, &overrides)
            .await
            .unwrap_or_else(|e| panic!("creating the queues in the SQS model failed: {e}"))
    }

    /// Chooses how later receives pick among groups.
    pub fn set_strategy(&self, strategy: GroupStrategy) {
        self.shared.with_state(|s| s.strategy = strategy);
    }

    /// The messages in `queue` now, in queue order. Panics if there is no
    /// such queue.
    pub fn messages(&self, queue: &str) -> Vec<MessageSnapshot> {
        self.shared
            .with_state(|s| s.messages(queue, Instant::now()))
            .unwrap_or_else(|| panic!("the SQS model has no queue {queue}"))
    }

    /// Every message redrive moved out of `queue` to its dead-letter queue,
    /// in the order moved (messages a client sent to the dead-letter queue
    /// itself are in [`Self::messages`] of that queue, not here).
    pub fn dead_letters(&self, queue: &str) -> Vec<MessageSnapshot> {
        self.shared
            .with_state(|s| s.redriven(queue, Instant::now()))
            .unwrap_or_else(|| panic!("the SQS model has no queue {queue}"))
    }

    /// How often each operation was called (by `X-Amz-Target` name).
    pub fn calls(&self) -> BTreeMap<String, usize> {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn call_count(&self, operation: &str) -> usize {
        self.calls().get(operation).copied().unwrap_or(0)
    }
}

impl Drop for SqsModel {
    fn drop(&mut self) {
        self.server.abort();
    }
}
