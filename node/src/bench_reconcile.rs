//! `kim bench reconcile`: our range-based reconciliation (`kim_protocol::reconcile`) beside the
//! `negentropy` crate, on the same two sets in the same run.
//!
//! Both run a whole session in memory with the same rules of counting: `A` initiates; bytes are
//! every message's bytes in both directions; a round trip is one responder message; both have the
//! same frame limit, [`RECONCILE_MESSAGE_BYTES_MAX`]. The sets are those of `protocol/SPEC.md`
//! §11.12: `A` = `n` random ids from `ChaCha8Rng::seed_from_u64(42 + n + d)`, `B` = `A` without
//! its first ⌈d/2⌉ ids plus ⌊d/2⌋ new ids from the same generator, so the `d` differences are
//! split between both sides. Each session's result is checked against the true difference before
//! its figures count.

use std::time::Instant;

use anyhow::{Context as _, bail};
use kim_protocol::reconcile::{ID_BYTES, Id, RECONCILE_MESSAGE_BYTES_MAX, SortedIds, simulate};
use negentropy::{Negentropy, NegentropyStorageVector};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

/// What one session cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cost {
    /// Responder messages.
    pub round_trips: u32,
    /// Message bytes, both directions.
    pub bytes: u64,
    /// Largest single message, in bytes.
    pub message_bytes_max: usize,
    /// Milliseconds for both sides together, run in turn on one thread.
    pub ms: f64,
}

/// One compared case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub ids: usize,
    pub differences: usize,
    pub kim: Cost,
    pub negentropy: Cost,
}

impl Row {
    /// Whether kim needed no more bytes and no more round trips (the target of issue 4).
    pub fn kim_not_worse(&self) -> bool {
        self.kim.bytes <= self.negentropy.bytes
            && self.kim.round_trips <= self.negentropy.round_trips
    }
}

/// The two sets of a case: `A` with `ids` ids, and `B` differing from it by `differences` ids,
/// ⌈d/2⌉ only in `A` and ⌊d/2⌋ only in `B`. Returns (A, B, A \ B, B \ A), the last two sorted.
pub fn sets(ids: usize, differences: usize) -> (Vec<Id>, Vec<Id>, Vec<Id>, Vec<Id>) {
    let mut rng = ChaCha8Rng::seed_from_u64(42 + ids as u64 + differences as u64);
    let mut random = |count: usize| -> Vec<Id> {
        (0..count)
            .map(|_| {
                let mut id = [0u8; ID_BYTES];
                rng.fill_bytes(&mut id);
                id
            })
            .collect()
    };
    let a = random(ids);
    let only_a_count = differences.div_ceil(2).min(ids);
    let only_b = random(differences / 2);
    let mut b: Vec<Id> = a[only_a_count..].to_vec();
    b.extend_from_slice(&only_b);
    let mut only_a = a[..only_a_count].to_vec();
    only_a.sort_unstable();
    let mut only_b = only_b;
    only_b.sort_unstable();
    (a, b, only_a, only_b)
}

/// One kim session; fails unless it found exactly the difference.
fn kim_session(a: &[Id], b: &[Id], only_a: &[Id], only_b: &[Id]) -> anyhow::Result<Cost> {
    let (a, b) = (SortedIds::new(a.to_vec()), SortedIds::new(b.to_vec()));
    let started = Instant::now();
    let stats = simulate(&a, &b).map_err(|e| anyhow::anyhow!("kim session failed: {e}"))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if stats.have != only_a || stats.need != only_b {
        bail!(
            "kim found {} + {} differences, not {} + {}",
            stats.have.len(),
            stats.need.len(),
            only_a.len(),
            only_b.len()
        );
    }
    Ok(Cost {
        round_trips: stats.rounds,
        bytes: stats.bytes_a_to_b + stats.bytes_b_to_a,
        message_bytes_max: stats.message_bytes_max,
        ms,
    })
}

fn negentropy_storage(ids: &[Id]) -> anyhow::Result<NegentropyStorageVector> {
    let mut storage = NegentropyStorageVector::with_capacity(ids.len());
    for id in ids {
        // Every item at timestamp 0: ordered by id alone, as kim orders them.
        storage
            .insert(0, negentropy::Id::from_byte_array(*id))
            .map_err(|e| anyhow::anyhow!("negentropy insert: {e}"))?;
    }
    storage
        .seal()
        .map_err(|e| anyhow::anyhow!("negentropy seal: {e}"))?;
    Ok(storage)
}

/// One negentropy session, counted as [`simulate`] counts ours; fails unless it found exactly
/// the difference.
fn negentropy_session(a: &[Id], b: &[Id], only_a: &[Id], only_b: &[Id]) -> anyhow::Result<Cost> {
    let (a, b) = (negentropy_storage(a)?, negentropy_storage(b)?);
    let failed = |e: negentropy::Error| anyhow::anyhow!("negentropy session failed: {e}");
    let limit = RECONCILE_MESSAGE_BYTES_MAX as u64;
    let started = Instant::now();
    let mut initiator = Negentropy::borrowed(&a, limit).map_err(failed)?;
    let mut responder = Negentropy::borrowed(&b, limit).map_err(failed)?;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut message = initiator.initiate().map_err(failed)?;
    let mut cost = Cost {
        round_trips: 0,
        bytes: message.len() as u64,
        message_bytes_max: message.len(),
        ms: 0.0,
    };
    loop {
        let reply = responder.reconcile(&message).map_err(failed)?;
        cost.bytes += reply.len() as u64;
        cost.message_bytes_max = cost.message_bytes_max.max(reply.len());
        cost.round_trips += 1;
        match initiator
            .reconcile_with_ids(&reply, &mut have, &mut need)
            .map_err(failed)?
        {
            Some(next) => {
                cost.bytes += next.len() as u64;
                cost.message_bytes_max = cost.message_bytes_max.max(next.len());
                message = next;
            }
            None => break,
        }
    }
    cost.ms = started.elapsed().as_secs_f64() * 1e3;
    let sorted = |ids: Vec<negentropy::Id>| {
        let mut ids: Vec<Id> = ids.into_iter().map(negentropy::Id::to_bytes).collect();
        ids.sort_unstable();
        ids
    };
    let (have, need) = (sorted(have), sorted(need));
    if have != only_a || need != only_b {
        bail!(
            "negentropy found {} + {} differences, not {} + {}",
            have.len(),
            need.len(),
            only_a.len(),
            only_b.len()
        );
    }
    Ok(cost)
}

/// Runs both on the same sets.
pub fn compare(ids: usize, differences: usize) -> anyhow::Result<Row> {
    if differences > 2 * ids {
        bail!("{differences} differences cannot be split over sets of {ids} ids");
    }
    let (a, b, only_a, only_b) = sets(ids, differences);
    let kim = kim_session(&a, &b, &only_a, &only_b)
        .with_context(|| format!("{ids} ids, {differences} differences"))?;
    let negentropy = negentropy_session(&a, &b, &only_a, &only_b)
        .with_context(|| format!("{ids} ids, {differences} differences"))?;
    Ok(Row {
        ids,
        differences,
        kim,
        negentropy,
    })
}

/// `kim bench reconcile`: every combination of `ids` and `differences`, as a table.
pub fn run(ids: &[usize], differences: &[usize]) -> anyhow::Result<()> {
    if ids.is_empty() || differences.is_empty() {
        bail!("give at least one --ids and one --differences");
    }
    println!(
        "kim bench reconcile: kim vs the negentropy crate on the same sets; A initiates; B = A \
         without ceil(d/2) of its ids plus floor(d/2) others;"
    );
    println!(
        "both with frames <= {RECONCILE_MESSAGE_BYTES_MAX} bytes; bytes in both directions; a \
         round trip is one responder message; ms = both sides in turn on one thread"
    );
    println!(
        "{:>9} {:>7} | {:>5} {:>5} | {:>11} {:>11} {:>5} | {:>8} {:>8} | {:>8} {:>8}",
        "ids",
        "diffs",
        "rt k",
        "rt n",
        "bytes kim",
        "bytes neg",
        "k/n",
        "max k",
        "max n",
        "ms kim",
        "ms neg"
    );
    let mut worse = Vec::new();
    for &n in ids {
        for &d in differences {
            let row = compare(n, d)?;
            println!(
                "{:>9} {:>7} | {:>5} {:>5} | {:>11} {:>11} {:>5.2} | {:>8} {:>8} | {:>8.1} {:>8.1}",
                row.ids,
                row.differences,
                row.kim.round_trips,
                row.negentropy.round_trips,
                row.kim.bytes,
                row.negentropy.bytes,
                row.kim.bytes as f64 / row.negentropy.bytes.max(1) as f64,
                row.kim.message_bytes_max,
                row.negentropy.message_bytes_max,
                row.kim.ms,
                row.negentropy.ms
            );
            if !row.kim_not_worse() {
                worse.push((n, d));
            }
        }
    }
    if worse.is_empty() {
        println!(
            "target met: kim needed no more bytes and no more round trips than negentropy in every case"
        );
    } else {
        println!("target missed: kim needed more bytes or round trips in {worse:?} (ids, diffs)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sets_differ_by_exactly_the_asked_ids_split_between_both_sides() {
        let (a, b, only_a, only_b) = sets(1000, 7);
        assert_eq!((a.len(), b.len()), (1000, 999));
        assert_eq!((only_a.len(), only_b.len()), (4, 3));
        assert!(only_a.iter().all(|id| !b.contains(id)));
        assert!(only_b.iter().all(|id| !a.contains(id)));
    }

    /// Both sessions find the exact difference (checked inside `compare`), are counted, and
    /// respect the common frame limit.
    #[test]
    fn both_sides_reconcile_the_same_sets_within_the_frame_limit() -> anyhow::Result<()> {
        for (ids, differences) in [(2000, 1), (2000, 100), (300, 600)] {
            let row = compare(ids, differences)?;
            for cost in [row.kim, row.negentropy] {
                assert!(cost.round_trips >= 1 && cost.bytes > 0, "{row:?}");
                assert!(
                    cost.message_bytes_max <= RECONCILE_MESSAGE_BYTES_MAX,
                    "{row:?}"
                );
            }
        }
        Ok(())
    }
}
