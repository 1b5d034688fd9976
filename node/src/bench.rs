//! `kim bench …`: throughput figures measured on this machine, printed per second, and
//! (`kim bench reconcile`, in [`crate::bench_reconcile`]) reconciliation cost against negentropy.
//!
//! Benchmarks live here rather than in timed tests: tests check correctness, these print numbers.
//! Each figure runs its operation over a fixed set of realistic records (from
//! `kim_protocol::samples`) for at least a minimum wall time and reports operations per second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use kim_protocol::envelope::{Content, Kind, Record, verify_batch};
use kim_protocol::membership::federation_id;
use kim_protocol::validate::{Context, validate};
use kim_protocol::{PublicKey, samples};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Encode, decode, sign, verify, batch verify and validate on realistic records.
    Protocol {
        /// Distinct records to cycle through.
        #[arg(long, default_value_t = 1000)]
        records: usize,
        /// Minimum measuring time per figure, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        min_ms: u64,
    },
    /// Records per second through the whole ingest pipeline (decode, verify, validate,
    /// authorise, resolve, store with flushed batches), beside raw ed25519 batch verification
    /// of the same records in the same run, at the same thread budgets: one batch in flight
    /// (one thread busy at a time) and `--in-flight` batches (at most that many threads busy).
    Ingest {
        /// Records to ingest.
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        /// Records per ingest batch (one store write and one flush each).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Batches in flight in the second run (each occupies at most one thread).
        #[arg(long, default_value_t = 2)]
        in_flight: usize,
        /// Times each figure is measured; the table shows the fastest run and the spread, so
        /// a ratio is not one noisy run over another.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Set reconciliation, kim against the negentropy crate on the same sets in the same run:
    /// bytes and round trips for every combination of set size and difference.
    Reconcile {
        /// Ids in the initiator's set (comma-separated for several).
        #[arg(long, value_delimiter = ',', default_values_t = [100_000usize, 1_000_000])]
        ids: Vec<usize>,
        /// Differences between the two sets, split between both sides (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 10_000])]
        differences: Vec<usize>,
    },
    /// Gossip propagation through whole nodes at a fixed rate, beside bare gossipsub in the
    /// same topology: all-node delivery latency p50/p99.
    Propagation {
        /// Federation sizes to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,30,50")]
        nodes: Vec<usize>,
        /// Records published per second (round-robin over the nodes).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds of publishing per size.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Links per node (ring plus random chords).
        #[arg(long, default_value_t = 4)]
        degree: usize,
    },
    /// Expressions of interest from one node to another over loopback: delivery latency p50/p99
    /// and the rate of a burst.
    Interest {
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// A node that lacks N records syncs them from a peer: records/s end to end and wire bytes.
    Catchup {
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Each node's sled cache in MiB (a node's `store_cache_bytes`).
        #[arg(long, default_value_t = crate::store::CACHE_BYTES_DEFAULT >> 20)]
        store_cache_mib: u64,
    },
    /// Search, matching, index build rate, memory and disk on synthetic federations (see
    /// `bench_search.rs`).
    Search {
        /// Federation sizes in records, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        records: Vec<usize>,
        /// Queries in the search mix.
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        /// Offers matched against the whole replica.
        #[arg(long, default_value_t = 50)]
        matches: usize,
        /// Scratch directory (default: the system temporary directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// Keep the generated store and index.
        #[arg(long)]
        keep: bool,
        /// The serving store's sled cache in MiB (a node's `store_cache_bytes`).
        #[arg(long, default_value_t = crate::store::CACHE_BYTES_DEFAULT >> 20)]
        store_cache_mib: u64,
        /// Measure a federation kept by an earlier `--keep` run (its `kim-bench-search-…`
        /// directory) instead of generating one; give its size as the only `--records`.
        #[arg(long)]
        measure: Option<std::path::PathBuf>,
        /// With `--measure`: run the kept federation as a whole node process (`kim run`:
        /// store, index, network, HTTP API) as region 0, drive searches, matching, the
        /// overview, the potential and listings through its API, and report that process's
        /// memory.
        #[arg(long, requires = "measure")]
        full_node: bool,
    },
    /// The build step of `kim bench search`, run by it in a child process.
    #[command(hide = true)]
    SearchBuild {
        #[arg(long)]
        records: usize,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Knowledge-attachment transfer between two whole nodes over TCP loopback: a file of
    /// `--mb` MiB fetched, verified piece by piece and stored, `--runs` times (MB/s, pieces/s).
    Blobs {
        #[arg(long, default_value_t = 50)]
        mb: u64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Compare candidate wire encodings (postcard, deterministic CBOR, JSON) on the same records.
    Encoding {
        #[arg(long, default_value_t = 1000)]
        records: usize,
        #[arg(long, default_value_t = 1000)]
        min_ms: u64,
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Protocol { records, min_ms } => protocol(records, min_ms),
        BenchCommand::Encoding { records, min_ms } => encoding(records, min_ms),
        BenchCommand::Reconcile { ids, differences } => {
            // Seconds of CPU at a million ids: off the async runtime.
            tokio::task::spawn_blocking(move || crate::bench_reconcile::run(&ids, &differences))
                .await
                .context("reconcile benchmark thread failed")?
        }
        BenchCommand::Propagation {
            nodes,
            rate,
            seconds,
            degree,
        } => crate::bench_net::propagation(nodes, rate, seconds, degree)
            .await
            .map(|_| ()),
        BenchCommand::Catchup {
            records,
            store_cache_mib,
        } => crate::bench_net::catchup(records, store_cache_mib << 20)
            .await
            .map(|_| ()),
        BenchCommand::Interest { count } => crate::bench_net::interest(count).await,
        BenchCommand::Blobs { mb, runs } => crate::bench_blobs::run(mb, runs).await,
        BenchCommand::Search {
            records,
            queries,
            matches,
            dir,
            keep,
            store_cache_mib,
            measure,
            full_node,
        } => {
            let options = crate::bench_search::Options {
                queries,
                matches,
                dir,
                keep,
                cache_bytes: store_cache_mib << 20,
                measure,
                full_node,
            };
            crate::bench_search::run(&records, options).await
        }
        BenchCommand::SearchBuild { records, dir } => {
            crate::bench_search::build(&dir, records).await
        }
        BenchCommand::Ingest {
            records,
            batch,
            in_flight,
            runs,
        } => {
            // A current-thread runtime in its own thread: the pipeline's store writes run on it,
            // its checks on blocking threads, one per batch in flight.
            tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("cannot start a runtime")?
                    .block_on(ingest(records, batch, in_flight, runs))
            })
            .await
            .context("ingest benchmark thread failed")?
        }
    }
}

const NOW_MS: u64 = 1_795_780_800_000;

/// Signed realistic offers and knowledge items, as a node would receive them.
fn sample_records(count: usize) -> anyhow::Result<Vec<Record>> {
    if count == 0 {
        bail!("--records must be at least 1");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let federation = federation_id(b"kim bench federation");
    let keys: Vec<_> = (0..16).map(|_| samples::signing_key(&mut rng)).collect();
    (0..count)
        .map(|i| {
            let key = &keys[i % keys.len()];
            let kind = if i % 4 == 3 {
                Kind::Knowledge
            } else {
                Kind::Cooperation
            };
            let content = samples::content(
                &mut rng,
                federation,
                PublicKey(key.verifying_key().to_bytes()),
                kind,
                &format!("item-{i}"),
                NOW_MS - 1000,
            );
            Record::sign(&content, key).context("signing a sample record")
        })
        .collect()
}

/// Runs `op` over all items repeatedly for at least `min` and returns items per second.
fn rate<T>(items: &[T], min: Duration, mut op: impl FnMut(&T)) -> f64 {
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < min {
        for item in items {
            op(item);
        }
        done += items.len() as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn line(name: &str, per_second: f64, note: &str) {
    println!("{name:<28} {per_second:>12.0} /s  {note}");
}

fn protocol(count: usize, min_ms: u64) -> anyhow::Result<()> {
    let min = Duration::from_millis(min_ms);
    let records = sample_records(count)?;
    let mean_bytes = records.iter().map(|r| r.bytes.len()).sum::<usize>() / records.len();
    println!(
        "kim bench protocol: {} records, mean {} bytes, one thread",
        records.len(),
        mean_bytes
    );
    let contents: Vec<Content> = records.iter().map(|r| r.content.clone()).collect();
    line(
        "encode content",
        rate(&contents, min, |c| {
            black_box(postcard::to_stdvec(c).ok());
        }),
        "postcard",
    );
    line(
        "decode record",
        rate(&records, min, |r| {
            black_box(Record::decode(r.bytes.clone()).ok());
        }),
        "size check, decode, canonical check, id",
    );
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let key = samples::signing_key(&mut rng);
    let own: Vec<Content> = contents
        .iter()
        .map(|c| Content {
            author: PublicKey(key.verifying_key().to_bytes()),
            ..c.clone()
        })
        .collect();
    line(
        "sign",
        rate(&own, min, |c| {
            black_box(Record::sign(c, &key).ok());
        }),
        "encode + ed25519 sign + decode",
    );
    line(
        "verify (single, strict)",
        rate(&records, min, |r| {
            black_box(r.verify().is_ok());
        }),
        "ed25519 verify_strict",
    );
    for batch in [64usize, 256] {
        let chunks: Vec<Vec<&Record>> = records.chunks(batch).map(|c| c.iter().collect()).collect();
        let per_batch = rate(&chunks, min, |chunk| {
            black_box(verify_batch(chunk));
        });
        let mean_chunk = records.len() as f64 / chunks.len() as f64;
        line(
            &format!("verify (batch of {batch})"),
            per_batch * mean_chunk,
            "ed25519 batch verification",
        );
    }
    let ctx = Context {
        federation: records[0].content.federation,
        now_ms: NOW_MS,
    };
    line(
        "validate",
        rate(&contents, min, |c| {
            black_box(validate(c, &ctx).is_ok());
        }),
        "all stateless rules incl. code lists",
    );
    Ok(())
}

/// Signed records from `founders` of a fresh federation whose charter names them all, so every
/// record passes authorisation.
fn federation_records(
    count: usize,
) -> anyhow::Result<(
    kim_protocol::membership::Charter,
    kim_protocol::FederationId,
    Vec<Record>,
)> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let keys: Vec<_> = (0..16).map(|_| samples::signing_key(&mut rng)).collect();
    let charter = samples::charter("bench", &keys);
    let federation = federation_id(&charter.to_bytes()?);
    let now = crate::ingest::system_now_ms();
    let records = (0..count)
        .map(|i| {
            let key = &keys[i % keys.len()];
            let kind = if i % 4 == 3 {
                Kind::Knowledge
            } else {
                Kind::Cooperation
            };
            let content = samples::content(
                &mut rng,
                federation,
                samples::public_key(key),
                kind,
                &format!("item-{i}"),
                now - 60_000,
            );
            Record::sign(&content, key).context("signing a sample record")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((charter, federation, records))
}

/// Messages, signatures and keys of one batch, ready for the raw crypto.
type PreparedBatch = (
    Vec<Vec<u8>>,
    Vec<ed25519_dalek::Signature>,
    Vec<ed25519_dalek::VerifyingKey>,
);

/// CPU seconds this process has used so far, all threads together (user and system), from
/// `/proc/self/stat`; `None` where that is not available. On a shared machine this is what a
/// figure cost, whatever else was running.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at "state"; utime and
    // stime are the 14th and 15th fields overall, in clock ticks of 1/100 s on Linux.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// What one measured run cost: per second of wall time and CPU microseconds per record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) per_second: f64,
    pub(crate) seconds: f64,
    /// The whole process's CPU (all threads, user and system) per record; `None` where
    /// [`process_cpu_seconds`] cannot be read.
    pub(crate) cpu_us_per_record: Option<f64>,
}

impl Measured {
    /// `count` records done since `started`, when the process had used `cpu_at_start` seconds
    /// of CPU ([`process_cpu_seconds`]).
    pub(crate) fn of(count: usize, started: Instant, cpu_at_start: Option<f64>) -> Measured {
        let seconds = started.elapsed().as_secs_f64();
        let cpu = process_cpu_seconds()
            .zip(cpu_at_start)
            .map(|(end, start)| (end - start) * 1e6 / count.max(1) as f64);
        Measured {
            per_second: count as f64 / seconds,
            seconds,
            cpu_us_per_record: cpu,
        }
    }

    /// Cores the process kept busy on average over the run.
    pub(crate) fn cores_busy(&self) -> Option<f64> {
        self.cpu_us_per_record.map(|us| us * self.per_second / 1e6)
    }

    fn cpu(&self) -> String {
        self.cpu_us_per_record
            .map_or_else(|| "n/a".into(), |us| format!("{us:.1}"))
    }
}

/// Raw ed25519 batch verification of `prepared` on `threads` threads (the batches split
/// between them).
fn raw_verify_rate(prepared: &[PreparedBatch], threads: usize) -> anyhow::Result<Measured> {
    let count: usize = prepared.iter().map(|(m, _, _)| m.len()).sum();
    let per_thread = prepared.len().div_ceil(threads.max(1)).max(1);
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    let verdicts: Vec<bool> = std::thread::scope(|scope| {
        let workers: Vec<_> = prepared
            .chunks(per_thread)
            .map(|share| {
                scope.spawn(move || {
                    share.iter().all(|(messages, signatures, keys)| {
                        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
                        ed25519_dalek::verify_batch(&refs, signatures, keys).is_ok()
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(false))
            .collect()
    });
    if verdicts.iter().any(|ok| !ok) {
        bail!("a benchmark record failed verification");
    }
    Ok(Measured::of(count, start, cpu))
}

/// One timed run of the pipeline over `batches` on a fresh store, with at most `in_flight`
/// batches submitted at once. Returns what it cost and the store's size in bytes.
async fn ingest_run(
    charter: &kim_protocol::membership::Charter,
    federation: kim_protocol::FederationId,
    batches: Vec<Vec<Vec<u8>>>,
    in_flight: usize,
) -> anyhow::Result<(Measured, u64)> {
    use crate::ingest::{Accepted, Ingest, Rejected, Source};
    use crate::store::Store;
    let dir = std::env::temp_dir().join(format!(
        "kim-bench-ingest-{}-{}-{in_flight}",
        std::process::id(),
        crate::ingest::system_now_ms()
    ));
    let store = Store::open(&dir, crate::store::CACHE_BYTES_DEFAULT, true)?;
    let pipeline = std::sync::Arc::new(Ingest::open(store.clone(), federation, charter.clone())?);
    let total: usize = batches.iter().map(Vec::len).sum();
    let mut pending: std::collections::VecDeque<
        tokio::task::JoinHandle<Vec<Result<Accepted, Rejected>>>,
    > = std::collections::VecDeque::new();
    let mut stored = 0usize;
    let mut tally = |results: Vec<Result<Accepted, Rejected>>| -> anyhow::Result<()> {
        for result in results {
            match result {
                Ok(a) if a.is_new() => stored += 1,
                Ok(_) => {}
                Err(e) => bail!("benchmark record refused: {} ({e})", e.code()),
            }
        }
        Ok(())
    };
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    for (i, bytes) in batches.into_iter().enumerate() {
        if pending.len() >= in_flight.max(1)
            && let Some(oldest) = pending.pop_front()
        {
            tally(oldest.await.context("ingest task failed")?)?;
        }
        let pipeline = std::sync::Arc::clone(&pipeline);
        pending.push_back(tokio::spawn(async move {
            pipeline.ingest_batch(bytes, Source::Import).await
        }));
        if (i + 1) % 10 == 0 {
            eprintln!("  {} batches submitted", i + 1);
        }
    }
    for handle in pending {
        tally(handle.await.context("ingest task failed")?)?;
    }
    let measured = Measured::of(stored, start, cpu);
    if stored != total {
        bail!("only {stored} of {total} benchmark records were stored");
    }
    let disk = store.size_on_disk();
    drop(pipeline);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((measured, disk))
}

/// Decode and validate alone, on one thread: the part of the pipeline's work besides the
/// signature check that no store design can skip.
fn decode_validate_rate(batches: Vec<Vec<Vec<u8>>>, ctx: &Context) -> anyhow::Result<Measured> {
    let count: usize = batches.iter().map(Vec::len).sum();
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    for bytes in batches.into_iter().flatten() {
        let record = Record::decode(bytes).context("a benchmark record does not decode")?;
        validate(&record.content, ctx).context("a benchmark record is invalid")?;
        black_box(record);
    }
    Ok(Measured::of(count, start, cpu))
}

/// One sled insert per record, flushed per batch, on a fresh database with the store's
/// settings ([`crate::store::one_insert_per_record`]): the least a sled-backed store writes.
fn sled_floor_rate(ids: &[[u8; 32]], batch: usize) -> anyhow::Result<Measured> {
    let dir = std::env::temp_dir().join(format!(
        "kim-bench-sled-floor-{}-{}",
        std::process::id(),
        crate::ingest::system_now_ms()
    ));
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    crate::store::one_insert_per_record(&dir, ids, batch)?;
    Ok(Measured::of(ids.len(), start, cpu))
}

/// The fastest of several measurements of one figure, and the slowest rate seen.
fn fastest(runs: Vec<Measured>) -> anyhow::Result<(Measured, f64)> {
    let slowest = runs
        .iter()
        .map(|m| m.per_second)
        .fold(f64::INFINITY, f64::min);
    let best = runs
        .into_iter()
        .max_by(|a, b| a.per_second.total_cmp(&b.per_second))
        .context("no runs")?;
    Ok((best, slowest))
}

async fn ingest(count: usize, batch: usize, in_flight: usize, runs: usize) -> anyhow::Result<()> {
    if count == 0 || batch == 0 || in_flight == 0 || runs == 0 {
        bail!("--records, --batch, --in-flight and --runs must be at least 1");
    }
    eprintln!("signing {count} records…");
    let (charter, federation, records) = federation_records(count)?;
    let mean_bytes = records.iter().map(|r| r.bytes.len()).sum::<usize>() / records.len();
    // Raw ed25519 batch verification of exactly these records, in batches of 256: messages,
    // signatures and keys prepared beforehand, so this is the crypto alone.
    let prepared: Vec<PreparedBatch> = records
        .chunks(256)
        .map(|chunk| {
            let messages = chunk.iter().map(Record::signed_message).collect();
            let signatures = chunk
                .iter()
                .map(|r| ed25519_dalek::Signature::from_bytes(&r.signature.0))
                .collect();
            let keys = chunk
                .iter()
                .map(|r| ed25519_dalek::VerifyingKey::from_bytes(&r.content.author.0))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((messages, signatures, keys))
        })
        .collect::<Result<_, ed25519_dalek::SignatureError>>()
        .map_err(|e| anyhow::anyhow!("bad benchmark key: {e}"))?;
    let (raw_one, raw_one_slowest) = fastest(
        (0..runs)
            .map(|_| raw_verify_rate(&prepared, 1))
            .collect::<anyhow::Result<_>>()?,
    )?;
    let (raw_many, _) = fastest(
        (0..runs)
            .map(|_| raw_verify_rate(&prepared, in_flight))
            .collect::<anyhow::Result<_>>()?,
    )?;
    // The pipeline gets the records as received bytes, as a network source would hand them
    // over; copying them out of `records` is not part of what is measured.
    let batches = || -> Vec<Vec<Vec<u8>>> {
        records
            .chunks(batch)
            .map(|chunk| chunk.iter().map(|r| r.bytes.clone()).collect())
            .collect()
    };
    eprintln!("ingesting, one batch in flight…");
    let (one, one_disk) = ingest_run(&charter, federation, batches(), 1).await?;
    let mut many_runs = Vec::with_capacity(runs);
    for run in 1..=runs {
        eprintln!("ingesting, {in_flight} batches in flight (run {run} of {runs})…");
        many_runs.push(
            ingest_run(&charter, federation, batches(), in_flight)
                .await?
                .0,
        );
    }
    let (many, many_slowest) = fastest(many_runs)?;
    eprintln!("measuring the parts alone…");
    let ctx = Context {
        federation,
        now_ms: crate::ingest::system_now_ms(),
    };
    let (parts, _) = fastest(
        (0..runs)
            .map(|_| decode_validate_rate(batches(), &ctx))
            .collect::<anyhow::Result<_>>()?,
    )?;
    let ids: Vec<[u8; 32]> = records.iter().map(|r| r.id.0).collect();
    let (floor, _) = fastest(
        (0..runs)
            .map(|_| sled_floor_rate(&ids, batch))
            .collect::<anyhow::Result<_>>()?,
    )?;
    println!(
        "kim bench ingest: {count} records (mean {mean_bytes} bytes), batches of {batch}, \
         each run on a fresh store (1 in flight: {:.1} MB), every batch flushed before it is \
         acknowledged",
        one_disk as f64 / 1e6
    );
    println!(
        "{:<48} {:>10} {:>8} {:>9} {:>13}",
        "", "records/s", "seconds", "ratio", "CPU us/record"
    );
    let row = |name: &str, m: &Measured, ratio: Option<f64>| {
        let ratio = ratio.map_or_else(String::new, |r| format!("{r:.2}"));
        println!(
            "{name:<48} {:>10.0} {:>8.2} {ratio:>9} {:>13}",
            m.per_second,
            m.seconds,
            m.cpu()
        );
    };
    row("raw ed25519 batch verify (256), 1 thread", &raw_one, None);
    row(
        "pipeline, 1 batch in flight (1 thread busy)",
        &one,
        Some(one.per_second / raw_one.per_second),
    );
    row(
        &format!("raw ed25519 batch verify (256), {in_flight} threads"),
        &raw_many,
        None,
    );
    row(
        &format!("pipeline, {in_flight} batches in flight (<= {in_flight} busy)"),
        &many,
        Some(many.per_second / raw_many.per_second),
    );
    println!(
        "{:<48} {:>10} {:>8} {:>9.2}   (target >= 0.70)",
        format!("pipeline, {in_flight} in flight / raw verify, 1 thread"),
        "",
        "",
        many.per_second / raw_one.per_second
    );
    println!(
        "raw verify (1 thread) and the pipeline ({in_flight} in flight): fastest of {runs} runs each; \
         slowest {raw_one_slowest:.0} and {many_slowest:.0} records/s"
    );
    if let (Some(raw), Some(pipeline)) = (raw_one.cpu_us_per_record, one.cpu_us_per_record) {
        println!(
            "{:<48} {:>10} {:>8} {:>9.2}   (one core's ratio, whatever else runs)",
            "CPU per record: raw verify / pipeline",
            "",
            "",
            raw / pipeline
        );
    }
    println!("the parts alone, 1 thread (fastest of {runs} runs each):");
    row("decode + validate, nothing else", &parts, None);
    row(
        &format!("sled: 1 insert per record, flush per {batch}"),
        &floor,
        None,
    );
    // From wall time: all three run on one thread, and a run of a fraction of a second is
    // only a few dozen CPU-clock ticks, too coarse for a sum of three.
    let us = |m: &Measured| 1e6 / m.per_second;
    println!(
        "{:<48} {:>10} {:>8} {:>9.2}   (verify, decode, validate and one sled insert: \
         the best ratio a sled store allows)",
        "raw verify / (raw verify + the two parts)",
        "",
        "",
        us(&raw_one) / (us(&raw_one) + us(&parts) + us(&floor))
    );
    Ok(())
}

/// One candidate encoding: how to write a content and how to read it back.
struct Codec {
    name: &'static str,
    encode: fn(&Content) -> Option<Vec<u8>>,
    decode: fn(&[u8]) -> bool,
}

const CODECS: [Codec; 3] = [
    Codec {
        name: "postcard",
        encode: |c| postcard::to_stdvec(c).ok(),
        decode: |b| postcard::from_bytes::<Content>(b).is_ok(),
    },
    // ciborium writes definite lengths and shortest integers: deterministic for our types.
    Codec {
        name: "cbor",
        encode: |c| {
            let mut out = Vec::new();
            ciborium::into_writer(c, &mut out).map(|_| out).ok()
        },
        decode: |b| ciborium::from_reader::<Content, _>(b).is_ok(),
    },
    Codec {
        name: "json",
        encode: |c| serde_json::to_vec(c).ok(),
        decode: |b| serde_json::from_slice::<Content>(b).is_ok(),
    },
];

fn encoding(count: usize, min_ms: u64) -> anyhow::Result<()> {
    let min = Duration::from_millis(min_ms);
    let records = sample_records(count)?;
    let contents: Vec<Content> = records.iter().map(|r| r.content.clone()).collect();
    println!(
        "kim bench encoding: {} realistic records (offers and knowledge items), one thread",
        contents.len()
    );
    println!(
        "{:<12} {:>10} {:>14} {:>14} {:>18}",
        "encoding", "mean bytes", "encode /s", "decode /s", "encode+decode /s"
    );
    for codec in &CODECS {
        let encoded: Vec<Vec<u8>> = contents.iter().filter_map(codec.encode).collect();
        let bytes =
            encoded.iter().map(Vec::len).sum::<usize>() as f64 / encoded.len().max(1) as f64;
        let enc = rate(&contents, min, |c| {
            black_box((codec.encode)(c));
        });
        let dec = rate(&encoded, min, |b| {
            black_box((codec.decode)(b));
        });
        let both = 1.0 / (1.0 / enc + 1.0 / dec);
        println!(
            "{:<12} {bytes:>10.0} {enc:>14.0} {dec:>14.0} {both:>18.0}",
            codec.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ingest benchmark runs end to end on a small set: every record is stored by each
    /// pipeline run (it fails otherwise), and the parts alone are measured on the same records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ingest_benchmark_stores_every_record_and_measures_the_parts() {
        let ran = ingest(300, 100, 2, 1).await;
        assert!(ran.is_ok(), "{ran:?}");
        let refused = ingest(300, 0, 2, 1).await;
        assert!(refused.is_err());
    }

    /// The catch-up benchmark runs end to end on a small set: node B ends with every record
    /// (the bench waits for equal digests), the wire carries about the records' own bytes, and
    /// nothing to catch up is refused rather than divided by.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_catchup_benchmark_brings_every_record_over() -> anyhow::Result<()> {
        let figures = crate::bench_net::catchup(300, crate::store::CACHE_BYTES_DEFAULT).await?;
        assert_eq!(figures.records, 300, "{figures:?}");
        assert!(figures.records_per_second > 0.0, "{figures:?}");
        assert!(
            (1.0..=1.1).contains(&figures.wire_per_record_byte),
            "{figures:?}"
        );
        assert!(
            crate::bench_net::catchup(0, crate::store::CACHE_BYTES_DEFAULT)
                .await
                .is_err()
        );
        Ok(())
    }

    /// The propagation bench runs both sides end to end on a small federation: every record
    /// reaches every node through bare gossipsub and through KIM, latencies and CPU figures are
    /// measured, and sizes or rates that would measure nothing are refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_propagation_benchmark_delivers_every_record_on_both_sides() -> anyhow::Result<()> {
        let figures = crate::bench_net::propagation(vec![4], 20, 1, 3).await?;
        assert_eq!(figures.len(), 1);
        let f = figures[0];
        assert_eq!((f.nodes, f.records), (4, 20), "{f:?}");
        assert_eq!(f.bare_delivered, 20, "{f:?}");
        assert_eq!(f.kim_delivered, 20, "{f:?}");
        assert!(
            f.bare_p50 > Duration::ZERO && f.kim_p50 > Duration::ZERO,
            "{f:?}"
        );
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(f.bare_cpu_us.is_some_and(|us| us > 0.0), "{f:?}");
            assert!(f.kim_cpu_us.is_some_and(|us| us > 0.0), "{f:?}");
        }
        for (nodes, rate, seconds) in [(vec![1], 20, 1), (vec![4], 0, 1), (vec![4], 20, 0)] {
            assert!(
                crate::bench_net::propagation(nodes, rate, seconds, 3)
                    .await
                    .is_err()
            );
        }
        Ok(())
    }

    #[test]
    fn decode_and_validate_alone_refuse_a_damaged_record() -> anyhow::Result<()> {
        let (_, federation, records) = federation_records(3)?;
        let ctx = Context {
            federation,
            now_ms: crate::ingest::system_now_ms(),
        };
        let mut bytes: Vec<Vec<u8>> = records.iter().map(|r| r.bytes.clone()).collect();
        assert!(decode_validate_rate(vec![bytes.clone()], &ctx).is_ok());
        bytes[1].truncate(10);
        assert!(decode_validate_rate(vec![bytes], &ctx).is_err());
        Ok(())
    }
}
