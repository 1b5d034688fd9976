//! Batch verification as the ingest pipeline does it (`kim_protocol::envelope::verify_batch`,
//! which gathers each author's key terms, see `src/batch.rs`) beside the same wrapper around
//! `ed25519_dalek::verify_batch` (what the pipeline did before), on batches of 512 realistic
//! records from 1 to 512 authors. Each side includes parsing the authors' keys, as the pipeline
//! does. Best of 6 alternating rounds of 0.4 s, one thread.
//!
//! `cargo run --release -p kim-protocol --example verify_batch`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use kim_protocol::bytes::PublicKey;
use kim_protocol::envelope::{Record, author_key, verify_batch};
use kim_protocol::{FederationId, samples};
use rand::SeedableRng;

const BATCH: usize = 512;

/// The pipeline's batch verification before the gathered equation.
fn separate_terms(records: &[&Record]) -> bool {
    let mut keys_by_author = HashMap::new();
    let mut messages = Vec::with_capacity(records.len());
    let mut signatures = Vec::with_capacity(records.len());
    let mut keys = Vec::with_capacity(records.len());
    for record in records {
        let key = keys_by_author
            .entry(record.content.author)
            .or_insert_with(|| author_key(&record.content.author))
            .clone()
            .expect("sample keys are valid");
        messages.push(record.signed_message());
        signatures.push(ed25519_dalek::Signature::from_bytes(&record.signature.0));
        keys.push(key);
    }
    let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

/// Microseconds per record of `verify`, over about `seconds`.
fn per_record(seconds: f64, mut verify: impl FnMut() -> bool) -> f64 {
    let started = Instant::now();
    let mut records = 0;
    while started.elapsed().as_secs_f64() < seconds {
        assert!(verify(), "an honest batch failed");
        records += BATCH;
    }
    started.elapsed().as_secs_f64() * 1e6 / records as f64
}

fn main() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let federation = FederationId([3; 32]);
    println!(
        "batch verification, {BATCH} records per batch, one thread (us per record, best of 6)"
    );
    for authors in [1usize, 4, 32, 64, 512] {
        let keys: Vec<SigningKey> = (0..authors)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                SigningKey::from_bytes(&seed)
            })
            .collect();
        let records: Vec<Record> = (0..BATCH)
            .map(|i| {
                let key = &keys[i % authors];
                let author = PublicKey(key.verifying_key().to_bytes());
                let content = samples::synthetic_cooperation_content(
                    &mut rng,
                    federation,
                    author,
                    i as u64,
                    1_700_000_000_000,
                );
                Record::sign(&content, key).unwrap()
            })
            .collect();
        let refs: Vec<&Record> = records.iter().collect();
        let (mut gathered, mut separate) = (f64::MAX, f64::MAX);
        for _ in 0..6 {
            gathered = gathered.min(per_record(0.4, || {
                verify_batch(&refs).iter().all(Result::is_ok)
            }));
            separate = separate.min(per_record(0.4, || separate_terms(&refs)));
        }
        println!(
            "  {authors:3} author(s): gathered {gathered:5.2}, ed25519_dalek::verify_batch {separate:5.2}  ({:+.0} %)",
            (gathered / separate - 1.0) * 100.0
        );
    }
}
