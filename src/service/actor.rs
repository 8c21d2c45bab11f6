//! The actor's state loop: one task per service that owns the backend and moves through
//! `asleep → waking → awake → stopping` (or `failed`), asking the policies what to do and
//! taking requests through its core while a backend call is under way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::agent::AgentLink;
use super::config;
use super::core::{Core, Outcome, sleep_until};
use super::gate::{Shared, ticket};
use super::policy::{Now, Players, Policy, Rules, backoff, round};
use super::sleep::{self, Sleep};
use super::{ConnectError, ServiceHandle, Status};
use crate::backend::{Backend, BackendError, SleepMode, Status as BackendStatus};
use crate::event::{Cause, Detail, Fact, Kind, State};
use crate::metrics::Failure;
use crate::probe::{self, Check};
use crate::store::Store;

/// Starts the actor of `service` on `tracker`; it runs until `cancel` fires. Health checks
/// and the player poll, which drive the handle, are started apart (see `health::spawn_for`).
pub fn spawn(
    service: &config::Service,
    backend: Box<dyn Backend>,
    store: Arc<Store>,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
) -> ServiceHandle {
    let mut backend = backend;
    let notes = backend.notes();
    let (commands_tx, commands) = mpsc::channel(64);
    let commands_tx_weak = commands_tx.downgrade();
    // Until the backend has been asked, the best knowledge is what was last recorded (read at
    // start-up, before any client is taken).
    let last = store.service(&service.name).ok().flatten();
    let sleep = Sleep::load(&store, &service.name);
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
        sleep_mode: SleepMode::Stopped,
        expected_boot: sleep.expected(SleepMode::Stopped),
        agent: None,
        pre_stop: None,
        owner: None,
    };
    let (status_tx, status) = watch::channel(initial);
    let (reconciled_tx, reconciled) = watch::channel(false);
    // Open connections through other gateways: 0 unless it owns a shared service.
    let remote = watch::channel(0).1;
    let shared = Arc::new(Shared::default());
    shared.set_hourly_cost(service.hourly_cost);
    let handle = ServiceHandle {
        name: service.name.as_str().into(),
        backend_kind: backend.kind(),
        commands: commands_tx,
        status,
        events: store.publisher(),
        shared: shared.clone(),
        reconciled,
        gateway: store.cluster().map(|c| c.id().into()),
    };
    let actor = Actor {
        readiness: service.readiness.clone(),
        reconciled: reconciled_tx,
        backend,
        core: Core {
            name: service.name.clone(),
            store,
            status: status_tx,
            myself: commands_tx_weak,
            tracker: tracker.clone(),
            sleep,
            commands,
            notes,
            waiters: Vec::new(),
            shared,
            max_held: service.max_held,
            wake_request: None,
            sleep_request: None,
            restart_request: None,
            policy: Policy::new(Rules::of(service), Instant::now()),
            agent: AgentLink::new(service.agent.clone()),
            remote,
            wake_timeout: service.wake_timeout,
        },
        cancel,
        adopting: false,
        rebooting: None,
        next_poll: None,
    };
    let span = info_span!("service", service = %service.name);
    tracker.spawn(actor.run().instrument(span));
    handle
}

/// How long a backend action waits for the transition before it to be stored.
const WRITE_AHEAD: Duration = Duration::from_secs(2);

/// Runs a backend action once the transition that announced it is stored (write-ahead): a
/// wakegate killed in the middle of a stop then finds `stopping` recorded and finishes it,
/// rather than adopting a server on its way down and calling its exit a failure. While the
/// store cannot write, the action does not wait (the store says why on `/healthz`).
async fn write_ahead<T>(store: Arc<Store>, action: impl Future<Output = T>) -> T {
    store.settled(WRITE_AHEAD).await;
    action.await
}

/// Returns once the backend says its server's own health check passes (a container's
/// HEALTHCHECK), asking again with the probes' backoff; an error of the backend (the container
/// exited) ends the wake. The caller bounds it with the wake's deadline.
async fn own_health(
    backend: &mut dyn Backend,
    last_error: &mut String,
) -> Result<(), BackendError> {
    let mut backoff = probe::Backoff::new();
    loop {
        match backend.healthy().await? {
            crate::backend::Health::Healthy => return Ok(()),
            crate::backend::Health::NotYet(why) => *last_error = why,
        }
        backoff.pause().await;
    }
}

pub(super) struct Actor {
    /// What "ready" means at the end of a wake.
    pub(super) readiness: Check,
    /// Set once reconcile has published what it found (or, for a gateway that does not own
    /// the service, once it has read the owner's status).
    pub(super) reconciled: watch::Sender<bool>,
    pub(super) backend: Box<dyn Backend>,
    pub(super) core: Core,
    pub(super) cancel: CancellationToken,
    /// The backend was found running (at start-up, or by a poll): the next wake only checks
    /// readiness.
    pub(super) adopting: bool,
    /// The next wake reboots the backend in place, waiting this long for it to go down.
    pub(super) rebooting: Option<Duration>,
    /// When the backend's state is read next (see `outside`).
    pub(super) next_poll: Option<Instant>,
}

/// What the main loop does after a phase.
pub(super) enum Flow {
    Continue,
    Exit,
}

impl Actor {
    async fn run(mut self) {
        match self.core.store.cluster() {
            // Shared with other gateways: drive it only while this one owns it.
            Some(cluster) => self.run_shared(cluster).await,
            None => {
                self.drive().await;
                self.shutdown().await;
            }
        }
    }

    /// Reconciles, then drives the backend through its states until cancelled.
    pub(super) async fn drive(&mut self) {
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
    }

    pub(super) fn policy(&mut self) -> &mut Policy {
        &mut self.core.policy
    }

    /// Finds out what really runs and adopts it, then lets [`ServiceHandle::reconciled`]
    /// know (after the transition is published, so a later subscriber never sees it).
    async fn reconcile(&mut self) -> Flow {
        let flow = self.find_what_runs().await;
        // Its event is published first too (unless the store cannot write): whoever starts
        // listening once the gateway is up hears only what follows.
        self.core.store.settled(Duration::from_secs(1)).await;
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
                    Cause::Reconcile,
                );
                return Flow::Continue;
            }
            BackendStatus::Occupied(why) => {
                self.core.transition(
                    State::Failed,
                    format!("wakegate started ({was_text}) and found {why}"),
                    Cause::Reconcile,
                );
                return Flow::Continue;
            }
            BackendStatus::Running => true,
            BackendStatus::Stopped => false,
            BackendStatus::Sleeping(mode) => {
                self.core.fall_asleep(
                    mode,
                    format!("wakegate started and found the backend {mode} ({was_text}); it stays so until a wake resumes it"),
                    Cause::Reconcile,
                );
                return Flow::Continue;
            }
            // Without a way to ask, assume a service that was not asleep still runs: it then
            // gets a fresh idle countdown and is stopped if nobody uses it. Assuming the
            // opposite could leave it running forever.
            BackendStatus::Unknown => recorded.is_some() && was != State::Asleep,
        };
        if running && was == State::Stopping {
            // Killed in the middle of a stop: finish it rather than adopt a server that was
            // on its way down (and call its exit a failure).
            self.core.transition(
                State::Stopping,
                "wakegate started and found the backend still running (was stopping); finishing the stop".into(),
                Cause::Reconcile,
            );
        } else if running {
            self.adopting = true;
            self.core.start_wake(
                Cause::Reconcile,
                format!("wakegate started and found the backend running ({was_text}); checking that it is ready"),
                Cause::Reconcile.into(),
            );
        } else {
            self.core.transition(
                State::Asleep,
                format!("wakegate started and found the backend stopped ({was_text})"),
                Cause::Reconcile,
            );
        }
        Flow::Continue
    }

    /// Asleep or failed: wait for a client, a wake request, a lease or a rule that wakes it
    /// (and retry a failed stop, or an always-on service's failed wake, with backoff).
    async fn resting(&mut self) -> Flow {
        self.next_poll = None;
        loop {
            self.core.expire_leases();
            self.core.check_agent();
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
                let cause = Cause::Client {
                    client: Some(client.to_string()),
                    player: first.player.clone(),
                };
                self.core.start_wake(cause.clone(), reason, cause.into());
                return Flow::Continue;
            }
            if let Some(request) = self.core.wake_request.take() {
                if request.cause != Cause::Restart {
                    // Asked for by someone: the breaker's count starts over.
                    self.policy().breaker.reset();
                }
                let detail = Detail::cause(request.cause.clone());
                self.core.start_wake(request.cause, request.reason, detail);
                return Flow::Continue;
            }
            let now = Now::read();
            let policy = &self.core.policy;
            if let Some((cause, reason)) = policy.wake_by_rule(self.core.state(), now) {
                self.core.start_wake(cause.clone(), reason, cause.into());
                return Flow::Continue;
            }
            let stop_retry = policy.stop_retry.map(|b| b.at);
            let wake_retry = policy.wake_retry.map(|b| b.at);
            let schedule_change = policy.schedule_change(now);
            let poll = self.next_poll(self.core.state());
            let agent_check = self.core.agent_check_at(now.wall);
            let (in_memory, sleep_limit) = (self.sleeps_in_memory(), self.sleep_limit_at());
            tokio::select! {
                () = self.cancel.cancelled() => return Flow::Exit,
                () = sleep_until(agent_check) => {}
                exit = self.backend.exited(), if in_memory => self.exited_in_sleep(exit),
                () = sleep_until(sleep_limit) => {
                    self.sleep_limit_reached();
                    return Flow::Continue;
                }
                () = sleep_until(poll) => if let Some(flow) = self.poll_asleep().await {
                    return flow;
                },
                () = sleep_until(stop_retry) => {
                    self.core.transition(State::Stopping, "retrying the stop that failed".into(), Cause::Retry);
                    return Flow::Continue;
                }
                () = sleep_until(wake_retry) => {
                    self.policy().wake_retry = None;
                    if self.policy().may_restart(Instant::now()) {
                        self.core.start_wake(Cause::Restart, "always_on: trying the wake again".into(), Cause::Restart.into());
                        return Flow::Continue;
                    }
                    let reason = self.core.policy.crash_loop();
                    self.core.transition(State::Failed, reason, Cause::Breaker);
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
        let from = self.core.status.borrow().sleep_mode;
        let wake_timeout = self.core.policy.rules.wake_timeout;
        let deadline = started + wake_timeout;
        let mut last_error = String::new();
        match self.wake_steps(deadline, &mut last_error).await {
            Outcome::Done(Ok(address)) => {
                let took = started.elapsed();
                let resumed = if from.in_memory() && !adopted {
                    format!(" (resumed: it was {from})")
                } else {
                    String::new()
                };
                self.policy().woke(Instant::now());
                if !adopted {
                    self.core.shared.metrics.wake_took(from, took);
                }
                // The address first, so whoever sees `awake` also sees where.
                self.core.status.send_modify(|s| s.address = Some(address));
                self.core.transition(
                    State::Awake,
                    format!("backend ready at {address} after {}{resumed}", round(took)),
                    Fact::Ready {
                        address: address.to_string(),
                        duration_ms: took.as_millis() as u64,
                        adopted,
                        woke_from: from,
                    },
                );
                // This wake is among the recent ones now.
                self.woke(from, took, adopted);
                self.core.answer_all(|shared| Ok(ticket(shared, address)));
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
                    humantime::format_duration(wake_timeout),
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
        if let Some(grace) = self.rebooting.take() {
            match self.reboot(grace, deadline).await {
                Outcome::Done(Ok(())) => {}
                Outcome::Done(Err(e)) => return Outcome::Done(Err(e)),
                Outcome::TimedOut => return Outcome::TimedOut,
                Outcome::Cancelled => return Outcome::Cancelled,
            }
        } else if !std::mem::take(&mut self.adopting) {
            match self
                .core
                .serve_while(
                    write_ahead(self.core.store.clone(), self.backend.start()),
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
        let from = self.core.status.borrow().sleep_mode;
        let readiness = sleep::readiness(&self.readiness, from);
        let waiting_for = match &readiness.probe {
            probe::Probe::Tcp => format!("waiting for {address} to accept connections"),
            probe::Probe::Http { url, .. } => format!(
                "waiting for {url} to answer",
                url = url.replace("{address}", &address)
            ),
            probe::Probe::Minecraft => {
                format!("waiting for {address} to answer a Minecraft status ping")
            }
            probe::Probe::LogLine(p) => format!("waiting for a log line matching `{p}`"),
            probe::Probe::Container => {
                "waiting for the container's HEALTHCHECK to say healthy".into()
            }
            probe::Probe::Udp { .. } => format!("waiting for udp {address} to answer"),
            probe::Probe::Bedrock { .. } => {
                format!("waiting for {address} to answer a Bedrock ping")
            }
        };
        self.core.progress(
            waiting_for,
            Fact::Step {
                step: "probing",
                address: address.clone(),
            }
            .into(),
        );
        let readiness = &readiness;
        let backend = &mut self.backend;
        let ready = async {
            let resolved = probe::resolve(&address)
                .await
                .map_err(BackendError::Other)?;
            if let probe::Probe::Container = readiness.probe {
                return own_health(backend.as_mut(), last_error)
                    .await
                    .map(|()| resolved);
            }
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
            .serve_while(self.backend.stop_for_real(), None, &self.cancel)
            .await;
        self.core.record_notes();
        let mut cleanup_error = None;
        if let Outcome::Done(Err(e)) = &cleanup {
            cleanup_error = Some(e.to_string());
            let retry = self.core.policy.stop_retry;
            self.policy().stop_retry = Some(backoff(retry, Instant::now()));
        }
        let detail = Fact::WakeFailed {
            duration_ms: started.elapsed().as_millis() as u64,
            cleanup_error,
        };
        // Clients and wakes that came during the clean-up share this wake's fate; the next
        // client retries.
        self.core.answer_all(|_| Err(error.clone()));
        self.core.wake_request = None;
        if self.core.policy.rules.always_on {
            let retry = self.core.policy.wake_retry;
            self.policy().wake_retry = Some(backoff(retry, Instant::now()));
        }
        self.core.transition(State::Failed, reason, detail);
    }

    /// Follows the number of open connections: the idle countdown starts (again) whenever it
    /// falls to zero, and stops while a connection is open.
    fn track_idle(&mut self) {
        // Players the backend reports count too: some may have joined without wakegate. So do
        // the figures of the service's agent, while its last report holds.
        let players = self.core.status.borrow().players.unwrap_or(0);
        let unused = self.core.shared.connections.load(Ordering::Acquire) == 0
            && *self.core.remote.borrow() == 0
            && players == 0
            && !self.core.agent_active();
        let idle_since = self.core.policy.track_idle(unused, Now::read());
        self.core
            .status
            .send_if_modified(|s| std::mem::replace(&mut s.idle_since, idle_since) != idle_since);
    }

    /// Why it must stop now, whatever the activity: a request, or a rule.
    fn must_stop(&mut self) -> Option<(String, Cause)> {
        if let Some(reason) = self.core.sleep_request.take() {
            return Some((reason, Cause::Api));
        }
        self.core.policy.must_stop(Now::read())
    }

    /// A min_players check: a warning event, or the reason to stop.
    fn check_players(&mut self) -> Option<String> {
        let connections = self.core.shared.connections.load(Ordering::Acquire) as u32;
        let polled = self.core.status.borrow().players;
        let players = polled
            .or_else(|| self.core.agent_players())
            .unwrap_or(connections);
        match self.policy().check_players(players, Instant::now()) {
            Players::Enough => None,
            Players::Stop(reason) => Some(reason),
            Players::Warn {
                players,
                warning,
                of,
                reason,
            } => {
                let facts = Fact::FewPlayers {
                    players,
                    warning,
                    of,
                };
                self.core.emit(Kind::Warning, reason, facts.into());
                None
            }
        }
    }

    /// Awake: hand out tickets, count use, apply the rules, and stop when they say so.
    async fn awake(&mut self) -> Flow {
        self.next_poll = None;
        loop {
            if let Some(reason) = self.core.restart_request.take() {
                self.restart(reason);
                return Flow::Continue;
            }
            if let Some((reason, cause)) = self.must_stop() {
                self.core.transition(State::Stopping, reason, cause);
                return Flow::Continue;
            }
            self.core.expire_leases();
            self.core.check_agent();
            self.track_idle();
            let now = Now::read();
            let stop_at = self.core.policy.stop_at(self.core.leased_until(), now);
            let deadline = stop_at.map(|at| now.wall_of(at.max(now.instant)));
            self.core.status.send_if_modified(|s| {
                std::mem::replace(&mut s.idle_deadline, deadline) != deadline
            });
            let next_expiry = self
                .core
                .next_expiry()
                .map(|e| now.instant + e.duration_since(now.wall).unwrap_or_default());
            let policy = &self.core.policy;
            let schedule_change = policy.schedule_change(now);
            let runtime_end = policy.runtime_end();
            let runtime_warning = policy.runtime_warning_at();
            let player_check = policy.player_check_at;
            let poll = self.next_poll(State::Awake);
            let agent_check = self.core.agent_check_at(now.wall);
            tokio::select! {
                () = self.cancel.cancelled() => return Flow::Exit,
                // The agent's last report runs out: its figures no longer count.
                () = sleep_until(agent_check) => {}
                () = sleep_until(poll) => if let Some(flow) = self.poll_awake().await {
                    return flow;
                },
                command = self.core.commands.recv() => match command {
                    Some(command) => self.core.handle(command),
                    None => return Flow::Exit,
                },
                () = self.core.shared.closed.notified() => {
                    // The countdown starts from this close, not from an earlier idle moment.
                    self.policy().idle_since = None;
                }
                // Clients through other gateways sharing the store (see `owner`).
                Ok(()) = self.core.remote.changed() => {
                    if *self.core.remote.borrow() == 0 {
                        self.policy().idle_since = None;
                    }
                }
                () = sleep_until(next_expiry) => {}
                () = sleep_until(schedule_change) => {}
                () = sleep_until(runtime_end) => {}
                () = sleep_until(runtime_warning) => {
                    let (left, reason) = self.policy().runtime_warning(Instant::now());
                    let facts = Fact::StopsIn { stops_in_ms: left.as_millis() as u64 };
                    self.core.emit(Kind::Warning, reason, facts.into());
                }
                () = sleep_until(player_check) => {
                    if let Some(reason) = self.check_players() {
                        self.core.transition(State::Stopping, reason, Cause::MinPlayers);
                        return Flow::Continue;
                    }
                }
                exit = self.backend.exited() => {
                    self.crashed(exit);
                    return Flow::Continue;
                }
                () = sleep_until(stop_at) => {
                    // The gate shut first, then the count read: a client that took a ticket
                    // on its own since the last look keeps the service awake.
                    self.core.shared.set_gate(None);
                    let here = self.core.shared.connections.load(Ordering::SeqCst) > 0;
                    if here || self.core.in_use_elsewhere().await {
                        if !here {
                            // The countdown starts again from now (the count heard was late).
                            self.policy().idle_since = None;
                        }
                        self.core.shared.set_gate(self.core.address());
                        continue;
                    }
                    let idle = self.core.policy.idle_since.map(|s| s.elapsed()).unwrap_or_default();
                    self.core.transition(
                        State::Stopping,
                        format!("no connection for {}", round(idle)),
                        Cause::Idle { idle_ms: idle.as_millis() as u64 },
                    );
                    return Flow::Continue;
                }
            }
        }
    }

    /// Stopping: stop the backend; clients that arrive meanwhile wake it again afterwards.
    async fn stopping(&mut self) -> Flow {
        // The agent's pre-stop command (a world save) first, if it has one.
        if !self.core.pre_stop(&self.cancel).await {
            return Flow::Exit;
        }
        let started = Instant::now();
        let stop = sleep::stop(&mut self.backend, self.core.sleep.for_real);
        let result = match self
            .core
            .serve_while(
                write_ahead(self.core.store.clone(), stop),
                None,
                &self.cancel,
            )
            .await
        {
            Outcome::Done(result) => result,
            _ => return Flow::Exit,
        };
        self.core.record_notes();
        match result {
            Ok(mode) => {
                self.policy().stop_retry = None;
                match self.policy().fail_after_stop.take() {
                    Some(reason) => {
                        self.core.wake_request = None;
                        self.core.transition(State::Failed, reason, Cause::Breaker);
                    }
                    None => self.stopped(mode, started),
                }
            }
            Err(e) => {
                self.core.shared.metrics.failure(Failure::Stop);
                let reason = format!("the stop failed: {e}");
                self.core
                    .answer_all(|_| Err(ConnectError::WakeFailed(reason.clone())));
                let retry = self.core.policy.stop_retry;
                self.policy().stop_retry = Some(backoff(retry, Instant::now()));
                self.core.transition(State::Failed, reason, Cause::Stop);
            }
        }
        Flow::Continue
    }

    /// wakegate is shutting down: release held clients and let the backend decide. A service
    /// that ends for good (stopped already) has its backend remove what is left instead.
    pub(super) async fn shutdown(&mut self) {
        self.core.answer_all(|_| Err(ConnectError::ShuttingDown));
        if self.core.shared.detaching.load(Ordering::SeqCst) {
            info!("The service left wakegate; its backend is left as it is.");
            return;
        }
        if self.core.shared.retiring.load(Ordering::SeqCst) {
            let removed = self.backend.remove().await;
            self.core.record_notes();
            if let Err(e) = removed {
                warn!(error = %e, "Could not remove what the ended service left beside its server.");
            }
            return;
        }
        let stopped = self.backend.shutdown().await;
        self.core.record_notes();
        match stopped {
            Ok(true) => self.core.transition(
                State::Asleep,
                "wakegate shut down and stopped the backend".into(),
                Cause::Shutdown,
            ),
            Ok(false) => info!("wakegate shut down; the backend keeps its state."),
            Err(e) => error!(error = %e, "Could not stop the backend while shutting down."),
        }
    }
}
