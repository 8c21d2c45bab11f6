//! Host routing for listeners whose protocol names its target (the HTTP `Host`, the hostname of
//! a Minecraft handshake): the services sharing one socket, found by name. A socket reads its
//! [`Table`]: the routes of services created from templates come and go while it serves.

use std::sync::{Arc, RwLock};

/// What a routing table needs to know of one of its entries.
pub trait Named {
    /// Lower-case hostnames without a trailing dot: exact, or `*.parent` for one label before
    /// `parent`.
    fn hostnames(&self) -> &[String];
    /// Marked as the entry that takes the hosts no entry names.
    fn is_default(&self) -> bool;
}

/// The entries behind one socket, as they are at one moment.
pub struct Routes<R> {
    routes: Vec<Arc<R>>,
    /// Takes the hosts no entry names.
    default: Option<usize>,
    /// The entry that takes every host because it was alone at start (see [`Routes::new`]):
    /// it keeps them when others join, and entries that join never become one.
    lone: Option<Arc<R>>,
}

/// A socket's routes, replaced whole when an entry is added or removed: a reader takes the
/// current [`Routes`] (an `Arc`, under a read lock held only to clone it) and keeps it for a
/// request or a connection.
pub struct Table<R>(RwLock<Arc<Routes<R>>>);

impl<R: Named> Table<R> {
    pub fn new(routes: Routes<R>) -> Table<R> {
        Table(RwLock::new(Arc::new(routes)))
    }

    /// The routes now.
    pub fn load(&self) -> Arc<Routes<R>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds an entry.
    pub fn add(&self, entry: R) {
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let mut routes = current.routes.clone();
        routes.push(Arc::new(entry));
        *current = Arc::new(Routes::with(routes, current.lone.clone()));
    }

    /// Removes the entries `gone` picks.
    pub fn remove(&self, gone: impl Fn(&R) -> bool) {
        let mut current = self.0.write().unwrap_or_else(|e| e.into_inner());
        let routes = current
            .routes
            .iter()
            .filter(|r| !gone(r))
            .cloned()
            .collect();
        *current = Arc::new(Routes::with(routes, current.lone.clone()));
    }
}

impl<R: Named> Routes<R> {
    /// The default is the entry marked `default`, else one without hostnames, else (when
    /// `lone_takes_all`) the only one. A Minecraft client may name a server by any address, so
    /// a lone entry takes them all; a browser always names the site, so an http entry that
    /// lists hostnames gets only those, even alone on its socket.
    pub fn new(routes: Vec<R>, lone_takes_all: bool) -> Routes<R> {
        let routes: Vec<Arc<R>> = routes.into_iter().map(Arc::new).collect();
        let lone = (lone_takes_all && routes.len() == 1).then(|| routes[0].clone());
        Routes::with(routes, lone)
    }

    fn with(routes: Vec<Arc<R>>, lone: Option<Arc<R>>) -> Routes<R> {
        let default = routes
            .iter()
            .position(|r| r.is_default())
            .or_else(|| routes.iter().position(|r| r.hostnames().is_empty()))
            .or_else(|| {
                let lone = lone.as_ref()?;
                routes.iter().position(|r| Arc::ptr_eq(r, lone))
            });
        Routes {
            routes,
            default,
            lone,
        }
    }

    /// The entry for a host (lower-case, without port and trailing dot) and its index: an exact
    /// name first, then a wildcard, then the default.
    pub fn find(&self, host: &str) -> Option<(usize, &R)> {
        let named = |exact: bool| {
            self.routes.iter().position(|r| {
                r.hostnames().iter().any(|h| {
                    if exact {
                        h == host
                    } else {
                        host_matches(h, host)
                    }
                })
            })
        };
        let index = named(true).or_else(|| named(false)).or(self.default)?;
        Some((index, &self.routes[index]))
    }

    /// Every entry, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.routes.iter().map(|r| &**r)
    }

    /// The entry at `index`, as [`Routes::find`] gave it.
    pub fn get(&self, index: usize) -> &R {
        &self.routes[index]
    }

    /// The entry at `index`, to keep beyond this table.
    pub fn shared(&self, index: usize) -> Arc<R> {
        self.routes[index].clone()
    }
}

/// Whether a configured hostname (exact, or `*.example.com` for one label before
/// `example.com`) matches a host.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .strip_suffix(parent)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Entry(Vec<String>, bool);

    impl Named for Entry {
        fn hostnames(&self) -> &[String] {
            &self.0
        }
        fn is_default(&self) -> bool {
            self.1
        }
    }

    fn entry(hosts: &[&str], default: bool) -> Entry {
        Entry(hosts.iter().map(|h| h.to_string()).collect(), default)
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(host_matches("*.example.com", "app.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "appexample.com"));
        assert!(host_matches("example.com", "example.com"));
    }

    #[test]
    fn an_exact_name_wins_over_a_wildcard_and_the_default() {
        let routes = Routes::new(
            vec![
                entry(&["*.example.com"], false),
                entry(&["app.example.com"], false),
                entry(&[], false),
            ],
            false,
        );
        assert_eq!(routes.find("app.example.com").map(|(i, _)| i), Some(1));
        assert_eq!(routes.find("www.example.com").map(|(i, _)| i), Some(0));
        assert_eq!(routes.find("other.org").map(|(i, _)| i), Some(2));
    }

    #[test]
    fn a_marked_default_wins_over_an_entry_without_names() {
        let routes = Routes::new(vec![entry(&[], false), entry(&["b"], true)], false);
        assert_eq!(routes.find("c").map(|(i, _)| i), Some(1));
    }

    #[test]
    fn a_table_changes_for_new_readers_only() {
        let table = Table::new(Routes::new(vec![entry(&["a"], false)], false));
        let before = table.load();
        table.add(entry(&["b"], false));
        assert!(before.find("b").is_none());
        assert_eq!(table.load().find("b").map(|(i, _)| i), Some(1));
        table.remove(|r| r.0 == ["a"]);
        assert!(table.load().find("a").is_none());
        assert_eq!(table.load().find("b").map(|(i, _)| i), Some(0));
        assert!(before.find("a").is_some());
    }

    #[test]
    fn a_lone_entry_keeps_every_host_when_others_join_and_a_joining_one_never_takes_them() {
        let table = Table::new(Routes::new(vec![entry(&["mc.example.com"], false)], true));
        table.add(entry(&["a.mc.example.com"], false));
        assert_eq!(table.load().find("1.2.3.4").map(|(i, _)| i), Some(0));
        assert_eq!(
            table.load().find("a.mc.example.com").map(|(i, _)| i),
            Some(1)
        );
        // A socket that only templates use: nobody takes the hosts nobody names.
        let table = Table::new(Routes::new(Vec::new(), true));
        table.add(entry(&["a.mc.example.com"], false));
        assert!(table.load().find("b.mc.example.com").is_none());
        assert!(table.load().find("a.mc.example.com").is_some());
    }

    #[test]
    fn a_lone_named_entry_takes_every_host_only_when_asked_to() {
        let lone = || vec![entry(&["mc.example.com"], false)];
        assert_eq!(
            Routes::new(lone(), true).find("1.2.3.4").map(|(i, _)| i),
            Some(0)
        );
        assert!(Routes::new(lone(), false).find("1.2.3.4").is_none());
    }
}
