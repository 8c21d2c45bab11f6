//! Freezing a `process` server (`sleep_mode = "freeze"`): SIGSTOP to its process group and to
//! any of its family outside it when it goes idle, SIGCONT when it wakes. A frozen server keeps
//! its memory and its listening socket and uses no CPU; it resumes in milliseconds.
//!
//! Whether it is frozen is read from the kernel (state `T` in `/proc/PID/stat`), never
//! remembered only by wakegate: a wakegate started again, after a `kill -9` too, finds the
//! server frozen and keeps it so. SIGSTOP cannot be caught or ignored, but it takes effect
//! when the kernel next runs each thread (at once, unless one waits on a disk in state `D`):
//! [`freeze`] returns once every thread of every process shows it, so "frozen" in the API
//! means stopped.

use std::time::Duration;

use rustix::process::{Pid, Signal};

use super::family::Family;

/// How long the processes may take to show that they stopped after SIGSTOP.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// The processes that make up the server: its leader, if it still runs, and its family.
fn server(family: &Family, leader: Option<Pid>) -> Vec<Pid> {
    let mut pids = family.members();
    if let Some(leader) = leader
        && !pids.contains(&leader)
        && state(leader).is_some_and(|s| s != 'Z')
    {
        pids.push(leader);
    }
    pids
}

/// Whether every thread of every process of the server is stopped by a signal (and there is
/// one).
pub fn is_frozen(family: &Family, leader: Option<Pid>) -> bool {
    let pids = server(family, leader);
    !pids.is_empty() && pids.iter().all(|pid| running_threads(*pid) == Some(0))
}

/// Sends SIGSTOP to the server and returns once every one of its processes has stopped.
pub async fn freeze(family: &Family, leader: Pid) -> Result<(), String> {
    family.signal(leader, Signal::STOP);
    // The kernel tells no one when a process it signalled has stopped (a pidfd turns readable
    // on exit only), so its state is read until it shows, with a short pause that grows.
    let deadline = tokio::time::Instant::now() + FREEZE_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        let running: Vec<String> = server(family, Some(leader))
            .into_iter()
            .filter_map(|pid| match (running_threads(pid)?, state(pid)?) {
                (0, _) => None,
                (_, s) => Some(format!("{} (state {s})", pid.as_raw_nonzero())),
            })
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "SIGSTOP was sent, but after {} these processes still run: {}; a process in \
                 state D waits on a disk or a network file system and stops once that is done",
                humantime::format_duration(FREEZE_TIMEOUT),
                running.join(", ")
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sends SIGCONT to the server: it runs on from where it stopped.
pub fn thaw(family: &Family, leader: Pid) {
    family.signal(leader, Signal::CONT);
}

/// The state letter of a process (field 3 of /proc/PID/stat): `R`, `S`, `D`, `T` (stopped by a
/// signal), `Z`, …; none when it does not exist.
pub fn state(pid: Pid) -> Option<char> {
    state_in(&format!("/proc/{}/stat", pid.as_raw_nonzero()))
}

/// How many threads of a process are not stopped by a signal; none when it does not exist.
fn running_threads(pid: Pid) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", pid.as_raw_nonzero())).ok()?;
    let states: Vec<char> = tasks
        .filter_map(|task| state_in(task.ok()?.path().join("stat").to_str()?))
        .collect();
    if states.is_empty() {
        return None;
    }
    Some(states.iter().filter(|s| **s != 'T').count())
}

/// The state letter in a `stat` file of /proc.
fn state_in(path: &str) -> Option<char> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the state follows it.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // a std child process stands in for a server

    use super::*;
    use crate::backend::family::tests::{family, spawn_wrapped};
    use std::process::Command;

    #[tokio::test]
    async fn a_frozen_server_shows_state_t_in_every_process_until_it_is_thawed() {
        let family = family("frozen");
        // A shell in a group of its own with a `sleep` it started: the group's leader is the shell.
        let mut child = spawn_wrapped(&family);
        let leader = Pid::from_raw(child.id() as i32).unwrap();
        assert_eq!(family.members().len(), 2);
        assert!(!is_frozen(&family, Some(leader)));

        freeze(&family, leader).await.unwrap();
        for pid in family.members() {
            assert_eq!(state(pid), Some('T'), "{pid:?}");
        }
        assert!(is_frozen(&family, Some(leader)));

        thaw(&family, leader);
        // SIGCONT takes effect at once: no process is left stopped.
        for pid in family.members() {
            assert_ne!(state(pid), Some('T'), "{pid:?}");
        }
        assert!(!is_frozen(&family, Some(leader)));

        // A frozen server still dies of SIGKILL (nothing waits for it to be thawed).
        freeze(&family, leader).await.unwrap();
        family.signal(leader, Signal::KILL);
        let _ = child.wait();
        tokio::time::timeout(Duration::from_secs(10), family.all_exited())
            .await
            .expect("a frozen process outlived SIGKILL");
        assert!(
            !is_frozen(&family, Some(leader)),
            "nothing runs: not frozen"
        );
    }

    #[test]
    fn the_state_of_a_process_is_read_and_is_none_once_it_is_gone() {
        let me = Pid::from_raw(std::process::id() as i32).unwrap();
        // The main thread runs or sleeps while a test thread reads its state.
        assert!(
            state(me).is_some_and(|s| s == 'R' || s == 'S'),
            "{:?}",
            state(me)
        );
        let mut gone = Command::new("true").spawn().unwrap();
        let pid = Pid::from_raw(gone.id() as i32).unwrap();
        gone.wait().unwrap();
        assert_eq!(state(pid), None);
    }
}
