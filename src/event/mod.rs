//! Events: every transition and notable step of a service, stored durably with an increasing id
//! and published live. [`cause`] types why an event happened, [`feed`] delivers them in order.

pub mod cause;
pub mod feed;
pub mod published;

pub use cause::{Cause, Detail, Fact, Trigger};
pub use published::Published;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize, Serializer};

/// The name the gateway's own events (a config reload) are recorded under, beside those of
/// the services.
pub const GATEWAY: &str = "wakegate";

/// The lifecycle state of a service (`asleep → waking → awake → stopping → asleep`, or `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Asleep,
    Waking,
    Awake,
    Stopping,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Asleep => "asleep",
            State::Waking => "waking",
            State::Awake => "awake",
            State::Stopping => "stopping",
            State::Failed => "failed",
        }
    }

    /// The state as said of a service: "is awake", "has failed".
    pub fn phrase(self) -> &'static str {
        match self {
            State::Asleep => "is asleep",
            State::Waking => "is waking",
            State::Awake => "is awake",
            State::Stopping => "is stopping",
            State::Failed => "has failed",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        [
            State::Asleep,
            State::Waking,
            State::Awake,
            State::Stopping,
            State::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a sleeping server sleeps: what a wake has to undo. It qualifies `asleep` on the wire
/// (`sleep_mode` in the API, a label of the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SleepMode {
    /// Stopped for real: a wake is a cold start.
    #[default]
    Stopped,
    /// A container paused (`docker pause`, the cgroup freezer): it keeps its memory.
    Paused,
    /// A process stopped with SIGSTOP: it keeps its memory.
    Frozen,
}

impl SleepMode {
    pub const ALL: [SleepMode; 3] = [SleepMode::Stopped, SleepMode::Paused, SleepMode::Frozen];

    pub fn as_str(self) -> &'static str {
        match self {
            SleepMode::Stopped => "stopped",
            SleepMode::Paused => "paused",
            SleepMode::Frozen => "frozen",
        }
    }

    /// Whether the server keeps its memory (paused or frozen): a wake resumes it.
    pub fn in_memory(self) -> bool {
        self != SleepMode::Stopped
    }

    /// Its place in [`SleepMode::ALL`], for arrays kept per mode.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for SleepMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The service moved to `state`.
    Transition,
    /// A step inside the current state, e.g. "start command finished" during a wake.
    Progress,
    /// A keep-awake lease was taken, ended or expired.
    Lease,
    /// Someone asked for something: a wake or a sleep through the API.
    Action,
    /// Something needs attention: a failing health check, a coming max_runtime stop, too few
    /// players.
    Warning,
    /// What a listener did with a player: held, transferred, kicked or denied while the
    /// service wakes; and players who joined or left, as the backend's status sample shows.
    Player,
    /// The service's agent (`wakegate agent` on the server) began reporting, went silent or
    /// signed off, or ran its pre-stop command.
    Agent,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Transition,
        Kind::Progress,
        Kind::Lease,
        Kind::Action,
        Kind::Warning,
        Kind::Player,
        Kind::Agent,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Transition => "transition",
            Kind::Progress => "progress",
            Kind::Lease => "lease",
            Kind::Action => "action",
            Kind::Warning => "warning",
            Kind::Player => "player",
            Kind::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Durable, strictly increasing across restarts.
    pub id: i64,
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub service: String,
    pub kind: Kind,
    /// The state after this event.
    pub state: State,
    /// What happened and why, as a sentence ("client 10.0.0.7:51234 connected").
    pub reason: String,
    /// Structured facts: `previous`, `client`, `exit`, `log_tail`, `duration_ms`, …
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// An event before the store gave it an id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: Kind,
    pub state: State,
    pub reason: String,
    pub detail: serde_json::Value,
}

/// Formats a time as RFC 3339 with milliseconds, in UTC.
pub fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

pub fn rfc3339<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*time))
}

pub fn rfc3339_opt<S: Serializer>(time: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

pub(crate) fn to_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub(crate) fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}
