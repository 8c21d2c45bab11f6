//! The one status-ping client: asks a server for its status JSON the way a client's server
//! list does (handshake with intent status, status request, status response). The listener
//! uses it for the backend's own answer while a service is awake, the `minecraft` probe for
//! readiness and health, and the player poll (through the probe) to count players.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::error::CodecError;
use super::frame::FrameReader;
use super::handshake::{Handshake, Intent, ServerAddress};
use super::limits::MAX_FRAME;
use super::status::{StatusRequest, StatusResponse};
use super::version::Protocol;

/// The protocol wakegate's own pings announce. A server answers a status request whatever the
/// protocol; only the compatibility verdict in its answer depends on it.
const OWN_PROTOCOL: Protocol = Protocol(765);

/// Why a status ping failed.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    /// The connection could not be made or written to.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The answer was not a status response (or the connection closed before it).
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("a pong instead of a status")]
    Pong,
    #[error("a status that is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// Set by callers that bound the ping with a deadline.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// The handshake of wakegate's own pings to `address`: the address as the server name, intent
/// status.
pub fn own_handshake(address: SocketAddr) -> Handshake {
    Handshake {
        protocol: OWN_PROTOCOL,
        address: ServerAddress::new(&address.ip().to_string()),
        port: address.port(),
        intent: Intent::Status,
    }
}

/// Asks the server at `address` for its status JSON, sending `handshake` with intent status
/// (the client's own, when the listener asks on a client's behalf) after `header` (a PROXY
/// protocol header for a server that requires one, or nothing). The caller bounds it with a
/// deadline.
pub async fn status(
    address: SocketAddr,
    handshake: &Handshake,
    header: &[u8],
) -> Result<String, PingError> {
    let mut stream = TcpStream::connect(address).await?;
    // One small write and one answer: nothing to gain from Nagle's delay.
    let _ = stream.set_nodelay(true);
    let mut out = header.to_vec();
    out.extend(
        Handshake {
            intent: Intent::Status,
            ..handshake.clone()
        }
        .encode()?,
    );
    out.extend(StatusRequest::Status.encode());
    stream.write_all(&out).await?;
    let mut reader = FrameReader::new(stream);
    let frame = reader.next_frame(MAX_FRAME).await?;
    match StatusResponse::parse(frame.body())? {
        StatusResponse::Status(json) => Ok(json),
        StatusResponse::Pong(_) => Err(PingError::Pong),
    }
}

/// What a status says about the players.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Players {
    /// How many are online.
    pub online: Option<u32>,
    /// The names in the sample (servers show at most about 12).
    pub sample: Option<Vec<String>>,
}

/// Reads the players out of a status JSON.
pub fn players(json: &str) -> Result<Players, PingError> {
    let status: Value = serde_json::from_str(json)?;
    Ok(Players {
        online: status["players"]["online"].as_u64().map(|n| n as u32),
        sample: status["players"]["sample"].as_array().map(|sample| {
            sample
                .iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        }),
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::minecraft::{Clientbound, put_varint, testing::hex};

    #[test]
    fn varints_are_little_groups_of_seven_bits() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(StatusRequest::Status.encode(), [1, 0]);
    }

    /// A server that reads what the ping sends (up to `expect` bytes) and answers `answer`.
    #[allow(clippy::disallowed_methods)] // the test's own server, awaited by the test
    async fn server(
        expect: usize,
        answer: Vec<u8>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = vec![0; expect];
            socket.read_exact(&mut got).await.unwrap();
            socket.write_all(&answer).await.unwrap();
            got
        });
        (address, task)
    }

    #[tokio::test]
    async fn own_pings_send_the_bytes_the_probe_always_sent() {
        let json = r#"{"players":{"max":20,"online":2,"sample":[{"name":"Alex","id":"x"},{"name":"Steve","id":"y"}]}}"#;
        let answer = Clientbound::StatusResponse { json }
            .encode(Protocol(765))
            .unwrap();
        // PROXY LOCAL header, handshake (protocol 765, "127.0.0.1", the port, intent 1), then
        // the status request.
        let header = crate::minecraft::proxy_header::v2_local();
        let (address, server) = server(16 + 17 + 2, answer).await;
        let got = status(address, &own_handshake(address), &header)
            .await
            .unwrap();
        assert_eq!(got, json);
        let mut expected = header.clone();
        expected.extend(hex("10 00 fd05 09 3132372e302e302e31"));
        expected.extend(address.port().to_be_bytes());
        expected.extend(hex("01 0100"));
        assert_eq!(server.await.unwrap(), expected);
        assert_eq!(
            players(&got).unwrap(),
            Players {
                online: Some(2),
                sample: Some(vec!["Alex".into(), "Steve".into()]),
            }
        );
    }

    #[tokio::test]
    async fn a_pong_or_garbage_is_not_a_status() {
        let pong = Clientbound::Pong(1).encode(Protocol(765)).unwrap();
        let (address, _server) = server(19, pong).await;
        let err = status(address, &own_handshake(address), &[])
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "a pong instead of a status");
        let (address, _server) = server(19, hex("00")).await;
        let err = status(address, &own_handshake(address), &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, PingError::Codec(CodecError::EmptyFrame)),
            "{err:?}"
        );
        assert!(
            players("{not json")
                .unwrap_err()
                .to_string()
                .starts_with("a status that is not JSON:")
        );
    }
}
