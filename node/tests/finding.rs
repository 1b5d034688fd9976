//! Finding partners on a node's replica of a three-region federation: matches of an offer with
//! their breakdown and the hard filters, the co-operation potential matrix and the overview on a
//! known corpus, and saved-search notifications raised by records arriving through import (the
//! pipeline entry every non-API path shares).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use kim_node::ingest::{Ingest, Source};
use kim_node::matches::{MatchError, find_matches};
use kim_node::overview::{overview, potential};
use kim_node::saved::{self, SavedSearchInput};
use kim_node::search::{SearchIndex, SearchParams};
use kim_node::store::Store;
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
use kim_protocol::membership::{Charter, Founder, ThresholdRule, federation_id};
use kim_protocol::samples;
use kim_protocol::types::{
    Cooperation, CooperationKind, DevelopmentStage, IprStatus, ItemRef, PartnerSought,
    PartnershipType,
};
use kim_protocol::{FederationId, PublicKey};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

const DAY: u64 = 86_400_000;

struct Federation {
    _dir: tempfile::TempDir,
    keys: Vec<SigningKey>,
    federation: FederationId,
    ingest: Arc<Ingest>,
    now: u64,
}

/// Steiermark (AT22), Vzhodna Slovenija (SI03) and Oberbayern (DE21), all founders.
fn federation() -> Federation {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let keys: Vec<SigningKey> = (0..3).map(|_| samples::signing_key(&mut rng)).collect();
    let names = [
        ("Steiermark", "AT22"),
        ("Vzhodna Slovenija", "SI03"),
        ("Oberbayern", "DE21"),
    ];
    let charter = Charter {
        name: "finding".into(),
        founders: keys
            .iter()
            .zip(names)
            .map(|(k, (name, nuts))| Founder {
                key: samples::public_key(k),
                name: name.into(),
                nuts: vec![nuts.into()],
            })
            .collect(),
        admission: ThresholdRule::Majority,
        removal: ThresholdRule::Majority,
        created_at_ms: 0,
    };
    let federation = federation_id(&charter.to_bytes().unwrap());
    let store = Store::open(&dir.path().join("store"), 16 << 20, true).unwrap();
    let ingest = Ingest::open(store, federation, charter).unwrap();
    let index = SearchIndex::open(&dir.path().join("search")).unwrap();
    ingest.reindex_if_stale(&index).unwrap();
    let ingest = Arc::new(ingest.with_search(Arc::new(index)));
    Federation {
        _dir: dir,
        keys,
        federation,
        ingest,
        now: kim_node::ingest::system_now_ms(),
    }
}

fn region(f: &Federation, i: usize) -> PublicKey {
    samples::public_key(&f.keys[i])
}

fn profile(
    kind: CooperationKind,
    nuts: &str,
    nace: &str,
    keywords: &[&str],
    title: &str,
) -> Cooperation {
    Cooperation {
        kind,
        title: title.into(),
        summary: format!("{title} for regional manufacturers"),
        description: String::new(),
        innovation: String::new(),
        stage: DevelopmentStage::Prototype,
        ipr: IprStatus::None,
        technology_keywords: keywords.iter().map(|k| k.to_string()).collect(),
        market_keywords: vec![],
        nace: vec![nace.into()],
        partnership_types: vec![PartnershipType::TechnicalCooperation],
        partner_sought: PartnerSought::default(),
        eoi_deadline: None,
        anonymous: false,
        organisation: None,
        nuts: nuts.into(),
        languages: vec!["en".into()],
    }
}

impl Federation {
    /// A signed record of region `i`, made a day ago, expiring at `expires`.
    fn record(
        &self,
        i: usize,
        key: &str,
        revision: u64,
        body: Cooperation,
        expires: u64,
    ) -> Record {
        let content = Content {
            format: FORMAT_VERSION,
            federation: self.federation,
            author: region(self, i),
            kind: Kind::Cooperation,
            key: key.into(),
            revision,
            created_at_ms: self.now - DAY,
            expires_at_ms: Some(expires),
            body: Body::Cooperation(body),
        };
        Record::sign(&content, &self.keys[i]).unwrap()
    }

    /// Ingests records as import does; panics if any is refused.
    async fn import(&self, records: Vec<Record>) -> usize {
        let results = self.ingest.ingest_verified(records, Source::Import).await;
        // What the API does before every read of the index or the notifications.
        self.ingest.search_fresh().await;
        results
            .iter()
            .map(|r| r.as_ref().expect("record accepted"))
            .filter(|a| a.is_new())
            .count()
    }
}

/// The corpus: Steiermark's sensor technology offer, and around it requests that do and do not
/// qualify.
async fn corpus(f: &Federation) {
    use CooperationKind::*;
    let year = f.now + 365 * DAY;
    let sensors = ["iot sensors", "condition monitoring"];
    let mut offer = profile(
        TechnologyOffer,
        "AT22",
        "26.11",
        &sensors,
        "Wireless vibration sensors",
    );
    offer.organisation = Some(ItemRef {
        region: region(f, 0),
        kind: Kind::Organisation,
        key: "sensorik-gmbh".into(),
    });
    let mut same_org = profile(
        TechnologyRequest,
        "AT22",
        "26.11",
        &sensors,
        "Vibration sensors wanted",
    );
    same_org.organisation = offer.organisation.clone();
    let mut not_here = profile(
        TechnologyRequest,
        "SI03",
        "26.12",
        &sensors,
        "Vibration sensors wanted",
    );
    not_here.partner_sought.countries = vec!["IT".into()];
    let records = vec![
        f.record(0, "vibration-sensors", 1, offer, year),
        // The match: complementary, related sector (26.12 shares group 26.1), same keywords,
        // another country.
        f.record(
            1,
            "sensors-wanted",
            1,
            profile(
                TechnologyRequest,
                "SI03",
                "26.12",
                &sensors,
                "Vibration sensors wanted",
            ),
            year,
        ),
        // Excluded: same content but a business request (not complementary to a technology offer).
        f.record(
            1,
            "sensors-to-buy",
            1,
            profile(
                BusinessRequest,
                "SI03",
                "26.12",
                &sensors,
                "Vibration sensors wanted",
            ),
            year,
        ),
        // Excluded: expired.
        f.record(
            2,
            "old-request",
            1,
            profile(
                TechnologyRequest,
                "DE21",
                "26.11",
                &sensors,
                "Vibration sensors wanted",
            ),
            f.now - 1000,
        ),
        // Excluded: the same organisation as the offer.
        f.record(0, "own-request", 1, same_org, year),
        // Excluded: seeks partners in Italy only.
        f.record(1, "italy-only", 1, not_here, year),
        // Eligible, weaker: other sector and no shared keywords, from Oberbayern.
        f.record(
            2,
            "software-wanted",
            1,
            profile(
                TechnologyRequest,
                "DE21",
                "62.10",
                &["erp"],
                "Accounting software",
            ),
            year,
        ),
        // An unrelated pair between Slovenia and Oberbayern: a business offer and request.
        f.record(
            1,
            "wood-offer",
            1,
            profile(
                BusinessOffer,
                "SI03",
                "16.11",
                &["timber"],
                "Sawn timber from Pohorje",
            ),
            year,
        ),
        f.record(
            2,
            "wood-wanted",
            1,
            profile(
                BusinessRequest,
                "DE21",
                "16.11",
                &["timber"],
                "Sawn timber wanted",
            ),
            year,
        ),
    ];
    assert_eq!(f.import(records).await, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_finds_its_complement_with_a_breakdown_and_the_hard_filters_hold() {
    let f = federation();
    corpus(&f).await;
    let report = find_matches(&f.ingest, region(&f, 0), "vibration-sensors", 20, 0, f.now).unwrap();
    let keys: Vec<&str> = report.matches.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["sensors-wanted", "software-wanted"], "{report:#?}");
    let best = &report.matches[0];
    assert_eq!(best.region, region(&f, 1));
    let part = |name: &str| best.breakdown.iter().find(|p| p.name == name).unwrap();
    // 26.11 and 26.12 share group 26.1: one step, 75 % of 25.
    assert_eq!(part("sector").points, 19);
    assert!(
        part("sector").why.contains("26.1"),
        "{}",
        part("sector").why
    );
    assert_eq!(part("keywords").points, 25);
    assert!(part("keywords").why.contains("iot sensors"));
    assert_eq!(part("cohesion").points, 10);
    assert!(part("cohesion").why.contains("AT and SI"));
    assert_eq!(part("partnership").points, 10);
    assert_eq!(
        best.score,
        best.breakdown.iter().map(|p| p.points).sum::<u8>()
    );
    assert!(
        best.why.starts_with(&format!("{}/100: ", best.score)),
        "{}",
        best.why
    );
    assert!(best.why.contains("cross-border"), "{}", best.why);
    assert!(report.matches[1].score < best.score);

    // min_score and limit.
    let strict = find_matches(
        &f.ingest,
        region(&f, 0),
        "vibration-sensors",
        20,
        best.score,
        f.now,
    )
    .unwrap();
    assert_eq!(strict.matches.len(), 1);
    let one = find_matches(&f.ingest, region(&f, 0), "vibration-sensors", 1, 0, f.now).unwrap();
    assert_eq!(one.matches.len(), 1);

    // From the request's side the offer is found, with the same score (matching is symmetric).
    let back = find_matches(&f.ingest, region(&f, 1), "sensors-wanted", 20, 0, f.now).unwrap();
    assert_eq!(back.matches[0].key, "vibration-sensors");
    assert_eq!(back.matches[0].score, best.score);

    // Unknown and expired subjects.
    assert!(matches!(
        find_matches(&f.ingest, region(&f, 0), "nothing-here", 20, 0, f.now),
        Err(MatchError::NotFound { .. })
    ));
    assert!(matches!(
        find_matches(&f.ingest, region(&f, 2), "old-request", 20, 0, f.now),
        Err(MatchError::NotLive { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_potential_matrix_and_the_overview_count_the_known_corpus() {
    let f = federation();
    corpus(&f).await;
    let p = potential(&f.ingest, 0, f.now).unwrap();
    let names: Vec<&str> = p.regions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["Oberbayern", "Steiermark", "Vzhodna Slovenija"]);
    // Eligible pairs: offer–sensors-wanted (AT–SI), offer–software-wanted (AT–DE),
    // wood-offer–wood-wanted (SI–DE) and, within Slovenia, wood-offer–sensors-to-buy (a
    // business offer and a business request). Everything else fails a hard filter.
    assert_eq!(p.pairs, 4);
    assert_eq!(p.matrix, vec![vec![0, 1, 1], vec![1, 0, 1], vec![1, 1, 1]]);
    let live: Vec<u64> = p.regions.iter().map(|r| r.live).collect();
    assert_eq!(live, [2, 2, 4]);

    // A threshold keeps the strong pairs only.
    let strong = potential(&f.ingest, 60, f.now).unwrap();
    assert_eq!(strong.pairs, 2, "{strong:#?}");
    assert_eq!(strong.matrix[1][2], 1);
    assert_eq!(strong.matrix[0][2], 1);
    assert_eq!(strong.matrix[0][1], 0);

    let o = overview(&f.ingest, f.now).unwrap();
    assert!(o.outcomes.is_none());
    assert_eq!(o.totals.by_kind.get("cooperation"), Some(&8));
    assert_eq!(o.totals.by_status.get("expired"), Some(&1));
    assert_eq!(o.totals.by_status.get("live"), Some(&8));
    assert_eq!(o.totals.by_nace_section.get("C"), Some(&7));
    assert_eq!(o.totals.by_nace_section.get("K"), Some(&1));
    let at = o.regions.iter().find(|r| r.name == "Steiermark").unwrap();
    assert_eq!(
        at.counts.by_cooperation_kind.get("technology_offer"),
        Some(&1)
    );
    assert_eq!(
        at.counts.by_cooperation_kind.get("technology_request"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_search_notifies_once_for_a_new_item_arriving_by_import() {
    let f = federation();
    let store = f.ingest.store();
    let params = SearchParams {
        q: Some("sensors".into()),
        kind: Some("technology_request".into()),
        ..SearchParams::default()
    };
    let search = saved::add(
        store,
        SavedSearchInput {
            name: "sensor requests".into(),
            query: params,
        },
        f.now,
    )
    .unwrap();
    assert!(saved::notifications(store, false, 100).unwrap().is_empty());

    corpus(&f).await;
    let notes = saved::notifications(store, false, 100).unwrap();
    let mut keys: Vec<&str> = notes.iter().map(|n| n.key.as_str()).collect();
    keys.sort();
    // Live technology requests about sensors; not the expired one, not the business request.
    assert_eq!(keys, ["italy-only", "own-request", "sensors-wanted"]);
    assert!(notes.iter().all(|n| n.saved_search == search.id && !n.read));
    let wanted = notes.iter().find(|n| n.key == "sensors-wanted").unwrap();
    assert_eq!(wanted.title, "Vibration sensors wanted");
    assert_eq!(wanted.region, region(&f, 1));

    // The same records again, and a new revision of a notified item: no new notification.
    let year = f.now + 365 * DAY;
    let again = f.record(
        1,
        "sensors-wanted",
        1,
        profile(
            CooperationKind::TechnologyRequest,
            "SI03",
            "26.12",
            &["iot sensors", "condition monitoring"],
            "Vibration sensors wanted",
        ),
        year,
    );
    assert_eq!(f.import(vec![again]).await, 0);
    let revised = f.record(
        1,
        "sensors-wanted",
        2,
        profile(
            CooperationKind::TechnologyRequest,
            "SI03",
            "26.12",
            &["iot sensors"],
            "Vibration sensors still wanted",
        ),
        year,
    );
    assert_eq!(f.import(vec![revised]).await, 1);
    assert_eq!(saved::notifications(store, false, 100).unwrap().len(), 3);

    // A new matching item notifies; marking read works by id and for all.
    let fresh = f.record(
        2,
        "more-sensors",
        1,
        profile(
            CooperationKind::TechnologyRequest,
            "DE21",
            "26.51",
            &["pressure sensors"],
            "Pressure sensors wanted",
        ),
        year,
    );
    assert_eq!(f.import(vec![fresh]).await, 1);
    let notes = saved::notifications(store, true, 100).unwrap();
    assert_eq!(notes.len(), 4);
    let more = notes.iter().find(|n| n.key == "more-sensors").unwrap();
    assert_eq!(
        saved::mark_read(store, Some(std::slice::from_ref(&more.id))).unwrap(),
        1
    );
    assert_eq!(saved::notifications(store, true, 100).unwrap().len(), 3);
    assert!(saved::mark_read(store, Some(&["0000000000000000".to_string()])).is_err());
    assert_eq!(saved::mark_read(store, None).unwrap(), 3);
    assert!(saved::notifications(store, true, 100).unwrap().is_empty());

    // A deleted search raises nothing more.
    saved::remove(store, &search.id).unwrap();
    let later = f.record(
        0,
        "even-more-sensors",
        1,
        profile(
            CooperationKind::TechnologyRequest,
            "AT22",
            "26.51",
            &["sensors"],
            "Sensors wanted",
        ),
        year,
    );
    assert_eq!(f.import(vec![later]).await, 1);
    assert_eq!(saved::notifications(store, false, 100).unwrap().len(), 4);
}
