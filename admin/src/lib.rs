//! `obt-admin`: what an operator does about identities that a stage of the
//! pipeline parked (docs/OPERATIONS.md, "Parked identities").
//!
//! A relay parks an identity when one of its events can never be published
//! as it is (SQS refuses it, the relay cannot read it): the identity's
//! events wait, in order, and every other identity flows on (invariant 6).
//! After the cause is repaired, `parked retry` takes the mark off and
//! waits until the relay has published what waited, or parked it again.
//!
//! - [`cli`]: the command line.
//! - [`parking`]: the parked identities of the relay stage, in either
//!   storage mode ([`RelayParkings`]), and the retry.
//! - [`output`]: tables for people, JSON for scripts.

pub mod cli;
pub mod output;
pub mod parking;

pub use cli::{Cli, Command, ParkedCommand};
pub use parking::{AdminError, ParkedIdentity, RelayParkings, RetryOutcome};

use std::process::ExitCode;

/// Runs one command and says what to print and how to exit: 0 when done,
/// 1 when a retry did not bring the identity back (parked again, or not
/// published within the wait).
pub async fn run(cli: &Cli) -> Result<(String, ExitCode), AdminError> {
    let parkings = RelayParkings::connect(&cli.settings).await?;
    let Command::Parked(command) = &cli.command;
    match command {
        ParkedCommand::List { json } => {
            let parked = parkings.list().await?;
            let text = if *json {
                output::json(&parked)
            } else {
                output::table(&parked)
            };
            Ok((text, ExitCode::SUCCESS))
        }
        ParkedCommand::Retry {
            identity,
            wait_secs,
            json,
        } => {
            let outcome = parkings
                .retry(identity, std::time::Duration::from_secs(*wait_secs))
                .await?;
            let code = if outcome.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            let text = if *json {
                output::json(&outcome)
            } else {
                format!("{outcome}\n")
            };
            Ok((text, code))
        }
    }
}
