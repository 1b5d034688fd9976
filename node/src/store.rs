//! The node's durable store: sled 0.34, behind this one module. Nothing else names sled.
//!
//! Three trees, few on purpose:
//! - `data`: everything shared, under one-byte key prefixes, so a whole ingest batch is one
//!   atomic write set (record bytes, item winners, indexes and the state digest together; see
//!   [`Store::apply`] for how it is made atomic without sled's process-wide batch lock):
//!   - `R` id's first 18 bits → pointers to the record log for every record of the sync set
//!     (winners, tombstones, equivocation evidence, membership records) whose id starts so:
//!     one entry per group of 262,144, not one per record (format 6; see the `pointers` module for why)
//!   - `i` region ‖ kind ‖ key → the current winner of each item: an [`ItemEntry`] stored
//!     without what its key says (`StoredItem`, format 3)
//!   - `w` kind ‖ [`Position`] → the item's `i` key, for withdrawn items only (list withdrawn
//!     items by kind, newest first). Live and expired items are listed from the search index,
//!     which orders them the same way: an index of every item here cost more of sled's disk
//!     than all the item entries and record pointers together (format 4 dropped it), because
//!     its keys arrive in time order and sled rewrites its rightmost leaf on every write set.
//!   - `m` id → () (membership records, loaded at start to evaluate membership)
//!   - `e` region ‖ kind ‖ key ‖ 0 ‖ id → () (equivocation evidence for an item's revision)
//!   - `n` id → pointer to the record's bytes (directly delivered records: never in the sync
//!     set)
//!   - `x` name → value (metadata: format version, federation, charter, state digest)
//!   - `z` pointer → () (record bytes no write set refers to any more, erased from the log
//!     once that is on disk: by the next flush, or at open after a crash)
//! - `journal`: the journal of the write set being applied, in chunks (empty between write
//!   sets; see [`Store::apply`]). Its own tree, so its big values never sit in `data`'s leaves.
//! - `local`: data that never leaves the node (drafts, contact persons, internal notes, private
//!   fields), as JSON.
//! - `audit`: the audit log, sequence number (BE) → JSON entry.
//!
//! Beside sled, `records.log` holds the records' bytes (see the `log` module for why and how).

mod compact;
mod log;
mod pointers;
mod sync_set;

use std::path::{Path, PathBuf};

use kim_protocol::digest::StateDigest;
use kim_protocol::{Kind, PublicKey, RecordId, RegionId};
use serde::{Deserialize, Serialize};

/// Version of the on-disk layout. Bump it and add a step to `migrate` when the layout changes.
///
/// - 1: record bytes as sled values.
/// - 2: record bytes in the record log, sled values are pointers to them.
/// - 3: an item entry's value leaves out what its key says (region, kind, item key) and the
///   author when it is the region's own key (`StoredItem`).
/// - 4: no `k` index of every item by kind and time; a `w` index of withdrawn items only.
/// - 5: the record log may hold LZ4-compressed frames (older frames read as they are, so the
///   upgrade rewrites nothing; the number only stops an older kim from misreading new frames).
/// - 6: the sync set's record pointers grouped by the id's first 18 bits (`R`) instead of
///   one `r` entry per record: sled's in-memory page table shrinks by about 30 MiB at a
///   million records.
pub const STORE_FORMAT_VERSION: u32 = 6;
/// How often opening retries a store that is still locked (20 ms apart: about 2 s).
const OPEN_LOCKED_RETRIES: u32 = 100;
/// How often [`Store::winner_record`] follows an item whose winner is replaced while it reads.
const WINNER_READS_MAX: usize = 8;
/// Default sled page-cache size; set explicitly because sled's default is 1 GiB.
///
/// sled counts its cache by the bytes its pages take on disk; in memory they take about two and
/// a half times that (`kim bench search`: a scan of a million entries with a 64 MiB cache left
/// about 160 MiB of heap). 8 MiB, not 64: at a million records the data side of a node
/// serving search, matching, listings, the overview and sync held 269 MiB (`kim bench search
/// --measure`; 278-282 MiB with 12 MiB, 288 MiB with 16 MiB, 470 MiB with 64 before sync
/// stopped copying its set), and the network and HTTP side adds to that. Searches and
/// matching were as fast: record bytes live in the record log and sled's own file is read
/// through the operating system's cache either way. Storing a million records in one go
/// takes longer (62.1 s with 64 MiB, 72-76 s with 12-16 MiB); `store_cache_bytes` raises it.
pub const CACHE_BYTES_DEFAULT: u64 = 8 * 1024 * 1024;

/// Why the store could not be used. Every message names the directory and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {dir} is locked by another process: stop the other kim node using this data directory, then retry"
    )]
    Locked { dir: PathBuf },
    #[error(
        "store {dir} is damaged ({cause}): restore it from a backup (`kim import`) or move it aside and let the node resync from its peers"
    )]
    Damaged { dir: PathBuf, cause: String },
    #[error("store {dir} does not exist: run `kim init` first")]
    Missing { dir: PathBuf },
    #[error(
        "store {dir} has format {found}, newer than this kim understands ({supported}): upgrade kim"
    )]
    TooNew {
        dir: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("store {dir}: {cause}")]
    Io { dir: PathBuf, cause: String },
}

/// The current winner of one item, as indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemEntry {
    pub id: RecordId,
    pub region: RegionId,
    pub author: PublicKey,
    pub kind: Kind,
    pub key: String,
    pub revision: u64,
    pub tombstone: bool,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
}

impl ItemEntry {
    /// The facts item resolution compares (`kim_protocol::resolve`).
    pub fn revision(&self) -> kim_protocol::resolve::Revision {
        kim_protocol::resolve::Revision {
            id: self.id,
            revision: self.revision,
            tombstone: self.tombstone,
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// Whether the item shows in queries at `now_ms`: the protocol's rule, not a copy of it.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.revision().is_live(now_ms)
    }
}

/// An [`ItemEntry`] as stored under its `i` key (format 3): only what the key does not say.
/// About 55 bytes instead of about 140; sled copies leaf values on every insert and keeps
/// several versions of them on disk, so each byte saved here is saved several times.
#[derive(Serialize, Deserialize)]
struct StoredItem {
    id: RecordId,
    /// `None` when the author is the region's own key, as it is until a key rotation.
    author: Option<PublicKey>,
    revision: u64,
    tombstone: bool,
    created_at_ms: u64,
    expires_at_ms: Option<u64>,
}

fn encode_item(entry: &ItemEntry) -> Vec<u8> {
    let stored = StoredItem {
        id: entry.id,
        author: (entry.author != entry.region).then_some(entry.author),
        revision: entry.revision,
        tombstone: entry.tombstone,
        created_at_ms: entry.created_at_ms,
        expires_at_ms: entry.expires_at_ms,
    };
    postcard::to_stdvec(&stored).unwrap_or_default()
}

/// The region, kind and item key an `i` key names.
fn parse_item_key(key: &[u8]) -> Option<(RegionId, Kind, String)> {
    if key.first() != Some(&b'i') {
        return None;
    }
    let region = PublicKey(key.get(1..33)?.try_into().ok()?);
    let byte = *key.get(33)?;
    let kind = Kind::ALL
        .get(usize::from(byte))
        .copied()
        .filter(|k| *k as u8 == byte)?;
    let item = std::str::from_utf8(key.get(34..)?).ok()?.to_string();
    Some((region, kind, item))
}

/// An item entry from its `i` key and its format-3 value.
fn decode_item(key: &[u8], value: &[u8]) -> Result<ItemEntry, String> {
    let (region, kind, item) = parse_item_key(key).ok_or("malformed item key")?;
    let (stored, rest) =
        postcard::take_from_bytes::<StoredItem>(value).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the entry", rest.len()));
    }
    Ok(ItemEntry {
        id: stored.id,
        region,
        author: stored.author.unwrap_or(region),
        kind,
        key: item,
        revision: stored.revision,
        tombstone: stored.tombstone,
        created_at_ms: stored.created_at_ms,
        expires_at_ms: stored.expires_at_ms,
    })
}

/// An item entry stored by format 2 (the whole [`ItemEntry`]), recognised only if it is one
/// exactly: every byte read, and the region, kind and item key it repeats are its key's.
fn decode_item_v2(key: &[u8], value: &[u8]) -> Option<ItemEntry> {
    let (entry, rest) = postcard::take_from_bytes::<ItemEntry>(value).ok()?;
    let named = parse_item_key(key)?;
    (rest.is_empty() && (entry.region, entry.kind, entry.key.clone()) == named).then_some(entry)
}

/// One audit-log entry: who did what through the API, when, with what result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    /// Which token acted (a fingerprint, never the token itself).
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

/// A set of changes applied atomically by [`Store::apply`]. Like a sled batch, the last change
/// to a key wins.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// New record bytes (`r` and `n` keys): neither held before nor journalled, since they are
    /// the bulk of the bytes; a write set cut short by a crash removes them again.
    records: NewRecords,
    /// Every other change: a value to insert, or `None` to remove the key.
    changes: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub records_added: usize,
}

/// New records' bytes by (key prefix, record id).
type NewRecords = std::collections::BTreeMap<(u8, [u8; 32]), Vec<u8>>;

/// What [`Store::apply`] writes before it touches anything else: the keys of the new records
/// and every other change, so that a crash in between can be finished or undone at open.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    /// (key prefix, record id) of each new record.
    records: Vec<(u8, [u8; 32])>,
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Pointers to the bytes of the records this write set removes, erased from the record
    /// log once the removal is applied.
    erase: Vec<[u8; log::POINTER_LEN]>,
}

impl Journal {
    /// The journal's postcard encoding, written directly: serde hands a `Vec<u8>` to postcard
    /// one byte at a time, which took a twentieth of a write set's time. The bytes are
    /// exactly postcard's (recovery decodes them with serde; a test compares the two).
    fn encode(&self) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, mut n: usize) {
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        fn bytes(out: &mut Vec<u8>, b: &[u8]) {
            varint(out, b.len());
            out.extend_from_slice(b);
        }
        let size = 16
            + self.records.len() * 33
            + self
                .changes
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + 12)
                .sum::<usize>()
            + self.erase.len() * log::POINTER_LEN;
        let mut out = Vec::with_capacity(size);
        varint(&mut out, self.records.len());
        for (tag, id) in &self.records {
            out.push(*tag);
            out.extend_from_slice(id);
        }
        varint(&mut out, self.changes.len());
        for (key, value) in &self.changes {
            bytes(&mut out, key);
            match value {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    bytes(&mut out, v);
                }
            }
        }
        varint(&mut out, self.erase.len());
        for pointer in &self.erase {
            out.extend_from_slice(pointer);
        }
        out
    }
}

/// The journal a store of format 1 wrote (no record log, nothing to erase).
#[derive(Debug, Deserialize)]
struct JournalV1 {
    records: Vec<(u8, [u8; 32])>,
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Journal entries are written as chunks of at most this many bytes, so each stays a small
/// value inside sled's log (sled writes values above a quarter segment as separate files).
const JOURNAL_CHUNK_BYTES: usize = 64 * 1024;

fn item_key(region: &RegionId, kind: Kind, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 32 + 1 + key.len());
    k.push(b'i');
    k.extend_from_slice(&region.0);
    k.push(kind as u8);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Where an item stands in a listing by kind, newest first: its winner's creation time (BE)
/// and record id, ordered as bytes. Listings go from the greatest position down; a cursor
/// names the last position a page returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub [u8; 40]);

impl Position {
    pub fn new(created_at_ms: u64, id: &RecordId) -> Position {
        let mut p = [0u8; 40];
        p[..8].copy_from_slice(&created_at_ms.to_be_bytes());
        p[8..].copy_from_slice(&id.0);
        Position(p)
    }

    pub fn of(entry: &ItemEntry) -> Position {
        Position::new(entry.created_at_ms, &entry.id)
    }

    /// The lowest position of an instant: below it lies nothing created at that instant, so
    /// a listing that has read a whole instant continues from here.
    pub fn start_of(created_at_ms: u64) -> Position {
        Position::new(created_at_ms, &RecordId([0; 32]))
    }

    pub fn created_at_ms(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }
}

/// Withdrawn items with their positions, and how far down the page is complete if more may
/// lie below ([`Store::list_withdrawn`]).
pub type WithdrawnPage = (Vec<(Position, ItemEntry)>, Option<Position>);

/// `w` ‖ kind ‖ position: a withdrawn item in the listing of its kind.
fn withdrawn_key(kind: Kind, position: &Position) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 1 + 40);
    k.push(b'w');
    k.push(kind as u8);
    k.extend_from_slice(&position.0);
    k
}

fn evidence_prefix(region: &RegionId, kind: Kind, key: &str) -> Vec<u8> {
    let mut k = item_key(region, kind, key);
    k[0] = b'e';
    // Item keys never contain NUL, so this ends the key unambiguously.
    k.push(0);
    k
}

fn evidence_key(region: &RegionId, kind: Kind, key: &str, id: &RecordId) -> Vec<u8> {
    let mut k = evidence_prefix(region, kind, key);
    k.extend_from_slice(&id.0);
    k
}

/// The id of a sync-set record key `r` id (the logical key write sets and journals name; see
/// [`pointers`] for how it is stored).
fn record_id_in(key: &[u8]) -> Option<[u8; 32]> {
    match key {
        [b'r', id @ ..] => id.try_into().ok(),
        _ => None,
    }
}

fn prefixed(tag: u8, id: &RecordId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = tag;
    k[1..].copy_from_slice(&id.0);
    k
}

const META_FORMAT: &[u8] = b"xformat";
/// Present while the format 2 → 3 upgrade runs: the format already says 3, so that an older
/// binary refuses a store it would find half rewritten, and this one finishes the upgrade.
const META_SHRINKING: &[u8] = b"xformat-3-pending";
/// Present while the format 3 → 4 upgrade runs, for the same reason.
const META_UNINDEXING: &[u8] = b"xformat-4-pending";
/// Present while the upgrade to format 6 (grouping record pointers) is under way.
const META_GROUPING: &[u8] = b"xformat-6-pending";
/// How far the record log was synced when sled was last flushed (u64 BE).
const META_LOG_SYNCED: &[u8] = b"xlogsynced";
/// The record log's length after the last write set's records, written before any of that
/// write set's pointers: sled recovers a prefix, so no recovered pointer lies beyond it.
const META_LOG_END: &[u8] = b"xlogend";
/// The record log's file name inside the store directory.
const RECORD_LOG: &str = "records.log";

/// The sync set's bucket table as saved by a clean stop (see [`Store::close`]).
const SYNC_SET_FILE: &str = "sync-set.buckets";

/// A journal chunk's key: its position and the journal's chunk count. A journal with fewer
/// chunks than its keys name was cut short while it was written (before anything else of its
/// write set) or while it was removed (after everything else), in whatever order its chunks
/// were removed.
/// `z` ‖ pointer: bytes to erase from the record log once the write set that stopped
/// referencing them is on disk (see [`Store::flush`]).
fn erase_key(pointer: &[u8; log::POINTER_LEN]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + log::POINTER_LEN);
    key.push(b'z');
    key.extend_from_slice(pointer);
    key
}

fn journal_key(chunk: usize, chunks: usize) -> [u8; 8] {
    let mut key = [0u8; 8];
    key[..4].copy_from_slice(&(chunk as u32).to_be_bytes());
    key[4..].copy_from_slice(&(chunks as u32).to_be_bytes());
    key
}
const META_DIGEST: &[u8] = b"xdigest";

impl WriteSet {
    fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.changes.insert(key.into(), Some(value.into()));
    }

    fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.changes.insert(key.into(), None);
    }

    /// Stores a record's bytes in the sync set.
    pub fn put_record(&mut self, id: &RecordId, bytes: &[u8]) {
        self.put_new_record(b'r', id, bytes);
        self.records_added += 1;
    }

    fn put_new_record(&mut self, tag: u8, id: &RecordId, bytes: &[u8]) {
        self.changes.remove(&prefixed(tag, id)[..]);
        self.records.insert((tag, id.0), bytes.to_vec());
    }

    /// Drops a record's bytes (superseded revision or erased body).
    pub fn remove_record(&mut self, id: &RecordId) {
        self.records.remove(&(b'r', id.0));
        self.remove(prefixed(b'r', id).to_vec());
    }

    /// The journal of this write set, and the new records it names.
    fn into_journal(self) -> (Journal, NewRecords) {
        let journal = Journal {
            records: self.records.keys().copied().collect(),
            changes: self.changes.into_iter().collect(),
            erase: Vec::new(),
        };
        (journal, self.records)
    }

    /// Whether the write set changes nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.changes.is_empty()
    }

    /// Makes `entry` the winner of its item, replacing `previous` if given, and keeps the
    /// index of withdrawn items.
    pub fn set_item(&mut self, entry: &ItemEntry, previous: Option<&ItemEntry>) {
        if let Some(prev) = previous.filter(|p| p.tombstone) {
            self.remove(withdrawn_key(prev.kind, &Position::of(prev)));
        }
        let value = encode_item(entry);
        let item = item_key(&entry.region, entry.kind, &entry.key);
        if entry.tombstone {
            self.insert(
                withdrawn_key(entry.kind, &Position::of(entry)),
                item.clone(),
            );
        }
        self.insert(item, value);
    }

    /// Drops an item altogether: its winner entry and its index entry (the region that owns
    /// it is no longer a member).
    pub fn remove_item(&mut self, entry: &ItemEntry) {
        if entry.tombstone {
            self.remove(withdrawn_key(entry.kind, &Position::of(entry)));
        }
        self.remove(item_key(&entry.region, entry.kind, &entry.key));
    }

    /// Stores a directly delivered record (expression of interest) outside the sync set.
    pub fn put_direct(&mut self, id: &RecordId, bytes: &[u8]) {
        self.put_new_record(b'n', id, bytes);
    }

    /// Marks a record as a membership record.
    pub fn mark_membership(&mut self, id: &RecordId) {
        self.insert(prefixed(b'm', id).to_vec(), Vec::new());
    }

    /// Marks a record as equivocation evidence for an item's current revision.
    pub fn mark_equivocation(&mut self, region: &RegionId, kind: Kind, key: &str, id: &RecordId) {
        self.insert(evidence_key(region, kind, key, id), Vec::new());
    }

    /// Drops an evidence marker (its revision was superseded).
    pub fn unmark_equivocation(&mut self, region: &RegionId, kind: Kind, key: &str, id: &RecordId) {
        self.remove(evidence_key(region, kind, key, id));
    }

    /// Records the new state digest in the same batch.
    pub fn set_digest(&mut self, digest: &StateDigest) {
        self.insert(META_DIGEST, encode_digest(digest));
    }
}

fn encode_digest(digest: &StateDigest) -> Vec<u8> {
    postcard::to_stdvec(&(digest.count(), digest.sum_bytes())).unwrap_or_default()
}

/// Why the store does not use sled's `apply_batch`: sled 0.34 switches the whole process to
/// one global reader-writer lock the first time a batch or transaction is applied. From then on
/// every read and write of every store in the process waits while any batch is applied, and a
/// flush holds the lock for reading while it waits for the disk; with both in flight the
/// process deadlocked (seen with several nodes in one process), and before that fix a gossip
/// hop spent most of its time queueing there. [`Store::apply`] gets the same atomicity from a
/// journal and plain inserts, which sled runs without that lock.
fn lock_apply(lock: &std::sync::Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The node's store. Cheap to clone; all clones share the same database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    data: sled::Tree,
    local: sled::Tree,
    audit: sled::Tree,
    journal: sled::Tree,
    /// The records' bytes.
    log: std::sync::Arc<log::RecordLog>,
    dir: PathBuf,
    /// One write set at a time per store: the journal has one place.
    applying: std::sync::Arc<std::sync::Mutex<()>>,
    /// Record bytes that applied write sets stopped referencing, erased by the next flush once
    /// sled has those write sets on disk (each is also marked under a `z` key).
    unerased: std::sync::Arc<std::sync::Mutex<Vec<[u8; log::POINTER_LEN]>>>,
    /// Count and sum of the sync set's ids per bucket, for reconciliation without a copy of
    /// the set (see [`sync_set`]). Written only under `applying`.
    buckets: std::sync::Arc<std::sync::RwLock<sync_set::Buckets>>,
    /// Whether record pointers are grouped per bucket (format 6 on); see [`pointers`].
    grouped: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Pointer groups as the held check last read them for records not held, so the write
    /// that follows starts its compare-and-swap from them instead of reading again (see
    /// [`pointers`]).
    group_hints: std::sync::Arc<std::sync::Mutex<pointers::GroupHints>>,
}

pub use compact::Compacted;
pub use sync_set::SyncSet;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Opens (or with `create`, creates) the store in `dir`. Never panics on a damaged store.
    pub fn open(dir: &Path, cache_bytes: u64, create: bool) -> Result<Store, StoreError> {
        compact::recover(dir)?;
        Self::open_recovered(dir, cache_bytes, create)
    }

    /// [`Store::open`] for [`Store::compact`], which holds the compaction lock and has
    /// finished any earlier compaction itself.
    fn open_locked(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        Self::open_recovered(dir, cache_bytes, false)
    }

    fn open_recovered(dir: &Path, cache_bytes: u64, create: bool) -> Result<Store, StoreError> {
        let dir = dir.to_path_buf();
        if !create && !dir.join("conf").exists() {
            return Err(StoreError::Missing { dir });
        }
        let db = open_db(&sled_config(&dir, cache_bytes), &dir)?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|e| StoreError::Damaged {
                dir: dir.clone(),
                cause: e.to_string(),
            })
        };
        let log_path = dir.join(RECORD_LOG);
        let log_existed = log_path.exists();
        let log = log::RecordLog::open(&log_path).map_err(|e| StoreError::Io {
            dir: dir.clone(),
            cause: format!("cannot open the record log {}: {e}", log_path.display()),
        })?;
        let store = Store {
            data: tree("data")?,
            local: tree("local")?,
            audit: tree("audit")?,
            journal: tree("journal")?,
            log: std::sync::Arc::new(log),
            db,
            dir,
            applying: std::sync::Arc::new(std::sync::Mutex::new(())),
            unerased: std::sync::Arc::new(std::sync::Mutex::new(Vec::new())),
            buckets: std::sync::Arc::default(),
            grouped: std::sync::Arc::default(),
            group_hints: std::sync::Arc::default(),
        };
        // Refuse a newer layout before touching anything, then finish the last write set,
        // then upgrade an older layout.
        let found = store.format()?;
        let grouping = store
            .data
            .contains_key(META_GROUPING)
            .map_err(|e| store.io(e))?;
        store.grouped.store(
            found >= 6 && !grouping,
            std::sync::atomic::Ordering::Release,
        );
        if found >= 2 && !log_existed && store.any_pointer()? {
            return Err(store.damaged(format!(
                "its record log {} is missing",
                store.dir.join(RECORD_LOG).display()
            )));
        }
        store.recover_journal()?;
        store.migrate(found)?;
        store.forget_lost_records()?;
        store.erase_marked()?;
        store.count_sync_set()?;
        Ok(store)
    }

    /// Loads the sync set's bucket table that the last clean stop saved (see
    /// [`Store::close`]) if it matches the state digest, which counts and sums the same ids;
    /// otherwise builds it from the record keys (one scan: about 2.5 s and the sled cache's
    /// worth of memory at a million records).
    fn count_sync_set(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let digest = self.digest()?;
        let matches = |table: &sync_set::Buckets| {
            table.total() == digest.count() && table.total_sum().to_le_bytes() == digest.sum_bytes()
        };
        let path = self.dir.join(SYNC_SET_FILE);
        let saved = std::fs::read(&path)
            .ok()
            .and_then(|bytes| sync_set::Buckets::from_file_bytes(&bytes))
            .filter(matches);
        let (table, source) = match saved {
            Some(table) => (table, "saved at the last stop"),
            None => {
                let table = sync_set::Buckets::scan(self)?;
                if !matches(&table) {
                    tracing::warn!(
                        dir = %self.dir.display(), held = table.total(), digest = digest.count(),
                        "the state digest does not match the records held; sync finds the difference with peers"
                    );
                }
                (table, "counted from the record keys")
            }
        };
        tracing::debug!(
            records = table.total(),
            source,
            ms = started.elapsed().as_millis() as u64,
            "sync set's buckets ready"
        );
        *self.buckets.write().unwrap_or_else(|p| p.into_inner()) = table;
        Ok(())
    }

    /// Flushes, then saves the sync set's bucket table so that the next open need not count
    /// it again (it is used only if it still matches the state digest then). For a clean stop.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.flush().await?;
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = store
                .buckets
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .to_file_bytes();
            let path = store.dir.join(SYNC_SET_FILE);
            let temporary = store.dir.join(format!("{SYNC_SET_FILE}.new"));
            std::fs::write(&temporary, bytes)
                .and_then(|()| std::fs::rename(&temporary, &path))
                .map_err(|e| StoreError::Io {
                    dir: store.dir.clone(),
                    cause: format!("cannot save {}: {e}", path.display()),
                })
        })
        .await
        .map_err(|e| self.damaged(format!("close task failed: {e}")))?
    }

    /// The sync set, held still (record keys unchanged) until the value is dropped or
    /// finished; for reconciliation. Keep it for one step only: writes wait for it.
    pub fn sync_set(&self) -> SyncSet<'_> {
        SyncSet::new(self, self.buckets.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Syncs the record log and records how far (not yet flushed in sled).
    fn sync_log_now(&self) -> Result<(), StoreError> {
        let synced = self.log.sync().map_err(|e| self.log_error(e))?;
        self.data
            .insert(META_LOG_SYNCED, &synced.to_be_bytes())
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    /// After a power failure, sled may hold pointers to record bytes that never reached the
    /// disk: written to sled's file by the operating system before the record log's, neither
    /// yet synced. Only pointers past the log's last synced length can be affected, and only
    /// records no one was told were stored (everything acknowledged was flushed). Each such
    /// record is forgotten as if it had never arrived: its pointer, its place in the state
    /// digest, its membership mark and equivocation marks go, and an item it won loses its
    /// winner. Sync then fetches it again from the peers, and the search index, whose
    /// generation no longer matches the digest, is rebuilt at start.
    ///
    /// Costs one scan of the pointers when the log holds anything unsynced at open (after any
    /// crash); nothing after a clean stop.
    fn forget_lost_records(&self) -> Result<(), StoreError> {
        let length = |name: &[u8]| -> Result<u64, StoreError> {
            match self.data.get(name).map_err(|e| self.io(e))? {
                Some(v) => v
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| self.damaged("unreadable record-log length".into())),
                None => Ok(0),
            }
        };
        let synced = length(META_LOG_SYNCED)?;
        if length(META_LOG_END)? <= synced {
            return Ok(());
        }
        let _one = lock_apply(&self.applying);
        let mut lost: Vec<(u8, RecordId)> = Vec::new();
        let direct = self.data.scan_prefix([b'n']).map(|kv| {
            let (key, value) = kv.map_err(|e| self.io(e))?;
            Ok((b'n', self.id_in_key(&key)?, value.to_vec()))
        });
        let replicated = self
            .pointers_from(0)
            .map(|entry| entry.map(|(id, pointer)| (b'r', RecordId(id), pointer.to_vec())));
        for entry in replicated.chain(direct) {
            let (tag, id, value): (u8, RecordId, Vec<u8>) = entry?;
            let Some(pointer) = log::Pointer::decode(&value) else {
                continue;
            };
            if pointer.end() <= synced {
                continue;
            }
            // The id is the hash of the bytes: a frame only partly on disk is caught too.
            let readable = matches!(
                self.log.read(pointer, &id.0),
                Ok(log::Read::Bytes(bytes)) if *blake3::hash(&bytes).as_bytes() == id.0
            );
            if !readable {
                lost.push((tag, id));
            }
        }
        if !lost.is_empty() {
            self.forget(&lost)?;
        }
        self.sync_log_now()?;
        self.flush_now()
    }

    /// Forgets records whose bytes are lost (see [`Store::forget_lost_records`]).
    fn forget(&self, lost: &[(u8, RecordId)]) -> Result<(), StoreError> {
        let io = |e| self.io(e);
        let mut digest = self.digest()?;
        let replicated: std::collections::HashSet<[u8; 32]> = lost
            .iter()
            .filter(|(tag, _)| *tag == b'r')
            .map(|(_, id)| id.0)
            .collect();
        for (tag, id) in lost {
            self.set_pointer(*tag, id, None)?;
            if *tag == b'r' {
                digest.remove(id);
                self.data.remove(prefixed(b'm', id)).map_err(io)?;
            }
        }
        for kv in self.data.scan_prefix([b'i']) {
            let (key, value) = kv.map_err(io)?;
            let entry = self.item_entry(&key, &value)?;
            if replicated.contains(&entry.id.0) {
                if entry.tombstone {
                    self.data
                        .remove(withdrawn_key(entry.kind, &Position::of(&entry)))
                        .map_err(io)?;
                }
                self.data.remove(key).map_err(io)?;
            }
        }
        for kv in self.data.scan_prefix([b'e']) {
            let (key, _) = kv.map_err(io)?;
            let tail: Option<[u8; 32]> = key
                .len()
                .checked_sub(32)
                .and_then(|at| key.get(at..))
                .and_then(|b| b.try_into().ok());
            if tail.is_some_and(|id| replicated.contains(&id)) {
                self.data.remove(key).map_err(io)?;
            }
        }
        self.data
            .insert(META_DIGEST, encode_digest(&digest))
            .map_err(io)?;
        tracing::warn!(
            dir = %self.dir.display(),
            records = lost.len(),
            "records whose bytes a power failure kept from the disk were forgotten; sync fetches them again"
        );
        Ok(())
    }

    /// The store's layout version (a new store gets the current one).
    fn format(&self) -> Result<u32, StoreError> {
        let found =
            match self.data.get(META_FORMAT).map_err(|e| self.io(e))? {
                Some(v) => v.as_ref().try_into().map(u32::from_be_bytes).map_err(|_| {
                    StoreError::Damaged {
                        dir: self.dir.clone(),
                        cause: "unreadable format version".into(),
                    }
                })?,
                None => {
                    self.data
                        .insert(META_FORMAT, &STORE_FORMAT_VERSION.to_be_bytes())
                        .map_err(|e| self.io(e))?;
                    STORE_FORMAT_VERSION
                }
            };
        if found > STORE_FORMAT_VERSION {
            return Err(StoreError::TooNew {
                dir: self.dir.clone(),
                found,
                supported: STORE_FORMAT_VERSION,
            });
        }
        Ok(found)
    }

    /// Brings a layout of version `found` up to [`STORE_FORMAT_VERSION`], one step at a time.
    fn migrate(&self, found: u32) -> Result<(), StoreError> {
        if found < 2 {
            self.move_records_to_the_log()?;
            self.data
                .insert(META_FORMAT, &2u32.to_be_bytes())
                .map_err(|e| self.io(e))?;
            self.flush_now()?;
        }
        self.marked_step(found, 3, META_SHRINKING, || self.shrink_item_entries())?;
        self.marked_step(found, 4, META_UNINDEXING, || self.drop_kind_index())?;
        if found < 5 {
            self.data
                .insert(META_FORMAT, &5u32.to_be_bytes())
                .map_err(|e| self.io(e))?;
            self.flush_now()?;
        }
        self.marked_step(found, 6, META_GROUPING, || self.group_pointers())
    }

    /// Format 3 → 4: removes the `k` index of every item and indexes the withdrawn ones under
    /// `w`. Both halves can simply run again after a crash.
    fn drop_kind_index(&self) -> Result<(), StoreError> {
        let _one = lock_apply(&self.applying);
        let started = std::time::Instant::now();
        let mut removed = 0usize;
        for kv in self.data.scan_prefix([b'k']) {
            let (key, _) = kv.map_err(|e| self.io(e))?;
            self.data.remove(key).map_err(|e| self.io(e))?;
            removed += 1;
            if removed.is_multiple_of(100_000) {
                tracing::info!(removed, "upgrading the store to format 4");
            }
        }
        let mut withdrawn = 0usize;
        for kv in self.data.scan_prefix([b'i']) {
            let (key, value) = kv.map_err(|e| self.io(e))?;
            let entry = self.item_entry(&key, &value)?;
            if entry.tombstone {
                self.data
                    .insert(withdrawn_key(entry.kind, &Position::of(&entry)), key)
                    .map_err(|e| self.io(e))?;
                withdrawn += 1;
            }
        }
        tracing::info!(
            dir = %self.dir.display(),
            removed,
            withdrawn,
            ms = started.elapsed().as_millis() as u64,
            "store upgraded to format 4 (live items are listed from the search index)"
        );
        Ok(())
    }

    /// Brings the layout to `version` with `work`, when `found` is older or a marker says an
    /// earlier run was cut short. The format says `version` from the start, beside `marker`,
    /// so an older binary refuses a half-done store and this one runs `work` again (every step
    /// can run again).
    fn marked_step(
        &self,
        found: u32,
        version: u32,
        marker: &[u8],
        work: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let cut_short = self.data.contains_key(marker).map_err(|e| self.io(e))?;
        if found >= version && !cut_short {
            return Ok(());
        }
        self.data.insert(marker, &[]).map_err(|e| self.io(e))?;
        self.data
            .insert(META_FORMAT, &version.to_be_bytes())
            .map_err(|e| self.io(e))?;
        self.flush_now()?;
        work()?;
        self.data.remove(marker).map_err(|e| self.io(e))?;
        self.flush_now()
    }

    /// Format 2 → 3: rewrites every item entry without what its key says (`StoredItem`).
    /// An entry already rewritten is recognised and left alone, so a migration cut short by a
    /// crash goes on at the next open (the format says 3 from the start, with a marker that
    /// the upgrade is under way, so an older binary refuses the store meanwhile).
    fn shrink_item_entries(&self) -> Result<(), StoreError> {
        let _one = lock_apply(&self.applying);
        let started = std::time::Instant::now();
        let mut rewritten = 0usize;
        for kv in self.data.scan_prefix([b'i']) {
            let (key, value) = kv.map_err(|e| self.io(e))?;
            let Some(entry) = decode_item_v2(&key, &value) else {
                // Rewritten before a crash, or damaged: reading it says which.
                self.item_entry(&key, &value)?;
                continue;
            };
            self.data
                .insert(key, encode_item(&entry))
                .map_err(|e| self.io(e))?;
            rewritten += 1;
            if rewritten.is_multiple_of(100_000) {
                tracing::info!(rewritten, "upgrading the store to format 3");
            }
        }
        tracing::info!(
            dir = %self.dir.display(),
            rewritten,
            ms = started.elapsed().as_millis() as u64,
            "store upgraded to format 3 (smaller item entries)"
        );
        Ok(())
    }

    /// Format 1 → 2: moves record bytes out of sled into the record log, a batch at a time.
    /// Each value is replaced by its pointer only after the batch is synced in the log, and a
    /// value that already is a pointer is skipped, so a migration cut short by a crash simply
    /// goes on at the next open.
    fn move_records_to_the_log(&self) -> Result<(), StoreError> {
        const BATCH: usize = 10_000;
        let _one = lock_apply(&self.applying);
        let mut moved = 0usize;
        for tag in [b'r', b'n'] {
            let mut batch: Vec<([u8; 32], sled::IVec)> = Vec::with_capacity(BATCH);
            let mut entries = self.data.scan_prefix([tag]);
            loop {
                let next = entries.next().transpose().map_err(|e| self.io(e))?;
                if let Some((key, value)) = &next
                    && log::Pointer::decode(value).is_none()
                {
                    batch.push((self.id_in_key(key)?.0, value.clone()));
                }
                if batch.len() == BATCH || (next.is_none() && !batch.is_empty()) {
                    let pointers = self
                        .log
                        .append(batch.iter().map(|(id, bytes)| (id, &bytes[..])))
                        .map_err(|e| self.log_error(e))?;
                    // Synced before sled holds the only copy's pointer.
                    self.log.sync().map_err(|e| self.log_error(e))?;
                    for ((id, _), pointer) in batch.iter().zip(pointers) {
                        self.data
                            .insert(prefixed(tag, &RecordId(*id)), &pointer.encode()[..])
                            .map_err(|e| self.io(e))?;
                    }
                    moved += batch.len();
                    batch.clear();
                    tracing::info!(dir = %self.dir.display(), moved, "moving records into the record log");
                }
                if next.is_none() {
                    break;
                }
            }
        }
        tracing::info!(dir = %self.dir.display(), moved, "store upgraded to format 2 (record log)");
        Ok(())
    }

    /// The record id in a key made by [`prefixed`] (`r`, `n` or `m`).
    fn id_in_key(&self, key: &[u8]) -> Result<RecordId, StoreError> {
        key.get(1..33)
            .and_then(|b| b.try_into().ok())
            .map(RecordId)
            .ok_or_else(|| self.damaged("record key too short".into()))
    }

    fn log_error(&self, err: std::io::Error) -> StoreError {
        StoreError::Io {
            dir: self.dir.clone(),
            cause: format!("record log: {err}"),
        }
    }

    /// The bytes of the record stored under `tag` (`r` or `n`).
    fn load(&self, tag: u8, id: &RecordId) -> Result<Option<Vec<u8>>, StoreError> {
        let mut value = self.pointer(tag, id)?;
        // A frame erased between reading its pointer and reading the frame means the record
        // was just removed: look once more.
        for _ in 0..2 {
            let Some(current) = value else {
                return Ok(None);
            };
            let pointer = log::Pointer::decode(&current).ok_or_else(|| self.no_pointer(id))?;
            match self
                .log
                .read(pointer, &id.0)
                .map_err(|e| self.log_error(e))?
            {
                log::Read::Bytes(bytes) => return Ok(Some(bytes)),
                log::Read::Gone => {
                    let again = self.pointer(tag, id)?;
                    if again == Some(current) {
                        return Err(self.damaged(format!(
                            "the record log does not hold record {} where the store points",
                            id.to_hex()
                        )));
                    }
                    value = again;
                }
            }
        }
        Err(self.damaged(format!(
            "record {} keeps moving in the record log",
            id.to_hex()
        )))
    }

    fn io(&self, err: sled::Error) -> StoreError {
        classify(&self.dir, err)
    }

    /// The data directory of this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies a write set atomically (all of it or none of it survives a crash). Not yet
    /// durable: see [`Store::flush`].
    ///
    /// The new records' bytes go to the record log first, synced (see the `log` module). Then, as sled
    /// recovers a prefix of the writes it was given, in order: the journal (the keys of the new
    /// records, every other change, and where the bytes of removed records lie) is written
    /// first, then the new records' pointers, then the other changes (insertions before
    /// removals, so a reader never finds an item whose record is already gone); then removed
    /// records' bytes are erased from the log, and the journal is removed last. After a crash,
    /// open finds the journal only if the write set was cut short: if every new record made
    /// it, the changes and erasures are done again (doing them twice is harmless); otherwise
    /// the new records are removed and nothing else had been touched.
    pub fn apply(&self, writes: WriteSet) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let _one = lock_apply(&self.applying);
        let (mut journal, records) = writes.into_journal();
        for (key, value) in &journal.changes {
            if value.is_some() {
                continue;
            }
            let current = match key.as_slice() {
                [tag @ (b'r' | b'n'), id @ ..] => match <[u8; 32]>::try_from(id) {
                    Ok(id) => self.pointer(*tag, &RecordId(id))?,
                    Err(_) => None,
                },
                _ => None,
            };
            if let Some(pointer) = current.as_ref().and_then(|p| log::Pointer::decode(p)) {
                journal.erase.push(pointer.encode());
            }
        }
        // Erased only once this write set is on disk: erasing now, a crash could leave sled
        // without the write set and pointing at bytes already gone.
        for pointer in &journal.erase {
            journal.changes.push((erase_key(pointer), Some(Vec::new())));
        }
        let pointers = self
            .log
            .append(records.iter().map(|((_, id), bytes)| (id, &bytes[..])))
            .map_err(|e| self.log_error(e))?;
        let encoded = journal.encode();
        let chunks = encoded.chunks(JOURNAL_CHUNK_BYTES).count();
        // Record keys change only while the sync set's table is held for writing, so a
        // reconciliation step never sees the two disagree.
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        let written = (|| -> Result<(), StoreError> {
            let sled = |e| self.io(e);
            if !pointers.is_empty() {
                self.data
                    .insert(META_LOG_END, &self.log.end().to_be_bytes())
                    .map_err(sled)?;
            }
            for (i, chunk) in encoded.chunks(JOURNAL_CHUNK_BYTES).enumerate() {
                self.journal
                    .insert(journal_key(i, chunks), chunk)
                    .map_err(sled)?;
            }
            for (((tag, id), _), pointer) in records.iter().zip(&pointers) {
                let old = self.set_pointer(*tag, &RecordId(*id), Some(&pointer.encode()))?;
                if *tag == b'r' && old.is_none() {
                    buckets.add(id);
                }
            }
            self.write_changes(&journal.changes, Some(&mut buckets))?;
            for i in 0..chunks {
                self.journal.remove(journal_key(i, chunks)).map_err(sled)?;
            }
            Ok(())
        })();
        if written.is_ok()
            && let Ok(mut unerased) = self.unerased.lock()
        {
            unerased.extend(journal.erase.iter().copied());
        }
        if let Err(cause) = written {
            // Finish or undo it now, so the next write set does not overwrite the journal.
            if let Err(again) = self.recover_journal_locked() {
                tracing::error!(cause = %again, "cannot repair a write set cut short; restart the node");
            }
            // Recovery changed record keys without counting them: count them all again.
            match sync_set::Buckets::scan(self) {
                Ok(table) => *buckets = table,
                Err(again) => {
                    tracing::error!(cause = %again, "cannot count the sync set again; restart the node")
                }
            }
            return Err(cause);
        }
        Ok(())
    }

    /// Erases the record bytes marked under `z` keys (their write sets are on disk: open
    /// calls this after recovery has flushed), then drops the marks.
    fn erase_marked(&self) -> Result<(), StoreError> {
        let mut marked = Vec::new();
        for kv in self.data.scan_prefix([b'z']) {
            let (key, _) = kv.map_err(|e| self.io(e))?;
            match key.get(1..).and_then(|p| p.try_into().ok()) {
                Some(pointer) => marked.push(pointer),
                // Not a mark this store writes: nothing to erase.
                None => {
                    self.data.remove(key).map_err(|e| self.io(e))?;
                }
            }
        }
        if marked.is_empty() {
            return Ok(());
        }
        self.flush_now()?;
        self.erase_now(&marked)?;
        self.flush_now()
    }

    /// Erases record bytes from the log and drops their `z` marks. Only for bytes that no
    /// write set on disk refers to any more.
    fn erase_now(&self, pointers: &[[u8; log::POINTER_LEN]]) -> Result<(), StoreError> {
        for pointer in pointers {
            if let Some(decoded) = log::Pointer::decode(pointer) {
                self.log.erase(decoded).map_err(|e| self.log_error(e))?;
            }
            self.data
                .remove(erase_key(pointer))
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Writes `changes`, insertions first, and keeps `buckets` counting the record keys if
    /// given (at open the table is built afterwards).
    fn write_changes(
        &self,
        changes: &[(Vec<u8>, Option<Vec<u8>>)],
        mut buckets: Option<&mut sync_set::Buckets>,
    ) -> Result<(), StoreError> {
        let sled = |e| self.io(e);
        // Insertions first, then removals.
        for removing in [false, true] {
            for (key, value) in changes {
                if value.is_none() != removing {
                    continue;
                }
                let Some(id) = record_id_in(key) else {
                    match value {
                        Some(value) => self.data.insert(&key[..], &value[..]).map(drop),
                        None => self.data.remove(&key[..]).map(drop),
                    }
                    .map_err(sled)?;
                    continue;
                };
                let pointer: Option<pointers::Pointer> = value
                    .as_deref()
                    .map(|v| v.try_into())
                    .transpose()
                    .map_err(|_| {
                        self.damaged("a record pointer in a write set is malformed".into())
                    })?;
                let old = self.set_pointer(b'r', &RecordId(id), pointer.as_ref())?;
                if let Some(table) = buckets.as_deref_mut() {
                    match (removing, old) {
                        (false, None) => table.add(&id),
                        (true, Some(_)) => table.remove(&id),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Finishes or undoes a write set that a crash cut short (see [`Store::apply`]).
    fn recover_journal(&self) -> Result<(), StoreError> {
        let _one = lock_apply(&self.applying);
        self.recover_journal_locked()
    }

    fn recover_journal_locked(&self) -> Result<(), StoreError> {
        let mut encoded = Vec::new();
        let mut keys = Vec::new();
        let mut named = 0usize;
        for kv in self.journal.iter() {
            let (key, chunk) = kv.map_err(|e| self.io(e))?;
            named = key
                .get(4..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, |b| u32::from_be_bytes(b) as usize);
            encoded.extend_from_slice(&chunk);
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(());
        }
        if keys.len() != named {
            // Cut short while the journal itself was written (or while it was being removed,
            // after everything else): nothing of the write set is left to finish or undo.
            for key in keys {
                self.journal.remove(key).map_err(|e| self.io(e))?;
            }
            self.db.flush().map_err(|e| self.io(e))?;
            tracing::warn!(dir = %self.dir.display(), "an unfinished write journal was discarded");
            return Ok(());
        }
        let journal: Journal = match postcard::from_bytes(&encoded) {
            Ok(journal) => journal,
            // Left by a store of format 1, about to be migrated.
            Err(err) => match postcard::from_bytes::<JournalV1>(&encoded) {
                Ok(old) => Journal {
                    records: old.records,
                    changes: old.changes,
                    erase: Vec::new(),
                },
                Err(_) => return Err(self.damaged(format!("unreadable write journal: {err}"))),
            },
        };
        let mut complete = true;
        for (tag, id) in &journal.records {
            complete &= self.holds(&RecordId(*id), *tag == b'r')?;
        }
        // Bytes to erase are only marked here and erased at the end of open, once these
        // changes are on disk.
        if complete {
            self.write_changes(&journal.changes, None)?;
            for pointer in &journal.erase {
                self.data
                    .insert(erase_key(pointer), &[])
                    .map_err(|e| self.io(e))?;
            }
        } else {
            // The new records' bytes are in the log, unreferenced once their pointers go.
            for (tag, id) in &journal.records {
                if let Some(value) = self.set_pointer(*tag, &RecordId(*id), None)?
                    && let Some(pointer) = log::Pointer::decode(&value)
                {
                    self.data
                        .insert(erase_key(&pointer.encode()), &[])
                        .map_err(|e| self.io(e))?;
                }
            }
        }
        // Synced, but not recorded as synced: what a power failure kept from the log is
        // found by `forget_lost_records`, which runs after this at open.
        self.log.sync().map_err(|e| self.log_error(e))?;
        for key in keys {
            self.journal.remove(key).map_err(|e| self.io(e))?;
        }
        self.db.flush().map_err(|e| self.io(e))?;
        tracing::warn!(
            dir = %self.dir.display(),
            records = journal.records.len(),
            outcome = if complete { "finished" } else { "undone" },
            "a write set cut short by a crash was repaired"
        );
        Ok(())
    }

    /// Waits until everything applied so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // Write sets applied so far: once sled has them on disk, the bytes they stopped
        // referencing can go.
        let erase = self
            .unerased
            .lock()
            .map(|mut pending| std::mem::take(&mut *pending))
            .unwrap_or_default();
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            // The record log first, then sled, which learns how far the log is synced.
            let flushed = store
                .sync_log_now()
                .and_then(|()| store.flush_now())
                // A crash from here on leaves the `z` marks, and open erases them.
                .and_then(|()| store.erase_now(&erase));
            if flushed.is_err()
                && let Ok(mut pending) = store.unerased.lock()
            {
                // Left for the next flush (their marks stay on disk meanwhile).
                pending.extend(erase);
            }
            flushed
        })
        .await
        .map_err(|e| self.damaged(format!("flush task failed: {e}")))?
    }

    /// A record's exact bytes.
    pub fn record(&self, id: &RecordId) -> Result<Option<Vec<u8>>, StoreError> {
        self.load(b'r', id)
    }

    /// Whether the record is held (in the sync set or as a direct record).
    pub fn has_record(&self, id: &RecordId) -> Result<bool, StoreError> {
        Ok(self.holds(id, true)? || self.holds(id, false)?)
    }

    /// Whether the record is held, with one read: a record's kind says where it would be
    /// (`replicated` records in the sync set, expressions of interest among direct records), and
    /// an id names one record, so one kind.
    pub fn holds(&self, id: &RecordId, replicated: bool) -> Result<bool, StoreError> {
        let tag = if replicated { b'r' } else { b'n' };
        self.holds_pointer(tag, id)
    }

    /// A directly delivered record's bytes.
    pub fn direct_record(&self, id: &RecordId) -> Result<Option<Vec<u8>>, StoreError> {
        self.load(b'n', id)
    }

    /// The current winner of an item.
    /// The record `entry` names, with the entry it was read under. A reader holds no snapshot:
    /// between reading an item's entry and loading its record, a write set may replace the
    /// winner and remove the old record (insertions go first, so the new winner is already
    /// there). The item is then read again and its current winner loaded. `None` if the item
    /// itself is gone (its region was purged); damage only if the entry still names a record
    /// that is missing.
    pub fn winner_record(
        &self,
        entry: &ItemEntry,
    ) -> Result<Option<(ItemEntry, Vec<u8>)>, StoreError> {
        let mut entry = entry.clone();
        for _ in 0..WINNER_READS_MAX {
            if let Some(bytes) = self.record(&entry.id)? {
                return Ok(Some((entry, bytes)));
            }
            match self.item(&entry.region, entry.kind, &entry.key)? {
                Some(current) if current.id != entry.id => entry = current,
                Some(_) => {
                    return Err(self.damaged(format!("indexed record {} is missing", entry.id)));
                }
                None => return Ok(None),
            }
        }
        Err(StoreError::Io {
            dir: self.dir.clone(),
            cause: format!(
                "{} item {:?} changed {WINNER_READS_MAX} times while it was read; retry",
                entry.kind, entry.key
            ),
        })
    }

    pub fn item(
        &self,
        region: &RegionId,
        kind: Kind,
        key: &str,
    ) -> Result<Option<ItemEntry>, StoreError> {
        let item = item_key(region, kind, key);
        match self.data.get(&item).map_err(|e| self.io(e))? {
            Some(v) => self.item_entry(&item, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Decodes an item entry stored under `key`.
    fn item_entry(&self, key: &[u8], value: &[u8]) -> Result<ItemEntry, StoreError> {
        decode_item(key, value).map_err(|e| self.damaged(format!("item entry: {e}")))
    }

    fn damaged(&self, cause: String) -> StoreError {
        StoreError::Damaged {
            dir: self.dir.clone(),
            cause,
        }
    }

    /// Withdrawn items of a kind, newest first, below `before`, from the `w` index (live and
    /// expired items are listed from the search index): it reads at most `limit` entries, and
    /// when it read that many, says the last position read, above which the page is complete.
    pub fn list_withdrawn(
        &self,
        kind: Kind,
        before: Option<&Position>,
        limit: usize,
    ) -> Result<WithdrawnPage, StoreError> {
        let start = vec![b'w', kind as u8];
        let end = match before {
            Some(p) => withdrawn_key(kind, p),
            None => {
                let mut end = start.clone();
                end.extend_from_slice(&[0xff; 41]);
                end
            }
        };
        let mut out = Vec::new();
        let mut floor = None;
        for (read, kv) in self.data.range(start..end).rev().enumerate() {
            if read == limit {
                return Ok((out, floor));
            }
            let (index_key, item_key) = kv.map_err(|e| self.io(e))?;
            let position: [u8; 40] = index_key
                .get(2..)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| self.damaged("withdrawn index key of the wrong length".into()))?;
            let position = Position(position);
            floor = Some(position);
            // Replaced since it was indexed (only within a write set in progress).
            let Some(value) = self.data.get(&item_key).map_err(|e| self.io(e))? else {
                continue;
            };
            let item = self.item_entry(&item_key, &value)?;
            if Position::of(&item) == position && item.tombstone {
                out.push((position, item));
            }
        }
        Ok((out, None))
    }

    /// Every region that owns an item here, members or not (the node's own region keeps its
    /// items after leaving): one lookup per region, as item keys start with the region.
    pub fn item_regions(&self) -> Result<Vec<RegionId>, StoreError> {
        let mut regions = Vec::new();
        let mut from = vec![b'i'];
        while let Some(kv) = self.data.range(from..).next() {
            let (key, _) = kv.map_err(|e| self.io(e))?;
            let Some(region) = key
                .get(..33)
                .filter(|k| k[0] == b'i')
                .and_then(|k| <[u8; 32]>::try_from(&k[1..]).ok())
            else {
                break;
            };
            regions.push(PublicKey(region));
            // Kinds are below 0xff, so this lies past every key of this region.
            let mut next = key[..33].to_vec();
            next.push(0xff);
            from = next;
        }
        Ok(regions)
    }

    /// The owning region of every withdrawn item of `kind`, from the index of withdrawn items
    /// (no item entry is read).
    pub fn withdrawn_regions(
        &self,
        kind: Kind,
    ) -> impl Iterator<Item = Result<RegionId, StoreError>> + '_ {
        self.data.scan_prefix([b'w', kind as u8]).map(move |kv| {
            let (_, item_key) = kv.map_err(|e| self.io(e))?;
            item_key
                .get(1..33)
                .and_then(|r| <[u8; 32]>::try_from(r).ok())
                .map(PublicKey)
                .ok_or_else(|| self.damaged("withdrawn index value too short".into()))
        })
    }

    /// Every item of a kind, in key order (region, then item key): sled's item tree is keyed
    /// region first, so this finds the regions ([`Store::item_regions`]) and scans each one's
    /// part for the kind.
    pub fn kind_entries(
        &self,
        kind: Kind,
    ) -> impl Iterator<Item = Result<ItemEntry, StoreError>> + '_ {
        let (regions, failed) = match self.item_regions() {
            Ok(regions) => (regions, None),
            Err(e) => (Vec::new(), Some(Err(e))),
        };
        failed
            .into_iter()
            .chain(regions.into_iter().flat_map(move |region| {
                self.data
                    .scan_prefix(item_key(&region, kind, ""))
                    .map(move |kv| {
                        let (k, v) = kv.map_err(|e| self.io(e))?;
                        self.item_entry(&k, &v)
                    })
            }))
    }

    /// Items of one region, newest first, below `before`. The item tree is keyed region
    /// first, so this is a prefix scan of that region's items; `accept` filters, at most
    /// `limit` are returned with the position of the last one if there are more.
    pub fn list_region_items(
        &self,
        kind: Kind,
        region: &RegionId,
        before: Option<&Position>,
        limit: usize,
        mut accept: impl FnMut(&ItemEntry) -> bool,
    ) -> Result<(Vec<ItemEntry>, Option<Position>), StoreError> {
        let mut entries: Vec<(Position, ItemEntry)> = Vec::new();
        for kv in self.data.scan_prefix(item_key(region, kind, "")) {
            let (key, value) = kv.map_err(|e| self.io(e))?;
            let item = self.item_entry(&key, &value)?;
            let position = Position::of(&item);
            if before.is_none_or(|b| position < *b) {
                entries.push((position, item));
            }
        }
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut out = Vec::new();
        let mut last = None;
        for (position, item) in entries {
            if accept(&item) {
                if out.len() == limit {
                    return Ok((out, last));
                }
                out.push(item);
                last = Some(position);
            }
        }
        Ok((out, None))
    }

    /// Equivocation evidence held for an item.
    pub fn equivocations(
        &self,
        region: &RegionId,
        kind: Kind,
        key: &str,
    ) -> Result<Vec<RecordId>, StoreError> {
        let prefix = evidence_prefix(region, kind, key);
        let mut out = Vec::new();
        for kv in self.data.scan_prefix(&prefix) {
            let (k, _) = kv.map_err(|e| self.io(e))?;
            let id: [u8; 32] = k
                .get(prefix.len()..)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| self.damaged("evidence key malformed".into()))?;
            out.push(RecordId(id));
        }
        Ok(out)
    }

    /// Every item's current winner, streamed in item-key order.
    pub fn item_entries(&self) -> impl Iterator<Item = Result<ItemEntry, StoreError>> + '_ {
        self.data.scan_prefix([b'i']).map(move |kv| {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            self.item_entry(&k, &v)
        })
    }

    /// Every record id held (the sync set), in id order.
    pub fn record_ids(&self) -> impl Iterator<Item = Result<RecordId, StoreError>> + '_ {
        self.pointers_from(0)
            .map(|entry| entry.map(|(id, _)| RecordId(id)))
    }

    /// Every record's bytes, in id order.
    pub fn records(&self) -> impl Iterator<Item = Result<(RecordId, Vec<u8>), StoreError>> + '_ {
        self.pointers_from(0).filter_map(move |entry| {
            let next = || -> Result<Option<(RecordId, Vec<u8>)>, StoreError> {
                let (id, v) = entry?;
                let id = RecordId(id);
                if let Some(pointer) = log::Pointer::decode(&v)
                    && let log::Read::Bytes(bytes) = self
                        .log
                        .read(pointer, &id.0)
                        .map_err(|e| self.log_error(e))?
                {
                    return Ok(Some((id, bytes)));
                }
                // Removed or moved since the scan saw it: as it stands now.
                Ok(self.load(b'r', &id)?.map(|bytes| (id, bytes)))
            };
            next().transpose()
        })
    }

    /// The bytes of every membership record.
    pub fn membership_records(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        for kv in self.data.scan_prefix([b'm']) {
            let (k, _) = kv.map_err(|e| self.io(e))?;
            if let Some(bytes) = self.record(&self.id_in_key(&k)?)? {
                out.push(bytes);
            }
        }
        Ok(out)
    }

    /// The persisted state digest (all zero for an empty store).
    pub fn digest(&self) -> Result<StateDigest, StoreError> {
        match self.data.get(META_DIGEST).map_err(|e| self.io(e))? {
            None => Ok(StateDigest::default()),
            Some(v) => {
                let (count, sum): (u64, [u8; 32]) = postcard::from_bytes(&v)
                    .map_err(|e| self.damaged(format!("state digest: {e}")))?;
                Ok(StateDigest::from_parts(count, sum))
            }
        }
    }

    /// Reads a metadata value.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = [b"x".as_slice(), name.as_bytes()].concat();
        Ok(self
            .data
            .get(key)
            .map_err(|e| self.io(e))?
            .map(|v| v.to_vec()))
    }

    /// Writes a metadata value.
    pub fn set_meta(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = [b"x".as_slice(), name.as_bytes()].concat();
        self.data
            .insert(key, value)
            .map(|_| ())
            .map_err(|e| self.io(e))
    }

    /// Reads a local-only JSON value.
    pub fn local_get(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
        match self.local.get(key).map_err(|e| self.io(e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.damaged(format!("local value {key}: {e}"))),
        }
    }

    /// Writes a local-only JSON value, durably: callers acknowledge it to users right after.
    pub fn local_put(&self, key: &str, value: &serde_json::Value) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.damaged(e.to_string()))?;
        self.local.insert(key, bytes).map_err(|e| self.io(e))?;
        self.flush_now()
    }

    /// Flushes synchronously; for the small local and audit writes that are acknowledged at
    /// once (records use the batched, asynchronous [`Store::flush`]).
    fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.io(e))
    }

    /// Deletes a local-only value durably; returns whether it existed.
    pub fn local_delete(&self, key: &str) -> Result<bool, StoreError> {
        let existed = self
            .local
            .remove(key)
            .map(|v| v.is_some())
            .map_err(|e| self.io(e))?;
        self.flush_now()?;
        Ok(existed)
    }

    /// Local-only values whose key starts with `prefix`, in key order.
    pub fn local_scan(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.local.scan_prefix(prefix) {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let value = serde_json::from_slice(&v)
                .map_err(|e| self.damaged(format!("local value {key}: {e}")))?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Appends an audit entry and returns its sequence number.
    pub fn audit_append(&self, mut entry: AuditEntry) -> Result<u64, StoreError> {
        // A gap-free counter, updated atomically in the audit tree itself.
        let next = self
            .audit
            .update_and_fetch(b"seq", |old| {
                let n = old
                    .and_then(|v| v.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.io(e))?;
        let seq = next
            .and_then(|v| v.as_ref().try_into().ok())
            .map_or(1, u64::from_be_bytes);
        entry.seq = seq;
        let bytes = serde_json::to_vec(&entry).map_err(|e| self.damaged(e.to_string()))?;
        self.audit
            .insert(seq.to_be_bytes(), bytes)
            .map_err(|e| self.io(e))?;
        self.flush_now()?;
        Ok(seq)
    }

    /// Audit entries with sequence numbers above `after`, oldest first, at most `limit`.
    pub fn audit_list(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::new();
        // Entries are keyed by 8-byte sequence numbers; the counter lives under "seq".
        for kv in self.audit.range(start.to_be_bytes()..[0xffu8; 8]) {
            let (k, v) = kv.map_err(|e| self.io(e))?;
            if k.len() != 8 {
                continue;
            }
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|e| self.damaged(format!("audit entry: {e}")))?,
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.log.allocated_bytes()
    }
}

/// The least any sled-backed store of these records must do, for `kim bench ingest` to set
/// beside the pipeline: a fresh sled database in `dir` with the store's own settings, one
/// insert per id (the id → its 13-byte record-log pointer, the smallest entry that finds a
/// record by id), `ids` taken in batches of `batch` with a flush after each. Nothing else is
/// read or written. `dir` must not exist yet; it is removed afterwards.
pub fn one_insert_per_record(dir: &Path, ids: &[[u8; 32]], batch: usize) -> Result<(), StoreError> {
    if dir.exists() {
        return Err(StoreError::Io {
            dir: dir.to_path_buf(),
            cause: "exists already; the sled floor measurement needs a fresh directory".into(),
        });
    }
    let config = sled_config(dir, CACHE_BYTES_DEFAULT);
    let written = (|| -> Result<(), sled::Error> {
        let db = config.open()?;
        let tree = db.open_tree("data")?;
        let mut pointer = [0u8; log::POINTER_LEN];
        let batch = batch.max(1);
        for (n, chunk) in ids.chunks(batch).enumerate() {
            for (i, id) in chunk.iter().enumerate() {
                pointer[..8].copy_from_slice(&((n * batch + i) as u64).to_be_bytes());
                tree.insert(id, &pointer[..])?;
            }
            db.flush()?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(dir);
    written.map_err(|e| classify(dir, e))
}

/// sled's settings for a store in `dir` (also those of a compaction's copy).
fn sled_config(dir: &Path, cache_bytes: u64) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        // Every acknowledged write is flushed explicitly; a periodic flusher would only add
        // background work.
        .flush_every_ms(None)
}

/// Opens sled with `config`. sled releases its file lock only when its background threads drop
/// their last handle, so a store closed a moment ago in this process can still look locked: a
/// lock conflict is retried briefly before it is reported. sled may panic on some kinds of
/// damage; that becomes an operator-facing error.
fn open_db(config: &sled::Config, dir: &Path) -> Result<sled::Db, StoreError> {
    let mut attempts = 0;
    loop {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        match opened {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(err)) => match classify(dir, err) {
                StoreError::Locked { .. } if attempts < OPEN_LOCKED_RETRIES => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return Err(other),
            },
            Err(_) => {
                return Err(StoreError::Damaged {
                    dir: dir.to_path_buf(),
                    cause: "the storage engine failed while opening it".into(),
                });
            }
        }
    }
}

fn classify(dir: &Path, err: sled::Error) -> StoreError {
    let dir = dir.to_path_buf();
    match err {
        sled::Error::Io(io) => {
            let text = io.to_string();
            if text.contains("lock") || io.kind() == std::io::ErrorKind::WouldBlock {
                StoreError::Locked { dir }
            } else {
                StoreError::Io { dir, cause: text }
            }
        }
        sled::Error::Corruption { .. } => StoreError::Damaged {
            dir,
            cause: err.to_string(),
        },
        other => StoreError::Damaged {
            dir,
            cause: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_written_as_postcard_writes_it() -> Result<(), postcard::Error> {
        let empty = Journal {
            records: Vec::new(),
            changes: Vec::new(),
            erase: Vec::new(),
        };
        assert_eq!(empty.encode(), postcard::to_stdvec(&empty)?);
        let journal = Journal {
            records: (0..200u8).map(|i| (b'r' + i % 2, [i; 32])).collect(),
            changes: (0..300usize)
                .map(|i| {
                    let key = vec![b'i'; i % 70 + 1];
                    let value = (i % 3 != 0).then(|| vec![i as u8; i * 7 % 400]);
                    (key, value)
                })
                .chain([(Vec::new(), Some(Vec::new())), (vec![0; 20_000], None)])
                .collect(),
            erase: (0..130u8).map(|i| [i; log::POINTER_LEN]).collect(),
        };
        let encoded = journal.encode();
        assert_eq!(encoded, postcard::to_stdvec(&journal)?);
        let back: Journal = postcard::from_bytes(&encoded)?;
        assert_eq!(back.changes, journal.changes);
        Ok(())
    }

    #[test]
    fn the_sled_floor_writes_in_a_fresh_directory_only_and_removes_it() {
        let fresh = temp_dir("sled-floor");
        let ids: Vec<[u8; 32]> = (0..500u32)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
                id
            })
            .collect();
        assert!(one_insert_per_record(&fresh, &ids, 64).is_ok());
        assert!(!fresh.exists(), "the measurement's database is removed");
        // A directory that holds anything is never opened, let alone removed.
        let taken = temp_dir("sled-floor-taken");
        assert!(std::fs::create_dir_all(&taken).is_ok());
        assert!(std::fs::write(taken.join("keep"), b"data").is_ok());
        let refused = one_insert_per_record(&taken, &ids, 64);
        assert!(
            matches!(&refused, Err(StoreError::Io { dir, cause }) if *dir == taken && cause.contains("exists already")),
            "{refused:?}"
        );
        assert_eq!(
            std::fs::read(taken.join("keep")).ok(),
            Some(b"data".to_vec())
        );
        let _ = std::fs::remove_dir_all(&taken);
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kim-store-test-{name}-{}-{}",
            std::process::id(),
            crate::ingest::system_now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The held check's group hint is only ever a starting guess: a write that finds the group
    /// changed since (here: an entry removed in between) still leaves exactly the right
    /// entries, and the sync set's counts agree with a scan.
    #[test]
    fn a_stale_group_hint_neither_resurrects_nor_loses_an_entry()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("group-hint");
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
        // Three ids in one pointer group (their first 18 bits agree).
        let in_group = |last: u8| {
            let mut id = [0x5a; 32];
            id[2] = 0x40;
            id[31] = last;
            RecordId(id)
        };
        let (w, x, y) = (in_group(1), in_group(2), in_group(3));
        let mut writes = WriteSet::default();
        writes.put_record(&w, b"w");
        store.apply(writes)?;
        // The check of x reads the group as [w] and leaves that as the hint.
        assert!(!store.holds(&x, true)?);
        // w is removed before x is written: the hint [w] is stale.
        let mut writes = WriteSet::default();
        writes.remove_record(&w);
        store.apply(writes)?;
        let mut writes = WriteSet::default();
        writes.put_record(&x, b"x");
        store.apply(writes)?;
        assert!(!store.holds(&w, true)?, "the stale hint brought w back");
        assert_eq!(store.record(&x)?, Some(b"x".to_vec()));
        // y's hint, taken after x was written, is fresh: the write succeeds from it and keeps x.
        assert!(!store.holds(&y, true)?);
        let mut writes = WriteSet::default();
        writes.put_record(&y, b"y");
        store.apply(writes)?;
        assert_eq!(store.record(&x)?, Some(b"x".to_vec()));
        assert_eq!(store.record(&y)?, Some(b"y".to_vec()));
        assert!(
            store
                .group_hints
                .lock()
                .map_err(|e| e.to_string())?
                .is_empty()
        );
        let counted = store.buckets.read().map_err(|e| e.to_string())?.total();
        assert_eq!(counted, 2);
        assert_eq!(
            *store.buckets.read().map_err(|e| e.to_string())?,
            sync_set::Buckets::scan(&store)?
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_missing_store_is_a_clear_error() {
        let dir = temp_dir("missing");
        let err = Store::open(&dir, CACHE_BYTES_DEFAULT, false).map(|_| ());
        assert!(matches!(err, Err(StoreError::Missing { .. })), "{err:?}");
        let text = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("kim init") && text.contains(&dir.display().to_string()));
    }

    #[test]
    fn a_store_open_elsewhere_is_reported_as_locked() -> Result<(), StoreError> {
        let dir = temp_dir("locked");
        let first = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
        let second = Store::open(&dir, CACHE_BYTES_DEFAULT, false).map(|_| ());
        assert!(
            matches!(second, Err(StoreError::Locked { .. })),
            "{second:?}"
        );
        drop(first);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_damaged_store_is_an_error_not_a_panic() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("damaged");
        {
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            store.set_meta("probe", b"value")?;
            store.db.flush()?;
        }
        // Overwrite the database file with garbage, as a failing disk might.
        let db = dir.join("db");
        let len = std::fs::metadata(&db)?.len() as usize;
        std::fs::write(&db, vec![0xA5u8; len.max(4096)])?;
        let result = Store::open(&dir, CACHE_BYTES_DEFAULT, false);
        match result {
            Err(StoreError::Damaged { .. }) | Err(StoreError::Io { .. }) => {}
            // sled may also recover to an empty state; then the data is gone but nothing
            // panicked, and the node resyncs from peers.
            Ok(store) => assert!(store.meta("probe")?.is_none_or(|v| v == b"value")),
            Err(other) => panic!("unexpected error {other}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_store_from_a_newer_kim_is_refused() -> Result<(), StoreError> {
        let dir = temp_dir("newer");
        {
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            store
                .data
                .insert(META_FORMAT, &(STORE_FORMAT_VERSION + 1).to_be_bytes())
                .map_err(|e| store.io(e))?;
            store.db.flush().map_err(|e| store.io(e))?;
        }
        let result = Store::open(&dir, CACHE_BYTES_DEFAULT, false).map(|_| ());
        assert!(
            matches!(result, Err(StoreError::TooNew { found, .. }) if found == STORE_FORMAT_VERSION + 1)
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Writes what `apply` would have written of `writes` before a crash: the journal, the
    /// first `records` new records and the first `changes` other changes. Returns the number
    /// of journal chunks.
    fn apply_cut_short(store: &Store, writes: WriteSet, records: usize, changes: usize) -> usize {
        apply_cut_short_at(store, writes, usize::MAX, records, changes)
    }

    /// As [`apply_cut_short`], with only the first `chunks` journal chunks written if the
    /// journal has more.
    fn apply_cut_short_at(
        store: &Store,
        writes: WriteSet,
        chunks: usize,
        records: usize,
        changes: usize,
    ) -> usize {
        let (journal, new_records) = writes.into_journal();
        let encoded = journal.encode();
        let total = encoded.chunks(JOURNAL_CHUNK_BYTES).count();
        for (i, chunk) in encoded.chunks(JOURNAL_CHUNK_BYTES).enumerate().take(chunks) {
            assert!(store.journal.insert(journal_key(i, total), chunk).is_ok());
        }
        if chunks < total {
            assert!(store.db.flush().is_ok());
            return total;
        }
        let pointers = store
            .log
            .append(new_records.iter().map(|((_, id), bytes)| (id, &bytes[..])));
        assert!(pointers.is_ok());
        let pointers = pointers.unwrap_or_default();
        assert!(
            store
                .data
                .insert(META_LOG_END, &store.log.end().to_be_bytes())
                .is_ok()
        );
        for (((tag, id), _), pointer) in new_records.iter().zip(pointers).take(records) {
            assert!(
                store
                    .set_pointer(*tag, &RecordId(*id), Some(&pointer.encode()))
                    .is_ok()
            );
        }
        for change in journal.changes.iter().take(changes) {
            assert!(
                store
                    .write_changes(std::slice::from_ref(change), None)
                    .is_ok()
            );
        }
        assert!(store.db.flush().is_ok());
        encoded.chunks(JOURNAL_CHUNK_BYTES).count()
    }

    /// A record id as records have them: the hash of the bytes.
    fn id_of(bytes: &[u8]) -> RecordId {
        RecordId(*blake3::hash(bytes).as_bytes())
    }

    /// Two records, an item, and the digest counting both: one write set.
    fn two_records(digest: &mut StateDigest) -> (WriteSet, [RecordId; 2]) {
        let big = vec![7u8; 3 * JOURNAL_CHUNK_BYTES];
        let ids = [id_of(&big), id_of(b"second")];
        let mut writes = WriteSet::default();
        // Bigger than a journal chunk: the journal holds only its key.
        writes.put_record(&ids[0], &big);
        writes.put_record(&ids[1], b"second");
        writes.mark_membership(&ids[1]);
        digest.add(&ids[0]);
        digest.add(&ids[1]);
        writes.set_digest(digest);
        (writes, ids)
    }

    #[tokio::test]
    async fn a_write_set_cut_short_by_a_crash_is_undone_or_finished_at_open()
    -> Result<(), StoreError> {
        // Cut short while the new records were written: undone, as if it never happened.
        let dir = temp_dir("journal-undo");
        {
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            let (writes, _) = two_records(&mut StateDigest::default());
            assert_eq!(apply_cut_short(&store, writes, 1, 0), 1);
        }
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_eq!(store.record_ids().count(), 0);
        assert_eq!(store.digest()?.count(), 0);
        assert!(store.membership_records()?.is_empty());
        assert_eq!(store.journal.len(), 0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);

        // Cut short after the records, during the other changes: finished at open.
        let dir = temp_dir("journal-finish");
        let mut digest = StateDigest::default();
        let ids = {
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            let (writes, ids) = two_records(&mut digest);
            assert_eq!(apply_cut_short(&store, writes, 2, 1), 1);
            ids
        };
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_eq!(store.record(&ids[1])?, Some(b"second".to_vec()));
        assert_eq!(
            store.record(&ids[0])?.map(|b| b.len()),
            Some(3 * JOURNAL_CHUNK_BYTES)
        );
        assert_eq!(store.digest()?, digest);
        assert_eq!(store.membership_records()?, vec![b"second".to_vec()]);
        assert_eq!(store.journal.len(), 0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn a_journal_cut_short_while_written_is_discarded_at_open() -> Result<(), StoreError> {
        let dir = temp_dir("journal-unsealed");
        {
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            let (mut writes, _) = two_records(&mut StateDigest::default());
            // Enough other changes for a journal of several chunks.
            for i in 0..4000u32 {
                let mut id = [9u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                writes.mark_membership(&RecordId(id));
            }
            assert!(apply_cut_short_at(&store, writes, 1, 0, 0) > 1);
        }
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_eq!(store.journal.len(), 0);
        assert_eq!(store.record_ids().count(), 0);
        assert!(store.membership_records()?.is_empty());
        assert_eq!(store.digest()?.count(), 0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn the_last_change_to_a_key_wins_and_no_journal_is_left() -> Result<(), StoreError> {
        let dir = temp_dir("journal-last");
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
        let (kept, dropped) = (id_of(b"kept"), id_of(b"superseded in the same write set"));
        let mut writes = WriteSet::default();
        writes.put_record(&dropped, b"superseded in the same write set");
        writes.put_record(&kept, b"kept");
        writes.remove_record(&dropped);
        store.apply(writes)?;
        assert_eq!(store.record(&kept)?, Some(b"kept".to_vec()));
        assert_eq!(store.record(&dropped)?, None);
        assert_eq!(store.journal.len(), 0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn removed_bytes_stay_until_the_removal_is_on_disk_and_open_finishes_the_erasure()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("erase-later");
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
        let secret = log::tests::noise(3_000);
        let (old, new) = (id_of(&secret), id_of(b"revision 2"));
        let mut writes = WriteSet::default();
        writes.put_record(&old, &secret);
        store.apply(writes)?;
        store.flush().await?;
        let log_bytes = || std::fs::read(dir.join(RECORD_LOG));
        let mut writes = WriteSet::default();
        writes.put_record(&new, b"revision 2");
        writes.remove_record(&old);
        store.apply(writes)?;
        // Applied but not flushed: a crash now may lose the write set, so the acknowledged
        // revision's bytes must still be there, marked for erasure.
        assert!(log_bytes()?.windows(secret.len()).any(|w| w == secret));
        assert_eq!(store.data.scan_prefix([b'z']).count(), 1);
        // sled gets the write set to disk, then the process dies before erasing.
        store.db.flush()?;
        drop(store);
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_eq!(store.record(&old)?, None);
        assert_eq!(store.record(&new)?, Some(b"revision 2".to_vec()));
        assert!(!log_bytes()?.windows(42).any(|w| w == &secret[..42]));
        assert_eq!(store.data.scan_prefix([b'z']).count(), 0, "marks dropped");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn a_removed_record_is_erased_from_the_disk() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("erase");
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
        let secret = log::tests::noise(4_200);
        let (old, new) = (id_of(&secret), id_of(b"tombstone"));
        let mut writes = WriteSet::default();
        writes.put_record(&old, &secret);
        store.apply(writes)?;
        store.flush().await?;
        let log_bytes = || std::fs::read(dir.join(RECORD_LOG));
        assert!(log_bytes()?.windows(secret.len()).any(|w| w == secret));
        // Superseded: the new revision comes in, the old one's bytes go.
        let mut writes = WriteSet::default();
        writes.put_record(&new, b"tombstone");
        writes.remove_record(&old);
        store.apply(writes)?;
        store.flush().await?;
        assert_eq!(store.record(&old)?, None);
        assert_eq!(store.record(&new)?, Some(b"tombstone".to_vec()));
        assert!(!log_bytes()?.windows(42).any(|w| w == &secret[..42]));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn a_store_of_format_1_moves_its_records_into_the_log() -> Result<(), StoreError> {
        let dir = temp_dir("migrate");
        let bytes: Vec<Vec<u8>> = (0..25_000u32)
            .map(|i| format!("record bytes {i}").into_bytes())
            .collect();
        let ids: Vec<RecordId> = bytes.iter().map(|b| id_of(b)).collect();
        let by_id: std::collections::HashMap<RecordId, Vec<u8>> =
            ids.iter().copied().zip(bytes.iter().cloned()).collect();
        let bytes_of = |id: &RecordId| by_id.get(id).cloned().unwrap_or_default();
        {
            // What kim wrote before the record log: bytes as sled values, format 1.
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            for id in &ids {
                assert!(store.data.insert(prefixed(b'r', id), bytes_of(id)).is_ok());
            }
            assert!(
                store
                    .data
                    .insert(prefixed(b'n', &id_of(b"direct")), b"direct".to_vec())
                    .is_ok()
            );
            assert!(store.data.insert(META_FORMAT, &1u32.to_be_bytes()).is_ok());
            store.flush_now()?;
        }
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_eq!(store.format()?, STORE_FORMAT_VERSION);
        assert_eq!(store.record_ids().count(), ids.len());
        for id in ids.iter().step_by(997) {
            assert_eq!(store.record(id)?, Some(bytes_of(id)));
        }
        assert_eq!(
            store.direct_record(&id_of(b"direct"))?,
            Some(b"direct".to_vec())
        );
        let every = store.records().collect::<Result<Vec<_>, _>>()?;
        assert!(every.iter().all(|(id, bytes)| *bytes == bytes_of(id)));
        assert!(
            store
                .data
                .scan_prefix([b'r'])
                .flatten()
                .all(|(_, v)| log::Pointer::decode(&v).is_some())
        );
        drop(store);
        // The record log is part of the store: without it, opening says so.
        assert!(std::fs::remove_file(dir.join(RECORD_LOG)).is_ok());
        let missing = Store::open(&dir, CACHE_BYTES_DEFAULT, false).map(|_| ());
        assert!(
            matches!(&missing, Err(StoreError::Damaged { cause, .. }) if cause.contains("record log")),
            "{missing:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Format 2 → 3: every item entry is rewritten without what its key says and reads back
    /// the same; an upgrade cut short (some entries rewritten) says format 3 meanwhile, so an
    /// older binary refuses it, and goes on at the next open. Then format 3 → 4: the kind
    /// index is dropped and withdrawn items are indexed, also when cut short.
    #[test]
    fn a_store_of_format_2_shrinks_its_item_entries() -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("format-3");
        let entries: Vec<ItemEntry> = (0..3_000u64)
            .map(|i| {
                let mut entry = item_won_by(id_of(&i.to_be_bytes()), &format!("offer-{i}"), i);
                entry.region = PublicKey([(i % 7) as u8; 32]);
                // Some authors are not the region's own key (after a key rotation).
                entry.author = if i % 5 == 0 {
                    PublicKey([0xAA; 32])
                } else {
                    entry.region
                };
                entry.kind = if i % 2 == 0 {
                    Kind::Cooperation
                } else {
                    Kind::Knowledge
                };
                entry.revision = i % 3 + 1;
                entry.tombstone = i % 11 == 0;
                entry.expires_at_ms = (i % 4 == 0).then_some(1_800_000_000_000 + i);
                entry
            })
            .collect();
        let item_bytes = |store: &Store| -> usize {
            store
                .data
                .scan_prefix([b'i'])
                .flatten()
                .map(|(_, v)| v.len())
                .sum()
        };
        let check = |store: &Store| -> Result<(), Box<dyn std::error::Error>> {
            assert_eq!(store.format()?, STORE_FORMAT_VERSION);
            assert!(!store.data.contains_key(META_SHRINKING)?);
            assert!(!store.data.contains_key(META_UNINDEXING)?);
            assert_eq!(
                store.data.scan_prefix([b'k']).count(),
                0,
                "the kind index is gone"
            );
            let read = store.item_entries().collect::<Result<Vec<_>, _>>()?;
            assert_eq!(read.len(), entries.len());
            for entry in &entries {
                assert_eq!(
                    store.item(&entry.region, entry.kind, &entry.key)?.as_ref(),
                    Some(entry)
                );
            }
            // Listing by kind, withdrawn items and by region read them too.
            let knowledge = store
                .kind_entries(Kind::Knowledge)
                .collect::<Result<Vec<_>, _>>()?;
            assert_eq!(knowledge.len(), entries.len() / 2);
            assert!(knowledge.iter().all(|e| e.kind == Kind::Knowledge));
            for kind in [Kind::Knowledge, Kind::Cooperation] {
                let mut expected: Vec<(Position, ItemEntry)> = entries
                    .iter()
                    .filter(|e| e.kind == kind && e.tombstone)
                    .map(|e| (Position::of(e), e.clone()))
                    .collect();
                expected.sort_by_key(|e| std::cmp::Reverse(e.0));
                assert_eq!(store.list_withdrawn(kind, None, 10_000)?, (expected, None));
            }
            let region = PublicKey([3; 32]);
            let (mine, _) =
                store.list_region_items(Kind::Cooperation, &region, None, 10_000, |_| true)?;
            assert!(!mine.is_empty() && mine.iter().all(|e| e.region == region));
            Ok(())
        };
        // The indexes format 3 kept: a `k` entry for every item, no `w` entries.
        let format_3_indexes = |store: &Store, step: usize| -> Result<(), sled::Error> {
            for kv in store.data.scan_prefix([b'w']) {
                store.data.remove(kv?.0)?;
            }
            for entry in entries.iter().step_by(step) {
                let mut key = vec![b'k', entry.kind as u8];
                key.extend_from_slice(&Position::of(entry).0);
                store
                    .data
                    .insert(key, item_key(&entry.region, entry.kind, &entry.key))?;
            }
            Ok(())
        };
        // Writes every entry as format 2 did (the whole entry as the value), or every other
        // one, as an upgrade cut short by a crash leaves them.
        let as_format_2 = |store: &Store, step: usize| -> Result<(), Box<dyn std::error::Error>> {
            for entry in entries.iter().step_by(step) {
                let key = item_key(&entry.region, entry.kind, &entry.key);
                store.data.insert(key, postcard::to_stdvec(entry)?)?;
            }
            Ok(())
        };
        let v2_bytes = {
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            let mut writes = WriteSet::default();
            for entry in &entries {
                writes.set_item(entry, None);
            }
            store.apply(writes)?;
            as_format_2(&store, 1)?;
            format_3_indexes(&store, 1)?;
            store.data.insert(META_FORMAT, &2u32.to_be_bytes())?;
            store.flush_now()?;
            item_bytes(&store)
        };
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        check(&store)?;
        let v3_bytes = item_bytes(&store);
        assert!(
            v3_bytes * 10 < v2_bytes * 5,
            "item values take {v3_bytes} bytes after the upgrade, {v2_bytes} before"
        );
        // Cut short: half the entries still as format 2, the upgrade marked under way.
        as_format_2(&store, 2)?;
        format_3_indexes(&store, 1)?;
        store.data.insert(META_SHRINKING, &[])?;
        store.data.insert(META_FORMAT, &3u32.to_be_bytes())?;
        store.flush_now()?;
        drop(store);
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        check(&store)?;
        assert_eq!(item_bytes(&store), v3_bytes);
        // Format 3 → 4 cut short: the format says 4 under its marker, some `k` entries are
        // left and no withdrawn item is indexed yet.
        format_3_indexes(&store, 3)?;
        store.data.insert(META_UNINDEXING, &[])?;
        store.data.insert(META_FORMAT, &4u32.to_be_bytes())?;
        store.flush_now()?;
        drop(store);
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        check(&store)?;
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    fn item_won_by(id: RecordId, key: &str, created_at_ms: u64) -> ItemEntry {
        ItemEntry {
            id,
            region: PublicKey([3; 32]),
            author: PublicKey([3; 32]),
            kind: Kind::Cooperation,
            key: key.into(),
            revision: 1,
            tombstone: false,
            created_at_ms,
            expires_at_ms: None,
        }
    }

    #[test]
    fn an_entry_read_before_its_item_changed_still_finds_the_current_winner()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("winner-record");
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
        let (first, second) = (id_of(b"revision 1"), id_of(b"revision 2"));
        let old = item_won_by(first, "offer", 1);
        let mut writes = WriteSet::default();
        writes.put_record(&first, b"revision 1");
        writes.set_item(&old, None);
        store.apply(writes)?;
        // A reader took `old` from the index; then a revision replaced it and removed its record.
        let new = ItemEntry {
            id: second,
            revision: 2,
            ..old.clone()
        };
        let mut writes = WriteSet::default();
        writes.put_record(&second, b"revision 2");
        writes.remove_record(&first);
        writes.set_item(&new, Some(&old));
        store.apply(writes)?;
        assert_eq!(store.record(&first)?, None);
        assert_eq!(
            store.winner_record(&old)?,
            Some((new.clone(), b"revision 2".to_vec()))
        );
        // The item gone altogether (its region purged): nothing, not damage.
        let mut writes = WriteSet::default();
        writes.remove_record(&second);
        writes.remove_item(&new);
        store.apply(writes)?;
        assert_eq!(store.winner_record(&old)?, None);
        // An entry that still names a missing record is damage.
        let mut writes = WriteSet::default();
        writes.set_item(&old, None);
        store.apply(writes)?;
        assert!(
            matches!(store.winner_record(&old), Err(StoreError::Damaged { cause, .. }) if cause.contains("is missing")),
            "a winner without its record must be reported"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn records_a_power_failure_kept_from_the_log_are_forgotten_consistently()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = temp_dir("power-loss");
        let kept = id_of(b"flushed before the power failure");
        let (lost, lost_member) = (id_of(b"applied, never flushed"), id_of(b"membership"));
        let mut digest = StateDigest::default();
        let flushed_digest = {
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            let mut writes = WriteSet::default();
            writes.put_record(&kept, b"flushed before the power failure");
            writes.set_item(&item_won_by(kept, "kept", 1), None);
            digest.add(&kept);
            writes.set_digest(&digest);
            store.apply(writes)?;
            store.flush().await?;
            let flushed = digest;

            let mut writes = WriteSet::default();
            writes.put_record(&lost, b"applied, never flushed");
            writes.set_item(&item_won_by(lost, "lost", 2), None);
            writes.put_record(&lost_member, b"membership");
            writes.mark_membership(&lost_member);
            digest.add(&lost);
            digest.add(&lost_member);
            writes.set_digest(&digest);
            store.apply(writes)?;
            // sled's writes reached the disk (its own IO), the record log's tail did not.
            store.flush_now()?;
            flushed
        };
        let log = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(RECORD_LOG))?;
        let synced = {
            // sled's background thread may hold the lock a moment after the store is dropped:
            // the raw open here retries as Store::open does.
            let store = open_db(&sled::Config::new().path(&dir), &dir)?;
            let data = store.open_tree("data")?;
            let value = data.get(META_LOG_SYNCED)?.ok_or("no synced length")?;
            u64::from_be_bytes(value.as_ref().try_into()?)
        };
        log.set_len(synced)?;
        drop(log);

        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_eq!(
            store.record(&kept)?,
            Some(b"flushed before the power failure".to_vec())
        );
        assert_eq!(store.record(&lost)?, None);
        assert!(!store.holds(&lost, true)?, "sync must fetch it again");
        assert!(store.membership_records()?.is_empty());
        assert_eq!(store.digest()?, flushed_digest);
        let region = PublicKey([3; 32]);
        assert!(store.item(&region, Kind::Cooperation, "lost")?.is_none());
        assert!(store.item(&region, Kind::Cooperation, "kept")?.is_some());
        let listed = store
            .kind_entries(Kind::Cooperation)
            .collect::<Result<Vec<_>, _>>()?;
        assert_eq!(listed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![kept]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// A store written in format 5's layout (one `r` entry per record), with 3,000 records
    /// crowded into few buckets and one record removed again; returns the ids it holds.
    async fn a_format_5_store(dir: &Path) -> Result<Vec<RecordId>, StoreError> {
        let store = Store::open(dir, CACHE_BYTES_DEFAULT, true)?;
        store
            .grouped
            .store(false, std::sync::atomic::Ordering::Release);
        let (mut held, mut digest) = three_thousand_records(&store, "record")?;
        let gone = held.remove(17);
        let mut writes = WriteSet::default();
        writes.remove_record(&gone);
        digest.remove(&gone);
        writes.set_digest(&digest);
        store.apply(writes)?;
        store
            .data
            .insert(META_FORMAT, &5u32.to_be_bytes())
            .map_err(|e| store.io(e))?;
        store.flush().await?;
        assert_eq!(store.data.scan_prefix([b'r']).count(), held.len());
        held.sort();
        Ok(held)
    }

    fn assert_grouped_holding(store: &Store, held: &[RecordId]) -> Result<(), StoreError> {
        assert_eq!(store.format()?, STORE_FORMAT_VERSION);
        assert_eq!(
            store.data.scan_prefix([b'r']).count(),
            0,
            "no `r` entry left"
        );
        assert!(
            !store
                .data
                .contains_key(META_GROUPING)
                .map_err(|e| store.io(e))?
        );
        assert_eq!(store.record_ids().collect::<Result<Vec<_>, _>>()?, held);
        for id in held.iter().step_by(97) {
            assert!(store.holds(id, true)?);
            assert!(store.record(id)?.is_some_and(|bytes| id_of(&bytes) == *id));
        }
        assert!(!store.holds(&id_of(b"never stored"), true)?);
        assert_eq!(
            *store.buckets.read().unwrap_or_else(|p| p.into_inner()),
            sync_set::Buckets::scan(store)?
        );
        Ok(())
    }

    /// Stores 3,000 records named `{label} {batch} {i}` in three write sets (ids as they
    /// come; a few share a bucket with their neighbours); returns their ids and the digest.
    fn three_thousand_records(
        store: &Store,
        label: &str,
    ) -> Result<(Vec<RecordId>, StateDigest), StoreError> {
        let mut digest = StateDigest::default();
        let mut held = Vec::new();
        for batch in 0..3u32 {
            let mut writes = WriteSet::default();
            for i in 0..1000u32 {
                let bytes = format!("{label} {batch} {i}").into_bytes();
                let id = id_of(&bytes);
                writes.put_record(&id, &bytes);
                digest.add(&id);
                held.push(id);
            }
            writes.set_digest(&digest);
            store.apply(writes)?;
        }
        Ok((held, digest))
    }

    /// A store of 3,000 records, 300 of them removed again, and local data: what a
    /// compaction must carry over. Returns the held ids and every entry of every tree.
    async fn a_store_to_compact(dir: &Path) -> Result<(Vec<RecordId>, Entries), StoreError> {
        let store = Store::open(dir, CACHE_BYTES_DEFAULT, true)?;
        let (mut held, mut digest) = three_thousand_records(&store, "compacted record")?;
        let mut writes = WriteSet::default();
        for gone in held.drain(100..400) {
            writes.remove_record(&gone);
            digest.remove(&gone);
        }
        writes.set_digest(&digest);
        store.apply(writes)?;
        store
            .local
            .insert(b"draft/one", b"local only".as_slice())
            .map_err(|e| store.io(e))?;
        store.close().await?;
        held.sort();
        let entries = all_entries(&store)?;
        Ok((held, entries))
    }

    type Entries = Vec<(Vec<u8>, Vec<(sled::IVec, sled::IVec)>)>;

    fn all_entries(store: &Store) -> Result<Entries, StoreError> {
        let mut names = store.db.tree_names();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let tree = store.db.open_tree(&name).map_err(|e| store.io(e))?;
                let kvs = tree.iter().collect::<Result<Vec<_>, _>>();
                Ok((name.to_vec(), kvs.map_err(|e| store.io(e))?))
            })
            .collect()
    }

    fn assert_holds_exactly(
        dir: &Path,
        held: &[RecordId],
        entries: &Entries,
    ) -> Result<(), StoreError> {
        let store = Store::open(dir, CACHE_BYTES_DEFAULT, false)?;
        assert_eq!(&all_entries(&store)?, entries);
        assert_eq!(store.digest()?.count(), held.len() as u64);
        for id in held {
            assert!(store.record(id)?.is_some(), "record {id} readable");
        }
        Ok(())
    }

    /// A test's own file operations failing, as the store reports I/O errors.
    fn io_err(dir: &Path, e: impl std::fmt::Display) -> StoreError {
        compact::io_error(dir, "test file operation", e)
    }

    fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy_tree(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), target)?;
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn compaction_keeps_every_entry_and_record() -> Result<(), StoreError> {
        let root = temp_dir("compact");
        let dir = root.join("store");
        let (held, entries) = a_store_to_compact(&dir).await?;
        let done = Store::compact(&dir, CACHE_BYTES_DEFAULT, |_| {}).await?;
        assert_eq!(
            done.entries,
            entries.iter().map(|(_, kv)| kv.len() as u64).sum::<u64>()
        );
        assert!(done.bytes_after > 0 && done.bytes_before > 0, "{done:?}");
        assert_holds_exactly(&dir, &held, &entries)?;
        // Nothing left beside it.
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .map_err(|e| io_err(&root, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["store"]);
        assert!(!dir.join(compact::COMPLETE).exists());
        // A store open elsewhere is not touched.
        let open = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        let locked = Store::compact(&dir, CACHE_BYTES_DEFAULT, |_| {}).await;
        assert!(
            matches!(locked, Err(StoreError::Locked { .. })),
            "{locked:?}"
        );
        drop(open);
        assert_holds_exactly(&dir, &held, &entries)?;
        let _ = std::fs::remove_dir_all(&root);
        Ok(())
    }

    #[tokio::test]
    async fn a_compaction_cut_short_leaves_one_whole_store_at_the_next_open()
    -> Result<(), StoreError> {
        let root = temp_dir("compact-cut");
        let dir = root.join("store");
        let copy = root.join("store.compacting");
        let old = root.join("store.before-compaction");
        let (held, entries) = a_store_to_compact(&dir).await?;
        let cp = |from: &Path, to: &Path| copy_tree(from, to).map_err(|e| io_err(to, e));
        // Stopped while copying: the copy goes, the store stays.
        cp(&dir, &copy)?;
        assert_holds_exactly(&dir, &held, &entries)?;
        assert!(!copy.exists());
        // Stopped after moving the store aside, the copy unfinished: the store comes back.
        cp(&dir, &copy)?;
        std::fs::rename(&dir, &old).map_err(|e| io_err(&dir, e))?;
        assert_holds_exactly(&dir, &held, &entries)?;
        assert!(!copy.exists() && !old.exists());
        // Stopped between the renames with the copy complete: the copy is used.
        cp(&dir, &copy)?;
        std::fs::write(copy.join(compact::COMPLETE), b"").map_err(|e| io_err(&copy, e))?;
        std::fs::rename(&dir, &old).map_err(|e| io_err(&dir, e))?;
        assert_holds_exactly(&dir, &held, &entries)?;
        assert!(!copy.exists() && !old.exists());
        assert!(!dir.join(compact::COMPLETE).exists());
        // Stopped after the renames: the old store is deleted.
        cp(&dir, &old)?;
        std::fs::write(dir.join(compact::COMPLETE), b"").map_err(|e| io_err(&dir, e))?;
        assert_holds_exactly(&dir, &held, &entries)?;
        assert!(!old.exists() && !dir.join(compact::COMPLETE).exists());
        // While a compaction holds its lock nothing opens the store; a lock file left by one
        // that stopped is taken, and removed, by the next open.
        let lock_file = root.join("store.compaction-lock");
        let lock = std::fs::File::create(&lock_file).map_err(|e| io_err(&root, e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| io_err(&root, e))?;
        let refused = Store::open(&dir, CACHE_BYTES_DEFAULT, false).map(drop);
        assert!(
            matches!(refused, Err(StoreError::Locked { .. })),
            "{refused:?}"
        );
        let refused = Store::compact(&dir, CACHE_BYTES_DEFAULT, |_| {}).await;
        assert!(
            matches!(refused, Err(StoreError::Locked { .. })),
            "{refused:?}"
        );
        drop(lock);
        assert_holds_exactly(&dir, &held, &entries)?;
        assert!(!lock_file.exists());
        let _ = std::fs::remove_dir_all(&root);
        Ok(())
    }

    #[tokio::test]
    async fn a_store_of_format_5_groups_its_record_pointers() -> Result<(), StoreError> {
        let dir = temp_dir("format-5");
        let held = a_format_5_store(&dir).await?;
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_grouped_holding(&store, &held)?;
        // Written and removed as usual afterwards.
        let mut digest = store.digest()?;
        let mut writes = WriteSet::default();
        let new = id_of(b"after the upgrade");
        writes.put_record(&new, b"after the upgrade");
        writes.remove_record(&held[0]);
        digest.add(&new);
        digest.remove(&held[0]);
        writes.set_digest(&digest);
        store.apply(writes)?;
        store.close().await?;
        drop(store);
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        let mut now: Vec<RecordId> = held[1..].to_vec();
        now.push(new);
        now.sort();
        assert_grouped_holding(&store, &now)?;
        assert_eq!(store.record(&held[0])?, None);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn an_upgrade_to_format_6_cut_short_goes_on_at_the_next_open() -> Result<(), StoreError> {
        let dir = temp_dir("format-5-cut");
        let held = a_format_5_store(&dir).await?;
        {
            // As the upgrade leaves it part way: the format says 6 beside the marker, some
            // buckets are written and some of their `r` entries are still there.
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
            let half: Vec<(sled::IVec, sled::IVec)> = store
                .pointers_from(0)
                .take(held.len() / 2)
                .map(|entry| {
                    entry.map(|(id, pointer)| {
                        (
                            prefixed(b'r', &RecordId(id)).to_vec().into(),
                            pointer.to_vec().into(),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            for (key, value) in &half {
                store.data.insert(key, value).map_err(|e| store.io(e))?;
            }
            // One moved entry's `r` entry already removed, another not moved at all.
            if let Some((key, _)) = half.first() {
                store.data.remove(key).map_err(|e| store.io(e))?;
            }
            store
                .data
                .insert(META_GROUPING, &[])
                .map_err(|e| store.io(e))?;
            store.flush_now()?;
        }
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_grouped_holding(&store, &held)?;
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn every_region_owning_items_is_found_once() -> Result<(), StoreError> {
        let dir = temp_dir("item-regions");
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
        assert!(store.item_regions()?.is_empty());
        let mut writes = WriteSet::default();
        // Regions 0x00…, 0x07… and 0xff… with several items of several kinds each.
        for (n, region) in [[0u8; 32], [7; 32], [0xff; 32]].into_iter().enumerate() {
            for (i, kind) in [Kind::Cooperation, Kind::Knowledge, Kind::Outcome]
                .into_iter()
                .enumerate()
            {
                let mut entry = item_won_by(id_of(&[n as u8, i as u8]), &format!("k{i}"), 1);
                entry.region = PublicKey(region);
                entry.kind = kind;
                writes.set_item(&entry, None);
            }
        }
        store.apply(writes)?;
        assert_eq!(
            store.item_regions()?,
            vec![
                PublicKey([0; 32]),
                PublicKey([7; 32]),
                PublicKey([0xff; 32])
            ]
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn applied_and_flushed_writes_survive_a_reopen() -> Result<(), StoreError> {
        let dir = temp_dir("reopen");
        let id = id_of(b"bytes");
        {
            let store = Store::open(&dir, CACHE_BYTES_DEFAULT, true)?;
            let mut writes = WriteSet::default();
            writes.put_record(&id, b"bytes");
            let mut digest = StateDigest::default();
            digest.add(&id);
            writes.set_digest(&digest);
            store.apply(writes)?;
            store.flush().await?;
        }
        let store = Store::open(&dir, CACHE_BYTES_DEFAULT, false)?;
        assert_eq!(store.record(&id)?, Some(b"bytes".to_vec()));
        assert_eq!(store.digest()?.count(), 1);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
