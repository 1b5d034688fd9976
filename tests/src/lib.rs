//! # kim-tests
//!
//! Integration tests that span crates, and the small harness they use: a whole node in the test
//! process on a fresh data directory and an ephemeral loopback port ([`TestNode`]), sample
//! bodies for every collection ([`sample_input`]), and a path to the real `kim` binary
//! ([`kim_binary`]). The multi-node harness joins when nodes replicate.

pub mod cluster;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kim_node::config::{Config, DataDir};
use kim_node::node::{self, InitOptions};
use kim_protocol::envelope::{Body, Kind};
use kim_protocol::samples;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A node running inside the test process.
#[derive(Debug)]
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestNode {
    /// Creates a data directory (region Steiermark, AT22) and starts the node.
    pub async fn start() -> anyhow::Result<TestNode> {
        Self::start_with("Steiermark", "AT22").await
    }

    /// Creates a data directory for a region and starts the node.
    pub async fn start_with(region: &str, nuts: &str) -> anyhow::Result<TestNode> {
        let dir = tempfile::tempdir()?;
        let data = DataDir::new(dir.path().join("node"));
        node::init(
            &data,
            InitOptions {
                region_name: region.into(),
                nuts: nuts.into(),
                agency: None,
                languages: vec!["en".into()],
                api_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
                p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
                bootstrap: vec![],
                seed: None,
            },
        )
        .await?;
        let token = data.load_token()?;
        let mut node = TestNode {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token,
            stop: None,
            task: None,
        };
        node.spawn().await?;
        Ok(node)
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("node")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let data = DataDir::new(self.data_dir());
        let config = Config::load(&data.root)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        self.addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            node::serve(&data, config, listener, async {
                let _ = rx.await;
            })
            .await
        }));
        // Wait until the API answers; if the node stopped instead, report why.
        for _ in 0..500 {
            if reqwest::get(format!("{}/api/v1/health", self.base()))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                if let Some(task) = self.task.take() {
                    task.await.context("node task panicked")??;
                }
                anyhow::bail!("node stopped before it answered on {}", self.addr);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        anyhow::bail!("node did not come up on {}", self.addr)
    }

    /// Stops the node cleanly (store flushed).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("node task panicked")??;
        }
        Ok(())
    }

    /// Stops and starts the node on the same data directory (new port).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn().await
    }

    /// A second node on a copy of this node's data directory (same region key, federation and
    /// token): a stand-in for a replica, e.g. to import this node's export. This node is
    /// stopped while its directory is copied and started again.
    pub async fn start_copy(&mut self) -> anyhow::Result<TestNode> {
        self.stop().await?;
        let dir = tempfile::tempdir()?;
        copy_dir(&self.data_dir(), &dir.path().join("node"))?;
        self.spawn().await?;
        let mut copy = TestNode {
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: self.token.clone(),
            stop: None,
            task: None,
        };
        copy.spawn().await?;
        Ok(copy)
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A request builder with the bearer token set.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}/api/v1{path}", self.base()))
            .bearer_auth(&self.token)
    }

    /// GET with the token; returns status and JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        send(self.request(reqwest::Method::GET, path)).await
    }

    /// POST JSON with the token; returns status and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    /// PUT JSON with the token; returns status and JSON.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        send(self.request(reqwest::Method::PUT, path).json(body)).await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Sends a request and returns the status with the JSON body (null when empty).
pub async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, value))
}

/// The API collections and their record kinds.
pub const COLLECTIONS: [(&str, Kind); 4] = [
    ("organisations", Kind::Organisation),
    ("projects", Kind::Project),
    ("offers", Kind::Cooperation),
    ("knowledge", Kind::Knowledge),
];

/// A valid publish request body (`{"key", "body", "private"}`) for a collection, from a seed.
pub fn sample_input(collection: &str, key: &str, seed: u64) -> Value {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kind = COLLECTIONS
        .iter()
        .find(|(c, _)| *c == collection)
        .map_or(Kind::Cooperation, |(_, k)| *k);
    let body = samples::body(
        &mut rng,
        kind,
        kim_protocol::PublicKey([0; 32]),
        kim_protocol::types::Date {
            year: 2026,
            month: 11,
            day: 27,
        },
    );
    let body = match body {
        Body::Organisation(b) => serde_json::to_value(b),
        Body::Project(b) => serde_json::to_value(b),
        Body::Knowledge(mut b) => {
            // The sample lists a made-up file; a node publishes only attachments it holds.
            b.attachments.clear();
            serde_json::to_value(b)
        }
        Body::Cooperation(mut b) => {
            // A deadline within the default validity of an offer.
            b.eoi_deadline = None;
            serde_json::to_value(b)
        }
        other => serde_json::to_value(other),
    }
    .unwrap_or(Value::Null);
    json!({
        "key": key,
        "body": body,
        "private": { "contact_person": "Anna Huber", "note": format!("internal note {seed}") },
    })
}

/// The `kim` binary built for this test run (target/<profile>/kim beside the test binary).
pub fn kim_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/kim
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    dir.join(format!("kim{}", std::env::consts::EXE_SUFFIX))
}
