//! The per-service actor: it owns the backend, the state machine and the idle timer. Listeners
//! and the API talk to it through a cloneable [`ServiceHandle`].
//!
//! A client asks the actor for a [`Ticket`] (the backend's address plus a guard that counts the
//! connection). The actor answers at once when awake, or holds the request until the wake it
//! started is over. Handing out tickets only from the actor is what makes "exactly one start"
//! and "never stopped while in use" true: a stop is decided by the same task that counts new
//! connections, so a client cannot slip in between the idle check and the stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::backend::{Backend, BackendError, Status as BackendStatus};
use crate::config;
use crate::event::{Event, Kind, NewEvent, State};
use crate::probe;
use crate::store::Store;

/// What a service looks like right now; published on a `watch` channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    pub since: SystemTime,
    /// Where the backend was found on the last wake (resolved), while awake.
    pub address: Option<SocketAddr>,
    /// Since when no connection is open, while awake.
    pub idle_since: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Clients waiting for the wake to finish.
    pub held: usize,
}

/// Counters shared with the data path; written without locks.
#[derive(Debug, Default)]
struct Shared {
    connections: AtomicUsize,
    refused: AtomicU64,
    /// Signalled when a connection closes, so the actor can start the idle countdown.
    closed: Notify,
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
}

/// Permission to use the backend: its address, and a guard that counts the connection as
/// activity until dropped.
#[derive(Debug)]
pub struct Ticket {
    pub address: SocketAddr,
    _guard: ConnectionGuard,
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
        reply: oneshot::Sender<Result<Ticket, ConnectError>>,
    },
}

/// A cloneable way to talk to one service's actor.
#[derive(Clone)]
pub struct ServiceHandle {
    name: Arc<str>,
    backend_kind: &'static str,
    commands: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    events: broadcast::Sender<Event>,
    shared: Arc<Shared>,
}

impl ServiceHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend_kind(&self) -> &'static str {
        self.backend_kind
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
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
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Waits until the actor has asked the backend what really runs (see `reconcile`).
    pub async fn reconciled(&self) {
        let mut status = self.status.clone();
        let _ = status.changed().await;
    }

    /// Asks for the backend on behalf of `client`; waits while the service wakes.
    pub async fn connect(&self, client: SocketAddr) -> Result<Ticket, ConnectError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Connect { client, reply })
            .await
            .map_err(|_| ConnectError::ShuttingDown)?;
        answer.await.map_err(|_| ConnectError::ShuttingDown)?
    }
}

/// Timings and limits of one service.
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
    let (commands_tx, commands) = mpsc::channel(64);
    // Until the backend has been asked, the best knowledge is what was last recorded.
    let last = store.service(&service.name).ok().flatten();
    let initial = Status {
        state: last.as_ref().map_or(State::Asleep, |r| r.state),
        since: last.as_ref().map_or_else(SystemTime::now, |r| r.since),
        address: None,
        idle_since: None,
        last_error: last.and_then(|r| r.last_error),
        held: 0,
    };
    let (status_tx, status) = watch::channel(initial);
    let shared = Arc::new(Shared::default());
    let handle = ServiceHandle {
        name: service.name.as_str().into(),
        backend_kind: backend.kind(),
        commands: commands_tx,
        status,
        events: events.clone(),
        shared: shared.clone(),
    };
    let actor = Actor {
        name: service.name.clone(),
        policy: Policy {
            idle_timeout: service.idle_timeout,
            min_awake: service.min_awake,
            wake_timeout: service.wake_timeout,
        },
        backend,
        store,
        events,
        lobby: Lobby {
            status: status_tx,
            commands,
            waiters: Vec::new(),
            shared,
            max_held: service.max_held,
        },
        cancel,
        adopting: false,
        awake_at: Instant::now(),
        idle_since: None,
        stop_retry: None,
    };
    let span = info_span!("service", service = %service.name);
    tracker.spawn(actor.run().instrument(span));
    handle
}

/// A client waiting for the wake to finish.
struct Waiter {
    client: SocketAddr,
    /// The state the service was in when the client arrived.
    arrived_while: State,
    reply: oneshot::Sender<Result<Ticket, ConnectError>>,
}

/// The part of the actor that takes requests while the backend is busy starting or stopping.
struct Lobby {
    status: watch::Sender<Status>,
    commands: mpsc::Receiver<Command>,
    waiters: Vec<Waiter>,
    shared: Arc<Shared>,
    max_held: usize,
}

enum Outcome<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

impl Lobby {
    /// Adds a client to the waiting list, or refuses it at once when the list is full.
    fn hold(
        &mut self,
        client: SocketAddr,
        arrived_while: State,
        reply: oneshot::Sender<Result<Ticket, ConnectError>>,
    ) {
        self.waiters.retain(|w| !w.reply.is_closed());
        if self.waiters.len() >= self.max_held {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            warn!(%client, max_held = self.max_held, "Too many clients waiting; refusing one.");
            let _ = reply.send(Err(ConnectError::TooManyHeld(self.max_held)));
        } else {
            self.waiters.push(Waiter {
                client,
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

    /// Runs `work` (a backend call) while holding every client that arrives meanwhile.
    async fn serve_while<T>(
        &mut self,
        state: State,
        work: impl Future<Output = T>,
        deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> Outcome<T> {
        tokio::pin!(work);
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        loop {
            tokio::select! {
                out = &mut work => return Outcome::Done(out),
                () = &mut expired => return Outcome::TimedOut,
                () = cancel.cancelled() => return Outcome::Cancelled,
                Some(command) = self.commands.recv() => match command {
                    Command::Connect { client, reply } => self.hold(client, state, reply),
                },
            }
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
}

/// Counts a connection and hands out the backend's address.
fn ticket(shared: &Arc<Shared>, address: SocketAddr) -> Ticket {
    shared.connections.fetch_add(1, Ordering::AcqRel);
    Ticket {
        address,
        _guard: ConnectionGuard(shared.clone()),
    }
}

struct Actor {
    name: String,
    policy: Policy,
    backend: Box<dyn Backend>,
    store: Arc<Store>,
    events: broadcast::Sender<Event>,
    lobby: Lobby,
    cancel: CancellationToken,
    /// The backend was found running at start-up: the next wake only checks readiness.
    adopting: bool,
    awake_at: Instant,
    idle_since: Option<Instant>,
    /// When to try again to stop a backend whose stop failed, and the backoff used.
    stop_retry: Option<(Instant, Duration)>,
}

/// What the main loop does after a phase.
enum Flow {
    Continue,
    Exit,
}

impl Actor {
    async fn run(mut self) {
        if let Flow::Continue = self.reconcile().await {
            loop {
                let flow = match self.state() {
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

    fn state(&self) -> State {
        self.lobby.status.borrow().state
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
        self.lobby.status.send_modify(|s| {
            s.state = state;
            s.since = event.as_ref().map_or_else(SystemTime::now, |e| e.time);
            if state != State::Awake {
                s.address = None;
                s.idle_since = None;
            }
            if failed.is_some() {
                s.last_error = failed;
            }
        });
        self.publish(event);
    }

    fn progress(&mut self, reason: String, detail: serde_json::Value) {
        let event = self.record(Kind::Progress, self.state(), reason, detail);
        self.publish(event);
    }

    /// Finds out what really runs and adopts it. Always ends with a transition, which is how
    /// [`ServiceHandle::reconciled`] knows it is over.
    async fn reconcile(&mut self) -> Flow {
        let last = self.store.service(&self.name).ok().flatten();
        let was = last.as_ref().map(|r| r.state);
        let was_text = was.map_or("never recorded".to_string(), |s| format!("was {s}"));
        let status = match self
            .lobby
            .serve_while(State::Asleep, self.backend.status(), None, &self.cancel)
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
            BackendStatus::Running => true,
            BackendStatus::Stopped => false,
            // Without a way to ask, assume a service that was not asleep still runs: it then
            // gets a fresh idle countdown and is stopped if nobody uses it. Assuming the
            // opposite could leave it running forever.
            BackendStatus::Unknown => was.is_some_and(|s| s != State::Asleep),
        };
        if running {
            self.adopting = true;
            self.transition(
                State::Waking,
                format!("wakegate started and found the backend running ({was_text}); checking that it is ready"),
                json!({ "trigger": "reconcile" }),
            );
        } else {
            self.transition(
                State::Asleep,
                format!("wakegate started and found the backend stopped ({was_text})"),
                json!({ "trigger": "reconcile" }),
            );
        }
        Flow::Continue
    }

    /// Asleep or failed: wait for a client (and retry a failed stop with backoff).
    async fn resting(&mut self) -> Flow {
        // Clients that arrived while the backend was busy (stopping, or being asked for its
        // status at start-up) wake it now.
        self.lobby.waiters.retain(|w| !w.reply.is_closed());
        if let Some(first) = self.lobby.waiters.first() {
            let (client, was) = (first.client, first.arrived_while);
            self.transition(
                State::Waking,
                format!("client {client} connected while the service was {was}"),
                json!({ "trigger": "client", "client": client.to_string() }),
            );
            return Flow::Continue;
        }
        let retry_at = self.stop_retry.map(|(at, _)| at);
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.cancel.cancelled() => Flow::Exit,
            () = retry => {
                self.transition(State::Stopping, "retrying the stop that failed".into(), json!({ "trigger": "retry" }));
                Flow::Continue
            }
            command = self.lobby.commands.recv() => match command {
                Some(Command::Connect { client, reply }) => {
                    self.lobby.hold(client, self.state(), reply);
                    self.transition(
                        State::Waking,
                        format!("client {client} connected"),
                        json!({ "trigger": "client", "client": client.to_string() }),
                    );
                    Flow::Continue
                }
                None => Flow::Exit,
            },
        }
    }

    /// Starts the backend (unless adopting) and waits until it accepts connections.
    async fn waking(&mut self) -> Flow {
        let started = Instant::now();
        let deadline = started + self.policy.wake_timeout;
        let result = self.wake_steps(deadline).await;
        match result {
            Outcome::Done(Ok(address)) => {
                let took = started.elapsed();
                self.awake_at = Instant::now();
                // The address first, so whoever sees `awake` also sees where.
                self.lobby.status.send_modify(|s| s.address = Some(address));
                self.transition(
                    State::Awake,
                    format!("backend ready at {address} after {}", round(took)),
                    json!({ "address": address.to_string(), "duration_ms": took.as_millis() as u64 }),
                );
                self.lobby.answer_all(|shared| Ok(ticket(shared, address)));
                self.idle_since = None;
                self.mark_idle_if_unused();
                Flow::Continue
            }
            Outcome::Done(Err(e)) => {
                self.fail_wake(e.to_string(), started).await;
                Flow::Continue
            }
            Outcome::TimedOut => {
                let reason = format!(
                    "the backend was not ready within wake_timeout ({}); check that it listens on {} or raise wake_timeout",
                    humantime::format_duration(self.policy.wake_timeout),
                    self.address_hint().await
                );
                self.fail_wake(reason, started).await;
                Flow::Continue
            }
            Outcome::Cancelled => Flow::Exit,
        }
    }

    async fn address_hint(&mut self) -> String {
        self.backend
            .address()
            .await
            .unwrap_or_else(|_| "its address".into())
    }

    /// The steps of a wake, raced against the deadline while clients keep arriving.
    async fn wake_steps(&mut self, deadline: Instant) -> Outcome<Result<SocketAddr, BackendError>> {
        if !std::mem::take(&mut self.adopting) {
            match self
                .lobby
                .serve_while(
                    State::Waking,
                    self.backend.start(),
                    Some(deadline),
                    &self.cancel,
                )
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
        self.progress(
            format!("waiting for {address} to accept connections"),
            json!({ "step": "probing", "address": address }),
        );
        let backend = &mut self.backend;
        let ready = async {
            let resolved = probe::resolve(&address)
                .await
                .map_err(BackendError::Other)?;
            tokio::select! {
                () = probe::tcp_ready(resolved) => Ok(resolved),
                exit = backend.exited() => Err(BackendError::Exited { exit }),
            }
        };
        self.lobby
            .serve_while(State::Waking, ready, Some(deadline), &self.cancel)
            .await
    }

    /// Ends a failed wake: tells the held clients, cleans up, and records why.
    async fn fail_wake(&mut self, reason: String, started: Instant) {
        warn!(reason = %reason, "Wake failed.");
        let error = ConnectError::WakeFailed(reason.clone());
        self.lobby.answer_all(|_| Err(error.clone()));
        // The backend may be half up (a process that never became ready): stop it, so a failed
        // wake never leaves a server running unnoticed.
        let cleanup = self
            .lobby
            .serve_while(State::Failed, self.backend.stop(), None, &self.cancel)
            .await;
        let mut detail = json!({ "duration_ms": started.elapsed().as_millis() as u64 });
        if let Outcome::Done(Err(e)) = &cleanup {
            detail["cleanup_error"] = json!(e.to_string());
            self.schedule_stop_retry();
        }
        // Clients that arrived during the clean-up share this wake's fate; the next one retries.
        self.lobby.answer_all(|_| Err(error.clone()));
        self.transition(State::Failed, reason, detail);
    }

    fn schedule_stop_retry(&mut self) {
        let backoff = self.stop_retry.map_or(Duration::from_secs(1), |(_, b)| {
            (b * 2).min(Duration::from_secs(300))
        });
        self.stop_retry = Some((Instant::now() + backoff, backoff));
    }

    /// Starts the idle countdown if no connection is open.
    fn mark_idle_if_unused(&mut self) {
        let unused = self.lobby.shared.connections.load(Ordering::Acquire) == 0;
        match (unused, self.idle_since.is_some()) {
            (true, false) => {
                self.idle_since = Some(Instant::now());
                self.lobby
                    .status
                    .send_modify(|s| s.idle_since = Some(SystemTime::now()));
            }
            (false, true) => {
                self.idle_since = None;
                self.lobby.status.send_modify(|s| s.idle_since = None);
            }
            _ => {}
        }
    }

    /// Awake: hand out tickets, count use, and stop after the idle timeout.
    async fn awake(&mut self) -> Flow {
        let address = self
            .lobby
            .status
            .borrow()
            .address
            .expect("an awake service has an address");
        loop {
            let stop_at = self.idle_since.map(|since| {
                (since + self.policy.idle_timeout).max(self.awake_at + self.policy.min_awake)
            });
            let idle_expired = async {
                match stop_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.cancel.cancelled() => return Flow::Exit,
                command = self.lobby.commands.recv() => match command {
                    Some(Command::Connect { reply, .. }) => {
                        let _ = reply.send(Ok(ticket(&self.lobby.shared, address)));
                        self.mark_idle_if_unused();
                    }
                    None => return Flow::Exit,
                },
                () = self.lobby.shared.closed.notified() => self.mark_idle_if_unused(),
                exit = self.backend.exited() => {
                    let reason = BackendError::Exited { exit: exit.clone() }.to_string();
                    self.transition(
                        State::Failed,
                        format!("the backend stopped on its own while awake: {reason}"),
                        json!({ "exit": exit.status, "log_tail": exit.log_tail }),
                    );
                    return Flow::Continue;
                }
                () = idle_expired => {
                    let idle = self.idle_since.map(|s| s.elapsed()).unwrap_or_default();
                    self.transition(
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
            .lobby
            .serve_while(State::Stopping, self.backend.stop(), None, &self.cancel)
            .await
        {
            Outcome::Done(result) => result,
            _ => return Flow::Exit,
        };
        match result {
            Ok(()) => {
                self.stop_retry = None;
                self.transition(
                    State::Asleep,
                    format!("backend stopped after {}", round(started.elapsed())),
                    json!({ "duration_ms": started.elapsed().as_millis() as u64 }),
                );
            }
            Err(e) => {
                let reason = format!("the stop failed: {e}");
                self.lobby
                    .answer_all(|_| Err(ConnectError::WakeFailed(reason.clone())));
                self.schedule_stop_retry();
                self.transition(State::Failed, reason, json!({ "trigger": "stop" }));
            }
        }
        Flow::Continue
    }

    /// wakegate is shutting down: release held clients and let the backend decide.
    async fn shutdown(&mut self) {
        self.lobby.answer_all(|_| Err(ConnectError::ShuttingDown));
        match self.backend.shutdown().await {
            Ok(true) => self.transition(
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
