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
use super::wire::{PreStopResult, Report, ReportAnswer, WaitAnswer};
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

    /// Waits (up to the gateway's hold) for a pre-stop request.
    pub async fn wait(&self) -> Result<WaitAnswer, LinkError> {
        let path = format!("/api/v1/services/{}/agent/wait", self.service);
        self.post(&self.held, &path, &serde_json::json!({})).await
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
