//! Full-text search over the items this node holds: offers and requests, knowledge items,
//! organisations and projects. tantivy 0.27, behind this one module; nothing else names tantivy.
//!
//! The index is derived data. The store is the truth: every commit carries a *generation* (the
//! store's state digest in hex) as its tantivy commit payload, written atomically with the
//! documents, so a node that finds the generation different from its store digest (crash between
//! store write and index commit, index deleted, schema changed) rebuilds from the item winners.
//!
//! One document per live item winner; tombstones and superseded revisions are deleted by the
//! item key term. Expiry is *not* applied at write time: `expires_at_ms` is a fast field and
//! [`Status`] filters on it against the caller's `now_ms`, so the index never goes stale as the
//! clock moves.
//!
//! Text is analysed per language: each language a record lists picks a field (`text_en`:
//! English Snowball stemmer, `text_de`: German stemmer, `text_other`: lowercase tokens only);
//! the text goes into each distinct field its languages name. Records list their own language
//! first and usually English second, and their text may be in either, so indexing into every
//! listed language's field is what lets "sensor" find an English title in a Slovenian record.
//! Queries analyse each word with each field's analyzer and search all text fields. Projects
//! carry no language and count as English (Interreg's working language).

use std::collections::BTreeSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use kim_protocol::codes;
use kim_protocol::envelope::{Body, Content, Kind, Record};
use kim_protocol::types::{CooperationKind, Date, PartnershipType};
use kim_protocol::{RecordId, RegionId};

use crate::store::Position;
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{
    AllQuery, BooleanQuery, BoostQuery, ConstScoreQuery, Occur, Query as TQuery, RangeQuery,
    TermQuery,
};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::tokenizer::{
    Language, LowerCaser, RawTokenizer, RemoveLongFilter, SimpleTokenizer, Stemmer, TextAnalyzer,
    Token, TokenFilter, TokenStream, Tokenizer,
};
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};

/// Bump when the schema or the analysis changes: a stored generation of another schema version
/// reads as `None`, so the node rebuilds.
///
/// - 1: first schema.
/// - 2: the winner's record id in four u64 fast columns instead of hex in the document store.
/// - 3: the kind also as a fast column, for listings by kind and time.
/// - 4: only the first eight bytes of the winner's record id (one column instead of four).
pub const SCHEMA_VERSION: u32 = 4;
/// Default indexing heap; tantivy's writer flushes a segment when it is full.
pub const WRITER_HEAP_BYTES: usize = 16 * 1024 * 1024;
/// Most hits one search returns, whatever the caller asks.
pub const LIMIT_MAX: usize = 1000;
/// Deepest page start; deeper paging costs memory and time proportional to the offset.
pub const OFFSET_MAX: usize = 10_000;

const TOKENIZER_EN: &str = "kim_en";
const TOKENIZER_DE: &str = "kim_de";
const TOKENIZER_OTHER: &str = "kim_plain";
/// Tokens longer than this are dropped (hashes, URLs glued together).
const TOKEN_CHARS_MAX: usize = 40;

/// Why the index could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index {dir}: {cause}")]
    Open { dir: PathBuf, cause: String },
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("search index: writer lock poisoned")]
    Poisoned,
    #[error("the items to index could not be read: {0}")]
    Source(String),
}

pub type Result<T, E = SearchError> = std::result::Result<T, E>;

/// Which items a search returns by their expiry, as of [`Query::now_ms`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Status {
    /// Not expired (`now_ms < expires_at_ms`, or no expiry), as `ItemEntry::is_live`.
    #[default]
    Live,
    /// Expired at `now_ms`.
    Expired,
    /// Both.
    All,
}

/// How hits are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sort {
    /// BM25 relevance when there is text, newest first otherwise.
    #[default]
    Relevance,
    /// Newest `created_at_ms` first.
    Newest,
}

/// A search. Every non-empty list is a filter satisfied by any of its values; filters combine
/// with AND. Empty text and no filters list everything (live, newest first).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Free text; words are analysed per language field. `None` or blank: filters only.
    pub text: Option<String>,
    /// Every word must occur (in some text field); otherwise any word, ranked by BM25.
    pub all_words: bool,
    /// Item kinds; only the four searchable kinds are ever indexed.
    pub kinds: Vec<Kind>,
    pub cooperation_kinds: Vec<CooperationKind>,
    /// Owning regions.
    pub regions: Vec<RegionId>,
    /// NUTS code prefixes at any level ("AT", "AT2", "AT22"); a prefix matches its subregions.
    pub nuts: Vec<String>,
    /// NACE codes or ancestors ("C", "26", "26.1", "26.11"); a code matches its descendants.
    pub nace: Vec<String>,
    /// ISO 3166-1 alpha-2 (the NUTS spelling "EL" is accepted for Greece).
    pub countries: Vec<String>,
    /// ISO 639-1 languages the item lists.
    pub languages: Vec<String>,
    pub partnership_types: Vec<PartnershipType>,
    /// Places an item must be in, any of them: ISO 3166-1 countries or NUTS prefixes (a
    /// partner profile's target countries and regions).
    pub places: Vec<String>,
    /// Only these items (region, kind, key): e.g. run saved searches against the items an
    /// ingest batch just changed.
    pub items: Vec<(RegionId, Kind, String)>,
    pub status: Status,
    /// The instant `status` is judged at.
    pub now_ms: u64,
    /// Expression-of-interest deadline on or after this day (items without one never match).
    pub deadline_from: Option<Date>,
    /// Expression-of-interest deadline on or before this day.
    pub deadline_to: Option<Date>,
    pub sort: Sort,
    /// At most [`LIMIT_MAX`]; 0 means 20.
    pub limit: usize,
    /// At most [`OFFSET_MAX`].
    pub offset: usize,
}

/// One search result: the item and the winner record indexed for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub region: RegionId,
    pub kind: Kind,
    pub key: String,
    /// The first eight bytes of the indexed revision's record id. Enough to tell whether the
    /// store's winner is still the revision indexed ([`Hit::indexes`]); the full id and the
    /// record come from the store, which holds them anyway. Four columns of whole ids were a
    /// quarter of the index (32 MB at 1M items), resident once searches had read hits.
    pub record_prefix: u64,
    /// BM25 score; 0 for filter-only searches.
    pub score: f32,
}

impl Hit {
    /// Whether this hit stands for the revision `id` (the store's current winner, say).
    pub fn indexes(&self, id: &RecordId) -> bool {
        record_prefix(id) == self.record_prefix
    }
}

/// The first eight bytes of a record id, as the index keeps them.
fn record_prefix(id: &RecordId) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(bytes)
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    item: Field,
    /// The first eight bytes of the winner's record id ([`Hit::record_prefix`]), as a fast
    /// column: read for each hit without decompressing a document-store block.
    record: Field,
    region: Field,
    kind: Field,
    coop_kind: Field,
    nuts: Field,
    nace: Field,
    country: Field,
    lang: Field,
    partnership: Field,
    /// The kind's number, a fast column beside the `kind` term: a listing filters on it so
    /// that tantivy drives the intersection from the creation-time window rather than from
    /// every item of the kind (see [`SearchIndex::list_page`]).
    kind_code: Field,
    expires: Field,
    deadline: Field,
    created: Field,
    text_en: Field,
    text_de: Field,
    text_other: Field,
}

impl Fields {
    fn text_fields(&self) -> [(Field, &'static str); 3] {
        [
            (self.text_en, TOKENIZER_EN),
            (self.text_de, TOKENIZER_DE),
            (self.text_other, TOKENIZER_OTHER),
        ]
    }
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    // Exact-match terms for filters: raw tokenizer, no positions, no norms.
    let keyword = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("raw")
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false),
    );
    // Free text: frequencies for BM25, no positions (queries are built here, never phrases).
    let text = |tokenizer: &str| {
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer)
                .set_index_option(IndexRecordOption::WithFreqs),
        )
    };
    let fields = Fields {
        item: b.add_text_field("item", keyword.clone().set_stored()),
        record: b.add_u64_field(RECORD_COLUMN, FAST),
        region: b.add_text_field("region", keyword.clone()),
        kind: b.add_text_field("kind", keyword.clone()),
        coop_kind: b.add_text_field("coop_kind", keyword.clone()),
        nuts: b.add_text_field("nuts", keyword.clone()),
        nace: b.add_text_field("nace", keyword.clone()),
        country: b.add_text_field("country", keyword.clone()),
        lang: b.add_text_field("lang", keyword.clone()),
        partnership: b.add_text_field("partnership", keyword),
        // Numbers are fast fields only: tantivy runs range filters and sorts on the columns,
        // so an inverted index of (mostly unique) values would be dead weight.
        kind_code: b.add_u64_field("kind_code", FAST),
        expires: b.add_u64_field("expires_at_ms", FAST),
        deadline: b.add_i64_field("eoi_deadline_days", FAST),
        created: b.add_u64_field("created_at_ms", FAST),
        text_en: b.add_text_field("text_en", text(TOKENIZER_EN)),
        text_de: b.add_text_field("text_de", text(TOKENIZER_DE)),
        text_other: b.add_text_field("text_other", text(TOKENIZER_OTHER)),
    };
    (b.build(), fields)
}

fn analyzer(stem: Option<Language>) -> TextAnalyzer {
    let base = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(TOKEN_CHARS_MAX))
        .filter(LowerCaser);
    match stem {
        Some(lang) => base.filter(CachedStemmer::new(lang)).build(),
        None => base.build(),
    }
}

/// Distinct words whose stems a [`CachedStemmer`] remembers; the cache starts over when full.
const STEM_CACHE_WORDS: usize = 100_000;

/// tantivy's Snowball stemmer behind a cache of the words it has stemmed. Stemming took about
/// a fifth of a catching-up node's CPU (`perf`), and the words of offers and knowledge items
/// repeat: most tokens are a hash lookup instead. The stems are the stemmer's own, so queries
/// and documents agree whether a word was cached or not. Clones (tantivy clones an analyzer per
/// segment writer and query) share the cache.
#[derive(Clone)]
struct CachedStemmer {
    stem: TextAnalyzer,
    cache: std::sync::Arc<std::sync::Mutex<StemCache>>,
}

/// Word → stem. foldhash instead of SipHash: a lookup per token is the hot path of indexing,
/// and its per-process random seed still keeps crafted words from colliding on purpose.
type StemCache = std::collections::HashMap<String, String, foldhash::fast::RandomState>;

impl CachedStemmer {
    fn new(language: Language) -> CachedStemmer {
        CachedStemmer {
            stem: TextAnalyzer::builder(RawTokenizer::default())
                .filter(Stemmer::new(language))
                .build(),
            cache: Default::default(),
        }
    }

    /// Replaces `word` by its stem, in place (no allocation when the stem is cached).
    fn stem(&mut self, word: &mut String) {
        if let Ok(cache) = self.cache.lock()
            && let Some(stem) = cache.get(word.as_str())
        {
            if stem != word {
                word.clear();
                word.push_str(stem);
            }
            return;
        }
        let stem = {
            let mut stream = self.stem.token_stream(word);
            if stream.advance() {
                stream.token().text.clone()
            } else {
                word.clone()
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= STEM_CACHE_WORDS {
                cache.clear();
            }
            cache.insert(word.clone(), stem.clone());
        }
        *word = stem;
    }
}

impl TokenFilter for CachedStemmer {
    type Tokenizer<T: Tokenizer> = CachedStemmerFilter<T>;

    fn transform<T: Tokenizer>(self, inner: T) -> CachedStemmerFilter<T> {
        CachedStemmerFilter {
            inner,
            stemmer: self,
        }
    }
}

#[derive(Clone)]
struct CachedStemmerFilter<T> {
    inner: T,
    stemmer: CachedStemmer,
}

impl<T: Tokenizer> Tokenizer for CachedStemmerFilter<T> {
    type TokenStream<'a> = CachedStemmerStream<'a, T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        CachedStemmerStream {
            tail: self.inner.token_stream(text),
            stemmer: &mut self.stemmer,
        }
    }
}

struct CachedStemmerStream<'a, T> {
    tail: T,
    stemmer: &'a mut CachedStemmer,
}

impl<T: TokenStream> TokenStream for CachedStemmerStream<'_, T> {
    fn advance(&mut self) -> bool {
        if !self.tail.advance() {
            return false;
        }
        self.stemmer.stem(&mut self.tail.token_mut().text);
        true
    }

    fn token(&self) -> &Token {
        self.tail.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.tail.token_mut()
    }
}

fn register_tokenizers(index: &Index) {
    let t = index.tokenizers();
    t.register(TOKENIZER_EN, analyzer(Some(Language::English)));
    t.register(TOKENIZER_DE, analyzer(Some(Language::German)));
    t.register(TOKENIZER_OTHER, analyzer(None));
}

/// The item key term: region hex / kind / key (keys are `a-z 0-9 . _ -`, so `/` is free).
pub fn item_key(region: &RegionId, kind: Kind, key: &str) -> String {
    format!("{}/{}/{}", region.to_hex(), kind.as_str(), key)
}

fn parse_item_key(text: &str) -> Option<(RegionId, Kind, String)> {
    let mut parts = text.splitn(3, '/');
    let region = RegionId::from_hex(parts.next()?)?;
    let kind = Kind::parse(parts.next()?)?;
    Some((region, kind, parts.next()?.to_string()))
}

/// The index writer held by another thread ([`SearchIndex::hold_writer_for_test`]).
#[cfg(test)]
pub(crate) struct HeldWriter {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

#[cfg(test)]
impl HeldWriter {
    /// Lets the writer go, once the holding thread has ended.
    pub(crate) fn release(self) {
        let _ = self.release.send(());
        assert!(self.thread.join().is_ok(), "the writer's holder panicked");
    }
}

/// The column holding the first eight bytes of a record id.
const RECORD_COLUMN: &str = "record_prefix";

/// A page of a listing by kind, each hit with its creation time, and the floor it reaches
/// ([`SearchIndex::list_page`]).
pub type ListPage = (Vec<(u64, Hit)>, Option<Position>);

/// Reads hits' item keys and record-id prefixes. The record column of each segment a hit lies
/// in is opened once and only for those segments: opening every segment's up front cost
/// 0.15 ms per search at 100k records.
struct HitReader<'a> {
    searcher: &'a tantivy::Searcher,
    item: Field,
    columns: Vec<Option<tantivy::columnar::Column<u64>>>,
}

impl<'a> HitReader<'a> {
    fn new(searcher: &'a tantivy::Searcher, item: Field) -> HitReader<'a> {
        HitReader {
            searcher,
            item,
            columns: Vec::new(),
        }
    }

    /// The hit a document stands for; `None` (with a warning) for a document without an item
    /// key or record id, which only a damaged index holds.
    fn read(&mut self, addr: DocAddress, score: f32) -> Result<Option<Hit>> {
        let doc: TantivyDocument = self.searcher.doc(addr)?;
        let item = doc.get_first(self.item).and_then(|v| v.as_str());
        let segment = addr.segment_ord as usize;
        if self.columns.len() <= segment {
            self.columns.resize_with(segment + 1, || None);
        }
        let record_prefix = match &mut self.columns[segment] {
            Some(open) => open.first(addr.doc_id),
            slot => {
                let fast = self.searcher.segment_reader(addr.segment_ord).fast_fields();
                slot.insert(fast.u64(RECORD_COLUMN)?).first(addr.doc_id)
            }
        };
        match (item.and_then(parse_item_key), record_prefix) {
            (Some((region, kind, key)), Some(record_prefix)) => Ok(Some(Hit {
                region,
                kind,
                key,
                record_prefix,
                score,
            })),
            _ => {
                tracing::warn!(
                    ?addr,
                    "search index document without item key or record id; rebuild the index"
                );
                Ok(None)
            }
        }
    }
}

/// Whether items of this kind are searchable.
/// The kinds the index holds.
pub const SEARCHABLE_KINDS: [Kind; 4] = [
    Kind::Cooperation,
    Kind::Knowledge,
    Kind::Organisation,
    Kind::Project,
];

pub fn is_searchable(kind: Kind) -> bool {
    SEARCHABLE_KINDS.contains(&kind)
}

pub fn cooperation_kind_name(kind: CooperationKind) -> &'static str {
    match kind {
        CooperationKind::BusinessOffer => "business_offer",
        CooperationKind::BusinessRequest => "business_request",
        CooperationKind::TechnologyOffer => "technology_offer",
        CooperationKind::TechnologyRequest => "technology_request",
        CooperationKind::ResearchRequest => "research_request",
        CooperationKind::KnowledgeOffer => "knowledge_offer",
        CooperationKind::KnowledgeRequest => "knowledge_request",
    }
}

pub fn partnership_name(kind: PartnershipType) -> &'static str {
    match kind {
        PartnershipType::Licence => "licence",
        PartnershipType::TechnicalCooperation => "technical_cooperation",
        PartnershipType::ResearchCooperation => "research_cooperation",
        PartnershipType::JointVenture => "joint_venture",
        PartnershipType::Subcontracting => "subcontracting",
        PartnershipType::Distribution => "distribution",
        PartnershipType::Commercial => "commercial",
        PartnershipType::ProjectPartner => "project_partner",
        PartnershipType::KnowledgeExchange => "knowledge_exchange",
    }
}

/// Every prefix of a NUTS code from the country up: "AT22" -> AT, AT2, AT22.
pub fn nuts_terms(code: &str) -> impl Iterator<Item = String> + '_ {
    let code = code.trim();
    (2..=code.len())
        .filter(move |&n| code.is_char_boundary(n))
        .map(move |n| code[..n].to_ascii_uppercase())
}

/// A NACE code and all its ancestors up to the section letter: "26.11" -> 26.11, 26.1, 26, C.
/// Unknown codes fall back to their dotted prefixes.
pub fn nace_terms(code: &str) -> Vec<String> {
    let code = code.trim().to_ascii_uppercase();
    let mut out = Vec::new();
    if let Some(mut entry) = codes::nace(&code) {
        loop {
            out.push(entry.code.to_string());
            match entry.parent.and_then(codes::nace) {
                Some(parent) => entry = parent,
                None => break,
            }
        }
        if !out.iter().any(|c| c == entry.section) {
            out.push(entry.section.to_string());
        }
    } else if code.is_ascii() {
        let digits: String = code.chars().filter(|c| *c != '.').collect();
        for n in 2..=digits.len().min(4) {
            let (head, tail) = (&digits[..2], &digits[2..n]);
            out.push(if tail.is_empty() {
                head.to_string()
            } else {
                format!("{head}.{tail}")
            });
        }
    }
    if out.is_empty() && !code.is_empty() {
        out.push(code);
    }
    out
}

fn country_term(code: &str) -> String {
    codes::nuts_country_to_iso(&code.trim().to_ascii_uppercase()).to_string()
}

/// What one item contributes to the index, independent of tantivy.
#[derive(Debug, Default)]
struct Facets {
    coop_kind: Option<CooperationKind>,
    nuts: Vec<String>,
    nace: Vec<String>,
    countries: Vec<String>,
    languages: Vec<String>,
    partnership: Vec<PartnershipType>,
    deadline: Option<Date>,
    text: String,
}

fn join(parts: &[&str], lists: &[&[String]]) -> String {
    let mut text = String::new();
    for p in parts
        .iter()
        .copied()
        .chain(lists.iter().flat_map(|l| l.iter().map(String::as_str)))
    {
        if !p.is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(p);
        }
    }
    text
}

fn facets(body: &Body) -> Option<Facets> {
    let nuts_countries = |codes: &[&str]| -> Vec<String> {
        codes
            .iter()
            .filter_map(|c| c.get(..2))
            .map(country_term)
            .collect()
    };
    Some(match body {
        Body::Cooperation(c) => Facets {
            coop_kind: Some(c.kind),
            nuts: vec![c.nuts.clone()],
            nace: c.nace.clone(),
            countries: nuts_countries(&[c.nuts.as_str()]),
            languages: c.languages.clone(),
            partnership: c.partnership_types.clone(),
            deadline: c.eoi_deadline,
            text: join(
                &[
                    &c.title,
                    &c.summary,
                    &c.description,
                    &c.innovation,
                    &c.partner_sought.role,
                ],
                &[&c.technology_keywords, &c.market_keywords],
            ),
        },
        Body::Organisation(o) => Facets {
            nuts: o.nuts.iter().cloned().collect(),
            nace: o.nace.clone(),
            countries: vec![country_term(&o.country)],
            languages: o.languages.clone(),
            text: join(&[o.name.as_deref().unwrap_or(""), &o.description], &[]),
            ..Facets::default()
        },
        Body::Project(p) => {
            let nuts: Vec<&str> = p.participants.iter().map(|x| x.nuts.as_str()).collect();
            let names: Vec<String> = p.participants.iter().map(|x| x.name.clone()).collect();
            Facets {
                nuts: nuts.iter().map(|s| s.to_string()).collect(),
                countries: nuts_countries(&nuts),
                languages: vec!["en".into()],
                text: join(
                    &[
                        &p.acronym,
                        &p.title,
                        &p.summary,
                        &p.programme,
                        p.call.as_deref().unwrap_or(""),
                    ],
                    &[&p.themes, &names],
                ),
                ..Facets::default()
            }
        }
        Body::Knowledge(k) => {
            let regions: Vec<&str> = k.regions.iter().map(String::as_str).collect();
            Facets {
                nuts: k.regions.clone(),
                countries: nuts_countries(&regions),
                languages: k.languages.clone(),
                text: join(
                    &[&k.title, &k.abstract_text],
                    &[&k.themes, &k.keywords, &k.authors],
                ),
                ..Facets::default()
            }
        }
        _ => return None,
    })
}

/// The search index. Shareable (`Arc<SearchIndex>`): writes serialise on an internal lock,
/// searches run concurrently on the last committed state.
pub struct SearchIndex {
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    /// Generation to write with the next commit.
    pending_generation: Mutex<Option<String>>,
    /// Rebuilds begun plus rebuilds ended, so odd while one runs; changed only under the
    /// writer lock ([`SearchIndex::rebuild_mark`]).
    rebuilds: AtomicU64,
    /// Makes the next commit fail, as a full disk would (tests of the failure paths).
    #[cfg(test)]
    fail_next_commit: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// How much less CPU priority index maintenance gets than replication and the API: nice + 10,
/// about a tenth of a core's share when both want it, full speed when nothing else runs.
pub const INDEXING_NICE_INCREMENT: i32 = 10;

/// Lowers the calling thread's CPU priority by [`INDEXING_NICE_INCREMENT`] (on Linux, where the
/// nice value belongs to the thread and threads it spawns inherit it; nothing elsewhere).
/// Indexing is background work: under load, gossip hops, sync and publishes go first, and the
/// index catches up when the CPU is free again. Failing only costs that preference, so it is
/// logged, not returned.
pub(crate) fn lower_this_thread_priority() {
    // Elsewhere the nice value belongs to the whole process, and the node's must stay.
    if !cfg!(target_os = "linux") {
        return;
    }
    let lowered = rustix::process::getpriority_process(None).and_then(|nice| {
        rustix::process::setpriority_process(None, (nice + INDEXING_NICE_INCREMENT).min(19))
    });
    if let Err(e) = lowered {
        tracing::debug!(cause = %e, "cannot lower the indexing threads' priority");
    }
}

/// Runs `work` on a short-lived thread of lowered priority ([`lower_this_thread_priority`]) and
/// waits for it. tantivy starts a writer's threads (indexing, segment updater, merges) from
/// the thread that creates the writer, and a rollback or a commit creates some of them anew:
/// done here, they run at the lowered priority whichever thread asked. (A rebuild at start
/// runs on the node's own thread; before this, its rollback left tantivy's merge threads at
/// full priority for the node's whole life, where they preempted gossip hops.)
fn on_a_lowered_thread<T: Send>(what: &str, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                lower_this_thread_priority();
                work()
            })
            .join()
    })
    .map_err(|_| {
        SearchError::Tantivy(tantivy::TantivyError::SystemError(format!(
            "the thread running the index's {what} panicked"
        )))
    })?
}

/// [`IndexWriter::rollback`], which replaces the writer and its threads, on a lowered thread.
fn roll_back(writer: &mut IndexWriter) -> Result<()> {
    on_a_lowered_thread("rollback", || Ok(writer.rollback().map(|_| ())?))
}

impl SearchIndex {
    /// Opens the index in `dir` (created if missing) with the default writer heap.
    ///
    /// `dir` belongs to the index: if it holds an index of another schema or an unreadable one,
    /// its contents are deleted and an empty index is created ([`generation`](Self::generation)
    /// is then `None`, so the caller rebuilds).
    pub fn open(dir: &Path) -> Result<SearchIndex> {
        Self::open_with_heap(dir, WRITER_HEAP_BYTES)
    }

    /// As [`open`](Self::open), with the writer's memory budget in bytes (at least 15 MB).
    pub fn open_with_heap(dir: &Path, heap_bytes: usize) -> Result<SearchIndex> {
        let open_err = |cause: String| SearchError::Open {
            dir: dir.to_path_buf(),
            cause,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let (schema, fields) = schema();
        let open = || -> Result<Index> {
            let directory = MmapDirectory::open(dir).map_err(|e| open_err(e.to_string()))?;
            Ok(Index::open_or_create(directory, schema.clone())?)
        };
        let index = match open() {
            Ok(index) => index,
            Err(err) => {
                // A schema of another version is the planned case (an upgrade changed the
                // fields): say so plainly; anything else is damage worth a warning.
                if matches!(
                    &err,
                    SearchError::Tantivy(tantivy::TantivyError::SchemaError(_))
                ) {
                    tracing::info!(dir = %dir.display(), "search index of another schema version; recreating it, then rebuilding from the store");
                } else {
                    tracing::warn!(dir = %dir.display(), %err, "search index unusable; recreating it empty");
                }
                std::fs::remove_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
                std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
                open()?
            }
        };
        register_tokenizers(&index);
        // Created on a thread of lowered priority, so tantivy's indexing, merging and segment
        // threads inherit it (the indexer thread, which commits and so respawns the indexing
        // workers, lowers its own too).
        let writer = on_a_lowered_thread("writer", || {
            Ok(index.writer_with_num_threads(1, heap_bytes.max(15_000_000))?)
        })
        .map_err(|e| open_err(e.to_string()))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(SearchIndex {
            dir: dir.to_path_buf(),
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            pending_generation: Mutex::new(None),
            rebuilds: AtomicU64::new(0),
            #[cfg(test)]
            fail_next_commit: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Takes the index writer on another thread and keeps it, as a rebuild does, so that a
    /// test can hold every other writer up until [`HeldWriter::release`].
    #[cfg(test)]
    pub(crate) fn hold_writer_for_test(self: &std::sync::Arc<Self>) -> HeldWriter {
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let index = std::sync::Arc::clone(self);
        let thread = std::thread::spawn(move || {
            let writer = index.writer();
            let _ = held_tx.send(writer.is_ok());
            let _ = release_rx.recv();
        });
        assert!(held.recv().unwrap_or(false), "cannot take the index writer");
        HeldWriter { release, thread }
    }

    /// Makes the next commit fail before anything is written, as an I/O error would.
    #[cfg(test)]
    pub(crate) fn fail_next_commit_for_test(&self) {
        self.fail_next_commit
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn writer(&self) -> Result<MutexGuard<'_, IndexWriter>> {
        self.writer.lock().map_err(|_| SearchError::Poisoned)
    }

    /// The generation stored with the last commit; `None` for a new index, one of another
    /// schema version, or one never given a generation.
    pub fn generation(&self) -> Option<String> {
        let payload = self.index.load_metas().ok()?.payload?;
        let (version, generation) = payload.split_once(':')?;
        (version.parse::<u32>().ok()? == SCHEMA_VERSION).then(|| generation.to_string())
    }

    /// Sets the generation the next [`commit`](Self::commit) writes with its documents.
    pub fn set_generation(&self, generation: &str) {
        if let Ok(mut pending) = self.pending_generation.lock() {
            *pending = Some(generation.to_string());
        }
    }

    /// Indexes the item a record is the winner of, replacing its previous document. A tombstone
    /// removes the item; records of kinds that are not searchable are ignored. `region` is the
    /// owning region (the store's `ItemEntry::region`, not necessarily the author key).
    /// Returns whether a document was added. Visible after [`commit`](Self::commit).
    pub fn upsert(&self, record: &Record, region: RegionId) -> Result<bool> {
        self.upsert_content(&record.content, record.id, region)
    }

    /// As [`upsert`](Self::upsert), from decoded content and its record id.
    pub fn upsert_content(
        &self,
        content: &Content,
        id: RecordId,
        region: RegionId,
    ) -> Result<bool> {
        if !is_searchable(content.kind) {
            return Ok(false);
        }
        let writer = self.writer()?;
        self.upsert_with(&writer, content, id, region, true)
    }

    /// As [`upsert`](Self::upsert) for the first winner the store ever held for its item,
    /// written after `mark` was taken ([`rebuild_mark`](Self::rebuild_mark)). Unless a rebuild
    /// ran or began since, no document of the item can be in the index, and the delete that
    /// an upsert queues is skipped: tantivy looks every delete up in every segment at the next
    /// commit, which cost about a tenth of the indexing CPU of a catching-up node (`perf`,
    /// `kim bench catchup`), where nearly every item is new.
    pub fn insert_first(&self, record: &Record, region: RegionId, mark: u64) -> Result<bool> {
        if !is_searchable(record.content.kind) {
            return Ok(false);
        }
        let writer = self.writer()?;
        // Rebuilds move the mark only while holding the writer, which this thread now holds.
        let unchanged = mark.is_multiple_of(2) && self.rebuilds.load(Ordering::Acquire) == mark;
        self.upsert_with(&writer, &record.content, record.id, region, !unchanged)
    }

    /// The rebuild mark: take it before writing an item's first winner to the store, and hand
    /// it to [`insert_first`](Self::insert_first) with the record. A rebuild reads the store
    /// while it runs, so one running then, or begun after, may have indexed the item already.
    pub fn rebuild_mark(&self) -> u64 {
        self.rebuilds.load(Ordering::Acquire)
    }

    /// Adds the item's document, after deleting its older ones if `replacing`.
    fn upsert_with(
        &self,
        writer: &IndexWriter,
        content: &Content,
        id: RecordId,
        region: RegionId,
        replacing: bool,
    ) -> Result<bool> {
        if !is_searchable(content.kind) {
            return Ok(false);
        }
        let key = item_key(&region, content.kind, &content.key);
        if replacing {
            writer.delete_term(Term::from_field_text(self.fields.item, &key));
        }
        let Some(doc) = self.document(content, id, &region, &key) else {
            return Ok(false);
        };
        writer.add_document(doc)?;
        Ok(true)
    }

    /// Removes an item's document (withdrawal). Visible after [`commit`](Self::commit).
    pub fn remove(&self, region: RegionId, kind: Kind, key: &str) -> Result<()> {
        let writer = self.writer()?;
        writer.delete_term(Term::from_field_text(
            self.fields.item,
            &item_key(&region, kind, key),
        ));
        Ok(())
    }

    /// Makes every change since the last commit durable and visible, together with the pending
    /// generation (kept from the previous commit if none was set).
    pub fn commit(&self) -> Result<()> {
        let mut writer = self.writer()?;
        self.commit_with(&mut writer)
    }

    fn commit_with(&self, writer: &mut IndexWriter) -> Result<()> {
        let generation = self
            .pending_generation
            .lock()
            .map_err(|_| SearchError::Poisoned)?
            .take()
            .or_else(|| self.generation());
        #[cfg(test)]
        if self
            .fail_next_commit
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(SearchError::Tantivy(tantivy::TantivyError::SystemError(
                "injected commit failure".into(),
            )));
        }
        let mut prepared = writer.prepare_commit()?;
        if let Some(generation) = generation {
            prepared.set_payload(&format!("{SCHEMA_VERSION}:{generation}"));
        }
        prepared.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// Discards every change since the last commit (e.g. the store write they belonged to
    /// failed).
    pub fn rollback(&self) -> Result<()> {
        let mut writer = self.writer()?;
        roll_back(&mut writer)?;
        if let Ok(mut pending) = self.pending_generation.lock() {
            *pending = None;
        }
        Ok(())
    }

    /// Throws the whole index away and indexes `winners` (each item's current winner with its
    /// owning region), then commits once with `generation`. Searches keep seeing the previous
    /// commit until then; other writers (upsert, remove, commit) wait for the rebuild, so no
    /// half-built index is ever committed. Feed it the store's item winners, not every stored
    /// record: equivocation evidence must not be indexed. Returns the documents indexed.
    pub fn rebuild(
        &self,
        winners: impl IntoIterator<Item = (RegionId, Record)>,
        generation: &str,
    ) -> Result<u64> {
        self.rebuild_from(winners.into_iter().map(Ok), generation)
    }

    /// As [`rebuild`](Self::rebuild), from a source that can fail (the store, read while the
    /// index takes it): at the first error, or any failure of the index itself, nothing is
    /// committed and searches keep the previous commit.
    pub fn rebuild_from(
        &self,
        winners: impl IntoIterator<Item = std::result::Result<(RegionId, Record), String>>,
        generation: &str,
    ) -> Result<u64> {
        let started = std::time::Instant::now();
        let mut writer = self.writer()?;
        // Changes the writer holds uncommitted go first: `delete_all_documents` does not drop
        // documents still buffered, which the rebuild would then index a second time.
        roll_back(&mut writer)?;
        self.rebuilds.fetch_add(1, Ordering::AcqRel);
        // Ended (the mark even again) however the rebuild ends; the writer is still held.
        struct Ended<'a>(&'a AtomicU64);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::AcqRel);
            }
        }
        let _ended = Ended(&self.rebuilds);
        let built = (|| -> Result<u64> {
            writer.delete_all_documents()?;
            let mut indexed = 0u64;
            for winner in winners {
                let (region, record) = winner.map_err(SearchError::Source)?;
                if self.upsert_with(&writer, &record.content, record.id, region, true)? {
                    indexed += 1;
                }
            }
            Ok(indexed)
        })();
        let indexed = match built {
            Ok(indexed) => indexed,
            Err(err) => {
                let _ = roll_back(&mut writer);
                if let Ok(mut pending) = self.pending_generation.lock() {
                    *pending = None;
                }
                return Err(err);
            }
        };
        self.set_generation(generation);
        // The commit respawns tantivy's indexing thread: on a lowered thread too.
        let held: &mut IndexWriter = &mut writer;
        if let Err(err) = on_a_lowered_thread("commit", || self.commit_with(held)) {
            let _ = roll_back(&mut writer);
            return Err(err);
        }
        tracing::info!(
            indexed,
            ms = started.elapsed().as_millis() as u64,
            "search index rebuilt"
        );
        Ok(indexed)
    }

    /// Blocks until background merges finish (tests, benchmarks, shutdown).
    pub fn wait_merging(self) -> Result<()> {
        let writer = self
            .writer
            .into_inner()
            .map_err(|_| SearchError::Poisoned)?;
        writer.wait_merging_threads()?;
        Ok(())
    }

    /// Documents visible to searches.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Bytes the index occupies on disk.
    pub fn disk_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => m.len(),
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.dir)
    }

    fn document(
        &self,
        c: &Content,
        id: RecordId,
        region: &RegionId,
        key: &str,
    ) -> Option<TantivyDocument> {
        let facets = facets(&c.body)?;
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.item, key);
        doc.add_u64(f.record, record_prefix(&id));
        doc.add_text(f.region, region.to_hex());
        doc.add_text(f.kind, c.kind.as_str());
        doc.add_u64(f.kind_code, c.kind as u64);
        if let Some(kind) = facets.coop_kind {
            doc.add_text(f.coop_kind, cooperation_kind_name(kind));
        }
        let mut terms = BTreeSet::new();
        for code in &facets.nuts {
            terms.extend(nuts_terms(code));
        }
        for term in std::mem::take(&mut terms) {
            doc.add_text(f.nuts, term);
        }
        for code in &facets.nace {
            terms.extend(nace_terms(code));
        }
        for term in std::mem::take(&mut terms) {
            doc.add_text(f.nace, term);
        }
        terms.extend(facets.countries.iter().cloned());
        for term in std::mem::take(&mut terms) {
            doc.add_text(f.country, term);
        }
        let languages: BTreeSet<String> = facets
            .languages
            .iter()
            .map(|l| l.trim().to_ascii_lowercase())
            .collect();
        for lang in &languages {
            doc.add_text(f.lang, lang);
        }
        let partnerships: BTreeSet<&str> = facets
            .partnership
            .iter()
            .map(|p| partnership_name(*p))
            .collect();
        for p in partnerships {
            doc.add_text(f.partnership, p);
        }
        doc.add_u64(f.expires, c.expires_at_ms.unwrap_or(u64::MAX));
        if let Some(deadline) = facets.deadline {
            doc.add_i64(f.deadline, deadline.days_since_epoch());
        }
        doc.add_u64(f.created, c.created_at_ms);
        // Text into the field of every language listed, in order; other languages share one.
        let mut text_fields: Vec<Field> = facets
            .languages
            .iter()
            .map(|l| match l.trim().to_ascii_lowercase().as_str() {
                "en" => f.text_en,
                "de" => f.text_de,
                _ => f.text_other,
            })
            .collect();
        if text_fields.is_empty() {
            text_fields.push(f.text_other);
        }
        let mut seen = Vec::new();
        for field in text_fields {
            if !seen.contains(&field) {
                seen.push(field);
                doc.add_text(field, &facets.text);
            }
        }
        Some(doc)
    }

    fn text_query(&self, text: &str, all_words: bool) -> Option<Box<dyn TQuery>> {
        let mut splitter = analyzer(None);
        let mut words = Vec::new();
        let mut stream = splitter.token_stream(text);
        while stream.advance() {
            let word = stream.token().text.clone();
            if !words.contains(&word) {
                words.push(word);
            }
        }
        let managers = self.index.tokenizers();
        let mut per_word: Vec<Vec<Term>> = Vec::new();
        for word in &words {
            let mut terms: Vec<Term> = Vec::new();
            for (field, name) in self.fields.text_fields() {
                let Some(mut analyzer) = managers.get(name) else {
                    continue;
                };
                let mut stream = analyzer.token_stream(word);
                while stream.advance() {
                    let term = Term::from_field_text(field, &stream.token().text);
                    if !terms.contains(&term) {
                        terms.push(term);
                    }
                }
            }
            if !terms.is_empty() {
                per_word.push(terms);
            }
        }
        if per_word.is_empty() {
            return None;
        }
        let term_query = |t: Term| -> Box<dyn TQuery> {
            Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs))
        };
        if all_words && per_word.len() > 1 {
            let musts = per_word
                .into_iter()
                .map(|terms| {
                    let any: Box<dyn TQuery> = Box::new(BooleanQuery::new(
                        terms
                            .into_iter()
                            .map(|t| (Occur::Should, term_query(t)))
                            .collect(),
                    ));
                    (Occur::Must, any)
                })
                .collect();
            Some(Box::new(BooleanQuery::new(musts)))
        } else {
            // One flat disjunction, so tantivy can prune with block-max WAND.
            Some(Box::new(BooleanQuery::new(
                per_word
                    .into_iter()
                    .flatten()
                    .map(|t| (Occur::Should, term_query(t)))
                    .collect(),
            )))
        }
    }

    fn any_of(field: Field, values: impl IntoIterator<Item = String>) -> Option<Box<dyn TQuery>> {
        let mut values: Vec<String> = values.into_iter().filter(|v| !v.is_empty()).collect();
        values.sort();
        values.dedup();
        match values.len() {
            0 => None,
            1 => Some(Box::new(TermQuery::new(
                Term::from_field_text(field, &values[0]),
                IndexRecordOption::Basic,
            ))),
            _ => Some(Box::new(BooleanQuery::new_multiterms_query(
                values
                    .iter()
                    .map(|v| Term::from_field_text(field, v))
                    .collect(),
            ))),
        }
    }

    fn filters(&self, q: &Query) -> Vec<Box<dyn TQuery>> {
        let f = &self.fields;
        let mut out: Vec<Box<dyn TQuery>> = Vec::new();
        let lists = [
            Self::any_of(f.kind, q.kinds.iter().map(|k| k.as_str().to_string())),
            Self::any_of(
                f.coop_kind,
                q.cooperation_kinds
                    .iter()
                    .map(|k| cooperation_kind_name(*k).to_string()),
            ),
            Self::any_of(f.region, q.regions.iter().map(|r| r.to_hex())),
            Self::any_of(f.nuts, q.nuts.iter().map(|n| n.trim().to_ascii_uppercase())),
            Self::any_of(f.nace, q.nace.iter().map(|n| n.trim().to_ascii_uppercase())),
            Self::any_of(f.country, q.countries.iter().map(|c| country_term(c))),
            Self::any_of(
                f.lang,
                q.languages.iter().map(|l| l.trim().to_ascii_lowercase()),
            ),
            Self::any_of(
                f.partnership,
                q.partnership_types
                    .iter()
                    .map(|p| partnership_name(*p).to_string()),
            ),
            Self::any_of(
                f.item,
                q.items
                    .iter()
                    .map(|(region, kind, key)| item_key(region, *kind, key)),
            ),
        ];
        out.extend(lists.into_iter().flatten());
        if !q.places.is_empty() {
            let mut terms = BTreeSet::new();
            for place in &q.places {
                let place = place.trim().to_ascii_uppercase();
                if place.len() == 2 {
                    terms.insert(Term::from_field_text(f.country, &country_term(&place)));
                }
                terms.insert(Term::from_field_text(f.nuts, &place));
            }
            out.push(Box::new(BooleanQuery::new_multiterms_query(
                terms.into_iter().collect(),
            )));
        }
        match q.status {
            Status::Live => out.push(Box::new(RangeQuery::new(
                Bound::Excluded(Term::from_field_u64(f.expires, q.now_ms)),
                Bound::Unbounded,
            ))),
            Status::Expired => out.push(Box::new(RangeQuery::new(
                Bound::Unbounded,
                Bound::Included(Term::from_field_u64(f.expires, q.now_ms)),
            ))),
            Status::All => {}
        }
        if q.deadline_from.is_some() || q.deadline_to.is_some() {
            let bound = |d: Option<Date>, lower: bool| match d {
                Some(d) => Bound::Included(Term::from_field_i64(f.deadline, d.days_since_epoch())),
                None if lower => Bound::Included(Term::from_field_i64(f.deadline, i64::MIN)),
                None => Bound::Included(Term::from_field_i64(f.deadline, i64::MAX)),
            };
            out.push(Box::new(RangeQuery::new(
                bound(q.deadline_from, true),
                bound(q.deadline_to, false),
            )));
        }
        out
    }

    fn build_query(&self, q: &Query) -> (Box<dyn TQuery>, bool) {
        let text = q
            .text
            .as_deref()
            .and_then(|t| self.text_query(t, q.all_words));
        let has_text = text.is_some();
        let filters = self.filters(q);
        let query: Box<dyn TQuery> = match (text, filters.is_empty()) {
            (Some(text), true) => text,
            (None, true) => Box::new(AllQuery),
            (text, false) => {
                let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = Vec::new();
                if let Some(text) = text {
                    clauses.push((Occur::Must, text));
                }
                // Filters decide membership only; the score is the text's alone.
                for filter in filters {
                    clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(filter, 0.0))));
                }
                Box::new(BooleanQuery::new(clauses))
            }
        };
        (query, has_text)
    }

    /// Runs a search on the last committed state.
    pub fn search(&self, q: &Query) -> Result<Vec<Hit>> {
        let (query, has_text) = self.build_query(q);
        self.run(q, query.as_ref(), has_text)
    }

    /// Candidates for matching: every item passing `q`'s filters may be returned, but items
    /// sharing words of `q.text` (any word) or sectors of `nace` rank first, so the top
    /// `q.limit` are the ones most likely to score well. A NACE code counts with its ancestors,
    /// finer levels weigh more (a shared class outranks a shared section).
    pub fn candidates(&self, q: &Query, nace: &[String]) -> Result<Vec<Hit>> {
        let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = Vec::new();
        for filter in self.filters(q) {
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(filter, 0.0))));
        }
        let has_filters = !clauses.is_empty();
        if let Some(text) = q.text.as_deref().and_then(|t| self.text_query(t, false)) {
            clauses.push((Occur::Should, text));
        }
        let mut seen = BTreeSet::new();
        for code in nace {
            for term in nace_terms(code) {
                if !seen.insert(term.clone()) {
                    continue;
                }
                let weight = match codes::nace(&term).map(|c| c.level) {
                    Some(4) => 4.0,
                    Some(3) => 3.0,
                    Some(2) => 2.0,
                    _ => 0.5,
                };
                let query = TermQuery::new(
                    Term::from_field_text(self.fields.nace, &term),
                    IndexRecordOption::Basic,
                );
                clauses.push((
                    Occur::Should,
                    Box::new(BoostQuery::new(Box::new(query), weight)),
                ));
            }
        }
        if !has_filters {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        self.run(q, &BooleanQuery::new(clauses), true)
    }

    fn run(&self, q: &Query, query: &dyn TQuery, has_text: bool) -> Result<Vec<Hit>> {
        let limit = match q.limit {
            0 => 20,
            n => n.min(LIMIT_MAX),
        };
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(limit).and_offset(q.offset.min(OFFSET_MAX));
        let docs: Vec<(f32, DocAddress)> = if has_text && q.sort == Sort::Relevance {
            searcher.search(query, &top.order_by_score())?
        } else {
            searcher
                .search(query, &top.order_by_u64_field("created_at_ms", Order::Desc))?
                .into_iter()
                .map(|(_, addr)| (0.0, addr))
                .collect()
        };
        let mut hits = Vec::with_capacity(docs.len());
        let mut reader = HitReader::new(&searcher, self.fields.item);
        for (score, addr) in docs {
            if let Some(hit) = reader.read(addr, if has_text { score } else { 0.0 })? {
                hits.push(hit);
            }
        }
        Ok(hits)
    }

    /// One page of the items of `kind` whose expiry passes `status` at `now_ms`, newest
    /// creation time first, at or below `before`'s instant, and the floor it reaches if more
    /// may lie below: every indexed item from `before` down to the floor is in the page. A
    /// page covers whole creation instants: it reads `n` items, then every item created at
    /// the same instant as the last of them. The index holds only a prefix of each record id,
    /// so the caller orders items within an instant by [`Position`] and drops those not below
    /// `before`, from the full ids the store gives it.
    pub fn list_page(
        &self,
        kind: Kind,
        status: Status,
        now_ms: u64,
        before: Option<&Position>,
        n: usize,
    ) -> Result<ListPage> {
        let f = self.fields;
        let u64_range = |field: Field, from: Bound<u64>, to: Bound<u64>| -> Box<dyn TQuery> {
            let term = |t: u64| Term::from_field_u64(field, t);
            Box::new(RangeQuery::new(from.map(term), to.map(term)))
        };
        // Every clause is a fast-field range, which tantivy costs alike, so they are
        // intersected in this order: the creation-time window drives (a scan of its column
        // that yields only the window's items) and the others are looked up for those items.
        // With the `kind` term first, every item of the kind drove: 35-80 ms a page at 1M.
        let query = |from: Bound<u64>, to: Bound<u64>| {
            let mut clauses: Vec<(Occur, Box<dyn TQuery>)> = vec![
                (Occur::Must, u64_range(f.created, from, to)),
                (
                    Occur::Must,
                    u64_range(
                        f.kind_code,
                        Bound::Included(kind as u64),
                        Bound::Included(kind as u64),
                    ),
                ),
            ];
            match status {
                Status::Live => clauses.push((
                    Occur::Must,
                    u64_range(f.expires, Bound::Excluded(now_ms), Bound::Unbounded),
                )),
                Status::Expired => clauses.push((
                    Occur::Must,
                    u64_range(f.expires, Bound::Unbounded, Bound::Included(now_ms)),
                )),
                Status::All => {}
            }
            BooleanQuery::new(clauses)
        };
        // Below (c, id 0) lies nothing of instant c: a floor is such a position.
        let top = match before {
            None => u64::MAX,
            Some(b) if *b == Position::start_of(b.created_at_ms()) => {
                match b.created_at_ms().checked_sub(1) {
                    Some(top) => top,
                    None => return Ok((Vec::new(), None)),
                }
            }
            Some(b) => b.created_at_ms(),
        };
        let searcher = self.reader.searcher();
        let n = n.max(1);
        // Sorting every item of a kind by creation time took 35-80 ms a page at 1M items. So
        // the page is read in windows of creation time, newest first, each sized from the
        // index's density to hold about 2n items (four times wider after a sparse one):
        // tantivy then sorts only the items inside a window.
        let (mut oldest, mut newest) = (u64::MAX, 0u64);
        for segment in searcher.segment_readers() {
            let column = segment.fast_fields().u64("created_at_ms")?;
            if segment.num_docs() > 0 {
                oldest = oldest.min(column.min_value());
                newest = newest.max(column.max_value());
            }
        }
        if oldest > newest || oldest > top {
            return Ok((Vec::new(), None));
        }
        let span = u128::from(newest.min(top) - oldest) + 1;
        let docs = u128::from(searcher.num_docs().max(1));
        let mut width = u64::try_from((2 * n as u128 * span).div_ceil(docs))
            .unwrap_or(u64::MAX)
            .max(1);
        let mut high = top.min(newest);
        // Each hit with its creation time, which the collector already read.
        let mut addrs: Vec<(u64, DocAddress)> = Vec::new();
        let mut floor = None;
        loop {
            // The window [low, high]; the last one reaches down to the oldest item.
            let low = high.saturating_sub(width - 1);
            let bottom = low <= oldest;
            let from = if bottom {
                Bound::Unbounded
            } else {
                Bound::Included(low)
            };
            let found = searcher.search(
                &query(from, Bound::Included(high)),
                &TopDocs::with_limit(n).order_by_u64_field("created_at_ms", Order::Desc),
            )?;
            if found.len() == n
                && let Some(last) = found.iter().filter_map(|(c, _)| *c).min()
            {
                // The window holds more than the page: cut it at its n-th item's instant, and
                // take every item of that instant (they may lie on both sides of the cut),
                // so the page ends on a whole instant.
                floor = Some(Position::start_of(last));
                addrs.extend(found.iter().filter_map(|(c, addr)| match c {
                    Some(c) if *c > last => Some((*c, *addr)),
                    _ => None,
                }));
                let same = searcher.search(
                    &query(Bound::Included(last), Bound::Included(last)),
                    &DocSetCollector,
                )?;
                addrs.extend(same.into_iter().map(|addr| (last, addr)));
                break;
            }
            addrs.extend(found.iter().map(|(c, addr)| (c.unwrap_or(0), *addr)));
            if bottom {
                break;
            }
            if addrs.len() >= n {
                // Complete from `high` of the first window down to `low`.
                floor = Some(Position::start_of(low));
                break;
            }
            high = low - 1;
            width = width.saturating_mul(4);
        }
        // The page holds whole instants, so the caller, which learns each hit's full record id
        // from the store, can order them exactly and cut them below `before`.
        let mut reader = HitReader::new(&searcher, self.fields.item);
        let mut page = Vec::with_capacity(addrs.len());
        for (created, addr) in addrs {
            if let Some(hit) = reader.read(addr, 0.0)? {
                page.push((created, hit));
            }
        }
        page.sort_by_key(|p| std::cmp::Reverse(p.0));
        Ok((page, floor))
    }

    /// How many items match (ignores limit, offset and sort).
    pub fn count(&self, q: &Query) -> Result<usize> {
        let (query, _) = self.build_query(q);
        Ok(self.reader.searcher().search(&query, &Count)?)
    }
}

/// The textual form of a [`Query`]: what `GET /api/v1/search` takes as its query string and
/// what a saved search keeps. Lists are comma-separated.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::IntoParams,
    utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Free text, analysed per language (English and German stemming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    /// Item kinds (`cooperation`, `knowledge`, `organisation`, `project`, or the collection
    /// names `offers`, `organisations`, `projects`) or co-operation kinds (`technology_offer`,
    /// `business_request`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// NUTS 2024 codes at any level; a code matches its subregions (`AT`, `AT2`, `AT22`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nuts: Option<String>,
    /// NACE Rev. 2.1 codes at any level; a code matches its descendants (`C`, `26`, `26.11`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nace: Option<String>,
    /// ISO 3166-1 alpha-2 countries (`EL` is taken for Greece).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// ISO 639-1 languages the item lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// `live` (default), `expired` or `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Partnership types (`licence`, `technical_cooperation`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partnership: Option<String>,
    /// Deadline for expressions of interest on or before this day (YYYY-MM-DD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_before: Option<String>,
    /// Deadline for expressions of interest on or after this day (YYYY-MM-DD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_after: Option<String>,
    /// Owning region (hex region id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Every word must occur (default: any word, ranked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_words: Option<bool>,
    /// `relevance` (default) or `newest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<String>,
    /// Hits per page, 1–1000 (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Hits to skip, at most 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
}

/// Longest free text a search takes, in characters.
pub const SEARCH_TEXT_CHARS_MAX: usize = 1000;
/// Most values one list parameter takes.
pub const SEARCH_LIST_VALUES_MAX: usize = 50;

fn split_list(name: &str, value: &Option<String>) -> std::result::Result<Vec<String>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let values: Vec<String> = value
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() {
        return Err(format!(
            "{name} is empty; leave it out or name at least one value"
        ));
    }
    if values.len() > SEARCH_LIST_VALUES_MAX {
        return Err(format!(
            "{name} lists {} values; at most {SEARCH_LIST_VALUES_MAX}",
            values.len()
        ));
    }
    Ok(values)
}

fn parse_enum<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
}

impl SearchParams {
    /// The query these parameters describe, judged at `now_ms`. The error names the parameter
    /// and says what it takes.
    pub fn to_query(&self, now_ms: u64) -> std::result::Result<Query, String> {
        let mut q = Query {
            now_ms,
            ..Query::default()
        };
        if let Some(text) = &self.q {
            if text.chars().count() > SEARCH_TEXT_CHARS_MAX {
                return Err(format!(
                    "q is longer than {SEARCH_TEXT_CHARS_MAX} characters"
                ));
            }
            q.text = Some(text.clone());
        }
        for value in split_list("kind", &self.kind)? {
            let item_kind = match value.as_str() {
                "offers" => Some(Kind::Cooperation),
                "organisations" => Some(Kind::Organisation),
                "projects" => Some(Kind::Project),
                other => Kind::parse(other).filter(|k| is_searchable(*k)),
            };
            if let Some(kind) = item_kind {
                q.kinds.push(kind);
            } else if let Some(kind) = parse_enum::<CooperationKind>(&value) {
                q.cooperation_kinds.push(kind);
            } else {
                return Err(format!(
                    "kind {value:?} is not an item kind (cooperation, knowledge, organisation, project) or a co-operation kind (business_offer, technology_request, research_request, …)"
                ));
            }
        }
        for value in split_list("nuts", &self.nuts)? {
            let code = value.to_ascii_uppercase();
            if codes::nuts(&code).is_none() {
                return Err(format!("nuts {value:?} is not a NUTS 2024 code"));
            }
            q.nuts.push(code);
        }
        for value in split_list("nace", &self.nace)? {
            let code = value.to_ascii_uppercase();
            if codes::nace(&code).is_none() {
                return Err(format!(
                    "nace {value:?} is not a NACE Rev. 2.1 code (e.g. C, 26, 26.1, 26.11)"
                ));
            }
            q.nace.push(code);
        }
        for value in split_list("country", &self.country)? {
            let code = value.to_ascii_uppercase();
            if !codes::is_country(codes::nuts_country_to_iso(&code)) {
                return Err(format!(
                    "country {value:?} is not an ISO 3166-1 alpha-2 code"
                ));
            }
            q.countries.push(code);
        }
        for value in split_list("language", &self.language)? {
            let code = value.to_ascii_lowercase();
            if !codes::is_language(&code) {
                return Err(format!("language {value:?} is not an ISO 639-1 code"));
            }
            q.languages.push(code);
        }
        q.status = match self.status.as_deref() {
            None | Some("live") => Status::Live,
            Some("expired") => Status::Expired,
            Some("all") => Status::All,
            Some(other) => {
                return Err(format!("status {other:?} is not one of live, expired, all"));
            }
        };
        for value in split_list("partnership", &self.partnership)? {
            q.partnership_types
                .push(parse_enum::<PartnershipType>(&value).ok_or_else(|| {
                    format!(
                        "partnership {value:?} is not a partnership type (licence, technical_cooperation, research_cooperation, joint_venture, subcontracting, distribution, commercial, project_partner, knowledge_exchange)"
                    )
                })?);
        }
        let date = |name: &str, value: &Option<String>| match value {
            None => Ok(None),
            Some(v) => Date::parse(v)
                .map(Some)
                .ok_or_else(|| format!("{name} {v:?} is not a date (YYYY-MM-DD)")),
        };
        q.deadline_to = date("deadline_before", &self.deadline_before)?;
        q.deadline_from = date("deadline_after", &self.deadline_after)?;
        if let (Some(from), Some(to)) = (q.deadline_from, q.deadline_to)
            && from.days_since_epoch() > to.days_since_epoch()
        {
            return Err("deadline_after is later than deadline_before".to_string());
        }
        if let Some(region) = &self.region {
            q.regions.push(
                RegionId::from_hex(region)
                    .ok_or_else(|| format!("region {region:?} is not 64 hex digits"))?,
            );
        }
        q.all_words = self.all_words.unwrap_or(false);
        q.sort = match self.sort.as_deref() {
            None | Some("relevance") => Sort::Relevance,
            Some("newest") => Sort::Newest,
            Some(other) => {
                return Err(format!("sort {other:?} is not one of relevance, newest"));
            }
        };
        q.limit = self.limit.unwrap_or(20);
        if !(1..=LIMIT_MAX).contains(&q.limit) {
            return Err(format!("limit must be between 1 and {LIMIT_MAX}"));
        }
        q.offset = self.offset.unwrap_or(0);
        if q.offset > OFFSET_MAX {
            return Err(format!("offset must be at most {OFFSET_MAX}"));
        }
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    #[test]
    fn the_cached_stemmer_stems_as_the_stemmer_does() {
        let text = "Cooperating regions cooperate; the cooperation of Regionen, \
                    Zusammenarbeit und Unternehmen — Häuser häuslich running runs";
        for language in [Language::English, Language::German] {
            let mut plain = TextAnalyzer::builder(SimpleTokenizer::default())
                .filter(RemoveLongFilter::limit(TOKEN_CHARS_MAX))
                .filter(LowerCaser)
                .filter(Stemmer::new(language))
                .build();
            let mut cached = analyzer(Some(language));
            let expected = tokens(&mut plain, text);
            assert_ne!(
                expected,
                tokens(&mut analyzer(None), text),
                "nothing was stemmed"
            );
            // Cold, then warm, then through a clone sharing the cache.
            assert_eq!(tokens(&mut cached, text), expected);
            assert_eq!(tokens(&mut cached, text), expected);
            assert_eq!(tokens(&mut cached.clone(), text), expected);
        }
    }
}
