//! A node's lifecycle: `init` creates a data directory, `run` serves until shutdown.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kim_protocol::envelope::{Body, Kind, Record, record_id};
use kim_protocol::{RecordId, RegionId};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use anyhow::{Context as _, bail};
use kim_protocol::membership::{Charter, ThresholdRule, federation_id};
use kim_protocol::{FederationId, PublicKey};
use tokio::net::TcpListener;

use crate::api::{AppState, router};
use crate::config::{Config, DataDir, random_bytes, write_secret};
use crate::founding::{self, FounderSpec, Founding};
use crate::ingest::{Ingest, Source, system_now_ms};
use crate::net::{self, NetClient, NetConfig, Origin, Records, Verdict};
use crate::service::Service;
use crate::store::Store;

/// What `kim init` needs to know.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub region_name: String,
    pub nuts: String,
    pub agency: Option<String>,
    pub languages: Vec<String>,
    pub api_listen: Option<SocketAddr>,
    pub p2p_listen: Vec<String>,
    /// Member nodes to dial at start (multiaddrs ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// Start in a federation founded elsewhere (the harness, `kim demo`, later `kim federation
    /// create`): this region's keys and the founding records. `None`: found a one-region
    /// federation with fresh keys.
    pub seed: Option<Seed>,
}

/// Keys and founding records for a node that founds a federation together with others.
#[derive(Debug, Clone)]
pub struct Seed {
    pub founder: FounderSpec,
    pub founding: Founding,
}

/// What `kim init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub region: PublicKey,
    pub federation: FederationId,
    pub peer_id: libp2p::PeerId,
    pub config: Config,
}

/// Store metadata key of the charter's exact bytes.
pub(crate) const CHARTER_META: &str = "charter";

/// Listen addresses worth publishing in the region profile: not the unspecified address and
/// not port 0 (others cannot dial those).
pub fn announceable(listen: &[String]) -> Vec<String> {
    listen
        .iter()
        .filter(|a| {
            a.parse::<Multiaddr>().is_ok_and(|addr| {
                addr.iter().all(|p| match p {
                    Protocol::Ip4(ip) => !ip.is_unspecified(),
                    Protocol::Ip6(ip) => !ip.is_unspecified(),
                    Protocol::Tcp(0) | Protocol::Udp(0) => false,
                    _ => true,
                })
            })
        })
        .cloned()
        .collect()
}

/// Creates a data directory: region key, node key, token, config, and a store holding the
/// founding records (charter and founders' profiles). Without a seed the node founds a
/// one-region federation; the charter and profiles are ordinary records either way, so
/// founding with several regions or joining later needs no change to stored data.
pub async fn init(data: &DataDir, options: InitOptions) -> anyhow::Result<InitReport> {
    if data.config().exists()
        || data.key().exists()
        || data.node_key().exists()
        || data.token().exists()
        || data.store().exists()
    {
        bail!(
            "{} already holds a KIM node; refusing to overwrite it (choose another --data-dir)",
            data.root.display()
        );
    }
    let p2p_listen = if options.p2p_listen.is_empty() {
        vec![crate::config::P2P_LISTEN_DEFAULT.to_string()]
    } else {
        options.p2p_listen.clone()
    };
    for addr in &p2p_listen {
        addr.parse::<libp2p::Multiaddr>()
            .with_context(|| format!("{addr:?} is not a multiaddr like /ip4/0.0.0.0/tcp/7651"))?;
    }
    for addr in &options.bootstrap {
        addr.parse::<libp2p::Multiaddr>().with_context(|| {
            format!("bootstrap {addr:?} is not a multiaddr like /ip4/192.0.2.10/tcp/7651/p2p/12D3…")
        })?;
    }
    let seed = match options.seed.clone() {
        Some(seed) => seed,
        None => {
            let mut founder = FounderSpec::generate(&options.region_name, options.nuts.trim())?;
            founder.agency = options.agency.clone();
            if !options.languages.is_empty() {
                founder.languages = options.languages.clone();
            }
            founder.node_addrs = announceable(&p2p_listen);
            let founding = founding::found(
                &format!("KIM federation founded by {}", options.region_name),
                std::slice::from_ref(&founder),
                ThresholdRule::Majority,
                ThresholdRule::Majority,
                system_now_ms(),
            )?;
            Seed { founder, founding }
        }
    };
    let founder = &seed.founder;
    let country = founding::country_of(&founder.nuts)?;
    let charter = Charter::from_bytes(&seed.founding.charter_bytes)
        .map_err(|e| anyhow::anyhow!("the founding charter is unreadable: {e}"))?;
    let federation = federation_id(&seed.founding.charter_bytes);
    std::fs::create_dir_all(&data.root)
        .with_context(|| format!("cannot create {}", data.root.display()))?;
    write_secret(&data.key(), &founder.region_key.to_bytes())?;
    let node_secret = founder
        .node_key
        .clone()
        .try_into_ed25519()
        .map_err(|e| anyhow::anyhow!("the node key must be ed25519: {e}"))?;
    write_secret(&data.node_key(), node_secret.secret().as_ref())?;
    let token = kim_protocol::bytes::to_hex(&random_bytes()?);
    write_secret(&data.token(), format!("{token}\n").as_bytes())?;
    let config = Config {
        region_name: founder.name.clone(),
        nuts: founder.nuts.clone(),
        country,
        api_listen: options
            .api_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7650))),
        p2p_listen,
        bootstrap: options.bootstrap.clone(),
        gossip: true,
        sync_interval_secs: 30,
        sync_on_connect: true,
        discovery: true,
        store_cache_bytes: crate::store::CACHE_BYTES_DEFAULT,
        offer_validity_days: 365,
        request_body_bytes_max: 256 * 1024,
        blob_bytes_max: crate::blobs::BLOB_BYTES_MAX_DEFAULT,
        federation: federation.to_hex(),
    };
    let store = Store::open(&data.store(), config.store_cache_bytes, true)?;
    store.set_meta(CHARTER_META, &seed.founding.charter_bytes)?;
    store.set_meta(crate::ingest::OWN_REGION_META, &founder.region().0)?;
    let ingest = Ingest::open(store.clone(), federation, charter)?;
    for (record, result) in seed.founding.records.iter().zip(
        ingest
            .ingest_batch(seed.founding.records.clone(), Source::Api)
            .await,
    ) {
        if let Err(e) = result {
            bail!(
                "founding record {} refused: {} ({e})",
                kim_protocol::envelope::record_id(record),
                e.code()
            );
        }
    }
    std::fs::write(data.config(), config.to_documented_toml())
        .with_context(|| format!("cannot write {}", data.config().display()))?;
    store.flush().await?;
    Ok(InitReport {
        region: founder.region(),
        federation,
        peer_id: founder.node_key.public().to_peer_id(),
        config,
    })
}

/// Refuses unless the node holds nothing but what `kim init` created (its own charter and
/// profile, no local data): only such a node may found or join another federation, because
/// anything else is signed for the old one and would be lost. The node must be stopped.
pub fn check_fresh(data: &DataDir) -> anyhow::Result<()> {
    let config = Config::load_file(&data.root)?;
    let key = data.load_key()?;
    let own = PublicKey(key.verifying_key().to_bytes());
    let store = Store::open(&data.store(), config.store_cache_bytes, false)?;
    let mut held = 0usize;
    for entry in store.item_entries() {
        let entry = entry?;
        held += 1;
        let own_founding =
            entry.region == own && matches!(entry.kind, Kind::Charter | Kind::RegionProfile);
        if !own_founding || held > 2 {
            bail!(
                "{} is not a fresh node: it holds {} {:?} of region {}. Only a node that \
                 holds nothing but what `kim init` created can found or join another \
                 federation; initialise a new data directory for it",
                data.root.display(),
                entry.kind,
                entry.key,
                entry.region
            );
        }
    }
    if !store.local_scan("")?.is_empty() {
        bail!(
            "{} is not a fresh node: it holds local data (drafts, private fields or saved \
             searches); initialise a new data directory to found or join another federation",
            data.root.display()
        );
    }
    Ok(())
}

/// What [`adopt_federation`] did.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub federation: FederationId,
    /// Records stored (charter, membership records, profiles).
    pub stored: usize,
    /// Records the pipeline refused, with the reason code (none is expected).
    pub refused: Vec<(RecordId, &'static str)>,
}

/// Moves a *fresh* node into another federation: one it co-founds (`kim federation adopt`)
/// or one it joins (`kim federation join`). `records` are that federation's records to start
/// from; the charter record among them must found `charter_bytes`.
///
/// A node is fresh while its store holds nothing but the one-region federation `kim init`
/// founded: its own charter and its own profile. Anything else (published items, drafts,
/// records of other regions) and the node refuses, because those records are signed for the
/// old federation and would be lost. The new store is built beside the old one and swapped in
/// only when complete; the keys, the token and the rest of the config stay.
pub async fn adopt_federation(
    data: &DataDir,
    charter_bytes: &[u8],
    records: Vec<Vec<u8>>,
) -> anyhow::Result<Adopted> {
    let charter = Charter::from_bytes(charter_bytes)
        .map_err(|e| anyhow::anyhow!("the charter is unreadable: {e}"))?;
    let federation = federation_id(charter_bytes);
    let mut config = Config::load_file(&data.root)?;
    let key = data.load_key()?;
    let own = PublicKey(key.verifying_key().to_bytes());
    if config.federation == federation.to_hex() {
        bail!(
            "{} already belongs to federation {federation}",
            data.root.display()
        );
    }
    check_fresh(data)?;
    // Build the new store beside the old one.
    let staging = data.root.join("store.new");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove the stale {}", staging.display()))?;
    }
    let (stored, refused) = {
        let store = Store::open(&staging, config.store_cache_bytes, true)?;
        store.set_meta(CHARTER_META, charter_bytes)?;
        store.set_meta(crate::ingest::OWN_REGION_META, &own.0)?;
        let ingest = Ingest::open(store.clone(), federation, charter)?;
        let ids: Vec<RecordId> = records.iter().map(|r| record_id(r)).collect();
        let results = ingest.ingest_batch(records, Source::Sync).await;
        let mut stored = 0usize;
        let mut refused = Vec::new();
        for (id, result) in ids.into_iter().zip(results) {
            match result {
                Ok(_) => stored += 1,
                Err(e) => refused.push((id, e.code())),
            }
        }
        if ingest.membership().members.is_empty() {
            bail!("the records do not found federation {federation}: no charter record among them");
        }
        store.flush().await?;
        (stored, refused)
    };
    let old = data.root.join(format!("store.old-{}", system_now_ms()));
    std::fs::rename(data.store(), &old)
        .with_context(|| format!("cannot move {} aside", data.store().display()))?;
    std::fs::rename(&staging, data.store())
        .with_context(|| format!("cannot move the new store to {}", data.store().display()))?;
    if let Err(e) = std::fs::remove_dir_all(&old) {
        tracing::warn!(dir = %old.display(), cause = %e, "could not remove the old store");
    }
    if data.search().exists() {
        std::fs::remove_dir_all(data.search())
            .with_context(|| format!("cannot remove {}", data.search().display()))?;
    }
    config.federation = federation.to_hex();
    std::fs::write(data.config(), config.to_documented_toml())
        .with_context(|| format!("cannot write {}", data.config().display()))?;
    Ok(Adopted {
        federation,
        stored,
        refused,
    })
}

/// A node opened from its data directory, ready to serve.
#[derive(Debug)]
pub struct OpenNode {
    pub config: Config,
    pub state: AppState,
    pub store: Store,
}

/// Opens the store, the pipeline and the service of a data directory.
pub fn open(data: &DataDir, config: Config) -> anyhow::Result<OpenNode> {
    let store = Store::open(&data.store(), config.store_cache_bytes, false)?;
    let charter_bytes = store
        .meta(CHARTER_META)?
        .context("the store holds no charter: the data directory is incomplete; run `kim init` in a new directory")?;
    let charter = Charter::from_bytes(&charter_bytes)
        .map_err(|e| anyhow::anyhow!("stored charter is unreadable: {e}"))?;
    let federation = federation_id(&charter_bytes);
    if !config.federation.is_empty() && config.federation != federation.to_hex() {
        bail!(
            "config.toml names federation {} but the store holds {}: the data directory is mixed up",
            config.federation,
            federation
        );
    }
    let ingest = Ingest::open(store.clone(), federation, charter)?;
    // A key rotation a crash interrupted is completed or undone before the key is read.
    crate::keys::recover(data, &ingest.membership(), system_now_ms())?;
    let index = Arc::new(
        crate::search::SearchIndex::open(&data.search()).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the search index in {}: {e}",
                data.search().display()
            )
        })?,
    );
    ingest.reindex_if_stale(&index)?;
    let ingest = Arc::new(ingest.with_search(index));
    let key = data.load_key()?;
    let token = data.load_token()?;
    let blobs = Arc::new(crate::blobs::BlobStore::open(
        data.blobs(),
        config.blob_bytes_max,
    )?);
    let service = Service::new(ingest, key, config.offer_validity_days)
        .with_key_files(crate::keys::KeyFiles::new(data))
        .with_blobs(Arc::clone(&blobs));
    let state = AppState {
        service,
        token: Arc::new(token),
        region_name: Arc::new(config.region_name.clone()),
        nuts: Arc::new(config.nuts.clone()),
        started_at_ms: system_now_ms(),
        net: None,
        access: None,
        blobs,
    };
    Ok(OpenNode {
        config,
        state,
        store,
    })
}

/// Runs a node until `shutdown` completes, then flushes the store. A whole node runs inside a
/// test this way; `main` passes ctrl-c/SIGTERM.
pub async fn run(
    data: &DataDir,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another node running?)",
                config.api_listen
            )
        })?;
    serve(data, config, listener, shutdown).await
}

/// Like [`run`], on a listener the caller bound (port 0 in tests).
pub async fn serve(
    data: &DataDir,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut running = start(data, config, listener).await?;
    tokio::select! {
        () = shutdown => {}
        () = running.failed() => {}
    }
    running.stop().await
}

/// Which peers may connect: the nodes that current members list in their region profiles,
/// minus the peers an operator (or a test partition) blocked.
#[derive(Debug, Clone, Default)]
pub struct PeerAccess {
    inner: Arc<RwLock<Access>>,
}

#[derive(Debug, Default)]
struct Access {
    /// Member nodes and the region each belongs to.
    members: HashMap<PeerId, RegionId>,
    /// Addresses members publish for their nodes.
    addrs: HashMap<PeerId, Vec<Multiaddr>>,
    blocked: HashSet<PeerId>,
}

impl PeerAccess {
    /// Whether `peer` may hold a connection now.
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.inner
            .read()
            .map(|a| a.members.contains_key(peer) && !a.blocked.contains(peer))
            .unwrap_or(false)
    }

    /// The member region a peer's node belongs to.
    pub fn region_of(&self, peer: &PeerId) -> Option<RegionId> {
        self.inner
            .read()
            .ok()
            .and_then(|a| a.members.get(peer).copied())
    }

    /// The nodes a member region lists in its profile, with their published addresses.
    pub fn peers_of(&self, region: &RegionId) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let Ok(access) = self.inner.read() else {
            return Vec::new();
        };
        access
            .members
            .iter()
            .filter(|(peer, r)| *r == region && !access.blocked.contains(*peer))
            .map(|(peer, _)| (*peer, access.addrs.get(peer).cloned().unwrap_or_default()))
            .collect()
    }

    /// Member nodes' published addresses (with `/p2p/<id>`), except `own`.
    pub fn member_addrs(&self, own: &PeerId) -> Vec<Multiaddr> {
        let Ok(access) = self.inner.read() else {
            return Vec::new();
        };
        access
            .addrs
            .iter()
            .filter(|(peer, _)| *peer != own && !access.blocked.contains(*peer))
            .flat_map(|(peer, addrs)| {
                addrs.iter().map(|a| {
                    let mut a = a.clone();
                    if !matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                        a.push(Protocol::P2p(*peer));
                    }
                    a
                })
            })
            .collect()
    }

    /// Whether an operator (or a test partition) blocked `peer`.
    pub fn is_blocked(&self, peer: &PeerId) -> bool {
        self.inner
            .read()
            .map(|a| a.blocked.contains(peer))
            .unwrap_or(false)
    }

    /// Refuses `peer` from now on (call [`NetClient::recheck_gate`] to drop its connections).
    pub fn block(&self, peer: PeerId) {
        if let Ok(mut a) = self.inner.write() {
            a.blocked.insert(peer);
        }
    }

    /// Lifts a block.
    pub fn unblock(&self, peer: &PeerId) {
        if let Ok(mut a) = self.inner.write() {
            a.blocked.remove(peer);
        }
    }

    /// Recomputes the member nodes from the membership state and the members' profiles;
    /// returns whether anything changed.
    pub fn refresh(&self, ingest: &Ingest) -> anyhow::Result<bool> {
        let membership = ingest.membership();
        let mut members = HashMap::new();
        let mut addrs = HashMap::new();
        for region in membership.members.keys() {
            // The region's profile; a region admitted a moment ago has none yet, and the
            // profile in its join request stands in for it until it publishes one.
            let id = match ingest
                .store()
                .item(region, Kind::RegionProfile, "profile")?
            {
                Some(entry) if entry.tombstone => continue,
                Some(entry) => entry.id,
                None => match membership.join_requests.get(region) {
                    Some(id) => *id,
                    None => continue,
                },
            };
            let Some(bytes) = ingest.store().record(&id)? else {
                continue;
            };
            let record = Record::decode(bytes)
                .map_err(|e| anyhow::anyhow!("stored profile {id} does not decode: {e}"))?;
            let profile = match record.content.body {
                Body::RegionProfile(profile) => profile,
                Body::JoinRequest(request) => request.profile,
                _ => continue,
            };
            for node in profile.nodes {
                match node.peer_id.parse::<PeerId>() {
                    Ok(peer) => {
                        members.insert(peer, *region);
                        let parsed: Vec<Multiaddr> =
                            node.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                        addrs.insert(peer, parsed);
                    }
                    Err(e) => tracing::warn!(
                        region = %region,
                        peer_id = %node.peer_id,
                        cause = %e,
                        "a member's profile lists an unreadable peer id; ignored"
                    ),
                }
            }
        }
        let mut access = self
            .inner
            .write()
            .map_err(|_| anyhow::anyhow!("peer access lock poisoned"))?;
        let changed = access.members != members || access.addrs != addrs;
        access.members = members;
        access.addrs = addrs;
        Ok(changed)
    }
}

/// The ingest pipeline as the network sees it, noticing when membership or profiles change.
#[derive(Debug)]
struct NodeRecords {
    ingest: Arc<Ingest>,
    /// Takes direct messages (expressions of interest and their answers).
    service: Service,
    changed: Arc<Notify>,
    arrivals: broadcast::Sender<Arrival>,
}

impl NodeRecords {
    /// Before a batch from the network: the records' ids if anyone watches arrivals, and the
    /// access counter to compare with afterwards ([`NodeRecords::arrived`]).
    fn arriving(&self, records: &[Vec<u8>]) -> (Vec<RecordId>, u64) {
        let ids = if self.arrivals.receiver_count() > 0 {
            records.iter().map(|r| record_id(r)).collect()
        } else {
            Vec::new()
        };
        (ids, self.ingest.access_changes())
    }

    /// After a batch from the network: wakes the membership task if access may have changed
    /// (the counter moved since `access`), and announces the records that were new.
    fn arrived(&self, ids: &[RecordId], verdicts: &[Verdict], origin: Origin, access: u64) {
        if self.ingest.access_changes() != access {
            self.changed.notify_one();
        }
        if verdicts.contains(&Verdict::New) {
            for (id, verdict) in ids.iter().zip(verdicts) {
                if *verdict == Verdict::New {
                    let _ = self.arrivals.send(Arrival { id: *id, origin });
                }
            }
        }
    }
}

/// A record that arrived from the network and was new here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    pub id: RecordId,
    pub origin: Origin,
}

/// Arrivals kept for slow subscribers before the oldest are dropped for them.
const ARRIVALS_QUEUE_LEN: usize = 4096;

impl Records for NodeRecords {
    async fn ingest(&self, records: Vec<Vec<u8>>, origin: Origin) -> Vec<Verdict> {
        let (ids, access) = self.arriving(&records);
        let verdicts = Records::ingest(self.ingest.as_ref(), records, origin).await;
        self.arrived(&ids, &verdicts, origin, access);
        verdicts
    }

    async fn ingest_gossip(
        &self,
        records: Vec<Vec<u8>>,
        early: tokio::sync::oneshot::Sender<Vec<Verdict>>,
    ) -> Vec<Verdict> {
        let (ids, access) = self.arriving(&records);
        let verdicts = Records::ingest_gossip(self.ingest.as_ref(), records, early).await;
        self.arrived(&ids, &verdicts, Origin::Gossip, access);
        verdicts
    }

    fn ids(&self) -> anyhow::Result<Vec<kim_protocol::reconcile::Id>> {
        Records::ids(self.ingest.as_ref())
    }

    fn reconcile(&self, step: crate::net::SyncStep<'_>) -> anyhow::Result<crate::net::SyncOutcome> {
        Records::reconcile(self.ingest.as_ref(), step)
    }

    fn get(&self, ids: &[kim_protocol::reconcile::Id]) -> anyhow::Result<Vec<Vec<u8>>> {
        Records::get(self.ingest.as_ref(), ids)
    }

    fn join_state(
        &self,
        after: Option<kim_protocol::reconcile::Id>,
    ) -> anyhow::Result<(Vec<Vec<u8>>, bool)> {
        crate::join::state_page(&self.ingest, after)
    }

    async fn direct(&self, _from: PeerId, message: Vec<u8>) -> Result<bool, String> {
        self.service.receive_direct(message).await
    }

    async fn join_submit(&self, record: Vec<u8>, invitation: String) -> Result<bool, String> {
        let id = record_id(&record);
        let new = crate::join::submit(&self.ingest, record, &invitation, system_now_ms()).await?;
        if new {
            self.changed.notify_one();
            let _ = self.arrivals.send(Arrival {
                id,
                origin: Origin::Sync,
            });
        }
        Ok(new)
    }
}

/// A running node: API server, network and their helpers. Stop it with [`Running::stop`].
#[derive(Debug)]
pub struct Running {
    pub api_addr: SocketAddr,
    pub state: AppState,
    pub net: NetClient,
    pub access: PeerAccess,
    arrivals: broadcast::Sender<Arrival>,
    store: Store,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    server_outcome: Option<anyhow::Result<()>>,
    network: Option<JoinHandle<()>>,
    announcer: Option<JoinHandle<()>>,
    outbox: Option<JoinHandle<()>>,
    blob_sweeper: Option<JoinHandle<()>>,
    flusher: Option<JoinHandle<()>>,
    /// `DATA/api-address`, removed again on a clean stop.
    address_file: PathBuf,
}

impl Running {
    /// This node's transport identity.
    pub fn peer_id(&self) -> PeerId {
        self.net.local_peer_id()
    }

    /// Records that arrive from the network and are new here, from now on.
    pub fn arrivals(&self) -> broadcast::Receiver<Arrival> {
        self.arrivals.subscribe()
    }

    /// Completes if the HTTP server stopped by itself (its error is returned by `stop`).
    pub async fn failed(&mut self) {
        match self.server.as_mut() {
            Some(task) => {
                let outcome = match task.await {
                    Ok(result) => result,
                    Err(e) => Err(anyhow::anyhow!("HTTP server task failed: {e}")),
                };
                if let Err(e) = &outcome {
                    tracing::error!(cause = %e, "HTTP server stopped");
                }
                self.server = None;
                self.server_outcome = Some(outcome);
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the server and the network and flushes the store.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // First, so that no error below can leave it naming a port that is about to be free.
        if let Err(e) = std::fs::remove_file(&self.address_file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %self.address_file.display(), cause = %e, "cannot remove the API address file");
        }
        let _ = self.stop.send(true);
        let mut result = self.server_outcome.take().unwrap_or(Ok(()));
        if let Some(server) = self.server.take() {
            result = server.await.context("HTTP server task failed")?;
        }
        for task in [
            self.network.take(),
            self.announcer.take(),
            self.outbox.take(),
            self.blob_sweeper.take(),
            self.flusher.take(),
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = task.await {
                tracing::warn!(cause = %e, "network task ended abnormally");
            }
        }
        self.state.service.ingest().flush_search().await;
        self.store.close().await?;
        tracing::info!("node stopped; store flushed");
        result
    }
}

/// Writes the URL a client on this machine reaches the API at (loopback when the node listens on
/// every address) and, on a second line, `pid=` this process, so that a client can tell a file
/// a killed node left behind.
fn write_api_address(path: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let mut reachable = addr;
    if addr.ip().is_unspecified() {
        reachable.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let text = format!("http://{reachable}\npid={}\n", std::process::id());
    crate::config::write_atomic(path, text.as_bytes())
}

/// What the network takes from the configuration.
fn net_config(
    config: &Config,
    federation: FederationId,
    keypair: libp2p::identity::Keypair,
) -> anyhow::Result<NetConfig> {
    let mut net = NetConfig::new(federation, keypair);
    net.listen_addrs = config
        .p2p_listen
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .with_context(|| format!("p2p_listen {a:?} is not a multiaddr"))
        })
        .collect::<anyhow::Result<_>>()?;
    net.bootstrap_addrs = config
        .bootstrap
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .with_context(|| format!("bootstrap {a:?} is not a multiaddr"))
        })
        .collect::<anyhow::Result<_>>()?;
    net.gossip = config.gossip;
    net.sync_interval =
        (config.sync_interval_secs > 0).then(|| Duration::from_secs(config.sync_interval_secs));
    net.discovery = config.discovery;
    net.sync_on_connect = config.sync_on_connect;
    Ok(net)
}

/// Opens the data directory and starts the API server on `listener` and the network.
pub async fn start(
    data: &DataDir,
    config: Config,
    listener: TcpListener,
) -> anyhow::Result<Running> {
    let body_limit = config.request_body_bytes_max;
    let keypair = data.load_node_key()?;
    let mut node = open(data, config)?;
    let ingest = Arc::clone(node.state.service.ingest());
    let access = PeerAccess::default();
    access.refresh(&ingest)?;
    let own = keypair.public().to_peer_id();
    let mut net_config = net_config(&node.config, ingest.federation(), keypair)?;
    let region = node.state.service.region();
    net_config.member = Arc::new(std::sync::atomic::AtomicBool::new(
        ingest.membership().is_member(&region),
    ));
    let member_flag = Arc::clone(&net_config.member);
    let blocked_access = access.clone();
    net_config.blocked = Arc::new(move |peer: &PeerId| blocked_access.is_blocked(peer));
    net_config.blob_source =
        Some(Arc::clone(&node.state.blobs) as Arc<dyn crate::blobs::BlobSource>);
    for addr in access.member_addrs(&own) {
        if !net_config.bootstrap_addrs.contains(&addr) {
            net_config.bootstrap_addrs.push(addr);
        }
    }
    let changed = Arc::new(Notify::new());
    let (arrivals, _) = broadcast::channel(ARRIVALS_QUEUE_LEN);
    let records = Arc::new(NodeRecords {
        ingest: Arc::clone(&ingest),
        service: node.state.service.clone(),
        changed: Arc::clone(&changed),
        arrivals: arrivals.clone(),
    });
    let gate_access = access.clone();
    let (net, event_loop) = net::new(
        net_config,
        records,
        Arc::new(move |peer: &PeerId| gate_access.allows(peer)),
    )?;
    let (announce_tx, announce_rx) = mpsc::channel(ANNOUNCE_QUEUE_LEN);
    node.state.service = node.state.service.clone().with_announcer(announce_tx);
    node.state.net = Some(net.clone());
    node.state.access = Some(access.clone());
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Written before any task is spawned: nothing after it can fail, so no error leaves a
    // running server behind, and the listener already queues connections for it.
    let api_addr = listener.local_addr()?;
    let address_file = data.api_address();
    write_api_address(&address_file, api_addr)?;
    let network = tokio::spawn(event_loop.run(until_stopped(stopped.clone())));
    drop(ingest);
    let outbox = tokio::spawn({
        let service = node.state.service.clone();
        let net = net.clone();
        let access = access.clone();
        let stop = until_stopped(stopped.clone());
        async move {
            let mut stop = std::pin::pin!(stop);
            let mut tick = tokio::time::interval(crate::interest::OUTBOX_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    _ = tick.tick() => {
                        crate::interest::deliver_outbox(&service, &net, &access).await;
                    }
                    () = crate::interest::OUTBOX_WAKE.notified() => {
                        crate::interest::deliver_outbox(&service, &net, &access).await;
                    }
                }
            }
        }
    });
    let announcer = tokio::spawn(announce(
        announce_rx,
        net.clone(),
        node.state.service.clone(),
        access.clone(),
        changed,
        member_flag,
        until_stopped(stopped.clone()),
    ));
    let blob_sweeper = tokio::spawn(crate::blobs::sweeper(
        Arc::clone(node.state.service.ingest()),
        Arc::clone(&node.state.blobs),
        until_stopped(stopped.clone()),
    ));
    let flusher = tokio::spawn({
        let ingest = Arc::clone(node.state.service.ingest());
        let stop = until_stopped(stopped.clone());
        async move {
            let mut stop = std::pin::pin!(stop);
            let mut tick = tokio::time::interval(crate::ingest::REPLICA_FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    _ = tick.tick() => {
                        if let Err(e) = ingest.flush_replicated().await {
                            tracing::error!(cause = %e, "flushing replicated records failed; retrying");
                        }
                    }
                }
            }
        }
    });
    let (app, _) = router(node.state.clone(), body_limit);
    let server = tokio::spawn({
        let shutdown = until_stopped(stopped);
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .context("HTTP server failed")
        }
    });
    tracing::info!(
        api = %api_addr,
        peer_id = %own,
        region = %node.state.service.region(),
        federation = %node.state.service.ingest().federation(),
        "node running"
    );
    Ok(Running {
        api_addr,
        state: node.state,
        net,
        access,
        arrivals,
        store: node.store,
        stop,
        server: Some(server),
        server_outcome: None,
        network: Some(network),
        announcer: Some(announcer),
        outbox: Some(outbox),
        blob_sweeper: Some(blob_sweeper),
        flusher: Some(flusher),
        address_file,
    })
}

/// Records published through this node waiting to be gossiped.
const ANNOUNCE_QUEUE_LEN: usize = 1024;
/// How often peer access is recomputed even without a signal (imports, expiry).
const ACCESS_REFRESH: Duration = Duration::from_secs(10);

/// Gossips what this node publishes, and keeps peer access in step with membership and
/// profiles: when it changes, peers no longer allowed are disconnected and newly listed
/// member nodes are dialled.
async fn announce(
    mut records: mpsc::Receiver<Vec<u8>>,
    net: NetClient,
    service: Service,
    access: PeerAccess,
    changed: Arc<Notify>,
    member: Arc<std::sync::atomic::AtomicBool>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut timer = tokio::time::interval(ACCESS_REFRESH);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ingest = Arc::clone(service.ingest());
    // Nothing handled yet: the first pass (at start) signs whatever decisions a restart left
    // unsigned in the current state.
    let mut last_state = kim_protocol::Hash32([0; 32]);
    let mut seen_access = ingest.access_changes();

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(record) = records.recv() => {
                match net.publish(record).await {
                    Ok(()) | Err(net::NetError::NoPeers) => {}
                    Err(e) => tracing::debug!(cause = %e, "gossip publish failed; sync will carry the record"),
                }
                // Only this node's own membership decisions and profile change who may connect.
                let now = ingest.access_changes();
                if now != seen_access {
                    seen_access = now;
                    changed.notify_one();
                }
            }
            () = changed.notified() => {
                seen_access = ingest.access_changes();
                on_membership(&service, &net, &member, &mut last_state).await;
                refresh_access(&net, &ingest, &access).await;
            }
            _ = timer.tick() => {
                seen_access = ingest.access_changes();
                on_membership(&service, &net, &member, &mut last_state).await;
                refresh_access(&net, &ingest, &access).await;
            }
        }
    }
}

/// Acts on a membership change: updates whether this node is a member's (the network syncs
/// or polls accordingly), re-signs the operator's standing decisions in the new state, and
/// publishes the profile of a newly admitted region.
async fn on_membership(
    service: &Service,
    net: &NetClient,
    member: &std::sync::atomic::AtomicBool,
    last_state: &mut kim_protocol::Hash32,
) {
    let state = service.ingest().membership();
    if state.digest == *last_state {
        return;
    }
    let is_member = state.is_member(&service.region());
    let was = member.swap(is_member, std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(state = %state.digest, members = state.members.len(),
        pending = state.pending.len(), "membership state");
    if was != is_member {
        if is_member {
            tracing::info!(region = %service.region(), "this region was admitted to the federation");
        } else {
            tracing::warn!(region = %service.region(), "this region is no longer a member");
        }
        if let Err(e) = net.recheck_gate().await {
            tracing::debug!(cause = %e, "gate recheck failed");
        }
    }
    // Marked done only when both succeed, so a failure is retried at the next tick.
    let mut done = true;
    if let Err(e) = service.ensure_profile().await {
        done = false;
        tracing::warn!(cause = %e, "cannot publish this region's profile after admission; will retry");
    }
    match service.reissue_intents().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            records = n,
            "membership decisions signed again in the new state"
        ),
        Err(e) => {
            done = false;
            tracing::warn!(cause = %e, "cannot sign membership decisions in the new state; will retry");
        }
    }
    if done {
        *last_state = state.digest;
    }
}

async fn refresh_access(net: &NetClient, ingest: &Ingest, access: &PeerAccess) {
    match access.refresh(ingest) {
        Ok(false) => {}
        Ok(true) => {
            match net.recheck_gate().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    disconnected = n,
                    "peers no longer members were disconnected"
                ),
                Err(e) => tracing::debug!(cause = %e, "gate recheck failed"),
            }
            for addr in access.member_addrs(&net.local_peer_id()) {
                let net = net.clone();
                tokio::spawn(async move {
                    if let Err(e) = net.dial(addr.clone()).await {
                        tracing::debug!(addr = %addr, cause = %e, "dialling a member node failed");
                    }
                });
            }
        }
        Err(e) => tracing::warn!(cause = %e, "cannot recompute which peers are members"),
    }
}

#[cfg(test)]
mod tests {
    use super::announceable;

    #[test]
    fn only_dialable_listen_addresses_are_announced() {
        let listen: Vec<String> = [
            "/ip4/0.0.0.0/tcp/7651",
            "/ip6/::/tcp/7651",
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "/ip4/192.0.2.10/tcp/7651",
            "/dns4/node.example/tcp/7651",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            announceable(&listen),
            ["/ip4/192.0.2.10/tcp/7651", "/dns4/node.example/tcp/7651"]
        );
    }
}
