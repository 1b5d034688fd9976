//! The signed envelope every shared thing travels in, and the bytes rules around it.
//!
//! Wire form of a record (all postcard, see SPEC.md):
//! `varint(len(content)) ‖ content ‖ signature[64]` where `content` is the postcard encoding of
//! [`Content`] and the signature is ed25519 over `SIGNING_DOMAIN ‖ content`. The record id is
//! BLAKE3 of the whole wire form. Receivers verify the bytes they received and keep them
//! unchanged; decoding additionally insists that re-encoding gives the same bytes, so every
//! record has exactly one byte form and flipping any byte is detected.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::bytes::{FederationId, PublicKey, RecordId, SignatureBytes};
use crate::error::Error;
use crate::limits::{CONTENT_BYTES_MAX, RECORD_BYTES_MAX};
use crate::membership::{CharterRecord, Endorsement, JoinRequest, KeyRotation, Leave, RemovalVote};
use crate::types::{
    Cooperation, ExpressionOfInterest, Knowledge, Organisation, Outcome, Project, RegionProfile,
    Tombstone,
};

/// The content format this implementation writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Prefix of every signed message, so a KIM signature can never be replayed as anything else.
pub const SIGNING_DOMAIN: &[u8] = b"kim/record/v1";

/// What logical kind of item a record is about.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    RegionProfile,
    Organisation,
    Project,
    Cooperation,
    Knowledge,
    Interest,
    Outcome,
    Charter,
    JoinRequest,
    Endorsement,
    RemovalVote,
    Leave,
    KeyRotation,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 13] = [
        Kind::RegionProfile,
        Kind::Organisation,
        Kind::Project,
        Kind::Cooperation,
        Kind::Knowledge,
        Kind::Interest,
        Kind::Outcome,
        Kind::Charter,
        Kind::JoinRequest,
        Kind::Endorsement,
        Kind::RemovalVote,
        Kind::Leave,
        Kind::KeyRotation,
    ];

    /// The snake_case name used in JSON, the API and SPEC.md.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RegionProfile => "region_profile",
            Kind::Organisation => "organisation",
            Kind::Project => "project",
            Kind::Cooperation => "cooperation",
            Kind::Knowledge => "knowledge",
            Kind::Interest => "interest",
            Kind::Outcome => "outcome",
            Kind::Charter => "charter",
            Kind::JoinRequest => "join_request",
            Kind::Endorsement => "endorsement",
            Kind::RemovalVote => "removal_vote",
            Kind::Leave => "leave",
            Kind::KeyRotation => "key_rotation",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether items of this kind may be withdrawn with a tombstone.
    pub fn withdrawable(self) -> bool {
        matches!(
            self,
            Kind::RegionProfile
                | Kind::Organisation
                | Kind::Project
                | Kind::Cooperation
                | Kind::Knowledge
                | Kind::Outcome
        )
    }

    /// Whether records of this kind feed the membership rule.
    pub fn is_membership(self) -> bool {
        matches!(
            self,
            Kind::Charter
                | Kind::JoinRequest
                | Kind::Endorsement
                | Kind::RemovalVote
                | Kind::Leave
                | Kind::KeyRotation
        )
    }

    /// Whether records of this kind are replicated to every member (gossip and sync).
    /// Expressions of interest are delivered directly to one region only.
    pub fn is_replicated(self) -> bool {
        self != Kind::Interest
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of a record. Its variant must match the envelope's kind, except a tombstone,
/// which withdraws an item of any withdrawable kind.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Tombstone(Tombstone),
    RegionProfile(RegionProfile),
    Organisation(Organisation),
    Project(Project),
    Cooperation(Cooperation),
    Knowledge(Knowledge),
    Interest(ExpressionOfInterest),
    Outcome(Outcome),
    Charter(CharterRecord),
    JoinRequest(JoinRequest),
    Endorsement(Endorsement),
    RemovalVote(RemovalVote),
    Leave(Leave),
    KeyRotation(KeyRotation),
}

impl Body {
    /// The kind this body belongs to; `None` for a tombstone.
    pub fn kind(&self) -> Option<Kind> {
        Some(match self {
            Body::Tombstone(_) => return None,
            Body::RegionProfile(_) => Kind::RegionProfile,
            Body::Organisation(_) => Kind::Organisation,
            Body::Project(_) => Kind::Project,
            Body::Cooperation(_) => Kind::Cooperation,
            Body::Knowledge(_) => Kind::Knowledge,
            Body::Interest(_) => Kind::Interest,
            Body::Outcome(_) => Kind::Outcome,
            Body::Charter(_) => Kind::Charter,
            Body::JoinRequest(_) => Kind::JoinRequest,
            Body::Endorsement(_) => Kind::Endorsement,
            Body::RemovalVote(_) => Kind::RemovalVote,
            Body::Leave(_) => Kind::Leave,
            Body::KeyRotation(_) => Kind::KeyRotation,
        })
    }

    /// Name of the body variant, for error messages.
    pub fn name(&self) -> &'static str {
        self.kind().map_or("tombstone", Kind::as_str)
    }

    /// Whether this body is a withdrawal.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Body::Tombstone(_))
    }
}

/// Everything a record says; these exact bytes are signed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Always [`FORMAT_VERSION`]; the first byte of the content.
    pub format: u8,
    /// Stops replay of a record into another federation.
    pub federation: FederationId,
    /// The signing key; a region's current key (see membership for rotation).
    pub author: PublicKey,
    pub kind: Kind,
    /// The author's stable name for the logical item (1–64 of `a-z 0-9 . _ -`).
    pub key: String,
    /// Higher revisions of the same item supersede lower ones.
    pub revision: u64,
    /// Milliseconds since the Unix epoch when the author made the record.
    pub created_at_ms: u64,
    /// After this instant the item is hidden from queries on every node.
    pub expires_at_ms: Option<u64>,
    pub body: Body,
}

/// The envelope as it is on the wire, borrowing the content bytes.
#[derive(Serialize, Deserialize)]
struct WireEnvelope<'a> {
    #[serde(borrow)]
    content: &'a [u8],
    signature: SignatureBytes,
}

/// A decoded record: the exact bytes received, their id and the decoded content.
///
/// Holding a `Record` means the bytes are canonical and within limits; it does not mean the
/// signature was checked ([`Record::verify`]) or the content validated ([`crate::validate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: RecordId,
    /// The exact wire bytes; stored and forwarded unchanged.
    pub bytes: Vec<u8>,
    pub content: Content,
    pub signature: SignatureBytes,
    /// Where the signed content lies inside `bytes`.
    content_start: usize,
    content_end: usize,
}

/// A postcard output that compares instead of storing: it refuses (as
/// `SerializeBufferFull`) the first byte that differs from `expected` or runs past its end,
/// and finishes only at its exact end. So `serialize_with_flavor(value, SameAs::new(bytes))`
/// is `Ok` exactly when `to_stdvec(value) == bytes`.
struct SameAs<'a> {
    expected: &'a [u8],
    at: usize,
}

impl<'a> SameAs<'a> {
    fn new(expected: &'a [u8]) -> Self {
        SameAs { expected, at: 0 }
    }
}

impl postcard::ser_flavors::Flavor for SameAs<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.at + data.len();
        if self.expected.get(self.at..end) != Some(data) {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.at = end;
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.expected.get(self.at) != Some(&data) {
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.at += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        if self.at == self.expected.len() {
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }
}

/// BLAKE3 of a record's wire bytes.
pub fn record_id(bytes: &[u8]) -> RecordId {
    RecordId(*blake3::hash(bytes).as_bytes())
}

fn malformed(err: postcard::Error) -> Error {
    Error::Malformed {
        reason: err.to_string(),
    }
}

impl Record {
    /// Checks the size, decodes and checks canonical form. Does not verify the signature.
    pub fn decode(bytes: Vec<u8>) -> Result<Record, Error> {
        if bytes.len() > RECORD_BYTES_MAX {
            return Err(Error::RecordTooLarge {
                size: bytes.len(),
                max: RECORD_BYTES_MAX,
            });
        }
        let (wire, rest) = postcard::take_from_bytes::<WireEnvelope>(&bytes).map_err(malformed)?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes { count: rest.len() });
        }
        let content_bytes = wire.content;
        if content_bytes.len() > CONTENT_BYTES_MAX {
            return Err(Error::RecordTooLarge {
                size: content_bytes.len(),
                max: CONTENT_BYTES_MAX,
            });
        }
        match content_bytes.first() {
            Some(&FORMAT_VERSION) => {}
            Some(&found) => {
                return Err(Error::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            None => {
                return Err(Error::Malformed {
                    reason: "empty content".into(),
                });
            }
        }
        let (content, rest) =
            postcard::take_from_bytes::<Content>(content_bytes).map_err(malformed)?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes { count: rest.len() });
        }
        // One byte form per record: overlong varints or other encoder freedom would give the
        // same content several ids. Encoded again and compared as it is written, with no
        // buffer: the first differing byte ends it.
        match postcard::serialize_with_flavor(&content, SameAs::new(content_bytes)) {
            Ok(()) => {}
            Err(postcard::Error::SerializeBufferFull) => return Err(Error::NonCanonical),
            Err(other) => return Err(malformed(other)),
        }
        let content_end = bytes.len() - SignatureBytes::LEN;
        let content_start = content_end - content_bytes.len();
        // The envelope prefix must be the minimal varint of the content length.
        if content_start != varint_len(content_bytes.len()) {
            return Err(Error::NonCanonical);
        }
        let signature = wire.signature;
        Ok(Record {
            id: record_id(&bytes),
            bytes,
            content,
            signature,
            content_start,
            content_end,
        })
    }

    /// The signed content bytes, exactly as received.
    pub fn content_bytes(&self) -> &[u8] {
        &self.bytes[self.content_start..self.content_end]
    }

    /// The message the signature covers: the domain followed by the content bytes.
    pub fn signed_message(&self) -> Vec<u8> {
        let content = self.content_bytes();
        let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + content.len());
        msg.extend_from_slice(SIGNING_DOMAIN);
        msg.extend_from_slice(content);
        msg
    }

    /// Verifies the signature with `verify_strict` over the received bytes.
    pub fn verify(&self) -> Result<(), Error> {
        let key = author_key(&self.content.author)?;
        let signature = Signature::from_bytes(&self.signature.0);
        key.verify_strict(&self.signed_message(), &signature)
            .map_err(|_| Error::BadSignature)
    }

    /// Encodes and signs `content` with `key`; the content's author must be `key`'s public key.
    pub fn sign(content: &Content, key: &SigningKey) -> Result<Record, Error> {
        if content.author.0 != key.verifying_key().to_bytes() {
            return Err(Error::BadValue {
                field: "author",
                reason: "author is not the signing key's public key",
            });
        }
        if content.format != FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                found: content.format,
                supported: FORMAT_VERSION,
            });
        }
        let content_bytes = postcard::to_stdvec(content).map_err(malformed)?;
        let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + content_bytes.len());
        msg.extend_from_slice(SIGNING_DOMAIN);
        msg.extend_from_slice(&content_bytes);
        let signature = SignatureBytes(key.sign(&msg).to_bytes());
        let bytes = postcard::to_stdvec(&WireEnvelope {
            content: &content_bytes,
            signature,
        })
        .map_err(malformed)?;
        Record::decode(bytes)
    }
}

/// Length of postcard's varint encoding of `n`.
fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Parses an author key, refusing invalid and small-order points.
pub fn author_key(author: &PublicKey) -> Result<VerifyingKey, Error> {
    let key = VerifyingKey::from_bytes(&author.0).map_err(|_| Error::BadPublicKey)?;
    if key.is_weak() {
        return Err(Error::WeakPublicKey);
    }
    Ok(key)
}

/// Batches shorter than this are verified record by record with `verify_strict`: for one
/// record the batch equation costs more than the single check (SPEC.md §3.5, which it is).
pub const BATCH_VERIFY_MIN: usize = 2;

/// Verifies many records at once; one result per record, in order.
///
/// The whole batch is checked with the randomised batch equation (SPEC.md §3.7; about twice the
/// single rate, more when many records share an author, see `batch.rs`); only when the batch
/// fails is each record checked alone with `verify_strict` to find the bad ones, so one forged
/// record costs its sender, not the honest records beside it.
pub fn verify_batch(records: &[&Record]) -> Vec<Result<(), Error>> {
    verify_batch_with(records, &mut author_key)
}

/// [`verify_batch`] with the authors' keys from `keys`, called once per distinct author of the
/// batch: a caller that verifies many batches keeps decoded keys across them (decoding costs
/// about a tenth of a single verification). `keys` must answer as [`author_key`] does.
pub fn verify_batch_with(
    records: &[&Record],
    keys: &mut dyn FnMut(&PublicKey) -> Result<VerifyingKey, Error>,
) -> Vec<Result<(), Error>> {
    let mut results: Vec<Result<(), Error>> = Vec::with_capacity(records.len());
    // Records from one author share a decompressed key: point decompression costs about a
    // third of a verification, and a batch usually comes from few members.
    let mut key_index: std::collections::HashMap<PublicKey, Result<usize, Error>> =
        std::collections::HashMap::new();
    let mut batch_keys: Vec<VerifyingKey> = Vec::new();
    let mut items = Vec::with_capacity(records.len());
    // The position in `records` of each item.
    let mut batched = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let parsed = key_index
            .entry(record.content.author)
            .or_insert_with(|| {
                keys(&record.content.author).map(|key| {
                    batch_keys.push(key);
                    batch_keys.len() - 1
                })
            })
            .clone();
        match parsed {
            Ok(key) => {
                batched.push(i);
                items.push(crate::batch::Item {
                    signature: &record.signature.0,
                    key,
                    message: [SIGNING_DOMAIN, record.content_bytes()],
                });
                results.push(Ok(()));
            }
            Err(err) => results.push(Err(err)),
        }
    }
    if items.len() < BATCH_VERIFY_MIN || !crate::batch::equation_holds(&items, &batch_keys) {
        for (item, &i) in items.iter().zip(&batched) {
            let signature = Signature::from_bytes(item.signature);
            let message = records[i].signed_message();
            if batch_keys[item.key]
                .verify_strict(&message, &signature)
                .is_err()
            {
                results[i] = Err(Error::BadSignature);
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Tombstone;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn tombstone(author: &SigningKey) -> Content {
        Content {
            format: FORMAT_VERSION,
            federation: FederationId([1; 32]),
            author: PublicKey(author.verifying_key().to_bytes()),
            kind: Kind::Cooperation,
            key: "offer-1".into(),
            revision: 2,
            created_at_ms: 1_700_000_000_000,
            expires_at_ms: None,
            body: Body::Tombstone(Tombstone {
                reason: "filled".into(),
            }),
        }
    }

    #[test]
    fn signed_record_decodes_and_verifies() -> Result<(), Error> {
        let k = key(3);
        let record = Record::sign(&tombstone(&k), &k)?;
        let again = Record::decode(record.bytes.clone())?;
        assert_eq!(again, record);
        again.verify()?;
        assert_eq!(again.id, record_id(&again.bytes));
        Ok(())
    }

    #[test]
    fn signing_with_another_key_is_refused() {
        let content = tombstone(&key(3));
        assert_eq!(
            Record::sign(&content, &key(4)).map_err(|e| e.code()),
            Err("field.bad_value")
        );
    }

    #[test]
    fn trailing_and_oversized_bytes_are_rejected() -> Result<(), Error> {
        let k = key(3);
        let mut bytes = Record::sign(&tombstone(&k), &k)?.bytes;
        bytes.push(0);
        assert_eq!(
            Record::decode(bytes).map_err(|e| e.code()),
            Err("record.trailing_bytes")
        );
        assert_eq!(
            Record::decode(vec![0; RECORD_BYTES_MAX + 1]).map_err(|e| e.code()),
            Err("record.too_large")
        );
        Ok(())
    }

    #[test]
    fn overlong_length_prefix_is_non_canonical() -> Result<(), Error> {
        let k = key(3);
        let bytes = Record::sign(&tombstone(&k), &k)?.bytes;
        // Re-write the one-byte length prefix as a two-byte overlong varint.
        let len = bytes[0];
        assert!(len < 0x80);
        let mut overlong = vec![len | 0x80, 0x00];
        overlong.extend_from_slice(&bytes[1..]);
        assert_eq!(
            Record::decode(overlong).map_err(|e| e.code()),
            Err("record.non_canonical")
        );
        Ok(())
    }

    /// A record whose content bytes are `content` and whose signature is zeros: enough for
    /// decode, which does not verify.
    fn enveloped(content: &[u8]) -> Vec<u8> {
        let mut bytes = postcard::to_stdvec(&content.len()).unwrap_or_default();
        bytes.extend_from_slice(content);
        bytes.extend_from_slice(&[0u8; SignatureBytes::LEN]);
        bytes
    }

    #[test]
    fn content_in_any_but_its_canonical_form_is_refused() -> Result<(), Error> {
        let k = key(3);
        let record = Record::sign(&tombstone(&k), &k)?;
        let content = record.content_bytes().to_vec();
        assert!(Record::decode(enveloped(&content)).is_ok());
        // format (1) + federation (32) + author (32), then the kind's variant index and the
        // key's length, each a one-byte varint: written as overlong two-byte varints they
        // decode to the same content.
        for at in [65usize, 66] {
            let byte = content[at];
            assert!(byte < 0x80);
            let mut overlong = content[..at].to_vec();
            overlong.extend_from_slice(&[byte | 0x80, 0x00]);
            overlong.extend_from_slice(&content[at + 1..]);
            assert_eq!(
                Record::decode(enveloped(&overlong)).map_err(|e| e.code()),
                Err("record.non_canonical"),
                "overlong varint at {at}"
            );
        }
        Ok(())
    }

    #[test]
    fn the_comparing_output_agrees_with_encoding_and_comparing() -> Result<(), Error> {
        use postcard::ser_flavors::Flavor as _;
        let k = key(3);
        let content = tombstone(&k);
        let bytes = postcard::to_stdvec(&content).map_err(malformed)?;
        let same = |expected: &[u8]| {
            postcard::serialize_with_flavor(&content, SameAs::new(expected)).is_ok()
        };
        assert!(same(&bytes));
        assert!(!same(&bytes[..bytes.len() - 1]), "shorter");
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(!same(&longer), "longer");
        for at in [0, bytes.len() / 2, bytes.len() - 1] {
            let mut changed = bytes.clone();
            changed[at] ^= 1;
            assert!(!same(&changed), "byte {at} changed");
        }
        let mut empty = SameAs::new(&[]);
        assert!(empty.try_extend(&[]).is_ok() && empty.finalize().is_ok());
        Ok(())
    }

    #[test]
    fn batch_verification_singles_out_the_forgery() -> Result<(), Error> {
        let k = key(3);
        let good = Record::sign(&tombstone(&k), &k)?;
        let mut forged_bytes = good.bytes.clone();
        let last = forged_bytes.len() - 1;
        forged_bytes[last] ^= 1;
        let forged = Record::decode(forged_bytes)?;
        let results = verify_batch(&[&good, &forged, &good]);
        let codes: Vec<_> = results
            .iter()
            .map(|r| r.clone().map_err(|e| e.code()))
            .collect();
        assert_eq!(codes, vec![Ok(()), Err("signature.invalid"), Ok(())]);
        Ok(())
    }

    /// Keys are asked for once per distinct author of a batch, their refusal is every such
    /// record's verdict, and a lone record gets the strict single check's verdict.
    #[test]
    fn keys_are_asked_once_per_author_and_a_lone_record_is_checked_alone() -> Result<(), Error> {
        let (a, b) = (key(3), key(4));
        let from_a = Record::sign(&tombstone(&a), &a)?;
        let from_b = Record::sign(&tombstone(&b), &b)?;
        let mut asked = Vec::new();
        let refused = PublicKey(b.verifying_key().to_bytes());
        let results = verify_batch_with(&[&from_a, &from_b, &from_a, &from_b], &mut |author| {
            asked.push(*author);
            if *author == refused {
                Err(Error::WeakPublicKey)
            } else {
                author_key(author)
            }
        });
        assert_eq!(asked.len(), 2);
        let codes: Vec<_> = results
            .iter()
            .map(|r| r.clone().map_err(|e| e.code()))
            .collect();
        assert_eq!(
            codes,
            vec![
                Ok(()),
                Err("signature.weak_key"),
                Ok(()),
                Err("signature.weak_key")
            ]
        );
        // One record: below BATCH_VERIFY_MIN, checked with verify_strict, forged or not.
        let mut forged_bytes = from_a.bytes.clone();
        let last = forged_bytes.len() - 1;
        forged_bytes[last] ^= 1;
        let forged = Record::decode(forged_bytes)?;
        assert_eq!(verify_batch(&[&from_a]), vec![Ok(())]);
        assert_eq!(verify_batch(&[&forged]), vec![Err(Error::BadSignature)]);
        assert_eq!(verify_batch(&[]), Vec::new());
        Ok(())
    }
}
