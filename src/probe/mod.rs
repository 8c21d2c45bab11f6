//! Probes: how wakegate knows a backend is ready or healthy. A TCP connect, an HTTP or HTTPS
//! request (`tls`), a Minecraft (Java or Bedrock) status ping, a UDP datagram answered, or
//! (for readiness only) a line in a `process` backend's log or a container's own HEALTHCHECK
//! (asked of the backend by the actor).
//! Readiness retries with a short backoff capped at 50 ms, so a ready backend is noticed fast.

pub mod config;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpStream;

use crate::config::de::Secret;
use crate::minecraft::{ping, proxy_header};

const FIRST_RETRY: Duration = Duration::from_millis(5);
const MAX_RETRY: Duration = Duration::from_millis(50);
/// The most of an HTTP answer a probe reads (a Minecraft status has its own protocol limit).
const MAX_ANSWER: usize = 1024 * 1024;

/// What a probe checks.
#[derive(Debug, Clone)]
pub enum Probe {
    /// The address accepts a TCP connection.
    Tcp,
    /// An HTTP request answers as expected. `{address}` in the URL is the backend's address.
    Http {
        url: String,
        method: hyper::Method,
        /// Values may come from the environment: never printed.
        headers: Vec<(String, Secret)>,
        /// Accepted status codes; empty means any 2xx.
        status: Vec<u16>,
        body_contains: Option<String>,
        /// How the certificate is checked, for an `https://` URL.
        https: Option<tls::Https>,
    },
    /// A Minecraft Java status ping is answered.
    Minecraft,
    /// A line matching the pattern appears in the backend's log after the start.
    LogLine(Regex),
    /// The container's own HEALTHCHECK says healthy: the backend answers it
    /// (`Backend::healthy`), not a probe of wakegate's.
    Container,
    /// A UDP datagram with `payload` gets any reply (from the backend's `port`, when given).
    Udp { payload: Vec<u8>, port: Option<u16> },
    /// A Minecraft Bedrock unconnected ping is answered (on the backend's `port`, when given).
    Bedrock { port: Option<u16> },
}

/// A probe and how long one attempt may take.
#[derive(Debug, Clone)]
pub struct Check {
    pub probe: Probe,
    pub timeout: Duration,
    /// Start a Minecraft status ping with a PROXY v2 LOCAL header: the backend sits behind a
    /// `minecraft` listener with `proxy_protocol = true` and refuses connections without one.
    pub proxy_header: bool,
}

impl Default for Check {
    fn default() -> Check {
        Check {
            probe: Probe::Tcp,
            timeout: Duration::from_secs(2),
            proxy_header: false,
        }
    }
}

/// What a successful probe learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Players online, from a Minecraft status ping.
    pub players: Option<u32>,
    /// The names in the status ping's player sample (servers show at most about 12).
    pub sample: Option<Vec<String>>,
}

/// Where a log-line probe reads: the file and the offset the current start began at.
#[derive(Debug, Clone)]
pub struct LogCursor<'a> {
    pub path: &'a Path,
    pub from: u64,
}

/// Resolves `host:port` to one address (asked on every wake: addresses change).
pub async fn resolve(address: &str) -> Result<SocketAddr, String> {
    let mut found = tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("cannot resolve backend address {address}: {e}; check the name"))?;
    found
        .next()
        .ok_or_else(|| format!("backend address {address} resolved to nothing; check the name"))
}

/// The pauses between two tries of a readiness check: from 5 ms, doubling to 50 ms.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Backoff {
        Backoff(FIRST_RETRY)
    }

    /// Waits before the next try.
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_RETRY);
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

/// Returns once the check passes, retrying with a short backoff. The caller bounds it with a
/// deadline; the last failure is kept in `last_error` for the message.
pub async fn ready(
    check: &Check,
    address: SocketAddr,
    log: Option<LogCursor<'_>>,
    last_error: &mut String,
) {
    let mut backoff = Backoff::new();
    loop {
        match run(check, address, log.clone()).await {
            Ok(_) => return,
            Err(e) => *last_error = e,
        }
        backoff.pause().await;
    }
}

/// One attempt of a check.
pub async fn run(
    check: &Check,
    address: SocketAddr,
    log: Option<LogCursor<'_>>,
) -> Result<Answer, String> {
    let attempt = async {
        match &check.probe {
            Probe::Tcp => TcpStream::connect(address)
                .await
                .map(|_| Answer::default())
                .map_err(|e| format!("{address} does not accept connections: {e}")),
            Probe::Http {
                url,
                method,
                headers,
                status,
                body_contains,
                https,
            } => {
                let wanted = Wanted {
                    method,
                    headers,
                    status,
                    body_contains: body_contains.as_deref(),
                };
                http(address, url, &wanted, https.as_ref()).await
            }
            Probe::Minecraft if check.proxy_header => {
                minecraft_status(address, &proxy_header::v2_local()).await
            }
            Probe::Minecraft => minecraft_status(address, &[]).await,
            Probe::Udp { payload, port } => {
                let mut to = address;
                if let Some(port) = port {
                    to.set_port(*port);
                }
                udp(to, payload).await
            }
            Probe::Bedrock { port } => {
                let mut to = address;
                if let Some(port) = port {
                    to.set_port(*port);
                }
                bedrock_status(to).await
            }
            Probe::LogLine(pattern) => match log {
                Some(log) => log_line(pattern, log).await,
                None => Err("this backend has no log to read".into()),
            },
            Probe::Container => Err("the container's health is asked of its backend".into()),
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(check.timeout)
            ))
        })
}

/// The request an HTTP probe sends, and the answer it wants.
struct Wanted<'a> {
    method: &'a hyper::Method,
    headers: &'a [(String, Secret)],
    /// Accepted status codes; empty means any 2xx.
    status: &'a [u16],
    body_contains: Option<&'a str>,
}

async fn http(
    address: SocketAddr,
    url: &str,
    wanted: &Wanted<'_>,
    https: Option<&tls::Https>,
) -> Result<Answer, String> {
    let url = url.replace("{address}", &address.to_string());
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("`{url}` has no host"))?
        .to_string();
    let host = uri.host().unwrap_or_default();
    let port = uri
        .port_u16()
        .unwrap_or(if https.is_some() { 443 } else { 80 });
    let target = if uri.port().is_some() {
        authority.clone()
    } else {
        format!("{authority}:{port}")
    };
    let stream = TcpStream::connect(&target)
        .await
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
    match https {
        None => exchange(stream, &url, &uri, &authority, wanted).await,
        Some(https) => {
            let stream = https.connect(host, stream).await?;
            exchange(stream, &url, &uri, &authority, wanted).await
        }
    }
}

/// One request over `stream` (plain or TLS), and the check of its answer.
async fn exchange<IO>(
    stream: IO,
    url: &str,
    uri: &hyper::Uri,
    authority: &str,
    wanted: &Wanted<'_>,
) -> Result<Answer, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Wanted {
        method,
        headers,
        status,
        body_contains,
    } = *wanted;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP to {authority} failed: {e}"))?;
    let mut request = hyper::Request::builder()
        .method(method.clone())
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, authority);
    for (name, value) in headers {
        request = request.header(name, value.expose());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{method} {url} failed: {e}"))?;
        let code = response.status().as_u16();
        let accepted = if status.is_empty() {
            (200..300).contains(&code)
        } else {
            status.contains(&code)
        };
        if !accepted {
            return Err(format!("{method} {url} answered {code}"));
        }
        if let Some(wanted) = body_contains {
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("cannot read the answer of {url}: {e}"))?
                .to_bytes();
            if !String::from_utf8_lossy(&body).contains(wanted) {
                return Err(format!("the answer of {url} does not contain `{wanted}`"));
            }
        }
        Ok(Answer::default())
    };
    let (answer, _) = tokio::join!(exchange, conn);
    answer
}

/// A Java edition status ping (the shared client), after `header`: a PROXY protocol header
/// for a server that requires one, or nothing.
async fn minecraft_status(address: SocketAddr, header: &[u8]) -> Result<Answer, String> {
    let failed = |e: ping::PingError| format!("Minecraft status of {address} failed: {e}");
    let json = ping::status(address, &ping::own_handshake(address), header)
        .await
        .map_err(failed)?;
    let players = ping::players(&json).map_err(failed)?;
    Ok(Answer {
        players: players.online,
        sample: players.sample,
    })
}

/// Sends `payload` to `address` and waits for any datagram back; sent again every second, for
/// a backend that drops what arrives before it is ready.
async fn udp(address: SocketAddr, payload: &[u8]) -> Result<Answer, String> {
    let socket = crate::listener::udp::session::connect(address)
        .await
        .map_err(|e| format!("cannot open a UDP socket to {address}: {e}"))?;
    let mut buf = [0u8; 1];
    loop {
        socket
            .send(payload)
            .await
            .map_err(|e| format!("cannot send to udp {address}: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
            // A reply longer than the buffer is cut short, and still a reply.
            Ok(Ok(_)) => return Ok(Answer::default()),
            // The port is closed (an ICMP error came back): not ready.
            Ok(Err(e)) => return Err(format!("udp {address} does not answer: {e}")),
            Err(_) => continue,
        }
    }
}

/// A Bedrock unconnected ping, and the players its pong counts. The ping goes again every
/// 50 ms until a pong comes: a RakNet server drops the pings that reach its socket while it is
/// still starting, and waiting half a second for each lost one made wakes ~1 s slower than the
/// server's own boot (benches/udp.rs).
async fn bedrock_status(address: SocketAddr) -> Result<Answer, String> {
    let pong = crate::bedrock::ping::status(address, Duration::from_millis(50))
        .await
        .map_err(|e| format!("Bedrock ping of udp {address} failed: {e}"))?;
    Ok(Answer {
        players: Some(pong.advert.online),
        sample: None,
    })
}

/// Looks for a matching line in what the log gained since the start.
async fn log_line(pattern: &Regex, log: LogCursor<'_>) -> Result<Answer, String> {
    let mut file = tokio::fs::File::open(log.path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", log.path.display()))?;
    file.seek(std::io::SeekFrom::Start(log.from))
        .await
        .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    file.take(64 * 1024 * 1024)
        .read_to_end(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    // wakegate's own header lines (which quote the command) are not the server's words.
    if String::from_utf8_lossy(&text)
        .lines()
        .any(|line| !line.starts_with("--- wakegate ") && pattern.is_match(line))
    {
        Ok(Answer::default())
    } else {
        Err(format!("no line of the log matches `{pattern}` yet"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // a test's own task, awaited by the test
    async fn ready_once_the_port_opens() {
        // Find a free port, then open it only after the probe has started failing.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let probe =
            tokio::spawn(
                async move { ready(&Check::default(), port, None, &mut String::new()).await },
            );
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

    #[tokio::test]
    async fn a_log_line_is_found_only_after_the_start_offset() {
        let dir = std::env::temp_dir().join(format!("wakegate-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.log");
        std::fs::write(&path, "Done (1.2s)! from the last run\nStarting\n").unwrap();
        let from = std::fs::metadata(&path).unwrap().len();
        let pattern = Regex::new(r"Done \(").unwrap();
        let cursor = LogCursor { path: &path, from };
        assert!(log_line(&pattern, cursor.clone()).await.is_err());
        std::fs::write(
            &path,
            format!(
                "{}Preparing level\nDone (3.4s)!\n",
                "x".repeat(from as usize)
            ),
        )
        .unwrap();
        assert!(log_line(&pattern, cursor).await.is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
