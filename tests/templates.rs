//! Services created from a `[[template]]` through the API of the real binary: a `process`
//! template (the demo echo server) created, woken by a client through its own listener, put
//! to sleep when idle, adopted after a `kill -9` of wakegate, extended, refused beyond its
//! limits, and destroyed, leaving no listener and no process behind; and one that ends at
//! its deadline after a warning.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A config with one configured service (`fixed`) and a template `echo` of the demo echo
/// server, its listener on `{port}` and its backend on `{backend_port}`.
fn config(dir: &Path, template_keys: &str) -> std::path::PathBuf {
    let template = echo_template("echo", "2s", template_keys);
    gateway(dir)
        .service(svc("fixed").exec_true(free_addr()).tcp(free_addr()))
        .raw(&template)
        .write(&dir.join("wakegate.toml"))
}

/// `POST /api/v1/templates/echo/create` with `body`: the status and the JSON answer.
fn create(api: SocketAddr, body: &str) -> (u16, Value) {
    let (status, text) = http(api, "POST", "/api/v1/templates/echo/create", body).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Where a created service listens, from its view.
fn listen(view: &Value) -> SocketAddr {
    view["created"]["listen"][0]
        .as_str()
        .unwrap_or_else(|| panic!("no listener in {view}"))
        .parse()
        .unwrap()
}

fn backend(view: &Value) -> SocketAddr {
    let port = view["created"]["backend_port"].as_u64().unwrap();
    SocketAddr::from(([127, 0, 0, 1], port as u16))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_service_wakes_sleeps_survives_a_kill_and_is_destroyed() {
    let dir = temp_dir("template-life");
    let path = config(
        &dir,
        "lifetime = \"1h\"\nmax_lifetime = \"2h\"\nmax_per_owner = 1\nmax_total = 2",
    );
    let mut gate = Wakegate::start(&path);
    let api = gate.api();

    let (status, alpha) = create(api, r#"{"name": "alpha", "owner": "ann"}"#);
    assert_eq!(status, 201, "{alpha}");
    assert_eq!(alpha["state"], "asleep");
    assert_eq!(alpha["created"]["owner"], "ann");
    assert_eq!(alpha["created"]["template"], "echo");
    let (front, back) = (listen(&alpha), backend(&alpha));
    assert!(
        echo_servers(back).is_empty(),
        "started before a client came"
    );

    // Limits, names.
    let (status, body) = create(api, r#"{"owner": "ann"}"#);
    assert_eq!(status, 429, "{body}");
    assert!(body["error"].as_str().unwrap().contains("max_per_owner"));
    let (status, body) = create(api, r#"{"name": "Bad_Name", "owner": "bob"}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = create(api, r#"{"name": "fixed", "owner": "bob"}"#);
    assert_eq!(status, 409, "{body}");
    let (status, beta) = create(api, r#"{"owner": "bob"}"#);
    assert_eq!(status, 201, "{beta}");
    assert_eq!(beta["name"], "echo-1");
    assert_ne!(listen(&beta), front);
    let (status, body) = create(api, r#"{"owner": "carol"}"#);
    assert_eq!(status, 429, "{body}");
    assert!(body["error"].as_str().unwrap().contains("max_total"));
    let (status, body) = http(api, "DELETE", "/api/v1/services/fixed", "").unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("configured"), "{body}");
    let (status, body) = http(api, "DELETE", "/api/v1/services/echo-1", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let listed = api_json(api, "GET", "/api/v1/templates");
    assert_eq!(listed[0]["live"], serde_json::json!(["alpha"]));

    // Extend, within max_lifetime.
    let deadline = |view: &Value| {
        humantime::parse_rfc3339(view["created"]["deadline"].as_str().unwrap()).unwrap()
    };
    let before = deadline(&alpha);
    let (status, body) = http(
        api,
        "POST",
        "/api/v1/services/alpha/extend",
        r#"{"duration": "30m"}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let extended: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        deadline(&extended).duration_since(before).unwrap(),
        Duration::from_secs(1800)
    );
    let (status, body) = http(
        api,
        "POST",
        "/api/v1/services/alpha/extend",
        r#"{"duration": "1h"}"#,
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_lifetime"), "{body}");

    // A client wakes it through its own listener.
    let mut client = TcpStream::connect(front).unwrap();
    assert_eq!(echo_back(&mut client, b"hello"), b"hello");
    let servers = echo_servers(back);
    assert_eq!(servers.len(), 1);

    // kill -9 while it is awake and in use: the next wakegate adopts it.
    drop(client);
    gate.kill();
    let mut gate = Wakegate::start(&path);
    let api = gate.api();
    let view = gate.service("alpha");
    assert_eq!(view["created"]["owner"], "ann");
    assert_eq!(
        deadline(&view),
        deadline(&extended),
        "the deadline was lost"
    );
    let mut client = TcpStream::connect(front).unwrap();
    assert_eq!(echo_back(&mut client, b"again"), b"again");
    // What happens from now on.
    let last = api_json(api, "GET", "/api/v1/events?service=alpha&limit=1")["last_id"]
        .as_i64()
        .unwrap();
    let mut events = gate.event_stream_after("alpha", last, DEADLINE).await;
    assert_eq!(echo_servers(back), servers, "not adopted");
    assert_eq!(starts_in_log(&dir, "alpha"), 1, "a second copy was started");

    // Idle: stopped, not ended.
    drop(client);
    events.until_state("asleep").await;
    assert!(
        echo_servers(back).is_empty(),
        "still running after the idle stop"
    );
    assert_eq!(gate.service("alpha")["state"], "asleep");

    // Destroyed: its listener and its record's life are gone.
    let mut client = TcpStream::connect(front).unwrap();
    assert_eq!(echo_back(&mut client, b"last"), b"last");
    drop(client);
    let (status, body) = http(api, "DELETE", "/api/v1/services/alpha", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        echo_servers(back).is_empty(),
        "the process outlived its service"
    );
    assert!(
        TcpStream::connect(front).is_err(),
        "the listener outlived its service"
    );
    let (status, _) = http(api, "GET", "/api/v1/services/alpha", "").unwrap();
    assert_eq!(status, 404);
    events
        .until("the end", |e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("ended: destroyed"))
        })
        .await;

    // Not created again by the next start.
    gate.kill();
    let gate = Wakegate::start(&path);
    let (status, _) = http(gate.api(), "GET", "/api/v1/services/alpha", "").unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_service_ends_at_its_deadline_after_a_warning() {
    let dir = temp_dir("template-deadline");
    let path = config(&dir, "lifetime = \"3s\"\nwarnings = [\"2s\"]");
    let gate = Wakegate::start(&path);
    let api = gate.api();
    let (status, view) = create(api, r#"{"name": "short"}"#);
    assert_eq!(status, 201, "{view}");
    let mut events = gate.event_stream("short", DEADLINE).await;
    let mut client = TcpStream::connect(listen(&view)).unwrap();
    assert_eq!(echo_back(&mut client, b"hi"), b"hi");
    let seen = events
        .until("the end", |e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("ended: its deadline"))
        })
        .await;
    let warning = seen
        .iter()
        .position(|e| e["kind"] == "warning" && e["reason"].as_str().unwrap().contains("ends in"))
        .expect("no warning before the end");
    let asleep = seen
        .iter()
        .rposition(|e| e["kind"] == "transition" && e["state"] == "asleep")
        .expect("not stopped");
    assert!(warning < asleep);
    assert!(echo_servers(backend(&view)).is_empty());
    let (status, _) = http(api, "GET", "/api/v1/services/short", "").unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_end_when_idle_service_ends_once_it_sleeps() {
    let dir = temp_dir("template-idle-end");
    let path = config(&dir, "end_when_idle = true");
    let gate = Wakegate::start(&path);
    let api = gate.api();
    let (status, view) = create(api, r#"{"name": "once"}"#);
    assert_eq!(status, 201, "{view}");
    let mut events = gate.event_stream("once", DEADLINE).await;
    let mut client = TcpStream::connect(listen(&view)).unwrap();
    assert_eq!(echo_back(&mut client, b"hi"), b"hi");
    drop(client);
    events
        .until("the end", |e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("ended: it went to sleep"))
        })
        .await;
    assert!(echo_servers(backend(&view)).is_empty());
    assert!(TcpStream::connect(listen(&view)).is_err());
    let (status, _) = http(api, "GET", "/api/v1/services/once", "").unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_service_whose_process_exits_fails_with_the_reason_and_is_destroyed() {
    let dir = temp_dir("template-fails");
    let base = free_addr().port();
    let template = format!(
        r#"
[[template]]
name = "broken"
ports = "{base}-{}"

[template.service.backend]
type = "process"
command = ["sh", "-c", "echo no world for {{name}}; exit 3"]
address = "127.0.0.1:9"

[[template.service.listen]]
type = "tcp"
bind = "127.0.0.1:{{port}}"
"#,
        base + 9
    );
    let path = gateway(&dir)
        .service(svc("fixed").exec_true(free_addr()).tcp(free_addr()))
        .raw(&template)
        .write(&dir.join("wakegate.toml"));
    let gate = Wakegate::start(&path);
    let api = gate.api();
    let (status, text) = http(api, "POST", "/api/v1/templates/broken/create", "{}").unwrap();
    assert_eq!(status, 201, "{text}");
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["name"], "broken-1");
    let mut events = gate.event_stream("broken-1", DEADLINE).await;
    let client = tokio::net::TcpStream::connect(listen(&view)).await.unwrap();
    closed_by_gateway(client).await;
    let failed = events.until_state("failed").await;
    let reason = failed.last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("exit"), "{reason}");
    let shown = gate.service("broken-1");
    assert_eq!(shown["state"], "failed");
    assert!(
        shown["last_error"]
            .as_str()
            .unwrap()
            .contains("no world for broken-1"),
        "{shown}"
    );
    let (status, body) = http(api, "DELETE", "/api/v1/services/broken-1", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(TcpStream::connect(listen(&view)).is_err());
    let (status, _) = http(api, "GET", "/api/v1/services/broken-1", "").unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_extends_and_destroys() {
    let dir = temp_dir("template-cli");
    let path = config(&dir, "max_lifetime = \"5h\"");
    let gate = Wakegate::start(&path);
    let api = gate.api().to_string();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(WAKEGATE)
            .args(args)
            .args(["--api", &api])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["create", "echo", "--name", "cli", "--owner", "dan"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("created cli from template echo for dan: listening on 127.0.0.1:"),
        "{out}"
    );
    let (ok, out, err) = cli(&["extend", "cli", "10m"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("cli now ends at "), "{out}");
    let (ok, _, err) = cli(&["extend", "cli", "2h"]);
    assert!(!ok);
    assert!(err.contains("max_lifetime"), "{err}");
    let (ok, _, err) = cli(&["destroy", "fixed"]);
    assert!(!ok);
    assert!(err.contains("409") && err.contains("configured"), "{err}");
    let (ok, out, err) = cli(&["destroy", "cli"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "destroyed cli");
    let (ok, _, err) = cli(&["destroy", "cli"]);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
}

/// `GET /` with a `Host` header: the status code.
fn get_host(addr: SocketAddr, host: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn created_services_join_and_leave_a_shared_http_socket_by_hostname() {
    let dir = temp_dir("template-http");
    let shared = free_addr();
    let base = free_addr().port();
    let template = format!(
        r#"
[[template]]
name = "site"
backend_ports = "{base}-{}"

[template.service]
idle_timeout = "1h"

[template.service.backend]
type = "process"
command = ["{WAKEGATE}", "demo-backend", "--listen", "127.0.0.1:{{backend_port}}"]
address = "127.0.0.1:{{backend_port}}"

[[template.service.listen]]
type = "http"
bind = "{shared}"
hostnames = ["{{name}}.test"]
strategy = "block"
"#,
        base + 9
    );
    let path = gateway(&dir)
        .service(svc("fixed").exec_true(free_addr()).tcp(free_addr()))
        .raw(&template)
        .write(&dir.join("wakegate.toml"));
    let mut gate = Wakegate::start(&path);
    let api = gate.api();
    assert_eq!(get_host(shared, "one.test"), 404);
    // The socket was bound before any service joined it: it still gives a client that takes
    // its time the default head_timeout (it once had none, and closed such a client at once).
    {
        use std::io::{Read, Write};
        let mut slow = TcpStream::connect(shared).unwrap();
        slow.set_read_timeout(Some(DEADLINE)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        slow.write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        slow.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    }
    for name in ["one", "two"] {
        let (status, text) = http(
            api,
            "POST",
            "/api/v1/templates/site/create",
            &format!(r#"{{"name": "{name}"}}"#),
        )
        .unwrap();
        assert_eq!(status, 201, "{text}");
        let view: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(view["created"]["listen"][0], shared.to_string());
    }
    assert_eq!(get_host(shared, "one.test"), 200);
    assert_eq!(get_host(shared, "two.test"), 200);
    assert_eq!(get_host(shared, "three.test"), 404);

    let (status, body) = http(api, "DELETE", "/api/v1/services/one", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_host(shared, "one.test"), 404, "its route outlived it");
    assert_eq!(get_host(shared, "two.test"), 200);

    // After a kill -9, `two` is routed again and its server adopted.
    gate.kill();
    let gate = Wakegate::start(&path);
    assert_eq!(get_host(shared, "two.test"), 200);
    assert_eq!(get_host(shared, "one.test"), 404);
    assert_eq!(starts_in_log(&dir, "two"), 1, "a second copy was started");
    assert_eq!(gate.service("two")["state"], "awake");
}
