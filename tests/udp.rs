//! The `udp` listener with a real DNS server as the backend (Debian's `dnsmasq`, run by a
//! `process` backend; scripts/test installs it) and real resolvers as clients (`dig`, and DNS
//! queries from sockets of the test, each its own client address): the first query wakes the
//! server and is answered, many clients at once each get their own answers, sessions end and
//! the service sleeps, the queue and `max_sessions` bound what a client can make it hold.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use tokio::net::UdpSocket;
use wakegate::event::State;

/// The address every name under `.test` resolves to.
const ANSWER: [u8; 4] = [127, 0, 0, 7];

/// A loopback address whose port is free for both TCP and UDP.
fn free_udp_addr() -> SocketAddr {
    loop {
        let addr = free_addr();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// dnsmasq in the foreground on `addr`, answering `ANSWER` for `*.test`, nothing else.
fn dnsmasq(addr: SocketAddr, delay: &str) -> Vec<String> {
    let program = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("dnsmasq is not installed; scripts/test installs it (Debian's `dnsmasq-base`)");
    let args = format!(
        "--no-daemon --conf-file=/dev/null --port={} --listen-address={} --bind-interfaces \
         --no-resolv --no-hosts --address=/test/127.0.0.7",
        addr.port(),
        addr.ip()
    );
    // A slow boot where a test needs one: the shell sleeps, then becomes dnsmasq.
    vec![
        "sh".into(),
        "-c".into(),
        format!("sleep {delay}; exec {program} {args}"),
    ]
}

/// A DNS query for `name` (type A, recursion desired) with `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The readiness probe: a query dnsmasq answers once it runs.
fn probe_payload() -> String {
    let hex: String = query(0x7777, "ready.test")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("hex:{hex}")
}

/// Checks that `reply` answers query `id` for `name` with `ANSWER`.
fn assert_answers(reply: &[u8], id: u16, name: &str) {
    assert_eq!(u16::from_be_bytes([reply[0], reply[1]]), id, "{reply:?}");
    let question = &query(id, name)[12..];
    assert_eq!(&reply[12..12 + question.len()], question, "{reply:?}");
    assert!(reply.ends_with(&ANSWER), "no A record 127.0.0.7: {reply:?}");
}

/// A service named `dns` with a dnsmasq backend that boots after `delay`, behind a udp listener
/// with the extra `keys`.
async fn gateway_with(dir: &Path, delay: &str, keys: &str) -> (wakegate::app::App, SocketAddr) {
    let backend = free_udp_addr();
    let app = gateway(dir)
        .service(
            svc("dns")
                .idle("1s")
                .process(&dnsmasq(backend, delay), backend)
                .readiness(typed("udp").set("payload", probe_payload()))
                .listen(if keys.contains("session_idle") {
                    listener("udp", ANY_PORT).raw(keys)
                } else {
                    listener("udp", ANY_PORT)
                        .set("session_idle", "1s")
                        .raw(keys)
                }),
        )
        .start()
        .await;
    let addr = app.listen_addr("dns").unwrap();
    (app, addr)
}

/// Waits until the service is in `state`.
async fn until_state(app: &wakegate::app::App, state: State) {
    let mut watch = app.service("dns").unwrap().watch();
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| panic!("the service never became {state:?}"))
        .unwrap();
}

/// Waits until the metrics of `app` count `n` refusals for `reason`.
async fn until_refused(app: &wakegate::app::App, reason: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let counted = refused(&metrics(app.api_addr()).await, None, reason);
        if counted == n {
            return;
        }
        assert!(counted < n, "{counted} {reason} refusals, expected {n}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{counted} {reason} refusals, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client socket of its own (its own session), on loopback.
async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

async fn recv(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, socket.recv(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn dig_wakes_the_server_gets_its_answer_and_the_service_sleeps_after() {
    let dir = temp_dir("udp-dig");
    let (app, addr) = gateway_with(&dir, "0", "").await;
    assert_eq!(app.service("dns").unwrap().state(), State::Asleep);
    // One try, a long wait: the answer comes from the server the query woke.
    let out = tokio::process::Command::new("dig")
        .args([
            &format!("@{}", addr.ip()),
            "-p",
            &addr.port().to_string(),
            "first.test",
            "+short",
            "+tries=1",
            "+time=15",
        ])
        .output()
        .await
        .expect("dig is not installed; scripts/test installs it (Debian's `bind9-dnsutils`)");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.0.0.7");
    assert_eq!(app.service("dns").unwrap().state(), State::Awake);
    // The session ends a second after its last datagram; the service sleeps a second later.
    until_state(&app, State::Asleep).await;
    app.shutdown().await;
}

#[tokio::test]
async fn many_clients_at_once_each_get_their_own_answers() {
    let dir = temp_dir("udp-many");
    let (app, addr) = gateway_with(&dir, "0.3", "").await;
    let mut clients = Vec::new();
    for i in 0..40u16 {
        let socket = client().await;
        socket
            .send_to(&query(1000 + i, &format!("c{i}.test")), addr)
            .await
            .unwrap();
        clients.push((i, socket));
    }
    for (i, socket) in &clients {
        let reply = recv(socket).await;
        assert_answers(&reply, 1000 + i, &format!("c{i}.test"));
    }
    // Awake now: a second round goes straight through the same sessions.
    for (i, socket) in &clients {
        socket
            .send_to(&query(2000 + i, "again.test"), addr)
            .await
            .unwrap();
    }
    for (i, socket) in &clients {
        assert_answers(&recv(socket).await, 2000 + i, "again.test");
    }
    let open = metrics(app.api_addr()).await;
    assert!(
        open.contains(&format!(
            "wakegate_listener_connections{{listener=\"{addr}\",type=\"udp\"}} 40"
        )),
        "{open}"
    );
    until_state(&app, State::Asleep).await;
    app.shutdown().await;
}

#[tokio::test]
async fn a_session_keeps_its_queue_in_order_and_drops_the_excess() {
    let dir = temp_dir("udp-queue");
    // The server boots in a second; the client sends ten queries meanwhile.
    let (app, addr) = gateway_with(&dir, "1", "queue = 4").await;
    let socket = client().await;
    for id in 1..=10u16 {
        socket
            .send_to(&query(id, &format!("q{id}.test")), addr)
            .await
            .unwrap();
    }
    until_refused(&app, "queue_full", 6).await;
    assert_eq!(app.service("dns").unwrap().state(), State::Waking);
    for id in 1..=4u16 {
        assert_answers(&recv(&socket).await, id, &format!("q{id}.test"));
    }
    // Nothing more was kept: the next answer is the next query's.
    socket.send_to(&query(99, "next.test"), addr).await.unwrap();
    assert_answers(&recv(&socket).await, 99, "next.test");
    app.shutdown().await;
}

#[tokio::test]
async fn max_sessions_refuses_new_clients_and_counts_them() {
    let dir = temp_dir("udp-max");
    let (app, addr) = gateway_with(&dir, "0", "max_sessions = 2\nsession_idle = \"30s\"").await;
    let (a, b, c) = (client().await, client().await, client().await);
    a.send_to(&query(1, "a.test"), addr).await.unwrap();
    assert_answers(&recv(&a).await, 1, "a.test");
    b.send_to(&query(2, "b.test"), addr).await.unwrap();
    assert_answers(&recv(&b).await, 2, "b.test");
    c.send_to(&query(3, "c.test"), addr).await.unwrap();
    until_refused(&app, "max_sessions", 1).await;
    // The two live sessions go on.
    a.send_to(&query(4, "a.test"), addr).await.unwrap();
    assert_answers(&recv(&a).await, 4, "a.test");
    app.shutdown().await;
}

#[tokio::test]
async fn with_wake_on_only_a_matching_datagram_wakes_it() {
    let dir = temp_dir("udp-wake-on");
    // DNS queries with ids starting 0xbeef wake it; anything else is noise.
    let (app, addr) = gateway_with(&dir, "0", "wake_on = \"hex:be ef\"").await;
    let socket = client().await;
    socket
        .send_to(&query(0x1234, "noise.test"), addr)
        .await
        .unwrap();
    socket.send_to(b"\xbe", addr).await.unwrap();
    until_refused(&app, "no_wake", 2).await;
    assert_eq!(app.service("dns").unwrap().state(), State::Asleep);
    socket
        .send_to(&query(0xbeef, "wake.test"), addr)
        .await
        .unwrap();
    assert_answers(&recv(&socket).await, 0xbeef, "wake.test");
    // Awake, anything passes.
    socket
        .send_to(&query(0x1234, "noise.test"), addr)
        .await
        .unwrap();
    assert_answers(&recv(&socket).await, 0x1234, "noise.test");
    app.shutdown().await;
}

#[tokio::test]
async fn a_denied_address_gets_nothing_and_wakes_nothing() {
    let dir = temp_dir("udp-deny");
    let (app, addr) = gateway_with(&dir, "0", "deny = [\"127.0.0.1\"]").await;
    let socket = client().await;
    socket.send_to(&query(1, "x.test"), addr).await.unwrap();
    until_refused(&app, "denied", 1).await;
    assert_eq!(app.service("dns").unwrap().state(), State::Asleep);
    // Another loopback address is let in.
    let other = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    other.send_to(&query(2, "y.test"), addr).await.unwrap();
    assert_answers(&recv(&other).await, 2, "y.test");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_datagrams_from_many_addresses_wake_nothing_with_wake_on() {
    let dir = temp_dir("udp-noise");
    let (app, addr) = gateway_with(&dir, "0", "wake_on = \"hex:be ef\"").await;
    let sockets = udp_sources(100).await;
    let mut noise = Noise(0x0dd_ba11);
    // 2,000 random datagrams (none starting with the wake bytes), in bursts each counted
    // before the next goes, so that none is lost in a buffer and the count is exact.
    let mut sent = 0;
    for burst in 0..40 {
        for i in 0..50 {
            let len = 1 + noise.below(1400);
            let mut datagram = noise.bytes(len);
            if datagram.starts_with(&[0xbe, 0xef]) {
                datagram[0] = 0;
            }
            sockets[(burst * 50 + i) % sockets.len()]
                .send_to(&datagram, addr)
                .await
                .unwrap();
            sent += 1;
        }
        until_refused(&app, "no_wake", sent).await;
    }
    assert_eq!(app.service("dns").unwrap().state(), State::Asleep);
    assert!(metrics(app.api_addr()).await.contains(&format!(
        "wakegate_listener_connections{{listener=\"{addr}\",type=\"udp\"}} 0"
    )));
    // A real query still wakes it and is answered.
    let socket = client().await;
    socket
        .send_to(&query(0xbeef, "after.test"), addr)
        .await
        .unwrap();
    assert_answers(&recv(&socket).await, 0xbeef, "after.test");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_at_once_hold_at_most_max_sessions() {
    let dir = temp_dir("udp-flood");
    let keys = "max_sessions = 8\nsession_idle = \"5s\"";
    let (app, addr) = gateway_with(&dir, "0", keys).await;
    // Five sockets on each of 100 addresses: 500 clients, one query each, sent in bursts
    // each counted before the next goes (none lost in a buffer: the counts are exact).
    let mut sockets = Vec::new();
    for socket in udp_sources(100).await {
        let ip = socket.local_addr().unwrap().ip();
        sockets.push(socket);
        for _ in 0..4 {
            sockets.push(UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap());
        }
    }
    let live_prefix = format!("wakegate_listener_connections{{listener=\"{addr}\",type=\"udp\"}} ");
    let live = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&live_prefix))
            .unwrap()
            .parse()
            .unwrap()
    };
    for (burst, chunk) in sockets.chunks(50).enumerate() {
        for (i, socket) in chunk.iter().enumerate() {
            let id = (burst * 50 + i) as u16;
            socket
                .send_to(&query(id, "flood.test"), addr)
                .await
                .unwrap();
        }
        let sent = (burst * 50 + chunk.len()) as u64;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let text = metrics(app.api_addr()).await;
            let (open, refused) = (live(&text), refused(&text, None, "max_sessions"));
            assert!(open <= 8, "{open} sessions live");
            if open + refused == sent {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} sessions and {refused} refusals for {sent} clients"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let text = metrics(app.api_addr()).await;
    assert_eq!(
        (live(&text), refused(&text, None, "max_sessions")),
        (8, 492)
    );
    // The eight sessions let in are served.
    for (id, socket) in sockets.iter().take(8).enumerate() {
        assert_answers(&recv(socket).await, id as u16, "flood.test");
    }
    // Once they have ended, the service sleeps, and a new client is served.
    until_state(&app, State::Asleep).await;
    let out = tokio::process::Command::new("dig")
        .args([
            &format!("@{}", addr.ip()),
            "-p",
            &addr.port().to_string(),
            "after.test",
            "+short",
            "+tries=1",
            "+time=15",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.0.0.7");
    app.shutdown().await;
}
