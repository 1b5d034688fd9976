//! The sync set as reconciliation reads it, answered from the store without copying it.
//!
//! Reconciliation (`kim_protocol::reconcile`) addresses the set by position: the id at a
//! position, the position of a value, and the sum of the ids between two positions. Until
//! session 12 every sync session read all of the store's record ids into a sorted vector for
//! that: at a million records a 2.5 s scan and 32 MiB per session, on every connection and
//! every 30 s, and the scan pulled most of sled's pages into memory.
//!
//! Here the store keeps, in memory, the count and [`IdSum`] of its record ids per bucket of
//! the first two id bytes (65,536 buckets; ids are hashes, so about 15 per bucket at a million
//! records), as two Fenwick trees: prefix counts and prefix sums over buckets in 16 steps, and
//! the bucket holding a position in 16 steps. Whatever lies inside one bucket is read from
//! sled: since store format 6 the bucket's ids are at most four sled entries (see
//! [`pointers`](super::pointers)), read by one prefix scan. A range's count and sum thus cost
//! two tree walks and at most two bucket reads, and the id at a position one walk and one read.
//! The table is 2.5 MiB whatever the number of records, built by one scan when the store
//! opens and kept by [`Store::apply`](super::Store::apply), the only writer of record keys
//! once the store is open.
//!
//! A [`SyncSet`] holds the table's read lock while it lives, and `apply` holds its write lock
//! while it writes record keys, so the set stays still for one reconciliation step; between
//! steps it may change, which the reconciliation tolerates (records fetched while a session
//! runs are counted once, ids gone since are no longer offered).

use std::cell::RefCell;
use std::ops::Range as IndexRange;
use std::sync::RwLockReadGuard;

use kim_protocol::reconcile::{Id, IdSet, IdSum};

use super::pointers::bucket_of;
use super::{Store, StoreError};

/// Buckets of the id space: ids by their first two bytes, as the store groups its pointers.
const BUCKETS: usize = super::pointers::BUCKETS;

/// The first bytes of the file [`Buckets::to_file_bytes`] writes.
const FILE_MAGIC: &[u8] = b"kim sync-set buckets 1\n";

/// Count and sum of the sync set's ids per bucket, as Fenwick trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Buckets {
    /// `counts[i]` (1-based) holds the count of buckets `i - lowbit(i) .. i`.
    counts: Vec<u64>,
    /// Sums laid out like `counts`.
    sums: Vec<IdSum>,
    total: u64,
    total_sum: IdSum,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS + 1],
            sums: vec![IdSum::default(); BUCKETS + 1],
            total: 0,
            total_sum: IdSum::default(),
        }
    }
}

impl Buckets {
    /// The table of the record ids `store` holds: one scan of the record keys.
    pub(super) fn scan(store: &Store) -> Result<Self, StoreError> {
        let mut counts = vec![0u64; BUCKETS];
        let mut sums = vec![IdSum::default(); BUCKETS];
        for id in store.record_ids() {
            let id = id?;
            let bucket = bucket_of(&id.0);
            counts[bucket] += 1;
            sums[bucket].add_id(&id.0);
        }
        Ok(Self::from_buckets(counts, sums))
    }

    /// The table of these per-bucket counts and sums (`BUCKETS` of each).
    fn from_buckets(counts: Vec<u64>, sums: Vec<IdSum>) -> Self {
        let mut table = Self::default();
        for (i, (count, sum)) in counts.into_iter().zip(sums).enumerate() {
            table.total += count;
            table.total_sum = table.total_sum.plus(&sum);
            table.counts[i + 1] = count;
            table.sums[i + 1] = sum;
        }
        // Fenwick trees built in place in linear time: each node, once complete, adds its
        // range to its parent's.
        for i in 1..=BUCKETS {
            let parent = i + (i & i.wrapping_neg());
            if parent <= BUCKETS {
                table.counts[parent] += table.counts[i];
                table.sums[parent] = table.sums[parent].plus(&table.sums[i]);
            }
        }
        table
    }

    /// The per-bucket counts and sums: [`Self::from_buckets`] undone, in reverse order.
    fn to_buckets(&self) -> (Vec<u64>, Vec<IdSum>) {
        let (mut counts, mut sums) = (self.counts.clone(), self.sums.clone());
        for i in (1..=BUCKETS).rev() {
            let parent = i + (i & i.wrapping_neg());
            if parent <= BUCKETS {
                counts[parent] -= counts[i];
                sums[parent] = sums[parent].minus(&sums[i]);
            }
        }
        (counts.split_off(1), sums.split_off(1))
    }

    /// The table as a file: [`FILE_MAGIC`], then per bucket its count (u32 LE) and sum (32
    /// bytes LE), then the BLAKE3 hash of everything before it.
    pub(super) fn to_file_bytes(&self) -> Vec<u8> {
        let (counts, sums) = self.to_buckets();
        let mut out = Vec::with_capacity(FILE_MAGIC.len() + BUCKETS * 36 + 32);
        out.extend_from_slice(FILE_MAGIC);
        for (count, sum) in counts.iter().zip(&sums) {
            out.extend_from_slice(&u32::try_from(*count).unwrap_or(u32::MAX).to_le_bytes());
            out.extend_from_slice(&sum.to_le_bytes());
        }
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        out
    }

    /// Reads [`Self::to_file_bytes`]'s output; `None` if it is not exactly that.
    pub(super) fn from_file_bytes(bytes: &[u8]) -> Option<Self> {
        let (body, hash) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if blake3::hash(body).as_bytes() != hash {
            return None;
        }
        let entries = body.strip_prefix(FILE_MAGIC)?;
        if entries.len() != BUCKETS * 36 {
            return None;
        }
        let mut counts = Vec::with_capacity(BUCKETS);
        let mut sums = Vec::with_capacity(BUCKETS);
        for entry in entries.chunks_exact(36) {
            let (count, sum) = entry.split_at(4);
            counts.push(u64::from(u32::from_le_bytes(count.try_into().ok()?)));
            sums.push(IdSum::of(&sum.try_into().ok()?));
        }
        Some(Self::from_buckets(counts, sums))
    }

    /// Counts an id that was not in the set.
    pub(super) fn add(&mut self, id: &Id) {
        let one = IdSum::of(id);
        let mut i = bucket_of(id) + 1;
        while i <= BUCKETS {
            self.counts[i] += 1;
            self.sums[i] = self.sums[i].plus(&one);
            i += i & i.wrapping_neg();
        }
        self.total += 1;
        self.total_sum = self.total_sum.plus(&one);
    }

    /// Uncounts an id that was in the set.
    pub(super) fn remove(&mut self, id: &Id) {
        let one = IdSum::of(id);
        let mut i = bucket_of(id) + 1;
        while i <= BUCKETS {
            self.counts[i] = self.counts[i].saturating_sub(1);
            self.sums[i] = self.sums[i].minus(&one);
            i += i & i.wrapping_neg();
        }
        self.total = self.total.saturating_sub(1);
        self.total_sum = self.total_sum.minus(&one);
    }

    /// Number of ids held.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Sum of all ids held.
    pub(super) fn total_sum(&self) -> IdSum {
        self.total_sum
    }

    /// Count and sum of the ids in buckets `..bucket`.
    fn before(&self, bucket: usize) -> (u64, IdSum) {
        let mut count = 0u64;
        let mut sum = IdSum::default();
        let mut i = bucket.min(BUCKETS);
        while i > 0 {
            count += self.counts[i];
            sum = sum.plus(&self.sums[i]);
            i &= i - 1;
        }
        (count, sum)
    }

    /// The bucket holding position `index` (`index < total`) and the count and sum of the
    /// buckets before it.
    fn locate(&self, index: u64) -> (usize, u64, IdSum) {
        let mut at = 0usize;
        let mut count = 0u64;
        let mut sum = IdSum::default();
        let mut step = BUCKETS;
        while step > 0 {
            let next = at + step;
            if next <= BUCKETS && count + self.counts[next] <= index {
                at = next;
                count += self.counts[next];
                sum = sum.plus(&self.sums[next]);
            }
            step >>= 1;
        }
        (at, count, sum)
    }
}

/// The store's sync set held still for one reconciliation step (see the module text).
///
/// The [`IdSet`] methods cannot return errors; a store error met while reading is kept, the
/// answers meanwhile are as if the set ended there, and [`SyncSet::finish`] returns the error,
/// so the step's result is thrown away rather than sent.
pub struct SyncSet<'s> {
    store: &'s Store,
    buckets: RwLockReadGuard<'s, Buckets>,
    error: RefCell<Option<StoreError>>,
}

impl std::fmt::Debug for SyncSet<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncSet")
            .field("store", self.store)
            .field("ids", &self.buckets.total())
            .finish()
    }
}

impl<'s> SyncSet<'s> {
    pub(super) fn new(store: &'s Store, buckets: RwLockReadGuard<'s, Buckets>) -> Self {
        Self {
            store,
            buckets,
            error: RefCell::new(None),
        }
    }

    /// Ends the step: the first store error met while reading, if any.
    pub fn finish(self) -> Result<(), StoreError> {
        match self.error.into_inner() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn fail(&self, error: StoreError) {
        let mut slot = self.error.borrow_mut();
        if slot.is_none() {
            *slot = Some(error);
        }
    }

    /// The ids from the start of `bucket` up to the end of the set, ascending; a read error
    /// is kept and ends the iteration.
    fn ids_from(&self, bucket: usize) -> impl Iterator<Item = Id> + '_ {
        self.store
            .pointers_from(bucket)
            .map_while(move |entry| match entry {
                Ok((id, _)) => Some(id),
                Err(e) => {
                    self.fail(e);
                    None
                }
            })
    }

    /// The ids of `bucket`, ascending.
    fn bucket_ids(&self, bucket: usize) -> impl Iterator<Item = Id> + '_ {
        let ids = match self.store.bucket_pointers(bucket) {
            Ok(entries) => entries,
            Err(e) => {
                self.fail(e);
                Vec::new()
            }
        };
        ids.into_iter().map(|(id, _)| id)
    }

    /// Position `index`'s bucket start and how many ids of that bucket come before it.
    fn seek(&self, index: usize) -> (usize, usize, IdSum) {
        let (bucket, before, sum) = self.buckets.locate(index as u64);
        (bucket, index - before as usize, sum)
    }

    /// Sum of the ids at positions `..end`.
    fn prefix_sum(&self, end: usize) -> IdSum {
        if end as u64 >= self.buckets.total() {
            return self.buckets.total_sum();
        }
        let (bucket, skip, mut sum) = self.seek(end);
        for id in self.bucket_ids(bucket).take(skip) {
            sum.add_id(&id);
        }
        sum
    }
}

impl IdSet for SyncSet<'_> {
    fn len(&self) -> usize {
        self.buckets.total() as usize
    }

    fn id_at(&self, index: usize) -> Option<Id> {
        if index as u64 >= self.buckets.total() {
            return None;
        }
        let (bucket, skip, _) = self.seek(index);
        let found = self.bucket_ids(bucket).nth(skip);
        if found.is_none() && self.error.borrow().is_none() {
            self.fail(
                self.store
                    .damaged("the sync set's bucket counts disagree with its keys".into()),
            );
        }
        found
    }

    fn lower_bound(&self, value: &Id) -> usize {
        let bucket = bucket_of(value);
        let (before, _) = self.buckets.before(bucket);
        let inside = self.bucket_ids(bucket).take_while(|id| id < value).count();
        before as usize + inside
    }

    fn ids_in(&self, range: IndexRange<usize>) -> impl Iterator<Item = Id> + '_ {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        let (bucket, skip) = if start < end {
            let (bucket, skip, _) = self.seek(start);
            (bucket, skip)
        } else {
            (0, 0)
        };
        // An empty range reads nothing: `take(0)` never asks the scan.
        self.ids_from(bucket).skip(skip).take(end - start)
    }

    fn id_sum(&self, range: IndexRange<usize>) -> IdSum {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        if start == end {
            return IdSum::default();
        }
        self.prefix_sum(end).minus(&self.prefix_sum(start))
    }

    fn contains(&self, id: &Id) -> bool {
        match self.store.holds(&kim_protocol::RecordId(*id), true) {
            Ok(held) => held,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kim_protocol::RecordId;
    use kim_protocol::reconcile::{SortedIds, simulate};
    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};

    use super::*;
    use crate::store::WriteSet;

    /// A number in `0..n`.
    fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
        rng.next_u32() as usize % n.max(1)
    }

    fn any_id(rng: &mut ChaCha8Rng) -> Id {
        let mut id = [0u8; 32];
        rng.fill_bytes(&mut id);
        id
    }

    /// Ids crowded into a few buckets, the first and the last among them, so that buckets
    /// hold many ids and ranges start and end inside them; a fifth spread anywhere.
    fn crowded_id(rng: &mut ChaCha8Rng) -> Id {
        let mut id = any_id(rng);
        if below(rng, 5) != 0 {
            id[0] = [0u8, 1, 0x7f, 0xff][below(rng, 4)];
            id[1] = [0u8, 1, 0xfe, 0xff][below(rng, 4)];
        }
        id
    }

    fn open(dir: &std::path::Path) -> Store {
        match Store::open(dir, 1 << 20, true) {
            Ok(store) => store,
            Err(e) => panic!("opening a store: {e}"),
        }
    }

    fn put(store: &Store, ids: &[Id]) {
        let mut writes = WriteSet::default();
        for id in ids {
            writes.put_record(&RecordId(*id), id);
        }
        assert!(store.apply(writes).is_ok());
    }

    fn remove(store: &Store, ids: &[Id]) {
        let mut writes = WriteSet::default();
        for id in ids {
            writes.remove_record(&RecordId(*id));
        }
        assert!(store.apply(writes).is_ok());
    }

    /// Every question reconciliation asks, of the store's set and of the same ids in memory.
    fn assert_same(set: &SyncSet<'_>, expected: &SortedIds, rng: &mut ChaCha8Rng) {
        let ids = expected.as_slice();
        assert_eq!(set.len(), ids.len());
        for index in 0..=ids.len() {
            assert_eq!(set.id_at(index), ids.get(index).copied(), "id at {index}");
        }
        let mut probes: Vec<Id> = ids.to_vec();
        for _ in 0..200 {
            probes.push(crowded_id(rng));
        }
        probes.push([0u8; 32]);
        probes.push([0xffu8; 32]);
        for probe in &probes {
            assert_eq!(set.lower_bound(probe), expected.lower_bound(probe));
            assert_eq!(set.contains(probe), expected.contains(probe));
        }
        for _ in 0..300 {
            let a = below(rng, ids.len() + 3);
            let b = below(rng, ids.len() + 3);
            let (start, end) = (a.min(b), a.max(b));
            assert_eq!(
                set.ids_in(start..end).collect::<Vec<_>>(),
                expected.ids_in(start..end).collect::<Vec<_>>(),
                "ids in {start}..{end}"
            );
            assert_eq!(set.id_sum(start..end), expected.id_sum(start..end));
        }
    }

    #[tokio::test]
    async fn the_store_answers_every_position_count_and_sum_as_the_sorted_ids_do()
    -> Result<(), StoreError> {
        for seed in 0..6u64 {
            let dir = tempfile::tempdir().map_err(|e| StoreError::Io {
                dir: std::env::temp_dir(),
                cause: e.to_string(),
            })?;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut held: Vec<Id> = Vec::new();
            {
                let store = open(dir.path());
                // Empty first.
                assert_same(&store.sync_set(), &SortedIds::default(), &mut rng);
                // Added in a few write sets, then some removed, as superseded revisions are.
                for _ in 0..3 {
                    let batch: Vec<Id> = (0..1 + below(&mut rng, 400))
                        .map(|_| crowded_id(&mut rng))
                        .collect();
                    put(&store, &batch);
                    held.extend(batch);
                }
                let gone: Vec<Id> = held
                    .iter()
                    .filter(|_| below(&mut rng, 10) < 3)
                    .copied()
                    .collect();
                remove(&store, &gone);
                // Removing what is not held, and adding what is, counts nothing twice.
                remove(&store, &gone[..gone.len().min(5)]);
                held.retain(|id| !gone.contains(id));
                let expected = SortedIds::new(held.clone());
                let set = store.sync_set();
                assert_same(&set, &expected, &mut rng);
                set.finish()?;
                // The table kept by each write equals the one counted from scratch.
                assert_eq!(
                    *store.buckets.read().unwrap_or_else(|p| p.into_inner()),
                    Buckets::scan(&store)?
                );
                store.flush().await?;
            }
            // Counted again when the store opens.
            let store = open(dir.path());
            assert_same(&store.sync_set(), &SortedIds::new(held), &mut rng);
        }
        Ok(())
    }

    #[test]
    fn reconciliation_against_the_store_finds_exactly_the_difference() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io {
            dir: std::env::temp_dir(),
            cause: e.to_string(),
        })?;
        let store = open(dir.path());
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // Enough ids that the initiator splits rather than listing them all.
        let shared: Vec<Id> = (0..6000).map(|_| crowded_id(&mut rng)).collect();
        let only_store: Vec<Id> = (0..40).map(|_| any_id(&mut rng)).collect();
        let only_peer: Vec<Id> = (0..70).map(|_| crowded_id(&mut rng)).collect();
        put(&store, &shared);
        put(&store, &only_store);
        let peer = SortedIds::new(shared.iter().chain(&only_peer).copied().collect());
        let set = store.sync_set();
        for (initiator_is_store, stats) in [
            (true, simulate(&set, &peer)),
            (false, simulate(&peer, &set)),
        ] {
            let Ok(stats) = stats else {
                panic!("session failed: {stats:?}");
            };
            let (mut lacking_here, mut lacking_there) = (only_peer.clone(), only_store.clone());
            if !initiator_is_store {
                std::mem::swap(&mut lacking_here, &mut lacking_there);
            }
            lacking_here.sort_unstable();
            lacking_there.sort_unstable();
            assert_eq!(stats.need, lacking_here);
            assert_eq!(stats.have, lacking_there);
        }
        set.finish()
    }

    /// `ids` stored with the state digest kept, as ingest writes them.
    fn put_counted(store: &Store, ids: &[Id]) -> Result<(), StoreError> {
        let mut digest = store.digest()?;
        let mut writes = WriteSet::default();
        for id in ids {
            writes.put_record(&RecordId(*id), id);
            digest.add(&RecordId(*id));
        }
        writes.set_digest(&digest);
        store.apply(writes)
    }

    fn table(store: &Store) -> Buckets {
        store
            .buckets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    #[tokio::test]
    async fn a_clean_stop_saves_the_table_and_open_uses_it_only_while_it_matches()
    -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Io {
            dir: std::env::temp_dir(),
            cause: e.to_string(),
        })?;
        let path = dir.path().join(super::super::SYNC_SET_FILE);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let first: Vec<Id> = (0..500).map(|_| crowded_id(&mut rng)).collect();
        {
            let store = open(dir.path());
            put_counted(&store, &first)?;
            store.close().await?;
            let saved = std::fs::read(&path).map_err(|e| store.damaged(e.to_string()))?;
            assert_eq!(
                Buckets::from_file_bytes(&saved),
                Some(Buckets::scan(&store)?)
            );
            // Any change to the file makes it unreadable rather than wrong.
            let mut bent = saved.clone();
            bent[100] ^= 1;
            assert_eq!(Buckets::from_file_bytes(&bent), None);
            assert_eq!(Buckets::from_file_bytes(&saved[..saved.len() - 1]), None);
        }
        {
            let store = open(dir.path());
            assert_eq!(table(&store), Buckets::scan(&store)?);
            assert_eq!(table(&store).total(), 500);
            // Written after the save and flushed, but no clean stop: the file is stale.
            put_counted(&store, &[crowded_id(&mut rng), crowded_id(&mut rng)])?;
            store.flush().await?;
        }
        let store = open(dir.path());
        assert_eq!(table(&store).total(), 502);
        assert_eq!(table(&store), Buckets::scan(&store)?);
        drop(store);
        // A damaged file is ignored.
        std::fs::write(&path, b"not a table").map_err(|e| StoreError::Io {
            dir: dir.path().to_path_buf(),
            cause: e.to_string(),
        })?;
        let store = open(dir.path());
        assert_eq!(table(&store).total(), 502);
        assert_eq!(table(&store), Buckets::scan(&store)?);
        Ok(())
    }
}
