//! How a service sleeps: stopped, paused or frozen, as its backend says
//! ([`Backend::sleep_mode`]). A paused or frozen server keeps its memory and a wake resumes it
//! in milliseconds, so its wake times are kept apart from cold starts: the expected wake time
//! (the ETA) is the median of the recent wakes from the mode the next wake undoes. Here: that
//! history, the stop call (for real, or the way the backend sleeps), and what readiness means
//! after a resume. What the actor does while the server sleeps in memory is `in_memory`.

use std::borrow::Cow;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, BackendError, SleepMode};
use crate::probe::{Check, Probe};
use crate::store::Store;

/// How many recent wakes (of each sleep mode) the expected wake time is the median of.
pub(super) const RECENT_BOOTS: usize = 10;

/// What the actor keeps of its service's sleep.
#[derive(Debug)]
pub(super) struct Sleep {
    /// How long the recent wakes from each mode took, oldest first (by [`SleepMode::index`]).
    boots: [Vec<u64>; 3],
    /// When it last fell asleep (or failed): the sleep limit counts from here.
    pub(super) since: Instant,
    /// The next stop is for real, whatever the sleep mode: a restart, or the breaker.
    pub(super) for_real: bool,
}

impl Sleep {
    /// The recent wakes of `service` from each mode, as stored.
    pub(super) fn load(store: &Store, service: &str) -> Sleep {
        Sleep {
            boots: SleepMode::ALL.map(|mode| {
                store
                    .boot_durations(service, mode, RECENT_BOOTS)
                    .unwrap_or_default()
            }),
            since: Instant::now(),
            for_real: false,
        }
    }

    /// How long a wake from `mode` is expected to take; none before the first.
    pub(super) fn expected(&self, mode: SleepMode) -> Option<Duration> {
        median(&self.boots[mode.index()]).map(Duration::from_millis)
    }

    /// Counts a wake from `mode` among the recent ones.
    pub(super) fn booted(&mut self, mode: SleepMode, took: Duration) {
        let boots = &mut self.boots[mode.index()];
        boots.push(took.as_millis() as u64);
        let extra = boots.len().saturating_sub(RECENT_BOOTS);
        boots.drain(..extra);
    }
}

/// The median of some values (the upper one of an even count); none of nothing.
pub(super) fn median(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

/// The median of the service's recent wakes from `mode`, as stored.
#[cfg(test)]
pub(super) fn expected_boot(store: &Store, service: &str, mode: SleepMode) -> Option<Duration> {
    let durations = store.boot_durations(service, mode, RECENT_BOOTS).ok()?;
    median(&durations).map(Duration::from_millis)
}

/// Stops the backend, for real or the way it sleeps; returns how it sleeps now.
pub(super) async fn stop(
    backend: &mut Box<dyn Backend>,
    for_real: bool,
) -> Result<SleepMode, BackendError> {
    if for_real {
        backend.stop_for_real().await?;
        Ok(SleepMode::Stopped)
    } else {
        backend.stop().await?;
        Ok(backend.sleep_mode())
    }
}

/// What tells that a wake from `from` is done. A log line was written once, at the cold
/// start: a resumed server writes it no more, so its readiness is that its address accepts a
/// connection again. Other checks (HTTP, a Minecraft status ping) ask the server itself and
/// stay as they are.
pub(super) fn readiness(check: &Check, from: SleepMode) -> Cow<'_, Check> {
    match check.probe {
        Probe::LogLine(_) if from.in_memory() => Cow::Owned(Check {
            probe: Probe::Tcp,
            ..check.clone()
        }),
        _ => Cow::Borrowed(check),
    }
}
