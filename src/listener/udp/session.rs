//! Sessions of a UDP socket: the datagrams of one client address go through a socket of their
//! own to the backend, so that the backend's replies find their way back. A session holds a
//! [`Ticket`] while it lives (one open connection to the service's activity), keeps its client's
//! datagrams in a bounded queue while the backend wakes, and ends after `idle` without a
//! datagram either way. Shared by the `udp` and `bedrock` listeners.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use super::super::access::AddressCheck;
use super::super::{Connections, Listening};
use crate::event::State;
use crate::metrics::Refusal;
use crate::service::{ServiceHandle, Ticket};

/// The largest datagram relayed (IPv4's own limit; anything larger never arrives).
pub const MAX_DATAGRAM: usize = 65_535;

/// How the sessions of one socket behave.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A session ends after this long without a datagram either way.
    pub idle: Duration,
    /// Live sessions at most.
    pub max_sessions: u32,
    /// Datagrams a session keeps while the backend wakes.
    pub queue: usize,
    /// The backend's port for these datagrams, when not the service address's.
    pub backend_port: Option<u16>,
}

/// The sessions of one bound UDP socket.
pub struct Sessions {
    front: Arc<UdpSocket>,
    service: ServiceHandle,
    pub listening: Arc<Listening>,
    check: AddressCheck,
    connections: Connections,
    limits: Limits,
    // A std Mutex: one lookup per datagram, never held across an await.
    live: Mutex<HashMap<SocketAddr, Entry>>,
    next_id: AtomicU64,
}

struct Entry {
    id: u64,
    queue: mpsc::Sender<Bytes>,
}

impl Sessions {
    pub fn new(
        front: Arc<UdpSocket>,
        service: ServiceHandle,
        listening: Arc<Listening>,
        check: AddressCheck,
        connections: Connections,
        limits: Limits,
    ) -> Arc<Sessions> {
        Arc::new(Sessions {
            front,
            service,
            listening,
            check,
            connections,
            limits,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// The service behind the socket.
    pub fn service(&self) -> &ServiceHandle {
        &self.service
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.live.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why a client from `ip` may not use the service, if it may not.
    pub fn denied(&self, ip: IpAddr) -> Option<String> {
        self.check.denied(ip)
    }

    /// Hands a datagram from `peer` to its session, starting one if there is none and the
    /// datagram `may_start` one (and so a wake, while the service is not awake).
    pub fn deliver(self: &Arc<Self>, peer: SocketAddr, data: Bytes, may_start: bool) {
        let refusals = &self.listening.refusals;
        let mut live = self.live.lock().unwrap();
        let data = match live.get(&peer) {
            Some(entry) => match entry.queue.try_send(data) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return refusals.refuse(Refusal::QueueFull, format_args!("from {peer}"));
                }
                // The session ended a moment ago: this datagram starts the next.
                Err(mpsc::error::TrySendError::Closed(data)) => {
                    live.remove(&peer);
                    data
                }
            },
            None => data,
        };
        if let Some(denied) = self.check.denied(peer.ip()) {
            let why = format_args!("{peer} for {}: {denied}", self.service.name());
            return refusals.refuse(Refusal::Denied, why);
        }
        if !may_start {
            let why = format_args!("{peer} for {}", self.service.name());
            return refusals.refuse(Refusal::NoWake, why);
        }
        if live.len() >= self.limits.max_sessions as usize {
            let why = format_args!("{peer}: {} sessions live", live.len());
            return refusals.refuse(Refusal::MaxSessions, why);
        }
        let Some(slot) = self.listening.admit(peer.ip()) else {
            return refusals.refuse(Refusal::PerAddressCap, peer);
        };
        let (tx, rx) = mpsc::channel(self.limits.queue);
        let _ = tx.try_send(data);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        live.insert(peer, Entry { id, queue: tx });
        drop(live);
        let sessions = self.clone();
        let span = info_span!("session", service = self.service.name(), peer = %peer);
        self.connections.tracker.spawn(
            async move {
                sessions.run(peer, rx).await;
                sessions.end(peer, id);
                drop(slot);
            }
            .instrument(span),
        );
    }

    /// Forgets session `id` of `peer`, unless a newer one took its place.
    fn end(&self, peer: SocketAddr, id: u64) {
        let mut live = self.live.lock().unwrap();
        if live.get(&peer).is_some_and(|e| e.id == id) {
            live.remove(&peer);
        }
    }

    /// One session: a ticket (waiting out a wake, the datagrams queued meanwhile), a socket to
    /// the backend, then datagrams both ways until `idle` passes without one.
    async fn run(&self, peer: SocketAddr, mut queue: mpsc::Receiver<Bytes>) {
        let refusals = &self.listening.refusals;
        let close_all = &self.connections.close_all;
        let ticket = match self.ticket(peer).await {
            Ok(ticket) => ticket,
            Err(Some((reason, why))) => return refusals.refuse(reason, why),
            Err(None) => return,
        };
        let mut backend = ticket.address;
        if let Some(port) = self.limits.backend_port {
            backend.set_port(port);
        }
        let upstream = match connect(backend).await {
            Ok(socket) => socket,
            Err(e) => {
                warn!(backend = %backend, error = %e, "Cannot open a UDP socket to the backend; ending the session.");
                return;
            }
        };
        debug!(backend = %backend, "Session started.");
        let (up, down) = ticket.byte_counters();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let idle = tokio::time::sleep(self.limits.idle);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                datagram = queue.recv() => {
                    let Some(datagram) = datagram else { break };
                    if let Err(e) = upstream.send(&datagram).await {
                        // ECONNREFUSED from an earlier send: the backend's port is closed now.
                        debug!(error = %e, "Cannot send to the backend.");
                        continue;
                    }
                    up.fetch_add(datagram.len() as u64, Ordering::Relaxed);
                }
                received = upstream.recv(&mut buf) => match received {
                    Ok(n) => {
                        if let Err(e) = self.front.send_to(&buf[..n], peer).await {
                            debug!(error = %e, "Cannot send to the client.");
                        }
                        down.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => {
                        debug!(error = %e, "Cannot receive from the backend.");
                        continue;
                    }
                },
                () = &mut idle => {
                    debug!("Session ended: idle.");
                    break;
                }
                () = close_all.cancelled() => break,
            }
            idle.as_mut().reset(Instant::now() + self.limits.idle);
        }
        drop(ticket);
    }

    /// The session's ticket: at once while the service is awake, else once it has woken,
    /// within the wake rate of the client's address.
    async fn ticket(&self, peer: SocketAddr) -> Result<Ticket, Option<(Refusal, String)>> {
        let service = &self.service;
        if let Some(ticket) = service.ticket_if_awake() {
            return Ok(ticket);
        }
        // A client that joins a wake under way starts none.
        if service.state() != State::Waking
            && let Err(refused) = self.check.wake(peer.ip())
        {
            let why = format!("{peer} for {}: {refused}", service.name());
            return Err(Some((Refusal::RateLimited, why)));
        }
        let ticket = tokio::select! {
            ticket = service.connect(peer) => ticket,
            () = self.connections.close_all.cancelled() => return Err(None),
        };
        ticket.map_err(|e| {
            Some((
                Refusal::Unavailable,
                format!("{peer} for {}: {e}", service.name()),
            ))
        })
    }
}

/// A socket of its own, connected to `backend`: the backend's replies are this session's.
pub async fn connect(backend: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = if backend.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(backend).await?;
    Ok(socket)
}
