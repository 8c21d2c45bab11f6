//! A service: one actor task per service owns the backend, the state machine, the timers and
//! the keep-awake leases (`actor`); listeners and the API talk to it through a cloneable
//! [`ServiceHandle`]. Its policies are pure functions (`policy`), and the fast path that hands
//! an awake service's address to a client without a round trip is the `gate`.
//!
//! A client asks for a [`Ticket`] (the backend's address plus a guard that counts the
//! connection). While awake it takes one at the open gate without asking the actor; otherwise
//! the actor holds the request until the wake it started is over. Only the actor opens and
//! shuts the gate, which is what makes "exactly one start" and "never stopped while in use"
//! true: before an idle stop it shuts the gate and then reads the count, so a client either is
//! counted or finds the gate shut and waits for the actor.

mod actor;
mod agent;
mod agent_link;
pub mod config;
mod core;
#[cfg(test)]
mod fake;
mod follow;
mod gate;
mod in_memory;
mod outside;
mod owner;
pub mod policy;
mod registry;
mod repair;
mod sleep;
#[cfg(test)]
mod sleep_tests;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use self::config::HealthAction;
use crate::event::{Cause, Kind, Published, SleepMode, State};
use crate::metrics::Metrics;
use crate::store::Lease;

pub use actor::spawn;
pub use agent::{AgentStatus, ReportAck};
use gate::{ConnectionGuard, Shared};
pub use registry::Registry;

/// What a service looks like right now; published on a `watch` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    pub since: SystemTime,
    /// Where the backend was found on the last wake (resolved), while awake.
    pub address: Option<SocketAddr>,
    /// Since when no connection is open, while awake.
    pub idle_since: Option<SystemTime>,
    /// When the backend will be stopped if nothing changes, while awake and unused.
    pub idle_deadline: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Clients waiting for the wake to finish.
    pub held: usize,
    /// Keep-awake leases in force.
    pub leases: Vec<Lease>,
    /// Players online, as the backend last answered a Minecraft status ping, while awake.
    pub players: Option<u32>,
    /// How the server sleeps: asleep, how it sleeps now (stopped, paused or frozen); waking,
    /// what the wake undoes; otherwise, how it will sleep once stopped.
    pub sleep_mode: SleepMode,
    /// How long a wake is expected to take: the median of the recent wakes from `sleep_mode`
    /// (none before the first). The actor reads it at start, and whenever the mode changes.
    pub expected_boot: Option<Duration>,
    /// What the service's agent last reported, if one did since wakegate started.
    pub agent: Option<AgentStatus>,
    /// A pre-stop the stop under way waits for the agent to run.
    pub pre_stop: Option<crate::agent::wire::PreStopRequest>,
    /// The gateway that drives it, when several share the store (PostgreSQL).
    pub owner: Option<String>,
}

impl Status {
    /// The expected time left before the backend is ready: all of `expected_boot` while it has
    /// not started, what is left of it while it wakes, nothing once awake.
    pub fn eta(&self) -> Option<Duration> {
        match self.state {
            State::Waking => {
                let elapsed = self.since.elapsed().unwrap_or_default();
                self.expected_boot.map(|b| b.saturating_sub(elapsed))
            }
            State::Asleep | State::Stopping | State::Failed => self.expected_boot,
            State::Awake => Some(Duration::ZERO),
        }
    }
}

/// Why a client could not be given the backend.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConnectError {
    #[error("too many clients are already waiting ({0}); raise max_held if this is expected")]
    TooManyHeld(usize),
    #[error("the wake failed: {0}")]
    WakeFailed(String),
    #[error("wakegate is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Asleep(String),
}

/// Why a wake or a lease was not granted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    /// An `asleep_during` window is open.
    #[error("{0}")]
    Schedule(String),
    /// `always_on`, or an open `awake_during` window, keeps it awake.
    #[error("{0}")]
    Rule(String),
    #[error("cannot record the lease: {0}")]
    Store(String),
}

/// Permission to use the backend: its address, and a guard that counts the connection as
/// activity until dropped.
#[derive(Debug)]
pub struct Ticket {
    pub address: SocketAddr,
    guard: ConnectionGuard,
}

impl Ticket {
    /// Counters for bytes (client → backend, backend → client), bumped by the data path.
    pub fn byte_counters(&self) -> (&AtomicU64, &AtomicU64) {
        let metrics = &self.guard.shared().metrics;
        (&metrics.bytes_in, &metrics.bytes_out)
    }
}

/// What the handle asks of the actor.
enum Command {
    Connect {
        client: SocketAddr,
        /// The player's name, when the protocol says who connects (Minecraft).
        player: Option<String>,
        reply: oneshot::Sender<Result<Ticket, ConnectError>>,
    },
    Wake {
        by: String,
        /// `Api`, or `Client` for a client that asked without waiting (a waiting page).
        cause: Cause,
        reply: oneshot::Sender<Result<State, Denied>>,
    },
    Sleep {
        by: String,
        reply: oneshot::Sender<Result<State, Denied>>,
    },
    AddLease {
        duration: Duration,
        reason: String,
        by: String,
        reply: oneshot::Sender<Result<Lease, Denied>>,
    },
    /// A lease the actor's task has stored (see `AddLease`).
    LeaseAdded {
        lease: Lease,
        duration: Duration,
        by: String,
        reply: oneshot::Sender<Result<Lease, Denied>>,
    },
    EndLease {
        id: i64,
        by: String,
        reply: oneshot::Sender<bool>,
    },
    /// The backend says this many players are online.
    Players(u32),
    /// A health check failed `tolerance` times in a row.
    Unhealthy {
        action: HealthAction,
        reason: String,
    },
    /// A report of the service's agent, its `valid_for` read.
    AgentReport {
        report: crate::agent::wire::Report,
        valid_for: Duration,
        reply: oneshot::Sender<ReportAck>,
    },
    /// How the agent's pre-stop command `id` ended; the reply is false when it was not awaited.
    PreStopDone {
        id: u64,
        result: crate::agent::wire::PreStopResult,
        reply: oneshot::Sender<bool>,
    },
    /// New rules from a reloaded config (see [`ServiceHandle::reconfigure`]).
    Configure {
        rules: policy::Rules,
        max_held: usize,
        reply: oneshot::Sender<()>,
    },
    /// Something a listener or a poll saw, to record as an event in the current state.
    Note {
        kind: Kind,
        reason: String,
        detail: serde_json::Value,
    },
}

/// The actor has stopped: wakegate is shutting down.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("wakegate is shutting down")]
pub struct Gone;

/// A cloneable way to talk to one service's actor.
#[derive(Clone)]
pub struct ServiceHandle {
    name: Arc<str>,
    backend_kind: &'static str,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    events: broadcast::Sender<Published>,
    shared: Arc<Shared>,
    reconciled: watch::Receiver<bool>,
    /// This gateway's id, when several share the store.
    gateway: Option<Arc<str>>,
}

impl ServiceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend_kind
    }

    pub fn hourly_cost(&self) -> Option<f64> {
        self.shared.hourly_cost.get()
    }

    /// Applies a service's changed policies (timeouts, schedules, limits, `hourly_cost`) to
    /// its running actor at once, without touching the backend or the open connections; the
    /// caller checked that the backend and listeners are the same.
    pub async fn reconfigure(&self, config: &config::Service) -> Result<(), Gone> {
        self.shared.set_hourly_cost(config.hourly_cost);
        let rules = policy::Rules::of(config);
        let max_held = config.max_held;
        self.ask(|reply| Command::Configure {
            rules,
            max_held,
            reply,
        })
        .await
    }

    /// Marks it as leaving wakegate with its server left as it is: when its actor stops (its
    /// cancel token), the backend is neither stopped nor removed.
    pub fn detach(&self) {
        self.shared.detaching.store(true, Ordering::SeqCst);
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The current state, without copying the whole status.
    pub fn state(&self) -> State {
        self.status.borrow().state
    }

    /// A receiver that sees every status change (for `wait_for`).
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Live events of this service.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.events.subscribe()
    }

    /// Open proxied connections.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Clients refused because `max_held` were already waiting.
    pub fn refused(&self) -> u64 {
        self.shared.metrics.refused.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Waits until the actor has asked the backend what really runs and published what it
    /// found (see `reconcile`).
    pub async fn reconciled(&self) {
        let mut reconciled = self.reconciled.clone();
        let _ = reconciled.wait_for(|done| *done).await;
    }

    /// Asks for the backend on behalf of `client`; waits while the service wakes.
    pub async fn connect(&self, client: SocketAddr) -> Result<Ticket, ConnectError> {
        self.connect_as(client, None).await
    }

    /// A ticket if the service is awake and its gate open, without asking the actor: never
    /// starts a wake nor waits (for a listener that wants more of a client before a wake).
    pub fn ticket_if_awake(&self) -> Option<Ticket> {
        self.shared.open_ticket()
    }

    /// Like [`connect`](Self::connect), for a client whose player name is known: a wake it
    /// causes names the player.
    pub async fn connect_as(
        &self,
        client: SocketAddr,
        player: Option<String>,
    ) -> Result<Ticket, ConnectError> {
        if let Some(ticket) = self.shared.open_ticket() {
            return Ok(ticket);
        }
        self.ask(|reply| Command::Connect {
            client,
            player,
            reply,
        })
        .await
        .map_err(|_| ConnectError::ShuttingDown)?
    }

    /// Starts a wake unless it is awake or waking; returns the state it was in.
    pub async fn wake(&self, by: &str) -> Result<Result<State, Denied>, Gone> {
        let by = by.to_string();
        self.ask(|reply| Command::Wake {
            by,
            cause: Cause::Api,
            reply,
        })
        .await
    }

    /// Like [`wake`](Self::wake), for a client that does not wait for it (a browser shown the
    /// waiting page): counted as a client's wake, and holding no place among the held clients.
    pub async fn wake_for_client(&self, by: &str) -> Result<Result<State, Denied>, Gone> {
        let by = by.to_string();
        self.ask(|reply| Command::Wake {
            by,
            cause: Cause::client(),
            reply,
        })
        .await
    }

    /// Marks it as ending for good: when its actor stops (its cancel token), the backend
    /// removes what it made beside the server (a DNS record) instead of keeping it.
    pub fn retire(&self) {
        self.shared.retiring.store(true, Ordering::SeqCst);
    }

    /// Resolves once its actor has stopped.
    pub async fn finished(&self) {
        self.commands.closed().await;
    }

    /// Stops it (ending its leases) once it is awake; returns the state it was in.
    pub async fn sleep(&self, by: &str) -> Result<Result<State, Denied>, Gone> {
        let by = by.to_string();
        self.ask(|reply| Command::Sleep { by, reply }).await
    }

    /// Keeps it awake (waking it) for `duration`.
    pub async fn add_lease(
        &self,
        duration: Duration,
        reason: &str,
        by: &str,
    ) -> Result<Result<Lease, Denied>, Gone> {
        let (reason, by) = (reason.to_string(), by.to_string());
        self.ask(|reply| Command::AddLease {
            duration,
            reason,
            by,
            reply,
        })
        .await
    }

    /// Ends a lease; false when no such lease is in force.
    pub async fn end_lease(&self, id: i64, by: &str) -> Result<bool, Gone> {
        let by = by.to_string();
        self.ask(|reply| Command::EndLease { id, by, reply }).await
    }

    /// Reports the players online, from a status ping of the backend (see `health.rs`).
    pub async fn report_players(&self, players: u32) -> Result<(), Gone> {
        self.commands
            .send(Command::Players(players))
            .await
            .map_err(|_| Gone)
    }

    /// Records an event in the service's current state: what a listener did with a player,
    /// or who joined or left.
    pub async fn note(
        &self,
        kind: Kind,
        reason: String,
        detail: serde_json::Value,
    ) -> Result<(), Gone> {
        self.commands
            .send(Command::Note {
                kind,
                reason,
                detail,
            })
            .await
            .map_err(|_| Gone)
    }

    /// Takes a report of the service's agent; its figures count as activity for `valid_for`
    /// (bounded by `[service.agent] max_valid_for`).
    pub async fn agent_report(
        &self,
        report: crate::agent::wire::Report,
        valid_for: Duration,
    ) -> Result<ReportAck, Gone> {
        self.ask(|reply| Command::AgentReport {
            report,
            valid_for,
            reply,
        })
        .await
    }

    /// Hands over how the agent's pre-stop command `id` ended; false when no stop waits for it.
    pub async fn pre_stop_done(
        &self,
        id: u64,
        result: crate::agent::wire::PreStopResult,
    ) -> Result<bool, Gone> {
        self.ask(|reply| Command::PreStopDone { id, result, reply })
            .await
    }

    /// Reports a failing health check (see `health.rs`).
    pub async fn unhealthy(&self, action: HealthAction, reason: String) -> Result<(), Gone> {
        self.commands
            .send(Command::Unhealthy { action, reason })
            .await
            .map_err(|_| Gone)
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Gone> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| Gone)?;
        answer.await.map_err(|_| Gone)
    }
}

impl crate::metrics::Source for ServiceHandle {
    fn name(&self) -> &str {
        &self.name
    }

    fn state(&self) -> State {
        ServiceHandle::state(self)
    }

    fn connections(&self) -> usize {
        ServiceHandle::connections(self)
    }

    fn held(&self) -> usize {
        self.status.borrow().held
    }

    fn sleep_mode(&self) -> Option<SleepMode> {
        let status = self.status.borrow();
        (status.state == State::Asleep).then_some(status.sleep_mode)
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    fn owned(&self) -> Option<bool> {
        let gateway = self.gateway.as_deref()?;
        Some(self.status.borrow().owner.as_deref() == Some(gateway))
    }
}
