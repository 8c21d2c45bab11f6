//! Waiting for a process that is not our child: a pidfd turns readable when it exits.
//! One of the two places in wakegate that need `unsafe` (with `session`), for tokio's fd
//! registration.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;

use rustix::process::{Pid, PidfdFlags, pidfd_open};
use tokio::io::unix::AsyncFd;

/// A watch on a process's exit.
pub struct ExitWatch(AsyncFd<OwnedFd>);

impl ExitWatch {
    pub fn open(pid: Pid) -> std::io::Result<ExitWatch> {
        let fd = pidfd_open(pid, PidfdFlags::NONBLOCK)?;
        // SAFETY: the descriptor is a fresh pidfd owned by this value alone; nothing else can
        // close or reuse it while tokio has it registered, and it is closed only on drop,
        // after tokio deregisters it.
        let watch = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
        Ok(ExitWatch(watch))
    }

    /// Resolves once the process has exited. Cancel-safe.
    pub async fn exited(&self) {
        let _ = self.0.readable().await;
    }
}
