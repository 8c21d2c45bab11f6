//! Two real `wakegate run` processes sharing one real PostgreSQL database (started once for
//! this test binary, a database per test) and one data dir, driving one `process` service (the
//! demo echo server) with a 2 s lease: one gateway owns the service, the other serves its
//! clients; a wake is started once whichever gateway the clients reach; the owner killed with
//! -9 in the middle of a wake or while awake is replaced within the lease time, with no second
//! start, no orphan and no gap in the event ids.
// A test's own threads end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

#[path = "../common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

mod dashboard;
mod relay;

/// Short, so a failover is quick; renewed every third of it.
const LEASE: Duration = Duration::from_secs(2);

/// Two gateways' configs over one database and one data dir: `gw-a` and `gw-b`, each with its
/// own listener for the echo service, whose backend boots in `boot`.
struct Pair {
    dir: PathBuf,
    hook: Hook,
    backend: SocketAddr,
    listen: [SocketAddr; 2],
    files: [PathBuf; 2],
}

impl Pair {
    fn new(name: &str, boot: &str, idle: &str) -> Pair {
        Pair::on(postgres::shared(), name, boot, idle)
    }

    /// As [`Pair::new`], on a server of the test's own.
    fn on(server: &postgres::Server, name: &str, boot: &str, idle: &str) -> Pair {
        let dir = temp_dir(name);
        let url = server.database(name);
        let backend = free_addr();
        let listen = [free_addr(), free_addr()];
        let hook = Hook::start();
        let notify = format!(
            "[[notify]]\ntype = \"webhook\"\nurl = \"http://{}/hook\"\nsecret = \"gateways-test-secret-0123456789\"\nretry_min = \"50ms\"\nretry_max = \"200ms\"\n",
            hook.address
        );
        let files = ["gw-a", "gw-b"].map(|id| {
            let i = usize::from(id == "gw-b");
            gateway(&dir)
                .set("store", url.as_str())
                .set("id", id)
                .set("lease", "2s")
                .service(
                    svc("echo")
                        .idle(idle)
                        .wake_timeout("20s")
                        .process(&echo(backend, boot), backend)
                        .tcp(listen[i]),
                )
                .raw(&notify)
                .write(&dir.join(format!("{id}.toml")))
        });
        Pair {
            dir,
            hook,
            backend,
            listen,
            files,
        }
    }

    /// Starts `gw-a`, which takes the service, then `gw-b`, which follows it.
    fn start(&self) -> (Wakegate, Wakegate) {
        let mut a = Wakegate::start(&self.files[0]);
        a.wait_for("This gateway owns the service now");
        let mut b = Wakegate::start(&self.files[1]);
        b.wait_for("Another gateway owns the service; following its status.");
        (a, b)
    }

    fn starts(&self) -> usize {
        starts_in_log(&self.dir, "echo")
    }
}

impl Drop for Pair {
    /// No echo server outlives its test, whatever happened to the gateways.
    fn drop(&mut self) {
        for pid in echo_servers(self.backend) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// A webhook receiver: the event ids of the requests it answered, in order.
struct Hook {
    address: SocketAddr,
    ids: Arc<Mutex<Vec<i64>>>,
}

impl Hook {
    fn start() -> Hook {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = socket.local_addr().unwrap();
        let ids = Arc::new(Mutex::new(Vec::new()));
        let seen = ids.clone();
        std::thread::spawn(move || {
            for stream in socket.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || Hook::serve(stream, &seen));
            }
        });
        Hook { address, ids }
    }

    /// Answers each request of a keep-alive connection 204, noting its event id.
    fn serve(stream: TcpStream, seen: &Mutex<Vec<i64>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        loop {
            let (mut id, mut length) = (None, 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    match name.to_ascii_lowercase().as_str() {
                        "x-wakegate-event-id" => id = value.trim().parse::<i64>().ok(),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            seen.lock().unwrap().extend(id);
            if writer
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
    }

    fn ids(&self) -> Vec<i64> {
        self.ids.lock().unwrap().clone()
    }
}

/// Polls `check` until it holds, at most [`DEADLINE`].
fn until(what: &str, mut check: impl FnMut() -> bool) {
    let give_up = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < give_up, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ids of every event in the log, from a gateway's API, oldest first.
fn event_ids(gateway: &Wakegate) -> Vec<i64> {
    let page = api_json(gateway.api(), "GET", "/api/v1/events?limit=1000");
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

/// The ids of the events a webhook wants by default (all but progress), oldest first.
fn wanted_ids(gateway: &Wakegate) -> Vec<i64> {
    let page = api_json(gateway.api(), "GET", "/api/v1/events?limit=1000");
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] != "progress")
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

/// Each id at its first arrival; a later repeat must be of an id already delivered, never
/// one that overtakes.
fn first_arrivals(ids: &[i64]) -> Vec<i64> {
    let mut first: Vec<i64> = Vec::new();
    for &id in ids {
        match first.last() {
            Some(&last) if id <= last => assert!(first.contains(&id), "{id} out of order: {ids:?}"),
            _ => first.push(id),
        }
    }
    first
}

/// Ids that follow each other with no gap and no repeat.
fn assert_contiguous(ids: &[i64]) {
    assert!(!ids.is_empty());
    for pair in ids.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "ids not contiguous: {ids:?}");
    }
}

fn state(gateway: &Wakegate) -> String {
    gateway.service("echo")["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Clients that each connect, are echoed a line, and stay connected until dropped.
fn clients(to: &[SocketAddr], per_gateway: usize) -> Vec<TcpStream> {
    let threads: Vec<_> = (0..per_gateway * to.len())
        .map(|n| {
            let address = to[n % to.len()];
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).unwrap();
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                let line = format!("client {n}\n");
                assert_eq!(echo_back(&mut stream, line.as_bytes()), line.as_bytes());
                stream
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_hundred_clients_over_two_gateways_cause_one_start_and_the_last_client_on_either_keeps_it_awake()
 {
    let pair = Pair::new("hundred", "500ms", "1s");
    let (mut a, mut b) = pair.start();

    // The follower's live event stream, from now on: the owner's events reach it too.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let now = *event_ids(&b).last().unwrap();
    let mut live = runtime.block_on(b.event_stream_after("echo", now, DEADLINE));

    // Asleep: 50 clients through each gateway at once. One start, every client served.
    let mut open = clients(&pair.listen, 50);
    assert_eq!(pair.starts(), 1, "the backend was started more than once");
    assert_eq!(state(&a), "awake");
    until("the follower mirrors awake", || state(&b) == "awake");
    let heard = runtime.block_on(live.until_state("awake"));
    let heard: Vec<i64> = heard.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(heard[0], now + 1, "{heard:?}");
    assert_contiguous(&heard);
    // The follower wrote its own connections for the owner to count.
    assert_eq!(b.service("echo")["connections"], 50);

    // Every client on the owner goes, and all but one on the follower: the one left keeps it
    // awake past several idle timeouts.
    let last = open.remove(1);
    drop(open);
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(4) {
        assert_eq!(state(&a), "awake", "stopped under a client of the follower");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut last = last;
    assert_eq!(echo_back(&mut last, b"still here\n"), b"still here\n");

    // Once it closes, the owner stops the backend after the idle timeout.
    drop(last);
    a.wait_for("no connection for");
    a.wait_for("backend stopped");
    until("the follower mirrors asleep", || state(&b) == "asleep");
    assert!(
        echo_servers(pair.backend).is_empty(),
        "an echo server is left"
    );

    // The follower's API shows who owns it; both show the same event log.
    let owned = b.service("echo");
    assert_eq!(owned["state"], "asleep");
    assert_eq!(owned["owner"], "gw-a");
    assert_eq!(a.service("echo")["owner"], "gw-a");
    // So do `wakegate status` (with the gateways' leases) and each gateway's /metrics.
    let status = std::process::Command::new(WAKEGATE)
        .args(["status", "--api"])
        .arg(b.api().to_string())
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.contains("gw-b (this one): lease"), "{status}");
    assert!(status.contains("gw-a: lease"), "{status}");
    assert!(status.contains("echo: gw-a, lease"), "{status}");
    let owned = |g: &Wakegate| {
        let (_, text) = http(g.api(), "GET", "/metrics", "").unwrap();
        text.lines()
            .find(|l| l.starts_with("wakegate_service_owned{service=\"echo\"}"))
            .map(str::to_string)
    };
    assert_eq!(
        owned(&a).as_deref(),
        Some("wakegate_service_owned{service=\"echo\"} 1")
    );
    assert_eq!(
        owned(&b).as_deref(),
        Some("wakegate_service_owned{service=\"echo\"} 0")
    );
    until("both gateways show the same log", || {
        event_ids(&a) == event_ids(&b)
    });
    assert_contiguous(&event_ids(&a));
    a.stop(DEADLINE);
    b.wait_for("This gateway owns the service now");
    b.stop(DEADLINE);
}

#[test]
fn the_owner_killed_in_the_middle_of_a_wake_is_replaced_within_the_lease_without_a_second_start() {
    // A slow boot: the owner is killed while the backend starts.
    let pair = Pair::new("midwake", "1500ms", "1s");
    let (mut a, mut b) = pair.start();

    // A client on the follower: it asks the owner, which starts the backend.
    let follower = pair.listen[1];
    let held = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(follower).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let back = echo_back(&mut stream, b"held\n");
        (back, stream)
    });
    a.wait_for("waiting for");
    assert_eq!(pair.starts(), 1);
    a.kill();
    let killed = Instant::now();

    // The follower takes over within the lease time (and a third of it, its next try),
    // adopts the backend that is booting, and serves the held client.
    b.wait_for("This gateway owns the service now");
    let took = killed.elapsed();
    println!("the follower took the service {took:?} after the owner was killed");
    assert!(
        took < LEASE + LEASE / 3 + Duration::from_millis(700),
        "took {took:?}"
    );
    let adopted = b.wait_for("found the backend running");
    assert!(adopted.contains("was waking"), "{adopted}");
    let (back, stream) = held.join().unwrap();
    assert_eq!(back, b"held\n");
    assert_eq!(pair.starts(), 1, "the backend was started twice");
    assert_eq!(echo_servers(pair.backend).len(), 1);

    // Killed while awake too: a new gateway A' follows, B is killed, A' takes over and adopts.
    let mut a2 = Wakegate::start(&pair.files[0]);
    a2.wait_for("Another gateway owns the service; following its status.");
    b.kill();
    drop(stream);
    a2.wait_for("This gateway owns the service now");
    let adopted = a2.wait_for("found the backend running");
    assert!(adopted.contains("was awake"), "{adopted}");
    // Idle, it is stopped: no orphan.
    a2.wait_for("no connection for");
    a2.wait_for("backend stopped");
    assert!(echo_servers(pair.backend).is_empty(), "an orphan is left");
    assert_eq!(pair.starts(), 1);
    assert_contiguous(&event_ids(&a2));

    // The webhook got every event but progress, in order, across both failovers; an event
    // whose delivery was not yet recorded when its gateway died may come twice (same id).
    let wanted = wanted_ids(&a2);
    until("the webhook has every event", || {
        first_arrivals(&pair.hook.ids()) == wanted
    });
    a2.stop(DEADLINE);
}

#[test]
fn the_database_restarted_under_both_gateways_they_reconnect_and_a_held_client_is_served() {
    let server = postgres::Server::start("gateways-restart");
    let pair = Pair::on(&server, "dbrestart", "300ms", "1s");
    let (mut a, b) = pair.start();
    let before = event_ids(&a);

    // The database goes away: the owner cannot renew its lease and stops driving.
    server.stop();
    a.wait_for("Could not renew the lease on the service in time.");
    a.wait_for("lost its lease");

    // A client arrives at the follower meanwhile: held, not refused.
    let follower = pair.listen[1];
    let held = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(follower).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        echo_back(&mut stream, b"held\n")
    });

    // Back: one of them takes the service again, and the held client is served by one start.
    server.pg_ctl("start");
    assert_eq!(held.join().unwrap(), b"held\n");
    assert_eq!(pair.starts(), 1);
    // Nothing recorded meanwhile is lost: the log goes on from where it was, without gaps.
    until("the wake is in the log", || {
        let ids = event_ids(&b);
        ids.len() > before.len() && ids[..before.len()] == before[..]
    });
    assert_contiguous(&event_ids(&b));
    assert_eq!(event_ids(&a), event_ids(&b));
    drop((a, b));
}
