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
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

/// A Node server booting on a busy 2-core machine; a passing test never waits this long.
const PEER_DEADLINE: Duration = Duration::from_secs(60);

const PASSWORD: &str = "rcon-secret-7d1f0c2a";
const WRONG: &str = "not-the-password-95be";

fn peers() -> PathBuf {
    minecraft_peers(&["flying-squid"])
}

/// A running `wakegate run` with one service, "survival", and its API.
struct Gateway {
    child: Child,
    api: SocketAddr,
    dir: PathBuf,
}

impl Gateway {
    /// Starts wakegate with `backend` as the `[service.backend]` body (flying-squid on
    /// `server`); the RCON passwords are only in its environment.
    async fn start(dir: &Path, server: SocketAddr, backend: &str) -> Gateway {
        let api = free_addr();
        let config = format!(
            r#"[gateway]
data_dir = {data:?}
api = "{api}"
shutdown_grace = "2s"

[[service]]
name = "survival"
idle_timeout = "1h"
wake_timeout = "60s"
[service.backend]
type = "process"
command = ["node", "squid.js", "{port}", "1.18.2"]
cwd = {cwd:?}
address = "{server}"
{backend}
[service.readiness]
type = "log"
pattern = 'Done \(\d'
[[service.listen]]
type = "minecraft"
bind = "127.0.0.1:0"
"#,
            data = dir.display().to_string(),
            port = server.port(),
            cwd = peers().display().to_string(),
        );
        let file = dir.join("wakegate.toml");
        std::fs::write(&file, config).unwrap();
        let output = std::fs::File::create(dir.join("wakegate.out")).unwrap();
        let child = Command::new(WAKEGATE)
            .args(["run", "--config"])
            .arg(&file)
            .env("RUST_LOG", "debug")
            .env("TEST_RCON_PASSWORD", PASSWORD)
            .env("TEST_WRONG_PASSWORD", WRONG)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let gateway = Gateway {
            child,
            api,
            dir: dir.to_path_buf(),
        };
        tokio::time::timeout(DEADLINE, async {
            while TcpStream::connect(api).await.is_err() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the API never opened");
        gateway
    }

    /// One API request; the status code and the JSON body.
    async fn request(&self, method: &str, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.api).await.unwrap();
        stream
            .write_all(
                format!("{method} {path} HTTP/1.0\r\nHost: wakegate\r\nContent-Length: 0\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, body.to_string())
    }

    /// Every event of the service from the first, live, over the API's event stream.
    async fn events(&self) -> Events {
        let mut stream = TcpStream::connect(self.api).await.unwrap();
        stream
            .write_all(
                b"GET /api/v1/events/stream?service=survival&after=0 HTTP/1.0\r\nHost: wakegate\r\n\r\n",
            )
            .await
            .unwrap();
        Events {
            lines: BufReader::new(stream).lines(),
            seen: Vec::new(),
        }
    }

    /// Everything wakegate printed so far.
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("wakegate.out")).unwrap()
    }

    /// The JSON lines the server printed (its log file), in order.
    fn server_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("survival.log"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn stop(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        tokio::time::timeout(PEER_DEADLINE, self.child.wait())
            .await
            .expect("wakegate did not shut down")
            .unwrap();
    }
}

struct Events {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
    seen: Vec<Value>,
}

impl Events {
    /// Reads events until one matches `done`; returns all read in this call.
    async fn until(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut batch = Vec::new();
        let found = tokio::time::timeout(PEER_DEADLINE, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                self.seen.push(event.clone());
                batch.push(event.clone());
                if done(&event) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "no {what}; saw {:#?}", self.seen);
        batch
    }

    async fn until_state(&mut self, state: &str) -> Vec<Value> {
        self.until(&format!("transition to {state}"), |e| {
            e["kind"] == "transition" && e["state"] == state
        })
        .await
    }
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

fn assert_no_secret(gateway: &Gateway, texts: &[&str]) {
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
    let gateway = Gateway::start(
        &dir,
        server,
        &format!(
            r#"env = {{ RCON_PORT = "{port}", RCON_PASSWORD = "${{TEST_RCON_PASSWORD}}", WORLD_DIR = {world:?} }}
save_all = true
stop_timeout = "20s"
[service.backend.rcon]
address = "{rcon}"
password = "${{TEST_RCON_PASSWORD}}"
"#,
            port = rcon.port(),
            world = world.display().to_string(),
        ),
    )
    .await;
    let mut events = gateway.events().await;
    events.until_state("asleep").await;

    let (code, woke) = gateway
        .request("POST", "/api/v1/services/survival/wake")
        .await;
    assert_eq!(code, 202, "{woke}");
    events.until_state("awake").await;
    let (mut bot, _reports) = bot_on(server).await;

    let (code, slept) = gateway
        .request("POST", "/api/v1/services/survival/sleep")
        .await;
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
    let lines = gateway.server_lines();
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

    let (_, view) = gateway.request("GET", "/api/v1/services/survival").await;
    let (_, history) = gateway
        .request("GET", "/api/v1/events?service=survival&limit=100")
        .await;
    assert_no_secret(&gateway, &[&woke, &slept, &view, &history]);
    drop(events);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_rcon_password_is_a_clear_warning_and_the_server_is_killed() {
    let dir = temp_dir("mc-rcon-wrong");
    let (server, rcon) = (free_addr(), free_addr());
    // A server that ignores SIGTERM too: only the kill after stop_timeout ends it.
    let gateway = Gateway::start(
        &dir,
        server,
        &format!(
            r#"env = {{ RCON_PORT = "{port}", RCON_PASSWORD = "${{TEST_RCON_PASSWORD}}", IGNORE_SIGTERM = "1" }}
save_all = true
stop_timeout = "1s"
[service.backend.rcon]
address = "{rcon}"
password = "${{TEST_WRONG_PASSWORD}}"
"#,
            port = rcon.port(),
        ),
    )
    .await;
    let mut events = gateway.events().await;
    events.until_state("asleep").await;
    let (code, woke) = gateway
        .request("POST", "/api/v1/services/survival/wake")
        .await;
    assert_eq!(code, 202, "{woke}");
    events.until_state("awake").await;
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("survival.pid")).unwrap()).unwrap();
    let pid = record["pid"].as_u64().unwrap() as u32;

    let (code, slept) = gateway
        .request("POST", "/api/v1/services/survival/sleep")
        .await;
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
    let lines = gateway.server_lines();
    assert!(
        position(&lines, "rcon", Some("login refused")) < position(&lines, "ignored", None),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.get("command").is_some()),
        "{lines:#?}"
    );

    let (_, history) = gateway
        .request("GET", "/api/v1/events?service=survival&limit=100")
        .await;
    assert_no_secret(&gateway, &[&woke, &slept, &history]);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_all_and_stop_on_stdin_save_before_the_server_exits() {
    let dir = temp_dir("mc-stdin-save");
    let server = free_addr();
    let world = dir.join("world");
    let gateway = Gateway::start(
        &dir,
        server,
        &format!(
            "env = {{ WORLD_DIR = {:?} }}\nstop_command = \"stop\"\nsave_all = true\nstop_timeout = \"20s\"\n",
            world.display().to_string()
        ),
    )
    .await;
    let mut events = gateway.events().await;
    events.until_state("asleep").await;
    gateway
        .request("POST", "/api/v1/services/survival/wake")
        .await;
    events.until_state("awake").await;
    let (mut bot, _reports) = bot_on(server).await;
    gateway
        .request("POST", "/api/v1/services/survival/sleep")
        .await;
    let said = reasons(&events.until_state("asleep").await);
    assert!(
        said.iter()
            .any(|r| r == "progress: the process exited with exit code 0"),
        "{said:#?}"
    );
    let lines = gateway.server_lines();
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
    gateway.stop().await;
}
