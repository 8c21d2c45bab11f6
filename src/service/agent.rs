//! What the service keeps of its agent (`wakegate agent` on the server): the last report, in
//! the status, whose figures count as activity until the report's `valid_for` runs out (so a
//! dead agent cannot keep a server up), and the pre-stop a stop waits for. The actor's handling
//! of reports and pre-stops is in `agent_link.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::agent::config::ServiceAgent;
use crate::agent::wire::{PreStopRequest, PreStopResult};
use crate::event::Fact;

/// The longest host name kept from a report.
pub(super) const MAX_HOST: usize = 64;

/// What the service's agent last reported.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentStatus {
    pub host: String,
    /// When the gateway received the report.
    pub at: SystemTime,
    pub connections: Option<u32>,
    pub players: Option<u32>,
    pub count: Option<u64>,
    /// Its figures count until then.
    pub valid_until: SystemTime,
    /// It has a pre-stop command.
    pub pre_stop: bool,
    /// It signed off (it was shutting down): its figures no longer count.
    pub leaving: bool,
    /// No report came before `valid_until`.
    pub silent: bool,
}

impl AgentStatus {
    /// Whether it still reports: neither signed off nor silent.
    pub fn reporting(&self, now: SystemTime) -> bool {
        !self.leaving && !self.silent && now < self.valid_until
    }

    /// Whether its figures keep the service awake at `now`.
    pub fn active(&self, now: SystemTime) -> bool {
        self.reporting(now)
            && (self.connections.unwrap_or(0) > 0
                || self.players.unwrap_or(0) > 0
                || self.count.unwrap_or(0) > 0)
    }

    /// Its figures in words: "3 connections, 2 players".
    pub fn figures(&self) -> String {
        let mut parts = Vec::new();
        let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        if let Some(n) = self.connections {
            parts.push(plural(n.into(), "connection"));
        }
        if let Some(n) = self.players {
            parts.push(plural(n.into(), "player"));
        }
        if let Some(n) = self.count {
            parts.push(format!("count {n}"));
        }
        if parts.is_empty() {
            "nothing measured".into()
        } else {
            parts.join(", ")
        }
    }

    pub(super) fn fact(&self) -> Fact {
        Fact::Agent {
            host: self.host.clone(),
            connections: self.connections,
            players: self.players,
            count: self.count,
        }
    }
}

/// The answer to a report: until when its figures count, and a pre-stop waiting for the agent.
#[derive(Debug, Clone)]
pub struct ReportAck {
    pub valid_until: SystemTime,
    pub pre_stop: Option<PreStopRequest>,
}

/// What the actor keeps of its agent beside the status.
#[derive(Debug, Default)]
pub(super) struct AgentLink {
    pub(super) rules: ServiceAgent,
    /// The pre-stop being waited for: its id, and where its result goes.
    pub(super) waiting: Option<(u64, oneshot::Sender<PreStopResult>)>,
    last_id: u64,
}

impl AgentLink {
    pub(super) fn new(rules: ServiceAgent) -> AgentLink {
        AgentLink {
            rules,
            ..AgentLink::default()
        }
    }

    /// A request id that never repeats, even across restarts of wakegate: the time in ms.
    pub(super) fn next_id(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_id = now.max(self.last_id + 1);
        self.last_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn figures_count_only_while_the_agent_reports() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = |n| Duration::from_secs(n);
        let mut agent = AgentStatus {
            host: "mc".into(),
            at: t0,
            connections: Some(2),
            players: None,
            count: None,
            valid_until: t0 + s(90),
            pre_stop: false,
            leaving: false,
            silent: false,
        };
        assert!(agent.active(t0 + s(89)));
        // A report that ran out counts no more: a dead agent cannot keep a server up.
        assert!(!agent.active(t0 + s(90)));
        assert!(!agent.reporting(t0 + s(90)));
        assert_eq!(agent.figures(), "2 connections");
        agent.connections = Some(0);
        agent.players = Some(1);
        assert!(agent.active(t0));
        agent.players = Some(0);
        assert!(!agent.active(t0) && agent.reporting(t0));
        agent.players = Some(3);
        agent.leaving = true;
        assert!(!agent.active(t0) && !agent.reporting(t0));
    }
}
