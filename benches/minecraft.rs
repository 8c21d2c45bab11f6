//! The Minecraft benchmark: what a player and a server list see through wakegate, next to the
//! same server reached directly, all measured in one run on loopback with real peers
//! (tests/peers/minecraft: flying-squid servers, mineflayer bots, mcstatus pings).
//!
//! 1. Join time, from a bot's connect to its spawn in the world: warm (the server awake)
//!    through wakegate vs directly; cold (the server asleep) through wakegate vs the best a
//!    hand-started server could do, its boot (launch to `Done`) plus a direct join.
//! 2. Status-ping latency: wakegate answering for the sleeping server vs the awake server
//!    answering itself (and through wakegate, once awake).
//! 3. Gateway RSS with 100 bots in the world through it, next to its RSS with none.
//!
//! `bench/minecraft` installs the peers and runs this file; `cargo bench --bench minecraft`
//! runs it alone once they are installed. Compare the figures of one run, not across runs.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use support::{Proc, TempDir, free_ports, progress, rss_mib};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};

/// The gateway under test, built with the bench profile for this target.
const WAKEGATE: &str = env!("CARGO_BIN_EXE_wakegate");

/// The game version of the servers and bots.
const VERSION: &str = "1.20.4";
/// Joins measured each way, one bot at a time.
const WARM_RUNS: usize = 5;
const COLD_RUNS: usize = 3;
/// Status pings each way, one after the other, each on its own connection.
const PINGS: usize = 50;
/// Bots in the world at once for the memory reading; started this many ms apart.
const CROWD: usize = 100;
const CROWD_STAGGER_MS: u64 = 20;
/// A flying-squid server takes its 100 players slowly (each join is told to every player).
const CROWD_PATIENCE: Duration = Duration::from_secs(240);
/// Every other wait for a peer is bounded by this.
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(10);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let figures = runtime.block_on(run())?;
    print!("{}", figures.table());
    Ok(())
}

fn peers() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/minecraft");
    for package in ["flying-squid", "mineflayer"] {
        ensure!(
            dir.join("node_modules").join(package).exists(),
            "{package} is missing; bench/minecraft installs it (npm ci --prefix tests/peers/minecraft)"
        );
    }
    Ok(dir)
}

fn python() -> anyhow::Result<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-peers/bin/python");
    ensure!(
        python.exists(),
        "mcstatus is missing; bench/minecraft installs it into .venv-peers"
    );
    Ok(python)
}

async fn run() -> anyhow::Result<Figures> {
    let peers = peers()?;
    let python = python()?;
    let dir = TempDir::new("wakegate-bench-minecraft")?;
    let [direct_port, backend_port, listen_port, api_port] = free_ports()?;

    progress("starting a flying-squid server to join directly, and wakegate in front of another");
    let (mut direct, _) = Squid::start(&dir.0, &peers, "direct", direct_port).await?;
    let gateway = Gateway::start(&dir.0, &peers, api_port, listen_port, backend_port).await?;
    gateway.wait_state("asleep").await?;

    progress(&format!(
        "{PINGS} status pings to the sleeping server through wakegate"
    ));
    let ping_asleep = pings(&python, &peers, listen_port).await?;
    ensure!(
        gateway.state().await? == "asleep",
        "the status pings woke the server"
    );
    progress(&format!(
        "{PINGS} status pings to the awake server directly"
    ));
    let ping_direct = pings(&python, &peers, direct_port).await?;

    progress(&format!("{COLD_RUNS} cold joins through wakegate"));
    let mut cold = Vec::new();
    for i in 0..COLD_RUNS {
        gateway.wait_state("asleep").await?;
        let (ms, bots) = join_once(&peers, listen_port, &format!("Cold{i}")).await?;
        cold.push(ms);
        bots.quit().await?;
        gateway.post("sleep").await?;
    }
    progress(&format!(
        "{COLD_RUNS} servers launched by hand, each joined directly as soon as it is `Done`"
    ));
    let (mut boots, mut first_joins) = (Vec::new(), Vec::new());
    for i in 0..COLD_RUNS {
        let [port] = free_ports()?;
        let (_server, boot) = Squid::start(&dir.0, &peers, &format!("boot{i}"), port).await?;
        let (ms, bots) = join_once(&peers, port, &format!("First{i}")).await?;
        boots.push(boot.as_secs_f64() * 1e3);
        first_joins.push(ms);
        bots.quit().await?;
    }

    gateway.wait_state("asleep").await?;
    gateway.post("wake").await?;
    gateway.wait_state("awake").await?;
    progress(&format!(
        "{WARM_RUNS} warm joins through wakegate and {WARM_RUNS} directly, in turns"
    ));
    let (mut warm, mut warm_direct) = (Vec::new(), Vec::new());
    for i in 0..WARM_RUNS {
        let (ms, bots) = join_once(&peers, listen_port, &format!("Warm{i}")).await?;
        warm.push(ms);
        bots.quit().await?;
        let (ms, bots) = join_once(&peers, direct_port, &format!("Direct{i}")).await?;
        warm_direct.push(ms);
        bots.quit().await?;
    }
    progress(&format!(
        "{PINGS} status pings to the awake server through wakegate"
    ));
    let ping_awake = pings(&python, &peers, listen_port).await?;
    direct.check_running()?;

    let rss_before = rss_mib(gateway.proc.pid())?;
    progress(&format!("{CROWD} bots joining through wakegate"));
    let names: Vec<String> = (0..CROWD).map(|i| format!("Crowd{i}")).collect();
    let mut crowd = Bots::join(&peers, listen_port, &names, true)?;
    let began = Instant::now();
    let mut spawned = 0;
    while spawned < CROWD {
        let left = CROWD_PATIENCE.saturating_sub(began.elapsed());
        crowd.next(left, |r| r.get("spawn").is_some()).await?;
        spawned += 1;
    }
    let crowd_seconds = began.elapsed().as_secs_f64();
    let connections = gateway.view().await?["connections"].as_u64().unwrap_or(0);
    ensure!(
        connections == CROWD as u64,
        "wakegate counts {connections} connections, not {CROWD}"
    );
    let rss_crowd = rss_mib(gateway.proc.pid())?;
    let backend_pid = std::fs::read(gateway.data_dir.join("mc.pid"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["pid"].as_u64());
    let rss_server = backend_pid.map(|pid| rss_mib(pid as u32)).transpose()?;
    crowd.quit().await?;
    for problem in gateway.proc.log_problems() {
        progress(&format!("wakegate logged: {problem}"));
    }

    Ok(Figures {
        setup: setup(&peers, &python)?,
        cold: Pair::of(
            boots.iter().zip(&first_joins).map(|(b, j)| b + j).collect(),
            cold,
        ),
        warm: Pair::of(warm_direct, warm),
        boots,
        first_joins,
        ping: Pair::of(ping_direct, ping_asleep),
        ping_awake: Pair::of(vec![], ping_awake),
        rss_before,
        rss_crowd,
        rss_server,
        crowd_seconds,
    })
}

// ---------------------------------------------------------------------------------------------
// Peers.

/// A flying-squid server launched by hand, ready once it prints vanilla's `Done (…)!` line.
struct Squid;

impl Squid {
    /// Launches it and waits for `Done`; returns it and how long that took.
    async fn start(
        dir: &Path,
        peers: &Path,
        name: &str,
        port: u16,
    ) -> anyhow::Result<(Proc, Duration)> {
        let began = Instant::now();
        let mut proc = Proc::spawn(
            name,
            Command::new("node")
                .args(["squid.js", &port.to_string(), VERSION, name])
                .current_dir(peers),
            dir,
        )?;
        let log = dir.join(format!("{name}.log"));
        loop {
            proc.check_running()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().any(|l| l.starts_with("Done (")) {
                return Ok((proc, began.elapsed()));
            }
            ensure!(began.elapsed() < PATIENCE, "{name} never printed `Done`");
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `node bot.js`: mineflayer bots reporting as JSON lines, leaving when told to.
struct Bots {
    child: tokio::process::Child,
    lines: Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Bots {
    fn join(peers: &Path, port: u16, names: &[String], light: bool) -> anyhow::Result<Bots> {
        let mut command = tokio::process::Command::new("node");
        command
            .args(["bot.js", &port.to_string(), "mc.example.com", VERSION])
            .args(names)
            .current_dir(peers)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if light {
            command
                .env("LIGHT", "1")
                .env("STAGGER_MS", CROWD_STAGGER_MS.to_string());
        }
        let mut child = command.spawn().context("cannot run node")?;
        let lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        Ok(Bots { child, lines })
    }

    /// The next report that matches `want`; a bot kicked or failing ends the bench.
    async fn next(
        &mut self,
        patience: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let read = async {
            while let Some(line) = self.lines.next_line().await? {
                let Ok(report) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if want(&report) {
                    return Ok(report);
                }
                if ["kicked", "error", "end"]
                    .iter()
                    .any(|k| report.get(k).is_some())
                {
                    bail!("a bot failed: {report}");
                }
            }
            bail!("the bots ended")
        };
        tokio::time::timeout(patience, read)
            .await
            .context("the bots took too long")?
    }

    async fn quit(mut self) -> anyhow::Result<()> {
        if let Some(stdin) = self.child.stdin.as_mut() {
            stdin.write_all(b"quit\n").await?;
        }
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .context("the bots did not leave")??;
        Ok(())
    }
}

/// One bot joins; the milliseconds from its connect to its spawn (measured by the bot).
async fn join_once(peers: &Path, port: u16, name: &str) -> anyhow::Result<(f64, Bots)> {
    let mut bots = Bots::join(peers, port, &[name.to_string()], false)?;
    let spawn = bots.next(PATIENCE, |r| r.get("spawn").is_some()).await?;
    let ms = spawn["spawn"].as_f64().context("no spawn time")?;
    Ok((ms, bots))
}

/// `PINGS` status pings with mcstatus; each one's wall time in ms.
async fn pings(python: &Path, peers: &Path, port: u16) -> anyhow::Result<Vec<f64>> {
    let out = tokio::process::Command::new(python)
        .args(["ping.py", &port.to_string(), &PINGS.to_string()])
        .current_dir(peers)
        .output()
        .await?;
    let mut all = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let ping: serde_json::Value = serde_json::from_str(line)?;
        all.push(
            ping["ms"]
                .as_f64()
                .with_context(|| format!("a ping failed: {ping}"))?,
        );
    }
    ensure!(
        all.len() == PINGS,
        "ping.py printed {} pings: {}",
        all.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(all)
}

/// wakegate with one service: flying-squid as its `process` backend behind a `minecraft`
/// listener that holds joining players.
struct Gateway {
    proc: Proc,
    api: SocketAddr,
    data_dir: PathBuf,
}

impl Gateway {
    async fn start(
        dir: &Path,
        peers: &Path,
        api_port: u16,
        listen_port: u16,
        backend_port: u16,
    ) -> anyhow::Result<Gateway> {
        let data_dir = dir.join("wakegate-data");
        let config = format!(
            r#"[gateway]
data_dir = {data}
api = "127.0.0.1:{api_port}"
shutdown_grace = "1s"

[[service]]
name = "mc"
idle_timeout = "1h"
wake_timeout = "60s"
[service.backend]
type = "process"
command = ["node", "squid.js", "{backend_port}", "{VERSION}", "through wakegate"]
cwd = {cwd}
address = "127.0.0.1:{backend_port}"
stop_command = "stop"
stop_timeout = "10s"
[service.readiness]
type = "log"
pattern = 'Done \(\d'
[[service.listen]]
type = "minecraft"
bind = "127.0.0.1:{listen_port}"
"#,
            data = toml::Value::from(data_dir.to_string_lossy().into_owned()),
            cwd = toml::Value::from(peers.to_string_lossy().into_owned()),
        );
        let path = dir.join("wakegate.toml");
        std::fs::write(&path, config)?;
        let mut proc = Proc::spawn(
            "wakegate",
            Command::new(WAKEGATE)
                .arg("run")
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1"),
            dir,
        )?;
        proc.wait_listening(listen_port).await?;
        proc.wait_listening(api_port).await?;
        Ok(Gateway {
            proc,
            api: SocketAddr::from(([127, 0, 0, 1], api_port)),
            data_dir,
        })
    }

    async fn request(&self, method: &str, path: &str) -> anyhow::Result<serde_json::Value> {
        support::api_json(self.api, method, path).await
    }

    async fn view(&self) -> anyhow::Result<serde_json::Value> {
        self.request("GET", "/api/v1/services/mc").await
    }

    async fn state(&self) -> anyhow::Result<String> {
        let view = self.view().await?;
        view["state"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no state in {view}"))
    }

    async fn wait_state(&self, want: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let state = self.state().await?;
            if state == want {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "`mc` is still {state}, not {want}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `wake` or `sleep`.
    async fn post(&self, action: &str) -> anyhow::Result<()> {
        self.request("POST", &format!("/api/v1/services/mc/{action}"))
            .await?;
        Ok(())
    }
}

/// Versions of the peers, from their package files.
fn setup(peers: &Path, python: &Path) -> anyhow::Result<String> {
    let version = |package: &str| -> anyhow::Result<String> {
        let file = peers
            .join("node_modules")
            .join(package)
            .join("package.json");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file)?)?;
        Ok(json["version"].as_str().unwrap_or("?").to_string())
    };
    let mcstatus = Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('mcstatus'))",
        ])
        .output()?;
    let node = Command::new("node").arg("--version").output()?;
    Ok(format!(
        "{} CPUs; game {VERSION}; flying-squid {}, mineflayer {}, mcstatus {}, node {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        version("flying-squid")?,
        version("mineflayer")?,
        String::from_utf8_lossy(&mcstatus.stdout).trim(),
        String::from_utf8_lossy(&node.stdout).trim(),
    ))
}

// ---------------------------------------------------------------------------------------------
// The report.

fn list_ms(runs: &[f64]) -> String {
    let all: Vec<String> = runs.iter().map(|ms| format!("{ms:.0}")).collect();
    format!("{} ms", all.join(", "))
}

/// Runs of one figure measured two ways: the reference and wakegate.
struct Pair {
    reference: Vec<f64>,
    wakegate: Vec<f64>,
}

impl Pair {
    fn of(mut reference: Vec<f64>, mut wakegate: Vec<f64>) -> Pair {
        reference.sort_by(f64::total_cmp);
        wakegate.sort_by(f64::total_cmp);
        Pair {
            reference,
            wakegate,
        }
    }

    fn median_of(&self, runs: &[f64]) -> f64 {
        match runs.len() {
            0 => f64::NAN,
            n if n % 2 == 0 => (runs[n / 2 - 1] + runs[n / 2]) / 2.0,
            n => runs[n / 2],
        }
    }

    fn cell(&self, runs: &[f64]) -> String {
        if runs.is_empty() {
            return "-".into();
        }
        format!(
            "{:.1} ({:.1}..{:.1})",
            self.median_of(runs),
            runs[0],
            runs[runs.len() - 1]
        )
    }

    fn ratio(&self) -> String {
        if self.reference.is_empty() || self.wakegate.is_empty() {
            return String::new();
        }
        format!(
            "{:.2}",
            self.median_of(&self.wakegate) / self.median_of(&self.reference)
        )
    }
}

struct Figures {
    setup: String,
    warm: Pair,
    cold: Pair,
    boots: Vec<f64>,
    first_joins: Vec<f64>,
    ping: Pair,
    ping_awake: Pair,
    rss_before: f64,
    rss_crowd: f64,
    rss_server: Option<f64>,
    crowd_seconds: f64,
}

impl Figures {
    fn table(&self) -> String {
        let row = |label: &str, cells: [String; 3]| {
            let line = format!("{label:<34}{:<26}{:<26}{}", cells[0], cells[1], cells[2]);
            format!("{}\n", line.trim_end())
        };
        let pair = |label: &str, p: &Pair| {
            row(
                label,
                [p.cell(&p.reference), p.cell(&p.wakegate), p.ratio()],
            )
        };
        let mut out = format!(
            "\nwakegate Minecraft benchmark, loopback: {}\n\n",
            self.setup
        );
        out += &row(
            "median (min..max)",
            ["reference", "wakegate", "wakegate/reference"].map(String::from),
        );
        out += &pair("join, warm: connect → spawn (ms)", &self.warm);
        out += &pair("join, cold: connect → spawn (ms)", &self.cold);
        out += &pair("status ping while asleep (ms)", &self.ping);
        out += &row(
            "status ping, awake, proxied (ms)",
            [
                "-".into(),
                self.ping_awake.cell(&self.ping_awake.wakegate),
                String::new(),
            ],
        );
        out += &row(
            "gateway RSS (MiB)",
            [
                format!("{:.1} with no player", self.rss_before),
                format!("{:.1} with {CROWD} bots", self.rss_crowd),
                format!(
                    "+{:.0} KiB per bot",
                    (self.rss_crowd - self.rss_before) * 1024.0 / CROWD as f64
                ),
            ],
        );
        out += &format!(
            "\njoin, warm: reference = a bot joining the awake server directly; {WARM_RUNS} each, in turns.\n\
             join, cold: reference = a server launched by hand, launch to `Done` ({}), plus a bot's\n\
             \x20 direct join right after ({}; a fresh server's first join is slower than later ones);\n\
             \x20 wakegate = a bot joining the sleeping server, held until it is ready (connect → spawn).\n\
             status ping: mcstatus, {PINGS} pings each on a new connection; reference = the awake server\n\
             \x20 answering directly; wakegate = wakegate answering for the sleeping server.\n\
             RSS: {CROWD} light bots (no physics, no chunk decoding) in the world through wakegate,\n\
             \x20 started {CROWD_STAGGER_MS} ms apart, all in after {:.0} s; the server itself: {}.\n",
            list_ms(&self.boots),
            list_ms(&self.first_joins),
            self.crowd_seconds,
            self.rss_server
                .map_or("unknown".into(), |m| format!("{m:.0} MiB RSS")),
        );
        out
    }
}
