//! A federation of whole nodes in one process, over real TCP loopback.
//!
//! ```ignore
//! let mut c = Cluster::start(5, ClusterOptions::default()).await?;
//! c.connect_all().await?;
//! c.publish(0, "offers", sample_input("offers", "o-1", 1)).await?;
//! c.wait_converged(&c.all(), Duration::from_secs(30)).await?;
//! ```
//!
//! Every node is a real `kim` node (sled store, tantivy index, libp2p with TCP, noise, yamux,
//! gossipsub and sync, HTTP API on an ephemeral port) on a fresh data directory. The nodes
//! found one federation together: one charter signed by every founder, and each founder's
//! region profile listing its node's peer id, so every node admits the others' nodes from the
//! start. Topology is chosen by the test (`connect`, `connect_all`, `connect_line`); discovery
//! is off unless asked for, so the topology stays what the test made it.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kim_node::config::{Config, DataDir};
use kim_node::founding::{self, FounderSpec, Founding};
use kim_node::ingest::Source;
use kim_node::libp2p::multiaddr::Protocol;
use kim_node::libp2p::{Multiaddr, PeerId};
use kim_node::node::{self, InitOptions, Running, Seed};
use kim_node::service::{Collection, ItemInput, ItemView, Service};
use kim_protocol::digest::StateDigest;
use kim_protocol::envelope::Record;
use kim_protocol::membership::ThresholdRule;
use kim_protocol::{FederationId, PublicKey, samples};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::Value;

/// Real regions, in the order nodes get them; further nodes reuse them with a number.
pub const REGIONS: [(&str, &str); 12] = [
    ("Steiermark", "AT22"),
    ("Vzhodna Slovenija", "SI03"),
    ("Kärnten", "AT21"),
    ("Friuli-Venezia Giulia", "ITH4"),
    ("Panonska Hrvatska", "HR02"),
    ("Nyugat-Dunántúl", "HU22"),
    ("Zahodna Slovenija", "SI04"),
    ("Veneto", "ITH3"),
    ("Jihovýchod", "CZ06"),
    ("Západné Slovensko", "SK02"),
    ("Oberbayern", "DE21"),
    ("Jadranska Hrvatska", "HR03"),
];

/// How the cluster's nodes run.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Gossip on (push).
    pub gossip: bool,
    /// Seconds between periodic sync sessions; 0: only on new connections.
    pub sync_interval_secs: u64,
    /// Sync on every new connection.
    pub sync_on_connect: bool,
    /// Kademlia discovery (off: the topology is exactly what the test connects).
    pub discovery: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            gossip: true,
            sync_interval_secs: 2,
            sync_on_connect: true,
            discovery: false,
        }
    }
}

/// One node of the cluster.
#[derive(Debug)]
pub struct ClusterNode {
    pub name: String,
    pub founder: FounderSpec,
    pub data: DataDir,
    pub peer_id: PeerId,
    /// The p2p address it listens on (kept across restarts), with `/p2p/<id>`.
    pub p2p_addr: Option<Multiaddr>,
    running: Option<Running>,
}

impl ClusterNode {
    /// The running node, or an error naming the node if it is stopped.
    pub fn running(&self) -> anyhow::Result<&Running> {
        self.running
            .as_ref()
            .with_context(|| format!("node {} is stopped", self.name))
    }

    /// The node's service (publish, list, get).
    pub fn service(&self) -> anyhow::Result<&Service> {
        Ok(&self.running()?.state.service)
    }

    /// The state digest of its sync set.
    pub fn digest(&self) -> anyhow::Result<StateDigest> {
        Ok(self.service()?.ingest().digest())
    }

    /// `http://127.0.0.1:PORT` of its API.
    pub fn api_base(&self) -> anyhow::Result<String> {
        Ok(format!("http://{}", self.running()?.api_addr))
    }

    /// The API token.
    pub fn token(&self) -> anyhow::Result<String> {
        self.data.load_token()
    }

    /// The region id.
    pub fn region(&self) -> PublicKey {
        self.founder.region()
    }
}

/// N nodes founding one federation.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub founding: Founding,
    pub options: ClusterOptions,
    /// Links made by `connect*`, re-made by `heal` and `restart`.
    links: BTreeSet<(usize, usize)>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// Creates `n` founders, their data directories, and starts every node (no connections).
    pub async fn start(n: usize, options: ClusterOptions) -> anyhow::Result<Cluster> {
        let root = tempfile::tempdir()?;
        let founders: Vec<FounderSpec> = (0..n)
            .map(|i| {
                let (name, nuts) = REGIONS[i % REGIONS.len()];
                let name = if i < REGIONS.len() {
                    name.to_string()
                } else {
                    format!("{name} {}", i / REGIONS.len() + 1)
                };
                FounderSpec::generate(&name, nuts)
            })
            .collect::<anyhow::Result<_>>()?;
        let founding = founding::found(
            "Test federation",
            &founders,
            ThresholdRule::Majority,
            ThresholdRule::Majority,
            kim_node::ingest::system_now_ms(),
        )?;
        let mut nodes = Vec::with_capacity(n);
        for (i, founder) in founders.into_iter().enumerate() {
            let data = DataDir::new(root.path().join(format!("node-{i}")));
            node::init(
                &data,
                InitOptions {
                    region_name: founder.name.clone(),
                    nuts: founder.nuts.clone(),
                    agency: None,
                    languages: vec![],
                    api_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                    p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
                    bootstrap: vec![],
                    seed: Some(Seed {
                        founder: founder.clone(),
                        founding: founding.clone(),
                    }),
                },
            )
            .await
            .with_context(|| format!("init of node {i} ({})", founder.name))?;
            nodes.push(ClusterNode {
                name: founder.name.clone(),
                peer_id: founder.node_key.public().to_peer_id(),
                founder,
                data,
                p2p_addr: None,
                running: None,
            });
        }
        let mut cluster = Cluster {
            nodes,
            founding,
            options,
            links: BTreeSet::new(),
            _root: root,
        };
        for i in 0..n {
            cluster.start_node(i).await?;
        }
        Ok(cluster)
    }

    /// The federation id.
    pub fn federation(&self) -> FederationId {
        self.founding.federation
    }

    /// Indexes of all nodes.
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Indexes of the running nodes.
    pub fn running(&self) -> Vec<usize> {
        self.all()
            .into_iter()
            .filter(|i| self.nodes[*i].running.is_some())
            .collect()
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &ClusterNode {
        &self.nodes[i]
    }

    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let options = self.options.clone();
        let node = &mut self.nodes[i];
        let mut config = Config::load(&node.data.root)?;
        config.gossip = options.gossip;
        config.sync_interval_secs = options.sync_interval_secs;
        config.discovery = options.discovery;
        config.sync_on_connect = options.sync_on_connect;
        if let Some(addr) = &node.p2p_addr {
            // Same port as before, so the other nodes' links still point at it.
            let mut listen = addr.clone();
            listen.pop();
            config.p2p_listen = vec![listen.to_string()];
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let running = node::start(&node.data, config, listener)
            .await
            .with_context(|| format!("starting node {i} ({})", node.name))?;
        let listen = tokio::time::timeout(Duration::from_secs(10), running.net.listen_addrs())
            .await
            .context("the node did not start listening")??;
        let mut addr = listen
            .into_iter()
            .next()
            .context("the node listens nowhere")?;
        addr.push(Protocol::P2p(running.peer_id()));
        node.p2p_addr = Some(addr);
        node.running = Some(running);
        Ok(())
    }

    /// Node `a` dials node `b` and waits until the connection is up.
    pub async fn connect(&mut self, a: usize, b: usize) -> anyhow::Result<()> {
        let addr = self.nodes[b]
            .p2p_addr
            .clone()
            .with_context(|| format!("node {b} has no address"))?;
        let net = &self.nodes[a].running()?.net;
        tokio::time::timeout(Duration::from_secs(10), net.dial(addr))
            .await
            .with_context(|| format!("dialling node {b} from node {a} timed out"))?
            .with_context(|| format!("node {a} could not connect to node {b}"))?;
        self.links.insert((a.min(b), a.max(b)));
        Ok(())
    }

    /// Connects every pair.
    pub async fn connect_all(&mut self) -> anyhow::Result<()> {
        let n = self.nodes.len();
        for a in 0..n {
            for b in a + 1..n {
                self.connect(a, b).await?;
            }
        }
        Ok(())
    }

    /// Connects 0–1–2–…–(n-1).
    pub async fn connect_line(&mut self) -> anyhow::Result<()> {
        for a in 1..self.nodes.len() {
            self.connect(a - 1, a).await?;
        }
        Ok(())
    }

    /// Waits until every running node has at least `min` peers in its gossip mesh (records
    /// published from then on reach them at once).
    pub async fn wait_gossip_mesh(&self, min: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for i in self.running() {
            loop {
                let peers = self.nodes[i].running()?.net.peers().await?;
                if peers.iter().filter(|p| p.gossip_mesh).count() >= min {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "node {i} has {} of {min} gossip mesh peers after {timeout:?}",
                        peers.iter().filter(|p| p.gossip_mesh).count()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Cuts every connection between different groups and refuses new ones until `heal`.
    pub async fn partition(&mut self, groups: &[&[usize]]) -> anyhow::Result<()> {
        for (g, group) in groups.iter().enumerate() {
            for other in groups.iter().skip(g + 1) {
                for &a in group.iter() {
                    for &b in other.iter() {
                        let (pa, pb) = (self.nodes[a].peer_id, self.nodes[b].peer_id);
                        if let Some(r) = &self.nodes[a].running {
                            r.access.block(pb);
                        }
                        if let Some(r) = &self.nodes[b].running {
                            r.access.block(pa);
                        }
                    }
                }
            }
        }
        for node in &self.nodes {
            if let Some(r) = &node.running {
                r.net.recheck_gate().await?;
            }
        }
        Ok(())
    }

    /// Lifts every block and re-makes the links.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        let peers: Vec<PeerId> = self.nodes.iter().map(|n| n.peer_id).collect();
        for node in &self.nodes {
            if let Some(r) = &node.running {
                for p in &peers {
                    r.access.unblock(p);
                }
            }
        }
        self.relink(None).await
    }

    async fn relink(&mut self, only: Option<usize>) -> anyhow::Result<()> {
        let links: Vec<(usize, usize)> = self.links.iter().copied().collect();
        for (a, b) in links {
            if only.is_some_and(|i| i != a && i != b) {
                continue;
            }
            if self.nodes[a].running.is_some() && self.nodes[b].running.is_some() {
                self.connect(a, b).await?;
            }
        }
        Ok(())
    }

    /// Initialises a new region's node (not a founder), joins the federation with `token`
    /// (as `kim federation join` does), and starts it as a candidate. Returns its index.
    pub async fn add_candidate(
        &mut self,
        name: &str,
        nuts: &str,
        token: &str,
    ) -> anyhow::Result<usize> {
        let i = self.nodes.len();
        let founder = FounderSpec::generate(name, nuts)?;
        // Its own one-region federation first, exactly as `kim init` makes it.
        let own = founding::found(
            &format!("KIM federation founded by {name}"),
            std::slice::from_ref(&founder),
            ThresholdRule::Majority,
            ThresholdRule::Majority,
            kim_node::ingest::system_now_ms(),
        )?;
        // A fixed port, so the address in its join request is one members can dial.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = DataDir::new(self._root.path().join(format!("node-{i}")));
        node::init(
            &data,
            InitOptions {
                region_name: name.to_string(),
                nuts: nuts.to_string(),
                agency: None,
                languages: vec![],
                api_listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                p2p_listen: vec![format!("/ip4/127.0.0.1/tcp/{port}")],
                bootstrap: vec![],
                seed: Some(Seed {
                    founder: founder.clone(),
                    founding: own,
                }),
            },
        )
        .await
        .with_context(|| format!("init of candidate {name}"))?;
        kim_node::join::join(
            &data,
            token,
            "We would like to join.",
            Duration::from_secs(20),
        )
        .await
        .with_context(|| format!("{name} joining"))?;
        self.nodes.push(ClusterNode {
            name: name.to_string(),
            peer_id: founder.node_key.public().to_peer_id(),
            founder,
            data,
            p2p_addr: None,
            running: None,
        });
        self.start_node(i).await?;
        Ok(i)
    }

    /// Waits until `check` holds for every running node among `nodes`.
    pub async fn wait_until(
        &self,
        nodes: &[usize],
        timeout: Duration,
        what: &str,
        check: impl Fn(&ClusterNode) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let failing: Vec<usize> = nodes
                .iter()
                .copied()
                .filter(|i| self.nodes[*i].running.is_some() && !check(&self.nodes[*i]))
                .collect();
            if failing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("{what}: still not true on nodes {failing:?} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops node `i` cleanly (store flushed); its data directory stays.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(running) = self.nodes[i].running.take() {
            running.stop().await?;
        }
        Ok(())
    }

    /// Starts node `i` again on its data directory and address, and re-makes its links.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop(i).await?;
        self.start_node(i).await?;
        self.relink(Some(i)).await
    }

    /// Starts a stopped node `i` again on its data directory and address, without links.
    pub async fn start_again(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop(i).await?;
        self.start_node(i).await
    }

    /// Publishes through node `i`'s service, as staff would through the API.
    pub async fn publish(
        &self,
        i: usize,
        collection: &str,
        input: Value,
    ) -> anyhow::Result<ItemView> {
        let collection =
            Collection::parse(collection).with_context(|| format!("no collection {collection}"))?;
        let input: ItemInput = serde_json::from_value(input)?;
        Ok(self.nodes[i].service()?.publish(collection, input).await?)
    }

    /// `count` signed offers authored by node `i`'s region (not yet ingested anywhere).
    pub fn synthetic_offers(&self, i: usize, count: u64, seed: u64) -> Vec<Vec<u8>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let founder = &self.nodes[i].founder;
        let now = kim_node::ingest::system_now_ms();
        (0..count)
            .filter_map(|index| {
                let content = samples::synthetic_cooperation_content(
                    &mut rng,
                    self.federation(),
                    founder.region(),
                    seed * 1_000_000 + index,
                    now,
                );
                Record::sign(&content, &founder.region_key)
                    .ok()
                    .map(|r| r.bytes)
            })
            .collect()
    }

    /// Stores records on node `i` through its ingest pipeline in batches (no gossip).
    pub async fn ingest(&self, i: usize, records: Vec<Vec<u8>>) -> anyhow::Result<usize> {
        let ingest = self.nodes[i].service()?.ingest();
        let mut stored = 0;
        for chunk in records.chunks(1000) {
            for result in ingest.ingest_batch(chunk.to_vec(), Source::Api).await {
                match result {
                    Ok(a) if a.is_new() => stored += 1,
                    Ok(_) => {}
                    Err(e) => bail!("node {i} refused a record: {} ({e})", e.code()),
                }
            }
        }
        Ok(stored)
    }

    /// Waits until the running nodes among `nodes` hold the same sync set (same state digest);
    /// the digest they agree on.
    pub async fn wait_converged(
        &self,
        nodes: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<StateDigest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let digests: Vec<(usize, StateDigest)> = nodes
                .iter()
                .filter(|i| self.nodes[**i].running.is_some())
                .map(|i| Ok((*i, self.nodes[*i].digest()?)))
                .collect::<anyhow::Result<_>>()?;
            if let Some((_, first)) = digests.first()
                && digests.iter().all(|(_, d)| d == first)
            {
                return Ok(*first);
            }
            if tokio::time::Instant::now() >= deadline {
                let report: Vec<String> = digests
                    .iter()
                    .map(|(i, d)| {
                        format!(
                            "node {i} ({}): {} records, digest {}",
                            self.nodes[*i].name,
                            d.count(),
                            &d.hash().to_hex()[..12]
                        )
                    })
                    .collect();
                bail!(
                    "not converged after {timeout:?}:\n  {}",
                    report.join("\n  ")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.stop(i).await?;
        }
        Ok(())
    }
}
