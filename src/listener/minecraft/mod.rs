//! `minecraft` listener: reads the Java edition handshake, routes by its hostname, answers the
//! server list itself while the service is not awake (a status ping never wakes it), wakes it
//! on a login and holds or kicks the player, and forwards transparently once it is awake,
//! replaying the bytes already read.

pub mod access;
pub mod config;
mod configuration;
mod handoff;
mod legacy;
pub mod status;
mod transfer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, field, info, info_span};

use self::access::Who;
use self::config::{Join, Minecraft};
use self::status::StatusCache;
use super::access::RateLimiter;
use super::client::Front;
use super::route::{self, Named};
use super::{Client, Connections, Listening, copy};
use crate::event::{Kind, State};
use crate::metrics::Refusal;
use crate::minecraft::ping::{self, PingError};
use crate::minecraft::{
    self, Clientbound, CodecError, Frame, FrameReader, Handshake, Intent, LoginStart,
    MAX_LOGIN_FRAME, Protocol, StatusRequest, proxy_header,
};
use crate::service::ServiceHandle;

/// How long the backend has to answer a status ping asked for the status cache.
const BACKEND_STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// One service reachable through a shared socket, with its listener entry.
pub struct Route {
    pub service: ServiceHandle,
    pub config: Minecraft,
}

/// A route and what it keeps between connections.
pub struct Entry {
    service: ServiceHandle,
    config: Minecraft,
    limiter: Option<RateLimiter>,
    cache: Option<StatusCache>,
    handoff: Option<handoff::Handoffs>,
}

impl Named for Entry {
    fn hostnames(&self) -> &[String] {
        &self.config.hostnames
    }
    fn is_default(&self) -> bool {
        self.config.default
    }
}

impl Route {
    /// The entry of a routing table.
    pub fn entry(self) -> Entry {
        Entry {
            limiter: self.config.wake_rate.map(RateLimiter::new),
            cache: self.config.status_cache.map(StatusCache::new),
            handoff: self.config.handoff.clone().map(handoff::Handoffs::new),
            service: self.service,
            config: self.config,
        }
    }
}

impl Entry {
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }
}

/// The services behind one socket, found by hostname. A lone service takes every hostname.
pub fn routes(routes: Vec<Route>) -> Arc<Table> {
    let entries = routes.into_iter().map(Route::entry).collect();
    Arc::new(route::Table::new(route::Routes::new(entries, true)))
}

/// The services behind one socket, which services created from templates join and leave.
pub type Table = route::Table<Entry>;

/// What every connection of one socket shares.
struct Socket {
    routes: Arc<Table>,
    listening: Arc<Listening>,
    /// The most generous `head_timeout` of the entries: for the handshake, before a route is
    /// known.
    head_timeout: Duration,
}

/// Accepts clients until `connections.stop_accepting` fires.
pub async fn run(listener: TcpListener, routes: Arc<Table>, connections: Connections) {
    let bind = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    // From the entries at start; those that join later share these.
    let first = routes.load();
    let cap =
        super::admission::shared_cap(first.iter().map(|e| e.config.max_connections_per_address));
    let head_timeout = first
        .iter()
        .map(|e| e.config.head_timeout)
        .max()
        .unwrap_or(config::DEFAULT_HEAD_TIMEOUT);
    let trusted = first.iter().map(|e| e.config.trusted_proxies.as_slice());
    let front = Front::joined(trusted, head_timeout, true);
    let listening = Listening::new("minecraft", bind, cap, front, &connections.metrics);
    let socket = Arc::new(Socket {
        routes,
        listening: listening.clone(),
        head_timeout,
    });
    let conns = connections.clone();
    super::accept(&listener, &listening, &connections, move |client| {
        let span = info_span!("minecraft", peer = %client.addr, via = field::Empty);
        client.record_via(&span);
        serve(client, socket.clone(), conns.clone()).instrument(span)
    })
    .await;
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

async fn serve(client: Client, socket: Arc<Socket>, connections: Connections) {
    let peer = client.addr;
    let mut reader = FrameReader::with_buffered(client.stream, client.early);
    let ended = tokio::select! {
        ended = talk(&mut reader, peer, &socket) => ended,
        () = connections.close_all.cancelled() => Err(End::Shutdown),
    };
    let refusals = &socket.listening.refusals;
    match ended {
        Ok(()) => {}
        Err(End::Client(CodecError::Closed { buffered: 0 })) => {
            debug!("The client closed the connection.");
        }
        Err(End::Client(e @ CodecError::Timeout(_))) => {
            refusals.refuse(Refusal::HeadTimeout, format_args!("{peer}: {e}"));
        }
        Err(End::Client(e)) => refusals.refuse(Refusal::Malformed, format_args!("{peer}: {e}")),
        Err(End::Io(e)) => debug!(error = %e, "Connection ended with an error."),
        Err(End::Shutdown) => debug!("Closing the connection: wakegate is shutting down."),
    }
}

async fn talk(
    reader: &mut FrameReader<TcpStream>,
    peer: SocketAddr,
    socket: &Socket,
) -> Result<(), End> {
    let (handshake, frame) = match minecraft::read_handshake(reader, socket.head_timeout).await {
        Err(CodecError::LegacyPing) => return legacy::answer(reader, peer, socket).await,
        read => read?,
    };
    let hostname = handshake.address.hostname().to_owned();
    let routes = socket.routes.load();
    let Some((_, route)) = routes.find(&hostname) else {
        let why = format!("{peer} asked for `{hostname}`");
        socket.listening.refusals.refuse(Refusal::UnknownHost, why);
        let text = format!("§cunknown server `{hostname}`");
        return match handshake.intent {
            Intent::Status => {
                let entry = status::Entry {
                    version_name: "wakegate",
                    motd: json!({ "text": text }),
                    sample: &[],
                    icon: None,
                };
                let json = status::status_json(handshake.protocol.0, &entry);
                answer_status(reader, &handshake, &json, socket.head_timeout).await
            }
            Intent::Login | Intent::Transfer => disconnect(reader, handshake.protocol, &text).await,
        };
    };
    let span = info_span!("route", service = route.service.name(), hostname);
    let visit = Visit {
        peer,
        handshake,
        route,
        listening: &socket.listening,
    };
    visit.run(reader, frame).instrument(span).await
}

/// One client of one route, after its handshake.
struct Visit<'a> {
    peer: SocketAddr,
    handshake: Handshake,
    route: &'a Entry,
    listening: &'a Listening,
}

impl Visit<'_> {
    async fn run(self, reader: &mut FrameReader<TcpStream>, frame: Frame) -> Result<(), End> {
        let (service, config) = (&self.route.service, &self.route.config);
        // A transfer is forwarded as a login, so the backend needs no `accepts-transfers`.
        let mut replay = match self.handshake.intent {
            Intent::Transfer => Handshake {
                intent: Intent::Login,
                ..self.handshake.clone()
            }
            .encode()?,
            _ => frame.into_raw(),
        };
        if self.handshake.intent == Intent::Status {
            return self.status(reader, replay).await;
        }

        let timeout = config.head_timeout;
        let login = tokio::time::timeout(timeout, reader.next_frame(MAX_LOGIN_FRAME))
            .await
            .map_err(|_| CodecError::Timeout(timeout))??;
        let start = LoginStart::parse(login.body(), self.handshake.protocol)?;
        let player = start.name.clone();
        replay.extend_from_slice(login.raw());
        let status = service.status();
        if status.state != State::Awake {
            // What comes of it is logged (held, kicked, transferred) or, for refusals, counted
            // and logged at a rate limit: a flood of logins does not write a line each.
            debug!(player, client = %self.peer.ip(), "Player {player} from {} asks to join.", self.peer.ip());
            if let Some(text) = self.refusal(&start).await {
                return disconnect(reader, self.handshake.protocol, &text).await;
            }
            let since = match status.state {
                State::Waking => status.since,
                _ => SystemTime::now(),
            };
            let left = eta(service, since);
            let protocol = self.handshake.protocol;
            match choose(&config.join, protocol, left, config.hold_timeout) {
                Join::Kick => return self.kick(reader, &player).await,
                Join::Transfer => return self.transfer(reader, &start).await,
                Join::Hold => {
                    let detail = json!({ "strategy": "hold" });
                    let reason = "held until the server is ready".to_string();
                    self.note(&player, "held", reason, detail).await;
                }
            }
        }
        let ticket = match tokio::time::timeout(
            config.hold_timeout,
            service.connect_as(self.peer, Some(player.clone())),
        )
        .await
        {
            Ok(Ok(ticket)) => ticket,
            Ok(Err(e)) => {
                let why = format!("player {player} from {}: no backend: {e}", self.peer);
                self.listening.refusals.refuse(Refusal::Unavailable, why);
                let text = format!("§cThe server could not start.\n§7{e}");
                return disconnect(reader, self.handshake.protocol, &text).await;
            }
            Err(_) => {
                let held = humantime::format_duration(config.hold_timeout);
                self.note(
                    &player,
                    "kicked",
                    format!("kicked: the server was not ready within hold_timeout ({held})"),
                    json!({ "strategy": "hold" }),
                )
                .await;
                let text = "§eThe server is still starting.\n§7Join again in a moment.";
                return disconnect(reader, self.handshake.protocol, text).await;
            }
        };
        let Some(ticket) = self.hand_off(reader, &start, ticket).await? else {
            return Ok(());
        };
        info!(player, "Forwarding the player.");
        let header = self.proxy_header(reader);
        forward(
            reader,
            replay,
            header,
            ticket.address,
            Some(ticket.byte_counters()),
        )
        .await
    }

    /// Why this player may not wake the service (the message to disconnect them with), after
    /// recording it: not allowed, denied, or over the wake rate of their address.
    async fn refusal(&self, start: &LoginStart) -> Option<String> {
        let config = &self.route.config;
        let player = start.name.as_str();
        let who = Who {
            name: player,
            uuid: start.uuid,
            ip: self.peer.ip(),
        };
        if let Some(why) = config.access.refuse(|s| s.matches(&who)) {
            let detail = json!({ "why": why });
            let text = format!("player {player} from {}: {why}", self.peer);
            self.listening.refusals.refuse(Refusal::Denied, text);
            self.record(player, "denied", format!("denied: {why}"), detail)
                .await;
            return Some(format!("§cYou may not start this server:\n§7{why}."));
        }
        let limiter = self.route.limiter.as_ref()?;
        let limited = limiter.attempt(self.peer.ip()).err()?;
        let wait = Duration::from_secs(limited.retry_after.as_secs().max(1));
        let why = format!("over the wake rate of {} per address", limiter.rate());
        let text = format!("player {player} from {}: {why}", self.peer);
        self.listening.refusals.refuse(Refusal::RateLimited, text);
        if limited.first {
            let detail = json!({ "why": why, "retry_after_s": wait.as_secs() });
            self.record(player, "denied", format!("denied: {why}"), detail)
                .await;
        }
        Some(format!(
            "§eToo many attempts to start the server from your address.\n§7Try again in {}.",
            humantime::format_duration(wait)
        ))
    }

    /// Finishes the login, keeps the client waiting in the configuration phase while the
    /// service wakes, then transfers it back to this gateway.
    async fn transfer(
        self,
        reader: &mut FrameReader<TcpStream>,
        start: &LoginStart,
    ) -> Result<(), End> {
        let config = &self.route.config;
        let player = start.name.as_str();
        let gateway = config
            .public_address
            .as_ref()
            .map(|(h, p)| (h.as_str(), *p));
        let back = match &self.route.handoff {
            Some(handoffs) => transfer::Back::Backend {
                handoffs,
                fallback: gateway,
            },
            None => {
                let (host, port) = gateway.unwrap_or_default();
                transfer::Back::Gateway { host, port }
            }
        };
        let reason = "held in the configuration phase until the server is ready".to_string();
        self.note(player, "held", reason, json!({ "strategy": "transfer" }))
            .await;
        let waiting = transfer::Waiting {
            reader,
            protocol: self.handshake.protocol,
            peer: self.peer,
            service: &self.route.service,
            login: start,
        };
        match waiting.run(back).await? {
            transfer::Outcome::HandedOff(to) => {
                let detail = json!({ "to": to, "strategy": "transfer" });
                let reason = format!("handed to the server at {to}");
                self.note(player, "handed_off", reason, detail).await;
            }
            transfer::Outcome::Rejoin(e) => {
                let detail = json!({ "why": e, "strategy": "transfer" });
                let reason = format!("asked to join again: {e}");
                self.note(player, "kicked", reason, detail).await;
            }
            transfer::Outcome::Transferred(to) => {
                let detail = json!({ "to": to });
                self.note(
                    player,
                    "transferred",
                    format!("transferred to {to}"),
                    detail,
                )
                .await;
            }
            transfer::Outcome::Failed(e) => {
                let detail = json!({ "why": e, "strategy": "transfer" });
                self.note(player, "kicked", format!("kicked: {e}"), detail)
                    .await;
            }
        }
        Ok(())
    }

    /// A server-list ping: the backend's answer while awake, wakegate's own otherwise.
    async fn status(self, reader: &mut FrameReader<TcpStream>, replay: Vec<u8>) -> Result<(), End> {
        let (service, config) = (&self.route.service, &self.route.config);
        let status = service.status();
        if let (State::Awake, Some(address)) = (status.state, status.address) {
            let Some(cache) = &self.route.cache else {
                // Not a ticket: a server-list refresh must not count as activity.
                let header = self.proxy_header(reader);
                return forward(reader, replay, header, address, None).await;
            };
            let protocol = self.handshake.protocol.0;
            let json = match cache.get(protocol) {
                Some(json) => json,
                None => {
                    let header = self.proxy_header(reader).unwrap_or_default();
                    let ping = ping::status(address, &self.handshake, &header);
                    let json = tokio::time::timeout(BACKEND_STATUS_TIMEOUT, ping)
                        .await
                        .unwrap_or(Err(PingError::Timeout(BACKEND_STATUS_TIMEOUT)))
                        .map_err(|e| std::io::Error::other(format!("the backend's status: {e}")))?;
                    cache.put(protocol, json.clone());
                    json
                }
            };
            return answer_status(reader, &self.handshake, &json, config.head_timeout).await;
        }
        if let Some(cache) = &self.route.cache {
            cache.clear();
        }
        service
            .metrics()
            .status_pings
            .fetch_add(1, Ordering::Relaxed);
        let entry = status::Entry {
            version_name: &config.version_name,
            motd: motd(self.route, &status),
            sample: &config.player_sample,
            icon: config.icon.as_deref(),
        };
        let json = status::status_json(self.handshake.protocol.0, &entry);
        answer_status(reader, &self.handshake, &json, config.head_timeout).await
    }

    /// Starts the wake and sends the player away with the expected time left.
    async fn kick(self, reader: &mut FrameReader<TcpStream>, player: &str) -> Result<(), End> {
        let (service, config) = (&self.route.service, &self.route.config);
        let since = SystemTime::now();
        let by = format!("player {player} from {}", self.peer.ip());
        let text = match service.wake(&by).await {
            Ok(Ok(_)) => format!(
                "{}\n{}",
                config.kick_message,
                describe_eta(eta(service, since))
            ),
            Ok(Err(denied)) => format!("§cThe server cannot start now: {denied}"),
            Err(gone) => format!("§c{gone}"),
        };
        let left = eta(service, since).map(|d| d.as_secs());
        self.note(
            player,
            "kicked",
            "kicked while the server wakes".into(),
            json!({ "strategy": "kick", "eta_s": left }),
        )
        .await;
        disconnect(reader, self.handshake.protocol, &text).await
    }

    /// A PROXY protocol v2 header for the backend, when the route asks for one.
    fn proxy_header(&self, reader: &FrameReader<TcpStream>) -> Option<Vec<u8>> {
        if !self.route.config.proxy_protocol {
            return None;
        }
        let local = reader.get_ref().local_addr().ok()?;
        Some(proxy_header::v2(self.peer, local))
    }

    /// Logs what happened to a player and records it as an event of the service.
    async fn note(&self, player: &str, what: &str, reason: String, detail: serde_json::Value) {
        info!(player, what, "{reason}");
        self.record(player, what, reason, detail).await;
    }

    /// Records what happened to a player as an event of the service (no log line: refusals
    /// are logged at a rate limit).
    async fn record(
        &self,
        player: &str,
        what: &str,
        reason: String,
        mut detail: serde_json::Value,
    ) {
        detail["player"] = json!(player);
        detail["client"] = json!(self.peer.to_string());
        detail["what"] = json!(what);
        let text = format!("player {player} from {} {reason}", self.peer.ip());
        let _ = self.route.service.note(Kind::Player, text, detail).await;
    }
}

/// The first strategy in `join` that fits: transfer if the client can follow a Transfer
/// packet, hold if the expected wait (when known) fits `hold_timeout`, kick. When none fits,
/// the last one the client can do.
fn choose(
    join: &[Join],
    protocol: Protocol,
    eta: Option<Duration>,
    hold_timeout: Duration,
) -> Join {
    let can_transfer = protocol.supports_transfer();
    for &strategy in join {
        match strategy {
            Join::Transfer if can_transfer => return strategy,
            Join::Hold if eta.is_none_or(|left| left <= hold_timeout) => return strategy,
            Join::Kick => return strategy,
            _ => {}
        }
    }
    join.iter()
        .rev()
        .copied()
        .find(|s| *s != Join::Transfer || can_transfer)
        .unwrap_or(Join::Hold)
}

/// The MOTD wakegate shows for a service that is not awake.
fn motd(route: &Entry, status: &crate::service::Status) -> serde_json::Value {
    let config = &route.config;
    match status.state {
        State::Waking => {
            let left = eta(&route.service, status.since);
            config.motd_waking.with_line(&describe_eta(left))
        }
        State::Failed => config.motd_failed.component(),
        _ => config.motd_asleep.component(),
    }
}

/// Answers the status request and the ping of a server-list refresh, each within `timeout`.
async fn answer_status(
    reader: &mut FrameReader<TcpStream>,
    handshake: &Handshake,
    json: &str,
    timeout: Duration,
) -> Result<(), End> {
    loop {
        let frame = tokio::time::timeout(timeout, reader.next_frame(MAX_LOGIN_FRAME))
            .await
            .map_err(|_| CodecError::Timeout(timeout))??;
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
    replay: Vec<u8>,
    header: Option<Vec<u8>>,
    address: SocketAddr,
    counters: Option<(&AtomicU64, &AtomicU64)>,
) -> Result<(), End> {
    let mut first = header.unwrap_or_default();
    first.extend_from_slice(&replay);
    first.extend_from_slice(reader.buffered());
    let mut backend = TcpStream::connect(address).await?;
    let _ = backend.set_nodelay(true);
    backend.write_all(&first).await?;
    let uncounted = (AtomicU64::new(0), AtomicU64::new(0));
    let counters = counters.unwrap_or((&uncounted.0, &uncounted.1));
    let (up, down) = copy::bidirectional(reader.get_ref(), &backend, counters).await?;
    debug!(bytes_in = up, bytes_out = down, "Connection closed.");
    Ok(())
}

/// The expected time left in a wake that began at `since`, from the boot time the service
/// expects.
fn eta(service: &ServiceHandle, since: SystemTime) -> Option<Duration> {
    let expected = service.status().expected_boot?;
    let elapsed = since.elapsed().unwrap_or_default();
    Some(expected.saturating_sub(elapsed))
}

fn describe_eta(eta: Option<Duration>) -> String {
    match eta {
        Some(left) if left.as_secs() >= 1 => format!("§7ready in about {}s", left.as_secs()),
        Some(_) => "§7almost ready".to_string(),
        None => "§7starting".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_strategy_that_fits_is_chosen() {
        let all = [Join::Transfer, Join::Hold, Join::Kick];
        let hold = Duration::from_secs(25);
        let (new, old) = (Protocol(767), Protocol(754));
        let (short, long) = (Some(Duration::from_secs(10)), Some(Duration::from_secs(90)));
        assert_eq!(choose(&all, new, long, hold), Join::Transfer);
        assert_eq!(choose(&all, old, short, hold), Join::Hold);
        // No boot measured yet: holding is worth a try.
        assert_eq!(choose(&all, old, None, hold), Join::Hold);
        assert_eq!(choose(&all, old, long, hold), Join::Kick);
        assert_eq!(
            choose(&[Join::Hold, Join::Transfer], new, short, hold),
            Join::Hold
        );
        // Nothing fits: the last strategy the client can do.
        assert_eq!(choose(&[Join::Transfer], old, long, hold), Join::Hold);
        assert_eq!(
            choose(&[Join::Transfer, Join::Hold], old, long, hold),
            Join::Hold
        );
    }
}
