//! Invitation tokens: what a member hands to a region that wants to join.
//!
//! An invitation names the federation (its id is the charter's hash), the charter's plain BLAKE3
//! hash, where the federation's nodes can be reached, who invites and until when. The inviter
//! signs it with its region key. The token is one line of text an operator can paste:
//! `kim-invite-1.` followed by the URL-safe base64 (no padding) of the postcard encoding of
//! [`SignedInvitation`].
//!
//! A token proves little on its own: anyone can sign one. The joining node checks the signature
//! and expiry here, then fetches the charter from the bootstrap peers, checks it against both
//! hashes, and checks that the inviter is a current member of the federation the charter founds
//! ([`Invitation::check_inviter`]). Only then does it sign its join request.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use serde::{Deserialize, Serialize};

use crate::bytes::{FederationId, Hash32, PublicKey, SignatureBytes};
use crate::limits::{
    INVITATION_BOOTSTRAP_MAX, INVITATION_TOKEN_CHARS_MAX, INVITATION_VALIDITY_MS_MAX,
    NAME_CHARS_MAX, REFERENCE_CHARS_MAX,
};
use crate::membership::MembershipState;

/// The text every token starts with (the number is the token format version).
pub const TOKEN_PREFIX: &str = "kim-invite-1.";
/// Domain of the inviter's signature over the invitation bytes.
pub const INVITATION_SIGNING_DOMAIN: &[u8] = b"kim/invitation/v1";

/// What an invitation says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The federation id (BLAKE3 derive-key of the charter bytes).
    pub federation: FederationId,
    /// Plain BLAKE3 of the charter bytes: a second, independent check of the fetched charter.
    pub charter_hash: Hash32,
    /// The federation's name, for the operator's eyes.
    pub federation_name: String,
    /// Multiaddrs of members' nodes, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
    /// The inviting region's current signing key.
    pub inviter: PublicKey,
    /// The inviting region's name, for the operator's eyes.
    pub inviter_name: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
}

/// An invitation with the inviter's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedInvitation {
    pub invitation: Invitation,
    pub signature: SignatureBytes,
}

/// Why a token is refused. Each has a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvitationError {
    #[error("the token is {chars} characters; the limit is {max}")]
    TooLong { chars: usize, max: usize },
    #[error("the text is not a KIM invitation (it must start with {TOKEN_PREFIX})")]
    NotAToken,
    #[error("the token is damaged (copy it again in one piece): {0}")]
    Malformed(String),
    #[error("the inviter's signature does not verify: the token was altered or forged")]
    BadSignature,
    #[error(
        "the invitation expired at {expires_at_ms} (now {now_ms}); ask the member for a new one"
    )]
    Expired { expires_at_ms: u64, now_ms: u64 },
    #[error("the invitation is not valid yet (created at {created_at_ms}, now {now_ms})")]
    NotYetValid { created_at_ms: u64, now_ms: u64 },
    #[error("the invitation claims a validity above the limit of {max_ms} ms")]
    ValidityTooLong { max_ms: u64 },
    #[error("the invitation has {count} bootstrap addresses; it needs 1 to {max}")]
    Bootstrap { count: usize, max: usize },
    #[error("field {field} is too long ({len} characters; the limit is {max})")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the charter the peers sent does not match the invitation's hashes")]
    CharterMismatch,
    #[error("the inviter {0} is not a current member of the federation")]
    InviterNotMember(PublicKey),
}

impl InvitationError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            InvitationError::TooLong { .. } => "invitation.too_long",
            InvitationError::NotAToken => "invitation.not_a_token",
            InvitationError::Malformed(_) => "invitation.malformed",
            InvitationError::BadSignature => "invitation.bad_signature",
            InvitationError::Expired { .. } => "invitation.expired",
            InvitationError::NotYetValid { .. } => "invitation.not_yet_valid",
            InvitationError::ValidityTooLong { .. } => "invitation.validity_too_long",
            InvitationError::Bootstrap { .. } => "invitation.bootstrap",
            InvitationError::FieldTooLong { .. } => "invitation.field_too_long",
            InvitationError::CharterMismatch => "invitation.charter_mismatch",
            InvitationError::InviterNotMember(_) => "invitation.inviter_not_member",
        }
    }
}

/// How far in the future an invitation's creation time may lie (clock skew).
const CREATED_SKEW_MS: u64 = 5 * 60 * 1000;

impl Invitation {
    /// Plain BLAKE3 of charter bytes, as carried in [`Invitation::charter_hash`].
    pub fn hash_charter(charter_bytes: &[u8]) -> Hash32 {
        Hash32(*blake3::hash(charter_bytes).as_bytes())
    }

    fn signed_message(&self) -> Result<Vec<u8>, InvitationError> {
        let mut msg = INVITATION_SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(
            &postcard::to_stdvec(self).map_err(|e| InvitationError::Malformed(e.to_string()))?,
        );
        Ok(msg)
    }

    /// Checks the fields' bounds (not the signature, not the clock).
    pub fn check_fields(&self) -> Result<(), InvitationError> {
        if self.bootstrap.is_empty() || self.bootstrap.len() > INVITATION_BOOTSTRAP_MAX {
            return Err(InvitationError::Bootstrap {
                count: self.bootstrap.len(),
                max: INVITATION_BOOTSTRAP_MAX,
            });
        }
        let field = |field: &'static str, text: &str, max: usize| {
            let len = text.chars().count();
            if len > max {
                Err(InvitationError::FieldTooLong { field, len, max })
            } else {
                Ok(())
            }
        };
        for addr in &self.bootstrap {
            field("bootstrap", addr, REFERENCE_CHARS_MAX)?;
        }
        field("federation_name", &self.federation_name, NAME_CHARS_MAX)?;
        field("inviter_name", &self.inviter_name, NAME_CHARS_MAX)?;
        if self.expires_at_ms.saturating_sub(self.created_at_ms) > INVITATION_VALIDITY_MS_MAX {
            return Err(InvitationError::ValidityTooLong {
                max_ms: INVITATION_VALIDITY_MS_MAX,
            });
        }
        Ok(())
    }

    /// Signs the invitation with the inviter's key (which must be `self.inviter`).
    pub fn sign(self, key: &SigningKey) -> Result<SignedInvitation, InvitationError> {
        self.check_fields()?;
        let signature = key.sign(&self.signed_message()?);
        Ok(SignedInvitation {
            invitation: self,
            signature: SignatureBytes(signature.to_bytes()),
        })
    }

    /// Checks a charter fetched from the bootstrap peers against the invitation.
    pub fn check_charter(&self, charter_bytes: &[u8]) -> Result<(), InvitationError> {
        if crate::membership::federation_id(charter_bytes) != self.federation
            || Self::hash_charter(charter_bytes) != self.charter_hash
        {
            return Err(InvitationError::CharterMismatch);
        }
        Ok(())
    }

    /// Checks that the inviter's key is the current key of a current member.
    pub fn check_inviter(&self, state: &MembershipState) -> Result<(), InvitationError> {
        let is_current = state
            .members
            .values()
            .any(|member| member.key == self.inviter);
        if is_current && state.federation == self.federation {
            Ok(())
        } else {
            Err(InvitationError::InviterNotMember(self.inviter))
        }
    }
}

impl SignedInvitation {
    /// The one-line token.
    pub fn to_token(&self) -> Result<String, InvitationError> {
        let bytes =
            postcard::to_stdvec(self).map_err(|e| InvitationError::Malformed(e.to_string()))?;
        Ok(format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Parses a token and checks its bounds, signature and validity at `now_ms`. Surrounding
    /// whitespace (and line breaks a mail client inserted) is ignored.
    pub fn from_token(token: &str, now_ms: u64) -> Result<SignedInvitation, InvitationError> {
        let chars = token.chars().count();
        if chars > INVITATION_TOKEN_CHARS_MAX {
            return Err(InvitationError::TooLong {
                chars,
                max: INVITATION_TOKEN_CHARS_MAX,
            });
        }
        let compact: String = token.chars().filter(|c| !c.is_whitespace()).collect();
        let body = compact
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(InvitationError::NotAToken)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| InvitationError::Malformed(e.to_string()))?;
        let (signed, rest): (SignedInvitation, &[u8]) = postcard::take_from_bytes(&bytes)
            .map_err(|e| InvitationError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(InvitationError::Malformed(format!(
                "{} bytes after the end",
                rest.len()
            )));
        }
        signed.verify(now_ms)?;
        Ok(signed)
    }

    /// Checks bounds, the inviter's signature and the validity window at `now_ms`.
    pub fn verify(&self, now_ms: u64) -> Result<(), InvitationError> {
        let inv = &self.invitation;
        inv.check_fields()?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&inv.inviter.0)
            .map_err(|_| InvitationError::BadSignature)?;
        key.verify_strict(
            &inv.signed_message()?,
            &Signature::from_bytes(&self.signature.0),
        )
        .map_err(|_| InvitationError::BadSignature)?;
        if now_ms >= inv.expires_at_ms {
            return Err(InvitationError::Expired {
                expires_at_ms: inv.expires_at_ms,
                now_ms,
            });
        }
        if inv.created_at_ms > now_ms.saturating_add(CREATED_SKEW_MS) {
            return Err(InvitationError::NotYetValid {
                created_at_ms: inv.created_at_ms,
                now_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn invitation(inviter: &SigningKey) -> Invitation {
        let charter = b"charter bytes";
        Invitation {
            federation: crate::membership::federation_id(charter),
            charter_hash: Invitation::hash_charter(charter),
            federation_name: "Alpe-Adria".into(),
            bootstrap: vec!["/ip4/192.0.2.1/tcp/7651/p2p/12D3KooWExample".into()],
            inviter: PublicKey(inviter.verifying_key().to_bytes()),
            inviter_name: "Steiermark".into(),
            created_at_ms: 1_000_000,
            expires_at_ms: 1_000_000 + 7 * 24 * 3600 * 1000,
        }
    }

    #[test]
    fn a_token_round_trips_and_checks_the_charter() {
        let k = key(1);
        let token = invitation(&k).sign(&k).unwrap().to_token().unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert!(!token.contains(['+', '/', '=', ' ']));
        // Line breaks inserted by a mail client are ignored.
        let wrapped = format!("  {}\n{}  ", &token[..40], &token[40..]);
        let back = SignedInvitation::from_token(&wrapped, 2_000_000).unwrap();
        assert_eq!(back.invitation, invitation(&k));
        back.invitation.check_charter(b"charter bytes").unwrap();
        assert_eq!(
            back.invitation.check_charter(b"other charter"),
            Err(InvitationError::CharterMismatch)
        );
    }

    #[test]
    fn altered_forged_expired_and_damaged_tokens_are_refused() {
        let k = key(1);
        let signed = invitation(&k).sign(&k).unwrap();
        // Altered after signing.
        let mut altered = signed.clone();
        altered.invitation.bootstrap = vec!["/ip4/203.0.113.9/tcp/1/p2p/evil".into()];
        let err = SignedInvitation::from_token(&altered.to_token().unwrap(), 2_000_000);
        assert_eq!(err.unwrap_err().code(), "invitation.bad_signature");
        // Signed by another key than the inviter it names.
        let forged = invitation(&k).sign(&key(2)).unwrap();
        let err = SignedInvitation::from_token(&forged.to_token().unwrap(), 2_000_000);
        assert_eq!(err.unwrap_err().code(), "invitation.bad_signature");
        // Expired.
        let token = signed.to_token().unwrap();
        let late = signed.invitation.expires_at_ms;
        assert_eq!(
            SignedInvitation::from_token(&token, late)
                .unwrap_err()
                .code(),
            "invitation.expired"
        );
        // Created far in the future.
        assert_eq!(
            SignedInvitation::from_token(&token, 1_000)
                .unwrap_err()
                .code(),
            "invitation.not_yet_valid"
        );
        // Damaged: truncated, wrong prefix, garbage, overlong.
        for (text, code) in [
            (&token[..token.len() - 5], "invitation.malformed"),
            ("kim-invite-2.AAAA", "invitation.not_a_token"),
            ("kim-invite-1.!!!!", "invitation.malformed"),
        ] {
            assert_eq!(
                SignedInvitation::from_token(text, 2_000_000)
                    .unwrap_err()
                    .code(),
                code,
                "{text}"
            );
        }
        let huge = format!("{TOKEN_PREFIX}{}", "A".repeat(INVITATION_TOKEN_CHARS_MAX));
        assert_eq!(
            SignedInvitation::from_token(&huge, 2_000_000)
                .unwrap_err()
                .code(),
            "invitation.too_long"
        );
    }

    #[test]
    fn bounds_are_checked_before_signing() {
        let k = key(1);
        let mut none = invitation(&k);
        none.bootstrap.clear();
        assert_eq!(none.sign(&k).unwrap_err().code(), "invitation.bootstrap");
        let mut long = invitation(&k);
        long.expires_at_ms = long.created_at_ms + INVITATION_VALIDITY_MS_MAX + 1;
        assert_eq!(
            long.sign(&k).unwrap_err().code(),
            "invitation.validity_too_long"
        );
    }
}
