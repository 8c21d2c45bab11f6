//! The direct handoff (`transfer_to = "backend"`): a player whose client can follow a Transfer
//! packet (1.20.5+) is sent to the server's own address once it is awake, so wakegate carries
//! none of its game traffic. wakegate finishes the login itself (the server authenticates the
//! player when it arrives), and in the configuration phase that follows, where the packet is
//! valid, names the server: the backend's address as it was found on this wake, or
//! `transfer_host`.
//!
//! A player is forwarded through wakegate as before when the handoff cannot work: its client is
//! older, it arrives with intent "transfer" (it was just sent somewhere and came back here: it
//! is never sent round again), the server refuses transfers (`accepts-transfers=false`, asked
//! once per wake with a bare handshake), or the address is private and the player is not.
//! Since handed-off players never hold a connection through wakegate, what keeps the service
//! awake is the player poll (a status ping to the server) or its agent.

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::config::{Handoff, private_ip};
use super::configuration::{finish_login, linger, send_away};
use super::{End, Visit};
use crate::event::Kind;
use crate::minecraft::{
    CodecError, Decoder, FrameReader, Handshake, Intent, LoginStart, MAX_CHAT_JSON,
    MAX_LOGIN_FRAME, Protocol, ServerAddress,
};
use crate::service::{ServiceHandle, Ticket};

/// How long the server has to answer the check of whether it takes transfers.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// A server found refusing transfers is asked again after this long (its admin may have
/// restarted it with `accepts-transfers=true` without wakegate noticing).
const RECHECK_REFUSAL: Duration = Duration::from_secs(60);

/// The handoff of one route, with what it learned on the current wake.
pub struct Handoffs {
    config: Handoff,
    /// Whether the server takes transfers, as last asked.
    checked: Mutex<Option<Checked>>,
    /// The wake on which a player was last found unable to reach a private address (reported
    /// once per wake).
    out_of_reach: Mutex<Option<SystemTime>>,
}

/// The answer of one server on one wake.
struct Checked {
    backend: SocketAddr,
    /// When the service became awake: a new wake asks again.
    wake: SystemTime,
    at: Instant,
    /// The server's refusal, when it refused.
    refused: Option<String>,
}

/// Why a player is not handed off, though the route says so.
#[derive(Debug, thiserror::Error)]
pub enum NotHandedOff {
    #[error(
        "the server does not accept transfers ({0}): set accepts-transfers=true in its server.properties"
    )]
    Refused(String),
    #[error(
        "the server's address {0} is private and the player's is not: set transfer_host to a name players can reach"
    )]
    OutOfReach(IpAddr),
}

impl NotHandedOff {
    /// What a player held in the configuration phase, with nowhere to go, is told.
    pub fn rejoin_text(&self) -> String {
        let why = match self {
            NotHandedOff::Refused(_) => {
                "§7It does not accept transfers yet (its admin must set accepts-transfers=true)."
            }
            NotHandedOff::OutOfReach(_) => "§7Its address cannot be reached from your network.",
        };
        format!("§eThe server is ready. Join again to play.\n{why}")
    }
}

impl Handoffs {
    pub fn new(config: Handoff) -> Handoffs {
        Handoffs {
            config,
            checked: Mutex::new(None),
            out_of_reach: Mutex::new(None),
        }
    }

    /// Where a player goes: `transfer_host` or the backend's IP, with `transfer_host`'s port
    /// or the backend's.
    pub fn destination(&self, backend: SocketAddr) -> (String, u16) {
        let host = match &self.config.host {
            Some(host) => host.clone(),
            None => backend.ip().to_canonical().to_string(),
        };
        (host, self.config.port.unwrap_or(backend.port()))
    }

    /// Where the player from `client` is to be sent, the service being awake with its
    /// backend at `backend`, or why it stays with wakegate.
    pub async fn decide(
        &self,
        service: &ServiceHandle,
        backend: SocketAddr,
        client: SocketAddr,
        protocol: Protocol,
    ) -> Result<(String, u16), NotHandedOff> {
        let (host, port) = self.destination(backend);
        let wake = service.status().since;
        if self.config.host.is_none() && out_of_reach(backend.ip(), client.ip()) {
            let not = NotHandedOff::OutOfReach(backend.ip());
            let first = lock(&self.out_of_reach).replace(wake) != Some(wake);
            if first {
                warn!(service = service.name(), client = %client.ip(), "Forwarding a player through wakegate: {not}.");
                let detail = json!({ "handoff": { "to": format!("{host}:{port}"), "client": client.ip().to_string(), "why": "out_of_reach" } });
                let _ = service
                    .note(
                        Kind::Warning,
                        format!("players are forwarded through wakegate: {not}"),
                        detail,
                    )
                    .await;
            }
            return Err(not);
        }
        match self
            .check(service, backend, wake, (&host, port), protocol)
            .await
        {
            None => Ok((host, port)),
            Some(refusal) => Err(NotHandedOff::Refused(refusal)),
        }
    }

    /// Whether the server takes transfers: its refusal, or none. Asked once per wake (a
    /// refusal again after `RECHECK_REFUSAL`); an answer that is neither counts as taking them.
    async fn check(
        &self,
        service: &ServiceHandle,
        backend: SocketAddr,
        wake: SystemTime,
        (host, port): (&str, u16),
        protocol: Protocol,
    ) -> Option<String> {
        let same = |c: &Checked| c.backend == backend && c.wake == wake;
        if let Some(c) = lock(&self.checked).as_ref()
            && same(c)
            && (c.refused.is_none() || c.at.elapsed() < RECHECK_REFUSAL)
        {
            return c.refused.clone();
        }
        let handshake = Handshake {
            protocol,
            address: ServerAddress::new(host),
            port,
            intent: Intent::Transfer,
        };
        let refused = match tokio::time::timeout(CHECK_TIMEOUT, ask(backend, &handshake)).await {
            Ok(Ok(refused)) => refused,
            Ok(Err(e)) => {
                debug!(service = service.name(), error = %e, "Cannot ask the server whether it takes transfers; handing players to it anyway.");
                None
            }
            Err(_) => {
                debug!(
                    service = service.name(),
                    "The server did not say whether it takes transfers; handing players to it anyway."
                );
                None
            }
        };
        let checked = Checked {
            backend,
            wake,
            at: Instant::now(),
            refused: refused.clone(),
        };
        let before = lock(&self.checked).replace(checked);
        let news = before.is_none_or(|b| !same(&b) || b.refused.is_none());
        match &refused {
            Some(why) if news => {
                let not = NotHandedOff::Refused(why.clone());
                warn!(
                    service = service.name(),
                    "Players are forwarded through wakegate: {not}."
                );
                let detail = json!({ "handoff": { "to": format!("{host}:{port}"), "why": "transfers_refused", "answer": why } });
                let _ = service
                    .note(
                        Kind::Warning,
                        format!("players are forwarded through wakegate: {not}"),
                        detail,
                    )
                    .await;
            }
            Some(_) => {}
            None => debug!(service = service.name(), "The server takes transfers."),
        }
        refused
    }
}

impl Visit<'_> {
    /// Hands the player to the server itself when the route says so and the client can follow
    /// a Transfer packet, holding `ticket` (the service stays up) until it is told where to go.
    /// Gives the ticket back when the player is to be forwarded through wakegate instead.
    pub(super) async fn hand_off(
        &self,
        reader: &mut FrameReader<TcpStream>,
        start: &LoginStart,
        ticket: Ticket,
    ) -> Result<Option<Ticket>, End> {
        let protocol = self.handshake.protocol;
        let Some(handoffs) = &self.route.handoff else {
            return Ok(Some(ticket));
        };
        // A client that arrives with intent transfer was just sent somewhere, and here it is:
        // sending it round again could go on for as long as its resolver says so.
        if self.handshake.intent != Intent::Login || !protocol.supports_transfer() {
            return Ok(Some(ticket));
        }
        let service = &self.route.service;
        let Ok((host, port)) = handoffs
            .decide(service, ticket.address, self.peer, protocol)
            .await
        else {
            return Ok(Some(ticket));
        };
        finish_login(reader, protocol, start).await?;
        send_away(reader, protocol, &host, port).await?;
        drop(ticket);
        let to = format!("{host}:{port}");
        let player = start.name.as_str();
        self.note(
            player,
            "handed_off",
            format!("handed to the server at {to}"),
            json!({ "to": to }),
        )
        .await;
        linger(reader).await;
        Ok(None)
    }
}

/// Asks the server at `backend` whether it takes transfers: a handshake with intent transfer,
/// then the end of wakegate's side. A server that refuses answers at once with a login
/// disconnect (vanilla: `multiplayer.disconnect.transfers_disabled`); one that takes them
/// waits for a login that never comes, and closes. Its refusal, or none.
async fn ask(backend: SocketAddr, handshake: &Handshake) -> Result<Option<String>, CodecError> {
    let mut stream = TcpStream::connect(backend).await?;
    stream.write_all(&handshake.encode()?).await?;
    stream.shutdown().await?;
    let mut reader = FrameReader::new(stream);
    let frame = match reader.next_frame(MAX_LOGIN_FRAME).await {
        Err(CodecError::Closed { buffered: 0 }) => return Ok(None),
        frame => frame?,
    };
    let mut d = Decoder::new(frame.body());
    // Login disconnect: the only packet a server sends before a login start.
    if d.varint("packet id")? != 0 {
        return Ok(None);
    }
    let reason = d.string("disconnect reason", MAX_CHAT_JSON)?;
    // Another refusal (a version the server does not speak, a throttle) is the server's to
    // tell the player: only one about transfers keeps players here.
    Ok(reason
        .to_lowercase()
        .contains("transfer")
        .then(|| reason.to_owned()))
}

/// Whether a player at `client` cannot reach `backend`: a loopback address from elsewhere, or
/// a private one (RFC 1918, shared, link-local, unique local) from a public address.
fn out_of_reach(backend: IpAddr, client: IpAddr) -> bool {
    let (backend, client) = (backend.to_canonical(), client.to_canonical());
    if backend.is_loopback() {
        return !client.is_loopback();
    }
    private_ip(backend) && !(private_ip(client) || client.is_loopback())
}

/// The lock of a small cache: its holder never awaits nor panics, so a poisoned lock still
/// holds a coherent value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_private_address_is_out_of_reach_of_public_players_only() {
        // A loopback backend (a test, a server on the gateway's host) only for local players.
        assert!(!out_of_reach(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(!out_of_reach(ip("127.0.0.1"), ip("::ffff:127.0.0.1")));
        assert!(out_of_reach(ip("127.0.0.1"), ip("192.168.1.20")));
        // A VPC address: fine from the LAN, not from the internet.
        assert!(!out_of_reach(ip("10.0.3.7"), ip("192.168.1.20")));
        assert!(out_of_reach(ip("10.0.3.7"), ip("198.51.100.4")));
        assert!(out_of_reach(ip("100.64.0.9"), ip("198.51.100.4")));
        assert!(out_of_reach(ip("fd00::7"), ip("2001:db8::4")));
        // A public address: everyone.
        assert!(!out_of_reach(ip("203.0.113.7"), ip("198.51.100.4")));
        assert!(!out_of_reach(ip("203.0.113.7"), ip("10.1.1.1")));
        assert!(!out_of_reach(ip("2001:db8::7"), ip("fd00::4")));
    }

    #[test]
    fn players_go_to_the_backend_unless_transfer_host_says_otherwise() {
        let backend: SocketAddr = "203.0.113.7:25566".parse().unwrap();
        let plain = Handoffs::new(Handoff {
            host: None,
            port: None,
        });
        assert_eq!(plain.destination(backend), ("203.0.113.7".into(), 25566));
        let v6: SocketAddr = "[2001:db8::7]:25565".parse().unwrap();
        assert_eq!(plain.destination(v6), ("2001:db8::7".into(), 25565));
        let named = Handoffs::new(Handoff {
            host: Some("direct.example.com".into()),
            port: None,
        });
        assert_eq!(
            named.destination(backend),
            ("direct.example.com".into(), 25566)
        );
        let fixed = Handoffs::new(Handoff {
            host: Some("direct.example.com".into()),
            port: Some(25570),
        });
        assert_eq!(
            fixed.destination(backend),
            ("direct.example.com".into(), 25570)
        );
    }
}
