//! `obt-admin`: what an operator does about identities that a stage of the
//! pipeline parked (docs/OPERATIONS.md).
//!
//! A stage parks an identity when one of its events can never be published
//! or applied as it is: its events wait, in order, and every other identity
//! flows on (invariant 6). After the cause is repaired, `parked retry`
//! lets them go.
//!
//! - [`cli`]: the command line.
//! - [`parking`]: the relay stage, in either storage mode
//!   ([`RelayParkings`]): its marks, and the retry that takes one off and
//!   waits for the relay.
//! - [`consumer_stage`]: the consumer stage ([`ConsumerParkings`]): its
//!   parkings, and the retry that replays dead letters and applies what
//!   waited.
//! - [`status`]: `status`, every stage's backlog and lag, judged against
//!   thresholds (a health probe).
//! - [`output`]: tables for people, JSON for scripts.

pub mod cli;
pub mod consumer_stage;
pub mod output;
pub mod parking;
pub mod status;

pub use cli::{Cli, Command, ParkedCommand, Stage};
pub use consumer_stage::ConsumerParkings;
pub use parking::{AdminError, ParkedIdentity, RelayParkings, RetryOutcome};

use std::process::ExitCode;
use std::time::Duration;

/// What to print and how to exit: 0 when done, 1 when a retry left the
/// identity parked (or, at the relay, not yet published within the wait)
/// or `status` found a stage stuck, 3 when `status` could not read a
/// stage. (`main` exits 2 on a usage or configuration error.)
pub type Answer = (String, ExitCode);

/// Runs one command.
pub async fn run(cli: &Cli) -> Result<Answer, AdminError> {
    let command = match &cli.command {
        Command::Parked(command) => command,
        Command::Status(args) => {
            let report = status::read::report(&cli.settings, args).await?;
            let text = if args.json {
                output::json(&report)
            } else {
                report.text()
            };
            return Ok((text, report.exit_code()));
        }
    };
    match cli.settings.stage {
        Stage::Relay => relay(&RelayParkings::connect(&cli.settings).await?, command).await,
        Stage::Consumer => {
            consumer(&ConsumerParkings::connect(&cli.settings).await?, command).await
        }
    }
}

fn exit(succeeded: bool) -> ExitCode {
    if succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn listing(parked: &[ParkedIdentity], json: bool) -> Answer {
    let text = if json {
        output::json(&parked)
    } else {
        output::table(parked)
    };
    (text, ExitCode::SUCCESS)
}

async fn relay(parkings: &RelayParkings, command: &ParkedCommand) -> Result<Answer, AdminError> {
    match command {
        ParkedCommand::List { json } => Ok(listing(&parkings.list().await?, *json)),
        ParkedCommand::Retry {
            identity,
            wait_secs,
            json,
            ..
        } => {
            let outcome = parkings
                .retry(identity, Duration::from_secs(*wait_secs))
                .await?;
            let text = if *json {
                output::json(&outcome)
            } else {
                format!("{outcome}\n")
            };
            Ok((text, exit(outcome.succeeded())))
        }
    }
}

async fn consumer(
    parkings: &ConsumerParkings,
    command: &ParkedCommand,
) -> Result<Answer, AdminError> {
    match command {
        ParkedCommand::List { json } => Ok(listing(&parkings.list().await?, *json)),
        ParkedCommand::Retry {
            identity,
            discard,
            json,
            ..
        } => {
            let report = parkings.retry(identity, discard).await?;
            let text = if *json {
                output::json(&consumer_stage::to_json(&report))
            } else {
                format!("{report}\n")
            };
            Ok((text, exit(consumer_stage::succeeded(&report))))
        }
    }
}
