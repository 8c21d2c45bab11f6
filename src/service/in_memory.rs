//! The actor while its server sleeps in memory (paused or frozen, see `sleep`): its exit is
//! watched (a server killed in its sleep starts cold next time), and once it has slept the
//! backend's limit (`freeze_for`) it is stopped for real. A stop for real is also what a
//! restart, the crash-loop breaker and the clean-up of a failed wake ask for: pausing a server
//! that must restart would restart nothing. Each stop and wake records the mode it leaves or
//! undoes, which the status, the events and the expected wake time follow.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::actor::Actor;
use super::policy::round;
use crate::backend::{Exit, SleepMode};
use crate::event::{Cause, Fact, Kind, State};

impl Actor {
    /// Asleep and paused or frozen: the server still exists, and its exit is watched.
    pub(super) fn sleeps_in_memory(&self) -> bool {
        let status = self.core.status.borrow();
        status.state == State::Asleep && status.sleep_mode.in_memory()
    }

    /// When a server sleeping in memory is stopped for real: after the backend's sleep limit.
    pub(super) fn sleep_limit_at(&self) -> Option<Instant> {
        if !self.sleeps_in_memory() {
            return None;
        }
        Some(self.core.sleep.since + self.backend.sleep_limit()?)
    }

    /// The sleep limit is reached: the server is resumed and stopped for real.
    pub(super) fn sleep_limit_reached(&mut self) {
        let slept = self.core.sleep.since.elapsed();
        let mode = self.core.status.borrow().sleep_mode;
        self.core.sleep.for_real = true;
        self.core.transition(
            State::Stopping,
            format!(
                "{mode} for {}, its limit: stopping it for real (it starts cold next time)",
                round(slept)
            ),
            Cause::SleepLimit {
                slept_ms: slept.as_millis() as u64,
            },
        );
    }

    /// The server ended in its sleep (killed while frozen, a paused container removed): it
    /// stays asleep, and the next wake starts it cold.
    pub(super) fn exited_in_sleep(&mut self, exit: Exit) {
        let mode = self.core.status.borrow().sleep_mode;
        let reason = format!(
            "the {mode} server exited in its sleep ({}); the next wake starts it cold",
            exit.status
        );
        warn!("{reason}.");
        let expected = self.core.sleep.expected(SleepMode::Stopped);
        let facts = Fact::Exit {
            exit: exit.status,
            log_tail: exit.log_tail,
        };
        self.core.change(
            |s| {
                s.sleep_mode = SleepMode::Stopped;
                s.expected_boot = expected;
            },
            Kind::Warning,
            reason,
            facts.into(),
        );
    }

    /// A stop succeeded `started` ago, and the server sleeps `mode`.
    pub(super) fn stopped(&mut self, mode: SleepMode, started: Instant) {
        let took = started.elapsed();
        let done = match mode {
            SleepMode::Stopped => "stopped",
            SleepMode::Paused => "paused",
            SleepMode::Frozen => "frozen",
        };
        self.core.sleep.for_real = false;
        self.core.fall_asleep(
            mode,
            format!("backend {done} after {}", round(took)),
            Fact::Took {
                duration_ms: took.as_millis() as u64,
                sleep_mode: mode,
            },
        );
    }

    /// A wake from `from` took `took` (counted unless the server was adopted); the service
    /// now expects its next wake from the mode its backend will sleep in.
    pub(super) fn woke(&mut self, from: SleepMode, took: Duration, adopted: bool) {
        if !adopted {
            self.core.sleep.booted(from, took);
        }
        let next = self.backend.sleep_mode();
        let expected = self.core.sleep.expected(next);
        self.core.status.send_if_modified(|s| {
            let changed = s.sleep_mode != next || s.expected_boot != expected;
            s.sleep_mode = next;
            s.expected_boot = expected;
            changed
        });
    }
}
