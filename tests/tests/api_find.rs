//! Finding partners through the API: search with filters, matches with their breakdown and the
//! hard filters, saved searches that notify exactly once whether an item is published here or
//! arrives by import, and the federation overview and potential on a known corpus.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kim_tests::{TestNode, sample_input};
use reqwest::Method;
use serde_json::{Value, json};

/// A co-operation profile as `POST /offers` takes it.
fn profile(key: &str, kind: &str, nuts: &str, nace: &str, keywords: &[&str], title: &str) -> Value {
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
            "nuts": nuts,
            "languages": ["en"]
        }
    })
}

const SENSORS: [&str; 2] = ["iot sensors", "condition monitoring"];

async fn publish(node: &TestNode, input: &Value) {
    let (status, body) = node.post("/offers", input).await.unwrap();
    assert_eq!(status, 201, "{body}");
}

fn keys(hits: &Value, path: &str) -> Vec<String> {
    hits[path]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            h["item"]["key"]
                .as_str()
                .or(h["key"].as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_ranks_by_relevance_and_filters() {
    let node = TestNode::start().await.unwrap();
    publish(
        &node,
        &profile(
            "vibration-sensors",
            "technology_offer",
            "AT22",
            "26.11",
            &SENSORS,
            "Wireless vibration sensors",
        ),
    )
    .await;
    publish(
        &node,
        &profile(
            "sensors-wanted",
            "technology_request",
            "AT21",
            "26.12",
            &SENSORS,
            "Vibration sensors wanted",
        ),
    )
    .await;
    publish(
        &node,
        &profile(
            "timber",
            "business_offer",
            "AT22",
            "16.11",
            &["timber"],
            "Sawn larch timber",
        ),
    )
    .await;
    let (status, _) = node
        .post("/projects", &sample_input("projects", "a-project", 3))
        .await
        .unwrap();
    assert_eq!(status, 201);

    let (status, r) = node.get("/search?q=vibration%20sensors").await.unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["total"], json!(2));
    let mut found = keys(&r, "hits");
    found.sort();
    assert_eq!(found, ["sensors-wanted", "vibration-sensors"]);
    let scores: Vec<f64> = r["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(scores[0] >= scores[1] && scores[1] > 0.0, "{scores:?}");

    // Filters: co-operation kind, NACE hierarchy, NUTS prefix, item kind, paging.
    for (query, want) in [
        ("q=sensors&kind=technology_request", vec!["sensors-wanted"]),
        ("nace=26.11", vec!["vibration-sensors"]),
        (
            "nace=26.1&sort=newest",
            vec!["sensors-wanted", "vibration-sensors"],
        ),
        ("nace=C&q=timber", vec!["timber"]),
        ("nuts=AT21", vec!["sensors-wanted"]),
        ("q=sensors&partnership=licence", vec![]),
        ("kind=project", vec!["a-project"]),
    ] {
        let (status, r) = node.get(&format!("/search?{query}")).await.unwrap();
        assert_eq!(status, 200, "{query}: {r}");
        let mut got = keys(&r, "hits");
        got.sort();
        let mut want: Vec<String> = want.into_iter().map(String::from).collect();
        want.sort();
        assert_eq!(got, want, "{query}");
    }
    let (_, page) = node.get("/search?q=sensors&limit=1").await.unwrap();
    assert_eq!(page["total"], json!(2));
    assert_eq!(page["hits"].as_array().unwrap().len(), 1);
    // Withdrawn items leave the index.
    assert_eq!(
        node.post("/offers/sensors-wanted/withdraw", &json!({}))
            .await
            .unwrap()
            .0,
        200
    );
    let (_, r) = node.get("/search?q=sensors").await.unwrap();
    assert_eq!(keys(&r, "hits"), ["vibration-sensors"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_come_with_a_breakdown_and_respect_the_hard_filters() {
    let node = TestNode::start().await.unwrap();
    let region = node.get("/status").await.unwrap().1["region"]
        .as_str()
        .unwrap()
        .to_string();
    let org = json!({"region": region, "kind": "organisation", "key": "sensorik-gmbh"});
    let mut offer = profile(
        "vibration-sensors",
        "technology_offer",
        "AT22",
        "26.11",
        &SENSORS,
        "Wireless vibration sensors",
    );
    offer["body"]["organisation"] = org.clone();
    publish(&node, &offer).await;
    publish(
        &node,
        &profile(
            "sensors-wanted",
            "technology_request",
            "AT21",
            "26.12",
            &SENSORS,
            "Vibration sensors wanted",
        ),
    )
    .await;
    // Excluded: same organisation; not complementary; withdrawn; seeks partners elsewhere.
    let mut own = profile(
        "own-request",
        "technology_request",
        "AT22",
        "26.11",
        &SENSORS,
        "Vibration sensors wanted",
    );
    own["body"]["organisation"] = org;
    publish(&node, &own).await;
    publish(
        &node,
        &profile(
            "to-buy",
            "business_request",
            "AT21",
            "26.12",
            &SENSORS,
            "Vibration sensors wanted",
        ),
    )
    .await;
    publish(
        &node,
        &profile(
            "gone",
            "technology_request",
            "AT21",
            "26.12",
            &SENSORS,
            "Vibration sensors wanted",
        ),
    )
    .await;
    assert_eq!(
        node.post("/offers/gone/withdraw", &json!({}))
            .await
            .unwrap()
            .0,
        200
    );
    let mut elsewhere = profile(
        "elsewhere",
        "technology_request",
        "AT21",
        "26.12",
        &SENSORS,
        "Vibration sensors wanted",
    );
    elsewhere["body"]["partner_sought"]["countries"] = json!(["SI"]);
    publish(&node, &elsewhere).await;

    let (status, r) = node.get("/offers/vibration-sensors/matches").await.unwrap();
    assert_eq!(status, 200, "{r}");
    assert_eq!(keys(&r, "matches"), ["sensors-wanted"], "{r}");
    let m = &r["matches"][0];
    let parts: Vec<&str> = m["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        parts,
        [
            "sector",
            "keywords",
            "text",
            "partnership",
            "cohesion",
            "freshness"
        ]
    );
    let part = |name: &str| {
        m["breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        part("sector")["points"],
        json!(19),
        "26.11 and 26.12 share group 26.1"
    );
    assert_eq!(part("keywords")["points"], json!(25));
    assert_eq!(part("partnership")["points"], json!(10));
    // Both published by this region: no cohesion bonus, and the reason says so.
    assert_eq!(part("cohesion")["points"], json!(0));
    assert!(
        part("cohesion")["why"]
            .as_str()
            .unwrap()
            .contains("same region")
    );
    let total: u64 = m["breakdown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["points"].as_u64().unwrap())
        .sum();
    assert_eq!(m["score"].as_u64().unwrap(), total);
    assert!(
        m["why"].as_str().unwrap().contains("iot sensors"),
        "{}",
        m["why"]
    );
    assert_eq!(m["kind"], json!("technology_request"));

    // From the request's side; min_score above the score leaves nothing.
    let (_, back) = node.get("/offers/sensors-wanted/matches").await.unwrap();
    assert_eq!(keys(&back, "matches"), ["vibration-sensors"]);
    assert_eq!(back["matches"][0]["score"], m["score"]);
    let (_, none) = node
        .get(&format!(
            "/offers/vibration-sensors/matches?min_score={}",
            total + 1
        ))
        .await
        .unwrap();
    assert_eq!(none["matches"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_search_notifies_exactly_once_by_publish_and_by_import() {
    let mut origin = TestNode::start().await.unwrap();
    // A replica of the same region: it learns of origin's items only by import.
    let replica = origin.start_copy().await.unwrap();
    let saved =
        json!({"name": "sensor requests", "query": {"q": "sensors", "kind": "technology_request"}});
    let (status, search) = replica.post("/saved-searches", &saved).await.unwrap();
    assert_eq!(status, 201, "{search}");
    let id = search["id"].as_str().unwrap().to_string();
    let (_, list) = replica.get("/saved-searches").await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["query"]["kind"], json!("technology_request"));

    publish(
        &origin,
        &profile(
            "sensors-wanted",
            "technology_request",
            "AT21",
            "26.12",
            &SENSORS,
            "Vibration sensors wanted",
        ),
    )
    .await;
    publish(
        &origin,
        &profile(
            "timber",
            "business_offer",
            "AT22",
            "16.11",
            &["timber"],
            "Sawn larch timber",
        ),
    )
    .await;
    let (_, bundle) = origin.get("/export").await.unwrap();
    // Imported twice: the second import stores nothing and notifies nothing.
    for _ in 0..2 {
        let (status, report) = replica.post("/import", &bundle).await.unwrap();
        assert_eq!(status, 200, "{report}");
        let (_, notes) = replica.get("/notifications").await.unwrap();
        assert_eq!(note_keys(&notes), ["sensors-wanted"], "{notes}");
        assert_eq!(notes[0]["saved_search"], json!(id));
        assert_eq!(notes[0]["title"], json!("Vibration sensors wanted"));
        assert_eq!(notes[0]["read"], json!(false));
    }

    // Published here: notifies once; a revision of it does not notify again.
    let mut more = profile(
        "more-sensors",
        "technology_request",
        "AT22",
        "26.51",
        &["pressure sensors"],
        "Pressure sensors wanted",
    );
    publish(&replica, &more).await;
    more["body"]["title"] = json!("Pressure sensors still wanted");
    let (status, _) = replica.put("/offers/more-sensors", &more).await.unwrap();
    assert_eq!(status, 200);
    let (_, notes) = replica.get("/notifications?unread=true").await.unwrap();
    let mut got = note_keys(&notes);
    got.sort();
    assert_eq!(got, ["more-sensors", "sensors-wanted"]);

    // Mark one read, then all.
    let first = notes[0]["id"].as_str().unwrap().to_string();
    let (status, marked) = replica
        .post("/notifications/read", &json!({"ids": [first]}))
        .await
        .unwrap();
    assert_eq!((status, marked["marked"].clone()), (200, json!(1)));
    let (_, unread) = replica.get("/notifications?unread=true").await.unwrap();
    assert_eq!(unread.as_array().unwrap().len(), 1);
    let (_, marked) = replica
        .post("/notifications/read", &json!({"all": true}))
        .await
        .unwrap();
    assert_eq!(marked["marked"], json!(1));
    let (_, unread) = replica.get("/notifications?unread=true").await.unwrap();
    assert_eq!(unread, json!([]));

    // Deleted: listed no more, and new items raise nothing.
    let (status, _) =
        kim_tests::send(replica.request(Method::DELETE, &format!("/saved-searches/{id}")))
            .await
            .unwrap();
    assert_eq!(status, 204);
    assert_eq!(replica.get("/saved-searches").await.unwrap().1, json!([]));
    publish(
        &replica,
        &profile(
            "yet-more",
            "technology_request",
            "AT22",
            "26.51",
            &["sensors"],
            "Sensors wanted",
        ),
    )
    .await;
    assert_eq!(
        replica
            .get("/notifications")
            .await
            .unwrap()
            .1
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Saved searches and notifications are local: nothing of them is in a record.
    let (_, status) = replica.get("/status").await.unwrap();
    assert_eq!(status["records"]["cooperation"], json!(4));
}

fn note_keys(notes: &Value) -> Vec<String> {
    notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_and_potential_count_a_known_corpus() {
    let node = TestNode::start().await.unwrap();
    publish(
        &node,
        &profile(
            "vibration-sensors",
            "technology_offer",
            "AT22",
            "26.11",
            &SENSORS,
            "Wireless vibration sensors",
        ),
    )
    .await;
    publish(
        &node,
        &profile(
            "sensors-wanted",
            "technology_request",
            "AT21",
            "26.12",
            &SENSORS,
            "Vibration sensors wanted",
        ),
    )
    .await;
    publish(
        &node,
        &profile(
            "timber",
            "business_offer",
            "AT22",
            "16.11",
            &["timber"],
            "Sawn larch timber",
        ),
    )
    .await;
    publish(
        &node,
        &profile(
            "software",
            "business_request",
            "AT21",
            "62.10",
            &["erp"],
            "Accounting software",
        ),
    )
    .await;
    publish(
        &node,
        &profile(
            "gone",
            "technology_request",
            "AT21",
            "26.12",
            &SENSORS,
            "Vibration sensors wanted",
        ),
    )
    .await;
    assert_eq!(
        node.post("/offers/gone/withdraw", &json!({}))
            .await
            .unwrap()
            .0,
        200
    );

    let (status, o) = node.get("/federation/overview").await.unwrap();
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["regions"].as_array().unwrap().len(), 1);
    assert_eq!(o["regions"][0]["name"], json!("Steiermark"));
    let totals = &o["totals"];
    assert_eq!(totals["by_kind"], json!({"cooperation": 4}));
    assert_eq!(
        totals["by_cooperation_kind"],
        json!({"business_offer": 1, "business_request": 1, "technology_offer": 1, "technology_request": 1})
    );
    assert_eq!(totals["by_nace_section"], json!({"C": 3, "K": 1}));
    assert_eq!(totals["by_status"], json!({"live": 4, "withdrawn": 1}));
    assert_eq!(o["outcomes"], Value::Null);

    // Two complementary pairs: the sensors (strong) and timber–software (weak, other sections).
    let (status, p) = node.get("/federation/potential?threshold=0").await.unwrap();
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["pairs"], json!(2));
    assert_eq!(p["matrix"], json!([[2]]));
    assert_eq!(p["regions"][0]["live"], json!(4));
    let (_, strong) = node
        .get("/federation/potential?threshold=60")
        .await
        .unwrap();
    assert_eq!(strong["matrix"], json!([[1]]));
    let (_, default) = node.get("/federation/potential").await.unwrap();
    assert_eq!(default["threshold"], json!(50));
}
