//! What the agent and the gateway say to each other, as JSON: the report the agent posts, the
//! answers, and the pre-stop request and its result. Both sides read these types, so they
//! cannot drift apart. Unknown keys are ignored, so an agent and a gateway of different
//! versions still understand each other.

use serde::{Deserialize, Serialize};

/// `POST /api/v1/services/{name}/report`: what the agent measured on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The host's name, for events and the status.
    pub host: String,
    /// Established TCP connections on the agent's `ports` (none without ports).
    #[serde(default)]
    pub connections: Option<u32>,
    /// Minecraft players online, from a status ping (none without `minecraft`, or when the
    /// server did not answer).
    #[serde(default)]
    pub players: Option<u32>,
    /// What the agent's `count_command` printed (none without one, or when it failed).
    #[serde(default)]
    pub count: Option<u64>,
    /// How long these figures hold without a new report, e.g. "1m 30s": the agent says 3 ×
    /// its `report_interval`; the gateway bounds it by `[service.agent] max_valid_for`.
    pub valid_for: String,
    /// The agent has a `pre_stop` command to run before the gateway stops the service.
    #[serde(default)]
    pub pre_stop: bool,
    /// The agent is shutting down: its figures no longer count.
    #[serde(default)]
    pub leaving: bool,
}

impl Report {
    /// Whether the figures show any use of the host.
    pub fn active(&self) -> bool {
        self.connections.unwrap_or(0) > 0
            || self.players.unwrap_or(0) > 0
            || self.count.unwrap_or(0) > 0
    }
}

/// A pre-stop the gateway asks for: run `pre_stop` now, and answer within `timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreStopRequest {
    /// Unique across restarts of the gateway (milliseconds since the epoch when asked).
    pub id: u64,
    /// How long the gateway waits for the answer, e.g. "1m"; the agent stops the command then.
    pub timeout: String,
}

/// The answer to a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// Until when the gateway counts these figures (RFC 3339).
    pub valid_until: String,
    /// A pre-stop the gateway waits for, if any.
    #[serde(default)]
    pub pre_stop: Option<PreStopRequest>,
}

/// `POST /api/v1/services/{name}/agent/wait`: the agent waits for a pre-stop other than the
/// one it already has (`seen`), so a pre-stop under way is not handed out again and again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRequest {
    #[serde(default)]
    pub seen: Option<u64>,
}

/// The answer to a wait: a pre-stop as soon as one is asked for, or none after the hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitAnswer {
    #[serde(default)]
    pub pre_stop: Option<PreStopRequest>,
}

/// `POST /api/v1/services/{name}/agent/pre-stop/{id}`: how the pre-stop command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreStopResult {
    /// It exited 0.
    pub ok: bool,
    /// How it ended, in words: "exit code 0", "killed after the timeout (1m)".
    pub exit: String,
    pub duration_ms: u64,
    /// The last lines of its output.
    #[serde(default)]
    pub output: String,
}
