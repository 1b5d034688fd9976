//! Property tests across modules: decoding never panics, samples always validate, resolution
//! and the state digest do not depend on arrival order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kim_protocol::digest::StateDigest;
use kim_protocol::envelope::{Body, Content, Kind, Record};
use kim_protocol::membership::federation_id;
use kim_protocol::resolve::resolve;
use kim_protocol::types::Tombstone;
use kim_protocol::validate::{Context, check_record, validate};
use kim_protocol::{PublicKey, samples};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

const NOW_MS: u64 = 1_795_780_800_000;

const SHARED: [Kind; 7] = [
    Kind::RegionProfile,
    Kind::Organisation,
    Kind::Project,
    Kind::Cooperation,
    Kind::Knowledge,
    Kind::Interest,
    Kind::Outcome,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes never panic the decoder and are (almost surely) rejected.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let ctx = Context { federation: federation_id(b"x"), now_ms: NOW_MS };
        prop_assert!(check_record(bytes, &ctx).is_err());
    }

    /// Every sample record of every shared kind is valid, whatever the seed.
    #[test]
    fn samples_always_validate(seed in any::<u64>()) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let federation = federation_id(b"samples");
        let key = samples::signing_key(&mut rng);
        let author = samples::public_key(&key);
        let ctx = Context { federation, now_ms: NOW_MS };
        for kind in SHARED {
            let content = samples::content(&mut rng, federation, author, kind, "item-1", NOW_MS - 1);
            if let Err(e) = validate(&content, &ctx) {
                return Err(TestCaseError::fail(format!("{kind}: {} {e}", e.code())));
            }
            let record = Record::sign(&content, &key).unwrap();
            prop_assert!(check_record(record.bytes.clone(), &ctx).is_ok());
        }
    }

    /// Resolution and the state digest are the same for any permutation with duplicates.
    #[test]
    fn resolution_and_digest_ignore_arrival_order(seed in any::<u64>(), shuffles in 1usize..4) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let federation = federation_id(b"resolution");
        let keys: Vec<_> = (0..3).map(|_| samples::signing_key(&mut rng)).collect();
        let mut records = Vec::new();
        for _ in 0..30 {
            let key = &keys[(rng.next_u32() % 3) as usize];
            let author = samples::public_key(key);
            let item = format!("offer-{}", rng.next_u32() % 4);
            let mut content = samples::content(&mut rng, federation, author, Kind::Cooperation, &item, NOW_MS - 10);
            // Small revision space, so equivocations (same revision, other bytes) happen.
            content.revision = u64::from(rng.next_u32() % 3);
            if rng.next_u32() % 5 == 0 {
                content = Content { body: Body::Tombstone(Tombstone { reason: "done".into() }), expires_at_ms: None, ..content };
            }
            records.push(Record::sign(&content, key).unwrap());
        }
        let baseline = resolve(records.iter(), |k: &PublicKey| *k);
        let mut ids: Vec<_> = records.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        let digest = StateDigest::of(ids.iter()).hash();
        for _ in 0..shuffles {
            let mut shuffled: Vec<&Record> = records.iter().collect();
            // Fisher-Yates with the test's RNG, then duplicate some.
            for i in (1..shuffled.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                shuffled.swap(i, j);
            }
            let dups: Vec<&Record> = shuffled.iter().take(5).copied().collect();
            shuffled.extend(dups);
            prop_assert_eq!(&resolve(shuffled.iter().copied(), |k: &PublicKey| *k), &baseline);
            let mut seen = std::collections::BTreeSet::new();
            let digest_shuffled = StateDigest::of(shuffled.iter().map(|r| &r.id).filter(|id| seen.insert(**id))).hash();
            prop_assert_eq!(digest_shuffled, digest);
        }
        // The winner of each item has the highest revision among its records.
        for (item, resolved) in &baseline {
            let max = records.iter()
                .filter(|r| r.content.key == item.key && r.content.author == item.region)
                .map(|r| r.content.revision).max().unwrap();
            prop_assert_eq!(resolved.winner.revision, max);
        }
    }
}
