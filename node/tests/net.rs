//! Several nodes in one process over real TCP on 127.0.0.1: gossip, sync, rejection of garbage,
//! the connection gate and discovery. Each test finishes in a few seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kim_node::net::{
    NetClient, NetConfig, NetError, Origin, PeerGate, Records, Verdict, allow_all,
};
use kim_protocol::envelope::{Kind, Record};
use kim_protocol::limits::RECORD_BYTES_MAX;
use kim_protocol::reconcile::Id;
use kim_protocol::{FederationId, samples};
use libp2p::{Multiaddr, PeerId, identity};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use tokio::sync::oneshot;

const FEDERATION: FederationId = FederationId([7; 32]);
const WAIT: Duration = Duration::from_secs(15);

/// An in-memory stand-in for the node's ingest pipeline and store: decode, verify, dedupe.
#[derive(Debug, Default)]
struct MemRecords {
    held: Mutex<BTreeMap<Id, Vec<u8>>>,
    /// Every record ingest was asked about, in order, with its origin (for assertions).
    seen: Mutex<Vec<(Origin, Verdict)>>,
}

impl MemRecords {
    fn judge(&self, bytes: Vec<u8>) -> Verdict {
        if bytes.len() > RECORD_BYTES_MAX {
            return Verdict::Invalid;
        }
        let Ok(record) = Record::decode(bytes) else {
            return Verdict::Invalid;
        };
        if record.verify().is_err() || record.content.federation != FEDERATION {
            return Verdict::Invalid;
        }
        let mut held = self.held.lock().expect("lock");
        if held.contains_key(&record.id.0) {
            return Verdict::Known;
        }
        held.insert(record.id.0, record.bytes);
        Verdict::New
    }

    fn insert(&self, bytes: Vec<u8>) {
        assert_eq!(self.judge(bytes), Verdict::New);
    }

    fn ids(&self) -> Vec<Id> {
        self.held.lock().expect("lock").keys().copied().collect()
    }

    fn len(&self) -> usize {
        self.held.lock().expect("lock").len()
    }

    fn count(&self, origin: Origin, verdict: Verdict) -> usize {
        let seen = self.seen.lock().expect("lock");
        seen.iter().filter(|s| **s == (origin, verdict)).count()
    }
}

impl Records for MemRecords {
    fn ingest(
        &self,
        records: Vec<Vec<u8>>,
        origin: Origin,
    ) -> impl Future<Output = Vec<Verdict>> + Send {
        let verdicts: Vec<Verdict> = records.into_iter().map(|r| self.judge(r)).collect();
        self.seen
            .lock()
            .expect("lock")
            .extend(verdicts.iter().map(|v| (origin, *v)));
        std::future::ready(verdicts)
    }

    fn ids(&self) -> anyhow::Result<Vec<Id>> {
        Ok(MemRecords::ids(self))
    }

    fn get(&self, ids: &[Id]) -> anyhow::Result<Vec<Vec<u8>>> {
        let held = self.held.lock().expect("lock");
        Ok(ids.iter().filter_map(|id| held.get(id).cloned()).collect())
    }
}

/// Signed records of one author, deterministic for a seed.
fn make_records(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let key = samples::signing_key(&mut rng);
    let author = samples::public_key(&key);
    (0..count)
        .map(|i| {
            let content = samples::content(
                &mut rng,
                FEDERATION,
                author,
                Kind::Organisation,
                &format!("org-{seed}-{i}"),
                1_790_000_000_000,
            );
            Record::sign(&content, &key).expect("sign").bytes
        })
        .collect()
}

struct TestNode {
    client: NetClient,
    records: Arc<MemRecords>,
    addr: Multiaddr,
    peer_id: PeerId,
    _stop: oneshot::Sender<()>,
}

impl TestNode {
    async fn connect(&self, other: &TestNode) {
        let peer = self.client.dial(other.addr.clone()).await.expect("dial");
        assert_eq!(peer, other.peer_id);
    }

    /// Ingests a record locally (as the node's API would) and publishes it, retrying while no
    /// peer has told us of its subscription yet.
    /// Waits until every peer is in this node's gossip mesh (subscriptions exchanged), so
    /// that a record accepted here is forwarded to all of them.
    async fn wait_meshed(&self, peers: usize) {
        wait_until("gossip mesh", || async {
            let infos = self.client.peers().await.expect("peers");
            infos.len() == peers && infos.iter().all(|p| p.gossip_mesh)
        })
        .await;
    }

    async fn publish(&self, bytes: Vec<u8>) {
        self.records.insert(bytes.clone());
        self.publish_raw(bytes).await;
    }

    async fn publish_raw(&self, bytes: Vec<u8>) {
        wait_until("publish", || async {
            match self.client.publish(bytes.clone()).await {
                Ok(()) => true,
                Err(NetError::NoPeers) => false,
                Err(e) => panic!("publish: {e}"),
            }
        })
        .await;
    }
}

fn test_config(keypair: identity::Keypair) -> NetConfig {
    let mut config = NetConfig::new(FEDERATION, keypair);
    config.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    config.gossip_heartbeat = Duration::from_millis(100);
    config.sync_on_connect = false;
    config.sync_interval = None;
    config.discovery = false;
    config.request_timeout = Duration::from_secs(10);
    config
}

/// Logs to the test's output when `RUST_LOG` is set.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn spawn_node_with(configure: impl FnOnce(&mut NetConfig), gate: PeerGate) -> TestNode {
    init_tracing();
    let keypair = identity::Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let mut config = test_config(keypair);
    configure(&mut config);
    let records = Arc::new(MemRecords::default());
    let (client, event_loop) =
        kim_node::net::new(config, Arc::clone(&records), gate).expect("network starts");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(event_loop.run(async move {
        let _ = stopped.await;
    }));
    let addr = client
        .listen_addrs()
        .await
        .expect("listening")
        .into_iter()
        .next()
        .expect("an address");
    TestNode {
        client,
        records,
        addr,
        peer_id,
        _stop: stop,
    }
}

async fn spawn_node(configure: impl FnOnce(&mut NetConfig)) -> TestNode {
    spawn_node_with(configure, allow_all()).await
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_converged(nodes: &[&TestNode], expected: usize) {
    wait_until("convergence", || async {
        let first = nodes[0].records.ids();
        first.len() == expected && nodes.iter().all(|n| n.records.ids() == first)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_reaches_every_node_of_a_line() {
    let a = spawn_node(|_| {}).await;
    let b = spawn_node(|_| {}).await;
    let c = spawn_node(|_| {}).await;
    // A line, A - B - C: C hears A's records only through B's forwarding.
    b.connect(&a).await;
    c.connect(&b).await;
    // Gossip does not replay the past: a peer that joins the mesh after a record was forwarded
    // only gets it by sync. So wait for the mesh before publishing.
    b.wait_meshed(2).await;
    let records = make_records(1, 5);
    for record in &records {
        a.publish(record.clone()).await;
    }
    wait_converged(&[&a, &b, &c], 5).await;
    // Gossip alone: no sync session ran.
    for node in [&a, &b, &c] {
        assert_eq!(node.records.count(Origin::Sync, Verdict::New), 0);
    }
    // B ingested each record once from gossip and forwarded it: C got all five from B.
    assert_eq!(b.records.count(Origin::Gossip, Verdict::New), 5);
    assert_eq!(c.records.count(Origin::Gossip, Verdict::New), 5);

    // And from the other end, back through B to A.
    let back = make_records(2, 1);
    c.publish(back[0].clone()).await;
    wait_converged(&[&a, &b, &c], 6).await;

    let peers = b.client.peers().await.expect("peers");
    assert_eq!(peers.len(), 2);
    for peer in &peers {
        assert!(!peer.addrs.is_empty(), "{peer:?}");
    }
    // Ping has had time to measure at least one round trip by now on some connection.
    wait_until("ping rtt", || async {
        b.client
            .peers()
            .await
            .expect("peers")
            .iter()
            .all(|p| p.rtt.is_some())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_alone_brings_both_sides_to_the_union() {
    // No gossip at all: only the session B starts when it dials A.
    let sync_only = |c: &mut NetConfig| {
        c.gossip = false;
        c.sync_on_connect = true;
    };
    let a = spawn_node(sync_only).await;
    let b = spawn_node(sync_only).await;
    // More than one fetch batch and one push batch each way (512 per batch).
    for record in make_records(10, 1300) {
        a.records.insert(record);
    }
    for record in make_records(11, 700) {
        b.records.insert(record);
    }
    let shared = make_records(12, 40);
    for record in &shared {
        a.records.insert(record.clone());
        b.records.insert(record.clone());
    }
    let started = std::time::Instant::now();
    b.connect(&a).await;
    wait_converged(&[&a, &b], 2040).await;
    eprintln!("2000 differing records synced in {:?}", started.elapsed());
    assert_eq!(b.records.count(Origin::Sync, Verdict::New), 1300);
    assert_eq!(a.records.count(Origin::Sync, Verdict::New), 700);
    assert_eq!(a.records.count(Origin::Gossip, Verdict::New), 0);
    assert!(matches!(
        a.client.publish(make_records(13, 1).remove(0)).await,
        Err(NetError::GossipDisabled)
    ));

    // A session between equal sets finds nothing and moves nothing.
    let report = a.client.sync_with(b.peer_id).await.expect("sync");
    assert_eq!((report.missing, report.offered, report.rounds), (0, 0, 1));
    let peers = a.client.peers().await.expect("peers");
    assert!(peers[0].last_sync.is_some());

    // Records that appear later on one side arrive with the next session.
    for record in make_records(14, 3) {
        a.records.insert(record);
    }
    let report = b.client.sync_with(a.peer_id).await.expect("sync");
    assert_eq!((report.missing, report.received_new), (3, 3));
    assert_eq!(b.records.len(), 2043);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_sync_converges_a_line_without_gossip() {
    let periodic = |c: &mut NetConfig| {
        c.gossip = false;
        c.sync_interval = Some(Duration::from_millis(200));
    };
    let a = spawn_node(periodic).await;
    let b = spawn_node(periodic).await;
    let c = spawn_node(periodic).await;
    b.connect(&a).await;
    c.connect(&b).await;
    for record in make_records(20, 30) {
        a.records.insert(record);
    }
    for record in make_records(21, 20) {
        c.records.insert(record);
    }
    // A's records must travel through B to C, and C's through B to A.
    wait_converged(&[&a, &b, &c], 50).await;
    let stats = b.client.stats().await.expect("stats");
    assert!(stats.sync_sessions_ok > 0 || stats.sync_requests_inbound > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gossip_is_rejected_penalised_and_not_forwarded() {
    let a = spawn_node(|_| {}).await;
    let b = spawn_node(|_| {}).await;
    let c = spawn_node(|_| {}).await;
    b.connect(&a).await;
    c.connect(&b).await;
    b.wait_meshed(2).await;
    // The path works: a valid record goes A -> B -> C.
    let valid = make_records(30, 1);
    a.publish(valid[0].clone()).await;
    wait_converged(&[&a, &b, &c], 1).await;

    // A (buggy or hostile) publishes garbage and a record with a flipped byte.
    let mut tampered = make_records(31, 1).remove(0);
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    a.publish_raw(b"not a record at all".to_vec()).await;
    a.publish_raw(tampered).await;
    wait_until("B rejects both", || async {
        b.client.stats().await.expect("stats").gossip_rejected == 2
    })
    .await;
    // Give B several heartbeats in which it could have forwarded or gossiped them.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let c_stats = c.client.stats().await.expect("stats");
    assert_eq!(c_stats.gossip_received, 1, "C saw only the valid record");
    assert_eq!(c.records.count(Origin::Gossip, Verdict::Invalid), 0);
    assert_eq!(b.records.count(Origin::Gossip, Verdict::Invalid), 2);
    assert_eq!(b.records.len(), 1);

    let a_as_seen_by_b = b
        .client
        .peers()
        .await
        .expect("peers")
        .into_iter()
        .find(|p| p.peer_id == a.peer_id)
        .expect("A still connected");
    let score = a_as_seen_by_b.gossip_score.expect("scored");
    assert!(score < -10.0, "A was penalised: {score}");
    let c_as_seen_by_b = b
        .client
        .peers()
        .await
        .expect("peers")
        .into_iter()
        .find(|p| p.peer_id == c.peer_id)
        .expect("C connected");
    assert!(c_as_seen_by_b.gossip_score.expect("scored") >= 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_refuses_connections_both_ways() {
    let outsider_key = identity::Keypair::generate_ed25519();
    let outsider_id = outsider_key.public().to_peer_id();
    let gate: PeerGate = Arc::new(move |peer: &PeerId| *peer != outsider_id);
    // No room for guests (candidates using the join protocol): outsiders are refused outright.
    let member = spawn_node_with(|c| c.guests_max = 0, gate).await;

    // The outsider dials the member: the member denies the connection once it knows who it is.
    let outsider_records = Arc::new(MemRecords::default());
    let mut config = test_config(outsider_key);
    config.sync_on_connect = true;
    let (outsider, event_loop) =
        kim_node::net::new(config, outsider_records, allow_all()).expect("network");
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(event_loop.run(async move {
        let _ = stopped.await;
    }));
    let _ = outsider.dial(member.addr.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(member.client.peers().await.expect("peers").is_empty());
    assert!(matches!(
        member.client.sync_with(outsider_id).await,
        Err(NetError::NotConnected(_))
    ));

    // The member dialling the outsider is refused as well.
    let outsider_addr = outsider.listen_addrs().await.expect("addrs").remove(0);
    assert!(matches!(
        member.client.dial(outsider_addr).await,
        Err(NetError::Dial(_))
    ));
    assert!(member.client.peers().await.expect("peers").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_get_a_bounded_number_of_connections_per_address_and_no_sync() {
    let gate: PeerGate = Arc::new(|_: &PeerId| false);
    let member = spawn_node_with(|c| c.guests_per_ip_max = 2, gate).await;
    let mut guests = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..3 {
        let (client, event_loop) = kim_node::net::new(
            test_config(identity::Keypair::generate_ed25519()),
            Arc::new(MemRecords::default()),
            allow_all(),
        )
        .expect("network");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(event_loop.run(async move {
            let _ = stopped.await;
        }));
        let _ = client.dial(member.addr.clone()).await;
        guests.push(client);
        stops.push(stop);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two guests from 127.0.0.1 hold a connection; the third was refused.
    assert_eq!(member.client.peers().await.expect("peers").len(), 2);
    // A guest's sync request is refused, and the member never starts one with a guest.
    let first = member.client.peers().await.expect("peers")[0].peer_id;
    assert!(matches!(
        member.client.sync_with(first).await,
        Err(NetError::Refused(code)) if code == "sync.not_member"
    ));
    for guest in &guests {
        if let Ok(peer) = guest.peers().await
            && let Some(p) = peer.first()
        {
            let answer = guest.sync_with(p.peer_id).await;
            assert!(
                matches!(&answer, Err(NetError::Refused(code)) if code == "sync.not_member"),
                "{answer:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kademlia_discovery_connects_peers_of_a_peer() {
    let discover = |c: &mut NetConfig| c.discovery = true;
    let hub = spawn_node(discover).await;
    let a = spawn_node(discover).await;
    let b = spawn_node(discover).await;
    a.connect(&hub).await;
    b.connect(&hub).await;
    wait_until("A finds B through the hub", || async {
        a.client
            .peers()
            .await
            .expect("peers")
            .iter()
            .any(|p| p.peer_id == b.peer_id)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_its_peer_redials_and_catches_up() {
    // Reserve a port for A, which starts later than B.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let a_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
    let bootstrap = a_addr.clone();
    let b = spawn_node(move |c| {
        c.bootstrap_addrs = vec![bootstrap];
        c.sync_on_connect = true;
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.client.peers().await.expect("peers").is_empty());

    let a = spawn_node(move |c| c.listen_addrs = vec![a_addr]).await;
    for record in make_records(40, 25) {
        a.records.insert(record);
    }
    // B dials again after its backoff, and the session it starts on connect brings A's records.
    wait_converged(&[&a, &b], 25).await;
    assert_eq!(b.records.count(Origin::Sync, Verdict::New), 25);
}

/// With the `quic` feature, nodes speak QUIC as well as TCP: gossip and sync work over it.
#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_and_sync_work_over_quic() {
    let quic = |c: &mut NetConfig| {
        c.listen_addrs = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("addr")];
    };
    let a = spawn_node(quic).await;
    let b = spawn_node(quic).await;
    assert!(
        a.addr
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1)),
        "listens on {}",
        a.addr
    );
    let before = make_records(40, 3);
    for r in &before {
        a.records.insert(r.clone());
    }
    b.connect(&a).await;
    let report = b.client.sync_with(a.peer_id).await.expect("sync over QUIC");
    assert_eq!(report.received_new, 3);
    b.wait_meshed(1).await;
    a.wait_meshed(1).await;
    let after = make_records(41, 1);
    a.publish(after[0].clone()).await;
    wait_converged(&[&a, &b], 4).await;
}
