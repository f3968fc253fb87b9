//! The core of the relay, shared by every driver: given stream changes in
//! shard order, publish the events they add, in `seq` order per identity,
//! then acknowledge them on the item.
//!
//! Which events to publish: every pending event of the changed item above
//! the identity's "published up to" mark, not just the one the write added.
//! Normally that is the same thing; but when the stream lost a record (data
//! trimmed after 24 h, a stream re-created) the older event is still
//! pending on the item and goes out first, so the consumer never sees a
//! gap. The mark is kept in memory and, when unknown (a restart, a new
//! identity), read from the item: an event below the oldest pending one was
//! acknowledged, hence published. Re-sending is always safe (SQS
//! deduplicates by event id for 5 minutes, the consumer for ever); losing
//! is not, so every failure leaves the mark and the checkpoint where they
//! were and the caller retries.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt, stream};
use obt_contract::Envelope;

use crate::change::Change;
use crate::outbox::{OutboxError, OutboxTable};
use crate::publisher::{PublishError, Publisher};

/// DynamoDB calls on different items made at once (mark look-ups,
/// acknowledgements): a batch of records may touch hundreds of items.
const CONCURRENT_ITEM_CALLS: usize = 32;

/// Identities whose mark is kept in memory; past that the cache starts
/// afresh (a miss only costs one read).
const MARK_CACHE_LIMIT: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Publishes and acknowledges outbox events. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Relay {
    publisher: Publisher,
    outbox: OutboxTable,
    /// Per identity, the highest seq known to be published.
    published: Mutex<HashMap<String, u64>>,
}

impl Relay {
    pub fn new(publisher: Publisher, outbox: OutboxTable) -> Self {
        Self {
            publisher,
            outbox,
            published: Mutex::new(HashMap::new()),
        }
    }

    fn cached_mark(&self, identity: &str) -> Option<u64> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(identity)
            .copied()
    }

    fn raise_marks(&self, marks: &HashMap<String, u64>) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if published.len() + marks.len() > MARK_CACHE_LIMIT {
            published.clear();
        }
        for (identity, seq) in marks {
            let mark = published.entry(identity.clone()).or_default();
            *mark = (*mark).max(*seq);
        }
    }

    /// The marks of every identity that `changes` add events to: from
    /// memory, or read from the items (concurrently) when unknown.
    async fn marks_before(&self, changes: &[Change]) -> Result<HashMap<String, u64>, RelayError> {
        let mut marks = HashMap::new();
        let mut unknown = HashSet::new();
        for change in changes.iter().filter(|c| c.adds_events) {
            if marks.contains_key(&change.identity) || unknown.contains(&change.identity) {
                continue;
            }
            match self.cached_mark(&change.identity) {
                Some(mark) => {
                    marks.insert(change.identity.clone(), mark);
                }
                None => {
                    unknown.insert(change.identity.clone());
                }
            }
        }
        let fetched: Vec<(String, u64)> = stream::iter(unknown)
            .map(|identity| async move {
                let mark = self.outbox.published_up_to(&identity).await?;
                Ok::<_, RelayError>((identity, mark))
            })
            .buffer_unordered(CONCURRENT_ITEM_CALLS)
            .try_collect()
            .await?;
        marks.extend(fetched);
        Ok(marks)
    }

    /// Handles `changes` (in shard order). On `Ok`, every event they add has
    /// been accepted by SQS and acknowledged; the caller may checkpoint past
    /// the last change.
    pub async fn handle(&self, changes: &[Change]) -> Result<Summary, RelayError> {
        // Per identity: the mark before this call, raised as events are planned.
        let mut marks = self.marks_before(changes).await?;
        let mut to_publish: Vec<Envelope> = Vec::new();
        let mut to_acknowledge: HashMap<String, Vec<u64>> = HashMap::new();
        let mut summary = Summary::default();

        for change in changes {
            if !change.adds_events {
                summary.skipped += 1;
                continue;
            }
            let mark = marks.entry(change.identity.clone()).or_default();
            for event in &change.pending {
                if event.seq > *mark {
                    to_publish.push(event.clone());
                    *mark = event.seq;
                }
            }
            let published_up_to = *mark;
            let acks = to_acknowledge.entry(change.identity.clone()).or_default();
            acks.extend(
                change
                    .pending
                    .iter()
                    .map(|e| e.seq)
                    .filter(|seq| *seq <= published_up_to),
            );
        }

        self.publisher.publish(&to_publish).await?;
        summary.published = to_publish.len();
        stream::iter(to_acknowledge)
            .map(|(identity, mut seqs)| async move {
                seqs.sort_unstable();
                seqs.dedup();
                self.outbox.acknowledge(&identity, &seqs).await
            })
            .buffer_unordered(CONCURRENT_ITEM_CALLS)
            .try_collect::<()>()
            .await?;
        self.raise_marks(&marks);
        Ok(summary)
    }
}

/// What one [`Relay::handle`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Events accepted by SQS.
    pub published: usize,
    /// Changes that added no event (acknowledgements).
    pub skipped: usize,
}
