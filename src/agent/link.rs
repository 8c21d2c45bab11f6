//! The agent's channel to the gateway: its API over HTTPS (or plain HTTP on loopback) with the
//! bearer token, on the project's HTTP client (`notify::http`: rustls with the public roots,
//! or only the `ca_file`'s). It also keeps whether the gateway answers ([`Reach`]), which the
//! dead man's switch reads: only a 2xx answer counts as reaching it.

use std::time::Duration;

use hyper::Method;
use hyper::body::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use super::config::{Agent, read_roots};
use super::wire::{PreStopResult, Report, ReportAnswer, WaitAnswer, WaitRequest};
use crate::config::de::Secret;
use crate::notify::http::{Client, Endpoint};

/// How long a report or an answer may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the gateway holds a wait at most (it answers after 25 s), plus a margin.
const WAIT_TIMEOUT: Duration = Duration::from_secs(40);

/// Whether the gateway answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reach {
    /// Since the first failed exchange after the last good one; none while it answers.
    pub failing_since: Option<Instant>,
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No HTTP answer at all (connection refused, TLS, timeout).
    #[error("{0}")]
    Unreachable(String),
    /// The gateway answered with an error; `message` is its own (it says what to do).
    #[error("the gateway answered {status}: {message}")]
    Refused { status: u16, message: String },
}

/// The agent's side of the API.
pub struct Link {
    base: String,
    service: String,
    token: Secret,
    quick: Client,
    held: Client,
    reach: watch::Sender<Reach>,
}

impl Link {
    pub fn new(agent: &Agent) -> Result<Link, String> {
        let client = |timeout| match &agent.ca_file {
            Some(path) => read_roots(path).map(|roots| Client::with_roots(roots, timeout)),
            None => Ok(Client::new(timeout)),
        };
        Ok(Link {
            base: agent.gateway.clone(),
            service: agent.service.clone(),
            token: agent.token.clone(),
            quick: client(EXCHANGE_TIMEOUT)?,
            held: client(WAIT_TIMEOUT)?,
            reach: watch::Sender::new(Reach::default()),
        })
    }

    /// Follows whether the gateway answers.
    pub fn reach(&self) -> watch::Receiver<Reach> {
        self.reach.subscribe()
    }

    /// The gateway's host, which logs may name (the URL's path may not be secret, but the
    /// host is all a reader needs).
    pub fn host(&self) -> String {
        Endpoint::parse(&self.base).map_or_else(|_| self.base.clone(), |e| e.host().to_string())
    }

    /// Posts a report.
    pub async fn report(&self, report: &Report) -> Result<ReportAnswer, LinkError> {
        let path = format!("/api/v1/services/{}/report", self.service);
        self.post(&self.quick, &path, report).await
    }

    /// Waits (up to the gateway's hold) for a pre-stop request other than `seen`.
    pub async fn wait(&self, seen: Option<u64>) -> Result<WaitAnswer, LinkError> {
        let path = format!("/api/v1/services/{}/agent/wait", self.service);
        self.post(&self.held, &path, &WaitRequest { seen }).await
    }

    /// Tells the gateway how the pre-stop command `id` ended.
    pub async fn pre_stop_done(&self, id: u64, result: &PreStopResult) -> Result<(), LinkError> {
        let path = format!("/api/v1/services/{}/agent/pre-stop/{id}", self.service);
        self.post::<serde_json::Value>(&self.quick, &path, result)
            .await
            .map(drop)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        client: &Client,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, LinkError> {
        let result = self.exchange(client, path, body).await;
        self.reach.send_if_modified(|reach| {
            let was = reach.failing_since;
            reach.failing_since = match &result {
                Ok(_) => None,
                Err(_) => Some(was.unwrap_or_else(Instant::now)),
            };
            match (&was, &result) {
                (Some(since), Ok(_)) => info!(
                    gateway = %self.host(),
                    after = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                    "The gateway answers again."
                ),
                (None, Err(e)) => warn!(gateway = %self.host(), error = %e, "Cannot reach the gateway."),
                _ => {}
            }
            was != reach.failing_since
        });
        result
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        client: &Client,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, LinkError> {
        let endpoint = Endpoint::parse(&format!("{}{path}", self.base))
            .map_err(|why| LinkError::Unreachable(format!("the gateway URL {why}")))?;
        let authorization = HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            .map_err(|_| {
                LinkError::Unreachable("the token holds characters a header cannot".into())
            })?;
        let headers: Vec<(HeaderName, HeaderValue)> = vec![
            (header::AUTHORIZATION, authorization),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ];
        let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let answer = client
            .send(Method::POST, &endpoint, headers, body)
            .await
            .map_err(LinkError::Unreachable)?;
        if !answer.status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().to_string());
            return Err(LinkError::Refused {
                status: answer.status.as_u16(),
                message,
            });
        }
        let body = if answer.body.is_empty() {
            Bytes::from_static(b"null")
        } else {
            answer.body
        };
        serde_json::from_slice(&body).map_err(|e| {
            LinkError::Unreachable(format!(
                "the gateway's answer is not what an agent expects ({e}); is the URL that of a wakegate API?"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;

    const TLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls");

    /// A TLS server with the test certificate for `localhost`, answering one request with
    /// `answer` as JSON; returns the request it read.
    async fn serve_once(listener: &tokio::net::TcpListener, answer: &str) -> Option<String> {
        let cert = CertificateDer::from_pem_file(format!("{TLS}/server.pem")).unwrap();
        let key = PrivateKeyDer::from_pem_file(format!("{TLS}/server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(config))
            .accept(tcp)
            .await
            .ok()?;
        let mut request = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&request).contains("\"valid_for\"") {
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            request.extend_from_slice(&chunk[..n]);
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
            answer.len()
        );
        tls.write_all(response.as_bytes()).await.unwrap();
        tls.shutdown().await.unwrap();
        Some(String::from_utf8_lossy(&request).into_owned())
    }

    fn agent(port: u16, ca_file: Option<&str>) -> Agent {
        let ca = ca_file.map_or(String::new(), |f| format!("ca_file = \"{TLS}/{f}\"\n"));
        super::super::config::parse(
            &format!(
                "gateway = \"https://localhost:{port}\"\nservice = \"mc\"\ntoken = \"agent-secret\"\nports = [1]\n{ca}"
            ),
            "agent.toml",
        )
        .unwrap()
    }

    fn report() -> Report {
        Report {
            host: "mc-1".into(),
            connections: Some(2),
            players: None,
            count: None,
            valid_for: "3s".into(),
            pre_stop: true,
            leaving: false,
        }
    }

    #[tokio::test]
    async fn reports_go_over_https_to_a_gateway_signed_by_the_ca_file() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer =
            r#"{"valid_until":"2030-01-01T00:00:00.000Z","pre_stop":{"id":7,"timeout":"1m"}}"#;

        // The public roots do not know the test CA: refused, and the gateway counts as gone.
        let public = Link::new(&agent(port, None)).unwrap();
        let reach = public.reach();
        let report = report();
        let (refused, error) = tokio::join!(serve_once(&listener, answer), public.report(&report));
        assert!(refused.is_none());
        let error = error.unwrap_err().to_string();
        assert!(error.starts_with("TLS with localhost failed"), "{error}");
        assert!(reach.borrow().failing_since.is_some());

        // With the CA of its certificate, the report goes through with the token.
        let private = Link::new(&agent(port, Some("ca.pem"))).unwrap();
        let (request, answer) =
            tokio::join!(serve_once(&listener, answer), private.report(&report));
        let request = request.unwrap();
        assert!(
            request.starts_with("POST /api/v1/services/mc/report HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("authorization: Bearer agent-secret"),
            "{request}"
        );
        let answer = answer.unwrap();
        assert_eq!(answer.pre_stop.unwrap().id, 7);
        assert!(private.reach().borrow().failing_since.is_none());
    }
}
