//! Daemon mode: the relay reads the stream itself, on one or several
//! instances sharing the shards through [`crate::lease`]s. One task per held
//! shard reads with `GetRecords`, hands the records to the [`Relay`] and
//! checkpoints (fenced by the lease) once it succeeded; it never skips a
//! record it could not publish, and retries with backoff until it succeeds,
//! the lease is lost or the daemon stops. Taking shards (fair share, parents
//! first), expired iterators and SIGTERM: `docs/ARCHITECTURE.md` ("Daemon").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodbstreams::Client as StreamsClient;
use aws_sdk_dynamodbstreams::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodbstreams::types::{Shard, ShardIteratorType};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::{Backoff, wait_or_stop};
use crate::change::{Change, ChangeError};
use crate::lease::{Held, Lease, LeaseError, LeaseTable, Observations, Position, to_take};
use crate::relay::{Acknowledgements, Relay};
use crate::sweeper::Sweeper;

/// Records asked for per `GetRecords` (the service's maximum).
const RECORDS_PER_CALL: i32 = 1000;

/// The shortest time between two `GetRecords` on one shard: DynamoDB
/// Streams allows 5 a second per shard, shared by all readers.
const MIN_GET_RECORDS_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("DynamoDB Streams {call} on {stream_arn} failed: {message}")]
    Streams {
        call: &'static str,
        stream_arn: String,
        message: String,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
}

/// What the shard readers share.
#[derive(Debug)]
pub struct Daemon {
    pub streams: StreamsClient,
    pub relay: Arc<Relay>,
    pub leases: LeaseTable,
    pub stream_arn: String,
    /// The wait after an empty `GetRecords`.
    pub idle_poll: Duration,
    /// How often the shard list is read to find new shards.
    pub discover_interval: Duration,
    /// How long a lease whose counter stands still stays its holder's.
    pub lease_duration: Duration,
    /// The sweeper and its interval, when this daemon sweeps.
    pub sweeper: Option<(Sweeper, Duration)>,
}

/// The coordinator's view between two rounds.
#[derive(Default)]
struct Coordinator {
    held: HashMap<String, Held>,
    observations: Observations,
    /// The shards the stream listed at the last discovery.
    listed: Option<HashSet<String>>,
    discovered_at: Option<Instant>,
}

impl Daemon {
    /// Runs until `shutdown` is cancelled; then lets every shard reader
    /// finish the batch in hand (publish, acknowledge, checkpoint) and
    /// releases the leases.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let sweeping = self
            .sweeper
            .clone()
            .map(|(sweeper, every)| tokio::spawn(sweep_every(sweeper, every, shutdown.clone())));
        let mut readers: JoinSet<String> = JoinSet::new();
        let mut state = Coordinator::default();
        let round = (self.lease_duration / 3).max(Duration::from_millis(100));
        tracing::info!(
            stream_arn = %self.stream_arn,
            owner = self.leases.owner(),
            "relay daemon started"
        );
        loop {
            if let Err(e) = self.round(&mut state, &mut readers, &shutdown).await {
                tracing::error!(error = %e, "lease round failed; retrying");
            }
            #[allow(clippy::cast_precision_loss)] // a few shards
            metrics::gauge!("obt_relay_leases_held").set(state.held.len() as f64);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = readers.join_next() => match done {
                    // A reader that ended before shutdown lost its lease or
                    // finished its shard (and released the lease). One that
                    // ended because of the shutdown keeps its lease in
                    // `held`, to be released below.
                    Ok(shard_id) if !shutdown.is_cancelled() => { state.held.remove(&shard_id); }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "a shard reader panicked"),
                },
                () = tokio::time::sleep(round) => {}
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        tracing::info!(
            readers = readers.len(),
            "stopping: finishing the batches in hand"
        );
        while let Some(done) = readers.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a shard reader panicked");
            }
        }
        for held in state.held.values() {
            match self.leases.release(held).await {
                Ok(()) => tracing::info!(shard_id = %held.shard_id, "lease released"),
                // Released already (its shard ended), or taken over.
                Err(LeaseError::Lost { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "could not release a lease; it expires"),
            }
        }
        metrics::gauge!("obt_relay_leases_held").set(0.0);
        if let Some(sweeping) = sweeping {
            let _ = sweeping.await;
        }
        tracing::info!("relay daemon stopped");
    }

    /// One coordinator round: discover shards now and then, heartbeat what
    /// is held, take what is free.
    async fn round(
        self: &Arc<Self>,
        state: &mut Coordinator,
        readers: &mut JoinSet<String>,
        shutdown: &CancellationToken,
    ) -> Result<(), DaemonError> {
        self.heartbeat(state).await;
        let due = state
            .discovered_at
            .is_none_or(|at| at.elapsed() >= self.discover_interval);
        let mut leases = self.leases.list().await?;
        if due {
            let (listed, created) = self.discover(&leases).await?;
            state.listed = Some(listed);
            state.discovered_at = Some(Instant::now());
            if created {
                leases = self.leases.list().await?;
            }
        }
        let Some(listed) = &state.listed else {
            return Ok(());
        };
        let now = Instant::now();
        state.observations.observe(&leases, now);
        let held: HashSet<&str> = state.held.keys().map(String::as_str).collect();
        let wanted = to_take(
            &leases,
            listed,
            &held,
            &state.observations,
            now,
            self.lease_duration,
            self.leases.owner(),
        );
        for lease in wanted {
            let Some(held) = self.leases.take(lease, shutdown).await? else {
                continue;
            };
            tracing::info!(
                shard_id = %lease.shard_id,
                previous_owner = lease.owner.as_deref().unwrap_or("none"),
                "lease taken"
            );
            state.held.insert(lease.shard_id.clone(), held.clone());
            let daemon = Arc::clone(self);
            let position = lease.checkpoint.clone();
            readers.spawn(async move {
                daemon.read_shard(&held, position).await;
                crate::metrics::shard_left(&held.shard_id);
                held.shard_id.clone()
            });
        }
        Ok(())
    }

    /// Heartbeats every held lease; forgets the ones that were lost (their
    /// readers stop on their own: the lease's stop token is cancelled).
    async fn heartbeat(&self, state: &mut Coordinator) {
        let mut lost = Vec::new();
        for (shard_id, held) in &state.held {
            if held.stop.is_cancelled() {
                continue;
            }
            match self.leases.heartbeat(held).await {
                Ok(()) => {}
                Err(LeaseError::Lost { .. }) => {
                    tracing::warn!(shard_id, "lease lost to another instance");
                    lost.push(shard_id.clone());
                }
                Err(e) => tracing::warn!(shard_id, error = %e, "heartbeat failed; retrying"),
            }
        }
        for shard_id in lost {
            state.held.remove(&shard_id);
        }
    }

    /// Lists the stream's shards and creates the lease rows that are
    /// missing. Returns the ids of the listed shards, and whether a row was
    /// created (then `leases` is out of date).
    async fn discover(&self, leases: &[Lease]) -> Result<(HashSet<String>, bool), DaemonError> {
        let shards = self.list_shards().await?;
        let known: HashSet<&str> = leases.iter().map(|l| l.shard_id.as_str()).collect();
        let mut listed = HashSet::new();
        let mut created = false;
        for shard in &shards {
            let Some(shard_id) = shard.shard_id() else {
                continue;
            };
            if !known.contains(shard_id) {
                self.leases
                    .create_if_absent(shard_id, shard.parent_shard_id())
                    .await?;
                created = true;
            }
            listed.insert(shard_id.to_owned());
        }
        Ok((listed, created))
    }

    async fn list_shards(&self) -> Result<Vec<Shard>, DaemonError> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let out = self
                .streams
                .describe_stream()
                .stream_arn(&self.stream_arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(|e| self.streams_error("DescribeStream", &e))?;
            let Some(description) = out.stream_description else {
                return Ok(shards);
            };
            shards.extend(description.shards.unwrap_or_default());
            match description.last_evaluated_shard_id {
                Some(last) => start = Some(last),
                None => return Ok(shards),
            }
        }
    }

    fn streams_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        call: &'static str,
        e: &SdkError<E, R>,
    ) -> DaemonError {
        DaemonError::Streams {
            call,
            stream_arn: self.stream_arn.clone(),
            message: DisplayErrorContext(e).to_string(),
        }
    }

    /// An iterator at `position`; at the oldest record when there is none
    /// or when the stream no longer holds it (trimmed after 24 h: those
    /// events are still pending on their items and the relay sends them
    /// with the next change of each item, or the sweeper does).
    async fn iterator(
        &self,
        shard_id: &str,
        position: Option<&Position>,
    ) -> Result<Option<String>, DaemonError> {
        let request = |kind: ShardIteratorType, seq: Option<&str>| {
            self.streams
                .get_shard_iterator()
                .stream_arn(&self.stream_arn)
                .shard_id(shard_id)
                .shard_iterator_type(kind)
                .set_sequence_number(seq.map(str::to_owned))
                .send()
        };
        let result = match position {
            Some(Position::After(seq)) => {
                request(ShardIteratorType::AfterSequenceNumber, Some(seq)).await
            }
            _ => request(ShardIteratorType::TrimHorizon, None).await,
        };
        let out = match result {
            Ok(out) => out,
            Err(SdkError::ServiceError(e)) if e.err().is_trimmed_data_access_exception() => {
                tracing::warn!(
                    shard_id,
                    ?position,
                    "the checkpoint is older than the stream's data; reading from the oldest record"
                );
                request(ShardIteratorType::TrimHorizon, None)
                    .await
                    .map_err(|e| self.streams_error("GetShardIterator", &e))?
            }
            Err(e) => return Err(self.streams_error("GetShardIterator", &e)),
        };
        Ok(out.shard_iterator)
    }

    #[tracing::instrument(skip_all, fields(shard_id = %held.shard_id))]
    async fn read_shard(&self, held: &Held, position: Option<Position>) {
        let mut acker = Acker::new(Arc::clone(&self.relay), self.leases.clone(), held.clone());
        let ended = self.read_records(held, position, &mut acker).await;
        // Stopping, the lease lost or the shard read to its end: what was
        // published is acknowledged and checkpointed first.
        if acker.close().await && ended {
            self.finish_shard(held).await;
        }
    }

    /// Reads and publishes until the reader stops (`false`) or the shard
    /// was read to its end (`true`); the acknowledgements and checkpoints
    /// go through `acker`.
    async fn read_records(
        &self,
        held: &Held,
        mut position: Option<Position>,
        acker: &mut Acker,
    ) -> bool {
        let (shard_id, stop) = (held.shard_id.as_str(), &held.stop);
        let mut backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).attempts();
        let mut iterator: Option<String> = None;
        let mut last_call: Option<Instant> = None;
        tracing::info!(?position, "reading shard");
        while !stop.is_cancelled() {
            let current = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(shard_id, position.as_ref()).await {
                    Ok(Some(it)) => it,
                    // No iterator for a closed shard: it was fully read.
                    Ok(None) => return true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot get a shard iterator; retrying");
                        wait_or_stop(&mut backoff, stop).await;
                        continue;
                    }
                },
            };
            if let Some(at) = last_call {
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep_until((at + MIN_GET_RECORDS_INTERVAL).into()) => {}
                }
            }
            last_call = Some(Instant::now());
            let result = tokio::select! {
                () = stop.cancelled() => return false,
                result = self.streams.get_records().shard_iterator(&current).limit(RECORDS_PER_CALL).send() => result,
            };
            let out = match result {
                Ok(out) => out,
                Err(SdkError::ServiceError(e)) if e.err().is_expired_iterator_exception() => {
                    tracing::info!("shard iterator expired; getting a new one from the checkpoint");
                    continue;
                }
                Err(SdkError::ServiceError(e)) if e.err().is_trimmed_data_access_exception() => {
                    tracing::warn!(
                        "records were trimmed before they were read; reading from the oldest record"
                    );
                    position = None;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %DisplayErrorContext(&e), "GetRecords failed; retrying");
                    iterator = Some(current);
                    wait_or_stop(&mut backoff, stop).await;
                    continue;
                }
            };
            backoff.reset();
            let records = out.records.unwrap_or_default();
            let idle = records.is_empty();
            let last_created = records
                .last()
                .and_then(|r| r.dynamodb()?.approximate_creation_date_time())
                .and_then(|t| t.to_millis().ok());
            crate::metrics::shard_read(shard_id, records.len(), last_created);
            if let Some(last) = records
                .last()
                .and_then(|r| r.dynamodb())
                .and_then(|d| d.sequence_number())
            {
                let last = Position::After(last.to_owned());
                let count = records.len();
                let changes = to_changes(records);
                let Some(acks) = self.publish_until_done(&changes, count, stop).await else {
                    return false;
                };
                acker.add(acks, last.clone());
                position = Some(last);
            }
            if !acker.poll().await {
                return false;
            }
            match out.next_shard_iterator {
                Some(next) => iterator = Some(next),
                None => return true,
            }
            if idle {
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep(self.idle_poll) => {}
                }
            }
        }
        false
    }

    /// The shard was read to its end: records that, and lets the lease go
    /// so that its children can be taken.
    async fn finish_shard(&self, held: &Held) {
        if self.save_until_done(held, &Position::ShardEnd).await {
            tracing::info!("shard read to its end");
            if let Err(e) = self.leases.release(held).await {
                tracing::warn!(error = %e, "could not release the finished shard's lease");
            }
        }
    }

    /// Publishes what the `changes` of `records` records add until that
    /// succeeded: the acknowledgements to make. `None` when the reader
    /// stopped first (nothing is checkpointed then).
    async fn publish_until_done(
        &self,
        changes: &Result<Vec<Change>, ChangeError>,
        records: usize,
        stop: &CancellationToken,
    ) -> Option<Acknowledgements> {
        let mut backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).attempts();
        loop {
            let result = match changes {
                Ok(changes) => self.relay.publish(changes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok((summary, acks)) => {
                    tracing::debug!(records, published = summary.published, "batch published");
                    return Some(acks);
                }
                Err(e) => {
                    tracing::error!(error = %e, records, "could not relay a batch; retrying it");
                    if stop.is_cancelled() {
                        return None;
                    }
                    wait_or_stop(&mut backoff, stop).await;
                    if stop.is_cancelled() {
                        return None;
                    }
                }
            }
        }
    }

    /// Saves a checkpoint, retrying; see [`save_until_done`].
    async fn save_until_done(&self, held: &Held, position: &Position) -> bool {
        save_until_done(&self.leases, held, position).await
    }
}

/// Most identities whose acknowledgements wait while the previous ones are
/// made, before the reader waits for them.
const MAX_WAITING_ACKNOWLEDGEMENTS: usize = 10_000;

/// Identities enough to fill a round (four `BatchExecuteStatement` calls
/// of 25): a round starts as soon as that many wait.
const FULL_ROUND: usize = 100;

/// Otherwise a round starts at most this long after the previous one, with
/// what waits then: at low rates, fewer and fuller `BatchExecuteStatement`
/// calls and one checkpoint a second instead of one per `GetRecords`. A
/// crash replays at most this much more of the stream (its events are
/// deduplicated by the queue, or by the consumer's seq after its window).
const ROUND_INTERVAL: Duration = Duration::from_secs(1);

/// Whether a new round starts now, when none is under way: enough
/// identities wait to fill it, or the last one started `ROUND_INTERVAL`
/// ago (the first one starts at once).
fn round_due(waiting: usize, since_last: Option<Duration>) -> bool {
    waiting >= FULL_ROUND || since_last.is_none_or(|since| since >= ROUND_INTERVAL)
}

/// The acknowledgements of one shard reader, made in the background while
/// it reads and publishes on, each round followed by the checkpoint of the
/// records it covers: the checkpoint still moves only past events that
/// were published and acknowledged. The acknowledgements of the batches
/// published meanwhile wait, merged per identity (one write for several
/// events of an identity), for the next round.
struct Acker {
    relay: Arc<Relay>,
    leases: LeaseTable,
    held: Held,
    /// Published, not acknowledged yet, and the position after them.
    waiting: Acknowledgements,
    waiting_up_to: Option<Position>,
    /// The round under way: its acknowledgements, then its checkpoint;
    /// `false` when it gave up (stopping, or the lease lost).
    round: Option<JoinHandle<bool>>,
    /// When the last round started.
    last_round: Option<Instant>,
}

impl Acker {
    fn new(relay: Arc<Relay>, leases: LeaseTable, held: Held) -> Self {
        Self {
            relay,
            leases,
            held,
            waiting: Acknowledgements::default(),
            waiting_up_to: None,
            round: None,
            last_round: None,
        }
    }

    /// The acknowledgements of the records up to `position`.
    fn add(&mut self, acks: Acknowledgements, position: Position) {
        self.waiting.merge(acks);
        self.waiting_up_to = Some(position);
    }

    /// Starts a round for what waits when none is under way and one is due
    /// ([`round_due`]); waits for the one under way when too much waits.
    /// `false` when a round gave up: the reader stops.
    async fn poll(&mut self) -> bool {
        let busy = self.round.as_ref().is_some_and(|r| !r.is_finished());
        if busy && self.waiting.len() < MAX_WAITING_ACKNOWLEDGEMENTS {
            return true;
        }
        if !self.finish_round().await {
            return false;
        }
        if round_due(self.waiting.len(), self.last_round.map(|at| at.elapsed())) {
            self.start_round();
        }
        true
    }

    async fn finish_round(&mut self) -> bool {
        match self.round.take() {
            None => true,
            Some(round) => round.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "an acknowledgement round panicked");
                false
            }),
        }
    }

    fn start_round(&mut self) {
        let Some(position) = self.waiting_up_to.take() else {
            return;
        };
        let acks = std::mem::take(&mut self.waiting);
        self.last_round = Some(Instant::now());
        let (relay, leases, held) = (
            Arc::clone(&self.relay),
            self.leases.clone(),
            self.held.clone(),
        );
        self.round = Some(tokio::spawn(
            async move {
                acknowledge_until_done(&relay, &acks, &held.stop).await
                    && save_until_done(&leases, &held, &position).await
            }
            .instrument(tracing::Span::current()),
        ));
    }

    /// Makes every acknowledgement and checkpoint that waits. `false` when
    /// one gave up.
    async fn close(mut self) -> bool {
        if !self.finish_round().await {
            return false;
        }
        self.start_round();
        self.finish_round().await
    }
}

/// Makes `acks` until that succeeded. `false` when `stop` came first.
async fn acknowledge_until_done(
    relay: &Relay,
    acks: &Acknowledgements,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).attempts();
    loop {
        match relay.acknowledge(acks).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(error = %e, identities = acks.len(), "could not acknowledge published events; retrying");
                if stop.is_cancelled() {
                    return false;
                }
                wait_or_stop(&mut backoff, stop).await;
                if stop.is_cancelled() {
                    return false;
                }
            }
        }
    }
}

/// Saves a checkpoint, retrying; gives up when the lease is lost (the new
/// owner redoes the records since the last checkpoint) or when stopping,
/// which is as safe. `false` when it gave up.
async fn save_until_done(leases: &LeaseTable, held: &Held, position: &Position) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10)).attempts();
    loop {
        match leases.checkpoint(held, position).await {
            Ok(()) => return true,
            Err(LeaseError::Lost { .. }) => {
                tracing::warn!("lease lost: another instance continues this shard");
                return false;
            }
            Err(e) => tracing::warn!(error = %e, "cannot save the checkpoint; retrying"),
        }
        if held.stop.is_cancelled() {
            return false;
        }
        wait_or_stop(&mut backoff, &held.stop).await;
    }
}

/// Runs the sweeper every `every` until `shutdown`.
async fn sweep_every(sweeper: Sweeper, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sweeper.sweep().await {
            tracing::error!(error = %e, "sweep failed; trying again at the next interval");
        }
    }
}

fn to_changes(
    records: Vec<aws_sdk_dynamodbstreams::types::Record>,
) -> Result<Vec<Change>, ChangeError> {
    let mut changes = Vec::with_capacity(records.len());
    for record in records {
        if let Some(change) = Change::from_stream_record(record)? {
            changes.push(change);
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_starts_when_full_or_a_round_interval_after_the_last() {
        // The first round at once, whatever waits.
        assert!(round_due(1, None));
        // A few identities wait for more until the interval has passed...
        let early = ROUND_INTERVAL / 4;
        assert!(!round_due(1, Some(early)));
        assert!(!round_due(FULL_ROUND - 1, Some(early)));
        assert!(round_due(1, Some(ROUND_INTERVAL)));
        // ...unless they fill a round.
        assert!(round_due(FULL_ROUND, Some(early)));
        assert!(round_due(FULL_ROUND, Some(Duration::ZERO)));
    }
}
