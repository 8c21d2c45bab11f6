//! The processes of one `process` service, found again whatever started them.
//!
//! Every process wakegate starts carries a mark in its environment,
//! `WAKEGATE_INSTANCE=<service>@<data dir>`. The kernel keeps a process's environment with
//! it, and every program it starts inherits it: through a `start.sh` that `exec`s java or one
//! that does not, `sh -c`, `/usr/bin/env`, a version manager's shim, a server that forks
//! workers or leaves its own process group. So a wakegate killed with -9 finds its servers
//! again by reading `/proc/*/environ`, even when the pid file could not be written (a full
//! disk), and a reused pid, whose process carries no such mark, is never taken for one.
//!
//! The pid file names the leader (the process wakegate started, or its `exec` successor) by
//! its pid and the kernel's start time of that pid, which survives `exec` and is never the
//! same for a reused pid; it is the quick way back, the environment the sure one.

use std::path::Path;

use rustix::process::{Pid, Signal, getpgid, kill_process, kill_process_group};

use super::pidfd::ExitWatch;

/// The name of the environment variable that marks a service's processes.
pub const MARK: &str = "WAKEGATE_INSTANCE";

/// The processes that carry one service's mark.
#[derive(Debug, Clone)]
pub struct Family {
    /// `<service>@<data dir>`: a gateway's data dir is its own, so two gateways on one host
    /// never take each other's servers, even for services of the same name.
    value: String,
}

impl Family {
    pub fn new(service: &str, data_dir: &Path) -> Family {
        let dir = std::fs::canonicalize(data_dir)
            .or_else(|_| std::path::absolute(data_dir))
            .unwrap_or_else(|_| data_dir.to_path_buf());
        Family {
            value: format!("{service}@{}", dir.display()),
        }
    }

    /// The variable to set on a process wakegate starts.
    pub fn env(&self) -> (&'static str, &str) {
        (MARK, &self.value)
    }

    /// Every live process that carries the mark, oldest first. A zombie has no environment
    /// left and is not counted: it runs nothing.
    pub fn members(&self) -> Vec<Pid> {
        let wanted = format!("{MARK}={}", self.value);
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let me = std::process::id();
        let mut found: Vec<(u64, Pid)> = entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|raw| *raw as u32 != me)
            .filter_map(Pid::from_raw)
            .filter(|pid| carries(*pid, &wanted))
            .filter_map(|pid| Some((start_time(pid)?, pid)))
            .collect();
        found.sort_unstable_by_key(|(started, pid)| (*started, pid.as_raw_nonzero()));
        found.into_iter().map(|(_, pid)| pid).collect()
    }

    /// Which of the members leads: the one that leads its process group (what wakegate
    /// started, or what it `exec`ed), else the oldest.
    pub fn leader(&self) -> Option<Pid> {
        let members = self.members();
        members
            .iter()
            .copied()
            .find(|pid| getpgid(Some(*pid)).ok() == Some(*pid))
            .or_else(|| members.first().copied())
    }

    /// Sends `signal` to the leader's process group and to every member outside it (a
    /// server that left the group); each process gets it once.
    pub fn signal(&self, leader: Pid, signal: Signal) {
        let _ = kill_process_group(leader, signal);
        for pid in self.members() {
            if getpgid(Some(pid)).ok() != Some(leader) {
                let _ = kill_process(pid, signal);
            }
        }
    }

    /// Resolves once no process carries the mark. It waits on each one's exit (a pidfd),
    /// never polls; cancel-safe, as it looks afresh each time it is called.
    pub async fn all_exited(&self) {
        loop {
            let Some(pid) = self.members().into_iter().next() else {
                return;
            };
            match ExitWatch::open(pid) {
                Ok(watch) => watch.exited().await,
                // It ended between the scan and the open.
                Err(_) => continue,
            }
        }
    }
}

/// Whether the process's environment holds `wanted` (`NAME=value`) as one entry.
fn carries(pid: Pid, wanted: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{}/environ", pid.as_raw_nonzero())) else {
        return false;
    };
    environ
        .split(|b| *b == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// The kernel's start time of a process (field 22 of /proc/PID/stat, in clock ticks since
/// boot): with the pid, an identity that `exec` keeps and a reused pid never has.
pub fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::disallowed_methods)] // a std child process stands in for a server

    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    /// A family named `name`, its pid files in a folder of this test process.
    pub(in crate::backend) fn family(name: &str) -> Family {
        let dir = std::env::temp_dir().join(format!("wakegate-family-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Family::new(name, &dir)
    }

    /// `sh -c` that starts a child of its own and waits: two processes carry the mark once it
    /// has said so.
    pub(in crate::backend) fn spawn_wrapped(family: &Family) -> std::process::Child {
        let (key, value) = family.env();
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & echo forked; wait"])
            .env(key, value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "forked\n");
        child
    }

    #[tokio::test]
    async fn finds_a_wrapper_and_what_it_started_and_signals_them_all() {
        let family = family("wrapped");
        assert!(family.members().is_empty());
        let mut child = spawn_wrapped(&family);
        let pid = Pid::from_raw(child.id() as i32).unwrap();
        assert_eq!(family.members().len(), 2, "the shell and its sleep");
        assert_eq!(family.leader(), Some(pid));
        // Another service's family, and one of the same name in another data dir, are not it.
        assert!(
            super::Family::new("other", Path::new("/"))
                .members()
                .is_empty()
        );
        assert!(
            super::Family::new("wrapped", Path::new("/"))
                .members()
                .is_empty()
        );

        family.signal(pid, Signal::TERM);
        let _ = child.wait();
        tokio::time::timeout(std::time::Duration::from_secs(10), family.all_exited())
            .await
            .expect("a member outlived the signal");
        assert!(family.members().is_empty());
    }

    #[test]
    fn a_start_time_tells_processes_apart() {
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        let mine = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(mine));
        let init = start_time(Pid::from_raw(1).unwrap()).unwrap();
        assert!(init <= mine);
    }
}
