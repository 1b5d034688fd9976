//! Membership as data: the charter, join requests, endorsements, removal votes, leaves and key
//! rotations, and the pure rule that turns a set of them into the federation's member set.
//!
//! The rule (SPEC.md, "Membership") is a function of the *set* of records: [`evaluate`] sorts
//! everything by id before looking at it, so the order and number of times records arrived
//! cannot change the result. State-bound actions (endorsement, removal vote, leave) name the
//! digest of the membership state they were made in and count only in that state; the chain of
//! states is replayed from the charter. A record naming a state that is not on the chain changes
//! nothing. Records made concurrently in the same state (for example on both sides of a
//! partition) merge: every change that reaches its threshold in that state applies in one
//! transition, and actions made in a state the merge replaced are re-issued by their nodes.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};

use crate::bytes::{FederationId, Hash32, PublicKey, RecordId, RegionId, SignatureBytes};
use crate::envelope::{Body, Record, author_key};
use crate::error::Error;
use crate::types::RegionProfile;

/// Domain of a founder's signature over the charter bytes.
pub const CHARTER_SIGNING_DOMAIN: &[u8] = b"kim/charter/v1";
/// Domain of the new key's proof of possession in a key rotation.
pub const ROTATION_SIGNING_DOMAIN: &[u8] = b"kim/key-rotation/v1";
/// BLAKE3 derive-key context of the federation id.
pub const FEDERATION_ID_CONTEXT: &str = "kim 2026 federation id v1";
/// BLAKE3 derive-key context of the genesis membership state digest.
pub const GENESIS_CONTEXT: &str = "kim 2026 membership genesis v1";
/// BLAKE3 derive-key context of each following membership state digest.
pub const TRANSITION_CONTEXT: &str = "kim 2026 membership transition v1";

/// How many distinct votes a decision needs, given how many may vote.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdRule {
    /// At least k votes (capped at the number of eligible voters, so a shrinking federation can
    /// still decide).
    Fixed(u16),
    /// More than half of the eligible voters.
    Majority,
    /// At least numerator/denominator of the eligible voters, rounded up.
    Fraction { numerator: u16, denominator: u16 },
}

impl ThresholdRule {
    /// Distinct votes needed when `eligible` members may vote; always at least one.
    pub fn required(&self, eligible: usize) -> usize {
        let needed = match *self {
            ThresholdRule::Fixed(k) => usize::from(k).min(eligible),
            ThresholdRule::Majority => eligible / 2 + 1,
            ThresholdRule::Fraction {
                numerator,
                denominator,
            } => {
                let den = usize::from(denominator.max(1));
                (eligible * usize::from(numerator)).div_ceil(den)
            }
        };
        needed.max(1)
    }

    fn check(&self) -> Result<(), Error> {
        match *self {
            ThresholdRule::Fixed(0) => Err(Error::BadCharter {
                reason: "a fixed threshold must be at least 1",
            }),
            ThresholdRule::Fraction {
                numerator,
                denominator,
            } if numerator == 0 || denominator == 0 || numerator > denominator => {
                Err(Error::BadCharter {
                    reason: "a fraction threshold needs 0 < numerator <= denominator",
                })
            }
            _ => Ok(()),
        }
    }
}

/// A founding region as named in the charter.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Founder {
    pub key: PublicKey,
    pub name: String,
    pub nuts: Vec<String>,
}

/// The federation's founding document. Its hash is the federation id.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charter {
    pub name: String,
    pub founders: Vec<Founder>,
    /// Endorsements needed to admit a region, out of the current members.
    pub admission: ThresholdRule,
    /// Votes needed to remove a region, out of the current members other than that region.
    pub removal: ThresholdRule,
    pub created_at_ms: u64,
}

impl Charter {
    /// The canonical bytes everyone signs and hashes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        postcard::to_stdvec(self).map_err(|e| Error::Malformed {
            reason: e.to_string(),
        })
    }

    /// Decodes charter bytes, insisting on canonical form and sane contents.
    pub fn from_bytes(bytes: &[u8]) -> Result<Charter, Error> {
        if bytes.len() > crate::limits::CHARTER_BYTES_MAX {
            return Err(Error::RecordTooLarge {
                size: bytes.len(),
                max: crate::limits::CHARTER_BYTES_MAX,
            });
        }
        let (charter, rest) =
            postcard::take_from_bytes::<Charter>(bytes).map_err(|e| Error::Malformed {
                reason: format!("charter: {e}"),
            })?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes { count: rest.len() });
        }
        if charter.to_bytes()? != bytes {
            return Err(Error::NonCanonical);
        }
        Ok(charter)
    }

    /// Checks the charter's own rules (founders, thresholds, names).
    pub fn check(&self) -> Result<(), Error> {
        if self.founders.is_empty() {
            return Err(Error::BadCharter {
                reason: "a charter needs at least one founder",
            });
        }
        if self.founders.len() > crate::limits::FOUNDERS_MAX {
            return Err(Error::TooManyItems {
                field: "founders",
                len: self.founders.len(),
                max: crate::limits::FOUNDERS_MAX,
            });
        }
        let distinct: BTreeSet<_> = self.founders.iter().map(|f| f.key).collect();
        if distinct.len() != self.founders.len() {
            return Err(Error::BadCharter {
                reason: "a founder key is listed twice",
            });
        }
        self.admission.check()?;
        self.removal.check()
    }
}

/// BLAKE3 (derive-key mode) of the charter bytes: the federation id.
pub fn federation_id(charter_bytes: &[u8]) -> FederationId {
    FederationId(blake3::derive_key(FEDERATION_ID_CONTEXT, charter_bytes))
}

/// One founder's signature over the charter bytes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FounderSignature {
    pub founder: PublicKey,
    pub signature: SignatureBytes,
}

/// Body of the charter record: the charter's exact bytes and every founder's signature on them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharterRecord {
    /// The charter's exact bytes (hex in JSON).
    #[serde(with = "crate::bytes::hex_vec")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub charter: Vec<u8>,
    pub founder_signatures: Vec<FounderSignature>,
}

impl CharterRecord {
    /// Signs the charter bytes as one founder.
    pub fn founder_sign(charter_bytes: &[u8], key: &SigningKey) -> FounderSignature {
        let mut msg = CHARTER_SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(charter_bytes);
        FounderSignature {
            founder: PublicKey(key.verifying_key().to_bytes()),
            signature: SignatureBytes(key.sign(&msg).to_bytes()),
        }
    }

    /// Decodes the charter and checks that every founder, and nobody else, signed it.
    pub fn verify(&self) -> Result<Charter, Error> {
        let charter = Charter::from_bytes(&self.charter)?;
        charter.check()?;
        let mut msg = CHARTER_SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&self.charter);
        let mut signed = BTreeSet::new();
        for sig in &self.founder_signatures {
            if !charter.founders.iter().any(|f| f.key == sig.founder) || !signed.insert(sig.founder)
            {
                return Err(Error::BadFounderSignature {
                    founder: sig.founder.to_hex(),
                });
            }
            let key = author_key(&sig.founder)?;
            key.verify_strict(&msg, &Signature::from_bytes(&sig.signature.0))
                .map_err(|_| Error::BadFounderSignature {
                    founder: sig.founder.to_hex(),
                })?;
        }
        if let Some(missing) = charter.founders.iter().find(|f| !signed.contains(&f.key)) {
            return Err(Error::BadFounderSignature {
                founder: missing.key.to_hex(),
            });
        }
        Ok(charter)
    }
}

/// A region asks to join; signed by the candidate's key (which becomes its region id).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub profile: RegionProfile,
    pub message: String,
}

/// A member endorses a candidate's join request, in the membership state it names.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    pub state: Hash32,
    pub candidate: RegionId,
    pub join_request: RecordId,
}

/// A member votes to remove another, in the membership state it names.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalVote {
    pub state: Hash32,
    pub target: RegionId,
    pub reason: String,
}

/// A member leaves of its own accord, in the membership state it names.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    pub state: Hash32,
    pub reason: String,
}

/// Hands a region over from the signing (old) key to `new_key`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    pub new_key: PublicKey,
    /// The new key's signature over `ROTATION_SIGNING_DOMAIN ‖ federation ‖ old key`, proving
    /// that whoever rotates holds the new key.
    pub proof: SignatureBytes,
}

impl KeyRotation {
    fn proof_message(federation: &FederationId, old_key: &PublicKey) -> Vec<u8> {
        let mut msg = ROTATION_SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&federation.0);
        msg.extend_from_slice(&old_key.0);
        msg
    }

    /// Builds a rotation body from the new signing key.
    pub fn new(federation: &FederationId, old_key: &PublicKey, new_key: &SigningKey) -> Self {
        KeyRotation {
            new_key: PublicKey(new_key.verifying_key().to_bytes()),
            proof: SignatureBytes(
                new_key
                    .sign(&Self::proof_message(federation, old_key))
                    .to_bytes(),
            ),
        }
    }

    /// Checks the new key's proof of possession.
    pub fn verify_proof(
        &self,
        federation: &FederationId,
        old_key: &PublicKey,
    ) -> Result<(), Error> {
        let key = author_key(&self.new_key).map_err(|_| Error::BadRotationProof)?;
        key.verify_strict(
            &Self::proof_message(federation, old_key),
            &Signature::from_bytes(&self.proof.0),
        )
        .map_err(|_| Error::BadRotationProof)
    }
}

/// One change of the member set.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Admit(RegionId),
    Remove(RegionId),
    Leave(RegionId),
}

/// One step of the membership chain.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub from: Hash32,
    pub to: Hash32,
    /// Sorted; applied together.
    pub changes: Vec<Change>,
}

/// A current member.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub region: RegionId,
    /// The key the region signs with now.
    pub key: PublicKey,
    pub name: String,
    /// Index in the history of the transition that admitted it; `None` for founders.
    pub admitted_in: Option<usize>,
}

/// A candidate waiting for endorsements in the current state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    pub candidate: RegionId,
    pub name: String,
    pub join_request: RecordId,
    /// Created-at of the join request (the candidate's clock); it expires
    /// [`crate::limits::JOIN_REQUEST_TTL_MS`] later.
    pub requested_at_ms: u64,
    /// Members whose endorsement names the current state.
    pub endorsers: Vec<RegionId>,
    pub required: usize,
}

impl Pending {
    /// Whether the join request is too old to be endorsed at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms
            >= self
                .requested_at_ms
                .saturating_add(crate::limits::JOIN_REQUEST_TTL_MS)
    }
}

/// Something operators should look at; never changes the member set by itself.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Anomaly {
    /// A key signed more than one valid rotation; the lowest record id was followed.
    RotationEquivocation { key: PublicKey, followed: RecordId },
    /// A rotation to a key that already belongs to a region was ignored.
    RotationKeyTaken { record: RecordId },
    /// Actions naming a state that is not on the chain (stale or unknown).
    OffChainActions { count: usize },
}

/// What the membership rule says about a record's author.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorStatus {
    /// The author key is the current key of a current member.
    Member(RegionId),
    /// The key belonged to this member but was rotated away before the record was made.
    RetiredKey(RegionId),
    /// The key belongs to a region that is not a member now (candidate, removed, left).
    NotMember(RegionId),
    /// Nobody the federation knows.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyInfo {
    region: RegionId,
    /// created-at of the rotation that retired this key.
    retired_at_ms: Option<u64>,
}

/// The member set and everything derived with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipState {
    pub federation: FederationId,
    pub charter: Charter,
    /// Digest of the current state; new actions must name it.
    pub digest: Hash32,
    pub members: BTreeMap<RegionId, Member>,
    /// Regions that were members and are not now, with the change that took them out.
    pub former: BTreeMap<RegionId, Change>,
    pub pending: Vec<Pending>,
    /// Every region that asked to join (members included), with its newest join request.
    pub join_requests: BTreeMap<RegionId, RecordId>,
    pub history: Vec<Transition>,
    pub anomalies: Vec<Anomaly>,
    keys: BTreeMap<PublicKey, KeyInfo>,
}

impl MembershipState {
    /// Whether `region` is a member now.
    pub fn is_member(&self, region: &RegionId) -> bool {
        self.members.contains_key(region)
    }

    /// The region a key belongs (or belonged) to.
    pub fn region_of(&self, key: &PublicKey) -> Option<RegionId> {
        self.keys.get(key).map(|k| k.region)
    }

    /// Decides whether a record signed by `author` at `created_at_ms` comes from a member.
    pub fn author_status(&self, author: &PublicKey, created_at_ms: u64) -> AuthorStatus {
        let Some(info) = self.keys.get(author) else {
            return AuthorStatus::Unknown;
        };
        if !self.members.contains_key(&info.region) {
            return AuthorStatus::NotMember(info.region);
        }
        match info.retired_at_ms {
            Some(retired) if created_at_ms >= retired => AuthorStatus::RetiredKey(info.region),
            _ => AuthorStatus::Member(info.region),
        }
    }

    /// The sorted member region ids.
    pub fn member_ids(&self) -> Vec<RegionId> {
        self.members.keys().copied().collect()
    }
}

/// Digest of the first membership state of a federation.
pub fn genesis_digest(federation: &FederationId) -> Hash32 {
    Hash32(blake3::derive_key(GENESIS_CONTEXT, &federation.0))
}

fn transition_digest(from: &Hash32, changes: &[Change]) -> Hash32 {
    let mut input = from.0.to_vec();
    for change in changes {
        let (tag, region) = match change {
            Change::Admit(r) => (0u8, r),
            Change::Remove(r) => (1, r),
            Change::Leave(r) => (2, r),
        };
        input.push(tag);
        input.extend_from_slice(&region.0);
    }
    Hash32(blake3::derive_key(TRANSITION_CONTEXT, &input))
}

#[derive(Debug, Clone, Copy)]
enum ActionKind {
    Endorse {
        candidate: RegionId,
        join_request: RecordId,
    },
    Vote {
        target: RegionId,
    },
    Leave,
}

#[derive(Debug, Clone, Copy)]
struct Action {
    author: PublicKey,
    created_at_ms: u64,
    kind: ActionKind,
}

/// Computes the membership state from the charter and a set of records.
///
/// `records` may contain any kinds, duplicates and records of other federations: only this
/// federation's membership records are used, each once. The caller must have verified their
/// signatures and validated them (rotation proofs included).
pub fn evaluate<'a>(
    charter: &Charter,
    federation: FederationId,
    records: impl IntoIterator<Item = &'a Record>,
) -> MembershipState {
    // Deduplicate and order by id, so arrival order cannot matter.
    let mut by_id: BTreeMap<RecordId, &Record> = BTreeMap::new();
    for record in records {
        if record.content.federation == federation && record.content.kind.is_membership() {
            by_id.insert(record.id, record);
        }
    }

    // Keys: founders first, then candidates in join-request id order, then rotation chains.
    let mut keys: BTreeMap<PublicKey, KeyInfo> = BTreeMap::new();
    let mut names: BTreeMap<RegionId, String> = BTreeMap::new();
    for founder in &charter.founders {
        keys.insert(
            founder.key,
            KeyInfo {
                region: founder.key,
                retired_at_ms: None,
            },
        );
        names.insert(founder.key, founder.name.clone());
    }
    let mut join_requests: BTreeMap<RegionId, Vec<RecordId>> = BTreeMap::new();
    let mut rotations: BTreeMap<PublicKey, Vec<(RecordId, PublicKey, u64)>> = BTreeMap::new();
    let mut actions: BTreeMap<Hash32, Vec<Action>> = BTreeMap::new();
    for (id, record) in &by_id {
        let c = &record.content;
        match &c.body {
            Body::JoinRequest(jr) => {
                // A region's first key is the key of its first join request; later requests
                // signed by a rotated key are resolved to the region below.
                join_requests.entry(c.author).or_default().push(*id);
                names
                    .entry(c.author)
                    .or_insert_with(|| jr.profile.name.clone());
            }
            Body::KeyRotation(rot) => {
                rotations
                    .entry(c.author)
                    .or_default()
                    .push((*id, rot.new_key, c.created_at_ms));
            }
            Body::Endorsement(e) => actions.entry(e.state).or_default().push(Action {
                author: c.author,
                created_at_ms: c.created_at_ms,
                kind: ActionKind::Endorse {
                    candidate: e.candidate,
                    join_request: e.join_request,
                },
            }),
            Body::RemovalVote(v) => actions.entry(v.state).or_default().push(Action {
                author: c.author,
                created_at_ms: c.created_at_ms,
                kind: ActionKind::Vote { target: v.target },
            }),
            Body::Leave(l) => actions.entry(l.state).or_default().push(Action {
                author: c.author,
                created_at_ms: c.created_at_ms,
                kind: ActionKind::Leave,
            }),
            _ => {}
        }
    }
    let mut anomalies = Vec::new();
    // Each region's key chain is followed as soon as the region is known: founders first, then
    // candidates in join-request id order. A join request signed by a key some chain already
    // reached belongs to that region (a former member asking again), never to a new one.
    let mut first_keys: Vec<RegionId> = charter.founders.iter().map(|f| f.key).collect();
    first_keys.extend(
        by_id
            .values()
            .filter(|r| matches!(r.content.body, Body::JoinRequest(_)))
            .map(|r| r.content.author),
    );
    let mut followed_regions: BTreeSet<RegionId> = BTreeSet::new();
    for region in first_keys {
        // Skip keys that belong to another region's chain, and chains already followed.
        if keys.get(&region).is_some_and(|info| info.region != region)
            || !followed_regions.insert(region)
        {
            continue;
        }
        keys.entry(region).or_insert(KeyInfo {
            region,
            retired_at_ms: None,
        });
        let mut current = region;
        while let Some(candidates) = rotations.get(&current) {
            let mut followed = None;
            for (id, new_key, created_at_ms) in candidates {
                if keys.contains_key(new_key) {
                    anomalies.push(Anomaly::RotationKeyTaken { record: *id });
                    continue;
                }
                if followed.is_none() {
                    followed = Some((*id, *new_key, *created_at_ms));
                } else if let Some((fid, _, _)) = followed {
                    anomalies.push(Anomaly::RotationEquivocation {
                        key: current,
                        followed: fid,
                    });
                }
            }
            let Some((_, new_key, created_at_ms)) = followed else {
                break;
            };
            if let Some(info) = keys.get_mut(&current) {
                info.retired_at_ms = Some(created_at_ms);
            }
            keys.insert(
                new_key,
                KeyInfo {
                    region,
                    retired_at_ms: None,
                },
            );
            current = new_key;
        }
    }
    anomalies.dedup();

    // Each region's newest join request (latest created-at, then highest id): a candidate
    // whose request expired asks again, and a former member may ask again with its current key.
    let mut requests_by_region: BTreeMap<RegionId, (u64, RecordId)> = BTreeMap::new();
    for (author, ids) in &join_requests {
        let Some(info) = keys.get(author) else {
            continue;
        };
        for id in ids {
            let made = by_id.get(id).map_or(0, |r| r.content.created_at_ms);
            let entry = requests_by_region.entry(info.region).or_insert((made, *id));
            if (made, *id) > *entry {
                *entry = (made, *id);
            }
        }
    }
    let requests_by_region: BTreeMap<RegionId, RecordId> = requests_by_region
        .into_iter()
        .map(|(region, (_, id))| (region, id))
        .collect();
    let all_requests: BTreeSet<(RegionId, RecordId)> = join_requests
        .iter()
        .filter_map(|(author, ids)| keys.get(author).map(|info| (info.region, ids)))
        .flat_map(|(region, ids)| ids.iter().map(move |id| (region, *id)))
        .collect();

    // The acting region of an action, if its key was valid when it was made.
    let acting_region = |action: &Action| -> Option<RegionId> {
        let info = keys.get(&action.author)?;
        match info.retired_at_ms {
            Some(retired) if action.created_at_ms >= retired => None,
            _ => Some(info.region),
        }
    };

    let mut members: BTreeSet<RegionId> = charter.founders.iter().map(|f| f.key).collect();
    let mut admitted_in: BTreeMap<RegionId, usize> = BTreeMap::new();
    let mut former: BTreeMap<RegionId, Change> = BTreeMap::new();
    let mut digest = genesis_digest(&federation);
    let mut history: Vec<Transition> = Vec::new();
    let mut used_states = 0usize;
    // Each round consumes the actions of one distinct state, so this bound is never reached by
    // a correct chain; it only guards against a hash cycle.
    for _ in 0..=actions.len() {
        let Some(round) = actions.get(&digest) else {
            break;
        };
        used_states += 1;
        let tally = tally_round(round, &members, &all_requests, &acting_region);
        let mut reached: BTreeSet<Change> = BTreeSet::new();
        for region in &tally.leaving {
            reached.insert(Change::Leave(*region));
        }
        let removal_needed = charter.removal.required(members.len().saturating_sub(1));
        for (target, voters) in &tally.votes {
            if voters.len() >= removal_needed {
                reached.insert(Change::Remove(*target));
            }
        }
        let admission_needed = charter.admission.required(members.len());
        for (candidate, endorsers) in &tally.endorsements {
            if endorsers.len() >= admission_needed {
                reached.insert(Change::Admit(*candidate));
            }
        }
        if reached.is_empty() {
            break;
        }
        let changes = choose_transition(&digest, &reached, &members, &actions, &acting_region);
        for change in &changes {
            match change {
                Change::Admit(r) => {
                    members.insert(*r);
                    former.remove(r);
                    admitted_in.insert(*r, history.len());
                }
                Change::Remove(r) | Change::Leave(r) => {
                    members.remove(r);
                    admitted_in.remove(r);
                    former.insert(*r, *change);
                }
            }
        }
        let next = transition_digest(&digest, &changes);
        history.push(Transition {
            from: digest,
            to: next,
            changes,
        });
        digest = next;
    }
    let off_chain = actions.len().saturating_sub(used_states);
    if off_chain > 0 {
        anomalies.push(Anomaly::OffChainActions {
            count: actions
                .iter()
                .filter(|(state, _)| {
                    **state != digest && !history.iter().any(|t| t.from == **state)
                })
                .map(|(_, a)| a.len())
                .sum(),
        });
    }

    // Pending candidates: requested, not members, with endorsements naming the current state.
    let current_tally = actions
        .get(&digest)
        .map(|round| tally_round(round, &members, &all_requests, &acting_region));
    let required = charter.admission.required(members.len());
    let pending = requests_by_region
        .iter()
        .filter(|(region, _)| !members.contains(region))
        .map(|(region, jr)| Pending {
            candidate: *region,
            name: names.get(region).cloned().unwrap_or_default(),
            join_request: *jr,
            requested_at_ms: by_id.get(jr).map_or(0, |r| r.content.created_at_ms),
            endorsers: current_tally
                .as_ref()
                .and_then(|t| t.endorsements.get(region))
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            required,
        })
        .collect();

    let current_key = |region: &RegionId| -> PublicKey {
        keys.iter()
            .find(|(_, info)| info.region == *region && info.retired_at_ms.is_none())
            .map_or(*region, |(k, _)| *k)
    };
    let members = members
        .iter()
        .map(|region| {
            (
                *region,
                Member {
                    region: *region,
                    key: current_key(region),
                    name: names.get(region).cloned().unwrap_or_default(),
                    admitted_in: admitted_in.get(region).copied(),
                },
            )
        })
        .collect();
    MembershipState {
        federation,
        charter: charter.clone(),
        digest,
        members,
        former,
        pending,
        join_requests: requests_by_region,
        history,
        anomalies,
        keys,
    }
}

/// Most changes reaching their threshold in one state for which every subset is considered;
/// beyond this, subsets of up to three changes and the merged default are.
pub const TRANSITION_SUBSETS_CHANGES_MAX: usize = 10;
/// Most reached changes for which pairs and triples are considered; beyond it, single changes
/// and the merged default only, so evaluation work stays bounded whatever members sign.
pub const TRANSITION_SMALL_SUBSETS_CHANGES_MAX: usize = 64;

/// Picks the changes of the transition out of `from`, given every change that reached its
/// threshold there.
///
/// The default is all of them together (concurrent changes merge), with a leave preferred over a
/// removal of the same region. But once members have acted in a successor state, that history
/// stands: if actions name the digest of a successor made of some subset of the reached changes,
/// the successor witnessed by the most distinct regions (then the larger subset, then the lower
/// digest) is chosen, and the other changes must be made again in it. So a late or backdated
/// record naming an old state cannot undo transitions others have already built on.
fn choose_transition(
    from: &Hash32,
    reached: &BTreeSet<Change>,
    members: &BTreeSet<RegionId>,
    actions: &BTreeMap<Hash32, Vec<Action>>,
    acting_region: &impl Fn(&Action) -> Option<RegionId>,
) -> Vec<Change> {
    let region_of = |c: &Change| match c {
        Change::Admit(r) | Change::Remove(r) | Change::Leave(r) => *r,
    };
    let leaving: BTreeSet<RegionId> = reached
        .iter()
        .filter(|c| matches!(c, Change::Leave(_)))
        .map(region_of)
        .collect();
    let default: Vec<Change> = reached
        .iter()
        .filter(|c| !matches!(c, Change::Remove(r) if leaving.contains(r)))
        .copied()
        .collect();
    let all: Vec<Change> = reached.iter().copied().collect();
    // Every subset while that is cheap; beyond it, subsets of up to three changes (honest
    // transitions are small) and the default, so a flood of reached changes cannot hide a
    // witnessed successor.
    let subsets: Vec<Vec<Change>> = if all.len() <= TRANSITION_SUBSETS_CHANGES_MAX {
        (1u32..(1u32 << all.len()))
            .map(|mask| {
                all.iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, c)| *c)
                    .collect()
            })
            .collect()
    } else {
        let n = all.len();
        let mut out = vec![default.clone()];
        // Pairs and triples only while their number stays small (64 changes: 43,744 subsets);
        // a flood of more reached changes gets singles, which bounds the work per state.
        let depth = if n <= TRANSITION_SMALL_SUBSETS_CHANGES_MAX {
            3
        } else {
            1
        };
        for a in 0..n {
            out.push(vec![all[a]]);
            if depth < 2 {
                continue;
            }
            for b in a + 1..n {
                out.push(vec![all[a], all[b]]);
                for c in b + 1..n {
                    out.push(vec![all[a], all[b], all[c]]);
                }
            }
        }
        out
    };
    let mut best: Option<(usize, usize, Hash32, Vec<Change>)> = None;
    for subset in subsets {
        let regions: BTreeSet<RegionId> = subset.iter().map(region_of).collect();
        if regions.len() != subset.len() {
            continue; // a region both leaving and removed
        }
        let successor = transition_digest(from, &subset);
        let Some(named) = actions.get(&successor) else {
            continue;
        };
        let witnesses: BTreeSet<RegionId> = named
            .iter()
            .filter_map(acting_region)
            .filter(|r| members.contains(r) || regions.contains(r))
            .collect();
        if witnesses.is_empty() {
            continue;
        }
        let key = (witnesses.len(), subset.len(), successor);
        let better = match &best {
            None => true,
            Some((w, n, d, _)) => {
                (key.0, key.1) > (*w, *n) || ((key.0, key.1) == (*w, *n) && key.2 < *d)
            }
        };
        if better {
            best = Some((key.0, key.1, key.2, subset));
        }
    }
    best.map_or(default, |(_, _, _, subset)| subset)
}

#[derive(Debug, Default)]
struct Tally {
    leaving: BTreeSet<RegionId>,
    votes: BTreeMap<RegionId, BTreeSet<RegionId>>,
    endorsements: BTreeMap<RegionId, BTreeSet<RegionId>>,
}

/// Counts one state's actions: distinct member regions, each action judged in that state.
fn tally_round(
    round: &[Action],
    members: &BTreeSet<RegionId>,
    requests: &BTreeSet<(RegionId, RecordId)>,
    acting_region: &impl Fn(&Action) -> Option<RegionId>,
) -> Tally {
    let mut tally = Tally::default();
    for action in round {
        let Some(actor) = acting_region(action) else {
            continue;
        };
        if !members.contains(&actor) {
            continue;
        }
        match action.kind {
            ActionKind::Leave => {
                tally.leaving.insert(actor);
            }
            ActionKind::Vote { target } => {
                if target != actor && members.contains(&target) {
                    tally.votes.entry(target).or_default().insert(actor);
                }
            }
            ActionKind::Endorse {
                candidate,
                join_request,
            } => {
                if !members.contains(&candidate) && requests.contains(&(candidate, join_request)) {
                    tally
                        .endorsements
                        .entry(candidate)
                        .or_default()
                        .insert(actor);
                }
            }
        }
    }
    tally
}
