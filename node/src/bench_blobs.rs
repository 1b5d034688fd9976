//! `kim bench blobs`: attachment transfer throughput between two whole nodes over TCP
//! loopback. Node A holds a file listed in a knowledge item; node B fetches it with the node's
//! own fetch (manifest from A, pieces pipelined, each verified, synced in batches and recorded in the
//! partial's sidecar, the whole file hashed once more, then moved into place), deletes it and
//! fetches it again, `runs` times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kim_protocol::blob::piece_count;
use kim_protocol::{Body, Hash32, Kind};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng as _, SeedableRng as _};

use crate::bench_net::{Scratch, start_federation};
use crate::service::{Collection, ItemInput};

pub async fn run(mb: u64, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(mb >= 1, "--mb must be at least 1");
    anyhow::ensure!(runs >= 1, "--runs must be at least 1");
    let size = mb * 1024 * 1024;
    let scratch = Scratch::new("blobs")?;
    let federation = start_federation(&scratch.0, 2, |c| {
        c.sync_interval_secs = 0;
        c.blob_bytes_max = c.blob_bytes_max.max(size);
    })
    .await?;
    let (a, b) = (&federation.nodes[0], &federation.nodes[1]);
    b.net.dial(federation.addrs[0].clone()).await?;

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut bytes = vec![0u8; usize::try_from(size)?];
    rng.fill_bytes(&mut bytes);
    let store = Arc::clone(&a.state.blobs);
    let (hash, bytes) =
        tokio::task::spawn_blocking(move || store.put(&bytes).map(|h| (h, bytes))).await??;
    drop(bytes);
    let Body::Knowledge(mut knowledge) = kim_protocol::samples::body(
        &mut rng,
        Kind::Knowledge,
        a.state.service.region(),
        kim_protocol::types::Date {
            year: 2026,
            month: 11,
            day: 27,
        },
    ) else {
        anyhow::bail!("samples gave no knowledge body");
    };
    knowledge.attachments = vec![kim_protocol::types::Attachment {
        name: "dataset.bin".into(),
        media_type: "application/octet-stream".into(),
        size_bytes: size,
        blake3: hash,
    }];
    a.state
        .service
        .publish(
            Collection::Knowledge,
            ItemInput {
                key: Some("bench-dataset".into()),
                body: serde_json::to_value(&knowledge)?,
                expires_at_ms: None,
                private: None,
            },
        )
        .await?;
    let target = a.state.service.ingest().digest();
    let waited = Instant::now();
    while b.state.service.ingest().digest() != target {
        anyhow::ensure!(
            waited.elapsed() < Duration::from_secs(60),
            "node B did not receive the knowledge item"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pieces = piece_count(size);
    println!(
        "blob transfer: {mb} MiB ({pieces} pieces of 1 MiB), node A → node B over TCP loopback \
         (noise + yamux), {} cores; each run fetches and verifies every piece, syncs them to disk (every 8 pieces) and \
         hashes the whole file again",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut rates = Vec::with_capacity(runs);
    for run in 1..=runs {
        remove(b, hash).await?;
        let started = Instant::now();
        let report = crate::blobs::fetch(&b.net, &b.state.blobs, hash, size)
            .await
            .with_context(|| format!("run {run}: fetch failed"))?;
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            report.pieces_fetched == pieces,
            "run {run}: fetched {} of {pieces} pieces",
            report.pieces_fetched
        );
        let mbps = size as f64 / 1e6 / elapsed;
        println!(
            "  run {run}: {:.2} s, {mbps:.0} MB/s, {:.0} pieces/s",
            elapsed,
            pieces as f64 / elapsed
        );
        rates.push(mbps);
    }
    remove(b, hash).await?;
    if !rates.is_empty() {
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let best = rates.iter().copied().fold(0.0, f64::max);
        println!(
            "  mean {mean:.0} MB/s ({:.0} MiB/s, {:.0} pieces/s), best {best:.0} MB/s over {} runs",
            mean * 1e6 / (1024.0 * 1024.0),
            mean * 1e6 / (1024.0 * 1024.0),
            rates.len()
        );
    }
    federation.stop().await?;
    Ok(())
}

async fn remove(node: &crate::node::Running, hash: Hash32) -> anyhow::Result<()> {
    let store = Arc::clone(&node.state.blobs);
    tokio::task::spawn_blocking(move || store.remove(&hash)).await??;
    Ok(())
}
