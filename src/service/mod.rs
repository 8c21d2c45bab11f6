//! The per-service actor: it owns the backend, the state machine, the idle timer and the
//! keep-awake leases. Listeners and the API talk to it through a cloneable [`ServiceHandle`].
//!
//! A client asks for a [`Ticket`] (the backend's address plus a guard that counts the
//! connection). While awake it takes one at the open gate without asking the actor; otherwise
//! the actor holds the request until the wake it started is over. Only the actor opens and
//! shuts the gate, which is what makes "exactly one start" and "never stopped while in use"
//! true: before an idle stop it shuts the gate and then reads the count, so a client either is
//! counted or finds the gate shut and waits for the actor.

pub mod config;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use std::collections::VecDeque;

use self::config::{HealthAction, Policies};
use crate::backend::{Backend, BackendError, Status as BackendStatus};
use crate::event::{Event, Kind, NewEvent, State};
use crate::metrics::{Failure, Metrics, Trigger};
use crate::probe::{self, Check};
use crate::schedule::{self, Window};
use crate::store::{Lease, Store};

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
}

/// What the data path and the actor share; written without locks.
#[derive(Debug, Default)]
struct Shared {
    connections: AtomicUsize,
    metrics: Metrics,
    /// Signalled when a connection closes, so the actor can start the idle countdown.
    closed: Notify,
    /// The backend's address while awake: a client takes its ticket here without a round trip
    /// to the actor. A std lock, held for a copy only and never across an await; the actor
    /// writes it on every transition.
    gate: RwLock<Option<SocketAddr>>,
}

impl Shared {
    /// A ticket without asking the actor, while the gate is open.
    fn open_ticket(self: &Arc<Self>) -> Option<Ticket> {
        // Counted before the gate is read; the actor closes the gate before it reads the count
        // to decide an idle stop. So either the actor sees this connection, or this sees the
        // gate closed and the count goes down again.
        self.connections.fetch_add(1, Ordering::SeqCst);
        let guard = ConnectionGuard(self.clone());
        let address = (*self.gate.read().unwrap_or_else(PoisonError::into_inner))?;
        self.metrics
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        Some(Ticket { address, guard })
    }

    fn set_gate(&self, address: Option<SocketAddr>) {
        *self.gate.write().unwrap_or_else(PoisonError::into_inner) = address;
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
        let metrics = &self.guard.0.metrics;
        (&metrics.bytes_in, &metrics.bytes_out)
    }
}

#[derive(Debug)]
struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_one();
        }
    }
}

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
        trigger: Trigger,
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
    hourly_cost: Option<f64>,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    events: broadcast::Sender<Event>,
    shared: Arc<Shared>,
    reconciled: watch::Receiver<bool>,
}

impl ServiceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend_kind
    }

    pub fn hourly_cost(&self) -> Option<f64> {
        self.hourly_cost
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
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
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
            trigger: Trigger::Api,
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
            trigger: Trigger::Client,
            reply,
        })
        .await
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

/// Timings of one service.
#[derive(Debug, Clone)]
struct Policy {
    idle_timeout: Duration,
    min_awake: Duration,
    wake_timeout: Duration,
}

/// Starts the actor of `service` on `tracker`; it runs until `cancel` fires.
pub fn spawn(
    service: &config::Service,
    backend: Box<dyn Backend>,
    store: Arc<Store>,
    events: broadcast::Sender<Event>,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> ServiceHandle {
    let mut backend = backend;
    let notes = backend.notes();
    let (commands_tx, commands) = mpsc::channel(64);
    // Until the backend has been asked, the best knowledge is what was last recorded.
    let last = store.service(&service.name).ok().flatten();
    let initial = Status {
        state: last.as_ref().map_or(State::Asleep, |r| r.state),
        since: last.as_ref().map_or_else(SystemTime::now, |r| r.since),
        address: None,
        idle_since: None,
        idle_deadline: None,
        last_error: last.and_then(|r| r.last_error),
        held: 0,
        leases: store.active_leases(&service.name).unwrap_or_default(),
        players: None,
    };
    let (status_tx, status) = watch::channel(initial);
    let (reconciled_tx, reconciled) = watch::channel(false);
    let shared = Arc::new(Shared::default());
    let handle = ServiceHandle {
        name: service.name.as_str().into(),
        backend_kind: backend.kind(),
        hourly_cost: service.hourly_cost,
        commands: commands_tx,
        status,
        events: events.clone(),
        shared: shared.clone(),
        reconciled,
    };
    let actor = Actor {
        policy: Policy {
            idle_timeout: service.idle_timeout,
            min_awake: service.min_awake,
            wake_timeout: service.wake_timeout,
        },
        readiness: service.readiness.clone(),
        reconciled: reconciled_tx,
        restarts: VecDeque::new(),
        wake_retry: None,
        runtime_warned: false,
        player_check_at: None,
        player_warnings: 0,
        fail_after_stop: None,
        backend,
        core: Core {
            name: service.name.clone(),
            store,
            events,
            status: status_tx,
            commands,
            notes,
            waiters: Vec::new(),
            shared,
            max_held: service.max_held,
            wake_request: None,
            sleep_request: None,
            restart_request: None,
            always_on: service.always_on,
            rules: service.policy.clone(),
        },
        cancel: cancel.clone(),
        adopting: false,
        awake_at: Instant::now(),
        idle_since: None,
        stop_retry: None,
    };
    let span = info_span!("service", service = %service.name);
    crate::health::spawn(&service.health, &handle, tracker, &cancel);
    if let Some(every) = service.player_poll() {
        let proxy = service.proxy_protocol();
        crate::health::spawn_player_poll(every, proxy, &handle, tracker, &cancel);
    }
    tracker.spawn(actor.run().instrument(span));
    handle
}

/// A client waiting for the wake to finish.
struct Waiter {
    client: SocketAddr,
    player: Option<String>,
    /// The state the service was in when the client arrived.
    arrived_while: State,
    reply: oneshot::Sender<Result<Ticket, ConnectError>>,
}

/// A wake or sleep asked for while the backend was busy, done when it is free.
struct Request {
    trigger: Trigger,
    reason: String,
}

/// Everything of the actor but the backend: it keeps taking requests (holding clients,
/// recording leases) while a backend call is under way.
struct Core {
    name: String,
    store: Arc<Store>,
    events: broadcast::Sender<Event>,
    status: watch::Sender<Status>,
    commands: mpsc::Receiver<Command>,
    /// What the backend reports from inside its calls (see [`crate::backend::Note`]).
    notes: Option<mpsc::UnboundedReceiver<crate::backend::Note>>,
    waiters: Vec<Waiter>,
    shared: Arc<Shared>,
    max_held: usize,
    wake_request: Option<Request>,
    sleep_request: Option<String>,
    /// A restart asked for by a failing health check.
    restart_request: Option<String>,
    always_on: bool,
    rules: Policies,
}

enum Outcome<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

impl Core {
    fn state(&self) -> State {
        self.status.borrow().state
    }

    fn address(&self) -> Option<SocketAddr> {
        self.status.borrow().address
    }

    /// Takes one request. Tickets are handed out only when awake; everything else that needs
    /// the backend is left as a request for the state machine.
    fn handle(&mut self, command: Command) {
        let state = self.state();
        match command {
            Command::Connect {
                client,
                player,
                reply,
            } => match (state, self.address()) {
                (State::Awake, Some(address)) => {
                    let _ = reply.send(Ok(ticket(&self.shared, address)));
                }
                _ => match self.asleep_by_schedule() {
                    Some(why) => {
                        self.shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
                        info!(%client, "{why}; closing the client.");
                        let _ = reply.send(Err(ConnectError::Asleep(why)));
                    }
                    None => self.hold(client, player, state, reply),
                },
            },
            Command::Wake { by, trigger, reply } => {
                if let Some(why) = self.asleep_by_schedule() {
                    self.action(format!("wake requested by {by} refused: {why}"));
                    let _ = reply.send(Err(Denied::Schedule(why)));
                    return;
                }
                self.sleep_request = None;
                if matches!(state, State::Asleep | State::Failed | State::Stopping) {
                    self.action(format!("wake requested by {by}"));
                    self.wake_request.get_or_insert(Request {
                        trigger,
                        reason: format!("wake requested by {by}"),
                    });
                }
                let _ = reply.send(Ok(state));
            }
            Command::Sleep { by, reply } => {
                if let Some(why) = self.kept_awake_by_rule() {
                    self.action(format!("sleep requested by {by} refused: {why}"));
                    let _ = reply.send(Err(Denied::Rule(why)));
                    return;
                }
                self.wake_request = None;
                self.end_leases(&format!("ended by the sleep requested by {by}"));
                if matches!(state, State::Waking | State::Awake) {
                    self.action(format!("sleep requested by {by}"));
                    self.sleep_request = Some(format!("sleep requested by {by}"));
                }
                let _ = reply.send(Ok(state));
            }
            Command::AddLease {
                duration,
                reason,
                by,
                reply,
            } => {
                if let Some(why) = self.asleep_by_schedule() {
                    let _ = reply.send(Err(Denied::Schedule(why)));
                    return;
                }
                let lease = self
                    .store
                    .add_lease(&self.name, &reason, &by, duration)
                    .map_err(|e| Denied::Store(e.to_string()));
                if let Ok(lease) = &lease {
                    self.sleep_request = None;
                    self.status.send_modify(|s| s.leases.push(lease.clone()));
                    let text = format!(
                        "lease #{} taken by {by} for {}: {reason}",
                        lease.id,
                        humantime::format_duration(duration)
                    );
                    self.emit(Kind::Lease, text.clone(), json!({ "lease": lease }));
                    if !matches!(state, State::Waking | State::Awake) {
                        self.wake_request.get_or_insert(Request {
                            trigger: Trigger::Lease,
                            reason: text,
                        });
                    }
                }
                let _ = reply.send(lease);
            }
            Command::EndLease { id, by, reply } => {
                let ended = self.store.end_lease(&self.name, id).unwrap_or(false);
                if ended {
                    self.status.send_modify(|s| s.leases.retain(|l| l.id != id));
                    self.emit(
                        Kind::Lease,
                        format!("lease #{id} ended by {by}"),
                        json!({ "lease_id": id }),
                    );
                }
                let _ = reply.send(ended);
            }
            Command::Players(players) => {
                if state == State::Awake {
                    let players = Some(players);
                    self.status.send_if_modified(|s| {
                        std::mem::replace(&mut s.players, players) != players
                    });
                }
            }
            Command::Unhealthy { action, reason } => {
                if state != State::Awake {
                    return;
                }
                self.emit(
                    Kind::Warning,
                    reason.clone(),
                    json!({ "action": format!("{action:?}").to_lowercase() }),
                );
                match action {
                    HealthAction::Notify => {}
                    HealthAction::Sleep => self.sleep_request = Some(reason),
                    HealthAction::Restart => self.restart_request = Some(reason),
                }
            }
            Command::Note {
                kind,
                reason,
                detail,
            } => self.emit(kind, reason, detail),
        }
    }

    /// Why it may not be put to sleep by hand: it is always on, or an awake_during window is
    /// open (it would only wake again at once).
    fn kept_awake_by_rule(&self) -> Option<String> {
        if self.always_on {
            return Some(format!(
                "{} is always_on; remove always_on from its config to let it sleep",
                self.name
            ));
        }
        open_window(&self.rules.awake_during)
            .map(|window| format!("{} is awake by schedule {window}", self.name))
    }

    /// Why it may not wake now, when an `asleep_during` window is open.
    fn asleep_by_schedule(&self) -> Option<String> {
        open_window(&self.rules.asleep_during)
            .map(|window| format!("{} sleeps by schedule {window}", self.name))
    }

    /// Drops the leases that have expired, with an event each.
    fn expire_leases(&mut self) {
        let now = SystemTime::now();
        let expired: Vec<Lease> = self
            .status
            .borrow()
            .leases
            .iter()
            .filter(|l| l.expires <= now)
            .cloned()
            .collect();
        for lease in expired {
            self.status
                .send_modify(|s| s.leases.retain(|l| l.id != lease.id));
            self.emit(
                Kind::Lease,
                format!("lease #{} of {} expired", lease.id, lease.by),
                json!({ "lease_id": lease.id }),
            );
        }
    }

    fn end_leases(&mut self, why: &str) {
        let leases = self.status.borrow().leases.clone();
        for lease in leases {
            let _ = self.store.end_lease(&self.name, lease.id);
            self.emit(
                Kind::Lease,
                format!("lease #{} of {} {why}", lease.id, lease.by),
                json!({ "lease_id": lease.id }),
            );
        }
        self.status.send_modify(|s| s.leases.clear());
    }

    /// When the last lease in force expires.
    fn leased_until(&self) -> Option<SystemTime> {
        self.status.borrow().leases.iter().map(|l| l.expires).max()
    }

    /// Adds a client to the waiting list, or refuses it at once when the list is full.
    fn hold(
        &mut self,
        client: SocketAddr,
        player: Option<String>,
        arrived_while: State,
        reply: oneshot::Sender<Result<Ticket, ConnectError>>,
    ) {
        self.waiters.retain(|w| !w.reply.is_closed());
        if self.waiters.len() >= self.max_held {
            self.shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
            warn!(%client, max_held = self.max_held, "Too many clients waiting; refusing one.");
            let _ = reply.send(Err(ConnectError::TooManyHeld(self.max_held)));
        } else {
            self.waiters.push(Waiter {
                client,
                player,
                arrived_while,
                reply,
            });
        }
        self.publish_held();
    }

    fn publish_held(&self) {
        let held = self.waiters.len();
        self.status
            .send_if_modified(|s| std::mem::replace(&mut s.held, held) != held);
    }

    /// Runs `work` (a backend call) while taking every request that arrives meanwhile.
    async fn serve_while<T>(
        &mut self,
        work: impl Future<Output = T>,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Outcome<T> {
        tokio::pin!(work);
        let expired = sleep_until(deadline);
        tokio::pin!(expired);
        let outcome = loop {
            tokio::select! {
                out = &mut work => break Outcome::Done(out),
                () = &mut expired => break Outcome::TimedOut,
                () = cancel.cancelled() => break Outcome::Cancelled,
                Some(command) = self.commands.recv() => self.handle(command),
                Some(note) = next_note(&mut self.notes) => self.note(note),
            }
        };
        // Notes sent just before the call returned belong to it, not to a later call.
        self.record_notes();
        outcome
    }

    fn note(&self, note: crate::backend::Note) {
        self.emit(note.kind, note.reason, note.detail);
    }

    /// Records the notes the backend has sent and the actor has not yet taken, for calls made
    /// outside `serve_while` (a stop, the shutdown).
    fn record_notes(&mut self) {
        while let Some(note) = self.notes.as_mut().and_then(|n| n.try_recv().ok()) {
            self.note(note);
        }
    }

    /// Answers every waiting client that is still there.
    fn answer_all(&mut self, mut answer: impl FnMut(&Arc<Shared>) -> Result<Ticket, ConnectError>) {
        for waiter in self.waiters.drain(..) {
            if waiter.reply.is_closed() {
                info!(client = %waiter.client, "The client left while it was held.");
            } else {
                // A ticket the client no longer takes is dropped here, which uncounts it.
                let _ = waiter.reply.send(answer(&self.shared));
            }
        }
        self.publish_held();
    }

    /// Stores an event durably. The caller publishes it once what it describes is visible in
    /// the status, so a subscriber that reads the status on an event sees the new state.
    fn record(
        &self,
        kind: Kind,
        state: State,
        reason: String,
        detail: serde_json::Value,
    ) -> Option<Event> {
        info!(state = %state, kind = kind.as_str(), "{reason}");
        let last_error = (state == State::Failed).then(|| reason.clone());
        let event = NewEvent {
            kind,
            state,
            reason,
            detail,
        };
        match self.store.record(&self.name, event, last_error.as_deref()) {
            Ok(event) => Some(event),
            // The gateway keeps serving; the event is in the log line above but, without a
            // durable id, it is not published.
            Err(e) => {
                error!(error = %format!("{e:#}"), "Cannot store an event.");
                None
            }
        }
    }

    fn publish(&self, event: Option<Event>) {
        if let Some(event) = event {
            let _ = self.events.send(event);
        }
    }

    /// Records and publishes an event that does not change the state.
    fn emit(&self, kind: Kind, reason: String, detail: serde_json::Value) {
        let event = self.record(kind, self.state(), reason, detail);
        self.publish(event);
    }

    fn progress(&self, reason: String, detail: serde_json::Value) {
        self.emit(Kind::Progress, reason, detail);
    }

    fn action(&self, reason: String) {
        self.emit(Kind::Action, reason, serde_json::Value::Null);
    }

    /// Moves to `state`, recording why.
    fn transition(&mut self, state: State, reason: String, mut detail: serde_json::Value) {
        let previous = self.state();
        if let serde_json::Value::Object(map) = &mut detail {
            map.insert("previous".into(), json!(previous));
        } else {
            detail = json!({ "previous": previous });
        }
        let failed = (state == State::Failed).then(|| reason.clone());
        let event = self.record(Kind::Transition, state, reason, detail);
        self.shared.metrics.entered(state);
        self.status.send_modify(|s| {
            s.state = state;
            s.since = event.as_ref().map_or_else(SystemTime::now, |e| e.time);
            if state != State::Awake {
                s.address = None;
                s.idle_since = None;
                s.idle_deadline = None;
                s.players = None;
            }
            if failed.is_some() {
                s.last_error = failed;
            }
        });
        self.shared.set_gate(self.status.borrow().address);
        self.publish(event);
    }

    /// Starts a wake, counting what started it.
    fn start_wake(&mut self, trigger: Trigger, reason: String, detail: serde_json::Value) {
        self.shared.metrics.wake(trigger);
        self.transition(State::Waking, reason, detail);
    }
}

/// The window open now, as "(TEXT) until WHEN" for messages.
fn open_window(windows: &[Window]) -> Option<String> {
    let now = jiff::Timestamp::now();
    let window = schedule::any_contains(windows, now)?;
    let until = window.next_change(now).map_or(String::new(), |t| {
        format!(" until {}", t.strftime("%Y-%m-%d %H:%M UTC"))
    });
    Some(format!("({}){until}", window.text()))
}

/// Counts a connection and hands out the backend's address.
fn ticket(shared: &Arc<Shared>, address: SocketAddr) -> Ticket {
    shared.connections.fetch_add(1, Ordering::AcqRel);
    shared
        .metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    Ticket {
        address,
        guard: ConnectionGuard(shared.clone()),
    }
}

/// The next note of a backend that has them; never for one that has none.
async fn next_note(
    notes: &mut Option<mpsc::UnboundedReceiver<crate::backend::Note>>,
) -> Option<crate::backend::Note> {
    match notes {
        Some(notes) => notes.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Actor {
    policy: Policy,
    /// What "ready" means at the end of a wake.
    readiness: Check,
    /// Set once reconcile has published what it found.
    reconciled: watch::Sender<bool>,
    backend: Box<dyn Backend>,
    core: Core,
    cancel: CancellationToken,
    /// The backend was found running at start-up: the next wake only checks readiness.
    adopting: bool,
    awake_at: Instant,
    idle_since: Option<Instant>,
    /// When to try again to stop a backend whose stop failed, and the backoff used.
    stop_retry: Option<(Instant, Duration)>,
    /// When an always-on service whose wake failed is tried again, and the backoff used.
    wake_retry: Option<(Instant, Duration)>,
    /// Automatic restarts within the crash-loop breaker's window.
    restarts: VecDeque<Instant>,
    /// The max_runtime warning went out for this wake.
    runtime_warned: bool,
    /// When the next min_players check is due, and how many warnings went out in a row.
    player_check_at: Option<Instant>,
    player_warnings: u32,
    /// After this stop, the service is `failed` (the crash-loop breaker tripped) with this reason.
    fail_after_stop: Option<String>,
}

/// What the main loop does after a phase.
enum Flow {
    Continue,
    Exit,
}

/// The next backoff: one second at first, doubling up to five minutes.
fn backoff(previous: Option<(Instant, Duration)>) -> (Instant, Duration) {
    let wait = previous.map_or(Duration::from_secs(1), |(_, b)| {
        (b * 2).min(Duration::from_secs(300))
    });
    (Instant::now() + wait, wait)
}

/// The `Instant` of a wall-clock time (now when it has passed).
fn instant_of(at: jiff::Timestamp) -> Instant {
    let left = at.duration_since(jiff::Timestamp::now());
    Instant::now() + Duration::try_from(left).unwrap_or_default()
}

impl Actor {
    async fn run(mut self) {
        if let Flow::Continue = self.reconcile().await {
            loop {
                let flow = match self.core.state() {
                    State::Asleep | State::Failed => self.resting().await,
                    State::Waking => self.waking().await,
                    State::Awake => self.awake().await,
                    State::Stopping => self.stopping().await,
                };
                if let Flow::Exit = flow {
                    break;
                }
            }
        }
        self.shutdown().await;
    }

    /// Finds out what really runs and adopts it, then lets [`ServiceHandle::reconciled`]
    /// know (after the transition is published, so a later subscriber never sees it).
    async fn reconcile(&mut self) -> Flow {
        let flow = self.find_what_runs().await;
        let _ = self.reconciled.send(true);
        flow
    }

    async fn find_what_runs(&mut self) -> Flow {
        let was = self.core.state();
        let recorded = self.core.store.service(&self.core.name).ok().flatten();
        let was_text = match recorded {
            Some(_) => format!("was {was}"),
            None => "never recorded".to_string(),
        };
        let status = match self
            .core
            .serve_while(self.backend.status(), None, &self.cancel)
            .await
        {
            Outcome::Done(status) => status,
            _ => return Flow::Exit,
        };
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                warn!(error = %e, "Cannot ask the backend for its status; going by the last recorded state.");
                BackendStatus::Unknown
            }
        };
        let running = match status {
            BackendStatus::Gone(why) => {
                self.core.transition(
                    State::Failed,
                    format!("wakegate started and found the backend gone ({was_text}): {why}"),
                    json!({ "trigger": "reconcile" }),
                );
                return Flow::Continue;
            }
            BackendStatus::Running => true,
            BackendStatus::Stopped => false,
            // Without a way to ask, assume a service that was not asleep still runs: it then
            // gets a fresh idle countdown and is stopped if nobody uses it. Assuming the
            // opposite could leave it running forever.
            BackendStatus::Unknown => recorded.is_some() && was != State::Asleep,
        };
        if running {
            self.adopting = true;
            self.core.start_wake(
                Trigger::Reconcile,
                format!("wakegate started and found the backend running ({was_text}); checking that it is ready"),
                json!({ "trigger": "reconcile" }),
            );
        } else {
            self.core.transition(
                State::Asleep,
                format!("wakegate started and found the backend stopped ({was_text})"),
                json!({ "trigger": "reconcile" }),
            );
        }
        Flow::Continue
    }

    /// Whether the crash-loop breaker allows one more automatic restart (and counts it).
    fn may_restart(&mut self) -> bool {
        let window = self.core.rules.restart_window;
        while self.restarts.front().is_some_and(|t| t.elapsed() > window) {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= self.core.rules.max_restarts as usize {
            return false;
        }
        self.restarts.push_back(Instant::now());
        true
    }

    fn crash_loop(&self) -> String {
        let n = self.restarts.len();
        format!(
            "restarted {n} time{} within {}: not restarting again; fix the server, then wake it by hand",
            if n == 1 { "" } else { "s" },
            humantime::format_duration(self.core.rules.restart_window)
        )
    }

    /// Why a sleeping service should wake by itself now: always-on, or an awake_during window.
    fn wake_by_rule(&self) -> Option<(Trigger, String)> {
        let now = jiff::Timestamp::now();
        if self.core.state() != State::Asleep || self.core.asleep_by_schedule().is_some() {
            return None;
        }
        if self.core.always_on {
            return Some((Trigger::Restart, "always_on: keeping it running".into()));
        }
        schedule::any_contains(&self.core.rules.awake_during, now).map(|w| {
            (
                Trigger::Schedule,
                format!("awake by schedule ({})", w.text()),
            )
        })
    }

    /// When a schedule window next opens or closes.
    fn schedule_change(&self) -> Option<Instant> {
        let now = jiff::Timestamp::now();
        let awake = schedule::next_change(&self.core.rules.awake_during, now);
        let asleep = schedule::next_change(&self.core.rules.asleep_during, now);
        awake.into_iter().chain(asleep).min().map(instant_of)
    }

    /// Asleep or failed: wait for a client, a wake request, a lease or a rule that wakes it
    /// (and retry a failed stop, or an always-on service's failed wake, with backoff).
    async fn resting(&mut self) -> Flow {
        loop {
            self.core.expire_leases();
            // Clients that arrived while the backend was busy (stopping, or being asked for
            // its status at start-up), and wakes asked for meanwhile, wake it now.
            self.core.waiters.retain(|w| !w.reply.is_closed());
            if let Some(first) = self.core.waiters.first() {
                let (client, was) = (first.client, first.arrived_while);
                let who = match &first.player {
                    Some(player) => format!("player {player} from {client}"),
                    None => format!("client {client}"),
                };
                let reason = if was == self.core.state() {
                    format!("{who} connected")
                } else {
                    format!("{who} connected while the service was {was}")
                };
                let mut detail = json!({ "trigger": "client", "client": client.to_string() });
                if let Some(player) = &first.player {
                    detail["player"] = json!(player);
                }
                self.core.start_wake(Trigger::Client, reason, detail);
                return Flow::Continue;
            }
            if let Some(request) = self.core.wake_request.take() {
                if request.trigger != Trigger::Restart {
                    // Asked for by someone: the breaker's count starts over.
                    self.restarts.clear();
                }
                let detail = json!({ "trigger": request.trigger.as_str() });
                self.core
                    .start_wake(request.trigger, request.reason, detail);
                return Flow::Continue;
            }
            if let Some((trigger, reason)) = self.wake_by_rule() {
                let detail = json!({ "trigger": trigger.as_str() });
                self.core.start_wake(trigger, reason, detail);
                return Flow::Continue;
            }
            let stop_retry = self.stop_retry.map(|(at, _)| at);
            let wake_retry = self.wake_retry.map(|(at, _)| at);
            let schedule_change = self.schedule_change();
            tokio::select! {
                () = self.cancel.cancelled() => return Flow::Exit,
                () = sleep_until(stop_retry) => {
                    self.core.transition(State::Stopping, "retrying the stop that failed".into(), json!({ "trigger": "retry" }));
                    return Flow::Continue;
                }
                () = sleep_until(wake_retry) => {
                    self.wake_retry = None;
                    if self.may_restart() {
                        self.core.start_wake(Trigger::Restart, "always_on: trying the wake again".into(), json!({ "trigger": "restart" }));
                        return Flow::Continue;
                    }
                    let reason = self.crash_loop();
                    self.core.transition(State::Failed, reason, json!({ "trigger": "breaker" }));
                }
                () = sleep_until(schedule_change) => {}
                command = self.core.commands.recv() => match command {
                    Some(command) => self.core.handle(command),
                    None => return Flow::Exit,
                },
            }
        }
    }

    /// Starts the backend (unless adopting) and waits until it is ready.
    async fn waking(&mut self) -> Flow {
        let started = Instant::now();
        let adopted = self.adopting;
        let deadline = started + self.policy.wake_timeout;
        let mut last_error = String::new();
        match self.wake_steps(deadline, &mut last_error).await {
            Outcome::Done(Ok(address)) => {
                let took = started.elapsed();
                self.awake_at = Instant::now();
                self.stop_retry = None;
                self.wake_retry = None;
                self.runtime_warned = false;
                self.player_warnings = 0;
                self.player_check_at = self
                    .core
                    .rules
                    .min_players
                    .map(|m| self.awake_at + m.interval);
                if !adopted {
                    self.core.shared.metrics.wake_took(took);
                }
                // The address first, so whoever sees `awake` also sees where.
                self.core.status.send_modify(|s| s.address = Some(address));
                self.core.transition(
                    State::Awake,
                    format!("backend ready at {address} after {}", round(took)),
                    json!({ "address": address.to_string(), "duration_ms": took.as_millis() as u64, "adopted": adopted }),
                );
                self.core.answer_all(|shared| Ok(ticket(shared, address)));
                self.idle_since = None;
                Flow::Continue
            }
            Outcome::Done(Err(e)) => {
                self.fail_wake(e.to_string(), started).await;
                Flow::Continue
            }
            Outcome::TimedOut => {
                let address = self
                    .backend
                    .address()
                    .await
                    .unwrap_or_else(|_| "its address".into());
                let last = if last_error.is_empty() {
                    String::new()
                } else {
                    format!(" (last check: {last_error})")
                };
                let reason = format!(
                    "the backend was not ready within wake_timeout ({}){last}; check that it listens on {address} or raise wake_timeout",
                    humantime::format_duration(self.policy.wake_timeout),
                );
                self.fail_wake(reason, started).await;
                Flow::Continue
            }
            Outcome::Cancelled => Flow::Exit,
        }
    }

    /// The steps of a wake, raced against the deadline while requests keep arriving.
    async fn wake_steps(
        &mut self,
        deadline: Instant,
        last_error: &mut String,
    ) -> Outcome<Result<SocketAddr, BackendError>> {
        // A log-line readiness only counts what the server writes from this start on.
        let log_from = self
            .backend
            .log_file()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        if !std::mem::take(&mut self.adopting) {
            match self
                .core
                .serve_while(self.backend.start(), Some(deadline), &self.cancel)
                .await
            {
                Outcome::Done(Ok(())) => {}
                Outcome::Done(Err(e)) => return Outcome::Done(Err(e)),
                Outcome::TimedOut => return Outcome::TimedOut,
                Outcome::Cancelled => return Outcome::Cancelled,
            }
        }
        let address = match self.backend.address().await {
            Ok(a) => a,
            Err(e) => return Outcome::Done(Err(e)),
        };
        let waiting_for = match &self.readiness.probe {
            probe::Probe::Tcp => format!("waiting for {address} to accept connections"),
            probe::Probe::Http { url, .. } => format!(
                "waiting for {url} to answer",
                url = url.replace("{address}", &address)
            ),
            probe::Probe::Minecraft => {
                format!("waiting for {address} to answer a Minecraft status ping")
            }
            probe::Probe::LogLine(p) => format!("waiting for a log line matching `{p}`"),
        };
        self.core.progress(
            waiting_for,
            json!({ "step": "probing", "address": address }),
        );
        let readiness = &self.readiness;
        let backend = &mut self.backend;
        let ready = async {
            let resolved = probe::resolve(&address)
                .await
                .map_err(BackendError::Other)?;
            let log = backend.log_file().map(|p| p.to_path_buf());
            let cursor = log.as_deref().map(|path| probe::LogCursor {
                path,
                from: log_from,
            });
            tokio::select! {
                () = probe::ready(readiness, resolved, cursor, last_error) => Ok(resolved),
                exit = backend.exited() => Err(BackendError::Exited { exit }),
            }
        };
        self.core
            .serve_while(ready, Some(deadline), &self.cancel)
            .await
    }

    /// Ends a failed wake: tells the held clients, cleans up, and records why.
    async fn fail_wake(&mut self, reason: String, started: Instant) {
        warn!(reason = %reason, "Wake failed.");
        self.core.shared.metrics.failure(Failure::Wake);
        let error = ConnectError::WakeFailed(reason.clone());
        self.core.answer_all(|_| Err(error.clone()));
        // The backend may be half up (a process that never became ready): stop it, so a failed
        // wake never leaves a server running unnoticed.
        let cleanup = self
            .core
            .serve_while(self.backend.stop(), None, &self.cancel)
            .await;
        self.core.record_notes();
        let mut detail = json!({ "duration_ms": started.elapsed().as_millis() as u64 });
        if let Outcome::Done(Err(e)) = &cleanup {
            detail["cleanup_error"] = json!(e.to_string());
            self.stop_retry = Some(backoff(self.stop_retry));
        }
        // Clients and wakes that came during the clean-up share this wake's fate; the next
        // client retries.
        self.core.answer_all(|_| Err(error.clone()));
        self.core.wake_request = None;
        if self.core.always_on {
            self.wake_retry = Some(backoff(self.wake_retry));
        }
        self.core.transition(State::Failed, reason, detail);
    }

    /// Follows the number of open connections: the idle countdown starts (again) whenever it
    /// falls to zero, and stops while a connection is open.
    fn track_idle(&mut self) {
        // Players the backend reports count too: some may have joined without wakegate.
        let players = self.core.status.borrow().players.unwrap_or(0);
        let unused = self.core.shared.connections.load(Ordering::Acquire) == 0 && players == 0;
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.idle_since = unused.then(|| self.idle_since.unwrap_or(now));
        let idle_since = self.idle_since.map(|since| wall - (now - since));
        self.core
            .status
            .send_if_modified(|s| std::mem::replace(&mut s.idle_since, idle_since) != idle_since);
    }

    /// When to stop if nothing changes: after the idle timeout, not before `min_awake`, and
    /// not while a lease or an awake_during window is in force; never for always_on.
    fn stop_at(&self) -> Option<Instant> {
        if self.core.always_on {
            return None;
        }
        let since = self.idle_since?;
        let mut at = (since + self.policy.idle_timeout).max(self.awake_at + self.policy.min_awake);
        if let Some(until) = self.core.leased_until()
            && let Ok(left) = until.duration_since(SystemTime::now())
        {
            at = at.max(Instant::now() + left);
        }
        let now = jiff::Timestamp::now();
        if let Some(window) = schedule::any_contains(&self.core.rules.awake_during, now) {
            at = at.max(window.next_change(now).map_or(at, instant_of));
        }
        Some(at)
    }

    /// Why it must stop now, whatever the activity: a rule, or a request.
    fn must_stop(&mut self) -> Option<(String, &'static str)> {
        if let Some(reason) = self.core.sleep_request.take() {
            return Some((reason, "api"));
        }
        if let Some(why) = self.core.asleep_by_schedule() {
            return Some((why, "schedule"));
        }
        if let Some(max) = self.core.rules.max_runtime
            && self.awake_at.elapsed() >= max
        {
            return Some((
                format!(
                    "it ran for max_runtime ({})",
                    humantime::format_duration(max)
                ),
                "max_runtime",
            ));
        }
        None
    }

    /// Counts players (those the backend reports to a Minecraft status ping, else open
    /// connections) and warns, then stops, when fewer than `min_players` are on.
    fn check_players(&mut self) -> Option<String> {
        let rule = self.core.rules.min_players?;
        self.player_check_at = Some(Instant::now() + rule.interval);
        let connections = self.core.shared.connections.load(Ordering::Acquire) as u32;
        let players = self.core.status.borrow().players.unwrap_or(connections);
        if players >= rule.count {
            self.player_warnings = 0;
            return None;
        }
        if self.player_warnings >= rule.warnings {
            return Some(format!(
                "fewer than {} players for {} checks in a row",
                rule.count,
                rule.warnings + 1
            ));
        }
        self.player_warnings += 1;
        self.core.emit(
            Kind::Warning,
            format!(
                "{players} player(s) online, fewer than min_players ({}): warning {} of {}; it stops after the last one",
                rule.count, self.player_warnings, rule.warnings
            ),
            json!({ "players": players, "warning": self.player_warnings, "of": rule.warnings }),
        );
        None
    }

    /// Awake: hand out tickets, count use, apply the rules, and stop when they say so.
    async fn awake(&mut self) -> Flow {
        loop {
            if let Some(reason) = self.core.restart_request.take() {
                if self.may_restart() {
                    self.core.wake_request = Some(Request {
                        trigger: Trigger::Restart,
                        reason: format!("restarting: {reason}"),
                    });
                    self.core.transition(
                        State::Stopping,
                        format!("restarting: {reason}"),
                        json!({ "trigger": "health" }),
                    );
                } else {
                    self.fail_after_stop = Some(self.crash_loop());
                    self.core.transition(
                        State::Stopping,
                        format!("stopping for good: {reason}"),
                        json!({ "trigger": "breaker" }),
                    );
                }
                return Flow::Continue;
            }
            if let Some((reason, trigger)) = self.must_stop() {
                self.core
                    .transition(State::Stopping, reason, json!({ "trigger": trigger }));
                return Flow::Continue;
            }
            self.core.expire_leases();
            self.track_idle();
            let stop_at = self.stop_at();
            let deadline =
                stop_at.map(|at| SystemTime::now() + at.saturating_duration_since(Instant::now()));
            self.core.status.send_if_modified(|s| {
                std::mem::replace(&mut s.idle_deadline, deadline) != deadline
            });
            let next_expiry = self
                .core
                .status
                .borrow()
                .leases
                .iter()
                .map(|l| l.expires)
                .min();
            let next_expiry = next_expiry
                .map(|e| Instant::now() + e.duration_since(SystemTime::now()).unwrap_or_default());
            let schedule_change = self.schedule_change();
            let runtime_end = self.core.rules.max_runtime.map(|m| self.awake_at + m);
            let runtime_warning = runtime_end.filter(|_| !self.runtime_warned).map(|end| {
                end.checked_sub(self.core.rules.max_runtime_warning)
                    .unwrap_or(self.awake_at)
            });
            tokio::select! {
                () = self.cancel.cancelled() => return Flow::Exit,
                command = self.core.commands.recv() => match command {
                    Some(command) => self.core.handle(command),
                    None => return Flow::Exit,
                },
                () = self.core.shared.closed.notified() => {
                    // The countdown starts from this close, not from an earlier idle moment.
                    self.idle_since = None;
                }
                () = sleep_until(next_expiry) => {}
                () = sleep_until(schedule_change) => {}
                () = sleep_until(runtime_end) => {}
                () = sleep_until(runtime_warning) => {
                    self.runtime_warned = true;
                    let left = runtime_end.map(|e| e.saturating_duration_since(Instant::now())).unwrap_or_default();
                    let left = Duration::from_secs((left.as_millis() as u64 + 500) / 1000);
                    self.core.emit(
                        Kind::Warning,
                        format!("it stops in {} (max_runtime)", round(left)),
                        json!({ "stops_in_ms": left.as_millis() as u64 }),
                    );
                }
                () = sleep_until(self.player_check_at) => {
                    if let Some(reason) = self.check_players() {
                        self.core.transition(State::Stopping, reason, json!({ "trigger": "min_players" }));
                        return Flow::Continue;
                    }
                }
                exit = self.backend.exited() => {
                    self.core.shared.metrics.failure(Failure::Crash);
                    let reason = BackendError::Exited { exit: exit.clone() }.to_string();
                    let detail = json!({ "exit": exit.status, "log_tail": exit.log_tail });
                    if self.core.always_on && self.may_restart() {
                        self.core.start_wake(Trigger::Restart, format!("restarting after a crash: {reason}"), detail);
                    } else if self.core.always_on {
                        let reason = format!("{}; it last crashed: {reason}", self.crash_loop());
                        self.core.transition(State::Failed, reason, detail);
                    } else {
                        self.core.transition(
                            State::Failed,
                            format!("the backend stopped on its own while awake: {reason}"),
                            detail,
                        );
                    }
                    return Flow::Continue;
                }
                () = sleep_until(stop_at) => {
                    // The gate shut first, then the count read: a client that took a ticket
                    // on its own since the last look keeps the service awake.
                    self.core.shared.set_gate(None);
                    if self.core.shared.connections.load(Ordering::SeqCst) > 0 {
                        self.core.shared.set_gate(self.core.address());
                        continue;
                    }
                    let idle = self.idle_since.map(|s| s.elapsed()).unwrap_or_default();
                    self.core.transition(
                        State::Stopping,
                        format!("no connection for {}", round(idle)),
                        json!({ "trigger": "idle", "idle_ms": idle.as_millis() as u64 }),
                    );
                    return Flow::Continue;
                }
            }
        }
    }

    /// Stopping: stop the backend; clients that arrive meanwhile wake it again afterwards.
    async fn stopping(&mut self) -> Flow {
        let started = Instant::now();
        let result = match self
            .core
            .serve_while(self.backend.stop(), None, &self.cancel)
            .await
        {
            Outcome::Done(result) => result,
            _ => return Flow::Exit,
        };
        self.core.record_notes();
        match result {
            Ok(()) => {
                self.stop_retry = None;
                match self.fail_after_stop.take() {
                    Some(reason) => {
                        self.core.wake_request = None;
                        self.core.transition(
                            State::Failed,
                            reason,
                            json!({ "trigger": "breaker" }),
                        );
                    }
                    None => self.core.transition(
                        State::Asleep,
                        format!("backend stopped after {}", round(started.elapsed())),
                        json!({ "duration_ms": started.elapsed().as_millis() as u64 }),
                    ),
                }
            }
            Err(e) => {
                self.core.shared.metrics.failure(Failure::Stop);
                let reason = format!("the stop failed: {e}");
                self.core
                    .answer_all(|_| Err(ConnectError::WakeFailed(reason.clone())));
                self.stop_retry = Some(backoff(self.stop_retry));
                self.core
                    .transition(State::Failed, reason, json!({ "trigger": "stop" }));
            }
        }
        Flow::Continue
    }

    /// wakegate is shutting down: release held clients and let the backend decide.
    async fn shutdown(&mut self) {
        self.core.answer_all(|_| Err(ConnectError::ShuttingDown));
        let stopped = self.backend.shutdown().await;
        self.core.record_notes();
        match stopped {
            Ok(true) => self.core.transition(
                State::Asleep,
                "wakegate shut down and stopped the backend".into(),
                json!({ "trigger": "shutdown" }),
            ),
            Ok(false) => info!("wakegate shut down; the backend keeps its state."),
            Err(e) => error!(error = %e, "Could not stop the backend while shutting down."),
        }
    }
}

fn round(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}
