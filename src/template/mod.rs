//! Services created from a `[[template]]` at run time, and ended at their deadline, by
//! `destroy`, or (`end_when_idle`) once they go to sleep. [`Templates`] creates each one's
//! actor, health tasks and `tcp` listener beside the configured services (through
//! [`crate::launch`]), adds it to the [`Registry`](crate::service::Registry) the API reads, and keeps its record in the store, so a restart of wakegate
//! creates it again (its actor then reconciles and adopts what runs).

pub mod config;
pub mod lifetime;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::config::{Template, Values, valid_name};
use crate::event::{Kind, State};
use crate::launch;
use crate::service::ServiceHandle;
use crate::store::{Created, Store};

/// How long an end waits for the backend to stop before it records the service ended anyway.
const STOP_WAIT: Duration = Duration::from_secs(600);

/// Why a create, destroy or extend was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("no template is named `{0}`; GET /api/v1/templates lists them")]
    NoSuchTemplate(String),
    #[error("no created service is named `{0}`; GET /api/v1/services lists them")]
    NoSuchService(String),
    #[error("{0}")]
    BadRequest(String),
    /// The name is taken, or the service is a configured one, or it is already ending.
    #[error("{0}")]
    Conflict(String),
    /// `max_per_owner` or `max_total` reached, or no port is left.
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Store(String),
    #[error("cannot create the service: {0}")]
    Start(String),
}

/// A created service as the API shows it beside its state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedView {
    /// Its record's id in the store.
    #[serde(skip)]
    pub id: i64,
    pub template: String,
    pub owner: String,
    #[serde(serialize_with = "crate::event::rfc3339")]
    pub created: SystemTime,
    #[serde(serialize_with = "crate::event::rfc3339")]
    pub deadline: SystemTime,
    pub port: Option<u16>,
    pub backend_port: Option<u16>,
    /// Where its listeners are bound.
    pub listen: Vec<SocketAddr>,
}

/// A template as `GET /api/v1/templates` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TemplateView {
    pub name: String,
    pub lifetime_s: u64,
    pub max_lifetime_s: Option<u64>,
    pub end_when_idle: bool,
    pub max_per_owner: Option<usize>,
    pub max_total: Option<usize>,
    /// Its created services not ended.
    pub live: Vec<String>,
}

/// One created service that has not ended.
struct Live {
    record: Created,
    /// Ends its actor, health tasks, deadline task and listeners.
    cancel: CancellationToken,
    /// Ends its listeners only (first, when it ends).
    listening: CancellationToken,
    deadline: watch::Sender<tokio::time::Instant>,
    listen: Vec<SocketAddr>,
    /// An end is under way.
    ending: bool,
    /// Not started yet (the name and ports are reserved).
    starting: bool,
}

/// What created services are run with (see [`crate::launch`]).
pub use crate::launch::Wiring;

/// The templates, and the services created from them.
#[derive(Clone)]
pub struct Templates(Arc<Inner>);

struct Inner {
    templates: Vec<Template>,
    with: Wiring,
    live: Mutex<HashMap<String, Live>>,
}

impl Templates {
    pub fn new(templates: Vec<Template>, with: Wiring) -> Templates {
        Templates(Arc::new(Inner {
            templates,
            with,
            live: Mutex::new(HashMap::new()),
        }))
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.0.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn template(&self, name: &str) -> Result<&Template, TemplateError> {
        self.0
            .templates
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| TemplateError::NoSuchTemplate(name.to_string()))
    }

    /// The templates and their live services.
    pub fn list(&self) -> Vec<TemplateView> {
        let live = self.live();
        self.0
            .templates
            .iter()
            .map(|t| {
                let mut names: Vec<String> = live
                    .values()
                    .filter(|l| l.record.template == t.name)
                    .map(|l| l.record.name.clone())
                    .collect();
                names.sort();
                TemplateView {
                    name: t.name.clone(),
                    lifetime_s: t.lifetime.as_secs(),
                    max_lifetime_s: t.max_lifetime.map(|d| d.as_secs()),
                    end_when_idle: t.end_when_idle,
                    max_per_owner: t.max_per_owner,
                    max_total: t.max_total,
                    live: names,
                }
            })
            .collect()
    }

    /// What a created service adds to its view; `None` for a configured one.
    pub fn view(&self, name: &str) -> Option<CreatedView> {
        self.live().get(name).map(|l| CreatedView {
            id: l.record.id,
            template: l.record.template.clone(),
            owner: l.record.owner.clone(),
            created: l.record.created,
            deadline: l.record.deadline,
            port: l.record.port,
            backend_port: l.record.backend_port,
            listen: l.listen.clone(),
        })
    }

    /// The names of the live created services (not starting or ending).
    pub fn live_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .live()
            .values()
            .filter(|l| !l.starting && !l.ending)
            .map(|l| l.record.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The store the created services are kept in (for what other parts keep beside them).
    pub fn store(&self) -> Arc<Store> {
        self.0.with.store.clone()
    }

    /// The template names, in config order.
    pub fn names(&self) -> Vec<String> {
        self.0.templates.iter().map(|t| t.name.clone()).collect()
    }

    /// The template a live created service was made from.
    pub fn template_of(&self, name: &str) -> Option<String> {
        self.live().get(name).map(|l| l.record.template.clone())
    }

    /// Creates the services of the store's live records again (at start-up); each then
    /// reconciles like any other service.
    pub async fn restore(&self) -> anyhow::Result<Vec<ServiceHandle>> {
        let store = self.0.with.store.clone();
        let records = store.read(|s| s.live_created()).await?;
        let mut handles = Vec::new();
        for record in records {
            let Ok(template) = self.template(&record.template) else {
                warn!(service = %record.name, template = %record.template, "This created service's template is no longer configured: it is not run. Put the [[template]] back to run it (and end it) again.");
                continue;
            };
            let template = template.clone();
            let name = record.name.clone();
            if self.0.with.registry.get(&name).is_some() {
                warn!(service = %name, "A created service has the name of a configured service: it is not run.");
                continue;
            }
            self.reserve(record.clone());
            match self.start(&template, record).await {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    self.live().remove(&name);
                    warn!(service = %name, error = %e, "Cannot create this service again.");
                }
            }
        }
        Ok(handles)
    }

    /// Creates a service from a template: `name` (or one made from the template's name),
    /// owned by `owner`.
    pub async fn create(
        &self,
        template: &str,
        name: Option<String>,
        owner: &str,
        by: &str,
    ) -> Result<ServiceHandle, TemplateError> {
        let template = self.template(template)?.clone();
        let now = crate::store::now();
        let record = {
            let live = self.live();
            let name = match name {
                Some(name) => {
                    if !valid_name(&name) {
                        return Err(TemplateError::BadRequest(format!(
                            "service name `{name}` is not allowed: names use only a-z, 0-9 and '-' (at most 63)"
                        )));
                    }
                    if live.contains_key(&name) || self.0.with.registry.get(&name).is_some() {
                        return Err(TemplateError::Conflict(format!(
                            "a service named `{name}` exists already; choose another name"
                        )));
                    }
                    name
                }
                None => (1..)
                    .map(|n| format!("{}-{n}", template.name))
                    .find(|n| !live.contains_key(n) && self.0.with.registry.get(n).is_none())
                    .expect("a free name"),
            };
            let of_template = live.values().filter(|l| l.record.template == template.name);
            if let Some(max) = template.max_total
                && of_template.clone().count() >= max
            {
                return Err(TemplateError::Limit(format!(
                    "template `{}` has its {max} services already (max_total); destroy one first",
                    template.name
                )));
            }
            if let Some(max) = template.max_per_owner
                && of_template.filter(|l| l.record.owner == owner).count() >= max
            {
                return Err(TemplateError::Limit(format!(
                    "`{owner}` has {max} services of template `{}` already (max_per_owner); destroy one first",
                    template.name
                )));
            }
            // Free: not given to another created service, and no other program listens on it.
            let taken = |port: u16, also: Option<u16>| {
                also == Some(port)
                    || live.values().any(|l| {
                        let r = &l.record;
                        r.port == Some(port) || r.backend_port == Some(port)
                    })
                    || std::net::TcpListener::bind(("0.0.0.0", port)).is_err()
            };
            let allocate = |range: &Option<std::ops::RangeInclusive<u16>>,
                            also: Option<u16>,
                            key: &str|
             -> Result<Option<u16>, TemplateError> {
                let Some(range) = range else { return Ok(None) };
                range
                    .clone()
                    .find(|p| !taken(*p, also))
                    .map(Some)
                    .ok_or_else(|| {
                        TemplateError::Limit(format!(
                            "every port of template `{}`'s {key} ({}-{}) is in use; destroy a service or widen the range",
                            template.name,
                            range.start(),
                            range.end()
                        ))
                    })
            };
            let port = allocate(&template.ports, None, "ports")?;
            // The two ranges may overlap.
            let backend_port = allocate(&template.backend_ports, port, "backend_ports")?;
            Created {
                id: 0,
                name,
                template: template.name.clone(),
                owner: owner.to_string(),
                created: now,
                deadline: now + template.lifetime,
                ended: None,
                end_reason: None,
                port,
                backend_port,
            }
        };
        let name = record.name.clone();
        self.reserve(record.clone());
        let stored = match self.0.with.store.save_created(&record).await {
            Ok(id) => Created { id, ..record },
            Err(e) => {
                self.live().remove(&name);
                return Err(TemplateError::Store(format!(
                    "cannot record the service: {e}"
                )));
            }
        };
        let handle = match self.start(&template, stored.clone()).await {
            Ok(handle) => handle,
            Err(e) => {
                self.live().remove(&name);
                let ended = Created {
                    ended: Some(crate::store::now()),
                    end_reason: Some(format!("could not be created: {e}")),
                    ..stored
                };
                if let Err(e) = self.0.with.store.save_created(&ended).await {
                    warn!(service = %name, error = %e, "Cannot record that this service was not created.");
                }
                return Err(e);
            }
        };
        self.event(
            &name,
            Kind::Action,
            format!(
                "created from template {} for {owner} by {by}; it ends at {}",
                template.name,
                crate::event::format_time(stored.deadline)
            ),
        );
        info!(service = %name, template = %template.name, %owner, "Created a service.");
        Ok(handle)
    }

    /// Reserves a record's name and ports before it is started.
    fn reserve(&self, record: Created) {
        let (deadline, _) = watch::channel(tokio::time::Instant::now());
        let cancel = self.0.with.stop.child_token();
        let listening = cancel.child_token();
        self.live().insert(
            record.name.clone(),
            Live {
                record,
                cancel,
                listening,
                deadline,
                listen: Vec::new(),
                ending: false,
                starting: true,
            },
        );
    }

    /// Binds the listeners, then starts the actor, its health tasks, its deadline task and
    /// (once it has reconciled) its listeners.
    async fn start(
        &self,
        template: &Template,
        record: Created,
    ) -> Result<ServiceHandle, TemplateError> {
        let values = Values {
            name: record.name.clone(),
            port: record.port,
            backend_port: record.backend_port,
        };
        let config = template.service(&values).map_err(TemplateError::Start)?;
        let inner = &self.0;
        let sockets = launch::bind(
            &config,
            &inner.with.shared,
            "restart wakegate after changing the template",
        )
        .await
        .map_err(TemplateError::Start)?;
        let (cancel, listening, deadline) = {
            let mut live = self.live();
            let entry = live
                .get_mut(&record.name)
                .ok_or_else(|| TemplateError::Start("it was ended while it started".into()))?;
            entry.listen = sockets.listen.clone();
            entry.starting = false;
            entry.record = record.clone();
            entry.deadline.send_replace(to_instant(record.deadline));
            (
                entry.cancel.clone(),
                entry.listening.clone(),
                entry.deadline.subscribe(),
            )
        };
        let handle = launch::launch(&inner.with, &config, sockets, &cancel, &listening);
        // The deadline, and its warnings.
        let (this, name, warnings) = (self.clone(), record.name.clone(), template.warnings.clone());
        let warned = handle.clone();
        let stop = cancel.clone();
        inner.with.tracker.spawn(async move {
            let reached = tokio::select! {
                reached = lifetime::run(deadline, &warnings, |left| {
                    let reason = format!(
                        "ends in {} (its deadline); extend it to keep it",
                        humantime::format_duration(Duration::from_secs(left.as_secs()))
                    );
                    this.event(warned.name(), Kind::Warning, reason);
                }) => reached,
                () = stop.cancelled() => false,
            };
            if reached && let Err(e) = this.end(&name, "its deadline passed", "its deadline").await
            {
                warn!(service = %name, error = %e, "Cannot end this service at its deadline.");
            }
        });
        if template.end_when_idle {
            let (this, name, mut status) = (self.clone(), record.name.clone(), handle.watch());
            let stop = cancel.clone();
            inner.with.tracker.spawn(async move {
                let asleep_after_use = async {
                    let _ = status.wait_for(|s| s.state == State::Awake).await;
                    status.wait_for(|s| s.state == State::Asleep).await.is_ok()
                };
                let slept = tokio::select! {
                    slept = asleep_after_use => slept,
                    () = stop.cancelled() => false,
                };
                if slept
                    && let Err(e) = this
                        .end(&name, "it went to sleep (end_when_idle)", "end_when_idle")
                        .await
                {
                    warn!(service = %name, error = %e, "Cannot end this service once asleep.");
                }
            });
        }
        Ok(handle)
    }

    /// Ends a created service: its listeners close, its backend is stopped, it leaves the
    /// registry and its record is marked ended (kept for history).
    pub async fn end(&self, name: &str, why: &str, by: &str) -> Result<Created, TemplateError> {
        // A service that stops because wakegate does has not ended: the next start runs it.
        if self.0.with.stop.is_cancelled() {
            return Err(TemplateError::Conflict("wakegate is shutting down".into()));
        }
        let (record, cancel, listening) = {
            let mut live = self.live();
            let Some(entry) = live.get_mut(name) else {
                return Err(if self.0.with.registry.get(name).is_some() {
                    TemplateError::Conflict(format!(
                        "service `{name}` is configured, not created from a template; only created services can be destroyed (remove it from the config instead)"
                    ))
                } else {
                    TemplateError::NoSuchService(name.to_string())
                });
            };
            if entry.ending || entry.starting {
                return Err(TemplateError::Conflict(format!(
                    "service `{name}` is being created or ended already"
                )));
            }
            entry.ending = true;
            (
                entry.record.clone(),
                entry.cancel.clone(),
                entry.listening.clone(),
            )
        };
        launch::unlisten(&self.0.with, name, &listening);
        let handle = self.0.with.registry.get(name);
        if let Some(handle) = &handle {
            self.event(name, Kind::Action, format!("ending: {why} ({by})"));
            launch::stop(handle, by, STOP_WAIT).await;
        }
        // Its actor has the backend remove what it made beside the server (a DNS record).
        launch::finish(&self.0.with, name, handle, &cancel, STOP_WAIT).await;
        let ended = Created {
            ended: Some(crate::store::now()),
            end_reason: Some(why.to_string()),
            ..record
        };
        self.live().remove(name);
        self.event_with(
            name,
            Kind::Progress,
            format!("ended: {why}; its record is kept"),
            crate::event::Detail::fact(crate::event::Fact::Ended {
                ended: why.to_string(),
            })
            .to_value(),
        );
        info!(service = %name, reason = %why, "Ended a created service.");
        self.0
            .with
            .store
            .save_created(&ended)
            .await
            .map_err(|e| TemplateError::Store(format!("cannot record the end: {e}")))?;
        Ok(ended)
    }

    /// Moves a created service's deadline `by` later, within its template's `max_lifetime`.
    pub async fn extend(
        &self,
        name: &str,
        duration: Duration,
        by: &str,
    ) -> Result<Created, TemplateError> {
        let record = {
            let live = self.live();
            let Some(entry) = live.get(name) else {
                return Err(if self.0.with.registry.get(name).is_some() {
                    TemplateError::Conflict(format!(
                        "service `{name}` is configured, not created from a template; it has no deadline"
                    ))
                } else {
                    TemplateError::NoSuchService(name.to_string())
                });
            };
            let template = self.template(&entry.record.template)?;
            let deadline = entry.record.deadline + duration;
            if let Some(max) = template.max_lifetime
                && deadline > entry.record.created + max
            {
                return Err(TemplateError::BadRequest(format!(
                    "that would take `{name}` past its template's max_lifetime ({}): it can run until {} at most",
                    humantime::format_duration(max),
                    crate::event::format_time(entry.record.created + max)
                )));
            }
            Created {
                deadline,
                ..entry.record.clone()
            }
        };
        self.0
            .with
            .store
            .save_created(&record)
            .await
            .map_err(|e| TemplateError::Store(format!("cannot record the new deadline: {e}")))?;
        {
            let mut live = self.live();
            let Some(entry) = live.get_mut(name) else {
                return Err(TemplateError::NoSuchService(name.to_string()));
            };
            entry.record.deadline = record.deadline;
            entry.deadline.send_replace(to_instant(record.deadline));
        }
        self.event(
            name,
            Kind::Action,
            format!(
                "deadline extended by {} to {} by {by}",
                humantime::format_duration(duration),
                crate::event::format_time(record.deadline)
            ),
        );
        Ok(record)
    }

    /// Records an event of a created service in its current state.
    fn event(&self, name: &str, kind: Kind, reason: String) {
        self.event_with(name, kind, reason, serde_json::Value::Null);
    }

    fn event_with(&self, name: &str, kind: Kind, reason: String, detail: serde_json::Value) {
        launch::event(&self.0.with, name, kind, reason, detail);
    }
}

/// The instant (on tokio's clock) of a wall-clock time.
fn to_instant(time: SystemTime) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match time.duration_since(SystemTime::now()) {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}
