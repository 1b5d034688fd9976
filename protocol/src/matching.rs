//! Matching co-operation offers and requests, as brokers do it by hand (DOMAIN.md, "Matching").
//!
//! Pure: no IO, no clock (callers pass `now_ms`), no randomness. Two steps:
//!
//! 1. **Hard filters** ([`eligible`]): both sides live (not withdrawn, not expired, deadline for
//!    expressions of interest not passed), complementary kinds ([`complementary`]), not the same
//!    item or organisation, and each side's *partner sought* (target countries/regions,
//!    organisation types, sizes) respected by the other. A failed filter names its reason
//!    ([`Exclusion`]).
//! 2. **Score out of 100** ([`score`]) with a breakdown; every part says why in words. The weights
//!    are the `*_POINTS_MAX` constants below and sum to 100:
//!
//! | part          | max | rule                                                                  |
//! |---------------|-----|-----------------------------------------------------------------------|
//! | `sector`      | 25  | closest pair of NACE codes by [`codes::nace_distance`]: same code 100 %, 1 step to the common ancestor (e.g. classes of one group) 75 %, 2 steps 50 %, 3 steps (same section) 25 %, other section 0 |
//! | `keywords`    | 25  | Jaccard overlap J of the normalised technology + market keywords; points = max × √J |
//! | `text`        | 20  | cosine of the word-stem sets of title + summary; full points from cosine 0.5 |
//! | `partnership` | 10  | shared partnership types over the shorter list (overlap coefficient)  |
//! | `cohesion`    | 10  | other country 10; same country but another NUTS 2 region 4; same region 0 |
//! | `freshness`   | 10  | mean over both sides of 1 − age/180 days (0 from 180 days on)         |
//!
//! **Cohesion and rural partners.** DOMAIN.md asks for a bonus for a rural partner, but a NUTS code
//! does not say whether a region is rural, and KIM embeds no official urban–rural typology (we
//! never invent codes). The rural bonus is therefore left out; cohesion rewards crossing a border
//! (and, less, crossing a region within one country). Two records published by the same regional
//! node, or located in the same NUTS 2 region, may still match but earn no cohesion points.
//!
//! **Symmetry.** Whether [`eligible`] passes does not depend on argument order (only the side an
//! [`Exclusion`] names does), and `score(a, b) == score(b, a)` part by part, explanations included
//! (they list both sides in a fixed order), so the co-operation potential between two regions does
//! not depend on which side is asked.
//!
//! **Text.** Words are case-folded, split on anything that is not a letter or digit, short words
//! (< 3 letters), numbers and a small stop-word list (English, German, plus the commonest Italian,
//! Slovenian and Polish function words and generic partnering words such as "partner") are
//! dropped, and the rest are cut to their first [`STEM_CHARS`] letters: a crude,
//! language-agnostic stemmer ("sensors" and "sensor" meet; "Technologie" and "technology" too).

use std::fmt;

use serde::Serialize;

use crate::bytes::PublicKey;
use crate::codes;
use crate::types::{
    Cooperation, CooperationKind, Organisation, OrganisationType, PartnerSought, PartnershipType,
    SizeClass,
};

/// Points for sector closeness through the NACE hierarchy.
pub const SECTOR_POINTS_MAX: u8 = 25;
/// Points for technology and market keyword overlap.
pub const KEYWORD_POINTS_MAX: u8 = 25;
/// Points for similar titles and summaries.
pub const TEXT_POINTS_MAX: u8 = 20;
/// Points for shared partnership types.
pub const PARTNERSHIP_POINTS_MAX: u8 = 10;
/// Points for co-operation across borders (cohesion bonus).
pub const COHESION_POINTS_MAX: u8 = 10;
/// Points for recently published records.
pub const FRESHNESS_POINTS_MAX: u8 = 10;

const _: () = assert!(
    SECTOR_POINTS_MAX as u32
        + KEYWORD_POINTS_MAX as u32
        + TEXT_POINTS_MAX as u32
        + PARTNERSHIP_POINTS_MAX as u32
        + COHESION_POINTS_MAX as u32
        + FRESHNESS_POINTS_MAX as u32
        == 100
);

/// Cohesion points when both sides are in one country but in different NUTS 2 regions.
pub const COHESION_OTHER_REGION_POINTS: u8 = 4;
/// Share of the sector points by NACE distance (index = [`codes::nace_distance`]; 5 = other section).
pub const SECTOR_SHARE_BY_DISTANCE: [f64; 6] = [1.0, 0.75, 0.5, 0.25, 0.25, 0.0];
/// Text cosine at and above which the text part earns full points.
pub const TEXT_FULL_COSINE: f64 = 0.5;
/// Words are cut to this many letters before comparison (language-agnostic stemming).
pub const STEM_CHARS: usize = 6;
/// A record's freshness falls linearly from 1 when published to 0 after this age.
pub const FRESHNESS_HORIZON_MS: u64 = 180 * DAY_MS;

const DAY_MS: u64 = 86_400_000;

/// How many shared words or keywords an explanation lists at most.
const WHY_ITEMS_MAX: usize = 5;

/// Stop words, compared with whole case-folded words before stemming. English and German
/// function words, the commonest Italian, Slovenian and Polish ones, and generic partnering
/// vocabulary that every profile uses and that therefore says nothing about a match.
const STOP_WORDS: &[&str] = &[
    // English
    "the",
    "and",
    "for",
    "with",
    "from",
    "that",
    "this",
    "these",
    "those",
    "are",
    "was",
    "were",
    "has",
    "have",
    "had",
    "will",
    "would",
    "can",
    "could",
    "into",
    "onto",
    "its",
    "our",
    "their",
    "they",
    "them",
    "which",
    "who",
    "whom",
    "what",
    "when",
    "where",
    "also",
    "more",
    "most",
    "other",
    "such",
    "than",
    "then",
    "there",
    "both",
    "each",
    "all",
    "any",
    "new",
    "not",
    "but",
    "about",
    "over",
    "under",
    "between",
    "through",
    "within",
    "able",
    "well",
    "use",
    "used",
    "using",
    "based",
    "via",
    "per",
    "out",
    "own",
    // German
    "der",
    "die",
    "das",
    "den",
    "dem",
    "des",
    "ein",
    "eine",
    "einen",
    "einem",
    "einer",
    "eines",
    "und",
    "oder",
    "mit",
    "für",
    "von",
    "vom",
    "zum",
    "zur",
    "bei",
    "auf",
    "aus",
    "nach",
    "über",
    "unter",
    "durch",
    "sich",
    "sind",
    "ist",
    "wird",
    "werden",
    "wurde",
    "hat",
    "haben",
    "auch",
    "als",
    "wie",
    "dass",
    "sowie",
    "ihre",
    "ihren",
    "seine",
    "seinen",
    "neue",
    "neuen",
    "neuer",
    "nicht",
    "noch",
    "bis",
    "einen",
    "diese",
    "dieser",
    "dieses",
    "zwischen",
    // Italian, Slovenian, Polish (commonest function words only)
    "del",
    "della",
    "delle",
    "dei",
    "degli",
    "per",
    "con",
    "che",
    "una",
    "nel",
    "nella",
    "sono",
    "alla",
    "alle",
    "dal",
    "dalla",
    "gli",
    "anche",
    "ter",
    "kot",
    "ali",
    "pri",
    "tudi",
    "smo",
    "ki",
    "za",
    "na",
    "oraz",
    "dla",
    "jest",
    "przez",
    "który",
    "która",
    "które",
    "się",
    "lub",
    "jak",
    "nie",
    "ich",
    "jego",
    "jej",
    // Generic partnering vocabulary
    "partner",
    "partners",
    "partnership",
    "partnerji",
    "partnerje",
    "partnerjev",
    "partnera",
    "partnerów",
    "partnerzy",
    "partnern",
    "seek",
    "seeks",
    "seeking",
    "sought",
    "looking",
    "wanted",
    "offer",
    "offers",
    "offered",
    "offering",
    "request",
    "requests",
    "company",
    "companies",
    "sme",
    "smes",
    "kmu",
    "azienda",
    "podjetje",
    "firma",
    "cooperation",
    "co-operation",
    "kooperation",
    "zusammenarbeit",
    "sucht",
    "gesucht",
    "bietet",
    "cerca",
    "išče",
    "poszukuje",
    "szuka",
];

/// Whether a case-folded word is a stop word (binary search in a sorted copy of the list).
fn is_stop_word(word: &str) -> bool {
    static SORTED: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let sorted = SORTED.get_or_init(|| {
        let mut v = STOP_WORDS.to_vec();
        v.sort_unstable();
        v.dedup();
        v
    });
    sorted.binary_search(&word).is_ok()
}

/// Which argument of a two-sided function a statement is about.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    First,
    Second,
}

/// Why two records cannot be matched: the hard filter that failed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Exclusion {
    /// Both candidates are the same item (same author region and item key).
    SameItem,
    /// That side has been withdrawn (tombstoned).
    Withdrawn { side: Side },
    /// That side's expiry has passed.
    Expired { side: Side },
    /// That side's deadline for expressions of interest has passed.
    DeadlinePassed { side: Side },
    /// The kinds do not complement each other (see [`complementary`]).
    NotComplementary {
        first: CooperationKind,
        second: CooperationKind,
    },
    /// Both records name the same organisation.
    SameOrganisation,
    /// `by` seeks partners in other countries or regions than the other side's `nuts`.
    RegionNotSought { by: Side, nuts: String },
    /// `by` seeks other types of organisation than the other side's.
    OrganisationTypeNotSought {
        by: Side,
        org_type: OrganisationType,
    },
    /// `by` seeks other size classes than the other side's.
    SizeNotSought { by: Side, size: SizeClass },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &Side| match s {
            Side::First => "the first record",
            Side::Second => "the second record",
        };
        match self {
            Exclusion::SameItem => write!(f, "a record cannot match itself"),
            Exclusion::Withdrawn { side: s } => write!(f, "{} has been withdrawn", side(s)),
            Exclusion::Expired { side: s } => write!(f, "{} has expired", side(s)),
            Exclusion::DeadlinePassed { side: s } => write!(
                f,
                "the deadline for expressions of interest in {} has passed",
                side(s)
            ),
            Exclusion::NotComplementary { first, second } => write!(
                f,
                "a {} and a {} do not complement each other",
                kind_name(*first),
                kind_name(*second)
            ),
            Exclusion::SameOrganisation => write!(f, "both records come from one organisation"),
            Exclusion::RegionNotSought { by, nuts } => write!(
                f,
                "{} seeks partners in other countries or regions than {nuts}",
                side(by)
            ),
            Exclusion::OrganisationTypeNotSought { by, org_type } => write!(
                f,
                "{} seeks other types of organisation than {}",
                side(by),
                org_type_name(*org_type)
            ),
            Exclusion::SizeNotSought { by, size } => write!(
                f,
                "{} seeks other sizes of organisation than {}",
                side(by),
                size_name(*size)
            ),
        }
    }
}

impl std::error::Error for Exclusion {}

/// One part of a score: its points out of its maximum, and why, in words.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScorePart {
    /// `sector`, `keywords`, `text`, `partnership`, `cohesion` or `freshness`.
    pub name: &'static str,
    pub points: u8,
    pub max: u8,
    /// A human-readable explanation ("why matched").
    pub why: String,
}

/// A match score out of 100 and its breakdown; `total` is the sum of the parts' points.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Score {
    pub total: u8,
    pub parts: Vec<ScorePart>,
}

impl Score {
    /// The part of the given name, if any.
    pub fn part(&self, name: &str) -> Option<&ScorePart> {
        self.parts.iter().find(|p| p.name == name)
    }
}

/// A word stem with the first word it came from (for explanations), compared by hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    hash: u64,
    word: String,
}

/// A live or withdrawn offer or request with what matching needs, prepared once.
///
/// Build it with [`Candidate::new`]; add the organisation's public profile with
/// [`Candidate::with_organisation`] when known (it lets the partner profile filters apply), and
/// mark tombstoned items with [`Candidate::withdrawn`]. The normalised keywords and word stems are
/// computed at construction, so a node can keep candidates and match one offer against many
/// quickly.
#[derive(Debug, Clone)]
pub struct Candidate {
    author: PublicKey,
    key: String,
    body: Cooperation,
    created_at_ms: u64,
    expires_at_ms: Option<u64>,
    withdrawn: bool,
    org_type: Option<OrganisationType>,
    size: Option<SizeClass>,
    /// NACE codes of the record, or of the organisation when the record names none.
    nace: Vec<String>,
    /// ISO 3166 country of `body.nuts`.
    country: Option<&'static str>,
    /// Normalised keywords, sorted and distinct.
    keywords: Vec<String>,
    /// Hashes of the word stems of title and summary, sorted and distinct.
    stems: Vec<u64>,
}

impl Candidate {
    /// Prepares a record: the author region's key, the item key, the body and the envelope times.
    pub fn new(
        author: PublicKey,
        key: impl Into<String>,
        body: Cooperation,
        created_at_ms: u64,
        expires_at_ms: Option<u64>,
    ) -> Candidate {
        let country = codes::nuts_country(&body.nuts).map(codes::nuts_country_to_iso);
        let keywords = normalised_keywords(&body);
        let stems = stems(&[&body.title, &body.summary]);
        let nace = body.nace.clone();
        Candidate {
            author,
            key: key.into(),
            body,
            created_at_ms,
            expires_at_ms,
            withdrawn: false,
            org_type: None,
            size: None,
            nace,
            country,
            keywords,
            stems,
        }
    }

    /// Adds the public profile of the organisation behind the record: its type and size let the
    /// other side's partner profile apply, and its NACE codes stand in when the record has none.
    pub fn with_organisation(mut self, organisation: &Organisation) -> Candidate {
        self.org_type = Some(organisation.org_type);
        self.size = (organisation.size != SizeClass::Unspecified).then_some(organisation.size);
        if self.nace.is_empty() {
            self.nace = organisation.nace.clone();
        }
        self
    }

    /// Marks the item as withdrawn (a tombstone superseded it).
    pub fn withdrawn(mut self) -> Candidate {
        self.withdrawn = true;
        self
    }

    pub fn author(&self) -> &PublicKey {
        &self.author
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn body(&self) -> &Cooperation {
        &self.body
    }

    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at_ms
    }

    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn
    }

    /// Not withdrawn, not expired and its deadline for expressions of interest not passed.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.liveness(now_ms, Side::First).is_ok()
    }

    fn liveness(&self, now_ms: u64, side: Side) -> Result<(), Exclusion> {
        if self.withdrawn {
            return Err(Exclusion::Withdrawn { side });
        }
        if self.expires_at_ms.is_some_and(|e| now_ms >= e) {
            return Err(Exclusion::Expired { side });
        }
        if let Some(deadline) = &self.body.eoi_deadline {
            // The deadline day itself still counts.
            let end_ms = (deadline.days_since_epoch() + 1).saturating_mul(DAY_MS as i64);
            if i64::try_from(now_ms).unwrap_or(i64::MAX) >= end_ms {
                return Err(Exclusion::DeadlinePassed { side });
            }
        }
        Ok(())
    }

    /// Checks that `self`'s partner profile accepts `other`; `by` names `self`'s side.
    fn accepts(&self, other: &Candidate, by: Side) -> Result<(), Exclusion> {
        let ps: &PartnerSought = &self.body.partner_sought;
        let other_nuts = other.body.nuts.as_str();
        if !(ps.countries.is_empty() && ps.regions.is_empty()) {
            let country_ok = other
                .country
                .is_some_and(|c| ps.countries.iter().any(|w| w == c));
            let region_ok = ps
                .regions
                .iter()
                .any(|r| other_nuts.starts_with(r.as_str()));
            if !country_ok && !region_ok {
                return Err(Exclusion::RegionNotSought {
                    by,
                    nuts: other_nuts.to_string(),
                });
            }
        }
        if let Some(org_type) = other.org_type
            && !ps.org_types.is_empty()
            && !ps.org_types.contains(&org_type)
        {
            return Err(Exclusion::OrganisationTypeNotSought { by, org_type });
        }
        if let Some(size) = other.size
            && !ps.sizes.is_empty()
            && !ps.sizes.contains(&size)
        {
            return Err(Exclusion::SizeNotSought { by, size });
        }
        Ok(())
    }
}

/// Whether two kinds complement each other (symmetric): business offer ↔ business request,
/// technology offer ↔ technology request, knowledge offer ↔ knowledge request, R&D request ↔
/// R&D request or technology offer.
pub fn complementary(a: CooperationKind, b: CooperationKind) -> bool {
    complements(a).contains(&b)
}

/// The kinds that complement `kind`, so that an index can pre-filter by kind.
pub fn complements(kind: CooperationKind) -> &'static [CooperationKind] {
    use CooperationKind::*;
    match kind {
        BusinessOffer => &[BusinessRequest],
        BusinessRequest => &[BusinessOffer],
        TechnologyOffer => &[TechnologyRequest, ResearchRequest],
        TechnologyRequest => &[TechnologyOffer],
        ResearchRequest => &[ResearchRequest, TechnologyOffer],
        KnowledgeOffer => &[KnowledgeRequest],
        KnowledgeRequest => &[KnowledgeOffer],
    }
}

/// The hard filters, symmetric: `Ok` when `a` and `b` may be matched at `now_ms`.
///
/// Checked in this order, first failure wins: same item; each side live (not withdrawn, not
/// expired, expression-of-interest deadline not passed); complementary kinds; not the same
/// organisation (anonymous records name none, so this cannot exclude them); each side's partner
/// profile: target countries (ISO, compared with the other side's NUTS country) and regions
/// (NUTS prefix) — the other side must be in one of them when any are given — organisation
/// types and sizes, applied only when the other side's organisation profile is known.
pub fn eligible(a: &Candidate, b: &Candidate, now_ms: u64) -> Result<(), Exclusion> {
    if a.author == b.author && a.key == b.key {
        return Err(Exclusion::SameItem);
    }
    a.liveness(now_ms, Side::First)?;
    b.liveness(now_ms, Side::Second)?;
    if !complementary(a.body.kind, b.body.kind) {
        return Err(Exclusion::NotComplementary {
            first: a.body.kind,
            second: b.body.kind,
        });
    }
    if let (Some(x), Some(y)) = (&a.body.organisation, &b.body.organisation)
        && x == y
    {
        return Err(Exclusion::SameOrganisation);
    }
    a.accepts(b, Side::First)?;
    b.accepts(a, Side::Second)?;
    Ok(())
}

/// The hard filters, then the score.
pub fn evaluate(a: &Candidate, b: &Candidate, now_ms: u64) -> Result<Score, Exclusion> {
    eligible(a, b, now_ms)?;
    Ok(score(a, b, now_ms))
}

/// The score out of 100 with its breakdown, whether or not the pair is [`eligible`]. Symmetric.
pub fn score(a: &Candidate, b: &Candidate, now_ms: u64) -> Score {
    let parts = vec![
        sector_part(a, b, true),
        keyword_part(a, b, true),
        text_part(a, b, true),
        partnership_part(a, b, true),
        cohesion_part(a, b, true),
        freshness_part(a, b, now_ms, true),
    ];
    let total = parts.iter().map(|p| p.points).sum();
    Score { total, parts }
}

/// The total of [`score`] without building its explanations (for counting many pairs, as the
/// co-operation potential does).
pub fn score_total(a: &Candidate, b: &Candidate, now_ms: u64) -> u8 {
    total(a, b, now_ms)
}

/// The total of [`score`] without building explanations.
fn total(a: &Candidate, b: &Candidate, now_ms: u64) -> u8 {
    sector_part(a, b, false).points
        + keyword_part(a, b, false).points
        + text_part(a, b, false).points
        + partnership_part(a, b, false).points
        + cohesion_part(a, b, false).points
        + freshness_part(a, b, now_ms, false).points
}

/// The candidates that pass the hard filters with `offer` and score at least `threshold`, best
/// first, at most `limit`. Each hit is the candidate's position in `others` and its score; ties
/// are broken by position, so the result is deterministic.
pub fn best_matches<'c>(
    offer: &Candidate,
    others: impl IntoIterator<Item = &'c Candidate>,
    now_ms: u64,
    threshold: u8,
    limit: usize,
) -> Vec<(usize, Score)> {
    if limit == 0 {
        return Vec::new();
    }
    let mut hits: Vec<(u8, usize, &Candidate)> = others
        .into_iter()
        .enumerate()
        .filter(|(_, c)| eligible(offer, c, now_ms).is_ok())
        .filter_map(|(i, c)| {
            let t = total(offer, c, now_ms);
            (t >= threshold).then_some((t, i, c))
        })
        .collect();
    let order = |x: &(u8, usize, &Candidate), y: &(u8, usize, &Candidate)| {
        y.0.cmp(&x.0).then(x.1.cmp(&y.1))
    };
    if hits.len() > limit {
        hits.select_nth_unstable_by(limit - 1, order);
        hits.truncate(limit);
    }
    hits.sort_unstable_by(order);
    hits.into_iter()
        .map(|(_, i, c)| (i, score(offer, c, now_ms)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The parts

fn points(max: u8, share: f64) -> u8 {
    let share = if share.is_nan() {
        0.0
    } else {
        share.clamp(0.0, 1.0)
    };
    // In 0..=max by the clamp; `as` saturates in any case.
    (f64::from(max) * share).round() as u8
}

fn part(
    name: &'static str,
    points: u8,
    max: u8,
    why: impl FnOnce() -> String,
    explain: bool,
) -> ScorePart {
    ScorePart {
        name,
        points,
        max,
        why: if explain { why() } else { String::new() },
    }
}

/// The closest pair of NACE codes: (distance, code of a, code of b).
fn closest_nace<'a>(a: &'a Candidate, b: &'a Candidate) -> Option<(u8, &'a str, &'a str)> {
    let mut best: Option<(u8, &str, &str)> = None;
    for x in &a.nace {
        for y in &b.nace {
            let Some(d) = codes::nace_distance(x, y) else {
                continue;
            };
            // Ties keep the lexicographically smallest pair (independent of argument order).
            let (p, q) = if x <= y { (x, y) } else { (y, x) };
            let better = match best {
                None => true,
                Some((bd, bp, bq)) => (d, p.as_str(), q.as_str()) < (bd, bp, bq),
            };
            if better {
                best = Some((d, p, q));
            }
        }
    }
    best
}

/// The closest common ancestor of two codes `d` steps above the deeper one.
fn nace_ancestor(x: &str, y: &str, d: u8) -> Option<&'static codes::NaceCode> {
    let (x, y) = (codes::nace(x)?, codes::nace(y)?);
    let mut c = if x.level >= y.level { x } else { y };
    for _ in 0..d {
        c = codes::nace(c.parent?)?;
    }
    Some(c)
}

fn sector_part(a: &Candidate, b: &Candidate, explain: bool) -> ScorePart {
    let max = SECTOR_POINTS_MAX;
    let best = closest_nace(a, b);
    let share = best.map_or(0.0, |(d, _, _)| {
        SECTOR_SHARE_BY_DISTANCE
            .get(usize::from(d))
            .copied()
            .unwrap_or(0.0)
    });
    let why = || match best {
        None if a.nace.is_empty() || b.nace.is_empty() => "no NACE sector on one side".to_string(),
        None => "no known NACE sector".to_string(),
        Some((0, x, _)) => format!("same sector: NACE {x} {}", nace_label(x)),
        Some((5, x, y)) => format!("different NACE sections ({x} and {y})"),
        Some((d, x, y)) => match nace_ancestor(x, y, d) {
            Some(anc) => format!(
                "related sectors: NACE {x} and {y} share {} {} ({})",
                nace_level_name(anc.level),
                anc.code,
                anc.name
            ),
            None => format!("related sectors: NACE {x} and {y}"),
        },
    };
    part("sector", points(max, share), max, why, explain)
}

fn nace_label(code: &str) -> String {
    codes::nace(code).map_or_else(String::new, |c| format!("({})", c.name))
}

fn nace_level_name(level: u8) -> &'static str {
    match level {
        1 => "section",
        2 => "division",
        3 => "group",
        _ => "class",
    }
}

/// Case-folds a keyword and treats `-`, `_`, `/` and runs of white space as one space.
pub fn normalise_keyword(keyword: &str) -> String {
    keyword
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || matches!(c, '-' | '_' | '/'))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn normalised_keywords(c: &Cooperation) -> Vec<String> {
    let mut out: Vec<String> = c
        .technology_keywords
        .iter()
        .chain(&c.market_keywords)
        .map(|k| normalise_keyword(k))
        .filter(|k| !k.is_empty())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Items of two sorted, distinct slices present in both.
fn intersect<'s, T>(
    a: &'s [T],
    b: &'s [T],
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<&'s T> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match cmp(x, y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(x);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn count_common<T>(a: &[T], b: &[T], cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match cmp(x, y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn list(items: &[&str]) -> String {
    let mut out = items
        .iter()
        .take(WHY_ITEMS_MAX)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > WHY_ITEMS_MAX {
        out.push_str(", …");
    }
    out
}

fn keyword_part(a: &Candidate, b: &Candidate, explain: bool) -> ScorePart {
    let max = KEYWORD_POINTS_MAX;
    let common = count_common(&a.keywords, &b.keywords, |x, y| x.cmp(y));
    let union = a.keywords.len() + b.keywords.len() - common;
    let jaccard = if union == 0 {
        0.0
    } else {
        common as f64 / union as f64
    };
    let why = || {
        if a.keywords.is_empty() || b.keywords.is_empty() {
            return "no keywords on one side".to_string();
        }
        if common == 0 {
            return "no shared keywords".to_string();
        }
        let shared = intersect(&a.keywords, &b.keywords, |x, y| x.cmp(y));
        let shared: Vec<&str> = shared.iter().map(|k| k.as_str()).collect();
        format!("{common} of {union} keywords shared: {}", list(&shared))
    };
    part("keywords", points(max, jaccard.sqrt()), max, why, explain)
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Calls `f` with each significant case-folded word of `text` and the hash of its stem (see
/// the module documentation).
fn for_each_stem(text: &str, mut f: impl FnMut(&str, u64)) {
    let lower = text.to_lowercase();
    for word in lower.split(|c: char| !c.is_alphanumeric()) {
        let mut chars = 0;
        let mut numeric = true;
        let mut stem_end = word.len();
        for (i, c) in word.char_indices() {
            if chars == STEM_CHARS {
                stem_end = i;
            }
            chars += 1;
            numeric &= c.is_numeric();
        }
        if chars < 3 || numeric || is_stop_word(word) {
            continue;
        }
        f(word, fnv1a(word.get(..stem_end).unwrap_or(word)));
    }
}

/// The distinct stem hashes of some texts, sorted.
fn stems(texts: &[&str]) -> Vec<u64> {
    let mut out = Vec::new();
    for text in texts {
        for_each_stem(text, |_, hash| out.push(hash));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The distinct stems of some texts with the first word each came from, sorted by hash.
fn terms(texts: &[&str]) -> Vec<Term> {
    let mut out: Vec<Term> = Vec::new();
    for text in texts {
        for_each_stem(text, |word, hash| {
            out.push(Term {
                hash,
                word: word.to_string(),
            })
        });
    }
    // A stable sort keeps each stem's first word.
    out.sort_by_key(|t| t.hash);
    out.dedup_by_key(|t| t.hash);
    out
}

fn text_part(a: &Candidate, b: &Candidate, explain: bool) -> ScorePart {
    let max = TEXT_POINTS_MAX;
    let common = count_common(&a.stems, &b.stems, |x, y| x.cmp(y));
    let denominator = ((a.stems.len() * b.stems.len()) as f64).sqrt();
    let cosine = if denominator > 0.0 {
        common as f64 / denominator
    } else {
        0.0
    };
    let why = || {
        if common == 0 {
            return "titles and summaries share no significant words".to_string();
        }
        // Name the words as the first record wrote them, sorted so either order reads alike.
        let (first, second) = if (&a.author, &a.key) <= (&b.author, &b.key) {
            (a, b)
        } else {
            (b, a)
        };
        let text = |c: &Candidate| terms(&[&c.body.title, &c.body.summary]);
        let (first, second) = (text(first), text(second));
        let shared = intersect(&first, &second, |x, y| x.hash.cmp(&y.hash));
        let mut words: Vec<&str> = shared.iter().map(|t| t.word.as_str()).collect();
        words.sort_unstable();
        format!(
            "titles and summaries share {common} word{} (similarity {:.0} %): {}",
            if common == 1 { "" } else { "s" },
            cosine * 100.0,
            list(&words)
        )
    };
    part(
        "text",
        points(max, cosine / TEXT_FULL_COSINE),
        max,
        why,
        explain,
    )
}

fn partnership_part(a: &Candidate, b: &Candidate, explain: bool) -> ScorePart {
    let max = PARTNERSHIP_POINTS_MAX;
    let (x, y) = (&a.body.partnership_types, &b.body.partnership_types);
    let mut shared: Vec<PartnershipType> = x.iter().filter(|t| y.contains(t)).copied().collect();
    shared.sort_unstable();
    shared.dedup();
    let shorter = distinct_count(x).min(distinct_count(y));
    let share = if shorter == 0 {
        0.0
    } else {
        shared.len() as f64 / shorter as f64
    };
    let why = || {
        if shorter == 0 {
            "no partnership type on one side".to_string()
        } else if shared.is_empty() {
            "no common partnership type".to_string()
        } else {
            let names: Vec<&str> = shared.iter().map(|t| partnership_name(*t)).collect();
            format!("both seek {}", names.join(", "))
        }
    };
    part("partnership", points(max, share), max, why, explain)
}

fn distinct_count(types: &[PartnershipType]) -> usize {
    let mut v = types.to_vec();
    v.sort_unstable();
    v.dedup();
    v.len()
}

fn cohesion_part(a: &Candidate, b: &Candidate, explain: bool) -> ScorePart {
    let max = COHESION_POINTS_MAX;
    let (na, nb) = (a.body.nuts.as_str(), b.body.nuts.as_str());
    let nuts2 = |n: &str| n.get(..4).map(str::to_string);
    let (pts, why): (u8, Box<dyn FnOnce() -> String>) = if a.author == b.author {
        (
            0,
            Box::new(|| "published by the same region: no cohesion bonus".to_string()),
        )
    } else {
        match (a.country, b.country) {
            (Some(ca), Some(cb)) if ca != cb => {
                let (ca, cb) = if ca <= cb { (ca, cb) } else { (cb, ca) };
                (
                    max,
                    Box::new(move || format!("cross-border co-operation: {ca} and {cb}")),
                )
            }
            (Some(c), Some(_))
                if nuts2(na).is_some() && nuts2(nb).is_some() && nuts2(na) != nuts2(nb) =>
            {
                let (x, y) = if na <= nb { (na, nb) } else { (nb, na) };
                (
                    COHESION_OTHER_REGION_POINTS,
                    Box::new(move || format!("interregional co-operation within {c}: {x} and {y}")),
                )
            }
            (Some(_), Some(_)) => (0, Box::new(|| "same region: no cohesion bonus".to_string())),
            _ => (
                0,
                Box::new(|| "unknown region on one side: no cohesion bonus".to_string()),
            ),
        }
    };
    part("cohesion", pts, max, why, explain)
}

/// Freshness of a record in 0..=1: 1 when just published, 0 from [`FRESHNESS_HORIZON_MS`] on.
fn freshness(created_at_ms: u64, now_ms: u64) -> f64 {
    let age = now_ms
        .saturating_sub(created_at_ms)
        .min(FRESHNESS_HORIZON_MS);
    1.0 - age as f64 / FRESHNESS_HORIZON_MS as f64
}

fn freshness_part(a: &Candidate, b: &Candidate, now_ms: u64, explain: bool) -> ScorePart {
    let max = FRESHNESS_POINTS_MAX;
    let share = (freshness(a.created_at_ms, now_ms) + freshness(b.created_at_ms, now_ms)) / 2.0;
    let why = || {
        let days = |c: u64| now_ms.saturating_sub(c) / DAY_MS;
        let (x, y) = (days(a.created_at_ms), days(b.created_at_ms));
        let (x, y) = (x.min(y), x.max(y));
        format!("published {x} and {y} days ago")
    };
    part("freshness", points(max, share), max, why, explain)
}

// ---------------------------------------------------------------------------------------------
// Names in words

/// The kind in words ("technology offer").
pub fn kind_name(kind: CooperationKind) -> &'static str {
    match kind {
        CooperationKind::BusinessOffer => "business offer",
        CooperationKind::BusinessRequest => "business request",
        CooperationKind::TechnologyOffer => "technology offer",
        CooperationKind::TechnologyRequest => "technology request",
        CooperationKind::ResearchRequest => "R&D request",
        CooperationKind::KnowledgeOffer => "knowledge offer",
        CooperationKind::KnowledgeRequest => "knowledge request",
    }
}

/// The partnership type in words ("technical co-operation").
pub fn partnership_name(t: PartnershipType) -> &'static str {
    match t {
        PartnershipType::Licence => "licence",
        PartnershipType::TechnicalCooperation => "technical co-operation",
        PartnershipType::ResearchCooperation => "research co-operation",
        PartnershipType::JointVenture => "joint venture",
        PartnershipType::Subcontracting => "subcontracting",
        PartnershipType::Distribution => "distribution",
        PartnershipType::Commercial => "commercial agreement",
        PartnershipType::ProjectPartner => "project partnership",
        PartnershipType::KnowledgeExchange => "knowledge exchange",
    }
}

fn org_type_name(t: OrganisationType) -> &'static str {
    match t {
        OrganisationType::Sme => "SME",
        OrganisationType::LargeEnterprise => "large enterprise",
        OrganisationType::Administration => "administration",
        OrganisationType::University => "university",
        OrganisationType::ResearchOrganisation => "research organisation",
        OrganisationType::SupportBody => "support body",
        OrganisationType::Ngo => "NGO",
        OrganisationType::Other => "other organisation",
    }
}

fn size_name(s: SizeClass) -> &'static str {
    match s {
        SizeClass::Micro => "micro",
        SizeClass::Small => "small",
        SizeClass::Medium => "medium",
        SizeClass::Large => "large",
        SizeClass::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::envelope::Kind;
    use crate::types::{Date, DevelopmentStage, IprStatus, ItemRef};

    const NOW: u64 = 1_795_780_800_000; // 2026-11-27 12:00 UTC
    const DAY: u64 = DAY_MS;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn coop(kind: CooperationKind, nuts: &str, nace: &[&str]) -> Cooperation {
        Cooperation {
            kind,
            title: "Wireless sensor platform for bridges".into(),
            summary: "Monitoring of structural health with low-power sensors.".into(),
            description: String::new(),
            innovation: String::new(),
            stage: DevelopmentStage::Prototype,
            ipr: IprStatus::None,
            technology_keywords: vec!["sensors".into(), "IoT".into()],
            market_keywords: vec!["construction".into()],
            nace: nace.iter().map(|s| s.to_string()).collect(),
            partnership_types: vec![PartnershipType::Licence],
            partner_sought: PartnerSought::default(),
            eoi_deadline: None,
            anonymous: false,
            organisation: None,
            nuts: nuts.into(),
            languages: vec!["en".into()],
        }
    }

    fn cand(author: u8, item: &str, body: Cooperation) -> Candidate {
        Candidate::new(key(author), item, body, NOW - DAY, Some(NOW + 300 * DAY))
    }

    fn pair() -> (Candidate, Candidate) {
        (
            cand(
                1,
                "a",
                coop(CooperationKind::TechnologyOffer, "AT22", &["26.11"]),
            ),
            cand(
                2,
                "b",
                coop(CooperationKind::TechnologyRequest, "SI04", &["26.11"]),
            ),
        )
    }

    fn org(t: OrganisationType, s: SizeClass) -> Organisation {
        Organisation {
            name: Some("X".into()),
            anonymous: false,
            org_type: t,
            size: s,
            nace: vec!["62.10".into()],
            nuts: Some("AT22".into()),
            country: "AT".into(),
            year_established: None,
            languages: vec![],
            description: String::new(),
            website: None,
        }
    }

    #[test]
    fn score_total_is_the_sum_of_the_explained_score() {
        let (a, b) = pair();
        let mut c = coop(CooperationKind::TechnologyRequest, "AT22", &["62.10"]);
        c.title = "Accounting software".into();
        let c = cand(3, "c", c);
        for (x, y) in [(&a, &b), (&b, &a), (&a, &c), (&c, &b)] {
            assert_eq!(score_total(x, y, NOW), score(x, y, NOW).total);
        }
    }

    #[test]
    fn weights_sum_to_one_hundred() {
        let (a, b) = pair();
        let s = score(&a, &b, NOW);
        assert_eq!(s.parts.iter().map(|p| u32::from(p.max)).sum::<u32>(), 100);
        assert_eq!(
            s.parts.iter().map(|p| p.name).collect::<Vec<_>>(),
            [
                "sector",
                "keywords",
                "text",
                "partnership",
                "cohesion",
                "freshness"
            ]
        );
    }

    #[test]
    fn complementarity_follows_the_domain() {
        use CooperationKind::*;
        let all = [
            BusinessOffer,
            BusinessRequest,
            TechnologyOffer,
            TechnologyRequest,
            ResearchRequest,
            KnowledgeOffer,
            KnowledgeRequest,
        ];
        let expected = [
            (BusinessOffer, BusinessRequest),
            (TechnologyOffer, TechnologyRequest),
            (KnowledgeOffer, KnowledgeRequest),
            (ResearchRequest, ResearchRequest),
            (ResearchRequest, TechnologyOffer),
        ];
        for a in all {
            for b in all {
                let want = expected.contains(&(a, b)) || expected.contains(&(b, a));
                assert_eq!(complementary(a, b), want, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn live_pairs_are_eligible() {
        let (a, b) = pair();
        assert_eq!(eligible(&a, &b, NOW), Ok(()));
        assert_eq!(eligible(&b, &a, NOW), Ok(()));
        assert!(evaluate(&a, &b, NOW).is_ok());
    }

    #[test]
    fn expired_withdrawn_and_past_deadline_are_excluded() {
        let (a, b) = pair();
        let expired = Candidate::new(key(2), "b", b.body().clone(), NOW - DAY, Some(NOW));
        assert_eq!(
            eligible(&a, &expired, NOW),
            Err(Exclusion::Expired { side: Side::Second })
        );
        assert!(
            eligible(&a, &expired, NOW - 1).is_ok(),
            "live until the instant"
        );
        assert_eq!(
            eligible(&b.clone().withdrawn(), &a, NOW),
            Err(Exclusion::Withdrawn { side: Side::First })
        );
        let mut body = b.body().clone();
        body.eoi_deadline = Date::new(2026, 11, 27);
        let due_today = cand(2, "b", body.clone());
        let next_day = Date::new(2026, 11, 28).unwrap().start_ms() as u64;
        assert!(
            eligible(&a, &due_today, next_day - 1).is_ok(),
            "deadline day counts"
        );
        assert_eq!(
            eligible(&a, &due_today, next_day),
            Err(Exclusion::DeadlinePassed { side: Side::Second })
        );
        assert!(!due_today.is_live(next_day));
    }

    #[test]
    fn same_item_same_organisation_and_kinds_are_excluded() {
        let (a, b) = pair();
        let mut rd = a.body().clone();
        rd.kind = CooperationKind::ResearchRequest;
        let rd = cand(1, "a", rd);
        assert_eq!(eligible(&rd, &rd, NOW), Err(Exclusion::SameItem));
        let org_ref = ItemRef {
            region: key(1),
            kind: Kind::Organisation,
            key: "org-1".into(),
        };
        let (mut x, mut y) = (a.body().clone(), b.body().clone());
        x.organisation = Some(org_ref.clone());
        y.organisation = Some(org_ref);
        assert_eq!(
            eligible(&cand(1, "a", x), &cand(2, "b", y), NOW),
            Err(Exclusion::SameOrganisation)
        );
        let mut offer = b.body().clone();
        offer.kind = CooperationKind::BusinessOffer;
        assert_eq!(
            eligible(&a, &cand(2, "b", offer), NOW),
            Err(Exclusion::NotComplementary {
                first: CooperationKind::TechnologyOffer,
                second: CooperationKind::BusinessOffer
            })
        );
    }

    #[test]
    fn target_countries_and_regions_are_respected() {
        let (a, b) = pair();
        let with = |countries: &[&str], regions: &[&str]| {
            let mut body = a.body().clone();
            body.partner_sought.countries = countries.iter().map(|s| s.to_string()).collect();
            body.partner_sought.regions = regions.iter().map(|s| s.to_string()).collect();
            cand(1, "a", body)
        };
        assert!(eligible(&with(&["SI"], &[]), &b, NOW).is_ok());
        assert!(
            eligible(&with(&[], &["SI0"]), &b, NOW).is_ok(),
            "NUTS prefix"
        );
        assert!(
            eligible(&with(&["HR"], &["SI04"]), &b, NOW).is_ok(),
            "either list"
        );
        let no = eligible(&with(&["HR"], &["SI03"]), &b, NOW);
        assert_eq!(
            no,
            Err(Exclusion::RegionNotSought {
                by: Side::First,
                nuts: "SI04".into()
            })
        );
        assert!(no.unwrap_err().to_string().contains("SI04"));
        // Greece is EL in NUTS and GR in ISO 3166.
        let greek = cand(
            2,
            "b",
            coop(CooperationKind::TechnologyRequest, "EL52", &[]),
        );
        assert!(eligible(&with(&["GR"], &[]), &greek, NOW).is_ok());
        assert!(eligible(&greek, &with(&["EL"], &[]), NOW).is_err());
    }

    #[test]
    fn organisation_types_and_sizes_apply_when_known() {
        let (a, b) = pair();
        let mut body = a.body().clone();
        body.partner_sought.org_types = vec![OrganisationType::University];
        body.partner_sought.sizes = vec![SizeClass::Small];
        let picky = cand(1, "a", body);
        assert!(eligible(&picky, &b, NOW).is_ok(), "unknown profile passes");
        let sme = b
            .clone()
            .with_organisation(&org(OrganisationType::Sme, SizeClass::Small));
        assert_eq!(
            eligible(&sme, &picky, NOW),
            Err(Exclusion::OrganisationTypeNotSought {
                by: Side::Second,
                org_type: OrganisationType::Sme
            })
        );
        let uni = b
            .clone()
            .with_organisation(&org(OrganisationType::University, SizeClass::Unspecified));
        assert!(
            eligible(&picky, &uni, NOW).is_ok(),
            "unspecified size passes"
        );
        let big = b.with_organisation(&org(OrganisationType::University, SizeClass::Large));
        assert_eq!(
            eligible(&picky, &big, NOW),
            Err(Exclusion::SizeNotSought {
                by: Side::First,
                size: SizeClass::Large
            })
        );
    }

    fn sector_points(x: &[&str], y: &[&str]) -> ScorePart {
        let a = cand(1, "a", coop(CooperationKind::TechnologyOffer, "AT22", x));
        let b = cand(2, "b", coop(CooperationKind::TechnologyRequest, "AT22", y));
        sector_part(&a, &b, true)
    }

    #[test]
    fn sector_follows_the_nace_hierarchy() {
        let p = sector_points(&["10.51"], &["10.51"]);
        assert_eq!(p.points, 25);
        assert!(p.why.contains("Manufacture of dairy products"), "{}", p.why);
        assert_eq!(sector_points(&["10.51"], &["10.52"]).points, 19); // same group
        let p = sector_points(&["62.10"], &["62.20"]);
        assert_eq!(p.points, 13); // same division
        assert!(p.why.contains("division 62"), "{}", p.why);
        assert_eq!(sector_points(&["10.51"], &["11.02"]).points, 6); // same section
        assert_eq!(sector_points(&["10.51"], &["62.10"]).points, 0);
        assert_eq!(sector_points(&["10.51", "62.10"], &["62.10"]).points, 25);
        assert_eq!(sector_points(&["C"], &["10.51"]).points, 6);
        let none = sector_points(&[], &["10.51"]);
        assert_eq!(none.points, 0);
        assert!(none.why.contains("no NACE"));
    }

    #[test]
    fn organisation_nace_stands_in_for_missing_record_codes() {
        let a = cand(1, "a", coop(CooperationKind::TechnologyOffer, "AT22", &[]))
            .with_organisation(&org(OrganisationType::Sme, SizeClass::Small));
        let b = cand(
            2,
            "b",
            coop(CooperationKind::TechnologyRequest, "SI04", &["62.10"]),
        );
        assert_eq!(sector_part(&a, &b, false).points, 25);
    }

    #[test]
    fn keywords_are_normalised_and_compared_by_jaccard() {
        assert_eq!(normalise_keyword("  Smart-Grid / IoT "), "smart grid iot");
        let mut x = coop(CooperationKind::TechnologyOffer, "AT22", &[]);
        let mut y = coop(CooperationKind::TechnologyRequest, "SI04", &[]);
        x.technology_keywords = vec!["Smart-Grid".into(), "Photovoltaics".into()];
        x.market_keywords = vec!["utilities".into()];
        y.technology_keywords = vec!["smart grid".into(), "heat pumps".into()];
        y.market_keywords = vec!["Utilities".into()];
        let p = keyword_part(&cand(1, "a", x.clone()), &cand(2, "b", y), true);
        // 2 shared of 4: J = 0.5, points = 25 × √0.5 = 17.7.
        assert_eq!(p.points, 18);
        assert!(
            p.why.contains("2 of 4") && p.why.contains("smart grid"),
            "{}",
            p.why
        );
        let same = keyword_part(&cand(1, "a", x.clone()), &cand(2, "b", x.clone()), false);
        assert_eq!(same.points, 25);
        let mut z = x.clone();
        z.technology_keywords.clear();
        z.market_keywords.clear();
        assert_eq!(
            keyword_part(&cand(1, "a", x), &cand(2, "b", z), false).points,
            0
        );
    }

    #[test]
    fn text_similarity_uses_stems_and_skips_stop_words() {
        let mut x = coop(CooperationKind::TechnologyOffer, "AT22", &[]);
        let mut y = coop(CooperationKind::TechnologyRequest, "SI04", &[]);
        x.title = "Sensors for the monitoring of bridges".into();
        x.summary = String::new();
        y.title = "Partner sought: sensor monitoring and the bridge".into();
        y.summary = String::new();
        let p = text_part(&cand(1, "a", x.clone()), &cand(2, "b", y), true);
        // {sensor, monito, bridge} on both sides, everything else is a stop word.
        assert_eq!(p.points, 20, "{}", p.why);
        assert!(p.why.contains("3 words"), "{}", p.why);
        let mut z = x.clone();
        z.title = "Die Käserei und der Vertrieb".into();
        let none = text_part(&cand(1, "a", x), &cand(2, "b", z), true);
        assert_eq!(none.points, 0);
        assert!(none.why.contains("no significant"));
        // German and English share stems: Technologie / technology.
        assert_eq!(stems(&["Technologie", "technology"]).len(), 1);
        assert_eq!(terms(&["Sensoren", "sensors"])[0].word, "sensoren");
        // Stems are cut by characters, not bytes: both are "čebela".
        assert_eq!(stems(&["Čebelarstvo", "čebela"]).len(), 1);
        assert_eq!(stems(&["Čebelarstvo", "čebel"]).len(), 2);
        assert!(stems(&["und der die the and 2026 ab"]).is_empty());
    }

    #[test]
    fn partnership_types_count_over_the_shorter_list() {
        let (a, b) = pair();
        let with = |c: &Candidate, t: &[PartnershipType]| {
            let mut body = c.body().clone();
            body.partnership_types = t.to_vec();
            cand(c.author().0[0], c.key(), body)
        };
        use PartnershipType as P;
        let p = partnership_part(
            &with(&a, &[P::Licence, P::JointVenture]),
            &with(&b, &[P::Licence]),
            true,
        );
        assert_eq!((p.points, p.why.as_str()), (10, "both seek licence"));
        let half = partnership_part(
            &with(&a, &[P::Licence, P::Distribution]),
            &with(&b, &[P::Licence, P::Commercial]),
            false,
        );
        assert_eq!(half.points, 5);
        assert_eq!(
            partnership_part(&with(&a, &[P::Licence]), &with(&b, &[P::Commercial]), false).points,
            0
        );
        assert_eq!(
            partnership_part(&with(&a, &[]), &with(&b, &[P::Commercial]), false).points,
            0
        );
    }

    #[test]
    fn cohesion_rewards_crossing_borders_and_regions() {
        let at = |author: u8, nuts: &str| {
            cand(
                author,
                "x",
                coop(CooperationKind::TechnologyOffer, nuts, &[]),
            )
        };
        let p = cohesion_part(&at(1, "AT22"), &at(2, "SI04"), true);
        assert_eq!(p.points, 10);
        assert_eq!(p.why, "cross-border co-operation: AT and SI");
        let p = cohesion_part(&at(1, "AT22"), &at(2, "AT13"), true);
        assert_eq!(p.points, COHESION_OTHER_REGION_POINTS);
        assert!(p.why.contains("within AT"), "{}", p.why);
        assert_eq!(
            cohesion_part(&at(1, "AT221"), &at(2, "AT22"), false).points,
            0
        );
        assert_eq!(
            cohesion_part(&at(1, "AT22"), &at(1, "SI04"), false).points,
            0
        );
        // EL and GR are one country, and greek records still get the cross-border bonus.
        assert_eq!(
            cohesion_part(&at(1, "EL52"), &at(2, "AT22"), false).points,
            10
        );
    }

    #[test]
    fn freshness_decays_over_180_days() {
        let (a, b) = pair();
        let aged = |c: &Candidate, days: u64| {
            Candidate::new(
                *c.author(),
                c.key(),
                c.body().clone(),
                NOW - days * DAY,
                None,
            )
        };
        assert_eq!(
            freshness_part(&aged(&a, 0), &aged(&b, 0), NOW, false).points,
            10
        );
        assert_eq!(
            freshness_part(&aged(&a, 0), &aged(&b, 180), NOW, false).points,
            5
        );
        assert_eq!(
            freshness_part(&aged(&a, 400), &aged(&b, 180), NOW, false).points,
            0
        );
        assert_eq!(
            freshness_part(&aged(&a, 90), &aged(&b, 90), NOW, false).points,
            5
        );
        let p = freshness_part(&aged(&a, 30), &aged(&b, 3), NOW, true);
        assert_eq!(p.why, "published 3 and 30 days ago");
        // Records from the future (clock skew) count as new.
        assert_eq!(freshness(NOW + DAY, NOW), 1.0);
    }

    #[test]
    fn score_is_the_sum_of_its_parts_and_symmetric() {
        let (a, b) = pair();
        let s = score(&a, &b, NOW);
        assert_eq!(
            u32::from(s.total),
            s.parts.iter().map(|p| u32::from(p.points)).sum::<u32>()
        );
        assert_eq!(s, score(&b, &a, NOW));
        assert_eq!(s.total, total(&a, &b, NOW));
        assert!(s.parts.iter().all(|p| !p.why.is_empty()));
        assert_eq!(s.part("cohesion").map(|p| p.points), Some(10));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["parts"][0]["name"], "sector");
    }

    #[test]
    fn best_matches_rank_filter_and_break_ties_by_position() {
        let (a, b) = pair();
        let mut weaker = b.body().clone();
        weaker.nace = vec!["62.10".into()];
        let others = vec![
            cand(3, "weak", weaker),                          // 0
            b.clone(),                                        // 1
            cand(4, "expired", b.body().clone()).withdrawn(), // 2
            cand(
                5,
                "wrong-kind",
                coop(CooperationKind::BusinessOffer, "SI04", &[]),
            ), // 3
            cand(6, "twin", b.body().clone()),                // 4
        ];
        let hits = best_matches(&a, &others, NOW, 0, 10);
        let order: Vec<usize> = hits.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [1, 4, 0]);
        assert_eq!(hits[0].1, hits[1].1);
        assert!(hits[0].1.total > hits[2].1.total);
        assert_eq!(best_matches(&a, &others, NOW, 0, 1).len(), 1);
        assert!(best_matches(&a, &others, NOW, 0, 0).is_empty());
        let strict = best_matches(&a, &others, NOW, hits[0].1.total, 10);
        assert_eq!(strict.iter().map(|h| h.0).collect::<Vec<_>>(), [1, 4]);
        assert!(best_matches(&a, &others, NOW, 101, 10).is_empty());
    }
}
