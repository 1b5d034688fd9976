//! A node's lifecycle: `init` creates a data directory, `run` serves until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use ed25519_dalek::SigningKey;
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
use kim_protocol::membership::{Charter, CharterRecord, Founder, ThresholdRule, federation_id};
use kim_protocol::types::{PublicContact, RegionProfile};
use kim_protocol::{FederationId, PublicKey, codes};
use tokio::net::TcpListener;

use crate::api::{AppState, router};
use crate::config::{Config, DataDir, random_bytes, write_secret};
use crate::ingest::{Ingest, Source, system_now_ms};
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
}

/// What `kim init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub region: PublicKey,
    pub federation: FederationId,
    pub config: Config,
}

const CHARTER_META: &str = "charter";

/// Creates a data directory: key, token, config, store with the founding charter and the
/// region's profile. Until joining exists, the node founds a one-region federation; the charter
/// and profile are ordinary records, so founding with several regions or joining later needs
/// no change to stored data.
pub async fn init(data: &DataDir, options: InitOptions) -> anyhow::Result<InitReport> {
    if data.config().exists()
        || data.key().exists()
        || data.token().exists()
        || data.store().exists()
    {
        bail!(
            "{} already holds a KIM node; refusing to overwrite it (choose another --data-dir)",
            data.root.display()
        );
    }
    let nuts = options.nuts.trim().to_string();
    let region = codes::nuts(&nuts).with_context(|| {
        format!("{nuts:?} is not a NUTS 2024 code (for example AT22 for Steiermark)")
    })?;
    let country = codes::nuts_country(region.code)
        .map(codes::nuts_country_to_iso)
        .unwrap_or_default()
        .to_string();
    for lang in &options.languages {
        if !codes::is_language(lang) {
            bail!("{lang:?} is not an ISO 639-1 language code (for example de, sl, en)");
        }
    }
    std::fs::create_dir_all(&data.root)
        .with_context(|| format!("cannot create {}", data.root.display()))?;
    let key = SigningKey::from_bytes(&random_bytes()?);
    write_secret(&data.key(), &key.to_bytes())?;
    let token = kim_protocol::bytes::to_hex(&random_bytes()?);
    write_secret(&data.token(), format!("{token}\n").as_bytes())?;
    let author = PublicKey(key.verifying_key().to_bytes());
    let now = system_now_ms();
    let charter = Charter {
        name: format!("KIM federation founded by {}", options.region_name),
        founders: vec![Founder {
            key: author,
            name: options.region_name.clone(),
            nuts: vec![nuts.clone()],
        }],
        admission: ThresholdRule::Majority,
        removal: ThresholdRule::Majority,
        created_at_ms: now,
    };
    let charter_bytes = charter.to_bytes()?;
    let federation = federation_id(&charter_bytes);
    let config = Config {
        region_name: options.region_name.clone(),
        nuts: nuts.clone(),
        country: country.clone(),
        api_listen: options
            .api_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7650))),
        p2p_listen: if options.p2p_listen.is_empty() {
            vec![crate::config::P2P_LISTEN_DEFAULT.to_string()]
        } else {
            options.p2p_listen.clone()
        },
        bootstrap: Vec::new(),
        store_cache_bytes: crate::store::CACHE_BYTES_DEFAULT,
        offer_validity_days: 365,
        request_body_bytes_max: 256 * 1024,
        federation: federation.to_hex(),
    };
    let store = Store::open(&data.store(), config.store_cache_bytes, true)?;
    store.set_meta(CHARTER_META, &charter_bytes)?;
    let ingest = Ingest::open(store.clone(), federation, charter.clone())?;
    let content = |kind: Kind, key: &str, body: Body| Content {
        format: FORMAT_VERSION,
        federation,
        author,
        kind,
        key: key.to_string(),
        revision: 1,
        created_at_ms: now,
        expires_at_ms: None,
        body,
    };
    let charter_record = Record::sign(
        &content(
            Kind::Charter,
            "charter",
            Body::Charter(CharterRecord {
                founder_signatures: vec![CharterRecord::founder_sign(&charter_bytes, &key)],
                charter: charter_bytes,
            }),
        ),
        &key,
    )?;
    let mut languages = options.languages.clone();
    if languages.is_empty() {
        languages.push("en".into());
    }
    let profile = Record::sign(
        &content(
            Kind::RegionProfile,
            "profile",
            Body::RegionProfile(RegionProfile {
                name: options.region_name.clone(),
                nuts: vec![nuts],
                country,
                languages,
                agency: options.agency.clone().unwrap_or_else(|| {
                    format!("Regional development agency of {}", options.region_name)
                }),
                contact: PublicContact::default(),
                nodes: Vec::new(),
                description: String::new(),
            }),
        ),
        &key,
    )?;
    for record in [charter_record, profile] {
        ingest
            .ingest_one(record.bytes, Source::Api)
            .await
            .map_err(|e| anyhow::anyhow!("founding record refused: {} ({e})", e.code()))?;
    }
    std::fs::write(data.config(), config.to_documented_toml())
        .with_context(|| format!("cannot write {}", data.config().display()))?;
    store.flush().await?;
    Ok(InitReport {
        region: author,
        federation,
        config,
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
    let service = Service::new(ingest, key, config.offer_validity_days);
    let state = AppState {
        service,
        token: Arc::new(token),
        region_name: Arc::new(config.region_name.clone()),
        nuts: Arc::new(config.nuts.clone()),
        started_at_ms: system_now_ms(),
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
    let body_limit = config.request_body_bytes_max;
    let node = open(data, config)?;
    let (app, _) = router(node.state.clone(), body_limit);
    let addr = listener.local_addr()?;
    tracing::info!(
        api = %addr,
        region = %node.state.service.region(),
        federation = %node.state.service.ingest().federation(),
        "node running"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
    node.store.flush().await?;
    tracing::info!("node stopped; store flushed");
    Ok(())
}
