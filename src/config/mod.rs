//! Configuration: strict structs read from TOML (`*Config`), then `validate()` into the runtime
//! types the rest of wakegate uses. Every problem in a file is collected, not just the first.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::listener::minecraft::access::{Access, Subject, WakeRate};
use crate::listener::minecraft::status::{Text, load_icon};
use crate::probe::{Check, Probe};
use crate::schedule::Window;

/// The commented template printed by `wakegate config example`.
pub const EXAMPLE: &str = include_str!("../examples/wakegate.toml");

// ---------------------------------------------------------------------------------------------
// Runtime types: what the gateway runs on once a file has been validated.

/// A whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: Gateway,
    pub services: Vec<Service>,
    /// Where events are delivered (`[[notify]]`).
    pub notify: Vec<crate::notify::Target>,
}

/// Settings of the daemon itself.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    /// How long open connections may go on after SIGINT/SIGTERM before they are closed.
    pub shutdown_grace: Duration,
    /// Bearer tokens of the API; none means an open API, allowed only on loopback.
    pub tokens: Vec<Token>,
    /// Origins allowed to call the API from a browser page served elsewhere (CORS).
    pub cors_origins: Vec<String>,
}

/// An API token and what it may do.
#[derive(Debug, Clone)]
pub struct Token {
    pub name: String,
    pub secret: Secret,
    pub role: Role,
}

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// See services, events and metrics.
    Read,
    /// Also wake, sleep and hold leases.
    Operate,
    /// Everything.
    Admin,
}

/// One thing that sleeps and wakes.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// What an hour awake costs, to report the money saved by sleeping.
    pub hourly_cost: Option<f64>,
    pub idle_timeout: Duration,
    pub min_awake: Duration,
    pub wake_timeout: Duration,
    pub max_held: usize,
    pub backend: Backend,
    /// Empty only for an `always_on` service that nobody reaches through wakegate.
    pub listeners: Vec<Listen>,
    /// What "ready" means at the end of a wake (default: the address accepts a connection).
    pub readiness: Check,
    /// Checks run while awake.
    pub health: Vec<Health>,
    /// Keep it running and repair it, whatever the activity.
    pub always_on: bool,
    pub policy: Policies,
}

impl Service {
    /// Whether a `minecraft` listener of this service writes PROXY headers to the backend
    /// (then wakegate's own status pings carry one too).
    pub fn proxy_protocol(&self) -> bool {
        self.listeners
            .iter()
            .any(|l| matches!(l, Listen::Minecraft(m) if m.proxy_protocol))
    }

    /// How often to ask the backend for its players: only behind a `minecraft` listener.
    pub fn player_poll(&self) -> Option<Duration> {
        self.listeners
            .iter()
            .any(|l| matches!(l, Listen::Minecraft(_)))
            .then_some(self.policy.player_poll)
    }
}

/// Policies beyond the idle timeout.
#[derive(Debug, Clone)]
pub struct Policies {
    /// Stop after this long awake, however busy.
    pub max_runtime: Option<Duration>,
    /// How long before `max_runtime` a warning event goes out.
    pub max_runtime_warning: Duration,
    pub min_players: Option<MinPlayers>,
    /// Windows that keep it awake.
    pub awake_during: Vec<Window>,
    /// Windows in which it may not wake (and is put to sleep).
    pub asleep_during: Vec<Window>,
    /// How often an awake service behind a `minecraft` listener is asked for its players.
    pub player_poll: Duration,
    /// The crash-loop breaker: at most this many restarts within `restart_window`.
    pub max_restarts: u32,
    pub restart_window: Duration,
}

impl Default for Policies {
    fn default() -> Policies {
        Policies {
            max_runtime: None,
            max_runtime_warning: default_runtime_warning(),
            min_players: None,
            awake_during: Vec::new(),
            asleep_during: Vec::new(),
            player_poll: default_player_poll(),
            max_restarts: default_max_restarts(),
            restart_window: default_restart_window(),
        }
    }
}

/// Stop when fewer players than `count` are on, after `warnings` warnings `interval` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinPlayers {
    pub count: u32,
    pub warnings: u32,
    pub interval: Duration,
}

/// A health check run while awake.
#[derive(Debug, Clone)]
pub struct Health {
    pub check: Check,
    pub interval: Duration,
    /// Consecutive failures before acting.
    pub tolerance: u32,
    pub action: HealthAction,
}

/// What a failing health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthAction {
    /// Stop and start the backend (within the crash-loop breaker's limits).
    Restart,
    /// Only record a warning event (which notifications can pick up).
    Notify,
    /// Put it to sleep.
    Sleep,
}

/// How a service is started, stopped and found.
#[derive(Debug, Clone)]
pub enum Backend {
    Exec(Exec),
    Process(Process),
    /// An EC2 instance (`aws` feature).
    Ec2(crate::aws::Ec2),
    /// An ECS service or task (`aws` feature).
    Ecs(crate::aws::Ecs),
}

/// User hook commands run by `sh -c`.
#[derive(Debug, Clone)]
pub struct Exec {
    pub start: String,
    pub stop: String,
    pub status: Option<String>,
    pub timeout: Duration,
    pub address: String,
    pub env: Vec<(String, Secret)>,
}

/// A server that wakegate runs as its own child process.
#[derive(Debug, Clone)]
pub struct Process {
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, Secret)>,
    pub address: String,
    pub stop: StopMethod,
    pub stop_timeout: Duration,
    pub on_shutdown: OnShutdown,
    /// Ask the server to `save-all` before the stop (by stdin or RCON; never with a signal).
    pub save_all: bool,
}

/// How a `process` backend is asked to stop before it is killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopMethod {
    /// Write this line to the child's stdin (e.g. `stop` for Minecraft).
    Stdin(String),
    /// Send this signal (by number).
    Signal(i32),
    /// Send a command over RCON (Minecraft's remote console): works for an adopted process too.
    Rcon(Rcon),
}

/// Where a server's RCON listens, and what to send there to stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcon {
    pub address: String,
    pub password: Secret,
    /// The stop command (`stop_command`, default `stop`).
    pub command: String,
}

/// What a graceful shutdown of wakegate does to a running `process` child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Stop the child the way an idle stop would (the default: nothing is left unwatched).
    Stop,
    /// Leave it running; the next `wakegate run` finds it again by its pid file and adopts it.
    Leave,
}

/// Where clients arrive.
// Built once at start and never moved in a hot path: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Listen {
    Tcp { bind: SocketAddr },
    Minecraft(Minecraft),
    Http(Box<Http>),
}

impl Listen {
    pub fn bind(&self) -> SocketAddr {
        match self {
            Listen::Tcp { bind } => *bind,
            Listen::Minecraft(m) => m.bind,
            Listen::Http(h) => h.bind,
        }
    }
}

/// An HTTP listener (HTTP/1.1 and h2c, or HTTPS): shows a waiting page or holds requests while
/// the service wakes, then proxies to the backend; routes by `Host` when several services
/// share its `bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http {
    pub bind: SocketAddr,
    /// Lower-case names without trailing dot; `*.example.com` stands for one label before
    /// `example.com`. Empty means "whatever the client asked for".
    pub hostnames: Vec<String>,
    /// Takes the hosts no service on this `bind` names.
    pub default: bool,
    /// What a request gets while the service is not awake.
    pub strategy: Strategy,
    /// How long a request is held for a wake before it gets 503 with Retry-After.
    pub block_timeout: Duration,
    /// Terminate TLS with this certificate (chosen by SNI among the entries of a shared bind).
    pub tls: Option<TlsFiles>,
    /// Answer every request with a redirect to the same URL over https (on this port).
    pub redirect_https: Option<u16>,
    /// The waiting page's template, read at start; the built-in page without it.
    pub page: Option<String>,
    /// Paths that never wake the service and never count as activity (`/x*` is a prefix).
    pub ignore_paths: Vec<String>,
    /// Lower-case parts of User-Agent headers (health checkers, bots) that never wake it.
    pub ignore_user_agents: Vec<String>,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a request gets while its service is not awake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The waiting page, which switches to the app by itself once it is awake.
    Page,
    /// Hold the request until it is awake (up to `block_timeout`), then forward it.
    Block,
    /// Browsers (`Accept: text/html`) get the page, other clients are held.
    Auto,
}

/// A Minecraft Java edition listener: answers the server list while the service sleeps, wakes
/// it on a login, and routes by the hostname of the handshake when several services share
/// its `bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minecraft {
    pub bind: SocketAddr,
    /// Lower-case hostnames without trailing dot; empty means "whatever the client typed".
    pub hostnames: Vec<String>,
    /// Takes the hostnames no service on this `bind` names.
    pub default: bool,
    pub motd_asleep: Text,
    pub motd_waking: Text,
    pub motd_failed: Text,
    /// Shown as the server's version in the list.
    pub version_name: String,
    /// How long a joining player is held while the service wakes (clients give up near 30 s).
    pub hold_timeout: Duration,
    /// What a login does while the service is not awake, in order of preference: the first
    /// strategy that fits the client and the expected wait is used.
    pub join: Vec<Join>,
    pub kick_message: String,
    /// Where a transferred client reconnects: this gateway's public host and port.
    pub public_address: Option<(String, u16)>,
    /// Who may wake the service.
    pub access: Access,
    /// How many wakes one IP address may start per period.
    pub wake_rate: Option<WakeRate>,
    /// Lines shown as the player sample (hovering the player count) while not awake.
    pub player_sample: Vec<String>,
    /// The server icon as a `data:image/png;base64,…` URI.
    pub icon: Option<String>,
    /// How long the backend's status answer is reused while awake (none: always asked).
    pub status_cache: Option<Duration>,
    /// Write a PROXY protocol v2 header to the backend first.
    pub proxy_protocol: bool,
}

/// What a login does while the service is not awake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// Keep the player connecting until it is awake (up to `hold_timeout`), then forward.
    Hold,
    /// Start the wake and disconnect the player at once with `kick_message`.
    Kick,
    /// Clients from 1.20.5: finish login, wait in the configuration phase for as long as the
    /// wake takes, then send them back to `public_address` with a Transfer packet.
    Transfer,
}

impl Join {
    pub fn as_str(self) -> &'static str {
        match self {
            Join::Hold => "hold",
            Join::Kick => "kick",
            Join::Transfer => "transfer",
        }
    }
}

/// `join = "hold"` or `join = ["transfer", "hold", "kick"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JoinList(Vec<Join>);

impl<'de> Deserialize<'de> for JoinList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JoinList, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let names = match Raw::deserialize(d)? {
            Raw::One(one) => vec![one],
            Raw::Many(many) => many,
        };
        names
            .into_iter()
            .map(|name| {
                Join::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&name))
            })
            .collect::<Result<_, _>>()
            .map(JoinList)
    }
}

/// A value that may come from `"${ENV_VAR}"` and is never printed back.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The real value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

// ---------------------------------------------------------------------------------------------
// File types: exactly what may be written in a file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayConfig {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default = "default_api")]
    api: Spanned<SocketAddr>,
    #[serde(default = "default_grace", deserialize_with = "duration")]
    shutdown_grace: Duration,
    #[serde(default)]
    cors_origins: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            data_dir: default_data_dir(),
            api: default_api(),
            shutdown_grace: default_grace(),
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenConfig {
    name: Spanned<String>,
    secret: Spanned<String>,
    role: Role,
}

/// The keys of a `[[service]]` table other than `backend` and `listen`, which are read apart
/// so that a mistake in one part does not hide mistakes in the others.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceConfig {
    name: Spanned<String>,
    hourly_cost: Option<Spanned<f64>>,
    #[serde(default = "default_idle", deserialize_with = "duration")]
    idle_timeout: Duration,
    #[serde(default, deserialize_with = "duration")]
    min_awake: Duration,
    #[serde(default = "default_wake_timeout", deserialize_with = "duration")]
    wake_timeout: Duration,
    #[serde(default = "default_max_held")]
    max_held: Spanned<usize>,
    #[serde(default = "default_always_on")]
    always_on: Spanned<bool>,
    #[serde(default, deserialize_with = "optional_duration")]
    max_runtime: Option<Duration>,
    #[serde(default = "default_runtime_warning", deserialize_with = "duration")]
    max_runtime_warning: Duration,
    min_players: Option<u32>,
    #[serde(default = "default_warnings")]
    warnings: u32,
    #[serde(default = "default_player_interval", deserialize_with = "duration")]
    player_check_interval: Duration,
    #[serde(default)]
    awake_during: Vec<Spanned<String>>,
    #[serde(default)]
    asleep_during: Vec<Spanned<String>>,
    #[serde(default = "default_player_poll", deserialize_with = "duration")]
    player_poll: Duration,
    #[serde(default = "default_max_restarts")]
    max_restarts: u32,
    #[serde(default = "default_restart_window", deserialize_with = "duration")]
    restart_window: Duration,
}

/// The keys of a probe table other than `type` (and, for a health check, its schedule).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    url: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    status: Vec<u16>,
    body_contains: Option<String>,
    pattern: Option<Spanned<String>>,
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    timeout: Duration,
}

/// When and how a health check acts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthConfig {
    #[serde(default = "default_health_interval", deserialize_with = "duration")]
    interval: Duration,
    #[serde(default = "default_tolerance")]
    tolerance: Spanned<u32>,
    #[serde(default = "default_health_action")]
    action: HealthAction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecConfig {
    start: String,
    stop: String,
    status: Option<String>,
    #[serde(default = "default_hook_timeout", deserialize_with = "duration")]
    timeout: Duration,
    address: Spanned<String>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessConfig {
    command: Spanned<Vec<String>>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    address: Spanned<String>,
    stop_command: Option<String>,
    stop_signal: Option<Spanned<String>>,
    #[serde(default = "default_stop_timeout", deserialize_with = "duration")]
    stop_timeout: Duration,
    #[serde(default = "default_on_shutdown")]
    on_shutdown: OnShutdown,
    rcon: Option<Spanned<RconConfig>>,
    save_all: Option<Spanned<bool>>,
}

/// `[service.backend.rcon]` of a `process` backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RconConfig {
    address: Spanned<String>,
    password: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpListenConfig {
    bind: Spanned<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpListenConfig {
    bind: Spanned<SocketAddr>,
    #[serde(default)]
    hostnames: Vec<Spanned<String>>,
    #[serde(default)]
    default: bool,
    #[serde(default = "default_strategy")]
    strategy: Strategy,
    #[serde(
        default = "default_block_timeout",
        deserialize_with = "spanned_duration"
    )]
    block_timeout: Spanned<Duration>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    #[serde(default = "default_no_redirect")]
    redirect_https: Spanned<bool>,
    #[serde(default = "default_https_port")]
    https_port: u16,
    page: Option<Spanned<PathBuf>>,
    ignore_paths: Option<Vec<Spanned<String>>>,
    ignore_user_agents: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MinecraftListenConfig {
    bind: Spanned<SocketAddr>,
    #[serde(default)]
    hostnames: Vec<Spanned<String>>,
    #[serde(default)]
    default: bool,
    #[serde(default = "default_motd_asleep")]
    motd_asleep: Spanned<String>,
    #[serde(default = "default_motd_waking")]
    motd_waking: Spanned<String>,
    #[serde(default = "default_motd_failed")]
    motd_failed: Spanned<String>,
    #[serde(default = "default_version_name")]
    version_name: String,
    #[serde(
        default = "default_hold_timeout",
        deserialize_with = "spanned_duration"
    )]
    hold_timeout: Spanned<Duration>,
    #[serde(default = "default_join")]
    join: Spanned<JoinList>,
    #[serde(default = "default_kick_message")]
    kick_message: String,
    #[serde(default)]
    public_address: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    wake_rate: Option<Spanned<String>>,
    #[serde(default)]
    player_sample: Vec<String>,
    #[serde(default)]
    icon: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "optional_spanned_duration")]
    status_cache: Option<Spanned<Duration>>,
    #[serde(default)]
    proxy_protocol: bool,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./wakegate-data")
}
fn default_api() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 7070)))
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_idle() -> Duration {
    Duration::from_secs(600)
}
fn default_wake_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_max_held() -> Spanned<usize> {
    Spanned::new(0..0, 256)
}
fn default_always_on() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
fn default_runtime_warning() -> Duration {
    Duration::from_secs(600)
}
fn default_warnings() -> u32 {
    3
}
fn default_player_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_player_poll() -> Duration {
    Duration::from_secs(30)
}
fn default_max_restarts() -> u32 {
    3
}
fn default_restart_window() -> Duration {
    Duration::from_secs(3600)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_health_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_tolerance() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}
fn default_health_action() -> HealthAction {
    HealthAction::Restart
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_on_shutdown() -> OnShutdown {
    OnShutdown::Stop
}
fn default_motd_asleep() -> Spanned<String> {
    Spanned::new(0..0, "§7sleeping — join to wake".to_string())
}
fn default_motd_waking() -> Spanned<String> {
    Spanned::new(0..0, "§ewaking up — join in a moment".to_string())
}
fn default_motd_failed() -> Spanned<String> {
    Spanned::new(
        0..0,
        "§cthe server could not start — join to try again".to_string(),
    )
}
fn default_version_name() -> String {
    "wakegate".to_string()
}
fn default_hold_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(25))
}
fn default_join() -> Spanned<JoinList> {
    Spanned::new(0..0, JoinList(vec![Join::Hold]))
}
fn default_strategy() -> Strategy {
    Strategy::Auto
}
fn default_block_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(30))
}
fn default_no_redirect() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
fn default_https_port() -> u16 {
    443
}
/// Paths browsers and crawlers fetch by themselves.
pub const DEFAULT_IGNORE_PATHS: &[&str] = &["/robots.txt", "/favicon.ico", "/.well-known/*"];
/// Health checkers, uptime monitors and crawlers: none of them is a person who waits.
pub const DEFAULT_IGNORE_USER_AGENTS: &[&str] = &[
    "kube-probe",
    "elb-healthchecker",
    "googlehc",
    "amazon-route53-health-check",
    "consul health check",
    "uptimerobot",
    "pingdom",
    "statuscake",
    "site24x7",
    "better uptime",
    "blackbox-exporter",
    "googlebot",
    "bingbot",
    "yandexbot",
    "baiduspider",
    "duckduckbot",
    "applebot",
    "ahrefsbot",
    "semrushbot",
    "mj12bot",
    "dotbot",
    "petalbot",
    "gptbot",
    "claudebot",
    "ccbot",
    "bytespider",
    "facebookexternalhit",
    "twitterbot",
    "slackbot",
    "discordbot",
];
fn default_kick_message() -> String {
    "§eThe server is starting. Join again in a moment.".to_string()
}

/// Reads a humantime duration and keeps its place, for problems found after reading.
fn spanned_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Spanned<Duration>, D::Error> {
    let text = Spanned::<String>::deserialize(d)?;
    let span = text.span();
    let value = humantime::parse_duration(text.get_ref()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{}` is not a duration ({e}); write it like \"30s\", \"10m\" or \"1h 30m\"",
            text.get_ref()
        ))
    })?;
    Ok(Spanned::new(span, value))
}

/// Reads an optional humantime duration and keeps its place.
fn optional_spanned_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Spanned<Duration>>, D::Error> {
    spanned_duration(d).map(Some)
}

/// Reads an optional humantime duration.
fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Reads a humantime duration ("30s", "10m", "1h 30m").
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write it like \"30s\", \"10m\" or \"1h 30m\""
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Errors

/// One problem found in a file: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: String,
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; check the path, or pass --config FILE")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(path, problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

fn render(path: &str, problems: &[Problem]) -> String {
    let mut out = format!(
        "{path}: {} problem{} found",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str(&format!(
            "\n{path}:{}:{}: {}\n    hint: {}",
            p.line, p.column, p.message, p.hint
        ));
    }
    out
}

/// Collects problems with their place in the source.
pub(crate) struct Problems<'a> {
    source: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    pub(crate) fn add(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: &str,
    ) {
        let (line, column) = span.map_or((1, 1), |s| line_col(self.source, s.start));
        self.list.push(Problem {
            line,
            column,
            message: message.into(),
            hint: hint.to_string(),
        });
    }

    fn add_toml(&mut self, e: toml::de::Error) {
        let message = e.message().trim().to_string();
        let hint = hint_for(&message);
        self.add(e.span(), message, hint);
    }
}

fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

fn hint_for(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or fix its spelling; `wakegate config example` shows every key"
    } else if message.contains("missing field") {
        "add the key; `wakegate config example` shows it with a comment"
    } else if message.contains("duration") {
        "durations are written like \"500ms\", \"30s\", \"10m\" or \"1h 30m\""
    } else if message.contains("socket address") {
        "write an address as \"IP:PORT\", e.g. \"127.0.0.1:7070\" or \"0.0.0.0:25565\""
    } else {
        "compare with `wakegate config example`"
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&source, &path.display().to_string())
}

/// Validates config text; `origin` names it in messages.
pub fn parse(source: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut problems = Problems {
        source,
        list: Vec::new(),
    };
    let config = parse_into(source, &mut problems);
    problems.list.sort_by_key(|p| (p.line, p.column));
    match config {
        Some(config) if problems.list.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid {
            path: origin.to_string(),
            problems: problems.list,
        }),
    }
}

fn parse_into(source: &str, problems: &mut Problems<'_>) -> Option<Config> {
    let (root, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        for e in syntax {
            problems.add_toml(e);
        }
        return None;
    }
    let mut root = root.into_inner();
    let (gateway, tokens) = match root.remove("gateway") {
        Some(value) => read_gateway_tables(value, problems),
        None => (Some(GatewayConfig::default()), Vec::new()),
    };
    let services = match root.remove("service") {
        Some(value) => read_services(value, problems),
        None => {
            problems.add(
                None,
                "no [[service]] is configured",
                "add at least one [[service]] with a [service.backend] and a [[service.listen]]",
            );
            None
        }
    };
    let notify = crate::notify::read_targets(root.remove("notify"), services.as_deref(), problems);
    for (key, _) in root.iter() {
        problems.add(
            Some(key.span()),
            format!("unknown top-level key `{}`", key.get_ref()),
            "the top level holds only [gateway], [[service]] and [[notify]] tables",
        );
    }
    let gateway = read_gateway(gateway?, tokens, problems);
    let services = services?;
    let config = Config {
        gateway: gateway?,
        services,
        notify: notify?,
    };
    check_binds(&config, problems);
    Some(config)
}

/// Minimum length of a token secret: shorter ones can be guessed.
pub(crate) const MIN_SECRET_LEN: usize = 16;

/// Reads `[gateway]`, and each of its `[[gateway.token]]` tables apart, so that every mistake
/// is reported.
fn read_gateway_tables(
    value: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> (Option<GatewayConfig>, Vec<Option<TokenConfig>>) {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        problems.add(
            Some(span),
            "`gateway` must be a table",
            "write it as [gateway]",
        );
        return (None, Vec::new());
    };
    let tokens = match table.remove("token") {
        None => Vec::new(),
        Some(tokens) => {
            let token_span = tokens.span();
            match tokens.into_inner() {
                DeValue::Array(items) => items.into_iter().map(|t| read(t, problems)).collect(),
                _ => {
                    problems.add(
                        Some(token_span),
                        "`gateway.token` must be an array of tables",
                        "write each token as a [[gateway.token]] table",
                    );
                    vec![None]
                }
            }
        }
    };
    let gateway = read::<GatewayConfig>(Spanned::new(span, DeValue::Table(table)), problems);
    (gateway, tokens)
}

fn read_gateway(
    c: GatewayConfig,
    token_configs: Vec<Option<TokenConfig>>,
    problems: &mut Problems<'_>,
) -> Option<Gateway> {
    let mut tokens = Vec::new();
    // A token that could not be read was reported already.
    let mut ok = token_configs.iter().all(Option::is_some);
    let mut names = std::collections::HashSet::new();
    for t in token_configs.into_iter().flatten() {
        if !names.insert(t.name.get_ref().clone()) {
            problems.add(
                Some(t.name.span()),
                format!("token name `{}` is used twice", t.name.get_ref()),
                "give every [[gateway.token]] its own name",
            );
            ok = false;
        }
        match expand(t.secret.get_ref()) {
            Ok(secret) if secret.expose().len() >= MIN_SECRET_LEN => tokens.push(Token {
                name: t.name.into_inner(),
                secret,
                role: t.role,
            }),
            Ok(_) => {
                problems.add(
                    Some(t.secret.span()),
                    format!("the secret of token `{}` is too short to be safe", t.name.get_ref()),
                    "use at least 16 characters, e.g. from `openssl rand -hex 32`, kept in an environment variable",
                );
                ok = false;
            }
            Err(var) => {
                problems.add(
                    Some(t.secret.span()),
                    format!("environment variable `{var}` is not set"),
                    "export it before starting wakegate, or write the value itself",
                );
                ok = false;
            }
        }
    }
    let api = *c.api.get_ref();
    if tokens.is_empty() && ok && !api.ip().is_loopback() {
        problems.add(
            Some(c.api.span()),
            format!("the API on {api} is reachable from the network but no [[gateway.token]] is configured"),
            "add a [[gateway.token]] with a secret, or bind the API to 127.0.0.1",
        );
        ok = false;
    }
    ok.then_some(Gateway {
        data_dir: c.data_dir,
        api,
        shutdown_grace: c.shutdown_grace,
        tokens,
        cors_origins: c.cors_origins,
    })
}

/// Deserializes one spanned value, recording its problem on failure.
pub(crate) fn read<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> Option<T> {
    T::deserialize(ValueDeserializer::from(value))
        .map_err(|e| problems.add_toml(e))
        .ok()
}

fn read_services(value: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) -> Option<Vec<Service>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.add(
            Some(span),
            "`service` must be an array of tables",
            "write each service as a [[service]] table",
        );
        return None;
    };
    let mut services = Vec::new();
    let mut all_ok = true;
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    for item in items {
        match read_service(item, problems) {
            Some((service, name_span)) => {
                if names
                    .insert(service.name.clone(), name_span.clone())
                    .is_some()
                {
                    problems.add(
                        Some(name_span),
                        format!("service name `{}` is used twice", service.name),
                        "give every [[service]] its own name",
                    );
                }
                services.push(service);
            }
            None => all_ok = false,
        }
    }
    all_ok.then_some(services)
}

fn read_service(
    item: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> Option<(Service, Range<usize>)> {
    let span = item.span();
    let DeValue::Table(mut table) = item.into_inner() else {
        problems.add(
            Some(span),
            "each `service` must be a table",
            "write each service as a [[service]] table",
        );
        return None;
    };
    let backend = table.remove("backend");
    let listen = table.remove("listen");
    let readiness = table.remove("readiness");
    let health = table.remove("health");
    let dns = table.remove("dns");
    let always_on = matches!(
        table.get("always_on").map(|v| v.get_ref()),
        Some(DeValue::Boolean(true))
    );
    let fields = read::<ServiceConfig>(Spanned::new(span.clone(), DeValue::Table(table)), problems);
    let readiness = match readiness {
        Some(value) => split_type(
            value,
            "[service.readiness]",
            "tcp, http, minecraft, log",
            problems,
        )
        .and_then(|(kind, rest)| read_probe(&kind, rest, true, problems)),
        None => Some(Check::default()),
    };
    let health = match health {
        Some(value) => read_health(value, problems),
        None => Some(Vec::new()),
    };

    let backend = match backend {
        Some(value) => crate::aws::attach_dns(read_backend(value, problems), dns, problems),
        None => {
            problems.add(
                Some(span.clone()),
                "this service has no [service.backend]",
                "add a [service.backend] table with `type = \"exec\"` or `type = \"process\"`",
            );
            None
        }
    };
    let listeners = match listen {
        Some(value) => read_listeners(value, problems),
        // A watchdog keeps a server running that clients reach by other ways.
        None if always_on => Some(Vec::new()),
        None => {
            problems.add(
                Some(span.clone()),
                "this service has no [[service.listen]]",
                "add a [[service.listen]] table with `type = \"tcp\"` and `bind = \"IP:PORT\"`",
            );
            None
        }
    };
    let fields = fields?;
    let name_span = fields.name.span();
    let name = fields.name.into_inner();
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        problems.add(
            Some(name_span.clone()),
            format!("service name `{name}` is not allowed"),
            "names use only a-z, 0-9 and '-', e.g. \"survival\" or \"staging-api\"",
        );
    }
    if let Some(cost) = &fields.hourly_cost
        && !(cost.get_ref().is_finite() && *cost.get_ref() >= 0.0)
    {
        problems.add(
            Some(cost.span()),
            "hourly_cost must be a positive number",
            "write what an hour awake costs, e.g. hourly_cost = 0.17",
        );
    }
    if *fields.always_on.get_ref() && fields.max_runtime.is_some() {
        problems.add(
            Some(fields.always_on.span()),
            "an always_on service cannot have a max_runtime",
            "remove one of the two: always_on keeps it running, max_runtime stops it",
        );
    }
    let awake_during = read_windows(fields.awake_during, problems);
    let asleep_during = read_windows(fields.asleep_during, problems);
    if fields.max_held.get_ref() == &0 {
        problems.add(
            Some(fields.max_held.span()),
            "max_held = 0 would refuse every client while the service wakes",
            "set max_held to at least 1 (the default is 256)",
        );
    }
    // Behind `proxy_protocol = true` the backend wants a PROXY header on every connection,
    // wakegate's own status pings included.
    let proxy = listeners.as_deref().is_some_and(|l| {
        l.iter()
            .any(|l| matches!(l, Listen::Minecraft(m) if m.proxy_protocol))
    });
    let readiness = readiness.map(|c| Check {
        proxy_header: proxy,
        ..c
    });
    let health = health.map(|checks| {
        checks
            .into_iter()
            .map(|mut h| {
                h.check.proxy_header = proxy;
                h
            })
            .collect::<Vec<_>>()
    });
    Some((
        Service {
            name,
            hourly_cost: fields.hourly_cost.map(|c| c.into_inner()),
            idle_timeout: fields.idle_timeout,
            min_awake: fields.min_awake,
            wake_timeout: fields.wake_timeout,
            max_held: *fields.max_held.get_ref(),
            backend: backend?,
            listeners: listeners?,
            readiness: readiness?,
            health: health?,
            always_on: *fields.always_on.get_ref(),
            policy: Policies {
                max_runtime: fields.max_runtime,
                max_runtime_warning: fields.max_runtime_warning,
                min_players: fields.min_players.map(|count| MinPlayers {
                    count,
                    warnings: fields.warnings,
                    interval: fields.player_check_interval,
                }),
                awake_during: awake_during?,
                asleep_during: asleep_during?,
                player_poll: fields.player_poll,
                max_restarts: fields.max_restarts,
                restart_window: fields.restart_window,
            },
        },
        name_span,
    ))
}

fn read_windows(texts: Vec<Spanned<String>>, problems: &mut Problems<'_>) -> Option<Vec<Window>> {
    let mut ok = true;
    let mut windows = Vec::new();
    for text in texts {
        match Window::parse(text.get_ref()) {
            Ok(w) => windows.push(w),
            Err(e) => {
                problems.add(
                    Some(text.span()),
                    e,
                    "days are Mon..Sun, ranges like Mon-Fri or lists like Sat,Sun, or daily",
                );
                ok = false;
            }
        }
    }
    ok.then_some(windows)
}

/// Reads a probe of `kind` from a table without its `type`.
fn read_probe(
    kind: &str,
    rest: Spanned<DeValue<'_>>,
    readiness: bool,
    problems: &mut Problems<'_>,
) -> Option<Check> {
    let span = rest.span();
    let c: ProbeConfig = read(rest, problems)?;
    let only = |key: &str, problems: &mut Problems<'_>, span: Range<usize>| {
        problems.add(
            Some(span),
            format!("`{key}` does not belong to a `{kind}` probe"),
            "remove it; `wakegate config example` shows the keys of each probe type",
        );
        None
    };
    let probe = match kind {
        "tcp" | "minecraft" => {
            if let Some(url) = &c.url {
                return only("url", problems, url.span());
            }
            if let Some(pattern) = &c.pattern {
                return only("pattern", problems, pattern.span());
            }
            if kind == "tcp" {
                Probe::Tcp
            } else {
                Probe::Minecraft
            }
        }
        "http" => {
            let Some(url) = c.url else {
                problems.add(
                    Some(span),
                    "an http probe needs a `url`",
                    "e.g. url = \"http://{address}/healthz\" ({address} is the backend's address)",
                );
                return None;
            };
            if !url.get_ref().starts_with("http://") {
                problems.add(
                    Some(url.span()),
                    format!("`{}` is not an http:// URL", url.get_ref()),
                    "probes speak plain HTTP to the backend: use http://{address}/path",
                );
                return None;
            }
            let method = match &c.method {
                None => hyper::Method::GET,
                Some(m) => match hyper::Method::from_bytes(m.get_ref().as_bytes()) {
                    Ok(method) => method,
                    Err(_) => {
                        problems.add(
                            Some(m.span()),
                            format!("`{}` is not an HTTP method", m.get_ref()),
                            "use GET, HEAD or POST",
                        );
                        return None;
                    }
                },
            };
            Probe::Http {
                url: url.into_inner(),
                method,
                headers: c.headers.into_iter().collect(),
                status: c.status,
                body_contains: c.body_contains,
            }
        }
        "log" if readiness => {
            let Some(pattern) = c.pattern else {
                problems.add(
                    Some(span),
                    "a log probe needs a `pattern`",
                    "e.g. pattern = 'Done \\(' for a Minecraft server",
                );
                return None;
            };
            match regex::Regex::new(pattern.get_ref()) {
                Ok(re) => Probe::LogLine(re),
                Err(e) => {
                    // The regex error draws the pattern over several lines; its last says why.
                    let why = e.to_string();
                    let why = why
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim_start_matches("error: ");
                    problems.add(
                        Some(pattern.span()),
                        format!("`{}` is not a regular expression: {why}", pattern.get_ref()),
                        "check the pattern's syntax (Rust regex)",
                    );
                    return None;
                }
            }
        }
        other => {
            let kinds = if readiness {
                "tcp, http, minecraft, log"
            } else {
                "tcp, http, minecraft"
            };
            problems.add(
                Some(span),
                format!("unknown probe type `{other}`"),
                &format!("use one of: {kinds}"),
            );
            return None;
        }
    };
    Some(Check {
        probe,
        timeout: c.timeout,
        proxy_header: false,
    })
}

fn read_health(value: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) -> Option<Vec<Health>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.add(
            Some(span),
            "`health` must be an array of tables",
            "write each check as a [[service.health]] table",
        );
        return None;
    };
    let mut checks = Vec::new();
    let mut ok = true;
    for item in items {
        let check = split_type(item, "[[service.health]]", "tcp, http, minecraft", problems)
            .and_then(|(kind, rest)| {
                let rest_span = rest.span();
                let DeValue::Table(mut table) = rest.into_inner() else {
                    return None;
                };
                let mut timing = DeTable::new();
                for key in ["interval", "tolerance", "action"] {
                    if let Some((k, v)) = table.remove_entry(key) {
                        timing.insert(k, v);
                    }
                }
                let health: Option<HealthConfig> = read(
                    Spanned::new(rest_span.clone(), DeValue::Table(timing)),
                    problems,
                );
                let check = read_probe(
                    &kind,
                    Spanned::new(rest_span, DeValue::Table(table)),
                    false,
                    problems,
                );
                let health = health?;
                if *health.tolerance.get_ref() == 0 {
                    problems.add(
                        Some(health.tolerance.span()),
                        "tolerance = 0 would act before any check failed",
                        "set tolerance to the number of failures in a row to wait for, e.g. 3",
                    );
                    return None;
                }
                Some(Health {
                    check: check?,
                    interval: health.interval,
                    tolerance: *health.tolerance.get_ref(),
                    action: health.action,
                })
            });
        match check {
            Some(c) => checks.push(c),
            None => ok = false,
        }
    }
    ok.then_some(checks)
}

/// Splits the `type` key off a tagged table, so the rest can be read by the variant's struct.
pub(crate) fn split_type<'i>(
    value: Spanned<DeValue<'i>>,
    what: &str,
    kinds: &str,
    problems: &mut Problems<'_>,
) -> Option<(String, Spanned<DeValue<'i>>)> {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        problems.add(
            Some(span),
            format!("{what} must be a table"),
            "see `wakegate config example`",
        );
        return None;
    };
    let Some(kind) = table.remove("type") else {
        problems.add(
            Some(span),
            format!("{what} has no `type`"),
            &format!("add `type = ...` with one of: {kinds}"),
        );
        return None;
    };
    let kind_span = kind.span();
    let Some(kind) = kind.get_ref().as_str().map(str::to_string) else {
        problems.add(
            Some(kind_span),
            format!("{what} `type` must be a string"),
            &format!("use one of: {kinds}"),
        );
        return None;
    };
    Some((kind, Spanned::new(kind_span, DeValue::Table(table))))
}

fn read_backend(value: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) -> Option<Backend> {
    let kinds = "exec, process, ec2, ecs";
    let (kind, rest) = split_type(value, "[service.backend]", kinds, problems)?;
    let type_span = rest.span();
    match kind.as_str() {
        "ec2" => crate::aws::read_ec2(rest, problems),
        "ecs" => crate::aws::read_ecs(rest, problems),
        "exec" => {
            let c: ExecConfig = read(rest, problems)?;
            let env = expand_env(c.env, problems);
            let address = check_address(c.address, problems);
            Some(Backend::Exec(Exec {
                start: c.start,
                stop: c.stop,
                status: c.status,
                timeout: c.timeout,
                address: address?,
                env: env?,
            }))
        }
        "process" => {
            let c: ProcessConfig = read(rest, problems)?;
            let env = expand_env(c.env, problems);
            let address = check_address(c.address, problems);
            if c.command.get_ref().is_empty() {
                problems.add(
                    Some(c.command.span()),
                    "`command` is empty",
                    "give the program and its arguments, e.g. [\"java\", \"-jar\", \"server.jar\", \"nogui\"]",
                );
            }
            let rcon = c.rcon.map(|rcon| {
                let command = c.stop_command.clone().unwrap_or_else(|| "stop".into());
                (rcon.span(), read_rcon(rcon.into_inner(), command, problems))
            });
            if let (Some((span, _)), Some(_)) = (&rcon, &c.stop_signal) {
                problems.add(
                    Some(span.clone()),
                    "both `rcon` and `stop_signal` are set",
                    "RCON sends `stop_command` (default \"stop\"); remove `stop_signal`",
                );
            }
            let save_all = c.save_all.map(|s| (s.span(), *s.get_ref()));
            if let Some((span, true)) = &save_all
                && rcon.is_none()
                && c.stop_command.is_none()
            {
                problems.add(
                    Some(span.clone()),
                    "`save_all` needs a way to send the server commands",
                    "add `stop_command = \"stop\"` (commands on its stdin) or a [service.backend.rcon] table; a signal cannot ask it to save",
                );
            }
            let stop = match (c.stop_command, c.stop_signal) {
                _ if rcon.is_some() => None,
                (Some(_), Some(signal)) => {
                    problems.add(
                        Some(signal.span()),
                        "both `stop_command` and `stop_signal` are set",
                        "choose one way to ask the process to stop",
                    );
                    None
                }
                (Some(line), None) => Some(StopMethod::Stdin(line)),
                (None, Some(signal)) => match signal_number(signal.get_ref()) {
                    Some(n) => Some(StopMethod::Signal(n)),
                    None => {
                        problems.add(
                            Some(signal.span()),
                            format!("unknown signal `{}`", signal.get_ref()),
                            "use one of SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL",
                        );
                        None
                    }
                },
                (None, None) => Some(StopMethod::Signal(SIGTERM)),
            };
            let stop = match rcon {
                Some((_, rcon)) => rcon.map(StopMethod::Rcon),
                None => stop,
            };
            Some(Backend::Process(Process {
                command: c.command.into_inner(),
                cwd: c.cwd,
                env: env?,
                address: address?,
                stop: stop?,
                stop_timeout: c.stop_timeout,
                on_shutdown: c.on_shutdown,
                save_all: save_all.is_some_and(|(_, on)| on),
            }))
        }
        other => {
            problems.add(
                Some(type_span),
                format!("unknown backend type `{other}`"),
                &format!("use one of: {kinds}"),
            );
            None
        }
    }
}

const SIGTERM: i32 = 15;

/// `[service.backend.rcon]`: a `host:port` and a password that must not be empty (Minecraft
/// refuses RCON without one). The password is a secret: it is never printed back.
fn read_rcon(c: RconConfig, command: String, problems: &mut Problems<'_>) -> Option<Rcon> {
    let text = c.address.get_ref();
    let address_ok = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !address_ok {
        problems.add(
            Some(c.address.span()),
            format!("RCON address `{text}` is not host:port"),
            "write where the server's RCON listens (`rcon.port` in server.properties), e.g. \"127.0.0.1:25575\"",
        );
    }
    let password = match expand(c.password.get_ref()) {
        Ok(password) if password.expose().is_empty() => {
            problems.add(
                Some(c.password.span()),
                "the RCON password is empty",
                "set `rcon.password` in server.properties and give it here as \"${MC_RCON_PASSWORD}\"; a Minecraft server refuses RCON without one",
            );
            None
        }
        Ok(password) => Some(password),
        Err(var) => {
            problems.add(
                Some(c.password.span()),
                format!("environment variable `{var}` is not set"),
                "export it before starting wakegate; it holds the server's `rcon.password`",
            );
            None
        }
    };
    Some(Rcon {
        address: address_ok.then(|| c.address.into_inner())?,
        password: password?,
        command,
    })
}

fn signal_number(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => SIGTERM,
        _ => return None,
    })
}

fn read_listeners(value: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) -> Option<Vec<Listen>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.add(
            Some(span),
            "`listen` must be an array of tables",
            "write each listener as a [[service.listen]] table",
        );
        return None;
    };
    let kinds = "tcp, http, minecraft";
    let mut listeners = Vec::new();
    let mut all_ok = true;
    for item in items {
        let listen =
            split_type(item, "[[service.listen]]", kinds, problems).and_then(|(kind, rest)| {
                match kind.as_str() {
                    "tcp" => read::<TcpListenConfig>(rest, problems).map(|c| Listen::Tcp {
                        bind: c.bind.into_inner(),
                    }),
                    "minecraft" => read::<MinecraftListenConfig>(rest, problems)
                        .and_then(|c| read_minecraft(c, problems))
                        .map(Listen::Minecraft),
                    "http" => read::<HttpListenConfig>(rest, problems)
                        .and_then(|c| read_http(c, problems))
                        .map(|h| Listen::Http(Box::new(h))),
                    other => {
                        problems.add(
                            Some(rest.span()),
                            format!("unknown listener type `{other}`"),
                            &format!("use one of: {kinds}"),
                        );
                        None
                    }
                }
            });
        match listen {
            Some(l) => listeners.push(l),
            None => all_ok = false,
        }
    }
    if all_ok && listeners.is_empty() {
        problems.add(
            Some(span),
            "this service has no listener",
            "add a [[service.listen]] table with `type = \"tcp\"` and `bind = \"IP:PORT\"`",
        );
        return None;
    }
    all_ok.then_some(listeners)
}

/// Whose hostnames a listener lists: players' server-list names, or web names that may start
/// with `*.`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hostnames {
    Minecraft,
    Http,
}

/// Checks a listener's `hostnames` and returns them lower-cased without a trailing dot.
fn read_hostnames(
    names: &[Spanned<String>],
    kind: Hostnames,
    problems: &mut Problems<'_>,
) -> Option<Vec<String>> {
    let mut ok = true;
    let mut hostnames: Vec<String> = Vec::new();
    for name in names {
        let host = name.get_ref().trim_end_matches('.').to_lowercase();
        let (valid, hint) = match kind {
            Hostnames::Minecraft => (
                !host.is_empty()
                    && host.len() <= 255
                    && host
                        .chars()
                        .all(|ch| ch.is_alphanumeric() || matches!(ch, '.' | '-' | '_')),
                "write the names players type in their server list, e.g. \"mc.example.com\"",
            ),
            Hostnames::Http => {
                let plain = host.strip_prefix("*.").unwrap_or(&host);
                (
                    !plain.is_empty()
                        && host.len() <= 255
                        && plain
                            .chars()
                            .all(|ch| ch.is_alphanumeric() || matches!(ch, '.' | '-' | '_'))
                        && plain.split('.').all(|label| !label.is_empty())
                        && (plain.len() == host.len() || plain.contains('.')),
                    "write the names people type in their browser, e.g. \"app.example.com\", or \"*.example.com\" for every name one level below example.com",
                )
            }
        };
        if !valid {
            problems.add(
                Some(name.span()),
                format!("`{}` is not a hostname", name.get_ref()),
                hint,
            );
            ok = false;
        } else if hostnames.contains(&host) {
            problems.add(
                Some(name.span()),
                format!("hostname `{host}` is listed twice"),
                "list each hostname once",
            );
            ok = false;
        } else {
            hostnames.push(host);
        }
    }
    ok.then_some(hostnames)
}

/// Checks a `minecraft` listener's values beyond their types.
fn read_minecraft(c: MinecraftListenConfig, problems: &mut Problems<'_>) -> Option<Minecraft> {
    let mut ok = true;
    let hostnames = read_hostnames(&c.hostnames, Hostnames::Minecraft, problems);
    ok &= hostnames.is_some();
    let hostnames = hostnames.unwrap_or_default();
    let hold_timeout = *c.hold_timeout.get_ref();
    if hold_timeout.is_zero() || hold_timeout > Duration::from_secs(600) {
        problems.add(
            Some(c.hold_timeout.span()),
            format!(
                "hold_timeout = \"{}\" is out of range",
                humantime::format_duration(hold_timeout)
            ),
            "hold a joining player between 1s and 10m; clients give up near 30s, so 25s is best",
        );
        ok = false;
    }
    let mut text = |motd: &Spanned<String>| match Text::parse(motd.get_ref()) {
        Ok(text) => Some(text),
        Err(e) => {
            problems.add(
                Some(motd.span()),
                e,
                "write plain text with § codes, or a JSON text component such as '{\"text\": \"zzz\", \"color\": \"gray\"}'",
            );
            None
        }
    };
    let (asleep, waking, failed) = (
        text(&c.motd_asleep),
        text(&c.motd_waking),
        text(&c.motd_failed),
    );
    let extra = read_minecraft_extras(&c, &hostnames, problems);
    let (Some(asleep), Some(waking), Some(failed), Some(extra)) = (asleep, waking, failed, extra)
    else {
        return None;
    };
    ok.then(|| Minecraft {
        bind: c.bind.into_inner(),
        hostnames,
        default: c.default,
        motd_asleep: asleep,
        motd_waking: waking,
        motd_failed: failed,
        version_name: c.version_name,
        hold_timeout,
        join: c.join.into_inner().0,
        kick_message: c.kick_message,
        public_address: extra.public_address,
        access: extra.access,
        wake_rate: extra.wake_rate,
        player_sample: c.player_sample,
        icon: extra.icon,
        status_cache: c.status_cache.map(Spanned::into_inner),
        proxy_protocol: c.proxy_protocol,
    })
}

/// The values of a `minecraft` listener checked against each other or the file system.
struct MinecraftExtras {
    public_address: Option<(String, u16)>,
    access: Access,
    wake_rate: Option<WakeRate>,
    icon: Option<String>,
}

fn read_minecraft_extras(
    c: &MinecraftListenConfig,
    hostnames: &[String],
    problems: &mut Problems<'_>,
) -> Option<MinecraftExtras> {
    let mut ok = true;
    let join = &c.join.get_ref().0;
    let join_hint = "list strategies from \"transfer\", \"hold\" and \"kick\", each at most once, e.g. join = [\"transfer\", \"hold\", \"kick\"]";
    if join.is_empty() {
        problems.add(Some(c.join.span()), "`join` lists no strategy", join_hint);
        ok = false;
    }
    for (i, strategy) in join.iter().enumerate() {
        if join[..i].contains(strategy) {
            problems.add(
                Some(c.join.span()),
                format!("join strategy `{}` is listed twice", strategy.as_str()),
                join_hint,
            );
            ok = false;
        }
    }
    let public_address = match &c.public_address {
        None => None,
        Some(text) => {
            let host_port = text.get_ref().rsplit_once(':').and_then(|(host, port)| {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
                (!host.is_empty()).then(|| (host.to_string(), port))
            });
            match host_port {
                None => {
                    problems.add(
                        Some(text.span()),
                        format!("public_address `{}` is not host:port", text.get_ref()),
                        "write the address players connect to, e.g. \"mc.example.com:25565\"",
                    );
                    ok = false;
                    None
                }
                Some((host, port)) => {
                    let routed = host.trim_end_matches('.').to_lowercase();
                    if !hostnames.is_empty() && !c.default && !hostnames.contains(&routed) {
                        problems.add(
                            Some(text.span()),
                            format!("public_address host `{host}` is not one of this listener's hostnames"),
                            "a transferred player reconnects with this host in its handshake: use one of `hostnames`, or set default = true",
                        );
                        ok = false;
                    }
                    Some((host, port))
                }
            }
        }
    };
    if join.contains(&Join::Transfer) && public_address.is_none() && c.public_address.is_none() {
        problems.add(
            Some(c.join.span()),
            "join strategy `transfer` needs `public_address`",
            "add public_address = \"HOST:PORT\": where players reach this gateway, the address a transferred client reconnects to",
        );
        ok = false;
    }
    let mut subjects = |list: &[Spanned<String>], which: &str| -> Vec<Subject> {
        let mut out = Vec::new();
        for item in list {
            match item.get_ref().parse::<Subject>() {
                Ok(subject) => out.push(subject),
                Err(e) => {
                    problems.add(
                        Some(item.span()),
                        format!("{which}: {e}"),
                        "list player names (\"Steve\"), UUIDs (\"069a79f4-44e9-4726-a5be-fca90e38aaf5\") and IP addresses or ranges (\"10.0.0.0/8\", \"2001:db8::/32\")",
                    );
                    ok = false;
                }
            }
        }
        out
    };
    let access = Access {
        allow: subjects(&c.allow, "allow"),
        deny: subjects(&c.deny, "deny"),
    };
    let wake_rate = match &c.wake_rate {
        None => None,
        Some(text) => match text.get_ref().parse::<WakeRate>() {
            Ok(rate) => Some(rate),
            Err(e) => {
                problems.add(
                    Some(text.span()),
                    format!("wake_rate {e}"),
                    "write how many wakes one IP address may start per period, e.g. wake_rate = \"3/1m\"",
                );
                ok = false;
                None
            }
        },
    };
    let icon = match &c.icon {
        None => None,
        Some(path) => match load_icon(Path::new(path.get_ref())) {
            Ok(icon) => Some(icon),
            Err(e) => {
                problems.add(
                    Some(path.span()),
                    e,
                    "give the path (from wakegate's working directory) of a 64×64 PNG, e.g. the server's server-icon.png",
                );
                ok = false;
                None
            }
        },
    };
    if let Some(ttl) = &c.status_cache
        && *ttl.get_ref() > Duration::from_secs(60)
    {
        problems.add(
            Some(ttl.span()),
            format!(
                "status_cache = \"{}\" is out of range",
                humantime::format_duration(*ttl.get_ref())
            ),
            "keep the backend's status for at most 1m (a few seconds is enough against refresh storms)",
        );
        ok = false;
    }
    ok.then_some(MinecraftExtras {
        public_address,
        access,
        wake_rate,
        icon,
    })
}

/// Checks an `http` listener's values beyond their types; reads its page template and checks
/// its certificate and key, so a mistake shows in `config check` rather than at start.
fn read_http(c: HttpListenConfig, problems: &mut Problems<'_>) -> Option<Http> {
    let mut ok = true;
    let hostnames = read_hostnames(&c.hostnames, Hostnames::Http, problems);
    ok &= hostnames.is_some();
    let hostnames = hostnames.unwrap_or_default();
    let block_timeout = *c.block_timeout.get_ref();
    if block_timeout.is_zero() || block_timeout > Duration::from_secs(3600) {
        problems.add(
            Some(c.block_timeout.span()),
            format!(
                "block_timeout = \"{}\" is out of range",
                humantime::format_duration(block_timeout)
            ),
            "hold a request between 1s and 1h; most HTTP clients give up after 30s to 60s",
        );
        ok = false;
    }
    let tls = match (c.tls_cert, c.tls_key) {
        (None, None) => None,
        (Some(cert), None) => {
            problems.add(
                Some(cert.span()),
                "`tls_cert` is set without `tls_key`",
                "give the certificate's private key too: tls_key = \"/etc/ssl/private/app.key\"",
            );
            ok = false;
            None
        }
        (None, Some(key)) => {
            problems.add(
                Some(key.span()),
                "`tls_key` is set without `tls_cert`",
                "give the certificate chain too: tls_cert = \"/etc/ssl/certs/app.pem\"",
            );
            ok = false;
            None
        }
        (Some(cert), Some(key)) => {
            let files = TlsFiles {
                cert: cert.get_ref().clone(),
                key: key.get_ref().clone(),
            };
            match crate::listener::http::tls::load(&files) {
                Ok(_) => Some(files),
                Err(e) => {
                    problems.add(
                        Some(cert.span()),
                        e.to_string(),
                        "give a PEM certificate chain and the PEM private key that belongs to it",
                    );
                    ok = false;
                    None
                }
            }
        }
    };
    if *c.redirect_https.get_ref() && tls.is_some() {
        problems.add(
            Some(c.redirect_https.span()),
            "`redirect_https` is set on a listener that already speaks TLS",
            "set redirect_https on a second, plain http listener (e.g. on port 80) of this service",
        );
        ok = false;
    }
    let page = match &c.page {
        None => None,
        Some(path) => match std::fs::read_to_string(path.get_ref()) {
            Ok(text) => Some(text),
            Err(e) => {
                problems.add(
                    Some(path.span()),
                    format!(
                        "cannot read the page template {}: {e}",
                        path.get_ref().display()
                    ),
                    "check the path, or remove `page` to use the built-in waiting page",
                );
                ok = false;
                None
            }
        },
    };
    let ignore_paths = match c.ignore_paths {
        None => DEFAULT_IGNORE_PATHS.iter().map(|p| p.to_string()).collect(),
        Some(paths) => {
            let mut out = Vec::new();
            for path in paths {
                if !path.get_ref().starts_with('/') {
                    problems.add(
                        Some(path.span()),
                        format!("`{}` is not a path", path.get_ref()),
                        "paths start with '/', e.g. \"/healthz\", or \"/status/*\" for a prefix",
                    );
                    ok = false;
                } else {
                    out.push(path.into_inner());
                }
            }
            out
        }
    };
    let ignore_user_agents = match c.ignore_user_agents {
        None => DEFAULT_IGNORE_USER_AGENTS
            .iter()
            .map(|a| a.to_string())
            .collect(),
        Some(agents) => agents.into_iter().map(|a| a.to_lowercase()).collect(),
    };
    ok.then(|| Http {
        bind: c.bind.into_inner(),
        hostnames,
        default: c.default,
        strategy: c.strategy,
        block_timeout,
        tls,
        redirect_https: c.redirect_https.into_inner().then_some(c.https_port),
        page,
        ignore_paths,
        ignore_user_agents,
    })
}

/// A backend address must be `host:port`; the host is resolved on every wake.
fn check_address(address: Spanned<String>, problems: &mut Problems<'_>) -> Option<String> {
    let text = address.get_ref();
    let valid = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid {
        Some(address.into_inner())
    } else {
        problems.add(
            Some(address.span()),
            format!("backend address `{text}` is not host:port"),
            "write where the server listens, e.g. \"127.0.0.1:25566\" or \"mc.internal:25565\"",
        );
        None
    }
}

/// Replaces `"${VAR}"` values with the variable's value, keeping them secret.
fn expand_env(
    env: BTreeMap<String, Spanned<String>>,
    problems: &mut Problems<'_>,
) -> Option<Vec<(String, Secret)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in env {
        match expand(value.get_ref()) {
            Ok(v) => out.push((key, v)),
            Err(var) => {
                ok = false;
                problems.add(
                    Some(value.span()),
                    format!("environment variable `{var}` is not set"),
                    "export it before starting wakegate, or write the value itself",
                );
            }
        }
    }
    ok.then_some(out)
}

/// Expands a whole-value `${VAR}` reference; other strings are taken literally.
pub fn expand(value: &str) -> Result<Secret, String> {
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        Some(var) => std::env::var(var).map(Secret).map_err(|_| var.to_string()),
        None => Ok(Secret(value.to_string())),
    }
}

/// Two listeners of any services cannot share a plain TCP socket. `minecraft` listeners may
/// share one, and so may `http` listeners (each type only with its own, and TLS for all or
/// none), as long as every hostname names one service and at most one takes the rest.
fn check_binds(config: &Config, problems: &mut Problems<'_>) {
    let mut groups: BTreeMap<SocketAddr, Vec<(&str, &Listen)>> = BTreeMap::new();
    for service in &config.services {
        for listen in &service.listeners {
            // Port 0 asks the system for a free port: those never collide.
            if listen.bind().port() == 0 {
                continue;
            }
            groups
                .entry(listen.bind())
                .or_default()
                .push((&service.name, listen));
        }
    }
    for (bind, group) in groups {
        if group.len() < 2 {
            continue;
        }
        if let Some(tcp) = group
            .iter()
            .position(|(_, l)| matches!(l, Listen::Tcp { .. }))
        {
            let other = if tcp == 0 { 1 } else { 0 };
            let (a, b) = (group[tcp.min(other)].0, group[tcp.max(other)].0);
            problems.add(
                None,
                format!("services `{a}` and `{b}` both listen on tcp {bind}"),
                "give each tcp listener its own port",
            );
            continue;
        }
        let kind = |l: &Listen| match l {
            Listen::Http(_) => "http",
            _ => "minecraft",
        };
        let first_kind = kind(group[0].1);
        if let Some((other, _)) = group.iter().find(|(_, l)| kind(l) != first_kind) {
            problems.add(
                None,
                format!(
                    "service `{}` listens for {first_kind} and `{other}` for another protocol on {bind}",
                    group[0].0
                ),
                "only listeners of the same type can share a port; give each protocol its own port",
            );
            continue;
        }
        if first_kind == "http" {
            let tls = |l: &Listen| matches!(l, Listen::Http(h) if h.tls.is_some());
            if let Some((plain, _)) = group.iter().find(|(_, l)| !tls(l))
                && let Some((secure, _)) = group.iter().find(|(_, l)| tls(l))
            {
                problems.add(
                    None,
                    format!(
                        "on http {bind}, service `{secure}` speaks TLS and `{plain}` plain HTTP"
                    ),
                    "a shared port speaks TLS for all its services or for none: give each its tls_cert and tls_key, or use two ports",
                );
            }
        }
        let mut owners: HashMap<&str, &str> = HashMap::new();
        let mut defaults = Vec::new();
        for (name, listen) in &group {
            let (hostnames, default) = match listen {
                Listen::Minecraft(m) => (&m.hostnames, m.default),
                Listen::Http(h) => (&h.hostnames, h.default),
                Listen::Tcp { .. } => continue,
            };
            if default || hostnames.is_empty() {
                defaults.push(*name);
            }
            for host in hostnames {
                if let Some(first) = owners.insert(host, name) {
                    problems.add(
                        None,
                        format!(
                            "hostname `{host}` on {first_kind} {bind} is claimed by `{first}` and `{name}`"
                        ),
                        "each hostname on a shared bind must lead to one service",
                    );
                }
            }
        }
        if defaults.len() > 1 {
            problems.add(
                None,
                format!(
                    "services `{}` all take unknown hostnames on {first_kind} {bind}",
                    defaults.join("`, `")
                ),
                "on a shared bind, give every listener `hostnames` and set `default = true` on at most one",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_with_its_line() {
        let src = r#"
[gateway]
api = "nowhere"

[[service]]
name = "Bad Name"
idle_timeout = "ten minutes"
[service.backend]
type = "exec"
start = "true"
stop = "true"
address = "127.0.0.1:9"
colour = "blue"
[[service.listen]]
type = "tcp"
bind = "127.0.0.1:7000"
"#;
        let ConfigError::Invalid { problems, .. } = parse(src, "x.toml").unwrap_err() else {
            panic!("expected Invalid")
        };
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![3, 7, 13], "{problems:#?}");
        assert!(problems[2].message.contains("colour"));
    }

    #[test]
    fn secrets_expand_and_never_print() {
        // PATH is set for every test process; setting a variable of our own would need unsafe.
        let path = std::env::var("PATH").unwrap();
        let secret = expand("${PATH}").unwrap();
        assert_eq!(secret.expose(), path);
        assert_eq!(format!("{secret:?}"), "Secret(****)");
        assert_eq!(
            expand("${WAKEGATE_TEST_NOT_SET_ANYWHERE}").unwrap_err(),
            "WAKEGATE_TEST_NOT_SET_ANYWHERE"
        );
        assert_eq!(expand("plain").unwrap().expose(), "plain");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
