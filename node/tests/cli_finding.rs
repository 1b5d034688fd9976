//! Finding partners with the real `kim` binary: `search`, `match`, `saved`, `notifications`,
//! `overview` and `potential`, as tables and as JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::{Value, json};

mod support {
    pub mod binary;
}

use support::binary::*;

fn profile(key: &str, kind: &str, nace: &str, keywords: &[&str], title: &str) -> Value {
    json!({
        "key": key,
        "body": {
            "kind": kind,
            "title": title,
            "summary": format!("{title} for regional manufacturers"),
            "description": "",
            "innovation": "",
            "stage": "prototype",
            "ipr": "none",
            "technology_keywords": keywords,
            "market_keywords": [],
            "nace": [nace],
            "partnership_types": ["technical_cooperation"],
            "partner_sought": {"role": "", "org_types": [], "sizes": [], "countries": [], "regions": []},
            "eoi_deadline": null,
            "anonymous": false,
            "organisation": null,
            "nuts": "AT22",
            "languages": ["en"]
        }
    })
}

fn publish(node: &Node, dir: &Path, input: &Value) {
    let file = dir.join(format!("{}.json", input["key"].as_str().unwrap()));
    std::fs::write(&file, serde_json::to_vec(input).unwrap()).unwrap();
    node.kim(&["offer", "publish", "--file", &file.display().to_string()])
        .ok();
}

#[test]
fn search_match_saved_searches_and_the_overview_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());
    node.start();
    let sensors = ["iot sensors", "condition monitoring"];
    publish(
        &node,
        tmp.path(),
        &profile(
            "vibration-sensors",
            "technology_offer",
            "26.11",
            &sensors,
            "Wireless vibration sensors",
        ),
    );
    publish(
        &node,
        tmp.path(),
        &profile(
            "sensors-wanted",
            "technology_request",
            "26.12",
            &sensors,
            "Vibration sensors wanted",
        ),
    );

    let found = node
        .kim(&[
            "search",
            "sensors",
            "--kind",
            "technology_request",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(found["total"], json!(1));
    assert_eq!(found["hits"][0]["item"]["key"], json!("sensors-wanted"));
    let table = node
        .kim(&["search", "vibration", "--nace", "26.1"])
        .ok()
        .stdout;
    assert!(table.starts_with("2 matching"), "{table}");
    assert!(
        table.contains("vibration-sensors") && table.contains("sensors-wanted"),
        "{table}"
    );
    let bad = node.kim(&["search", "--nuts", "ZZ99"]).fails();
    assert!(
        bad.stderr.contains("request.bad_parameter") && bad.stderr.contains("ZZ99"),
        "{}",
        bad.stderr
    );

    let matches = node
        .kim(&["match", "vibration-sensors", "--json"])
        .ok()
        .json();
    assert_eq!(matches["matches"][0]["key"], json!("sensors-wanted"));
    let table = node.kim(&["match", "vibration-sensors"]).ok().stdout;
    assert!(table.contains("sensors-wanted"), "{table}");
    for part in [
        "sector",
        "keywords",
        "text",
        "partnership",
        "cohesion",
        "freshness",
    ] {
        assert!(table.contains(part), "{part} missing:\n{table}");
    }
    let missing = node.kim(&["match", "no-such-offer"]).fails();
    assert!(
        missing.stderr.contains("item.not_found"),
        "{}",
        missing.stderr
    );

    let saved = node
        .kim(&[
            "saved",
            "add",
            "--name",
            "sensor requests",
            "sensors",
            "--kind",
            "technology_request",
            "--json",
        ])
        .ok()
        .json();
    let id = saved["id"].as_str().unwrap().to_string();
    assert!(
        node.kim(&["saved", "list"])
            .ok()
            .stdout
            .contains("sensor requests")
    );
    publish(
        &node,
        tmp.path(),
        &profile(
            "more-sensors",
            "technology_request",
            "26.51",
            &["pressure sensors"],
            "Pressure sensors wanted",
        ),
    );
    let notes = node.kim(&["notifications", "--json"]).ok().json();
    assert_eq!(notes.as_array().unwrap().len(), 1);
    assert_eq!(notes[0]["key"], json!("more-sensors"));
    assert!(
        node.kim(&["notifications", "--unread"])
            .ok()
            .stdout
            .contains("more-sensors")
    );
    assert!(
        node.kim(&["notifications", "--read-all"])
            .ok()
            .stdout
            .contains("marked 1 read")
    );
    assert_eq!(
        node.kim(&["notifications", "--unread", "--json"])
            .ok()
            .json(),
        json!([])
    );
    node.kim(&["saved", "rm", &id]).ok();
    assert_eq!(
        node.kim(&["saved", "list", "--json"]).ok().json(),
        json!([])
    );

    let overview = node.kim(&["overview"]).ok().stdout;
    assert!(
        overview.contains("Steiermark") && overview.contains("technology_request 2"),
        "{overview}"
    );
    let potential = node.kim(&["potential", "--threshold", "0"]).ok().stdout;
    assert!(
        potential.starts_with("2 complementary pairs scoring at least 0"),
        "{potential}"
    );
    assert!(node.stop_with("TERM").success());
}
