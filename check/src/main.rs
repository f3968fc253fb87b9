//! `obt-check`: see `obt-check --help` and docs/CHECK.md.

use std::process::ExitCode;

use clap::Parser;
use obt_check::{Args, run};

fn main() -> ExitCode {
    // Bad flags: clap prints the error and exits with status 2.
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("obt-check: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(output) => {
            print!("{}", output.rendered);
            if output.report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("obt-check: {e}");
            ExitCode::from(2)
        }
    }
}
