//! The TCP benchmark: wakegate's data path, wake path and idle cost, each printed next to a
//! reference measured in the same run, all on loopback.
//!
//! 1. One long stream (iperf3, one stream): direct, through haproxy in TCP mode, through wakegate.
//! 2. Short connections per second (connect, a 32-byte echo, close; a few concurrent clients).
//! 3. Readiness latency: from the backend's port opening to the first byte at a held client.
//! 4. Idle footprint with 10 sleeping services: RSS, and wake-ups (context switches) in 5 s.
//!
//! Why these four: once awake, wakegate is a plain TCP proxy and should cost about what haproxy
//! costs; a held client should see its server soon after the server's port opens; and a gateway
//! in front of sleeping servers must sleep too. Absolute figures depend on the machine: compare
//! the ratios of one run. `bench/run` installs haproxy and iperf3 and runs this file;
//! `cargo bench --bench gateway` runs it alone.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use support::peers::{Haproxy, Sleepers, Wakegate, version_of};
use support::{Proc, TempDir, cpu_ticks, free_ports, greet_every_connection, loopback, progress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Length of one iperf3 stream.
const STREAM_SECONDS: u64 = 3;
/// The stream's goal, as a share of the direct stream's rate.
const STREAM_TARGET: f64 = 0.85;
/// Each of the three is measured this many times, in turns, and the median is kept: on a
/// small shared machine one run of a few seconds moves by a fifth from run to run.
const ROUNDS: usize = 3;
/// Short connections: how many clients at once, for how long, at most how many each.
const SHORT_CLIENTS: usize = 4;
const SHORT_WARMUP: Duration = Duration::from_millis(300);
const SHORT_WINDOW: Duration = Duration::from_secs(2);
const SHORT_MAX_PER_CLIENT: u64 = 100_000;
/// What each short connection sends and expects back.
const MESSAGE: &[u8; 32] = b"wakegate bench: short conn ping\n";
/// Readiness: how many wakes, and how long the backend stays down after the client arrives:
/// long enough that wakegate's readiness probe retries at its steady pace, as during a real
/// boot. Wake `i` waits `READINESS_DELAY + i * READINESS_SPREAD / READINESS_RUNS`: with one fixed
/// delay every run would open the port at the same point of the probe's retry cycle and show
/// one figure ten times; spread over a cycle (the probe's longest pause, 100 ms), the runs show
/// the whole range a real server meets.
const READINESS_RUNS: usize = 10;
const READINESS_DELAY: Duration = Duration::from_millis(300);
const READINESS_SPREAD: Duration = Duration::from_millis(100);
const READINESS_TARGET_MS: f64 = 100.0;
/// Idle footprint: how many sleeping services, and the window in which wake-ups are counted.
const IDLE_SERVICES: usize = READINESS_RUNS;
const IDLE_WINDOW: Duration = Duration::from_secs(5);
const RSS_TARGET_MIB: f64 = 15.0;
/// Every wait for a peer (a port, a state, one exchange, a stop) is bounded by this.
const PATIENCE: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let figures = runtime.block_on(run())?;
    print!("{}", figures.table());
    support::rows::record(&[figures.stream_row()])
}

/// Runs every measurement, in an order that keeps them apart: the traffic tests first, with
/// their peers stopped before the idle ones are counted.
async fn run() -> anyhow::Result<Figures> {
    let haproxy_version = version_of("haproxy", "-v")?;
    let iperf3_version = version_of("iperf3", "-v")?;
    // Declared first so it is removed last, after every process using it has been stopped.
    let dir = TempDir::new("wakegate-bench")?;

    let (stream, short) = traffic(&dir.0).await?;
    let (idle, readiness) = wake_and_idle(&dir.0).await?;

    Ok(Figures {
        setup: format!(
            "{}; {haproxy_version}; {iperf3_version}",
            support::machine(),
        ),
        stream,
        short,
        readiness,
        idle,
    })
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: the data path, once awake.

/// Measures the stream and the short connections: direct, through haproxy, through wakegate.
async fn traffic(dir: &Path) -> anyhow::Result<(Triple, Triple)> {
    let [iperf_port, echo_port, haproxy_stream, haproxy_echo] = free_ports()?;
    let [api, wakegate_stream, wakegate_echo] = free_ports()?;
    let iperf = loopback(iperf_port);
    let echo = loopback(echo_port);

    let mut iperf3 = Proc::spawn(
        "iperf3",
        Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &iperf_port.to_string()]),
        dir,
    )?;
    let mut echo_server = Proc::spawn(
        "echo",
        Command::new(support::wakegate()).args([
            "demo-backend",
            "--echo",
            "--listen",
            &echo.to_string(),
        ]),
        dir,
    )?;
    let mut haproxy = Haproxy::start(
        dir,
        "haproxy",
        &[(haproxy_stream, iperf), (haproxy_echo, echo)],
    )
    .await?;
    iperf3.wait_listening(iperf_port).await?;
    echo_server.wait_listening(echo_port).await?;

    // Awake before measuring, with an idle timeout no run comes near: this measures the
    // proxy, not the wake.
    let mut wakegate = Wakegate::start(
        dir,
        "proxy",
        api,
        &[wakegate_stream, wakegate_echo],
        &[("stream".into(), iperf), ("echo".into(), echo)],
    )
    .await?;
    wakegate.wake("stream").await?;
    wakegate.wake("echo").await?;

    let mut streams: [Vec<f64>; 3] = Default::default();
    for round in 1..=ROUNDS {
        for (label, target, runs) in [
            ("direct", iperf, 0),
            ("haproxy", loopback(haproxy_stream), 1),
            ("wakegate", loopback(wakegate_stream), 2),
        ] {
            all_running(&mut [&mut iperf3, &mut haproxy.proc, &mut wakegate.proc])?;
            let gbits = iperf3_stream(target).await?;
            progress(&format!(
                "stream {round}/{ROUNDS}, {label}: {gbits:.2} Gbit/s"
            ));
            streams[runs].push(gbits);
        }
    }

    let mut shorts: [Vec<f64>; 3] = Default::default();
    for round in 1..=ROUNDS {
        for (label, target, runs) in [
            ("direct", echo, 0),
            ("haproxy", loopback(haproxy_echo), 1),
            ("wakegate", loopback(wakegate_echo), 2),
        ] {
            all_running(&mut [&mut echo_server, &mut haproxy.proc, &mut wakegate.proc])?;
            short_connections(target, SHORT_WARMUP).await?;
            let rate = short_connections(target, SHORT_WINDOW).await?;
            progress(&format!(
                "short connections {round}/{ROUNDS}, {label}: {rate:.0} conn/s"
            ));
            shorts[runs].push(rate);
        }
    }
    Ok((Triple::medians(streams), Triple::medians(shorts)))
}

/// One iperf3 stream to `target` (its control connection goes the same way); Gbit/s received.
async fn iperf3_stream(target: SocketAddr) -> anyhow::Result<f64> {
    let run = tokio::process::Command::new("iperf3")
        .args([
            "-c",
            &target.ip().to_string(),
            "-p",
            &target.port().to_string(),
        ])
        .args(["-t", &STREAM_SECONDS.to_string(), "-J"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(STREAM_SECONDS) + PATIENCE, run)
        .await
        .context("iperf3 did not finish in time")?
        .context("cannot run iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 printed no JSON report ({})", out.status))?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3 to {target} failed: {error}");
    }
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3's report has no end.sum_received.bits_per_second")?;
    Ok(bits / 1e9)
}

/// Short connections to an echo server at `target` for `window`; connections per second.
async fn short_connections(target: SocketAddr, window: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let end = started + window;
    let mut clients = JoinSet::new();
    for _ in 0..SHORT_CLIENTS {
        clients.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < end && done < SHORT_MAX_PER_CLIENT {
                tokio::time::timeout(PATIENCE, echo_once(target))
                    .await
                    .with_context(|| format!("an echo through {target} hung"))??;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0;
    while let Some(done) = clients.join_next().await {
        total += done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// One short connection: connect, send [`MESSAGE`], read it back, close.
async fn echo_once(target: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    stream.set_nodelay(true)?;
    stream.write_all(MESSAGE).await?;
    let mut back = [0u8; MESSAGE.len()];
    stream
        .read_exact(&mut back)
        .await
        .with_context(|| format!("no echo from {target}"))?;
    ensure!(&back == MESSAGE, "the echo through {target} differs");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3 and 4: the wake path and the idle cost.

/// Counts the idle footprint of wakegate with sleeping services (and of haproxy with as many
/// frontends), then wakes those services one by one to measure readiness. One gateway serves
/// both: before the first wake it is exactly the idle gateway item 4 asks about.
async fn wake_and_idle(dir: &Path) -> anyhow::Result<(Idle, Vec<Duration>)> {
    // The backends' ports are free now; the bench opens them itself during the readiness runs.
    let ports = free_ports::<{ 3 * IDLE_SERVICES + 1 }>()?;
    let Sleepers {
        wakegate,
        haproxy,
        services,
    } = Sleepers::start(dir, "sleepers", &ports).await?;

    let ticks = clock_ticks_per_second();
    let idle = Idle {
        wakegate: footprint(wakegate.proc.pid(), ticks).await?,
        haproxy: footprint(haproxy.proc.pid(), ticks).await?,
    };
    drop(haproxy);
    for (label, f) in [("wakegate", &idle.wakegate), ("haproxy", &idle.haproxy)] {
        progress(&format!(
            "idle, {label}: {:.1} MiB, {} wake-ups, {:.0} ms CPU in {} s ({} threads)",
            f.rss_mib,
            f.wakeups,
            f.cpu_ms,
            IDLE_WINDOW.as_secs(),
            f.threads
        ));
    }

    let mut readiness = Vec::new();
    for (i, (name, backend)) in services.iter().enumerate() {
        let down = READINESS_DELAY + READINESS_SPREAD * i as u32 / READINESS_RUNS as u32;
        let latency = readiness_once(&wakegate, name, *backend, down).await?;
        progress(&format!(
            "readiness, {name} (port opened after {} ms): {:.1} ms",
            down.as_millis(),
            latency.as_secs_f64() * 1e3
        ));
        readiness.push(latency);
    }
    Ok((idle, readiness))
}

/// One wake of a sleeping service, with the bench as its backend, which stays down for `down`
/// after the client arrives: the time from binding the backend's port (T0, the instant it
/// opens) to the held client reading the byte the backend sends (T1).
async fn readiness_once(
    wakegate: &Wakegate,
    service: &str,
    backend: SocketAddr,
    down: Duration,
) -> anyhow::Result<Duration> {
    let mut client = TcpStream::connect(wakegate.listener(service)?).await?;
    wakegate.wait_state(service, "waking").await?;
    tokio::time::sleep(down).await;

    let t0 = Instant::now();
    let listener = TcpListener::bind(backend)
        .await
        .with_context(|| format!("cannot open the backend port {backend}"))?;
    let first_byte = async {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await?;
        Ok::<_, std::io::Error>(Instant::now())
    };
    let t1 = tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            t1 = first_byte => t1.context("the held client was closed instead of forwarded"),
            e = greet_every_connection(&listener) => Err(e).context("the backend cannot accept"),
        }
    })
    .await
    .with_context(|| format!("no byte reached the client held by `{service}`"))??;
    Ok(t1 - t0)
}

/// What an idle process costs: its memory, and how often it ran during [`IDLE_WINDOW`].
struct Footprint {
    rss_mib: f64,
    /// The part of it that is the process's own memory (heap, stacks), not mapped files.
    anon_mib: f64,
    /// Context switches, voluntary and not, summed over all threads: each time a thread ran.
    wakeups: u64,
    cpu_ms: f64,
    threads: usize,
}

async fn footprint(pid: u32, ticks_per_second: f64) -> anyhow::Result<Footprint> {
    // Let the last start-up work and our own checks (API requests to wakegate) finish, so the
    // window sees the steady idle state.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = proc_field(&status, "VmRSS:")
        .context("no VmRSS in /proc/PID/status")?
        .parse()?;
    let anon_kib: f64 = proc_field(&status, "RssAnon:")
        .context("no RssAnon in /proc/PID/status")?
        .parse()?;
    let (switches_before, cpu_before) = (context_switches(pid)?, cpu_ticks(pid)?);
    tokio::time::sleep(IDLE_WINDOW).await;
    let (switches_after, cpu_after) = (context_switches(pid)?, cpu_ticks(pid)?);
    // Per thread, so that a thread born in the window counts in full. One that ended in the
    // window is left out: /proc keeps nothing of it.
    let wakeups = switches_after
        .iter()
        .map(|(tid, after)| {
            let before = switches_before
                .iter()
                .find(|(t, _)| t == tid)
                .map_or(0, |(_, n)| *n);
            after.saturating_sub(before)
        })
        .sum();
    Ok(Footprint {
        rss_mib: rss_kib / 1024.0,
        anon_mib: anon_kib / 1024.0,
        wakeups,
        cpu_ms: cpu_after.saturating_sub(cpu_before) as f64 * 1e3 / ticks_per_second,
        threads: switches_after.len(),
    })
}

/// Voluntary plus involuntary context switches of each thread of `pid`, by thread id.
fn context_switches(pid: u32) -> anyhow::Result<Vec<(String, u64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        // A thread may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let count = |key| -> anyhow::Result<u64> {
            Ok(proc_field(&status, key)
                .with_context(|| format!("no {key} in a thread's status"))?
                .parse()?)
        };
        let switches = count("voluntary_ctxt_switches:")? + count("nonvoluntary_ctxt_switches:")?;
        threads.push((task.file_name().to_string_lossy().into_owned(), switches));
    }
    Ok(threads)
}

/// The first word after `key` in a `/proc` status file.
fn proc_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()
}

fn clock_ticks_per_second() -> f64 {
    // Almost always 100 on Linux; asking keeps the CPU figure right where it is not.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------------
// The peers: wakegate, haproxy and plain child processes.

/// A peer that has died makes the next figure fail with a puzzling error: name it instead.
fn all_running(peers: &mut [&mut Proc]) -> anyhow::Result<()> {
    peers.iter_mut().try_for_each(|peer| peer.check_running())
}

// ---------------------------------------------------------------------------------------------
// The report.

/// One figure measured three ways.
#[derive(Default)]
struct Triple {
    direct: f64,
    haproxy: f64,
    wakegate: f64,
}

impl Triple {
    /// The median of each one's runs (direct, haproxy, wakegate).
    fn medians(mut runs: [Vec<f64>; 3]) -> Triple {
        let [direct, haproxy, wakegate] = runs.each_mut().map(|r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        });
        Triple {
            direct,
            haproxy,
            wakegate,
        }
    }
}

struct Idle {
    wakegate: Footprint,
    haproxy: Footprint,
}

struct Figures {
    setup: String,
    stream: Triple,
    short: Triple,
    readiness: Vec<Duration>,
    idle: Idle,
}

impl Figures {
    /// The stream's row of `bench/run`'s summary: wakegate against a direct connection.
    fn stream_row(&self) -> support::rows::Row {
        support::rows::Row {
            key: "stream",
            what: "one TCP stream, iperf3 (Gbit/s)".into(),
            reference: "direct",
            reference_value: self.stream.direct,
            value: self.stream.wakegate,
            better: support::rows::Better::Higher,
            decimals: 2,
            goal: format!("≥ {STREAM_TARGET}× direct"),
            met: Some(self.stream.wakegate >= STREAM_TARGET * self.stream.direct),
        }
    }

    fn table(&self) -> String {
        let mut ms: Vec<f64> = self
            .readiness
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        let median = if ms.len().is_multiple_of(2) {
            (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
        } else {
            ms[ms.len() / 2]
        };
        let (w, h) = (&self.idle.wakegate, &self.idle.haproxy);
        let row = |label: &str, cells: [String; 5]| {
            let line = format!(
                "{label:<25}{:<12}{:<12}{:<12}{:<18}{}",
                cells[0], cells[1], cells[2], cells[3], cells[4]
            );
            format!("{}\n", line.trim_end())
        };
        let triple = |label: &str, t: &Triple, decimals: usize| {
            row(
                label,
                [
                    format!("{:.decimals$}", t.direct),
                    format!("{:.decimals$}", t.haproxy),
                    format!("{:.decimals$}", t.wakegate),
                    format!("{:.2}", t.wakegate / t.haproxy),
                    format!("{:.2}", t.wakegate / t.direct),
                ],
            )
        };
        let idle = |label: &str, haproxy: String, wakegate: String, note: String| {
            row(label, ["-".into(), haproxy, wakegate, note, String::new()])
        };
        let mut out = format!("\nwakegate TCP benchmark, loopback: {}\n\n", self.setup);
        out += &row(
            "",
            [
                "direct",
                "haproxy",
                "wakegate",
                "wakegate/haproxy",
                "wakegate/direct",
            ]
            .map(String::from),
        );
        out += &triple("stream (Gbit/s)", &self.stream, 2);
        out += &triple("short conns (conn/s)", &self.short, 0);
        out += &format!(
            "{:<25}min {:.1} .. median {:.1} .. max {:.1}  (target ≤ {READINESS_TARGET_MS:.0}){}\n",
            "readiness (ms)",
            ms[0],
            median,
            ms[ms.len() - 1],
            if ms[ms.len() - 1] <= READINESS_TARGET_MS {
                ""
            } else {
                "  OVER TARGET"
            },
        );
        out += &idle(
            "idle RSS (MiB)",
            format!("{:.1}", h.rss_mib),
            format!("{:.1}", w.rss_mib),
            format!(
                "({IDLE_SERVICES} services; target ≤ {RSS_TARGET_MIB:.0}){}",
                if w.rss_mib <= RSS_TARGET_MIB {
                    ""
                } else {
                    "  OVER TARGET"
                }
            ),
        );
        out += &idle(
            "  of it anonymous (MiB)",
            format!("{:.1}", h.anon_mib),
            format!("{:.1}", w.anon_mib),
            "(the rest: the program's code, mapped from the page cache)".into(),
        );
        out += &idle(
            &format!("idle wake-ups in {} s", IDLE_WINDOW.as_secs()),
            h.wakeups.to_string(),
            w.wakeups.to_string(),
            "(target ~0)".into(),
        );
        out += &idle(
            &format!("idle CPU in {} s (ms)", IDLE_WINDOW.as_secs()),
            format!("{:.0}", h.cpu_ms),
            format!("{:.0}", w.cpu_ms),
            format!("(threads: haproxy {}, wakegate {})", h.threads, w.threads),
        );
        let last_down = READINESS_DELAY
            + READINESS_SPREAD * (READINESS_RUNS as u32 - 1) / READINESS_RUNS as u32;
        out += &format!(
            "\nstream: iperf3, one stream, {STREAM_SECONDS} s (its control connection goes the same way).\n\
             short conns: {SHORT_CLIENTS} clients for {} s, each connection a {}-byte echo.\n\
             stream and short conns: the median of {ROUNDS} runs each, taken in turns.\n\
             readiness: {READINESS_RUNS} wakes; the backend's port opens {}..{} ms after the client arrives.\n\
             idle: {IDLE_SERVICES} sleeping services (haproxy: {IDLE_SERVICES} frontends); \
             wake-ups = context switches of all threads.\n\
             Compare ratios within one run, not figures across runs or machines.\n",
            SHORT_WINDOW.as_secs(),
            MESSAGE.len(),
            READINESS_DELAY.as_millis(),
            last_down.as_millis(),
        );
        out
    }
}
