//! Crash safety of the real binary: publish in a loop through the HTTP API, SIGKILL the node at
//! random moments, restart it on the same data directory, and check that the store opens every
//! time and that every acknowledged write is still there.
//!
//! The seed comes from `KIM_CRASH_SEED` (default fixed) and is printed, so a failure can be
//! replayed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kim_protocol::envelope::Kind;
use kim_protocol::samples;
use kim_protocol::types::Date;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng as _, SeedableRng};
use serde_json::{Value, json};

mod support {
    pub mod binary;
}

use support::binary::{forget_api_address, running_port};

const KIM: &str = env!("CARGO_BIN_EXE_kim");

/// Number of SIGKILLs.
const CRASHES: usize = 20;

/// A `kim` command with a clean environment (no `KIM_*` from the caller).
fn command() -> Command {
    let mut cmd = Command::new(KIM);
    for (name, _) in std::env::vars() {
        if name.starts_with("KIM_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// A node's data directory and, while it runs, its `kim run` process (killed on drop).
#[derive(Debug)]
struct Node {
    data: PathBuf,
    port: u16,
    token: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// `kim init` in `root/node`, its API on a port the kernel chooses when it starts.
    fn init(root: &Path) -> Node {
        let data = root.join("node");
        let out = command()
            .arg("--data-dir")
            .arg(&data)
            .args(["init", "--region-name", "Steiermark", "--nuts", "AT22"])
            .args(["--api-listen", "127.0.0.1:0"])
            .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
            .output()
            .expect("run kim init");
        assert!(
            out.status.success(),
            "kim init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = std::fs::read_to_string(data.join("api-token"))
            .expect("api-token")
            .trim()
            .to_string();
        Node {
            data,
            port: 0,
            token,
            log: root.join("node.log"),
            child: None,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.port)
    }

    /// Starts `kim run` and waits until the API answers; fails with the log if the node exits.
    async fn start(&mut self, http: &reqwest::Client) {
        assert!(self.child.is_none(), "node already running");
        forget_api_address(&self.data);
        self.port = 0;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = command()
            .arg("--data-dir")
            .arg(&self.data)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn kim run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "the node did not start (exit {status}): the store must open after a crash; log:\n{}",
                    self.log()
                );
            }
            if let Some(port) = running_port(&self.data) {
                self.port = port;
                let health = http.get(format!("{}/health", self.base())).send().await;
                if health.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node did not write its api-address and answer on it; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (what `Child::kill` sends on unix), then reap the process.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("node not running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// SIGTERM and wait; returns whether the node exited with 0.
    fn terminate(&mut self) -> bool {
        let mut child = self.child.take().expect("node not running");
        let sent = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        child.wait().expect("wait").success()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The API collections and their record kinds.
const COLLECTIONS: [(&str, Kind); 4] = [
    ("organisations", Kind::Organisation),
    ("projects", Kind::Project),
    ("offers", Kind::Cooperation),
    ("knowledge", Kind::Knowledge),
];

/// A valid public body of a kind.
fn sample_body(rng: &mut ChaCha8Rng, kind: Kind) -> Value {
    match kind {
        Kind::Organisation => serde_json::to_value(samples::organisation(rng)),
        Kind::Project => serde_json::to_value(samples::project(rng)),
        // The sample lists a made-up file; a node publishes only attachments it holds.
        Kind::Knowledge => serde_json::to_value(kim_protocol::types::Knowledge {
            attachments: Vec::new(),
            ..samples::knowledge(rng)
        }),
        _ => {
            let mut offer = samples::cooperation(
                rng,
                Date {
                    year: 2026,
                    month: 1,
                    day: 15,
                },
            );
            offer.eoi_deadline = None;
            serde_json::to_value(offer)
        }
    }
    .expect("body to JSON")
}

/// The latest acknowledged revision of an item: what the node answered 201 or 200 with.
#[derive(Debug, Clone)]
struct Ack {
    collection: &'static str,
    kind: Kind,
    revision: u64,
    id: String,
}

type Acked = Arc<Mutex<BTreeMap<String, Ack>>>;

/// What one round of the publisher did before the node died.
#[derive(Debug, Default)]
struct Round {
    published: usize,
    revised: usize,
}

/// Publishes (and sometimes revises) until the node stops answering. A write counts as
/// acknowledged only when its success status and body arrived; any error status from a live
/// node fails the test.
async fn publisher(
    http: reqwest::Client,
    base: String,
    token: String,
    round: usize,
    seed: u64,
    acked: Acked,
) -> Result<Round, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut done = Round::default();
    for i in 0.. {
        let revise = {
            let acked = acked.lock().unwrap();
            if !acked.is_empty() && rng.next_u64() % 4 == 0 {
                let n = (rng.next_u64() % acked.len() as u64) as usize;
                acked.iter().nth(n).map(|(k, a)| (k.clone(), a.clone()))
            } else {
                None
            }
        };
        let is_revision = revise.is_some();
        let (key, collection, kind, request) = match revise {
            Some((key, ack)) => {
                let body = sample_body(&mut rng, ack.kind);
                let url = format!("{base}/{}/{key}", ack.collection);
                let request = http.put(url).json(&json!({ "body": body }));
                (key, ack.collection, ack.kind, request)
            }
            None => {
                let (collection, kind) = COLLECTIONS[(rng.next_u64() % 4) as usize];
                let key = format!("crash-{round}-{i}");
                let body = sample_body(&mut rng, kind);
                let url = format!("{base}/{collection}");
                let request = http.post(url).json(&json!({ "key": key, "body": body }));
                (key, collection, kind, request)
            }
        };
        let Ok(response) = request.bearer_auth(&token).send().await else {
            return Ok(done); // the node is gone; this write was not acknowledged
        };
        let status = response.status();
        let Ok(text) = response.text().await else {
            return Ok(done); // died while answering: not acknowledged either
        };
        let expected = if is_revision { 200 } else { 201 };
        if status.as_u16() != expected {
            return Err(format!(
                "{collection}/{key}: HTTP {status} from a live node (expected {expected}): {text}"
            ));
        }
        let view: Value =
            serde_json::from_str(&text).map_err(|e| format!("{collection}/{key}: {e}: {text}"))?;
        let ack = Ack {
            collection,
            kind,
            revision: view["revision"].as_u64().unwrap_or(0),
            id: view["id"].as_str().unwrap_or("").to_string(),
        };
        acked.lock().unwrap().insert(key, ack);
        if is_revision {
            done.revised += 1;
        } else {
            done.published += 1;
        }
    }
    Ok(done)
}

/// Every acknowledged item is present with its acknowledged revision (same id) or a later one.
async fn check_acknowledged(node: &Node, http: &reqwest::Client, acked: &Acked, after: usize) {
    let acked = acked.lock().unwrap().clone();
    for (key, ack) in &acked {
        let url = format!("{}/{}/{key}", node.base(), ack.collection);
        let response = http
            .get(&url)
            .bearer_auth(&node.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let view: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            status, 200,
            "after crash {after}: acknowledged {}/{key} (revision {}) is missing: {view}",
            ack.collection, ack.revision
        );
        let revision = view["revision"].as_u64().unwrap_or(0);
        assert!(
            revision >= ack.revision,
            "after crash {after}: {}/{key} went back from acknowledged revision {} to {revision}",
            ack.collection,
            ack.revision
        );
        if revision == ack.revision {
            assert_eq!(
                view["id"].as_str(),
                Some(ack.id.as_str()),
                "after crash {after}: {}/{key} revision {revision} has another id",
                ack.collection
            );
        }
        assert_eq!(view["status"], "live", "{}/{key}: {view}", ack.collection);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_survives_sigkill_at_random_moments() {
    let seed = std::env::var("KIM_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b69_6d00_u64);
    eprintln!("crash test seed {seed} (set KIM_CRASH_SEED to replay)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());
    let acked: Acked = Arc::default();
    let mut total = Round::default();

    for round in 0..CRASHES {
        // A fresh client per life of the node: no pooled connection to a dead process.
        let http = reqwest::Client::new();
        node.start(&http).await;
        check_acknowledged(&node, &http, &acked, round).await;
        let task = tokio::spawn(publisher(
            http,
            node.base(),
            node.token.clone(),
            round,
            rng.next_u64(),
            acked.clone(),
        ));
        let delay = 50 + rng.next_u64() % 351;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.kill();
        let done = task
            .await
            .expect("publisher panicked")
            .unwrap_or_else(|e| panic!("round {round}: {e}\nlog:\n{}", node.log()));
        total.published += done.published;
        total.revised += done.revised;
    }

    let http = reqwest::Client::new();
    node.start(&http).await;
    check_acknowledged(&node, &http, &acked, CRASHES).await;
    // The status route counts what the checks found item by item.
    let status: Value = http
        .get(format!("{}/status", node.base()))
        .bearer_auth(&node.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let live: u64 = COLLECTIONS
        .iter()
        .map(|(_, kind)| status["records"][kind.as_str()].as_u64().unwrap_or(0))
        .sum();
    assert!(
        live >= total.published as u64,
        "status counts {live} live items, {} were acknowledged: {status}",
        total.published
    );
    assert!(node.terminate(), "clean stop after the crashes");
    eprintln!(
        "{CRASHES} crashes: {} publishes and {} revisions acknowledged, all present; {:.1} s",
        total.published,
        total.revised,
        started.elapsed().as_secs_f64()
    );
    assert!(
        total.published >= CRASHES,
        "too few writes were acknowledged to test anything: {total:?}"
    );
}

/// Sends one authorised request and returns the status with the JSON body.
async fn call(
    http: &reqwest::Client,
    node: &Node,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http
        .request(method, format!("{}{path}", node.base()))
        .bearer_auth(&node.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// An acknowledged draft, the private data sent with an acknowledged publish and the audit
/// entry of an acknowledged call are kept like the signed records: a SIGKILL right after the
/// answer loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_drafts_private_data_and_audit_entries_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::init(tmp.path());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let http = reqwest::Client::new();
    node.start(&http).await;

    let body = sample_body(&mut rng, Kind::Knowledge);
    let (status, _) = call(
        &http,
        &node,
        reqwest::Method::PUT,
        "/drafts/knowledge/guide-draft",
        Some(json!({ "body": body })),
    )
    .await;
    assert_eq!(status, 204);
    node.kill();
    let http = reqwest::Client::new();
    node.start(&http).await;
    // Every loss is collected, so one run reports all of them.
    let mut lost = Vec::new();
    let (_, drafts) = call(
        &http,
        &node,
        reqwest::Method::GET,
        "/drafts/knowledge",
        None,
    )
    .await;
    if drafts[0]["key"] != "guide-draft" {
        lost.push(format!("the acknowledged draft (drafts now: {drafts})"));
    }

    let body = sample_body(&mut rng, Kind::Organisation);
    let (status, _) = call(
        &http,
        &node,
        reqwest::Method::POST,
        "/organisations",
        Some(json!({ "key": "client-1", "body": body, "private": { "note": "pays late" } })),
    )
    .await;
    assert_eq!(status, 201);
    node.kill();
    let http = reqwest::Client::new();
    node.start(&http).await;
    let (status, item) = call(
        &http,
        &node,
        reqwest::Method::GET,
        "/organisations/client-1",
        None,
    )
    .await;
    assert_eq!(status, 200, "{item}");
    if item["private"]["note"] != "pays late" {
        lost.push(format!(
            "the private data of an acknowledged publish (item now: {item})"
        ));
    }
    let (_, audit) = call(
        &http,
        &node,
        reqwest::Method::GET,
        "/audit?limit=1000",
        None,
    )
    .await;
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["action"].as_str().unwrap_or(""),
                        e["target"].as_str().unwrap_or(""),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for expected in [
        ("draft.save", "drafts/knowledge/guide-draft"),
        ("publish", "organisations/client-1"),
    ] {
        if !actions.contains(&expected) {
            lost.push(format!(
                "the audit entry {expected:?} (audit now: {actions:?})"
            ));
        }
    }
    let clean = node.terminate();
    assert!(
        clean,
        "the node did not stop cleanly on SIGTERM; its log:\n{}",
        node.log()
    );
    assert!(
        lost.is_empty(),
        "lost in a SIGKILL after the answer:\n{}",
        lost.join("\n")
    );
}
