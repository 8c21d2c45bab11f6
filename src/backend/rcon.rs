//! A client for RCON, the remote console of Minecraft (and Source) servers: just enough to log
//! in and send a command, which is how a `process` backend saves and stops a server it cannot
//! reach by stdin.
//!
//! A packet is an `i32` length of the rest, then `i32` request id, `i32` type and the body as
//! bytes ending in two NULs, all little-endian. Login is type 3 and is answered by type 2 with
//! our id, or id -1 for a wrong password; a command is type 2 and is answered by type 0. The
//! protocol sends the password in clear: keep RCON on loopback or a private network.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::de::Secret;

const LOGIN: i32 = 3;
const COMMAND: i32 = 2;
const AUTH_RESPONSE: i32 = 2;
/// A body in one packet is at most 4096 bytes from a Minecraft server; a little room beyond.
const MAX_PACKET: usize = 16 * 1024;

/// Why an RCON exchange failed. The messages never hold the password.
#[derive(Debug, thiserror::Error)]
pub enum RconError {
    #[error(
        "cannot connect to RCON at {address}: {source}; check `enable-rcon=true` and `rcon.port` in server.properties"
    )]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error(
        "RCON at {address} refused the password; make `password` in [service.backend.rcon] match `rcon.password` in server.properties"
    )]
    WrongPassword { address: String },
    #[error("RCON at {address} closed the connection")]
    Closed { address: String },
    #[error("RCON at {address} broke the protocol: {reason}")]
    Protocol { address: String, reason: String },
    #[error("RCON at {address} did not answer within {}", humantime::format_duration(*timeout))]
    TimedOut { address: String, timeout: Duration },
    #[error("RCON at {address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
}

/// A logged-in RCON connection.
#[derive(Debug)]
pub struct Rcon {
    address: String,
    stream: TcpStream,
    next_id: i32,
}

impl Rcon {
    /// Connects to `address` and logs in with `password`.
    pub async fn login(address: &str, password: &Secret) -> Result<Rcon, RconError> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|source| RconError::Connect {
                address: address.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let mut rcon = Rcon {
            address: address.to_string(),
            stream,
            next_id: 1,
        };
        let id = rcon.send(LOGIN, password.expose()).await?;
        loop {
            let (reply_id, kind, _) = rcon.receive().await?;
            // Some servers send an empty response value before the answer to a login.
            if kind != AUTH_RESPONSE {
                continue;
            }
            return match reply_id {
                -1 => Err(RconError::WrongPassword {
                    address: rcon.address.clone(),
                }),
                _ if reply_id == id => Ok(rcon),
                other => Err(rcon.protocol(format!(
                    "the login was answered for request {other}, not {id}"
                ))),
            };
        }
    }

    /// Runs `command` and returns the server's answer.
    pub async fn command(&mut self, command: &str) -> Result<String, RconError> {
        let id = self.send(COMMAND, command).await?;
        loop {
            let (reply_id, _, body) = self.receive().await?;
            if reply_id == id {
                return Ok(body);
            }
        }
    }

    async fn send(&mut self, kind: i32, body: &str) -> Result<i32, RconError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut packet = Vec::with_capacity(14 + body.len());
        packet.extend_from_slice(&(10 + body.len() as i32).to_le_bytes());
        packet.extend_from_slice(&id.to_le_bytes());
        packet.extend_from_slice(&kind.to_le_bytes());
        packet.extend_from_slice(body.as_bytes());
        packet.extend_from_slice(&[0, 0]);
        self.stream
            .write_all(&packet)
            .await
            .map_err(|e| self.io(e))?;
        Ok(id)
    }

    /// One packet: (request id, type, body).
    async fn receive(&mut self) -> Result<(i32, i32, String), RconError> {
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .await
            .map_err(|e| self.io(e))?;
        let len = i32::from_le_bytes(len);
        if !(10..=MAX_PACKET as i32).contains(&len) {
            return Err(self.protocol(format!("a packet of {len} bytes")));
        }
        let mut rest = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut rest)
            .await
            .map_err(|e| self.io(e))?;
        let id = i32::from_le_bytes(rest[0..4].try_into().unwrap());
        let kind = i32::from_le_bytes(rest[4..8].try_into().unwrap());
        // The body ends in two NULs (its terminator and an empty string's).
        let body = &rest[8..rest.len() - 2];
        Ok((id, kind, String::from_utf8_lossy(body).into_owned()))
    }

    fn io(&self, e: std::io::Error) -> RconError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            RconError::Closed {
                address: self.address.clone(),
            }
        } else {
            RconError::Io {
                address: self.address.clone(),
                source: e,
            }
        }
    }

    fn protocol(&self, reason: String) -> RconError {
        RconError::Protocol {
            address: self.address.clone(),
            reason,
        }
    }
}
