//! A server started in a session of its own (`setsid`): with `pidfd`, the one other place that
//! needs `unsafe`, as the call runs in the child between fork and exec.
//!
//! Why a session and not only a process group: when wakegate ends without stopping its server
//! (`on_shutdown = "leave"`, a crash, `kill -9`), the server's process group is left with no
//! parent in the session, and the kernel then sends the group SIGHUP and SIGCONT if one of its
//! processes is stopped (POSIX's rule for orphaned process groups, made for shells' job
//! control): a frozen server would be thawed, or ended by the hang-up. A group that never
//! shared wakegate's session is not touched by that rule. As with a group of its own, a Ctrl-C
//! on wakegate's terminal does not reach it, and signals sent to its group reach all of it.
#![allow(unsafe_code)]

/// Makes `command` start its program as the leader of a new session and process group.
pub fn own_session(command: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child just before exec. setsid(2) is
    // async-signal-safe, allocates nothing and touches no memory shared with the parent; the
    // child is not a group leader yet (no `process_group` is set), so the call can succeed.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
}
