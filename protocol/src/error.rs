//! The one error type of the protocol: every rejection has a stable machine-readable code.
//!
//! Codes are part of the public protocol (SPEC.md lists them, invalid test vectors name them):
//! never rename one; add new variants instead.

use thiserror::Error;

/// Why a record, or a part of one, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    #[error("record is {size} bytes; the limit is {max}")]
    RecordTooLarge { size: usize, max: usize },
    #[error("record cannot be decoded: {reason}")]
    Malformed { reason: String },
    #[error("record has {count} bytes after its end")]
    TrailingBytes { count: usize },
    #[error("record is not in canonical encoding (re-encoding gives other bytes)")]
    NonCanonical,
    #[error("record format {found} is not supported (this implementation reads {supported})")]
    UnsupportedFormat { found: u8, supported: u8 },
    #[error("author key is not a valid ed25519 public key")]
    BadPublicKey,
    #[error("author key is a weak (small-order) key")]
    WeakPublicKey,
    #[error("signature does not verify against the author key")]
    BadSignature,
    #[error("record belongs to federation {found}, not {expected}")]
    WrongFederation { expected: String, found: String },
    #[error("created-at {created_at_ms} lies more than {skew_ms} ms after now ({now_ms})")]
    CreatedInFuture {
        created_at_ms: u64,
        now_ms: u64,
        skew_ms: u64,
    },
    #[error("expiry {expires_at_ms} is not after created-at {created_at_ms}")]
    ExpiryBeforeCreation {
        created_at_ms: u64,
        expires_at_ms: u64,
    },
    #[error("revision {revision} is above the limit {max}")]
    RevisionTooLarge { revision: u64, max: u64 },
    #[error("item key {key:?} is invalid: {reason}")]
    BadItemKey { key: String, reason: &'static str },
    #[error("kind {kind} does not match the body ({body})")]
    KindMismatch {
        kind: &'static str,
        body: &'static str,
    },
    #[error("kind {kind} cannot be withdrawn with a tombstone")]
    TombstoneNotAllowed { kind: &'static str },
    #[error("field {field} is required")]
    MissingField { field: &'static str },
    #[error("field {field} has {len} characters; the limit is {max}")]
    TextTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field {field} contains a control character")]
    ControlCharacter { field: &'static str },
    #[error("field {field} has {len} entries; the limit is {max}")]
    TooManyItems {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field {field} lists {value:?} twice")]
    DuplicateItem { field: &'static str, value: String },
    #[error("field {field}: {value:?} is not a NUTS 2024 code")]
    UnknownNuts { field: &'static str, value: String },
    #[error("field {field}: {value:?} is not a NACE Rev. 2.1 code")]
    UnknownNace { field: &'static str, value: String },
    #[error("field {field}: {value:?} is not an ISO 3166-1 alpha-2 country code")]
    UnknownCountry { field: &'static str, value: String },
    #[error("field {field}: {value:?} is not an ISO 639-1 language code")]
    UnknownLanguage { field: &'static str, value: String },
    #[error("field {field}: {value:?} is not a valid calendar date")]
    BadDate { field: &'static str, value: String },
    #[error("{first} must not be after {second}")]
    DateOrder {
        first: &'static str,
        second: &'static str,
    },
    #[error("field {field} holds an invalid value: {reason}")]
    BadValue {
        field: &'static str,
        reason: &'static str,
    },
    #[error("anonymous record reveals contact data in {field} ({what})")]
    AnonymityViolation {
        field: &'static str,
        what: &'static str,
    },
    #[error("project must have exactly one lead partner, found {found}")]
    LeadPartner { found: usize },
    #[error("charter is invalid: {reason}")]
    BadCharter { reason: &'static str },
    #[error("federation id does not match the charter hash")]
    CharterHashMismatch,
    #[error("founder {founder} did not sign the charter correctly")]
    BadFounderSignature { founder: String },
    #[error("key rotation proof from the new key does not verify")]
    BadRotationProof,
}

impl Error {
    /// The stable machine-readable code, e.g. `signature.invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::RecordTooLarge { .. } => "record.too_large",
            Error::Malformed { .. } => "record.malformed",
            Error::TrailingBytes { .. } => "record.trailing_bytes",
            Error::NonCanonical => "record.non_canonical",
            Error::UnsupportedFormat { .. } => "record.unsupported_format",
            Error::BadPublicKey => "signature.bad_key",
            Error::WeakPublicKey => "signature.weak_key",
            Error::BadSignature => "signature.invalid",
            Error::WrongFederation { .. } => "record.wrong_federation",
            Error::CreatedInFuture { .. } => "record.created_in_future",
            Error::ExpiryBeforeCreation { .. } => "record.expiry_before_creation",
            Error::RevisionTooLarge { .. } => "record.revision_too_large",
            Error::BadItemKey { .. } => "record.bad_item_key",
            Error::KindMismatch { .. } => "record.kind_mismatch",
            Error::TombstoneNotAllowed { .. } => "record.tombstone_not_allowed",
            Error::MissingField { .. } => "field.missing",
            Error::TextTooLong { .. } => "field.too_long",
            Error::ControlCharacter { .. } => "field.control_character",
            Error::TooManyItems { .. } => "field.too_many_items",
            Error::DuplicateItem { .. } => "field.duplicate_item",
            Error::UnknownNuts { .. } => "code.unknown_nuts",
            Error::UnknownNace { .. } => "code.unknown_nace",
            Error::UnknownCountry { .. } => "code.unknown_country",
            Error::UnknownLanguage { .. } => "code.unknown_language",
            Error::BadDate { .. } => "date.invalid",
            Error::DateOrder { .. } => "date.order",
            Error::BadValue { .. } => "field.bad_value",
            Error::AnonymityViolation { .. } => "anonymity.contact_data",
            Error::LeadPartner { .. } => "project.lead_partner",
            Error::BadCharter { .. } => "membership.bad_charter",
            Error::CharterHashMismatch => "membership.charter_hash_mismatch",
            Error::BadFounderSignature { .. } => "membership.bad_founder_signature",
            Error::BadRotationProof => "membership.bad_rotation_proof",
        }
    }

    /// Every code this version can produce, for SPEC.md and for clients that map codes to text.
    pub const ALL_CODES: &'static [&'static str] = &[
        "record.too_large",
        "record.malformed",
        "record.trailing_bytes",
        "record.non_canonical",
        "record.unsupported_format",
        "signature.bad_key",
        "signature.weak_key",
        "signature.invalid",
        "record.wrong_federation",
        "record.created_in_future",
        "record.expiry_before_creation",
        "record.revision_too_large",
        "record.bad_item_key",
        "record.kind_mismatch",
        "record.tombstone_not_allowed",
        "field.missing",
        "field.too_long",
        "field.control_character",
        "field.too_many_items",
        "field.duplicate_item",
        "code.unknown_nuts",
        "code.unknown_nace",
        "code.unknown_country",
        "code.unknown_language",
        "date.invalid",
        "date.order",
        "field.bad_value",
        "anonymity.contact_data",
        "project.lead_partner",
        "membership.bad_charter",
        "membership.charter_hash_mismatch",
        "membership.bad_founder_signature",
        "membership.bad_rotation_proof",
    ];
}
