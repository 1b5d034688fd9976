//! Signed sample records for the search tests.

use ed25519_dalek::SigningKey;
use kim_protocol::envelope::{Kind, Record};
use kim_protocol::{FederationId, RegionId, samples};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// 2026-11-27T00:00:00Z.
pub const NOW_MS: u64 = 1_795_737_600_000;
pub const DAY_MS: u64 = 86_400_000;

/// An endless, deterministic stream of (owning region, signed record) from `samples`:
/// 60 % offers/requests, 15 % knowledge, 15 % organisations, 10 % projects, created over the
/// last 600 days (offers expire after 400, so about a third are expired at [`NOW_MS`]).
pub struct Corpus {
    rng: ChaCha8Rng,
    keys: Vec<SigningKey>,
    federation: FederationId,
    next: u64,
}

impl std::fmt::Debug for Corpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corpus").field("next", &self.next).finish()
    }
}

impl Corpus {
    pub fn new(seed: u64) -> Corpus {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys = (0..16).map(|_| samples::signing_key(&mut rng)).collect();
        Corpus {
            rng,
            keys,
            federation: FederationId([7; 32]),
            next: 0,
        }
    }

    pub fn signing_key(&self, region: usize) -> &SigningKey {
        &self.keys[region]
    }

    pub fn federation(&self) -> FederationId {
        self.federation
    }
}

impl Iterator for Corpus {
    type Item = (RegionId, Record);

    fn next(&mut self) -> Option<(RegionId, Record)> {
        let i = self.next;
        self.next += 1;
        let kind = match i % 20 {
            0..=11 => Kind::Cooperation,
            12..=14 => Kind::Knowledge,
            15..=17 => Kind::Organisation,
            _ => Kind::Project,
        };
        let key = &self.keys[(i % self.keys.len() as u64) as usize];
        let author = samples::public_key(key);
        let created = NOW_MS - (self.rng.next_u64() % (600 * DAY_MS));
        let content = samples::content(
            &mut self.rng,
            self.federation,
            author,
            kind,
            &format!("item-{i}"),
            created,
        );
        let record = Record::sign(&content, key).ok()?;
        Some((author, record))
    }
}
