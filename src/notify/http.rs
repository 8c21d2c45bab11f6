//! The HTTP/1.1 client of the notification targets: one connection per delivery (they are
//! rare), TLS through rustls with the Mozilla roots for `https://`, a connect timeout and a
//! timeout on the whole exchange. Errors name the host, never the URL: its path may hold a
//! token.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

/// Connecting may take at most this long (or the whole timeout, if that is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of an answer's body that is read (enough for an error message or `retry_after`).
const MAX_BODY: usize = 64 * 1024;

/// Where requests go, split from a URL.
#[derive(Clone)]
pub struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// The `Host` header: the authority without any user info.
    authority: String,
    /// Path and query: may hold a secret.
    target: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({})", self.host)
    }
}

impl Endpoint {
    /// Splits an `http://` or `https://` URL; the error says what is wrong without the URL.
    pub fn parse(url: &str) -> Result<Endpoint, &'static str> {
        if !url.contains("://") {
            return Err("is not a whole URL: it must start with https:// or http://");
        }
        let uri: Uri = url.parse().map_err(|_| "is not a valid URL")?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(_) => return Err("must start with https:// or http://"),
            None => return Err("is not a whole URL: it must start with https:// or http://"),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or("names no host")?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = match uri.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let target = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        Ok(Endpoint {
            tls,
            host,
            port,
            authority,
            target,
        })
    }

    /// The host, which logs may name.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// What the receiver answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// At most [`MAX_BODY`] bytes of it.
    pub body: Bytes,
}

/// A client for one target.
pub struct Client {
    tls: TlsConnector,
    timeout: Duration,
}

impl Client {
    pub fn new(timeout: Duration) -> Client {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Client::with_roots(roots, timeout)
    }

    /// A client that trusts only `roots` (tests bring their own authority).
    pub fn with_roots(roots: RootCertStore, timeout: Duration) -> Client {
        // The provider is named, not taken from the process default, so that another crate
        // enabling a second provider cannot make this panic.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        }
    }

    /// POSTs `body` with `headers`; an error is a sentence without the URL.
    pub async fn post(
        &self,
        endpoint: &Endpoint,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Answer, String> {
        self.send(Method::POST, endpoint, headers, body).await
    }

    /// Sends one request (Discord's REST API also wants PATCH and PUT); an error is a sentence
    /// without the URL. A `User-Agent` among `headers` replaces wakegate's.
    pub async fn send(
        &self,
        method: Method,
        endpoint: &Endpoint,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Answer, String> {
        let exchange = self.exchange(method, endpoint, headers, body);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{} did not answer within {}",
                endpoint.host,
                humantime::format_duration(self.timeout)
            )),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        endpoint: &Endpoint,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> Result<Answer, String> {
        let host = &endpoint.host;
        let connect = TcpStream::connect((host.as_str(), endpoint.port));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT.min(self.timeout), connect)
            .await
            .map_err(|_| format!("cannot connect to {host}:{}: timed out", endpoint.port))?
            .map_err(|e| format!("cannot connect to {host}:{}: {e}", endpoint.port))?;
        let _ = tcp.set_nodelay(true);

        let mut request = Request::builder()
            .method(method)
            .uri(endpoint.target.as_str())
            .header(header::HOST, endpoint.authority.as_str())
            // One request per connection: the connection ends with the answer.
            .header(header::CONNECTION, "close");
        if !headers.iter().any(|(name, _)| name == header::USER_AGENT) {
            request = request.header(
                header::USER_AGENT,
                concat!("wakegate/", env!("CARGO_PKG_VERSION")),
            );
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;

        if endpoint.tls {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host} failed: {e}"))?;
            send(tls, request, host).await
        } else {
            send(tcp, request, host).await
        }
    }
}

/// Sends one request over `io` and reads the answer, driving the connection alongside (no task
/// is spawned for it).
async fn send<IO>(io: IO, request: Request<Full<Bytes>>, host: &str) -> Result<Answer, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP with {host} failed: {e}"))?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{host} did not answer: {e}"))?;
        let (parts, body) = response.into_parts();
        // A body cut short still leaves the status, which is what decides.
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    // The connection future ends once the answer is read and the sender dropped.
    let (answer, _) = tokio::join!(exchange, connection);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_and_hide_their_path() {
        let e =
            Endpoint::parse("https://discord.com/api/webhooks/1/secret-token?wait=true").unwrap();
        assert!(e.tls);
        assert_eq!((e.host(), e.port), ("discord.com", 443));
        assert_eq!(e.authority, "discord.com");
        assert_eq!(e.target, "/api/webhooks/1/secret-token?wait=true");
        assert!(!format!("{e:?}").contains("secret"));

        let e = Endpoint::parse("http://user:pw@[::1]:8080").unwrap();
        assert_eq!((e.host(), e.port, e.target.as_str()), ("::1", 8080, "/"));
        assert_eq!(e.authority, "[::1]:8080");

        assert!(Endpoint::parse("ftp://x/y").is_err());
        assert!(Endpoint::parse("discord.com/api").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    /// Reads a request's head and its body (by `content-length`).
    async fn read_request(io: &mut (impl AsyncRead + Unpin)) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early: {text}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[tokio::test]
    async fn https_is_spoken_with_a_trusted_certificate_only() {
        use tokio::io::AsyncWriteExt;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let ca = CertificateDer::from_pem_slice(include_bytes!("../../tests/tls/ca.pem")).unwrap();
        let cert =
            CertificateDer::from_pem_slice(include_bytes!("../../tests/tls/server.pem")).unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(include_bytes!("../../tests/tls/server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/hook?token=x",
            listener.local_addr().unwrap().port()
        );
        let endpoint = Endpoint::parse(&url).unwrap();

        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let trusting = Client::with_roots(roots, Duration::from_secs(10));
        let serve = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let request = read_request(&mut tls).await;
            tls.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            tls.shutdown().await.unwrap();
            request
        };
        let body = Bytes::from_static(b"{\"id\":1}");
        let (request, answer) = tokio::join!(serve, trusting.post(&endpoint, vec![], body.clone()));
        assert_eq!(answer.unwrap().status, StatusCode::NO_CONTENT);
        assert!(
            request.starts_with("POST /hook?token=x HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("host: localhost:"), "{request}");
        assert!(request.ends_with("{\"id\":1}"), "{request}");

        // The built-in roots do not know this authority: the handshake fails, and the error
        // names the host but not the URL.
        let public_roots_only = Client::new(Duration::from_secs(10));
        let refuse = async {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.is_err()
        };
        let (refused, answer) =
            tokio::join!(refuse, public_roots_only.post(&endpoint, vec![], body));
        let error = answer.unwrap_err();
        assert!(refused);
        assert!(error.starts_with("TLS with localhost failed"), "{error}");
        assert!(!error.contains("token"), "{error}");
    }
}
