//! Key rotation across whole nodes: a region hands over to a new key through the HTTP API
//! (as `kim keys rotate` does); every node follows the handover, the region's new records, and
//! revisions and withdrawals of its older items, count for the same region everywhere, and a record the old key
//! signs after the handover is refused by every node, on every path, and stored nowhere.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context as _, bail};
use kim_node::ingest::{Source, system_now_ms};
use kim_node::service::{Collection, ItemInput};
use kim_protocol::envelope::Record;
use kim_protocol::{PublicKey, RecordId, samples};
use kim_tests::cluster::{Cluster, ClusterOptions};
use kim_tests::sample_input;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(60);

/// Polls `check` every 50 ms until it holds or `timeout` passes.
async fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what}: not after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether every node holds record `id`.
fn everywhere(c: &Cluster, id: &RecordId) -> anyhow::Result<bool> {
    for i in c.all() {
        if c.node(i).service()?.ingest().store().record(id)?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_key_is_followed_everywhere_and_the_old_key_is_refused_after_the_handover()
-> anyhow::Result<()> {
    let mut c = Cluster::start(3, ClusterOptions::default()).await?;
    c.connect_all().await?;
    c.wait_gossip_mesh(1, CONVERGE).await?;
    let region = c.node(0).region();
    let old_key = c.node(0).founder.region_key.clone();
    let before = c
        .publish(0, "offers", sample_input("offers", "before-rotation", 1))
        .await?;
    let doomed = c
        .publish(0, "offers", sample_input("offers", "withdrawn-later", 5))
        .await?;
    c.wait_converged(&c.all(), CONVERGE).await?;

    // Node 0 rotates through its API, as `kim keys rotate` does.
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/keys/rotate", c.node(0).api_base()?))
        .bearer_auth(c.node(0).token()?)
        .json(&json!({"reason": "yearly rotation"}))
        .send()
        .await?;
    let status = response.status();
    let reply: Value = response.json().await?;
    assert_eq!(status, 200, "{reply}");
    let new_key = PublicKey::from_hex(reply["new_key"].as_str().context("new_key")?)
        .context("new_key hex")?;
    assert_eq!(reply["old_key"], json!(region.to_hex()));
    assert_eq!(reply["region"], json!(region.to_hex()));
    assert_ne!(new_key, region);
    let handover = reply["created_at_ms"].as_u64().context("created_at_ms")?;
    let rotation =
        RecordId::from_hex(reply["record"].as_str().context("record")?).context("record hex")?;

    // The key files: the new key in place, the old one kept, nothing half done.
    let data = &c.node(0).data;
    assert_eq!(
        data.load_key()?.verifying_key().to_bytes(),
        new_key.0,
        "region.key is not the new key"
    );
    let retired = std::path::PathBuf::from(reply["retired_key_file"].as_str().unwrap());
    assert!(retired.starts_with(&data.root), "{}", retired.display());
    assert_eq!(std::fs::read(&retired)?, old_key.to_bytes());
    assert!(!data.root.join("region.key.next").exists());
    let audit = c
        .node(0)
        .service()?
        .ingest()
        .store()
        .audit_list(None, 1000)?;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "keys.rotate" && e.result.starts_with("ok")),
        "{audit:?}"
    );

    // Every node follows the handover: region 0 signs with the new key now.
    wait_until("every node follows the rotation", CONVERGE, || {
        for i in c.all() {
            let membership = c.node(i).service()?.ingest().membership();
            let member = membership.members.get(&region).context("region 0 left")?;
            if member.key != new_key {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    for i in c.all() {
        let membership = c.node(i).service()?.ingest().membership();
        assert_eq!(membership.members.len(), 3, "node {i}");
        assert_eq!(membership.region_of(&new_key), Some(region), "node {i}");
        assert!(everywhere(&c, &rotation)?);
    }

    // A new offer is signed with the new key, counts for region 0 and reaches everyone.
    let after = c
        .publish(0, "offers", sample_input("offers", "after-rotation", 2))
        .await?;
    assert_eq!(after.author, new_key);
    assert_eq!(after.region, region);
    // Held by id is not yet the item's winner: a write set stores record pointers before
    // item entries, so a reader in between sees the record and not yet the item. Wait for
    // the item itself.
    wait_until("the new offer reaches every node", CONVERGE, || {
        Ok(everywhere(&c, &after.id)?
            && c.all().into_iter().all(|i| {
                c.node(i).service().is_ok_and(|s| {
                    s.get(Collection::Offers, &region, "after-rotation")
                        .is_ok_and(|seen| seen.id == after.id)
                })
            }))
    })
    .await?;
    for i in c.all() {
        let seen = c
            .node(i)
            .service()?
            .get(Collection::Offers, &region, "after-rotation")?;
        assert_eq!(seen.id, after.id, "node {i}");
        assert_eq!(seen.region, region, "node {i}");
    }

    // The offer published before the rotation is revised with the new key, and the revision
    // wins everywhere.
    let input: ItemInput = serde_json::from_value(sample_input("offers", "before-rotation", 3))?;
    let revised = c
        .node(0)
        .service()?
        .revise(Collection::Offers, "before-rotation", input)
        .await?;
    assert_eq!(revised.revision, before.revision + 1);
    assert_eq!(revised.author, new_key);
    wait_until("the revision wins on every node", CONVERGE, || {
        for i in c.all() {
            let seen = c
                .node(i)
                .service()?
                .get(Collection::Offers, &region, "before-rotation")?;
            if seen.id != revised.id {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;

    // And another one is withdrawn with the new key: erased on every node.
    let tombstone = c
        .node(0)
        .service()?
        .withdraw(
            Collection::Offers,
            "withdrawn-later",
            "Programme closed".into(),
        )
        .await?;
    assert_eq!(tombstone.revision, doomed.revision + 1);
    assert_eq!(tombstone.author, new_key);
    wait_until("the withdrawal wins on every node", CONVERGE, || {
        for i in c.all() {
            let seen = c
                .node(i)
                .service()?
                .get(Collection::Offers, &region, "withdrawn-later")?;
            if seen.status != "withdrawn" || seen.id != tombstone.id {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;

    // Records the old key signs after the handover: a new offer and a revision that would
    // outrank the new key's. Every node refuses them on every path, and none stores them.
    let now = system_now_ms().max(handover);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut stolen =
        samples::synthetic_cooperation_content(&mut rng, c.federation(), region, 4_000_000, now);
    stolen.key = "after-handover".into();
    stolen.created_at_ms = now;
    stolen.expires_at_ms = Some(now + 30 * 86_400_000);
    let stolen = Record::sign(&stolen, &old_key)?;
    let mut outrank =
        samples::synthetic_cooperation_content(&mut rng, c.federation(), region, 4_000_001, now);
    outrank.key = "before-rotation".into();
    outrank.revision = revised.revision + 5;
    outrank.created_at_ms = now;
    outrank.expires_at_ms = Some(now + 30 * 86_400_000);
    let outrank = Record::sign(&outrank, &old_key)?;
    for record in [&stolen, &outrank] {
        // Node 0 (its own store), node 1 as if it came by gossip, node 2 by sync.
        for (i, source) in [(0, Source::Api), (1, Source::Gossip), (2, Source::Sync)] {
            let err = c
                .node(i)
                .service()?
                .ingest()
                .ingest_one(record.bytes.clone(), source)
                .await
                .expect_err("a record by the retired key was accepted");
            assert_eq!(err.code(), "auth.retired_key", "node {i}: {err}");
        }
        // And through a backup import over HTTP.
        for i in c.all() {
            let bundle = json!({
                "format": "kim-bundle/1",
                "federation": c.federation().to_hex(),
                "exported_at_ms": now,
                "records": [kim_protocol::bytes::to_hex(&record.bytes)],
            });
            let response = reqwest::Client::new()
                .post(format!("{}/api/v1/import", c.node(i).api_base()?))
                .bearer_auth(c.node(i).token()?)
                .json(&bundle)
                .send()
                .await?;
            let status = response.status();
            let reply: Value = response.json().await?;
            assert_eq!(status, 422, "node {i}: {reply}");
            assert_eq!(
                reply["error"]["code"],
                json!("auth.retired_key"),
                "node {i}"
            );
        }
    }
    // Give gossip and sync time to carry anything that slipped through, then look.
    c.wait_converged(&c.all(), CONVERGE).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in c.all() {
        let node = c.node(i).service()?;
        for record in [&stolen, &outrank] {
            assert!(
                node.ingest().store().record(&record.id)?.is_none(),
                "node {i} stored a record by the retired key"
            );
        }
        assert!(
            node.ingest().rejections().get("auth.retired_key").copied() >= Some(2),
            "node {i}: {:?}",
            node.ingest().rejections()
        );
        let seen = node.get(Collection::Offers, &region, "before-rotation")?;
        assert_eq!(seen.id, revised.id, "node {i}: the old key's revision won");
        assert!(
            node.get(Collection::Offers, &region, "after-handover")
                .is_err(),
            "node {i} shows the old key's offer"
        );
    }

    // A rotation interrupted before its record was stored leaves region.key.next behind: the
    // restarted node deletes it and keeps signing with region.key. After the restart node 0
    // signs with the new key (read from region.key) for the same region.
    c.stop(0).await?;
    let stray = kim_node::founding::FounderSpec::generate("Stray", "AT22")?.region_key;
    kim_node::keys::KeyFiles::new(&c.node(0).data).write_next(&stray)?;
    c.restart(0).await?;
    assert!(!c.node(0).data.root.join("region.key.next").exists());
    assert_eq!(
        c.node(0).data.load_key()?.verifying_key().to_bytes(),
        new_key.0
    );
    assert_eq!(c.node(0).service()?.author_key(), new_key);
    assert_eq!(c.node(0).service()?.region(), region);
    c.wait_gossip_mesh(1, CONVERGE).await?;
    let later = c
        .publish(0, "offers", sample_input("offers", "after-restart", 4))
        .await?;
    assert_eq!(later.author, new_key);
    wait_until(
        "the offer after the restart reaches every node",
        CONVERGE,
        || everywhere(&c, &later.id),
    )
    .await?;
    c.shutdown().await
}
