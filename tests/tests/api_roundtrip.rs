//! The HTTP API as users rely on it, against a whole node over loopback: every collection
//! round-trips (publish, read, revise, withdraw with erasure), a restart keeps everything,
//! drafts and private data stay local, pagination and filters, the audit log, status, the
//! OpenAPI document, and export/import with tampered and foreign bundles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, ensure};
use kim_node::config::DataDir;
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
use kim_protocol::samples::{public_key, signing_key};
use kim_protocol::types::Cooperation;
use kim_tests::{COLLECTIONS, TestNode, sample_input, send};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use reqwest::Method;
use serde_json::{Value, json};

/// A GET that must succeed.
async fn get_ok(node: &TestNode, path: &str) -> anyhow::Result<Value> {
    let (status, body) = node.get(path).await?;
    ensure!(status == 200, "GET {path}: {status} {body}");
    Ok(body)
}

/// Every item of a collection, all statuses, following cursors.
async fn list_all(node: &TestNode, collection: &str, query: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/{collection}?limit=500{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = get_ok(node, &path).await?;
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(out),
        }
    }
}

fn keys(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["key"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A sample offer whose searchable text and codes are fixed by the caller.
fn offer(key: &str, seed: u64, title: &str, nuts: &str, nace: &str) -> Value {
    let mut input = sample_input("offers", key, seed);
    let body = &mut input["body"];
    body["title"] = json!(title);
    body["summary"] = json!("A regional firm seeks partners.");
    body["description"] = json!("Details follow on request.");
    body["nuts"] = json!(nuts);
    body["nace"] = json!([nace]);
    input
}

/// Which of the bundle's record bytes contain `needle` (as raw UTF-8).
fn records_containing(bundle: &Value, needle: &str) -> usize {
    let needle = kim_protocol::bytes::to_hex(needle.as_bytes());
    bundle["records"]
        .as_array()
        .map(|records| {
            records
                .iter()
                .filter(|r| r.as_str().unwrap_or_default().contains(&needle))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_collection_round_trips() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    for (seed, (collection, kind)) in COLLECTIONS.iter().enumerate() {
        let seed = seed as u64 * 10;
        let key = format!("rt-{collection}");
        let input = sample_input(collection, &key, seed);

        // Publish.
        let (status, created) = node.post(&format!("/{collection}"), &input).await?;
        assert_eq!(status, 201, "publish {collection}: {created}");
        assert_eq!(created["key"], json!(key));
        assert_eq!(created["kind"], json!(kind.as_str()));
        assert_eq!(created["revision"], json!(1));
        assert_eq!(created["status"], json!("live"));
        assert_eq!(created["body"], input["body"], "{collection} body changed");
        assert_eq!(created["private"], input["private"]);
        let first_id = created["id"].as_str().context("id")?.to_string();
        assert_eq!(first_id.len(), 64);

        // Read it back, with the private object (own item).
        let got = get_ok(&node, &format!("/{collection}/{key}")).await?;
        assert_eq!(got["id"], json!(first_id));
        assert_eq!(got["body"], input["body"]);
        assert_eq!(got["private"], input["private"]);
        let listed = list_all(&node, collection, "").await?;
        assert_eq!(keys(&listed), vec![key.clone()]);
        assert_eq!(listed[0]["body"], input["body"]);

        // Revise: revision 2, and only the latest shows.
        let revised_input = sample_input(collection, &key, seed + 1);
        assert_ne!(revised_input["body"], input["body"]);
        let (status, revised) = node
            .put(&format!("/{collection}/{key}"), &revised_input)
            .await?;
        assert_eq!(status, 200, "revise {collection}: {revised}");
        assert_eq!(revised["revision"], json!(2));
        assert_eq!(revised["body"], revised_input["body"]);
        assert_eq!(revised["private"], revised_input["private"]);
        let second_id = revised["id"].as_str().context("id")?.to_string();
        let listed = list_all(&node, collection, "&status=all").await?;
        assert_eq!(listed.len(), 1, "{collection}: {listed:?}");
        assert_eq!(listed[0]["id"], json!(second_id));
        assert_eq!(listed[0]["revision"], json!(2));
        assert_eq!(listed[0]["body"], revised_input["body"]);

        // Withdraw: a tombstone that erases the body.
        let (status, withdrawn) = node
            .post(
                &format!("/{collection}/{key}/withdraw"),
                &json!({"reason": "project ended"}),
            )
            .await?;
        assert_eq!(status, 200, "withdraw {collection}: {withdrawn}");
        assert_eq!(withdrawn["status"], json!("withdrawn"));
        assert_eq!(withdrawn["revision"], json!(3));
        assert_eq!(withdrawn["body"], Value::Null);
        let tombstone_id = withdrawn["id"].as_str().context("id")?.to_string();
        assert!(list_all(&node, collection, "").await?.is_empty());
        let gone = list_all(&node, collection, "&status=withdrawn").await?;
        assert_eq!(keys(&gone), vec![key.clone()]);
        assert_eq!(gone[0]["body"], Value::Null);
        let got = get_ok(&node, &format!("/{collection}/{key}")).await?;
        assert_eq!(got["status"], json!("withdrawn"));
        assert_eq!(got["body"], Value::Null);

        // Erased: the superseded revisions are gone from the store, the tombstone stays.
        for old in [&first_id, &second_id] {
            let (status, body) = node.get(&format!("/records/{old}")).await?;
            assert_eq!(status, 404, "old revision {old} still held: {body}");
            assert_eq!(body["error"]["code"], json!("record.not_found"));
        }
        let record = get_ok(&node, &format!("/records/{tombstone_id}")).await?;
        assert_eq!(record["id"], json!(tombstone_id));
        assert_eq!(record["content"]["revision"], json!(3));
        let bytes = kim_protocol::bytes::from_hex(record["record_hex"].as_str().context("hex")?)
            .context("record_hex is hex")?;
        let decoded = Record::decode(bytes)?;
        assert_eq!(decoded.id.to_hex(), tombstone_id);
        assert!(decoded.content.body.is_tombstone());
        // Nothing of the erased bodies is left in any record.
        let bundle = get_ok(&node, "/export").await?;
        let title_field = match *kind {
            Kind::Organisation => "description",
            Kind::Project => "acronym",
            _ => "title",
        };
        for body in [&input["body"], &revised_input["body"]] {
            let text = body[title_field].as_str().context("text field")?;
            assert_eq!(records_containing(&bundle, text), 0, "{text:?} survived");
        }
        // Without a key, the node names the item.
        let mut unnamed = sample_input(collection, "", seed + 5);
        unnamed.as_object_mut().context("input")?.remove("key");
        let (status, named) = node.post(&format!("/{collection}"), &unnamed).await?;
        assert_eq!(status, 201, "{named}");
        let generated = named["key"].as_str().context("key")?.to_string();
        let prefix = format!("{}-", kind.as_str().replace('_', "-"));
        assert!(generated.starts_with(&prefix), "{generated}");
        assert_eq!(
            get_ok(&node, &format!("/{collection}/{generated}")).await?["body"],
            unnamed["body"]
        );
        let (status, _) = node
            .post(&format!("/{collection}/{generated}/withdraw"), &json!({}))
            .await?;
        assert_eq!(status, 200);
    }
    Ok(())
}

/// Everything a restart must keep.
async fn snapshot(node: &TestNode) -> anyhow::Result<Value> {
    let mut collections = BTreeMap::new();
    for (collection, _) in COLLECTIONS {
        let mut items = Vec::new();
        for item in list_all(node, collection, "&status=all").await? {
            let key = item["key"].as_str().context("key")?;
            items.push(get_ok(node, &format!("/{collection}/{key}")).await?);
        }
        let drafts = get_ok(node, &format!("/drafts/{collection}")).await?;
        collections.insert(collection, json!({"items": items, "drafts": drafts}));
    }
    let status = get_ok(node, "/status").await?;
    let audit = get_ok(node, "/audit?limit=1000").await?;
    Ok(json!({
        "collections": collections,
        "audit": audit,
        "region": status["region"],
        "federation": status["federation"],
        "members": status["members"],
        "records": status["records"],
        "sync_set": status["sync_set"],
        "state_digest": status["state_digest"],
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_everything() -> anyhow::Result<()> {
    let mut node = TestNode::start().await?;
    for (i, (collection, _)) in COLLECTIONS.iter().enumerate() {
        let seed = 100 + i as u64 * 10;
        for n in 0..2 {
            let key = format!("keep-{n}");
            let (status, body) = node
                .post(
                    &format!("/{collection}"),
                    &sample_input(collection, &key, seed + n),
                )
                .await?;
            assert_eq!(status, 201, "{body}");
        }
        // A second revision, a withdrawal and a draft per collection.
        let (status, body) = node
            .put(
                &format!("/{collection}/keep-0"),
                &sample_input(collection, "keep-0", seed + 5),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
        let (status, body) = node
            .post(&format!("/{collection}/keep-1/withdraw"), &json!({}))
            .await?;
        assert_eq!(status, 200, "{body}");
        let (status, body) = node
            .put(
                &format!("/drafts/{collection}/draft-0"),
                &sample_input(collection, "draft-0", seed + 7),
            )
            .await?;
        assert_eq!(status, 204, "{body}");
    }
    let before = snapshot(&node).await?;
    assert_eq!(
        before["records"],
        json!({"cooperation": 1, "knowledge": 1, "organisation": 1, "project": 1})
    );
    // Per collection: two publishes, a revision, a withdrawal and a draft.
    assert_eq!(before["audit"].as_array().map(Vec::len), Some(20));

    node.restart().await?;
    let after = snapshot(&node).await?;
    assert_eq!(before, after);
    // And it keeps working: the revision counter continues.
    let (status, body) = node
        .put("/offers/keep-0", &sample_input("offers", "keep-0", 999))
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revision"], json!(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_and_private_data_stay_local() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let secret_title = "Confidential draft about a zeolite membrane";
    let secret_note = "call Anna before Friday about the zeolite licence";
    let mut draft = offer("dr-1", 1, secret_title, "AT22", "26.11");
    draft["private"] = json!({"contact_person": "Anna Huber", "note": secret_note});

    let (status, body) = node.put("/drafts/offers/dr-1", &draft).await?;
    assert_eq!(status, 204, "{body}");
    let drafts = get_ok(&node, "/drafts/offers").await?;
    assert_eq!(drafts.as_array().map(Vec::len), Some(1));
    assert_eq!(drafts[0]["key"], json!("dr-1"));
    assert_eq!(drafts[0]["draft"]["body"], draft["body"]);
    assert_eq!(get_ok(&node, "/drafts/projects").await?, json!([]));
    // Not published: not listed, not readable, in no record.
    assert!(list_all(&node, "offers", "&status=all").await?.is_empty());
    assert_eq!(node.get("/offers/dr-1").await?.0, 404);
    let bundle = get_ok(&node, "/export").await?;
    assert!(bundle.get("local").is_none(), "local data exported unasked");
    assert_eq!(records_containing(&bundle, secret_title), 0);
    assert_eq!(records_containing(&bundle, secret_note), 0);
    // Only on request does a backup carry it.
    let local = get_ok(&node, "/export?local=true").await?;
    assert!(local["local"].to_string().contains(secret_title));

    // Publishing the draft signs the public body; the draft is gone, private data stays local.
    let (status, published) =
        send(node.request(Method::POST, "/drafts/offers/dr-1/publish")).await?;
    assert_eq!(status, 201, "{published}");
    assert_eq!(published["key"], json!("dr-1"));
    assert_eq!(published["revision"], json!(1));
    assert_eq!(published["body"], draft["body"]);
    assert_eq!(published["private"], draft["private"]);
    assert_eq!(get_ok(&node, "/drafts/offers").await?, json!([]));
    let (status, body) = send(node.request(Method::POST, "/drafts/offers/dr-1/publish")).await?;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], json!("draft.not_found"));
    let bundle = get_ok(&node, "/export").await?;
    assert_eq!(records_containing(&bundle, secret_title), 1);
    assert_eq!(records_containing(&bundle, secret_note), 0);
    assert_eq!(records_containing(&bundle, "Anna Huber"), 0);
    let record = get_ok(
        &node,
        &format!("/records/{}", published["id"].as_str().context("id")?),
    )
    .await?;
    assert!(!record["content"].to_string().contains("Anna Huber"));
    assert!(!record["content"].to_string().contains(secret_note));

    // A draft of an existing item publishes as its next revision.
    let mut next = offer("dr-1", 2, "Revised title", "AT22", "26.11");
    next["private"] = json!({"note": "second thoughts"});
    let (status, _) = node.put("/drafts/offers/dr-1", &next).await?;
    assert_eq!(status, 204);
    let (status, published) =
        send(node.request(Method::POST, "/drafts/offers/dr-1/publish")).await?;
    assert_eq!(status, 201, "{published}");
    assert_eq!(published["revision"], json!(2));
    assert_eq!(published["body"]["title"], json!("Revised title"));
    // Deleting a draft.
    let (status, body) = node
        .put(
            "/drafts/offers/dr-2",
            &offer("dr-2", 3, "Another", "AT22", "26.11"),
        )
        .await?;
    assert_eq!(status, 204, "{body}");
    let (status, _) = send(node.request(Method::DELETE, "/drafts/offers/dr-2")).await?;
    assert_eq!(status, 204);
    assert_eq!(get_ok(&node, "/drafts/offers").await?, json!([]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_newest_first_and_filter() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let mut published = BTreeSet::new();
    for i in 0..25u64 {
        let key = format!("offer-{i:02}");
        let title = if i % 5 == 0 {
            format!("Wireless SENSOR platform {i}")
        } else {
            format!("Dairy quality label {i}")
        };
        let nuts = if i % 3 == 0 { "SI04" } else { "AT22" };
        let nace = if i % 2 == 0 { "62.10" } else { "26.11" };
        let (status, body) = node
            .post("/offers", &offer(&key, i, &title, nuts, nace))
            .await?;
        assert_eq!(status, 201, "{body}");
        published.insert(key);
    }

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/offers?limit=10&cursor={c}"),
            None => "/offers?limit=10".to_string(),
        };
        let page = get_ok(&node, &path).await?;
        pages += 1;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        seen.extend(items.clone());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 10, "a page with a next cursor is full");
                cursor = Some(next.to_string());
            }
            None => {
                assert_eq!(items.len(), 5, "last page");
                break;
            }
        }
        ensure!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let distinct: BTreeSet<String> = keys(&seen).into_iter().collect();
    assert_eq!(distinct, published);
    let times: Vec<u64> = seen
        .iter()
        .map(|i| i["created_at_ms"].as_u64().unwrap_or_default())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {times:?}"
    );
    // The newest item comes first.
    assert_eq!(seen[0]["key"], json!("offer-24"));

    let matching = |pred: &dyn Fn(u64) -> bool| -> BTreeSet<String> {
        (0..25u64)
            .filter(|i| pred(*i))
            .map(|i| format!("offer-{i:02}"))
            .collect()
    };
    let filtered = |query: &'static str| {
        let node = &node;
        async move {
            let items = list_all(node, "offers", query).await?;
            anyhow::Ok(keys(&items).into_iter().collect::<BTreeSet<String>>())
        }
    };
    assert_eq!(filtered("&nuts=SI").await?, matching(&|i| i % 3 == 0));
    assert_eq!(filtered("&nuts=AT2").await?, matching(&|i| i % 3 != 0));
    assert_eq!(filtered("&nuts=DE").await?, BTreeSet::new());
    assert_eq!(filtered("&nace=62").await?, matching(&|i| i % 2 == 0));
    assert_eq!(filtered("&nace=26.11").await?, matching(&|i| i % 2 == 1));
    assert_eq!(filtered("&text=sensor").await?, matching(&|i| i % 5 == 0));
    assert_eq!(
        filtered("&text=SeNsOr%20PLAT").await?,
        matching(&|i| i % 5 == 0)
    );
    assert_eq!(
        filtered("&nuts=AT&nace=62&text=dairy").await?,
        matching(&|i| i % 3 != 0 && i % 2 == 0 && i % 5 != 0)
    );
    // Filters page too: 9 SI offers in pages of 4.
    let page = get_ok(&node, "/offers?nuts=SI&limit=4").await?;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(4));
    let next = page["next"].as_str().context("next")?;
    let page2 = get_ok(&node, &format!("/offers?nuts=SI&limit=4&cursor={next}")).await?;
    assert_eq!(page2["items"].as_array().map(Vec::len), Some(4));
    assert!(
        keys(page["items"].as_array().context("items")?)
            .iter()
            .all(|k| !keys(page2["items"].as_array().unwrap()).contains(k))
    );
    // By region: all are this node's own.
    let region = get_ok(&node, "/status").await?["region"]
        .as_str()
        .context("region")?
        .to_string();
    assert_eq!(filtered_region(&node, &region).await?, 25);
    assert_eq!(filtered_region(&node, &"ab".repeat(32)).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_last_page_has_no_next_cursor() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    for i in 0..10u64 {
        let key = format!("full-{i}");
        let input = offer(&key, i, "Title", "AT22", "26.11");
        assert_eq!(node.post("/offers", &input).await?.0, 201);
    }
    let mut cursor: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let path = match &cursor {
            Some(c) => format!("/offers?limit=5&cursor={c}"),
            None => "/offers?limit=5".to_string(),
        };
        let page = get_ok(&node, &path).await?;
        sizes.push(page["items"].as_array().map_or(0, Vec::len));
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
        ensure!(sizes.len() < 10, "pagination does not end");
    }
    assert_eq!(sizes, vec![5, 5], "the second page of five is the last one");
    Ok(())
}

async fn filtered_region(node: &TestNode, region: &str) -> anyhow::Result<usize> {
    Ok(list_all(node, "offers", &format!("&region={region}"))
        .await?
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_every_mutating_call() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    assert_eq!(get_ok(&node, "/audit").await?, json!([]));
    let input = sample_input("offers", "au-1", 1);
    let mut expected: Vec<(&str, String, &str)> = Vec::new();

    assert_eq!(node.post("/offers", &input).await?.0, 201);
    expected.push(("publish", "offers/au-1".into(), "ok"));
    assert_eq!(node.post("/offers", &input).await?.0, 409);
    expected.push(("publish", "offers/au-1".into(), "item.exists"));
    let malformed = node
        .request(Method::POST, "/offers")
        .header("content-type", "application/json")
        .body("{\"key\":");
    assert_eq!(send(malformed).await?.0, 400);
    expected.push(("publish", "offers".into(), "request.malformed_json"));
    let mut bad_nuts = sample_input("offers", "au-2", 2);
    bad_nuts["body"]["nuts"] = json!("ZZ99");
    assert_eq!(node.post("/offers", &bad_nuts).await?.0, 422);
    expected.push(("publish", "offers/au-2".into(), "code.unknown_nuts"));
    assert_eq!(
        node.put("/offers/au-1", &sample_input("offers", "au-1", 3))
            .await?
            .0,
        200
    );
    expected.push(("revise", "offers/au-1".into(), "ok"));
    assert_eq!(
        node.put("/offers/nope", &sample_input("offers", "nope", 3))
            .await?
            .0,
        404
    );
    expected.push(("revise", "offers/nope".into(), "item.not_found"));
    assert_eq!(
        node.post("/offers/au-1/withdraw", &json!({"reason": "done"}))
            .await?
            .0,
        200
    );
    expected.push(("withdraw", "offers/au-1".into(), "ok"));
    assert_eq!(node.post("/offers/au-1/withdraw", &json!({})).await?.0, 409);
    expected.push(("withdraw", "offers/au-1".into(), "item.withdrawn"));
    let draft = sample_input("projects", "pd-1", 4);
    assert_eq!(node.put("/drafts/projects/pd-1", &draft).await?.0, 204);
    expected.push(("draft.save", "drafts/projects/pd-1".into(), "ok"));
    assert_eq!(
        send(node.request(Method::DELETE, "/drafts/projects/pd-1"))
            .await?
            .0,
        204
    );
    expected.push(("draft.delete", "drafts/projects/pd-1".into(), "ok"));
    assert_eq!(
        send(node.request(Method::DELETE, "/drafts/projects/pd-1"))
            .await?
            .0,
        404
    );
    expected.push((
        "draft.delete",
        "drafts/projects/pd-1".into(),
        "draft.not_found",
    ));
    assert_eq!(node.put("/drafts/projects/pd-1", &draft).await?.0, 204);
    expected.push(("draft.save", "drafts/projects/pd-1".into(), "ok"));
    assert_eq!(
        send(node.request(Method::POST, "/drafts/projects/pd-1/publish"))
            .await?
            .0,
        201
    );
    expected.push(("draft.publish", "drafts/projects/pd-1".into(), "ok"));
    let (status, bundle) = node.get("/export").await?;
    assert_eq!(status, 200);
    let held = bundle["records"].as_array().map_or(0, Vec::len);
    expected.push(("export", format!("{held} records"), "ok"));
    assert_eq!(node.post("/import", &bundle).await?.0, 200);
    expected.push(("import", format!("{held} records"), "ok"));
    let mut foreign = bundle.clone();
    foreign["federation"] = json!("00".repeat(32));
    assert_eq!(node.post("/import", &foreign).await?.0, 422);
    expected.push(("import", "bundle".into(), "import.wrong_federation"));

    let log = get_ok(&node, "/audit?limit=1000").await?;
    let log = log.as_array().context("audit is a list")?;
    let got: Vec<(String, String, String)> = log
        .iter()
        .map(|e| {
            let result = e["result"].as_str().unwrap_or_default();
            // Successes name the record made: "ok <id>"; keep the verdict only.
            let verdict = result.split(' ').next().unwrap_or_default();
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["target"].as_str().unwrap_or_default().to_string(),
                verdict.to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, t, r)| (a.to_string(), t.clone(), r.to_string()))
        .collect();
    assert_eq!(got, want);
    let seqs: Vec<u64> = log.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=want.len() as u64).collect::<Vec<_>>());
    let times: Vec<u64> = log.iter().filter_map(|e| e["at_ms"].as_u64()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    let actor = log[0]["actor"].as_str().context("actor")?;
    assert!(actor.starts_with("token:"));
    assert!(!actor.contains(&node.token), "the token itself is logged");
    assert!(log.iter().all(|e| e["actor"] == json!(actor)));
    // Published records are named by id.
    let first_result = log[0]["result"].as_str().context("result")?;
    assert_eq!(first_result.len(), "ok ".len() + 64);

    // Paging with after=.
    let mut paged = Vec::new();
    let mut after = 0u64;
    loop {
        let page = get_ok(&node, &format!("/audit?after={after}&limit=4")).await?;
        let entries = page.as_array().cloned().unwrap_or_default();
        if entries.is_empty() {
            break;
        }
        assert!(entries.len() <= 4);
        after = entries
            .last()
            .and_then(|e| e["seq"].as_u64())
            .context("seq")?;
        paged.extend(entries);
    }
    assert_eq!(&paged, log);
    assert_eq!(get_ok(&node, "/audit?after=9999").await?, json!([]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_what_was_published_and_refused() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let status = get_ok(&node, "/status").await?;
    assert_eq!(status["region_name"], json!("Steiermark"));
    assert_eq!(status["nuts"], json!("AT22"));
    let region = status["region"].as_str().context("region")?.to_string();
    assert_eq!(status["federation"].as_str().map(str::len), Some(64));
    assert_eq!(
        status["members"],
        json!([{"region": region, "name": "Steiermark"}])
    );
    assert_eq!(status["pending"], json!(0));
    assert_eq!(status["peers"], json!([]));
    assert_eq!(
        status["records"],
        json!({"cooperation": 0, "knowledge": 0, "organisation": 0, "project": 0})
    );
    // The charter and the region profile.
    assert_eq!(status["sync_set"], json!(2));
    assert_eq!(status["rejections"], json!({}));
    assert!(status["store_bytes"].as_u64().unwrap_or(0) > 0);

    for (i, (collection, _)) in COLLECTIONS.iter().enumerate() {
        for n in 0..=i {
            let input = sample_input(collection, &format!("st-{n}"), (i * 10 + n) as u64);
            assert_eq!(node.post(&format!("/{collection}"), &input).await?.0, 201);
        }
    }
    assert_eq!(
        node.post("/knowledge/st-0/withdraw", &json!({})).await?.0,
        200
    );
    let status = get_ok(&node, "/status").await?;
    assert_eq!(
        status["records"],
        json!({"organisation": 1, "project": 2, "cooperation": 3, "knowledge": 3})
    );
    // Ten winners (one a tombstone) beside the charter and the profile.
    assert_eq!(status["sync_set"], json!(12));
    // A search makes this node's own publishes searchable first: afterwards nothing waits for
    // the indexer, and the status counts the commit.
    get_ok(&node, "/search?q=innovation").await?;
    let searched = get_ok(&node, "/status").await?;
    assert_eq!(searched["search"]["backlog"], json!(0), "{searched}");
    assert!(
        searched["search"]["commits"].as_u64().unwrap_or(0) >= 1,
        "{searched}"
    );

    let mut bad = sample_input("offers", "st-bad", 77);
    bad["body"]["nuts"] = json!("ZZ99");
    let (code, body) = node.post("/offers", &bad).await?;
    assert_eq!(code, 422);
    assert_eq!(body["error"]["code"], json!("code.unknown_nuts"));
    let mut bad = sample_input("organisations", "st-bad", 78);
    bad["body"]["nace"] = json!(["00.01"]);
    assert_eq!(node.post("/organisations", &bad).await?.0, 422);
    assert_eq!(node.post("/organisations", &bad).await?.0, 422);
    let after = get_ok(&node, "/status").await?;
    assert_eq!(
        after["rejections"],
        json!({"code.unknown_nuts": 1, "code.unknown_nace": 2})
    );
    assert_eq!(after["records"], status["records"]);
    assert_eq!(after["state_digest"], status["state_digest"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    let doc = get_ok(&node, "/openapi.json").await?;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().context("paths")?;
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().context("path item")?.keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                routes.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "GET /api/v1/health",
        "GET /api/v1/status",
        "GET /api/v1/peers",
        "GET /api/v1/openapi.json",
        "GET /api/v1/{collection}",
        "POST /api/v1/{collection}",
        "GET /api/v1/{collection}/{key}",
        "PUT /api/v1/{collection}/{key}",
        "POST /api/v1/{collection}/{key}/withdraw",
        "GET /api/v1/drafts/{collection}",
        "PUT /api/v1/drafts/{collection}/{key}",
        "DELETE /api/v1/drafts/{collection}/{key}",
        "POST /api/v1/drafts/{collection}/{key}/publish",
        "GET /api/v1/records/{id}",
        "GET /api/v1/audit",
        "POST /api/v1/keys/rotate",
        "GET /api/v1/export",
        "POST /api/v1/import",
        "GET /api/v1/search",
        "GET /api/v1/offers/{key}/matches",
        "GET /api/v1/saved-searches",
        "POST /api/v1/saved-searches",
        "DELETE /api/v1/saved-searches/{id}",
        "GET /api/v1/notifications",
        "POST /api/v1/notifications/read",
        "GET /api/v1/federation/overview",
        "GET /api/v1/federation/potential",
        "GET /api/v1/members",
        "GET /api/v1/members/pending",
        "POST /api/v1/members/{region}/endorse",
        "POST /api/v1/members/{region}/decline",
        "POST /api/v1/members/{region}/remove",
        "POST /api/v1/federation/leave",
        "POST /api/v1/federation/invitations",
        "GET /api/v1/interests",
        "POST /api/v1/interests",
        "GET /api/v1/interests/{id}",
        "POST /api/v1/interests/{id}/accept",
        "POST /api/v1/interests/{id}/decline",
        "POST /api/v1/interests/{id}/outcome",
        "POST /api/v1/blobs",
        "GET /api/v1/blobs/{hash}",
        "GET /api/v1/blobs/{hash}/status",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(routes, expected);

    // Every documented route is served (no "no such route", no 405).
    for route in &routes {
        let (method, path) = route.split_once(' ').context("route")?;
        let path = path
            .replace("{collection}", "offers")
            .replace("{key}", "no-such-key")
            .replace("{id}", &"00".repeat(32))
            .replace("{region}", &"00".repeat(32))
            .replace("{hash}", &"00".repeat(32));
        let path = path.strip_prefix("/api/v1").context("prefix")?;
        let method: Method = method.parse()?;
        let (status, body) = send(node.request(method, path).json(&json!({}))).await?;
        assert_ne!(status, 405, "{route} not served");
        assert_ne!(body["error"]["code"], json!("request.no_route"), "{route}");
    }
    let (status, body) = node.get("/no/such/route").await?;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], json!("request.no_route"));

    // Schemas for the API's and the protocol's types.
    let schemas = doc["components"]["schemas"]
        .as_object()
        .context("components.schemas")?;
    for name in [
        "Cooperation",
        "Organisation",
        "Project",
        "Knowledge",
        "ItemView",
        "ItemInput",
        "ItemPage",
        "ErrorBody",
        "Status",
        "Bundle",
        "ImportReport",
        "AuditEntry",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    assert!(
        schemas["Cooperation"]["properties"]
            .as_object()
            .is_some_and(|p| p.contains_key("partner_sought") && p.contains_key("nuts")),
        "{}",
        schemas["Cooperation"]
    );
    // Every reference resolves.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap_or_default();
        let name = target
            .strip_prefix("#/components/schemas/")
            .with_context(|| format!("unexpected $ref {target}"))?;
        assert!(schemas.contains_key(name), "dangling $ref {target}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Health needs no token; everything else does.
    assert_eq!(paths["/api/v1/health"]["get"]["security"], json!([{}]));
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    Ok(())
}

/// The content of a new offer by `author` for `federation`, to sign in a test.
fn offer_content(
    author: kim_protocol::PublicKey,
    federation: kim_protocol::FederationId,
    item: &str,
    seed: u64,
) -> anyhow::Result<Content> {
    let body: Cooperation =
        serde_json::from_value(sample_input("offers", item, seed)["body"].clone())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    Ok(Content {
        format: FORMAT_VERSION,
        federation,
        author,
        kind: Kind::Cooperation,
        key: item.to_string(),
        revision: 1,
        created_at_ms: now,
        expires_at_ms: Some(now + 86_400_000),
        body: Body::Cooperation(body),
    })
}

async fn state(node: &TestNode) -> anyhow::Result<Value> {
    let status = get_ok(node, "/status").await?;
    let mut items = BTreeMap::new();
    for (collection, _) in COLLECTIONS {
        items.insert(collection, list_all(node, collection, "&status=all").await?);
    }
    Ok(json!({
        "digest": status["state_digest"],
        "sync_set": status["sync_set"],
        "records": status["records"],
        "items": items,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_verifies_everything_before_accepting_anything() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    for (i, (collection, _)) in COLLECTIONS.iter().enumerate() {
        let input = sample_input(collection, "bk-1", 300 + i as u64);
        assert_eq!(node.post(&format!("/{collection}"), &input).await?.0, 201);
    }
    assert_eq!(
        node.put(
            "/drafts/offers/bk-draft",
            &sample_input("offers", "bk-draft", 9)
        )
        .await?
        .0,
        204
    );
    let bundle = get_ok(&node, "/export?local=true").await?;
    assert_eq!(bundle["format"], json!("kim-bundle/1"));
    let records = bundle["records"].as_array().context("records")?.clone();
    assert_eq!(records.len(), 6, "charter, profile and four items");
    let local = bundle["local"].as_object().context("local")?;
    assert!(
        local.contains_key("draft/cooperation/bk-draft"),
        "{local:?}"
    );
    assert!(local.contains_key("private/cooperation/bk-1"), "{local:?}");
    // In id order.
    let ids: Vec<String> = records
        .iter()
        .map(|r| {
            let bytes =
                kim_protocol::bytes::from_hex(r.as_str().unwrap_or_default()).unwrap_or_default();
            kim_protocol::envelope::record_id(&bytes).to_hex()
        })
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let before = state(&node).await?;

    // Re-importing the node's own backup changes nothing.
    let (status, report) = node.post("/import", &bundle).await?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report,
        json!({"stored": 0, "duplicates": 6, "older": 0, "local_values": local.len()})
    );
    assert_eq!(state(&node).await?, before);

    // A valid new record ahead of a tampered one: the whole bundle is refused.
    let data = DataDir::new(node.data_dir());
    let key = data.load_key()?;
    let first = Record::decode(
        kim_protocol::bytes::from_hex(records[0].as_str().context("hex")?).context("hex")?,
    )?;
    let federation = first.content.federation;
    let fresh = Record::sign(
        &offer_content(public_key(&key), federation, "bk-fresh", 40)?,
        &key,
    )?;
    for position in [0usize, 3, 5] {
        let mut tampered = bundle.clone();
        tampered["local"] = Value::Null;
        let list = tampered["records"].as_array_mut().context("records")?;
        let hex = list[position].as_str().context("hex")?.to_string();
        // Flip one byte in the middle of the record.
        let mut bytes = kim_protocol::bytes::from_hex(&hex).context("hex")?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        list[position] = json!(kim_protocol::bytes::to_hex(&bytes));
        list.insert(0, json!(kim_protocol::bytes::to_hex(&fresh.bytes)));
        let (status, body) = node.post("/import", &tampered).await?;
        assert_eq!(status, 422, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("record {} ", position + 1)),
            "position missing: {message}"
        );
        assert!(
            body["error"]["code"]
                .as_str()
                .is_some_and(|c| c.starts_with("record.") || c.starts_with("signature.")),
            "{body}"
        );
        assert_eq!(
            state(&node).await?,
            before,
            "tampered bundle changed the store"
        );
    }

    // A record by a key that is no member of the federation, validly signed: refused whole.
    let stranger = signing_key(&mut ChaCha8Rng::seed_from_u64(7));
    let intruder = Record::sign(
        &offer_content(public_key(&stranger), federation, "bk-intruder", 41)?,
        &stranger,
    )?;
    let mut mixed = bundle.clone();
    mixed["local"] = Value::Null;
    let list = mixed["records"].as_array_mut().context("records")?;
    list.insert(0, json!(kim_protocol::bytes::to_hex(&fresh.bytes)));
    list.push(json!(kim_protocol::bytes::to_hex(&intruder.bytes)));
    let (status, body) = node.post("/import", &mixed).await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["code"],
        json!("auth.unknown_author"),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("record 7 "), "{message}");
    assert_eq!(state(&node).await?, before, "half-imported");
    assert_eq!(node.get("/offers/bk-fresh").await?.0, 404);

    // The same bundle without the intruder imports the new record.
    let list = mixed["records"].as_array_mut().context("records")?;
    list.pop();
    let (status, report) = node.post("/import", &mixed).await?;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["stored"], json!(1));
    assert_eq!(report["duplicates"], json!(6));
    assert_eq!(
        get_ok(&node, "/offers/bk-fresh").await?["revision"],
        json!(1)
    );

    // Another federation's bundle, as a whole or smuggled under this federation's name.
    let other = TestNode::start_with("Wien", "AT13").await?;
    let foreign = get_ok(&other, "/export").await?;
    let after_fresh = state(&node).await?;
    let (status, body) = node.post("/import", &foreign).await?;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], json!("import.wrong_federation"));
    let mut smuggled = foreign.clone();
    smuggled["federation"] = bundle["federation"].clone();
    let (status, body) = node.post("/import", &smuggled).await?;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], json!("record.wrong_federation"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("record 0 ")),
        "{body}"
    );
    assert_eq!(state(&node).await?, after_fresh);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_item_never_equivocate() -> anyhow::Result<()> {
    let node = TestNode::start().await?;
    // Eight publishes of one key at once: one wins, the others are told it exists.
    let mut tasks = Vec::new();
    for seed in 0..8u64 {
        let request = node
            .request(Method::POST, "/offers")
            .json(&sample_input("offers", "race", seed));
        tasks.push(tokio::spawn(send(request)));
    }
    let mut created = 0;
    for task in tasks {
        let (status, body) = task.await??;
        match status {
            201 => created += 1,
            409 => assert_eq!(body["error"]["code"], json!("item.exists")),
            other => panic!("publish race: {other} {body}"),
        }
    }
    assert_eq!(created, 1);
    // Eight revisions at once: each gets its own revision number.
    let mut tasks = Vec::new();
    for seed in 10..18u64 {
        let request = node
            .request(Method::PUT, "/offers/race")
            .json(&sample_input("offers", "race", seed));
        tasks.push(tokio::spawn(send(request)));
    }
    let mut revisions = BTreeSet::new();
    for task in tasks {
        let (status, body) = task.await??;
        assert_eq!(status, 200, "{body}");
        revisions.insert(body["revision"].as_u64().context("revision")?);
    }
    assert_eq!(revisions, (2..=9).collect::<BTreeSet<u64>>());
    // Only the winner is held beside the charter and the profile: no equivocation evidence.
    let status = get_ok(&node, "/status").await?;
    assert_eq!(status["sync_set"], json!(3), "{status}");
    assert_eq!(get_ok(&node, "/offers/race").await?["revision"], json!(9));
    Ok(())
}
