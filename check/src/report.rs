//! The report: the figures of a run, the summary table printed on stdout
//! and the same as JSON (`--report FILE.json`).

use std::collections::BTreeMap;
use std::time::Duration;

use comfy_table::{Cell, Table, presets::ASCII_MARKDOWN};
use serde::Serialize;

use crate::load::RetryCause;
use crate::model::{Observations, Outcome};
use crate::verify::{Problem, Row, Verdict};

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let last = sorted.last()?;
        let at = |p: f64| {
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            ms(sorted[rank.clamp(1, sorted.len()) - 1])
        };
        Some(Self {
            samples: sorted.len(),
            p50_ms: at(50.0),
            p95_ms: at(95.0),
            p99_ms: at(99.0),
            max_ms: ms(*last),
        })
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The measured figures of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// 201s per second over the load phase.
    pub post_throughput_per_sec: f64,
    pub load_secs: f64,
    /// Of the exchanges answered 201.
    pub post_latency: Option<Percentiles>,
    /// Retries by cause (`transport`, `timeout`, `too_many_requests`,
    /// `unavailable`, `server_error`).
    pub retries: BTreeMap<RetryCause, u64>,
    /// 201s that carried `Idempotent-Replayed: true`.
    pub replayed_answers: u64,
    /// From the last 201 to the consumer having caught up; `None` when it
    /// did not.
    pub convergence_secs_after_last_201: Option<f64>,
    /// The consumer's `applied_at` minus the event's `created_at`, over the
    /// events applied.
    pub end_to_end_latency: Option<Percentiles>,
}

impl Figures {
    pub fn new(
        obs: &Observations,
        load_elapsed: Duration,
        latencies: &[Duration],
        retries: BTreeMap<RetryCause, u64>,
        convergence: Option<Duration>,
    ) -> Self {
        let created = obs
            .posts
            .iter()
            .filter(|p| matches!(p.outcome, Outcome::Created(_)))
            .count();
        let replayed = obs
            .posts
            .iter()
            .filter(|p| matches!(&p.outcome, Outcome::Created(c) if c.replayed))
            .count() as u64;
        let secs = load_elapsed.as_secs_f64();
        let end_to_end: Vec<Duration> = obs
            .applied
            .values()
            .flatten()
            .flat_map(|view| &view.events)
            .filter_map(|e| Duration::try_from(e.applied_at - e.occurred_at).ok())
            .collect();
        Self {
            post_throughput_per_sec: if secs > 0.0 {
                (created as f64 / secs * 10.0).round() / 10.0
            } else {
                0.0
            },
            load_secs: (secs * 100.0).round() / 100.0,
            post_latency: Percentiles::of(latencies),
            retries,
            replayed_answers: replayed,
            convergence_secs_after_last_201: convergence
                .map(|d| (d.as_secs_f64() * 100.0).round() / 100.0),
            end_to_end_latency: Percentiles::of(&end_to_end),
        }
    }
}

/// The run's parameters, to repeat it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parameters {
    pub api_url: String,
    pub seed: u64,
    pub prefix: String,
    pub spendings: usize,
    pub identities: usize,
    pub concurrency: usize,
    /// Where the consumer's records were read (never a password).
    pub consumer_store: String,
}

/// Everything `--report` writes.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    pub exit_code: i32,
    pub parameters: Parameters,
    pub invariants: Vec<Row>,
    pub figures: Figures,
    pub violations: Vec<Problem>,
}

impl Report {
    pub fn new(parameters: Parameters, verdict: &Verdict, figures: Figures) -> Self {
        Self {
            passed: verdict.passed,
            exit_code: if verdict.passed { 0 } else { 1 },
            parameters,
            invariants: verdict.rows.clone(),
            figures,
            violations: verdict.problems.clone(),
        }
    }

    /// The summary as printed: the invariants table, the figures table and
    /// the first violations of each kind.
    pub fn render(&self) -> String {
        let mut invariants = Table::new();
        invariants.load_preset(ASCII_MARKDOWN);
        invariants.set_header(vec!["invariant", "count", "result", ""]);
        for row in &self.invariants {
            invariants.add_row(vec![
                Cell::new(&row.invariant),
                Cell::new(row.count),
                Cell::new(if row.pass { "PASS" } else { "FAIL" }),
                Cell::new(&row.note),
            ]);
        }
        let f = &self.figures;
        let mut figures = Table::new();
        figures.load_preset(ASCII_MARKDOWN);
        figures.set_header(vec!["figure", "value"]);
        figures.add_row(vec![
            "POST throughput".to_owned(),
            format!(
                "{} 201/s ({} s of load)",
                f.post_throughput_per_sec, f.load_secs
            ),
        ]);
        figures.add_row(vec![
            "POST latency (201s)".to_owned(),
            percentiles(f.post_latency.as_ref(), true),
        ]);
        let retries: Vec<String> = RetryCause::ALL
            .iter()
            .map(|cause| {
                format!(
                    "{} {}",
                    cause.label(),
                    f.retries.get(cause).copied().unwrap_or(0)
                )
            })
            .collect();
        figures.add_row(vec!["retries".to_owned(), retries.join(", ")]);
        figures.add_row(vec![
            "replayed 201s (Idempotent-Replayed)".to_owned(),
            f.replayed_answers.to_string(),
        ]);
        figures.add_row(vec![
            "convergence after the last 201".to_owned(),
            f.convergence_secs_after_last_201
                .map_or_else(|| "not converged".to_owned(), |s| format!("{s} s")),
        ]);
        figures.add_row(vec![
            "end-to-end latency (applied_at - created_at)".to_owned(),
            percentiles(f.end_to_end_latency.as_ref(), false),
        ]);

        let p = &self.parameters;
        let mut out = format!(
            "obt-check against {}: {} spendings over {} identities ({}-0..{}), concurrency {}, seed {}\n\
             consumer records: {}\n\n{invariants}\n\n{figures}\n",
            p.api_url,
            p.spendings,
            p.identities,
            p.prefix,
            p.identities.saturating_sub(1),
            p.concurrency,
            p.seed,
            p.consumer_store,
        );
        if !self.violations.is_empty() {
            out.push_str("\nviolations (at most 10 of each kind; --report has them all):\n");
            let mut shown: BTreeMap<_, usize> = BTreeMap::new();
            for problem in &self.violations {
                let n = shown.entry(problem.kind).or_default();
                *n += 1;
                if *n <= 10 {
                    out.push_str(&format!(
                        "  {}: {}: {}\n",
                        problem.kind.label(),
                        problem.identity,
                        problem.detail
                    ));
                }
            }
        }
        out.push_str(&format!(
            "\n{}: repeat the plan with --seed {} --spendings {} --identities {} (prefix was {})\n",
            if self.passed {
                "PASS: every invariant holds"
            } else {
                "FAIL: invariants violated"
            },
            p.seed,
            p.spendings,
            p.identities,
            p.prefix
        ));
        out
    }
}

fn percentiles(p: Option<&Percentiles>, p95: bool) -> String {
    match p {
        None => "no samples".to_owned(),
        Some(p) if p95 => format!(
            "p50 {} ms, p95 {} ms, p99 {} ms, max {} ms ({} samples)",
            p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms, p.samples
        ),
        Some(p) => format!(
            "p50 {} ms, p99 {} ms, max {} ms ({} samples)",
            p.p50_ms, p.p99_ms, p.max_ms, p.samples
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&samples).expect("samples");
        assert_eq!(p.p50_ms, 50.0);
        assert_eq!(p.p95_ms, 95.0);
        assert_eq!(p.p99_ms, 99.0);
        assert_eq!(p.max_ms, 100.0);
        assert!(Percentiles::of(&[]).is_none());
        let one = Percentiles::of(&[Duration::from_millis(7)]).expect("one");
        assert_eq!(one.p50_ms, 7.0);
    }
}
