//! The `http` listener's table, read into [`Http`]: hostnames, what a request gets while the
//! service wakes, TLS files, the waiting page and the requests that never wake it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::tls::{self, TlsFiles};
use crate::config::de::spanned_duration;
use crate::config::diag::Problems;
use crate::listener::access::{AccessKeys, AddressRules, IpNet, read_address_keys};
use crate::listener::admission::default_max_connections_per_address;
use crate::listener::hostnames::{Hostnames, read_hostnames};

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
    /// How long a new connection has for its TLS handshake and the whole head of its first
    /// request.
    pub head_timeout: Duration,
    /// How long a connection may stay with no request in flight after a response, until the
    /// next request's head is complete.
    pub keepalive_timeout: Duration,
    /// Open connections one client address may have on this socket (0: no cap).
    pub max_connections_per_address: u32,
    /// Who may use the service, and how often one address may wake it.
    pub rules: AddressRules,
    /// Load balancers whose PROXY header names the real client.
    pub trusted_proxies: Vec<IpNet>,
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

/// An `http` listener table, as written (less its `AccessKeys`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpListenConfig {
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
    #[serde(
        default = "default_head_timeout",
        deserialize_with = "spanned_duration"
    )]
    head_timeout: Spanned<Duration>,
    #[serde(
        default = "default_keepalive_timeout",
        deserialize_with = "spanned_duration"
    )]
    keepalive_timeout: Spanned<Duration>,
    #[serde(default = "default_max_connections_per_address")]
    max_connections_per_address: u32,
}

fn default_strategy() -> Strategy {
    Strategy::Auto
}
fn default_block_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(30))
}
/// Time enough for a person on a slow link; a client that sends nothing is closed then.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
fn default_head_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, DEFAULT_HEAD_TIMEOUT)
}
/// Browsers keep an idle connection for minutes; a new one costs a round trip (and a TLS
/// handshake) when the next page is long after the last.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(30);
fn default_keepalive_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, DEFAULT_KEEPALIVE_TIMEOUT)
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

/// Checks an `http` listener's values beyond their types; reads its page template and checks
/// its certificate and key, so a mistake shows in `config check` rather than at start.
pub(crate) fn read_http(
    c: HttpListenConfig,
    keys: &AccessKeys,
    problems: &mut Problems<'_>,
) -> Option<Http> {
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
    for (key, value) in [
        ("head_timeout", &c.head_timeout),
        ("keepalive_timeout", &c.keepalive_timeout),
    ] {
        let timeout = *value.get_ref();
        if timeout.is_zero() || timeout > Duration::from_secs(3600) {
            problems.add(
                Some(value.span()),
                format!(
                    "{key} = \"{}\" is out of range",
                    humantime::format_duration(timeout)
                ),
                "give it between 1s and 1h; the defaults are head_timeout = \"10s\" and keepalive_timeout = \"30s\"",
            );
            ok = false;
        }
    }
    let tls = tls::read_files(c.tls_cert, c.tls_key, problems).unwrap_or_else(|| {
        ok = false;
        None
    });
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
    let (rules, trusted_proxies) = read_address_keys(keys, problems)?;
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
        head_timeout: c.head_timeout.into_inner(),
        keepalive_timeout: c.keepalive_timeout.into_inner(),
        max_connections_per_address: c.max_connections_per_address,
        rules,
        trusted_proxies,
    })
}
