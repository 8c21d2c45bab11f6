//! Who may wake a service through a `minecraft` listener: allow- and deny-lists of player
//! names, UUIDs and IP ranges (the lists, the ranges and the wake rate are the listeners'
//! shared ones, `listener::access`).
//!
//! Names and UUIDs are what the client claims in its login start: wakegate does not
//! authenticate players (the backend's online mode does, once it runs), so the lists decide
//! who may cost money, not who may play.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::listener::access::{IpNet, Lists};
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
    pub fn matches(&self, who: &Who<'_>) -> bool {
        match self {
            Subject::Name(name) => who.name.eq_ignore_ascii_case(name),
            Subject::Uuid(uuid) => who.uuid == Some(*uuid),
            Subject::Net(net) => net.contains(who.ip),
        }
    }
}

/// The player asking to wake a service.
pub struct Who<'a> {
    pub name: &'a str,
    pub uuid: Option<Uuid>,
    pub ip: IpAddr,
}

/// The allow- and deny-lists of one listener entry: players matching an entry of `deny` never
/// wake the service, and when `allow` is not empty only players matching one of its entries do.
pub type Access = Lists<Subject>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Why the player `name` from `ip` may not wake the service, if it may not.
    fn refuse(access: &Access, name: &str, ip: &str) -> Option<String> {
        let who = Who {
            name,
            uuid: None,
            ip: ip.parse().unwrap(),
        };
        access.refuse(|s| s.matches(&who))
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
        assert_eq!(refuse(&access, "Steve", "10.0.0.1"), None);
        assert_eq!(refuse(&access, "ALEX", "192.0.2.1"), None);
        let denied = refuse(&access, "Steve", "10.0.0.66").unwrap();
        assert_eq!(denied, "on the deny-list (addresses 10.0.0.66/32)");
        let outside = refuse(&access, "Steve", "192.0.2.1").unwrap();
        assert_eq!(outside, "not on the allow-list");
    }
}
