//! Offline compaction (`kim store compact`): the store's sled database rewritten into a fresh
//! directory, checked against the original, and swapped in.
//!
//! sled never gives back what its page table once held, and its log keeps superseded page
//! versions until segments are cleaned. A store upgraded in place (format 5 to 6 moved a
//! million pointer entries) or one that has seen years of revisions carries that weight: at a
//! million records an upgraded store made a whole node 25 MiB bigger than a store written
//! fresh (session 13's figures). A rewrite keeps only the live entries, densely packed.
//!
//! The swap survives a crash at any point ([`recover`], run by every [`Store::open`]):
//! 1. the copy is built in `store.compacting`, compared entry for entry (count and sled's
//!    checksum of every tree), and marked complete;
//! 2. `store` is renamed to `store.before-compaction`, then the copy to `store`;
//! 3. the old directory is deleted, then the mark.
//!
//! Cut short before 2, the copy is thrown away; between the renames, the complete copy is put
//! in place; after them, the leftover old directory is deleted. The record log and the saved
//! sync-set table are not rewritten: they are linked (or copied) into the new directory.

use std::path::{Path, PathBuf};

use super::{RECORD_LOG, SYNC_SET_FILE, Store, StoreError, open_db, sled_config};

/// Marks a copy as complete and checked; removed once the swap is done.
pub(super) const COMPLETE: &str = "compaction-complete";

/// Entries copied per sled batch.
const BATCH_ENTRIES: usize = 10_000;

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Entries copied, over all trees.
    pub entries: u64,
    /// The store's size on disk ([`Store::size_on_disk`]) before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The store directory's own name, which its siblings below are named after.
fn store_name(dir: &Path) -> String {
    dir.file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned())
}

/// The lock a compaction holds from start to end, beside the store (a file in the store
/// would move with the renames). Every open checks it first ([`recover`]), so no node or
/// command opens the store, or tidies up after a compaction, while one runs.
fn lock_path(dir: &Path) -> PathBuf {
    dir.with_file_name(format!("{}.compaction-lock", store_name(dir)))
}

/// The copy's directory and the one the original is moved to during the swap.
fn siblings(dir: &Path) -> (PathBuf, PathBuf) {
    let name = store_name(dir);
    (
        dir.with_file_name(format!("{name}.compacting")),
        dir.with_file_name(format!("{name}.before-compaction")),
    )
}

pub(super) fn io_error(dir: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        dir: dir.to_path_buf(),
        cause: format!("{what}: {e}"),
    }
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the renames and removals in the directory holding `path` durable.
fn sync_parent(path: &Path) {
    if let Ok(handle) = std::fs::File::open(parent_of(path)) {
        let _ = handle.sync_all();
    }
}

/// Finishes or undoes a compaction that was cut short (see the module docs); refuses with
/// [`StoreError::Locked`] while a compaction runs.
pub(super) fn recover(dir: &Path) -> Result<(), StoreError> {
    let lock = lock_path(dir);
    let held = match std::fs::File::open(&lock) {
        // Left by a compaction that stopped: take it while tidying up, then remove it.
        Ok(file) => {
            try_lock(dir, &file)?;
            Some(file)
        }
        Err(_) => None,
    };
    recover_unlocked(dir)?;
    if held.is_some() {
        let _ = std::fs::remove_file(&lock);
        sync_parent(dir);
    }
    Ok(())
}

/// Takes the compaction lock on `file` (released when it is closed), or reports the store
/// as locked.
fn try_lock(dir: &Path, file: &std::fs::File) -> Result<(), StoreError> {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(e) => Err(io_error(dir, "cannot take the compaction lock", e)),
    }
}

/// [`recover`] for a caller that holds the compaction lock.
fn recover_unlocked(dir: &Path) -> Result<(), StoreError> {
    let (copy, old) = siblings(dir);
    if !dir.exists() && old.exists() {
        if copy.join(COMPLETE).exists() {
            tracing::warn!(dir = %dir.display(), "a compaction stopped between its renames; putting the checked copy in place");
            std::fs::rename(&copy, dir)
                .map_err(|e| io_error(dir, "cannot put the compacted copy in place", e))?;
        } else {
            tracing::warn!(dir = %dir.display(), "a compaction stopped unfinished; putting the store back");
            std::fs::rename(&old, dir)
                .map_err(|e| io_error(dir, "cannot put the store back after a compaction", e))?;
        }
        sync_parent(dir);
    }
    if !dir.exists() {
        return Ok(());
    }
    if copy.exists() {
        std::fs::remove_dir_all(&copy)
            .map_err(|e| io_error(dir, "cannot remove an unfinished compaction copy", e))?;
    }
    if dir.join(COMPLETE).exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| {
                io_error(dir, "cannot remove the store's state before compaction", e)
            })?;
        }
        std::fs::remove_file(dir.join(COMPLETE))
            .map_err(|e| io_error(dir, "cannot remove the compaction mark", e))?;
        sync_parent(dir);
    } else if old.exists() {
        tracing::warn!(
            old = %old.display(),
            "a directory left by an earlier compaction is not the store in use, and its records.log may be the store's own (a hard link): move it away, do not restore from it"
        );
    }
    Ok(())
}

impl Store {
    /// Rewrites the store in `dir` into a fresh sled database and swaps it in (see the module
    /// docs). The node must be stopped: a running node holds the store's lock, and this fails
    /// with [`StoreError::Locked`]. `progress` is called with the entries copied so far, every
    /// `BATCH_ENTRIES`. On any failure before the swap the store is left as it was.
    pub async fn compact(
        dir: &Path,
        cache_bytes: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<Compacted, StoreError> {
        let dir = &checked_path(dir)?;
        let lock_file = lock_path(dir);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_file)
            .map_err(|e| io_error(dir, "cannot create the compaction lock", e))?;
        try_lock(dir, &lock)?;
        let result = compact_locked(dir, cache_bytes, &mut progress).await;
        // Removed while still held, so no open passes it before the store is whole.
        let _ = std::fs::remove_file(&lock_file);
        drop(lock);
        sync_parent(dir);
        let (entries, bytes_before) = result?;
        Ok(Compacted {
            entries,
            bytes_before,
            bytes_after: Store::open(dir, cache_bytes, false)?.size_on_disk(),
        })
    }
}

/// The store's path made absolute, refused if it is a symbolic link (the renames would
/// replace the link by a directory) or has no name of its own.
fn checked_path(dir: &Path) -> Result<PathBuf, StoreError> {
    // A missing store may be one a compaction moved aside: opening it finds out.
    if std::fs::symlink_metadata(dir).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Err(io_error(
            dir,
            "cannot compact a store reached through a symbolic link",
            "stop the node, move the directory the link points to in place of the link, then retry",
        ));
    }
    let name = dir.file_name().ok_or_else(|| {
        io_error(
            dir,
            "cannot compact",
            "the store's path does not end in a directory name",
        )
    })?;
    let parent = std::fs::canonicalize(parent_of(dir))
        .map_err(|e| io_error(dir, "cannot resolve the store's directory", e))?;
    Ok(parent.join(name))
}

/// The compaction itself, under the lock; returns the entries copied and the store's size
/// before.
async fn compact_locked(
    dir: &Path,
    cache_bytes: u64,
    progress: &mut impl FnMut(u64),
) -> Result<(u64, u64), StoreError> {
    recover_unlocked(dir)?;
    // Opening finishes any interrupted write set and upgrade first.
    let store = Store::open_locked(dir, cache_bytes)?;
    store.close().await?;
    let bytes_before = store.size_on_disk();
    let (copy_dir, old_dir) = siblings(dir);
    if old_dir.exists() {
        return Err(io_error(
            dir,
            "cannot compact",
            format!(
                "{} is left from an earlier compaction: move it away first",
                old_dir.display()
            ),
        ));
    }
    if copy_dir.exists() {
        std::fs::remove_dir_all(&copy_dir)
            .map_err(|e| io_error(dir, "cannot remove an old compaction copy", e))?;
    }
    let entries = match copy_checked(&store, &copy_dir, cache_bytes, progress) {
        Ok(entries) => entries,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&copy_dir);
            return Err(e);
        }
    };
    // sled's lock goes with the last handle; the directory is renamed after that.
    drop(store);
    std::fs::rename(dir, &old_dir)
        .map_err(|e| io_error(dir, "cannot move the store aside for the compacted copy", e))?;
    if let Err(e) = std::fs::rename(&copy_dir, dir) {
        // Put the original back; the copy goes at the next open if this fails too.
        let _ = std::fs::rename(&old_dir, dir);
        return Err(io_error(dir, "cannot put the compacted copy in place", e));
    }
    sync_parent(dir);
    // The rest (old directory and mark) is what `recover` does at every open.
    recover_unlocked(dir)?;
    Ok((entries, bytes_before))
}

/// Copies every tree of `store` into a new database in `copy_dir`, checks it against the
/// original, links the files beside sled's, and marks the copy complete.
fn copy_checked(
    store: &Store,
    copy_dir: &Path,
    cache_bytes: u64,
    progress: &mut impl FnMut(u64),
) -> Result<u64, StoreError> {
    let dir = &store.dir;
    let config = sled_config(copy_dir, cache_bytes);
    let copy = open_db(&config, copy_dir)?;
    let from_err = |e: sled::Error| store.io(e);
    let to_err = |e: sled::Error| io_error(copy_dir, "cannot write the compacted copy", e);
    let mut entries = 0u64;
    for name in store.db.tree_names() {
        let from = store.db.open_tree(&name).map_err(from_err)?;
        let to = copy.open_tree(&name).map_err(to_err)?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0usize;
        let mut in_tree = 0usize;
        for entry in from.iter() {
            let (key, value) = entry.map_err(from_err)?;
            batch.insert(key, value);
            in_batch += 1;
            in_tree += 1;
            entries += 1;
            if in_batch == BATCH_ENTRIES {
                to.apply_batch(std::mem::take(&mut batch)).map_err(to_err)?;
                in_batch = 0;
                progress(entries);
            }
        }
        if in_batch > 0 {
            to.apply_batch(batch).map_err(to_err)?;
        }
        if to.len() != in_tree {
            return Err(io_error(
                dir,
                "the compacted copy lost entries; the store is unchanged",
                format!(
                    "tree {:?}: {} of {in_tree}",
                    String::from_utf8_lossy(&name),
                    to.len()
                ),
            ));
        }
    }
    copy.flush().map_err(to_err)?;
    drop(copy);
    // sled syncs its data file, not its config or blobs: every file of the copy is synced,
    // then the copy is opened again and checked as read back, before it is marked complete.
    sync_tree(copy_dir).map_err(|e| io_error(copy_dir, "cannot sync the compacted copy", e))?;
    let copy = open_db(&config, copy_dir)?;
    let original = store.db.checksum().map_err(from_err)?;
    let copied = copy.checksum().map_err(to_err)?;
    let mut copied_entries = 0u64;
    for name in copy.tree_names() {
        copied_entries += copy.open_tree(&name).map_err(to_err)?.len() as u64;
    }
    drop(copy);
    if original != copied || copied_entries != entries {
        return Err(io_error(
            dir,
            "the compacted copy differs from the store; the store is unchanged",
            format!(
                "checksum {copied:08x} and {copied_entries} entries, store {original:08x} and {entries}"
            ),
        ));
    }
    for file in [RECORD_LOG, SYNC_SET_FILE] {
        let from = dir.join(file);
        if !from.exists() {
            continue;
        }
        let to = copy_dir.join(file);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .and_then(|_| std::fs::File::open(&to)?.sync_all())
                .map_err(|e| io_error(dir, &format!("cannot copy {file}"), e))?;
        }
    }
    std::fs::File::create(copy_dir.join(COMPLETE))
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::File::open(copy_dir)?.sync_all())
        .map_err(|e| io_error(dir, "cannot mark the compacted copy complete", e))?;
    Ok(entries)
}

/// Syncs every file and directory under `path`.
fn sync_tree(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(path)?.sync_all()
}
