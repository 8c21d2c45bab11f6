//! The gate: what the data path and the actor share, written without locks on the way of a
//! client. While the service is awake the gate holds the backend's address and a client takes
//! its [`Ticket`] there; the count of open connections is what keeps the service in use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tokio::sync::Notify;

use super::Ticket;
use crate::metrics::Metrics;

/// What the data path and the actor share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) connections: AtomicUsize,
    pub(super) metrics: Metrics,
    /// Signalled when a connection closes, so the actor can start the idle countdown.
    pub(super) closed: Notify,
    /// Signalled when the first connection opens (the count leaves 0), so a gateway that
    /// shares the service with others tells its owner at once.
    pub(super) opened: Notify,
    /// The backend's address while awake: a client takes its ticket here without a round trip
    /// to the actor. A std lock, held for a copy only and never across an await; the actor
    /// writes it on every transition.
    gate: RwLock<Option<SocketAddr>>,
    /// The service ends for good when its actor stops (a created service destroyed or past
    /// its deadline): the backend removes what it made beside the server, not only stops.
    pub(super) retiring: AtomicBool,
    /// The service leaves wakegate but its server is left as it is (a reload that removes it
    /// with `keep_running`): its actor stops without touching the backend.
    pub(super) detaching: AtomicBool,
    /// What an hour awake costs (`hourly_cost`), which a reload may change.
    pub(super) hourly_cost: Cost,
}

/// An `Option<f64>` read and written without a lock: the bits of the `f64`, NaN for none.
#[derive(Debug)]
pub(super) struct Cost(AtomicU64);

impl Default for Cost {
    fn default() -> Cost {
        Cost(AtomicU64::new(f64::NAN.to_bits()))
    }
}

impl Cost {
    pub(super) fn get(&self) -> Option<f64> {
        let cost = f64::from_bits(self.0.load(Ordering::Relaxed));
        (!cost.is_nan()).then_some(cost)
    }
}

impl Shared {
    /// A ticket without asking the actor, while the gate is open.
    pub(super) fn open_ticket(self: &Arc<Self>) -> Option<Ticket> {
        // Counted before the gate is read; the actor closes the gate before it reads the count
        // to decide an idle stop. So either the actor sees this connection, or this sees the
        // gate closed and the count goes down again.
        if self.connections.fetch_add(1, Ordering::SeqCst) == 0 {
            self.opened.notify_one();
        }
        let guard = ConnectionGuard(self.clone());
        let address = (*self.gate.read().unwrap_or_else(PoisonError::into_inner))?;
        self.metrics
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        Some(Ticket { address, guard })
    }

    /// Sets what an hour awake costs.
    pub(super) fn set_hourly_cost(&self, cost: Option<f64>) {
        let bits = cost.unwrap_or(f64::NAN).to_bits();
        self.hourly_cost.0.store(bits, Ordering::Relaxed);
    }

    /// Opens the gate at `address`, or shuts it with `None`. Only the actor calls it.
    pub(super) fn set_gate(&self, address: Option<SocketAddr>) {
        *self.gate.write().unwrap_or_else(PoisonError::into_inner) = address;
    }
}

/// Counts one connection as activity until dropped.
#[derive(Debug)]
pub(super) struct ConnectionGuard(Arc<Shared>);

impl ConnectionGuard {
    pub(super) fn shared(&self) -> &Shared {
        &self.0
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_one();
        }
    }
}

/// Counts a connection and hands out the backend's address (the actor's way, gate or not).
pub(super) fn ticket(shared: &Arc<Shared>, address: SocketAddr) -> Ticket {
    if shared.connections.fetch_add(1, Ordering::AcqRel) == 0 {
        shared.opened.notify_one();
    }
    shared
        .metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    Ticket {
        address,
        guard: ConnectionGuard(shared.clone()),
    }
}
