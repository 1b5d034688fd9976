//! Architecture invariant: `kim-protocol` depends on no IO crate (tokio, libp2p, sled, axum,
//! hyper, mio). Read from Cargo.lock, so it holds for the exact versions the build uses.

use std::collections::{BTreeMap, BTreeSet};

/// Package name → dependency names, from Cargo.lock's `[[package]]` tables.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut graph = BTreeMap::new();
    let mut name = String::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            in_deps = false;
        } else if let Some(n) = line.strip_prefix("name = ") {
            name = n.trim_matches('"').to_string();
            graph.entry(name.clone()).or_insert_with(Vec::new);
        } else if line.starts_with("dependencies = [") {
            in_deps = !line.ends_with(']');
        } else if in_deps && line == "]" {
            in_deps = false;
        } else if in_deps {
            let dep = line.trim_matches(|c| c == '"' || c == ',');
            let dep = dep.split(' ').next().unwrap_or(dep).to_string();
            graph.entry(name.clone()).or_default().push(dep);
        }
    }
    graph
}

#[test]
fn protocol_depends_on_no_io_crate() {
    let graph = lock_graph();
    assert!(
        graph.contains_key("kim-protocol"),
        "kim-protocol not in Cargo.lock"
    );
    let mut seen = BTreeSet::new();
    let mut stack = vec!["kim-protocol".to_string()];
    while let Some(pkg) = stack.pop() {
        if seen.insert(pkg.clone()) {
            stack.extend(graph.get(&pkg).cloned().unwrap_or_default());
        }
    }
    for forbidden in [
        "tokio",
        "libp2p",
        "sled",
        "axum",
        "hyper",
        "mio",
        "async-std",
    ] {
        assert!(
            !seen.contains(forbidden),
            "kim-protocol reaches {forbidden}; the protocol must stay pure"
        );
    }
    // The check reads dev-dependencies too (Cargo.lock does not separate them), so it is
    // stricter than `cargo tree -e normal`; the set must at least hold the real deps.
    assert!(seen.contains("ed25519-dalek") && seen.contains("postcard"));
}
