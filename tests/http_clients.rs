//! Bad clients of the `http` listener, over raw TCP: a request body the client breaks is its
//! own fault (400, no 502, no readiness re-check), a connection that sends nothing or idles is
//! closed at its deadline while one with a request in flight is not, and the per-address cap
//! closes the excess at once. Refusals show in /metrics.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wakegate::app::App;
use wakegate::event::{Kind, State};

/// A backend that answers `GET /slow` after two seconds and anything else at once with "ok",
/// reading the request body first. It stops accepting (open connections go on) when `stop`
/// is cancelled.
async fn backend(stop: CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap(),
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        // A broken body ends the connection; the answer is never sent then.
                        http_body_util::BodyExt::collect(req.into_body()).await?;
                        Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(
                            Bytes::from("ok"),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn start(dir: &Path, backend: SocketAddr, listen: Table) -> App {
    gateway(dir)
        .service(svc("web").idle("10m").exec_true(backend).listen(listen))
        .start()
        .await
}

const LOCAL: [u8; 4] = [127, 0, 0, 1];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_request_body_is_a_400_and_never_a_backend_failure() {
    let dir = temp_dir("http-broken-body");
    let stop = CancellationToken::new();
    let backend = backend(stop.clone()).await;
    let app = start(&dir, backend, listener("http", ANY_PORT)).await;
    let web = app.service("web").unwrap().clone();
    let mut events = web.subscribe();
    let addr = app.listen_addr("web").unwrap();

    // A first request wakes the service and leaves a kept-alive connection in the proxy's
    // pool; then the backend stops accepting. A readiness re-check would now fail to connect
    // and warn (as `a_backend_that_vanishes_gives_502_and_a_readiness_check` in http.rs shows),
    // while the broken requests below reach the backend on the pooled connection.
    let ok = exchange_from(
        LOCAL,
        addr,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    stop.cancel();

    // A chunk size that is not hexadecimal.
    let bad_chunk = exchange_from(LOCAL, addr,
        b"POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nmore\r\n",
    )
    .await;
    assert!(bad_chunk.starts_with("HTTP/1.1 400"), "{bad_chunk}");
    assert!(bad_chunk.contains("malformed or cut short"), "{bad_chunk}");

    // The barrier: a sleep asked for now is recorded after anything the broken body caused.
    web.sleep("test").await.unwrap().unwrap();
    let seen = events_until(&mut events, |e| {
        e.kind == Kind::Transition && e.state == State::Asleep
    })
    .await;
    let failures: Vec<_> = seen
        .iter()
        .filter(|e| e.kind == Kind::Warning || e.state == State::Failed)
        .collect();
    assert!(
        failures.is_empty(),
        "the broken body was taken for a backend failure: {failures:#?}"
    );

    let metrics = metrics(app.api_addr()).await;
    assert_eq!(refused(&metrics, None, "malformed"), 1, "{metrics}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_is_the_clients_fault_too() {
    let dir = temp_dir("http-short-body");
    let backend = backend(CancellationToken::new()).await;
    let app = start(&dir, backend, listener("http", ANY_PORT)).await;
    let web = app.service("web").unwrap().clone();
    let mut events = web.subscribe();
    let addr = app.listen_addr("web").unwrap();

    // 10 bytes of the 100 announced, then the client stops sending.
    let mut stream = connect_from(LOCAL, addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let answer = read_to_close(&mut stream).await;
    // Whether the answer still reaches a client that has stopped sending is up to the race
    // between its close and the backend's response; if anything comes, it is a 400.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );

    web.sleep("test").await.unwrap().unwrap();
    let seen = events_until(&mut events, |e| {
        e.kind == Kind::Transition && e.state == State::Asleep
    })
    .await;
    assert!(
        !seen.iter().any(|e| e.kind == Kind::Warning),
        "a cut body was taken for a backend failure: {seen:#?}"
    );
    let metrics = metrics(app.api_addr()).await;
    assert_eq!(refused(&metrics, None, "malformed"), 1, "{metrics}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_at_their_deadlines_and_busy_ones_are_not() {
    let dir = temp_dir("http-deadlines");
    let backend = backend(CancellationToken::new()).await;
    let listen = listener("http", ANY_PORT)
        .set("head_timeout", "1s")
        .set("keepalive_timeout", "2s");
    let app = start(&dir, backend, listen).await;
    let addr = app.listen_addr("web").unwrap();

    // Nothing sent: closed at head_timeout, without an answer.
    let opened = Instant::now();
    let mut silent = connect_from(LOCAL, addr).await.unwrap();
    assert_eq!(read_to_close(&mut silent).await, "");
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );

    // Half a request head, then nothing: the same.
    let mut partial = connect_from(LOCAL, addr).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: w")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut partial).await, "");

    // A request that takes 2 s at the backend, longer than head_timeout: answered, then the
    // kept-alive connection is closed keepalive_timeout after the response.
    let mut busy = connect_from(LOCAL, addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    busy.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let answered = Instant::now();
    let rest = read_to_close(&mut busy).await;
    assert!(rest.ends_with("ok"), "{rest}");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(1900),
        "an idle keep-alive connection was closed after {idle:?}"
    );

    let metrics = metrics(app.api_addr()).await;
    // The silent and the partial one; the idle one is no refusal.
    assert_eq!(refused(&metrics, None, "head_timeout"), 2, "{metrics}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_over_its_cap_is_closed_at_once_and_others_are_served() {
    let dir = temp_dir("http-cap");
    let backend = backend(CancellationToken::new()).await;
    let listen = listener("http", ANY_PORT).set("max_connections_per_address", 2);
    let app = start(&dir, backend, listen).await;
    let addr = app.listen_addr("web").unwrap();

    let _first = connect_from(LOCAL, addr).await.unwrap();
    let _second = connect_from(LOCAL, addr).await.unwrap();
    let mut third = connect_from(LOCAL, addr).await.unwrap();
    // Closed before any deadline (head_timeout is 10 s).
    let closed = Instant::now();
    assert_eq!(read_to_close(&mut third).await, "");
    assert!(closed.elapsed() < Duration::from_secs(5));

    // Another address is not affected.
    let other = exchange_from(
        [127, 0, 0, 2],
        addr,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");

    let metrics = metrics(app.api_addr()).await;
    assert_eq!(refused(&metrics, None, "per_address_cap"), 1, "{metrics}");
    assert!(
        metrics.contains("wakegate_listener_connections{listener=\""),
        "{metrics}"
    );
    promtool_check(&metrics);
    app.shutdown().await;
}
