//! The verifier: a pure function from what a run observed
//! ([`Observations`]) to a [`Verdict`], one row per invariant and every
//! violation found, each naming its identity and what differs. The
//! definitions of committed, applied exactly once, lost, duplicated, gap,
//! reordered, extra, wrong content, totals differ, rejected, unresolved and
//! not converged are those of `docs/CHECK.md` ("The invariants").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rust_decimal::Decimal;
use serde::Serialize;

use crate::model::{ApiState, AppliedEvent, Created, Observations, Outcome};

/// A kind of violation; each is one row of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ApiMismatch,
    Lost,
    Duplicated,
    Gap,
    Reordered,
    Extra,
    WrongContent,
    TotalsDiffer,
    Rejected,
    Unresolved,
    NotConverged,
}

impl Kind {
    /// The name printed in the summary and used in messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::ApiMismatch => "api mismatch",
            Self::Lost => "lost",
            Self::Duplicated => "duplicated",
            Self::Gap => "gaps",
            Self::Reordered => "reordered",
            Self::Extra => "extra",
            Self::WrongContent => "wrong content",
            Self::TotalsDiffer => "totals equal",
            Self::Rejected => "rejected",
            Self::Unresolved => "unresolved",
            Self::NotConverged => "not converged",
        }
    }
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: Kind,
    pub identity: String,
    pub detail: String,
}

/// One row of the summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub invariant: String,
    pub count: u64,
    pub pass: bool,
    /// What the count means, or what was expected.
    pub note: String,
}

/// The outcome of the verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub rows: Vec<Row>,
    pub problems: Vec<Problem>,
    /// Distinct 201s.
    pub committed: u64,
    pub applied_exactly_once: u64,
}

impl Verdict {
    /// How many violations of `kind` were found.
    pub fn count(&self, kind: Kind) -> u64 {
        self.problems.iter().filter(|p| p.kind == kind).count() as u64
    }
}

/// Checks every invariant over what a run observed.
pub fn verify(obs: &Observations) -> Verdict {
    let mut problems = Vec::new();
    let mut committed = 0u64;
    let mut exactly_once = 0u64;

    for post in &obs.posts {
        match &post.outcome {
            Outcome::Rejected { status, body } => problems.push(Problem {
                kind: Kind::Rejected,
                identity: post.identity.clone(),
                detail: format!(
                    "spending #{} ({}) was refused with HTTP {status}: {body}",
                    post.index, post.amount
                ),
            }),
            Outcome::Unresolved { reason } => problems.push(Problem {
                kind: Kind::Unresolved,
                identity: post.identity.clone(),
                detail: format!(
                    "spending #{} ({}, Idempotency-Key {}): {reason}",
                    post.index, post.amount, post.idempotency_key
                ),
            }),
            Outcome::Created(created) if created.amount != post.amount => problems.push(Problem {
                kind: Kind::ApiMismatch,
                identity: post.identity.clone(),
                detail: format!(
                    "spending #{} sent amount {} but the 201 (seq {}) says {}",
                    post.index, post.amount, created.seq, created.amount
                ),
            }),
            Outcome::Created(_) => {}
        }
    }

    for identity in &obs.identities {
        let created = distinct_created(obs, identity, &mut problems);
        committed += created.len() as u64;
        let api = obs.api.get(identity).unwrap_or(&ApiState::NotFound);
        check_api(identity, &created, api, &mut problems);
        let applied = obs.applied.get(identity).and_then(Option::as_ref);
        let events = applied.map_or(&[][..], |a| a.events.as_slice());
        exactly_once += check_applied(identity, &created, events, &mut problems);
        check_totals(identity, api, applied, &mut problems);
    }

    for lag in &obs.lagging {
        problems.push(Problem {
            kind: Kind::NotConverged,
            identity: lag.identity.clone(),
            detail: format!(
                "the consumer applied up to seq {} of {} ({} behind)",
                lag.applied_last_seq,
                lag.api_last_seq,
                lag.api_last_seq.saturating_sub(lag.applied_last_seq)
            ),
        });
    }

    let rows = rows(committed, exactly_once, &problems, obs);
    Verdict {
        passed: problems.is_empty() && exactly_once == committed,
        rows,
        problems,
        committed,
        applied_exactly_once: exactly_once,
    }
}

/// The distinct 201s of `identity` (a replayed answer counts once), sorted
/// by seq; one event id answered for two seqs, or one seq for two event
/// ids, is an api mismatch.
fn distinct_created<'a>(
    obs: &'a Observations,
    identity: &str,
    problems: &mut Vec<Problem>,
) -> Vec<&'a Created> {
    let mut by_id: BTreeMap<&str, &Created> = BTreeMap::new();
    for post in obs.posts.iter().filter(|p| p.identity == identity) {
        let Outcome::Created(created) = &post.outcome else {
            continue;
        };
        match by_id.get(created.event_id.as_str()) {
            None => {
                by_id.insert(&created.event_id, created);
            }
            Some(earlier) if earlier.seq != created.seq => problems.push(Problem {
                kind: Kind::ApiMismatch,
                identity: identity.to_owned(),
                detail: format!(
                    "event {} was answered for seq {} and for seq {}",
                    created.event_id, earlier.seq, created.seq
                ),
            }),
            Some(_) => {}
        }
    }
    let mut created: Vec<&Created> = by_id.into_values().collect();
    created.sort_by_key(|c| c.seq);
    for pair in created.windows(2) {
        if pair[0].seq == pair[1].seq {
            problems.push(Problem {
                kind: Kind::ApiMismatch,
                identity: identity.to_owned(),
                detail: format!(
                    "seq {} was answered for two events ({} and {})",
                    pair[0].seq, pair[0].event_id, pair[1].event_id
                ),
            });
        }
    }
    created
}

fn check_api(identity: &str, created: &[&Created], api: &ApiState, problems: &mut Vec<Problem>) {
    let mut mismatch = |detail: String| {
        problems.push(Problem {
            kind: Kind::ApiMismatch,
            identity: identity.to_owned(),
            detail,
        })
    };
    let summary = match api {
        ApiState::Found(summary) => summary,
        ApiState::NotFound if created.is_empty() => return,
        ApiState::NotFound => {
            return mismatch(format!(
                "the api has no record of the identity, though {} spendings were answered 201",
                created.len()
            ));
        }
        ApiState::Unreadable { reason } => {
            return mismatch(format!("the api's record could not be read: {reason}"));
        }
    };
    let answered = created.len() as u64;
    if summary.count != answered {
        mismatch(format!(
            "the api counts {} spendings, {answered} distinct 201s were answered",
            summary.count
        ));
    }
    if summary.last_seq != summary.count {
        mismatch(format!(
            "the api's last_seq is {}, its count {}",
            summary.last_seq, summary.count
        ));
    }
    let seqs: BTreeSet<u64> = created.iter().map(|c| c.seq).collect();
    let missing: Vec<u64> = (1..=summary.count).filter(|s| !seqs.contains(s)).collect();
    if !missing.is_empty() {
        mismatch(format!(
            "seqs {} of the api were answered to no POST",
            list(&missing)
        ));
    }
    let beyond: Vec<u64> = seqs.range(summary.count + 1..).copied().collect();
    if !beyond.is_empty() {
        mismatch(format!(
            "201s answered seqs {} beyond the api's count {}",
            list(&beyond),
            summary.count
        ));
    }
    let sum: Decimal = created.iter().map(|c| c.amount).sum();
    if sum != summary.total {
        mismatch(format!(
            "the api's total is {}, the 201s add up to {sum}",
            summary.total
        ));
    }
}

/// Checks the consumer's events of one identity against its 201s; returns
/// how many 201s were applied exactly once.
fn check_applied(
    identity: &str,
    created: &[&Created],
    events: &[AppliedEvent],
    problems: &mut Vec<Problem>,
) -> u64 {
    let mut push = |kind: Kind, detail: String| {
        problems.push(Problem {
            kind,
            identity: identity.to_owned(),
            detail,
        })
    };

    // Duplicates, in the order listed.
    let mut seen_seqs = HashSet::new();
    let mut seen_ids = HashSet::new();
    for event in events {
        let new_seq = seen_seqs.insert(event.seq);
        let new_id = seen_ids.insert(event.event_id.as_str());
        if !new_seq || !new_id {
            push(
                Kind::Duplicated,
                format!(
                    "event {} at seq {} was applied again",
                    event.event_id, event.seq
                ),
            );
        }
    }

    // Order: as listed, and as applied.
    for pair in events.windows(2) {
        if pair[1].seq < pair[0].seq {
            push(
                Kind::Reordered,
                format!("seq {} is recorded after seq {}", pair[1].seq, pair[0].seq),
            );
        }
    }
    let mut by_seq: Vec<&AppliedEvent> = events.iter().collect();
    by_seq.sort_by_key(|e| e.seq);
    for pair in by_seq.windows(2) {
        if pair[1].seq > pair[0].seq && pair[1].applied_at < pair[0].applied_at {
            push(
                Kind::Reordered,
                format!(
                    "seq {} was applied at {} before seq {} (applied at {})",
                    pair[1].seq, pair[1].applied_at, pair[0].seq, pair[0].applied_at
                ),
            );
        }
    }

    // Gaps below the highest applied seq.
    let max = events.iter().map(|e| e.seq).max().unwrap_or(0);
    let missing: Vec<u64> = (1..=max).filter(|s| !seen_seqs.contains(s)).collect();
    for seq in &missing {
        push(
            Kind::Gap,
            format!("seq {seq} is not applied, though seq {max} is"),
        );
    }

    // Against the 201s.
    let answered: HashMap<&str, &Created> =
        created.iter().map(|c| (c.event_id.as_str(), *c)).collect();
    for event in events {
        if !answered.contains_key(event.event_id.as_str()) {
            push(
                Kind::Extra,
                format!(
                    "event {} (seq {}, amount {}) was applied but answered to no POST",
                    event.event_id, event.seq, event.amount
                ),
            );
        }
    }
    let mut applied_by_id: HashMap<&str, Vec<&AppliedEvent>> = HashMap::new();
    for event in events {
        applied_by_id
            .entry(event.event_id.as_str())
            .or_default()
            .push(event);
    }
    let mut exactly_once = 0;
    for c in created {
        let Some(matches) = applied_by_id.get(c.event_id.as_str()) else {
            push(
                Kind::Lost,
                format!(
                    "event {} (seq {}, amount {}) was answered 201 but never applied",
                    c.event_id, c.seq, c.amount
                ),
            );
            continue;
        };
        let mut right = true;
        for applied in matches {
            if applied.seq != c.seq || applied.amount != c.amount {
                right = false;
                push(
                    Kind::WrongContent,
                    format!(
                        "event {} was answered as seq {} amount {}, applied as seq {} amount {}",
                        c.event_id, c.seq, c.amount, applied.seq, applied.amount
                    ),
                );
            }
        }
        if right && matches.len() == 1 {
            exactly_once += 1;
        }
    }
    exactly_once
}

fn check_totals(
    identity: &str,
    api: &ApiState,
    applied: Option<&crate::model::AppliedView>,
    problems: &mut Vec<Problem>,
) {
    let (api_total, api_count, api_last) = match api {
        ApiState::Found(s) => (s.total, s.count, s.last_seq),
        ApiState::NotFound => (Decimal::ZERO, 0, 0),
        // Already an api mismatch; nothing to compare with.
        ApiState::Unreadable { .. } => return,
    };
    let (total, count, last) =
        applied.map_or((Decimal::ZERO, 0, 0), |a| (a.total, a.count, a.last_seq));
    let mut differences = Vec::new();
    if total != api_total {
        differences.push(format!("total {total} vs the api's {api_total}"));
    }
    if count != api_count {
        differences.push(format!("count {count} vs the api's {api_count}"));
    }
    if last != api_last {
        differences.push(format!("last_seq {last} vs the api's {api_last}"));
    }
    if let Some(applied) = applied {
        let sum: Decimal = applied.events.iter().map(|e| e.amount).sum();
        if sum != applied.total {
            differences.push(format!(
                "the consumer's total {} is not the sum of its events {sum}",
                applied.total
            ));
        }
    }
    if !differences.is_empty() {
        problems.push(Problem {
            kind: Kind::TotalsDiffer,
            identity: identity.to_owned(),
            detail: format!("the consumer's {}", differences.join(", ")),
        });
    }
}

fn rows(committed: u64, exactly_once: u64, problems: &[Problem], obs: &Observations) -> Vec<Row> {
    let count = |kind: Kind| problems.iter().filter(|p| p.kind == kind).count() as u64;
    let api_mismatches = count(Kind::ApiMismatch);
    let replayed = obs
        .posts
        .iter()
        .filter(|p| matches!(&p.outcome, Outcome::Created(c) if c.replayed))
        .count();
    let mut rows = vec![
        Row {
            invariant: "committed".to_owned(),
            count: committed,
            pass: api_mismatches == 0,
            note: if api_mismatches == 0 {
                format!(
                    "distinct 201s; the api's counts, seqs and totals agree ({replayed} replayed answers)"
                )
            } else {
                format!("distinct 201s; {api_mismatches} api mismatches")
            },
        },
        Row {
            invariant: "applied exactly once".to_owned(),
            count: exactly_once,
            pass: exactly_once == committed,
            note: format!("of {committed} committed"),
        },
    ];
    let notes = [
        (Kind::Lost, "committed, never applied"),
        (Kind::Duplicated, "applied more than once"),
        (Kind::Gap, "seqs missing below the highest applied"),
        (Kind::Reordered, "applied before a predecessor"),
        (Kind::Extra, "applied, answered to no POST"),
        (Kind::WrongContent, "applied with another seq or amount"),
        (Kind::TotalsDiffer, "identities whose totals differ"),
        (Kind::Rejected, "4xx answers (not 429)"),
        (Kind::Unresolved, "no definite answer before giving up"),
        (
            Kind::NotConverged,
            "identities the consumer had not caught up with",
        ),
    ];
    for (kind, note) in notes {
        let n = count(kind);
        rows.push(Row {
            invariant: kind.label().to_owned(),
            count: n,
            pass: n == 0,
            note: note.to_owned(),
        });
    }
    rows
}

/// `1, 2, 3` (at most 10, then `...`).
fn list(values: &[u64]) -> String {
    let mut text: Vec<String> = values.iter().take(10).map(u64::to_string).collect();
    if values.len() > 10 {
        text.push(format!("... ({} in all)", values.len()));
    }
    text.join(", ")
}

#[cfg(test)]
mod tests {
    //! Each test builds a run by hand: a clean one, then one with a single
    //! kind of violation, which must be found and counted under its row
    //! (and make the run fail).

    use std::time::Duration;

    use time::OffsetDateTime;

    use super::*;
    use crate::model::{ApiSummary, AppliedView, Lag, PostResult};

    const A: &str = "chk-t-0";
    const B: &str = "chk-t-1";

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time")
    }

    fn money(cents: i64) -> Decimal {
        Decimal::new(cents, 2)
    }

    fn event_id(identity: &str, seq: u64) -> String {
        format!("{identity}/e{seq}")
    }

    fn amount_of(identity: &str, seq: u64) -> Decimal {
        money(100 * seq as i64 + identity.len() as i64)
    }

    fn created_post(index: usize, identity: &str, seq: u64) -> PostResult {
        PostResult {
            index,
            identity: identity.to_owned(),
            amount: amount_of(identity, seq),
            idempotency_key: format!("key-{index}"),
            attempts: 1,
            outcome: Outcome::Created(Created {
                event_id: event_id(identity, seq),
                seq,
                amount: amount_of(identity, seq),
                created_at: Some(t0()),
                replayed: false,
            }),
        }
    }

    fn applied_event(identity: &str, seq: u64) -> AppliedEvent {
        AppliedEvent {
            seq,
            event_id: event_id(identity, seq),
            amount: amount_of(identity, seq),
            occurred_at: t0(),
            applied_at: t0() + Duration::from_millis(10 * seq),
        }
    }

    fn sum(identity: &str, n: u64) -> Decimal {
        (1..=n).map(|s| amount_of(identity, s)).sum()
    }

    /// Two identities, 3 and 2 spendings, all committed and applied once.
    fn clean() -> Observations {
        let mut obs = Observations {
            identities: vec![A.to_owned(), B.to_owned()],
            ..Observations::default()
        };
        let mut index = 0;
        for (identity, n) in [(A, 3u64), (B, 2)] {
            for seq in 1..=n {
                obs.posts.push(created_post(index, identity, seq));
                index += 1;
            }
            obs.api.insert(
                identity.to_owned(),
                ApiState::Found(ApiSummary {
                    name: "Martin".to_owned(),
                    surname: "Robi".to_owned(),
                    total: sum(identity, n),
                    count: n,
                    last_seq: n,
                    pending_events: 0,
                }),
            );
            obs.applied.insert(
                identity.to_owned(),
                Some(AppliedView {
                    total: sum(identity, n),
                    count: n,
                    last_seq: n,
                    events: (1..=n).map(|s| applied_event(identity, s)).collect(),
                }),
            );
        }
        obs
    }

    fn view<'a>(obs: &'a mut Observations, identity: &str) -> &'a mut AppliedView {
        obs.applied
            .get_mut(identity)
            .and_then(Option::as_mut)
            .expect("the identity has applied events")
    }

    fn api<'a>(obs: &'a mut Observations, identity: &str) -> &'a mut ApiSummary {
        match obs.api.get_mut(identity) {
            Some(ApiState::Found(summary)) => summary,
            _ => panic!("the api knows {identity}"),
        }
    }

    /// The run fails, `kind` is counted `n` times, and its row says FAIL.
    fn assert_only(verdict: &Verdict, kind: Kind, n: u64) {
        assert!(!verdict.passed, "{verdict:#?}");
        assert_eq!(verdict.count(kind), n, "{:#?}", verdict.problems);
        let row = verdict
            .rows
            .iter()
            .find(|r| {
                r.invariant == kind.label()
                    || (kind == Kind::ApiMismatch && r.invariant == "committed")
            })
            .expect("a row");
        assert!(!row.pass, "{row:?}");
    }

    fn kinds(verdict: &Verdict) -> BTreeSet<Kind> {
        verdict.problems.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn a_clean_run_passes_every_row() {
        let verdict = verify(&clean());
        assert!(verdict.passed, "{:#?}", verdict.problems);
        assert!(verdict.problems.is_empty());
        assert_eq!(verdict.committed, 5);
        assert_eq!(verdict.applied_exactly_once, 5);
        assert!(verdict.rows.iter().all(|r| r.pass), "{:#?}", verdict.rows);
        assert_eq!(verdict.rows.len(), 12);
    }

    #[test]
    fn a_replayed_201_counts_once() {
        let mut obs = clean();
        let mut replay = created_post(99, A, 2);
        if let Outcome::Created(c) = &mut replay.outcome {
            c.replayed = true;
        }
        obs.posts.push(replay);
        // The replay carries the amount sent for seq 2: same spending.
        let verdict = verify(&obs);
        assert!(verdict.passed, "{:#?}", verdict.problems);
        assert_eq!(verdict.committed, 5);
    }

    #[test]
    fn a_lost_event_is_found() {
        let mut obs = clean();
        let v = view(&mut obs, A);
        v.events.pop();
        v.last_seq = 2;
        v.count = 2;
        v.total = sum(A, 2);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::Lost, 1);
        assert_eq!(verdict.applied_exactly_once, 4);
        assert!(verdict.problems[0].detail.contains(&event_id(A, 3)));
    }

    #[test]
    fn a_duplicate_is_found() {
        let mut obs = clean();
        let again = applied_event(A, 2);
        view(&mut obs, A).events.insert(2, again);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::Duplicated, 1);
        // The duplicated 201 is not "exactly once"; the consumer's total
        // no longer is the sum of its events.
        assert_eq!(verdict.applied_exactly_once, 4);
    }

    #[test]
    fn a_gap_is_found() {
        let mut obs = clean();
        view(&mut obs, A).events.remove(1);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::Gap, 1);
        assert!(kinds(&verdict).contains(&Kind::Lost));
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.kind == Kind::Gap && p.detail.contains("seq 2"))
        );
    }

    #[test]
    fn an_event_applied_before_its_predecessor_is_found() {
        let mut obs = clean();
        let v = view(&mut obs, A);
        v.events[2].applied_at = v.events[0].applied_at - Duration::from_millis(1);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::Reordered, 1);
        assert_eq!(kinds(&verdict), BTreeSet::from([Kind::Reordered]));
    }

    #[test]
    fn events_listed_out_of_seq_order_are_found() {
        let mut obs = clean();
        let v = view(&mut obs, B);
        v.events.swap(0, 1);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::Reordered, 1);
    }

    #[test]
    fn an_extra_event_is_found() {
        let mut obs = clean();
        let v = view(&mut obs, B);
        let mut extra = applied_event(B, 3);
        extra.event_id = "never-answered".to_owned();
        v.events.push(extra);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::Extra, 1);
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.detail.contains("never-answered"))
        );
    }

    #[test]
    fn a_wrong_total_is_found() {
        let mut obs = clean();
        view(&mut obs, A).total += money(1);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::TotalsDiffer, 1);
        assert_eq!(kinds(&verdict), BTreeSet::from([Kind::TotalsDiffer]));
    }

    #[test]
    fn a_consumer_count_unlike_the_apis_is_found() {
        let mut obs = clean();
        view(&mut obs, B).count = 3;
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::TotalsDiffer, 1);
    }

    #[test]
    fn a_wrong_amount_is_found() {
        let mut obs = clean();
        let v = view(&mut obs, A);
        v.events[1].amount += money(1);
        v.total += money(1);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::WrongContent, 1);
        assert_eq!(verdict.applied_exactly_once, 4);
    }

    #[test]
    fn an_api_count_unlike_the_201s_is_found() {
        // A retry recorded twice: the api counts 4, 3 distinct 201s.
        let mut obs = clean();
        let s = api(&mut obs, A);
        s.count = 4;
        s.last_seq = 4;
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::ApiMismatch, 2);
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.detail.contains("counts 4"))
        );
        assert!(verdict.problems.iter().any(|p| p.detail.contains("seqs 4")));
    }

    #[test]
    fn an_api_total_unlike_the_201s_is_found() {
        let mut obs = clean();
        api(&mut obs, B).total += money(5);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::ApiMismatch, 1);
    }

    #[test]
    fn two_201s_with_one_seq_are_found() {
        let mut obs = clean();
        let mut twin = created_post(50, A, 3);
        if let Outcome::Created(c) = &mut twin.outcome {
            c.event_id = "twin".to_owned();
        }
        obs.posts.push(twin);
        let verdict = verify(&obs);
        // The twin breaks the api's count and total too; the seq check
        // names it.
        assert_only(&verdict, Kind::ApiMismatch, 3);
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.detail.contains("seq 3 was answered for two events")),
            "{:#?}",
            verdict.problems
        );
    }

    #[test]
    fn a_201_for_another_amount_than_sent_is_found() {
        let mut obs = clean();
        obs.posts[0].amount += money(1);
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::ApiMismatch, 1);
    }

    #[test]
    fn unresolved_and_rejected_posts_are_violations() {
        let mut obs = clean();
        obs.posts.push(PostResult {
            index: 10,
            identity: B.to_owned(),
            amount: money(1),
            idempotency_key: "k".to_owned(),
            attempts: 7,
            outcome: Outcome::Unresolved {
                reason: "no definite answer".to_owned(),
            },
        });
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::Unresolved, 1);
        assert_eq!(kinds(&verdict), BTreeSet::from([Kind::Unresolved]));

        let mut obs = clean();
        obs.posts.push(PostResult {
            index: 11,
            identity: B.to_owned(),
            amount: money(1),
            idempotency_key: "k".to_owned(),
            attempts: 1,
            outcome: Outcome::Rejected {
                status: 422,
                body: "{}".to_owned(),
            },
        });
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::Rejected, 1);
    }

    #[test]
    fn a_lagging_consumer_is_not_converged() {
        let mut obs = clean();
        obs.applied.insert(B.to_owned(), None);
        obs.lagging.push(Lag {
            identity: B.to_owned(),
            api_last_seq: 2,
            applied_last_seq: 0,
        });
        let verdict = verify(&obs);
        assert_only(&verdict, Kind::NotConverged, 1);
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.detail.contains("2 behind"))
        );
        assert_eq!(verdict.count(Kind::Lost), 2);
    }

    #[test]
    fn an_identity_with_nothing_committed_and_nothing_applied_is_fine() {
        let mut obs = clean();
        obs.identities.push("chk-t-2".to_owned());
        obs.api.insert("chk-t-2".to_owned(), ApiState::NotFound);
        obs.applied.insert("chk-t-2".to_owned(), None);
        assert!(verify(&obs).passed);
    }
}
