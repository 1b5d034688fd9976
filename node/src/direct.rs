//! The direct protocol (`/kim/<federation>/direct/1`): one request, one response, between two
//! members' nodes. The request is a `kim_protocol::direct::DirectMessage` (an expression of
//! interest, an answer, a contact release); the response says whether the receiver took it.
//! Framed like sync frames (LEB128 length, then the payload); guests get nothing.
//!
//! | response tag | meaning | body |
//! | --- | --- | --- |
//! | 0 | `Taken` | one byte: 1 if it was new to the receiver |
//! | 1 | `Refused` | varint length ≤ 64 ‖ an ASCII error code |

use std::io;

use kim_protocol::direct::DIRECT_MESSAGE_BYTES_MAX;
use libp2p::StreamProtocol;
use libp2p::futures::{AsyncRead, AsyncWrite};
use libp2p::request_response;

use crate::net::{Reader, invalid, put_varint, read_frame, write_frame};

/// Longest refusal code.
const REFUSAL_CODE_BYTES_MAX: usize = 64;

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
                let code = &code.as_bytes()[..code.len().min(REFUSAL_CODE_BYTES_MAX)];
                let mut out = vec![1];
                put_varint(&mut out, code.len() as u64);
                out.extend_from_slice(code);
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
                let len = reader
                    .count(REFUSAL_CODE_BYTES_MAX)
                    .map_err(|e| e.to_string())?;
                let code = reader.take(len).map_err(|e| e.to_string())?;
                reader.finish().map_err(|e| e.to_string())?;
                if !code.iter().all(u8::is_ascii_graphic) {
                    return Err("direct refusal code is not short ASCII".into());
                }
                Ok(DirectResponse::Refused(
                    String::from_utf8_lossy(code).into_owned(),
                ))
            }
            _ => Err("malformed direct response".into()),
        }
    }
}

/// Frames direct messages on a substream.
#[derive(Debug, Clone, Default)]
pub struct DirectCodec;

impl request_response::Codec for DirectCodec {
    type Protocol = StreamProtocol;
    type Request = DirectRequest;
    type Response = DirectResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<DirectRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let payload = read_frame(io).await?;
        if payload.len() > DIRECT_MESSAGE_BYTES_MAX {
            return Err(invalid("direct message above the limit"));
        }
        Ok(DirectRequest(payload))
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<DirectResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let payload = read_frame(io).await?;
        DirectResponse::decode(&payload).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: DirectRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        if request.0.len() > DIRECT_MESSAGE_BYTES_MAX {
            return Err(invalid("refusing to send a direct message above the limit"));
        }
        write_frame(io, &request.0).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: DirectResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response.encode()).await
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
