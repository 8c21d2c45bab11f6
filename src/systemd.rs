//! systemd's service notifications, for a unit of `Type=notify` (deploy/wakegate.service):
//! READY once every socket is bound, RELOADING … READY around a reload, STOPPING when a
//! shutdown begins, and the watchdog's
//! keep-alive when the unit sets `WatchdogSec=`. Outside systemd (no `NOTIFY_SOCKET`) each is
//! a no-op, so `wakegate run` behaves the same in a terminal, a container or a test.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{info, warn};

/// Tells systemd the gateway is serving: every listener, the API and the agents' socket bound.
pub fn ready(services: usize) {
    let status = format!("Serving {services} service(s).");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells systemd a reload has begun (`RELOADING=1` with the monotonic time, as
/// `Type=notify-reload` needs); [`ready`] again says it is over.
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("Reloading the config."),
    ];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tells systemd a shutdown has begun (connections draining, services stopping), so it waits
/// for the exit rather than reading the silence as a hang.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("Stopping: draining connections."),
    ]);
}

/// The watchdog's keep-alive when the unit asks for one (`WatchdogSec=`): a `WATCHDOG=1` at half
/// the interval, for as long as it is polled, so a runtime that stops making progress stops
/// sending it and systemd restarts the gateway. Never resolves; pending forever when the unit
/// sets no watchdog.
pub async fn watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return std::future::pending().await;
    };
    info!(interval = %humantime::format_duration(interval), "systemd watchdog enabled: a keep-alive at half the interval.");
    let mut ticks = tokio::time::interval((interval / 2).max(Duration::from_millis(1)));
    loop {
        ticks.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        // The notification socket is systemd's; a failure is worth a line, never a stop.
        warn!(error = %e, "Cannot notify systemd.");
    }
}
