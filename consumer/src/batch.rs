//! The order-keeping core of the consumer, free of AWS so that it can be
//! tested on its own.
//!
//! SQS FIFO hands out a group's messages in order, and may hand out
//! several of one group in one batch. Order then depends on the consumer:
//! a group's messages must be handled one after the other, and when one
//! fails, the ones after it must not be applied in this batch. They stay
//! unacknowledged and come back, in order, behind the failed one. Different
//! groups (identities) are independent and run concurrently.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::JoinSet;
use tracing::instrument::WithSubscriber;
use tracing::{Instrument, error};

/// What the handler says about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition<R> {
    /// Done with it (applied, or recognised as applied before): the
    /// group goes on with its next message.
    Continue,
    /// Not done: the group stops here for this batch.
    Stop(R),
}

/// The messages of one message group, in receive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<M> {
    pub key: String,
    pub messages: Vec<M>,
}

/// How one group went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport<M, R> {
    pub key: String,
    /// How many messages were given to the handler, the failed one included.
    pub handled: usize,
    /// Set when the group stopped before its end.
    pub stopped: Option<Stopped<M, R>>,
}

/// Where and why a group stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped<M, R> {
    pub reason: R,
    /// The messages after the failed one, never given to the handler.
    pub skipped: Vec<M>,
}

/// Splits a batch by `key`, keeping the receive order inside each group;
/// groups come in the order of their first message.
pub fn group_in_order<M>(messages: Vec<M>, key: impl Fn(&M) -> String) -> Vec<Group<M>> {
    let mut groups: Vec<Group<M>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for message in messages {
        let k = key(&message);
        match index.get(&k) {
            Some(&i) => groups[i].messages.push(message),
            None => {
                index.insert(k.clone(), groups.len());
                groups.push(Group {
                    key: k,
                    messages: vec![message],
                });
            }
        }
    }
    groups
}

/// Handles one group's messages one by one, stopping at the first that is
/// not done.
pub async fn run_group<M, R, H, Fut>(group: Group<M>, handle: H) -> GroupReport<M, R>
where
    H: Fn(M) -> Fut,
    Fut: Future<Output = Disposition<R>>,
{
    let mut messages = group.messages.into_iter();
    let mut handled = 0;
    while let Some(message) = messages.next() {
        handled += 1;
        if let Disposition::Stop(reason) = handle(message).await {
            let skipped = messages.collect();
            return GroupReport {
                key: group.key,
                handled,
                stopped: Some(Stopped { reason, skipped }),
            };
        }
    }
    GroupReport {
        key: group.key,
        handled,
        stopped: None,
    }
}

/// Groups `messages` and runs every group concurrently (each in its own
/// task, so that a panic loses only that group's progress), each group
/// sequentially. Returns once every group is finished, reports in group
/// order; a group whose task panicked has no report (its messages were not
/// acknowledged, so they come back).
pub async fn process<M, R, H, Fut>(
    messages: Vec<M>,
    key: impl Fn(&M) -> String,
    handle: H,
) -> Vec<GroupReport<M, R>>
where
    M: Send + 'static,
    R: Send + 'static,
    H: Fn(M) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Disposition<R>> + Send,
{
    let mut tasks = JoinSet::new();
    for (position, group) in group_in_order(messages, key).into_iter().enumerate() {
        let handle = handle.clone();
        let task = async move { (position, run_group(group, handle).await) };
        tasks.spawn(task.in_current_span().with_current_subscriber());
    }
    let mut reports = Vec::with_capacity(tasks.len());
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(report) => reports.push(report),
            Err(e) => {
                error!(error = %e, "a message group's task failed; its messages will be redelivered")
            }
        }
    }
    reports.sort_by_key(|(position, _)| *position);
    reports.into_iter().map(|(_, report)| report).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// A message of the tests: group and position, e.g. ("a", 2).
    type Msg = (&'static str, u32);

    fn key(m: &Msg) -> String {
        m.0.to_owned()
    }

    #[test]
    fn grouping_keeps_the_receive_order_inside_each_group() {
        let batch = vec![("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3), ("b", 2)];
        let groups = group_in_order(batch, key);
        let keys: Vec<&str> = groups.iter().map(|g| g.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(groups[0].messages, [("a", 1), ("a", 2), ("a", 3)]);
        assert_eq!(groups[1].messages, [("b", 1), ("b", 2)]);
        assert_eq!(groups[2].messages, [("c", 1)]);
    }

    #[tokio::test]
    async fn a_group_stops_at_its_first_failure_and_the_others_go_on() {
        let batch = vec![
            ("a", 1),
            ("b", 1),
            ("a", 2),
            ("c", 1),
            ("a", 3),
            ("b", 2),
            ("a", 4),
        ];
        let seen = Arc::new(Mutex::new(Vec::<Msg>::new()));
        let handle = {
            let seen = seen.clone();
            move |m: Msg| {
                let seen = seen.clone();
                async move {
                    seen.lock().expect("not poisoned").push(m);
                    if m == ("a", 2) {
                        Disposition::Stop("failed")
                    } else {
                        Disposition::Continue
                    }
                }
            }
        };

        let reports = process(batch, key, handle).await;

        let seen = seen.lock().expect("not poisoned").clone();
        assert!(
            !seen.contains(&("a", 3)) && !seen.contains(&("a", 4)),
            "handled after a failure: {seen:?}"
        );
        let of = |group: &str| {
            seen.iter()
                .filter(|m| m.0 == group)
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(of("a"), [("a", 1), ("a", 2)]);
        assert_eq!(of("b"), [("b", 1), ("b", 2)]);
        assert_eq!(of("c"), [("c", 1)]);

        assert_eq!(reports.len(), 3);
        assert_eq!(reports[0].key, "a");
        assert_eq!(reports[0].handled, 2);
        assert_eq!(
            reports[0].stopped,
            Some(Stopped {
                reason: "failed",
                skipped: vec![("a", 3), ("a", 4)]
            })
        );
        assert_eq!((reports[1].handled, &reports[1].stopped), (2, &None));
        assert_eq!((reports[2].handled, &reports[2].stopped), (1, &None));
    }

    #[tokio::test]
    async fn a_group_waits_for_each_message_before_the_next() {
        // The handler of ("a", 1) finishes late; ("a", 2) must still come
        // after it, never while it is running.
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let handle = {
            let log = log.clone();
            move |m: Msg| {
                let log = log.clone();
                async move {
                    log.lock()
                        .expect("not poisoned")
                        .push(format!("start {}{}", m.0, m.1));
                    if m == ("a", 1) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    log.lock()
                        .expect("not poisoned")
                        .push(format!("end {}{}", m.0, m.1));
                    Disposition::<()>::Continue
                }
            }
        };
        process(vec![("a", 1), ("a", 2)], key, handle).await;
        assert_eq!(
            *log.lock().expect("not poisoned"),
            ["start a1", "end a1", "start a2", "end a2"]
        );
    }

    #[tokio::test]
    async fn different_groups_run_concurrently() {
        // ("a", 1) can only finish once ("b", 1) has started: run one group
        // after the other and this never completes.
        let b_started = Arc::new(tokio::sync::Notify::new());
        let handle = move |m: Msg| {
            let b_started = b_started.clone();
            async move {
                match m.0 {
                    "a" => b_started.notified().await,
                    // notify_one keeps the permit if "a" is not waiting yet.
                    _ => b_started.notify_one(),
                }
                Disposition::<()>::Continue
            }
        };
        let run = process(vec![("a", 1), ("b", 1)], key, handle);
        let reports = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("groups ran one after the other");
        assert!(reports.iter().all(|r| r.stopped.is_none()));
    }

    #[tokio::test]
    async fn a_panicking_group_does_not_take_the_others_with_it() {
        let handle = |m: Msg| async move {
            if m.0 == "a" {
                panic!("boom");
            }
            Disposition::<()>::Continue
        };
        let reports = process(vec![("a", 1), ("b", 1)], key, handle).await;
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].key, "b");
    }
}
