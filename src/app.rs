//! Builds the gateway from a config and owns its lifetime: the cancellation tokens and task
//! trackers of services, listeners, connections and the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::event::Published;
use crate::listener::Connections;
use crate::listener::config::Listen;
use crate::service::{Registry, ServiceHandle};
use crate::store::Store;
use crate::template::Templates;
use crate::{api, backend, health, listener, notify, reload, service};

/// What a bound socket serves.
enum Bound {
    /// The service, and its listener.
    Tcp(String, crate::listener::tcp::config::Tcp),
    /// The bind of its entries, and the services sharing it with their entries (none yet
    /// for a socket only templates use).
    Minecraft(
        SocketAddr,
        Vec<(String, crate::listener::minecraft::config::Minecraft)>,
    ),
    /// The same for `http`.
    Http(
        SocketAddr,
        Vec<(String, crate::listener::http::config::Http)>,
    ),
}

/// What a bound UDP socket serves.
enum Datagrams {
    Udp(crate::listener::udp::config::Udp),
    Bedrock(crate::listener::bedrock::config::Bedrock),
}

impl Datagrams {
    fn of(listen: &Listen) -> Option<Datagrams> {
        match listen {
            Listen::Udp(u) => Some(Datagrams::Udp(u.clone())),
            Listen::Bedrock(b) => Some(Datagrams::Bedrock(b.clone())),
            _ => None,
        }
    }
}

/// A shared socket ready to serve once the services have reconciled.
enum Ready {
    Minecraft(Arc<listener::minecraft::Table>),
    Http(
        Arc<listener::http::Table>,
        Option<tokio_rustls::TlsAcceptor>,
    ),
}

/// A running gateway.
pub struct App {
    router: axum::Router,
    /// The configured services.
    services: Vec<ServiceHandle>,
    /// Every running service, the created ones included.
    registry: Registry,
    templates: Templates,
    reloader: reload::Reloader,
    /// Where each configured service listened at start (see `Reloader::listen_addr` for those
    /// a reload moved).
    listeners: Vec<(String, SocketAddr)>,
    api: SocketAddr,
    events: broadcast::Sender<Published>,
    store: Arc<Store>,
    connections: Connections,
    /// The accept loops, apart: a shutdown waits for them to let go of their sockets.
    accepting: TaskTracker,
    background: TaskTracker,
    stop_background: CancellationToken,
    grace: Duration,
}

impl App {
    /// Opens the store, binds every socket (so a port in use fails before anything starts),
    /// then starts the services, listeners and API.
    pub async fn start(config: Config) -> anyhow::Result<App> {
        App::start_from(config, None).await
    }

    /// Like [`start`](Self::start), for a config read from `path`: a reload reads it again.
    pub async fn start_from(config: Config, path: Option<PathBuf>) -> anyhow::Result<App> {
        let store = Arc::new(Store::connect_as(
            &config.gateway.store,
            &config.gateway.data_dir,
            &config.gateway.member,
        )?);
        let mut bound: Vec<(Bound, TcpListener)> = Vec::new();
        let mut datagrams: Vec<(String, Datagrams, tokio::net::UdpSocket)> = Vec::new();
        for service in &config.services {
            for listen in &service.listeners {
                let bind = listen.bind();
                if let Some(what) = Datagrams::of(listen) {
                    let socket = tokio::net::UdpSocket::bind(bind).await.with_context(|| {
                        format!(
                            "cannot listen on udp {bind} for service `{}`; is another program using that port?",
                            service.name
                        )
                    })?;
                    datagrams.push((service.name.clone(), what, socket));
                    continue;
                }
                // Minecraft entries of several services with the same bind share one socket
                // (config checked that they can); port 0 always means a socket of its own.
                if let Listen::Minecraft(m) = listen {
                    let shared = bound.iter_mut().find_map(|(b, _)| match b {
                        Bound::Minecraft(at, group) if bind.port() != 0 && *at == bind => {
                            Some(group)
                        }
                        _ => None,
                    });
                    if let Some(group) = shared {
                        group.push((service.name.clone(), m.clone()));
                        continue;
                    }
                }
                // The same for http entries.
                if let Listen::Http(h) = listen {
                    let shared = bound.iter_mut().find_map(|(b, _)| match b {
                        Bound::Http(at, group) if bind.port() != 0 && *at == bind => Some(group),
                        _ => None,
                    });
                    if let Some(group) = shared {
                        group.push((service.name.clone(), (**h).clone()));
                        continue;
                    }
                }
                let socket = crate::listener::bind(bind).with_context(|| {
                    format!(
                        "cannot listen on {bind} for service `{}`; is another program using that port?",
                        service.name
                    )
                })?;
                let what = match listen {
                    Listen::Tcp(tcp) => Bound::Tcp(service.name.clone(), tcp.clone()),
                    Listen::Minecraft(m) => {
                        Bound::Minecraft(bind, vec![(service.name.clone(), m.clone())])
                    }
                    Listen::Http(h) => {
                        Bound::Http(bind, vec![(service.name.clone(), (**h).clone())])
                    }
                    Listen::Udp(_) | Listen::Bedrock(_) => unreachable!("bound above"),
                };
                bound.push((what, socket));
            }
        }
        // The shared sockets templates and discovered services route to by hostname, unless a
        // service has them.
        let shared_binds = config
            .templates
            .iter()
            .flat_map(|t| {
                let owner = format!("template `{}`", t.name);
                t.shared_listeners()
                    .into_iter()
                    .map(move |l| (owner.clone(), l.bind(), matches!(l, Listen::Minecraft(_))))
            })
            .chain(
                config
                    .discovery
                    .shared_binds()
                    .into_iter()
                    .map(|(bind, minecraft)| ("[discovery.docker]".to_string(), bind, minecraft)),
            );
        for (owner, bind, minecraft) in shared_binds {
            let had = bound.iter().any(|(b, _)| match b {
                Bound::Minecraft(at, _) => minecraft && *at == bind,
                Bound::Http(at, _) => !minecraft && *at == bind,
                Bound::Tcp(..) => false,
            });
            if had {
                continue;
            }
            let socket = crate::listener::bind(bind).with_context(|| {
                format!("cannot listen on {bind} for {owner}; is another program using that port?")
            })?;
            let what = if minecraft {
                Bound::Minecraft(bind, Vec::new())
            } else {
                Bound::Http(bind, Vec::new())
            };
            bound.push((what, socket));
        }
        // Certificates are read before anything starts, so a bad one fails the start.
        let mut tls = Vec::new();
        for (what, _) in &bound {
            if let Bound::Http(bind, group) = what {
                let acceptor = listener::http::tls_acceptor(group.iter().map(|(_, h)| h))
                    .with_context(|| format!("cannot set up TLS on {bind}"))?;
                tls.push(acceptor);
            }
        }
        let mut tls = tls.into_iter();
        let api_socket = TcpListener::bind(config.gateway.api)
            .await
            .with_context(|| {
                format!(
                    "cannot serve the API on {}; set [gateway] api to a free address",
                    config.gateway.api
                )
            })?;

        let agents_socket = match &config.gateway.agents {
            Some(listen) => {
                Some(crate::api::serve::bind(listen, "agents' reports", "gateway.agents").await?)
            }
            None => None,
        };
        let discord_socket = match config.discord.as_ref().and_then(|d| d.listen.as_ref()) {
            Some(listen) => Some(
                crate::api::serve::bind(listen, "Discord interactions", "discord.listen").await?,
            ),
            None => None,
        };

        // The store publishes each event once committed.
        let events = store.publisher();
        let background = TaskTracker::new();
        let stop_background = CancellationToken::new();
        // Before the services: a new target's cursor is set before their first events.
        notify::spawn(
            &config.notify,
            &store,
            &events,
            &background,
            &stop_background,
        )
        .context("cannot start the notifications")?;
        let mut running: Vec<reload::Running> = config
            .services
            .iter()
            .map(|s| {
                let cancel = stop_background.child_token();
                let health = cancel.child_token();
                let handle = service::spawn(
                    s,
                    backend::build(s, &config.gateway.data_dir, &store),
                    store.clone(),
                    &background,
                    cancel.clone(),
                );
                health::spawn_for(s, &handle, &background, &health);
                reload::Running {
                    config: s.clone(),
                    handle,
                    cancel,
                    health,
                    sockets: Vec::new(),
                }
            })
            .collect();
        let services: Vec<ServiceHandle> = running.iter().map(|r| r.handle.clone()).collect();

        let connections = Connections::new();
        let registry = Registry::new(services.clone());
        let handle = |name: &str| services.iter().find(|s| s.name() == name).unwrap().clone();
        // The routing tables, before the templates' services join them.
        let mut listeners = Vec::new();
        let mut shared = listener::SharedTables::default();
        let mut ready = Vec::new();
        for (what, socket) in bound {
            let addr = socket.local_addr()?;
            let what = match what {
                Bound::Tcp(name, tcp) => {
                    listeners.push((name.clone(), addr));
                    let own = reload::Own::new(Listen::Tcp(tcp), reload::Fd::keep_tcp(socket)?)?;
                    own_socket(&mut running, &name, own);
                    continue;
                }
                Bound::Minecraft(bind, group) => {
                    let mut routes = Vec::new();
                    for (name, config) in group {
                        info!(service = %name, bind = %addr, hostnames = ?config.hostnames, "Listening for Minecraft.");
                        routes.push(listener::minecraft::Route {
                            service: handle(&name),
                            config,
                        });
                        listeners.push((name, addr));
                    }
                    let table = listener::minecraft::routes(routes);
                    shared.minecraft.push((bind, table.clone()));
                    Ready::Minecraft(table)
                }
                Bound::Http(bind, group) => {
                    let mut routes = Vec::new();
                    let tls = tls.next().flatten();
                    for (name, config) in group {
                        info!(service = %name, bind = %addr, hostnames = ?config.hostnames, tls = tls.is_some(), "Listening for HTTP.");
                        routes.push(listener::http::Route::new(handle(&name), config));
                        listeners.push((name, addr));
                    }
                    let table = listener::http::routes(routes);
                    shared.http.push((bind, table.clone()));
                    Ready::Http(table, tls)
                }
            };
            ready.push((what, socket));
        }
        for (name, what, socket) in datagrams {
            listeners.push((name.clone(), socket.local_addr()?));
            let listen = match what {
                Datagrams::Udp(udp) => Listen::Udp(udp),
                Datagrams::Bedrock(bedrock) => Listen::Bedrock(bedrock),
            };
            own_socket(
                &mut running,
                &name,
                reload::Own::new(listen, reload::Fd::keep_udp(socket)?)?,
            );
        }
        // The services created from templates before a restart are created again, and
        // reconcile like the others.
        let wiring = crate::launch::Wiring {
            registry: registry.clone(),
            store: store.clone(),
            data_dir: config.gateway.data_dir.clone(),
            tracker: background.clone(),
            stop: stop_background.clone(),
            connections: connections.clone(),
            shared,
        };
        let templates = Templates::new(config.templates.clone(), wiring.clone());
        let accepting = TaskTracker::new();
        let reloader = reload::Reloader::new(
            path,
            config.clone(),
            running,
            wiring.clone(),
            accepting.clone(),
        );
        let restored = templates
            .restore()
            .await
            .context("cannot read the services created from templates")?;
        // The services of labelled containers, then the engine's events.
        if let Some(docker) = &config.discovery.docker {
            crate::discovery::docker::start(docker, wiring).await?;
        }

        // Clients wait in the listen backlog until every service knows what really runs.
        for service in services.iter().chain(&restored) {
            service.reconciled().await;
        }

        // Each own socket waits for its service to reconcile before it accepts.
        reloader.serve_all().await;
        for (what, socket) in ready {
            match what {
                Ready::Minecraft(table) => {
                    accepting.spawn(listener::minecraft::run(socket, table, connections.clone()));
                }
                Ready::Http(table, tls) => {
                    accepting.spawn(listener::http::run(socket, table, tls, connections.clone()));
                }
            }
        }

        let api = api_socket.local_addr()?;
        if config.gateway.tokens.is_empty() {
            warn!(api = %api, "The API has no [[gateway.token]]: anyone who can reach {api} can use it.");
        }
        info!(api = %format!("http://{api}"), "API ready.");
        let state = api::Api::new(
            registry.clone(),
            store.clone(),
            events.clone(),
            config.gateway.tokens.clone(),
            config.gateway.cors_origins.clone(),
        )
        .with_listener_metrics(connections.metrics.clone())
        .with_templates(templates.clone())
        .with_reloader(reloader.clone());
        if let Some((socket, tls)) = agents_socket {
            let url = format!(
                "{}://{}",
                if tls.is_some() { "https" } else { "http" },
                socket.local_addr()?
            );
            info!(%url, "Agents' endpoint ready.");
            background.spawn(crate::api::serve::serve(
                socket,
                tls,
                api::agent_router(state.clone()),
                background.clone(),
                stop_background.clone(),
            ));
        }
        let router = api::router(state);
        // Discord's interactions carry their own signature: outside the API's token check, on
        // the API's socket or on their own.
        let router = match &config.discord {
            Some(discord) => {
                let bot = crate::discord::Bot::new(
                    discord.clone(),
                    registry.clone(),
                    background.clone(),
                    stop_background.child_token(),
                )
                .with_templates(templates.clone())
                .router();
                match discord_socket {
                    Some((socket, tls)) => {
                        let url = format!(
                            "{}://{}{}",
                            if tls.is_some() { "https" } else { "http" },
                            socket.local_addr()?,
                            crate::discord::PATH
                        );
                        info!(%url, guilds = discord.guilds.len(), "Discord interactions endpoint ready.");
                        background.spawn(crate::api::serve::serve(
                            socket,
                            tls,
                            bot,
                            background.clone(),
                            stop_background.clone(),
                        ));
                        router
                    }
                    None => {
                        info!(
                            path = crate::discord::PATH,
                            guilds = discord.guilds.len(),
                            "Discord interactions endpoint ready."
                        );
                        router.merge(bot)
                    }
                }
            }
            None => router,
        };
        let api_stop = stop_background.clone();
        let served = router.clone();
        background.spawn(async move {
            let cut = api_stop.clone();
            let serve = axum::serve(api_socket, served)
                .with_graceful_shutdown(async move { api_stop.cancelled().await });
            // A graceful shutdown of the server waits for every connection, and an event stream
            // (SSE, WebSocket, an open dashboard) never ends by itself: past a moment they are cut.
            tokio::select! {
                result = serve => if let Err(e) = result {
                    warn!(error = %e, "The API server stopped.");
                },
                () = async {
                    cut.cancelled().await;
                    tokio::time::sleep(API_DRAIN).await;
                } => info!("Closed the API's open event streams."),
            }
        });

        Ok(App {
            router,
            services,
            registry,
            templates,
            reloader,
            listeners,
            api,
            events,
            store,
            connections,
            accepting,
            background,
            stop_background,
            grace: config.gateway.shutdown_grace,
        })
    }

    /// The configured services as started (a reload may have replaced some since: see
    /// [`running`](Self::running)).
    pub fn services(&self) -> &[ServiceHandle] {
        &self.services
    }

    pub fn service(&self, name: &str) -> Option<&ServiceHandle> {
        self.services.iter().find(|s| s.name() == name)
    }

    /// A running service by name, configured or created from a template.
    pub fn running(&self, name: &str) -> Option<ServiceHandle> {
        self.registry.get(name)
    }

    /// The templates and the services created from them.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Where a service's first listener is bound (the real port when the config said 0).
    pub fn listen_addr(&self, service: &str) -> Option<SocketAddr> {
        if let Some(moved) = self.reloader.listen_addr(service) {
            return moved;
        }
        self.listeners
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, addr)| *addr)
            .or_else(|| {
                self.templates
                    .view(service)
                    .and_then(|v| v.listen.first().copied())
            })
    }

    /// Reloads the config from the file the gateway was started with (see [`crate::reload`]).
    pub async fn reload(
        &self,
        keep_running: bool,
        by: &str,
    ) -> Result<reload::Report, reload::Refusal> {
        self.reloader.reload(keep_running, by).await
    }

    /// The API's routes, to call without a socket.
    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }

    /// Live events of every service.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.events.subscribe()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Graceful shutdown: stop accepting, let open connections finish within the grace period,
    /// close the rest, then stop the services (each backend decides what shutdown means).
    pub async fn shutdown(self) {
        let open = self
            .registry
            .all()
            .iter()
            .map(ServiceHandle::connections)
            .sum::<usize>();
        info!(open_connections = open, grace = %humantime::format_duration(self.grace), "Shutting down.");
        self.connections.stop_accepting.cancel();
        self.reloader.close_sockets().await;
        self.accepting.close();
        self.accepting.wait().await;
        info!("No longer accepting connections.");
        self.connections.tracker.close();
        if tokio::time::timeout(self.grace, self.connections.tracker.wait())
            .await
            .is_err()
        {
            warn!("The grace period is over; closing the remaining connections.");
        }
        self.connections.close_all.cancel();
        self.connections.tracker.wait().await;
        self.stop_background.cancel();
        self.background.close();
        self.background.wait().await;
        // The services' last events are written before wakegate exits.
        self.store.close(STORE_GRACE).await;
        info!("Stopped.");
    }
}

/// Gives a configured service one more own socket.
fn own_socket(running: &mut [reload::Running], name: &str, own: reload::Own) {
    if let Some(r) = running.iter_mut().find(|r| r.config.name == name) {
        r.sockets.push(own);
    }
}

/// How long a stopping wakegate keeps trying to write the events still queued while the store
/// cannot write.
const STORE_GRACE: Duration = Duration::from_secs(5);

/// How long API requests in flight may finish once wakegate stops; event streams are cut then.
const API_DRAIN: Duration = Duration::from_secs(1);

/// Runs the gateway until SIGINT or SIGTERM; SIGHUP reloads `path` (see [`crate::reload`]). A
/// second signal ends a shutdown that takes too long; what still runs is found again by the
/// next start. Under systemd, it is ready once every socket is bound, says when it reloads,
/// and keeps the watchdog fed while it serves.
pub async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    // Watched from the start: a signal while the services reconcile is a shutdown once they
    // have, not the default action's abrupt end (and a SIGHUP is not the end of wakegate).
    let mut signals = Signals::watch()?;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch SIGHUP")?;
    listener::nofile::raise();
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let watch = config.gateway.watch_config;
    let app = App::start_from(config, Some(path.clone())).await?;
    if watch {
        reload::watch::spawn(
            &path,
            app.reloader.clone(),
            &app.background,
            app.stop_background.clone(),
        )?;
    }
    crate::systemd::ready(app.registry.all().len());
    // A reload runs beside the signal watch, so a SIGTERM during a long one is not kept
    // waiting; a SIGHUP during a reload is one more reload, after it.
    let reloads = TaskTracker::new();
    loop {
        tokio::select! {
            () = signals.next() => break,
            () = crate::systemd::watchdog() => break,
            Some(()) = hangups.recv() => {
                info!("SIGHUP received: reloading the config.");
                let (reloader, registry) = (app.reloader.clone(), app.registry.clone());
                reloads.spawn(async move {
                    crate::systemd::reloading();
                    // The outcome is logged and recorded as an event by the reload itself.
                    let _ = reloader.reload(false, "SIGHUP").await;
                    crate::systemd::ready(registry.all().len());
                });
            }
        }
    }
    crate::systemd::stopping();
    tokio::select! {
        () = app.shutdown() => {}
        () = signals.next() => {
            warn!("Second signal: exiting without waiting for connections and backends.");
        }
    }
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    Signals::watch()?.next().await;
    Ok(())
}

/// SIGINT and SIGTERM, watched from its creation on (a signal before `next` is kept for it).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn watch() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// The next SIGINT or SIGTERM.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM received."),
            _ = self.int.recv() => info!("SIGINT received."),
        }
    }
}
