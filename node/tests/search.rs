//! Search index tests over realistic sample records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use kim_protocol::codes;
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind, Record};
use kim_protocol::types::{CooperationKind, Date, PartnershipType, Tombstone};
use kim_protocol::{RegionId, samples};
mod support {
    pub mod corpus;
}

use kim_node::search::{Hit, Query, SearchIndex, Sort, Status};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use support::corpus::{Corpus, DAY_MS, NOW_MS};

type Items = Vec<(RegionId, Record)>;

fn corpus(n: usize) -> (Corpus, Items) {
    let mut c = Corpus::new(1);
    let items: Items = c.by_ref().take(n).collect();
    (c, items)
}

fn index_all(index: &SearchIndex, items: &Items) {
    for (region, record) in items {
        index.upsert(record, *region).unwrap();
    }
    index.commit().unwrap();
}

fn q(text: &str) -> Query {
    Query {
        text: Some(text.into()),
        status: Status::All,
        now_ms: NOW_MS,
        limit: 1000,
        ..Query::default()
    }
}

fn keys(hits: &[Hit]) -> BTreeSet<(RegionId, Kind, String)> {
    hits.iter()
        .map(|h| (h.region, h.kind, h.key.clone()))
        .collect()
}

/// A cooperation record with the given text and languages, signed by region `r` of the corpus.
fn coop(
    c: &Corpus,
    r: usize,
    key: &str,
    revision: u64,
    title: &str,
    languages: &[&str],
) -> (RegionId, Record) {
    let mut rng = ChaCha8Rng::seed_from_u64(revision ^ key.len() as u64);
    let mut body = samples::cooperation(&mut rng, Date::new(2026, 11, 1).unwrap());
    body.title = title.into();
    body.summary = String::new();
    body.description = String::new();
    body.innovation = String::new();
    body.partner_sought.role = String::new();
    body.technology_keywords.clear();
    body.market_keywords.clear();
    body.languages = languages.iter().map(|s| s.to_string()).collect();
    sign(c, r, key, revision, Body::Cooperation(body))
}

fn sign(c: &Corpus, r: usize, key: &str, revision: u64, body: Body) -> (RegionId, Record) {
    let k = c.signing_key(r);
    let author = samples::public_key(k);
    let content = Content {
        format: FORMAT_VERSION,
        federation: c.federation(),
        author,
        kind: Kind::Cooperation,
        key: key.into(),
        revision,
        created_at_ms: NOW_MS - DAY_MS,
        expires_at_ms: Some(NOW_MS + 300 * DAY_MS),
        body,
    };
    (author, Record::sign(&content, k).unwrap())
}

#[test]
fn english_and_german_stemming() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let (c, mut items) = corpus(300);
    items.push(coop(
        &c,
        0,
        "en-sensors",
        1,
        "Wireless sensors for bridges",
        &["en"],
    ));
    items.push(coop(
        &c,
        1,
        "de-anlagen",
        1,
        "Energieeffiziente Trocknungsanlagen für Holz",
        &["de"],
    ));
    items.push(coop(
        &c,
        2,
        "sl-plain",
        1,
        "Brezžični sensors za mostove",
        &["sl"],
    ));
    items.push(coop(
        &c,
        3,
        "sl-en",
        1,
        "Spremljanje rek: monitoring of rivers",
        &["sl", "en"],
    ));
    index_all(&index, &items);
    let region = |r: usize| samples::public_key(c.signing_key(r));

    // English stemming: "sensor" finds "sensors" in an English record.
    let hits = keys(&index.search(&q("sensor bridge")).unwrap());
    assert!(hits.contains(&(region(0), Kind::Cooperation, "en-sensors".into())));
    // German stemming, both directions.
    for query in [
        "Trocknungsanlage",
        "trocknungsanlagen",
        "TROCKNUNGSANLAGE holz",
    ] {
        let hits = keys(&index.search(&q(query)).unwrap());
        assert!(
            hits.contains(&(region(1), Kind::Cooperation, "de-anlagen".into())),
            "{query}"
        );
    }
    // The samples' own German title (singular) is found by the plural too.
    let sample_german = items
        .iter()
        .filter(|(_, r)| match &r.content.body {
            Body::Cooperation(b) => b.title.contains("Trocknungsanlage ") && b.languages[0] == "de",
            _ => false,
        })
        .count();
    assert!(sample_german > 0);
    assert!(index.count(&q("Trocknungsanlagen")).unwrap() > sample_german);
    // Other languages get plain tokens: exact word matches, stems do not.
    let hits = keys(&index.search(&q("sensors mostove")).unwrap());
    assert!(hits.contains(&(region(2), Kind::Cooperation, "sl-plain".into())));
    let hits = keys(&index.search(&q("mostov")).unwrap());
    assert!(!hits.contains(&(region(2), Kind::Cooperation, "sl-plain".into())));
    // A record listing English besides its own language is stemmed as English, and its own
    // words are still found as written.
    for query in ["river monitored", "spremljanje"] {
        let hits = keys(&index.search(&q(query)).unwrap());
        assert!(
            hits.contains(&(region(3), Kind::Cooperation, "sl-en".into())),
            "{query}"
        );
    }
    // Ranking: the record naming both words ranks first.
    let hits = index.search(&q("wireless sensors bridges")).unwrap();
    assert_eq!(hits[0].key, "en-sensors");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    // all_words narrows.
    let any = index.count(&q("bridges dairy")).unwrap();
    let all = index
        .count(&Query {
            all_words: true,
            ..q("bridges dairy")
        })
        .unwrap();
    assert!(all < any, "{all} < {any}");
}

/// What the filters should select, computed from the records directly.
fn brute(items: &Items, pred: impl Fn(&Content) -> bool) -> BTreeSet<(RegionId, Kind, String)> {
    items
        .iter()
        .filter(|(_, r)| pred(&r.content))
        .map(|(g, r)| (*g, r.content.kind, r.content.key.clone()))
        .collect()
}

fn nuts_of(c: &Content) -> Vec<String> {
    match &c.body {
        Body::Cooperation(b) => vec![b.nuts.clone()],
        Body::Organisation(o) => o.nuts.iter().cloned().collect(),
        Body::Project(p) => p.participants.iter().map(|x| x.nuts.clone()).collect(),
        Body::Knowledge(k) => k.regions.clone(),
        _ => vec![],
    }
}

fn nace_of(c: &Content) -> Vec<String> {
    match &c.body {
        Body::Cooperation(b) => b.nace.clone(),
        Body::Organisation(o) => o.nace.clone(),
        _ => vec![],
    }
}

fn langs_of(c: &Content) -> Vec<String> {
    match &c.body {
        Body::Cooperation(b) => b.languages.clone(),
        Body::Organisation(o) => o.languages.clone(),
        Body::Knowledge(k) => k.languages.clone(),
        Body::Project(_) => vec!["en".into()],
        _ => vec![],
    }
}

#[test]
fn every_filter_selects_what_the_records_say() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let (_, items) = corpus(600);
    index_all(&index, &items);
    let all = Query {
        status: Status::All,
        now_ms: NOW_MS,
        limit: 1000,
        ..Query::default()
    };
    let check = |name: &str, query: Query, expected: BTreeSet<(RegionId, Kind, String)>| {
        let got = keys(&index.search(&query).unwrap());
        assert!(!expected.is_empty(), "{name}: test selects nothing");
        assert_eq!(got, expected, "{name}");
        assert_eq!(index.count(&query).unwrap(), expected.len(), "{name} count");
    };
    check("all", all.clone(), brute(&items, |_| true));
    check(
        "kind",
        Query {
            kinds: vec![Kind::Knowledge, Kind::Project],
            ..all.clone()
        },
        brute(&items, |c| {
            matches!(c.kind, Kind::Knowledge | Kind::Project)
        }),
    );
    check(
        "cooperation kind",
        Query {
            cooperation_kinds: vec![CooperationKind::TechnologyOffer],
            ..all.clone()
        },
        brute(
            &items,
            |c| matches!(&c.body, Body::Cooperation(b) if b.kind == CooperationKind::TechnologyOffer),
        ),
    );
    for prefix in ["AT", "AT2", "AT22", "EL5", "DE"] {
        check(
            prefix,
            Query {
                nuts: vec![prefix.into()],
                ..all.clone()
            },
            brute(&items, |c| nuts_of(c).iter().any(|n| n.starts_with(prefix))),
        );
    }
    for prefix in ["C", "26", "26.1", "26.11", "K", "62"] {
        check(
            prefix,
            Query {
                nace: vec![prefix.into()],
                ..all.clone()
            },
            brute(&items, |c| {
                nace_of(c).iter().any(|n| {
                    n.starts_with(prefix) || codes::nace(n).is_some_and(|e| e.section == prefix)
                })
            }),
        );
    }
    check(
        "country GR",
        Query {
            countries: vec!["GR".into()],
            ..all.clone()
        },
        brute(&items, |c| nuts_of(c).iter().any(|n| n.starts_with("EL"))),
    );
    check(
        "country EL = GR",
        Query {
            countries: vec!["EL".into()],
            ..all.clone()
        },
        brute(&items, |c| nuts_of(c).iter().any(|n| n.starts_with("EL"))),
    );
    check(
        "language",
        Query {
            languages: vec!["it".into(), "sl".into()],
            ..all.clone()
        },
        brute(&items, |c| {
            langs_of(c).iter().any(|l| l == "it" || l == "sl")
        }),
    );
    check(
        "partnership",
        Query {
            partnership_types: vec![PartnershipType::Licence],
            ..all.clone()
        },
        brute(
            &items,
            |c| matches!(&c.body, Body::Cooperation(b) if b.partnership_types.contains(&PartnershipType::Licence)),
        ),
    );
    let live = |c: &Content| c.expires_at_ms.is_none_or(|e| NOW_MS < e);
    check(
        "live",
        Query {
            status: Status::Live,
            ..all.clone()
        },
        brute(&items, live),
    );
    check(
        "expired",
        Query {
            status: Status::Expired,
            ..all.clone()
        },
        brute(&items, |c| !live(c)),
    );
    let from = Date::new(2026, 3, 1).unwrap();
    let to = Date::new(2026, 12, 31).unwrap();
    let deadline = |c: &Content| match &c.body {
        Body::Cooperation(b) => b.eoi_deadline,
        _ => None,
    };
    check(
        "deadline from",
        Query {
            deadline_from: Some(from),
            ..all.clone()
        },
        brute(&items, |c| deadline(c).is_some_and(|d| d >= from)),
    );
    check(
        "deadline to",
        Query {
            deadline_to: Some(to),
            ..all.clone()
        },
        brute(&items, |c| deadline(c).is_some_and(|d| d <= to)),
    );
    check(
        "deadline window",
        Query {
            deadline_from: Some(from),
            deadline_to: Some(to),
            ..all.clone()
        },
        brute(&items, |c| {
            deadline(c).is_some_and(|d| from <= d && d <= to)
        }),
    );
    let (region, _) = items[3];
    check(
        "region",
        Query {
            regions: vec![region],
            ..all.clone()
        },
        brute(&items, |c| c.author == region),
    );
    // Combined: text + filters; filters do not change scores.
    let text_only = index
        .search(&Query {
            text: Some("software".into()),
            ..all.clone()
        })
        .unwrap();
    let combined = index
        .search(&Query {
            text: Some("software".into()),
            nuts: vec!["AT".into()],
            status: Status::Live,
            ..all.clone()
        })
        .unwrap();
    assert!(!combined.is_empty() && combined.len() < text_only.len());
    for hit in &combined {
        let same = text_only
            .iter()
            .find(|h| h.key == hit.key && h.region == hit.region)
            .unwrap();
        assert_eq!(same.score, hit.score);
    }
    // Paging and newest-first sort.
    let newest = index
        .search(&Query {
            sort: Sort::Newest,
            limit: 10,
            ..all.clone()
        })
        .unwrap();
    let page2 = index
        .search(&Query {
            sort: Sort::Newest,
            limit: 10,
            offset: 10,
            ..all.clone()
        })
        .unwrap();
    let mut created: Vec<u64> = items.iter().map(|(_, r)| r.content.created_at_ms).collect();
    created.sort_unstable_by(|a, b| b.cmp(a));
    let created_of = |h: &Hit| {
        items
            .iter()
            .find(|(g, r)| *g == h.region && r.content.key == h.key)
            .unwrap()
            .1
            .content
            .created_at_ms
    };
    assert_eq!(
        newest.iter().map(created_of).collect::<Vec<_>>(),
        created[..10]
    );
    assert_eq!(
        page2.iter().map(created_of).collect::<Vec<_>>(),
        created[10..20]
    );
    // Hits carry the winner's record id.
    for hit in &newest {
        let (_, r) = items
            .iter()
            .find(|(g, r)| *g == hit.region && r.content.key == hit.key)
            .unwrap();
        assert!(hit.indexes(&r.id), "{} indexes another revision", hit.key);
    }
}

#[test]
fn upsert_replaces_and_remove_and_tombstone_delete() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let (c, items) = corpus(100);
    index_all(&index, &items);
    let base = index.num_docs();
    let (g, r1) = coop(&c, 4, "moving", 1, "Alphaword hydrogen valves", &["en"]);
    index.upsert(&r1, g).unwrap();
    index.commit().unwrap();
    assert_eq!(index.num_docs(), base + 1);
    assert!(index.search(&q("alphaword")).unwrap()[0].indexes(&r1.id));
    // A new revision replaces the document; two revisions in one batch keep only the last.
    let (_, r2) = coop(&c, 4, "moving", 2, "Betaword hydrogen valves", &["en"]);
    let (_, r3) = coop(&c, 4, "moving", 3, "Gammaword hydrogen valves", &["en"]);
    index.upsert(&r2, g).unwrap();
    index.upsert(&r3, g).unwrap();
    index.commit().unwrap();
    assert_eq!(index.num_docs(), base + 1);
    assert_eq!(index.count(&q("alphaword")).unwrap(), 0);
    assert_eq!(index.count(&q("betaword")).unwrap(), 0);
    let hit = &index.search(&q("gammaword")).unwrap()[0];
    assert!(hit.indexes(&r3.id) && !hit.indexes(&r1.id) && !hit.indexes(&r2.id));
    // Restricting to items (saved searches against a batch's changes).
    let only = |items: Vec<(RegionId, Kind, String)>| Query {
        items,
        ..q("hydrogen")
    };
    assert_eq!(
        index
            .count(&only(vec![(g, Kind::Cooperation, "moving".into())]))
            .unwrap(),
        1
    );
    assert_eq!(
        index
            .count(&only(vec![(g, Kind::Cooperation, "other".into())]))
            .unwrap(),
        0
    );
    // Rollback discards uncommitted changes.
    index.remove(g, Kind::Cooperation, "moving").unwrap();
    index.rollback().unwrap();
    index.commit().unwrap();
    assert_eq!(index.count(&q("gammaword")).unwrap(), 1);
    // Withdrawal by tombstone.
    let (_, t) = sign(
        &c,
        4,
        "moving",
        4,
        Body::Tombstone(Tombstone {
            reason: "done".into(),
        }),
    );
    assert!(!index.upsert(&t, g).unwrap());
    index.commit().unwrap();
    assert_eq!(index.num_docs(), base);
    assert_eq!(index.count(&q("hydrogen")).unwrap(), 0);
    // remove().
    let (g0, r0) = &items[0];
    index.remove(*g0, r0.content.kind, &r0.content.key).unwrap();
    index.commit().unwrap();
    assert_eq!(index.num_docs(), base - 1);
    // Non-searchable kinds are ignored.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let k = c.signing_key(0);
    let content = samples::content(
        &mut rng,
        c.federation(),
        samples::public_key(k),
        Kind::RegionProfile,
        "profile",
        NOW_MS,
    );
    assert!(
        !index
            .upsert(&Record::sign(&content, k).unwrap(), samples::public_key(k))
            .unwrap()
    );
}

/// A first winner skips the delete an upsert queues, unless a rebuild ran or began since the
/// mark was taken: a rebuild reads the store and may have indexed the same item already.
#[test]
fn a_first_winner_is_indexed_once_also_across_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let (c, items) = corpus(20);
    index_all(&index, &items);
    let base = index.num_docs();
    // No rebuild since the mark: indexed once, and a later revision replaces it.
    let mark = index.rebuild_mark();
    let (g, r1) = coop(&c, 2, "fresh-item", 1, "Deltaword turbine blades", &["en"]);
    assert!(index.insert_first(&r1, g, mark).unwrap());
    index.commit().unwrap();
    assert_eq!(index.num_docs(), base + 1);
    assert_eq!(index.count(&q("deltaword")).unwrap(), 1);
    let (_, r2) = coop(
        &c,
        2,
        "fresh-item",
        2,
        "Epsilonword turbine blades",
        &["en"],
    );
    index.upsert(&r2, g).unwrap();
    index.commit().unwrap();
    assert_eq!(index.num_docs(), base + 1);
    assert_eq!(index.count(&q("deltaword")).unwrap(), 0);
    // The mark is taken, the item reaches the store, a rebuild reads the store (and so the
    // item) before the indexer gets the item: it is still indexed once.
    let mark = index.rebuild_mark();
    let (_, r3) = coop(&c, 3, "raced-item", 1, "Zetaword heat pumps", &["en"]);
    let store = items
        .iter()
        .cloned()
        .chain([(g, r2.clone()), (g, r3.clone())]);
    index.rebuild_from(store.map(Ok), "rebuilt").unwrap();
    assert_ne!(index.rebuild_mark(), mark);
    assert!(
        index.rebuild_mark().is_multiple_of(2),
        "no rebuild runs now"
    );
    assert!(index.insert_first(&r3, g, mark).unwrap());
    index.commit().unwrap();
    assert_eq!(index.count(&q("zetaword")).unwrap(), 1);
    assert_eq!(index.num_docs(), base + 2);
    // A rebuild cut short moves the mark too.
    let mark = index.rebuild_mark();
    let failing = items
        .iter()
        .cloned()
        .map(Ok)
        .chain([Err("stored record 9 does not decode".to_string())]);
    assert!(index.rebuild_from(failing, "failed").is_err());
    assert_ne!(index.rebuild_mark(), mark);
    assert!(index.insert_first(&r3, g, mark).unwrap());
    index.commit().unwrap();
    assert_eq!(index.count(&q("zetaword")).unwrap(), 1);
    assert_eq!(index.num_docs(), base + 2);
}

fn snapshot(index: &SearchIndex) -> Vec<BTreeSet<(RegionId, Kind, String)>> {
    let queries = [
        Query {
            status: Status::All,
            limit: 1000,
            now_ms: NOW_MS,
            ..Query::default()
        },
        Query {
            now_ms: NOW_MS,
            limit: 1000,
            ..Query::default()
        },
        q("sensor"),
        q("Trocknungsanlagen"),
        q("partner dairy"),
        Query {
            nace: vec!["C".into()],
            countries: vec!["AT".into(), "DE".into(), "IT".into()],
            ..q("platform partners")
        },
    ];
    queries
        .iter()
        .map(|query| keys(&index.search(query).unwrap()))
        .collect()
}

#[test]
fn rebuild_equals_incremental_and_reopen_keeps_everything() {
    let (c, items) = corpus(500);
    let inc_dir = tempfile::tempdir().unwrap();
    let inc = SearchIndex::open(inc_dir.path()).unwrap();
    assert_eq!(inc.generation(), None);
    // Incremental: batches of 37 with commits, then revisions and withdrawals.
    let mut winners: Items = Vec::new();
    for batch in items.chunks(37) {
        for (g, r) in batch {
            inc.upsert(r, *g).unwrap();
            winners.push((*g, r.clone()));
        }
        inc.commit().unwrap();
    }
    for i in (0..winners.len()).step_by(9) {
        let (g, old) = winners[i].clone();
        if old.content.kind != Kind::Cooperation {
            continue;
        }
        let r = i % 16;
        if samples::public_key(c.signing_key(r)) != g {
            continue;
        }
        if i % 2 == 0 {
            let (_, new) = coop(
                &c,
                r,
                &old.content.key,
                2,
                "Revised sensor platform",
                &["en"],
            );
            inc.upsert(&new, g).unwrap();
            winners[i] = (g, new);
        } else {
            inc.remove(g, old.content.kind, &old.content.key).unwrap();
            let (_, t) = sign(
                &c,
                r,
                &old.content.key,
                2,
                Body::Tombstone(Tombstone::default()),
            );
            winners[i] = (g, t);
        }
    }
    inc.set_generation("digest-1");
    inc.commit().unwrap();
    assert_eq!(inc.generation().as_deref(), Some("digest-1"));
    // A commit without a new generation keeps the old one.
    inc.commit().unwrap();
    assert_eq!(inc.generation().as_deref(), Some("digest-1"));

    let re_dir = tempfile::tempdir().unwrap();
    let re = SearchIndex::open(re_dir.path()).unwrap();
    // Garbage first, to see rebuild throw it away.
    index_all(
        &re,
        &corpus(50)
            .1
            .into_iter()
            .map(|(g, mut r)| {
                r.content.key.push_str("-junk");
                (g, r)
            })
            .collect(),
    );
    let n = re.rebuild(winners.iter().cloned(), "digest-1").unwrap();
    assert_eq!(n, re.num_docs());
    assert_eq!(re.num_docs(), inc.num_docs());
    assert_eq!(re.generation(), inc.generation());
    let inc_snapshot = snapshot(&inc);
    assert_eq!(snapshot(&re), inc_snapshot);
    assert!(
        inc_snapshot.iter().all(|s| !s.is_empty()),
        "{:?}",
        inc_snapshot.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );

    // Reopen.
    let docs = inc.num_docs();
    inc.wait_merging().unwrap();
    let reopened = SearchIndex::open(inc_dir.path()).unwrap();
    assert_eq!(reopened.num_docs(), docs);
    assert_eq!(reopened.generation().as_deref(), Some("digest-1"));
    assert_eq!(snapshot(&reopened), inc_snapshot);
}

/// A rebuild whose source fails partway (a damaged record in the store) commits nothing:
/// searches keep the previous index, and a later commit does not publish the half-built one.
#[test]
fn a_rebuild_cut_short_by_its_source_keeps_the_previous_index() {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    let (_, items) = corpus(40);
    index_all(&index, &items[..30].to_vec());
    index.set_generation("before");
    index.commit().unwrap();
    let before = snapshot(&index);
    let source = items[30..]
        .iter()
        .cloned()
        .map(Ok)
        .chain([Err("stored record 7 does not decode".to_string())]);
    let failed = index.rebuild_from(source, "after");
    assert!(
        matches!(&failed, Err(e) if e.to_string().contains("does not decode")),
        "{failed:?}"
    );
    assert_eq!(index.generation().as_deref(), Some("before"));
    assert_eq!(snapshot(&index), before);
    index.commit().unwrap();
    assert_eq!(index.num_docs(), 30);
    assert_eq!(snapshot(&index), before);
}

#[test]
fn unreadable_index_is_recreated_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("meta.json"), b"{ not json").unwrap();
    let index = SearchIndex::open(dir.path()).unwrap();
    assert_eq!(index.num_docs(), 0);
    assert_eq!(index.generation(), None);
}
