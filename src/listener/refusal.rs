//! Refused and malformed clients: counted in the listener's metrics, and logged at most once
//! per listener and reason every [`LOG_EVERY`], with how many there were since the line
//! before, so that a flood of bad clients does not decide how fast the log grows.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::{ListenerCounters, ListenerMetrics, Refusal};

/// At most one line per listener and reason this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets a log line through at most once per period, and counts the ones it held back.
#[derive(Debug)]
pub struct RateLimitedLog {
    every: Duration,
    // A std Mutex: two fields read and written together, never across an await.
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    /// When the next line may be written; `None` before the first.
    next: Option<Instant>,
    /// Occurrences since the last line written.
    held: u64,
}

impl RateLimitedLog {
    pub fn new(every: Duration) -> RateLimitedLog {
        RateLimitedLog {
            every,
            state: Mutex::new(LogState::default()),
        }
    }

    /// Counts one occurrence. `Some(n)` when a line is due now: it stands for `n` occurrences,
    /// this one and those held back since the last line.
    pub fn hit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        state.held += 1;
        if state.next.is_some_and(|next| now < next) {
            return None;
        }
        state.next = Some(now + self.every);
        Some(std::mem::take(&mut state.held))
    }
}

/// The refusals of one bound socket: its counters and one rate-limited log per reason.
#[derive(Debug)]
pub struct Refusals {
    counters: Arc<ListenerCounters>,
    kind: &'static str,
    bind: SocketAddr,
    logs: [RateLimitedLog; Refusal::ALL.len()],
}

impl Refusals {
    /// Registers the counters of a socket of `kind` (`tcp`, `http`, `minecraft`) bound to `bind`.
    pub fn new(kind: &'static str, bind: SocketAddr, metrics: &ListenerMetrics) -> Refusals {
        Refusals {
            counters: metrics.register(kind, bind),
            kind,
            bind,
            logs: std::array::from_fn(|_| RateLimitedLog::new(LOG_EVERY)),
        }
    }

    /// The socket's counters.
    pub fn counters(&self) -> &Arc<ListenerCounters> {
        &self.counters
    }

    /// Counts a refused client and logs it if a line for `reason` is due; `what` (the client,
    /// the error) is shown as the latest example. Every refusal is logged at debug level.
    pub fn refuse(&self, reason: Refusal, what: impl Display) {
        self.counters.refused(reason);
        debug!(listener = %self.bind, reason = reason.as_str(), "Refused a client: {what}.");
        let Some(count) = self.logs[reason as usize].hit() else {
            return;
        };
        let (listener, kind, why) = (self.bind, self.kind, reason.as_str());
        let every = LOG_EVERY.as_secs();
        match reason {
            // Either the machine is short of something, or an attack or a load balancer
            // (all clients from one address) meets the cap: the operator should look.
            Refusal::FdExhausted | Refusal::PerAddressCap => warn!(
                listener = %listener, r#type = kind, reason = why, count,
                "{}; {count} since the last such line (at most one every {every}s). Latest: {what}.",
                describe(reason)
            ),
            _ => info!(
                listener = %listener, r#type = kind, reason = why, count,
                "{}; {count} since the last such line (at most one every {every}s). Latest: {what}.",
                describe(reason)
            ),
        }
    }
}

/// What a refusal means, as the start of a log line.
fn describe(reason: Refusal) -> &'static str {
    match reason {
        Refusal::PerAddressCap => {
            "Refused clients whose address has max_connections_per_address connections open"
        }
        Refusal::HeadTimeout => "Closed clients that did not send their request in time",
        Refusal::Malformed => "Closed clients that broke the protocol",
        Refusal::FdExhausted => {
            "Cannot accept connections: out of file descriptors (raise LimitNOFILE / ulimit -Hn)"
        }
        Refusal::Denied => "Refused clients the allow or deny lists keep out",
        Refusal::RateLimited => "Refused clients over the wake rate of their address",
        Refusal::UnknownHost => "Closed clients that asked for a hostname no service has",
        Refusal::Unavailable => "Closed clients the service could not take",
        Refusal::NoData => {
            "Closed clients that left without sending a byte while the service slept (wake_on = \"data\": nothing was woken)"
        }
        Refusal::MaxSessions => "Refused new clients: the listener has max_sessions live",
        Refusal::QueueFull => {
            "Dropped datagrams past the queue of their session while the service woke"
        }
        Refusal::NoWake => {
            "Dropped datagrams that may not start a session (wake_on while the service slept; on bedrock, anything but a join)"
        }
        Refusal::ProxyHeader => {
            "Refused connections with a PROXY header from an address not in trusted_proxies, or a trusted proxy's without a valid one"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_period_counts_what_it_held_back() {
        let log = RateLimitedLog::new(Duration::from_secs(10));
        // The first one is written at once.
        assert_eq!(log.hit(), Some(1));
        for _ in 0..99 {
            assert_eq!(log.hit(), None);
        }
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(log.hit(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        // 99 held back, the one before the period ended, and this one.
        assert_eq!(log.hit(), Some(101));
        // A quiet spell: the next one is written at once, alone.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(log.hit(), Some(1));
        assert_eq!(log.hit(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn every_refusal_is_counted_whatever_is_logged() {
        let metrics = ListenerMetrics::default();
        let refusals = Refusals::new("http", SocketAddr::from(([127, 0, 0, 1], 80)), &metrics);
        for i in 0..500 {
            refusals.refuse(Refusal::HeadTimeout, format_args!("client {i}"));
        }
        refusals.refuse(Refusal::Malformed, "bad chunk size");
        let counters = refusals.counters();
        assert_eq!(counters.refused_count(Refusal::HeadTimeout), 500);
        assert_eq!(counters.refused_count(Refusal::Malformed), 1);
        assert_eq!(counters.refused_count(Refusal::PerAddressCap), 0);
        // Reasons have logs of their own: a flood of one does not silence the other.
        assert_eq!(refusals.logs[Refusal::HeadTimeout as usize].hit(), None);
        assert_eq!(refusals.logs[Refusal::Denied as usize].hit(), Some(1));
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains(
            "wakegate_listener_refused_total{listener=\"127.0.0.1:80\",type=\"http\",reason=\"head_timeout\"} 500"
        ), "{out}");
    }
}
