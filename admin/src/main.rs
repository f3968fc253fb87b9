//! `obt-admin`: see `obt-admin --help` and docs/OPERATIONS.md.

use std::process::ExitCode;

use clap::Parser;
use obt_admin::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    // Bad flags: clap prints the error and exits with status 2.
    let cli = Cli::parse();
    obt_runtime::init_tracing(cli.settings.log_format);
    match run(&cli).await {
        Ok((output, code)) => {
            print!("{output}");
            code
        }
        Err(e) => {
            eprintln!("obt-admin: {e}");
            ExitCode::from(2)
        }
    }
}
