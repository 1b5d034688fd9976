//! `kim bench search` runs end to end through the real binary on a small federation and prints
//! every figure (the figures themselves are not judged: they depend on the machine).

use std::process::Command;

#[test]
fn bench_search_prints_every_figure() {
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("no temp dir: {e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_kim"))
        .args(["bench", "search", "--records", "300", "--queries", "16"])
        .args(["--matches", "3", "--dir"])
        .arg(scratch.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run kim: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kim bench search failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for label in [
        "stored:",
        "index build:",
        "search:",
        "match:",
        "memory:",
        "disk:",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(label)),
            "{label} missing in:\n{stdout}"
        );
    }
    assert!(stdout.contains("16 queries, p50"), "{stdout}");
    // The scratch store and index are removed unless --keep.
    let left = std::fs::read_dir(scratch.path()).map_or(0, |d| d.count());
    assert_eq!(left, 0, "bench left files behind");

    let refused = Command::new(env!("CARGO_BIN_EXE_kim"))
        .args(["bench", "search", "--records", "0"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run kim: {e}"));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--records must list sizes"));
}
