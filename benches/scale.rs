//! The cost as the work grows: what wakegate costs per open connection, per configured
//! service and per held client, each figure next to a reference measured in the same run.
//!
//! 1. Memory per open proxied connection: [`IDLE_CONNECTIONS`] clients, each left open after
//!    one 32-byte echo, through a `tcp` listener (the service awake) and through haproxy in TCP
//!    mode. Counted: the growth of the proxy's resident memory (RSS) from before they connect to
//!    when all are open, per connection; plus the kernel's pipe buffers, each pipe the process
//!    holds (read from /proc/PID/fd) at its full capacity, which is what it holds while bytes
//!    are in flight. Socket buffers are the kernel's in both and not counted.
//! 2. [`SLEEPING_SERVICES`] services configured, all asleep: RSS and wake-ups per second (the
//!    context switches of all threads over [`IDLE_WINDOW`]); haproxy with as many frontends.
//! 3. A herd: [`HERD`] clients held by a sleeping service; from the backend's port opening to
//!    the last of them reading the backend's first byte. The reference: as many clients
//!    connecting straight to the backend as its port opens.
//!
//! `bench/run` runs this file with the others; `cargo bench --bench scale` runs it alone (it
//! needs haproxy, and about 70,000 open files per process: it raises its limits, which takes
//! root or a high hard limit).
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use support::peers::{Haproxy, Keys, Wakegate};
use support::{Proc, TempDir, free_ports, loopback, progress, rss_mib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Idle proxied connections measured at once.
const IDLE_CONNECTIONS: usize = 10_000;
/// Sleeping services configured.
const SLEEPING_SERVICES: usize = 100;
/// Clients held by one sleeping service while it wakes.
const HERD: usize = 5_000;
/// How many connections are being opened at once: more would overflow the listeners' accept
/// backlogs and measure SYN retries.
const CONNECTING_AT_ONCE: usize = 200;
/// The window in which an idle process's wake-ups are counted.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// Open files each process would like: the gateway holds two sockets per connection (and,
/// before pipes were pooled, two pipes more: four descriptors).
const FILES_WANTED: u64 = 6 * IDLE_CONNECTIONS as u64 + 4096;
/// Descriptors kept for everything else (listeners, the store, the bench's own).
const FILES_SPARE: u64 = 2048;
/// What each connection sends and expects back.
const MESSAGE: &[u8; 32] = b"wakegate bench: idle conn ping!\n";
/// Every wait (a connection, an echo, a state) is bounded by this.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

fn main() -> anyhow::Result<()> {
    // Before anything is spawned: the peers inherit the limit.
    let files = raise_file_limit(FILES_WANTED);
    let connections = usize::try_from(files.saturating_sub(FILES_SPARE) / 2)
        .unwrap_or(usize::MAX)
        .min(IDLE_CONNECTIONS);
    ensure!(
        connections >= HERD,
        "this bench needs at least {} open files per process, and may have {files}; raise the \
         hard limit (ulimit -Hn, LimitNOFILE= in systemd)",
        2 * HERD as u64 + FILES_SPARE
    );
    OPEN.store(connections, std::sync::atomic::Ordering::Relaxed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let figures = runtime.block_on(run())?;
    print!("{}", figures.table());
    Ok(())
}

/// How many connections part 1 opens: [`IDLE_CONNECTIONS`], or fewer when the open-file
/// limit cannot be raised that far (the table says so).
static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn open_count() -> usize {
    OPEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// Raises the open-file limit toward `want` (the hard one too, which takes root with
/// CAP_SYS_RESOURCE), else the soft one to the hard one; returns the soft limit in force.
fn raise_file_limit(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|c| c >= want) {
        return limit.current.unwrap_or(u64::MAX);
    }
    let raised = Rlimit {
        current: Some(want),
        maximum: limit.maximum.map(|m| m.max(want)),
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        return want;
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    let to_hard = Rlimit {
        current: Some(hard),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, to_hard) {
        Ok(()) => hard,
        Err(_) => limit.current.unwrap_or(0),
    }
}

async fn run() -> anyhow::Result<Figures> {
    let dir = TempDir::new("wakegate-bench-scale")?;
    let open = open_connections(&dir.0).await?;
    let asleep = sleeping_services(&dir.0).await?;
    let herd = herd(&dir.0).await?;
    Ok(Figures {
        setup: format!(
            "{} CPUs, Linux {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
        ),
        open,
        asleep,
        herd,
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Open connections.

/// What one proxy costs per open connection.
struct PerConnection {
    rss_kib: f64,
    /// Pipes held with every connection open, and their capacity in KiB, summed.
    pipes: usize,
    pipe_kib: f64,
    /// RSS with every connection open, MiB.
    rss_mib: f64,
}

impl PerConnection {
    fn total_kib(&self) -> f64 {
        self.rss_kib + self.pipe_kib / open_count() as f64
    }
}

async fn open_connections(dir: &Path) -> anyhow::Result<[PerConnection; 2]> {
    let [echo_port, haproxy_port, api, listen] = free_ports()?;
    let echo = loopback(echo_port);
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
    echo_server.wait_listening(echo_port).await?;
    let keys = Keys {
        listen: "max_connections_per_address = 0\n".into(),
        ..Keys::default()
    };
    let wakegate =
        Wakegate::start_with(dir, "open", api, &[listen], &[("echo".into(), echo)], &keys).await?;
    wakegate.wake("echo").await?;
    let haproxy = Haproxy::start_with(
        dir,
        "haproxy-open",
        &[(haproxy_port, echo)],
        &format!("    maxconn {}\n", 3 * IDLE_CONNECTIONS),
    )
    .await?;

    let mut figures = Vec::new();
    for (label, pid, target) in [
        ("haproxy", haproxy.proc.pid(), loopback(haproxy_port)),
        ("wakegate", wakegate.proc.pid(), loopback(listen)),
    ] {
        let before = rss_mib(pid)?;
        let started = Instant::now();
        let clients = connect_all(target, open_count(), true).await?;
        // Let the proxy finish with the last ones (their echoes are back; their tasks park).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_mib(pid)?;
        let (pipes, pipe_kib) = pipes_of(pid)?;
        let per = PerConnection {
            rss_kib: (after - before) * 1024.0 / open_count() as f64,
            pipes,
            pipe_kib,
            rss_mib: after,
        };
        progress(&format!(
            "{} open connections through {label} in {:.1} s: RSS {before:.1} → \
             {after:.1} MiB, {pipes} pipes ({:.0} MiB of capacity): {:.1} KiB per connection",
            open_count(),
            started.elapsed().as_secs_f64(),
            pipe_kib / 1024.0,
            per.total_kib()
        ));
        figures.push(per);
        drop(clients);
    }
    let mut figures = figures.into_iter();
    let haproxy = figures.next().context("no haproxy figure")?;
    let wakegate = figures.next().context("no wakegate figure")?;
    Ok([haproxy, wakegate])
}

/// Opens `n` connections to `target`, [`CONNECTING_AT_ONCE`] at a time; with `echo`, each
/// sends [`MESSAGE`] and reads it back; without, each reads one byte. Returns them open.
async fn connect_all(target: SocketAddr, n: usize, echo: bool) -> anyhow::Result<Vec<TcpStream>> {
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut connecting = JoinSet::new();
    for _ in 0..n {
        let gate = gate.clone();
        connecting.spawn(async move {
            let _turn = gate.acquire_owned().await?;
            tokio::time::timeout(PATIENCE, async {
                let mut stream = TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                if echo {
                    stream.write_all(MESSAGE).await?;
                    let mut back = [0u8; MESSAGE.len()];
                    stream.read_exact(&mut back).await?;
                    ensure!(&back == MESSAGE, "the echo through {target} differs");
                } else {
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await?;
                }
                anyhow::Ok(stream)
            })
            .await
            .with_context(|| format!("a connection through {target} hung"))?
        });
    }
    let mut streams = Vec::with_capacity(n);
    while let Some(stream) = connecting.join_next().await {
        streams.push(stream.context("a client panicked")??);
    }
    Ok(streams)
}

/// The pipes process `pid` holds (each counted once, whichever ends it holds) and their
/// capacity in KiB, summed: each is opened again through /proc to ask its size.
fn pipes_of(pid: u32) -> anyhow::Result<(usize, f64)> {
    let mut seen = std::collections::HashSet::new();
    let mut kib = 0.0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        // A descriptor may be closed between the listing and the read.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if !target.starts_with("pipe:") || !seen.insert(target) {
            continue;
        }
        let size = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(entry.path())
            .ok()
            .and_then(|pipe| rustix::pipe::fcntl_getpipe_size(&pipe).ok())
            // The kernel's default, if it cannot be asked.
            .unwrap_or(64 * 1024);
        kib += size as f64 / 1024.0;
    }
    Ok((seen.len(), kib))
}

// ---------------------------------------------------------------------------------------------
// 2. Sleeping services.

/// What an idle process costs.
struct Idle {
    rss_mib: f64,
    wakeups_per_s: f64,
    threads: usize,
}

async fn sleeping_services(dir: &Path) -> anyhow::Result<[Idle; 2]> {
    let ports = free_ports::<{ 3 * SLEEPING_SERVICES + 1 }>()?;
    let (backends, rest) = ports.split_at(SLEEPING_SERVICES);
    let (listens, rest) = rest.split_at(SLEEPING_SERVICES);
    let (frontends, api) = rest.split_at(SLEEPING_SERVICES);
    let services: Vec<(String, SocketAddr)> = backends
        .iter()
        .enumerate()
        .map(|(i, &port)| (format!("sleeper-{i}"), loopback(port)))
        .collect();
    let wakegate = Wakegate::start(dir, "asleep", api[0], listens, &services).await?;
    for (name, _) in &services {
        wakegate.wait_state(name, "asleep").await?;
    }
    let routes: Vec<(u16, SocketAddr)> = frontends
        .iter()
        .zip(&services)
        .map(|(&port, (_, backend))| (port, *backend))
        .collect();
    let haproxy = Haproxy::start(dir, "haproxy-asleep", &routes).await?;
    // Let the last start-up work and our own API requests finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut figures = Vec::new();
    for (label, pid) in [
        ("haproxy", haproxy.proc.pid()),
        ("wakegate", wakegate.proc.pid()),
    ] {
        let idle = idle_footprint(pid).await?;
        progress(&format!(
            "{SLEEPING_SERVICES} sleeping services, {label}: {:.1} MiB, {:.1} wake-ups/s ({} threads)",
            idle.rss_mib, idle.wakeups_per_s, idle.threads
        ));
        figures.push(idle);
    }
    let mut figures = figures.into_iter();
    let haproxy = figures.next().context("no haproxy figure")?;
    let wakegate = figures.next().context("no wakegate figure")?;
    Ok([haproxy, wakegate])
}

/// RSS now, and context switches of all threads over [`IDLE_WINDOW`], per second.
async fn idle_footprint(pid: u32) -> anyhow::Result<Idle> {
    let rss = rss_mib(pid)?;
    let before = context_switches(pid)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = context_switches(pid)?;
    // Per thread, so that a thread born in the window counts in full.
    let wakeups: u64 = after
        .iter()
        .map(|(tid, n)| {
            let was = before.iter().find(|(t, _)| t == tid).map_or(0, |(_, b)| *b);
            n.saturating_sub(was)
        })
        .sum();
    Ok(Idle {
        rss_mib: rss,
        wakeups_per_s: wakeups as f64 / IDLE_WINDOW.as_secs_f64(),
        threads: after.len(),
    })
}

/// Voluntary plus involuntary context switches of each thread of `pid`, by thread id.
fn context_switches(pid: u32) -> anyhow::Result<Vec<(String, u64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| -> anyhow::Result<u64> {
            Ok(status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .with_context(|| format!("no {key} in a thread's status"))?
                .trim()
                .parse()?)
        };
        let switches = field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?;
        threads.push((task.file_name().to_string_lossy().into_owned(), switches));
    }
    Ok(threads)
}

// ---------------------------------------------------------------------------------------------
// 3. The herd.

/// From the backend's port opening to the last client's first byte: through wakegate (the
/// clients held before) and straight to the backend (the clients connecting as it opens).
struct Herd {
    wakegate: Duration,
    direct: Duration,
}

async fn herd(dir: &Path) -> anyhow::Result<Herd> {
    let [backend_port, api, listen] = free_ports()?;
    let backend = loopback(backend_port);
    let keys = Keys {
        service: format!("max_held = {}\n", 2 * HERD),
        listen: "max_connections_per_address = 0\n".into(),
    };
    let wakegate = Wakegate::start_with(
        dir,
        "herd",
        api,
        &[listen],
        &[("herd".into(), backend)],
        &keys,
    )
    .await?;
    wakegate.wait_state("herd", "asleep").await?;

    // The reference first: the backend opens, then the herd connects to it straight.
    let direct = {
        let t0 = Instant::now();
        let listener = TcpListener::bind(backend).await?;
        let greeter = tokio::spawn(greet_every_connection(listener));
        let clients = connect_all(backend, HERD, false).await?;
        let direct = t0.elapsed();
        greeter.abort();
        drop(clients);
        direct
    };
    progress(&format!(
        "herd of {HERD} straight to the backend: last first byte {:.0} ms after it opened",
        direct.as_secs_f64() * 1e3
    ));

    // Through wakegate: the herd arrives while the service sleeps and is held.
    let target = loopback(listen);
    let mut held = JoinSet::new();
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let (opened_tx, opened) = tokio::sync::watch::channel(None::<Instant>);
    for _ in 0..HERD {
        let (gate, mut opened) = (gate.clone(), opened.clone());
        held.spawn(async move {
            let mut stream = {
                let _turn = gate.acquire_owned().await?;
                tokio::time::timeout(PATIENCE, TcpStream::connect(target))
                    .await
                    .context("a held client could not connect")??
            };
            let mut byte = [0u8; 1];
            tokio::time::timeout(PATIENCE * 2, stream.read_exact(&mut byte))
                .await
                .context("a held client got no byte")??;
            let at = Instant::now();
            // The port opened before its byte came: the time is known by now.
            let t0 = opened
                .wait_for(Option::is_some)
                .await?
                .context("no opening time")?;
            anyhow::Ok((at - t0, stream))
        });
    }
    wait_held(&wakegate, HERD).await?;
    let t0 = Instant::now();
    let listener = TcpListener::bind(backend).await?;
    opened_tx.send_replace(Some(t0));
    let greeter = tokio::spawn(greet_every_connection(listener));
    let mut last = Duration::ZERO;
    let mut streams = Vec::with_capacity(HERD);
    while let Some(done) = held.join_next().await {
        let (took, stream) = done.context("a held client panicked")??;
        last = last.max(took);
        streams.push(stream);
    }
    greeter.abort();
    progress(&format!(
        "herd of {HERD} held by wakegate: last first byte {:.0} ms after the backend opened",
        last.as_secs_f64() * 1e3
    ));
    drop(streams);
    Ok(Herd {
        wakegate: last,
        direct,
    })
}

/// Waits until the service holds `n` clients (the API's `held`).
async fn wait_held(wakegate: &Wakegate, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let view = support::api_json(wakegate.api, "GET", "/api/v1/services/herd").await?;
        let held = view["held"]
            .as_u64()
            .context("no `held` in the API's answer")?;
        if held as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the service holds {held} clients, not {n}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The backend: writes one byte to each connection it accepts, and keeps it open.
async fn greet_every_connection(listener: TcpListener) -> std::io::Error {
    let mut open = Vec::new();
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                // A readiness probe that has already gone makes this fail, which is fine.
                let _ = stream.write_all(b"!").await;
                open.push(stream);
            }
            Err(e) => return e,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Figures {
    setup: String,
    open: [PerConnection; 2],
    asleep: [Idle; 2],
    herd: Herd,
}

impl Figures {
    fn table(&self) -> String {
        let row = |label: &str, cells: [String; 3]| {
            let line = format!("{label:<44}{:<16}{:<16}{}", cells[0], cells[1], cells[2]);
            format!("{}\n", line.trim_end())
        };
        let [h, w] = &self.open;
        let [hi, wi] = &self.asleep;
        let mut out = format!("\nwakegate scale benchmark, loopback: {}\n\n", self.setup);
        out += &row(
            "",
            ["reference", "wakegate", "wakegate/reference"].map(String::from),
        );
        out += &row(
            &format!("memory per open connection (KiB), {} open", open_count()),
            [
                format!("{:.1} haproxy", h.total_kib()),
                format!("{:.1}", w.total_kib()),
                format!("{:.2}", w.total_kib() / h.total_kib()),
            ],
        );
        out += &row(
            "  of which pipes: count / capacity (MiB)",
            [
                format!("{} / {:.0}", h.pipes, h.pipe_kib / 1024.0),
                format!("{} / {:.0}", w.pipes, w.pipe_kib / 1024.0),
                String::new(),
            ],
        );
        out += &row(
            "  RSS with all open (MiB)",
            [
                format!("{:.1}", h.rss_mib),
                format!("{:.1}", w.rss_mib),
                String::new(),
            ],
        );
        out += &row(
            &format!("{SLEEPING_SERVICES} services asleep: RSS (MiB)"),
            [
                format!("{:.1} haproxy", hi.rss_mib),
                format!("{:.1}", wi.rss_mib),
                format!("{:.2}", wi.rss_mib / hi.rss_mib),
            ],
        );
        out += &row(
            &format!("{SLEEPING_SERVICES} services asleep: wake-ups/s"),
            [
                format!("{:.1} haproxy", hi.wakeups_per_s),
                format!("{:.1}", wi.wakeups_per_s),
                "(target 0)".into(),
            ],
        );
        out += &row(
            &format!("herd of {HERD}: port open → last first byte (ms)"),
            [
                format!("{:.0} direct", self.herd.direct.as_secs_f64() * 1e3),
                format!("{:.0}", self.herd.wakegate.as_secs_f64() * 1e3),
                format!(
                    "{:.2}",
                    self.herd.wakegate.as_secs_f64() / self.herd.direct.as_secs_f64()
                ),
            ],
        );
        out += &format!(
            "\nmemory: RSS growth from none to {} connections open{} (each after a \
             {}-byte echo), per connection, plus every pipe the process holds at its full capacity.\n\
             asleep: wake-ups = context switches of all threads over {} s (haproxy: {} threads, \
             wakegate: {}).\n\
             herd: {HERD} clients held while the service sleeps; direct: {HERD} clients \
             connecting to the backend as it opens.\n",
            open_count(),
            if open_count() < IDLE_CONNECTIONS {
                format!(" (not {IDLE_CONNECTIONS}: the open-file limit allows no more)")
            } else {
                String::new()
            },
            MESSAGE.len(),
            IDLE_WINDOW.as_secs(),
            hi.threads,
            wi.threads,
        );
        out
    }
}
