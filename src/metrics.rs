//! Counters of each service, kept in atomics the data path can bump without a lock, and their
//! Prometheus text exposition with the process's own metrics.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::event::{SleepMode, State, Trigger};

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Wake,
    Stop,
    Crash,
}

impl Failure {
    const ALL: [Failure; 3] = [Failure::Wake, Failure::Stop, Failure::Crash];

    fn as_str(self) -> &'static str {
        match self {
            Failure::Wake => "wake",
            Failure::Stop => "stop",
            Failure::Crash => "crash",
        }
    }
}

/// Upper bounds (seconds) of the wake-duration histogram: from a frozen process resumed in a
/// few milliseconds to a VM started cold.
const WAKE_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The wake-duration histogram of one sleep mode (what the wakes undid).
#[derive(Debug, Default)]
struct WakeHistogram {
    buckets: [AtomicU64; WAKE_BUCKETS.len()],
    count: AtomicU64,
    micros: AtomicU64,
}

/// One service's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    /// Bytes from clients to the backend.
    pub bytes_in: AtomicU64,
    /// Bytes from the backend to clients.
    pub bytes_out: AtomicU64,
    pub refused: AtomicU64,
    /// Server-list pings wakegate answered itself while the service was not awake.
    pub status_pings: AtomicU64,
    wakes: [AtomicU64; 7],
    failures: [AtomicU64; 3],
    /// By [`SleepMode::index`]: cold starts apart from resumes.
    wake_durations: [WakeHistogram; 3],
    awake_millis: AtomicU64,
    /// Set while the backend runs (waking, awake, stopping). Touched on transitions only.
    running_since: Mutex<Option<Instant>>,
    /// What the service's agent last reported.
    pub agent: AgentMetrics,
}

impl Metrics {
    /// Counts a wake by what started it (a trigger that never starts a wake is not counted).
    pub fn wake(&self, trigger: Trigger) {
        if let Some(i) = trigger.wake_index() {
            self.wakes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn failure(&self, failure: Failure) {
        self.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wake from `from` (a cold start from `stopped`, a resume otherwise).
    pub fn wake_took(&self, from: SleepMode, took: Duration) {
        let histogram = &self.wake_durations[from.index()];
        let seconds = took.as_secs_f64();
        for (bucket, bound) in histogram.buckets.iter().zip(WAKE_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        histogram.count.fetch_add(1, Ordering::Relaxed);
        histogram
            .micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Follows a transition, to count the time the backend runs (and costs).
    pub fn entered(&self, state: State) {
        let running = matches!(state, State::Waking | State::Awake | State::Stopping);
        let mut since = self.running_since.lock().unwrap();
        match (running, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, Some(start)) => {
                self.awake_millis
                    .fetch_add(start.elapsed().as_millis() as u64, Ordering::Relaxed);
                *since = None;
            }
            _ => {}
        }
    }

    /// Seconds the backend has run since wakegate started.
    fn running_seconds(&self) -> f64 {
        let current = self
            .running_since
            .lock()
            .unwrap()
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        (self.awake_millis.load(Ordering::Relaxed) + current) as f64 / 1000.0
    }
}

/// What the exposition reads of a service. The service's handle implements it; the trait keeps
/// this module below the service (which counts into [`Metrics`]).
pub trait Source {
    fn name(&self) -> &str;
    /// The state it is in now.
    fn state(&self) -> State;
    /// Open proxied connections.
    fn connections(&self) -> usize;
    /// Clients waiting for a wake to finish.
    fn held(&self) -> usize;
    /// How it sleeps, while asleep.
    fn sleep_mode(&self) -> Option<SleepMode>;
    fn metrics(&self) -> &Metrics;
    /// Whether this gateway drives it, when several share the store (none otherwise).
    fn owned(&self) -> Option<bool> {
        None
    }
}

/// The Prometheus text exposition of every service and of the process.
pub fn render<S: Source>(services: &[S]) -> String {
    let mut out = String::new();
    let states = [
        State::Asleep,
        State::Waking,
        State::Awake,
        State::Stopping,
        State::Failed,
    ];
    header(
        &mut out,
        "wakegate_service_state",
        "gauge",
        "1 for the state each service is in.",
    );
    for s in services {
        let current = s.state();
        for state in states {
            let v = u8::from(state == current);
            let _ = writeln!(
                out,
                "wakegate_service_state{{service=\"{}\",state=\"{state}\"}} {v}",
                s.name()
            );
        }
    }
    header(
        &mut out,
        "wakegate_service_sleep_mode",
        "gauge",
        "1 for how each asleep service sleeps (stopped, paused or frozen); 0 while awake.",
    );
    for s in services {
        let current = s.sleep_mode();
        for mode in SleepMode::ALL {
            let v = u8::from(current == Some(mode));
            let _ = writeln!(
                out,
                "wakegate_service_sleep_mode{{service=\"{}\",mode=\"{mode}\"}} {v}",
                s.name()
            );
        }
    }
    if services.iter().any(|s| s.owned().is_some()) {
        header(
            &mut out,
            "wakegate_service_owned",
            "gauge",
            "1 for each service this gateway drives, 0 for those another gateway sharing the store drives (its clients are served here too).",
        );
        for s in services {
            if let Some(owned) = s.owned() {
                let _ = writeln!(
                    out,
                    "wakegate_service_owned{{service=\"{}\"}} {}",
                    s.name(),
                    u8::from(owned)
                );
            }
        }
    }
    header(
        &mut out,
        "wakegate_wakes_total",
        "counter",
        "Wakes started, by what started them.",
    );
    for s in services {
        for (i, t) in Trigger::WAKES.into_iter().enumerate() {
            let v = s.metrics().wakes[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "wakegate_wakes_total{{service=\"{}\",trigger=\"{}\"}} {v}",
                s.name(),
                t.as_str()
            );
        }
    }
    header(
        &mut out,
        "wakegate_failures_total",
        "counter",
        "Failed wakes and stops, and crashes while awake.",
    );
    for s in services {
        for f in Failure::ALL {
            let v = s.metrics().failures[f as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "wakegate_failures_total{{service=\"{}\",kind=\"{}\"}} {v}",
                s.name(),
                f.as_str()
            );
        }
    }
    header(
        &mut out,
        "wakegate_wake_duration_seconds",
        "histogram",
        "Time from the start of a wake to the backend being ready, by what the wake undid (from: a cold start from stopped, a resume from paused or frozen).",
    );
    for s in services {
        for mode in SleepMode::ALL {
            let histogram = &s.metrics().wake_durations[mode.index()];
            let count = histogram.count.load(Ordering::Relaxed);
            // Cold starts always; a resume once there was one.
            if mode.in_memory() && count == 0 {
                continue;
            }
            let labels = format!("service=\"{}\",from=\"{mode}\"", s.name());
            for (bucket, bound) in histogram.buckets.iter().zip(WAKE_BUCKETS) {
                let _ = writeln!(
                    out,
                    "wakegate_wake_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let _ = writeln!(
                out,
                "wakegate_wake_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "wakegate_wake_duration_seconds_sum{{{labels}}} {}",
                histogram.micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "wakegate_wake_duration_seconds_count{{{labels}}} {count}"
            );
        }
    }
    let per_service: [PerService<S>; 8] = [
        (
            "wakegate_minecraft_status_pings_total",
            "counter",
            "Server-list pings answered by wakegate while the service was not awake (they never wake it).",
            |s| s.metrics().status_pings.load(Ordering::Relaxed) as f64,
        ),
        (
            "wakegate_awake_seconds_total",
            "counter",
            "Seconds the backend ran (waking, awake or stopping) since wakegate started.",
            |s| s.metrics().running_seconds(),
        ),
        (
            "wakegate_connections",
            "gauge",
            "Open proxied connections.",
            |s| s.connections() as f64,
        ),
        (
            "wakegate_connections_total",
            "counter",
            "Proxied connections since wakegate started.",
            |s| s.metrics().connections_total.load(Ordering::Relaxed) as f64,
        ),
        (
            "wakegate_received_bytes_total",
            "counter",
            "Bytes from clients forwarded to the backend.",
            |s| s.metrics().bytes_in.load(Ordering::Relaxed) as f64,
        ),
        (
            "wakegate_sent_bytes_total",
            "counter",
            "Bytes from the backend forwarded to clients.",
            |s| s.metrics().bytes_out.load(Ordering::Relaxed) as f64,
        ),
        (
            "wakegate_held_clients",
            "gauge",
            "Clients waiting for a wake to finish.",
            |s| s.held() as f64,
        ),
        (
            "wakegate_refused_clients_total",
            "counter",
            "Clients refused because max_held were already waiting.",
            |s| s.metrics().refused.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, value) in per_service {
        header(&mut out, name, kind, help);
        for s in services {
            let _ = writeln!(out, "{name}{{service=\"{}\"}} {}", s.name(), value(s));
        }
    }
    render_agents(&mut out, services);
    process(&mut out);
    out
}

/// A metric with one value per service: name, type, help, and how to read it.
type PerService<S> = (&'static str, &'static str, &'static str, fn(&S) -> f64);

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The standard process metrics, read from /proc.
fn process(out: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, counted after the name (field 2).
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let cpu = (ticks(11) + ticks(12)) / hz;
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let start = boot + ticks(19) / hz;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let gauges = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss_kib * 1024.0,
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
            cpu,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch in seconds.",
            start,
        ),
    ];
    for (name, kind, help, value) in gauges {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

// ---- Store metrics (the writer of `store/`) ---------------------------------------------
// Kept in one block: the store's counters live in the store (it needs nothing of this
// module); the API reads them into a `StoreMetrics` and appends this exposition.

/// What the store's writer reports, read when the metrics are scraped.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreMetrics {
    /// Events handed to the store and not yet committed.
    pub pending_events: u64,
    /// Write attempts that failed (each is retried).
    pub write_failures: u64,
    /// Events dropped because the queue of events waiting for the store was full.
    pub dropped_events: u64,
    /// The last write attempt failed.
    pub degraded: bool,
}

/// Appends the store's metrics to an exposition.
pub fn render_store(out: &mut String, store: &StoreMetrics) {
    let metrics = [
        (
            "wakegate_store_pending_events",
            "gauge",
            "Events waiting to be written to the store (they are published once written).",
            store.pending_events,
        ),
        (
            "wakegate_store_write_failures_total",
            "counter",
            "Store write attempts that failed (each is retried with backoff).",
            store.write_failures,
        ),
        (
            "wakegate_store_dropped_events_total",
            "counter",
            "Events lost because too many were already waiting for the store.",
            store.dropped_events,
        ),
        (
            "wakegate_store_degraded",
            "gauge",
            "1 while the store cannot write (see /healthz), else 0.",
            u64::from(store.degraded),
        ),
    ];
    for (name, kind, help, value) in metrics {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}
// ---- End of store metrics ----------------------------------------------------------------

// =============================================================================================
// Listeners: clients refused or cut before they were served, and open connections, per bound
// socket. Labelled by the socket's bind and type and by a reason from a fixed list: never by a
// client's address, so the series stay as few as the config's listeners.
// =============================================================================================

/// Why a listener refused a client or cut it short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client's address already had `max_connections_per_address` connections open.
    PerAddressCap,
    /// It did not send its request head (HTTP), TLS handshake, Minecraft packet, PROXY header
    /// or (`wake_on = "data"`) first byte in time.
    HeadTimeout,
    /// It broke the protocol: a bad request, a broken request body, a failed TLS handshake.
    Malformed,
    /// The process was out of file descriptors (or socket memory) when the client arrived.
    FdExhausted,
    /// A client (a Minecraft login) the allow or deny lists refused.
    Denied,
    /// A client (a Minecraft login) whose address started `wake_rate` wakes already.
    RateLimited,
    /// A Minecraft client asked for a hostname no service has.
    UnknownHost,
    /// The service could not take it: `max_held` reached, the wake failed, `block_timeout`.
    Unavailable,
    /// A client of a `wake_on = "data"` tcp listener closed before it sent a byte, while the
    /// service was not awake (a port scan): nothing was woken.
    NoData,
    /// A PROXY protocol header from an address not in `trusted_proxies`, or a trusted proxy's
    /// connection without a valid one.
    ProxyHeader,
    /// A new client of a `udp` or `bedrock` listener that already had `max_sessions` live.
    MaxSessions,
    /// A datagram past the bound of its session's queue while the backend woke: dropped.
    QueueFull,
    /// A datagram that may not start a session (not `wake_on` of a `udp` listener while the
    /// service was not awake; anything but a join on a `bedrock` one): dropped.
    NoWake,
}

impl Refusal {
    pub const ALL: [Refusal; 13] = [
        Refusal::PerAddressCap,
        Refusal::HeadTimeout,
        Refusal::Malformed,
        Refusal::FdExhausted,
        Refusal::Denied,
        Refusal::RateLimited,
        Refusal::UnknownHost,
        Refusal::Unavailable,
        Refusal::NoData,
        Refusal::ProxyHeader,
        Refusal::MaxSessions,
        Refusal::QueueFull,
        Refusal::NoWake,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerAddressCap => "per_address_cap",
            Refusal::HeadTimeout => "head_timeout",
            Refusal::Malformed => "malformed",
            Refusal::FdExhausted => "fd_exhausted",
            Refusal::Denied => "denied",
            Refusal::RateLimited => "rate_limited",
            Refusal::UnknownHost => "unknown_host",
            Refusal::Unavailable => "unavailable",
            Refusal::NoData => "no_data",
            Refusal::ProxyHeader => "proxy_header",
            Refusal::MaxSessions => "max_sessions",
            Refusal::QueueFull => "queue_full",
            Refusal::NoWake => "no_wake",
        }
    }
}

/// The counters of one bound socket.
#[derive(Debug)]
pub struct ListenerCounters {
    /// `tcp`, `http` or `minecraft`.
    kind: &'static str,
    bind: String,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// Client connections open now.
    pub open: AtomicU64,
}

impl ListenerCounters {
    pub fn refused(&self, reason: Refusal) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_count(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }
}

/// Every listener's counters, shared by the listeners (which register) and the API (which
/// renders them). A std Mutex: taken once per listener at start and once per scrape.
#[derive(Debug, Clone, Default)]
pub struct ListenerMetrics {
    listeners: std::sync::Arc<Mutex<Vec<std::sync::Arc<ListenerCounters>>>>,
}

impl ListenerMetrics {
    /// The counters of a socket of `kind` bound to `bind`.
    pub fn register(
        &self,
        kind: &'static str,
        bind: std::net::SocketAddr,
    ) -> std::sync::Arc<ListenerCounters> {
        let counters = std::sync::Arc::new(ListenerCounters {
            kind,
            bind: bind.to_string(),
            refused: Default::default(),
            open: AtomicU64::new(0),
        });
        self.listeners.lock().unwrap().push(counters.clone());
        counters
    }

    /// Appends the listeners' metrics to an exposition.
    pub fn render(&self, out: &mut String) {
        let listeners = self.listeners.lock().unwrap();
        header(
            out,
            "wakegate_listener_refused_total",
            "counter",
            "Clients a listener refused or cut before serving them, by reason.",
        );
        for l in listeners.iter() {
            for reason in Refusal::ALL {
                let _ = writeln!(
                    out,
                    "wakegate_listener_refused_total{{listener=\"{}\",type=\"{}\",reason=\"{}\"}} {}",
                    l.bind,
                    l.kind,
                    reason.as_str(),
                    l.refused_count(reason)
                );
            }
        }
        header(
            out,
            "wakegate_listener_connections",
            "gauge",
            "Client connections open on a listener (proxied or not yet).",
        );
        for l in listeners.iter() {
            let _ = writeln!(
                out,
                "wakegate_listener_connections{{listener=\"{}\",type=\"{}\"}} {}",
                l.bind,
                l.kind,
                l.open.load(Ordering::Relaxed)
            );
        }
    }
}
// ============================ end of the listeners' block ====================================

// ---- Agent metrics (`wakegate agent` reports, taken by the service's actor) ---------------

/// A figure not reported.
const NONE: u64 = u64::MAX;

/// The last report of a service's agent, in atomics the actor sets on each report.
#[derive(Debug)]
pub struct AgentMetrics {
    reports: AtomicU64,
    /// Milliseconds since the epoch; 0 before the first report.
    last_report_ms: AtomicU64,
    connections: AtomicU64,
    players: AtomicU64,
    count: AtomicU64,
    /// Until when (ms since the epoch) its figures keep the service awake; 0 when they do not.
    active_until_ms: AtomicU64,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        AgentMetrics {
            reports: AtomicU64::new(0),
            last_report_ms: AtomicU64::new(0),
            connections: AtomicU64::new(NONE),
            players: AtomicU64::new(NONE),
            count: AtomicU64::new(NONE),
            active_until_ms: AtomicU64::new(0),
        }
    }
}

fn epoch_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl AgentMetrics {
    /// Counts a report and keeps its figures.
    pub fn report(
        &self,
        at: std::time::SystemTime,
        connections: Option<u32>,
        players: Option<u32>,
        count: Option<u64>,
        active_until: Option<std::time::SystemTime>,
    ) {
        let figure = |v: Option<u64>| v.unwrap_or(NONE);
        self.connections
            .store(figure(connections.map(u64::from)), Ordering::Relaxed);
        self.players
            .store(figure(players.map(u64::from)), Ordering::Relaxed);
        self.count.store(figure(count), Ordering::Relaxed);
        self.active_until_ms
            .store(active_until.map_or(0, epoch_ms), Ordering::Relaxed);
        self.last_report_ms.store(epoch_ms(at), Ordering::Relaxed);
        self.reports.fetch_add(1, Ordering::Relaxed);
    }
}

/// A metric of the agents: name, type, help, and how to read it (at a time in ms).
type AgentFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&AgentMetrics, u64) -> u64,
);

/// The agents' metrics, for the services whose agent has reported since wakegate started.
fn render_agents<S: Source>(out: &mut String, services: &[S]) {
    let reporting: Vec<&S> = services
        .iter()
        .filter(|s| s.metrics().agent.reports.load(Ordering::Relaxed) > 0)
        .collect();
    let now = epoch_ms(std::time::SystemTime::now());
    let families: [AgentFamily; 6] = [
        (
            "wakegate_agent_reports_total",
            "counter",
            "Reports of the service's agent since wakegate started.",
            |a, _| a.reports.load(Ordering::Relaxed),
        ),
        (
            "wakegate_agent_last_report_timestamp_seconds",
            "gauge",
            "When the service's agent last reported (seconds since the epoch; milliseconds in the fraction).",
            |a, _| a.last_report_ms.load(Ordering::Relaxed),
        ),
        (
            "wakegate_agent_active",
            "gauge",
            "1 while the agent's last report keeps the service awake.",
            |a, now| u64::from(a.active_until_ms.load(Ordering::Relaxed) > now),
        ),
        (
            "wakegate_agent_connections",
            "gauge",
            "Established connections on the agent's ports, as last reported.",
            |a, _| a.connections.load(Ordering::Relaxed),
        ),
        (
            "wakegate_agent_players",
            "gauge",
            "Minecraft players on the agent's server, as last reported.",
            |a, _| a.players.load(Ordering::Relaxed),
        ),
        (
            "wakegate_agent_count",
            "gauge",
            "What the agent's count_command printed, as last reported.",
            |a, _| a.count.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in families {
        header(out, name, kind, help);
        for s in &reporting {
            let v = value(&s.metrics().agent, now);
            if v == NONE {
                continue;
            }
            if name == "wakegate_agent_last_report_timestamp_seconds" {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\"}} {}",
                    s.name(),
                    v as f64 / 1000.0
                );
            } else {
                let _ = writeln!(out, "{name}{{service=\"{}\"}} {v}", s.name());
            }
        }
    }
}
