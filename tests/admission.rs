//! Who may wake a service, and who may use it, against the gateway with real sockets and real
//! hooks: `wake_on = "data"` against port scans and silent clients, and the allow and deny
//! lists and the wake rate per address of `tcp` and `http` listeners. Clients come from
//! several loopback addresses (any 127/8 source connects to loopback).
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::TryRecvError;
use wakegate::event::State;

/// Port scans: connect, then close (every tenth with a reset, as `nmap -sT` may).
const SCANS: usize = 10_000;
/// Clients that connect and send nothing.
const SILENT: usize = 1_000;
/// The silent clients' addresses: 125 each, under the default per-address cap (256).
const SILENT_FROM: std::ops::RangeInclusive<u8> = 2..=9;
/// At most this many connects in flight: a burst larger than the listen backlog would have the
/// kernel drop handshakes, which the clients would retry seconds later.
const IN_FLIGHT: usize = 64;
/// `head_timeout`'s default: a silent client is closed then.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// One scan from 127.0.0.1: connect and close. A closed (not reset) scan then waits for the
/// gateway to close its side, which proves the gateway is done with it, and checks that
/// nothing was answered.
async fn scan(i: usize, gateway: SocketAddr) {
    let mut stream = connect_from([127, 0, 0, 1], gateway).await.unwrap();
    if i.is_multiple_of(10) {
        stream.set_zero_linger().unwrap();
        return;
    }
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut stream).await, "", "a scan got an answer");
}

/// Opens the silent clients, a few at a time; each with when it began to connect (the gateway
/// accepts it later).
async fn open_silent(gateway: SocketAddr) -> Vec<(tokio::net::TcpStream, Instant)> {
    let from: Vec<u8> = SILENT_FROM.collect();
    futures_util::stream::iter(0..SILENT)
        .map(|i| {
            let host = from[i % from.len()];
            async move {
                let began = Instant::now();
                let stream = connect_from([127, 0, 0, host], gateway).await.unwrap();
                (stream, began)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// Waits until the gateway has closed every silent client, and checks it waited
/// `head_timeout` for each.
async fn closed_after_head_timeout(silent: Vec<(tokio::net::TcpStream, Instant)>) {
    let waits = silent
        .into_iter()
        .map(|(mut stream, connected)| async move {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(HEAD_TIMEOUT + DEADLINE, stream.read(&mut byte)).await;
            assert!(
                matches!(read, Ok(Ok(0) | Err(_))),
                "a silent client was not closed, or got an answer: {read:?}"
            );
            // tokio's timers fire on the millisecond.
            let waited = connected.elapsed();
            assert!(
                waited + Duration::from_millis(1) >= HEAD_TIMEOUT,
                "closed after {waited:?}"
            );
        });
    futures_util::future::join_all(waits).await;
}

/// Waits (up to [`DEADLINE`]) until the gateway's metrics count `count` refusals for `reason`
/// on `listener`: a reset scan leaves the client no way to see when the gateway is done.
async fn wait_refused(api: SocketAddr, listener: SocketAddr, reason: &str, count: u64) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let metrics = metrics(api).await;
        let now = refused(&metrics, Some(listener), reason);
        if now == count {
            return metrics;
        }
        assert!(now < count, "{now} {reason} refusals, more than {count}");
        assert!(
            Instant::now() < deadline,
            "{now} {reason} refusals, not {count}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_and_silent_clients_never_wake_a_data_service_and_a_real_client_does() {
    // The test holds thousands of sockets, both ends.
    wakegate::listener::nofile::raise();
    let dir = temp_dir("scans");
    let backend = free_addr();
    let service = hooked_echo("scanned", &dir, backend, "10m", "0")
        .listen(listener("tcp", ANY_PORT).set("wake_on", "data"));
    let app = gateway(&dir).service(service).start().await;
    let scanned = app.service("scanned").unwrap().clone();
    wait_state(&scanned, State::Asleep).await;
    let mut events = scanned.subscribe();
    let gateway = app.listen_addr("scanned").unwrap();

    let began = Instant::now();
    let silent = open_silent(gateway).await;
    let scans = futures_util::stream::iter(0..SCANS)
        .map(|i| scan(i, gateway))
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>();
    let ((), _) = tokio::join!(closed_after_head_timeout(silent), scans);
    eprintln!(
        "{SCANS} scans and {SILENT} silent clients: {:?}",
        began.elapsed()
    );

    let api = app.api_addr();
    wait_refused(api, gateway, "no_data", SCANS as u64).await;
    wait_refused(api, gateway, "head_timeout", SILENT as u64).await;
    // A refusal is counted as its connection closes; the open-connection gauge follows.
    let deadline = Instant::now() + DEADLINE;
    let none_open =
        format!("wakegate_listener_connections{{listener=\"{gateway}\",type=\"tcp\"}} 0");
    loop {
        let metrics = metrics(api).await;
        if metrics.contains(&none_open) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing happened to the service: no event at all, no start, still asleep.
    assert!(
        matches!(events.try_recv(), Err(TryRecvError::Empty)),
        "an event during the scans"
    );
    assert_eq!(hook_starts(&dir, "scanned"), 0);
    assert_eq!(scanned.state(), State::Asleep);

    // A client that speaks wakes it, and gets its bytes back.
    let mut client = connect_from([127, 0, 0, 20], gateway).await.unwrap();
    client.write_all(b"hello").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(DEADLINE, client.read_exact(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    assert_eq!(&back, b"hello");
    let woke = wait_event(&mut events, |e| is_transition(e, State::Waking)).await;
    assert_eq!(detail(&woke, "trigger"), "client", "{woke:?}");
    assert!(
        detail(&woke, "client").starts_with("127.0.0.20:"),
        "{woke:?}"
    );
    assert_eq!(hook_starts(&dir, "scanned"), 1);
    drop(client);
    sleep_then_shutdown(app).await;
}

/// A server that speaks first: greets every connection, then echoes.
async fn greeting_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                stream.write_all(b"220 ready\r\n").await?;
                let (mut read, mut write) = stream.split();
                tokio::io::copy(&mut read, &mut write).await
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_service_once_awake_forwards_at_once_and_its_server_may_speak_first() {
    let dir = temp_dir("data-awake");
    let backend = greeting_echo().await;
    let service = svc("greeter").idle("10m").exec_true(backend).listen(
        listener("tcp", ANY_PORT)
            .set("wake_on", "data")
            .set("head_timeout", "1s"),
    );
    let app = gateway(&dir).service(service).start().await;
    let greeter = app.service("greeter").unwrap().clone();
    wait_state(&greeter, State::Asleep).await;
    let gateway = app.listen_addr("greeter").unwrap();

    // Asleep, a client that waits for the server's greeting wakes nothing: it is closed at
    // head_timeout, unanswered.
    let mut waiting = connect_from([127, 0, 0, 1], gateway).await.unwrap();
    let since = Instant::now();
    assert_eq!(read_to_close(&mut waiting).await, "");
    assert!(since.elapsed() >= Duration::from_millis(999));
    assert_eq!(greeter.state(), State::Asleep);

    // Awake, the greeting comes with no byte from the client.
    greeter.wake("test").await.unwrap().unwrap();
    wait_state(&greeter, State::Awake).await;
    let mut client = connect_from([127, 0, 0, 1], gateway).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(DEADLINE, client.read_exact(&mut greeting))
        .await
        .expect("no greeting")
        .unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    client.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    drop(client);
    sleep_then_shutdown(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_allow_and_deny_lists_keep_addresses_out_awake_or_not() {
    let dir = temp_dir("tcp-lists");
    let backend = free_addr();
    let service = svc("listed")
        .idle("10m")
        .process(&echo(backend, "0s"), backend)
        .listen(
            listener("tcp", ANY_PORT)
                .set("allow", ["127.0.0.0/29", "::1"])
                .set("deny", ["127.0.0.3"]),
        );
    let app = gateway(&dir).service(service).start().await;
    let listed = app.service("listed").unwrap().clone();
    wait_state(&listed, State::Asleep).await;
    let gateway = app.listen_addr("listed").unwrap();

    // Denied, and outside the allow-list: closed unanswered, nothing woken.
    for from in [[127, 0, 0, 3], [127, 0, 0, 9]] {
        assert_eq!(exchange_from(from, gateway, b"hello").await, "");
    }
    assert_eq!(listed.state(), State::Asleep);
    // Allowed: woken and echoed.
    let mut allowed = connect_from([127, 0, 0, 2], gateway).await.unwrap();
    assert_eq!(echo_async(&mut allowed, b"hello").await, b"hello");
    assert_eq!(listed.state(), State::Awake);
    // Awake, the lists still apply.
    assert_eq!(exchange_from([127, 0, 0, 3], gateway, b"hello").await, "");
    let metrics = metrics(app.api_addr()).await;
    assert_eq!(refused(&metrics, Some(gateway), "denied"), 3, "{metrics}");
    drop(allowed);
    sleep_then_shutdown(app).await;
}

/// Writes `message` and reads as many bytes back (through an echo server).
async fn echo_async(stream: &mut tokio::net::TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_wake_rate_limits_the_wakes_of_an_address_not_its_connections() {
    let dir = temp_dir("tcp-rate");
    let backend = free_addr();
    let service = svc("rated")
        .idle("10m")
        .process(&echo(backend, "0s"), backend)
        .listen(listener("tcp", ANY_PORT).set("wake_rate", "1/1m"));
    let app = gateway(&dir).service(service).start().await;
    let rated = app.service("rated").unwrap().clone();
    wait_state(&rated, State::Asleep).await;
    let gateway = app.listen_addr("rated").unwrap();
    let from = [127, 0, 0, 2];

    let mut first = connect_from(from, gateway).await.unwrap();
    assert_eq!(echo_async(&mut first, b"wake").await, b"wake");
    // Awake: as many connections as it likes.
    for _ in 0..5 {
        let mut more = connect_from(from, gateway).await.unwrap();
        assert_eq!(echo_async(&mut more, b"more").await, b"more");
    }
    drop(first);
    rated.sleep("test").await.unwrap().unwrap();
    wait_state(&rated, State::Asleep).await;

    // Its second wake within the minute is refused; another address wakes it.
    assert_eq!(exchange_from(from, gateway, b"again").await, "");
    assert_eq!(rated.state(), State::Asleep);
    let mut other = connect_from([127, 0, 0, 3], gateway).await.unwrap();
    assert_eq!(echo_async(&mut other, b"other").await, b"other");
    let metrics = metrics(app.api_addr()).await;
    assert_eq!(
        refused(&metrics, Some(gateway), "rate_limited"),
        1,
        "{metrics}"
    );
    drop(other);
    sleep_then_shutdown(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lists_answer_403_and_the_wake_rate_429_with_retry_after() {
    let dir = temp_dir("http-access");
    let backend = forwarded_for_backend().await;
    let service = svc("web").idle("10m").exec_true(backend).listen(
        listener("http", ANY_PORT)
            .set("strategy", "block")
            .set("deny", ["127.0.0.3"])
            .set("wake_rate", "1/1m"),
    );
    let app = gateway(&dir).service(service).start().await;
    let web = app.service("web").unwrap().clone();
    wait_state(&web, State::Asleep).await;
    let gateway = app.listen_addr("web").unwrap();

    let (status, answer) = get_from([127, 0, 0, 3], gateway).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(web.state(), State::Asleep);
    let (status, answer) = get_from([127, 0, 0, 2], gateway).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("xff=127.0.0.2"), "{answer}");

    web.sleep("test").await.unwrap().unwrap();
    wait_state(&web, State::Asleep).await;
    let (status, answer) = get_from([127, 0, 0, 2], gateway).await;
    assert_eq!(status, 429, "{answer}");
    let retry_after: u64 = answer
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap_or_else(|| panic!("no Retry-After: {answer}"))
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{answer}");
    assert_eq!(web.state(), State::Asleep);
    // Another address wakes it; awake, the limited one is served again.
    assert_eq!(get_from([127, 0, 0, 4], gateway).await.0, 200);
    let (status, answer) = get_from([127, 0, 0, 2], gateway).await;
    assert_eq!(status, 200, "{answer}");

    let metrics = metrics(app.api_addr()).await;
    assert_eq!(refused(&metrics, Some(gateway), "denied"), 1, "{metrics}");
    assert_eq!(
        refused(&metrics, Some(gateway), "rate_limited"),
        1,
        "{metrics}"
    );
    sleep_then_shutdown(app).await;
}
