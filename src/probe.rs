//! Probes: how wakegate knows a backend is ready. Readiness is a TCP connect to the backend,
//! retried with a short backoff capped at 50 ms, so a port that opens is noticed quickly.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

const FIRST_RETRY: Duration = Duration::from_millis(5);
const MAX_RETRY: Duration = Duration::from_millis(50);
/// A connect to a host that drops packets could hang for minutes; give up on one attempt sooner.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Resolves `host:port` to one address (asked on every wake: addresses change).
pub async fn resolve(address: &str) -> Result<SocketAddr, String> {
    let mut found = tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("cannot resolve backend address {address}: {e}; check the name"))?;
    found
        .next()
        .ok_or_else(|| format!("backend address {address} resolved to nothing; check the name"))
}

/// Returns once `address` accepts a TCP connection. The caller bounds it with a deadline.
pub async fn tcp_ready(address: SocketAddr) {
    let mut pause = FIRST_RETRY;
    loop {
        if let Ok(Ok(_stream)) =
            tokio::time::timeout(ATTEMPT_TIMEOUT, TcpStream::connect(address)).await
        {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_once_the_port_opens() {
        // Find a free port, then open it only after the probe has started failing.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let probe = tokio::spawn(tcp_ready(port));
        tokio::task::yield_now().await;
        assert!(!probe.is_finished());
        let _listener = tokio::net::TcpListener::bind(port).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), probe)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn resolve_names_what_failed() {
        assert_eq!(resolve("127.0.0.1:80").await.unwrap().port(), 80);
        let err = resolve("no-such-host.invalid:80").await.unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
    }
}
