//! What is done to a server outside wakegate, and a restart in place. A backend that can be
//! changed behind wakegate's back (an EC2 instance stopped from the console) has its state
//! read every `state_poll` while awake: found stopped, the service is asleep (or, always on,
//! started again within the breaker); found at a new address, the gate follows it. With
//! `state_poll_asleep`, a server found running while asleep is adopted, so it sleeps again
//! after its idle timeout instead of running unnoticed. Nothing is fought: wakegate never
//! stops what was started outside it while it is in use, nor starts what was stopped outside
//! it unless the service is always on.
//!
//! A backend that reboots in place (EC2 `restart = "reboot"`) is rebooted for a health
//! check's restart; the wake then waits (up to its grace) for the server to go down before it
//! waits for it to be ready, so the old server's last answers do not count.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::actor::{Actor, Flow};
use super::core::Outcome;
use crate::backend::{BackendError, SleepMode, Status};
use crate::event::{Cause, Kind, State};
use crate::probe;

/// How often a rebooting server is probed to see it go down.
const DOWN_CHECK: Duration = Duration::from_millis(250);

impl Actor {
    /// When the next poll of the backend's state is due in `state` (none: never).
    pub(super) fn next_poll(&mut self, state: State) -> Option<Instant> {
        let poll = self.backend.state_poll();
        let every = match state {
            State::Awake => poll.awake,
            State::Asleep => poll.asleep,
            _ => None,
        }?;
        Some(*self.next_poll.get_or_insert_with(|| Instant::now() + every))
    }

    /// Reads the backend's state while awake; what changed outside wakegate changes the
    /// service. `Some` when it left the awake state.
    pub(super) async fn poll_awake(&mut self) -> Option<Flow> {
        self.next_poll = None;
        let status = match self
            .core
            .serve_while(self.backend.status(), None, &self.cancel)
            .await
        {
            Outcome::Done(status) => status,
            _ => return Some(Flow::Exit),
        };
        match status {
            Err(e) => {
                warn!(error = %e, "Cannot read the backend's state; trying again at the next poll.");
                None
            }
            Ok(found @ (Status::Stopped | Status::Sleeping(_))) => {
                let mode = match found {
                    Status::Sleeping(mode) => mode,
                    _ => SleepMode::Stopped,
                };
                let reason =
                    format!("found {mode} outside wakegate (from a console, or by the provider)");
                info!("{reason}.");
                let always_on = self.core.policy.rules.always_on;
                if always_on && self.core.policy.may_restart(Instant::now()) {
                    self.core.start_wake(
                        Cause::Outside,
                        format!("{reason}; starting it again (always_on)"),
                        Cause::Outside.into(),
                    );
                } else if always_on {
                    let reason = format!("{reason}; {}", self.core.policy.crash_loop());
                    self.core.transition(State::Failed, reason, Cause::Outside);
                } else {
                    self.core.fall_asleep(mode, reason, Cause::Outside);
                }
                Some(Flow::Continue)
            }
            Ok(Status::Gone(why)) => {
                self.core.transition(
                    State::Failed,
                    format!("found gone outside wakegate: {why}"),
                    Cause::Outside,
                );
                Some(Flow::Continue)
            }
            Ok(_) => {
                self.follow_address().await;
                None
            }
        }
    }

    /// A server stopped and started again between two polls has a new address: the gate and
    /// the status follow it.
    async fn follow_address(&mut self) {
        let found = match self
            .core
            .serve_while(self.backend.address(), None, &self.cancel)
            .await
        {
            Outcome::Done(Ok(address)) => address,
            _ => return,
        };
        let Ok(resolved) = probe::resolve(&found).await else {
            return;
        };
        let Some(old) = self.core.address() else {
            return;
        };
        if resolved == old {
            return;
        }
        self.core.status.send_modify(|s| s.address = Some(resolved));
        self.core.shared.set_gate(Some(resolved));
        self.core.emit(
            Kind::Progress,
            format!(
                "found at a new address {resolved} (was {old}): restarted outside wakegate; new clients go there"
            ),
            Cause::Outside.into(),
        );
    }

    /// Reads the backend's state while asleep; a server found running is adopted. `Some` when
    /// it left the asleep state.
    pub(super) async fn poll_asleep(&mut self) -> Option<Flow> {
        self.next_poll = None;
        let status = match self
            .core
            .serve_while(self.backend.status(), None, &self.cancel)
            .await
        {
            Outcome::Done(status) => status,
            _ => return Some(Flow::Exit),
        };
        match status {
            Ok(Status::Running) => {
                self.adopting = true;
                self.core.start_wake(
                    Cause::Outside,
                    "found running outside wakegate (started from a console?); adopting it: it sleeps again once idle".into(),
                    Cause::Outside.into(),
                );
                Some(Flow::Continue)
            }
            Ok(found @ (Status::Stopped | Status::Sleeping(_))) => {
                let mode = match found {
                    Status::Sleeping(mode) => mode,
                    _ => SleepMode::Stopped,
                };
                let was = self.core.status.borrow().sleep_mode;
                if mode != was && self.core.state() == State::Asleep {
                    let reason = format!("found {mode} outside wakegate (it was {was})");
                    self.core.fall_asleep(mode, reason, Cause::Outside);
                }
                None
            }
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "Cannot read the backend's state; trying again at the next poll.");
                None
            }
        }
    }

    /// Reboots the backend in place, then waits (at most `grace`) for its server to stop
    /// answering the readiness check, so that readiness is the rebooted server's.
    pub(super) async fn reboot(
        &mut self,
        grace: Duration,
        deadline: Instant,
    ) -> Outcome<Result<(), BackendError>> {
        match self
            .core
            .serve_while(self.backend.reboot(), Some(deadline), &self.cancel)
            .await
        {
            Outcome::Done(Ok(())) => {}
            other => return other,
        }
        let address = match self
            .core
            .serve_while(self.backend.address(), Some(deadline), &self.cancel)
            .await
        {
            Outcome::Done(Ok(address)) => address,
            Outcome::Done(Err(e)) => return Outcome::Done(Err(e)),
            Outcome::TimedOut => return Outcome::TimedOut,
            Outcome::Cancelled => return Outcome::Cancelled,
        };
        self.core.progress(
            format!(
                "waiting up to {} for {address} to go down for the reboot",
                humantime::format_duration(grace)
            ),
            crate::event::Fact::Step {
                step: "rebooting",
                address: address.clone(),
            }
            .into(),
        );
        let readiness = &self.readiness;
        let down = async {
            let Ok(resolved) = probe::resolve(&address).await else {
                return;
            };
            while probe::run(readiness, resolved, None).await.is_ok() {
                tokio::time::sleep(DOWN_CHECK).await;
            }
        };
        let waited = tokio::time::timeout(grace, down);
        match self
            .core
            .serve_while(waited, Some(deadline), &self.cancel)
            .await
        {
            Outcome::Done(_) => Outcome::Done(Ok(())),
            Outcome::TimedOut => Outcome::TimedOut,
            Outcome::Cancelled => Outcome::Cancelled,
        }
    }
}
