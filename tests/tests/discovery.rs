//! Discovery: with it on, a node finds and connects to members it was not linked to; with it
//! off, a node keeps exactly the connections its operator (or a test) made.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use kim_node::libp2p::PeerId;
use kim_tests::cluster::{Cluster, ClusterOptions};

/// The peers node `i` is connected to.
async fn connected(c: &Cluster, i: usize) -> anyhow::Result<BTreeSet<PeerId>> {
    Ok(c.node(i)
        .running()?
        .net
        .peers()
        .await?
        .into_iter()
        .map(|p| p.peer_id)
        .collect())
}

fn options(discovery: bool) -> ClusterOptions {
    ClusterOptions {
        gossip: true,
        sync_interval_secs: 0,
        sync_on_connect: true,
        discovery,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_discovery_the_ends_of_a_line_find_each_other() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, options(true)).await?;
    c.connect_line().await?;
    let far = c.node(2).peer_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if connected(&c, 0).await?.contains(&far) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "node 0 never connected to node 2 through discovery"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await
}

/// Kademlia used to bootstrap by itself whenever a connected peer entered its routing table,
/// and its query dialled every node the peers knew: a line became a full mesh within about a
/// second although discovery was off. The test above shows how soon discovery connects the
/// ends; this one waits several times as long and sees no new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_discovery_a_line_stays_a_line() -> anyhow::Result<()> {
    let mut c = Cluster::start(3, options(false)).await?;
    c.connect_line().await?;
    c.wait_gossip_mesh(1, Duration::from_secs(60)).await?;
    // The line still carries records end to end.
    let published = c
        .publish(
            0,
            "offers",
            kim_tests::sample_input("offers", "along-the-line", 7),
        )
        .await?;
    c.wait_converged(&c.all(), Duration::from_secs(60)).await?;
    assert!(
        c.node(2)
            .service()?
            .ingest()
            .store()
            .record(&published.id)?
            .is_some()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (first, middle, last) = (c.node(0).peer_id, c.node(1).peer_id, c.node(2).peer_id);
    assert_eq!(connected(&c, 0).await?, BTreeSet::from([middle]));
    assert_eq!(connected(&c, 1).await?, BTreeSet::from([first, last]));
    assert_eq!(connected(&c, 2).await?, BTreeSet::from([middle]));
    c.shutdown().await
}
