//! The reverse proxy behind `http` listeners: forwards a request to an awake backend over a pool
//! of kept-alive HTTP/1.1 connections, streams both bodies as they come, tunnels upgrades
//! (WebSocket and others), and tells the backend who the client is.
//!
//! Why a pool of our own rather than hyper-util's client: the backend is a socket address the
//! service hands us per request, not a URI; a backend connection has no task of its own (the
//! task serving the client drives it, so an exchange costs no hand-over between tasks and
//! threads); and a response body that ends puts its connection back at once, with no task per
//! request waiting for that.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::headers::{prepare_request, remove_hop_by_hop};

/// The body of a proxied response: the backend's, streamed as it arrives.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Something the caller keeps alive while the exchange lasts (the listener counts activity
/// with it).
pub type Guard = Box<dyn Send + Sync + 'static>;

/// How long the proxy waits on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyTimeouts {
    /// To open a TCP connection to the backend.
    pub connect: Duration,
    /// How long an unused connection stays in the pool before it is closed.
    pub idle: Duration,
}

impl Default for ProxyTimeouts {
    fn default() -> Self {
        ProxyTimeouts {
            connect: Duration::from_secs(5),
            // Below the keep-alive timeout of most servers (nginx 75 s, Apache 5 s, Node 5 s
            // would still race: a request that loses that race is sent again, see `forward`).
            idle: Duration::from_secs(30),
        }
    }
}

/// Why a request could not be forwarded. `Connect` and `Backend` mean the backend is not
/// answering as it should (the listener answers 502 and has the service check readiness);
/// `ClientBody` that the client broke its request body (a bad chunk, cut short).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    ClientBody(String),
    #[error("cannot connect to the backend: {0}")]
    Connect(#[source] io::Error),
    #[error("the backend did not answer the request: {0}")]
    Backend(#[source] hyper::Error),
    #[error("the backend did not accept a connection within the connect timeout")]
    Timeout,
}

/// Idle connections kept per backend at most; more are closed when their response ends.
const MAX_IDLE_PER_BACKEND: usize = 512;

/// A reverse proxy with its keep-alive pool. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    timeouts: ProxyTimeouts,
    /// Connections ready for a request, per backend, most recently used last. A std Mutex: it
    /// is held for a push, a pop or a sweep, never across an await.
    pool: Mutex<Pool>,
    next_id: AtomicU64,
    /// Upgraded tunnels, the sweeper, and connections finishing a request body.
    tasks: TaskTracker,
    /// Fired by [`Proxy::close`]: tunnels end, idle connections close.
    closing: CancellationToken,
}

#[derive(Default)]
struct Pool {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    /// Whether the sweeper task runs; it does while the pool holds a connection.
    sweeping: bool,
}

struct Idle {
    since: Instant,
    conn: Conn,
}

/// What a connection does on its socket: hyper's side of it, polled by `Conn::drive`.
type ConnIo = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One HTTP/1.1 connection to a backend. It has no task of its own: whoever uses it polls its
/// I/O (`drive`) — the request waiting for its response, then the response body the client
/// reads — so a request and its response cost no hand-over between tasks.
struct Conn {
    id: u64,
    sender: SendRequest<Incoming>,
    /// The connection's I/O; `None` once it has ended. Dropped at once then: a request queued
    /// on an ended connection learns it was never sent only when the connection is dropped.
    /// A Mutex only so that a response body holding it is `Sync`; it is reached through
    /// `get_mut`, never locked.
    io: Mutex<Option<ConnIo>>,
}

impl Conn {
    /// Moves the connection's I/O along; whether it is still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let io = self.io.get_mut().unwrap_or_else(PoisonError::into_inner);
        let Some(running) = io else {
            return false;
        };
        let Poll::Ready(result) = running.as_mut().poll(cx) else {
            return true;
        };
        *io = None;
        match result {
            Ok(()) => debug!(id = self.id, "Connection to the backend closed."),
            Err(e) => debug!(id = self.id, error = %e, "Connection to the backend failed."),
        }
        false
    }

    fn is_closed(&mut self) -> bool {
        self.io
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("timeouts", &self.shared.timeouts)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn new(timeouts: ProxyTimeouts) -> Self {
        Proxy {
            shared: Arc::new(Shared {
                timeouts,
                pool: Mutex::new(Pool::default()),
                next_id: AtomicU64::new(0),
                tasks: TaskTracker::new(),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// Forwards one request to `backend` and returns its response, whose body streams from the
    /// backend as the caller reads it.
    ///
    /// The request loses its hop-by-hop headers and gains `X-Forwarded-For` (appended),
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` (appended); it goes out as
    /// HTTP/1.1 in origin form, whatever the client spoke. The response comes back as the
    /// backend sent it, less its hop-by-hop headers.
    ///
    /// An upgrade (`Connection: upgrade` + `Upgrade`, e.g. WebSocket) that the backend accepts
    /// with `101` becomes a tunnel between the two upgraded connections once the caller has
    /// sent the `101` (its server connection must allow upgrades). `guard` lives as long as
    /// the exchange: until the response body ends or is dropped, or the tunnel closes.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        backend: SocketAddr,
        client: SocketAddr,
        tls: bool,
        guard: Option<Guard>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upgrade = prepare_request(&mut req, client, tls);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut response, lease) = self.send(req, backend).await?;

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            remove_hop_by_hop(response.headers_mut(), true);
            if let Some(client_upgrade) = client_upgrade {
                let backend_upgrade = hyper::upgrade::on(&mut response);
                let closing = self.shared.closing.clone();
                self.shared.tasks.spawn(tunnel(
                    client_upgrade,
                    backend_upgrade,
                    lease.conn,
                    closing,
                    guard,
                ));
            }
            // The connection now belongs to the tunnel (or is useless): not back to the pool.
            return Ok(response.map(|_| empty()));
        }

        remove_hop_by_hop(response.headers_mut(), false);
        let (parts, body) = response.into_parts();
        let mut body = Streamed {
            body,
            lease: Some(lease),
            guard,
        };
        if body.body.is_end_stream() {
            // No body to wait for: back to the pool now, after a turn that lets the connection
            // see the response through.
            std::future::poll_fn(|cx| {
                body.finish(Some(cx));
                Poll::Ready(())
            })
            .await;
        }
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// Sends `req` on a pooled connection to `backend`, or a new one, and waits for the
    /// response's head. A pooled connection that turns out closed before the request was
    /// written is no loss: the request goes out again on the next one (the backend never saw
    /// it).
    async fn send(
        &self,
        mut req: Request<Incoming>,
        backend: SocketAddr,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        loop {
            let (mut lease, reused) = match self.shared.take_idle(backend) {
                Some(mut lease) => {
                    // Nobody has read from it since it went idle: a close from the backend
                    // (its keep-alive timeout, a restart) shows now, before the request is
                    // written to a dead connection.
                    if !std::future::poll_fn(|cx| Poll::Ready(lease.conn.drive(cx))).await {
                        continue;
                    }
                    (lease, true)
                }
                None => (self.shared.connect(backend).await?, false),
            };
            let conn = &mut lease.conn;
            let mut sent = std::pin::pin!(conn.sender.try_send_request(req));
            let sent = std::future::poll_fn(|cx| {
                // Writes the request (and its body, as it comes) and reads the response.
                conn.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match sent {
                Ok(response) => return Ok((response, lease)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        debug!(%backend, error = %e.error(), "A pooled backend connection was closed; sending the request on another.");
                        req = unsent;
                    }
                    _ => {
                        let e = e.into_error();
                        // hyper wraps an error of the body it sends as a "user" error with the
                        // body's own error (the client's connection, read by hyper) as source.
                        let client = std::error::Error::source(&e)
                            .filter(|s| e.is_user() && s.is::<hyper::Error>());
                        return Err(match client {
                            Some(client) => ProxyError::ClientBody(client.to_string()),
                            None => ProxyError::Backend(e),
                        });
                    }
                },
            }
        }
    }

    /// Ends every tunnel, closes idle backend connections and waits for the proxy's tasks.
    pub async fn close(&self) {
        self.shared.closing.cancel();
        self.shared.pool.lock().unwrap().idle.clear();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// How many connections to `backend` are idle in the pool right now.
    pub fn idle_connections(&self, backend: SocketAddr) -> usize {
        self.shared
            .pool
            .lock()
            .unwrap()
            .idle
            .get(&backend)
            .map_or(0, Vec::len)
    }
}

/// A connection taken from the pool (or new), put back when its response has ended.
struct Lease {
    shared: Arc<Shared>,
    backend: SocketAddr,
    conn: Conn,
}

impl Lease {
    /// Back to the pool once the connection can take another request: at once in the usual
    /// case; when the backend answered before the whole request body was sent, a task drives
    /// the connection until it has been.
    fn put_back(mut self, cx: Option<&mut Context<'_>>) {
        // One more turn lets the connection see the response's end and ask for a request.
        let open = match cx {
            Some(cx) => self.conn.drive(cx),
            None => !self.conn.is_closed(),
        };
        if !open {
            return;
        }
        if self.conn.sender.is_ready() {
            self.push();
            return;
        }
        let tasks = self.shared.tasks.clone();
        let closing = self.shared.closing.clone();
        let idle = self.shared.timeouts.idle;
        tasks.spawn(async move {
            let ready = std::future::poll_fn(|cx| {
                let open = self.conn.drive(cx);
                match self.conn.sender.poll_ready(cx) {
                    Poll::Ready(result) => Poll::Ready(result.is_ok()),
                    Poll::Pending if open => Poll::Pending,
                    Poll::Pending => Poll::Ready(false),
                }
            });
            tokio::select! {
                ready = tokio::time::timeout(idle, ready) => if let Ok(true) = ready {
                    self.push();
                },
                () = closing.cancelled() => {}
            }
        });
    }

    fn push(self) {
        // Closed, the proxy keeps no connection: `close` must not wait out an idle timeout.
        if self.shared.closing.is_cancelled() {
            return;
        }
        let mut pool = self.shared.pool.lock().unwrap();
        let list = pool.idle.entry(self.backend).or_default();
        if list.len() >= MAX_IDLE_PER_BACKEND {
            return;
        }
        list.push(Idle {
            since: Instant::now(),
            conn: self.conn,
        });
        if !pool.sweeping {
            pool.sweeping = true;
            self.shared.tasks.spawn(sweep(
                Arc::downgrade(&self.shared),
                self.shared.closing.clone(),
            ));
        }
    }
}

impl Shared {
    /// The most recently used connection to `backend` that has not been idle too long.
    fn take_idle(self: &Arc<Self>, backend: SocketAddr) -> Option<Lease> {
        let mut pool = self.pool.lock().unwrap();
        let list = pool.idle.get_mut(&backend)?;
        while let Some(Idle { since, mut conn }) = list.pop() {
            if conn.is_closed() || since.elapsed() >= self.timeouts.idle {
                continue;
            }
            return Some(Lease {
                shared: self.clone(),
                backend,
                conn,
            });
        }
        None
    }

    async fn connect(self: &Arc<Self>, backend: SocketAddr) -> Result<Lease, ProxyError> {
        let stream = tokio::time::timeout(self.timeouts.connect, TcpStream::connect(backend))
            .await
            .map_err(|_| ProxyError::Timeout)?
            .map_err(ProxyError::Connect)?;
        // Requests and responses are written whole: no reason to wait for more.
        let _ = stream.set_nodelay(true);
        let (sender, io) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Backend)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        debug!(%backend, id, "Opened a connection to the backend.");
        Ok(Lease {
            shared: self.clone(),
            backend,
            conn: Conn {
                id,
                sender,
                io: Mutex::new(Some(Box::pin(io.with_upgrades()))),
            },
        })
    }
}

/// Closes pooled connections once they have been idle for the idle timeout. Runs while the
/// pool holds connections, and sleeps until the next one is due.
async fn sweep(shared: Weak<Shared>, closing: CancellationToken) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let idle = shared.timeouts.idle;
            let mut pool = shared.pool.lock().unwrap();
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            pool.idle.retain(|backend, list| {
                list.retain_mut(|entry| {
                    let due = entry.since + idle;
                    if due <= now || entry.conn.is_closed() {
                        debug!(%backend, id = entry.conn.id, "Closing an idle connection to the backend.");
                        return false;
                    }
                    next = Some(next.map_or(due, |n| n.min(due)));
                    true
                });
                !list.is_empty()
            });
            match next {
                Some(next) => next,
                None => {
                    pool.sweeping = false;
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = closing.cancelled() => return,
        }
    }
}

/// Copies both ways between the client's and the backend's upgraded connections until both
/// are done or the proxy closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    mut conn: Conn,
    closing: CancellationToken,
    guard: Option<Guard>,
) {
    let _guard = guard;
    // The backend's side is handed over once its connection has seen the 101 through.
    let backend = async {
        std::future::poll_fn(|cx| {
            if conn.drive(cx) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        backend.await
    };
    let (client, backend) = match tokio::try_join!(client, backend) {
        Ok(both) => both,
        Err(e) => {
            debug!(error = %e, "The upgrade did not complete.");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut backend = TokioIo::new(backend);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => match copied {
            Ok((up, down)) => debug!(bytes_in = up, bytes_out = down, "Upgraded connection closed."),
            Err(e) => debug!(error = %e, "Upgraded connection ended with an error."),
        },
        () = closing.cancelled() => debug!("Closing an upgraded connection: the proxy is closing."),
    }
}

/// The backend's response body, passed through frame by frame; reading it also moves the
/// connection's I/O along. Its end puts the connection back in the pool and lets go of the
/// guard.
struct Streamed {
    body: Incoming,
    lease: Option<Lease>,
    guard: Option<Guard>,
}

impl Streamed {
    fn finish(&mut self, cx: Option<&mut Context<'_>>) {
        if let Some(lease) = self.lease.take() {
            lease.put_back(cx);
        }
        self.guard = None;
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let mut frame = Pin::new(&mut this.body).poll_frame(cx);
        if frame.is_pending() {
            // Nothing buffered: read from the backend, then look again.
            if let Some(lease) = &mut this.lease {
                lease.conn.drive(cx);
            }
            frame = Pin::new(&mut this.body).poll_frame(cx);
        }
        let frame = ready!(frame);
        match &frame {
            // The server stops polling once `is_end_stream` holds: finish on the last frame.
            Some(Ok(_)) if this.body.is_end_stream() => this.finish(Some(cx)),
            Some(Ok(_)) => {}
            None => this.finish(Some(cx)),
            Some(Err(_)) => {
                this.lease = None;
                this.guard = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}
