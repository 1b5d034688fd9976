//! What agency staff do through the API and CLI: publish, revise, withdraw, read and list items,
//! keep drafts and private notes. Signing happens here and only here; every record then goes
//! through the one ingest pipeline like any record from a peer.
//!
//! This module also decides what may be published: bodies are signed from the typed public
//! fields only; drafts and the `private` object (contact persons, internal notes, private fields
//! of client organisations) live in the store's local tree and never enter a record.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
use kim_protocol::types::Tombstone;
use kim_protocol::{PublicKey, RecordId, RegionId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ingest::{Accepted, Ingest, Rejected, Source, system_now_ms};
use crate::store::{ItemEntry, Position, StoreError};

/// A collection of the HTTP API and CLI, and the record kind it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Organisations,
    Projects,
    Offers,
    Knowledge,
}

impl Collection {
    pub const ALL: [Collection; 4] = [
        Collection::Organisations,
        Collection::Projects,
        Collection::Offers,
        Collection::Knowledge,
    ];

    pub fn kind(self) -> Kind {
        match self {
            Collection::Organisations => Kind::Organisation,
            Collection::Projects => Kind::Project,
            Collection::Offers => Kind::Cooperation,
            Collection::Knowledge => Kind::Knowledge,
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Collection::Organisations => "organisations",
            Collection::Projects => "projects",
            Collection::Offers => "offers",
            Collection::Knowledge => "knowledge",
        }
    }

    pub fn parse(path: &str) -> Option<Collection> {
        Collection::ALL.into_iter().find(|c| c.path() == path)
    }

    /// Parses a JSON body into this collection's typed body, naming the offending field.
    /// Unknown fields are refused (a misspelt optional field would otherwise vanish silently).
    pub fn body_from_json(self, value: Value) -> Result<Body, ServiceError> {
        Ok(match self {
            Collection::Organisations => Body::Organisation(strict(&value)?),
            Collection::Projects => Body::Project(strict(&value)?),
            Collection::Offers => Body::Cooperation(strict(&value)?),
            Collection::Knowledge => Body::Knowledge(strict(&value)?),
        })
    }
}

/// Deserialises `value` and refuses fields the type does not have, at any depth.
fn strict<T: serde::de::DeserializeOwned + Serialize>(value: &Value) -> Result<T, ServiceError> {
    let typed = T::deserialize(value).map_err(|e| ServiceError::BadBody(e.to_string()))?;
    let known = serde_json::to_value(&typed).map_err(|e| ServiceError::BadBody(e.to_string()))?;
    match unknown_field(value, &known) {
        Some(path) => Err(ServiceError::BadBody(format!("unknown field `{path}`"))),
        None => Ok(typed),
    }
}

/// The path of the first field of `input` that the typed re-encoding `known` lacks.
fn unknown_field(input: &Value, known: &Value) -> Option<String> {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => {
            input
                .iter()
                .find_map(|(name, value)| match known.get(name) {
                    None => Some(name.clone()),
                    Some(k) => unknown_field(value, k).map(|inner| format!("{name}.{inner}")),
                })
        }
        (Value::Array(input), Value::Array(known)) => input
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(i, (v, k))| unknown_field(v, k).map(|inner| format!("{i}.{inner}"))),
        _ => None,
    }
}

/// Why a service call failed; the API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("body does not match the schema: {0}")]
    BadBody(String),
    #[error("{0}")]
    Rejected(#[from] Rejected),
    #[error("no {kind} item {key:?} of region {region}")]
    NotFound {
        kind: Kind,
        region: RegionId,
        key: String,
    },
    #[error("{0} already exists: revise it instead")]
    Exists(String),
    #[error("{kind} item {key:?} was withdrawn")]
    Withdrawn { kind: Kind, key: String },
    #[error("no draft {0}")]
    NoDraft(String),
    #[error("{0}")]
    BadRequest(String),
    /// The request contradicts the current state (e.g. endorsing a region that is a member);
    /// the stable code, then the message.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// What the request names does not exist (e.g. no pending join request from a region).
    #[error("{1}")]
    Missing(&'static str, String),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The search index failed a listing or count it serves.
    #[error(
        "the search index failed: {0}; retry, and if it persists stop the node, move its data directory's `search` folder aside and start it: the index is rebuilt from the store"
    )]
    Search(String),
    /// The region key files could not be written or moved (key rotation).
    #[error("{0}")]
    KeyFiles(String),
    /// A knowledge item lists an attachment this node does not hold (upload it first).
    #[error("{0}")]
    AttachmentMissing(String),
}

/// The operations staff perform, bound to the region's key.
#[derive(Debug, Clone)]
pub struct Service {
    ingest: Arc<Ingest>,
    /// The key records are signed with now; replaced whole by a key rotation (every clone of
    /// the service shares the cell). Read once per record signed, under `authoring`.
    key: Arc<std::sync::RwLock<Arc<SigningKey>>>,
    /// The data directory's key files, for key rotation (absent in tools without one).
    key_files: Option<Arc<crate::keys::KeyFiles>>,
    /// Latest created-at this service signed: a key rotation is dated after it, so no record
    /// the old key signed counts as made after the handover (peers would refuse it).
    last_signed_ms: Arc<std::sync::atomic::AtomicU64>,
    region: RegionId,
    offer_validity_days: u32,
    /// Held from reading an item's current revision until its next one is stored, so two
    /// concurrent calls never sign the same revision twice (which would be equivocation).
    authoring: Arc<tokio::sync::Mutex<()>>,
    /// Where records this node signs go to be gossiped (set when the network runs).
    announce: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// The attachment store: a knowledge item may list only files held here.
    blobs: Option<Arc<crate::blobs::BlobStore>>,
}

/// What a key rotation did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The key rotation record.
    pub record: RecordId,
    pub region: RegionId,
    pub old_key: PublicKey,
    pub new_key: PublicKey,
    /// The handover time: records by the old key dated from then on are refused.
    pub created_at_ms: u64,
    /// Where the old key is kept.
    pub retired_file: std::path::PathBuf,
}

/// One item as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemView {
    /// The record id of the winning revision.
    pub id: RecordId,
    pub region: RegionId,
    pub author: PublicKey,
    pub kind: Kind,
    pub key: String,
    pub revision: u64,
    pub created_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// `live`, `expired` or `withdrawn`.
    pub status: String,
    /// The public body; null once withdrawn.
    #[schema(value_type = Object)]
    pub body: Value,
    /// Local-only data kept beside the item on this node (own items only); never published.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub private: Option<Value>,
}

/// A write request for publish, revise and drafts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    /// The item key; generated when absent on publish.
    #[serde(default)]
    pub key: Option<String>,
    /// The public body (schema of the collection's kind).
    #[schema(value_type = Object)]
    pub body: Value,
    /// Expiry in ms since the epoch; offers default to now + offer_validity_days.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// Local-only data (contact persons, internal notes, private fields); never published.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub private: Option<Value>,
}

/// Filters of a list call.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub region: Option<RegionId>,
    pub nuts_prefix: Option<String>,
    pub nace_prefix: Option<String>,
    /// `live` (default), `expired`, `withdrawn` or `all`.
    pub status: Option<String>,
    pub text: Option<String>,
}

/// A listing cursor: `k` ‖ kind ‖ position.
fn cursor_of(kind: Kind, position: &Position) -> Vec<u8> {
    let mut c = Vec::with_capacity(42);
    c.push(b'k');
    c.push(kind as u8);
    c.extend_from_slice(&position.0);
    c
}

fn parse_cursor(kind: Kind, cursor: &[u8]) -> Result<Position, ServiceError> {
    match cursor {
        [b'k', k, position @ ..] if *k == kind as u8 => position
            .try_into()
            .map(Position)
            .map_err(|_| {
                ServiceError::BadRequest(
                    "cursor has the wrong length: pass the `next` of the previous page as it was, or none to start over".into(),
                )
            }),
        _ => Err(ServiceError::BadRequest(
            "cursor is not one this listing handed out (another collection's?): pass the `next` of the previous page, or none to start over".into(),
        )),
    }
}

fn status_of(entry: &ItemEntry, now_ms: u64) -> &'static str {
    if entry.tombstone {
        "withdrawn"
    } else if entry.is_live(now_ms) {
        "live"
    } else {
        "expired"
    }
}

/// The NUTS codes, NACE codes and searchable text of a body, for list filters.
fn facets(body: &Body) -> (Vec<&str>, Vec<&str>, String) {
    match body {
        Body::Cooperation(c) => (
            vec![c.nuts.as_str()],
            c.nace.iter().map(String::as_str).collect(),
            format!("{} {} {}", c.title, c.summary, c.description),
        ),
        Body::Organisation(o) => (
            o.nuts.iter().map(String::as_str).collect(),
            o.nace.iter().map(String::as_str).collect(),
            format!("{} {}", o.name.as_deref().unwrap_or(""), o.description),
        ),
        Body::Project(p) => (
            p.participants.iter().map(|x| x.nuts.as_str()).collect(),
            vec![],
            format!("{} {} {}", p.acronym, p.title, p.summary),
        ),
        Body::Knowledge(k) => (
            k.regions.iter().map(String::as_str).collect(),
            vec![],
            format!("{} {}", k.title, k.abstract_text),
        ),
        _ => (vec![], vec![], String::new()),
    }
}

fn private_key(kind: Kind, key: &str) -> String {
    format!("private/{}/{key}", kind.as_str())
}

fn draft_key(kind: Kind, key: &str) -> String {
    format!("draft/{}/{key}", kind.as_str())
}

impl Service {
    pub fn new(ingest: Arc<Ingest>, key: SigningKey, offer_validity_days: u32) -> Service {
        let author = PublicKey(key.verifying_key().to_bytes());
        let region = ingest.membership().region_of(&author).unwrap_or(author);
        Service {
            ingest,
            key: Arc::new(std::sync::RwLock::new(Arc::new(key))),
            key_files: None,
            last_signed_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            region,
            offer_validity_days,
            authoring: Arc::new(tokio::sync::Mutex::new(())),
            announce: None,
            blobs: None,
        }
    }

    /// Checks knowledge items' attachments against this attachment store before signing.
    pub fn with_blobs(mut self, blobs: Arc<crate::blobs::BlobStore>) -> Service {
        self.blobs = Some(blobs);
        self
    }

    /// The attachment store, when the service has one.
    pub fn blobs(&self) -> Option<&Arc<crate::blobs::BlobStore>> {
        self.blobs.as_ref()
    }

    /// A knowledge item may list only attachments this node holds whole, with the size it
    /// says: otherwise every other node would be sent looking for a file that nobody has.
    fn check_attachments(&self, body: &Body) -> Result<(), ServiceError> {
        let (Some(blobs), Body::Knowledge(k)) = (&self.blobs, body) else {
            return Ok(());
        };
        for a in &k.attachments {
            match blobs.held_size(&a.blake3) {
                Some(size) if size == a.size_bytes => {}
                Some(size) => {
                    return Err(ServiceError::AttachmentMissing(format!(
                        "attachment {:?} says {} bytes but the file {} held here has {size}",
                        a.name, a.size_bytes, a.blake3
                    )));
                }
                None => {
                    return Err(ServiceError::AttachmentMissing(format!(
                        "attachment {:?} ({}) is not held on this node: upload it first \
                         (POST /api/v1/blobs or `kim knowledge attach`)",
                        a.name, a.blake3
                    )));
                }
            }
        }
        Ok(())
    }

    /// Lets the service rotate the region key in these key files.
    pub fn with_key_files(mut self, files: crate::keys::KeyFiles) -> Service {
        self.key_files = Some(Arc::new(files));
        self
    }

    /// Hands every record this service signs and stores to `announce` (the gossip queue).
    /// A full queue drops the announcement, never the record: sync carries it to peers.
    pub fn with_announcer(mut self, announce: tokio::sync::mpsc::Sender<Vec<u8>>) -> Service {
        self.announce = Some(announce);
        self
    }

    fn announce(&self, record: &Record) {
        // Expressions of interest go to one region only, by the direct protocol: never gossip.
        if !record.content.kind.is_replicated() {
            return;
        }
        if let Some(tx) = &self.announce
            && tx.try_send(record.bytes.clone()).is_err()
        {
            tracing::debug!(id = %record.id, "gossip queue full; sync will carry the record");
        }
    }

    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    /// This node's region id.
    pub fn region(&self) -> RegionId {
        self.region
    }

    fn author(&self) -> PublicKey {
        PublicKey(self.signing_key().verifying_key().to_bytes())
    }

    /// The key this node signs its region's records with.
    pub fn author_key(&self) -> PublicKey {
        self.author()
    }

    /// The region's signing key now (for tools that sign records in bulk, e.g. `kim demo`).
    pub fn signing_key(&self) -> Arc<SigningKey> {
        let cell = self.key.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&cell)
    }

    /// Hands the region over to a new key: the new key is written to `region.key.next`, the
    /// old key signs the key rotation, which is stored and announced like a publish; then the
    /// new key becomes `region.key` (the old one is kept as `region.key.retired-<ms>`) and
    /// every record from now on is signed with it. Holds the authoring lock throughout, so no
    /// record is signed with the old key after the handover (every node would refuse it).
    pub async fn rotate_key(&self) -> Result<Rotated, ServiceError> {
        let files = self.key_files.clone().ok_or_else(|| {
            ServiceError::BadRequest("this node has no key files to rotate".into())
        })?;
        let _authoring = self.authoring.lock().await;
        let old = self.signing_key();
        let old_key = PublicKey(old.verifying_key().to_bytes());
        let new = SigningKey::from_bytes(
            &crate::config::random_bytes().map_err(|e| ServiceError::BadRequest(e.to_string()))?,
        );
        let new_key = PublicKey(new.verifying_key().to_bytes());
        files
            .write_next(&new)
            .map_err(|e| ServiceError::KeyFiles(format!("nothing was rotated: {e:#}")))?;
        // Strictly after every record this service signed with the old key, even if the clock
        // stepped back, so all of them stay valid on every node.
        let now = system_now_ms().max(
            self.last_signed_ms
                .load(std::sync::atomic::Ordering::Acquire)
                .saturating_add(1),
        );
        let federation = self.ingest.federation();
        let content = Content {
            format: FORMAT_VERSION,
            federation,
            author: old_key,
            kind: Kind::KeyRotation,
            key: "rotation".to_string(),
            revision: 1,
            created_at_ms: now,
            expires_at_ms: None,
            body: Body::KeyRotation(kim_protocol::membership::KeyRotation::new(
                &federation,
                &old_key,
                &new,
            )),
        };
        let stored = match Record::sign(&content, &old) {
            Ok(record) => self
                .ingest
                .ingest_one(record.bytes.clone(), Source::Api)
                .await
                .map(|accepted| (record, accepted))
                .map_err(ServiceError::from),
            Err(e) => Err(ServiceError::from(Rejected::from(e))),
        };
        let record = match stored {
            Ok((record, Accepted::Stored { .. })) => record,
            other => {
                // Nothing was stored: nobody will ever hear of the new key.
                if let Err(e) = files.discard_next() {
                    tracing::warn!(cause = %e, "could not delete the unused region.key.next");
                }
                return Err(match other {
                    Err(e) => e,
                    Ok(_) => ServiceError::BadRequest(
                        "the key rotation was not stored as a new record; try again".into(),
                    ),
                });
            }
        };
        // From here on the old key is retired everywhere the record reaches.
        match self.key.write() {
            Ok(mut cell) => *cell = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        self.announce(&record);
        let retired_file = files.install_next(now).map_err(|e| {
            tracing::error!(cause = %e, "the rotation is in effect but the key files were not moved");
            ServiceError::KeyFiles(format!(
                "the key rotation {} is stored and in effect, but moving region.key.next to \
                 region.key failed ({e:#}); the node finishes it at its next start",
                record.id
            ))
        })?;
        tracing::info!(
            region = %self.region,
            old_key = %old_key,
            new_key = %new_key,
            record = %record.id,
            "region key rotated"
        );
        Ok(Rotated {
            record: record.id,
            region: self.region,
            old_key,
            new_key,
            created_at_ms: now,
            retired_file,
        })
    }

    fn new_key(kind: Kind) -> Result<String, ServiceError> {
        let bytes =
            crate::config::random_bytes().map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        Ok(format!(
            "{}-{}",
            kind.as_str().replace('_', "-"),
            kim_protocol::bytes::to_hex(&bytes[..6])
        ))
    }

    /// Held while signing, so no record is signed in the middle of a key rotation and no two
    /// calls sign the same revision.
    pub(crate) async fn lock_authoring(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.authoring.lock().await
    }

    pub(crate) async fn sign_and_ingest(
        &self,
        kind: Kind,
        key: &str,
        revision: u64,
        body: Body,
        expires_at_ms: Option<u64>,
    ) -> Result<Record, ServiceError> {
        // No sweep deletes a listed file between this check and the record being stored.
        let _sweep = match (&self.blobs, &body) {
            (Some(blobs), Body::Knowledge(k)) if !k.attachments.is_empty() => {
                Some(blobs.sweep_lock.lock().await)
            }
            _ => None,
        };
        self.check_attachments(&body)?;
        let now = system_now_ms();
        self.last_signed_ms
            .fetch_max(now, std::sync::atomic::Ordering::AcqRel);
        let expires_at_ms = match (expires_at_ms, kind, &body) {
            (Some(e), _, _) => Some(e),
            (None, Kind::Cooperation, Body::Cooperation(_)) => {
                Some(now + u64::from(self.offer_validity_days) * 86_400_000)
            }
            _ => None,
        };
        let content = Content {
            format: FORMAT_VERSION,
            federation: self.ingest.federation(),
            author: self.author(),
            kind,
            key: key.to_string(),
            revision,
            created_at_ms: now,
            expires_at_ms,
            body,
        };
        let record = Record::sign(&content, &self.signing_key()).map_err(Rejected::from)?;
        match self
            .ingest
            .ingest_one(record.bytes.clone(), Source::Api)
            .await?
        {
            Accepted::Stored { .. } | Accepted::Equivocation { .. } => {
                self.announce(&record);
                if let (Some(blobs), Body::Knowledge(k)) = (&self.blobs, &record.content.body) {
                    for a in &k.attachments {
                        if let Err(e) = blobs.claim(&a.blake3) {
                            tracing::warn!(cause = %e, "cannot mark an attachment as listed");
                        }
                    }
                }
                Ok(record)
            }
            Accepted::Duplicate { .. } | Accepted::Older { .. } => Err(ServiceError::BadRequest(
                "a newer revision of this item exists; reload and retry".into(),
            )),
        }
    }

    /// Publishes a new item (fails if the key is taken).
    pub async fn publish(
        &self,
        collection: Collection,
        input: ItemInput,
    ) -> Result<ItemView, ServiceError> {
        let _authoring = self.authoring.lock().await;
        self.publish_locked(collection, input).await
    }

    async fn publish_locked(
        &self,
        collection: Collection,
        input: ItemInput,
    ) -> Result<ItemView, ServiceError> {
        let kind = collection.kind();
        let key = match input.key {
            Some(k) => k,
            None => Self::new_key(kind)?,
        };
        kim_protocol::validate::item_key(&key).map_err(Rejected::from)?;
        let existing = self.ingest.store().item(&self.region, kind, &key)?;
        if existing.as_ref().is_some_and(|e| !e.tombstone) {
            return Err(ServiceError::Exists(format!("{kind} item {key:?}")));
        }
        let revision = existing.map_or(1, |e| e.revision + 1);
        let body = collection.body_from_json(input.body)?;
        let record = self
            .sign_and_ingest(kind, &key, revision, body, input.expires_at_ms)
            .await?;
        if let Some(private) = &input.private {
            self.ingest
                .store()
                .local_put(&private_key(kind, &key), private)?;
        }
        self.view_record(&record, Some(self.region))
    }

    /// Publishes a new revision of an own item.
    pub async fn revise(
        &self,
        collection: Collection,
        key: &str,
        input: ItemInput,
    ) -> Result<ItemView, ServiceError> {
        let _authoring = self.authoring.lock().await;
        self.revise_locked(collection, key, input).await
    }

    async fn revise_locked(
        &self,
        collection: Collection,
        key: &str,
        input: ItemInput,
    ) -> Result<ItemView, ServiceError> {
        let kind = collection.kind();
        let current = self.own_item(kind, key)?;
        let body = collection.body_from_json(input.body)?;
        let record = self
            .sign_and_ingest(kind, key, current.revision + 1, body, input.expires_at_ms)
            .await?;
        if let Some(private) = &input.private {
            self.ingest
                .store()
                .local_put(&private_key(kind, key), private)?;
        }
        self.view_record(&record, Some(self.region))
    }

    /// Withdraws an own item: a tombstone revision that erases the body everywhere.
    pub async fn withdraw(
        &self,
        collection: Collection,
        key: &str,
        reason: String,
    ) -> Result<ItemView, ServiceError> {
        let _authoring = self.authoring.lock().await;
        let kind = collection.kind();
        let current = self.own_item(kind, key)?;
        if current.tombstone {
            return Err(ServiceError::Withdrawn {
                kind,
                key: key.to_string(),
            });
        }
        let record = self
            .sign_and_ingest(
                kind,
                key,
                current.revision + 1,
                Body::Tombstone(Tombstone { reason }),
                None,
            )
            .await?;
        self.view_record(&record, Some(self.region))
    }

    fn own_item(&self, kind: Kind, key: &str) -> Result<ItemEntry, ServiceError> {
        self.ingest
            .store()
            .item(&self.region, kind, key)?
            .ok_or_else(|| ServiceError::NotFound {
                kind,
                region: self.region,
                key: key.to_string(),
            })
    }

    /// One item of any region.
    pub fn get(
        &self,
        collection: Collection,
        region: &RegionId,
        key: &str,
    ) -> Result<ItemView, ServiceError> {
        let kind = collection.kind();
        let entry = self
            .ingest
            .store()
            .item(region, kind, key)?
            .ok_or_else(|| ServiceError::NotFound {
                kind,
                region: *region,
                key: key.to_string(),
            })?;
        self.view_entry(&entry)?
            .ok_or_else(|| ServiceError::NotFound {
                kind,
                region: *region,
                key: key.to_string(),
            })
    }

    /// The current winner's record of the item `entry` was read for (see
    /// [`Store::winner_record`]); `None` if the item is gone.
    fn load(&self, entry: &ItemEntry) -> Result<Option<Record>, ServiceError> {
        let Some((current, bytes)) = self.ingest.store().winner_record(entry)? else {
            return Ok(None);
        };
        Record::decode(bytes).map(Some).map_err(|e| {
            ServiceError::Store(StoreError::Damaged {
                dir: self.ingest.store().dir().to_path_buf(),
                cause: format!("stored record {} does not decode: {e}", current.id),
            })
        })
    }

    /// The item's view, `None` if it is gone.
    fn view_entry(&self, entry: &ItemEntry) -> Result<Option<ItemView>, ServiceError> {
        self.load(entry)?
            .map(|record| self.view_record(&record, Some(entry.region)))
            .transpose()
    }

    fn view_record(
        &self,
        record: &Record,
        region: Option<RegionId>,
    ) -> Result<ItemView, ServiceError> {
        let c = &record.content;
        let region = region.unwrap_or(c.author);
        let now = system_now_ms();
        let tombstone = c.body.is_tombstone();
        let status = if tombstone {
            "withdrawn"
        } else if c.expires_at_ms.is_some_and(|e| now >= e) {
            "expired"
        } else {
            "live"
        };
        let body = match &c.body {
            Body::Tombstone(_) => Value::Null,
            Body::Cooperation(b) => serde_json::to_value(b).unwrap_or(Value::Null),
            Body::Organisation(b) => serde_json::to_value(b).unwrap_or(Value::Null),
            Body::Project(b) => serde_json::to_value(b).unwrap_or(Value::Null),
            Body::Knowledge(b) => serde_json::to_value(b).unwrap_or(Value::Null),
            other => serde_json::to_value(other).unwrap_or(Value::Null),
        };
        let private = if region == self.region {
            self.ingest
                .store()
                .local_get(&private_key(c.kind, &c.key))?
        } else {
            None
        };
        Ok(ItemView {
            id: record.id,
            region,
            author: c.author,
            kind: c.kind,
            key: c.key.clone(),
            revision: c.revision,
            created_at_ms: c.created_at_ms,
            expires_at_ms: c.expires_at_ms,
            status: status.to_string(),
            body,
            private,
        })
    }

    /// Lists items newest first with filters and a cursor (the last position a page
    /// returned: `k` ‖ kind ‖ [`Position`], as store format 3 wrote its kind index keys, so
    /// cursors handed out before format 4 still work).
    ///
    /// Live and expired items come from the search index, withdrawn ones from the store's
    /// index of withdrawn items, one region's from the store; every candidate is checked
    /// against the store's current winner, so an index behind the store shows an item late
    /// but never a superseded revision. As in search, what staff published or imported before
    /// the call is listed; records from the network once indexed (within
    /// [`crate::indexer::COMMIT_INTERVAL_MAX`]).
    pub async fn list(
        &self,
        collection: Collection,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<ItemView>, Option<Vec<u8>>), ServiceError> {
        // What was published or imported before the call is listed.
        self.ingest.search_fresh().await;
        let kind = collection.kind();
        let now = system_now_ms();
        let wanted_status = filter.status.clone().unwrap_or_else(|| "live".into());
        if !["live", "expired", "withdrawn", "all"].contains(&wanted_status.as_str()) {
            return Err(ServiceError::BadRequest(format!(
                "status {wanted_status:?} is not one of live, expired, withdrawn, all"
            )));
        }
        let before = cursor.map(|c| parse_cursor(kind, c)).transpose()?;
        let text = filter.text.as_ref().map(|t| t.to_lowercase());
        let mut failure = None;
        let accept = |entry: &ItemEntry| {
            if wanted_status != "all" && status_of(entry, now) != wanted_status {
                return false;
            }
            if filter.nuts_prefix.is_none() && filter.nace_prefix.is_none() && text.is_none() {
                return true;
            }
            let record = match self.load(entry) {
                Ok(Some(r)) => r,
                // Gone since it was listed.
                Ok(None) => return false,
                Err(e) => {
                    failure = Some(e);
                    return false;
                }
            };
            let (nuts, nace, words) = facets(&record.content.body);
            filter
                .nuts_prefix
                .as_ref()
                .is_none_or(|p| nuts.iter().any(|n| n.starts_with(p.as_str())))
                && filter
                    .nace_prefix
                    .as_ref()
                    .is_none_or(|p| nace.iter().any(|n| n.starts_with(p.as_str())))
                && text
                    .as_ref()
                    .is_none_or(|t| words.to_lowercase().contains(t.as_str()))
        };
        let (entries, next) = match &filter.region {
            Some(region) => self.ingest.store().list_region_items(
                kind,
                region,
                before.as_ref(),
                limit,
                accept,
            )?,
            None => self.list_merged(kind, &wanted_status, now, before, limit, accept)?,
        };
        if let Some(e) = failure {
            return Err(e);
        }
        let views = entries
            .iter()
            .filter_map(|e| self.view_entry(e).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((views, next.map(|p| cursor_of(kind, &p))))
    }

    /// Items of a kind in every region, newest first below `before`, merged from the sources
    /// `status` needs; `accept` filters, at most `limit` are returned, with the position of
    /// the last one if more are accepted below it.
    fn list_merged(
        &self,
        kind: Kind,
        status: &str,
        now_ms: u64,
        mut before: Option<Position>,
        limit: usize,
        mut accept: impl FnMut(&ItemEntry) -> bool,
    ) -> Result<(Vec<ItemEntry>, Option<Position>), ServiceError> {
        use crate::search::Status as Expiry;
        let store = self.ingest.store();
        let indexed = match status {
            "live" => Some(Expiry::Live),
            "expired" => Some(Expiry::Expired),
            "all" => Some(Expiry::All),
            _ => None,
        };
        let withdrawn = matches!(status, "withdrawn" | "all");
        // Each round takes a batch from each source. A source that may have more says how far
        // down its batch is complete (its floor); the round only goes down to the highest
        // floor, above which every source has given everything, and the next starts there.
        let batch = (limit.saturating_add(1)).clamp(64, 1024);
        let mut out = Vec::new();
        let mut last = None;
        loop {
            let mut round: Vec<(Position, ItemEntry)> = Vec::new();
            let mut floor: Option<Position> = None;
            if let Some(expiry) = indexed {
                let found = match self.ingest.search() {
                    Some(index) => {
                        let (page, reached) = index
                            .list_page(kind, expiry, now_ms, before.as_ref(), batch)
                            .map_err(|e| ServiceError::Search(e.to_string()))?;
                        floor = floor.max(reached);
                        let mut found = Vec::with_capacity(page.len());
                        for (_, hit) in page {
                            // The index may be behind the store: only its current winner counts.
                            if let Some(entry) = store.item(&hit.region, hit.kind, &hit.key)?
                                && hit.indexes(&entry.id)
                                && !entry.tombstone
                            {
                                let position = Position::of(&entry);
                                if before.as_ref().is_none_or(|b| position < *b) {
                                    found.push((position, entry));
                                }
                            }
                        }
                        found
                    }
                    // No index (tests of the store alone): every item of the kind, sorted.
                    None => self.scan_kind(kind, before.as_ref(), |e| !e.tombstone)?,
                };
                round.extend(found);
            }
            if withdrawn {
                let (found, reached) = store.list_withdrawn(kind, before.as_ref(), batch)?;
                floor = floor.max(reached);
                round.extend(found);
            }
            round.sort_by_key(|p| std::cmp::Reverse(p.0));
            if let Some(floor) = floor {
                round.retain(|(p, _)| *p >= floor);
            }
            for (position, entry) in round {
                if accept(&entry) {
                    if out.len() == limit {
                        return Ok((out, last));
                    }
                    out.push(entry);
                    last = Some(position);
                }
            }
            match floor {
                Some(floor) => before = Some(floor),
                None => return Ok((out, None)),
            }
        }
    }

    /// Every item of a kind passing `keep`, newest first below `before`, from the store alone.
    fn scan_kind(
        &self,
        kind: Kind,
        before: Option<&Position>,
        keep: impl Fn(&ItemEntry) -> bool,
    ) -> Result<Vec<(Position, ItemEntry)>, ServiceError> {
        let mut all = Vec::new();
        for entry in self.ingest.store().kind_entries(kind) {
            let entry = entry?;
            let position = Position::of(&entry);
            if keep(&entry) && before.is_none_or(|b| position < *b) {
                all.push((position, entry));
            }
        }
        all.sort_by_key(|p| std::cmp::Reverse(p.0));
        Ok(all)
    }

    /// Live items of a collection: counted in the search index, or in the store without one.
    /// What staff published or imported before the call is counted; records from the network
    /// once indexed, as in search (within [`crate::indexer::COMMIT_INTERVAL_MAX`]).
    pub async fn count_live(&self, collection: Collection) -> Result<u64, ServiceError> {
        self.ingest.search_fresh().await;
        let now = system_now_ms();
        let kind = collection.kind();
        match self.ingest.search() {
            Some(index) => {
                let q = crate::search::Query {
                    kinds: vec![kind],
                    now_ms: now,
                    ..Default::default()
                };
                let n = index
                    .count(&q)
                    .map_err(|e| ServiceError::Search(e.to_string()))?;
                Ok(n as u64)
            }
            None => Ok(self.scan_kind(kind, None, |e| e.is_live(now))?.len() as u64),
        }
    }

    /// Saves (or replaces) a draft: checked against the schema, never published.
    pub fn save_draft(
        &self,
        collection: Collection,
        key: &str,
        input: &ItemInput,
    ) -> Result<(), ServiceError> {
        kim_protocol::validate::item_key(key).map_err(Rejected::from)?;
        collection.body_from_json(input.body.clone())?;
        let value =
            serde_json::to_value(input).map_err(|e| ServiceError::BadBody(e.to_string()))?;
        self.ingest
            .store()
            .local_put(&draft_key(collection.kind(), key), &value)?;
        Ok(())
    }

    /// Drafts of a collection.
    pub fn drafts(&self, collection: Collection) -> Result<Vec<(String, Value)>, ServiceError> {
        let prefix = draft_key(collection.kind(), "");
        Ok(self
            .ingest
            .store()
            .local_scan(&prefix)?
            .into_iter()
            .map(|(k, v)| (k[prefix.len()..].to_string(), v))
            .collect())
    }

    /// Deletes a draft.
    pub fn delete_draft(&self, collection: Collection, key: &str) -> Result<(), ServiceError> {
        if self
            .ingest
            .store()
            .local_delete(&draft_key(collection.kind(), key))?
        {
            Ok(())
        } else {
            Err(ServiceError::NoDraft(format!(
                "{}/{key}",
                collection.path()
            )))
        }
    }

    /// Publishes a draft (new item or new revision) and deletes it.
    pub async fn publish_draft(
        &self,
        collection: Collection,
        key: &str,
    ) -> Result<ItemView, ServiceError> {
        let _authoring = self.authoring.lock().await;
        let name = draft_key(collection.kind(), key);
        let value = self
            .ingest
            .store()
            .local_get(&name)?
            .ok_or_else(|| ServiceError::NoDraft(format!("{}/{key}", collection.path())))?;
        let mut input: ItemInput =
            serde_json::from_value(value).map_err(|e| ServiceError::BadBody(e.to_string()))?;
        input.key = Some(key.to_string());
        let exists = self
            .ingest
            .store()
            .item(&self.region, collection.kind(), key)?
            .is_some_and(|e| !e.tombstone);
        let view = if exists {
            self.revise_locked(collection, key, input).await?
        } else {
            self.publish_locked(collection, input).await?
        };
        self.ingest.store().local_delete(&name)?;
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kim_protocol::membership::federation_id;
    use kim_protocol::samples;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    const DAY_MS: u64 = 86_400_000;

    /// Keys of every page of a listing, following cursors; each page but the last is full.
    async fn pages(
        service: &Service,
        filter: &ListFilter,
        limit: usize,
    ) -> Result<Vec<String>, ServiceError> {
        let mut keys = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let (items, next) = service
                .list(Collection::Offers, filter, cursor.as_deref(), limit)
                .await?;
            keys.extend(items.iter().map(|i| i.key.clone()));
            match next {
                Some(next) => {
                    assert_eq!(items.len(), limit, "a page with a next cursor is full");
                    cursor = Some(next);
                }
                None => return Ok(keys),
            }
        }
    }

    /// Lists come from the search index (live, expired) and the store's index of withdrawn
    /// items, merged for `all`. Whatever the page size, following the cursors must give
    /// exactly the store's items of that status, newest first (creation time, then record id),
    /// also where many items share a creation time across page ends.
    #[tokio::test]
    async fn every_status_lists_what_the_store_holds_newest_first_across_pages()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("kim-list-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let key = samples::signing_key(&mut rng);
        let author = samples::public_key(&key);
        let charter = samples::charter("test", std::slice::from_ref(&key));
        let federation = federation_id(&charter.to_bytes()?);
        let store =
            crate::store::Store::open(&dir.join("store"), crate::store::CACHE_BYTES_DEFAULT, true)?;
        let ingest = Ingest::open(store, federation, charter)?;
        let index = Arc::new(crate::search::SearchIndex::open(&dir.join("search"))?);
        ingest.reindex_if_stale(&index)?;
        let ingest = Arc::new(ingest.with_search(index));
        let service = Service::new(Arc::clone(&ingest), key.clone(), 400);

        // 25 creation instants 20 days apart, the older ones expired (offers last 400 days):
        // about 12 items share each instant; and a sparse tail of 10 instants 300 days apart,
        // years older, so the index reads windows of very different density. Every 7th item
        // is revised, every 11th withdrawn.
        let now = system_now_ms();
        let mut batch = Vec::new();
        for i in 0..400u64 {
            let created = if i < 300 {
                now - 500 * DAY_MS + (i % 25) * 20 * DAY_MS
            } else {
                now - 4_000 * DAY_MS + (i % 10) * 300 * DAY_MS
            };
            let item = format!("offer-{i}");
            let mut content = samples::content(
                &mut rng,
                federation,
                author,
                Kind::Cooperation,
                &item,
                created,
            );
            batch.push(Record::sign(&content, &key)?.bytes);
            if i % 7 == 0 {
                content.revision = 2;
                content.created_at_ms += DAY_MS;
                content.expires_at_ms = content.expires_at_ms.map(|e| e + DAY_MS);
                batch.push(Record::sign(&content, &key)?.bytes);
            }
            if i % 11 == 0 {
                content.revision = 3;
                content.created_at_ms += 2 * DAY_MS;
                content.expires_at_ms = None;
                content.body = Body::Tombstone(Tombstone {
                    reason: "filled".into(),
                });
                batch.push(Record::sign(&content, &key)?.bytes);
            }
        }
        for outcome in ingest.ingest_batch(batch, Source::Import).await {
            outcome?;
        }

        let now = system_now_ms();
        let store = ingest.store();
        let mut all: Vec<ItemEntry> = store
            .kind_entries(Kind::Cooperation)
            .collect::<Result<_, _>>()?;
        all.sort_by_key(|e| std::cmp::Reverse(Position::of(e)));
        assert_eq!(all.len(), 400);
        for status in ["live", "expired", "withdrawn", "all"] {
            let expected: Vec<String> = all
                .iter()
                .filter(|e| status == "all" || status_of(e, now) == status)
                .map(|e| e.key.clone())
                .collect();
            assert!(!expected.is_empty(), "{status}");
            let filter = ListFilter {
                status: Some(status.into()),
                ..ListFilter::default()
            };
            for limit in [1, 13, 64, 65, 500] {
                assert_eq!(
                    pages(&service, &filter, limit).await?,
                    expected,
                    "status {status}, pages of {limit}"
                );
            }
        }
        // Filters apply before paging: a NUTS prefix every page of which holds only its items.
        let nuts = ListFilter {
            status: Some("all".into()),
            nuts_prefix: Some("AT".into()),
            ..ListFilter::default()
        };
        let expected: Vec<String> = all
            .iter()
            .filter(|e| {
                let record = service.load(e).ok().flatten();
                record.is_some_and(|r| {
                    facets(&r.content.body)
                        .0
                        .iter()
                        .any(|n| n.starts_with("AT"))
                })
            })
            .map(|e| e.key.clone())
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(pages(&service, &nuts, 7).await?, expected);

        // A cursor this listing did not hand out is refused, not read as "from the start".
        let live = ListFilter::default();
        for bad in [
            &b"zz"[..],
            &[b'k', Kind::Knowledge as u8, 0][..],
            &[b'k', Kind::Cooperation as u8, 1, 2][..],
        ] {
            let refused = service.list(Collection::Offers, &live, Some(bad), 10).await;
            assert!(
                matches!(refused, Err(ServiceError::BadRequest(_))),
                "{bad:?}"
            );
        }
        // The status counts live items alone.
        let live_count = all.iter().filter(|e| status_of(e, now) == "live").count();
        assert_eq!(
            service.count_live(Collection::Offers).await?,
            live_count as u64
        );
        drop(service);
        drop(ingest);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
