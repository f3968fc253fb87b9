//! `obt-admin status`: every stage's backlog and lag on one screen, and
//! whether any is stuck beyond a threshold (docs/OPERATIONS.md#status).
//!
//! [`read`] gathers the figures, each stage on its own (one that cannot be
//! read is reported, the others still are); [`Report::judge`] compares them
//! with the thresholds, purely; [`text`] renders them for people.

pub mod read;
mod text;

use std::process::ExitCode;

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::parking::ParkedIdentity;

/// Exit status: every stage healthy.
pub const HEALTHY: u8 = 0;
/// Exit status: a stage is stuck beyond a threshold (the checks say which).
pub const UNHEALTHY: u8 = 1;
/// Exit status: a stage could not be read (AWS or the database did not
/// answer, or refused); nothing failed a threshold among what was read.
pub const UNREADABLE: u8 = 3;

/// Where the operator reads what to do.
const DOCS: &str = "docs/OPERATIONS.md#status";

/// Everything `status` found. Its JSON form is stable: fields are only
/// ever added.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No check failed and every stage was read.
    pub healthy: bool,
    /// `dynamodb` or `mysql`.
    pub storage: &'static str,
    /// When the figures were read (RFC 3339).
    pub checked_at: String,
    /// `null` when the stage could not be read (see `errors`).
    pub outbox: Option<Outbox>,
    pub relay: Option<Relay>,
    pub queue: Option<Queue>,
    pub dead_letter_queue: Option<Queue>,
    pub parked: Parked,
    pub consumer: Option<Consumer>,
    /// Every threshold that could be judged, passed or not.
    pub checks: Vec<Check>,
    /// The stages that could not be read, and why.
    pub errors: Vec<StageError>,
}

/// The api's outbox: events written and not yet published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outbox {
    /// Identities with at least one unpublished event (parked ones too).
    pub pending_identities: u64,
    /// Unpublished events: MySQL only (`null` in the DynamoDB mode, where
    /// counting them would read every pending item).
    pub pending_events: Option<u64>,
    /// When the oldest event of an identity that is not parked was
    /// written, and how long ago; `null` when none waits.
    pub oldest_pending_at: Option<String>,
    pub oldest_pending_age_secs: Option<u64>,
}

/// Who relays, and how recently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Relay {
    /// DynamoDB mode: the daemons' shard leases of the stream (none with
    /// the Lambda relay).
    Leases {
        stream_arn: String,
        leases: Vec<Lease>,
    },
    /// MySQL mode: the poller that holds the leader lock, if any.
    Poller { leader: Option<Leader> },
}

/// One shard's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub shard_id: String,
    /// The daemon holding it (`null`: released, or never taken).
    pub owner: Option<String>,
    /// The last sequence number handled, or `SHARD_END`.
    pub checkpoint: Option<String>,
    /// Read to its end: nobody needs to hold it.
    pub finished: bool,
    /// Waits for its parent shard to be finished first.
    pub waiting_for_parent: bool,
    /// The lease row's last write (take, heartbeat, checkpoint, release),
    /// and how long ago.
    pub renewed_at: Option<String>,
    pub renewed_age_secs: Option<u64>,
}

/// The MySQL poller that leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leader {
    /// The MySQL connection holding the lock.
    pub connection_id: u64,
    /// Its client host:port, when the server shows it to this user.
    pub host: Option<String>,
}

/// One queue's depth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Queue {
    pub url: String,
    /// ApproximateNumberOfMessages: waiting to be received.
    pub visible: u64,
    /// ApproximateNumberOfMessagesNotVisible: received, not yet deleted.
    pub in_flight: u64,
}

/// The parked identities of each stage; `null` when unreadable.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Parked {
    pub relay: Option<Vec<ParkedIdentity>>,
    pub consumer: Option<Vec<ParkedIdentity>>,
}

/// The consumer's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Consumer {
    /// When it last applied an event, and how long ago (`null`: never).
    /// DynamoDB mode: up to 5 s behind.
    pub last_applied_at: Option<String>,
    pub last_applied_age_secs: Option<u64>,
}

/// One threshold, judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `outbox_age`, `relay_leases`, `relay_leader`, `dead_letters`,
    /// `parked`, `consumer_idle`.
    pub name: &'static str,
    pub ok: bool,
    /// What was found, against which limit.
    pub found: String,
    /// What to do when it is not ok (and where to read more).
    pub todo: String,
}

/// A stage that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageError {
    /// `outbox`, `relay`, `queue`, `dead_letter_queue`, `parked_relay`,
    /// `parked_consumer` or `consumer`.
    pub stage: &'static str,
    pub error: String,
}

impl Report {
    /// Judges the figures against `args`' thresholds: fills `checks` and
    /// `healthy`. A figure that could not be read is not judged.
    pub fn judge(&mut self, args: &StatusArgs) {
        let mut checks = Vec::new();
        if let Some(outbox) = &self.outbox {
            checks.push(outbox_age(outbox, args.max_outbox_age_secs));
        }
        match &self.relay {
            Some(Relay::Leases { leases, .. }) if args.max_lease_age_secs > 0 => {
                checks.push(relay_leases(leases, args.max_lease_age_secs));
            }
            Some(Relay::Poller { leader }) => checks.push(relay_leader(leader.as_ref())),
            _ => {}
        }
        if let Some(dlq) = &self.dead_letter_queue {
            checks.push(dead_letters(dlq, args.max_dlq_messages));
        }
        if let (Some(relay), Some(consumer)) = (&self.parked.relay, &self.parked.consumer) {
            checks.push(parked(relay, consumer, args.max_parked));
        } else if let Some(some) = self.parked.relay.as_ref().or(self.parked.consumer.as_ref()) {
            checks.push(parked(some, &[], args.max_parked));
        }
        if let (Some(queue), Some(consumer)) = (&self.queue, &self.consumer) {
            checks.push(consumer_idle(queue, consumer, args.max_consumer_idle_secs));
        }
        self.healthy = self.errors.is_empty() && checks.iter().all(|c| c.ok);
        self.checks = checks;
    }

    /// 0, [`UNHEALTHY`] when a check failed, else [`UNREADABLE`] when a
    /// stage could not be read.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(if self.checks.iter().any(|c| !c.ok) {
            UNHEALTHY
        } else if !self.errors.is_empty() {
            UNREADABLE
        } else {
            HEALTHY
        })
    }

    /// The report for people: one screen.
    pub fn text(&self) -> String {
        text::render(self)
    }
}

fn todo(what: &str, section: &str) -> String {
    format!("{what} ({DOCS}, \"{section}\")")
}

fn outbox_age(outbox: &Outbox, max: u64) -> Check {
    let found = match outbox.oldest_pending_age_secs {
        Some(age) => format!("the oldest unpublished event waited {age} s (limit {max} s)"),
        None => format!("no unpublished event waits (limit {max} s)"),
    };
    Check {
        name: "outbox_age",
        ok: outbox.oldest_pending_age_secs.is_none_or(|age| age <= max),
        found,
        todo: todo(
            "the relay does not publish: check that one runs and read its logs",
            "Outbox backlog",
        ),
    }
}

/// Shards someone must read whose lease nobody renewed in time.
fn stale_leases(leases: &[Lease], max: u64) -> Vec<&Lease> {
    leases
        .iter()
        .filter(|l| !l.finished && !l.waiting_for_parent)
        .filter(|l| l.renewed_age_secs.is_none_or(|age| age > max))
        .collect()
}

fn relay_leases(leases: &[Lease], max: u64) -> Check {
    let stale = stale_leases(leases, max);
    let found = if leases.is_empty() {
        "no lease on the stream: no relay daemon ran (or the Lambda relay)".to_owned()
    } else if stale.is_empty() {
        format!(
            "{} lease(s), every open shard renewed within {max} s",
            leases.len()
        )
    } else {
        let shards: Vec<String> = stale
            .iter()
            .map(|l| match &l.owner {
                Some(owner) => format!("{} (owner {owner})", l.shard_id),
                None => format!("{} (no owner)", l.shard_id),
            })
            .collect();
        format!(
            "no relay renewed the lease of {} within {max} s",
            shards.join(", ")
        )
    };
    Check {
        name: "relay_leases",
        ok: stale.is_empty(),
        found,
        todo: todo(
            "no relay daemon reads these shards: start one (or set --max-lease-age-secs 0 with \
             the Lambda relay)",
            "Relay",
        ),
    }
}

fn relay_leader(leader: Option<&Leader>) -> Check {
    Check {
        name: "relay_leader",
        ok: leader.is_some(),
        found: match leader {
            Some(l) => format!("connection {} holds the relay's lock", l.connection_id),
            None => "no relay holds the leader lock: no poller runs".to_owned(),
        },
        todo: todo(
            "start the relay (stream-relay with OBT_STORAGE=mysql)",
            "Relay",
        ),
    }
}

fn dead_letters(dlq: &Queue, max: u64) -> Check {
    let count = dlq.visible + dlq.in_flight;
    Check {
        name: "dead_letters",
        ok: count <= max,
        found: format!("{count} message(s) in the dead-letter queue (limit {max})"),
        todo: todo(
            "the consumer dead-lettered a message and parked its identity: \
             obt-admin parked list --stage consumer",
            "Dead letters and parked identities",
        ),
    }
}

fn parked(relay: &[ParkedIdentity], consumer: &[ParkedIdentity], max: u64) -> Check {
    let count = u64::try_from(relay.len() + consumer.len()).unwrap_or(u64::MAX);
    Check {
        name: "parked",
        ok: count <= max,
        found: format!(
            "{} identity(ies) parked by the relay, {} by the consumer (limit {max})",
            relay.len(),
            consumer.len()
        ),
        todo: todo(
            "repair the cause, then obt-admin parked retry IDENTITY [--stage consumer]",
            "Dead letters and parked identities",
        ),
    }
}

fn consumer_idle(queue: &Queue, consumer: &Consumer, max: u64) -> Check {
    let waiting = queue.visible;
    let idle = consumer.last_applied_age_secs;
    let stuck = waiting > 0 && idle.is_none_or(|age| age > max);
    let found = match idle {
        Some(age) => format!(
            "{waiting} message(s) wait in the queue; the consumer last applied an event {age} s \
             ago (limit {max} s while messages wait)"
        ),
        None => format!(
            "{waiting} message(s) wait in the queue; the consumer never applied an event \
             (limit {max} s while messages wait)"
        ),
    };
    Check {
        name: "consumer_idle",
        ok: !stuck,
        found,
        todo: todo(
            "the consumer does not apply: check that it runs and read its logs \
             (its records unreachable?)",
            "Consumer",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args() -> StatusArgs {
        let cli = crate::Cli::try_parse_from(["obt-admin", "status"]).expect("parses");
        match cli.command {
            crate::Command::Status(args) => args,
            crate::Command::Parked(_) => unreachable!(),
        }
    }

    fn report() -> Report {
        Report {
            healthy: false,
            storage: "dynamodb",
            checked_at: String::new(),
            outbox: Some(Outbox::default()),
            relay: Some(Relay::Leases {
                stream_arn: "arn".to_owned(),
                leases: vec![lease(Some(2), false)],
            }),
            queue: Some(queue(0)),
            dead_letter_queue: Some(queue(0)),
            parked: Parked {
                relay: Some(Vec::new()),
                consumer: Some(Vec::new()),
            },
            consumer: Some(Consumer {
                last_applied_at: None,
                last_applied_age_secs: None,
            }),
            checks: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn lease(age: Option<u64>, waiting_for_parent: bool) -> Lease {
        Lease {
            shard_id: "shard-1".to_owned(),
            owner: Some("relay-a".to_owned()),
            checkpoint: None,
            finished: false,
            waiting_for_parent,
            renewed_at: None,
            renewed_age_secs: age,
        }
    }

    fn queue(visible: u64) -> Queue {
        Queue {
            url: "q".to_owned(),
            visible,
            in_flight: 0,
        }
    }

    fn failed(report: &Report) -> Vec<&'static str> {
        report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn an_idle_stack_is_healthy() {
        let mut report = report();
        report.judge(&args());
        assert!(report.healthy, "{:?}", report.checks);
        assert_eq!(report.exit_code(), ExitCode::from(HEALTHY));
        assert_eq!(report.checks.len(), 5);
    }

    #[test]
    fn each_threshold_fails_its_own_check() {
        let mut report = report();
        report.outbox = Some(Outbox {
            oldest_pending_age_secs: Some(61),
            ..Outbox::default()
        });
        report.relay = Some(Relay::Leases {
            stream_arn: "arn".to_owned(),
            leases: vec![lease(Some(61), false), lease(Some(600), true)],
        });
        report.dead_letter_queue = Some(Queue {
            in_flight: 1,
            ..queue(0)
        });
        report.queue = Some(queue(3));
        report.judge(&args());
        assert_eq!(
            failed(&report),
            [
                "outbox_age",
                "relay_leases",
                "dead_letters",
                "consumer_idle"
            ]
        );
        assert!(!report.healthy);
        assert_eq!(report.exit_code(), ExitCode::from(UNHEALTHY));
    }

    #[test]
    fn a_lease_check_of_0_is_off_and_a_missing_poller_fails() {
        let mut report = report();
        report.relay = Some(Relay::Leases {
            stream_arn: "arn".to_owned(),
            leases: vec![lease(None, false)],
        });
        let mut off = args();
        off.max_lease_age_secs = 0;
        report.judge(&off);
        assert!(report.healthy);
        report.relay = Some(Relay::Poller { leader: None });
        report.judge(&off);
        assert_eq!(failed(&report), ["relay_leader"]);
    }

    #[test]
    fn an_unreadable_stage_is_its_own_exit_status_unless_a_check_failed() {
        let mut report = report();
        report.queue = None;
        report.errors.push(StageError {
            stage: "queue",
            error: "SQS unreachable".to_owned(),
        });
        report.judge(&args());
        assert!(!report.healthy);
        assert_eq!(report.exit_code(), ExitCode::from(UNREADABLE));
        report.outbox = Some(Outbox {
            oldest_pending_age_secs: Some(3600),
            ..Outbox::default()
        });
        report.judge(&args());
        assert_eq!(report.exit_code(), ExitCode::from(UNHEALTHY));
    }

    #[test]
    fn a_consumer_with_nothing_to_do_is_not_idle() {
        let consumer = Consumer {
            last_applied_at: None,
            last_applied_age_secs: Some(86_400),
        };
        assert!(consumer_idle(&queue(0), &consumer, 300).ok);
        assert!(!consumer_idle(&queue(1), &consumer, 300).ok);
    }
}
