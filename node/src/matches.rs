//! Matching one offer or request against the node's replica: the search index retrieves the
//! candidates, the pure rules in `kim_protocol::matching` decide and score them.
//!
//! Retrieval: the index keeps only items of a complementary co-operation kind that are live and
//! located where the offer's partner profile looks (target countries and regions), and ranks
//! them by shared words (title, summary, keywords) and shared NACE sectors. The best
//! [`MATCH_CANDIDATES_MAX`] of them are loaded from the store and judged exactly by
//! `matching::eligible` and `matching::score`. A pair that shares neither words nor sectors can
//! score at most the partnership, cohesion and freshness points (30), so ranking by content
//! first loses only such weak pairs, and only when more than [`MATCH_CANDIDATES_MAX`] candidates
//! share content with the offer.

use kim_protocol::envelope::{Body, Kind, Record};
use kim_protocol::matching::{self, Candidate, ScorePart};
use kim_protocol::types::CooperationKind;
use kim_protocol::{RecordId, RegionId};
use serde::Serialize;

use crate::ingest::Ingest;
use crate::search::{Query, SearchError, Status};
use crate::store::{Store, StoreError};

/// Most matches one call returns.
pub const MATCH_LIMIT_MAX: usize = 100;
/// Candidates loaded and scored exactly per call.
pub const MATCH_CANDIDATES_MAX: usize = 300;
/// How many words of an offer's text go into the retrieval query.
const QUERY_WORDS_MAX: usize = 64;

/// Why matches could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("no offer or request {key:?} of region {region}")]
    NotFound { region: RegionId, key: String },
    #[error("offer or request {key:?} was withdrawn: it has no matches")]
    Withdrawn { key: String },
    #[error("offer or request {key:?} is not live ({why}): renew it to see matches")]
    NotLive { key: String, why: &'static str },
    #[error("the search index is not available; restart the node to rebuild it")]
    NoIndex,
    #[error("{0}")]
    Search(#[from] SearchError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("stored record {0} does not decode; the store is damaged")]
    Damaged(RecordId),
}

/// The matches of one offer or request, best first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MatchReport {
    pub region: RegionId,
    pub key: String,
    pub kind: CooperationKind,
    pub title: String,
    /// Candidates the index retrieved and that were scored exactly.
    pub considered: usize,
    pub matches: Vec<MatchView>,
}

/// One matching item with its score, breakdown and reason.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MatchView {
    pub region: RegionId,
    pub key: String,
    pub record: RecordId,
    pub kind: CooperationKind,
    pub title: String,
    pub nuts: String,
    /// Out of 100: the sum of the breakdown's points.
    pub score: u8,
    /// Sector, keywords, text, partnership, cohesion and freshness, each with its reason.
    pub breakdown: Vec<ScorePart>,
    /// Why matched, in one sentence: the parts that scored, strongest first.
    pub why: String,
}

/// Loads a stored record by id and decodes it.
pub fn load_record(store: &Store, id: &RecordId) -> Result<Option<Record>, MatchError> {
    match store.record(id)? {
        None => Ok(None),
        Some(bytes) => Record::decode(bytes)
            .map(Some)
            .map_err(|_| MatchError::Damaged(*id)),
    }
}

/// The record a search hit stands for: the store's current winner of the hit's item, if it is
/// not withdrawn. The index may lag the store; the winner is what the node holds now, followed
/// through a revision that lands while it is read ([`Store::winner_record`]).
pub fn load_hit(
    store: &Store,
    hit: &crate::search::Hit,
) -> Result<Option<(RecordId, Record)>, MatchError> {
    let Some(entry) = store.item(&hit.region, hit.kind, &hit.key)? else {
        return Ok(None);
    };
    match store.winner_record(&entry)? {
        Some((current, _)) if current.tombstone => Ok(None),
        Some((current, bytes)) => Record::decode(bytes)
            .map(|record| Some((current.id, record)))
            .map_err(|_| MatchError::Damaged(current.id)),
        None => Ok(None),
    }
}

/// A matching candidate from a co-operation record owned by `region`, with the public profile
/// of its organisation when the record names one this node holds. `None` for other kinds.
pub fn candidate(store: &Store, region: RegionId, record: &Record) -> Option<Candidate> {
    candidate_with(store, region, record, true)
}

/// As [`candidate`]; the organisation is looked up only when `organisation` is set or the
/// record names no NACE code (the organisation's codes stand in then).
fn candidate_with(
    store: &Store,
    region: RegionId,
    record: &Record,
    organisation: bool,
) -> Option<Candidate> {
    let c = &record.content;
    let Body::Cooperation(body) = &c.body else {
        return None;
    };
    let mut candidate = Candidate::new(
        region,
        c.key.clone(),
        body.clone(),
        c.created_at_ms,
        c.expires_at_ms,
    );
    if let Some(org) = body
        .organisation
        .as_ref()
        .filter(|_| organisation || body.nace.is_empty())
    {
        let profile = store
            .item(&org.region, Kind::Organisation, &org.key)
            .ok()
            .flatten()
            .filter(|entry| !entry.tombstone)
            .and_then(|entry| load_record(store, &entry.id).ok().flatten());
        if let Some(Body::Organisation(o)) = profile.as_ref().map(|r| &r.content.body) {
            candidate = candidate.with_organisation(o);
        }
    }
    Some(candidate)
}

/// The reason of a score in one sentence: the parts that earned points, strongest first.
pub fn why(score: &matching::Score) -> String {
    let mut parts: Vec<&ScorePart> = score.parts.iter().filter(|p| p.points > 0).collect();
    parts.sort_by(|a, b| b.points.cmp(&a.points).then(a.name.cmp(b.name)));
    if parts.is_empty() {
        return format!(
            "{}/100: complementary, but nothing else in common",
            score.total
        );
    }
    let reasons: Vec<String> = parts
        .iter()
        .map(|p| format!("{} ({}/{})", p.why, p.points, p.max))
        .collect();
    format!("{}/100: {}", score.total, reasons.join("; "))
}

/// The retrieval query's text: title, summary and keywords, at most [`QUERY_WORDS_MAX`] words.
fn query_text(body: &kim_protocol::types::Cooperation) -> String {
    let text = [body.title.as_str(), body.summary.as_str()]
        .into_iter()
        .chain(body.technology_keywords.iter().map(String::as_str))
        .chain(body.market_keywords.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    text.split_whitespace()
        .take(QUERY_WORDS_MAX)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The index query that retrieves the candidates of an offer or request: live items of a
/// complementary kind where its partner profile looks, ranked by its words (and, in
/// [`SearchIndex::candidates`](crate::search::SearchIndex::candidates), its NACE codes).
pub fn retrieval_query(body: &kim_protocol::types::Cooperation, now_ms: u64) -> Query {
    let partner = &body.partner_sought;
    Query {
        text: Some(query_text(body)),
        kinds: vec![Kind::Cooperation],
        cooperation_kinds: matching::complements(body.kind).to_vec(),
        places: partner
            .countries
            .iter()
            .chain(&partner.regions)
            .cloned()
            .collect(),
        status: Status::Live,
        now_ms,
        limit: MATCH_CANDIDATES_MAX,
        ..Query::default()
    }
}

/// The matches of the offer or request `key` of `region` at `now_ms`: at most `limit` (capped
/// at [`MATCH_LIMIT_MAX`]), each scoring at least `min_score`, best first.
pub fn find_matches(
    ingest: &Ingest,
    region: RegionId,
    key: &str,
    limit: usize,
    min_score: u8,
    now_ms: u64,
) -> Result<MatchReport, MatchError> {
    let store = ingest.store();
    let index = ingest.search().ok_or(MatchError::NoIndex)?;
    let not_found = || MatchError::NotFound {
        region,
        key: key.to_string(),
    };
    let entry = store
        .item(&region, Kind::Cooperation, key)?
        .ok_or_else(not_found)?;
    if entry.tombstone {
        return Err(MatchError::Withdrawn {
            key: key.to_string(),
        });
    }
    let record = load_record(store, &entry.id)?.ok_or_else(not_found)?;
    let subject = candidate(store, region, &record).ok_or_else(not_found)?;
    if subject.expires_at_ms().is_some_and(|e| now_ms >= e) {
        return Err(MatchError::NotLive {
            key: key.to_string(),
            why: "expired",
        });
    }
    if !subject.is_live(now_ms) {
        return Err(MatchError::NotLive {
            key: key.to_string(),
            why: "its deadline for expressions of interest has passed",
        });
    }
    let body = subject.body();
    let partner = &body.partner_sought;
    let query = retrieval_query(body, now_ms);
    let started = std::time::Instant::now();
    let hits = index.candidates(&query, &body.nace)?;
    let retrieved = started.elapsed();
    // A candidate's organisation matters only to this side's partner profile (type, size);
    // the candidates' own profiles are checked against the subject, loaded in full above.
    let organisations = !partner.org_types.is_empty() || !partner.sizes.is_empty();
    let mut others = Vec::with_capacity(hits.len());
    for hit in &hits {
        if hit.region == region && hit.key == key {
            continue;
        }
        // A hit whose record vanished since the index commit is skipped, not an error.
        if let Some((id, record)) = load_hit(store, hit)?
            && let Some(c) = candidate_with(store, hit.region, &record, organisations)
        {
            others.push((id, c));
        }
    }
    let considered = others.len();
    let loaded = started.elapsed();
    let best = matching::best_matches(
        &subject,
        others.iter().map(|(_, c)| c),
        now_ms,
        min_score,
        limit.min(MATCH_LIMIT_MAX),
    );
    let matches = best
        .into_iter()
        .filter_map(|(i, score)| {
            let (record, c) = others.get(i)?;
            Some(MatchView {
                region: *c.author(),
                key: c.key().to_string(),
                record: *record,
                kind: c.body().kind,
                title: c.body().title.clone(),
                nuts: c.body().nuts.clone(),
                score: score.total,
                why: why(&score),
                breakdown: score.parts,
            })
        })
        .collect();
    tracing::debug!(
        key,
        considered,
        retrieve_us = retrieved.as_micros() as u64,
        load_us = (loaded - retrieved).as_micros() as u64,
        score_us = (started.elapsed() - loaded).as_micros() as u64,
        "matches"
    );
    Ok(MatchReport {
        region,
        key: key.to_string(),
        kind: body.kind,
        title: body.title.clone(),
        considered,
        matches,
    })
}
