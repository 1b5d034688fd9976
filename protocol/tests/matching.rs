//! Matching over synthetic records: properties of the hard filters and the score, and the
//! realism of the synthetic generator that benchmarks and the demo use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kim_protocol::PublicKey;
use kim_protocol::codes;
use kim_protocol::envelope::{Body, Content, FORMAT_VERSION, Kind};
use kim_protocol::matching::{
    Candidate, Exclusion, best_matches, complementary, eligible, evaluate, score,
};
use kim_protocol::membership::federation_id;
use kim_protocol::samples;
use kim_protocol::types::{CooperationKind, ItemRef};
use kim_protocol::validate::{Context, validate};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// 2026-11-27 12:00 UTC.
const NOW_MS: u64 = 1_795_780_800_000;
const DAY_MS: u64 = 86_400_000;

const KINDS: [CooperationKind; 7] = [
    CooperationKind::BusinessOffer,
    CooperationKind::BusinessRequest,
    CooperationKind::TechnologyOffer,
    CooperationKind::TechnologyRequest,
    CooperationKind::ResearchRequest,
    CooperationKind::KnowledgeOffer,
    CooperationKind::KnowledgeRequest,
];

fn author(i: u64) -> PublicKey {
    PublicKey([(i % 5) as u8 + 1; 32])
}

fn contents(seed: u64, n: u64) -> Vec<Content> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let federation = federation_id(b"matching");
    (0..n)
        .map(|i| samples::synthetic_cooperation_content(&mut rng, federation, author(i), i, NOW_MS))
        .collect()
}

fn candidate(content: &Content) -> Candidate {
    let Body::Cooperation(body) = &content.body else {
        panic!("not a co-operation")
    };
    Candidate::new(
        content.author,
        content.key.clone(),
        body.clone(),
        content.created_at_ms,
        content.expires_at_ms,
    )
}

fn candidates(seed: u64, n: u64) -> Vec<Candidate> {
    contents(seed, n).iter().map(candidate).collect()
}

fn points(a: &Candidate, b: &Candidate, part: &str) -> u8 {
    score(a, b, NOW_MS).part(part).map_or(0, |p| p.points)
}

/// A copy with the body changed; identity and times kept.
fn with_body(c: &Candidate, edit: impl FnOnce(&mut kim_protocol::types::Cooperation)) -> Candidate {
    let mut body = c.body().clone();
    edit(&mut body);
    Candidate::new(
        *c.author(),
        c.key(),
        body,
        c.created_at_ms(),
        c.expires_at_ms(),
    )
}

#[test]
fn complementarity_is_symmetric_and_every_kind_has_a_partner() {
    for a in KINDS {
        assert!(KINDS.iter().any(|b| complementary(a, *b)), "{a:?}");
        for b in KINDS {
            assert_eq!(complementary(a, b), complementary(b, a), "{a:?} {b:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Scores stay within 100, equal the sum of their parts, explain every part and do not
    /// depend on argument order; the hard filters do not either.
    #[test]
    fn scores_are_bounded_symmetric_and_explained(seed in any::<u64>()) {
        let cs = candidates(seed, 16);
        for a in &cs {
            for b in &cs {
                let s = score(a, b, NOW_MS);
                prop_assert!(s.total <= 100);
                prop_assert_eq!(u32::from(s.total), s.parts.iter().map(|p| u32::from(p.points)).sum::<u32>());
                for p in &s.parts {
                    prop_assert!(p.points <= p.max, "{} {} > {}", p.name, p.points, p.max);
                    prop_assert!(!p.why.is_empty(), "{} has no explanation", p.name);
                }
                prop_assert_eq!(&s, &score(b, a, NOW_MS));
                prop_assert_eq!(eligible(a, b, NOW_MS).is_ok(), eligible(b, a, NOW_MS).is_ok());
                prop_assert_eq!(points(a, b, "keywords"), points(b, a, "keywords"));
                if let Ok(e) = evaluate(a, b, NOW_MS) {
                    prop_assert_eq!(e, s);
                }
            }
        }
    }

    /// Expired, withdrawn and same-organisation pairs never pass the hard filters.
    #[test]
    fn expired_withdrawn_and_same_organisation_are_excluded(seed in any::<u64>(), later_days in 0u64..800) {
        let cs = candidates(seed, 12);
        let now = NOW_MS + later_days * DAY_MS;
        for a in &cs {
            for b in &cs {
                prop_assert!(eligible(a, &b.clone().withdrawn(), now).is_err());
                prop_assert!(eligible(&a.clone().withdrawn(), b, now).is_err());
                if b.expires_at_ms().is_some_and(|e| now >= e) || a.expires_at_ms().is_some_and(|e| now >= e) {
                    prop_assert!(eligible(a, b, now).is_err());
                }
                let org = ItemRef { region: *a.author(), kind: Kind::Organisation, key: "org-same".into() };
                let x = with_body(a, |c| { c.organisation = Some(org.clone()); c.anonymous = false; });
                let y = with_body(b, |c| { c.organisation = Some(org.clone()); c.anonymous = false; });
                match eligible(&x, &y, now) {
                    Ok(()) => prop_assert!(false, "same organisation passed"),
                    Err(Exclusion::SameItem | Exclusion::Withdrawn { .. } | Exclusion::Expired { .. }
                        | Exclusion::DeadlinePassed { .. } | Exclusion::NotComplementary { .. }
                        | Exclusion::SameOrganisation) => {}
                    Err(other) => prop_assert!(false, "checked before the organisation: {other:?}"),
                }
            }
        }
    }

    /// Adding a keyword both sides share never lowers the keyword part, nor does adding one of
    /// the other side's keywords to one side.
    #[test]
    fn a_shared_keyword_never_lowers_the_keyword_part(
        seed in any::<u64>(),
        keyword in "[A-Za-z]{3,12}( [a-z]{3,10})?",
    ) {
        let cs = candidates(seed, 6);
        for a in &cs {
            for b in &cs {
                let before = points(a, b, "keywords");
                let x = with_body(a, |c| c.market_keywords.push(keyword.clone()));
                let y = with_body(b, |c| c.market_keywords.push(keyword.to_uppercase()));
                prop_assert!(points(&x, &y, "keywords") >= before);
                if let Some(theirs) = b.body().technology_keywords.first() {
                    let x = with_body(a, |c| c.technology_keywords.push(theirs.clone()));
                    prop_assert!(points(&x, b, "keywords") >= before);
                }
            }
        }
    }

    /// A closer NACE code (by the hierarchy) never earns fewer sector points.
    #[test]
    fn closer_nace_never_scores_lower(i in 0usize..1047, j in 0usize..1047, k in 0usize..1047, seed in any::<u64>()) {
        let all = codes::nace_all();
        let (x, y, z) = (all[i].code, all[j].code, all[k].code);
        let cs = candidates(seed, 2);
        let a = with_body(&cs[0], |c| c.nace = vec![x.into()]);
        let b = with_body(&cs[1], |c| c.nace = vec![y.into()]);
        let c = with_body(&cs[1], |c| c.nace = vec![z.into()]);
        let (dy, dz) = (codes::nace_distance(x, y).unwrap(), codes::nace_distance(x, z).unwrap());
        if dy <= dz {
            prop_assert!(points(&a, &b, "sector") >= points(&a, &c, "sector"), "{x} {y} {z}");
        }
        if dy == 0 {
            prop_assert_eq!(points(&a, &b, "sector"), 25);
        }
    }

    /// `best_matches` returns eligible candidates at or above the threshold, best first, ties
    /// by position, at most `limit`, and nothing it leaves out beats what it returns.
    #[test]
    fn best_matches_are_ranked_complete_and_deterministic(
        seed in any::<u64>(),
        threshold in 0u8..70,
        limit in 0usize..25,
    ) {
        let cs = candidates(seed, 80);
        let (offer, others) = (&cs[0], &cs[1..]);
        let hits = best_matches(offer, others, NOW_MS, threshold, limit);
        prop_assert!(hits.len() <= limit);
        for w in hits.windows(2) {
            prop_assert!((w[0].1.total, std::cmp::Reverse(w[0].0)) > (w[1].1.total, std::cmp::Reverse(w[1].0)));
        }
        for (i, s) in &hits {
            prop_assert!(eligible(offer, &others[*i], NOW_MS).is_ok());
            prop_assert!(s.total >= threshold);
            prop_assert_eq!(s, &score(offer, &others[*i], NOW_MS));
        }
        let qualifying: Vec<(u8, usize)> = others.iter().enumerate()
            .filter(|(_, c)| eligible(offer, c, NOW_MS).is_ok())
            .map(|(i, c)| (score(offer, c, NOW_MS).total, i))
            .filter(|(t, _)| *t >= threshold)
            .collect();
        prop_assert_eq!(hits.len(), qualifying.len().min(limit));
        if let Some((last_i, last)) = hits.last() {
            for (t, i) in &qualifying {
                if !hits.iter().any(|h| h.0 == *i) {
                    prop_assert!((*t, std::cmp::Reverse(*i)) < (last.total, std::cmp::Reverse(*last_i)));
                }
            }
        }
        prop_assert_eq!(hits, best_matches(offer, others.iter(), NOW_MS, threshold, limit));
    }

    /// Synthetic offers, requests and organisations are valid records with real codes.
    #[test]
    fn synthetic_records_validate(seed in any::<u64>()) {
        let federation = federation_id(b"matching");
        let ctx = Context { federation, now_ms: NOW_MS };
        for content in contents(seed, 40) {
            if let Err(e) = validate(&content, &ctx) {
                return Err(TestCaseError::fail(format!("{}: {e} in {:?}", e.code(), content.body)));
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in 0..40 {
            let org = samples::synthetic_organisation(&mut rng, i);
            prop_assert!(org.nace.iter().all(|c| codes::nace(c).is_some()));
            prop_assert!(org.nuts.as_deref().is_none_or(|n| codes::nuts(n).is_some()));
            prop_assert!(codes::is_country(&org.country));
            let content = Content {
                format: FORMAT_VERSION,
                federation,
                author: author(i),
                kind: Kind::Organisation,
                key: format!("org-{i}"),
                revision: 1,
                created_at_ms: NOW_MS - DAY_MS,
                expires_at_ms: None,
                body: Body::Organisation(org),
            };
            if let Err(e) = validate(&content, &ctx) {
                return Err(TestCaseError::fail(format!("{}: {e} in {:?}", e.code(), content.body)));
            }
        }
    }
}

#[test]
fn synthetic_tables_use_real_codes() {
    for r in samples::SYNTHETIC_REGIONS {
        assert_eq!(codes::nuts(r.nuts).map(|n| n.level), Some(2), "{}", r.nuts);
        assert!(codes::is_language(r.language), "{}", r.language);
        assert!(r.weight > 0);
    }
    for l in samples::SYNTHETIC_LANGUAGES {
        assert!(codes::is_language(l), "{l}");
    }
    for s in samples::SYNTHETIC_SECTORS {
        assert_eq!(codes::nace(s.nace).map(|c| c.level), Some(4), "{}", s.nace);
        assert!(s.weight > 0 && s.label.iter().all(|l| !l.is_empty()));
        assert!(
            s.technology.len() >= 2 && !s.markets.is_empty(),
            "{}",
            s.nace
        );
        for k in s.technology.iter().chain(s.markets) {
            assert!(!k.is_empty() && k.chars().count() <= 80, "{k}");
        }
    }
}

#[test]
fn synthetic_distributions_are_realistic() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let n = 4000u64;
    let records: Vec<_> = (0..n)
        .map(|i| samples::synthetic_cooperation(&mut rng, i))
        .collect();
    let offers = records
        .iter()
        .filter(|c| {
            matches!(
                c.kind,
                CooperationKind::BusinessOffer
                    | CooperationKind::TechnologyOffer
                    | CooperationKind::KnowledgeOffer
            )
        })
        .count();
    assert_eq!(offers as u64, n / 2, "offers and requests balanced");
    for kind in KINDS {
        assert!(
            records.iter().filter(|c| c.kind == kind).count() > 100,
            "{kind:?}"
        );
    }
    for lang in samples::SYNTHETIC_LANGUAGES {
        let share = records.iter().filter(|c| c.languages[0] == lang).count();
        assert!(share as u64 > n / 20, "{lang}: {share}");
    }
    for s in samples::SYNTHETIC_SECTORS {
        assert!(
            records.iter().any(|c| c.nace.iter().any(|x| x == s.nace)),
            "{}",
            s.nace
        );
    }
    let in_region = |prefix: &str| {
        records
            .iter()
            .filter(|c| c.nuts.starts_with(prefix))
            .count()
    };
    assert!(
        in_region("AT22") > 2 * in_region("HR03"),
        "weighted regions"
    );
    let nuts3 = records.iter().filter(|c| c.nuts.len() == 5).count();
    assert!(
        (n * 35 / 100..n * 65 / 100).contains(&(nuts3 as u64)),
        "{nuts3}"
    );
    let mut titles: Vec<&str> = records.iter().map(|c| c.title.as_str()).collect();
    titles.sort_unstable();
    titles.dedup();
    assert!(titles.len() > 1000, "{} distinct titles", titles.len());
    let sentences = records[0].description.matches(". ").count();
    assert!(sentences >= 2, "{}", records[0].description);
    // Every record names real codes only.
    for c in &records {
        assert!(codes::nuts(&c.nuts).is_some(), "{}", c.nuts);
        assert!(
            c.nace.iter().all(|x| codes::nace(x).is_some()),
            "{:?}",
            c.nace
        );
        assert!(
            c.partner_sought
                .countries
                .iter()
                .all(|x| codes::is_country(x))
        );
        assert!(
            c.partner_sought
                .regions
                .iter()
                .all(|x| codes::nuts(x).is_some())
        );
        assert!(c.languages.iter().all(|x| codes::is_language(x)));
    }
}

#[test]
fn synthetic_offers_find_explained_partners() {
    let cs = candidates(11, 3000);
    let mut found = 0;
    for offer in cs.iter().take(40) {
        let hits = best_matches(offer, &cs, NOW_MS, 40, 5);
        if let Some((i, s)) = hits.first() {
            found += 1;
            assert!(complementary(offer.body().kind, cs[*i].body().kind));
            assert!(s.parts.iter().all(|p| !p.why.is_empty()));
        }
    }
    assert!(
        found >= 20,
        "only {found} of 40 offers found a partner scoring 40+"
    );
}
