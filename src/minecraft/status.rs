//! The status stage (the server list): a client's status request and ping, and a server's
//! answer to them (what wakegate reads when it pings a backend).

use super::error::{CodecError, Result};
use super::limits::MAX_STATUS_JSON;
use super::version::{PING, PONG, STATUS_REQUEST, STATUS_RESPONSE};
use super::wire::{Decoder, packet};

/// What a client sends in the status stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRequest {
    /// Asks for the status response.
    Status,
    /// Asks for a pong with the same payload, to measure latency.
    Ping(i64),
}

impl StatusRequest {
    pub fn parse(body: &[u8]) -> Result<StatusRequest> {
        let mut d = Decoder::new(body);
        let request = match d.varint("packet id")? {
            STATUS_REQUEST => StatusRequest::Status,
            PING => StatusRequest::Ping(d.i64("ping payload")?),
            id => {
                return Err(CodecError::UnexpectedPacket {
                    id,
                    expected: "a status request or a ping",
                });
            }
        };
        d.finish("status request")?;
        Ok(request)
    }

    pub fn encode(&self) -> Vec<u8> {
        let built = match *self {
            StatusRequest::Status => packet(STATUS_REQUEST, |_| Ok(())),
            StatusRequest::Ping(payload) => packet(PING, |out| {
                out.extend_from_slice(&payload.to_be_bytes());
                Ok(())
            }),
        };
        built.expect("a status request is a few bytes")
    }
}

/// What a server answers in the status stage (to read a backend's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusResponse {
    /// The status as JSON text.
    Status(String),
    Pong(i64),
}

impl StatusResponse {
    pub fn parse(body: &[u8]) -> Result<StatusResponse> {
        let mut d = Decoder::new(body);
        let response = match d.varint("packet id")? {
            STATUS_RESPONSE => {
                StatusResponse::Status(d.string("status JSON", MAX_STATUS_JSON)?.to_owned())
            }
            PONG => StatusResponse::Pong(d.i64("pong payload")?),
            id => {
                return Err(CodecError::UnexpectedPacket {
                    id,
                    expected: "a status response or a pong",
                });
            }
        };
        d.finish("status response")?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minecraft::testing::*;
    use crate::minecraft::*;

    /// The server list ping of a 1.8 client to localhost:25565, byte for byte as the
    /// protocol documentation shows it: the handshake, then the status request.
    #[test]
    fn a_captured_1_8_server_list_ping_parses() {
        let bytes = hex("0f00 2f 09 6c6f63616c686f7374 63dd 01   0100");
        let frame = Frame::parse(&bytes, MAX_HANDSHAKE_FRAME).unwrap().unwrap();
        assert_eq!(frame.raw(), &bytes[..16]);
        assert_eq!(frame.id().unwrap(), 0);
        let handshake = Handshake::parse(frame.body()).unwrap();
        assert_eq!(handshake.protocol, Protocol(47));
        assert_eq!(handshake.protocol.version_name(), Some("1.8–1.8.9"));
        assert_eq!(handshake.address.hostname(), "localhost");
        assert_eq!(handshake.address.marker(), None);
        assert_eq!(handshake.port, 25565);
        assert_eq!(handshake.intent, Intent::Status);
        assert_eq!(handshake.encode().unwrap(), frame.raw());
        let request = one_frame(&bytes[16..], MAX_LOGIN_FRAME);
        assert_eq!(
            StatusRequest::parse(request.body()).unwrap(),
            StatusRequest::Status
        );
        assert_eq!(StatusRequest::Status.encode(), request.raw());
        let ping = hex("09 01 000000000000d431");
        let parsed = StatusRequest::parse(one_frame(&ping, MAX_LOGIN_FRAME).body()).unwrap();
        assert_eq!(parsed, StatusRequest::Ping(54321));
        assert_eq!(parsed.encode(), ping);
    }
}
