//! One task per notification target: it follows the event log from the target's cursor,
//! delivers each wanted event in order, and moves the cursor only once the receiver took it.
//! Failures wait and retry (doubling from `retry_min` to `retry_max`, or as long as a 429
//! asks), so a target blocks nobody but itself: the feed reads from the store when the task
//! falls behind the live broadcast, and the gateway never waits for a receiver.
//!
//! Delivery is at least once: a crash between the receiver's answer and the cursor's commit
//! sends that event again, with the same id in `X-Wakegate-Event-Id` for the receiver to drop.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::StatusCode;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::http::{Answer, Client, Endpoint};
use super::turn;
use super::{Target, TargetKind, discord, webhook};
use crate::event::feed::{Feed, Item};
use crate::event::{Event, Published};
use crate::store::{Cluster, Store};

/// Starts a task per target on `tracker`; they run until `cancel` fires. Each target's cursor
/// is read (or set, for a new target, to the newest event) before this returns, so a new
/// target hears about everything that happens after the gateway started.
pub fn spawn(
    targets: &[Target],
    store: &Arc<Store>,
    events: &broadcast::Sender<Published>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    for target in targets {
        let cursor = store.notify_cursor(&target.name)?;
        let endpoint = Endpoint::parse(target.url.expose())
            .map_err(|why| anyhow::anyhow!("the url of notify target `{}` {why}", target.name))?;
        if let Some(cluster) = store.cluster() {
            // Several gateways: one at a time delivers it, under a lease (see `turn`).
            let span = info_span!("notify", target = %target.name);
            let turn = take_turns(
                cluster,
                target.clone(),
                endpoint,
                store.clone(),
                events.clone(),
                cancel.child_token(),
            );
            tracker.spawn(turn.instrument(span));
            continue;
        }
        info!(target = %target.name, kind = target.kind.as_str(), host = endpoint.host(), after = cursor, "Notifications start.");
        let outbox = Outbox::new(
            target.clone(),
            endpoint,
            store.clone(),
            events.clone(),
            cursor,
            cancel.child_token(),
        );
        let span = info_span!("notify", target = %target.name);
        tracker.spawn(outbox.run().instrument(span));
    }
    Ok(())
}

/// A target of a store shared by several gateways: waits for its lease (see `turn`), delivers
/// from its stored cursor while it holds it, and waits again, until `cancel`.
async fn take_turns(
    cluster: Arc<Cluster>,
    target: Target,
    endpoint: Endpoint,
    store: Arc<Store>,
    events: broadcast::Sender<Published>,
    cancel: CancellationToken,
) {
    let key = format!("notify:{}", target.name);
    while let Some(claimed_at) = turn::wait_turn(&cluster, &key, &cancel).await {
        let name = target.name.clone();
        let cursor = match store.read(move |s| s.notify_cursor(&name)).await {
            Ok(cursor) => cursor,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "Cannot read the target's cursor; trying again.");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(cluster.lease() / 3) => continue,
                }
            }
        };
        info!(
            gateway = cluster.id(),
            after = cursor,
            "This gateway delivers the target's notifications now."
        );
        let term = cancel.child_token();
        let outbox = Outbox::new(
            target.clone(),
            endpoint.clone(),
            store.clone(),
            events.clone(),
            cursor,
            term.clone(),
        );
        tokio::join!(outbox.run(), turn::renew(&cluster, &key, claimed_at, &term));
        if cancel.is_cancelled() {
            turn::release(&cluster, &key).await;
            return;
        }
        warn!("This gateway lost the target's lease; another delivers it now.");
    }
}

/// How one delivery attempt ended.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// The receiver took it (2xx).
    Accepted,
    /// It will never take it (4xx other than 408 and 429): skip the event.
    Refused(String),
    /// It asked to wait this long (429).
    RateLimited(Option<Duration>, String),
    /// Down, unreachable, 5xx or 408: back off and retry.
    Failed(String),
}

struct Outbox {
    target: Target,
    client: Client,
    endpoint: Endpoint,
    store: Arc<Store>,
    events: broadcast::Sender<Published>,
    feed: Feed,
    /// The last event this target is done with (delivered, refused, or not wanted).
    done: i64,
    /// The cursor as stored.
    committed: i64,
    cancel: CancellationToken,
}

impl Outbox {
    /// An outbox that delivers `target` from `cursor` until `cancel` fires.
    fn new(
        target: Target,
        endpoint: Endpoint,
        store: Arc<Store>,
        events: broadcast::Sender<Published>,
        cursor: i64,
        cancel: CancellationToken,
    ) -> Outbox {
        Outbox {
            client: Client::new(target.timeout),
            feed: Feed::after(store.clone(), &events, None, cursor),
            endpoint,
            target,
            store,
            events,
            done: cursor,
            committed: cursor,
            cancel,
        }
    }

    async fn run(mut self) {
        let mut backoff = self.target.retry_min;
        loop {
            // Events that are not wanted move the cursor only when the feed runs dry, so a
            // burst of them costs one write, not one each.
            let item = match self.feed.next().now_or_never() {
                Some(item) => item,
                None => {
                    self.commit();
                    tokio::select! {
                        () = self.cancel.cancelled() => break,
                        item = self.feed.next() => item,
                    }
                }
            };
            let event = match item {
                Ok(Item::Event(event)) => event,
                // The feed goes on from the store by itself.
                Ok(Item::Lagged { .. }) => continue,
                Err(e) => {
                    // Only the store can fail here: wait, then read again from the cursor.
                    warn!(error = %format!("{e:#}"), "Cannot read the events to notify; retrying.");
                    if !self.wait(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(self.target.retry_max);
                    self.feed = Feed::after(self.store.clone(), &self.events, None, self.done);
                    continue;
                }
            };
            backoff = self.target.retry_min;
            if event.id <= self.done {
                continue;
            }
            if self.target.filter.wants(&event) {
                if !self.deliver(&event).await {
                    break;
                }
                self.done = event.id;
                self.commit();
            } else {
                self.done = event.id;
            }
        }
        self.commit();
        debug!("Notifications stopped.");
    }

    /// Hands the cursor to the store if it moved (written with the next write; while the store
    /// cannot write, the events after the stored cursor would be sent again after a restart,
    /// with their idempotency keys).
    fn commit(&mut self) {
        if self.done != self.committed {
            self.store.set_notify_cursor(&self.target.name, self.done);
            self.committed = self.done;
        }
    }

    /// Delivers one event, retrying until the receiver takes or refuses it; false when
    /// wakegate is shutting down first.
    async fn deliver(&self, event: &Event) -> bool {
        let mut backoff = self.target.retry_min;
        let mut attempt = 1u32;
        loop {
            let outcome = tokio::select! {
                () = self.cancel.cancelled() => return false,
                outcome = self.attempt(event) => outcome,
            };
            let wait = match outcome {
                Attempt::Accepted => {
                    debug!(event = event.id, attempt, "Notification delivered.");
                    return true;
                }
                Attempt::Refused(why) => {
                    error!(
                        event = event.id,
                        service = %event.service,
                        "The receiver refused the notification for good ({why}); skipping this event. Check the target's url and the receiver's logs."
                    );
                    return true;
                }
                Attempt::RateLimited(after, why) => {
                    // Never sooner than asked; the usual backoff when it did not say.
                    let wait = after.unwrap_or(backoff).max(self.target.retry_min);
                    warn!(event = event.id, attempt, retry_in = %humantime::format_duration(wait), "The receiver is rate limiting ({why}); waiting as asked.");
                    wait
                }
                Attempt::Failed(why) => {
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(self.target.retry_max);
                    warn!(event = event.id, attempt, retry_in = %humantime::format_duration(round(wait)), "Notification failed: {why}; retrying.");
                    wait
                }
            };
            if !self.wait(wait).await {
                return false;
            }
            attempt += 1;
        }
    }

    /// Waits, unless wakegate shuts down first (false).
    async fn wait(&self, wait: Duration) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    async fn attempt(&self, event: &Event) -> Attempt {
        let (headers, body) = match &self.target.kind {
            TargetKind::Discord => discord::request(event),
            TargetKind::Webhook { secret } => webhook::request(event, secret.expose().as_bytes()),
        };
        match self.client.post(&self.endpoint, headers, body).await {
            Ok(answer) => classify(&self.target.kind, &answer),
            Err(why) => Attempt::Failed(why),
        }
    }
}

/// What an answer means for the event.
fn classify(kind: &TargetKind, answer: &Answer) -> Attempt {
    let status = answer.status;
    if status.is_success() {
        return Attempt::Accepted;
    }
    let said = String::from_utf8_lossy(&answer.body);
    let said: String = said.trim().chars().take(200).collect();
    let why = if said.is_empty() {
        format!("it answered {status}")
    } else {
        format!("it answered {status}: {said}")
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        let header = answer
            .headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .and_then(|s| Duration::try_from_secs_f64(s).ok());
        let body = match kind {
            TargetKind::Discord => discord::retry_after(&answer.body),
            TargetKind::Webhook { .. } => None,
        };
        // Both may be given; the longer one is the one that is safe to honour.
        let after = match (header, body) {
            (Some(h), Some(b)) => Some(h.max(b)),
            (h, b) => h.or(b),
        };
        Attempt::RateLimited(after, why)
    } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        Attempt::Failed(why)
    } else {
        Attempt::Refused(why)
    }
}

/// Lengthens a backoff by up to a fifth at random, so that gateways that failed together do
/// not retry in step.
fn jitter(wait: Duration) -> Duration {
    // A std hasher with fresh random keys is random enough for this, without a dependency.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    wait + wait.mul_f64(0.2 * fraction)
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Bytes;
    use hyper::header::{HeaderMap, HeaderValue};

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn answers_decide_between_done_retry_and_skip() {
        let discord = TargetKind::Discord;
        assert_eq!(classify(&discord, &answer(204, &[], "")), Attempt::Accepted);
        assert!(matches!(
            classify(&discord, &answer(503, &[], "")),
            Attempt::Failed(_)
        ));
        assert!(matches!(
            classify(&discord, &answer(408, &[], "")),
            Attempt::Failed(_)
        ));
        match classify(
            &discord,
            &answer(404, &[], r#"{"message": "Unknown Webhook"}"#),
        ) {
            Attempt::Refused(why) => assert!(why.contains("Unknown Webhook"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Header and body: the longer wait wins; fractions are kept.
        let limited = answer(
            429,
            &[("retry-after", "1")],
            r#"{"retry_after": 1.5, "global": false}"#,
        );
        assert!(matches!(
            classify(&discord, &limited),
            Attempt::RateLimited(Some(d), _) if d == Duration::from_millis(1500)
        ));
        let webhook = TargetKind::Webhook {
            secret: crate::config::de::Secret::new("x"),
        };
        assert!(matches!(
            classify(&webhook, &answer(429, &[("retry-after", "0.5")], "")),
            Attempt::RateLimited(Some(d), _) if d == Duration::from_millis(500)
        ));
        assert!(matches!(
            classify(&webhook, &answer(429, &[], "")),
            Attempt::RateLimited(None, _)
        ));
    }

    #[test]
    fn jitter_only_lengthens_a_little() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(12));
        }
    }
}
