//! The direct handoff (`transfer_to = "backend"`) with real peers (tests/peers/minecraft/peer.js
//! on minecraft-protocol): a 1.21 player is sent to the server's own port with a Transfer
//! packet, wakegate holds no connection for it, and the player poll keeps the service awake;
//! an older client is forwarded; a server that refuses transfers gets its players through
//! wakegate, with a warning that says what to set.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wakegate::app::App;
use wakegate::event::{Event, Kind, State};
use wakegate::service::ServiceHandle;

fn peers() -> PathBuf {
    minecraft_peers(&["minecraft-protocol"])
}

/// A service whose backend is peer.js's server for `version` on `backend` (taking transfers
/// with `accepts_transfers`), behind a `minecraft` listener that hands players to it.
fn service(name: &str, backend: SocketAddr, version: &str, accepts_transfers: bool) -> Service {
    let port = backend.port().to_string();
    let command = ["node", "peer.js", "server", &port, name, version];
    // Long enough for a handed-off player's login at the server and the next poll, on a busy
    // machine: until the poll counts it, nothing keeps the service awake.
    let mut service = svc(name)
        .idle("5s")
        .wake_timeout("60s")
        .set("player_poll", "300ms")
        .backend(
            typed("process")
                .set("command", command)
                .set("cwd", peers())
                .set("address", backend)
                .set("stop_command", "stop")
                .set("stop_timeout", "5s"),
        );
    if accepts_transfers {
        service = service.env("ACCEPTS_TRANSFERS", "1");
    }
    service
}

/// A `minecraft` listener on a port the kernel picks that hands players to the server.
fn handing_off() -> Table {
    listener("minecraft", ANY_PORT).set("transfer_to", "backend")
}

async fn start(dir: &std::path::Path, services: impl IntoIterator<Item = Service>) -> App {
    services
        .into_iter()
        .fold(gateway(dir), Config::service)
        .start()
        .await
}

/// A player (peer.js) joining `gateway` as `name` with a `version` client, staying in the world
/// until the returned process is dropped; with what it printed once in (or kicked).
async fn player(gateway: SocketAddr, name: &str, version: &str) -> (Child, Value) {
    let port = gateway.port().to_string();
    let mut child = Command::new("node")
        .args([
            "peer.js",
            "login",
            &port,
            "mc.example.com",
            name,
            version,
            "stay",
        ])
        .current_dir(peers())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run node; scripts/test installs it");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("{name} printed nothing in time"))
        .unwrap()
        .unwrap_or_else(|| panic!("{name} ended without a word"));
    (child, serde_json::from_str(&line).unwrap())
}

/// The player events of `service` until one says `what` about `player`.
async fn until_player(
    events: &mut tokio::sync::broadcast::Receiver<wakegate::event::Published>,
    service: &str,
    player: &str,
    what: &str,
) -> Event {
    wait_event(events, |e| {
        e.kind == Kind::Player
            && e.service == service
            && e.detail["player"] == player
            && e.detail["what"] == what
    })
    .await
}

/// The service's open connections as the API and the metrics report them.
async fn connections_reported(app: &App, service: &str) -> (Value, String) {
    let (api, name) = (app.api_addr(), service.to_string());
    tokio::task::spawn_blocking(move || {
        let status = api_json(api, "GET", &format!("/api/v1/services/{name}"));
        let (code, metrics) = http(api, "GET", "/metrics", "").unwrap();
        assert_eq!(code, 200);
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("wakegate_connections{{service=\"{name}\"}}")))
            .unwrap_or_else(|| panic!("no wakegate_connections for {name} in:\n{metrics}"))
            .to_string();
        (status["connections"].clone(), line)
    })
    .await
    .unwrap()
}

/// Waits until the player poll has counted `players` on the server, which then counts as in
/// use (no idle countdown).
async fn polled(service: &ServiceHandle, players: u32) {
    let mut watch = service.watch();
    let in_use =
        |s: &wakegate::service::Status| s.players == Some(players) && s.idle_since.is_none();
    tokio::time::timeout(DEADLINE, watch.wait_for(in_use))
        .await
        .unwrap_or_else(|_| panic!("the poll never counted {players}: {:?}", service.status()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_21_player_is_handed_to_the_server_and_the_player_poll_keeps_it_awake() {
    let dir = temp_dir("mc-handoff");
    let backend = free_addr();
    let listen = handing_off().set("join", ["transfer", "hold"]);
    let app = start(
        &dir,
        [service("direct", backend, "1.21.4", true).listen(listen)],
    )
    .await;
    let direct = app.service("direct").unwrap().clone();
    wait_state(&direct, State::Asleep).await;
    let mut events = direct.subscribe();
    let gateway = app.listen_addr("direct").unwrap();
    let server = format!("127.0.0.1:{}", backend.port());

    // Asleep: the player waits in the configuration phase while the server boots, then is
    // sent to the server's own port, where it logs in.
    let (steve, joined) = player(gateway, "Steve", "1.21.4").await;
    assert_eq!(joined["joined"], true, "{joined}");
    assert_eq!(joined["transferred"], server, "{joined}");
    let handed = until_player(&mut events, "direct", "Steve", "handed_off").await;
    assert_eq!(handed.detail["to"], server, "{handed:?}");
    assert_eq!(handed.detail["strategy"], "transfer", "{handed:?}");
    assert_eq!(handed.state, State::Awake);

    // wakegate carries nothing for it: no open connection, by the handle, the API and the
    // metrics; the player poll, asking the server, finds the player and keeps it in use.
    polled(&direct, 1).await;
    assert_eq!(direct.connections(), 0);
    let (api, metric) = connections_reported(&app, "direct").await;
    assert_eq!(api, 0, "API connections");
    assert!(metric.ends_with(" 0"), "{metric}");

    // Awake: the next player is handed off at once.
    let (alex, joined) = player(gateway, "Alex", "1.21.4").await;
    assert_eq!(joined["joined"], true, "{joined}");
    assert_eq!(joined["transferred"], server, "{joined}");
    let handed = until_player(&mut events, "direct", "Alex", "handed_off").await;
    assert_eq!(handed.detail["strategy"], Value::Null, "{handed:?}");
    polled(&direct, 2).await;
    assert_eq!(direct.connections(), 0);

    // With no connection through wakegate and idle_timeout = 5s, only the poll keeps it up:
    // it is still awake past its idle timeout.
    let mut watch = direct.watch();
    let slept = tokio::time::timeout(
        Duration::from_secs(7),
        watch.wait_for(|s| s.state != State::Awake),
    )
    .await;
    assert!(
        slept.is_err(),
        "it stopped while players were on: {:?}",
        direct.status()
    );

    // Once they leave, the poll counts none and it sleeps after its idle timeout.
    drop((steve, alex));
    transitions_until(&mut events, State::Asleep).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_client_is_forwarded_through_wakegate() {
    let dir = temp_dir("mc-handoff-old");
    let backend = free_addr();
    let listen = handing_off().set("join", ["transfer", "hold"]);
    let app = start(
        &dir,
        [service("older", backend, "1.20.4", true).listen(listen)],
    )
    .await;
    let older = app.service("older").unwrap().clone();
    wait_state(&older, State::Asleep).await;
    let mut events = older.subscribe();
    let gateway = app.listen_addr("older").unwrap();

    // 1.20.4 has a configuration phase but no Transfer packet: held, then forwarded.
    let (_steve, joined) = player(gateway, "Steve", "1.20.4").await;
    assert_eq!(joined["joined"], true, "{joined}");
    assert_eq!(joined.get("transferred"), None, "{joined}");
    let held = until_player(&mut events, "older", "Steve", "held").await;
    assert_eq!(held.detail["strategy"], "hold", "{held:?}");
    assert_eq!(
        older.connections(),
        1,
        "its connection goes through wakegate"
    );
    let (api, metric) = connections_reported(&app, "older").await;
    assert_eq!(api, 1, "API connections");
    assert!(metric.ends_with(" 1"), "{metric}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_transfers_gets_its_players_through_wakegate_and_a_warning() {
    let dir = temp_dir("mc-handoff-refused");
    let (one, two) = (free_addr(), free_addr());
    // `back` sends waiting players back to this gateway when the server refuses them;
    // `lone` has no public_address, so its waiting players are asked to join again.
    let bind = free_addr();
    let back = handing_off()
        .set("bind", bind)
        .set("join", ["transfer", "hold"])
        .set("public_address", format!("127.0.0.1:{}", bind.port()));
    let lone = handing_off().set("join", ["transfer", "hold"]);
    let app = start(
        &dir,
        [
            service("back", one, "1.21.4", false).listen(back),
            service("lone", two, "1.21.4", false).listen(lone),
        ],
    )
    .await;
    let mut events = app.subscribe();
    for name in ["back", "lone"] {
        wait_state(app.service(name).unwrap(), State::Asleep).await;
    }

    // The server says no to the check: the waiting player goes back to the gateway, which
    // forwards it.
    let (_steve, joined) = player(bind, "Steve", "1.21.4").await;
    assert_eq!(joined["joined"], true, "{joined}");
    assert_eq!(joined["transferred"], format!("127.0.0.1:{}", bind.port()));
    let warning = wait_event(&mut events, |e| {
        e.kind == Kind::Warning && e.service == "back"
    })
    .await;
    assert!(
        warning.reason.contains("does not accept transfers")
            && warning.reason.contains("set accepts-transfers=true"),
        "{warning:?}"
    );
    assert_eq!(warning.detail["handoff"]["why"], "transfers_refused");
    let back = app.service("back").unwrap();
    assert_eq!(back.connections(), 1, "forwarded through wakegate");
    // Awake, the next player is forwarded at once, and the refusal is not told twice.
    let (_alex, joined) = player(bind, "Alex", "1.21.4").await;
    assert_eq!(joined["joined"], true, "{joined}");
    assert_eq!(joined.get("transferred"), None, "{joined}");
    assert_eq!(back.connections(), 2);

    // Without public_address the waiting player is told why and asked to join again; then it
    // is forwarded.
    let lone = app.listen_addr("lone").unwrap();
    let (_eve, kicked) = player(lone, "Eve", "1.21.4").await;
    let text = kicked["kicked"].to_string();
    assert!(
        text.contains("Join again to play") && text.contains("accepts-transfers=true"),
        "{kicked}"
    );
    let (_eve, joined) = player(lone, "Eve", "1.21.4").await;
    assert_eq!(joined["joined"], true, "{joined}");
    assert_eq!(joined.get("transferred"), None, "{joined}");
    let warnings: Vec<Event> = app
        .store()
        .latest_events(None, 200)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == Kind::Warning)
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one warning per service and wake: {warnings:#?}"
    );
    app.shutdown().await;
}
