//! Listeners: where clients arrive. One accept loop per bound socket ([`accept`]); each client
//! gets its own task on the connections tracker, where it becomes a [`Client`] (the PROXY
//! header of a trusted proxy read) and the socket's [`Listening`] admits it (the per-address
//! cap). Listeners whose protocol names its target share a socket among services through a
//! [`route::Routes`] table.

pub mod access;
pub mod admission;
pub mod bedrock;
pub mod clash;
pub mod client;
pub mod config;
pub mod copy;
pub mod hostnames;
pub mod http;
pub mod minecraft;
pub mod nofile;
pub mod proxy_protocol;
pub mod refusal;
pub mod route;
pub mod tcp;
pub mod udp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use self::admission::Listening;
pub use self::client::Client;
use crate::metrics::{ListenerMetrics, Refusal};

/// The routing tables of the shared `http` and `minecraft` sockets, by the bind of their
/// entries, which services created from templates join and leave.
#[derive(Clone, Default)]
pub struct SharedTables {
    pub http: Vec<(SocketAddr, Arc<http::Table>)>,
    pub minecraft: Vec<(SocketAddr, Arc<minecraft::Table>)>,
}

impl SharedTables {
    pub fn http(&self, bind: SocketAddr) -> Option<&Arc<http::Table>> {
        self.http.iter().find(|(b, _)| *b == bind).map(|(_, t)| t)
    }

    pub fn minecraft(&self, bind: SocketAddr) -> Option<&Arc<minecraft::Table>> {
        self.minecraft
            .iter()
            .find(|(b, _)| *b == bind)
            .map(|(_, t)| t)
    }
}

/// What client connections share: their tracker, and the two steps of a graceful shutdown.
#[derive(Clone)]
pub struct Connections {
    pub tracker: TaskTracker,
    /// Fired first: listeners stop accepting; open connections go on.
    pub stop_accepting: CancellationToken,
    /// Fired when the grace period is over: open and held connections are closed.
    pub close_all: CancellationToken,
    /// Every listener's refusals and open connections, for `/metrics`.
    pub metrics: ListenerMetrics,
}

impl Connections {
    pub fn new() -> Connections {
        Connections {
            tracker: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            close_all: CancellationToken::new(),
            metrics: ListenerMetrics::default(),
        }
    }
}

impl Default for Connections {
    fn default() -> Connections {
        Connections::new()
    }
}

/// How long the accept loop pauses when the process is out of file descriptors: long enough
/// not to spin on a socket that stays readable, short enough to take clients again as soon as
/// connections close.
const EXHAUSTED_PAUSE: Duration = Duration::from_millis(50);

/// Accepts clients until `connections.stop_accepting` fires, and runs `serve(client)` for each
/// on the connections tracker, so a shutdown waits for it. A client whose address already has
/// the socket's cap of connections open is closed at once, unanswered (cheaper than any
/// answer, and the same for every protocol). A trusted proxy's client is counted by the
/// address its PROXY header names, once read (see [`client::arrive`]).
pub async fn accept<F, S>(
    listener: &TcpListener,
    listening: &Arc<Listening>,
    connections: &Connections,
    serve: F,
) where
    F: Fn(Client) -> S + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    loop {
        let accepted = tokio::select! {
            () = connections.stop_accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let opened = Instant::now();
                // A proxy's clients are admitted one by one, by their own addresses.
                let slot = if listening.front.trusts(peer) {
                    None
                } else if let Some(slot) = listening.admit(peer.ip()) {
                    Some(slot)
                } else {
                    drop(stream);
                    listening.refusals.refuse(Refusal::PerAddressCap, peer);
                    continue;
                };
                let (listening, serve) = (listening.clone(), serve.clone());
                let close_all = connections.close_all.clone();
                connections.tracker.spawn(async move {
                    let arrived = tokio::select! {
                        client = client::arrive(&listening.front, &listening.refusals, stream, peer, opened) => client,
                        () = close_all.cancelled() => None,
                    };
                    let Some(client) = arrived else { return };
                    let slot = match slot {
                        Some(slot) => slot,
                        None => match listening.admit(client.addr.ip()) {
                            Some(slot) => slot,
                            None => {
                                let who = format_args!("{} through {peer}", client.addr);
                                listening.refusals.refuse(Refusal::PerAddressCap, who);
                                return;
                            }
                        },
                    };
                    serve(client).await;
                    drop(slot);
                });
            }
            Err(e) if out_of_resources(&e) => {
                // The connection waits in the backlog; it is taken once descriptors free up.
                listening.refusals.refuse(Refusal::FdExhausted, &e);
                tokio::time::sleep(EXHAUSTED_PAUSE).await;
            }
            // A client that left before it was accepted, and the like: nothing to wait for.
            Err(e) => debug!(error = %e, "Cannot accept a connection."),
        }
    }
}

/// The accept backlog of every listener socket (the kernel caps it at `net.core.somaxconn`).
/// The default a program gets (128, std's and so tokio's) is too short for a herd: clients
/// that arrive together while a service sleeps, or a load balancer's burst. Once it is full, a
/// client whose handshake completes is left half-open: it believes it is connected, and is
/// never accepted.
pub const BACKLOG: u32 = 4096;

/// Binds a listener socket at `at` with [`BACKLOG`], as `TcpListener::bind` would otherwise
/// (address reuse on, so a restart is not refused while old connections linger), and with
/// `TCP_NODELAY`, which every connection it accepts inherits (Linux copies the listener's
/// options to each accepted socket): small writes go out at once, a system call fewer per
/// connection than setting it on each.
pub fn bind(at: SocketAddr) -> io::Result<TcpListener> {
    let socket = match at {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(at)?;
    socket.listen(BACKLOG)
}

/// Whether an accept (or a connect) failed for want of descriptors or memory: it would fail
/// again at once, and says nothing about the peer.
pub(crate) fn out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(e)
        .is_some_and(|e| [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients are proxied with Nagle's algorithm off: the accepted socket has it from the
    /// listener (nothing sets it per connection).
    #[tokio::test]
    async fn accepted_connections_have_tcp_nodelay_from_the_listener() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
