//! The `bedrock` listener with real Bedrock peers (tests/peers/bedrock: bedrock-protocol from
//! npm with its native RakNet binding built from source by scripts/test, and mcstatus from
//! PyPI): bedrock-protocol's `createServer` as the backend (a `process` backend), its `ping`,
//! mcstatus's Bedrock ping and `createClient` as the clients. This file: what a player and a
//! server list see (pings while asleep, cold, held and warm joins, players keeping it awake);
//! `settings`: the listener's keys; `geyser`: one Java server with both listeners; `bad_input`:
//! floods and garbage.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod geyser;
mod settings;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};
use wakegate::app::App;
use wakegate::event::State;

/// The version both peers speak (bedrock-protocol's newest).
pub const VERSION: &str = "1.26.45";

pub fn peers() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/bedrock");
    assert!(
        dir.join("node_modules/raknet-native/build/Release/node-raknet.node")
            .exists(),
        "the Bedrock peers are not installed: run scripts/test (npm ci in tests/peers/bedrock and the raknet-native build)"
    );
    dir
}

/// A loopback address whose port is free for both TCP and UDP.
pub fn free_udp_addr() -> SocketAddr {
    loop {
        let addr = free_addr();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// The service `mc`: bedrock-protocol's server on `backend`, listening `boot_ms` after its
/// start, behind a bedrock listener with `listen_keys` (TOML lines) besides a few defaults.
pub fn bedrock_service(backend: SocketAddr, boot_ms: u32, listen_keys: &str) -> Service {
    let server = peers().join("server.js");
    let command = [
        "node".to_string(),
        server.display().to_string(),
        backend.port().to_string(),
        VERSION.to_string(),
    ];
    let mut listen = listener("bedrock", ANY_PORT).set("version", VERSION);
    for (key, value) in [("motd_asleep", "zzz asleep"), ("session_idle", "5s")] {
        if !listen_keys.contains(key) {
            listen = listen.set(key, value);
        }
    }
    svc("mc")
        .idle("1s")
        .process(&command, backend)
        .env("BOOT_DELAY_MS", boot_ms.to_string())
        .readiness(typed("bedrock"))
        .listen(listen.raw(listen_keys))
}

/// Starts a gateway in `dir` with `service`; it, its listener and the backend's address.
pub async fn start(dir: &Path, service: Service, backend: SocketAddr) -> Bedrock {
    let app = gateway(dir).service(service).start().await;
    let addr = app.listen_addr("mc").unwrap();
    Bedrock { app, addr, backend }
}

/// A gateway with one Bedrock service `mc`.
pub struct Bedrock {
    pub app: App,
    /// The bedrock listener.
    pub addr: SocketAddr,
    /// The bedrock-protocol server's own address.
    pub backend: SocketAddr,
}

impl Bedrock {
    /// A gateway with `mc` behind a bedrock listener with `listen_keys`; the server boots at
    /// once.
    pub async fn new(dir: &Path, listen_keys: &str) -> Bedrock {
        let backend = free_udp_addr();
        start(dir, bedrock_service(backend, 0, listen_keys), backend).await
    }

    pub fn mc(&self) -> &wakegate::service::ServiceHandle {
        self.app.service("mc").unwrap()
    }

    pub async fn until_state(&self, state: State) {
        wait_state(self.mc(), state).await;
    }

    /// Waits until the metrics count `n` refusals for `reason` on the listener, at least.
    pub async fn until_refused(&self, reason: &str, n: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let counted = self.refused(reason).await;
            if counted >= n {
                return counted;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{counted} {reason} refusals, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn refused(&self, reason: &str) -> u64 {
        refused(&metrics(self.app.api_addr()).await, Some(self.addr), reason)
    }

    /// Live sessions on the listener, from the metrics.
    pub async fn sessions(&self) -> u64 {
        let text = metrics(self.app.api_addr()).await;
        let prefix = format!(
            "wakegate_listener_connections{{listener=\"{}\",type=\"bedrock\"}} ",
            self.addr
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} line:\n{text}"))
            .parse()
            .unwrap()
    }
}

/// bedrock-protocol's `ping`: the advertisement it read.
pub async fn ping(addr: SocketAddr) -> Value {
    let out = try_ping(addr).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// bedrock-protocol's `ping`, which may go unanswered.
pub async fn try_ping(addr: SocketAddr) -> std::process::Output {
    let run = Command::new("node")
        .current_dir(peers())
        .args([
            "client.js",
            "ping",
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PEER_DEADLINE, run)
        .await
        .expect("bedrock-protocol's ping did not finish")
        .unwrap()
}

/// mcstatus's Bedrock ping (`BedrockServer.lookup(…).status()`): what it read, or its error.
pub async fn mcstatus_bedrock(addr: SocketAddr) -> Result<Value, String> {
    let run = Command::new(python())
        .args(["ping.py", &addr.port().to_string()])
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
    match line.get("status") {
        Some(status) => Ok(status.clone()),
        None => Err(line["error"].to_string()),
    }
}

/// bedrock-protocol's `createClient` joining `addr` as `name`, staying `hold_ms` once spawned,
/// waiting up to `connect_ms` for the server to answer its connection requests.
pub fn join_with(addr: SocketAddr, name: &str, hold_ms: u32, connect_ms: u32) -> Player {
    player(addr, name, hold_ms, connect_ms, false)
}

fn player(addr: SocketAddr, name: &str, hold_ms: u32, connect_ms: u32, on_go: bool) -> Player {
    let mut child = Command::new("node")
        .current_dir(peers())
        .args([
            "client.js",
            "join",
            &addr.ip().to_string(),
            &addr.port().to_string(),
            VERSION,
            name,
            &hold_ms.to_string(),
        ])
        .env("CONNECT_TIMEOUT_MS", connect_ms.to_string())
        .env("GO_ON_STDIN", if on_go { "1" } else { "0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    Player {
        stdin: child.stdin.take(),
        child,
        lines,
        seen: String::new(),
    }
}

/// A player loaded and ready to join when told to ([`Player::go`]): its join then starts
/// within milliseconds, not after node has loaded bedrock-protocol.
pub async fn ready_to_join(addr: SocketAddr, name: &str, hold_ms: u32) -> Player {
    let mut player = player(addr, name, hold_ms, 20_000, true);
    player.until_line("ready").await;
    player
}

/// A player who waits long enough for a boot (20 s).
pub fn join(addr: SocketAddr, name: &str, hold_ms: u32) -> Player {
    join_with(addr, name, hold_ms, 20_000)
}

/// A bedrock-protocol client process (killed when dropped).
pub struct Player {
    child: tokio::process::Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// What it printed so far.
    seen: String,
}

impl Player {
    /// Waits until the player is in the world (it stays its `hold_ms` after).
    pub async fn spawned(&mut self) {
        self.until_line("spawned ").await;
    }

    /// Starts the join of a player made by [`ready_to_join`].
    pub async fn go(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Waits for a line that starts with `start`.
    async fn until_line(&mut self, start: &str) {
        let found = tokio::time::timeout(PEER_DEADLINE, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.starts_with(start) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "no `{start}` line from the player; it printed:\n{}",
            self.seen
        );
    }

    /// Waits for the client to end; what it printed.
    pub async fn finish(mut self) -> Played {
        let (out, seen) = tokio::time::timeout(PEER_DEADLINE, async move {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                self.seen.push_str(&line);
                self.seen.push('\n');
            }
            (self.child.wait_with_output().await.unwrap(), self.seen)
        })
        .await
        .expect("the client did not finish");
        Played {
            ok: out.status.success(),
            stdout: seen,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What a client printed.
pub struct Played {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Played {
    /// Asserts the player logged in and was spawned in the world.
    pub fn assert_spawned(&self) {
        assert!(
            self.ok && self.stdout.contains("joined ") && self.stdout.contains("spawned "),
            "the player did not get in:\n{}\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts the player never got in.
    pub fn assert_kept_out(&self) {
        assert!(
            !self.ok && !self.stdout.contains("joined "),
            "the player got in:\n{}\n{}",
            self.stdout,
            self.stderr
        );
    }
}

#[tokio::test]
async fn a_ping_while_asleep_gets_the_sleeping_motd_and_wakes_nothing() {
    let dir = temp_dir("bedrock-ping");
    let gw = Bedrock::new(&dir, "").await;
    for _ in 0..3 {
        let ad = ping(gw.addr).await;
        assert_eq!(ad["motd"], "zzz asleep", "{ad}");
        assert_eq!(ad["playersOnline"], 0, "{ad}");
        assert_eq!(ad["version"], VERSION, "{ad}");
        // The client is sent to wakegate's port, not the server's.
        assert_eq!(ad["portV4"], gw.addr.port(), "{ad}");
    }
    // Nothing was started: the service never left its first state.
    let status = gw.mc().status();
    assert_eq!(status.state, State::Asleep);
    assert_eq!(status.expected_boot, None);
    assert_eq!(starts_in_log(&dir, "mc"), 0);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn mcstatus_bedrock_ping_while_asleep_gets_the_sleeping_motd_and_wakes_nothing() {
    let dir = temp_dir("bedrock-mcstatus");
    let gw = Bedrock::new(&dir, "max_players = 33").await;
    for _ in 0..3 {
        let status = mcstatus_bedrock(gw.addr).await.unwrap();
        assert_eq!(status["motd"], "zzz asleep", "{status}");
        assert_eq!(status["players_online"], 0, "{status}");
        assert_eq!(status["players_max"], 33, "{status}");
        assert_eq!(status["version"], VERSION, "{status}");
        assert_eq!(status["brand"], "MCPE", "{status}");
    }
    assert_eq!(gw.mc().state(), State::Asleep);
    assert_eq!(gw.sessions().await, 0);
    assert_eq!(starts_in_log(&dir, "mc"), 0);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_join_wakes_the_server_sees_it_starting_and_gets_in_once_it_is_up() {
    let dir = temp_dir("bedrock-join");
    let gw = Bedrock::new(&dir, "").await;
    let mut watch = gw.mc().watch();
    let client = join(gw.addr, "steve", 3000);
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.state != State::Asleep))
        .await
        .unwrap()
        .unwrap();
    // While it wakes (or if it is up already), the server list shows it starting.
    let during = ping(gw.addr).await;
    if gw.mc().state() == State::Waking {
        let motd = during["motd"].as_str().unwrap();
        assert!(motd.contains("starting — ready in"), "{during}");
    }
    client.finish().await.assert_spawned();
    // Awake: a ping gets the server's own pong, with wakegate's port.
    let ad = ping(gw.addr).await;
    assert_eq!(ad["motd"], "real bedrock server", "{ad}");
    assert_eq!(ad["portV4"], gw.addr.port(), "{ad}");
    // A warm join goes straight in, and spawns, with no second start.
    join(gw.addr, "alex", 0).finish().await.assert_spawned();
    assert_eq!(starts_in_log(&dir, "mc"), 1);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_join_while_a_wake_is_in_flight_gets_in_once_the_server_is_up() {
    let dir = temp_dir("bedrock-join-waking");
    let backend = free_udp_addr();
    // The server takes 2 s to listen: the second player arrives in the middle of it. (Not much
    // longer: RakNet's client gives up after 12 unanswered requests, 6 s.)
    let gw = start(&dir, bedrock_service(backend, 2000, ""), backend).await;
    let mut second = ready_to_join(gw.addr, "second", 1000).await;
    let first = join(gw.addr, "first", 1000);
    gw.until_state(State::Waking).await;
    second.go().await;
    // The second player's connection request made a session while the server was waking.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while gw.sessions().await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second player never tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        gw.mc().state(),
        State::Waking,
        "the boot was shorter than the test"
    );
    // Both get in with the client they started with, once the server is up; one start only.
    first.finish().await.assert_spawned();
    second.finish().await.assert_spawned();
    assert_eq!(starts_in_log(&dir, "mc"), 1);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn players_on_the_server_keep_it_awake() {
    let dir = temp_dir("bedrock-players");
    let backend = free_udp_addr();
    let service = bedrock_service(backend, 0, "").set("player_poll", "200ms");
    let gw = start(&dir, service, backend).await;
    let mc = gw.mc().clone();
    // A lease wakes it and holds it awake while the player's client starts.
    let lease = mc
        .add_lease(
            Duration::from_secs(120),
            "a player is on the way",
            "the test",
        )
        .await
        .unwrap()
        .unwrap();
    gw.until_state(State::Awake).await;
    // A player who joined past wakegate (straight to the server): no session holds it awake,
    // only the players the server's pong counts.
    let player = join(backend, "direct", 4000);
    let mut watch = mc.watch();
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.players == Some(1)))
        .await
        .expect("the player poll never counted the player")
        .unwrap();
    mc.end_lease(lease.id, "the test").await.unwrap();
    // Four times the idle timeout, and still awake while the player is on.
    player.finish().await.assert_spawned();
    assert_eq!(mc.state(), State::Awake);
    // Once the player has left, it goes to sleep.
    gw.until_state(State::Asleep).await;
    gw.app.shutdown().await;
}
