//! The one ingest pipeline every record goes through, whatever its source (API, import, and
//! later gossip and sync):
//!
//! size check → decode → (already held? done) → verify (batched) → validate → authorise
//! (membership) → resolve against the current item → store (atomic batch, flushed) → index.
//!
//! Duplicates and older revisions change nothing. Every rejection is counted by its code and
//! logged once at debug level. One writer at a time (a tokio mutex held across the store write),
//! so resolution never races with itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use kim_protocol::digest::StateDigest;
use kim_protocol::envelope::{Body, Kind, Record, verify_batch};
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

/// The pipeline and the state it owns: membership, digest and rejection counters.
#[derive(Debug)]
pub struct Ingest {
    store: Store,
    federation: FederationId,
    charter: Charter,
    membership: RwLock<Arc<MembershipState>>,
    digest: Mutex<StateDigest>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    writer: tokio::sync::Mutex<()>,
    clock: fn() -> u64,
    /// The search index, updated after each durable write (absent in tools that only store).
    search: Option<Arc<crate::search::SearchIndex>>,
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
            writer: tokio::sync::Mutex::new(()),
            clock: system_now_ms,
            search: None,
        };
        ingest.reevaluate_membership()?;
        Ok(ingest)
    }

    /// Attaches the search index: from now on every durable write updates it. The caller has
    /// made sure the index matches the store (see [`Ingest::reindex_if_stale`]).
    pub fn with_search(mut self, index: Arc<crate::search::SearchIndex>) -> Ingest {
        self.search = Some(index);
        self
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
        let mut winners = Vec::new();
        for entry in self.store.item_entries() {
            let entry = entry?;
            if entry.tombstone || !crate::search::is_searchable(entry.kind) {
                continue;
            }
            if let Some(bytes) = self.store.record(&entry.id)? {
                let record = Record::decode(bytes).map_err(|e| {
                    anyhow::anyhow!("stored record {} does not decode: {e}", entry.id)
                })?;
                winners.push((entry.region, record));
            }
        }
        let count = winners.len();
        index
            .rebuild(winners, &generation)
            .map_err(|e| anyhow::anyhow!("search index rebuild failed: {e}"))?;
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
                    results[i] = Some(Err(self.reject(err.into(), source)));
                    continue;
                }
                Input::Bytes(bytes) => match Record::decode(bytes) {
                    Ok(record) => (record, true),
                    Err(err) => {
                        results[i] = Some(Err(self.reject(err.into(), source)));
                        continue;
                    }
                },
            };
            match self.store.has_record(&record.id) {
                Ok(true) => results[i] = Some(Ok(Accepted::Duplicate { id: record.id })),
                Ok(false) => decoded.push((i, record, unverified)),
                Err(e) => results[i] = Some(Err(self.reject(e.into(), source))),
            }
        }
        let decoded_at = started.elapsed();
        let refs: Vec<&Record> = decoded
            .iter()
            .filter(|(_, _, unverified)| *unverified)
            .map(|(_, r, _)| r)
            .collect();
        let mut batch_verdicts = verify_batch(&refs).into_iter();
        let verified: Vec<Result<(), kim_protocol::Error>> = decoded
            .iter()
            .map(|(_, _, unverified)| {
                if *unverified {
                    batch_verdicts
                        .next()
                        .unwrap_or(Err(kim_protocol::Error::BadSignature))
                } else {
                    Ok(())
                }
            })
            .collect();
        let decoded: Vec<(usize, Record)> = decoded.into_iter().map(|(i, r, _)| (i, r)).collect();
        let verified_at = started.elapsed();
        let ctx = Context {
            federation: self.federation,
            now_ms: (self.clock)(),
        };
        let mut checked: Vec<(usize, Record)> = Vec::with_capacity(decoded.len());
        for ((i, record), verdict) in decoded.into_iter().zip(verified) {
            let outcome = verdict
                .and_then(|()| validate(&record.content, &ctx))
                .map_err(Rejected::from)
                .and_then(|()| self.authorise(&record, source));
            match outcome {
                Ok(()) => checked.push((i, record)),
                Err(err) => results[i] = Some(Err(self.reject(err, source))),
            }
        }
        let checked_at = started.elapsed();
        let count = checked.len();
        if !checked.is_empty() {
            match self.write(&checked).await {
                Ok(outcomes) => {
                    for ((i, _), outcome) in checked.iter().zip(outcomes) {
                        results[*i] = Some(Ok(outcome));
                    }
                }
                Err(err) => {
                    let err = Rejected::from(err);
                    tracing::error!(cause = %err, "store write failed; batch not acknowledged");
                    for (i, _) in &checked {
                        results[*i] = Some(Err(self.reject(err.clone(), source)));
                    }
                }
            }
        }
        tracing::debug!(
            ?source,
            records = count,
            decode_us = decoded_at.as_micros() as u64,
            verify_us = (verified_at - decoded_at).as_micros() as u64,
            validate_us = (checked_at - verified_at).as_micros() as u64,
            write_us = (started.elapsed() - checked_at).as_micros() as u64,
            "ingest batch"
        );
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Rejected::Store("record lost in pipeline".into()))))
            .collect()
    }

    fn authorise(&self, record: &Record, source: Source) -> Result<(), Rejected> {
        authorise(&self.membership(), record, source)
    }

    /// Applies the batch's new winners to the search index and commits it with the store's new
    /// digest as its generation. A failure here never loses data: the index is rebuilt from the
    /// store at the next start because its generation no longer matches.
    fn update_index(
        &self,
        index: &crate::search::SearchIndex,
        checked: &[(usize, Record)],
        changed: &[(kim_protocol::RegionId, usize)],
        digest: &StateDigest,
    ) {
        let result = (|| -> Result<(), crate::search::SearchError> {
            for (region, position) in changed {
                if let Some((_, record)) = checked.get(*position) {
                    index.upsert(record, *region)?;
                }
            }
            index.set_generation(&digest.hash().to_hex());
            index.commit()
        })();
        if let Err(err) = result {
            tracing::error!(cause = %err, "search index update failed; it will be rebuilt at the next start");
            let _ = index.rollback();
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

    /// Resolves and writes checked records atomically, then flushes.
    async fn write(&self, checked: &[(usize, Record)]) -> Result<Vec<Accepted>, StoreError> {
        let _writer = self.writer.lock().await;
        let membership = self.membership();
        let mut writes = WriteSet::default();
        let mut digest = self.digest();
        // Winners decided earlier in this batch, so a batch may carry several revisions.
        let mut overlay: HashMap<Slot, ItemEntry> = HashMap::new();
        let mut seen_in_batch = std::collections::HashSet::new();
        let mut evidence: Evidence = HashMap::new();
        // Items whose winner changed, for the search index after the write is durable.
        let mut changed: Vec<(kim_protocol::RegionId, usize)> = Vec::new();
        let mut outcomes = Vec::with_capacity(checked.len());
        let mut membership_changed = false;
        for (position, (_, record)) in checked.iter().enumerate() {
            let c = &record.content;
            if !seen_in_batch.insert(record.id) {
                outcomes.push(Accepted::Duplicate { id: record.id });
                continue;
            }
            if !c.kind.is_replicated() {
                // Expressions of interest go to one region only: kept, never synced or gossiped.
                writes.put_direct(&record.id, &record.bytes);
                outcomes.push(Accepted::Stored { id: record.id });
                continue;
            }
            if c.kind.is_membership() || !c.kind.withdrawable() {
                writes.put_record(&record.id, &record.bytes);
                digest.add(&record.id);
                if c.kind.is_membership() {
                    writes.mark_membership(&record.id);
                    membership_changed = true;
                }
                outcomes.push(Accepted::Stored { id: record.id });
                continue;
            }
            let region = membership.region_of(&c.author).unwrap_or(c.author);
            let slot = (region, c.kind, c.key.clone());
            let current = match overlay.get(&slot) {
                Some(entry) => Some(entry.clone()),
                None => self.store.item(&region, c.kind, &c.key)?,
            };
            let entry = ItemEntry {
                id: record.id,
                region,
                author: c.author,
                kind: c.kind,
                key: c.key.clone(),
                revision: c.revision,
                tombstone: c.body.is_tombstone(),
                created_at_ms: c.created_at_ms,
                expires_at_ms: c.expires_at_ms,
            };
            let incoming = entry.revision();
            let outcome = match &current {
                None => {
                    writes.put_record(&record.id, &record.bytes);
                    digest.add(&record.id);
                    writes.set_item(&entry, None);
                    overlay.insert(slot, entry);
                    Accepted::Stored { id: record.id }
                }
                Some(cur) => {
                    match decide(&cur.revision(), &incoming) {
                        Decision::Duplicate => Accepted::Duplicate { id: record.id },
                        Decision::Keep => Accepted::Older { id: record.id },
                        Decision::Replace => {
                            self.supersede(&mut writes, &mut digest, &mut evidence, cur)?;
                            writes.put_record(&record.id, &record.bytes);
                            digest.add(&record.id);
                            writes.set_item(&entry, Some(cur));
                            overlay.insert(slot, entry);
                            Accepted::Stored { id: record.id }
                        }
                        // A content body is never kept as evidence beside a tombstone: the
                        // tombstone wins and erasure must hold.
                        Decision::Equivocation {
                            incoming_wins: false,
                        } if cur.tombstone => Accepted::Older { id: record.id },
                        Decision::Equivocation {
                            incoming_wins: true,
                        } if entry.tombstone => {
                            self.supersede(&mut writes, &mut digest, &mut evidence, cur)?;
                            writes.put_record(&record.id, &record.bytes);
                            digest.add(&record.id);
                            writes.set_item(&entry, Some(cur));
                            overlay.insert(slot, entry);
                            Accepted::Equivocation {
                                id: record.id,
                                wins: true,
                            }
                        }
                        Decision::Equivocation { incoming_wins } => {
                            tracing::warn!(
                                author = %c.author, kind = %c.kind, key = %c.key,
                                revision = c.revision, "equivocation: two records with one revision"
                            );
                            writes.put_record(&record.id, &record.bytes);
                            digest.add(&record.id);
                            let loser = if incoming_wins { cur.id } else { record.id };
                            writes.mark_equivocation(&region, c.kind, &c.key, &loser);
                            evidence.entry(slot.clone()).or_default().push(loser);
                            if incoming_wins {
                                writes.set_item(&entry, Some(cur));
                                overlay.insert(slot, entry);
                            }
                            Accepted::Equivocation {
                                id: record.id,
                                wins: incoming_wins,
                            }
                        }
                    }
                }
            };
            if overlay
                .get(&slot_of(&region, c))
                .is_some_and(|winner| winner.id == record.id)
            {
                changed.push((region, position));
            }
            outcomes.push(outcome);
        }
        writes.set_digest(&digest);
        let resolved = std::time::Instant::now();
        self.store.apply(writes)?;
        let applied = std::time::Instant::now();
        self.store.flush().await?;
        tracing::trace!(
            apply_us = (applied - resolved).as_micros() as u64,
            flush_us = applied.elapsed().as_micros() as u64,
            "store write"
        );
        if let Ok(mut d) = self.digest.lock() {
            *d = digest;
        }
        if let Some(index) = &self.search {
            self.update_index(index, checked, &changed, &digest);
            // Saved searches see every new item, whatever path it came by.
            let items: Vec<Slot> = changed
                .iter()
                .filter_map(|(region, i)| checked.get(*i).map(|(_, r)| slot_of(region, &r.content)))
                .collect();
            crate::saved::notify(&self.store, index, &items, (self.clock)());
        }
        if membership_changed {
            self.reevaluate_membership()?;
        }
        Ok(outcomes)
    }
}
