//! The sync set's record pointers: record id → where the record log holds its bytes.
//!
//! From store format 6 they are grouped: one sled entry per group of ids sharing their first
//! 18 bits (`R` id[0] id[1] id[2]&0xc0 → the group's entries, each the id's last 30 bytes and
//! its 13-byte pointer, sorted by id), instead of one `r` id entry per record. Four groups make
//! one bucket of the sync set's table (the first two bytes).
//!
//! Why: sled keeps, for every page of its tree, a page-table entry in memory with the log
//! positions of the page's base and deltas (a few hundred bytes), and its leaves hold at most
//! 16 entries. A sled program storing a million ids with an item entry each (`sledx`, see the
//! session 13 note) opened with 97 MiB of heap with one pointer entry per id, 64 MiB with
//! 262,144 groups and 53 MiB with 65,536, at 733, 833 and 1110 MB of disk: a group is
//! rewritten whole on every write (about 4 entries, 170 bytes, at a million records), and
//! sled's log grows with the old versions until it cleans them. 18 bits is the balance: most
//! of the memory for an eighth more of sled's disk. Reads cost one tree walk either way.
//!
//! A store of an older format keeps `r` entries until [`Store::group_pointers`] moves them;
//! until then every function here reads and writes them as they are.

use std::sync::atomic::Ordering;

use kim_protocol::RecordId;
use kim_protocol::bytes::to_hex;

use super::log::POINTER_LEN;
use super::{Store, StoreError, prefixed};

/// Key prefix of a group of pointers.
pub(super) const GROUP_TAG: u8 = b'R';
/// Key prefix of one record's pointer in stores of format 5 and older, and of the logical key
/// that write sets and journals name sync-set records by.
pub(super) const SINGLE_TAG: u8 = b'r';
/// The part of an id its group's key does not say in whole bytes (the group key keeps the
/// top two bits of the third byte, so the tail repeats them).
const TAIL: usize = 30;
/// One entry of a group: id tail and pointer.
const ENTRY: usize = TAIL + POINTER_LEN;
/// Buckets of the sync set's table: the id's first two bytes, four groups each.
pub(super) const BUCKETS: usize = 1 << 16;

/// A record pointer as stored.
pub(super) type Pointer = [u8; POINTER_LEN];

/// Record pointers in id order, as read.
pub(super) type PointerIter<'a> =
    Box<dyn Iterator<Item = Result<([u8; 32], Pointer), StoreError>> + 'a>;

/// At most this many group hints are kept; beyond, they are dropped all at once (a hint only
/// saves a read, and records checked but never written leave theirs behind).
const GROUP_HINTS_MAX: usize = 4096;

/// Pointer groups as [`Store::holds`] read them for records it did not find: the write that
/// stores such a record next changes that group, and starts its compare-and-swap from the
/// value read then instead of reading it again. A hint that is stale by then (another write
/// changed the group) fails the swap, which then reads the group as it is: a hint saves one
/// sled read per new record and can never make a write lose or keep a wrong entry.
pub(super) type GroupHints = std::collections::HashMap<[u8; 4], Option<sled::IVec>>;

/// The bucket an id falls in.
pub(super) fn bucket_of(id: &[u8; 32]) -> usize {
    usize::from(u16::from_be_bytes([id[0], id[1]]))
}

/// The key of the group `id` belongs to.
fn group_key(id: &[u8; 32]) -> [u8; 4] {
    [GROUP_TAG, id[0], id[1], id[2] & 0xc0]
}

/// The entries of the group under `key`: (id, pointer), ascending.
fn entries(key: &[u8], value: &[u8]) -> Option<Vec<([u8; 32], Pointer)>> {
    let (&[tag, hi, lo, top], true) = (
        <&[u8; 4]>::try_from(key).ok()?,
        value.len().is_multiple_of(ENTRY),
    ) else {
        return None;
    };
    if tag != GROUP_TAG || value.chunks_exact(ENTRY).any(|e| e[0] & 0xc0 != top) {
        return None;
    }
    value
        .chunks_exact(ENTRY)
        .map(|entry| {
            let mut id = [0u8; 32];
            id[0] = hi;
            id[1] = lo;
            id[2..].copy_from_slice(&entry[..TAIL]);
            Some((id, entry[TAIL..].try_into().ok()?))
        })
        .collect()
}

/// Where `id`'s entry is (`Ok`) or would go (`Err`) in a well-formed group value.
fn position(value: &[u8], id: &[u8; 32]) -> Result<usize, usize> {
    let tail = &id[2..];
    let count = value.len() / ENTRY;
    let (mut low, mut high) = (0, count);
    while low < high {
        let middle = (low + high) / 2;
        let at = middle * ENTRY;
        match value[at..at + TAIL].cmp(tail) {
            std::cmp::Ordering::Less => low = middle + 1,
            std::cmp::Ordering::Greater => high = middle,
            std::cmp::Ordering::Equal => return Ok(at),
        }
    }
    Err(low * ENTRY)
}

impl Store {
    fn grouped(&self) -> bool {
        self.grouped.load(Ordering::Acquire)
    }

    fn bad_group(&self, key: &[u8]) -> StoreError {
        self.damaged(format!("record pointer group {} is malformed", to_hex(key)))
    }

    pub(super) fn no_pointer(&self, id: &RecordId) -> StoreError {
        self.damaged(format!("record {} has no record-log pointer", id.to_hex()))
    }

    /// Whether `tag`'s pointers are one sled entry per record (`n`, and `r` before format 6).
    fn single(&self, tag: u8) -> bool {
        tag != SINGLE_TAG || !self.grouped()
    }

    /// The stored value of the group `id` belongs to, checked to be whole entries.
    fn group_value(&self, id: &[u8; 32]) -> Result<Option<sled::IVec>, StoreError> {
        let key = group_key(id);
        let value = self.data.get(key).map_err(|e| self.io(e))?;
        match value {
            Some(v) if !v.len().is_multiple_of(ENTRY) => Err(self.bad_group(&key)),
            other => Ok(other),
        }
    }

    /// The pointer of the record stored under `tag` (`r`: the sync set, `n`: directly
    /// delivered records), if it is held.
    pub(super) fn pointer(&self, tag: u8, id: &RecordId) -> Result<Option<Pointer>, StoreError> {
        if self.single(tag) {
            return match self.data.get(prefixed(tag, id)).map_err(|e| self.io(e))? {
                None => Ok(None),
                Some(v) => v
                    .as_ref()
                    .try_into()
                    .map(Some)
                    .map_err(|_| self.no_pointer(id)),
            };
        }
        let Some(value) = self.group_value(&id.0)? else {
            return Ok(None);
        };
        Ok(position(&value, &id.0)
            .ok()
            .and_then(|at| value[at + TAIL..at + ENTRY].try_into().ok()))
    }

    /// Whether the record stored under `tag` is held. For a grouped record that is not, the
    /// group as read is kept as a hint for the write that may follow (see [`GroupHints`]).
    pub(super) fn holds_pointer(&self, tag: u8, id: &RecordId) -> Result<bool, StoreError> {
        if self.single(tag) {
            return Ok(self.pointer(tag, id)?.is_some());
        }
        let value = self.group_value(&id.0)?;
        let held = value.as_deref().is_some_and(|v| position(v, &id.0).is_ok());
        if !held && let Ok(mut hints) = self.group_hints.lock() {
            if hints.len() >= GROUP_HINTS_MAX {
                hints.clear();
            }
            hints.insert(group_key(&id.0), value);
        }
        Ok(held)
    }

    /// Takes the hint for the group under `key`, if the held check left one.
    fn take_group_hint(&self, key: &[u8; 4]) -> Option<Option<sled::IVec>> {
        self.group_hints.lock().ok()?.remove(key)
    }

    /// Sets the pointer of the record stored under `tag` (`Some`) or removes it (`None`);
    /// returns the one it replaced. Writers hold the store's apply lock, but a group is
    /// swapped in atomically anyway, so a concurrent writer could never lose an entry. A new
    /// pointer starts from the held check's hint of its group, if there is one; the swap
    /// succeeds only if the group still is that value.
    pub(super) fn set_pointer(
        &self,
        tag: u8,
        id: &RecordId,
        pointer: Option<&Pointer>,
    ) -> Result<Option<Pointer>, StoreError> {
        if self.single(tag) {
            let key = prefixed(tag, id);
            let old = match pointer {
                Some(p) => self.data.insert(key, &p[..]),
                None => self.data.remove(key),
            }
            .map_err(|e| self.io(e))?;
            return Ok(old.and_then(|v| v.as_ref().try_into().ok()));
        }
        let key = group_key(&id.0);
        let mut hint = pointer.and_then(|_| self.take_group_hint(&key));
        loop {
            let hinted = hint.is_some();
            let current = match hint.take() {
                Some(value) => value,
                None => self.group_value(&id.0)?,
            };
            let value: &[u8] = current.as_deref().unwrap_or_default();
            let (old, updated) = match (position(value, &id.0), pointer) {
                (Ok(at), Some(p)) => {
                    let old: Option<Pointer> = value[at + TAIL..at + ENTRY].try_into().ok();
                    if old.as_ref() == Some(p) {
                        if hinted {
                            // Only a swap would confirm a hint: read the group as it is.
                            continue;
                        }
                        return Ok(old);
                    }
                    let mut v = value.to_vec();
                    v[at + TAIL..at + ENTRY].copy_from_slice(p);
                    (old, Some(v))
                }
                (Ok(at), None) => {
                    let old = value[at + TAIL..at + ENTRY].try_into().ok();
                    let mut v = value.to_vec();
                    v.drain(at..at + ENTRY);
                    (old, (!v.is_empty()).then_some(v))
                }
                (Err(at), Some(p)) => {
                    let mut v = Vec::with_capacity(value.len() + ENTRY);
                    v.extend_from_slice(&value[..at]);
                    v.extend_from_slice(&id.0[2..]);
                    v.extend_from_slice(p);
                    v.extend_from_slice(&value[at..]);
                    (None, Some(v))
                }
                (Err(_), None) => return Ok(None),
            };
            let swapped = self
                .data
                .compare_and_swap(key, current, updated)
                .map_err(|e| self.io(e))?;
            if swapped.is_ok() {
                return Ok(old);
            }
        }
    }

    /// The sync set's pointers of `bucket`, ascending by id. Like [`Store::pointers_from`],
    /// only for a grouped store: nothing reads the set in order before open has grouped it.
    pub(super) fn bucket_pointers(
        &self,
        bucket: usize,
    ) -> Result<Vec<([u8; 32], Pointer)>, StoreError> {
        let [hi, lo] = (bucket as u16).to_be_bytes();
        let mut out = Vec::new();
        for kv in self.data.scan_prefix([GROUP_TAG, hi, lo]) {
            let (key, value) = kv.map_err(|e| self.io(e))?;
            out.extend(entries(&key, &value).ok_or_else(|| self.bad_group(&key))?);
        }
        Ok(out)
    }

    /// The sync set's pointers from the start of `bucket` on, ascending by id; an error ends
    /// it. Only for a grouped store (open groups a store before anything reads it in order).
    pub(super) fn pointers_from(&self, bucket: usize) -> PointerIter<'_> {
        if bucket >= BUCKETS {
            return Box::new(std::iter::empty());
        }
        let [hi, lo] = (bucket as u16).to_be_bytes();
        let groups = self
            .data
            .range([GROUP_TAG, hi, lo].to_vec()..vec![GROUP_TAG + 1])
            .flat_map(move |kv| {
                let group: Vec<Result<_, StoreError>> = match kv {
                    Err(e) => vec![Err(self.io(e))],
                    Ok((key, value)) => match entries(&key, &value) {
                        Some(entries) => entries.into_iter().map(Ok).collect(),
                        None => vec![Err(self.bad_group(&key))],
                    },
                };
                group
            });
        Box::new(groups)
    }

    /// Whether any record pointer is stored, in either layout.
    pub(super) fn any_pointer(&self) -> Result<bool, StoreError> {
        for tag in [SINGLE_TAG, GROUP_TAG] {
            if let Some(kv) = self.data.scan_prefix([tag]).next() {
                kv.map_err(|e| self.io(e))?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Format 5 → 6: moves every `r` entry into its group, a batch at a time: the batch's
    /// groups are written (merged with what they hold) before its `r` entries are removed, so
    /// a move cut short by a crash simply goes on at the next open.
    pub(super) fn group_pointers(&self) -> Result<(), StoreError> {
        const BATCH: usize = 10_000;
        let _one = super::lock_apply(&self.applying);
        let started = std::time::Instant::now();
        let mut moved = 0usize;
        loop {
            let batch: Vec<(sled::IVec, sled::IVec)> = self
                .data
                .scan_prefix([SINGLE_TAG])
                .take(BATCH)
                .collect::<Result<_, _>>()
                .map_err(|e| self.io(e))?;
            if batch.is_empty() {
                break;
            }
            let mut by_group: std::collections::BTreeMap<
                [u8; 4],
                std::collections::BTreeMap<[u8; 32], Pointer>,
            > = std::collections::BTreeMap::new();
            for (key, value) in &batch {
                let id = self.id_in_key(key)?;
                let pointer: Pointer = value
                    .as_ref()
                    .try_into()
                    .map_err(|_| self.no_pointer(&id))?;
                by_group
                    .entry(group_key(&id.0))
                    .or_default()
                    .insert(id.0, pointer);
            }
            for (key, mut moving) in by_group {
                let current = self.data.get(key).map_err(|e| self.io(e))?;
                let held = match &current {
                    Some(value) => entries(&key, value).ok_or_else(|| self.bad_group(&key))?,
                    None => Vec::new(),
                };
                for (id, pointer) in held {
                    // An entry moved before a crash: the `r` entry is the same or newer.
                    moving.entry(id).or_insert(pointer);
                }
                let mut value = Vec::with_capacity(moving.len() * ENTRY);
                for (id, pointer) in &moving {
                    value.extend_from_slice(&id[2..]);
                    value.extend_from_slice(pointer);
                }
                self.data.insert(key, value).map_err(|e| self.io(e))?;
            }
            for (key, _) in &batch {
                self.data.remove(key).map_err(|e| self.io(e))?;
            }
            moved += batch.len();
            if moved.is_multiple_of(100_000) {
                tracing::info!(moved, "upgrading the store to format 6");
            }
        }
        self.grouped.store(true, Ordering::Release);
        tracing::info!(
            dir = %self.dir.display(),
            moved,
            ms = started.elapsed().as_millis() as u64,
            "store upgraded to format 6 (record pointers grouped by id)"
        );
        Ok(())
    }
}
