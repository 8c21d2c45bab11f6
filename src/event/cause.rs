//! Why an event happened, as typed values: a [`Trigger`] names what started a wake or a stop
//! (one vocabulary for events and metrics), a [`Cause`] is that trigger with its facts, and a
//! [`Detail`] is the whole `detail` object of a service's event. They serialize to the JSON
//! keys readers have always seen (`previous`, `trigger`, `client`, `duration_ms`, `exit`, …).

use serde::{Deserialize, Serialize};

use super::{SleepMode, State};
use crate::store::Lease;

/// What started a wake, a stop or a failure: the `trigger` of an event's detail, and the label
/// of the wake counter in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// A client connected (or a browser was shown the waiting page).
    Client,
    /// Someone asked through the API, the CLI or a notification's command.
    Api,
    /// A keep-awake lease was taken.
    Lease,
    /// wakegate started and adopted what it found.
    Reconcile,
    /// An `awake_during` or `asleep_during` window.
    Schedule,
    /// A restart after a failed health check or a crash, or an always-on service kept up.
    Restart,
    /// A failing health check asked for a restart.
    Health,
    /// The crash-loop breaker tripped (too many restarts within `restart_window`).
    Breaker,
    /// The service ran for `max_runtime`.
    MaxRuntime,
    /// Fewer than `min_players` were on after the warnings.
    MinPlayers,
    /// Nobody used it for `idle_timeout`.
    Idle,
    /// A stop failed.
    Stop,
    /// wakegate shut down.
    Shutdown,
    /// A failed stop is tried again.
    Retry,
    /// The server was found changed outside wakegate (stopped or started from a console).
    Outside,
    /// A paused or frozen server slept its limit (`freeze_for`) and is stopped for real.
    SleepLimit,
}

impl Trigger {
    /// The triggers that start a wake, in the order of the wake counters.
    pub const WAKES: [Trigger; 7] = [
        Trigger::Client,
        Trigger::Api,
        Trigger::Lease,
        Trigger::Reconcile,
        Trigger::Schedule,
        Trigger::Restart,
        Trigger::Outside,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Client => "client",
            Trigger::Api => "api",
            Trigger::Lease => "lease",
            Trigger::Reconcile => "reconcile",
            Trigger::Schedule => "schedule",
            Trigger::Restart => "restart",
            Trigger::Health => "health",
            Trigger::Breaker => "breaker",
            Trigger::MaxRuntime => "max_runtime",
            Trigger::MinPlayers => "min_players",
            Trigger::Idle => "idle",
            Trigger::Stop => "stop",
            Trigger::Shutdown => "shutdown",
            Trigger::Retry => "retry",
            Trigger::Outside => "outside",
            Trigger::SleepLimit => "sleep_limit",
        }
    }

    /// Its place among [`Trigger::WAKES`]; none for a trigger that never starts a wake.
    pub fn wake_index(self) -> Option<usize> {
        Trigger::WAKES.iter().position(|t| *t == self)
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A trigger with the facts that belong to it; in a detail, `trigger` names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "trigger", rename_all = "snake_case")]
pub enum Cause {
    Client {
        /// The client's address, when one connected (not for a browser shown the waiting page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// The player's name, when the protocol says who connects.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        player: Option<String>,
    },
    Api,
    Lease,
    Reconcile,
    Schedule,
    Restart,
    Health,
    Breaker,
    MaxRuntime,
    MinPlayers,
    Idle {
        /// How long nobody used it.
        idle_ms: u64,
    },
    Stop,
    Shutdown,
    Retry,
    Outside,
    SleepLimit {
        /// How long it slept paused or frozen.
        slept_ms: u64,
    },
}

impl Cause {
    pub fn trigger(&self) -> Trigger {
        match self {
            Cause::Client { .. } => Trigger::Client,
            Cause::Api => Trigger::Api,
            Cause::Lease => Trigger::Lease,
            Cause::Reconcile => Trigger::Reconcile,
            Cause::Schedule => Trigger::Schedule,
            Cause::Restart => Trigger::Restart,
            Cause::Health => Trigger::Health,
            Cause::Breaker => Trigger::Breaker,
            Cause::MaxRuntime => Trigger::MaxRuntime,
            Cause::MinPlayers => Trigger::MinPlayers,
            Cause::Idle { .. } => Trigger::Idle,
            Cause::Stop => Trigger::Stop,
            Cause::Shutdown => Trigger::Shutdown,
            Cause::Retry => Trigger::Retry,
            Cause::Outside => Trigger::Outside,
            Cause::SleepLimit { .. } => Trigger::SleepLimit,
        }
    }

    /// The cause of a client's wake that names no client (a waiting page asked for it).
    pub fn client() -> Cause {
        Cause::Client {
            client: None,
            player: None,
        }
    }

    /// The cause an event's detail names, if any (for readers of stored events).
    pub fn of(detail: &serde_json::Value) -> Option<Cause> {
        detail.get("trigger")?;
        serde_json::from_value(detail.clone()).ok()
    }
}

/// The facts of an event beyond its cause, one shape per kind of event; they sit at the top
/// level of the detail, beside `trigger`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Fact {
    /// A step of a wake, and the address it concerns.
    Step { step: &'static str, address: String },
    /// The backend is ready; `adopted` when it was found running at start-up. `woke_from`:
    /// what the wake undid (a cold start from `stopped`, a resume from `paused` or `frozen`);
    /// the expected wake time is drawn from the wakes of the same mode.
    Ready {
        address: String,
        duration_ms: u64,
        adopted: bool,
        woke_from: SleepMode,
    },
    /// A wake failed after this long, and the clean-up stop failed too when `cleanup_error`.
    WakeFailed {
        duration_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        cleanup_error: Option<String>,
    },
    /// The backend stopped (or paused, or froze: `sleep_mode`) after this long.
    Took {
        duration_ms: u64,
        sleep_mode: SleepMode,
    },
    /// The backend went away on its own.
    Exit { exit: String, log_tail: String },
    /// Fewer than `min_players` are on: warning `warning` of `of`.
    FewPlayers { players: u32, warning: u32, of: u32 },
    /// A max_runtime stop is this near.
    StopsIn { stops_in_ms: u64 },
    /// A lease was taken.
    LeaseTaken { lease: Lease },
    /// A lease ended or expired.
    LeaseEnded { lease_id: i64 },
    /// A health check failed `tolerance` times; `action` is what its config says to do.
    Unhealthy { action: String },
    /// A created service ended (its deadline, a destroy, idle), and why.
    Ended { ended: String },
    /// What the service's agent reported when it began reporting (or signed off).
    Agent {
        host: String,
        connections: Option<u32>,
        players: Option<u32>,
        count: Option<u64>,
    },
    /// The agent went silent: no report since `last_report`.
    AgentSilent { host: String, last_report: String },
    /// The agent was asked to run its pre-stop command (`pre_stop` is the request's id).
    PreStop {
        pre_stop: u64,
        host: String,
        timeout_ms: u64,
    },
    /// The agent's pre-stop command ended: `exit` as the agent says it, with the last lines
    /// of its output.
    PreStopDone {
        pre_stop: u64,
        ok: bool,
        exit: String,
        duration_ms: u64,
        log_tail: String,
    },
}

/// The `detail` of an event a service records: the state it left (on a transition), why, and
/// the facts. Empty, it is stored as no detail at all.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Detail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<State>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub fact: Option<Fact>,
}

impl Detail {
    /// A detail with only a cause.
    pub fn cause(cause: Cause) -> Detail {
        Detail {
            cause: Some(cause),
            ..Detail::default()
        }
    }

    /// A detail with only facts.
    pub fn fact(fact: Fact) -> Detail {
        Detail {
            fact: Some(fact),
            ..Detail::default()
        }
    }

    /// Adds facts to a cause.
    pub fn with(mut self, fact: Fact) -> Detail {
        self.fact = Some(fact);
        self
    }

    /// The JSON stored and published: an object, or null when there is nothing to say.
    pub fn to_value(&self) -> serde_json::Value {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) if map.is_empty() => serde_json::Value::Null,
            Ok(value) => value,
            // Every field is plain data; this cannot fail, but an event is never lost for it.
            Err(_) => serde_json::Value::Null,
        }
    }
}

impl From<Cause> for Detail {
    fn from(cause: Cause) -> Detail {
        Detail::cause(cause)
    }
}

impl From<Fact> for Detail {
    fn from(fact: Fact) -> Detail {
        Detail::fact(fact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cause_serializes_to_the_keys_readers_know() {
        let detail = Detail {
            previous: Some(State::Asleep),
            cause: Some(Cause::Client {
                client: Some("10.0.0.7:51234".into()),
                player: Some("Steve".into()),
            }),
            fact: None,
        };
        assert_eq!(
            detail.to_value(),
            json!({ "previous": "asleep", "trigger": "client", "client": "10.0.0.7:51234", "player": "Steve" })
        );
        let idle = Detail::cause(Cause::Idle { idle_ms: 1500 });
        assert_eq!(
            idle.to_value(),
            json!({ "trigger": "idle", "idle_ms": 1500 })
        );
        assert_eq!(
            Detail::cause(Cause::MaxRuntime).to_value(),
            json!({ "trigger": "max_runtime" })
        );
    }

    #[test]
    fn facts_sit_beside_the_cause_and_an_empty_detail_is_null() {
        let crash = Detail::cause(Cause::Restart).with(Fact::Exit {
            exit: "signal 9".into(),
            log_tail: "boom".into(),
        });
        assert_eq!(
            crash.to_value(),
            json!({ "trigger": "restart", "exit": "signal 9", "log_tail": "boom" })
        );
        let failed = Detail::fact(Fact::WakeFailed {
            duration_ms: 7,
            cleanup_error: None,
        });
        assert_eq!(failed.to_value(), json!({ "duration_ms": 7 }));
        assert_eq!(Detail::default().to_value(), serde_json::Value::Null);
    }

    #[test]
    fn every_trigger_is_named_alike_in_events_and_metrics() {
        let all = [
            Cause::client(),
            Cause::Api,
            Cause::Lease,
            Cause::Reconcile,
            Cause::Schedule,
            Cause::Restart,
            Cause::Health,
            Cause::Breaker,
            Cause::MaxRuntime,
            Cause::MinPlayers,
            Cause::Idle { idle_ms: 0 },
            Cause::Stop,
            Cause::Shutdown,
            Cause::Retry,
        ];
        for cause in all {
            let value = Detail::cause(cause.clone()).to_value();
            assert_eq!(value["trigger"], cause.trigger().as_str());
            assert_eq!(
                serde_json::to_value(cause.trigger()).unwrap(),
                value["trigger"]
            );
            // A stored detail reads back into its cause, whatever facts sit beside it.
            let mut stored = value.clone();
            stored["previous"] = json!("awake");
            assert_eq!(Cause::of(&stored), Some(cause));
        }
        assert_eq!(Cause::of(&json!({ "duration_ms": 3 })), None);
        assert_eq!(Trigger::Restart.wake_index(), Some(5));
        assert_eq!(Trigger::Idle.wake_index(), None);
    }
}
