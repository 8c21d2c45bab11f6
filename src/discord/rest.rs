//! Discord's REST API, on the notifications' HTTP client: the bot token on bot routes, and
//! Discord's rate limits honoured per route (a 429's `retry_after`, or `X-RateLimit-Remaining:
//! 0` with `X-RateLimit-Reset-After`, holds back the next call on that route; a global 429 holds
//! back every route). Errors and logs name the route, never the interaction token in its path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use serde::Serialize;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::de::Secret;
use crate::notify::http::{Answer, Client, Endpoint};

/// How long one call may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(15);

/// How many 429s in a row one call sits out before it gives up.
const MAX_RATE_LIMITED: usize = 5;

/// The longest wait a 429 is obeyed for; a longer one fails the call instead.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// A call to Discord: its method, its path under the API URL, and the route it is limited by.
/// Its `Debug` shows the route only.
#[derive(Clone)]
pub struct Call {
    pub method: Method,
    /// The path, which may hold an interaction token: never logged.
    path: String,
    /// The path with the token left out: the rate-limit key and what logs name.
    pub route: String,
    /// Whether the bot token goes along (not on interaction webhooks, whose token is the path).
    bot: bool,
}

impl Call {
    /// A call authorised by the bot token.
    pub fn bot(method: Method, path: String) -> Call {
        Call {
            route: format!("{method} {path}"),
            method,
            path,
            bot: true,
        }
    }

    /// A call on an interaction's webhook, whose token is in the path.
    pub fn interaction(method: Method, application: u64, token: &str, rest: &str) -> Call {
        Call {
            route: format!("{method} /webhooks/{application}/…{rest}"),
            method,
            path: format!("/webhooks/{application}/{token}{rest}"),
            bot: false,
        }
    }
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Call({})", self.route)
    }
}

/// A Discord REST client.
#[derive(Clone)]
pub struct Rest {
    api_url: String,
    token: Secret,
    http: Arc<Client>,
    /// Until when each route (and, under `""`, every route) is held back.
    blocked: Arc<Mutex<HashMap<String, Instant>>>,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rest({})", self.api_url)
    }
}

impl Rest {
    pub fn new(api_url: &str, token: Secret) -> Rest {
        Rest {
            api_url: api_url.trim_end_matches('/').to_string(),
            token,
            http: Arc::new(Client::new(TIMEOUT)),
            blocked: Arc::default(),
        }
    }

    /// Sends `body` as JSON; returns the answer's JSON (`null` for 204). An error is a sentence
    /// that names the route and what Discord said.
    pub async fn call(
        &self,
        call: &Call,
        body: Option<&impl Serialize>,
    ) -> Result<serde_json::Value, String> {
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| e.to_string())?),
            None => Bytes::new(),
        };
        let endpoint = Endpoint::parse(&format!("{}{}", self.api_url, call.path))
            .map_err(|why| format!("the Discord API URL {why}"))?;
        let mut limited = 0;
        loop {
            self.wait_turn(&call.route).await;
            let answer = self
                .http
                .send(
                    call.method.clone(),
                    &endpoint,
                    self.headers(call.bot),
                    body.clone(),
                )
                .await
                .map_err(|e| format!("{}: {e}", call.route))?;
            self.note_limits(&call.route, &answer);
            if answer.status.as_u16() == 429 {
                limited += 1;
                let (wait, global) = retry_after(&answer);
                if limited > MAX_RATE_LIMITED || wait > MAX_WAIT {
                    return Err(format!(
                        "{}: Discord keeps refusing it for its rate limit (asked to wait {})",
                        call.route,
                        humantime::format_duration(wait)
                    ));
                }
                debug!(route = %call.route, wait_ms = wait.as_millis() as u64, global, "Discord rate limit: waiting.");
                self.block(if global { "" } else { &call.route }, wait);
                continue;
            }
            if !answer.status.is_success() {
                let said = serde_json::from_slice::<serde_json::Value>(&answer.body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                    .unwrap_or_default();
                warn!(route = %call.route, status = answer.status.as_u16(), message = %said, "Discord refused a call.");
                return Err(format!(
                    "{}: Discord answered {} {said}",
                    call.route, answer.status
                ));
            }
            if answer.body.is_empty() {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_slice(&answer.body)
                .map_err(|e| format!("{}: Discord's answer is not JSON: {e}", call.route));
        }
    }

    fn headers(&self, bot: bool) -> Vec<(header::HeaderName, HeaderValue)> {
        let mut headers = vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            // The form Discord asks bots to use.
            (
                header::USER_AGENT,
                HeaderValue::from_static(concat!(
                    "DiscordBot (https://github.com/wakegate/wakegate, ",
                    env!("CARGO_PKG_VERSION"),
                    ")"
                )),
            ),
        ];
        if bot && let Ok(mut value) = HeaderValue::from_str(&format!("Bot {}", self.token.expose()))
        {
            value.set_sensitive(true);
            headers.push((header::AUTHORIZATION, value));
        }
        headers
    }

    /// Waits while the route, or every route, is held back.
    async fn wait_turn(&self, route: &str) {
        loop {
            let until = {
                let blocked = self
                    .blocked
                    .lock()
                    .expect("the rate-limit map is never poisoned");
                [blocked.get(route), blocked.get("")]
                    .into_iter()
                    .flatten()
                    .max()
                    .copied()
            };
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    fn block(&self, route: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut blocked = self
            .blocked
            .lock()
            .expect("the rate-limit map is never poisoned");
        let entry = blocked.entry(route.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// A bucket with nothing left holds the route back until it resets.
    fn note_limits(&self, route: &str, answer: &Answer) {
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
        };
        if header("x-ratelimit-remaining") == Some(0.0)
            && let Some(reset) = header("x-ratelimit-reset-after")
            && let Ok(wait) = Duration::try_from_secs_f64(reset)
        {
            self.block(route, wait.min(MAX_WAIT));
        }
    }
}

/// The wait a 429 asks for (`retry_after` in the JSON body, else `Retry-After`), and whether it
/// holds for every route.
fn retry_after(answer: &Answer) -> (Duration, bool) {
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let global = body
        .get("global")
        .and_then(|g| g.as_bool())
        .unwrap_or(false);
    let seconds = body
        .get("retry_after")
        .and_then(|r| r.as_f64())
        .or_else(|| {
            answer
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1.0);
    (
        Duration::try_from_secs_f64(seconds).unwrap_or(Duration::from_secs(1)),
        global,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_debug_output_leave_the_tokens_out() {
        let call = Call::interaction(
            Method::PATCH,
            12,
            "interaction-secret",
            "/messages/@original",
        );
        assert_eq!(
            call.path,
            "/webhooks/12/interaction-secret/messages/@original"
        );
        assert_eq!(call.route, "PATCH /webhooks/12/…/messages/@original");
        assert!(!format!("{call:?}").contains("interaction-secret"));
        let rest = Rest::new("https://discord.com/api/v10/", Secret::new("bot-secret"));
        assert_eq!(format!("{rest:?}"), "Rest(https://discord.com/api/v10)");
        let auth = rest.headers(true);
        let (_, value) = auth
            .iter()
            .find(|(n, _)| n == header::AUTHORIZATION)
            .unwrap();
        assert!(value.is_sensitive());
        assert!(
            !rest
                .headers(false)
                .iter()
                .any(|(n, _)| n == header::AUTHORIZATION)
        );
    }

    #[test]
    fn a_429_asks_for_its_body_retry_after_else_its_header() {
        let answer = |body: &str, header: Option<&str>| {
            let mut headers = hyper::HeaderMap::new();
            if let Some(h) = header {
                headers.insert(header::RETRY_AFTER, h.parse().unwrap());
            }
            Answer {
                status: hyper::StatusCode::TOO_MANY_REQUESTS,
                headers,
                body: Bytes::from(body.to_string()),
            }
        };
        assert_eq!(
            retry_after(&answer(
                r#"{"retry_after": 0.25, "global": false}"#,
                Some("1")
            )),
            (Duration::from_millis(250), false)
        );
        assert_eq!(
            retry_after(&answer(r#"{"retry_after": 2, "global": true}"#, None)),
            (Duration::from_secs(2), true)
        );
        assert_eq!(
            retry_after(&answer("", Some("3"))),
            (Duration::from_secs(3), false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_bucket_holds_its_route_back_until_it_resets() {
        let rest = Rest::new("http://127.0.0.1:9", Secret::new("t"));
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset-after", "2.5".parse().unwrap());
        let answer = Answer {
            status: hyper::StatusCode::OK,
            headers,
            body: Bytes::new(),
        };
        rest.note_limits("PATCH /a", &answer);
        let start = Instant::now();
        rest.wait_turn("PATCH /b").await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "another route is not held back"
        );
        rest.wait_turn("PATCH /a").await;
        assert_eq!(start.elapsed(), Duration::from_millis(2500));
        // A global limit holds back every route.
        rest.block("", Duration::from_secs(1));
        rest.wait_turn("PATCH /b").await;
        assert_eq!(start.elapsed(), Duration::from_millis(3500));
    }
}
