//! A notification target when several gateways share the store: each target is delivered by
//! one gateway at a time, the one holding its lease (`notify:NAME`, the same leases as
//! services'). The holder reads the target's stored cursor when it takes the lease and delivers
//! from there; if it cannot renew the lease in time it stops delivering, so two gateways never
//! send the same event at once. An event delivered just before its owner died, whose cursor
//! was not yet stored, is sent again by the next holder, with the same id for the receiver to
//! drop (as after a restart of a lone gateway).

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Target;
use super::http::Endpoint;
use super::outbox::Outbox;
use crate::event::Published;
use crate::store::{Cluster, Mirror, Signal, Store};

/// Waits for the target's lease, delivers while it holds it, and waits again, until `cancel`.
pub(super) async fn take_turns(
    cluster: Arc<Cluster>,
    target: Target,
    endpoint: Endpoint,
    store: Arc<Store>,
    events: broadcast::Sender<Published>,
    cancel: CancellationToken,
) {
    let key = format!("notify:{}", target.name);
    let lease = cluster.lease();
    let mut signals = cluster.subscribe();
    loop {
        // Wait for the lease: try every third of it, and at once when its holder lets go.
        let claimed_at = loop {
            let sent = Instant::now();
            if let Ok(claim) = cluster.claim(&key).await
                && claim.mine
            {
                break sent;
            }
            let released = async {
                loop {
                    match signals.recv().await {
                        Ok(Signal::Released { s }) if s == key => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                        _ => {}
                    }
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(lease / 3) => {}
                () = released => {}
            }
        };
        let name = target.name.clone();
        let cursor = match store.read(move |s| s.notify_cursor(&name)).await {
            Ok(cursor) => cursor,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "Cannot read the target's cursor; trying again.");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(lease / 3) => continue,
                }
            }
        };
        info!(gateway = cluster.id(), after = cursor, "This gateway delivers the target's notifications now.");
        let term = cancel.child_token();
        let outbox = Outbox::new(
            target.clone(),
            endpoint.clone(),
            store.clone(),
            events.clone(),
            cursor,
            term.clone(),
        );
        tokio::join!(outbox.run(), renew(&cluster, &key, claimed_at, &term));
        if cancel.is_cancelled() {
            let released = Mirror {
                owner: cluster.id().to_string(),
                state: None,
                since: None,
                address: None,
                last_error: None,
            };
            let _ = cluster.release(&key, released).await;
            return;
        }
        warn!("This gateway lost the target's lease; another delivers it now.");
    }
}

/// Renews the lease every third of it; cancels `term` when it cannot before it runs out (by
/// this gateway's clock, counted from before each renewal was sent) or another holds it.
async fn renew(cluster: &Cluster, key: &str, claimed_at: Instant, term: &CancellationToken) {
    let lease = cluster.lease();
    let mut valid_until = claimed_at + lease;
    let mut renew_at = claimed_at + lease / 3;
    loop {
        tokio::select! {
            () = term.cancelled() => return,
            () = tokio::time::sleep_until(renew_at) => {}
        }
        let sent = Instant::now();
        match tokio::time::timeout_at(valid_until, cluster.claim(key)).await {
            Ok(Ok(claim)) if claim.mine => {
                valid_until = sent + lease;
                renew_at = sent + lease / 3;
            }
            Ok(Err(_)) if Instant::now() < valid_until => {
                renew_at = Instant::now() + lease / 10;
            }
            _ => {
                term.cancel();
                return;
            }
        }
    }
}
