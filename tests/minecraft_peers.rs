//! The `minecraft` listener with the real thing on both sides: flying-squid (a Java edition
//! server in Node) run as the `process` backend, mineflayer bots joining and playing through
//! wakegate, and mcstatus pinging it (tests/peers/minecraft: squid.js, bot.js, ping.py).
//!
//! The main scenario runs on every version the issue names; the others on one version each.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use wakegate::event::{Kind, State};

/// A Node server booting and bots joining on a busy 2-core machine: slower than a plain
/// socket, so a longer deadline than `DEADLINE` (a passing test never waits this long).
const PEER_DEADLINE: Duration = Duration::from_secs(60);

fn peers() -> PathBuf {
    minecraft_peers(&["flying-squid", "mineflayer"])
}

fn python() -> PathBuf {
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
fn squid(name: &str, backend: SocketAddr, version: &str, listen: Table) -> Service {
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
async fn mcstatus(port: u16) -> Value {
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

fn motd(status: &Value) -> &str {
    status["description"]["text"]
        .as_str()
        .or_else(|| status["description"].as_str())
        .unwrap_or_else(|| panic!("no MOTD in {status}"))
}

/// A `node bot.js` process: mineflayer bots that report what happens to them as JSON lines
/// and stay until told to quit.
struct Bots {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Everything read so far, for failure messages.
    seen: Vec<Value>,
}

impl Bots {
    /// Bots named `names` connecting to `port`, writing `host` in their handshake.
    fn join(port: u16, host: &str, version: &str, names: &[&str]) -> Bots {
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
    async fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
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

    /// Waits until `name` is in the world.
    async fn spawned(&mut self, name: &str) {
        self.until(&format!("spawn of {name}"), |r| {
            r["bot"] == name && r.get("spawn").is_some()
        })
        .await;
    }

    async fn say(&mut self, name: &str, text: &str) {
        self.stdin
            .write_all(format!("chat {name} {text}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Every bot leaves the server; returns once the process has ended.
    async fn quit(mut self) {
        self.stdin.write_all(b"quit\n").await.unwrap();
        self.stdin.flush().await.unwrap();
        tokio::time::timeout(PEER_DEADLINE, self.child.wait())
            .await
            .expect("the bots did not leave")
            .unwrap();
    }
}

/// The pid the process backend recorded for `service`.
fn backend_pid(dir: &Path, service: &str) -> u32 {
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{service}.pid"))).unwrap())
            .unwrap();
    record["pid"].as_u64().unwrap() as u32
}

/// Asleep, a ping shows the sleeping MOTD and wakes nothing; a bot's login wakes flying-squid
/// and, held, spawns in its world through wakegate, with a second bot beside it; when both
/// have left, the server sleeps after idle_timeout and its process is gone.
async fn wake_play_and_sleep(version: &str) {
    let dir = temp_dir(&format!("mcp-wake-{version}"));
    let backend = free_addr();
    let listen =
        listener("minecraft", ANY_PORT).set("motd_asleep", "§7survival sleeps — join to wake");
    let app = gateway(&dir)
        .service(squid("survival", backend, version, listen))
        .start()
        .await;
    let service = app.service("survival").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = app.subscribe();
    let gateway = app.listen_addr("survival").unwrap();

    let status = mcstatus(gateway.port()).await;
    assert_eq!(
        motd(&status),
        "§7survival sleeps — join to wake",
        "{status}"
    );
    assert_eq!(status["players"]["online"], 0, "{status}");
    assert_eq!(
        service.status().state,
        State::Asleep,
        "a status ping woke it"
    );
    assert!(
        events.try_recv().is_err(),
        "a status ping caused an event: {:?}",
        events.try_recv()
    );
    assert!(!dir.join("survival.pid").exists(), "the server was started");

    let mut bots = Bots::join(gateway.port(), "mc.example.com", version, &["Steve"]);
    bots.spawned("Steve").await;
    let seen = transitions_until(&mut events, State::Awake).await;
    let woke = seen.iter().find(|e| e.state == State::Waking).unwrap();
    assert_eq!(woke.detail["player"], "Steve", "{woke:?}");
    let pid = backend_pid(&dir, "survival");
    assert!(alive(pid));

    // Awake: a second bot joins at once, and the first sees it arrive in the chat.
    let mut second = Bots::join(gateway.port(), "mc.example.com", version, &["Alex"]);
    second.spawned("Alex").await;
    bots.until("Alex's arrival in Steve's chat", |r| {
        r["bot"] == "Steve"
            && r["chat"]
                .as_str()
                .is_some_and(|c| c.contains("Alex joined"))
    })
    .await;
    assert_eq!(motd(&mcstatus(gateway.port()).await), "survival is awake");
    assert_eq!(service.connections(), 2);

    bots.quit().await;
    second.quit().await;
    let seen = transitions_until(&mut events, State::Asleep).await;
    let stopping = seen.iter().find(|e| e.state == State::Stopping).unwrap();
    // No connection for 2s (and less than 3).
    assert_eq!(detail(stopping, "trigger"), "idle", "{stopping:?}");
    let idle_ms = stopping.detail["idle_ms"].as_u64().unwrap();
    assert!((2000..3000).contains(&idle_ms), "{stopping:?}");
    assert!(!alive(pid), "the server process is still running");
    let status = mcstatus(gateway.port()).await;
    assert!(motd(&status).contains("survival sleeps"), "{status}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_1_16_5_a_bot_wakes_flying_squid_plays_through_wakegate_and_it_sleeps_after() {
    wake_play_and_sleep("1.16.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_1_18_2_a_bot_wakes_flying_squid_plays_through_wakegate_and_it_sleeps_after() {
    wake_play_and_sleep("1.18.2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_1_20_4_a_bot_wakes_flying_squid_plays_through_wakegate_and_it_sleeps_after() {
    wake_play_and_sleep("1.20.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_1_21_4_a_bot_wakes_flying_squid_plays_through_wakegate_and_it_sleeps_after() {
    wake_play_and_sleep("1.21.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hostnames_on_one_port_take_bots_to_two_different_servers() {
    let dir = temp_dir("mcp-routes");
    let bind = free_addr();
    let (one, two) = (free_addr(), free_addr());
    let host = |name: &str| listener("minecraft", bind).set("hostnames", [name]);
    let app = gateway(&dir)
        .service(squid("lobby", one, "1.20.4", host("lobby.example.com")))
        .service(squid(
            "creative",
            two,
            "1.20.4",
            host("creative.example.com"),
        ))
        .start()
        .await;
    let (lobby, creative) = (
        app.service("lobby").unwrap().clone(),
        app.service("creative").unwrap().clone(),
    );
    wait_state(&lobby, State::Asleep).await;
    wait_state(&creative, State::Asleep).await;
    let gateway = app.listen_addr("lobby").unwrap();

    let mut in_lobby = Bots::join(gateway.port(), "lobby.example.com", "1.20.4", &["Steve"]);
    let mut in_creative = Bots::join(gateway.port(), "creative.example.com", "1.20.4", &["Alex"]);
    in_lobby.spawned("Steve").await;
    in_creative.spawned("Alex").await;
    assert_eq!(lobby.status().state, State::Awake);
    assert_eq!(creative.status().state, State::Awake);

    // Two servers, two worlds: each server has exactly its own player (flying-squid's status
    // lists them), and neither bot saw the other join.
    let direct = |addr: SocketAddr| async move { mcstatus(addr.port()).await };
    let (lobby_status, creative_status) = (direct(one).await, direct(two).await);
    let names = |status: &Value| -> Vec<String> {
        status["players"]["sample"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(lobby_status["players"]["online"], 1, "{lobby_status}");
    assert_eq!(creative_status["players"]["online"], 1, "{creative_status}");
    if !names(&lobby_status).is_empty() {
        assert_eq!(names(&lobby_status), ["Steve"], "{lobby_status}");
        assert_eq!(names(&creative_status), ["Alex"], "{creative_status}");
    }
    in_lobby.say("Steve", "hello lobby").await;
    in_lobby
        .until("Steve's own line", |r| {
            r["chat"]
                .as_str()
                .is_some_and(|c| c.contains("hello lobby"))
        })
        .await;
    assert!(
        !in_lobby
            .seen
            .iter()
            .chain(&in_creative.seen)
            .any(|r| r["chat"].as_str().is_some_and(|c| {
                (r["bot"] == "Steve" && c.contains("Alex"))
                    || (r["bot"] == "Alex" && c.contains("Steve"))
            })),
        "the bots met on one server: {:#?} {:#?}",
        in_lobby.seen,
        in_creative.seen
    );
    in_lobby.quit().await;
    in_creative.quit().await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_handshake_and_a_1_mib_frame_do_not_disturb_a_bot_playing() {
    let dir = temp_dir("mcp-garbage");
    let backend = free_addr();
    let listen = listener("minecraft", ANY_PORT);
    let app = gateway(&dir)
        .service(squid("survival", backend, "1.18.2", listen))
        .start()
        .await;
    let service = app.service("survival").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let gateway = app.listen_addr("survival").unwrap();

    let mut bots = Bots::join(gateway.port(), "mc.example.com", "1.18.2", &["Steve"]);
    bots.spawned("Steve").await;
    let mut events = app.subscribe();

    // While Steve plays: a handshake whose protocol VarInt never ends, and a 1 MiB frame.
    let mut bad_varint = TcpStream::connect(gateway).await.unwrap();
    bad_varint
        .write_all(&[0x08, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
        .await
        .unwrap();
    let mut huge = TcpStream::connect(gateway).await.unwrap();
    let mut frame = vec![0x80, 0x80, 0x40];
    frame.extend(std::iter::repeat_n(0xab, 1 << 20));
    let writer = tokio::spawn(async move {
        // The gateway closes it early: the write fails, which is the point.
        let _ = huge.write_all(&frame).await;
        huge
    });
    closed_by_gateway(bad_varint).await;
    closed_by_gateway(writer.await.unwrap()).await;

    // Steve is still there: the server's next keep-alive reaches him, and what he says in the
    // chat comes back from the server.
    let last = bots
        .seen
        .iter()
        .filter_map(|r| r["keep_alive"].as_u64())
        .max()
        .unwrap_or(0);
    bots.until("a keep-alive after the garbage", |r| {
        r["keep_alive"].as_u64().is_some_and(|n| n > last)
    })
    .await;
    bots.say("Steve", "still here").await;
    bots.until("Steve's line back from the server", |r| {
        r["chat"].as_str().is_some_and(|c| c.contains("still here"))
    })
    .await;
    assert_eq!(service.status().state, State::Awake);
    assert_eq!(service.connections(), 1);
    while let Ok(event) = events.try_recv() {
        assert_ne!(
            event.kind,
            Kind::Transition,
            "the garbage moved it: {event:?}"
        );
    }
    bots.quit().await;
    app.shutdown().await;
}
