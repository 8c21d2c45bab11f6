//! A service shared by several gateways through a PostgreSQL store: the actor follows the
//! owner's status (`follow`) until it can take the service, then drives it exactly as a lone
//! gateway does (reconcile first) for as long as it holds its lease. A task beside it renews
//! the lease every third of its time, publishes each status change for the others, hands on
//! what they ask (a wake, a sleep) and keeps the count of their clients. If the lease cannot be
//! renewed before it runs out, by this gateway's own clock (which never runs past the
//! database's expiry: the expiry is counted from before the renewal was sent), the actor stops
//! driving at once, touching nothing more, and goes back to following.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::actor::Actor;
use super::follow;
use super::{Command, Status};
use crate::event::{Cause, State};
use crate::store::{Cluster, Mirror, Signal};

impl Actor {
    /// Follows, owns, drives, and follows again, until wakegate shuts down; a gateway that
    /// shuts down owning the service shuts it down as a lone gateway would (the backend's
    /// `on_shutdown`), then releases it so another takes it at once.
    pub(super) async fn run_shared(&mut self, cluster: Arc<Cluster>) {
        let root = self.cancel.clone();
        loop {
            let Some(claimed_at) = follow::follow(self, &cluster, &root).await else {
                self.core
                    .answer_all(|_| Err(super::ConnectError::ShuttingDown));
                return;
            };
            info!(
                gateway = cluster.id(),
                "This gateway owns the service now; reconciling it."
            );
            // Reconcile goes by what the last owner recorded, not by the mirror.
            let name = self.core.name.clone();
            let recorded = self.core.store.read(move |s| s.service(&name)).await;
            // So do the leases: some may have been taken through another gateway.
            let leases = cluster.active_leases(&self.core.name).await;
            self.core.status.send_modify(|s| {
                s.owner = Some(cluster.id().to_string());
                if let Ok(Some(record)) = recorded {
                    s.state = record.state;
                    s.since = record.since;
                }
                if let Ok(leases) = leases {
                    s.leases = leases;
                }
            });
            let term = root.child_token();
            let (remote_tx, remote) = watch::channel(0);
            self.core.remote = remote;
            self.cancel = term.clone();
            self.core.tracker.spawn(keep(
                cluster.clone(),
                self.core.name.clone(),
                claimed_at,
                term.clone(),
                self.core.status.subscribe(),
                remote_tx,
                self.core.myself.clone(),
            ));
            self.drive().await;
            term.cancel();
            self.cancel = root.clone();
            self.core.remote = watch::channel(0).1;
            if root.is_cancelled() {
                self.shutdown().await;
                let last = mirror_of(&self.core.status.borrow(), cluster.id());
                match cluster.release(&self.core.name, last).await {
                    Ok(_) => info!("Released the service for the other gateways."),
                    Err(e) => {
                        warn!(error = %e, "Could not release the service; another gateway takes it once the lease expires.")
                    }
                }
                return;
            }
            warn!(
                gateway = cluster.id(),
                "This gateway lost its lease on the service; it no longer drives it (the backend is left as it is)."
            );
            self.adopting = false;
            self.rebooting = None;
            self.core.wake_request = None;
            self.core.sleep_request = None;
            self.core.restart_request = None;
        }
    }
}

/// The owner's status as the others mirror it.
pub(super) fn mirror_of(status: &Status, owner: &str) -> Mirror {
    Mirror {
        owner: owner.to_string(),
        state: Some(status.state),
        since: Some(status.since),
        address: (status.state == State::Awake)
            .then_some(status.address)
            .flatten(),
        last_error: status.last_error.clone(),
        pre_stop: status.pre_stop.clone(),
    }
}

/// While this gateway owns the service: renews the lease (cancelling `term` when it cannot in
/// time, or finds another owner), publishes the status on every change, hands the others'
/// wakes and sleeps to the actor, and keeps `remote` at their open connections.
async fn keep(
    cluster: Arc<Cluster>,
    name: String,
    claimed_at: Instant,
    term: CancellationToken,
    mut status: watch::Receiver<Status>,
    remote: watch::Sender<u64>,
    actor: mpsc::WeakSender<Command>,
) {
    let lease = cluster.lease();
    let mut valid_until = claimed_at + lease;
    let mut renew_at = claimed_at + lease / 3;
    let mut signals = cluster.subscribe();
    let mut publish = true;
    let mut published: Option<Mirror> = None;
    let mut leases = Leases::default();
    loop {
        if publish {
            leases.seen(&status.borrow());
            let now = mirror_of(&status.borrow_and_update(), cluster.id());
            if published.as_ref() != Some(&now) {
                match tokio::time::timeout_at(valid_until, cluster.publish(&name, now.clone()))
                    .await
                {
                    Ok(Ok(true)) => published = Some(now),
                    Ok(Ok(false)) => {
                        warn!("Another gateway holds the service; stopping driving it.");
                        term.cancel();
                        return;
                    }
                    // Published again at the next renewal.
                    Ok(Err(_)) | Err(_) => published = None,
                }
            }
            publish = false;
        }
        tokio::select! {
            () = term.cancelled() => return,
            () = tokio::time::sleep_until(valid_until) => {
                warn!(lease = ?lease, "Could not renew the lease on the service in time.");
                term.cancel();
                return;
            }
            () = tokio::time::sleep_until(renew_at) => {
                let sent = Instant::now();
                match tokio::time::timeout_at(valid_until, cluster.claim(&name)).await {
                    Ok(Ok(claim)) if claim.mine => {
                        valid_until = sent + lease;
                        renew_at = sent + lease / 3;
                        count_others(&cluster, &name, &remote).await;
                        leases.sync(&cluster, &name, &status, &actor, "another gateway", "an API client").await;
                        // Written again even if unchanged: an idle stop's check may have
                        // left `stopping` there and then not stopped (see `in_use_elsewhere`).
                        published = None;
                        publish = true;
                    }
                    Ok(Ok(claim)) => {
                        warn!(owner = %claim.owner, "Another gateway took the service.");
                        term.cancel();
                        return;
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "Could not renew the lease on the service; trying again.");
                        renew_at = Instant::now() + (lease / 10).max(Duration::from_millis(100));
                    }
                    Err(_) => {}
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                publish = true;
            }
            signal = signals.recv() => match signal {
                // Missed some: read the counts again and publish the status anew.
                Err(_) | Ok(Signal::Resync) => {
                    count_others(&cluster, &name, &remote).await;
                    leases.sync(&cluster, &name, &status, &actor, "another gateway", "an API client").await;
                    published = None;
                    publish = true;
                }
                Ok(Signal::Leases { s, g, by }) if s == name && g != cluster.id() => {
                    let via = format!("gateway {g}");
                    leases.sync(&cluster, &name, &status, &actor, &via, &by).await;
                }
                Ok(signal) if signal.service() == Some(name.as_str()) => {
                    ask(&actor, &cluster, &name, &remote, signal).await;
                }
                Ok(_) => {}
            },
        }
    }
}

/// What another gateway asked of the owner.
async fn ask(
    actor: &mpsc::WeakSender<Command>,
    cluster: &Cluster,
    name: &str,
    remote: &watch::Sender<u64>,
    signal: Signal,
) {
    let command = match signal {
        Signal::Wake { g, by, api, .. } if g != cluster.id() => Command::Wake {
            by: format!("{by} through gateway {g}"),
            cause: if api { Cause::Api } else { Cause::client() },
            reply: oneshot::channel().0,
        },
        Signal::Sleep { g, by, .. } if g != cluster.id() => Command::Sleep {
            by: format!("{by} through gateway {g}"),
            reply: oneshot::channel().0,
        },
        Signal::Counts { g, .. } if g != cluster.id() => {
            count_others(cluster, name, remote).await;
            return;
        }
        Signal::Report {
            g,
            report,
            valid_for_ms,
            ..
        } if g != cluster.id() => Command::AgentReport {
            report,
            valid_for: Duration::from_millis(valid_for_ms),
            reply: oneshot::channel().0,
        },
        Signal::PreStopDone { g, id, result, .. } if g != cluster.id() => Command::PreStopDone {
            id,
            result,
            reply: oneshot::channel().0,
        },
        _ => return,
    };
    if let Some(actor) = actor.upgrade() {
        let _ = actor.send(command).await;
    }
}

/// Reads the other gateways' open connections; unchanged when the database does not answer
/// (the idle stop asks it again anyway).
async fn count_others(cluster: &Cluster, name: &str, remote: &watch::Sender<u64>) {
    let read = cluster.others_connections(name);
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), read).await {
        remote.send_if_modified(|r| std::mem::replace(r, n) != n);
    }
}

/// The keep-awake leases the owner knows of, to take in those another gateway wrote to the
/// database and drop those it ended there (the notification is a hint: they are compared on
/// every renewal too).
#[derive(Default)]
struct Leases {
    /// Every lease this owner's status has held: one that left it (ended or expired here) is
    /// never taken in again, even if the database has not yet recorded its end.
    known: HashSet<i64>,
}

impl Leases {
    fn seen(&mut self, status: &Status) {
        self.known.extend(status.leases.iter().map(|l| l.id));
    }

    /// Compares the leases in force in the database with the status's, and tells the actor
    /// of each difference: taken by their holder through `via`, ended by `ended_by` through
    /// `via`, as far as this gateway knows.
    async fn sync(
        &mut self,
        cluster: &Cluster,
        name: &str,
        status: &watch::Receiver<Status>,
        actor: &mpsc::WeakSender<Command>,
        via: &str,
        ended_by: &str,
    ) {
        let Ok(stored) = cluster.active_leases(name).await else {
            return;
        };
        let mut commands = Vec::new();
        {
            let status = status.borrow();
            self.seen(&status);
            let now = SystemTime::now();
            for lease in stored.iter().filter(|l| !self.known.contains(&l.id)) {
                commands.push(Command::LeaseAdded {
                    lease: lease.clone(),
                    duration: lease
                        .expires
                        .duration_since(lease.created)
                        .unwrap_or_default(),
                    by: format!("{} through {via}", lease.by),
                    reply: oneshot::channel().0,
                });
            }
            // Ended elsewhere (one that merely expired ends here, with its own event).
            for lease in &status.leases {
                if lease.expires > now + Duration::from_secs(1)
                    && !stored.iter().any(|l| l.id == lease.id)
                {
                    commands.push(Command::EndLease {
                        id: lease.id,
                        by: format!("{ended_by} through {via}"),
                        reply: oneshot::channel().0,
                    });
                }
            }
        }
        for command in commands {
            if let Command::LeaseAdded { lease, .. } = &command {
                self.known.insert(lease.id);
            }
            if let Some(actor) = actor.upgrade() {
                let _ = actor.send(command).await;
            }
        }
    }
}
