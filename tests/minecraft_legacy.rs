//! Pre-1.7 server-list pings (`0xFE`) on a `minecraft` listener: the 1.6 ping routed by its
//! hostname, the 1.4 and beta forms, mcstatus's legacy client (tests/peers/minecraft/ping.py),
//! all answered by wakegate while the service sleeps, and by the real server behind it (a
//! minecraft-protocol server, tests/peers/minecraft/peer.js) once it is awake.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wakegate::event::State;

/// A 1.6.4 client's ping of `host:port` (wiki.vg, "Server List Ping", 1.6).
fn ping_1_6(host: &str, port: u16) -> Vec<u8> {
    let mut out = vec![0xfe, 0x01, 0xfa];
    let channel: Vec<u16> = "MC|PingHost".encode_utf16().collect();
    out.extend_from_slice(&(channel.len() as u16).to_be_bytes());
    channel
        .iter()
        .for_each(|u| out.extend_from_slice(&u.to_be_bytes()));
    let host16: Vec<u16> = host.encode_utf16().collect();
    out.extend_from_slice(&(7 + 2 * host16.len() as u16).to_be_bytes());
    out.push(78);
    out.extend_from_slice(&(host16.len() as u16).to_be_bytes());
    host16
        .iter()
        .for_each(|u| out.extend_from_slice(&u.to_be_bytes()));
    out.extend_from_slice(&i32::from(port).to_be_bytes());
    out
}

/// Sends `request` and decodes the kick packet that answers it: the text, as UTF-16BE.
/// (minecraft-protocol's server keeps the connection open after it, unlike vanilla and
/// wakegate: the packet is read by its length.)
async fn legacy_ping(gateway: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = [0u8; 3];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut head))
        .await
        .expect("no answer to the legacy ping")
        .unwrap();
    assert_eq!(head[0], 0xff, "not a kick packet: {head:02x?}");
    let length = u16::from_be_bytes([head[1], head[2]]) as usize;
    let mut answer = vec![0u8; 2 * length];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut answer))
        .await
        .expect("the kick packet was cut short")
        .unwrap();
    let units: Vec<u16> = answer
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

/// The fields of a 1.4–1.6 answer: `§1`, protocol, version, MOTD, online, max.
fn fields(text: &str) -> Vec<&str> {
    text.split('\0').collect()
}

fn peers() -> PathBuf {
    minecraft_peers(&["minecraft-protocol"])
}

/// mcstatus's legacy ping (FE 01 FA) of the gateway, as JSON.
async fn mcstatus_legacy(gateway: SocketAddr) -> Value {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-peers/bin/python");
    assert!(
        python.exists(),
        "the peers' virtualenv is missing; run scripts/test, which installs \
         tests/peers/requirements.txt (mcstatus) into .venv-peers"
    );
    let run = tokio::process::Command::new(python)
        .args(["ping.py", &gateway.port().to_string(), "legacy"])
        .current_dir(peers())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, run).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_pings_are_answered_while_asleep_and_by_the_server_once_awake() {
    let dir = temp_dir("mc-legacy");
    let bind = free_addr();
    let backend = free_addr();
    let port = backend.port().to_string();
    let smp = svc("smp")
        .idle("1m")
        .wake_timeout("60s")
        .backend(
            typed("process")
                .set(
                    "command",
                    ["node", "peer.js", "server", &port, "smp awake", "1.16.5"],
                )
                .set("cwd", peers())
                .set("address", backend)
                .set("stop_command", "stop")
                .set("stop_timeout", "5s"),
        )
        .listen(
            listener("minecraft", bind)
                .set("hostnames", ["smp.example.com"])
                .set("motd_asleep", "§7smp sleeps")
                .set("version_name", "wakegate-smp"),
        );
    let lobby = svc("lobby").idle("1m").exec_true(free_addr()).listen(
        listener("minecraft", bind).set("default", true).set(
            "motd_asleep",
            r#"{"text": "lobby sleeps", "color": "gray"}"#,
        ),
    );
    let app = gateway(&dir).service(smp).service(lobby).start().await;
    let smp = app.service("smp").unwrap().clone();
    wait_state(&smp, State::Asleep).await;

    // 1.6: routed by the hostname in MC|PingHost.
    let text = legacy_ping(bind, &ping_1_6("SMP.example.com", bind.port())).await;
    assert_eq!(
        fields(&text),
        ["§1", "127", "wakegate-smp", "§7smp sleeps", "0", "0"]
    );
    // 1.4/1.5 names no host: the default service answers, its JSON MOTD as plain text.
    let text = legacy_ping(bind, &[0xfe, 0x01]).await;
    assert_eq!(
        fields(&text),
        ["§1", "127", "wakegate", "lobby sleeps", "0", "0"]
    );
    // Beta 1.8–1.3: a lone FE, answered once no second byte came.
    let sent = Instant::now();
    let text = legacy_ping(bind, &[0xfe]).await;
    assert_eq!(text, "lobby sleeps§0§0");
    assert!(sent.elapsed() >= Duration::from_millis(900));
    // mcstatus's legacy client sends FE 01 FA and nothing more.
    let status = mcstatus_legacy(bind).await;
    assert_eq!(status["motd"], "lobby sleeps", "{status}");
    assert_eq!(status["version"], "wakegate", "{status}");
    assert_eq!(status["protocol"], 127, "{status}");
    assert_eq!(status["max"], 0, "{status}");
    assert_eq!(smp.status().state, State::Asleep, "a legacy ping woke it");
    assert_eq!(
        smp.metrics()
            .status_pings
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Awake, the ping goes to the server, which answers with its own MOTD and maximum.
    smp.wake("test").await.unwrap().unwrap();
    wait_state(&smp, State::Awake).await;
    let text = legacy_ping(bind, &ping_1_6("smp.example.com", bind.port())).await;
    let fields = fields(&text);
    assert_eq!(fields.len(), 6, "{text:?}");
    assert_eq!(fields[0], "§1");
    assert_eq!(&fields[3..], ["smp awake", "0", "10"], "{text:?}");
    app.shutdown().await;
}
