//! Keeps the search index in step with the store without putting tantivy on the ingest path.
//!
//! The pipeline hands each durable batch's new winners to one indexer thread and goes on: no
//! publish, import or gossip hop waits for a tantivy commit, whose fixed cost (a new segment's
//! hash table, a term dictionary per field, files, later merges) is milliseconds however
//! little it holds. Commits are made at most every [`COMMIT_INTERVAL`], and spaced further
//! when they are slow ([`COMMIT_DUTY`]), so whatever arrives in between shares one.
//!
//! Read-your-writes is kept where it is read: whatever reads the index first calls
//! [`Indexer::fresh`], which commits at once if staff changes handed over before the call are
//! not yet committed (nothing to do, and no wait, in the common case). Records from the network
//! become searchable within [`COMMIT_INTERVAL`]–[`COMMIT_INTERVAL_MAX`]. This is the search
//! engines' refresh model (a write is durable when acknowledged, searchable at the next
//! refresh), with the refresh forced by a reader that could otherwise miss its own write.
//!
//! Every commit carries the store digest it reflects as its generation: after a crash between
//! the store flush and the index commit, the generation no longer matches and the index is
//! rebuilt at start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use kim_protocol::RegionId;
use kim_protocol::envelope::{Kind, Record};
use tokio::sync::oneshot;

use crate::search::{SearchError, SearchIndex};
use crate::store::Store;

/// Shortest time between two commits a reader did not ask for: the search engines' usual
/// refresh interval. A change waits at most this long to become searchable on an idle machine.
pub const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Commits take at most one part in this many of the time: after a commit that took `t`, the
/// next one waits at least `t` times this, times the number of nodes in the process (never
/// more than [`COMMIT_INTERVAL_MAX`]).
/// A tantivy commit has a fixed cost however little it holds (a new segment's hash table
/// cleared and scanned, files created and registered, merges later); when the machine is busy,
/// commits take longer and so come less often, leaving the CPU to replication and the API. A
/// reader never waits for the spacing ([`Indexer::fresh`]).
pub const COMMIT_DUTY: u32 = 10;
/// Longest a change waits to become searchable, however slow commits are.
pub const COMMIT_INTERVAL_MAX: Duration = Duration::from_secs(5);

/// Documents handed over and not yet taken by the indexer thread, at most. A replicated or
/// imported batch that would pass it waits for the thread (backpressure on the ingest
/// pipeline) instead of growing the queue without bound when records arrive faster than they
/// can be indexed (a large sync on a busy machine). Staff publishes, a few documents at a
/// time, do not wait ([`Indexer::room_unbounded`]). About 3 KB each while queued.
pub const QUEUE_DOCS_MAX: usize = 16_384;

/// Longest the thread goes on taking queued jobs into a commit that is due.
const DRAIN_MAX: Duration = Duration::from_millis(250);

/// The generation written after an update was lost (a failed update, removal or commit, whose
/// rollback also dropped the other uncommitted changes): it never matches a store digest, so
/// the index is rebuilt (by the indexer at once, see [`rebuild_live`], or at the next start if
/// the node stops first) rather than claiming to match the store.
const LOST_GENERATION: &str = "incomplete: rebuild from the store";

/// Most items whose saved-search notification waits for a rebuild after a failed update
/// (about 100 bytes each).
const UNNOTIFIED_MAX: usize = 100_000;

/// How long after a failed rebuild the indexer tries again (a full disk, say, takes an
/// operator to clear).
const REBUILD_RETRY: Duration = Duration::from_secs(30);

/// An item whose winner changed: region, kind, item key.
pub type Slot = (RegionId, Kind, String);

/// Where an update came from, which decides whether a reader waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Published or imported by staff on this node: committed at once when a reader asks
    /// ([`Indexer::fresh`]), else at the next spaced commit.
    Local,
    /// Arrived by gossip, sync or direct delivery: committed at the next spaced commit.
    Network,
}

/// A new winner for the index.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The owning region (the store's `ItemEntry::region`).
    pub region: RegionId,
    pub record: Record,
    /// The store held no winner for this item before (see [`SearchIndex::insert_first`]).
    pub first: bool,
}

enum Job {
    Update {
        docs: Vec<Doc>,
        /// The index's rebuild mark taken before the store write, if there is an index.
        mark: Option<u64>,
        items: Vec<Slot>,
        generation: String,
        /// For staff changes, their place in the order handed over ([`Handover`]).
        local: Option<u64>,
        /// The documents' places in the queue, given back once the thread has taken them.
        _queued: Option<tokio::sync::OwnedSemaphorePermit>,
    },
    /// Whole items to drop (their region is no longer a member).
    Remove {
        items: Vec<Slot>,
        generation: String,
    },
    Flush(oneshot::Sender<()>),
}

/// Removes the items; false if that failed (and the uncommitted changes were rolled back).
fn remove_items(index: &SearchIndex, items: &[Slot], generation: &str) -> bool {
    let result = (|| -> Result<(), SearchError> {
        for (region, kind, key) in items {
            index.remove(*region, *kind, key)?;
        }
        index.set_generation(generation);
        Ok(())
    })();
    kept_or_rolled_back(index, result, "removal")
}

/// True if `result` is Ok; else logs the failure of `what` and rolls back every uncommitted
/// change (the indexer then rebuilds the index from the store, see [`LOST_GENERATION`]).
fn kept_or_rolled_back(index: &SearchIndex, result: Result<(), SearchError>, what: &str) -> bool {
    let Err(err) = result else {
        return true;
    };
    tracing::error!(cause = %err, "search index {what} failed; rebuilding it from the store");
    let _ = index.rollback();
    false
}

/// Places in the indexer's queue for one batch ([`Indexer::room`]), given back once the
/// indexer thread has indexed it (or dropped unused).
#[derive(Debug)]
pub struct Room(Option<tokio::sync::OwnedSemaphorePermit>);

/// The handle the pipeline holds. Dropping it commits what is pending and waits for the thread
/// to end, so the index's writer lock is free when the handle is gone.
#[derive(Debug)]
pub struct Indexer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
    /// Serialises the handover of staff changes, so their sequence numbers reach the thread in
    /// order and "committed up to n" means every one up to n.
    handover: std::sync::Mutex<u64>,
    /// Free places in the queue ([`QUEUE_DOCS_MAX`]).
    room: Arc<tokio::sync::Semaphore>,
    capacity: usize,
}

/// What the thread and the handle share.
#[derive(Debug, Default)]
struct Counters {
    /// Commits made (and succeeded) since start.
    commits: AtomicU64,
    /// Sequence number of the last staff change handed over.
    handed: AtomicU64,
    /// Sequence number of the last staff change committed (or given up on after a failed
    /// commit, which the rebuild that follows repairs).
    committed: AtomicU64,
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the search indexer thread panicked");
        }
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Update { docs, local, .. } => f
                .debug_struct("Update")
                .field("docs", &docs.len())
                .field("local", local)
                .finish(),
            Job::Remove { items, .. } => f
                .debug_struct("Remove")
                .field("items", &items.len())
                .finish(),
            Job::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Indexer {
    /// Starts the indexer thread for `index`.
    /// After each commit, the items it made searchable are matched against the saved searches
    /// in `store` (notifications).
    pub fn start(
        index: Arc<SearchIndex>,
        store: Store,
        clock: fn() -> u64,
    ) -> std::io::Result<Indexer> {
        Indexer::start_with_capacity(index, store, clock, QUEUE_DOCS_MAX)
    }

    /// [`Indexer::start`] with room for `capacity` queued documents.
    pub fn start_with_capacity(
        index: Arc<SearchIndex>,
        store: Store,
        clock: fn() -> u64,
        capacity: usize,
    ) -> std::io::Result<Indexer> {
        let capacity = capacity.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let (jobs, rx) = mpsc::channel::<Job>();
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("kim-indexer".into())
            .spawn(move || run(&index, &store, clock, &rx, &shared))?;
        Ok(Indexer {
            jobs: Some(jobs),
            thread: Some(thread),
            counters,
            handover: std::sync::Mutex::new(0),
            room: Arc::new(tokio::sync::Semaphore::new(capacity)),
            capacity,
        })
    }

    /// Documents handed over that the indexer thread has not taken yet: replicated and
    /// imported ones, which hold room in the queue (staff publishes take none).
    pub fn backlog(&self) -> usize {
        self.capacity.saturating_sub(self.room.available_permits())
    }

    /// Commits made since start.
    pub fn commits(&self) -> u64 {
        self.counters.commits.load(Ordering::Relaxed)
    }

    /// Waits for room for `docs` documents in the queue: at once unless [`QUEUE_DOCS_MAX`]
    /// documents are already waiting, else until the thread has taken enough of them. Take
    /// it before the store write whose documents it will carry, so that once the write is
    /// applied the handover ([`Indexer::submit`]) has nothing left to wait for: a caller
    /// cancelled while waiting here has written nothing the index could miss.
    pub async fn room(&self, docs: usize) -> Room {
        if docs == 0 || self.jobs.is_none() {
            return Room(None);
        }
        // A batch bigger than the whole queue takes all of it. The semaphore is never closed:
        // if the thread has gone, its receiver's drop released every queued job's places.
        let wanted = docs.min(self.capacity) as u32;
        Room(Arc::clone(&self.room).acquire_many_owned(wanted).await.ok())
    }

    /// Room that does not wait: for staff publishes, one or a few documents at a time, which
    /// must not wait behind a sync's backlog on a thread of lower priority.
    pub fn room_unbounded(&self) -> Room {
        Room(None)
    }

    /// Queues a batch's new winners and the generation (store digest) they bring the index
    /// to, in the room taken for them. Never waits; when they become searchable depends on
    /// `origin`. `mark` is the index's rebuild mark taken before the store write
    /// ([`SearchIndex::rebuild_mark`]); without one every document replaces its item's.
    pub fn submit(
        &self,
        room: Room,
        docs: Vec<Doc>,
        mark: Option<u64>,
        items: Vec<Slot>,
        generation: String,
        origin: Origin,
    ) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        let queued = room.0;
        let sent = match origin {
            Origin::Network => jobs.send(Job::Update {
                docs,
                mark,
                items,
                generation,
                local: None,
                _queued: queued,
            }),
            Origin::Local => {
                let mut last = match self.handover.lock() {
                    Ok(last) => last,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let seq = *last + 1;
                let sent = jobs.send(Job::Update {
                    docs,
                    mark,
                    items,
                    generation,
                    local: Some(seq),
                    _queued: queued,
                });
                if sent.is_ok() {
                    *last = seq;
                    self.counters.handed.store(seq, Ordering::SeqCst);
                }
                sent
            }
        };
        if sent.is_err() {
            tracing::error!(
                "the search indexer has stopped; the index is rebuilt at the next start"
            );
        }
    }

    /// Completes once every staff change handed over before this call is searchable: at once
    /// when they are already committed (the common case, no round trip to the thread), else
    /// after a commit made now rather than at its spaced time.
    pub async fn fresh(&self) {
        let handed = self.counters.handed.load(Ordering::SeqCst);
        if self.counters.committed.load(Ordering::SeqCst) >= handed {
            return;
        }
        let _ = self.flush().await;
    }

    /// Queues the removal of whole items (their region is no longer a member) and the
    /// generation that brings the index to.
    pub fn remove(&self, items: Vec<Slot>, generation: String) {
        if let Some(jobs) = &self.jobs
            && jobs.send(Job::Remove { items, generation }).is_err()
        {
            tracing::error!(
                "the search indexer has stopped; the index is rebuilt at the next start"
            );
        }
    }

    /// Commits everything queued so far; completes when it is searchable.
    pub fn flush(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Flush(tx));
        }
        rx
    }
}

/// Commits; false if that failed (and the uncommitted changes were rolled back).
fn commit(index: &SearchIndex) -> bool {
    kept_or_rolled_back(index, index.commit(), "commit")
}

/// Indexes the documents; false if that failed (and the uncommitted changes were rolled back).
fn apply(index: &SearchIndex, docs: &[Doc], mark: Option<u64>, generation: &str) -> bool {
    let result = (|| -> Result<(), SearchError> {
        for doc in docs {
            match mark.filter(|_| doc.first) {
                Some(mark) => index.insert_first(&doc.record, doc.region, mark)?,
                None => index.upsert(&doc.record, doc.region)?,
            };
        }
        index.set_generation(generation);
        Ok(())
    })();
    kept_or_rolled_back(index, result, "update")
}

/// Throws the index away and indexes every live item winner in `store`, committing once with
/// `generation`; returns the documents indexed. Runs at start when the index is stale, and
/// while the node runs after an update was lost. The item entries are streamed and each
/// record is read and decoded while the index takes it, so a rebuild holds one record at a
/// time, not the replica. Writes that land meanwhile are handed to the indexer as usual and
/// applied after it (replacing whatever it indexed for them).
pub fn rebuild_from_store(
    store: &Store,
    index: &SearchIndex,
    generation: &str,
) -> anyhow::Result<u64> {
    let mut read = 0usize;
    let records = store.item_entries().filter_map(|entry| {
        let entry = match entry {
            Ok(entry) if !entry.tombstone && crate::search::is_searchable(entry.kind) => entry,
            Ok(_) => return None,
            Err(e) => return Some(Err(e.to_string())),
        };
        read += 1;
        if read.is_multiple_of(100_000) {
            tracing::info!(items = read, "rebuilding the search index");
        }
        // The winner may have changed since its entry was read: follow it (a withdrawn or
        // purged item is skipped; the write that did it is queued for the indexer anyway).
        match store.winner_record(&entry) {
            Ok(Some((current, bytes))) if !current.tombstone => Some(
                Record::decode(bytes)
                    .map(|record| (current.region, record))
                    .map_err(|e| {
                        format!(
                            "stored record {} does not decode ({e}): the store is damaged; \
                             restore it from a backup (`kim import`) or move it aside and \
                             let the node resync from its peers",
                            current.id
                        )
                    }),
            ),
            Ok(_) => None,
            Err(e) => Some(Err(e.to_string())),
        }
    });
    // On a failure nothing is committed: the previous index stays, and whoever asked for the
    // rebuild decides (start fails, or the indexer retries).
    index
        .rebuild_from(records, generation)
        .map_err(|e| anyhow::anyhow!("search index rebuild failed: {e}"))
}

/// After an update was lost, rebuilds the index from the store while the node runs; false if
/// that failed too (the previous commit stays, and its generation does not match the store).
fn rebuild_live(index: &SearchIndex, store: &Store) -> bool {
    let started = Instant::now();
    let rebuilt = store
        .digest()
        .map_err(anyhow::Error::from)
        .and_then(|digest| rebuild_from_store(store, index, &digest.hash().to_hex()));
    match rebuilt {
        Ok(items) => {
            tracing::info!(
                items,
                ms = started.elapsed().as_millis() as u64,
                "search index rebuilt after a lost update"
            );
            true
        }
        Err(err) => {
            tracing::error!(
                cause = format!("{err:#}"),
                retry_s = REBUILD_RETRY.as_secs(),
                "search index rebuild after a lost update failed"
            );
            false
        }
    }
}

/// Moves the commit `due` forward to `at` if that is sooner.
fn sooner(due: &mut Option<Instant>, at: Instant) {
    *due = Some(due.map_or(at, |d| d.min(at)));
}

/// Indexer threads running in this process: one per node, several when a test, the demo or a
/// benchmark hosts many nodes in one process.
static LIVE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How long after the last commit the next one is made, given what the last one cost. The
/// duty is shared by every indexer in the process, so however many nodes it hosts, their
/// commits together take about a tenth of one core.
fn commit_wait(cost: Duration) -> Duration {
    let live = LIVE.load(Ordering::Relaxed).max(1);
    COMMIT_INTERVAL.max((cost * COMMIT_DUTY * live).min(COMMIT_INTERVAL_MAX))
}

/// What the indexer thread holds between commits.
struct Pending {
    /// Whether the writer holds changes not yet committed.
    dirty: bool,
    /// Items changed since the last commit (for the saved searches).
    fresh: Vec<Slot>,
    /// Readers waiting for the next commit.
    waiting: Vec<oneshot::Sender<()>>,
    /// Sequence number of the last staff change applied to the writer.
    applied_local: u64,
    /// Whether an update was lost since start: every later commit then carries
    /// [`LOST_GENERATION`] until the rebuild from the store succeeds.
    lost: bool,
    /// Items changed by updates a failure rolled back (at most [`UNNOTIFIED_MAX`]): matched
    /// against the saved searches once a rebuild has made them searchable.
    unnotified: Vec<Slot>,
}

impl Pending {
    /// After a lost update, whatever is committed next claims no store state.
    fn mark_if_lost(&self, index: &SearchIndex) {
        if self.lost {
            index.set_generation(LOST_GENERATION);
        }
    }

    /// Applies one job to the writer; returns whether it is a reader asking for a commit now.
    fn take(&mut self, index: &SearchIndex, job: Job) -> bool {
        match job {
            Job::Update {
                docs,
                mark,
                items,
                generation,
                local,
                _queued,
            } => {
                // Its places in the queue are given back when `_queued` drops, at the end.
                // After a lost update the rollback may have undone a removal too: until the
                // rebuild, every document replaces whatever the index holds for its item.
                let mark = mark.filter(|_| !self.lost);
                self.lost |= !apply(index, &docs, mark, &generation);
                self.mark_if_lost(index);
                self.fresh.extend(items);
                self.dirty = true;
                if let Some(seq) = local {
                    self.applied_local = self.applied_local.max(seq);
                }
                false
            }
            Job::Remove { items, generation } => {
                self.lost |= !remove_items(index, &items, &generation);
                self.mark_if_lost(index);
                self.dirty = true;
                false
            }
            Job::Flush(done) => {
                self.waiting.push(done);
                true
            }
        }
    }
}

fn run(
    index: &SearchIndex,
    store: &Store,
    clock: fn() -> u64,
    jobs: &mpsc::Receiver<Job>,
    counters: &Counters,
) {
    /// Counts this thread in [`LIVE`] while it runs, however it ends.
    struct Live;
    impl Drop for Live {
        fn drop(&mut self) {
            LIVE.fetch_sub(1, Ordering::Relaxed);
        }
    }
    LIVE.fetch_add(1, Ordering::Relaxed);
    let _live = Live;
    crate::search::lower_this_thread_priority();
    let mut pending = Pending {
        dirty: false,
        fresh: Vec::new(),
        waiting: Vec::new(),
        applied_local: counters.committed.load(Ordering::SeqCst),
        lost: false,
        unnotified: Vec::new(),
    };
    let mut last_commit = Instant::now();
    // When the next commit is due: set by the first change since the last commit.
    let mut due: Option<Instant> = None;
    // How long the last commit took.
    let mut cost = Duration::ZERO;
    // When to try again a rebuild that failed.
    let mut rebuild_at: Option<Instant> = None;
    loop {
        let job = match due {
            Some(at) => jobs.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match job {
            Ok(job) => {
                let at = if pending.take(index, job) {
                    Instant::now()
                } else {
                    last_commit + commit_wait(cost)
                };
                sooner(&mut due, at);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if pending.dirty && commit(index) {
                    crate::saved::notify(store, index, &pending.fresh, clock());
                }
                break;
            }
        }
        if due.is_some_and(|at| at <= Instant::now()) {
            // Take what else is already queued into the same commit, for a bounded time: with
            // the queue full, a waiting batch refills it as fast as it drains, and an unbounded
            // drain would put off the commit (and readers waiting for it) until the load ends.
            let draining = Instant::now();
            while draining.elapsed() < DRAIN_MAX
                && let Ok(job) = jobs.try_recv()
            {
                pending.take(index, job);
            }
            // After a lost update, the index is rebuilt from the store instead of committed
            // (retried every REBUILD_RETRY while that fails; commits go on meanwhile).
            let rebuild = pending.lost && rebuild_at.is_none_or(|at| at <= Instant::now());
            if pending.dirty || rebuild {
                let started = Instant::now();
                let committed = if rebuild {
                    let rebuilt = rebuild_live(index, store);
                    if rebuilt {
                        pending.lost = false;
                        rebuild_at = None;
                    } else {
                        rebuild_at = Some(Instant::now() + REBUILD_RETRY);
                    }
                    rebuilt
                } else {
                    let kept = commit(index);
                    if !kept {
                        pending.lost = true;
                        pending.mark_if_lost(index);
                    }
                    // A rebuild's duration says nothing about what commits cost.
                    cost = started.elapsed();
                    kept
                };
                tracing::debug!(
                    items = pending.fresh.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    committed,
                    "search index committed"
                );
                if committed {
                    counters.commits.fetch_add(1, Ordering::Relaxed);
                    // Saved searches match against the index, so only now that the items are
                    // searchable; before a reader waiting for freshness hears back, so a
                    // notification list read after a publish shows what the publish raised.
                    // A rebuild also made searchable what lost updates had held.
                    let mut fresh = std::mem::take(&mut pending.fresh);
                    if rebuild {
                        fresh.append(&mut pending.unnotified);
                    }
                    crate::saved::notify(store, index, &fresh, clock());
                } else {
                    // Rolled back: notified once a rebuild has made them searchable.
                    pending.unnotified.append(&mut pending.fresh);
                    let excess = pending.unnotified.len().saturating_sub(UNNOTIFIED_MAX);
                    if excess > 0 {
                        pending.unnotified.drain(..excess);
                        tracing::warn!(
                            dropped = excess,
                            "saved searches will not be told of some items a failed index update held"
                        );
                    }
                }
                last_commit = Instant::now();
            }
            // Also after a failed commit: the rebuild that follows repairs the index, and
            // readers must not force a commit on every read until then.
            counters
                .committed
                .store(pending.applied_local, Ordering::SeqCst);
            pending.dirty = false;
            due = None;
            for done in pending.waiting.drain(..) {
                let _ = done.send(());
            }
        }
        if pending.lost {
            // Lost by this commit or by an update since: rebuild at once, or at the retry.
            sooner(&mut due, rebuild_at.unwrap_or_else(Instant::now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Query;
    use kim_protocol::samples;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    /// Offers (owning region, record) by one region.
    fn offers(count: usize) -> Result<Vec<(RegionId, Record)>, Box<dyn std::error::Error>> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let key = samples::signing_key(&mut rng);
        let author = samples::public_key(&key);
        let now = crate::ingest::system_now_ms();
        (0..count)
            .map(|i| {
                let content = samples::content(
                    &mut rng,
                    kim_protocol::FederationId([7; 32]),
                    author,
                    Kind::Cooperation,
                    &format!("offer-{i}"),
                    now - 60_000,
                );
                Ok((author, Record::sign(&content, &key)?))
            })
            .collect()
    }

    fn slot(region: &RegionId, record: &Record) -> Slot {
        (*region, record.content.kind, record.content.key.clone())
    }

    /// A store, an index and their indexer under `dir`.
    fn start(
        dir: &std::path::Path,
    ) -> Result<(Arc<SearchIndex>, Indexer), Box<dyn std::error::Error>> {
        let store = Store::open(&dir.join("store"), 8 << 20, true)?;
        let index = Arc::new(SearchIndex::open(&dir.join("search"))?);
        let indexer = Indexer::start(Arc::clone(&index), store, crate::ingest::system_now_ms)?;
        Ok((index, indexer))
    }

    /// Hands one record to the indexer as the pipeline does.
    async fn submit_one(indexer: &Indexer, (region, record): &(RegionId, Record), origin: Origin) {
        let room = indexer.room(1).await;
        indexer.submit(
            room,
            vec![Doc {
                region: *region,
                record: record.clone(),
                first: false,
            }],
            None,
            vec![slot(region, record)],
            "g".into(),
            origin,
        );
    }

    #[tokio::test]
    async fn a_burst_of_staff_publishes_shares_commits_and_is_searchable_when_read()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (index, indexer) = start(dir.path())?;
        let docs = offers(20)?;
        // Twenty publishes back to back, as a script sends them: none waits for the index.
        for doc in &docs {
            submit_one(&indexer, doc, Origin::Local).await;
        }
        // A reader then sees every one of them.
        indexer.fresh().await;
        assert_eq!(index.count(&Query::default())?, 20);
        let commits = indexer.commits();
        assert!(
            (1..20).contains(&commits),
            "twenty publishes handed over together took {commits} commits"
        );
        // Nothing pending: reading again commits nothing.
        indexer.fresh().await;
        assert_eq!(indexer.commits(), commits);
        Ok(())
    }

    #[tokio::test]
    async fn a_lone_staff_publish_becomes_searchable_without_a_reader()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (index, indexer) = start(dir.path())?;
        let docs = offers(1)?;
        submit_one(&indexer, &docs[0], Origin::Local).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while index.count(&Query::default())? == 0 {
            assert!(
                Instant::now() < deadline,
                "an idle indexer left a publish uncommitted"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(indexer.commits() <= 1);
        Ok(())
    }

    /// The nice value of every thread of this process with the given name (Linux `/proc`).
    #[cfg(target_os = "linux")]
    fn nice_of_threads(name: &str) -> Result<Vec<i64>, Box<dyn std::error::Error>> {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")? {
            let path = task?.path();
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(path.join("comm")),
                std::fs::read_to_string(path.join("stat")),
            ) else {
                continue; // the thread ended meanwhile
            };
            if comm.trim() != name {
                continue;
            }
            // Fields after the parenthesised name: state is field 3, nice field 19.
            let after = stat.rsplit_once(')').ok_or("stat without a name")?.1;
            let nice = after
                .split_whitespace()
                .nth(16)
                .ok_or("stat too short")?
                .parse()?;
            out.push(nice);
        }
        Ok(out)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn index_maintenance_runs_at_a_lower_cpu_priority()
    -> Result<(), Box<dyn std::error::Error>> {
        let base = i64::from(rustix::process::getpriority_process(None)?);
        let dir = tempfile::tempdir()?;
        let (index, indexer) = start(dir.path())?;
        let docs = offers(1)?;
        // A rebuild asked for on a thread of normal priority (as at a node's start) replaces
        // tantivy's writer and its threads; they must not come back at that priority.
        index.rebuild(std::iter::empty(), "rebuilt")?;
        submit_one(&indexer, &docs[0], Origin::Local).await;
        // After a commit the indexer thread has run, and tantivy's workers were respawned by it.
        indexer.fresh().await;
        let lowered = (base + i64::from(crate::search::INDEXING_NICE_INCREMENT)).min(19);
        let indexers = nice_of_threads("kim-indexer")?;
        assert!(
            indexers.contains(&lowered),
            "no indexer thread runs at nice {lowered}: {indexers:?}"
        );
        // tantivy's own threads (names as the kernel keeps them, 15 bytes): the one indexing,
        // the one finishing segments and commits,
        // and the ones merging segments (the heaviest, at moments nobody chooses).
        for name in ["thrd-tantivy-in", "segment_updater", "merge_thread_0"] {
            let nices = nice_of_threads(name)?;
            assert!(
                !nices.is_empty() && nices.iter().all(|n| *n == lowered),
                "{name} threads are not all at nice {lowered}: {nices:?}"
            );
        }
        // The caller keeps its priority.
        assert_eq!(i64::from(rustix::process::getpriority_process(None)?), base);
        Ok(())
    }

    #[tokio::test]
    async fn network_records_wait_for_the_interval_unless_flushed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (index, indexer) = start(dir.path())?;
        let docs = offers(3)?;
        for doc in &docs {
            submit_one(&indexer, doc, Origin::Network).await;
        }
        // An explicit flush commits what is pending at once (within the interval).
        indexer.flush().await?;
        assert_eq!(index.count(&Query::default())?, 3);
        assert!(indexer.commits() >= 1);
        Ok(())
    }

    /// A due commit takes queued jobs for a bounded time only. While a sync keeps the queue
    /// full, a reader waiting for the next commit is answered during the load, not after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_is_answered_while_a_sync_keeps_the_queue_full()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("store"), 8 << 20, true)?;
        let index = Arc::new(SearchIndex::open(&dir.path().join("search"))?);
        let indexer = Arc::new(Indexer::start_with_capacity(
            Arc::clone(&index),
            store,
            crate::ingest::system_now_ms,
            2_000,
        )?);
        let docs = offers(50)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producer = tokio::spawn({
            let (indexer, stop) = (Arc::clone(&indexer), Arc::clone(&stop));
            async move {
                let mut sent = 0usize;
                while !stop.load(Ordering::SeqCst) && sent < 5_000_000 {
                    submit_one(&indexer, &docs[sent % docs.len()], Origin::Network).await;
                    sent += 1;
                }
            }
        });
        let filled = Instant::now();
        while indexer.backlog() < 1_000 {
            assert!(
                filled.elapsed() < Duration::from_secs(30),
                "the queue never filled"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let answered = tokio::time::timeout(Duration::from_secs(20), indexer.flush()).await;
        let load_went_on = !producer.is_finished();
        stop.store(true, Ordering::SeqCst);
        producer.await?;
        assert!(
            answered.is_ok(),
            "a reader waited for the whole load to end"
        );
        assert!(load_went_on);
        Ok(())
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_next_batch_back_until_the_thread_takes_some()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("store"), 8 << 20, true)?;
        let index = Arc::new(SearchIndex::open(&dir.path().join("search"))?);
        let indexer = Indexer::start_with_capacity(
            Arc::clone(&index),
            store,
            crate::ingest::system_now_ms,
            2,
        )?;
        let docs = offers(4)?;
        // The thread is held up: another thread has the index writer, as a rebuild would.
        let held = index.hold_writer_for_test();
        submit_one(&indexer, &docs[0], Origin::Network).await;
        submit_one(&indexer, &docs[1], Origin::Network).await;
        assert_eq!(indexer.backlog(), 2);
        // The queue is full: the next batch waits instead of piling up.
        let mut third = std::pin::pin!(submit_one(&indexer, &docs[2], Origin::Network));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut third)
                .await
                .is_err(),
            "a batch was queued beyond the queue's capacity"
        );
        assert_eq!(indexer.backlog(), 2);
        // Once the thread can work, it goes through, and nothing was lost.
        held.release();
        tokio::time::timeout(Duration::from_secs(30), third).await?;
        submit_one(&indexer, &docs[3], Origin::Network).await;
        indexer.flush().await?;
        assert_eq!(index.count(&Query::default())?, 4);
        assert_eq!(indexer.backlog(), 0);
        Ok(())
    }
}
