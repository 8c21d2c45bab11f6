//! The watchdog and the policies: health checks that restart a real HTTP server, the
//! crash-loop breaker, always-on services, readiness by a log line, max_runtime and
//! min_players (on paused time), and schedules that refuse wakes.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use tokio::net::TcpListener;
use wakegate::app::App;
use wakegate::event::{Event, Kind, State};

/// Starts a gateway in `dir` with one service.
async fn start(dir: &std::path::Path, service: Service) -> App {
    gateway(dir).service(service).start().await
}

fn flaky_server() -> String {
    format!("{}/tests/peers/flaky_http.py", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_http_server_is_restarted_then_the_breaker_gives_up() {
    let dir = temp_dir("health");
    let backend = free_addr();
    let dir_text = dir.display();
    let service = svc("web")
        .idle("1h")
        .set("max_restarts", 2)
        .set("restart_window", "1h")
        .exec(
            &format!(
                "python3 '{}' {} '{dir_text}' >/dev/null 2>&1 & echo $! > '{dir_text}/pid'",
                flaky_server(),
                backend.port()
            ),
            &format!("kill $(cat '{dir_text}/pid')"),
            backend,
        )
        .readiness(typed("http").set("url", "http://{address}/ready"))
        .health(
            typed("http")
                .set("url", "http://{address}/healthz")
                .set("body_contains", "ok")
                .set("interval", "100ms")
                .set("timeout", "300ms")
                .set("tolerance", 3)
                .set("action", "restart"),
        )
        .tcp(ANY_PORT);
    let app = start(&dir, service).await;
    let web = app.service("web").unwrap().clone();
    let mut events = web.subscribe();
    web.wake("test").await.unwrap().unwrap();
    wait_state(&web, State::Awake).await;

    // It answers 500: after three failures in a row it is restarted.
    std::fs::write(dir.join("sick"), "").unwrap();
    let seen = events_until(&mut events, |e| e.kind == Kind::Warning).await;
    let warning = seen.last().unwrap();
    assert!(
        warning.reason.contains("failed 3 times in a row"),
        "{}",
        warning.reason
    );
    assert!(
        warning.reason.contains("answered 500"),
        "{}",
        warning.reason
    );
    std::fs::remove_file(dir.join("sick")).unwrap();
    let seen = events_until(&mut events, |e| {
        e.state == State::Awake && e.kind == Kind::Transition
    })
    .await;
    let states: Vec<State> = seen
        .iter()
        .filter(|e| e.kind == Kind::Transition)
        .map(|e| e.state)
        .collect();
    assert_eq!(
        states,
        [State::Stopping, State::Asleep, State::Waking, State::Awake]
    );
    // Stopped to be restarted, by the health check.
    assert_eq!(detail(&seen[0], "trigger"), "health", "{:?}", seen[0]);

    // Then it stops answering at all: restarted once more (the second of two allowed).
    std::fs::write(dir.join("hang"), "").unwrap();
    let seen = events_until(&mut events, |e| e.kind == Kind::Warning).await;
    assert!(
        seen.last()
            .unwrap()
            .reason
            .contains("no answer within 300ms"),
        "{:?}",
        seen.last()
    );
    std::fs::remove_file(dir.join("hang")).unwrap();
    events_until(&mut events, |e| {
        e.state == State::Awake && e.kind == Kind::Transition
    })
    .await;

    // A third failure within the window trips the breaker: stopped, failed, no more restarts.
    std::fs::write(dir.join("sick"), "").unwrap();
    let seen = events_until(&mut events, |e| e.state == State::Failed).await;
    let failed = seen.last().unwrap();
    assert!(
        failed.reason.contains("restarted 2 times within 1h"),
        "{}",
        failed.reason
    );
    assert!(
        seen.iter()
            .any(|e| is_transition(e, State::Stopping) && detail(e, "trigger") == "breaker"),
        "{seen:#?}"
    );
    assert_eq!(web.status().state, State::Failed);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_log_line_not_the_open_port() {
    let dir = temp_dir("logready");
    let backend = free_addr();
    // The port opens at once; the server says it is ready a second later.
    let command = [
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "'{WAKEGATE}' demo-backend --echo --listen {backend} & sleep 1; echo 'Done (1.002s)! For help, type \"help\"'; wait"
        ),
    ];
    let service = svc("mc")
        .process(&command, backend)
        .readiness(typed("log").set("pattern", r"Done \(\d"))
        .tcp(ANY_PORT);
    let app = start(&dir, service).await;
    let mc = app.service("mc").unwrap().clone();
    let mut events = mc.subscribe();
    mc.wake("test").await.unwrap().unwrap();
    let seen = events_until(&mut events, |e| e.kind == Kind::Progress).await;
    assert!(
        seen.last().unwrap().reason.contains("log line matching"),
        "{seen:#?}"
    );
    // The port is open while wakegate still waits.
    let open = tokio::time::timeout(DEADLINE, async {
        loop {
            if tokio::net::TcpStream::connect(backend).await.is_ok() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(open.is_ok());
    assert_eq!(
        mc.status().state,
        State::Waking,
        "ready before the log line"
    );
    let seen = events_until(&mut events, |e| e.state == State::Awake).await;
    let took = seen.last().unwrap().detail["duration_ms"].as_u64().unwrap();
    assert!(took >= 1000, "awake after {took} ms, before the log line");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_on_service_is_kept_up_until_it_crash_loops() {
    let dir = temp_dir("alwayson");
    let backend = free_addr();
    // It comes up, then dies half a second later, every time. No listener: a watchdog.
    let command = [
        "sh".to_string(),
        "-c".to_string(),
        format!("'{WAKEGATE}' demo-backend --echo --listen {backend} & sleep 0.5; kill $!; exit 1"),
    ];
    let service = svc("flappy")
        .set("always_on", true)
        .set("max_restarts", 2)
        .process(&command, backend);
    let app = start(&dir, service).await;
    let flappy = app.service("flappy").unwrap().clone();
    let mut events = flappy.subscribe();
    events_until(&mut events, |e| e.state == State::Failed).await;
    // From the start, including what happened before the test subscribed.
    let seen = app.store().events(0, Some("flappy"), 1000).unwrap();
    let wakes: Vec<&Event> = seen
        .iter()
        .filter(|e| e.kind == Kind::Transition && e.state == State::Waking)
        .collect();
    // Started by the rule, then restarted twice after crashes, then given up on.
    assert!(wakes[0].reason.contains("always_on"), "{seen:#?}");
    assert_eq!(wakes.len(), 3, "{seen:#?}");
    assert!(
        wakes[1].reason.starts_with("restarting after a crash"),
        "{}",
        wakes[1].reason
    );
    let failed = seen.last().unwrap();
    assert!(
        failed.reason.contains("restarted 2 times"),
        "{}",
        failed.reason
    );
    assert_eq!(detail(failed, "exit"), "exit code 1", "{failed:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asleep_during_refuses_clients_and_wakes_with_a_clear_message() {
    let dir = temp_dir("asleep");
    let backend = free_addr();
    let service = svc("office")
        .set("asleep_during", ["daily 00:00-24:00 UTC"])
        .exec_true(backend)
        .tcp(ANY_PORT);
    let app = start(&dir, service).await;
    let office = app.service("office").unwrap().clone();
    let refused = office.wake("test").await.unwrap().unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("office sleeps by schedule (daily 00:00-24:00 UTC) until"),
        "{refused}"
    );
    // The client is closed without a byte (a reset, as it had sent data nobody read).
    let closed = round_trip(app.listen_addr("office").unwrap(), b"hello").await;
    assert!(closed.as_ref().map_or(true, |b| b.is_empty()), "{closed:?}");
    assert_eq!(office.status().state, State::Asleep);
    assert_eq!(office.refused(), 1);
    app.shutdown().await;
}

/// A gateway whose one service wakes in real time, then lives on paused time.
async fn awake_on_paused_time(dir: &std::path::Path, policy: &str) -> (App, TcpListener) {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = svc("game")
        .idle("100h")
        .raw(policy)
        .exec_true(backend.local_addr().unwrap())
        .tcp(ANY_PORT);
    let app = start(dir, service).await;
    let game = app.service("game").unwrap().clone();
    let mut events = game.subscribe();
    game.wake("test").await.unwrap().unwrap();
    wait_state(&game, State::Awake).await;
    // From here on, timers run on a clock the test owns: hours pass in no time.
    tokio::time::pause();
    // Events are published once stored, a moment after the state changes: the wake's last
    // one is taken here, so a test that subscribes next gets only what follows. (The clock
    // stays put meanwhile: tokio does not advance it while the store writes.)
    wait_event(&mut events, |e| is_transition(e, State::Awake)).await;
    (app, backend)
}

#[tokio::test(flavor = "current_thread", start_paused = false)]
async fn max_runtime_warns_ahead_then_stops() {
    let dir = temp_dir("maxruntime");
    let (app, _backend) =
        awake_on_paused_time(&dir, "max_runtime = \"4h\"\nmax_runtime_warning = \"15m\"").await;
    let game = app.service("game").unwrap().clone();
    let mut events = game.subscribe();
    let awake = tokio::time::Instant::now();

    let warning = events.recv().await.unwrap();
    assert_eq!(warning.kind, Kind::Warning);
    assert_eq!(warning.reason, "it stops in 15m (max_runtime)");
    let at = awake.elapsed();
    assert!(
        at >= Duration::from_secs(3 * 3600 + 45 * 60)
            && at < Duration::from_secs(3 * 3600 + 46 * 60),
        "{at:?}"
    );

    let stopping = events.recv().await.unwrap();
    // The stop hook runs on real time again.
    tokio::time::resume();
    assert_eq!(stopping.state, State::Stopping);
    assert_eq!(detail(&stopping, "trigger"), "max_runtime", "{stopping:?}");
    assert!(awake.elapsed() >= Duration::from_secs(4 * 3600));
    wait_state(&game, State::Asleep).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = false)]
async fn min_players_warns_each_interval_then_stops() {
    let dir = temp_dir("minplayers");
    let (app, _backend) = awake_on_paused_time(
        &dir,
        "min_players = 2\nwarnings = 3\nplayer_check_interval = \"5m\"",
    )
    .await;
    let game = app.service("game").unwrap().clone();
    let mut events = game.subscribe();
    let awake = tokio::time::Instant::now();

    for n in 1..=3u64 {
        let warning = events.recv().await.unwrap();
        assert_eq!(warning.kind, Kind::Warning, "{warning:?}");
        assert_eq!(warning.detail["warning"], n, "{warning:?}");
        assert_eq!(warning.detail["of"], 3, "{warning:?}");
        assert_eq!(warning.detail["players"], 0, "{warning:?}");
        let at = awake.elapsed().as_secs();
        assert!(
            (n * 300..n * 300 + 5).contains(&at),
            "warning {n} at {at} s"
        );
    }
    let stopping = events.recv().await.unwrap();
    tokio::time::resume();
    assert_eq!(stopping.state, State::Stopping);
    assert_eq!(detail(&stopping, "trigger"), "min_players", "{stopping:?}");
    wait_state(&game, State::Asleep).await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awake_during_wakes_it_by_itself_and_a_sleep_by_hand_is_refused() {
    let dir = temp_dir("awakeduring");
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = svc("office")
        .idle("1s")
        .set("awake_during", ["daily 00:00-24:00 Europe/Paris"])
        .exec_true(backend.local_addr().unwrap())
        .tcp(ANY_PORT);
    let app = start(&dir, service).await;
    let office = app.service("office").unwrap().clone();
    wait_state(&office, State::Awake).await;
    let woken = app.store().latest_events(Some("office"), 10).unwrap();
    assert!(
        woken
            .iter()
            .any(|e| is_transition(e, State::Waking) && detail(e, "trigger") == "schedule"),
        "{woken:#?}"
    );
    // No connection, and an idle timeout of a second: the window keeps it awake.
    let mut status = office.watch();
    let deadline = tokio::time::timeout(DEADLINE, status.wait_for(|s| s.idle_deadline.is_some()))
        .await
        .expect("no idle deadline")
        .unwrap()
        .idle_deadline
        .unwrap();
    assert!(
        deadline > std::time::SystemTime::now() + Duration::from_secs(60),
        "{deadline:?}"
    );
    let refused = office.sleep("test").await.unwrap().unwrap_err();
    assert!(
        refused.to_string().contains("office is awake by schedule"),
        "{refused}"
    );
    assert_eq!(office.status().state, State::Awake);
    app.shutdown().await;
}

/// A certificate authority made by the test, and a server certificate for `localhost` that it
/// signed, as PEM files in `dir` named after `name`: (CA, server certificate, server key).
fn authority(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-server.pem")),
        dir.join(format!("{name}-server.key")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_checks_trust_their_ca_file_send_their_headers_and_name_a_wrong_authority() {
    let dir = temp_dir("https-checks");
    let (ca, cert, key) = authority(&dir, "ours");
    let (other_ca, _, _) = authority(&dir, "other");
    // A real TLS server (Python's http.server in ssl) that wants a bearer token.
    std::fs::write(dir.join("token"), "s3cret").unwrap();
    let backend = free_addr();
    let mut server = std::process::Command::new("python3")
        .arg(flaky_server())
        .arg(backend.port().to_string())
        .arg(&dir)
        .arg(&cert)
        .arg(&key)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(backend).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS server never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("https://localhost:{}/ready", backend.port());
    let probe = |trust: &str, value: &std::path::Path| {
        let probe = typed("http")
            .set("url", url.as_str())
            .raw("headers = { Authorization = \"Bearer s3cret\" }")
            .set("status", [200]);
        match trust {
            "ca_file" => probe.set("ca_file", value),
            _ => probe.set("insecure", true),
        }
    };
    let service = |name: &str, readiness: Table| {
        svc(name)
            .set("wake_timeout", "2s")
            .exec_true(backend)
            .readiness(readiness)
            .tcp(ANY_PORT)
    };
    let app = gateway(&dir)
        .service(
            service("trusted", probe("ca_file", &ca)).health(
                probe("ca_file", &ca)
                    .set("body_contains", "ok")
                    .set("interval", "100ms")
                    .set("tolerance", 2)
                    .set("action", "notify"),
            ),
        )
        .service(service("wrong-ca", probe("ca_file", &other_ca)))
        .service(service("anyone", probe("insecure", &ca)))
        .start()
        .await;

    let trusted = app.service("trusted").unwrap().clone();
    let mut events = trusted.subscribe();
    trusted.wake("test").await.unwrap().unwrap();
    wait_state(&trusted, State::Awake).await;
    // The token is withdrawn: the health check's 401s are a warning naming the code.
    std::fs::write(dir.join("token"), "changed").unwrap();
    let seen = events_until(&mut events, |e| e.kind == Kind::Warning).await;
    let warning = &seen.last().unwrap().reason;
    assert!(warning.contains("answered 401"), "{warning}");
    std::fs::write(dir.join("token"), "s3cret").unwrap();

    let wrong = app.service("wrong-ca").unwrap().clone();
    wrong.wake("test").await.unwrap().unwrap();
    wait_state(&wrong, State::Failed).await;
    let reason = wrong.status().last_error.unwrap_or_default();
    assert!(
        reason.contains("not signed by an authority the probe trusts")
            && reason.contains("ca_file"),
        "{reason}"
    );

    let anyone = app.service("anyone").unwrap().clone();
    anyone.wake("test").await.unwrap().unwrap();
    wait_state(&anyone, State::Awake).await;
    app.shutdown().await;
    server.kill().unwrap();
    server.wait().unwrap();
}
