//! Chaos: a gateway with several services under a steady trickle of clients is killed with -9
//! at fifty moments (mid-wake, awake, mid-stop, mid-idle-countdown, mid-delivery of a
//! notification) and started again each time. After every restart and at the end: no
//! backend runs that wakegate does not know about, never two copies of one, no false
//! `failed`, event ids contiguous without duplicates, every service asleep once clients stop,
//! and a webhook receiver that has every event once and in order.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use serde_json::Value;

const KILLS: usize = 50;
const SERVICES: [&str; 3] = ["direct", "script", "hooks"];

/// A small xorshift generator: the moments differ per run, and the seed printed on failure
/// replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A webhook receiver: every delivery by its event id (the idempotency key), in arrival order.
/// It answers each after a short while, so deliveries are in flight long enough to be killed
/// in the middle of; it says so on `delivering`.
struct Receiver {
    addr: SocketAddr,
    deliveries: Arc<Mutex<Vec<i64>>>,
    delivering: mpsc::Receiver<i64>,
    /// Each id once its delivery was answered.
    finished: mpsc::Receiver<i64>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let (tx, delivering) = mpsc::channel();
        let (done, finished) = mpsc::channel();
        let log = deliveries.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (log, tx, done) = (log.clone(), tx.clone(), done.clone());
                std::thread::spawn(move || {
                    if let Some(id) = receive(stream, &tx) {
                        log.lock().unwrap().push(id);
                        let _ = done.send(id);
                    }
                });
            }
        });
        Receiver {
            addr,
            deliveries,
            delivering,
            finished,
        }
    }

    /// Distinct ids in the order they were first accepted.
    fn accepted(&self) -> Vec<i64> {
        let mut seen = BTreeSet::new();
        let all = self.deliveries.lock().unwrap().clone();
        all.into_iter().filter(|id| seen.insert(*id)).collect()
    }
}

/// Reads one request, announces it, answers 200 after a moment; the id once answered.
fn receive(stream: TcpStream, delivering: &mpsc::Sender<i64>) -> Option<i64> {
    let mut reader = BufReader::new(stream);
    let (mut id, mut length) = (None, 0);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("x-wakegate-event-id:") {
            id = v.trim().parse().ok();
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let id = id?;
    let _ = delivering.send(id);
    // A receiver that takes its time (a slow endpoint): the window a kill lands in.
    std::thread::sleep(Duration::from_millis(150));
    let mut stream = reader.into_inner();
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .ok()?;
    Some(id)
}

/// Clients that come and go at random: each connects to a random service, exchanges a
/// line, stays a moment and leaves. Refused while the gateway is down; that is the point.
fn trickle(listens: Vec<SocketAddr>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = Rng(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        let addr = listens[rng.below(listens.len() as u64) as usize];
        if let Ok(mut client) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
            let mut back = [0; 5];
            if client.write_all(b"ping\n").is_ok() && client.read_exact(&mut back).is_ok() {
                assert_eq!(&back, b"ping\n", "a client got someone else's bytes");
            }
            std::thread::sleep(Duration::from_millis(rng.below(300)));
        }
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
    }
}

fn executable(path: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// The gateway: a `process` backend run directly, one through a `start.sh` that `exec`s it,
/// and an `exec` backend whose hooks start a daemon and stop it; a webhook for every event.
fn config(
    dir: &Path,
    listens: &[SocketAddr],
    backends: &[SocketAddr],
    hook: SocketAddr,
) -> PathBuf {
    let server = |backend: SocketAddr| {
        format!("{WAKEGATE} demo-backend --echo --listen {backend} --boot-delay 200ms")
    };
    let start = executable(
        &dir.join("start.sh"),
        &format!("exec {}", server(backends[1])),
    );
    let pid = dir.join("hooks.pid").display().to_string();
    // A process is alive when it exists and is not a zombie waiting for its parent to reap it.
    let alive = "alive() { [ -r /proc/$1/stat ] && ! grep -q ') Z' /proc/$1/stat; }";
    let hooks = typed("exec")
        .set(
            "start",
            format!(
                "nohup {} >/dev/null 2>&1 & echo $! > {pid}",
                server(backends[2])
            ),
        )
        .set(
            "stop",
            format!(
                "{alive}; p=$(cat {pid}) || exit 0; kill $p; while alive $p; do sleep 0.05; done; rm -f {pid}"
            ),
        )
        .set("status", format!("{alive}; [ -f {pid} ] && alive $(cat {pid})"))
        .set("address", backends[2].to_string());
    gateway(dir)
        .service(
            svc(SERVICES[0])
                .idle("1s")
                .process(&echo(backends[0], "200ms"), backends[0])
                .tcp(listens[0]),
        )
        .service(
            svc(SERVICES[1])
                .idle("1s")
                .process(&[start.display().to_string()], backends[1])
                .tcp(listens[1]),
        )
        .service(svc(SERVICES[2]).idle("1s").backend(hooks).tcp(listens[2]))
        .raw(&format!(
            "[[notify]]\ntype = \"webhook\"\nname = \"chaos\"\nurl = \"http://{hook}/hook\"\n\
             secret = \"chaos-test-secret-0123456789\"\nretry_min = \"100ms\"\nretry_max = \"500ms\"\n\
             events = [\"transition\", \"progress\", \"lease\", \"action\", \"warning\"]\n"
        ))
        .write(&dir.join("wakegate.toml"))
}

/// Every event in the log, oldest first, page by page.
fn all_events(gateway: &Wakegate) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e["id"].as_i64().unwrap());
        let page = api_json(
            gateway.api(),
            "GET",
            &format!("/api/v1/events?after={after}&limit=500"),
        );
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return all;
        }
        all.extend(events);
    }
}

/// What must hold whenever the gateway has reconciled: a service that says it sleeps runs
/// nothing, and none runs twice.
fn check_backends(gateway: &Wakegate, backends: &[SocketAddr], moment: &str) {
    for (name, backend) in SERVICES.iter().zip(backends) {
        let before = gateway.service(name);
        let running = echo_servers(*backend);
        let after = gateway.service(name);
        assert!(
            running.len() <= 1,
            "{moment}: two copies of {name}: {running:?}"
        );
        let resting = |s: &Value| s["state"] == "asleep" || s["state"] == "failed";
        if resting(&before) && before["since"] == after["since"] {
            assert!(
                running.is_empty(),
                "{moment}: {name} says {} but its backend runs ({running:?})",
                before["state"]
            );
        }
    }
}

#[test]
fn killed_fifty_times_it_never_loses_a_server_or_an_event() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("chaos seed: {seed}");
    let mut rng = Rng(seed | 1);
    let dir = temp_dir("chaos");
    let receiver = Receiver::start();
    let listens: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let backends: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let file = config(&dir, &listens, &backends, receiver.addr);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = {
        let (listens, stop) = (listens.clone(), stop.clone());
        std::thread::spawn(move || trickle(listens, stop, seed))
    };

    let phases = [
        "mid-wake",
        "awake",
        "mid-stop",
        "mid-idle-countdown",
        "mid-delivery",
    ];
    for kill in 0..KILLS {
        let phase = phases[kill % phases.len()];
        let mut gateway = Wakegate::start(&file);
        for _ in SERVICES {
            gateway.wait_for("wakegate started and found");
        }
        let moment = format!("after restart {kill} (seed {seed})");
        check_backends(&gateway, &backends, &moment);
        // Drop what earlier lives announced: wait for a delivery of this one.
        while receiver.delivering.try_recv().is_ok() {}
        match phase {
            "mid-wake" => {
                gateway.wait_for("state=waking");
            }
            "awake" => {
                gateway.wait_for("backend ready at");
            }
            "mid-stop" => {
                gateway.wait_for("state=stopping");
            }
            "mid-idle-countdown" => {
                gateway.wait_for("backend ready at");
                std::thread::sleep(Duration::from_millis(rng.below(900)));
            }
            _ => {
                receiver
                    .delivering
                    .recv_timeout(DEADLINE)
                    .unwrap_or_else(|_| panic!("{moment}: no delivery began"));
            }
        }
        gateway.kill();
    }

    // The last life: clients stop; everything goes to sleep and is told.
    let mut gateway = Wakegate::start(&file);
    stop.store(true, Ordering::Relaxed);
    clients.join().unwrap();
    for _ in SERVICES {
        gateway.wait_for("wakegate started and found");
    }
    check_backends(&gateway, &backends, "at the end");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for name in SERVICES {
        let last = gateway
            .events(name)
            .last()
            .map_or(0, |e| e["id"].as_i64().unwrap());
        if gateway.service(name)["state"] != "asleep" {
            runtime.block_on(async {
                let mut stream = gateway.event_stream_after(name, last, DEADLINE).await;
                stream.until_state("asleep").await;
            });
        }
    }
    for backend in &backends {
        assert_eq!(
            echo_servers(*backend),
            Vec::<u32>::new(),
            "a backend runs with every service asleep"
        );
    }

    let events = all_events(&gateway);
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (1..=ids.len() as i64).collect();
    assert_eq!(ids, expected, "event ids are not contiguous");
    let failures: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "transition" && e["state"] == "failed")
        .collect();
    assert!(
        failures.is_empty(),
        "false failures (seed {seed}): {failures:#?}"
    );

    // Every event reaches the webhook, once each (by its key) and in order.
    let last = *ids.last().unwrap();
    while !receiver.accepted().contains(&last) {
        receiver
            .finished
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("the webhook never got event {last} (seed {seed})"));
    }
    let ids: Vec<i64> = all_events(&gateway)
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        receiver.accepted(),
        ids,
        "the webhook missed events or got them out of order"
    );

    gateway.signal(rustix::process::Signal::TERM);
    assert!(gateway.wait_exit().success());
    for backend in &backends {
        assert_eq!(
            echo_servers(*backend),
            Vec::<u32>::new(),
            "a backend outlived a graceful stop"
        );
    }
}
