//! `bedrock` listener: Minecraft Bedrock (RakNet over UDP). Unconnected pings never wake the
//! service and never start a session: while the server is not awake wakegate answers them
//! itself (`motd_asleep`, `motd_waking` with the time left, `motd_failed`; no players), and
//! once it is awake with the server's own pong, kept `ping_cache` long. A join (RakNet's first
//! open-connection request) starts a session (see `udp::session`) and, while the server is
//! not awake, a wake: the client's requests wait in the session's queue and reach the server
//! once it is up, so a join during a wake gets in if the boot fits the client's patience.

pub mod config;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::debug;

use self::config::Bedrock;
use super::access::AddressCheck;
use super::client::Front;
use super::udp::session::{Limits, MAX_DATAGRAM, Sessions};
use super::{Connections, Listening};
use crate::bedrock::{self, Advert, Offline, Pong};
use crate::event::State;
use crate::metrics::Refusal;
use crate::service::ServiceHandle;

/// Pings waiting for the server's pong at most; the rest are not answered.
const MAX_WAITING: usize = 256;
/// How long the server has to answer wakegate's ping before the waiting pings get
/// wakegate's own pong.
const SERVER_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What the pings of one socket share.
struct Pings {
    socket: Arc<UdpSocket>,
    service: ServiceHandle,
    config: Bedrock,
    /// wakegate's GUID on this socket, the same across restarts (from the service and bind).
    guid: u64,
    // A std Mutex: a few fields read and written per ping, never across an await.
    state: Mutex<PongState>,
    connections: Connections,
}

#[derive(Default)]
struct PongState {
    /// The server's last pong, and when it came.
    last: Option<(Instant, Pong)>,
    /// Pings waiting for the server's pong: who, and the time to echo.
    waiting: Vec<(SocketAddr, u64)>,
    refreshing: bool,
}

/// Receives datagrams until `connections.stop_accepting` fires.
pub async fn run(
    socket: UdpSocket,
    service: ServiceHandle,
    connections: Connections,
    config: Bedrock,
) {
    let bind = socket.local_addr().unwrap_or(config.bind);
    let socket = Arc::new(socket);
    let listening = Listening::new("bedrock", bind, 0, Front::default(), &connections.metrics);
    let limits = Limits {
        idle: config.session_idle,
        max_sessions: config.max_sessions,
        queue: config.queue,
        backend_port: config.backend_port,
    };
    let sessions = Sessions::new(
        socket.clone(),
        service.clone(),
        listening.clone(),
        AddressCheck::new(&config.rules),
        connections.clone(),
        limits,
    );
    let pings = Arc::new(Pings {
        socket: socket.clone(),
        guid: stable_guid(service.name(), config.bind),
        service,
        config,
        state: Mutex::new(PongState::default()),
        connections: connections.clone(),
    });
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = connections.stop_accepting.cancelled() => break,
            received = socket.recv_from(&mut buf) => received,
        };
        let (n, peer) = match received {
            Ok(received) => received,
            Err(e) => {
                debug!(error = %e, "Cannot receive a datagram.");
                continue;
            }
        };
        let data = &buf[..n];
        match bedrock::parse(data) {
            Ok(Offline::Ping { time, .. }) => match sessions.denied(peer.ip()) {
                None => pings.answer(peer, time).await,
                // A denied address's server list shows the server offline.
                Some(denied) => listening
                    .refusals
                    .refuse(Refusal::Denied, format_args!("ping from {peer}: {denied}")),
            },
            Ok(Offline::OpenRequest1 { .. }) => {
                sessions.deliver(peer, Bytes::copy_from_slice(data), true);
            }
            // A message of the join that does not start one, or a connected datagram: only a
            // session in place takes it.
            Err(bedrock::Error::Other(_)) => {
                sessions.deliver(peer, Bytes::copy_from_slice(data), false);
            }
            Err(e) => listening
                .refusals
                .refuse(Refusal::Malformed, format_args!("{peer}: {e}")),
        }
    }
}

impl Pings {
    /// Answers a ping: with the server's pong while it is awake, else with wakegate's own.
    async fn answer(self: &Arc<Self>, peer: SocketAddr, time: u64) {
        let status = self.service.status();
        if status.state != State::Awake {
            let pong = self.own_pong(time, &status);
            self.send(&pong, peer).await;
            return;
        }
        let cached = {
            let mut state = self.state.lock().unwrap();
            match &state.last {
                Some((at, pong)) if at.elapsed() < self.config.ping_cache => {
                    Some(pong.for_ping(time))
                }
                _ => {
                    if state.waiting.len() < MAX_WAITING {
                        state.waiting.push((peer, time));
                    }
                    if !std::mem::replace(&mut state.refreshing, true) {
                        let pings = self.clone();
                        self.connections
                            .tracker
                            .spawn(async move { pings.refresh().await });
                    }
                    None
                }
            }
        };
        if let Some(pong) = cached {
            self.send(&pong, peer).await;
        }
    }

    /// Asks the server for its pong, and answers the pings waiting for it.
    async fn refresh(&self) {
        let port = self.socket.local_addr().map_or(0, |a| a.port()).to_string();
        let answer = match self.service.status().address {
            Some(mut address) => {
                if let Some(port) = self.config.backend_port {
                    address.set_port(port);
                }
                tokio::time::timeout(
                    SERVER_PING_TIMEOUT,
                    bedrock::ping::status(address, Duration::from_millis(500)),
                )
                .await
                .ok()
                .and_then(Result::ok)
                // Clients connect to the port a pong names: wakegate's, not the server's.
                .map(|mut pong| {
                    pong.advert.port_v4 = port.clone();
                    pong.advert.port_v6 = port;
                    pong
                })
            }
            None => None,
        };
        let waiting = {
            let mut state = self.state.lock().unwrap();
            state.refreshing = false;
            if let Some(pong) = &answer {
                state.last = Some((Instant::now(), pong.clone()));
            }
            std::mem::take(&mut state.waiting)
        };
        let status = self.service.status();
        for (peer, time) in waiting {
            let pong = match &answer {
                Some(pong) => pong.for_ping(time),
                None => self.own_pong(time, &status),
            };
            self.send(&pong, peer).await;
        }
    }

    /// wakegate's pong for the service's state: its MOTD, no players, and the protocol,
    /// version and maximum the server last gave (the configured ones before it has).
    fn own_pong(&self, time: u64, status: &crate::service::Status) -> Pong {
        let c = &self.config;
        let known = self
            .state
            .lock()
            .unwrap()
            .last
            .as_ref()
            .map(|(_, p)| p.advert.clone());
        let eta = describe_eta(status.state, status.eta());
        let motd = match status.state {
            State::Failed => c.motd_failed.clone(),
            State::Waking | State::Awake => c.motd_waking.replace("{eta}", &eta),
            State::Asleep | State::Stopping => c.motd_asleep.clone(),
        };
        let level = match status.state {
            State::Waking | State::Awake => format!("ready in {eta}"),
            _ => String::new(),
        };
        let port = self.socket.local_addr().map_or(0, |a| a.port()).to_string();
        let advert = Advert {
            edition: "MCPE".into(),
            motd,
            protocol: known.as_ref().map_or(c.protocol, |k| k.protocol),
            version: known
                .as_ref()
                .map_or(c.version.clone(), |k| k.version.clone()),
            online: 0,
            max: known.as_ref().map_or(c.max_players, |k| k.max),
            server_id: self.guid.to_string(),
            level,
            game_mode: "Survival".into(),
            game_mode_number: "1".into(),
            port_v4: port.clone(),
            port_v6: port,
            rest: Vec::new(),
        };
        Pong {
            time,
            server: self.guid,
            advert,
        }
    }

    async fn send(&self, pong: &Pong, peer: SocketAddr) {
        if let Err(e) = self.socket.send_to(&pong.encode(), peer).await {
            debug!(error = %e, "Cannot answer a ping.");
        }
    }
}

/// The time left of a wake, as the server list shows it.
fn describe_eta(state: State, eta: Option<Duration>) -> String {
    match (state, eta) {
        (State::Waking, Some(left)) if left.as_secs() >= 1 => format!("about {}s", left.as_secs()),
        (State::Waking, Some(_)) | (State::Awake, _) => "a moment".to_string(),
        _ => "a minute or so".to_string(),
    }
}

/// A GUID that stays the same for a service on a bind, across restarts (FNV-1a).
fn stable_guid(service: &str, bind: SocketAddr) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in service.bytes().chain(bind.to_string().bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guid_is_stable_and_differs_per_service() {
        let bind = SocketAddr::from(([0, 0, 0, 0], 19132));
        assert_eq!(stable_guid("mc", bind), stable_guid("mc", bind));
        assert_ne!(stable_guid("mc", bind), stable_guid("other", bind));
    }

    #[test]
    fn the_time_left_reads_as_the_server_list_shows_it() {
        let left = Some(Duration::from_secs(12));
        assert_eq!(describe_eta(State::Waking, left), "about 12s");
        assert_eq!(
            describe_eta(State::Waking, Some(Duration::ZERO)),
            "a moment"
        );
        assert_eq!(describe_eta(State::Waking, None), "a minute or so");
    }
}
