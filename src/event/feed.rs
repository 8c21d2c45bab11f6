//! A feed: the ordered, gap-free sequence of events after some id, from history then live,
//! also when a consumer falls behind the live buffer. The API streams and the notification
//! outbox read events through it. Live events are [`Published`]: shared, never copied, per
//! consumer.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::debug;

use crate::event::{Event, Published};
use crate::store::Store;

/// How many events one history read returns at most.
const PAGE: usize = 500;

/// What a feed yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(Published),
    /// The consumer fell behind the live buffer; the feed goes on from history after this id.
    Lagged {
        resume_after: i64,
    },
}

/// An ordered, gap-free sequence of events after some id, optionally of some services.
pub struct Feed {
    store: Arc<Store>,
    live: broadcast::Receiver<Published>,
    services: Option<HashSet<String>>,
    /// The id of the last event looked at (delivered or filtered out).
    cursor: i64,
    backlog: VecDeque<Published>,
    /// Events after `cursor` may be only in the store.
    behind: bool,
    /// A live event taken from the channel whose predecessors are still being read from the
    /// store: kept here so that a `next` dropped meanwhile (a `select!`) loses nothing.
    waiting: Option<Published>,
}

impl Feed {
    /// Events after `after`, or from now on without it.
    pub async fn new(
        store: Arc<Store>,
        events: &broadcast::Sender<Published>,
        services: Option<HashSet<String>>,
        after: Option<i64>,
    ) -> anyhow::Result<Feed> {
        match after {
            Some(id) => Ok(Feed::after(store, events, services, id)),
            None => {
                // Subscribe before reading the store: an event is stored before it is
                // published, so every event is then in the store, in the live buffer, or in both.
                let live = events.subscribe();
                let cursor = store.read(|s| s.last_event_id()).await?;
                Ok(Feed {
                    store,
                    live,
                    services,
                    cursor,
                    backlog: VecDeque::new(),
                    behind: false,
                    waiting: None,
                })
            }
        }
    }

    /// Events after `id` (read from the store first, then live).
    pub fn after(
        store: Arc<Store>,
        events: &broadcast::Sender<Published>,
        services: Option<HashSet<String>>,
        id: i64,
    ) -> Feed {
        Feed {
            store,
            live: events.subscribe(),
            services,
            cursor: id,
            backlog: VecDeque::new(),
            behind: true,
            waiting: None,
        }
    }

    /// The id of the last event looked at: what follows is exactly what comes after it.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    fn wanted(&self, event: &Event) -> bool {
        self.services
            .as_ref()
            .is_none_or(|s| s.contains(&event.service))
    }

    /// Reads one page of stored events after the cursor (those before `until`, when given)
    /// into the backlog; returns whether there are no more.
    async fn catch_up(&mut self, until: Option<i64>) -> anyhow::Result<bool> {
        let only = match &self.services {
            Some(s) if s.len() == 1 => s.iter().next().cloned(),
            _ => None,
        };
        let cursor = self.cursor;
        let page = self
            .store
            .read(move |s| s.events(cursor, only.as_deref(), PAGE))
            .await?;
        let complete = page.len() < PAGE;
        for event in page {
            if until.is_some_and(|u| event.id >= u) {
                return Ok(true);
            }
            self.cursor = event.id;
            if self.wanted(&event) {
                self.backlog.push_back(Published::new(event));
            }
        }
        Ok(complete)
    }

    /// The next item; waits for a live event when there is nothing older to send.
    /// Cancel-safe: a `next` dropped before it returns loses nothing.
    pub async fn next(&mut self) -> anyhow::Result<Item> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                return Ok(Item::Event(event));
            }
            if self.behind {
                // A page at a time, so a consumer far behind never holds all history at once.
                self.behind = !self.catch_up(None).await?;
                continue;
            }
            if let Some(id) = self.waiting.as_ref().map(|e| e.id) {
                // Services publish independently: an event with a lower id may still be on
                // its way. It is in the store already, so take it from there first.
                while id > self.cursor + 1 && !self.catch_up(Some(id)).await? {}
                if let Some(event) = self.waiting.take() {
                    self.take(event);
                }
                continue;
            }
            let received = self.live.recv().await;
            if let Some(item) = self.received(received)? {
                return Ok(item);
            }
        }
    }

    /// The next item if one is ready without waiting (nothing to read from the store, no live
    /// event to wait for): what a consumer sends along with the one `next` gave it, so that
    /// a burst goes out in few writes.
    pub fn next_ready(&mut self) -> anyhow::Result<Option<Item>> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                return Ok(Some(Item::Event(event)));
            }
            if self.behind || self.waiting.is_some() {
                return Ok(None);
            }
            let received = match self.live.try_recv() {
                Ok(event) => Ok(event),
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
            };
            if let Some(item) = self.received(received)? {
                return Ok(Some(item));
            }
        }
    }

    /// Takes what the live channel gave; an item when it has one to give at once.
    fn received(&mut self, received: Result<Published, RecvError>) -> anyhow::Result<Option<Item>> {
        match received {
            Ok(event) if event.id <= self.cursor => Ok(None),
            Ok(event) if event.id > self.cursor + 1 => {
                self.waiting = Some(event);
                Ok(None)
            }
            Ok(event) => {
                self.take(event);
                Ok(None)
            }
            Err(RecvError::Lagged(missed)) => {
                debug!(
                    missed,
                    "An event consumer fell behind; resuming from history."
                );
                self.behind = true;
                Ok(Some(Item::Lagged {
                    resume_after: self.cursor,
                }))
            }
            Err(RecvError::Closed) => anyhow::bail!("wakegate is shutting down"),
        }
    }

    /// Moves the cursor to a live event that comes next in id order, and keeps it if wanted.
    fn take(&mut self, event: Published) {
        self.cursor = event.id;
        if self.wanted(&event) {
            self.backlog.push_back(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, NewEvent, State};

    /// Stores an event without publishing it: each test publishes in an order of its own.
    fn record(store: &Store, service: &str, n: usize) -> Event {
        store.insert_now(
            service,
            NewEvent {
                kind: Kind::Progress,
                state: State::Awake,
                reason: format!("step {n}"),
                detail: serde_json::Value::Null,
            },
        )
    }

    #[tokio::test]
    async fn a_consumer_that_falls_behind_is_told_and_misses_nothing() {
        let store = Arc::new(Store::in_memory().unwrap());
        let (events, _) = broadcast::channel(8);
        let mut feed = Feed::new(store.clone(), &events, None, Some(0))
            .await
            .unwrap();
        // Far more than the live buffer holds, published while the consumer reads nothing.
        let published: Vec<i64> = (0..100)
            .map(|n| {
                let event = record(&store, if n % 3 == 0 { "a" } else { "b" }, n);
                let _ = events.send(event.clone().into());
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
        let mut feed = Feed::new(store.clone(), &events, None, None).await.unwrap();
        // Two services store 1 then 2, but 2 is published first.
        let first = record(&store, "a", 1);
        let second = record(&store, "b", 2);
        events.send(second.clone().into()).unwrap();
        events.send(first.clone().into()).unwrap();
        assert_eq!(feed.next().await.unwrap(), Item::Event(first.into()));
        assert_eq!(feed.next().await.unwrap(), Item::Event(second.into()));
        let third = record(&store, "a", 3);
        events.send(third.clone().into()).unwrap();
        assert_eq!(feed.next().await.unwrap(), Item::Event(third.into()));
    }

    #[tokio::test]
    async fn a_feed_of_one_service_skips_the_others() {
        let store = Arc::new(Store::in_memory().unwrap());
        let (events, _) = broadcast::channel(8);
        let only_b = Some(HashSet::from(["b".to_string()]));
        let mut feed = Feed::new(store.clone(), &events, only_b, Some(0))
            .await
            .unwrap();
        for n in 0..6 {
            let event = record(&store, if n % 2 == 0 { "a" } else { "b" }, n);
            let _ = events.send(event.into());
        }
        for expected in [2, 4, 6] {
            match feed.next().await.unwrap() {
                Item::Event(e) => assert_eq!((e.id, e.service.as_str()), (expected, "b")),
                other => panic!("{other:?}"),
            }
        }
    }
}
