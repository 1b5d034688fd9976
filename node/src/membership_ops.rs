//! What this node's region does about membership: invite, endorse or decline candidates, vote
//! to remove a member, leave; and the view operators read (members, pending candidates with
//! their endorsements, former members, this region's own standing).
//!
//! Endorsements, removal votes and leaves name the membership state they are made in (its
//! digest), and count only there (SPEC.md §9.8). When the state moves on before a decision
//! is reached (another region was admitted meanwhile), the action must be made again in the
//! new state. So the operator's decision is kept as an **intent** in local data, and
//! [`Service::reissue_intents`] — run whenever membership changes — signs it again in the
//! current state until the decision is reached or moot. An intent is dropped when the
//! candidate is admitted (or its request expired), when the target is no longer a member, or
//! when this region has left.

use kim_protocol::bytes::to_hex;
use kim_protocol::envelope::{Body, Kind, Record};
use kim_protocol::invitation::{Invitation, SignedInvitation};
use kim_protocol::limits::INVITATION_VALIDITY_MS_MAX;
use kim_protocol::membership::{Change, Endorsement, Leave, MembershipState, RemovalVote};
use kim_protocol::types::RegionProfile;
use kim_protocol::{Hash32, RegionId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ingest::system_now_ms;
use crate::service::{Service, ServiceError};

const INTENT_ENDORSE: &str = "intent/endorse/";
const INTENT_REMOVE: &str = "intent/remove/";
const INTENT_LEAVE: &str = "intent/leave";
const DECLINED: &str = "declined/";

/// A region as the membership view shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberEntry {
    pub region: RegionId,
    pub name: String,
    /// True for founders.
    pub founder: bool,
    /// Whether this is the node's own region.
    pub own: bool,
}

/// A candidate waiting for endorsements.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingEntry {
    pub region: RegionId,
    pub name: String,
    /// The candidate's join request (its record id) and when it was made.
    pub join_request: String,
    pub requested_at_ms: u64,
    /// When the request stops being pending if not admitted.
    pub expires_at_ms: u64,
    /// Members that endorsed it in the current state, and how many are needed.
    pub endorsements: usize,
    pub required: usize,
    pub endorsers: Vec<RegionId>,
    /// This region's decision, if any: "endorsed" or "declined".
    pub our_decision: Option<String>,
    /// The profile the candidate sent with its request, for members to read.
    pub profile: Option<RegionProfile>,
    pub message: String,
}

/// A region that was a member and is not now.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FormerEntry {
    pub region: RegionId,
    pub name: String,
    /// "removed" or "left".
    pub how: String,
}

/// This node's region in the federation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OwnStanding {
    /// "member", "pending" (asked to join, waiting), "former" or "outsider".
    pub state: String,
    /// While pending: endorsements so far and how many are needed.
    pub endorsements: Option<usize>,
    pub required: Option<usize>,
}

/// The federation's membership as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MembershipView {
    pub federation: String,
    pub name: String,
    /// Digest of the current membership state (what new actions name).
    pub state: String,
    /// Admission and removal rules, in words.
    pub admission_rule: String,
    pub removal_rule: String,
    pub members: Vec<MemberEntry>,
    pub pending: Vec<PendingEntry>,
    pub former: Vec<FormerEntry>,
    pub own: OwnStanding,
    /// Membership changes so far, oldest first.
    pub transitions: usize,
    /// Votes this region has cast for removals still open: target regions.
    pub our_removal_votes: Vec<RegionId>,
}

/// Words for a threshold rule.
fn rule_text(rule: &kim_protocol::membership::ThresholdRule) -> String {
    format!("{rule:?}").to_lowercase()
}

fn short(hash: &[u8]) -> String {
    to_hex(&hash[..8])
}

/// An own standing, from the membership state.
pub fn own_standing(state: &MembershipState, region: &RegionId, now_ms: u64) -> OwnStanding {
    if state.is_member(region) {
        return OwnStanding {
            state: "member".into(),
            endorsements: None,
            required: None,
        };
    }
    if let Some(p) = state
        .pending
        .iter()
        .find(|p| p.candidate == *region && !p.is_expired(now_ms))
    {
        return OwnStanding {
            state: "pending".into(),
            endorsements: Some(p.endorsers.len()),
            required: Some(p.required),
        };
    }
    OwnStanding {
        state: if state.former.contains_key(region) {
            "former".into()
        } else {
            "outsider".into()
        },
        endorsements: None,
        required: None,
    }
}

impl Service {
    /// The membership view at `now_ms`.
    pub fn membership_view(&self, now_ms: u64) -> Result<MembershipView, ServiceError> {
        let state = self.ingest().membership();
        let store = self.ingest().store();
        let own = self.region();
        let founders: Vec<RegionId> = state.charter.founders.iter().map(|f| f.key).collect();
        let mut pending = Vec::new();
        for p in state.pending.iter().filter(|p| !p.is_expired(now_ms)) {
            let (profile, message) = match store.record(&p.join_request)? {
                Some(bytes) => match Record::decode(bytes) {
                    Ok(record) => match record.content.body {
                        Body::JoinRequest(jr) => (Some(jr.profile), jr.message),
                        _ => (None, String::new()),
                    },
                    Err(_) => (None, String::new()),
                },
                None => (None, String::new()),
            };
            let our_decision = if store
                .local_get(&intent_endorse_key(&p.candidate))?
                .is_some()
            {
                Some("endorsed".to_string())
            } else if store.local_get(&declined_key(&p.candidate))?.is_some() {
                Some("declined".to_string())
            } else {
                None
            };
            pending.push(PendingEntry {
                region: p.candidate,
                name: p.name.clone(),
                join_request: p.join_request.to_hex(),
                requested_at_ms: p.requested_at_ms,
                expires_at_ms: p
                    .requested_at_ms
                    .saturating_add(kim_protocol::limits::JOIN_REQUEST_TTL_MS),
                endorsements: p.endorsers.len(),
                required: p.required,
                endorsers: p.endorsers.clone(),
                our_decision,
                profile,
                message,
            });
        }
        let names = |r: &RegionId| -> String {
            state
                .charter
                .founders
                .iter()
                .find(|f| f.key == *r)
                .map(|f| f.name.clone())
                .unwrap_or_default()
        };
        let mut our_removal_votes = Vec::new();
        for (key, _) in store.local_scan(INTENT_REMOVE)? {
            if let Some(region) = key.strip_prefix(INTENT_REMOVE).and_then(RegionId::from_hex) {
                our_removal_votes.push(region);
            }
        }
        Ok(MembershipView {
            federation: state.federation.to_hex(),
            name: state.charter.name.clone(),
            state: state.digest.to_hex(),
            admission_rule: rule_text(&state.charter.admission),
            removal_rule: rule_text(&state.charter.removal),
            members: state
                .members
                .values()
                .map(|m| MemberEntry {
                    region: m.region,
                    name: m.name.clone(),
                    founder: founders.contains(&m.region),
                    own: m.region == own,
                })
                .collect(),
            pending,
            former: state
                .former
                .iter()
                .map(|(region, change)| FormerEntry {
                    region: *region,
                    name: names(region),
                    how: match change {
                        Change::Leave(_) => "left".into(),
                        _ => "removed".into(),
                    },
                })
                .collect(),
            own: own_standing(&state, &own, now_ms),
            transitions: state.history.len(),
            our_removal_votes,
        })
    }

    fn require_member(&self, state: &MembershipState) -> Result<(), ServiceError> {
        if state.is_member(&self.region()) {
            Ok(())
        } else {
            Err(ServiceError::Conflict(
                "membership.conflict",
                "this region is not a member of the federation: only members decide on membership"
                    .into(),
            ))
        }
    }

    /// Endorses a pending candidate in the current state, and keeps endorsing it in later
    /// states until it is admitted or its request expires.
    pub async fn endorse(&self, candidate: RegionId) -> Result<Record, ServiceError> {
        let _authoring = self.lock_authoring().await;
        let state = self.ingest().membership();
        self.require_member(&state)?;
        let now = system_now_ms();
        let pending = state
            .pending
            .iter()
            .find(|p| p.candidate == candidate)
            .ok_or_else(|| {
                if state.is_member(&candidate) {
                    ServiceError::Conflict(
                        "membership.conflict",
                        format!("{candidate} is already a member"),
                    )
                } else {
                    ServiceError::Missing(
                        "membership.not_found",
                        format!(
                            "no pending join request from {candidate}; see `kim members pending`"
                        ),
                    )
                }
            })?;
        if pending.is_expired(now) {
            return Err(ServiceError::Conflict(
                "membership.conflict",
                format!("the join request of {candidate} expired; the candidate must ask again"),
            ));
        }
        let store = self.ingest().store();
        store.local_delete(&declined_key(&candidate))?;
        store.local_put(
            &intent_endorse_key(&candidate),
            &json!({ "join_request": pending.join_request.to_hex(), "at_ms": now }),
        )?;
        let record = self
            .endorse_in(&state.digest, candidate, pending.join_request)
            .await?;
        Ok(record)
    }

    async fn endorse_in(
        &self,
        state: &Hash32,
        candidate: RegionId,
        join_request: kim_protocol::RecordId,
    ) -> Result<Record, ServiceError> {
        let key = format!("endorse-{}-{}", short(&candidate.0), short(&state.0));
        self.sign_and_ingest(
            Kind::Endorsement,
            &key,
            1,
            Body::Endorsement(Endorsement {
                state: *state,
                candidate,
                join_request,
            }),
            None,
        )
        .await
    }

    /// Records locally that this region does not endorse a candidate (nothing is signed: not
    /// endorsing is the refusal; the note keeps the candidate marked for operators).
    pub async fn decline(&self, candidate: RegionId, reason: String) -> Result<(), ServiceError> {
        let state = self.ingest().membership();
        self.require_member(&state)?;
        if !state.pending.iter().any(|p| p.candidate == candidate) {
            return Err(ServiceError::Missing(
                "membership.not_found",
                format!("no pending join request from {candidate}"),
            ));
        }
        let store = self.ingest().store();
        if store.local_get(&intent_endorse_key(&candidate))?.is_some() {
            return Err(ServiceError::Conflict(
                "membership.conflict",
                format!(
                    "this region already endorsed {candidate} in state {}; an endorsement cannot be \
                 taken back (it stops counting if the state changes)",
                    state.digest
                ),
            ));
        }
        store.local_put(
            &declined_key(&candidate),
            &json!({ "reason": reason, "at_ms": system_now_ms() }),
        )?;
        Ok(())
    }

    /// Votes to remove a member; the vote is cast again in later states until the region is
    /// removed (or leaves).
    pub async fn vote_remove(
        &self,
        target: RegionId,
        reason: String,
    ) -> Result<Record, ServiceError> {
        let _authoring = self.lock_authoring().await;
        let state = self.ingest().membership();
        self.require_member(&state)?;
        if target == self.region() {
            return Err(ServiceError::BadRequest(
                "a region cannot vote itself out; use `kim federation leave`".into(),
            ));
        }
        if !state.is_member(&target) {
            return Err(ServiceError::Missing(
                "membership.not_found",
                format!("{target} is not a member of the federation"),
            ));
        }
        if reason.trim().is_empty() {
            return Err(ServiceError::BadRequest(
                "a removal vote needs a reason (--reason)".into(),
            ));
        }
        self.ingest()
            .store()
            .local_put(&intent_remove_key(&target), &json!({ "reason": reason }))?;
        self.vote_in(&state.digest, target, reason).await
    }

    async fn vote_in(
        &self,
        state: &Hash32,
        target: RegionId,
        reason: String,
    ) -> Result<Record, ServiceError> {
        let key = format!("remove-{}-{}", short(&target.0), short(&state.0));
        self.sign_and_ingest(
            Kind::RemovalVote,
            &key,
            1,
            Body::RemovalVote(RemovalVote {
                state: *state,
                target,
                reason,
            }),
            None,
        )
        .await
    }

    /// Leaves the federation of this region's own accord.
    pub async fn leave(&self, reason: String) -> Result<Record, ServiceError> {
        let _authoring = self.lock_authoring().await;
        let state = self.ingest().membership();
        self.require_member(&state)?;
        self.ingest()
            .store()
            .local_put(INTENT_LEAVE, &json!({ "reason": reason }))?;
        self.leave_in(&state.digest, reason).await
    }

    async fn leave_in(&self, state: &Hash32, reason: String) -> Result<Record, ServiceError> {
        let key = format!("leave-{}", short(&state.0));
        self.sign_and_ingest(
            Kind::Leave,
            &key,
            1,
            Body::Leave(Leave {
                state: *state,
                reason,
            }),
            None,
        )
        .await
    }

    /// Signs the operator's standing decisions again in the current state where they have not
    /// been made there yet, and drops the ones that are settled. Returns how many records it
    /// signed. Runs whenever membership changes.
    pub async fn reissue_intents(&self) -> Result<usize, ServiceError> {
        let _authoring = self.lock_authoring().await;
        let state = self.ingest().membership();
        let store = self.ingest().store();
        let own = self.region();
        let now = system_now_ms();
        let mut signed = 0usize;
        let member = state.is_member(&own);
        for (key, _) in store.local_scan(INTENT_ENDORSE)? {
            let Some(candidate) = key
                .strip_prefix(INTENT_ENDORSE)
                .and_then(RegionId::from_hex)
            else {
                continue;
            };
            let pending = state
                .pending
                .iter()
                .find(|p| p.candidate == candidate && !p.is_expired(now));
            let Some(pending) = pending else {
                // Admitted, expired, or gone: settled.
                store.local_delete(&key)?;
                continue;
            };
            if !member || pending.endorsers.contains(&own) {
                continue;
            }
            let item = format!("endorse-{}-{}", short(&candidate.0), short(&state.digest.0));
            if store.item(&own, Kind::Endorsement, &item)?.is_none() {
                tracing::info!(candidate = %candidate, state = %state.digest,
                    "membership moved on: endorsing the candidate again in the new state");
                self.endorse_in(&state.digest, candidate, pending.join_request)
                    .await?;
                signed += 1;
            }
        }
        for (key, value) in store.local_scan(INTENT_REMOVE)? {
            let Some(target) = key.strip_prefix(INTENT_REMOVE).and_then(RegionId::from_hex) else {
                continue;
            };
            if !state.is_member(&target) {
                store.local_delete(&key)?;
                continue;
            }
            if !member {
                continue;
            }
            let item = format!("remove-{}-{}", short(&target.0), short(&state.digest.0));
            if store.item(&own, Kind::RemovalVote, &item)?.is_none() {
                let reason = value
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("removal vote")
                    .to_string();
                tracing::info!(target = %target, state = %state.digest,
                    "membership moved on: voting again in the new state");
                self.vote_in(&state.digest, target, reason).await?;
                signed += 1;
            }
        }
        if let Some(value) = store.local_get(INTENT_LEAVE)? {
            if member {
                let item = format!("leave-{}", short(&state.digest.0));
                if store.item(&own, Kind::Leave, &item)?.is_none() {
                    let reason = value
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or_default()
                        .to_string();
                    self.leave_in(&state.digest, reason).await?;
                    signed += 1;
                }
            } else {
                store.local_delete(INTENT_LEAVE)?;
            }
        }
        Ok(signed)
    }

    /// Publishes this region's profile if it is a member without one (a newly admitted
    /// region: until now its join request's profile stood in for it). Returns whether it did.
    pub async fn ensure_profile(&self) -> Result<bool, ServiceError> {
        let _authoring = self.lock_authoring().await;
        let state = self.ingest().membership();
        let own = self.region();
        if !state.is_member(&own) {
            return Ok(false);
        }
        let store = self.ingest().store();
        if store.item(&own, Kind::RegionProfile, "profile")?.is_some() {
            return Ok(false);
        }
        let Some(request) = state.join_requests.get(&own) else {
            return Ok(false);
        };
        let Some(bytes) = store.record(request)? else {
            return Ok(false);
        };
        let profile = match Record::decode(bytes) {
            Ok(Record {
                content:
                    kim_protocol::Content {
                        body: Body::JoinRequest(jr),
                        ..
                    },
                ..
            }) => jr.profile,
            _ => return Ok(false),
        };
        self.sign_and_ingest(
            Kind::RegionProfile,
            "profile",
            1,
            Body::RegionProfile(profile),
            None,
        )
        .await?;
        tracing::info!("admitted: published this region's profile");
        Ok(true)
    }

    /// Signs an invitation to the federation, valid for `valid_ms`, naming `bootstrap`
    /// addresses (multiaddrs ending in `/p2p/<peer id>`).
    pub fn invite(&self, bootstrap: Vec<String>, valid_ms: u64) -> Result<String, ServiceError> {
        let state = self.ingest().membership();
        self.require_member(&state)?;
        if valid_ms == 0 || valid_ms > INVITATION_VALIDITY_MS_MAX {
            return Err(ServiceError::BadRequest(format!(
                "an invitation is valid for 1 ms to {} days",
                INVITATION_VALIDITY_MS_MAX / 86_400_000
            )));
        }
        let charter_bytes = self
            .ingest()
            .store()
            .meta(crate::node::CHARTER_META)?
            .ok_or_else(|| {
                ServiceError::Conflict("membership.conflict", "the store holds no charter".into())
            })?;
        let now = system_now_ms();
        let own = self.region();
        let key = self.signing_key();
        let invitation = Invitation {
            federation: state.federation,
            charter_hash: Invitation::hash_charter(&charter_bytes),
            federation_name: state.charter.name.clone(),
            bootstrap,
            inviter: kim_protocol::PublicKey(key.verifying_key().to_bytes()),
            inviter_name: state
                .members
                .get(&own)
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(valid_ms),
        };
        let signed: SignedInvitation = invitation
            .sign(&key)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        signed
            .to_token()
            .map_err(|e| ServiceError::BadRequest(e.to_string()))
    }
}

fn intent_endorse_key(candidate: &RegionId) -> String {
    format!("{INTENT_ENDORSE}{}", candidate.to_hex())
}

fn intent_remove_key(target: &RegionId) -> String {
    format!("{INTENT_REMOVE}{}", target.to_hex())
}

fn declined_key(candidate: &RegionId) -> String {
    format!("{DECLINED}{}", candidate.to_hex())
}
