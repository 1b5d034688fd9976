//! Keeps the search index in step with the store without putting tantivy on the ingest path.
//!
//! The pipeline hands each durable batch's new winners to one indexer thread. Records staff
//! publish or import are committed at once and the call waits for it (read-your-writes);
//! records from the network are committed together at most every [`COMMIT_INTERVAL`], so a
//! gossip hop never waits for a tantivy commit (tens of milliseconds). Every commit carries the
//! store digest it reflects as its generation: after a crash between the store flush and the
//! index commit, the generation no longer matches and the index is rebuilt at start.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use kim_protocol::RegionId;
use kim_protocol::envelope::{Kind, Record};
use tokio::sync::oneshot;

use crate::search::{SearchError, SearchIndex};
use crate::store::Store;

/// Longest time a record that arrived from the network waits to become searchable.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// Commits of network arrivals take at most one part in this many of the indexer's time:
/// after a commit that took `t`, the next one for network arrivals waits at least `t` times
/// this (never more than [`COMMIT_INTERVAL_MAX`]). A tantivy commit has a fixed cost however
/// little it holds (a new segment's hash table cleared and scanned, files created, merges
/// later); when the machine is busy, commits take longer and so come less often, leaving the
/// CPU to replication and the API. Commits a caller waits for are never held back.
pub const COMMIT_DUTY: u32 = 10;
/// Longest a network arrival waits to become searchable, however slow commits are.
pub const COMMIT_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// An item whose winner changed: region, kind, item key.
pub type Slot = (RegionId, Kind, String);

enum Job {
    Update {
        docs: Vec<(RegionId, Record)>,
        items: Vec<Slot>,
        generation: String,
        commit: bool,
        done: Option<oneshot::Sender<()>>,
    },
    /// Whole items to drop (their region is no longer a member).
    Remove {
        items: Vec<Slot>,
        generation: String,
    },
    Flush(oneshot::Sender<()>),
}

fn remove_items(index: &SearchIndex, items: &[Slot], generation: &str) {
    let result = (|| -> Result<(), SearchError> {
        for (region, kind, key) in items {
            index.remove(*region, *kind, key)?;
        }
        index.set_generation(generation);
        Ok(())
    })();
    if let Err(err) = result {
        tracing::error!(cause = %err, "search index removal failed; it will be rebuilt at the next start");
        let _ = index.rollback();
    }
}

/// The handle the pipeline holds. Dropping it commits what is pending and waits for the thread
/// to end, so the index's writer lock is free when the handle is gone.
#[derive(Debug)]
pub struct Indexer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Commits made since start.
    commits: Arc<std::sync::atomic::AtomicU64>,
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
            Job::Update { docs, commit, .. } => f
                .debug_struct("Update")
                .field("docs", &docs.len())
                .field("commit", commit)
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
        let (jobs, rx) = mpsc::channel::<Job>();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&commits);
        let thread = std::thread::Builder::new()
            .name("kim-indexer".into())
            .spawn(move || run(&index, &store, clock, &rx, &counted))?;
        Ok(Indexer {
            jobs: Some(jobs),
            thread: Some(thread),
            commits,
        })
    }

    /// Commits made since start.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a batch's new winners and the generation (store digest) they bring the index
    /// to. With `commit`, the returned receiver completes once they are searchable.
    pub fn submit(
        &self,
        docs: Vec<(RegionId, Record)>,
        items: Vec<Slot>,
        generation: String,
        commit: bool,
    ) -> Option<oneshot::Receiver<()>> {
        let (done, wait) = if commit {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let Some(jobs) = &self.jobs else {
            return None;
        };
        if jobs
            .send(Job::Update {
                docs,
                items,
                generation,
                commit,
                done,
            })
            .is_err()
        {
            tracing::error!(
                "the search indexer has stopped; the index is rebuilt at the next start"
            );
            return None;
        }
        wait
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

fn commit(index: &SearchIndex) {
    if let Err(err) = index.commit() {
        tracing::error!(cause = %err, "search index commit failed; it will be rebuilt at the next start");
        let _ = index.rollback();
    }
}

fn apply(index: &SearchIndex, docs: &[(RegionId, Record)], generation: &str) {
    let result = (|| -> Result<(), SearchError> {
        for (region, record) in docs {
            index.upsert(record, *region)?;
        }
        index.set_generation(generation);
        Ok(())
    })();
    if let Err(err) = result {
        tracing::error!(cause = %err, "search index update failed; it will be rebuilt at the next start");
        let _ = index.rollback();
    }
}

/// Moves the commit `due` forward to `at` if that is sooner.
fn sooner(due: &mut Option<Instant>, at: Instant) {
    *due = Some(due.map_or(at, |d| d.min(at)));
}

/// How long after the last commit network arrivals are committed, given what it cost.
fn network_wait(cost: Duration) -> Duration {
    COMMIT_INTERVAL.max((cost * COMMIT_DUTY).min(COMMIT_INTERVAL_MAX))
}

fn run(
    index: &SearchIndex,
    store: &Store,
    clock: fn() -> u64,
    jobs: &mpsc::Receiver<Job>,
    commits: &std::sync::atomic::AtomicU64,
) {
    let mut dirty = false;
    let mut fresh: Vec<Slot> = Vec::new();
    let mut last_commit = Instant::now();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    // When the next commit is due: set by the first change since the last commit.
    let mut due: Option<Instant> = None;
    // How long the last commit took.
    let mut cost = Duration::ZERO;
    loop {
        let job = match due {
            Some(at) => jobs.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match job {
            Ok(Job::Update {
                docs,
                items,
                generation,
                commit,
                done,
            }) => {
                apply(index, &docs, &generation);
                fresh.extend(items);
                dirty = true;
                waiting.extend(done);
                let at = if commit {
                    Instant::now()
                } else {
                    last_commit + network_wait(cost)
                };
                sooner(&mut due, at);
            }
            Ok(Job::Remove { items, generation }) => {
                remove_items(index, &items, &generation);
                dirty = true;
                sooner(&mut due, last_commit + network_wait(cost));
            }
            Ok(Job::Flush(done)) => {
                waiting.push(done);
                sooner(&mut due, Instant::now());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                if dirty {
                    commit(index);
                    crate::saved::notify(store, index, &fresh, clock());
                }
                break;
            }
        }
        if due.is_some_and(|at| at <= Instant::now()) {
            // Take whatever else is already queued into the same commit.
            while let Ok(job) = jobs.try_recv() {
                match job {
                    Job::Update {
                        docs,
                        items,
                        generation,
                        done,
                        ..
                    } => {
                        apply(index, &docs, &generation);
                        fresh.extend(items);
                        waiting.extend(done);
                        dirty = true;
                    }
                    Job::Remove { items, generation } => {
                        remove_items(index, &items, &generation);
                        dirty = true;
                    }
                    Job::Flush(done) => waiting.push(done),
                }
            }
            if dirty {
                let started = Instant::now();
                commit(index);
                cost = started.elapsed();
                commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Saved searches match against the index, so only now that the items are
                // searchable; before the waiting callers hear back, so a publish that returns
                // has raised its notifications.
                crate::saved::notify(store, index, &std::mem::take(&mut fresh), clock());
                last_commit = Instant::now();
            }
            dirty = false;
            due = None;
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
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

    #[tokio::test]
    async fn paced_publishes_are_searchable_on_return() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("store"), 8 << 20, true)?;
        let index = Arc::new(SearchIndex::open(&dir.path().join("search"))?);
        let indexer = Indexer::start(Arc::clone(&index), store, crate::ingest::system_now_ms)?;
        let docs = offers(10)?;
        // Ten publishes 20 ms apart, each waiting to be searchable, as staff in a hurry or a
        // script would send them.
        let mut waits = Vec::new();
        for (i, (region, record)) in docs.iter().enumerate() {
            let items = vec![slot(region, record)];
            let wait = indexer
                .submit(
                    vec![(*region, record.clone())],
                    items,
                    format!("g{i}"),
                    true,
                )
                .ok_or("the indexer refused the update")?;
            waits.push(wait);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (i, wait) in waits.into_iter().enumerate() {
            wait.await?;
            let searchable = index.count(&Query::default())?;
            assert!(
                searchable > i,
                "publish {i} returned before it was searchable ({searchable} documents)"
            );
        }
        assert_eq!(index.count(&Query::default())?, 10);
        assert!(indexer.commits() >= 1);
        Ok(())
    }

    #[tokio::test]
    async fn network_records_wait_for_the_interval_unless_flushed()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&dir.path().join("store"), 8 << 20, true)?;
        let index = Arc::new(SearchIndex::open(&dir.path().join("search"))?);
        let indexer = Indexer::start(Arc::clone(&index), store, crate::ingest::system_now_ms)?;
        let docs = offers(3)?;
        for (region, record) in &docs {
            let items = vec![slot(region, record)];
            let wait = indexer.submit(vec![(*region, record.clone())], items, "g".into(), false);
            assert!(wait.is_none(), "a network record is not waited for");
        }
        // An explicit flush commits what is pending at once (within the interval).
        indexer.flush().await?;
        assert_eq!(index.count(&Query::default())?, 3);
        assert!(indexer.commits() >= 1);
        Ok(())
    }
}
