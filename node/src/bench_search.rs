//! `kim bench search`: the finding-partners figures on synthetic federations of given sizes.
//!
//! For each size: synthetic offers and requests (`samples::synthetic_cooperation_content`, real
//! NUTS and NACE codes, multilingual texts) and the organisations they name, signed by sixteen
//! founding regions, go through the ingest pipeline into a fresh store in batches (signatures
//! pre-checked, as import does); the search index is then built from the store the way a node
//! rebuilds it at start. Printed: the index build rate, search latency percentiles over a query
//! mix with filters, the time to match one offer against the whole replica, the process's
//! resident memory (current and peak, from `/proc/self/status`) and the disk the store and index
//! take beside the records' own bytes. Figures are printed, not asserted; the machine's load
//! average is printed with them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
use kim_protocol::membership::{Charter, Founder, ThresholdRule, federation_id};
use kim_protocol::reconcile::{Id, IdSet, IdSum, simulate};
use kim_protocol::samples;
use kim_protocol::types::{CooperationKind, PartnershipType};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng as _, SeedableRng};

use crate::config::DataDir;
use crate::ingest::{Ingest, Source, system_now_ms};
use crate::search::{Query, SearchIndex, Sort, Status};
use crate::store::Store;
use rustix::process::{Pid, Signal, kill_process};

/// Records per ingest batch.
const BATCH_RECORDS: usize = 1000;
/// Founding regions that author the records.
const REGIONS: usize = 16;

/// Runs the benchmark for each size in `sizes`, in a scratch directory under `dir` (the system
/// temporary directory by default) that is removed afterwards unless `keep`.
/// What one `kim bench search` measures beyond the sizes.
#[derive(Debug)]
pub struct Options {
    pub queries: usize,
    pub matches: usize,
    pub dir: Option<PathBuf>,
    pub keep: bool,
    /// The serving store's sled cache, in bytes.
    pub cache_bytes: u64,
    /// Measure this kept federation again instead of generating one (one size only).
    pub measure: Option<PathBuf>,
    /// With `measure`: as a whole node process, through its API.
    pub full_node: bool,
}

pub async fn run(sizes: &[usize], options: Options) -> anyhow::Result<()> {
    let Options {
        queries, matches, ..
    } = options;
    if sizes.is_empty() || sizes.contains(&0) {
        bail!("--records must list sizes of at least 1, e.g. --records 100000,1000000");
    }
    if queries == 0 || matches == 0 {
        bail!("--queries and --matches must be at least 1");
    }
    println!(
        "kim bench search: {} core(s), load average {}",
        cores(),
        load_average()
    );
    if let Some(root) = &options.measure {
        let [size] = sizes else {
            bail!("--measure takes the one size the kept federation has, e.g. --records 1000000");
        };
        println!();
        println!("== {size} records (kept data in {}) ==", root.display());
        if options.full_node {
            return measure_full_node(root, &options).await;
        }
        return measure_size(root, *size, &options).await;
    }
    for &size in sizes {
        let root = options
            .dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(format!(
                "kim-bench-search-{}-{}-{size}",
                std::process::id(),
                system_now_ms()
            ));
        let result = one_size(&root, size, &options).await;
        if !options.keep {
            let _ = std::fs::remove_dir_all(&root);
        }
        result?;
    }
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Fields of /proc/self/status in MiB, in the order asked (NaN where unreadable).
fn status_mib<const N: usize>(names: [&str; N]) -> [f64; N] {
    process_status_mib("self", names)
}

/// Fields of `/proc/{process}/status` in MiB (`process` a pid or `self`).
fn process_status_mib<const N: usize>(process: &str, names: [&str; N]) -> [f64; N] {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).unwrap_or_default();
    names.map(|name| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    })
}

/// (RssAnon, RssFile) in MiB: heap versus mapped files (the index).
fn rss_split_mib() -> (f64, f64) {
    let [anon, file] = status_mib(["RssAnon:", "RssFile:"]);
    (anon, file)
}

/// Resident MiB of mapped files by what they are (the index's postings, fast columns, document
/// store, …, the binary), from /proc/self/smaps, largest first.
fn mapped_by_file() -> Vec<(String, f64)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, f64> = Default::default();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: address perms offset dev inode [path].
            current = words
                .nth(4)
                .filter(|path| path.starts_with('/'))
                .map(|path| {
                    let name = Path::new(path)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    match name.rsplit_once('.') {
                        Some((_, ext)) if path.contains("/search/") => format!("index .{ext}"),
                        _ => name,
                    }
                });
        } else if first == "Rss:"
            && let Some(name) = &current
            && let Some(kb) = words.next().and_then(|kb| kb.parse::<f64>().ok())
        {
            *by.entry(name.clone()).or_default() += kb / 1024.0;
        }
    }
    let mut by: Vec<(String, f64)> = by.into_iter().filter(|(_, m)| *m >= 0.5).collect();
    by.sort_by(|a, b| b.1.total_cmp(&a.1));
    by
}

fn print_memory(label: &str) {
    let (rss, hwm) = memory_mib();
    let (anon, file) = rss_split_mib();
    let mapped: Vec<String> = mapped_by_file()
        .iter()
        .map(|(name, m)| format!("{name} {m:.0}"))
        .collect();
    println!(
        "memory:        {label}: resident {rss:.0} MiB ({anon:.0} heap + {file:.0} mapped files), peak {hwm:.0} MiB"
    );
    println!("  mapped MiB:  {}", mapped.join(", "));
}

/// (VmRSS, VmHWM) in MiB.
fn memory_mib() -> (f64, f64) {
    let [rss, hwm] = status_mib(["VmRSS:", "VmHWM:"]);
    (rss, hwm)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

struct Corpus {
    keys: Vec<ed25519_dalek::SigningKey>,
    charter: Charter,
    federation: kim_protocol::FederationId,
}

fn corpus() -> anyhow::Result<Corpus> {
    let mut rng = ChaCha8Rng::seed_from_u64(2026);
    let keys: Vec<_> = (0..REGIONS)
        .map(|_| samples::signing_key(&mut rng))
        .collect();
    let charter = Charter {
        name: "bench search".into(),
        founders: keys
            .iter()
            .enumerate()
            .map(|(i, k)| Founder {
                key: samples::public_key(k),
                name: format!("region {i}"),
                nuts: vec![
                    samples::SYNTHETIC_REGIONS[i % samples::SYNTHETIC_REGIONS.len()]
                        .nuts
                        .to_string(),
                ],
            })
            .collect(),
        admission: ThresholdRule::Majority,
        removal: ThresholdRule::Majority,
        created_at_ms: 0,
    };
    let federation = federation_id(&charter.to_bytes()?);
    Ok(Corpus {
        keys,
        charter,
        federation,
    })
}

/// Record `i` of the corpus: every third index an organisation (`org-{i/3}` of its region,
/// named by the offers around it), otherwise an offer or request.
fn record(c: &Corpus, rng: &mut ChaCha8Rng, i: u64, now_ms: u64) -> anyhow::Result<Record> {
    let key = &c.keys[(i as usize / 3) % REGIONS];
    let author = samples::public_key(key);
    let content = if i.is_multiple_of(3) {
        Content {
            format: FORMAT_VERSION,
            federation: c.federation,
            author,
            kind: Kind::Organisation,
            key: format!("org-{}", i / 3),
            revision: 1,
            created_at_ms: now_ms - 400 * 86_400_000,
            expires_at_ms: None,
            body: Body::Organisation(samples::synthetic_organisation(rng, i)),
        }
    } else {
        samples::synthetic_cooperation_content(rng, c.federation, author, i, now_ms)
    };
    Record::sign(&content, key).context("signing a synthetic record")
}

/// Runs one size: the build in a child process (`kim bench search-build`), so that the memory
/// this process reports afterwards is a node's serving the replica, not the generator's.
async fn one_size(root: &Path, size: usize, options: &Options) -> anyhow::Result<()> {
    println!();
    println!("== {size} records (data in {}) ==", root.display());
    let exe = std::env::current_exe().context("cannot find the kim binary to run the build")?;
    let status = std::process::Command::new(exe)
        .args([
            "bench",
            "search-build",
            "--records",
            &size.to_string(),
            "--dir",
        ])
        .arg(root)
        .status()
        .context("cannot run the build step")?;
    if !status.success() {
        bail!("the build step failed ({status})");
    }
    measure_size(root, size, options).await
}

/// Measures the federation the build step left in `root`, as a node serving it.
async fn measure_size(root: &Path, size: usize, options: &Options) -> anyhow::Result<()> {
    let &Options {
        queries,
        matches,
        cache_bytes,
        ..
    } = options;
    let kept = |name: &str| -> anyhow::Result<u64> {
        std::fs::read_to_string(root.join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| {
                format!(
                    "{} has no readable {name} file: give a directory that `kim bench search --keep` left",
                    root.display()
                )
            })
    };
    let record_bytes = kept("record-bytes")?;
    let now_ms = kept("now-ms")?;

    // Open the data as a node does at start: store, pipeline, index (current, so no rebuild).
    let c = corpus()?;
    let started = Instant::now();
    // Resident memory after each step of opening, to see what holds it.
    let mut steps: Vec<(&str, f64)> = vec![("before", memory_mib().0)];
    let store = Store::open(&root.join("store"), cache_bytes, false)?;
    steps.push(("store", memory_mib().0));
    let ingest = Ingest::open(store.clone(), c.federation, c.charter.clone())?;
    steps.push(("pipeline", memory_mib().0));
    let index = SearchIndex::open(&root.join("search"))?;
    if ingest.reindex_if_stale(&index)? {
        println!("note:          the index was stale at open and was rebuilt");
    }
    let index = std::sync::Arc::new(index);
    let ingest = ingest.with_search(index.clone());
    steps.push(("index", memory_mib().0));
    let (open_rss, _) = memory_mib();
    let growth: Vec<String> = steps
        .windows(2)
        .map(|w| format!("{} +{:.0}", w[1].0, w[1].1 - w[0].1))
        .collect();
    println!(
        "open:          store and index opened in {:.2} s (resident MiB: {:.0} before, {})",
        started.elapsed().as_secs_f64(),
        steps[0].1,
        growth.join(", ")
    );

    // Search: a mix of text, filters and both, as brokers ask.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mix = query_mix(&mut rng, queries, now_ms);
    for q in mix.iter().take(20) {
        index.search(q)?; // warm the reader
    }
    let mut latencies = Vec::with_capacity(mix.len());
    let mut hits = 0usize;
    for q in &mix {
        let t = Instant::now();
        hits += index.search(q)?.len();
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "search:        {} queries, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({:.1} hits on average, top 20)",
        mix.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        hits as f64 / mix.len() as f64
    );

    // Matching: live offers of the corpus against everything the node holds.
    let mut times = Vec::new();
    let mut found = 0usize;
    let mut considered = 0usize;
    let mut n = 1u64;
    while times.len() < matches && n < size as u64 {
        let key = format!("offer-{n}");
        let region = samples::public_key(&c.keys[(n as usize / 3) % REGIONS]);
        n += 7;
        let t = Instant::now();
        match crate::matches::find_matches(&ingest, region, &key, 20, 0, now_ms) {
            Ok(report) => {
                times.push(t.elapsed());
                found += report.matches.len();
                considered += report.considered;
            }
            Err(
                crate::matches::MatchError::NotLive { .. }
                | crate::matches::MatchError::NotFound { .. },
            ) => {}
            Err(e) => bail!("matching failed: {e}"),
        }
    }
    times.sort();
    // The index retrieval alone, for the same offers.
    let mut retrieval = Vec::new();
    let mut n = 1u64;
    while retrieval.len() < times.len() && n < size as u64 {
        let region = samples::public_key(&c.keys[(n as usize / 3) % REGIONS]);
        let entry = store.item(&region, Kind::Cooperation, &format!("offer-{n}"))?;
        n += 7;
        let Some(record) =
            entry.and_then(|e| crate::matches::load_record(&store, &e.id).ok().flatten())
        else {
            continue;
        };
        let Body::Cooperation(body) = &record.content.body else {
            continue;
        };
        let q = crate::matches::retrieval_query(body, now_ms);
        let t = Instant::now();
        index.candidates(&q, &body.nace)?;
        retrieval.push(t.elapsed());
    }
    retrieval.sort();
    println!(
        "match:         {} offers against {size} records, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({:.0} candidates scored, {:.1} matches on average)",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        percentile(&times, 1.0),
        considered as f64 / times.len().max(1) as f64,
        found as f64 / times.len().max(1) as f64
    );
    println!(
        "  retrieval:   p50 {:.1} ms of that is the index query for the candidates; the rest loads and scores them",
        percentile(&retrieval, 0.5)
    );

    print_memory(&format!(
        "serving (store, pipeline, index, the queries above; {open_rss:.0} MiB after open)"
    ));
    let t = Instant::now();
    let o = crate::overview::overview(&ingest, now_ms)?;
    println!(
        "overview:      {} regions counted in {:.2} s (resident after: {:.0} MiB)",
        o.regions.len(),
        t.elapsed().as_secs_f64(),
        memory_mib().0
    );
    let t = Instant::now();
    match crate::overview::potential(&ingest, 50, now_ms) {
        Ok(p) => println!(
            "potential:     {} pairs scoring 50 or more among {} live offers and requests, in {:.2} s (resident after: {:.0} MiB)",
            p.pairs,
            p.regions.iter().map(|r| r.live).sum::<u64>(),
            t.elapsed().as_secs_f64(),
            memory_mib().0
        ),
        Err(crate::overview::PotentialError::TooMany(n)) => println!(
            "potential:     not computed: more than {} live offers and requests ({n} seen, {:.2} s); the API answers 503 (resident after: {:.0} MiB)",
            crate::overview::POTENTIAL_ITEMS_MAX,
            t.elapsed().as_secs_f64(),
            memory_mib().0
        ),
        Err(e) => bail!("potential failed: {e}"),
    }
    // Listing newest first, as `kim offer list` and the dashboard page through it: 50 items a
    // page, following cursors 40 pages deep, for live offers and for every status.
    let ingest = std::sync::Arc::new(ingest);
    let service = crate::service::Service::new(ingest.clone(), c.keys[0].clone(), 400);
    for status in ["live", "all"] {
        let filter = crate::service::ListFilter {
            status: Some(status.into()),
            ..Default::default()
        };
        let mut first = Vec::new();
        let mut deeper = Vec::new();
        for _ in 0..5 {
            let mut cursor: Option<Vec<u8>> = None;
            for page in 0..40 {
                let t = Instant::now();
                let (items, next) = service
                    .list(
                        crate::service::Collection::Offers,
                        &filter,
                        cursor.as_deref(),
                        50,
                    )
                    .await?;
                if page == 0 {
                    first.push(t.elapsed());
                } else {
                    deeper.push(t.elapsed());
                }
                if items.is_empty() {
                    break;
                }
                match next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        first.sort();
        deeper.sort();
        println!(
            "list {status:<5}     pages of 50 offers newest first: first page p50 {:.2} ms, pages 2-40 p50 {:.2} ms, p99 {:.2} ms (resident after: {:.0} MiB)",
            percentile(&first, 0.5),
            percentile(&deeper, 0.5),
            percentile(&deeper, 0.99),
            memory_mib().0
        );
    }
    // Sync sessions: a node runs one on every new connection and every 30 s, as initiator or
    // responder, against the store's sync set. The peer here holds the same set less 100
    // neighbouring ids (a peer that missed some records), so the session has to find them.
    {
        let set = ingest.store().sync_set();
        let total = set.len();
        let peer = Gap {
            set: &set,
            start: total / 3,
            len: 100.min(total),
        };
        for (name, initiator_is_store) in [("initiator", true), ("responder", false)] {
            let t = Instant::now();
            let stats = if initiator_is_store {
                simulate(&set, &peer)
            } else {
                simulate(&peer, &set)
            }
            .map_err(|e| anyhow::anyhow!("sync session: {e}"))?;
            println!(
                "sync session:  store as {name}, peer lacking {} of {total} ids: found {} in {} rounds, {:.1} KiB exchanged, {:.1} ms (resident after: {:.0} MiB)",
                peer.len,
                stats.have.len() + stats.need.len(),
                stats.rounds,
                (stats.bytes_a_to_b + stats.bytes_b_to_a) as f64 / 1024.0,
                t.elapsed().as_secs_f64() * 1000.0,
                memory_mib().0
            );
        }
        set.finish()?;
    }
    print_memory("after the overview, listings and two sync sessions");
    drop(service);
    drop(ingest);
    drop(index);
    store.close().await?;
    let store_bytes = dir_bytes(&root.join("store"));
    let index_bytes = dir_bytes(&root.join("search"));
    println!(
        "disk:          store {:.0} MiB + index {:.0} MiB = {:.0} MiB for {:.0} MiB of records ({:.2}×)",
        mib(store_bytes),
        mib(index_bytes),
        mib(store_bytes + index_bytes),
        mib(record_bytes),
        (store_bytes + index_bytes) as f64 / record_bytes as f64
    );
    println!("load average:  {}", load_average());
    Ok(())
}

/// `kim bench search-build`: generates `size` records into a fresh store in `root` through the
/// ingest pipeline, builds the index from the store as a node does at start, and leaves the
/// record bytes and the generation instant in files for the measuring process.
pub async fn build(root: &Path, size: usize) -> anyhow::Result<()> {
    let c = corpus()?;
    let now_ms = system_now_ms();
    std::fs::create_dir_all(root)?;
    let store = Store::open(&root.join("store"), crate::store::CACHE_BYTES_DEFAULT, true)?;
    let ingest = Ingest::open(store.clone(), c.federation, c.charter.clone())?;
    let mut rng = ChaCha8Rng::seed_from_u64(size as u64);
    let mut record_bytes = 0u64;
    let started = Instant::now();
    let mut sign_time = Duration::ZERO;
    let mut i = 0u64;
    while i < size as u64 {
        let end = (i + BATCH_RECORDS as u64).min(size as u64);
        let signing = Instant::now();
        let batch: Vec<Record> = (i..end)
            .map(|n| record(&c, &mut rng, n, now_ms))
            .collect::<anyhow::Result<_>>()?;
        sign_time += signing.elapsed();
        record_bytes += batch.iter().map(|r| r.bytes.len() as u64).sum::<u64>();
        for result in ingest.ingest_verified(batch, Source::Import).await {
            if let Err(e) = result {
                bail!("synthetic record refused: {} ({e})", e.code());
            }
        }
        i = end;
        if i.is_multiple_of(100_000) {
            eprintln!("  {i} records stored…");
        }
    }
    let stored_in = started.elapsed().saturating_sub(sign_time);
    println!(
        "stored:        {size} records ({:.0} MiB of signed records) in {:.1} s (+ {:.1} s generating and signing)",
        mib(record_bytes),
        stored_in.as_secs_f64(),
        sign_time.as_secs_f64()
    );
    let index = SearchIndex::open(&root.join("search"))?;
    let started = Instant::now();
    ingest.reindex_if_stale(&index)?;
    let built_in = started.elapsed();
    let docs = index.num_docs();
    println!(
        "index build:   {docs} documents in {:.1} s = {:.0} documents/s (from the store, as at node start)",
        built_in.as_secs_f64(),
        docs as f64 / built_in.as_secs_f64()
    );
    index.wait_merging()?;
    // As a node stops: the sync set's bucket table is saved for the next open.
    store.close().await?;
    let (_, hwm) = memory_mib();
    println!("build memory:  peak {hwm:.0} MiB (generator, pipeline and index rebuild)");
    std::fs::write(root.join("record-bytes"), record_bytes.to_string())?;
    std::fs::write(root.join("now-ms"), now_ms.to_string())?;
    Ok(())
}

/// Queries the way staff search: a keyword or two from the sectors' vocabularies, alone or with
/// a kind, a country or region, a sector, a partnership type or a deadline; and filter-only
/// listings (newest first).
fn query_mix(rng: &mut ChaCha8Rng, count: usize, now_ms: u64) -> Vec<Query> {
    let sectors = samples::SYNTHETIC_SECTORS;
    let regions = samples::SYNTHETIC_REGIONS;
    let pick = |rng: &mut ChaCha8Rng, n: usize| (rng.next_u32() as usize) % n.max(1);
    let kinds = [
        CooperationKind::BusinessOffer,
        CooperationKind::TechnologyOffer,
        CooperationKind::TechnologyRequest,
        CooperationKind::ResearchRequest,
    ];
    let today = (now_ms / 86_400_000) as i64;
    (0..count)
        .map(|i| {
            let sector = &sectors[pick(rng, sectors.len())];
            let word = sector.technology[pick(rng, sector.technology.len())];
            let region = regions[pick(rng, regions.len())].nuts;
            let mut q = Query {
                text: Some(word.to_string()),
                status: Status::Live,
                now_ms,
                limit: 20,
                ..Query::default()
            };
            match i % 8 {
                0 => {}
                1 => q.cooperation_kinds = vec![kinds[pick(rng, kinds.len())]],
                2 => q.countries = vec![region[..2].to_string()],
                3 => q.nuts = vec![region.to_string()],
                4 => q.nace = vec![sector.nace[..2].to_string()],
                5 => {
                    q.partnership_types = vec![PartnershipType::TechnicalCooperation];
                    q.kinds = vec![Kind::Cooperation];
                }
                6 => {
                    q.deadline_from = Some(samples::date_from_days(today));
                    q.deadline_to = Some(samples::date_from_days(today + 90));
                    q.text = Some(format!("{word} {}", sector.markets[0]));
                }
                _ => {
                    q.text = None;
                    q.nace = vec![sector.nace.to_string()];
                    q.countries = vec![region[..2].to_string()];
                    q.sort = Sort::Newest;
                }
            }
            q
        })
        .collect()
}

/// The ids of `set` less those at positions `start..start + len`: a peer that missed them.
struct Gap<'a, S> {
    set: &'a S,
    start: usize,
    len: usize,
}

impl<S: IdSet> Gap<'_, S> {
    /// The position in `set` of position `index` here.
    fn inner(&self, index: usize) -> usize {
        if index < self.start {
            index
        } else {
            index + self.len
        }
    }
}

impl<S: IdSet> IdSet for Gap<'_, S> {
    fn len(&self) -> usize {
        self.set.len() - self.len
    }

    fn id_at(&self, index: usize) -> Option<Id> {
        self.set.id_at(self.inner(index))
    }

    fn lower_bound(&self, value: &Id) -> usize {
        let at = self.set.lower_bound(value);
        if at <= self.start {
            at
        } else {
            at.saturating_sub(self.len).max(self.start)
        }
    }

    fn ids_in(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = Id> + '_ {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        let before = start.min(self.start)..end.min(self.start);
        let after = self.inner(start.max(self.start))..self.inner(end.max(self.start));
        self.set.ids_in(before).chain(self.set.ids_in(after))
    }

    fn id_sum(&self, range: std::ops::Range<usize>) -> IdSum {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        let before = start.min(self.start)..end.min(self.start);
        let after = self.inner(start.max(self.start))..self.inner(end.max(self.start));
        self.set.id_sum(before).plus(&self.set.id_sum(after))
    }

    fn contains(&self, id: &Id) -> bool {
        let at = self.set.lower_bound(id);
        self.set.contains(id) && !(self.start..self.start + self.len).contains(&at)
    }
}

/// Makes a kept federation a node's data directory for region 0 (its key, a node key, a
/// token, a config, the charter in the store); files already there are kept.
fn prepare_data_dir(root: &Path, c: &Corpus, cache_bytes: u64) -> anyhow::Result<DataDir> {
    let data = DataDir::new(root);
    let store = Store::open(&data.store(), cache_bytes, false)?;
    store.set_meta(crate::node::CHARTER_META, &c.charter.to_bytes()?)?;
    let region = samples::public_key(&c.keys[0]);
    store.set_meta(crate::ingest::OWN_REGION_META, &region.0)?;
    drop(store);
    if !data.key().exists() {
        crate::config::write_secret(&data.key(), &c.keys[0].to_bytes())?;
    }
    if !data.node_key().exists() {
        let node_key = libp2p::identity::Keypair::generate_ed25519()
            .try_into_ed25519()
            .map_err(|e| anyhow::anyhow!("node key: {e}"))?;
        crate::config::write_secret(&data.node_key(), node_key.secret().as_ref())?;
    }
    if !data.token().exists() {
        let mut bytes = [0u8; 32];
        ChaCha8Rng::seed_from_u64(system_now_ms()).fill_bytes(&mut bytes);
        let token = kim_protocol::bytes::to_hex(&bytes);
        crate::config::write_secret(&data.token(), format!("{token}\n").as_bytes())?;
    }
    let founder = &c.charter.founders[0];
    let nuts = founder.nuts.first().cloned().unwrap_or_default();
    let config = crate::config::Config {
        region_name: founder.name.clone(),
        country: nuts.get(..2).unwrap_or_default().to_string(),
        nuts,
        api_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: Vec::new(),
        gossip: true,
        sync_interval_secs: 30,
        sync_on_connect: true,
        discovery: true,
        store_cache_bytes: cache_bytes,
        offer_validity_days: 365,
        request_body_bytes_max: 256 * 1024,
        blob_bytes_max: crate::blobs::BLOB_BYTES_MAX_DEFAULT,
        federation: c.federation.to_hex(),
    };
    std::fs::write(data.config(), config.to_documented_toml())?;
    Ok(data)
}

/// `--measure DIR --full-node`: the kept federation served by a whole node process.
async fn measure_full_node(root: &Path, options: &Options) -> anyhow::Result<()> {
    let c = corpus()?;
    let data = prepare_data_dir(root, &c, options.cache_bytes)?;
    let _ = std::fs::remove_file(data.api_address());
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--data-dir")
        .arg(root)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting `kim run` on the kept federation")?;
    let started = Instant::now();
    let base = loop {
        if let Some(status) = child.try_wait()? {
            bail!("the node exited before it served: {status}");
        }
        if let Ok(text) = std::fs::read_to_string(data.api_address())
            && let Some(url) = text.lines().next()
        {
            break url.trim().to_string();
        }
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            bail!("the node did not start serving within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pid = child.id();
    let report = |what: &str| {
        let [rss, anon, hwm] =
            process_status_mib(&pid.to_string(), ["VmRSS:", "RssAnon:", "VmHWM:"]);
        println!(
            "node memory:   {what}: resident {rss:.0} MiB ({anon:.0} heap), peak {hwm:.0} MiB"
        );
    };
    println!(
        "node:          `kim run` (pid {pid}) serving at {base} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    report("started");
    let token = data.load_token()?;
    let http = reqwest::Client::new();
    let get = |path: String| {
        let request = http.get(format!("{base}{path}")).bearer_auth(&token);
        async move {
            let response = request.send().await?;
            let status = response.status();
            let body = response.bytes().await?.to_vec();
            anyhow::Ok((status, body))
        }
    };
    let check = async |path: String| -> anyhow::Result<Vec<u8>> {
        let (status, body) = get(path.clone()).await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    };
    let words = [
        "solar", "software", "tourism", "hydrogen", "training", "Holz", "Energie", "food",
        "robotics", "water", "digital", "wine",
    ];
    let t = Instant::now();
    for (i, word) in words
        .iter()
        .cycle()
        .take(options.queries.min(500))
        .enumerate()
    {
        let filter = ["", "&kind=offers", "&kind=knowledge", "&kind=organisations"][i % 4];
        check(format!("/api/v1/search?q={word}{filter}")).await?;
    }
    println!(
        "node search:   {} searches in {:.1} s",
        options.queries.min(500),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut matched = 0;
    let mut n = 1u64;
    while matched < options.matches && n < 1_000_000 {
        // Region 0's offers: keys offer-n with (n / 3) % REGIONS == 0.
        if (n as usize / 3).is_multiple_of(REGIONS) {
            let (status, _) = get(format!("/api/v1/offers/offer-{n}/matches")).await?;
            if status.is_success() {
                matched += 1;
            }
        }
        n += 7;
    }
    println!(
        "node match:    {matched} offers matched in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    report("after searches and matching");
    check("/api/v1/federation/overview".into()).await?;
    let (status, _) = get("/api/v1/federation/potential".into()).await?;
    println!("node overview: overview served; potential answered {status}");
    for status in ["live", "all"] {
        let mut cursor = String::new();
        for _ in 0..40 {
            let body = check(format!("/api/v1/offers?status={status}&limit=50{cursor}")).await?;
            let page: serde_json::Value = serde_json::from_slice(&body)?;
            match page.get("next").and_then(|n| n.as_str()) {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
    }
    check("/api/v1/status".into()).await?;
    report("after the overview, the potential, 80 listing pages and status");
    kill_process(
        Pid::from_raw(i32::try_from(pid)?).context("the node's pid")?,
        Signal::INT,
    )?;
    let status = child.wait()?;
    println!("node:          stopped ({status})");
    Ok(())
}
