//! Every bound the protocol enforces, in one place, named with its unit last.
//!
//! Each limit is checked before the work it protects: sizes before decoding, list lengths before
//! iterating. SPEC.md reproduces this table; a test keeps the two in step.

/// Largest complete record (envelope) accepted from anywhere: gossip, sync, direct, HTTP, import.
pub const RECORD_BYTES_MAX: usize = 64 * 1024;
/// Largest signed content inside an envelope (the envelope adds a length prefix and a signature).
pub const CONTENT_BYTES_MAX: usize = RECORD_BYTES_MAX - 64 - 3;
/// Largest charter (the nested bytes inside a charter record).
pub const CHARTER_BYTES_MAX: usize = 16 * 1024;

/// How far in the future a record's created-at may lie relative to the receiver's clock.
pub const CREATED_AT_FUTURE_SKEW_MS_MAX: u64 = 5 * 60 * 1000;

/// Item keys: the author's stable name for a logical item.
pub const ITEM_KEY_CHARS_MAX: usize = 64;
/// Revisions above this are refused so that nobody can exhaust an item's revision space.
pub const REVISION_MAX: u64 = 1 << 53;

/// Short names: region, organisation, acronym, file name, person.
pub const NAME_CHARS_MAX: usize = 200;
/// Titles of offers, projects and knowledge items.
pub const TITLE_CHARS_MAX: usize = 300;
/// Summaries and abstracts.
pub const SUMMARY_CHARS_MAX: usize = 2_000;
/// Long descriptions.
pub const DESCRIPTION_CHARS_MAX: usize = 10_000;
/// A single keyword, theme or free-form code.
pub const KEYWORD_CHARS_MAX: usize = 80;
/// URLs, e-mail addresses, phone numbers, multiaddresses, media types.
pub const REFERENCE_CHARS_MAX: usize = 300;

/// Keywords, themes, languages, codes and similar lists.
pub const LIST_ITEMS_MAX: usize = 32;
/// NUTS or NACE codes on one item.
pub const CODES_MAX: usize = 32;
/// Participants of one project.
pub const PARTICIPANTS_MAX: usize = 200;
/// Attachments of one knowledge item.
pub const ATTACHMENTS_MAX: usize = 32;
/// Largest single attachment a record may announce (the node may set a lower limit).
pub const ATTACHMENT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Founders in a charter.
pub const FOUNDERS_MAX: usize = 64;
/// Nodes (libp2p peers) a region profile may list.
pub const REGION_NODES_MAX: usize = 8;
/// Addresses per node in a region profile.
pub const NODE_ADDRS_MAX: usize = 8;

/// Bootstrap addresses one invitation may carry.
pub const INVITATION_BOOTSTRAP_MAX: usize = 16;
/// Longest invitation token (the text an operator pastes).
pub const INVITATION_TOKEN_CHARS_MAX: usize = 8 * 1024;
/// Longest validity an invitation may claim.
pub const INVITATION_VALIDITY_MS_MAX: u64 = 90 * 24 * 3600 * 1000;
/// A join request older than this is no longer pending: it is not listed, cannot be endorsed,
/// and does not count towards [`JOIN_PENDING_MAX`]. The candidate asks again.
pub const JOIN_REQUEST_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// A join request submitted over the join protocol must have been made this recently.
pub const JOIN_SUBMIT_AGE_MS_MAX: u64 = 60 * 60 * 1000;
/// Unexpired join requests a node holds pending at once; past it, new candidates are refused
/// at the join protocol until some are admitted or expire.
pub const JOIN_PENDING_MAX: usize = 32;
/// Unexpired pending candidates one member's invitations may hold at a node.
pub const JOIN_PENDING_PER_INVITER: usize = 4;
