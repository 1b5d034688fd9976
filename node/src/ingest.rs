//! The one ingest pipeline every record goes through, whatever its source (API, import, and
//! later gossip and sync):
//!
//! size check → decode → (already held? done) → verify (batched) → validate → authorise
//! (membership) → resolve against the current item → store (atomic batch, flushed) → index.
//!
//! Duplicates and older revisions change nothing. Every rejection is counted by its code and
//! logged once at debug level. One writer at a time (a tokio mutex held across the store write),
//! so resolution never races with itself.
//!
//! The two halves of a batch run on different threads: the checks (decode, held?, verify,
//! validate, authorise; pure CPU) on a blocking thread, the write (resolve, apply, flush) under
//! the writer lock. So when several batches are in flight — sync, import, gossip and the API at
//! once — one batch's signatures are checked while another's write set is applied. The held
//! check before the lock is an optimisation only: under the lock a record written by another
//! batch in the meantime is caught again (see `Ingest::write`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::VerifyingKey;
use kim_protocol::bytes::PublicKey;
use kim_protocol::digest::StateDigest;
use kim_protocol::envelope::{Body, Kind, Record, author_key, verify_batch_with};
use kim_protocol::limits::RECORD_BYTES_MAX;
use kim_protocol::membership::{AuthorStatus, Charter, MembershipState, evaluate};
use kim_protocol::resolve::{Decision, decide};
use kim_protocol::validate::{Context, validate};
use kim_protocol::{FederationId, RecordId};
use serde::Serialize;

use crate::store::{ItemEntry, Store, StoreError, WriteSet};

type Slot = (kim_protocol::RegionId, Kind, String);

fn slot_of(region: &kim_protocol::RegionId, c: &kim_protocol::Content) -> Slot {
    (*region, c.kind, c.key.clone())
}
/// Evidence marked earlier in the same batch, per item.
type Evidence = HashMap<Slot, Vec<RecordId>>;

/// One record entering the pipeline.
enum Input {
    /// Bytes from anywhere: size-checked, decoded and verified here.
    Bytes(Vec<u8>),
    /// Decoded, and its signature verified by the caller just before.
    Verified(Box<Record>),
}

/// Where a record came from; logged and counted, and later used for per-source rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Api,
    Import,
    Gossip,
    Sync,
    Direct,
}

impl Source {
    /// Whether a record from this source is acknowledged to someone who then relies on it: staff
    /// (API, import) or a sending node that drops it from its outbox (direct). Such a batch is
    /// flushed before its results are returned. Gossip and sync acknowledge nothing: their
    /// writes reach the disk with the next periodic flush ([`REPLICA_FLUSH_INTERVAL`]), and a
    /// crash before it loses only records that the next sync fetches again.
    pub fn acknowledged(self) -> bool {
        matches!(self, Source::Api | Source::Import | Source::Direct)
    }
}

/// How often a node flushes what gossip and sync stored since the last flush. An fsync per
/// gossip record would put a disk round trip in every hop of every record's path.
pub const REPLICA_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// What happened to one accepted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Accepted {
    /// New winner of its item (or a new membership record).
    Stored { id: RecordId },
    /// Already held: nothing changed.
    Duplicate { id: RecordId },
    /// An older revision than the one held: nothing changed.
    Older { id: RecordId },
    /// Same revision as the held winner, different bytes: kept as evidence.
    Equivocation { id: RecordId, wins: bool },
}

impl Accepted {
    /// The record's id.
    pub fn id(&self) -> RecordId {
        match self {
            Accepted::Stored { id }
            | Accepted::Duplicate { id }
            | Accepted::Older { id }
            | Accepted::Equivocation { id, .. } => *id,
        }
    }

    /// Whether the record changed the store (so gossip should forward it).
    pub fn is_new(&self) -> bool {
        matches!(
            self,
            Accepted::Stored { .. } | Accepted::Equivocation { .. }
        )
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejected {
    #[error("{0}")]
    Invalid(#[from] kim_protocol::Error),
    #[error("author is not a current member of this federation")]
    NotMember,
    #[error("author key was rotated away before this record was made")]
    RetiredKey,
    #[error("author is unknown to this federation")]
    UnknownAuthor,
    #[error("{kind} records are not accepted from {origin:?}")]
    WrongSource { kind: Kind, origin: Source },
    #[error("store failure: {0}")]
    Store(String),
}

impl Rejected {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejected::Invalid(e) => e.code(),
            Rejected::NotMember => "auth.not_member",
            Rejected::RetiredKey => "auth.retired_key",
            Rejected::UnknownAuthor => "auth.unknown_author",
            Rejected::WrongSource { .. } => "auth.wrong_source",
            Rejected::Store(_) => "store.failure",
        }
    }
}

impl From<StoreError> for Rejected {
    fn from(err: StoreError) -> Self {
        Rejected::Store(err.to_string())
    }
}

/// The authorisation rule of the pipeline: who may author what, judged against `membership`.
/// Import applies the same rule to a whole bundle before writing anything.
pub fn authorise(
    membership: &MembershipState,
    record: &Record,
    source: Source,
) -> Result<(), Rejected> {
    let c = &record.content;
    if c.kind == Kind::Interest && source != Source::Direct && source != Source::Api {
        return Err(Rejected::WrongSource {
            kind: c.kind,
            origin: source,
        });
    }
    let status = membership.author_status(&c.author, c.created_at_ms);
    match &c.body {
        // The charter of this federation (validation checked its hash) and join requests from
        // anyone; admission is the membership rule's business.
        Body::Charter(_) | Body::JoinRequest(_) => Ok(()),
        // Membership actions from any key the federation knows: the rule counts only those made
        // by members in the state they name, and keeping the rest keeps every node's record
        // set identical.
        Body::Endorsement(_) | Body::RemovalVote(_) | Body::Leave(_) | Body::KeyRotation(_) => {
            match status {
                AuthorStatus::Unknown => Err(Rejected::UnknownAuthor),
                _ => Ok(()),
            }
        }
        _ => match status {
            AuthorStatus::Member(_) => Ok(()),
            AuthorStatus::RetiredKey(_) => Err(Rejected::RetiredKey),
            AuthorStatus::NotMember(_) => Err(Rejected::NotMember),
            AuthorStatus::Unknown => Err(Rejected::UnknownAuthor),
        },
    }
}

/// Batches at least this long are checked on a blocking thread; shorter ones (a publish through
/// the API) in place, where the thread hop would cost more than it frees.
const OFFLOAD_RECORDS_MIN: usize = 64;

/// At most this many authors' decoded keys are kept; beyond, the cache starts again (members
/// are a few dozen; the rest are strangers whose records authorisation refuses).
const AUTHOR_KEYS_MAX: usize = 256;

/// Authors' keys as decoded for signature checks, or why they were refused, kept across
/// batches: a gossip batch is often one record, and decoding its author's key cost about a
/// tenth of the check each time.
#[derive(Debug, Default)]
struct AuthorKeys(Mutex<HashMap<PublicKey, Result<VerifyingKey, kim_protocol::Error>>>);

impl AuthorKeys {
    /// The decoded key of `author`, as [`author_key`] decodes it.
    fn get(&self, author: &PublicKey) -> Result<VerifyingKey, kim_protocol::Error> {
        if let Some(known) = self
            .0
            .lock()
            .ok()
            .and_then(|keys| keys.get(author).cloned())
        {
            return known;
        }
        let parsed = author_key(author);
        if let Ok(mut keys) = self.0.lock() {
            if keys.len() >= AUTHOR_KEYS_MAX {
                keys.clear();
            }
            keys.insert(*author, parsed.clone());
        }
        parsed
    }
}

/// The stateless half of a batch, done: what was refused or already held, and what passed.
struct CheckedBatch {
    /// Per input position: decided here (refused, or already held), or `None` if it passed.
    /// Refusals are not yet counted.
    results: Vec<Option<Result<Accepted, Rejected>>>,
    /// (position, record) of the records that passed every check, in input order.
    passed: Vec<(usize, Record)>,
    decode_us: u64,
    verify_us: u64,
    validate_us: u64,
}

/// size check → decode → held? → batch verify → validate → authorise, for one batch. Pure CPU
/// apart from one store read per record (the held check), so it may run on any thread.
fn check_batch(
    store: &Store,
    keys: &AuthorKeys,
    batch: Vec<Input>,
    ctx: &Context,
    membership: &MembershipState,
    source: Source,
) -> CheckedBatch {
    let started = std::time::Instant::now();
    let mut results: Vec<Option<Result<Accepted, Rejected>>> = vec![None; batch.len()];
    // (position, record, whether its signature still needs checking)
    let mut decoded: Vec<(usize, Record, bool)> = Vec::with_capacity(batch.len());
    for (i, input) in batch.into_iter().enumerate() {
        let (record, unverified) = match input {
            Input::Verified(record) => (*record, false),
            Input::Bytes(bytes) if bytes.len() > RECORD_BYTES_MAX => {
                let err = kim_protocol::Error::RecordTooLarge {
                    size: bytes.len(),
                    max: RECORD_BYTES_MAX,
                };
                results[i] = Some(Err(err.into()));
                continue;
            }
            Input::Bytes(bytes) => match Record::decode(bytes) {
                Ok(record) => (record, true),
                Err(err) => {
                    results[i] = Some(Err(err.into()));
                    continue;
                }
            },
        };
        // Held records skip the signature check: replays from gossip and sync cost one read.
        match store.holds(&record.id, record.content.kind.is_replicated()) {
            Ok(true) => results[i] = Some(Ok(Accepted::Duplicate { id: record.id })),
            Ok(false) => decoded.push((i, record, unverified)),
            Err(e) => results[i] = Some(Err(e.into())),
        }
    }
    let decoded_at = started.elapsed();
    let refs: Vec<&Record> = decoded
        .iter()
        .filter(|(_, _, unverified)| *unverified)
        .map(|(_, r, _)| r)
        .collect();
    let mut batch_verdicts = verify_batch_with(&refs, &mut |author| keys.get(author)).into_iter();
    let mut passed: Vec<(usize, Record)> = Vec::with_capacity(decoded.len());
    let mut verdicts = Vec::with_capacity(decoded.len());
    for (_, _, unverified) in &decoded {
        verdicts.push(if *unverified {
            batch_verdicts
                .next()
                .unwrap_or(Err(kim_protocol::Error::BadSignature))
        } else {
            Ok(())
        });
    }
    let verified_at = started.elapsed();
    for ((i, record, _), verdict) in decoded.into_iter().zip(verdicts) {
        let outcome = verdict
            .and_then(|()| validate(&record.content, ctx))
            .map_err(Rejected::from)
            .and_then(|()| authorise(membership, &record, source));
        match outcome {
            Ok(()) => passed.push((i, record)),
            Err(err) => results[i] = Some(Err(err)),
        }
    }
    let checked_at = started.elapsed();
    CheckedBatch {
        results,
        passed,
        decode_us: decoded_at.as_micros() as u64,
        verify_us: (verified_at - decoded_at).as_micros() as u64,
        validate_us: (checked_at - verified_at).as_micros() as u64,
    }
}

/// Write sets remembered by the writer, so a batch checked a moment ago is re-checked in memory.
const RECENT_WRITES_MAX: usize = 4;
/// A write set storing more records than this is not remembered (a later re-check reads the
/// store instead): the memory stays bounded whatever the batch size.
const RECENT_WRITE_IDS_MAX: usize = 8192;

/// The ids each of the last few write sets stored, by the generation it produced. Owned by the
/// writer lock.
#[derive(Debug, Default)]
struct RecentWrites {
    /// (generation after the write, ids it stored, or `None` when there were too many)
    sets: std::collections::VecDeque<(u64, Option<std::collections::HashSet<RecordId>>)>,
}

impl RecentWrites {
    /// The id sets of every write after `seen` up to `now`, if all of them are remembered.
    fn since(&self, seen: u64, now: u64) -> Option<Vec<&std::collections::HashSet<RecordId>>> {
        let wanted = (seen + 1)..=now;
        let sets: Vec<_> = self
            .sets
            .iter()
            .filter(|(generation, _)| wanted.contains(generation))
            .map(|(_, ids)| ids.as_ref())
            .collect::<Option<_>>()?;
        (sets.len() as u64 == now - seen).then_some(sets)
    }

    fn remember(&mut self, generation: u64, ids: std::collections::HashSet<RecordId>) {
        if self.sets.len() == RECENT_WRITES_MAX {
            self.sets.pop_front();
        }
        let ids = (ids.len() <= RECENT_WRITE_IDS_MAX).then_some(ids);
        self.sets.push_back((generation, ids));
    }
}

/// Store metadata: the membership digest the items of non-members were last purged for.
const PURGED_META: &str = "purged_for_state";
/// Store metadata: this node's own region id (written at init), whose items are never purged:
/// a region that leaves or is removed keeps what it published on its own node (nobody else
/// will hold it any more, and it cannot be signed again), so it comes back if the region is
/// admitted again.
pub const OWN_REGION_META: &str = "own_region";

/// The pipeline and the state it owns: membership, digest and rejection counters.
#[derive(Debug)]
pub struct Ingest {
    store: Store,
    federation: FederationId,
    charter: Charter,
    membership: RwLock<Arc<MembershipState>>,
    digest: Mutex<StateDigest>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    /// One writer at a time; the lock also guards what the writer remembers of recent writes.
    writer: tokio::sync::Mutex<RecentWrites>,
    /// Count of write sets applied, bumped under the writer lock after each apply. A batch whose
    /// held check saw an older count re-checks under the lock (another batch may have stored
    /// the same records in between).
    generation: AtomicU64,
    /// Set when gossip or sync applied a write set that no flush has covered yet.
    unflushed: std::sync::atomic::AtomicBool,
    /// Counts write sets that stored a membership record or a region profile.
    access_changes: AtomicU64,
    clock: fn() -> u64,
    /// The search index, updated after each durable write (absent in tools that only store).
    search: Option<Arc<crate::search::SearchIndex>>,
    /// Applies durable changes to `search` off the pipeline's path.
    indexer: Option<crate::indexer::Indexer>,
    /// Decoded author keys for the signature checks.
    author_keys: Arc<AuthorKeys>,
}

/// Receives a batch's forecast ([`Ingest::ingest_forecast`]).
type Forecast<'a> = Box<dyn FnOnce(Vec<Result<Accepted, Rejected>>) + Send + 'a>;

/// The item entry a record makes when it wins its item.
fn item_entry(record: &Record, region: kim_protocol::RegionId) -> ItemEntry {
    let c = &record.content;
    ItemEntry {
        id: record.id,
        region,
        author: c.author,
        kind: c.kind,
        key: c.key.clone(),
        revision: c.revision,
        tombstone: c.body.is_tombstone(),
        created_at_ms: c.created_at_ms,
        expires_at_ms: c.expires_at_ms,
    }
}

/// What [`Ingest::write`] makes of a record of a withdrawable item whose current winner is
/// `current` (the same decisions, without the writes).
fn outcome_against(current: Option<&ItemEntry>, incoming: &ItemEntry) -> Accepted {
    let id = incoming.id;
    let Some(cur) = current else {
        return Accepted::Stored { id };
    };
    match decide(&cur.revision(), &incoming.revision()) {
        Decision::Duplicate => Accepted::Duplicate { id },
        Decision::Keep => Accepted::Older { id },
        Decision::Replace => Accepted::Stored { id },
        // A content body is never kept as evidence beside a tombstone: the tombstone wins
        // and erasure must hold.
        Decision::Equivocation {
            incoming_wins: false,
        } if cur.tombstone => Accepted::Older { id },
        Decision::Equivocation { incoming_wins } => Accepted::Equivocation {
            id,
            wins: incoming_wins,
        },
    }
}

/// Milliseconds since the Unix epoch from the system clock.
pub fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Ingest {
    /// Loads membership and the digest from the store.
    pub fn open(
        store: Store,
        federation: FederationId,
        charter: Charter,
    ) -> Result<Ingest, StoreError> {
        let digest = store.digest()?;
        let ingest = Ingest {
            membership: RwLock::new(Arc::new(evaluate(&charter, federation, []))),
            store,
            federation,
            charter,
            digest: Mutex::new(digest),
            rejections: Mutex::new(BTreeMap::new()),
            writer: tokio::sync::Mutex::new(RecentWrites::default()),
            generation: AtomicU64::new(0),
            unflushed: std::sync::atomic::AtomicBool::new(false),
            access_changes: AtomicU64::new(0),
            clock: system_now_ms,
            search: None,
            indexer: None,
            author_keys: Arc::default(),
        };
        ingest.reevaluate_membership()?;
        ingest.purge_if_stale()?;
        Ok(ingest)
    }

    /// Attaches the search index: from now on every durable write updates it. The caller has
    /// made sure the index matches the store (see [`Ingest::reindex_if_stale`]).
    pub fn with_search(self, index: Arc<crate::search::SearchIndex>) -> Ingest {
        self.with_search_queue(index, crate::indexer::QUEUE_DOCS_MAX)
    }

    /// [`Ingest::with_search`] with room for `capacity` documents in the indexer's queue.
    fn with_search_queue(
        mut self,
        index: Arc<crate::search::SearchIndex>,
        capacity: usize,
    ) -> Ingest {
        match crate::indexer::Indexer::start_with_capacity(
            Arc::clone(&index),
            self.store.clone(),
            self.clock,
            capacity,
        ) {
            Ok(indexer) => self.indexer = Some(indexer),
            Err(e) => {
                tracing::error!(cause = %e, "cannot start the search indexer; search stays as it is")
            }
        }
        self.search = Some(index);
        self
    }

    /// How many write sets have stored a membership record or a region profile: what decides
    /// which peers may connect and where members listen. Unchanged across a batch means that
    /// batch changed neither.
    pub fn access_changes(&self) -> u64 {
        self.access_changes.load(Ordering::Acquire)
    }

    /// The search index, if attached.
    pub fn search(&self) -> Option<&Arc<crate::search::SearchIndex>> {
        self.search.as_ref()
    }

    /// Rebuilds `index` from the store's item winners when its generation is not the store's
    /// state digest (index missing, from an older schema, or behind after a crash).
    pub fn reindex_if_stale(&self, index: &crate::search::SearchIndex) -> anyhow::Result<bool> {
        let generation = self.digest().hash().to_hex();
        if index.generation().as_deref() == Some(generation.as_str()) {
            return Ok(false);
        }
        tracing::info!("search index missing or stale; rebuilding from the store");
        let started = std::time::Instant::now();
        let count = crate::indexer::rebuild_from_store(&self.store, index, &generation)?;
        tracing::info!(
            items = count,
            ms = started.elapsed().as_millis() as u64,
            "search index rebuilt"
        );
        Ok(true)
    }

    /// The store this pipeline writes to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The federation served.
    pub fn federation(&self) -> FederationId {
        self.federation
    }

    /// The current membership state.
    pub fn membership(&self) -> Arc<MembershipState> {
        self.membership
            .read()
            .map(|m| Arc::clone(&m))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    /// The state digest over the sync set.
    pub fn digest(&self) -> StateDigest {
        *self.digest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rejections since start, by code.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejections
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    fn reject(&self, err: Rejected, source: Source) -> Rejected {
        let code = err.code();
        if let Ok(mut counts) = self.rejections.lock() {
            *counts.entry(code).or_default() += 1;
        }
        tracing::debug!(?source, code, cause = %err, "record rejected");
        err
    }

    /// Drops every item of regions that are no longer members (removed or left): their
    /// winners, superseded evidence and index entries leave the store, the digest and the
    /// search index. Their membership records stay (the member set is computed from them).
    /// Records of a region that is not a member are refused on arrival, so every node ends up
    /// with the same sync set whether an item arrived before or after the region went.
    /// Called under the writer lock (from `write`) or before the pipeline is shared (`open`).
    fn purge_regions(&self, gone: &[kim_protocol::RegionId]) -> Result<usize, StoreError> {
        let own = self
            .store
            .meta(OWN_REGION_META)?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(kim_protocol::PublicKey);
        let mut writes = WriteSet::default();
        let mut digest = self.digest();
        let mut slots: Vec<Slot> = Vec::new();
        for entry in self.store.item_entries() {
            let entry = entry?;
            if !gone.contains(&entry.region) || Some(entry.region) == own {
                continue;
            }
            writes.remove_record(&entry.id);
            digest.remove(&entry.id);
            for id in self
                .store
                .equivocations(&entry.region, entry.kind, &entry.key)?
            {
                writes.remove_record(&id);
                digest.remove(&id);
                writes.unmark_equivocation(&entry.region, entry.kind, &entry.key, &id);
            }
            writes.remove_item(&entry);
            slots.push((entry.region, entry.kind, entry.key.clone()));
        }
        writes.set_digest(&digest);
        self.store.apply(writes)?;
        if let Ok(mut d) = self.digest.lock() {
            *d = digest;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let purged = slots.len();
        if purged > 0 {
            tracing::info!(
                regions = gone.len(),
                items = purged,
                "dropped the items of regions that are no longer members"
            );
            if let Some(indexer) = &self.indexer {
                indexer.remove(slots, digest.hash().to_hex());
            }
        }
        self.store
            .set_meta(PURGED_META, &self.membership().digest.0)?;
        Ok(purged)
    }

    /// Purges the items of non-members if the last purge was for another membership state
    /// (a crash between a membership change and its purge, or a store written before purging
    /// existed).
    fn purge_if_stale(&self) -> Result<(), StoreError> {
        let state = self.membership();
        if self.store.meta(PURGED_META)?.as_deref() == Some(&state.digest.0[..]) {
            return Ok(());
        }
        let own = self
            .store
            .meta(OWN_REGION_META)?
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .map(kim_protocol::PublicKey);
        let mut gone: Vec<kim_protocol::RegionId> = Vec::new();
        for entry in self.store.item_entries() {
            let entry = entry?;
            if !state.is_member(&entry.region)
                && Some(entry.region) != own
                && !gone.contains(&entry.region)
            {
                gone.push(entry.region);
            }
        }
        self.purge_regions(&gone)?;
        Ok(())
    }

    fn reevaluate_membership(&self) -> Result<(), StoreError> {
        let records: Vec<Record> = self
            .store
            .membership_records()?
            .into_iter()
            .filter_map(|bytes| Record::decode(bytes).ok())
            .collect();
        let state = evaluate(&self.charter, self.federation, records.iter());
        if let Ok(mut m) = self.membership.write() {
            *m = Arc::new(state);
        }
        Ok(())
    }

    /// Ingests one record and waits until it is durable.
    pub async fn ingest_one(&self, bytes: Vec<u8>, source: Source) -> Result<Accepted, Rejected> {
        self.ingest_batch(vec![bytes], source)
            .await
            .pop()
            .unwrap_or(Err(Rejected::Store("empty batch".into())))
    }

    /// Ingests many records with one signature batch, one atomic write and one flush.
    /// Results are in input order; nothing is acknowledged before it is durable.
    pub async fn ingest_batch(
        &self,
        batch: Vec<Vec<u8>>,
        source: Source,
    ) -> Vec<Result<Accepted, Rejected>> {
        self.pipeline(batch.into_iter().map(Input::Bytes).collect(), source)
            .await
    }

    /// The pipeline for gossiped records. `early` gets every record's forecast as soon as the
    /// checks before the store write have decided it: refused, already held, an older revision,
    /// or new (what the write will make of it, unless a concurrent write changes the item
    /// first). Gossip forwards on that forecast, so a hop waits for verification, not for the
    /// store. The returned results are final, as [`Ingest::ingest_batch`]'s.
    pub async fn ingest_forecast(
        &self,
        batch: Vec<Vec<u8>>,
        source: Source,
        early: impl FnOnce(Vec<Result<Accepted, Rejected>>) + Send,
    ) -> Vec<Result<Accepted, Rejected>> {
        self.pipeline_with(
            batch.into_iter().map(Input::Bytes).collect(),
            source,
            Some(Box::new(early)),
        )
        .await
    }

    /// The same pipeline for records whose signatures the caller verified a moment ago (import
    /// checks a whole bundle before writing any of it), so the crypto is not done twice.
    /// Everything else — held check, validation, authorisation, resolution — runs as usual.
    pub async fn ingest_verified(
        &self,
        records: Vec<Record>,
        source: Source,
    ) -> Vec<Result<Accepted, Rejected>> {
        self.pipeline(
            records
                .into_iter()
                .map(|r| Input::Verified(Box::new(r)))
                .collect(),
            source,
        )
        .await
    }

    async fn pipeline(&self, batch: Vec<Input>, source: Source) -> Vec<Result<Accepted, Rejected>> {
        self.pipeline_with(batch, source, None).await
    }

    async fn pipeline_with(
        &self,
        batch: Vec<Input>,
        source: Source,
        early: Option<Forecast<'_>>,
    ) -> Vec<Result<Accepted, Rejected>> {
        let started = std::time::Instant::now();
        let len = batch.len();
        let store = self.store.clone();
        let membership = self.membership();
        let checked_state = membership.digest;
        let ctx = Context {
            federation: self.federation,
            now_ms: (self.clock)(),
        };
        // Read before any held check, so a write applied after it is caught under the lock.
        let generation = self.generation.load(Ordering::Acquire);
        let keys = Arc::clone(&self.author_keys);
        let check = move || check_batch(&store, &keys, batch, &ctx, &membership, source);
        let checked = if len >= OFFLOAD_RECORDS_MIN {
            // Pure CPU for milliseconds: off the async runtime, and beside another batch's write.
            match tokio::task::spawn_blocking(check).await {
                Ok(checked) => checked,
                Err(err) => {
                    let err = Rejected::Store(format!("checking thread failed: {err}"));
                    return (0..len)
                        .map(|_| Err(self.reject(err.clone(), source)))
                        .collect();
                }
            }
        } else {
            check()
        };
        let CheckedBatch {
            results,
            passed,
            decode_us,
            verify_us,
            validate_us,
        } = checked;
        // Counted and logged here, on the pipeline's side of the thread hop.
        let mut results: Vec<Option<Result<Accepted, Rejected>>> = results
            .into_iter()
            .map(|r| r.map(|r| r.map_err(|err| self.reject(err, source))))
            .collect();
        if let Some(early) = early {
            early(self.forecast(&results, &passed));
        }
        let checked_at = started.elapsed();
        let count = passed.len();
        if !passed.is_empty() {
            let positions: Vec<usize> = passed.iter().map(|(i, _)| *i).collect();
            match self.write(passed, generation, checked_state, source).await {
                Ok(outcomes) => {
                    for (i, outcome) in positions.into_iter().zip(outcomes) {
                        results[i] = Some(outcome.map_err(|err| self.reject(err, source)));
                    }
                }
                Err(err) => {
                    let err = Rejected::from(err);
                    tracing::error!(cause = %err, "store write failed; batch not acknowledged");
                    for i in positions {
                        results[i] = Some(Err(self.reject(err.clone(), source)));
                    }
                }
            }
        }
        tracing::debug!(
            ?source,
            records = count,
            decode_us,
            verify_us,
            validate_us,
            check_wall_us = checked_at.as_micros() as u64,
            write_us = (started.elapsed() - checked_at).as_micros() as u64,
            "ingest batch"
        );
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Rejected::Store("record lost in pipeline".into()))))
            .collect()
    }

    /// Hands the batch's new winners to the indexer with the store's new digest as their
    /// generation, without waiting for them to be searchable ([`Ingest::search_fresh`] is
    /// where a reader waits for its own writes).
    /// A failure there never loses data: the indexer rebuilds the index from the store (and a
    /// start would, because its generation no longer matches).
    #[allow(clippy::too_many_arguments)]
    fn update_index(
        &self,
        indexer: &crate::indexer::Indexer,
        room: crate::indexer::Room,
        checked: Vec<(usize, Record)>,
        changed: &[(kim_protocol::RegionId, usize, bool)],
        mark: Option<u64>,
        digest: &StateDigest,
        source: Source,
    ) {
        // The records move to the indexer: the batch needs them no more.
        let mut records: Vec<Option<Record>> = checked.into_iter().map(|(_, r)| Some(r)).collect();
        let docs: Vec<crate::indexer::Doc> = changed
            .iter()
            .filter_map(|&(region, position, first)| {
                let record = records.get_mut(position).and_then(Option::take)?;
                Some(crate::indexer::Doc {
                    region,
                    record,
                    first,
                })
            })
            .collect();
        // Saved searches see every new item, whatever path it came by, once it is searchable.
        let items: Vec<Slot> = docs
            .iter()
            .map(|d| slot_of(&d.region, &d.record.content))
            .collect();
        let origin = if matches!(source, Source::Api | Source::Import) {
            crate::indexer::Origin::Local
        } else {
            crate::indexer::Origin::Network
        };
        indexer.submit(room, docs, mark, items, digest.hash().to_hex(), origin);
    }

    /// Documents waiting for the search indexer (0 without one).
    pub fn index_backlog(&self) -> usize {
        self.indexer
            .as_ref()
            .map_or(0, crate::indexer::Indexer::backlog)
    }

    /// Search index commits since start (0 without an indexer).
    pub fn index_commits(&self) -> u64 {
        self.indexer
            .as_ref()
            .map_or(0, crate::indexer::Indexer::commits)
    }

    /// Flushes what gossip and sync stored since the last flush, if anything; the node calls
    /// this every [`REPLICA_FLUSH_INTERVAL`].
    /// Returns whether there was anything to flush.
    pub async fn flush_replicated(&self) -> Result<bool, StoreError> {
        if !self.unflushed.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        if let Err(e) = self.store.flush().await {
            self.unflushed.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(true)
    }

    /// Waits until every change handed to the search index so far is searchable.
    pub async fn flush_search(&self) {
        if let Some(indexer) = &self.indexer {
            let _ = indexer.flush().await;
        }
    }

    /// Completes once every record staff published or imported before this call is searchable
    /// (read-your-writes): every reader of the index calls this first. Costs
    /// nothing when those are already committed; otherwise commits now. Records from the
    /// network may still be on their way (within [`crate::indexer::COMMIT_INTERVAL_MAX`]).
    pub async fn search_fresh(&self) {
        if let Some(indexer) = &self.indexer {
            indexer.fresh().await;
        }
    }

    /// Drops a superseded winner and any equivocation evidence of its revision.
    fn supersede(
        &self,
        writes: &mut WriteSet,
        digest: &mut StateDigest,
        evidence: &mut Evidence,
        current: &ItemEntry,
    ) -> Result<(), StoreError> {
        writes.remove_record(&current.id);
        digest.remove(&current.id);
        let slot = (current.region, current.kind, current.key.clone());
        let mut ids = self
            .store
            .equivocations(&current.region, current.kind, &current.key)?;
        ids.extend(evidence.remove(&slot).unwrap_or_default());
        ids.sort();
        ids.dedup();
        for id in ids {
            writes.remove_record(&id);
            digest.remove(&id);
            writes.unmark_equivocation(&current.region, current.kind, &current.key, &id);
        }
        Ok(())
    }

    /// Every record's outcome as far as the checks decided it, and for those that passed, what
    /// the write would make of them against their items as the store holds them now.
    fn forecast(
        &self,
        results: &[Option<Result<Accepted, Rejected>>],
        passed: &[(usize, Record)],
    ) -> Vec<Result<Accepted, Rejected>> {
        let mut out: Vec<Result<Accepted, Rejected>> = results
            .iter()
            .map(|r| {
                r.clone()
                    .unwrap_or(Err(Rejected::Store("not decided".into())))
            })
            .collect();
        let membership = self.membership();
        for (i, record) in passed {
            let c = &record.content;
            let outcome = if !c.kind.is_replicated()
                || c.kind.is_membership()
                || !c.kind.withdrawable()
            {
                Ok(Accepted::Stored { id: record.id })
            } else {
                let region = membership.region_of(&c.author).unwrap_or(c.author);
                self.store
                    .item(&region, c.kind, &c.key)
                    .map(|current| outcome_against(current.as_ref(), &item_entry(record, region)))
                    .map_err(Rejected::from)
            };
            if let Some(slot) = out.get_mut(*i) {
                *slot = outcome;
            }
        }
        out
    }

    /// Resolves and writes checked records atomically, then flushes if the source is
    /// acknowledged ([`Source::acknowledged`]). `generation` is the write
    /// count the batch's held check saw: if another batch was written since, each record is
    /// checked again here, under the lock, so nothing is stored or counted in the digest twice.
    ///
    /// Authorisation was judged against the membership of `checked_state`; if membership moved
    /// on before the lock was taken (a removal written by another batch meanwhile), each item
    /// record is judged again here, so a region's items cannot slip in after its purge.
    #[allow(clippy::type_complexity)]
    async fn write(
        &self,
        checked: Vec<(usize, Record)>,
        generation: u64,
        checked_state: kim_protocol::Hash32,
        source: Source,
    ) -> Result<Vec<Result<Accepted, Rejected>>, StoreError> {
        let mut recent = self.writer.lock().await;
        let now = self.generation.load(Ordering::Acquire);
        // What was written since this batch's held check: the remembered id sets of those
        // writes, or else (too long ago, too big) one store read per record.
        let written_since = (now != generation).then(|| recent.since(generation, now));
        let mut stored_ids = std::collections::HashSet::with_capacity(checked.len());
        let membership = self.membership();
        let mut writes = WriteSet::default();
        let mut digest = self.digest();
        // Winners decided earlier in this batch, so a batch may carry several revisions.
        let mut overlay: HashMap<Slot, ItemEntry> = HashMap::new();
        let mut seen_in_batch = std::collections::HashSet::new();
        let mut evidence: Evidence = HashMap::new();
        // Items whose winner changed, for the search index after the write is durable: the
        // region, the record's position, and whether the store held no winner for the item.
        let mut changed: Vec<(kim_protocol::RegionId, usize, bool)> = Vec::new();
        let mut outcomes = Vec::with_capacity(checked.len());
        let mut membership_changed = false;
        for (position, (_, record)) in checked.iter().enumerate() {
            let c = &record.content;
            let held = match &written_since {
                None => false,
                Some(Some(sets)) => sets.iter().any(|ids| ids.contains(&record.id)),
                Some(None) => self.store.holds(&record.id, c.kind.is_replicated())?,
            };
            if held || !seen_in_batch.insert(record.id) {
                outcomes.push(Ok(Accepted::Duplicate { id: record.id }));
                continue;
            }
            if membership.digest != checked_state
                && !c.kind.is_membership()
                && let Err(refused) = authorise(&membership, record, source)
            {
                outcomes.push(Err(refused));
                continue;
            }
            if !c.kind.is_replicated() {
                // Expressions of interest go to one region only: kept, never synced or gossiped.
                writes.put_direct(&record.id, &record.bytes);
                outcomes.push(Ok(Accepted::Stored { id: record.id }));
                continue;
            }
            if c.kind.is_membership() || !c.kind.withdrawable() {
                writes.put_record(&record.id, &record.bytes);
                digest.add(&record.id);
                if c.kind.is_membership() {
                    writes.mark_membership(&record.id);
                    membership_changed = true;
                }
                outcomes.push(Ok(Accepted::Stored { id: record.id }));
                continue;
            }
            let region = membership.region_of(&c.author).unwrap_or(c.author);
            let slot = (region, c.kind, c.key.clone());
            let current = match overlay.get(&slot) {
                Some(entry) => Some(entry.clone()),
                None => self.store.item(&region, c.kind, &c.key)?,
            };
            let entry = item_entry(record, region);
            let first_winner = current.is_none();
            // What becomes of the record is decided in one place, `outcome_against`, which the
            // gossip forecast uses too; here only the writes that follow from it.
            let outcome = outcome_against(current.as_ref(), &entry);
            // A newer revision replaces the winner; so does a tombstone that wins an
            // equivocation (no content body is kept as evidence beside it: erasure must hold).
            let replaces = matches!(outcome, Accepted::Stored { .. })
                || (matches!(outcome, Accepted::Equivocation { wins: true, .. })
                    && entry.tombstone);
            match (&current, &outcome) {
                (None, _) => {
                    writes.put_record(&record.id, &record.bytes);
                    digest.add(&record.id);
                    writes.set_item(&entry, None);
                    overlay.insert(slot, entry);
                }
                (Some(cur), _) if replaces => {
                    self.supersede(&mut writes, &mut digest, &mut evidence, cur)?;
                    writes.put_record(&record.id, &record.bytes);
                    digest.add(&record.id);
                    writes.set_item(&entry, Some(cur));
                    overlay.insert(slot, entry);
                }
                (Some(cur), Accepted::Equivocation { wins, .. }) => {
                    tracing::warn!(
                        author = %c.author, kind = %c.kind, key = %c.key,
                        revision = c.revision, "equivocation: two records with one revision"
                    );
                    writes.put_record(&record.id, &record.bytes);
                    digest.add(&record.id);
                    let loser = if *wins { cur.id } else { record.id };
                    writes.mark_equivocation(&region, c.kind, &c.key, &loser);
                    evidence.entry(slot.clone()).or_default().push(loser);
                    if *wins {
                        writes.set_item(&entry, Some(cur));
                        overlay.insert(slot, entry);
                    }
                }
                // A duplicate or an older revision: nothing to write.
                (Some(_), _) => {}
            }
            if overlay
                .get(&slot_of(&region, c))
                .is_some_and(|winner| winner.id == record.id)
            {
                changed.push((region, position, first_winner));
            }
            outcomes.push(Ok(outcome));
        }
        writes.set_digest(&digest);
        // Room in the indexer's queue is taken before the write: once it is applied, nothing
        // between it and the handover to the indexer may wait, or a cancelled caller would
        // leave the index without these items under a generation that claims them. Replicated
        // and imported batches wait here while the indexer is a full queue behind (bounded
        // memory); a staff publish never waits for it.
        let room = match &self.indexer {
            Some(indexer) if matches!(source, Source::Api) => Some(indexer.room_unbounded()),
            Some(indexer) => Some(indexer.room(changed.len()).await),
            None => None,
        };
        let resolved = std::time::Instant::now();
        // Taken before the write: a rebuild that runs from here on may index these items too.
        let mark = self.search.as_ref().map(|index| index.rebuild_mark());
        self.store.apply(writes)?;
        // The in-memory state follows the applied write set at once, with no await in between:
        // a caller that gives up during the flush cannot leave the digest or membership behind
        // the store.
        for outcome in outcomes.iter().flatten() {
            if outcome.is_new() {
                stored_ids.insert(outcome.id());
            }
        }
        recent.remember(now + 1, stored_ids);
        self.generation.store(now + 1, Ordering::Release);
        let profile_changed = checked.iter().zip(&outcomes).any(|((_, r), o)| {
            r.content.kind == Kind::RegionProfile && o.as_ref().is_ok_and(Accepted::is_new)
        });
        // Handed over under the lock, so the indexer sees write sets in the order applied, and
        // before anything below can fail: the items are in the store now.
        if let (Some(indexer), Some(room)) = (&self.indexer, room) {
            self.update_index(indexer, room, checked, &changed, mark, &digest, source);
        }
        if let Ok(mut d) = self.digest.lock() {
            *d = digest;
        }
        // Which peers may connect, and where members listen, follow from membership records
        // and region profiles only: the node recomputes them when this counter moves.
        if membership_changed || profile_changed {
            self.access_changes.fetch_add(1, Ordering::AcqRel);
        }
        if membership_changed {
            self.reevaluate_membership()?;
            let after = self.membership();
            let gone: Vec<kim_protocol::RegionId> = membership
                .members
                .keys()
                .filter(|region| !after.is_member(region))
                .copied()
                .collect();
            if !gone.is_empty() {
                self.purge_regions(&gone)?;
            }
        }
        // The flush waits outside the lock: the next batch applies meanwhile, and one flush
        // then covers both.
        drop(recent);
        let applied = std::time::Instant::now();
        if source.acknowledged() {
            self.store.flush().await?;
        } else {
            self.unflushed.store(true, Ordering::Release);
        }
        tracing::trace!(
            apply_us = (applied - resolved).as_micros() as u64,
            flush_us = applied.elapsed().as_micros() as u64,
            "store write"
        );
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kim_protocol::membership::federation_id;
    use kim_protocol::samples;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    /// A one-founder federation on a fresh store, and that founder's key.
    fn pipeline(
        dir: &std::path::Path,
    ) -> Result<(Ingest, ed25519_dalek::SigningKey), Box<dyn std::error::Error>> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let key = samples::signing_key(&mut rng);
        let charter = samples::charter("test", std::slice::from_ref(&key));
        let federation = federation_id(&charter.to_bytes()?);
        let store = Store::open(dir, crate::store::CACHE_BYTES_DEFAULT, true)?;
        Ok((Ingest::open(store, federation, charter)?, key))
    }

    /// [`pipeline`] under `dir/store` with a search index under `dir/search` attached, its
    /// indexer's queue holding `queue` documents.
    fn searchable_pipeline(
        dir: &std::path::Path,
        queue: usize,
    ) -> Result<
        (
            Ingest,
            ed25519_dalek::SigningKey,
            Arc<crate::search::SearchIndex>,
        ),
        Box<dyn std::error::Error>,
    > {
        let (ingest, key) = pipeline(&dir.join("store"))?;
        let index = Arc::new(crate::search::SearchIndex::open(&dir.join("search"))?);
        ingest.reindex_if_stale(&index)?;
        Ok((
            ingest.with_search_queue(Arc::clone(&index), queue),
            key,
            index,
        ))
    }

    fn offer(
        ingest: &Ingest,
        key: &ed25519_dalek::SigningKey,
        seed: u64,
        item: &str,
    ) -> Result<Record, kim_protocol::Error> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let content = samples::content(
            &mut rng,
            ingest.federation(),
            samples::public_key(key),
            Kind::Cooperation,
            item,
            system_now_ms() - 60_000,
        );
        Record::sign(&content, key)
    }

    /// Three founders; the third is voted out (majority of the two others).
    fn three_founders(
        dir: &std::path::Path,
    ) -> Result<(Ingest, Vec<ed25519_dalek::SigningKey>), Box<dyn std::error::Error>> {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let keys: Vec<_> = (0..3).map(|_| samples::signing_key(&mut rng)).collect();
        let charter = samples::charter("test", &keys);
        let federation = federation_id(&charter.to_bytes()?);
        let store = Store::open(dir, crate::store::CACHE_BYTES_DEFAULT, true)?;
        Ok((Ingest::open(store, federation, charter)?, keys))
    }

    fn removal_vote(
        ingest: &Ingest,
        voter: &ed25519_dalek::SigningKey,
        target: &ed25519_dalek::SigningKey,
    ) -> Result<Vec<u8>, kim_protocol::Error> {
        let content = kim_protocol::Content {
            format: kim_protocol::envelope::FORMAT_VERSION,
            federation: ingest.federation(),
            author: samples::public_key(voter),
            kind: Kind::RemovalVote,
            key: "remove".into(),
            revision: 1,
            created_at_ms: system_now_ms() - 1_000,
            expires_at_ms: None,
            body: Body::RemovalVote(kim_protocol::membership::RemovalVote {
                state: ingest.membership().digest,
                target: samples::public_key(target),
                reason: "gone".into(),
            }),
        };
        Ok(Record::sign(&content, voter)?.bytes)
    }

    /// A removed region's items leave the store with it, and an item checked while the region
    /// was still a member but written after the removal is refused under the writer lock, so
    /// no node keeps what the others dropped.
    #[tokio::test]
    async fn a_removed_regions_items_are_purged_and_a_late_batch_cannot_bring_them_back()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (ingest, keys) = three_founders(dir.path())?;
        let target = samples::public_key(&keys[2]);
        let early = offer(&ingest, &keys[2], 1, "early")?;
        let kept = offer(&ingest, &keys[0], 2, "kept")?;
        for r in ingest
            .ingest_batch(vec![early.bytes.clone(), kept.bytes.clone()], Source::Sync)
            .await
        {
            assert!(r?.is_new());
        }
        // Checked now, while region 2 is a member; written after the removal.
        let state_at_check = ingest.membership().digest;
        let generation = ingest.generation.load(Ordering::Acquire);
        let late = offer(&ingest, &keys[2], 3, "late")?;
        let votes = vec![
            removal_vote(&ingest, &keys[0], &keys[2])?,
            removal_vote(&ingest, &keys[1], &keys[2])?,
        ];
        for r in ingest.ingest_batch(votes, Source::Sync).await {
            assert!(r?.is_new());
        }
        assert!(!ingest.membership().is_member(&target));
        assert!(
            ingest
                .store()
                .item(&target, Kind::Cooperation, "early")?
                .is_none()
        );
        assert!(!ingest.store().has_record(&early.id)?);
        assert!(
            ingest
                .store()
                .item(&samples::public_key(&keys[0]), Kind::Cooperation, "kept")?
                .is_some()
        );
        let passed = vec![(0usize, late.clone())];
        let outcomes = ingest
            .write(passed.clone(), generation, state_at_check, Source::Sync)
            .await?;
        assert_eq!(
            outcomes[0].as_ref().err().map(Rejected::code),
            Some("auth.not_member")
        );
        assert!(!ingest.store().has_record(&late.id)?);
        // The store's digest matches what it holds, and a reopened pipeline purges nothing more.
        let held = ingest.store().record_ids().count() as u64;
        assert_eq!(ingest.digest().count(), held);
        assert_eq!(ingest.store().digest()?, ingest.digest());
        Ok(())
    }

    /// Staff's and directly delivered records are flushed before they are acknowledged; what
    /// gossip and sync stored waits for the node's periodic flush, which then has work to do.
    #[tokio::test]
    async fn only_replicated_writes_wait_for_the_periodic_flush()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (ingest, key) = pipeline(dir.path())?;
        assert!(!ingest.flush_replicated().await?, "nothing written yet");
        let published = offer(&ingest, &key, 1, "published")?;
        let result = ingest
            .ingest_one(published.bytes.clone(), Source::Api)
            .await;
        assert!(result.is_ok_and(|a| a.is_new()));
        assert!(
            !ingest.flush_replicated().await?,
            "the API write was flushed at once"
        );
        for (seed, source) in [(2, Source::Gossip), (3, Source::Sync)] {
            let record = offer(&ingest, &key, seed, &format!("replicated-{seed}"))?;
            let result = ingest.ingest_one(record.bytes.clone(), source).await;
            assert!(result.is_ok_and(|a| a.is_new()), "{source:?}");
            // A replay stores nothing and leaves nothing to flush beyond the first write.
            let again = ingest.ingest_one(record.bytes.clone(), source).await;
            assert!(again.is_ok_and(|a| !a.is_new()));
            assert!(
                ingest.flush_replicated().await?,
                "{source:?} waits for the flush"
            );
            assert!(!ingest.flush_replicated().await?, "and one flush covers it");
            assert!(ingest.store().has_record(&record.id)?);
        }
        Ok(())
    }

    /// The overview counts statuses from the search index and the withdrawn index; it must
    /// agree with the store's item entries (what it read before) now and once offers expire.
    #[tokio::test]
    async fn the_overview_counts_what_the_item_entries_say_also_after_expiry()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (ingest, key, _index) =
            searchable_pipeline(dir.path(), crate::indexer::QUEUE_DOCS_MAX)?;
        for seed in 0..12u64 {
            let record = offer(&ingest, &key, seed, &format!("offer-{seed}"))?;
            assert!(
                ingest
                    .ingest_one(record.bytes, Source::Sync)
                    .await?
                    .is_new()
            );
        }
        // Withdraw two: a newer revision that is a tombstone.
        for seed in [3u64, 7] {
            let current = ingest
                .store()
                .item(
                    &samples::public_key(&key),
                    Kind::Cooperation,
                    &format!("offer-{seed}"),
                )?
                .ok_or("offer not stored")?;
            let bytes = ingest.store().record(&current.id)?.ok_or("no record")?;
            let mut content = Record::decode(bytes)?.content;
            content.revision += 1;
            content.body = kim_protocol::Body::Tombstone(kim_protocol::types::Tombstone {
                reason: "withdrawn in a test".into(),
            });
            content.expires_at_ms = None;
            let tombstone = Record::sign(&content, &key)?;
            assert!(
                ingest
                    .ingest_one(tombstone.bytes, Source::Sync)
                    .await?
                    .is_new()
            );
        }
        ingest.flush_search().await;
        let expected = |now_ms: u64| -> Result<BTreeMap<String, u64>, StoreError> {
            let mut by_status = BTreeMap::new();
            for entry in ingest.store().item_entries() {
                let entry = entry?;
                let status = if entry.tombstone {
                    "withdrawn"
                } else if entry.is_live(now_ms) {
                    "live"
                } else {
                    "expired"
                };
                *by_status.entry(status.to_string()).or_default() += 1;
            }
            Ok(by_status)
        };
        let now = system_now_ms();
        let years_later = now + 20 * 365 * 86_400_000;
        for at in [now, years_later] {
            let overview = crate::overview::overview(&ingest, at)?;
            assert_eq!(overview.totals.by_status, expected(at)?, "at {at}");
            assert_eq!(
                overview
                    .totals
                    .by_kind
                    .get("cooperation")
                    .copied()
                    .unwrap_or(0),
                expected(at)?.get("live").copied().unwrap_or(0)
            );
        }
        assert_eq!(expected(now)?.get("withdrawn"), Some(&2));
        assert!(expected(years_later)?.contains_key("expired"));
        Ok(())
    }

    /// A failed search-index commit drops the changes it held (they are rolled back), while the
    /// store keeps the records. The indexer then rebuilds the index from the store while the
    /// node runs, so nothing stored stays unsearchable until a restart, and the index never
    /// claims a store state it does not hold.
    #[tokio::test]
    async fn a_failed_index_commit_is_repaired_by_a_rebuild_from_the_store()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::search::Query;
        let dir = tempfile::tempdir()?;
        let (ingest, key, index) = searchable_pipeline(dir.path(), crate::indexer::QUEUE_DOCS_MAX)?;
        // A saved search every offer matches: it must hear of both, the lost one included.
        let everything = crate::search::SearchParams {
            kind: Some("cooperation".into()),
            ..Default::default()
        };
        crate::saved::add(
            ingest.store(),
            crate::saved::SavedSearchInput {
                name: "every offer".into(),
                query: everything,
            },
            system_now_ms(),
        )?;

        let lost = offer(&ingest, &key, 1, "lost-in-the-index")?;
        index.fail_next_commit_for_test();
        assert!(
            ingest
                .ingest_one(lost.bytes.clone(), Source::Sync)
                .await?
                .is_new()
        );
        ingest.flush_search().await;
        assert!(ingest.store().has_record(&lost.id)?);

        let later = offer(&ingest, &key, 2, "indexed-later")?;
        assert!(
            ingest
                .ingest_one(later.bytes.clone(), Source::Sync)
                .await?
                .is_new()
        );
        ingest.flush_search().await;
        assert_eq!(
            index.count(&Query::default())?,
            2,
            "the lost record was not re-indexed"
        );
        assert_eq!(
            index.generation(),
            Some(ingest.digest().hash().to_hex()),
            "after the rebuild the index matches the store"
        );
        let mut notified: Vec<String> = crate::saved::notifications(ingest.store(), false, 10)?
            .into_iter()
            .map(|n| n.key)
            .collect();
        notified.sort();
        assert_eq!(notified, ["indexed-later", "lost-in-the-index"]);
        Ok(())
    }

    /// A rebuild replaces whatever the index writer holds uncommitted (an update taken just
    /// before it), instead of indexing those items a second time.
    #[tokio::test]
    async fn a_rebuild_drops_uncommitted_updates_instead_of_doubling_them()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::search::{Query, SearchIndex};
        let dir = tempfile::tempdir()?;
        let (ingest, key) = pipeline(&dir.path().join("store"))?;
        let index = SearchIndex::open(&dir.path().join("search"))?;
        let records = [
            offer(&ingest, &key, 1, "one")?,
            offer(&ingest, &key, 2, "two")?,
        ];
        for record in &records {
            assert!(
                ingest
                    .ingest_one(record.bytes.clone(), Source::Sync)
                    .await?
                    .is_new()
            );
        }
        index.upsert(&records[0], samples::public_key(&key))?;
        let digest = ingest.digest().hash().to_hex();
        assert_eq!(
            crate::indexer::rebuild_from_store(ingest.store(), &index, &digest)?,
            2
        );
        assert_eq!(index.count(&Query::default())?, 2);
        assert_eq!(index.generation(), Some(digest));
        Ok(())
    }

    /// A replicated batch that finds the indexer's queue full waits before its store write. A
    /// caller that gives up meanwhile (a sync session dropped, an import whose client left)
    /// leaves nothing behind in the store or the index, and the same record goes through
    /// once the queue has room.
    #[tokio::test]
    async fn a_batch_cancelled_while_the_index_queue_is_full_leaves_nothing_half_done()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::search::Query;
        let dir = tempfile::tempdir()?;
        let (ingest, key, index) = searchable_pipeline(dir.path(), 1)?;

        // The indexer is held up (another thread has the index writer, as a rebuild would)
        // with one document taken: the queue is full.
        let held = index.hold_writer_for_test();
        let first = offer(&ingest, &key, 1, "first")?;
        assert!(
            ingest
                .ingest_one(first.bytes.clone(), Source::Sync)
                .await?
                .is_new()
        );
        let digest = ingest.digest();

        // The next batch waits for room; its caller gives up.
        let second = offer(&ingest, &key, 2, "second")?;
        let waiting = ingest.ingest_one(second.bytes.clone(), Source::Sync);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), waiting)
                .await
                .is_err(),
            "a batch was written while the indexer's queue was full"
        );
        assert!(!ingest.store().holds(&second.id, true)?);
        assert_eq!(ingest.digest(), digest);

        // Once the indexer can work, the same record is accepted and everything is searchable
        // under the store's state.
        held.release();
        assert!(
            ingest
                .ingest_one(second.bytes.clone(), Source::Sync)
                .await?
                .is_new()
        );
        ingest.flush_search().await;
        assert_eq!(index.count(&Query::default())?, 2);
        assert_eq!(index.generation(), Some(ingest.digest().hash().to_hex()));
        Ok(())
    }

    /// A batch whose held check ran before another batch stored the same records (two sources
    /// delivering the same records at once) must change nothing when it reaches the writer:
    /// not even equivocation evidence, which resolution alone would store and count again.
    #[tokio::test]
    async fn a_batch_checked_before_a_concurrent_write_changes_nothing()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (ingest, key) = pipeline(dir.path())?;
        let winner_or_loser = [
            offer(&ingest, &key, 1, "twin")?,
            offer(&ingest, &key, 2, "twin")?,
        ];
        let plain = offer(&ingest, &key, 3, "single")?;
        let batch: Vec<Record> = [winner_or_loser.to_vec(), vec![plain]].concat();
        let generation_seen = ingest.generation.load(Ordering::Acquire);
        let first = ingest
            .ingest_batch(
                batch.iter().map(|r| r.bytes.clone()).collect(),
                Source::Sync,
            )
            .await;
        assert!(
            first.iter().all(|r| r.as_ref().is_ok_and(Accepted::is_new)),
            "{first:?}"
        );
        let digest = ingest.digest();
        assert_eq!(digest.count(), 3, "winner, evidence and the single item");
        // The second delivery, checked while nothing was held yet, reaches the writer late.
        let passed: Vec<(usize, Record)> = batch.into_iter().enumerate().collect();
        // Once with the writer remembering the write in between, once reading the store.
        for forget in [false, true] {
            if forget {
                ingest.writer.lock().await.sets.clear();
            }
            let state = ingest.membership().digest;
            let outcomes = ingest
                .write(passed.clone(), generation_seen, state, Source::Sync)
                .await?;
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, Ok(Accepted::Duplicate { .. }))),
                "{outcomes:?}"
            );
            assert_eq!(ingest.digest(), digest);
        }
        assert_eq!(ingest.store().digest()?, digest);
        assert_eq!(ingest.store().record_ids().count(), 3);
        Ok(())
    }

    /// Gossip forwards on the forecast: it arrives while the store write is still held back
    /// (here by the writer lock), and it says what the write then does with each record: new,
    /// held, older revision, forged.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_forecast_comes_before_the_write_and_agrees_with_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (ingest, key) = pipeline(dir.path())?;
        let ingest = Arc::new(ingest);
        let held = offer(&ingest, &key, 1, "held")?;
        let revised = offer(&ingest, &key, 2, "revised")?;
        let mut content = revised.content.clone();
        content.revision += 1;
        let newer = Record::sign(&content, &key)?;
        for record in [&held, &newer] {
            assert!(
                ingest
                    .ingest_one(record.bytes.clone(), Source::Sync)
                    .await?
                    .is_new()
            );
        }
        let fresh = offer(&ingest, &key, 3, "fresh")?;
        let mut forged = offer(&ingest, &key, 4, "forged")?.bytes;
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let batch = vec![
            fresh.bytes.clone(),
            held.bytes.clone(),
            revised.bytes.clone(),
            forged,
        ];
        let digest = ingest.digest();
        let writer = ingest.writer.lock().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let ingest = Arc::clone(&ingest);
            async move {
                ingest
                    .ingest_forecast(batch, Source::Gossip, move |forecast| {
                        let _ = tx.send(forecast);
                    })
                    .await
            }
        });
        let forecast = tokio::time::timeout(std::time::Duration::from_secs(30), rx).await??;
        // The write has not happened: the writer lock is still ours.
        assert_eq!(ingest.digest(), digest);
        assert!(!ingest.store().has_record(&fresh.id)?);
        assert!(
            matches!(forecast[0], Ok(Accepted::Stored { id }) if id == fresh.id),
            "{forecast:?}"
        );
        assert!(
            matches!(forecast[1], Ok(Accepted::Duplicate { .. })),
            "{forecast:?}"
        );
        assert!(
            matches!(forecast[2], Ok(Accepted::Older { .. })),
            "{forecast:?}"
        );
        assert!(
            matches!(forecast[3], Err(Rejected::Invalid(_))),
            "{forecast:?}"
        );
        drop(writer);
        let written = task.await?;
        assert_eq!(written.len(), forecast.len());
        for (w, f) in written.iter().zip(&forecast) {
            match (w, f) {
                (Ok(w), Ok(f)) => assert_eq!(w, f),
                (Err(w), Err(f)) => assert_eq!(w.code(), f.code()),
                _ => panic!("written {written:?} but forecast {forecast:?}"),
            }
        }
        assert!(ingest.store().has_record(&fresh.id)?);
        Ok(())
    }

    /// Two records of one item with one revision: the second is kept as evidence beside the
    /// winner the rule picks; a tombstone of that revision then wins and erases both bodies; a
    /// body of that revision arriving after the tombstone is older. The gossip forecast says
    /// the same as the write at every step.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn equivocations_keep_evidence_and_a_tombstone_of_the_revision_erases_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (ingest, key) = pipeline(dir.path())?;
        let at_revision_one = |seed: u64, tombstone: bool| -> Result<Record, kim_protocol::Error> {
            let mut content = offer(&ingest, &key, seed, "twice")?.content;
            content.revision = 1;
            if tombstone {
                content.body = kim_protocol::Body::Tombstone(kim_protocol::types::Tombstone {
                    reason: "withdrawn in a test".into(),
                });
                content.expires_at_ms = None;
            }
            Record::sign(&content, &key)
        };
        let ingest_with_forecast = |record: &Record| {
            let bytes = record.bytes.clone();
            let ingest = &ingest;
            async move {
                let forecast = std::sync::Mutex::new(Vec::new());
                let written = ingest
                    .ingest_forecast(vec![bytes], Source::Gossip, |f| {
                        if let Ok(mut slot) = forecast.lock() {
                            *slot = f;
                        }
                    })
                    .await;
                let forecast = forecast.into_inner().unwrap_or_default();
                assert_eq!(forecast.len(), 1);
                assert_eq!(written.len(), 1);
                match (&written[0], &forecast[0]) {
                    (Ok(w), Ok(f)) => assert_eq!(w, f),
                    other => panic!("written and forecast differ: {other:?}"),
                }
                written.into_iter().next()
            }
        };
        let region = samples::public_key(&key);
        let (a, b) = (at_revision_one(11, false)?, at_revision_one(12, false)?);
        let first = ingest_with_forecast(&a).await;
        assert!(
            matches!(first, Some(Ok(Accepted::Stored { .. }))),
            "{first:?}"
        );
        let second = ingest_with_forecast(&b).await;
        let Some(Ok(Accepted::Equivocation { wins, .. })) = second else {
            panic!("not an equivocation: {second:?}");
        };
        let (winner, loser) = if wins { (&b, &a) } else { (&a, &b) };
        let entry = ingest.store().item(&region, Kind::Cooperation, "twice")?;
        assert_eq!(entry.map(|e| e.id), Some(winner.id));
        assert_eq!(
            ingest
                .store()
                .equivocations(&region, Kind::Cooperation, "twice")?,
            vec![loser.id]
        );
        assert!(ingest.store().has_record(&a.id)? && ingest.store().has_record(&b.id)?);

        let tombstone = at_revision_one(13, true)?;
        let withdrawn = ingest_with_forecast(&tombstone).await;
        assert!(
            matches!(
                withdrawn,
                Some(Ok(Accepted::Equivocation { wins: true, .. }))
            ),
            "{withdrawn:?}"
        );
        let entry = ingest
            .store()
            .item(&region, Kind::Cooperation, "twice")?
            .ok_or("no winner")?;
        assert!(entry.tombstone && entry.id == tombstone.id);
        assert!(!ingest.store().has_record(&a.id)? && !ingest.store().has_record(&b.id)?);
        assert!(
            ingest
                .store()
                .equivocations(&region, Kind::Cooperation, "twice")?
                .is_empty()
        );

        let late = at_revision_one(14, false)?;
        let refused = ingest_with_forecast(&late).await;
        assert!(
            matches!(refused, Some(Ok(Accepted::Older { .. }))),
            "{refused:?}"
        );
        assert!(!ingest.store().has_record(&late.id)?);
        assert_eq!(ingest.store().digest()?, ingest.digest());
        Ok(())
    }

    /// The key cache answers as `author_key` does, refusals included, and stays bounded.
    #[test]
    fn author_keys_are_kept_as_decoded_and_bounded() {
        let keys = AuthorKeys::default();
        let good = kim_protocol::bytes::PublicKey(
            ed25519_dalek::SigningKey::from_bytes(&[5; 32])
                .verifying_key()
                .to_bytes(),
        );
        // The identity point: a weak key.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let weak = kim_protocol::bytes::PublicKey(weak);
        for _ in 0..2 {
            assert_eq!(keys.get(&good), author_key(&good));
            assert_eq!(keys.get(&weak), Err(kim_protocol::Error::WeakPublicKey));
        }
        for i in 0..(AUTHOR_KEYS_MAX as u32 + 10) {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            let author = kim_protocol::bytes::PublicKey(
                ed25519_dalek::SigningKey::from_bytes(&seed)
                    .verifying_key()
                    .to_bytes(),
            );
            assert!(keys.get(&author).is_ok());
        }
        let held = keys.0.lock().map(|k| k.len()).unwrap_or(usize::MAX);
        assert!(held <= AUTHOR_KEYS_MAX, "{held} keys kept");
        assert_eq!(keys.get(&good), author_key(&good));
    }

    /// Batches long enough to be checked on a blocking thread, several in flight at once with
    /// overlapping records: every record is stored once and the digest counts it once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_batches_in_flight_store_each_record_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (ingest, key) = pipeline(dir.path())?;
        let ingest = Arc::new(ingest);
        let records: Vec<Record> = (0..3 * OFFLOAD_RECORDS_MIN as u64)
            .map(|i| offer(&ingest, &key, 100 + i, &format!("item-{i}")))
            .collect::<Result<_, _>>()?;
        // Three batches, each overlapping the next by half.
        let step = OFFLOAD_RECORDS_MIN;
        let mut tasks = Vec::new();
        for start in [0, step / 2, step, 3 * step / 2, 2 * step] {
            let bytes: Vec<Vec<u8>> = records[start..start + step]
                .iter()
                .map(|r| r.bytes.clone())
                .collect();
            let ingest = Arc::clone(&ingest);
            tasks.push(tokio::spawn(async move {
                ingest.ingest_batch(bytes, Source::Sync).await
            }));
        }
        let mut new = 0;
        for task in tasks {
            for result in task.await? {
                if result?.is_new() {
                    new += 1;
                }
            }
        }
        assert_eq!(new, records.len());
        assert_eq!(ingest.digest().count(), records.len() as u64);
        assert_eq!(ingest.store().digest()?, ingest.digest());
        assert_eq!(ingest.store().record_ids().count(), records.len());
        Ok(())
    }
}
