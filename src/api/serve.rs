//! A socket of its own for the routes that callers from elsewhere need (Discord's interactions,
//! `[discord.listen]`; the agents' reports, `[gateway.agents]`), with wakegate's own TLS
//! (`tls_cert`, `tls_key`) or plain HTTP behind a reverse proxy, so the API itself can stay on
//! loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use toml::Spanned;
use tracing::{debug, warn};

use crate::config::diag::Problems;
use crate::listener::http::tls::{self, TlsFiles};

/// A client has this long for its TLS handshake, and then for each request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection is closed (after the request in flight) this long after it opened: Discord's
/// requests are short, and a connection that sends nothing holds no socket for long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Where such a socket listens, and its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub bind: SocketAddr,
    pub tls: Option<TlsFiles>,
}

/// Its table (`[discord.listen]`, `[gateway.agents]`), as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenConfig {
    bind: Spanned<SocketAddr>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
}

/// Checks the table: the certificate and key, both or neither, read and matching.
pub(crate) fn read(c: ListenConfig, problems: &mut Problems<'_>) -> Option<Listen> {
    let tls = tls::read_files(c.tls_cert, c.tls_key, problems)?;
    Some(Listen {
        bind: c.bind.into_inner(),
        tls,
    })
}

/// Binds the socket and reads its certificate; `what` names it in the error (e.g. "Discord
/// interactions", with `table` the config table to change).
pub async fn bind(
    listen: &Listen,
    what: &str,
    table: &str,
) -> anyhow::Result<(TcpListener, Option<TlsAcceptor>)> {
    use anyhow::Context;
    let socket = TcpListener::bind(listen.bind).await.with_context(|| {
        format!(
            "cannot listen for {what} on {}; set [{table}] bind to a free address",
            listen.bind
        )
    })?;
    let acceptor = match &listen.tls {
        None => None,
        Some(files) => {
            let cert = tls::load(files)?;
            let resolver = tls::SniResolver::new(Vec::new(), cert);
            Some(TlsAcceptor::from(tls::server_config(resolver)))
        }
    };
    Ok((socket, acceptor))
}

/// Serves `router` until `stop` fires; each connection ends after its request in flight.
pub async fn serve(
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let (client, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, mostly: the client waits in the backlog meanwhile.
                    warn!(error = %e, "Cannot accept a connection.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
        tracker.spawn(async move {
            let service = TowerToHyperService::new(router);
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            match tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(client), service);
                    until_done(connection, &stop).await;
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(client)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "A TLS handshake failed.");
                                return;
                            }
                            Err(_) => {
                                debug!(%peer, "A TLS handshake took too long.");
                                return;
                            }
                        };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    until_done(connection, &stop).await;
                }
            }
        });
    }
}

/// Runs a connection to its end, or shuts it down gracefully at wakegate's stop or at the end
/// of its lifetime.
async fn until_done<C>(
    connection: auto::Connection<'_, C, TowerToHyperService<Router>, TokioExecutor>,
    stop: &CancellationToken,
) where
    C: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        () = stop.cancelled() => {}
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}
