//! `obt-check`: proves the outbox promise against a running deployment.
//! It sends a seeded plan of spendings through the api (concurrently,
//! retrying with the same `Idempotency-Key`), checks the api's own
//! records, waits for the consumer to catch up, and checks that every
//! committed spending was applied exactly once, in order, with nothing
//! extra (docs/CHECK.md).
//!
//! Module map:
//! - [`plan`]: the spendings to send, from the seed.
//! - [`http`]: the HTTP client (rustls on aws-lc-rs).
//! - [`load`]: the load driver and its retries.
//! - [`observe`]: reading the api and the consumer's records; the
//!   convergence wait.
//! - [`model`]: what a run collects; [`verify`]: the verifier, a pure
//!   function of it; [`report`]: figures, table and JSON.
//! - [`run`]: all of it in order, for `main`.

pub mod http;
pub mod load;
pub mod model;
pub mod observe;
pub mod plan;
pub mod report;
pub mod verify;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use obt_consumer::StorageArgs;

use crate::http::{Http, Secret};
use crate::model::Observations;
use crate::report::{Figures, Parameters, Report};

const AFTER_HELP: &str = "\
Exit codes:
  0  every invariant holds
  1  a violation (lost, duplicated, reordered, extra, wrong totals, rejected,
     unresolved, not converged, or the api disagreeing with its own 201s)
  2  usage or configuration error: bad flags, the api unreachable at the start
     for longer than --give-up-after-secs, the api answering 401 (a token
     missing or refused: see --token-file), the consumer's records unreadable,
     identities that are not fresh

Example (DynamoDB mode; the consumer's table and the AWS settings as the
consumer has them):
  AWS_REGION=eu-west-1 OBT_CONSUMER_TABLE=obt-consumer-spending \\
    obt-check --api-url https://api.example.com --spendings 1000 \\
      --identities 20 --concurrency 32 --report check.json

MySQL mode: OBT_STORAGE=mysql OBT_DATABASE_URL=mysql://obt_consumer:...@db/consumed_outboxtable

The table goes to stdout, progress and errors to stderr. Details: docs/CHECK.md.";

/// Load a running outboxtable deployment through its api and prove the
/// outbox promise: every spending the api answered 201 is applied by the
/// consumer exactly once, in seq order per identity, with nothing lost,
/// duplicated or extra, and the totals agree.
///
/// It sends N spendings over K fresh identities ({prefix}-0 ..), C at a
/// time, each with its own Idempotency-Key, retrying transport errors,
/// timeouts, 429 and 5xx with the same key; checks each identity's
/// GET /api/v1/spending/{identity} against the 201s; waits until the
/// consumer's records caught up; then checks them, prints a table with
/// one row per invariant and the figures (throughput, latencies, retries,
/// convergence time) and exits 0 (all hold), 1 (a violation) or 2
/// (usage or configuration error).
#[derive(Debug, Clone, Parser)]
#[command(name = "obt-check", version, after_help = AFTER_HELP)]
pub struct Args {
    /// The api's base URL, http:// or https:// (e.g. https://api.example.com).
    #[arg(long, env = "OBT_CHECK_API_URL")]
    pub api_url: String,

    /// How many spendings to send (N).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub spendings: u64,

    /// Over how many fresh identities (K), named {prefix}-0 .. {prefix}-(K-1).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub identities: u64,

    /// How many POSTs are in flight at once (C), several for the same
    /// identity.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,

    /// The seed of the plan (amounts, names, sending order); random when
    /// absent. Printed, so that a run can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,

    /// The identities' prefix; default "chk-" and a short random run id.
    /// The identities must be fresh: nothing recorded for them yet.
    #[arg(long)]
    pub prefix: Option<String>,

    /// How long one request may take, in seconds, before it is retried.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,

    /// How long a spending is retried before it counts as "unresolved" (and
    /// how long an unreachable api is waited for at the start, and a read
    /// of an identity's summary retried), in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub give_up_after_secs: u64,

    /// How long to wait for the consumer to catch up after the load, in
    /// seconds, before "not converged".
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub converge_timeout_secs: u64,

    /// Sent as "Authorization: Bearer TOKEN" with every request, for an
    /// api that requires authentication. Never printed. Prefer
    /// --token-file: a flag's value is visible to other local users.
    #[arg(long, env = "OBT_CHECK_BEARER_TOKEN", hide_env_values = true)]
    pub bearer_token: Option<Secret>,

    /// A file holding the bearer token (surrounding whitespace ignored),
    /// instead of --bearer-token. Never printed.
    #[arg(
        long,
        env = "OBT_CHECK_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "bearer_token"
    )]
    pub token_file: Option<PathBuf>,

    /// Also write the result as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,

    /// Progress on stderr: auto (bars, only on a terminal), always (bars on
    /// a terminal, otherwise a plain line every 2 s) or never.
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,

    /// Where the consumer records what it applied (read-only here).
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// When to draw the progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    Auto,
    Always,
    Never,
}

/// A usage or configuration error (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Setup(#[from] http::SetupError),
    #[error(
        "the api at {url} is unreachable: no answer from GET /health/live within {secs}s \
         (--give-up-after-secs); last: {last}. Check --api-url and that the api is running"
    )]
    ApiUnreachable {
        url: String,
        secs: u64,
        last: String,
    },
    #[error(
        "the api answered GET /api/v1/spending/{identity} with {reason}: check --api-url and \
         --bearer-token"
    )]
    ApiUnusable { identity: String, reason: String },
    #[error(
        "the api at {url} requires authentication and answered 401 Unauthorized: {what}. Pass \
         a valid bearer token of its issuer with --token-file PATH (or OBT_CHECK_TOKEN_FILE, \
         --bearer-token, OBT_CHECK_BEARER_TOKEN)"
    )]
    Unauthorized { url: String, what: &'static str },
    #[error("cannot read the bearer token from --token-file {path}: {detail}")]
    TokenFile { path: String, detail: String },
    #[error(
        "identity {identity} is not fresh: {place} already has spendings for it. Use another \
         --prefix (or leave it out for a random one)"
    )]
    NotFresh { identity: String, place: String },
    #[error("cannot open the consumer's records: {0}")]
    ConsumerOpen(#[from] obt_consumer::OpenError),
    #[error(
        "the consumer's records ({store}) cannot be read: {detail}. Check OBT_STORAGE, \
         OBT_CONSUMER_TABLE or OBT_DATABASE_URL, and the AWS settings"
    )]
    ConsumerUnreadable { store: String, detail: String },
    #[error("cannot write the report to {path}: {detail}")]
    Report { path: String, detail: String },
}

/// What a run ends with.
#[derive(Debug)]
pub struct RunOutput {
    pub report: Report,
    /// The summary as printed.
    pub rendered: String,
}

/// Runs a whole check. Progress and the header go to stderr; the caller
/// prints [`RunOutput::rendered`].
pub async fn run(args: &Args) -> Result<RunOutput, CheckError> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("chk-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let spendings = usize::try_from(args.spendings).unwrap_or(usize::MAX);
    let identities = usize::try_from(args.identities).unwrap_or(usize::MAX);
    let concurrency = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    let plan = plan::make(seed, &prefix, spendings, identities)?;
    eprintln!(
        "obt-check: seed {seed}, prefix {prefix}: {spendings} spendings over {identities} identities"
    );

    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None => args.bearer_token.clone(),
    };
    let http = Http::new(
        &args.api_url,
        token.as_ref(),
        Duration::from_secs(args.request_timeout_secs),
    )?;
    let config = obt_runtime::aws_config().await;
    let ledger = obt_consumer::store::open(&config, &args.storage, 4, "obt-check")
        .await?
        .reader()
        .clone();
    let give_up_after = Duration::from_secs(args.give_up_after_secs);
    observe::api_reachable(&http, give_up_after).await?;
    observe::preflight(&http, &ledger, &plan.identities, give_up_after).await?;

    let terminal = std::io::stderr().is_terminal();
    let draw = match args.progress {
        Progress::Always | Progress::Auto => terminal,
        Progress::Never => false,
    };
    // `always` without a terminal: a plain line every few seconds (logs, CI).
    let lines = args.progress == Progress::Always && !terminal;
    let bars = MultiProgress::with_draw_target(if draw {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = |template: &str| {
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
    };
    let post_bar = bars.add(ProgressBar::new(plan.spendings.len() as u64));
    post_bar.set_style(style(
        "POST     [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
    ));
    let post_lines = lines.then(|| progress_lines(post_bar.clone(), "POST"));
    let load = load::run(
        &http,
        &plan.spendings,
        &load::LoadSettings {
            concurrency,
            give_up_after,
        },
        &post_bar,
    )
    .await;
    post_bar.finish();
    if let Some(task) = post_lines {
        task.abort();
    }

    let api = observe::api_states(&http, &plan.identities, give_up_after).await;
    let targets: BTreeMap<String, u64> = api
        .iter()
        .map(|(identity, state)| (identity.clone(), state.last_seq()))
        .collect();
    let converge_bar = bars.add(ProgressBar::new(0));
    converge_bar.set_style(style(
        "CONSUMER [{elapsed_precise}] {bar:30} {pos}/{len} events applied, {msg}",
    ));
    let converge_lines = lines.then(|| progress_lines(converge_bar.clone(), "CONSUMER"));
    let convergence = observe::converge(
        &ledger,
        &targets,
        Duration::from_secs(args.converge_timeout_secs),
        &converge_bar,
    )
    .await;
    if let Some(task) = converge_lines {
        task.abort();
    }
    let convergence = convergence?;
    converge_bar.finish();
    let applied = observe::applied_views(&ledger, &plan.identities).await?;

    let observations = Observations {
        identities: plan.identities.clone(),
        posts: load.posts,
        api,
        applied,
        lagging: convergence.lagging,
    };
    let verdict = verify::verify(&observations);
    let convergence_time = match (convergence.converged_at, load.last_created) {
        (Some(at), Some(last)) => Some(at.saturating_duration_since(last)),
        (Some(_), None) => Some(Duration::ZERO),
        _ => None,
    };
    let figures = Figures::new(
        &observations,
        load.elapsed,
        &load.latencies,
        load.retries,
        convergence_time,
    );
    let parameters = Parameters {
        api_url: http.base().to_owned(),
        seed,
        prefix,
        spendings,
        identities,
        concurrency,
        consumer_store: ledger.describe(),
    };
    let report = Report::new(parameters, &verdict, figures);
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report).map_err(|e| CheckError::Report {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        std::fs::write(path, json + "\n").map_err(|e| CheckError::Report {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    let rendered = report.render();
    Ok(RunOutput { report, rendered })
}

/// The token in `path`, without surrounding whitespace; never empty.
pub fn read_token(path: &std::path::Path) -> Result<Secret, CheckError> {
    let error = |detail: String| CheckError::TokenFile {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(error("the file is empty".to_owned()));
    }
    token
        .parse()
        .map_err(|e: std::convert::Infallible| error(e.to_string()))
}

/// Prints `bar`'s state to stderr every 2 seconds, for `--progress
/// always` when stderr is not a terminal (indicatif draws only on one).
fn progress_lines(bar: ProgressBar, label: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tick.tick().await;
            eprintln!(
                "{label} {}/{} {}",
                bar.position(),
                bar.length().unwrap_or(0),
                bar.message()
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_consistent_and_the_help_says_what_matters() {
        Args::command().debug_assert();
        let help = Args::command().render_long_help().to_string();
        for needle in [
            "Exit codes",
            "--api-url",
            "OBT_CONSUMER_TABLE",
            "Example",
            "OBT_CHECK_BEARER_TOKEN",
            "--token-file",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
        }
    }

    #[test]
    fn the_token_is_not_shown() {
        let args = Args::try_parse_from([
            "obt-check",
            "--api-url",
            "http://x",
            "--bearer-token",
            "s3cret-token",
        ])
        .expect("valid flags");
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[test]
    fn the_token_file_is_read_trimmed_and_an_empty_one_refused() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("obt-check-token-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, "  s3cret-token\n").expect("write");
        let token = read_token(&path).expect("a token");
        assert_eq!(token.expose(), "s3cret-token");
        std::fs::write(&path, "\n").expect("write");
        let error = read_token(&path).expect_err("empty");
        assert!(error.to_string().contains("empty"), "{error}");
        assert!(!error.to_string().contains("s3cret"));
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            read_token(&dir.join("obt-check-no-such-token")),
            Err(CheckError::TokenFile { .. })
        ));
        // One of the two, not both.
        assert!(
            Args::try_parse_from([
                "obt-check",
                "--api-url",
                "http://x",
                "--bearer-token",
                "t",
                "--token-file",
                "/tmp/t"
            ])
            .is_err()
        );
    }
}
