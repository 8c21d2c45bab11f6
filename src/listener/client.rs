//! A client connection as the listeners serve it ([`Client`]): who the client is — the
//! connection's peer, or the source address a trusted load balancer names in a PROXY protocol
//! header — and the bytes already read from it. [`arrive`] reads that header from the peers of
//! a socket's `trusted_proxies`, and [`first_bytes`] refuses a header anywhere else: a client's
//! own bytes never start with one, so nobody can pass as another address.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::access::{IpNet, any_contains};
use super::proxy_protocol::{self, Invalid, ReadError};
use super::refusal::Refusals;
use crate::metrics::Refusal;

/// How a socket treats PROXY protocol headers.
#[derive(Debug, Clone)]
pub struct Front {
    /// The load balancers whose connections start with a PROXY header (v1 or v2) naming the
    /// client. A connection from one of them without a valid header is refused.
    pub trusted: Vec<IpNet>,
    /// How long a trusted proxy has for its header, and (`sniff`) a client for its first bytes.
    pub head_timeout: Duration,
    /// Whether every connection's first bytes are read before it is served, to refuse a PROXY
    /// header in them: for protocols where the client speaks first (`http`, `minecraft`),
    /// where waiting for them costs nothing. The `tcp` listener checks them as they pass
    /// instead (see [`first_bytes`]).
    pub sniff: bool,
}

impl Default for Front {
    fn default() -> Front {
        Front {
            trusted: Vec::new(),
            head_timeout: Duration::from_secs(10),
            sniff: false,
        }
    }
}

impl Front {
    /// The `trusted_proxies` of the entries sharing one socket, joined: the header is read
    /// before anything tells the entries apart.
    pub fn joined<'a>(
        trusted: impl IntoIterator<Item = &'a [IpNet]>,
        head_timeout: Duration,
        sniff: bool,
    ) -> Front {
        let mut all: Vec<IpNet> = Vec::new();
        for net in trusted.into_iter().flatten() {
            if !all.contains(net) {
                all.push(*net);
            }
        }
        Front {
            trusted: all,
            head_timeout,
            sniff,
        }
    }

    /// Whether connections from `peer` start with a PROXY header.
    pub fn trusts(&self, peer: SocketAddr) -> bool {
        any_contains(&self.trusted, peer.ip())
    }
}

/// An accepted client, ready to be served.
#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    /// The client: the connection's peer, or the source a trusted proxy's header names.
    pub addr: SocketAddr,
    /// The connection's own peer, when it is a trusted proxy that named the client.
    pub via: Option<SocketAddr>,
    /// Bytes already taken from the connection (past a PROXY header, or to tell whether one
    /// starts it): the client's first data, to be handled before what follows in the socket.
    pub early: Vec<u8>,
    /// When the connection was accepted: deadlines on the first bytes count from then.
    pub opened: Instant,
}

impl Client {
    /// The connection as it was accepted.
    pub fn direct(stream: TcpStream, peer: SocketAddr, opened: Instant) -> Client {
        Client {
            stream,
            addr: peer,
            via: None,
            early: Vec::new(),
            opened,
        }
    }

    /// Names the proxy the client came through in `span` (a connection's span, which has an
    /// empty `via` field).
    pub fn record_via(&self, span: &tracing::Span) {
        if let Some(via) = self.via {
            span.record("via", tracing::field::display(via));
        }
    }

    /// The connection as one stream that gives the early bytes first.
    pub fn into_io(self) -> Prefixed<TcpStream> {
        Prefixed {
            early: self.early,
            at: 0,
            inner: self.stream,
        }
    }
}

/// Makes a [`Client`] of an accepted connection: reads the PROXY header of a trusted proxy,
/// and (`front.sniff`) the first bytes of the client. `None` when it is refused (counted and
/// logged in `refusals`) or gone.
pub async fn arrive(
    front: &Front,
    refusals: &Refusals,
    stream: TcpStream,
    peer: SocketAddr,
    opened: Instant,
) -> Option<Client> {
    let mut client = Client::direct(stream, peer, opened);
    if front.trusts(peer) {
        let read = proxy_protocol::read_header(&mut client.stream, front.head_timeout).await;
        match read {
            Ok((header, rest)) => {
                if let Some(source) = header.source {
                    client.addr = source;
                    client.via = Some(peer);
                }
                client.early = rest;
            }
            // A load balancer's health check that connects and closes.
            Err(ReadError::Closed(0)) => return None,
            Err(ReadError::Io(e)) => {
                debug!(%peer, error = %e, "Cannot read the PROXY header.");
                return None;
            }
            Err(e @ ReadError::Timeout(_)) => {
                refusals.refuse(
                    Refusal::HeadTimeout,
                    format_args!("{peer} (a trusted proxy): {e}"),
                );
                return None;
            }
            Err(ReadError::Invalid(Invalid::NoHeader)) => {
                let why = format_args!(
                    "{peer} is in trusted_proxies but its connection does not start with a PROXY header"
                );
                refusals.refuse(Refusal::ProxyHeader, why);
                return None;
            }
            Err(e) => {
                refusals.refuse(
                    Refusal::ProxyHeader,
                    format_args!("{peer} (a trusted proxy): {e}"),
                );
                return None;
            }
        }
    }
    if !front.sniff {
        return Some(client);
    }
    let deadline = opened + front.head_timeout;
    let early = std::mem::take(&mut client.early);
    match tokio::time::timeout_at(deadline, first_bytes(&client.stream, early)).await {
        // Nothing at all: the listener sees the end of the stream itself.
        Ok(Ok(taken)) => {
            client.early = taken.unwrap_or_default();
            Some(client)
        }
        Ok(Err(First::ProxyHeader)) => {
            refuse_header(refusals, &client);
            None
        }
        Ok(Err(First::Io(e))) => {
            debug!(%peer, error = %e, "Connection ended with an error.");
            None
        }
        Err(_) => {
            let why = format_args!("{} sent nothing within head_timeout", client.addr);
            refusals.refuse(Refusal::HeadTimeout, why);
            None
        }
    }
}

/// Counts and logs a client whose own bytes start with a PROXY header.
pub fn refuse_header(refusals: &Refusals, client: &Client) {
    let why = match client.via {
        None => format!(
            "{} sent a PROXY header and is not in trusted_proxies",
            client.addr
        ),
        Some(via) => format!(
            "{} sent a PROXY header of its own through {via}",
            client.addr
        ),
    };
    refusals.refuse(Refusal::ProxyHeader, why);
}

/// Why a client's first bytes were not taken.
#[derive(Debug)]
pub enum First {
    /// They start with a PROXY header the client has no right to send.
    ProxyHeader,
    Io(io::Error),
}

/// The signature bytes that tell a PROXY header from anything else: v2's 12.
const SIGNATURE_LEN: usize = 12;

/// Waits for a client's first bytes (after `early`, bytes of its already taken) and checks
/// that they do not start with a PROXY header. Returns the bytes it took from the socket to
/// tell, `early` included: usually none, for it peeks; some when the first bytes are the start
/// of a signature and more had to come. `None`: the client closed without sending a byte.
pub async fn first_bytes(stream: &TcpStream, mut early: Vec<u8>) -> Result<Option<Vec<u8>>, First> {
    if early.is_empty() {
        let mut head = [0u8; SIGNATURE_LEN];
        let n = stream.peek(&mut head).await.map_err(First::Io)?;
        if n == 0 {
            return Ok(None);
        }
        match proxy_protocol::starts_header(&head[..n]) {
            Some(false) => return Ok(Some(Vec::new())),
            Some(true) => return Err(First::ProxyHeader),
            // Rare (a client whose first bytes are `P`, `PRO`, `\r\n`…): taken until it tells.
            None => {}
        }
    }
    loop {
        match proxy_protocol::starts_header(&early) {
            Some(false) => return Ok(Some(early)),
            Some(true) => return Err(First::ProxyHeader),
            None => {}
        }
        early.reserve(SIGNATURE_LEN);
        stream.readable().await.map_err(First::Io)?;
        match stream.try_read_buf(&mut early) {
            Ok(0) if early.is_empty() => return Ok(None),
            // Ended within a signature: the bytes are the client's data, its end too.
            Ok(0) => return Ok(Some(early)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(First::Io(e)),
        }
    }
}

/// A stream that gives `early` bytes before its own.
#[derive(Debug)]
pub struct Prefixed<S> {
    early: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.early.len() {
            let n = buf.remaining().min(this.early.len() - this.at);
            buf.put_slice(&this.early[this.at..this.at + n]);
            this.at += n;
            if this.at == this.early.len() {
                this.early = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::metrics::ListenerMetrics;

    /// A connected pair of real sockets: (client, accepted side, the client's address).
    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (client, server, peer)
    }

    fn refusals(metrics: &ListenerMetrics) -> Refusals {
        Refusals::new("tcp", SocketAddr::from(([127, 0, 0, 1], 1)), metrics)
    }

    fn front(trusted: &[&str], sniff: bool) -> Front {
        Front {
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            head_timeout: Duration::from_secs(5),
            sniff,
        }
    }

    #[tokio::test]
    async fn a_trusted_proxy_names_the_client_and_its_bytes_come_first() {
        let (mut lb, server, peer) = pair().await;
        let metrics = ListenerMetrics::default();
        lb.write_all(b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 443\r\nhello")
            .await
            .unwrap();
        let front = front(&["127.0.0.0/8"], true);
        let client = arrive(&front, &refusals(&metrics), server, peer, Instant::now())
            .await
            .unwrap();
        assert_eq!(client.addr, "192.0.2.10:51234".parse().unwrap());
        assert_eq!(client.via, Some(peer));
        lb.write_all(b", world").await.unwrap();
        drop(lb);
        let mut read = String::new();
        client.into_io().read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "hello, world");
    }

    #[tokio::test]
    async fn a_trusted_proxy_without_a_header_and_a_stranger_with_one_are_refused() {
        let metrics = ListenerMetrics::default();
        let refusals = refusals(&metrics);
        let (mut lb, server, peer) = pair().await;
        lb.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let trusted = front(&["127.0.0.1"], true);
        assert!(
            arrive(&trusted, &refusals, server, peer, Instant::now())
                .await
                .is_none()
        );

        let (mut stranger, server, peer) = pair().await;
        stranger
            .write_all(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n")
            .await
            .unwrap();
        let others = front(&["192.0.2.0/24"], true);
        assert!(
            arrive(&others, &refusals, server, peer, Instant::now())
                .await
                .is_none()
        );
        // A v2 header, from a client of the trusted proxy this time.
        let (mut lb, server, peer) = pair().await;
        let mut bytes = crate::minecraft::proxy_header::v2(
            "192.0.2.10:1".parse().unwrap(),
            "198.51.100.1:2".parse().unwrap(),
        );
        bytes.extend_from_slice(&crate::minecraft::proxy_header::v2_local());
        lb.write_all(&bytes).await.unwrap();
        assert!(
            arrive(&trusted, &refusals, server, peer, Instant::now())
                .await
                .is_none()
        );
        assert_eq!(refusals.counters().refused_count(Refusal::ProxyHeader), 3);
    }

    #[tokio::test]
    async fn a_health_check_that_connects_and_closes_is_no_refusal() {
        let metrics = ListenerMetrics::default();
        let refusals = refusals(&metrics);
        let (lb, server, peer) = pair().await;
        drop(lb);
        let trusted = front(&["127.0.0.1"], false);
        assert!(
            arrive(&trusted, &refusals, server, peer, Instant::now())
                .await
                .is_none()
        );
        for reason in Refusal::ALL {
            assert_eq!(refusals.counters().refused_count(reason), 0, "{reason:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trusted_proxy_that_sends_nothing_is_cut_at_head_timeout() {
        let metrics = ListenerMetrics::default();
        let refusals = refusals(&metrics);
        let (_lb, server, peer) = pair().await;
        let trusted = front(&["127.0.0.1"], false);
        assert!(
            arrive(&trusted, &refusals, server, peer, Instant::now())
                .await
                .is_none()
        );
        assert_eq!(refusals.counters().refused_count(Refusal::HeadTimeout), 1);
    }

    #[tokio::test]
    async fn first_bytes_peeks_and_takes_only_what_it_must() {
        // Decided by a peek: nothing is taken.
        let (mut client, server, _) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            first_bytes(&server, Vec::new()).await.unwrap(),
            Some(Vec::new())
        );
        // The start of a signature, then something else: what it took and what it left in the
        // socket are the client's bytes in order.
        let (mut client, mut server, _) = pair().await;
        client.write_all(b"PRO").await.unwrap();
        let (taken, ()) = tokio::join!(first_bytes(&server, Vec::new()), async {
            client.write_all(b"FILE\n").await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut all = taken.unwrap().unwrap();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PROFILE\n");
        // Early bytes that are the start of a signature: read on until it tells.
        let (mut client, server, _) = pair().await;
        client.write_all(b"XY").await.unwrap();
        let taken = first_bytes(&server, b"\r\n".to_vec()).await.unwrap();
        assert_eq!(taken, Some(b"\r\nXY".to_vec()));
        // Closed at once: no byte.
        let (client, server, _) = pair().await;
        drop(client);
        assert_eq!(first_bytes(&server, Vec::new()).await.unwrap(), None);
        // Early bytes decide without reading.
        let (_client, server, _) = pair().await;
        let early = b"\x16\x03\x01".to_vec();
        assert_eq!(
            first_bytes(&server, early.clone()).await.unwrap(),
            Some(early)
        );
        assert!(matches!(
            first_bytes(&server, b"PROXY ".to_vec()).await,
            Err(First::ProxyHeader)
        ));
    }
}
