//! `tcp` listener: accept, get a ticket from the service (which holds the client while the
//! backend wakes), connect to the backend and copy bytes both ways, half-close included.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{Connections, copy};
use crate::service::ServiceHandle;

/// Accepts clients until `connections.stop_accepting` fires.
pub async fn run(listener: TcpListener, service: ServiceHandle, connections: Connections) {
    super::accept(&listener, &connections, |client, peer| {
        let span = info_span!("client", service = service.name(), %peer);
        serve(client, peer, service.clone(), connections.clone()).instrument(span)
    })
    .await;
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    service: ServiceHandle,
    connections: Connections,
) {
    let ticket = tokio::select! {
        ticket = service.connect(peer) => ticket,
        () = connections.close_all.cancelled() => return,
    };
    let ticket = match ticket {
        Ok(ticket) => ticket,
        Err(e) => {
            info!(error = %e, "Closing the client.");
            return;
        }
    };
    let backend = match TcpStream::connect(ticket.address).await {
        Ok(stream) => stream,
        Err(e) => {
            warn!(backend = %ticket.address, error = %e, "Cannot connect to the backend; closing the client.");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let copied = tokio::select! {
        copied = copy::bidirectional(&client, &backend, ticket.byte_counters()) => copied,
        () = connections.close_all.cancelled() => {
            debug!("Closing the connection: wakegate is shutting down.");
            return;
        }
    };
    match copied {
        Ok((up, down)) => debug!(bytes_in = up, bytes_out = down, "Connection closed."),
        Err(e) => debug!(error = %e, "Connection ended with an error."),
    }
    drop(ticket);
}
