//! The sleep-mode benchmark: how long a wake takes from each way a server can sleep, on the
//! same server program, in one run: a cold start (`sleep_mode = "stop"`) against a resume from
//! a freeze (`sleep_mode = "freeze"`: SIGCONT), and the same program in a container of the
//! `docker` backend: a cold start of the container (`docker stop`, then start) against an
//! unpause (`sleep_mode = "pause"`). Two programs: wakegate's demo echo server, a native
//! program that opens its port at once (the floor of any cold start), and flying-squid, a
//! Minecraft server in Node that takes a second or two to boot (left out, and said so, when
//! tests/peers/minecraft is not installed; and run as a process only, the test image having
//! no Node).
//!
//! The containers run on Podman's Docker-compatible API, started here as the container tests
//! start it (tests/docker/podman.rs, shared): the busybox image, with the very wakegate binary
//! measured as a process and the host's libraries mounted read-only, on the host network.
//! Left out, and said so, when Podman is not installed (scripts/test installs it).
//!
//! Each wake is measured twice: by a client, from its connect to wakegate's listener to the
//! first byte of the server's answer (an echo; a Minecraft status answer); and by wakegate,
//! the `duration_ms` of its `awake` event (from the start of the wake to ready), whose
//! `woke_from` is checked to be the mode measured.
//!
//! `bench/run` runs this file after the TCP and event benchmarks; `cargo bench --bench sleep`
//! runs it alone.

// Shared with the container tests, which use more of it than this file does.
#[allow(dead_code)]
#[path = "../tests/docker/podman.rs"]
mod podman;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use support::{Proc, TempDir, api_json, free_ports, loopback, progress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The gateway under test, built with the bench profile for this target.
const WAKEGATE: &str = env!("CARGO_BIN_EXE_wakegate");

/// Wakes measured per program and mode, after one that is not counted (the first wake of a
/// freezing service is a cold start).
const ECHO_RUNS: usize = 10;
const SQUID_RUNS: usize = 3;
/// Every wait for a peer is bounded by this.
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(10);

/// How a service sleeps between the wakes measured.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Stopped for real: each wake starts the program.
    Stop,
    /// Frozen with SIGSTOP: each wake is a SIGCONT.
    Freeze,
    /// A container stopped for real: each wake starts it.
    ContainerStop,
    /// A container paused: each wake unpauses it.
    Pause,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Stop, Mode::Freeze, Mode::ContainerStop, Mode::Pause];

    /// Its `sleep_mode` in the config.
    fn key(self) -> &'static str {
        match self {
            Mode::Stop | Mode::ContainerStop => "stop",
            Mode::Freeze => "freeze",
            Mode::Pause => "pause",
        }
    }

    /// The `sleep_mode` the API shows while asleep, and the `woke_from` of the next wake.
    fn asleep(self) -> &'static str {
        match self {
            Mode::Stop | Mode::ContainerStop => "stopped",
            Mode::Freeze => "frozen",
            Mode::Pause => "paused",
        }
    }

    /// The service's name part: a process or a container.
    fn name(self) -> &'static str {
        match self {
            Mode::Stop => "stop",
            Mode::Freeze => "freeze",
            Mode::ContainerStop => "container-stop",
            Mode::Pause => "container-pause",
        }
    }

    fn in_container(self) -> bool {
        matches!(self, Mode::ContainerStop | Mode::Pause)
    }
}

/// A server program, and what a client sends it to get a first byte back.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Program {
    Echo,
    Squid,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Echo => "echo",
            Program::Squid => "squid",
        }
    }

    fn runs(self) -> usize {
        match self {
            Program::Echo => ECHO_RUNS,
            Program::Squid => SQUID_RUNS,
        }
    }

    /// The `[service.backend]` and `[service.readiness]` lines of the program on `backend`.
    fn service(self, backend: SocketAddr, peers: &Path) -> String {
        match self {
            Program::Echo => format!(
                "command = [{}, \"demo-backend\", \"--echo\", \"--listen\", \"{backend}\"]\n",
                toml_string(WAKEGATE)
            ),
            Program::Squid => format!(
                "command = [\"node\", \"squid.js\", \"{}\", \"1.20.4\", \"bench\"]\n\
                 cwd = {}\nstop_command = \"stop\"\n\
                 [service.readiness]\ntype = \"log\"\npattern = 'Done \\(\\d'\n",
                backend.port(),
                toml_string(&peers.display().to_string())
            ),
        }
    }

    /// What the client sends: 32 bytes to echo, or a Minecraft status request.
    fn request(self) -> Vec<u8> {
        match self {
            Program::Echo => b"wakegate bench: wake and answer\n".to_vec(),
            // Handshake (protocol 765, host "bench", port 25565, next state status), then the
            // status request: each a VarInt length and a packet id 0.
            Program::Squid => {
                let mut handshake = vec![0x00, 0xfd, 0x05, 5];
                handshake.extend_from_slice(b"bench");
                handshake.extend_from_slice(&[0x63, 0xdd, 0x01]);
                let mut bytes = vec![handshake.len() as u8];
                bytes.extend(handshake);
                bytes.extend([0x01, 0x00]);
                bytes
            }
        }
    }
}

fn toml_string(text: &str) -> String {
    toml::Value::from(text).to_string()
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let table = runtime.block_on(run())?;
    print!("{table}");
    Ok(())
}

/// flying-squid's folder, when its packages are installed.
fn peers() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/minecraft");
    let installed = dir.join("node_modules/flying-squid").exists()
        && Command::new("node").arg("--version").output().is_ok();
    installed.then_some(dir)
}

async fn run() -> anyhow::Result<String> {
    let dir = TempDir::new("wakegate-bench-sleep")?;
    let mut programs = vec![Program::Echo];
    match peers() {
        Some(_) => programs.push(Program::Squid),
        None => progress(
            "flying-squid is not installed (npm ci --prefix tests/peers/minecraft): measuring the echo server only",
        ),
    }
    let peers = peers().unwrap_or_default();
    let containers = match Containers::start(&dir.0) {
        Ok(containers) => Some(containers),
        Err(why) => {
            progress(&format!("no containers measured: {why:#}"));
            None
        }
    };
    let mut rows = Vec::new();
    for program in programs {
        let modes: Vec<Mode> = Mode::ALL
            .into_iter()
            .filter(|mode| {
                !mode.in_container() || (program == Program::Echo && containers.is_some())
            })
            .collect();
        // Stopped when dropped (SIGTERM): it stops its servers, a frozen one too.
        let mut gateway =
            Gateway::start(&dir.0, program, &peers, &modes, containers.as_ref()).await?;
        let mut row = Row {
            program,
            client: Default::default(),
            wakegate: Default::default(),
        };
        for mode in modes {
            let service = format!("{}-{}", program.name(), mode.name());
            // The first wake of each is not counted: it leaves a freezing service frozen.
            let first = if mode.in_container() {
                Mode::ContainerStop
            } else {
                Mode::Stop
            };
            gateway.wake_once(&service, program, first).await?;
            for i in 1..=program.runs() {
                let (client, woke) = gateway.wake_once(&service, program, mode).await?;
                progress(&format!(
                    "{service} {i}/{}: client {client:.1} ms, wakegate {woke} ms",
                    program.runs()
                ));
                row.client[mode as usize].push(client);
                row.wakegate[mode as usize].push(woke as f64);
            }
        }
        gateway.proc.check_running()?;
        rows.push(row);
    }
    Ok(table(&rows))
}

/// Podman's API for the container modes, and the containers made on it: removed when dropped.
struct Containers {
    podman: podman::Podman,
    label: String,
}

impl Containers {
    fn start(dir: &Path) -> anyhow::Result<Containers> {
        ensure!(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is not installed (scripts/test installs it)"
        );
        let podman_dir = dir.join("podman");
        std::fs::create_dir_all(&podman_dir)?;
        let podman = podman::Podman::start(&podman_dir);
        Ok(Containers {
            podman,
            label: format!("wakegate-bench={}", std::process::id()),
        })
    }

    /// Creates the container of the echo server answering on `backend` (the host network),
    /// the wakegate binary and the host's libraries mounted read-only into the test image;
    /// returns its name.
    fn echo(&self, mode: Mode, backend: SocketAddr) -> String {
        let name = format!("wg-bench-{}-{}", std::process::id(), mode.name());
        let binary = format!("{WAKEGATE}:/wakegate:ro");
        let listen = backend.to_string();
        let mut args = vec![
            "create",
            "--name",
            &name,
            "--label",
            &self.label,
            "--init",
            "--network",
            "host",
            "-v",
            &binary,
        ];
        for libraries in ["/usr:/usr:ro", "/lib:/lib:ro", "/lib64:/lib64:ro"] {
            args.extend(["-v", libraries]);
        }
        args.extend([
            podman::IMAGE,
            "/wakegate",
            "demo-backend",
            "--echo",
            "--listen",
            &listen,
        ]);
        self.podman.cli(&args);
        name
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let (label, value) = self.label.split_once('=').unwrap_or_default();
        for name in self.podman.named(label, value) {
            let _ = self
                .podman
                .try_cli(&["rm", "--force", "--time", "0", &name]);
        }
    }
}

/// A running `wakegate run` with one service per mode for one program, asleep between wakes.
struct Gateway {
    proc: Proc,
    api: SocketAddr,
    /// Service name and where its `tcp` listener is.
    listeners: Vec<(String, SocketAddr)>,
}

impl Gateway {
    async fn start(
        dir: &Path,
        program: Program,
        peers: &Path,
        modes: &[Mode],
        containers: Option<&Containers>,
    ) -> anyhow::Result<Gateway> {
        let [api_port, ports @ ..] = free_ports::<9>()?;
        let api = loopback(api_port);
        let data_dir = dir.join(format!("{}-data", program.name()));
        let mut config = format!(
            "[gateway]\ndata_dir = {}\napi = \"{api}\"\nshutdown_grace = \"1s\"\n",
            toml_string(&data_dir.display().to_string())
        );
        let mut listeners = Vec::new();
        for (&mode, pair) in modes.iter().zip(ports.chunks(2)) {
            let (listen, backend) = (loopback(pair[0]), loopback(pair[1]));
            let name = format!("{}-{}", program.name(), mode.name());
            let backend_keys = match containers {
                Some(containers) if mode.in_container() => format!(
                    "type = \"docker\"\nsocket = {}\ncontainer = \"{}\"\nnetwork = \"host\"\n\
                     port = {}\nsleep_mode = \"{}\"\n",
                    toml_string(&format!("unix://{}", containers.podman.socket.display())),
                    containers.echo(mode, backend),
                    backend.port(),
                    mode.key(),
                ),
                _ => format!(
                    "type = \"process\"\naddress = \"{backend}\"\nsleep_mode = \"{}\"\n{}",
                    mode.key(),
                    program.service(backend, peers),
                ),
            };
            // Only the bench puts it to sleep, through the API.
            config.push_str(&format!(
                "\n[[service]]\nname = \"{name}\"\nidle_timeout = \"1h\"\nwake_timeout = \"60s\"\n\
                 [[service.listen]]\ntype = \"tcp\"\nbind = \"{listen}\"\n\
                 [service.backend]\n{backend_keys}",
            ));
            listeners.push((name, listen));
        }
        let path = dir.join(format!("{}.toml", program.name()));
        std::fs::write(&path, config)?;
        let mut proc = Proc::spawn(
            &format!("wakegate-{}", program.name()),
            Command::new(WAKEGATE)
                .arg("run")
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1"),
            dir,
        )?;
        for port in listeners
            .iter()
            .map(|(_, addr)| addr.port())
            .chain([api_port])
        {
            proc.wait_listening(port).await?;
        }
        Ok(Gateway {
            proc,
            api,
            listeners,
        })
    }

    /// Wakes the asleep `service` by a client's request and measures it: the client's wait
    /// for its first byte (ms), and wakegate's own `duration_ms`, checked to be a wake from
    /// `mode`. Puts it back to sleep before it returns.
    async fn wake_once(
        &self,
        service: &str,
        program: Program,
        mode: Mode,
    ) -> anyhow::Result<(f64, u64)> {
        self.wait_asleep(service).await?;
        let listener = self
            .listeners
            .iter()
            .find(|(name, _)| name == service)
            .map(|(_, addr)| *addr)
            .context("no such service")?;
        let began = Instant::now();
        let mut client = TcpStream::connect(listener).await?;
        client.set_nodelay(true)?;
        client.write_all(&program.request()).await?;
        let mut first = [0u8; 1];
        tokio::time::timeout(PATIENCE, client.read_exact(&mut first))
            .await
            .with_context(|| format!("{service} did not answer in time"))??;
        let client_ms = began.elapsed().as_secs_f64() * 1e3;
        drop(client);

        let page = api_json(
            self.api,
            "GET",
            &format!("/api/v1/events?service={service}&limit=20"),
        )
        .await?;
        let ready = page["events"]
            .as_array()
            .context("no events in the API's answer")?
            .iter()
            .rev()
            .find(|e| e["kind"] == "transition" && e["state"] == "awake")
            .context("no awake event")?
            .clone();
        ensure!(
            ready["detail"]["woke_from"] == mode.asleep(),
            "{service} woke from {} rather than {}: {ready}",
            ready["detail"]["woke_from"],
            mode.asleep()
        );
        let woke = ready["detail"]["duration_ms"]
            .as_u64()
            .context("no duration_ms")?;
        api_json(
            self.api,
            "POST",
            &format!("/api/v1/services/{service}/sleep"),
        )
        .await?;
        Ok((client_ms, woke))
    }

    /// Waits until `service` is asleep (a stop or a freeze takes a moment).
    async fn wait_asleep(&self, service: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let view = api_json(self.api, "GET", &format!("/api/v1/services/{service}")).await?;
            if view["state"] == "asleep" {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "`{service}` is still {}",
                view["state"]
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// One program's figures, by mode: the client's and wakegate's, in ms.
#[derive(Debug)]
struct Row {
    program: Program,
    client: [Vec<f64>; 4],
    wakegate: [Vec<f64>; 4],
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn cell(values: &[f64]) -> String {
    if values.is_empty() {
        return "-".to_string();
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{:.1} ({min:.1}..{max:.1})", median(values))
}

fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "\nwakegate sleep-mode benchmark, loopback, {} CPUs: a wake from each sleep mode, median (min..max) ms\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let line = |cells: [&str; 5]| {
        let text = format!(
            "{:<52}{:<25}{:<25}{:<25}{}",
            cells[0], cells[1], cells[2], cells[3], cells[4]
        );
        format!("{}\n", text.trim_end())
    };
    out += &line([
        "",
        "process: cold start",
        "process: SIGCONT",
        "container: cold start",
        "container: unpause",
    ]);
    for row in rows {
        let program = match row.program {
            Program::Echo => "echo server",
            Program::Squid => "flying-squid 1.20.4",
        };
        for (what, figures) in [
            ("connect → first byte", &row.client),
            ("wakegate's wake (duration_ms)", &row.wakegate),
        ] {
            let [stop, freeze, container, pause] =
                Mode::ALL.map(|mode| cell(&figures[mode as usize]));
            out += &line([
                &format!("{program}: {what}"),
                &stop,
                &freeze,
                &container,
                &pause,
            ]);
        }
    }
    out += "\nprocess: sleep_mode \"stop\" and \"freeze\"; container: the docker backend on Podman, sleep_mode \"stop\" and \"pause\"; - not measured.\n";
    out
}
