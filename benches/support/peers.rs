//! The peers the TCP benchmarks run: wakegate with one `exec` service per backend, and haproxy
//! in TCP mode.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, ensure};
use tokio::net::TcpStream;

use super::{Proc, loopback};

/// Every wait for a peer (a port, a state) is bounded by this.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often those waits look again.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Config keys added to every service's table and to every listener's table.
#[derive(Default)]
pub struct Keys {
    pub service: String,
    pub listen: String,
}

/// A running `wakegate run` with one `exec` service per backend (`start` and `stop` do
/// nothing: the backend is already there, or the bench opens it itself).
pub struct Wakegate {
    pub proc: Proc,
    pub api: SocketAddr,
    /// Service name and where its listener is.
    listeners: Vec<(String, SocketAddr)>,
}

impl Wakegate {
    /// Starts wakegate with the API on `api_port` and, for each service (name, backend), a
    /// listener on the next of `listen_ports`. Explicit ports rather than port 0: wakegate's
    /// config check takes two `127.0.0.1:0` listeners for a clash.
    pub async fn start(
        dir: &Path,
        name: &str,
        api_port: u16,
        listen_ports: &[u16],
        services: &[(String, SocketAddr)],
    ) -> anyhow::Result<Wakegate> {
        Wakegate::start_with(
            dir,
            name,
            api_port,
            listen_ports,
            services,
            &Keys::default(),
        )
        .await
    }

    /// Like [`Wakegate::start`], with keys of its own in each service and listener table.
    pub async fn start_with(
        dir: &Path,
        name: &str,
        api_port: u16,
        listen_ports: &[u16],
        services: &[(String, SocketAddr)],
        keys: &Keys,
    ) -> anyhow::Result<Wakegate> {
        ensure!(
            listen_ports.len() == services.len(),
            "one listen port per service"
        );
        let api = loopback(api_port);
        let data_dir = dir.join(format!("{name}-data"));
        let mut config = format!(
            "[gateway]\ndata_dir = {}\napi = \"{api}\"\nshutdown_grace = \"1s\"\n",
            toml::Value::from(data_dir.to_string_lossy().into_owned())
        );
        let mut listeners = Vec::new();
        for ((service, backend), &port) in services.iter().zip(listen_ports) {
            // The idle timeout is never reached in a run: the bench wakes each service at
            // most once.
            config.push_str(&format!(
                "\n[[service]]\nname = \"{service}\"\nidle_timeout = \"1h\"\n{}\
                 [service.backend]\ntype = \"exec\"\nstart = \"true\"\nstop = \"true\"\n\
                 address = \"{backend}\"\n\
                 [[service.listen]]\ntype = \"tcp\"\nbind = \"{}\"\n{}",
                keys.service,
                loopback(port),
                keys.listen,
            ));
            listeners.push((service.clone(), loopback(port)));
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let mut proc = Proc::spawn(
            name,
            Command::new(super::wakegate())
                .arg("run")
                .arg("--config")
                .arg(&path)
                // Fixed, so that a caller's RUST_LOG=debug (a log line per connection) cannot
                // change the figures.
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1"),
            dir,
        )?;
        // wakegate binds every listener before it starts serving the API: the API port is
        // the last to open.
        for &port in listen_ports.iter().chain([&api_port]) {
            proc.wait_listening(port).await?;
        }
        Ok(Wakegate {
            proc,
            api,
            listeners,
        })
    }

    pub fn listener(&self, service: &str) -> anyhow::Result<SocketAddr> {
        self.listeners
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, addr)| *addr)
            .with_context(|| format!("the bench gave no listener to `{service}`"))
    }

    /// The service's state from `GET /api/v1/services/NAME`.
    pub async fn state(&self, service: &str) -> anyhow::Result<String> {
        let view = super::api_json(self.api, "GET", &format!("/api/v1/services/{service}")).await?;
        view["state"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the API's answer has no state: {view}"))
    }

    pub async fn wait_state(&self, service: &str, want: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let state = self.state(service).await?;
            if state == want {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "`{service}` is still {state}, not {want}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Wakes a service the way a client does, by connecting, and waits until it is awake.
    pub async fn wake(&self, service: &str) -> anyhow::Result<()> {
        let _client = TcpStream::connect(self.listener(service)?).await?;
        self.wait_state(service, "awake").await
    }
}

/// haproxy in the foreground in TCP mode, one frontend per route: (frontend port, server).
pub struct Haproxy {
    pub proc: Proc,
}

impl Haproxy {
    pub async fn start(
        dir: &Path,
        name: &str,
        routes: &[(u16, SocketAddr)],
    ) -> anyhow::Result<Haproxy> {
        Haproxy::start_with(dir, name, routes, "").await
    }

    /// Like [`Haproxy::start`], with lines of its own in the `global` section.
    pub async fn start_with(
        dir: &Path,
        name: &str,
        routes: &[(u16, SocketAddr)],
        global: &str,
    ) -> anyhow::Result<Haproxy> {
        let mut config = format!("global\n{global}");
        config.push_str(
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n",
        );
        for (port, server) in routes {
            config.push_str(&format!(
                "\nfrontend in{port}\n    bind 127.0.0.1:{port}\n    default_backend out{port}\n\
                 \nbackend out{port}\n    server s {server}\n"
            ));
        }
        let path = dir.join(format!("{name}.cfg"));
        std::fs::write(&path, config)?;
        let mut proc = Proc::spawn(
            name,
            Command::new("haproxy").arg("-f").arg(&path).arg("-db"),
            dir,
        )?;
        for (port, _) in routes {
            proc.wait_listening(*port).await?;
        }
        Ok(Haproxy { proc })
    }
}

/// The first line `tool FLAG` prints, or why the tool cannot be used.
pub fn version_of(tool: &str, flag: &str) -> anyhow::Result<String> {
    let out = Command::new(tool).arg(flag).output().with_context(|| {
        format!("{tool} is needed; bench/run installs it (apt-get install haproxy iperf3)")
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "HAProxy version 2.6.12-1 2023/03/17 - https://…", "iperf 3.12 (cJSON 1.7.15)": keep the
    // words up to the first that starts with a digit, the version.
    let mut words = Vec::new();
    for word in text.split_whitespace() {
        words.push(word);
        if word.starts_with(|c: char| c.is_ascii_digit()) {
            break;
        }
    }
    Ok(words.join(" "))
}

/// Services asleep behind one gateway, each as `sleeper-N` with its own listener, and haproxy
/// with a TCP frontend for each of the same backends: the idle pair the benchmarks compare.
pub struct Sleepers {
    pub wakegate: Wakegate,
    pub haproxy: Haproxy,
    /// Each service's name and its backend's address (nothing listens there yet).
    pub services: Vec<(String, SocketAddr)>,
}

impl Sleepers {
    /// Starts them on `ports` (three per service and one for the API, all free), `name` naming
    /// the gateway's files and `haproxy-NAME` haproxy's; returns once every service is asleep.
    pub async fn start(dir: &Path, name: &str, ports: &[u16]) -> anyhow::Result<Sleepers> {
        let count = ports.len() / 3;
        let (backends, rest) = ports.split_at(count);
        let (listens, rest) = rest.split_at(count);
        let (frontends, api) = rest.split_at(count);
        let services: Vec<(String, SocketAddr)> = backends
            .iter()
            .enumerate()
            .map(|(i, &port)| (format!("sleeper-{i}"), super::loopback(port)))
            .collect();
        let wakegate = Wakegate::start(dir, name, api[0], listens, &services).await?;
        for (service, _) in &services {
            wakegate.wait_state(service, "asleep").await?;
        }
        let routes: Vec<(u16, SocketAddr)> = frontends
            .iter()
            .zip(&services)
            .map(|(&port, (_, backend))| (port, *backend))
            .collect();
        let haproxy = Haproxy::start(dir, &format!("haproxy-{name}"), &routes).await?;
        Ok(Sleepers {
            wakegate,
            haproxy,
            services,
        })
    }
}
