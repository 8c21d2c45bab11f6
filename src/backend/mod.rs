//! Backends: how a service is started, stopped, asked for its status and found. One file per
//! kind (`exec`, `process`), the AWS ones in `aws/`, containers in `docker/`, their config in
//! `config`; the service actor only sees the [`Backend`] trait.

#[cfg(feature = "aws")]
pub mod aws;
/// Without the `aws` feature: the same names, refusing `ec2` and `ecs` tables with a message
/// that says the feature is missing.
#[cfg(not(feature = "aws"))]
#[path = "aws_missing.rs"]
pub mod aws;
pub mod config;
pub mod docker;
mod exec;
mod family;
mod freeze;
mod pidfd;
mod process;
pub mod rcon;
mod session;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

use crate::event::Kind;
use crate::service::config::Service;
use crate::store::Store;
use config::Backend as BackendConfig;

/// How a sleeping server sleeps; defined beside the states, which it qualifies.
pub use crate::event::SleepMode;
pub use exec::ExecBackend;
pub use process::ProcessBackend;

/// What a backend says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running,
    Stopped,
    /// The server is there but does not run: paused or frozen. It counts as asleep, and a wake
    /// resumes it.
    Sleeping(SleepMode),
    /// The backend has no way to tell (an `exec` backend without a `status` command).
    Unknown,
    /// The server no longer exists and cannot be started (a terminated EC2 instance): why, and
    /// what to do.
    Gone(String),
    /// None of ours runs, but something wakegate did not start holds the server's place (its
    /// local address): why, and what to do. Starting a second copy would fail.
    Occupied(String),
}

/// When the actor reads the backend's status to notice outside changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatePoll {
    /// While awake: a server stopped (or restarted) from a console is noticed.
    pub awake: Option<std::time::Duration>,
    /// While asleep: a server started from a console is noticed and adopted.
    pub asleep: Option<std::time::Duration>,
}

/// How a backend went away on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// "exit code 1", "signal 9 (SIGKILL)", or "exited" when it was not our child.
    pub status: String,
    /// The last lines of its output, oldest first.
    pub log_tail: String,
}

/// Why a backend action failed. Each message says what to look at next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("{action} command exited with {status}{}", tail_suffix(stderr))]
    CommandFailed {
        action: &'static str,
        status: String,
        stderr: String,
    },
    #[error(
        "{action} command did not finish within {}; raise `timeout` or fix the command",
        humantime::format_duration(*timeout)
    )]
    TimedOut {
        action: &'static str,
        timeout: std::time::Duration,
    },
    #[error("cannot run {what}: {reason}; check the command and that it is installed")]
    Spawn { what: String, reason: String },
    #[error("the process exited with {}{}", exit.status, tail_suffix(&exit.log_tail))]
    Exited { exit: Exit },
    #[error("{0}")]
    Other(String),
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; last output:\n{}", tail.trim_end())
    }
}

/// What the server's own health check says (a container's HEALTHCHECK), for
/// `readiness.type = "container"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not healthy yet (starting, or failing its checks): why, in words.
    NotYet(String),
}

/// Something a backend did or met inside a call that went on anyway (a save before a stop, a
/// stop that fell back to a signal, a DNS change); the service actor records each as an event
/// in the state it is in.
#[derive(Debug, Clone)]
pub struct Note {
    pub kind: Kind,
    pub reason: String,
    pub detail: serde_json::Value,
}

/// Where a backend sends its [`Note`]s.
pub type Notes = tokio::sync::mpsc::UnboundedSender<Note>;

/// Start, stop, status, and where the server is now.
#[async_trait]
pub trait Backend: Send {
    /// The `type` of the backend, for logs and the API.
    fn kind(&self) -> &'static str;

    /// Starts the server; returns once it has been asked to start (readiness is probed apart).
    async fn start(&mut self) -> Result<(), BackendError>;

    /// Stops the server and returns once it has stopped.
    async fn stop(&mut self) -> Result<(), BackendError>;

    /// Asks what is really running (used to reconcile at start-up).
    async fn status(&mut self) -> Result<Status, BackendError>;

    /// Where the server listens now, `host:port`; asked after every start.
    async fn address(&mut self) -> Result<String, BackendError>;

    /// Resolves when the server goes away on its own. Backends that cannot notice that never
    /// resolve. Must be cancel-safe: it is raced against other work, while awake and while
    /// asleep paused or frozen (a server killed in its sleep); never while asleep stopped.
    async fn exited(&mut self) -> Exit {
        std::future::pending().await
    }

    /// What the server's own health check says, for a readiness that waits for it. Backends
    /// whose servers have none say so.
    async fn healthy(&mut self) -> Result<Health, BackendError> {
        Err(BackendError::Other(format!(
            "a `{}` backend has no health check of its own; use another readiness type",
            self.kind()
        )))
    }

    /// The file the server's output goes to, for readiness by a log line.
    fn log_file(&self) -> Option<&std::path::Path> {
        None
    }

    /// The receiving end of the backend's notes, taken once by the service actor. Backends
    /// that have nothing to add beyond their calls' results have none.
    fn notes(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Note>> {
        None
    }

    /// How the server sleeps once [`Backend::stop`] returns (a stop may pause or freeze it).
    /// Asked after each stop, and after each wake for the mode the next one will undo (the
    /// wake-time history the ETA is drawn from).
    fn sleep_mode(&self) -> SleepMode {
        SleepMode::Stopped
    }

    /// Stops the server for real, even where [`Backend::stop`] would pause or freeze it: a
    /// restart, the clean-up of a failed wake, the end of the sleep limit. A paused or frozen
    /// server is resumed first, then stopped the usual way.
    async fn stop_for_real(&mut self) -> Result<(), BackendError> {
        self.stop().await
    }

    /// How long the server may sleep paused or frozen before it is stopped for real
    /// (`freeze_for`); none: as long as it sleeps.
    fn sleep_limit(&self) -> Option<std::time::Duration> {
        None
    }

    /// How often the server's real state is read, to notice what was done to it outside
    /// wakegate (a console stop or start). Backends that cannot be changed behind wakegate's
    /// back, or notice it by themselves (a `process` exit), are never polled.
    fn state_poll(&self) -> StatePoll {
        StatePoll::default()
    }

    /// When the server restarts in place (EC2 `restart = "reboot"`): how long after the reboot
    /// it may take to go down, before readiness is waited for. `None`: a restart is a stop and
    /// a start.
    fn reboots(&self) -> Option<std::time::Duration> {
        None
    }

    /// Restarts the server in place; only called when [`Backend::reboots`] says so.
    async fn reboot(&mut self) -> Result<(), BackendError> {
        Err(BackendError::Other(format!(
            "a `{}` backend cannot reboot its server",
            self.kind()
        )))
    }

    /// Called once, after the server was stopped, when the service ends for good (a created
    /// service destroyed or past its deadline): removes what belongs to it beside the server,
    /// such as its DNS record.
    async fn remove(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Called once when wakegate shuts down gracefully; returns whether the server was stopped.
    async fn shutdown(&mut self) -> Result<bool, BackendError> {
        Ok(false)
    }
}

/// Builds the backend a service's config describes.
pub fn build(service: &Service, data_dir: &Path, store: &Arc<Store>) -> Box<dyn Backend> {
    let name = &service.name;
    match &service.backend {
        BackendConfig::Exec(c) => Box::new(ExecBackend::new(name, c.clone(), data_dir)),
        BackendConfig::Process(c) => Box::new(ProcessBackend::new(name, c.clone(), data_dir)),
        BackendConfig::Ec2(c) => Box::new(aws::ec2::Ec2Backend::new(name, c.clone())),
        BackendConfig::Ecs(c) => {
            Box::new(aws::ecs::EcsBackend::new(name, c.clone(), store.clone()))
        }
        BackendConfig::Docker(c) => Box::new(docker::DockerBackend::new(name, c.clone())),
    }
}

/// The last `lines` lines of a file (reading at most its last 16 KiB).
pub(crate) fn tail_of_file(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(16 * 1024);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Describes an exit status in words.
pub(crate) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "an unknown status".to_string(),
    }
}
