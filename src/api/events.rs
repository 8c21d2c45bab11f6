//! Events over HTTP: history pages, a Server-Sent Events stream and a WebSocket. Both streams
//! deliver the backlog after the id a client last saw, then live events, in id order, with
//! no gap and no duplicate — also across reconnects and when a consumer falls behind (the
//! [`Feed`] in `event::feed` does the ordering). An event is serialized once for all
//! subscribers ([`Published`](crate::event::Published)); a subscriber with several events
//! ready gets them in one write.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Api, ApiError};
use crate::event::feed::{Feed, Item};

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    after: Option<i64>,
    service: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/events`: a page after `after`, or the latest events without it.
pub async fn history(
    State(api): State<Api>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(name) = &q.service {
        api.has_events_of(name)?;
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let (after, service) = (q.after, q.service);
    let (events, last_id) = api
        .store
        .read(move |store| {
            let events = match after {
                Some(after) => store.events(after, service.as_deref(), limit)?,
                None => store.latest_events(service.as_deref(), limit)?,
            };
            let last_id = match (events.last(), after) {
                (Some(e), _) => e.id,
                (None, Some(after)) => after,
                (None, None) => store.last_event_id()?,
            };
            Ok((events, last_id))
        })
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        serde_json::json!({ "events": events, "last_id": last_id }),
    ))
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    after: Option<i64>,
    /// Names, separated by commas.
    service: Option<String>,
}

impl Api {
    /// A name events may be asked for: a running service's, or the gateway's own (a reload).
    fn has_events_of(&self, name: &str) -> Result<(), ApiError> {
        if name == crate::event::GATEWAY {
            return Ok(());
        }
        self.service(name).map(|_| ())
    }

    async fn feed(
        &self,
        services: Option<Vec<String>>,
        after: Option<i64>,
    ) -> Result<Feed, ApiError> {
        let services = match services {
            Some(names) => {
                for name in &names {
                    self.has_events_of(name)?;
                }
                Some(names.into_iter().collect())
            }
            None => None,
        };
        Feed::new(self.store.clone(), &self.events, services, after)
            .await
            .map_err(ApiError::internal)
    }
}

fn split_names(list: Option<String>) -> Option<Vec<String>> {
    list.map(|l| {
        l.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// Sent on an SSE stream that has had nothing to send for [`KEEP_ALIVE`]: a comment, which
/// keeps proxies from closing it and tells a client that the gateway is there.
const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// At most this many bytes of events go out in one write; a burst is sent in such batches.
const BATCH_BYTES: usize = 32 * 1024;

/// A subscriber writes at most once per this: an event that comes within it of the last write
/// waits for its end, and goes out with the others that came meanwhile. An event after a quiet
/// moment goes out at once. So a busy stream costs each subscriber at most 100 wake-ups and
/// writes a second, whatever the rate of events, for at most this much added latency.
const PACE: Duration = Duration::from_millis(10);

/// When a subscriber last wrote, and whether it then left events behind (a batch full).
struct Pace {
    last_write: Option<Instant>,
    behind: bool,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            last_write: None,
            behind: false,
        }
    }

    /// Waits until the next write is due: at once after a quiet moment or a full batch, else
    /// [`PACE`] after the last write.
    async fn due(&self) {
        if self.behind {
            return;
        }
        if let Some(due) = self.last_write.map(|at| at + PACE)
            && Instant::now() < due
        {
            tokio::time::sleep_until(due).await;
        }
    }

    fn wrote(&mut self, full: bool) {
        self.last_write = Some(Instant::now());
        self.behind = full;
    }
}

/// `GET /api/v1/events/stream`: Server-Sent Events; `Last-Event-ID` resumes after that id.
/// Each event's frame is made once, whatever the number of subscribers (see
/// [`Published`](crate::event::Published)),
/// and a subscriber behind by several gets them in one write.
pub async fn sse(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                ApiError::BadRequest(format!("Last-Event-ID `{v}` is not an event id"))
            })
        })
        .transpose()?;
    let feed = api.feed(split_names(q.service), resume.or(q.after)).await?;
    let stream = SseStream {
        feed,
        keep_alive: Box::pin(tokio::time::sleep(KEEP_ALIVE)),
        last_sent: Instant::now(),
        pace: Pace::new(),
    };
    let body = Body::from_stream(futures_util::stream::unfold(
        stream,
        |mut stream| async move {
            let chunk = stream.next_chunk().await?;
            Some((Ok::<_, Infallible>(chunk), stream))
        },
    ));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// An SSE stream's state: its feed, and when it last sent anything.
struct SseStream {
    feed: Feed,
    /// Fires [`KEEP_ALIVE`] after the last write; reset only when it fires, not per event.
    keep_alive: Pin<Box<tokio::time::Sleep>>,
    last_sent: Instant,
    pace: Pace,
}

impl SseStream {
    /// The next bytes to send: the events ready (at least one), or a keep-alive comment.
    /// `None` ends the stream (wakegate shuts down, or the store cannot be read).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let first = loop {
            tokio::select! {
                item = self.feed.next() => break item.ok()?,
                () = self.keep_alive.as_mut() => {
                    let due = self.last_sent + KEEP_ALIVE;
                    if Instant::now() >= due {
                        self.last_sent = Instant::now();
                        self.keep_alive.as_mut().reset(self.last_sent + KEEP_ALIVE);
                        return Some(Bytes::from_static(KEEP_ALIVE_FRAME));
                    }
                    self.keep_alive.as_mut().reset(due);
                }
            }
        };
        self.pace.due().await;
        self.last_sent = Instant::now();
        let Some(second) = self.feed.next_ready().ok()? else {
            // Alone: the event's own shared frame, not a copy.
            self.pace.wrote(false);
            return Some(sse_frame(first));
        };
        let mut batch = BytesMut::with_capacity(BATCH_BYTES);
        batch.extend_from_slice(&sse_frame(first));
        batch.extend_from_slice(&sse_frame(second));
        while batch.len() < BATCH_BYTES {
            match self.feed.next_ready().ok()? {
                Some(item) => batch.extend_from_slice(&sse_frame(item)),
                None => break,
            }
        }
        self.pace.wrote(batch.len() >= BATCH_BYTES);
        Some(batch.freeze())
    }
}

fn sse_frame(item: Item) -> Bytes {
    match item {
        Item::Event(event) => event.sse().clone(),
        Item::Lagged { resume_after } => Bytes::from(format!(
            "event: lagged\ndata: {}\n\n",
            serde_json::json!({ "resume_after": resume_after })
        )),
    }
}

/// What a WebSocket client may send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    subscribe: Option<Vec<String>>,
    after: Option<i64>,
}

/// `GET /api/v1/ws?after=ID&service=a,b`: events over a WebSocket, like the SSE stream. The
/// client may also send `{"subscribe": ["name", …], "after": ID}` at any time to start over
/// with other services or from another id. Each start is announced with
/// `{"type": "subscribed", "after": ID, "services": […]}`: what follows it is exactly the
/// sequence asked for (events sent before it belong to the previous subscription).
pub async fn ws(
    State(api): State<Api>,
    Query(q): Query<StreamQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let services = split_names(q.service);
    let feed = api.feed(services.clone(), q.after).await?;
    let start = subscribed(&feed, services);
    Ok(upgrade
        // The default read buffer (128 KiB, zeroed before every read) would cost each idle
        // subscriber that much memory and each delivery a large memset; clients only send
        // short subscriptions.
        .read_buffer_size(4 * 1024)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| websocket(api, socket, feed, start.to_string()))
        .into_response())
}

fn subscribed(feed: &Feed, services: Option<Vec<String>>) -> serde_json::Value {
    serde_json::json!({ "type": "subscribed", "after": feed.cursor(), "services": services })
}

async fn websocket(api: Api, socket: WebSocket, mut feed: Feed, start: String) {
    let (mut sink, mut stream) = socket.split();
    // What the client sends is read by a task of its own, which runs only when the client
    // sends something: polled in the loop below, the read would be tried again on every event
    // (each try costs a read buffer's worth of zeroing). It is in a set that this task owns,
    // so it ends with it.
    let (texts_tx, mut texts) = mpsc::channel::<Utf8Bytes>(4);
    let mut reader = JoinSet::new();
    reader.spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let sent = match message {
                Message::Text(text) => texts_tx.send(text).await,
                Message::Close(_) => return,
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    let mut outgoing = Some(start);
    let mut pace = Pace::new();
    loop {
        if let Some(message) = outgoing.take()
            && sink.send(Message::Text(message.into())).await.is_err()
        {
            return;
        }
        let item = tokio::select! {
            text = texts.recv() => match text {
                Some(text) => {
                    outgoing = Some(subscribe(&api, &mut feed, &text).await);
                    continue;
                }
                // Closed by the client, or failed.
                None => return,
            },
            item = feed.next() => match item {
                Ok(item) => item,
                Err(_) => return,
            },
        };
        // The events ready go out together: queued, then one flush (one write) for all.
        pace.due().await;
        let mut queued = 0;
        let mut next = Some(item);
        while let Some(item) = next.take() {
            let message = match item {
                Item::Event(event) => match Utf8Bytes::try_from(event.json().clone()) {
                    Ok(json) => json,
                    Err(_) => continue,
                },
                Item::Lagged { resume_after } => {
                    serde_json::json!({ "type": "lagged", "resume_after": resume_after })
                        .to_string()
                        .into()
                }
            };
            queued += message.len();
            if sink.feed(Message::Text(message)).await.is_err() {
                return;
            }
            if queued < BATCH_BYTES {
                next = match feed.next_ready() {
                    Ok(next) => next,
                    Err(_) => return,
                };
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        pace.wrote(queued >= BATCH_BYTES);
    }
}

/// Handles what a WebSocket client sent: a new subscription, or a message it cannot read.
/// Returns the answer to send.
async fn subscribe(api: &Api, feed: &mut Feed, text: &str) -> String {
    match serde_json::from_str::<Subscribe>(text) {
        Ok(s) => match api.feed(s.subscribe.clone(), s.after).await {
            Ok(new) => {
                *feed = new;
                subscribed(feed, s.subscribe).to_string()
            }
            Err(e) => serde_json::json!({ "type": "error", "error": e.to_string() }).to_string(),
        },
        Err(e) => serde_json::json!({
            "type": "error",
            "error": format!("cannot read that message ({e}); send {{\"subscribe\": [\"name\"], \"after\": ID}}"),
        })
        .to_string(),
    }
}
