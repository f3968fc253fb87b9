//! What each phase measures, as written to `DIR/STORAGE/PHASE.json` and read
//! back by `obt-bench report`. Plain data: times in milliseconds or
//! microseconds, rates per second.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency percentiles (nearest rank), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// The percentiles of `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let sorted = sorted_ms(samples);
        let max_ms = *sorted.last()?;
        Some(Self {
            samples: sorted.len(),
            p50_ms: percentile(&sorted, 50.0),
            p95_ms: percentile(&sorted, 95.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms,
        })
    }
}

/// `samples` in milliseconds, ascending.
pub fn sorted_ms(samples: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms
}

/// The nearest-rank percentile `p` (0-100) of the ascending `sorted`; 0
/// when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The distribution of `samples` as 101 points: percentile 0, 1, .. 100
/// (for the plot; the JSON stays small whatever the sample count).
pub fn distribution(samples: &[Duration]) -> Vec<f64> {
    let sorted = sorted_ms(samples);
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|p| percentile(&sorted, f64::from(p)))
        .collect()
}

/// One closed-loop step: `concurrency` requests in flight for `secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub concurrency: usize,
    /// Units of work that succeeded (201s, records, messages).
    pub ok: u64,
    /// Requests that failed (each counted once, not retried).
    pub errors: u64,
    pub secs: f64,
    /// `ok / secs`.
    pub per_sec: f64,
    /// Of the successful requests.
    pub latency: Option<Latency>,
    /// The first few distinct errors, to say what failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_samples: Vec<String>,
}

/// One open-loop level of the end-to-end phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level {
    /// Of the api's maximum measured by the api phase.
    pub fraction: f64,
    /// The arrival rate asked for, requests a second.
    pub target_per_sec: f64,
    pub sent: u64,
    pub created: u64,
    pub errors: u64,
    /// Requests sent later than their schedule by more than 100 ms (the
    /// driver itself could not keep up).
    pub late: u64,
    pub secs: f64,
    pub post_latency: Option<Latency>,
    /// Applied at (consumer) minus occurred at (api), per event.
    pub end_to_end: Option<Latency>,
    /// Percentiles 0..=100 of the same, in ms.
    pub end_to_end_distribution: Vec<f64>,
    /// Events the consumer had not applied when the wait ended.
    pub not_applied: u64,
}

/// A service's CPU and memory over the 50% level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// user + system CPU time over the level, microseconds.
    pub cpu_us: f64,
    /// The unit of work the CPU is divided by (POSTs, events).
    pub units: f64,
    /// `cpu_us / units`.
    pub cpu_us_per_unit: Option<f64>,
    /// VmRSS after start-up, before any load.
    pub rss_idle_mb: f64,
    /// The largest VmRSS seen during the level.
    pub rss_load_mb: f64,
}

/// The end-to-end phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndToEnd {
    /// The api's maximum (201/s) the fractions are of.
    pub api_max_per_sec: f64,
    pub levels: Vec<Level>,
    /// AWS requests (or MySQL statements) per spending over the 50% level,
    /// summed over api, relay and consumer, by `kind operation`.
    pub requests_per_spending: BTreeMap<String, f64>,
    /// By service: `api`, `stream-relay`, `consumer`.
    pub usage: BTreeMap<String, Usage>,
}

/// A rate measured once: `count` units in `secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub count: u64,
    pub secs: f64,
    pub per_sec: f64,
}

impl Rate {
    pub fn new(count: u64, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64();
        Self {
            count,
            secs,
            per_sec: if secs > 0.0 { count as f64 / secs } else { 0.0 },
        }
    }
}

/// What one phase found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum PhaseResult {
    /// The api's store called directly (spendings/s).
    StoreCeiling {
        steps: Vec<Step>,
    },
    /// The api binary over HTTP (201/s).
    Api {
        steps: Vec<Step>,
    },
    /// Raw SendMessageBatch of 10 entries (messages/s).
    QueueCeiling {
        steps: Vec<Step>,
    },
    /// Raw GetRecords of the stream after writing `written` items.
    StreamCeiling {
        written: u64,
        read: Rate,
    },
    /// The relay daemon draining a backlog.
    Drain {
        backlog: u64,
        drained: Rate,
        /// The relay's CPU time (user + system) over the drain, per event
        /// published: its cost per event with the fixed costs of an idle
        /// relay (polls, heartbeats) spread thin.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu_us_per_event: Option<f64>,
    },
    EndToEnd(EndToEnd),
    /// The relay Lambda under cargo-lambda's Runtime API emulator.
    Lambda {
        /// Stream records per invocation.
        batch_size: usize,
        /// The first invocation, sent as the process started: cold start
        /// and one batch.
        cold_invocation_ms: f64,
        /// The cold invocation minus the warm ones' median.
        init_ms: Option<f64>,
        /// The function's own measure of its init, from `main` to ready
        /// (its log line `init_ms`): what AWS reports as "Init Duration",
        /// less the exec's few milliseconds.
        #[serde(default)]
        reported_init_ms: Option<f64>,
        /// The warm invocations.
        per_batch: Option<Latency>,
    },
}

impl PhaseResult {
    /// The file name's stem, and the phase's name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::StoreCeiling { .. } => "store-ceiling",
            Self::Api { .. } => "api",
            Self::QueueCeiling { .. } => "queue-ceiling",
            Self::StreamCeiling { .. } => "stream-ceiling",
            Self::Drain { .. } => "drain",
            Self::EndToEnd(_) => "end-to-end",
            Self::Lambda { .. } => "lambda",
        }
    }
}

/// The file a phase writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseFile {
    /// `dynamodb` or `mysql`.
    pub storage: String,
    /// Whether it ran at the smoke scale (its figures mean nothing).
    pub smoke: bool,
    /// The binaries measured: `release` or `debug`.
    pub profile: String,
    pub result: PhaseResult,
}

/// The best `per_sec` of `steps`.
pub fn best(steps: &[Step]) -> Option<&Step> {
    steps.iter().max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
}

/// The step at `concurrency`.
pub fn at(steps: &[Step], concurrency: usize) -> Option<&Step> {
    steps.iter().find(|s| s.concurrency == concurrency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let latency = Latency::of(&samples).expect("samples");
        assert_eq!(latency.samples, 100);
        assert!((latency.p50_ms - 50.0).abs() < 1e-9);
        assert!((latency.p95_ms - 95.0).abs() < 1e-9);
        assert!((latency.p99_ms - 99.0).abs() < 1e-9);
        assert!((latency.max_ms - 100.0).abs() < 1e-9);
        assert!(Latency::of(&[]).is_none());
        let points = distribution(&samples);
        assert_eq!(points.len(), 101);
        assert!((points[0] - 1.0).abs() < 1e-9 && (points[100] - 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_phase_file_reads_back_as_written() {
        let file = PhaseFile {
            storage: "dynamodb".to_owned(),
            smoke: true,
            profile: "debug".to_owned(),
            result: PhaseResult::Drain {
                backlog: 10,
                drained: Rate::new(10, Duration::from_secs(2)),
                cpu_us_per_event: Some(120.0),
            },
        };
        let json = serde_json::to_string(&file).expect("json");
        assert!(json.contains(r#""phase":"drain""#), "{json}");
        let back: PhaseFile = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, file);
    }
}
