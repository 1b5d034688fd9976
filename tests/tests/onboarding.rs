//! A federation without a central operator, end to end in one process: four founders invite a
//! fifth region, it asks to join with limited rights, members endorse it, every node admits it
//! on its own, and it catches up on everything; removal and leaving take regions out again.

use std::time::{Duration, Instant};

use anyhow::Context as _;

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

/// An endorsement signed by `key`.
fn endorsement(
    key: &ed25519_dalek::SigningKey,
    federation: kim_protocol::FederationId,
    state: kim_protocol::Hash32,
    candidate: RegionId,
    join_request: kim_protocol::RecordId,
) -> anyhow::Result<Vec<u8>> {
    use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
    let content = Content {
        format: FORMAT_VERSION,
        federation,
        author: kim_protocol::PublicKey(key.verifying_key().to_bytes()),
        kind: Kind::Endorsement,
        key: "endorse-test".into(),
        revision: 1,
        created_at_ms: kim_node::ingest::system_now_ms(),
        expires_at_ms: None,
        body: Body::Endorsement(kim_protocol::membership::Endorsement {
            state,
            candidate,
            join_request,
        }),
    };
    Ok(Record::sign(&content, key)?.bytes)
}

/// How many live offers node `i` holds.
async fn offers(cluster: &Cluster, i: usize) -> u64 {
    let Ok(service) = cluster.node(i).service() else {
        return 0;
    };
    // Records from the network are listed once indexed, within seconds; this makes it now.
    service.ingest().flush_search().await;
    service
        .count_live(kim_node::service::Collection::Offers)
        .await
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
        offers(&cluster, newcomer).await,
        0,
        "a candidate must not get items"
    );
    assert!(!is_member(cluster.node(0), &region));

    // Endorsements that must not count are refused before they are stored: by an outsider,
    // for another federation, and by the candidate for itself.
    let pending = cluster.node(0).service()?.ingest().membership();
    let jr = pending
        .pending
        .iter()
        .find(|p| p.candidate == region)
        .map(|p| p.join_request)
        .context("pending")?;
    let outsider = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let candidate_key = cluster.node(newcomer).data.load_key()?;
    let other_federation = kim_protocol::FederationId([7; 32]);
    for (key, federation, code) in [
        (&outsider, cluster.federation(), "auth.unknown_author"),
        (
            &cluster.node(1).founder.region_key,
            other_federation,
            "record.wrong_federation",
        ),
        (&candidate_key, cluster.federation(), "field.bad_value"),
    ] {
        let record = endorsement(key, federation, pending.digest, region, jr)?;
        let result = cluster
            .node(0)
            .service()?
            .ingest()
            .ingest_batch(vec![record], Source::Sync)
            .await;
        assert_eq!(result[0].as_ref().err().map(|e| e.code()), Some(code));
    }

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
    assert_eq!(offers(&cluster, newcomer).await, offers(&cluster, 0).await);
    assert!(offers(&cluster, newcomer).await > 5_000);
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
async fn admission_removal_and_leaving_give_one_member_set_whatever_the_arrival_order()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start(4, ClusterOptions::default()).await?;
    cluster.connect_all().await?;
    let addr = cluster.node(1).p2p_addr.clone().map(|a| a.to_string());
    let token = cluster
        .node(1)
        .service()?
        .invite(addr.into_iter().collect(), 86_400_000)?;
    let newcomer = cluster.add_candidate("Oberbayern", "DE21", &token).await?;
    let region = cluster.node(newcomer).region();
    cluster
        .wait_until(
            &[0, 1, 2, 3],
            Duration::from_secs(30),
            "request seen",
            |n| is_pending(n, &region),
        )
        .await?;
    // Endorsing twice, or endorsing a region that is not pending, is refused clearly.
    cluster.node(0).service()?.endorse(region).await?;
    cluster.node(2).service()?.endorse(region).await?;
    let stranger = cluster.node(3).region();
    let err = cluster.node(0).service()?.endorse(stranger).await;
    assert!(err.is_err(), "endorsing a member must fail");
    cluster.node(3).service()?.endorse(region).await?;
    cluster
        .wait_until(&cluster.all(), Duration::from_secs(60), "admitted", |n| {
            is_member(n, &region)
        })
        .await?;

    // Removal: 5 members, so the 4 others decide by majority: 3 votes.
    let target = cluster.node(3).region();
    cluster
        .node(0)
        .service()?
        .vote_remove(target, "stopped maintaining its node".into())
        .await?;
    // The region concerned cannot vote on itself.
    assert!(
        cluster
            .node(3)
            .service()?
            .vote_remove(target, "x".into())
            .await
            .is_err()
    );
    cluster
        .node(1)
        .service()?
        .vote_remove(target, "agreed".into())
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        is_member(cluster.node(2), &target),
        "two votes of three needed"
    );
    cluster
        .node(newcomer)
        .service()?
        .vote_remove(target, "agreed too".into())
        .await?;
    let remaining = [0, 1, 2, newcomer];
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
    for i in remaining {
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
        .wait_until(&remaining, Duration::from_secs(30), "disconnected", |n| {
            let Ok(running) = n.running() else {
                return false;
            };
            !futures_peers(running).contains(&removed_peer)
        })
        .await?;

    // Leaving: region 2 leaves of its own accord.
    let leaver = cluster.node(2).region();
    cluster
        .node(2)
        .service()?
        .leave("project ended".into())
        .await?;
    cluster
        .wait_until(
            &remaining,
            Duration::from_secs(30),
            "left everywhere",
            |n| !is_member(n, &leaver),
        )
        .await?;
    cluster
        .publish(0, "offers", sample_input("offers", "after", 3))
        .await?;
    let digest = cluster
        .wait_converged(&[0, 1, newcomer], Duration::from_secs(60))
        .await?;
    let reference = cluster.node(0).service()?.ingest().membership();
    assert_eq!(reference.members.len(), 3);
    // A region that left keeps what it published on its own node (nobody else holds it now).
    let own = cluster.node(2).service()?.ingest().store().clone();
    assert!(
        own.item(&leaver, kim_protocol::Kind::RegionProfile, "profile")?
            .is_some(),
        "the leaving region lost its own profile"
    );
    // The items of the regions that went are gone everywhere (their profiles among them), so
    // a node that joins later, which refuses them, holds the same set.
    for i in [0, 1, newcomer] {
        let store = cluster.node(i).service()?.ingest().store().clone();
        for gone in [target, leaver] {
            let profile = store.item(&gone, kim_protocol::Kind::RegionProfile, "profile")?;
            assert!(
                profile.is_none(),
                "node {i} still holds a former member's profile"
            );
        }
    }
    assert_eq!(reference.history.len(), 3, "admit, remove, leave");

    // The same records, arriving in any of eight orders (a record refused because it came before what
    // it depends on arrives again later, as sync makes it), give the same member set and the
    // same sync set.
    let store = cluster.node(0).service()?.ingest().store().clone();
    let charter_bytes = store.meta("charter")?.context("no charter")?;
    let charter = kim_protocol::membership::Charter::from_bytes(&charter_bytes)?;
    let records: Vec<Vec<u8>> = store
        .records()
        .map(|r| r.map(|(_, b)| b))
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir()?;
    for seed in 0..8u64 {
        let mut order = records.clone();
        // A seeded Fisher-Yates shuffle.
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let fresh =
            kim_node::store::Store::open(&dir.path().join(format!("s{seed}")), 8 << 20, true)?;
        let ingest = kim_node::ingest::Ingest::open(fresh, cluster.federation(), charter.clone())?;
        let mut waiting = order;
        for _round in 0..10 {
            let mut refused = Vec::new();
            for record in waiting {
                let result = ingest
                    .ingest_batch(vec![record.clone()], Source::Sync)
                    .await;
                if result[0].is_err() {
                    refused.push(record);
                }
            }
            waiting = refused;
            if waiting.is_empty() {
                break;
            }
        }
        let state = ingest.membership();
        assert_eq!(state.digest, reference.digest, "seed {seed}");
        assert_eq!(state.member_ids(), reference.member_ids(), "seed {seed}");
        assert_eq!(
            ingest.digest(),
            digest,
            "seed {seed}: {} left over",
            waiting.len()
        );
    }
    cluster.shutdown().await
}

/// The members' nodes a running node is connected to, guests left out (polled from a sync
/// context). A removed region's node may come back as a guest, limited to the join protocol.
fn futures_peers(running: &kim_node::node::Running) -> Vec<kim_node::libp2p::PeerId> {
    let net = running.net.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .and_then(|rt| rt.block_on(net.peers()).ok())
            .map(|peers| {
                peers
                    .into_iter()
                    .filter(|p| !p.guest)
                    .map(|p| p.peer_id)
                    .collect()
            })
            .unwrap_or_default()
    })
    .join()
    .unwrap_or_default()
}

/// A region removed while its node was offline learns of it when the node is back: members'
/// nodes refuse its sync as a non-member's, and it then reads the membership over the join
/// protocol, as a candidate does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_removed_while_its_node_was_offline_learns_it_when_back() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(4, ClusterOptions::default()).await?;
    cluster.connect_all().await?;
    let target = cluster.node(3).region();
    cluster.stop(3).await?;
    // Four members, so the three others decide by majority: two votes.
    for voter in [0, 1] {
        cluster
            .node(voter)
            .service()?
            .vote_remove(target, "its node has been silent for months".into())
            .await?;
    }
    cluster
        .wait_until(
            &[0, 1, 2],
            Duration::from_secs(30),
            "removed on the members",
            |n| !is_member(n, &target),
        )
        .await?;
    cluster.start_again(3).await?;
    assert!(
        is_member(cluster.node(3), &target),
        "offline, it could not know"
    );
    for member in [0, 1, 2] {
        // As a guest now: the members' nodes take the connection but refuse its sync.
        cluster.connect(3, member).await?;
    }
    cluster
        .wait_until(
            &[3],
            Duration::from_secs(30),
            "removed, as seen by the removed region's own node",
            |n| !is_member(n, &target),
        )
        .await?;
    cluster.shutdown().await
}
