//! `wakegate agent` against the real gateway binary: a real server whose clients bypass the
//! gateway (as with `[service.dns]`) kept awake by the agent's reports and put to sleep once
//! they leave; the dead man's switch after the gateway is killed with -9; a token for another
//! service refused; the pre-stop command run before the stop hook.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const AGENT_MC: &str = "agent-mc-0123456789abcdef";
const AGENT_OTHER: &str = "agent-other-0123456789abcdef";
const OPERATE: &str = "operate-0123456789abcdef";

/// A running `wakegate agent`, killed when dropped.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Agent {
    /// Writes `toml` to `dir/agent.toml` and runs `wakegate agent --config` on it.
    fn start(dir: &Path, toml: &str) -> Agent {
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml).unwrap();
        let mut child = Command::new(WAKEGATE)
            .args(["agent", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `text`.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "the agent logged no {text:?}; it logged:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent's config: `gateway` its API, `rest` the lines that differ per test.
fn agent_toml(api: SocketAddr, service: &str, token: &str, rest: &str) -> String {
    format!(
        "gateway = \"http://{api}\"\nservice = \"{service}\"\ntoken = \"{token}\"\nhost = \"test-host\"\nreport_interval = \"1s\"\ncheck_interval = \"200ms\"\n{rest}\n"
    )
}

/// The demo echo server as a real process of its own (the server players reach directly),
/// killed when dropped.
struct EchoServer(Child, SocketAddr);

impl EchoServer {
    fn start() -> EchoServer {
        let addr = free_addr();
        let child = Command::new(WAKEGATE)
            .args(["demo-backend", "--echo", "--listen"])
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the echo server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        EchoServer(child, addr)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP/1.1 POST with a bearer token; the status and the body as JSON.
fn post(api: SocketAddr, path: &str, token: &str, body: &str) -> (u16, Value) {
    request(api, "POST", path, token, body)
}

/// An HTTP/1.1 request with a bearer token; the status and the body as JSON.
fn request(api: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(api).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The live events of `service` from a gateway with tokens: the stream takes its token in the
/// query (`access_token`), as browsers send it.
async fn events_as(gateway: &Wakegate, service: &str, token: &str) -> EventStream {
    gateway
        .event_stream(&format!("{service}&access_token={token}"), DEADLINE)
        .await
}

/// Seconds since the epoch of an event's RFC 3339 `time`.
fn seconds(time: &Value) -> f64 {
    let time = humantime::parse_rfc3339(time.as_str().unwrap()).unwrap();
    time.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits (polling the API) until `done` holds for the service's view.
fn wait_view(gateway: &Wakegate, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let view = gateway.service(name);
        if done(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "never {what}; last: {view:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_straight_to_the_server_keep_it_awake_and_it_sleeps_once_they_close() {
    let dir = temp_dir("agent-awake");
    let server = EchoServer::start();
    let idle = 3.0;
    let file = gateway(&dir)
        .service(svc("mc").idle("3s").exec_true(server.1).tcp(ANY_PORT))
        .write(&dir.join("wakegate.toml"));
    let gateway = Wakegate::start(&file);
    let mut events = gateway.event_stream("mc", DEADLINE).await;

    // Three players connected straight to the server, as DNS sends them: none through wakegate.
    let mut players: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.1).unwrap())
        .collect();
    for (i, player) in players.iter_mut().enumerate() {
        let hello = format!("hello {i}");
        assert_eq!(echo_back(player, hello.as_bytes()), hello.as_bytes());
    }
    let port = server.1.port();
    let _agent = Agent::start(
        &dir,
        &agent_toml(gateway.api(), "mc", "unused", &format!("ports = [{port}]")),
    );
    let began = events
        .until("the agent's first report", |e| e["kind"] == "agent")
        .await;
    let began = began.last().unwrap();
    assert_eq!(began["state"], "asleep", "a report never wakes a service");
    assert_eq!(began["detail"]["connections"], 3, "{began:#}");
    assert_eq!(began["detail"]["host"], "test-host");

    gateway.wake("mc");
    let awake = events.until_state("awake").await;
    let awake_at = seconds(&awake.last().unwrap()["time"]);
    assert_eq!(
        gateway.service("mc")["connections"],
        0,
        "nothing goes through wakegate"
    );

    // Twice the idle timeout passes while the agent reports them (the gateway sees its reports
    // arrive); the service stays awake, with no idle countdown.
    let view = wait_view(
        &gateway,
        "mc",
        "a report 2 × idle_timeout after the wake",
        |v| {
            v["agent"]["last_report"]
                .as_str()
                .is_some_and(|_| seconds(&v["agent"]["last_report"]) >= awake_at + 2.0 * idle)
        },
    );
    assert_eq!(view["state"], "awake", "{view:#}");
    assert_eq!(view["idle_since"], Value::Null, "{view:#}");
    let agent = &view["agent"];
    assert_eq!(agent["connections"], 3, "{agent:#}");
    assert_eq!(agent["active"], true);
    assert_eq!(agent["state"], "reporting");
    assert_eq!(agent["host"], "test-host");

    // The status command shows the agent's figures, and so do the metrics.
    let status = Command::new(WAKEGATE)
        .args(["status", "mc", "--api"])
        .arg(gateway.api().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("agent on test-host: 3 connections"), "{text}");
    let (code, metrics) = http(gateway.api(), "GET", "/metrics", "").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("wakegate_agent_connections{service=\"mc\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("wakegate_agent_active{service=\"mc\"} 1"),
        "{metrics}"
    );
    promtool_check(&metrics);

    // The players leave; the agent reports it, and the idle timeout runs from there.
    players.clear();
    let left_at = now_seconds();
    let stopping = events.until_state("stopping").await;
    let stopping = stopping.last().unwrap();
    assert_eq!(stopping["detail"]["trigger"], "idle", "{stopping:#}");
    let stopped_after = seconds(&stopping["time"]) - left_at;
    assert!(
        stopped_after >= idle && stopped_after < idle + 3.0,
        "stopped {stopped_after:.2}s after the players left (idle_timeout {idle}s)"
    );
    events.until_state("asleep").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_mans_switch_runs_the_shutdown_command_after_dead_man_and_not_before() {
    let dir = temp_dir("agent-dead-man");
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let file = gateway(&dir)
        .service(
            svc("mc")
                .idle("10m")
                .exec_true(backend.local_addr().unwrap())
                .tcp(ANY_PORT),
        )
        .write(&dir.join("wakegate.toml"));
    let mut gateway = Wakegate::start(&file);
    let mut events = gateway.event_stream("mc", DEADLINE).await;
    let record = dir.join("shutdown.record");
    let script = dir.join("shutdown.sh");
    std::fs::write(&script, format!("date +%s.%N >> '{}'\n", record.display())).unwrap();
    let dead_man = 3.0;
    let mut agent = Agent::start(
        &dir,
        &agent_toml(
            gateway.api(),
            "mc",
            "unused",
            &format!(
                "ports = [{}]\ndead_man = \"3s\"\nidle_timeout = \"1s\"\nshutdown_command = \"sh '{}'\"",
                backend.local_addr().unwrap().port(),
                script.display()
            ),
        ),
    );
    // The gateway answers and the host is idle: the agent reports, and keeps its host up.
    events
        .until("the agent's first report", |e| e["kind"] == "agent")
        .await;
    assert!(
        !record.exists(),
        "the shutdown command ran while the gateway answered"
    );

    let killed_at = now_seconds();
    gateway.kill();
    let deadline = Instant::now() + DEADLINE;
    let recorded = loop {
        if let Ok(text) = std::fs::read_to_string(&record)
            && let Some(first) = text.lines().next()
        {
            break first.trim().parse::<f64>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the shutdown command never ran; the agent logged:\n{}",
            agent.seen.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let after = recorded - killed_at;
    assert!(
        after >= dead_man,
        "the shutdown command ran {after:.2}s after the gateway died, before dead_man ({dead_man}s)"
    );
    assert!(
        after < dead_man + 3.0,
        "it ran {after:.2}s after, much later than dead_man"
    );
    let why = agent.wait_for("running the shutdown command");
    assert!(why.contains("has not answered for dead_man"), "{why}");
    agent.wait_for("Cannot reach the gateway");
}

/// A gateway with tokens, and services `mc` and `other` whose stop hook writes to `order`.
fn gateway_with_tokens(
    dir: &Path,
    backend: SocketAddr,
    order: &Path,
    pre_stop_timeout: &str,
) -> PathBuf {
    let stop = format!("echo stop >> '{}'", order.display());
    gateway(dir)
        .gateway_raw(&format!(
            "[[gateway.token]]\nname = \"mc-agent\"\nsecret = \"{AGENT_MC}\"\nrole = \"agent\"\nservices = [\"mc\"]\n\
             [[gateway.token]]\nname = \"other-agent\"\nsecret = \"{AGENT_OTHER}\"\nrole = \"agent\"\nservices = [\"other\"]\n\
             [[gateway.token]]\nname = \"ops\"\nsecret = \"{OPERATE}\"\nrole = \"operate\""
        ))
        .service(
            svc("mc")
                .idle("10m")
                .exec("true", &stop, backend)
                .table("agent", table().set("pre_stop_timeout", pre_stop_timeout))
                .tcp(ANY_PORT),
        )
        .service(svc("other").idle("10m").exec_true(backend).tcp(ANY_PORT))
        .write(&dir.join("wakegate.toml"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_another_service_is_refused() {
    let dir = temp_dir("agent-refused");
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let file = gateway_with_tokens(
        &dir,
        backend.local_addr().unwrap(),
        &dir.join("order"),
        "5s",
    );
    let gateway = Wakegate::start(&file);
    let api = gateway.api();
    let report = r#"{"host": "h", "connections": 1, "valid_for": "3s"}"#;

    let (status, answer) = post(api, "/api/v1/services/mc/report", AGENT_MC, report);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["valid_until"].is_string(), "{answer}");

    let (status, answer) = post(api, "/api/v1/services/other/report", AGENT_MC, report);
    assert_eq!(status, 403, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains("token `mc-agent` may report only for `mc`, not for service `other`"),
        "{message}"
    );
    // Nothing else either: an agent's token only reports.
    let (status, answer) = post(api, "/api/v1/services/mc/wake", AGENT_MC, "");
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("has the agent role"),
        "{answer}"
    );
    // And a read token may not report.
    let (status, _) = post(
        api,
        "/api/v1/services/mc/report",
        "not-a-token-0123456789",
        report,
    );
    assert_eq!(status, 401);

    // A real agent of `other` given mc's token says why in its log, and is not counted.
    let mut agent = Agent::start(&dir, &agent_toml(api, "other", AGENT_MC, "ports = [1]"));
    let refused = agent.wait_for("The gateway refused the report.");
    assert!(refused.contains("403"), "{refused}");
    assert!(refused.contains("may report only for `mc`"), "{refused}");
    let (status, view) = request(api, "GET", "/api/v1/services/other", OPERATE, "");
    assert_eq!(status, 200);
    assert_eq!(view["agent"], Value::Null, "{view:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_stop_command_runs_before_the_stop_hook() {
    let dir = temp_dir("agent-pre-stop");
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let order = dir.join("order");
    let file = gateway_with_tokens(&dir, backend.local_addr().unwrap(), &order, "10s");
    let gateway = Wakegate::start(&file);
    let mut events = events_as(&gateway, "mc", OPERATE).await;
    // The pre-stop takes a moment, like a world save: the stop must wait for it.
    let _agent = Agent::start(
        &dir,
        &agent_toml(
            gateway.api(),
            "mc",
            AGENT_MC,
            &format!(
                "ports = [1]\npre_stop = \"sleep 0.5; echo pre-stop >> '{}'\"",
                order.display()
            ),
        ),
    );
    events
        .until("the agent's first report", |e| e["kind"] == "agent")
        .await;
    let (status, _) = post(gateway.api(), "/api/v1/services/mc/wake", OPERATE, "");
    assert_eq!(status, 202);
    events.until_state("awake").await;
    let (status, _) = post(gateway.api(), "/api/v1/services/mc/sleep", OPERATE, "");
    assert_eq!(status, 202);
    let seen = events.until_state("asleep").await;

    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "pre-stop\nstop\n",
        "the pre-stop command must finish before the stop hook runs"
    );
    let asked = seen
        .iter()
        .find(|e| e["kind"] == "agent" && e["detail"]["timeout_ms"] == 10_000)
        .unwrap_or_else(|| panic!("no pre-stop request; saw {seen:#?}"));
    assert_eq!(asked["state"], "stopping");
    let done = seen
        .iter()
        .find(|e| e["kind"] == "agent" && e["detail"]["ok"] == true)
        .unwrap_or_else(|| panic!("no pre-stop result; saw {seen:#?}"));
    assert_eq!(done["detail"]["exit"], "exit code 0");
    assert!(
        done["detail"]["duration_ms"].as_u64().unwrap() >= 500,
        "{done:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_stop_that_hangs_holds_the_stop_only_until_pre_stop_timeout() {
    let dir = temp_dir("agent-pre-stop-timeout");
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let order = dir.join("order");
    let file = gateway_with_tokens(&dir, backend.local_addr().unwrap(), &order, "1s");
    let gateway = Wakegate::start(&file);
    let mut events = events_as(&gateway, "mc", OPERATE).await;
    let _agent = Agent::start(
        &dir,
        &agent_toml(
            gateway.api(),
            "mc",
            AGENT_MC,
            "ports = [1]\npre_stop = \"sleep 30\"",
        ),
    );
    events
        .until("the agent's first report", |e| e["kind"] == "agent")
        .await;
    post(gateway.api(), "/api/v1/services/mc/wake", OPERATE, "");
    events.until_state("awake").await;
    post(gateway.api(), "/api/v1/services/mc/sleep", OPERATE, "");
    let seen = events.until_state("asleep").await;
    let warning = seen
        .iter()
        .find(|e| e["kind"] == "warning")
        .unwrap_or_else(|| panic!("no warning; saw {seen:#?}"));
    assert!(
        warning["reason"].as_str().unwrap().contains(
            "did not finish its pre-stop command within pre_stop_timeout (1s); stopping anyway"
        ),
        "{warning:#}"
    );
    let stopping = seen.iter().find(|e| e["state"] == "stopping").unwrap();
    let waited = seconds(&warning["time"]) - seconds(&stopping["time"]);
    assert!(
        (1.0..4.0).contains(&waited),
        "waited {waited:.2}s for a 1s pre_stop_timeout"
    );
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "stop\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_over_https_to_their_own_socket_while_the_api_stays_on_loopback() {
    let dir = temp_dir("agent-https");
    // A private CA the agent trusts through ca_file, and the gateway's certificate it signed.
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    for (file, pem) in [
        ("ca.pem", ca.pem()),
        ("gateway.pem", cert.pem()),
        ("gateway.key", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(file), pem).unwrap();
    }
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let file = gateway_with_tokens(
        &dir,
        backend.local_addr().unwrap(),
        &dir.join("order"),
        "5s",
    );
    let agents = free_addr();
    let mut text = std::fs::read_to_string(&file).unwrap();
    text = text.replacen(
        "[gateway]\n",
        &format!(
            "[gateway]\nagents = {{ bind = \"{agents}\", tls_cert = {:?}, tls_key = {:?} }}\n",
            dir.join("gateway.pem"),
            dir.join("gateway.key")
        ),
        1,
    );
    std::fs::write(&file, text).unwrap();
    let gateway = Wakegate::start(&file);
    let api = gateway.api();

    let toml = format!(
        "gateway = \"https://localhost:{}\"\nservice = \"mc\"\ntoken = \"{AGENT_MC}\"\nhost = \"tls-host\"\nca_file = {:?}\nreport_interval = \"1s\"\ncheck_interval = \"200ms\"\nports = [1]\n",
        agents.port(),
        dir.join("ca.pem")
    );
    let _agent = Agent::start(&dir, &toml);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, view) = request(api, "GET", "/api/v1/services/mc", OPERATE, "");
        assert_eq!(status, 200, "{view}");
        if view["agent"]["host"] == "tls-host" {
            assert_eq!(view["agent"]["state"], "reporting", "{view:#}");
            break;
        }
        assert!(Instant::now() < deadline, "no report over HTTPS: {view:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Only the agents' routes are served there: the rest of the API is not, whatever the token.
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let client = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(agents).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "GET /api/v1/services/mc HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {OPERATE}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let (status, _) = request(api, "GET", "/api/v1/services/mc", OPERATE, "");
    assert_eq!(status, 200, "the API itself is where it was");
}
