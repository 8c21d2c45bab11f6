//! Graceful stop of a Minecraft `process` backend, against a real server: flying-squid with
//! the RCON protocol in front of its `save-all` and `stop` (tests/peers/minecraft/squid.js,
//! rcon_server.js). The real `wakegate run` binary runs with the RCON password in its
//! environment, so the test can read everything it prints and serves and look for the secret.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// A Node server booting on a busy 2-core machine; a passing test never waits this long.
const PEER_DEADLINE: Duration = Duration::from_secs(60);

const PASSWORD: &str = "rcon-secret-7d1f0c2a";
const WRONG: &str = "not-the-password-95be";

fn peers() -> PathBuf {
    minecraft_peers(&["flying-squid"])
}

/// "survival": flying-squid 1.18.2 on `server`, ready when it prints vanilla's `Done (…)!`
/// line; the test adds how it is stopped.
fn survival(server: SocketAddr) -> Service {
    let port = server.port().to_string();
    svc("survival")
        .idle("1h")
        .wake_timeout("60s")
        .backend(
            typed("process")
                .set("command", ["node", "squid.js", &port, "1.18.2"])
                .set("cwd", peers())
                .set("address", server),
        )
        .readiness(typed("log").set("pattern", r"Done \(\d"))
        .minecraft(ANY_PORT)
}

/// Starts `wakegate run` with `service`, logging everything (debug), with the RCON passwords
/// only in its environment.
fn start(dir: &Path, service: Service) -> Wakegate {
    let file = gateway(dir)
        .service(service)
        .write(&dir.join("wakegate.toml"));
    tokio::task::block_in_place(|| {
        Wakegate::start_with(&file, |command| {
            command
                .env("RUST_LOG", "debug")
                .env("TEST_RCON_PASSWORD", PASSWORD)
                .env("TEST_WRONG_PASSWORD", WRONG)
        })
    })
}

/// One API request; the status code and the JSON body.
fn request(gateway: &Wakegate, method: &str, path: &str) -> (u16, String) {
    http(gateway.api(), method, path, "").unwrap()
}

/// Shuts wakegate down (SIGTERM) and waits for it.
fn shut_down(gateway: &mut Wakegate) {
    tokio::task::block_in_place(|| gateway.stop(PEER_DEADLINE));
}

/// The JSON lines the server printed (its log file), in order.
fn server_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("survival.log"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn reasons(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e["kind"].as_str().unwrap(),
                e["reason"].as_str().unwrap()
            )
        })
        .collect()
}

/// The position of the first server line holding `key` (and `value`, when given).
fn position(lines: &[Value], key: &str, value: Option<&str>) -> usize {
    lines
        .iter()
        .position(|l| {
            l.get(key)
                .is_some_and(|v| value.is_none_or(|want| v == want))
        })
        .unwrap_or_else(|| panic!("the server never printed {key} {value:?}: {lines:#?}"))
}

/// A bot on the server itself (not through wakegate), so the world has a player to save; its
/// report lines come with it, still open.
async fn bot_on(server: SocketAddr) -> (Child, tokio::io::Lines<BufReader<ChildStdout>>) {
    let mut bot = Command::new("node")
        .args([
            "bot.js",
            &server.port().to_string(),
            "127.0.0.1",
            "1.18.2",
            "Steve",
        ])
        .current_dir(peers())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(bot.stdout.take().unwrap()).lines();
    tokio::time::timeout(PEER_DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("\"spawn\"") {
                return;
            }
        }
        panic!("the bot ended before it spawned");
    })
    .await
    .expect("the bot did not spawn");
    (bot, lines)
}

/// Neither password is in what wakegate printed (all of it: call after `stop`) nor in `texts`.
fn assert_no_secret(gateway: &mut Wakegate, texts: &[&str]) {
    for (name, text) in [("wakegate's output", gateway.output())]
        .into_iter()
        .chain(texts.iter().map(|t| ("an API answer", t.to_string())))
    {
        for secret in [PASSWORD, WRONG] {
            assert!(!text.contains(secret), "{name} holds an RCON password");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcon_saves_then_stops_the_server_and_it_exits() {
    let dir = temp_dir("mc-rcon");
    let (server, rcon) = (free_addr(), free_addr());
    let world = dir.join("world");
    let service = survival(server)
        .env("RCON_PORT", rcon.port().to_string())
        .env("RCON_PASSWORD", "${TEST_RCON_PASSWORD}")
        .env("WORLD_DIR", &world)
        .backend_set("save_all", true)
        .backend_set("stop_timeout", "20s")
        .table(
            "backend.rcon",
            table()
                .set("address", rcon)
                .set("password", "${TEST_RCON_PASSWORD}"),
        );
    let mut gateway = start(&dir, service);
    let mut events = gateway.event_stream("survival", PEER_DEADLINE).await;
    events.until_state("asleep").await;

    let (code, woke) = request(&gateway, "POST", "/api/v1/services/survival/wake");
    assert_eq!(code, 202, "{woke}");
    events.until_state("awake").await;
    let (mut bot, _reports) = bot_on(server).await;

    let (code, slept) = request(&gateway, "POST", "/api/v1/services/survival/sleep");
    assert_eq!(code, 202, "{slept}");
    let stop = events.until_state("asleep").await;
    let said = reasons(&stop);
    let at = |text: &str| {
        said.iter()
            .position(|r| r.contains(text))
            .unwrap_or_else(|| panic!("no event says {text:?}: {said:#?}"))
    };
    assert!(
        at("progress: the server saved its world (save-all over RCON: \"Saved the game\")")
            < at("progress: asked the server to stop (`stop` over RCON)"),
        "{said:#?}"
    );
    assert!(
        at("asked the server to stop") < at("progress: the process exited with exit code 0"),
        "{said:#?}"
    );
    assert!(!said.iter().any(|r| r.starts_with("warning")), "{said:#?}");

    // The server's own account: logged in, saved (really: the player's file is on disk), was
    // told to stop, and exited, in that order.
    let lines = server_lines(&dir);
    let order = [
        position(&lines, "rcon", Some("login accepted")),
        position(&lines, "command", Some("save-all")),
        position(&lines, "saved", None),
        position(&lines, "command", Some("stop")),
        position(&lines, "exiting", None),
    ];
    assert!(order.is_sorted(), "{lines:#?}");
    let players = std::fs::read_dir(world.join("playerdata"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(players > 0, "save-all wrote no player data");
    let _ = bot.wait().await;

    let (_, view) = request(&gateway, "GET", "/api/v1/services/survival");
    let (_, history) = request(&gateway, "GET", "/api/v1/events?service=survival&limit=100");
    drop(events);
    shut_down(&mut gateway);
    assert_no_secret(&mut gateway, &[&woke, &slept, &view, &history]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_rcon_password_is_a_clear_warning_and_the_server_is_killed() {
    let dir = temp_dir("mc-rcon-wrong");
    let (server, rcon) = (free_addr(), free_addr());
    // A server that ignores SIGTERM too: only the kill after stop_timeout ends it.
    let service = survival(server)
        .env("RCON_PORT", rcon.port().to_string())
        .env("RCON_PASSWORD", "${TEST_RCON_PASSWORD}")
        .env("IGNORE_SIGTERM", "1")
        .backend_set("save_all", true)
        .backend_set("stop_timeout", "1s")
        .table(
            "backend.rcon",
            table()
                .set("address", rcon)
                .set("password", "${TEST_WRONG_PASSWORD}"),
        );
    let mut gateway = start(&dir, service);
    let mut events = gateway.event_stream("survival", PEER_DEADLINE).await;
    events.until_state("asleep").await;
    let (code, woke) = request(&gateway, "POST", "/api/v1/services/survival/wake");
    assert_eq!(code, 202, "{woke}");
    events.until_state("awake").await;
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("survival.pid")).unwrap()).unwrap();
    let pid = record["pid"].as_u64().unwrap() as u32;

    let (code, slept) = request(&gateway, "POST", "/api/v1/services/survival/sleep");
    assert_eq!(code, 202, "{slept}");
    let said = reasons(&events.until_state("asleep").await);
    let refused = format!(
        "warning: the stop over RCON failed: RCON at {rcon} refused the password; make \
         `password` in [service.backend.rcon] match `rcon.password` in server.properties; sent \
         SIGTERM instead"
    );
    let expected = [
        refused.as_str(),
        "warning: the process did not stop within 1s (stop_timeout); killed it",
        "progress: the process exited with signal 9",
    ];
    let found: Vec<usize> = expected
        .iter()
        .map(|want| {
            said.iter()
                .position(|r| r == want)
                .unwrap_or_else(|| panic!("no event {want:?}: {said:#?}"))
        })
        .collect();
    assert!(found.is_sorted(), "{said:#?}");
    assert!(!alive(pid), "the server is still running");

    // The server refused the login, ignored SIGTERM, and never got a command.
    let lines = server_lines(&dir);
    assert!(
        position(&lines, "rcon", Some("login refused")) < position(&lines, "ignored", None),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.get("command").is_some()),
        "{lines:#?}"
    );

    let (_, history) = request(&gateway, "GET", "/api/v1/events?service=survival&limit=100");
    shut_down(&mut gateway);
    assert_no_secret(&mut gateway, &[&woke, &slept, &history]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_all_and_stop_on_stdin_save_before_the_server_exits() {
    let dir = temp_dir("mc-stdin-save");
    let server = free_addr();
    let world = dir.join("world");
    let service = survival(server)
        .env("WORLD_DIR", &world)
        .backend_set("stop_command", "stop")
        .backend_set("save_all", true)
        .backend_set("stop_timeout", "20s");
    let mut gateway = start(&dir, service);
    let mut events = gateway.event_stream("survival", PEER_DEADLINE).await;
    events.until_state("asleep").await;
    request(&gateway, "POST", "/api/v1/services/survival/wake");
    events.until_state("awake").await;
    let (mut bot, _reports) = bot_on(server).await;
    request(&gateway, "POST", "/api/v1/services/survival/sleep");
    let said = reasons(&events.until_state("asleep").await);
    assert!(
        said.iter()
            .any(|r| r == "progress: the process exited with exit code 0"),
        "{said:#?}"
    );
    let lines = server_lines(&dir);
    let order = [
        position(&lines, "command", Some("save-all")),
        position(&lines, "saved", None),
        position(&lines, "command", Some("stop")),
        position(&lines, "exiting", None),
    ];
    assert!(order.is_sorted(), "{lines:#?}");
    assert!(world.join("playerdata").read_dir().unwrap().count() > 0);
    let _ = bot.wait().await;
    // The event stream is still open: wakegate shuts down all the same.
    shut_down(&mut gateway);
}
