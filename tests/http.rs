//! The http listener with real sockets: a real child process (wakegate's demo web server) or a
//! small hyper server in the test as the backend, hyper clients over HTTP/1.1, h2c and TLS,
//! and a real headless Chromium (tests/browser/waiting.mjs) for the waiting page.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use wakegate::app::App;
use wakegate::event::{Kind, State};

/// What a request got back.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

/// Sends one request over a fresh HTTP/1.1 connection (over `tls` when given).
async fn request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut builder = Request::get(path).header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Empty::<Bytes>::new()).unwrap();
    let response = match tls {
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
            let stream = connector.connect(name, tcp).await.unwrap();
            send(TokioIo::new(stream), req).await
        }
        None => send(TokioIo::new(tcp), req).await,
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn send<I>(io: I, req: Request<Empty<Bytes>>) -> Response<hyper::body::Incoming>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(connection);
    sender.send_request(req).await.unwrap()
}

async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    tokio::time::timeout(DEADLINE, request(addr, host, path, headers, None))
        .await
        .expect("no answer in time")
}

/// A small web server that answers every request with its name, what was asked and the
/// forwarding headers it got; `/slow` answers after two seconds and `/ws` is a WebSocket echo.
/// It stops, connections and all, when the returned token is cancelled.
async fn stoppable_backend(name: &'static str) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = stopped.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => return,
                },
            };
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(name, req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    () = stopped.cancelled() => {}
                }
            });
        }
    });
    (addr, stop)
}

async fn named_backend(name: &'static str) -> SocketAddr {
    stoppable_backend(name).await.0
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    name: &'static str,
    mut req: Request<hyper::body::Incoming>,
) -> Result<Response<TestBody>, std::convert::Infallible> {
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let text = format!(
        "{name} {} {} forwarded-host={} proto={}",
        req.method(),
        req.uri().path(),
        header("x-forwarded-host"),
        header("x-forwarded-proto"),
    );
    match req.uri().path() {
        "/slow" => tokio::time::sleep(Duration::from_secs(2)).await,
        "/ws" => {
            let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
            let accept = tungstenite::handshake::derive_accept_key(&key);
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = upgrade.await.unwrap();
                let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() && socket.send(message).await.is_err() {
                        return;
                    }
                }
            });
            return Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(Empty::new().boxed())
                .unwrap());
        }
        _ => {}
    }
    Ok(Response::new(
        http_body_util::Full::new(Bytes::from(text)).boxed(),
    ))
}

/// An exec service in front of an always-running backend: waking is instant.
fn exec_service(name: &str, backend: SocketAddr) -> Service {
    svc(name).idle("10m").exec_true(backend)
}

/// A process service running the demo web server, which opens its port after `delay`.
fn demo_service(name: &str, backend: SocketAddr, delay: &str) -> Service {
    let listen = backend.to_string();
    let command = [
        WAKEGATE,
        "demo-backend",
        "--listen",
        &listen,
        "--boot-delay",
        delay,
    ];
    svc(name).idle("10m").process(&command, backend)
}

/// Starts a gateway in `dir` with `services`.
async fn start(dir: &Path, services: impl IntoIterator<Item = Service>) -> App {
    services
        .into_iter()
        .fold(gateway(dir), Config::service)
        .start()
        .await
}

/// Where the screenshots stay after the run, for people to look at.
fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_api_requests_during_a_wake_are_all_answered_by_the_backend() {
    let dir = temp_dir("http-block");
    let backend = free_addr();
    let app = start(&dir, [demo_service("api", backend, "800ms").http(ANY_PORT)]).await;
    let service = app.service("api").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let addr = app.listen_addr("api").unwrap();

    let requests: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                let path = format!("/v1/items/{i}");
                get(
                    addr,
                    "api.example.test",
                    &path,
                    &[("accept", "application/json")],
                )
                .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for r in requests {
        answers.push(r.await.unwrap());
    }
    let transitions: Vec<State> = app
        .store()
        .events(0, Some("api"), 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == Kind::Transition)
        .map(|e| e.state)
        .collect();
    app.shutdown().await;

    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.status, StatusCode::OK, "request {i}: {answer:?}");
        assert!(
            answer.body.contains("This page comes from the demo server"),
            "request {i} was not answered by the backend: {answer:?}"
        );
    }
    assert_eq!(
        transitions,
        [State::Asleep, State::Waking, State::Awake],
        "one wake for all fifty requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_the_waiting_page_and_lands_on_the_app_by_itself() {
    let dir = temp_dir("http-page");
    let backend = free_addr();
    // Two seconds of boot, so there is a wake to watch.
    let app = start(&dir, [demo_service("blog", backend, "2s").http(ANY_PORT)]).await;
    let service = app.service("blog").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let site = format!(
        "http://{}/posts/first?x=1",
        app.listen_addr("blog").unwrap()
    );

    let artifacts = artifacts();
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("waiting-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/waiting.mjs");
    let browser = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&site)
        .arg("blog")
        .arg("This page comes from the demo server")
        .arg(&screenshot)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(Duration::from_secs(120), browser).await;
    let state = service.status().state;
    let awake_at = app
        .store()
        .events(0, Some("blog"), 100)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == Kind::Transition && e.state == State::Awake)
        .map(|e| e.time);
    app.shutdown().await;

    let stdout = browser_passed(run.expect("the browser test did not finish in time"));
    assert_eq!(state, State::Awake);
    // How long after the service became awake the browser had the app: printed, not
    // asserted (a figure for people, not a timing target).
    let awake_at = awake_at.expect("no transition to awake was recorded");
    if let Some(ms) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("app-answered-at-ms "))
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        let answered = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let after = answered.duration_since(awake_at).unwrap_or_default();
        println!(
            "The browser had the app {} ms after the service was awake.",
            after.as_millis()
        );
    }
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_route_to_their_service_and_unknown_hosts_to_the_default() {
    let dir = temp_dir("http-hosts");
    let (shop, blog) = (named_backend("shop").await, named_backend("blog").await);
    let bind = free_addr();
    let app = start(
        &dir,
        [
            exec_service("shop", shop).listen(
                listener("http", bind)
                    .set("hostnames", ["shop.example.test"])
                    .set("default", true),
            ),
            exec_service("blog", blog).listen(
                listener("http", bind)
                    .set("hostnames", ["*.blog.example.test", "blog.example.test"]),
            ),
        ],
    )
    .await;
    let json = [("accept", "application/json")];

    let a = get(bind, "shop.example.test", "/cart", &json).await;
    let b = get(bind, "Blog.Example.Test:8080", "/post", &json).await;
    let c = get(bind, "en.blog.example.test", "/post", &json).await;
    let d = get(bind, "unknown.example.test", "/", &json).await;
    let e = get(bind, "a.b.blog.example.test", "/", &json).await;
    app.shutdown().await;

    assert_eq!(
        a.body,
        "shop GET /cart forwarded-host=shop.example.test proto=http"
    );
    assert_eq!(
        b.body,
        "blog GET /post forwarded-host=Blog.Example.Test:8080 proto=http"
    );
    assert!(c.body.starts_with("blog GET /post"), "{c:?}");
    assert!(
        d.body.starts_with("shop GET /"),
        "the default takes unknown hosts: {d:?}"
    );
    // A wildcard stands for one label only.
    assert!(e.body.starts_with("shop GET /"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_an_unknown_host_is_told_so() {
    let dir = temp_dir("http-nodefault");
    let backend = named_backend("only").await;
    let listen = listener("http", ANY_PORT).set("hostnames", ["only.example.test"]);
    let app = start(&dir, [exec_service("only", backend).listen(listen)]).await;
    let addr = app.listen_addr("only").unwrap();
    let known = get(addr, "only.example.test", "/", &[]).await;
    let unknown = get(addr, "other.example.test", "/", &[]).await;
    app.shutdown().await;
    assert_eq!(known.status, StatusCode::OK);
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body.contains("other.example.test"), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checkers_bots_and_their_paths_never_wake_the_service() {
    let dir = temp_dir("http-ignore");
    let backend = named_backend("site").await;
    let listen = listener("http", ANY_PORT).set("ignore_paths", ["/healthz", "/status/*"]);
    let app = start(&dir, [exec_service("site", backend).listen(listen)]).await;
    let service = app.service("site").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let addr = app.listen_addr("site").unwrap();

    let mut ignored = Vec::new();
    for (path, agent) in [
        ("/healthz", "curl/8.0"),
        ("/status/db", "curl/8.0"),
        ("/", "kube-probe/1.29"),
        (
            "/",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        ),
        ("/", "ELB-HealthChecker/2.0"),
    ] {
        let answer = get(addr, "site.test", path, &[("user-agent", agent)]).await;
        ignored.push((path, agent, answer));
    }
    // Answered without asking the service: had one of them woken it, it would be waking now.
    let after_ignored = service.status().state;
    let wakes_after_ignored = app
        .store()
        .events(0, Some("site"), 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.state == State::Waking)
        .count();
    let real = get(addr, "site.test", "/", &[("user-agent", "curl/8.0")]).await;
    // Now awake: a checker is forwarded, but still is no activity.
    let checked = get(addr, "site.test", "/healthz", &[]).await;
    app.shutdown().await;

    for (path, agent, answer) in &ignored {
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path} by {agent}: {answer:?}"
        );
        assert!(answer.headers.contains_key("retry-after"));
        assert!(answer.body.contains("does not wake it"), "{answer:?}");
    }
    assert_eq!(after_ignored, State::Asleep);
    assert_eq!(wakes_after_ignored, 0);
    assert_eq!(real.body, "site GET / forwarded-host=site.test proto=http");
    assert_eq!(
        checked.body,
        "site GET /healthz forwarded-host=site.test proto=http"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_block_timeout_a_request_gets_503_with_retry_after() {
    let dir = temp_dir("http-timeout");
    let backend = free_addr();
    let listen = listener("http", ANY_PORT)
        .set("strategy", "block")
        .set("block_timeout", "1s");
    let app = start(&dir, [demo_service("slow", backend, "4s").listen(listen)]).await;
    let service = app.service("slow").unwrap().clone();
    let addr = app.listen_addr("slow").unwrap();
    // A browser too: with strategy = "block" it is held like any client.
    let early = get(addr, "slow.test", "/", &[("accept", "text/html")]).await;
    let state_then = service.status().state;
    wait_state(&service, State::Awake).await;
    let later = get(addr, "slow.test", "/", &[("accept", "text/html")]).await;
    app.shutdown().await;

    assert_eq!(early.status, StatusCode::SERVICE_UNAVAILABLE, "{early:?}");
    let retry: u64 = early.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "Retry-After: {retry}");
    assert!(early.body.contains("still starting"), "{early:?}");
    assert_eq!(state_then, State::Waking);
    assert_eq!(later.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_page_and_its_event_stream_need_no_token() {
    let dir = temp_dir("http-stream");
    let backend = free_addr();
    let app = start(&dir, [demo_service("docs", backend, "1s").http(ANY_PORT)]).await;
    let service = app.service("docs").unwrap().clone();
    let addr = app.listen_addr("docs").unwrap();

    // The stream first, while asleep: it must not wake anything by itself.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let req = Request::get("/.wakegate/events")
        .header("host", "docs.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let stream = sender.send_request(req).await.unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut body = stream.into_body();
    let mut seen = String::new();
    let mut next_chunk = async || {
        let frame = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("the stream said nothing in time")
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&frame.into_data().unwrap()).into_owned()
    };
    seen.push_str(&next_chunk().await);
    assert!(seen.contains("\"state\":\"asleep\""), "{seen}");
    assert_eq!(service.status().state, State::Asleep);

    let page = get(addr, "docs.test", "/guide", &[("accept", "text/html,*/*")]).await;
    while !seen.contains("\"state\":\"awake\"") {
        seen.push_str(&next_chunk().await);
    }
    let metrics = wakegate::metrics::render(app.services());
    app.shutdown().await;

    // The page's wake is a client's, not the API's.
    assert!(
        metrics.contains("wakegate_wakes_total{service=\"docs\",trigger=\"client\"} 1"),
        "{metrics}"
    );

    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(
        page.body.contains("<title>docs is starting"),
        "{}",
        page.body
    );
    assert!(seen.contains("\"state\":\"waking\""), "{seen}");
    // A visitor learns the state and the step, never where the backend is.
    assert!(!seen.contains(&backend.to_string()), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let dir = temp_dir("http-h2c");
    let backend = named_backend("h2").await;
    let app = start(&dir, [exec_service("h2", backend).http(ANY_PORT)]).await;
    let addr = app.listen_addr("h2").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for path in ["/one", "/two"] {
        let req = Request::get(format!("http://h2.example.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        bodies.push(String::from_utf8_lossy(&body).into_owned());
    }
    app.shutdown().await;
    assert_eq!(
        bodies,
        [
            "h2 GET /one forwarded-host=h2.example.test proto=http",
            "h2 GET /two forwarded-host=h2.example.test proto=http"
        ]
    );
}

/// A self-signed certificate for `name`, written as PEM files in `dir`.
fn self_signed(
    dir: &Path,
    name: &str,
) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, certified.cert.der().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_picks_each_services_certificate_by_sni_and_plain_http_redirects() {
    let dir = temp_dir("http-tls");
    let (a_cert, a_key, a_der) = self_signed(&dir, "a.example.test");
    let (b_cert, b_key, b_der) = self_signed(&dir, "b.example.test");
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let (secure, plain) = (free_addr(), free_addr());
    let tls_on = |host: &str, cert: &Path, key: &Path| {
        listener("http", secure)
            .set("hostnames", [host])
            .set("tls_cert", cert)
            .set("tls_key", key)
    };
    let app = start(
        &dir,
        [
            exec_service("a", a)
                .listen(tls_on("a.example.test", &a_cert, &a_key))
                .listen(
                    listener("http", plain)
                        .set("redirect_https", true)
                        .set("https_port", secure.port()),
                ),
            exec_service("b", b).listen(tls_on("b.example.test", &b_cert, &b_key)),
        ],
    )
    .await;

    // A client that trusts both certificates, and records which one it was shown.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(a_der.clone()).unwrap();
    roots.add(b_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut h2_config = config.clone();
    h2_config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let shown = async |host: &str| {
        let tcp = TcpStream::connect(secure).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let a_shown = shown("a.example.test").await;
    let b_shown = shown("b.example.test").await;
    let a_answer = request(secure, "a.example.test", "/x", &[], Some(&connector)).await;
    let b_answer = request(secure, "b.example.test", "/y", &[], Some(&connector)).await;
    let redirected = get(plain, "a.example.test", "/path?q=1", &[]).await;
    // HTTP/2 over TLS, chosen by ALPN.
    let tcp = TcpStream::connect(secure).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("b.example.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(h2_config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let req = Request::get("https://b.example.test/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let h2_answer = h2.send_request(req).await.unwrap();
    let h2_version = h2_answer.version();
    let h2_body = h2_answer.into_body().collect().await.unwrap().to_bytes();
    app.shutdown().await;

    assert_eq!(h2_version, hyper::Version::HTTP_2);
    assert_eq!(
        h2_body,
        "b GET /h2 forwarded-host=b.example.test proto=https"
    );

    assert_eq!(a_shown, a_der);
    assert_eq!(b_shown, b_der);
    assert_eq!(
        a_answer.body,
        "a GET /x forwarded-host=a.example.test proto=https"
    );
    assert_eq!(
        b_answer.body,
        "b GET /y forwarded-host=b.example.test proto=https"
    );
    assert_eq!(redirected.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        redirected.headers["location"],
        HeaderValue::from_str(&format!(
            "https://a.example.test:{}/path?q=1",
            secure.port()
        ))
        .unwrap()
    );
}

/// When the service was last put to sleep for being idle, if it was.
fn stopping_times(app: &App, service: &str) -> Vec<std::time::SystemTime> {
    app.store()
        .events(0, Some(service), 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == Kind::Transition && e.state == State::Stopping)
        .map(|e| e.time)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_keeps_the_service_awake_and_it_sleeps_once_idle() {
    let dir = temp_dir("http-inflight");
    let backend = named_backend("slow").await;
    let app = start(
        &dir,
        [exec_service("slow", backend).idle("500ms").http(ANY_PORT)],
    )
    .await;
    let service = app.service("slow").unwrap().clone();
    let addr = app.listen_addr("slow").unwrap();

    // Two seconds in flight, four idle timeouts long.
    let answer = get(addr, "slow.test", "/slow", &[]).await;
    let answered = std::time::SystemTime::now();
    let stopped_while_in_flight = stopping_times(&app, "slow");
    wait_state(&service, State::Asleep).await;
    let stops = stopping_times(&app, "slow");
    app.shutdown().await;

    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        stopped_while_in_flight.is_empty(),
        "stopped with a request in flight"
    );
    assert_eq!(stops.len(), 1);
    assert!(stops[0] >= answered, "the idle stop came before the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_the_service_awake() {
    let dir = temp_dir("http-websocket");
    let backend = named_backend("chat").await;
    let app = start(
        &dir,
        [exec_service("chat", backend).idle("500ms").http(ANY_PORT)],
    )
    .await;
    let service = app.service("chat").unwrap().clone();
    let addr = app.listen_addr("chat").unwrap();

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://chat.test/ws", tcp)
        .await
        .unwrap();
    socket
        .send(tungstenite::Message::text("hello"))
        .await
        .unwrap();
    let first = socket.next().await.unwrap().unwrap();
    // The scenario itself: the socket stays open, quiet, for four idle timeouts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state_while_open = service.status().state;
    socket
        .send(tungstenite::Message::text("still here"))
        .await
        .unwrap();
    let second = socket.next().await.unwrap().unwrap();
    socket.close(None).await.unwrap();
    // The closing handshake, then the connection goes.
    while let Some(Ok(_)) = socket.next().await {}
    drop(socket);
    let closed = std::time::SystemTime::now();
    wait_state(&service, State::Asleep).await;
    let stops = stopping_times(&app, "chat");
    app.shutdown().await;

    assert_eq!(first.into_text().unwrap(), "hello");
    assert_eq!(second.into_text().unwrap(), "still here");
    assert_eq!(state_while_open, State::Awake);
    assert_eq!(stops.len(), 1);
    assert!(
        stops[0] >= closed,
        "the idle stop came while the socket was open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_vanishes_gives_502_and_a_readiness_check() {
    let dir = temp_dir("http-vanish");
    let (backend, stop) = stoppable_backend("gone").await;
    let service = exec_service("gone", backend)
        .wake_timeout("2s")
        .http(ANY_PORT);
    let app = start(&dir, [service]).await;
    let service = app.service("gone").unwrap().clone();
    let mut events = service.subscribe();
    let addr = app.listen_addr("gone").unwrap();

    let before = get(addr, "gone.test", "/", &[]).await;
    stop.cancel();
    let after = get(addr, "gone.test", "/", &[]).await;
    let seen = events_until(&mut events, |e| e.kind == Kind::Warning).await;
    app.shutdown().await;

    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(after.status, StatusCode::BAD_GATEWAY, "{after:?}");
    let warning = seen.last().unwrap();
    assert!(
        warning.reason.contains("stopped answering HTTP requests"),
        "{warning:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_template_file_replaces_the_built_in_page() {
    let dir = temp_dir("http-template");
    let template = dir.join("waiting.html");
    std::fs::write(
        &template,
        "<!doctype html><title>{{service}}</title><p id=s>{{state}}</p><script src=\"{{base}}/events\"></script>",
    )
    .unwrap();
    let backend = free_addr();
    let listen = listener("http", ANY_PORT)
        .set("strategy", "page")
        .set("page", &template);
    let app = start(&dir, [demo_service("shop", backend, "1s").listen(listen)]).await;
    let service = app.service("shop").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let addr = app.listen_addr("shop").unwrap();
    // strategy = "page": even a client that does not ask for HTML gets the page.
    let page = get(addr, "shop.test", "/", &[("accept", "*/*")]).await;
    wait_state(&service, State::Awake).await;
    app.shutdown().await;

    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.body
            .starts_with("<!doctype html><title>shop</title><p id=s>")
            && page
                .body
                .ends_with("<script src=\"/.wakegate/events\"></script>"),
        "{}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_open_websockets_after_the_grace_period() {
    let dir = temp_dir("http-shutdown");
    let backend = named_backend("live").await;
    let app = start(&dir, [exec_service("live", backend).http(ANY_PORT)]).await;
    let addr = app.listen_addr("live").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async("ws://live.test/ws", tcp)
        .await
        .unwrap();
    socket.send(tungstenite::Message::text("hi")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap().into_text().unwrap(),
        "hi"
    );

    // shutdown_grace is 2 s in the tests' gateway config: the socket is open that long, then cut.
    let started = std::time::Instant::now();
    tokio::time::timeout(DEADLINE, app.shutdown())
        .await
        .expect("the shutdown waited past the grace period for an open WebSocket");
    let took = started.elapsed();
    let after = tokio::time::timeout(DEADLINE, socket.next()).await.unwrap();
    assert!(
        !matches!(after, Some(Ok(tungstenite::Message::Text(_)))),
        "the WebSocket is still open after the shutdown: {after:?}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "the grace period was not given: {took:?}"
    );
}

/// 1 GiB each way through the real gateway binary, in its own process so that its memory is
/// its own: a listener or proxy that buffered bodies would grow by about that much.
const HUGE: u64 = 1 << 30;
/// A generous bound: the buffers of a few connections, nowhere near a body.
const RSS_GROWTH_LIMIT: u64 = 64 << 20;
const CHUNK: usize = 64 << 10;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// `n` bytes of zeros as a streamed body; `each` is called every 16 MiB.
fn zeros(n: u64, mut each: impl FnMut() + Send + Sync + 'static) -> TestBody {
    let chunks = n / CHUNK as u64;
    let stream = futures_util::stream::iter(0..chunks).map(move |i| {
        if i % 256 == 0 {
            each();
        }
        Ok(hyper::body::Frame::data(Bytes::from_static(&ZEROS)))
    });
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

/// A backend that sends `n` bytes for `GET /bytes?n=N` and answers an upload with the number
/// of bytes it read.
async fn bulk_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let query = req.uri().query().unwrap_or("").to_string();
                        let body = match query.strip_prefix("n=") {
                            Some(n) => zeros(n.parse().unwrap(), || {}),
                            None => {
                                let mut body = req.into_body();
                                let mut read = 0u64;
                                while let Some(frame) = body.frame().await {
                                    read +=
                                        frame.unwrap().into_data().map_or(0, |d| d.len() as u64);
                                }
                                http_body_util::Full::new(Bytes::from(read.to_string())).boxed()
                            }
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(body))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("no VmRSS in /proc/PID/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_download_and_upload_stream_through_the_gateway_with_bounded_memory() {
    let dir = temp_dir("http-huge");
    let backend = bulk_backend().await;
    let bind = free_addr();
    let config = gateway(&dir)
        .service(exec_service("bulk", backend).http(bind))
        .write(&dir.join("wakegate.toml"));
    // The harness reads its log all along, so that wakegate never blocks on a full pipe.
    let gateway = tokio::task::block_in_place(|| Wakegate::start(&config));
    let pid = gateway.pid();

    let (mut client, connection) = hyper::client::conn::http1::handshake(TokioIo::new(
        TcpStream::connect(bind).await.unwrap(),
    ))
    .await
    .unwrap();
    tokio::spawn(connection);
    // A first request wakes the service and lets the gateway settle its buffers.
    let first = Request::get("/bytes?n=65536")
        .header("host", "bulk")
        .body(zeros(0, || {}))
        .unwrap();
    let first = client.send_request(first).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.into_body().collect().await.unwrap();
    let before = rss_of(pid);

    let download = Request::get(format!("/bytes?n={HUGE}"))
        .header("host", "bulk")
        .body(zeros(0, || {}))
        .unwrap();
    client.ready().await.unwrap();
    let response = client.send_request(download).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let (mut received, mut peak, mut next_look) = (0u64, before, 0u64);
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().unwrap().len() as u64;
        if received >= next_look {
            peak = peak.max(rss_of(pid));
            next_look += 16 << 20;
        }
    }
    assert_eq!(received, HUGE, "the whole download came through");
    assert!(
        peak - before < RSS_GROWTH_LIMIT,
        "the gateway grew by {} MiB during a 1 GiB download",
        (peak - before) >> 20
    );

    let upload_peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let watch = upload_peak.clone();
    let upload = Request::post("/upload")
        .header("host", "bulk")
        .header("content-length", HUGE.to_string())
        .body(zeros(HUGE, move || {
            watch.fetch_max(rss_of(pid), std::sync::atomic::Ordering::Relaxed);
        }))
        .unwrap();
    client.ready().await.unwrap();
    let response = client.send_request(upload).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let read = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(read, HUGE.to_string(), "the backend read the whole upload");
    let peak = upload_peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak - before < RSS_GROWTH_LIMIT,
        "the gateway grew by {} MiB during a 1 GiB upload",
        (peak - before) >> 20
    );
}
