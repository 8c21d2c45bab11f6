//! The reverse proxy of `http` listeners on its own: a small front server in each test hands
//! every request to `Proxy::forward`, in front of a real HTTP backend (a hyper server in the
//! test) or of a raw socket that misbehaves on purpose. Clients are a hyper client, a WebSocket
//! client and raw TCP.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::DEADLINE;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use wakegate::listener::http::proxy::{Guard, Proxy, ProxyError, ProxyTimeouts};

type ClientBody = BoxBody<Bytes, Infallible>;

// ---------------------------------------------------------------------------------------------
// Headers.

#[tokio::test]
async fn the_backend_gets_forwarding_headers_and_no_hop_by_hop_headers() {
    let backend = Backend::start().await;
    let front = Front::start(Proxy::new(ProxyTimeouts::default()), backend.addr).await;
    let mut client = front.client().await;

    let request = Request::get("/headers?x=1")
        .header("host", "app.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7")
        .header("connection", "keep-alive, x-hop-request")
        .header("x-hop-request", "gone")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic eDp5")
        .header("te", "trailers")
        .header("upgrade", "something")
        .header("cookie", "session=abc")
        .header("x-custom", "kept")
        .body(empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();

    // The backend's response comes back as it was sent, less its hop-by-hop headers.
    assert_eq!(response.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
    let headers = response.headers();
    assert_eq!(headers["x-backend"], "yes");
    let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    for hop in ["x-hop-response", "keep-alive", "proxy-authenticate"] {
        assert!(!headers.contains_key(hop), "{hop} reached the client");
    }

    let seen = text(response).await;
    let seen: Vec<&str> = seen.lines().collect();
    for line in [
        "path: /headers?x=1",
        "host: app.example.com",
        "x-forwarded-for: 203.0.113.7, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: app.example.com",
        "forwarded: for=203.0.113.7, for=127.0.0.1;host=app.example.com;proto=http",
        "cookie: session=abc",
        "x-custom: kept",
        "version: HTTP/1.1",
    ] {
        assert!(
            seen.contains(&line),
            "the backend did not see `{line}`: {seen:#?}"
        );
    }
    for hop in [
        "connection",
        "x-hop-request",
        "keep-alive",
        "proxy-authorization",
        "te",
        "upgrade",
    ] {
        assert!(
            !seen.iter().any(|l| l.starts_with(&format!("{hop}:"))),
            "the backend got the hop-by-hop header {hop}: {seen:#?}"
        );
    }
}

#[tokio::test]
async fn a_host_with_a_port_is_quoted_in_forwarded() {
    let backend = Backend::start().await;
    let front = Front::start(Proxy::new(ProxyTimeouts::default()), backend.addr).await;
    let mut client = front.client().await;
    let request = Request::get("/headers")
        .header("host", "app.example.com:8443")
        .body(empty())
        .unwrap();
    let seen = text(client.send_request(request).await.unwrap()).await;
    assert!(
        seen.lines()
            .any(|l| l == "forwarded: for=127.0.0.1;host=\"app.example.com:8443\";proto=http"),
        "{seen}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bodies.

#[tokio::test]
async fn a_request_body_reaches_the_backend_and_a_chunked_response_comes_back() {
    let backend = Backend::start().await;
    let front = Front::start(Proxy::new(ProxyTimeouts::default()), backend.addr).await;
    let mut client = front.client().await;

    let request = Request::post("/upload")
        .header("host", "app")
        .body(Full::new(Bytes::from_static(b"hello, backend")).boxed())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "14");

    // No length known in advance: the backend sends chunks, the client gets them all.
    let request = Request::get("/chunked?n=300000")
        .header("host", "app")
        .body(empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert!(!response.headers().contains_key("content-length"));
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 300_000);
    assert!(body.iter().enumerate().all(|(i, &b)| b == pattern_byte(i)));
}

/// 1 GiB each way through the proxy while this process's resident memory is watched: a proxy
/// that buffers would grow by about that much.
const HUGE: u64 = 1 << 30;
/// A generous bound: buffers of a few connections, nowhere near a body.
const RSS_GROWTH_LIMIT: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_download_streams_with_bounded_memory() {
    let backend = Backend::start().await;
    let front = Front::start(Proxy::new(ProxyTimeouts::default()), backend.addr).await;
    let mut client = front.client().await;
    let before = rss();

    let request = Request::get(format!("/bytes?n={HUGE}"))
        .header("host", "app")
        .body(empty())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], HUGE.to_string());
    let mut body = response.into_body();
    let (mut received, mut peak) = (0u64, before);
    let mut next_look = 0u64;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        received += data.len() as u64;
        if received >= next_look {
            peak = peak.max(rss());
            next_look += 16 << 20;
        }
    }
    assert_eq!(received, HUGE);
    let growth = peak.saturating_sub(before);
    assert!(
        growth < RSS_GROWTH_LIMIT,
        "memory grew by {} MiB during a 1 GiB download",
        growth >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_with_bounded_memory() {
    let backend = Backend::start().await;
    let front = Front::start(Proxy::new(ProxyTimeouts::default()), backend.addr).await;
    let mut client = front.client().await;
    let before = rss();
    let peak = Arc::new(AtomicUsize::new(before as usize));

    let request = Request::post("/upload")
        .header("host", "app")
        .header("content-length", HUGE.to_string())
        .body(Pattern::new(HUGE).watching_memory(peak.clone()).boxed())
        .unwrap();
    let response = client.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, HUGE.to_string());
    let growth = (peak.load(Ordering::Relaxed) as u64).saturating_sub(before);
    assert!(
        growth < RSS_GROWTH_LIMIT,
        "memory grew by {} MiB during a 1 GiB upload",
        growth >> 20
    );
}

#[tokio::test]
async fn an_answer_before_the_whole_upload_is_passed_on_and_the_connection_reused() {
    // Refuses an upload at once, then reads the rest of it before the next request, as nginx
    // does; answers anything else with "ok".
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(AtomicUsize::new(0));
    let (count, upload) = (accepted.clone(), drained.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            let upload = upload.clone();
            tokio::spawn(async move {
                loop {
                    let head = read_head(&mut stream).await.to_ascii_lowercase();
                    if head.is_empty() {
                        return;
                    }
                    let Some(length) = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|n| n.trim().parse::<u64>().unwrap())
                    else {
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                        continue;
                    };
                    stream
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large",
                        )
                        .await
                        .unwrap();
                    let mut rest = (&mut stream).take(length);
                    let n = tokio::io::copy(&mut rest, &mut tokio::io::sink())
                        .await
                        .unwrap();
                    upload.store(n as usize, Ordering::Relaxed);
                }
            });
        }
    });
    let proxy = Proxy::new(ProxyTimeouts::default());
    let front = Front::start(proxy.clone(), addr).await;
    let mut client = front.client().await;
    let request = Request::post("/upload")
        .header("host", "app")
        .body(Pattern::new(8 << 20).boxed())
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, client.send_request(request))
        .await
        .expect("no answer to an upload the backend refused")
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(text(response).await, "too large");

    // Once the upload is through, the connection goes back to the pool and takes the next
    // request.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while proxy.idle_connections(addr) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection never went back to the pool"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The whole upload reached the backend, after the answer.
    while drained.load(Ordering::Relaxed) != 8 << 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend got {} bytes of the upload",
            drained.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next request, from a client connection of its own, takes the pooled backend
    // connection. (Not on the uploading client's connection: hyper's client connection, after
    // an answer that came before its upload ended, at times never says it is ready again, alive
    // and not closed, with every byte of the upload delivered: its behaviour, not the gateway's.)
    let mut client = front.client().await;
    let response = tokio::time::timeout(DEADLINE, client.send_request(get("/")))
        .await
        .expect("no answer after the refused upload")
        .unwrap();
    assert_eq!(text(response).await, "ok");
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}

// ---------------------------------------------------------------------------------------------
// Upgrades.

#[tokio::test]
async fn a_websocket_echoes_through_the_proxy_and_holds_its_guard_while_open() {
    let backend = Backend::start().await;
    let front = Front::start(Proxy::new(ProxyTimeouts::default()), backend.addr).await;

    let stream = TcpStream::connect(front.addr).await.unwrap();
    let (mut socket, response) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", front.addr), stream)
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    for message in [
        Message::text("hello"),
        Message::binary(vec![7u8; 100_000]),
        Message::text("bye"),
    ] {
        socket.send(message.clone()).await.unwrap();
        let echo = tokio::time::timeout(DEADLINE, socket.next())
            .await
            .expect("no echo through the proxy")
            .unwrap()
            .unwrap();
        assert_eq!(echo, message);
    }
    // The exchange is over at the HTTP level, but the upgraded connection is activity.
    assert_eq!(*front.guards.borrow(), 1);

    // The closing handshake, then the client lets go of its connection.
    socket.close(None).await.unwrap();
    while let Some(Ok(_)) = socket.next().await {}
    drop(socket);
    let mut guards = front.guards.clone();
    tokio::time::timeout(DEADLINE, guards.wait_for(|&open| open == 0))
        .await
        .expect("the guard outlived the upgraded connection")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The pool.

#[tokio::test]
async fn backend_connections_are_kept_alive_and_shared_by_clients() {
    let backend = Backend::start().await;
    let proxy = Proxy::new(ProxyTimeouts::default());
    let front = Front::start(proxy.clone(), backend.addr).await;

    for _ in 0..3 {
        // A new client connection each time; the backend connection stays the same.
        let mut client = front.client().await;
        for _ in 0..5 {
            let response = client.send_request(get("/bytes?n=1000")).await.unwrap();
            assert_eq!(
                response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .len(),
                1000
            );
            let response = client.send_request(get("/headers")).await.unwrap();
            assert_eq!(response.status(), StatusCode::NON_AUTHORITATIVE_INFORMATION);
            text(response).await;
        }
    }
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 1);
    assert_eq!(proxy.idle_connections(backend.addr), 1);
}

#[tokio::test]
async fn an_idle_backend_connection_is_closed_after_the_idle_timeout() {
    let backend = Backend::start().await;
    let proxy = Proxy::new(ProxyTimeouts {
        idle: Duration::from_millis(300),
        ..ProxyTimeouts::default()
    });
    let front = Front::start(proxy.clone(), backend.addr).await;
    let mut client = front.client().await;
    text(client.send_request(get("/headers")).await.unwrap()).await;
    assert_eq!(proxy.idle_connections(backend.addr), 1);

    let mut closed = backend.closed.clone();
    tokio::time::timeout(DEADLINE, closed.wait_for(|&n| n == 1))
        .await
        .expect("the idle backend connection was never closed")
        .unwrap();
    assert_eq!(proxy.idle_connections(backend.addr), 0);

    // The next request opens a new connection.
    text(client.send_request(get("/headers")).await.unwrap()).await;
    assert_eq!(backend.accepted.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_meanwhile_is_replaced() {
    // Keeps connections alive until told to close them all (a restart, a keep-alive timeout);
    // goes on accepting new ones.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (close_all, closing) = watch::channel(());
    let (closed_tx, mut closed) = watch::channel(0usize);
    let closed_tx = Arc::new(closed_tx);
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            let (mut closing, closed_tx) = (closing.clone(), closed_tx.clone());
            // Only a close asked for from now on concerns this connection.
            closing.mark_unchanged();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        head = read_head(&mut stream) => {
                            if head.is_empty() {
                                break;
                            }
                            stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .unwrap();
                        }
                        _ = closing.changed() => break,
                    }
                }
                drop(stream);
                closed_tx.send_modify(|n| *n += 1);
            });
        }
    });
    let proxy = Proxy::new(ProxyTimeouts::default());
    let front = Front::start(proxy.clone(), addr).await;
    let mut client = front.client().await;
    assert_eq!(
        text(client.send_request(get("/")).await.unwrap()).await,
        "ok"
    );
    assert_eq!(proxy.idle_connections(addr), 1);

    close_all.send(()).unwrap();
    tokio::time::timeout(DEADLINE, closed.wait_for(|&n| n == 1))
        .await
        .unwrap()
        .unwrap();
    // The pooled connection is dead; the request goes out on a new one.
    let response = tokio::time::timeout(DEADLINE, client.send_request(get("/")))
        .await
        .expect("a request on a dead pooled connection hung")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "ok");
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_backend_that_closes_kept_alive_connections_loses_no_request() {
    // Answers one request per connection with a keep-alive response, then closes it: each
    // pooled connection is dead by the time it is used again.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                read_head(&mut stream).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let front = Front::start(Proxy::new(ProxyTimeouts::default()), addr).await;
    let mut client = front.client().await;
    for _ in 0..10 {
        let response = client.send_request(get("/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 10);
}

// ---------------------------------------------------------------------------------------------
// A backend that is not there, or goes away.

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let mut front = Front::start(Proxy::new(ProxyTimeouts::default()), addr).await;
    let mut client = front.client().await;
    let response = client.send_request(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = front.errors.recv().await.unwrap();
    assert!(matches!(error, ProxyError::Connect(_)), "{error:?}");
}

#[tokio::test]
async fn a_backend_that_does_not_accept_in_time_is_a_timeout() {
    // A listener whose accept queue is full and never drained: the kernel leaves further
    // connection attempts unanswered.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            _ => break,
        }
    }
    let proxy = Proxy::new(ProxyTimeouts {
        connect: Duration::from_millis(300),
        ..ProxyTimeouts::default()
    });
    let mut front = Front::start(proxy, addr).await;
    let mut client = front.client().await;
    let response = tokio::time::timeout(DEADLINE, client.send_request(get("/")))
        .await
        .expect("the proxy waited past its connect timeout")
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = front.errors.recv().await.unwrap();
    assert!(matches!(error, ProxyError::Timeout), "{error:?}");
    drop(listener);
}

#[tokio::test]
async fn a_backend_that_closes_before_answering_is_a_backend_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await;
            drop(stream);
        }
    });
    let mut front = Front::start(Proxy::new(ProxyTimeouts::default()), addr).await;
    let mut client = front.client().await;
    let response = client.send_request(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let error = front.errors.recv().await.unwrap();
    assert!(matches!(error, ProxyError::Backend(_)), "{error:?}");
}

#[tokio::test]
async fn a_backend_that_dies_mid_response_cuts_the_client_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (die_tx, die) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_head(&mut stream).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&[b'x'; 1000]).await.unwrap();
        // Gone, 999,000 bytes short, once the client has had the start.
        let _ = die.await;
    });
    let front = Front::start(Proxy::new(ProxyTimeouts::default()), addr).await;
    let mut client = front.client().await;
    let response = client.send_request(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let mut received = first.len();
    drop(die_tx);
    // The status was already passed on: the client can only see the body cut short.
    let ended = tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received += frame.into_data().map_or(0, |d| d.len()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await
    .expect("the client was left waiting for the rest of the body");
    assert!(ended.is_err(), "the body ended as if complete");
    assert_eq!(received, 1000);
}

// ---------------------------------------------------------------------------------------------
// The peers.

/// What the backend sees and the proxy must pass on untouched: a 203 with its own headers.
struct Backend {
    addr: SocketAddr,
    /// TCP connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// TCP connections closed so far.
    closed: watch::Receiver<usize>,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = watch::channel(0);
        let closed_tx = Arc::new(closed_tx);
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::Relaxed);
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(backend_answer))
                        .with_upgrades()
                        .await;
                    closed_tx.send_modify(|n| *n += 1);
                });
            }
        });
        Backend {
            addr,
            accepted,
            closed,
        }
    }
}

async fn backend_answer(req: Request<Incoming>) -> Result<Response<ClientBody>, Infallible> {
    let query_n = || -> u64 {
        req.uri()
            .query()
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let response = match req.uri().path() {
        "/headers" => {
            let mut seen = format!("path: {}\nversion: {:?}\n", req.uri(), req.version());
            for (name, value) in req.headers() {
                seen += &format!("{name}: {}\n", value.to_str().unwrap());
            }
            Response::builder()
                .status(StatusCode::NON_AUTHORITATIVE_INFORMATION)
                .header("x-backend", "yes")
                .header("set-cookie", "a=1")
                .header("set-cookie", "b=2")
                .header("connection", "x-hop-response")
                .header("x-hop-response", "1")
                .header("keep-alive", "timeout=60")
                .header("proxy-authenticate", "Basic")
                .body(Full::new(Bytes::from(seen)).boxed())
                .unwrap()
        }
        "/bytes" => {
            let n = query_n();
            Response::builder()
                .header("content-length", n)
                .body(Pattern::new(n).boxed())
                .unwrap()
        }
        "/chunked" => Response::new(Pattern::new(query_n()).without_length().boxed()),
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => total += frame.into_data().map_or(0, |d| d.len() as u64),
                    Err(e) => {
                        return Ok(Response::builder()
                            .status(StatusCode::BAD_REQUEST)
                            .body(Full::new(Bytes::from(e.to_string())).boxed())
                            .unwrap());
                    }
                }
            }
            Response::new(Full::new(Bytes::from(total.to_string())).boxed())
        }
        "/ws" => websocket_echo(req),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(empty())
            .unwrap(),
    };
    Ok(response)
}

/// Accepts a WebSocket handshake and echoes every data message.
fn websocket_echo(mut req: Request<Incoming>) -> Response<ClientBody> {
    let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = upgrade.await.unwrap();
        let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = socket.next().await {
            if message.is_text() || message.is_binary() {
                socket.send(message).await.unwrap();
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(empty())
        .unwrap()
}

/// The server in front: every request goes to `Proxy::forward`; an error is a 502 and is
/// passed to the test.
struct Front {
    addr: SocketAddr,
    errors: mpsc::UnboundedReceiver<ProxyError>,
    /// Guards handed to the proxy and not dropped yet.
    guards: watch::Receiver<usize>,
}

/// Counts itself in the front's `guards` while alive.
struct Counted(Arc<watch::Sender<usize>>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Front {
    async fn start(proxy: Proxy, backend: SocketAddr) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (errors_tx, errors) = mpsc::unbounded_channel();
        let (guards_tx, guards) = watch::channel(0usize);
        let guards_tx = Arc::new(guards_tx);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = listener.accept().await.unwrap();
                let (proxy, errors_tx, guards_tx) =
                    (proxy.clone(), errors_tx.clone(), guards_tx.clone());
                let service = service_fn(move |req| {
                    let (proxy, errors_tx) = (proxy.clone(), errors_tx.clone());
                    guards_tx.send_modify(|n| *n += 1);
                    let guard: Guard = Box::new(Counted(guards_tx.clone()));
                    async move {
                        match proxy.forward(req, backend, peer, false, Some(guard)).await {
                            Ok(response) => Ok::<_, Infallible>(response),
                            Err(e) => {
                                let message = e.to_string();
                                let _ = errors_tx.send(e);
                                Ok(Response::builder()
                                    .status(StatusCode::BAD_GATEWAY)
                                    .body(
                                        Full::new(Bytes::from(message))
                                            .map_err(|never| match never {})
                                            .boxed(),
                                    )
                                    .unwrap())
                            }
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Front {
            addr,
            errors,
            guards,
        }
    }

    /// A new keep-alive client connection to the front.
    async fn client(&self) -> SendRequest<ClientBody> {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }
}

/// `len` bytes of a repeating pattern, in frames of about 64 KiB that all share one buffer (so that the
/// body itself costs no memory, whatever its length).
struct Pattern {
    left: u64,
    chunk: Bytes,
    sized: bool,
    /// Where to keep the highest RSS seen, looked at every 16 MiB.
    watch: Option<(Arc<AtomicUsize>, u64)>,
}

/// A whole number of patterns (251 bytes), so that each frame follows on from the last.
const CHUNK: usize = 251 * 256;

/// 251 is prime: a byte lost or repeated anywhere shows.
fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

impl Pattern {
    fn new(len: u64) -> Pattern {
        let chunk: Vec<u8> = (0..CHUNK).map(pattern_byte).collect();
        Pattern {
            left: len,
            chunk: Bytes::from(chunk),
            sized: true,
            watch: None,
        }
    }

    fn without_length(mut self) -> Pattern {
        self.sized = false;
        self
    }

    fn watching_memory(mut self, peak: Arc<AtomicUsize>) -> Pattern {
        self.watch = Some((peak, 0));
        self
    }
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64) as usize;
        let data = self.chunk.slice(..n);
        self.left -= n as u64;
        if let Some((peak, since)) = &mut self.watch {
            *since += n as u64;
            if *since >= 16 << 20 {
                *since = 0;
                peak.fetch_max(rss() as usize, Ordering::Relaxed);
            }
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.left)
        } else {
            SizeHint::default()
        }
    }
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("no VmRSS in /proc/self/status");
    kib * 1024
}

/// Reads a request head (up to the blank line) from a raw socket; empty at end of stream.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return String::new();
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn get(path: &str) -> Request<ClientBody> {
    Request::get(path)
        .header("host", "app")
        .body(empty())
        .unwrap()
}

fn empty() -> ClientBody {
    Empty::new().boxed()
}

async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
