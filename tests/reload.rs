//! Live reload of a real `wakegate run`: SIGHUP and `wakegate reload` read the file again and
//! apply only the difference. Connections of services the reload does not touch keep flowing,
//! a policy change reaches the running service, added services wake, removed ones stop (or
//! keep running when asked), a listener moves without cutting its open connections, and a
//! broken file or a gateway-wide change changes nothing and says why.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;

use common::*;
use rustix::process::Signal;
use serde_json::Value;

/// A service whose backend is the demo echo server (a `process` backend) on `backend`,
/// reached through a `tcp` listener on `listen`.
fn echo_service(name: &str, listen: SocketAddr, backend: SocketAddr, idle: &str) -> Service {
    svc(name)
        .idle(idle)
        .wake_timeout("15s")
        .process(&echo(backend, "0s"), backend)
        .tcp(listen)
}

/// A connection through the gateway that answered its first echo (the backend woke).
fn connected(listen: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(listen).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(echo_back(&mut stream, b"hello"), b"hello");
    stream
}

/// `wakegate reload` against a gateway; its exit code, stdout and stderr.
fn reload_cli(wakegate: &Wakegate, extra: &[&str]) -> (i32, String, String) {
    let output = Command::new(WAKEGATE)
        .args(["reload", "--api", &wakegate.api().to_string()])
        .args(extra)
        .env_remove("WAKEGATE_TOKEN")
        .env_remove("WAKEGATE_CONFIG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Writes the config file.
fn write_config(path: &Path, config: &Config) {
    config.write(path);
}

/// The reasons of a service's events (read from every event: a removed service's name is no
/// longer one the API filters by).
fn reasons(wakegate: &Wakegate, name: &str) -> Vec<String> {
    let page = api_json(wakegate.api(), "GET", "/api/v1/events?limit=1000");
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["service"] == name)
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn a_reload_leaves_the_connections_of_untouched_services_open() {
    let dir = temp_dir("reload-untouched");
    let path = dir.join("wakegate.toml");
    let (keep, keep_backend) = (free_addr(), free_addr());
    let (other, other_backend) = (free_addr(), free_addr());
    let (policy, policy_backend) = (free_addr(), free_addr());
    let base = gateway(&dir)
        .service(echo_service("keep", keep, keep_backend, "1h"))
        .service(echo_service("policy", policy, policy_backend, "1h"));
    write_config(
        &path,
        &base
            .clone()
            .service(echo_service("other", other, other_backend, "1h")),
    );
    let mut wakegate = Wakegate::start(&path);
    let mut stream = connected(keep);
    let server = echo_servers(keep_backend);
    assert_eq!(server.len(), 1, "one echo server behind `keep`");

    // `other` goes, `added` comes, `policy` changes its idle timeout.
    let (added, added_backend) = (free_addr(), free_addr());
    write_config(
        &path,
        &gateway(&dir)
            .service(echo_service("keep", keep, keep_backend, "1h"))
            .service(echo_service("policy", policy, policy_backend, "30m"))
            .service(echo_service("added", added, added_backend, "1h")),
    );
    let mut events = wakegate.event_stream("wakegate", DEADLINE).await;
    wakegate.signal(Signal::HUP);
    let reloaded = events
        .until("a reload event", |e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("config reloaded"))
        })
        .await;
    let reason = reloaded.last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("1 added, 1 removed, 1 changed, 1 unchanged"),
        "{reason}"
    );
    wakegate.wait_for("SIGHUP received: reloading the config.");

    // The open connection still carries bytes both ways, to the same server.
    assert_eq!(
        echo_back(&mut stream, b"after the reload"),
        b"after the reload"
    );
    assert_eq!(echo_servers(keep_backend), server);
    let transitions: Vec<Value> = wakegate
        .events("keep")
        .into_iter()
        .filter(|e| e["kind"] == "transition")
        .collect();
    assert_eq!(
        transitions.last().unwrap()["state"],
        "awake",
        "`keep` never left awake: {transitions:#?}"
    );
    // The removed service's port refuses; the added one's serves.
    assert_eq!(
        TcpStream::connect(other).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    let mut fresh = connected(added);
    assert_eq!(echo_back(&mut fresh, b"new"), b"new");
    drop(wakegate);
}

#[tokio::test]
async fn sighup_applies_a_new_idle_timeout_to_the_running_service() {
    let dir = temp_dir("reload-sighup");
    let path = dir.join("wakegate.toml");
    let (listen, backend) = (free_addr(), free_addr());
    write_config(
        &path,
        &gateway(&dir).service(echo_service("mc", listen, backend, "1h")),
    );
    let wakegate = Wakegate::start(&path);
    let mut events = wakegate.event_stream("mc", DEADLINE).await;
    drop(connected(listen));
    events.until_state("awake").await;

    // With an hour's idle timeout it would stay awake for the whole test.
    write_config(
        &path,
        &gateway(&dir).service(echo_service("mc", listen, backend, "1s")),
    );
    wakegate.signal(Signal::HUP);
    events
        .until("the policy change", |e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("policy changed, applied to the running service"))
        })
        .await;
    let asleep = events.until_state("asleep").await;
    let stop = asleep
        .iter()
        .find(|e| e["state"] == "stopping")
        .expect("a stopping transition");
    assert!(
        stop["reason"]
            .as_str()
            .unwrap()
            .starts_with("no connection for 1"),
        "{stop:#?}"
    );
    assert!(echo_servers(backend).is_empty());
}

#[tokio::test]
async fn removed_services_are_stopped_or_kept_running_when_asked() {
    let dir = temp_dir("reload-removed");
    let path = dir.join("wakegate.toml");
    let (stopped, stopped_backend) = (free_addr(), free_addr());
    let (kept, kept_backend) = (free_addr(), free_addr());
    let (stays, stays_backend) = (free_addr(), free_addr());
    write_config(
        &path,
        &gateway(&dir)
            .service(echo_service("stopped", stopped, stopped_backend, "1h"))
            .service(echo_service("kept", kept, kept_backend, "1h"))
            .service(echo_service("stays", stays, stays_backend, "1h")),
    );
    let wakegate = Wakegate::start(&path);
    drop(connected(stopped));
    drop(connected(kept));
    assert_eq!(echo_servers(stopped_backend).len(), 1);

    // Without --keep-running: the backend is stopped.
    write_config(
        &path,
        &gateway(&dir)
            .service(echo_service("kept", kept, kept_backend, "1h"))
            .service(echo_service("stays", stays, stays_backend, "1h")),
    );
    let (code, out, err) = reload_cli(&wakegate, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("reloaded: 0 added, 1 removed, 0 changed, 2 unchanged"),
        "{out}"
    );
    assert!(
        out.contains("removed  stopped (its backend is stopped)"),
        "{out}"
    );
    assert!(
        echo_servers(stopped_backend).is_empty(),
        "the removed backend was stopped"
    );
    assert!(
        reasons(&wakegate, "stopped")
            .iter()
            .any(|r| r.contains("removed from the config") && r.contains("its backend is stopped")),
        "{:#?}",
        reasons(&wakegate, "stopped")
    );
    let (status, _) = http(wakegate.api(), "GET", "/api/v1/services/stopped", "").unwrap();
    assert_eq!(status, 404, "a removed service leaves the API");

    // With --keep-running: the server goes on, and the event says so.
    let server = echo_servers(kept_backend);
    assert_eq!(server.len(), 1);
    write_config(
        &path,
        &gateway(&dir).service(echo_service("stays", stays, stays_backend, "1h")),
    );
    let (code, out, err) = reload_cli(&wakegate, &["--keep-running"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("removed  kept (its backend is left running)"),
        "{out}"
    );
    assert_eq!(echo_servers(kept_backend), server, "still the same server");
    assert!(
        reasons(&wakegate, "kept")
            .iter()
            .any(|r| r.contains("its backend is left running")),
        "{:#?}",
        reasons(&wakegate, "kept")
    );
    assert_eq!(
        TcpStream::connect(kept).unwrap_err().kind(),
        ErrorKind::ConnectionRefused,
        "nothing listens for it any more"
    );
    for pid in server {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            Signal::TERM,
        );
    }
}

#[tokio::test]
async fn a_listener_moves_without_cutting_its_open_connections() {
    let dir = temp_dir("reload-listener");
    let path = dir.join("wakegate.toml");
    let (old, new, backend) = (free_addr(), free_addr(), free_addr());
    write_config(
        &path,
        &gateway(&dir).service(echo_service("web", old, backend, "1h")),
    );
    let wakegate = Wakegate::start(&path);
    let mut open = connected(old);
    let server = echo_servers(backend);

    write_config(
        &path,
        &gateway(&dir).service(echo_service("web", new, backend, "1h")),
    );
    let (code, out, err) = reload_cli(&wakegate, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("changed  web (listeners)"), "{out}");
    assert_eq!(
        TcpStream::connect(old).unwrap_err().kind(),
        ErrorKind::ConnectionRefused,
        "the old port is closed"
    );
    let mut moved = connected(new);
    assert_eq!(
        echo_back(&mut moved, b"on the new port"),
        b"on the new port"
    );
    assert_eq!(echo_back(&mut open, b"still here"), b"still here");
    assert_eq!(
        echo_servers(backend),
        server,
        "the same backend, never restarted"
    );
    assert!(
        reasons(&wakegate, "web")
            .iter()
            .any(|r| r.contains(&format!("it now listens on {new}"))),
        "{:#?}",
        reasons(&wakegate, "web")
    );
}

#[tokio::test]
async fn a_broken_file_changes_nothing_and_every_problem_is_named_with_its_line() {
    let dir = temp_dir("reload-broken");
    let path = dir.join("wakegate.toml");
    let (listen, backend) = (free_addr(), free_addr());
    let good = gateway(&dir).service(echo_service("svc", listen, backend, "1h"));
    write_config(&path, &good);
    let mut wakegate = Wakegate::start(&path);
    let mut open = connected(listen);

    // Three mistakes: a typo'd key, a bad duration, an added service without a backend.
    let broken = gateway(&dir)
        .service(echo_service("svc", listen, backend, "1h").set("idle_timout", "5m"))
        .service(svc("half").idle("10 minutes").tcp(free_addr()));
    write_config(&path, &broken);
    let text = std::fs::read_to_string(&path).unwrap();
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in\n{text}"))
            + 1
    };
    let (typo, duration, half) = (
        line_of("idle_timout"),
        line_of("10 minutes"),
        line_of("name = \"half\""),
    );
    let (status, body) = http(wakegate.api(), "POST", "/api/v1/reload", "").unwrap();
    assert_eq!(status, 422, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let lines: Vec<u64> = answer["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{answer:#}");
    assert!(lines.contains(&(typo as u64)), "{answer:#}");
    assert!(lines.contains(&(duration as u64)), "{answer:#}");
    assert!(
        lines.iter().any(|l| *l as usize >= half),
        "the missing backend is pointed at in `half`: {answer:#}"
    );
    let error = answer["error"].as_str().unwrap();
    let file = path.display().to_string();
    for line in [typo, duration] {
        assert!(error.contains(&format!("{file}:{line}:")), "{error}");
    }
    // The log says the same, and nothing changed.
    wakegate.wait_for("Config reload refused; nothing was changed");
    // Every problem of the answer, with its line, in the error text and in the log.
    let log = wakegate.output();
    for line in &lines {
        assert!(error.contains(&format!("{file}:{line}:")), "{error}");
        assert!(log.contains(&format!("{file}:{line}:")), "{log}");
    }
    assert_eq!(echo_back(&mut open, b"untouched"), b"untouched");
    let (status, _) = http(wakegate.api(), "GET", "/api/v1/services/half", "").unwrap();
    assert_eq!(status, 404);
    assert!(
        reasons(&wakegate, "wakegate")
            .iter()
            .any(|r| r.contains("config reload by an API client on this host failed")),
        "{:#?}",
        reasons(&wakegate, "wakegate")
    );

    // The CLI: exit 1, every problem on stderr.
    let (code, out, err) = reload_cli(&wakegate, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("wakegate did not reload; nothing was changed"),
        "{err}"
    );
    assert!(err.contains("3 problems found"), "{err}");
    assert!(err.contains(&format!("{file}:{typo}:")), "{err}");
}

#[tokio::test]
async fn a_gateway_wide_change_is_refused_naming_the_key() {
    let dir = temp_dir("reload-gateway-wide");
    let path = dir.join("wakegate.toml");
    let (listen, backend) = (free_addr(), free_addr());
    write_config(
        &path,
        &gateway(&dir).service(echo_service("svc", listen, backend, "1h")),
    );
    let wakegate = Wakegate::start(&path);
    write_config(
        &path,
        &gateway(&dir)
            .set("shutdown_grace", "9s")
            .service(echo_service("svc", listen, backend, "2h")),
    );
    let (code, out, err) = reload_cli(&wakegate, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("[gateway] shutdown_grace changed; it cannot change while wakegate runs: restart wakegate to apply it"),
        "{err}"
    );
    // The service's own change was not applied either.
    assert!(
        !reasons(&wakegate, "svc")
            .iter()
            .any(|r| r.contains("config reloaded")),
        "{:#?}",
        reasons(&wakegate, "svc")
    );
}

#[tokio::test]
async fn only_an_admin_token_may_reload() {
    const ADMIN: &str = "reload-admin-secret-0123456789";
    const OPERATE: &str = "reload-operate-secret-0123456789";
    let dir = temp_dir("reload-tokens");
    let path = dir.join("wakegate.toml");
    let (listen, backend) = (free_addr(), free_addr());
    let tokens = "[[gateway.token]]\nname = \"ops\"\nrole = \"admin\"\nsecret = \"${RELOAD_ADMIN}\"\n\n[[gateway.token]]\nname = \"oncall\"\nrole = \"operate\"\nsecret = \"${RELOAD_OPERATE}\"\n";
    let config = gateway(&dir)
        .gateway_raw(tokens)
        .service(echo_service("svc", listen, backend, "1h"));
    write_config(&path, &config);
    let mut wakegate = Wakegate::start_with(&path, |c| {
        c.env("RELOAD_ADMIN", ADMIN).env("RELOAD_OPERATE", OPERATE)
    });
    let (code, out, err) = reload_cli(&wakegate, &["--token", OPERATE]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("token `oncall` has the Operate role; this needs Admin"),
        "{err}"
    );
    let (code, out, err) = reload_cli(&wakegate, &["--token", ADMIN]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("reloaded: 0 added, 0 removed, 0 changed, 1 unchanged"),
        "{out}"
    );
    let logged = wakegate.wait_for("Config reloaded: 0 added");
    assert!(logged.contains("by=API token ops"), "{logged}");
}

#[tokio::test]
async fn a_backend_change_stops_the_old_backend_and_the_same_port_wakes_the_new_one() {
    let dir = temp_dir("reload-backend");
    let path = dir.join("wakegate.toml");
    let (listen, backend) = (free_addr(), free_addr());
    write_config(
        &path,
        &gateway(&dir).service(echo_service("svc", listen, backend, "1h")),
    );
    let wakegate = Wakegate::start(&path);
    drop(connected(listen));
    let old = echo_servers(backend);
    assert_eq!(old.len(), 1);

    // Another command line for the server: a backend change.
    let changed = svc("svc")
        .idle("1h")
        .wake_timeout("15s")
        .process(&echo(backend, "1ms"), backend)
        .tcp(listen);
    write_config(&path, &gateway(&dir).service(changed));
    let (code, out, err) = reload_cli(&wakegate, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("changed  svc (backend)"), "{out}");
    assert!(
        echo_servers(backend).is_empty(),
        "the old backend was stopped"
    );
    assert!(
        reasons(&wakegate, "svc")
            .iter()
            .any(|r| r.contains("backend changed; the backend is stopped and its actor replaced")),
        "{:#?}",
        reasons(&wakegate, "svc")
    );
    // The same socket, served by the new actor: a client wakes the new backend.
    let mut again = connected(listen);
    assert_eq!(echo_back(&mut again, b"new backend"), b"new backend");
    let new = echo_servers(backend);
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_aborts_the_whole_reload() {
    let dir = temp_dir("reload-bind");
    let path = dir.join("wakegate.toml");
    let (listen, backend) = (free_addr(), free_addr());
    write_config(
        &path,
        &gateway(&dir).service(echo_service("svc", listen, backend, "1h")),
    );
    let wakegate = Wakegate::start(&path);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    write_config(
        &path,
        &gateway(&dir)
            .service(echo_service("svc", listen, backend, "2h"))
            .service(echo_service("blocked", busy, free_addr(), "1h")),
    );
    let (code, out, err) = reload_cli(&wakegate, &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("cannot listen on {busy} for service `blocked`")),
        "{err}"
    );
    assert!(err.contains("(nothing was changed)"), "{err}");
    assert!(
        !reasons(&wakegate, "svc")
            .iter()
            .any(|r| r.contains("config reloaded")),
        "the other change was not applied: {:#?}",
        reasons(&wakegate, "svc")
    );
    let (status, _) = http(wakegate.api(), "GET", "/api/v1/services/blocked", "").unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn with_watch_config_a_change_of_the_file_reloads_it() {
    let dir = temp_dir("reload-watch");
    let path = dir.join("wakegate.toml");
    let (listen, backend) = (free_addr(), free_addr());
    let config = |idle: &str| {
        gateway(&dir)
            .set("watch_config", true)
            .service(echo_service("svc", listen, backend, idle))
    };
    write_config(&path, &config("1h"));
    let mut wakegate = Wakegate::start(&path);
    wakegate.wait_for("Watching the config file");
    let mut events = wakegate.event_stream("svc", DEADLINE).await;
    drop(connected(listen));
    events.until_state("awake").await;

    // No signal, no command: the file's change is enough.
    write_config(&path, &config("1s"));
    events
        .until("the policy change", |e| {
            e["reason"].as_str().is_some_and(|r| {
                r.contains("config reloaded (a change of the config file): policy changed")
            })
        })
        .await;
    events.until_state("asleep").await;
}
