//! The consumer proper: pollers that long-poll the queue, the handling of
//! one message, and graceful shutdown.
//!
//! A message is deleted only after its event is committed to the
//! consumer's records ([`Ledger`], DynamoDB or MySQL), or recognised as
//! committed before: a crash anywhere before the delete means a
//! redelivery, which the ledger turns into a no-op (at-least-once
//! delivery, exactly-once effect). A message that fails is left alone: it
//! comes back after its visibility timeout and, failing every time, ends
//! in the dead-letter queue, which operators are alerted on.
//!
//! A write that fails for a transient reason (the records unreachable,
//! hanging, throttled, or a concurrent writer) is first retried in process
//! ([`StoreRetry`]): each attempt bounded by a timeout, with jittered
//! exponential backoff, the message's visibility extended to cover the
//! retries. Only when they are used up is the message left to its
//! visibility timeout. Nothing else changes: the message is still deleted
//! only after the commit, and poison messages and gaps are not retried
//! here, so they still reach the dead-letter queue.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use obt_contract::{DecodeError, Envelope};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing::{Instrument, Span, debug, error, info, info_span, instrument, warn};

use crate::batch::{self, Disposition};
use crate::config::Settings;
use crate::queue::{Queue, QueueError, Received};
use crate::store::{self, Applied, ApplyError, Ledger, OpenError};

/// The first pause after a failed receive; it doubles up to [`MAX_PAUSE`].
const MIN_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(10);
/// Between empty receives when long polling is off, so as not to spin.
const IDLE_PAUSE: Duration = Duration::from_millis(200);

/// How a write that failed for a transient reason is retried in process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreRetry {
    /// The longest one attempt may take: a slower one is abandoned (the
    /// database hangs) and counts as a transient failure.
    pub attempt_timeout: Duration,
    /// How long, from the first attempt, the retries may take: an attempt
    /// starts only if it would end (at `attempt_timeout`) within it; then
    /// the message is left to its visibility timeout. Zero: one attempt.
    pub budget: Duration,
    /// The pause after the first failure; it doubles up to `max_backoff`,
    /// each pause drawn at random between half of it and all of it.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for StoreRetry {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(10),
            budget: Duration::from_secs(20),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl StoreRetry {
    /// The pause before retry number `retry` (1 for the first), jittered.
    pub fn pause(&self, retry: u32) -> Duration {
        let ceiling = self
            .min_backoff
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(self.max_backoff);
        let floor = ceiling / 2;
        if ceiling <= floor {
            return ceiling;
        }
        let extra = rand::random_range(0..=(ceiling - floor).as_millis() as u64);
        floor + Duration::from_millis(extra)
    }
}

/// Margin added to a visibility extension, beyond the retries it covers.
const VISIBILITY_MARGIN: Duration = Duration::from_secs(5);

/// Why a group stopped at a message (see [`batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The message is not an event this consumer can read.
    Poison,
    /// An earlier event of the identity is missing.
    Gap,
    /// The event contradicts what is applied, or the table is damaged.
    Rejected,
    /// The table could not be written for now.
    Transient,
}

/// Why a message is poison: no retry can ever apply it.
#[derive(Debug, thiserror::Error)]
pub enum PoisonReason {
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    /// Ordering is per message group: an event published under another
    /// group than its identity's may overtake or be overtaken.
    #[error("the event's identity {identity} is not its message group {group:?}")]
    WrongGroup {
        identity: String,
        group: Option<String>,
    },
}

/// Reads a message's event, checking that it was published in its
/// identity's message group.
pub fn decode(message: &Received) -> Result<Envelope, PoisonReason> {
    let event = Envelope::decode(&message.body)?;
    if message.group_id.as_deref() != Some(event.identity.as_str()) {
        return Err(PoisonReason::WrongGroup {
            identity: event.identity.to_string(),
            group: message.group_id.clone(),
        });
    }
    Ok(event)
}

/// Why the consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot find the queue")]
    Queue(#[from] QueueError),
    #[error("cannot open the consumer's records")]
    Store(#[from] OpenError),
}

/// Why the consumer stopped other than by a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the pollers stopped without being asked to")]
    Ended,
    #[error("the consumer panicked: {0}")]
    Panicked(String),
    #[error("the messages in flight did not finish within {secs} s of the shutdown signal")]
    GraceExceeded { secs: u64 },
}

/// The consumer: its queue, its records and how many pollers share them.
#[derive(Debug)]
pub struct Consumer {
    queue: Queue,
    /// Where applied events are recorded: the backend chosen at start-up.
    ledger: Arc<dyn Ledger>,
    /// Concurrent receive loops: more of them keep more message groups in
    /// progress at once, since FIFO hands out a group to one receiver at a
    /// time.
    pollers: u16,
    /// How transient write failures are retried before giving up.
    retry: StoreRetry,
}

impl Consumer {
    pub fn new(queue: Queue, ledger: Arc<dyn Ledger>, pollers: u16) -> Self {
        Self {
            queue,
            ledger,
            pollers: pollers.max(1),
            retry: StoreRetry::default(),
        }
    }

    /// Retries transient write failures by `retry` instead of the default.
    pub fn with_retry(mut self, retry: StoreRetry) -> Self {
        self.retry = retry;
        self
    }

    /// Opens the records (checking that they are reachable), builds the
    /// clients and resolves the queue URL (unless given).
    pub async fn connect(config: &SdkConfig, settings: &Settings) -> Result<Self, StartupError> {
        // A MySQL pool big enough for every poller to have a transaction
        // open, plus two for the moments when several groups of one batch
        // commit at once; the rest wait a few milliseconds for a
        // connection, which beats holding one per possible group on a
        // server whose connections all consumer instances share.
        let connections = u32::from(settings.pollers) + 2;
        // Every AWS call bounded: an endpoint that accepts connections and
        // never answers would otherwise hold a poller for ever. Receives
        // wait for their long poll on top.
        let bounded = |timeout: Duration| obt_runtime::with_attempt_timeout(config, timeout);
        let store_config = bounded(settings.aws_timeout());
        let ledger = store::open(&store_config, &settings.storage, connections, "consumer").await?;
        let long_poll = Duration::from_secs(u64::try_from(settings.wait_time_secs).unwrap_or(0));
        let sqs = aws_sdk_sqs::Client::new(&bounded(settings.aws_timeout() + long_poll));
        let url = match &settings.queue_url {
            Some(url) => url.clone(),
            None => Queue::resolve_url(&sqs, &settings.queue_name).await?,
        };
        let queue = Queue::new(
            sqs,
            url,
            settings.wait_time_secs,
            settings.visibility_timeout_secs,
        );
        Ok(Self::new(queue, ledger, settings.pollers).with_retry(settings.store_retry()))
    }

    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Runs until `shutdown_signal` resolves, then stops receiving (an
    /// ongoing long poll is abandoned), lets the batches in progress
    /// finish, applies and deletes included, for at most `grace`, and
    /// returns.
    pub async fn serve(
        self,
        shutdown_signal: impl Future<Output = ()>,
        grace: Duration,
    ) -> Result<(), RunError> {
        let shutdown = CancellationToken::new();
        let run = Arc::new(self).run(shutdown.clone());
        let mut running = tokio::spawn(run.in_current_span().with_current_subscriber());
        tokio::select! {
            () = shutdown_signal => {}
            joined = &mut running => {
                return Err(match joined {
                    Ok(()) => RunError::Ended,
                    Err(e) => RunError::Panicked(e.to_string()),
                });
            }
        }
        shutdown.cancel();
        info!(
            grace_secs = grace.as_secs(),
            "stopped receiving; finishing the messages in progress"
        );
        match tokio::time::timeout(grace, running).await {
            Ok(Ok(())) => {
                info!("all messages in progress are finished; stopping");
                Ok(())
            }
            Ok(Err(e)) => Err(RunError::Panicked(e.to_string())),
            Err(_) => Err(RunError::GraceExceeded {
                secs: grace.as_secs(),
            }),
        }
    }

    /// Runs the pollers until `shutdown` is cancelled and each has finished
    /// its current batch.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        info!(
            queue = %self.queue.url(),
            records = %self.ledger.describe(),
            pollers = self.pollers,
            "consuming"
        );
        let mut pollers = JoinSet::new();
        for poller in 0..self.pollers {
            let span = info_span!("poller", poller);
            let task = self.clone().poll(shutdown.clone()).instrument(span);
            pollers.spawn(task.with_current_subscriber());
        }
        while let Some(joined) = pollers.join_next().await {
            if let Err(e) = joined {
                error!(error = %e, "a poller failed");
            }
        }
    }

    async fn poll(self: Arc<Self>, shutdown: CancellationToken) {
        let mut pause = MIN_PAUSE;
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                received = self.queue.receive() => received,
            };
            let wait = match received {
                Ok(batch) if batch.is_empty() => {
                    pause = MIN_PAUSE;
                    (self.queue.wait_time_secs() == 0).then_some(IDLE_PAUSE)
                }
                Ok(batch) => {
                    pause = MIN_PAUSE;
                    self.handle_batch(batch).await;
                    None
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "receiving failed");
                    let wait = pause;
                    pause = (pause * 2).min(MAX_PAUSE);
                    Some(wait)
                }
            };
            if let Some(wait) = wait {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        debug!("poller stopped");
    }

    /// Handles one received batch: groups concurrently, each group in
    /// order, stopping a group at its first message that is not done.
    pub async fn handle_batch(self: &Arc<Self>, batch: Vec<Received>) {
        debug!(messages = batch.len(), "received");
        let this = self.clone();
        let handle = move |message: Received| {
            let this = this.clone();
            async move { this.handle_message(message).await }
        };
        for report in batch::process(batch, Received::group_key, handle).await {
            let Some(stopped) = report.stopped else {
                continue;
            };
            if stopped.skipped.is_empty() {
                continue;
            }
            info!(
                group = %report.key,
                skipped = stopped.skipped.len(),
                reason = ?stopped.reason,
                "left the group's later messages unapplied, to come back in order"
            );
            if stopped.reason == StopReason::Poison {
                // The poison message was released to come back at once;
                // release those behind it too, so that the group is not
                // held up by their visibility timeout.
                for message in &stopped.skipped {
                    if let Err(e) = self.queue.release(message).await {
                        warn!(error = %e, message_id = %message.message_id, "could not release a message");
                    }
                }
            }
        }
    }

    /// Applies one message's event and deletes the message once the event
    /// is recorded.
    #[instrument(skip_all, fields(identity, seq, message_id = %message.message_id))]
    pub async fn handle_message(&self, message: Received) -> Disposition<StopReason> {
        let event = match decode(&message) {
            Ok(event) => event,
            Err(reason) => {
                error!(
                    message_id = %message.message_id,
                    group = message.group_id.as_deref().unwrap_or("<none>"),
                    receive_count = ?message.receive_count,
                    error = %reason,
                    "poison message: it can never be applied; leaving it to the dead-letter queue"
                );
                // Not deleted: the queue's redrive policy moves it to the
                // dead-letter queue after maxReceiveCount receives, and
                // visibility 0 gets it there without waiting.
                if let Err(e) = self.queue.release(&message).await {
                    warn!(error = %e, "could not release the poison message; it comes back after its visibility timeout");
                }
                return Disposition::Stop(StopReason::Poison);
            }
        };
        let span = Span::current();
        span.record("identity", tracing::field::display(&event.identity));
        span.record("seq", event.seq);

        match self.apply(&message, &event).await {
            Ok(Applied::New) => {
                info!(event_id = %event.event_id, amount = %event.data.amount, "applied");
            }
            Ok(Applied::Duplicate) => {
                info!(event_id = %event.event_id, "duplicate of an applied event; deleting it, changing nothing");
            }
            Err(e) => return Disposition::Stop(refused(&message, &e)),
        }
        if let Err(e) = self.queue.delete(&message).await {
            // The effect is committed; when the message comes back it is
            // recognised as a duplicate. The group may go on.
            warn!(error = %e, "applied, but the message could not be deleted");
        }
        Disposition::Continue
    }

    /// Applies `event`, retrying transient failures in process by the
    /// [`StoreRetry`], and keeping `message` invisible meanwhile. Returns
    /// the last failure when the retries are used up, or at once for a
    /// failure that is not transient.
    async fn apply(&self, message: &Received, event: &Envelope) -> Result<Applied, ApplyError> {
        let started = Instant::now();
        let mut extended = false;
        let mut retry: u32 = 0;
        loop {
            let attempt =
                tokio::time::timeout(self.retry.attempt_timeout, self.ledger.apply(event));
            let error = match attempt.await {
                Ok(Ok(applied)) => {
                    if retry > 0 {
                        info!(retries = retry, "applied after transient failures");
                    }
                    return Ok(applied);
                }
                Ok(Err(e)) => e,
                Err(_) => ApplyError::TimedOut {
                    identity: event.identity.to_string(),
                    seq: event.seq,
                    secs: self.retry.attempt_timeout.as_secs_f32(),
                },
            };
            if !error.is_transient() {
                return Err(error);
            }
            retry += 1;
            let pause = self.retry.pause(retry);
            let elapsed = started.elapsed();
            // No attempt starts that could end past the budget: the budget
            // bounds the whole of the retries (and so the shutdown's wait).
            if elapsed + pause + self.retry.attempt_timeout > self.retry.budget {
                if !self.retry.budget.is_zero() {
                    warn!(
                        retries = retry - 1,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "gave up retrying in process"
                    );
                }
                return Err(error);
            }
            warn!(
                error = %error,
                retry,
                retry_in_ms = pause.as_millis() as u64,
                "transient failure; retrying in process"
            );
            if !extended {
                // Once, for the whole of the retries left: the message must
                // not come back to another poller while this one retries.
                let cover = self.retry.budget.saturating_sub(elapsed)
                    + self.retry.attempt_timeout
                    + VISIBILITY_MARGIN;
                let secs = i32::try_from(cover.as_secs() + 1).unwrap_or(i32::MAX);
                match self.queue.extend(message, secs).await {
                    Ok(()) => {
                        extended = true;
                        debug!(
                            visibility_secs = secs,
                            "extended the message's visibility for the retries"
                        );
                    }
                    Err(e) => {
                        warn!(error = %e, "could not extend the message's visibility; it may come back while retried")
                    }
                }
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Logs why an event was not applied and says what stops its group.
fn refused(message: &Received, e: &ApplyError) -> StopReason {
    let receive_count = message.receive_count;
    match e {
        ApplyError::Gap {
            identity,
            expected,
            received,
        } => {
            error!(
                identity = %identity,
                expected_seq = expected,
                received_seq = received,
                receive_count = ?receive_count,
                "gap: identity {identity} expects seq {expected} but received seq {received}; not applying \
                 it, leaving the message to be redelivered (and dead-lettered if seq {expected} never arrives)"
            );
            StopReason::Gap
        }
        e if e.is_transient() => {
            warn!(error = %e, receive_count = ?receive_count, "not applied for now, after the in-process retries; the message comes back after its visibility timeout");
            StopReason::Transient
        }
        e => {
            error!(error = %e, receive_count = ?receive_count, "the event cannot be applied; the message is left to the dead-letter queue");
            StopReason::Rejected
        }
    }
}

#[cfg(test)]
mod tests {
    use obt_contract::{Amount, Identity, PersonName, SpendingRecorded};

    use super::*;

    fn message(group: Option<&str>, body: String) -> Received {
        Received {
            message_id: "m-1".to_owned(),
            receipt_handle: "r-1".to_owned(),
            group_id: group.map(str::to_owned),
            receive_count: Some(1),
            body,
        }
    }

    fn event(identity: &str) -> Envelope {
        Envelope::spending_recorded(
            Identity::parse(identity).expect("valid"),
            1,
            SpendingRecorded {
                name: PersonName::parse("Martin").expect("valid"),
                surname: PersonName::parse("Robi").expect("valid"),
                amount: Amount::parse("51.30").expect("valid"),
            },
        )
    }

    #[test]
    fn an_event_in_its_identitys_group_decodes() {
        let event = event("AB1");
        assert_eq!(
            decode(&message(Some("AB1"), event.encode())).expect("decodes"),
            event
        );
    }

    #[test]
    fn an_event_in_another_group_or_none_is_poison() {
        let body = event("AB1").encode();
        for group in [Some("AB2"), None] {
            assert!(matches!(
                decode(&message(group, body.clone())),
                Err(PoisonReason::WrongGroup { .. })
            ));
        }
    }

    #[test]
    fn retry_pauses_grow_jittered_up_to_the_ceiling() {
        let retry = StoreRetry {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
            ..StoreRetry::default()
        };
        for _ in 0..50 {
            let first = retry.pause(1);
            assert!(
                first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
                "{first:?}"
            );
            let third = retry.pause(3);
            assert!(
                third >= Duration::from_millis(200) && third <= Duration::from_millis(400),
                "{third:?}"
            );
            let late = retry.pause(30);
            assert!(
                late >= Duration::from_millis(400) && late <= Duration::from_millis(800),
                "{late:?}"
            );
        }
        let pauses: std::collections::HashSet<Duration> = (0..50).map(|_| retry.pause(4)).collect();
        assert!(pauses.len() > 1, "jittered");
    }

    #[test]
    fn a_timed_out_write_is_transient() {
        let error = ApplyError::TimedOut {
            identity: "AB1".to_owned(),
            seq: 1,
            secs: 1.0,
        };
        assert!(error.is_transient());
        assert!(error.to_string().contains("retried"), "{error}");
    }

    #[test]
    fn a_body_that_is_no_envelope_is_poison() {
        assert!(matches!(
            decode(&message(Some("AB1"), "not json".to_owned())),
            Err(PoisonReason::Undecodable(_))
        ));
    }
}
