//! `obt-bench`: measures outboxtable phase by phase against the ceilings
//! of its store and queue, on stand-ins that `scripts/bench.sh` starts
//! fresh for each phase, and reports the figures side by side
//! (docs/PERFORMANCE.md, "How to run the benchmark").
//!
//! Module map:
//! - [`phases`]: what each phase does; [`drive`]: the closed- and
//!   open-loop load drivers.
//! - [`deploy`]: a phase's tables, queues, databases and service processes.
//! - [`probe`]: the services' Prometheus counters, CPU time and memory.
//! - [`lambda`]: a Lambda binary behind cargo-lambda's Runtime API
//!   emulator, and the stream records to invoke it with.
//! - [`figures`]: what a phase writes (`DIR/STORAGE/PHASE.json`).
//! - [`report`]: the merged table and `bench.json`; [`plot`]: `bench.svg`.

pub mod deploy;
pub mod drive;
pub mod figures;
pub mod lambda;
pub mod phases;
pub mod plot;
pub mod probe;
pub mod report;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use obt_runtime::Storage;

use crate::figures::PhaseFile;
use crate::phases::{Context, Scale};

const AFTER_HELP: &str = "\
Each phase expects the stand-ins in its environment (AWS_ENDPOINT_URL_*,
and OBT_MYSQL_ADMIN_URL in MySQL mode) and writes DIR/STORAGE/PHASE.json;
`obt-bench report DIR` merges them. scripts/bench.sh runs every phase on
fresh stand-ins and then the report: use it rather than this binary.

Exit codes: 0 done; 1 a phase failed (a stand-in or a service: the message
says which, and where its log is); 2 usage error.";

/// Measure outboxtable against the ceilings of its store and queue, phase
/// by phase, and report the figures side by side.
#[derive(Debug, Parser)]
#[command(name = "obt-bench", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one phase and write its figures to DIR/STORAGE/PHASE.json.
    Run(RunArgs),
    /// Merge DIR's phase files: print one table, write DIR/bench.json and
    /// DIR/bench.svg.
    Report {
        /// The directory of a run (scripts/bench.sh --out).
        dir: PathBuf,
    },
}

/// The phases, in the order scripts/bench.sh runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// The api's store called directly, its exact request sequence per
    /// spending without HTTP or JSON, at the api phase's concurrencies.
    StoreCeiling,
    /// The api binary (relay and consumer running): POSTs at 1, 4, 16, 32,
    /// 64 in flight, each with an Idempotency-Key: 201/s and latency.
    Api,
    /// Raw SendMessageBatch of 10 entries (distinct groups) to the FIFO
    /// queue: messages/s.
    QueueCeiling,
    /// DynamoDB only: raw GetRecords of the stream after writing items:
    /// records/s.
    StreamCeiling,
    /// A backlog written with the relay stopped, then the relay daemon
    /// (MySQL: the poller) timed until it published it: events/s.
    Drain,
    /// Open loop at 25, 50, 75% of the api phase's maximum: end-to-end
    /// latency per event; over the 50% level the requests per spending,
    /// CPU per unit of work and RSS of each service.
    EndToEnd,
    /// DynamoDB only: the relay Lambda under `cargo lambda watch`: its
    /// cold-start init and per-batch duration.
    Lambda,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Self::StoreCeiling => "store-ceiling",
            Self::Api => "api",
            Self::QueueCeiling => "queue-ceiling",
            Self::StreamCeiling => "stream-ceiling",
            Self::Drain => "drain",
            Self::EndToEnd => "end-to-end",
            Self::Lambda => "lambda",
        }
    }
}

/// `obt-bench run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    pub phase: Phase,

    /// The storage mode of the services and the store.
    #[arg(long, value_enum, default_value_t = Storage::Dynamodb)]
    pub storage: Storage,

    /// The run's directory; this phase writes DIR/STORAGE/PHASE.json and
    /// the services' logs to DIR/STORAGE/logs.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Where the api, stream-relay and consumer binaries are (target/release
    /// for a real run).
    #[arg(long, value_name = "DIR", default_value = "target/release")]
    pub bin_dir: PathBuf,

    /// Every phase at a tiny scale (a few seconds): it must run and report;
    /// its figures mean little.
    #[arg(long)]
    pub smoke: bool,

    /// Seconds of each closed-loop step [default: 15, smoke 2].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub step_secs: Option<u64>,

    /// Seconds of each open-loop level of end-to-end [default: 30, smoke 3].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub level_secs: Option<u64>,

    /// Events of the drain phase's backlog (and items of stream-ceiling)
    /// [default: 10000, smoke 200].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub backlog: Option<u64>,

    /// The identities spendings are spread over [default: 1000, smoke 50].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub identities: Option<u64>,

    /// end-to-end: the api's maximum (201/s) the levels are fractions of,
    /// instead of reading it from the api phase's file.
    #[arg(long)]
    pub api_max: Option<f64>,
}

/// Why the benchmark cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Setup(String),
    #[error("{what} failed: {detail}. Is the stand-in up (scripts/bench.sh starts them)?")]
    StandIn { what: &'static str, detail: String },
    #[error("{service} exited ({status}) during the phase: its log is {log}")]
    ServiceDied {
        service: String,
        status: String,
        log: String,
    },
    #[error("{service} did not come up within {secs} s (last: {last}): its log is {log}")]
    NotUp {
        service: String,
        secs: u64,
        last: String,
        log: String,
    },
    #[error("reading the metrics of {service} failed: {detail}")]
    Metrics { service: String, detail: String },
    #[error("phase {phase} failed: {detail}")]
    Phase { phase: &'static str, detail: String },
    #[error("phase {phase} does not apply to the MySQL mode")]
    NotApplicable { phase: &'static str },
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
    #[error("{path} is not a phase file of obt-bench: {detail}")]
    Unreadable { path: String, detail: String },
    #[error("drawing {path} failed: {detail}")]
    Plot { path: String, detail: String },
}

impl BenchError {
    pub fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            detail: error.to_string(),
        }
    }
}

fn storage_name(storage: Storage) -> &'static str {
    match storage {
        Storage::Dynamodb => "dynamodb",
        Storage::Mysql => "mysql",
    }
}

/// Runs one phase and writes its file; returns the file's path.
pub async fn run_phase(args: &RunArgs) -> Result<PathBuf, BenchError> {
    let mut scale = if args.smoke {
        Scale::smoke()
    } else {
        Scale::full()
    };
    if let Some(secs) = args.step_secs {
        scale.step = std::time::Duration::from_secs(secs);
    }
    if let Some(secs) = args.level_secs {
        scale.level = std::time::Duration::from_secs(secs);
    }
    if let Some(n) = args.backlog {
        scale.backlog = n;
        scale.stream_items = n;
    }
    if let Some(n) = args.identities {
        scale.identities = usize::try_from(n).unwrap_or(usize::MAX);
    }
    let storage = storage_name(args.storage);
    let dir = args.out.join(storage);
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::io(&dir, e))?;
    let profile = args
        .bin_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ctx = Context {
        storage: args.storage,
        scale,
        bin_dir: args.bin_dir.clone(),
        dir: dir.clone(),
        api_max: args.api_max,
    };
    eprintln!(
        "[obt-bench] {} ({storage}, {profile} binaries{})",
        args.phase.name(),
        if args.smoke { ", smoke" } else { "" }
    );
    let result = phases::run(args.phase.name(), &ctx).await?;
    let file = PhaseFile {
        storage: storage.to_owned(),
        smoke: args.smoke,
        profile,
        result,
    };
    let path = dir.join(format!("{}.json", args.phase.name()));
    let json = serde_json::to_string_pretty(&file).map_err(|e| BenchError::Io {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    std::fs::write(&path, json + "\n").map_err(|e| BenchError::io(&path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_consistent_and_the_help_names_the_phases() {
        Cli::command().debug_assert();
        let help = Cli::command()
            .find_subcommand_mut("run")
            .expect("run")
            .render_long_help()
            .to_string();
        for needle in [
            "store-ceiling",
            "queue-ceiling",
            "end-to-end",
            "--smoke",
            "--bin-dir",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
        }
    }
}
