//! `obt-bench report` on a fixture run (the phase files of a smoke run):
//! prints one table with each figure beside its ceiling and target, and
//! writes bench.json and bench.svg.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of the fixture run in a fresh directory (the report writes there).
fn fixture_copy() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run");
    let target = std::env::temp_dir().join(format!("obt-bench-report-{}", uuid::Uuid::new_v4()));
    for mode in std::fs::read_dir(&source).expect("the fixture run") {
        let mode = mode.expect("an entry").path();
        let into = target.join(mode.file_name().expect("a name"));
        std::fs::create_dir_all(&into).expect("a directory");
        for file in std::fs::read_dir(&mode).expect("a mode directory") {
            let file = file.expect("an entry").path();
            std::fs::copy(&file, into.join(file.file_name().expect("a name"))).expect("copied");
        }
    }
    target
}

#[test]
fn the_report_prints_one_table_and_writes_the_json_and_the_plot() {
    let dir = fixture_copy();
    let output = Command::new(env!("CARGO_BIN_EXE_obt-bench"))
        .arg("report")
        .arg(&dir)
        .output()
        .expect("obt-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");

    // One table, with a row per figure of both modes, each beside its
    // ceiling, ratio and target.
    assert_eq!(stdout.matches("| mode").count(), 1, "{stdout}");
    for needle in [
        "| ceiling",
        "| target",
        "store ceiling, 32 in flight",
        "api, 32 in flight",
        ">= 0.8 x store",
        "queue ceiling: SendMessageBatch of 10",
        "stream ceiling: GetRecords",
        "relay drain (daemon)",
        "relay drain (poller)",
        "CPU per event, daemon draining",
        ">= 0.5 x queue",
        ">= 1.0 x api max",
        "end to end at 50%",
        "p50 <= 250 ms, p99 <= 1 s",
        "AWS requests per spending at 50%",
        "CPU per POST, api",
        "CPU per event, stream-relay",
        "CPU per event, consumer",
        "RSS idle / under load, consumer",
        "Lambda relay init (the function's own init_ms)",
        "Lambda relay cold invocation - warm p50",
        "Lambda relay per batch of",
        "<= 50 ms",
        "smoke scale",
    ] {
        assert!(
            stdout.contains(needle),
            "the table lacks {needle:?}:\n{stdout}"
        );
    }
    let init = stdout
        .lines()
        .find(|l| l.contains("Lambda relay init"))
        .expect("the Lambda init row");
    assert!(
        init.contains("12 ms") && init.contains("yes"),
        "the function's own init, against the target: {init}"
    );
    // The MySQL mode has no stream and no Lambda: n/a, not "not run".
    let mysql_stream = stdout
        .lines()
        .find(|l| l.contains("| mysql") && l.contains("stream ceiling"))
        .expect("a mysql stream row");
    assert!(mysql_stream.contains("n/a"), "{mysql_stream}");

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json is JSON");
    assert_eq!(json["smoke"], true);
    assert!(json["rows"].as_array().is_some_and(|rows| rows.len() > 20));
    assert!(json["phases"]["dynamodb"]["end-to-end"]["result"]["levels"].is_array());
    assert!(json["phases"]["mysql"]["api"]["result"]["steps"].is_array());

    let svg = std::fs::read_to_string(dir.join("bench.svg")).expect("bench.svg written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    for needle in [
        "Throughput against concurrency",
        "api latency percentiles",
        "End-to-end latency distribution",
        "dynamodb api 201/s",
        "mysql api 201/s",
        "dynamodb at 50% of api max",
        "<polyline",
    ] {
        assert!(svg.contains(needle), "the plot lacks {needle:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_directory_without_phase_files_is_an_error_that_says_what_to_do() {
    let dir = std::env::temp_dir().join(format!("obt-bench-empty-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let output = Command::new(env!("CARGO_BIN_EXE_obt-bench"))
        .arg("report")
        .arg(&dir)
        .output()
        .expect("obt-bench runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("scripts/bench.sh"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
