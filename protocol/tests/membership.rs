//! The membership rule through its public API: hand-built scenarios with real signed records,
//! and a property test that random histories evaluate to the same state whatever the order and
//! duplication in which their records arrive.
//!
//! Several scenarios add one decisive change to the state under test (a second candidate that
//! does reach its threshold), so the actions under test are judged in a state the chain has
//! moved past.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use kim_protocol::envelope::FORMAT_VERSION;
use kim_protocol::membership::{
    Anomaly, AuthorStatus, Change, Charter, Endorsement, Founder, JoinRequest, KeyRotation, Leave,
    MembershipState, Pending, RemovalVote, ThresholdRule, Transition, evaluate, federation_id,
    genesis_digest,
};
use kim_protocol::samples::{self, REGIONS, public_key, region_profile, signing_key};
use kim_protocol::{Body, Content, Error, FederationId, Hash32, Kind, PublicKey, Record, RecordId};
use proptest::prelude::*;
use rand::RngExt;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;

/// A federation under test: its charter, the founders' signing keys and a clock.
struct Fed {
    charter: Charter,
    id: FederationId,
    founders: Vec<SigningKey>,
    rng: ChaCha8Rng,
    now: u64,
}

impl Fed {
    fn new(
        seed: u64,
        founders: usize,
        admission: ThresholdRule,
        removal: ThresholdRule,
    ) -> Result<Fed, Error> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let keys: Vec<SigningKey> = (0..founders).map(|_| signing_key(&mut rng)).collect();
        let charter = Charter {
            name: "CADSES regional co-operation".into(),
            founders: keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let (nuts, _, name, _) = REGIONS[i % REGIONS.len()];
                    Founder {
                        key: public_key(k),
                        name: name.into(),
                        nuts: vec![nuts.into()],
                    }
                })
                .collect(),
            admission,
            removal,
            created_at_ms: T0,
        };
        let id = federation_id(&charter.to_bytes()?);
        Ok(Fed {
            charter,
            id,
            founders: keys,
            rng,
            now: T0,
        })
    }

    fn founder(&self, i: usize) -> SigningKey {
        self.founders[i].clone()
    }

    fn fpk(&self, i: usize) -> PublicKey {
        public_key(&self.founders[i])
    }

    fn new_key(&mut self) -> SigningKey {
        signing_key(&mut self.rng)
    }

    fn genesis(&self) -> Hash32 {
        genesis_digest(&self.id)
    }

    fn eval(&self, records: &[Record]) -> MembershipState {
        evaluate(&self.charter, self.id, records)
    }

    /// Signs a record made one second after the previous one.
    fn record(
        &mut self,
        author: &SigningKey,
        kind: Kind,
        key: &str,
        body: Body,
    ) -> Result<Record, Error> {
        self.now += 1_000;
        Record::sign(
            &Content {
                format: FORMAT_VERSION,
                federation: self.id,
                author: public_key(author),
                kind,
                key: format!("{key}-{}", self.now - T0),
                revision: 1,
                created_at_ms: self.now,
                expires_at_ms: None,
                body,
            },
            author,
        )
    }

    fn join(&mut self, who: &SigningKey, region: usize) -> Result<Record, Error> {
        let profile = region_profile(&mut self.rng, region);
        self.record(
            who,
            Kind::JoinRequest,
            "join",
            Body::JoinRequest(JoinRequest {
                profile,
                message: "We would like to join the federation.".into(),
            }),
        )
    }

    /// An endorsement of the candidate who signed `join`, naming `state`.
    fn endorse(&mut self, who: &SigningKey, state: Hash32, join: &Record) -> Result<Record, Error> {
        self.endorse_region(who, state, join.content.author, join.id)
    }

    fn endorse_region(
        &mut self,
        who: &SigningKey,
        state: Hash32,
        candidate: PublicKey,
        join_request: RecordId,
    ) -> Result<Record, Error> {
        self.record(
            who,
            Kind::Endorsement,
            "endorse",
            Body::Endorsement(Endorsement {
                state,
                candidate,
                join_request,
            }),
        )
    }

    fn vote(
        &mut self,
        who: &SigningKey,
        state: Hash32,
        target: PublicKey,
    ) -> Result<Record, Error> {
        self.record(
            who,
            Kind::RemovalVote,
            "remove",
            Body::RemovalVote(RemovalVote {
                state,
                target,
                reason: "No longer operates a node.".into(),
            }),
        )
    }

    fn leave(&mut self, who: &SigningKey, state: Hash32) -> Result<Record, Error> {
        self.record(
            who,
            Kind::Leave,
            "leave",
            Body::Leave(Leave {
                state,
                reason: "Programme ended.".into(),
            }),
        )
    }

    fn rotate(&mut self, old: &SigningKey, new: &SigningKey) -> Result<Record, Error> {
        let body = KeyRotation::new(&self.id, &public_key(old), new);
        self.record(old, Kind::KeyRotation, "rotate", Body::KeyRotation(body))
    }
}

fn admits(state: &MembershipState, region: &PublicKey) -> bool {
    state
        .history
        .iter()
        .any(|t| t.changes.contains(&Change::Admit(*region)))
}

// ---------------------------------------------------------------------------------------------
// 1. Genesis
// ---------------------------------------------------------------------------------------------

#[test]
fn founders_are_the_members_of_the_genesis_state() -> TestResult {
    let fed = Fed::new(1, 3, ThresholdRule::Majority, ThresholdRule::Majority)?;
    let state = fed.eval(&[]);
    assert_eq!(state.federation, fed.id);
    assert_eq!(state.digest, genesis_digest(&fed.id));
    let founders: Vec<PublicKey> = {
        let mut f: Vec<_> = (0..3).map(|i| fed.fpk(i)).collect();
        f.sort();
        f
    };
    assert_eq!(state.member_ids(), founders);
    for (i, founder) in fed.charter.founders.iter().enumerate() {
        let member = &state.members[&founder.key];
        assert_eq!(member.region, founder.key);
        assert_eq!(member.key, founder.key);
        assert_eq!(member.name, founder.name);
        assert_eq!(member.admitted_in, None);
        assert_eq!(
            state.author_status(&fed.fpk(i), T0 + 1),
            AuthorStatus::Member(founder.key)
        );
        assert_eq!(state.region_of(&founder.key), Some(founder.key));
    }
    assert!(state.history.is_empty());
    assert!(state.pending.is_empty());
    assert!(state.former.is_empty());
    assert!(state.anomalies.is_empty());
    let stranger = public_key(&signing_key(&mut ChaCha8Rng::seed_from_u64(99)));
    assert_eq!(state.author_status(&stranger, T0), AuthorStatus::Unknown);
    assert_eq!(state.region_of(&stranger), None);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Admission with a fixed threshold
// ---------------------------------------------------------------------------------------------

#[test]

fn one_endorsement_of_two_needed_leaves_the_candidate_pending() -> TestResult {
    let mut fed = Fed::new(2, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let cand = fed.new_key();
    let jr = fed.join(&cand, 6)?;
    let g = fed.genesis();
    let e0 = fed.endorse(&fed.founder(0), g, &jr)?;
    let state = fed.eval(&[jr.clone(), e0]);
    assert_eq!(state.digest, g);
    assert!(state.history.is_empty());
    assert!(!state.is_member(&public_key(&cand)));
    let name = match &jr.content.body {
        Body::JoinRequest(j) => j.profile.name.clone(),
        _ => unreachable!(),
    };
    assert_eq!(
        state.pending,
        vec![Pending {
            candidate: public_key(&cand),
            name,
            join_request: jr.id,
            requested_at_ms: jr.content.created_at_ms,
            endorsers: vec![fed.fpk(0)],
            required: 2,
        }]
    );
    assert_eq!(
        state.join_requests.get(&public_key(&cand)),
        Some(&jr.id),
        "the candidate's first join request"
    );
    assert!(!state.pending[0].is_expired(jr.content.created_at_ms));
    assert!(
        state.pending[0]
            .is_expired(jr.content.created_at_ms + kim_protocol::limits::JOIN_REQUEST_TTL_MS)
    );
    assert!(state.anomalies.is_empty(), "{:?}", state.anomalies);
    Ok(())
}

/// A candidate that asks again (its first request expired) is pending with its newest
/// request, whatever the record ids; an endorsement of the older one still counts.
#[test]
fn a_candidate_that_asks_again_is_pending_with_its_newest_request() -> TestResult {
    let mut fed = Fed::new(2, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let cand = fed.new_key();
    let first = fed.join(&cand, 6)?;
    let second = fed.join(&cand, 6)?;
    assert!(second.content.created_at_ms > first.content.created_at_ms);
    for order in [
        vec![first.clone(), second.clone()],
        vec![second.clone(), first.clone()],
    ] {
        let state = fed.eval(&order);
        assert_eq!(state.pending.len(), 1);
        assert_eq!(state.pending[0].join_request, second.id);
        assert_eq!(
            state.join_requests.get(&public_key(&cand)),
            Some(&second.id)
        );
    }
    let g = fed.genesis();
    let old = fed.endorse(&fed.founder(0), g, &first)?;
    let new = fed.endorse(&fed.founder(1), g, &second)?;
    let state = fed.eval(&[first, second, old, new]);
    assert!(state.is_member(&public_key(&cand)));
    Ok(())
}

#[test]
fn two_endorsements_naming_the_current_digest_admit_the_candidate() -> TestResult {
    let mut fed = Fed::new(2, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let cand = fed.new_key();
    let c = public_key(&cand);
    let jr = fed.join(&cand, 6)?;
    let g = fed.genesis();
    let e0 = fed.endorse(&fed.founder(0), g, &jr)?;
    let e1 = fed.endorse(&fed.founder(1), g, &jr)?;
    let state = fed.eval(&[jr, e0, e1]);
    assert_ne!(state.digest, g);
    assert_eq!(
        state.history,
        vec![Transition {
            from: g,
            to: state.digest,
            changes: vec![Change::Admit(c)],
        }]
    );
    assert_eq!(state.members.len(), 5);
    assert_eq!(state.members[&c].admitted_in, Some(0));
    assert_eq!(state.members[&c].key, c);
    assert_eq!(state.members[&c].name, REGIONS[6].2);
    assert!(state.pending.is_empty());
    assert_eq!(state.author_status(&c, fed.now), AuthorStatus::Member(c));
    assert!(state.anomalies.is_empty(), "{:?}", state.anomalies);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Majority rule
// ---------------------------------------------------------------------------------------------

#[test]
fn majority_needs_three_of_four_and_three_of_five() {
    assert_eq!(ThresholdRule::Majority.required(4), 3);
    assert_eq!(ThresholdRule::Majority.required(5), 3);
    assert_eq!(ThresholdRule::Majority.required(1), 1);
    assert_eq!(ThresholdRule::Fixed(3).required(2), 2);
}

/// Candidate A gets `a` endorsements and B gets `b`, all in the genesis state.
fn majority_round(founders: usize, a: usize, b: usize) -> Result<MembershipState, Error> {
    let mut fed = Fed::new(
        3,
        founders,
        ThresholdRule::Majority,
        ThresholdRule::Majority,
    )?;
    let ka = fed.new_key();
    let kb = fed.new_key();
    let ja = fed.join(&ka, 6)?;
    let jb = fed.join(&kb, 7)?;
    let g = fed.genesis();
    let mut records = vec![ja.clone(), jb.clone()];
    for i in 0..a {
        records.push(fed.endorse(&fed.founder(i), g, &ja)?);
    }
    for i in 0..b {
        records.push(fed.endorse(&fed.founder(founders - 1 - i), g, &jb)?);
    }
    Ok(fed.eval(&records))
}

#[test]
fn majority_of_four_members_admits_with_three_endorsements_not_two() -> TestResult {
    let state = majority_round(4, 2, 3)?;
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].changes.len(), 1);
    assert_eq!(state.members.len(), 5);
    let pending: Vec<_> = state.pending.iter().map(|p| p.required).collect();
    // The new state has five members: three needed, nobody has endorsed in it yet.
    assert_eq!(pending, vec![3]);
    assert!(state.pending[0].endorsers.is_empty());
    Ok(())
}

#[test]
fn majority_of_five_members_admits_with_three_endorsements_not_two() -> TestResult {
    let state = majority_round(5, 2, 3)?;
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].changes.len(), 1);
    assert_eq!(state.members.len(), 6);
    assert_eq!(state.pending.len(), 1);
    assert_eq!(state.pending[0].required, 4);
    let both = majority_round(5, 3, 3)?;
    assert_eq!(both.history[0].changes.len(), 2);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Who counts
// ---------------------------------------------------------------------------------------------

#[test]
fn endorsements_by_non_members_the_candidate_itself_and_repeats_count_once_at_most() -> TestResult {
    let mut fed = Fed::new(4, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let kc = fed.new_key();
    let kd = fed.new_key();
    let stranger = fed.new_key();
    let c = public_key(&kc);
    let d = public_key(&kd);
    let jc = fed.join(&kc, 6)?;
    let jd = fed.join(&kd, 7)?;
    let g = fed.genesis();
    let mut records = vec![jc.clone(), jd.clone()];
    // For C: another candidate (admitted in this very state), C itself, a key nobody knows,
    // and one founder twice. Only the founder counts, once.
    records.push(fed.endorse(&kd, g, &jc)?);
    records.push(fed.endorse(&kc, g, &jc)?);
    records.push(fed.endorse(&stranger, g, &jc)?);
    records.push(fed.endorse(&fed.founder(0), g, &jc)?);
    records.push(fed.endorse(&fed.founder(0), g, &jc)?);
    // D is admitted in the same state, so the chain moves on.
    records.push(fed.endorse(&fed.founder(2), g, &jd)?);
    records.push(fed.endorse(&fed.founder(3), g, &jd)?);
    let state = fed.eval(&records);
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].changes, vec![Change::Admit(d)]);
    assert!(!state.is_member(&c));
    assert!(state.is_member(&d));

    // Control: one more distinct member is enough.
    records.push(fed.endorse(&fed.founder(1), g, &jc)?);
    let state = fed.eval(&records);
    let mut both = vec![Change::Admit(c), Change::Admit(d)];
    both.sort();
    assert_eq!(state.history[0].changes, both);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Stale and unknown states
// ---------------------------------------------------------------------------------------------

#[test]
fn endorsements_naming_a_stale_or_unknown_digest_do_not_count() -> TestResult {
    let mut fed = Fed::new(5, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let [ka, kb, kc] = [fed.new_key(), fed.new_key(), fed.new_key()];
    let b = public_key(&kb);
    let ja = fed.join(&ka, 6)?;
    let jb = fed.join(&kb, 7)?;
    let jc = fed.join(&kc, 8)?;
    let g = fed.genesis();
    let mut records = vec![ja.clone(), jb.clone(), jc.clone()];
    records.push(fed.endorse(&fed.founder(0), g, &ja)?);
    records.push(fed.endorse(&fed.founder(1), g, &ja)?);
    let s1 = fed.eval(&records).digest;
    assert_ne!(s1, g);
    // B: one endorsement naming the left-behind genesis, one naming S1: never two in one state.
    records.push(fed.endorse(&fed.founder(2), g, &jb)?);
    records.push(fed.endorse(&fed.founder(3), s1, &jb)?);
    // B: three more naming a state that never existed.
    let unknown = Hash32([7; 32]);
    for i in 0..3 {
        records.push(fed.endorse(&fed.founder(i), unknown, &jb)?);
    }
    // C is admitted in S1, so the chain moves on to S2.
    records.push(fed.endorse(&fed.founder(0), s1, &jc)?);
    records.push(fed.endorse(&fed.founder(1), s1, &jc)?);
    let state = fed.eval(&records);
    assert_eq!(state.history.len(), 2);
    assert_eq!(state.history[1].from, s1);
    assert!(!state.is_member(&b));
    assert!(!admits(&state, &b));
    assert_eq!(state.anomalies, vec![Anomaly::OffChainActions { count: 3 }]);
    Ok(())
}

#[test]

fn off_chain_actions_are_reported_while_the_current_state_has_actions() -> TestResult {
    let mut fed = Fed::new(5, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let ka = fed.new_key();
    let ja = fed.join(&ka, 6)?;
    let g = fed.genesis();
    let current = fed.endorse(&fed.founder(0), g, &ja)?;
    let off = fed.endorse(&fed.founder(1), Hash32([7; 32]), &ja)?;
    // One action in the current state and one naming an unknown state.
    let state = fed.eval(&[ja, current, off]);
    assert_eq!(state.digest, g);
    assert_eq!(state.anomalies, vec![Anomaly::OffChainActions { count: 1 }]);
    Ok(())
}

#[test]

fn concurrent_endorsements_naming_the_same_state_merge_into_one_transition() -> TestResult {
    // Two sides of a partition act in genesis: one admits A, the other B. Nobody has acted in a
    // successor yet, so once all records are known both changes apply together.
    let mut fed = Fed::new(5, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let [ka, kb] = [fed.new_key(), fed.new_key()];
    let (a, b) = (public_key(&ka), public_key(&kb));
    let ja = fed.join(&ka, 6)?;
    let jb = fed.join(&kb, 7)?;
    let g = fed.genesis();
    let mut records = vec![ja.clone(), jb.clone()];
    records.push(fed.endorse(&fed.founder(0), g, &ja)?);
    records.push(fed.endorse(&fed.founder(1), g, &ja)?);
    let side_one = fed.eval(&records);
    assert_eq!(side_one.history[0].changes, vec![Change::Admit(a)]);
    records.push(fed.endorse(&fed.founder(2), g, &jb)?);
    records.push(fed.endorse(&fed.founder(3), g, &jb)?);
    let merged = fed.eval(&records);
    let mut both = vec![Change::Admit(a), Change::Admit(b)];
    both.sort();
    assert_eq!(merged.history.len(), 1);
    assert_eq!(merged.history[0].changes, both);
    assert!(merged.is_member(&a) && merged.is_member(&b));
    assert!(merged.anomalies.is_empty(), "{:?}", merged.anomalies);
    Ok(())
}

#[test]
fn late_records_naming_a_state_others_built_on_do_not_undo_history() -> TestResult {
    // A is admitted in genesis and a member acts in the successor S1. Endorsements for B and a
    // leave, all naming genesis, arrive later (or are backdated): S1 stands, and they count
    // for nothing until made again in the current state.
    let mut fed = Fed::new(5, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let [ka, kb, kc] = [fed.new_key(), fed.new_key(), fed.new_key()];
    let (a, b) = (public_key(&ka), public_key(&kb));
    let ja = fed.join(&ka, 6)?;
    let jb = fed.join(&kb, 7)?;
    let jc = fed.join(&kc, 8)?;
    let g = fed.genesis();
    let mut records = vec![ja.clone(), jb.clone(), jc.clone()];
    records.push(fed.endorse(&fed.founder(0), g, &ja)?);
    records.push(fed.endorse(&fed.founder(1), g, &ja)?);
    let s1 = fed.eval(&records).digest;
    records.push(fed.endorse(&fed.founder(0), s1, &jc)?);
    let before = fed.eval(&records);
    records.push(fed.endorse(&fed.founder(2), g, &jb)?);
    records.push(fed.endorse(&fed.founder(3), g, &jb)?);
    records.push(fed.leave(&fed.founder(1), g)?);
    let after = fed.eval(&records);
    assert_eq!(after.history, before.history);
    assert_eq!(after.digest, s1);
    assert!(after.is_member(&a) && !after.is_member(&b));
    assert!(after.is_member(&public_key(&fed.founder(1))));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Removal
// ---------------------------------------------------------------------------------------------

#[test]
fn removal_ignores_the_targets_own_vote_and_excludes_it_from_the_eligible_count() -> TestResult {
    let mut fed = Fed::new(6, 4, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let [f0, f1, f2, f3] = [0, 1, 2, 3].map(|i| fed.fpk(i));
    let g = fed.genesis();
    let mut records = vec![
        // f0: its own vote (invalid, but evaluate must ignore it) and f1's: one valid vote.
        fed.vote(&fed.founder(0), g, f0)?,
        fed.vote(&fed.founder(1), g, f0)?,
        // f1: two votes out of three eligible others: Majority(3) = 2, so it is removed.
        fed.vote(&fed.founder(2), g, f1)?,
        fed.vote(&fed.founder(3), g, f1)?,
    ];
    let state = fed.eval(&records);
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].changes, vec![Change::Remove(f1)]);
    assert_eq!(state.member_ids(), {
        let mut m = vec![f0, f2, f3];
        m.sort();
        m
    });
    assert_eq!(state.former.get(&f1), Some(&Change::Remove(f1)));
    let s1 = state.digest;

    // In S1 the removed region's endorsement no longer counts.
    let [kc, kd] = [fed.new_key(), fed.new_key()];
    let c = public_key(&kc);
    let jc = fed.join(&kc, 6)?;
    let jd = fed.join(&kd, 7)?;
    records.extend([jc.clone(), jd.clone()]);
    records.push(fed.endorse(&fed.founder(1), s1, &jc)?);
    records.push(fed.endorse(&fed.founder(0), s1, &jc)?);
    records.push(fed.endorse(&fed.founder(2), s1, &jd)?);
    records.push(fed.endorse(&fed.founder(3), s1, &jd)?);
    let state = fed.eval(&records);
    assert_eq!(state.history.len(), 2);
    assert_eq!(
        state.history[1].changes,
        vec![Change::Admit(public_key(&kd))]
    );
    assert!(!state.is_member(&c));
    assert_eq!(
        state.author_status(&f1, fed.now + 1),
        AuthorStatus::NotMember(f1)
    );
    assert_eq!(state.region_of(&f1), Some(f1));

    // Control: a current member's endorsement in S1 does count.
    records.push(fed.endorse(&fed.founder(3), s1, &jc)?);
    let state = fed.eval(&records);
    assert!(state.is_member(&c));
    Ok(())
}

#[test]
fn a_vote_against_oneself_signed_with_a_rotated_key_is_ignored() -> TestResult {
    // Validation only compares the vote's author key with the target, so a rotated key can
    // slip a self-vote through; evaluate compares regions.
    let mut fed = Fed::new(6, 3, ThresholdRule::Fixed(1), ThresholdRule::Fixed(1))?;
    let f0 = fed.fpk(0);
    let g = fed.genesis();
    let new0 = fed.new_key();
    let rot = fed.rotate(&fed.founder(0), &new0)?;
    let self_vote = fed.vote(&new0, g, f0)?;
    // Something decisive in genesis, so the self vote is not in the current state.
    let leave = fed.leave(&fed.founder(2), g)?;
    let state = fed.eval(&[rot, self_vote, leave]);
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].changes, vec![Change::Leave(fed.fpk(2))]);
    assert!(state.is_member(&f0));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Leave and concurrent changes
// ---------------------------------------------------------------------------------------------

#[test]
fn leave_admissions_and_removal_in_one_state_apply_together_sorted() -> TestResult {
    let mut fed = Fed::new(7, 5, ThresholdRule::Fixed(2), ThresholdRule::Fixed(2))?;
    let f: Vec<PublicKey> = (0..5).map(|i| fed.fpk(i)).collect();
    let [kc, kd] = [fed.new_key(), fed.new_key()];
    let (c, d) = (public_key(&kc), public_key(&kd));
    let jc = fed.join(&kc, 6)?;
    let jd = fed.join(&kd, 7)?;
    let g = fed.genesis();
    let records = vec![
        jc.clone(),
        jd.clone(),
        fed.leave(&fed.founder(4), g)?,
        // Votes against a region that leaves in the same state: the leave wins.
        fed.vote(&fed.founder(0), g, f[4])?,
        fed.vote(&fed.founder(2), g, f[4])?,
        fed.vote(&fed.founder(2), g, f[1])?,
        fed.vote(&fed.founder(3), g, f[1])?,
        // f1 endorses while being removed: it is a member of the state it acts in.
        fed.endorse(&fed.founder(0), g, &jc)?,
        fed.endorse(&fed.founder(1), g, &jc)?,
        fed.endorse(&fed.founder(1), g, &jd)?,
        fed.endorse(&fed.founder(4), g, &jd)?,
    ];
    let state = fed.eval(&records);
    let mut admitted = [c, d];
    admitted.sort();
    assert_eq!(state.history.len(), 1);
    assert_eq!(
        state.history[0].changes,
        vec![
            Change::Admit(admitted[0]),
            Change::Admit(admitted[1]),
            Change::Remove(f[1]),
            Change::Leave(f[4]),
        ]
    );
    let mut members = vec![f[0], f[2], f[3], c, d];
    members.sort();
    assert_eq!(state.member_ids(), members);
    assert_eq!(state.former.get(&f[1]), Some(&Change::Remove(f[1])));
    assert_eq!(state.former.get(&f[4]), Some(&Change::Leave(f[4])));
    assert_eq!(state.members[&c].admitted_in, Some(0));
    assert_eq!(
        state.author_status(&f[4], fed.now),
        AuthorStatus::NotMember(f[4])
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Key rotation
// ---------------------------------------------------------------------------------------------

#[test]
fn a_rotated_key_is_retired_and_the_new_key_acts_for_the_region() -> TestResult {
    let mut fed = Fed::new(8, 3, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let f0 = fed.fpk(0);
    let new0 = fed.new_key();
    let n0 = public_key(&new0);
    let [kc, kd] = [fed.new_key(), fed.new_key()];
    let (c, d) = (public_key(&kc), public_key(&kd));
    let jc = fed.join(&kc, 6)?;
    let jd = fed.join(&kd, 7)?;
    let rot = fed.rotate(&fed.founder(0), &new0)?;
    let rotated_at = rot.content.created_at_ms;
    let g = fed.genesis();
    let base = vec![jc.clone(), jd.clone(), rot];

    let state = fed.eval(&base);
    assert!(state.anomalies.is_empty(), "{:?}", state.anomalies);
    assert_eq!(
        state.author_status(&f0, rotated_at),
        AuthorStatus::RetiredKey(f0)
    );
    assert_eq!(
        state.author_status(&f0, rotated_at + 5_000),
        AuthorStatus::RetiredKey(f0)
    );
    assert_eq!(
        state.author_status(&f0, rotated_at - 1),
        AuthorStatus::Member(f0)
    );
    assert_eq!(state.author_status(&n0, T0), AuthorStatus::Member(f0));
    assert_eq!(
        state.author_status(&n0, rotated_at + 5_000),
        AuthorStatus::Member(f0)
    );
    assert_eq!(state.region_of(&n0), Some(f0));
    assert_eq!(state.region_of(&f0), Some(f0));
    assert_eq!(state.members[&f0].key, n0);
    assert_eq!(state.members.len(), 3);

    // The old key after the rotation does not count (D's admission moves the chain on).
    let mut records = base.clone();
    records.push(fed.endorse(&fed.founder(1), g, &jc)?);
    records.push(fed.endorse(&fed.founder(0), g, &jc)?);
    records.push(fed.endorse(&fed.founder(1), g, &jd)?);
    records.push(fed.endorse(&fed.founder(2), g, &jd)?);
    let state = fed.eval(&records);
    assert_eq!(state.history.len(), 1);
    assert_eq!(state.history[0].changes, vec![Change::Admit(d)]);
    assert!(!state.is_member(&c));

    // The new key does.
    records.push(fed.endorse(&new0, g, &jc)?);
    let state = fed.eval(&records);
    assert!(state.is_member(&c));
    assert_eq!(state.history.len(), 1);
    Ok(())
}

#[test]
fn an_old_key_still_counts_for_records_made_before_the_rotation() -> TestResult {
    let mut fed = Fed::new(8, 3, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let kc = fed.new_key();
    let jc = fed.join(&kc, 6)?;
    let g = fed.genesis();
    let early = fed.endorse(&fed.founder(0), g, &jc)?;
    let new0 = fed.new_key();
    let rot = fed.rotate(&fed.founder(0), &new0)?;
    let other = fed.endorse(&fed.founder(1), g, &jc)?;
    let state = fed.eval(&[jc, early, rot, other]);
    assert!(state.is_member(&public_key(&kc)));
    Ok(())
}

#[test]
fn two_rotations_from_one_key_follow_the_lowest_record_id() -> TestResult {
    let mut fed = Fed::new(9, 3, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let f0 = fed.fpk(0);
    let [a, b] = [fed.new_key(), fed.new_key()];
    let ra = fed.rotate(&fed.founder(0), &a)?;
    let rb = fed.rotate(&fed.founder(0), &b)?;
    let (followed, ignored) = if ra.id < rb.id {
        (&ra, &rb)
    } else {
        (&rb, &ra)
    };
    let key_of = |r: &Record| match &r.content.body {
        Body::KeyRotation(k) => k.new_key,
        _ => unreachable!(),
    };
    for records in [vec![ra.clone(), rb.clone()], vec![rb.clone(), ra.clone()]] {
        let state = fed.eval(&records);
        assert_eq!(
            state.anomalies,
            vec![Anomaly::RotationEquivocation {
                key: f0,
                followed: followed.id,
            }]
        );
        assert_eq!(state.members[&f0].key, key_of(followed));
        assert_eq!(state.region_of(&key_of(followed)), Some(f0));
        assert_eq!(state.region_of(&key_of(ignored)), None);
        assert_eq!(
            state.author_status(&key_of(ignored), fed.now),
            AuthorStatus::Unknown
        );
    }
    Ok(())
}

#[test]
fn a_rotation_chain_is_followed_to_its_end() -> TestResult {
    let mut fed = Fed::new(10, 2, ThresholdRule::Fixed(1), ThresholdRule::Majority)?;
    let f1 = fed.fpk(1);
    let [a, b] = [fed.new_key(), fed.new_key()];
    let r1 = fed.rotate(&fed.founder(1), &a)?;
    let r2 = fed.rotate(&a, &b)?;
    let state = fed.eval(&[r2.clone(), r1.clone()]);
    assert_eq!(state.members[&f1].key, public_key(&b));
    assert_eq!(
        state.author_status(&public_key(&a), r2.content.created_at_ms),
        AuthorStatus::RetiredKey(f1)
    );
    assert_eq!(
        state.author_status(&public_key(&a), r1.content.created_at_ms),
        AuthorStatus::Member(f1)
    );
    assert_eq!(state.region_of(&public_key(&b)), Some(f1));
    Ok(())
}

#[test]
fn a_rotation_to_a_key_that_belongs_to_another_region_is_ignored() -> TestResult {
    let mut fed = Fed::new(11, 3, ThresholdRule::Fixed(2), ThresholdRule::Majority)?;
    let (f0, f1) = (fed.fpk(0), fed.fpk(1));
    let stolen = fed.founder(1);
    let rot = fed.rotate(&fed.founder(0), &stolen)?;
    let state = fed.eval(std::slice::from_ref(&rot));
    assert_eq!(
        state.anomalies,
        vec![Anomaly::RotationKeyTaken { record: rot.id }]
    );
    assert_eq!(state.members[&f0].key, f0);
    assert_eq!(state.region_of(&f1), Some(f1));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 9. Re-admission
// ---------------------------------------------------------------------------------------------

#[test]
fn a_removed_region_that_asks_again_and_is_endorsed_is_a_member_again() -> TestResult {
    let mut fed = Fed::new(12, 4, ThresholdRule::Fixed(2), ThresholdRule::Fixed(2))?;
    let kc = fed.new_key();
    let c = public_key(&kc);
    let jc = fed.join(&kc, 6)?;
    let g = fed.genesis();
    let mut records = vec![jc.clone()];
    records.push(fed.endorse(&fed.founder(0), g, &jc)?);
    records.push(fed.endorse(&fed.founder(1), g, &jc)?);
    let s1 = fed.eval(&records).digest;
    records.push(fed.vote(&fed.founder(0), s1, c)?);
    records.push(fed.vote(&fed.founder(1), s1, c)?);
    let state = fed.eval(&records);
    assert!(!state.is_member(&c));
    assert_eq!(state.former.get(&c), Some(&Change::Remove(c)));
    assert_eq!(state.author_status(&c, fed.now), AuthorStatus::NotMember(c));
    let s2 = state.digest;

    let again = fed.join(&kc, 6)?;
    records.push(again.clone());
    records.push(fed.endorse(&fed.founder(2), s2, &again)?);
    records.push(fed.endorse(&fed.founder(3), s2, &again)?);
    let state = fed.eval(&records);
    assert!(state.is_member(&c));
    assert!(!state.former.contains_key(&c));
    assert_eq!(state.members[&c].admitted_in, Some(2));
    let changes: Vec<_> = state.history.iter().map(|t| t.changes.clone()).collect();
    assert_eq!(
        changes,
        vec![
            vec![Change::Admit(c)],
            vec![Change::Remove(c)],
            vec![Change::Admit(c)]
        ]
    );
    assert_eq!(state.author_status(&c, fed.now), AuthorStatus::Member(c));
    Ok(())
}

#[test]
fn a_removed_founder_can_be_readmitted() -> TestResult {
    let mut fed = Fed::new(13, 3, ThresholdRule::Fixed(2), ThresholdRule::Fixed(2))?;
    let f0 = fed.fpk(0);
    let g = fed.genesis();
    let mut records = vec![
        fed.vote(&fed.founder(1), g, f0)?,
        fed.vote(&fed.founder(2), g, f0)?,
    ];
    let s1 = fed.eval(&records).digest;
    let jr = fed.join(&fed.founder(0), 0)?;
    records.push(jr.clone());
    records.push(fed.endorse(&fed.founder(1), s1, &jr)?);
    records.push(fed.endorse(&fed.founder(2), s1, &jr)?);
    let state = fed.eval(&records);
    assert!(state.is_member(&f0));
    assert_eq!(state.members[&f0].admitted_in, Some(1));
    Ok(())
}

#[test]

fn a_removed_region_can_ask_again_with_its_rotated_key() -> TestResult {
    let mut fed = Fed::new(14, 3, ThresholdRule::Fixed(2), ThresholdRule::Fixed(2))?;
    let f0 = fed.fpk(0);
    let new0 = fed.new_key();
    let n0 = public_key(&new0);
    let g = fed.genesis();
    let mut records = vec![
        fed.rotate(&fed.founder(0), &new0)?,
        fed.vote(&fed.founder(1), g, f0)?,
        fed.vote(&fed.founder(2), g, f0)?,
    ];
    let state = fed.eval(&records);
    assert_eq!(state.region_of(&n0), Some(f0));
    let s1 = state.digest;
    // The former member asks again with its current key, as membership.rs says it may.
    let jr = fed.join(&new0, 0)?;
    records.push(jr.clone());
    let state = fed.eval(&records);
    // Adding a join request must not rewrite the past rotation.
    assert_eq!(state.region_of(&n0), Some(f0));
    assert!(state.anomalies.is_empty(), "{:?}", state.anomalies);
    records.push(fed.endorse_region(&fed.founder(1), s1, f0, jr.id)?);
    records.push(fed.endorse_region(&fed.founder(2), s1, f0, jr.id)?);
    let state = fed.eval(&records);
    assert!(state.is_member(&f0));
    assert_eq!(state.members[&f0].key, n0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 10. Foreign and irrelevant records
// ---------------------------------------------------------------------------------------------

#[test]
fn records_of_another_federation_and_other_kinds_are_ignored() -> TestResult {
    let mut fed = Fed::new(15, 3, ThresholdRule::Fixed(2), ThresholdRule::Fixed(1))?;
    let mut other = Fed::new(15, 3, ThresholdRule::Fixed(1), ThresholdRule::Fixed(1))?;
    assert_ne!(fed.id, other.id);
    let kc = fed.new_key();
    let jc = fed.join(&kc, 6)?;
    let g = fed.genesis();
    let base = vec![jc.clone()];
    let before = fed.eval(&base);

    let mut noisy = base.clone();
    // The same founders, signing for another federation but naming this one's state and
    // join request: enough to admit C and remove f2 if they counted.
    noisy.push(other.endorse(&other.founder(0), g, &jc)?);
    noisy.push(other.endorse(&other.founder(1), g, &jc)?);
    noisy.push(other.vote(&other.founder(0), g, fed.fpk(2))?);
    noisy.push(other.leave(&other.founder(1), g)?);
    let rot_key = signing_key(&mut ChaCha8Rng::seed_from_u64(1015));
    noisy.push(other.rotate(&other.founder(0), &rot_key)?);
    // Shared kinds of this federation.
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    for (i, kind) in [Kind::Cooperation, Kind::RegionProfile, Kind::Knowledge]
        .into_iter()
        .enumerate()
    {
        let content = samples::content(
            &mut rng,
            fed.id,
            fed.fpk(i),
            kind,
            "offer-1",
            fed.now + 1_000,
        );
        noisy.push(Record::sign(&content, &fed.founder(i))?);
    }
    let state = fed.eval(&noisy);
    assert_eq!(state, before);
    assert_eq!(state.digest, g);
    assert!(state.anomalies.is_empty());
    assert_eq!(state.region_of(&public_key(&rot_key)), None);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Property: the result is a function of the set of records
// ---------------------------------------------------------------------------------------------

/// A seeded simulation of a federation's membership history.
struct Sim {
    fed: Fed,
    rng: ChaCha8Rng,
    /// Every signing key the simulation made, by public key.
    secrets: BTreeMap<PublicKey, SigningKey>,
    /// Region id → the key the region believes is its current one.
    current: BTreeMap<PublicKey, PublicKey>,
    /// Candidate regions (their first keys); none is a founder.
    candidates: Vec<PublicKey>,
    /// Join requests made so far, by region.
    joins: BTreeMap<PublicKey, Vec<RecordId>>,
    /// Digests that were left behind, for stale actions.
    seen: Vec<Hash32>,
    records: Vec<Record>,
}

impl Sim {
    fn new(
        seed: u64,
        founders: usize,
        admission: ThresholdRule,
        removal: ThresholdRule,
        candidates: usize,
    ) -> Result<Sim, Error> {
        let mut fed = Fed::new(seed, founders, admission, removal)?;
        let mut secrets = BTreeMap::new();
        let mut current = BTreeMap::new();
        for k in &fed.founders {
            secrets.insert(public_key(k), k.clone());
            current.insert(public_key(k), public_key(k));
        }
        let mut cands = Vec::new();
        for _ in 0..candidates {
            let k = fed.new_key();
            secrets.insert(public_key(&k), k.clone());
            current.insert(public_key(&k), public_key(&k));
            cands.push(public_key(&k));
        }
        Ok(Sim {
            fed,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5eed),
            secrets,
            current,
            candidates: cands,
            joins: BTreeMap::new(),
            seen: Vec::new(),
            records: Vec::new(),
        })
    }

    fn secret(&self, key: &PublicKey) -> SigningKey {
        self.secrets[key].clone()
    }

    fn fresh_key(&mut self) -> SigningKey {
        let k = self.fed.new_key();
        self.secrets.insert(public_key(&k), k.clone());
        k
    }

    /// Usually the current digest; sometimes a left-behind or a made-up one.
    fn state_to_name(&mut self, current: Hash32) -> Hash32 {
        if !self.rng.random_bool(0.1) {
            return current;
        }
        match self.seen.choose(&mut self.rng) {
            Some(old) if self.rng.random_bool(0.5) => *old,
            _ => {
                let mut h = [0u8; 32];
                self.rng.fill(&mut h[..]);
                Hash32(h)
            }
        }
    }

    /// An endorsement target: a pending candidate and one of its join requests.
    fn pick_pending(&mut self, pending: &[Pending]) -> Option<(PublicKey, RecordId)> {
        let p = pending.choose(&mut self.rng)?;
        let jr = match self.joins.get(&p.candidate) {
            Some(ids) if self.rng.random_bool(0.3) => {
                *ids.choose(&mut self.rng).unwrap_or(&p.join_request)
            }
            _ => p.join_request,
        };
        Some((p.candidate, jr))
    }

    /// One round: evaluate the records so far, then add a batch of concurrent actions.
    fn round(&mut self) -> Result<(), Error> {
        let state = self.fed.eval(&self.records);
        let digest = state.digest;
        self.seen.extend(state.history.iter().map(|t| t.from));
        let members: Vec<(PublicKey, PublicKey)> =
            state.members.values().map(|m| (m.region, m.key)).collect();
        let mut batch = Vec::new();
        for &(region, key) in &members {
            let sk = self.secret(&key);
            let named = self.state_to_name(digest);
            match self.rng.random_range(0..100u32) {
                0..50 => {
                    if let Some((cand, jr)) = self.pick_pending(&state.pending) {
                        batch.push(self.fed.endorse_region(&sk, named, cand, jr)?);
                    }
                }
                50..65 => {
                    if let Some(&(target, _)) = members.choose(&mut self.rng)
                        && target != region
                    {
                        batch.push(self.fed.vote(&sk, named, target)?);
                    }
                }
                65..69 => batch.push(self.fed.leave(&sk, named)?),
                69..77 => {
                    let new = self.fresh_key();
                    let r1 = self.fed.rotate(&sk, &new)?;
                    let mut followed = (r1.id, public_key(&new));
                    batch.push(r1);
                    if self.rng.random_bool(0.25) {
                        let other = self.fresh_key();
                        let r2 = self.fed.rotate(&sk, &other)?;
                        if r2.id < followed.0 {
                            followed = (r2.id, public_key(&other));
                        }
                        batch.push(r2);
                    }
                    self.current.insert(region, followed.1);
                }
                _ => {}
            }
        }
        let candidates = self.candidates.clone();
        for (i, c) in candidates.iter().enumerate() {
            if !state.is_member(c) && self.rng.random_bool(0.4) {
                let sk = self.secret(&self.current[c]);
                let jr = self.fed.join(&sk, i)?;
                self.joins.entry(*c).or_default().push(jr.id);
                batch.push(jr);
            }
        }
        // Actions by a non-member: a candidate (or former member) endorsing or voting.
        let outsiders: Vec<PublicKey> = candidates
            .iter()
            .filter(|c| !state.is_member(c))
            .copied()
            .collect();
        if let Some(&outsider) = outsiders.choose(&mut self.rng)
            && self.rng.random_bool(0.3)
        {
            let sk = self.secret(&self.current[&outsider]);
            if let Some((cand, jr)) = self.pick_pending(&state.pending)
                && cand != outsider
            {
                batch.push(self.fed.endorse_region(&sk, digest, cand, jr)?);
            } else if let Some(&(target, _)) = members.choose(&mut self.rng) {
                batch.push(self.fed.vote(&sk, digest, target)?);
            }
        }
        self.records.extend(batch);
        Ok(())
    }

    /// Records that must change nothing: another kind, and another federation.
    fn add_noise(&mut self) -> Result<(), Error> {
        let f0 = self.fed.founder(0);
        let content = samples::content(
            &mut self.rng,
            self.fed.id,
            public_key(&f0),
            Kind::Cooperation,
            "offer-1",
            self.fed.now + 1_000,
        );
        self.records.push(Record::sign(&content, &f0)?);
        let mut foreign = content;
        foreign.federation = FederationId([0xfe; 32]);
        foreign.kind = Kind::Leave;
        foreign.body = Body::Leave(Leave {
            state: genesis_digest(&self.fed.id),
            reason: String::new(),
        });
        self.records.push(Record::sign(&foreign, &f0)?);
        Ok(())
    }
}

fn check_invariants(state: &MembershipState) -> Result<(), TestCaseError> {
    let founders: BTreeSet<PublicKey> = state.charter.founders.iter().map(|f| f.key).collect();
    for (region, member) in &state.members {
        prop_assert_eq!(region, &member.region);
        match member.admitted_in {
            None => prop_assert!(
                founders.contains(region),
                "member neither founder nor admitted"
            ),
            Some(i) => prop_assert!(
                state
                    .history
                    .get(i)
                    .is_some_and(|t| t.changes.contains(&Change::Admit(*region))),
                "admitted_in does not point at its admission"
            ),
        }
        prop_assert!(
            !state.former.contains_key(region),
            "member and former at once"
        );
        prop_assert_eq!(
            state.author_status(&member.key, u64::MAX),
            AuthorStatus::Member(*region)
        );
        prop_assert_eq!(state.region_of(&member.key), Some(*region));
    }
    let mut from = genesis_digest(&state.federation);
    for t in &state.history {
        prop_assert!(!t.changes.is_empty(), "empty transition");
        prop_assert!(
            t.changes.windows(2).all(|w| w[0] < w[1]),
            "changes not strictly sorted: {:?}",
            t.changes
        );
        prop_assert_eq!(t.from, from);
        from = t.to;
    }
    prop_assert_eq!(from, state.digest);
    for p in &state.pending {
        prop_assert!(!state.is_member(&p.candidate));
        prop_assert!(p.endorsers.iter().all(|e| state.is_member(e)));
        prop_assert!(p.endorsers.windows(2).all(|w| w[0] < w[1]));
    }
    Ok(())
}

fn threshold() -> impl Strategy<Value = ThresholdRule> {
    prop_oneof![
        (1u16..=3).prop_map(ThresholdRule::Fixed),
        Just(ThresholdRule::Majority),
    ]
}

fn fail(e: Error) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]

    fn membership_is_a_function_of_the_set_of_records(
        seed in any::<u64>(),
        founders in 2usize..=6,
        admission in threshold(),
        removal in threshold(),
        candidates in 0usize..=6,
        rounds in 1usize..=8,
    ) {
        let mut sim = Sim::new(seed, founders, admission, removal, candidates).map_err(fail)?;
        for _ in 0..rounds {
            sim.round().map_err(fail)?;
        }
        sim.add_noise().map_err(fail)?;
        let records = sim.records.clone();
        let expected = sim.fed.eval(&records);
        check_invariants(&expected)?;

        let mut reversed = records.clone();
        reversed.reverse();
        prop_assert_eq!(&sim.fed.eval(&reversed), &expected);
        for _ in 0..3 {
            let mut shuffled = records.clone();
            let dups = sim.rng.random_range(0..=records.len());
            for _ in 0..dups {
                if let Some(r) = records.choose(&mut sim.rng) {
                    shuffled.push(r.clone());
                }
            }
            shuffled.shuffle(&mut sim.rng);
            prop_assert_eq!(&sim.fed.eval(&shuffled), &expected);
        }
    }
}
