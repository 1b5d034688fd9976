//! Saved searches and the notifications they raise: local-only data in the store's `local` tree
//! (keys `saved-search/{id}` and `notification/{id}`), never part of a record, never synced.
//!
//! The ingest pipeline calls [`notify`] after every batch it made durable and indexed, with the
//! items whose winner the batch changed — whatever path the records came by (API, import,
//! gossip, sync). Each saved search runs against just those items; an item that matches and was
//! not notified for that search before gets one notification. A later revision of the same item
//! does not notify again (the id is derived from the search and the item), so a notification
//! appears exactly once per search and item.

use std::collections::BTreeSet;

use kim_protocol::envelope::{Body, Kind};
use kim_protocol::{RecordId, RegionId};
use serde::{Deserialize, Serialize};

use crate::search::{SearchIndex, SearchParams, Sort, item_key};
use crate::store::{Store, StoreError};

const SAVED_PREFIX: &str = "saved-search/";
const NOTIFICATION_PREFIX: &str = "notification/";
/// Most saved searches a node keeps (each runs after every ingest batch).
pub const SAVED_SEARCHES_MAX: usize = 100;
/// Most notifications kept; beyond it the oldest read ones, then the oldest, are dropped.
pub const NOTIFICATIONS_MAX: usize = 10_000;
/// Longest name of a saved search, in characters.
pub const SAVED_NAME_CHARS_MAX: usize = 100;

/// What a user saves: a name and the search's parameters (as `GET /api/v1/search` takes them).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SavedSearchInput {
    pub name: String,
    #[serde(default)]
    pub query: SearchParams,
}

/// A saved search as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SavedSearch {
    /// 16 hex digits.
    pub id: String,
    pub name: String,
    pub query: SearchParams,
    pub created_at_ms: u64,
}

/// A new item that matched a saved search.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Notification {
    /// 16 hex digits, derived from the saved search and the item.
    pub id: String,
    pub saved_search: String,
    pub saved_search_name: String,
    pub region: RegionId,
    pub kind: Kind,
    pub key: String,
    /// The record that made the item match.
    pub record: RecordId,
    pub title: String,
    pub at_ms: u64,
    pub read: bool,
}

/// Why a saved-search call failed.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("query: {0}")]
    BadQuery(String),
    #[error("{0}")]
    BadName(String),
    #[error("this node keeps at most {SAVED_SEARCHES_MAX} saved searches; delete one first")]
    TooMany,
    #[error("no saved search {0}")]
    NoSearch(String),
    #[error("no notification {0}; nothing was marked")]
    NoNotification(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

fn decode<T: serde::de::DeserializeOwned>(
    entries: Vec<(String, serde_json::Value)>,
) -> impl Iterator<Item = T> {
    entries.into_iter().filter_map(|(key, value)| {
        serde_json::from_value(value)
            .map_err(|e| tracing::warn!(key, cause = %e, "unreadable local value skipped"))
            .ok()
    })
}

fn to_value<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Every saved search, oldest first.
pub fn list(store: &Store) -> Result<Vec<SavedSearch>, SavedError> {
    let mut out: Vec<SavedSearch> = decode(store.local_scan(SAVED_PREFIX)?).collect();
    out.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// Saves a search after checking its name and parameters. Existing items do not notify; only
/// items arriving from now on.
pub fn add(store: &Store, input: SavedSearchInput, now_ms: u64) -> Result<SavedSearch, SavedError> {
    let name = input.name.trim().to_string();
    if name.is_empty() || name.chars().count() > SAVED_NAME_CHARS_MAX {
        return Err(SavedError::BadName(format!(
            "name must be 1 to {SAVED_NAME_CHARS_MAX} characters"
        )));
    }
    input.query.to_query(now_ms).map_err(SavedError::BadQuery)?;
    if store.local_scan(SAVED_PREFIX)?.len() >= SAVED_SEARCHES_MAX {
        return Err(SavedError::TooMany);
    }
    let mut nonce = [0u8; 8];
    if getrandom::fill(&mut nonce).is_err() {
        nonce = now_ms.to_be_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(name.as_bytes());
    hasher.update(&now_ms.to_be_bytes());
    hasher.update(&nonce);
    let id = hasher.finalize().to_hex()[..16].to_string();
    let saved = SavedSearch {
        id: id.clone(),
        name,
        query: input.query,
        created_at_ms: now_ms,
    };
    store.local_put(&format!("{SAVED_PREFIX}{id}"), &to_value(&saved))?;
    Ok(saved)
}

/// Deletes a saved search; its notifications stay until read and pruned.
pub fn remove(store: &Store, id: &str) -> Result<(), SavedError> {
    if store.local_delete(&format!("{SAVED_PREFIX}{id}"))? {
        Ok(())
    } else {
        Err(SavedError::NoSearch(id.to_string()))
    }
}

/// Notifications, newest first; with `unread_only` only those not marked read.
pub fn notifications(
    store: &Store,
    unread_only: bool,
    limit: usize,
) -> Result<Vec<Notification>, SavedError> {
    let mut out: Vec<Notification> = decode::<Notification>(store.local_scan(NOTIFICATION_PREFIX)?)
        .filter(|n| !unread_only || !n.read)
        .collect();
    out.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(a.id.cmp(&b.id)));
    out.truncate(limit);
    Ok(out)
}

/// Marks notifications read: the given ids (all must exist, or none is marked), or every one
/// when `ids` is `None`. Returns how many changed.
pub fn mark_read(store: &Store, ids: Option<&[String]>) -> Result<usize, SavedError> {
    let all: Vec<Notification> = decode(store.local_scan(NOTIFICATION_PREFIX)?).collect();
    let chosen: Vec<&Notification> = match ids {
        None => all.iter().collect(),
        Some(ids) => {
            let mut chosen = Vec::new();
            for id in ids {
                let found = all
                    .iter()
                    .find(|n| &n.id == id)
                    .ok_or_else(|| SavedError::NoNotification(id.clone()))?;
                chosen.push(found);
            }
            chosen
        }
    };
    let mut changed = 0;
    for n in chosen.into_iter().filter(|n| !n.read) {
        let mut n = n.clone();
        n.read = true;
        store.local_put(&format!("{NOTIFICATION_PREFIX}{}", n.id), &to_value(&n))?;
        changed += 1;
    }
    Ok(changed)
}

fn notification_id(search: &str, region: &RegionId, kind: Kind, key: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(search.as_bytes());
    hasher.update(b"\n");
    hasher.update(item_key(region, kind, key).as_bytes());
    hasher.finalize().to_hex()[..16].to_string()
}

fn title_of(body: &Body) -> String {
    match body {
        Body::Cooperation(c) => c.title.clone(),
        Body::Knowledge(k) => k.title.clone(),
        Body::Organisation(o) => o.name.clone().unwrap_or_else(|| "(anonymous)".into()),
        Body::Project(p) => format!("{}: {}", p.acronym, p.title),
        _ => String::new(),
    }
}

/// Runs every saved search against `items` (the items an ingest batch just changed, already in
/// the committed index) and records a notification for each new (search, item) match. Errors
/// are logged, never returned: a failed notification must not fail the ingest that stored the
/// records. Returns the notifications recorded.
pub fn notify(
    store: &Store,
    index: &SearchIndex,
    items: &[(RegionId, Kind, String)],
    now_ms: u64,
) -> usize {
    match notify_inner(store, index, items, now_ms) {
        Ok(n) => n,
        Err(err) => {
            tracing::error!(cause = %err, "saved-search notifications failed for a batch");
            0
        }
    }
}

fn notify_inner(
    store: &Store,
    index: &SearchIndex,
    items: &[(RegionId, Kind, String)],
    now_ms: u64,
) -> Result<usize, SavedError> {
    if items.is_empty() {
        return Ok(0);
    }
    let searches = list(store)?;
    if searches.is_empty() {
        return Ok(0);
    }
    let mut recorded = 0;
    for chunk in items.chunks(crate::search::LIMIT_MAX) {
        for search in &searches {
            let Ok(mut q) = search.query.to_query(now_ms) else {
                tracing::warn!(search = %search.id, "saved search no longer parses; skipped");
                continue;
            };
            q.items = chunk.to_vec();
            q.limit = chunk.len();
            q.offset = 0;
            q.sort = Sort::Newest;
            let mut seen = BTreeSet::new();
            for hit in index
                .search(&q)
                .map_err(|e| SavedError::BadQuery(e.to_string()))?
            {
                let id = notification_id(&search.id, &hit.region, hit.kind, &hit.key);
                let key = format!("{NOTIFICATION_PREFIX}{id}");
                if !seen.insert(id.clone()) || store.local_get(&key)?.is_some() {
                    continue;
                }
                // The item's current winner: none if it was withdrawn since it was indexed.
                let found = match crate::matches::load_hit(store, &hit) {
                    Ok(found) => found,
                    Err(crate::matches::MatchError::Store(err)) => return Err(err.into()),
                    Err(err) => {
                        tracing::warn!(item = %hit.key, cause = %err, "saved search matched an item that cannot be read");
                        None
                    }
                };
                let Some((record_id, record)) = found else {
                    continue;
                };
                let title = title_of(&record.content.body);
                let notification = Notification {
                    id,
                    saved_search: search.id.clone(),
                    saved_search_name: search.name.clone(),
                    region: hit.region,
                    kind: hit.kind,
                    key: hit.key,
                    record: record_id,
                    title,
                    at_ms: now_ms,
                    read: false,
                };
                store.local_put(&key, &to_value(&notification))?;
                tracing::info!(search = %search.id, item = %notification.key, "saved search matched a new item");
                recorded += 1;
            }
        }
    }
    if recorded > 0 {
        prune(store)?;
    }
    Ok(recorded)
}

/// Keeps at most [`NOTIFICATIONS_MAX`] notifications: drops the oldest read ones, then the
/// oldest unread ones.
fn prune(store: &Store) -> Result<(), SavedError> {
    let mut all: Vec<Notification> = decode(store.local_scan(NOTIFICATION_PREFIX)?).collect();
    if all.len() <= NOTIFICATIONS_MAX {
        return Ok(());
    }
    all.sort_by(|a, b| b.read.cmp(&a.read).then(a.at_ms.cmp(&b.at_ms)));
    let excess = all.len() - NOTIFICATIONS_MAX;
    for n in all.iter().take(excess) {
        store.local_delete(&format!("{NOTIFICATION_PREFIX}{}", n.id))?;
    }
    Ok(())
}
