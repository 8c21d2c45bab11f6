//! `process` backend: wakegate runs the server as its own child, like lazymc does.
//!
//! Output goes to `<data_dir>/<service>.log`. The child leads its own session and process
//! group (see [`super::session`]) and carries its service's mark in its environment (see
//! [`super::family`]); a pid file (`<service>.pid`: the pid and its kernel start time) names
//! it. A wakegate that was killed
//! with -9 finds the server again by the pid file or, failing that, by the mark, whatever
//! wrapper started it; a reused pid is never adopted. An exit is noticed at once: `wait()` on
//! our own child, a pidfd for an adopted one, then a pidfd on each process of the family
//! still running (a wrapper that forked the server and ended). Stop signals go to the whole
//! group and to any of the family that left it.
//!
//! When nothing of ours runs but something else already answers on the backend's local
//! address (a copy started by hand), wakegate says so and never starts a second copy that
//! would die on "Address already in use".
//!
//! A Minecraft server is best stopped by its own `stop` command, on stdin or over RCON
//! (which also reaches an adopted server), after an optional `save-all`. When that way fails
//! the server gets SIGTERM, and SIGKILL after `stop_timeout`; each step is a note the service
//! records as an event.
//!
//! With `sleep_mode = "freeze"`, an idle stop freezes the server instead (SIGSTOP, see
//! [`super::freeze`]) and the next start resumes it; a stop for real (a restart, the end of
//! `freeze_for`, wakegate's shutdown) thaws it first, then stops it the usual way.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use rustix::process::{Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tracing::{info, warn};

use super::config::{self, OnShutdown, Process, ProcessSleep, StopMethod};
use super::family::{Family, start_time};
use super::freeze;
use super::pidfd::ExitWatch;
use super::rcon::{Rcon, RconError};
use super::{
    Backend, BackendError, Exit, Note, Notes, SleepMode, Status, describe_exit, tail_of_file,
};
use crate::event::Kind;

const LOG_TAIL_LINES: usize = 15;

/// The start of the line wakegate writes to the log before each start of the server.
const RUN_HEADER: &str = "--- wakegate starts ";

/// The last `lines` lines the server wrote since its last start: the log holds every run, and
/// what an earlier one said (or the header wakegate wrote) is not why this one ended.
fn tail_of_run(path: &std::path::Path, lines: usize) -> String {
    let tail = tail_of_file(path, usize::MAX);
    let run = match tail.rfind(RUN_HEADER) {
        Some(at) => tail[at..].split_once('\n').map_or("", |(_, rest)| rest),
        None => tail.as_str(),
    };
    let all: Vec<&str> = run.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How long a connect to the backend's address may take when checking whether something
/// else holds it.
const OCCUPIED_CHECK: Duration = Duration::from_secs(1);

pub struct ProcessBackend {
    service: String,
    config: Process,
    log_path: PathBuf,
    pid_path: PathBuf,
    family: Family,
    running: Option<Running>,
    /// The server is frozen (SIGSTOP), as the kernel last said.
    frozen: bool,
    notes: Notes,
    notes_rx: Option<tokio::sync::mpsc::UnboundedReceiver<Note>>,
}

/// The server as this wakegate knows it: its leader, and our own child when we started it.
struct Running {
    leader: Pid,
    /// The leader's kernel start time: a pid that no longer has it is no longer ours.
    started: u64,
    /// Started by this wakegate (None: adopted from an earlier one).
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// How the leader ended, once it has; the family may still run.
    leader_exit: Option<String>,
}

impl Running {
    /// Whether the leader still runs (our child not yet exited, or the same adopted process).
    fn leader_alive(&mut self) -> bool {
        if self.leader_exit.is_some() {
            return false;
        }
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => start_time(self.leader) == Some(self.started),
        }
    }

    /// Resolves when the leader has ended, with how. Cancel-safe.
    async fn leader_exited(&mut self) -> String {
        if let Some(exit) = &self.leader_exit {
            return exit.clone();
        }
        let exit = match &mut self.child {
            Some(child) => match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("an unknown status ({e})"),
            },
            None => {
                // The pidfd turns readable when the process ends; as it is not our child, its
                // exit status belongs to init.
                // Opened first, then checked: the watch is on the process that was ours.
                if let Ok(watch) = ExitWatch::open(self.leader)
                    && start_time(self.leader) == Some(self.started)
                {
                    watch.exited().await;
                }
                "an exit status unknown to this wakegate (it was adopted)".to_string()
            }
        };
        self.leader_exit = Some(exit.clone());
        exit
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    start_time: u64,
}

impl ProcessBackend {
    pub fn new(service: &str, config: Process, data_dir: &Path) -> ProcessBackend {
        let (notes, notes_rx) = tokio::sync::mpsc::unbounded_channel();
        ProcessBackend {
            service: service.to_string(),
            config,
            log_path: data_dir.join(format!("{service}.log")),
            pid_path: data_dir.join(format!("{service}.pid")),
            family: Family::new(service, data_dir),
            running: None,
            frozen: false,
            notes,
            notes_rx: Some(notes_rx),
        }
    }

    fn note(&mut self, kind: Kind, reason: String) {
        let _ = self.notes.send(Note {
            kind,
            reason,
            detail: serde_json::Value::Null,
        });
    }

    fn spawn(&mut self) -> Result<(), BackendError> {
        let program = &self.config.command[0];
        let spawn_error = |e: std::io::Error| BackendError::Spawn {
            what: format!("`{program}`"),
            reason: e.to_string(),
        };
        if let Some(dir) = self.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(spawn_error)?;
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(spawn_error)?;
        let _ = writeln!(
            log,
            "{RUN_HEADER}{:?} at {} ---",
            self.config.command,
            crate::event::format_time(std::time::SystemTime::now())
        );
        let stderr = log.try_clone().map_err(spawn_error)?;
        let (mark, value) = self.family.env();
        let mut cmd = Command::new(program);
        cmd.args(&self.config.command[1..])
            .envs(self.config.env.iter().map(|(k, v)| (k, v.expose())))
            .env(mark, value)
            .stdin(match self.config.stop {
                StopMethod::Stdin(_) => Stdio::piped(),
                StopMethod::Signal(_) | StopMethod::Rcon(_) => Stdio::null(),
            })
            .stdout(log)
            .stderr(stderr);
        // Its own session and process group: a Ctrl-C on wakegate's terminal must not reach the
        // server (wakegate decides how it stops), nor may wakegate's end thaw it when frozen.
        super::session::own_session(&mut cmd);
        if let Some(cwd) = &self.config.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let pid = child
            .id()
            .and_then(|id| Pid::from_raw(id as i32))
            .ok_or_else(|| BackendError::Other("the process exited before it had a pid".into()))?;
        let started = start_time(pid).unwrap_or(0);
        self.write_pid_file(pid, started);
        info!(service = %self.service, pid = pid.as_raw_nonzero().get(), log = %self.log_path.display(), "Process started.");
        self.running = Some(Running {
            leader: pid,
            started,
            stdin: child.stdin.take(),
            child: Some(child),
            leader_exit: None,
        });
        Ok(())
    }

    fn write_pid_file(&self, pid: Pid, start_time: u64) {
        let record = PidFile {
            pid: pid.as_raw_nonzero().get(),
            start_time,
        };
        if let Err(e) = std::fs::write(&self.pid_path, serde_json::to_vec(&record).unwrap()) {
            warn!(service = %self.service, error = %e, "Cannot write the pid file; after a crash, wakegate will find the process by the mark in its environment instead.");
        }
    }

    /// Looks for a process an earlier wakegate started and left behind: the one the pid file
    /// names if it is still the same process (its start time), else any process that carries
    /// the service's mark.
    fn adopt(&mut self) -> Option<Pid> {
        let recorded = std::fs::read(&self.pid_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<PidFile>(&bytes).ok())
            .and_then(|record| Some((Pid::from_raw(record.pid)?, record.start_time)))
            .filter(|(pid, started)| start_time(*pid) == Some(*started));
        let (leader, how) = match recorded {
            Some((pid, _)) => (pid, "its pid file"),
            None => (self.family.leader()?, "the mark in its environment"),
        };
        let started = start_time(leader)?;
        self.write_pid_file(leader, started);
        info!(service = %self.service, pid = leader.as_raw_nonzero().get(), "Found the process a previous wakegate started, by {how}.");
        self.running = Some(Running {
            leader,
            started,
            child: None,
            stdin: None,
            leader_exit: None,
        });
        Some(leader)
    }

    /// Why the server cannot be started although none of ours runs: something else already
    /// answers on the backend's address, and it is an address of this host (a second copy
    /// would die on "Address already in use"). A remote address may well answer for other
    /// reasons (a load balancer), so only a local one is checked.
    async fn occupied(&self) -> Option<String> {
        let address = &self.config.address;
        let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host(address.as_str())
            .await
            .ok()?
            .collect();
        let local = addresses
            .iter()
            .any(|a| a.ip().is_loopback() || std::net::TcpListener::bind((a.ip(), 0)).is_ok());
        if !local {
            return None;
        }
        let connect = tokio::net::TcpStream::connect(address.as_str());
        match tokio::time::timeout(OCCUPIED_CHECK, connect).await {
            Ok(Ok(_)) => Some(format!(
                "another program already answers on {address}, the backend's address, and no \
                 process this wakegate started runs: wakegate will not start a second copy. \
                 Stop that program (perhaps a copy started by hand), or change `address`"
            )),
            _ => None,
        }
    }

    /// Waits for the running server to end, its leader and every process of its family, and
    /// forgets it. Cancel-safe.
    async fn wait_exit(&mut self) -> Exit {
        let status = match &mut self.running {
            None => "not running".to_string(),
            Some(running) => running.leader_exited().await,
        };
        // A wrapper that forked the server and ended leaves it running: it is still ours.
        self.family.all_exited().await;
        self.running = None;
        self.frozen = false;
        let _ = std::fs::remove_file(&self.pid_path);
        Exit {
            status,
            log_tail: tail_of_run(&self.log_path, LOG_TAIL_LINES),
        }
    }

    /// Sends `signal` to the server's process group and to any of its family outside it.
    fn signal(&self, signal: Signal) {
        if let Some(running) = &self.running {
            self.family.signal(running.leader, signal);
        }
    }

    /// Asks the process to stop the configured way; falls back to SIGTERM where that way is
    /// not open (an adopted process has no stdin of ours).
    async fn ask_to_stop(&mut self) {
        let Some(running) = &mut self.running else {
            return;
        };
        if let (StopMethod::Stdin(line), Some(stdin)) = (&self.config.stop, &mut running.stdin) {
            // A server reads its console in order: the save is done before the stop begins.
            let save = if self.config.save_all {
                "save-all\n"
            } else {
                ""
            };
            let sent = async {
                stdin
                    .write_all(format!("{save}{line}\n").as_bytes())
                    .await?;
                stdin.flush().await
            }
            .await;
            match sent {
                Ok(()) => return,
                Err(e) => {
                    warn!(service = %self.service, error = %e, "Cannot write the stop command to stdin; sending SIGTERM instead.")
                }
            }
        }
        if let StopMethod::Rcon(rcon) = &self.config.stop {
            let rcon = rcon.clone();
            let timeout = self.config.stop_timeout;
            let session = tokio::time::timeout(timeout, self.stop_over_rcon(&rcon)).await;
            let error = match session {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e,
                Err(_) => RconError::TimedOut {
                    address: rcon.address.clone(),
                    timeout,
                },
            };
            warn!(service = %self.service, error = %error, "Cannot stop the server over RCON; sending SIGTERM instead.");
            self.note(
                Kind::Warning,
                format!("the stop over RCON failed: {error}; sent SIGTERM instead"),
            );
        }
        let signal = match self.config.stop {
            StopMethod::Signal(n) => Signal::from_named_raw(n).unwrap_or(Signal::TERM),
            StopMethod::Stdin(_) | StopMethod::Rcon(_) => Signal::TERM,
        };
        // The whole family: a wrapper script that did not `exec` the server must not leave it.
        self.signal(signal);
    }

    /// Logs in over RCON, saves first if configured, and sends the stop command.
    async fn stop_over_rcon(&mut self, rcon: &config::Rcon) -> Result<(), RconError> {
        let mut session = Rcon::login(&rcon.address, &rcon.password).await?;
        if self.config.save_all {
            let answer = session.command("save-all").await?;
            info!(service = %self.service, answer = %answer.trim(), "The server saved its world (save-all over RCON).");
            self.note(
                Kind::Progress,
                format!(
                    "the server saved its world (save-all over RCON{})",
                    quoted(&answer)
                ),
            );
        }
        match session.command(&rcon.command).await {
            // A server that stops may close the connection before it answers.
            Ok(_) | Err(RconError::Closed { .. }) => {}
            Err(e) => return Err(e),
        }
        info!(service = %self.service, command = %rcon.command, "Asked the server to stop over RCON.");
        self.note(
            Kind::Progress,
            format!("asked the server to stop (`{}` over RCON)", rcon.command),
        );
        Ok(())
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(&mut self) -> Result<(), BackendError> {
        match self.status().await? {
            Status::Running => Ok(()),
            Status::Sleeping(_) => {
                self.thaw("");
                Ok(())
            }
            Status::Occupied(why) => Err(BackendError::Other(why)),
            _ => self.spawn(),
        }
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        match self.status().await? {
            Status::Stopped | Status::Sleeping(_) => Ok(()),
            _ if self.config.sleep_mode == ProcessSleep::Freeze => self.freeze().await,
            _ => self.stop_process().await,
        }
    }

    async fn stop_for_real(&mut self) -> Result<(), BackendError> {
        if let Status::Sleeping(_) = self.status().await? {
            self.thaw(" to stop it");
        }
        self.stop_process().await
    }

    fn sleep_mode(&self) -> SleepMode {
        let freezes = self.config.sleep_mode == ProcessSleep::Freeze && self.running.is_some();
        if self.frozen || freezes {
            SleepMode::Frozen
        } else {
            SleepMode::Stopped
        }
    }

    fn sleep_limit(&self) -> Option<Duration> {
        self.config.freeze_for
    }

    async fn status(&mut self) -> Result<Status, BackendError> {
        let alive = match &mut self.running {
            Some(running) => running.leader_alive() || !self.family.members().is_empty(),
            None => self.adopt().is_some(),
        };
        if alive {
            let leader = self.running.as_ref().map(|r| r.leader);
            self.frozen = freeze::is_frozen(&self.family, leader);
            return Ok(if self.frozen {
                Status::Sleeping(SleepMode::Frozen)
            } else {
                Status::Running
            });
        }
        if self.running.is_some() {
            self.wait_exit().await;
        }
        Ok(match self.occupied().await {
            Some(why) => Status::Occupied(why),
            None => Status::Stopped,
        })
    }

    async fn address(&mut self) -> Result<String, BackendError> {
        Ok(self.config.address.clone())
    }

    fn log_file(&self) -> Option<&Path> {
        Some(&self.log_path)
    }

    fn notes(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Note>> {
        self.notes_rx.take()
    }

    async fn exited(&mut self) -> Exit {
        if self.running.is_none() {
            return std::future::pending().await;
        }
        self.wait_exit().await
    }

    async fn remove(&mut self) -> Result<(), BackendError> {
        // A service that ends for good leaves no frozen server behind.
        if self.running.is_some() {
            self.stop_for_real().await?;
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<bool, BackendError> {
        match self.config.on_shutdown {
            OnShutdown::Stop => {
                let was_running = self.running.is_some();
                // A frozen server too: nothing is left unwatched.
                self.stop_for_real().await?;
                Ok(was_running)
            }
            OnShutdown::Leave => {
                // Dropping our handle neither kills nor waits: the process keeps running (or
                // frozen) and the pid file stays for the next wakegate to adopt.
                if let Some(running) = self.running.take() {
                    info!(service = %self.service, pid = running.leader.as_raw_nonzero().get(), "Leaving the process as it is (on_shutdown = \"leave\").");
                }
                Ok(false)
            }
        }
    }
}

impl ProcessBackend {
    /// Freezes the running server (SIGSTOP); returns once every process has stopped.
    async fn freeze(&mut self) -> Result<(), BackendError> {
        let Some(leader) = self.running.as_ref().map(|r| r.leader) else {
            return Ok(());
        };
        freeze::freeze(&self.family, leader)
            .await
            .map_err(|why| BackendError::Other(format!("cannot freeze the process: {why}")))?;
        self.frozen = true;
        info!(service = %self.service, pid = leader.as_raw_nonzero().get(), "Process frozen (SIGSTOP).");
        self.note(
            Kind::Progress,
            "froze the process (SIGSTOP): it keeps its memory and uses no CPU until the next wake"
                .into(),
        );
        Ok(())
    }

    /// Resumes the frozen server (SIGCONT); `why` ends the note (" to stop it").
    fn thaw(&mut self, why: &str) {
        let Some(leader) = self.running.as_ref().map(|r| r.leader) else {
            return;
        };
        freeze::thaw(&self.family, leader);
        self.frozen = false;
        info!(service = %self.service, pid = leader.as_raw_nonzero().get(), "Process resumed (SIGCONT){why}.");
        self.note(
            Kind::Progress,
            format!("resumed the frozen process (SIGCONT){why}"),
        );
    }

    /// Stops the server the configured way, and kills it after `stop_timeout`.
    async fn stop_process(&mut self) -> Result<(), BackendError> {
        if self.status().await? == Status::Stopped {
            return Ok(());
        }
        self.ask_to_stop().await;
        let exit = match tokio::time::timeout(self.config.stop_timeout, self.wait_exit()).await {
            Ok(exit) => exit,
            Err(_) => {
                let timeout = humantime::format_duration(self.config.stop_timeout);
                warn!(service = %self.service, timeout = %timeout, "The process did not stop in time; killing it.");
                self.signal(Signal::KILL);
                self.note(
                    Kind::Warning,
                    format!("the process did not stop within {timeout} (stop_timeout); killed it"),
                );
                self.wait_exit().await
            }
        };
        info!(service = %self.service, status = %exit.status, "Process stopped.");
        self.note(
            Kind::Progress,
            format!("the process exited with {}", exit.status),
        );
        Ok(())
    }
}

/// `: "answer"` for a server's short answer, or nothing when it said nothing.
fn quoted(answer: &str) -> String {
    let answer = answer.trim();
    if answer.is_empty() {
        return String::new();
    }
    let short: String = answer.chars().take(120).collect();
    format!(": \"{short}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_of_a_run_holds_only_what_the_last_start_wrote() {
        let dir = std::env::temp_dir().join(format!("wakegate-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("broken.log");
        std::fs::write(
            &log,
            "--- wakegate starts [\"./server\"] at 2026-01-01T00:00:00Z ---\nfirst attempt\nError: port taken\n\
             --- wakegate starts [\"./server\"] at 2026-01-01T00:01:00Z ---\nsecond attempt\nError: disk full\n",
        )
        .unwrap();
        assert_eq!(tail_of_run(&log, 15), "second attempt\nError: disk full");
        assert_eq!(tail_of_run(&log, 1), "Error: disk full");
        // The run wrote nothing yet: nothing of the one before.
        std::fs::write(&log, "old\n--- wakegate starts [\"x\"] at now ---\n").unwrap();
        assert_eq!(tail_of_run(&log, 15), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
