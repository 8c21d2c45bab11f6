//! `process` backend: wakegate runs the server as its own child, like lazymc does.
//!
//! Output goes to `<data_dir>/<service>.log`. A pid file (`<service>.pid`, holding the pid, its
//! kernel start time and command line) lets a wakegate that was killed with -9 find the server
//! again; the start time and command line must still match, so a reused pid is never adopted.
//! An exit is noticed at once: `wait()` on our own child, a pidfd for an adopted one. The child
//! leads its own process group, and stop signals go to the whole group.
//!
//! A Minecraft server is best stopped by its own `stop` command, on stdin or over RCON
//! (which also reaches an adopted server), after an optional `save-all`. When that way fails
//! the server gets SIGTERM, and SIGKILL after `stop_timeout`; each step is a note the service
//! records as an event.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use rustix::process::{Pid, Signal, kill_process_group};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tracing::{info, warn};

use super::config::{self, OnShutdown, Process, StopMethod};
use super::pidfd::ExitWatch;
use super::rcon::{Rcon, RconError};
use super::{Backend, BackendError, Exit, Note, Notes, Status, describe_exit, tail_of_file};
use crate::event::Kind;

const LOG_TAIL_LINES: usize = 15;

pub struct ProcessBackend {
    service: String,
    config: Process,
    log_path: PathBuf,
    pid_path: PathBuf,
    running: Option<Running>,
    notes: Notes,
    notes_rx: Option<tokio::sync::mpsc::UnboundedReceiver<Note>>,
}

enum Running {
    /// Started by this wakegate.
    Child {
        child: Child,
        stdin: Option<ChildStdin>,
        pid: Pid,
    },
    /// Started by an earlier wakegate and found again through the pid file.
    Adopted { pid: Pid, exit: ExitWatch },
}

impl Running {
    fn pid(&self) -> Pid {
        match self {
            Running::Child { pid, .. } | Running::Adopted { pid, .. } => *pid,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    start_time: u64,
    command: Vec<String>,
}

impl ProcessBackend {
    pub fn new(service: &str, config: Process, data_dir: &Path) -> ProcessBackend {
        let (notes, notes_rx) = tokio::sync::mpsc::unbounded_channel();
        ProcessBackend {
            service: service.to_string(),
            config,
            log_path: data_dir.join(format!("{service}.log")),
            pid_path: data_dir.join(format!("{service}.pid")),
            running: None,
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
            "--- wakegate starts {:?} at {} ---",
            self.config.command,
            crate::event::format_time(std::time::SystemTime::now())
        );
        let stderr = log.try_clone().map_err(spawn_error)?;
        let mut cmd = Command::new(program);
        cmd.args(&self.config.command[1..])
            .envs(self.config.env.iter().map(|(k, v)| (k, v.expose())))
            .stdin(match self.config.stop {
                StopMethod::Stdin(_) => Stdio::piped(),
                StopMethod::Signal(_) | StopMethod::Rcon(_) => Stdio::null(),
            })
            .stdout(log)
            .stderr(stderr)
            // Its own process group: a Ctrl-C on wakegate's terminal must not reach the server;
            // wakegate decides how it stops.
            .process_group(0);
        if let Some(cwd) = &self.config.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let pid = child
            .id()
            .and_then(|id| Pid::from_raw(id as i32))
            .ok_or_else(|| BackendError::Other("the process exited before it had a pid".into()))?;
        let record = PidFile {
            pid: pid.as_raw_nonzero().get(),
            start_time: start_time(pid).unwrap_or(0),
            command: self.config.command.clone(),
        };
        if let Err(e) = std::fs::write(&self.pid_path, serde_json::to_vec(&record).unwrap()) {
            warn!(service = %self.service, error = %e, "Cannot write the pid file; a wakegate killed with -9 will not find this process again.");
        }
        info!(service = %self.service, pid = record.pid, log = %self.log_path.display(), "Process started.");
        self.running = Some(Running::Child {
            stdin: child.stdin.take(),
            child,
            pid,
        });
        Ok(())
    }

    /// Looks for a process an earlier wakegate started and left behind.
    fn adopt(&mut self) -> Option<Pid> {
        let bytes = std::fs::read(&self.pid_path).ok()?;
        let record: PidFile = serde_json::from_slice(&bytes).ok()?;
        let pid = Pid::from_raw(record.pid)?;
        // The pid, its start time and its command line must all match what was recorded: a
        // reused pid is never mistaken for our server. A changed `command` in the config does
        // not matter: that process is ours and must be watched and stopped all the same.
        let same = start_time(pid) == Some(record.start_time)
            && command_line(pid).as_ref() == Some(&record.command);
        if !same {
            // The process is gone, or the pid now belongs to something else.
            let _ = std::fs::remove_file(&self.pid_path);
            return None;
        }
        let exit = ExitWatch::open(pid).ok()?;
        info!(service = %self.service, pid = record.pid, "Found the process a previous wakegate started.");
        self.running = Some(Running::Adopted { pid, exit });
        Some(pid)
    }

    /// Waits for the running process to end and forgets it.
    async fn wait_exit(&mut self) -> Exit {
        let status = match &mut self.running {
            None => "not running".to_string(),
            Some(Running::Child { child, .. }) => match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("an unknown status ({e})"),
            },
            Some(Running::Adopted { exit, .. }) => {
                // The pidfd turns readable when the process ends; as it is not our child, its
                // exit status belongs to init.
                exit.exited().await;
                "an exit status unknown to this wakegate (it was adopted)".to_string()
            }
        };
        self.running = None;
        let _ = std::fs::remove_file(&self.pid_path);
        Exit {
            status,
            log_tail: tail_of_file(&self.log_path, LOG_TAIL_LINES),
        }
    }

    /// Asks the process to stop the configured way; falls back to SIGTERM where that way is
    /// not open (an adopted process has no stdin of ours).
    async fn ask_to_stop(&mut self) {
        let Some(running) = &mut self.running else {
            return;
        };
        let pid = running.pid();
        if let (
            StopMethod::Stdin(line),
            Running::Child {
                stdin: Some(stdin), ..
            },
        ) = (&self.config.stop, &mut *running)
        {
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
        // The whole group: a wrapper script that did not `exec` the server must not leave it.
        let _ = kill_process_group(pid, signal);
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
        if self.status().await? == Status::Running {
            return Ok(());
        }
        self.spawn()
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        if self.status().await? == Status::Stopped {
            return Ok(());
        }
        self.ask_to_stop().await;
        let exit = match tokio::time::timeout(self.config.stop_timeout, self.wait_exit()).await {
            Ok(exit) => exit,
            Err(_) => {
                let pid = self.running.as_ref().map(Running::pid);
                let timeout = humantime::format_duration(self.config.stop_timeout);
                warn!(service = %self.service, timeout = %timeout, "The process did not stop in time; killing it.");
                if let Some(pid) = pid {
                    let _ = kill_process_group(pid, Signal::KILL);
                }
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

    async fn status(&mut self) -> Result<Status, BackendError> {
        let alive = match &mut self.running {
            Some(Running::Child { child, .. }) => matches!(child.try_wait(), Ok(None)),
            Some(Running::Adopted { pid, .. }) => rustix::process::test_kill_process(*pid).is_ok(),
            None => self.adopt().is_some(),
        };
        if !alive && self.running.is_some() {
            self.wait_exit().await;
        }
        Ok(if alive {
            Status::Running
        } else {
            Status::Stopped
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

    async fn shutdown(&mut self) -> Result<bool, BackendError> {
        match self.config.on_shutdown {
            OnShutdown::Stop => {
                let was_running = self.running.is_some();
                self.stop().await?;
                Ok(was_running)
            }
            OnShutdown::Leave => {
                // Dropping our handle neither kills nor waits: the process keeps running and the
                // pid file stays for the next wakegate to adopt.
                if let Some(running) = self.running.take() {
                    info!(service = %self.service, pid = running.pid().as_raw_nonzero().get(), "Leaving the process running (on_shutdown = \"leave\").");
                }
                Ok(false)
            }
        }
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

/// The kernel's start time of a process (field 22 of /proc/PID/stat), to tell a reused pid.
fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn command_line(pid: Pid) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{}/cmdline", pid.as_raw_nonzero())).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
    )
}
