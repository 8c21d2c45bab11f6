//! The `minecraft` listener's table, read into [`Minecraft`]: hostnames, the server list while
//! asleep, what a login does while the service wakes, and who may wake it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::access::{Access, Subject};
use super::status::{Text, load_icon};
use crate::config::de::{optional_spanned_duration, spanned_duration};
use crate::config::diag::Problems;
use crate::listener::access::{AccessKeys, IpNet, WakeRate, read_access_keys};
use crate::listener::admission::default_max_connections_per_address;
use crate::listener::hostnames::{Hostnames, read_hostnames};

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
    /// How long a client has to send its handshake, and each packet of the status and login
    /// stages after it.
    pub head_timeout: Duration,
    /// Open connections one client address may have on this socket (0: no cap).
    pub max_connections_per_address: u32,
    /// Load balancers whose PROXY protocol header names the real client (see
    /// `listener::client`).
    pub trusted_proxies: Vec<IpNet>,
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

/// A `minecraft` listener table, as written (less its `AccessKeys`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MinecraftListenConfig {
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
    player_sample: Vec<String>,
    #[serde(default)]
    icon: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "optional_spanned_duration")]
    status_cache: Option<Spanned<Duration>>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(
        default = "default_head_timeout",
        deserialize_with = "spanned_duration"
    )]
    head_timeout: Spanned<Duration>,
    #[serde(default = "default_max_connections_per_address")]
    max_connections_per_address: u32,
}

/// What vanilla servers allow a client between packets before login completes.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
fn default_head_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, DEFAULT_HEAD_TIMEOUT)
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

fn default_kick_message() -> String {
    "§eThe server is starting. Join again in a moment.".to_string()
}

/// Checks a `minecraft` listener's values beyond their types.
pub(crate) fn read_minecraft(
    c: MinecraftListenConfig,
    keys: &AccessKeys,
    problems: &mut Problems<'_>,
) -> Option<Minecraft> {
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
    let head_timeout = *c.head_timeout.get_ref();
    if head_timeout.is_zero() || head_timeout > Duration::from_secs(600) {
        problems.add(
            Some(c.head_timeout.span()),
            format!(
                "head_timeout = \"{}\" is out of range",
                humantime::format_duration(head_timeout)
            ),
            "give a client between 1s and 10m for each packet before login; the default is 10s",
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
    let extra = read_minecraft_extras(&c, keys, &hostnames, problems);
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
        head_timeout,
        max_connections_per_address: c.max_connections_per_address,
        trusted_proxies: extra.trusted_proxies,
    })
}

/// The values of a `minecraft` listener checked against each other or the file system.
struct MinecraftExtras {
    public_address: Option<(String, u16)>,
    access: Access,
    wake_rate: Option<WakeRate>,
    icon: Option<String>,
    trusted_proxies: Vec<IpNet>,
}

fn read_minecraft_extras(
    c: &MinecraftListenConfig,
    keys: &AccessKeys,
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
    let hint = "list player names (\"Steve\"), UUIDs (\"069a79f4-44e9-4726-a5be-fca90e38aaf5\") and IP addresses or ranges (\"10.0.0.0/8\", \"2001:db8::/32\")";
    let read = read_access_keys::<Subject>(keys, hint, problems);
    ok &= read.is_some();
    let (access, wake_rate, trusted_proxies) = read.unwrap_or_default();
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
        trusted_proxies,
    })
}
