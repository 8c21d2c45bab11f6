//! The agent's commands (`count_command`, `pre_stop`, `shutdown_command`): each run by `sh -c`
//! in its own process group, its output read (bounded), and the whole group killed at its
//! timeout, so a command that hangs never blocks the agent.

use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

/// The most of a command's output kept (a count is a few bytes; a save prints a few lines).
const MAX_OUTPUT: u64 = 64 * 1024;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// It exited 0.
    pub ok: bool,
    /// How it ended, in words: "exit code 0", "killed by signal 9", "killed after the timeout (5s)".
    pub exit: String,
    pub took: Duration,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl Ran {
    /// The last `n` lines of its output, stderr after stdout.
    pub fn tail(&self, n: usize) -> String {
        let all = format!("{}{}", self.stdout, self.stderr);
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Runs `command` with `sh -c`, waiting at most `timeout`; an error only when it cannot start.
pub async fn run(command: &str, timeout: Duration) -> Result<Ran, String> {
    let started = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: the timeout ends it and what it started in the foreground.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `sh -c`: {e}"))?;
    let group = child.id().and_then(|id| Pid::from_raw(id as i32));
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(out) = out.as_mut() {
                let _ = out.take(MAX_OUTPUT).read_to_end(&mut stdout).await;
            }
        };
        let read_err = async {
            if let Some(err) = err.as_mut() {
                let _ = err.take(MAX_OUTPUT).read_to_end(&mut stderr).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        (status, stdout, stderr)
    };
    match tokio::time::timeout(timeout, finished).await {
        Ok((status, stdout, stderr)) => {
            let status = status.map_err(|e| format!("cannot wait for the command: {e}"))?;
            Ok(Ran {
                ok: status.success(),
                exit: describe(status),
                took: started.elapsed(),
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        }
        Err(_) => {
            if let Some(group) = group {
                let _ = kill_process_group(group, Signal::KILL);
            }
            Ok(Ran {
                ok: false,
                exit: format!(
                    "killed after the timeout ({})",
                    humantime::format_duration(timeout)
                ),
                took: started.elapsed(),
                stdout: String::new(),
                stderr: String::new(),
            })
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_and_exit_are_kept() {
        let ran = run("echo 12; echo saved >&2; exit 3", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(!ran.ok);
        assert_eq!(ran.exit, "exit code 3");
        assert_eq!(ran.stdout, "12\n");
        assert_eq!(ran.tail(5), "12\nsaved");
        assert_eq!(ran.tail(1), "saved");
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_with_its_children() {
        let ran = run(
            "sleep 30 & sleep 30; echo never",
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(!ran.ok);
        assert_eq!(ran.exit, "killed after the timeout (200ms)");
        assert!(ran.took < Duration::from_secs(10));
    }
}
