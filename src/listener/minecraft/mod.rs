//! `minecraft` listener: reads the Java edition handshake, routes by its hostname, answers the
//! server list itself while the service is not awake (a status ping never wakes it), wakes it
//! on a login and holds or kicks the player, and forwards transparently once it is awake,
//! replaying the bytes already read.

pub mod codec;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use self::codec::{
    Clientbound, CodecError, FrameReader, Handshake, Intent, LoginStart, MAX_LOGIN_FRAME, Protocol,
    StatusRequest,
};
use super::copy;
use crate::app::Connections;
use crate::config::{Join, Minecraft};
use crate::event::State;
use crate::service::ServiceHandle;
use crate::store::Store;

/// How long a client has to send its handshake, and each packet of the status and login
/// stages after it.
const PACKET_TIMEOUT: Duration = Duration::from_secs(10);

/// One service reachable through a shared socket, with its listener entry.
pub struct Route {
    pub service: ServiceHandle,
    pub config: Minecraft,
}

/// The services behind one socket, found by hostname.
pub struct Routes {
    routes: Vec<Route>,
    /// Takes hostnames no route names.
    default: Option<usize>,
}

impl Routes {
    /// The default is the route marked `default`, else one without hostnames, else the only one.
    pub fn new(routes: Vec<Route>) -> Routes {
        let default = routes
            .iter()
            .position(|r| r.config.default)
            .or_else(|| routes.iter().position(|r| r.config.hostnames.is_empty()))
            .or((routes.len() == 1).then_some(0));
        Routes { routes, default }
    }

    /// The route for a hostname (lower-case, without trailing dot, as the codec gives it).
    pub fn find(&self, hostname: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.config.hostnames.iter().any(|h| h == hostname))
            .or_else(|| self.default.map(|i| &self.routes[i]))
    }
}

/// Accepts clients until `connections.stop_accepting` fires.
pub async fn run(
    listener: TcpListener,
    routes: Routes,
    store: Arc<Store>,
    connections: Connections,
) {
    let routes = Arc::new(routes);
    loop {
        let accepted = tokio::select! {
            () = connections.stop_accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let span = info_span!("minecraft", %peer);
                let (routes, store, conns) = (routes.clone(), store.clone(), connections.clone());
                connections
                    .tracker
                    .spawn(serve(client, peer, routes, store, conns).instrument(span));
            }
            Err(e) => {
                // Usually out of file descriptors: wait a little instead of spinning.
                warn!(error = %e, "Cannot accept a connection.");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why a connection ended early; logged once, at the end of `serve`.
enum End {
    /// The client broke the protocol or went away: not worth more than a line.
    Client(CodecError),
    /// Writing to the client or reaching the backend failed.
    Io(std::io::Error),
    /// wakegate is shutting down.
    Shutdown,
}

impl From<CodecError> for End {
    fn from(e: CodecError) -> End {
        End::Client(e)
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> End {
        End::Io(e)
    }
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    routes: Arc<Routes>,
    store: Arc<Store>,
    connections: Connections,
) {
    let _ = client.set_nodelay(true);
    let mut reader = FrameReader::new(client);
    let ended = tokio::select! {
        ended = talk(&mut reader, peer, &routes, &store) => ended,
        () = connections.close_all.cancelled() => Err(End::Shutdown),
    };
    match ended {
        Ok(()) => {}
        Err(End::Client(CodecError::Closed { buffered: 0 })) => {
            debug!("The client closed the connection.");
        }
        Err(End::Client(e)) => info!(error = %e, "Closing a client that broke the protocol."),
        Err(End::Io(e)) => debug!(error = %e, "Connection ended with an error."),
        Err(End::Shutdown) => debug!("Closing the connection: wakegate is shutting down."),
    }
}

async fn talk(
    reader: &mut FrameReader<TcpStream>,
    peer: SocketAddr,
    routes: &Routes,
    store: &Store,
) -> Result<(), End> {
    let (handshake, frame) = codec::read_handshake(reader, PACKET_TIMEOUT).await?;
    let hostname = handshake.address.hostname().to_owned();
    let Some(route) = routes.find(&hostname) else {
        info!(hostname, "No service has this hostname.");
        let text = format!("§cunknown server `{hostname}`");
        return match handshake.intent {
            Intent::Status => {
                answer_status(reader, &handshake, &status_json(&handshake, None, &text)).await
            }
            Intent::Login | Intent::Transfer => disconnect(reader, handshake.protocol, &text).await,
        };
    };
    let service = &route.service;
    let config = &route.config;
    let span = info_span!("route", service = service.name(), hostname);
    async move {
        // A transfer is forwarded as a login, so the backend needs no `accepts-transfers`.
        let mut replay = match handshake.intent {
            Intent::Transfer => Handshake {
                intent: Intent::Login,
                ..handshake.clone()
            }
            .encode()?,
            _ => frame.into_raw(),
        };
        if handshake.intent == Intent::Status {
            let status = service.status();
            if let (State::Awake, Some(address)) = (status.state, status.address) {
                // Not a ticket: a server-list refresh must not count as activity.
                return forward(reader, replay, address, None).await;
            }
            let eta = (status.state == State::Waking).then(|| eta(store, service, status.since));
            let motd = match status.state {
                State::Waking => format!("{}\n{}", config.motd_waking, describe_eta(eta.flatten())),
                State::Failed => config.motd_failed.clone(),
                _ => config.motd_asleep.clone(),
            };
            let json = status_json(&handshake, Some(&config.version_name), &motd);
            return answer_status(reader, &handshake, &json).await;
        }

        let login = tokio::time::timeout(PACKET_TIMEOUT, reader.next_frame(MAX_LOGIN_FRAME))
            .await
            .map_err(|_| CodecError::Timeout(PACKET_TIMEOUT))??;
        let player = LoginStart::parse(login.body(), handshake.protocol)?.name;
        replay.extend_from_slice(login.raw());
        let awake = service.status().state == State::Awake;
        if !awake {
            info!(player, client = %peer.ip(), "Player {player} from {} asks to join; waking the service.", peer.ip());
        }
        if config.join == Join::Kick && !awake {
            let since = SystemTime::now();
            let by = format!("player {player} from {}", peer.ip());
            let text = match service.wake(&by).await {
                Ok(Ok(_)) => format!(
                    "{}\n{}",
                    config.kick_message,
                    describe_eta(eta(store, service, since))
                ),
                Ok(Err(denied)) => format!("§cThe server cannot start now: {denied}"),
                Err(gone) => format!("§c{gone}"),
            };
            info!(player, "Kicked while the service wakes.");
            return disconnect(reader, handshake.protocol, &text).await;
        }
        let ticket = match tokio::time::timeout(
            config.hold_timeout,
            service.connect_as(peer, Some(player.clone())),
        )
        .await {
            Ok(Ok(ticket)) => ticket,
            Ok(Err(e)) => {
                info!(player, error = %e, "Closing the player: no backend.");
                let text = format!("§cThe server could not start.\n§7{e}");
                return disconnect(reader, handshake.protocol, &text).await;
            }
            Err(_) => {
                info!(player, hold_timeout = %humantime::format_duration(config.hold_timeout), "The service was not ready in time; telling the player to come back.");
                let text = "§eThe server is still starting.\n§7Join again in a moment.";
                return disconnect(reader, handshake.protocol, text).await;
            }
        };
        info!(player, "Forwarding the player.");
        forward(reader, replay, ticket.address, Some(ticket.byte_counters())).await
    }
    .instrument(span)
    .await
}

/// Answers the status request and the ping of a server-list refresh.
async fn answer_status(
    reader: &mut FrameReader<TcpStream>,
    handshake: &Handshake,
    json: &str,
) -> Result<(), End> {
    loop {
        let frame = tokio::time::timeout(PACKET_TIMEOUT, reader.next_frame(MAX_LOGIN_FRAME))
            .await
            .map_err(|_| CodecError::Timeout(PACKET_TIMEOUT))??;
        match StatusRequest::parse(frame.body())? {
            StatusRequest::Status => {
                let out = Clientbound::StatusResponse { json }.encode(handshake.protocol)?;
                reader.get_mut().write_all(&out).await?;
            }
            StatusRequest::Ping(payload) => {
                let out = Clientbound::Pong(payload).encode(handshake.protocol)?;
                reader.get_mut().write_all(&out).await?;
                return Ok(());
            }
        }
    }
}

/// Ends a login with a message.
async fn disconnect(
    reader: &mut FrameReader<TcpStream>,
    protocol: Protocol,
    text: &str,
) -> Result<(), End> {
    let reason = json!({ "text": text });
    let out = Clientbound::LoginDisconnect { reason: &reason }.encode(protocol)?;
    let client = reader.get_mut();
    client.write_all(&out).await?;
    client.shutdown().await?;
    Ok(())
}

/// Connects to the backend, replays what the client sent so far, then copies both ways.
async fn forward(
    reader: &mut FrameReader<TcpStream>,
    mut replay: Vec<u8>,
    address: SocketAddr,
    counters: Option<(&AtomicU64, &AtomicU64)>,
) -> Result<(), End> {
    replay.extend_from_slice(reader.buffered());
    let mut backend = TcpStream::connect(address).await?;
    let _ = backend.set_nodelay(true);
    backend.write_all(&replay).await?;
    let uncounted = (AtomicU64::new(0), AtomicU64::new(0));
    let counters = counters.unwrap_or((&uncounted.0, &uncounted.1));
    let (up, down) = copy::bidirectional(reader.get_ref(), &backend, counters).await?;
    debug!(bytes_in = up, bytes_out = down, "Connection closed.");
    Ok(())
}

/// The expected time left in a wake that began at `since`, from the service's recent boots.
fn eta(store: &Store, service: &ServiceHandle, since: SystemTime) -> Option<Duration> {
    let mut durations = store.boot_durations(service.name(), 10).ok()?;
    durations.sort_unstable();
    let median = Duration::from_millis(*durations.get(durations.len() / 2)?);
    let elapsed = since.elapsed().unwrap_or_default();
    Some(median.saturating_sub(elapsed))
}

fn describe_eta(eta: Option<Duration>) -> String {
    match eta {
        Some(left) if left.as_secs() >= 1 => format!("§7ready in about {}s", left.as_secs()),
        Some(_) => "§7almost ready".to_string(),
        None => "§7starting".to_string(),
    }
}

/// The status JSON wakegate answers for a service that is not awake: no players, the
/// client's own protocol so the list shows the server as compatible.
fn status_json(handshake: &Handshake, version_name: Option<&str>, motd: &str) -> String {
    let value: Value = json!({
        "version": {
            "name": version_name.unwrap_or("wakegate"),
            "protocol": handshake.protocol.0,
        },
        "players": { "max": 0, "online": 0, "sample": [] },
        "description": { "text": motd },
    });
    value.to_string()
}
