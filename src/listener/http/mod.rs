//! `http` listener: HTTP/1.1 and h2c (or both over TLS, with the certificate chosen by SNI),
//! routed by `Host` among the services sharing its socket. While a service is not awake a
//! request gets the waiting page (browsers) or is held until it is (API clients), and wakes
//! it; once awake, requests go through the reverse proxy ([`proxy`]). A request in flight and
//! an open upgraded connection count as activity; health checkers and bots do neither.

mod acceptor;
pub mod config;
mod deadline;
mod headers;
pub mod page;
pub mod proxy;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderValue, LOCATION, RETRY_AFTER, USER_AGENT,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, field, info_span, warn};

pub use self::acceptor::tls_acceptor;
use self::config::{Http, Strategy};
use self::deadline::{Expired, InFlight, Tracked};
use self::proxy::{Proxy, ProxyError, ProxyTimeouts};
use super::access::{AddressCheck, OverRate};
use super::client::Front;
use super::route::{self, Named};
use super::{Client, Connections, Listening};
use crate::event::State;
use crate::metrics::Refusal;
use crate::probe::{self, Check};
use crate::service::config::HealthAction;
use crate::service::{ConnectError, ServiceHandle, Ticket};

/// The body of every response the listener sends: the backend's, streamed, or its own.
pub type Body = proxy::ProxyBody;

/// What Retry-After says when the time a boot takes is not known yet.
const RETRY_UNKNOWN: Duration = Duration::from_secs(5);

/// One service reachable through a shared socket, with its listener entry.
pub struct Route {
    pub service: ServiceHandle,
    pub config: Http,
    /// Its allow and deny lists, and the wakes counted per address.
    check: AddressCheck,
    /// A readiness re-check after a failed request is under way.
    rechecking: AtomicBool,
}

impl Route {
    pub fn new(service: ServiceHandle, config: Http) -> Route {
        Route {
            check: AddressCheck::new(&config.rules),
            service,
            config,
            rechecking: AtomicBool::new(false),
        }
    }
}

impl Named for Route {
    fn hostnames(&self) -> &[String] {
        &self.config.hostnames
    }
    fn is_default(&self) -> bool {
        self.config.default
    }
}

/// The services behind one socket, found by host. Unlike a Minecraft client, a browser always
/// names the site: a service that lists hostnames gets only those, even alone on its socket,
/// unless it says `default = true`.
pub type Routes = route::Routes<Route>;

/// The routing table of one socket, which services created from templates join and leave.
pub type Table = route::Table<Route>;

/// The routing table of one socket's entries.
pub fn routes(routes: Vec<Route>) -> Arc<Table> {
    Arc::new(route::Table::new(route::Routes::new(routes, false)))
}

/// What every connection of one socket shares.
struct Server {
    routes: Arc<Table>,
    proxy: Proxy,
    /// Whether clients arrive over TLS (told to the backend in X-Forwarded-Proto).
    tls: bool,
    connections: Connections,
    /// The socket's admission and refusals.
    listening: Arc<Listening>,
    /// The most generous `head_timeout` and `keepalive_timeout` of the socket's entries.
    head_timeout: Duration,
    keepalive_timeout: Duration,
    /// One token per exchange handed to the proxy (a response body being sent, an upgraded
    /// connection): a shutdown waits for them, and closes the proxy when the grace is over.
    exchanges: TaskTracker,
}

/// Accepts clients until `connections.stop_accepting` fires.
pub async fn run(
    listener: TcpListener,
    routes: Arc<Table>,
    tls: Option<TlsAcceptor>,
    connections: Connections,
) {
    let bind = listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    // From the entries at start; those that join later share these. A socket bound before any
    // (a template's) takes the defaults: a zero head_timeout would close every client at once.
    let first = routes.load();
    let entries = || first.iter().map(|r| &r.config);
    let caps = entries().map(|c| c.max_connections_per_address);
    let cap = match first.iter().next() {
        Some(_) => super::admission::shared_cap(caps),
        None => super::admission::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    };
    let head_timeout = entries().map(|c| c.head_timeout).max();
    let head_timeout = head_timeout.unwrap_or(config::DEFAULT_HEAD_TIMEOUT);
    let trusted = entries().map(|c| c.trusted_proxies.as_slice());
    let front = Front::joined(trusted, head_timeout, true);
    let listening = Listening::new("http", bind, cap, front, &connections.metrics);
    let keepalive_timeout = entries().map(|c| c.keepalive_timeout).max();
    let keepalive_timeout = keepalive_timeout.unwrap_or(config::DEFAULT_KEEPALIVE_TIMEOUT);
    let server = Arc::new(Server {
        routes,
        proxy: Proxy::new(ProxyTimeouts::default()),
        tls: tls.is_some(),
        connections: connections.clone(),
        listening: listening.clone(),
        head_timeout,
        keepalive_timeout,
        exchanges: TaskTracker::new(),
    });
    let serving = server.clone();
    super::accept(&listener, &listening, &connections, move |client| {
        let span = info_span!("http", peer = %client.addr, via = field::Empty);
        client.record_via(&span);
        accept(client, serving.clone(), tls.clone()).instrument(span)
    })
    .await;
    // Upgraded connections outlive the connection tasks that made them: wait for them like
    // for connections, and end them with the rest when the grace period is over.
    server.exchanges.close();
    connections.tracker.spawn(async move {
        tokio::select! {
            () = server.exchanges.wait() => {}
            () = server.connections.close_all.cancelled() => server.proxy.close().await,
        }
    });
}

async fn accept(client: Client, server: Arc<Server>, tls: Option<TlsAcceptor>) {
    // One deadline from the opening: the TLS handshake and the first request's head.
    let (peer, opened) = (client.addr, client.opened);
    let client = client.into_io();
    match tls {
        None => serve(client, peer, server, opened).await,
        Some(acceptor) => {
            let deadline = opened + server.head_timeout;
            let handshake = tokio::select! {
                handshake = tokio::time::timeout_at(deadline, acceptor.accept(client)) => handshake,
                () = server.connections.close_all.cancelled() => return,
            };
            let refusals = &server.listening.refusals;
            match handshake {
                Ok(Ok(stream)) => serve(stream, peer, server, opened).await,
                Ok(Err(e)) => refusals.refuse(
                    Refusal::Malformed,
                    format_args!("{peer}: TLS handshake failed: {e}"),
                ),
                Err(_) => refusals.refuse(
                    Refusal::HeadTimeout,
                    format_args!("{peer} did not finish its TLS handshake in time"),
                ),
            }
        }
    }
}

/// Runs hyper's task for h2 streams and upgrades on the connections' tracker, so a shutdown
/// waits for them like for any connection.
#[derive(Clone)]
struct Executor(TaskTracker);

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// Speaks HTTP/1.1 or HTTP/2 (by the client's preface) on one connection until it closes; on
/// shutdown, finishes the requests in flight and closes, or is cut at the end of the grace.
async fn serve<I>(io: I, peer: SocketAddr, server: Arc<Server>, opened: Instant)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connections = server.connections.clone();
    let flight = InFlight::new(opened);
    let (head_timeout, keepalive_timeout) = (server.head_timeout, server.keepalive_timeout);
    let listening = server.listening.clone();
    let in_flight = flight.clone();
    let handler = service_fn(move |request| {
        let server = server.clone();
        let busy = in_flight.begin();
        async move {
            let response = server.handle(request, peer).await;
            Ok::<_, Infallible>(response.map(|body| Tracked { body, busy }.boxed()))
        }
    });
    let mut builder = auto::Builder::new(Executor(connections.tracker.clone()));
    // Our own deadlines (`deadline.rs`) replace hyper's header timer.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), handler);
    tokio::pin!(connection);
    // A token of the connection's own: the select below polls it on every wake-up of the
    // connection, and polling the shared one would take its lock, shared by all connections.
    let stop_accepting = connections.stop_accepting.child_token();
    let served = tokio::select! {
        biased;
        served = connection.as_mut() => served,
        expired = flight.expired(head_timeout, keepalive_timeout) => {
            match expired {
                Expired::Head => listening.refusals.refuse(
                    Refusal::HeadTimeout,
                    format_args!("{peer} sent no complete request within head_timeout"),
                ),
                Expired::KeepAlive => debug!("Closing a connection idle past keepalive_timeout."),
            }
            return;
        }
        () = stop_accepting.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                served = connection.as_mut() => served,
                () = connections.close_all.cancelled() => {
                    debug!("Closing the connection: wakegate is shutting down.");
                    return;
                }
            }
        }
    };
    if let Err(e) = served {
        let parse = e
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse);
        if parse {
            // hyper has answered 400 (or 431) already.
            let why = format!("{peer}: {e}");
            listening.refusals.refuse(Refusal::Malformed, why);
        } else {
            debug!(error = %e, "Connection ended with an error.");
        }
    }
}

impl Server {
    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let host = request_host(&request);
        let routes = self.routes.load();
        let Some((index, route)) = routes.find(&host) else {
            debug!(host, "No service has this host name.");
            return text(
                StatusCode::NOT_FOUND,
                format!("No site named `{host}` is served here.\n"),
            );
        };
        if let Some(denied) = route.check.denied(peer.ip()) {
            let why = format!("{peer} for {}: {denied}", route.service.name());
            self.listening.refusals.refuse(Refusal::Denied, why);
            return text(
                StatusCode::FORBIDDEN,
                "This address may not use this site.\n".to_string(),
            );
        }
        if let Some(port) = route.config.redirect_https {
            return redirect(&host, port, &request);
        }
        let path = request.uri().path();
        if let Some(rest) = path.strip_prefix(page::RESERVED) {
            return self.reserved(route, rest, request.method());
        }
        let service = &route.service;
        if ignored(&route.config, &request) {
            // Never a wake, never activity: forwarded only when the backend is there anyway.
            let status = service.status();
            return match (status.state, status.address) {
                (State::Awake, Some(address)) => {
                    self.forward(routes.shared(index), request, address, peer, None)
                        .await
                }
                _ => self.unavailable(
                    route,
                    format!(
                        "{} is asleep; this request does not wake it.\n",
                        service.name()
                    ),
                ),
            };
        }
        // A request that joins a wake under way, or finds it awake, starts none.
        let state = service.state();
        if !matches!(state, State::Awake | State::Waking)
            && let Err(refused) = route.check.wake(peer.ip())
        {
            return self.rate_limited(route, peer, refused);
        }
        if state != State::Awake && self.wants_page(route, &request) {
            let by = format!(
                "a browser at {} ({} {host}{})",
                peer.ip(),
                request.method(),
                request.uri().path()
            );
            match service.wake_for_client(&by).await {
                // It became awake meanwhile: the app rather than a page that would reload.
                Ok(Ok(State::Awake)) => {}
                Ok(Ok(_)) => {
                    let view = page::View::of(service);
                    let template = route.config.page.as_deref().unwrap_or(page::BUILT_IN);
                    let html = page::render(template, service.name(), &view);
                    return page::page(html, retry_after(view.eta));
                }
                Ok(Err(denied)) => {
                    return text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{} cannot start now: {denied}\n", service.name()),
                    );
                }
                Err(gone) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{gone}\n")),
            }
        }
        let timeout = route.config.block_timeout;
        let held = match service.ticket_if_awake() {
            // Awake, the usual case: no timer, and no poll of the shared shutdown token (whose
            // lock every request would take).
            Some(ticket) => Ok(Ok(ticket)),
            // An HTTP/2 request runs in a task of its own: it must not outlive the grace period.
            None => tokio::select! {
                held = tokio::time::timeout(timeout, service.connect(peer)) => held,
                () = self.connections.close_all.cancelled() => Ok(Err(ConnectError::ShuttingDown)),
            },
        };
        let ticket = match held {
            Ok(Ok(ticket)) => ticket,
            Ok(Err(ConnectError::WakeFailed(_))) => {
                // The reason is in the events; a visitor learns only that it failed.
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("{} could not start. Try again later.\n", service.name()),
                );
            }
            Ok(Err(e)) => return self.unavailable(route, format!("{e}\n")),
            Err(_) => {
                let why = format!(
                    "{peer} for {}: not awake within block_timeout ({}); answered 503",
                    service.name(),
                    humantime::format_duration(timeout)
                );
                self.listening.refusals.refuse(Refusal::Unavailable, why);
                return self.unavailable(
                    route,
                    format!("{} is still starting. Try again shortly.\n", service.name()),
                );
            }
        };
        let address = ticket.address;
        self.forward(routes.shared(index), request, address, peer, Some(ticket))
            .await
    }

    /// Whether a request that arrives while the service is not awake gets the waiting page.
    fn wants_page(&self, route: &Route, request: &Request<Incoming>) -> bool {
        let readable = matches!(*request.method(), Method::GET | Method::HEAD);
        match route.config.strategy {
            Strategy::Block => false,
            Strategy::Page => readable,
            Strategy::Auto => readable && accepts_html(request),
        }
    }

    /// Answers the reserved paths the waiting page reads.
    fn reserved(&self, route: &Route, rest: &str, method: &Method) -> Response<Body> {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} only answers GET.\n", page::RESERVED),
            );
        }
        match rest {
            "/status" => page::status(&route.service),
            "/events" => page::events(
                route.service.clone(),
                self.connections.stop_accepting.clone(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                format!(
                    "{} is reserved by wakegate: it serves /status and /events.\n",
                    page::RESERVED
                ),
            ),
        }
    }

    /// 429 with Retry-After: the client's address has started its `wake_rate` of wakes.
    fn rate_limited(&self, route: &Route, peer: SocketAddr, refused: OverRate) -> Response<Body> {
        let why = format!("{peer} for {}: {refused}", route.service.name());
        self.listening.refusals.refuse(Refusal::RateLimited, why);
        let wait = refused.retry_after_secs();
        let mut response = text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{} is asleep, and your address has woken it too often. Try again in {wait} s.\n",
                route.service.name()
            ),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(wait));
        response
    }

    /// 503 with Retry-After: the expected rest of the boot.
    fn unavailable(&self, route: &Route, message: String) -> Response<Body> {
        let view = page::View::of(&route.service);
        let mut response = text(StatusCode::SERVICE_UNAVAILABLE, message);
        response
            .headers_mut()
            .insert(RETRY_AFTER, seconds(retry_after(view.eta)));
        response
    }

    /// Hands the request to the proxy. The ticket (when the request counts as activity) lives
    /// until the response body is sent, and with an upgraded connection as long as it is open.
    async fn forward(
        self: &Arc<Self>,
        route: Arc<Route>,
        request: Request<Incoming>,
        address: SocketAddr,
        peer: SocketAddr,
        ticket: Option<Ticket>,
    ) -> Response<Body> {
        let ticket = ticket.map(Arc::new);
        let guard: proxy::Guard = Box::new((ticket.clone(), self.exchanges.token()));
        match self
            .proxy
            .forward(request, address, peer, self.tls, Some(guard))
            .await
        {
            Ok(response) => match ticket {
                Some(ticket) => response.map(|body| Guarded { body, ticket }.boxed()),
                None => response,
            },
            Err(ProxyError::ClientBody(e)) => {
                // The client's fault, not the backend's: no 502, no re-check. If the client is
                // still there, it learns why.
                let why = format!("{peer}: broken request body: {e}");
                self.listening.refusals.refuse(Refusal::Malformed, why);
                let mut response = text(
                    StatusCode::BAD_REQUEST,
                    format!("The request body was malformed or cut short ({e}).\n"),
                );
                response
                    .headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
            Err(ProxyError::Connect(e)) if super::out_of_resources(&e) => {
                // wakegate's own shortage, not the backend's failure: no re-check.
                let why = format!("{peer}: cannot connect to the backend: {e}");
                self.listening.refusals.refuse(Refusal::FdExhausted, why);
                self.unavailable(
                    &route,
                    "The gateway is out of file descriptors. Try again shortly.\n".to_string(),
                )
            }
            Err(ProxyError::Timeout) => {
                // Not even a connection: as good a reason as a refusal to check it is there.
                self.recheck(route, address);
                text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The server did not answer in time.\n".to_string(),
                )
            }
            Err(e) => {
                warn!(service = route.service.name(), backend = %address, error = %e, "The backend did not answer a request; answering 502.");
                self.recheck(route, address);
                text(
                    StatusCode::BAD_GATEWAY,
                    "The server did not answer. Try again shortly.\n".to_string(),
                )
            }
        }
    }

    /// After a request the backend failed, checks that it still accepts connections; if not,
    /// the service is told its backend is unhealthy, which restarts it (within the crash-loop
    /// breaker). One check at a time per service.
    fn recheck(self: &Arc<Self>, route: Arc<Route>, address: SocketAddr) {
        if route.rechecking.swap(true, Ordering::AcqRel) {
            return;
        }
        self.connections.tracker.spawn(async move {
            if let Err(e) = probe::run(&Check::default(), address, None).await {
                let reason =
                    format!("the backend stopped answering HTTP requests ({e}); restarting it");
                let _ = route.service.unhealthy(HealthAction::Restart, reason).await;
            }
            route.rechecking.store(false, Ordering::Release);
        });
    }
}

/// The host a request is for: from the URI (HTTP/2, absolute form) or the Host header,
/// lower-case, without port and trailing dot.
pub fn request_host<B>(request: &Request<B>) -> String {
    let raw = match request.uri().host() {
        Some(host) => host,
        None => request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(strip_port)
            .unwrap_or(""),
    };
    raw.trim_end_matches('.').to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets, as in a URI.
        return rest.find(']').map_or(host, |end| &host[..end + 2]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn accepts_html<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html"))
}

/// Whether a request is one that never wakes the service nor counts as activity.
fn ignored<B>(config: &Http, request: &Request<B>) -> bool {
    let path = request.uri().path();
    let by_path = config
        .ignore_paths
        .iter()
        .any(|p| match p.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == p,
        });
    by_path
        || request
            .headers()
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|agent| {
                let agent = agent.to_ascii_lowercase();
                config
                    .ignore_user_agents
                    .iter()
                    .any(|a| agent.contains(a.as_str()))
            })
}

/// 308 to the same URL over https.
fn redirect<B>(host: &str, port: u16, request: &Request<B>) -> Response<Body> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let mut response = text(
        StatusCode::PERMANENT_REDIRECT,
        format!("This site is served over https: {location}\n"),
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// How long a client should wait before it tries again.
fn retry_after(eta: Option<Duration>) -> Duration {
    eta.filter(|e| !e.is_zero()).unwrap_or(RETRY_UNKNOWN)
}

/// A Retry-After value: whole seconds, at least one.
fn seconds(wait: Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text answer of wakegate's own.
fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(full(message));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A response body that holds the request's ticket until it is sent (or dropped), and counts
/// the bytes sent to the client.
struct Guarded {
    body: Body,
    ticket: Arc<Ticket>,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let (_, out): (&AtomicU64, &AtomicU64) = self.ticket.byte_counters();
            out.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        let request = |host: &str| {
            Request::builder()
                .uri("/x")
                .header(HOST, host)
                .body(())
                .unwrap()
        };
        assert_eq!(
            request_host(&request("App.Example.com:8080")),
            "app.example.com"
        );
        assert_eq!(request_host(&request("example.com.")), "example.com");
        assert_eq!(request_host(&request("[::1]:80")), "[::1]");
        let h2 = Request::builder()
            .uri("https://h2.example.com/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2), "h2.example.com");
    }

    fn http(paths: &[&str], agents: &[&str]) -> Http {
        Http {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            hostnames: Vec::new(),
            default: false,
            strategy: Strategy::Auto,
            block_timeout: Duration::from_secs(30),
            tls: None,
            redirect_https: None,
            page: None,
            ignore_paths: paths.iter().map(|p| p.to_string()).collect(),
            ignore_user_agents: agents.iter().map(|a| a.to_string()).collect(),
            head_timeout: config::DEFAULT_HEAD_TIMEOUT,
            keepalive_timeout: config::DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections_per_address: 256,
            rules: Default::default(),
            trusted_proxies: Vec::new(),
        }
    }

    #[test]
    fn ignored_paths_are_exact_or_prefixes_and_agents_any_case() {
        let config = http(&["/robots.txt", "/status/*"], &["kube-probe", "googlebot"]);
        let request = |path: &str, agent: &str| {
            Request::builder()
                .uri(path)
                .header(USER_AGENT, agent)
                .body(())
                .unwrap()
        };
        assert!(ignored(&config, &request("/robots.txt", "curl")));
        assert!(!ignored(&config, &request("/robots.txt.bak", "curl")));
        assert!(ignored(&config, &request("/status/db", "curl")));
        assert!(ignored(&config, &request("/status/", "curl")));
        assert!(!ignored(&config, &request("/status", "curl")));
        assert!(ignored(&config, &request("/", "kube-probe/1.29")));
        assert!(ignored(
            &config,
            &request("/", "Mozilla/5.0 (compatible; Googlebot/2.1)")
        ));
        assert!(!ignored(
            &config,
            &request("/", "Mozilla/5.0 Firefox/130.0")
        ));
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let view = page::View {
            state: State::Waking,
            step: None,
            elapsed: Duration::from_millis(1500),
            eta: None,
        };
        let html = page::render(
            "{{service}}|{{state}}|{{eta_seconds}}|{{elapsed_seconds}}|{{base}}",
            "<a&b>",
            &view,
        );
        assert_eq!(html, "&lt;a&amp;b&gt;|waking||1.5|/.wakegate");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(seconds(Duration::from_millis(1500)), "2");
        assert_eq!(seconds(Duration::ZERO), "1");
        assert_eq!(retry_after(None), RETRY_UNKNOWN);
    }
}
