//! Who may wake a service through a `minecraft` listener: allow- and deny-lists of player
//! names, UUIDs and IP ranges, and a limit on how often one IP address may start a wake.
//!
//! Names and UUIDs are what the client claims in its login start: wakegate does not
//! authenticate players (the backend's online mode does, once it runs), so the lists decide
//! who may cost money, not who may play.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::minecraft::Uuid;

/// One entry of an `allow` or `deny` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A player name, matched without regard to case (as Minecraft does).
    Name(String),
    Uuid(Uuid),
    /// An address or a CIDR range, IPv4 or IPv6.
    Net(IpNet),
}

impl FromStr for Subject {
    type Err = String;

    fn from_str(text: &str) -> Result<Subject, String> {
        if text.contains(['.', ':', '/']) {
            return text.parse().map(Subject::Net);
        }
        // Longer than any name and made of hex digits and hyphens: meant as a UUID.
        if text.len() > 16 && text.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return text
                .parse::<Uuid>()
                .map(Subject::Uuid)
                .map_err(|e| e.to_string());
        }
        let name_ok = (1..=16).contains(&text.len())
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if name_ok {
            Ok(Subject::Name(text.to_ascii_lowercase()))
        } else {
            Err(format!(
                "`{text}` is neither a player name (1 to 16 letters, digits or _), a UUID, \
                 nor an IP address or range"
            ))
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Name(name) => write!(f, "player {name}"),
            Subject::Uuid(uuid) => write!(f, "UUID {uuid}"),
            Subject::Net(net) => write!(f, "addresses {net}"),
        }
    }
}

impl Subject {
    fn matches(&self, who: &Who<'_>) -> bool {
        match self {
            Subject::Name(name) => who.name.eq_ignore_ascii_case(name),
            Subject::Uuid(uuid) => who.uuid == Some(*uuid),
            Subject::Net(net) => net.contains(who.ip),
        }
    }
}

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

/// The player asking to wake a service.
pub struct Who<'a> {
    pub name: &'a str,
    pub uuid: Option<Uuid>,
    pub ip: IpAddr,
}

/// The allow- and deny-lists of one listener entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// When not empty, only players matching one entry may wake the service.
    pub allow: Vec<Subject>,
    /// Players matching an entry never wake it, even when allowed.
    pub deny: Vec<Subject>,
}

impl Access {
    /// Why `who` may not wake the service, if it may not.
    pub fn refuse(&self, who: &Who<'_>) -> Option<String> {
        if let Some(rule) = self.deny.iter().find(|s| s.matches(who)) {
            return Some(format!("on the deny-list ({rule})"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|s| s.matches(who)) {
            return Some("not on the allow-list".to_string());
        }
        None
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
        let per = humantime::parse_duration(per.trim()).map_err(|_| bad())?;
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
    attempts: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
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
        let mut attempts = self.attempts.lock().unwrap();
        if attempts.len() >= MAX_TRACKED {
            attempts.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < self.rate.per)
            });
        }
        let times = attempts.entry(ip).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.rate.per)
        {
            times.pop_front();
        }
        if times.len() < self.rate.count as usize {
            times.push_back(now);
            return Ok(());
        }
        // Refused attempts are remembered too (past the count), so only the first is "first".
        let first = times.len() == self.rate.count as usize;
        if first {
            times.push_back(now);
        }
        let oldest = times[0];
        Err(Limited {
            retry_after: self.rate.per.saturating_sub(now.duration_since(oldest)),
            first,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str, ip: &str) -> Who<'static> {
        Who {
            name: Box::leak(name.to_string().into_boxed_str()),
            uuid: None,
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn ranges_match_their_addresses_only() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("10.0.0/8".parse::<IpNet>().is_err());
    }

    #[test]
    fn subjects_are_told_apart() {
        assert_eq!("Steve".parse(), Ok(Subject::Name("steve".into())));
        assert!(matches!(
            "069a79f4-44e9-4726-a5be-fca90e38aaf5".parse(),
            Ok(Subject::Uuid(_))
        ));
        assert!(matches!("::1".parse(), Ok(Subject::Net(_))));
        assert!("not a name!".parse::<Subject>().is_err());
    }

    #[test]
    fn deny_wins_over_allow() {
        let access = Access {
            allow: vec!["10.0.0.0/8".parse().unwrap(), "Alex".parse().unwrap()],
            deny: vec!["10.0.0.66".parse().unwrap()],
        };
        assert_eq!(access.refuse(&who("Steve", "10.0.0.1")), None);
        assert_eq!(access.refuse(&who("ALEX", "192.0.2.1")), None);
        assert!(
            access
                .refuse(&who("Steve", "10.0.0.66"))
                .unwrap()
                .contains("deny")
        );
        assert!(
            access
                .refuse(&who("Steve", "192.0.2.1"))
                .unwrap()
                .contains("allow")
        );
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
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.attempt(ip).is_ok());
        assert!(limiter.attempt(ip).is_ok());
        let limited = limiter.attempt(ip).unwrap_err();
        assert!(limited.first);
        assert!(limited.retry_after > Duration::from_secs(3500));
        assert!(!limiter.attempt(ip).unwrap_err().first);
        assert!(limiter.attempt("192.0.2.2".parse().unwrap()).is_ok());
    }
}
