//! Bad clients against the real binary under the open-file limit many machines start it with
//! (1024, soft and hard): a thousand silent and a thousand byte-per-second connections on each
//! listener type while real clients from another address get through in normal time, and the
//! accept loops going on after the descriptors ran out.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use wakegate::minecraft::ping::own_handshake;
use wakegate::minecraft::{FrameReader, MAX_FRAME, StatusRequest, StatusResponse};

/// The attackers' address, and the real clients' (a per-address cap on the first does not
/// apply to the second).
const ATTACKER: [u8; 4] = [127, 0, 0, 1];
const CLIENT: [u8; 4] = [127, 0, 0, 2];

/// Connections of each kind per listener.
const BAD: usize = 1000;
/// The per-address cap of the test's listeners: the default (256) would do as well; a smaller
/// one keeps what the attack holds open well inside the gateway's 1024 descriptors.
const CAP: u64 = 100;
/// What a real client may take under attack, on a busy two-core machine.
const NORMAL: Duration = Duration::from_secs(5);

/// Raises this process's soft open-file limit to its hard limit: the test holds thousands of
/// sockets.
fn raise_own_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        now >= 8 * BAD as u64,
        "this test needs {} open files; the hard limit is {now} (raise ulimit -Hn)",
        8 * BAD
    );
}

/// `count` connections to `to` from the attacker's address, a few at a time: a burst larger
/// than the listen backlog would have the kernel drop handshakes, and the clients would finish
/// them only at their SYN retries, seconds later, which is the kernel's defence, not ours.
async fn open_many(to: SocketAddr, count: usize) -> Vec<TcpStream> {
    futures_util::stream::iter(0..count)
        .map(|_| async move {
            tokio::time::timeout(DEADLINE, connect_from(ATTACKER, to))
                .await
                .expect("an attacker's connect did not complete")
                .expect("an attacker's connect failed")
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// Resolves when the gateway has closed every one of `readers` (EOF or reset); panics with how
/// many are still open past `deadline`.
async fn all_closed<R: AsyncReadExt + Unpin>(readers: Vec<R>, deadline: Duration, what: &str) {
    let open = Arc::new(AtomicUsize::new(readers.len()));
    let waits = readers.into_iter().map(|mut reader| {
        let open = open.clone();
        async move {
            let mut sink = [0u8; 1024];
            loop {
                match reader.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        }
    });
    let closed = tokio::time::timeout(deadline, join_all(waits)).await;
    assert!(
        closed.is_ok(),
        "{} of the {what} were still open after {deadline:?}",
        open.load(Ordering::Relaxed)
    );
}

/// Writes one byte of `pattern` a second to every writer, from one task, until the test ends;
/// a writer the gateway closed is dropped.
fn trickle(mut writers: Vec<(OwnedWriteHalf, &'static [u8])>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut sent = 0usize;
        while !writers.is_empty() {
            tick.tick().await;
            let mut kept = Vec::with_capacity(writers.len());
            for (writer, pattern) in writers {
                let byte = pattern[sent.min(pattern.len() - 1)];
                if writer.try_write(&[byte]).is_ok() {
                    kept.push((writer, pattern));
                }
            }
            writers = kept;
            sent += 1;
        }
    });
}

/// A Minecraft status ping from `from`: the status JSON.
async fn status_ping(from: [u8; 4], to: SocketAddr) -> String {
    let mut stream = connect_from(from, to).await.unwrap();
    let mut out = own_handshake(to).encode().unwrap();
    out.extend(StatusRequest::Status.encode());
    stream.write_all(&out).await.unwrap();
    let mut reader = FrameReader::new(stream);
    let frame = reader.next_frame(MAX_FRAME).await.unwrap();
    match StatusResponse::parse(frame.body()).unwrap() {
        StatusResponse::Status(json) => json,
        StatusResponse::Pong(_) => panic!("a pong instead of a status"),
    }
}

/// `bytes` from `from` to an echo server, half-closed, and what comes back.
async fn echo(from: [u8; 4], to: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = connect_from(from, to).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.unwrap();
    String::from_utf8_lossy(&back).into_owned()
}

/// Runs `what` and checks that it took less than [`NORMAL`].
async fn in_normal_time<T>(name: &str, what: impl Future<Output = T>) -> T {
    let began = Instant::now();
    let out = tokio::time::timeout(NORMAL, what)
        .await
        .unwrap_or_else(|_| panic!("{name} did not get through within {NORMAL:?}"));
    eprintln!("{name}: {:?} under attack", began.elapsed());
    out
}

fn demo(listen: SocketAddr, echo: bool) -> Vec<String> {
    let mut command = vec![WAKEGATE.to_string(), "demo-backend".into()];
    if echo {
        command.push("--echo".into());
    }
    command.extend(["--listen".into(), listen.to_string()]);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_and_slow_clients_per_listener_cost_little() {
    raise_own_nofile();
    let dir = temp_dir("slowloris");
    let (tcp_backend, web_backend) = (free_addr(), free_addr());
    let (tcp, http, mc) = (free_addr(), free_addr(), free_addr());
    let config = gateway(&dir)
        .service(
            svc("echo")
                .idle("10m")
                .process(&demo(tcp_backend, true), tcp_backend)
                .listen(listener("tcp", tcp).set("max_connections_per_address", CAP)),
        )
        .service(
            svc("web")
                .idle("10m")
                .process(&demo(web_backend, false), web_backend)
                .listen(
                    listener("http", http)
                        .set("head_timeout", "2s")
                        .set("max_connections_per_address", CAP),
                ),
        )
        // Never woken: the server list is wakegate's own answer.
        .service(
            svc("mc").idle("10m").exec_true(free_addr()).listen(
                listener("minecraft", mc)
                    .set("head_timeout", "2s")
                    .set("max_connections_per_address", CAP),
            ),
        )
        .write(&dir.join("wakegate.toml"));
    let mut gateway = tokio::task::block_in_place(|| Wakegate::start_with_nofile(&config, 1024));
    let warning = gateway.wait_for("open-file hard limit is 1024");
    assert!(warning.contains("ulimit -Hn"), "{warning}");
    let api = gateway.api();
    tokio::task::block_in_place(|| {
        gateway.wake("echo");
        gateway.wake("web");
    });
    let mut events = gateway.event_stream("echo", DEADLINE).await;
    events.until_state("awake").await;
    let mut events = gateway.event_stream("web", DEADLINE).await;
    events.until_state("awake").await;

    // The attack: on each listener, BAD silent connections and BAD that send a byte a second
    // (a request head that never ends, a Minecraft handshake of 100 bytes, bytes to echo).
    let mut silent = Vec::new();
    let mut slow_readers = Vec::new();
    let mut slow_writers = Vec::new();
    let patterns: [(SocketAddr, &'static [u8]); 3] = [
        (tcp, b"x"),
        (http, b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: a"),
        (mc, &[100, 0, 0xff, 0x05, 0x0b, b'a']),
    ];
    let began = Instant::now();
    for (listener, pattern) in patterns {
        silent.push(open_many(listener, BAD).await);
        for stream in open_many(listener, BAD).await {
            let (reader, writer) = stream.into_split();
            slow_readers.push((listener, reader));
            slow_writers.push((writer, pattern));
        }
    }
    eprintln!("{} attackers connected in {:?}", 6 * BAD, began.elapsed());
    trickle(slow_writers);

    // Real clients from another address get through in normal time.
    let echoed = in_normal_time("a tcp exchange", echo(CLIENT, tcp, b"hello")).await;
    assert_eq!(echoed, "hello");
    let page = in_normal_time(
        "an http GET",
        exchange_from(
            CLIENT,
            http,
            b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let status = in_normal_time("a Minecraft status ping", status_ping(CLIENT, mc)).await;
    assert!(status.contains("sleeping"), "{status}");
    let health = in_normal_time(
        "/healthz",
        exchange_from(
            CLIENT,
            api,
            b"GET /healthz HTTP/1.0\r\nHost: wakegate\r\n\r\n",
        ),
    )
    .await;
    assert!(health.starts_with("HTTP/1.0 200"), "{health}");

    // Every silent and slow http and Minecraft connection is closed by the gateway: at once
    // past the cap, at head_timeout (2 s) otherwise.
    let [silent_tcp, silent_http, silent_mc] = <[Vec<TcpStream>; 3]>::try_from(silent).unwrap();
    let halves = |streams: Vec<TcpStream>| {
        streams
            .into_iter()
            .map(|s| s.into_split())
            .unzip::<_, _, Vec<_>, Vec<_>>()
    };
    let (http_readers, _http_writers) = halves(silent_http);
    let (mc_readers, _mc_writers) = halves(silent_mc);
    let slow: Vec<OwnedReadHalf> = slow_readers
        .into_iter()
        .filter(|(listener, _)| *listener != tcp)
        .map(|(_, reader)| reader)
        .collect();
    let patience = Duration::from_secs(2) + NORMAL;
    all_closed(http_readers, patience, "silent http connections").await;
    all_closed(mc_readers, patience, "silent Minecraft connections").await;
    all_closed(slow, patience, "slow http and Minecraft connections").await;

    let metrics = metrics(api).await;
    // Every http and Minecraft attacker was refused at the cap or cut at head_timeout; tcp
    // forwards from the first byte, so only the cap bounds it.
    for listener in [http, mc] {
        let capped = refused(&metrics, Some(listener), "per_address_cap");
        let timed_out = refused(&metrics, Some(listener), "head_timeout");
        assert_eq!(capped + timed_out, 2 * BAD as u64, "{listener}:\n{metrics}");
        assert!(timed_out >= CAP, "{listener}: {timed_out} timed out");
    }
    assert_eq!(
        refused(&metrics, Some(tcp), "per_address_cap"),
        2 * BAD as u64 - CAP,
        "{metrics}"
    );
    // The cap kept the attack inside the descriptors: none ran out.
    for listener in [tcp, http, mc] {
        assert_eq!(
            refused(&metrics, Some(listener), "fd_exhausted"),
            0,
            "{metrics}"
        );
    }
    promtool_check(&metrics);
    drop(silent_tcp);
    // One line per listener and reason at most, not one per client.
    let log = gateway.output();
    let capped_lines = log
        .matches("max_connections_per_address connections open")
        .count();
    assert!(
        (1..=6).contains(&capped_lines),
        "{capped_lines} log lines about the cap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_goes_on_after_the_descriptors_run_out() {
    raise_own_nofile();
    let dir = temp_dir("fd-exhaustion");
    let web_backend = free_addr();
    let http = free_addr();
    let config = gateway(&dir)
        .service(
            svc("web")
                .idle("10m")
                .process(&demo(web_backend, false), web_backend)
                .listen(
                    listener("http", http)
                        .set("head_timeout", "2s")
                        .set("max_connections_per_address", 0),
                ),
        )
        .write(&dir.join("wakegate.toml"));
    // Far fewer descriptors than the silent clients below: no cap, so they run out.
    let mut gateway = tokio::task::block_in_place(|| Wakegate::start_with_nofile(&config, 128));
    let api = gateway.api();
    tokio::task::block_in_place(|| gateway.wake("web"));
    let mut events = gateway.event_stream("web", DEADLINE).await;
    events.until_state("awake").await;
    drop(events);

    // Whole streams: a dropped write half would close the client's side.
    let silent = open_many(http, 300).await;
    tokio::task::block_in_place(|| gateway.wait_for("out of file descriptors"));
    // Accepted in waves as each wave's head_timeout frees descriptors: all of them closed.
    all_closed(silent, DEADLINE, "silent connections").await;

    // Then everything answers again: the listener, and the API, whose server also kept going.
    let page = exchange_from(
        CLIENT,
        http,
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let metrics = metrics(api).await;
    assert!(
        refused(&metrics, Some(http), "fd_exhausted") > 0,
        "{metrics}"
    );
    assert_eq!(
        refused(&metrics, Some(http), "head_timeout"),
        300,
        "{metrics}"
    );
}
