//! Starting a service while wakegate runs, and taking it away again: what the services
//! created from a `[[template]]` and those discovered from container labels share. A service
//! gets its actor, its health tasks, its own `tcp` sockets (served once it has reconciled) or
//! its routes on the shared `http`/`minecraft` sockets, and a place in the [`Registry`] the
//! API reads; taking it away closes its listeners first, so no new client reaches it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::event::{Kind, NewEvent, State};
use crate::listener::config::Listen;
use crate::listener::{Connections, SharedTables};
use crate::service::config::Service;
use crate::service::{Registry, ServiceHandle};
use crate::store::Store;
use crate::{backend, health, listener, service};

/// What services started at run time are run with: the gateway's registry, store, trackers
/// and sockets.
#[derive(Clone)]
pub struct Wiring {
    pub registry: Registry,
    pub store: Arc<Store>,
    pub data_dir: PathBuf,
    /// Their tasks' tracker, and the token that stops them with wakegate.
    pub tracker: TaskTracker,
    pub stop: CancellationToken,
    pub connections: Connections,
    /// The shared sockets they join by hostname.
    pub shared: SharedTables,
}

/// A service's own `tcp` sockets, bound before anything of it starts (a port in use fails
/// it then), and every address it listens on.
#[derive(Debug)]
pub struct Sockets {
    tcp: Vec<(TcpListener, crate::listener::tcp::config::Tcp)>,
    pub listen: Vec<SocketAddr>,
}

/// Binds the service's `tcp` listeners and checks that the shared sockets of its `http` and
/// `minecraft` listeners exist (`missing` says how to get one).
pub async fn bind(
    config: &Service,
    shared: &SharedTables,
    missing: &str,
) -> Result<Sockets, String> {
    let mut tcp = Vec::new();
    for listen in &config.listeners {
        let Listen::Tcp(config) = listen else {
            continue;
        };
        let bind = listen.bind();
        let socket = crate::listener::bind(bind).map_err(|e| {
            format!("cannot listen on {bind}: {e}; is another program using that port?")
        })?;
        tcp.push((socket, config.clone()));
    }
    let mut listen: Vec<SocketAddr> = tcp
        .iter()
        .filter_map(|(s, _)| s.local_addr().ok())
        .collect();
    for l in &config.listeners {
        let found = match l {
            Listen::Tcp { .. } => continue,
            Listen::Udp(_) | Listen::Bedrock(_) => {
                return Err(format!(
                    "the udp or bedrock listener on {} cannot be added at run time (templates, container labels): configure the service in the file",
                    l.bind()
                ));
            }
            Listen::Http(_) => shared.http(l.bind()).is_some(),
            Listen::Minecraft(_) => shared.minecraft(l.bind()).is_some(),
        };
        if !found {
            return Err(format!("no shared socket on {}; {missing}", l.bind()));
        }
        listen.push(l.bind());
    }
    Ok(Sockets { tcp, listen })
}

/// Starts the actor, its health tasks, its routes on the shared sockets and (once it has
/// reconciled) its own sockets' accept loops, and adds it to the registry. `cancel` ends all
/// of it; `listening`, a child of it, the listeners only.
pub fn launch(
    with: &Wiring,
    config: &Service,
    sockets: Sockets,
    cancel: &CancellationToken,
    listening: &CancellationToken,
) -> ServiceHandle {
    let handle = spawn(with, config, cancel, cancel);
    route(with, config, &handle);
    for (socket, cap) in sockets.tcp {
        let (handle, connections, listening) =
            (handle.clone(), with.connections.clone(), listening.clone());
        let bind = socket.local_addr().ok();
        with.tracker.spawn(async move {
            tokio::select! {
                () = handle.reconciled() => {}
                () = listening.cancelled() => return,
            }
            info!(service = %handle.name(), bind = ?bind, "Listening.");
            tokio::select! {
                () = listener::tcp::run(socket, handle, connections, cap) => {}
                () = listening.cancelled() => {}
            }
        });
    }
    handle
}

/// Starts a service's actor (ended by `cancel`) and its health checks and player poll (ended
/// by `health`, `cancel` or a child of it), and adds it to the registry.
pub fn spawn(
    with: &Wiring,
    config: &Service,
    cancel: &CancellationToken,
    health: &CancellationToken,
) -> ServiceHandle {
    let handle = service::spawn(
        config,
        backend::build(config, &with.data_dir, &with.store),
        with.store.clone(),
        &with.tracker,
        cancel.clone(),
    );
    health::spawn_for(config, &handle, &with.tracker, health);
    with.registry.add(handle.clone());
    handle
}

/// Puts a service's hostnames on the shared `http` and `minecraft` sockets of its listeners
/// (those that exist: the caller checked).
pub fn route(with: &Wiring, config: &Service, handle: &ServiceHandle) {
    for l in &config.listeners {
        match l {
            Listen::Tcp { .. } | Listen::Udp(_) | Listen::Bedrock(_) => {}
            Listen::Http(h) => {
                if let Some(table) = with.shared.http(h.bind) {
                    info!(service = %handle.name(), bind = %h.bind, hostnames = ?h.hostnames, "Listening for HTTP.");
                    table.add(listener::http::Route::new(handle.clone(), (**h).clone()));
                }
            }
            Listen::Minecraft(m) => {
                if let Some(table) = with.shared.minecraft(m.bind) {
                    info!(service = %handle.name(), bind = %m.bind, hostnames = ?m.hostnames, "Listening for Minecraft.");
                    let route = listener::minecraft::Route {
                        service: handle.clone(),
                        config: m.clone(),
                    };
                    table.add(route.entry());
                }
            }
        }
    }
}

/// Takes a service's routes off the shared sockets.
pub fn unroute(with: &Wiring, name: &str) {
    for (_, table) in &with.shared.http {
        table.remove(|r| r.service.name() == name);
    }
    for (_, table) in &with.shared.minecraft {
        table.remove(|e| e.service().name() == name);
    }
}

/// Closes a service's own sockets and takes its routes off the shared ones: no new client
/// reaches it (those connected go on).
pub fn unlisten(with: &Wiring, name: &str, listening: &CancellationToken) {
    listening.cancel();
    unroute(with, name);
}

/// Ends what is left of a service: its tasks are cancelled, its actor has its backend remove
/// what it made for it (waited for, up to `wait`), and it leaves the registry.
pub async fn finish(
    with: &Wiring,
    name: &str,
    handle: Option<ServiceHandle>,
    cancel: &CancellationToken,
    wait: Duration,
) {
    if let Some(handle) = &handle {
        handle.retire();
    }
    cancel.cancel();
    if let Some(handle) = handle
        && tokio::time::timeout(wait, handle.finished()).await.is_err()
    {
        warn!(service = %name, "The service's backend did not finish in time.");
    }
    with.registry.remove(name);
}

/// Records an event of a service started at run time, in the state it is in (`asleep` when it
/// does not run, or not yet).
pub fn event(with: &Wiring, name: &str, kind: Kind, reason: String, detail: serde_json::Value) {
    let state = with.registry.get(name).map_or(State::Asleep, |h| h.state());
    let event = NewEvent {
        kind,
        state,
        reason,
        detail,
    };
    with.store.record(name, event, crate::store::now(), None);
}

/// Stops the backend through the actor and waits (up to `wait`) until it is asleep or failed.
pub async fn stop(handle: &ServiceHandle, by: &str, wait: Duration) {
    let mut status = handle.watch();
    match handle.sleep(by).await {
        Ok(Ok(State::Asleep | State::Failed)) | Err(_) => return,
        Ok(Err(denied)) => {
            warn!(service = %handle.name(), %denied, "The stop was refused; ending it anyway.")
        }
        Ok(Ok(_)) => {}
    }
    let stopped = status.wait_for(|s| matches!(s.state, State::Asleep | State::Failed));
    if tokio::time::timeout(wait, stopped).await.is_err() {
        warn!(service = %handle.name(), "The backend did not stop in time; ending the service anyway.");
    }
}
