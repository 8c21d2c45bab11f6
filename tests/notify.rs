//! Notifications through the durable outbox, against real HTTP receivers on loopback: a
//! webhook that fails for a while across a wakegate restart, Discord's rate limit, filters,
//! and an event the receiver refuses for good.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use wakegate::app::App;
use wakegate::event::{Event, Kind, State};

const SECRET: &str = "notify-test-secret-0123456789";

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    Ok,
    ServerError,
    NotFound,
    /// 429 the way Discord sends it: `Retry-After` in whole seconds and `retry_after` in the
    /// JSON body.
    RateLimited(u64),
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    answer: Reply,
}

impl Seen {
    fn key(&self) -> i64 {
        self.headers["x-wakegate-event-id"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Debug, Default)]
struct Log {
    /// Answers for the next requests, in order; then `otherwise`.
    script: VecDeque<Reply>,
    otherwise: Option<Reply>,
    requests: Vec<Seen>,
    /// Idempotency keys taken, in the order they were first accepted.
    accepted: Vec<i64>,
    /// How often each key was answered 2xx (a repeat is answered 200 but not taken again).
    acks: HashMap<i64, usize>,
}

/// A small HTTP receiver on 127.0.0.1:0 that deduplicates by the idempotency key.
#[derive(Clone)]
struct Receiver {
    log: Arc<Mutex<Log>>,
    changed: watch::Sender<usize>,
    addr: std::net::SocketAddr,
}

impl Receiver {
    async fn start(script: &[Reply], otherwise: Reply) -> Receiver {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            log: Arc::new(Mutex::new(Log {
                script: script.iter().copied().collect(),
                otherwise: Some(otherwise),
                ..Log::default()
            })),
            changed: watch::channel(0).0,
            addr: socket.local_addr().unwrap(),
        };
        let app = axum::Router::new()
            .fallback(hook)
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(socket, app).await.unwrap() });
        receiver
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set_otherwise(&self, reply: Reply) {
        self.log.lock().unwrap().otherwise = Some(reply);
    }

    /// Waits (without polling) until `done` holds for what was received.
    async fn wait_until(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let mut changed = self.changed.subscribe();
        let waited = tokio::time::timeout(
            DEADLINE,
            changed.wait_for(|_| done(&self.log.lock().unwrap())),
        )
        .await;
        if waited.is_err() {
            panic!(
                "the receiver never saw {what}: {:#?}",
                self.log.lock().unwrap()
            );
        }
    }

    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().requests.clone()
    }

    fn accepted(&self) -> Vec<i64> {
        self.log.lock().unwrap().accepted.clone()
    }
}

async fn hook(
    Extract(receiver): Extract<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = {
        let mut log = receiver.log.lock().unwrap();
        let answer = log
            .script
            .pop_front()
            .or(log.otherwise)
            .unwrap_or(Reply::Ok);
        let seen = Seen {
            at: Instant::now(),
            path: uri.to_string(),
            headers,
            body,
            answer,
        };
        if answer == Reply::Ok {
            let key = seen.key();
            let acks = log.acks.entry(key).or_insert(0);
            *acks += 1;
            if *acks == 1 {
                log.accepted.push(key);
            }
        }
        log.requests.push(seen);
        answer
    };
    receiver.changed.send_modify(|n| *n += 1);
    match answer {
        Reply::Ok => StatusCode::NO_CONTENT.into_response(),
        Reply::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, "down for maintenance").into_response(),
        Reply::NotFound => (
            StatusCode::NOT_FOUND,
            r#"{"message": "Unknown Webhook", "code": 10015}"#,
        )
            .into_response(),
        Reply::RateLimited(seconds) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", seconds.to_string())],
            format!(
                r#"{{"message": "You are being rate limited.", "retry_after": {seconds}.0, "global": false}}"#
            ),
        )
            .into_response(),
    }
}

/// A gateway with `exec` services (whose "servers" are listeners the test holds) and `notify`.
async fn gateway(
    dir: &std::path::Path,
    services: &[&str],
    notify: &str,
) -> (App, Vec<TcpListener>) {
    let mut config = common::gateway(dir);
    let mut backends = Vec::new();
    for name in services {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        config = config.service(
            svc(name)
                .exec_true(backend.local_addr().unwrap())
                .tcp(ANY_PORT),
        );
        backends.push(backend);
    }
    (config.raw(notify).start().await, backends)
}

/// Wakes a service and waits until it is awake.
async fn wake(app: &App, name: &str) {
    let service = app.service(name).unwrap();
    service.wake("the test").await.unwrap().unwrap();
    wait_state(service, State::Awake).await;
}

async fn sleep(app: &App, name: &str) {
    let service = app.service(name).unwrap();
    service.sleep("the test").await.unwrap().unwrap();
    wait_state(service, State::Asleep).await;
}

fn stored(app: &App) -> Vec<Event> {
    app.store().events(0, None, 10_000).unwrap()
}

/// The documented check a receiver makes: HMAC-SHA256 over "{timestamp}.{body}", compared
/// with the header, and a timestamp no older than five minutes.
fn verify(seen: &Seen) {
    let timestamp: u64 = seen.headers["x-wakegate-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(timestamp) <= 300,
        "stale timestamp {timestamp}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&seen.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        seen.headers["x-wakegate-signature"].to_str().unwrap(),
        format!("sha256={expected}")
    );
    // The key is the id of the event in the body.
    assert_eq!(seen.json()["id"].as_i64(), Some(seen.key()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_once_and_in_order_across_a_restart() {
    let dir = temp_dir("notify-restart");
    // Down at first, then up for two deliveries, then down again until after the restart.
    let receiver = Receiver::start(
        &[
            Reply::ServerError,
            Reply::ServerError,
            Reply::ServerError,
            Reply::Ok,
            Reply::Ok,
        ],
        Reply::ServerError,
    )
    .await;
    let notify = format!(
        r#"
[[notify]]
type = "webhook"
url = "{}"
secret = "{SECRET}"
retry_min = "50ms"
retry_max = "200ms"
"#,
        receiver.url("/hooks/wakegate")
    );

    let (app, _backends) = gateway(&dir, &["web"], &notify).await;
    wake(&app, "web").await;
    sleep(&app, "web").await;
    let first_run: Vec<i64> = stored(&app)
        .iter()
        .filter(|e| e.kind != Kind::Progress)
        .map(|e| e.id)
        .collect();
    assert!(first_run.len() >= 6, "{first_run:?}");
    // Two taken, and the third being retried: restart in the middle of it.
    receiver
        .wait_until("two deliveries and a failed retry after them", |log| {
            log.accepted.len() == 2 && log.requests.len() >= 6
        })
        .await;
    app.shutdown().await;
    assert_eq!(receiver.accepted(), first_run[..2]);

    receiver.set_otherwise(Reply::Ok);
    let (app, _backends) = gateway(&dir, &["web"], &notify).await;
    // Everything the first run recorded, and the second run's reconcile.
    let expected: Vec<i64> = stored(&app)
        .iter()
        .filter(|e| e.kind != Kind::Progress)
        .map(|e| e.id)
        .collect();
    assert!(expected.len() > first_run.len());
    let last = *expected.last().unwrap();
    receiver
        .wait_until("the last event", |log| log.accepted.contains(&last))
        .await;
    app.shutdown().await;

    let accepted = receiver.accepted();
    assert_eq!(accepted, expected, "every event once, in order");
    let requests = receiver.requests();
    for seen in &requests {
        verify(seen);
        assert_eq!(seen.path, "/hooks/wakegate");
        assert_eq!(seen.headers["content-type"], "application/json");
    }
    // In order: a key is never sent before the one before it was taken.
    let keys: Vec<i64> = requests.iter().map(Seen::key).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");
    let body = requests.last().unwrap().json();
    assert_eq!(body["service"], "web");
    assert_eq!(body["kind"], "transition");
    assert_eq!(body["state"], "asleep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_rate_limits_are_honoured_and_embeds_show_the_state() {
    let dir = temp_dir("notify-discord");
    let receiver = Receiver::start(&[Reply::RateLimited(1)], Reply::Ok).await;
    let notify = format!(
        r#"
[[notify]]
type = "discord"
url = "{}"
events = ["awake"]
retry_min = "50ms"
"#,
        receiver.url("/api/webhooks/123/token-part")
    );
    let (app, _backends) = gateway(&dir, &["web"], &notify).await;
    wake(&app, "web").await;
    receiver
        .wait_until("a delivery after the rate limit", |log| {
            log.accepted.len() == 1
        })
        .await;
    app.shutdown().await;

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].answer, Reply::RateLimited(1));
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, not after the 1 s Discord asked for"
    );
    assert_eq!(requests[1].key(), requests[0].key());
    assert_eq!(requests[1].path, "/api/webhooks/123/token-part");

    let message = requests[1].json();
    let embed = &message["embeds"][0];
    assert_eq!(embed["title"], "web is awake");
    assert_eq!(embed["color"], 0x2ecc71);
    assert!(
        embed["description"]
            .as_str()
            .unwrap()
            .starts_with("backend ready at"),
        "{embed}"
    );
    assert_eq!(embed["fields"][0]["name"], "address");
    assert!(embed["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(message["allowed_mentions"]["parse"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_pick_services_and_kinds() {
    let dir = temp_dir("notify-filters");
    let receiver = Receiver::start(&[], Reply::Ok).await;
    let notify = format!(
        r#"
[[notify]]
type = "webhook"
name = "web-only"
url = "{}"
secret = "{SECRET}"
services = ["web"]
events = ["awake", "lease"]
"#,
        receiver.url("/")
    );
    let (app, _backends) = gateway(&dir, &["web", "db"], &notify).await;
    wake(&app, "db").await;
    wake(&app, "web").await;
    let web = app.service("web").unwrap();
    let lease = web
        .add_lease(Duration::from_secs(3600), "raid night", "the test")
        .await
        .unwrap()
        .unwrap();
    assert!(web.end_lease(lease.id, "the test").await.unwrap());
    // The lease's end is the last event wanted; everything before it was looked at first.
    let events = stored(&app);
    let last = events
        .iter()
        .rev()
        .find(|e| e.service == "web" && e.kind == Kind::Lease)
        .unwrap()
        .id;
    receiver
        .wait_until("the end of the lease", |log| log.accepted.contains(&last))
        .await;
    app.shutdown().await;

    let expected: Vec<i64> = events
        .iter()
        .filter(|e| e.service == "web")
        .filter(|e| {
            e.kind == Kind::Lease || (e.kind == Kind::Transition && e.state == State::Awake)
        })
        .map(|e| e.id)
        .collect();
    assert_eq!(expected.len(), 3, "{events:#?}");
    assert_eq!(receiver.accepted(), expected);
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| r.json()["service"] == "web")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_refused_for_good_is_skipped() {
    let dir = temp_dir("notify-refused");
    let receiver = Receiver::start(&[Reply::NotFound], Reply::Ok).await;
    let notify = format!(
        r#"
[[notify]]
type = "discord"
url = "{}"
events = ["awake", "asleep"]
retry_min = "50ms"
"#,
        receiver.url("/api/webhooks/1/gone")
    );
    let (app, _backends) = gateway(&dir, &["web"], &notify).await;
    // The reconcile at start-up is the first `asleep`: it is the one refused.
    wake(&app, "web").await;
    sleep(&app, "web").await;
    let wanted: Vec<i64> = stored(&app)
        .iter()
        .filter(|e| e.kind == Kind::Transition && matches!(e.state, State::Awake | State::Asleep))
        .map(|e| e.id)
        .collect();
    assert_eq!(wanted.len(), 3);
    let last = wanted[2];
    receiver
        .wait_until("the last asleep", |log| log.accepted.contains(&last))
        .await;
    app.shutdown().await;
    let keys: Vec<i64> = receiver.requests().iter().map(Seen::key).collect();
    // Refused once, never retried; the next ones delivered.
    assert_eq!(keys, wanted);
    assert_eq!(receiver.accepted(), wanted[1..]);
}

#[test]
fn urls_and_secrets_are_never_printed() {
    let dir = temp_dir("notify-secret");
    let file = services_only()
        .service(svc("web").exec_true("127.0.0.1:8080").tcp("127.0.0.1:8081"))
        .raw(
            r#"[[notify]]
type = "discord"
url = "${WAKEGATE_TEST_DISCORD_URL}"
events = ["nope"]

[[notify]]
type = "webhook"
url = "ftp://hooks.example.com/literal-token"
secret = "${WAKEGATE_TEST_HOOK_SECRET}"
"#,
        )
        .write(&dir.join("wakegate.toml"));
    let out = std::process::Command::new(WAKEGATE)
        .args(["config", "check"])
        .arg(&file)
        .env(
            "WAKEGATE_TEST_DISCORD_URL",
            "https://discord.com/api/webhooks/1/env-token",
        )
        .env("WAKEGATE_TEST_HOOK_SECRET", "hook-secret-0123456789")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("`nope` is neither a state nor an event kind"),
        "{all}"
    );
    assert!(
        all.contains("`url` must start with https:// or http://"),
        "{all}"
    );
    for secret in ["env-token", "literal-token", "hook-secret"] {
        assert!(!all.contains(secret), "{secret} printed in:\n{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_target_holds_up_neither_another_nor_the_gateway() {
    let dir = temp_dir("notify-hanging");
    let receiver = Receiver::start(&[], Reply::Ok).await;
    // Accepts connections and never answers.
    let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_addr = hanging.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = hanging.accept().await {
            open.push(stream);
            let _ = accepted_tx.send(());
        }
    });
    let notify = format!(
        r#"
[[notify]]
type = "webhook"
name = "stuck"
url = "http://{hanging_addr}/hook"
secret = "{SECRET}"
timeout = "200ms"
retry_min = "50ms"

[[notify]]
type = "webhook"
name = "fine"
url = "{}"
secret = "{SECRET}"
"#,
        receiver.url("/hook")
    );
    let (app, _backends) = gateway(&dir, &["web"], &notify).await;
    wake(&app, "web").await;
    sleep(&app, "web").await;
    let last = stored(&app).last().unwrap().id;
    receiver
        .wait_until("the last event", |log| log.accepted.contains(&last))
        .await;
    // The stuck target timed out and tried again: more than one connection.
    for _ in 0..2 {
        tokio::time::timeout(DEADLINE, accepted.recv())
            .await
            .expect("the stuck target retries")
            .unwrap();
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_ends_in_failed_and_that_is_notified() {
    let dir = temp_dir("notify-crashloop");
    let receiver = Receiver::start(&[], Reply::Ok).await;
    let backend = free_addr();
    // An always-on server that comes up and dies half a second later, every time.
    let command = [
        "sh".to_string(),
        "-c".to_string(),
        format!("'{WAKEGATE}' demo-backend --echo --listen {backend} & sleep 0.5; kill $!; exit 1"),
    ];
    let notify = format!(
        "[[notify]]\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"failed\"]\n",
        receiver.url("/ops")
    );
    let app = common::gateway(&dir)
        .service(
            svc("flappy")
                .set("always_on", true)
                .set("max_restarts", 1)
                .process(&command, backend),
        )
        .raw(&notify)
        .start()
        .await;
    receiver
        .wait_until("the failed event", |log| !log.accepted.is_empty())
        .await;
    let sent = receiver.requests()[0].json();
    assert_eq!(sent["service"], "flappy");
    assert_eq!(sent["state"], "failed");
    let reason = sent["reason"].as_str().unwrap();
    assert!(reason.contains("restarted 1 time within 1h"), "{reason}");
    assert_eq!(app.service("flappy").unwrap().status().state, State::Failed);
    app.shutdown().await;
}
