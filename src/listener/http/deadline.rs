//! The deadline of an HTTP connection with no request in flight: `head_timeout` from its
//! opening until the head of its first request is in (the TLS handshake included), then
//! `keepalive_timeout` from the end of each response until the head of the next. While a
//! request is in flight (held for a wake, forwarded, its response body streaming) no deadline
//! runs: those phases belong to the service's and the backend's own timeouts.
//!
//! hyper's `header_read_timeout` cannot do this: the auto (HTTP/1 or h2) server reads the
//! client's first bytes before hyper's timer starts, so a client that sends nothing is never
//! timed out, and the same timer covers the idle gap and the next head.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// The requests in flight on one connection. Starting and ending a request only changes these
/// numbers: nothing is woken and no timer is set per request (a notification to the deadline
/// and a timer set and cancelled again cost every keep-alive request two wake-ups of its
/// connection's task); the deadline's one timer reads them when it fires (see
/// [`InFlight::expired`]).
#[derive(Debug)]
pub struct InFlight {
    // A std Mutex: three numbers changed together twice per request, never across an await.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    busy: usize,
    /// Since when no request has been in flight (the connection's opening at first).
    idle_since: Instant,
    /// Requests whose head came in, in all.
    started: u64,
}

/// Why a connection was closed by its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head within `head_timeout` of the connection's opening.
    Head,
    /// Idle past `keepalive_timeout` after a response.
    KeepAlive,
}

impl InFlight {
    /// A connection opened at `opened`.
    pub fn new(opened: Instant) -> Arc<InFlight> {
        Arc::new(InFlight {
            state: Mutex::new(State {
                busy: 0,
                idle_since: opened,
                started: 0,
            }),
        })
    }

    /// A request's head came in: no deadline until the returned guard is dropped (with the
    /// response body, once it has been sent).
    pub fn begin(self: &Arc<Self>) -> Busy {
        let mut state = self.state.lock().unwrap();
        state.busy += 1;
        state.started += 1;
        drop(state);
        Busy(self.clone())
    }

    /// Resolves when the connection's deadline passes with no request in flight. Its timer is
    /// set once and, each time it fires early (a request came or is in flight), set again to
    /// the soonest instant the connection could expire: nothing needs to wake it meanwhile.
    pub async fn expired(&self, head: Duration, keepalive: Duration) -> Expired {
        let mut next = match self.due(head, keepalive) {
            Ok(at) => at,
            Err(why) => return why,
        };
        let timer = tokio::time::sleep_until(next);
        tokio::pin!(timer);
        loop {
            timer.as_mut().await;
            next = match self.due(head, keepalive) {
                Ok(at) => at,
                Err(why) => return why,
            };
            timer.as_mut().reset(next);
        }
    }

    /// When to look again, or why the connection has expired now.
    fn due(&self, head: Duration, keepalive: Duration) -> Result<Instant, Expired> {
        let now = Instant::now();
        let state = self.state.lock().unwrap();
        if state.busy > 0 {
            // Then it expires no sooner than `keepalive` after the response, which is later.
            return Ok(now + keepalive);
        }
        let (limit, why) = match state.started {
            0 => (head, Expired::Head),
            _ => (keepalive, Expired::KeepAlive),
        };
        let at = state.idle_since + limit;
        if at <= now { Err(why) } else { Ok(at) }
    }
}

/// A request in flight, until dropped.
#[derive(Debug)]
pub struct Busy(Arc<InFlight>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap();
        state.busy -= 1;
        if state.busy == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request in flight until it has been sent or dropped.
pub struct Tracked<B> {
    pub body: B,
    /// Held, never read: its drop ends the request.
    #[allow(dead_code)]
    pub busy: Busy,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(10);
    const KEEPALIVE: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_at_head_timeout() {
        let start = Instant::now();
        let flight = InFlight::new(start);
        assert_eq!(flight.expired(HEAD, KEEPALIVE).await, Expired::Head);
        assert_eq!(start.elapsed(), HEAD);
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_runs_while_a_request_is_in_flight() {
        let flight = InFlight::new(Instant::now());
        let busy = flight.begin();
        let waiting = flight.expired(HEAD, KEEPALIVE);
        tokio::pin!(waiting);
        // An hour held for a wake or streaming a body: still open.
        let held = tokio::time::timeout(Duration::from_secs(3600), waiting.as_mut()).await;
        assert!(held.is_err());
        let done = Instant::now();
        drop(busy);
        // Then the keep-alive deadline, counted from the end of the response.
        assert_eq!(waiting.await, Expired::KeepAlive);
        assert_eq!(done.elapsed(), KEEPALIVE);
    }

    #[tokio::test(start_paused = true)]
    async fn each_response_restarts_the_keepalive_deadline() {
        let flight = InFlight::new(Instant::now());
        drop(flight.begin());
        let waiting = flight.expired(HEAD, KEEPALIVE);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_secs(20), waiting.as_mut())
                .await
                .is_err()
        );
        let again = Instant::now();
        drop(flight.begin());
        assert_eq!(waiting.await, Expired::KeepAlive);
        assert_eq!(again.elapsed(), KEEPALIVE);
    }
}
