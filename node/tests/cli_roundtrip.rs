//! The `kim` binary driven the way an operator works: `init`, `run` as a child process, every
//! item subcommand through the CLI, clear errors when the node is down or the token is wrong,
//! and clean shutdown on SIGTERM and SIGINT with everything kept across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use kim_protocol::envelope::Kind;
use kim_protocol::samples;
use kim_protocol::types::Date;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};

mod support {
    pub mod binary;
}

use support::binary::*;

/// The CLI subcommand, the API collection and the record kind of each item type.
const TYPES: [(&str, &str, Kind); 4] = [
    ("org", "organisations", Kind::Organisation),
    ("project", "projects", Kind::Project),
    ("offer", "offers", Kind::Cooperation),
    ("knowledge", "knowledge", Kind::Knowledge),
];

/// A valid public body of a kind, from a seed.
fn sample_body(kind: Kind, seed: u64) -> Value {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let created = Date {
        year: 2026,
        month: 1,
        day: 15,
    };
    match kind {
        Kind::Organisation => serde_json::to_value(samples::organisation(&mut rng)),
        Kind::Project => serde_json::to_value(samples::project(&mut rng)),
        // The sample lists a made-up file; a node publishes only attachments it holds.
        Kind::Knowledge => serde_json::to_value(kim_protocol::types::Knowledge {
            attachments: Vec::new(),
            ..samples::knowledge(&mut rng)
        }),
        _ => {
            let mut offer = samples::cooperation(&mut rng, created);
            // No deadline: it could lie beyond the offer's default validity.
            offer.eoi_deadline = None;
            serde_json::to_value(offer)
        }
    }
    .expect("body to JSON")
}

/// The field the CLI's tables show as an item's title.
fn title_field(kind: Kind) -> &'static str {
    if kind == Kind::Organisation {
        "name"
    } else {
        "title"
    }
}

fn write_json(path: &Path, value: &Value) -> String {
    std::fs::write(path, serde_json::to_vec_pretty(value).expect("JSON")).expect("write");
    path.display().to_string()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_creates_secrets_0600_and_a_documented_config_and_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::init(tmp.path());
    let data = &node.data;

    assert_eq!(mode(&data.join("region.key")), 0o600, "region.key mode");
    assert_eq!(mode(&data.join("api-token")), 0o600, "api-token mode");
    assert_eq!(std::fs::read(data.join("region.key")).unwrap().len(), 32);
    let token = std::fs::read_to_string(data.join("api-token")).unwrap();
    assert!(token.trim().len() >= 32, "token too short: {token:?}");

    // Every option the node understands is written, each under a comment saying what it does.
    let text = std::fs::read_to_string(data.join("config.toml")).unwrap();
    let config = kim_node::config::Config::load(data).expect("config.toml loads");
    assert_eq!(config.api_listen.to_string(), "127.0.0.1:0");
    assert_eq!(config.region_name, "Steiermark");
    assert_eq!(config.nuts, "AT22");
    assert_eq!(config.country, "AT");
    let table = toml::Value::try_from(&config).unwrap();
    let table = table.as_table().unwrap();
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for option in table.keys() {
        assert!(
            parsed.contains_key(option),
            "config.toml does not set {option}:\n{text}"
        );
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("{option} =")))
            .unwrap_or_else(|| panic!("no line for {option}"));
        let documented = lines[..at]
            .iter()
            .rev()
            .take_while(|l| !l.trim().is_empty())
            .any(|l| l.starts_with('#'));
        assert!(documented, "{option} has no comment above it:\n{text}");
    }

    // A second init on the same directory fails clearly and changes nothing.
    let before: Vec<Vec<u8>> = ["region.key", "api-token", "config.toml"]
        .iter()
        .map(|f| std::fs::read(data.join(f)).unwrap())
        .collect();
    let again = kim(
        data,
        &["init", "--region-name", "Kärnten", "--nuts", "AT21"],
    )
    .fails();
    assert!(
        again.stderr.contains("already holds a KIM node")
            && again.stderr.contains(&data.display().to_string()),
        "{}",
        again.stderr
    );
    assert!(
        !again.stderr.contains("Stack backtrace"),
        "an operator error should not print a backtrace:\n{}",
        again.stderr
    );
    let after: Vec<Vec<u8>> = ["region.key", "api-token", "config.toml"]
        .iter()
        .map(|f| std::fs::read(data.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "a refused init changed the data directory");

    // A directory holding only a token is not overwritten either, and gets no key.
    let token_only = tmp.path().join("token-only");
    std::fs::create_dir(&token_only).unwrap();
    std::fs::write(token_only.join("api-token"), "x".repeat(64)).unwrap();
    let out = kim(
        &token_only,
        &["init", "--region-name", "Steiermark", "--nuts", "AT22"],
    )
    .fails();
    assert!(
        out.stderr.contains("already holds a KIM node"),
        "{}",
        out.stderr
    );
    assert!(!token_only.join("region.key").exists());

    // A bad NUTS code fails clearly and creates nothing.
    let bad_dir = tmp.path().join("bad");
    let bad = kim(
        &bad_dir,
        &["init", "--region-name", "Nowhere", "--nuts", "XX99"],
    )
    .fails();
    assert!(
        bad.stderr.contains("\"XX99\" is not a NUTS 2024 code"),
        "{}",
        bad.stderr
    );
    assert!(
        !bad_dir.exists(),
        "a refused init left {}",
        bad_dir.display()
    );

    // A bad language code, likewise.
    let bad = kim(
        &bad_dir,
        &[
            "init",
            "--region-name",
            "Steiermark",
            "--nuts",
            "AT22",
            "--language",
            "german",
        ],
    )
    .fails();
    assert!(
        bad.stderr
            .contains("\"german\" is not an ISO 639-1 language code"),
        "{}",
        bad.stderr
    );
    assert!(!bad_dir.exists());

    // Whatever the operator typed is written as valid TOML and read back unchanged.
    let odd_dir = tmp.path().join("odd");
    let name = "Steiermark \"Grüne Mark\" \\ Süd";
    let p2p = "/dns4/node.example/tcp/7651";
    kim(
        &odd_dir,
        &[
            "init",
            "--region-name",
            name,
            "--nuts",
            "AT22",
            "--p2p-listen",
            p2p,
        ],
    )
    .ok();
    let config = kim_node::config::Config::load(&odd_dir).expect("config.toml of an odd name");
    assert_eq!(config.region_name, name);
    assert_eq!(config.p2p_listen, [p2p]);
    // A listen address that is not a multiaddr is refused at init, naming it.
    let out = kim(
        &tmp.path().join("bad-p2p"),
        &[
            "init",
            "--region-name",
            "Steiermark",
            "--nuts",
            "AT22",
            "--p2p-listen",
            "tcp:7651",
        ],
    )
    .fails();
    assert!(out.stderr.contains("tcp:7651"), "{}", out.stderr);

    // KIM_* variables mirror the flags.
    let env_dir = tmp.path().join("from-env");
    let out = command()
        .env("KIM_DATA_DIR", &env_dir)
        .env("KIM_REGION_NAME", "Kärnten")
        .env("KIM_NUTS", "AT21")
        .env("KIM_API_LISTEN", "127.0.0.1:7999")
        .arg("init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = kim_node::config::Config::load(&env_dir).unwrap();
    assert_eq!(
        (config.region_name.as_str(), config.nuts.as_str()),
        ("Kärnten", "AT21")
    );
    assert_eq!(config.api_listen.port(), 7999);
}

#[test]
fn every_kind_round_trips_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());
    node.start();
    let files = tmp.path();

    let status = node.kim(&["status", "--json"]).ok().json();
    let region = status["region"].as_str().unwrap().to_string();
    let digest_before = status["state_digest"].as_str().unwrap().to_string();

    for (i, (cmd, collection, kind)) in TYPES.into_iter().enumerate() {
        let seed = 100 + i as u64;
        let key = format!("{cmd}-roundtrip");
        let body = sample_body(kind, seed);
        let title = body[title_field(kind)].as_str().unwrap().to_string();
        let file = write_json(
            &files.join(format!("{cmd}.json")),
            &json!({
                "key": key,
                "body": body,
                "private": { "contact_person": "Anna Huber", "note": format!("note {cmd}") },
            }),
        );

        // publish
        let out = node.kim(&[cmd, "publish", "--file", &file]).ok();
        assert!(
            out.stdout
                .starts_with(&format!("published {key} revision 1 (")),
            "{cmd} publish: {}",
            out.stdout
        );
        let id1 = out
            .stdout
            .trim()
            .rsplit('(')
            .next()
            .unwrap()
            .trim_end_matches(')');
        assert_eq!(id1.len(), 64, "record id in {:?}", out.stdout);

        // publishing the same key again is refused
        let out = node.kim(&[cmd, "publish", "--file", &file]).fails();
        assert!(
            out.stderr.contains("item.exists") && out.stderr.contains("HTTP 409"),
            "{cmd}: {}",
            out.stderr
        );

        // show (table and JSON)
        let out = node.kim(&[cmd, "show", &key]).ok();
        for expected in [
            format!("key:      {key}"),
            format!("id:       {id1}"),
            format!("region:   {region}"),
            format!("kind:     {}", kind.as_str()),
            "revision: 1".to_string(),
            "status:   live".to_string(),
            format!("title:    {title}"),
            "private (this node only)".to_string(),
            format!("note {cmd}"),
        ] {
            assert!(
                out.stdout.contains(&expected),
                "{cmd} show lacks {expected:?}:\n{}",
                out.stdout
            );
        }
        let shown = node.kim(&[cmd, "show", &key, "--json"]).ok().json();
        assert_eq!(shown["body"], body, "{cmd}: body changed on the way");
        assert_eq!(shown["id"], id1);
        assert_eq!(shown["revision"], 1);
        assert_eq!(shown["kind"], kind.as_str());
        assert_eq!(shown["private"]["contact_person"], "Anna Huber");
        let shown_region = node
            .kim(&[cmd, "show", &key, "--region", &region, "--json"])
            .ok()
            .json();
        assert_eq!(shown_region["id"], id1);

        // list (table and JSON)
        let out = node.kim(&[cmd, "list"]).ok();
        let header = out.stdout.lines().next().unwrap_or("");
        assert!(
            header.starts_with("KEY") && header.contains("TITLE"),
            "{header}"
        );
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&key))
            .unwrap_or_else(|| panic!("{cmd} list lacks {key}:\n{}", out.stdout));
        assert!(
            row.contains(" live ") && row.contains(&title[..20]),
            "{row}"
        );
        let listed = node.kim(&[cmd, "list", "--json"]).ok().json();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 1, "{cmd} list --json: {listed:?}");
        assert_eq!(listed[0]["key"], key.as_str());
        let none = node
            .kim(&[cmd, "list", "--text", "no-such-text-anywhere", "--json"])
            .ok()
            .json();
        assert_eq!(none, json!([]));

        // revise
        let mut revised = body.clone();
        let new_title = format!("{title} (revised)");
        revised[title_field(kind)] = json!(new_title);
        let file2 = write_json(
            &files.join(format!("{cmd}-2.json")),
            &json!({ "body": revised }),
        );
        let out = node.kim(&[cmd, "revise", &key, "--file", &file2]).ok();
        assert_eq!(out.stdout.trim(), format!("revised {key} to revision 2"));
        let shown = node.kim(&[cmd, "show", &key, "--json"]).ok().json();
        assert_eq!(shown["revision"], 2);
        assert_eq!(shown["body"][title_field(kind)], new_title.as_str());
        assert_ne!(shown["id"], id1);
        let out = node.kim(&[cmd, "list", "--text", "(revised)"]).ok();
        assert!(out.stdout.contains(&key), "{}", out.stdout);

        // withdraw
        let out = node
            .kim(&[cmd, "withdraw", &key, "--reason", "project ended"])
            .ok();
        assert_eq!(out.stdout.trim(), format!("withdrew {key} (revision 3)"));
        let out = node.kim(&[cmd, "show", &key]).ok();
        assert!(
            out.stdout.contains("status:   withdrawn") && out.stdout.contains("revision: 3"),
            "{}",
            out.stdout
        );
        assert!(
            !out.stdout.contains(&new_title),
            "body kept after withdrawal"
        );
        let shown = node.kim(&[cmd, "show", &key, "--json"]).ok().json();
        assert_eq!(shown["status"], "withdrawn");
        assert!(shown["body"].is_null());
        let live = node.kim(&[cmd, "list", "--json"]).ok().json();
        assert_eq!(live, json!([]), "{cmd}: withdrawn item still listed");
        let withdrawn = node
            .kim(&[cmd, "list", "--status", "withdrawn", "--json"])
            .ok()
            .json();
        assert_eq!(withdrawn[0]["key"], key.as_str());
        let out = node.kim(&[cmd, "withdraw", &key]).fails();
        assert!(out.stderr.contains("item.withdrawn"), "{}", out.stderr);

        // drafts: saved locally, listed, published, gone
        let draft_key = format!("{cmd}-draft");
        let draft_body = sample_body(kind, seed + 50);
        let draft_title = draft_body[title_field(kind)].as_str().unwrap().to_string();
        let file3 = write_json(
            &files.join(format!("{cmd}-draft.json")),
            &json!({ "body": draft_body }),
        );
        let out = node.kim(&[cmd, "draft", &draft_key, "--file", &file3]).ok();
        assert_eq!(
            out.stdout.trim(),
            format!("draft {draft_key} saved (local only)")
        );
        let out = node.kim(&[cmd, "drafts"]).ok();
        let row = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&draft_key))
            .unwrap_or_else(|| panic!("{cmd} drafts lacks {draft_key}:\n{}", out.stdout));
        assert!(row.contains(&draft_title[..20]), "{row}");
        let drafts = node.kim(&[cmd, "drafts", "--json"]).ok().json();
        assert_eq!(drafts[0]["key"], draft_key.as_str());
        assert_eq!(drafts[0]["draft"]["body"], draft_body);
        let out = node.kim(&[cmd, "show", &draft_key]).fails();
        assert!(
            out.stderr.contains("item.not_found"),
            "a draft is visible as an item: {}",
            out.stderr
        );
        let out = node.kim(&[cmd, "publish-draft", &draft_key]).ok();
        assert_eq!(
            out.stdout.trim(),
            format!("published draft {draft_key} as revision 1")
        );
        assert_eq!(node.kim(&[cmd, "drafts", "--json"]).ok().json(), json!([]));
        let shown = node.kim(&[cmd, "show", &draft_key, "--json"]).ok().json();
        assert_eq!(shown["body"], draft_body);
        let out = node.kim(&[cmd, "publish-draft", &draft_key]).fails();
        assert!(out.stderr.contains("draft.not_found"), "{}", out.stderr);

        // a draft that is deleted never appears
        let out = node.kim(&[cmd, "draft", "scrap", "--file", &file3]).ok();
        assert!(out.status.success());
        let out = node.kim(&[cmd, "delete-draft", "scrap"]).ok();
        assert_eq!(out.stdout.trim(), "draft scrap deleted");
        assert_eq!(node.kim(&[cmd, "drafts", "--json"]).ok().json(), json!([]));

        // a body that does not match the schema is refused and nothing is stored
        let bad = write_json(
            &files.join(format!("{cmd}-bad.json")),
            &json!({ "key": "bad-one", "body": { "title": 5 } }),
        );
        let out = node.kim(&[cmd, "publish", "--file", &bad]).fails();
        assert!(
            out.stderr.contains("request.invalid_body") && out.stderr.contains("HTTP 422"),
            "{}",
            out.stderr
        );
        let out = node.kim(&[cmd, "show", "bad-one"]).fails();
        assert!(out.stderr.contains("item.not_found"), "{}", out.stderr);
        let _ = collection;
    }

    // status: table and JSON agree on the counts
    let status = node.kim(&["status", "--json"]).ok().json();
    for (_, _, kind) in TYPES {
        assert_eq!(
            status["records"][kind.as_str()],
            1,
            "live {kind} items: {status}"
        );
    }
    assert_eq!(status["region_name"], "Steiermark");
    assert_eq!(status["nuts"], "AT22");
    assert_eq!(status["members"].as_array().unwrap().len(), 1);
    assert_ne!(status["state_digest"], digest_before.as_str());
    let out = node.kim(&["status"]).ok();
    for expected in [
        "region:      Steiermark (AT22)".to_string(),
        format!("region id:   {region}"),
        format!("federation:  {}", status["federation"].as_str().unwrap()),
        "members:     1".to_string(),
        "  organisation   1".to_string(),
        "  cooperation    1".to_string(),
        "  project        1".to_string(),
        "  knowledge      1".to_string(),
    ] {
        assert!(
            out.stdout.contains(&expected),
            "status lacks {expected:?}:\n{}",
            out.stdout
        );
    }

    // audit: every change, with its result, in order
    let audit = node
        .kim(&["audit", "--json", "--limit", "1000"])
        .ok()
        .json();
    let entries = audit.as_array().unwrap();
    let find = |action: &str, target: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["target"] == target)
            .unwrap_or_else(|| panic!("no audit entry {action} {target} in {audit:#}"))
    };
    for (cmd, collection, _) in TYPES {
        let target = format!("{collection}/{cmd}-roundtrip");
        for action in ["publish", "revise", "withdraw"] {
            let entry = find(action, &target);
            assert!(
                entry["result"].as_str().unwrap().starts_with("ok "),
                "{entry}"
            );
            assert!(
                entry["actor"].as_str().unwrap().starts_with("token:"),
                "{entry}"
            );
        }
        let draft = format!("drafts/{collection}/{cmd}-draft");
        assert_eq!(find("draft.save", &draft)["result"], "ok");
        assert!(
            find("draft.publish", &draft)["result"]
                .as_str()
                .unwrap()
                .starts_with("ok ")
        );
        assert_eq!(
            find("draft.delete", &format!("drafts/{collection}/scrap"))["result"],
            "ok"
        );
        assert_eq!(
            find("publish", &format!("{collection}/bad-one"))["result"],
            "request.invalid_body"
        );
    }
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "audit out of order");
    let out = node.kim(&["audit"]).ok();
    let header = out.stdout.lines().next().unwrap_or("");
    assert!(
        header.contains("SEQ") && header.contains("ACTION") && header.contains("RESULT"),
        "{header}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("withdraw") && l.contains("offers/offer-roundtrip")),
        "{}",
        out.stdout
    );
    let page = node
        .kim(&[
            "audit",
            "--json",
            "--after",
            &seqs[2].to_string(),
            "--limit",
            "2",
        ])
        .ok()
        .json();
    let page: Vec<u64> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page, seqs[3..5].to_vec(), "audit --after/--limit");

    assert!(node.stop_with("TERM").success());
}

#[test]
fn list_follows_cursors_with_all() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());
    node.start();
    for i in 0..5u64 {
        let file = write_json(
            &tmp.path().join(format!("k{i}.json")),
            &json!({ "key": format!("guide-{i}"), "body": sample_body(Kind::Knowledge, i) }),
        );
        node.kim(&["knowledge", "publish", "--file", &file]).ok();
    }
    let page = node
        .kim(&["knowledge", "list", "--limit", "2", "--json"])
        .ok()
        .json();
    assert_eq!(page.as_array().unwrap().len(), 2);
    let all = node
        .kim(&["knowledge", "list", "--limit", "2", "--all", "--json"])
        .ok()
        .json();
    let mut keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["guide-0", "guide-1", "guide-2", "guide-3", "guide-4"]
    );
    assert!(node.stop_with("TERM").success());
}

#[test]
fn clear_messages_when_the_node_is_down_or_the_token_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());

    // Not running.
    for args in [
        vec!["status"],
        vec!["org", "list"],
        vec!["audit"],
        vec!["export", "--output", "/dev/null"],
    ] {
        let out = node.kim(&args).fails();
        assert!(
            out.stderr.contains("the node is not running")
                && out.stderr.contains("api-address")
                && out.stderr.contains("kim --data-dir DIR run"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("Stack backtrace"), "{}", out.stderr);
    }

    // Not a data directory at all.
    let out = kim(&tmp.path().join("nothing-here"), &["status"]).fails();
    assert!(
        out.stderr.contains("config.toml") && out.stderr.contains("init"),
        "{}",
        out.stderr
    );

    node.start();
    let wrong = tmp.path().join("wrong-token");
    std::fs::write(&wrong, "0".repeat(64)).unwrap();
    let wrong = wrong.display().to_string();
    for args in [
        vec!["status", "--token-file", &wrong],
        vec!["project", "list", "--token-file", &wrong],
        vec!["audit", "--token-file", &wrong],
    ] {
        let out = node.kim(&args).fails();
        assert!(
            out.stderr.contains("refused the token"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // The right token through --token-file and the API address through --api work.
    let token = node.data.join("api-token").display().to_string();
    let api = format!("http://127.0.0.1:{}/", node.port);
    let elsewhere = tmp.path().join("elsewhere");
    let out = kim(
        &elsewhere,
        &["status", "--api", &api, "--token-file", &token, "--json"],
    )
    .ok();
    assert_eq!(out.json()["region_name"], "Steiermark");
    // A missing token file is named.
    let out = node
        .kim(&["status", "--token-file", "/nonexistent/token"])
        .fails();
    assert!(
        out.stderr
            .contains("cannot read the API token from /nonexistent/token"),
        "{}",
        out.stderr
    );
    // A second node on the same data directory but another port: the store is locked.
    let out = command()
        .env("KIM_API_LISTEN", "127.0.0.1:0")
        .arg("--data-dir")
        .arg(&node.data)
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("locked by another process")
            && stderr.contains(&node.data.display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A second node on the same data directory and port is refused clearly.
    let out = node.kim(&["run"]).fails();
    assert!(
        out.stderr.contains("another node running") || out.stderr.contains("lock"),
        "{}",
        out.stderr
    );
    assert!(node.stop_with("TERM").success());
}

#[test]
fn a_killed_node_is_reported_as_not_running_and_gets_no_token() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());
    node.start();
    node.kim(&["status"]).ok();
    let pid = node.child.as_ref().unwrap().id();
    node.stop_with("KILL");
    // The killed node could not remove its address file; the port in it may be another
    // program's by now, so the CLI does not send the token there.
    assert!(node.data.join("api-address").exists());
    let out = node.kim(&["status"]).fails();
    assert!(
        out.stderr
            .contains(&format!("was left by process {pid}, which has ended"))
            && out.stderr.contains("kim --data-dir DIR run"),
        "{}",
        out.stderr
    );
    // A restart replaces it.
    node.start();
    node.kim(&["status"]).ok();
    assert!(node.stop_with("TERM").success());
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_a_restart_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());
    let mut expected: Vec<(&str, String, Value)> = Vec::new();
    for (round, signal) in ["TERM", "INT"].into_iter().enumerate() {
        node.start();
        // What was published before the last stop is still there.
        for (cmd, key, id) in &expected {
            let shown = node.kim(&[cmd, "show", key.as_str(), "--json"]).ok().json();
            assert_eq!(&shown["id"], id, "{cmd} {key} after restart");
        }
        for (i, (cmd, _, kind)) in TYPES.into_iter().enumerate() {
            let key = format!("{cmd}-{round}");
            let file = write_json(
                &tmp.path().join(format!("{key}.json")),
                &json!({ "key": key, "body": sample_body(kind, (round * 10 + i) as u64) }),
            );
            let out = node.kim(&[cmd, "publish", "--file", &file, "--json"]).ok();
            expected.push((cmd, key, out.json()["id"].clone()));
        }
        let status = node.stop_with(signal);
        assert!(status.success(), "exit after SIG{signal}: {status}");
        let log = node.log();
        let stopped = log.matches("node stopped; store flushed").count();
        assert_eq!(stopped, round + 1, "log after SIG{signal}:\n{log}");
        assert!(
            !node.data.join("api-address").exists(),
            "a stopped node leaves no api-address behind"
        );
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in a log file:\n{log}"
        );
    }
    node.start();
    for (cmd, key, id) in &expected {
        let shown = node.kim(&[cmd, "show", key.as_str(), "--json"]).ok().json();
        assert_eq!(&shown["id"], id, "{cmd} {key} after restart");
    }
    let status = node.kim(&["status", "--json"]).ok().json();
    for (_, _, kind) in TYPES {
        assert_eq!(status["records"][kind.as_str()], 2, "{status}");
    }
    assert!(node.stop_with("TERM").success());
}
