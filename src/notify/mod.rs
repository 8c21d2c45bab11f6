//! Notifications: each `[[notify]]` target follows the event log from a cursor kept in SQLite
//! and delivers the events it wants, one at a time and in id order, to a Discord webhook or a
//! signed generic webhook. The event log is the outbox: nothing is queued twice, and a target
//! that is down for an hour, or a wakegate that restarts, goes on from its cursor.
//!
//! This module reads the `[[notify]]` tables and holds the filter; `outbox` runs a target,
//! `http` is the client, `discord` and `webhook` shape the requests.

mod discord;
pub(crate) mod http;
mod outbox;
mod turn;
mod webhook;

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::de::{self, Secret};
use crate::config::diag::Problems;
use crate::event::{Event, Kind, State};

pub use outbox::spawn;
pub use webhook::sign;

// ---------------------------------------------------------------------------------------------
// Runtime types

/// A validated `[[notify]]` table: where to send which events.
#[derive(Debug, Clone)]
pub struct Target {
    /// Names the target's cursor in the database; renaming a target starts it afresh from the
    /// newest event.
    pub name: String,
    pub kind: TargetKind,
    /// Discord webhook URLs hold their token: never logged or printed.
    pub url: Secret,
    pub filter: Filter,
    /// The first wait after a failed delivery; doubled on each failure up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long one delivery may take, connecting included.
    pub timeout: Duration,
}

/// Where a target delivers, and how.
#[derive(Debug, Clone)]
pub enum TargetKind {
    /// A Discord webhook: one embed per event.
    Discord,
    /// Any HTTP endpoint: the event as JSON, signed with HMAC-SHA256 over timestamp and body.
    Webhook { secret: Secret },
}

impl TargetKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetKind::Discord => "discord",
            TargetKind::Webhook { .. } => "webhook",
        }
    }
}

/// Which events a target wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only events of these services; every service when `None`.
    pub services: Option<BTreeSet<String>>,
    /// Only events matching one of these; every event but `progress` when `None`.
    pub events: Option<Vec<Match>>,
}

/// One word of an `events` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// A state name (`awake`, `failed`, …): a transition into that state.
    State(State),
    /// A kind name (`transition`, `lease`, `action`, `progress`, …): any event of that kind.
    Kind(Kind),
}

impl Match {
    /// Reads a filter word: a state name first, else an event kind.
    pub fn parse(word: &str) -> Option<Match> {
        State::parse(word)
            .map(Match::State)
            .or_else(|| Kind::parse(word).map(Match::Kind))
    }

    fn matches(self, event: &Event) -> bool {
        match self {
            Match::State(state) => event.kind == Kind::Transition && event.state == state,
            Match::Kind(kind) => event.kind == kind,
        }
    }
}

impl Filter {
    /// Whether the target delivers this event.
    pub fn wants(&self, event: &Event) -> bool {
        let service = self
            .services
            .as_ref()
            .is_none_or(|s| s.contains(&event.service));
        let kind = match &self.events {
            Some(words) => words.iter().any(|m| m.matches(event)),
            // Progress steps ("waiting for … to accept connections") would only be noise.
            None => event.kind != Kind::Progress,
        };
        service && kind
    }
}

// ---------------------------------------------------------------------------------------------
// File types and their checks

/// A `[[notify]]` table without its `type`. One struct for both kinds: `secret` belongs only to
/// `webhook`, which the check below says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyConfig {
    name: Option<Spanned<String>>,
    url: Spanned<String>,
    secret: Option<Spanned<String>>,
    services: Option<Vec<Spanned<String>>>,
    events: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default = "default_retry_min", deserialize_with = "de::duration")]
    retry_min: Duration,
    #[serde(default = "default_retry_max", deserialize_with = "de::duration")]
    retry_max: Duration,
    #[serde(default = "default_timeout", deserialize_with = "de::duration")]
    timeout: Duration,
}

fn default_retry_min() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

const KINDS: &str = "discord, webhook";

/// Every word an `events` filter accepts, for hints.
fn filter_words() -> String {
    let states = [
        State::Asleep,
        State::Waking,
        State::Awake,
        State::Stopping,
        State::Failed,
    ]
    .map(State::as_str);
    let kinds = Kind::ALL.map(Kind::as_str);
    format!(
        "states (a transition into it): {}; kinds (any event of it): {}",
        states.join(", "),
        kinds.join(", ")
    )
}

/// Reads the `[[notify]]` tables; `services` are the names of the configured services when
/// they could be read, to check the `services` filters against.
pub(crate) fn read_targets(
    value: Option<Spanned<DeValue<'_>>>,
    services: Option<&[String]>,
    problems: &mut Problems<'_>,
) -> Option<Vec<Target>> {
    let Some(value) = value else {
        return Some(Vec::new());
    };
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.add(
            Some(span),
            "`notify` must be an array of tables",
            "write each notification target as a [[notify]] table",
        );
        return None;
    };
    let mut targets = Vec::new();
    let mut all_ok = true;
    let mut names: HashMap<String, Range<usize>> = HashMap::new();
    for item in items {
        match read_target(item, services, problems) {
            Some((target, name_span)) => {
                if names
                    .insert(target.name.clone(), name_span.clone())
                    .is_some()
                {
                    problems.add(
                        Some(name_span),
                        format!("notify target name `{}` is used twice", target.name),
                        "give each [[notify]] its own `name` (it defaults to its type); the name keys its delivery cursor",
                    );
                    all_ok = false;
                }
                targets.push(target);
            }
            None => all_ok = false,
        }
    }
    all_ok.then_some(targets)
}

fn read_target(
    item: Spanned<DeValue<'_>>,
    services: Option<&[String]>,
    problems: &mut Problems<'_>,
) -> Option<(Target, Range<usize>)> {
    let (kind, rest) = de::split_type(item, "[[notify]]", KINDS, problems)?;
    let type_span = rest.span();
    if kind != "discord" && kind != "webhook" {
        problems.add(
            Some(type_span),
            format!("unknown notify type `{kind}`"),
            &format!("use one of: {KINDS}"),
        );
        return None;
    }
    let c: NotifyConfig = de::read(rest, problems)?;
    let mut ok = true;

    let (name, name_span) = match c.name {
        Some(name) => {
            let span = name.span();
            let name = name.into_inner();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                problems.add(
                    Some(span.clone()),
                    format!("notify target name `{name}` is not allowed"),
                    "names use only a-z, 0-9 and '-', e.g. \"ops-discord\"",
                );
                ok = false;
            }
            (name, span)
        }
        None => (kind.clone(), type_span.clone()),
    };

    let url = read_url(&c.url, &kind, problems);

    let kind = match (kind.as_str(), c.secret) {
        ("discord", None) => Some(TargetKind::Discord),
        ("discord", Some(secret)) => {
            problems.add(
                Some(secret.span()),
                "a discord target takes no `secret`",
                "remove it: Discord webhooks are not signed; the secret is the URL itself",
            );
            None
        }
        (_, None) => {
            problems.add(
                Some(type_span.clone()),
                "this webhook target has no `secret`",
                "add `secret = \"${WEBHOOK_SECRET}\"`: every delivery is signed with it so the receiver can tell it came from wakegate",
            );
            None
        }
        (_, Some(secret)) => match de::secret(&secret, "the webhook `secret`", problems) {
            Some(s) if s.expose().len() >= de::MIN_SECRET_LEN => {
                Some(TargetKind::Webhook { secret: s })
            }
            Some(_) => {
                problems.add(
                    Some(secret.span()),
                    "the webhook `secret` is too short to be safe",
                    "use at least 16 characters, e.g. from `openssl rand -hex 32`, kept in an environment variable",
                );
                None
            }
            None => None,
        },
    };

    let filter_services = c.services.map(|list| {
        let mut set = BTreeSet::new();
        for name in list {
            // The gateway's own events (a reload) go by its name.
            let known = name.get_ref() == crate::event::GATEWAY
                || services.is_none_or(|all| all.contains(name.get_ref()));
            if !known {
                problems.add(
                    Some(name.span()),
                    format!("there is no service named `{}` to notify about", name.get_ref()),
                    "name services of this file's [[service]] tables (or \"wakegate\" for the gateway's own events, a reload), or leave `services` out to hear about all of them",
                );
                ok = false;
            }
            set.insert(name.into_inner());
        }
        set
    });

    let events = c.events.map(|list| {
        let span = list.span();
        let list = list.into_inner();
        if list.is_empty() {
            problems.add(
                Some(span),
                "`events = []` would never notify",
                "name what to hear about, e.g. [\"failed\", \"awake\"], or leave `events` out for everything but progress steps",
            );
            ok = false;
        }
        let mut words = Vec::new();
        for word in list {
            match Match::parse(word.get_ref()) {
                Some(m) => words.push(m),
                None => {
                    problems.add(
                        Some(word.span()),
                        format!("`{}` is neither a state nor an event kind", word.get_ref()),
                        &format!("use {}", filter_words()),
                    );
                    ok = false;
                }
            }
        }
        words
    });

    if c.retry_min.is_zero() || c.retry_max < c.retry_min {
        problems.add(
            Some(type_span.clone()),
            "`retry_min` must be above zero and no more than `retry_max`",
            "e.g. retry_min = \"1s\" and retry_max = \"5m\" (the defaults)",
        );
        ok = false;
    }
    if c.timeout.is_zero() {
        problems.add(
            Some(type_span),
            "`timeout` must be above zero",
            "e.g. timeout = \"10s\" (the default)",
        );
        ok = false;
    }

    let target = Target {
        name,
        kind: kind?,
        url: url?,
        filter: Filter {
            services: filter_services,
            events,
        },
        retry_min: c.retry_min,
        retry_max: c.retry_max,
        timeout: c.timeout,
    };
    ok.then_some((target, name_span))
}

/// Expands and checks a target's URL. The URL is never echoed: a Discord webhook URL holds its
/// token (written inline, it is warned about), and another URL may hold credentials (a user
/// and password, or a query).
fn read_url(url: &Spanned<String>, kind: &str, problems: &mut Problems<'_>) -> Option<Secret> {
    let text = url.get_ref();
    let authority = text
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split('/')
        .next()
        .unwrap_or("");
    let value = if kind == "discord" || authority.contains('@') || text.contains('?') {
        de::secret(url, &format!("the {kind} URL"), problems)?
    } else {
        de::from_env(url, problems)?
    };
    match http::Endpoint::parse(value.expose()) {
        Ok(_) => Some(value),
        Err(why) => {
            problems.add(
                Some(url.span()),
                format!("`url` {why}"),
                "write the whole URL, e.g. \"https://discord.com/api/webhooks/ID/TOKEN\" or \"https://hooks.example.com/wakegate\"",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::from_millis;

    fn event(service: &str, kind: Kind, state: State) -> Event {
        Event {
            id: 1,
            time: from_millis(0),
            service: service.into(),
            kind,
            state,
            reason: String::new(),
            detail: serde_json::Value::Null,
        }
    }

    #[test]
    fn filter_words_match_states_of_transitions_and_kinds_otherwise() {
        let filter = Filter {
            services: Some(BTreeSet::from(["web".to_string()])),
            events: Some(vec![
                Match::parse("failed").unwrap(),
                Match::parse("lease").unwrap(),
            ]),
        };
        assert!(filter.wants(&event("web", Kind::Transition, State::Failed)));
        assert!(filter.wants(&event("web", Kind::Lease, State::Awake)));
        // `failed` is about transitions: a lease event while failed is not one.
        assert!(!filter.wants(&event("web", Kind::Action, State::Failed)));
        assert!(!filter.wants(&event("web", Kind::Transition, State::Awake)));
        assert!(!filter.wants(&event("db", Kind::Transition, State::Failed)));
        assert_eq!(
            Match::parse("transition"),
            Some(Match::Kind(Kind::Transition))
        );
        assert_eq!(Match::parse("nope"), None);
    }

    #[test]
    fn without_a_filter_everything_but_progress_is_sent() {
        let all = Filter::default();
        assert!(all.wants(&event("a", Kind::Transition, State::Waking)));
        assert!(all.wants(&event("a", Kind::Action, State::Asleep)));
        assert!(!all.wants(&event("a", Kind::Progress, State::Waking)));
    }
}
