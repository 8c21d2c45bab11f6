//! The `minecraft` listener with the real thing on both sides: flying-squid (a Java edition
//! server in Node) run as the `process` backend, mineflayer bots joining and playing through
//! wakegate, and mcstatus pinging it (tests/peers/minecraft: squid.js, bot.js, ping.py).
//!
//! The main scenario runs on every version the issue names; the others on one version each.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wakegate::event::{Kind, State};

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
