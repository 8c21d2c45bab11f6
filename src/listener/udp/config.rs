//! The `udp` listener's table, read into [`Udp`]: what wakes the service, how long a session
//! lives without traffic, how many there may be, how much one keeps while the backend wakes,
//! and who may use it.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::de::spanned_duration;
use crate::config::diag::Problems;
use crate::listener::access::{AccessKeys, AddressRules, read_address_keys};

/// A `udp` listener: datagrams from each client address form a session with its own socket
/// to the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    pub bind: SocketAddr,
    /// While the service is not awake, only a datagram starting with these bytes starts a
    /// session (and a wake); `None`: any datagram.
    pub wake_on: Option<Vec<u8>>,
    /// A session ends after this long without a datagram either way.
    pub session_idle: Duration,
    /// Live sessions at most; a new client past it is refused.
    pub max_sessions: u32,
    /// Datagrams one session keeps while the backend wakes; the excess is dropped.
    pub queue: usize,
    /// Who may use the service, and how often one address may wake it.
    pub rules: AddressRules,
    /// The backend's port for the datagrams, when not the port of the service's address.
    pub backend_port: Option<u16>,
}

/// A `udp` listener table, as written (less its `AccessKeys`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UdpListenConfig {
    bind: Spanned<SocketAddr>,
    wake_on: Option<Spanned<String>>,
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

/// Long enough for a game client between keep-alives, short enough to free a session soon
/// after its client left (UDP says nothing when it does).
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(60);
fn default_session_idle() -> Spanned<Duration> {
    Spanned::new(0..0, DEFAULT_SESSION_IDLE)
}
/// Each session holds a socket and a task: a few KiB, and one descriptor.
pub const DEFAULT_MAX_SESSIONS: u32 = 1024;
fn default_max_sessions() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_MAX_SESSIONS)
}
/// Enough for a client's retries during a boot of a minute or so.
pub const DEFAULT_QUEUE: usize = 64;
fn default_queue() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_QUEUE)
}

/// Bytes written as `hex:0a0b…` (spaces allowed) or `text:…`.
pub fn parse_bytes(text: &str) -> Result<Vec<u8>, String> {
    if let Some(text) = text.strip_prefix("text:") {
        return Ok(text.as_bytes().to_vec());
    }
    let Some(hex) = text.strip_prefix("hex:") else {
        return Err(format!(
            "`{text}` is neither `hex:…` nor `text:…`; write e.g. \"hex:0001\" or \"text:PING\""
        ));
    };
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("`{text}` has an odd number of hex digits"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("`{text}` holds a character that is not a hex digit"))
        })
        .collect()
}

/// Checks a `udp` listener's values beyond their types.
pub(crate) fn read_udp(
    c: UdpListenConfig,
    keys: &AccessKeys,
    problems: &mut Problems<'_>,
) -> Option<Udp> {
    let mut ok = true;
    let wake_on = match &c.wake_on {
        None => None,
        Some(text) => match parse_bytes(text.get_ref()) {
            Ok(bytes) if bytes.is_empty() => {
                problems.add(
                    Some(text.span()),
                    "`wake_on` is empty",
                    "give the first bytes of a datagram that should wake the service, or remove wake_on",
                );
                ok = false;
                None
            }
            Ok(bytes) => Some(bytes),
            Err(e) => {
                problems.add(
                    Some(text.span()),
                    e,
                    "e.g. wake_on = \"hex:0001\" for datagrams that start with the bytes 00 01",
                );
                ok = false;
                None
            }
        },
    };
    ok &= check_sessions(
        &Sessions {
            idle: &c.session_idle,
            max: &c.max_sessions,
            queue: &c.queue,
        },
        &SessionBounds {
            idle: Duration::from_secs(1)..=Duration::from_secs(24 * 3600),
            idle_hint: "give a session between 1s and 24h without traffic before it ends; the default is 60s",
            who: "client",
            max_default: 1024,
            waking: "backend",
        },
        problems,
    );
    let (rules, _) = read_address_keys(keys, problems)?;
    if let Some(first) = keys.trusted_proxies.first() {
        problems.add(
            Some(first.span()),
            "`trusted_proxies` does not apply to a udp listener",
            "remove it: datagrams carry no PROXY header here",
        );
        ok = false;
    }
    ok.then(|| Udp {
        bind: c.bind.into_inner(),
        wake_on,
        session_idle: c.session_idle.into_inner(),
        max_sessions: c.max_sessions.into_inner(),
        queue: c.queue.into_inner(),
        rules,
        backend_port: c.backend_port,
    })
}

/// The session keys the `udp` and `bedrock` listeners share, as read.
pub(crate) struct Sessions<'a> {
    pub idle: &'a Spanned<Duration>,
    pub max: &'a Spanned<u32>,
    pub queue: &'a Spanned<usize>,
}

/// What a listener type allows of its sessions, and how it names them in a problem.
pub(crate) struct SessionBounds {
    pub idle: std::ops::RangeInclusive<Duration>,
    pub idle_hint: &'static str,
    /// Who a session is: "client", "player".
    pub who: &'static str,
    pub max_default: u32,
    /// What wakes while a session's datagrams wait: "backend", "server".
    pub waking: &'static str,
}

/// Checks `session_idle`, `max_sessions` and `queue`; false (each problem added) when one is
/// out of bounds.
pub(crate) fn check_sessions(
    keys: &Sessions<'_>,
    bounds: &SessionBounds,
    problems: &mut Problems,
) -> bool {
    let mut ok = true;
    let idle = *keys.idle.get_ref();
    if !bounds.idle.contains(&idle) {
        problems.add(
            Some(keys.idle.span()),
            format!(
                "session_idle = \"{}\" is out of range",
                humantime::format_duration(idle)
            ),
            bounds.idle_hint,
        );
        ok = false;
    }
    if *keys.max.get_ref() == 0 {
        problems.add(
            Some(keys.max.span()),
            format!("max_sessions = 0 lets no {} in", bounds.who),
            &format!("raise it; the default is {}", bounds.max_default),
        );
        ok = false;
    }
    if !(1..=4096).contains(keys.queue.get_ref()) {
        problems.add(
            Some(keys.queue.span()),
            format!("queue = {} is out of range", keys.queue.get_ref()),
            &format!(
                "keep between 1 and 4096 datagrams per session while the {} wakes; the default is 64",
                bounds.waking
            ),
        );
        ok = false;
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_hex_or_text() {
        assert_eq!(parse_bytes("hex:00 01ff").unwrap(), vec![0, 1, 255]);
        assert_eq!(parse_bytes("text:PING").unwrap(), b"PING".to_vec());
        assert!(parse_bytes("hex:0").unwrap_err().contains("odd"));
        assert!(parse_bytes("hex:zz").unwrap_err().contains("hex digit"));
        assert!(parse_bytes("0001").unwrap_err().contains("hex:"));
    }
}
