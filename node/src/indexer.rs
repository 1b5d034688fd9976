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
        let thread = std::thread::Builder::new()
            .name("kim-indexer".into())
            .spawn(move || run(&index, &store, clock, &rx))?;
        Ok(Indexer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
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

fn run(index: &SearchIndex, store: &Store, clock: fn() -> u64, jobs: &mpsc::Receiver<Job>) {
    let mut dirty = false;
    let mut fresh: Vec<Slot> = Vec::new();
    let mut last_commit = Instant::now();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let timeout = COMMIT_INTERVAL.saturating_sub(last_commit.elapsed());
        let job = jobs.recv_timeout(if dirty {
            timeout
        } else {
            Duration::from_secs(3600)
        });
        let mut commit_now = false;
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
                commit_now = commit;
                waiting.extend(done);
            }
            Ok(Job::Remove { items, generation }) => {
                remove_items(index, &items, &generation);
                dirty = true;
            }
            Ok(Job::Flush(done)) => {
                waiting.push(done);
                commit_now = true;
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
        if commit_now || (dirty && last_commit.elapsed() >= COMMIT_INTERVAL) {
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
                    }
                    Job::Remove { items, generation } => {
                        remove_items(index, &items, &generation);
                    }
                    Job::Flush(done) => waiting.push(done),
                }
            }
            if dirty {
                commit(index);
                // Saved searches match against the index, so only now that the items are
                // searchable; before the waiting callers hear back, so a publish that returns
                // has raised its notifications.
                crate::saved::notify(store, index, &std::mem::take(&mut fresh), clock());
            }
            dirty = false;
            last_commit = Instant::now();
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
    }
}
