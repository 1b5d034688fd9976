//! Direct messages between two regions' nodes over `/kim/<federation>/direct/1`: an expression
//! of interest travels from the interested region to the offering region, and the answer and
//! the contact details travel back. None of it is gossiped or part of any sync set.
//!
//! The expression of interest is an ordinary signed record (`Kind::Interest`). Answers and
//! contact details are not records: they are [`Signed`] messages for one recipient, signed by
//! the sending region's key over a domain string and the postcard encoding of the body, and
//! they name the interest they belong to, so a receiver can check who sent them and what for.

use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde::{Deserialize, Serialize};

use crate::bytes::{FederationId, PublicKey, RecordId, SignatureBytes};
use crate::limits::{DESCRIPTION_CHARS_MAX, NAME_CHARS_MAX, RECORD_BYTES_MAX, REFERENCE_CHARS_MAX};

/// Domain of an answer's signature.
pub const ANSWER_SIGNING_DOMAIN: &[u8] = b"kim/interest-answer/v1";
/// Domain of a contact message's signature.
pub const CONTACT_SIGNING_DOMAIN: &[u8] = b"kim/interest-contact/v1";
/// Largest encoded direct message.
pub const DIRECT_MESSAGE_BYTES_MAX: usize = RECORD_BYTES_MAX + 1024;

/// Contact details one side releases to the other once an interest is accepted. Local data at
/// both ends: they leave a node only in a direct message to the other party.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactDetails {
    pub person: String,
    pub organisation: String,
    pub email: String,
    pub phone: String,
    pub note: String,
}

/// The offering region's answer to an expression of interest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub federation: FederationId,
    /// The expression of interest answered (its record id).
    pub interest: RecordId,
    pub accepted: bool,
    pub reason: String,
    /// The offering side's contact, when accepted.
    pub contact: Option<ContactDetails>,
    pub answered_at_ms: u64,
}

/// The interested region's contact details, sent once its interest was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRelease {
    pub federation: FederationId,
    pub interest: RecordId,
    pub contact: ContactDetails,
    pub sent_at_ms: u64,
}

/// A body signed by a region's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub signer: PublicKey,
    pub signature: SignatureBytes,
}

/// One direct message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectMessage {
    /// An expression of interest record (`Kind::Interest`), exact bytes.
    Interest(Vec<u8>),
    Answer(Signed<Answer>),
    Contact(Signed<ContactRelease>),
}

/// Why a direct message is refused. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectError {
    #[error("direct message is {bytes} bytes; the limit is {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("direct message cannot be decoded: {0}")]
    Malformed(String),
    #[error("the signature does not verify against the signer's key")]
    BadSignature,
    #[error("field {field} has {len} characters; the limit is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field {field} contains a control character")]
    ControlCharacter { field: &'static str },
}

impl DirectError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            DirectError::TooLarge { .. } => "direct.too_large",
            DirectError::Malformed(_) => "direct.malformed",
            DirectError::BadSignature => "direct.bad_signature",
            DirectError::TooLong { .. } => "direct.field_too_long",
            DirectError::ControlCharacter { .. } => "direct.control_character",
        }
    }
}

fn text(field: &'static str, value: &str, max: usize, multiline: bool) -> Result<(), DirectError> {
    let len = value.chars().count();
    if len > max {
        return Err(DirectError::TooLong { field, len, max });
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(multiline && (c == '\n' || c == '\t')))
    {
        return Err(DirectError::ControlCharacter { field });
    }
    Ok(())
}

impl ContactDetails {
    /// Checks the fields' bounds.
    pub fn check(&self) -> Result<(), DirectError> {
        text("contact.person", &self.person, NAME_CHARS_MAX, false)?;
        text(
            "contact.organisation",
            &self.organisation,
            NAME_CHARS_MAX,
            false,
        )?;
        text("contact.email", &self.email, REFERENCE_CHARS_MAX, false)?;
        text("contact.phone", &self.phone, REFERENCE_CHARS_MAX, false)?;
        text("contact.note", &self.note, DESCRIPTION_CHARS_MAX, true)
    }
}

/// What may be signed and checked as a direct message body.
pub trait Body: Serialize {
    /// The signature domain.
    const DOMAIN: &'static [u8];
    /// Checks the body's bounds.
    fn check(&self) -> Result<(), DirectError>;
}

impl Body for Answer {
    const DOMAIN: &'static [u8] = ANSWER_SIGNING_DOMAIN;
    fn check(&self) -> Result<(), DirectError> {
        text("reason", &self.reason, DESCRIPTION_CHARS_MAX, true)?;
        self.contact.as_ref().map_or(Ok(()), ContactDetails::check)
    }
}

impl Body for ContactRelease {
    const DOMAIN: &'static [u8] = CONTACT_SIGNING_DOMAIN;
    fn check(&self) -> Result<(), DirectError> {
        self.contact.check()
    }
}

fn message<T: Body>(body: &T) -> Result<Vec<u8>, DirectError> {
    let mut out = T::DOMAIN.to_vec();
    out.extend_from_slice(
        &postcard::to_stdvec(body).map_err(|e| DirectError::Malformed(e.to_string()))?,
    );
    Ok(out)
}

impl<T: Body> Signed<T> {
    /// Signs `body` with the region's key.
    pub fn sign(body: T, key: &SigningKey) -> Result<Signed<T>, DirectError> {
        body.check()?;
        let signature = key.sign(&message(&body)?);
        Ok(Signed {
            body,
            signer: PublicKey(key.verifying_key().to_bytes()),
            signature: SignatureBytes(signature.to_bytes()),
        })
    }

    /// Checks the bounds and the signature (not who the signer is: the receiver knows whom it
    /// expects).
    pub fn verify(&self) -> Result<(), DirectError> {
        self.body.check()?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.signer.0)
            .map_err(|_| DirectError::BadSignature)?;
        key.verify_strict(
            &message(&self.body)?,
            &Signature::from_bytes(&self.signature.0),
        )
        .map_err(|_| DirectError::BadSignature)
    }
}

impl DirectMessage {
    /// The wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>, DirectError> {
        let bytes = postcard::to_stdvec(self).map_err(|e| DirectError::Malformed(e.to_string()))?;
        if bytes.len() > DIRECT_MESSAGE_BYTES_MAX {
            return Err(DirectError::TooLarge {
                bytes: bytes.len(),
                max: DIRECT_MESSAGE_BYTES_MAX,
            });
        }
        Ok(bytes)
    }

    /// Parses wire bytes, size first; signatures are checked by the receiver with
    /// [`Signed::verify`] (an interest record goes through the ingest pipeline).
    pub fn decode(bytes: &[u8]) -> Result<DirectMessage, DirectError> {
        if bytes.len() > DIRECT_MESSAGE_BYTES_MAX {
            return Err(DirectError::TooLarge {
                bytes: bytes.len(),
                max: DIRECT_MESSAGE_BYTES_MAX,
            });
        }
        let (message, rest): (DirectMessage, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| DirectError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DirectError::Malformed(format!(
                "{} bytes after the end",
                rest.len()
            )));
        }
        Ok(message)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            federation: FederationId([1; 32]),
            interest: RecordId([2; 32]),
            accepted: true,
            reason: "Glad to talk".into(),
            contact: Some(ContactDetails {
                person: "Ana Novak".into(),
                organisation: "RRA Podravje".into(),
                email: "ana@example.org".into(),
                phone: "+386 2 000 00 00".into(),
                note: "Mornings".into(),
            }),
            answered_at_ms: 5,
        }
    }

    #[test]
    fn signed_messages_round_trip_and_verify() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let signed = Signed::sign(answer(), &key).unwrap();
        let bytes = DirectMessage::Answer(signed.clone()).encode().unwrap();
        match DirectMessage::decode(&bytes).unwrap() {
            DirectMessage::Answer(back) => {
                back.verify().unwrap();
                assert_eq!(back, signed);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn altered_forged_oversized_and_garbage_messages_are_refused() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut altered = Signed::sign(answer(), &key).unwrap();
        altered.body.accepted = false;
        assert_eq!(altered.verify().unwrap_err().code(), "direct.bad_signature");
        let mut forged = Signed::sign(answer(), &key).unwrap();
        forged.signer = PublicKey(SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes());
        assert_eq!(forged.verify().unwrap_err().code(), "direct.bad_signature");
        let mut long = answer();
        long.reason = "x".repeat(DESCRIPTION_CHARS_MAX + 1);
        assert_eq!(
            Signed::sign(long, &key).unwrap_err().code(),
            "direct.field_too_long"
        );
        assert_eq!(
            DirectMessage::decode(&[7, 7, 7]).unwrap_err().code(),
            "direct.malformed"
        );
        let huge = vec![0u8; DIRECT_MESSAGE_BYTES_MAX + 1];
        assert_eq!(
            DirectMessage::decode(&huge).unwrap_err().code(),
            "direct.too_large"
        );
        let ok = DirectMessage::Interest(vec![1, 2]).encode().unwrap();
        let mut trailing = ok.clone();
        trailing.push(0);
        assert!(DirectMessage::decode(&trailing).is_err());
    }
}
