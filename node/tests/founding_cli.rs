//! Founding a federation of three regions with the real `kim` binary, the way operators do it:
//! three `kim init` nodes, `federation profile` → `create` → `sign` ×3 → `adopt` ×3, then
//! `kim run` on each; every node reports the same federation and three members, and an offer
//! published on one reaches the others, also after `kim keys rotate`. Along the way, the
//! refusals: an altered card, an edited card, duplicate founders, an impossible threshold, a
//! signer who is not a founder, a missing, a duplicated and two kinds of tampered consent, and
//! adopting on a node that is not fresh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

mod support {
    pub mod binary;
}

use support::binary::*;

/// Runs a `kim` command that needs no data directory (a throwaway one is named).
fn kim_anywhere(root: &Path, args: &[&str]) -> Out {
    kim(&root.join("no-data-dir"), args)
}

/// The federation a data directory's config names.
fn config_federation(node: &Node) -> String {
    kim_node::config::Config::load_file(&node.data)
        .expect("config")
        .federation
}

/// Flips one hex digit in the middle of a hex string field.
fn flip_hex(value: &mut Value) {
    let text = value.as_str().expect("hex string").to_string();
    let at = text.len() / 2;
    let digit = text.as_bytes()[at];
    let flipped = if digit == b'0' { '1' } else { '0' };
    *value = json!(format!("{}{}{}", &text[..at], flipped, &text[at + 1..]));
}

#[test]
fn three_regions_found_a_federation_with_files_and_replicate() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut nodes = [
        init_region(root, "steiermark", "Steiermark", "AT22", "de"),
        init_region(root, "vzhodna", "Vzhodna Slovenija", "SI03", "sl"),
        init_region(root, "fvg", "Friuli-Venezia Giulia", "ITH4", "it"),
    ];
    let names = ["Steiermark", "Vzhodna Slovenija", "Friuli-Venezia Giulia"];
    let first_federations: Vec<String> = nodes.iter().map(config_federation).collect();

    // 1. Founder cards.
    let cards: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .zip(&nodes)
        .map(|(tag, node)| {
            let path = root.join(format!("card-{tag}.json"));
            node.kim(&["federation", "profile", "--out", &arg(&path)])
                .ok();
            path
        })
        .collect();
    let card_a = read_json(&cards[0]);
    assert_eq!(card_a["card"]["name"], json!("Steiermark"));
    assert_eq!(card_a["card"]["nuts"], json!("AT22"));
    assert_eq!(card_a["card"]["languages"], json!(["de"]));
    assert_eq!(
        card_a["card"]["agency"],
        json!("Development agency of Steiermark")
    );
    assert!(
        card_a["card"]["addrs"][0]
            .as_str()
            .is_some_and(|a| a.starts_with("/ip4/127.0.0.1/tcp/")),
        "{card_a}"
    );
    let regions: Vec<String> = cards
        .iter()
        .map(|p| read_json(p)["card"]["region"].as_str().unwrap().to_string())
        .collect();
    // Without --out the card goes to standard output.
    let printed = nodes[1].kim(&["federation", "profile"]).ok().json();
    assert_eq!(printed["card"]["region"], json!(regions[1]));

    // 2. Refusals of create: an altered signature, an edited readable copy, a founder given
    //    twice, a threshold larger than the founders.
    let forged = root.join("card-forged.json");
    let mut value = card_a.clone();
    flip_hex(&mut value["signature"]);
    write_json(&forged, &value);
    let create = |cards: &[&Path], threshold: &str, out: &Path| -> Out {
        let mut args = vec![
            "federation".to_string(),
            "create".into(),
            "--name".into(),
            "Alps-Adriatic Founding Test".into(),
            "--threshold".into(),
            threshold.into(),
            "--out".into(),
            arg(out),
        ];
        for card in cards {
            args.push("--founder".into());
            args.push(arg(card));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kim_anywhere(root, &args)
    };
    let draft = root.join("draft.json");
    let out = create(&[&forged, &cards[1], &cards[2]], "2", &draft).fails();
    assert!(
        out.stderr.contains("does not verify") && out.stderr.contains("Steiermark"),
        "{}",
        out.stderr
    );
    let edited = root.join("card-edited.json");
    let mut value = card_a.clone();
    value["card"]["name"] = json!("Kärnten");
    write_json(&edited, &value);
    let out = create(&[&edited, &cards[1], &cards[2]], "2", &draft).fails();
    assert!(out.stderr.contains("readable copy"), "{}", out.stderr);
    let out = create(&[&cards[0], &cards[1], &cards[0]], "2", &draft).fails();
    assert!(out.stderr.contains("twice"), "{}", out.stderr);
    let out = create(&[&cards[0], &cards[1], &cards[2]], "4", &draft).fails();
    assert!(out.stderr.contains("larger than"), "{}", out.stderr);
    assert!(!draft.exists(), "a refused create wrote a draft");

    // 3. The draft.
    let out = create(&[&cards[0], &cards[1], &cards[2]], "2", &draft).ok();
    let draft_value = read_json(&draft);
    let federation = draft_value["federation"].as_str().unwrap().to_string();
    assert!(out.stdout.contains(&federation), "{}", out.stdout);
    assert_eq!(draft_value["charter"]["admission"], json!({"fixed": 2}));
    assert_eq!(draft_value["charter"]["removal"], json!("majority"));
    assert_eq!(
        draft_value["charter"]["founders"].as_array().unwrap().len(),
        3
    );

    // 4. Every founder signs; the signer sees what it signs.
    let consents: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .zip(&nodes)
        .enumerate()
        .map(|(i, (tag, node))| {
            let path = root.join(format!("consent-{tag}.json"));
            let out = node
                .kim(&["federation", "sign", &arg(&draft), "--out", &arg(&path)])
                .ok();
            for shown in [
                federation.as_str(),
                "Alps-Adriatic Founding Test",
                "2 (fixed)",
                names[0],
                names[1],
                names[2],
            ] {
                assert!(
                    out.stdout.contains(shown),
                    "sign {i} does not show {shown}: {}",
                    out.stdout
                );
            }
            path
        })
        .collect();
    // A region that is not a founder cannot sign.
    let mut outsider = init_region(root, "kaernten", "Kärnten", "AT21", "de");
    let out = outsider
        .kim(&[
            "federation",
            "sign",
            &arg(&draft),
            "--out",
            &arg(&root.join("x.json")),
        ])
        .fails();
    assert!(out.stderr.contains("not a founder"), "{}", out.stderr);

    // 5. Refusals of adopt; each leaves the node in its old federation.
    let adopt = |node: &Node, consents: &[&Path]| -> Out {
        let mut args = vec!["federation".to_string(), "adopt".into(), arg(&draft)];
        args.extend(consents.iter().map(|c| arg(c)));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node.kim(&args)
    };
    let out = adopt(&nodes[0], &[&consents[0], &consents[1]]).fails();
    assert!(
        out.stderr.contains("no consent from") && out.stderr.contains(names[2]),
        "{}",
        out.stderr
    );
    let out = adopt(&nodes[0], &[&consents[0], &consents[1], &consents[1]]).fails();
    assert!(out.stderr.contains("more than once"), "{}", out.stderr);
    let tampered_profile = root.join("consent-b-profile.json");
    let mut value = read_json(&consents[1]);
    flip_hex(&mut value["profile_record"]);
    write_json(&tampered_profile, &value);
    let out = adopt(&nodes[0], &[&consents[0], &tampered_profile, &consents[2]]).fails();
    assert!(
        out.stderr
            .contains("profile of Vzhodna Slovenija is refused"),
        "{}",
        out.stderr
    );
    let tampered_signature = root.join("consent-b-signature.json");
    let mut value = read_json(&consents[1]);
    flip_hex(&mut value["charter_signature"]["signature"]);
    write_json(&tampered_signature, &value);
    let out = adopt(
        &nodes[0],
        &[&consents[0], &tampered_signature, &consents[2]],
    )
    .fails();
    assert!(
        out.stderr
            .contains("charter signature of Vzhodna Slovenija does not verify"),
        "{}",
        out.stderr
    );
    assert_eq!(config_federation(&nodes[0]), first_federations[0]);

    // 6. A node that already published something is not fresh: it cannot found.
    outsider.start();
    let offer_file = root.join("offer.json");
    write_json(&offer_file, &offer_input("outsider-offer", 1));
    outsider
        .kim(&["offer", "publish", "--file", &arg(&offer_file)])
        .ok();
    outsider.stop_with("TERM");
    let outsider_card = root.join("card-x.json");
    outsider
        .kim(&["federation", "profile", "--out", &arg(&outsider_card)])
        .ok();
    let outsider_draft = root.join("draft-x.json");
    kim_anywhere(
        root,
        &[
            "federation",
            "create",
            "--name",
            "Kärnten alone",
            "--founder",
            &arg(&outsider_card),
            "--threshold",
            "majority",
            "--out",
            &arg(&outsider_draft),
        ],
    )
    .ok();
    let outsider_consent = root.join("consent-x.json");
    outsider
        .kim(&[
            "federation",
            "sign",
            &arg(&outsider_draft),
            "--out",
            &arg(&outsider_consent),
        ])
        .ok();
    let out = outsider
        .kim(&[
            "federation",
            "adopt",
            &arg(&outsider_draft),
            &arg(&outsider_consent),
        ])
        .fails();
    assert!(out.stderr.contains("not a fresh node"), "{}", out.stderr);
    outsider.start();
    let still = outsider
        .kim(&["offer", "show", "outsider-offer", "--json"])
        .ok()
        .json();
    assert_eq!(still["key"], json!("outsider-offer"));
    outsider.stop_with("TERM");

    // 7. Every founder adopts.
    let all: Vec<&Path> = consents.iter().map(PathBuf::as_path).collect();
    for node in &nodes {
        let out = adopt(node, &all).ok();
        assert!(out.stdout.contains(&federation), "{}", out.stdout);
        assert!(out.stdout.contains("run"), "{}", out.stdout);
        assert_eq!(config_federation(node), federation);
    }
    // Adopting again is refused: the node already belongs to it.
    let out = adopt(&nodes[0], &all).fails();
    assert!(out.stderr.contains("already belongs"), "{}", out.stderr);

    // 8. Run the three nodes; sync often so a missed gossip is made up quickly.
    for node in &mut nodes {
        let config = node.data.join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("sync_interval_secs = 30", "sync_interval_secs = 2");
        std::fs::write(&config, text).unwrap();
        node.start();
    }
    for (i, node) in nodes.iter().enumerate() {
        let status = wait_for(
            &format!("node {i} sees its peers"),
            Duration::from_secs(60),
            || {
                let status = node.kim(&["status", "--json"]).ok().json();
                (status["peers"].as_array().map_or(0, Vec::len) >= 2).then_some(status)
            },
        );
        assert_eq!(status["federation"], json!(federation), "node {i}");
        let members = status["members"].as_array().unwrap();
        assert_eq!(members.len(), 3, "node {i}: {status}");
        let mut member_regions: Vec<&str> = members
            .iter()
            .map(|m| m["region"].as_str().unwrap())
            .collect();
        member_regions.sort_unstable();
        let mut expected: Vec<&str> = regions.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(member_regions, expected, "node {i}");
        assert_eq!(status["region"], json!(regions[i]), "node {i}");
    }

    // 9. An offer published on one founder's node reaches the others.
    let offer_file = root.join("founding-offer.json");
    write_json(&offer_file, &offer_input("founding-offer", 2));
    let published = nodes[0]
        .kim(&["offer", "publish", "--file", &arg(&offer_file), "--json"])
        .ok()
        .json();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let seen = wait_for(
            &format!("node {i} holds the offer"),
            Duration::from_secs(60),
            || {
                let out = node.kim(&[
                    "offer",
                    "show",
                    "founding-offer",
                    "--region",
                    &regions[0],
                    "--json",
                ]);
                out.status.success().then(|| out.json())
            },
        );
        assert_eq!(seen["id"], published["id"], "node {i}");
    }

    // 10. `kim keys rotate` on a founder's node: every node follows the new key, and the
    //     region's next offer, signed with it, reaches the others.
    let rotated = nodes[1]
        .kim(&["keys", "rotate", "--reason", "test", "--json"])
        .ok()
        .json();
    assert_eq!(rotated["region"], json!(regions[1]));
    assert_eq!(rotated["old_key"], json!(regions[1]));
    let new_key = rotated["new_key"].as_str().unwrap().to_string();
    assert_ne!(new_key, regions[1]);
    let offer_file = root.join("rotated-offer.json");
    write_json(&offer_file, &offer_input("after-rotation", 3));
    let published = nodes[1]
        .kim(&["offer", "publish", "--file", &arg(&offer_file), "--json"])
        .ok()
        .json();
    assert_eq!(published["author"], json!(new_key));
    assert_eq!(published["region"], json!(regions[1]));
    for i in [0, 2] {
        let seen = wait_for(
            &format!("node {i} holds the offer signed with the new key"),
            Duration::from_secs(60),
            || {
                let out = nodes[i].kim(&[
                    "offer",
                    "show",
                    "after-rotation",
                    "--region",
                    &regions[1],
                    "--json",
                ]);
                out.status.success().then(|| out.json())
            },
        );
        assert_eq!(seen["author"], json!(new_key), "node {i}");
    }
    let out = nodes[1].kim(&["keys", "rotate"]).ok();
    assert!(out.stdout.contains("region key rotated"), "{}", out.stdout);

    for node in &mut nodes {
        assert!(node.stop_with("TERM").success());
    }
}
