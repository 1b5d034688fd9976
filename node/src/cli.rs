//! The client side of the `kim` command line: subcommands that talk to a running node over its
//! HTTP API, printing readable tables by default and JSON with `--json`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::{Config, DataDir};

/// Output for people and scripts. A closed pipe (`kim offer list | head`) is not an error:
/// unlike `std::println!`, this never panics, and what cannot be written is dropped.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// How to reach the node: from the data directory unless overridden.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Node API base URL (default: the running node's `api-address` in the data directory, else
    /// `api_listen` from its config.toml).
    #[arg(long, global = true, env = "KIM_API")]
    pub api: Option<String>,
    /// File holding the API token (default: the data directory's api-token).
    #[arg(long, global = true, env = "KIM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What to do with items of one collection.
#[derive(Debug, Subcommand)]
pub enum ItemCommand {
    /// List items, newest first.
    List {
        /// live (default), expired, withdrawn or all.
        #[arg(long)]
        status: Option<String>,
        /// NUTS prefix, e.g. AT2.
        #[arg(long)]
        nuts: Option<String>,
        /// NACE prefix, e.g. 26.
        #[arg(long)]
        nace: Option<String>,
        /// Text the title, summary or name contains.
        #[arg(long)]
        text: Option<String>,
        /// Only this region (hex id).
        #[arg(long)]
        region: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Follow cursors and print every page.
        #[arg(long)]
        all: bool,
    },
    /// Show one item.
    Show {
        key: String,
        #[arg(long)]
        region: Option<String>,
    },
    /// Publish a new item from a JSON file ({"key"?, "body", "expires_at_ms"?, "private"?}).
    Publish {
        #[arg(long)]
        file: PathBuf,
    },
    /// Publish a new revision of an own item from a JSON file.
    Revise {
        key: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Withdraw an own item; its content is erased on every node.
    Withdraw {
        key: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Save a draft (local only) from a JSON file.
    Draft {
        key: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// List drafts.
    Drafts,
    /// Publish a saved draft.
    PublishDraft { key: String },
    /// Delete a saved draft.
    DeleteDraft { key: String },
}

/// Where the node of `data` answers: the address the running node wrote to `DATA/api-address`,
/// else the configured `api_listen`.
fn api_base(data: &DataDir) -> anyhow::Result<String> {
    let file = data.api_address();
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let mut lines = text.lines();
            let url = lines.next().unwrap_or("").trim();
            anyhow::ensure!(
                url.starts_with("http://") && url.len() > "http://".len(),
                "{} does not hold an API address ({url:?}); remove it and restart the node",
                file.display()
            );
            // A node killed without a clean stop leaves the file behind; its port may belong
            // to another program by now, which must not be sent the token.
            let pid = lines.find_map(|l| l.trim().strip_prefix("pid="));
            if let Some(pid) = pid
                && Path::new("/proc/self").exists()
                && !Path::new("/proc").join(pid).exists()
            {
                anyhow::bail!(
                    "the node is not running: {} was left by process {pid}, which has ended; \
                     start it with `kim --data-dir DIR run`",
                    file.display()
                );
            }
            return Ok(url.trim_end_matches('/').to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", file.display()));
        }
    }
    let config = Config::load(&data.root)?;
    anyhow::ensure!(
        config.api_listen.port() != 0,
        "the node is not running: its api_listen ({}) takes a port chosen at start, and {} \
         (written while it runs) is missing; start it with `kim --data-dir DIR run`",
        config.api_listen,
        file.display()
    );
    Ok(format!("http://{}", config.api_listen))
}

/// A minimal HTTP client for the node API.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    pub json: bool,
}

impl Client {
    /// Resolves the API address and token from flags, environment and the data directory.
    pub fn new(data: &DataDir, args: &ClientArgs) -> anyhow::Result<Client> {
        let base = match &args.api {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => api_base(data)?,
        };
        let token_path = args.token_file.clone().unwrap_or_else(|| data.token());
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| {
                format!(
                    "cannot read the API token from {}: pass --data-dir or --token-file",
                    token_path.display()
                )
            })?
            .trim()
            .to_string();
        Ok(Client {
            base,
            token,
            http: reqwest::Client::new(),
            json: args.json,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.finish(request, &url).await
    }

    /// Posts raw bytes (a file upload) with a content type.
    pub async fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let request = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes);
        self.finish(request, &url).await
    }

    async fn finish(&self, request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!(
                    "cannot reach the node at {}: is it running? start it with `kim --data-dir DIR run`",
                    self.base
                )
            } else {
                anyhow::anyhow!("request to {url} failed: {e}")
            }
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            return Ok(value);
        }
        let code = value["error"]["code"].as_str().unwrap_or("http.error");
        let message = value["error"]["message"].as_str().unwrap_or("");
        if status == reqwest::StatusCode::UNAUTHORIZED {
            bail!("the node refused the token ({code}): {message}");
        }
        bail!("{code}: {message} (HTTP {})", status.as_u16())
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Whether output is JSON for scripts.
    pub fn json(&self) -> bool {
        self.json
    }

    pub(crate) fn print(&self, value: &Value, table: impl FnOnce(&Value)) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            table(value);
        }
    }
}

fn read_json(path: &PathBuf) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub(crate) fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn title_of(item: &Value) -> String {
    let body = &item["body"];
    for field in ["title", "name", "acronym"] {
        if let Some(t) = body[field].as_str() {
            return t.to_string();
        }
    }
    String::new()
}

pub(crate) fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

fn print_items(items: &[Value]) {
    println!(
        "{:<28} {:>4} {:<10} {:<10} TITLE",
        "KEY", "REV", "STATUS", "REGION"
    );
    for item in items {
        println!(
            "{:<28} {:>4} {:<10} {:<10} {}",
            short(item["key"].as_str().unwrap_or(""), 28),
            item["revision"].as_u64().unwrap_or(0),
            item["status"].as_str().unwrap_or(""),
            short(item["region"].as_str().unwrap_or(""), 10),
            short(&title_of(item), 60)
        );
    }
}

fn print_item(item: &Value) {
    println!("key:      {}", item["key"].as_str().unwrap_or(""));
    println!("id:       {}", item["id"].as_str().unwrap_or(""));
    println!("region:   {}", item["region"].as_str().unwrap_or(""));
    println!("kind:     {}", item["kind"].as_str().unwrap_or(""));
    println!("revision: {}", item["revision"]);
    println!("status:   {}", item["status"].as_str().unwrap_or(""));
    if !item["body"].is_null() {
        println!("title:    {}", title_of(item));
        println!(
            "body:     {}",
            serde_json::to_string_pretty(&item["body"]).unwrap_or_default()
        );
    }
    if let Some(private) = item.get("private").filter(|p| !p.is_null()) {
        println!("private (this node only): {private}");
    }
}

/// Runs an item subcommand against a collection path (organisations, projects, …).
pub async fn items(client: &Client, collection: &str, command: ItemCommand) -> anyhow::Result<()> {
    match command {
        ItemCommand::List {
            status,
            nuts,
            nace,
            text,
            region,
            limit,
            all,
        } => {
            let mut query = vec![format!("limit={limit}")];
            for (name, value) in [
                ("status", status),
                ("nuts", nuts),
                ("nace", nace),
                ("text", text),
                ("region", region),
            ] {
                if let Some(v) = value {
                    query.push(format!("{name}={}", encode(&v)));
                }
            }
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = query.clone();
                if let Some(c) = &cursor {
                    q.push(format!("cursor={c}"));
                }
                let page = client
                    .get(&format!("/{collection}?{}", q.join("&")))
                    .await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                cursor = page["next"].as_str().map(String::from);
                if !all || cursor.is_none() {
                    break;
                }
            }
            client.print(&Value::Array(items.clone()), |_| print_items(&items));
        }
        ItemCommand::Show { key, region } => {
            let q = region
                .map(|r| format!("?region={}", encode(&r)))
                .unwrap_or_default();
            let item = client
                .get(&format!("/{collection}/{}{q}", encode(&key)))
                .await?;
            client.print(&item, print_item);
        }
        ItemCommand::Publish { file } => {
            let item = client
                .post(&format!("/{collection}"), read_json(&file)?)
                .await?;
            client.print(&item, |i| {
                println!(
                    "published {} revision {} ({})",
                    i["key"].as_str().unwrap_or(""),
                    i["revision"],
                    i["id"].as_str().unwrap_or("")
                )
            });
        }
        ItemCommand::Revise { key, file } => {
            let item = client
                .put(
                    &format!("/{collection}/{}", encode(&key)),
                    read_json(&file)?,
                )
                .await?;
            client.print(&item, |i| {
                println!("revised {} to revision {}", key, i["revision"])
            });
        }
        ItemCommand::Withdraw { key, reason } => {
            let item = client
                .post(
                    &format!("/{collection}/{}/withdraw", encode(&key)),
                    json!({ "reason": reason }),
                )
                .await?;
            client.print(&item, |i| {
                println!("withdrew {} (revision {})", key, i["revision"])
            });
        }
        ItemCommand::Draft { key, file } => {
            client
                .put(
                    &format!("/drafts/{collection}/{}", encode(&key)),
                    read_json(&file)?,
                )
                .await?;
            client.print(&json!({ "saved": key }), |_| {
                println!("draft {key} saved (local only)")
            });
        }
        ItemCommand::Drafts => {
            let drafts = client.get(&format!("/drafts/{collection}")).await?;
            client.print(&drafts, |d| {
                println!("{:<28} TITLE", "KEY");
                for draft in d.as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<28} {}",
                        short(draft["key"].as_str().unwrap_or(""), 28),
                        short(&title_of(&draft["draft"]), 60)
                    );
                }
            });
        }
        ItemCommand::PublishDraft { key } => {
            let item = client
                .post(
                    &format!("/drafts/{collection}/{}/publish", encode(&key)),
                    json!(null),
                )
                .await?;
            client.print(&item, |i| {
                println!("published draft {} as revision {}", key, i["revision"])
            });
        }
        ItemCommand::DeleteDraft { key } => {
            client
                .delete(&format!("/drafts/{collection}/{}", encode(&key)))
                .await?;
            client.print(&json!({ "deleted": key }), |_| {
                println!("draft {key} deleted")
            });
        }
    }
    Ok(())
}

/// `kim status`.
/// `kim peers`: the connected peers as a table.
pub async fn peers(client: &Client) -> anyhow::Result<()> {
    let peers = client.get("/peers").await?;
    client.print(&peers, |peers| {
        let rows = peers.as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            println!("no peers connected");
            return;
        }
        println!(
            "{:<22} {:<24} {:>8} {:>10}  address",
            "peer", "region", "rtt ms", "last sync"
        );
        let now = crate::ingest::system_now_ms();
        for p in rows {
            let rtt = p["rtt_ms"]
                .as_f64()
                .map_or("-".to_string(), |r| format!("{r:.1}"));
            let last = p["last_sync_ms"].as_u64().map_or("-".to_string(), |t| {
                format!("{}s ago", now.saturating_sub(t) / 1000)
            });
            println!(
                "{:<22} {:<24} {:>8} {:>10}  {}",
                short(p["peer_id"].as_str().unwrap_or(""), 20),
                p["region_name"]
                    .as_str()
                    .unwrap_or(if p["guest"].as_bool() == Some(true) {
                        "(guest: join only)"
                    } else {
                        "(not a member)"
                    }),
                rtt,
                last,
                p["addrs"][0].as_str().unwrap_or("")
            );
        }
    });
    Ok(())
}

pub async fn status(client: &Client) -> anyhow::Result<()> {
    let s = client.get("/status").await?;
    client.print(&s, |s| {
        println!(
            "region:      {} ({})",
            s["region_name"].as_str().unwrap_or(""),
            s["nuts"].as_str().unwrap_or("")
        );
        println!("region id:   {}", s["region"].as_str().unwrap_or(""));
        println!("federation:  {}", s["federation"].as_str().unwrap_or(""));
        let members = s["members"].as_array().cloned().unwrap_or_default();
        println!("members:     {}", members.len());
        for m in &members {
            println!(
                "  - {} {}",
                short(m["region"].as_str().unwrap_or(""), 16),
                m["name"].as_str().unwrap_or("")
            );
        }
        let own = &s["membership"];
        match own["state"].as_str().unwrap_or("") {
            "pending" => println!(
                "standing:    pending: {} of {} endorsements",
                own["endorsements"], own["required"]
            ),
            other => println!("standing:    {other}"),
        }
        println!("pending:     {}", s["pending"]);
        println!("peers:       {}", s["peers"].as_array().map_or(0, Vec::len));
        let net = &s["network"];
        if net.is_object() {
            println!("peer id:     {}", net["peer_id"].as_str().unwrap_or(""));
            if let Some(addrs) = net["listen_addrs"].as_array() {
                for a in addrs {
                    println!("  listening  {}", a.as_str().unwrap_or(""));
                }
            }
            println!(
                "gossip:      {} received, {} accepted, {} ignored, {} rejected",
                net["gossip_received"],
                net["gossip_accepted"],
                net["gossip_ignored"],
                net["gossip_rejected"]
            );
            println!(
                "sync:        {} sessions ({} failed), {} records received, {} rejected",
                net["sync_sessions_ok"],
                net["sync_sessions_failed"],
                net["sync_records_new"],
                net["sync_records_rejected"]
            );
        }
        println!("records:");
        if let Some(map) = s["records"].as_object() {
            for (k, v) in map {
                println!("  {k:<14} {v}");
            }
        }
        println!(
            "sync set:    {} records, digest {}",
            s["sync_set"],
            short(s["state_digest"].as_str().unwrap_or(""), 16)
        );
        let rejections = s["rejections"].as_object().cloned().unwrap_or_default();
        println!(
            "rejections:  {}",
            if rejections.is_empty() {
                "none".to_string()
            } else {
                String::new()
            }
        );
        for (k, v) in rejections {
            println!("  {k:<30} {v}");
        }
        println!("store:       {} bytes", s["store_bytes"]);
        println!(
            "search:      {} waiting to be indexed, {} commits",
            s["search"]["backlog"], s["search"]["commits"]
        );
    });
    Ok(())
}

/// `kim audit`.
pub async fn audit(client: &Client, after: Option<u64>, limit: usize) -> anyhow::Result<()> {
    let mut path = format!("/audit?limit={limit}");
    if let Some(a) = after {
        path.push_str(&format!("&after={a}"));
    }
    let entries = client.get(&path).await?;
    client.print(&entries, |e| {
        println!(
            "{:>6} {:<15} {:<16} {:<40} RESULT",
            "SEQ", "AT (ms)", "ACTION", "TARGET"
        );
        for entry in e.as_array().cloned().unwrap_or_default() {
            println!(
                "{:>6} {:<15} {:<16} {:<40} {}",
                entry["seq"],
                entry["at_ms"],
                entry["action"].as_str().unwrap_or(""),
                short(entry["target"].as_str().unwrap_or(""), 40),
                entry["result"].as_str().unwrap_or("")
            );
        }
    });
    Ok(())
}

/// `kim export`.
pub async fn export(client: &Client, output: Option<PathBuf>, local: bool) -> anyhow::Result<()> {
    let bundle = client.get(&format!("/export?local={local}")).await?;
    let count = bundle["records"].as_array().map_or(0, Vec::len);
    let text = serde_json::to_string(&bundle)?;
    match output {
        Some(path) => {
            write_private(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("exported {count} records to {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// Writes a backup readable only by its owner (mode 0600 on unix): with `--local` it holds
/// contact persons, internal notes and drafts. Replaces an existing file.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        // An existing file keeps its mode on open; narrow it before writing anything.
        if let Ok(meta) = std::fs::metadata(path)
            && meta.is_file()
        {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `kim import`.
pub async fn import(client: &Client, file: PathBuf) -> anyhow::Result<()> {
    let bundle = read_json(&file)?;
    let report = client.post("/import", bundle).await?;
    client.print(&report, |r| {
        println!(
            "imported: {} stored, {} already held, {} older revisions, {} local values",
            r["stored"], r["duplicates"], r["older"], r["local_values"]
        )
    });
    Ok(())
}

/// Search filters, shared by `kim search` and `kim saved add`. Lists are comma-separated.
#[derive(Debug, Clone, Default, Args)]
pub struct SearchArgs {
    /// Free text (any word, ranked; --all-words for every word).
    pub text: Option<String>,
    /// Item kinds (cooperation, knowledge, organisation, project) or co-operation kinds
    /// (technology_offer, business_request, …).
    #[arg(long)]
    pub kind: Option<String>,
    /// NUTS codes at any level (AT, AT2, AT22).
    #[arg(long)]
    pub nuts: Option<String>,
    /// NACE codes at any level (C, 26, 26.11).
    #[arg(long)]
    pub nace: Option<String>,
    /// ISO 3166-1 countries.
    #[arg(long)]
    pub country: Option<String>,
    /// ISO 639-1 languages.
    #[arg(long)]
    pub language: Option<String>,
    /// live (default), expired or all.
    #[arg(long)]
    pub status: Option<String>,
    /// Partnership types (licence, technical_cooperation, …).
    #[arg(long)]
    pub partnership: Option<String>,
    /// Deadline for expressions of interest on or before this day (YYYY-MM-DD).
    #[arg(long)]
    pub deadline_before: Option<String>,
    /// Deadline for expressions of interest on or after this day (YYYY-MM-DD).
    #[arg(long)]
    pub deadline_after: Option<String>,
    /// Only items of this region (hex id).
    #[arg(long)]
    pub region: Option<String>,
    /// Every word must occur.
    #[arg(long)]
    pub all_words: bool,
}

impl SearchArgs {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (name, value) in [
            ("q", &self.text),
            ("kind", &self.kind),
            ("nuts", &self.nuts),
            ("nace", &self.nace),
            ("country", &self.country),
            ("language", &self.language),
            ("status", &self.status),
            ("partnership", &self.partnership),
            ("deadline_before", &self.deadline_before),
            ("deadline_after", &self.deadline_after),
            ("region", &self.region),
        ] {
            if let Some(v) = value {
                out.push((name, v.clone()));
            }
        }
        if self.all_words {
            out.push(("all_words", "true".into()));
        }
        out
    }
}

/// `kim search`.
pub async fn search(
    client: &Client,
    args: &SearchArgs,
    limit: usize,
    offset: usize,
) -> anyhow::Result<()> {
    let mut query: Vec<String> = args
        .pairs()
        .into_iter()
        .map(|(k, v)| format!("{k}={}", encode(&v)))
        .collect();
    query.push(format!("limit={limit}"));
    query.push(format!("offset={offset}"));
    let results = client.get(&format!("/search?{}", query.join("&"))).await?;
    client.print(&results, |r| {
        let hits = r["hits"].as_array().cloned().unwrap_or_default();
        println!("{} matching, showing {}", r["total"], hits.len());
        println!(
            "{:>6} {:<12} {:<24} {:<10} TITLE",
            "SCORE", "KIND", "KEY", "REGION"
        );
        for hit in hits {
            let item = &hit["item"];
            let kind = item["body"]["kind"]
                .as_str()
                .or(item["kind"].as_str())
                .unwrap_or("");
            println!(
                "{:>6.2} {:<12} {:<24} {:<10} {}",
                hit["score"].as_f64().unwrap_or(0.0),
                short(kind, 12),
                short(item["key"].as_str().unwrap_or(""), 24),
                short(item["region"].as_str().unwrap_or(""), 10),
                short(&title_of(item), 60)
            );
        }
    });
    Ok(())
}

/// `kim match`.
pub async fn matches(
    client: &Client,
    key: &str,
    region: Option<String>,
    limit: usize,
    min_score: u8,
) -> anyhow::Result<()> {
    let mut path = format!(
        "/offers/{}/matches?limit={limit}&min_score={min_score}",
        encode(key)
    );
    if let Some(r) = region {
        path.push_str(&format!("&region={}", encode(&r)));
    }
    let report = client.get(&path).await?;
    client.print(&report, |r| {
        let matches = r["matches"].as_array().cloned().unwrap_or_default();
        println!(
            "{} matches for {} ({}) among {} candidates",
            matches.len(),
            r["key"].as_str().unwrap_or(""),
            r["title"].as_str().unwrap_or(""),
            r["considered"]
        );
        for m in matches {
            println!();
            println!(
                "{:>3}/100  {}  {} [{}, {}]",
                m["score"],
                m["key"].as_str().unwrap_or(""),
                m["title"].as_str().unwrap_or(""),
                m["kind"].as_str().unwrap_or(""),
                m["nuts"].as_str().unwrap_or("")
            );
            println!("         region {}", m["region"].as_str().unwrap_or(""));
            for part in m["breakdown"].as_array().cloned().unwrap_or_default() {
                println!(
                    "         {:<12} {:>2}/{:<2} {}",
                    part["name"].as_str().unwrap_or(""),
                    part["points"],
                    part["max"],
                    part["why"].as_str().unwrap_or("")
                );
            }
        }
    });
    Ok(())
}

/// What to do with saved searches.
#[derive(Debug, Subcommand)]
pub enum SavedCommand {
    /// Save a search; new items that match it raise notifications.
    Add {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        search: Box<SearchArgs>,
    },
    /// List saved searches.
    List,
    /// Delete a saved search.
    Rm { id: String },
}

/// `kim saved …`.
pub async fn saved(client: &Client, command: SavedCommand) -> anyhow::Result<()> {
    match command {
        SavedCommand::Add { name, search } => {
            let query: serde_json::Map<String, Value> = search
                .pairs()
                .into_iter()
                .map(|(k, v)| {
                    let value = if k == "all_words" {
                        Value::Bool(true)
                    } else {
                        Value::String(v)
                    };
                    (k.to_string(), value)
                })
                .collect();
            let saved = client
                .post("/saved-searches", json!({ "name": name, "query": query }))
                .await?;
            client.print(&saved, |s| {
                println!(
                    "saved search {} ({})",
                    s["id"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or("")
                )
            });
        }
        SavedCommand::List => {
            let list = client.get("/saved-searches").await?;
            client.print(&list, |l| {
                println!("{:<16} {:<30} QUERY", "ID", "NAME");
                for s in l.as_array().cloned().unwrap_or_default() {
                    println!(
                        "{:<16} {:<30} {}",
                        s["id"].as_str().unwrap_or(""),
                        short(s["name"].as_str().unwrap_or(""), 30),
                        s["query"]
                    );
                }
            });
        }
        SavedCommand::Rm { id } => {
            client
                .delete(&format!("/saved-searches/{}", encode(&id)))
                .await?;
            client.print(&json!({ "deleted": id }), |_| {
                println!("saved search {id} deleted")
            });
        }
    }
    Ok(())
}

/// `kim notifications`.
pub async fn notifications(
    client: &Client,
    unread: bool,
    limit: usize,
    read: Vec<String>,
    read_all: bool,
) -> anyhow::Result<()> {
    if read_all || !read.is_empty() {
        let body = if read_all {
            json!({ "all": true })
        } else {
            json!({ "ids": read })
        };
        let marked = client.post("/notifications/read", body).await?;
        client.print(&marked, |m| println!("marked {} read", m["marked"]));
        return Ok(());
    }
    let list = client
        .get(&format!("/notifications?unread={unread}&limit={limit}"))
        .await?;
    client.print(&list, |l| {
        println!(
            "{:<16} {:<4} {:<20} {:<12} {:<24} TITLE",
            "ID", "NEW", "SAVED SEARCH", "KIND", "KEY"
        );
        for n in l.as_array().cloned().unwrap_or_default() {
            println!(
                "{:<16} {:<4} {:<20} {:<12} {:<24} {}",
                n["id"].as_str().unwrap_or(""),
                if n["read"].as_bool().unwrap_or(false) {
                    ""
                } else {
                    "*"
                },
                short(n["saved_search_name"].as_str().unwrap_or(""), 20),
                n["kind"].as_str().unwrap_or(""),
                short(n["key"].as_str().unwrap_or(""), 24),
                short(n["title"].as_str().unwrap_or(""), 50)
            );
        }
    });
    Ok(())
}

fn counts_line(map: &Value) -> String {
    map.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `kim overview`.
pub async fn overview(client: &Client) -> anyhow::Result<()> {
    let o = client.get("/federation/overview").await?;
    client.print(&o, |o| {
        let show = |label: &str, counts: &Value| {
            println!("{label}");
            println!("  items:     {}", counts_line(&counts["by_kind"]));
            println!(
                "  offers:    {}",
                counts_line(&counts["by_cooperation_kind"])
            );
            println!("  sectors:   {}", counts_line(&counts["by_nace_section"]));
            println!("  status:    {}", counts_line(&counts["by_status"]));
        };
        for r in o["regions"].as_array().cloned().unwrap_or_default() {
            let name = r["name"].as_str().unwrap_or("");
            let id = short(r["region"].as_str().unwrap_or(""), 16);
            show(&format!("{name} ({id})"), &r["counts"]);
        }
        show("federation", &o["totals"]);
        let outcomes = &o["outcomes"];
        if outcomes.is_null() {
            println!("outcomes: none recorded yet");
        } else {
            println!(
                "outcomes: {} co-operations, {} jobs created",
                outcomes["total"], outcomes["jobs_created"]
            );
            if let Some(by) = outcomes["by_agreement"].as_object() {
                for (agreement, n) in by {
                    println!("  {agreement:<24} {n}");
                }
            }
        }
    });
    Ok(())
}

/// `kim potential`.
pub async fn potential(client: &Client, threshold: u8) -> anyhow::Result<()> {
    let p = client
        .get(&format!("/federation/potential?threshold={threshold}"))
        .await?;
    client.print(&p, |p| {
        let regions = p["regions"].as_array().cloned().unwrap_or_default();
        println!(
            "{} complementary pairs scoring at least {}",
            p["pairs"], p["threshold"]
        );
        let label = |r: &Value| {
            let name = r["name"].as_str().unwrap_or("");
            if name.is_empty() {
                short(r["region"].as_str().unwrap_or(""), 12)
            } else {
                short(name, 12)
            }
        };
        print!("{:<14}", "");
        for r in &regions {
            print!("{:>13}", label(r));
        }
        println!();
        for (i, r) in regions.iter().enumerate() {
            print!("{:<14}", label(r));
            for cell in p["matrix"][i].as_array().cloned().unwrap_or_default() {
                print!("{:>13}", cell);
            }
            println!();
        }
    });
    Ok(())
}
