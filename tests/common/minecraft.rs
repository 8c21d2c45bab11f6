//! The Minecraft peers of the tests (tests/peers/minecraft): the real `minecraft-protocol`
//! client driven by `peer.js`, flying-squid servers (`squid.js`) as `process` backends,
//! mineflayer bots (`bot.js`) and mcstatus pings (`ping.py`), run with node and python.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::DEADLINE;
use super::config::{Service, Table, svc, typed};

/// The folder of the Minecraft peers (tests/peers/minecraft), once `packages` are installed
/// there.
pub fn minecraft_peers(packages: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/minecraft");
    for package in packages {
        assert!(
            dir.join("node_modules").join(package).exists(),
            "{package} is not installed; run `npm ci --prefix tests/peers/minecraft` \
             (scripts/test does)"
        );
    }
    dir
}

/// Runs `node peer.js ARGS…` (tests/peers/minecraft) with `env` and returns the JSON line it
/// prints last.
pub async fn minecraft_peer(
    args: &[&str],
    env: &[(&str, &str)],
    deadline: Duration,
) -> serde_json::Value {
    let run = tokio::process::Command::new("node")
        .arg("peer.js")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(minecraft_peers(&["minecraft-protocol"]))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(deadline, run)
        .await
        .unwrap_or_else(|_| panic!("node peer.js {args:?} did not finish"))
        .expect("cannot run node; scripts/test installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "node peer.js {args:?} printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

/// A Minecraft player (peer.js, 1.16.5) that joins `address` as `name` and stays until killed;
/// returned once it is in.
pub async fn minecraft_player_stays(address: SocketAddr, name: &str) -> tokio::process::Child {
    let mut player = tokio::process::Command::new("node")
        .args([
            "peer.js",
            "login",
            &address.port().to_string(),
            "127.0.0.1",
            name,
            "1.16.5",
            "stay",
        ])
        .current_dir(minecraft_peers(&["minecraft-protocol"]))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(player.stdout.take().unwrap()));
    let joined = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(joined.as_deref(), Some(r#"{"joined":true}"#));
    player
}

/// A Node server booting and bots joining on a busy 2-core machine: slower than a plain
/// socket, so a longer deadline than `DEADLINE` (a passing test never waits this long).
pub const PEER_DEADLINE: Duration = Duration::from_secs(60);

pub fn peers() -> PathBuf {
    minecraft_peers(&["flying-squid", "mineflayer"])
}

pub fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-peers/bin/python");
    assert!(
        python.exists(),
        "the peers' virtualenv is missing; run scripts/test, which installs \
         tests/peers/requirements.txt (mcstatus) into .venv-peers"
    );
    python
}

/// A service whose backend is flying-squid for `version` on `backend`, ready when it prints
/// vanilla's `Done (…)!` line, behind `listen` (a `minecraft` listener; players are held up
/// to 25 s).
pub fn squid(name: &str, backend: SocketAddr, version: &str, listen: Table) -> Service {
    let port = backend.port().to_string();
    let motd = format!("{name} is awake");
    svc(name)
        .idle("2s")
        .wake_timeout("60s")
        .set("player_poll", "500ms")
        .backend(
            typed("process")
                .set("command", ["node", "squid.js", &port, version, &motd])
                .set("cwd", peers())
                .set("address", backend)
                .set("stop_command", "stop")
                .set("stop_timeout", "10s"),
        )
        .readiness(typed("log").set("pattern", r"Done \(\d"))
        .listen(listen.set("hold_timeout", "25s"))
}

/// One status ping with mcstatus's Python API; the server's status answer.
pub async fn mcstatus(port: u16) -> Value {
    let run = Command::new(python())
        .args(["ping.py", &port.to_string()])
        .current_dir(peers())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PEER_DEADLINE, run)
        .await
        .expect("mcstatus did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: Value = serde_json::from_str(stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "ping.py printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    }))
    .unwrap();
    line.get("status")
        .unwrap_or_else(|| panic!("mcstatus failed: {line}"))
        .clone()
}

pub fn motd(status: &Value) -> &str {
    status["description"]["text"]
        .as_str()
        .or_else(|| status["description"].as_str())
        .unwrap_or_else(|| panic!("no MOTD in {status}"))
}

/// A `node bot.js` process: mineflayer bots that report what happens to them as JSON lines
/// and stay until told to quit.
pub struct Bots {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Everything read so far, for failure messages.
    pub seen: Vec<Value>,
}

impl Bots {
    /// Bots named `names` connecting to `port`, writing `host` in their handshake.
    pub fn join(port: u16, host: &str, version: &str, names: &[&str]) -> Bots {
        let mut child = Command::new("node")
            .args(["bot.js", &port.to_string(), host, version])
            .args(names)
            .current_dir(peers())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot run node; scripts/test installs it");
        Bots {
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            seen: Vec::new(),
        }
    }

    /// Reads the bots' reports until one matches `want`, and returns it. A bot that is kicked,
    /// fails or is disconnected meanwhile fails the test.
    pub async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let found = tokio::time::timeout(PEER_DEADLINE, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let Ok(report) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                self.seen.push(report.clone());
                if want(&report) {
                    return Ok(report);
                }
                if ["kicked", "error", "end"]
                    .iter()
                    .any(|k| report.get(k).is_some())
                {
                    return Err(report);
                }
            }
            Err(Value::Null)
        })
        .await;
        match found {
            Ok(Ok(report)) => report,
            Ok(Err(report)) => panic!("before {what}: {report} (saw {:#?})", self.seen),
            Err(_) => panic!("no {what} in time (saw {:#?})", self.seen),
        }
    }

    /// Waits until `name` is in the world; its report (`spawn`: ms from its connect).
    pub async fn spawned(&mut self, name: &str) -> Value {
        self.until(&format!("spawn of {name}"), |r| {
            r["bot"] == name && r.get("spawn").is_some()
        })
        .await
    }

    pub async fn say(&mut self, name: &str, text: &str) {
        self.stdin
            .write_all(format!("chat {name} {text}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Every bot leaves the server; returns once the process has ended.
    pub async fn quit(mut self) {
        self.stdin.write_all(b"quit\n").await.unwrap();
        self.stdin.flush().await.unwrap();
        tokio::time::timeout(PEER_DEADLINE, self.child.wait())
            .await
            .expect("the bots did not leave")
            .unwrap();
    }
}

/// The pid the process backend recorded for `service`.
pub fn backend_pid(dir: &Path, service: &str) -> u32 {
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{service}.pid"))).unwrap())
            .unwrap();
    record["pid"].as_u64().unwrap() as u32
}
