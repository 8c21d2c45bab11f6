//! The `tcp` listener's table, read into [`Tcp`]: what wakes the service, who may use it, the
//! load balancers in front and the PROXY header written to the backend.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::de::spanned_duration;
use crate::config::diag::Problems;
use crate::listener::access::{AccessKeys, AddressRules, IpNet, read_address_keys};
use crate::listener::admission::default_max_connections_per_address;

/// A `tcp` listener: forwards every byte, and wakes the service on a connection or on its
/// first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcp {
    pub bind: SocketAddr,
    /// Open connections one client address may have (0: no cap).
    pub max_connections_per_address: u32,
    /// What a client must do, while the service is not awake, before a wake starts.
    pub wake_on: WakeOn,
    /// How long a client has for its first byte (`wake_on = "data"`, while not awake) and a
    /// trusted proxy for its PROXY header.
    pub head_timeout: Duration,
    /// Who may use the service, and how often one address may wake it.
    pub rules: AddressRules,
    /// Load balancers whose PROXY header names the real client.
    pub trusted_proxies: Vec<IpNet>,
    /// Write a PROXY header of this version to the backend first.
    pub proxy_protocol: Option<ProxyVersion>,
}

/// What wakes a service behind a `tcp` listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeOn {
    /// A connection.
    Connect,
    /// A connection's first byte: a port scan, which connects and closes, never wakes it.
    Data,
}

/// The PROXY protocol header written to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// HAProxy's text form.
    V1,
    /// HAProxy's binary form.
    V2,
}

/// A `tcp` listener table, as written (less its `AccessKeys`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcpListenConfig {
    bind: Spanned<SocketAddr>,
    #[serde(default = "default_max_connections_per_address")]
    max_connections_per_address: u32,
    #[serde(default = "default_wake_on")]
    wake_on: WakeOn,
    #[serde(
        default = "default_head_timeout",
        deserialize_with = "spanned_duration"
    )]
    head_timeout: Spanned<Duration>,
    #[serde(default)]
    proxy_protocol: Option<ProxyVersion>,
}

fn default_wake_on() -> WakeOn {
    WakeOn::Connect
}

/// Time enough for a person on a slow link, as for the other listeners' first bytes.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
fn default_head_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, DEFAULT_HEAD_TIMEOUT)
}

/// Checks a `tcp` listener's values beyond their types.
pub(crate) fn read_tcp(
    c: TcpListenConfig,
    keys: &AccessKeys,
    problems: &mut Problems<'_>,
) -> Option<Tcp> {
    let head_timeout = *c.head_timeout.get_ref();
    let timeout_ok = !head_timeout.is_zero() && head_timeout <= Duration::from_secs(3600);
    if !timeout_ok {
        problems.add(
            Some(c.head_timeout.span()),
            format!(
                "head_timeout = \"{}\" is out of range",
                humantime::format_duration(head_timeout)
            ),
            "give a client between 1s and 1h for its first byte; the default is 10s",
        );
    }
    let (rules, trusted_proxies) = read_address_keys(keys, problems)?;
    timeout_ok.then(|| Tcp {
        bind: c.bind.into_inner(),
        max_connections_per_address: c.max_connections_per_address,
        wake_on: c.wake_on,
        head_timeout,
        rules,
        trusted_proxies,
        proxy_protocol: c.proxy_protocol,
    })
}
