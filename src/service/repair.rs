//! What the actor does when its server needs repair while awake: a restart asked for by a
//! failing health check, and a crash noticed by the backend, both within the crash-loop
//! breaker.

use tokio::time::Instant;

use super::actor::Actor;
use super::core::Request;
use crate::backend::BackendError;
use crate::event::{Cause, Detail, Fact, State};
use crate::metrics::Failure;

impl Actor {
    /// A restart asked for by a failing health check: within the breaker's limits, a stop
    /// followed by a wake; beyond them, a stop for good.
    pub(super) fn restart(&mut self, reason: String) {
        if let Some(grace) = self.backend.reboots()
            && self.policy().may_restart(Instant::now())
        {
            self.rebooting = Some(grace);
            self.core.start_wake(
                Cause::Restart,
                format!("rebooting: {reason}"),
                Cause::Health.into(),
            );
            return;
        }
        // A restart or a stop for good stops it for real: pausing it would restart nothing.
        self.core.sleep.for_real = true;
        if self.policy().may_restart(Instant::now()) {
            self.core.wake_request = Some(Request {
                cause: Cause::Restart,
                reason: format!("restarting: {reason}"),
            });
            self.core.transition(
                State::Stopping,
                format!("restarting: {reason}"),
                Cause::Health,
            );
        } else {
            self.policy().fail_after_stop = Some(self.core.policy.crash_loop());
            self.core.transition(
                State::Stopping,
                format!("stopping for good: {reason}"),
                Cause::Breaker,
            );
        }
    }

    /// The backend went away on its own while awake: an always-on service restarts within the
    /// breaker's limits; anything else is failed.
    pub(super) fn crashed(&mut self, exit: crate::backend::Exit) {
        self.core.shared.metrics.failure(Failure::Crash);
        let reason = BackendError::Exited { exit: exit.clone() }.to_string();
        let detail = Detail::fact(Fact::Exit {
            exit: exit.status,
            log_tail: exit.log_tail,
        });
        let always_on = self.core.policy.rules.always_on;
        if always_on && self.policy().may_restart(Instant::now()) {
            self.core.start_wake(
                Cause::Restart,
                format!("restarting after a crash: {reason}"),
                detail,
            );
        } else if always_on {
            let reason = format!(
                "{}; it last crashed: {reason}",
                self.core.policy.crash_loop()
            );
            self.core.transition(State::Failed, reason, detail);
        } else {
            self.core.transition(
                State::Failed,
                format!("the backend stopped on its own while awake: {reason}"),
                detail,
            );
        }
    }
}
