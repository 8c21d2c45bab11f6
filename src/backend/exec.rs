//! `exec` backend: the user's own `start`, `stop` and optional `status` commands, run by
//! `sh -c` with a timeout. Their output goes to files in `<data_dir>/hooks/`, so a hook that
//! leaves a server running in the background never holds a pipe of ours open.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::process::Command;

use super::config::Exec;
use super::{Backend, BackendError, Status, describe_exit, tail_of_file};

pub struct ExecBackend {
    service: String,
    config: Exec,
    hooks_dir: PathBuf,
}

impl ExecBackend {
    pub fn new(service: &str, config: Exec, data_dir: &Path) -> ExecBackend {
        ExecBackend {
            service: service.to_string(),
            config,
            hooks_dir: data_dir.join("hooks"),
        }
    }

    /// Runs one hook; `Ok(true)` when it exited 0, `Ok(false)` for another exit code (only
    /// `status` asks for that), an error for anything else.
    async fn run(&self, action: &'static str, command: &str) -> Result<bool, BackendError> {
        let spawn_error = |e: std::io::Error| BackendError::Spawn {
            what: format!("the {action} command"),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&self.hooks_dir).map_err(spawn_error)?;
        let out_path = self
            .hooks_dir
            .join(format!("{}-{action}.out", self.service));
        let err_path = self
            .hooks_dir
            .join(format!("{}-{action}.err", self.service));
        let stdout = std::fs::File::create(&out_path).map_err(spawn_error)?;
        let stderr = std::fs::File::create(&err_path).map_err(spawn_error)?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .env("WAKEGATE_SERVICE", &self.service)
            .env("WAKEGATE_ACTION", action)
            .envs(self.config.env.iter().map(|(k, v)| (k, v.expose())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group, so a timeout can end the hook and everything it started
            // in the foreground, and a Ctrl-C on wakegate's terminal does not reach it.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let pgid = child.id().and_then(|id| Pid::from_raw(id as i32));
        let status = match tokio::time::timeout(self.config.timeout, child.wait()).await {
            Ok(status) => status.map_err(spawn_error)?,
            Err(_) => {
                if let Some(pgid) = pgid {
                    let _ = kill_process_group(pgid, Signal::KILL);
                }
                let _ = child.wait().await;
                return Err(BackendError::TimedOut {
                    action,
                    timeout: self.config.timeout,
                });
            }
        };
        if status.success() {
            Ok(true)
        } else if action == "status" && status.code().is_some_and(|c| c != 126 && c != 127) {
            // 126 and 127 are the shell saying the command cannot run: that is no answer.
            Ok(false)
        } else {
            Err(BackendError::CommandFailed {
                action,
                status: describe_exit(status),
                stderr: tail_of_file(&err_path, 10),
            })
        }
    }
}

#[async_trait]
impl Backend for ExecBackend {
    fn kind(&self) -> &'static str {
        "exec"
    }

    async fn start(&mut self) -> Result<(), BackendError> {
        self.run("start", &self.config.start).await.map(drop)
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        self.run("stop", &self.config.stop).await.map(drop)
    }

    async fn status(&mut self) -> Result<Status, BackendError> {
        match &self.config.status {
            None => Ok(Status::Unknown),
            Some(command) => Ok(if self.run("status", command).await? {
                Status::Running
            } else {
                Status::Stopped
            }),
        }
    }

    async fn address(&mut self) -> Result<String, BackendError> {
        Ok(self.config.address.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backend(dir: &Path, start: &str, timeout: Duration) -> ExecBackend {
        ExecBackend::new(
            "hooked",
            Exec {
                start: start.into(),
                stop: "true".into(),
                status: Some("test \"$WAKEGATE_ACTION\" = status && exit 3".into()),
                timeout,
                address: "127.0.0.1:1".into(),
                env: vec![],
            },
            dir,
        )
    }

    #[tokio::test]
    async fn failure_carries_exit_code_and_stderr() {
        let dir = std::env::temp_dir().join(format!("wakegate-exec-{}", std::process::id()));
        let mut b = backend(
            &dir,
            "echo \"starting $WAKEGATE_SERVICE\" >&2; echo 'disk full' >&2; exit 4",
            Duration::from_secs(10),
        );
        let err = b.start().await.unwrap_err().to_string();
        assert!(err.contains("exit code 4"), "{err}");
        assert!(err.contains("starting hooked\ndisk full"), "{err}");
        assert_eq!(b.status().await.unwrap(), Status::Stopped);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_hook_that_hangs_is_killed_at_its_timeout() {
        let dir = std::env::temp_dir().join(format!("wakegate-exec-t-{}", std::process::id()));
        let mut b = backend(&dir, "sleep 30", Duration::from_millis(200));
        let err = b.start().await.unwrap_err();
        assert!(
            matches!(
                err,
                BackendError::TimedOut {
                    action: "start",
                    ..
                }
            ),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
