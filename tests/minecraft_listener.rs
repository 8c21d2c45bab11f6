//! The rest of the `minecraft` listener with real peers (tests/peers/minecraft/peer.js on
//! minecraft-protocol): the `transfer` join strategy across a boot longer than the client's
//! 30 s patience, who may wake a server (allow/deny lists, a per-IP wake rate), the server
//! list entry while asleep (JSON MOTD, sample lines, icon), the status cache, the PROXY v2
//! header, and the player events.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use wakegate::app::App;
use wakegate::event::{Event, Kind, State};

fn peers() -> PathBuf {
    minecraft_peers(&["minecraft-protocol"])
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/minecraft")
        .join(name)
        .display()
        .to_string()
}

/// A service whose backend is a minecraft-protocol server (`command` runs it, in peer.js's
/// folder), behind `listen` (a `minecraft` listener).
fn service(name: &str, backend: SocketAddr, command: &[String], listen: Table) -> Service {
    svc(name)
        .idle("1m")
        .wake_timeout("90s")
        .backend(
            typed("process")
                .set("command", command)
                .set("cwd", peers())
                .set("address", backend)
                .set("stop_command", "stop")
                .set("stop_timeout", "5s"),
        )
        .listen(listen)
}

/// A `minecraft` listener on `bind`.
fn minecraft(bind: impl std::fmt::Display) -> Table {
    listener("minecraft", bind)
}

/// The command of a server that answers with `motd` on `backend`, for `version`.
fn server(backend: SocketAddr, motd: &str, version: &str) -> Vec<String> {
    let port = backend.port().to_string();
    ["node", "peer.js", "server", &port, motd, version]
        .map(String::from)
        .to_vec()
}

/// `sh -c SCRIPT`, run in peer.js's folder.
fn shell(script: String) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script]
}

/// Starts a gateway in `dir` with `services`.
async fn start(dir: &Path, services: impl IntoIterator<Item = Service>) -> App {
    services
        .into_iter()
        .fold(gateway(dir), Config::service)
        .start()
        .await
}

async fn ping(gateway: SocketAddr, version: &str) -> Value {
    let port = gateway.port().to_string();
    minecraft_peer(&["ping", &port, "mc.example.com", version], &[], DEADLINE).await
}

async fn login(gateway: SocketAddr, name: &str, version: &str) -> Value {
    let port = gateway.port().to_string();
    minecraft_peer(
        &["login", &port, "mc.example.com", name, version],
        &[],
        DEADLINE,
    )
    .await
}

fn kicked(answer: &Value) -> String {
    answer["kicked"]
        .as_str()
        .unwrap_or_else(|| panic!("the player was not kicked: {answer}"))
        .to_string()
}

/// The player events of `service` seen until one matches `done` (the channel carries every
/// service's events).
async fn player_events(
    events: &mut tokio::sync::broadcast::Receiver<wakegate::event::Published>,
    service: &str,
    done: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mine = |e: &Event| e.kind == Kind::Player && e.service == service;
    events_until(events, |e| mine(e) && done(e))
        .await
        .into_iter()
        .filter(mine)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_keeps_a_1_21_client_through_a_40s_boot_and_lands_it_in_the_world() {
    let dir = temp_dir("mc-transfer");
    let (backend, bind) = (free_addr(), free_addr());
    // The server opens its port after 40 s: a held or plainly connecting client would have
    // given up at 30 s.
    let command = shell(format!(
        "sleep 40; exec node peer.js server {} 'transferred world' 1.21.4",
        backend.port()
    ));
    let listen = minecraft(bind)
        .set("join", ["transfer", "hold", "kick"])
        .set("public_address", format!("127.0.0.1:{}", bind.port()));
    let app = start(&dir, [service("slow", backend, &command, listen)]).await;
    let slow = app.service("slow").unwrap().clone();
    wait_state(&slow, State::Asleep).await;
    let mut events = slow.subscribe();

    let port = bind.port().to_string();
    let joined = minecraft_peer(
        &["login", &port, "mc.example.com", "Steve", "1.21.4"],
        &[],
        Duration::from_secs(120),
    )
    .await;
    // Joined means the backend sent the play login on the second connection. It came with
    // intent 3 (transfer); minecraft-protocol's server, like a vanilla server without
    // accepts-transfers, takes no login after that intent: wakegate rewrote it to 2.
    assert_eq!(joined["joined"], true, "{joined}");
    assert_eq!(joined["transferred"], format!("127.0.0.1:{}", bind.port()));
    let keep_alives = joined["keepAlives"].as_u64().unwrap_or(0);
    assert!(
        keep_alives >= 6,
        "40 s in the configuration phase with a keep-alive every 5 s: {joined}"
    );

    let seen = player_events(&mut events, "slow", |e| e.detail["what"] == "transferred").await;
    let held = seen.iter().find(|e| e.detail["what"] == "held").unwrap();
    assert_eq!(held.detail["strategy"], "transfer", "{held:?}");
    assert_eq!(held.detail["player"], "Steve");
    let transferred = seen.last().unwrap();
    assert_eq!(transferred.state, State::Awake, "{transferred:?}");
    assert_eq!(
        transferred.detail["to"],
        format!("127.0.0.1:{}", bind.port())
    );
    let woke = app
        .store()
        .latest_events(Some("slow"), 50)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == Kind::Transition && e.state == State::Waking)
        .unwrap();
    assert_eq!(woke.detail["player"], "Steve", "{woke:?}");
    assert!(
        detail(&woke, "client").starts_with("127.0.0.1:"),
        "{woke:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_lists_decide_who_wakes_the_server() {
    let dir = temp_dir("mc-access");
    let backend = free_addr();
    let listen = minecraft(ANY_PORT)
        .set("allow", ["Steve", "Mallory", "10.0.0.0/8"])
        .set("deny", ["mallory"]);
    let command = server(backend, "smp", "1.16.5");
    let app = start(&dir, [service("smp", backend, &command, listen)]).await;
    let smp = app.service("smp").unwrap().clone();
    wait_state(&smp, State::Asleep).await;
    let mut events = smp.subscribe();
    let gateway = app.listen_addr("smp").unwrap();

    // Eve is not listed, and 127.0.0.1 is not in 10.0.0.0/8.
    let eve = kicked(&login(gateway, "Eve", "1.16.5").await);
    assert!(eve.contains("You may not start this server"), "{eve}");
    assert!(eve.contains("not on the allow-list"), "{eve}");
    // Mallory is allowed by name but denied (names match whatever their case).
    let mallory = kicked(&login(gateway, "Mallory", "1.16.5").await);
    assert!(mallory.contains("deny-list"), "{mallory}");

    let seen = player_events(&mut events, "smp", |e| e.detail["player"] == "Mallory").await;
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(seen.iter().all(|e| e.detail["what"] == "denied"));
    assert_eq!(seen[0].detail["player"], "Eve", "{:?}", seen[0]);
    assert!(
        detail(&seen[0], "client").starts_with("127.0.0.1:"),
        "{:?}",
        seen[0]
    );
    assert!(
        detail(&seen[0], "why").starts_with("not on the allow-list"),
        "{:?}",
        seen[0]
    );
    assert_eq!(smp.status().state, State::Asleep, "a denied login woke it");

    let steve = login(gateway, "Steve", "1.16.5").await;
    assert_eq!(steve["joined"], true, "{steve}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_ranges_allow_and_deny_clients() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let dir = temp_dir("mc-access-v6");
    let (one, two) = (free_addr(), free_addr());
    let app = start(
        &dir,
        [
            service(
                "open",
                one,
                &server(one, "open", "1.16.5"),
                minecraft("[::1]:0").set("allow", ["2001:db8::/32", "::1/128"]),
            ),
            service(
                "closed",
                two,
                &server(two, "closed", "1.16.5"),
                minecraft("[::1]:0").set("deny", ["::/0"]),
            ),
        ],
    )
    .await;
    let (open, closed) = (
        app.service("open").unwrap().clone(),
        app.service("closed").unwrap().clone(),
    );
    wait_state(&open, State::Asleep).await;
    wait_state(&closed, State::Asleep).await;
    let v6 = [("PEER_HOST", "::1")];
    let join = |gateway: SocketAddr| async move {
        let port = gateway.port().to_string();
        minecraft_peer(
            &["login", &port, "mc.example.com", "Alex", "1.16.5"],
            &v6,
            DEADLINE,
        )
        .await
    };

    let denied = kicked(&join(app.listen_addr("closed").unwrap()).await);
    assert!(
        denied.contains("on the deny-list (addresses ::/0)"),
        "{denied}"
    );
    assert_eq!(closed.status().state, State::Asleep);

    let joined = join(app.listen_addr("open").unwrap()).await;
    assert_eq!(joined["joined"], true, "{joined}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_from_one_address_are_rate_limited_with_a_time_to_retry() {
    let dir = temp_dir("mc-rate");
    let backend = free_addr();
    // A boot that outlasts the test: every login meets a service that is not awake.
    let command = shell(format!(
        "sleep 60; exec node peer.js server {} late 1.16.5",
        backend.port()
    ));
    let listen = minecraft(ANY_PORT)
        .set("join", "kick")
        .set("wake_rate", "2/1h");
    let app = start(&dir, [service("smp", backend, &command, listen)]).await;
    let smp = app.service("smp").unwrap().clone();
    wait_state(&smp, State::Asleep).await;
    let mut events = smp.subscribe();
    let gateway = app.listen_addr("smp").unwrap();

    for _ in 0..2 {
        let reason = kicked(&login(gateway, "Steve", "1.16.5").await);
        assert!(reason.contains("The server is starting"), "{reason}");
    }
    for _ in 0..2 {
        let reason = kicked(&login(gateway, "Steve", "1.16.5").await);
        assert!(
            reason.contains("Too many attempts") && reason.contains("Try again in 59m"),
            "about an hour left: {reason}"
        );
    }
    let seen = player_events(&mut events, "smp", |e| e.detail["what"] == "denied").await;
    assert_eq!(
        seen.iter().filter(|e| e.detail["what"] == "kicked").count(),
        2,
        "{seen:#?}"
    );
    let denied = seen.last().unwrap();
    assert!(
        detail(denied, "why").contains("over the wake rate of 2/1h"),
        "{denied:?}"
    );
    // One event for the first refusal of the window, not one per attempt.
    let more = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.kind == Kind::Player {
                return e;
            }
        }
    })
    .await;
    assert!(more.is_err(), "a second refusal made an event: {more:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_list_shows_a_json_motd_sample_lines_and_the_icon_while_asleep() {
    let dir = temp_dir("mc-list");
    let backend = free_addr();
    let listen = minecraft(ANY_PORT)
        .raw(r#"motd_asleep = '{"text": "zzz ", "color": "gray", "extra": [{"text": "join to wake", "bold": true}]}'"#)
        .set("player_sample", ["§7The server sleeps.", "§7Join to wake it."])
        .set("icon", fixture("icon.png"))
        .set("version_name", "Paper 1.21");
    let command = server(backend, "smp", "1.21.4");
    let app = start(&dir, [service("smp", backend, &command, listen)]).await;
    let smp = app.service("smp").unwrap().clone();
    wait_state(&smp, State::Asleep).await;
    let gateway = app.listen_addr("smp").unwrap();

    for version in ["1.16.5", "1.21.4"] {
        let status = ping(gateway, version).await;
        assert_eq!(status["description"]["text"], "zzz ", "{status}");
        assert_eq!(status["description"]["color"], "gray");
        assert_eq!(status["description"]["extra"][0]["text"], "join to wake");
        assert_eq!(status["description"]["extra"][0]["bold"], true);
        assert_eq!(status["version"]["name"], "Paper 1.21");
        let names: Vec<&str> = status["players"]["sample"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["§7The server sleeps.", "§7Join to wake it."]);
        let icon = status["favicon"].as_str().unwrap_or_default();
        let png = std::fs::read(fixture("icon.png")).unwrap();
        assert_eq!(icon, format!("data:image/png;base64,{}", base64(&png)));
    }
    // Counted, never an event each, never a wake.
    let metrics = wakegate::metrics::render(app.services());
    assert!(
        metrics.contains("wakegate_minecraft_status_pings_total{service=\"smp\"} 2"),
        "{metrics}"
    );
    assert!(
        app.store()
            .latest_events(Some("smp"), 10)
            .unwrap()
            .iter()
            .all(|e| e.kind == Kind::Transition)
    );
    assert_eq!(smp.status().state, State::Asleep);
    app.shutdown().await;
}

/// Standard base64, written here independently of the gateway's encoder.
fn base64(bytes: &[u8]) -> String {
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = String::new();
    for b in bytes {
        bits.push_str(&format!("{b:08b}"));
    }
    let mut out: String = bits
        .as_bytes()
        .chunks(6)
        .map(|c| {
            let mut s = String::from_utf8(c.to_vec()).unwrap();
            while s.len() < 6 {
                s.push('0');
            }
            table[usize::from_str_radix(&s, 2).unwrap()] as char
        })
        .collect();
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awake_servers_status_is_reused_from_the_cache() {
    let dir = temp_dir("mc-cache");
    let backend = free_addr();
    let command = server(backend, "cached world", "1.16.5");
    let listen = minecraft(ANY_PORT).set("status_cache", "1m");
    let app = start(&dir, [service("smp", backend, &command, listen)]).await;
    let smp = app.service("smp").unwrap().clone();
    smp.wake("the test").await.unwrap().unwrap();
    wait_state(&smp, State::Awake).await;
    let gateway = app.listen_addr("smp").unwrap();

    let first = ping(gateway, "1.16.5").await;
    assert_eq!(first["description"]["text"], "cached world", "{first}");
    assert_eq!(first["players"]["online"], 0);

    // A player joins the backend directly and stays: the backend now says 1 player…
    let mut player = minecraft_player_stays(backend, "Alex").await;
    let direct = minecraft_peer(
        &["ping", &backend.port().to_string(), "127.0.0.1", "1.16.5"],
        &[],
        DEADLINE,
    )
    .await;
    assert_eq!(direct["players"]["online"], 1, "{direct}");
    // … but within status_cache the gateway answers what it kept.
    let cached = ping(gateway, "1.16.5").await;
    assert_eq!(cached["players"]["online"], 0, "{cached}");
    assert_eq!(cached["description"]["text"], "cached world");
    player.kill().await.unwrap();
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_the_real_client_address_in_a_proxy_v2_header() {
    let dir = temp_dir("mc-proxy");
    let backend = free_addr();
    let log = dir.join("proxy.log");
    let command = server(backend, "proxied", "1.16.5");
    let listen = minecraft(ANY_PORT).set("proxy_protocol", true);
    let service = service("smp", backend, &command, listen)
        .set("player_poll", "100ms")
        .env("PROXY_LOG", &log)
        // Readiness and a health check by status ping: they must carry a header too.
        .readiness(typed("minecraft"))
        .health(
            typed("minecraft")
                .set("interval", "100ms")
                .set("action", "notify"),
        );
    let app = start(&dir, [service]).await;
    let smp = app.service("smp").unwrap().clone();
    wait_state(&smp, State::Asleep).await;
    let gateway = app.listen_addr("smp").unwrap();

    let port = gateway.port().to_string();
    let joined = minecraft_peer(
        &["login", &port, "mc.example.com", "Steve", "1.16.5"],
        &[("PEER_LOCAL_PORT", "1")],
        DEADLINE,
    )
    .await;
    assert_eq!(joined["joined"], true, "{joined}");
    let client_port = joined["localPort"].as_u64().unwrap();
    // wakegate's own status pings (readiness, health, player_poll) get through too, with a
    // LOCAL header.
    let mut status = smp.watch();
    tokio::time::timeout(DEADLINE, status.wait_for(|s| s.players.is_some()))
        .await
        .expect("the players were never counted")
        .unwrap();

    let headers: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen = json!({
        "source": format!("127.0.0.1:{client_port}"),
        "destination": gateway.to_string(),
    });
    assert!(
        headers.contains(&seen),
        "the backend never saw the player's own address {seen}: {headers:?}"
    );
    assert!(headers.contains(&json!({ "local": true })), "{headers:?}");
    assert!(
        !headers.contains(&json!({ "source": null })),
        "a connection came without a header: {headers:?}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_name_held_and_kicked_players_and_who_joined_and_left() {
    let dir = temp_dir("mc-events");
    let (one, two, bind) = (free_addr(), free_addr(), free_addr());
    // A 1.16.5 client cannot follow a Transfer packet: it is held instead.
    let transfer_first = minecraft(bind)
        .set("join", ["transfer", "hold"])
        .set("public_address", format!("127.0.0.1:{}", bind.port()));
    let app = start(
        &dir,
        [
            service("held", one, &server(one, "held", "1.16.5"), transfer_first)
                .set("player_poll", "100ms"),
            service(
                "kicked",
                two,
                &server(two, "kicked", "1.16.5"),
                minecraft(ANY_PORT).set("join", "kick"),
            ),
        ],
    )
    .await;
    let (held, kicked_service) = (
        app.service("held").unwrap().clone(),
        app.service("kicked").unwrap().clone(),
    );
    wait_state(&held, State::Asleep).await;
    wait_state(&kicked_service, State::Asleep).await;
    let (mut held_events, mut kicked_events) = (held.subscribe(), kicked_service.subscribe());

    let reason = kicked(&login(app.listen_addr("kicked").unwrap(), "Alex", "1.16.5").await);
    assert!(reason.contains("The server is starting"), "{reason}");
    let seen = player_events(&mut kicked_events, "kicked", |e| {
        e.detail["what"] == "kicked"
    })
    .await;
    assert_eq!(seen[0].detail["player"], "Alex", "{seen:#?}");
    assert!(
        detail(&seen[0], "client").starts_with("127.0.0.1:"),
        "{seen:#?}"
    );
    assert_eq!(seen[0].detail["strategy"], "kick", "{seen:#?}");

    // Steve is held while it wakes, joins through wakegate and stays; the backend's status
    // sample then names him, and no longer once he leaves.
    let mut steve = minecraft_player_stays(app.listen_addr("held").unwrap(), "Steve").await;
    let seen = player_events(&mut held_events, "held", |e| {
        e.reason == "player Steve joined"
    })
    .await;
    assert_eq!(seen[0].detail["what"], "held", "{seen:#?}");
    assert_eq!(seen[0].detail["strategy"], "hold");
    assert_eq!(seen.last().unwrap().detail["players"], 1);
    steve.kill().await.unwrap();
    let seen = player_events(&mut held_events, "held", |e| {
        e.reason == "player Steve left"
    })
    .await;
    assert_eq!(seen.last().unwrap().detail["players"], 0, "{seen:#?}");
    app.shutdown().await;
}
