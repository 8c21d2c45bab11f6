//! The actor's side of its agent: it takes reports (whatever the state: a report never wakes
//! a service, it only keeps it awake), marks an agent whose report ran out as silent, and
//! before a stop asks the agent for its pre-stop command and waits for it up to
//! `pre_stop_timeout`. Each with its event: an agent began reporting, signed off, went silent,
//! was asked for its pre-stop, finished it.

use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::agent::{AgentStatus, MAX_HOST, ReportAck};
use super::core::{Core, Outcome};
use crate::agent::wire::{PreStopRequest, PreStopResult, Report};
use crate::event::{Fact, Kind, format_time};

impl Core {
    /// Takes a report (whatever the state: a report never wakes the service, it only keeps it
    /// awake).
    pub(super) fn agent_report(&mut self, report: Report, valid_for: Duration) -> ReportAck {
        let now = SystemTime::now();
        let valid_for = valid_for.min(self.agent.rules.max_valid_for);
        // It goes into events and logs: one short line.
        let mut host: String = report.host.chars().filter(|c| !c.is_control()).collect();
        host.truncate(host.floor_char_boundary(MAX_HOST));
        let agent = AgentStatus {
            host,
            at: now,
            connections: report.connections,
            players: report.players,
            count: report.count,
            valid_until: now + valid_for,
            pre_stop: report.pre_stop,
            leaving: report.leaving,
            silent: false,
        };
        let was_reporting = self
            .status
            .borrow()
            .agent
            .as_ref()
            .is_some_and(|a| a.reporting(now));
        self.shared.metrics.agent.report(
            now,
            report.connections,
            report.players,
            report.count,
            (!report.leaving && report.active()).then_some(agent.valid_until),
        );
        let event = if report.leaving {
            was_reporting.then(|| {
                format!(
                    "the agent on {} signed off (it is shutting down); its figures no longer count",
                    agent.host
                )
            })
        } else if !was_reporting {
            Some(format!(
                "the agent on {} began reporting: {}",
                agent.host,
                agent.figures()
            ))
        } else {
            None
        };
        let fact = agent.fact();
        let set = agent.clone();
        match event {
            Some(reason) => self.change(|s| s.agent = Some(set), Kind::Agent, reason, fact.into()),
            None => {
                self.status
                    .send_if_modified(|s| s.agent.replace(set) != s.agent);
            }
        }
        ReportAck {
            valid_until: agent.valid_until,
            pre_stop: self.status.borrow().pre_stop.clone(),
        }
    }

    /// Marks an agent whose report ran out without a new one as silent, with an event.
    pub(super) fn check_agent(&mut self) {
        let now = SystemTime::now();
        let Some(agent) = self.status.borrow().agent.clone() else {
            return;
        };
        if agent.leaving || agent.silent || now < agent.valid_until {
            return;
        }
        let reason = format!(
            "the agent on {} went silent: no report since {}; its figures no longer count",
            agent.host,
            format_time(agent.at)
        );
        let fact = Fact::AgentSilent {
            host: agent.host.clone(),
            last_report: format_time(agent.at),
        };
        self.change(
            |s| {
                if let Some(a) = s.agent.as_mut() {
                    a.silent = true;
                }
            },
            Kind::Agent,
            reason,
            fact.into(),
        );
    }

    /// When [`check_agent`](Self::check_agent) has something to do: the moment the last report
    /// runs out, while the agent reports.
    pub(super) fn agent_check_at(&self, now: SystemTime) -> Option<Instant> {
        let status = self.status.borrow();
        let agent = status.agent.as_ref().filter(|a| a.reporting(now))?;
        let left = agent.valid_until.duration_since(now).unwrap_or_default();
        Some(Instant::now() + left)
    }

    /// Whether the agent's figures keep the service awake.
    pub(super) fn agent_active(&self) -> bool {
        let now = SystemTime::now();
        self.status
            .borrow()
            .agent
            .as_ref()
            .is_some_and(|a| a.active(now))
    }

    /// The players the agent reports, while it reports.
    pub(super) fn agent_players(&self) -> Option<u32> {
        let now = SystemTime::now();
        let status = self.status.borrow();
        status
            .agent
            .as_ref()
            .filter(|a| a.reporting(now))
            .and_then(|a| a.players)
    }

    /// Takes the result of the pre-stop `id`; false when no such pre-stop is waited for.
    pub(super) fn pre_stop_done(&mut self, id: u64, result: PreStopResult) -> bool {
        match self.agent.waiting.take() {
            Some((want, reply)) if want == id => {
                let _ = reply.send(result);
                true
            }
            other => {
                self.agent.waiting = other;
                false
            }
        }
    }

    /// Before a stop: asks the agent to run its pre-stop command, and waits for its answer up
    /// to `pre_stop_timeout` while serving requests. Without a live agent that has one, the
    /// stop goes on at once. False when wakegate shuts down meanwhile.
    pub(super) async fn pre_stop(&mut self, cancel: &CancellationToken) -> bool {
        let now = SystemTime::now();
        let Some(agent) = self.status.borrow().agent.clone() else {
            return true;
        };
        if !agent.pre_stop || agent.leaving {
            return true;
        }
        if !agent.reporting(now) {
            self.progress(
                format!(
                    "the agent on {} is silent: stopping without its pre-stop command",
                    agent.host
                ),
                crate::event::Detail::default(),
            );
            return true;
        }
        let timeout = self.agent.rules.pre_stop_timeout;
        let id = self.agent.next_id();
        let (reply, result) = oneshot::channel();
        self.agent.waiting = Some((id, reply));
        let request = PreStopRequest {
            id,
            timeout: humantime::format_duration(timeout).to_string(),
        };
        let asked = Fact::PreStop {
            pre_stop: id,
            host: agent.host.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        self.change(
            |s| s.pre_stop = Some(request),
            Kind::Agent,
            format!(
                "asking the agent on {} to run its pre-stop command (waiting up to {})",
                agent.host,
                humantime::format_duration(timeout)
            ),
            asked.into(),
        );
        let started = Instant::now();
        let outcome = self
            .serve_while(result, Some(started + timeout), cancel)
            .await;
        self.agent.waiting = None;
        self.status.send_modify(|s| s.pre_stop = None);
        let took = started.elapsed();
        match outcome {
            Outcome::Done(Ok(result)) => {
                let (kind, reason) = if result.ok {
                    (
                        Kind::Agent,
                        format!(
                            "the agent's pre-stop command finished after {}",
                            super::policy::round(took)
                        ),
                    )
                } else {
                    (
                        Kind::Warning,
                        format!(
                            "the agent's pre-stop command failed ({}); stopping anyway",
                            result.exit
                        ),
                    )
                };
                let done = Fact::PreStopDone {
                    pre_stop: id,
                    ok: result.ok,
                    exit: result.exit,
                    duration_ms: result.duration_ms,
                    log_tail: result.output,
                };
                self.emit(kind, reason, done.into());
                true
            }
            Outcome::Done(Err(_)) | Outcome::TimedOut => {
                let reason = format!(
                    "the agent on {} did not finish its pre-stop command within pre_stop_timeout ({}); stopping anyway",
                    agent.host,
                    humantime::format_duration(timeout)
                );
                info!("{reason}");
                let facts = Fact::PreStop {
                    pre_stop: id,
                    host: agent.host,
                    timeout_ms: timeout.as_millis() as u64,
                };
                self.emit(Kind::Warning, reason, facts.into());
                true
            }
            Outcome::Cancelled => false,
        }
    }
}
