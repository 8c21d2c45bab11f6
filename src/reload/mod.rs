//! Live reload (SIGHUP, `POST /api/v1/reload`): the file the gateway was started with is read
//! and fully checked again, compared with the running config ([`diff`]), and only the
//! difference is applied, service by service. Unchanged services are not touched; policy
//! changes reach the running actor at once; a backend change replaces the actor (the old
//! backend is stopped first) while its sockets stay open; a listener change binds the new
//! sockets before anything changes and closes only the old ones no longer configured. A file
//! with problems, a gateway-wide change or a port that cannot be bound changes nothing.

pub mod diff;
mod own;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use self::diff::Change;
use self::diff::Plan;
pub use self::own::{Fd, Own};
use crate::config::{Config, ConfigError, Problem};
use crate::event::{Kind, NewEvent, State};
use crate::launch::{self, Wiring};
use crate::listener::config::Listen;
use crate::service::ServiceHandle;
use crate::service::config::Service;

pub use crate::event::GATEWAY;

/// How long a reload waits for a removed or replaced backend to stop.
const STOP_WAIT: Duration = Duration::from_secs(600);

/// A configured service as it runs: what a reload changes.
pub struct Running {
    pub config: Service,
    pub handle: ServiceHandle,
    /// Ends its actor, health checks and player poll.
    pub cancel: CancellationToken,
    /// Ends its health checks and player poll only (a child of `cancel`).
    pub health: CancellationToken,
    /// Its own sockets (`tcp`, `udp`, `bedrock`).
    pub sockets: Vec<Own>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub added: Vec<String>,
    pub removed: Vec<Removed>,
    pub changed: Vec<Changed>,
    pub unchanged: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub name: String,
    /// Its backend was left as it is (`keep_running`) rather than stopped.
    pub kept_running: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub name: String,
    #[serde(flatten)]
    pub change: Change,
}

impl Report {
    /// "1 added, 1 removed, 2 changed, 3 unchanged".
    pub fn summary(&self) -> String {
        format!(
            "{} added, {} removed, {} changed, {} unchanged",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged
        )
    }
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The file cannot be read, or has problems (each with its line).
    #[error("{message}")]
    Invalid {
        message: String,
        problems: Vec<Problem>,
    },
    /// A gateway-wide key changed, which only a restart applies.
    #[error(
        "{} changed; {} cannot change while wakegate runs: restart wakegate to apply {}, or put the old value back (nothing was changed)",
        .0.join(", "),
        if .0.len() == 1 { "it" } else { "they" },
        if .0.len() == 1 { "it" } else { "them" }
    )]
    Restart(Vec<String>),
    /// A socket cannot be bound, or a change needs what a reload cannot do.
    #[error("{0} (nothing was changed)")]
    Cannot(String),
    #[error("wakegate is shutting down")]
    ShuttingDown,
}

/// Reloads the config of a running gateway; one reload at a time.
#[derive(Clone)]
pub struct Reloader(Arc<Inner>);

struct Inner {
    /// The file the gateway was started with; none for one built in code (the demo).
    path: Option<PathBuf>,
    with: Wiring,
    /// Where the accept loops run (the app waits for them at shutdown).
    accepting: TaskTracker,
    state: tokio::sync::Mutex<Now>,
    /// Where the services a reload touched listen first, for `App::listen_addr`: a std lock,
    /// held for a copy only.
    listening: std::sync::Mutex<Vec<(String, Option<SocketAddr>)>>,
}

/// The running config and its services.
struct Now {
    config: Config,
    running: Vec<Running>,
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        config: Config,
        running: Vec<Running>,
        with: Wiring,
        accepting: TaskTracker,
    ) -> Reloader {
        Reloader(Arc::new(Inner {
            path,
            with,
            accepting,
            state: tokio::sync::Mutex::new(Now { config, running }),
            listening: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Starts serving every own socket (each waits for its service to reconcile).
    pub async fn serve_all(&self) {
        let mut now = self.0.state.lock().await;
        for running in &mut now.running {
            for own in &mut running.sockets {
                own.serve(&running.handle, &self.0.with.connections, &self.0.accepting);
            }
        }
    }

    /// Closes the configured services' own sockets for good, their loops stopped first (the
    /// kept duplicates would otherwise leave the kernel queueing new clients): a stopping
    /// gateway refuses them. Waits for a reload in progress.
    pub async fn close_sockets(&self) {
        let mut now = self.0.state.lock().await;
        for running in &mut now.running {
            for mut own in running.sockets.drain(..) {
                own.stop().await;
            }
        }
    }

    /// Where a service a reload added, moved or removed listens first: `None` for one no
    /// reload touched (the app knows from its start), `Some(None)` for one removed.
    pub fn listen_addr(&self, service: &str) -> Option<Option<SocketAddr>> {
        let listening = self.0.listening.lock().unwrap_or_else(|e| e.into_inner());
        listening
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, addr)| *addr)
    }

    /// Notes where the services a reload touched listen now.
    fn note_addresses(&self, now: &Now, report: &Report) {
        let mut listening = self.0.listening.lock().unwrap_or_else(|e| e.into_inner());
        let touched = report
            .added
            .iter()
            .chain(
                report
                    .changed
                    .iter()
                    .filter(|c| c.change.listeners)
                    .map(|c| &c.name),
            )
            .chain(report.removed.iter().map(|r| &r.name));
        for name in touched {
            let first = now
                .running
                .iter()
                .find(|r| &r.config.name == name)
                .and_then(|r| {
                    let mut own = r.sockets.iter();
                    r.config.listeners.first().map(|l| match l {
                        Listen::Http(_) | Listen::Minecraft(_) => l.bind(),
                        _ => own.next().map_or(l.bind(), |o| o.addr),
                    })
                });
            listening.retain(|(n, _)| n != name);
            listening.push((name.clone(), first));
        }
    }

    /// Reads the file again and applies what changed; `keep_running` leaves the backends of
    /// removed services running. Every outcome is logged and recorded as an event.
    pub async fn reload(&self, keep_running: bool, by: &str) -> Result<Report, Refusal> {
        let mut now = self.0.state.lock().await;
        let path = self.0.path.as_ref().map(|p| p.display().to_string());
        let outcome = self.apply(&mut now, keep_running, by).await;
        let from = path.as_deref().unwrap_or("(no file)");
        let (kind, reason) = match &outcome {
            Ok(report) => {
                info!(file = %from, %by, "Config reloaded: {}.", report.summary());
                (
                    Kind::Action,
                    format!("config reloaded from {from} by {by}: {}", report.summary()),
                )
            }
            Err(refusal) => {
                warn!(file = %from, %by, "Config reload refused; nothing was changed:\n{refusal}");
                (
                    Kind::Warning,
                    format!("config reload by {by} failed, nothing was changed: {refusal}"),
                )
            }
        };
        let detail = match &outcome {
            Ok(report) => serde_json::to_value(report).unwrap_or_default(),
            Err(Refusal::Invalid { problems, .. }) => serde_json::json!({
                "problems": problems.iter().map(problem_json).collect::<Vec<_>>()
            }),
            Err(_) => serde_json::Value::Null,
        };
        let event = NewEvent {
            kind,
            state: State::Awake,
            reason,
            detail,
        };
        self.0
            .with
            .store
            .record(GATEWAY, event, crate::store::now(), None);
        if let Ok(report) = &outcome {
            self.note_addresses(&now, report);
        }
        outcome
    }

    async fn apply(&self, now: &mut Now, keep: bool, by: &str) -> Result<Report, Refusal> {
        let with = &self.0.with;
        if with.stop.is_cancelled() {
            return Err(Refusal::ShuttingDown);
        }
        let Some(path) = &self.0.path else {
            return Err(Refusal::Cannot(
                "this gateway was not started from a config file".into(),
            ));
        };
        let new = crate::config::load(path).map_err(|e| match e {
            ConfigError::Invalid { ref problems, .. } => Refusal::Invalid {
                problems: problems.clone(),
                message: e.to_string(),
            },
            e @ ConfigError::Read { .. } => Refusal::Invalid {
                message: e.to_string(),
                problems: Vec::new(),
            },
        })?;
        let keys = diff::gateway_wide(&now.config.source, &new.source);
        if !keys.is_empty() {
            return Err(Refusal::Restart(keys));
        }
        for warning in new.warnings() {
            warn!("{warning}");
        }
        let plan = diff::plan(&now.config, &new);
        let config_of = |name: &str| new.services.iter().find(|s| s.name == name).unwrap();
        // Everything that can fail, before anything changes: names, shared sockets, binds.
        for name in &plan.added {
            if with.registry.get(name).is_some() {
                return Err(Refusal::Cannot(format!(
                    "service `{name}` cannot be added: a service created from a template or discovered from a container has that name"
                )));
            }
        }
        check_tls(&now.config, &new)?;
        let mut sockets = self.bind(now, &new, &plan).await?;

        let mut report = Report {
            unchanged: plan.unchanged.len(),
            ..Report::default()
        };
        // Removed: no new client reaches them from here on; their backends are stopped last.
        let mut leaving = Vec::new();
        for name in &plan.removed {
            let Some(at) = now.running.iter().position(|r| &r.config.name == name) else {
                continue;
            };
            let mut running = now.running.remove(at);
            // Closed now (those taken over stay open): a client is refused, not left waiting
            // in a queue nobody accepts from while the backend stops.
            for mut own in std::mem::take(&mut running.sockets) {
                own.stop().await;
            }
            launch::unroute(with, name);
            leaving.push(running);
        }
        for (name, change) in &plan.changed {
            let config = config_of(name);
            let Some(running) = now.running.iter_mut().find(|r| &r.config.name == name) else {
                continue;
            };
            let fresh = sockets.remove(name);
            self.change(running, config, *change, fresh, by).await;
            report.changed.push(Changed {
                name: name.clone(),
                change: *change,
            });
        }
        for name in &plan.added {
            let config = config_of(name);
            let cancel = with.stop.child_token();
            let health = cancel.child_token();
            let handle = launch::spawn(with, config, &cancel, &health);
            launch::route(with, config, &handle);
            let mut own = sockets.remove(name).unwrap_or_default();
            for socket in &mut own {
                socket.serve(&handle, &with.connections, &self.0.accepting);
            }
            launch::event(
                with,
                name,
                Kind::Action,
                format!("added to wakegate by a config reload ({by})"),
                serde_json::Value::Null,
            );
            info!(service = %name, "Service added by the reload.");
            now.running.push(Running {
                config: config.clone(),
                handle,
                cancel,
                health,
                sockets: own,
            });
            report.added.push(name.clone());
        }
        // In the new file's order.
        now.running.sort_by_key(|r| {
            new.services
                .iter()
                .position(|s| s.name == r.config.name)
                .unwrap_or(usize::MAX)
        });
        now.config = new;
        drop(sockets);
        let ends = leaving.into_iter().map(|running| {
            let name = running.config.name.clone();
            report.removed.push(Removed {
                name: name.clone(),
                kept_running: keep,
            });
            self.remove(running, keep, by)
        });
        futures_util::future::join_all(ends).await;
        Ok(report)
    }

    /// Binds the own sockets the new config adds, taking over those of the same bind from the
    /// services removed or changed; checks that the shared sockets it routes on exist.
    async fn bind(
        &self,
        now: &Now,
        new: &Config,
        plan: &Plan,
    ) -> Result<std::collections::HashMap<String, Vec<Own>>, Refusal> {
        let rebound: Vec<&String> = plan
            .changed
            .iter()
            .filter(|(_, c)| c.listeners)
            .map(|(n, _)| n)
            .chain(&plan.added)
            .collect();
        // The sockets that may be taken over: those of the services that let go of theirs.
        let pool: Vec<(&str, &Own)> = now
            .running
            .iter()
            .filter(|r| rebound.contains(&&r.config.name) || plan.removed.contains(&r.config.name))
            .flat_map(|r| r.sockets.iter().map(|o| (r.config.name.as_str(), o)))
            .collect();
        let mut taken = vec![false; pool.len()];
        let mut sockets = std::collections::HashMap::new();
        for name in rebound {
            let config = new.services.iter().find(|s| &s.name == name).unwrap();
            let mut own = Vec::new();
            for listen in &config.listeners {
                if let Listen::Http(_) | Listen::Minecraft(_) = listen {
                    let bind = listen.bind();
                    let open = match listen {
                        Listen::Http(_) => self.0.with.shared.http(bind).is_some(),
                        _ => self.0.with.shared.minecraft(bind).is_some(),
                    };
                    if !open || bind.port() == 0 {
                        return Err(Refusal::Cannot(format!(
                            "service `{name}`: no shared socket is open on {bind}; a reload adds hostnames only on the http and minecraft sockets wakegate already has, restart wakegate to open a new one"
                        )));
                    }
                    continue;
                }
                let bind = listen.bind();
                let reuse = pool.iter().enumerate().find_map(|(i, (owner, o))| {
                    let fits = !taken[i] && (bind.port() != 0 || owner == name);
                    fits.then(|| o.reuse(listen).map(|o| (i, o))).flatten()
                });
                match reuse {
                    Some((i, o)) => {
                        taken[i] = true;
                        own.push(o);
                    }
                    None => own.push(Own::bind(listen, name).await.map_err(Refusal::Cannot)?),
                }
            }
            sockets.insert(name.clone(), own);
        }
        Ok(sockets)
    }

    /// Applies a change to a running service.
    async fn change(
        &self,
        running: &mut Running,
        config: &Service,
        change: Change,
        fresh: Option<Vec<Own>>,
        by: &str,
    ) {
        let with = &self.0.with;
        let name = config.name.clone();
        let sockets = match fresh {
            Some(fresh) => {
                // The old sockets close once their loops let go (those taken over stay open).
                for own in &mut running.sockets {
                    own.stop().await;
                }
                std::mem::replace(&mut running.sockets, fresh)
            }
            None => Vec::new(),
        };
        drop(sockets);
        let what = change.describe();
        if change.backend {
            for own in &mut running.sockets {
                own.stop().await;
            }
            launch::unroute(with, &name);
            // Never two actors on one server: the old backend stops before the new actor
            // looks at what runs. Clients wait in the sockets' queues meanwhile.
            launch::event(
                with,
                &name,
                Kind::Action,
                format!(
                    "config reloaded ({by}): {what} changed; the backend is stopped and its actor replaced"
                ),
                serde_json::Value::Null,
            );
            launch::stop(&running.handle, "a config reload", STOP_WAIT).await;
            running.cancel.cancel();
            if tokio::time::timeout(STOP_WAIT, running.handle.finished())
                .await
                .is_err()
            {
                warn!(service = %name, "The replaced actor did not finish in time.");
            }
            with.registry.remove(&name);
            running.cancel = with.stop.child_token();
            running.health = running.cancel.child_token();
            running.handle = launch::spawn(with, config, &running.cancel, &running.health);
            launch::route(with, config, &running.handle);
            for own in &mut running.sockets {
                own.serve(&running.handle, &with.connections, &self.0.accepting);
            }
            info!(service = %name, changed = %what, "Service re-created by the reload.");
        } else {
            if running.handle.reconfigure(config).await.is_err() {
                warn!(service = %name, "The service's actor has stopped; its new policies are not applied.");
            }
            running.health.cancel();
            running.health = running.cancel.child_token();
            crate::health::spawn_for(config, &running.handle, &with.tracker, &running.health);
            if change.listeners {
                launch::unroute(with, &name);
                launch::route(with, config, &running.handle);
                for own in &mut running.sockets {
                    own.serve(&running.handle, &with.connections, &self.0.accepting);
                }
            }
            let reason = if change.listeners {
                let at: Vec<String> = config
                    .listeners
                    .iter()
                    .map(|l| l.bind().to_string())
                    .collect();
                format!(
                    "config reloaded ({by}): {what} changed, applied to the running service; it now listens on {}",
                    at.join(", ")
                )
            } else {
                format!("config reloaded ({by}): {what} changed, applied to the running service")
            };
            launch::event(with, &name, Kind::Action, reason, serde_json::Value::Null);
            info!(service = %name, changed = %what, "Service changed by the reload.");
        }
        running.config = config.clone();
    }

    /// Ends a removed service: its backend stopped (and what it made beside it removed), or
    /// left running with `keep`.
    async fn remove(&self, running: Running, keep: bool, by: &str) {
        let with = &self.0.with;
        let name = running.config.name.clone();
        let handle = running.handle;
        if keep {
            launch::event(
                with,
                &name,
                Kind::Action,
                format!(
                    "removed from the config ({by}); its backend is left running (keep_running)"
                ),
                serde_json::Value::Null,
            );
            handle.detach();
        } else {
            launch::event(
                with,
                &name,
                Kind::Action,
                format!("removed from the config ({by}); its backend is stopped"),
                serde_json::Value::Null,
            );
            launch::stop(&handle, "a config reload", STOP_WAIT).await;
            handle.retire();
        }
        launch::finish(with, &name, Some(handle), &running.cancel, STOP_WAIT).await;
        info!(service = %name, kept_running = keep, "Service removed by the reload.");
    }
}

/// A reload cannot change the certificates of an open `http` socket: they are read at start.
fn check_tls(old: &Config, new: &Config) -> Result<(), Refusal> {
    let tls = |config: &Config| {
        let mut all: Vec<(SocketAddr, String)> = config
            .services
            .iter()
            .flat_map(|s| s.listeners.iter())
            .filter_map(|l| match l {
                Listen::Http(h) => h.tls.as_ref().map(|t| (h.bind, format!("{t:?}"))),
                _ => None,
            })
            .collect();
        all.sort();
        all
    };
    let (was, is) = (tls(old), tls(new));
    match is
        .iter()
        .chain(&was)
        .find(|x| !(was.contains(x) && is.contains(x)))
    {
        Some((bind, _)) => Err(Refusal::Cannot(format!(
            "the TLS certificates of the http socket on {bind} changed; they are read at start: restart wakegate to apply them"
        ))),
        None => Ok(()),
    }
}

/// A problem as the API and the event show it.
pub fn problem_json(p: &Problem) -> serde_json::Value {
    serde_json::json!({
        "line": p.line,
        "column": p.column,
        "message": p.message,
        "hint": p.hint,
    })
}
