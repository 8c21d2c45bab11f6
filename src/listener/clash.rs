//! The check across services of where they listen: two listeners cannot share a plain TCP
//! socket, nor a UDP one; `minecraft` and `http` listeners may share one by hostname. Each
//! problem points at the `bind` of the later listener in the file.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;

use super::config::{Bind, Listen};
use crate::config::diag::Problems;

/// One listener of a group that binds the same socket: its service, itself, where its `bind` is.
type Member<'b> = (&'b str, &'b Listen, &'b Range<usize>);

/// "services `a` and `b`", or "service `a`" twice for two listeners of one service.
fn who(a: &str, b: &str) -> String {
    if a == b {
        format!("service `{a}` has two listeners that")
    } else {
        format!("services `{a}` and `{b}`")
    }
}

/// `minecraft` listeners may share a socket, and so may `http` listeners (each type only with
/// its own, and TLS for all or none), as long as every hostname names one service and at most
/// one takes the rest. UDP ports are apart from TCP ones: a udp and a tcp listener may share a
/// number.
pub(crate) fn check_binds(binds: &[Bind], problems: &mut Problems<'_>) {
    let mut groups: BTreeMap<(bool, SocketAddr), Vec<Member<'_>>> = BTreeMap::new();
    for bind in binds {
        let listen = &bind.listen;
        // Port 0 asks the system for a free port: those never collide.
        if listen.bind().port() == 0 {
            continue;
        }
        groups
            .entry((listen.is_udp(), listen.bind()))
            .or_default()
            .push((&bind.service, listen, &bind.span));
    }
    for ((udp, bind), group) in groups {
        if group.len() >= 2 {
            check_group(udp, bind, &group, problems);
        }
    }
}

fn check_group(udp: bool, bind: SocketAddr, group: &[Member<'_>], problems: &mut Problems<'_>) {
    if udp {
        let ((a, _, _), (b, _, at)) = (group[0], group[1]);
        problems.add(
            Some(at.clone()),
            format!("{} both listen on udp {bind}", who(a, b)),
            "give each udp or bedrock listener its own port",
        );
        return;
    }
    if let Some(tcp) = group
        .iter()
        .position(|(_, l, _)| matches!(l, Listen::Tcp(_)))
    {
        let other = if tcp == 0 { 1 } else { 0 };
        let (first, second) = (group[tcp.min(other)], group[tcp.max(other)]);
        problems.add(
            Some(second.2.clone()),
            format!("{} both listen on tcp {bind}", who(first.0, second.0)),
            "give each tcp listener its own port",
        );
        return;
    }
    let kind = |l: &Listen| match l {
        Listen::Http(_) => "http",
        _ => "minecraft",
    };
    let (first, first_listen, _) = group[0];
    let first_kind = kind(first_listen);
    if let Some((other, _, at)) = group.iter().find(|(_, l, _)| kind(l) != first_kind) {
        problems.add(
            Some((*at).clone()),
            format!(
                "service `{first}` listens for {first_kind} and `{other}` for another protocol on {bind}"
            ),
            "only listeners of the same type can share a port; give each protocol its own port",
        );
        return;
    }
    if first_kind == "http" {
        let tls = |l: &Listen| matches!(l, Listen::Http(h) if h.tls.is_some());
        let plain = group.iter().find(|(_, l, _)| !tls(l));
        let secure = group.iter().find(|(_, l, _)| tls(l));
        if let (Some(plain), Some(secure)) = (plain, secure) {
            let later = plain.2.start.max(secure.2.start);
            let at = if plain.2.start == later {
                plain.2
            } else {
                secure.2
            };
            problems.add(
                Some(at.clone()),
                format!(
                    "on http {bind}, service `{}` speaks TLS and `{}` plain HTTP",
                    secure.0, plain.0
                ),
                "a shared port speaks TLS for all its services or for none: give each its tls_cert and tls_key, or use two ports",
            );
        }
    }
    let mut owners: HashMap<&str, &str> = HashMap::new();
    let mut defaults = Vec::new();
    let mut last_default = None;
    for (name, listen, at) in group {
        let (hostnames, default) = match listen {
            Listen::Minecraft(m) => (&m.hostnames, m.default),
            Listen::Http(h) => (&h.hostnames, h.default),
            Listen::Tcp(_) | Listen::Udp(_) | Listen::Bedrock(_) => continue,
        };
        if default || hostnames.is_empty() {
            defaults.push(*name);
            last_default = Some(*at);
        }
        for host in hostnames {
            if let Some(first) = owners.insert(host, name) {
                problems.add(
                    Some((*at).clone()),
                    format!(
                        "hostname `{host}` on {first_kind} {bind} is claimed by `{first}` and `{name}`"
                    ),
                    "each hostname on a shared bind must lead to one service",
                );
            }
        }
    }
    if defaults.len() > 1 {
        problems.add(
            last_default.cloned(),
            format!(
                "services `{}` all take unknown hostnames on {first_kind} {bind}",
                defaults.join("`, `")
            ),
            "on a shared bind, give every listener `hostnames` and set `default = true` on at most one",
        );
    }
}
