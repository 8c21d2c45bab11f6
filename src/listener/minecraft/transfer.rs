//! The `transfer` join strategy (clients from 1.20.5): wakegate finishes the login itself (no
//! encryption: the backend authenticates the player when it comes back), keeps the client in
//! the configuration phase with keep-alives for as long as the wake takes, then sends it a
//! Transfer packet naming this gateway. The client reconnects with intent "transfer", and the
//! listener forwards that connection to the now-awake backend as a plain login. With
//! `transfer_to = "backend"` the Transfer names the server itself instead (see `handoff`).
//!
//! The vanilla client gives up on a login that shows no progress for 30 s; in the
//! configuration phase it only needs keep-alives, so a slow boot no longer drops anyone.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info};

use super::End;
use super::configuration::{configuration_disconnect, finish_login, linger, send_away};
use super::handoff::Handoffs;
use crate::minecraft::{
    Clientbound, CodecError, ConfigurationRequest, Frame, FrameReader, LoginStart, Protocol,
};
use crate::service::ServiceHandle;

/// How often a waiting client is sent a keep-alive. Vanilla servers send one every 15 s and
/// clients time out after 30 s of silence; more often costs nothing.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(5);

/// A client that answers nothing (no keep-alive, no packet at all) this long is gone.
const SILENCE: Duration = Duration::from_secs(30);

/// The largest packet a waiting client may send: vanilla caps serverbound plugin messages at
/// 32 KiB, and client information or known packs are far smaller.
const MAX_CONFIGURATION_FRAME: usize = 32 * 1024 + 64;

/// A client waiting in the configuration phase.
pub struct Waiting<'a> {
    pub reader: &'a mut FrameReader<TcpStream>,
    pub protocol: Protocol,
    pub peer: SocketAddr,
    pub service: &'a ServiceHandle,
    pub login: &'a LoginStart,
}

/// Where a waiting client is sent once the service is awake.
pub enum Back<'a> {
    /// Back to this gateway, at `public_address`.
    Gateway { host: &'a str, port: u16 },
    /// To the server itself (`transfer_to = "backend"`); to `fallback` (this gateway's
    /// `public_address`) when the server cannot take it directly, or asked to join again
    /// without one.
    Backend {
        handoffs: &'a Handoffs,
        fallback: Option<(&'a str, u16)>,
    },
}

/// How the wait ended, when the client was still there.
pub enum Outcome {
    /// The service is awake and the client was told to reconnect to this gateway.
    Transferred(String),
    /// The service is awake and the client was sent to the server itself.
    HandedOff(String),
    /// The service is awake, but the client could be neither handed off nor sent back here:
    /// it was asked to join again (and will be forwarded).
    Rejoin(String),
    /// The wake failed; the client was disconnected with the reason.
    Failed(String),
}

impl Waiting<'_> {
    pub async fn run(self, back: Back<'_>) -> Result<Outcome, End> {
        let Waiting {
            reader,
            protocol,
            peer,
            service,
            login,
        } = self;
        let name = login.name.as_str();
        finish_login(reader, protocol, login).await?;
        info!(
            player = name,
            "The player waits in the configuration phase while the service wakes."
        );

        let ready = service.connect_as(peer, Some(name.to_owned()));
        tokio::pin!(ready);
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE_EVERY);
        keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        let mut next_id: i64 = 1;
        enum Step {
            Ready(Result<crate::service::Ticket, crate::service::ConnectError>),
            Tick,
            Frame(Result<Frame, CodecError>),
        }
        let ticket = loop {
            // The read is dropped whenever another branch wins; FrameReader keeps what it had
            // read, so no byte is lost.
            let step = tokio::select! {
                ticket = &mut ready => Step::Ready(ticket),
                _ = keep_alive.tick() => Step::Tick,
                frame = reader.next_frame(MAX_CONFIGURATION_FRAME) => Step::Frame(frame),
            };
            match step {
                Step::Ready(ticket) => break ticket,
                Step::Tick => {
                    if heard.elapsed() > SILENCE {
                        return Err(End::Client(CodecError::Timeout(SILENCE)));
                    }
                    let ping = Clientbound::ConfigurationKeepAlive(next_id).encode(protocol)?;
                    next_id += 1;
                    reader.get_mut().write_all(&ping).await?;
                }
                Step::Frame(frame) => {
                    let frame = frame?;
                    heard = Instant::now();
                    match ConfigurationRequest::parse(frame.body(), protocol)? {
                        ConfigurationRequest::KeepAlive(id) => {
                            debug!(player = name, id, "Keep-alive answered.");
                        }
                        // Client information, brand, known packs: nothing to answer.
                        other => debug!(player = name, ?other, "Ignoring a configuration packet."),
                    }
                }
            }
        };
        let ticket = match ticket {
            Ok(ticket) => ticket,
            Err(e) => {
                let text = format!("§cThe server could not start.\n§7{e}");
                configuration_disconnect(reader, protocol, &text).await?;
                return Ok(Outcome::Failed(e.to_string()));
            }
        };
        // The ticket is held until the client has its Transfer: the service stays up meanwhile.
        let (host, port, outcome): (String, u16, fn(String) -> Outcome) = match back {
            Back::Gateway { host, port } => (host.to_owned(), port, Outcome::Transferred),
            Back::Backend { handoffs, fallback } => {
                match handoffs
                    .decide(service, ticket.address, peer, protocol)
                    .await
                {
                    Ok((host, port)) => (host, port, Outcome::HandedOff),
                    Err(not) => match fallback {
                        Some((host, port)) => (host.to_owned(), port, Outcome::Transferred),
                        None => {
                            let text = not.rejoin_text();
                            configuration_disconnect(reader, protocol, &text).await?;
                            return Ok(Outcome::Rejoin(not.to_string()));
                        }
                    },
                }
            }
        };
        send_away(reader, protocol, &host, port).await?;
        drop(ticket);
        info!(player = name, to = %format!("{host}:{port}"), "The service is ready; transferring the player.");
        linger(reader).await;
        Ok(outcome(format!("{host}:{port}")))
    }
}
