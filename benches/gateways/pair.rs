//! Two gateways over one database: `gw-a` and `gw-b`, their configs and processes, and what the
//! benchmark reads from them (the service's view, its events, the time left on its lease).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Proc, api_json, free_ports, loopback, progress};
use crate::{MESSAGE, PATIENCE, POLL, SERVICE, postgres};

/// One `wakegate run` of the pair.
pub struct Gateway {
    pub id: &'static str,
    pub proc: Proc,
    pub api: SocketAddr,
    /// Its `tcp` listener for the service.
    pub listen: SocketAddr,
}

impl Gateway {
    /// The service as its API shows it.
    pub async fn view(&self) -> anyhow::Result<Value> {
        api_json(self.api, "GET", &format!("/api/v1/services/{SERVICE}")).await
    }

    /// Waits until its API shows the service `state` and owned by `owner`.
    pub async fn wait_for(&mut self, state: &str, owner: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.proc.check_running()?;
            let view = self.view().await?;
            if view["state"] == state && view["owner"] == owner {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{}: the service is {} and owned by {}, not {state} and owned by {owner}",
                self.id,
                view["state"],
                view["owner"]
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `gw-a` and `gw-b` on a fresh database, one data dir, one echo service: `gw-a` owns it.
pub struct Pair {
    /// Stopped (SIGTERM) first when the pair is dropped; `gw-a` then `gw-b`.
    pub gateways: Vec<Gateway>,
    data_dir: PathBuf,
    backend: SocketAddr,
}

impl Pair {
    /// Starts `gw-a`, waits until it owns the asleep service, then `gw-b`, until it follows;
    /// with `phase`, `gw-b` starts that long after one of `gw-a`'s renewals (plus its own
    /// start-up), which sets how long after the owner's lease expires `gw-b` tries to take it.
    pub async fn start(
        dir: &Path,
        server: &postgres::Server,
        name: &str,
        lease: Duration,
        phase: Option<Duration>,
    ) -> anyhow::Result<Pair> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let url = server.database(name);
        let [backend, api_a, listen_a, api_b, listen_b] = free_ports::<5>()?;
        let backend = loopback(backend);
        let data_dir = dir.join("data");
        let mut pair = Pair {
            gateways: Vec::new(),
            data_dir,
            backend,
        };
        for (id, api, listen) in [("gw-a", api_a, listen_a), ("gw-b", api_b, listen_b)] {
            let (api, listen) = (loopback(api), loopback(listen));
            // Only the bench puts it to sleep (through the API) or stops it.
            let config = format!(
                "[gateway]\ndata_dir = {data_dir}\napi = \"{api}\"\nshutdown_grace = \"1s\"\n\
                 store = {url}\nid = \"{id}\"\nlease = \"{lease}\"\n\
                 \n[[service]]\nname = \"{SERVICE}\"\nidle_timeout = \"1h\"\nwake_timeout = \"20s\"\n\
                 [[service.listen]]\ntype = \"tcp\"\nbind = \"{listen}\"\n\
                 [service.backend]\ntype = \"process\"\naddress = \"{backend}\"\n\
                 command = [{wakegate}, \"demo-backend\", \"--echo\", \"--listen\", \"{backend}\"]\n",
                data_dir = toml_string(&pair.data_dir.to_string_lossy()),
                url = toml_string(&url),
                lease = humantime::format_duration(lease),
                wakegate = toml_string(&support::wakegate().to_string_lossy()),
            );
            let path = dir.join(format!("{id}.toml"));
            std::fs::write(&path, config)?;
            if let (Some(phase), Some(owner)) = (phase, pair.gateways.first()) {
                wait_lease_left(owner.api, lease, lease.saturating_sub(phase)).await?;
            }
            let mut proc = Proc::spawn(
                id,
                Command::new(support::wakegate())
                    .arg("run")
                    .arg("--config")
                    .arg(&path)
                    // Fixed, so that a caller's RUST_LOG=debug cannot change the figures.
                    .env("RUST_LOG", "info")
                    .env("NO_COLOR", "1"),
                &dir,
            )?;
            // The listener opens before the API.
            proc.wait_listening(listen.port()).await?;
            proc.wait_listening(api.port()).await?;
            let mut gateway = Gateway {
                id,
                proc,
                api,
                listen,
            };
            gateway.wait_for("asleep", "gw-a").await?;
            pair.gateways.push(gateway);
        }
        Ok(pair)
    }

    pub fn owner(&self) -> &Gateway {
        &self.gateways[0]
    }

    pub fn follower(&self) -> &Gateway {
        &self.gateways[1]
    }

    /// The echo servers of this pair that run, however they were started.
    pub fn echo_servers(&self) -> Vec<u32> {
        let needle = format!("demo-backend --echo --listen {}", self.backend);
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                    String::from_utf8_lossy(&raw)
                        .replace('\0', " ")
                        .contains(&needle)
                })
            })
            .collect()
    }

    /// How often a gateway started the backend, from the process backend's log.
    pub fn starts(&self) -> usize {
        std::fs::read_to_string(self.data_dir.join(format!("{SERVICE}.log")))
            .unwrap_or_default()
            .matches("--- wakegate starts")
            .count()
    }

    /// Waits until the service is asleep on every gateway still running, owned by `owner`,
    /// and no echo server runs.
    pub async fn wait_asleep(&mut self, owner: &str) -> anyhow::Result<()> {
        for gateway in &mut self.gateways {
            gateway.wait_for("asleep", owner).await?;
        }
        let deadline = Instant::now() + PATIENCE;
        while !self.echo_servers().is_empty() {
            ensure!(
                Instant::now() < deadline,
                "the service is asleep but its echo server still runs"
            );
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}

impl Drop for Pair {
    /// The gateways stopped (the owner stops the backend), no echo server outlives the pair.
    fn drop(&mut self) {
        self.gateways.clear();
        for pid in self.echo_servers() {
            progress(&format!(
                "an echo server was left running (pid {pid}): killed"
            ));
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).expect("a pid is positive"),
                rustix::process::Signal::KILL,
            );
        }
    }
}

pub fn toml_string(text: &str) -> String {
    toml::Value::from(text).to_string()
}

/// A client through `listen`: from its connect to the first byte of its echo; the whole echo
/// is checked; the connection is returned open.
pub async fn client(listen: SocketAddr) -> anyhow::Result<(Duration, TcpStream)> {
    let began = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(listen).await?;
        stream.set_nodelay(true)?;
        stream.write_all(MESSAGE).await?;
        let mut back = [0u8; MESSAGE.len()];
        stream.read_exact(&mut back[..1]).await?;
        let first = began.elapsed();
        stream.read_exact(&mut back[1..]).await?;
        ensure!(&back == MESSAGE, "the echo through {listen} differs");
        anyhow::Ok((first, stream))
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .with_context(|| format!("no echo through {listen} in {PATIENCE:?}"))?
}

/// The service's events after `after`, oldest first, from `api`.
pub async fn events_after(api: SocketAddr, after: i64) -> anyhow::Result<Vec<Value>> {
    let page = api_json(
        api,
        "GET",
        &format!("/api/v1/events?service={SERVICE}&after={after}&limit=100"),
    )
    .await?;
    page["events"]
        .as_array()
        .cloned()
        .with_context(|| format!("no events in the API's answer: {page}"))
}

/// The id of the service's latest event.
pub async fn last_event(api: SocketAddr) -> anyhow::Result<i64> {
    let page = api_json(
        api,
        "GET",
        &format!("/api/v1/events?service={SERVICE}&limit=1"),
    )
    .await?;
    Ok(page["events"][0]["id"].as_i64().unwrap_or(0))
}

/// Waits until the log has, after `after`, an event `found` picks among those; returns it.
pub async fn wait_event(
    api: SocketAddr,
    after: i64,
    patience: Duration,
    what: &str,
    found: impl Fn(&[Value]) -> Option<Value>,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(event) = found(&events_after(api, after).await?) {
            return Ok(event);
        }
        ensure!(Instant::now() < deadline, "no event: {what}");
        tokio::time::sleep(POLL).await;
    }
}

pub fn is_awake(event: &Value) -> bool {
    event["kind"] == "transition" && event["state"] == "awake"
}

/// Waits until the service's lease, as `api` shows it, has `left` left (within a window
/// wider than a poll: that instant comes once in each renewal cycle); returns what it read.
pub async fn wait_lease_left(
    api: SocketAddr,
    lease: Duration,
    left: Duration,
) -> anyhow::Result<Duration> {
    let window = Duration::from_millis(300);
    let deadline = Instant::now() + lease + PATIENCE;
    loop {
        let now = lease_left(api).await?;
        if now <= left && now + window > left {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "the lease never had {left:?} left (last read: {now:?})"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The time left on the service's lease, from a gateway's `GET /api/v1/gateways`.
pub async fn lease_left(api: SocketAddr) -> anyhow::Result<Duration> {
    let list = api_json(api, "GET", "/api/v1/gateways").await?;
    let ms = list["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["service"] == SERVICE)
        .and_then(|o| o["expires_in_ms"].as_i64())
        .with_context(|| format!("no lease on the service in {list}"))?;
    Ok(Duration::from_millis(ms.max(0) as u64))
}
