//! The actor's core: everything of the actor but the backend. It keeps taking requests
//! (holding clients, recording leases, answering wakes and sleeps) while a backend call is
//! under way, and it records every event and publishes every status change. It never waits
//! for the store: events are handed to the store's writer, which publishes them once
//! committed, and a lease is written by a task of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::HealthAction;
use super::gate::{Shared, ticket};
use super::policy::{Now, Policy};
use super::{Command, ConnectError, Denied, Status, Ticket};
use crate::backend::{Note, SleepMode};
use crate::event::{Cause, Detail, Fact, Kind, NewEvent, State};
use crate::store::{self, Lease, Store};

/// A client waiting for the wake to finish.
pub(super) struct Waiter {
    pub(super) client: SocketAddr,
    pub(super) player: Option<String>,
    /// The state the service was in when the client arrived.
    pub(super) arrived_while: State,
    pub(super) reply: oneshot::Sender<Result<Ticket, ConnectError>>,
}

/// A wake asked for while the backend was busy, done when it is free.
pub(super) struct Request {
    pub(super) cause: Cause,
    pub(super) reason: String,
}

/// How a backend call ended while requests were served.
pub(super) enum Outcome<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

/// Everything of the actor but the backend.
pub(super) struct Core {
    pub(super) name: String,
    pub(super) store: Arc<Store>,
    pub(super) status: watch::Sender<Status>,
    pub(super) commands: mpsc::Receiver<Command>,
    /// The actor's own address, for a task that reports back (weak: the actor ends when every
    /// handle is gone).
    pub(super) myself: mpsc::WeakSender<Command>,
    /// Where the actor's own tasks run (a lease being written).
    pub(super) tracker: tokio_util::task::TaskTracker,
    /// How it sleeps: the recent wakes from each sleep mode, since when it sleeps.
    pub(super) sleep: super::sleep::Sleep,
    /// What the backend reports from inside its calls (see [`crate::backend::Note`]).
    pub(super) notes: Option<mpsc::UnboundedReceiver<Note>>,
    pub(super) waiters: Vec<Waiter>,
    pub(super) shared: Arc<Shared>,
    pub(super) max_held: usize,
    pub(super) wake_request: Option<Request>,
    pub(super) sleep_request: Option<String>,
    /// A restart asked for by a failing health check.
    pub(super) restart_request: Option<String>,
    /// The rules and what they remember.
    pub(super) policy: Policy,
    /// The service's agent: its rules and the pre-stop waited for.
    pub(super) agent: super::agent::AgentLink,
    /// Open connections to it through the other gateways sharing the store, while this one
    /// owns it (see `owner`); a channel whose sender is gone (0) otherwise.
    pub(super) remote: watch::Receiver<u64>,
    pub(super) wake_timeout: std::time::Duration,
}

impl Core {
    pub(super) fn state(&self) -> State {
        self.status.borrow().state
    }

    pub(super) fn address(&self) -> Option<SocketAddr> {
        self.status.borrow().address
    }

    /// Takes one request. Tickets are handed out only when awake; everything else that needs
    /// the backend is left as a request for the state machine.
    pub(super) fn handle(&mut self, command: Command) {
        let state = self.state();
        let now = Now::read();
        match command {
            Command::Connect {
                client,
                player,
                reply,
            } => match (state, self.address()) {
                (State::Awake, Some(address)) => {
                    let _ = reply.send(Ok(ticket(&self.shared, address)));
                }
                _ => match self.policy.asleep_by_schedule(now) {
                    Some(why) => {
                        self.shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
                        info!(%client, "{why}; closing the client.");
                        let _ = reply.send(Err(ConnectError::Asleep(why)));
                    }
                    None => self.hold(client, player, state, reply),
                },
            },
            Command::Wake { by, cause, reply } => {
                if let Some(why) = self.policy.asleep_by_schedule(now) {
                    self.action(format!("wake requested by {by} refused: {why}"));
                    let _ = reply.send(Err(Denied::Schedule(why)));
                    return;
                }
                self.sleep_request = None;
                if matches!(state, State::Asleep | State::Failed | State::Stopping) {
                    self.action(format!("wake requested by {by}"));
                    self.wake_request.get_or_insert(Request {
                        cause,
                        reason: format!("wake requested by {by}"),
                    });
                }
                let _ = reply.send(Ok(state));
            }
            Command::Sleep { by, reply } => {
                if let Some(why) = self.policy.kept_awake_by_rule(now) {
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
                if let Some(why) = self.policy.asleep_by_schedule(now) {
                    let _ = reply.send(Err(Denied::Schedule(why)));
                    return;
                }
                // Written by a task, so the actor keeps serving while the store is slow; the
                // lease counts once it is stored and back here.
                let store = self.store.clone();
                let name = self.name.clone();
                let myself = self.myself.clone();
                self.tracker.spawn(async move {
                    match store.add_lease(&name, &reason, &by, duration).await {
                        Ok(lease) => {
                            if let Some(actor) = myself.upgrade() {
                                let added = Command::LeaseAdded {
                                    lease,
                                    duration,
                                    by,
                                    reply,
                                };
                                let _ = actor.send(added).await;
                            }
                        }
                        Err(e) => drop(reply.send(Err(Denied::Store(e.to_string())))),
                    }
                });
            }
            Command::LeaseAdded {
                lease,
                duration,
                by,
                reply,
            } => {
                // Taken in once: the owner may read a lease of its own in the database (see
                // `owner`) before its own word of it arrives here.
                if self.status.borrow().leases.iter().any(|l| l.id == lease.id) {
                    let _ = reply.send(Ok(lease));
                    return;
                }
                self.sleep_request = None;
                let text = format!(
                    "lease #{} taken by {by} for {}: {}",
                    lease.id,
                    humantime::format_duration(duration),
                    lease.reason
                );
                let taken = Fact::LeaseTaken {
                    lease: lease.clone(),
                };
                self.change(
                    |s| s.leases.push(lease.clone()),
                    Kind::Lease,
                    text.clone(),
                    taken.into(),
                );
                if !matches!(state, State::Waking | State::Awake) {
                    self.wake_request.get_or_insert(Request {
                        cause: Cause::Lease,
                        reason: text,
                    });
                }
                let _ = reply.send(Ok(lease));
            }
            Command::EndLease { id, by, reply } => {
                // The leases in force are the status's; the store follows in order.
                let now = SystemTime::now();
                let ended = self
                    .status
                    .borrow()
                    .leases
                    .iter()
                    .any(|l| l.id == id && l.expires > now);
                if ended {
                    self.store.end_lease(&self.name, id);
                    self.change(
                        |s| s.leases.retain(|l| l.id != id),
                        Kind::Lease,
                        format!("lease #{id} ended by {by}"),
                        Fact::LeaseEnded { lease_id: id }.into(),
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
                let action_name = format!("{action:?}").to_lowercase();
                self.emit(
                    Kind::Warning,
                    reason.clone(),
                    Fact::Unhealthy {
                        action: action_name,
                    }
                    .into(),
                );
                match action {
                    HealthAction::Notify => {}
                    HealthAction::Sleep => self.sleep_request = Some(reason),
                    HealthAction::Restart => self.restart_request = Some(reason),
                }
            }
            Command::AgentReport {
                report,
                valid_for,
                reply,
            } => {
                let _ = reply.send(self.agent_report(report, valid_for));
            }
            Command::PreStopDone { id, result, reply } => {
                let _ = reply.send(self.pre_stop_done(id, result));
            }
            Command::Configure {
                rules,
                max_held,
                reply,
            } => {
                // The timers are computed again from the new rules on the next turn of the
                // state loop, which this command ends.
                info!(idle_timeout = %humantime::format_duration(rules.idle_timeout), "Policies reloaded.");
                self.policy.rules = rules;
                self.max_held = max_held;
                let _ = reply.send(());
            }
            Command::Note {
                kind,
                reason,
                detail,
            } => self.emit_value(kind, reason, detail),
        }
    }

    /// Drops the leases that have expired, with an event each.
    pub(super) fn expire_leases(&mut self) {
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
            self.change(
                |s| s.leases.retain(|l| l.id != lease.id),
                Kind::Lease,
                format!("lease #{} of {} expired", lease.id, lease.by),
                Fact::LeaseEnded { lease_id: lease.id }.into(),
            );
        }
    }

    fn end_leases(&mut self, why: &str) {
        let leases = self.status.borrow().leases.clone();
        for lease in leases {
            self.store.end_lease(&self.name, lease.id);
            self.change(
                |s| s.leases.retain(|l| l.id != lease.id),
                Kind::Lease,
                format!("lease #{} of {} {why}", lease.id, lease.by),
                Fact::LeaseEnded { lease_id: lease.id }.into(),
            );
        }
    }

    /// When the last lease in force expires.
    pub(super) fn leased_until(&self) -> Option<SystemTime> {
        self.status.borrow().leases.iter().map(|l| l.expires).max()
    }

    /// When the next lease in force expires.
    pub(super) fn next_expiry(&self) -> Option<SystemTime> {
        self.status.borrow().leases.iter().map(|l| l.expires).min()
    }

    /// Whether other gateways sharing the store have clients of this service now (asked of
    /// the database under the lock on the service's row, not the count last heard). When not,
    /// the database already says `stopping`, so no gateway lets a new client through (see
    /// `follow`); when it cannot be known, it is taken to be in use: never stopped under a
    /// client.
    pub(super) async fn in_use_elsewhere(&self) -> bool {
        let Some(cluster) = self.store.cluster() else {
            return false;
        };
        let asked = cluster.stop_if_unused(&self.name);
        match tokio::time::timeout(std::time::Duration::from_secs(2), asked).await {
            Ok(Ok(unused)) => !unused,
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot read the other gateways' connections; not stopping now.");
                true
            }
            Err(_) => true,
        }
    }

    /// Adds a client to the waiting list, or refuses it at once when the list is full.
    pub(super) fn hold(
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
    pub(super) async fn serve_while<T>(
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

    fn note(&self, note: Note) {
        self.emit_value(note.kind, note.reason, note.detail);
    }

    /// Records the notes the backend has sent and the actor has not yet taken, for calls made
    /// outside `serve_while` (a stop, the shutdown).
    pub(super) fn record_notes(&mut self) {
        while let Some(note) = self.notes.as_mut().and_then(|n| n.try_recv().ok()) {
            self.note(note);
        }
    }

    /// Answers every waiting client that is still there.
    pub(super) fn answer_all(
        &mut self,
        mut answer: impl FnMut(&Arc<Shared>) -> Result<Ticket, ConnectError>,
    ) {
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

    /// Hands an event to the store, which publishes it once committed; never waits. The caller
    /// has already made what it describes visible in the status, so a subscriber that reads
    /// the status on an event sees the new state.
    fn record(
        &self,
        kind: Kind,
        state: State,
        reason: String,
        detail: serde_json::Value,
        time: SystemTime,
    ) {
        info!(state = %state, kind = kind.as_str(), "{reason}");
        let last_error = (state == State::Failed).then(|| reason.clone());
        let event = NewEvent {
            kind,
            state,
            reason,
            detail,
        };
        self.store.record(&self.name, event, time, last_error);
    }

    /// Changes the status and hands over the event that says so, in one step for whoever
    /// watches: a reader that sees the change finds the event handed over (and then read from
    /// the store), and a subscriber that reads the status on the event sees the change.
    pub(super) fn change(
        &self,
        change: impl FnOnce(&mut Status),
        kind: Kind,
        reason: String,
        detail: Detail,
    ) {
        self.status.send_modify(|s| {
            change(s);
            self.record(kind, s.state, reason, detail.to_value(), store::now());
        });
    }

    /// Records and publishes an event that does not change the state.
    pub(super) fn emit(&self, kind: Kind, reason: String, detail: Detail) {
        self.emit_value(kind, reason, detail.to_value());
    }

    /// Like [`emit`](Self::emit), for a detail written by someone else (a backend's note, a
    /// listener's player event).
    pub(super) fn emit_value(&self, kind: Kind, reason: String, detail: serde_json::Value) {
        self.record(kind, self.state(), reason, detail, store::now());
    }

    pub(super) fn progress(&self, reason: String, detail: Detail) {
        self.emit(Kind::Progress, reason, detail);
    }

    fn action(&self, reason: String) {
        self.emit(Kind::Action, reason, Detail::default());
    }

    /// Moves to `state`, recording why (the detail gets the state it left). Asleep or failed,
    /// the server is taken to be stopped for real; see [`fall_asleep`](Self::fall_asleep).
    pub(super) fn transition(&mut self, state: State, reason: String, detail: impl Into<Detail>) {
        let mode = matches!(state, State::Asleep | State::Failed).then_some(SleepMode::Stopped);
        self.transition_as(state, mode, reason, detail);
    }

    /// Moves to `asleep`, the server sleeping `mode` (stopped, paused or frozen).
    pub(super) fn fall_asleep(
        &mut self,
        mode: SleepMode,
        reason: String,
        detail: impl Into<Detail>,
    ) {
        self.transition_as(State::Asleep, Some(mode), reason, detail);
    }

    /// Moves to `state`; with `mode`, the server sleeps that way, and the expected wake time
    /// is that of a wake from it (both published with the state, in one change).
    fn transition_as(
        &mut self,
        state: State,
        mode: Option<SleepMode>,
        reason: String,
        detail: impl Into<Detail>,
    ) {
        if mode.is_some() {
            self.sleep.since = Instant::now();
        }
        let expected = mode.map(|mode| self.sleep.expected(mode));
        let previous = self.state();
        let detail = Detail {
            previous: Some(previous),
            ..detail.into()
        };
        let failed = (state == State::Failed).then(|| reason.clone());
        let time = store::now();
        self.shared.metrics.entered(state);
        // The gate first: whoever sees the new state finds the gate as it says (a listener
        // that takes a ticket only at the open gate, `ticket_if_awake`, must not find an
        // awake service's gate still shut).
        let gate = match state {
            State::Awake => self.status.borrow().address,
            _ => None,
        };
        self.shared.set_gate(gate);
        // The status changes and the event is handed over in one step (see `change`).
        self.status.send_modify(|s| {
            self.record(Kind::Transition, state, reason, detail.to_value(), time);
            s.state = state;
            s.since = time;
            if let (Some(mode), Some(expected)) = (mode, expected) {
                s.sleep_mode = mode;
                s.expected_boot = expected;
            }
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
    }

    /// Starts a wake, counting what started it.
    pub(super) fn start_wake(&mut self, cause: Cause, reason: String, detail: Detail) {
        self.shared.metrics.wake(cause.trigger());
        self.transition(State::Waking, reason, detail);
    }
}

/// The next note of a backend that has them; never for one that has none.
async fn next_note(notes: &mut Option<mpsc::UnboundedReceiver<Note>>) -> Option<Note> {
    match notes {
        Some(notes) => notes.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
