//! `obt-bench report DIR`: merges the phase files of `DIR/dynamodb` and
//! `DIR/mysql` into one table (each figure next to its ceiling and the
//! issue's target), `DIR/bench.json` and `DIR/bench.svg`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use comfy_table::{Table, presets::ASCII_MARKDOWN};
use serde::Serialize;

use crate::BenchError;
use crate::figures::{EndToEnd, PhaseFile, PhaseResult, Step, at, best};

/// The storage modes, in the table's order.
pub const MODES: [&str; 2] = ["dynamodb", "mysql"];

/// The phase files of one mode, by phase name.
pub type Phases = BTreeMap<String, PhaseFile>;

/// Reads every `*.json` of `dir` as a phase file.
pub fn read_mode(dir: &Path) -> Result<Phases, BenchError> {
    let mut phases = Phases::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(phases);
    };
    for entry in entries {
        let path = entry.map_err(|e| BenchError::io(dir, e))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| BenchError::io(&path, e))?;
        let file: PhaseFile = serde_json::from_str(&text).map_err(|e| BenchError::Unreadable {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        phases.insert(file.result.name().to_owned(), file);
    }
    Ok(phases)
}

/// The api's maximum 201/s from the api phase's file in `dir`.
pub fn api_max(dir: &Path) -> Result<f64, BenchError> {
    let phases = read_mode(dir)?;
    match phases.get("api").map(|f| &f.result) {
        Some(PhaseResult::Api { steps }) => best(steps)
            .map(|s| s.per_sec)
            .filter(|max| *max > 0.0)
            .ok_or_else(|| BenchError::Setup(format!(
                "the api phase in {} measured no 201s: see its errors, and the api's log in {}/logs",
                dir.display(),
                dir.display()
            ))),
        _ => Err(BenchError::Setup(format!(
            "no api phase in {}: run the api phase first (scripts/bench.sh runs them in order) \
             or pass --api-max",
            dir.display()
        ))),
    }
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub mode: String,
    pub figure: String,
    pub measured: String,
    /// What bounds it, measured in the same run.
    pub ceiling: String,
    /// measured / ceiling, where both are rates.
    pub ratio: Option<f64>,
    /// The target.
    pub target: String,
    /// Whether the target is met (`None`: no target or nothing measured).
    pub meets: Option<bool>,
}

impl Row {
    fn new(mode: &str, figure: impl Into<String>, measured: impl Into<String>) -> Self {
        Self {
            mode: mode.to_owned(),
            figure: figure.into(),
            measured: measured.into(),
            ceiling: String::new(),
            ratio: None,
            target: String::new(),
            meets: None,
        }
    }

    fn ceiling(mut self, ceiling: impl Into<String>, ratio: Option<f64>) -> Self {
        self.ceiling = ceiling.into();
        self.ratio = ratio;
        self
    }

    fn target(mut self, target: impl Into<String>, meets: Option<bool>) -> Self {
        self.target = target.into();
        self.meets = meets;
        self
    }
}

/// The merged report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether any phase ran at the smoke scale.
    pub smoke: bool,
    pub rows: Vec<Row>,
    pub phases: BTreeMap<String, Phases>,
}

/// Reads `dir` and builds the report.
pub fn build(dir: &Path) -> Result<Report, BenchError> {
    let mut phases = BTreeMap::new();
    for mode in MODES {
        let found = read_mode(&dir.join(mode))?;
        if !found.is_empty() {
            phases.insert(mode.to_owned(), found);
        }
    }
    if phases.is_empty() {
        return Err(BenchError::Setup(format!(
            "no phase files in {0}/dynamodb or {0}/mysql: run scripts/bench.sh first",
            dir.display()
        )));
    }
    let smoke = phases.values().flat_map(|p| p.values()).any(|f| f.smoke);
    let rows = phases
        .iter()
        .flat_map(|(mode, found)| rows(mode, found))
        .collect();
    Ok(Report {
        smoke,
        rows,
        phases,
    })
}

fn steps<'a>(phases: &'a Phases, name: &str) -> Option<&'a [Step]> {
    match phases.get(name).map(|f| &f.result) {
        Some(
            PhaseResult::StoreCeiling { steps }
            | PhaseResult::Api { steps }
            | PhaseResult::QueueCeiling { steps },
        ) => Some(steps),
        _ => None,
    }
}

fn rate(per_sec: f64, unit: &str) -> String {
    format!("{per_sec:.0} {unit}")
}

fn ratio(measured: f64, ceiling: f64) -> Option<f64> {
    (ceiling > 0.0).then(|| measured / ceiling)
}

const NOT_RUN: &str = "not run";

/// The rows of one mode.
fn rows(mode: &str, phases: &Phases) -> Vec<Row> {
    let mut rows = Vec::new();
    let store = steps(phases, "store-ceiling").unwrap_or_default();
    match at(store, 32).or_else(|| best(store)) {
        Some(step) => rows.push(Row::new(
            mode,
            format!("store ceiling, {} in flight (no HTTP)", step.concurrency),
            rate(step.per_sec, "spendings/s"),
        )),
        None => rows.push(Row::new(mode, "store ceiling", NOT_RUN)),
    }
    let api = steps(phases, "api").unwrap_or_default();
    for step in api {
        let latency = step.latency.map_or("no 201s".to_owned(), |l| {
            format!(
                ", p50 {:.0} / p95 {:.0} / p99 {:.0} ms",
                l.p50_ms, l.p95_ms, l.p99_ms
            )
        });
        let mut row = Row::new(
            mode,
            format!("api, {} in flight", step.concurrency),
            format!("{:.0} 201/s{latency}", step.per_sec),
        );
        if let Some(ceiling) = at(store, step.concurrency) {
            row = row.ceiling(
                rate(ceiling.per_sec, "(store)"),
                ratio(step.per_sec, ceiling.per_sec),
            );
        }
        if step.concurrency == 32 {
            let meets = row.ratio.map(|r| r >= 0.8);
            row = row.target(">= 0.8 x store", meets);
        }
        if step.errors > 0 {
            row.measured.push_str(&format!(", {} errors", step.errors));
        }
        rows.push(row);
    }
    if api.is_empty() {
        rows.push(Row::new(mode, "api", NOT_RUN));
    }
    let api_max = best(api).map(|s| s.per_sec);
    let queue = steps(phases, "queue-ceiling").and_then(best);
    rows.push(match queue {
        Some(step) => Row::new(
            mode,
            "queue ceiling: SendMessageBatch of 10",
            format!(
                "{} (at {} in flight)",
                rate(step.per_sec, "messages/s"),
                step.concurrency
            ),
        ),
        None => Row::new(mode, "queue ceiling", NOT_RUN),
    });
    rows.push(match phases.get("stream-ceiling").map(|f| &f.result) {
        Some(PhaseResult::StreamCeiling { written, read }) => Row::new(
            mode,
            format!("stream ceiling: GetRecords after {written} writes"),
            rate(read.per_sec, "records/s"),
        ),
        _ if mode == "mysql" => Row::new(mode, "stream ceiling", "n/a"),
        _ => Row::new(mode, "stream ceiling", NOT_RUN),
    });
    let relay = if mode == "mysql" { "poller" } else { "daemon" };
    match phases.get("drain").map(|f| &f.result) {
        Some(PhaseResult::Drain {
            backlog,
            drained,
            cpu_us_per_event,
        }) => {
            let figure = format!("relay drain ({relay}), backlog {backlog}");
            let measured = rate(drained.per_sec, "events/s");
            let mut row = Row::new(mode, &figure, &measured);
            if let Some(queue) = queue {
                row = row.ceiling(
                    rate(queue.per_sec, "(queue)"),
                    ratio(drained.per_sec, queue.per_sec),
                );
                if mode == "dynamodb" {
                    let meets = row.ratio.map(|r| r >= 0.5);
                    row = row.target(">= 0.5 x queue", meets);
                }
            }
            rows.push(row);
            if let Some(max) = api_max {
                let r = ratio(drained.per_sec, max);
                rows.push(
                    Row::new(mode, format!("relay drain ({relay}) vs api max"), measured)
                        .ceiling(rate(max, "(api max)"), r)
                        .target(">= 1.0 x api max", r.map(|r| r >= 1.0)),
                );
            }
            if let Some(us) = cpu_us_per_event {
                rows.push(Row::new(
                    mode,
                    format!("CPU per event, {relay} draining"),
                    format!("{us:.0} us"),
                ));
            }
        }
        _ => rows.push(Row::new(mode, "relay drain", NOT_RUN)),
    }
    match phases.get("end-to-end").map(|f| &f.result) {
        Some(PhaseResult::EndToEnd(e2e)) => rows.extend(end_to_end_rows(mode, e2e)),
        _ => rows.push(Row::new(mode, "end to end", NOT_RUN)),
    }
    match phases.get("lambda").map(|f| &f.result) {
        Some(PhaseResult::Lambda {
            batch_size,
            cold_invocation_ms,
            init_ms,
            reported_init_ms,
            per_batch,
        }) => {
            rows.push(
                Row::new(
                    mode,
                    "Lambda relay init (the function's own init_ms)",
                    reported_init_ms.map_or("not reported".to_owned(), |ms| format!("{ms:.0} ms")),
                )
                .target("<= 50 ms", reported_init_ms.map(|ms| ms <= 50.0)),
            );
            rows.push(Row::new(
                mode,
                "Lambda relay cold invocation - warm p50",
                init_ms.map_or("no warm invocation".to_owned(), |ms| {
                    format!(
                        "{ms:.0} ms (cold invocation {cold_invocation_ms:.0} ms, \
                         through cargo-lambda's emulator)"
                    )
                }),
            ));
            rows.push(Row::new(
                mode,
                format!("Lambda relay per batch of {batch_size} records"),
                per_batch.map_or("no warm invocation".to_owned(), |l| {
                    format!(
                        "p50 {:.0} / p95 {:.0} / max {:.0} ms ({} batches)",
                        l.p50_ms, l.p95_ms, l.max_ms, l.samples
                    )
                }),
            ));
        }
        _ if mode == "mysql" => rows.push(Row::new(mode, "Lambda relay", "n/a")),
        _ => rows.push(Row::new(mode, "Lambda relay", NOT_RUN)),
    }
    rows
}

fn end_to_end_rows(mode: &str, e2e: &EndToEnd) -> Vec<Row> {
    let mut rows = Vec::new();
    for level in &e2e.levels {
        let measured = match level.end_to_end {
            Some(l) => format!(
                "p50 {:.0} / p95 {:.0} / p99 {:.0} ms ({} events{})",
                l.p50_ms,
                l.p95_ms,
                l.p99_ms,
                l.samples,
                if level.not_applied > 0 {
                    format!(", {} NOT applied", level.not_applied)
                } else {
                    String::new()
                }
            ),
            None => "no events applied".to_owned(),
        };
        let mut row = Row::new(
            mode,
            format!(
                "end to end at {:.0}% ({:.0}/s open loop, {:.0} created/s)",
                level.fraction * 100.0,
                level.target_per_sec,
                level.created as f64 / level.secs.max(1e-9)
            ),
            measured,
        );
        if (level.fraction - 0.5).abs() < 1e-9 {
            let meets = level
                .end_to_end
                .map(|l| l.p50_ms <= 250.0 && l.p99_ms <= 1000.0 && level.not_applied == 0);
            row = row.target("p50 <= 250 ms, p99 <= 1 s", meets);
        }
        rows.push(row);
    }
    let aws: f64 = e2e
        .requests_per_spending
        .iter()
        .filter(|(op, _)| op.starts_with("aws "))
        .map(|(_, n)| n)
        .sum();
    let breakdown = e2e
        .requests_per_spending
        .iter()
        .map(|(op, n)| format!("{op} {n:.2}"))
        .collect::<Vec<_>>()
        .join("\n");
    rows.push(
        Row::new(
            mode,
            "AWS requests per spending at 50% (api + relay + consumer)",
            format!("{aws:.2}"),
        )
        .target("<= 3.5", Some(aws <= 3.5)),
    );
    rows.push(Row::new(
        mode,
        "requests per spending, by operation",
        breakdown,
    ));
    for (service, unit, limit) in [
        ("api", "POST", 200.0),
        ("stream-relay", "event", 100.0),
        ("consumer", "event", 150.0),
    ] {
        let Some(usage) = e2e.usage.get(service) else {
            continue;
        };
        let measured = usage
            .cpu_us_per_unit
            .map_or("nothing done".to_owned(), |us| format!("{us:.0} us"));
        rows.push(
            Row::new(mode, format!("CPU per {unit}, {service}"), measured).target(
                format!("<= {limit:.0} us"),
                usage.cpu_us_per_unit.map(|us| us <= limit),
            ),
        );
        rows.push(
            Row::new(
                mode,
                format!("RSS idle / under load, {service}"),
                format!("{:.1} / {:.1} MB", usage.rss_idle_mb, usage.rss_load_mb),
            )
            .target(
                "<= 30 / <= 60 MB",
                Some(usage.rss_idle_mb <= 30.0 && usage.rss_load_mb <= 60.0),
            ),
        );
    }
    rows
}

impl Report {
    /// The table, as printed.
    pub fn render(&self) -> String {
        let mut table = Table::new();
        table.load_preset(ASCII_MARKDOWN);
        table.set_header([
            "mode", "figure", "measured", "ceiling", "ratio", "target", "meets",
        ]);
        for row in &self.rows {
            table.add_row([
                row.mode.clone(),
                row.figure.clone(),
                row.measured.clone(),
                row.ceiling.clone(),
                row.ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
                row.target.clone(),
                match row.meets {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => String::new(),
                },
            ]);
        }
        let mut text = table.to_string();
        if self.smoke {
            text.push_str(
                "\n(smoke scale: every phase ran, at a size too small for its figures to mean anything)",
            );
        }
        text
    }

    /// Writes `dir/bench.json` and `dir/bench.svg`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), BenchError> {
        let json_path = dir.join("bench.json");
        let json = serde_json::to_string_pretty(self).map_err(|e| BenchError::Unreadable {
            path: json_path.display().to_string(),
            detail: e.to_string(),
        })?;
        std::fs::write(&json_path, json + "\n").map_err(|e| BenchError::io(&json_path, e))?;
        let svg_path = dir.join("bench.svg");
        crate::plot::draw(self, &svg_path)?;
        Ok((json_path, svg_path))
    }
}
