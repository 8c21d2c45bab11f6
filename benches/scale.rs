//! The cost as the work grows: what wakegate costs per open connection, per configured
//! service and per held client, each figure next to a reference measured in the same run, all
//! on loopback.
//!
//! 1. Memory per idle proxied connection: N clients, each left open after one 32-byte echo,
//!    through a `tcp` listener (the service awake) and through haproxy in TCP mode, to the same
//!    echo server (a process of its own). N is 10,000 (the figure) or, when the hard
//!    limit on open files is lower, what fits in it: a proxy holds two sockets per connection,
//!    so N = (hard limit − 1,000) / 2 (9,500 with a hard limit of 20,000); the clients live in
//!    this process, the echo server's sockets in its own. Counted per connection: the growth
//!    of the proxy's resident memory (VmRSS in /proc/PID/status) from before the clients
//!    connect to when all are open and answered, plus the kernel's pipe buffers the process
//!    holds then: every descriptor of /proc/PID/fd that links to `pipe:[inode]`, each inode
//!    counted once at its capacity (F_GETPIPE_SZ, asked through the /proc link), which is what
//!    a pipe takes once bytes are in it. wakegate splices only after 64 KiB in a direction, so
//!    idle connections should hold no pipe at all. Socket buffers are the kernel's in both and
//!    not counted.
//! 2. 100 services configured, all asleep: the gateway's RSS, and its wake-ups per second over
//!    10 s of idleness: the voluntary and involuntary context switches of all its threads
//!    (/proc/PID/task/*/status), summed. Reference: haproxy with 100 idle TCP frontends,
//!    measured the same way. Goal: no periodic wake-up at all.
//! 3. The wake path under a herd: 5,000 clients (or what fits, as in 1) connect to one sleeping
//!    service and are held; from the instant the bench opens the backend's port to the last of
//!    them reading the backend's first byte. Reference: the same number of clients connecting
//!    straight to the backend once its port is open (from the open to the last first byte).
//!    The backend (this process) listens with the same backlog in both.
//!
//! `bench/run` runs this file with the others and puts its headline figures in its summary;
//! `cargo bench --bench scale` runs it alone (it needs haproxy), and `cargo bench --bench scale
//! -- herd` (or `memory`, `asleep`) runs only the parts named.
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
use support::peers::{Haproxy, Keys, Sleepers, Wakegate};
use support::rows::{self, Better, Row};
use support::{Proc, TempDir, free_ports, greet_every_connection, loopback, progress, rss_mib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Idle proxied connections measured at once, at most (the hard limit may allow fewer).
const IDLE_CONNECTIONS: usize = 10_000;
/// Clients held by one sleeping service while it wakes, at most (likewise).
const HERD: usize = 5_000;
/// Descriptors a process keeps for everything but the connections (listeners, the store,
/// the runtime, the log).
const FILES_SPARE: usize = 1_000;
/// Sleeping services configured.
const SLEEPING_SERVICES: usize = 100;
/// How many connections are being opened at once: below 128, the accept backlog a program
/// gets by default (std's, and so tokio's, and wakegate's before it asked for more). A client
/// whose handshake completes while the backlog is full is left half-open: it believes it is
/// connected, the server never accepts it.
const CONNECTING_AT_ONCE: usize = 100;
/// The backend's accept backlog in the herd (the kernel caps it at net.core.somaxconn).
const BACKLOG: u32 = 4096;
/// The window in which an idle process's wake-ups are counted.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// What each connection sends and expects back.
const MESSAGE: &[u8; 32] = b"wakegate bench: idle conn ping!\n";
/// Every wait (a connection, an echo, a state) is bounded by this.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

fn main() -> anyhow::Result<()> {
    // Before anything is spawned: the peers inherit the limit.
    let files = raise_file_limit()?;
    let sizes = Sizes {
        connections: IDLE_CONNECTIONS.min(files.saturating_sub(FILES_SPARE) / 2),
        herd: HERD.min(files.saturating_sub(FILES_SPARE) / 2),
    };
    ensure!(
        sizes.herd >= 1_000,
        "the open-file limit ({files}) leaves room for {} connections only; raise the hard \
         limit (ulimit -Hn, LimitNOFILE= in systemd)",
        sizes.herd
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let wanted = support::parts(&PARTS)?;
    let figures = runtime.block_on(run(sizes, wanted))?;
    print!("{}", figures.table());
    rows::record(&figures.rows())
}

/// How many connections each part opens, as the open-file limit allows.
#[derive(Clone, Copy)]
struct Sizes {
    connections: usize,
    herd: usize,
}

/// Raises the soft limit on open files to the hard one; returns it.
fn raise_file_limit() -> anyhow::Result<usize> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .context("cannot raise the open-file limit to the hard limit")?;
    Ok(limit.maximum.map_or(usize::MAX, |m| m as usize))
}

/// The parts of the benchmark, which arguments may pick.
const PARTS: [&str; 3] = ["memory", "asleep", "herd"];

async fn run(sizes: Sizes, wanted: impl Fn(&str) -> bool) -> anyhow::Result<Figures> {
    let haproxy_version = support::peers::version_of("haproxy", "-v")?;
    // Declared first so it is removed last, after every process using it has been stopped.
    let dir = TempDir::new("wakegate-bench-scale")?;
    let open = match wanted("memory") {
        true => Some(open_connections(&dir.0, sizes.connections).await?),
        false => None,
    };
    let asleep = match wanted("asleep") {
        true => Some(sleeping_services(&dir.0).await?),
        false => None,
    };
    let herd = match wanted("herd") {
        true => Some(herd(&dir.0, sizes.herd).await?),
        false => None,
    };
    Ok(Figures {
        setup: format!("{}; {haproxy_version}", support::machine()),
        sizes,
        open,
        asleep,
        herd,
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Open connections.

/// What one proxy costs with `n` connections open.
struct PerConnection {
    n: usize,
    /// RSS growth per connection, KiB.
    rss_kib: f64,
    /// Pipes held with every connection open, and their capacity in KiB, summed.
    pipes: usize,
    pipe_kib: f64,
    /// RSS before and with every connection open, MiB.
    rss_before_mib: f64,
    rss_mib: f64,
}

impl PerConnection {
    fn total_kib(&self) -> f64 {
        self.rss_kib + self.pipe_kib / self.n as f64
    }
}

async fn open_connections(dir: &Path, n: usize) -> anyhow::Result<[PerConnection; 2]> {
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
    // haproxy sizes its own descriptor needs from maxconn (two per connection and a few).
    let haproxy = Haproxy::start_with(
        dir,
        "haproxy-open",
        &[(haproxy_port, echo)],
        &format!("    maxconn {}\n", n + 100),
    )
    .await?;

    let mut figures = Vec::new();
    for (label, pid, target) in [
        ("haproxy", haproxy.proc.pid(), loopback(haproxy_port)),
        ("wakegate", wakegate.proc.pid(), loopback(listen)),
    ] {
        // Start-up work and the wake's API requests done.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_mib(pid)?;
        let started = Instant::now();
        let clients = connect_all(target, n, true).await?;
        // Let the proxy finish with the last ones (their echoes are back; their tasks park).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_mib(pid)?;
        let (pipes, pipe_kib) = pipes_of(pid)?;
        let per = PerConnection {
            n,
            rss_kib: (after - before) * 1024.0 / n as f64,
            pipes,
            pipe_kib,
            rss_before_mib: before,
            rss_mib: after,
        };
        progress(&format!(
            "{n} open connections through {label} in {:.1} s: RSS {before:.1} → {after:.1} MiB, \
             {pipes} pipes ({:.1} MiB of capacity): {:.2} KiB per connection",
            started.elapsed().as_secs_f64(),
            pipe_kib / 1024.0,
            per.total_kib()
        ));
        figures.push(per);
        drop(clients);
    }
    echo_server.check_running()?;
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

/// The pipes process `pid` holds (each inode counted once, whichever ends it holds) and
/// their capacity in KiB, summed: each is opened again through its /proc link to ask its size.
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
    /// The threads that woke in the window: name and wake-ups.
    woke: Vec<(String, u64)>,
    threads: usize,
}

async fn sleeping_services(dir: &Path) -> anyhow::Result<[Idle; 2]> {
    let ports = free_ports::<{ 3 * SLEEPING_SERVICES + 1 }>()?;
    let Sleepers {
        wakegate, haproxy, ..
    } = Sleepers::start(dir, "asleep", &ports).await?;
    // Let the last start-up work and our own API requests finish. tokio's blocking threads
    // (start-up reads) linger 10 s after their last job and end: one that ends in the window
    // is left out of the count (/proc keeps nothing of it).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut figures = Vec::new();
    for (label, pid) in [
        ("haproxy", haproxy.proc.pid()),
        ("wakegate", wakegate.proc.pid()),
    ] {
        let idle = idle_footprint(pid).await?;
        progress(&format!(
            "{SLEEPING_SERVICES} sleeping services, {label}: {:.1} MiB, {:.1} wake-ups/s \
             ({} threads; woke: {:?})",
            idle.rss_mib, idle.wakeups_per_s, idle.threads, idle.woke
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
    let woke: Vec<(String, u64)> = after
        .iter()
        .filter_map(|(tid, name, n)| {
            let was = before
                .iter()
                .find(|(t, _, _)| t == tid)
                .map_or(0, |(_, _, b)| *b);
            let woke = n.saturating_sub(was);
            (woke > 0).then(|| (format!("{name} ({tid})"), woke))
        })
        .collect();
    let wakeups: u64 = woke.iter().map(|(_, n)| n).sum();
    Ok(Idle {
        rss_mib: rss,
        wakeups_per_s: wakeups as f64 / IDLE_WINDOW.as_secs_f64(),
        woke,
        threads: after.len(),
    })
}

/// Voluntary plus involuntary context switches of each thread of `pid`: id, name, count.
fn context_switches(pid: u32) -> anyhow::Result<Vec<(String, String, u64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| -> anyhow::Result<&str> {
            Ok(status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .with_context(|| format!("no {key} in a thread's status"))?
                .trim())
        };
        let switches: u64 = field("voluntary_ctxt_switches:")?.parse::<u64>()?
            + field("nonvoluntary_ctxt_switches:")?.parse::<u64>()?;
        threads.push((
            task.file_name().to_string_lossy().into_owned(),
            field("Name:")?.to_string(),
            switches,
        ));
    }
    Ok(threads)
}

// ---------------------------------------------------------------------------------------------
// 3. The herd.

/// From the backend's port opening to the last client's first byte: through wakegate (the
/// clients held before) and straight to the backend (the clients connecting as it opens).
struct Herd {
    n: usize,
    wakegate: Duration,
    direct: Duration,
}

async fn herd(dir: &Path, n: usize) -> anyhow::Result<Herd> {
    let [backend_port, api, listen] = free_ports()?;
    let backend = loopback(backend_port);
    let keys = Keys {
        service: format!("max_held = {}\n", 2 * n),
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
        let listener = listen_on(backend)?;
        let greeter = tokio::spawn(async move { greet_every_connection(&listener).await });
        let clients = connect_all(backend, n, false).await?;
        let direct = t0.elapsed();
        // Closed for good before the wake below: a listener still open would make the wake
        // find its backend up at once.
        greeter.abort();
        let _ = greeter.await;
        drop(clients);
        direct
    };
    progress(&format!(
        "herd of {n} straight to the backend: last first byte {:.0} ms after it opened",
        direct.as_secs_f64() * 1e3
    ));

    // Through wakegate: the herd arrives while the service sleeps and is held.
    let target = loopback(listen);
    let mut held = JoinSet::new();
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let (opened_tx, opened) = tokio::sync::watch::channel(None::<Instant>);
    for _ in 0..n {
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
    wait_held(&wakegate, n).await?;
    let t0 = Instant::now();
    let listener = listen_on(backend)?;
    opened_tx.send_replace(Some(t0));
    let greeter = tokio::spawn(async move { greet_every_connection(&listener).await });
    let mut last = Duration::ZERO;
    let mut streams = Vec::with_capacity(n);
    while let Some(done) = held.join_next().await {
        let (took, stream) = done.context("a held client panicked")??;
        last = last.max(took);
        streams.push(stream);
    }
    greeter.abort();
    progress(&format!(
        "herd of {n} held by wakegate: last first byte {:.0} ms after the backend opened",
        last.as_secs_f64() * 1e3
    ));
    drop(streams);
    Ok(Herd {
        n,
        wakegate: last,
        direct,
    })
}

/// The backend's listening socket, with [`BACKLOG`].
fn listen_on(at: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(at)
        .with_context(|| format!("cannot open the backend port {at}"))?;
    Ok(socket.listen(BACKLOG)?)
}

/// Waits until the service holds `n` clients (the API's `held`). Generous: a connection the
/// gateway is slow to accept waits for the kernel to retry its handshake (1 s, then 3 s…).
async fn wait_held(wakegate: &Wakegate, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + 2 * PATIENCE;
    loop {
        let view = support::api_json(wakegate.api, "GET", "/api/v1/services/herd").await?;
        let held = view["held"]
            .as_u64()
            .context("no `held` in the API's answer")?;
        if held as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            let problems = wakegate.proc.log_problems();
            bail!(
                "the service holds {held} clients, not {n}; the gateway's warnings:\n{}",
                problems.join("\n")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Figures {
    setup: String,
    sizes: Sizes,
    open: Option<[PerConnection; 2]>,
    asleep: Option<[Idle; 2]>,
    herd: Option<Herd>,
}

impl Figures {
    fn table(&self) -> String {
        let row = |label: &str, cells: [String; 3]| {
            let line = format!("{label:<48}{:<18}{:<14}{}", cells[0], cells[1], cells[2]);
            format!("{}\n", line.trim_end())
        };
        let mut out = format!("\nwakegate scale benchmark, loopback: {}\n\n", self.setup);
        out += &row(
            "",
            ["reference", "wakegate", "wakegate/reference"].map(String::from),
        );
        if let Some([h, w]) = &self.open {
            out += &row(
                &format!(
                    "memory per idle connection (KiB), N = {}",
                    self.sizes.connections
                ),
                [
                    format!("{:.2} haproxy", h.total_kib()),
                    format!("{:.2}", w.total_kib()),
                    format!("{:.2}", w.total_kib() / h.total_kib()),
                ],
            );
            out += &row(
                "  of which pipes: count / capacity (MiB)",
                [
                    format!("{} / {:.1}", h.pipes, h.pipe_kib / 1024.0),
                    format!("{} / {:.1}", w.pipes, w.pipe_kib / 1024.0),
                    String::new(),
                ],
            );
            out += &row(
                "  RSS before → with all open (MiB)",
                [
                    format!("{:.1} → {:.1}", h.rss_before_mib, h.rss_mib),
                    format!("{:.1} → {:.1}", w.rss_before_mib, w.rss_mib),
                    String::new(),
                ],
            );
        }
        if let Some([hi, wi]) = &self.asleep {
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
                    "(goal 0)".into(),
                ],
            );
        }
        if let Some(herd) = &self.herd {
            out += &row(
                &format!("herd of {}: port open → last first byte (ms)", herd.n),
                [
                    format!("{:.0} direct", herd.direct.as_secs_f64() * 1e3),
                    format!("{:.0}", herd.wakegate.as_secs_f64() * 1e3),
                    format!(
                        "{:.2}",
                        herd.wakegate.as_secs_f64() / herd.direct.as_secs_f64()
                    ),
                ],
            );
        }
        out += &format!(
            "\nmemory: RSS growth from none to N connections open (each after a {}-byte echo), per \
             connection, plus every pipe the process holds\n\
             (distinct pipe: links in /proc/PID/fd, data or not) at its capacity; N is \
             {IDLE_CONNECTIONS} or what the hard open-file limit allows.\n\
             asleep: wake-ups = context switches of all threads over {} s.\n\
             herd: clients held while the service sleeps; direct: as many clients connecting to \
             the backend once it is open, {CONNECTING_AT_ONCE} at a time.\n\
             Compare ratios within one run, not figures across runs or machines.\n",
            MESSAGE.len(),
            IDLE_WINDOW.as_secs(),
        );
        out
    }

    /// The headline figures for `bench/run`'s summary.
    fn rows(&self) -> Vec<Row> {
        let none = || "- (none in the issue)".to_string();
        let mut rows = Vec::new();
        if let Some([h, w]) = &self.open {
            rows.push(Row {
                key: "scale-memory",
                what: format!(
                    "memory per idle proxied connection, N = {} (KiB: RSS + pipes)",
                    self.sizes.connections
                ),
                reference: "haproxy",
                reference_value: h.total_kib(),
                value: w.total_kib(),
                better: Better::Lower,
                decimals: 2,
                goal: none(),
                met: None,
            });
        }
        if let Some([hi, wi]) = &self.asleep {
            rows.push(Row {
                key: "scale-asleep-rss",
                what: format!("{SLEEPING_SERVICES} services asleep: RSS (MiB)"),
                reference: "haproxy",
                reference_value: hi.rss_mib,
                value: wi.rss_mib,
                better: Better::Lower,
                decimals: 1,
                goal: none(),
                met: None,
            });
            rows.push(Row {
                key: "scale-asleep-wakeups",
                what: format!("{SLEEPING_SERVICES} services asleep: wake-ups/s"),
                reference: "haproxy",
                reference_value: hi.wakeups_per_s,
                value: wi.wakeups_per_s,
                better: Better::Lower,
                decimals: 1,
                goal: "0/s".into(),
                met: Some(wi.wakeups_per_s == 0.0),
            });
        }
        if let Some(herd) = &self.herd {
            rows.push(Row {
                key: "scale-herd",
                what: format!(
                    "herd of {}: backend ready → last client's first byte (ms)",
                    herd.n
                ),
                reference: "direct",
                reference_value: herd.direct.as_secs_f64() * 1e3,
                value: herd.wakegate.as_secs_f64() * 1e3,
                better: Better::Lower,
                decimals: 0,
                goal: none(),
                met: None,
            });
        }
        rows
    }
}
