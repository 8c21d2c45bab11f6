//! The UDP and Bedrock benchmark: wakegate's `udp` and `bedrock` listeners next to a reference
//! measured in the same run, all on loopback.
//!
//! 1. UDP datagrams: a UDP echo server reached directly, through nginx's `stream` UDP proxy
//!    and through wakegate's `udp` listener (the service awake). Throughput: echoed datagrams
//!    per second with several clients each keeping a window in flight, and their latency;
//!    latency alone: one client, one datagram in flight (p50 and p99 of each round trip).
//! 2. A Bedrock bot's join (bedrock-protocol's client, connect to spawn) with bedrock-protocol's
//!    server as the backend: cold through wakegate (the server asleep) vs the best a server
//!    started by hand could do, its boot (launch to the first pong) plus a direct join; and
//!    warm through wakegate vs directly.
//!
//! `bench/run` installs nginx and its stream module and runs this file; the Bedrock part needs
//! the peers of tests/peers/bedrock (scripts/test installs them) and is left out without them.
//! `cargo bench --bench udp` runs it alone. Compare ratios within one run, not across runs.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use support::{Proc, TempDir, free_ports, loopback, progress};

/// The gateway under test, built with the bench profile for this target.
const WAKEGATE: &str = env!("CARGO_BIN_EXE_wakegate");

/// Throughput: how many clients at once, how many datagrams each keeps in flight.
const CLIENTS: usize = 4;
const WINDOW: usize = 8;
/// Bytes per datagram: a game's or a DNS query's size.
const PAYLOAD: usize = 64;
const WARMUP: Duration = Duration::from_millis(300);
const WINDOW_TIME: Duration = Duration::from_secs(2);
/// A datagram not back within this is counted lost and its slot in the window refilled.
const LOST_AFTER: Duration = Duration::from_millis(200);
/// Each figure is measured this many times, in turns, and the median kept.
const ROUNDS: usize = 3;
/// Bedrock joins measured each way.
const COLD_RUNS: usize = 3;
const WARM_RUNS: usize = 3;
/// The version of the Bedrock server and bot.
const BEDROCK_VERSION: &str = "1.26.45";
/// Every wait for a peer is bounded by this.
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

async fn run() -> anyhow::Result<Figures> {
    let nginx_version = nginx_version()?;
    let dir = TempDir::new("wakegate-bench-udp")?;
    let (throughput, latency) = datagrams(&dir.0).await?;
    let bedrock = match bedrock_peers() {
        Some(peers) => Some(bedrock(&dir.0, &peers).await?),
        None => {
            progress(
                "the Bedrock peers are not installed (scripts/test installs them): measuring UDP only",
            );
            None
        }
    };
    Ok(Figures {
        setup: format!("{}; {nginx_version}", support::machine()),
        throughput,
        latency,
        bedrock,
    })
}

// ---------------------------------------------------------------------------------------------
// 1: datagrams.

/// Datagrams per second and latency, direct, through nginx, through wakegate.
async fn datagrams(dir: &Path) -> anyhow::Result<([Flow; 3], [Flow; 3])> {
    let [echo_port, nginx_port, wakegate_port, api_port] = free_ports()?;
    let echo = loopback(echo_port);
    let stop = Arc::new(AtomicBool::new(false));
    let echo_thread = {
        let socket = UdpSocket::bind(echo).context("cannot bind the echo server")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = stop.clone();
        std::thread::spawn(move || echo_server(&socket, &stop))
    };
    let mut nginx = Nginx::start(dir, nginx_port, echo).await?;
    let config = format!(
        "[[service]]\nname = \"echo\"\nidle_timeout = \"1h\"\n\
         [service.backend]\ntype = \"exec\"\nstart = \"true\"\nstop = \"true\"\naddress = \"{echo}\"\n\
         [service.readiness]\ntype = \"udp\"\npayload = \"text:ready?\"\n\
         [[service.listen]]\ntype = \"udp\"\nbind = \"{}\"\nsession_idle = \"1m\"\n",
        loopback(wakegate_port)
    );
    let mut wakegate = Wakegate::start(dir, "udp", api_port, &config).await?;
    wakegate.proc.wait_udp_bound(wakegate_port).await?;
    // Awake before measuring: this measures the relay, not the wake.
    round_trip_once(loopback(wakegate_port))?;
    wakegate.wait_state("echo", "awake").await?;

    let targets = [
        ("direct", echo),
        ("nginx", loopback(nginx_port)),
        ("wakegate", loopback(wakegate_port)),
    ];
    let mut throughput: [Vec<Flow>; 3] = Default::default();
    let mut latency: [Vec<Flow>; 3] = Default::default();
    for round in 1..=ROUNDS {
        for (i, (label, target)) in targets.iter().enumerate() {
            nginx.proc.check_running()?;
            wakegate.proc.check_running()?;
            let flow = flow(*target, CLIENTS, WINDOW).await?;
            progress(&format!(
                "throughput {round}/{ROUNDS}, {label}: {:.0} datagrams/s, p50 {:.0} µs, p99 {:.0} µs, {} lost",
                flow.rate, flow.p50_us, flow.p99_us, flow.lost
            ));
            throughput[i].push(flow);
            let flow = flow_latency(*target).await?;
            progress(&format!(
                "latency {round}/{ROUNDS}, {label}: p50 {:.0} µs, p99 {:.0} µs",
                flow.p50_us, flow.p99_us
            ));
            latency[i].push(flow);
        }
    }
    stop.store(true, Ordering::Relaxed);
    echo_thread.join().ok();
    Ok((throughput.map(Flow::median), latency.map(Flow::median)))
}

/// Echoes every datagram to its sender until `stop`.
fn echo_server(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

/// One datagram there and back, with retries (the first one wakes the service).
fn round_trip_once(target: SocketAddr) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        socket.send(b"wake")?;
        if socket.recv(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("no echo through {target}")
}

/// What one way of reaching the echo server did.
#[derive(Clone, Copy, Default)]
struct Flow {
    /// Echoed datagrams per second, all clients together.
    rate: f64,
    p50_us: f64,
    p99_us: f64,
    lost: u64,
}

impl Flow {
    /// The run with the median rate (throughput) or median p50 (latency).
    fn median(mut runs: Vec<Flow>) -> Flow {
        runs.sort_by(|a, b| {
            a.rate
                .total_cmp(&b.rate)
                .then(a.p50_us.total_cmp(&b.p50_us))
        });
        runs[runs.len() / 2]
    }
}

/// `clients` threads, each its own socket keeping `window` datagrams in flight to `target`,
/// for [`WARMUP`] then [`WINDOW_TIME`]; what they saw in the window.
async fn flow(target: SocketAddr, clients: usize, window: usize) -> anyhow::Result<Flow> {
    tokio::task::spawn_blocking(move || {
        let began = Instant::now();
        let (from, until) = (began + WARMUP, began + WARMUP + WINDOW_TIME);
        let threads: Vec<_> = (0..clients)
            .map(|_| std::thread::spawn(move || client(target, window, from, until)))
            .collect();
        let mut samples = Vec::new();
        let mut lost = 0;
        for thread in threads {
            let (s, l) = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??;
            samples.extend(s);
            lost += l;
        }
        ensure!(
            !samples.is_empty(),
            "no datagram came back through {target}"
        );
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] as f64;
        Ok(Flow {
            rate: samples.len() as f64 / WINDOW_TIME.as_secs_f64(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            lost,
        })
    })
    .await?
}

/// One client, one datagram in flight: latency without queueing.
async fn flow_latency(target: SocketAddr) -> anyhow::Result<Flow> {
    flow(target, 1, 1).await
}

/// One client: sends `window` datagrams, then one more for each that comes back, each
/// carrying its send time; the round trips (µs) of those that came back between `from` and
/// `until`, and how many were lost then.
fn client(
    target: SocketAddr,
    window: usize,
    from: Instant,
    until: Instant,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(LOST_AFTER))?;
    let epoch = Instant::now();
    let mut datagram = [0u8; PAYLOAD];
    let send = |datagram: &mut [u8; PAYLOAD]| -> std::io::Result<()> {
        let sent = epoch.elapsed().as_nanos() as u64;
        datagram[..8].copy_from_slice(&sent.to_be_bytes());
        socket.send(datagram).map(|_| ())
    };
    for _ in 0..window {
        send(&mut datagram)?;
    }
    let (mut samples, mut lost) = (Vec::new(), 0u64);
    let mut buf = [0u8; 2048];
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        match socket.recv(&mut buf) {
            Ok(n) if n == PAYLOAD => {
                let back = epoch.elapsed().as_nanos() as u64;
                let sent = u64::from_be_bytes(buf[..8].try_into()?);
                if Instant::now() >= from {
                    samples.push(((back - sent) / 1000) as u32);
                }
                send(&mut datagram)?;
            }
            Ok(_) => bail!("a datagram of the wrong size came back from {target}"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Nothing came back for a while: the window is lost; send it again.
                if now >= from {
                    lost += window as u64;
                }
                for _ in 0..window {
                    send(&mut datagram)?;
                }
            }
            Err(e) => return Err(e).context(format!("cannot receive from {target}")),
        }
    }
    Ok((samples, lost))
}

/// nginx in the foreground with one `stream` UDP server in front of `echo`.
struct Nginx {
    proc: Proc,
}

impl Nginx {
    async fn start(dir: &Path, port: u16, echo: SocketAddr) -> anyhow::Result<Nginx> {
        let module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
        let load = if module.exists() {
            format!("load_module {};\n", module.display())
        } else {
            String::new()
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        // As many workers as wakegate has runtime threads (one per CPU), each with its own
        // socket (reuseport): nginx's fastest setup for UDP.
        let config = format!(
            "{load}daemon off;\nworker_processes {workers};\npid {dir}/nginx.pid;\n\
             error_log {dir}/nginx-error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             stream {{\n    server {{\n        listen 127.0.0.1:{port} udp reuseport;\n\
                     proxy_pass {echo};\n        proxy_timeout 1m;\n    }}\n}}\n",
            dir = dir.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config)?;
        let mut proc = Proc::spawn(
            "nginx",
            Command::new(nginx()?)
                .arg("-c")
                .arg(&path)
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("nginx-error.log")),
            dir,
        )?;
        proc.wait_udp_bound(port).await?;
        Ok(Nginx { proc })
    }
}

fn nginx() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context(
            "nginx is needed; bench/run installs it (apt-get install nginx libnginx-mod-stream)",
        )
}

fn nginx_version() -> anyhow::Result<String> {
    // `nginx -v` writes "nginx version: nginx/1.22.1" to stderr.
    let out = Command::new(nginx()?).arg("-v").output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    Ok(text
        .trim()
        .trim_start_matches("nginx version: ")
        .to_string())
}

// ---------------------------------------------------------------------------------------------
// 2: a Bedrock bot's join.

fn bedrock_peers() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/bedrock");
    dir.join("node_modules/raknet-native/build/Release/node-raknet.node")
        .exists()
        .then_some(dir)
}

/// Join times (ms): cold and warm through wakegate, boot by hand plus a direct join, warm
/// directly.
struct Joins {
    cold: Vec<f64>,
    boots: Vec<f64>,
    first_joins: Vec<f64>,
    warm: Vec<f64>,
    warm_direct: Vec<f64>,
}

async fn bedrock(dir: &Path, peers: &Path) -> anyhow::Result<Joins> {
    let [backend_port, listen_port, api_port] = free_ports()?;
    let server = peers.join("server.js");
    let config = format!(
        "[[service]]\nname = \"mc\"\nidle_timeout = \"1h\"\nwake_timeout = \"1m\"\n\
         [service.backend]\ntype = \"process\"\ncommand = [\"node\", {server}, \"{backend_port}\", \"{BEDROCK_VERSION}\"]\n\
         address = \"127.0.0.1:{backend_port}\"\n\
         [service.readiness]\ntype = \"bedrock\"\n\
         [[service.listen]]\ntype = \"bedrock\"\nbind = \"127.0.0.1:{listen_port}\"\n\
         version = \"{BEDROCK_VERSION}\"\nsession_idle = \"5s\"\n",
        server = toml::Value::from(server.display().to_string()),
    );
    let mut wakegate = Wakegate::start(dir, "bedrock", api_port, &config).await?;
    wakegate.proc.wait_udp_bound(listen_port).await?;

    progress(&format!("{COLD_RUNS} cold Bedrock joins through wakegate"));
    let mut cold = Vec::new();
    for i in 0..COLD_RUNS {
        wakegate.wait_state("mc", "asleep").await?;
        let ms = join(peers, listen_port, &format!("Cold{i}")).await?;
        progress(&format!("cold join {}: {ms:.0} ms", i + 1));
        cold.push(ms);
        wakegate.post("mc", "sleep").await?;
    }
    progress(&format!(
        "{COLD_RUNS} Bedrock servers launched by hand, each joined directly once it answers a ping"
    ));
    let (mut boots, mut first_joins) = (Vec::new(), Vec::new());
    for i in 0..COLD_RUNS {
        let [port] = free_ports()?;
        let launched = Instant::now();
        let mut server = Proc::spawn(
            &format!("bedrock-{i}"),
            Command::new("node")
                .arg(&server)
                .arg(port.to_string())
                .arg(BEDROCK_VERSION),
            dir,
        )?;
        first_pong(loopback(port)).await?;
        let boot = launched.elapsed().as_secs_f64() * 1e3;
        server.check_running()?;
        let ms = join(peers, port, &format!("First{i}")).await?;
        progress(&format!(
            "by hand {}: boot {boot:.0} ms + join {ms:.0} ms",
            i + 1
        ));
        boots.push(boot);
        first_joins.push(ms);
    }

    progress(&format!(
        "{WARM_RUNS} warm Bedrock joins through wakegate and {WARM_RUNS} directly, in turns"
    ));
    wakegate.wait_state("mc", "asleep").await?;
    wakegate.post("mc", "wake").await?;
    wakegate.wait_state("mc", "awake").await?;
    let (mut warm, mut warm_direct) = (Vec::new(), Vec::new());
    for i in 0..WARM_RUNS {
        warm.push(join(peers, listen_port, &format!("Warm{i}")).await?);
        warm_direct.push(join(peers, backend_port, &format!("Direct{i}")).await?);
    }
    for problem in wakegate.proc.log_problems() {
        progress(&format!("wakegate logged: {problem}"));
    }
    Ok(Joins {
        cold,
        boots,
        first_joins,
        warm,
        warm_direct,
    })
}

/// Waits for the first pong of a server that is starting: until it binds its port, a ping
/// meets a closed port (ECONNREFUSED), and is sent again.
async fn first_pong(server: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ping = wakegate::bedrock::ping::status(server, POLL);
        if let Ok(Ok(_)) = tokio::time::timeout(POLL * 5, ping).await {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the server started by hand never answered a ping"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// One bedrock-protocol bot joining 127.0.0.1:`port`: ms from its client's creation to its
/// spawn, as the bot measured it.
async fn join(peers: &Path, port: u16, name: &str) -> anyhow::Result<f64> {
    let run = tokio::process::Command::new("node")
        .current_dir(peers)
        .args([
            "client.js",
            "join",
            "127.0.0.1",
            &port.to_string(),
            BEDROCK_VERSION,
            name,
            "0",
        ])
        .env("CONNECT_TIMEOUT_MS", "60000")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .context("the bot did not finish")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("spawned "))
        .and_then(|ms| ms.trim().parse().ok())
        .with_context(|| {
            format!(
                "the bot {name} did not spawn: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

// ---------------------------------------------------------------------------------------------
// wakegate.

/// A running `wakegate run` with the API on `api_port` and `services` (TOML) after it.
struct Wakegate {
    proc: Proc,
    api: SocketAddr,
}

impl Wakegate {
    async fn start(
        dir: &Path,
        name: &str,
        api_port: u16,
        services: &str,
    ) -> anyhow::Result<Wakegate> {
        let api = loopback(api_port);
        let data_dir = dir.join(format!("{name}-data"));
        let config = format!(
            "[gateway]\ndata_dir = {}\napi = \"{api}\"\nshutdown_grace = \"1s\"\n\n{services}",
            toml::Value::from(data_dir.to_string_lossy().into_owned())
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let mut proc = Proc::spawn(
            name,
            Command::new(WAKEGATE)
                .arg("run")
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1"),
            dir,
        )?;
        // The API opens after every listener is bound.
        proc.wait_listening(api_port).await?;
        Ok(Wakegate { proc, api })
    }

    async fn state(&self, service: &str) -> anyhow::Result<String> {
        let view =
            support::api_json(self.api, "GET", &format!("/api/v1/services/{service}")).await?;
        view["state"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the API's answer has no state: {view}"))
    }

    async fn wait_state(&self, service: &str, want: &str) -> anyhow::Result<()> {
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

    /// `POST /api/v1/services/NAME/ACTION` (wake, sleep).
    async fn post(&self, service: &str, action: &str) -> anyhow::Result<()> {
        support::api_json(
            self.api,
            "POST",
            &format!("/api/v1/services/{service}/{action}"),
        )
        .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Figures {
    setup: String,
    throughput: [Flow; 3],
    latency: [Flow; 3],
    bedrock: Option<Joins>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Figures {
    fn table(&self) -> String {
        let mut out = format!(
            "\nwakegate UDP and Bedrock benchmark, loopback: {}\n\n",
            self.setup
        );
        out += &format!(
            "{:<34}{:>12}{:>12}{:>12}{:>18}{:>17}\n",
            "", "direct", "nginx", "wakegate", "wakegate/nginx", "wakegate/direct"
        );
        let [d, n, w] = &self.throughput;
        let row = |label: &str, f: &dyn Fn(&Flow) -> f64, ratio: bool| {
            let (d, n, w) = (f(d), f(n), f(w));
            let ratios = if ratio {
                format!("{:>18.2}{:>17.2}", w / n, w / d)
            } else {
                String::new()
            };
            format!("{label:<34}{d:>12.0}{n:>12.0}{w:>12.0}{ratios}\n")
        };
        out += &row("datagrams/s, 4 clients × 8", &|f| f.rate, true);
        out += &row("  p50 under load (µs)", &|f| f.p50_us, true);
        out += &row("  p99 under load (µs)", &|f| f.p99_us, true);
        out += &row("  lost", &|f| f.lost as f64, false);
        let [d, n, w] = &self.latency;
        let row = |label: &str, f: &dyn Fn(&Flow) -> f64| {
            let (d, n, w) = (f(d), f(n), f(w));
            format!(
                "{label:<34}{d:>12.0}{n:>12.0}{w:>12.0}{:>18.2}{:>17.2}\n",
                w / n,
                w / d
            )
        };
        out += &row("latency, 1 in flight, p50 (µs)", &|f| f.p50_us);
        out += &row("latency, 1 in flight, p99 (µs)", &|f| f.p99_us);
        if let Some(j) = &self.bedrock {
            let by_hand: Vec<f64> = j
                .boots
                .iter()
                .zip(&j.first_joins)
                .map(|(b, f)| b + f)
                .collect();
            out += &format!(
                "\n{:<34}{:>24}{:>12}{:>10}\n",
                "Bedrock join, connect → spawn", "reference", "wakegate", "ratio"
            );
            out += &format!(
                "{:<34}{:>24}{:>12.0}{:>10.2}\n",
                "cold (server asleep), ms",
                format!(
                    "{:.0} = {:.0} + {:.0}",
                    median(&by_hand),
                    median(&j.boots),
                    median(&j.first_joins)
                ),
                median(&j.cold),
                median(&j.cold) / median(&by_hand),
            );
            out += &format!(
                "{:<34}{:>24.0}{:>12.0}{:>10.2}\n",
                "warm (server awake), ms",
                median(&j.warm_direct),
                median(&j.warm),
                median(&j.warm) / median(&j.warm_direct),
            );
        }
        out += &format!(
            "\ndatagrams: {PAYLOAD}-byte datagrams to a UDP echo server; throughput with {CLIENTS} \
             clients keeping {WINDOW} each in flight for {} s, latency with one client and one in \
             flight; the median of {ROUNDS} runs taken in turns.\n",
            WINDOW_TIME.as_secs()
        );
        if self.bedrock.is_some() {
            out += &format!(
                "Bedrock: bedrock-protocol {BEDROCK_VERSION} server and bot; the bot's clock runs \
                 from its createClient to its spawn. Cold reference: the server's launch to its \
                 first pong (boot), plus a direct join. Medians of {COLD_RUNS} cold and {WARM_RUNS} \
                 warm joins each way.\n"
            );
        }
        out += "Compare ratios within one run, not figures across runs or machines.\n";
        out
    }
}
