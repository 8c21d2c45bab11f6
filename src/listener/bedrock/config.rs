//! The `bedrock` listener's table, read into [`Bedrock`]: what its own pong says while the
//! server sleeps, the sessions of the players relayed once it is awake, and who may use it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::de::spanned_duration;
use crate::config::diag::Problems;
use crate::listener::access::{AccessKeys, AddressRules, read_address_keys};
use crate::listener::udp::config::{SessionBounds, Sessions, check_sessions};

/// A `bedrock` listener: Minecraft Bedrock (RakNet over UDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bedrock {
    pub bind: SocketAddr,
    /// The server-list entry while the service sleeps, wakes (`{eta}`: the time left) or
    /// failed to start.
    pub motd_asleep: String,
    pub motd_waking: String,
    pub motd_failed: String,
    /// The protocol number and version shown before the server has answered a ping once.
    pub protocol: u32,
    pub version: String,
    /// The maximum players shown before the server has answered a ping once.
    pub max_players: u32,
    /// How long a pong of the awake server answers other pings (zero: every ping goes on).
    pub ping_cache: Duration,
    /// A player's session ends after this long without a datagram either way.
    pub session_idle: Duration,
    pub max_sessions: u32,
    /// Datagrams one session keeps while the server wakes.
    pub queue: usize,
    /// The server's Bedrock port, when not the port of the service's address (Geyser on a
    /// Java server: 19132).
    pub backend_port: Option<u16>,
    pub rules: AddressRules,
}

/// Bedrock's own default port.
pub const DEFAULT_PORT: u16 = 19132;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BedrockListenConfig {
    #[serde(default = "default_bind")]
    bind: SocketAddr,
    #[serde(default = "default_motd_asleep")]
    motd_asleep: String,
    #[serde(default = "default_motd_waking")]
    motd_waking: String,
    #[serde(default = "default_motd_failed")]
    motd_failed: String,
    #[serde(default = "default_protocol")]
    protocol: u32,
    #[serde(default = "default_version")]
    version: String,
    #[serde(default = "default_max_players")]
    max_players: u32,
    #[serde(default = "default_ping_cache", deserialize_with = "spanned_duration")]
    ping_cache: Spanned<Duration>,
    #[serde(
        default = "default_session_idle",
        deserialize_with = "spanned_duration"
    )]
    session_idle: Spanned<Duration>,
    #[serde(default = "default_max_sessions")]
    max_sessions: Spanned<u32>,
    #[serde(default = "default_queue")]
    queue: Spanned<usize>,
    backend_port: Option<u16>,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))
}
fn default_motd_asleep() -> String {
    "§7sleeping — join to wake".to_string()
}
fn default_motd_waking() -> String {
    "§estarting — ready in {eta}".to_string()
}
fn default_motd_failed() -> String {
    "§cthe server could not start — join to try again".to_string()
}
/// Bedrock 1.21.50's.
fn default_protocol() -> u32 {
    766
}
fn default_version() -> String {
    "1.21.50".to_string()
}
fn default_max_players() -> u32 {
    10
}
fn default_ping_cache() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(1))
}
/// RakNet clients ping a connected server every few seconds: a session idle this long has
/// lost its client.
fn default_session_idle() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(30))
}
fn default_max_sessions() -> Spanned<u32> {
    Spanned::new(0..0, 256)
}
/// A joining client repeats its request about once a second: this holds a boot of a minute.
fn default_queue() -> Spanned<usize> {
    Spanned::new(0..0, 64)
}

pub(crate) fn read_bedrock(
    c: BedrockListenConfig,
    keys: &AccessKeys,
    problems: &mut Problems<'_>,
) -> Option<Bedrock> {
    let mut ok = true;
    let cache = *c.ping_cache.get_ref();
    if cache > Duration::from_secs(60) {
        problems.add(
            Some(c.ping_cache.span()),
            format!(
                "ping_cache = \"{}\" is over a minute",
                humantime::format_duration(cache)
            ),
            "keep it short (the default is 1s), or \"0s\" to send every ping to the server",
        );
        ok = false;
    }
    ok &= check_sessions(
        &Sessions {
            idle: &c.session_idle,
            max: &c.max_sessions,
            queue: &c.queue,
        },
        &SessionBounds {
            idle: Duration::from_secs(5)..=Duration::from_secs(3600),
            idle_hint: "give a player's session between 5s and 1h without traffic; the default is 30s",
            who: "player",
            max_default: 256,
            waking: "server",
        },
        problems,
    );
    let (rules, _) = read_address_keys(keys, problems)?;
    if let Some(first) = keys.trusted_proxies.first() {
        problems.add(
            Some(first.span()),
            "`trusted_proxies` does not apply to a bedrock listener",
            "remove it: RakNet datagrams carry no PROXY header here",
        );
        ok = false;
    }
    ok.then(|| Bedrock {
        bind: c.bind,
        motd_asleep: c.motd_asleep,
        motd_waking: c.motd_waking,
        motd_failed: c.motd_failed,
        protocol: c.protocol,
        version: c.version,
        max_players: c.max_players,
        ping_cache: cache,
        session_idle: c.session_idle.into_inner(),
        max_sessions: c.max_sessions.into_inner(),
        queue: c.queue.into_inner(),
        backend_port: c.backend_port,
        rules,
    })
}
