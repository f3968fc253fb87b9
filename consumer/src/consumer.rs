//! The consumer proper: the pollers, the handling of one message (applied,
//! held or dead-lettered, and only then deleted), the in-process retries of
//! transient store failures ([`StoreRetry`]), the redelivery delays that
//! follow them ([`Redelivery`]), and graceful shutdown. The reasoning
//! (at-least-once delivery, exactly-once effect; the redelivery budget):
//! docs/ARCHITECTURE.md, "The consumer".

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use obt_contract::{DecodeError, Envelope};
use obt_runtime::backoff::Backoff;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::instrument::WithSubscriber;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::batch::{self, Disposition};
use crate::config::Settings;
use crate::dead_letter::DeadLetterQueue;
use crate::parking::{self, Cause, Held, ParkRequest};
use crate::queue::{Queue, QueueError, Received};
use crate::store::{self, Applied, ApplyError, HoldError, Ledger, LedgerError, OpenError};

/// The pauses after failed receives: from 100 ms, doubling up to 10 s.
const RECEIVE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// Between empty receives when long polling is off, so as not to spin.
const IDLE_PAUSE: Duration = Duration::from_millis(200);

/// While a received batch is being handled, how often the messages done so
/// far are deleted (all at once when it is finished).
const DELETE_EVERY: Duration = Duration::from_millis(500);
/// How often one message is tried again when an operator's retry parks or
/// unparks its identity between two steps of its handling.
const RACE_ROUNDS: usize = 3;

/// How a write that failed for a transient reason is retried in process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreRetry {
    /// The longest one attempt may take: a slower one is abandoned (the
    /// database hangs) and counts as a transient failure.
    pub attempt_timeout: Duration,
    /// How long, from the first attempt, the retries may take: an attempt
    /// starts only if it would end (at `attempt_timeout`) within it; then
    /// the message is left to its redelivery. Zero: one attempt.
    pub budget: Duration,
    /// The ceiling of the pause after the first failure; it doubles with
    /// each failure up to `max_backoff`, each pause drawn at random below
    /// it ([`StoreRetry::backoff`]).
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
    /// The pauses between attempts: the workspace's one backoff (capped
    /// exponential, full jitter).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.min_backoff, self.max_backoff)
    }
}

/// How long a message whose store write kept failing stays invisible
/// before it comes back: `base` x 4^(receive count - 1), at most SQS's
/// 12 hours. Its receive count, which sends it to the dead-letter queue
/// past the queue's maxReceiveCount, so climbs slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redelivery {
    pub base: Duration,
}

/// ChangeMessageVisibility's maximum.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
const REDELIVERY_FACTOR: u32 = 4;

impl Default for Redelivery {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(60),
        }
    }
}

impl Redelivery {
    /// The delay after the receive number `receive_count` (1 for the first).
    pub fn delay(&self, receive_count: u32) -> Duration {
        let factor = REDELIVERY_FACTOR.saturating_pow(receive_count.saturating_sub(1));
        self.base.saturating_mul(factor).min(MAX_VISIBILITY)
    }

    /// The longest store outage that dead-letters nothing with a queue's
    /// `max_receive_count`: the delays after the first max - 1 receives
    /// (the in-process retries of each receive come on top). The receive
    /// past the maximum is the one SQS dead-letters at.
    pub fn budget(&self, max_receive_count: u32) -> Duration {
        (1..max_receive_count).map(|n| self.delay(n)).sum()
    }
}

/// Margin added to a visibility extension, beyond the retries it covers.
const VISIBILITY_MARGIN: Duration = Duration::from_secs(5);

/// Why a group stopped at a message (see [`batch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The records (or SQS) could not be written for now: the message and
    /// those behind it come back after `redeliver_in`.
    Transient { redeliver_in: Duration },
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
    decode_body(&message.body, message.group_id.as_deref())
}

/// [`decode`] of a body received in `group`.
pub fn decode_body(body: &str, group: Option<&str>) -> Result<Envelope, PoisonReason> {
    let event = Envelope::decode(body)?;
    if group != Some(event.identity.as_str()) {
        return Err(PoisonReason::WrongGroup {
            identity: event.identity.to_string(),
            group: group.map(str::to_owned),
        });
    }
    Ok(event)
}

/// The seq a poison body names, if it names one: for the operator.
fn loose_seq(body: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("seq")?
        .as_u64()
}

/// Why the consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot find the queue")]
    Queue(#[from] QueueError),
    #[error("cannot open the consumer's records")]
    Ledger(#[from] OpenError),
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

/// The consumer: its queues, its records and how many pollers share them.
#[derive(Debug)]
pub struct Consumer {
    queue: Queue,
    /// Where a message that can never be applied is sent, explicitly.
    dead_letters: DeadLetterQueue,
    /// Where applied events are recorded: the backend chosen at start-up.
    ledger: Arc<dyn Ledger>,
    /// Concurrent receive loops: more of them keep more message groups in
    /// progress at once, since FIFO hands out a group to one receiver at a
    /// time.
    pollers: u16,
    /// How transient write failures are retried before giving up.
    retry: StoreRetry,
    /// How long a message is kept away after the retries gave up.
    redelivery: Redelivery,
}

impl Consumer {
    pub fn new(
        queue: Queue,
        dead_letters: DeadLetterQueue,
        ledger: Arc<dyn Ledger>,
        pollers: u16,
    ) -> Self {
        Self {
            queue,
            dead_letters,
            ledger,
            pollers: pollers.max(1),
            retry: StoreRetry::default(),
            redelivery: Redelivery::default(),
        }
    }

    /// Retries transient write failures by `retry` instead of the default.
    pub fn with_retry(mut self, retry: StoreRetry) -> Self {
        self.retry = retry;
        self
    }

    /// Redelivers messages whose retries gave up by `redelivery`.
    pub fn with_redelivery(mut self, redelivery: Redelivery) -> Self {
        self.redelivery = redelivery;
        self
    }

    /// Opens the records (checking that they are reachable), builds the
    /// clients and resolves the queue URL (unless given) and the
    /// dead-letter queue's (its redrive policy's target, unless given).
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
        let records =
            store::open(&store_config, &settings.storage, connections, "consumer").await?;
        let ledger = records.ledger().clone();
        let long_poll = Duration::from_secs(u64::try_from(settings.wait_time_secs).unwrap_or(0));
        let sqs =
            obt_runtime::aws_client!(aws_sdk_sqs, &bounded(settings.aws_timeout() + long_poll));
        let url = match &settings.queue.queue_url {
            Some(url) => url.clone(),
            None => Queue::resolve_url(&sqs, &settings.queue.queue_name).await?,
        };
        let dead_letters = match &settings.dlq_url {
            Some(dlq) => DeadLetterQueue::new(sqs.clone(), dlq.clone()),
            None => DeadLetterQueue::of_queue(&sqs, &url).await?,
        };
        let queue = Queue::new(
            sqs,
            url,
            settings.wait_time_secs,
            settings.visibility_timeout_secs,
        );
        Ok(Self::new(queue, dead_letters, ledger, settings.pollers)
            .with_retry(settings.store_retry())
            .with_redelivery(settings.redelivery()))
    }

    pub fn dead_letters(&self) -> &DeadLetterQueue {
        &self.dead_letters
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
        let mut failures = RECEIVE_BACKOFF.attempts();
        loop {
            let received = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                received = self.queue.receive() => received,
            };
            let wait = match received {
                Ok(batch) if batch.is_empty() => {
                    failures.reset();
                    (self.queue.wait_time_secs() == 0).then_some(IDLE_PAUSE)
                }
                Ok(batch) => {
                    failures.reset();
                    self.handle_batch(batch).await;
                    None
                }
                Err(e) => {
                    let wait = failures.next_delay();
                    warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "receiving failed");
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
    ///
    /// The messages whose fate is committed are deleted together
    /// (`DeleteMessageBatch`) when the batch is done, and every
    /// [`DELETE_EVERY`] meanwhile, so that a group whose write is retried
    /// does not keep the others' messages for long.
    pub async fn handle_batch(self: &Arc<Self>, batch: Vec<Received>) {
        debug!(messages = batch.len(), "received");
        let done: Arc<Mutex<Vec<Received>>> = Arc::default();
        let batch = self.apply_together(batch, &done).await;
        let this = self.clone();
        let collected = done.clone();
        let handle = move |message: Received| {
            let this = this.clone();
            let done = collected.clone();
            async move { this.handle_message_into(message, Some(&done)).await }
        };
        let processing = batch::process(batch, Received::group_key, handle);
        tokio::pin!(processing);
        let reports = loop {
            tokio::select! {
                reports = &mut processing => break reports,
                () = tokio::time::sleep(DELETE_EVERY) => self.delete_done(&done).await,
            }
        };
        self.delete_done(&done).await;
        for report in reports {
            let Some(stopped) = report.stopped else {
                continue;
            };
            if stopped.skipped.is_empty() {
                continue;
            }
            let StopReason::Transient { redeliver_in } = stopped.reason;
            info!(
                group = %report.key,
                skipped = stopped.skipped.len(),
                redeliver_in_secs = redeliver_in.as_secs(),
                "left the group's later messages unapplied, to come back in order with the one that failed"
            );
            // Kept away as long as the failed one: released earlier they
            // would only wait behind it (its group is in flight), or, should
            // it come back first, be received, and counted, for nothing.
            for message in &stopped.skipped {
                if let Err(e) = self
                    .queue
                    .extend(message, visibility_secs(redeliver_in))
                    .await
                {
                    debug!(error = %e, message_id = %message.message_id, "could not keep a later message invisible");
                }
            }
        }
    }

    /// Applies the first message of each group in one write when there
    /// are several ([`Ledger::apply_all`]: one request instead of one per
    /// message), and puts them in `done`. Returns the messages left for
    /// the ordinary path, in receive order: every one of them when that
    /// write was refused or failed, since nothing changed then and each
    /// message learns why on its own (a duplicate, a gap, a parked
    /// identity, a store that is down). A group whose first message cannot
    /// be decoded is left whole to the ordinary path. A backend without
    /// such a write costs nothing here.
    async fn apply_together(
        &self,
        batch: Vec<Received>,
        done: &Mutex<Vec<Received>>,
    ) -> Vec<Received> {
        let most = self.ledger.max_applied_together();
        if most < 2 || batch.len() < 2 {
            return batch;
        }
        let mut groups = std::collections::HashSet::new();
        let firsts: Vec<(usize, Envelope)> = batch
            .iter()
            .enumerate()
            .filter(|(_, message)| groups.insert(message.group_key()))
            .filter_map(|(i, message)| decode(message).ok().map(|event| (i, event)))
            .take(most)
            .collect();
        if firsts.len() < 2 {
            return batch;
        }
        let started = Instant::now();
        let events: Vec<&Envelope> = firsts.iter().map(|(_, event)| event).collect();
        // Bounded as one attempt of the ordinary path; when it ends
        // without an answer, that path finds out what was written.
        let write = self.ledger.apply_all(&events);
        match tokio::time::timeout(self.retry.attempt_timeout, write).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return batch,
            Ok(Err(e)) => {
                debug!(error = %e, "the write of several events failed; they go one by one");
                self.keep_invisible(&batch).await;
                return batch;
            }
            Err(_) => {
                debug!("the write of several events timed out; they go one by one");
                self.keep_invisible(&batch).await;
                return batch;
            }
        }
        let mut applied = vec![false; batch.len()];
        for (i, event) in &firsts {
            applied[*i] = true;
            message_span(&batch[*i], Some(event)).in_scope(|| {
                info!(event_id = %event.event_id, amount = %event.data.amount, "applied");
            });
            crate::metrics::applied(event, started);
            crate::metrics::flowing(event.identity.as_str());
        }
        let mut done = done.lock().unwrap_or_else(|p| p.into_inner());
        let mut left = Vec::with_capacity(batch.len() - firsts.len());
        for (message, applied) in batch.into_iter().zip(applied) {
            if applied {
                done.push(message);
            } else {
                left.push(message);
            }
        }
        left
    }

    /// After the write of several events failed (the store is likely
    /// failing), keeps every message of the batch invisible for as long as
    /// the ordinary path may take. That write took up to one attempt
    /// timeout of the visibility timeout already, and a message's own
    /// first attempt may take another before [`Consumer::retrying`]
    /// extends its visibility: twice the attempt timeout, 20 s of SQS's
    /// 30 s by default but up to 40 s (`OBT_STORE_TIMEOUT_SECS`), or a
    /// loaded machine, would let the message come back while it is
    /// handled, to be counted towards the dead-letter queue, and its
    /// redelivery delay fail with an expired receipt handle.
    async fn keep_invisible(&self, batch: &[Received]) {
        let cover =
            visibility_secs(self.retry.budget + self.retry.attempt_timeout + VISIBILITY_MARGIN);
        for message in batch {
            if let Err(e) = self.queue.extend(message, cover).await {
                debug!(error = %e, message_id = %message.message_id, "could not keep a message invisible");
            }
        }
    }

    /// Deletes the messages collected in `done` (their fate is committed).
    async fn delete_done(&self, done: &Mutex<Vec<Received>>) {
        let messages = std::mem::take(&mut *done.lock().unwrap_or_else(|p| p.into_inner()));
        if messages.is_empty() {
            return;
        }
        for (message, reason) in self.queue.delete_all(&messages).await {
            // Its fate is committed; when the message comes back it is
            // recognised (a duplicate, held already, dead-lettered under
            // the same deduplication id).
            warn!(message_id = %message.message_id, reason, "handled, but the message could not be deleted");
        }
    }

    /// Handles one message and deletes it once its fate is committed, in a
    /// span that continues the event's trace (its envelope's `trace`; a new
    /// trace without one), so that its log lines carry the api's
    /// `trace_id`.
    pub async fn handle_message(&self, message: Received) -> Disposition<StopReason> {
        self.handle_message_into(message, None).await
    }

    /// [`Consumer::handle_message`]; with `done`, a message whose fate is
    /// committed is put there for the caller to delete instead.
    async fn handle_message_into(
        &self,
        message: Received,
        done: Option<&Mutex<Vec<Received>>>,
    ) -> Disposition<StopReason> {
        let decoded = decode(&message);
        let span = message_span(&message, decoded.as_ref().ok());
        self.handle_decoded(message, decoded, done)
            .instrument(span)
            .await
    }

    async fn handle_decoded(
        &self,
        message: Received,
        decoded: Result<Envelope, PoisonReason>,
        done: Option<&Mutex<Vec<Received>>>,
    ) -> Disposition<StopReason> {
        let handled = match decoded {
            Ok(event) => self.handle_event(&message, &event).await,
            Err(reason) => self.poison(&message, &reason).await,
        };
        if let Err(Deferred) = handled {
            let redeliver_in = self
                .redelivery
                .delay(message.receive_count.unwrap_or(1).max(1));
            warn!(
                receive_count = ?message.receive_count,
                redeliver_in_secs = redeliver_in.as_secs(),
                "not applied for now, after the in-process retries; the message comes back in {} s",
                redeliver_in.as_secs()
            );
            if let Err(e) = self
                .queue
                .extend(&message, visibility_secs(redeliver_in))
                .await
            {
                warn!(error = %e, "could not delay the message; it comes back after its visibility timeout");
            }
            return Disposition::Stop(StopReason::Transient { redeliver_in });
        }
        if let Some(done) = done {
            done.lock().unwrap_or_else(|p| p.into_inner()).push(message);
            return Disposition::Continue;
        }
        if let Err(e) = self.queue.delete(&message).await {
            // Its fate is committed; when the message comes back it is
            // recognised (a duplicate, held already, dead-lettered under
            // the same deduplication id). The group may go on.
            warn!(error = %e, "handled, but the message could not be deleted");
        }
        Disposition::Continue
    }

    /// Applies, holds or dead-letters one decoded event.
    async fn handle_event(&self, message: &Received, event: &Envelope) -> Result<(), Deferred> {
        let identity = event.identity.as_str();
        for _ in 0..RACE_ROUNDS {
            let started = Instant::now();
            let applied = self
                .retrying(
                    message,
                    || self.ledger.apply(event),
                    |secs| ApplyError::TimedOut {
                        identity: identity.to_owned(),
                        seq: event.seq,
                        secs,
                    },
                )
                .await;
            match applied {
                Ok(Applied::New) => {
                    info!(event_id = %event.event_id, amount = %event.data.amount, "applied");
                    crate::metrics::applied(event, started);
                    crate::metrics::flowing(identity);
                    return Ok(());
                }
                Ok(Applied::Duplicate) => {
                    info!(event_id = %event.event_id, "duplicate of an applied event; deleting it, changing nothing");
                    metrics::counter!("obt_consumer_duplicates_total").increment(1);
                    return Ok(());
                }
                Err(ApplyError::Parked {
                    last_seq, parking, ..
                }) => {
                    crate::metrics::parked(identity);
                    if parking.cause == Cause::Gap && event.seq == last_seq + 1 {
                        return self.heal_gap(message, event).await;
                    }
                    match self.hold(message, event).await? {
                        Some(()) => {
                            if parking.cause == Cause::Gap
                                && parking.seq.is_some_and(|expected| expected <= last_seq)
                            {
                                // The gap healed but its held events wait:
                                // a drain was cut short.
                                self.drain_gap(identity).await;
                            }
                            return Ok(());
                        }
                        None => continue,
                    }
                }
                Err(ApplyError::Gap {
                    expected, received, ..
                }) => {
                    let request = parking::gap_request(expected, received);
                    self.park(message, identity, &request).await?;
                    metrics::counter!("obt_consumer_gaps_held_total").increment(1);
                    // Next round: parked, so held.
                }
                Err(e) if e.is_transient() => return Err(Deferred),
                Err(e) => {
                    return self
                        .dead_letter(
                            message,
                            Some(identity),
                            Cause::Conflict,
                            &e.to_string(),
                            Some(event.seq),
                        )
                        .await;
                }
            }
        }
        warn!("the identity was parked and unparked while this message was handled; it comes back");
        Err(Deferred)
    }

    /// Holds `event` for its parked identity. `None`: it is not parked any
    /// more (an operator's retry just unparked it), so apply it after all.
    async fn hold(&self, message: &Received, event: &Envelope) -> Result<Option<()>, Deferred> {
        let held = self
            .retrying(
                message,
                || self.ledger.hold(event),
                |secs| {
                    HoldError::Ledger(LedgerError::TimedOut {
                        what: format!("holding seq {} of {}", event.seq, event.identity),
                        secs,
                    })
                },
            )
            .await;
        match held {
            Ok(Held::New) => {
                info!(event_id = %event.event_id, "held: its identity is parked; applied in order once it is resolved");
                Ok(Some(()))
            }
            Ok(Held::Duplicate) => {
                info!(event_id = %event.event_id, "held already; deleting the copy");
                metrics::counter!("obt_consumer_duplicates_total").increment(1);
                Ok(Some(()))
            }
            Err(HoldError::NotParked { .. }) => Ok(None),
            Err(e @ HoldError::Conflict { .. }) => self
                .dead_letter(
                    message,
                    Some(event.identity.as_str()),
                    Cause::Conflict,
                    &e.to_string(),
                    Some(event.seq),
                )
                .await
                .map(Some),
            Err(e) => {
                warn!(error = %e, "could not hold the event");
                Err(Deferred)
            }
        }
    }

    /// The missing event of a gap arrived: applies it, then what was held.
    async fn heal_gap(&self, message: &Received, event: &Envelope) -> Result<(), Deferred> {
        let started = Instant::now();
        let applied = self
            .retrying(
                message,
                || self.ledger.apply_parked(event),
                |secs| ApplyError::TimedOut {
                    identity: event.identity.to_string(),
                    seq: event.seq,
                    secs,
                },
            )
            .await;
        match applied {
            Ok(_) => {
                info!(event_id = %event.event_id, "applied the missing event of a gap");
                crate::metrics::applied(event, started);
                self.drain_gap(event.identity.as_str()).await;
                Ok(())
            }
            Err(e) if e.is_transient() => Err(Deferred),
            Err(e) => {
                self.dead_letter(
                    message,
                    Some(event.identity.as_str()),
                    Cause::Conflict,
                    &e.to_string(),
                    Some(event.seq),
                )
                .await
            }
        }
    }

    /// Applies a gap-parked identity's held events that are now in order,
    /// and unparks it when none is left. A failure here loses nothing: the
    /// events stay held, for the next event of the identity or the
    /// operator's retry.
    async fn drain_gap(&self, identity: &str) {
        match parking::drain(self.ledger.as_ref(), identity, |p| p.cause == Cause::Gap).await {
            Ok(drained) if drained.parking.is_none() => {
                metrics::counter!("obt_consumer_events_applied_total")
                    .increment(u64::try_from(drained.applied).unwrap_or(u64::MAX));
                crate::metrics::flowing(identity);
                info!(
                    identity,
                    applied = drained.applied,
                    "the gap healed: applied the held events in order; no longer parked"
                );
            }
            Ok(drained) => {
                metrics::counter!("obt_consumer_events_applied_total")
                    .increment(u64::try_from(drained.applied).unwrap_or(u64::MAX));
                info!(
                    identity,
                    applied = drained.applied,
                    gap = ?drained.gap,
                    conflict = ?drained.conflict,
                    "applied the held events in order as far as they go; still parked"
                )
            }
            Err(e) => {
                warn!(identity, error = %e, "could not apply the held events now; they stay held")
            }
        }
    }

    /// Parks the identity, retried in process like a write.
    async fn park(
        &self,
        message: &Received,
        identity: &str,
        request: &ParkRequest,
    ) -> Result<(), Deferred> {
        let parked = self
            .retrying(
                message,
                || parking::park(self.ledger.as_ref(), identity, request),
                |secs| LedgerError::TimedOut {
                    what: format!("parking {identity}"),
                    secs,
                },
            )
            .await;
        match parked {
            Ok(_) => {
                crate::metrics::parked(identity);
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, identity, "could not park the identity");
                Err(Deferred)
            }
        }
    }

    /// A message that is not an event this consumer can read.
    async fn poison(&self, message: &Received, reason: &PoisonReason) -> Result<(), Deferred> {
        error!(
            message_id = %message.message_id,
            group = message.group_id.as_deref().unwrap_or("<none>"),
            receive_count = ?message.receive_count,
            error = %reason,
            "poison message: it can never be applied as it is"
        );
        let seq = loose_seq(&message.body);
        self.dead_letter(
            message,
            message.group_id.as_deref(),
            Cause::Poison,
            &reason.to_string(),
            seq,
        )
        .await
    }

    /// Parks the identity (if there is one), then sends the message alone
    /// to the dead-letter queue; the caller deletes it. Parking first: a
    /// crash in between leaves an identity parked with the message still
    /// in the main queue, which comes back and is dead-lettered then,
    /// never an identity flowing past a message that left.
    async fn dead_letter(
        &self,
        message: &Received,
        identity: Option<&str>,
        cause: Cause,
        reason: &str,
        seq: Option<u64>,
    ) -> Result<(), Deferred> {
        if let Some(identity) = identity {
            let request = ParkRequest {
                cause,
                reason: reason.to_owned(),
                seq,
                message_id: Some(message.message_id.clone()),
            };
            self.park(message, identity, &request).await?;
        }
        error!(
            identity = identity.unwrap_or("<none>"),
            cause = %cause,
            receive_count = ?message.receive_count,
            reason,
            dead_letter_queue = %self.dead_letters.url(),
            "dead-lettered message {} ({cause}): {reason}",
            message.message_id
        );
        if let Err(e) = self.dead_letters.send(message, cause, reason).await {
            warn!(error = %e, "could not send the message to the dead-letter queue");
            return Err(Deferred);
        }
        metrics::counter!("obt_consumer_dead_lettered_total").increment(1);
        Ok(())
    }

    /// Runs a store call, retrying transient failures in process by the
    /// [`StoreRetry`] and keeping `message` invisible meanwhile. Returns
    /// the last failure when the retries are used up, or at once for a
    /// failure that is not transient.
    async fn retrying<T, E, F, Fut>(
        &self,
        message: &Received,
        call: F,
        timed_out: impl Fn(f32) -> E,
    ) -> Result<T, E>
    where
        E: Transient,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut extended = false;
        let mut failures = self.retry.backoff().attempts();
        loop {
            let error = match tokio::time::timeout(self.retry.attempt_timeout, call()).await {
                Ok(Ok(done)) => {
                    if failures.failures() > 0 {
                        info!(
                            retries = failures.failures(),
                            "applied after transient failures"
                        );
                    }
                    return Ok(done);
                }
                Ok(Err(e)) => e,
                Err(_) => timed_out(self.retry.attempt_timeout.as_secs_f32()),
            };
            if !error.is_transient() {
                return Err(error);
            }
            let pause = failures.next_delay();
            let retry = failures.failures();
            let elapsed = started.elapsed();
            // No attempt starts that could end past the budget: the budget
            // bounds the whole of the retries (and so the shutdown's wait).
            if elapsed + pause + self.retry.attempt_timeout > self.retry.budget {
                if !self.retry.budget.is_zero() {
                    warn!(
                        retries = retry - 1,
                        elapsed_ms = elapsed.as_millis() as u64,
                        error = %error,
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
                match self.queue.extend(message, visibility_secs(cover)).await {
                    Ok(()) => {
                        extended = true;
                        debug!(
                            visibility_secs = visibility_secs(cover),
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

/// A message left to come back later: the records (or SQS) failed for a
/// transient reason, already logged.
#[derive(Debug)]
struct Deferred;

/// A failure the in-process retries may wait out.
trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl Transient for ApplyError {
    fn is_transient(&self) -> bool {
        ApplyError::is_transient(self)
    }
}

impl Transient for HoldError {
    fn is_transient(&self) -> bool {
        HoldError::is_transient(self)
    }
}

impl Transient for LedgerError {
    fn is_transient(&self) -> bool {
        LedgerError::is_transient(self)
    }
}

/// A visibility timeout in whole seconds, rounded up, within SQS's range.
/// The span of the handling of one message, continuing the event's trace
/// (its envelope's `trace`; a new trace without one), so that its log
/// lines carry the api's `trace_id`.
fn message_span(message: &Received, event: Option<&Envelope>) -> tracing::Span {
    let span = info_span!(
        "handle_message",
        identity = tracing::field::Empty,
        seq = tracing::field::Empty,
        message_id = %message.message_id,
        trace_id = tracing::field::Empty,
    );
    if let Some(event) = event {
        span.record("identity", tracing::field::display(&event.identity));
        span.record("seq", event.seq);
    }
    obt_runtime::trace::start(&span, event.and_then(|event| event.trace.as_ref()));
    span
}

fn visibility_secs(duration: Duration) -> i32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i32::try_from(secs.min(MAX_VISIBILITY.as_secs())).unwrap_or(i32::MAX)
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
        let backoff = retry.backoff();
        let ceilings: Vec<u128> = (0..6).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 800, 800]);
        // The pauses of one run of retries: each below its ceiling, and on
        // average growing with the failures (full jitter: uniform below it).
        let runs: Vec<Vec<Duration>> = (0..100)
            .map(|_| {
                let mut failures = backoff.attempts();
                (0..30).map(|_| failures.next_delay()).collect()
            })
            .collect();
        for run in &runs {
            for (n, pause) in run.iter().enumerate() {
                let ceiling = backoff.ceiling(u32::try_from(n).expect("small"));
                assert!(*pause <= ceiling, "retry {n}: {pause:?} > {ceiling:?}");
            }
        }
        let mean = |n: usize| runs.iter().map(|run| run[n]).sum::<Duration>() / 100;
        for n in 0..3 {
            assert!(
                mean(n) < mean(n + 1),
                "retry {n}: {:?} !< {:?}",
                mean(n),
                mean(n + 1)
            );
        }
        assert!(mean(29) <= Duration::from_millis(800));
        let pauses: std::collections::HashSet<Duration> = runs.iter().map(|run| run[3]).collect();
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
    fn redelivery_delays_grow_fourfold_to_the_12_hour_maximum_and_the_documented_budget_holds() {
        let redelivery = Redelivery::default();
        let minutes = |n: u32| redelivery.delay(n).as_secs() / 60;
        assert_eq!(
            [minutes(1), minutes(2), minutes(3), minutes(4)],
            [1, 4, 16, 64]
        );
        assert_eq!(redelivery.delay(30), MAX_VISIBILITY);
        // docs/OPERATIONS.md, RELIABILITY.md: maxReceiveCount 5 -> 85 minutes.
        assert_eq!(redelivery.budget(5), Duration::from_secs(85 * 60));
        assert_eq!(redelivery.budget(1), Duration::ZERO);
    }

    #[test]
    fn a_visibility_is_whole_seconds_rounded_up_within_sqs_range() {
        assert_eq!(visibility_secs(Duration::from_millis(1500)), 2);
        assert_eq!(visibility_secs(Duration::ZERO), 0);
        assert_eq!(visibility_secs(Duration::from_secs(1 << 40)), 43_200);
    }

    #[test]
    fn the_seq_of_a_poison_body_is_read_when_it_has_one() {
        assert_eq!(loose_seq(r#"{"schema_version":2,"seq":7}"#), Some(7));
        assert_eq!(loose_seq("not json"), None);
        assert_eq!(loose_seq(r#"{"seq":"7"}"#), None);
    }

    #[test]
    fn a_body_that_is_no_envelope_is_poison() {
        assert!(matches!(
            decode(&message(Some("AB1"), "not json".to_owned())),
            Err(PoisonReason::Undecodable(_))
        ));
    }
}
