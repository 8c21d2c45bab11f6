//! The `bedrock` listener with real Bedrock peers from npm (`bedrock-protocol` in
//! tests/peers/bedrock, its native RakNet binding built from source by scripts/test): its
//! `createServer` as the backend (a `process` backend), its `ping` and `createClient` as the
//! clients. A ping while asleep gets wakegate's own pong and wakes nothing; a join wakes the
//! server, sees the starting state in the pong, and gets in once it is up; players on the
//! server (from its own pong) keep it awake.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::process::Command;
use wakegate::app::App;
use wakegate::event::State;

/// The version both peers speak (bedrock-protocol's newest).
const VERSION: &str = "1.26.45";

fn peers() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/bedrock");
    assert!(
        dir.join("node_modules/raknet-native/build/Release/node-raknet.node")
            .exists(),
        "the Bedrock peers are not installed: run scripts/test (npm ci in tests/peers/bedrock and the raknet-native build)"
    );
    dir
}

fn free_udp_addr() -> SocketAddr {
    loop {
        let addr = free_addr();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// A gateway with a service `mc`: the bedrock-protocol server behind a bedrock listener.
async fn gateway_with(dir: &Path, service_keys: &[(&str, &str)]) -> (App, SocketAddr, SocketAddr) {
    let backend = free_udp_addr();
    let server = peers().join("server.js");
    let command = [
        "node".to_string(),
        server.display().to_string(),
        backend.port().to_string(),
        VERSION.to_string(),
    ];
    let mut service = svc("mc")
        .idle("1s")
        .process(&command, backend)
        .readiness(typed("bedrock"))
        .listen(
            listener("bedrock", ANY_PORT)
                .set("version", VERSION)
                .set("motd_asleep", "zzz asleep")
                .set("session_idle", "5s"),
        );
    for (key, value) in service_keys {
        service = service.set(key, *value);
    }
    let app = gateway(dir).service(service).start().await;
    let addr = app.listen_addr("mc").unwrap();
    (app, addr, backend)
}

/// bedrock-protocol's `ping`: the advertisement it read.
async fn ping(addr: SocketAddr) -> Value {
    let out = Command::new("node")
        .current_dir(peers())
        .args([
            "client.js",
            "ping",
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// bedrock-protocol's `createClient` joining `addr` as `name`, staying `hold_ms`.
fn join(addr: SocketAddr, name: &str, hold_ms: u32) -> tokio::process::Child {
    Command::new("node")
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn until_state(app: &App, state: State) {
    let mut watch = app.service("mc").unwrap().watch();
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| panic!("the service never became {state:?}"))
        .unwrap();
}

#[tokio::test]
async fn a_ping_while_asleep_gets_the_sleeping_motd_and_wakes_nothing() {
    let dir = temp_dir("bedrock-ping");
    let (app, addr, _) = gateway_with(&dir, &[]).await;
    for _ in 0..3 {
        let ad = ping(addr).await;
        assert_eq!(ad["motd"], "zzz asleep", "{ad}");
        assert_eq!(ad["playersOnline"], 0, "{ad}");
        assert_eq!(ad["version"], VERSION, "{ad}");
        // The client is sent to wakegate's port, not the server's.
        assert_eq!(ad["portV4"], addr.port(), "{ad}");
    }
    // Nothing was started: the service never left its first state.
    let status = app.service("mc").unwrap().status();
    assert_eq!(status.state, State::Asleep);
    assert_eq!(status.expected_boot, None);
    app.shutdown().await;
}

#[tokio::test]
async fn a_join_wakes_the_server_sees_it_starting_and_gets_in_once_it_is_up() {
    let dir = temp_dir("bedrock-join");
    let (app, addr, _) = gateway_with(&dir, &[]).await;
    let mut watch = app.service("mc").unwrap().watch();
    let client = join(addr, "steve", 3000);
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.state != State::Asleep))
        .await
        .unwrap()
        .unwrap();
    // While it wakes (or if it is up already), the server list shows it starting.
    let during = ping(addr).await;
    let state = app.service("mc").unwrap().state();
    if state == State::Waking {
        let motd = during["motd"].as_str().unwrap();
        assert!(motd.contains("starting — ready in"), "{during}");
    }
    let out = tokio::time::timeout(DEADLINE, client.wait_with_output())
        .await
        .expect("the client did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("joined"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Awake: a ping gets the server's own pong, with wakegate's port.
    let ad = ping(addr).await;
    assert_eq!(ad["motd"], "real bedrock server", "{ad}");
    assert_eq!(ad["portV4"], addr.port(), "{ad}");
    // A second join goes straight in.
    let again = join(addr, "alex", 0).wait_with_output().await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("joined"));
    app.shutdown().await;
}

#[tokio::test]
async fn players_on_the_server_keep_it_awake() {
    let dir = temp_dir("bedrock-players");
    let (app, _, backend) = gateway_with(&dir, &[("player_poll", "200ms")]).await;
    let mc = app.service("mc").unwrap().clone();
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
    until_state(&app, State::Awake).await;
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
    let out = player.wait_with_output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("joined"));
    assert_eq!(mc.state(), State::Awake);
    // Once the player has left, it goes to sleep.
    until_state(&app, State::Asleep).await;
    app.shutdown().await;
}
