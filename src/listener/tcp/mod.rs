//! `tcp` listener: accept, get a ticket from the service (which holds the client while the
//! backend wakes), connect to the backend and copy bytes both ways, half-close included.
//!
//! Before a wake it applies the listener's rules: the allow and deny lists (to every client,
//! awake or not), `wake_on = "data"` (while the service is not awake, a client's first byte,
//! not its connection, starts the wake: a port scan never does) and the wake rate per address.
//! While the service is awake a client is forwarded at once, as if nothing stood in between;
//! its first bytes are checked for a PROXY header as they pass (see `client::first_bytes`).

pub mod config;

use std::io;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, field, info_span, warn};

use self::config::{ProxyVersion, Tcp, WakeOn};
use super::access::AddressCheck;
use super::client::{self, First, Front};
use super::{Client, Connections, Listening, copy};
use crate::event::State;
use crate::metrics::Refusal;
use crate::minecraft::proxy_header;
use crate::service::{ServiceHandle, Ticket};

/// What every connection of one socket shares.
struct Socket {
    service: ServiceHandle,
    config: Tcp,
    check: AddressCheck,
    listening: Arc<Listening>,
    connections: Connections,
}

/// Accepts clients until `connections.stop_accepting` fires.
pub async fn run(
    listener: TcpListener,
    service: ServiceHandle,
    connections: Connections,
    config: Tcp,
) {
    let bind = listener.local_addr().unwrap_or(config.bind);
    let front = Front {
        trusted: config.trusted_proxies.clone(),
        head_timeout: config.head_timeout,
        sniff: false,
    };
    let cap = config.max_connections_per_address;
    let listening = Listening::new("tcp", bind, cap, front, &connections.metrics);
    let socket = Arc::new(Socket {
        check: AddressCheck::new(&config.rules),
        service,
        config,
        listening: listening.clone(),
        connections: connections.clone(),
    });
    super::accept(&listener, &listening, &connections, move |client| {
        let service = socket.service.name();
        let span = info_span!("client", service, peer = %client.addr, via = field::Empty);
        client.record_via(&span);
        serve(client, socket.clone()).instrument(span)
    })
    .await;
}

/// How a connection ended before it was forwarded.
enum Turned {
    /// Counted as a refusal of this reason, with this example.
    Refused(Refusal, String),
    /// Nothing worth counting: the client or wakegate went away.
    Quiet,
}

async fn serve(mut client: Client, socket: Arc<Socket>) {
    let refusals = &socket.listening.refusals;
    let ticket = match admit(&mut client, &socket).await {
        Ok(ticket) => ticket,
        Err(Turned::Refused(reason, why)) => return refusals.refuse(reason, why),
        Err(Turned::Quiet) => return,
    };
    let backend = match TcpStream::connect(ticket.address).await {
        Ok(stream) => stream,
        Err(e) => {
            warn!(backend = %ticket.address, error = %e, "Cannot connect to the backend; closing the client.");
            return;
        }
    };
    let _ = backend.set_nodelay(true);
    // A token of the connection's own: the select below polls it on every wake-up of the
    // connection, and polling the shared one would take its lock, shared by all connections.
    let close = socket.connections.close_all.child_token();
    let copied = tokio::select! {
        biased;
        copied = forward(&client, &backend, &ticket, socket.config.proxy_protocol) => copied,
        () = close.cancelled() => {
            debug!("Closing the connection: wakegate is shutting down.");
            return;
        }
    };
    match copied {
        Ok((up, down)) => debug!(bytes_in = up, bytes_out = down, "Connection closed."),
        Err(e) if e.get_ref().is_some_and(|e| e.is::<HeaderInData>()) => {
            client::refuse_header(refusals, &client);
        }
        Err(e) => debug!(error = %e, "Connection ended with an error."),
    }
    drop(ticket);
}

/// A ticket for the client once the rules let it through: at once while the service is awake,
/// else after its first byte (`wake_on = "data"`) and within the wake rate.
async fn admit(client: &mut Client, socket: &Socket) -> Result<Ticket, Turned> {
    let (peer, service) = (client.addr, &socket.service);
    if let Some(denied) = socket.check.denied(peer.ip()) {
        let why = format!("{peer} for {}: {denied}", service.name());
        return Err(Turned::Refused(Refusal::Denied, why));
    }
    if let Some(ticket) = service.ticket_if_awake() {
        return Ok(ticket);
    }
    if socket.config.wake_on == WakeOn::Data {
        let deadline = client.opened + socket.config.head_timeout;
        let early = std::mem::take(&mut client.early);
        let first = tokio::select! {
            first = tokio::time::timeout_at(deadline, client::first_bytes(&client.stream, early)) => first,
            () = socket.connections.close_all.cancelled() => return Err(Turned::Quiet),
        };
        client.early = match first {
            Ok(Ok(Some(taken))) => taken,
            // Closed or reset before a byte: a port scan.
            Ok(Ok(None)) => {
                let why = format!("{peer} for {}", service.name());
                return Err(Turned::Refused(Refusal::NoData, why));
            }
            Ok(Err(First::Io(e))) if e.kind() == io::ErrorKind::ConnectionReset => {
                let why = format!("{peer} for {} (reset)", service.name());
                return Err(Turned::Refused(Refusal::NoData, why));
            }
            Ok(Err(First::ProxyHeader)) => {
                client::refuse_header(&socket.listening.refusals, client);
                return Err(Turned::Quiet);
            }
            Ok(Err(First::Io(e))) => {
                debug!(error = %e, "Connection ended with an error.");
                return Err(Turned::Quiet);
            }
            Err(_) => {
                let why = format!(
                    "{peer} sent nothing within head_timeout while {} was not awake",
                    service.name()
                );
                return Err(Turned::Refused(Refusal::HeadTimeout, why));
            }
        };
    }
    // A client that joins a wake under way starts none.
    if service.state() != State::Waking
        && let Err(refused) = socket.check.wake(peer.ip())
    {
        let why = format!("{peer} for {}: {refused}", service.name());
        return Err(Turned::Refused(Refusal::RateLimited, why));
    }
    let ticket = tokio::select! {
        ticket = service.connect(peer) => ticket,
        () = socket.connections.close_all.cancelled() => return Err(Turned::Quiet),
    };
    ticket.map_err(|e| {
        let why = format!("{peer} for {}: {e}", service.name());
        Turned::Refused(Refusal::Unavailable, why)
    })
}

/// The client's first bytes were a PROXY header (see `client::first_bytes`).
#[derive(Debug, thiserror::Error)]
#[error("the client's first bytes are a PROXY protocol header")]
struct HeaderInData;

/// Writes the PROXY header (if asked for) and the client's early bytes to the backend, then
/// copies both ways; returns bytes (client → backend, backend → client).
async fn forward(
    client: &Client,
    backend: &TcpStream,
    ticket: &Ticket,
    proxy: Option<ProxyVersion>,
) -> io::Result<(u64, u64)> {
    if let Some(version) = proxy {
        let local = client.stream.local_addr()?;
        let header = match version {
            ProxyVersion::V1 => proxy_header::v1(client.addr, local),
            ProxyVersion::V2 => proxy_header::v2(client.addr, local),
        };
        copy::write_all(backend, &header).await?;
    }
    let counted = ticket.byte_counters();
    // `serve` drops both sockets as soon as this returns.
    let ended = copy::Ended::closed_after();
    let up = async {
        // The backend may speak first meanwhile: the other direction runs already. The first
        // bytes are read, not peeked, before they are checked: one system call fewer for
        // every connection.
        let early = match client.early.is_empty() {
            true => first_read(&client.stream).await?,
            false => client.early.clone(),
        };
        let first = match client::first_bytes(&client.stream, early).await {
            Ok(first) => first.unwrap_or_default(),
            Err(First::ProxyHeader) => return Err(io::Error::other(HeaderInData)),
            Err(First::Io(e)) => return Err(e),
        };
        copy::write_all(backend, &first).await?;
        counted
            .0
            .fetch_add(first.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let rest = copy::one_way(&client.stream, backend, counted.0, &ended).await?;
        Ok(first.len() as u64 + rest)
    };
    tokio::try_join!(
        up,
        copy::one_way(backend, &client.stream, counted.1, &ended)
    )
}

/// The client's first read: what it has sent so far, up to [`FIRST_READ`] bytes (none at the
/// end of the stream).
async fn first_read(stream: &TcpStream) -> io::Result<Vec<u8>> {
    loop {
        stream.readable().await?;
        if let Some(first) = read_now(stream)? {
            return Ok(first);
        }
    }
}

/// One read without waiting. A function of its own so that its buffer lives on the stack of
/// this call only, never in the state of a connection waiting for its client.
fn read_now(stream: &TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut buf = [0u8; FIRST_READ];
    Ok(copy::try_read(stream, &mut buf)?.map(|n| buf[..n].to_vec()))
}

/// At most this much is taken by the first read (as much as a plain copy's).
const FIRST_READ: usize = 16 * 1024;
