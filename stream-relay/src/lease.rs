//! Leases: how several daemon instances share a stream's shards. One row per
//! shard (partition key `stream_arn`, sort key `shard_id`) holds its owner,
//! its checkpoint and a lease counter that every write (take, heartbeat,
//! checkpoint, release) is conditioned on and increments: a fencing token,
//! so that a former owner's next write is rejected ([`LeaseError::Lost`]).
//! Expiry is judged on the watcher's own monotonic clock ([`Observations`]),
//! never by comparing clocks. Publishing is not fenced and need not be (a
//! former owner adds only duplicates): `docs/ARCHITECTURE.md` ("Daemon",
//! "Several publishers are safe").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The checkpoint value of a shard that has been read to its end.
pub const SHARD_END: &str = "SHARD_END";

const STREAM_ARN: &str = "stream_arn";
const SHARD_ID: &str = "shard_id";
const PARENT: &str = "parent_shard_id";
const OWNER: &str = "lease_owner";
const COUNTER: &str = "lease_counter";
const CHECKPOINT: &str = "checkpoint";
const UPDATED_AT: &str = "updated_at";

/// Where a shard's reading stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// Resume after this sequence number.
    After(String),
    /// The shard is closed and fully handled.
    ShardEnd,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another instance took the lease: this one must stop reading the
    /// shard. Its work since the last checkpoint is redone by the new owner.
    #[error("the lease on shard {shard_id} was taken by another instance")]
    Lost { shard_id: String },
    #[error("DynamoDB {call} on lease table {table} failed: {message}")]
    DynamoDb {
        call: &'static str,
        table: String,
        message: String,
    },
    #[error("the lease row of shard {shard_id} in table {table} is malformed: {reason}")]
    Malformed {
        table: String,
        shard_id: String,
        reason: String,
    },
}

/// A lease row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard_id: String,
    pub parent_shard_id: Option<String>,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: Option<Position>,
    /// When the row was last written (taken, renewed, checkpointed or
    /// released), RFC 3339 on the writer's clock: for operators
    /// (`obt-admin status`); expiry never looks at it.
    pub updated_at: Option<String>,
}

impl Lease {
    pub fn finished(&self) -> bool {
        self.checkpoint == Some(Position::ShardEnd)
    }
}

/// A lease this instance holds. The shard reader and the heartbeat share
/// it; the counter's lock orders their writes, so neither fences the other.
#[derive(Debug, Clone)]
pub struct Held {
    pub shard_id: String,
    /// The counter of this instance's last successful write.
    counter: Arc<Mutex<u64>>,
    /// Cancelled when the lease is lost or released, or the daemon stops
    /// (a child of its shutdown token): the shard's reader stops.
    pub stop: CancellationToken,
}

/// The lease rows of one stream, written as one owner.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
    stream_arn: String,
    owner: String,
}

impl LeaseTable {
    pub fn new(client: Client, table: String, stream_arn: String, owner: String) -> Self {
        Self {
            client,
            table,
            stream_arn,
            owner,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn error<E: std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        call: &'static str,
        e: &SdkError<E, R>,
    ) -> LeaseError {
        LeaseError::DynamoDb {
            call,
            table: self.table.clone(),
            message: DisplayErrorContext(e).to_string(),
        }
    }

    /// Every lease row of the stream, read consistently.
    pub async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let items = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#s = :s")
            .expression_attribute_names("#s", STREAM_ARN)
            .expression_attribute_values(":s", AttributeValue::S(self.stream_arn.clone()))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| self.error("Query", &e))?;
        items.iter().map(|item| self.parse(item)).collect()
    }

    fn parse(&self, item: &HashMap<String, AttributeValue>) -> Result<Lease, LeaseError> {
        let text = |name: &str| match item.get(name) {
            Some(AttributeValue::S(s)) => Some(s.clone()),
            _ => None,
        };
        let shard_id = text(SHARD_ID).unwrap_or_default();
        let counter = match item.get(COUNTER) {
            Some(AttributeValue::N(n)) => n.parse().map_err(|_| LeaseError::Malformed {
                table: self.table.clone(),
                shard_id: shard_id.clone(),
                reason: format!("{COUNTER} is {n}"),
            })?,
            _ => 0,
        };
        Ok(Lease {
            parent_shard_id: text(PARENT),
            owner: text(OWNER),
            counter,
            checkpoint: text(CHECKPOINT).map(|c| {
                if c == SHARD_END {
                    Position::ShardEnd
                } else {
                    Position::After(c)
                }
            }),
            updated_at: text(UPDATED_AT),
            shard_id,
        })
    }

    /// Creates the row of a shard the stream lists, unless it exists.
    pub async fn create_if_absent(
        &self,
        shard_id: &str,
        parent_shard_id: Option<&str>,
    ) -> Result<(), LeaseError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.new_row(shard_id, parent_shard_id)))
            .condition_expression("attribute_not_exists(#s)")
            .expression_attribute_names("#s", SHARD_ID)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(())
            }
            Err(e) => Err(self.error("PutItem", &e)),
        }
    }

    fn new_row(
        &self,
        shard_id: &str,
        parent_shard_id: Option<&str>,
    ) -> HashMap<String, AttributeValue> {
        let mut row = HashMap::from([
            (
                STREAM_ARN.to_owned(),
                AttributeValue::S(self.stream_arn.clone()),
            ),
            (SHARD_ID.to_owned(), AttributeValue::S(shard_id.to_owned())),
            (COUNTER.to_owned(), AttributeValue::N("0".to_owned())),
            (UPDATED_AT.to_owned(), AttributeValue::S(now())),
        ]);
        if let Some(parent) = parent_shard_id {
            row.insert(PARENT.to_owned(), AttributeValue::S(parent.to_owned()));
        }
        row
    }

    /// Takes `lease` as last seen. `None` when another instance wrote to it
    /// since (it took the lease first, or its owner is alive after all).
    /// The held lease's `stop` is a child of `shutdown`.
    pub async fn take(
        &self,
        lease: &Lease,
        shutdown: &CancellationToken,
    ) -> Result<Option<Held>, LeaseError> {
        let next = lease.counter + 1;
        let result = self
            .update(&lease.shard_id)
            .update_expression("SET #o = :me, #c = :next, #u = :now")
            .condition_expression("#c = :seen")
            .expression_attribute_values(":seen", AttributeValue::N(lease.counter.to_string()))
            .expression_attribute_values(":next", AttributeValue::N(next.to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(Held {
                shard_id: lease.shard_id.clone(),
                counter: Arc::new(Mutex::new(next)),
                stop: shutdown.child_token(),
            })),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(None)
            }
            Err(e) => Err(self.error("UpdateItem", &e)),
        }
    }

    /// Proves this instance is alive: bumps the counter.
    pub async fn heartbeat(&self, held: &Held) -> Result<(), LeaseError> {
        self.fenced(held, "SET #c = :next, #u = :now", None).await
    }

    /// Records `position` in the shard: fenced, so a former owner cannot
    /// move the checkpoint of a lease it lost.
    pub async fn checkpoint(&self, held: &Held, position: &Position) -> Result<(), LeaseError> {
        let value = match position {
            Position::After(seq) => seq.clone(),
            Position::ShardEnd => SHARD_END.to_owned(),
        };
        self.fenced(
            held,
            "SET #c = :next, #u = :now, #cp = :cp",
            Some(AttributeValue::S(value)),
        )
        .await
    }

    /// Gives the lease up (on shutdown, or after SHARD_END), so that
    /// another instance can take it at once rather than after expiry.
    pub async fn release(&self, held: &Held) -> Result<(), LeaseError> {
        let result = self
            .fenced(held, "SET #c = :next, #u = :now REMOVE #o", None)
            .await;
        held.stop.cancel();
        result
    }

    /// A write conditioned on this instance owning the lease at the counter
    /// of its last write; a failed condition means the lease is lost.
    async fn fenced(
        &self,
        held: &Held,
        update: &str,
        checkpoint: Option<AttributeValue>,
    ) -> Result<(), LeaseError> {
        let mut counter = held.counter.lock().await;
        let next = *counter + 1;
        let mut request = self
            .update(&held.shard_id)
            .update_expression(update)
            .condition_expression("#o = :me AND #c = :seen")
            .expression_attribute_values(":seen", AttributeValue::N(counter.to_string()))
            .expression_attribute_values(":next", AttributeValue::N(next.to_string()));
        if let Some(checkpoint) = checkpoint {
            request = request
                .expression_attribute_names("#cp", CHECKPOINT)
                .expression_attribute_values(":cp", checkpoint);
        }
        match request.send().await {
            Ok(_) => {
                *counter = next;
                Ok(())
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                held.stop.cancel();
                Err(LeaseError::Lost {
                    shard_id: held.shard_id.clone(),
                })
            }
            Err(e) => Err(self.error("UpdateItem", &e)),
        }
    }

    fn update(
        &self,
        shard_id: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key(STREAM_ARN, AttributeValue::S(self.stream_arn.clone()))
            .key(SHARD_ID, AttributeValue::S(shard_id.to_owned()))
            .expression_attribute_names("#o", OWNER)
            .expression_attribute_names("#c", COUNTER)
            .expression_attribute_names("#u", UPDATED_AT)
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":now", AttributeValue::S(now()))
    }
}

/// For operators reading the table; expiry never looks at it.
fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What one instance has seen of the other instances' leases: for each
/// shard, the counter and when (on this instance's clock) it last moved.
#[derive(Debug, Default)]
pub struct Observations {
    seen: HashMap<String, (u64, Instant)>,
}

impl Observations {
    /// Notes the rows as read at `now`.
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        self.seen
            .retain(|shard, _| leases.iter().any(|l| &l.shard_id == shard));
        for lease in leases {
            let unchanged = self
                .seen
                .get(&lease.shard_id)
                .is_some_and(|(counter, _)| *counter == lease.counter);
            if !unchanged {
                self.seen
                    .insert(lease.shard_id.clone(), (lease.counter, now));
            }
        }
    }

    /// Whether `lease` may be taken at `now`: nobody owns it, or its
    /// owner's counter has not moved for `duration`.
    pub fn available(&self, lease: &Lease, now: Instant, duration: Duration) -> bool {
        if lease.owner.is_none() {
            return true;
        }
        match self.seen.get(&lease.shard_id) {
            Some((counter, since)) => {
                *counter == lease.counter && now.duration_since(*since) >= duration
            }
            None => false,
        }
    }
}

/// The leases an instance should try to take now, in order: those of open
/// shards (not finished, still listed by the stream) that it does not hold,
/// whose parent shard is done (finished, or no longer listed), and that are
/// free or expired; no more than it takes to reach its fair share (open
/// shards divided by live owners, itself included, rounded up). It does not
/// steal from live owners.
pub fn to_take<'a>(
    leases: &'a [Lease],
    listed: &HashSet<String>,
    held: &HashSet<&str>,
    observations: &Observations,
    now: Instant,
    duration: Duration,
    me: &str,
) -> Vec<&'a Lease> {
    let by_shard: HashMap<&str, &Lease> = leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
    let open: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.finished() && listed.contains(&l.shard_id))
        .collect();
    let mut live: HashSet<&str> = open
        .iter()
        .filter(|l| !observations.available(l, now, duration))
        .filter_map(|l| l.owner.as_deref())
        .collect();
    live.insert(me);
    let share = open.len().div_ceil(live.len());
    let room = share.saturating_sub(held.len());
    open.into_iter()
        .filter(|lease| !held.contains(lease.shard_id.as_str()))
        .filter(|lease| {
            lease.parent_shard_id.as_deref().is_none_or(|parent| {
                !listed.contains(parent) || by_shard.get(parent).is_some_and(|p| p.finished())
            })
        })
        .filter(|lease| observations.available(lease, now, duration))
        .take(room)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(owner: Option<&str>, counter: u64) -> Lease {
        Lease {
            shard_id: "shard-1".to_owned(),
            parent_shard_id: None,
            owner: owner.map(str::to_owned),
            counter,
            checkpoint: None,
            updated_at: None,
        }
    }

    const DURATION: Duration = Duration::from_secs(10);

    #[test]
    fn an_unowned_lease_is_available_at_once() {
        let observations = Observations::default();
        assert!(observations.available(&lease(None, 7), Instant::now(), DURATION));
    }

    #[test]
    fn an_owned_lease_expires_only_after_its_counter_stood_still_for_the_duration() {
        let start = Instant::now();
        let mut observations = Observations::default();
        let owned = lease(Some("a"), 3);
        observations.observe(std::slice::from_ref(&owned), start);
        assert!(!observations.available(&owned, start + DURATION / 2, DURATION));
        assert!(observations.available(&owned, start + DURATION, DURATION));
    }

    #[test]
    fn a_heartbeat_restarts_the_expiry_clock() {
        let start = Instant::now();
        let mut observations = Observations::default();
        observations.observe(&[lease(Some("a"), 3)], start);
        let beat = start + DURATION / 2;
        observations.observe(&[lease(Some("a"), 4)], beat);
        let later = start + DURATION;
        assert!(!observations.available(&lease(Some("a"), 4), later, DURATION));
        assert!(observations.available(&lease(Some("a"), 4), beat + DURATION, DURATION));
    }

    fn shard(id: &str, parent: Option<&str>, owner: Option<&str>, finished: bool) -> Lease {
        Lease {
            shard_id: id.to_owned(),
            parent_shard_id: parent.map(str::to_owned),
            owner: owner.map(str::to_owned),
            counter: 1,
            checkpoint: finished.then_some(Position::ShardEnd),
            updated_at: None,
        }
    }

    fn ids(leases: Vec<&Lease>) -> Vec<&str> {
        leases.iter().map(|l| l.shard_id.as_str()).collect()
    }

    fn listed(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_child_shard_waits_until_its_parent_is_read_to_its_end() {
        let now = Instant::now();
        let none = HashSet::new();
        let seen = Observations::default();
        let open_parent = [
            shard("p", None, Some("other"), false),
            shard("c", Some("p"), None, false),
        ];
        let all = listed(&["p", "c"]);
        let taken = to_take(&open_parent, &all, &none, &seen, now, DURATION, "me");
        assert!(
            ids(taken).is_empty(),
            "the parent is held and open: nothing to take"
        );

        let done_parent = [
            shard("p", None, None, true),
            shard("c", Some("p"), None, false),
        ];
        let taken = to_take(&done_parent, &all, &none, &seen, now, DURATION, "me");
        assert_eq!(ids(taken), ["c"]);

        // A parent the stream no longer lists (trimmed) does not block.
        let taken = to_take(
            &open_parent[1..],
            &listed(&["c"]),
            &none,
            &seen,
            now,
            DURATION,
            "me",
        );
        assert_eq!(ids(taken), ["c"]);
    }

    #[test]
    fn an_instance_takes_its_fair_share_and_no_more() {
        let now = Instant::now();
        let none = HashSet::new();
        let mut seen = Observations::default();
        let leases: Vec<Lease> = (0..6)
            .map(|i| {
                let owner = match i {
                    0 => Some("a"),
                    1 => Some("b"),
                    _ => None,
                };
                shard(&format!("s{i}"), None, owner, false)
            })
            .collect();
        seen.observe(&leases, now);
        let all: HashSet<String> = leases.iter().map(|l| l.shard_id.clone()).collect();
        // Three live owners (a, b and me) for six shards: two each.
        let taken = to_take(&leases, &all, &none, &seen, now, DURATION, "me");
        assert_eq!(ids(taken), ["s2", "s3"]);
        let mine: HashSet<&str> = ["s4"].into();
        let taken = to_take(&leases, &all, &mine, &seen, now, DURATION, "me");
        assert_eq!(ids(taken), ["s2"]);
        // Once a's and b's counters stood still for the lease duration,
        // their shards are free too, and the share is all six.
        let later = now + DURATION;
        let taken = to_take(&leases, &all, &none, &seen, later, DURATION, "me");
        assert_eq!(ids(taken), ["s0", "s1", "s2", "s3", "s4", "s5"]);
    }

    #[test]
    fn finished_and_unlisted_shards_are_never_taken() {
        let now = Instant::now();
        let leases = [
            shard("done", None, None, true),
            shard("gone", None, None, false),
        ];
        let taken = to_take(
            &leases,
            &listed(&["done"]),
            &HashSet::new(),
            &Observations::default(),
            now,
            DURATION,
            "me",
        );
        assert!(ids(taken).is_empty());
    }

    #[test]
    fn a_lease_never_observed_before_is_not_expired() {
        // A fresh instance must watch for the whole duration before it
        // judges another instance dead.
        let observations = Observations::default();
        assert!(!observations.available(&lease(Some("a"), 3), Instant::now(), DURATION));
    }
}
