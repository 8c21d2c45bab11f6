//! `wakegate agent`: runs on the server itself. It measures the host's activity (connections on
//! its ports, Minecraft players, a command's count) and reports it to the gateway's API, on
//! every change and at least every `report_interval`; the gateway counts it as activity like
//! a connection. It holds a wait open on the gateway, through which a stop asks it to run its
//! `pre_stop` command first. And it is a dead man's switch: when the gateway has not answered
//! for `dead_man` and nothing has used the host for `idle_timeout`, it runs
//! `shutdown_command`, so a server is never left running because the gateway is gone.
//!
//! The gateway's side is in `service/agent.rs` (the actor) and `api/agent.rs` (the routes).

mod command;
pub mod config;
mod link;
mod measure;
mod socket;
mod switch;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use self::config::Agent;
use self::link::{Link, LinkError};
use self::measure::Figures;
use self::switch::Switch;
use self::wire::{PreStopRequest, PreStopResult, Report};

/// How long the farewell report may take when the agent stops.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the shutdown command may take before it is killed (a poweroff returns at once).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// Measures once and prints what it found (`wakegate agent --measure`): to check a config.
pub async fn measure_once(agent: &Agent) -> String {
    let figures = measure::measure(agent).await;
    let mut out = format!(
        "{} ({}): {}",
        agent.host,
        if figures.active() { "active" } else { "idle" },
        figures.describe()
    );
    for problem in &figures.problems {
        out.push_str(&format!("\n  cannot measure: {problem}"));
    }
    out
}

/// Runs the agent until `stop` resolves; then it tells the gateway it leaves.
pub async fn run(agent: Agent, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let link = Arc::new(Link::new(&agent).map_err(anyhow::Error::msg)?);
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let (requests, pending) = mpsc::channel(8);
    tracker.spawn(wait_for_requests(
        link.clone(),
        requests.clone(),
        agent.report_interval,
        cancel.clone(),
    ));
    tracker.spawn(run_pre_stops(
        link.clone(),
        agent.pre_stop.clone(),
        pending,
        cancel.clone(),
    ));
    info!(
        gateway = %link.host(),
        service = %agent.service,
        host = %agent.host,
        ports = ?agent.ports,
        minecraft = ?agent.minecraft,
        dead_man = %humantime::format_duration(agent.dead_man),
        shutdown_command = agent.shutdown_command.is_some(),
        "Agent started."
    );
    let switch = Switch {
        dead_man: agent.dead_man,
        idle_timeout: agent.idle_timeout,
    };
    let mut reach = link.reach();
    let mut tick = tokio::time::interval(agent.check_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The figures last delivered, and when.
    let mut sent: Option<(Figures, Instant)> = None;
    let mut problems: Vec<String> = Vec::new();
    // Since when nothing uses the host, as far as the agent has seen (it starts counting when
    // it starts: a host gets at least idle_timeout after boot).
    let mut idle_since: Option<Instant> = None;
    let mut tried_at: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let due = agent
            .shutdown_command
            .as_ref()
            .and_then(|_| switch.due(reach.borrow().failing_since, idle_since, tried_at));
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {
                let mut figures = measure::measure(&agent).await;
                let now = Instant::now();
                if figures.active() {
                    idle_since = None;
                } else {
                    idle_since.get_or_insert(now);
                }
                let found = std::mem::take(&mut figures.problems);
                if found != problems {
                    for problem in &found {
                        warn!(problem = %problem, "Cannot measure a figure; it counts as no activity.");
                    }
                    problems = found;
                }
                let changed = sent.as_ref().is_none_or(|(last, at)| {
                    *last != figures || at.elapsed() >= agent.report_interval
                });
                if changed {
                    match link.report(&report(&agent, &figures, false)).await {
                        Ok(answer) => {
                            sent = Some((figures, now));
                            if let Some(request) = answer.pre_stop {
                                let _ = requests.try_send(request);
                            }
                        }
                        Err(e) => refused(&e),
                    }
                }
            }
            changed = reach.changed() => if changed.is_err() { break },
            () = sleep_until(due) => {
                tried_at = Some(Instant::now());
                if let Some(command) = &agent.shutdown_command {
                    shut_down(&agent, command, idle_since).await;
                }
            }
        }
    }
    cancel.cancel();
    // The gateway stops counting this host's figures at once instead of at their expiry.
    let last = report(&agent, &Figures::default(), true);
    let farewell = link.report(&last);
    match tokio::time::timeout(FAREWELL_TIMEOUT, farewell).await {
        Ok(Ok(_)) => info!("Told the gateway the agent stops."),
        _ => {
            info!("Could not tell the gateway the agent stops; its last report expires by itself.")
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// A report of `figures`.
fn report(agent: &Agent, figures: &Figures, leaving: bool) -> Report {
    Report {
        host: agent.host.clone(),
        connections: figures.connections,
        players: figures.players,
        count: figures.count,
        valid_for: humantime::format_duration(agent.report_interval * 3).to_string(),
        pre_stop: agent.pre_stop.is_some(),
        leaving,
    }
}

/// Logs a refusal with the gateway's own words (they say what to fix); an unreachable gateway
/// is logged once by the link.
fn refused(e: &LinkError) {
    if let LinkError::Refused { .. } = e {
        error!(error = %e, "The gateway refused the report.");
    }
}

/// Runs the shutdown command, after saying why.
async fn shut_down(agent: &Agent, command: &str, idle_since: Option<Instant>) {
    let idle = idle_since.map_or(Duration::ZERO, |s| s.elapsed());
    warn!(
        dead_man = %humantime::format_duration(agent.dead_man),
        idle = %humantime::format_duration(Duration::from_secs(idle.as_secs())),
        command = %command,
        "The gateway has not answered for dead_man and nothing has used this host for idle_timeout: running the shutdown command."
    );
    match command::run(command, SHUTDOWN_TIMEOUT).await {
        Ok(ran) if ran.ok => info!(output = %ran.tail(5), "The shutdown command finished."),
        Ok(ran) => {
            error!(exit = %ran.exit, output = %ran.tail(5), "The shutdown command failed; trying again after dead_man.")
        }
        Err(e) => {
            error!(error = %e, "Cannot run the shutdown command; trying again after dead_man.")
        }
    }
}

/// Holds a wait open on the gateway, through which a stop asks for the pre-stop command.
async fn wait_for_requests(
    link: Arc<Link>,
    requests: mpsc::Sender<PreStopRequest>,
    report_interval: Duration,
    cancel: CancellationToken,
) {
    let mut pause = Duration::from_secs(1);
    let mut seen = None;
    loop {
        let answer = tokio::select! {
            () = cancel.cancelled() => return,
            answer = link.wait(seen) => answer,
        };
        let rest = match answer {
            Ok(answer) => {
                pause = Duration::from_secs(1);
                if let Some(request) = answer.pre_stop {
                    seen = Some(request.id);
                    let _ = requests.send(request).await;
                }
                Duration::ZERO
            }
            Err(e) => {
                refused(&e);
                // Not in a loop against a gateway that is down.
                let rest = pause;
                pause = (pause * 2).min(report_interval);
                rest
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(rest) => {}
        }
    }
}

/// Runs each pre-stop the gateway asks for once (it may be asked through a report's answer and
/// through the wait), and answers how it ended.
async fn run_pre_stops(
    link: Arc<Link>,
    command: Option<String>,
    mut pending: mpsc::Receiver<PreStopRequest>,
    cancel: CancellationToken,
) {
    let mut last = None;
    loop {
        let request = tokio::select! {
            () = cancel.cancelled() => return,
            request = pending.recv() => match request {
                Some(request) => request,
                None => return,
            },
        };
        if last == Some(request.id) {
            continue;
        }
        last = Some(request.id);
        let timeout =
            humantime::parse_duration(&request.timeout).unwrap_or(Duration::from_secs(60));
        let result = match &command {
            Some(command) => {
                info!(id = request.id, command = %command, "The gateway stops the service: running the pre-stop command.");
                match command::run(command, timeout).await {
                    Ok(ran) => PreStopResult {
                        ok: ran.ok,
                        exit: ran.exit.clone(),
                        duration_ms: ran.took.as_millis() as u64,
                        output: ran.tail(10),
                    },
                    Err(e) => PreStopResult {
                        ok: false,
                        exit: e,
                        duration_ms: 0,
                        output: String::new(),
                    },
                }
            }
            None => PreStopResult {
                ok: false,
                exit: "this agent has no pre_stop command".into(),
                duration_ms: 0,
                output: String::new(),
            },
        };
        if result.ok {
            info!(
                id = request.id,
                took_ms = result.duration_ms,
                "The pre-stop command finished."
            );
        } else {
            warn!(id = request.id, exit = %result.exit, output = %result.output, "The pre-stop command failed.");
        }
        if let Err(e) = link.pre_stop_done(request.id, &result).await {
            warn!(error = %e, "Could not tell the gateway how the pre-stop command ended; it stops the service after its pre_stop_timeout.");
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
