//! Who may reach a service through a listener, by client address: IP ranges (`allow`, `deny`,
//! `trusted_proxies`), allow- and deny-lists of any kind of rule ([`Lists`]), and how often one
//! address may start a wake ([`WakeRate`], [`RateLimiter`]). `tcp` and `http` listeners apply
//! them as [`AddressCheck`]; the `minecraft` listener adds player names and UUIDs to its lists.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::config::de::read;
use crate::config::diag::Problems;

/// An IP range, IPv4 or IPv6 (`ipnet` does the matching); a lone address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // A client on an IPv6 socket that is really IPv4 (::ffff:a.b.c.d) matches IPv4 ranges.
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// Parsed by hand rather than by `ipnet`, for a lone address without `/32` and for
    /// messages that say what was wrong.
    fn from_str(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or a CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has a prefix length over {max}"))?,
        };
        let net = ipnet::IpNet::new(addr, prefix)
            .map_err(|_| format!("`{text}` has a prefix length over {max}"))?;
        Ok(IpNet(net))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Whether one of `nets` holds `ip`.
pub fn any_contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(ip))
}

/// An allow-list and a deny-list of rules of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lists<R> {
    /// When not empty, only clients matching one entry pass.
    pub allow: Vec<R>,
    /// Clients matching an entry never pass, even when allowed.
    pub deny: Vec<R>,
}

impl<R> Default for Lists<R> {
    fn default() -> Lists<R> {
        Lists {
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

impl<R: fmt::Display> Lists<R> {
    /// Why a client the rules it `matches` describe may not pass, if it may not: deny wins.
    pub fn refuse(&self, matches: impl Fn(&R) -> bool) -> Option<String> {
        if let Some(rule) = self.deny.iter().find(|r| matches(r)) {
            return Some(format!("on the deny-list ({rule})"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(matches) {
            return Some("not on the allow-list".to_string());
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// How many wakes one IP address may start per period, e.g. `3/1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WakeRate {
    pub count: u32,
    pub per: Duration,
}

impl FromStr for WakeRate {
    type Err = String;

    fn from_str(text: &str) -> Result<WakeRate, String> {
        let bad = || format!("`{text}` is not COUNT/PERIOD");
        let (count, per) = text.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = crate::config::de::parse_duration(per.trim()).map_err(|_| bad())?;
        if count == 0 || per.is_zero() {
            return Err(format!("`{text}` allows no wake at all"));
        }
        if per > Duration::from_secs(24 * 3600) {
            return Err(format!("`{text}` has a period over 24h"));
        }
        Ok(WakeRate { count, per })
    }
}

impl fmt::Display for WakeRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

/// Beyond this many addresses, the ones whose attempts have all expired are forgotten at once.
const MAX_TRACKED: usize = 4096;

/// Counts wake attempts per IP address over a sliding window.
///
/// Not `governor`: its GCRA refills one attempt every `per / count` (a `3/1m` address could try
/// again 20 s after its third attempt, where this window holds it off until a minute after its
/// first), it has no notion of the first refusal of a window (which gets an event, the rest a
/// log line), and it keeps its own clock where tests run on tokio's paused time.
#[derive(Debug)]
pub struct RateLimiter {
    rate: WakeRate,
    // A std Mutex: the critical section is a few comparisons and never awaits.
    attempts: Mutex<HashMap<IpAddr, Window>>,
}

/// One address's attempts within the period.
#[derive(Debug, Default)]
struct Window {
    /// The attempts let through, oldest first.
    times: VecDeque<Instant>,
    /// Refused since the last attempt let through.
    refused: bool,
}

/// A refused attempt: when the address may try again, and whether it is the first refusal of
/// this window (worth one event; the rest only a log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    pub first: bool,
}

impl RateLimiter {
    pub fn new(rate: WakeRate) -> RateLimiter {
        RateLimiter {
            rate,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> WakeRate {
        self.rate
    }

    /// Counts an attempt from `ip`, or says when it may try again.
    pub fn attempt(&self, ip: IpAddr) -> Result<(), Limited> {
        let now = Instant::now();
        let ip = ip.to_canonical();
        let per = self.rate.per;
        let mut attempts = self.attempts.lock().unwrap();
        if attempts.len() >= MAX_TRACKED {
            attempts.retain(|_, w| w.times.back().is_some_and(|t| now.duration_since(*t) < per));
        }
        let window = attempts.entry(ip).or_default();
        while window
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= per)
        {
            window.times.pop_front();
        }
        if window.times.len() < self.rate.count as usize {
            window.times.push_back(now);
            window.refused = false;
            return Ok(());
        }
        let first = !std::mem::replace(&mut window.refused, true);
        let oldest = window.times[0];
        Err(Limited {
            retry_after: per.saturating_sub(now.duration_since(oldest)),
            first,
        })
    }
}

/// The address rules of a `tcp` or `http` listener entry, as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressRules {
    /// Who may use the service at all, awake or not.
    pub lists: Lists<IpNet>,
    /// How many wakes one address may start per period.
    pub wake_rate: Option<WakeRate>,
}

/// [`AddressRules`] at run time: the lists and the attempts counted so far.
#[derive(Debug)]
pub struct AddressCheck {
    lists: Lists<IpNet>,
    limiter: Option<RateLimiter>,
}

/// A wake refused: the address has started `rate` wakes in the period already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverRate {
    pub rate: WakeRate,
    pub limited: Limited,
}

impl AddressCheck {
    pub fn new(rules: &AddressRules) -> AddressCheck {
        AddressCheck {
            lists: rules.lists.clone(),
            limiter: rules.wake_rate.map(RateLimiter::new),
        }
    }

    /// Why a client from `ip` may not use the service, if it may not.
    pub fn denied(&self, ip: IpAddr) -> Option<String> {
        self.lists.refuse(|net| net.contains(ip))
    }

    /// Counts a wake `ip` is about to start, or refuses it over the wake rate.
    pub fn wake(&self, ip: IpAddr) -> Result<(), OverRate> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.attempt(ip).map_err(|limited| OverRate {
            rate: limiter.rate(),
            limited,
        })
    }
}

impl OverRate {
    /// When the address may try again, in whole seconds (at least one).
    pub fn retry_after_secs(&self) -> u64 {
        let wait = self.limited.retry_after;
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }
}

impl fmt::Display for OverRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "over the wake rate of {} per address (may try again in {}s)",
            self.rate,
            self.retry_after_secs()
        )
    }
}

/// What `allow`, `deny` and `trusted_proxies` take, for hints.
pub const NETS_HINT: &str = "list IP addresses or CIDR ranges, IPv4 or IPv6, e.g. [\"192.0.2.7\", \"10.0.0.0/8\", \"2001:db8::/32\"]";

/// Reads a list of `key` whose entries are parsed by `T::from_str`; each bad entry is a
/// problem at its place, named in the message.
pub(crate) fn read_list<T: FromStr<Err = String>>(
    list: &[Spanned<String>],
    key: &str,
    hint: &str,
    problems: &mut Problems<'_>,
) -> Option<Vec<T>> {
    let mut ok = true;
    let mut out = Vec::new();
    for item in list {
        match item.get_ref().parse::<T>() {
            Ok(rule) => out.push(rule),
            Err(e) => {
                problems.add(Some(item.span()), format!("{key}: {e}"), hint);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Reads `wake_rate = "COUNT/PERIOD"`.
pub(crate) fn read_wake_rate(
    text: Option<&Spanned<String>>,
    problems: &mut Problems<'_>,
) -> Result<Option<WakeRate>, ()> {
    let Some(text) = text else { return Ok(None) };
    match text.get_ref().parse::<WakeRate>() {
        Ok(rate) => Ok(Some(rate)),
        Err(e) => {
            problems.add(
                Some(text.span()),
                format!("wake_rate {e}"),
                "write how many wakes one IP address may start per period, e.g. wake_rate = \"3/1m\"",
            );
            Err(())
        }
    }
}

/// The keys of a listener table about who may reach its service, the same on every listener
/// type; `allow` and `deny` are read by the type (the `minecraft` listener takes player names
/// and UUIDs too).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessKeys {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub wake_rate: Option<Spanned<String>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
}

const ACCESS_KEYS: [&str; 4] = ["allow", "deny", "wake_rate", "trusted_proxies"];

/// Takes the [`AccessKeys`] out of a listener table, so that its type's struct reads the rest.
pub(crate) fn split_access_keys<'i>(
    value: Spanned<DeValue<'i>>,
    problems: &mut Problems<'_>,
) -> Option<(AccessKeys, Spanned<DeValue<'i>>)> {
    let span = value.span();
    let mut table = match value.into_inner() {
        DeValue::Table(table) => table,
        // Not a table: the type's struct says so.
        other => return Some((AccessKeys::default(), Spanned::new(span, other))),
    };
    let mut keys = DeTable::new();
    for name in ACCESS_KEYS {
        if let Some((key, value)) = table.remove_entry(name) {
            keys.insert(key, value);
        }
    }
    let keys = read::<AccessKeys>(Spanned::new(span.clone(), DeValue::Table(keys)), problems)?;
    Some((keys, Spanned::new(span, DeValue::Table(table))))
}

/// The access keys as read: the lists (of rules `R`), the wake rate, the trusted proxies.
pub(crate) type ReadKeys<R> = (Lists<R>, Option<WakeRate>, Vec<IpNet>);

/// Reads the access keys of a listener whose `allow` and `deny` entries are rules `R`
/// (`hint` says what they may be); every bad entry is a problem.
pub(crate) fn read_access_keys<R: FromStr<Err = String>>(
    keys: &AccessKeys,
    hint: &str,
    problems: &mut Problems<'_>,
) -> Option<ReadKeys<R>> {
    let allow = read_list(&keys.allow, "allow", hint, problems);
    let deny = read_list(&keys.deny, "deny", hint, problems);
    let wake_rate = read_wake_rate(keys.wake_rate.as_ref(), problems);
    let trusted = read_list(
        &keys.trusted_proxies,
        "trusted_proxies",
        NETS_HINT,
        problems,
    );
    let lists = Lists {
        allow: allow?,
        deny: deny?,
    };
    Some((lists, wake_rate.ok()?, trusted?))
}

/// Reads the access keys of a `tcp` or `http` listener: its [`AddressRules`] and its trusted
/// proxies.
pub(crate) fn read_address_keys(
    keys: &AccessKeys,
    problems: &mut Problems<'_>,
) -> Option<(AddressRules, Vec<IpNet>)> {
    let (lists, wake_rate, trusted) = read_access_keys(keys, NETS_HINT, problems)?;
    Some((AddressRules { lists, wake_rate }, trusted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_match_their_addresses_only() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("2001:db8::1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("192.0.2.1")));
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("10.0.0/8".parse::<IpNet>().is_err());
    }

    #[test]
    fn rates_parse_and_limit() {
        assert_eq!(
            "3/1m".parse(),
            Ok(WakeRate {
                count: 3,
                per: Duration::from_secs(60)
            })
        );
        assert!("0/1m".parse::<WakeRate>().is_err());
        assert!("3 per minute".parse::<WakeRate>().is_err());
        let limiter = RateLimiter::new("2/1h".parse().unwrap());
        let ip = ip("192.0.2.1");
        assert!(limiter.attempt(ip).is_ok());
        assert!(limiter.attempt(ip).is_ok());
        let limited = limiter.attempt(ip).unwrap_err();
        assert!(limited.first);
        assert!(limited.retry_after > Duration::from_secs(3500));
        assert!(!limiter.attempt(ip).unwrap_err().first);
        assert!(limiter.attempt("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_may_wake_again_once_its_window_has_passed() {
        let limiter = RateLimiter::new("1/10s".parse().unwrap());
        let ip = ip("2001:db8::7");
        assert!(limiter.attempt(ip).is_ok());
        tokio::time::advance(Duration::from_secs(4)).await;
        let limited = limiter.attempt(ip).unwrap_err();
        assert_eq!(limited.retry_after, Duration::from_secs(6));
        // The refusal took no place in the window: the address may go at the time it was told.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(limiter.attempt(ip).is_ok());
        // A new window, a new first refusal.
        assert!(limiter.attempt(ip).unwrap_err().first);
        assert!(!limiter.attempt(ip).unwrap_err().first);
    }

    #[test]
    fn deny_wins_and_an_allow_list_keeps_everyone_else_out() {
        let rules = AddressRules {
            lists: Lists {
                allow: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                deny: vec!["10.0.0.66".parse().unwrap()],
            },
            wake_rate: None,
        };
        let check = AddressCheck::new(&rules);
        assert_eq!(check.denied(ip("10.0.0.1")), None);
        assert_eq!(check.denied(ip("::ffff:10.9.9.9")), None);
        assert_eq!(check.denied(ip("2001:db8::1")), None);
        let denied = check.denied(ip("10.0.0.66")).unwrap();
        assert_eq!(denied, "on the deny-list (10.0.0.66/32)");
        let outside = check.denied(ip("192.0.2.1")).unwrap();
        assert_eq!(outside, "not on the allow-list");
        // No lists: everyone passes; no wake_rate: every wake too.
        let open = AddressCheck::new(&AddressRules::default());
        assert_eq!(open.denied(ip("192.0.2.1")), None);
        for _ in 0..100 {
            assert_eq!(open.wake(ip("192.0.2.1")), Ok(()));
        }
    }

    #[test]
    fn a_wake_over_the_rate_says_when_to_try_again() {
        let rules = AddressRules {
            lists: Lists::default(),
            wake_rate: Some("1/1m".parse().unwrap()),
        };
        let check = AddressCheck::new(&rules);
        assert_eq!(check.wake(ip("192.0.2.1")), Ok(()));
        let refused = check.wake(ip("192.0.2.1")).unwrap_err();
        assert!(refused.limited.first, "{refused:?}");
        assert!(
            (59..=60).contains(&refused.retry_after_secs()),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .starts_with("over the wake rate of 1/1m per address (may try again in "),
            "{refused}"
        );
        assert_eq!(check.wake(ip("192.0.2.2")), Ok(()));
    }
}
