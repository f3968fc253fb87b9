//! The queues, their messages and the rules of delivery, without HTTP.
//! Every operation takes the current time, so that each rule can be tested
//! at any instant; [`super`]'s module doc says where SQS documents them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::error::{Code, ModelError};
use super::message::{Message, MessageSnapshot, Outgoing, Receipt, epoch_millis};
use super::settings::{MAX_VISIBILITY_TIMEOUT, Settings};

pub const ACCOUNT: &str = "000000000000";
pub const REGION: &str = "us-east-1";
const DEDUPLICATION_WINDOW: Duration = Duration::from_secs(5 * 60);
/// One PurgeQueue per queue in this time; a deleted queue's name is free
/// again after it.
const QUIET_PERIOD: Duration = Duration::from_secs(60);
/// Queue attributes GetQueueAttributes knows but answers only when set.
const OPTIONAL_ATTRIBUTES: [&str; 6] = [
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "Policy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
];

/// How one receive picks among the message groups that may deliver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GroupStrategy {
    /// What SQS documents: as many messages of one group as possible, then
    /// the next group's, groups taken in the order of their oldest message.
    #[default]
    FillOneGroup,
    /// One message of each group in turn (first of each, then second...).
    Spread,
}

/// What SendMessage answers for a message, also for a duplicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: String,
    pub sequence_number: String,
}

/// What one receive did.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub deliveries: Vec<Delivery>,
    /// Messages it moved to the dead-letter queue instead.
    pub dead_lettered: usize,
}

/// A message handed out by a receive, under its new receipt handle.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub handle: String,
    pub message: Message,
}

struct Queue {
    settings: Settings,
    created_s: u64,
    modified_s: u64,
    /// In the order sent: queue order.
    messages: VecDeque<Message>,
    /// Deduplication id -> when it was accepted and what was answered.
    deduplication: HashMap<String, (Instant, Accepted)>,
    /// Every message redrive moved out of this queue, for the tests.
    redriven: Vec<Message>,
    purged_at: Option<Instant>,
}

impl Queue {
    fn new(settings: Settings) -> Self {
        let now = epoch_millis() / 1000;
        Self {
            settings,
            created_s: now,
            modified_s: now,
            messages: VecDeque::new(),
            deduplication: HashMap::new(),
            redriven: Vec::new(),
            purged_at: None,
        }
    }

    /// The messages a receive may hand out, in the order it takes them: the
    /// messages of groups with nothing in flight, each group in order.
    fn candidates(&self, strategy: GroupStrategy, now: Instant) -> Vec<usize> {
        let busy: HashSet<&str> = self
            .messages
            .iter()
            .filter(|m| m.in_flight(now))
            .map(|m| m.group.as_str())
            .collect();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut slots: HashMap<&str, usize> = HashMap::new();
        for (index, message) in self.messages.iter().enumerate() {
            if busy.contains(message.group.as_str()) {
                continue;
            }
            let next = groups.len();
            let slot = *slots.entry(message.group.as_str()).or_insert(next);
            if slot == next {
                groups.push(Vec::new());
            }
            groups[slot].push(index);
        }
        match strategy {
            GroupStrategy::FillOneGroup => groups.concat(),
            GroupStrategy::Spread => {
                let rounds = groups.iter().map(Vec::len).max().unwrap_or(0);
                (0..rounds)
                    .flat_map(|round| groups.iter().filter_map(move |g| g.get(round).copied()))
                    .collect()
            }
        }
    }
}

/// Every queue of the model, and the receipt handles it issued.
pub struct State {
    base_url: String,
    pub strategy: GroupStrategy,
    queues: BTreeMap<String, Queue>,
    recently_deleted: HashMap<String, Instant>,
    /// Receipt handle -> (queue, message id), for every handle ever issued.
    handles: HashMap<String, (String, String)>,
    /// Handles a delete succeeded with: deleting again is no error.
    deleted_with: HashSet<String>,
    next_sequence: u64,
}

impl State {
    pub fn new(base_url: String, strategy: GroupStrategy) -> Self {
        Self {
            base_url,
            strategy,
            queues: BTreeMap::new(),
            recently_deleted: HashMap::new(),
            handles: HashMap::new(),
            deleted_with: HashSet::new(),
            next_sequence: 0,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/{ACCOUNT}/{name}", self.base_url)
    }

    pub fn arn(name: &str) -> String {
        format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}")
    }

    fn queue(&self, name: &str) -> Result<&Queue, ModelError> {
        self.queues.get(name).ok_or_else(ModelError::no_queue)
    }

    fn queue_mut(&mut self, name: &str) -> Result<&mut Queue, ModelError> {
        self.queues.get_mut(name).ok_or_else(ModelError::no_queue)
    }

    fn next_sequence_number(&mut self) -> String {
        self.next_sequence += 1;
        format!("{:020}", self.next_sequence)
    }

    /// Creates a FIFO queue, or answers the URL of an equal one.
    pub fn create_queue(
        &mut self,
        name: &str,
        attributes: &BTreeMap<String, String>,
        now: Instant,
    ) -> Result<String, ModelError> {
        check_name(name)?;
        if attributes.get("FifoQueue").map(String::as_str) != Some("true") {
            return Err(ModelError::invalid(format!(
                "{name}: the SQS model has FIFO queues only; create it with FifoQueue=true."
            )));
        }
        if self
            .recently_deleted
            .get(name)
            .is_some_and(|at| now.duration_since(*at) < QUIET_PERIOD)
        {
            return Err(ModelError::new(
                Code::QueueDeletedRecently,
                "You must wait 60 seconds after deleting a queue before you can create another queue with the same name.",
            ));
        }
        let base = self.queues.get(name).map(|q| q.settings.clone());
        let mut settings = base.clone().unwrap_or_default();
        for (key, value) in attributes {
            settings.apply(key, value, true)?;
        }
        if let Some(existing) = base {
            if existing != settings {
                return Err(ModelError::new(
                    Code::QueueNameExists,
                    format!(
                        "A queue already exists with the same name and a different value for one of the attributes {:?}.",
                        attributes.keys().collect::<Vec<_>>()
                    ),
                ));
            }
            return Ok(self.url(name));
        }
        self.check_redrive(&settings)?;
        self.queues.insert(name.to_owned(), Queue::new(settings));
        Ok(self.url(name))
    }

    pub fn queue_url(&self, name: &str) -> Result<String, ModelError> {
        self.queue(name).map(|_| self.url(name))
    }

    /// GetQueueAttributes: the `wanted` names, or every one for `All`.
    pub fn attributes(
        &self,
        name: &str,
        wanted: &[String],
        now: Instant,
    ) -> Result<BTreeMap<String, String>, ModelError> {
        let queue = self.queue(name)?;
        let mut all = queue.settings.render();
        let in_flight = queue.messages.iter().filter(|m| m.in_flight(now)).count();
        let computed = [
            ("QueueArn", Self::arn(name)),
            (
                "ApproximateNumberOfMessages",
                (queue.messages.len() - in_flight).to_string(),
            ),
            (
                "ApproximateNumberOfMessagesNotVisible",
                in_flight.to_string(),
            ),
            ("ApproximateNumberOfMessagesDelayed", "0".to_owned()),
            ("CreatedTimestamp", queue.created_s.to_string()),
            ("LastModifiedTimestamp", queue.modified_s.to_string()),
        ];
        all.extend(computed.map(|(k, v)| (k.to_owned(), v)));
        if wanted.iter().any(|w| w == "All") {
            return Ok(all);
        }
        let mut out = BTreeMap::new();
        for name in wanted {
            match all.get(name) {
                Some(value) => {
                    out.insert(name.clone(), value.clone());
                }
                None if OPTIONAL_ATTRIBUTES.contains(&name.as_str()) => {}
                None => {
                    return Err(ModelError::new(
                        Code::InvalidAttributeName,
                        format!("Unknown Attribute {name}."),
                    ));
                }
            }
        }
        Ok(out)
    }

    pub fn set_attributes(
        &mut self,
        name: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), ModelError> {
        let mut settings = self.queue(name)?.settings.clone();
        for (key, value) in attributes {
            settings.apply(key, value, false)?;
        }
        self.check_redrive(&settings)?;
        let queue = self.queue_mut(name)?;
        queue.settings = settings;
        queue.modified_s = epoch_millis() / 1000;
        Ok(())
    }

    /// A redrive policy must name a queue of the model (all are FIFO, as
    /// the dead-letter queue of a FIFO queue must be).
    fn check_redrive(&self, settings: &Settings) -> Result<(), ModelError> {
        match &settings.redrive {
            Some(redrive)
                if self
                    .dead_letter_name(&redrive.dead_letter_target_arn)
                    .is_none() =>
            {
                Err(ModelError::invalid(format!(
                    "Value {} for parameter RedrivePolicy is invalid. Reason: Dead letter target does not exist.",
                    redrive.dead_letter_target_arn
                )))
            }
            _ => Ok(()),
        }
    }

    fn dead_letter_name(&self, arn: &str) -> Option<String> {
        let name = arn.strip_prefix(&Self::arn(""))?;
        self.queues.contains_key(name).then(|| name.to_owned())
    }

    pub fn purge(&mut self, name: &str, now: Instant) -> Result<(), ModelError> {
        let queue = self.queue_mut(name)?;
        if queue
            .purged_at
            .is_some_and(|at| now.duration_since(at) < QUIET_PERIOD)
        {
            return Err(ModelError::new(
                Code::PurgeQueueInProgress,
                format!("Only one PurgeQueue operation on {name} is allowed every 60 seconds."),
            ));
        }
        queue.messages.clear();
        queue.purged_at = Some(now);
        Ok(())
    }

    pub fn delete_queue(&mut self, name: &str, now: Instant) -> Result<(), ModelError> {
        self.queues.remove(name).ok_or_else(ModelError::no_queue)?;
        self.recently_deleted.insert(name.to_owned(), now);
        Ok(())
    }

    /// Enqueues a message, unless its deduplication id was accepted in the
    /// last five minutes: then it answers as for the first one.
    pub fn send(
        &mut self,
        name: &str,
        outgoing: Outgoing,
        now: Instant,
    ) -> Result<Accepted, ModelError> {
        let queue = self.queues.get_mut(name).ok_or_else(ModelError::no_queue)?;
        let (group, deduplication_id) = outgoing.validate(queue.settings.maximum_message_size)?;
        queue
            .deduplication
            .retain(|_, (at, _)| now.duration_since(*at) < DEDUPLICATION_WINDOW);
        // Per group with `DeduplicationScope: messageGroup`: the same id in
        // another group is another message.
        let remembered = if queue.settings.deduplicate_per_group {
            format!("{group}\u{0}{deduplication_id}")
        } else {
            deduplication_id.clone()
        };
        if let Some((_, first)) = queue.deduplication.get(&remembered) {
            return Ok(first.clone());
        }
        self.next_sequence += 1;
        let accepted = Accepted {
            message_id: uuid::Uuid::new_v4().to_string(),
            sequence_number: format!("{:020}", self.next_sequence),
        };
        queue
            .deduplication
            .insert(remembered, (now, accepted.clone()));
        queue.messages.push_back(Message {
            id: accepted.message_id.clone(),
            body: outgoing.body,
            group,
            deduplication_id,
            sequence_number: accepted.sequence_number.clone(),
            sent_ms: epoch_millis(),
            attributes: outgoing.attributes,
            trace_header: outgoing.trace_header,
            receive_count: 0,
            first_receive_ms: None,
            receipt: None,
        });
        Ok(accepted)
    }

    /// One ReceiveMessage (without its wait): up to `max` messages, each
    /// now in flight under a new handle. A message that would be received
    /// more than the redrive policy's maxReceiveCount times moves to the
    /// dead-letter queue instead, and the receive goes on with the next.
    pub fn receive(
        &mut self,
        name: &str,
        max: usize,
        visibility: Option<u32>,
        now: Instant,
    ) -> Result<Received, ModelError> {
        let redrive = self.queue(name)?.settings.redrive.clone();
        let dead_letter = redrive.and_then(|r| {
            let target = self.dead_letter_name(&r.dead_letter_target_arn)?;
            Some((target, r.max_receive_count))
        });
        let strategy = self.strategy;
        let queue = self.queues.get_mut(name).ok_or_else(ModelError::no_queue)?;
        let timeout = Duration::from_secs(
            visibility
                .unwrap_or(queue.settings.visibility_timeout)
                .into(),
        );
        let mut delivered = Vec::new();
        let mut moved = Vec::new();
        for index in queue.candidates(strategy, now) {
            if delivered.len() == max {
                break;
            }
            let message = &mut queue.messages[index];
            if dead_letter
                .as_ref()
                .is_some_and(|(_, limit)| message.receive_count >= *limit)
            {
                moved.push(index);
                continue;
            }
            message.receive_count += 1;
            message.first_receive_ms.get_or_insert_with(epoch_millis);
            let handle = uuid::Uuid::new_v4().simple().to_string();
            message.receipt = Some(Receipt {
                handle: handle.clone(),
                visible_at: now + timeout,
            });
            self.handles
                .insert(handle.clone(), (name.to_owned(), message.id.clone()));
            delivered.push(Delivery {
                handle,
                message: message.clone(),
            });
        }
        moved.sort_unstable();
        let mut moving: Vec<Message> = moved
            .into_iter()
            .rev()
            .filter_map(|index| queue.messages.remove(index))
            .collect();
        moving.reverse();
        let dead_lettered = moving.len();
        queue.redriven.extend(moving.iter().cloned());
        if let Some((target, _)) = dead_letter {
            for mut message in moving {
                message.receipt = None;
                message.sequence_number = self.next_sequence_number();
                if let Some(dead_letter_queue) = self.queues.get_mut(&target) {
                    dead_letter_queue.messages.push_back(message);
                }
            }
        }
        Ok(Received {
            deliveries: delivered,
            dead_lettered,
        })
    }

    /// Deletes the message `handle` holds in flight. An outdated handle (its
    /// timeout over, or the message received again since) is refused as
    /// expired and leaves the message alone.
    pub fn delete(&mut self, name: &str, handle: &str, now: Instant) -> Result<(), ModelError> {
        let queue = self.queues.get_mut(name).ok_or_else(ModelError::no_queue)?;
        let id = match self.handles.get(handle) {
            Some((owner, id)) if owner == name => id,
            _ => return Err(ModelError::invalid_handle(handle)),
        };
        if self.deleted_with.contains(handle) {
            return Ok(());
        }
        let index = queue
            .messages
            .iter()
            .position(|m| &m.id == id && m.held_by(handle, now))
            .ok_or_else(|| ModelError::expired_handle(handle))?;
        queue.messages.remove(index);
        self.deleted_with.insert(handle.to_owned());
        Ok(())
    }

    /// Sets the visibility timeout of the message `handle` holds in flight
    /// to `timeout` seconds from now (0: visible at once).
    pub fn change_visibility(
        &mut self,
        name: &str,
        handle: &str,
        timeout: i64,
        now: Instant,
    ) -> Result<(), ModelError> {
        let timeout = u32::try_from(timeout)
            .ok()
            .filter(|t| *t <= MAX_VISIBILITY_TIMEOUT)
            .ok_or_else(|| {
                ModelError::invalid(format!(
                    "Value {timeout} for parameter VisibilityTimeout is invalid. Reason: Must be between 0 and 43200."
                ))
            })?;
        let queue = self.queues.get_mut(name).ok_or_else(ModelError::no_queue)?;
        let id = match self.handles.get(handle) {
            Some((owner, id)) if owner == name => id,
            _ => return Err(ModelError::invalid_handle(handle)),
        };
        let message = queue
            .messages
            .iter_mut()
            .find(|m| &m.id == id)
            .ok_or_else(|| ModelError::expired_handle(handle))?;
        let in_flight = message.in_flight(now);
        match message.receipt.as_mut() {
            Some(receipt) if receipt.handle == handle => {
                if !in_flight {
                    return Err(ModelError::new(
                        Code::MessageNotInflight,
                        format!(
                            "Value {handle} for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change."
                        ),
                    ));
                }
                receipt.visible_at = now + Duration::from_secs(timeout.into());
                Ok(())
            }
            _ => Err(ModelError::expired_handle(handle)),
        }
    }

    /// The queue's default long poll.
    pub fn receive_wait(&self, name: &str) -> Result<u32, ModelError> {
        Ok(self.queue(name)?.settings.receive_wait)
    }

    /// When the next message of `name` in flight becomes visible again.
    pub fn next_visibility_change(&self, name: &str, now: Instant) -> Option<Instant> {
        self.queues
            .get(name)?
            .messages
            .iter()
            .filter(|m| m.in_flight(now))
            .filter_map(|m| m.receipt.as_ref().map(|r| r.visible_at))
            .min()
    }

    pub fn messages(&self, name: &str, now: Instant) -> Option<Vec<MessageSnapshot>> {
        let queue = self.queues.get(name)?;
        Some(queue.messages.iter().map(|m| m.snapshot(now)).collect())
    }

    pub fn redriven(&self, name: &str, now: Instant) -> Option<Vec<MessageSnapshot>> {
        let queue = self.queues.get(name)?;
        Some(queue.redriven.iter().map(|m| m.snapshot(now)).collect())
    }
}

/// A FIFO queue's name: 1 to 80 characters, alphanumeric, `-` or `_`,
/// ending in `.fifo`.
fn check_name(name: &str) -> Result<(), ModelError> {
    let stem = name.strip_suffix(".fifo").unwrap_or_default();
    let ok = !stem.is_empty()
        && name.len() <= 80
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ModelError::invalid(format!(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length, ending in .fifo (the model has FIFO queues only): {name}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn state(strategy: GroupStrategy) -> State {
        let mut state = State::new("http://model".to_owned(), strategy);
        let fifo = BTreeMap::from([("FifoQueue".to_owned(), "true".to_owned())]);
        let now = Instant::now();
        state.create_queue("dlq.fifo", &fifo, now).expect("dlq");
        let mut main = fifo.clone();
        main.insert(
            "RedrivePolicy".to_owned(),
            format!(
                r#"{{"deadLetterTargetArn":"{}","maxReceiveCount":2}}"#,
                State::arn("dlq.fifo")
            ),
        );
        state.create_queue("q.fifo", &main, now).expect("queue");
        state
    }

    fn send(state: &mut State, group: &str, body: &str, now: Instant) -> Accepted {
        let outgoing = Outgoing {
            body: body.to_owned(),
            group: Some(group.to_owned()),
            deduplication_id: Some(body.to_owned()),
            ..Outgoing::default()
        };
        state.send("q.fifo", outgoing, now).expect("send")
    }

    fn bodies(deliveries: &[Delivery]) -> Vec<&str> {
        deliveries.iter().map(|d| d.message.body.as_str()).collect()
    }

    #[test]
    fn fill_one_group_takes_a_whole_group_before_the_next_and_spread_alternates() {
        for (strategy, expected) in [
            (GroupStrategy::FillOneGroup, ["g1", "g2", "h1", "h2"]),
            (GroupStrategy::Spread, ["g1", "h1", "g2", "h2"]),
        ] {
            let mut state = state(strategy);
            let now = Instant::now();
            for body in ["g1", "h1", "g2", "h2"] {
                send(&mut state, &body[..1], body, now);
            }
            let got = state.receive("q.fifo", 10, None, now).expect("receive");
            assert_eq!(bodies(&got.deliveries), expected, "{strategy:?}");
        }
    }

    #[test]
    fn a_timed_out_message_comes_back_first_and_its_old_handle_is_expired() {
        let mut state = state(GroupStrategy::FillOneGroup);
        let now = Instant::now();
        send(&mut state, "g", "g1", now);
        send(&mut state, "g", "g2", now);
        let first = state
            .receive("q.fifo", 1, Some(30), now)
            .expect("r")
            .deliveries;
        let blocked = state
            .receive("q.fifo", 10, None, now)
            .expect("r")
            .deliveries;
        assert!(blocked.is_empty(), "g2 waits while g1 is in flight");
        let later = now + MINUTE;
        let again = state
            .receive("q.fifo", 10, None, later)
            .expect("r")
            .deliveries;
        assert_eq!(bodies(&again), ["g1", "g2"]);
        assert_eq!(again[0].message.receive_count, 2);
        let stale = state.delete("q.fifo", &first[0].handle, later);
        assert_eq!(stale, Err(ModelError::expired_handle(&first[0].handle)));
        state
            .delete("q.fifo", &again[0].handle, later)
            .expect("delete");
        state
            .delete("q.fifo", &again[0].handle, later)
            .expect("again: no error");
    }

    #[test]
    fn redrive_happens_at_the_receive_past_max_receive_count() {
        let mut state = state(GroupStrategy::FillOneGroup);
        let mut now = Instant::now();
        send(&mut state, "g", "poison", now);
        send(&mut state, "g", "next", now);
        for round in 1..=2 {
            let got = state.receive("q.fifo", 1, None, now).expect("receive");
            assert_eq!(bodies(&got.deliveries), ["poison"], "round {round}");
            now += MINUTE;
        }
        let got = state.receive("q.fifo", 10, None, now).expect("receive");
        assert_eq!(bodies(&got.deliveries), ["next"]);
        assert_eq!(got.dead_lettered, 1);
        let dead = state.messages("dlq.fifo", now).expect("dlq");
        assert_eq!(
            (dead[0].body.as_str(), dead[0].receive_count),
            ("poison", 2)
        );
        assert_eq!(state.redriven("q.fifo", now).expect("q").len(), 1);
    }

    #[test]
    fn deduplication_holds_for_five_minutes() {
        let mut state = state(GroupStrategy::FillOneGroup);
        let now = Instant::now();
        let first = send(&mut state, "g", "same", now);
        assert_eq!(send(&mut state, "g", "same", now + 4 * MINUTE), first);
        assert_eq!(state.messages("q.fifo", now).expect("q").len(), 1);
        let later = send(&mut state, "g", "same", now + 5 * MINUTE);
        assert_ne!(later, first);
        assert_eq!(state.messages("q.fifo", now).expect("q").len(), 2);
    }

    #[test]
    fn deduplication_is_per_queue_or_per_group_as_the_scope_says() {
        let mut state = state(GroupStrategy::FillOneGroup);
        let now = Instant::now();
        let first = send(&mut state, "g", "same", now);
        assert_eq!(send(&mut state, "h", "same", now), first, "scope queue");
        let scope = BTreeMap::from([("DeduplicationScope".to_owned(), "messageGroup".to_owned())]);
        state
            .set_attributes("q.fifo", &scope)
            .expect("the scope can change");
        let other = send(&mut state, "k", "same", now);
        assert_ne!(other, first, "another group: another message");
        assert_eq!(send(&mut state, "k", "same", now), other, "same group");
        assert_eq!(state.messages("q.fifo", now).expect("q").len(), 2);
    }
}
