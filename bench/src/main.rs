use std::process::ExitCode;

use clap::Parser;
use obt_bench::{Cli, Command, report};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(args) => obt_bench::run_phase(&args).await.map(|path| {
            eprintln!("[obt-bench] wrote {}", path.display());
        }),
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
