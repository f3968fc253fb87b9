//! `consumer-show`: prints what the consumer has applied for one identity,
//! from either backend (`OBT_STORAGE`), as the same JSON.

use anyhow::Context;
use clap::Parser;
use obt_consumer::StorageArgs;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

/// Print, as JSON, what the consumer has applied for an identity: its totals
/// and every applied spending in seq order. Exits with status 1 when nothing
/// has been applied for it (yet), so scripts can wait on it.
#[derive(Debug, Parser)]
#[command(name = "consumer-show", version)]
struct Args {
    /// The identity to show.
    identity: String,
    /// Where the consumer records what it applied.
    #[command(flatten)]
    storage: StorageArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = obt_runtime::aws_config().await;
    let records = obt_consumer::store::open(&config, &args.storage, 1, "consumer-show")
        .await
        .context("opening the consumer's records")?;
    let reader = records.reader();
    let applied = reader
        .load_identity(&args.identity)
        .await
        .with_context(|| format!("reading the {}", reader.describe()))?;
    let Some(applied) = applied else {
        eprintln!(
            "nothing applied for identity {} in the {}",
            args.identity,
            reader.describe()
        );
        std::process::exit(1);
    };
    let time = |t: time::OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    let spendings: Vec<_> = applied
        .spendings
        .iter()
        .map(|s| {
            json!({
                "seq": s.seq,
                "event_id": s.event_id,
                "name": s.name,
                "surname": s.surname,
                "amount": s.amount.to_string(),
                "occurred_at": time(s.occurred_at),
                "applied_at": time(s.applied_at),
            })
        })
        .collect();
    let shown = json!({
        "identity": applied.identity,
        "name": applied.name,
        "surname": applied.surname,
        "total": applied.total.to_string(),
        "count": applied.count,
        "last_seq": applied.last_seq,
        "spendings": spendings,
    });
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}
