//! What every benchmark needs: child processes that never outlive a run, a temp dir, free ports
//! on loopback, and a few readings from /proc.
#![allow(dead_code)]

pub mod peers;
pub mod rows;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// The gateway under test: the binary Cargo builds with the bench profile (the release
/// settings) for each bench target, so the figures are those of the current tree; or the one
/// `WAKEGATE_BENCH_BIN` names, to measure another build (an older commit) the same way.
pub fn wakegate() -> std::ffi::OsString {
    std::env::var_os("WAKEGATE_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_wakegate").into())
}

/// How long a peer may take to start listening.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often a waiting loop looks again.
const POLL: Duration = Duration::from_millis(10);

/// A child process, stopped when dropped (panics included) so no run leaves one behind. Its
/// stdout and stderr go to `<name>.log` in the bench's temp dir.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command, dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (a crash: nothing of its own runs after) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .with_context(|| format!("cannot kill {}", self.name))?;
        self.child.wait()?;
        Ok(())
    }

    /// Fails, with the end of the process's log, if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// The warnings and errors in its log (a stored event that failed is one).
    pub fn log_problems(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }

    /// Waits until something listens on 127.0.0.1:`port`, read from /proc/net/tcp so that no
    /// test connection reaches the peer (iperf3 and haproxy would count it as a client).
    pub async fn wait_listening(&mut self, port: u16) -> anyhow::Result<()> {
        let local = format!("0100007F:{port:04X}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.check_running()?;
            let table = std::fs::read_to_string("/proc/net/tcp")?;
            let listening = table.lines().skip(1).any(|line| {
                let mut columns = line.split_whitespace().skip(1);
                // "0A" is TCP_LISTEN.
                columns.next() == Some(local.as_str()) && columns.nth(1) == Some("0A")
            });
            if listening {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} does not listen on port {port}",
                self.name
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Proc {
    /// Waits until a UDP socket is bound to 127.0.0.1:`port`, read from /proc/net/udp so that
    /// no datagram reaches the peer.
    pub async fn wait_udp_bound(&mut self, port: u16) -> anyhow::Result<()> {
        let local = format!("0100007F:{port:04X}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.check_running()?;
            let table = std::fs::read_to_string("/proc/net/udp")?;
            let bound = table
                .lines()
                .skip(1)
                .any(|line| line.split_whitespace().nth(1) == Some(local.as_str()));
            if bound {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} does not listen on udp port {port}",
                self.name
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SIGTERM first, so wakegate and haproxy exit the way they do in real use; SIGKILL
        // after a few seconds.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bench's own directory under the system temp dir, removed at the end.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// utime + stime of the whole process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; utime and stime (fields 14 and 15) are
    // the 12th and 13th after it.
    let after_name = stat.rsplit_once(')').context("odd /proc/PID/stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc/PID/stat")?.parse()?)
    };
    Ok(field(11)? + field(12)?)
}

/// Progress goes to stderr, the table to stdout.
pub fn progress(line: &str) {
    eprintln!("  {line}");
}

/// `N` distinct free ports on 127.0.0.1. They are picked while all of them are held, and the
/// ports a run uses are never picked twice (a port given back to the system may come out again).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    let mut held = Vec::new();
    let mut ports = [0; N];
    for port in &mut ports {
        // Bounded: a port already given is skipped, and there are only so many of them.
        for _ in 0..=given.len() {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
            *port = listener.local_addr()?.port();
            held.push(listener);
            if !given.contains(port) {
                break;
            }
        }
        ensure!(!given.contains(port), "no new free port on 127.0.0.1");
        given.push(*port);
    }
    Ok(ports)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The resident memory of process `pid`, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

/// One request to wakegate's API on its own connection; its JSON answer.
pub async fn api_json(
    api: SocketAddr,
    method: &str,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(api).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {api}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(PATIENCE, exchange)
        .await
        .context("the API did not answer")??;
    let response = String::from_utf8_lossy(&response);
    let body = response
        .split_once("\r\n\r\n")
        .context("the API's answer has no body")?
        .1;
    serde_json::from_str(body)
        .with_context(|| format!("the API answered something else than JSON: {response}"))
}

/// A backend that writes one byte to each connection it accepts and keeps them all open (a
/// readiness probe that has already gone makes its write fail, which is fine). Returns only on
/// an accept error; the connections close when it is dropped.
pub async fn greet_every_connection(listener: &tokio::net::TcpListener) -> std::io::Error {
    use tokio::io::AsyncWriteExt;
    let mut open = Vec::new();
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let _ = stream.write_all(b"!").await;
                open.push(stream);
            }
            Err(e) => return e,
        }
    }
}

/// The parts of a benchmark named on its command line (`cargo bench --bench NAME -- PART…`),
/// each checked against `known`: whether a part is to run (all when none is named).
pub fn parts(known: &[&str]) -> anyhow::Result<impl Fn(&str) -> bool + use<>> {
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for part in &parts {
        ensure!(
            known.contains(&part.as_str()),
            "no part `{part}`: the parts are {}",
            known.join(", ")
        );
    }
    Ok(move |part: &str| parts.is_empty() || parts.iter().any(|p| p == part))
}

/// The machine in the words every benchmark's heading starts with: "2 CPUs, Linux 6.1.0".
pub fn machine() -> String {
    format!(
        "{} CPUs, Linux {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
    )
}
