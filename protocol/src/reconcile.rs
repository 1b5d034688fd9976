//! Range-based set reconciliation of record ids: two nodes find the ids one holds and the other
//! lacks, with traffic that grows with the difference between their sets rather than with the sets.
//!
//! Both sides keep their ids sorted. The initiator sends fingerprints of a few ranges covering the
//! whole id space; a side that receives a fingerprint different from its own splits the range by
//! its own count into smaller ranges, or, when the range is small, lists what it holds there
//! (the initiator as 4-byte short ids, the responder as whole ids). Ranges whose fingerprints
//! agree are dropped, so only ranges that differ are ever split again: one missing record among a
//! million costs three round trips and about a kilobyte.
//!
//! `protocol/SPEC.md §11` specifies the algorithm, the byte layout and the limits. It also says
//! why this is our own implementation rather than the `negentropy` crate, with numbers measured on
//! the same sets at the same 64 KiB message limit: never more bytes or round trips, 2 to 3 times
//! fewer bytes at a million ids, and 4 to 9 times fewer round trips at 1 to 10 % difference.
//!
//! # Layout
//! - [`IdSet`]: what the algorithm needs from a store of ids (sorted access and sums over
//!   position ranges); [`SortedIds`] is the in-memory implementation, with block prefix sums so
//!   that a range fingerprint costs O(1) instead of O(range).
//! - [`Fingerprint`], [`IdSum`], [`short_id`]: what summarises a range or an id.
//! - [`Message`], [`Range`], [`Bound`], [`Mode`]: what crosses the wire (postcard), bounded by
//!   [`RECONCILE_MESSAGE_BYTES_MAX`]. [`Message::decode`] checks the size before decoding.
//! - [`Initiator`], [`Responder`]: the two roles' step functions. They do no IO, read no clock and
//!   use no randomness; the state they keep between messages is `Send`.
//! - [`simulate`]: runs both roles against each other in memory and counts rounds and bytes.
//!
//! # Architecture invariants
//! - A message always covers the whole id space `[0, ∞)` with ranges in ascending order.
//! - The responder answers each message from the message and its set alone, keeping nothing
//!   but a round counter. The initiator keeps the differences found so far and compares as if they
//!   had been exchanged, so a session reports each difference exactly once.
//! - Every message this module builds encodes to at most [`RECONCILE_MESSAGE_BYTES_MAX`] bytes.
//!   Every limit a peer could abuse is checked before the work it would cause, and both roles
//!   stop after [`RECONCILE_ROUNDS_MAX`] rounds.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::ops::Range as IndexRange;

/// A record id: the BLAKE3 hash of the record's envelope bytes.
pub type Id = [u8; 32];

/// The last [`SHORT_ID_BYTES`] bytes of an id. The initiator lists these instead of whole ids in
/// small ranges: the tail of a hash is as random as any other part, while the leading bytes of
/// ids in one narrow range are mostly shared and would carry little information.
pub type ShortId = [u8; SHORT_ID_BYTES];

/// Length of an id in bytes.
pub const ID_BYTES: usize = 32;
/// Length of a short id in bytes; collisions are caught by the reply's check fingerprint.
pub const SHORT_ID_BYTES: usize = 4;
/// Length of a range fingerprint in bytes (BLAKE3 output truncated; see SPEC.md §11 for why 12).
pub const FINGERPRINT_BYTES: usize = 12;

/// Largest encoded reconciliation message, in bytes. Checked before decoding; every message this
/// module builds stays within it by sending back what it had no room to answer.
pub const RECONCILE_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Most messages one side answers in a session. A peer that keeps a session going longer is
/// misbehaving or the difference is huge; either way the caller fetches what was found and starts
/// a new session later. 1024 rounds carry up to 64 MiB each way, two million whole ids.
pub const RECONCILE_ROUNDS_MAX: u32 = 1024;
/// Most whole ids one range of a message may list ([`Mode::Ids`], [`Mode::ShortIdsReply`]).
/// Chosen so that the largest single range still fits in a message with room to spare, which is
/// what guarantees that every message makes progress.
pub const RECONCILE_RANGE_IDS_MAX: usize = 1024;
/// Most short ids one range may list ([`Mode::ShortIds`] and the reply's `lacking`).
pub const RECONCILE_RANGE_SHORT_IDS_MAX: usize = 1024;

/// How many ranges a side splits a differing range into. Sixteen keeps a level of fingerprints
/// near 270 bytes and reaches a leaf of a million ids in four levels.
pub const RECONCILE_SPLIT_RANGES: usize = 16;
/// A responder whose range differs lists its whole ids when it holds at most this many; above,
/// it splits. Whole ids cost 32 bytes each but need no further round trip.
pub const RECONCILE_RESPONDER_LEAF_IDS_MAX: usize = 31;
/// An initiator whose range differs lists short ids when it holds at most this many; above, it
/// splits. Short ids cost 4 bytes each and the reply settles the range.
pub const RECONCILE_INITIATOR_LEAF_IDS_MAX: usize = 96;

/// Most room kept at the end of a message for echoes of ranges that found no room for an answer;
/// only what the remaining ranges need is kept.
const ECHO_BYTES_MAX: usize = 8 * 1024;
/// Least room for answers in a message.
const WORK_BYTES_MAX: usize =
    RECONCILE_MESSAGE_BYTES_MAX - ECHO_BYTES_MAX - FINAL_RANGE_BYTES - MESSAGE_COUNT_BYTES_MAX;
/// Bytes of the range count at the start of a message (a varint below 2^21).
const MESSAGE_COUNT_BYTES_MAX: usize = 3;
/// Bytes of a final fingerprint range up to infinity: empty bound, tag, fingerprint.
const FINAL_RANGE_BYTES: usize = 2 + FINGERPRINT_BYTES;
/// Splits into parts of at least this many ids may move boundaries to shorten bounds.
const SPLIT_SLACK_PART_IDS_MIN: usize = 64;
/// A message is dense when at least this many fingerprints were compared ...
const DENSE_COMPARED_MIN: usize = 8;
/// ... and at least this share of them (in percent) differ. Most ranges then hold a difference,
/// and an initiator lists short ids for ranges of up to [`RECONCILE_RANGE_SHORT_IDS_MAX`] ids
/// rather than splitting again (measured: 8 instead of 16 round trips for 100 000 ids with 10 000
/// differences, 33 instead of 37 for 1 000 000 ids with 10 000).
const DENSE_DIFFERING_PERCENT: usize = 75;
/// Ids per block of [`SortedIds`]' prefix sums: one 32-byte sum per 32 ids, one byte per id.
const SUM_BLOCK_IDS: usize = 32;
/// BLAKE3 derive-key context of range fingerprints, in the style of the state digest's (§10).
pub const FINGERPRINT_CONTEXT: &str = "kim 2026 reconcile fingerprint v1";

// Splitting needs more ids than ranges, and a leaf must fit in a message with room to spare.
const _: () = assert!(RECONCILE_RESPONDER_LEAF_IDS_MAX >= RECONCILE_SPLIT_RANGES);
const _: () = assert!(RECONCILE_INITIATOR_LEAF_IDS_MAX >= RECONCILE_SPLIT_RANGES);
const _: () = assert!(RECONCILE_RANGE_IDS_MAX >= RECONCILE_RESPONDER_LEAF_IDS_MAX);
const _: () = assert!(RECONCILE_RANGE_SHORT_IDS_MAX >= RECONCILE_INITIATOR_LEAF_IDS_MAX);
const _: () = assert!(RANGE_BYTES_MAX + 2 * (ID_BYTES + 3) <= WORK_BYTES_MAX);

/// Largest encoding of one range: a reply listing the most whole ids and short ids allowed.
const RANGE_BYTES_MAX: usize = (1 + ID_BYTES)
    + 1
    + 3
    + RECONCILE_RANGE_IDS_MAX * ID_BYTES
    + 3
    + RECONCILE_RANGE_SHORT_IDS_MAX * SHORT_ID_BYTES
    + FINGERPRINT_BYTES;

/// Errors from decoding or stepping a reconciliation message. Every variant but
/// [`ReconcileError::TooManyRounds`] and [`ReconcileError::Finished`] means the peer sent something
/// this protocol never produces: the caller should end the session with that peer (and may count
/// it against the peer's score).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The encoded message is larger than [`RECONCILE_MESSAGE_BYTES_MAX`].
    #[error("reconcile message is {bytes} bytes, more than the {max} allowed; end the session")]
    MessageTooLarge {
        /// Size of the message received.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a postcard encoding of [`Message`].
    #[error("reconcile message does not decode ({reason}); end the session")]
    Malformed {
        /// What the decoder reported.
        reason: String,
    },
    /// Bytes follow the end of the message.
    #[error("{bytes} bytes follow the reconcile message; end the session")]
    TrailingBytes {
        /// How many.
        bytes: usize,
    },
    /// The message uses a non-minimal varint (SPEC.md §2.3).
    #[error("reconcile message is not in canonical form (a non-minimal varint); end the session")]
    NonCanonical,
    /// The message has no ranges, so it does not cover the id space.
    #[error("reconcile message has no ranges; a message must end with a range up to infinity")]
    NoRanges,
    /// A bound is longer than an id or ends with a zero byte (two encodings of one value).
    #[error("range {index} has a malformed bound: {reason}; end the session")]
    MalformedBound {
        /// Index of the range in the message.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Ranges are not in strictly ascending order, or the last one does not reach infinity.
    #[error("range {index} is out of place: {reason}; end the session")]
    MalformedRange {
        /// Index of the range in the message.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A range lists more ids than the protocol allows.
    #[error("range {index} lists {count} ids, more than the {max} allowed; end the session")]
    TooManyIds {
        /// Index of the range in the message.
        index: usize,
        /// How many it lists.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A list of whole ids is unsorted, repeats an id, or names an id outside its range.
    #[error("range {index} lists ids out of order or outside the range; end the session")]
    MalformedIdList {
        /// Index of the range in the message.
        index: usize,
    },
    /// A range uses a mode that only the other role sends.
    #[error("range {index} uses mode {mode}, which only the other role sends; end the session")]
    UnexpectedMode {
        /// Index of the range in the message.
        index: usize,
        /// Name of the mode.
        mode: &'static str,
    },
    /// The session went on for more than [`RECONCILE_ROUNDS_MAX`] rounds.
    #[error("reconcile session went past {max} rounds; fetch what was found and start again later")]
    TooManyRounds {
        /// The limit.
        max: u32,
    },
    /// The initiator was stepped after it had already finished.
    #[error("reconcile session already finished; start a new one")]
    Finished,
}

impl ReconcileError {
    /// A stable code for logs, metrics and the HTTP API, independent of the message text.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MessageTooLarge { .. } => "reconcile.message_too_large",
            Self::Malformed { .. } => "reconcile.malformed_message",
            Self::TrailingBytes { .. } => "reconcile.trailing_bytes",
            Self::NonCanonical => "reconcile.non_canonical",
            Self::NoRanges => "reconcile.no_ranges",
            Self::MalformedBound { .. } => "reconcile.malformed_bound",
            Self::MalformedRange { .. } => "reconcile.malformed_range",
            Self::TooManyIds { .. } => "reconcile.too_many_ids",
            Self::MalformedIdList { .. } => "reconcile.malformed_id_list",
            Self::UnexpectedMode { .. } => "reconcile.unexpected_mode",
            Self::TooManyRounds { .. } => "reconcile.too_many_rounds",
            Self::Finished => "reconcile.session_finished",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fingerprints
// ---------------------------------------------------------------------------------------------

/// The sum of ids read as little-endian 256-bit integers, modulo 2^256. Addition is order-free
/// and invertible, so a store can keep prefix sums and answer any range with one subtraction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IdSum([u64; 4]);

impl IdSum {
    /// The sum of a single id.
    pub fn of(id: &Id) -> Self {
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(id.chunks_exact(8)) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            *limb = u64::from_le_bytes(bytes);
        }
        Self(limbs)
    }

    /// Adds one id.
    pub fn add_id(&mut self, id: &Id) {
        *self = self.plus(&Self::of(id));
    }

    /// `self + other` modulo 2^256.
    #[must_use]
    pub fn plus(&self, other: &Self) -> Self {
        let mut out = [0u64; 4];
        let mut carry = false;
        for (i, slot) in out.iter_mut().enumerate() {
            let (sum, c1) = self.0[i].overflowing_add(other.0[i]);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *slot = sum;
            carry = c1 || c2;
        }
        Self(out)
    }

    /// `self - other` modulo 2^256.
    #[must_use]
    pub fn minus(&self, other: &Self) -> Self {
        let mut out = [0u64; 4];
        let mut borrow = false;
        for (i, slot) in out.iter_mut().enumerate() {
            let (diff, b1) = self.0[i].overflowing_sub(other.0[i]);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            *slot = diff;
            borrow = b1 || b2;
        }
        Self(out)
    }

    /// The sum as 32 little-endian bytes, as hashed into a fingerprint.
    pub fn to_le_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, limb) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        out
    }
}

/// Fingerprint of the ids in a range: the first 12 bytes of
/// `derive_key(FINGERPRINT_CONTEXT, count as u64 LE ‖ sum)`, where `sum` is the [`IdSum`] as 32
/// bytes LE: the state digest's construction (SPEC.md §10) under its own context, over a range.
/// The count makes sets of different sizes differ even when their sums agree; hashing makes the
/// bytes uniform; 12 bytes are as strong as the sum underneath (SPEC.md §11, "Security").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; FINGERPRINT_BYTES]);

impl Fingerprint {
    /// The fingerprint of a set with this sum and this many ids.
    pub fn new(sum: &IdSum, count: u64) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(FINGERPRINT_CONTEXT);
        hasher.update(&count.to_le_bytes());
        hasher.update(&sum.to_le_bytes());
        let hash = hasher.finalize();
        let mut out = [0u8; FINGERPRINT_BYTES];
        out.copy_from_slice(&hash.as_bytes()[..FINGERPRINT_BYTES]);
        Self(out)
    }

    /// The fingerprint of a slice of ids.
    pub fn of_ids(ids: &[Id]) -> Self {
        let mut sum = IdSum::default();
        for id in ids {
            sum.add_id(id);
        }
        Self::new(&sum, ids.len() as u64)
    }
}

/// The short id of an id: its last [`SHORT_ID_BYTES`] bytes.
pub fn short_id(id: &Id) -> ShortId {
    let mut out = [0u8; SHORT_ID_BYTES];
    out.copy_from_slice(&id[ID_BYTES - SHORT_ID_BYTES..]);
    out
}

// ---------------------------------------------------------------------------------------------
// Storage abstraction
// ---------------------------------------------------------------------------------------------

/// A sorted, duplicate-free set of ids, addressed by position, as reconciliation reads a store.
///
/// Positions are what make splitting by count possible: a side splits a differing range into
/// ranges holding equal numbers of its own ids, which keeps the tree balanced whatever ids an
/// adversary grinds. Implementations must keep the set unchanged during one call; between calls
/// it may grow (records fetched while a session runs), which the algorithm tolerates.
pub trait IdSet {
    /// Number of ids.
    fn len(&self) -> usize;

    /// Whether the set is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id at `index` in ascending order, `None` past the end.
    fn id_at(&self, index: usize) -> Option<Id>;

    /// The number of ids strictly less than `value` (the position of the first id `>= value`).
    fn lower_bound(&self, value: &Id) -> usize;

    /// The ids at positions in `range`, ascending; positions past the end are ignored.
    fn ids_in(&self, range: IndexRange<usize>) -> impl Iterator<Item = Id> + '_;

    /// The [`IdSum`] of the ids at positions in `range`. The default adds them one by one;
    /// stores with prefix sums or summed trees should override it.
    fn id_sum(&self, range: IndexRange<usize>) -> IdSum {
        let mut sum = IdSum::default();
        for id in self.ids_in(range) {
            sum.add_id(&id);
        }
        sum
    }

    /// Whether `id` is in the set.
    fn contains(&self, id: &Id) -> bool {
        self.id_at(self.lower_bound(id)).as_ref() == Some(id)
    }
}

/// An in-memory [`IdSet`]: a sorted `Vec` plus prefix sums every 32 ids, so a
/// range sum costs at most 62 additions however long the range (measured for a million ids in
/// SPEC.md §11) at a memory cost of one byte per id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SortedIds {
    /// The ids, ascending and without duplicates.
    ids: Vec<Id>,
    /// `block_sums[k]` is the sum of `ids[..k * SUM_BLOCK_IDS]`; one entry more than full blocks.
    block_sums: Vec<IdSum>,
}

impl SortedIds {
    /// Sorts and deduplicates `ids`.
    pub fn new(mut ids: Vec<Id>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        let mut set = Self {
            ids,
            block_sums: Vec::new(),
        };
        set.rebuild_sums_from(0);
        set
    }

    /// Inserts `id`, returning whether it was new. Costs O(n) (a move and the prefix sums after
    /// it): fine for a session's worth of fetched records, not for bulk loading (use [`Self::new`]).
    pub fn insert(&mut self, id: Id) -> bool {
        match self.ids.binary_search(&id) {
            Ok(_) => false,
            Err(position) => {
                self.ids.insert(position, id);
                self.rebuild_sums_from(position / SUM_BLOCK_IDS);
                true
            }
        }
    }

    /// The ids, ascending.
    pub fn as_slice(&self) -> &[Id] {
        &self.ids
    }

    /// Recomputes `block_sums[block + 1..]` (and `[0]`) after the ids from `block` on changed.
    fn rebuild_sums_from(&mut self, block: usize) {
        let blocks = self.ids.len() / SUM_BLOCK_IDS;
        self.block_sums.truncate(block + 1);
        if self.block_sums.is_empty() {
            self.block_sums.push(IdSum::default());
        }
        let mut sum = self.block_sums.last().copied().unwrap_or_default();
        for k in self.block_sums.len()..=blocks {
            let start = (k - 1) * SUM_BLOCK_IDS;
            for id in self.ids.get(start..start + SUM_BLOCK_IDS).unwrap_or(&[]) {
                sum.add_id(id);
            }
            self.block_sums.push(sum);
        }
    }

    /// Sum of `ids[..end]`, `end <= len`.
    fn prefix_sum(&self, end: usize) -> IdSum {
        let block = end / SUM_BLOCK_IDS;
        let mut sum = self.block_sums.get(block).copied().unwrap_or_default();
        for id in self.ids.get(block * SUM_BLOCK_IDS..end).unwrap_or(&[]) {
            sum.add_id(id);
        }
        sum
    }
}

impl FromIterator<Id> for SortedIds {
    fn from_iter<I: IntoIterator<Item = Id>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

impl IdSet for SortedIds {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn id_at(&self, index: usize) -> Option<Id> {
        self.ids.get(index).copied()
    }

    fn lower_bound(&self, value: &Id) -> usize {
        self.ids.partition_point(|id| id < value)
    }

    fn ids_in(&self, range: IndexRange<usize>) -> impl Iterator<Item = Id> + '_ {
        let end = range.end.min(self.ids.len());
        let start = range.start.min(end);
        self.ids[start..end].iter().copied()
    }

    fn id_sum(&self, range: IndexRange<usize>) -> IdSum {
        let end = range.end.min(self.ids.len());
        let start = range.start.min(end);
        self.prefix_sum(end).minus(&self.prefix_sum(start))
    }

    fn contains(&self, id: &Id) -> bool {
        self.ids.binary_search(id).is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// The exclusive upper end of a range: an id prefix standing for the prefix followed by zero
/// bytes, or infinity when empty. The splitter picks the shortest prefix that separates two
/// neighbouring ids near the split point, so bounds cost two or three bytes rather than 32.
///
/// A bound is canonical: at most 32 bytes and not ending in a zero byte, so each value has one
/// encoding and the empty encoding (value zero, useless as an upper end) can mean infinity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bound(pub Vec<u8>);

impl Bound {
    /// The bound above every id.
    pub fn infinity() -> Self {
        Self(Vec::new())
    }

    /// Whether this is the bound above every id.
    pub fn is_infinity(&self) -> bool {
        self.0.is_empty()
    }

    /// The id this bound stands for (prefix padded with zeros), `None` for infinity.
    pub fn value(&self) -> Option<Id> {
        if self.0.is_empty() {
            return None;
        }
        let mut out = [0u8; ID_BYTES];
        let len = self.0.len().min(ID_BYTES);
        out[..len].copy_from_slice(&self.0[..len]);
        Some(out)
    }

    /// Compares two bounds by value, infinity above everything.
    fn cmp_value(&self, other: &Self) -> Ordering {
        match (self.value(), other.value()) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => a.cmp(&b),
        }
    }

    /// Whether `id` lies below this bound.
    fn is_above(&self, id: &Id) -> bool {
        self.value().is_none_or(|value| *id < value)
    }

    fn check(&self, index: usize) -> Result<(), ReconcileError> {
        if self.0.len() > ID_BYTES {
            return Err(ReconcileError::MalformedBound {
                index,
                reason: "longer than an id",
            });
        }
        if self.0.last() == Some(&0) {
            return Err(ReconcileError::MalformedBound {
                index,
                reason: "ends with a zero byte",
            });
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        varint_len(self.0.len()) + self.0.len()
    }
}

/// What a message says about one range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Nothing to do here: the sender found the range in agreement, or settled it.
    Skip,
    /// The sender's fingerprint of its ids in the range.
    Fingerprint(Fingerprint),
    /// All of the sender's ids in the range, ascending. Sent by a responder for a small differing
    /// range (the initiator settles it without answering), or by an initiator whose short ids
    /// collided (the responder answers with its own `Ids`).
    Ids(Vec<Id>),
    /// Initiator only: the short ids of all the initiator's ids in the range, in its order.
    ShortIds(Vec<ShortId>),
    /// Responder only, answering [`Mode::ShortIds`] for the same range.
    ShortIdsReply {
        /// The responder's ids in the range whose short id the initiator did not list, ascending:
        /// ids the initiator lacks.
        missing: Vec<Id>,
        /// The initiator's short ids that match none of the responder's ids, ascending and
        /// distinct: ids the responder lacks.
        lacking: Vec<ShortId>,
        /// Fingerprint of the responder's ids whose short id the initiator listed. The initiator
        /// compares it with its own ids minus `lacking`; a mismatch means two different ids
        /// shared a short id, and the initiator falls back to whole ids for the range.
        check: Fingerprint,
    },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Fingerprint(_) => "fingerprint",
            Self::Ids(_) => "ids",
            Self::ShortIds(_) => "short_ids",
            Self::ShortIdsReply { .. } => "short_ids_reply",
        }
    }

    fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Skip => 0,
            Self::Fingerprint(_) => FINGERPRINT_BYTES,
            Self::Ids(ids) => varint_len(ids.len()) + ids.len() * ID_BYTES,
            Self::ShortIds(ids) => varint_len(ids.len()) + ids.len() * SHORT_ID_BYTES,
            Self::ShortIdsReply {
                missing, lacking, ..
            } => {
                varint_len(missing.len())
                    + missing.len() * ID_BYTES
                    + varint_len(lacking.len())
                    + lacking.len() * SHORT_ID_BYTES
                    + FINGERPRINT_BYTES
            }
        }
    }
}

/// One range of a message: it starts where the previous one ended (the first at zero) and ends
/// below `upper`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// Exclusive upper end; the last range of a message ends at infinity.
    pub upper: Bound,
    /// What the sender says about the range.
    pub mode: Mode,
}

impl Range {
    fn encoded_len(&self) -> usize {
        self.upper.encoded_len() + self.mode.encoded_len()
    }
}

/// A reconciliation message: ranges in strictly ascending order covering `[0, ∞)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The ranges, ascending, the last one ending at infinity.
    pub ranges: Vec<Range>,
}

impl Message {
    /// Decodes a message received from a peer, checking its size before any work.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReconcileError> {
        if bytes.len() > RECONCILE_MESSAGE_BYTES_MAX {
            return Err(ReconcileError::MessageTooLarge {
                bytes: bytes.len(),
                max: RECONCILE_MESSAGE_BYTES_MAX,
            });
        }
        let (message, rest) =
            postcard::take_from_bytes::<Self>(bytes).map_err(|err| ReconcileError::Malformed {
                reason: err.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(ReconcileError::TrailingBytes { bytes: rest.len() });
        }
        // With nothing left over, a message that re-encodes shorter used a non-minimal varint:
        // SPEC.md §2.3 allows one encoding per value.
        if message.encoded_len() != bytes.len() {
            return Err(ReconcileError::NonCanonical);
        }
        Ok(message)
    }

    /// Encodes the message with postcard, the project's wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising vectors and arrays into a growable buffer cannot fail; an empty result
        // would be rejected by the peer rather than go unnoticed.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// The length of [`Self::encode`]'s output, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.ranges.len()) + self.ranges.iter().map(Range::encoded_len).sum::<usize>()
    }

    /// Checks everything about the message that does not depend on the receiver's set: size,
    /// bound form and order, list lengths, and that whole-id lists are sorted and in their range.
    pub fn validate(&self) -> Result<(), ReconcileError> {
        let bytes = self.encoded_len();
        if bytes > RECONCILE_MESSAGE_BYTES_MAX {
            return Err(ReconcileError::MessageTooLarge {
                bytes,
                max: RECONCILE_MESSAGE_BYTES_MAX,
            });
        }
        let Some(last) = self.ranges.len().checked_sub(1) else {
            return Err(ReconcileError::NoRanges);
        };
        let mut lower: Option<&Bound> = None;
        for (index, range) in self.ranges.iter().enumerate() {
            range.upper.check(index)?;
            if range.upper.is_infinity() != (index == last) {
                return Err(ReconcileError::MalformedRange {
                    index,
                    reason: if index == last {
                        "the last range does not end at infinity"
                    } else {
                        "only the last range may end at infinity"
                    },
                });
            }
            if let Some(lower) = lower
                && lower.cmp_value(&range.upper) != Ordering::Less
            {
                return Err(ReconcileError::MalformedRange {
                    index,
                    reason: "its upper bound is not above the previous one",
                });
            }
            let lower_value = lower.and_then(Bound::value).unwrap_or([0u8; ID_BYTES]);
            let ids_ok = |ids: &[Id]| {
                ids.windows(2).all(|pair| pair[0] < pair[1])
                    && ids.first().is_none_or(|first| *first >= lower_value)
                    && ids.last().is_none_or(|last| range.upper.is_above(last))
            };
            match &range.mode {
                Mode::Skip | Mode::Fingerprint(_) => {}
                Mode::Ids(ids) => {
                    check_count(index, ids.len(), RECONCILE_RANGE_IDS_MAX)?;
                    if !ids_ok(ids) {
                        return Err(ReconcileError::MalformedIdList { index });
                    }
                }
                Mode::ShortIds(ids) => {
                    check_count(index, ids.len(), RECONCILE_RANGE_SHORT_IDS_MAX)?;
                }
                Mode::ShortIdsReply {
                    missing, lacking, ..
                } => {
                    check_count(index, missing.len(), RECONCILE_RANGE_IDS_MAX)?;
                    check_count(index, lacking.len(), RECONCILE_RANGE_SHORT_IDS_MAX)?;
                    if !ids_ok(missing) || !lacking.windows(2).all(|pair| pair[0] < pair[1]) {
                        return Err(ReconcileError::MalformedIdList { index });
                    }
                }
            }
            lower = Some(&range.upper);
        }
        Ok(())
    }

    /// Whether the message asks nothing of its receiver (a single skip over everything).
    fn is_all_skip(&self) -> bool {
        self.ranges.iter().all(|range| range.mode == Mode::Skip)
    }
}

fn check_count(index: usize, count: usize, max: usize) -> Result<(), ReconcileError> {
    if count > max {
        return Err(ReconcileError::TooManyIds { index, count, max });
    }
    Ok(())
}

/// Bytes postcard uses for `value` as a varint (7 bits per byte).
fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

// ---------------------------------------------------------------------------------------------
// The step functions
// ---------------------------------------------------------------------------------------------

/// What one step produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// The message to send to the peer, or `None` when the session is complete.
    pub next: Option<Message>,
    /// Ids the local side holds and the peer lacks, found in this step, ascending.
    pub have: Vec<Id>,
    /// Ids the peer holds and the local side lacks, found in this step, ascending.
    pub need: Vec<Id>,
}

/// The side that starts a session. Over the session it learns the whole difference: the steps'
/// `have` and `need` together are exactly the ids only one side holds, each reported once.
///
/// Besides a round counter it keeps the differences found so far and compares every range as if
/// they had already been exchanged (its set plus `need` minus `have`). A range summed up again
/// after a full message then only differs where something is still unknown, so nothing is found
/// twice and nothing is searched again. This is O(difference) memory, which the caller holds
/// anyway to fetch the records; it is `Send`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initiator {
    /// Responses processed so far, checked against [`RECONCILE_ROUNDS_MAX`].
    rounds: u32,
    /// Whether the session is complete.
    finished: bool,
    /// Every id reported as `need`, ascending.
    found_need: Vec<Id>,
    /// Every id reported as `have`, ascending.
    found_have: Vec<Id>,
}

impl Initiator {
    /// Starts a session: returns the initiator and the first message to send.
    pub fn start<S: IdSet + ?Sized>(set: &S) -> (Self, Message) {
        let initiator = Self::default();
        let view = initiator.view(set);
        let count = set.len();
        let all = Span {
            lo: 0,
            hi: count,
            lower: [0u8; ID_BYTES],
            upper: Bound::infinity(),
        };
        let ranges = if count <= RECONCILE_INITIATOR_LEAF_IDS_MAX {
            vec![Range {
                upper: Bound::infinity(),
                mode: Mode::ShortIds(view.ids(&all).iter().map(short_id).collect()),
            }]
        } else {
            split(&view, &all, RECONCILE_SPLIT_RANGES)
        };
        (initiator, Message { ranges })
    }

    /// Processes the responder's message: returns the next message (or `None` when done) and the
    /// differences it settled.
    pub fn step<S: IdSet + ?Sized>(
        &mut self,
        set: &S,
        message: Message,
    ) -> Result<Step, ReconcileError> {
        if self.finished {
            return Err(ReconcileError::Finished);
        }
        self.rounds = self.rounds.saturating_add(1);
        if self.rounds > RECONCILE_ROUNDS_MAX {
            return Err(ReconcileError::TooManyRounds {
                max: RECONCILE_ROUNDS_MAX,
            });
        }
        let mut step = Step::default();
        let reply = process(Role::Initiator, &self.view(set), &message, &mut step)?;
        merge_sorted(&mut self.found_have, &step.have);
        merge_sorted(&mut self.found_need, &step.need);
        if reply.is_all_skip() {
            self.finished = true;
        } else {
            step.next = Some(reply);
        }
        Ok(step)
    }

    /// Whether the session is complete.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Responses processed so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    fn view<'a, S: IdSet + ?Sized>(&'a self, set: &'a S) -> View<'a, S> {
        View {
            set,
            plus: &self.found_need,
            minus: &self.found_have,
        }
    }
}

/// Merges ascending `new` into ascending `all`, dropping repeats. The stable sort finds the two
/// ascending runs and merges them in linear time with bulk moves (measured 3 times faster than
/// an element-wise merge for a new node pulling a million ids).
fn merge_sorted(all: &mut Vec<Id>, new: &[Id]) {
    if new.is_empty() {
        return;
    }
    all.extend_from_slice(new);
    all.sort();
    all.dedup();
}

/// The side that answers. Every message is answered from the message and the set alone; the
/// responder keeps only a round counter, so one may be kept per peer or made per request. Its
/// steps report no `have` or `need`: the initiator learns the difference and drives the fetching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Responder {
    /// Messages answered so far, checked against [`RECONCILE_ROUNDS_MAX`].
    rounds: u32,
}

impl Responder {
    /// A responder for a new session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers the initiator's message. `next` is always `Some`.
    pub fn step<S: IdSet + ?Sized>(
        &mut self,
        set: &S,
        message: Message,
    ) -> Result<Step, ReconcileError> {
        self.rounds = self.rounds.saturating_add(1);
        if self.rounds > RECONCILE_ROUNDS_MAX {
            return Err(ReconcileError::TooManyRounds {
                max: RECONCILE_ROUNDS_MAX,
            });
        }
        let view = View {
            set,
            plus: &[],
            minus: &[],
        };
        let mut step = Step::default();
        let reply = process(Role::Responder, &view, &message, &mut step)?;
        step.next = Some(reply);
        Ok(step)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Initiator,
    Responder,
}

/// A set as one side compares it: the stored ids, plus ids known to be coming (`plus`, not yet
/// stored), minus ids known to be missing on the peer (`minus`). The responder's view is its set.
struct View<'a, S: ?Sized> {
    set: &'a S,
    /// Ascending ids to count as present.
    plus: &'a [Id],
    /// Ascending ids to count as absent.
    minus: &'a [Id],
}

/// One range of the id space, `[lower, upper)`, with the stored ids in it at positions `lo..hi`.
struct Span {
    lo: usize,
    hi: usize,
    lower: Id,
    upper: Bound,
}

impl<S: IdSet + ?Sized> View<'_, S> {
    /// Position of the first stored id at or above `bound`.
    fn position(&self, bound: &Bound) -> usize {
        match bound.value() {
            None => self.set.len(),
            Some(value) => self.set.lower_bound(&value),
        }
    }

    /// The part of an ascending list inside `span`.
    fn inside<'l>(list: &'l [Id], span: &Span) -> &'l [Id] {
        let start = list.partition_point(|id| *id < span.lower);
        let rest = list.get(start..).unwrap_or(&[]);
        let len = rest.partition_point(|id| span.upper.is_above(id));
        rest.get(..len).unwrap_or(&[])
    }

    /// Ids of `plus` in `span` that are not stored (the caller may store fetched ids meanwhile).
    fn added<'l>(&'l self, span: &Span) -> impl Iterator<Item = &'l Id> {
        Self::inside(self.plus, span)
            .iter()
            .filter(|id| !self.set.contains(id))
    }

    /// Ids of `minus` in `span` that are stored.
    fn removed<'l>(&'l self, span: &Span) -> impl Iterator<Item = &'l Id> {
        Self::inside(self.minus, span)
            .iter()
            .filter(|id| self.set.contains(id))
    }

    fn fingerprint(&self, span: &Span) -> Fingerprint {
        let mut sum = self.set.id_sum(span.lo..span.hi);
        let mut count = span.hi.saturating_sub(span.lo) as u64;
        for id in self.added(span) {
            sum.add_id(id);
            count += 1;
        }
        for id in self.removed(span) {
            sum = sum.minus(&IdSum::of(id));
            count = count.saturating_sub(1);
        }
        Fingerprint::new(&sum, count)
    }

    /// Number of ids in `span`.
    fn count(&self, span: &Span) -> usize {
        (span.hi.saturating_sub(span.lo) + self.added(span).count())
            .saturating_sub(self.removed(span).count())
    }

    /// The ids in `span`, ascending.
    fn ids(&self, span: &Span) -> Vec<Id> {
        let mut ids: Vec<Id> = self.set.ids_in(span.lo..span.hi).collect();
        if self.plus.is_empty() && self.minus.is_empty() {
            return ids;
        }
        let removed: Vec<Id> = self.removed(span).copied().collect();
        ids.retain(|id| removed.binary_search(id).is_err());
        let added: Vec<Id> = self.added(span).copied().collect();
        merge_sorted(&mut ids, &added);
        ids
    }
}

/// The next message under construction, with its encoded size kept current.
struct Builder {
    ranges: Vec<Range>,
    /// Encoded size of `ranges` (without the count prefix).
    bytes: usize,
    /// Whether anything but skips has been added: the first real work always goes in.
    has_work: bool,
}

impl Builder {
    fn new() -> Self {
        Self {
            ranges: Vec::new(),
            bytes: 0,
            has_work: false,
        }
    }

    /// Adds a skip up to `upper`, merged with a skip just before it.
    fn skip(&mut self, upper: &Bound) {
        if let Some(last) = self.ranges.last_mut()
            && last.mode == Mode::Skip
        {
            self.bytes = self.bytes - last.upper.encoded_len() + upper.encoded_len();
            last.upper = upper.clone();
            return;
        }
        self.push(Range {
            upper: upper.clone(),
            mode: Mode::Skip,
        });
    }

    fn push(&mut self, range: Range) {
        if range.mode != Mode::Skip {
            self.has_work = true;
        }
        self.bytes += range.encoded_len();
        self.ranges.push(range);
    }

    /// Bytes left for answers when `reserve` bytes must stay free for echoes and the final range.
    fn room(&self, reserve: usize) -> usize {
        RECONCILE_MESSAGE_BYTES_MAX
            .saturating_sub(self.bytes + reserve + FINAL_RANGE_BYTES + MESSAGE_COUNT_BYTES_MAX)
    }

    /// Whether `group` fits in `room`; the first answer always does, so every message progresses.
    fn fits(&self, group: &[Range], room: usize) -> bool {
        let group_bytes: usize = group.iter().map(Range::encoded_len).sum();
        !self.has_work || group_bytes <= room
    }

    /// Whether `extra` more bytes fit while leaving room for a final range up to infinity.
    fn fits_before_final(&self, extra: usize) -> bool {
        self.bytes + extra + FINAL_RANGE_BYTES + MESSAGE_COUNT_BYTES_MAX
            <= RECONCILE_MESSAGE_BYTES_MAX
    }

    /// How many bytes [`Self::skip`] up to `upper` would add.
    fn skip_bytes(&self, upper: &Bound) -> usize {
        match self.ranges.last() {
            Some(last) if last.mode == Mode::Skip => {
                upper.encoded_len().saturating_sub(last.upper.encoded_len())
            }
            _ => upper.encoded_len() + 1,
        }
    }

    fn extend(&mut self, group: Vec<Range>) {
        for range in group {
            if range.mode == Mode::Skip {
                self.skip(&range.upper);
            } else {
                self.push(range);
            }
        }
    }

    fn finish(self) -> Message {
        Message {
            ranges: self.ranges,
        }
    }

    /// Ends the message with one fingerprint of everything from `span`'s lower end on. The last
    /// range added ends exactly there, so nothing is left uncovered.
    fn finish_with_rest<S: IdSet + ?Sized>(mut self, view: &View<'_, S>, span: &Span) -> Message {
        let rest = Span {
            lo: span.lo,
            hi: view.set.len(),
            lower: span.lower,
            upper: Bound::infinity(),
        };
        self.push(Range {
            upper: Bound::infinity(),
            mode: Mode::Fingerprint(view.fingerprint(&rest)),
        });
        self.finish()
    }
}

/// Answers every range of `message` in order, filling `step.have`/`step.need` on the initiator.
///
/// Each answer must leave room to echo the ranges after it (at most [`ECHO_BYTES_MAX`]) and for a
/// final range; the first answer always goes in, so every message makes progress. A list that
/// does not fit is cut ([`cut_list`]); any other answer that does not fit becomes an echo, the
/// sender's own fingerprint of the range (about 17 bytes), so the peer takes it up next round at
/// the same granularity. When not even an echo fits, one fingerprint sums up everything from there
/// to infinity (SPEC.md §11 §11.7.5).
fn process<S: IdSet + ?Sized>(
    role: Role,
    view: &View<'_, S>,
    message: &Message,
    step: &mut Step,
) -> Result<Message, ReconcileError> {
    message.validate()?;
    for (index, range) in message.ranges.iter().enumerate() {
        let wrong = matches!(
            (&range.mode, role),
            (Mode::ShortIds(_), Role::Initiator) | (Mode::ShortIdsReply { .. }, Role::Responder)
        );
        if wrong {
            return Err(ReconcileError::UnexpectedMode {
                index,
                mode: range.mode.name(),
            });
        }
    }

    // First pass: where each range lies locally, and which fingerprints differ. The share of
    // differing fingerprints tells how dense the difference is at this depth, which decides
    // between listing a range and splitting it further.
    let mut spans = Vec::with_capacity(message.ranges.len());
    let mut differs = Vec::with_capacity(message.ranges.len());
    // Bytes to echo every range after each one: the room answers must leave (at most
    // ECHO_BYTES_MAX; beyond it the rest is summed up in one fingerprint).
    let mut echo_after = vec![0usize; message.ranges.len()];
    let mut echo_total = 0usize;
    for (index, range) in message.ranges.iter().enumerate().rev() {
        if let Some(slot) = echo_after.get_mut(index) {
            *slot = echo_total.min(ECHO_BYTES_MAX);
        }
        echo_total += range.upper.encoded_len() + 1 + FINGERPRINT_BYTES;
    }
    let (mut compared, mut differing) = (0usize, 0usize);
    let (mut lo, mut lower) = (0usize, [0u8; ID_BYTES]);
    for range in &message.ranges {
        let span = Span {
            lo,
            hi: view.position(&range.upper).max(lo),
            lower,
            upper: range.upper.clone(),
        };
        let differ = match &range.mode {
            Mode::Fingerprint(theirs) => {
                let differ = view.fingerprint(&span) != *theirs;
                compared += 1;
                differing += usize::from(differ);
                differ
            }
            _ => false,
        };
        lo = span.hi;
        lower = range.upper.value().unwrap_or([0xff; ID_BYTES]);
        spans.push(span);
        differs.push(differ);
    }
    let dense =
        compared >= DENSE_COMPARED_MIN && differing * 100 >= compared * DENSE_DIFFERING_PERCENT;

    let mut out = Builder::new();
    let mut full = false;
    for (((range, span), differ), reserve) in message
        .ranges
        .iter()
        .zip(&spans)
        .zip(differs)
        .zip(echo_after)
    {
        let needs_room = match (&range.mode, role) {
            (Mode::Skip, _) => false,
            (Mode::Fingerprint(_), _) => differ,
            (Mode::Ids(_) | Mode::ShortIdsReply { .. }, Role::Initiator) => false,
            _ => true,
        };
        // Whatever is added for this range must leave room for the final range.
        if !out.fits_before_final(out.skip_bytes(&range.upper)) {
            return Ok(out.finish_with_rest(view, span));
        }
        let answered = if full && needs_room {
            false
        } else {
            match answer(role, view, span, range, differ, dense) {
                Answer::Skip => {
                    out.skip(&range.upper);
                    true
                }
                Answer::Settled { have, need } => {
                    step.have.extend(have);
                    step.need.extend(need);
                    out.skip(&range.upper);
                    true
                }
                Answer::Stream => {
                    full = true;
                    match stream_ids(view, span, out.room(reserve)) {
                        Some(part) => {
                            out.extend(part);
                            true
                        }
                        None => false,
                    }
                }
                Answer::Ranges(group) => {
                    let room = out.room(reserve);
                    if full {
                        false
                    } else if out.fits(&group, room) {
                        out.extend(group);
                        true
                    } else {
                        full = true;
                        // A long list goes out in part; the rest of its range follows later.
                        match cut_list(view, span, &group, room) {
                            Some(part) => {
                                out.extend(part);
                                true
                            }
                            None => false,
                        }
                    }
                }
            }
        };
        if !answered {
            let echo = Range {
                upper: range.upper.clone(),
                mode: Mode::Fingerprint(view.fingerprint(span)),
            };
            if !out.fits_before_final(echo.encoded_len()) {
                return Ok(out.finish_with_rest(view, span));
            }
            out.push(echo);
        }
    }
    Ok(out.finish())
}

/// How one incoming range is answered.
enum Answer {
    Skip,
    /// Ranges to send covering exactly the incoming range.
    Ranges(Vec<Range>),
    /// The responder lists all its ids in the range, as many as fit ([`stream_ids`]).
    Stream,
    /// The initiator settled the range: a skip goes out and these are reported.
    Settled {
        have: Vec<Id>,
        need: Vec<Id>,
    },
}

/// Answers one incoming range. `differ` is whether its fingerprint (if it is one) differs from
/// ours; `dense` whether most fingerprints in the message did.
fn answer<S: IdSet + ?Sized>(
    role: Role,
    view: &View<'_, S>,
    span: &Span,
    range: &Range,
    differ: bool,
    dense: bool,
) -> Answer {
    let one = |mode: Mode| {
        Answer::Ranges(vec![Range {
            upper: range.upper.clone(),
            mode,
        }])
    };
    let split_here = || Answer::Ranges(split(view, span, RECONCILE_SPLIT_RANGES));
    let ids_or_split = |limit: usize| {
        if view.count(span) <= limit {
            one(Mode::Ids(view.ids(span)))
        } else {
            split_here()
        }
    };
    match (&range.mode, role) {
        (Mode::Skip, _) => Answer::Skip,
        (Mode::Fingerprint(_), _) if !differ => Answer::Skip,
        (Mode::Fingerprint(_), Role::Initiator) => {
            // Short ids cost 4 bytes an id and settle the range in one round trip; splitting
            // costs about 250 bytes and a round trip more, which only pays when few ids differ.
            let limit = if dense {
                RECONCILE_RANGE_SHORT_IDS_MAX
            } else {
                RECONCILE_INITIATOR_LEAF_IDS_MAX
            };
            if view.count(span) <= limit {
                one(Mode::ShortIds(
                    view.ids(span).iter().map(short_id).collect(),
                ))
            } else {
                split_here()
            }
        }
        (Mode::Fingerprint(_), Role::Responder) => {
            // Whole ids cost 32 bytes each but end the range without another round trip.
            ids_or_split(RECONCILE_RESPONDER_LEAF_IDS_MAX)
        }
        (Mode::Ids(theirs), Role::Initiator) => {
            let (have, need) = difference(&view.ids(span), theirs);
            Answer::Settled { have, need }
        }
        (Mode::Ids(_), Role::Responder) => ids_or_split(RECONCILE_RANGE_IDS_MAX),
        (Mode::ShortIds(theirs), Role::Responder) => {
            if view.count(span) <= RECONCILE_RANGE_IDS_MAX {
                one(reply_to_short_ids(&view.ids(span), theirs))
            } else if theirs.is_empty() {
                // The initiator holds nothing here: every id is missing, no matching is needed,
                // and a range of any size can be streamed (a new node's whole first session).
                Answer::Stream
            } else {
                split_here()
            }
        }
        (
            Mode::ShortIdsReply {
                missing,
                lacking,
                check,
            },
            Role::Initiator,
        ) => match settle_short_ids(&view.ids(span), missing, lacking, check) {
            Some((have, need)) => Answer::Settled { have, need },
            // Two different ids shared a short id (or a set changed meanwhile): settle the range
            // with whole ids instead.
            None => ids_or_split(RECONCILE_RANGE_IDS_MAX),
        },
        // Rejected by `process` before any range is answered.
        (Mode::ShortIds(_), Role::Initiator) | (Mode::ShortIdsReply { .. }, Role::Responder) => {
            Answer::Skip
        }
    }
}

/// The part of a long answer that fits in `room` bytes: a list of whole ids ([`Mode::Ids`], or
/// the `missing` of a [`Mode::ShortIdsReply`]) cut at a bound `b`, answering `[lower, b)`, and the
/// sender's fingerprint of `[b, upper)`, which the peer takes up next round. `None` when the
/// answer is not such a list or not even one id fits.
///
/// A cut reply keeps its whole `lacking` list (those ids are missing on the responder wherever
/// they lie in the range) and checks only the ids below `b`, which is what the initiator compares.
fn cut_list<S: IdSet + ?Sized>(
    view: &View<'_, S>,
    span: &Span,
    group: &[Range],
    room: usize,
) -> Option<Vec<Range>> {
    let [answer] = group else {
        return None;
    };
    // Worst case around the list: its bound and tag, two count varints, the rest's range.
    let overhead = (1 + ID_BYTES) + 1 + 3 + 3 + (1 + ID_BYTES) + 1 + FINGERPRINT_BYTES;
    let (list, fixed) = match &answer.mode {
        Mode::Ids(ids) => (ids, 0),
        Mode::ShortIdsReply {
            missing, lacking, ..
        } => (missing, lacking.len() * SHORT_ID_BYTES + FINGERPRINT_BYTES),
        _ => return None,
    };
    let keep = room.checked_sub(overhead + fixed)? / ID_BYTES;
    let (Some(last_kept), Some(first_left)) = (list.get(keep.checked_sub(1)?), list.get(keep))
    else {
        return None;
    };
    let own = view.ids(span);
    // The bound sits just above the last own id below the first id left out, so `[lower, b)`
    // holds exactly the own ids before it.
    let below = own.partition_point(|id| id < first_left);
    let previous = own.get(below.checked_sub(1)?)?;
    if previous < last_kept {
        return None;
    }
    let bound = separator(previous, first_left, first_left)?;
    let value = bound.value()?;
    let mode = match &answer.mode {
        Mode::Ids(ids) => Mode::Ids(ids.get(..keep)?.to_vec()),
        Mode::ShortIdsReply {
            missing, lacking, ..
        } => {
            let sent = missing.get(..keep)?;
            let mut matched = IdSum::default();
            let mut matched_count = 0u64;
            for id in own.get(..below)? {
                if sent.binary_search(id).is_err() {
                    matched.add_id(id);
                    matched_count += 1;
                }
            }
            Mode::ShortIdsReply {
                missing: sent.to_vec(),
                lacking: lacking.clone(),
                check: Fingerprint::new(&matched, matched_count),
            }
        }
        _ => return None,
    };
    let rest = Span {
        lo: view.set.lower_bound(&value).max(span.lo).min(span.hi),
        hi: span.hi,
        lower: value,
        upper: span.upper.clone(),
    };
    Some(vec![
        Range { upper: bound, mode },
        Range {
            upper: span.upper.clone(),
            mode: Mode::Fingerprint(view.fingerprint(&rest)),
        },
    ])
}

/// The responder's answer to empty short ids for a range of more than
/// [`RECONCILE_RANGE_IDS_MAX`] ids: consecutive replies of up to that many `missing` ids (with no
/// `lacking` and the fingerprint of nothing as check) filling `room`, then the responder's
/// fingerprint of the rest of the range, which the initiator asks for again next round. `None`
/// when not even one id fits.
fn stream_ids<S: IdSet + ?Sized>(
    view: &View<'_, S>,
    span: &Span,
    room: usize,
) -> Option<Vec<Range>> {
    let rest_bytes = span.upper.encoded_len() + 1 + FINGERPRINT_BYTES;
    let mut budget = room.checked_sub(rest_bytes)?;
    let mut ranges = Vec::new();
    let mut lo = span.lo;
    let mut lower = span.lower;
    let empty = Fingerprint::new(&IdSum::default(), 0);
    // A chunk's size around its ids, guessing a bound of four bytes (the guess is corrected below).
    let around = |bound_bytes: usize, count: usize| {
        varint_len(bound_bytes) + bound_bytes + 1 + varint_len(count) + FINGERPRINT_BYTES
    };
    loop {
        let mut take = (budget.saturating_sub(around(4, RECONCILE_RANGE_IDS_MAX)) / ID_BYTES)
            .min(RECONCILE_RANGE_IDS_MAX);
        if take == 0 {
            break;
        }
        let left = span.hi.saturating_sub(lo);
        if left <= take && around(span.upper.0.len(), left) + left * ID_BYTES <= budget + rest_bytes
        {
            // The rest of the range fits whole: the last chunk ends where the range does.
            ranges.push(Range {
                upper: span.upper.clone(),
                mode: Mode::ShortIdsReply {
                    missing: view.set.ids_in(lo..span.hi).collect(),
                    lacking: Vec::new(),
                    check: empty,
                },
            });
            return Some(ranges);
        }
        let (bound, value) = loop {
            let (Some(last), Some(next)) =
                (view.set.id_at(lo + take - 1), view.set.id_at(lo + take))
            else {
                return None;
            };
            let bound = separator(&last, &next, &next)?;
            let value = bound.value()?;
            if around(bound.0.len(), take) + take * ID_BYTES <= budget || take == 1 {
                break (bound, value);
            }
            take -= 1;
        };
        let bytes = around(bound.0.len(), take) + take * ID_BYTES;
        if bytes > budget {
            break;
        }
        budget -= bytes;
        ranges.push(Range {
            upper: bound,
            mode: Mode::ShortIdsReply {
                missing: view.set.ids_in(lo..lo + take).collect(),
                lacking: Vec::new(),
                check: empty,
            },
        });
        lo += take;
        lower = value;
    }
    if ranges.is_empty() {
        return None;
    }
    let rest = Span {
        lo,
        hi: span.hi,
        lower,
        upper: span.upper.clone(),
    };
    ranges.push(Range {
        upper: span.upper.clone(),
        mode: Mode::Fingerprint(view.fingerprint(&rest)),
    });
    Some(ranges)
}

/// `(ours \ theirs, theirs \ ours)` for two ascending lists.
fn difference(ours: &[Id], theirs: &[Id]) -> (Vec<Id>, Vec<Id>) {
    let (mut only_ours, mut only_theirs) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    loop {
        match (ours.get(i), theirs.get(j)) {
            (Some(a), Some(b)) => match a.cmp(b) {
                Ordering::Less => {
                    only_ours.push(*a);
                    i += 1;
                }
                Ordering::Greater => {
                    only_theirs.push(*b);
                    j += 1;
                }
                Ordering::Equal => {
                    i += 1;
                    j += 1;
                }
            },
            (Some(a), None) => {
                only_ours.push(*a);
                i += 1;
            }
            (None, Some(b)) => {
                only_theirs.push(*b);
                j += 1;
            }
            (None, None) => return (only_ours, only_theirs),
        }
    }
}

/// The responder's answer to the initiator's short ids for one range.
fn reply_to_short_ids(own: &[Id], theirs: &[ShortId]) -> Mode {
    let mut listed = theirs.to_vec();
    listed.sort_unstable();
    listed.dedup();
    let mut seen = vec![false; listed.len()];
    let mut missing = Vec::new();
    let mut matched = IdSum::default();
    let mut matched_count = 0u64;
    for id in own {
        match listed.binary_search(&short_id(id)) {
            Ok(position) => {
                if let Some(flag) = seen.get_mut(position) {
                    *flag = true;
                }
                matched.add_id(id);
                matched_count += 1;
            }
            Err(_) => missing.push(*id),
        }
    }
    let lacking = listed
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| !**seen)
        .map(|(short, _)| *short)
        .collect();
    Mode::ShortIdsReply {
        missing,
        lacking,
        check: Fingerprint::new(&matched, matched_count),
    }
}

/// The initiator's reading of a short-id reply: `(have, need)`, or `None` when the check
/// fingerprint shows that some short id stood for two different ids.
fn settle_short_ids(
    own: &[Id],
    missing: &[Id],
    lacking: &[ShortId],
    check: &Fingerprint,
) -> Option<(Vec<Id>, Vec<Id>)> {
    let mut matched = IdSum::default();
    let mut matched_count = 0u64;
    let mut have = Vec::new();
    for id in own {
        if lacking.binary_search(&short_id(id)).is_ok() {
            have.push(*id);
        } else {
            matched.add_id(id);
            matched_count += 1;
        }
    }
    if Fingerprint::new(&matched, matched_count) != *check {
        return None;
    }
    let need = missing
        .iter()
        .filter(|id| own.binary_search(id).is_err())
        .copied()
        .collect();
    Some((have, need))
}

/// Splits `span` into `parts` ranges (fewer if it holds fewer stored ids) of nearly equal counts
/// of stored ids, each with the view's fingerprint; the last ends at the span's upper bound.
///
/// Each boundary may move by an eighth of a part either way when parts hold 64 ids or more, and
/// within that window the shortest separating prefix is chosen, saving about a byte per bound.
/// Smaller parts are split exactly, so a part never grows past a leaf threshold it would
/// otherwise meet (which would cost a round trip).
fn split<S: IdSet + ?Sized>(view: &View<'_, S>, span: &Span, parts: usize) -> Vec<Range> {
    let set = view.set;
    let (lo, hi) = (span.lo, span.hi);
    let count = hi.saturating_sub(lo);
    let parts = parts.min(count).max(1);
    let part = count / parts;
    let slack = if part >= SPLIT_SLACK_PART_IDS_MIN {
        part / 8
    } else {
        0
    };
    let mut ranges = Vec::with_capacity(parts);
    let mut child = Span {
        lo,
        hi: lo,
        lower: span.lower,
        upper: Bound::infinity(),
    };
    for k in 1..parts {
        let target = lo + k * count / parts;
        // `part > slack`, so the window's lower neighbour is inside the span; consecutive
        // windows are at least `part >= 2 * slack + 1` apart, so the bounds strictly increase.
        let (Some(below), Some(middle), Some(above)) = (
            set.id_at(target - slack - 1),
            set.id_at(target),
            set.id_at(target + slack),
        ) else {
            break;
        };
        let Some(bound) = separator(&below, &middle, &above) else {
            break;
        };
        let Some(value) = bound.value() else {
            break;
        };
        child.hi = set.lower_bound(&value).max(child.lo).min(hi);
        child.upper = bound;
        ranges.push(Range {
            upper: child.upper.clone(),
            mode: Mode::Fingerprint(view.fingerprint(&child)),
        });
        child.lo = child.hi;
        child.lower = value;
    }
    child.hi = hi;
    child.upper = span.upper.clone();
    ranges.push(Range {
        upper: span.upper.clone(),
        mode: Mode::Fingerprint(view.fingerprint(&child)),
    });
    ranges
}

/// The shortest bound `b` with `below < b <= above`, placed at or just above `middle`
/// (`below < middle <= above`). `None` only if the inputs are out of order.
fn separator(below: &Id, middle: &Id, above: &Id) -> Option<Bound> {
    let shared = below.iter().zip(above).take_while(|(a, b)| a == b).count();
    let (low, high, mid) = (
        *below.get(shared)?,
        *above.get(shared)?,
        *middle.get(shared)?,
    );
    if low >= high {
        return None;
    }
    let byte = if mid > low { mid } else { low + 1 };
    let mut prefix = above.get(..shared)?.to_vec();
    prefix.push(byte.min(high));
    Some(Bound(prefix))
}

// ---------------------------------------------------------------------------------------------
// Simulation
// ---------------------------------------------------------------------------------------------

/// What a simulated session cost and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Round trips: responder messages, one per initiator message.
    pub rounds: u32,
    /// Encoded bytes the initiator sent.
    pub bytes_a_to_b: u64,
    /// Encoded bytes the responder sent.
    pub bytes_b_to_a: u64,
    /// Largest message either side sent, in bytes.
    pub message_bytes_max: usize,
    /// Ids `a` holds and `b` lacks, as the initiator found them, ascending.
    pub have: Vec<Id>,
    /// Ids `b` holds and `a` lacks, as the initiator found them, ascending.
    pub need: Vec<Id>,
}

/// Runs a whole session in memory with `a` as initiator and `b` as responder, passing every
/// message through [`Message::encode`] and [`Message::decode`], and counts rounds and bytes.
pub fn simulate<A: IdSet + ?Sized, B: IdSet + ?Sized>(
    a: &A,
    b: &B,
) -> Result<Stats, ReconcileError> {
    let mut stats = Stats::default();
    let (mut initiator, first) = Initiator::start(a);
    let mut responder = Responder::new();
    let mut outgoing = first;
    loop {
        let bytes = outgoing.encode();
        stats.bytes_a_to_b += bytes.len() as u64;
        stats.message_bytes_max = stats.message_bytes_max.max(bytes.len());
        let answer = responder.step(b, Message::decode(&bytes)?)?;
        let Some(reply) = answer.next else {
            break;
        };
        let bytes = reply.encode();
        stats.bytes_b_to_a += bytes.len() as u64;
        stats.message_bytes_max = stats.message_bytes_max.max(bytes.len());
        stats.rounds += 1;
        let step = initiator.step(a, Message::decode(&bytes)?)?;
        stats.have.extend(step.have);
        stats.need.extend(step.need);
        match step.next {
            Some(next) => outgoing = next,
            None => break,
        }
    }
    stats.have.sort_unstable();
    stats.need.sort_unstable();
    Ok(stats)
}

// Tests state what they expect of a value with `expect`; a failed expectation is the finding.
#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeSet;

    fn random_ids(rng: &mut ChaCha8Rng, count: usize) -> Vec<Id> {
        (0..count)
            .map(|_| {
                let mut id = [0u8; ID_BYTES];
                rng.fill_bytes(&mut id);
                id
            })
            .collect()
    }

    /// Two sets sharing `common` ids, with `only_a` and `only_b` ids of their own.
    fn two_sets(seed: u64, common: usize, only_a: usize, only_b: usize) -> (Vec<Id>, Vec<Id>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shared = random_ids(&mut rng, common);
        let mut a = shared.clone();
        a.extend(random_ids(&mut rng, only_a));
        let mut b = shared;
        b.extend(random_ids(&mut rng, only_b));
        (a, b)
    }

    /// The measured envelope of SPEC.md §11 with margin (2 more rounds, 1.5 times the bytes):
    /// a depth term, plus the bytes that must cross over the room a message has for answers.
    /// Those bytes are whole ids the initiator lacks, short ids the responder lacks, and about
    /// 100 bytes of fingerprints per difference per level of 16 between the set and the
    /// difference.
    fn rounds_bound(largest: usize, have: usize, need: usize) -> u32 {
        let levels = |ratio: f64| ratio.max(1.0).log(16.0);
        let depth = 2 * levels(largest.max(2) as f64).ceil() as u32 + 4;
        let differing = have + need;
        let locate = if differing == 0 {
            0.0
        } else {
            100.0 * differing as f64 * levels(largest as f64 / differing as f64)
        };
        let bytes = (need * ID_BYTES + have * SHORT_ID_BYTES) as f64 + locate;
        depth + (1.5 * bytes / WORK_BYTES_MAX as f64).ceil() as u32
    }

    /// Runs a session and checks it found exactly the difference, within the message limit and
    /// the round bound.
    fn assert_converges(a: &[Id], b: &[Id]) -> Stats {
        let (set_a, set_b) = (SortedIds::new(a.to_vec()), SortedIds::new(b.to_vec()));
        let stats = simulate(&set_a, &set_b).expect("an honest session succeeds");
        let (a, b): (BTreeSet<Id>, BTreeSet<Id>) =
            (a.iter().copied().collect(), b.iter().copied().collect());
        let have: Vec<Id> = a.difference(&b).copied().collect();
        let need: Vec<Id> = b.difference(&a).copied().collect();
        assert_eq!(stats.have, have, "have is exactly a \\ b, each once");
        assert_eq!(stats.need, need, "need is exactly b \\ a, each once");
        assert!(stats.message_bytes_max <= RECONCILE_MESSAGE_BYTES_MAX);
        let bound = rounds_bound(a.len().max(b.len()), have.len(), need.len());
        assert!(
            stats.rounds <= bound,
            "{} rounds, bound {bound}",
            stats.rounds
        );
        stats
    }

    fn fingerprint_message(upper: Bound) -> Message {
        Message {
            ranges: vec![Range {
                upper,
                mode: Mode::Fingerprint(Fingerprint::default()),
            }],
        }
    }

    fn step_responder(message: Message) -> Result<Step, ReconcileError> {
        Responder::new().step(&SortedIds::default(), message)
    }

    // ----- fingerprints and sums ---------------------------------------------------------------

    #[test]
    fn id_sum_carries_between_limbs_and_wraps() {
        let mut low_limb_full = [0u8; ID_BYTES];
        low_limb_full[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut one = [0u8; ID_BYTES];
        one[0] = 1;
        let mut sum = IdSum::of(&low_limb_full);
        sum.add_id(&one);
        let mut expected = [0u8; ID_BYTES];
        expected[8] = 1;
        assert_eq!(sum.to_le_bytes(), expected);

        let mut sum = IdSum::of(&[0xff; ID_BYTES]);
        sum.add_id(&one);
        assert_eq!(sum, IdSum::default(), "the sum is modulo 2^256");
        assert_eq!(
            IdSum::default().minus(&IdSum::of(&one)),
            IdSum::of(&[0xff; ID_BYTES])
        );
    }

    #[test]
    fn fingerprint_matches_the_spec_vector() {
        // The vector in SPEC.md §11: ids 01 00 .. 00 and 02 00 .. 00.
        let mut first = [0u8; ID_BYTES];
        first[0] = 1;
        let mut second = [0u8; ID_BYTES];
        second[0] = 2;
        let fingerprint = Fingerprint::of_ids(&[first, second]);
        let mut input = 2u64.to_le_bytes().to_vec();
        let mut sum = [0u8; ID_BYTES];
        sum[0] = 3;
        input.extend_from_slice(&sum);
        assert_eq!(
            fingerprint.0[..],
            blake3::derive_key(FINGERPRINT_CONTEXT, &input)[..FINGERPRINT_BYTES]
        );
        assert_eq!(hex(&fingerprint.0), "0048ae1c59ec4758b4b99dd8");
        assert_eq!(hex(&Fingerprint::of_ids(&[]).0), "162e170fb078fde8db54460d");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    proptest! {
        #[test]
        fn id_sum_is_order_free_and_invertible(ids in prop::collection::vec(any::<[u8; 32]>(), 0..20)) {
            let mut forward = IdSum::default();
            for id in &ids {
                forward.add_id(id);
            }
            let mut backward = IdSum::default();
            for id in ids.iter().rev() {
                backward.add_id(id);
            }
            prop_assert_eq!(forward, backward);
            for id in &ids {
                forward = forward.minus(&IdSum::of(id));
            }
            prop_assert_eq!(forward, IdSum::default());
        }

        #[test]
        fn sorted_ids_range_sums_match_a_plain_sum(
            seed in any::<u64>(),
            count in 0usize..300,
            inserts in 0usize..40,
            ranges in prop::collection::vec((0usize..400, 0usize..400), 1..20),
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut set = SortedIds::new(random_ids(&mut rng, count));
            for id in random_ids(&mut rng, inserts) {
                prop_assert!(set.insert(id));
                prop_assert!(!set.insert(id));
            }
            prop_assert!(set.as_slice().windows(2).all(|pair| pair[0] < pair[1]));
            for (start, end) in ranges {
                let (start, end) = (start.min(end), start.max(end));
                let mut plain = IdSum::default();
                for id in set.as_slice().iter().skip(start).take(end.saturating_sub(start)) {
                    plain.add_id(id);
                }
                prop_assert_eq!(set.id_sum(start..end), plain);
            }
        }

        #[test]
        fn separator_is_shortest_and_between(mut ids in prop::collection::btree_set(any::<[u8; 32]>(), 3..4)) {
            let below = ids.pop_first().unwrap_or_default();
            let middle = ids.pop_first().unwrap_or_default();
            let above = ids.pop_first().unwrap_or_default();
            let bound = separator(&below, &middle, &above).expect("ordered inputs separate");
            let value = bound.value().expect("finite");
            prop_assert!(below < value && value <= above);
            prop_assert!(bound.check(0).is_ok());
            // No shorter prefix of any id separates them: the shared prefix plus one byte.
            let shared = below.iter().zip(&above).take_while(|(x, y)| x == y).count();
            prop_assert_eq!(bound.0.len(), shared + 1);
        }
    }

    // ----- wire format -------------------------------------------------------------------------

    #[test]
    fn message_layout_is_as_specified() {
        let message = Message {
            ranges: vec![
                Range {
                    upper: Bound(vec![0x80]),
                    mode: Mode::Skip,
                },
                Range {
                    upper: Bound(vec![0xc0, 0x01]),
                    mode: Mode::Fingerprint(Fingerprint([0xaa; FINGERPRINT_BYTES])),
                },
                Range {
                    upper: Bound(vec![0xd0]),
                    mode: Mode::ShortIds(vec![[1, 2, 3, 4]]),
                },
                Range {
                    upper: Bound::infinity(),
                    mode: Mode::Ids(vec![[0xee; ID_BYTES]]),
                },
            ],
        };
        let mut expected = vec![4u8];
        expected.extend([1, 0x80, 0]);
        expected.extend([2, 0xc0, 0x01, 1]);
        expected.extend([0xaa; FINGERPRINT_BYTES]);
        expected.extend([1, 0xd0, 3, 1, 1, 2, 3, 4]);
        expected.extend([0, 2, 1]);
        expected.extend([0xee; ID_BYTES]);
        assert_eq!(message.encode(), expected);
        assert_eq!(message.encoded_len(), expected.len());
        assert_eq!(Message::decode(&expected), Ok(message));

        let reply = Mode::ShortIdsReply {
            missing: vec![[0x11; ID_BYTES]],
            lacking: vec![[9, 9, 9, 9]],
            check: Fingerprint([0x22; FINGERPRINT_BYTES]),
        };
        let mut expected = vec![4u8, 1];
        expected.extend([0x11; ID_BYTES]);
        expected.extend([1, 9, 9, 9, 9]);
        expected.extend([0x22; FINGERPRINT_BYTES]);
        assert_eq!(postcard::to_stdvec(&reply).ok(), Some(expected));
    }

    fn arbitrary_mode() -> impl Strategy<Value = Mode> {
        prop_oneof![
            Just(Mode::Skip),
            any::<[u8; FINGERPRINT_BYTES]>().prop_map(|fp| Mode::Fingerprint(Fingerprint(fp))),
            prop::collection::vec(any::<[u8; 32]>(), 0..4).prop_map(Mode::Ids),
            prop::collection::vec(any::<[u8; 4]>(), 0..200).prop_map(Mode::ShortIds),
            (
                prop::collection::vec(any::<[u8; 32]>(), 0..4),
                prop::collection::vec(any::<[u8; 4]>(), 0..4),
                any::<[u8; FINGERPRINT_BYTES]>(),
            )
                .prop_map(|(missing, lacking, check)| Mode::ShortIdsReply {
                    missing,
                    lacking,
                    check: Fingerprint(check),
                }),
        ]
    }

    /// Messages of any shape, mostly invalid: random bounds (some long, some with trailing
    /// zeros), random order, random modes.
    fn arbitrary_message() -> impl Strategy<Value = Message> {
        prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..40), arbitrary_mode()),
            0..12,
        )
        .prop_map(|ranges| Message {
            ranges: ranges
                .into_iter()
                .map(|(upper, mode)| Range {
                    upper: Bound(upper),
                    mode,
                })
                .collect(),
        })
    }

    /// Messages that pass validation more often: short ascending bounds, sorted id lists.
    fn plausible_message() -> impl Strategy<Value = Message> {
        (
            prop::collection::btree_set(1u8..=255, 0..10),
            prop::collection::vec(arbitrary_mode(), 11),
        )
            .prop_map(|(bounds, modes)| {
                let mut uppers: Vec<Bound> = bounds.into_iter().map(|b| Bound(vec![b])).collect();
                uppers.push(Bound::infinity());
                let mut lower = [0u8; ID_BYTES];
                let ranges = uppers
                    .into_iter()
                    .zip(modes)
                    .map(|(upper, mut mode)| {
                        let inside = |ids: &mut Vec<Id>| {
                            for id in ids.iter_mut() {
                                id[0] = lower[0];
                            }
                            ids.sort_unstable();
                            ids.dedup();
                        };
                        match &mut mode {
                            Mode::Ids(ids) => inside(ids),
                            Mode::ShortIdsReply {
                                missing, lacking, ..
                            } => {
                                inside(missing);
                                lacking.sort_unstable();
                                lacking.dedup();
                            }
                            _ => {}
                        }
                        lower = upper.value().unwrap_or([0xff; ID_BYTES]);
                        Range { upper, mode }
                    })
                    .collect();
                Message { ranges }
            })
    }

    proptest! {
        #[test]
        fn encoded_len_matches_postcard(message in arbitrary_message()) {
            prop_assert_eq!(message.encoded_len(), message.encode().len());
            prop_assert_eq!(Message::decode(&message.encode()), Ok(message));
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            // Whatever decodes is canonical: it re-encodes to exactly the input.
            if let Ok(message) = Message::decode(&bytes) {
                prop_assert_eq!(message.encode(), bytes);
            }
        }

        #[test]
        fn stepping_any_message_never_panics(
            message in prop_oneof![arbitrary_message(), plausible_message()],
            seed in any::<u64>(),
            count in 0usize..3000,
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let set = SortedIds::new(random_ids(&mut rng, count));
            let results = [
                Responder::new().step(&set, message.clone()),
                Initiator::start(&set).0.step(&set, message.clone()),
            ];
            for next in results.into_iter().flatten().filter_map(|step| step.next) {
                prop_assert!(next.validate().is_ok());
                prop_assert!(next.encode().len() <= RECONCILE_MESSAGE_BYTES_MAX);
            }
        }
    }

    // ----- malicious and malformed input ---------------------------------------------------------

    #[test]
    fn oversized_and_trailing_bytes_are_rejected_before_work() {
        let oversized = vec![0u8; RECONCILE_MESSAGE_BYTES_MAX + 1];
        let error = Message::decode(&oversized).expect_err("too large");
        assert_eq!(error.code(), "reconcile.message_too_large");

        let mut bytes = fingerprint_message(Bound::infinity()).encode();
        bytes.push(0);
        let error = Message::decode(&bytes).expect_err("trailing byte");
        assert_eq!(error.code(), "reconcile.trailing_bytes");

        // The range count 1 written as `81 00` instead of `01`.
        let mut bytes = vec![0x81, 0x00];
        bytes.extend_from_slice(&fingerprint_message(Bound::infinity()).encode()[1..]);
        let error = Message::decode(&bytes).expect_err("non-minimal varint");
        assert_eq!(error.code(), "reconcile.non_canonical");
    }

    #[test]
    fn absurd_counts_fail_without_allocating() {
        // One range whose bound claims 2^63 bytes, and one whose id list claims 2^35 ids.
        let huge_bound = [1u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        let huge_list = [1u8, 0, 2, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        for bytes in [&huge_bound[..], &huge_list[..]] {
            let error = Message::decode(bytes).expect_err("truncated");
            assert_eq!(error.code(), "reconcile.malformed_message");
        }
    }

    #[test]
    fn malformed_structure_is_rejected_with_a_precise_code() {
        let fp = || Mode::Fingerprint(Fingerprint::default());
        let range = |upper: &[u8], mode: Mode| Range {
            upper: Bound(upper.to_vec()),
            mode,
        };
        let cases: Vec<(Vec<Range>, &str)> = vec![
            (vec![], "reconcile.no_ranges"),
            (vec![range(&[5], fp())], "reconcile.malformed_range"),
            (
                vec![range(&[], fp()), range(&[], fp())],
                "reconcile.malformed_range",
            ),
            (
                vec![range(&[5], fp()), range(&[4], fp()), range(&[], fp())],
                "reconcile.malformed_range",
            ),
            (
                vec![range(&[5], fp()), range(&[5], fp()), range(&[], fp())],
                "reconcile.malformed_range",
            ),
            (
                vec![range(&[5, 0], fp()), range(&[], fp())],
                "reconcile.malformed_bound",
            ),
            (
                vec![range(&[1; 33], fp()), range(&[], fp())],
                "reconcile.malformed_bound",
            ),
            (
                vec![
                    range(&[5], Mode::Ids(vec![[2; 32], [1; 32]])),
                    range(&[], fp()),
                ],
                "reconcile.malformed_id_list",
            ),
            (
                vec![
                    range(&[5], Mode::Ids(vec![[1; 32], [1; 32]])),
                    range(&[], fp()),
                ],
                "reconcile.malformed_id_list",
            ),
            (
                vec![range(&[5], fp()), range(&[], Mode::Ids(vec![[4; 32]]))],
                "reconcile.malformed_id_list",
            ),
            (
                vec![range(
                    &[],
                    Mode::Ids(vec![[0; 32]; RECONCILE_RANGE_IDS_MAX + 1]),
                )],
                "reconcile.too_many_ids",
            ),
            (
                vec![range(
                    &[],
                    Mode::ShortIds(vec![[0; 4]; RECONCILE_RANGE_SHORT_IDS_MAX + 1]),
                )],
                "reconcile.too_many_ids",
            ),
            (
                vec![range(
                    &[],
                    Mode::ShortIdsReply {
                        missing: vec![],
                        lacking: vec![[2; 4], [1; 4]],
                        check: Fingerprint::default(),
                    },
                )],
                "reconcile.malformed_id_list",
            ),
            (
                vec![range(&[], Mode::Ids(vec![[0; 32]; 2100]))],
                "reconcile.message_too_large",
            ),
        ];
        for (ranges, code) in cases {
            let message = Message { ranges };
            let initiator = Initiator::start(&SortedIds::default())
                .0
                .step(&SortedIds::default(), message.clone());
            let responder = step_responder(message.clone());
            for result in [initiator, responder] {
                let error = result.expect_err("malformed message");
                assert_eq!(error.code(), code, "{message:?}");
            }
        }
    }

    #[test]
    fn each_role_rejects_the_other_roles_modes() {
        let to_responder = Message {
            ranges: vec![Range {
                upper: Bound::infinity(),
                mode: Mode::ShortIdsReply {
                    missing: vec![],
                    lacking: vec![],
                    check: Fingerprint::default(),
                },
            }],
        };
        let error = step_responder(to_responder).expect_err("initiator-only mode");
        assert_eq!(error.code(), "reconcile.unexpected_mode");

        let to_initiator = Message {
            ranges: vec![Range {
                upper: Bound::infinity(),
                mode: Mode::ShortIds(vec![]),
            }],
        };
        let set = SortedIds::default();
        let error = Initiator::start(&set)
            .0
            .step(&set, to_initiator)
            .expect_err("responder-only mode");
        assert_eq!(error.code(), "reconcile.unexpected_mode");
    }

    #[test]
    fn a_responder_that_never_agrees_is_cut_off_by_the_round_limit() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let set = SortedIds::new(random_ids(&mut rng, 500));
        let (mut initiator, _) = Initiator::start(&set);
        let mut rounds = 0u32;
        let error = loop {
            // Whatever the initiator asks, claim the whole space differs.
            let lie = fingerprint_message(Bound::infinity());
            match initiator.step(&set, lie) {
                Ok(step) => {
                    assert!(
                        step.next.is_some(),
                        "a differing fingerprint always needs an answer"
                    );
                    rounds += 1;
                }
                Err(error) => break error,
            }
        };
        assert_eq!(error.code(), "reconcile.too_many_rounds");
        assert_eq!(rounds, RECONCILE_ROUNDS_MAX);

        let mut responder = Responder::new();
        for _ in 0..RECONCILE_ROUNDS_MAX {
            assert!(
                responder
                    .step(&set, fingerprint_message(Bound::infinity()))
                    .is_ok()
            );
        }
        let error = responder
            .step(&set, fingerprint_message(Bound::infinity()))
            .expect_err("round limit");
        assert_eq!(error.code(), "reconcile.too_many_rounds");
    }

    #[test]
    fn a_finished_initiator_refuses_more_messages() {
        let set = SortedIds::new(vec![[7; 32]]);
        let (mut initiator, first) = Initiator::start(&set);
        let reply = Responder::new()
            .step(&set, first)
            .ok()
            .and_then(|step| step.next);
        let step = initiator.step(&set, reply.expect("answer")).expect("valid");
        assert_eq!(step.next, None);
        assert!(initiator.is_finished());
        let again = initiator.step(&set, fingerprint_message(Bound::infinity()));
        assert_eq!(
            again.map_err(|error| error.code()),
            Err("reconcile.session_finished")
        );
    }

    #[test]
    fn error_codes_are_distinct_and_stable() {
        let errors = [
            ReconcileError::MessageTooLarge { bytes: 0, max: 0 },
            ReconcileError::Malformed {
                reason: String::new(),
            },
            ReconcileError::TrailingBytes { bytes: 0 },
            ReconcileError::NonCanonical,
            ReconcileError::NoRanges,
            ReconcileError::MalformedBound {
                index: 0,
                reason: "",
            },
            ReconcileError::MalformedRange {
                index: 0,
                reason: "",
            },
            ReconcileError::TooManyIds {
                index: 0,
                count: 0,
                max: 0,
            },
            ReconcileError::MalformedIdList { index: 0 },
            ReconcileError::UnexpectedMode { index: 0, mode: "" },
            ReconcileError::TooManyRounds { max: 0 },
            ReconcileError::Finished,
        ];
        let codes: BTreeSet<&str> = errors.iter().map(ReconcileError::code).collect();
        assert_eq!(codes.len(), errors.len());
        assert!(codes.iter().all(|code| code.starts_with("reconcile.")));
    }

    // ----- sessions ----------------------------------------------------------------------------

    #[test]
    fn small_sessions_find_exactly_the_difference() {
        for (common, only_a, only_b) in [
            (0, 0, 0),
            (0, 1, 0),
            (0, 0, 1),
            (1, 0, 0),
            (5, 2, 3),
            (0, 500, 0),
            (0, 0, 500),
            (300, 300, 300),
            (5000, 0, 0),
            (5000, 1, 0),
            (5000, 0, 1),
            (5000, 40, 40),
        ] {
            let (a, b) = two_sets(common as u64, common, only_a, only_b);
            assert_converges(&a, &b);
        }
    }

    #[test]
    fn identical_sets_agree_in_one_round_trip() {
        let (a, b) = two_sets(3, 20_000, 0, 0);
        let stats = assert_converges(&a, &b);
        assert_eq!(stats.rounds, 1);
        assert!(stats.bytes_a_to_b + stats.bytes_b_to_a < 400);
    }

    #[test]
    fn one_missing_id_among_many_costs_little() {
        let (a, b) = two_sets(4, 100_000, 1, 0);
        let stats = assert_converges(&a, &b);
        assert!(stats.rounds <= 3, "{stats:?}");
        assert!(stats.bytes_a_to_b + stats.bytes_b_to_a < 2_000, "{stats:?}");
    }

    #[test]
    fn colliding_short_ids_fall_back_to_whole_ids() {
        // Same range, same last four bytes, different ids: the reply's check must catch it.
        let mut x = [1u8; ID_BYTES];
        x[ID_BYTES - 4..].copy_from_slice(&[9, 9, 9, 9]);
        let mut y = x;
        y[5] = 2;
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let shared = random_ids(&mut rng, 40);
        let mut a = shared.clone();
        a.push(x);
        let mut b = shared;
        b.push(y);
        let stats = assert_converges(&a, &b);
        assert_eq!((stats.have, stats.need), (vec![x], vec![y]));
    }

    #[test]
    fn a_new_node_pulls_a_full_message_of_ids_per_round() {
        let (a, b) = two_sets(10, 0, 0, 20_000);
        let stats = assert_converges(&a, &b);
        let per_message = (RECONCILE_MESSAGE_BYTES_MAX / ID_BYTES) as u32;
        assert!(stats.rounds <= 20_000 / (per_message - 16) + 1, "{stats:?}");
    }

    #[test]
    fn a_reply_cut_to_fit_settles_exactly_the_part_it_covers() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let responder_ids = random_ids(&mut rng, 1000);
        let mut initiator_ids = responder_ids[..100].to_vec();
        initiator_ids.extend(random_ids(&mut rng, 50));
        let (set_a, set_b) = (SortedIds::new(initiator_ids), SortedIds::new(responder_ids));
        let view = View {
            set: &set_b,
            plus: &[],
            minus: &[],
        };
        let span = Span {
            lo: 0,
            hi: set_b.len(),
            lower: [0; ID_BYTES],
            upper: Bound::infinity(),
        };
        let short: Vec<ShortId> = set_a.as_slice().iter().map(short_id).collect();
        let whole = Range {
            upper: Bound::infinity(),
            mode: reply_to_short_ids(set_b.as_slice(), &short),
        };
        let cut = cut_list(&view, &span, &[whole], 5_000).expect("a part fits");
        let [part, rest] = &cut[..] else {
            panic!("a part and the rest: {cut:?}");
        };
        assert!(matches!(rest.mode, Mode::Fingerprint(_)));
        let message = Message {
            ranges: cut.clone(),
        };
        assert!(message.encoded_len() <= 5_000 + FINAL_RANGE_BYTES);
        let (mut initiator, _) = Initiator::start(&set_a);
        let step = initiator.step(&set_a, message).expect("valid cut reply");
        let below = |id: &&Id| part.upper.is_above(id);
        let expected_have: Vec<Id> = set_a
            .as_slice()
            .iter()
            .filter(below)
            .filter(|id| !set_b.contains(id))
            .copied()
            .collect();
        let expected_need: Vec<Id> = set_b
            .as_slice()
            .iter()
            .filter(below)
            .filter(|id| !set_a.contains(id))
            .copied()
            .collect();
        assert!(!expected_need.is_empty() && expected_need.len() < 900);
        assert_eq!(step.have, expected_have);
        assert_eq!(step.need, expected_need);
        assert!(step.next.is_some(), "the rest of the range is still open");
    }

    #[test]
    fn a_set_growing_during_the_session_still_converges() {
        let (a, b) = two_sets(6, 5_000, 100, 100);
        let mut set_a = SortedIds::new(a.clone());
        let set_b = SortedIds::new(b.clone());
        let (mut initiator, mut message) = Initiator::start(&set_a);
        let mut responder = Responder::new();
        let mut need = BTreeSet::new();
        loop {
            let reply = responder
                .step(&set_b, message)
                .ok()
                .and_then(|step| step.next);
            let step = initiator
                .step(&set_a, reply.expect("answer"))
                .expect("honest peer");
            // Store fetched records at once, as a node does while the session goes on.
            for id in &step.need {
                assert!(need.insert(*id), "reported once");
                set_a.insert(*id);
            }
            match step.next {
                Some(next) => message = next,
                None => break,
            }
        }
        let expected: BTreeSet<Id> = b.iter().filter(|id| !a.contains(id)).copied().collect();
        assert_eq!(need, expected);
    }

    #[test]
    fn the_responder_answers_from_the_message_alone() {
        let (a, b) = two_sets(8, 3000, 20, 20);
        let (set_a, set_b) = (SortedIds::new(a), SortedIds::new(b));
        let (_, first) = Initiator::start(&set_a);
        let once = Responder::new().step(&set_b, first.clone());
        let twice = Responder::new().step(&set_b, first);
        assert_eq!(once, twice);
    }

    #[test]
    fn session_state_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Initiator>();
        assert_send_sync::<Responder>();
        assert_send_sync::<Message>();
        assert_send_sync::<Step>();
        assert_send_sync::<SortedIds>();
        assert_send_sync::<ReconcileError>();
    }

    /// Set sizes up to 100k, differences from none to all, split in any proportion.
    fn session_shape() -> impl Strategy<Value = (u64, usize, usize, usize)> {
        let total = prop_oneof![0usize..100, 100usize..5_000, 5_000usize..=100_000];
        let share = prop_oneof![Just(0.0), Just(1.0), 0.0f64..0.001, 0.0f64..1.0];
        (any::<u64>(), total, share, 0.0f64..=1.0).prop_map(|(seed, total, share, on_a)| {
            let differing = ((total as f64) * share).round() as usize;
            let only_a = ((differing as f64) * on_a).round() as usize;
            (seed, total - differing, only_a, differing - only_a)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]

        #[test]
        fn random_sets_converge_to_their_union((seed, common, only_a, only_b) in session_shape()) {
            let (a, b) = two_sets(seed, common, only_a, only_b);
            assert_converges(&a, &b);
        }
    }

    #[test]
    fn the_worst_shapes_stay_within_the_bound() {
        // Everything on one side, at the largest size the property test draws.
        let (a, b) = two_sets(9, 0, 0, 100_000);
        assert_converges(&a, &b);
        assert_converges(&b, &a);
    }

    #[test]
    #[ignore = "runs a minute in debug builds; run with --release -- --ignored"]
    fn million_id_sessions_converge() {
        for (differing, seed) in [(0, 1), (1, 2), (100, 3), (10_000, 4), (100_000, 5)] {
            let (a, b) = two_sets(
                seed,
                1_000_000 - differing / 2,
                differing / 2,
                differing - differing / 2,
            );
            assert_converges(&a, &b);
        }
    }
}
