//! Replication between whole nodes over TCP loopback: gossip, sync, catch-up, partitions,
//! withdrawals, equivocation and replay. Each test builds its own federation with the
//! cluster harness.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use kim_tests::cluster::{Cluster, ClusterOptions};
use kim_tests::sample_input;

const CONVERGE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_by_gossip_alone() -> anyhow::Result<()> {
    let mut c = Cluster::start(
        5,
        ClusterOptions {
            gossip: true,
            sync_interval_secs: 0,
            sync_on_connect: false,
            discovery: false,
        },
    )
    .await?;
    c.connect_all().await?;
    c.wait_gossip_mesh(1, CONVERGE).await?;
    let before = c.node(0).digest()?;
    let item = c
        .publish(2, "offers", sample_input("offers", "gossip-only", 1))
        .await?;
    let digest = c.wait_converged(&c.all(), CONVERGE).await?;
    assert_eq!(digest.count(), before.count() + 1);
    for i in c.all() {
        let stats = c.node(i).running()?.net.stats().await?;
        assert_eq!(stats.sync_sessions_ok, 0, "node {i} synced");
        let held = c.node(i).service()?.ingest().store().record(&item.id)?;
        assert!(held.is_some(), "node {i} lacks the record");
    }
    c.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_by_sync_alone_over_a_line() -> anyhow::Result<()> {
    let mut c = Cluster::start(
        5,
        ClusterOptions {
            gossip: false,
            sync_interval_secs: 1,
            sync_on_connect: true,
            discovery: false,
        },
    )
    .await?;
    c.connect_line().await?;
    let before = c.node(4).digest()?;
    let item = c
        .publish(0, "offers", sample_input("offers", "sync-only", 2))
        .await?;
    let digest = c.wait_converged(&c.all(), CONVERGE).await?;
    assert_eq!(digest.count(), before.count() + 1);
    for i in c.all() {
        let stats = c.node(i).running()?.net.stats().await?;
        assert_eq!(stats.gossip_received, 0, "node {i} got gossip");
    }
    let far = c.node(4).service()?.ingest().store().record(&item.id)?;
    assert!(far.is_some(), "the far end of the line lacks the record");
    c.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_offline_while_10000_records_were_published_catches_up_after_restart()
-> anyhow::Result<()> {
    let mut c = Cluster::start(3, ClusterOptions::default()).await?;
    c.connect_all().await?;
    c.wait_converged(&c.all(), CONVERGE).await?;
    c.stop(2).await?;
    let records = c.synthetic_offers(0, 10_000, 7);
    assert_eq!(c.ingest(0, records).await?, 10_000);
    // Node 1 gets them by periodic sync while node 2 is down.
    let online = c.wait_converged(&[0, 1], CONVERGE).await?;
    let stale = {
        // Read the stopped node's store directly: it has none of them.
        let store = kim_node::store::Store::open(&c.node(2).data.store(), 16 << 20, false)?;
        let d = store.digest()?;
        drop(store);
        d
    };
    assert_eq!(online.count(), stale.count() + 10_000);
    let started = std::time::Instant::now();
    c.restart(2).await?;
    let caught_up = c.wait_converged(&c.all(), CONVERGE).await?;
    assert_eq!(caught_up, online);
    // They came by sync (pushed by the peers that dialled it, fetched by its own session),
    // not by gossip: bulk ingest announces nothing.
    let stats = c.node(2).running()?.net.stats().await?;
    assert!(stats.sync_records_new > 0, "{stats:?}");
    assert_eq!(stats.gossip_accepted, 0, "{stats:?}");
    eprintln!(
        "catch-up of 10,000 records after restart: {:?}",
        started.elapsed()
    );
    // Everything it caught up is searchable and listable like local data (once indexed:
    // records from the network are within seconds; the flush makes it now).
    let offers = c.node(2).service()?;
    offers.ingest().flush_search().await;
    let offers = offers
        .count_live(kim_node::service::Collection::Offers)
        .await?;
    let on_origin = c.node(0).service()?;
    on_origin.ingest().flush_search().await;
    let on_origin = on_origin
        .count_live(kim_node::service::Collection::Offers)
        .await?;
    assert_eq!(offers, on_origin);
    c.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_halves_publish_then_heal_to_one_digest() -> anyhow::Result<()> {
    let mut c = Cluster::start(4, ClusterOptions::default()).await?;
    c.connect_all().await?;
    c.wait_converged(&c.all(), CONVERGE).await?;
    c.partition(&[&[0, 1], &[2, 3]]).await?;
    for i in 0..4 {
        for n in 0..3 {
            let key = format!("split-{i}-{n}");
            c.publish(
                i,
                "offers",
                sample_input("offers", &key, (i * 10 + n) as u64),
            )
            .await?;
        }
    }
    let left = c.wait_converged(&[0, 1], CONVERGE).await?;
    let right = c.wait_converged(&[2, 3], CONVERGE).await?;
    assert_ne!(
        left, right,
        "the halves exchanged records across the partition"
    );
    assert_eq!(left.count(), right.count());
    // No connection crosses the partition.
    let across = c.node(0).running()?.net.peers().await?;
    assert!(
        across
            .iter()
            .all(|p| p.peer_id != c.node(2).peer_id && p.peer_id != c.node(3).peer_id)
    );
    c.heal().await?;
    let healed = c.wait_converged(&c.all(), CONVERGE).await?;
    assert_eq!(healed.count(), left.count() + 6);
    c.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withdrawal_older_revisions_and_equivocation_resolve_the_same_everywhere()
-> anyhow::Result<()> {
    use kim_node::ingest::{Accepted, Source};
    use kim_node::service::{Collection, ItemInput};
    use kim_protocol::envelope::Record;

    let mut c = Cluster::start(4, ClusterOptions::default()).await?;
    c.connect_line().await?;
    let first = c
        .publish(0, "offers", sample_input("offers", "to-withdraw", 3))
        .await?;
    c.wait_converged(&c.all(), CONVERGE).await?;
    let old_bytes = c
        .node(3)
        .service()?
        .ingest()
        .store()
        .record(&first.id)?
        .expect("replicated");
    let region = c.node(0).region();
    c.node(0)
        .service()?
        .withdraw(Collection::Offers, "to-withdraw", "partner found".into())
        .await?;
    let after = c.wait_converged(&c.all(), CONVERGE).await?;
    for i in c.all() {
        let view = c
            .node(i)
            .service()?
            .get(Collection::Offers, &region, "to-withdraw")?;
        assert_eq!(view.status, "withdrawn", "node {i}");
        assert!(view.body.is_null(), "node {i} still shows the body");
        let erased = c.node(i).service()?.ingest().store().record(&first.id)?;
        assert!(erased.is_none(), "node {i} keeps the withdrawn content");
    }
    // The old revision arriving again (by gossip or sync) changes nothing anywhere.
    let result = c
        .node(3)
        .service()?
        .ingest()
        .ingest_one(old_bytes.clone(), Source::Gossip)
        .await;
    assert!(matches!(result, Ok(Accepted::Older { .. })), "{result:?}");
    c.node(3).running()?.net.publish(old_bytes).await.ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.wait_converged(&c.all(), CONVERGE).await?, after);

    // Equivocation: region 0 signs two different revision-1 records for one item; each half
    // of the line sees a different one first. Everyone ends with the same winner.
    let founder = &c.node(0).founder;
    let mk = |title: &str| -> anyhow::Result<Vec<u8>> {
        let mut input: ItemInput = serde_json::from_value(sample_input("offers", "twice", 4))?;
        input.body["title"] = serde_json::json!(title);
        let body = Collection::Offers.body_from_json(input.body)?;
        let content = kim_protocol::envelope::Content {
            format: kim_protocol::envelope::FORMAT_VERSION,
            federation: c.federation(),
            author: founder.region(),
            kind: kim_protocol::envelope::Kind::Cooperation,
            key: "twice".into(),
            revision: 1,
            created_at_ms: kim_node::ingest::system_now_ms(),
            expires_at_ms: Some(kim_node::ingest::system_now_ms() + 86_400_000),
            body,
        };
        Ok(Record::sign(&content, &founder.region_key)?.bytes)
    };
    let a = mk("Version A of a twice-signed offer")?;
    let b = mk("Version B of a twice-signed offer")?;
    c.ingest(0, vec![a]).await?;
    c.ingest(3, vec![b]).await?;
    c.wait_converged(&c.all(), CONVERGE).await?;
    let winners: Vec<_> = c
        .all()
        .into_iter()
        .map(|i| {
            c.node(i)
                .service()
                .and_then(|s| Ok(s.get(Collection::Offers, &region, "twice")?.id))
        })
        .collect::<anyhow::Result<_>>()?;
    assert!(
        winners.windows(2).all(|w| w[0] == w[1]),
        "different winners: {winners:?}"
    );
    c.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_records_change_nothing_and_are_not_forwarded() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, ClusterOptions::default()).await?;
    c.connect_line().await?;
    c.wait_gossip_mesh(1, CONVERGE).await?;
    let item = c
        .publish(2, "knowledge", sample_input("knowledge", "replayed", 5))
        .await?;
    let digest = c.wait_converged(&c.all(), CONVERGE).await?;
    let bytes = c
        .node(0)
        .service()?
        .ingest()
        .store()
        .record(&item.id)?
        .expect("replicated");
    // Restarts empty gossipsub's seen-caches on 0 and 1, so node 1 really runs the replay
    // through its pipeline instead of dropping it as a duplicate message.
    c.restart(0).await?;
    c.restart(1).await?;
    c.wait_gossip_mesh(1, CONVERGE).await?;
    let middle_before = c.node(1).running()?.net.stats().await?;
    let far_before = c.node(2).running()?.net.stats().await?;
    c.node(0).running()?.net.publish(bytes.clone()).await?;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let middle = c.node(1).running()?.net.stats().await?;
        if middle.gossip_ignored > middle_before.gossip_ignored {
            assert_eq!(middle.gossip_accepted, middle_before.gossip_accepted);
            assert_eq!(middle.gossip_rejected, 0, "a replay is not an offence");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replay never reached node 1's pipeline: {middle:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several heartbeats in which node 1 could have forwarded or gossiped it to node 2.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let far = c.node(2).running()?.net.stats().await?;
    assert_eq!(
        far.gossip_received, far_before.gossip_received,
        "node 1 forwarded a replayed record"
    );
    // Replaying through sync moves nothing either.
    for (i, peer) in [(0, c.node(1).peer_id), (2, c.node(1).peer_id)] {
        let report = c.node(i).running()?.net.sync_with(peer).await?;
        assert_eq!(report.received_new, 0, "node {i}: {report:?}");
        assert_eq!(report.missing, 0, "node {i}: {report:?}");
    }
    assert_eq!(c.wait_converged(&c.all(), CONVERGE).await?, digest);
    c.shutdown().await
}
