//! Events over HTTP: history pages, a Server-Sent Events stream and a WebSocket. Both streams
//! deliver the backlog after the id a client last saw, then live events, in id order, with
//! no gap and no duplicate — also across reconnects and when a consumer falls behind (the
//! [`Feed`] in `event::feed` does the ordering).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;

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
        api.service(name)?;
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
    async fn feed(
        &self,
        services: Option<Vec<String>>,
        after: Option<i64>,
    ) -> Result<Feed, ApiError> {
        let services = match services {
            Some(names) => {
                for name in &names {
                    self.service(name)?;
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

/// `GET /api/v1/events/stream`: Server-Sent Events; `Last-Event-ID` resumes after that id.
pub async fn sse(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
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
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let item = feed.next().await.ok()?;
        let sse = match item {
            Item::Event(event) => SseEvent::default()
                .id(event.id.to_string())
                .event(event.kind.as_str())
                .data(serde_json::to_string(&event).ok()?),
            Item::Lagged { resume_after } => SseEvent::default()
                .event("lagged")
                .data(serde_json::json!({ "resume_after": resume_after }).to_string()),
        };
        Some((Ok(sse), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
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

async fn websocket(api: Api, mut socket: WebSocket, mut feed: Feed, start: String) {
    let mut outgoing = Some(start);
    loop {
        if let Some(message) = outgoing.take()
            && socket.send(Message::Text(message.into())).await.is_err()
        {
            return;
        }
        outgoing = Some(tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Subscribe>(&text) {
                    Ok(s) => match api.feed(s.subscribe.clone(), s.after).await {
                        Ok(new) => {
                            feed = new;
                            subscribed(&feed, s.subscribe).to_string()
                        }
                        Err(e) => serde_json::json!({ "type": "error", "error": e.to_string() }).to_string(),
                    },
                    Err(e) => serde_json::json!({
                        "type": "error",
                        "error": format!("cannot read that message ({e}); send {{\"subscribe\": [\"name\"], \"after\": ID}}"),
                    }).to_string(),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
            item = feed.next() => match item {
                Ok(Item::Event(event)) => serde_json::to_string(&event).unwrap_or_default(),
                Ok(Item::Lagged { resume_after }) => serde_json::json!({ "type": "lagged", "resume_after": resume_after }).to_string(),
                Err(_) => return,
            },
        });
    }
}
