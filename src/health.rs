//! Health checks: one task per `[[service.health]]` entry that probes the backend while the
//! service is awake and tells the actor after `tolerance` failures in a row. The actor decides
//! what that means (restart within the crash-loop breaker, a warning, or a sleep).

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use std::time::Duration;

use crate::config::Health;
use crate::event::State;
use crate::probe;
use crate::service::ServiceHandle;

/// Starts the checks of a service on `tracker`.
pub fn spawn(
    checks: &[Health],
    service: &ServiceHandle,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    for check in checks {
        tracker.spawn(run(check.clone(), service.clone(), cancel.clone()));
    }
}

/// Asks the backend of an awake Minecraft service how many players are on, every `every`
/// (first right after the wake), and tells the actor: players count as activity.
pub fn spawn_player_poll(
    every: Duration,
    service: &ServiceHandle,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let check = crate::probe::Check {
        probe: crate::probe::Probe::Minecraft,
        timeout: Duration::from_secs(5),
    };
    let (service, cancel) = (service.clone(), cancel.clone());
    tracker.spawn(async move {
        let mut status = service.watch();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                awake = status.wait_for(|s| s.state == State::Awake) => if awake.is_err() { return },
            }
            while let Some(address) = service.status().address {
                match probe::run(&check, address, None).await {
                    Ok(answer) => {
                        if let Some(players) = answer.players
                            && service.report_players(players).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => debug!(service = service.name(), error = %e, "Cannot count the players."),
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                    left = status.wait_for(|s| s.state != State::Awake) => {
                        if left.is_err() { return }
                        break;
                    }
                }
            }
        }
    });
}

async fn run(check: Health, service: ServiceHandle, cancel: CancellationToken) {
    let mut status = service.watch();
    loop {
        // Only an awake service is checked; counting starts afresh with each wake.
        tokio::select! {
            () = cancel.cancelled() => return,
            awake = status.wait_for(|s| s.state == State::Awake) => if awake.is_err() { return },
        }
        let mut failures = 0;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(check.interval) => {}
                left = status.wait_for(|s| s.state != State::Awake) => {
                    if left.is_err() { return }
                    break;
                }
            }
            let Some(address) = service.status().address else {
                break;
            };
            match probe::run(&check.check, address, None).await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    debug!(service = service.name(), failures, error = %e, "Health check failed.");
                    if failures >= check.tolerance {
                        let reason = format!("health check failed {failures} times in a row: {e}");
                        if service.unhealthy(check.action, reason).await.is_err() {
                            return;
                        }
                        failures = 0;
                    }
                }
            }
        }
    }
}
