//! A notification target when several gateways share the store: each target is delivered by
//! one gateway at a time, the one holding its lease (`notify:NAME`, the same leases as
//! services'). The holder reads the target's stored cursor when it takes the lease and delivers
//! from there; if it cannot renew the lease in time it stops delivering, so two gateways never
//! send the same event at once. An event delivered just before its owner died, whose cursor
//! was not yet stored, is sent again by the next holder, with the same id for the receiver to
//! drop (as after a restart of a lone gateway).

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{Cluster, Mirror, Signal};

/// Waits until this gateway holds the lease `key`: tries every third of the lease time, and at
/// once when its holder lets go; `None` when `cancel` fires first. The instant is when the
/// successful claim was sent (the lease runs from no earlier).
pub(super) async fn wait_turn(
    cluster: &Cluster,
    key: &str,
    cancel: &CancellationToken,
) -> Option<Instant> {
    let mut signals = cluster.subscribe();
    loop {
        let sent = Instant::now();
        if let Ok(claim) = cluster.claim(key).await
            && claim.mine
        {
            return Some(sent);
        }
        let released = async {
            loop {
                match signals.recv().await {
                    Ok(Signal::Released { s }) if s == key => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                    _ => {}
                }
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(cluster.lease() / 3) => {}
            () = released => {}
        }
    }
}

/// Lets go of the lease `key` (a clean shutdown), so another gateway takes it at once.
pub(super) async fn release(cluster: &Cluster, key: &str) {
    let released = Mirror {
        owner: cluster.id().to_string(),
        state: None,
        since: None,
        address: None,
        last_error: None,
        pre_stop: None,
    };
    let _ = cluster.release(key, released).await;
}

/// Renews the lease every third of it; cancels `term` when it cannot before it runs out (by
/// this gateway's clock, counted from before each renewal was sent) or another holds it.
pub(super) async fn renew(
    cluster: &Cluster,
    key: &str,
    claimed_at: Instant,
    term: &CancellationToken,
) {
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
