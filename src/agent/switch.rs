//! The dead man's switch as a plain function: when the agent may stop its own host. It fires
//! only once the gateway has not answered for `dead_man` (counted from the first exchange that
//! failed) *and* nothing has used the host for `idle_timeout`; after a try, not again before
//! another `dead_man` (a shutdown command that did not take the host down is not run in a loop).

use std::time::Duration;

use tokio::time::Instant;

/// The switch's settings.
#[derive(Debug, Clone, Copy)]
pub struct Switch {
    pub dead_man: Duration,
    pub idle_timeout: Duration,
}

impl Switch {
    /// When it fires if nothing changes; never while the gateway answers or the host is used.
    pub fn due(
        &self,
        failing_since: Option<Instant>,
        idle_since: Option<Instant>,
        tried_at: Option<Instant>,
    ) -> Option<Instant> {
        let unreachable = failing_since? + self.dead_man;
        let idle = idle_since? + self.idle_timeout;
        let again = tried_at.map(|t| t + self.dead_man);
        Some(unreachable.max(idle).max(again.unwrap_or(unreachable)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_waits_for_both_the_gateway_and_the_idle_time() {
        let t0 = Instant::now();
        let s = |n: u64| Duration::from_secs(n);
        let switch = Switch {
            dead_man: s(600),
            idle_timeout: s(300),
        };
        // The gateway answers, or the host is in use: never.
        assert_eq!(switch.due(None, Some(t0), None), None);
        assert_eq!(switch.due(Some(t0), None, None), None);
        // Idle for long, gateway gone since t0: dead_man after t0, not before.
        assert_eq!(
            switch.due(Some(t0 + s(1000)), Some(t0), None),
            Some(t0 + s(1600))
        );
        // Gateway gone for long, idle only since t0: idle_timeout after t0.
        assert_eq!(
            switch.due(Some(t0), Some(t0 + s(1000)), None),
            Some(t0 + s(1300))
        );
        // Tried at t0 + 1300 and the host still runs: again after another dead_man.
        assert_eq!(
            switch.due(Some(t0), Some(t0 + s(1000)), Some(t0 + s(1300))),
            Some(t0 + s(1900))
        );
    }
}
