//! The `kim` command line. Thin: parses arguments, sets up logging, hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kim_node::cli::{self, Client, ClientArgs, ItemCommand, SavedCommand, SearchArgs};
use kim_node::cli_members::{self, MembersCommand};
use kim_node::config::{Config, DataDir};
use kim_node::{bench, node};

/// KIM — Knowledge and Information Manager: a regional node of a federated co-operation network.
#[derive(Debug, Parser)]
#[command(name = "kim", version, about)]
struct Cli {
    /// The node's data directory (key, token, config, store).
    #[arg(long, global = true, env = "KIM_DATA_DIR", default_value = "kim-data")]
    data_dir: PathBuf,
    /// Log format on stderr; the filter comes from RUST_LOG (default info).
    #[arg(long, global = true, env = "KIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `kim federation …`: founding by files (`cli_founding`), and invite, join, leave.
#[derive(Debug, Subcommand)]
enum FederationCommand {
    #[command(flatten)]
    Founding(kim_node::cli_founding::FoundingCommand),
    /// Sign an invitation token for a new region (printed on stdout).
    Invite {
        /// Days the invitation stays valid (at most 90).
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Bootstrap address to put in it, ending in /p2p/<peer id> (repeatable; default:
        /// this node's and other members' addresses).
        #[arg(long)]
        bootstrap: Vec<String>,
    },
    /// Ask to join a federation with an invitation (on a fresh node that is not running;
    /// `-` reads the token from stdin). Then `kim run` waits for admission.
    Join {
        token: String,
        /// A word to the members who decide on the request.
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Leave the federation.
    Leave {
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new node: region key, API token, config and store.
    Init {
        /// The region's name, e.g. "Steiermark".
        #[arg(long, env = "KIM_REGION_NAME")]
        region_name: String,
        /// NUTS 2024 code of the region, e.g. AT22.
        #[arg(long, env = "KIM_NUTS")]
        nuts: String,
        /// The agency operating the node.
        #[arg(long)]
        agency: Option<String>,
        /// ISO 639-1 languages the agency works in (repeatable).
        #[arg(long = "language")]
        languages: Vec<String>,
        /// HTTP API address (default 127.0.0.1:7650).
        #[arg(long, env = "KIM_API_LISTEN")]
        api_listen: Option<SocketAddr>,
        /// libp2p listen multiaddr (repeatable; default /ip4/0.0.0.0/tcp/7651).
        #[arg(long, env = "KIM_P2P_LISTEN")]
        p2p_listen: Vec<String>,
        /// A member node to dial at start, as a multiaddr ending in /p2p/<peer id> (repeatable).
        #[arg(long)]
        bootstrap: Vec<String>,
    },
    /// Run the node until SIGINT or SIGTERM.
    Run,
    /// Start four regional nodes on this machine that replicate to each other (Ctrl-C stops).
    Demo {
        /// Directory of the demo nodes' data directories (reused when run again).
        #[arg(long, default_value = "kim-demo")]
        dir: PathBuf,
        /// API ports are base..base+3, p2p ports base+10..base+13.
        #[arg(long, default_value_t = 7660)]
        base_port: u16,
        /// Records each node publishes when first created.
        #[arg(long, default_value_t = 36)]
        records: usize,
        /// Delete an existing demo directory first.
        #[arg(long)]
        fresh: bool,
    },
    /// Show the running node's status.
    Status,
    /// List the connected peers: region, addresses, round-trip time, last sync.
    Peers,
    /// Found a federation with other regions (profile, create, sign, adopt), invite a region,
    /// join with an invitation, or leave.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// The federation's members and the candidates waiting for endorsements.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// Expressions of interest: respond to an offer, accept or decline, record an outcome.
    Interest {
        #[command(subcommand)]
        command: kim_node::cli_interest::InterestCommand,
    },
    /// Endorse a pending candidate (region id or name); at the charter's threshold every node
    /// admits it.
    Endorse { region: String },
    /// Organisations (public profiles of SMEs, administrations, research bodies).
    Org {
        #[command(subcommand)]
        command: ItemCommand,
    },
    /// Projects.
    Project {
        #[command(subcommand)]
        command: ItemCommand,
    },
    /// Co-operation offers and requests.
    Offer {
        #[command(subcommand)]
        command: ItemCommand,
    },
    /// Knowledge items (good practices, manuals, studies) and their attachments.
    Knowledge {
        #[command(subcommand)]
        command: kim_node::cli_blobs::KnowledgeCommand,
    },
    /// Read the audit log of every change made through the API.
    Audit {
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Write a backup bundle of every signed record (and with --local, local-only data).
    Export {
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[arg(long)]
        local: bool,
    },
    /// Import a bundle; every record is verified before any is accepted.
    Import { file: PathBuf },
    /// Search everything this node holds (its own items and the federation's).
    Search {
        #[command(flatten)]
        search: SearchArgs,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Show the matches of an offer or request, with each score's breakdown.
    Match {
        /// The offer's or request's item key.
        key: String,
        /// The owning region (hex); this node's region by default.
        #[arg(long)]
        region: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        min_score: u8,
    },
    /// Saved searches: new matching items raise notifications.
    Saved {
        #[command(subcommand)]
        command: SavedCommand,
    },
    /// Notifications from saved searches (newest first), or mark them read.
    Notifications {
        /// Only unread ones.
        #[arg(long)]
        unread: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Mark these notifications read (repeatable).
        #[arg(long)]
        read: Vec<String>,
        /// Mark every notification read.
        #[arg(long)]
        read_all: bool,
    },
    /// Per-region counts of items by kind, sector and status.
    Overview,
    /// Co-operation potential: complementary pairs per region pair scoring at least a threshold.
    Potential {
        #[arg(long, default_value_t = 50)]
        threshold: u8,
    },
    /// The region's signing key: rotate it on the running node.
    Keys {
        #[command(subcommand)]
        command: kim_node::cli_keys::KeysCommand,
    },
    /// Work on the store of a stopped node.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Measure and print throughput figures.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // No colour codes when stderr is a file or a pipe (journald, log files, tests).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed here, when it is called,
/// not when the future is first polled: `node::run` polls it only once the node has started,
/// and the API answers before that, so a SIGTERM in between would otherwise kill the process
/// with the default action instead of stopping it cleanly (the crash test saw that under load).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(err) => {
                tracing::error!(cause = %err, signal = name, "cannot listen for the signal");
                None
            }
        };
        let interrupt = listen(SignalKind::interrupt(), "SIGINT");
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        async move {
            let wait = |stream: Option<tokio::signal::unix::Signal>| async move {
                match stream {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
            tracing::info!("shutting down");
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}

/// mimalloc instead of glibc malloc: the pipeline, sled and tantivy allocate per record, and
/// glibc's allocator took about a sixth of the CPU of ingest and catch-up (`perf`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(dispatch(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line with the whole cause chain, for an operator; no backtrace even when
            // RUST_BACKTRACE is set (the messages say what to do).
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let data = DataDir::new(&cli.data_dir);
    let client = || Client::new(&data, &cli.client);
    match cli.command {
        Command::Init {
            region_name,
            nuts,
            agency,
            languages,
            api_listen,
            p2p_listen,
            bootstrap,
        } => {
            let report = node::init(
                &data,
                node::InitOptions {
                    region_name,
                    nuts,
                    agency,
                    languages,
                    api_listen,
                    p2p_listen,
                    bootstrap,
                    seed: None,
                },
            )
            .await?;
            println!("created KIM node in {}", data.root.display());
            println!("region id:   {}", report.region);
            println!("federation:  {}", report.federation);
            println!("peer id:     {}", report.peer_id);
            println!("api:         http://{}", report.config.api_listen);
            println!("token file:  {}", data.token().display());
            println!("start it:    kim --data-dir {} run", data.root.display());
            Ok(())
        }
        Command::Run => {
            let config = Config::load(&data.root)?;
            node::run(&data, config, shutdown_signal()).await
        }
        Command::Demo {
            dir,
            base_port,
            records,
            fresh,
        } => {
            kim_node::demo::run(
                kim_node::demo::DemoOptions {
                    dir,
                    base_port,
                    records_per_node: records,
                    fresh,
                },
                shutdown_signal(),
            )
            .await
        }
        Command::Status => cli::status(&client()?).await,
        Command::Peers => cli::peers(&client()?).await,
        Command::Federation { command } => match command {
            FederationCommand::Invite { days, bootstrap } => {
                cli_members::invite(&client()?, days, bootstrap).await
            }
            FederationCommand::Join { token, message } => {
                cli_members::join(&data, &token, &message).await
            }
            FederationCommand::Leave { reason } => cli_members::leave(&client()?, reason).await,
            FederationCommand::Founding(command) => {
                kim_node::cli_founding::run(&data, command).await
            }
        },
        Command::Members { command } => cli_members::members(&client()?, command).await,
        Command::Endorse { region } => cli_members::endorse(&client()?, &region).await,
        Command::Interest { command } => {
            kim_node::cli_interest::interest(&client()?, command).await
        }
        Command::Org { command } => cli::items(&client()?, "organisations", command).await,
        Command::Project { command } => cli::items(&client()?, "projects", command).await,
        Command::Offer { command } => cli::items(&client()?, "offers", command).await,
        Command::Knowledge { command } => kim_node::cli_blobs::knowledge(&client()?, command).await,
        Command::Audit { after, limit } => cli::audit(&client()?, after, limit).await,
        Command::Export { output, local } => cli::export(&client()?, output, local).await,
        Command::Import { file } => cli::import(&client()?, file).await,
        Command::Search {
            search,
            limit,
            offset,
        } => cli::search(&client()?, &search, limit, offset).await,
        Command::Match {
            key,
            region,
            limit,
            min_score,
        } => cli::matches(&client()?, &key, region, limit, min_score).await,
        Command::Saved { command } => cli::saved(&client()?, command).await,
        Command::Notifications {
            unread,
            limit,
            read,
            read_all,
        } => cli::notifications(&client()?, unread, limit, read, read_all).await,
        Command::Overview => cli::overview(&client()?).await,
        Command::Potential { threshold } => cli::potential(&client()?, threshold).await,
        Command::Keys { command } => kim_node::cli_keys::run(&client()?, command).await,
        Command::Bench { what } => bench::run(what).await,
        Command::Store {
            command: StoreCommand::Compact,
        } => compact_store(&data).await,
    }
}

#[derive(Debug, clap::Subcommand)]
enum StoreCommand {
    /// Rewrite the store into a fresh database, dropping what sled keeps of old page
    /// versions and emptied pages, and swap it in. Stop the node first; a crash or Ctrl-C at
    /// any point leaves either the old or the new store, complete, at the next start.
    Compact,
}

async fn compact_store(data: &DataDir) -> anyhow::Result<()> {
    let config = Config::load(&data.root)?;
    let dir = data.store();
    eprintln!("compacting {} …", dir.display());
    let started = std::time::Instant::now();
    let mut reported = std::time::Instant::now();
    let done = kim_node::store::Store::compact(&dir, config.store_cache_bytes, |entries| {
        if reported.elapsed() >= std::time::Duration::from_secs(2) {
            eprintln!("  {entries} entries copied");
            reported = std::time::Instant::now();
        }
    })
    .await?;
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    println!(
        "store compacted: {} entries in {:.1} s; {:.1} MiB on disk before, {:.1} MiB after",
        done.entries,
        started.elapsed().as_secs_f64(),
        mib(done.bytes_before),
        mib(done.bytes_after)
    );
    Ok(())
}
