//! The `minecraft` listener's table, read into [`Minecraft`]: hostnames, the server list while
//! asleep, what a login does while the service wakes, who may wake it, and whether players are
//! handed to the server itself (`transfer_to`).

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
    /// `transfer_to = "backend"`: players who can follow a Transfer packet are handed to the
    /// server itself instead of being forwarded (none: forwarded through wakegate).
    pub handoff: Option<Handoff>,
    /// Load balancers whose PROXY protocol header names the real client (see
    /// `listener::client`).
    pub trusted_proxies: Vec<IpNet>,
}

/// Where players end up once the service is awake (`transfer_to`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferTo {
    /// Forwarded through wakegate, which carries their traffic.
    #[default]
    Gateway,
    /// Clients from 1.20.5 are sent to the server's own address with a Transfer packet.
    Backend,
}

/// The direct handoff (`transfer_to = "backend"`): where a handed-off player is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// `transfer_host`: the name (or IP) players are sent to instead of the IP of the backend's
    /// address, e.g. a `[service.dns]` record that follows the server's public IP.
    pub host: Option<String>,
    /// The port `transfer_host` names; without one, the backend's port.
    pub port: Option<u16>,
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
    #[serde(default = "default_transfer_to")]
    transfer_to: Spanned<TransferTo>,
    #[serde(default)]
    transfer_host: Option<Spanned<String>>,
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
fn default_transfer_to() -> Spanned<TransferTo> {
    Spanned::new(0..0, TransferTo::Gateway)
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
        handoff: extra.handoff,
        trusted_proxies: extra.trusted_proxies,
    })
}

/// The values of a `minecraft` listener checked against each other or the file system.
struct MinecraftExtras {
    public_address: Option<(String, u16)>,
    handoff: Option<Handoff>,
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
    let handoff = read_handoff(c, problems);
    ok &= handoff.is_some();
    let handoff = handoff.flatten();
    // With the handoff, `public_address` is only where a player goes when the server refuses
    // transfers.
    if join.contains(&Join::Transfer)
        && handoff.is_none()
        && public_address.is_none()
        && c.public_address.is_none()
    {
        problems.add(
            Some(c.join.span()),
            "join strategy `transfer` needs `public_address`",
            "add public_address = \"HOST:PORT\": where players reach this gateway, the address a transferred client reconnects to (or hand players to the server itself with transfer_to = \"backend\")",
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
        handoff,
        access,
        wake_rate,
        icon,
        trusted_proxies,
    })
}

/// `transfer_to` and `transfer_host`: `Some(None)` when players are forwarded through wakegate,
/// `None` after a problem.
fn read_handoff(c: &MinecraftListenConfig, problems: &mut Problems<'_>) -> Option<Option<Handoff>> {
    let backend = *c.transfer_to.get_ref() == TransferTo::Backend;
    let mut ok = true;
    if backend && c.proxy_protocol {
        problems.add(
            Some(c.transfer_to.span()),
            "transfer_to = \"backend\" cannot be used with proxy_protocol = true",
            "a handed-off player connects to the server without a PROXY header, which a server with proxy-protocol enabled refuses: remove one of the two",
        );
        ok = false;
    }
    let (host, port) = match &c.transfer_host {
        None => (None, None),
        Some(text) if !backend => {
            problems.add(
                Some(text.span()),
                "transfer_host is set but players are not handed to the server",
                "add transfer_to = \"backend\", or remove transfer_host",
            );
            return None;
        }
        Some(text) => match parse_transfer_host(text.get_ref()) {
            Ok((host, port)) => (Some(host), port),
            Err(why) => {
                problems.add(
                    Some(text.span()),
                    format!("transfer_host `{}` {why}", text.get_ref()),
                    "write the name or IP players reach the server by, with a port if it is not the backend's: \"direct.example.com\", \"direct.example.com:25565\" or \"[2001:db8::7]:25565\"",
                );
                return None;
            }
        },
    };
    ok.then(|| backend.then_some(Handoff { host, port }))
}

/// What `config check` warns about a listener that hands players to the server itself: a
/// backend at a fixed private address (`fixed`, for the backends that have one) that players
/// elsewhere cannot reach, and an idle timeout too short for the player poll to notice a
/// handed-off player in time (its login at the server, then a poll).
pub fn handoff_warnings(
    listener: &Minecraft,
    idle_timeout: Duration,
    player_poll: Duration,
    fixed: Option<&str>,
) -> Vec<String> {
    let Some(handoff) = &listener.handoff else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    let local = fixed
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| a.ip().is_loopback() || private_ip(a.ip()));
    if let (None, Some(address)) = (&handoff.host, local) {
        warnings.push(format!(
            "transfer_to = \"backend\" hands players to {address}, a private address: players from elsewhere are forwarded through wakegate instead; set transfer_host to the name they reach the server by"
        ));
    }
    // The player logs in at the server (seconds, more on a busy one), then a poll sees it.
    if idle_timeout < player_poll * 2 + Duration::from_secs(60) {
        warnings.push(format!(
            "transfer_to = \"backend\": handed-off players keep the service awake only through the player poll (every {}), and idle_timeout ({}) may end it before the poll sees them; make idle_timeout at least twice player_poll plus a minute",
            humantime::format_duration(player_poll),
            humantime::format_duration(idle_timeout)
        ));
    }
    warnings
}

/// A private address (RFC 1918, shared, link-local, unique local): reached from its own
/// network only.
pub(super) fn private_ip(ip: std::net::IpAddr) -> bool {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && b & 0xc0 == 64)
        }
        std::net::IpAddr::V6(v6) => v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// `host`, `host:port`, an IPv6 address, or `[IPv6]:port`.
fn parse_transfer_host(text: &str) -> Result<(String, Option<u16>), &'static str> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Some(port)),
        _ => Err("has a port that is not a number from 1 to 65535"),
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("opens a `[` it does not close")?;
        let port = match after {
            "" => None,
            _ => port(
                after
                    .strip_prefix(':')
                    .ok_or("has something after `]` that is not :PORT")?,
            )?,
        };
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "holds something in brackets that is not an IPv6 address")?;
        (v6, port)
    } else if text.parse::<std::net::Ipv6Addr>().is_ok() {
        (text, None)
    } else {
        match text.rsplit_once(':') {
            Some((host, p)) => (host, port(p)?),
            None => (text, None),
        }
    };
    let name_like = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    let v6 = host.parse::<std::net::Ipv6Addr>().is_ok();
    if host.is_empty() || host.len() > 253 || !(name_like || v6) {
        return Err("is not a host name or an IP address");
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_host_is_a_name_or_an_ip_with_an_optional_port() {
        let ok = |text: &str| parse_transfer_host(text).unwrap();
        let own = |host: &str, port| (host.to_string(), port);
        assert_eq!(ok("direct.example.com"), own("direct.example.com", None));
        assert_eq!(
            ok("direct.example.com:25570"),
            own("direct.example.com", Some(25570))
        );
        assert_eq!(ok("203.0.113.7:25565"), own("203.0.113.7", Some(25565)));
        assert_eq!(ok("2001:db8::7"), own("2001:db8::7", None));
        assert_eq!(ok("[2001:db8::7]"), own("2001:db8::7", None));
        assert_eq!(ok("[2001:db8::7]:25565"), own("2001:db8::7", Some(25565)));
        for bad in [
            "",
            ":25565",
            "mc.example.com:0",
            "mc.example.com:x",
            "a b",
            "[::1",
            "[mc]:1",
            "a:b:1",
            "[::1]x",
        ] {
            assert!(parse_transfer_host(bad).is_err(), "{bad:?} was taken");
        }
    }
}
