//! Servers started the way users start them: a `start.sh` that `exec`s the server or runs it as
//! a child, `/usr/bin/env`, a version manager's shim. Whatever the wrapper did, a wakegate
//! killed with -9 and started again finds the server, runs one copy only, stops it when idle,
//! and leaves nothing behind after a graceful stop.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rustix::process::Signal;

/// How the server is started.
#[derive(Clone, Copy, Debug)]
enum Wrapper {
    /// `start.sh` ending in `exec <server>` (the usual Minecraft way).
    ExecScript,
    /// `start.sh` that runs the server as its child and waits for it.
    Script,
    /// `/usr/bin/env NAME=value <server>`.
    Env,
    /// A version manager's shim: a script that `exec`s the manager, which picks a version
    /// and runs that version's launcher as a child, which `exec`s the server.
    Shim,
}

/// Writes an executable script.
fn script(path: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

impl Wrapper {
    /// The `command` of the backend, with its scripts written under `root`.
    fn command(self, root: &Path, backend: SocketAddr) -> Vec<String> {
        let server = format!("{WAKEGATE} demo-backend --echo --listen {backend}");
        let path = |p: PathBuf| p.display().to_string();
        match self {
            Wrapper::ExecScript => vec![path(script(
                &root.join("start.sh"),
                &format!("cd \"$(dirname \"$0\")\"\nexec {server}"),
            ))],
            Wrapper::Script => vec![path(script(
                &root.join("start.sh"),
                &format!("{server}\necho \"server exited with $?\""),
            ))],
            Wrapper::Env => ["/usr/bin/env", "SERVER_MODE=survival", WAKEGATE]
                .into_iter()
                .map(String::from)
                .chain(
                    ["demo-backend", "--echo", "--listen", &backend.to_string()].map(String::from),
                )
                .collect(),
            Wrapper::Shim => {
                script(
                    &root.join("versions/1.0/bin/echo-server"),
                    &format!("exec {WAKEGATE} demo-backend --echo \"$@\""),
                );
                script(
                    &root.join("libexec/vm"),
                    "shift\nprogram=\"$1\"; shift\n\"$(dirname \"$0\")/../versions/1.0/bin/$program\" \"$@\"\nexit $?",
                );
                let shim = script(
                    &root.join("shims/echo-server"),
                    "exec \"$(dirname \"$0\")/../libexec/vm\" exec \"$(basename \"$0\")\" \"$@\"",
                );
                vec![path(shim), "--listen".into(), backend.to_string()]
            }
        }
    }
}

/// The echo servers listening on `backend` (not the wrappers that pass them the address).
fn servers(backend: SocketAddr) -> Vec<u32> {
    let mut found = echo_servers(backend);
    found.extend(running_with(&format!("server.py --listen {backend}")));
    found
}

/// An echo server that ignores SIGTERM: `python3 server.py --listen HOST:PORT`.
const STUBBORN_ECHO: &str = r#"
import signal, socket, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
host, port = sys.argv[2].rsplit(":", 1)
server = socket.create_server((host, int(port)))
while True:
    client, _ = server.accept()
    while data := client.recv(4096):
        client.sendall(data)
    client.close()
"#;

fn transitions(gateway: &Wakegate) -> Vec<String> {
    gateway
        .events("echo")
        .iter()
        .filter(|e| e["kind"] == "transition")
        .map(|e| e["state"].as_str().unwrap().to_string())
        .collect()
}

/// Wake, kill -9, restart: adopted, one server, stopped when idle; then a graceful stop
/// leaves nothing. With `lose_pid_file`, the pid file is gone too (as when it could not be
/// written on a full disk).
fn adopted_after_sigkill(wrapper: Wrapper, lose_pid_file: bool) {
    let dir = temp_dir(&format!("{wrapper:?}").to_lowercase());
    let root = dir.join("server");
    let (listen, backend) = (free_addr(), free_addr());
    let command = wrapper.command(&root, backend);
    let file = gateway(&dir)
        .service(
            svc("echo")
                .idle("1s")
                .process(&command, backend)
                .tcp(listen),
        )
        .write(&dir.join("wakegate.toml"));
    let wrappers = root.display().to_string();

    let mut first = Wakegate::start(&file);
    let mut client = TcpStream::connect(listen).unwrap();
    assert_eq!(echo_back(&mut client, b"before"), b"before");
    let server = servers(backend);
    assert_eq!(server.len(), 1, "{wrapper:?}: one server runs");
    // The store commits in the background: killed before the wake was written, the next
    // wakegate would find `waking` recorded (and adopt it as such). Killed once it is.
    let written = Instant::now();
    while transitions(&first).last().map(String::as_str) != Some("awake") {
        assert!(
            written.elapsed() < DEADLINE,
            "{wrapper:?}: the wake was never written"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill();
    drop(client);
    assert!(
        alive(server[0]),
        "{wrapper:?}: the server died with wakegate"
    );
    if lose_pid_file {
        std::fs::remove_file(dir.join("echo.pid")).unwrap();
    }

    let mut second = Wakegate::start(&file);
    let adopted = second.wait_for("found the backend running");
    assert!(adopted.contains("was awake"), "{adopted}");
    second.wait_for("backend ready at");
    second.wait_for("backend stopped");
    assert_eq!(
        servers(backend),
        Vec::<u32>::new(),
        "{wrapper:?}: the adopted server was not stopped"
    );
    assert_eq!(
        running_with(&wrappers),
        Vec::<u32>::new(),
        "{wrapper:?}: a wrapper outlived the server"
    );
    assert_eq!(
        starts_in_log(&dir, "echo"),
        1,
        "{wrapper:?}: a second copy was started"
    );
    assert!(
        !transitions(&second).contains(&"failed".to_string()),
        "{wrapper:?}: {:#?}",
        second.events("echo")
    );

    // Woken again, then wakegate stops gracefully: it stops the server and its wrappers.
    let mut client = TcpStream::connect(listen).unwrap();
    assert_eq!(echo_back(&mut client, b"after"), b"after");
    assert_eq!(servers(backend).len(), 1);
    drop(client);
    second.signal(Signal::TERM);
    assert!(second.wait_exit().success());
    assert_eq!(
        servers(backend),
        Vec::<u32>::new(),
        "{wrapper:?}: an orphan after a graceful stop"
    );
    assert_eq!(running_with(&wrappers), Vec::<u32>::new());
}

#[test]
fn a_start_script_that_execs_the_server_is_adopted() {
    adopted_after_sigkill(Wrapper::ExecScript, false);
}

#[test]
fn a_start_script_that_runs_the_server_as_its_child_is_adopted() {
    adopted_after_sigkill(Wrapper::Script, false);
}

#[test]
fn a_server_started_through_usr_bin_env_is_adopted() {
    adopted_after_sigkill(Wrapper::Env, false);
}

#[test]
fn a_server_started_through_a_version_manager_shim_is_adopted() {
    adopted_after_sigkill(Wrapper::Shim, false);
}

#[test]
fn without_its_pid_file_the_server_is_found_by_its_environment() {
    adopted_after_sigkill(Wrapper::Shim, true);
    adopted_after_sigkill(Wrapper::ExecScript, true);
}

#[test]
fn a_program_wakegate_did_not_start_on_the_backend_address_is_reported_never_doubled() {
    let dir = temp_dir("occupied");
    let (listen, backend) = (free_addr(), free_addr());
    let file = gateway(&dir)
        .service(
            svc("echo")
                .idle("1s")
                .process(&echo(backend, "0s"), backend)
                .tcp(listen),
        )
        .write(&dir.join("wakegate.toml"));
    // A copy started by hand, outside wakegate.
    let mut by_hand = std::process::Command::new(WAKEGATE)
        .args(["demo-backend", "--echo", "--listen", &backend.to_string()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It says so once it listens.
    let mut listening = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(by_hand.stderr.take().unwrap()),
        &mut listening,
    )
    .unwrap();
    assert!(listening.contains("listening"), "{listening}");

    let mut gateway = Wakegate::start(&file);
    let found = gateway.wait_for("another program already answers");
    assert!(found.contains(&backend.to_string()), "{found}");
    let status = gateway.service("echo");
    assert_eq!(status["state"], "failed", "{status:#}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("will not start a second copy"),
        "{status:#}"
    );

    // A client cannot make it start a second copy.
    let mut client = TcpStream::connect(listen).unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    gateway.wait_for("another program already answers");
    assert_eq!(starts_in_log(&dir, "echo"), 0, "a second copy was started");
    assert_eq!(servers(backend), vec![by_hand.id()]);
    by_hand.kill().unwrap();
    by_hand.wait().unwrap();
}

#[test]
fn killed_while_stopping_the_next_wakegate_finishes_the_stop_without_a_false_failure() {
    let dir = temp_dir("mid-stop");
    let root = dir.join("server");
    let (listen, backend) = (free_addr(), free_addr());
    // A server that ignores SIGTERM: its stop takes until `stop_timeout`, long enough to kill
    // wakegate in the middle.
    std::fs::create_dir_all(&root).unwrap();
    let start = root.join("server.py");
    std::fs::write(&start, STUBBORN_ECHO).unwrap();
    let command = [
        "python3".to_string(),
        start.display().to_string(),
        "--listen".into(),
        backend.to_string(),
    ];
    let file = gateway(&dir)
        .service(
            svc("echo")
                .idle("1s")
                .process(&command, backend)
                .backend_set("stop_timeout", "3s")
                .tcp(listen),
        )
        .write(&dir.join("wakegate.toml"));

    let mut first = Wakegate::start(&file);
    let mut client = TcpStream::connect(listen).unwrap();
    assert_eq!(echo_back(&mut client, b"hi"), b"hi");
    drop(client);
    // Killed once the stop is recorded (the event is published after it is stored).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut events = first.event_stream("echo", DEADLINE).await;
            events.until_state("stopping").await;
        });
    first.kill();
    let server = servers(backend);
    assert_eq!(server.len(), 1, "the server outlived the stop's start");

    let mut second = Wakegate::start(&file);
    second.wait_for("finishing the stop");
    second.wait_for("backend stopped");
    assert_eq!(servers(backend), Vec::<u32>::new());
    let states = transitions(&second);
    assert!(!states.contains(&"failed".to_string()), "{states:?}");
    assert!(
        states.ends_with(&[
            "stopping".to_string(),
            "stopping".to_string(),
            "asleep".to_string()
        ]),
        "{states:?}"
    );
}
