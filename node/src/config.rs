//! The data directory and the node's configuration: TOML file, `KIM_*` environment and flags.
//!
//! Layout of a data directory:
//! - `config.toml` — every option, documented, with its default
//! - `region.key` — the region's ed25519 signing key (32 raw bytes, mode 0600)
//! - `node.key` — this node's libp2p transport key (ed25519, 32 raw bytes, mode 0600); the
//!   region's signed profile binds its peer id to the region
//! - `api-token` — the bearer token for the HTTP API (mode 0600)
//! - `store/` — the sled database
//! - `search/` — the tantivy search index (derived; rebuilt from the store if lost)
//! - `blobs/` — knowledge attachments by BLAKE3 hash, and transfers under way (`blobs.rs`)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// Default HTTP API address: loopback only, so nothing is exposed by accident.
pub const API_LISTEN_DEFAULT: &str = "127.0.0.1:7650";
/// Default libp2p listen address.
pub const P2P_LISTEN_DEFAULT: &str = "/ip4/0.0.0.0/tcp/7651";

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7650))
}
fn default_p2p_listen() -> Vec<String> {
    vec![P2P_LISTEN_DEFAULT.to_string()]
}
fn default_cache_bytes() -> u64 {
    crate::store::CACHE_BYTES_DEFAULT
}
fn default_offer_validity_days() -> u32 {
    365
}
fn default_request_body_bytes_max() -> usize {
    256 * 1024
}
fn default_blob_bytes_max() -> u64 {
    crate::blobs::BLOB_BYTES_MAX_DEFAULT
}
fn default_true() -> bool {
    true
}
fn default_sync_interval_secs() -> u64 {
    30
}

/// Everything `config.toml` may say. Unknown keys are refused, so typos do not pass silently.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub region_name: String,
    pub nuts: String,
    pub country: String,
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    #[serde(default = "default_p2p_listen")]
    pub p2p_listen: Vec<String>,
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Subscribe to the federation's gossip topic (push). Off: records arrive by sync only.
    #[serde(default = "default_true")]
    pub gossip: bool,
    /// Seconds between sync sessions with a random connected member; 0 turns periodic sync off
    /// (sessions still run on every new connection).
    #[serde(default = "default_sync_interval_secs")]
    pub sync_interval_secs: u64,
    /// Run a sync session on every new connection to a member.
    #[serde(default = "default_true")]
    pub sync_on_connect: bool,
    /// Find other members' nodes through kademlia and dial them.
    #[serde(default = "default_true")]
    pub discovery: bool,
    #[serde(default = "default_cache_bytes")]
    pub store_cache_bytes: u64,
    #[serde(default = "default_offer_validity_days")]
    pub offer_validity_days: u32,
    #[serde(default = "default_request_body_bytes_max")]
    pub request_body_bytes_max: usize,
    /// Largest knowledge attachment this node stores, fetches from peers or serves, in bytes.
    #[serde(default = "default_blob_bytes_max")]
    pub blob_bytes_max: u64,
    /// Set when the node is created; the federation the node serves.
    #[serde(default)]
    pub federation: String,
}

impl Config {
    /// The TOML text `kim init` writes: every option with a comment saying what it does.
    pub fn to_documented_toml(&self) -> String {
        // TOML string literals (Rust's `{:?}` escapes control characters as `\u{..}`, which
        // TOML does not read).
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let list = |items: &[String]| items.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ");
        format!(
            r#"# KIM node configuration. Environment variables KIM_<NAME> and command-line flags
# override what is written here.

# The region this node speaks for, and its NUTS 2024 code and ISO 3166-1 country.
region_name = {region}
nuts = {nuts}
country = {country}

# The federation this node serves (its charter hash). Set by `kim init`; do not edit.
federation = {federation}

# HTTP API (and dashboard) address. Keep it on loopback unless a reverse proxy with TLS
# fronts it; every route but /api/v1/health needs the bearer token in `api-token`. Port 0
# takes a free port at start; the running node writes its URL to `api-address` in the data
# directory, where the CLI looks first.
api_listen = "{api}"

# libp2p listen addresses (multiaddrs) and peers to dial at start, e.g.
# "/ip4/192.0.2.10/tcp/7651". Members' nodes listed in their region profiles are dialled too.
p2p_listen = [{p2p}]
bootstrap = [{bootstrap}]

# Push new records to connected members at once through gossip (pull-only when false).
gossip = {gossip}

# Seconds between sync sessions with a random connected member (0: only on new connections).
sync_interval_secs = {sync_interval}

# Run a sync session on every new connection to a member (how a node that was offline
# catches up at once).
sync_on_connect = {sync_on_connect}

# Discover other members' nodes through the federation's DHT and dial them. Off: the node
# dials only its bootstrap peers and the addresses members publish in their region
# profiles (and accepts members that dial it).
discovery = {discovery}

# sled page cache in bytes. sled holds about two and a half times this once the cache
# is full, and beside it about 90 bytes per stored record (its page table: about 90 MiB
# at a million records). A larger cache speeds up bulk imports into a large store
# (about a fifth faster at a million records with 64 MiB); it does not speed up search.
store_cache_bytes = {cache}

# Default validity of a published offer or request, in days (renewal extends it).
offer_validity_days = {validity}

# Largest HTTP request body accepted, in bytes.
request_body_bytes_max = {body_max}

# Largest knowledge attachment (file) this node accepts for upload, fetches from other members
# and serves, in bytes (default 50 MiB). Files are kept under blobs/ in the data directory.
blob_bytes_max = {blob_max}
"#,
            region = q(&self.region_name),
            nuts = q(&self.nuts),
            country = q(&self.country),
            federation = q(&self.federation),
            api = self.api_listen,
            p2p = list(&self.p2p_listen),
            bootstrap = list(&self.bootstrap),
            gossip = self.gossip,
            sync_interval = self.sync_interval_secs,
            sync_on_connect = self.sync_on_connect,
            discovery = self.discovery,
            cache = self.store_cache_bytes,
            validity = self.offer_validity_days,
            body_max = self.request_body_bytes_max,
            blob_max = self.blob_bytes_max,
        )
    }

    /// Reads `config.toml` from a data directory.
    pub fn load(dir: &Path) -> anyhow::Result<Config> {
        let mut config = Config::load_file(dir)?;
        config.apply_env()?;
        Ok(config)
    }

    /// The config file as written, without `KIM_*` overrides (for tools that rewrite it).
    pub fn load_file(dir: &Path) -> anyhow::Result<Config> {
        let path = dir.join("config.toml");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: is {} a KIM data directory? run `kim --data-dir {} init` first",
                path.display(),
                dir.display(),
                dir.display()
            )
        })?;
        let config: Config =
            toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
        Ok(config)
    }

    /// Applies `KIM_API_LISTEN`, `KIM_P2P_LISTEN`, `KIM_BOOTSTRAP` (comma-separated),
    /// `KIM_GOSSIP`, `KIM_DISCOVERY`, `KIM_SYNC_INTERVAL_SECS`, `KIM_STORE_CACHE_BYTES` and
    /// `KIM_BLOB_BYTES_MAX` over the file's values.
    pub fn apply_env(&mut self) -> anyhow::Result<()> {
        if let Ok(v) = std::env::var("KIM_API_LISTEN") {
            self.api_listen = v.parse().with_context(|| {
                format!("KIM_API_LISTEN={v:?} is not an address like 127.0.0.1:7650")
            })?;
        }
        if let Ok(v) = std::env::var("KIM_P2P_LISTEN") {
            self.p2p_listen = v.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Ok(v) = std::env::var("KIM_BOOTSTRAP") {
            self.bootstrap = v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_string())
                .collect();
        }
        if let Ok(v) = std::env::var("KIM_GOSSIP") {
            self.gossip = parse_bool("KIM_GOSSIP", &v)?;
        }
        if let Ok(v) = std::env::var("KIM_DISCOVERY") {
            self.discovery = parse_bool("KIM_DISCOVERY", &v)?;
        }
        if let Ok(v) = std::env::var("KIM_SYNC_INTERVAL_SECS") {
            self.sync_interval_secs = v.parse().with_context(|| {
                format!("KIM_SYNC_INTERVAL_SECS={v:?} is not a number of seconds")
            })?;
        }
        if let Ok(v) = std::env::var("KIM_STORE_CACHE_BYTES") {
            self.store_cache_bytes = v
                .parse()
                .with_context(|| format!("KIM_STORE_CACHE_BYTES={v:?} is not a number of bytes"))?;
        }
        if let Ok(v) = std::env::var("KIM_BLOB_BYTES_MAX") {
            self.blob_bytes_max = v
                .parse()
                .with_context(|| format!("KIM_BLOB_BYTES_MAX={v:?} is not a number of bytes"))?;
        }
        Ok(())
    }
}

fn parse_bool(name: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => bail!("{name}={other:?} is not a boolean (true or false)"),
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("region.key")
    }
    pub fn node_key(&self) -> PathBuf {
        self.root.join("node.key")
    }
    pub fn token(&self) -> PathBuf {
        self.root.join("api-token")
    }
    /// The URL the running node's API answers on, written once it listens and removed when it
    /// stops, so that the CLI finds a node whose `api_listen` port is 0 (chosen at start).
    pub fn api_address(&self) -> PathBuf {
        self.root.join("api-address")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    /// The search index; derived data, rebuilt from the store when missing or stale.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
    pub fn search(&self) -> PathBuf {
        self.root.join("search")
    }

    /// Reads the region's signing key.
    pub fn load_key(&self) -> anyhow::Result<SigningKey> {
        let path = self.key();
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read the region key {}", path.display()))?;
        let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "{} is not a 32-byte ed25519 key: restore it from your backup",
                path.display()
            )
        })?;
        Ok(SigningKey::from_bytes(&secret))
    }

    /// Reads the node's libp2p transport key.
    pub fn load_node_key(&self) -> anyhow::Result<libp2p::identity::Keypair> {
        let path = self.node_key();
        let mut bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read the node key {}", path.display()))?;
        libp2p::identity::Keypair::ed25519_from_bytes(&mut bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a 32-byte ed25519 key ({e}): restore it from your backup, or delete \
                 it and publish the region profile again with the new peer id",
                path.display()
            )
        })
    }

    /// Reads the API token.
    pub fn load_token(&self) -> anyhow::Result<String> {
        let path = self.token();
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the API token {}", path.display()))?;
        let token = token.trim().to_string();
        if token.len() < 32 {
            bail!(
                "{} holds no valid token: run `kim init` again in a new directory",
                path.display()
            );
        }
        Ok(token)
    }
}

/// Writes a secret file readable only by its owner (mode 0600), refusing to overwrite.
pub fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `bytes` to a temporary file beside `dest`, syncs it, renames it over `dest` and syncs
/// the directory: a reader sees the old file or the new one whole, never half of it.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dest.with_extension(format!(
        "{}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dest)?;
        match dest.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", dest.display()))
}

/// 32 random bytes from the operating system.
pub fn random_bytes() -> anyhow::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    Ok(bytes)
}
