//! `kim demo`: a small federation on this machine. Four regional nodes (Steiermark AT22,
//! Vzhodna Slovenija SI03, Friuli-Venezia Giulia ITH4, Jadranska Hrvatska HR03) found one
//! federation, each with its store under the demo directory, its API on loopback and its
//! libp2p listener on loopback. Each node is seeded with a few dozen realistic records of its
//! own region; they replicate to the others by sync and gossip. The demo prints each node's
//! API address and token, reports when every node holds the same records, and stops every
//! node cleanly on Ctrl-C. Run again, it restarts the same federation from its directory.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kim_protocol::envelope::{Kind, Record};
use kim_protocol::membership::ThresholdRule;
use kim_protocol::samples;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use tokio::net::TcpListener;

use crate::config::{Config, DataDir};
use crate::founding::{self, FounderSpec};
use crate::ingest::{Source, system_now_ms};
use crate::node::{self, InitOptions, Seed};
use crate::service::Service;

/// The demo's regions: name, NUTS 2024 code, working languages.
pub const DEMO_REGIONS: [(&str, &str, &[&str]); 4] = [
    ("Steiermark", "AT22", &["de", "en"]),
    ("Vzhodna Slovenija", "SI03", &["sl", "en"]),
    ("Friuli-Venezia Giulia", "ITH4", &["it", "en"]),
    ("Jadranska Hrvatska", "HR03", &["hr", "en"]),
];

/// What `kim demo` is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the nodes' data directories live.
    pub dir: PathBuf,
    /// First API port; node i serves on `base_port + i` and listens for peers on
    /// `base_port + 10 + i`.
    pub base_port: u16,
    /// Records each node publishes when its store is new.
    pub records_per_node: usize,
    /// Delete an existing demo directory first.
    pub fresh: bool,
}

/// One node of the demo, as printed.
#[derive(Debug, Clone)]
pub struct DemoNode {
    pub name: String,
    pub nuts: String,
    pub api: SocketAddr,
    pub token: String,
    pub data_dir: PathBuf,
}

fn data_dir(options: &DemoOptions, nuts: &str) -> DataDir {
    DataDir::new(options.dir.join(nuts.to_lowercase()))
}

/// Creates the demo federation's data directories unless they exist.
async fn create(options: &DemoOptions) -> anyhow::Result<bool> {
    let existing = DEMO_REGIONS
        .iter()
        .filter(|(_, nuts, _)| data_dir(options, nuts).config().exists())
        .count();
    if existing == DEMO_REGIONS.len() {
        return Ok(false);
    }
    if existing > 0 {
        anyhow::bail!(
            "{} holds an incomplete demo ({existing} of {} nodes); run `kim demo --fresh` to start over",
            options.dir.display(),
            DEMO_REGIONS.len()
        );
    }
    let founders: Vec<FounderSpec> = DEMO_REGIONS
        .iter()
        .enumerate()
        .map(|(i, (name, nuts, languages))| {
            let mut founder = FounderSpec::generate(name, nuts)?;
            founder.languages = languages.iter().map(|l| l.to_string()).collect();
            founder.node_addrs = vec![p2p_addr(options.base_port, i)];
            Ok(founder)
        })
        .collect::<anyhow::Result<_>>()?;
    let founding = founding::found(
        "KIM demo federation (Alps–Adriatic)",
        &founders,
        ThresholdRule::Majority,
        ThresholdRule::Majority,
        system_now_ms(),
    )?;
    for (i, founder) in founders.into_iter().enumerate() {
        let data = data_dir(options, &founder.nuts);
        node::init(
            &data,
            InitOptions {
                region_name: founder.name.clone(),
                nuts: founder.nuts.clone(),
                agency: None,
                languages: founder.languages.clone(),
                api_listen: Some(api_addr(options.base_port, i)),
                p2p_listen: vec![p2p_addr(options.base_port, i)],
                bootstrap: vec![],
                seed: Some(Seed {
                    founder,
                    founding: founding.clone(),
                }),
            },
        )
        .await?;
    }
    Ok(true)
}

fn api_addr(base: u16, i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base.saturating_add(i as u16)))
}

fn p2p_addr(base: u16, i: usize) -> String {
    format!("/ip4/127.0.0.1/tcp/{}", base.saturating_add(10 + i as u16))
}

/// Realistic records of the node's own region: offers and requests, organisations, projects,
/// knowledge items.
async fn seed(service: &Service, index: usize, count: usize) -> anyhow::Result<usize> {
    let key = service.signing_key();
    let ingest = service.ingest();
    let mut rng = ChaCha8Rng::seed_from_u64(0xD3_40 + index as u64);
    let now = system_now_ms();
    let kinds = [
        Kind::Cooperation,
        Kind::Cooperation,
        Kind::Cooperation,
        Kind::Organisation,
        Kind::Cooperation,
        Kind::Project,
        Kind::Knowledge,
    ];
    let mut records = Vec::with_capacity(count);
    for n in 0..count {
        let kind = kinds[n % kinds.len()];
        let item = format!("{}-{n}", kind.as_str().replace('_', "-"));
        let content = samples::content(
            &mut rng,
            ingest.federation(),
            service.author_key(),
            kind,
            &item,
            now - (n as u64) * 3_600_000,
        );
        records.push(Record::sign(&content, &key)?.bytes);
    }
    let mut stored = 0;
    for (n, result) in ingest
        .ingest_batch(records, Source::Api)
        .await
        .into_iter()
        .enumerate()
    {
        match result {
            Ok(_) => stored += 1,
            Err(e) => {
                tracing::warn!(record = n, code = e.code(), cause = %e, "demo record refused")
            }
        }
    }
    Ok(stored)
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    options: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if options.fresh && options.dir.exists() {
        std::fs::remove_dir_all(&options.dir)
            .with_context(|| format!("cannot delete {}", options.dir.display()))?;
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("cannot create {}", options.dir.display()))?;
    let created = create(&options).await?;
    let mut nodes = Vec::new();
    let mut shown = Vec::new();
    for (i, (name, nuts, _)) in DEMO_REGIONS.iter().enumerate() {
        let data = data_dir(&options, nuts);
        let config = Config::load(&data.root)?;
        if created {
            // Before the network starts, so the first sync sessions carry them.
            let opened = node::open(&data, config.clone())?;
            let n = seed(&opened.state.service, i, options.records_per_node).await?;
            opened.store.flush().await?;
            drop(opened);
            tracing::info!(region = name, records = n, "seeded");
        }
        let listener = TcpListener::bind(config.api_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for {name}: is another demo running? (choose --base-port)",
                    config.api_listen
                )
            })?;
        let running = node::start(&data, config, listener)
            .await
            .with_context(|| format!("starting the node of {name}"))?;
        shown.push(DemoNode {
            name: name.to_string(),
            nuts: nuts.to_string(),
            api: running.api_addr,
            token: data.load_token()?,
            data_dir: data.root.clone(),
        });
        nodes.push(running);
    }
    print_nodes(&shown);
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut reported = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                let digests: Vec<_> = nodes.iter().map(|n| n.state.service.ingest().digest()).collect();
                let same = digests.windows(2).all(|w| w[0] == w[1]);
                if same && reported != Some(digests[0]) {
                    println!(
                        "converged: every node holds the same {} records (digest {}) after {:.1} s",
                        digests[0].count(),
                        &digests[0].hash().to_hex()[..16],
                        started.elapsed().as_secs_f64()
                    );
                    reported = Some(digests[0]);
                }
            }
        }
    }
    println!("stopping {} nodes…", nodes.len());
    for running in nodes {
        running.stop().await?;
    }
    println!("stopped; stores flushed");
    Ok(())
}

fn print_nodes(nodes: &[DemoNode]) {
    println!("KIM demo: {} regional nodes on this machine", nodes.len());
    println!();
    for n in nodes {
        println!("  {} ({})", n.name, n.nuts);
        println!("    api:    http://{}/api/v1/status", n.api);
        println!("    token:  {}", n.token);
        println!("    cli:    kim --data-dir {} status", n.data_dir.display());
    }
    println!();
    if let Some(first) = nodes.first() {
        println!(
            "try:  curl -H 'Authorization: Bearer {}' http://{}/api/v1/offers",
            first.token, first.api
        );
    }
    println!("Ctrl-C stops every node cleanly.");
}
