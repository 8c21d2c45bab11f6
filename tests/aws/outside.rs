//! What is done to an instance outside wakegate (a console stop or start, through moto's API
//! straight, not through wakegate's proxy), restarts by reboot, and the `examples/watchdog.toml`
//! maintainer end to end: an HTTPS status URL with a token, a reboot after the tolerance, and
//! Discord told.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::common::*;
use super::fixtures::*;

/// The health server of the tests (Python's http.server): 500 while `dir/sick` exists, 401
/// without the token of `dir/token` when it exists, HTTPS with `tls` (certificate, key).
struct Flaky {
    child: Child,
    addr: SocketAddr,
}

impl Flaky {
    fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Flaky {
        let addr = free_addr();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/flaky_http.py");
        let mut command = Command::new("python3");
        command.arg(script).arg(addr.port().to_string()).arg(dir);
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
        }
        let child = command.spawn().unwrap();
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the health server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Flaky { child, addr }
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_health_check_restarts_by_reboot_without_a_stop_or_a_new_address() {
    let aws = Aws::new();
    let word = unique("reboot");
    let id = aws.instance(&[("app", &word)], false);
    let dir = temp_dir("aws-reboot");
    let health = Flaky::start(&dir, None);
    let service = ec2_service("web", free_addr(), &aws.proxy.url)
        .idle("1h")
        .backend_set("instance_id", &id)
        .backend_set("address", health.addr)
        .backend_set("restart", "reboot")
        .backend_set("reboot_grace", "1s")
        .health(
            typed("http")
                .set("url", "http://{address}/healthz")
                .set("interval", "100ms")
                .set("tolerance", 2)
                .set("action", "restart"),
        );
    let mut gateway = start(&write_config(&dir, gateway(&dir).service(service)));
    gateway.wake("web");
    gateway.wait_for("backend ready at");

    std::fs::write(dir.join("sick"), "").unwrap();
    gateway.wait_for("rebooting: ");
    std::fs::remove_file(dir.join("sick")).unwrap();
    gateway.wait_for("backend ready at");
    let recorded = &aws.proxy.recorded;
    assert_eq!(recorded.count("ec2:RebootInstances"), 1);
    assert_eq!(
        recorded.count("ec2:StopInstances"),
        0,
        "a reboot, not a stop"
    );
    assert_eq!(
        recorded.count("ec2:StartInstances"),
        1,
        "only the first wake"
    );
    assert_eq!(gateway.service("web")["state"], "awake");
}

#[test]
fn an_instance_stopped_and_started_outside_wakegate_is_followed_and_not_fought() {
    let aws = Aws::new();
    let echo = Echo::start();
    let word = unique("outside");
    let id = aws.instance(&[("app", &word)], false);
    let dir = temp_dir("aws-outside");
    let listen = free_addr();
    let service = ec2_service("mc", listen, &aws.proxy.url)
        .idle("1h")
        .backend_set("instance_id", &id)
        .backend_set("address", echo.addr)
        .backend_set("state_poll", "1s")
        .backend_set("state_poll_asleep", "1s");
    let mut gateway = start(&write_config(&dir, gateway(&dir).service(service)));
    gateway.wake("mc");
    gateway.wait_for("backend ready at");

    // Stopped from the console: noticed within state_poll, and left stopped.
    aws.block(aws.ec2.stop_instances().instance_ids(&id).send())
        .unwrap();
    gateway.wait_for("found stopped outside wakegate");
    assert_eq!(gateway.service("mc")["state"], "asleep");
    let events = gateway.events("mc");
    let last = events.last().unwrap();
    assert_eq!(last["detail"]["trigger"], "outside", "{last:#}");

    // Started from the console: adopted (its idle countdown runs), not started again.
    aws.block(aws.ec2.start_instances().instance_ids(&id).send())
        .unwrap();
    gateway.wait_for("found running outside wakegate");
    gateway.wait_for("backend ready at");
    assert_eq!(echo_through(listen, b"still here"), b"still here");
    let recorded = &aws.proxy.recorded;
    assert_eq!(recorded.count("ec2:StartInstances"), 1, "only its own wake");
    assert_eq!(recorded.count("ec2:StopInstances"), 0, "nothing fought");
}

/// A certificate authority and a `localhost` certificate it signed, as PEM files in `dir`:
/// (CA, certificate, key).
fn authority(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("status.pem"),
        dir.join("status.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A Discord webhook stand-in: keeps the body of every message POSTed to it.
fn discord_webhook(aws: &Aws) -> (String, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = aws
        .block(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!(
        "http://{}/api/webhooks/1/token",
        listener.local_addr().unwrap()
    );
    let keep = seen.clone();
    let app = axum::Router::new().route(
        "/api/webhooks/1/token",
        axum::routing::post(move |body: String| {
            let keep = keep.clone();
            async move {
                let message: serde_json::Value = serde_json::from_str(&body).unwrap();
                keep.lock().unwrap().push(message.to_string());
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    aws.runtime
        .spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[test]
fn the_watchdog_example_reboots_after_its_tolerance_and_tells_discord() {
    let aws = Aws::new();
    let word = unique("watchdog");
    let id = aws.instance(&[("Name", &word), ("maintained", "wakegate")], false);
    let dir = temp_dir("aws-watchdog");
    let (ca, cert, key) = authority(&dir);
    std::fs::write(dir.join("token"), "status-token-0123").unwrap();
    let status = Flaky::start(&dir, Some((&cert, &key)));
    let (webhook, told) = discord_webhook(&aws);

    // The example as shipped, pointed at this test's instance, HTTPS server and clock.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/watchdog.toml"),
    )
    .unwrap();
    let url = format!("https://localhost:{}/status", status.addr.port());
    let replacements = [
        ("./wakegate-data", dir.display().to_string()),
        ("127.0.0.1:7070", free_addr().to_string()),
        ("Name = \"game-server\"", format!("Name = \"{word}\"")),
        (
            "address = \"public\"\nport = 443",
            format!("address = \"{}\"", status.addr),
        ),
        (
            "region = \"eu-west-1\"",
            format!(
                "region = \"us-east-1\"\nendpoint_url = \"{}\"",
                aws.proxy.url
            ),
        ),
        (
            "url = \"https://play.example.com/status\"",
            format!("url = \"{url}\"\nca_file = \"{}\"", ca.display()),
        ),
        ("wake_timeout = \"10m\"", "wake_timeout = \"20s\"".into()),
        ("reboot_grace = \"2m\"", "reboot_grace = \"1s\"".into()),
        ("state_poll = \"1m\"", "state_poll = \"1s\"".into()),
        ("interval = \"1m\"", "interval = \"200ms\"".into()),
    ];
    let mut config = example.clone();
    for (from, to) in replacements {
        assert!(config.contains(from), "the example no longer has {from:?}");
        config = config.replace(from, &to);
    }
    let file = dir.join("watchdog.toml");
    std::fs::write(&file, config).unwrap();
    let mut gateway = Wakegate::start_with(&file, |command| {
        aws_env(command)
            .env("GAME_STATUS_TOKEN", "status-token-0123")
            .env("WAKEGATE_DISCORD_WEBHOOK", &webhook)
    });

    // Always on: found stopped at start, started, ready once the status URL answers.
    gateway.wait_for("backend ready at");
    std::fs::write(dir.join("sick"), "").unwrap();
    gateway.wait_for("rebooting: ");
    std::fs::remove_file(dir.join("sick")).unwrap();
    gateway.wait_for("backend ready at");
    let recorded = &aws.proxy.recorded;
    assert_eq!(recorded.count("ec2:RebootInstances"), 1);
    assert_eq!(recorded.count("ec2:StopInstances"), 0);

    // Stopped from the console: started again, as it is always on.
    aws.block(aws.ec2.stop_instances().instance_ids(&id).send())
        .unwrap();
    gateway.wait_for("found stopped outside wakegate");
    gateway.wait_for("backend ready at");
    assert_eq!(recorded.count("ec2:StartInstances"), 2);

    let deadline = std::time::Instant::now() + DEADLINE;
    let wanted = [
        "failed 3 times in a row",
        "answered 500",
        "rebooting",
        "found stopped outside wakegate",
    ];
    loop {
        let messages = told.lock().unwrap().clone();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !messages.iter().any(|m| m.contains(w)))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Discord was not told {missing:?}: {messages:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !told
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("status-token")),
        "the token never leaves"
    );
}
