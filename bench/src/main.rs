use std::process::ExitCode;

use clap::Parser;
use obt_bench::{Cli, Command, report};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        // On SIGINT or SIGTERM the phase is dropped, and with it the
        // services it started (killed on drop), before the exit.
        Command::Run(args) => tokio::select! {
            done = obt_bench::run_phase(&args) => done.map(|path| {
                eprintln!("[obt-bench] wrote {}", path.display());
            }),
            () = obt_runtime::shutdown_signal() => {
                eprintln!("obt-bench: interrupted (SIGINT or SIGTERM)");
                // 128 + SIGINT, so that scripts/bench.sh stops too.
                return ExitCode::from(130);
            }
        },
        Command::Report { dir } => report::build(&dir).and_then(|report| {
            let (json, svg) = report.write(&dir)?;
            println!("{}", report.render());
            eprintln!("[obt-bench] wrote {} and {}", json.display(), svg.display());
            Ok(())
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("obt-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
