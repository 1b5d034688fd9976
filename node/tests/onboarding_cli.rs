//! Onboarding with the real `kim` binary, one process per node, driven by the CLI the way
//! operators work: four regions found a federation by files, a fifth initialises its own node,
//! gets an invitation, joins, waits as a candidate ("pending: 0 of 3 endorsements"), is
//! endorsed by three members by region id, is admitted on every node and catches up; then it
//! publishes, a member is voted out and another leaves. Along the way the refusals an operator
//! meets: a tampered token, a join on a node that is not fresh, endorsing an unknown region, and
//! membership actions by a node that is not a member. A second test sends an expression of
//! interest, accepts it and records its outcome, all through the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

mod support {
    pub mod binary;
}

use support::binary::*;

const REGIONS: [(&str, &str, &str, &str); 4] = [
    ("steiermark", "Steiermark", "AT22", "de"),
    ("vzhodna", "Vzhodna Slovenija", "SI03", "sl"),
    ("fvg", "Friuli-Venezia Giulia", "ITH4", "it"),
    ("jadranska", "Jadranska Hrvatska", "HR03", "hr"),
];

fn status(node: &Node) -> Value {
    node.kim(&["status", "--json"]).ok().json()
}

/// Makes a node sync every 2 s, so a missed gossip is made up quickly in the test.
fn sync_often(node: &Node) {
    let config = node.data.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("sync_interval_secs = 30", "sync_interval_secs = 2"),
    )
    .unwrap();
}

/// Four founders by files: profile, create (majority), sign, adopt.
fn found(root: &Path) -> Vec<Node> {
    let nodes: Vec<Node> = REGIONS
        .iter()
        .map(|(dir, name, nuts, lang)| init_region(root, dir, name, nuts, lang))
        .collect();
    let mut create = vec![
        "federation".to_string(),
        "create".into(),
        "--name".into(),
        "Alps-Adriatic".into(),
        "--threshold".into(),
        "majority".into(),
        "--out".into(),
        arg(&root.join("draft.json")),
    ];
    for (i, node) in nodes.iter().enumerate() {
        let card = root.join(format!("card-{i}.json"));
        node.kim(&["federation", "profile", "--out", &arg(&card)])
            .ok();
        create.push("--founder".into());
        create.push(arg(&card));
    }
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    kim(&root.join("no-data-dir"), &create).ok();
    let consents: Vec<PathBuf> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let path = root.join(format!("consent-{i}.json"));
            node.kim(&[
                "federation",
                "sign",
                &arg(&root.join("draft.json")),
                "--out",
                &arg(&path),
            ])
            .ok();
            path
        })
        .collect();
    for node in &nodes {
        let mut adopt = vec![
            "federation".to_string(),
            "adopt".into(),
            arg(&root.join("draft.json")),
        ];
        adopt.extend(consents.iter().map(|c| arg(c)));
        let adopt: Vec<&str> = adopt.iter().map(String::as_str).collect();
        node.kim(&adopt).ok();
        sync_often(node);
    }
    nodes
}

#[test]
fn four_founders_admit_a_fifth_region_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut founders = found(root);
    for node in &mut founders {
        node.start();
    }
    for (i, node) in founders.iter().enumerate() {
        wait_for(
            &format!("founder {i} sees its peers"),
            Duration::from_secs(60),
            || (status(node)["peers"].as_array().map_or(0, Vec::len) >= 3).then_some(()),
        );
    }
    // Something for the newcomer to catch up on.
    let offer_file = root.join("offer.json");
    write_json(&offer_file, &offer_input("before-the-newcomer", 1));
    founders[1]
        .kim(&["offer", "publish", "--file", &arg(&offer_file)])
        .ok();

    // A member invites.
    let out = founders[0]
        .kim(&["federation", "invite", "--days", "2"])
        .ok();
    let token = out.stdout.trim().to_string();
    assert!(token.starts_with("kim-invite-1."), "{}", out.stdout);
    assert!(!token.contains('\n'), "the token is one line");

    // The new region's operator: a fresh node, not running.
    let mut newcomer = init_region(root, "kaernten", "Kärnten", "AT21", "de");
    sync_often(&newcomer);
    // A tampered token is refused and leaves the node as it was.
    let mut tampered = token.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let out = newcomer.kim(&["federation", "join", &tampered]).fails();
    assert!(
        out.stderr.contains("invitation.bad_signature")
            || out.stderr.contains("invitation.malformed"),
        "{}",
        out.stderr
    );
    let out = newcomer
        .kim(&[
            "federation",
            "join",
            &token,
            "--message",
            "Kärnten would like to join",
        ])
        .ok();
    assert!(
        out.stdout.contains("pending: 0 of 3 endorsements"),
        "{}",
        out.stdout
    );
    // Joining again is refused: it already belongs to the federation as a candidate.
    newcomer.kim(&["federation", "join", &token]).fails();
    newcomer.start();
    let own = status(&newcomer);
    assert_eq!(own["membership"]["state"], json!("pending"), "{own}");
    let human = newcomer.kim(&["status"]).ok();
    assert!(
        human.stdout.contains("pending: 0 of 3 endorsements"),
        "{}",
        human.stdout
    );
    let region = own["region"].as_str().unwrap().to_string();
    // A candidate decides nothing.
    let out = newcomer.kim(&["endorse", &region]).fails();
    assert!(out.stderr.contains("not a member"), "{}", out.stderr);

    // Members read the request and endorse; an unknown region is refused.
    let pending = wait_for(
        "the request reaches every member",
        Duration::from_secs(60),
        || {
            founders
                .iter()
                .all(|n| {
                    let p = n.kim(&["members", "pending", "--json"]).ok().json();
                    p.as_array().is_some_and(|a| a.len() == 1)
                })
                .then(|| {
                    founders[3]
                        .kim(&["members", "pending", "--json"])
                        .ok()
                        .json()
                })
        },
    );
    assert_eq!(pending[0]["name"], json!("Kärnten"));
    assert_eq!(pending[0]["message"], json!("Kärnten would like to join"));
    assert_eq!(pending[0]["profile"]["nuts"], json!(["AT21"]));
    let shown = founders[1].kim(&["members", "pending"]).ok();
    assert!(shown.stdout.contains("0 of 3"), "{}", shown.stdout);
    let out = founders[1].kim(&["endorse", "Atlantis"]).fails();
    assert!(
        out.stderr.contains("no member or pending"),
        "{}",
        out.stderr
    );
    // A candidate's name is its own choice: it is refused, the id (or a prefix) is taken.
    let out = founders[1].kim(&["endorse", "Kärnten"]).fails();
    assert!(out.stderr.contains("region id"), "{}", out.stderr);
    for founder in &founders[1..] {
        founder.kim(&["endorse", &region[..12]]).ok();
    }

    // Admitted on every node; the newcomer catches up.
    wait_for("admitted on the newcomer", Duration::from_secs(60), || {
        (status(&newcomer)["membership"]["state"] == json!("member")).then_some(())
    });
    let digest = wait_for("one sync set on all five", Duration::from_secs(90), || {
        let digests: Vec<Value> = founders
            .iter()
            .chain(std::iter::once(&newcomer))
            .map(|n| status(n)["state_digest"].clone())
            .collect();
        digests
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| digests[0].clone())
    });
    assert!(digest.is_string());
    for node in founders.iter().chain(std::iter::once(&newcomer)) {
        let s = status(node);
        assert_eq!(s["members"].as_array().unwrap().len(), 5, "{s}");
    }
    let founder1 = status(&founders[1])["region"].as_str().unwrap().to_string();
    newcomer
        .kim(&[
            "offer",
            "show",
            "before-the-newcomer",
            "--region",
            &founder1,
            "--json",
        ])
        .ok();
    let list = founders[0].kim(&["members", "list"]).ok();
    assert!(list.stdout.contains("Kärnten"), "{}", list.stdout);

    // The newcomer publishes like any member.
    write_json(&offer_file, &offer_input("from-kaernten", 2));
    newcomer
        .kim(&["offer", "publish", "--file", &arg(&offer_file)])
        .ok();
    wait_for(
        "its offer reaches a founder",
        Duration::from_secs(60),
        || {
            founders[2]
                .kim(&[
                    "offer",
                    "show",
                    "from-kaernten",
                    "--region",
                    &region,
                    "--json",
                ])
                .status
                .success()
                .then_some(())
        },
    );

    // Removal by vote (5 members: 3 of the 4 others), then a region leaves.
    for founder in &founders[..2] {
        founder
            .kim(&[
                "members",
                "remove",
                "Jadranska Hrvatska",
                "--reason",
                "inactive",
            ])
            .ok();
    }
    newcomer
        .kim(&[
            "members",
            "remove",
            "Jadranska Hrvatska",
            "--reason",
            "agreed",
        ])
        .ok();
    wait_for("removed", Duration::from_secs(60), || {
        (status(&founders[0])["members"]
            .as_array()
            .map_or(0, Vec::len)
            == 4)
            .then_some(())
    });
    let list = founders[0].kim(&["members", "list"]).ok();
    assert!(list.stdout.contains("removed"), "{}", list.stdout);
    founders[2]
        .kim(&["federation", "leave", "--reason", "project ended"])
        .ok();
    wait_for("left", Duration::from_secs(60), || {
        (status(&newcomer)["members"].as_array().map_or(0, Vec::len) == 3).then_some(())
    });
    for node in founders.iter_mut().chain(std::iter::once(&mut newcomer)) {
        node.stop_with("TERM");
    }
}

#[test]
fn an_expression_of_interest_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut nodes = found(root);
    for node in &mut nodes {
        node.start();
    }
    for (i, node) in nodes.iter().enumerate() {
        wait_for(
            &format!("node {i} sees its peers"),
            Duration::from_secs(60),
            || (status(node)["peers"].as_array().map_or(0, Vec::len) >= 3).then_some(()),
        );
    }
    let offerer = status(&nodes[0])["region"].as_str().unwrap().to_string();
    let offer_file = root.join("offer.json");
    write_json(&offer_file, &offer_input("sensor-offer", 7));
    nodes[0]
        .kim(&["offer", "publish", "--file", &arg(&offer_file)])
        .ok();
    wait_for("the offer reaches node 1", Duration::from_secs(60), || {
        nodes[1]
            .kim(&[
                "offer",
                "show",
                "sensor-offer",
                "--region",
                &offerer,
                "--json",
            ])
            .status
            .success()
            .then_some(())
    });
    let sent = nodes[1]
        .kim(&[
            "interest",
            "send",
            "--region",
            &offerer,
            "--offer",
            "sensor-offer",
            "--message",
            "We build vibration sensors",
            "--contact-person",
            "Ana Novak",
            "--contact-email",
            "ana@example.org",
            "--json",
        ])
        .ok()
        .json();
    let id = sent["id"].as_str().unwrap().to_string();
    wait_for("node 0 receives it", Duration::from_secs(60), || {
        let list = nodes[0].kim(&["interest", "list", "--json"]).ok().json();
        list.as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == json!(id) && i["status"] == json!("new"))
            .then_some(())
    });
    let shown = nodes[0].kim(&["interest", "show", &id]).ok();
    assert!(
        shown.stdout.contains("vibration sensors"),
        "{}",
        shown.stdout
    );
    assert!(
        !shown.stdout.contains("Ana Novak"),
        "contact shown before acceptance"
    );
    nodes[0]
        .kim(&[
            "interest",
            "accept",
            &id,
            "--contact-person",
            "Hans Gruber",
            "--contact-email",
            "hans@example.org",
        ])
        .ok();
    wait_for(
        "node 1 sees the acceptance",
        Duration::from_secs(60),
        || {
            let v = nodes[1]
                .kim(&["interest", "show", &id, "--json"])
                .ok()
                .json();
            (v["status"] == json!("accepted")
                && v["their_contact"]["person"] == json!("Hans Gruber"))
            .then_some(())
        },
    );
    wait_for("node 0 gets the contact", Duration::from_secs(60), || {
        let v = nodes[0]
            .kim(&["interest", "show", &id, "--json"])
            .ok()
            .json();
        (v["their_contact"]["person"] == json!("Ana Novak")).then_some(())
    });
    // Accepting twice is refused; an outcome is recorded and counted everywhere.
    nodes[0].kim(&["interest", "accept", &id]).fails();
    nodes[0]
        .kim(&[
            "interest",
            "outcome",
            &id,
            "--agreement",
            "technical_cooperation",
            "--date",
            "2026-11-20",
            "--jobs",
            "2",
        ])
        .ok();
    wait_for("node 3 counts the outcome", Duration::from_secs(60), || {
        let o = nodes[3].kim(&["overview", "--json"]).ok().json();
        (o["outcomes"]["total"] == json!(1)).then_some(())
    });
    // The other nodes never saw the expression itself.
    for node in &nodes[2..] {
        let list = node.kim(&["interest", "list", "--json"]).ok().json();
        assert!(list.as_array().unwrap().is_empty());
        assert_eq!(status(node)["network"]["direct_inbound"], json!(0));
    }
    for node in &mut nodes {
        node.stop_with("TERM");
    }
}
