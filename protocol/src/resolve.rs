//! Item resolution: which record of a logical item wins, on every node alike.
//!
//! An item is (region, kind, key). The highest revision wins; at equal revisions a tombstone beats
//! content (erasure must win), then the lowest record id. Two different records with the same
//! revision are equivocation: both are kept as evidence and the author is flagged, but the winner
//! is the same everywhere. Wall clocks never decide; expiry only hides.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::bytes::{PublicKey, RecordId, RegionId};
use crate::envelope::{Kind, Record};
use crate::types::ItemRef;

/// What resolution needs to know about one record of an item.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Revision {
    pub id: RecordId,
    pub revision: u64,
    pub tombstone: bool,
    pub expires_at_ms: Option<u64>,
}

impl Revision {
    /// The resolution facts of a record.
    pub fn of(record: &Record) -> Revision {
        Revision {
            id: record.id,
            revision: record.content.revision,
            tombstone: record.content.body.is_tombstone(),
            expires_at_ms: record.content.expires_at_ms,
        }
    }

    /// Total order of precedence: `Greater` means `self` wins over `other`.
    pub fn precedence(&self, other: &Revision) -> Ordering {
        self.revision
            .cmp(&other.revision)
            .then(self.tombstone.cmp(&other.tombstone))
            .then(other.id.cmp(&self.id))
    }

    /// Whether the item is visible in queries at `now_ms` (not withdrawn, not expired).
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.tombstone && self.expires_at_ms.is_none_or(|e| now_ms < e)
    }
}

/// What to do when `incoming` meets the item's `current` winner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The same record again: change nothing.
    Duplicate,
    /// `incoming` wins and replaces `current`.
    Replace,
    /// `current` stays; `incoming` is older.
    Keep,
    /// Same revision, different bytes. `incoming_wins` says which is the winner; both are kept
    /// as evidence.
    Equivocation { incoming_wins: bool },
}

/// Decides between the current winner of an item and an incoming record of it.
pub fn decide(current: &Revision, incoming: &Revision) -> Decision {
    if current.id == incoming.id {
        return Decision::Duplicate;
    }
    let wins = incoming.precedence(current) == Ordering::Greater;
    if current.revision == incoming.revision {
        Decision::Equivocation {
            incoming_wins: wins,
        }
    } else if wins {
        Decision::Replace
    } else {
        Decision::Keep
    }
}

/// The resolved state of one item.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub winner: Revision,
    /// Other records with the winner's revision (equivocation evidence), sorted.
    pub equivocations: Vec<RecordId>,
}

/// Resolves every item among `records` (any order, duplicates allowed). Only item kinds
/// (those that can be withdrawn) are resolved; membership records and expressions of interest
/// are not items. `region_of` maps an author key to its region, so revisions made after a key
/// rotation continue the same item.
pub fn resolve<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    region_of: impl Fn(&PublicKey) -> RegionId,
) -> BTreeMap<ItemRef, Resolved> {
    let mut items: BTreeMap<ItemRef, Resolved> = BTreeMap::new();
    let mut same_revision: BTreeMap<ItemRef, Vec<Revision>> = BTreeMap::new();
    for record in records {
        let c = &record.content;
        if !c.kind.withdrawable() {
            continue;
        }
        let item = ItemRef {
            region: region_of(&c.author),
            kind: c.kind,
            key: c.key.clone(),
        };
        let incoming = Revision::of(record);
        same_revision
            .entry(item.clone())
            .or_default()
            .push(incoming);
        match items.get_mut(&item) {
            None => {
                items.insert(
                    item,
                    Resolved {
                        winner: incoming,
                        equivocations: Vec::new(),
                    },
                );
            }
            Some(current) => {
                if incoming.precedence(&current.winner) == Ordering::Greater {
                    current.winner = incoming;
                }
            }
        }
    }
    for (item, resolved) in &mut items {
        let mut evidence: Vec<RecordId> = same_revision
            .get(item)
            .into_iter()
            .flatten()
            // Evidence never carries a body beside a winning tombstone (erasure holds).
            .filter(|r| r.revision == resolved.winner.revision && r.id != resolved.winner.id)
            .filter(|r| !resolved.winner.tombstone || r.tombstone)
            .map(|r| r.id)
            .collect();
        evidence.sort();
        evidence.dedup();
        resolved.equivocations = evidence;
    }
    items
}

/// Whether a kind is resolved as an item.
pub fn is_item_kind(kind: Kind) -> bool {
    kind.withdrawable()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(id: u8, revision: u64, tombstone: bool) -> Revision {
        Revision {
            id: RecordId([id; 32]),
            revision,
            tombstone,
            expires_at_ms: None,
        }
    }

    #[test]
    fn higher_revision_wins_and_older_is_kept_out() {
        assert_eq!(
            decide(&rev(1, 1, false), &rev(2, 2, false)),
            Decision::Replace
        );
        assert_eq!(decide(&rev(2, 2, false), &rev(1, 1, false)), Decision::Keep);
        assert_eq!(
            decide(&rev(1, 1, false), &rev(1, 1, false)),
            Decision::Duplicate
        );
    }

    #[test]
    fn equivocation_picks_tombstone_then_lowest_id() {
        assert_eq!(
            decide(&rev(5, 3, false), &rev(9, 3, true)),
            Decision::Equivocation {
                incoming_wins: true
            }
        );
        assert_eq!(
            decide(&rev(5, 3, false), &rev(9, 3, false)),
            Decision::Equivocation {
                incoming_wins: false
            }
        );
        assert_eq!(
            decide(&rev(9, 3, false), &rev(5, 3, false)),
            Decision::Equivocation {
                incoming_wins: true
            }
        );
    }

    #[test]
    fn expiry_hides_at_the_instant() {
        let mut r = rev(1, 1, false);
        r.expires_at_ms = Some(1000);
        assert!(r.is_live(999));
        assert!(!r.is_live(1000));
        assert!(!rev(1, 1, true).is_live(0));
    }
}
