//! wakegate under systemd: the units in deploy/ pass `systemd-analyze verify`, and the real
//! binary speaks the notification protocol of a `Type=notify` unit (sd_notify(3)) to a socket
//! the test holds where systemd would: READY once clients can be taken, the watchdog's
//! keep-alive at the interval systemd asks for, STOPPING when SIGTERM arrives.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rustix::process::Signal;

/// A unit of deploy/ written into `dir`, its binary the one built for these tests (verify
/// checks that ExecStart's program exists and runs).
fn unit(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy")
            .join(name),
    )
    .unwrap()
    .replace("/usr/local/bin/wakegate", WAKEGATE);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = temp_dir("systemd-verify");
    for name in ["wakegate.service", "wakegate-agent.service"] {
        let path = unit(&dir, name);
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze is missing: run scripts/test, which installs systemd");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name} fails verify:\n{said}");
        // Warnings about the unit itself fail too; what verify says about the machine it runs on
        // (no systemd running here, the user the unit names) is not the unit's.
        let about_unit: Vec<&str> = said
            .lines()
            .filter(|line| line.contains(name) && !line.contains("Failed to resolve"))
            .collect();
        assert!(about_unit.is_empty(), "{name}: {about_unit:#?}");
    }
    let service = std::fs::read_to_string(dir.join("wakegate.service")).unwrap();
    for hardening in [
        "Type=notify",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=wakegate",
        "WatchdogSec=",
        "ExecReload=",
    ] {
        assert!(service.contains(hardening), "the unit lost {hardening}");
    }
}

/// Notifications received on the socket, one datagram each, until one holds `want` (they
/// are returned, the last holding it).
fn until(socket: &UnixDatagram, want: &str) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {want:?} from wakegate; got {seen:?}");
        socket.set_read_timeout(Some(left)).unwrap();
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {want:?} from wakegate ({e}); got {seen:?}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = message.lines().any(|line| line == want);
        seen.push(message);
        if done {
            return seen;
        }
    }
}

#[test]
fn ready_once_clients_can_be_taken_a_kept_watchdog_and_stopping_on_sigterm() {
    let dir = temp_dir("systemd-notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let listen = free_addr();
    let backend = free_addr();
    let config = gateway(&dir)
        .service(
            svc("echo")
                .process(&echo(backend, "0s"), backend)
                .tcp(listen),
        )
        .write(&dir.join("wakegate.toml"));
    // As systemd sets them for a unit with WatchdogSec=1s (WATCHDOG_PID names the main
    // process; left out, the variable is meant for whoever reads it).
    let mut wakegate = Wakegate::start_with(&config, |command| {
        command
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", "1000000")
    });

    let first = until(&socket, "READY=1");
    assert_eq!(first.len(), 1, "something came before READY: {first:?}");
    assert!(
        first[0].contains("STATUS=Serving 1 service(s)."),
        "{first:?}"
    );
    // Ready means taken: the listener and the API accept at once.
    for addr in [listen, wakegate.api()] {
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr} refused after READY: {e}"));
    }

    // The keep-alive comes again and again, at half the interval.
    let began = Instant::now();
    until(&socket, "WATCHDOG=1");
    until(&socket, "WATCHDOG=1");
    until(&socket, "WATCHDOG=1");
    assert!(
        began.elapsed() < Duration::from_millis(2500),
        "three keep-alives took {:?} for a 1 s watchdog",
        began.elapsed()
    );

    // A reload (SIGHUP, what `systemctl reload` sends) is framed by RELOADING=1 and READY=1,
    // RELOADING with the monotonic time `Type=notify-reload` asks for.
    wakegate.signal(Signal::HUP);
    let reloading = until(&socket, "RELOADING=1");
    assert!(
        reloading.last().unwrap().contains("MONOTONIC_USEC="),
        "{reloading:?}"
    );
    until(&socket, "READY=1");

    wakegate.signal(Signal::TERM);
    let stopping = until(&socket, "STOPPING=1");
    assert!(
        stopping.iter().all(|m| !m.contains("READY=1")),
        "{stopping:?}"
    );
    assert!(wakegate.wait_exit_within(DEADLINE).success());
}

#[test]
fn outside_systemd_nothing_is_sent_and_nothing_fails() {
    let dir = temp_dir("systemd-none");
    let backend: SocketAddr = free_addr();
    let config = gateway(&dir)
        .service(
            svc("echo")
                .process(&echo(backend, "0s"), backend)
                .tcp(free_addr()),
        )
        .write(&dir.join("wakegate.toml"));
    // A watchdog asked of another process (WATCHDOG_PID not ours) is not ours to feed.
    let mut wakegate = Wakegate::start_with(&config, |command| {
        command
            .env_remove("NOTIFY_SOCKET")
            .env("WATCHDOG_USEC", "1000")
            .env("WATCHDOG_PID", "1")
    });
    let status = wakegate.stop(DEADLINE);
    let output = wakegate.output();
    assert!(status.success(), "{status}: {output}");
    assert!(!output.contains("Cannot notify systemd"), "{output}");
    assert!(!output.contains("watchdog enabled"), "{output}");
}
