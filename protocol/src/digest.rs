//! The state digest: one hash over the set of record ids a node holds for sync.
//!
//! It is order-free and incremental — the sum of all ids modulo 2^256 and their count, hashed —
//! so a node keeps it up to date in O(1) per stored or dropped record, and two nodes holding the
//! same set show the same digest whatever order they received it in.

use crate::bytes::{Hash32, RecordId};

/// BLAKE3 derive-key context of the state digest.
pub const STATE_DIGEST_CONTEXT: &str = "kim 2026 state digest v1";

/// Running sum and count of a set of record ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateDigest {
    count: u64,
    sum: [u8; 32],
}

impl StateDigest {
    /// The digest of a set given as an iterator (duplicates must not be passed twice).
    pub fn of<'a>(ids: impl IntoIterator<Item = &'a RecordId>) -> StateDigest {
        let mut digest = StateDigest::default();
        for id in ids {
            digest.add(id);
        }
        digest
    }

    /// Adds an id that was not in the set.
    pub fn add(&mut self, id: &RecordId) {
        let mut carry = 0u16;
        for (s, b) in self.sum.iter_mut().zip(id.0.iter()) {
            let v = u16::from(*s) + u16::from(*b) + carry;
            *s = (v & 0xff) as u8;
            carry = v >> 8;
        }
        self.count = self.count.wrapping_add(1);
    }

    /// Removes an id that was in the set.
    pub fn remove(&mut self, id: &RecordId) {
        let mut borrow = 0i16;
        for (s, b) in self.sum.iter_mut().zip(id.0.iter()) {
            let mut v = i16::from(*s) - i16::from(*b) - borrow;
            borrow = 0;
            if v < 0 {
                v += 256;
                borrow = 1;
            }
            *s = (v & 0xff) as u8;
        }
        self.count = self.count.wrapping_sub(1);
    }

    /// Rebuilds a digest from its persisted parts.
    pub fn from_parts(count: u64, sum: [u8; 32]) -> StateDigest {
        StateDigest { count, sum }
    }

    /// The running sum (little-endian, mod 2^256), for persisting.
    pub fn sum_bytes(&self) -> [u8; 32] {
        self.sum
    }

    /// How many ids are in the set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The hash operators and tests compare.
    pub fn hash(&self) -> Hash32 {
        let mut input = [0u8; 40];
        input[..8].copy_from_slice(&self.count.to_le_bytes());
        input[8..].copy_from_slice(&self.sum);
        Hash32(blake3::derive_key(STATE_DIGEST_CONTEXT, &input))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn digest_is_order_free_and_removal_undoes_add(
            ids in proptest::collection::btree_set(any::<[u8; 32]>(), 0..50),
            extra in any::<[u8; 32]>(),
        ) {
            let ids: Vec<RecordId> = ids.into_iter().map(RecordId).collect();
            let forward = StateDigest::of(ids.iter());
            let backward = StateDigest::of(ids.iter().rev());
            prop_assert_eq!(forward.hash(), backward.hash());
            let mut with_extra = forward;
            with_extra.add(&RecordId(extra));
            with_extra.remove(&RecordId(extra));
            prop_assert_eq!(with_extra, forward);
        }
    }

    #[test]
    fn different_sets_differ() {
        let a = StateDigest::of(&[RecordId([1; 32])]);
        let b = StateDigest::of(&[RecordId([2; 32])]);
        assert_ne!(a.hash(), b.hash());
        assert_ne!(StateDigest::default().hash(), a.hash());
    }
}
