//! The federation at a glance, from this node's replica: per region, counts of items by kind,
//! NACE section and status ([`overview`]), and the co-operation potential between regions —
//! how many complementary offer/request pairs score at least a threshold ([`potential`]).
//!
//! Outcomes of accepted expressions of interest (agreements, jobs) are replicated `outcome`
//! records of the offering region; the overview counts them per region, agreement and year.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kim_protocol::RegionId;
use kim_protocol::codes;
use kim_protocol::envelope::Kind;
use kim_protocol::matching::{self, Candidate};
use serde::Serialize;

use crate::ingest::Ingest;
use crate::matches::{MatchError, candidate, load_record};
use crate::search::{Query, SEARCHABLE_KINDS, Status, cooperation_kind_name};

/// Most live offers and requests the potential compares pairwise. The work grows with the
/// square: about 10 s for 10,000 on a busy two-core machine (`kim bench search`).
pub const POTENTIAL_ITEMS_MAX: usize = 10_000;

/// Counts of one region (or of the whole federation).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Live items per kind (`cooperation`, `knowledge`, `organisation`, `project`).
    pub by_kind: BTreeMap<String, u64>,
    /// Live offers and requests per co-operation kind.
    pub by_cooperation_kind: BTreeMap<String, u64>,
    /// Live offers, requests and organisations per NACE section letter; an item with codes in
    /// two sections counts in both.
    pub by_nace_section: BTreeMap<String, u64>,
    /// Every item held by status: `live`, `expired`, `withdrawn`.
    pub by_status: BTreeMap<String, u64>,
}

/// One region's counts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegionOverview {
    pub region: RegionId,
    /// The member's name, empty for a region that is no longer a member.
    pub name: String,
    pub counts: Counts,
}

/// The federation overview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    pub regions: Vec<RegionOverview>,
    pub totals: Counts,
    /// Co-operations and jobs produced from accepted expressions of interest, per offering
    /// region, agreement type and year: `null` until the first outcome is recorded.
    pub outcomes: Option<Outcomes>,
}

/// Outcomes recorded by the offering regions (replicated `outcome` records).
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Outcomes {
    pub total: u64,
    pub jobs_created: u64,
    /// Per offering region (hex id): count.
    pub by_region: BTreeMap<String, u64>,
    /// Per agreement type: count.
    pub by_agreement: BTreeMap<String, u64>,
    /// Per year of the agreement: count.
    pub by_year: BTreeMap<String, u64>,
}

/// Counts the live outcome records.
fn outcomes(ingest: &Ingest) -> Result<Option<Outcomes>, MatchError> {
    let store = ingest.store();
    let mut out = Outcomes::default();
    for entry in store.kind_entries(Kind::Outcome) {
        let entry = entry?;
        if entry.tombstone {
            continue;
        }
        let Some(bytes) = store.record(&entry.id)? else {
            continue;
        };
        let Ok(record) = kim_protocol::Record::decode(bytes) else {
            continue;
        };
        let kim_protocol::Body::Outcome(o) = record.content.body else {
            continue;
        };
        out.total += 1;
        out.jobs_created += u64::from(o.jobs_created.unwrap_or(0));
        bump(&mut out.by_region, &entry.region.to_hex());
        let agreement = serde_json::to_value(o.agreement)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        bump(&mut out.by_agreement, &agreement);
        bump(&mut out.by_year, &o.date.to_string()[..4]);
    }
    Ok((out.total > 0).then_some(out))
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_string()).or_default() += 1;
}

fn member_names(ingest: &Ingest) -> BTreeMap<RegionId, String> {
    ingest
        .membership()
        .members
        .values()
        .map(|m| (m.region, m.name.clone()))
        .collect()
}

/// Counts every searchable item the node holds, per owning region: live and expired items by
/// kind with one count query each in the search index (which holds every winner that is not
/// withdrawn, expired ones too), withdrawn ones from the store's index of withdrawn items,
/// co-operation kinds and NACE sections with one count query per region and value. Like
/// search, the counts include what staff published before the call (the handler waits for
/// it) and records from the network once indexed. No item entry is read: at a million items,
/// reading them all took 5.5 s and pulled all of sled's item pages through its cache, which
/// left the node 10-25 MiB larger.
pub fn overview(ingest: &Ingest, now_ms: u64) -> Result<Overview, MatchError> {
    let store = ingest.store();
    let index = ingest.search().ok_or(MatchError::NoIndex)?;
    let names = member_names(ingest);
    let mut per_region: BTreeMap<RegionId, Counts> = BTreeMap::new();
    let mut totals = Counts::default();
    // Every owner of items, not only members: the node's own region keeps its items after it
    // left, and a removed region's stay until the purge that follows its removal.
    for region in &store.item_regions()? {
        let mut counts = Counts::default();
        for kind in SEARCHABLE_KINDS {
            for status in [Status::Live, Status::Expired] {
                let q = Query {
                    regions: vec![*region],
                    kinds: vec![kind],
                    status,
                    now_ms,
                    ..Query::default()
                };
                let n = index.count(&q)?;
                if status == Status::Live {
                    add(&mut counts, &mut totals, Field::Status, "live", n);
                    add(&mut counts, &mut totals, Field::Kind, kind.as_str(), n);
                } else {
                    add(&mut counts, &mut totals, Field::Status, "expired", n);
                }
            }
        }
        if !counts.by_status.is_empty() {
            per_region.insert(*region, counts);
        }
    }
    for kind in SEARCHABLE_KINDS {
        for region in store.withdrawn_regions(kind) {
            let counts = per_region.entry(region?).or_default();
            add(counts, &mut totals, Field::Status, "withdrawn", 1);
        }
    }
    let sections: Vec<&str> = codes::nace_all()
        .iter()
        .filter(|c| c.level == 1)
        .map(|c| c.code)
        .collect();
    use kim_protocol::types::CooperationKind::*;
    let kinds = [
        BusinessOffer,
        BusinessRequest,
        TechnologyOffer,
        TechnologyRequest,
        ResearchRequest,
        KnowledgeOffer,
        KnowledgeRequest,
    ];
    let live = |region: RegionId| Query {
        regions: vec![region],
        status: Status::Live,
        now_ms,
        ..Query::default()
    };
    for (region, counts) in per_region.iter_mut() {
        let has = |kind: Kind| counts.by_kind.contains_key(kind.as_str());
        let (offers, organisations) = (has(Kind::Cooperation), has(Kind::Organisation));
        if offers {
            for kind in kinds {
                let q = Query {
                    cooperation_kinds: vec![kind],
                    ..live(*region)
                };
                add(
                    counts,
                    &mut totals,
                    Field::CooperationKind,
                    cooperation_kind_name(kind),
                    index.count(&q)?,
                );
            }
        }
        if !offers && !organisations {
            continue;
        }
        for section in &sections {
            let q = Query {
                kinds: vec![Kind::Cooperation, Kind::Organisation],
                nace: vec![section.to_string()],
                ..live(*region)
            };
            add(
                counts,
                &mut totals,
                Field::NaceSection,
                section,
                index.count(&q)?,
            );
        }
    }
    let regions = per_region
        .into_iter()
        .map(|(region, counts)| RegionOverview {
            region,
            name: names.get(&region).cloned().unwrap_or_default(),
            counts,
        })
        .collect();
    Ok(Overview {
        regions,
        totals,
        outcomes: outcomes(ingest)?,
    })
}

#[derive(Clone, Copy)]
enum Field {
    Status,
    Kind,
    CooperationKind,
    NaceSection,
}

/// Adds a non-zero count to a region's and the federation's counts.
fn add(counts: &mut Counts, totals: &mut Counts, field: Field, key: &str, n: usize) {
    if n == 0 {
        return;
    }
    for c in [counts, totals] {
        let map = match field {
            Field::Status => &mut c.by_status,
            Field::Kind => &mut c.by_kind,
            Field::CooperationKind => &mut c.by_cooperation_kind,
            Field::NaceSection => &mut c.by_nace_section,
        };
        *map.entry(key.to_string()).or_default() += n as u64;
    }
}

/// A region in the potential matrix.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegionRef {
    pub region: RegionId,
    pub name: String,
    /// Live offers and requests of the region.
    pub live: u64,
}

/// The co-operation potential between regions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Potential {
    pub threshold: u8,
    /// Rows and columns of `matrix`, in this order.
    pub regions: Vec<RegionRef>,
    /// `matrix[i][j]`: pairs of a live item of region i and one of region j that pass the hard
    /// filters and score at least `threshold`. Symmetric; the diagonal counts pairs within one
    /// region. Each pair is counted once (in both mirrored cells when the regions differ).
    pub matrix: Vec<Vec<u64>>,
    /// Distinct pairs counted.
    pub pairs: u64,
}

/// Why the potential could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum PotentialError {
    #[error(
        "the node holds {0} live offers and requests; the potential compares at most {POTENTIAL_ITEMS_MAX}"
    )]
    TooMany(usize),
    #[error("{0}")]
    Match(#[from] MatchError),
}

/// Every complementary pair of live offers and requests scored exactly, counted per region
/// pair when its score reaches `threshold`.
pub fn potential(ingest: &Ingest, threshold: u8, now_ms: u64) -> Result<Potential, PotentialError> {
    let store = ingest.store();
    let names = member_names(ingest);
    let live_entry = |entry: &crate::store::ItemEntry| {
        entry.kind == Kind::Cooperation && !entry.tombstone && entry.is_live(now_ms)
    };
    // Counted from the item entries before any record is loaded: refusing after loading
    // ten thousand candidates left their memory with the allocator (about 30 MiB at a
    // million records).
    let mut seen = 0usize;
    for entry in store.item_entries() {
        if live_entry(&entry.map_err(MatchError::from)?) {
            seen += 1;
            if seen > POTENTIAL_ITEMS_MAX {
                return Err(PotentialError::TooMany(seen));
            }
        }
    }
    let mut items: Vec<Candidate> = Vec::with_capacity(seen);
    for entry in store.item_entries() {
        let entry = entry.map_err(MatchError::from)?;
        if !live_entry(&entry) {
            continue;
        }
        // Arrived since the count: still bounded.
        if items.len() >= POTENTIAL_ITEMS_MAX {
            return Err(PotentialError::TooMany(items.len() + 1));
        }
        if let Some(record) = load_record(store, &entry.id)?
            && let Some(c) = candidate(store, entry.region, &record)
            && c.is_live(now_ms)
        {
            items.push(c);
        }
    }
    let mut region_ids: Vec<RegionId> = items
        .iter()
        .map(|c| *c.author())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    region_ids.sort_by(|a, b| {
        let name = |r: &RegionId| names.get(r).cloned().unwrap_or_default();
        name(a).cmp(&name(b)).then(a.cmp(b))
    });
    let position: HashMap<RegionId, usize> = region_ids
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, i))
        .collect();
    let n = region_ids.len();
    let mut matrix = vec![vec![0u64; n]; n];
    let mut live = vec![0u64; n];
    let mut pairs = 0u64;
    // Group by kind so only complementary kinds are compared.
    let mut by_kind: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    for (i, c) in items.iter().enumerate() {
        by_kind
            .entry(cooperation_kind_name(c.body().kind))
            .or_default()
            .push(i);
        if let Some(&i) = position.get(c.author()) {
            live[i] += 1;
        }
    }
    for (i, a) in items.iter().enumerate() {
        for kind in matching::complements(a.body().kind) {
            for &j in by_kind
                .get(cooperation_kind_name(*kind))
                .into_iter()
                .flatten()
            {
                // Each unordered pair once: by position in `items`.
                let Some(b) = items.get(j).filter(|_| j > i) else {
                    continue;
                };
                if matching::eligible(a, b, now_ms).is_err()
                    || matching::score_total(a, b, now_ms) < threshold
                {
                    continue;
                }
                let (Some(&x), Some(&y)) = (position.get(a.author()), position.get(b.author()))
                else {
                    continue;
                };
                matrix[x][y] += 1;
                if x != y {
                    matrix[y][x] += 1;
                }
                pairs += 1;
            }
        }
    }
    let regions = region_ids
        .iter()
        .zip(live)
        .map(|(r, live)| RegionRef {
            region: *r,
            name: names.get(r).cloned().unwrap_or_default(),
            live,
        })
        .collect();
    Ok(Potential {
        threshold,
        regions,
        matrix,
        pairs,
    })
}
