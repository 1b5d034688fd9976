//! The node's network layer: one event loop owns the libp2p swarm, everyone else holds a
//! cloneable [`NetClient`] that sends [`Command`]s over a bounded channel with `oneshot` replies.
//!
//! Push for latency, pull for correctness (DESIGN.md, principle 5):
//! - **gossipsub** on the federation's records topic pushes each new record to the mesh within
//!   milliseconds. Messages are anonymous at the libp2p level (the record carries its own
//!   signature), the message id is the record id (BLAKE3 of the bytes), and nothing is forwarded
//!   before the ingest pipeline's checks accepted it (`validate_messages()` +
//!   `report_message_validation_result`, on [`Records::ingest_gossip`]'s early verdicts, which
//!   come before the store write). Invalid records cost the forwarding peer score.
//! - **sync** over request-response (`/kim/<federation>/sync/1`) runs the range-based
//!   reconciliation of `kim_protocol::reconcile` on every new outbound connection and
//!   periodically with a random connected peer, then fetches what we lack and pushes what the
//!   peer lacks, in bounded batches, through the same ingest pipeline.
//! - **identify**, **ping** (round-trip times for `peers()`), **kademlia** (discovery among the
//!   allowed peers), and a connection **gate** that asks [`PeerGate`] about every connection.
//!
//! # Layout
//! - Limits: [`SYNC_FETCH_IDS_MAX`], [`SYNC_BATCH_RECORDS_MAX`], [`SYNC_BATCH_BYTES_MAX`],
//!   [`SYNC_FRAME_BYTES_MAX`], [`GOSSIP_TRANSMIT_BYTES_MAX`].
//! - [`Records`]: what the network needs from the node (ingest, the sync set, record bytes);
//!   the node implements it for its ingest pipeline and store.
//! - [`SyncRequest`], [`SyncResponse`]: the sync protocol's messages and their byte layout
//!   ([`SyncRequest::encode`] and friends are pure and unit-tested); `SyncCodec` frames them.
//! - [`NetConfig`], [`new`], [`EventLoop::run`]: construction and the loop.
//! - [`NetClient`]: `publish`, `dial`, `peers`, `sync_with`, `listen_addrs`, `stats`,
//!   `recheck_gate`.
//!
//! # The sync protocol (one request, one response, each on its own substream)
//! A frame is an unsigned LEB128 length (minimal, at most [`SYNC_FRAME_BYTES_MAX`]) followed by
//! that many payload bytes: a tag byte and a body.
//!
//! | tag | request | body |
//! | --- | --- | --- |
//! | 0 | `ReconcileStart` | a reconcile `Message` (postcard, SPEC.md §11); starts a new session |
//! | 1 | `ReconcileNext` | the next `Message` of the session the peer answers |
//! | 2 | `Fetch` | varint count ≤ [`SYNC_FETCH_IDS_MAX`], then count × 32-byte record ids |
//! | 3 | `Push` | varint count ≤ [`SYNC_BATCH_RECORDS_MAX`], then count × (varint length ‖ record bytes), records ≤ [`SYNC_BATCH_BYTES_MAX`] in total |
//!
//! | tag | response | body |
//! | --- | --- | --- |
//! | 0 | `Reconcile` | the responder's `Message` |
//! | 1 | `Records` | as `Push`: the requested records that are held, in request order, cut at the byte budget |
//! | 2 | `Ack` | varint new ‖ varint rejected: what ingesting a `Push` did |
//! | 3 | `Refused` | varint length ≤ 64 ‖ an error code in ASCII (`sync.no_session`, `reconcile.*`, …) |
//!
//! A session: the **initiator** (the dialer on connect, or the side whose timer fired) sends
//! `ReconcileStart`; the **responder** keeps one session per peer (a `Responder`, replaced by
//! the next `ReconcileStart`) and answers each message. Both run each step against the sync
//! set as it stands ([`Records::reconcile`]): the node's store answers positions, counts and
//! sums from a table of id buckets without copying the set, and holds record writes back for
//! the step; between steps the set may change, which reconciliation tolerates. Each step tells the initiator ids it lacks (`need`) and ids the peer lacks (`have`).
//! Whenever [`SYNC_FETCH_IDS_MAX`] needed ids have gathered (and at the end) the initiator sends
//! `Fetch` and ingests the answer with [`Origin::Sync`]; records it did not ask for, or whose
//! hash is not a requested id, are dropped. Ids the responder left out for lack of room are
//! asked for again while each answer makes progress. The responder learns nothing from a
//! session, so the initiator **pushes** the records the peer lacks (`Push`, ingested there with
//! [`Origin::Sync`] exactly as if fetched). Push was chosen over asking the peer to start a
//! session the other way because the initiator already knows exactly which ids are missing:
//! one session, no second reconciliation. Records that arrive by sync are never gossiped: they
//! are old news, and re-gossiping a catch-up of thousands of records would flood the mesh.
//! If a session stored new records but also had some rejected (e.g. a member's record fetched
//! before the endorsement that admits it), it is run again, at most
//! `SYNC_FOLLOWUPS_MAX` times in a row.
//!
//! # Architecture invariants
//! - Only the event loop touches the swarm. Work that takes time (ingest, reconciliation
//!   steps, store reads) runs in tasks that report back over a bounded channel.
//! - A gossip message is reported `Accept` only when ingest says the record is new; the
//!   pipeline sees each message once, in batches (a batch is ingested while the next gathers).
//! - Every queue, batch and frame is bounded; a frame's length is checked before it is read.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use kim_protocol::FederationId;
use kim_protocol::limits::RECORD_BYTES_MAX;
use kim_protocol::names::{identify_version, kad_protocol, records_topic, sync_protocol};
use kim_protocol::reconcile::{
    ID_BYTES, Id, IdSet, Initiator, Message, RECONCILE_MESSAGE_BYTES_MAX, ReconcileError,
    Responder, SortedIds, Step,
};
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, Swarm, SwarmEvent, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{PeerId, StreamProtocol, gossipsub, identify, identity, kad, noise, ping, tcp, yamux};
use tokio::sync::{Semaphore, mpsc, oneshot};

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Most record ids one `Fetch` asks for (32 KiB of ids).
pub const SYNC_FETCH_IDS_MAX: usize = 512;
/// Most records in one `Push` request or `Records` response.
pub const SYNC_BATCH_RECORDS_MAX: usize = 512;
/// Most record bytes in one `Push` or `Records` (at least 32 records of the largest size).
pub const SYNC_BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;
/// Largest sync frame payload in either direction, checked before reading it.
pub const SYNC_FRAME_BYTES_MAX: usize = SYNC_BATCH_BYTES_MAX + 64 * 1024;
/// Largest gossipsub RPC: one record plus the topic and protobuf framing.
pub const GOSSIP_TRANSMIT_BYTES_MAX: usize = RECORD_BYTES_MAX + 1024;
/// Longest refusal code in a `Refused` response.
const REFUSAL_CODE_BYTES_MAX: usize = 64;
/// Gossip messages waiting for the pipeline; past this, new ones are ignored (sync brings them).
const GOSSIP_QUEUE_RECORDS_MAX: usize = 4096;
/// Gossip messages handed to the pipeline at once (one signature batch).
const GOSSIP_BATCH_RECORDS_MAX: usize = 256;
/// Commands waiting for the event loop.
const COMMAND_QUEUE_LEN: usize = 64;
/// Task results waiting for the event loop.
const INTERNAL_QUEUE_LEN: usize = 256;
/// Inbound sync requests worked on at once (snapshots, reconciliation steps, store reads).
const INBOUND_SYNC_TASKS_MAX: usize = 4;
/// Direct messages one peer may send per [`INBOUND_RATE_WINDOW`]; beyond, they are refused
/// (`direct.rate_limited`) and the sender's outbox backs off.
const DIRECT_MESSAGES_PER_WINDOW: u32 = 300;
/// Join-protocol requests worked on at once; more are refused with `join.busy`.
const JOIN_TASKS_MAX: usize = 2;
/// Immediate re-runs of a session that stored records but had some rejected.
const SYNC_FOLLOWUPS_MAX: u32 = 2;
/// Longest a former member's node is kept connected while it is told of the membership.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);
/// Listen addresses remembered per peer (from identify).
const PEER_ADDRS_MAX: usize = 8;
/// First wait before dialling the bootstrap addresses again while no peer is connected; it
/// doubles up to [`BOOTSTRAP_REDIAL_MAX`].
const BOOTSTRAP_REDIAL_MIN: Duration = Duration::from_secs(2);
const BOOTSTRAP_REDIAL_MAX: Duration = Duration::from_secs(300);
/// Least time a gossip message waits in the cache for its verdict, whatever the heartbeat.
const GOSSIP_VALIDATION_WINDOW: Duration = Duration::from_secs(5);
/// Misbehaviour points at which a peer is disconnected and refused for [`BAN_DURATION`].
pub const BAN_POINTS: u32 = 100;
/// How long a banned peer stays refused.
pub const BAN_DURATION: Duration = Duration::from_secs(600);
/// Points for one record ingest refused (forged, tampered, malformed, unauthorised).
const POINTS_INVALID_RECORD: u32 = 1;
/// Points for a frame that breaks the sync protocol (oversized, undecodable).
const POINTS_BAD_FRAME: u32 = 25;
/// Points for a request over the per-peer rate.
const POINTS_OVER_RATE: u32 = 1;
/// Inbound sync requests one peer may make per [`INBOUND_RATE_WINDOW`] (a 1M-record catch-up
/// needs about 2,000 fetches; honest sessions stay far below this per window).
const INBOUND_REQUESTS_PER_WINDOW: u32 = 600;
const INBOUND_RATE_WINDOW: Duration = Duration::from_secs(10);

const _: () = assert!(SYNC_FRAME_BYTES_MAX > RECONCILE_MESSAGE_BYTES_MAX);
const _: () = assert!(SYNC_FRAME_BYTES_MAX >= 1 + 5 + SYNC_FETCH_IDS_MAX * ID_BYTES);
const _: () =
    assert!(SYNC_FRAME_BYTES_MAX >= 1 + 5 + SYNC_BATCH_BYTES_MAX + SYNC_BATCH_RECORDS_MAX * 5);
const _: () = assert!(SYNC_BATCH_BYTES_MAX >= RECORD_BYTES_MAX);

// ---------------------------------------------------------------------------------------------
// What the network needs from the node
// ---------------------------------------------------------------------------------------------

/// Where records handed to [`Records::ingest`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A gossipsub message.
    Gossip,
    /// A sync fetch answer or a peer's push.
    Sync,
}

/// What ingest made of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Stored: it changed the sync set (gossip forwards it).
    New,
    /// Valid but changes nothing: already held, or an older revision (not forwarded, no penalty).
    Known,
    /// Refused: malformed, forged, oversized, invalid (not forwarded, the sender penalised).
    Invalid,
    /// Well-formed and signed, but its author is not a member as this node sees membership
    /// now (unknown, not admitted yet, removed, retired key): not stored, not forwarded, and
    /// nobody penalised, since an honest peer may hold it while membership spreads (sync
    /// brings it again once it is acceptable, or it is dropped everywhere).
    Unauthorised,
    /// A local failure, e.g. the store (not forwarded, nobody penalised).
    Failed,
}

/// One reconciliation step of a sync session, run by [`Records::reconcile`] against the set.
#[derive(Debug)]
pub enum SyncStep<'a> {
    /// Start a session as initiator.
    Start,
    /// The initiator takes the responder's message.
    Initiate(&'a mut Initiator, Message),
    /// The responder answers the initiator's message.
    Respond(&'a mut Responder, Message),
}

/// What a [`SyncStep`] produced.
#[derive(Debug)]
pub enum SyncOutcome {
    /// From [`SyncStep::Start`]: the initiator and its first message.
    Started(Initiator, Message),
    /// From the other steps.
    Stepped(Result<Step, ReconcileError>),
}

impl SyncStep<'_> {
    /// Runs the step against `set`.
    pub fn run<S: IdSet + ?Sized>(self, set: &S) -> SyncOutcome {
        match self {
            Self::Start => {
                let (initiator, first) = Initiator::start(set);
                SyncOutcome::Started(initiator, first)
            }
            Self::Initiate(initiator, message) => {
                SyncOutcome::Stepped(initiator.step(set, message))
            }
            Self::Respond(responder, message) => SyncOutcome::Stepped(responder.step(set, message)),
        }
    }
}

/// The node as the network sees it. Implemented by the node for its ingest pipeline and store;
/// tests implement it in memory.
///
/// `ids` and `get` may block (they are called on blocking threads); `ingest` is async and must
/// return one verdict per record, in order.
pub trait Records: Send + Sync + 'static {
    /// Runs records through the ingest pipeline.
    fn ingest(
        &self,
        records: Vec<Vec<u8>>,
        origin: Origin,
    ) -> impl Future<Output = Vec<Verdict>> + Send;

    /// Runs gossiped records through the ingest pipeline and sends their forwarding verdicts
    /// through `early` as soon as the checks before the store write decided them, so a gossip
    /// hop does not wait for the write. Returns the final verdicts. The default sends the final
    /// verdicts as the early ones.
    fn ingest_gossip(
        &self,
        records: Vec<Vec<u8>>,
        early: oneshot::Sender<Vec<Verdict>>,
    ) -> impl Future<Output = Vec<Verdict>> + Send {
        async move {
            let verdicts = self.ingest(records, Origin::Gossip).await;
            let _ = early.send(verdicts.clone());
            verdicts
        }
    }

    /// Every id of the sync set, ascending.
    fn ids(&self) -> anyhow::Result<Vec<Id>>;

    /// Runs one reconciliation step against the sync set as it stands, unchanged during the
    /// call. The default reads [`Records::ids`] for every step, which suits small sets held
    /// in memory; the node's store answers from its own index instead.
    fn reconcile(&self, step: SyncStep<'_>) -> anyhow::Result<SyncOutcome> {
        let set = SortedIds::new(self.ids()?);
        Ok(step.run(&set))
    }

    /// The bytes of the held records among `ids`, in the order asked; missing ones are skipped.
    fn get(&self, ids: &[Id]) -> anyhow::Result<Vec<Vec<u8>>>;

    /// One page of the state a candidate may download over the join protocol (charter,
    /// membership records, members' profiles) after `after`, and whether more follows.
    /// The default serves nothing.
    fn join_state(&self, after: Option<Id>) -> anyhow::Result<(Vec<Vec<u8>>, bool)> {
        let _ = after;
        Ok((Vec::new(), false))
    }

    /// Takes a direct message (expression of interest, answer, contact release) a member's
    /// node sent to this one: `Ok(true)` if new here, or a refusal code. The default refuses.
    fn direct(
        &self,
        from: PeerId,
        message: Vec<u8>,
    ) -> impl Future<Output = Result<bool, String>> + Send {
        let _ = (from, message);
        std::future::ready(Err("direct.unsupported".to_string()))
    }

    /// Checks and stores a candidate's join request: `Ok(true)` if new here, or a refusal
    /// code. The default refuses.
    fn join_submit(
        &self,
        record: Vec<u8>,
        invitation: String,
    ) -> impl Future<Output = Result<bool, String>> + Send {
        let _ = (record, invitation);
        std::future::ready(Err("join.unsupported".to_string()))
    }
}

/// Decides whether a peer may hold a connection. Consulted when a connection is established
/// (and before dialling a known peer id); membership plugs in here.
pub type PeerGate = Arc<dyn Fn(&PeerId) -> bool + Send + Sync>;

/// A gate that lets everybody in.
pub fn allow_all() -> PeerGate {
    Arc::new(|_| true)
}

// ---------------------------------------------------------------------------------------------
// Sync messages and their encoding
// ---------------------------------------------------------------------------------------------

/// A sync request (see the module docs for the byte layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// A reconciliation message; `start` begins a new session.
    Reconcile { start: bool, message: Message },
    /// The records with these ids, at most [`SYNC_FETCH_IDS_MAX`].
    Fetch(Vec<Id>),
    /// Records the peer lacks, at most [`SYNC_BATCH_RECORDS_MAX`] and [`SYNC_BATCH_BYTES_MAX`].
    Push(Vec<Vec<u8>>),
}

/// A sync response (see the module docs for the byte layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResponse {
    /// The responder's reconciliation message.
    Reconcile(Message),
    /// Records answering a `Fetch`.
    Records(Vec<Vec<u8>>),
    /// What ingesting a `Push` did.
    Ack { new: u32, rejected: u32 },
    /// The request was not served; a stable error code says why.
    Refused(String),
}

/// Why bytes are not a sync message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("sync frame is {bytes} bytes, more than the {max} allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("sync frame ends early")]
    Truncated,
    #[error("sync frame has {0} bytes after its end")]
    Trailing(usize),
    #[error("sync frame has unknown tag {0}")]
    UnknownTag(u8),
    #[error("sync frame has a non-minimal or overlong varint")]
    BadVarint,
    #[error("sync frame lists {count} items, more than the {max} allowed")]
    TooMany { count: usize, max: usize },
    #[error("sync frame carries a record of {bytes} bytes, more than the {max} allowed")]
    RecordTooLarge { bytes: usize, max: usize },
    #[error("sync frame carries a malformed reconcile message: {0}")]
    Reconcile(String),
    #[error("sync frame carries a refusal code that is not short ASCII")]
    BadCode,
}

impl SyncRequest {
    /// The payload bytes (tag and body, without the frame length).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            SyncRequest::Reconcile { start, message } => {
                out.push(if *start { 0 } else { 1 });
                out.extend_from_slice(&message.encode());
            }
            SyncRequest::Fetch(ids) => {
                out.push(2);
                put_varint(&mut out, ids.len() as u64);
                for id in ids {
                    out.extend_from_slice(id);
                }
            }
            SyncRequest::Push(records) => {
                out.push(3);
                put_records(&mut out, records);
            }
        }
        out
    }

    /// Parses a payload, checking every count and size before the work it would cause.
    pub fn decode(bytes: &[u8]) -> Result<SyncRequest, DecodeError> {
        check_frame_len(bytes.len())?;
        let (&tag, body) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        match tag {
            0 | 1 => Ok(SyncRequest::Reconcile {
                start: tag == 0,
                message: decode_message(body)?,
            }),
            2 => {
                let mut reader = Reader(body);
                let count = reader.count(SYNC_FETCH_IDS_MAX)?;
                let mut ids = Vec::with_capacity(count);
                for _ in 0..count {
                    let mut id = [0u8; ID_BYTES];
                    id.copy_from_slice(reader.take(ID_BYTES)?);
                    ids.push(id);
                }
                reader.finish()?;
                Ok(SyncRequest::Fetch(ids))
            }
            3 => Ok(SyncRequest::Push(get_records(body)?)),
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

impl SyncResponse {
    /// The payload bytes (tag and body, without the frame length).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            SyncResponse::Reconcile(message) => {
                out.push(0);
                out.extend_from_slice(&message.encode());
            }
            SyncResponse::Records(records) => {
                out.push(1);
                put_records(&mut out, records);
            }
            SyncResponse::Ack { new, rejected } => {
                out.push(2);
                put_varint(&mut out, u64::from(*new));
                put_varint(&mut out, u64::from(*rejected));
            }
            SyncResponse::Refused(code) => {
                out.push(3);
                put_refusal(&mut out, code);
            }
        }
        out
    }

    /// Parses a payload, checking every count and size before the work it would cause.
    pub fn decode(bytes: &[u8]) -> Result<SyncResponse, DecodeError> {
        check_frame_len(bytes.len())?;
        let (&tag, body) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        match tag {
            0 => Ok(SyncResponse::Reconcile(decode_message(body)?)),
            1 => Ok(SyncResponse::Records(get_records(body)?)),
            2 => {
                let mut reader = Reader(body);
                let new = u32::try_from(reader.varint()?).map_err(|_| DecodeError::BadVarint)?;
                let rejected =
                    u32::try_from(reader.varint()?).map_err(|_| DecodeError::BadVarint)?;
                reader.finish()?;
                Ok(SyncResponse::Ack { new, rejected })
            }
            3 => {
                let mut reader = Reader(body);
                let code = reader.refusal()?;
                reader.finish()?;
                Ok(SyncResponse::Refused(code))
            }
            other => Err(DecodeError::UnknownTag(other)),
        }
    }
}

fn check_frame_len(bytes: usize) -> Result<(), DecodeError> {
    if bytes > SYNC_FRAME_BYTES_MAX {
        return Err(DecodeError::TooLarge {
            bytes,
            max: SYNC_FRAME_BYTES_MAX,
        });
    }
    Ok(())
}

fn decode_message(body: &[u8]) -> Result<Message, DecodeError> {
    let message = Message::decode(body).map_err(|e| DecodeError::Reconcile(e.code().into()))?;
    message
        .validate()
        .map_err(|e| DecodeError::Reconcile(e.code().into()))?;
    Ok(message)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

pub(crate) fn put_records(out: &mut Vec<u8>, records: &[Vec<u8>]) {
    put_varint(out, records.len() as u64);
    for record in records {
        put_varint(out, record.len() as u64);
        out.extend_from_slice(record);
    }
}

pub(crate) fn get_records(body: &[u8]) -> Result<Vec<Vec<u8>>, DecodeError> {
    let mut reader = Reader(body);
    let count = reader.count(SYNC_BATCH_RECORDS_MAX)?;
    let mut records = Vec::with_capacity(count);
    let mut total = 0usize;
    for _ in 0..count {
        let len = reader.varint()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > RECORD_BYTES_MAX {
            return Err(DecodeError::RecordTooLarge {
                bytes: len,
                max: RECORD_BYTES_MAX,
            });
        }
        total += len;
        if total > SYNC_BATCH_BYTES_MAX {
            return Err(DecodeError::TooLarge {
                bytes: total,
                max: SYNC_BATCH_BYTES_MAX,
            });
        }
        records.push(reader.take(len)?.to_vec());
    }
    reader.finish()?;
    Ok(records)
}

/// A cursor over a payload body.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A minimal LEB128 varint of at most 64 bits.
    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.take(1)?[0];
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(DecodeError::BadVarint);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                if i > 0 && byte == 0 {
                    return Err(DecodeError::BadVarint);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::BadVarint)
    }

    /// A varint count, at most `max`.
    pub(crate) fn count(&mut self, max: usize) -> Result<usize, DecodeError> {
        let count = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
        if count > max {
            return Err(DecodeError::TooMany { count, max });
        }
        Ok(count)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.0.len()))
        }
    }
}

/// Frames sync messages on a substream: a varint length, then the payload. Counts the frame
/// bytes it reads and writes (what the records and messages cost on the wire, before noise
/// and yamux add their headers).
#[derive(Debug, Clone, Default)]
struct SyncCodec {
    counters: Arc<Counters>,
}

/// Bytes a frame with a `payload`-byte payload takes: the LEB128 length, then the payload.
fn frame_len(payload: usize) -> u64 {
    let mut prefix = 1;
    let mut rest = payload >> 7;
    while rest > 0 {
        prefix += 1;
        rest >>= 7;
    }
    (prefix + payload) as u64
}

impl SyncCodec {
    async fn read_counted<T: AsyncRead + Unpin + Send>(&self, io: &mut T) -> io::Result<Vec<u8>> {
        let payload = read_frame(io).await?;
        Counters::add(&self.counters.sync_bytes_in, frame_len(payload.len()));
        Ok(payload)
    }

    async fn write_counted<T: AsyncWrite + Unpin + Send>(
        &self,
        io: &mut T,
        payload: &[u8],
    ) -> io::Result<()> {
        write_frame(io, payload).await?;
        Counters::add(&self.counters.sync_bytes_out, frame_len(payload.len()));
        Ok(())
    }
}

pub(crate) async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    read_frame_max(io, SYNC_FRAME_BYTES_MAX).await
}

/// Reads one frame whose payload may be at most `max` bytes, checked before it is read.
pub(crate) async fn read_frame_max<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut len: u64 = 0;
    let mut i = 0;
    loop {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        len |= u64::from(byte[0] & 0x7f) << (7 * i);
        if byte[0] & 0x80 == 0 {
            if i > 0 && byte[0] == 0 {
                return Err(invalid("sync frame length is not minimal"));
            }
            break;
        }
        i += 1;
        if i >= 4 {
            // Four varint bytes reach 2^28, far beyond the frame limit.
            return Err(invalid("sync frame length is too long"));
        }
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > max {
        return Err(invalid(format!(
            "frame is {len} bytes, more than the {max} allowed"
        )));
    }
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await?;
    Ok(payload)
}

pub(crate) async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    payload: &[u8],
) -> io::Result<()> {
    if payload.len() > SYNC_FRAME_BYTES_MAX {
        return Err(invalid("refusing to send a sync frame above the limit"));
    }
    let mut frame = Vec::with_capacity(payload.len() + 5);
    put_varint(&mut frame, payload.len() as u64);
    frame.extend_from_slice(payload);
    io.write_all(&frame).await?;
    io.flush().await
}

pub(crate) fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Appends a refusal code (at most [`REFUSAL_CODE_BYTES_MAX`] bytes) as every protocol's
/// `Refused` body carries it: a varint length, then the ASCII code.
pub(crate) fn put_refusal(out: &mut Vec<u8>, code: &str) {
    let code = &code.as_bytes()[..code.len().min(REFUSAL_CODE_BYTES_MAX)];
    put_varint(out, code.len() as u64);
    out.extend_from_slice(code);
}

impl Reader<'_> {
    /// Reads a refusal code written by [`put_refusal`].
    pub(crate) fn refusal(&mut self) -> Result<String, DecodeError> {
        let len = self.count(REFUSAL_CODE_BYTES_MAX)?;
        let code = self.take(len)?;
        if !code.iter().all(|b| b.is_ascii_graphic()) {
            return Err(DecodeError::BadCode);
        }
        Ok(String::from_utf8_lossy(code).into_owned())
    }
}

/// A message of a request-response protocol framed like sync frames: a LEB128 length, then
/// the payload (at most [`Framed::FRAME_BYTES_MAX`], checked before it is read).
pub(crate) trait Framed: Sized + Send + Sync + 'static {
    const FRAME_BYTES_MAX: usize;
    fn to_frame(&self) -> Vec<u8>;
    fn from_frame(bytes: &[u8]) -> Result<Self, String>;
}

/// The codec of the join, direct and blobs protocols: any request and response that are
/// [`Framed`]. (Sync has its own, which also counts the bytes.)
pub(crate) struct FramedCodec<Req, Resp>(std::marker::PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for FramedCodec<Req, Resp> {
    fn default() -> Self {
        FramedCodec(std::marker::PhantomData)
    }
}

impl<Req, Resp> Clone for FramedCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

async fn read_framed<M: Framed, T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<M> {
    let payload = read_frame_max(io, M::FRAME_BYTES_MAX).await?;
    M::from_frame(&payload).map_err(invalid)
}

async fn write_framed<M: Framed, T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    message: &M,
) -> io::Result<()> {
    let payload = message.to_frame();
    if payload.len() > M::FRAME_BYTES_MAX {
        return Err(invalid("refusing to send a frame above the limit"));
    }
    write_frame(io, &payload).await
}

impl<Req: Framed, Resp: Framed> request_response::Codec for FramedCodec<Req, Resp> {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_framed(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_framed(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Req,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_framed(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_framed(io, &response).await
    }
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let payload = self.read_counted(io).await?;
        SyncRequest::decode(&payload).map_err(|e| invalid(e.to_string()))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let payload = self.read_counted(io).await?;
        SyncResponse::decode(&payload).map_err(|e| invalid(e.to_string()))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_counted(io, &request.encode()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_counted(io, &response.encode()).await
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviour
// ---------------------------------------------------------------------------------------------

/// Denies connections to and from peers the [`PeerGate`] refuses. First in [`Behaviour`], so a
/// denied connection never reaches gossip or sync.
struct Gate {
    allowed: PeerGate,
    banned: Bans,
    /// Whether this node is a member now: only members' nodes take guests.
    member: Arc<std::sync::atomic::AtomicBool>,
    /// Open guest connections (peers the gate does not allow as members) and their IP.
    guests: HashMap<ConnectionId, (PeerId, Option<std::net::IpAddr>)>,
    guests_max: usize,
    guests_per_ip_max: usize,
    /// Peers refused outright, not even as guests (operator blocks, test partitions).
    blocked: PeerGate,
}

/// The IP address of a multiaddr, if it has one.
fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    })
}

/// Peers refused until the given instant for misbehaving; shared by the gate and the loop.
type Bans = Arc<Mutex<HashMap<PeerId, tokio::time::Instant>>>;

#[derive(Debug, thiserror::Error)]
#[error("peer {0} is not allowed to connect to this federation's node")]
struct NotAllowed(PeerId);

impl Gate {
    fn check(&self, peer: PeerId) -> Result<(), ConnectionDenied> {
        let banned = self
            .banned
            .lock()
            .map(|b| {
                b.get(&peer)
                    .is_some_and(|until| *until > tokio::time::Instant::now())
            })
            .unwrap_or(false);
        if banned {
            tracing::debug!(peer = %peer, "connection denied: peer is banned for misbehaving");
            return Err(ConnectionDenied::new(NotAllowed(peer)));
        }
        if (self.allowed)(&peer) {
            Ok(())
        } else {
            tracing::debug!(peer = %peer, "connection denied by the gate");
            Err(ConnectionDenied::new(NotAllowed(peer)))
        }
    }

    /// Admits a member's node, or a guest while there is room (join protocol only).
    fn admit(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match self.check(peer) {
            Ok(()) => Ok(()),
            Err(denied) => {
                let banned = self
                    .banned
                    .lock()
                    .map(|b| {
                        b.get(&peer)
                            .is_some_and(|until| *until > tokio::time::Instant::now())
                    })
                    .unwrap_or(false);
                if banned || (self.blocked)(&peer) || !self.member.load(Ordering::Relaxed) {
                    return Err(denied);
                }
                let ip = ip_of(addr);
                let from_ip = self.guests.values().filter(|(_, i)| *i == ip).count();
                if self.guests.len() >= self.guests_max || from_ip >= self.guests_per_ip_max {
                    tracing::debug!(peer = %peer, guests = self.guests.len(), from_ip,
                        "guest connection denied: no room");
                    return Err(denied);
                }
                tracing::debug!(peer = %peer, addr = %addr, "guest connection (join protocol only)");
                self.guests.insert(connection, (peer, ip));
                Ok(())
            }
        }
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(connection, peer, remote)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = peer
            && !self.member.load(Ordering::Relaxed)
        {
            // A candidate dials only the nodes it knows as members'.
            self.check(peer)?;
        } else if let Some(peer) = peer {
            // A member dials members, and a banned peer never.
            let banned = self
                .banned
                .lock()
                .map(|b| {
                    b.get(&peer)
                        .is_some_and(|until| *until > tokio::time::Instant::now())
                })
                .unwrap_or(false);
            if banned {
                return Err(ConnectionDenied::new(NotAllowed(peer)));
            }
        }
        Ok(vec![])
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(connection, peer, addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            self.guests.remove(&closed.connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gate: Gate,
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<SyncCodec>,
    join: request_response::Behaviour<crate::join::JoinCodec>,
    direct: request_response::Behaviour<crate::direct::DirectCodec>,
    // ----- blobs (attachments) -----
    blobs: request_response::Behaviour<crate::blobs::BlobCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kademlia: kad::Behaviour<kad::store::MemoryStore>,
}

fn gossip_behaviour(
    topic: &gossipsub::IdentTopic,
    heartbeat: Duration,
) -> anyhow::Result<gossipsub::Behaviour> {
    let heartbeats_per_window =
        (GOSSIP_VALIDATION_WINDOW.as_millis() / heartbeat.as_millis().max(1)).max(5) as usize;
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::from(blake3::hash(&message.data).as_bytes().to_vec())
        })
        .max_transmit_size(GOSSIP_TRANSMIT_BYTES_MAX)
        .heartbeat_interval(heartbeat)
        // Messages wait in the cache until ingest reports on them; keep them there for at least
        // GOSSIP_VALIDATION_WINDOW however short the heartbeat.
        .history_length(heartbeats_per_window)
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
    let mut behaviour =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    // Positive score is small and capped, so that invalid records dominate: an honest peer
    // earns at most +10, one invalid record costs -10, two cost -40 (below the gossip threshold
    // of -10 and the publish threshold of -50 soon after), three cost -90 (graylisted: we ignore
    // everything it sends). The penalty decays by 1 % a second (half-life about a minute).
    let topic_params = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        // P1: +0.01 per second in the mesh, at most +6. (The default quantum of 1 ms would give
        // +1000 within a second and hide any penalty.)
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 600.0,
        // P2: +0.1 per record first delivered, at most +5.
        first_message_deliveries_weight: 0.1,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 50.0,
        // P3, P3b: records are rare; do not punish mesh peers for delivering few of them.
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        // P4: -10 × (invalid records)².
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.99,
        ..Default::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        topic_score_cap: 10.0,
        // Only allowed peers connect at all, and several nodes may share an address (NAT, tests
        // on loopback): no penalty for sharing an IP.
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    params.topics.insert(topic.hash(), topic_params);
    behaviour
        .with_peer_score(params, gossipsub::PeerScoreThresholds::default())
        .map_err(|e| anyhow::anyhow!("gossipsub scoring: {e}"))?;
    Ok(behaviour)
}

// ---------------------------------------------------------------------------------------------
// Configuration, results, errors
// ---------------------------------------------------------------------------------------------

/// How a node's network runs.
#[derive(Clone)]
pub struct NetConfig {
    /// The federation served: names the topic and protocols.
    pub federation: FederationId,
    /// The node's transport identity (not the region's signing key).
    pub keypair: identity::Keypair,
    /// Where to listen, e.g. `/ip4/0.0.0.0/tcp/4001`.
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers to dial at start.
    pub bootstrap_addrs: Vec<Multiaddr>,
    /// Subscribe to the records topic and allow `publish`. Off: sync only.
    pub gossip: bool,
    /// Start a session when we dial a peer and the connection is up.
    pub sync_on_connect: bool,
    /// Start a session with a random connected peer this often; `None`: never.
    pub sync_interval: Option<Duration>,
    /// Dial the allowed peers kademlia discovers.
    pub discovery: bool,
    /// gossipsub heartbeat (mesh maintenance and gossip emission).
    pub gossip_heartbeat: Duration,
    /// How long one sync request may take.
    pub request_timeout: Duration,
    /// How long a connection without active streams stays open.
    pub idle_connection_timeout: Duration,
    /// Whether this node's region is a member now. The node updates it when membership
    /// changes. A member's node takes guests (join protocol only) and syncs with members; a
    /// candidate's node polls members' join protocol for the federation's state instead.
    pub member: Arc<std::sync::atomic::AtomicBool>,
    /// Guest connections at once, and from one IP address.
    pub guests_max: usize,
    pub guests_per_ip_max: usize,
    /// Peers refused outright, not even admitted as guests (operator blocks).
    pub blocked: PeerGate,
    /// What the blobs protocol serves to members' nodes (none: every request is refused).
    pub blob_source: Option<Arc<dyn crate::blobs::BlobSource>>,
}

impl fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetConfig")
            .field("federation", &self.federation)
            .field("peer_id", &self.keypair.public().to_peer_id())
            .field("listen_addrs", &self.listen_addrs)
            .field("bootstrap_addrs", &self.bootstrap_addrs)
            .field("gossip", &self.gossip)
            .field("sync_on_connect", &self.sync_on_connect)
            .field("sync_interval", &self.sync_interval)
            .field("discovery", &self.discovery)
            .finish_non_exhaustive()
    }
}

impl NetConfig {
    /// Defaults: gossip on, sync on connect and every 30 s, discovery on, 1 s heartbeat.
    pub fn new(federation: FederationId, keypair: identity::Keypair) -> NetConfig {
        NetConfig {
            federation,
            keypair,
            listen_addrs: Vec::new(),
            bootstrap_addrs: Vec::new(),
            gossip: true,
            sync_on_connect: true,
            sync_interval: Some(Duration::from_secs(30)),
            discovery: true,
            gossip_heartbeat: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            idle_connection_timeout: Duration::from_secs(120),
            member: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            guests_max: crate::join::GUESTS_MAX,
            guests_per_ip_max: crate::join::GUESTS_PER_IP_MAX,
            blocked: Arc::new(|_| false),
            blob_source: None,
        }
    }
}

/// A connected peer, for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    /// Listen addresses the peer reported (identify), then the addresses of our connections.
    pub addrs: Vec<Multiaddr>,
    /// Last ping round-trip time.
    pub rtt: Option<Duration>,
    /// When the last sync session we initiated with this peer completed.
    pub last_sync: Option<SystemTime>,
    /// The peer's gossipsub score (negative after invalid records).
    pub gossip_score: Option<f64>,
    /// Whether the peer is in our gossip mesh: records we accept are forwarded to it at once.
    pub gossip_mesh: bool,
    /// Whether the peer is a guest (not a member's node): it may use the join protocol only.
    pub guest: bool,
}

/// What one sync session did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Reconciliation round trips.
    pub rounds: u32,
    /// Ids the peer had and we lacked.
    pub missing: usize,
    /// Ids we had and the peer lacked.
    pub offered: usize,
    /// Fetched records that were new here.
    pub received_new: usize,
    /// Fetched records already known (e.g. arrived by gossip meanwhile).
    pub received_known: usize,
    /// Fetched records ingest refused, or that were not what we asked for.
    pub rejected: usize,
    /// Fetched records whose author is not a member as this node sees membership now.
    pub unauthorised: usize,
    /// Records the peer stored from our push.
    pub pushed_new: usize,
    /// Wall time of the session.
    pub elapsed: Duration,
}

/// Counters since start (shown as they are in the API's status).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct NetStats {
    pub gossip_received: u64,
    pub gossip_accepted: u64,
    pub gossip_ignored: u64,
    pub gossip_rejected: u64,
    /// Gossip messages dropped because the ingest queue was full.
    pub gossip_dropped: u64,
    pub sync_sessions_ok: u64,
    pub sync_sessions_failed: u64,
    /// Records that arrived by sync and were new here.
    pub sync_records_new: u64,
    pub sync_records_rejected: u64,
    pub sync_requests_inbound: u64,
    /// Peers disconnected and refused for misbehaving.
    pub peers_banned: u64,
    /// Sync frame bytes received and sent (length prefix and payload).
    pub sync_bytes_in: u64,
    pub sync_bytes_out: u64,
    /// Direct messages (expressions of interest and answers) received from peers.
    pub direct_inbound: u64,
}

#[derive(Debug, Default)]
struct Counters {
    gossip_received: AtomicU64,
    gossip_accepted: AtomicU64,
    gossip_ignored: AtomicU64,
    gossip_rejected: AtomicU64,
    gossip_dropped: AtomicU64,
    sync_sessions_ok: AtomicU64,
    sync_sessions_failed: AtomicU64,
    sync_records_new: AtomicU64,
    sync_records_rejected: AtomicU64,
    sync_requests_inbound: AtomicU64,
    peers_banned: AtomicU64,
    sync_bytes_in: AtomicU64,
    sync_bytes_out: AtomicU64,
    direct_inbound: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> NetStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            gossip_received: get(&self.gossip_received),
            gossip_accepted: get(&self.gossip_accepted),
            gossip_ignored: get(&self.gossip_ignored),
            gossip_rejected: get(&self.gossip_rejected),
            gossip_dropped: get(&self.gossip_dropped),
            sync_sessions_ok: get(&self.sync_sessions_ok),
            sync_sessions_failed: get(&self.sync_sessions_failed),
            sync_records_new: get(&self.sync_records_new),
            sync_records_rejected: get(&self.sync_records_rejected),
            sync_requests_inbound: get(&self.sync_requests_inbound),
            peers_banned: get(&self.peers_banned),
            sync_bytes_in: get(&self.sync_bytes_in),
            sync_bytes_out: get(&self.sync_bytes_out),
            direct_inbound: get(&self.direct_inbound),
        }
    }
}

/// Why a network operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("the network event loop has stopped; restart the node")]
    Stopped,
    #[error("not connected to peer {0}; dial it first")]
    NotConnected(PeerId),
    #[error("no peer is subscribed to the records topic yet; sync will deliver the record later")]
    NoPeers,
    #[error("gossip is disabled in this node's configuration")]
    GossipDisabled,
    #[error("record is {bytes} bytes, more than the {max} allowed")]
    TooLarge { bytes: usize, max: usize },
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("dial failed: {0}")]
    Dial(String),
    #[error("sync request to {peer} failed: {cause}")]
    Request { peer: PeerId, cause: String },
    #[error("the peer refused the request: {0}")]
    Refused(String),
    #[error("peer broke the sync protocol: {0}")]
    Protocol(String),
    #[error("local store failed during sync: {0}")]
    Store(String),
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A request to the event loop, with the channel for its reply.
#[derive(Debug)]
pub enum Command {
    Publish {
        record: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    SyncWith {
        peer: PeerId,
        reply: oneshot::Sender<Result<SyncReport, NetError>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Stats {
        reply: oneshot::Sender<NetStats>,
    },
    RecheckGate {
        reply: oneshot::Sender<usize>,
    },
    Direct {
        peer: PeerId,
        message: Vec<u8>,
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    // ----- blobs (attachments) -----
    /// Sends one blobs-protocol request to a connected peer.
    BlobAsk {
        peer: PeerId,
        ask: crate::blobs::BlobAsk,
        reply: oneshot::Sender<Result<crate::blobs::BlobAnswer, NetError>>,
    },
    /// Adds misbehaviour points to a peer for data it sent outside the loop's view.
    Penalise {
        peer: PeerId,
        points: u32,
        reason: &'static str,
    },
}

/// The handle the rest of the node uses. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NetClient {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
}

impl NetClient {
    /// This node's transport identity.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, receive) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| NetError::Stopped)?;
        receive.await.map_err(|_| NetError::Stopped)
    }

    /// Announces a record the node has already ingested (and stored) to the gossip mesh.
    /// [`NetError::NoPeers`] is not a loss: sync brings the record to peers later.
    pub async fn publish(&self, record: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Publish { record, reply })
            .await?
    }

    /// Dials an address and waits until the connection is up (or failed): the peer's id.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// Runs a sync session with a connected peer now (after the one running, if any).
    pub async fn sync_with(&self, peer: PeerId) -> Result<SyncReport, NetError> {
        self.call(|reply| Command::SyncWith { peer, reply }).await?
    }

    /// The addresses this node listens on; waits for the first if there is none yet.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// Counters since start.
    pub async fn stats(&self) -> Result<NetStats, NetError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// Sends a direct message to a connected member's node and waits for its answer:
    /// `Ok(true)` if it was new there; a refusal is [`NetError::Refused`] with its code.
    pub async fn direct(&self, peer: PeerId, message: Vec<u8>) -> Result<bool, NetError> {
        self.call(|reply| Command::Direct {
            peer,
            message,
            reply,
        })
        .await?
    }

    /// Asks the gate again about every connected peer and disconnects those it now refuses
    /// (after a membership change); returns how many were disconnected.
    pub async fn recheck_gate(&self) -> Result<usize, NetError> {
        self.call(|reply| Command::RecheckGate { reply }).await
    }

    // ----- blobs (attachments) -----

    /// Sends a blobs-protocol request to a connected member's node and waits for its answer.
    pub async fn blob_request(
        &self,
        peer: PeerId,
        ask: crate::blobs::BlobAsk,
    ) -> Result<crate::blobs::BlobAnswer, NetError> {
        self.call(|reply| Command::BlobAsk { peer, ask, reply })
            .await?
    }

    /// Adds misbehaviour points to a peer (e.g. for a blob piece that failed verification).
    pub async fn penalise(
        &self,
        peer: PeerId,
        points: u32,
        reason: &'static str,
    ) -> Result<(), NetError> {
        self.commands
            .send(Command::Penalise {
                peer,
                points,
                reason,
            })
            .await
            .map_err(|_| NetError::Stopped)
    }
}

// ---------------------------------------------------------------------------------------------
// Event loop
// ---------------------------------------------------------------------------------------------

/// Results of work done outside the event loop.
enum Internal {
    /// A former member's node was told of the membership change (or time ran out).
    Farewelled(PeerId),
    /// Forwarding verdicts for a batch of gossip messages, in order.
    GossipVerdicts {
        messages: Vec<(gossipsub::MessageId, PeerId)>,
        verdicts: Vec<Verdict>,
    },
    /// The batch of gossip messages in the pipeline was written (after its verdicts).
    GossipWritten,
    /// A session wants to send a sync request.
    Outbound {
        peer: PeerId,
        request: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, NetError>>,
    },
    /// An inbound request's answer is ready.
    Respond {
        channel: ResponseChannel<SyncResponse>,
        response: SyncResponse,
    },
    /// A peer sent something it should not have (penalised by `points`).
    Misbehaved {
        peer: PeerId,
        points: u32,
        reason: &'static str,
    },
    /// A join-protocol answer is ready; `gossip` is a join request to announce to members.
    JoinRespond {
        channel: ResponseChannel<crate::join::JoinAnswer>,
        answer: crate::join::JoinAnswer,
        gossip: Option<Vec<u8>>,
    },
    /// A direct message's answer is ready.
    DirectRespond {
        channel: ResponseChannel<crate::direct::DirectResponse>,
        response: crate::direct::DirectResponse,
    },
    /// A candidate ingested a state page from `peer`; `next` is where the following page
    /// starts, if there is one.
    JoinPageDone { peer: PeerId, next: Option<Id> },
    /// A blobs-protocol answer is ready.
    BlobRespond {
        channel: ResponseChannel<crate::blobs::BlobAnswer>,
        answer: crate::blobs::BlobAnswer,
    },
    /// A session ended.
    SessionDone {
        peer: PeerId,
        result: Result<SyncReport, NetError>,
    },
}

/// What we know about a connected peer.
#[derive(Debug, Default)]
struct PeerState {
    connections: HashMap<ConnectionId, Multiaddr>,
    listen_addrs: Vec<Multiaddr>,
    rtt: Option<Duration>,
    last_sync: Option<SystemTime>,
    /// Set while the peer is a guest (not a member's node): when its connection opened.
    guest_since: Option<tokio::time::Instant>,
}

/// A running session with a peer and who waits for it.
#[derive(Debug, Default)]
struct SessionSlot {
    waiters: Vec<oneshot::Sender<Result<SyncReport, NetError>>>,
    /// `sync_with` callers that arrived while it ran: they get a fresh session next.
    rerun: Vec<oneshot::Sender<Result<SyncReport, NetError>>>,
    /// Follow-ups already run for rejected records.
    followups: u32,
}

/// The responder's side of the session a peer runs with us.
#[derive(Debug, Default)]
struct ResponderSession {
    responder: Responder,
}

/// Builds the swarm, starts listening and dialling the bootstrap addresses, and returns the
/// client and the loop to run (`tokio::spawn(event_loop.run(shutdown))`).
pub fn new<R: Records>(
    config: NetConfig,
    records: Arc<R>,
    gate: PeerGate,
) -> anyhow::Result<(NetClient, EventLoop<R>)> {
    let local_peer_id = config.keypair.public().to_peer_id();
    let bans: Bans = Arc::default();
    let topic = gossipsub::IdentTopic::new(records_topic(&config.federation));
    let sync_name = StreamProtocol::try_from_owned(sync_protocol(&config.federation))
        .map_err(|e| anyhow::anyhow!("sync protocol name: {e}"))?;
    let kad_name = StreamProtocol::try_from_owned(kad_protocol(&config.federation))
        .map_err(|e| anyhow::anyhow!("kademlia protocol name: {e}"))?;

    let mut gossipsub = gossip_behaviour(&topic, config.gossip_heartbeat)?;
    if config.gossip {
        gossipsub
            .subscribe(&topic)
            .map_err(|e| anyhow::anyhow!("subscribing to {topic}: {e}"))?;
    }
    let counters = Arc::new(Counters::default());
    let sync = request_response::Behaviour::with_codec(
        SyncCodec {
            counters: Arc::clone(&counters),
        },
        [(sync_name, ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(config.request_timeout),
    );
    let join = request_response::Behaviour::with_codec(
        crate::join::JoinCodec::default(),
        [(
            crate::join::protocol_name(&config.federation)?,
            ProtocolSupport::Full,
        )],
        request_response::Config::default().with_request_timeout(config.request_timeout),
    );
    let direct = request_response::Behaviour::with_codec(
        crate::direct::DirectCodec::default(),
        [(
            crate::direct::protocol_name(&config.federation)?,
            ProtocolSupport::Full,
        )],
        request_response::Config::default().with_request_timeout(config.request_timeout),
    );
    let blobs = request_response::Behaviour::with_codec(
        crate::blobs::BlobCodec::default(),
        [(
            crate::blobs::protocol_name(&config.federation)?,
            ProtocolSupport::Full,
        )],
        request_response::Config::default().with_request_timeout(config.request_timeout),
    );
    let identify = identify::Behaviour::new(
        identify::Config::new(
            identify_version(&config.federation),
            config.keypair.public(),
        )
        .with_agent_version(format!("kim/{}", env!("CARGO_PKG_VERSION"))),
    );
    let mut kad_config = kad::Config::new(kad_name);
    // Without discovery the DHT has nothing to find: no bootstrap queries (and no warning
    // at every start that there is nobody to ask).
    kad_config
        .set_periodic_bootstrap_interval(config.discovery.then_some(Duration::from_secs(300)));
    if !config.discovery {
        // Nor any other way: by default kademlia puts every connected peer that speaks its
        // protocol into the routing table and, while the table is small, bootstraps on each
        // insert. That query asks the peers this node connected to for the nodes they know
        // and dials them, so a node with discovery off still ended up connected to every
        // member. With manual inserts the table holds only what `add_address` puts there,
        // which identify does only with discovery on.
        kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
    }
    let mut kademlia = kad::Behaviour::with_config(
        local_peer_id,
        kad::store::MemoryStore::new(local_peer_id),
        kad_config,
    );
    // Behind NAT or on loopback kademlia would stay a client and never answer queries.
    kademlia.set_mode(Some(kad::Mode::Server));
    let behaviour = Behaviour {
        gate: Gate {
            allowed: Arc::clone(&gate),
            banned: Arc::clone(&bans),
            member: Arc::clone(&config.member),
            guests: HashMap::new(),
            guests_max: config.guests_max,
            guests_per_ip_max: config.guests_per_ip_max,
            blocked: Arc::clone(&config.blocked),
        },
        gossipsub,
        sync,
        join,
        direct,
        blobs,
        identify,
        ping: ping::Behaviour::new(ping::Config::new()),
        kademlia,
    };

    let idle = config.idle_connection_timeout;
    let builder = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?;
    // QUIC (feature `quic`): the same identity; listen on `/ip4/…/udp/…/quic-v1`.
    #[cfg(feature = "quic")]
    let builder = builder.with_quic();
    let mut swarm = builder
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();

    for addr in &config.listen_addrs {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))?;
    }
    for addr in &config.bootstrap_addrs {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(addr = %addr, cause = %e, "bootstrap dial failed; will rely on others");
        }
    }

    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE_LEN);
    let (internal_tx, internal) = mpsc::channel(INTERNAL_QUEUE_LEN);
    let client = NetClient {
        commands: commands_tx,
        local_peer_id,
    };
    let event_loop = EventLoop {
        swarm,
        config,
        topic,
        records,
        gate,
        commands,
        internal,
        internal_tx,
        counters,
        inbound_permits: Arc::new(Semaphore::new(INBOUND_SYNC_TASKS_MAX)),
        join_permits: Arc::new(Semaphore::new(JOIN_TASKS_MAX)),
        peers: HashMap::new(),
        listen_addrs: Vec::new(),
        listen_waiters: Vec::new(),
        pending_dials: HashMap::new(),
        pending_requests: HashMap::new(),
        sessions: HashMap::new(),
        responders: HashMap::new(),
        gossip_queue: Vec::new(),
        gossip_queued_at: None,
        gossip_batch_at: None,
        gossip_ingesting: false,
        bans,
        misbehaviour: HashMap::new(),
        inbound_rate: HashMap::new(),
        redial_backoff: BOOTSTRAP_REDIAL_MIN,
        redial_at: tokio::time::Instant::now() + BOOTSTRAP_REDIAL_MIN,
        join_rate: HashMap::new(),
        join_submits: HashMap::new(),
        join_polls: HashMap::new(),
        join_polling: false,
        join_refresh: false,
        was_member: true,
        upgrade_redials: HashMap::new(),
        farewells: HashSet::new(),
        pending_direct: HashMap::new(),
        direct_rate: HashMap::new(),
        blob_requests: HashMap::new(),
        blob_rate: HashMap::new(),
        blob_permits: Arc::new(Semaphore::new(crate::blobs::BLOB_SERVE_TASKS_MAX)),
    };
    Ok((client, event_loop))
}

/// The task that owns the swarm. Run it with [`EventLoop::run`].
pub struct EventLoop<R: Records> {
    swarm: Swarm<Behaviour>,
    config: NetConfig,
    topic: gossipsub::IdentTopic,
    records: Arc<R>,
    gate: PeerGate,
    commands: mpsc::Receiver<Command>,
    /// Results of tasks; the loop holds a sender only to hand clones to tasks.
    internal: mpsc::Receiver<Internal>,
    internal_tx: mpsc::Sender<Internal>,
    counters: Arc<Counters>,
    /// Bounds inbound sync work running at once.
    inbound_permits: Arc<Semaphore>,
    /// Bounds join-protocol work running at once (separate from members' sync).
    join_permits: Arc<Semaphore>,
    peers: HashMap<PeerId, PeerState>,
    listen_addrs: Vec<Multiaddr>,
    /// `listen_addrs()` callers waiting for the first address.
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    pending_dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, NetError>>>,
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<SyncResponse, NetError>>>,
    /// Sessions we initiated, one per peer at a time.
    sessions: HashMap<PeerId, SessionSlot>,
    /// Sessions peers run with us, one per peer; dropped when the peer disconnects.
    responders: HashMap<PeerId, Arc<Mutex<ResponderSession>>>,
    /// Gossip messages waiting for the pipeline.
    gossip_queue: Vec<(gossipsub::MessageId, PeerId, Vec<u8>)>,
    /// When the oldest queued gossip message arrived, and when the batch in the pipeline left
    /// the queue (for the trace of each batch's wait and pipeline time).
    gossip_queued_at: Option<std::time::Instant>,
    gossip_batch_at: Option<(std::time::Instant, std::time::Duration)>,
    /// Whether a gossip batch is in the pipeline (one at a time, so the next one batches up).
    gossip_ingesting: bool,
    /// Peers refused for misbehaving, until when.
    bans: Bans,
    /// Misbehaviour points per peer since its last ban.
    misbehaviour: HashMap<PeerId, u32>,
    /// Inbound sync requests per peer in the current window.
    inbound_rate: HashMap<PeerId, (tokio::time::Instant, u32)>,
    /// Wait before the next bootstrap redial while isolated; doubles each time.
    redial_backoff: Duration,
    redial_at: tokio::time::Instant,
    /// Join-protocol asks per peer in the current window.
    join_rate: HashMap<PeerId, (tokio::time::Instant, u32)>,
    /// Join requests submitted per IP address in the current window.
    join_submits: HashMap<Option<std::net::IpAddr>, (tokio::time::Instant, u32)>,
    /// State pages a candidate's node asked for, by request.
    join_polls: HashMap<OutboundRequestId, PeerId>,
    /// Whether a state download is under way (a candidate polls one peer at a time).
    join_polling: bool,
    /// The join-state download in progress was started because a member's node refused this
    /// node's sync as a non-member's: it reads every page, member or not.
    join_refresh: bool,
    /// Membership as last seen by the loop (to notice admission).
    was_member: bool,
    /// Admitted guests to dial again, as members, once their guest connection has closed.
    upgrade_redials: HashMap<PeerId, Vec<Multiaddr>>,
    /// Former members' nodes being told of the membership change before they are disconnected
    /// (gossipsub sends them nothing meanwhile).
    farewells: HashSet<PeerId>,
    /// Direct messages sent, waiting for their answer.
    pending_direct: HashMap<OutboundRequestId, oneshot::Sender<Result<bool, NetError>>>,
    /// Direct messages per peer in the current window.
    direct_rate: HashMap<PeerId, (tokio::time::Instant, u32)>,
    // ----- blobs (attachments) -----
    /// Blobs requests we sent, by request, and who waits for the answer.
    blob_requests:
        HashMap<OutboundRequestId, oneshot::Sender<Result<crate::blobs::BlobAnswer, NetError>>>,
    /// Inbound blobs requests per peer in the current window.
    blob_rate: HashMap<PeerId, (tokio::time::Instant, u32)>,
    /// Bounds blob reads running at once.
    blob_permits: Arc<Semaphore>,
}

impl<R: Records> fmt::Debug for EventLoop<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("peer_id", self.swarm.local_peer_id())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Counts one request of `key` in its fixed window (a new window starts once `window` has
/// passed since the last one began) and says whether it is over `limit`. Every per-peer and
/// per-address rate of the loop goes through here.
fn over_rate<K: std::hash::Hash + Eq>(
    counts: &mut HashMap<K, (tokio::time::Instant, u32)>,
    key: K,
    now: tokio::time::Instant,
    window: Duration,
    limit: u32,
) -> bool {
    let slot = counts.entry(key).or_insert((now, 0));
    if now.duration_since(slot.0) >= window {
        *slot = (now, 0);
    }
    slot.1 += 1;
    slot.1 > limit
}

/// A random index below `len` (`len > 0`), from the standard library's per-process random keys.
fn random_index(len: usize) -> usize {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (hasher.finish() % len.max(1) as u64) as usize
}

impl<R: Records> EventLoop<R> {
    /// Runs until `shutdown` completes; then the swarm and all connections are dropped.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut sync_timer = self.config.sync_interval.map(|period| {
            let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer
        });
        let mut maintenance = tokio::time::interval(Duration::from_secs(1));
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut join_poll = tokio::time::interval(crate::join::JOIN_POLL_INTERVAL);
        join_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.was_member = self.is_member();
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(command) = self.commands.recv() => self.on_command(command),
                Some(internal) = self.internal.recv() => self.on_internal(internal),
                () = tick(&mut sync_timer) => self.periodic_sync(),
                _ = maintenance.tick() => {
                    self.redial_if_isolated();
                    self.ban_graylisted();
                    self.close_expired_guests();
                }
                _ = join_poll.tick() => self.poll_join_state(None),
            }
        }
        tracing::debug!(peer_id = %self.swarm.local_peer_id(), "network event loop stopped");
    }

    /// Whether this node's region is a member now.
    fn is_member(&self) -> bool {
        self.config.member.load(Ordering::Relaxed)
    }

    /// Whether a connected peer is a guest (not a member's node).
    /// Whether the peer holds only a guest's rights here: a guest, or a former member's node
    /// being told of its removal before it is disconnected.
    fn is_guest(&self, peer: &PeerId) -> bool {
        self.farewells.contains(peer)
            || self
                .peers
                .get(peer)
                .is_some_and(|p| p.guest_since.is_some())
    }

    /// Closes guest connections that have had their time.
    fn close_expired_guests(&mut self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, state)| {
                state.guest_since.is_some_and(|since| {
                    now.duration_since(since) >= crate::join::GUEST_CONNECTION_MAX
                })
            })
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            tracing::debug!(peer = %peer, "closing a guest connection that has had its time");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// A candidate's node asks a connected member's node for the federation's state (the
    /// membership records that will, one day, admit it). Members do nothing here.
    fn poll_join_state(&mut self, peer: Option<PeerId>) {
        if self.is_member() || self.join_polling {
            return;
        }
        let peer = match peer {
            Some(peer) => peer,
            None => {
                let members: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, s)| s.guest_since.is_none())
                    .map(|(p, _)| *p)
                    .collect();
                if members.is_empty() {
                    return;
                }
                members[random_index(members.len())]
            }
        };
        self.ask_join_page(peer, None);
    }

    fn ask_join_page(&mut self, peer: PeerId, after: Option<Id>) {
        if !self.swarm.is_connected(&peer) {
            self.join_polling = false;
            self.join_refresh = false;
            return;
        }
        self.join_polling = true;
        let id = self
            .swarm
            .behaviour_mut()
            .join
            .send_request(&peer, crate::join::JoinAsk::State { after });
        self.join_polls.insert(id, peer);
    }

    fn on_join_event(
        &mut self,
        event: request_response::Event<crate::join::JoinAsk, crate::join::JoinAnswer>,
    ) {
        use crate::join::{JoinAnswer, JoinAsk};
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            } => {
                let now = tokio::time::Instant::now();
                let over = over_rate(
                    &mut self.join_rate,
                    peer,
                    now,
                    crate::join::JOIN_RATE_WINDOW,
                    crate::join::JOIN_ASKS_PER_WINDOW,
                );
                let refuse = |this: &mut Self, channel, code: &str| {
                    let _ = this
                        .swarm
                        .behaviour_mut()
                        .join
                        .send_response(channel, JoinAnswer::Refused(code.into()));
                };
                if over {
                    refuse(self, channel, "join.rate_limited");
                    self.penalise(peer, POINTS_OVER_RATE, "join asks over the per-peer rate");
                    return;
                }
                if !self.is_member() {
                    refuse(self, channel, "join.not_a_member_node");
                    return;
                }
                let records = Arc::clone(&self.records);
                let internal = self.internal_tx.clone();
                // Guests get their own small budget, never members' sync permits; when it is
                // used up they are told to come back later.
                let Ok(permit) = Arc::clone(&self.join_permits).try_acquire_owned() else {
                    refuse(self, channel, "join.busy");
                    return;
                };
                match request {
                    JoinAsk::State { after } => {
                        tokio::spawn(async move {
                            let _permit = permit;
                            let answer = tokio::task::spawn_blocking(move || {
                                match records.join_state(after) {
                                    Ok((records, more)) => JoinAnswer::State { records, more },
                                    Err(e) => {
                                        tracing::warn!(cause = %e, "cannot read the federation state for a candidate");
                                        JoinAnswer::Refused("join.store_failure".into())
                                    }
                                }
                            })
                            .await
                            .unwrap_or_else(|_| JoinAnswer::Refused("join.internal".into()));
                            let _ = internal
                                .send(Internal::JoinRespond {
                                    channel,
                                    answer,
                                    gossip: None,
                                })
                                .await;
                        });
                    }
                    JoinAsk::Submit { record, invitation } => {
                        // Per address; IPv6 per /64, which one host can fill with addresses.
                        let ip = self
                            .peers
                            .get(&peer)
                            .and_then(|s| s.connections.get(&connection_id))
                            .and_then(ip_of)
                            .map(|ip| match ip {
                                std::net::IpAddr::V6(v6) => {
                                    let s = v6.segments();
                                    std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                                    ))
                                }
                                v4 => v4,
                            });
                        self.join_submits.retain(|_, (since, _)| {
                            now.duration_since(*since) < crate::join::JOIN_SUBMIT_WINDOW
                        });
                        if over_rate(
                            &mut self.join_submits,
                            ip,
                            now,
                            crate::join::JOIN_SUBMIT_WINDOW,
                            crate::join::JOIN_SUBMITS_PER_IP,
                        ) {
                            tracing::info!(peer = %peer, ip = ?ip, "join request refused: over the per-address rate");
                            refuse(self, channel, "join.rate_limited");
                            return;
                        }
                        tokio::spawn(async move {
                            let _permit = permit;
                            let (answer, gossip) = match records
                                .join_submit(record.clone(), invitation)
                                .await
                            {
                                Ok(new) => {
                                    tracing::info!(peer = %peer, new, "join request received");
                                    (JoinAnswer::Submitted { new }, new.then_some(record))
                                }
                                Err(code) => {
                                    tracing::info!(peer = %peer, code = %code, "join request refused");
                                    (JoinAnswer::Refused(code), None)
                                }
                            };
                            let _ = internal
                                .send(Internal::JoinRespond {
                                    channel,
                                    answer,
                                    gossip,
                                })
                                .await;
                        });
                    }
                }
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if self.join_polls.remove(&request_id).is_none() {
                    return;
                }
                match response {
                    JoinAnswer::State { records, more } => {
                        let next = if more {
                            records
                                .last()
                                .map(|r| kim_protocol::envelope::record_id(r).0)
                        } else {
                            None
                        };
                        let store = Arc::clone(&self.records);
                        let internal = self.internal_tx.clone();
                        tokio::spawn(async move {
                            let verdicts = store.ingest(records, Origin::Sync).await;
                            let new = verdicts.iter().filter(|v| **v == Verdict::New).count();
                            if new > 0 {
                                tracing::info!(peer = %peer, new, "federation state: new membership records");
                            }
                            let _ = internal.send(Internal::JoinPageDone { peer, next }).await;
                        });
                    }
                    other => {
                        tracing::debug!(peer = %peer, answer = ?other, "state request not served");
                        self.join_polling = false;
                        self.join_refresh = false;
                    }
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if self.join_polls.remove(&request_id).is_some() {
                    tracing::debug!(peer = %peer, cause = %error, "state request failed");
                    self.join_polling = false;
                    self.join_refresh = false;
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(
                    peer,
                    &error,
                    "join request",
                    "malformed or oversized join request",
                );
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_direct_event(
        &mut self,
        event: request_response::Event<crate::direct::DirectRequest, crate::direct::DirectResponse>,
    ) {
        use crate::direct::DirectResponse;
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                Counters::add(&self.counters.direct_inbound, 1);
                let refuse = |this: &mut Self, channel, code: &str| {
                    let _ = this
                        .swarm
                        .behaviour_mut()
                        .direct
                        .send_response(channel, DirectResponse::Refused(code.into()));
                };
                if self.is_guest(&peer) {
                    refuse(self, channel, "direct.not_member");
                    return;
                }
                let now = tokio::time::Instant::now();
                if over_rate(
                    &mut self.direct_rate,
                    peer,
                    now,
                    INBOUND_RATE_WINDOW,
                    DIRECT_MESSAGES_PER_WINDOW,
                ) {
                    // Refused without penalty: an honest outbox flushing a backlog backs off.
                    refuse(self, channel, "direct.rate_limited");
                    return;
                }
                let records = Arc::clone(&self.records);
                let internal = self.internal_tx.clone();
                tokio::spawn(async move {
                    let response = match records.direct(peer, request.0).await {
                        Ok(new) => DirectResponse::Taken { new },
                        Err(code) => {
                            tracing::info!(peer = %peer, code = %code, "direct message refused");
                            DirectResponse::Refused(code)
                        }
                    };
                    let _ = internal
                        .send(Internal::DirectRespond { channel, response })
                        .await;
                });
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending_direct.remove(&request_id) {
                    let _ = reply.send(match response {
                        DirectResponse::Taken { new } => Ok(new),
                        DirectResponse::Refused(code) => Err(NetError::Refused(code)),
                    });
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.pending_direct.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        cause: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(
                    peer,
                    &error,
                    "direct message",
                    "malformed or oversized direct message",
                );
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Notices this node's own admission (or removal) and acts on it: a newly admitted node
    /// starts syncing with every member's node it is connected to.
    fn check_own_membership(&mut self) {
        let member = self.is_member();
        if member == self.was_member {
            return;
        }
        self.was_member = member;
        if member {
            tracing::info!("this region is now a member: syncing with the federation");
            let peers: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, s)| s.guest_since.is_none())
                .map(|(p, _)| *p)
                .collect();
            for peer in peers {
                self.start_session(peer, None);
            }
        } else {
            tracing::warn!("this region is no longer a member of the federation");
        }
    }

    /// Dials the bootstrap addresses again, with backoff, while no peer is connected (the node
    /// started before its peers, or lost them all).
    fn redial_if_isolated(&mut self) {
        let now = tokio::time::Instant::now();
        // Guests do not count: a member's node with only candidates connected is cut off.
        if self.peers.values().any(|s| s.guest_since.is_none()) {
            self.redial_backoff = BOOTSTRAP_REDIAL_MIN;
            self.redial_at = now + BOOTSTRAP_REDIAL_MIN;
            return;
        }
        if self.config.bootstrap_addrs.is_empty() || now < self.redial_at {
            return;
        }
        tracing::debug!(
            backoff_ms = self.redial_backoff.as_millis() as u64,
            "no peers; dialling bootstrap addresses again"
        );
        for addr in self.config.bootstrap_addrs.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(addr = %addr, cause = %e, "bootstrap redial failed");
            }
        }
        self.redial_at = now + self.redial_backoff;
        self.redial_backoff = (self.redial_backoff * 2).min(BOOTSTRAP_REDIAL_MAX);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { record, reply } => {
                let _ = reply.send(self.publish(record));
            }
            Command::Dial { addr, reply } => {
                let opts = DialOpts::unknown_peer_id().address(addr).build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.pending_dials.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial(e.to_string())));
                    }
                }
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_infos());
            }
            Command::SyncWith { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    self.start_session(peer, Some(reply));
                } else {
                    let _ = reply.send(Err(NetError::NotConnected(peer)));
                }
            }
            Command::ListenAddrs { reply } => {
                if self.listen_addrs.is_empty() {
                    self.listen_waiters.push(reply);
                } else {
                    let _ = reply.send(self.listen_addrs.clone());
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.counters.snapshot());
            }
            Command::Direct {
                peer,
                message,
                reply,
            } => {
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(NetError::NotConnected(peer)));
                } else if self.is_guest(&peer) {
                    let _ = reply.send(Err(NetError::Refused("direct.not_member".into())));
                } else {
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .direct
                        .send_request(&peer, crate::direct::DirectRequest(message));
                    self.pending_direct.insert(id, reply);
                }
            }
            Command::RecheckGate { reply } => {
                self.check_own_membership();
                // Members' nodes the gate refuses now (removed, left, blocked) go; guests stay
                // until their time is up.
                let refused: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(peer, state)| {
                        (state.guest_since.is_none() && !(self.gate)(peer))
                            || (self.config.blocked)(peer)
                    })
                    .map(|(peer, _)| *peer)
                    .collect();
                for peer in &refused {
                    if (self.config.blocked)(peer) {
                        tracing::info!(peer = %peer, "disconnecting a blocked peer");
                        let _ = self.swarm.disconnect_peer_id(*peer);
                    } else {
                        self.farewell(*peer);
                    }
                }
                // Guests whose region was admitted: reconnect them as members, so gossipsub,
                // sync and kademlia start afresh with them (and the dialer's sync session
                // brings the newcomer up to date).
                let upgraded: Vec<(PeerId, Vec<Multiaddr>)> = self
                    .peers
                    .iter()
                    .filter(|(peer, state)| state.guest_since.is_some() && (self.gate)(peer))
                    .map(|(peer, state)| {
                        let mut addrs = state.listen_addrs.clone();
                        addrs.extend(state.connections.values().cloned());
                        (*peer, addrs)
                    })
                    .collect();
                for (peer, addrs) in upgraded {
                    tracing::info!(peer = %peer, "a guest's region was admitted; reconnecting it as a member");
                    let _ = self.swarm.disconnect_peer_id(peer);
                    self.upgrade_redials.insert(peer, addrs);
                }
                let _ = reply.send(refused.len());
            }
            Command::BlobAsk { peer, ask, reply } => {
                if self.swarm.is_connected(&peer) {
                    let id = self.swarm.behaviour_mut().blobs.send_request(&peer, ask);
                    self.blob_requests.insert(id, reply);
                } else {
                    let _ = reply.send(Err(NetError::NotConnected(peer)));
                }
            }
            Command::Penalise {
                peer,
                points,
                reason,
            } => self.penalise(peer, points, reason),
        }
    }

    // ----- blobs (attachments) -----

    /// Serves members' nodes from the blob source (guests get nothing), rate limited per peer;
    /// hands answers to our own requests to whoever waits.
    fn on_blobs_event(
        &mut self,
        event: request_response::Event<crate::blobs::BlobAsk, crate::blobs::BlobAnswer>,
    ) {
        use crate::blobs::BlobAnswer;
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let refuse = |this: &mut Self, channel, code: &str| {
                    let _ = this
                        .swarm
                        .behaviour_mut()
                        .blobs
                        .send_response(channel, BlobAnswer::Refused(code.into()));
                };
                if self.is_guest(&peer) || !(self.gate)(&peer) || !self.is_member() {
                    refuse(self, channel, "blobs.not_member");
                    return;
                }
                let now = tokio::time::Instant::now();
                if over_rate(
                    &mut self.blob_rate,
                    peer,
                    now,
                    crate::blobs::BLOB_RATE_WINDOW,
                    crate::blobs::BLOB_ASKS_PER_WINDOW,
                ) {
                    refuse(self, channel, "blobs.rate_limited");
                    self.penalise(
                        peer,
                        POINTS_OVER_RATE,
                        "blob requests over the per-peer rate",
                    );
                    return;
                }
                let Some(source) = self.config.blob_source.clone() else {
                    refuse(self, channel, "blobs.unsupported");
                    return;
                };
                let permits = Arc::clone(&self.blob_permits);
                let internal = self.internal_tx.clone();
                tokio::spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    let answer = tokio::task::spawn_blocking(move || {
                        crate::blobs::answer(&*source, &request)
                    })
                    .await
                    .unwrap_or_else(|_| BlobAnswer::Refused("blobs.internal".into()));
                    let _ = internal
                        .send(Internal::BlobRespond { channel, answer })
                        .await;
                });
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.blob_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.blob_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        cause: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer = %peer, cause = %error, "inbound blobs request failed");
                if matches!(error, request_response::InboundFailure::Io(ref e) if e.kind() == io::ErrorKind::InvalidData)
                {
                    self.penalise(
                        peer,
                        POINTS_BAD_FRAME,
                        "malformed or oversized blobs request",
                    );
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn publish(&mut self, record: Vec<u8>) -> Result<(), NetError> {
        if !self.config.gossip {
            return Err(NetError::GossipDisabled);
        }
        if record.len() > RECORD_BYTES_MAX {
            return Err(NetError::TooLarge {
                bytes: record.len(),
                max: RECORD_BYTES_MAX,
            });
        }
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), record)
        {
            Ok(_) => Ok(()),
            // Seen already (it came in by gossip before the node published it): nothing to do.
            Err(gossipsub::PublishError::Duplicate) => Ok(()),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(NetError::NoPeers),
            Err(e) => Err(NetError::Publish(e.to_string())),
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let gossipsub = &self.swarm.behaviour().gossipsub;
        let mesh: HashSet<&PeerId> = gossipsub.mesh_peers(&self.topic.hash()).collect();
        let mut infos: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(peer_id, state)| {
                let mut addrs = state.listen_addrs.clone();
                for addr in state.connections.values() {
                    if !addrs.contains(addr) {
                        addrs.push(addr.clone());
                    }
                }
                PeerInfo {
                    peer_id: *peer_id,
                    addrs,
                    rtt: state.rtt,
                    last_sync: state.last_sync,
                    gossip_score: gossipsub.peer_score(peer_id),
                    gossip_mesh: mesh.contains(peer_id),
                    guest: state.guest_since.is_some(),
                }
            })
            .collect();
        infos.sort_by_key(|info| info.peer_id);
        infos
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                let guest = !(self.gate)(&peer_id);
                let state = self.peers.entry(peer_id).or_default();
                state
                    .connections
                    .insert(connection_id, endpoint.get_remote_address().clone());
                if guest {
                    // A guest may use the join protocol only: gossipsub ignores it (and sends
                    // it nothing), sync refuses it, kademlia does not learn it.
                    state
                        .guest_since
                        .get_or_insert_with(tokio::time::Instant::now);
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .blacklist_peer(&peer_id);
                    self.swarm.behaviour_mut().kademlia.remove_peer(&peer_id);
                    return;
                }
                if state.guest_since.is_some() {
                    // A guest's region was admitted while its guest connection was still open:
                    // start afresh as a member (gossipsub never took its subscriptions, and the
                    // dialer's session on a new connection brings it up to date).
                    let mut addrs = state.listen_addrs.clone();
                    addrs.extend(state.connections.values().cloned());
                    self.upgrade_redials.insert(peer_id, addrs);
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if !self.is_member() {
                    // A candidate: ask the member's node where the federation stands.
                    if num_established.get() == 1 {
                        self.poll_join_state(Some(peer_id));
                    }
                    return;
                }
                // The dialer starts the session; the listener answers it and is pushed to, so one
                // session per new connection brings both sides up to date.
                if num_established.get() == 1 && endpoint.is_dialer() && self.config.sync_on_connect
                {
                    self.start_session(peer_id, None);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.connections.remove(&connection_id);
                }
                if num_established == 0 {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    let farewelled = self.farewells.remove(&peer_id);
                    if self
                        .peers
                        .remove(&peer_id)
                        .is_some_and(|s| s.guest_since.is_some())
                        || farewelled
                    {
                        self.swarm
                            .behaviour_mut()
                            .gossipsub
                            .remove_blacklisted_peer(&peer_id);
                    }
                    self.responders.remove(&peer_id);
                    self.inbound_rate.remove(&peer_id);
                    self.join_rate.remove(&peer_id);
                    self.direct_rate.remove(&peer_id);
                    self.blob_rate.remove(&peer_id);
                    if let Some(addrs) = self.upgrade_redials.remove(&peer_id) {
                        let opts = DialOpts::peer_id(peer_id)
                            .addresses(addrs)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        if let Err(e) = self.swarm.dial(opts) {
                            tracing::debug!(peer = %peer_id, cause = %e, "redial of an admitted guest failed");
                        }
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(peer = ?peer_id, cause = %error, "outgoing connection failed");
                if let Some(reply) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial(error.to_string())));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(addr = %address, "listening");
                self.listen_addrs.push(address);
                for waiter in self.listen_waiters.drain(..) {
                    let _ = waiter.send(self.listen_addrs.clone());
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                if let Err(e) = reason {
                    tracing::warn!(cause = %e, "listener closed");
                }
                if self.swarm.listeners().next().is_none() {
                    // No address will come: answer the waiters with what there is.
                    for waiter in self.listen_waiters.drain(..) {
                        let _ = waiter.send(self.listen_addrs.clone());
                    }
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gate(never) => match never {},
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message.data),
            BehaviourEvent::Gossipsub(_) => {}
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Join(event) => self.on_join_event(event),
            BehaviourEvent::Direct(event) => self.on_direct_event(event),
            BehaviourEvent::Blobs(event) => self.on_blobs_event(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let listen: Vec<Multiaddr> =
                    info.listen_addrs.into_iter().take(PEER_ADDRS_MAX).collect();
                if self.config.discovery && !self.is_guest(&peer_id) {
                    for addr in &listen {
                        self.swarm
                            .behaviour_mut()
                            .kademlia
                            .add_address(&peer_id, addr.clone());
                    }
                }
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.listen_addrs = listen;
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.rtt = Some(rtt);
                }
            }
            BehaviourEvent::Ping(_) => {}
            BehaviourEvent::Kademlia(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                if self.config.discovery
                    && peer != *self.swarm.local_peer_id()
                    && !self.swarm.is_connected(&peer)
                    && (self.gate)(&peer)
                {
                    tracing::debug!(peer = %peer, "dialling a peer kademlia found");
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addresses.into_vec())
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(peer = %peer, cause = %e, "discovery dial failed");
                    }
                }
            }
            BehaviourEvent::Kademlia(_) => {}
        }
    }

    // ----- misbehaviour ------------------------------------------------------------------------

    /// An inbound request of any protocol that failed: logged, and a malformed or oversized
    /// frame costs the sender points, with `bad_frame` as the reason.
    fn on_inbound_failure(
        &mut self,
        peer: PeerId,
        error: &request_response::InboundFailure,
        what: &'static str,
        bad_frame: &'static str,
    ) {
        tracing::debug!(peer = %peer, cause = %error, "inbound {what} failed");
        if matches!(error, request_response::InboundFailure::Io(_)) {
            self.penalise(peer, POINTS_BAD_FRAME, bad_frame);
        }
    }

    /// Adds misbehaviour points to a peer; at [`BAN_POINTS`] it is disconnected and refused for
    /// [`BAN_DURATION`]. Honest peers never earn points: they validate before forwarding.
    fn penalise(&mut self, peer: PeerId, points: u32, reason: &'static str) {
        let total = self.misbehaviour.entry(peer).or_default();
        *total = total.saturating_add(points);
        tracing::debug!(peer = %peer, points, total = *total, reason, "peer misbehaved");
        if *total < BAN_POINTS {
            return;
        }
        self.misbehaviour.remove(&peer);
        let until = tokio::time::Instant::now() + BAN_DURATION;
        if let Ok(mut bans) = self.bans.lock() {
            bans.retain(|_, t| *t > tokio::time::Instant::now());
            bans.insert(peer, until);
        }
        Counters::add(&self.counters.peers_banned, 1);
        tracing::warn!(
            peer = %peer,
            reason,
            minutes = BAN_DURATION.as_secs() / 60,
            "peer banned for misbehaving; disconnecting"
        );
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Bans peers whose gossip score fell below the graylist threshold: gossipsub ignores
    /// everything they send from then on, so they would never earn more points here, yet
    /// would keep a connection. Three invalid records within about a minute get there; one
    /// or two (a membership change racing a record) decay away.
    fn ban_graylisted(&mut self) {
        let threshold = gossipsub::PeerScoreThresholds::default().graylist_threshold;
        let graylisted: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|peer| {
                self.swarm
                    .behaviour()
                    .gossipsub
                    .peer_score(peer)
                    .is_some_and(|score| score < threshold)
            })
            .copied()
            .collect();
        for peer in graylisted {
            self.penalise(
                peer,
                BAN_POINTS,
                "gossip score below the graylist threshold",
            );
        }
    }

    /// A member's node that the membership no longer admits (its region was removed or left)
    /// is pushed the membership records before it is disconnected, so it learns why: the
    /// deciding record may not have reached it before every member cut it off. It gets nothing
    /// else meanwhile (gossipsub ignores it, sync refuses it).
    fn farewell(&mut self, peer: PeerId) {
        if !self.farewells.insert(peer) {
            return;
        }
        tracing::info!(peer = %peer, "a member's node the gate now refuses: telling it, then disconnecting");
        self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
        let records = Arc::clone(&self.records);
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let told = tokio::time::timeout(FAREWELL_TIMEOUT, async {
                let mut after = None;
                loop {
                    let (page, more) = blocking(&records, move |r| r.join_state(after)).await?;
                    after = page.last().map(|b| *blake3::hash(b).as_bytes());
                    if !page.is_empty() {
                        request(&internal, peer, SyncRequest::Push(page)).await?;
                    }
                    if !more || after.is_none() {
                        return Ok::<(), NetError>(());
                    }
                }
            })
            .await;
            match told {
                Ok(Ok(())) => tracing::debug!(peer = %peer, "former member told of the membership"),
                Ok(Err(e)) => tracing::debug!(peer = %peer, cause = %e, "former member not told"),
                Err(_) => tracing::debug!(peer = %peer, "former member not told in time"),
            }
            let _ = internal.send(Internal::Farewelled(peer)).await;
        });
    }

    // ----- gossip ------------------------------------------------------------------------------

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, data: Vec<u8>) {
        Counters::add(&self.counters.gossip_received, 1);
        if self.gossip_queue.len() >= GOSSIP_QUEUE_RECORDS_MAX {
            Counters::add(&self.counters.gossip_dropped, 1);
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &id,
                    &source,
                    gossipsub::MessageAcceptance::Ignore,
                );
            return;
        }
        if self.gossip_queue.is_empty() {
            self.gossip_queued_at = Some(std::time::Instant::now());
        }
        self.gossip_queue.push((id, source, data));
        self.pump_gossip();
    }

    /// Hands the queued gossip messages to the pipeline if no batch is in it.
    fn pump_gossip(&mut self) {
        if self.gossip_ingesting || self.gossip_queue.is_empty() {
            return;
        }
        let take = self.gossip_queue.len().min(GOSSIP_BATCH_RECORDS_MAX);
        let mut messages = Vec::with_capacity(take);
        let mut batch = Vec::with_capacity(take);
        for (id, source, data) in self.gossip_queue.drain(..take) {
            messages.push((id, source));
            batch.push(data);
        }
        self.gossip_ingesting = true;
        let now = std::time::Instant::now();
        let waited = self
            .gossip_queued_at
            .map_or(std::time::Duration::ZERO, |at| now - at);
        self.gossip_queued_at = (!self.gossip_queue.is_empty()).then_some(now);
        self.gossip_batch_at = Some((now, waited));
        let records = Arc::clone(&self.records);
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            // Forwarded (or not) on the early verdicts; the next batch waits for the write.
            let (early, verdicts) = oneshot::channel();
            let report = async {
                // No early verdicts (the pipeline failed): every message is ignored.
                let verdicts = verdicts.await.unwrap_or_default();
                let _ = internal
                    .send(Internal::GossipVerdicts { messages, verdicts })
                    .await;
            };
            tokio::join!(report, records.ingest_gossip(batch, early));
            let _ = internal.send(Internal::GossipWritten).await;
        });
    }

    fn on_gossip_verdicts(
        &mut self,
        messages: Vec<(gossipsub::MessageId, PeerId)>,
        verdicts: Vec<Verdict>,
    ) {
        let verdicts = verdicts
            .into_iter()
            .chain(std::iter::repeat(Verdict::Failed));
        for ((id, source), verdict) in messages.into_iter().zip(verdicts) {
            let (acceptance, counter) = match verdict {
                Verdict::New => (
                    gossipsub::MessageAcceptance::Accept,
                    &self.counters.gossip_accepted,
                ),
                Verdict::Known | Verdict::Failed | Verdict::Unauthorised => (
                    gossipsub::MessageAcceptance::Ignore,
                    &self.counters.gossip_ignored,
                ),
                Verdict::Invalid => (
                    gossipsub::MessageAcceptance::Reject,
                    &self.counters.gossip_rejected,
                ),
            };
            Counters::add(counter, 1);
            if verdict == Verdict::Invalid {
                tracing::debug!(peer = %source, message = %id, "invalid gossip record; peer penalised");
                self.penalise(source, POINTS_INVALID_RECORD, "invalid gossip record");
            }
            let found = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&id, &source, acceptance);
            if !found {
                tracing::debug!(message = %id, "gossip message left the cache before its verdict");
            }
        }
        if let Some((started, waited)) = self.gossip_batch_at.take() {
            tracing::trace!(
                queued_us = waited.as_micros() as u64,
                pipeline_us = started.elapsed().as_micros() as u64,
                "gossip batch verdicts"
            );
        }
    }

    // ----- sync: plumbing ----------------------------------------------------------------------

    fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::GossipVerdicts { messages, verdicts } => {
                self.on_gossip_verdicts(messages, verdicts)
            }
            Internal::GossipWritten => {
                self.gossip_ingesting = false;
                self.pump_gossip();
            }
            Internal::Outbound {
                peer,
                request,
                reply,
            } => {
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(NetError::NotConnected(peer)));
                    return;
                }
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
                self.pending_requests.insert(id, reply);
            }
            Internal::Farewelled(peer) => {
                if (self.gate)(&peer) && !(self.config.blocked)(&peer) {
                    // Admitted again meanwhile.
                    self.farewells.remove(&peer);
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .remove_blacklisted_peer(&peer);
                } else {
                    tracing::info!(peer = %peer, "disconnecting a peer the gate now refuses");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Internal::Respond { channel, response } => {
                // Fails only when the peer is gone or the request timed out.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_response(channel, response);
            }
            Internal::SessionDone { peer, result } => self.on_session_done(peer, result),
            Internal::JoinRespond {
                channel,
                answer,
                gossip,
            } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .join
                    .send_response(channel, answer);
                if let Some(record) = gossip
                    && let Err(e) = self.publish(record)
                {
                    tracing::debug!(cause = %e, "join request not gossiped; sync carries it");
                }
            }
            Internal::DirectRespond { channel, response } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .direct
                    .send_response(channel, response);
            }
            Internal::BlobRespond { channel, answer } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blobs
                    .send_response(channel, answer);
            }
            Internal::JoinPageDone { peer, next } => {
                self.join_polling = false;
                self.check_own_membership();
                if let Some(after) = next
                    && (!self.is_member() || self.join_refresh)
                {
                    self.ask_join_page(peer, Some(after));
                } else {
                    self.join_refresh = false;
                }
            }
            Internal::Misbehaved {
                peer,
                points,
                reason,
            } => self.penalise(peer, points, reason),
        }
    }

    fn on_sync_event(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_sync_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if matches!(error, request_response::OutboundFailure::Io(_)) {
                    self.penalise(
                        peer,
                        POINTS_BAD_FRAME,
                        "malformed or oversized sync response",
                    );
                }
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        cause: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.on_inbound_failure(
                    peer,
                    &error,
                    "sync request",
                    "malformed or oversized sync request",
                );
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    // ----- sync: responder ---------------------------------------------------------------------

    fn on_sync_request(
        &mut self,
        peer: PeerId,
        request: SyncRequest,
        channel: ResponseChannel<SyncResponse>,
    ) {
        Counters::add(&self.counters.sync_requests_inbound, 1);
        if self.is_guest(&peer) {
            // Not a member's node (a candidate, or someone the gate no longer lets in as a
            // member): nothing of the federation for it here, and nothing from it is taken.
            let refusal = SyncResponse::Refused("sync.not_member".into());
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, refusal);
            return;
        }
        let now = tokio::time::Instant::now();
        if over_rate(
            &mut self.inbound_rate,
            peer,
            now,
            INBOUND_RATE_WINDOW,
            INBOUND_REQUESTS_PER_WINDOW,
        ) {
            let refusal = SyncResponse::Refused("sync.rate_limited".into());
            let _ = self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, refusal);
            self.penalise(
                peer,
                POINTS_OVER_RATE,
                "sync requests over the per-peer rate",
            );
            return;
        }
        let records = Arc::clone(&self.records);
        let internal = self.internal_tx.clone();
        let permits = Arc::clone(&self.inbound_permits);
        let counters = Arc::clone(&self.counters);
        match request {
            SyncRequest::Reconcile { start, message } => {
                let session = if start {
                    let session = Arc::new(Mutex::new(ResponderSession::default()));
                    self.responders.insert(peer, Arc::clone(&session));
                    session
                } else if let Some(session) = self.responders.get(&peer) {
                    Arc::clone(session)
                } else {
                    let refusal = SyncResponse::Refused("sync.no_session".into());
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, refusal);
                    return;
                };
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let response = tokio::task::spawn_blocking(move || {
                        answer_reconcile(&*records, &session, message)
                    })
                    .await
                    .unwrap_or_else(|_| SyncResponse::Refused("sync.internal".into()));
                    let _ = internal.send(Internal::Respond { channel, response }).await;
                });
            }
            SyncRequest::Fetch(ids) => {
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let response =
                        tokio::task::spawn_blocking(move || answer_fetch(&*records, &ids))
                            .await
                            .unwrap_or_else(|_| SyncResponse::Refused("sync.internal".into()));
                    let _ = internal.send(Internal::Respond { channel, response }).await;
                });
            }
            SyncRequest::Push(batch) => {
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let verdicts = records.ingest(batch, Origin::Sync).await;
                    let new = verdicts.iter().filter(|v| **v == Verdict::New).count();
                    let rejected = verdicts.iter().filter(|v| **v == Verdict::Invalid).count();
                    Counters::add(&counters.sync_records_new, new as u64);
                    Counters::add(&counters.sync_records_rejected, rejected as u64);
                    if rejected > 0 {
                        tracing::debug!(peer = %peer, rejected, "peer pushed records ingest refused");
                        let _ = internal
                            .send(Internal::Misbehaved {
                                peer,
                                points: POINTS_INVALID_RECORD.saturating_mul(rejected as u32),
                                reason: "pushed invalid records",
                            })
                            .await;
                    }
                    let response = SyncResponse::Ack {
                        new: new as u32,
                        rejected: rejected as u32,
                    };
                    let _ = internal.send(Internal::Respond { channel, response }).await;
                });
            }
        }
    }

    // ----- sync: initiator ---------------------------------------------------------------------

    fn periodic_sync(&mut self) {
        if !self.is_member() {
            return;
        }
        let candidates: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(peer, state)| {
                state.guest_since.is_none() && !self.sessions.contains_key(peer)
            })
            .map(|(peer, _)| *peer)
            .collect();
        if candidates.is_empty() {
            return;
        }
        let peer = candidates[random_index(candidates.len())];
        self.start_session(peer, None);
    }

    fn start_session(
        &mut self,
        peer: PeerId,
        waiter: Option<oneshot::Sender<Result<SyncReport, NetError>>>,
    ) {
        if self.is_guest(&peer) {
            // Nothing of the federation goes to a guest, whoever asks.
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(NetError::Refused("sync.not_member".into())));
            }
            return;
        }
        if let Some(slot) = self.sessions.get_mut(&peer) {
            slot.rerun.extend(waiter);
            return;
        }
        let slot = SessionSlot {
            waiters: waiter.into_iter().collect(),
            ..SessionSlot::default()
        };
        self.spawn_session(peer, slot);
    }

    fn spawn_session(&mut self, peer: PeerId, slot: SessionSlot) {
        self.sessions.insert(peer, slot);
        let records = Arc::clone(&self.records);
        let internal = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = run_session(peer, &records, &internal).await;
            let _ = internal.send(Internal::SessionDone { peer, result }).await;
        });
    }

    fn on_session_done(&mut self, peer: PeerId, result: Result<SyncReport, NetError>) {
        let Some(slot) = self.sessions.remove(&peer) else {
            return;
        };
        match &result {
            Ok(report) => {
                Counters::add(&self.counters.sync_sessions_ok, 1);
                Counters::add(&self.counters.sync_records_new, report.received_new as u64);
                Counters::add(&self.counters.sync_records_rejected, report.rejected as u64);
                if report.rejected > 0 {
                    self.penalise(
                        peer,
                        POINTS_INVALID_RECORD.saturating_mul(report.rejected as u32),
                        "sent invalid records in sync",
                    );
                }
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.last_sync = Some(SystemTime::now());
                }
                tracing::info!(
                    peer = %peer, rounds = report.rounds, missing = report.missing,
                    offered = report.offered, received = report.received_new,
                    rejected = report.rejected, unauthorised = report.unauthorised, pushed = report.pushed_new,
                    ms = report.elapsed.as_millis() as u64, "sync session done"
                );
            }
            Err(e) => {
                Counters::add(&self.counters.sync_sessions_failed, 1);
                tracing::info!(peer = %peer, cause = %e, "sync session failed");
                // A member's node says this node's region is not a member: it was removed or
                // left while this node was away. Read the membership as a candidate would.
                if matches!(e, NetError::Refused(code) if code == "sync.not_member")
                    && self.is_member()
                    && !self.join_polling
                {
                    tracing::info!(peer = %peer, "a member's node refuses us as a non-member; reading the federation's membership");
                    self.join_refresh = true;
                    self.ask_join_page(peer, None);
                }
            }
        }
        for waiter in slot.waiters {
            let _ = waiter.send(result.clone());
        }
        let followup = matches!(&result, Ok(r) if (r.rejected > 0 || r.unauthorised > 0) && r.received_new > 0)
            && slot.followups < SYNC_FOLLOWUPS_MAX;
        let connected = self.swarm.is_connected(&peer);
        if !slot.rerun.is_empty() || (followup && connected) {
            let next = SessionSlot {
                waiters: slot.rerun,
                rerun: Vec::new(),
                followups: if followup { slot.followups + 1 } else { 0 },
            };
            self.spawn_session(peer, next);
        }
    }
}

/// Answers one reconciliation message of a peer's session.
fn answer_reconcile<R: Records>(
    records: &R,
    session: &Mutex<ResponderSession>,
    message: Message,
) -> SyncResponse {
    let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
    match records.reconcile(SyncStep::Respond(&mut session.responder, message)) {
        Ok(SyncOutcome::Stepped(Ok(step))) => match step.next {
            Some(next) => SyncResponse::Reconcile(next),
            None => SyncResponse::Refused("sync.internal".into()),
        },
        Ok(SyncOutcome::Stepped(Err(e))) => SyncResponse::Refused(e.code().into()),
        Ok(SyncOutcome::Started(..)) => SyncResponse::Refused("sync.internal".into()),
        Err(e) => {
            tracing::warn!(cause = %e, "cannot read the sync set to answer a peer");
            SyncResponse::Refused("sync.store_failure".into())
        }
    }
}

/// Answers a fetch with the held records, cut at the batch budget.
fn answer_fetch<R: Records>(records: &R, ids: &[Id]) -> SyncResponse {
    match records.get(ids) {
        Ok(found) => SyncResponse::Records(cut_to_budget(found).0),
        Err(e) => {
            tracing::warn!(cause = %e, "cannot read records to answer a fetch");
            SyncResponse::Refused("sync.store_failure".into())
        }
    }
}

/// Keeps the longest prefix within [`SYNC_BATCH_RECORDS_MAX`] and [`SYNC_BATCH_BYTES_MAX`];
/// returns it and the rest.
fn cut_to_budget(mut records: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut total = 0usize;
    let mut keep = 0usize;
    for record in &records {
        if keep == SYNC_BATCH_RECORDS_MAX || total + record.len() > SYNC_BATCH_BYTES_MAX {
            break;
        }
        total += record.len();
        keep += 1;
    }
    let rest = records.split_off(keep);
    (records, rest)
}

async fn request(
    internal: &mpsc::Sender<Internal>,
    peer: PeerId,
    request: SyncRequest,
) -> Result<SyncResponse, NetError> {
    let (reply, response) = oneshot::channel();
    internal
        .send(Internal::Outbound {
            peer,
            request,
            reply,
        })
        .await
        .map_err(|_| NetError::Stopped)?;
    match response.await.map_err(|_| NetError::Stopped)?? {
        SyncResponse::Refused(code) => Err(NetError::Refused(code)),
        other => Ok(other),
    }
}

/// Runs one session as initiator: reconcile, fetch what we lack, push what the peer lacks.
async fn run_session<R: Records>(
    peer: PeerId,
    records: &Arc<R>,
    internal: &mpsc::Sender<Internal>,
) -> Result<SyncReport, NetError> {
    let started = Instant::now();
    let mut report = SyncReport::default();
    let (mut initiator, first) = match blocking(records, |r| r.reconcile(SyncStep::Start)).await? {
        SyncOutcome::Started(initiator, first) => (initiator, first),
        SyncOutcome::Stepped(_) => return Err(NetError::Protocol("sync.internal".into())),
    };
    let mut message = first;
    let mut start = true;
    let mut need: Vec<Id> = Vec::new();
    let mut have: Vec<Id> = Vec::new();
    loop {
        let reply = match request(internal, peer, SyncRequest::Reconcile { start, message }).await?
        {
            SyncResponse::Reconcile(reply) => reply,
            other => return Err(unexpected(&other)),
        };
        start = false;
        // The initiator goes to the blocking thread with the step and comes back with it.
        let (back, outcome) = blocking(records, move |r| {
            let mut initiator = initiator;
            let outcome = r.reconcile(SyncStep::Initiate(&mut initiator, reply))?;
            Ok((initiator, outcome))
        })
        .await?;
        initiator = back;
        let step = match outcome {
            SyncOutcome::Stepped(step) => step.map_err(|e| NetError::Protocol(e.code().into()))?,
            SyncOutcome::Started(..) => return Err(NetError::Protocol("sync.internal".into())),
        };
        report.rounds = initiator.rounds();
        report.missing += step.need.len();
        report.offered += step.have.len();
        need.extend(step.need);
        have.extend(step.have);
        let mut full = std::collections::VecDeque::new();
        while need.len() >= SYNC_FETCH_IDS_MAX {
            full.push_back(need.drain(..SYNC_FETCH_IDS_MAX).collect::<Vec<Id>>());
        }
        fetch_pipelined(peer, records, internal, full, &mut report).await?;
        while have.len() >= SYNC_BATCH_RECORDS_MAX {
            let batch: Vec<Id> = have.drain(..SYNC_BATCH_RECORDS_MAX).collect();
            push(peer, records, internal, batch, &mut report).await?;
        }
        match step.next {
            Some(next) => message = next,
            None => break,
        }
    }
    if !need.is_empty() {
        fetch(peer, records, internal, need, &mut report).await?;
    }
    if !have.is_empty() {
        push(peer, records, internal, have, &mut report).await?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Runs a synchronous store call on a blocking thread.
async fn blocking<R: Records, T: Send + 'static>(
    records: &Arc<R>,
    work: impl FnOnce(&R) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, NetError> {
    let records = Arc::clone(records);
    tokio::task::spawn_blocking(move || work(&records))
        .await
        .map_err(|e| NetError::Store(format!("store task failed: {e}")))?
        .map_err(|e| NetError::Store(e.to_string()))
}

fn unexpected(response: &SyncResponse) -> NetError {
    let name = match response {
        SyncResponse::Reconcile(_) => "reconcile",
        SyncResponse::Records(_) => "records",
        SyncResponse::Ack { .. } => "ack",
        SyncResponse::Refused(_) => "refused",
    };
    NetError::Protocol(format!("unexpected {name} response"))
}

/// Fetches `ids` (at most [`SYNC_FETCH_IDS_MAX`]) and ingests what comes back, asking again for
/// what the peer left out for room while each answer brings something.
async fn fetch<R: Records>(
    peer: PeerId,
    records: &Arc<R>,
    internal: &mpsc::Sender<Internal>,
    mut wanted: Vec<Id>,
    report: &mut SyncReport,
) -> Result<(), NetError> {
    while !wanted.is_empty() {
        let batch = match request(internal, peer, SyncRequest::Fetch(wanted.clone())).await? {
            SyncResponse::Records(batch) => batch,
            other => return Err(unexpected(&other)),
        };
        let (accepted, missing, unasked) = screen(&wanted, batch);
        report.rejected += unasked;
        if accepted.is_empty() {
            // The peer no longer holds them (superseded meanwhile) or answers nothing.
            break;
        }
        tally(records.ingest(accepted, Origin::Sync).await, report)?;
        wanted = missing;
    }
    Ok(())
}

/// Keeps only the records that were asked for, once each. Returns them, the ids asked for and
/// not received, and how many records in the answer were not asked for (or came twice).
fn screen(asked: &[Id], batch: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Vec<Id>, usize) {
    let asked_set: HashSet<Id> = asked.iter().copied().collect();
    let mut got: HashSet<Id> = HashSet::with_capacity(batch.len());
    let mut accepted = Vec::with_capacity(batch.len());
    let mut unasked = 0;
    for record in batch {
        let id = *blake3::hash(&record).as_bytes();
        if asked_set.contains(&id) && got.insert(id) {
            accepted.push(record);
        } else {
            unasked += 1;
        }
    }
    let missing = asked
        .iter()
        .filter(|id| !got.contains(*id))
        .copied()
        .collect();
    (accepted, missing, unasked)
}

fn tally(verdicts: Vec<Verdict>, report: &mut SyncReport) -> Result<(), NetError> {
    for verdict in verdicts {
        match verdict {
            Verdict::New => report.received_new += 1,
            Verdict::Known => report.received_known += 1,
            Verdict::Invalid => report.rejected += 1,
            Verdict::Unauthorised => report.unauthorised += 1,
            Verdict::Failed => {
                return Err(NetError::Store("ingest failed for fetched records".into()));
            }
        }
    }
    Ok(())
}

/// How many full fetch batches a session works on at once: each is asked for, screened and
/// ingested on its own, so batches' signature checks run beside another's store write while
/// others are on the wire. The ingest pipeline applies write sets one at a time in any case,
/// and this bounds the records held in memory to a few batches (at most 6 × 2 MiB).
/// `kim bench catchup` (100k records, 2 cores): 9.6k–12.6k records/s with 3, 13.0k–15.1k
/// with 6.
const SYNC_FETCHES_IN_FLIGHT: usize = 6;

/// Fetches full batches, [`SYNC_FETCHES_IN_FLIGHT`] at a time, so the network round trip and
/// the peer's store reads overlap our verification and store write. Ids a peer did not send
/// are retried at the end (see [`fetch`]).
async fn fetch_pipelined<R: Records>(
    peer: PeerId,
    records: &Arc<R>,
    internal: &mpsc::Sender<Internal>,
    batches: std::collections::VecDeque<Vec<Id>>,
    report: &mut SyncReport,
) -> Result<(), NetError> {
    let steps = libp2p::futures::stream::iter(batches)
        .map(|asked| async move {
            let response = request(internal, peer, SyncRequest::Fetch(asked.clone())).await?;
            let SyncResponse::Records(batch) = response else {
                return Err(unexpected(&response));
            };
            let (accepted, missing, unasked) = screen(&asked, batch);
            let verdicts = if accepted.is_empty() {
                Vec::new()
            } else {
                records.ingest(accepted, Origin::Sync).await
            };
            Ok::<_, NetError>((verdicts, missing, unasked))
        })
        .buffered(SYNC_FETCHES_IN_FLIGHT);
    let mut steps = std::pin::pin!(steps);
    let mut retry = Vec::new();
    while let Some(step) = steps.next().await {
        let (verdicts, missing, unasked) = step?;
        report.rejected += unasked;
        retry.extend(missing);
        tally(verdicts, report)?;
    }
    if !retry.is_empty() {
        fetch(peer, records, internal, retry, report).await?;
    }
    Ok(())
}

/// Pushes the records with `ids` to the peer, in batches within the budget.
async fn push<R: Records>(
    peer: PeerId,
    records: &Arc<R>,
    internal: &mpsc::Sender<Internal>,
    ids: Vec<Id>,
    report: &mut SyncReport,
) -> Result<(), NetError> {
    let mut pending = blocking(records, move |r| r.get(&ids)).await?;
    while !pending.is_empty() {
        let (batch, rest) = cut_to_budget(pending);
        pending = rest;
        match request(internal, peer, SyncRequest::Push(batch)).await? {
            SyncResponse::Ack { new, .. } => report.pushed_new += new as usize,
            other => return Err(unexpected(&other)),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn roundtrip_request(request: SyncRequest) {
        let bytes = request.encode();
        assert_eq!(SyncRequest::decode(&bytes), Ok(request));
    }

    fn roundtrip_response(response: SyncResponse) {
        let bytes = response.encode();
        assert_eq!(SyncResponse::decode(&bytes), Ok(response));
    }

    fn some_message() -> Message {
        let set = SortedIds::new((0u8..10).map(|i| [i; 32]).collect());
        Initiator::start(&set).1
    }

    #[test]
    fn messages_round_trip() {
        roundtrip_request(SyncRequest::Reconcile {
            start: true,
            message: some_message(),
        });
        roundtrip_request(SyncRequest::Reconcile {
            start: false,
            message: some_message(),
        });
        roundtrip_request(SyncRequest::Fetch(vec![]));
        roundtrip_request(SyncRequest::Fetch(vec![[7; 32]; SYNC_FETCH_IDS_MAX]));
        roundtrip_request(SyncRequest::Push(vec![vec![1, 2, 3], vec![]]));
        roundtrip_response(SyncResponse::Reconcile(some_message()));
        roundtrip_response(SyncResponse::Records(vec![vec![9; RECORD_BYTES_MAX]]));
        roundtrip_response(SyncResponse::Ack {
            new: 300,
            rejected: u32::MAX,
        });
        roundtrip_response(SyncResponse::Refused("sync.no_session".into()));
    }

    #[test]
    fn limits_are_checked_before_work() {
        let mut too_many = vec![2u8];
        put_varint(&mut too_many, (SYNC_FETCH_IDS_MAX + 1) as u64);
        assert!(matches!(
            SyncRequest::decode(&too_many),
            Err(DecodeError::TooMany { .. })
        ));

        let mut big_record = vec![3u8];
        put_varint(&mut big_record, 1);
        put_varint(&mut big_record, (RECORD_BYTES_MAX + 1) as u64);
        assert!(matches!(
            SyncRequest::decode(&big_record),
            Err(DecodeError::RecordTooLarge { .. })
        ));

        let over_budget = SyncRequest::Push(vec![vec![0; RECORD_BYTES_MAX]; 40]).encode();
        assert!(matches!(
            SyncRequest::decode(&over_budget),
            Err(DecodeError::TooLarge { .. } | DecodeError::TooMany { .. })
        ));

        assert!(matches!(
            SyncRequest::decode(&vec![0u8; SYNC_FRAME_BYTES_MAX + 1]),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "empty"),
            (vec![9], "unknown tag"),
            (vec![2, 1, 0], "truncated id"),
            (vec![2, 0, 0], "trailing byte"),
            (vec![2, 0x80, 0x00], "non-minimal varint"),
            (vec![0, 0xff], "garbage reconcile message"),
            (vec![3, 3, b'a', b' ', b'b'], "wrong tag for request"),
        ];
        for (bytes, what) in cases {
            assert!(SyncRequest::decode(&bytes).is_err(), "{what}");
        }
        assert!(
            SyncResponse::decode(&[3, 2, b'a', 0]).is_err(),
            "non-ASCII code"
        );
        assert!(
            SyncResponse::decode(&[2, 0x80, 0x80, 0x80, 0x80, 0x10, 0]).is_err(),
            "u32"
        );
    }

    #[test]
    fn frame_len_counts_the_length_prefix() {
        for n in [0usize, 1, 127, 128, 16_383, 16_384, SYNC_FRAME_BYTES_MAX] {
            let mut prefix = Vec::new();
            put_varint(&mut prefix, n as u64);
            assert_eq!(frame_len(n), (prefix.len() + n) as u64, "{n}");
        }
    }

    #[test]
    fn budget_cuts_keep_order_and_progress() {
        let records = vec![vec![0u8; RECORD_BYTES_MAX]; 40];
        let (first, rest) = cut_to_budget(records);
        assert_eq!(first.len(), SYNC_BATCH_BYTES_MAX / RECORD_BYTES_MAX);
        assert_eq!(first.len() + rest.len(), 40);
        let (small, none) = cut_to_budget(vec![vec![1]; SYNC_BATCH_RECORDS_MAX + 3]);
        assert_eq!((small.len(), none.len()), (SYNC_BATCH_RECORDS_MAX, 3));
    }

    #[tokio::test]
    async fn frames_round_trip_and_refuse_oversized_lengths() {
        let payload = SyncRequest::Fetch(vec![[1; 32]; 3]).encode();
        let mut wire = Vec::new();
        write_frame(&mut libp2p::futures::io::Cursor::new(&mut wire), &payload)
            .await
            .expect("write");
        let read = read_frame(&mut libp2p::futures::io::Cursor::new(&wire))
            .await
            .expect("read");
        assert_eq!(read, payload);

        let mut huge = Vec::new();
        put_varint(&mut huge, (SYNC_FRAME_BYTES_MAX + 1) as u64);
        let err = read_frame(&mut libp2p::futures::io::Cursor::new(&huge))
            .await
            .expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}

/// The node's ingest pipeline and store, as the network sees them.
mod ingest_adapter {
    use std::future::Future;

    use kim_protocol::RecordId;
    use kim_protocol::reconcile::Id;

    use super::{Origin, Records, SyncOutcome, SyncStep, Verdict};
    use crate::ingest::{Accepted, Ingest, Rejected, Source};

    /// What the network makes of a pipeline result.
    fn verdict_of(result: &Result<Accepted, Rejected>) -> Verdict {
        match result {
            Ok(accepted) if accepted.is_new() => Verdict::New,
            Ok(_) => Verdict::Known,
            // Our store failed: not the sender's fault, do not penalise.
            Err(Rejected::Store(_)) => Verdict::Failed,
            Err(Rejected::NotMember | Rejected::RetiredKey | Rejected::UnknownAuthor) => {
                Verdict::Unauthorised
            }
            Err(_) => Verdict::Invalid,
        }
    }

    /// Most ids reserved up front for a sync snapshot, whatever the digest counts (a damaged
    /// count must not reserve gigabytes); beyond it the vector grows as it reads.
    const ID_CAPACITY_MAX: usize = 16 << 20;

    impl Records for Ingest {
        fn ingest(
            &self,
            records: Vec<Vec<u8>>,
            origin: Origin,
        ) -> impl Future<Output = Vec<Verdict>> + Send {
            let source = match origin {
                Origin::Gossip => Source::Gossip,
                Origin::Sync => Source::Sync,
            };
            async move {
                self.ingest_batch(records, source)
                    .await
                    .iter()
                    .map(verdict_of)
                    .collect()
            }
        }

        async fn ingest_gossip(
            &self,
            records: Vec<Vec<u8>>,
            early: tokio::sync::oneshot::Sender<Vec<Verdict>>,
        ) -> Vec<Verdict> {
            self.ingest_forecast(records, Source::Gossip, move |forecast| {
                let _ = early.send(forecast.iter().map(verdict_of).collect());
            })
            .await
            .iter()
            .map(verdict_of)
            .collect()
        }

        fn ids(&self) -> anyhow::Result<Vec<Id>> {
            // Sized from the digest's count: collecting into a growing vector copied it as it
            // doubled, half as much again at peak (48 MiB for a million ids instead of 32).
            let expected = usize::try_from(self.digest().count()).unwrap_or(0);
            let mut ids = Vec::with_capacity(expected.min(ID_CAPACITY_MAX));
            for id in self.store().record_ids() {
                ids.push(id?.0);
            }
            Ok(ids)
        }

        fn reconcile(&self, step: SyncStep<'_>) -> anyhow::Result<SyncOutcome> {
            let set = self.store().sync_set();
            let outcome = step.run(&set);
            set.finish()?;
            Ok(outcome)
        }

        fn get(&self, ids: &[Id]) -> anyhow::Result<Vec<Vec<u8>>> {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(bytes) = self.store().record(&RecordId(*id))? {
                    out.push(bytes);
                }
            }
            Ok(out)
        }
    }
}
