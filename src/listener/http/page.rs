//! The waiting page and what it reads: the page itself (built in, or a template file), and a
//! narrow, read-only view of one service under the reserved path [`RESERVED`] — its state
//! now (`/status`) and a Server-Sent Events stream of its changes (`/events`). These need no
//! API token and say no more than a visitor may know: the state, the step of the wake and the
//! expected time; never addresses, clients or error texts.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::Body;
use crate::event::{Event, Kind, State};
use crate::service::ServiceHandle;

/// Paths under this prefix are answered by wakegate on every host, and never forwarded.
pub const RESERVED: &str = "/.wakegate";

/// The page shown without a `page` template file.
pub const BUILT_IN: &str = include_str!("page.html");

/// How often an idle event stream sends a comment, so proxies and browsers keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What the page is told about its service.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub state: State,
    /// What the wake is doing, in words for a visitor.
    pub step: Option<String>,
    pub elapsed: Duration,
    /// Expected time left, from the service's recent boots.
    pub eta: Option<Duration>,
}

impl View {
    pub fn of(service: &ServiceHandle) -> View {
        let status = service.status();
        // Not started yet, the whole expected boot is ahead; while waking, what is left of it.
        let eta = status.eta();
        let elapsed = if status.state == State::Waking {
            status.since.elapsed().unwrap_or_default()
        } else {
            Duration::ZERO
        };
        View {
            state: status.state,
            step: None,
            elapsed,
            eta,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "state": self.state,
            "step": self.step,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "eta_ms": self.eta.map(|e| e.as_millis() as u64),
        })
    }
}

/// Fills a template: `{{service}}`, `{{state}}`, `{{eta_seconds}}` (empty when unknown),
/// `{{elapsed_seconds}}` and `{{base}}` (the reserved path the page reads from).
pub fn render(template: &str, service: &str, view: &View) -> String {
    template
        .replace("{{service}}", &escape(service))
        .replace("{{state}}", view.state.as_str())
        .replace(
            "{{eta_seconds}}",
            &view
                .eta
                .map_or(String::new(), |e| format!("{:.1}", e.as_secs_f64())),
        )
        .replace(
            "{{elapsed_seconds}}",
            &format!("{:.1}", view.elapsed.as_secs_f64()),
        )
        .replace("{{base}}", RESERVED)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// The waiting page, as 503 with Retry-After so that crawlers and caches never keep it.
pub fn page(html: String, retry_after: Duration) -> Response<Body> {
    let mut response = Response::new(super::full(html));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(RETRY_AFTER, super::seconds(retry_after));
    response
}

/// `GET /.wakegate/status`: the view now, as JSON.
pub fn status(service: &ServiceHandle) -> Response<Body> {
    let mut response = Response::new(super::full(View::of(service).json().to_string()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /.wakegate/events`: the view now, then a new one on every step of the service's
/// wake or change of state, as `status` events, until the client leaves or wakegate shuts
/// down.
pub fn events(service: ServiceHandle, close: CancellationToken) -> Response<Body> {
    // Subscribe before reading the state: no change can fall between the two.
    let live = service.subscribe();
    let first = View::of(&service);
    let state = (live, Some(first), service, close);
    let frames = stream::unfold(state, |(mut live, first, service, close)| async move {
        if let Some(view) = first {
            return Some((Ok(sse(&view)), (live, None, service, close)));
        }
        loop {
            let received = tokio::select! {
                () = close.cancelled() => return None,
                received = tokio::time::timeout(KEEP_ALIVE, live.recv()) => received,
            };
            let frame = match received {
                Err(_) => Frame::data(Bytes::from_static(b": keep-alive\n\n")),
                Ok(Ok(event)) if event.service == service.name() => {
                    // Leases, actions and warnings say nothing a visitor needs.
                    if !matches!(event.kind, Kind::Transition | Kind::Progress) {
                        continue;
                    }
                    let mut view = View::of(&service);
                    // The event's own state: the status may have moved on already, and the
                    // next event tells that.
                    view.state = event.state;
                    view.step = step(&event);
                    sse(&view)
                }
                Ok(Ok(_)) => continue,
                // Fell behind: send the state now; later events follow.
                Ok(Err(RecvError::Lagged(_))) => sse(&View::of(&service)),
                Ok(Err(RecvError::Closed)) => return None,
            };
            return Some((Ok::<_, Infallible>(frame), (live, None, service, close)));
        }
    });
    let body = StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn sse(view: &View) -> Frame<Bytes> {
    Frame::data(Bytes::from(format!(
        "event: status\ndata: {}\n\n",
        view.json()
    )))
}

/// The step of a wake a progress event describes, in words for a visitor.
fn step(event: &Event) -> Option<String> {
    if event.kind != Kind::Progress {
        return None;
    }
    match event.detail.get("step").and_then(|s| s.as_str()) {
        Some("probing") => Some("Waiting for the server to answer…".to_string()),
        _ => Some("Starting the server…".to_string()),
    }
}
