//! `tcp` listener: accept, get a ticket from the service (which holds the client while the
//! backend wakes), connect to the backend and copy bytes both ways, half-close included.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info_span, warn};

use super::{Connections, Listening, copy};
use crate::metrics::Refusal;
use crate::service::ServiceHandle;

/// Accepts clients until `connections.stop_accepting` fires, at most `max_per_address` open
/// from one address (0: no cap).
pub async fn run(
    listener: TcpListener,
    service: ServiceHandle,
    connections: Connections,
    max_per_address: u32,
) {
    let bind = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let listening = Listening::new("tcp", bind, max_per_address, &connections.metrics);
    super::accept(&listener, &listening, &connections, |client, peer| {
        let span = info_span!("client", service = service.name(), %peer);
        let listening = listening.clone();
        serve(
            client,
            peer,
            service.clone(),
            connections.clone(),
            listening,
        )
        .instrument(span)
    })
    .await;
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    service: ServiceHandle,
    connections: Connections,
    listening: Arc<Listening>,
) {
    let ticket = tokio::select! {
        ticket = service.connect(peer) => ticket,
        () = connections.close_all.cancelled() => return,
    };
    let ticket = match ticket {
        Ok(ticket) => ticket,
        Err(e) => {
            let why = format!("{peer} for {}: {e}", service.name());
            listening.refusals.refuse(Refusal::Unavailable, why);
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
