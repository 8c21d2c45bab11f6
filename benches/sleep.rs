//! The sleep-mode benchmark: how long a wake takes from each way a server can sleep, on the
//! same server program, in one run: a cold start (`sleep_mode = "stop"`) against a resume from
//! a freeze (`sleep_mode = "freeze"`: SIGCONT). Two programs: wakegate's demo echo server, a
//! native program that opens its port at once (the floor of any cold start), and flying-squid,
//! a Minecraft server in Node that takes a second or two to boot (left out, and said so, when
//! tests/peers/minecraft is not installed).
//!
//! Each wake is measured twice: by a client, from its connect to wakegate's listener to the
//! first byte of the server's answer (an echo; a Minecraft status answer); and by wakegate,
//! the `duration_ms` of its `awake` event (from the start of the wake to ready), whose
//! `woke_from` is checked to be the mode measured.
//!
//! The third mode, `docker pause`, comes with the docker backend: a [`Mode`] of its own, run
//! on a container of the same echo server, fills the third column of the table.
//!
//! `bench/run` runs this file after the TCP and event benchmarks; `cargo bench --bench sleep`
//! runs it alone.

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
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::Stop, Mode::Freeze];

    /// Its `sleep_mode` in the config.
    fn key(self) -> &'static str {
        match self {
            Mode::Stop => "stop",
            Mode::Freeze => "freeze",
        }
    }

    /// The `sleep_mode` the API shows while asleep, and the `woke_from` of the next wake.
    fn asleep(self) -> &'static str {
        match self {
            Mode::Stop => "stopped",
            Mode::Freeze => "frozen",
        }
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
    let mut rows = Vec::new();
    for program in programs {
        // Stopped when dropped (SIGTERM): it stops its servers, a frozen one too.
        let mut gateway = Gateway::start(&dir.0, program, &peers).await?;
        let mut row = Row {
            program,
            client: Default::default(),
            wakegate: Default::default(),
        };
        for mode in Mode::ALL {
            let service = format!("{}-{}", program.name(), mode.key());
            // The first wake of each is not counted: it leaves a freezing service frozen.
            gateway.wake_once(&service, program, Mode::Stop).await?;
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

/// A running `wakegate run` with one service per mode for one program, asleep between wakes.
struct Gateway {
    proc: Proc,
    api: SocketAddr,
    /// Service name and where its `tcp` listener is.
    listeners: Vec<(String, SocketAddr)>,
}

impl Gateway {
    async fn start(dir: &Path, program: Program, peers: &Path) -> anyhow::Result<Gateway> {
        let [
            api_port,
            listen_stop,
            listen_freeze,
            backend_stop,
            backend_freeze,
        ] = free_ports()?;
        let api = loopback(api_port);
        let data_dir = dir.join(format!("{}-data", program.name()));
        let mut config = format!(
            "[gateway]\ndata_dir = {}\napi = \"{api}\"\nshutdown_grace = \"1s\"\n",
            toml_string(&data_dir.display().to_string())
        );
        let mut listeners = Vec::new();
        let ports = [(listen_stop, backend_stop), (listen_freeze, backend_freeze)];
        for (mode, (listen, backend)) in Mode::ALL.into_iter().zip(ports) {
            let name = format!("{}-{}", program.name(), mode.key());
            // Only the bench puts it to sleep, through the API.
            config.push_str(&format!(
                "\n[[service]]\nname = \"{name}\"\nidle_timeout = \"1h\"\nwake_timeout = \"60s\"\n\
                 [[service.listen]]\ntype = \"tcp\"\nbind = \"{}\"\n\
                 [service.backend]\ntype = \"process\"\naddress = \"{}\"\nsleep_mode = \"{}\"\n{}",
                loopback(listen),
                loopback(backend),
                mode.key(),
                program.service(loopback(backend), peers),
            ));
            listeners.push((name, loopback(listen)));
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
        for port in [listen_stop, listen_freeze, api_port] {
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
    client: [Vec<f64>; 2],
    wakegate: [Vec<f64>; 2],
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

fn cell(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    format!("{:.1} ({min:.1}..{max:.1})", median(values))
}

fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "\nwakegate sleep-mode benchmark, loopback, {} CPUs: a wake from each sleep mode, median (min..max) ms\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let line = |cells: [&str; 4]| {
        let text = format!(
            "{:<52}{:<24}{:<24}{}",
            cells[0], cells[1], cells[2], cells[3]
        );
        format!("{}\n", text.trim_end())
    };
    out += &line(["", "cold start (stop)", "SIGCONT (freeze)", "docker pause"]);
    for row in rows {
        let program = match row.program {
            Program::Echo => "echo server",
            Program::Squid => "flying-squid 1.20.4",
        };
        for (what, figures) in [
            ("connect → first byte", &row.client),
            ("wakegate's wake (duration_ms)", &row.wakegate),
        ] {
            out += &line([
                &format!("{program}: {what}"),
                &cell(&figures[Mode::Stop as usize]),
                &cell(&figures[Mode::Freeze as usize]),
                "-",
            ]);
        }
    }
    out += "\ndocker pause: the docker backend fills this column (a container of the same echo server).\n";
    out
}
