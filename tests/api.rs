//! The control plane: tokens and roles, error shapes, actions and leases (through the router,
//! no socket), and the SSE and WebSocket feeds over real sockets, resumed mid-stream.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt;
use wakegate::app::App;
use wakegate::event::State;

const READ: &str = "read-token-0123456789";
const OPERATE: &str = "operate-token-0123456789";

/// A gateway with tokens and one `exec` service whose "server" is a listener the test holds.
async fn start(dir: &std::path::Path, extra_gateway: Option<(&str, &str)>) -> (App, TcpListener) {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = gateway(dir).unset("shutdown_grace");
    if let Some((key, value)) = extra_gateway {
        config = config.set(key, Raw(value.to_string()));
    }
    let app = config
        .gateway_raw(&format!(
            "[[gateway.token]]\nname = \"viewer\"\nsecret = \"{READ}\"\nrole = \"read\"\n\
             [[gateway.token]]\nname = \"ops\"\nsecret = \"{OPERATE}\"\nrole = \"operate\""
        ))
        .service(
            svc("web")
                .set("hourly_cost", 0.5)
                .idle("10m")
                .exec_true(backend.local_addr().unwrap())
                .tcp(ANY_PORT),
        )
        .start()
        .await;
    (app, backend)
}

async fn call(
    app: &App,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, serde_json::Value, axum::http::HeaderMap) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let response = app.router().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, json, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_guard_the_api_with_clear_errors() {
    let dir = temp_dir("auth");
    let (app, _backend) = start(&dir, None).await;

    let (status, body, headers) = call(&app, "GET", "/api/v1/services", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );

    let (status, body, _) = call(
        &app,
        "GET",
        "/api/v1/services",
        Some("not-a-token-at-all!"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().unwrap().contains("not known"),
        "{body}"
    );

    let (status, body, _) = call(&app, "GET", "/api/v1/services", Some(READ), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["name"], "web");
    assert_eq!(body[0]["state"], "asleep");
    assert_eq!(body[0]["hourly_cost"], 0.5);

    let (status, body, _) = call(&app, "POST", "/api/v1/services/web/wake", Some(READ), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("`viewer`") && message.contains("Operate"),
        "{message}"
    );
    assert_eq!(app.service("web").unwrap().status().state, State::Asleep);

    let (status, me, _) = call(&app, "GET", "/api/v1/me", Some(READ), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, serde_json::json!({ "name": "viewer", "role": "read" }));

    let (status, body, _) = call(&app, "GET", "/api/v1/services/nope", Some(READ), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no service is named `nope`")
    );

    // The streams take the token from the query: browsers cannot set headers there.
    let (status, _, _) = call(
        &app,
        "GET",
        &format!("/api/v1/events?access_token={READ}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Open: the probe and the page itself (which asks for a token to call the API).
    let (status, body, _) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body, headers) = call(&app, "GET", "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        body.as_str().unwrap().contains("<html") || body.as_str().unwrap().contains("<!doctype")
    );
    // No CORS unless configured.
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_sleep_and_leases_steer_the_service() {
    let dir = temp_dir("actions");
    let (app, _backend) = start(&dir, None).await;
    let web = app.service("web").unwrap().clone();

    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/services/web/wake",
        Some(OPERATE),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_state(&web, State::Awake).await;
    let events = app.store().latest_events(Some("web"), 10).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.reason == "wake requested by API token ops"),
        "{events:#?}"
    );

    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/services/web/leases",
        Some(OPERATE),
        Some(r#"{"duration": "soon"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("like \"2h\""),
        "{body}"
    );
    let (status, body, _) = call(
        &app,
        "POST",
        "/api/v1/services/web/leases",
        Some(OPERATE),
        Some(r#"{"hours": 2}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("send JSON like"),
        "{body}"
    );

    let (status, lease, _) = call(
        &app,
        "POST",
        "/api/v1/services/web/leases",
        Some(OPERATE),
        Some(r#"{"duration": "2h", "reason": "raid night"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{lease}");
    assert_eq!(lease["by"], "ops");
    let id = lease["id"].as_i64().unwrap();
    let (_, listed, _) = call(&app, "GET", "/api/v1/services/web/leases", Some(READ), None).await;
    assert_eq!(listed[0]["reason"], "raid night");
    let (_, view, _) = call(&app, "GET", "/api/v1/services/web", Some(READ), None).await;
    assert_eq!(view["leases"][0]["id"], id);
    // A lease holds it awake past the idle timeout: the deadline is the lease's end.
    let deadline = humantime::parse_rfc3339(view["idle_deadline"].as_str().unwrap()).unwrap();
    assert!(
        deadline
            .duration_since(std::time::SystemTime::now())
            .unwrap()
            > Duration::from_secs(3600)
    );

    let uri = format!("/api/v1/services/web/leases/{id}");
    let (status, _, _) = call(&app, "DELETE", &uri, Some(OPERATE), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body, _) = call(&app, "DELETE", &uri, Some(OPERATE), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"].as_str().unwrap().contains("no lease"),
        "{body}"
    );

    let (status, _, _) = call(
        &app,
        "POST",
        "/api/v1/services/web/sleep",
        Some(OPERATE),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_state(&web, State::Asleep).await;

    // A lease on a sleeping service wakes it.
    let (status, _, _) = call(
        &app,
        "POST",
        "/api/v1/services/web/leases",
        Some(OPERATE),
        Some(r#"{"duration": "1h"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    wait_state(&web, State::Awake).await;

    let (_, view, _) = call(&app, "GET", "/api/v1/services/web", Some(READ), None).await;
    assert!(view["awake_seconds_day"].as_f64().unwrap() > 0.0, "{view}");
    assert_eq!(
        view["boot_durations_ms"].as_array().unwrap().len(),
        2,
        "{view}"
    );
    assert!(view["cost_saved_30d"].as_f64().is_some());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_prometheus_conventions() {
    let dir = temp_dir("metrics");
    let (app, _backend) = start(&dir, None).await;
    let web = app.service("web").unwrap().clone();
    call(
        &app,
        "POST",
        "/api/v1/services/web/wake",
        Some(OPERATE),
        None,
    )
    .await;
    wait_state(&web, State::Awake).await;

    let request = Request::get("/metrics")
        .header(header::AUTHORIZATION, format!("Bearer {READ}"))
        .body(Body::empty())
        .unwrap();
    let response = app.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for line in [
        "wakegate_service_state{service=\"web\",state=\"awake\"} 1",
        "wakegate_service_state{service=\"web\",state=\"asleep\"} 0",
        "wakegate_wakes_total{service=\"web\",trigger=\"api\"} 1",
        "wakegate_wake_duration_seconds_count{service=\"web\",from=\"stopped\"} 1",
        "wakegate_service_sleep_mode{service=\"web\",mode=\"stopped\"} 0",
        "# TYPE wakegate_wake_duration_seconds histogram",
        "# TYPE wakegate_received_bytes_total counter",
        "# TYPE process_resident_memory_bytes gauge",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_exposition_passes_promtool() {
    let dir = temp_dir("promtool");
    let (app, backend) = start(&dir, None).await;
    let web = app.service("web").unwrap().clone();
    // Some of everything: a client's wake, bytes both ways, a sleep by hand, a wake by the API.
    // The "server" echoes on every connection (the readiness probe's too).
    let echo = tokio::spawn(async move {
        loop {
            let (mut stream, _) = backend.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut from, mut to) = stream.split();
                let _ = tokio::io::copy(&mut from, &mut to).await;
            });
        }
    });
    let back = round_trip(app.listen_addr("web").unwrap(), b"ping")
        .await
        .unwrap();
    assert_eq!(back, b"ping");
    web.sleep("the test").await.unwrap().unwrap();
    wait_state(&web, State::Asleep).await;
    call(
        &app,
        "POST",
        "/api/v1/services/web/wake",
        Some(OPERATE),
        None,
    )
    .await;
    wait_state(&web, State::Awake).await;

    // Over a real socket, as Prometheus scrapes it.
    let mut scrape = tokio::net::TcpStream::connect(app.api_addr())
        .await
        .unwrap();
    scrape
        .write_all(
            format!(
                "GET /metrics HTTP/1.0\r\nHost: wakegate\r\nAuthorization: Bearer {READ}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    scrape.read_to_string(&mut answer).await.unwrap();
    let (head, exposition) = answer.split_once("\r\n\r\n").unwrap();
    assert_eq!(head.split_whitespace().nth(1), Some("200"), "{head}");
    assert!(
        exposition.contains("wakegate_wakes_total{service=\"web\",trigger=\"client\"} 1"),
        "{exposition}"
    );
    promtool_check(exposition);
    app.shutdown().await;
    echo.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_only_for_configured_origins() {
    let dir = temp_dir("cors");
    let (app, _backend) = start(
        &dir,
        Some(("cors_origins", "[\"https://status.example.com\"]")),
    )
    .await;
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/api/v1/services")
        .header(header::ORIGIN, "https://status.example.com")
        .body(Body::empty())
        .unwrap();
    let response = app.router().oneshot(preflight).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://status.example.com"
    );
    let other = Request::get("/api/v1/services")
        .header(header::ORIGIN, "https://evil.example.com")
        .header(header::AUTHORIZATION, format!("Bearer {READ}"))
        .body(Body::empty())
        .unwrap();
    let response = app.router().oneshot(other).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        !response
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
    app.shutdown().await;
}

/// Makes events while a test reads them: leases taken and ended on the service.
fn produce(app: &App, count: usize) -> tokio::task::JoinHandle<()> {
    let web = app.service("web").unwrap().clone();
    tokio::spawn(async move {
        for _ in 0..count {
            let lease = web
                .add_lease(Duration::from_secs(60), "test", "producer")
                .await
                .unwrap()
                .unwrap();
            web.end_lease(lease.id, "producer").await.unwrap();
        }
    })
}

/// Opens an SSE stream and returns the ids of the first `take` events.
async fn sse_ids(api: SocketAddr, last_event_id: Option<i64>, take: usize) -> Vec<i64> {
    let stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let mut request = Request::get("/api/v1/events/stream?service=web")
        .header(header::HOST, api.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {READ}"));
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = sender
        .send_request(
            request
                .body(http_body_util::Empty::<hyper::body::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut text = String::new();
    let mut ids = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while ids.len() < take {
            let frame = body.frame().await.unwrap().unwrap();
            if let Some(data) = frame.data_ref() {
                text.push_str(std::str::from_utf8(data).unwrap());
            }
            while let Some(end) = text.find("\n\n") {
                let message: String = text.drain(..end + 2).collect();
                if let Some(id) = message.lines().find_map(|l| l.strip_prefix("id:")) {
                    ids.push(id.trim().parse().unwrap());
                }
            }
        }
    })
    .await
    .expect("the SSE stream stalled");
    // Dropping the connection mid-stream, as a client that goes away does.
    driver.abort();
    ids.truncate(take);
    ids
}

/// The ids of a page of `GET /api/v1/events`, in the order given.
fn event_ids(page: &serde_json::Value) -> Vec<i64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect()
}

fn assert_contiguous(ids: &[i64]) {
    for pair in ids.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap or a duplicate in {ids:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_after_the_last_event_id_without_gap_or_duplicate() {
    let dir = temp_dir("sse");
    let (app, _backend) = start(&dir, None).await;
    let api = app.api_addr();
    let first_id = app.store().last_event_id().unwrap() + 1;
    let producer = produce(&app, 150);

    let mut ids = sse_ids(api, Some(first_id - 1), 40).await;
    // Events keep coming while the client is away; it resumes from its last id.
    let more = sse_ids(api, ids.last().copied(), 60).await;
    ids.extend(more);
    let rest = sse_ids(api, ids.last().copied(), 100).await;
    ids.extend(rest);
    producer.await.unwrap();

    assert_eq!(ids[0], first_id);
    assert_contiguous(&ids);
    let stored: Vec<i64> = app
        .store()
        .events(first_id - 1, Some("web"), 1000)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .take(ids.len())
        .collect();
    assert_eq!(ids, stored);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscribes_and_resumes_without_gap_or_duplicate() {
    let dir = temp_dir("ws");
    let (app, _backend) = start(&dir, None).await;
    let url = format!("ws://{}/api/v1/ws?access_token={READ}", app.api_addr());
    let first_id = app.store().last_event_id().unwrap() + 1;
    let producer = produce(&app, 150);

    let mut ids: Vec<i64> = Vec::new();
    for (round, take) in [30, 70, 100].into_iter().enumerate() {
        let after = ids.last().copied().unwrap_or(first_id - 1);
        // Resume by a message on the socket, or (last round) in the URL.
        let by_url = round == 2;
        let url = if by_url {
            format!("{url}&after={after}&service=web")
        } else {
            url.clone()
        };
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        if !by_url {
            let subscribe = serde_json::json!({ "subscribe": ["web"], "after": after });
            socket
                .send(tokio_tungstenite::tungstenite::Message::text(
                    subscribe.to_string(),
                ))
                .await
                .unwrap();
        }
        let mut got = 0;
        let mut answered = false;
        tokio::time::timeout(DEADLINE, async {
            while got < take {
                let message = socket.next().await.unwrap().unwrap();
                let value: serde_json::Value =
                    serde_json::from_str(message.to_text().unwrap()).unwrap();
                // What comes before the answer to our subscription belongs to the default one,
                // which may start from the same id: it is told apart by its services.
                if value["type"] == "subscribed" {
                    answered =
                        value["after"] == after && value["services"] == serde_json::json!(["web"]);
                    continue;
                }
                if !answered {
                    continue;
                }
                assert_eq!(value["service"], "web", "{value}");
                ids.push(value["id"].as_i64().unwrap());
                got += 1;
            }
        })
        .await
        .expect("the WebSocket stalled");
        // Gone mid-stream without a goodbye.
        drop(socket);
    }
    producer.await.unwrap();
    assert_eq!(ids[0], first_id);
    assert_contiguous(&ids);

    // A bad message gets an answer that says what to send (after the greeting).
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let greeting = socket.next().await.unwrap().unwrap();
    assert!(greeting.to_text().unwrap().contains("\"subscribed\""));
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            "{\"subscribe\": 5}",
        ))
        .await
        .unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    let reply: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert_eq!(reply["type"], "error");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("send {\"subscribe\""),
        "{reply}"
    );

    let unauthorized =
        tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws", app.api_addr())).await;
    assert!(
        unauthorized.is_err(),
        "a WebSocket without a token was accepted"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_the_latest_events_and_after_an_id() {
    let dir = temp_dir("history");
    let (app, _backend) = start(&dir, None).await;
    produce(&app, 10).await.unwrap();
    // The first lease woke the service: let that wake finish, so no event comes in between.
    wait_state(app.service("web").unwrap(), State::Awake).await;
    let (_, latest, _) = call(
        &app,
        "GET",
        "/api/v1/events?service=web&limit=5",
        Some(READ),
        None,
    )
    .await;
    let ids = event_ids(&latest);
    assert_eq!(ids.len(), 5);
    assert_contiguous(&ids);
    assert_eq!(latest["last_id"].as_i64(), ids.last().copied());
    assert_eq!(*ids.last().unwrap(), app.store().last_event_id().unwrap());

    let (_, page, _) = call(
        &app,
        "GET",
        "/api/v1/events?after=0&limit=3",
        Some(READ),
        None,
    )
    .await;
    assert_eq!(event_ids(&page), [1, 2, 3]);
    assert_eq!(page["last_id"], 3);
    let (status, _, _) = call(&app, "GET", "/api/v1/events?service=nope", Some(READ), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.shutdown().await;
}

/// Runs the CLI against the gateway with a token in WAKEGATE_TOKEN.
async fn cli(app: &App, token: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(WAKEGATE)
        .args(args)
        .args(["--api", &app.api_addr().to_string()])
        .env("WAKEGATE_TOKEN", token)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_wakes_follows_and_sleeps_with_exit_codes_that_say_how_it_went() {
    let dir = temp_dir("cli");
    let (app, _backend) = start(&dir, None).await;

    let denied = cli(&app, READ, &["wake", "web"]).await;
    assert_eq!(denied.status.code(), Some(1));
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("403") && err.contains("Operate"), "{err}");

    let woken = cli(&app, OPERATE, &["wake", "web", "--wait"]).await;
    let out = String::from_utf8_lossy(&woken.stdout);
    assert!(
        woken.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&woken.stderr)
    );
    assert!(out.contains("wake requested by API token ops"), "{out}");
    assert!(
        out.lines().last().unwrap().contains("backend ready at"),
        "{out}"
    );
    assert_eq!(app.service("web").unwrap().status().state, State::Awake);

    let events = cli(
        &app,
        READ,
        &["events", "--service", "web", "--json", "--limit", "3"],
    )
    .await;
    assert!(events.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["state"], "awake");

    // --follow prints what happens next, as it happens.
    let mut follow = tokio::process::Command::new(WAKEGATE)
        .args([
            "events",
            "--follow",
            "--limit",
            "0",
            "--api",
            &app.api_addr().to_string(),
        ])
        .env("WAKEGATE_TOKEN", READ)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    let slept = cli(&app, OPERATE, &["sleep", "web", "--wait", "--json"]).await;
    assert!(
        slept.status.success(),
        "{}",
        String::from_utf8_lossy(&slept.stderr)
    );
    let last: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&slept.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["state"], "asleep");
    tokio::time::timeout(DEADLINE, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("events --follow ended");
            if line.contains("backend stopped") {
                return;
            }
        }
    })
    .await
    .expect("events --follow did not show the stop");
    follow.kill().await.unwrap();

    let missing = cli(&app, READ, &["status", "nope"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no service is named `nope`"));
    app.shutdown().await;
}
