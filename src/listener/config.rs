//! `[[service.listen]]`: where clients arrive, read into [`Listen`]. Each protocol reads its
//! own keys (`tcp::config`, `http::config`, `minecraft::config`, `udp::config`).

use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;
use toml::de::DeValue;

use super::access::split_access_keys;
use super::bedrock::config::{Bedrock, BedrockListenConfig, read_bedrock};
use super::http::config::{Http, HttpListenConfig, read_http};
use super::minecraft::config::{Minecraft, MinecraftListenConfig, read_minecraft};
use super::tcp::config::{Tcp, TcpListenConfig, read_tcp};
use super::udp::config::{Udp, UdpListenConfig, read_udp};
use crate::config::de::{read, split_type};
use crate::config::diag::Problems;

/// Where clients arrive.
// Built once at start and never moved in a hot path: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Listen {
    Tcp(Tcp),
    Minecraft(Minecraft),
    Http(Box<Http>),
    Udp(Udp),
    Bedrock(Bedrock),
}

impl Listen {
    /// The address this listener binds.
    pub fn bind(&self) -> SocketAddr {
        match self {
            Listen::Tcp(t) => t.bind,
            Listen::Minecraft(m) => m.bind,
            Listen::Http(h) => h.bind,
            Listen::Udp(u) => u.bind,
            Listen::Bedrock(b) => b.bind,
        }
    }

    /// Open connections one client address may have on this listener (0: no cap).
    pub fn max_connections_per_address(&self) -> u32 {
        match self {
            Listen::Tcp(t) => t.max_connections_per_address,
            Listen::Minecraft(m) => m.max_connections_per_address,
            Listen::Http(h) => h.max_connections_per_address,
            Listen::Udp(_) | Listen::Bedrock(_) => 0,
        }
    }

    /// Whether it binds a UDP socket: UDP ports are apart from TCP ones.
    pub fn is_udp(&self) -> bool {
        matches!(self, Listen::Udp(_) | Listen::Bedrock(_))
    }
}

/// A listener read from the file, with its service and the place of its `bind`: what the
/// checks across services need, even when another part of its service is wrong.
#[derive(Debug, Clone)]
pub(crate) struct Bind {
    pub service: String,
    pub listen: Listen,
    pub span: Range<usize>,
}

/// Reads the `[[service.listen]]` array; each listener is read, so that all their mistakes
/// show. Every listener read comes back with the place of its `bind`; the flag says whether
/// all were.
pub(crate) fn read_listeners(
    value: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> (Vec<(Listen, Range<usize>)>, bool) {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.add(
            Some(span),
            "`listen` must be an array of tables",
            "write each listener as a [[service.listen]] table",
        );
        return (Vec::new(), false);
    };
    let kinds = "tcp, http, minecraft, udp, bedrock";
    let mut listeners = Vec::new();
    let mut all_ok = true;
    for item in items {
        let bind_span = match item.get_ref() {
            DeValue::Table(table) => table.get("bind").map(|b| b.span()),
            _ => None,
        }
        .unwrap_or_else(|| item.span());
        let listen = split_type(item, "[[service.listen]]", kinds, problems)
            .and_then(|(kind, rest)| {
                let (keys, rest) = split_access_keys(rest, problems)?;
                Some((kind, keys, rest))
            })
            .and_then(|(kind, keys, rest)| match kind.as_str() {
                "tcp" => read::<TcpListenConfig>(rest, problems)
                    .and_then(|c| read_tcp(c, &keys, problems))
                    .map(Listen::Tcp),
                "minecraft" => read::<MinecraftListenConfig>(rest, problems)
                    .and_then(|c| read_minecraft(c, &keys, problems))
                    .map(Listen::Minecraft),
                "http" => read::<HttpListenConfig>(rest, problems)
                    .and_then(|c| read_http(c, &keys, problems))
                    .map(|h| Listen::Http(Box::new(h))),
                "udp" => read::<UdpListenConfig>(rest, problems)
                    .and_then(|c| read_udp(c, &keys, problems))
                    .map(Listen::Udp),
                "bedrock" => read::<BedrockListenConfig>(rest, problems)
                    .and_then(|c| read_bedrock(c, &keys, problems))
                    .map(Listen::Bedrock),
                other => {
                    problems.add(
                        Some(rest.span()),
                        format!("unknown listener type `{other}`"),
                        &format!("use one of: {kinds}"),
                    );
                    None
                }
            });
        match listen {
            Some(l) => listeners.push((l, bind_span)),
            None => all_ok = false,
        }
    }
    if all_ok && listeners.is_empty() {
        problems.add(
            Some(span),
            "this service has no listener",
            "add a [[service.listen]] table with `type = \"tcp\"` and `bind = \"IP:PORT\"`",
        );
        return (listeners, false);
    }
    (listeners, all_ok)
}
