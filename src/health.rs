//! Health checks: one task per `[[service.health]]` entry that probes the backend while the
//! service is awake and tells the actor after `tolerance` failures in a row. The actor decides
//! what that means (restart within the crash-loop breaker, a warning, or a sleep). Started by
//! the app beside each service's actor: this module drives the handle, never the reverse.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::event::{Kind, State};
use crate::probe;
use crate::service::ServiceHandle;
use crate::service::config::{self, Health};

/// Starts everything that watches an awake service on `tracker`: its health checks, and the
/// player poll of a service behind a `minecraft` or `bedrock` listener.
pub fn spawn_for(
    config: &config::Service,
    service: &ServiceHandle,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    spawn(&config.health, service, tracker, cancel);
    if let Some((every, probe)) = config.player_poll() {
        spawn_player_poll(
            every,
            probe,
            config.proxy_protocol(),
            service,
            tracker,
            cancel,
        );
    }
}

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
/// (first right after the wake), and tells the actor: players count as activity. `probe` is
/// a Java status ping or a Bedrock unconnected ping. With `proxy`, each Java ping starts with
/// a PROXY v2 LOCAL header, for a server that requires one.
pub fn spawn_player_poll(
    every: Duration,
    probe: probe::Probe,
    proxy: bool,
    service: &ServiceHandle,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let check = crate::probe::Check {
        probe,
        timeout: Duration::from_secs(5),
        proxy_header: proxy,
    };
    let (service, cancel) = (service.clone(), cancel.clone());
    tracker.spawn(async move {
        let mut status = service.watch();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                awake = status.wait_for(|s| s.state == State::Awake) => if awake.is_err() { return },
            }
            // Who was on at the last poll; empty at each wake, so the first poll names
            // everyone already on as joined.
            let mut known: Option<BTreeSet<String>> = Some(BTreeSet::new());
            while let Some(address) = service.status().address {
                match probe::run(&check, address, None).await {
                    Ok(answer) => {
                        if let Some(players) = answer.players
                            && service.report_players(players).await.is_err()
                        {
                            return;
                        }
                        if note_joins(&service, &mut known, &answer).await.is_err() {
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

/// Records the players who joined or left since the last poll, when the status sample names
/// everyone online (servers show only a random dozen of a larger crowd: then nobody is
/// compared, rather than reporting players who merely dropped out of the sample).
async fn note_joins(
    service: &ServiceHandle,
    known: &mut Option<BTreeSet<String>>,
    answer: &probe::Answer,
) -> Result<(), crate::service::Gone> {
    let names: Option<BTreeSet<String>> = match (&answer.sample, answer.players) {
        (Some(sample), Some(online)) if sample.len() == online as usize => {
            Some(sample.iter().cloned().collect())
        }
        _ => None,
    };
    if let (Some(before), Some(now)) = (known.as_ref(), names.as_ref()) {
        let online = now.len();
        for name in now.difference(before) {
            let detail = json!({ "player": name, "players": online });
            service
                .note(Kind::Player, format!("player {name} joined"), detail)
                .await?;
        }
        for name in before.difference(now) {
            let detail = json!({ "player": name, "players": online });
            service
                .note(Kind::Player, format!("player {name} left"), detail)
                .await?;
        }
    }
    *known = names;
    Ok(())
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
