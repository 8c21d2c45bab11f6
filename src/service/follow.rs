//! A gateway that does not own a shared service still serves its clients: it mirrors the
//! owner's status (state, since, the backend's address, the leases in force, a pre-stop) from
//! the database, read again on each notification and every third of the lease. A client
//! arriving while it is not awake is held as usual, and the wake is asked of the owner through
//! the database; once the mirror says awake, the first client is counted in the database under
//! the lock on the service's row before it is let through (`Cluster::admit`), and the gate
//! opens at the backend's address for the next ones as on a lone gateway's, until the last
//! connection closes: so an owner deciding an idle stop either sees this gateway's client or
//! this gateway sees it stopping. The held clients get the owner's reason if the wake fails
//! after they came. Keep-awake leases taken or ended here are written to the database and
//! the owner told; the agent's reports and pre-stop results that reach this gateway are passed
//! on to the owner. Its open connections are written for the owner's idle rule whenever they
//! change, and renewed with the lease. Meanwhile it tries to take the service every third of
//! the lease, and at once when the owner releases it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::actor::Actor;
use super::agent::ReportAck;
use super::core::{Core, sleep_until};
use super::gate::ticket;
use super::policy::Now;
use super::{Command, ConnectError, Denied};
use crate::event::{Cause, State};
use crate::store::{Cluster, Mirror, Signal};

/// Follows the owner until this gateway takes the service (the instant its successful claim
/// was sent) or wakegate shuts down (`None`).
pub(super) async fn follow(
    actor: &mut Actor,
    cluster: &Cluster,
    root: &CancellationToken,
) -> Option<Instant> {
    let Actor {
        core, reconciled, ..
    } = actor;
    let mut f = Follower {
        name: core.name.clone(),
        core,
        cluster,
        owner: None,
        mirror: None,
        gate: None,
        published: None,
    };
    let tick = cluster.lease() / 3;
    let mut signals = cluster.subscribe();
    let mut next_claim = Instant::now();
    let mut refresh = false;
    // Since when clients are held (monotonic, and wall time to compare with the mirror's).
    let mut held_since: Option<(Instant, SystemTime)> = None;
    let mut asked_at: Option<Instant> = None;
    let mut failing = false;
    loop {
        if refresh {
            refresh = false;
            f.refresh(held_since.map(|(_, wall)| wall)).await;
            let _ = reconciled.send(true);
        }
        if !f.core.waiters.is_empty()
            && f.awake_at().is_some()
            && let Some(address) = f.admit().await
        {
            f.core.answer_all(|shared| Ok(ticket(shared, address)));
        }
        f.publish_connections().await;
        f.core.waiters.retain(|w| !w.reply.is_closed());
        let held_deadline = match f.core.waiters.first() {
            None => {
                held_since = None;
                asked_at = None;
                None
            }
            Some(first) => {
                let by = format!("client {}", first.client);
                let (since, _) = *held_since.get_or_insert((Instant::now(), SystemTime::now()));
                // As long as a wake may take, and a failover before it.
                let patience = f.core.wake_timeout + cluster.lease();
                let deadline = since + patience;
                let state = f.mirror.as_ref().and_then(|m| m.state);
                if Instant::now() >= deadline {
                    let why = format!(
                        "no gateway woke the service within {} (wake_timeout and a lease time)",
                        humantime::format_duration(patience)
                    );
                    f.core
                        .answer_all(|_| Err(ConnectError::WakeFailed(why.clone())));
                    held_since = None;
                    None
                } else {
                    let waking = matches!(state, Some(State::Waking | State::Awake));
                    if !waking && asked_at.is_none_or(|at| at.elapsed() >= tick) {
                        asked_at = Some(Instant::now());
                        if let Err(e) = cluster.ask_wake(&f.name, &by, false).await {
                            warn!(error = %e, "Cannot ask the owner to wake the service.");
                        }
                    }
                    Some(deadline)
                }
            }
        };
        tokio::select! {
            biased;
            () = root.cancelled() => return None,
            () = sleep_until(Some(next_claim)) => {
                let sent = Instant::now();
                next_claim = sent + tick;
                match cluster.claim(&f.name).await {
                    Ok(claim) if claim.mine => {
                        f.set_gate(None);
                        return Some(sent);
                    }
                    Ok(claim) => {
                        if f.owner.as_deref() != Some(claim.owner.as_str()) {
                            info!(owner = %claim.owner, "Another gateway owns the service; following its status.");
                            let who = Some(claim.owner.clone());
                            f.core.status.send_if_modified(|s| std::mem::replace(&mut s.owner, who.clone()) != who);
                        }
                        f.owner = Some(claim.owner);
                        failing = false;
                        refresh = true;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "Cannot ask the store who owns the service; trying again.");
                        }
                        failing = true;
                        let _ = reconciled.send(true);
                    }
                }
            }
            signal = signals.recv() => match signal {
                Err(_) | Ok(Signal::Resync) => refresh = true,
                Ok(Signal::Status { s } | Signal::Leases { s, .. }) if s == f.name => refresh = true,
                Ok(Signal::Released { s }) if s == f.name => next_claim = Instant::now(),
                Ok(_) => {}
            },
            command = f.core.commands.recv() => match command {
                Some(command) => refresh |= f.handle(command).await,
                None => return None,
            },
            () = f.core.shared.opened.notified() => {}
            () = f.core.shared.closed.notified() => {}
            () = sleep_until(held_deadline) => {}
        }
    }
}

/// What the following actor keeps between turns.
struct Follower<'a> {
    core: &'a mut Core,
    cluster: &'a Cluster,
    name: String,
    /// The gateway that owns the service, as the last claim said.
    owner: Option<String>,
    /// The owner's status, as last read.
    mirror: Option<Mirror>,
    /// Where the gate is open: only while this gateway's clients are counted in the database
    /// (see [`Follower::admit`]).
    gate: Option<SocketAddr>,
    /// The count of open connections last written to the database.
    published: Option<usize>,
}

impl Follower<'_> {
    /// The backend's address while the owner has it awake.
    fn awake_at(&self) -> Option<SocketAddr> {
        let mirror = self.mirror.as_ref()?;
        (mirror.state == Some(State::Awake))
            .then_some(mirror.address)
            .flatten()
    }

    fn set_gate(&mut self, address: Option<SocketAddr>) {
        self.gate = address;
        self.core.shared.set_gate(address);
    }

    /// Reads the owner's status and the leases in force again, and makes them this gateway's.
    async fn refresh(&mut self, held_since: Option<SystemTime>) {
        match self.cluster.mirror(&self.name).await {
            Ok(m) => {
                apply(self.core, m.as_ref(), held_since);
                self.mirror = m;
            }
            Err(e) => warn!(error = %e, "Cannot read the owner's status of the service."),
        }
        if self.awake_at().is_none() {
            self.set_gate(None);
        }
        match self.cluster.active_leases(&self.name).await {
            Ok(leases) => {
                self.core.status.send_if_modified(|s| {
                    std::mem::replace(&mut s.leases, leases.clone()) != leases
                });
            }
            Err(e) => warn!(error = %e, "Cannot read the service's leases."),
        }
    }

    /// Counts a first client in the database, under the lock the owner's idle stop takes, and
    /// opens the gate; `None` (the clients wait) when the owner no longer has it awake.
    async fn admit(&mut self) -> Option<SocketAddr> {
        if let Some(address) = self.gate {
            return Some(address);
        }
        match self.cluster.admit(&self.name).await {
            Ok(Some(address)) => {
                self.set_gate(Some(address));
                // Written as 1; the real count follows.
                self.published = None;
                Some(address)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "Cannot count a client with the other gateways; it waits.");
                None
            }
        }
    }

    /// Writes this gateway's open connections whenever they change. When the last one has
    /// closed, the gate shuts before 0 is written, so a client that takes a ticket meanwhile
    /// is still counted; the next first client is admitted again.
    async fn publish_connections(&mut self) {
        let shared = self.core.shared.clone();
        let mut count = shared.connections.load(Ordering::SeqCst);
        if count == 0
            && let Some(address) = self.gate
        {
            self.set_gate(None);
            count = shared.connections.load(Ordering::SeqCst);
            if count > 0 {
                self.set_gate(Some(address));
            }
        }
        if self.published != Some(count) {
            self.published = self
                .cluster
                .set_connections(&self.name, count)
                .await
                .ok()
                .map(|()| count);
        }
    }

    /// A request to a service this gateway follows: tickets at the mirrored address, wakes,
    /// sleeps, leases and the agent's word passed on to the owner; the backend itself is left
    /// alone. True when the mirror should be read again.
    async fn handle(&mut self, command: Command) -> bool {
        let (core, cluster, name) = (&mut *self.core, self.cluster, self.name.clone());
        let state = core.state();
        match command {
            Command::Connect {
                client,
                player,
                reply,
            } => {
                if self.awake_at().is_some()
                    && let Some(address) = self.admit().await
                {
                    let _ = reply.send(Ok(ticket(&self.core.shared, address)));
                    return false;
                }
                self.core.hold(client, player, state, reply);
                return true;
            }
            Command::Wake { by, cause, reply } => {
                if let Err(e) = cluster.ask_wake(&name, &by, cause == Cause::Api).await {
                    warn!(error = %e, "Cannot ask the owner to wake the service.");
                }
                let _ = reply.send(Ok(state));
            }
            Command::Sleep { by, reply } => {
                if let Err(e) = cluster.ask_sleep(&name, &by).await {
                    warn!(error = %e, "Cannot ask the owner to put the service to sleep.");
                }
                let _ = reply.send(Ok(state));
            }
            Command::AddLease {
                duration,
                reason,
                by,
                reply,
            } => {
                if let Some(why) = core.policy.asleep_by_schedule(Now::read()) {
                    let _ = reply.send(Err(Denied::Schedule(why)));
                    return false;
                }
                // In the database first, where the owner (this one or the next) reads it.
                let lease = match core.store.add_lease(&name, &reason, &by, duration).await {
                    Ok(lease) => lease,
                    Err(e) => {
                        let _ = reply.send(Err(Denied::Store(e.to_string())));
                        return false;
                    }
                };
                if let Err(e) = cluster.leases_changed(&name, &by).await {
                    warn!(error = %e, "Cannot tell the owner of the new lease; it reads the leases again within a third of the lease time.");
                }
                let _ = reply.send(Ok(lease));
                return true;
            }
            Command::EndLease { id, by, reply } => {
                let ended = match cluster.end_lease(&name, id, &by).await {
                    Ok(ended) => ended,
                    Err(e) => {
                        warn!(error = %e, "Cannot end the lease in the database.");
                        false
                    }
                };
                let _ = reply.send(ended);
                return ended;
            }
            Command::AgentReport {
                report,
                valid_for,
                reply,
            } => {
                let valid_for = valid_for.min(core.agent.rules.max_valid_for);
                if let Err(e) = cluster.forward_report(&name, report, valid_for).await {
                    warn!(error = %e, "Cannot pass the agent's report on to the owner.");
                }
                let _ = reply.send(ReportAck {
                    valid_until: SystemTime::now() + valid_for,
                    pre_stop: core.status.borrow().pre_stop.clone(),
                });
            }
            Command::PreStopDone { id, result, reply } => {
                let waited = core
                    .status
                    .borrow()
                    .pre_stop
                    .as_ref()
                    .is_some_and(|p| p.id == id);
                if waited && let Err(e) = cluster.forward_pre_stop(&name, id, result).await {
                    warn!(error = %e, "Cannot pass the pre-stop's result on to the owner.");
                }
                let _ = reply.send(waited);
            }
            Command::LeaseAdded { lease, reply, .. } => drop(reply.send(Ok(lease))),
            // The owner polls the players and runs the health checks that count.
            Command::Players(_) | Command::Unhealthy { .. } => {}
            // The new rules are kept for when this gateway takes the service.
            command @ (Command::Configure { .. } | Command::Note { .. }) => core.handle(command),
        }
        false
    }
}

/// Makes the status what the owner published; answers the held clients with the owner's
/// reason once a wake that ended after they came has failed.
fn apply(core: &mut Core, mirror: Option<&Mirror>, held_since: Option<SystemTime>) {
    let Some(mirror) = mirror else {
        return;
    };
    let state = mirror.state.unwrap_or_else(|| core.state());
    let address = (state == State::Awake).then_some(mirror.address).flatten();
    core.status.send_if_modified(|s| {
        let before = s.clone();
        s.state = state;
        if let Some(since) = mirror.since {
            s.since = since;
        }
        s.address = address;
        s.last_error = mirror.last_error.clone();
        s.pre_stop = mirror.pre_stop.clone();
        if state != State::Awake {
            s.idle_since = None;
            s.idle_deadline = None;
            s.players = None;
        }
        *s != before
    });
    if state == State::Failed
        && let (Some(held), Some(since)) = (held_since, mirror.since)
        && since >= held
    {
        let why = mirror
            .last_error
            .clone()
            .unwrap_or_else(|| format!("gateway {} could not wake it", mirror.owner));
        core.answer_all(|_| Err(ConnectError::WakeFailed(why.clone())));
    }
}
