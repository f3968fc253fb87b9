//! Daemon mode: the relay reads the stream itself.
//!
//! One task per open shard, started only when the shard's parent (if the
//! stream still lists it) has been read to its end, so that an item's
//! records are handled in order across a shard split. Each task reads
//! with `GetRecords`, hands the records to the [`Relay`], and checkpoints
//! after the relay succeeded. It never skips a record it could not
//! publish: it retries, with backoff, until it succeeds or the daemon
//! stops.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::Client as StreamsClient;
use aws_sdk_dynamodbstreams::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodbstreams::types::{Shard, ShardIteratorType};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::change::{Change, ChangeError};
use crate::checkpoint::{CheckpointError, Checkpoints, Position};
use crate::relay::Relay;

/// Records asked for per `GetRecords` (the service's maximum).
const RECORDS_PER_CALL: i32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("DynamoDB Streams {call} on {stream_arn} failed: {message}")]
    Streams {
        call: &'static str,
        stream_arn: String,
        message: String,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What the shard readers share.
#[derive(Debug)]
pub struct Daemon {
    pub streams: StreamsClient,
    pub relay: Arc<Relay>,
    pub checkpoints: Checkpoints,
    pub stream_arn: String,
    pub idle_poll: Duration,
    pub discover_interval: Duration,
}

impl Daemon {
    /// Runs until `shutdown` is cancelled; then lets every shard reader
    /// finish the batch in hand (publish, acknowledge, checkpoint).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut readers: JoinSet<String> = JoinSet::new();
        let mut running: HashSet<String> = HashSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        tracing::info!(stream_arn = %self.stream_arn, "relay daemon started");
        loop {
            match self
                .start_ready_shards(&mut readers, &mut running, &shutdown)
                .await
            {
                Ok(()) => backoff.reset(Duration::from_millis(200)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot list the stream's shards; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = backoff.wait() => continue,
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(done) = readers.join_next() => {
                    match done {
                        Ok(shard_id) => { running.remove(&shard_id); }
                        Err(e) => tracing::error!(error = %e, "a shard reader panicked"),
                    }
                }
                () = tokio::time::sleep(self.discover_interval) => {}
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
        tracing::info!("relay daemon stopped");
    }

    async fn start_ready_shards(
        self: &Arc<Self>,
        readers: &mut JoinSet<String>,
        running: &mut HashSet<String>,
        shutdown: &CancellationToken,
    ) -> Result<(), DaemonError> {
        let shards = self.list_shards().await?;
        let positions = self.checkpoints.load_all().await?;
        let listed: HashSet<&str> = shards.iter().filter_map(Shard::shard_id).collect();
        for shard in &shards {
            let Some(shard_id) = shard.shard_id() else {
                continue;
            };
            if running.contains(shard_id) || positions.get(shard_id) == Some(&Position::ShardEnd) {
                continue;
            }
            let parent_pending = shard.parent_shard_id().is_some_and(|parent| {
                listed.contains(parent) && positions.get(parent) != Some(&Position::ShardEnd)
            });
            if parent_pending {
                continue;
            }
            running.insert(shard_id.to_owned());
            let daemon = Arc::clone(self);
            let (shard_id, position, shutdown) = (
                shard_id.to_owned(),
                positions.get(shard_id).cloned(),
                shutdown.clone(),
            );
            readers.spawn(async move {
                daemon.read_shard(&shard_id, position, &shutdown).await;
                shard_id
            });
        }
        Ok(())
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

    #[tracing::instrument(skip_all, fields(shard_id))]
    async fn read_shard(
        &self,
        shard_id: &str,
        mut position: Option<Position>,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut iterator: Option<String> = None;
        tracing::info!(?position, "reading shard");
        while !shutdown.is_cancelled() {
            let current = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(shard_id, position.as_ref()).await {
                    Ok(Some(it)) => it,
                    Ok(None) => {
                        // No iterator for a closed shard: it was fully read.
                        self.save_until_done(shard_id, &Position::ShardEnd, shutdown)
                            .await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot get a shard iterator; retrying");
                        wait_or_stop(&mut backoff, shutdown).await;
                        continue;
                    }
                },
            };
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
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
                    wait_or_stop(&mut backoff, shutdown).await;
                    continue;
                }
            };
            backoff.reset(Duration::from_millis(100));
            let records = out.records.unwrap_or_default();
            if let Some(last) = records
                .last()
                .and_then(|r| r.dynamodb())
                .and_then(|d| d.sequence_number())
            {
                let last = Position::After(last.to_owned());
                if !self.handle_until_done(&records, shutdown).await {
                    return;
                }
                self.save_until_done(shard_id, &last, shutdown).await;
                position = Some(last);
            }
            match out.next_shard_iterator {
                Some(next) => iterator = Some(next),
                None => {
                    self.save_until_done(shard_id, &Position::ShardEnd, shutdown)
                        .await;
                    tracing::info!("shard read to its end");
                    return;
                }
            }
            if records.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(self.idle_poll) => {}
                }
            }
        }
    }

    /// Hands `records` to the relay until it succeeds. `false` when the
    /// daemon stopped first (nothing is checkpointed then).
    async fn handle_until_done(
        &self,
        records: &[aws_sdk_dynamodbstreams::types::Record],
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let result = match to_changes(records) {
                Ok(changes) => self.relay.handle(&changes).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(summary) => {
                    tracing::debug!(
                        records = records.len(),
                        published = summary.published,
                        "batch relayed"
                    );
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, records = records.len(), "could not relay a batch; retrying it");
                    if shutdown.is_cancelled() {
                        return false;
                    }
                    wait_or_stop(&mut backoff, shutdown).await;
                    if shutdown.is_cancelled() {
                        return false;
                    }
                }
            }
        }
    }

    /// Saves a checkpoint, retrying; gives up only when stopping, which is
    /// safe: the records after the previous checkpoint are read again.
    async fn save_until_done(
        &self,
        shard_id: &str,
        position: &Position,
        shutdown: &CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match self.checkpoints.save(shard_id, position).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "cannot save the checkpoint; retrying"),
            }
            if shutdown.is_cancelled() {
                return;
            }
            wait_or_stop(&mut backoff, shutdown).await;
        }
    }
}

fn to_changes(
    records: &[aws_sdk_dynamodbstreams::types::Record],
) -> Result<Vec<Change>, ChangeError> {
    let mut changes = Vec::with_capacity(records.len());
    for record in records {
        if let Some(change) = Change::from_stream_record(record)? {
            changes.push(change);
        }
    }
    Ok(changes)
}

async fn wait_or_stop(backoff: &mut Backoff, shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = backoff.wait() => {}
    }
}
