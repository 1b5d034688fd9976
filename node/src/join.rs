//! The join protocol (`/kim/<federation>/join/1`): what a node that is not (yet) a member may
//! do on a member's node, and nothing more.
//!
//! A candidate's connection is a **guest** connection (see `net`): gossipsub ignores it, sync
//! refuses it, kademlia does not learn it, and it is closed after [`GUEST_CONNECTION_MAX`].
//! On it the candidate may
//! - ask for the federation's **state**: the charter record, every membership record and the
//!   current members' region profiles, in id order, a page at a time (`State`);
//! - **submit** its own signed join request (`Submit`), which the member checks (fresh, from a
//!   non-member, room among pending candidates), stores through the ingest pipeline and gossips
//!   to the other members.
//!
//! Both are rate-limited per peer and per IP address. The same messages serve a candidate's
//! running node (which polls `State` until it is admitted) and `kim federation join`, which
//! uses [`JoinClient`], a one-protocol swarm of its own, before the node has a store for the
//! federation at all.
//!
//! # Messages (frames as in sync: LEB128 length, then a tag byte and a body)
//! | tag | ask | body |
//! | --- | --- | --- |
//! | 0 | `State` | 0, or 1 ‖ a 32-byte record id: the page starts after it |
//! | 1 | `Submit` | varint length ≤ `RECORD_BYTES_MAX` ‖ the join request record |
//!
//! | tag | answer | body |
//! | --- | --- | --- |
//! | 0 | `State` | 1 byte `more` ‖ records as in a sync `Records` response |
//! | 1 | `Submitted` | 1 byte: 1 if the record was new here |
//! | 2 | `Refused` | varint length ≤ 64 ‖ an error code in ASCII (`join.*`) |

use std::time::Duration;

use anyhow::{Context as _, bail};
use kim_protocol::envelope::{Body, Kind, Record, record_id};
use kim_protocol::limits::{
    INVITATION_TOKEN_CHARS_MAX, JOIN_PENDING_MAX, JOIN_PENDING_PER_INVITER, JOIN_SUBMIT_AGE_MS_MAX,
    RECORD_BYTES_MAX,
};
use kim_protocol::membership::AuthorStatus;
use kim_protocol::reconcile::{ID_BYTES, Id};
use kim_protocol::{FederationId, RecordId};
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity, noise, tcp, yamux};

use crate::ingest::{Ingest, Source};
use crate::net::{
    Framed, FramedCodec, Reader, SYNC_BATCH_BYTES_MAX, SYNC_BATCH_RECORDS_MAX, get_records,
    put_records, put_refusal, put_varint,
};

/// How long a guest (a peer that is not a member's node) may stay connected.
pub const GUEST_CONNECTION_MAX: Duration = Duration::from_secs(120);
/// Guest connections a member's node holds at once.
pub const GUESTS_MAX: usize = 64;
/// Guest connections from one IP address at once.
pub const GUESTS_PER_IP_MAX: usize = 8;
/// Join-protocol asks one peer may make per [`JOIN_RATE_WINDOW`].
pub const JOIN_ASKS_PER_WINDOW: u32 = 60;
pub const JOIN_RATE_WINDOW: Duration = Duration::from_secs(10);
/// Join requests one IP address may submit per [`JOIN_SUBMIT_WINDOW`] (whatever its peer ids).
pub const JOIN_SUBMITS_PER_IP: u32 = 4;
pub const JOIN_SUBMIT_WINDOW: Duration = Duration::from_secs(600);
/// How often a candidate's node asks a member for the federation's state.
pub const JOIN_POLL_INTERVAL: Duration = Duration::from_secs(3);
/// Most records a state download may bring (charter, membership records and profiles).
pub const JOIN_STATE_RECORDS_MAX: usize = 100_000;
/// Largest join frame: a state page.
const JOIN_FRAME_BYTES_MAX: usize = SYNC_BATCH_BYTES_MAX + 64 * 1024;

/// What a guest asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAsk {
    /// The next page of the federation's state, after the given record id.
    State { after: Option<Id> },
    /// The asker's signed join request, with the invitation it was given (the token text).
    Submit { record: Vec<u8>, invitation: String },
}

/// What a member answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinAnswer {
    /// A page of state records in id order; `more` if another page follows.
    State { records: Vec<Vec<u8>>, more: bool },
    /// The join request was stored (`new`) or was already held.
    Submitted { new: bool },
    /// Not served; a stable code says why.
    Refused(String),
}

impl JoinAsk {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            JoinAsk::State { after } => {
                out.push(0);
                match after {
                    None => out.push(0),
                    Some(id) => {
                        out.push(1);
                        out.extend_from_slice(id);
                    }
                }
            }
            JoinAsk::Submit { record, invitation } => {
                out.push(1);
                put_varint(&mut out, record.len() as u64);
                out.extend_from_slice(record);
                put_varint(&mut out, invitation.len() as u64);
                out.extend_from_slice(invitation.as_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<JoinAsk, String> {
        let (&tag, body) = bytes.split_first().ok_or("empty join frame")?;
        let mut reader = Reader(body);
        let ask = match tag {
            0 => {
                let after = match reader.take(1).map_err(|e| e.to_string())?[0] {
                    0 => None,
                    1 => {
                        let mut id = [0u8; ID_BYTES];
                        id.copy_from_slice(reader.take(ID_BYTES).map_err(|e| e.to_string())?);
                        Some(id)
                    }
                    other => return Err(format!("join state flag {other} is neither 0 nor 1")),
                };
                JoinAsk::State { after }
            }
            1 => {
                let len = reader.count(RECORD_BYTES_MAX).map_err(|e| e.to_string())?;
                let record = reader.take(len).map_err(|e| e.to_string())?.to_vec();
                let len = reader
                    .count(INVITATION_TOKEN_CHARS_MAX)
                    .map_err(|e| e.to_string())?;
                let token = reader.take(len).map_err(|e| e.to_string())?;
                if !token.is_ascii() {
                    return Err("join invitation is not ASCII".into());
                }
                JoinAsk::Submit {
                    record,
                    invitation: String::from_utf8_lossy(token).into_owned(),
                }
            }
            other => return Err(format!("join frame has unknown tag {other}")),
        };
        reader.finish().map_err(|e| e.to_string())?;
        Ok(ask)
    }
}

impl JoinAnswer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            JoinAnswer::State { records, more } => {
                out.push(0);
                out.push(u8::from(*more));
                put_records(&mut out, records);
            }
            JoinAnswer::Submitted { new } => {
                out.push(1);
                out.push(u8::from(*new));
            }
            JoinAnswer::Refused(code) => {
                out.push(2);
                put_refusal(&mut out, code);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<JoinAnswer, String> {
        let (&tag, body) = bytes.split_first().ok_or("empty join frame")?;
        let flag = |b: u8| match b {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("join flag {other} is neither 0 nor 1")),
        };
        match tag {
            0 => {
                let (&more, rest) = body.split_first().ok_or("join state page ends early")?;
                Ok(JoinAnswer::State {
                    more: flag(more)?,
                    records: get_records(rest).map_err(|e| e.to_string())?,
                })
            }
            1 => match body {
                [new] => Ok(JoinAnswer::Submitted { new: flag(*new)? }),
                _ => Err("join submitted answer must be one byte".into()),
            },
            2 => {
                let mut reader = Reader(body);
                let code = reader.refusal().map_err(|e| e.to_string())?;
                reader.finish().map_err(|e| e.to_string())?;
                Ok(JoinAnswer::Refused(code))
            }
            other => Err(format!("join frame has unknown tag {other}")),
        }
    }
}

/// Frames join messages on a substream.
pub(crate) type JoinCodec = FramedCodec<JoinAsk, JoinAnswer>;

impl Framed for JoinAsk {
    const FRAME_BYTES_MAX: usize = JOIN_FRAME_BYTES_MAX;
    fn to_frame(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_frame(bytes: &[u8]) -> Result<Self, String> {
        JoinAsk::decode(bytes)
    }
}

impl Framed for JoinAnswer {
    const FRAME_BYTES_MAX: usize = JOIN_FRAME_BYTES_MAX;
    fn to_frame(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_frame(bytes: &[u8]) -> Result<Self, String> {
        JoinAnswer::decode(bytes)
    }
}

/// The join protocol's name for a federation.
pub fn protocol_name(federation: &FederationId) -> anyhow::Result<StreamProtocol> {
    StreamProtocol::try_from_owned(kim_protocol::names::join_protocol(federation))
        .map_err(|e| anyhow::anyhow!("join protocol name: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The member's side: what the node serves
// ---------------------------------------------------------------------------------------------

/// One page of the state a candidate needs: the charter record, every membership record and
/// the current members' profiles, in id order after `after`, within the sync batch budget.
pub fn state_page(ingest: &Ingest, after: Option<Id>) -> anyhow::Result<(Vec<Vec<u8>>, bool)> {
    let store = ingest.store();
    let mut all: Vec<(RecordId, Vec<u8>)> = Vec::new();
    for bytes in store.membership_records()? {
        all.push((record_id(&bytes), bytes));
    }
    let membership = ingest.membership();
    for region in membership.members.keys() {
        if let Some(entry) = store.item(region, Kind::RegionProfile, "profile")?
            && !entry.tombstone
            && let Some(bytes) = store.record(&entry.id)?
        {
            all.push((entry.id, bytes));
        }
    }
    all.sort_by_key(|(id, _)| *id);
    all.dedup_by_key(|(id, _)| *id);
    let mut page = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    for (id, record) in all
        .into_iter()
        .filter(|(id, _)| after.is_none_or(|a| id.0 > a))
    {
        if page.len() == SYNC_BATCH_RECORDS_MAX || bytes + record.len() > SYNC_BATCH_BYTES_MAX {
            more = true;
            break;
        }
        let _ = id;
        bytes += record.len();
        page.push(record);
    }
    Ok((page, more))
}

/// Local data key of an invitation used at this node: which candidate used it, invited by whom.
const INVITATION_USE: &str = "join-invitation/";

/// Checks a candidate's submitted join request and the invitation it came with, and stores
/// the request: `Ok(true)` if it was new here. Refusals are stable codes (`join.*`,
/// `invitation.*`, or the pipeline's own).
///
/// A request is taken only with a valid, unexpired invitation signed by a current member. At
/// this node an invitation serves one candidate, a member's invitations hold at most
/// [`JOIN_PENDING_PER_INVITER`] pending candidates, and all candidates at most
/// [`JOIN_PENDING_MAX`]; a region already pending keeps its request (asking again is answered
/// as known). So outsiders without an invitation cannot fill the pending list, and one leaked
/// invitation fills at most a few places.
pub async fn submit(
    ingest: &Ingest,
    bytes: Vec<u8>,
    invitation: &str,
    now_ms: u64,
) -> Result<bool, String> {
    use kim_protocol::invitation::SignedInvitation;
    let record = Record::decode(bytes.clone()).map_err(|e| e.code().to_string())?;
    let c = &record.content;
    if !matches!(c.body, Body::JoinRequest(_)) {
        return Err("join.not_a_join_request".into());
    }
    if c.federation != ingest.federation() {
        return Err("record.wrong_federation".into());
    }
    let signed =
        SignedInvitation::from_token(invitation, now_ms).map_err(|e| e.code().to_string())?;
    let membership = ingest.membership();
    if signed.invitation.federation != ingest.federation() {
        return Err("invitation.wrong_federation".into());
    }
    signed
        .invitation
        .check_inviter(&membership)
        .map_err(|e| e.code().to_string())?;
    match membership.author_status(&c.author, c.created_at_ms) {
        AuthorStatus::Member(_) | AuthorStatus::RetiredKey(_) => {
            return Err("join.already_member".into());
        }
        AuthorStatus::NotMember(_) | AuthorStatus::Unknown => {}
    }
    if c.created_at_ms.saturating_add(JOIN_SUBMIT_AGE_MS_MAX) < now_ms {
        return Err("join.request_too_old".into());
    }
    let region = membership.region_of(&c.author).unwrap_or(c.author);
    let live: Vec<&kim_protocol::membership::Pending> = membership
        .pending
        .iter()
        .filter(|p| !p.is_expired(now_ms))
        .collect();
    if live.iter().any(|p| p.candidate == region) {
        // Its request stands; a second one would only grow every member's store.
        return Ok(false);
    }
    let store = ingest.store();
    let use_key = format!(
        "{INVITATION_USE}{}",
        kim_protocol::bytes::to_hex(blake3::hash(invitation.trim().as_bytes()).as_bytes())
    );
    if let Some(used) = store.local_get(&use_key).map_err(|e| e.to_string())?
        && used.get("candidate").and_then(|v| v.as_str()) != Some(region.to_hex().as_str())
    {
        return Err("join.invitation_used".into());
    }
    let inviter = signed.invitation.inviter.to_hex();
    let mut by_inviter = 0usize;
    for (_, used) in store
        .local_scan(INVITATION_USE)
        .map_err(|e| e.to_string())?
    {
        let same_inviter = used.get("inviter").and_then(|v| v.as_str()) == Some(inviter.as_str());
        let still_pending = used
            .get("candidate")
            .and_then(|v| v.as_str())
            .and_then(kim_protocol::RegionId::from_hex)
            .is_some_and(|cand| live.iter().any(|p| p.candidate == cand));
        if same_inviter && still_pending {
            by_inviter += 1;
        }
    }
    if by_inviter >= JOIN_PENDING_PER_INVITER {
        return Err("join.inviter_limit".into());
    }
    if live.len() >= JOIN_PENDING_MAX {
        return Err("join.too_many_pending".into());
    }
    match ingest.ingest_batch(vec![bytes], Source::Sync).await.pop() {
        Some(Ok(accepted)) => {
            store
                .local_put(
                    &use_key,
                    &serde_json::json!({
                        "candidate": region.to_hex(),
                        "inviter": inviter,
                        "at_ms": now_ms,
                    }),
                )
                .map_err(|e| e.to_string())?;
            Ok(accepted.is_new())
        }
        Some(Err(e)) => Err(e.code().to_string()),
        None => Err("join.internal".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// The candidate's side before it has a store: a one-protocol client
// ---------------------------------------------------------------------------------------------

#[derive(NetworkBehaviour)]
struct JoinOnly {
    join: request_response::Behaviour<JoinCodec>,
}

/// A connection to one member's node that speaks only the join protocol.
pub struct JoinClient {
    swarm: libp2p::Swarm<JoinOnly>,
    peer: PeerId,
    timeout: Duration,
}

impl std::fmt::Debug for JoinClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinClient")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl JoinClient {
    /// Dials the addresses in turn until one member's node answers.
    pub async fn connect(
        keypair: identity::Keypair,
        federation: &FederationId,
        addrs: &[Multiaddr],
        timeout: Duration,
    ) -> anyhow::Result<JoinClient> {
        let name = protocol_name(federation)?;
        let behaviour = JoinOnly {
            join: request_response::Behaviour::with_codec(
                JoinCodec::default(),
                [(name, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(timeout),
            ),
        };
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|_| behaviour)?
            .with_swarm_config(|c| c.with_idle_connection_timeout(timeout))
            .build();
        let mut failures = Vec::new();
        for addr in addrs {
            if let Err(e) = swarm.dial(addr.clone()) {
                failures.push(format!("{addr}: {e}"));
                continue;
            }
            let outcome = tokio::time::timeout(timeout, async {
                loop {
                    match swarm.select_next_some().await {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            return Ok(peer_id);
                        }
                        SwarmEvent::OutgoingConnectionError { error, .. } => {
                            return Err(error.to_string());
                        }
                        _ => {}
                    }
                }
            })
            .await;
            match outcome {
                Ok(Ok(peer)) => {
                    tracing::info!(peer = %peer, addr = %addr, "connected to a member's node");
                    return Ok(JoinClient {
                        swarm,
                        peer,
                        timeout,
                    });
                }
                Ok(Err(e)) => failures.push(format!("{addr}: {e}")),
                Err(_) => failures.push(format!("{addr}: no answer in {timeout:?}")),
            }
        }
        bail!(
            "no bootstrap peer of the invitation could be reached ({}); check the addresses \
             and that the member's node is running",
            failures.join("; ")
        )
    }

    /// The member's node this client talks to.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    async fn ask(&mut self, ask: JoinAsk) -> anyhow::Result<JoinAnswer> {
        let id = self
            .swarm
            .behaviour_mut()
            .join
            .send_request(&self.peer, ask);
        let peer = self.peer;
        let wait = async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(JoinOnlyEvent::Join(
                        request_response::Event::Message {
                            message:
                                request_response::Message::Response {
                                    request_id,
                                    response,
                                },
                            ..
                        },
                    )) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(JoinOnlyEvent::Join(
                        request_response::Event::OutboundFailure {
                            request_id, error, ..
                        },
                    )) if request_id == id => {
                        bail!("the member's node {peer} did not answer: {error}")
                    }
                    SwarmEvent::ConnectionClosed {
                        peer_id,
                        num_established: 0,
                        ..
                    } if peer_id == peer => {
                        bail!("the member's node {peer} closed the connection")
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(self.timeout * 2, wait)
            .await
            .map_err(|_| anyhow::anyhow!("the member's node {peer} did not answer in time"))?
    }

    /// Downloads the federation's state: charter record, membership records, members'
    /// profiles.
    pub async fn fetch_state(&mut self) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut all: Vec<Vec<u8>> = Vec::new();
        let mut after: Option<Id> = None;
        loop {
            match self.ask(JoinAsk::State { after }).await? {
                JoinAnswer::State { records, more } => {
                    let last = records.last().map(|r| record_id(r).0);
                    all.extend(records);
                    if all.len() > JOIN_STATE_RECORDS_MAX {
                        bail!(
                            "the member's node sent more than {JOIN_STATE_RECORDS_MAX} state records"
                        );
                    }
                    match (more, last) {
                        (true, Some(last)) if after.is_none_or(|a| last > a) => after = Some(last),
                        (true, _) => bail!("the member's node sent an empty or repeated page"),
                        (false, _) => return Ok(all),
                    }
                }
                JoinAnswer::Refused(code) => bail!("the member's node refused: {code}"),
                other => bail!("unexpected answer to a state request: {other:?}"),
            }
        }
    }

    /// Submits a signed join request with the invitation; `Ok(true)` if it was new there.
    pub async fn submit(&mut self, record: Vec<u8>, invitation: &str) -> anyhow::Result<bool> {
        match self
            .ask(JoinAsk::Submit {
                record,
                invitation: invitation.trim().to_string(),
            })
            .await
            .context("submitting the join request")?
        {
            JoinAnswer::Submitted { new } => Ok(new),
            JoinAnswer::Refused(code) => {
                bail!("the member's node refused the join request: {code}")
            }
            other => bail!("unexpected answer to a join request: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `kim federation join`: from an invitation to a candidate's data directory
// ---------------------------------------------------------------------------------------------

/// What joining did.
#[derive(Debug, Clone)]
pub struct JoinReport {
    pub federation: FederationId,
    pub federation_name: String,
    pub inviter_name: String,
    /// The member's node that took the request.
    pub peer: PeerId,
    pub members: usize,
    /// Endorsements the request needs now.
    pub required: usize,
    /// Whether the member's node had not seen the request before.
    pub new: bool,
}

/// Joins a federation with an invitation, on a node that is not running: checks the token,
/// downloads the federation's charter and membership from a bootstrap peer (checking the
/// charter against the token's hashes and the inviter against the membership), submits this
/// region's signed join request with the invitation, and moves the node into the federation as
/// a candidate. `kim run` then waits for the endorsements; admission needs nothing more from
/// the operator.
///
/// The node must be fresh (what `kim init` made, checked before anything is sent), or already
/// a candidate of this federation whose request expired: then it asks again, with a new
/// request. A candidate whose request is still pending is told so and nothing is sent.
pub async fn join(
    data: &crate::config::DataDir,
    token: &str,
    message: &str,
    timeout: Duration,
) -> anyhow::Result<JoinReport> {
    use kim_protocol::envelope::{Content, FORMAT_VERSION};
    use kim_protocol::invitation::SignedInvitation;
    use kim_protocol::membership::{JoinRequest, evaluate};
    use kim_protocol::{PublicKey, types::NodeAddress};

    let now = crate::ingest::system_now_ms();
    let signed = SignedInvitation::from_token(token, now)
        .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
    let invitation = signed.invitation;
    let federation = invitation.federation;
    let config = crate::config::Config::load_file(&data.root)?;
    // Asking again as a candidate of this federation, or joining from a fresh node.
    let again = config.federation == federation.to_hex();
    if !again {
        crate::node::check_fresh(data)?;
    }
    let region_key = data.load_key()?;
    let own = PublicKey(region_key.verifying_key().to_bytes());
    let node_key = data.load_node_key()?;
    let peer_id = node_key.public().to_peer_id();
    // This region's profile: as `kim init` wrote it, or as its last join request carried it;
    // its node entry is renewed below.
    let mut profile = {
        let store = crate::store::Store::open(&data.store(), config.store_cache_bytes, false)?;
        let id = match store.item(&own, Kind::RegionProfile, "profile")? {
            Some(entry) => Some(entry.id),
            None => {
                let mut latest: Option<(u64, RecordId)> = None;
                for bytes in store.membership_records()? {
                    if let Ok(r) = Record::decode(bytes)
                        && r.content.author == own
                        && matches!(r.content.body, Body::JoinRequest(_))
                        && latest.is_none_or(|(t, _)| r.content.created_at_ms > t)
                    {
                        latest = Some((r.content.created_at_ms, r.id));
                    }
                }
                latest.map(|(_, id)| id)
            }
        };
        let bytes = match id {
            Some(id) => store.record(&id)?,
            None => None,
        }
        .context("this node holds no profile of its own region: initialise it with `kim init`")?;
        match Record::decode(bytes).map(|r| r.content.body) {
            Ok(Body::RegionProfile(profile)) => profile,
            Ok(Body::JoinRequest(request)) => request.profile,
            _ => bail!("this region's profile record is damaged"),
        }
    };
    profile.nodes = vec![NodeAddress {
        peer_id: peer_id.to_string(),
        addrs: crate::node::announceable(&config.p2p_listen),
    }];
    let addrs: Vec<Multiaddr> = invitation
        .bootstrap
        .iter()
        .filter_map(|a| match a.parse() {
            Ok(addr) => Some(addr),
            Err(e) => {
                tracing::warn!(addr = %a, cause = %e, "skipping an unreadable bootstrap address");
                None
            }
        })
        .collect();
    tracing::info!(federation = %federation, name = %invitation.federation_name,
        inviter = %invitation.inviter_name, "invitation verified; contacting the federation");
    let mut client = JoinClient::connect(node_key, &federation, &addrs, timeout).await?;
    let records = client.fetch_state().await?;

    // Check what came: signatures, the charter against the invitation, the inviter.
    let mut decoded = Vec::with_capacity(records.len());
    for bytes in &records {
        let record = Record::decode(bytes.clone())
            .map_err(|e| anyhow::anyhow!("the member's node sent a malformed record: {e}"))?;
        record
            .verify()
            .map_err(|e| anyhow::anyhow!("the member's node sent a forged record: {e}"))?;
        decoded.push(record);
    }
    let charter_bytes = decoded
        .iter()
        .find_map(|r| match &r.content.body {
            Body::Charter(c) if r.content.federation == federation => Some(c.charter.clone()),
            _ => None,
        })
        .context("the member's node sent no charter")?;
    invitation
        .check_charter(&charter_bytes)
        .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
    let charter = kim_protocol::membership::Charter::from_bytes(&charter_bytes)
        .map_err(|e| anyhow::anyhow!("the charter is unreadable: {e}"))?;
    let state = evaluate(&charter, federation, decoded.iter());
    invitation
        .check_inviter(&state)
        .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
    let required = charter.admission.required(state.members.len());
    let report = |peer, new| JoinReport {
        federation,
        federation_name: invitation.federation_name.clone(),
        inviter_name: invitation.inviter_name.clone(),
        peer,
        members: state.members.len(),
        required,
        new,
    };
    if state.is_member(&own) {
        bail!(
            "this region is already a member of {}",
            invitation.federation_name
        );
    }
    if again
        && let Some(p) = state
            .pending
            .iter()
            .find(|p| p.candidate == own && !p.is_expired(now))
    {
        bail!(
            "this region's request to join {} is pending ({} of {} endorsements); `kim run` \
             waits for admission",
            invitation.federation_name,
            p.endorsers.len(),
            p.required
        );
    }

    let content = Content {
        format: FORMAT_VERSION,
        federation,
        author: own,
        kind: Kind::JoinRequest,
        key: format!("join-{now}"),
        revision: 1,
        created_at_ms: now,
        expires_at_ms: None,
        body: Body::JoinRequest(JoinRequest {
            profile,
            message: message.to_string(),
        }),
    };
    let request = Record::sign(&content, &region_key)
        .map_err(|e| anyhow::anyhow!("signing the join request: {e}"))?;
    let new = client.submit(request.bytes.clone(), token).await?;
    let peer = client.peer();
    drop(client);

    let mut start = records;
    start.push(request.bytes);
    if again {
        // Already in the federation's store: add what came and the new request.
        let store = crate::store::Store::open(&data.store(), config.store_cache_bytes, false)?;
        let ingest = crate::ingest::Ingest::open(store.clone(), federation, charter)?;
        for (bytes, result) in start
            .iter()
            .zip(ingest.ingest_batch(start.clone(), Source::Sync).await)
        {
            if let Err(e) = result {
                tracing::debug!(record = %record_id(bytes), code = e.code(), "state record not stored");
            }
        }
        store.flush().await?;
    } else {
        let adopted = crate::node::adopt_federation(data, &charter_bytes, start).await?;
        for (id, code) in &adopted.refused {
            tracing::warn!(record = %id, code, "a state record was refused");
        }
    }
    let mut config = crate::config::Config::load_file(&data.root)?;
    for addr in &invitation.bootstrap {
        if !config.bootstrap.contains(addr) {
            config.bootstrap.push(addr.clone());
        }
    }
    std::fs::write(data.config(), config.to_documented_toml())
        .with_context(|| format!("cannot write {}", data.config().display()))?;
    Ok(report(peer, new))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for ask in [
            JoinAsk::State { after: None },
            JoinAsk::State {
                after: Some([7; 32]),
            },
            JoinAsk::Submit {
                record: vec![1, 2, 3],
                invitation: "kim-invite-1.abc".into(),
            },
        ] {
            assert_eq!(JoinAsk::decode(&ask.encode()).unwrap(), ask);
        }
        for answer in [
            JoinAnswer::State {
                records: vec![vec![1], vec![2, 3]],
                more: true,
            },
            JoinAnswer::Submitted { new: false },
            JoinAnswer::Refused("join.rate_limited".into()),
        ] {
            assert_eq!(JoinAnswer::decode(&answer.encode()).unwrap(), answer);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(JoinAsk::decode(&[]).is_err());
        assert!(JoinAsk::decode(&[9]).is_err());
        assert!(JoinAsk::decode(&[0, 2]).is_err());
        assert!(JoinAsk::decode(&[0, 1, 5]).is_err());
        assert!(JoinAsk::decode(&[0, 0, 0]).is_err());
        let mut huge = vec![1];
        put_varint(&mut huge, (RECORD_BYTES_MAX + 1) as u64);
        assert!(JoinAsk::decode(&huge).is_err());
        assert!(JoinAnswer::decode(&[1, 2]).is_err());
        assert!(JoinAnswer::decode(&[2, 1, 0x07]).is_err());
    }
}
