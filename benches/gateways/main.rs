//! Several gateways sharing one PostgreSQL store (issue 18): what the hand-off adds to a wake,
//! and how long a failover takes. Two `wakegate run` processes, `gw-a` and `gw-b`, share a real
//! PostgreSQL server (Debian's, started in a temporary directory as the tests start it:
//! tests/common/postgres.rs, a fresh database per pair) and one data dir, and drive one
//! `process` service: the demo echo server, which opens its port at once, so that the wake is
//! as short as a wake gets and what the gateways add around it shows. All on loopback.
//!
//! 1. The hand-off: the service asleep, a client connects through the owner's listener (`gw-a`)
//!    or, in turns, through the other gateway's (`gw-b`, which holds the client, asks the owner
//!    through the database to wake the service, sees the state change and connects the client
//!    itself); measured from its connect to the first byte of its echo. Before each wake the
//!    service is asleep on both gateways' API and no echo server runs; after it, the owner's API
//!    puts it to sleep. One wake through each is made first and not counted. Also reported: the
//!    wake as the owner measures it (the `duration_ms` of its `awake` event, from the wake's
//!    start to ready), so the client's wait minus that is what the path around the wake costs;
//!    the hand-off's added latency is the difference of its medians through each gateway (the
//!    wake itself, a process start, varies by more than that on a busy machine).
//! 2. Failover, with a lease of 5 s and of 15 s: the service awake with a client connected
//!    through `gw-b`, the owner `gw-a` is killed with SIGKILL. Measured from the kill to (a)
//!    `gw-b`'s API naming `gw-b` the owner (polled every 10 ms), and (b) `gw-b` driving the
//!    service again: the time of the `awake` event of its reconcile (it found the backend
//!    running, adopted it and checked that it is ready). The client through `gw-b` must still
//!    be echoed after, and the backend must have been started once. A failover takes what was
//!    left of the dead owner's lease (renewed every third of it: between 2/3 of the lease and
//!    all of it) and the wait for the survivor's next try (every third of the lease), so the
//!    expectation is at most the lease and a third. Each run kills the owner at another point
//!    of its renewal cycle (the lease's time left, from `GET /api/v1/gateways`, spread over the
//!    cycle) and starts `gw-b` at another point of it (which sets when its tries come), so the
//!    runs span that range rather than repeat one point of it.
//!
//! `pair.rs` starts the two gateways and reads them. `bench/run` runs this benchmark with the
//! others and puts its headline figures in its summary; `cargo bench --bench gateways` runs it
//! alone (it needs Debian's `postgresql`, which bench/run and scripts/test install), and
//! `cargo bench --bench gateways -- handoff` (or `failover`) runs only the part named.

mod pair;
// Shared with the tests, which use more of it than this file does.
#[path = "../../tests/common/postgres.rs"]
mod postgres;
#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use pair::{Pair, client, events_after, is_awake, last_event, wait_event, wait_lease_left};
use support::rows::{self, Better, Row};
use support::{TempDir, api_json, progress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Wakes measured through each gateway, taken in turns.
const HANDOFF_ROUNDS: usize = 20;
/// The lease times measured, and the failovers measured with each.
const FAILOVERS: [(Duration, usize); 2] =
    [(Duration::from_secs(5), 3), (Duration::from_secs(15), 3)];
/// The lease of the hand-off part (nobody fails over there).
const HANDOFF_LEASE: Duration = Duration::from_secs(5);
/// The one service.
const SERVICE: &str = "echo";
/// What a client sends, and expects back.
const MESSAGE: &[u8; 32] = b"wakegate bench: hand it over...\n";
/// Every wait for a peer or a state is bounded by this (a failover's by more: see there).
const PATIENCE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(10);

/// The parts of the benchmark, which arguments may pick.
const PARTS: [&str; 2] = ["handoff", "failover"];

fn main() -> anyhow::Result<()> {
    let wanted = support::parts(&PARTS)?;
    let postgres_version = postgres_installed()?;
    // Stopped, and its directory removed, once this process is gone (its watchdog).
    let server = postgres::Server::start("bench-gateways");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let dir = TempDir::new("wakegate-bench-gateways")?;
    let figures = runtime.block_on(async {
        let handoff = match wanted("handoff") {
            true => Some(handoff(&dir.0, &server).await?),
            false => None,
        };
        let mut failovers = Vec::new();
        if wanted("failover") {
            for (lease, runs) in FAILOVERS {
                failovers.push(failovers_with(&dir.0, &server, lease, runs).await?);
            }
        }
        anyhow::Ok(Figures {
            setup: format!("{}, {postgres_version}", support::machine()),
            handoff,
            failovers,
        })
    })?;
    print!("{}", figures.table());
    rows::record(&figures.rows())
}

/// The version of Debian's PostgreSQL server programs, or how to install them.
fn postgres_installed() -> anyhow::Result<String> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|d| d.path().join("bin/initdb").exists())
        .filter_map(|d| d.file_name().to_str()?.parse::<u32>().ok())
        .max();
    // Elsewhere, where `pg_config` says (libpq's development package has it without a server).
    let pg_config = |flag: &str| {
        Command::new("pg_config")
            .arg(flag)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let on_path = || {
        let bin = pg_config("--bindir")?;
        Path::new(&bin)
            .join("initdb")
            .exists()
            .then(|| pg_config("--version"))?
    };
    match newest {
        Some(version) => Ok(format!("PostgreSQL {version}")),
        None => on_path().context(
            "PostgreSQL's server is needed: install Debian's `postgresql` \
             (apt-get install postgresql; bench/run and scripts/test install it)",
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The hand-off.

/// One wake: the client's wait for its first byte, and the owner's own `duration_ms`.
#[derive(Clone, Copy)]
struct Wake {
    client_ms: f64,
    wake_ms: f64,
}

struct Handoff {
    owner: Vec<Wake>,
    follower: Vec<Wake>,
}

async fn handoff(dir: &Path, server: &postgres::Server) -> anyhow::Result<Handoff> {
    let mut pair = Pair::start(dir, server, "handoff", HANDOFF_LEASE, None).await?;
    let mut figures = Handoff {
        owner: Vec::new(),
        follower: Vec::new(),
    };
    // One through each first, not counted: the binary and the database warm up.
    for round in 0..=HANDOFF_ROUNDS {
        for through in 0..2 {
            let wake = wake_once(&mut pair, through).await?;
            if round == 0 {
                continue;
            }
            progress(&format!(
                "wake {round}/{HANDOFF_ROUNDS} through {}: client {:.1} ms, the owner's wake {:.0} ms",
                pair.gateways[through].id, wake.client_ms, wake.wake_ms
            ));
            match through {
                0 => figures.owner.push(wake),
                _ => figures.follower.push(wake),
            }
        }
    }
    ensure!(
        pair.starts() == 2 * (HANDOFF_ROUNDS + 1),
        "{} wakes started the backend {} times",
        2 * (HANDOFF_ROUNDS + 1),
        pair.starts()
    );
    for gateway in &mut pair.gateways {
        gateway.proc.check_running()?;
    }
    Ok(figures)
}

/// Wakes the asleep service by a client through gateway `through` (0: the owner); puts it
/// back to sleep through the owner's API.
async fn wake_once(pair: &mut Pair, through: usize) -> anyhow::Result<Wake> {
    pair.wait_asleep("gw-a").await?;
    let api = pair.owner().api;
    let before = last_event(api).await?;
    let (first, stream) = client(pair.gateways[through].listen).await?;
    drop(stream);
    let awake = wait_event(api, before, PATIENCE, "the wake's awake event", |events| {
        events.iter().find(|e| is_awake(e)).cloned()
    })
    .await?;
    // Through `gw-b`, the owner woke it because `gw-b` asked.
    let started = events_after(api, before).await?;
    let started = started
        .iter()
        .find(|e| e["state"] == "waking")
        .context("no waking event before the awake one")?;
    let handed = started["reason"]
        .as_str()
        .is_some_and(|r| r.contains("through gateway gw-b"));
    ensure!(
        handed == (through == 1),
        "a wake through {} started as {started}",
        pair.gateways[through].id
    );
    let wake_ms = awake["detail"]["duration_ms"]
        .as_f64()
        .with_context(|| format!("no duration_ms in the awake event: {awake}"))?;
    api_json(api, "POST", &format!("/api/v1/services/{SERVICE}/sleep")).await?;
    Ok(Wake {
        client_ms: first.as_secs_f64() * 1e3,
        wake_ms,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Failover.

/// One failover: the dead owner's lease left at the kill, and from the kill to the survivor
/// owning the service (its API), and to it driving it (its reconcile's awake event).
struct Failover {
    left: Duration,
    owns: Duration,
    drives: Duration,
}

struct Failovers {
    lease: Duration,
    runs: Vec<Failover>,
}

impl Failovers {
    fn slowest(&self) -> Duration {
        self.runs.iter().map(|r| r.drives).max().unwrap_or_default()
    }

    /// The lease and a third: a lease that had just been renewed, and the survivor's next
    /// try a third of the lease later.
    fn expected(&self) -> Duration {
        self.lease + self.lease / 3
    }
}

async fn failovers_with(
    dir: &Path,
    server: &postgres::Server,
    lease: Duration,
    runs: usize,
) -> anyhow::Result<Failovers> {
    let mut figures = Failovers {
        lease,
        runs: Vec::new(),
    };
    // Each run kills the owner at another point of its renewal cycle (a third of the lease:
    // the time left runs from the lease down to 2/3 of it), and starts the survivor at another
    // point of it (its tries then come that long after each expiry, start-up included). The
    // two go opposite ways, so that the runs spread from the shortest failover to the longest.
    let cycle = lease / 3;
    for run in 0..runs {
        let spread = |i: usize| cycle.mul_f64((i as f64 + 0.5) / runs as f64);
        let kill_at = lease - spread(run);
        let phase = spread(runs - 1 - run);
        let name = format!("failover-{}s-{run}", lease.as_secs());
        let failover = failover(dir, server, &name, lease, phase, kill_at).await?;
        progress(&format!(
            "lease {lease:?}, run {}/{runs}: killed with {:.2} s of lease left; gw-b owns it {:.2} s \
             later, drives it {:.2} s later",
            run + 1,
            failover.left.as_secs_f64(),
            failover.owns.as_secs_f64(),
            failover.drives.as_secs_f64(),
        ));
        figures.runs.push(failover);
    }
    Ok(figures)
}

/// Starts the pair (`gw-b` `phase` after a renewal of `gw-a`), wakes the service through
/// `gw-b` and keeps that client; kills `gw-a` once its lease has `kill_at` left; measures how
/// long `gw-b` takes to drive the service.
async fn failover(
    dir: &Path,
    server: &postgres::Server,
    name: &str,
    lease: Duration,
    phase: Duration,
    kill_at: Duration,
) -> anyhow::Result<Failover> {
    let mut pair = Pair::start(dir, server, name, lease, Some(phase)).await?;
    let (_, mut held) = client(pair.follower().listen).await?;
    for gateway in &mut pair.gateways {
        gateway.wait_for("awake", "gw-a").await?;
    }
    let survivor_api = pair.follower().api;

    let left = wait_lease_left(survivor_api, lease, kill_at).await?;
    let before = last_event(survivor_api).await?;
    pair.gateways[0].proc.kill()?;
    let killed = Instant::now();
    let killed_wall = SystemTime::now();

    // A failover may take the lease and a third; more is measured too, up to twice the lease.
    let patience = 2 * lease + PATIENCE;
    let survivor = &mut pair.gateways[1];
    let owns = loop {
        survivor.proc.check_running()?;
        if survivor.view().await?["owner"] == "gw-b" {
            break killed.elapsed();
        }
        ensure!(
            killed.elapsed() < patience,
            "gw-b did not take the service within {patience:?} of the owner's death"
        );
        tokio::time::sleep(POLL).await;
    };
    let awake = wait_event(
        survivor_api,
        before,
        patience,
        "gw-b adopting the backend and finding it ready",
        |events| {
            let adopted = events.iter().position(|e| {
                e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("found the backend running"))
            })?;
            events[adopted..].iter().find(|e| is_awake(e)).cloned()
        },
    )
    .await?;
    let at = awake["time"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .with_context(|| format!("the awake event has no time: {awake}"))?;
    let drives = at.duration_since(killed_wall).unwrap_or_default();

    // The client through the survivor was never cut, and nothing was started twice.
    held.write_all(MESSAGE).await?;
    let mut back = [0u8; MESSAGE.len()];
    tokio::time::timeout(PATIENCE, held.read_exact(&mut back))
        .await
        .context("the client through gw-b is no longer echoed after the failover")??;
    ensure!(&back == MESSAGE, "the echo through gw-b differs");
    let starts = pair.starts();
    if starts != 1 {
        bail!("the backend was started {starts} times");
    }
    ensure!(
        pair.echo_servers().len() == 1,
        "{} echo servers run after the failover",
        pair.echo_servers().len()
    );
    Ok(Failover { left, owns, drives })
}

// ---------------------------------------------------------------------------------------------
// The figures.

struct Figures {
    setup: String,
    handoff: Option<Handoff>,
    failovers: Vec<Failovers>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::min)
}

impl Handoff {
    fn client(wakes: &[Wake]) -> Vec<f64> {
        wakes.iter().map(|w| w.client_ms).collect()
    }

    fn wake(wakes: &[Wake]) -> Vec<f64> {
        wakes.iter().map(|w| w.wake_ms).collect()
    }

    /// The client's wait beyond the wake itself, per wake: what the path around it costs.
    fn around(wakes: &[Wake]) -> Vec<f64> {
        wakes.iter().map(|w| w.client_ms - w.wake_ms).collect()
    }

    /// What the hand-off adds: the difference of the medians of the wait beyond the wake (the
    /// wake itself, a process start, varies by more than the hand-off costs on a busy machine).
    fn added_ms(&self) -> f64 {
        median(&Handoff::around(&self.follower)) - median(&Handoff::around(&self.owner))
    }
}

impl Figures {
    fn table(&self) -> String {
        let mut out = format!(
            "\nwakegate several-gateways benchmark, loopback: {}; two gateways on one database, \
             one process service (the demo echo server)\n",
            self.setup
        );
        if let Some(h) = &self.handoff {
            out += &format!(
                "\nhand-off: a wake of the sleeping service, connect → first echoed byte (ms), \
                 {HANDOFF_ROUNDS} wakes through each gateway, taken in turns\n\n"
            );
            let line = |cells: [&str; 6]| {
                let text = format!(
                    "{:<42}{:>9}{:>9}{:>9}{:>15}{:>18}",
                    cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
                );
                format!("{}\n", text.trim_end())
            };
            out += &line([
                "",
                "median",
                "min",
                "max",
                "owner's wake",
                "beyond the wake",
            ]);
            for (what, wakes) in [
                ("through the owner (gw-a)", &h.owner),
                ("through the non-owner (gw-b): hand-off", &h.follower),
            ] {
                let client = Handoff::client(wakes);
                out += &line([
                    what,
                    &format!("{:.1}", median(&client)),
                    &format!("{:.1}", min(&client)),
                    &format!("{:.1}", max(&client)),
                    &format!("{:.1}", median(&Handoff::wake(wakes))),
                    &format!("{:.1}", median(&Handoff::around(wakes))),
                ]);
            }
            out += &line([
                "added by the hand-off",
                "",
                "",
                "",
                "",
                &format!("{:+.1}", h.added_ms()),
            ]);
            out += "\nowner's wake: the duration_ms of the owner's awake event (from the wake's \
                    start to ready), median; beyond the wake: each\nclient's wait minus that \
                    wake's duration_ms, median: what the gateways' path around the wake costs \
                    (added by the hand-off: the\ndifference of the two, a steadier figure than \
                    the difference of the waits, which carries the process start's spread).\n";
        }
        if !self.failovers.is_empty() {
            out += "\nfailover: the owner (gw-a) killed with SIGKILL, the service awake with a \
                    client connected through gw-b (s)\n\n";
            let line = |cells: [&str; 6]| {
                let text = format!(
                    "{:<10}{:>5}{:>22}{:>18}{:>20}  {}",
                    cells[0], cells[1], cells[2], cells[3], cells[4], cells[5]
                );
                format!("{}\n", text.trim_end())
            };
            out += &line([
                "lease",
                "run",
                "lease left at kill",
                "kill → gw-b owns",
                "kill → gw-b drives",
                "expected: ≤ lease + 1/3",
            ]);
            for f in &self.failovers {
                for (i, run) in f.runs.iter().enumerate() {
                    out += &line([
                        &format!("{} s", f.lease.as_secs()),
                        &(i + 1).to_string(),
                        &format!("{:.2}", run.left.as_secs_f64()),
                        &format!("{:.2}", run.owns.as_secs_f64()),
                        &format!("{:.2}", run.drives.as_secs_f64()),
                        &match run.drives <= f.expected() {
                            true => format!("yes (≤ {:.2})", f.expected().as_secs_f64()),
                            false => format!("NO (> {:.2})", f.expected().as_secs_f64()),
                        },
                    ]);
                }
            }
            out += "\nowns: gw-b's API names gw-b the owner (polled every 10 ms); owns − lease left \
                    is how long after the expiry gw-b tried again\n(it tries every third of the \
                    lease). drives: the time of the awake event of gw-b's reconcile (it found the \
                    backend running,\nadopted it, and checked it is ready). The client through \
                    gw-b was echoed after each failover; the backend was started once in each \
                    run.\n";
        }
        out += "Compare within one run, not figures across runs or machines.\n";
        out
    }

    /// The headline figures for `bench/run`'s summary.
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        if let Some(h) = &self.handoff {
            rows.push(Row {
                key: "gateways-handoff",
                what: "a wake through the non-owner: the wait beyond the wake, median (ms)".into(),
                reference: "owner",
                reference_value: median(&Handoff::around(&h.owner)),
                value: median(&Handoff::around(&h.follower)),
                better: Better::Lower,
                decimals: 1,
                goal: "- (none in the issue)".into(),
                met: None,
            });
        }
        for f in &self.failovers {
            let key = match f.lease.as_secs() {
                5 => "gateways-failover-5s",
                15 => "gateways-failover-15s",
                _ => continue,
            };
            rows.push(Row {
                key,
                what: format!(
                    "failover, lease {} s: owner killed → survivor drives, slowest of {} (s)",
                    f.lease.as_secs(),
                    f.runs.len()
                ),
                reference: "lease",
                reference_value: f.lease.as_secs_f64(),
                value: f.slowest().as_secs_f64(),
                better: Better::Lower,
                decimals: 2,
                goal: format!("≤ lease + 1/3 ({:.1} s)", f.expected().as_secs_f64()),
                met: Some(f.slowest() <= f.expected()),
            });
        }
        rows
    }
}
