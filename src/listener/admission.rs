//! What a bound socket lets in: at most `max_connections_per_address` open connections per
//! client address (an IPv6 client by its /64, which one host usually has whole), counted by
//! the real client's address behind a trusted proxy; the socket's rule for PROXY headers; and
//! its refusals. Applied by [`super::accept`] to every listener type alike.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::client::Front;
use super::refusal::Refusals;
use crate::metrics::ListenerMetrics;

/// The default of `max_connections_per_address`, on every listener type: far above what one
/// person, household or small office opens, far below what a descriptor limit allows.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: u32 = 256;

pub(crate) fn default_max_connections_per_address() -> u32 {
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
}

/// The cap of a socket several entries share: the most generous of theirs (0, no cap, wins).
pub fn shared_cap(caps: impl IntoIterator<Item = u32>) -> u32 {
    caps.into_iter()
        .try_fold(0u32, |most, cap| (cap != 0).then(|| most.max(cap)))
        .unwrap_or(0)
}

/// One bound socket's admission: the per-address cap and the open connections per address.
#[derive(Debug)]
pub struct Listening {
    pub refusals: Refusals,
    /// Which peers put a PROXY header first, and whether first bytes are checked for one.
    pub front: Front,
    /// 0: no cap.
    cap: u32,
    /// Open connections per address; an address leaves the map with its last connection. A
    /// std Mutex: one lookup per accepted and per closed connection, never across an await.
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// A client's place among its address's open connections, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    listening: Arc<Listening>,
    key: Option<IpAddr>,
}

impl Listening {
    /// The admission of a socket of `kind` bound to `bind`, with at most `cap` connections
    /// per address (0: no cap).
    pub fn new(
        kind: &'static str,
        bind: SocketAddr,
        cap: u32,
        front: Front,
        metrics: &ListenerMetrics,
    ) -> Arc<Listening> {
        Arc::new(Listening {
            refusals: Refusals::new(kind, bind, metrics),
            front,
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a client from `ip`, or `None` when its address is at the cap.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = if self.cap == 0 {
            None
        } else {
            let key = address_key(ip);
            let mut open = self.open.lock().unwrap();
            let count = open.entry(key).or_insert(0);
            if *count >= self.cap {
                return None;
            }
            *count += 1;
            Some(key)
        };
        self.refusals
            .counters()
            .open
            .fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            listening: self.clone(),
            key,
        })
    }

    /// Connections open from `ip`'s address (counted only under a cap).
    pub fn open_from(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().unwrap();
        open.get(&address_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let listening = &self.listening;
        listening
            .refusals
            .counters()
            .open
            .fetch_sub(1, Ordering::Relaxed);
        let Some(key) = self.key else { return };
        let mut open = listening.open.lock().unwrap();
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

/// What the cap counts by: an IPv4 address (also when written IPv4-mapped), or an IPv6 /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_gets_cap_slots_and_gets_them_back() {
        let metrics = ListenerMetrics::default();
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let listening = Listening::new("tcp", bind, 2, Front::default(), &metrics);
        let a = listening.admit(ip("10.0.0.1")).unwrap();
        let b = listening.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert!(listening.admit(ip("10.0.0.1")).is_none());
        // Another address has slots of its own.
        let other = listening.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(
            listening.refusals.counters().open.load(Ordering::Relaxed),
            3
        );
        drop(a);
        let c = listening.admit(ip("10.0.0.1")).unwrap();
        drop((b, c, other));
        assert_eq!(listening.open_from(ip("10.0.0.1")), 0);
        assert!(listening.open.lock().unwrap().is_empty());
        assert_eq!(
            listening.refusals.counters().open.load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let metrics = ListenerMetrics::default();
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let listening = Listening::new("http", bind, 1, Front::default(), &metrics);
        let _one = listening.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(listening.admit(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(listening.admit(ip("2001:db8:1:3::1")).is_some());
    }

    #[test]
    fn a_shared_socket_takes_the_most_generous_cap() {
        assert_eq!(shared_cap([16, 256, 64]), 256);
        assert_eq!(shared_cap([16, 0, 64]), 0);
        assert_eq!(shared_cap([32]), 32);
    }

    #[test]
    fn no_cap_admits_everyone() {
        let metrics = ListenerMetrics::default();
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let listening = Listening::new("minecraft", bind, 0, Front::default(), &metrics);
        let slots: Vec<Slot> = (0..1000)
            .map(|_| listening.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            listening.refusals.counters().open.load(Ordering::Relaxed),
            1000
        );
        drop(slots);
        assert_eq!(
            listening.refusals.counters().open.load(Ordering::Relaxed),
            0
        );
    }
}
