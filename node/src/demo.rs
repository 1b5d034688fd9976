//! `kim demo`: a small federation on this machine. Four regional nodes (Steiermark AT22,
//! Vzhodna Slovenija SI03, Friuli-Venezia Giulia ITH4, Jadranska Hrvatska HR03) found one
//! federation, each with its store under the demo directory, its API on loopback and its
//! libp2p listener on loopback. Each node is seeded with a few dozen realistic records of its
//! own region; they replicate to the others by sync and gossip. The demo prints each node's
//! API address and token, reports when every node holds the same records, and stops every
//! node cleanly on Ctrl-C. Run again, it restarts the same federation from its directory.
//!
//! Then a fifth region, Kärnten (AT21), joins live the way a real one would: its node is
//! initialised on its own, Steiermark invites it, it asks to join with the invitation (as a
//! guest, limited to the join protocol), three members endorse it (the charter's majority of
//! four), every node admits it on its own, and it catches up on everything by sync. The demo
//! prints each step and the time from the last endorsement to convergence.

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

/// The region that joins the demo federation live: name, NUTS code, languages.
pub const DEMO_NEWCOMER: (&str, &str, &[&str]) = ("Kärnten", "AT21", &["de", "sl", "en"]);

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
        let mut content = samples::content(
            &mut rng,
            ingest.federation(),
            service.author_key(),
            kind,
            &item,
            now - (n as u64) * 3_600_000,
        );
        if let (kim_protocol::Body::Knowledge(k), Some(blobs)) =
            (&mut content.body, service.blobs())
        {
            // A real file behind each attachment, so other nodes can fetch it.
            let mut csv = String::from("region,year,indicator,value\n");
            for year in 2020..2026 {
                for indicator in ["sme_exports", "rd_staff", "cross_border_projects"] {
                    csv.push_str(&format!(
                        "{},{year},{indicator},{}\n",
                        k.regions.join(" "),
                        n * 7 + year as usize % 13
                    ));
                }
            }
            let hash = blobs.put(csv.as_bytes())?;
            k.attachments = vec![kim_protocol::types::Attachment {
                name: format!("{item}-indicators.csv"),
                media_type: "text/csv".into(),
                size_bytes: csv.len() as u64,
                blake3: hash,
            }];
            blobs.claim(&hash)?;
        }
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
            opened.store.close().await?;
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
    let newcomer = data_dir(&options, DEMO_NEWCOMER.1);
    let newcomer_exists = newcomer.config().exists();
    if newcomer_exists {
        // It joined in an earlier run: it starts with the others.
        let config = Config::load(&newcomer.root)?;
        let listener = TcpListener::bind(config.api_listen).await?;
        let running = node::start(&newcomer, config, listener).await?;
        shown.push(DemoNode {
            name: DEMO_NEWCOMER.0.to_string(),
            nuts: DEMO_NEWCOMER.1.to_string(),
            api: running.api_addr,
            token: newcomer.load_token()?,
            data_dir: newcomer.root.clone(),
        });
        nodes.push(running);
    }
    print_nodes(&shown);
    let started = Instant::now();
    let mut joining = if newcomer_exists {
        None
    } else {
        Some(Box::pin(join_live(&options, &nodes)))
    };
    let mut joined: Option<node::Running> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut reported = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            outcome = async { match joining.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                joining = None;
                match outcome {
                    Ok(running) => joined = Some(running),
                    Err(e) => println!("the fifth region could not join: {e:#}"),
                }
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                let digests: Vec<_> = nodes
                    .iter()
                    .chain(joined.iter())
                    .map(|n| n.state.service.ingest().digest())
                    .collect();
                let same = digests.windows(2).all(|w| w[0] == w[1]);
                if same && reported != Some(digests[0]) && (joining.is_none() || reported.is_none()) {
                    println!(
                        "converged: every node ({}) holds the same {} records (digest {}) after {:.1} s",
                        digests.len(),
                        digests[0].count(),
                        &digests[0].hash().to_hex()[..16],
                        started.elapsed().as_secs_f64()
                    );
                    reported = Some(digests[0]);
                }
            }
        }
    }
    drop(joining);
    nodes.extend(joined);
    println!("stopping {} nodes…", nodes.len());
    for running in nodes {
        running.stop().await?;
    }
    println!("stopped; stores flushed");
    Ok(())
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
async fn wait(timeout: Duration, what: &str, check: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            anyhow::bail!("{what}: not after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The fifth region joins: init, invitation, join request, endorsements, admission, catch-up.
/// Returns its running node.
async fn join_live(
    options: &DemoOptions,
    members: &[node::Running],
) -> anyhow::Result<node::Running> {
    let (name, nuts, languages) = DEMO_NEWCOMER;
    let index = DEMO_REGIONS.len();
    // Let the founders settle first, so the steps read in order.
    let founders_converged = || {
        let digests: Vec<_> = members
            .iter()
            .map(|n| n.state.service.ingest().digest())
            .collect();
        digests.windows(2).all(|w| w[0] == w[1])
    };
    wait(
        Duration::from_secs(60),
        "founders converged",
        founders_converged,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let data = data_dir(options, nuts);
    node::init(
        &data,
        InitOptions {
            region_name: name.to_string(),
            nuts: nuts.to_string(),
            agency: None,
            languages: languages.iter().map(|l| l.to_string()).collect(),
            api_listen: Some(api_addr(options.base_port, index)),
            p2p_listen: vec![p2p_addr(options.base_port, index)],
            bootstrap: vec![],
            seed: None,
        },
    )
    .await?;
    let inviter = &members[0];
    let mut bootstrap = inviter
        .net
        .listen_addrs()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_iter()
        .next()
        .context("Steiermark's node listens nowhere")?;
    bootstrap.push(libp2p::multiaddr::Protocol::P2p(inviter.peer_id()));
    let token = inviter
        .state
        .service
        .invite(vec![bootstrap.to_string()], 86_400_000)?;
    println!();
    println!(
        "{} invites {name} ({nuts}): kim federation invite",
        DEMO_REGIONS[0].0
    );
    let report = crate::join::join(
        &data,
        &token,
        "Kärnten would like to co-operate with the Alps–Adriatic regions.",
        Duration::from_secs(20),
    )
    .await?;
    println!(
        "{name} asks to join: kim federation join <token> (pending: 0 of {} endorsements)",
        report.required
    );
    let config = Config::load(&data.root)?;
    let listener = TcpListener::bind(config.api_listen).await?;
    let running = node::start(&data, config, listener).await?;
    let region = running.state.service.region();
    wait(
        Duration::from_secs(60),
        "join request seen by every member",
        || {
            members.iter().all(|m| {
                m.state
                    .service
                    .ingest()
                    .membership()
                    .pending
                    .iter()
                    .any(|p| p.candidate == region)
            })
        },
    )
    .await?;
    let mut last = Instant::now();
    for (k, member) in members.iter().enumerate().skip(1).take(report.required) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        member.state.service.endorse(region).await?;
        last = Instant::now();
        println!(
            "{} endorses {name} ({} of {}): kim endorse {}",
            DEMO_REGIONS[k].0,
            k,
            report.required,
            &region.to_hex()[..16]
        );
    }
    let everyone = || {
        members
            .iter()
            .chain(std::iter::once(&running))
            .all(|m| m.state.service.ingest().membership().is_member(&region))
    };
    wait(Duration::from_secs(60), "admitted everywhere", everyone).await?;
    let seeded = seed(&running.state.service, index, options.records_per_node).await?;
    let converged = || {
        let own = running.state.service.ingest().digest();
        members
            .iter()
            .all(|m| m.state.service.ingest().digest() == own)
    };
    // Its own records go out by sync with every member it is connected to.
    let push = async {
        loop {
            for peer in running.net.peers().await.unwrap_or_default() {
                if !peer.guest {
                    let _ = running.net.sync_with(peer.peer_id).await;
                }
            }
            if converged() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), push)
        .await
        .context("the newcomer did not converge with the members")?;
    println!(
        "admitted: {name} is a member on every node, caught up and published {seeded} records; \
         converged {:.2} s after the last endorsement",
        last.elapsed().as_secs_f64()
    );
    Ok(running)
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
