//! Replication between whole nodes over TCP loopback: gossip, sync, catch-up, partitions,
//! withdrawals, equivocation and replay. Each test builds its own federation with the
//! cluster harness.

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
