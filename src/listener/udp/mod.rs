//! `udp` listener: datagrams from each client address form a session ([`session`]) with its
//! own socket to the backend. The first datagram of a session wakes the service (with
//! `wake_on`, only one that starts with the given bytes: stray datagrams and scans never do);
//! while the backend wakes the session's datagrams wait in a bounded queue and go out in order
//! once it is ready. A session counts as an open connection until `session_idle` passes
//! without a datagram.

pub mod config;
pub mod session;

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tracing::debug;

use self::config::Udp;
use self::session::{Limits, MAX_DATAGRAM, Sessions};
use super::access::AddressCheck;
use super::client::Front;
use super::{Connections, Listening};
use crate::event::State;
use crate::service::ServiceHandle;

/// Receives datagrams until `connections.stop_accepting` fires; the sessions live on until
/// they go idle or `connections.close_all` fires.
pub async fn run(socket: UdpSocket, service: ServiceHandle, connections: Connections, config: Udp) {
    let bind = socket.local_addr().unwrap_or(config.bind);
    let socket = Arc::new(socket);
    let listening = Listening::new("udp", bind, 0, Front::default(), &connections.metrics);
    let limits = Limits {
        idle: config.session_idle,
        max_sessions: config.max_sessions,
        queue: config.queue,
        backend_port: config.backend_port,
    };
    let sessions = Sessions::new(
        socket.clone(),
        service,
        listening,
        AddressCheck::new(&config.rules),
        connections.clone(),
        limits,
    );
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            () = connections.stop_accepting.cancelled() => break,
            received = socket.recv_from(&mut buf) => received,
        };
        match received {
            Ok((n, peer)) => {
                let data = Bytes::copy_from_slice(&buf[..n]);
                let may_start = match &config.wake_on {
                    None => true,
                    Some(prefix) => {
                        data.starts_with(prefix) || sessions.service().state() == State::Awake
                    }
                };
                sessions.deliver(peer, data, may_start);
            }
            // An ICMP error from an earlier reply (the client's port closed), and the like.
            Err(e) => debug!(error = %e, "Cannot receive a datagram."),
        }
    }
    // Open sessions still answer their clients through the socket until they end.
    drop(sessions);
}
