//! Events over HTTP: history pages, a Server-Sent Events stream and a WebSocket. Both streams
//! deliver the backlog after the id a client last saw, then live events, in id order, with
//! no gap and no duplicate — also across reconnects and when a consumer falls behind.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tracing::debug;

use super::{Api, ApiError};
use crate::event::Event;
use crate::store::Store;

/// How many events one history read returns at most.
const PAGE: usize = 500;

/// What a feed yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(Event),
    /// The consumer fell behind the live buffer; the feed goes on from history after this id.
    Lagged {
        resume_after: i64,
    },
}

/// An ordered, gap-free sequence of events after some id, optionally of some services.
pub struct Feed {
    store: Arc<Store>,
    live: broadcast::Receiver<Event>,
    services: Option<HashSet<String>>,
    /// The id of the last event looked at (delivered or filtered out).
    cursor: i64,
    backlog: VecDeque<Event>,
    /// Events after `cursor` may be only in the store.
    behind: bool,
}

impl Feed {
    /// Events after `after`, or from now on without it.
    pub fn new(
        store: Arc<Store>,
        events: &broadcast::Sender<Event>,
        services: Option<HashSet<String>>,
        after: Option<i64>,
    ) -> anyhow::Result<Feed> {
        // Subscribe before reading the store: an event is stored before it is published, so
        // every event is then in the store, in the live buffer, or in both.
        let live = events.subscribe();
        let cursor = match after {
            Some(id) => id,
            None => store.last_event_id()?,
        };
        Ok(Feed {
            store,
            live,
            services,
            cursor,
            backlog: VecDeque::new(),
            behind: after.is_some(),
        })
    }

    fn wanted(&self, event: &Event) -> bool {
        self.services
            .as_ref()
            .is_none_or(|s| s.contains(&event.service))
    }

    /// Reads one page of stored events after the cursor (those before `until`, when given)
    /// into the backlog; returns whether there are no more.
    fn catch_up(&mut self, until: Option<i64>) -> anyhow::Result<bool> {
        let only = match &self.services {
            Some(s) if s.len() == 1 => s.iter().next().cloned(),
            _ => None,
        };
        let page = self.store.events(self.cursor, only.as_deref(), PAGE)?;
        let complete = page.len() < PAGE;
        for event in page {
            if until.is_some_and(|u| event.id >= u) {
                return Ok(true);
            }
            self.cursor = event.id;
            if self.wanted(&event) {
                self.backlog.push_back(event);
            }
        }
        Ok(complete)
    }

    /// The next item; waits for a live event when there is nothing older to send.
    pub async fn next(&mut self) -> anyhow::Result<Item> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                return Ok(Item::Event(event));
            }
            if self.behind {
                // A page at a time, so a consumer far behind never holds all history at once.
                self.behind = !self.catch_up(None)?;
                continue;
            }
            match self.live.recv().await {
                Ok(event) if event.id <= self.cursor => {}
                Ok(event) => {
                    // Services publish independently: an event with a lower id may still be on
                    // its way. It is in the store already, so take it from there first.
                    while event.id > self.cursor + 1 && !self.catch_up(Some(event.id))? {}
                    self.cursor = event.id;
                    if self.wanted(&event) {
                        self.backlog.push_back(event);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    debug!(
                        missed,
                        "An event consumer fell behind; resuming from history."
                    );
                    self.behind = true;
                    return Ok(Item::Lagged {
                        resume_after: self.cursor,
                    });
                }
                Err(RecvError::Closed) => anyhow::bail!("wakegate is shutting down"),
            }
        }
    }
}

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
    let events = match q.after {
        Some(after) => api.store.events(after, q.service.as_deref(), limit),
        None => api.store.latest_events(q.service.as_deref(), limit),
    }
    .map_err(ApiError::internal)?;
    let last_id = match events.last() {
        Some(e) => e.id,
        None => match q.after {
            Some(after) => after,
            None => api.store.last_event_id().map_err(ApiError::internal)?,
        },
    };
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
    fn feed(&self, services: Option<Vec<String>>, after: Option<i64>) -> Result<Feed, ApiError> {
        let services = match services {
            Some(names) => {
                for name in &names {
                    self.service(name)?;
                }
                Some(names.into_iter().collect())
            }
            None => None,
        };
        Feed::new(self.store.clone(), &self.events, services, after).map_err(ApiError::internal)
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
    let feed = api.feed(split_names(q.service), resume.or(q.after))?;
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
    let feed = api.feed(services.clone(), q.after)?;
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
    serde_json::json!({ "type": "subscribed", "after": feed.cursor, "services": services })
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
                    Ok(s) => match api.feed(s.subscribe.clone(), s.after) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, NewEvent, State};

    fn record(store: &Store, service: &str, n: usize) -> Event {
        store
            .record(
                service,
                NewEvent {
                    kind: Kind::Progress,
                    state: State::Awake,
                    reason: format!("step {n}"),
                    detail: serde_json::Value::Null,
                },
                None,
            )
            .unwrap()
    }

    #[tokio::test]
    async fn a_consumer_that_falls_behind_is_told_and_misses_nothing() {
        let store = Arc::new(Store::in_memory().unwrap());
        let (events, _) = broadcast::channel(8);
        let mut feed = Feed::new(store.clone(), &events, None, Some(0)).unwrap();
        // Far more than the live buffer holds, published while the consumer reads nothing.
        let published: Vec<i64> = (0..100)
            .map(|n| {
                let event = record(&store, if n % 3 == 0 { "a" } else { "b" }, n);
                let _ = events.send(event.clone());
                event.id
            })
            .collect();
        let mut seen = Vec::new();
        let mut lagged = 0;
        while seen.len() < published.len() {
            match feed.next().await.unwrap() {
                Item::Event(e) => seen.push(e.id),
                Item::Lagged { resume_after } => {
                    assert_eq!(Some(&resume_after), seen.last().or(Some(&0)));
                    lagged += 1;
                }
            }
        }
        assert_eq!(seen, published);
        // History covered the first ones; the live buffer had lagged by then.
        assert!(lagged <= 1);
    }

    #[tokio::test]
    async fn an_event_published_out_of_id_order_is_not_lost() {
        let store = Arc::new(Store::in_memory().unwrap());
        let (events, _) = broadcast::channel(8);
        let mut feed = Feed::new(store.clone(), &events, None, None).unwrap();
        // Two services store 1 then 2, but 2 is published first.
        let first = record(&store, "a", 1);
        let second = record(&store, "b", 2);
        events.send(second.clone()).unwrap();
        events.send(first.clone()).unwrap();
        assert_eq!(feed.next().await.unwrap(), Item::Event(first));
        assert_eq!(feed.next().await.unwrap(), Item::Event(second));
        let third = record(&store, "a", 3);
        events.send(third.clone()).unwrap();
        assert_eq!(feed.next().await.unwrap(), Item::Event(third));
    }

    #[tokio::test]
    async fn a_feed_of_one_service_skips_the_others() {
        let store = Arc::new(Store::in_memory().unwrap());
        let (events, _) = broadcast::channel(8);
        let only_b = Some(HashSet::from(["b".to_string()]));
        let mut feed = Feed::new(store.clone(), &events, only_b, Some(0)).unwrap();
        for n in 0..6 {
            let event = record(&store, if n % 2 == 0 { "a" } else { "b" }, n);
            let _ = events.send(event);
        }
        for expected in [2, 4, 6] {
            match feed.next().await.unwrap() {
                Item::Event(e) => assert_eq!((e.id, e.service.as_str()), (expected, "b")),
                other => panic!("{other:?}"),
            }
        }
    }
}
