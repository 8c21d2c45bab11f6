//! Listeners: where clients arrive. One accept loop per bound socket ([`accept`]); each client
//! gets its own task on the connections tracker. Listeners whose protocol names its target
//! share a socket among services through a [`route::Routes`] table.

pub mod config;
pub mod copy;
pub mod hostnames;
pub mod http;
pub mod minecraft;
pub mod proxy_protocol;
pub mod route;
pub mod tcp;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// What client connections share: their tracker, and the two steps of a graceful shutdown.
#[derive(Clone)]
pub struct Connections {
    pub tracker: TaskTracker,
    /// Fired first: listeners stop accepting; open connections go on.
    pub stop_accepting: CancellationToken,
    /// Fired when the grace period is over: open and held connections are closed.
    pub close_all: CancellationToken,
}

impl Connections {
    pub fn new() -> Connections {
        Connections {
            tracker: TaskTracker::new(),
            stop_accepting: CancellationToken::new(),
            close_all: CancellationToken::new(),
        }
    }
}

impl Default for Connections {
    fn default() -> Connections {
        Connections::new()
    }
}

/// Accepts clients until `connections.stop_accepting` fires, and runs `serve(client, peer)` for
/// each on the connections tracker, so a shutdown waits for it.
pub async fn accept<S>(
    listener: &TcpListener,
    connections: &Connections,
    mut serve: impl FnMut(TcpStream, SocketAddr) -> S,
) where
    S: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            () = connections.stop_accepting.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                connections.tracker.spawn(serve(client, peer));
            }
            Err(e) => {
                // Usually out of file descriptors: a backoff instead of spinning on the error.
                warn!(error = %e, "Cannot accept a connection.");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
