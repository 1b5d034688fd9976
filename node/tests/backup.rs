//! Backup and restore through the real binary: `kim export` and `kim import` on a running
//! node. Importing a node's own bundle finds everything already held; `--local` carries drafts
//! and private data; a tampered bundle is refused whole, naming the position and the reason,
//! and the node's state digest does not move.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use ed25519_dalek::SigningKey;
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
use kim_protocol::types::Date;
use kim_protocol::{FederationId, PublicKey, samples};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};

mod support {
    pub mod binary;
}

use support::binary::*;

/// A valid public body of a kind, from a seed.
fn sample_body(kind: Kind, seed: u64) -> Value {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match kind {
        Kind::Organisation => serde_json::to_value(samples::organisation(&mut rng)),
        Kind::Project => serde_json::to_value(samples::project(&mut rng)),
        // The sample lists a made-up file; a node publishes only attachments it holds.
        Kind::Knowledge => serde_json::to_value(kim_protocol::types::Knowledge {
            attachments: Vec::new(),
            ..samples::knowledge(&mut rng)
        }),
        _ => {
            let created = Date {
                year: 2026,
                month: 1,
                day: 15,
            };
            let mut offer = samples::cooperation(&mut rng, created);
            offer.eoi_deadline = None;
            serde_json::to_value(offer)
        }
    }
    .expect("body to JSON")
}

fn write_json(path: &Path, value: &Value) -> String {
    std::fs::write(path, serde_json::to_vec_pretty(value).expect("JSON")).expect("write");
    path.display().to_string()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON file")
}

/// A node with one item of every kind (one revised, one withdrawn), private data and a draft.
fn populated_node(root: &Path) -> Node {
    let mut node = Node::init(root);
    node.start();
    for (i, (cmd, kind)) in [
        ("org", Kind::Organisation),
        ("project", Kind::Project),
        ("offer", Kind::Cooperation),
        ("knowledge", Kind::Knowledge),
    ]
    .into_iter()
    .enumerate()
    {
        for n in 0..2u64 {
            let file = write_json(
                &root.join(format!("{cmd}-{n}.json")),
                &json!({
                    "key": format!("{cmd}-{n}"),
                    "body": sample_body(kind, i as u64 * 10 + n),
                    "private": { "note": format!("private note {cmd}-{n}") },
                }),
            );
            node.kim(&[cmd, "publish", "--file", &file]).ok();
        }
    }
    let file = write_json(
        &root.join("revision.json"),
        &json!({ "body": sample_body(Kind::Project, 99) }),
    );
    node.kim(&["project", "revise", "project-1", "--file", &file])
        .ok();
    node.kim(&["offer", "withdraw", "offer-1"]).ok();
    let file = write_json(
        &root.join("draft.json"),
        &json!({ "body": sample_body(Kind::Knowledge, 77) }),
    );
    node.kim(&["knowledge", "draft", "guide-draft", "--file", &file])
        .ok();
    node
}

fn status(node: &Node) -> Value {
    node.kim(&["status", "--json"]).ok().json()
}

fn digest(node: &Node) -> String {
    status(node)["state_digest"].as_str().unwrap().to_string()
}

/// The region's key and federation, read from the data directory as an operator could.
fn identity(node: &Node) -> (SigningKey, FederationId) {
    let secret: [u8; 32] = std::fs::read(node.data.join("region.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let config = kim_node::config::Config::load(&node.data).unwrap();
    (
        SigningKey::from_bytes(&secret),
        FederationId::from_hex(&config.federation).unwrap(),
    )
}

/// A knowledge record signed by `key`, as bundle hex.
fn knowledge_record(key: &SigningKey, federation: FederationId, item: &str, seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let content = Content {
        format: FORMAT_VERSION,
        federation,
        author: PublicKey(key.verifying_key().to_bytes()),
        kind: Kind::Knowledge,
        key: item.to_string(),
        revision: 1,
        created_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        expires_at_ms: None,
        body: Body::Knowledge(samples::knowledge(&mut rng)),
    };
    kim_protocol::bytes::to_hex(&Record::sign(&content, key).unwrap().bytes)
}

fn records(bundle: &Value) -> Vec<String> {
    bundle["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

fn with_records(bundle: &Value, records: &[String]) -> Value {
    let mut bundle = bundle.clone();
    bundle["records"] = json!(records);
    bundle
}

/// Flips the case of one letter of a knowledge item's title inside the signed bytes: the record
/// still decodes, but the signature no longer matches. Returns the position and the new hex.
fn flip_title_byte(records: &[String]) -> (usize, String) {
    for (i, hex) in records.iter().enumerate() {
        let bytes = kim_protocol::bytes::from_hex(hex).unwrap();
        let record = Record::decode(bytes.clone()).unwrap();
        let Body::Knowledge(k) = &record.content.body else {
            continue;
        };
        let title = k.title.as_bytes();
        let at = bytes
            .windows(title.len())
            .position(|w| w == title)
            .expect("title bytes in the record");
        let mut tampered = bytes;
        let letter = (at..at + title.len())
            .find(|&j| tampered[j].is_ascii_alphabetic())
            .unwrap();
        tampered[letter] ^= 0x20;
        assert!(Record::decode(tampered.clone()).is_ok(), "still decodes");
        return (i, kim_protocol::bytes::to_hex(&tampered));
    }
    panic!("no knowledge record in the bundle");
}

#[test]
fn export_and_import_on_the_same_node_finds_everything_held() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = populated_node(tmp.path());
    let before = status(&node);
    let digest_before = before["state_digest"].as_str().unwrap().to_string();

    // Export: every signed record, no local data, nothing private inside.
    let path = tmp.path().join("backup.json");
    let out = node
        .kim(&["export", "--output", path.to_str().unwrap()])
        .ok();
    let bundle = read_json(&path);
    let held = records(&bundle);
    assert!(
        out.stderr.contains(&format!(
            "exported {} records to {}",
            held.len(),
            path.display()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(bundle["format"], "kim-bundle/1");
    assert_eq!(bundle["federation"], before["federation"]);
    assert!(bundle.get("local").is_none(), "local data without --local");
    // The charter, the region profile and the current revision of each of the 8 items.
    assert!(held.len() >= 10, "{} records", held.len());
    assert!(held.len() as u64 >= before["sync_set"].as_u64().unwrap());
    let text = std::fs::read_to_string(&path).unwrap();
    let secret = kim_protocol::bytes::to_hex(b"private note");
    assert!(
        !text.contains("private note") && !text.contains(&secret),
        "private data leaked into the public export"
    );
    for hex in &held {
        let record = Record::decode(kim_protocol::bytes::from_hex(hex).unwrap()).unwrap();
        record.verify().expect("exported record verifies");
    }
    // To stdout without --output.
    let out = node.kim(&["export"]).ok();
    assert_eq!(records(&out.json()).len(), held.len());

    // Import on the same node: everything already held, nothing changes.
    let out = node.kim(&["import", path.to_str().unwrap()]).ok();
    assert_eq!(
        out.stdout.trim(),
        format!(
            "imported: 0 stored, {} already held, 0 older revisions, 0 local values",
            held.len()
        )
    );
    let report = node
        .kim(&["import", path.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(report["stored"], 0);
    assert_eq!(report["duplicates"], held.len());
    assert_eq!(digest(&node), digest_before);

    // A record removed from the middle is fine: the rest is held.
    let mut fewer = held.clone();
    fewer.remove(held.len() / 2);
    let file = write_json(
        &tmp.path().join("fewer.json"),
        &with_records(&bundle, &fewer),
    );
    let report = node.kim(&["import", &file, "--json"]).ok().json();
    assert_eq!(report["duplicates"], fewer.len());
    assert_eq!(report["stored"], 0);
    assert_eq!(digest(&node), digest_before);

    // --local carries drafts and private data, and imports them back.
    let local_path = tmp.path().join("local.json");
    node.kim(&[
        "export",
        "--local",
        "--output",
        local_path.to_str().unwrap(),
    ])
    .ok();
    let local_bundle = read_json(&local_path);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&local_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup with private data must be owner-only");
    }
    let local = local_bundle["local"].as_object().expect("local section");
    assert_eq!(
        local["private/organisation/org-0"]["note"], "private note org-0",
        "{local:?}"
    );
    assert!(
        local
            .keys()
            .any(|k| k.starts_with("draft/") && k.ends_with("guide-draft")),
        "{local:?}"
    );
    assert_eq!(records(&local_bundle), held);
    node.kim(&["knowledge", "delete-draft", "guide-draft"]).ok();
    let report = node
        .kim(&["import", local_path.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(report["local_values"], local.len());
    let drafts = node.kim(&["knowledge", "drafts", "--json"]).ok().json();
    assert_eq!(drafts[0]["key"], "guide-draft", "draft restored: {drafts}");
    assert_eq!(digest(&node), digest_before);

    // Export and import appear in the audit log.
    let audit = node
        .kim(&["audit", "--json", "--limit", "1000"])
        .ok()
        .json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"export") && actions.contains(&"import"));
    assert!(node.stop_with("TERM").success());
}

#[test]
fn a_tampered_bundle_is_refused_whole_with_position_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = populated_node(tmp.path());
    let path = tmp.path().join("backup.json");
    node.kim(&["export", "--output", path.to_str().unwrap()])
        .ok();
    let bundle = read_json(&path);
    let held = records(&bundle);
    let (key, federation) = identity(&node);
    // Three valid records the node does not hold yet: a half-import would store them.
    let fresh: Vec<String> = (0..3)
        .map(|i| knowledge_record(&key, federation, &format!("restored-{i}"), 500 + i))
        .collect();
    let digest_before = digest(&node);
    let live_before = status(&node)["records"].clone();

    let refused = |name: &str, records: Vec<String>, position: usize, reason: &[&str]| {
        let file = write_json(
            &tmp.path().join(format!("{name}.json")),
            &with_records(&bundle, &records),
        );
        let out = node.kim(&["import", &file]).fails();
        assert!(
            out.stderr
                .contains(&format!("record {position} of the bundle"))
                && out.stderr.contains("nothing was imported")
                && out.stderr.contains("HTTP 422"),
            "{name}: {}",
            out.stderr
        );
        for r in reason {
            assert!(out.stderr.contains(r), "{name}: no {r:?} in {}", out.stderr);
        }
        assert_eq!(digest(&node), digest_before, "{name}: the state changed");
        assert_eq!(status(&node)["records"], live_before, "{name}");
        for i in 0..3 {
            let out = node
                .kim(&["knowledge", "show", &format!("restored-{i}")])
                .fails();
            assert!(
                out.stderr.contains("item.not_found"),
                "{name}: restored-{i} was half-imported"
            );
        }
    };

    // One byte of one record's signed content flipped.
    let (at, tampered) = flip_title_byte(&held);
    let mut list: Vec<String> = fresh[..2].to_vec();
    list.extend(held.iter().cloned());
    list[2 + at] = tampered;
    list.push(fresh[2].clone());
    refused(
        "content-flipped",
        list,
        2 + at,
        &["signature.invalid", "signature does not verify"],
    );

    // One byte of one record's signature flipped.
    let mut list: Vec<String> = fresh.clone();
    let mut bytes = kim_protocol::bytes::from_hex(&held[1]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    list.insert(2, kim_protocol::bytes::to_hex(&bytes));
    refused("signature-flipped", list, 2, &["signature.invalid"]);

    // A record cut short.
    let mut list: Vec<String> = fresh.clone();
    list.insert(1, held[0][..held[0].len() - 10].to_string());
    refused("truncated", list, 1, &["cannot be decoded"]);

    // Not hex at all.
    let mut list: Vec<String> = fresh.clone();
    list.push("zz-not-hex".into());
    refused("not-hex", list, 3, &["not hex"]);

    // Another federation's bundle.
    let mut other = with_records(&bundle, &fresh);
    other["federation"] = json!("00".repeat(32));
    let file = write_json(&tmp.path().join("other.json"), &other);
    let out = node.kim(&["import", &file]).fails();
    assert!(out.stderr.contains("another federation"), "{}", out.stderr);
    assert_eq!(digest(&node), digest_before);

    // Not a bundle.
    let file = write_json(&tmp.path().join("junk.json"), &json!({ "records": 5 }));
    let out = node.kim(&["import", &file]).fails();
    assert!(out.stderr.contains("HTTP 422"), "{}", out.stderr);
    assert_eq!(digest(&node), digest_before);

    // Control: the fresh records alone are valid and import.
    let file = write_json(
        &tmp.path().join("fresh.json"),
        &with_records(&bundle, &fresh),
    );
    let out = node.kim(&["import", &file]).ok();
    assert!(
        out.stdout.starts_with("imported: 3 stored, 0 already held"),
        "{}",
        out.stdout
    );
    assert_ne!(digest(&node), digest_before);
    let shown = node
        .kim(&["knowledge", "show", "restored-1", "--json"])
        .ok()
        .json();
    assert_eq!(shown["revision"], 1);
    assert!(node.stop_with("TERM").success());
}

#[test]
fn a_validly_signed_record_the_node_refuses_does_not_half_import() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = populated_node(tmp.path());
    let path = tmp.path().join("backup.json");
    node.kim(&["export", "--output", path.to_str().unwrap()])
        .ok();
    let bundle = read_json(&path);
    let (key, federation) = identity(&node);
    let fresh = knowledge_record(&key, federation, "restored-0", 500);
    // Correctly signed and valid, but by a key that is no member of the federation.
    let stranger = SigningKey::from_bytes(&[42; 32]);
    let foreign = knowledge_record(&stranger, federation, "foreign", 501);
    let digest_before = digest(&node);
    let file = write_json(
        &tmp.path().join("stranger.json"),
        &with_records(&bundle, &[fresh, foreign]),
    );
    let out = node.kim(&["import", &file]).fails();
    assert!(out.stderr.contains("HTTP 422"), "{}", out.stderr);
    let half = node.kim(&["knowledge", "show", "restored-0"]);
    assert!(
        !half.status.success(),
        "restored-0 was imported from a refused bundle: {}",
        half.stdout
    );
    assert_eq!(digest(&node), digest_before, "the state changed");
    assert!(
        out.stderr.contains("nothing was imported") && out.stderr.contains("record 1"),
        "position and reason: {}",
        out.stderr
    );
    assert!(node.stop_with("TERM").success());
}

#[test]
fn a_large_bundle_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());
    node.start();
    let (key, federation) = identity(&node);
    let path = tmp.path().join("empty.json");
    node.kim(&["export", "--output", path.to_str().unwrap()])
        .ok();
    let empty = read_json(&path);
    // A region with a few hundred items: restored in small pieces, then exported whole.
    let all: Vec<String> = (0..400)
        .map(|i| knowledge_record(&key, federation, &format!("item-{i}"), i))
        .collect();
    for (n, piece) in all.chunks(50).enumerate() {
        let file = write_json(
            &tmp.path().join(format!("piece-{n}.json")),
            &with_records(&empty, piece),
        );
        node.kim(&["import", &file]).ok();
    }
    let path = tmp.path().join("full.json");
    node.kim(&["export", "--output", path.to_str().unwrap()])
        .ok();
    let size = std::fs::metadata(&path).unwrap().len();
    let held = records(&read_json(&path)).len();
    assert!(held >= 400, "{held} records");
    let before = digest(&node);
    let out = node.kim(&["import", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the node cannot take back its own export of {held} records ({size} bytes): {}",
        out.stderr
    );
    assert_eq!(digest(&node), before);
    assert!(node.stop_with("TERM").success());
}

/// `kim store compact` on a stopped node: refused while the node runs, and afterwards the node
/// starts on the rewritten store with every record, item, draft and private field it held.
#[test]
fn compacting_a_stopped_nodes_store_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = populated_node(tmp.path());
    let before = status(&node);
    let export = |node: &Node| {
        let mut bundle = node.kim(&["export", "--local"]).ok().json();
        bundle["exported_at_ms"] = Value::Null;
        bundle
    };
    let exported = export(&node);
    let drafts = node.kim(&["knowledge", "drafts", "--json"]).ok().json();
    let offer = node
        .kim(&["offer", "show", "offer-0", "--json"])
        .ok()
        .json();

    // While the node runs, its store is locked: a clear refusal, nothing changed.
    let out = node.kim(&["store", "compact"]).fails();
    assert!(
        out.stderr.contains("locked") && out.stderr.contains("stop the other kim node"),
        "{}",
        out.stderr
    );

    assert!(node.stop_with("TERM").success());
    let out = node.kim(&["store", "compact"]).ok();
    assert!(out.stdout.contains("store compacted:"), "{}", out.stdout);
    let names: Vec<String> = std::fs::read_dir(&node.data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("store"))
        .collect();
    assert_eq!(names, ["store"], "nothing left beside the store");

    node.start();
    let after = status(&node);
    assert_eq!(after["state_digest"], before["state_digest"]);
    assert_eq!(after["records_by_kind"], before["records_by_kind"]);
    assert_eq!(export(&node), exported);
    assert_eq!(
        node.kim(&["knowledge", "drafts", "--json"]).ok().json(),
        drafts
    );
    assert_eq!(
        node.kim(&["offer", "show", "offer-0", "--json"])
            .ok()
            .json(),
        offer
    );
}
