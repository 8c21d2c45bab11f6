//! `docker` backend: a container, through the Docker Engine API (Docker, or Podman's
//! Docker-compatible socket), selected by name or labels. A wake starts it (or unpauses it);
//! a sleep stops it with a timeout, pauses it, or removes it. With an `image` it is created
//! when missing, carrying the [`CREATED_LABEL`](config::CREATED_LABEL). Its address is read on
//! every wake; an exit while awake comes from the engine's event stream, not from polling.

pub mod config;
pub mod engine;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HealthStatusEnum, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use self::config::{Address, CREATED_LABEL, Create, Docker, Select};
use self::engine::{Engine, Events, Run, describe, name_of, run_state};
use crate::backend::{Backend, BackendError, Exit, Health, Note, Notes, SleepMode, Status};
use crate::event::Kind;

/// How many lines of a container's log an exit carries.
const LOG_LINES: usize = 20;
/// How long the event stream waits before it is opened again after the engine dropped it.
const REOPEN_WAIT: Duration = Duration::from_secs(1);

pub struct DockerBackend {
    service: String,
    config: Docker,
    engine: Option<Engine>,
    /// The event stream of the container that runs, opened by `exited`.
    watch: Option<Watch>,
    /// How the container sleeps since the last stop.
    slept: SleepMode,
    /// The time of the last exit event `exited` looked into.
    looked_into: i128,
    notes: Notes,
    notes_rx: Option<mpsc::UnboundedReceiver<Note>>,
}

/// The event stream of one running container.
struct Watch {
    events: Events,
    /// When the container started: an exit replayed from before is an earlier run's.
    started: i128,
}

/// What a look for the container found.
enum Lookup {
    Found(Box<ContainerInspectResponse>),
    /// None matches: why, in words.
    Missing(String),
    /// More than one matches: which.
    Ambiguous(String),
}

impl DockerBackend {
    pub fn new(service: &str, config: Docker) -> DockerBackend {
        let (notes, notes_rx) = mpsc::unbounded_channel();
        DockerBackend {
            service: service.to_string(),
            slept: if config.pause {
                SleepMode::Paused
            } else {
                SleepMode::Stopped
            },
            config,
            engine: None,
            watch: None,
            looked_into: 0,
            notes,
            notes_rx: Some(notes_rx),
        }
    }

    /// The API, connected on first use (and again after a failure to reach it).
    async fn engine(&mut self) -> Result<&Engine, BackendError> {
        if self.engine.is_none() {
            // A stop may take its whole timeout before the engine answers.
            let timeout = self.config.stop_timeout + Duration::from_secs(60);
            let engine = engine::connect(self.config.socket.as_deref(), timeout)
                .await
                .map_err(BackendError::Other)?;
            self.engine = Some(engine);
        }
        Ok(self.engine.as_ref().unwrap())
    }

    /// An API call failed: the message says where the API is, and the connection is made
    /// again next time (the engine may have restarted).
    fn failed(&mut self, what: &str, e: &bollard::errors::Error) -> BackendError {
        let at = self
            .engine
            .take()
            .map_or_else(|| "the Docker API".to_string(), |e| e.at);
        BackendError::Other(format!(
            "cannot {what}: {} (Docker API at {at})",
            describe(e)
        ))
    }

    /// Logs a step done to the container and records it as a progress note.
    fn step(&self, container: &str, step: &str) {
        info!(service = %self.service, container = %container, "Container {step}.");
        self.note(
            Kind::Progress,
            format!("container {container} {step}"),
            json!({ "container": container, "step": step }),
        );
    }

    fn note(&self, kind: Kind, reason: String, detail: serde_json::Value) {
        let _ = self.notes.send(Note {
            kind,
            reason,
            detail,
        });
    }

    /// Looks the container up by its name or its labels.
    async fn lookup(&mut self) -> Result<Lookup, BackendError> {
        let select = self.config.select.clone();
        let client = self.engine().await?.client.clone();
        let id = match &select {
            Select::Name(name) => name.clone(),
            Select::Labels(_) | Select::Created => {
                let filters = HashMap::from([("label".to_string(), self.label_filter())]);
                let found = match engine::list(&client, filters).await {
                    Ok(found) => found,
                    Err(e) => return Err(self.failed("list containers", &e)),
                };
                match found.as_slice() {
                    [one] => one.id.clone().unwrap_or_default(),
                    [] => {
                        return Ok(Lookup::Missing(format!(
                            "no container matches: {select} was not found"
                        )));
                    }
                    many => {
                        let list: Vec<String> = many
                            .iter()
                            .map(|c| {
                                let name = c
                                    .names
                                    .as_ref()
                                    .and_then(|n| n.first())
                                    .map_or("?", |n| n.trim_start_matches('/'));
                                let state = c.state.map_or_else(|| "?".into(), |s| s.to_string());
                                format!("{name} ({state})")
                            })
                            .collect();
                        return Ok(Lookup::Ambiguous(format!(
                            "{} containers match where one must: {select} found {}; add a label that tells them apart, or select it by `container` name",
                            many.len(),
                            list.join(", ")
                        )));
                    }
                }
            }
        };
        match engine::inspect(&client, &id).await {
            Ok(info) => Ok(Lookup::Found(Box::new(info))),
            Err(e) if engine::not_found(&e) => Ok(Lookup::Missing(format!(
                "no container matches: {select} does not exist"
            ))),
            Err(e) => Err(self.failed(&format!("inspect {select}"), &e)),
        }
    }

    /// The one container, or why there is none to act on.
    async fn find(&mut self) -> Result<Box<ContainerInspectResponse>, BackendError> {
        match self.lookup().await? {
            Lookup::Found(info) => Ok(info),
            Lookup::Missing(why) => Err(BackendError::Other(format!(
                "{why}; create it, or give the backend an `image` to create it from"
            ))),
            Lookup::Ambiguous(why) => Err(BackendError::Other(why)),
        }
    }

    /// The label filter of the selection (`key=value` each).
    fn label_filter(&self) -> Vec<String> {
        match &self.config.select {
            Select::Labels(labels) => labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            _ => vec![format!("{CREATED_LABEL}={}", self.service)],
        }
    }

    /// Creates the container from `create`; returns its id.
    async fn create(&mut self, create: &Create) -> Result<String, BackendError> {
        let mut labels: HashMap<String, String> = create.labels.iter().cloned().collect();
        if let Select::Labels(selection) = &self.config.select {
            labels.extend(selection.iter().cloned());
        }
        labels.insert(CREATED_LABEL.into(), self.service.clone());
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for port in &create.ports {
            bindings
                .entry(port.container.clone())
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: port.host_ip.clone(),
                    host_port: port.host_port.map(|p| p.to_string()),
                });
        }
        let body = ContainerCreateBody {
            image: Some(create.image.clone()),
            cmd: (!create.command.is_empty()).then(|| create.command.clone()),
            env: Some(
                create
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.expose()))
                    .collect(),
            ),
            labels: Some(labels),
            exposed_ports: Some(create.ports.iter().map(|p| p.container.clone()).collect()),
            host_config: Some(HostConfig {
                binds: (!create.volumes.is_empty()).then(|| create.volumes.clone()),
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                network_mode: create.network.clone(),
                init: create.init.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = match &self.config.select {
            Select::Name(name) => Some(name.clone()),
            _ => None,
        };
        let options = CreateContainerOptions {
            name: name.clone(),
            ..Default::default()
        };
        let client = self.engine().await?.client.clone();
        let created = match client.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) if engine::not_found(&e) => {
                return Err(BackendError::Other(format!(
                    "cannot create the container: {}; is image `{}` on this host? wakegate does not pull images: pull it first (`docker pull {}`)",
                    describe(&e),
                    create.image,
                    create.image
                )));
            }
            Err(e) => return Err(self.failed("create the container", &e)),
        };
        let shown = name.unwrap_or_else(|| engine::short(&created.id).to_string());
        info!(service = %self.service, container = %shown, image = %create.image, "Container created.");
        self.note(
            Kind::Progress,
            format!("created container {shown} from image {}", create.image),
            json!({ "container": shown, "image": create.image, "step": "created" }),
        );
        Ok(created.id)
    }

    /// Removes a container (stopped, or killed if it still runs); one already gone is fine.
    async fn remove_container(&mut self, id: &str, name: &str) -> Result<(), BackendError> {
        let client = self.engine().await?.client.clone();
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match client.remove_container(id, Some(options)).await {
            Ok(()) => {
                self.step(name, "removed");
                Ok(())
            }
            Err(e) if engine::not_found(&e) => Ok(()),
            Err(e) => Err(self.failed(&format!("remove container {name}"), &e)),
        }
    }

    /// Why a container that went away went: its exit and the last lines of its log.
    async fn exit_of(&mut self, id: &str) -> Exit {
        let Ok(client) = self.engine().await.map(|e| e.client.clone()) else {
            return Exit {
                status: "exited (the Docker API cannot be reached to say how)".into(),
                log_tail: String::new(),
            };
        };
        match engine::inspect(&client, id).await {
            Ok(info) => Exit {
                status: engine::describe_exit(&info),
                log_tail: engine::log_tail(&client, id, LOG_LINES).await,
            },
            Err(e) if engine::not_found(&e) => Exit {
                status: "removed".into(),
                log_tail: String::new(),
            },
            Err(e) => Exit {
                status: format!("exited ({})", describe(&e)),
                log_tail: String::new(),
            },
        }
    }

    /// Opens the event stream of the running container, from when it started; `Err` when it
    /// no longer runs (with why).
    async fn open_watch(&mut self) -> Result<(), Exit> {
        let info = match self.lookup().await {
            Ok(Lookup::Found(info)) => info,
            // Not found now: it was removed, or the selection changed under it.
            Ok(Lookup::Missing(why) | Lookup::Ambiguous(why)) => {
                return Err(Exit {
                    status: why,
                    log_tail: String::new(),
                });
            }
            // The engine cannot be asked: try again later, nothing is known to have exited.
            Err(e) => {
                warn!(service = %self.service, error = %e, "Cannot watch the container's events.");
                return Ok(());
            }
        };
        let id = info.id.clone().unwrap_or_default();
        // A paused container sleeps in memory: it has not exited.
        if !matches!(run_state(&info), Run::Running | Run::Paused) {
            return Err(self.exit_of(&id).await);
        }
        let client = self.engine.as_ref().map(|e| e.client.clone());
        if let Some(client) = client {
            // From its start on: an exit between the look above and the stream's opening
            // is replayed, not missed.
            let started = engine::started_at(&info).unwrap_or(0);
            let since = (started > 0).then_some((started / 1_000_000_000) as i64);
            let events = engine::events(&client, since, &[("container", id.clone())]);
            self.watch = Some(Watch { events, started });
        }
        Ok(())
    }

    /// The container that runs, to make sure a healthy answer is from this start.
    async fn running(&mut self) -> Result<Box<ContainerInspectResponse>, BackendError> {
        let info = self.find().await?;
        if run_state(&info) == Run::Running {
            return Ok(info);
        }
        let id = info.id.clone().unwrap_or_default();
        Err(BackendError::Exited {
            exit: self.exit_of(&id).await,
        })
    }
}

/// The address of a running container as `address` says to read it.
fn address_of(info: &ContainerInspectResponse, address: &Address) -> Result<String, String> {
    let name = name_of(info);
    let settings = info.network_settings.as_ref();
    match address {
        Address::Fixed(address) => Ok(address.clone()),
        Address::Network { network, port } if network == "host" => Ok(format!("127.0.0.1:{port}")),
        Address::Network { network, port } => {
            let networks = settings.and_then(|s| s.networks.as_ref());
            let ip = networks
                .and_then(|n| n.get(network))
                .and_then(|n| n.ip_address.as_deref())
                .filter(|ip| !ip.is_empty());
            match ip {
                Some(ip) if ip.contains(':') => Ok(format!("[{ip}]:{port}")),
                Some(ip) => Ok(format!("{ip}:{port}")),
                None => {
                    let mut on: Vec<&str> = networks
                        .map(|n| n.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    on.sort_unstable();
                    Err(format!(
                        "container {name} has no IP on network `{network}` (it is on: {}); attach it to `{network}`, or set `network` to one of those",
                        if on.is_empty() {
                            "none".to_string()
                        } else {
                            on.join(", ")
                        }
                    ))
                }
            }
        }
        Address::Published(port) => {
            let bindings = settings
                .and_then(|s| s.ports.as_ref())
                .and_then(|p| p.get(&format!("{port}/tcp")))
                .and_then(|b| b.as_ref());
            let found = bindings.and_then(|b| {
                b.iter().find_map(|b| {
                    let host_port = b.host_port.as_deref().filter(|p| !p.is_empty())?;
                    let ip = match b.host_ip.as_deref().unwrap_or("") {
                        "" | "0.0.0.0" => "127.0.0.1".to_string(),
                        "::" => "[::1]".to_string(),
                        ip if ip.contains(':') => format!("[{ip}]"),
                        ip => ip.to_string(),
                    };
                    Some(format!("{ip}:{host_port}"))
                })
            });
            found.ok_or_else(|| {
                format!(
                    "container {name} publishes no host port for its port {port}/tcp; publish it (`docker run -p`, or `ports` in [service.backend.create]), or set `network` to reach it by its IP"
                )
            })
        }
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn notes(&mut self) -> Option<mpsc::UnboundedReceiver<Note>> {
        self.notes_rx.take()
    }

    fn sleep_mode(&self) -> SleepMode {
        self.slept
    }

    async fn start(&mut self) -> Result<(), BackendError> {
        self.watch = None;
        let info = match self.lookup().await? {
            Lookup::Found(info) => info,
            Lookup::Missing(why) => {
                let Some(create) = self.config.create.clone() else {
                    return Err(BackendError::Other(format!(
                        "{why}; create it, or give the backend an `image` to create it from"
                    )));
                };
                let id = self.create(&create).await?;
                let client = self.engine().await?.client.clone();
                if let Err(e) = client.start_container(&id, None).await {
                    return Err(self.failed("start the container just created", &e));
                }
                self.step(engine::short(&id), "started");
                return Ok(());
            }
            Lookup::Ambiguous(why) => return Err(BackendError::Other(why)),
        };
        let (id, name) = (info.id.clone().unwrap_or_default(), name_of(&info));
        let client = self.engine().await?.client.clone();
        match run_state(&info) {
            Run::Running => {}
            Run::Paused => {
                if let Err(e) = client.unpause_container(&id).await {
                    return Err(self.failed(&format!("unpause container {name}"), &e));
                }
                self.step(&name, "unpaused");
            }
            Run::Stopped => {
                if let Err(e) = client.start_container(&id, None).await {
                    return Err(self.failed(&format!("start container {name}"), &e));
                }
                self.step(&name, "started");
            }
            Run::Removing => {
                return Err(BackendError::Other(format!(
                    "container {name} is being removed; wait until it is gone and wake the service again"
                )));
            }
        }
        Ok(())
    }

    async fn stop_for_real(&mut self) -> Result<(), BackendError> {
        // The same stop with pausing off: a paused container is resumed, then stopped.
        let pause = std::mem::replace(&mut self.config.pause, false);
        let stopped = self.stop().await;
        self.config.pause = pause;
        stopped
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        self.watch = None;
        let info = match self.lookup().await? {
            Lookup::Found(info) => info,
            // No single container: wakegate started none, there is nothing to stop.
            Lookup::Missing(why) | Lookup::Ambiguous(why) => {
                info!(service = %self.service, reason = %why, "No container to stop.");
                self.slept = SleepMode::Stopped;
                return Ok(());
            }
        };
        let (id, name) = (info.id.clone().unwrap_or_default(), name_of(&info));
        let client = self.engine().await?.client.clone();
        let state = run_state(&info);
        if self.config.pause {
            if state == Run::Running {
                if let Err(e) = client.pause_container(&id).await {
                    return Err(self.failed(&format!("pause container {name}"), &e));
                }
                self.step(&name, "paused");
            }
            self.slept = match state {
                Run::Running | Run::Paused => SleepMode::Paused,
                _ => SleepMode::Stopped,
            };
            return Ok(());
        }
        if state == Run::Paused {
            // A paused container cannot take the stop signal: it is resumed to be stopped.
            if let Err(e) = client.unpause_container(&id).await {
                return Err(self.failed(&format!("unpause container {name} to stop it"), &e));
            }
        }
        if matches!(state, Run::Running | Run::Paused) {
            let timeout = self.config.stop_timeout;
            self.note(
                Kind::Progress,
                format!(
                    "stopping container {name} (killed after {})",
                    humantime::format_duration(timeout)
                ),
                json!({ "container": name, "step": "stopping" }),
            );
            let options = StopContainerOptions {
                t: Some(timeout.as_secs().min(i32::MAX as u64) as i32),
                ..Default::default()
            };
            match client.stop_container(&id, Some(options)).await {
                Ok(()) => {}
                // Gone meanwhile: stopped all the same.
                Err(e) if engine::not_found(&e) => {}
                Err(e) => return Err(self.failed(&format!("stop container {name}"), &e)),
            }
            info!(service = %self.service, container = %name, "Container stopped.");
        }
        if self.config.remove {
            self.remove_container(&id, &name).await?;
        }
        self.slept = SleepMode::Stopped;
        Ok(())
    }

    async fn status(&mut self) -> Result<Status, BackendError> {
        Ok(match self.lookup().await? {
            Lookup::Found(info) => match run_state(&info) {
                Run::Running => Status::Running,
                Run::Paused => Status::Sleeping(SleepMode::Paused),
                Run::Stopped | Run::Removing => Status::Stopped,
            },
            Lookup::Missing(_) => Status::Stopped,
            Lookup::Ambiguous(why) => return Err(BackendError::Other(why)),
        })
    }

    async fn address(&mut self) -> Result<String, BackendError> {
        let info = self.find().await?;
        address_of(&info, &self.config.address).map_err(BackendError::Other)
    }

    async fn healthy(&mut self) -> Result<Health, BackendError> {
        let info = self.running().await?;
        let name = name_of(&info);
        let health = info.state.as_ref().and_then(|s| s.health.as_ref());
        let Some(health) = health.filter(|h| {
            !matches!(
                h.status,
                None | Some(HealthStatusEnum::NONE | HealthStatusEnum::EMPTY)
            )
        }) else {
            return Err(BackendError::Other(format!(
                "container {name} has no HEALTHCHECK; give its image one (or `--health-cmd`), or use another readiness type"
            )));
        };
        let last = health
            .log
            .as_ref()
            .and_then(|log| log.last())
            .and_then(|r| r.output.as_deref())
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| format!("; its last check said: {o}"))
            .unwrap_or_default();
        Ok(match health.status {
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(status) => Health::NotYet(format!("container {name} is {status}{last}")),
            None => Health::NotYet(format!("container {name} has no health yet")),
        })
    }

    async fn exited(&mut self) -> Exit {
        loop {
            if self.watch.is_none()
                && let Err(exit) = self.open_watch().await
            {
                return exit;
            }
            let next = match self.watch.as_mut() {
                Some(watch) => watch.events.next().await,
                // The engine could not be asked: look again in a moment.
                None => {
                    tokio::time::sleep(REOPEN_WAIT).await;
                    continue;
                }
            };
            match next {
                Some(Ok(event)) => {
                    let Some((_, action)) = engine::event_of(&event) else {
                        continue;
                    };
                    // One from before this start, or one already looked into (the stream
                    // opened again replays it), says nothing new.
                    let at = engine::event_time(&event);
                    let started = self.watch.as_ref().map_or(0, |w| w.started);
                    let old = at < started || at <= self.looked_into;
                    if !matches!(action.as_str(), "die" | "destroy") || old {
                        continue;
                    }
                    self.looked_into = at;
                    // The stream is let go before anything is awaited, so a call cancelled
                    // from here on loses nothing: the look at the container opening it again
                    // is what tells whether it exited (a die followed by a restart is none).
                    self.watch = None;
                }
                Some(Err(e)) => {
                    warn!(service = %self.service, error = %describe(&e), "The Docker event stream failed; opening it again.");
                    self.watch = None;
                    tokio::time::sleep(REOPEN_WAIT).await;
                }
                None => {
                    self.watch = None;
                    tokio::time::sleep(REOPEN_WAIT).await;
                }
            }
        }
    }

    async fn remove(&mut self) -> Result<(), BackendError> {
        // The service ended for good: a container wakegate made for it goes with it.
        if self.config.create.is_none() {
            return Ok(());
        }
        let info = match self.lookup().await? {
            Lookup::Found(info) => info,
            _ => return Ok(()),
        };
        let ours = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(CREATED_LABEL))
            .is_some_and(|s| *s == self.service);
        if !ours {
            return Ok(());
        }
        let (id, name) = (info.id.clone().unwrap_or_default(), name_of(&info));
        self.remove_container(&id, &name).await
    }
}

#[cfg(test)]
mod tests;
