//! The real binary across crashes and restarts: killed with -9, stopped with SIGTERM, started
//! again. What it left running must be found again, and nothing may run forever or twice.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use common::*;
use rustix::process::Signal;

/// An echo server behind a TCP listener, stopped after a second without a connection;
/// `extra` is a raw line of its backend (`on_shutdown = "leave"`).
fn config(dir: &Path, listen: SocketAddr, backend: SocketAddr, extra: &str) -> PathBuf {
    gateway(dir)
        .service(
            svc("echo")
                .idle("1s")
                .process(&echo(backend, "0s"), backend)
                .backend_raw(extra)
                .tcp(listen),
        )
        .write(&dir.join("wakegate.toml"))
}

fn backend_pid(dir: &Path) -> u32 {
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("echo.pid")).unwrap()).unwrap();
    record["pid"].as_u64().unwrap() as u32
}

#[test]
fn killed_with_sigkill_while_awake_the_next_wakegate_adopts_and_stops_the_backend() {
    let dir = temp_dir("sigkill");
    let (listen, backend) = (free_addr(), free_addr());
    let file = config(&dir, listen, backend, "");

    let mut first = Wakegate::start(&file);
    let mut client = TcpStream::connect(listen).unwrap();
    assert_eq!(echo_back(&mut client, b"before"), b"before");
    let pid = backend_pid(&dir);
    first.signal(Signal::KILL);
    first.wait_exit();
    assert!(alive(pid), "the backend died with wakegate");

    let mut second = Wakegate::start(&file);
    let adopted = second.wait_for("found the backend running");
    assert!(adopted.contains("was awake"), "{adopted}");
    second.wait_for("backend ready at");
    // It gets a fresh idle countdown and is stopped: no orphan left running.
    second.wait_for("no connection for");
    second.wait_for("backend stopped");
    assert!(!alive(pid), "the adopted backend was not stopped");
    assert_eq!(
        starts_in_log(&dir, "echo"),
        1,
        "the backend was started twice"
    );

    // The next client wakes a new one as usual.
    let mut client = TcpStream::connect(listen).unwrap();
    assert_eq!(echo_back(&mut client, b"after"), b"after");
    assert_eq!(starts_in_log(&dir, "echo"), 2);
    drop(client);
    second.signal(Signal::TERM);
    assert!(second.wait_exit().success());
}

#[test]
fn sigterm_lets_open_connections_finish_within_the_grace_then_stops_the_backend() {
    let dir = temp_dir("sigterm");
    let (listen, backend) = (free_addr(), free_addr());
    let file = config(&dir, listen, backend, "");

    let mut gateway = Wakegate::start(&file);
    let mut client = TcpStream::connect(listen).unwrap();
    assert_eq!(echo_back(&mut client, b"one"), b"one");
    let pid = backend_pid(&dir);

    gateway.signal(Signal::TERM);
    gateway.wait_for("No longer accepting connections.");
    // The open connection still works during the grace period; new clients are refused.
    assert_eq!(echo_back(&mut client, b"two"), b"two");
    assert!(
        TcpStream::connect(listen).is_err(),
        "still accepting after SIGTERM"
    );
    // After the grace period the connection is closed and the backend stopped.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    gateway.wait_for("grace period is over");
    gateway.wait_for("wakegate shut down and stopped the backend");
    assert!(gateway.wait_exit().success());
    assert!(!alive(pid), "the backend outlived wakegate");
}

#[test]
fn on_shutdown_leave_keeps_the_backend_for_the_next_wakegate() {
    let dir = temp_dir("leave");
    let (listen, backend) = (free_addr(), free_addr());
    let file = config(&dir, listen, backend, "on_shutdown = \"leave\"");

    let mut first = Wakegate::start(&file);
    let mut client = TcpStream::connect(listen).unwrap();
    assert_eq!(echo_back(&mut client, b"hi"), b"hi");
    drop(client);
    let pid = backend_pid(&dir);
    first.signal(Signal::TERM);
    assert!(first.wait_exit().success());
    assert!(alive(pid), "on_shutdown = \"leave\" stopped the backend");

    let mut second = Wakegate::start(&file);
    second.wait_for("found the backend running");
    let mut client = TcpStream::connect(listen).unwrap();
    assert_eq!(echo_back(&mut client, b"again"), b"again");
    assert_eq!(backend_pid(&dir), pid, "a second backend was started");
    drop(client);
    second.wait_for("backend stopped");
    assert!(!alive(pid));
    assert_eq!(starts_in_log(&dir, "echo"), 1);
}
