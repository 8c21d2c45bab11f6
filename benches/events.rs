//! The event fan-out benchmark: 1,000 WebSocket subscribers on one gateway, then a burst of
//! 10,000 events made through the API as fast as it takes them.
//!
//! Every subscriber must get every event of the burst exactly once and in id order (a
//! `lagged` notice is allowed: the gateway then goes on from its history by itself). Printed:
//! what was produced and delivered, losses and duplicates (both must be 0), lagged notices,
//! the delivery latency (receive time minus the event's `time`), the burst's rate next to the
//! same burst made before anyone subscribed, and the gateway's memory before the subscribers
//! connect, with all of them connected, at the end, and once they have left.
//!
//! The gateway is the release binary, run as its own process with one `exec` service whose
//! "server" is a listener this bench holds. The events are keep-awake leases taken and ended
//! by a few concurrent HTTP clients: one event each. Subscribers, producers and the gateway
//! share the machine, so on few cores the figures are those of the whole system, the
//! subscribers' own parsing included. `bench/run` runs this file after the TCP benchmark;
//! `cargo bench --bench events` runs it alone.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod support;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use support::{Proc, TempDir, cpu_ticks, progress as progress_line};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How many WebSocket subscribers are connected during the burst.
const SUBSCRIBERS: usize = 1_000;
/// How many of them connect at once: more would overflow the API's accept backlog and
/// measure SYN retries instead.
const CONNECTING_AT_ONCE: usize = 50;
/// Each subscriber's WebSocket read buffer (see `greeted`).
const SUBSCRIBER_READ_BUFFER: usize = 16 * 1024;
/// The burst: this many events, each lease making two (taken, ended).
const EVENTS: usize = 10_000;
/// The goal with [`SUBSCRIBERS`] subscribers: events/s every subscriber gets, and the
/// p99 of their delivery.
const EVENTS_TARGET: f64 = 10_000.0;
const P99_TARGET_MS: f64 = 50.0;
/// Concurrent HTTP clients (one keep-alive connection each) that make the burst.
const PRODUCERS: usize = 8;
/// The one service, and the operate token the producers and subscribers use.
const SERVICE: &str = "fanout";
const TOKEN: &str = "bench-operate-token-0123456789";

/// From the burst's first request, the time every subscriber has to get all of it.
const DELIVERY_LIMIT: Duration = Duration::from_secs(120);
/// All subscribers connected and greeted within this.
const CONNECT_LIMIT: Duration = Duration::from_secs(60);
/// Every single wait for the gateway (a request, a state, a port) is bounded by this.
const PATIENCE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
/// How often progress is printed during the burst.
const MONITOR_EVERY: Duration = Duration::from_secs(5);
/// Open files each process needs: a socket per subscriber, plus room for everything else.
const FILES_NEEDED: u64 = SUBSCRIBERS as u64 + 1024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn main() -> anyhow::Result<()> {
    // Before anything is spawned: the gateway inherits the limit.
    let files = raise_file_limit(FILES_NEEDED)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let figures = runtime.block_on(run(files))?;
    print!("{}", figures.table());
    support::rows::record(&[figures.row()])?;
    let problems = figures.problems();
    if !problems.is_empty() {
        bail!("the event fan-out failed: {}", problems.join("; "));
    }
    Ok(())
}

/// Raises the soft limit on open files to `need` when it is lower; fails if the hard limit
/// does not allow it. Returns the limit in force.
fn raise_file_limit(need: u64) -> anyhow::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= need {
        return Ok(current);
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    ensure!(
        hard >= need,
        "this bench needs {need} open files per process but the hard limit is {hard}; \
         raise it (ulimit -Hn, or LimitNOFILE= in systemd) and run again"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(need),
            maximum: limit.maximum,
        },
    )
    .with_context(|| format!("cannot raise the open-files limit from {current} to {need}"))?;
    Ok(need)
}

async fn run(files: u64) -> anyhow::Result<Figures> {
    // Declared first so it is removed last, after the gateway has been stopped.
    let dir = TempDir::new("wakegate-events-bench")?;
    // The service's "server": woken services find it listening, so wakes succeed at once.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a backend")?;
    let mut gateway = Gateway::start(&dir.0, backend.local_addr()?).await?;
    let pid = gateway.proc.pid();
    let api = gateway.api;

    // Awake before anything is measured: the burst is then made of lease events only.
    let mut http = Http::connect(api).await?;
    let warmup = http.take_lease("warm-up").await?;
    gateway.wait_state(&mut http, "awake").await?;
    http.end_lease(warmup).await?;

    // The reference: the same burst with nobody subscribed.
    let alone = Arc::new(Progress {
        leases: AtomicUsize::new(0),
        seen: Vec::new(),
    });
    let alone_started = Instant::now();
    let (_, alone_complete) =
        produce(api, tokio::time::Instant::now() + DELIVERY_LIMIT, &alone).await?;
    ensure!(
        alone_complete,
        "{EVENTS} events without subscribers took over {} s",
        DELIVERY_LIMIT.as_secs()
    );
    let burst_alone = alone_started.elapsed();
    progress_line(&format!(
        "{EVENTS} events without subscribers in {:.2} s",
        burst_alone.as_secs_f64()
    ));
    let rss_before = Memory::of(pid)?;
    progress_line(&format!(
        "gateway awake, {:.1} MiB RSS; connecting {SUBSCRIBERS} subscribers",
        rss_before.rss_mib
    ));

    // 1. The subscribers, each greeted with its `subscribed` frame.
    let connect_started = Instant::now();
    let sockets = connect_subscribers(api).await?;
    let connect_time = connect_started.elapsed();
    let before = http.last_event_id().await?;
    if let Some(after) = sockets
        .iter()
        .map(|(_, after)| *after)
        .find(|&a| a != before)
    {
        bail!(
            "a subscriber was told it starts after event {after}, but the last event is {before}: \
             something made events while they connected"
        );
    }
    // A moment for the gateway to settle (buffers, allocator) before its memory is read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.proc.check_running()?;
    let rss_connected = Memory::of(pid)?;
    progress_line(&format!(
        "{SUBSCRIBERS} subscribers in {:.2} s, {:.1} MiB RSS; the burst starts after event {before}",
        connect_time.as_secs_f64(),
        rss_connected.rss_mib
    ));

    // 2. The burst, with every subscriber reading as it goes.
    let cpu_start = [cpu_ticks(pid)?, cpu_ticks(std::process::id())?];
    let (target_tx, target) = watch::channel(i64::MAX);
    let progress = Arc::new(Progress {
        leases: AtomicUsize::new(0),
        seen: (0..SUBSCRIBERS).map(|_| AtomicI64::new(before)).collect(),
    });
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + DELIVERY_LIMIT);
    let mut subscribers = JoinSet::new();
    for (i, (socket, _)) in sockets.into_iter().enumerate() {
        let progress = progress.clone();
        subscribers.spawn(consume(
            socket,
            before,
            target.clone(),
            deadline,
            progress,
            i,
        ));
    }
    let monitor = tokio::spawn(monitor(progress.clone(), before, started, pid));
    let (produced_leases, burst_complete) = produce(api, deadline, &progress).await?;
    let burst = started.elapsed();
    let last = http.last_event_id().await?;
    // Known only now: the id each subscriber reads up to.
    target_tx.send_replace(last);
    let expected = stored_ids(&mut http, before, last).await?;
    progress_line(&format!(
        "burst{}: {} events (ids {}..={last}) in {:.2} s; waiting for delivery",
        if burst_complete { "" } else { " CUT SHORT" },
        expected.len(),
        before + 1,
        burst.as_secs_f64()
    ));

    let mut tallies = Vec::with_capacity(SUBSCRIBERS);
    let mut sockets = Vec::with_capacity(SUBSCRIBERS);
    while let Some(done) = subscribers.join_next().await {
        let (tally, socket) = done.context("a subscriber panicked")?;
        tallies.push(tally);
        sockets.push(socket);
    }
    let delivery = tallies
        .iter()
        .filter_map(|t| t.done_at)
        .max()
        .map(|at| at - started);
    monitor.abort();
    let seconds = |ticks: u64| ticks as f64 / rustix::param::clock_ticks_per_second() as f64;
    let cpu = [
        seconds(cpu_ticks(pid)? - cpu_start[0]),
        seconds(cpu_ticks(std::process::id())? - cpu_start[1]),
    ];
    gateway.proc.check_running()?;
    let rss_end = Memory::of(pid)?;

    // 3. Memory once every subscriber has gone.
    drop(sockets);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_gone = Memory::of(pid)?;
    let log_problems = gateway.proc.log_problems();
    drop(gateway);

    Ok(Figures {
        setup: format!("{}, open files limit {files}", support::machine()),
        connect_time,
        before,
        last,
        expected: expected.len() as u64,
        contiguous: expected.iter().copied().eq(before + 1..=last),
        ids: expected,
        produced_leases,
        burst_complete,
        burst,
        burst_alone,
        delivery,
        cpu,
        tallies,
        memory: [rss_before, rss_connected, rss_end, rss_gone],
        log_problems,
    })
}

// ---------------------------------------------------------------------------------------------
// The subscribers.

/// Opens [`SUBSCRIBERS`] WebSockets, [`CONNECTING_AT_ONCE`] at a time; each with the id its
/// feed starts after, from its `subscribed` frame.
async fn connect_subscribers(api: SocketAddr) -> anyhow::Result<Vec<(Socket, i64)>> {
    let url = format!("ws://{api}/api/v1/ws?access_token={TOKEN}");
    let gate = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let mut connecting = JoinSet::new();
    for _ in 0..SUBSCRIBERS {
        let (url, gate) = (url.clone(), gate.clone());
        connecting.spawn(async move {
            let _turn = gate.acquire_owned().await?;
            tokio::time::timeout(PATIENCE, greeted(&url))
                .await
                .context("a subscriber got no `subscribed` frame in time")?
        });
    }
    let all = async {
        let mut sockets = Vec::with_capacity(SUBSCRIBERS);
        while let Some(socket) = connecting.join_next().await {
            sockets.push(socket.context("a subscriber panicked")??);
        }
        anyhow::Ok(sockets)
    };
    tokio::time::timeout(CONNECT_LIMIT, all)
        .await
        .with_context(|| {
            format!(
                "{SUBSCRIBERS} subscribers did not connect within {} s",
                CONNECT_LIMIT.as_secs()
            )
        })?
}

/// One WebSocket, once its `subscribed` frame has come.
async fn greeted(url: &str) -> anyhow::Result<(Socket, i64)> {
    // tungstenite zeroes up to its whole read buffer (128 KiB by default) before each read:
    // a smaller one keeps the subscribers' own cost, on the CPUs they share with the
    // gateway, down to what reading frames of a few hundred bytes needs.
    let config = WebSocketConfig::default().read_buffer_size(SUBSCRIBER_READ_BUFFER);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .context("cannot open a WebSocket to the API")?;
    loop {
        let message = socket
            .next()
            .await
            .context("the WebSocket closed before its `subscribed` frame")?
            .context("the WebSocket failed before its `subscribed` frame")?;
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Frame = serde_json::from_str(&text)
            .with_context(|| format!("a frame that is not JSON: {text}"))?;
        ensure!(
            frame.frame_type.as_deref() == Some("subscribed"),
            "the first frame is not `subscribed`: {text}"
        );
        let after = frame
            .after
            .with_context(|| format!("a `subscribed` frame without `after`: {text}"))?;
        return Ok((socket, after));
    }
}

/// The fields of a frame this bench reads; events have no `type`.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    frame_type: Option<Cow<'a, str>>,
    id: Option<i64>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    after: Option<i64>,
}

/// What one subscriber saw during the burst.
#[derive(Default)]
struct Tally {
    /// Events after the burst's start, each with a higher id than the one before.
    in_order: u64,
    /// Events with an id not above the last one seen (or than the burst's start):
    /// duplicates or out of order.
    disorder: u64,
    lagged: u64,
    /// Frames that are neither events nor `lagged` notices (`error` frames, say), and events
    /// without a readable `time`.
    other: u64,
    /// The last id seen, or the last one before the burst.
    last: i64,
    /// Receive time minus the event's time, in microseconds, one per in-order event.
    latencies_us: Vec<u32>,
    /// When it had every event of the burst.
    done_at: Option<Instant>,
    /// Why it stopped before that, if it did.
    failure: Option<String>,
}

/// Reads events until the last one of the burst (`target`, known once the burst is made) or
/// the deadline; hands the socket back, still open.
async fn consume(
    mut socket: Socket,
    before: i64,
    mut target: watch::Receiver<i64>,
    deadline: tokio::time::Instant,
    progress: Arc<Progress>,
    index: usize,
) -> (Tally, Socket) {
    let mut tally = Tally {
        last: before,
        latencies_us: Vec::with_capacity(EVENTS),
        ..Tally::default()
    };
    let reading = async {
        loop {
            if tally.last >= *target.borrow_and_update() {
                tally.done_at = Some(Instant::now());
                return;
            }
            let message = tokio::select! {
                message = socket.next() => message,
                // The sender lives until every subscriber is done.
                _ = target.changed() => continue,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    tally.frame(&text);
                    progress.seen[index].store(tally.last, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tally.failure = Some(format!("the WebSocket failed: {e}"));
                    return;
                }
                None => {
                    tally.failure = Some("the gateway closed the WebSocket".into());
                    return;
                }
            }
        }
    };
    if tokio::time::timeout_at(deadline, reading).await.is_err() {
        tally.failure = Some(format!(
            "not every event came within {} s",
            DELIVERY_LIMIT.as_secs()
        ));
    }
    (tally, socket)
}

impl Tally {
    fn frame(&mut self, text: &str) {
        let received = SystemTime::now();
        let Ok(frame) = serde_json::from_str::<Frame>(text) else {
            self.other += 1;
            return;
        };
        match (frame.frame_type.as_deref(), frame.id) {
            (None, Some(id)) => {
                if id <= self.last {
                    self.disorder += 1;
                    return;
                }
                self.last = id;
                self.in_order += 1;
                match frame.time.and_then(|t| humantime::parse_rfc3339(&t).ok()) {
                    Some(sent) => {
                        // The event's time is truncated to the millisecond: never after now.
                        let latency = received.duration_since(sent).unwrap_or_default();
                        self.latencies_us
                            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                    }
                    None => self.other += 1,
                }
            }
            (Some("lagged"), _) => self.lagged += 1,
            _ => self.other += 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The burst.

/// Takes and ends [`EVENTS`] / 2 leases with [`PRODUCERS`] concurrent clients, counting
/// them in `progress`; returns how many were, and whether that was all of them by the deadline.
async fn produce(
    api: SocketAddr,
    deadline: tokio::time::Instant,
    progress: &Arc<Progress>,
) -> anyhow::Result<(usize, bool)> {
    let pairs = EVENTS / 2;
    let next = Arc::new(AtomicUsize::new(0));
    let mut producers = JoinSet::new();
    for _ in 0..PRODUCERS {
        let (next, progress) = (next.clone(), progress.clone());
        producers.spawn(async move {
            let mut http = Http::connect(api).await?;
            while next.fetch_add(1, Ordering::Relaxed) < pairs {
                let id = http.take_lease("fan-out bench").await?;
                http.end_lease(id).await?;
                progress.leases.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let all = async {
        while let Some(made) = producers.join_next().await {
            made.context("a producer panicked")??;
        }
        anyhow::Ok(())
    };
    // Producers still running at the deadline are stopped when the set is dropped.
    let complete = match tokio::time::timeout_at(deadline, all).await {
        Ok(all) => all.map(|()| true)?,
        Err(_) => false,
    };
    Ok((progress.leases.load(Ordering::Relaxed), complete))
}

/// How far the burst has come: leases made, and the last id each subscriber has.
struct Progress {
    leases: AtomicUsize,
    seen: Vec<AtomicI64>,
}

/// Prints, every few seconds, how far the producers and the subscribers are.
async fn monitor(progress: Arc<Progress>, before: i64, started: Instant, pid: u32) {
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + MONITOR_EVERY, MONITOR_EVERY);
    loop {
        tick.tick().await;
        let mut seen: Vec<i64> = progress
            .seen
            .iter()
            .map(|s| s.load(Ordering::Relaxed) - before)
            .collect();
        seen.sort_unstable();
        let rss = Memory::of(pid).map_or(f64::NAN, |m| m.rss_mib);
        progress_line(&format!(
            "{:>5.1} s: {} events made; subscribers have {} (slowest) .. {} (median) .. {} (fastest); \
             gateway {rss:.0} MiB",
            started.elapsed().as_secs_f64(),
            2 * progress.leases.load(Ordering::Relaxed),
            seen[0],
            seen[seen.len() / 2],
            seen[seen.len() - 1],
        ));
    }
}

/// The ids the gateway stored after `before`, up to `last`, from its history.
async fn stored_ids(http: &mut Http, before: i64, last: i64) -> anyhow::Result<Vec<i64>> {
    let mut ids = Vec::new();
    let mut after = before;
    while after < last {
        let page = http
            .get(&format!("/api/v1/events?after={after}&limit=1000"))
            .await?;
        let events = page["events"]
            .as_array()
            .context("the history has no `events`")?;
        ensure!(
            !events.is_empty(),
            "the history ends at {after}, not {last}"
        );
        for event in events {
            let id = event["id"].as_i64().context("an event without id")?;
            if id <= last {
                ids.push(id);
            }
            after = id;
        }
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// The gateway.

/// A running `wakegate run` with the API, one token and one `exec` service.
struct Gateway {
    proc: Proc,
    api: SocketAddr,
}

impl Gateway {
    async fn start(dir: &Path, backend: SocketAddr) -> anyhow::Result<Gateway> {
        let [api, listen] = free_addrs()?;
        let data_dir = dir.join("data");
        let config = format!(
            "[gateway]\ndata_dir = {}\napi = \"{api}\"\nshutdown_grace = \"1s\"\n\
             \n[[gateway.token]]\nname = \"bench\"\nsecret = \"{TOKEN}\"\nrole = \"operate\"\n\
             \n[[service]]\nname = \"{SERVICE}\"\nidle_timeout = \"1h\"\n\
             [service.backend]\ntype = \"exec\"\nstart = \"true\"\nstop = \"true\"\n\
             address = \"{backend}\"\n\
             [[service.listen]]\ntype = \"tcp\"\nbind = \"{listen}\"\n",
            toml::Value::from(data_dir.to_string_lossy().into_owned())
        );
        let path = dir.join("wakegate.toml");
        std::fs::write(&path, config)?;
        let mut proc = Proc::spawn(
            "wakegate",
            Command::new(support::wakegate())
                .arg("run")
                .arg("--config")
                .arg(&path)
                // Fixed, so a caller's RUST_LOG=debug cannot change the figures.
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1"),
            dir,
        )?;
        let deadline = Instant::now() + PATIENCE;
        loop {
            proc.check_running()?;
            if TcpStream::connect(api).await.is_ok() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "wakegate does not serve its API on {api}"
            );
            tokio::time::sleep(POLL).await;
        }
        Ok(Gateway { proc, api })
    }

    async fn wait_state(&mut self, http: &mut Http, want: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.proc.check_running()?;
            let view = http.get(&format!("/api/v1/services/{SERVICE}")).await?;
            if view["state"] == want {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "`{SERVICE}` is still {}, not {want}",
                view["state"]
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// One keep-alive HTTP/1.1 connection to the API, with the token.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    api: SocketAddr,
}

impl Http {
    async fn connect(api: SocketAddr) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(api)
            .await
            .with_context(|| format!("cannot connect to the API on {api}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("no HTTP with the API")?;
        // Ends when the sender is dropped.
        tokio::spawn(connection);
        Ok(Http { sender, api })
    }

    /// A request; the status and the JSON body (null when empty).
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let mut request = hyper::Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", self.api.to_string())
            .header("authorization", format!("Bearer {TOKEN}"));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request.body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(PATIENCE, exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within {PATIENCE:?}"))?
            .with_context(|| format!("{method} {path} failed"))?;
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{method} {path}: {status} with a body that is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })?
        };
        Ok((status, value))
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.call(Method::GET, path, None).await?;
        ensure!(status == StatusCode::OK, "GET {path}: {status} {body}");
        Ok(body)
    }

    async fn take_lease(&mut self, reason: &str) -> anyhow::Result<i64> {
        let path = format!("/api/v1/services/{SERVICE}/leases");
        let body = serde_json::json!({ "duration": "1h", "reason": reason });
        let (status, lease) = self.call(Method::POST, &path, Some(body)).await?;
        ensure!(
            status == StatusCode::CREATED,
            "POST {path}: {status} {lease}"
        );
        lease["id"]
            .as_i64()
            .with_context(|| format!("POST {path}: a lease without id: {lease}"))
    }

    async fn end_lease(&mut self, id: i64) -> anyhow::Result<()> {
        let path = format!("/api/v1/services/{SERVICE}/leases/{id}");
        let (status, body) = self.call(Method::DELETE, &path, None).await?;
        ensure!(
            status == StatusCode::NO_CONTENT,
            "DELETE {path}: {status} {body}"
        );
        Ok(())
    }

    async fn last_event_id(&mut self) -> anyhow::Result<i64> {
        let page = self.get("/api/v1/events?limit=1").await?;
        page["last_id"]
            .as_i64()
            .with_context(|| format!("the history has no `last_id`: {page}"))
    }
}

/// Resident memory of a process, now and at its peak, from /proc/PID/status.
#[derive(Clone, Copy)]
struct Memory {
    rss_mib: f64,
    peak_mib: f64,
}

impl Memory {
    fn of(pid: u32) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let mib = |key: &str| -> anyhow::Result<f64> {
            let kib: f64 = status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .with_context(|| format!("no {key} in /proc/{pid}/status"))?
                .parse()?;
            Ok(kib / 1024.0)
        };
        Ok(Memory {
            rss_mib: mib("VmRSS:")?,
            peak_mib: mib("VmHWM:")?,
        })
    }
}

/// `N` distinct free addresses on 127.0.0.1.
fn free_addrs<const N: usize>() -> anyhow::Result<[SocketAddr; N]> {
    Ok(support::free_ports::<N>()?.map(support::loopback))
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Figures {
    setup: String,
    connect_time: Duration,
    /// The last event before the burst, and the last one of it.
    before: i64,
    last: i64,
    /// Events stored in between, and whether their ids follow each other.
    expected: u64,
    contiguous: bool,
    /// Those ids.
    ids: Vec<i64>,
    produced_leases: usize,
    /// Whether the burst was made before the deadline.
    burst_complete: bool,
    /// From the first request of the burst to the answer to the last.
    burst: Duration,
    /// The same burst before any subscriber connected.
    burst_alone: Duration,
    /// From the first request of the burst until every subscriber had all of it.
    delivery: Option<Duration>,
    /// CPU time from the burst's start to the end of delivery, in seconds: the gateway's, and
    /// this process's (subscribers and producers).
    cpu: [f64; 2],
    tallies: Vec<Tally>,
    /// Before the subscribers, with all connected, at the end, after they left.
    memory: [Memory; 4],
    log_problems: Vec<String>,
}

impl Figures {
    /// The row of `bench/run`'s summary: events every subscriber got, per second, against the
    /// same burst with no subscriber.
    fn row(&self) -> support::rows::Row {
        let p99_ms = self.latency_ms()(0.99);
        // Until every subscriber had every event: the burst, or the delivery if it was longer.
        let rate = match self.delivery {
            Some(d) if self.losses() == 0 => self.expected as f64 / d.max(self.burst).as_secs_f64(),
            _ => 0.0,
        };
        support::rows::Row {
            key: "events",
            what: format!(
                "events/s, each to all of {} WebSocket subscribers; p99 {p99_ms:.0} ms",
                self.tallies.len()
            ),
            reference: "none",
            reference_value: EVENTS as f64 / self.burst_alone.as_secs_f64(),
            value: rate,
            better: support::rows::Better::Higher,
            decimals: 0,
            goal: format!("≥ {EVENTS_TARGET} ev/s, p99 < {P99_TARGET_MS} ms"),
            met: Some(
                rate >= EVENTS_TARGET && p99_ms < P99_TARGET_MS && self.problems().is_empty(),
            ),
        }
    }

    fn sum(&self, field: impl Fn(&Tally) -> u64) -> u64 {
        self.tallies.iter().map(field).sum()
    }

    fn delivered(&self) -> u64 {
        self.sum(|t| t.in_order)
    }

    /// Events of the burst some subscriber did not get (summed over subscribers).
    fn losses(&self) -> u64 {
        self.sum(|t| self.expected.saturating_sub(t.in_order))
    }

    /// Of the losses, those after the last event a subscriber got: not delivered by the
    /// deadline rather than skipped.
    fn undelivered(&self) -> u64 {
        self.sum(|t| (self.ids.len() - self.ids.partition_point(|&id| id <= t.last)) as u64)
    }

    fn disorder(&self) -> u64 {
        self.sum(|t| t.disorder)
    }

    /// Everything that makes this run a failure.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.burst_complete && self.expected != EVENTS as u64 {
            problems.push(format!("{} events were made, not {EVENTS}", self.expected));
        }
        if !self.burst_complete {
            problems.push(format!(
                "the API took only {} of {EVENTS} events within {} s",
                self.expected,
                DELIVERY_LIMIT.as_secs()
            ));
        }
        if self.losses() > 0 {
            problems.push(format!(
                "{} events were lost ({} skipped, {} not delivered by the deadline)",
                self.losses(),
                self.losses().saturating_sub(self.undelivered()),
                self.undelivered()
            ));
        }
        if self.disorder() > 0 {
            problems.push(format!(
                "{} duplicates or events out of order",
                self.disorder()
            ));
        }
        let other = self.sum(|t| t.other);
        if other > 0 {
            problems.push(format!(
                "{other} frames that are neither events with a time nor lagged notices"
            ));
        }
        if self.delivered() > self.expected * self.tallies.len() as u64 {
            problems.push("more events were delivered than made".into());
        }
        let failed: Vec<&str> = self
            .tallies
            .iter()
            .filter_map(|t| t.failure.as_deref())
            .collect();
        if let Some(first) = failed.first() {
            problems.push(format!("{} subscribers failed ({first})", failed.len()));
        }
        problems
    }

    /// The delivery latency at a quantile (0.99: the p99), in ms, over every subscriber's
    /// in-order events; NaN without any.
    fn latency_ms(&self) -> impl Fn(f64) -> f64 + use<> {
        let mut latencies: Vec<u32> = self
            .tallies
            .iter()
            .flat_map(|t| t.latencies_us.iter().copied())
            .collect();
        latencies.sort_unstable();
        move |q: f64| -> f64 {
            let Some(last) = latencies.len().checked_sub(1) else {
                return f64::NAN;
            };
            f64::from(latencies[((last as f64) * q).round() as usize]) / 1e3
        }
    }

    fn table(&self) -> String {
        let at = self.latency_ms();
        let lagged = self.sum(|t| t.lagged);
        let lagging = self.tallies.iter().filter(|t| t.lagged > 0).count();
        let subscribers = self.tallies.len() as u64;
        let row = |label: &str, value: String, note: String| {
            format!("{}\n", format!("{label:<30}{value:<14}{note}").trim_end())
        };
        let target = |ok: bool| if ok { "" } else { "  FAILED" };
        let [before, connected, end, gone] = self.memory;

        let mut out = format!(
            "\nwakegate event fan-out benchmark, loopback: {}\n\n",
            self.setup
        );
        out += &row(
            "subscribers (WebSocket)",
            subscribers.to_string(),
            format!("connected in {:.2} s", self.connect_time.as_secs_f64()),
        );
        out += &row(
            "events produced",
            self.expected.to_string(),
            format!(
                "ids {}..={}{}; {} leases taken and ended by {PRODUCERS} HTTP clients",
                self.before + 1,
                self.last,
                if self.contiguous { "" } else { " (with gaps)" },
                self.produced_leases
            ),
        );
        out += &row(
            "burst duration (s)",
            format!("{:.2}", self.burst.as_secs_f64()),
            format!(
                "{:.0} events/s through the API{}",
                self.expected as f64 / self.burst.as_secs_f64(),
                target(self.burst_complete)
            ),
        );
        out += &row(
            "  without subscribers (s)",
            format!("{:.2}", self.burst_alone.as_secs_f64()),
            format!(
                "{:.0} events/s: the same burst before anyone subscribed",
                EVENTS as f64 / self.burst_alone.as_secs_f64()
            ),
        );
        out += &row(
            "events delivered",
            self.delivered().to_string(),
            format!(
                "of {} ({subscribers} × {}){}",
                self.expected * subscribers,
                self.expected,
                target(self.delivered() == self.expected * subscribers)
            ),
        );
        out += &row(
            "delivery done (s)",
            self.delivery
                .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64())),
            match self.delivery {
                Some(d) if self.tallies.iter().all(|t| t.done_at.is_some()) => format!(
                    "after the burst's start: {:.0} deliveries/s",
                    self.delivered() as f64 / d.as_secs_f64(),
                ),
                _ => format!("NOT ALL within {} s", DELIVERY_LIMIT.as_secs()),
            },
        );
        out += &row(
            "CPU in that time (s)",
            format!("{:.1}", self.cpu[0]),
            format!(
                "gateway; {:.1} s for the subscribers and producers (this process)",
                self.cpu[1]
            ),
        );
        out += &row(
            "losses",
            self.losses().to_string(),
            if self.undelivered() > 0 {
                format!(
                    "(target 0)  FAILED: {} of them not delivered within {} s",
                    self.undelivered(),
                    DELIVERY_LIMIT.as_secs()
                )
            } else {
                format!("(target 0){}", target(self.losses() == 0))
            },
        );
        out += &row(
            "duplicates / out of order",
            self.disorder().to_string(),
            format!("(target 0){}", target(self.disorder() == 0)),
        );
        out += &row(
            "lagged notices",
            lagged.to_string(),
            format!("on {lagging} of {subscribers} subscribers"),
        );
        out += &row(
            "delivery latency (ms)",
            format!("p50 {:.1}", at(0.5)),
            format!("p99 {:.1} .. max {:.1}", at(0.99), at(1.0)),
        );
        out += &row(
            "gateway RSS (MiB)",
            format!("{:.1}", before.rss_mib),
            "before the subscribers".into(),
        );
        out += &row(
            "",
            format!("{:.1}", connected.rss_mib),
            format!("{subscribers} connected"),
        );
        out += &row(
            "",
            format!("{:.1}", end.rss_mib),
            format!(
                "at the end, still connected (peak {:.1} since it started)",
                end.peak_mib
            ),
        );
        out += &row(
            "",
            format!("{:.1}", gone.rss_mib),
            "1 s after they disconnected".into(),
        );
        if !self.log_problems.is_empty() {
            out += &format!(
                "\nthe gateway logged {} warnings or errors; the first:\n  {}\n",
                self.log_problems.len(),
                self.log_problems[0]
            );
        }
        out += &format!(
            "\nburst: {PRODUCERS} keep-alive HTTP clients take and end 1 h leases on one awake service, \
             one event each, as fast as the API answers.\n\
             delivered: events after the burst's start, each with a higher id than the one before, \
             summed over subscribers;\n\
             losses: events of the burst a subscriber never got; lagged: notices that a subscriber \
             fell behind the live buffer.\n\
             latency: receive time at the subscriber minus the event's `time`, which is truncated to \
             the millisecond (figures are 0..1 ms high)\n\
             and taken before the event is stored; includes the time subscribers wait for a CPU \
             shared with the gateway and the producers.\n\
             RSS: VmRSS of the wakegate process; peak is its VmHWM.\n"
        );
        let problems = self.problems();
        if problems.is_empty() {
            out += "\nresult: every subscriber got every event of the burst once, in order.\n";
        } else {
            out += &format!("\nresult: FAILED: {}\n", problems.join("; "));
        }
        out
    }
}
