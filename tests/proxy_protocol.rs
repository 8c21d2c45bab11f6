//! The PROXY protocol with a real HAProxy (Debian's `haproxy`; scripts/test installs it): in
//! front of the gateway (`send-proxy` and `send-proxy-v2` on its `server` lines), and behind it
//! as a backend that reads the header wakegate writes (`accept-proxy`) and answers with the
//! client address it read. Clients bind a loopback address of their own (any 127/8 source
//! connects to loopback), so the client HAProxy names differs from HAProxy's own address.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wakegate::event::State;
use wakegate::minecraft::{Handshake, Intent, LoginStart, Protocol, ServerAddress};

/// A real HAProxy run in the foreground with `sections` (its `global` and `defaults` added),
/// killed when dropped.
struct Haproxy {
    child: Child,
}

impl Haproxy {
    /// Starts it in `dir` and returns once it accepts connections.
    fn start(dir: &Path, sections: &str) -> Haproxy {
        let ready = free_addr();
        let config = format!(
            "global\n    maxconn 2000\n\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n\n\
             frontend ready\n    mode http\n    bind {ready}\n    http-request return status 200\n\n\
             {sections}"
        );
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        // Debian installs it in /usr/sbin, which a user's PATH may not hold.
        let program = ["/usr/sbin/haproxy", "haproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("haproxy");
        let child = Command::new(program)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot run haproxy; scripts/test installs it (Debian's `haproxy` package)");
        let mut haproxy = Haproxy { child };
        // It binds every frontend before it serves any: once `ready` answers, all do.
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(ready).is_err() {
            if let Some(status) = haproxy.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default();
                panic!("haproxy exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two HAProxy sections that pass every connection to `to` behind a PROXY header: v1 on `v1`,
/// v2 on `v2`.
fn in_front(v1: SocketAddr, v2: SocketAddr, to: SocketAddr) -> String {
    format!(
        "listen v1\n    bind {v1}\n    server gw {to} send-proxy\n\n\
         listen v2\n    bind {v2}\n    server gw {to} send-proxy-v2\n\n"
    )
}

/// An HAProxy section, a web server on `at` that reads the PROXY header of each connection and
/// answers with the client address and port it names.
fn who_am_i(at: SocketAddr) -> String {
    format!(
        "frontend whoami\n    mode http\n    bind {at} accept-proxy\n    \
         http-request return status 200 content-type text/plain lf-string \"src=%[src]:%[src_port]\"\n\n"
    )
}

/// A connection from `from` that sends one HTTP request and keeps the connection open; the
/// whole answer and the connection.
async fn ask_from(from: [u8; 4], to: SocketAddr) -> (String, TcpStream) {
    let mut stream = connect_from(from, to).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: whoami\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        // The body (`src=…`) has no line end: read until the length the head gives is in.
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return;
            }
        }
    })
    .await
    .expect("no whole answer");
    (String::from_utf8_lossy(&answer).into_owned(), stream)
}

/// The body `who_am_i` answers for a client connection.
fn src(stream: &TcpStream) -> String {
    format!("src={}", stream.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_service_behind_haproxy_judges_counts_and_names_the_real_client() {
    let dir = temp_dir("proxy-tcp");
    let (gw, v1, v2, whoami) = (free_addr(), free_addr(), free_addr(), free_addr());
    let _haproxy = Haproxy::start(
        &dir,
        &format!("{}{}", in_front(v1, v2, gw), who_am_i(whoami)),
    );
    let service = svc("tcp").idle("10m").exec_true(whoami).listen(
        listener("tcp", gw)
            .set("trusted_proxies", ["127.0.0.1"])
            .set("deny", ["127.0.0.3"])
            .set("max_connections_per_address", 2)
            .set("proxy_protocol", "v2"),
    );
    let app = gateway(&dir).service(service).start().await;
    let tcp = app.service("tcp").unwrap().clone();
    wait_state(&tcp, State::Asleep).await;
    let mut events = tcp.subscribe();

    // HAProxy's address is not denied; the client it names is.
    let request = b"GET / HTTP/1.0\r\n\r\n";
    assert_eq!(exchange_from([127, 0, 0, 3], v2, request).await, "");
    assert_eq!(tcp.state(), State::Asleep);

    // The client's address wakes it and reaches the backend, through v1 and v2 alike.
    let (answer, first) = ask_from([127, 0, 0, 2], v1).await;
    assert!(answer.ends_with(&src(&first)), "{answer}");
    let woke = wait_event(&mut events, |e| is_transition(e, State::Waking)).await;
    assert_eq!(
        detail(&woke, "client"),
        first.local_addr().unwrap().to_string()
    );
    let (answer, second) = ask_from([127, 0, 0, 2], v2).await;
    assert!(answer.ends_with(&src(&second)), "{answer}");

    // The per-address cap counts the client's address, not HAProxy's: 127.0.0.2 has its
    // two connections open, a third is closed; another client of HAProxy goes through.
    assert_eq!(exchange_from([127, 0, 0, 2], v2, request).await, "");
    let (answer, other) = ask_from([127, 0, 0, 5], v2).await;
    assert!(answer.ends_with(&src(&other)), "{answer}");

    // A header from anyone else is refused, never passed on; HAProxy's address without one
    // too. A plain client of its own is served, and named to the backend.
    let spoof = b"PROXY TCP4 192.0.2.9 127.0.0.1 1111 2222\r\nGET / HTTP/1.0\r\n\r\n";
    assert_eq!(exchange_from([127, 0, 0, 4], gw, spoof).await, "");
    assert_eq!(exchange_from([127, 0, 0, 1], gw, request).await, "");
    let (answer, direct) = ask_from([127, 0, 0, 4], gw).await;
    assert!(answer.ends_with(&src(&direct)), "{answer}");

    let metrics = metrics(app.api_addr()).await;
    assert_eq!(refused(&metrics, Some(gw), "denied"), 1, "{metrics}");
    assert_eq!(
        refused(&metrics, Some(gw), "per_address_cap"),
        1,
        "{metrics}"
    );
    assert_eq!(refused(&metrics, Some(gw), "proxy_header"), 2, "{metrics}");
    drop((first, second, other, direct));
    sleep_then_shutdown(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_writes_a_v1_or_v2_header_haproxy_reads() {
    let dir = temp_dir("proxy-out");
    let (whoami, gw_v1, gw_v2) = (free_addr(), free_addr(), free_addr());
    let _haproxy = Haproxy::start(&dir, &who_am_i(whoami));
    let service = |name: &str, bind: SocketAddr, version: &str| {
        svc(name)
            .idle("10m")
            .exec_true(whoami)
            .listen(listener("tcp", bind).set("proxy_protocol", version))
    };
    let app = gateway(&dir)
        .service(service("one", gw_v1, "v1"))
        .service(service("two", gw_v2, "v2"))
        .start()
        .await;
    for gw in [gw_v1, gw_v2] {
        let (answer, client) = ask_from([127, 0, 0, 2], gw).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&src(&client)), "{answer}");
    }
    sleep_then_shutdown(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_service_behind_haproxy_forwards_the_real_client() {
    let dir = temp_dir("proxy-http");
    let backend = forwarded_for_backend().await;
    let (gw, v1, v2) = (free_addr(), free_addr(), free_addr());
    let _haproxy = Haproxy::start(&dir, &in_front(v1, v2, gw));
    let service = svc("web").idle("10m").exec_true(backend).listen(
        listener("http", gw)
            .set("strategy", "block")
            .set("trusted_proxies", ["127.0.0.0/31"])
            .set("deny", ["127.0.0.3"]),
    );
    let app = gateway(&dir).service(service).start().await;
    let web = app.service("web").unwrap().clone();
    wait_state(&web, State::Asleep).await;
    let mut events = web.subscribe();

    assert_eq!(get_from([127, 0, 0, 3], v1).await.0, 403);
    let (status, answer) = get_from([127, 0, 0, 2], v2).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("xff=127.0.0.2"), "{answer}");
    let woke = wait_event(&mut events, |e| is_transition(e, State::Waking)).await;
    assert!(
        detail(&woke, "client").starts_with("127.0.0.2:"),
        "{woke:?}"
    );
    let (_, answer) = get_from([127, 0, 0, 2], v1).await;
    assert!(answer.ends_with("xff=127.0.0.2"), "{answer}");

    // Not trusted: a header is refused unanswered; a plain request is served as its own.
    let spoof = b"PROXY TCP4 192.0.2.9 127.0.0.1 1111 2222\r\nGET / HTTP/1.1\r\nHost: web\r\n\r\n";
    assert_eq!(exchange_from([127, 0, 0, 4], gw, spoof).await, "");
    let (_, answer) = get_from([127, 0, 0, 4], gw).await;
    assert!(answer.ends_with("xff=127.0.0.4"), "{answer}");
    let metrics = metrics(app.api_addr()).await;
    assert_eq!(refused(&metrics, Some(gw), "proxy_header"), 1, "{metrics}");
    assert_eq!(refused(&metrics, Some(gw), "denied"), 1, "{metrics}");
    sleep_then_shutdown(app).await;
}

/// A Minecraft server stand-in that wants a PROXY header first: sends the client address of
/// each header on `seen` (wakegate's readiness probe, which connects and closes, sends none).
async fn header_reader() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let read = wakegate::listener::proxy_protocol::read_header(&mut stream, DEADLINE);
                if let Ok((header, _)) = read.await
                    && let Some(source) = header.source
                {
                    let _ = seen.send(source);
                }
            });
        }
    });
    (addr, rx)
}

/// A 1.16.5 client's handshake and login start, as `name`.
fn login(name: &str, to: SocketAddr) -> Vec<u8> {
    let protocol = Protocol(754);
    let handshake = Handshake {
        protocol,
        address: ServerAddress::new("localhost"),
        port: to.port(),
        intent: Intent::Login,
    };
    let mut bytes = handshake.encode().unwrap();
    let start = LoginStart {
        name: name.to_string(),
        uuid: None,
        signature: None,
    };
    bytes.extend(start.encode(protocol).unwrap());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minecraft_service_behind_haproxy_judges_and_names_the_real_player_address() {
    let dir = temp_dir("proxy-minecraft");
    let (backend, mut seen) = header_reader().await;
    let (gw, v1, v2) = (free_addr(), free_addr(), free_addr());
    let _haproxy = Haproxy::start(&dir, &in_front(v1, v2, gw));
    let service = svc("mc").idle("10m").exec_true(backend).listen(
        listener("minecraft", gw)
            .set("trusted_proxies", ["127.0.0.1"])
            .set("deny", ["127.0.0.3"])
            .set("proxy_protocol", true),
    );
    let app = gateway(&dir).service(service).start().await;
    let mc = app.service("mc").unwrap().clone();
    wait_state(&mc, State::Asleep).await;

    let refused_login = exchange_from([127, 0, 0, 3], v2, &login("Steve", gw)).await;
    assert!(refused_login.contains("deny-list"), "{refused_login:?}");
    assert_eq!(mc.state(), State::Asleep);

    // Held until awake, then forwarded behind the header wakegate writes: it names the player.
    let mut player = connect_from([127, 0, 0, 2], v1).await.unwrap();
    player.write_all(&login("Alex", gw)).await.unwrap();
    let named = tokio::time::timeout(DEADLINE, seen.recv())
        .await
        .expect("the backend got no PROXY header")
        .unwrap();
    assert_eq!(named, player.local_addr().unwrap());
    drop(player);
    sleep_then_shutdown(app).await;
}
