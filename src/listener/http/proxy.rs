//! The reverse proxy behind `http` listeners: forwards a request to an awake backend over a pool
//! of kept-alive HTTP/1.1 connections, streams both bodies as they come, tunnels upgrades
//! (WebSocket and others), and tells the backend who the client is.
//!
//! Why a pool of our own rather than hyper-util's client: the backend is a socket address the
//! service hands us per request, not a URI; a response body that ends puts its connection back
//! at once (no task per request to wait for it); and upgrades need the raw connection.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{PathAndQuery, Uri};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

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
/// answering as it should (the listener answers 502 and has the service check readiness).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
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
    /// is held for a push or a pop, never across an await.
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    next_id: AtomicU64,
    /// Backend connections and upgraded tunnels.
    tasks: TaskTracker,
    /// Fired by [`Proxy::close`]: tunnels end, idle connections close.
    closing: CancellationToken,
}

struct Idle {
    id: u64,
    since: Instant,
    sender: SendRequest<Incoming>,
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
                idle: Mutex::new(HashMap::new()),
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

        let (mut response, checkin) = self.send(req, backend).await?;

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            remove_hop_by_hop(response.headers_mut(), true);
            if let Some(client_upgrade) = client_upgrade {
                let backend_upgrade = hyper::upgrade::on(&mut response);
                let closing = self.shared.closing.clone();
                self.shared
                    .tasks
                    .spawn(tunnel(client_upgrade, backend_upgrade, closing, guard));
            }
            // The connection now belongs to the tunnel (or is useless): not back to the pool.
            drop(checkin);
            return Ok(response.map(|_| empty()));
        }

        remove_hop_by_hop(response.headers_mut(), false);
        let (parts, body) = response.into_parts();
        let mut body = Streamed {
            body,
            checkin: Some(checkin),
            guard,
        };
        if body.body.is_end_stream() {
            body.finish();
        }
        Ok(Response::from_parts(parts, body.boxed()))
    }

    /// Sends `req` on a pooled connection to `backend`, or a new one. A pooled connection that
    /// turns out closed before the request was written is no loss: the request goes out again
    /// on the next one (the backend never saw it).
    async fn send(
        &self,
        mut req: Request<Incoming>,
        backend: SocketAddr,
    ) -> Result<(Response<Incoming>, Checkin), ProxyError> {
        loop {
            let (mut checkin, reused) = match self.shared.take_idle(backend).await {
                Some(checkin) => (checkin, true),
                None => (self.shared.connect(backend).await?, false),
            };
            match checkin.sender.try_send_request(req).await {
                Ok(response) => return Ok((response, checkin)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        debug!(%backend, error = %e.error(), "A pooled backend connection was closed; sending the request on another.");
                        req = unsent;
                    }
                    _ => return Err(ProxyError::Backend(e.into_error())),
                },
            }
        }
    }

    /// Ends every tunnel, closes idle backend connections and waits for the proxy's tasks
    /// (backend connections end when the responses they carry do).
    pub async fn close(&self) {
        self.shared.closing.cancel();
        self.shared.idle.lock().unwrap().clear();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }

    /// How many connections to `backend` are idle in the pool right now.
    pub fn idle_connections(&self, backend: SocketAddr) -> usize {
        self.shared
            .idle
            .lock()
            .unwrap()
            .get(&backend)
            .map_or(0, Vec::len)
    }
}

/// A connection taken from the pool (or new), put back when its response has ended.
struct Checkin {
    shared: Arc<Shared>,
    backend: SocketAddr,
    id: u64,
    sender: SendRequest<Incoming>,
}

impl Checkin {
    /// Back to the pool once the connection can take another request: at once in the usual
    /// case; when the backend answered before the whole request body was sent (or its task has
    /// not caught up yet), once that is done.
    fn put_back(mut self) {
        if self.sender.is_closed() {
            return;
        }
        if self.sender.is_ready() {
            self.push();
            return;
        }
        let (tasks, idle) = (self.shared.tasks.clone(), self.shared.timeouts.idle);
        tasks.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(idle, self.sender.ready()).await {
                self.push();
            }
        });
    }

    fn push(self) {
        // Closed, the proxy keeps no connection: `close` must not wait out an idle timeout.
        if self.shared.closing.is_cancelled() {
            return;
        }
        let mut idle = self.shared.idle.lock().unwrap();
        let list = idle.entry(self.backend).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                id: self.id,
                since: Instant::now(),
                sender: self.sender,
            });
        }
    }
}

impl Shared {
    /// The most recently used open connection to `backend`, once it can take a request.
    async fn take_idle(self: &Arc<Self>, backend: SocketAddr) -> Option<Checkin> {
        loop {
            let Idle { id, since, sender } = {
                let mut idle = self.idle.lock().unwrap();
                idle.get_mut(&backend)?.pop()?
            };
            if sender.is_closed() || since.elapsed() >= self.timeouts.idle {
                continue;
            }
            let mut checkin = Checkin {
                shared: self.clone(),
                backend,
                id,
                sender,
            };
            // Only ready connections are put back, but one may be closing right now.
            if !checkin.sender.is_ready() {
                let ready = tokio::time::timeout(self.timeouts.connect, checkin.sender.ready());
                if !matches!(ready.await, Ok(Ok(()))) {
                    continue;
                }
            }
            return Some(checkin);
        }
    }

    async fn connect(self: &Arc<Self>, backend: SocketAddr) -> Result<Checkin, ProxyError> {
        let stream = tokio::time::timeout(self.timeouts.connect, TcpStream::connect(backend))
            .await
            .map_err(|_| ProxyError::Timeout)?
            .map_err(ProxyError::Connect)?;
        // Requests and responses are written whole: no reason to wait for more.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ProxyError::Backend)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        debug!(%backend, id, "Opened a connection to the backend.");
        self.tasks.spawn(drive(
            connection.with_upgrades(),
            Arc::downgrade(self),
            backend,
            id,
        ));
        Ok(Checkin {
            shared: self.clone(),
            backend,
            id,
            sender,
        })
    }

    /// Whether connection `id` has been idle for the whole idle timeout; if so it leaves the
    /// pool. Otherwise, when to look again.
    fn expire(&self, backend: SocketAddr, id: u64) -> Result<(), Instant> {
        let mut idle = self.idle.lock().unwrap();
        let now = Instant::now();
        let Some(list) = idle.get_mut(&backend) else {
            return Err(now + self.timeouts.idle);
        };
        let Some(at) = list.iter().position(|entry| entry.id == id) else {
            // In use (or being put back): a full timeout from now at the earliest.
            return Err(now + self.timeouts.idle);
        };
        let until = list[at].since + self.timeouts.idle;
        if until > now {
            return Err(until);
        }
        list.swap_remove(at);
        Ok(())
    }
}

/// Runs one backend connection until it closes, the backend or the pool's idle timeout closes
/// it, or the proxy closes.
async fn drive(
    connection: impl Future<Output = hyper::Result<()>>,
    shared: Weak<Shared>,
    backend: SocketAddr,
    id: u64,
) {
    let Some(idle) = shared.upgrade().map(|shared| shared.timeouts.idle) else {
        return;
    };
    let mut connection = std::pin::pin!(connection);
    let mut look_at = Instant::now() + idle;
    loop {
        tokio::select! {
            result = &mut connection => {
                match result {
                    Ok(()) => debug!(%backend, id, "Connection to the backend closed."),
                    Err(e) => debug!(%backend, id, error = %e, "Connection to the backend failed."),
                }
                return;
            }
            () = tokio::time::sleep_until(look_at) => {
                let Some(shared) = shared.upgrade() else { return };
                match shared.expire(backend, id) {
                    Ok(()) => {
                        debug!(%backend, id, "Closing an idle connection to the backend.");
                        return;
                    }
                    Err(next) => look_at = next,
                }
            }
        }
    }
}

/// Copies both ways between the client's and the backend's upgraded connections until both
/// are done or the proxy closes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    closing: CancellationToken,
    guard: Option<Guard>,
) {
    let _guard = guard;
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

/// The backend's response body, passed through frame by frame. Its end puts the connection back
/// in the pool and lets go of the guard.
struct Streamed {
    body: Incoming,
    checkin: Option<Checkin>,
    guard: Option<Guard>,
}

impl Streamed {
    fn finish(&mut self) {
        if let Some(checkin) = self.checkin.take() {
            checkin.put_back();
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
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            // The server stops polling once `is_end_stream` holds: finish on the last frame.
            Some(Ok(_)) if this.body.is_end_stream() => this.finish(),
            Some(Ok(_)) => {}
            None => this.finish(),
            Some(Err(_)) => {
                this.checkin = None;
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

// ---------------------------------------------------------------------------------------------
// Headers.

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Turns the client's request into the one the backend gets (see [`Proxy::forward`]); returns
/// whether it asks for an upgrade.
fn prepare_request(req: &mut Request<Incoming>, client: SocketAddr, tls: bool) -> bool {
    let upgrade = req.version() == Version::HTTP_11 && asks_upgrade(req.headers());
    // HTTP/2 carries the host in the URI; HTTP/1.1 backends want it in `Host` and the path
    // alone on the request line.
    let host = match req.headers().get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if req.method() != Method::CONNECT
        && (req.uri().scheme().is_some() || req.uri().authority().is_some())
    {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    remove_hop_by_hop(headers, upgrade);
    let proto = if tls { "https" } else { "http" };
    let ip = client.ip().to_canonical();

    let mut forwarded_for = String::with_capacity(48);
    append_values(&mut forwarded_for, headers, &X_FORWARDED_FOR);
    let _ = write!(forwarded_for, "{ip}");

    let mut forwarded = String::with_capacity(80);
    append_values(&mut forwarded, headers, &header::FORWARDED);
    if ip.is_ipv6() {
        let _ = write!(forwarded, "for=\"[{ip}]\"");
    } else {
        let _ = write!(forwarded, "for={ip}");
    }
    if let Some(host) = &host {
        forwarded.push_str(";host=");
        quote_if_needed(&mut forwarded, host.as_bytes());
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);

    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if let Ok(value) = HeaderValue::try_from(forwarded) {
        headers.insert(header::FORWARDED, value);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        headers.entry(header::HOST).or_insert(host);
    }
    upgrade
}

/// The values of `name` already there, joined and followed by ", " (nothing if there are none).
fn append_values(out: &mut String, headers: &HeaderMap, name: &HeaderName) {
    for value in headers.get_all(name) {
        if let Ok(value) = value.to_str() {
            let value = value.trim();
            if !value.is_empty() {
                out.push_str(value);
                out.push_str(", ");
            }
        }
    }
}

/// A `Forwarded` parameter value: a token as it is, anything else as a quoted string.
fn quote_if_needed(out: &mut String, value: &[u8]) {
    let token = !value.is_empty()
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let text = String::from_utf8_lossy(value);
    if token {
        out.push_str(&text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Whether the request asks to switch protocols: `Upgrade` named in `Connection`. `h2c` is
/// between the client and us (our listener speaks HTTP/2 itself): never passed on.
fn asks_upgrade(headers: &HeaderMap) -> bool {
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return false;
    };
    if upgrade.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return false;
    }
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| has_token(value, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|value| {
        value
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Removes the headers that concern one hop only (RFC 9110 7.6.1): `Connection` and the
/// headers it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding` and
/// `Upgrade`. With `upgrade`, `Upgrade` stays and `Connection` says `upgrade` alone.
fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages have one `Connection` header or none: no allocation for those.
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let first = connection.next().cloned();
    let rest: Vec<HeaderValue> = connection.cloned().collect();
    if first.is_some() {
        headers.remove(header::CONNECTION);
    }
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim) {
            if name.is_empty()
                || (upgrade && name.eq_ignore_ascii_case("upgrade"))
                || name.eq_ignore_ascii_case("close")
                || name.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            headers.remove(name);
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    if headers
        .keys()
        .any(|name| name.as_str().starts_with("proxy-"))
    {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
    if upgrade {
        if headers.contains_key(header::UPGRADE) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    } else {
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_others_stay() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Session"),
            ("connection", "close"),
            ("x-session", "abc"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
            ("cookie", "a=b"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["cookie", "x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_only_the_upgrade_token() {
        let mut map = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAA"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(asks_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["sec-websocket-key"], "k");
        assert!(!map.contains_key("http2-settings"));
    }

    #[test]
    fn h2c_and_a_lone_upgrade_header_are_no_upgrade() {
        assert!(!asks_upgrade(&headers(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        assert!(!asks_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_values_are_quoted_when_not_tokens() {
        let mut out = String::new();
        quote_if_needed(&mut out, b"example.com");
        assert_eq!(out, "example.com");
        out.clear();
        quote_if_needed(&mut out, b"example.com:8080");
        assert_eq!(out, "\"example.com:8080\"");
        out.clear();
        quote_if_needed(&mut out, b"a\"b");
        assert_eq!(out, "\"a\\\"b\"");
    }
}
