//! `[discovery.docker]` at run time: the containers labelled `wakegate.enable=true` are listed
//! at start, then followed on the engine's event stream: a container created becomes a
//! service, a container removed takes its service away (through [`crate::launch`], as created
//! services are run), and nothing else is touched. A container whose labels do not make a
//! service is skipped, with a warning event and a log line naming it and the label.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::DockerDiscovery;
use super::labels::{self, Container, ENABLE};
use crate::backend::docker::engine::{self, Engine};
use crate::event::Kind;
use crate::launch::{self, Wiring};

/// How long the API is given to answer a request's head.
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a service taken away may take to finish.
const FINISH_WAIT: Duration = Duration::from_secs(30);
/// The pause before the event stream is opened again after the engine dropped it.
const REOPEN_WAIT: Duration = Duration::from_secs(1);

/// The discovered services, by their container's id.
pub struct Discovery {
    engine: Engine,
    config: DockerDiscovery,
    with: Wiring,
    live: HashMap<String, Live>,
}

/// A discovered service.
struct Live {
    name: String,
    cancel: CancellationToken,
    listening: CancellationToken,
}

/// Connects to the API (an error names where it tried), runs a service for each labelled
/// container, then follows the engine's events on the wiring's tracker until wakegate stops.
pub async fn start(config: &DockerDiscovery, with: Wiring) -> anyhow::Result<()> {
    let engine = engine::connect(config.socket.as_deref(), API_TIMEOUT)
        .await
        .map_err(|e| anyhow!("[discovery.docker]: {e}"))?;
    info!(api = %engine.at, "Discovering services from container labels.");
    let mut discovery = Discovery {
        engine,
        config: config.clone(),
        with,
        live: HashMap::new(),
    };
    // Events are read from this moment on: a container created while the list is read is
    // seen by both, and added once.
    let since = now();
    discovery
        .sync()
        .await
        .map_err(|e| anyhow!("[discovery.docker]: {e}"))?;
    let tracker = discovery.with.tracker.clone();
    tracker.spawn(discovery.follow(since));
    Ok(())
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Discovery {
    /// Brings the services in line with the labelled containers there are now.
    async fn sync(&mut self) -> Result<(), String> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{ENABLE}=true")])]);
        let found = engine::list(&self.engine.client, filters)
            .await
            .map_err(|e| engine::unreachable(&self.engine.at, &e))?;
        let ids: Vec<String> = found.into_iter().filter_map(|c| c.id).collect();
        let gone: Vec<String> = self
            .live
            .keys()
            .filter(|id| !ids.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.take_away(&id).await;
        }
        for id in ids {
            self.add(&id).await;
        }
        Ok(())
    }

    /// Follows the events from `since` until wakegate stops; a stream the engine ends is
    /// opened again (from the last event seen), and the services are brought in line.
    async fn follow(mut self, mut since: i64) {
        let stop = self.with.stop.clone();
        loop {
            let filter = [("label", format!("{ENABLE}=true"))];
            let mut events = engine::events(&self.engine.client, Some(since), &filter);
            let why = loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    next = events.next() => next,
                };
                let event = match next {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => break engine::describe(&e),
                    None => break "the engine closed it".to_string(),
                };
                since = since.max(event.time.unwrap_or(since));
                match engine::event_of(&event) {
                    Some((id, action)) if action == "create" => self.add(&id).await,
                    Some((id, action)) if action == "destroy" => self.take_away(&id).await,
                    _ => {}
                }
            };
            warn!(api = %self.engine.at, reason = %why, "The Docker event stream ended; opening it again.");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REOPEN_WAIT) => {}
            }
            if let Err(e) = self.sync().await {
                warn!(error = %e, "Cannot list the labelled containers; trying again.");
            }
        }
    }

    /// Runs the service a labelled container describes, unless it runs already.
    async fn add(&mut self, id: &str) {
        if self.live.contains_key(id) {
            return;
        }
        let info = match engine::inspect(&self.engine.client, id).await {
            Ok(info) => info,
            // Removed since: nothing to run.
            Err(e) if engine::not_found(&e) => return,
            Err(e) => {
                warn!(container = %engine::short(id), error = %engine::describe(&e), "Cannot inspect a labelled container; it is skipped.");
                return;
            }
        };
        let container_name = engine::name_of(&info);
        let labels = info
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(ENABLE).map(String::as_str) != Some("true") {
            return;
        }
        let container = Container {
            id,
            name: &container_name,
            labels: &labels,
        };
        let name = container.service_name().to_string();
        let table = match labels::service_table(&container, &self.config, &self.engine.at) {
            Ok(table) => table,
            Err(bad) => {
                warn!(container = %container_name, label = %bad.label, value = %bad.value, reason = %bad.why, "A label of this container does not parse; the container is skipped.");
                let reason = format!("container {container_name} is skipped: its {bad}");
                let detail =
                    json!({ "container": container_name, "label": bad.label, "value": bad.value });
                launch::event(&self.with, &name, Kind::Warning, reason, detail);
                return;
            }
        };
        let skip = |this: &Self, why: String| {
            warn!(container = %container_name, service = %name, reason = %why, "This container's service cannot run; it is skipped.");
            let reason = format!("container {container_name} is skipped: {why}");
            let detail = json!({ "container": container_name });
            launch::event(&this.with, &name, Kind::Warning, reason, detail);
        };
        let config = match crate::service::config::from_table(&table) {
            Ok(config) => config,
            Err(why) => return skip(self, format!("its labels do not make a service: {why}")),
        };
        if self.with.registry.get(&name).is_some() {
            return skip(
                self,
                format!(
                    "a service named `{name}` runs already; give the container another wakegate.name"
                ),
            );
        }
        let missing = "list it in [discovery.docker] `http` or `minecraft`, or leave wakegate.bind out to take the first";
        let sockets = match launch::bind(&config, &self.with.shared, missing).await {
            Ok(sockets) => sockets,
            Err(why) => return skip(self, why),
        };
        let cancel = self.with.stop.child_token();
        let listening = cancel.child_token();
        launch::launch(&self.with, &config, sockets, &cancel, &listening);
        self.live.insert(
            id.to_string(),
            Live {
                name: name.clone(),
                cancel,
                listening,
            },
        );
        info!(service = %name, container = %container_name, "Discovered a service from a container's labels.");
        let reason = format!("discovered from the labels of container {container_name}");
        launch::event(
            &self.with,
            &name,
            Kind::Action,
            reason,
            json!({ "container": container_name }),
        );
    }

    /// Takes the service of a removed container away: its listeners first, then the rest.
    async fn take_away(&mut self, id: &str) {
        let Some(live) = self.live.remove(id) else {
            return;
        };
        launch::unlisten(&self.with, &live.name, &live.listening);
        let reason = format!(
            "its container {} was removed: the service is taken away",
            engine::short(id)
        );
        launch::event(
            &self.with,
            &live.name,
            Kind::Action,
            reason,
            serde_json::Value::Null,
        );
        let handle = self.with.registry.get(&live.name);
        launch::finish(&self.with, &live.name, handle, &live.cancel, FINISH_WAIT).await;
        info!(service = %live.name, "Took a discovered service away: its container was removed.");
    }
}
