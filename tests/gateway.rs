//! The TCP gateway end to end, in process: real sockets, real child processes and hooks.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wakegate::app::App;
use wakegate::event::{Kind, State};

/// Starts a gateway in `dir` with one service.
async fn start(dir: &std::path::Path, service: Service) -> App {
    gateway(dir).service(service).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_at_once_get_one_start_and_their_own_bytes() {
    let dir = temp_dir("crowd");
    let backend = free_addr();
    let app = start(
        &dir,
        hooked_echo("crowd", &dir, backend, "2s", "0").tcp(ANY_PORT),
    )
    .await;
    let service = app.service("crowd").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let gateway = app.listen_addr("crowd").unwrap();

    let clients = (0..200).map(|i| {
        tokio::spawn(async move {
            // Different sizes and contents, so a mix-up between clients would show.
            let payload: Vec<u8> = (0..1000 + i * 37).map(|b| (b * 7 + i) as u8).collect();
            let back = round_trip(gateway, &payload).await.unwrap();
            assert!(
                back == payload,
                "client {i} got {} bytes back, not its own {}",
                back.len(),
                payload.len()
            );
        })
    });
    for client in futures_join(clients).await {
        client.unwrap();
    }
    assert_eq!(
        hook_starts(&dir, "crowd"),
        1,
        "the start hook ran more than once"
    );
    assert_eq!(service.refused(), 0);
    wait_state(&service, State::Asleep).await;
    app.shutdown().await;
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_after_idle_timeout_but_not_before_min_awake() {
    let dir = temp_dir("idle");
    let backend = free_addr();
    let app = start(
        &dir,
        svc("idle")
            .idle("200ms")
            .set("min_awake", "1500ms")
            .process(&echo(backend, "0s"), backend)
            .tcp(ANY_PORT),
    )
    .await;
    let service = app.service("idle").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = service.subscribe();

    let back = round_trip(app.listen_addr("idle").unwrap(), b"hello")
        .await
        .unwrap();
    assert_eq!(back, b"hello");
    let seen = transitions_until(&mut events, State::Asleep).await;
    let states: Vec<State> = seen.iter().map(|e| e.state).collect();
    assert_eq!(
        states,
        [State::Waking, State::Awake, State::Stopping, State::Asleep]
    );
    assert_eq!(detail(&seen[0], "trigger"), "client", "{:?}", seen[0]);
    assert!(
        detail(&seen[0], "client").starts_with("127.0.0.1:"),
        "{:?}",
        seen[0]
    );
    let awake_for = seen[2].time.duration_since(seen[1].time).unwrap();
    assert!(
        awake_for >= Duration::from_millis(1500),
        "stopped after {awake_for:?}, before min_awake"
    );
    assert_eq!(detail(&seen[2], "trigger"), "idle", "{:?}", seen[2]);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_connection_keeps_it_awake_and_idle_counts_from_its_close() {
    let dir = temp_dir("busy");
    let backend = free_addr();
    let app = start(
        &dir,
        svc("busy")
            .idle("300ms")
            .process(&echo(backend, "0s"), backend)
            .tcp(ANY_PORT),
    )
    .await;
    let service = app.service("busy").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = service.subscribe();

    let mut stream = TcpStream::connect(app.listen_addr("busy").unwrap())
        .await
        .unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(service.connections(), 1);
    // Several idle timeouts pass while the connection stays open: each echo proves it is up.
    for _ in 0..4 {
        let mut timer = service.watch();
        let changed = tokio::time::timeout(
            Duration::from_millis(400),
            timer.wait_for(|s| s.state != State::Awake),
        )
        .await;
        assert!(
            changed.is_err(),
            "the service left awake while a connection was open"
        );
        stream.write_all(b"pong").await.unwrap();
        stream.read_exact(&mut buf).await.unwrap();
    }
    let closed_at = SystemTime::now();
    drop(stream);
    let seen = transitions_until(&mut events, State::Stopping).await;
    let stopping = seen.last().unwrap();
    assert!(
        stopping.time.duration_since(closed_at).unwrap_or_default() >= Duration::from_millis(290)
    );
    wait_state(&service, State::Asleep).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_arrives_while_stopping_is_served_after_a_new_wake() {
    let dir = temp_dir("stopping");
    let backend = free_addr();
    let app = start(
        &dir,
        hooked_echo("slowstop", &dir, backend, "300ms", "1").tcp(ANY_PORT),
    )
    .await;
    let service = app.service("slowstop").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let gateway = app.listen_addr("slowstop").unwrap();
    let mut events = service.subscribe();
    assert_eq!(round_trip(gateway, b"first").await.unwrap(), b"first");
    transitions_until(&mut events, State::Stopping).await;

    let back = round_trip(gateway, b"second").await.unwrap();
    assert_eq!(back, b"second");
    let seen = transitions_until(&mut events, State::Awake).await;
    let states: Vec<State> = seen.iter().map(|e| e.state).collect();
    assert_eq!(states, [State::Asleep, State::Waking, State::Awake]);
    assert!(
        seen[1].reason.contains("while the service was stopping"),
        "{}",
        seen[1].reason
    );
    assert_eq!(hook_starts(&dir, "slowstop"), 2);
    sleep_then_shutdown(app).await;
}

/// Reads until EOF and returns what came; a held client that is let go gets nothing.
async fn held_client_outcome(gateway: std::net::SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    let _ = stream.write_all(b"anyone?").await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut back))
        .await
        .expect("the held client was never let go");
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_start_hook_fails_the_wake_and_the_next_client_retries() {
    let dir = temp_dir("hookfail");
    let backend = free_addr();
    let marker = dir.join("failed-once");
    let pid = dir.join("echo.pid");
    // The first start fails with a message on stderr; later ones work.
    let (marker, pid) = (marker.display(), pid.display());
    let service = svc("flaky")
        .idle("10m")
        .exec(
            &format!(
                "if [ ! -e '{marker}' ]; then touch '{marker}'; echo 'quota exceeded in us-east-1' >&2; exit 1; fi; '{WAKEGATE}' demo-backend --echo --listen {backend} >/dev/null 2>&1 & echo $! > '{pid}'"
            ),
            &format!("[ -e '{pid}' ] && kill $(cat '{pid}') || true"),
            backend,
        )
        .tcp(ANY_PORT);
    let app = start(&dir, service).await;
    let service = app.service("flaky").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = service.subscribe();
    let gateway = app.listen_addr("flaky").unwrap();

    assert_eq!(
        held_client_outcome(gateway).await,
        b"",
        "a failed wake must close the client"
    );
    let seen = transitions_until(&mut events, State::Failed).await;
    let failed = seen.last().unwrap();
    assert!(failed.reason.contains("exit code 1"), "{}", failed.reason);
    assert!(
        failed.reason.contains("quota exceeded in us-east-1"),
        "{}",
        failed.reason
    );
    assert_eq!(
        service.status().last_error.as_deref(),
        Some(failed.reason.as_str())
    );

    assert_eq!(round_trip(gateway, b"again").await.unwrap(), b"again");
    assert_eq!(service.status().state, State::Awake);
    sleep_then_shutdown(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_at_once_fails_the_wake_with_its_output() {
    let dir = temp_dir("crash");
    let command = [
        "sh",
        "-c",
        "echo 'Error: Unable to access jarfile server.jar' >&2; exit 3",
    ];
    let app = start(
        &dir,
        svc("crash").process(&command, "127.0.0.1:9").tcp(ANY_PORT),
    )
    .await;
    let service = app.service("crash").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = service.subscribe();

    assert_eq!(
        held_client_outcome(app.listen_addr("crash").unwrap()).await,
        b""
    );
    let seen = transitions_until(&mut events, State::Failed).await;
    let failed = seen.last().unwrap();
    assert!(failed.reason.contains("exit code 3"), "{}", failed.reason);
    assert!(
        failed.reason.contains("Unable to access jarfile"),
        "{}",
        failed.reason
    );
    let log = std::fs::read_to_string(dir.join("crash.log")).unwrap();
    assert!(log.contains("Unable to access jarfile"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_never_ready_times_out_is_stopped_and_the_next_wake_works() {
    let dir = temp_dir("never");
    let backend = free_addr();
    // The first process "boots" for an hour; the config is then the same, so the second wake
    // would hang too: instead the test shows the first one was stopped, not left running.
    let app = start(
        &dir,
        svc("never")
            .wake_timeout("700ms")
            .process(&echo(backend, "1h"), backend)
            .tcp(ANY_PORT),
    )
    .await;
    let service = app.service("never").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let mut events = service.subscribe();
    let gateway = app.listen_addr("never").unwrap();

    let client = tokio::spawn(held_client_outcome(gateway));
    let seen = events_until(&mut events, |e| e.kind == Kind::Progress).await;
    let started = seen.last().unwrap();
    assert_eq!(detail(started, "step"), "probing", "{started:?}");
    let pid_file = dir.join("never.pid");
    let pid: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pid_file).unwrap()).unwrap();
    let pid = pid["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));

    assert_eq!(client.await.unwrap(), b"");
    let seen = transitions_until(&mut events, State::Failed).await;
    let failed = seen.last().unwrap();
    assert!(
        failed
            .reason
            .contains("not ready within wake_timeout (700ms)"),
        "{}",
        failed.reason
    );
    assert!(
        !alive(pid),
        "the process that never became ready was left running"
    );
    assert!(!pid_file.exists());

    // The next client wakes it again: a fresh process, not the old one. (Had something else
    // taken the address meanwhile, no second copy would be started: tests/adoption.rs.)
    let next = tokio::spawn(held_client_outcome(gateway));
    let seen = events_until(&mut events, |e| e.kind == Kind::Progress).await;
    assert_eq!(detail(seen.last().unwrap(), "step"), "probing");
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pid_file).unwrap()).unwrap();
    let again = again["pid"].as_u64().unwrap() as u32;
    assert_ne!(again, pid);
    assert!(alive(again));
    app.shutdown().await;
    assert_eq!(next.await.unwrap(), b"");
    assert!(!alive(again), "the second process outlived wakegate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_held_refuses_the_excess_at_once() {
    let dir = temp_dir("maxheld");
    let backend = free_addr();
    let app = start(
        &dir,
        svc("small")
            .set("max_held", 2)
            .process(&echo(backend, "1s"), backend)
            .tcp(ANY_PORT),
    )
    .await;
    let service = app.service("small").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    let gateway = app.listen_addr("small").unwrap();

    let first = tokio::spawn(round_trip(gateway, b"one"));
    let second = tokio::spawn(round_trip(gateway, b"two"));
    let mut watch = service.watch();
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.held == 2))
        .await
        .unwrap_or_else(|_| panic!("two clients were never held: {:?}", service.status()))
        .unwrap();
    // The third is refused while the service is still waking.
    assert_eq!(held_client_outcome(gateway).await, b"");
    assert_eq!(service.status().state, State::Waking);
    assert_eq!(service.refused(), 1);
    assert_eq!(first.await.unwrap().unwrap(), b"one");
    assert_eq!(second.await.unwrap().unwrap(), b"two");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_awake_is_failed_with_the_exit_status_at_once() {
    let dir = temp_dir("awakecrash");
    let backend = free_addr();
    let app = start(
        &dir,
        svc("fragile")
            .process(&echo(backend, "0s"), backend)
            .tcp(ANY_PORT),
    )
    .await;
    let service = app.service("fragile").unwrap().clone();
    wait_state(&service, State::Asleep).await;
    assert_eq!(
        round_trip(app.listen_addr("fragile").unwrap(), b"x")
            .await
            .unwrap(),
        b"x"
    );
    let mut events = service.subscribe();
    let pid: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("fragile.pid")).unwrap()).unwrap();
    let pid = rustix::process::Pid::from_raw(pid["pid"].as_i64().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();

    let seen = transitions_until(&mut events, State::Failed).await;
    let failed = seen.last().unwrap();
    assert!(
        failed.reason.contains("stopped on its own"),
        "{}",
        failed.reason
    );
    assert_eq!(failed.detail["exit"], "signal 9");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reports_services_and_unknown_names_clearly() {
    let dir = temp_dir("api");
    let app = start(&dir, svc("web").exec_true(free_addr()).tcp(ANY_PORT)).await;
    wait_state(app.service("web").unwrap(), State::Asleep).await;
    let api = app.api_addr().to_string();

    let status = std::process::Command::new(WAKEGATE)
        .args(["status", "--json", "--api", &api])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["state"], "asleep");
    assert_eq!(list[0]["connections"], 0);
    assert!(list[0]["since"].as_str().unwrap().ends_with('Z'));

    let table = std::process::Command::new(WAKEGATE)
        .args(["status", "web", "--api", &api])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.lines().nth(1).unwrap().starts_with("web "), "{table}");
    assert!(table.contains(" asleep (stopped) "), "{table}");

    let missing = std::process::Command::new(WAKEGATE)
        .args(["status", "nope", "--api", &api])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8(missing.stderr).unwrap();
    assert!(
        err.contains("404") && err.contains("no service is named `nope`"),
        "{err}"
    );

    let events = app.store().events(0, Some("web"), 10).unwrap();
    assert_eq!(events[0].kind, Kind::Transition);
    // Found stopped at start-up.
    assert_eq!(events[0].state, State::Asleep, "{:?}", events[0]);
    assert_eq!(
        detail(&events[0], "trigger"),
        "reconcile",
        "{:?}",
        events[0]
    );
    app.shutdown().await;
}
