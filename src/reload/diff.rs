//! What a reload changes: the running config and the new one compared table by table, as the
//! file wrote them. A service is the unit of change, and within it three parts are told
//! apart: its listeners (`listen`), its backend (`backend`, `readiness`, `dns`, `agent`: what
//! the actor drives), and its policies (every other key). The gateway-wide tables cannot
//! change while wakegate runs: a reload that changes one is refused, naming each key.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::Config;

/// The keys of a `[[service]]` table the actor is built from: a change replaces the actor.
const BACKEND_KEYS: [&str; 4] = ["backend", "readiness", "dns", "agent"];

/// The key of its listeners: a change re-creates the listeners that changed.
const LISTEN_KEY: &str = "listen";

/// The top-level tables besides `[[service]]`, all read once at start.
const GATEWAY_WIDE: [&str; 5] = ["gateway", "template", "notify", "discord", "discovery"];

/// What changed in one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Policy keys (timeouts, schedules, limits, health checks, `hourly_cost`).
    pub policy: bool,
    pub backend: bool,
    pub listeners: bool,
}

impl Change {
    pub fn any(self) -> bool {
        self.policy || self.backend || self.listeners
    }

    /// "policy, listeners", for messages.
    pub fn describe(self) -> String {
        let parts: Vec<&str> = [
            (self.policy, "policy"),
            (self.backend, "backend"),
            (self.listeners, "listeners"),
        ]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect();
        parts.join(", ")
    }
}

/// What a reload does, service by service, in the new file's order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<(String, Change)>,
    pub unchanged: Vec<String>,
}

/// Compares the gateway-wide tables: each key that differs, as "[gateway] api" or "[[notify]]".
pub fn gateway_wide(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut changed = Vec::new();
    for table in GATEWAY_WIDE {
        let (a, b) = (old.get(table), new.get(table));
        if a == b {
            continue;
        }
        match (a, b) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                changed.extend(
                    keys.into_iter()
                        .filter(|k| a.get(*k) != b.get(*k))
                        .map(|k| format!("[{table}] {k}")),
                );
            }
            (Some(toml::Value::Table(t)), None) | (None, Some(toml::Value::Table(t))) => {
                changed.extend(t.keys().map(|k| format!("[{table}] {k}")));
            }
            _ => changed.push(format!("[[{table}]]")),
        }
    }
    changed
}

/// The `[[service]]` table named `name` in a file's values.
fn service_table<'a>(source: &'a toml::Table, name: &str) -> Option<&'a toml::Table> {
    source
        .get("service")?
        .as_array()?
        .iter()
        .filter_map(toml::Value::as_table)
        .find(|t| t.get("name").and_then(toml::Value::as_str) == Some(name))
}

/// What changed between two tables of one service.
pub fn change(old: &toml::Table, new: &toml::Table) -> Change {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let mut change = Change::default();
    for key in keys.into_iter().filter(|k| old.get(*k) != new.get(*k)) {
        if key == LISTEN_KEY {
            change.listeners = true;
        } else if BACKEND_KEYS.contains(&key.as_str()) {
            change.backend = true;
        } else {
            change.policy = true;
        }
    }
    change
}

/// Compares the services of the running config and the new one.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    for service in &new.services {
        let name = &service.name;
        if !old.services.iter().any(|s| &s.name == name) {
            plan.added.push(name.clone());
            continue;
        }
        let empty = toml::Table::new();
        let was = service_table(&old.source, name).unwrap_or(&empty);
        let is = service_table(&new.source, name).unwrap_or(&empty);
        let change = change(was, is);
        if change.any() {
            plan.changed.push((name.clone(), change));
        } else {
            plan.unchanged.push(name.clone());
        }
    }
    plan.removed = old
        .services
        .iter()
        .filter(|s| !new.services.iter().any(|n| n.name == s.name))
        .map(|s| s.name.clone())
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn each_part_of_a_service_is_told_apart() {
        let old = table(
            "name = 'a'\nidle_timeout = '1m'\n[backend]\ntype = 'exec'\n[[listen]]\ntype = 'tcp'\nbind = '127.0.0.1:1'",
        );
        assert_eq!(change(&old, &old), Change::default());
        let policy = table(
            "name = 'a'\nidle_timeout = '2m'\n[backend]\ntype = 'exec'\n[[listen]]\ntype = 'tcp'\nbind = '127.0.0.1:1'",
        );
        assert_eq!(
            change(&old, &policy),
            Change {
                policy: true,
                ..Change::default()
            }
        );
        let both = table(
            "name = 'a'\nidle_timeout = '1m'\nreadiness = { type = 'tcp' }\n[backend]\ntype = 'exec'\n[[listen]]\ntype = 'tcp'\nbind = '127.0.0.1:2'",
        );
        let found = change(&old, &both);
        assert_eq!(
            found,
            Change {
                policy: false,
                backend: true,
                listeners: true
            }
        );
        assert_eq!(found.describe(), "backend, listeners");
    }

    #[test]
    fn gateway_wide_changes_name_their_keys() {
        let old = table("[gateway]\napi = '127.0.0.1:1'\ndata_dir = 'x'\n");
        let new =
            table("[gateway]\napi = '127.0.0.1:2'\ndata_dir = 'x'\n[[notify]]\ntype = 'webhook'\n");
        assert_eq!(gateway_wide(&old, &new), ["[gateway] api", "[[notify]]"]);
        assert!(gateway_wide(&old, &old).is_empty());
        // A service change is not a gateway-wide one.
        let with_service =
            table("[gateway]\napi = '127.0.0.1:1'\ndata_dir = 'x'\n[[service]]\nname = 'a'\n");
        assert!(gateway_wide(&old, &with_service).is_empty());
    }
}
