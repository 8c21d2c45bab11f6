//! A gateway that does not own a shared service still serves its clients: it mirrors the
//! owner's status (state, since, the backend's address) from the database, read again on each
//! notification and every third of the lease; while the mirror says awake, its gate is open at
//! that address and clients take tickets there as from a lone gateway's. A client arriving
//! while it is not awake is held as usual, and the wake is asked of the owner through the
//! database; the held clients get their tickets once the mirror says awake, or the owner's
//! reason if the wake fails after they came. Its open connections are written for the owner's
//! idle rule at once when the first opens or the last closes, and renewed with the lease.
//! Meanwhile it tries to take the service every third of the lease, and at once when the
//! owner releases it.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::actor::Actor;
use super::core::{Core, sleep_until};
use super::gate::ticket;
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
    let name = core.name.clone();
    let tick = cluster.lease() / 3;
    let mut signals = cluster.subscribe();
    let mut next_claim = Instant::now();
    let mut owner: Option<String> = None;
    let mut mirror: Option<Mirror> = None;
    let mut refresh = false;
    let mut published: Option<usize> = None;
    // Since when clients are held (monotonic, and wall time to compare with the mirror's).
    let mut held_since: Option<(Instant, SystemTime)> = None;
    let mut asked_at: Option<Instant> = None;
    let mut failing = false;
    loop {
        if refresh {
            refresh = false;
            match cluster.mirror(&name).await {
                Ok(m) => {
                    apply(core, m.as_ref(), held_since.map(|(_, wall)| wall));
                    mirror = m;
                }
                Err(e) => warn!(error = %e, "Cannot read the owner's status of the service."),
            }
            let _ = reconciled.send(true);
        }
        let count = core.shared.connections.load(Ordering::Acquire);
        if published != Some(count) {
            published = cluster
                .set_connections(&name, count)
                .await
                .ok()
                .map(|()| count);
        }
        core.waiters.retain(|w| !w.reply.is_closed());
        let held_deadline = match core.waiters.first() {
            None => {
                held_since = None;
                asked_at = None;
                None
            }
            Some(first) => {
                let by = format!("client {}", first.client);
                let (since, _) = *held_since.get_or_insert((Instant::now(), SystemTime::now()));
                // As long as a wake may take, and a failover before it.
                let deadline = since + core.wake_timeout + cluster.lease();
                let state = mirror.as_ref().and_then(|m| m.state);
                if Instant::now() >= deadline {
                    let why = format!(
                        "no gateway woke the service within {} (wake_timeout and a lease time)",
                        humantime::format_duration(core.wake_timeout + cluster.lease())
                    );
                    core.answer_all(|_| Err(ConnectError::WakeFailed(why.clone())));
                    held_since = None;
                    None
                } else {
                    let waking = matches!(state, Some(State::Waking | State::Awake));
                    if !waking && asked_at.is_none_or(|at| at.elapsed() >= tick) {
                        asked_at = Some(Instant::now());
                        if let Err(e) = cluster.ask_wake(&name, &by, false).await {
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
                match cluster.claim(&name).await {
                    Ok(claim) if claim.mine => return Some(sent),
                    Ok(claim) => {
                        if owner.as_deref() != Some(claim.owner.as_str()) {
                            info!(owner = %claim.owner, "Another gateway owns the service; following its status.");
                            let who = Some(claim.owner.clone());
                            core.status.send_if_modified(|s| std::mem::replace(&mut s.owner, who.clone()) != who);
                        }
                        owner = Some(claim.owner);
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
                Ok(Signal::Status { s }) if s == name => refresh = true,
                Ok(Signal::Released { s }) if s == name => next_claim = Instant::now(),
                Ok(_) => {}
            },
            command = core.commands.recv() => match command {
                Some(command) => handle(core, cluster, owner.as_deref(), command).await,
                None => return None,
            },
            () = core.shared.opened.notified() => {}
            () = core.shared.closed.notified() => {}
            () = sleep_until(held_deadline) => {}
        }
    }
}

/// Makes the status, and the gate, what the owner published; answers the held clients once
/// it is awake, or once a wake that ended after they came has failed.
fn apply(core: &mut Core, mirror: Option<&Mirror>, held_since: Option<SystemTime>) {
    let Some(mirror) = mirror else {
        return;
    };
    let state = mirror.state.unwrap_or_else(|| core.state());
    let gate = (state == State::Awake).then_some(mirror.address).flatten();
    core.shared.set_gate(gate);
    core.status.send_if_modified(|s| {
        let before = s.clone();
        s.state = state;
        if let Some(since) = mirror.since {
            s.since = since;
        }
        s.address = gate;
        s.last_error = mirror.last_error.clone();
        if state != State::Awake {
            s.idle_since = None;
            s.idle_deadline = None;
            s.players = None;
        }
        *s != before
    });
    if let Some(address) = gate {
        core.answer_all(|shared| Ok(ticket(shared, address)));
    } else if state == State::Failed
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

/// A request to a service this gateway follows: tickets at the mirrored address, wakes and
/// sleeps passed on to the owner; the backend itself is left alone.
async fn handle(core: &mut Core, cluster: &Cluster, owner: Option<&str>, command: Command) {
    let state = core.state();
    let name = core.name.clone();
    match command {
        Command::Connect {
            client,
            player,
            reply,
        } => match (state, core.address()) {
            (State::Awake, Some(address)) => {
                let _ = reply.send(Ok(ticket(&core.shared, address)));
            }
            _ => core.hold(client, player, state, reply),
        },
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
        Command::AddLease { reply, .. } => {
            let owner = owner.unwrap_or("another gateway");
            let _ = reply.send(Err(Denied::Rule(format!(
                "gateway {owner} drives this service: take the lease through its API"
            ))));
        }
        Command::LeaseAdded { lease, reply, .. } => drop(reply.send(Ok(lease))),
        Command::EndLease { reply, .. } => drop(reply.send(false)),
        // The owner polls the players and runs the health checks that count.
        Command::Players(_) | Command::Unhealthy { .. } => {}
        // The new rules are kept for when this gateway takes the service.
        command @ (Command::AgentReport { .. }
        | Command::PreStopDone { .. }
        | Command::Configure { .. }
        | Command::Note { .. }) => core.handle(command),
    }
}
