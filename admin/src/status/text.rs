//! The status for people: one line per stage, then the checks, then what
//! could not be read.

use std::fmt::Write;

use super::{Check, Outbox, Queue, Relay, Report};
use crate::parking::ParkedIdentity;

/// Parked identities named per stage; the rest are counted.
const NAMED: usize = 3;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let verdict = if report.healthy {
        "healthy"
    } else if report.checks.iter().any(|c| !c.ok) {
        "UNHEALTHY"
    } else {
        "UNKNOWN (a stage could not be read)"
    };
    let _ = writeln!(
        out,
        "outboxtable status ({} mode) at {}: {verdict}\n",
        report.storage, report.checked_at
    );
    let unread = || "(not read: see below)".to_owned();
    line(
        &mut out,
        "outbox",
        report.outbox.as_ref().map_or_else(unread, outbox),
    );
    line(
        &mut out,
        "relay",
        report.relay.as_ref().map_or_else(unread, relay),
    );
    line(
        &mut out,
        "queue",
        report.queue.as_ref().map_or_else(unread, queue),
    );
    line(
        &mut out,
        "dlq",
        report.dead_letter_queue.as_ref().map_or_else(unread, queue),
    );
    line(
        &mut out,
        "parked",
        format!(
            "relay: {}; consumer: {}",
            report.parked.relay.as_deref().map_or_else(unread, parked),
            report
                .parked
                .consumer
                .as_deref()
                .map_or_else(unread, parked)
        ),
    );
    line(
        &mut out,
        "consumer",
        report.consumer.as_ref().map_or_else(unread, |c| {
            match (&c.last_applied_at, c.last_applied_age_secs) {
                (Some(at), Some(age)) => format!("last applied an event {} ago ({at})", ago(age)),
                (Some(at), None) => format!("last applied an event at {at}"),
                _ => "has applied no event yet".to_owned(),
            }
        }),
    );
    out.push_str("\nchecks\n");
    if report.checks.is_empty() {
        out.push_str("  none could be judged\n");
    }
    for check in &report.checks {
        check_line(&mut out, check);
    }
    if !report.errors.is_empty() {
        out.push_str("\nnot read\n");
        for error in &report.errors {
            let _ = writeln!(out, "  {}: {}", error.stage, error.error);
        }
        let _ = writeln!(
            out,
            "  -> check the settings named, the AWS credentials, region and endpoints, the \
             database URLs and the network to them ({})",
            super::DOCS
        );
    }
    out
}

fn line(out: &mut String, stage: &str, text: String) {
    let _ = writeln!(out, "{stage:<9} {text}");
}

fn check_line(out: &mut String, check: &Check) {
    let mark = if check.ok { "ok  " } else { "FAIL" };
    let _ = writeln!(out, "  {mark} {:<14} {}", check.name, check.found);
    if !check.ok {
        let _ = writeln!(out, "       {:<14} -> {}", "", check.todo);
    }
}

/// Seconds as the largest unit that fits.
fn ago(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

fn outbox(outbox: &Outbox) -> String {
    let count = match outbox.pending_events {
        Some(events) => format!(
            "{events} event(s) of {} identity(ies) unpublished",
            outbox.pending_identities
        ),
        None => format!(
            "{} identity(ies) with unpublished events",
            outbox.pending_identities
        ),
    };
    match (&outbox.oldest_pending_at, outbox.oldest_pending_age_secs) {
        (Some(at), Some(age)) => format!("{count}; the oldest waits for {} ({at})", ago(age)),
        (Some(at), None) => format!("{count}; the oldest since {at}"),
        _ if outbox.pending_identities > 0 => format!("{count}; all of parked identities"),
        _ => count,
    }
}

fn relay(relay: &Relay) -> String {
    match relay {
        Relay::Leases { leases, .. } if leases.is_empty() => {
            "no lease on the stream (the Lambda relay, or no daemon ran yet)".to_owned()
        }
        Relay::Leases { leases, .. } => leases
            .iter()
            .map(|l| {
                let state = if l.finished {
                    "finished".to_owned()
                } else if l.waiting_for_parent {
                    "waits for its parent".to_owned()
                } else {
                    let renewed = l.renewed_age_secs.map_or_else(
                        || "never renewed".to_owned(),
                        |a| format!("renewed {} ago", ago(a)),
                    );
                    match &l.owner {
                        Some(owner) => format!("held by {owner}, {renewed}"),
                        None => format!("not held, {renewed}"),
                    }
                };
                format!("shard {}: {state}", l.shard_id)
            })
            .collect::<Vec<_>>()
            .join("\n          "),
        Relay::Poller {
            leader: Some(leader),
        } => format!(
            "a poller leads (MySQL connection {}{})",
            leader.connection_id,
            leader
                .host
                .as_ref()
                .map_or_else(String::new, |h| format!(" from {h}"))
        ),
        Relay::Poller { leader: None } => "no poller holds the leader lock".to_owned(),
    }
}

fn queue(queue: &Queue) -> String {
    format!(
        "{} message(s) waiting, {} in flight",
        queue.visible, queue.in_flight
    )
}

fn parked(parked: &[ParkedIdentity]) -> String {
    if parked.is_empty() {
        return "none".to_owned();
    }
    let mut named: Vec<String> = parked
        .iter()
        .take(NAMED)
        .map(|p| format!("{} ({})", p.identity, p.cause))
        .collect();
    if parked.len() > NAMED {
        named.push(format!("and {} more", parked.len() - NAMED));
    }
    format!("{} ({})", parked.len(), named.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(75), "75 s");
        assert_eq!(ago(600), "10 min");
        assert_eq!(ago(3 * 3600), "3 h");
        assert_eq!(ago(3 * 86_400), "3 d");
    }
}
