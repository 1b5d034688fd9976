//! Knowledge attachments across whole nodes over TCP loopback: a file uploaded on one node and
//! listed in a knowledge item is fetched by another on demand, verified piece by piece, and
//! served with its media type; a transfer resumes from where it stopped with no piece fetched
//! twice; members' nodes sending a forged manifest, truncated pieces or garbage are rejected
//! and nothing of their data is kept; an outsider gets nothing; files
//! above a node's limit are refused; withdrawing the item deletes the file everywhere.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kim_node::blobs::{BlobAnswer, BlobAsk, BlobSource, BlobStore, Held};
use kim_node::config::Config;
use kim_node::net::{self, NetConfig, Origin, Records, Verdict};
use kim_protocol::Hash32;
use kim_protocol::blob::{BLOB_PIECE_BYTES, manifest_of};
use kim_protocol::reconcile::Id;
use kim_tests::cluster::{Cluster, ClusterOptions};
use kim_tests::{sample_input, send};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const CONVERGE: Duration = Duration::from_secs(60);

/// 3.5 MiB of bytes that are not all alike (four pieces, the last one half full).
fn file_bytes(seed: u8) -> Vec<u8> {
    let len = 3 * BLOB_PIECE_BYTES + BLOB_PIECE_BYTES / 2;
    let mut out = Vec::with_capacity(len);
    let mut x = u64::from(seed) + 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hash_of(bytes: &[u8]) -> Hash32 {
    Hash32(*blake3::hash(bytes).as_bytes())
}

fn api(c: &Cluster, i: usize, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(
            method,
            format!("{}/api/v1{path}", c.node(i).api_base().unwrap()),
        )
        .bearer_auth(c.node(i).token().unwrap())
}

async fn upload(c: &Cluster, i: usize, bytes: &[u8], media_type: &str) -> (u16, Value) {
    send(
        api(c, i, reqwest::Method::POST, "/blobs")
            .header("content-type", media_type)
            .body(bytes.to_vec()),
    )
    .await
    .unwrap()
}

/// Publishes knowledge item `key` on node `i` listing the attachment.
async fn publish_with(c: &Cluster, i: usize, key: &str, attachment: Value) -> (u16, Value) {
    let mut input = sample_input("knowledge", key, 7);
    input["body"]["attachments"] = json!([attachment]);
    send(api(c, i, reqwest::Method::POST, "/knowledge").json(&input))
        .await
        .unwrap()
}

fn attachment(name: &str, bytes: &[u8], media_type: &str) -> Value {
    json!({
        "name": name,
        "media_type": media_type,
        "size_bytes": bytes.len(),
        "blake3": hash_of(bytes).to_hex(),
    })
}

/// GET /blobs/{hash} on node `i`: status, content type, disposition and body.
async fn download(c: &Cluster, i: usize, hash: &Hash32) -> (u16, String, String, Vec<u8>) {
    let response = api(
        c,
        i,
        reqwest::Method::GET,
        &format!("/blobs/{}", hash.to_hex()),
    )
    .send()
    .await
    .unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (ct, cd) = (header("content-type"), header("content-disposition"));
    let body = response.bytes().await.unwrap().to_vec();
    (status, ct, cd, body)
}

/// A node's `GET /blobs/{hash}/status` answer.
async fn blob_status(c: &Cluster, i: usize, hash: &Hash32) -> Value {
    let path = format!("/blobs/{}/status", hash.to_hex());
    let (_, status) = send(api(c, i, reqwest::Method::GET, &path)).await.unwrap();
    status
}

fn error_code(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(String::from))
        .unwrap_or_default()
}

fn blobs(c: &Cluster, i: usize) -> Arc<BlobStore> {
    Arc::clone(&c.node(i).running().unwrap().state.blobs)
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_attachment_is_fetched_on_demand_verified_served_and_dropped_on_withdrawal() {
    let mut c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    c.connect_all().await.unwrap();
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();

    let bytes = file_bytes(1);
    let hash = hash_of(&bytes);
    let (status, up) = upload(&c, 0, &bytes, "application/pdf; charset=binary").await;
    assert_eq!(status, 201, "{up}");
    assert_eq!(up["blake3"], json!(hash.to_hex()));
    assert_eq!(up["size_bytes"], json!(bytes.len()));
    assert_eq!(up["media_type"], json!("application/pdf"));

    // A knowledge item may list only files its node holds, with their true size.
    let other = file_bytes(2);
    let (status, refused) = publish_with(
        &c,
        0,
        "not-here",
        attachment("x.pdf", &other, "application/pdf"),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["error"]["code"],
        json!("knowledge.attachment_missing")
    );
    let mut wrong_size = attachment("x.pdf", &bytes, "application/pdf");
    wrong_size["size_bytes"] = json!(bytes.len() - 1);
    let (status, refused) = publish_with(&c, 0, "wrong-size", wrong_size).await;
    assert_eq!(status, 422, "{refused}");

    let (status, item) = publish_with(
        &c,
        0,
        "guide",
        attachment(
            "Leitfaden Förderung \"2026\".pdf",
            &bytes,
            "application/pdf",
        ),
    )
    .await;
    assert_eq!(status, 201, "{item}");
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();

    // A node that is no member's gets nothing, even knowing the hash.
    let mut config = NetConfig::new(
        c.federation(),
        kim_node::libp2p::identity::Keypair::generate_ed25519(),
    );
    config.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.sync_interval = None;
    config.sync_on_connect = false;
    config.discovery = false;
    let (outsider, event_loop) = net::new(config, Arc::new(NoRecords), net::allow_all()).unwrap();
    let (_stop_outsider, stopped) = oneshot::channel::<()>();
    tokio::spawn(event_loop.run(async {
        let _ = stopped.await;
    }));
    let node0 = outsider
        .dial(c.node(0).p2p_addr.clone().unwrap())
        .await
        .unwrap();
    for ask in [
        BlobAsk::Manifest { hash },
        BlobAsk::Piece { hash, index: 0 },
    ] {
        let answer = outsider.blob_request(node0, ask).await.unwrap();
        assert_eq!(answer, BlobAnswer::Refused("blobs.not_member".into()));
    }
    assert_eq!(
        blobs(&c, 0).counters.pieces_served.load(Ordering::Relaxed),
        0
    );

    let st = blob_status(&c, 2, &hash).await;
    assert_eq!(st["state"], json!("absent"), "{st}");
    assert_eq!(st["listed"], json!(true), "{st}");

    // Node 2 fetches it from its peers, verifies it and serves it.
    let (status, ct, cd, body) = download(&c, 2, &hash).await;
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    assert_eq!(ct, "application/pdf");
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(
        cd.contains("filename*=UTF-8''Leitfaden%20F%C3%B6rderung%20%222026%22.pdf"),
        "{cd}"
    );
    assert!(body == bytes, "node 2 served other bytes");
    assert_eq!(std::fs::read(blobs(&c, 2).path(&hash)).unwrap(), bytes);
    assert_eq!(
        blobs(&c, 2).counters.pieces_fetched.load(Ordering::Relaxed),
        4
    );
    let st = blob_status(&c, 2, &hash).await;
    assert_eq!(st["state"], json!("held"), "{st}");
    assert_eq!(st["pieces_have"], json!(4), "{st}");
    // Served again from disk, nothing fetched.
    let (status, _, _, again) = download(&c, 2, &hash).await;
    assert_eq!(status, 200);
    assert!(again == bytes);
    assert_eq!(
        blobs(&c, 2).counters.pieces_fetched.load(Ordering::Relaxed),
        4
    );
    // Node 1 too.
    let (status, _, _, body) = download(&c, 1, &hash).await;
    assert_eq!(status, 200);
    assert!(body == bytes);

    // Withdrawn: every node deletes the file.
    let (status, _) = send(
        api(&c, 0, reqwest::Method::POST, "/knowledge/guide/withdraw")
            .json(&json!({"reason": "outdated"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();
    for i in 0..3 {
        let store = blobs(&c, i);
        wait_for(
            &format!("node {i} deletes the withdrawn item's file"),
            async || store.held(&hash) == Held::Absent && !store.path(&hash).exists(),
        )
        .await;
    }
    let (status, _, _, body) = download(&c, 1, &hash).await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "blob.unknown");
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_transfer_resumes_from_another_peer_with_no_piece_fetched_twice() {
    let mut c = Cluster::start(3, ClusterOptions::default()).await.unwrap();
    c.connect_all().await.unwrap();
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();
    let bytes = file_bytes(3);
    let hash = hash_of(&bytes);
    assert_eq!(upload(&c, 0, &bytes, "text/csv").await.0, 201);
    assert_eq!(
        publish_with(&c, 0, "data", attachment("data.csv", &bytes, "text/csv"))
            .await
            .0,
        201
    );
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();
    // Node 1 gets a copy; then the author's node goes away.
    assert_eq!(download(&c, 1, &hash).await.0, 200);
    c.stop(0).await.unwrap();

    // Node 2 had received pieces 0 and 2 when it stopped (what a transfer leaves on disk).
    c.stop(2).await.unwrap();
    {
        let config = Config::load(&c.node(2).data.root).unwrap();
        let store = BlobStore::open(c.node(2).data.blobs(), config.blob_bytes_max).unwrap();
        let mut partial = store
            .create_partial(&hash, bytes.len() as u64, manifest_of(&bytes))
            .unwrap();
        for index in [0usize, 2] {
            let end = ((index + 1) * BLOB_PIECE_BYTES).min(bytes.len());
            partial
                .put_piece(index as u64, &bytes[index * BLOB_PIECE_BYTES..end])
                .unwrap();
        }
        partial.persist().unwrap();
    }
    c.restart(2).await.unwrap();
    c.connect(2, 1).await.unwrap();
    let st = blob_status(&c, 2, &hash).await;
    assert_eq!(st["state"], json!("partial"), "{st}");
    assert_eq!(st["pieces_have"], json!(2), "{st}");
    assert_eq!(st["pieces_total"], json!(4), "{st}");

    let served_before = blobs(&c, 1).counters.pieces_served.load(Ordering::Relaxed);
    let (status, ct, _, body) = download(&c, 2, &hash).await;
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    assert_eq!(ct, "text/csv");
    assert!(body == bytes, "the resumed file differs");
    // Only the two missing pieces travelled.
    assert_eq!(
        blobs(&c, 2).counters.pieces_fetched.load(Ordering::Relaxed),
        2
    );
    assert_eq!(
        blobs(&c, 1).counters.pieces_served.load(Ordering::Relaxed) - served_before,
        2
    );
    assert!(
        !c.node(2)
            .data
            .blobs()
            .join("partial")
            .join(format!("{}.part", hash.to_hex()))
            .exists()
    );
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_above_a_nodes_limit_are_refused_and_nothing_is_kept() {
    let mut c = Cluster::start(2, ClusterOptions::default()).await.unwrap();
    // Node 1 takes at most 2 MiB.
    let mut config = Config::load_file(&c.node(1).data.root).unwrap();
    config.blob_bytes_max = 2 * 1024 * 1024;
    std::fs::write(c.node(1).data.config(), config.to_documented_toml()).unwrap();
    c.restart(1).await.unwrap();
    c.connect_all().await.unwrap();
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();

    let bytes = file_bytes(4);
    let hash = hash_of(&bytes);
    let (status, refused) = upload(&c, 1, &bytes, "application/pdf").await;
    assert_eq!(status, 413, "{refused}");
    assert_eq!(refused["error"]["code"], json!("blob.too_large"));
    assert_eq!(upload(&c, 0, &bytes, "application/pdf").await.0, 201);
    assert_eq!(
        publish_with(
            &c,
            0,
            "big",
            attachment("big.pdf", &bytes, "application/pdf")
        )
        .await
        .0,
        201
    );
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();
    let (status, _, _, body) = download(&c, 1, &hash).await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "blob.too_large");
    assert_eq!(blobs(&c, 1).held(&hash), Held::Absent);
    assert!(blobs(&c, 1).hashes().unwrap().is_empty());
    c.shutdown().await.unwrap();
}

/// A record source that holds nothing.
struct NoRecords;

impl Records for NoRecords {
    async fn ingest(&self, records: Vec<Vec<u8>>, _: Origin) -> Vec<Verdict> {
        vec![Verdict::Known; records.len()]
    }
    fn ids(&self) -> anyhow::Result<Vec<Id>> {
        Ok(Vec::new())
    }
    fn get(&self, _: &[Id]) -> anyhow::Result<Vec<Vec<u8>>> {
        Ok(Vec::new())
    }
}

/// How a lying member's node answers.
#[derive(Debug, Clone, Copy)]
enum Lie {
    /// A manifest that does not hash to the file's root (another file's, or made up).
    ForgedManifest,
    /// The true manifest, then pieces cut short (a truncated transfer).
    Truncated,
    /// The true manifest, then pieces of the right length full of garbage.
    Garbage,
}

/// Claims to hold the file and lies about it as `lie` says.
struct Liar {
    hash: Hash32,
    size: u64,
    manifest: Vec<Hash32>,
    lie: Lie,
}

impl BlobSource for Liar {
    fn manifest(&self, hash: &Hash32) -> anyhow::Result<Option<(u64, Vec<Hash32>)>> {
        let mut manifest = self.manifest.clone();
        if matches!(self.lie, Lie::ForgedManifest) {
            manifest[1].0[0] ^= 1;
        }
        Ok((*hash == self.hash).then_some((self.size, manifest)))
    }
    fn piece(&self, _: &Hash32, index: u64) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(
            kim_protocol::blob::piece_len(self.size, index).map(|len| match self.lie {
                Lie::Truncated => vec![0x5a; len / 2],
                _ => vec![0x5a; len],
            }),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_serving_forged_manifests_truncated_pieces_or_garbage_are_rejected_and_nothing_is_kept()
 {
    let mut c = Cluster::start(5, ClusterOptions::default()).await.unwrap();
    c.connect_all().await.unwrap();
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();
    let bytes = file_bytes(5);
    let hash = hash_of(&bytes);
    assert_eq!(upload(&c, 0, &bytes, "image/png").await.0, 201);
    assert_eq!(
        publish_with(&c, 0, "map", attachment("map.png", &bytes, "image/png"))
            .await
            .0,
        201
    );
    c.wait_converged(&c.all(), CONVERGE).await.unwrap();
    // Node 2 cannot reach the author's node; the other members' keys go rogue one by one.
    c.partition(&[&[0], &[2]]).await.unwrap();
    let store = blobs(&c, 2);
    let node2 = c.node(2).running().unwrap().net.clone();
    let author = c.node(0).peer_id;
    let mut rogues = Vec::new();
    for (k, lie) in [
        (3, Lie::ForgedManifest),
        (4, Lie::Truncated),
        (1, Lie::Garbage),
    ] {
        c.stop(k).await.unwrap();
        let rogue_key = c.node(k).founder.node_key.clone();
        let rogue_id = rogue_key.public().to_peer_id();
        let mut config = NetConfig::new(c.federation(), rogue_key);
        config.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.sync_interval = None;
        config.sync_on_connect = false;
        config.discovery = false;
        config.blob_source = Some(Arc::new(Liar {
            hash,
            size: bytes.len() as u64,
            manifest: manifest_of(&bytes),
            lie,
        }));
        let (rogue, event_loop) = net::new(config, Arc::new(NoRecords), net::allow_all()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(event_loop.run(async {
            let _ = stopped.await;
        }));
        rogue
            .dial(c.node(2).p2p_addr.clone().unwrap())
            .await
            .unwrap();
        rogues.push((rogue, stop));
        wait_for(
            &format!("node 2 reaches the {lie:?} rogue as a member's node, not the author"),
            async || {
                let peers = node2.peers().await.unwrap();
                // A blocked member may stay connected as a guest, which is never asked.
                peers.iter().all(|p| p.peer_id != author || p.guest)
                    && peers.iter().any(|p| p.peer_id == rogue_id && !p.guest)
            },
        )
        .await;
        let rejected = store.counters.pieces_rejected.load(Ordering::Relaxed);
        let (status, _, _, body) = download(&c, 2, &hash).await;
        assert_eq!(status, 503, "{lie:?}: {}", String::from_utf8_lossy(&body));
        assert_eq!(error_code(&body), "blob.unavailable", "{lie:?}");
        assert!(
            store.counters.pieces_rejected.load(Ordering::Relaxed) > rejected,
            "{lie:?} was not caught"
        );
        assert_eq!(store.counters.pieces_fetched.load(Ordering::Relaxed), 0);
        // Nothing of the lie is kept: no file, no partial.
        assert_eq!(store.held(&hash), Held::Absent, "{lie:?}");
        assert!(store.hashes().unwrap().is_empty(), "{lie:?}");
        let partial_dir = c.node(2).data.blobs().join("partial");
        assert_eq!(
            std::fs::read_dir(partial_dir).unwrap().count(),
            0,
            "{lie:?}"
        );
    }

    // With the author's node reachable again, node 2 gets the real file; no liar is asked.
    c.heal().await.unwrap();
    wait_for(
        "node 2 holds the author's node as a member's again",
        async || {
            let peers = node2.peers().await.unwrap();
            peers.iter().any(|p| p.peer_id == author && !p.guest)
        },
    )
    .await;
    // (The reconnection as a member may still be settling: ask again until it answers.)
    let mut body = Vec::new();
    wait_for("node 2 serves the real file", async || {
        let (status, _, _, got) = download(&c, 2, &hash).await;
        body = got;
        status == 200
    })
    .await;
    assert!(body == bytes);
    assert_eq!(store.counters.pieces_fetched.load(Ordering::Relaxed), 4);
    drop(rogues);
    c.shutdown().await.unwrap();
}
