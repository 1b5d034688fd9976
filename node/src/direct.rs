//! The direct protocol (`/kim/<federation>/direct/1`): one request, one response, between two
//! members' nodes. The request is a `kim_protocol::direct::DirectMessage` (an expression of
//! interest, an answer, a contact release); the response says whether the receiver took it.
//! Framed like sync frames (LEB128 length, then the payload); guests get nothing.
//!
//! | response tag | meaning | body |
//! | --- | --- | --- |
//! | 0 | `Taken` | one byte: 1 if it was new to the receiver |
//! | 1 | `Refused` | varint length ≤ 64 ‖ an ASCII error code |

use kim_protocol::direct::DIRECT_MESSAGE_BYTES_MAX;
use libp2p::StreamProtocol;

use crate::net::{Framed, FramedCodec, Reader, put_refusal};

/// A direct request: the encoded `DirectMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectRequest(pub Vec<u8>);

/// What the receiver did with a direct message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectResponse {
    Taken { new: bool },
    Refused(String),
}

impl DirectResponse {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            DirectResponse::Taken { new } => vec![0, u8::from(*new)],
            DirectResponse::Refused(code) => {
                let mut out = vec![1];
                put_refusal(&mut out, code);
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<DirectResponse, String> {
        match bytes {
            [0, 0] => Ok(DirectResponse::Taken { new: false }),
            [0, 1] => Ok(DirectResponse::Taken { new: true }),
            [1, body @ ..] => {
                let mut reader = Reader(body);
                let code = reader.refusal().map_err(|e| e.to_string())?;
                reader.finish().map_err(|e| e.to_string())?;
                Ok(DirectResponse::Refused(code))
            }
            _ => Err("malformed direct response".into()),
        }
    }
}

/// Frames direct messages on a substream.
pub(crate) type DirectCodec = FramedCodec<DirectRequest, DirectResponse>;

impl Framed for DirectRequest {
    const FRAME_BYTES_MAX: usize = DIRECT_MESSAGE_BYTES_MAX;
    fn to_frame(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn from_frame(bytes: &[u8]) -> Result<Self, String> {
        Ok(DirectRequest(bytes.to_vec()))
    }
}

impl Framed for DirectResponse {
    /// A tag, a length and a 64-byte code.
    const FRAME_BYTES_MAX: usize = 80;
    fn to_frame(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_frame(bytes: &[u8]) -> Result<Self, String> {
        DirectResponse::decode(bytes)
    }
}

/// The direct protocol's name for a federation.
pub fn protocol_name(federation: &kim_protocol::FederationId) -> anyhow::Result<StreamProtocol> {
    StreamProtocol::try_from_owned(kim_protocol::names::direct_protocol(federation))
        .map_err(|e| anyhow::anyhow!("direct protocol name: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip_and_garbage_is_refused() {
        for r in [
            DirectResponse::Taken { new: true },
            DirectResponse::Taken { new: false },
            DirectResponse::Refused("interest.not_ours".into()),
        ] {
            assert_eq!(DirectResponse::decode(&r.encode()).unwrap(), r);
        }
        assert!(DirectResponse::decode(&[]).is_err());
        assert!(DirectResponse::decode(&[0, 2]).is_err());
        assert!(DirectResponse::decode(&[1, 3, b'a']).is_err());
        assert!(DirectResponse::decode(&[2]).is_err());
    }
}
