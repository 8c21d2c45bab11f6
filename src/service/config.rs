//! The `[[service]]` table: the keys of a service itself, its policies and health checks, read
//! into [`Service`]; its backend, listeners and probes are read by their own modules.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::agent::config::{ServiceAgent, read_service_agent};
use crate::backend::config::{Backend, read_backend};
use crate::config::de::{duration, optional_duration, read, split_type};
use crate::config::diag::Problems;
use crate::listener::config::{Bind, Listen, read_listeners};
use crate::probe::Check;
use crate::probe::config::read_probe;
use crate::schedule::Window;

/// One thing that sleeps and wakes.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// What an hour awake costs, to report the money saved by sleeping.
    pub hourly_cost: Option<f64>,
    pub idle_timeout: Duration,
    pub min_awake: Duration,
    pub wake_timeout: Duration,
    pub max_held: usize,
    pub backend: Backend,
    /// Empty only for an `always_on` service that nobody reaches through wakegate.
    pub listeners: Vec<Listen>,
    /// What "ready" means at the end of a wake (default: the address accepts a connection).
    pub readiness: Check,
    /// Checks run while awake.
    pub health: Vec<Health>,
    /// Keep it running and repair it, whatever the activity.
    pub always_on: bool,
    pub policy: Policies,
    /// What the gateway does with the service's agent (`[service.agent]`).
    pub agent: ServiceAgent,
}

impl Service {
    /// Whether a `minecraft` listener of this service writes PROXY headers to the backend
    /// (then wakegate's own status pings carry one too).
    pub fn proxy_protocol(&self) -> bool {
        self.listeners
            .iter()
            .any(|l| matches!(l, Listen::Minecraft(m) if m.proxy_protocol))
    }

    /// How often to ask the backend for its players, and how: only behind a `minecraft`
    /// listener (a Java status ping, which also counts a Geyser server's Bedrock players) or
    /// else a `bedrock` one (an unconnected ping to its backend port).
    pub fn player_poll(&self) -> Option<(Duration, crate::probe::Probe)> {
        let every = self.policy.player_poll;
        if self
            .listeners
            .iter()
            .any(|l| matches!(l, Listen::Minecraft(_)))
        {
            return Some((every, crate::probe::Probe::Minecraft));
        }
        self.listeners.iter().find_map(|l| match l {
            Listen::Bedrock(b) => Some((
                every,
                crate::probe::Probe::Bedrock {
                    port: b.backend_port,
                },
            )),
            _ => None,
        })
    }
}

/// Policies beyond the idle timeout.
#[derive(Debug, Clone)]
pub struct Policies {
    /// Stop after this long awake, however busy.
    pub max_runtime: Option<Duration>,
    /// How long before `max_runtime` a warning event goes out.
    pub max_runtime_warning: Duration,
    pub min_players: Option<MinPlayers>,
    /// Windows that keep it awake.
    pub awake_during: Vec<Window>,
    /// Windows in which it may not wake (and is put to sleep).
    pub asleep_during: Vec<Window>,
    /// How often an awake service behind a `minecraft` listener is asked for its players.
    pub player_poll: Duration,
    /// The crash-loop breaker: at most this many restarts within `restart_window`.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl Default for Policies {
    fn default() -> Policies {
        Policies {
            max_runtime: None,
            max_runtime_warning: default_runtime_warning(),
            min_players: None,
            awake_during: Vec::new(),
            asleep_during: Vec::new(),
            player_poll: default_player_poll(),
            max_restarts: default_max_restarts(),
            restart_window: default_restart_window(),
        }
    }
}

/// Stop when fewer players than `count` are on, after `warnings` warnings `interval` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinPlayers {
    pub count: u32,
    pub warnings: u32,
    pub interval: Duration,
}

/// A health check run while awake.
#[derive(Debug, Clone)]
pub struct Health {
    pub check: Check,
    pub interval: Duration,
    /// Consecutive failures before acting.
    pub tolerance: u32,
    pub action: HealthAction,
}

/// What a failing health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthAction {
    /// Stop and start the backend (within the crash-loop breaker's limits).
    Restart,
    /// Only record a warning event (which notifications can pick up).
    Notify,
    /// Put it to sleep.
    Sleep,
}

/// The keys of a `[[service]]` table other than `backend` and `listen`, which are read apart
/// so that a mistake in one part does not hide mistakes in the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceConfig {
    name: Spanned<String>,
    hourly_cost: Option<Spanned<f64>>,
    #[serde(default = "default_idle", deserialize_with = "duration")]
    idle_timeout: Duration,
    #[serde(default, deserialize_with = "duration")]
    min_awake: Duration,
    #[serde(default = "default_wake_timeout", deserialize_with = "duration")]
    wake_timeout: Duration,
    #[serde(default = "default_max_held")]
    max_held: Spanned<usize>,
    #[serde(default = "default_always_on")]
    always_on: Spanned<bool>,
    #[serde(default, deserialize_with = "optional_duration")]
    max_runtime: Option<Duration>,
    #[serde(default = "default_runtime_warning", deserialize_with = "duration")]
    max_runtime_warning: Duration,
    min_players: Option<u32>,
    #[serde(default = "default_warnings")]
    warnings: u32,
    #[serde(default = "default_player_interval", deserialize_with = "duration")]
    player_check_interval: Duration,
    #[serde(default)]
    awake_during: Vec<Spanned<String>>,
    #[serde(default)]
    asleep_during: Vec<Spanned<String>>,
    #[serde(default = "default_player_poll", deserialize_with = "duration")]
    player_poll: Duration,
    #[serde(default = "default_max_restarts")]
    max_restarts: u32,
    #[serde(default = "default_restart_window", deserialize_with = "duration")]
    restart_window: Duration,
}

/// When and how a health check acts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthConfig {
    #[serde(default = "default_health_interval", deserialize_with = "duration")]
    interval: Duration,
    #[serde(default = "default_tolerance")]
    tolerance: Spanned<u32>,
    #[serde(default = "default_health_action")]
    action: HealthAction,
}

fn default_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_wake_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_max_held() -> Spanned<usize> {
    Spanned::new(0..0, 256)
}
fn default_always_on() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
fn default_runtime_warning() -> Duration {
    Duration::from_secs(600)
}
fn default_warnings() -> u32 {
    3
}
fn default_player_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_player_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_max_restarts() -> u32 {
    3
}
fn default_restart_window() -> Duration {
    Duration::from_secs(3600)
}

fn default_health_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_tolerance() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}
fn default_health_action() -> HealthAction {
    HealthAction::Restart
}

/// What the `[[service]]` tables hold, as far as they could be read.
#[derive(Debug, Default)]
pub(crate) struct ServicesRead {
    /// Every service, when all could be read.
    pub services: Option<Vec<Service>>,
    /// The names of the services, when every name could be read: for the other tables that
    /// name services.
    pub names: Option<Vec<String>>,
    /// Every listener read, of every service: for the check of their binds.
    pub binds: Vec<Bind>,
}

/// What is known of one `[[service]]` whatever else is wrong with it.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    pub name: Option<String>,
    pub binds: Vec<Bind>,
}

/// Reads the `[[service]]` array; every service is read, so that all their mistakes show.
pub(crate) fn read_services(
    value: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> ServicesRead {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.add(
            Some(span),
            "`service` must be an array of tables",
            "write each service as a [[service]] table",
        );
        return ServicesRead::default();
    };
    let mut services = Vec::new();
    let mut all_ok = true;
    let mut all_named = true;
    let mut binds = Vec::new();
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    let mut order = Vec::new();
    for item in items {
        let mut seen = Seen::default();
        let service = read_service(item, problems, &mut seen);
        binds.append(&mut seen.binds);
        match seen.name {
            Some(name) => order.push(name),
            None => all_named = false,
        }
        match service {
            Some((service, name_span)) => {
                if names
                    .insert(service.name.clone(), name_span.clone())
                    .is_some()
                {
                    problems.add(
                        Some(name_span),
                        format!("service name `{}` is used twice", service.name),
                        "give every [[service]] its own name",
                    );
                }
                services.push(service);
            }
            None => all_ok = false,
        }
    }
    ServicesRead {
        services: all_ok.then_some(services),
        names: all_named.then_some(order),
        binds,
    }
}

/// Reads one `[[service]]`; `seen` learns its name and listeners even when another part of it
/// is wrong.
pub(crate) fn read_service(
    item: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
    seen: &mut Seen,
) -> Option<(Service, Range<usize>)> {
    let span = item.span();
    let DeValue::Table(mut table) = item.into_inner() else {
        problems.add(
            Some(span),
            "each `service` must be a table",
            "write each service as a [[service]] table",
        );
        return None;
    };
    let backend = table.remove("backend");
    let listen = table.remove("listen");
    let readiness = table.remove("readiness");
    let health = table.remove("health");
    let dns = table.remove("dns");
    let agent = table.remove("agent");
    let always_on = matches!(
        table.get("always_on").map(|v| v.get_ref()),
        Some(DeValue::Boolean(true))
    );
    let fields = read::<ServiceConfig>(Spanned::new(span.clone(), DeValue::Table(table)), problems);
    seen.name = fields.as_ref().map(|f| f.name.get_ref().clone());
    let readiness_span = readiness.as_ref().map(|r| r.span());
    let readiness = match readiness {
        Some(value) => split_type(
            value,
            "[service.readiness]",
            "tcp, http, minecraft, log, container",
            problems,
        )
        .and_then(|(kind, rest)| read_probe(&kind, rest, true, problems)),
        None => Some(Check::default()),
    };
    let health = match health {
        Some(value) => read_health(value, problems),
        None => Some(Vec::new()),
    };
    let agent = read_service_agent(agent, problems);

    let backend = match backend {
        Some(value) => read_backend(value, dns, problems),
        None => {
            problems.add(
                Some(span.clone()),
                "this service has no [service.backend]",
                "add a [service.backend] table with `type = \"exec\"` or `type = \"process\"`",
            );
            None
        }
    };
    let listeners = match listen {
        Some(value) => {
            let (listeners, ok) = read_listeners(value, problems);
            if let Some(name) = &seen.name {
                seen.binds = listeners
                    .iter()
                    .map(|(listen, span)| Bind {
                        service: name.clone(),
                        listen: listen.clone(),
                        span: span.clone(),
                    })
                    .collect();
            }
            ok.then(|| listeners.into_iter().map(|(l, _)| l).collect())
        }
        // A watchdog keeps a server running that clients reach by other ways.
        None if always_on => Some(Vec::new()),
        None => {
            problems.add(
                Some(span.clone()),
                "this service has no [[service.listen]]",
                "add a [[service.listen]] table with `type = \"tcp\"` and `bind = \"IP:PORT\"`",
            );
            None
        }
    };
    if let (Some(check), Some(backend)) = (&readiness, &backend)
        && matches!(check.probe, crate::probe::Probe::Container)
        && !matches!(backend, Backend::Docker(_))
    {
        problems.add(
            readiness_span,
            "readiness type \"container\" needs a docker backend",
            "only a container has a HEALTHCHECK of its own; use a tcp, http or minecraft readiness",
        );
        return None;
    }
    let fields = fields?;
    let name_span = fields.name.span();
    let name = fields.name.into_inner();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        problems.add(
            Some(name_span.clone()),
            format!("service name `{name}` is not allowed"),
            "names use only a-z, 0-9 and '-', e.g. \"survival\" or \"staging-api\"",
        );
    }
    if let Some(cost) = &fields.hourly_cost
        && !(cost.get_ref().is_finite() && *cost.get_ref() >= 0.0)
    {
        problems.add(
            Some(cost.span()),
            "hourly_cost must be a positive number",
            "write what an hour awake costs, e.g. hourly_cost = 0.17",
        );
    }
    if *fields.always_on.get_ref() && fields.max_runtime.is_some() {
        problems.add(
            Some(fields.always_on.span()),
            "an always_on service cannot have a max_runtime",
            "remove one of the two: always_on keeps it running, max_runtime stops it",
        );
    }
    let awake_during = read_windows(fields.awake_during, problems);
    let asleep_during = read_windows(fields.asleep_during, problems);
    if fields.max_held.get_ref() == &0 {
        problems.add(
            Some(fields.max_held.span()),
            "max_held = 0 would refuse every client while the service wakes",
            "set max_held to at least 1 (the default is 256)",
        );
    }
    // Behind `proxy_protocol = true` the backend wants a PROXY header on every connection,
    // wakegate's own status pings included.
    let proxy = listeners.as_deref().is_some_and(|l| {
        l.iter()
            .any(|l| matches!(l, Listen::Minecraft(m) if m.proxy_protocol))
    });
    let readiness = readiness.map(|c| Check {
        proxy_header: proxy,
        ..c
    });
    let health = health.map(|checks| {
        checks
            .into_iter()
            .map(|mut h| {
                h.check.proxy_header = proxy;
                h
            })
            .collect::<Vec<_>>()
    });
    Some((
        Service {
            name,
            hourly_cost: fields.hourly_cost.map(|c| c.into_inner()),
            idle_timeout: fields.idle_timeout,
            min_awake: fields.min_awake,
            wake_timeout: fields.wake_timeout,
            max_held: *fields.max_held.get_ref(),
            backend: backend?,
            listeners: listeners?,
            readiness: readiness?,
            health: health?,
            always_on: *fields.always_on.get_ref(),
            policy: Policies {
                max_runtime: fields.max_runtime,
                max_runtime_warning: fields.max_runtime_warning,
                min_players: fields.min_players.map(|count| MinPlayers {
                    count,
                    warnings: fields.warnings,
                    interval: fields.player_check_interval,
                }),
                awake_during: awake_during?,
                asleep_during: asleep_during?,
                player_poll: fields.player_poll,
                max_restarts: fields.max_restarts,
                restart_window: fields.restart_window,
            },
            agent: agent?,
        },
        name_span,
    ))
}

/// Reads a service from a whole TOML table (the keys of a `[[service]]`, its name included),
/// for services made at run time (from a template, from a container's labels); an `Err` lists
/// every problem with its hint.
pub fn from_table(table: &toml::Table) -> Result<Service, String> {
    let text = toml::to_string(table).map_err(|e| e.to_string())?;
    let mut problems = Problems::new(&text);
    let service = match DeTable::parse(&text) {
        Ok(root) => {
            let span = root.span();
            read_service(
                Spanned::new(span, DeValue::Table(root.into_inner())),
                &mut problems,
                &mut Seen::default(),
            )
        }
        Err(e) => {
            problems.add_toml(e);
            None
        }
    };
    let problems = problems.into_sorted();
    match service {
        Some((service, _)) if problems.is_empty() => Ok(service),
        _ => Err(problems
            .iter()
            .map(|p| format!("{} ({})", p.message, p.hint))
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

fn read_windows(texts: Vec<Spanned<String>>, problems: &mut Problems<'_>) -> Option<Vec<Window>> {
    let mut ok = true;
    let mut windows = Vec::new();
    for text in texts {
        match Window::parse(text.get_ref()) {
            Ok(w) => windows.push(w),
            Err(e) => {
                problems.add(
                    Some(text.span()),
                    e,
                    "days are Mon..Sun, ranges like Mon-Fri or lists like Sat,Sun, or daily",
                );
                ok = false;
            }
        }
    }
    ok.then_some(windows)
}

fn read_health(value: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) -> Option<Vec<Health>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.add(
            Some(span),
            "`health` must be an array of tables",
            "write each check as a [[service.health]] table",
        );
        return None;
    };
    let mut checks = Vec::new();
    let mut ok = true;
    for item in items {
        let check = split_type(item, "[[service.health]]", "tcp, http, minecraft", problems)
            .and_then(|(kind, rest)| {
                let rest_span = rest.span();
                let DeValue::Table(mut table) = rest.into_inner() else {
                    return None;
                };
                let mut timing = DeTable::new();
                for key in ["interval", "tolerance", "action"] {
                    if let Some((k, v)) = table.remove_entry(key) {
                        timing.insert(k, v);
                    }
                }
                let health: Option<HealthConfig> = read(
                    Spanned::new(rest_span.clone(), DeValue::Table(timing)),
                    problems,
                );
                let check = read_probe(
                    &kind,
                    Spanned::new(rest_span, DeValue::Table(table)),
                    false,
                    problems,
                );
                let health = health?;
                if *health.tolerance.get_ref() == 0 {
                    problems.add(
                        Some(health.tolerance.span()),
                        "tolerance = 0 would act before any check failed",
                        "set tolerance to the number of failures in a row to wait for, e.g. 3",
                    );
                    return None;
                }
                Some(Health {
                    check: check?,
                    interval: health.interval,
                    tolerance: *health.tolerance.get_ref(),
                    action: health.action,
                })
            });
        match check {
            Some(c) => checks.push(c),
            None => ok = false,
        }
    }
    ok.then_some(checks)
}
