//! A federation without a central operator, end to end in one process: four founders invite a
//! fifth region, it asks to join with limited rights, members endorse it, every node admits it
//! on its own, and it catches up on everything; removal and leaving take regions out again.

use std::time::{Duration, Instant};

use kim_node::ingest::Source;
use kim_protocol::RegionId;
use kim_tests::cluster::{Cluster, ClusterOptions};
use kim_tests::sample_input;

fn is_member(node: &kim_tests::cluster::ClusterNode, region: &RegionId) -> bool {
    node.service()
        .map(|s| s.ingest().membership().is_member(region))
        .unwrap_or(false)
}

fn is_pending(node: &kim_tests::cluster::ClusterNode, region: &RegionId) -> bool {
    node.service()
        .map(|s| {
            s.ingest()
                .membership()
                .pending
                .iter()
                .any(|p| p.candidate == *region)
        })
        .unwrap_or(false)
}

/// How many live offers node `i` holds.
fn offers(cluster: &Cluster, i: usize) -> u64 {
    cluster
        .node(i)
        .service()
        .and_then(|s| Ok(s.count_live(kim_node::service::Collection::Offers)?))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_founders_admit_a_newcomer_that_catches_up_on_10000_records() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(4, ClusterOptions::default()).await?;
    cluster.connect_all().await?;
    let existing = cluster.synthetic_offers(0, 10_000, 7);
    cluster.ingest(0, existing).await?;
    cluster
        .publish(1, "offers", sample_input("offers", "before-join", 1))
        .await?;
    cluster
        .wait_converged(&cluster.all(), Duration::from_secs(120))
        .await?;

    // A member invites; the newcomer joins with the token and starts as a candidate.
    let bootstrap = cluster
        .node(0)
        .p2p_addr
        .clone()
        .map(|a| a.to_string())
        .into_iter()
        .collect();
    let token = cluster
        .node(0)
        .service()?
        .invite(bootstrap, 7 * 86_400_000)?;
    let newcomer = cluster
        .add_candidate("Jadranska Hrvatska", "HR03", &token)
        .await?;
    let region = cluster.node(newcomer).region();

    // Every member sees the request (it was gossiped from the member that took it); the
    // candidate sees itself pending with 0 of 3 endorsements.
    cluster
        .wait_until(
            &[0, 1, 2, 3],
            Duration::from_secs(30),
            "request seen",
            |n| is_pending(n, &region),
        )
        .await?;
    let standing = kim_node::membership_ops::own_standing(
        &cluster.node(newcomer).service()?.ingest().membership(),
        &region,
        kim_node::ingest::system_now_ms(),
    );
    assert_eq!(standing.state, "pending");
    assert_eq!(
        (standing.endorsements, standing.required),
        (Some(0), Some(3))
    );

    // Limited rights: while a candidate, nothing of the federation's items reaches it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        offers(&cluster, newcomer),
        0,
        "a candidate must not get items"
    );
    assert!(!is_member(cluster.node(0), &region));

    // Two endorsements are not enough (majority of 4 is 3).
    cluster.node(1).service()?.endorse(region).await?;
    cluster.node(2).service()?.endorse(region).await?;
    cluster
        .wait_until(
            &cluster.all(),
            Duration::from_secs(30),
            "2 endorsements seen",
            |n| {
                n.service()
                    .map(|s| {
                        s.ingest()
                            .membership()
                            .pending
                            .iter()
                            .any(|p| p.candidate == region && p.endorsers.len() == 2)
                    })
                    .unwrap_or(false)
            },
        )
        .await?;
    assert!(!is_member(cluster.node(0), &region));

    // The third reaches the threshold: every node admits the region on its own.
    cluster.node(3).service()?.endorse(region).await?;
    let last_endorsement = Instant::now();
    cluster
        .wait_until(
            &cluster.all(),
            Duration::from_secs(60),
            "admitted everywhere",
            |n| is_member(n, &region),
        )
        .await?;
    let digest = cluster
        .wait_converged(&cluster.all(), Duration::from_secs(180))
        .await?;
    let elapsed = last_endorsement.elapsed();
    eprintln!(
        "newcomer admitted and converged ({} records) {:.2} s after the last endorsement",
        digest.count(),
        elapsed.as_secs_f64()
    );
    // Everything the founders hold (some synthetic offers are expired or withdrawn).
    assert!(digest.count() > 10_000);
    assert_eq!(offers(&cluster, newcomer), offers(&cluster, 0));
    assert!(offers(&cluster, newcomer) > 5_000);
    let states: Vec<_> = cluster
        .all()
        .iter()
        .map(|i| {
            cluster
                .node(*i)
                .service()
                .map(|s| s.ingest().membership().digest)
        })
        .collect::<anyhow::Result<_>>()?;
    assert!(states.windows(2).all(|w| w[0] == w[1]), "one member set");

    // As a member it publishes (its profile first) and everyone takes its records.
    cluster
        .wait_until(
            &cluster.all(),
            Duration::from_secs(30),
            "newcomer's profile",
            |n| {
                n.service()
                    .and_then(|s| {
                        Ok(s.ingest().store().item(
                            &region,
                            kim_protocol::Kind::RegionProfile,
                            "profile",
                        )?)
                    })
                    .map(|e| e.is_some())
                    .unwrap_or(false)
            },
        )
        .await?;
    cluster
        .publish(
            newcomer,
            "offers",
            sample_input("offers", "from-newcomer", 2),
        )
        .await?;
    cluster
        .wait_converged(&cluster.all(), Duration::from_secs(60))
        .await?;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removal_and_leaving_take_regions_out_everywhere() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(4, ClusterOptions::default()).await?;
    cluster.connect_all().await?;
    let target = cluster.node(3).region();
    // Removal is by majority of the 3 others: 2 votes.
    cluster
        .node(0)
        .service()?
        .vote_remove(target, "stopped maintaining its node".into())
        .await?;
    // The region concerned cannot vote on itself, and one vote is not enough.
    assert!(
        cluster
            .node(3)
            .service()?
            .vote_remove(target, "x".into())
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(is_member(cluster.node(1), &target));
    cluster
        .node(1)
        .service()?
        .vote_remove(target, "agreed".into())
        .await?;
    cluster
        .wait_until(
            &cluster.all(),
            Duration::from_secs(30),
            "removed everywhere",
            |n| !is_member(n, &target),
        )
        .await?;

    // Its later records are refused by every remaining node, and its node is cut off.
    let offer = cluster.synthetic_offers(3, 1, 99);
    for i in 0..3 {
        let results = cluster
            .node(i)
            .service()?
            .ingest()
            .ingest_batch(offer.clone(), Source::Sync)
            .await;
        let code = results[0].as_ref().err().map(|e| e.code());
        assert_eq!(code, Some("auth.not_member"), "node {i}");
    }
    let removed_peer = cluster.node(3).peer_id;
    cluster
        .wait_until(&[0, 1, 2], Duration::from_secs(30), "disconnected", |n| {
            let Ok(running) = n.running() else {
                return false;
            };
            let peers = futures_peers(running);
            !peers.contains(&removed_peer)
        })
        .await?;

    // Leaving: region 2 leaves of its own accord; the two others remain.
    let leaver = cluster.node(2).region();
    cluster
        .node(2)
        .service()?
        .leave("project ended".into())
        .await?;
    cluster
        .wait_until(
            &[0, 1, 2],
            Duration::from_secs(30),
            "left everywhere",
            |n| !is_member(n, &leaver),
        )
        .await?;
    let members = cluster
        .node(0)
        .service()?
        .ingest()
        .membership()
        .member_ids();
    assert_eq!(members.len(), 2);
    cluster.shutdown().await
}

/// The peers a running node is connected to (polled from a sync context).
fn futures_peers(running: &kim_node::node::Running) -> Vec<kim_node::libp2p::PeerId> {
    let net = running.net.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .and_then(|rt| rt.block_on(net.peers()).ok())
            .map(|peers| peers.into_iter().map(|p| p.peer_id).collect())
            .unwrap_or_default()
    })
    .join()
    .unwrap_or_default()
}
