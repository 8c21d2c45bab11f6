//! `sleep_mode = "freeze"` of a `process` backend with a real Minecraft server: flying-squid,
//! frozen with SIGSTOP while idle (every thread of it in state `T`), server-list pings answered
//! by wakegate meanwhile, and a mineflayer bot's join resuming the same process, which plays.
//! Through `kill -9` of wakegate the server stays frozen, the next wakegate keeps it so, and
//! `freeze_for` stops it for real.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use serde_json::Value;
use wakegate::backend::SleepMode;
use wakegate::event::{Kind, State};

const VERSION: &str = "1.20.4";
const ASLEEP: &str = "§7survival sleeps — join to wake";

/// flying-squid behind a `minecraft` listener on `bind`, frozen when idle (2 s).
fn frozen_squid(backend: SocketAddr, bind: impl std::fmt::Display) -> Service {
    let listen = listener("minecraft", bind).set("motd_asleep", ASLEEP);
    squid("survival", backend, VERSION, listen).backend_set("sleep_mode", "freeze")
}

/// Whether every thread of process `pid` is stopped by a signal (state `T`).
fn frozen(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let states: Vec<char> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit(')').next()?.trim_start().chars().next())
        .collect();
    !states.is_empty() && states.iter().all(|s| *s == 'T')
}

/// Kills the server's process group when the test ends, however it ends: a frozen server
/// left behind would keep its memory for good.
struct Reap(u32);

impl Drop for Reap {
    fn drop(&mut self) {
        let ours = std::fs::read(format!("/proc/{}/cmdline", self.0))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("squid.js"));
        if ours && let Some(pid) = Pid::from_raw(self.0 as i32) {
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_is_frozen_answered_for_by_wakegate_and_resumed_by_a_join() {
    let dir = temp_dir("mcf-freeze");
    let backend = free_addr();
    let app = gateway(&dir)
        .service(frozen_squid(backend, ANY_PORT))
        .start()
        .await;
    let service = app.service("survival").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = app.subscribe();
    let gateway = app.listen_addr("survival").unwrap();

    // The first join starts it cold.
    let mut bots = Bots::join(gateway.port(), "mc.example.com", VERSION, &["Steve"]);
    let cold_join = bots.spawned("Steve").await;
    let seen = transitions_until(&mut events, State::Awake).await;
    let cold = seen.last().unwrap().clone();
    assert_eq!(cold.detail["woke_from"], "stopped", "{cold:?}");
    let pid = backend_pid(&dir, "survival");
    let _reap = Reap(pid);
    assert_eq!(
        service.status().sleep_mode,
        SleepMode::Frozen,
        "how it sleeps next"
    );

    // Idle: frozen, not stopped.
    bots.quit().await;
    let seen = transitions_until(&mut events, State::Asleep).await;
    let asleep = seen.last().unwrap();
    assert_eq!(asleep.detail["sleep_mode"], "frozen", "{asleep:?}");
    assert!(
        asleep.reason.starts_with("backend frozen after"),
        "{asleep:?}"
    );
    assert!(frozen(pid), "the server is not stopped by a signal");
    assert_eq!(service.status().sleep_mode, SleepMode::Frozen);

    // While frozen, wakegate answers a server-list ping itself: nothing waits on the stopped
    // server, nothing wakes it.
    let pings = service
        .metrics()
        .status_pings
        .load(std::sync::atomic::Ordering::Relaxed);
    let status = mcstatus(gateway.port()).await;
    assert_eq!(motd(&status), ASLEEP, "{status}");
    assert_eq!(service.status().state, State::Asleep, "a ping woke it");
    assert!(frozen(pid), "a ping thawed it");
    assert_eq!(
        service
            .metrics()
            .status_pings
            .load(std::sync::atomic::Ordering::Relaxed),
        pings + 1
    );
    while let Ok(event) = events.try_recv() {
        assert_ne!(event.kind, Kind::Transition, "a ping moved it: {event:?}");
    }

    // A join resumes the same process, and the bot plays in its world.
    let mut bots = Bots::join(gateway.port(), "mc.example.com", VERSION, &["Alex"]);
    let warm_join = bots.spawned("Alex").await;
    let seen = transitions_until(&mut events, State::Awake).await;
    let resumed = seen.last().unwrap().clone();
    assert_eq!(resumed.detail["woke_from"], "frozen", "{resumed:?}");
    assert_eq!(
        backend_pid(&dir, "survival"),
        pid,
        "a second server was started"
    );
    assert_eq!(starts_in_log(&dir, "survival"), 1);
    assert!(!frozen(pid));
    let (cold_ms, resume_ms) = (
        cold.detail["duration_ms"].as_u64().unwrap(),
        resumed.detail["duration_ms"].as_u64().unwrap(),
    );
    assert!(
        resume_ms < cold_ms,
        "resumed in {resume_ms} ms, cold {cold_ms} ms"
    );
    println!(
        "wake: cold start {cold_ms} ms, resume {resume_ms} ms; a join: cold {} ms, frozen {} ms",
        cold_join["spawn"], warm_join["spawn"]
    );
    bots.say("Alex", "thawed and well").await;
    bots.until("Alex's line back from the server", |r| {
        r["chat"]
            .as_str()
            .is_some_and(|c| c.contains("thawed and well"))
    })
    .await;
    // The ETA of the next wake is that of a resume.
    assert_eq!(
        service.status().expected_boot.map(|d| d.as_millis() as u64),
        Some(resume_ms)
    );

    // Frozen again, then killed in its sleep: noticed at once; the next wake starts it cold.
    bots.quit().await;
    transitions_until(&mut events, State::Asleep).await;
    assert!(frozen(pid));
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
    let noticed = wait_event(&mut events, |e| e.kind == Kind::Warning).await;
    assert!(
        noticed
            .reason
            .starts_with("the frozen server exited in its sleep"),
        "{noticed:?}"
    );
    assert_eq!(detail(&noticed, "exit"), "signal 9", "{noticed:?}");
    assert_eq!(service.status().sleep_mode, SleepMode::Stopped);
    assert_eq!(service.status().state, State::Asleep);
    app.shutdown().await;
}

/// Starts `wakegate run` with `service` in `dir`.
fn run(dir: &Path, service: Service) -> Wakegate {
    let file = gateway(dir)
        .service(service)
        .write(&dir.join("wakegate.toml"));
    tokio::task::block_in_place(|| Wakegate::start(&file))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_outlives_kill_9_of_wakegate_stays_frozen_and_freeze_for_ends_it() {
    let dir = temp_dir("mcf-restart");
    let (backend, bind) = (free_addr(), free_addr());
    let mut first = run(&dir, frozen_squid(backend, bind));
    let mut events = first.event_stream("survival", PEER_DEADLINE).await;
    events.until_state("asleep").await;
    let mut bots = Bots::join(bind.port(), "mc.example.com", VERSION, &["Steve"]);
    bots.spawned("Steve").await;
    let pid = backend_pid(&dir, "survival");
    let _reap = Reap(pid);
    bots.quit().await;
    let is_frozen_asleep =
        |e: &Value| e["kind"] == "transition" && e["detail"]["sleep_mode"] == "frozen";
    events.until("the freeze", is_frozen_asleep).await;
    assert!(frozen(pid));

    // kill -9: the server, in a process group of its own, stays frozen; the next wakegate
    // finds it so and keeps it so, answering pings itself.
    let after = last_event_id(&first);
    tokio::task::block_in_place(|| first.kill());
    assert!(
        frozen(pid),
        "the server was thawed (or killed) with wakegate"
    );
    let mut second = run(&dir, frozen_squid(backend, bind));
    let mut events = second
        .event_stream_after("survival", after, PEER_DEADLINE)
        .await;
    let found = events.until_state("asleep").await.pop().unwrap();
    assert!(
        found["reason"]
            .as_str()
            .unwrap()
            .starts_with("wakegate started and found the backend frozen"),
        "{found}"
    );
    let view = second.service("survival");
    assert_eq!(view["state"], "asleep", "{view}");
    assert_eq!(view["sleep_mode"], "frozen", "{view}");
    let table = std::process::Command::new(WAKEGATE)
        .args(["status", "--api", &second.api().to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(" asleep (frozen) "), "{table}");
    assert!(
        metrics(&second)
            .contains("wakegate_service_sleep_mode{service=\"survival\",mode=\"frozen\"} 1")
    );
    assert_eq!(motd(&mcstatus(bind.port()).await), ASLEEP);
    assert!(frozen(pid), "the restarted wakegate thawed it");

    // A join resumes it: the same process, no second start.
    let mut bots = Bots::join(bind.port(), "mc.example.com", VERSION, &["Alex"]);
    bots.spawned("Alex").await;
    let ready = events.until_state("awake").await.pop().unwrap();
    assert_eq!(ready["detail"]["woke_from"], "frozen", "{ready}");
    assert_eq!(starts_in_log(&dir, "survival"), 1);
    assert!(alive(pid) && !frozen(pid));
    // The resume is timed apart from cold starts; the exposition passes promtool.
    let exposition = metrics(&second);
    for line in [
        "wakegate_wake_duration_seconds_count{service=\"survival\",from=\"frozen\"} 1",
        "wakegate_wake_duration_seconds_count{service=\"survival\",from=\"stopped\"} 0",
        "wakegate_service_sleep_mode{service=\"survival\",mode=\"frozen\"} 0",
    ] {
        assert!(exposition.contains(line), "no {line} in\n{exposition}");
    }
    promtool_check(&exposition);
    bots.quit().await;
    events.until("the second freeze", is_frozen_asleep).await;
    assert!(frozen(pid));

    // kill -9 again; a wakegate with `freeze_for` finds it frozen and, once the limit has
    // passed, stops it for real: thawed, then stopped the usual way. Its events are read
    // from its first on, whenever they came.
    let after = last_event_id(&second);
    tokio::task::block_in_place(|| second.kill());
    let limited = frozen_squid(backend, bind).backend_set("freeze_for", "1s");
    let mut third = run(&dir, limited);
    let mut events = third
        .event_stream_after("survival", after, PEER_DEADLINE)
        .await;
    let found = events.until_state("asleep").await.pop().unwrap();
    assert_eq!(found["detail"]["trigger"], "reconcile", "{found}");
    assert!(frozen(pid) || !alive(pid));
    let stopping = events
        .until("the stop at the sleep limit", |e| {
            e["kind"] == "transition" && e["state"] == "stopping"
        })
        .await
        .pop()
        .unwrap();
    assert_eq!(stopping["detail"]["trigger"], "sleep_limit", "{stopping}");
    let asleep = events.until_state("asleep").await.pop().unwrap();
    assert_eq!(asleep["detail"]["sleep_mode"], "stopped", "{asleep}");
    assert!(!alive(pid), "the server still runs after freeze_for");
    assert_eq!(third.service("survival")["sleep_mode"], "stopped");
    tokio::task::block_in_place(|| third.stop(PEER_DEADLINE));
}

/// The id of the last event `gateway` recorded: a stream after it shows what comes next.
fn last_event_id(gateway: &Wakegate) -> i64 {
    gateway.events("survival").last().unwrap()["id"]
        .as_i64()
        .unwrap()
}

/// The gateway's Prometheus exposition.
fn metrics(gateway: &Wakegate) -> String {
    let (status, body) = http(gateway.api(), "GET", "/metrics", "").unwrap();
    assert_eq!(status, 200, "{body}");
    body
}
