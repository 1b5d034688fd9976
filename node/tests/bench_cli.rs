//! The `kim bench` commands run end to end through the real binary and print every figure.

use std::process::Command;

fn kim(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kim"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kim: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The first line of `stdout` that `matches`, named `what` in the failure.
fn line<'a>(stdout: &'a str, what: &str, matches: impl Fn(&str) -> bool) -> &'a str {
    stdout
        .lines()
        .find(|l| matches(l))
        .unwrap_or_else(|| panic!("no {what} line in:\n{stdout}"))
}

/// The `n`th whitespace-separated word of `text`, as a number.
fn nth_number(text: &str, n: usize) -> f64 {
    text.split_whitespace()
        .nth(n)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no number at word {n} of {text:?}"))
}

/// The first number after column `at` on the line of `stdout` that starts with `prefix`.
fn figure(stdout: &str, prefix: &str, at: usize) -> f64 {
    let line = line(stdout, prefix, |l| l.starts_with(prefix));
    nth_number(line.get(at..).unwrap_or(""), 0)
}

#[test]
fn bench_protocol_prints_every_rate() {
    let (ok, stdout, stderr) = kim(&["bench", "protocol", "--records", "20", "--min-ms", "1"]);
    assert!(ok, "kim bench protocol failed: {stderr}");
    for name in [
        "encode content",
        "decode record",
        "sign",
        "verify (single, strict)",
        "verify (batch of 64)",
        "verify (batch of 256)",
        "validate",
    ] {
        assert!(figure(&stdout, name, 28) > 0.0, "{name}: no rate");
    }
}

#[test]
fn bench_encoding_compares_three_encodings() {
    let (ok, stdout, stderr) = kim(&["bench", "encoding", "--records", "10", "--min-ms", "1"]);
    assert!(ok, "kim bench encoding failed: {stderr}");
    for name in ["postcard", "cbor", "json"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing in:\n{stdout}"
        );
    }
}

#[test]
fn bench_refuses_zero_records_with_a_clear_error() {
    let (ok, _, stderr) = kim(&["bench", "protocol", "--records", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--records must be at least 1"), "{stderr}");
}

#[test]
fn bench_blobs_moves_a_file_between_two_nodes_and_prints_its_rate() {
    let (ok, stdout, stderr) = kim(&["bench", "blobs", "--mb", "3", "--runs", "2"]);
    assert!(ok, "kim bench blobs failed: {stderr}");
    for run in ["run 1:", "run 2:"] {
        assert!(stdout.contains(run), "{run} missing in:\n{stdout}");
    }
    let mean = line(&stdout, "mean", |l| l.trim_start().starts_with("mean"));
    assert!(nth_number(mean, 1) > 0.0, "{mean}");
    let (ok, _, stderr) = kim(&["bench", "blobs", "--mb", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--mb must be at least 1"), "{stderr}");
}

#[test]
fn bench_ingest_prints_the_ratio_of_the_fastest_runs() {
    let (ok, stdout, stderr) = kim(&[
        "bench",
        "ingest",
        "--records",
        "300",
        "--batch",
        "100",
        "--runs",
        "2",
    ]);
    assert!(ok, "kim bench ingest failed: {stderr}");
    let ratio = figure(&stdout, "pipeline, 2 in flight / raw verify, 1 thread", 48);
    assert!(ratio > 0.0, "ratio {ratio}");
    assert!(
        stdout.contains("fastest of 2 runs each"),
        "the spread is missing in:\n{stdout}"
    );
    let (ok, _, stderr) = kim(&["bench", "ingest", "--runs", "0"]);
    assert!(!ok);
    assert!(stderr.contains("must be at least 1"), "{stderr}");
}

#[test]
fn bench_propagation_delivers_everything_and_reports_the_rate_it_reached() {
    let (ok, stdout, stderr) = kim(&[
        "bench",
        "propagation",
        "--nodes",
        "3",
        "--seconds",
        "1",
        "--rate",
        "20",
        "--degree",
        "2",
    ]);
    assert!(ok, "kim bench propagation failed: {stderr}");
    for who in ["  bare gossipsub", "  KIM             p50"] {
        let delivered = line(&stdout, who, |l| l.starts_with(who));
        assert!(delivered.ends_with("delivered 20/20"), "{delivered}");
    }
    // The publishing rate is reported, so a run that fell behind its nominal rate shows it.
    let origins = line(&stdout, "origins", |l| l.starts_with("  KIM origins"));
    assert!(nth_number(origins, 4) > 0.0, "{origins}");
}

#[test]
fn bench_catchup_syncs_every_record_and_reports_rate_wire_and_cpu() {
    let (ok, stdout, stderr) = kim(&["bench", "catchup", "--records", "600"]);
    assert!(ok, "kim bench catchup failed: {stderr}");
    let rate = line(&stdout, "rate", |l| {
        l.contains("600 records") && l.contains("records/s end to end")
    });
    assert!(rate.contains("(target ≥ 20,000)"), "{rate}");
    let wire = line(&stdout, "wire", |l| l.contains("sync bytes on the wire"));
    // The records' own bytes plus framing: more than the records, and not twice them.
    let ratio = nth_number(wire.split(" = ").nth(1).unwrap_or(""), 0);
    assert!((1.0..2.0).contains(&ratio), "{wire}");
    line(&stdout, "CPU", |l| {
        l.contains("CPU meanwhile") && l.contains("us per record")
    });
}
