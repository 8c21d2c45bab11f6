//! A small web backend that answers with the client address it was told, and plain HTTP/1.1
//! requests from chosen addresses.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::exchange_from;

/// A web server that answers every request with `xff=` and the X-Forwarded-For it got (`-`
/// without one); it runs until the test ends.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#[allow(clippy::disallowed_methods)]
pub async fn forwarded_for_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let xff = req.headers().get("x-forwarded-for").cloned();
                    let xff = xff.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-");
                    let body = Bytes::from(format!("xff={xff}"));
                    Ok::<_, Infallible>(Response::new(Full::new(body)))
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `GET /` from `from` over a connection of its own: the status code, and the whole answer
/// (head and body) as text.
pub async fn get_from(from: [u8; 4], to: SocketAddr) -> (u16, String) {
    let request = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n";
    let answer = exchange_from(from, to, request).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (status, answer)
}
