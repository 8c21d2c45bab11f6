//! The `docker` backend and `[discovery.docker]` against a real engine: Podman's
//! Docker-compatible API (`podman system service`, started once for this file), with an image
//! imported from a busybox-static rootfs. Containers share the host's network, so every byte
//! stays on loopback; the real `wakegate` binary runs each scenario, and the Podman CLI plays
//! the user (creating, crashing, inspecting containers).
// A test's own threads end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

#[path = "../common/mod.rs"]
mod common;
mod discovery;
mod fixtures;
mod image;
mod podman;

use std::net::TcpStream;
use std::time::Instant;

use common::*;
use fixtures::*;

#[test]
fn a_client_wakes_a_stopped_container_which_is_stopped_again_when_idle() {
    let podman = podman();
    let tag = Tag::new("wake");
    let (port, listen) = (free_addr().port(), free_addr());
    let name = tag.serving("web", port, &[]);
    let dir = temp_dir("docker-wake");
    let config = gateway(&dir).service(
        svc("web")
            .idle("1s")
            .backend(docker_backend(&name, port).set("stop_timeout", "5s"))
            .tcp(listen),
    );
    let mut gateway = start(&dir, &config);
    gateway.wait_for("found the backend stopped");

    assert_eq!(get(listen), PAGE);
    assert_eq!(podman.state(&name).as_deref(), Some("running"));
    gateway.wait_for("no connection for");
    gateway.wait_for("backend stopped after");
    assert_eq!(podman.state(&name).as_deref(), Some("exited"));
    assert_eq!(
        transitions(&gateway, "web"),
        ["asleep", "waking", "awake", "stopping", "asleep"]
    );
    let started = gateway.events("web").into_iter().any(|e| {
        e["reason"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("container {name} started"))
    });
    assert!(started, "no event says the container was started");
}

/// The wake's duration, from its `awake` transition.
fn woke_in(gateway: &Wakegate, service: &str, nth: usize) -> u64 {
    let ready: Vec<u64> = gateway
        .events(service)
        .iter()
        .filter(|e| e["kind"] == "transition" && e["state"] == "awake")
        .map(|e| e["detail"]["duration_ms"].as_u64().unwrap())
        .collect();
    ready[nth]
}

#[test]
fn paused_when_idle_resumed_by_a_client_and_found_paused_after_a_kill() {
    let podman = podman();
    let tag = Tag::new("pause");
    let (port, listen) = (free_addr().port(), free_addr());
    let name = tag.serving("web", port, &[]);
    let dir = temp_dir("docker-pause");
    let config = gateway(&dir).service(
        svc("web")
            .idle("1s")
            .backend(docker_backend(&name, port).set("sleep_mode", "pause"))
            .tcp(listen),
    );
    let file = config.write(&dir.join("wakegate.toml"));
    let mut gateway = Wakegate::start(&file);
    gateway.wait_for("found the backend stopped");

    // A cold start first, then a pause when idle.
    assert_eq!(get(listen), PAGE);
    gateway.wait_for("backend paused after");
    assert_eq!(podman.state(&name).as_deref(), Some("paused"));

    // The next client resumes it, in the time an unpause takes.
    let asked = Instant::now();
    assert_eq!(get(listen), PAGE);
    let served = asked.elapsed();
    gateway.wait_for(&format!("container {name} unpaused"));
    let (cold, resumed) = (woke_in(&gateway, "web", 0), woke_in(&gateway, "web", 1));
    println!(
        "cold start {cold} ms; resumed from pause {resumed} ms (first response through wakegate after {} ms)",
        served.as_millis()
    );
    assert_eq!(podman.state(&name).as_deref(), Some("running"));

    // Paused again, then wakegate dies: the next one finds it paused (asleep) and resumes it.
    gateway.wait_for("backend paused after");
    assert_eq!(podman.state(&name).as_deref(), Some("paused"));
    gateway.kill();
    let mut gateway = Wakegate::start(&file);
    gateway.wait_for("found the backend paused");
    assert_eq!(podman.state(&name).as_deref(), Some("paused"));
    assert_eq!(get(listen), PAGE);
    gateway.wait_for(&format!("container {name} unpaused"));
    assert_eq!(podman.named(TEST_LABEL, &tag.0), [name]);
}

#[test]
fn created_from_its_image_when_missing_and_adopted_running_after_a_kill() {
    let podman = podman();
    let tag = Tag::new("create");
    let name = tag.name("made");
    let (port, listen) = (free_addr().port(), free_addr());
    let dir = temp_dir("docker-create");
    let create = table()
        .set("command", httpd(port))
        .set("init", true)
        .set("labels", inline(&[(TEST_LABEL, tag.0.as_str())]));
    let config = gateway(&dir).service(
        svc("made")
            .idle("2s")
            .backend(docker_backend(&name, port).set("image", IMAGE))
            .table("backend.create", create)
            .tcp(listen),
    );
    let file = config.write(&dir.join("wakegate.toml"));
    let mut gateway = Wakegate::start(&file);
    gateway.wait_for("found the backend stopped");
    assert_eq!(podman.state(&name), None);

    assert_eq!(get(listen), PAGE);
    gateway.wait_for(&format!("created container {name} from image {IMAGE}"));
    assert_eq!(podman.state(&name).as_deref(), Some("running"));
    assert_eq!(podman.label(&name, "wakegate.service"), "made");

    // Killed while it runs: the next wakegate adopts the running container, makes no second
    // one, and stops it once idle.
    gateway.kill();
    let mut gateway = Wakegate::start(&file);
    gateway.wait_for("found the backend running");
    gateway.wait_for("backend ready at");
    assert_eq!(get(listen), PAGE);
    gateway.wait_for("backend stopped after");
    assert_eq!(podman.state(&name).as_deref(), Some("exited"));
    assert_eq!(podman.named("wakegate.service", "made"), [name]);
    let created = gateway
        .events("made")
        .into_iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .unwrap_or("")
                .starts_with("created container")
        })
        .count();
    assert_eq!(created, 1, "the adopting wakegate created a container");
}

#[test]
fn a_container_that_exits_while_awake_is_failed_with_its_exit_code_and_log() {
    let podman = podman();
    let tag = Tag::new("crash");
    let name = tag.name("web");
    let (port, listen) = (free_addr().port(), free_addr());
    // It serves until told to crash through a pipe, then says why and exits with 3.
    let script = format!(
        "mkfifo /tmp/crash; httpd -f -p 127.0.0.1:{port} -h /www & read _ </tmp/crash; echo 'fatal: the world file is corrupt' >&2; exit 3"
    );
    tag.create(&name, &[], &["sh", "-c", &script]);
    let dir = temp_dir("docker-crash");
    // The socket from DOCKER_HOST this time.
    let backend = typed("docker")
        .set("container", name.as_str())
        .set("network", "host")
        .set("port", port as i64);
    let config = gateway(&dir).service(svc("web").idle("1h").backend(backend).tcp(listen));
    let file = config.write(&dir.join("wakegate.toml"));
    let mut gateway = Wakegate::start_with(&file, |c| c.env("DOCKER_HOST", podman.url()));
    gateway.wait_for("found the backend stopped");
    assert_eq!(get(listen), PAGE);
    gateway.wait_for("backend ready at");

    let crashed = Instant::now();
    // The exec may end with an error: the container dies under it, which is the point.
    let _ = podman.try_cli(&["exec", &name, "sh", "-c", "echo now > /tmp/crash"]);
    gateway.wait_for("the backend stopped on its own while awake");
    println!(
        "the crash was noticed after {} ms",
        crashed.elapsed().as_millis()
    );
    let failed = gateway
        .events("web")
        .into_iter()
        .rfind(|e| e["kind"] == "transition" && e["state"] == "failed")
        .unwrap();
    assert_eq!(failed["detail"]["exit"], "exit code 3");
    let tail = failed["detail"]["log_tail"].as_str().unwrap();
    assert!(tail.contains("fatal: the world file is corrupt"), "{tail}");
    assert_eq!(podman.state(&name).as_deref(), Some("exited"));

    // The next client wakes it again.
    assert_eq!(get(listen), PAGE);
    assert_eq!(
        transitions(&gateway, "web")[2..],
        ["awake", "failed", "waking", "awake"]
    );
}

#[test]
fn a_template_makes_one_container_per_created_service_and_removes_it_when_destroyed() {
    let podman = podman();
    let tag = Tag::new("template");
    let dir = temp_dir("docker-template");
    let base = free_addr().port();
    let template = format!(
        r#"
[[template]]
name = "game"
ports = "{}-{}"
backend_ports = "{}-{}"

[template.service]
idle_timeout = "1h"

[template.service.backend]
type = "docker"
socket = {socket:?}
container = "wg-{tag}-{{name}}"
image = "{IMAGE}"
network = "host"
address = "127.0.0.1:{{backend_port}}"
remove = true

[template.service.backend.create]
command = ["httpd", "-f", "-p", "127.0.0.1:{{backend_port}}", "-h", "/www"]
init = true
labels = {{ "{TEST_LABEL}" = "{tag}" }}

[[template.service.listen]]
type = "tcp"
bind = "127.0.0.1:{{port}}"
"#,
        base,
        base + 4,
        base + 5,
        base + 9,
        socket = podman.url(),
        tag = tag.0,
    );
    let config = gateway(&dir)
        .service(svc("placeholder").exec_true("127.0.0.1:9").tcp(ANY_PORT))
        .raw(&template);
    let gateway = start(&dir, &config);
    let created = api_post(
        gateway.api(),
        "/api/v1/templates/game/create",
        r#"{"name":"g1"}"#,
    );
    let listen: std::net::SocketAddr = created["created"]["listen"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let name = tag.name("g1");

    assert_eq!(get(listen), PAGE);
    assert_eq!(podman.state(&name).as_deref(), Some("running"));
    assert_eq!(podman.label(&name, "wakegate.service"), "g1");

    // Destroyed: stopped, and the container it was made into removed.
    let (status, body) = http(gateway.api(), "DELETE", "/api/v1/services/g1", "").unwrap();
    assert!(status < 300, "{status} {body}");
    assert_eq!(podman.state(&name), None);
}

/// A POST to the API whose answer is JSON.
fn api_post(api: std::net::SocketAddr, path: &str, body: &str) -> serde_json::Value {
    let (status, text) = http(api, "POST", path, body).unwrap();
    assert!(status < 300, "POST {path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn an_unreachable_socket_fails_run_and_wakes_naming_where_it_was_tried() {
    use std::io::Read;
    let dir = temp_dir("docker-nosocket");
    let missing = dir.join("no-such.sock").display().to_string();

    // [discovery.docker] cannot start without the API: `run` says so, and where it looked.
    let config = gateway(&dir).raw(&format!("[discovery.docker]\nsocket = {missing:?}\n"));
    let file = config.write(&dir.join("discovery.toml"));
    let out = std::process::Command::new(WAKEGATE)
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Docker API") && stderr.contains(&missing),
        "{stderr}"
    );

    // A docker backend's wake fails with the same words, and the client is let go.
    let listen = free_addr();
    let backend = typed("docker")
        .set("socket", missing.as_str())
        .set("container", "web")
        .set("port", 80i64);
    let config = gateway(&dir).service(svc("web").backend(backend).tcp(listen));
    let mut gateway = start(&dir, &config);
    let mut client = TcpStream::connect(listen).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    let failed = gateway.wait_for("Wake failed.");
    assert!(
        failed.contains("cannot reach the Docker API") && failed.contains(&missing),
        "{failed}"
    );
}

#[test]
fn container_readiness_waits_for_the_healthcheck_to_say_healthy() {
    let podman = podman();
    let tag = Tag::new("health");
    let (port, listen) = (free_addr().port(), free_addr());
    // Its server answers at once; its HEALTHCHECK passes only once /tmp/ready exists.
    let health = [
        "--health-cmd",
        "test -f /tmp/ready",
        "--health-interval",
        "1h",
    ];
    let name = tag.serving("web", port, &health);
    let dir = temp_dir("docker-health");
    let config = gateway(&dir).service(
        svc("web")
            .backend(docker_backend(&name, port))
            .readiness(typed("container"))
            .tcp(listen),
    );
    let mut gateway = start(&dir, &config);
    gateway.wait_for("found the backend stopped");
    gateway.wake("web");
    gateway.wait_for("waiting for the container's HEALTHCHECK to say healthy");

    // Without systemd, Podman runs no health timer: the test runs each check, as the timer
    // would. A failing one keeps the wake waiting, though the server answers.
    let _ = podman.try_cli(&["healthcheck", "run", &name]);
    assert_eq!(get_direct(port), PAGE);
    assert_eq!(gateway.service("web")["state"], "waking");

    podman.cli(&["exec", &name, "touch", "/tmp/ready"]);
    podman.cli(&["healthcheck", "run", &name]);
    gateway.wait_for("backend ready at");
    assert_eq!(gateway.service("web")["state"], "awake");
    assert_eq!(get(listen), PAGE);
}

/// GETs the page from the container's server itself, not through wakegate, once it listens
/// (it was just started).
fn get_direct(port: u16) -> String {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    get(addr)
}
