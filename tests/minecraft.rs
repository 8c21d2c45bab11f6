//! The `minecraft` listener end to end with real peers: a minecraft-protocol server run as the
//! `process` backend, and minecraft-protocol clients pinging and joining through wakegate
//! (tests/peers/minecraft/peer.js).
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wakegate::app::App;
use wakegate::event::{Kind, State};

fn peers() -> PathBuf {
    minecraft_peers(&["minecraft-protocol"])
}

/// A service whose backend is a minecraft-protocol server answering with `motd`, behind
/// `listen` (a `minecraft` listener).
fn server(name: &str, backend: SocketAddr, motd: &str, listen: Table) -> Service {
    let port = backend.port().to_string();
    svc(name)
        .idle("1m")
        .wake_timeout("30s")
        .backend(
            typed("process")
                .set("command", ["node", "peer.js", "server", &port, motd])
                .set("cwd", peers())
                .set("address", backend)
                .set("stop_command", "stop")
                .set("stop_timeout", "5s"),
        )
        .listen(listen)
}

/// A `minecraft` listener on a port the kernel picks.
fn minecraft() -> Table {
    listener("minecraft", ANY_PORT)
}

/// Starts a gateway in `dir` with `services`.
async fn start(dir: &std::path::Path, services: impl IntoIterator<Item = Service>) -> App {
    services
        .into_iter()
        .fold(gateway(dir), Config::service)
        .start()
        .await
}

/// Runs `node peer.js ARGS…` and returns the JSON line it prints.
async fn peer(args: &[&str]) -> Value {
    minecraft_peer(args, &[], DEADLINE).await
}

async fn ping(gateway: SocketAddr, host: &str) -> Value {
    peer(&["ping", &gateway.port().to_string(), host]).await
}

async fn login(gateway: SocketAddr, host: &str, name: &str) -> Value {
    peer(&["login", &gateway.port().to_string(), host, name]).await
}

fn motd(status: &Value) -> &str {
    status["description"]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no MOTD in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_ping_while_asleep_shows_the_sleeping_motd_and_does_not_wake() {
    let dir = temp_dir("mc-ping");
    let backend = free_addr();
    let listen = minecraft()
        .set("motd_asleep", "§7zzz — join to wake")
        .set("version_name", "sleepy");
    let app = start(&dir, [server("survival", backend, "backend motd", listen)]).await;
    let service = app.service("survival").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = app.subscribe();
    let gateway = app.listen_addr("survival").unwrap();

    for _ in 0..3 {
        let status = ping(gateway, "mc.example.com").await;
        assert_eq!(motd(&status), "§7zzz — join to wake", "{status}");
        assert_eq!(status["version"]["name"], "sleepy");
        // The client's own protocol (1.16.5), so the list shows the server as compatible.
        assert_eq!(status["version"]["protocol"], 754);
        assert_eq!(status["players"]["online"], 0);
    }

    assert_eq!(service.status().state, State::Asleep);
    assert!(
        events.try_recv().is_err(),
        "a status ping caused an event: {:?}",
        events.try_recv()
    );
    assert!(
        TcpStream::connect(backend).await.is_err(),
        "the backend was started"
    );
    assert!(
        !dir.join("survival.pid").exists(),
        "the backend was started"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_wakes_the_server_and_is_held_until_it_joins_through_wakegate() {
    let dir = temp_dir("mc-login");
    let backend = free_addr();
    let app = start(
        &dir,
        [server("survival", backend, "backend motd", minecraft())],
    )
    .await;
    let service = app.service("survival").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = app.subscribe();
    let gateway = app.listen_addr("survival").unwrap();

    let joined = login(gateway, "mc.example.com", "Steve").await;
    assert_eq!(joined, serde_json::json!({ "joined": true }));

    let seen = transitions_until(&mut events, State::Awake).await;
    let woke = seen.iter().find(|e| e.state == State::Waking).unwrap();
    // The wake names the player and their address.
    assert_eq!(detail(woke, "trigger"), "client", "{woke:?}");
    assert!(detail(woke, "client").starts_with("127.0.0.1:"), "{woke:?}");
    assert_eq!(woke.detail["player"], "Steve", "{woke:?}");
    assert_eq!(service.status().state, State::Awake);

    // Awake: status pings are the backend's own answers now.
    let status = ping(gateway, "mc.example.com").await;
    assert_eq!(motd(&status), "backend motd", "{status}");
    assert_eq!(status["players"]["max"], 10);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_kick_wakes_the_server_and_disconnects_with_the_message() {
    let dir = temp_dir("mc-kick");
    let backend = free_addr();
    let listen = minecraft()
        .set("join", "kick")
        .set("kick_message", "§eStarting, come back soon");
    let app = start(&dir, [server("survival", backend, "backend motd", listen)]).await;
    let service = app.service("survival").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let gateway = app.listen_addr("survival").unwrap();

    let kicked = login(gateway, "mc.example.com", "Alex").await;
    let reason = kicked["kicked"]
        .as_str()
        .unwrap_or_else(|| panic!("{kicked}"));
    assert!(reason.contains("Starting, come back soon"), "{reason}");

    wait_state(&service, State::Awake).await;
    let joined = login(gateway, "mc.example.com", "Alex").await;
    assert_eq!(joined, serde_json::json!({ "joined": true }));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hostnames_on_one_port_reach_two_services() {
    let dir = temp_dir("mc-routes");
    let bind = free_addr();
    let (one, two) = (free_addr(), free_addr());
    let routed = |name: &str| {
        listener("minecraft", bind)
            .set("hostnames", [format!("{name}.example.com")])
            .set("motd_asleep", format!("{name} sleeps"))
    };
    let app = start(
        &dir,
        [
            server("alpha", one, "alpha server", routed("alpha")),
            server("beta", two, "beta server", routed("beta")),
        ],
    )
    .await;
    let (alpha, beta) = (
        app.service("alpha").unwrap().clone(),
        app.service("beta").unwrap().clone(),
    );
    wait_state(&alpha, State::Asleep).await;
    wait_state(&beta, State::Asleep).await;
    let gateway = app.listen_addr("alpha").unwrap();
    assert_eq!(app.listen_addr("beta"), Some(gateway));

    assert_eq!(
        motd(&ping(gateway, "alpha.example.com").await),
        "alpha sleeps"
    );
    // Routing ignores case and a trailing dot.
    assert_eq!(
        motd(&ping(gateway, "BETA.example.com.").await),
        "beta sleeps"
    );
    // No default: an unknown name is told so, and nothing wakes.
    let unknown = ping(gateway, "gamma.example.com").await;
    assert!(motd(&unknown).contains("unknown server"), "{unknown}");

    let joined = login(gateway, "beta.example.com", "Steve").await;
    assert_eq!(joined, serde_json::json!({ "joined": true }));
    assert_eq!(beta.status().state, State::Awake);
    assert_eq!(alpha.status().state, State::Asleep);
    assert_eq!(
        motd(&ping(gateway, "beta.example.com").await),
        "beta server"
    );
    assert_eq!(
        motd(&ping(gateway, "alpha.example.com").await),
        "alpha sleeps"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_and_a_huge_frame_are_closed_without_disturbing_others() {
    let dir = temp_dir("mc-garbage");
    let backend = free_addr();
    let app = start(
        &dir,
        [server("survival", backend, "backend motd", minecraft())],
    )
    .await;
    let service = app.service("survival").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = app.subscribe();
    let gateway = app.listen_addr("survival").unwrap();

    // A handshake with a bad intent, and one whose protocol VarInt never ends.
    let mut bad_intent = TcpStream::connect(gateway).await.unwrap();
    bad_intent
        .write_all(&[0x06, 0x00, 0x2f, 0x01, b'x', 0x63, 0xdd, 0x07])
        .await
        .unwrap();
    let mut bad_varint = TcpStream::connect(gateway).await.unwrap();
    bad_varint
        .write_all(&[0x08, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])
        .await
        .unwrap();
    // A 1 MiB frame, announced and sent; and a client that says nothing at all.
    let mut huge = TcpStream::connect(gateway).await.unwrap();
    let silent = TcpStream::connect(gateway).await.unwrap();
    let mut frame = vec![0x80, 0x80, 0x40];
    frame.extend(std::iter::repeat_n(0xab, 1 << 20));
    let writer = tokio::spawn(async move {
        // The gateway closes it early: the write fails, which is the point.
        let _ = huge.write_all(&frame).await;
        huge
    });

    // A healthy client meanwhile.
    let status = ping(gateway, "mc.example.com").await;
    assert!(motd(&status).contains("sleeping"), "{status}");

    closed_by_gateway(bad_intent).await;
    closed_by_gateway(bad_varint).await;
    closed_by_gateway(writer.await.unwrap()).await;

    // And a player joins as if nothing happened.
    let joined = login(gateway, "mc.example.com", "Steve").await;
    assert_eq!(joined, serde_json::json!({ "joined": true }));
    drop(silent);

    // Only the player woke it.
    let seen = transitions_until(&mut events, State::Awake).await;
    assert_eq!(
        seen.iter()
            .filter(|e| e.kind == Kind::Transition && e.state == State::Waking)
            .count(),
        1,
        "{seen:#?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_boot_shows_the_waking_motd_and_a_held_player_past_hold_timeout_is_told_to_return() {
    let dir = temp_dir("mc-slow");
    let backend = free_addr();
    // The server opens its port only after 4 s: longer than the 1 s hold.
    let command = [
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "sleep 4; exec node peer.js server {} 'slow server'",
            backend.port()
        ),
    ];
    let service = svc("slow")
        .wake_timeout("30s")
        .process(&command, backend)
        .backend_set("cwd", peers())
        .backend_set("stop_timeout", "5s")
        .listen(
            minecraft()
                .set("hold_timeout", "1s")
                .set("motd_waking", "§eboot in progress"),
        );
    let app = start(&dir, [service]).await;
    let service = app.service("slow").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let gateway = app.listen_addr("slow").unwrap();

    let held = login(gateway, "mc.example.com", "Steve").await;
    let reason = held["kicked"].as_str().unwrap_or_else(|| panic!("{held}"));
    assert!(reason.contains("still starting"), "{reason}");
    assert_eq!(service.status().state, State::Waking);

    // No boot has finished yet, so no ETA: the MOTD says it is starting.
    let status = ping(gateway, "mc.example.com").await;
    assert_eq!(motd(&status), "§eboot in progress\n§7starting", "{status}");

    wait_state(&service, State::Awake).await;
    let joined = login(gateway, "mc.example.com", "Steve").await;
    assert_eq!(joined, serde_json::json!({ "joined": true }));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minecraft_readiness_and_health_checks_ping_the_real_server() {
    let dir = temp_dir("mc-health");
    let backend = free_addr();
    let service = server("smp", backend, "a real server", minecraft())
        .readiness(typed("minecraft"))
        .health(
            typed("minecraft")
                .set("interval", "100ms")
                .set("timeout", "300ms")
                .set("tolerance", 2)
                .set("action", "notify"),
        );
    let app = start(&dir, [service]).await;
    let smp = app.service("smp").unwrap().clone();
    let mut events = smp.subscribe();
    smp.wake("the test").await.unwrap().unwrap();
    wait_state(&smp, State::Awake).await;
    let stored = app.store().latest_events(Some("smp"), 10).unwrap();
    assert!(
        stored
            .iter()
            .any(|e| e.reason.ends_with("to answer a Minecraft status ping")),
        "{stored:#?}"
    );

    // Frozen, the server keeps its port but answers nothing: the health check notices.
    let record: Value =
        serde_json::from_slice(&std::fs::read(dir.join("smp.pid")).unwrap()).unwrap();
    let pid = rustix::process::Pid::from_raw(record["pid"].as_i64().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let seen = events_until(&mut events, |e| e.kind == Kind::Warning).await;
    let warning = seen.last().unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    assert!(
        warning.reason.contains("failed 2 times in a row")
            && warning.reason.contains("no answer within 300ms"),
        "{}",
        warning.reason
    );
    assert_eq!(smp.status().state, State::Awake, "notify must not stop it");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_the_backend_keep_it_awake_and_show_in_the_api() {
    let dir = temp_dir("mc-players");
    let backend = free_addr();
    let service = server("smp", backend, "players", minecraft())
        .idle("1s")
        .set("player_poll", "100ms");
    let app = start(&dir, [service]).await;
    let smp = app.service("smp").unwrap().clone();
    // A lease holds it awake while the player's client starts (slower than the idle timeout).
    let lease = smp
        .add_lease(
            Duration::from_secs(120),
            "a player is on the way",
            "the test",
        )
        .await
        .unwrap()
        .unwrap();
    wait_state(&smp, State::Awake).await;

    // A player joins the server directly, not through wakegate, and stays.
    let mut player = minecraft_player_stays(backend, "Alex").await;

    let mut status = smp.watch();
    tokio::time::timeout(DEADLINE, status.wait_for(|s| s.players == Some(1)))
        .await
        .expect("the player was never counted")
        .unwrap();
    assert!(smp.end_lease(lease.id, "the test").await.unwrap());
    let view = wakegate::api::ServiceView::of(&smp, app.store()).unwrap();
    assert_eq!(view.players, Some(1));
    // `wakegate status` shows the player too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wakegate"))
        .args(["status", "--api", &app.api_addr().to_string()])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The column is right-aligned: the value ends where its heading ends.
    let header = text.lines().next().expect(&text);
    let end = header.find("PLAYERS").expect(&text) + "PLAYERS".len();
    let row = text.lines().find(|l| l.starts_with("smp")).expect(&text);
    assert_eq!(row[..end].split_whitespace().last(), Some("1"), "{text}");
    assert_eq!(smp.connections(), 0, "the player came in past wakegate");
    // Well past the idle timeout, the player keeps it awake.
    let left = tokio::time::timeout(
        Duration::from_millis(2500),
        status.wait_for(|s| s.state != State::Awake),
    )
    .await;
    assert!(
        left.is_err(),
        "stopped with a player on: {:?}",
        smp.status()
    );

    // The player leaves: the next ping says 0, and it goes to sleep after the idle timeout.
    player.kill().await.unwrap();
    let mut events = smp.subscribe();
    wait_state(&smp, State::Asleep).await;
    let seen = events_until(&mut events, |e| e.state == State::Stopping).await;
    let stopping = seen.last().unwrap();
    assert_eq!(detail(stopping, "trigger"), "idle", "{stopping:?}");
    app.shutdown().await;
}
