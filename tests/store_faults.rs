//! The real binary while its store cannot write: another process holds SQLite's write lock,
//! the filesystem is full, the filesystem is read-only, the PostgreSQL server is stopped under
//! it. Clients must be served and `/healthz` must answer (saying "degraded") during the fault,
//! and once it is over every event must be in the log, in order, with contiguous ids, and seen
//! once by a live subscriber. A PostgreSQL store that cannot be reached stops `run` with where
//! and why, never the password.
//!
//! The filesystem faults mount a small tmpfs, which needs root (or CAP_SYS_ADMIN): the tests
//! run as root here and in CI, and fail, rather than skip, without it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A TCP echo server the test runs itself, on threads (the `exec` backend only "starts" it).
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `web`, an echo server behind a TCP listener, never stopped for being idle.
fn config(dir: &Path, data_dir: &Path, listen: SocketAddr) -> PathBuf {
    web(data_dir, listen).write(&dir.join("wakegate.toml"))
}

fn web(data_dir: &Path, listen: SocketAddr) -> Config {
    gateway(data_dir).service(svc("web").idle("1h").exec_true(echo_server()).tcp(listen))
}

/// A client through the gateway: it wakes the service if needed and gets its bytes back.
fn served(listen: SocketAddr) {
    let mut stream = TcpStream::connect(listen).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(b"hello").unwrap();
    let mut back = [0; 5];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
}

fn healthz(gateway: &Wakegate) -> Value {
    let (status, body) = http(gateway.api(), "GET", "/healthz", "").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{exposition}"))
}

/// Checks `/healthz` and the metrics while writes fail with `error`; returns the metrics.
fn assert_degraded(gateway: &Wakegate, error: &str) {
    let health = healthz(gateway);
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["store"]["error"], error, "{health}");
    assert!(
        health["store"]["pending_events"].as_u64().unwrap() >= 1,
        "{health}"
    );
    assert!(health["store"]["failing_since"].is_string(), "{health}");
    let (_, exposition) = http(gateway.api(), "GET", "/metrics", "").unwrap();
    promtool_check(&exposition);
    assert_eq!(metric(&exposition, "wakegate_store_degraded"), 1.0);
    assert!(metric(&exposition, "wakegate_store_pending_events") >= 1.0);
    assert!(metric(&exposition, "wakegate_store_write_failures_total") >= 1.0);
    assert_eq!(
        metric(&exposition, "wakegate_store_dropped_events_total"),
        0.0
    );
}

/// Once the store writes again: healthy, and the log holds `states` (the transitions, in order)
/// with contiguous ids, each seen once, in the same order, by the live subscriber.
fn assert_recovered(gateway: &Wakegate, live: &[Value], states: &[&str]) {
    assert_eq!(healthz(gateway), serde_json::json!({ "status": "ok" }));
    let (_, exposition) = http(gateway.api(), "GET", "/metrics", "").unwrap();
    assert_eq!(metric(&exposition, "wakegate_store_degraded"), 0.0);
    assert_eq!(metric(&exposition, "wakegate_store_pending_events"), 0.0);
    let stored = gateway.events("web");
    let ids: Vec<i64> = stored.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    let first = ids[0];
    assert_eq!(
        ids,
        (first..first + ids.len() as i64).collect::<Vec<_>>(),
        "ids contiguous, in order, no duplicate: {stored:#?}"
    );
    let transitions: Vec<&str> = stored
        .iter()
        .filter(|e| e["kind"] == "transition")
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(transitions, states, "{stored:#?}");
    let seen: Vec<i64> = live.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(
        seen, ids,
        "the live subscriber saw each event once, in order"
    );
}

/// Another process holding SQLite's write lock on the database until told to let go.
struct LockHolder(Child);

impl LockHolder {
    fn take(db: &Path) -> LockHolder {
        let script = "import sqlite3, sys\n\
            db = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
            db.execute('BEGIN IMMEDIATE')\n\
            print('locked', flush=True)\n\
            sys.stdin.readline()\n\
            db.execute('COMMIT')\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run python3 (with its sqlite3 module)");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked", "python3 could not lock the database");
        LockHolder(child)
    }

    fn release(mut self) {
        self.0.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn while_another_process_holds_the_write_lock_clients_are_served_and_no_event_is_lost() {
    init_logs();
    let dir = temp_dir("store-locked");
    let listen = free_addr();
    let mut gateway = Wakegate::start(&config(&dir, &dir, listen));
    let mut live = gateway.event_stream("web", DEADLINE).await;
    let mut seen = live.until_state("asleep").await;

    let lock = LockHolder::take(&dir.join("wakegate.db"));
    // Served while the wake's transitions wait to be stored.
    served(listen);
    gateway.wait_for("The store cannot write");
    assert_degraded(&gateway, "database is locked");
    // Reads go on during the lock, and nothing uncommitted was published.
    let stored = gateway.events("web");
    assert!(stored.iter().all(|e| e["state"] == "asleep"), "{stored:#?}");
    // A lease, whose caller waits for the store, is refused at once rather than kept waiting.
    let (status, body) = http(
        gateway.api(),
        "POST",
        "/api/v1/services/web/leases",
        r#"{"duration": "1h"}"#,
    )
    .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("the store cannot write: database is locked"),
        "{body}"
    );

    lock.release();
    gateway.wait_for("The store writes again");
    seen.extend(live.until_state("awake").await);
    assert_recovered(&gateway, &seen, &["asleep", "waking", "awake"]);
    served(listen);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs root (or CAP_SYS_ADMIN) to mount a tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }

    fn remount(&self, mode: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount,{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes to `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a; 64 * 1024];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => return,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

#[tokio::test]
async fn on_a_full_disk_clients_are_served_and_the_events_are_written_once_there_is_room() {
    init_logs();
    let dir = temp_dir("store-full");
    let data = dir.join("data");
    let tmpfs = Tmpfs::mount(&data, "8m");
    let listen = free_addr();
    let mut gateway = Wakegate::start(&config(&dir, &data, listen));
    let mut live = gateway.event_stream("web", DEADLINE).await;
    let mut seen = live.until_state("asleep").await;

    let filler = data.join("filler");
    fill(&filler);
    served(listen);
    gateway.wait_for("The store cannot write");
    assert_degraded(&gateway, "database or disk is full");
    gateway.sleep("web");
    gateway.wait_for("backend stopped");
    assert_degraded(&gateway, "database or disk is full");

    std::fs::remove_file(&filler).unwrap();
    gateway.wait_for("The store writes again");
    seen.extend(live.until_state("awake").await);
    seen.extend(live.until_state("asleep").await);
    assert_recovered(
        &gateway,
        &seen,
        &["asleep", "waking", "awake", "stopping", "asleep"],
    );
    drop(gateway);
    drop(tmpfs);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Linux refuses to remount a filesystem read-only while a file on it is open for writing, as
/// the database is while wakegate runs: a filesystem turns read-only under a running wakegate
/// only through an I/O error (ext4's `errors=remount-ro`), which needs an fsck and a restart.
/// What can be checked is the start on a read-only data dir, and the start once it is
/// writable again with the history intact.
#[tokio::test]
async fn a_read_only_data_dir_stops_the_start_with_what_to_do_and_the_history_is_kept() {
    init_logs();
    let dir = temp_dir("store-ro");
    let data = dir.join("data");
    let tmpfs = Tmpfs::mount(&data, "8m");
    let listen = free_addr();
    let file = config(&dir, &data, listen);
    let mut gateway = Wakegate::start(&file);
    let mut live = gateway.event_stream("web", DEADLINE).await;
    live.until_state("asleep").await;
    served(listen);
    live.until_state("awake").await;
    let before = gateway.events("web");
    // The kernel's rule above, as this machine applies it.
    let busy = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        !busy.status.success(),
        "a read-only remount under an open database worked"
    );
    assert!(gateway.stop(DEADLINE).success());

    tmpfs.remount("ro");
    let mut refused = Command::new(WAKEGATE)
        .args(["run", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exit = wait_within(&mut refused, DEADLINE);
    let mut output = String::new();
    refused
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    refused
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert!(!exit.success(), "{output}");
    assert!(
        output.contains(
            "check that the data dir is on a writable filesystem (not mounted read-only)"
        ),
        "{output}"
    );

    tmpfs.remount("rw");
    let gateway = Wakegate::start(&file);
    let after = gateway.events("web");
    assert_eq!(after[..before.len()], before[..], "the history is intact");
    assert!(healthz(&gateway)["status"] == "ok");
    drop(gateway);
    drop(tmpfs);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same as with SQLite's lock, the store in PostgreSQL and the server stopped (a crash:
/// `pg_ctl stop -m immediate`) under the gateway, then started again: the pool reconnects.
#[tokio::test]
async fn while_the_postgres_server_is_down_clients_are_served_and_no_event_is_lost() {
    init_logs();
    let dir = temp_dir("store-pg-down");
    let server = postgres::Server::start("down");
    let listen = free_addr();
    let file = web(&dir, listen)
        .set("store", server.database("down").as_str())
        .write(&dir.join("wakegate.toml"));
    let mut gateway = Wakegate::start(&file);
    let mut live = gateway.event_stream("web", DEADLINE).await;
    let mut seen = live.until_state("asleep").await;
    assert!(
        !dir.join("wakegate.db").exists(),
        "the store is in PostgreSQL, not in the data dir"
    );

    server.stop();
    served(listen);
    gateway.wait_for("The store cannot write");
    let health = healthz(&gateway);
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["store"]["pending_events"].as_u64().unwrap() >= 1,
        "{health}"
    );
    let (status, body) = http(
        gateway.api(),
        "POST",
        "/api/v1/services/web/leases",
        r#"{"duration": "1h"}"#,
    )
    .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("the store cannot write: "), "{body}");

    server.pg_ctl("start");
    gateway.wait_for("The store writes again");
    seen.extend(live.until_state("awake").await);
    assert_recovered(&gateway, &seen, &["asleep", "waking", "awake"]);
    served(listen);
    // A restarted gateway reads its history back from the database.
    let before = gateway.events("web");
    assert!(gateway.stop(DEADLINE).success());
    let gateway = Wakegate::start(&file);
    let after = gateway.events("web");
    assert_eq!(after[..before.len()], before[..], "the history is intact");
    drop(gateway);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `run` with a PostgreSQL store nobody answers for: it exits 1 at once, naming the host and
/// what failed, and never prints the password it read from the environment.
#[test]
fn an_unreachable_postgres_store_stops_run_with_the_host_and_never_the_password() {
    let dir = temp_dir("store-pg-unreachable");
    let closed = free_addr();
    let file = web(&dir, free_addr())
        .set(
            "store",
            format!("postgres://gw:${{WAKEGATE_TEST_PGPASSWORD}}@{closed}/wake").as_str(),
        )
        .write(&dir.join("wakegate.toml"));
    let mut refused = Command::new(WAKEGATE)
        .args(["run", "--config"])
        .arg(&file)
        .env("WAKEGATE_TEST_PGPASSWORD", "hunter2-in-the-env")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exit = wait_within(&mut refused, DEADLINE);
    let mut output = String::new();
    refused
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    refused
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert_eq!(exit.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!(
            "cannot connect the PostgreSQL store at postgres://gw@{closed}/wake: "
        )),
        "{output}"
    );
    assert!(output.contains("Connection refused"), "{output}");
    assert!(!output.contains("hunter2"), "{output}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn wait_within(child: &mut Child, deadline: Duration) -> std::process::ExitStatus {
    let give_up = std::time::Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < give_up, "wakegate did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
