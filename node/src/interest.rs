//! Expressions of interest: staff of region B respond to an offer of region A; the signed
//! expression goes to A's node only, by the direct protocol, through a durable outbox that
//! retries with backoff until A's node takes it, across restarts of either side. A accepts or
//! declines; on acceptance each side's contact details (local data) are released to the other
//! side only. An outcome (agreement type, date) can then be recorded as a replicated `outcome`
//! record, which the federation overview counts.
//!
//! Local data (never sent anywhere else):
//! - `interest/out/<id>` — what this region sent: offer, status, the answer, their contact.
//! - `interest/in/<id>` — what this region received: from whom, status, their contact.
//! - `outbox/<due ms>-<n>` — direct messages waiting to be delivered, with their attempts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kim_protocol::direct::{Answer, ContactDetails, ContactRelease, DirectMessage, Signed};
use kim_protocol::envelope::{Body, Kind, Record};
use kim_protocol::types::{
    AgreementType, Date, ExpressionOfInterest, ItemRef, Outcome, PartnershipType,
};
use kim_protocol::{RecordId, RegionId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ingest::{Source, system_now_ms};
use crate::net::{NetClient, NetError};
use crate::node::PeerAccess;
use crate::service::{Service, ServiceError};

const OUT: &str = "interest/out/";
const IN: &str = "interest/in/";
const OUTBOX: &str = "outbox/";
/// First wait before a failed delivery is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How often the outbox is looked at (a prefix scan of a few local keys).
pub const OUTBOX_TICK: Duration = Duration::from_millis(100);

/// What staff send with an expression of interest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InterestInput {
    #[serde(default)]
    pub cooperation_sought: Vec<PartnershipType>,
    pub message: String,
    #[serde(default)]
    pub questions: String,
    /// A short presentation of the interested organisation.
    #[serde(default)]
    pub presentation: String,
    /// Released to the offering region only if it accepts (kept here until then).
    #[serde(default)]
    pub contact: ContactDetails,
}

/// An accept or decline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerInput {
    #[serde(default)]
    pub reason: String,
    /// This side's contact, released to the interested region with an acceptance.
    #[serde(default)]
    pub contact: ContactDetails,
}

/// An outcome to record.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeInput {
    pub agreement: AgreementType,
    pub date: Date,
    #[serde(default)]
    pub nace: Option<String>,
    #[serde(default)]
    pub jobs_created: Option<u32>,
}

/// An expression of interest as staff see it, from either side.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InterestView {
    /// The expression's record id.
    pub id: String,
    /// "outgoing" (this region sent it) or "incoming".
    pub direction: String,
    /// Outgoing: queued, delivered, accepted, declined, failed. Incoming: new, accepted,
    /// declined.
    pub status: String,
    /// The other region.
    pub region: String,
    pub offer_key: String,
    pub offer_title: String,
    pub message: String,
    pub questions: String,
    pub presentation: String,
    pub created_at_ms: u64,
    /// The answer's reason, once answered.
    pub reason: Option<String>,
    /// The other side's contact, once released.
    pub their_contact: Option<ContactDetails>,
    /// This side's contact (local), as it will be or was released.
    pub our_contact: Option<ContactDetails>,
    /// Delivery attempts so far (outgoing, while queued) and the last error.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The outcome record, once recorded.
    pub outcome: Option<String>,
}

static OUTBOX_SEQ: AtomicU64 = AtomicU64::new(0);

/// Wakes the outbox loops as soon as something is queued (process-wide: with several nodes in
/// one process each loop just finds its own outbox empty).
pub static OUTBOX_WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn outbox_key(due_ms: u64) -> String {
    format!(
        "{OUTBOX}{due_ms:020}-{:010}",
        OUTBOX_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn bad(message: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest(message.into())
}

fn view(direction: &str, value: &Value) -> Option<InterestView> {
    let text = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let contact = |k: &str| {
        value
            .get(k)
            .filter(|v| !v.is_null())
            .and_then(|v| serde_json::from_value::<ContactDetails>(v.clone()).ok())
    };
    Some(InterestView {
        id: value.get("id")?.as_str()?.to_string(),
        direction: direction.to_string(),
        status: text("status"),
        region: text("region"),
        offer_key: text("offer_key"),
        offer_title: text("offer_title"),
        message: text("message"),
        questions: text("questions"),
        presentation: text("presentation"),
        created_at_ms: value
            .get("created_at_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        reason: value
            .get("reason")
            .and_then(Value::as_str)
            .map(String::from),
        their_contact: contact("their_contact"),
        our_contact: contact("our_contact"),
        attempts: value.get("attempts").and_then(Value::as_u64).unwrap_or(0) as u32,
        last_error: value
            .get("last_error")
            .and_then(Value::as_str)
            .map(String::from),
        outcome: value
            .get("outcome")
            .and_then(Value::as_str)
            .map(String::from),
    })
}

impl Service {
    fn enqueue(
        &self,
        to: &RegionId,
        message: &DirectMessage,
        interest: &RecordId,
    ) -> Result<(), ServiceError> {
        let bytes = message
            .encode()
            .map_err(|e| bad(format!("{e} [{}]", e.code())))?;
        self.ingest().store().local_put(
            &outbox_key(system_now_ms()),
            &json!({
                "to": to.to_hex(),
                "interest": interest.to_hex(),
                "message": kim_protocol::bytes::to_hex(&bytes),
                "attempts": 0,
            }),
        )?;
        OUTBOX_WAKE.notify_waiters();
        Ok(())
    }

    /// Sends an expression of interest in `offer_key` of `region`: signed, kept, and queued for
    /// direct delivery to that region's node.
    pub async fn express_interest(
        &self,
        region: RegionId,
        offer_key: &str,
        input: InterestInput,
    ) -> Result<InterestView, ServiceError> {
        let own = self.region();
        let membership = self.ingest().membership();
        if !membership.is_member(&own) {
            return Err(ServiceError::Conflict(
                "interest.conflict",
                "this region is not a member".into(),
            ));
        }
        if region == own {
            return Err(bad(
                "an expression of interest goes to another region's offer",
            ));
        }
        if !membership.is_member(&region) {
            return Err(ServiceError::Missing(
                "interest.not_found",
                format!("{region} is not a member region"),
            ));
        }
        input
            .contact
            .check()
            .map_err(|e| bad(format!("{e} [{}]", e.code())))?;
        let store = self.ingest().store();
        let entry = store
            .item(&region, Kind::Cooperation, offer_key)?
            .filter(|e| !e.tombstone && e.is_live(system_now_ms()))
            .ok_or_else(|| ServiceError::NotFound {
                kind: Kind::Cooperation,
                region,
                key: offer_key.to_string(),
            })?;
        let title = store
            .record(&entry.id)?
            .and_then(|b| Record::decode(b).ok())
            .and_then(|r| match r.content.body {
                Body::Cooperation(c) => Some(c.title),
                _ => None,
            })
            .unwrap_or_default();
        let body = Body::Interest(ExpressionOfInterest {
            offer: ItemRef {
                region,
                kind: Kind::Cooperation,
                key: offer_key.to_string(),
            },
            offer_record: entry.id,
            cooperation_sought: input.cooperation_sought,
            message: input.message.clone(),
            questions: input.questions.clone(),
            presentation: input.presentation.clone(),
        });
        let key = format!(
            "interest-{}",
            kim_protocol::bytes::to_hex(
                &crate::config::random_bytes().map_err(|e| bad(e.to_string()))?[..6]
            )
        );
        let record = {
            let _authoring = self.lock_authoring().await;
            self.sign_and_ingest(Kind::Interest, &key, 1, body, None)
                .await?
        };
        let local = json!({
            "id": record.id.to_hex(),
            "status": "queued",
            "region": region.to_hex(),
            "offer_key": offer_key,
            "offer_title": title,
            "message": input.message,
            "questions": input.questions,
            "presentation": input.presentation,
            "created_at_ms": record.content.created_at_ms,
            "our_contact": input.contact,
            "attempts": 0,
        });
        store.local_put(&format!("{OUT}{}", record.id.to_hex()), &local)?;
        self.enqueue(
            &region,
            &DirectMessage::Interest(record.bytes.clone()),
            &record.id,
        )?;
        store.flush().await?;
        view("outgoing", &local).ok_or_else(|| bad("interest view"))
    }

    /// Every expression of interest this region sent and received, newest first.
    pub fn interests(&self) -> Result<Vec<InterestView>, ServiceError> {
        let store = self.ingest().store();
        let mut out: Vec<InterestView> = Vec::new();
        for (prefix, direction) in [(OUT, "outgoing"), (IN, "incoming")] {
            for (_, value) in store.local_scan(prefix)? {
                if let Some(v) = view(direction, &value) {
                    out.push(v);
                }
            }
        }
        out.sort_by_key(|v| std::cmp::Reverse(v.created_at_ms));
        Ok(out)
    }

    /// One expression of interest, either direction.
    pub fn interest(&self, id: &str) -> Result<InterestView, ServiceError> {
        let store = self.ingest().store();
        for (prefix, direction) in [(OUT, "outgoing"), (IN, "incoming")] {
            if let Some(value) = store.local_get(&format!("{prefix}{id}"))? {
                return view(direction, &value).ok_or_else(|| bad("damaged interest entry"));
            }
        }
        Err(ServiceError::Missing(
            "interest.not_found",
            format!("no expression of interest {id}"),
        ))
    }

    /// An incoming expression of interest's local entry and its key, or `interest.not_found`.
    fn incoming(&self, id: &str) -> Result<(String, Value), ServiceError> {
        let key = format!("{IN}{id}");
        let value = self.ingest().store().local_get(&key)?.ok_or_else(|| {
            ServiceError::Missing(
                "interest.not_found",
                format!("no incoming expression of interest {id}"),
            )
        })?;
        Ok((key, value))
    }

    /// Answers an incoming expression of interest; an acceptance releases `contact` to the
    /// interested region (and asks for its contact in return).
    pub async fn answer_interest(
        &self,
        id: &str,
        accepted: bool,
        input: AnswerInput,
    ) -> Result<InterestView, ServiceError> {
        let store = self.ingest().store();
        let (key, mut value) = self.incoming(id)?;
        if value.get("status").and_then(Value::as_str) != Some("new") {
            return Err(ServiceError::Conflict(
                "interest.conflict",
                format!(
                    "expression of interest {id} is already {}",
                    value
                        .get("status")
                        .and_then(Value::as_str)
                        .unwrap_or("answered")
                ),
            ));
        }
        let interest = RecordId::from_hex(id).ok_or_else(|| bad("the id is not a record id"))?;
        let from = entry_region(&value).ok_or_else(|| bad("damaged interest entry"))?;
        let answer = Answer {
            federation: self.ingest().federation(),
            interest,
            accepted,
            reason: input.reason.clone(),
            contact: accepted.then(|| input.contact.clone()),
            answered_at_ms: system_now_ms(),
        };
        let signed = Signed::sign(answer, &self.signing_key())
            .map_err(|e| bad(format!("{e} [{}]", e.code())))?;
        value["status"] = json!(if accepted { "accepted" } else { "declined" });
        value["reason"] = json!(input.reason);
        if accepted {
            value["our_contact"] = json!(input.contact);
        }
        store.local_put(&key, &value)?;
        self.enqueue(&from, &DirectMessage::Answer(signed), &interest)?;
        store.flush().await?;
        view("incoming", &value).ok_or_else(|| bad("interest view"))
    }

    /// Records the outcome of an accepted incoming expression of interest: a replicated
    /// `outcome` record of this (the offering) region, counted in the federation overview.
    pub async fn record_outcome(
        &self,
        id: &str,
        input: OutcomeInput,
    ) -> Result<InterestView, ServiceError> {
        let store = self.ingest().store();
        let (key, mut value) = self.incoming(id)?;
        if value.get("status").and_then(Value::as_str) != Some("accepted") {
            return Err(ServiceError::Conflict(
                "interest.conflict",
                "an outcome is recorded for an accepted expression of interest".into(),
            ));
        }
        let interest = RecordId::from_hex(id).ok_or_else(|| bad("the id is not a record id"))?;
        let offer_key = value
            .get("offer_key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let body = Body::Outcome(Outcome {
            offer: ItemRef {
                region: self.region(),
                kind: Kind::Cooperation,
                key: offer_key,
            },
            interest,
            agreement: input.agreement,
            date: input.date,
            nace: input.nace,
            jobs_created: input.jobs_created,
        });
        let item = format!("outcome-{}", &id[..16.min(id.len())]);
        let existing = store.item(&self.region(), Kind::Outcome, &item)?;
        let revision = existing.map_or(1, |e| e.revision + 1);
        let record = {
            let _authoring = self.lock_authoring().await;
            self.sign_and_ingest(Kind::Outcome, &item, revision, body, None)
                .await?
        };
        value["outcome"] = json!(record.id.to_hex());
        store.local_put(&key, &value)?;
        store.flush().await?;
        view("incoming", &value).ok_or_else(|| bad("interest view"))
    }

    /// The local entry (`prefix` is [`OUT`] or [`IN`]) of the interest an answer or a contact
    /// release names, and the region at the other end, once the message is shown to be for
    /// this federation and signed by that region's current key.
    fn counterpart_entry(
        &self,
        prefix: &str,
        interest: &RecordId,
        federation: kim_protocol::FederationId,
        signer: kim_protocol::PublicKey,
    ) -> Result<(String, Value, RegionId), String> {
        if federation != self.ingest().federation() {
            return Err("record.wrong_federation".into());
        }
        let key = format!("{prefix}{}", interest.to_hex());
        let value = self
            .ingest()
            .store()
            .local_get(&key)
            .map_err(|e| e.to_string())?
            .ok_or("interest.unknown")?;
        let region = entry_region(&value).ok_or("interest.unknown")?;
        let membership = self.ingest().membership();
        if membership.members.get(&region).map(|m| m.key) != Some(signer) {
            return Err("direct.wrong_signer".into());
        }
        Ok((key, value, region))
    }

    /// Takes a direct message from a member's node. `Ok(true)` if it was new here.
    pub async fn receive_direct(&self, bytes: Vec<u8>) -> Result<bool, String> {
        let message = DirectMessage::decode(&bytes).map_err(|e| e.code().to_string())?;
        let store = self.ingest().store();
        let membership = self.ingest().membership();
        let err = |e: crate::store::StoreError| e.to_string();
        match message {
            DirectMessage::Interest(record_bytes) => {
                let record =
                    Record::decode(record_bytes.clone()).map_err(|e| e.code().to_string())?;
                let Body::Interest(interest) = &record.content.body else {
                    return Err("direct.not_an_interest".into());
                };
                if interest.offer.region != self.region() {
                    return Err("interest.not_ours".into());
                }
                let key = format!("{IN}{}", record.id.to_hex());
                if store.local_get(&key).map_err(err)?.is_some() {
                    return Ok(false);
                }
                let accepted = self
                    .ingest()
                    .ingest_batch(vec![record_bytes], Source::Direct)
                    .await
                    .pop()
                    .ok_or("direct.internal")?
                    .map_err(|e| e.code().to_string())?;
                let from = membership
                    .region_of(&record.content.author)
                    .unwrap_or(record.content.author);
                let title = store
                    .item(&self.region(), Kind::Cooperation, &interest.offer.key)
                    .map_err(err)?
                    .and_then(|e| store.record(&e.id).ok().flatten())
                    .and_then(|b| Record::decode(b).ok())
                    .and_then(|r| match r.content.body {
                        Body::Cooperation(c) => Some(c.title),
                        _ => None,
                    })
                    .unwrap_or_default();
                store
                    .local_put(
                        &key,
                        &json!({
                            "id": record.id.to_hex(),
                            "status": "new",
                            "region": from.to_hex(),
                            "offer_key": interest.offer.key,
                            "offer_title": title,
                            "message": interest.message,
                            "questions": interest.questions,
                            "presentation": interest.presentation,
                            "created_at_ms": record.content.created_at_ms,
                        }),
                    )
                    .map_err(err)?;
                store.flush().await.map_err(err)?;
                tracing::info!(from = %from, offer = %interest.offer.key, "expression of interest received");
                Ok(accepted.is_new())
            }
            DirectMessage::Answer(signed) => {
                signed.verify().map_err(|e| e.code().to_string())?;
                let answer = &signed.body;
                let (key, mut value, to) = self.counterpart_entry(
                    OUT,
                    &answer.interest,
                    answer.federation,
                    signed.signer,
                )?;
                if matches!(
                    value.get("status").and_then(Value::as_str),
                    Some("accepted" | "declined")
                ) {
                    return Ok(false);
                }
                value["status"] = json!(if answer.accepted {
                    "accepted"
                } else {
                    "declined"
                });
                value["reason"] = json!(answer.reason);
                if let Some(contact) = &answer.contact {
                    value["their_contact"] = json!(contact);
                }
                store.local_put(&key, &value).map_err(err)?;
                if answer.accepted {
                    let ours: ContactDetails = value
                        .get("our_contact")
                        .and_then(|v| serde_json::from_value(v.clone()).ok())
                        .unwrap_or_default();
                    let release = ContactRelease {
                        federation: self.ingest().federation(),
                        interest: answer.interest,
                        contact: ours,
                        sent_at_ms: system_now_ms(),
                    };
                    let signed = Signed::sign(release, &self.signing_key())
                        .map_err(|e| e.code().to_string())?;
                    self.enqueue(&to, &DirectMessage::Contact(signed), &answer.interest)
                        .map_err(|e| e.to_string())?;
                }
                store.flush().await.map_err(err)?;
                tracing::info!(interest = %answer.interest, accepted = answer.accepted, "answer received");
                Ok(true)
            }
            DirectMessage::Contact(signed) => {
                signed.verify().map_err(|e| e.code().to_string())?;
                let release = &signed.body;
                let (key, mut value, _) = self.counterpart_entry(
                    IN,
                    &release.interest,
                    release.federation,
                    signed.signer,
                )?;
                if value.get("status").and_then(Value::as_str) != Some("accepted") {
                    return Err("interest.not_accepted".into());
                }
                if value.get("their_contact").is_some_and(|v| !v.is_null()) {
                    return Ok(false);
                }
                value["their_contact"] = json!(release.contact);
                store.local_put(&key, &value).map_err(err)?;
                store.flush().await.map_err(err)?;
                Ok(true)
            }
        }
    }
}

/// The region at the other end of a local interest entry.
fn entry_region(value: &Value) -> Option<RegionId> {
    value
        .get("region")
        .and_then(Value::as_str)
        .and_then(RegionId::from_hex)
}

/// Refusals that no retry can cure: the entry is given up and marked failed.
fn permanent(code: &str) -> bool {
    code.starts_with("interest.")
        || code.starts_with("record.")
        || code.starts_with("signature.")
        || code.starts_with("field.")
        || code.starts_with("code.")
        || code == "direct.bad_signature"
        || code == "direct.wrong_signer"
        || code == "direct.malformed"
        || code == "direct.too_large"
}

/// Delivers what is due in the outbox, once: each entry to a node of its region, in order;
/// taken entries leave the outbox, failures wait with a doubling backoff. Returns how many
/// were delivered.
pub async fn deliver_outbox(service: &Service, net: &NetClient, access: &PeerAccess) -> usize {
    let store = service.ingest().store().clone();
    let now = system_now_ms();
    let entries = match store.local_scan(OUTBOX) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(cause = %e, "cannot read the outbox");
            return 0;
        }
    };
    let due_now = |key: &str| {
        key.strip_prefix(OUTBOX)
            .and_then(|k| k.split('-').next())
            .and_then(|d| d.parse::<u64>().ok())
            .is_some_and(|due| due <= now)
    };
    if !entries.iter().any(|(key, _)| due_now(key)) {
        return 0;
    }
    let connected: Vec<libp2p::PeerId> = net
        .peers()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !p.guest)
        .map(|p| p.peer_id)
        .collect();
    let mut delivered = 0;
    for (key, value) in entries {
        if !due_now(&key) {
            continue;
        }
        let (Some(to), Some(message)) = (
            value
                .get("to")
                .and_then(Value::as_str)
                .and_then(RegionId::from_hex),
            value
                .get("message")
                .and_then(Value::as_str)
                .and_then(kim_protocol::bytes::from_hex),
        ) else {
            tracing::warn!(key, "dropping a damaged outbox entry");
            let _ = store.local_delete(&key);
            continue;
        };
        let interest = value
            .get("interest")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut outcome: Result<(), String> = Err("no node of the region is reachable".into());
        for (peer, addrs) in access.peers_of(&to) {
            if !connected.contains(&peer) {
                for addr in addrs {
                    let mut addr = addr.clone();
                    if !matches!(
                        addr.iter().last(),
                        Some(libp2p::multiaddr::Protocol::P2p(_))
                    ) {
                        addr.push(libp2p::multiaddr::Protocol::P2p(peer));
                    }
                    if tokio::time::timeout(Duration::from_secs(5), net.dial(addr))
                        .await
                        .is_ok_and(|r| r.is_ok())
                    {
                        break;
                    }
                }
            }
            match net.direct(peer, message.clone()).await {
                Ok(_) => {
                    outcome = Ok(());
                    break;
                }
                Err(NetError::Refused(code)) if permanent(&code) => {
                    outcome = Err(format!("refused: {code}"));
                    tracing::warn!(to = %to, interest, code, "direct message refused for good");
                    let _ = store.local_delete(&key);
                    mark(&store, &interest, "failed", Some(&code), 0);
                    break;
                }
                Err(e) => outcome = Err(e.to_string()),
            }
        }
        match outcome {
            Ok(()) => {
                delivered += 1;
                let _ = store.local_delete(&key);
                mark(&store, &interest, "delivered", None, 0);
                tracing::info!(to = %to, interest, "direct message delivered");
            }
            Err(cause) if store.local_get(&key).ok().flatten().is_some() => {
                let attempts = value.get("attempts").and_then(Value::as_u64).unwrap_or(0) + 1;
                let wait = RETRY_MIN
                    .saturating_mul(1u32 << attempts.min(16) as u32)
                    .min(RETRY_MAX);
                let mut next = value.clone();
                next["attempts"] = json!(attempts);
                next["last_error"] = json!(cause);
                let _ = store.local_delete(&key);
                let _ = store.local_put(&outbox_key(now + wait.as_millis() as u64), &next);
                mark(&store, &interest, "queued", Some(&cause), attempts as u32);
                tracing::debug!(to = %to, interest, attempts, wait_ms = wait.as_millis() as u64, cause, "delivery failed; will retry");
            }
            Err(_) => {}
        }
    }
    if let Err(e) = store.flush().await {
        tracing::warn!(cause = %e, "cannot flush the outbox");
    }
    delivered
}

/// Updates an outgoing interest's delivery state (only while it is not answered yet).
fn mark(
    store: &crate::store::Store,
    interest: &str,
    status: &str,
    error: Option<&str>,
    attempts: u32,
) {
    let key = format!("{OUT}{interest}");
    let Ok(Some(mut value)) = store.local_get(&key) else {
        return;
    };
    let current = value
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if matches!(current, "accepted" | "declined") || (current == "delivered" && status == "queued")
    {
        return;
    }
    value["status"] = json!(status);
    value["attempts"] = json!(attempts);
    value["last_error"] = error.map_or(Value::Null, |e| json!(e));
    let _ = store.local_put(&key, &value);
}
