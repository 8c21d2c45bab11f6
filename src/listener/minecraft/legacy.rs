//! The legacy (pre-1.7) server-list ping, answered as vanilla servers answer it: the MOTD
//! wakegate shows while the service is not awake, with the same player counts as its modern
//! status (none online, no maximum). While the service is awake the ping is forwarded to the
//! backend like a modern one, so a vanilla server answers it with its own MOTD and players.
//! A 1.6 ping names the hostname it connects to, which routes it on a shared socket; older
//! ones go to the socket's default service.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{End, Socket, forward, motd};
use crate::event::State;
use crate::metrics::Refusal;
use crate::minecraft::legacy::{self, LegacyPing, LegacyStatus, MAX_LEGACY_PING};
use crate::minecraft::{CodecError, FrameReader, proxy_header};

/// How long an incomplete ping waits for more bytes before it is answered as what it is so far
/// (a lone `FE` is a beta client's, which sends nothing more): what vanilla servers of that
/// time waited for the byte after `FE`.
const LEGACY_WAIT: Duration = Duration::from_secs(1);

/// Reads the rest of a legacy ping (its first byte is buffered) and answers it.
pub(super) async fn answer(
    reader: &mut FrameReader<TcpStream>,
    peer: SocketAddr,
    socket: &Socket,
) -> Result<(), End> {
    let wait = LEGACY_WAIT.min(socket.head_timeout);
    let read = tokio::time::timeout(wait, async {
        loop {
            if let Some(ping) = legacy::parse(reader.buffered()) {
                return Ok::<_, CodecError>(ping);
            }
            reader.read_raw(MAX_LEGACY_PING).await?;
        }
    })
    .await;
    let ping = match read {
        Ok(ping) => ping?,
        Err(_) => legacy::fallback(reader.buffered()),
    };
    let hostname = match &ping {
        LegacyPing::V1_6 { hostname, .. } => hostname.to_ascii_lowercase(),
        _ => String::new(),
    };
    let hostname = hostname.trim_end_matches('.');
    let routes = socket.routes.load();
    let Some((_, route)) = routes.find(hostname) else {
        let why = format!("{peer} asked for `{hostname}` (legacy ping)");
        socket.listening.refusals.refuse(Refusal::UnknownHost, why);
        let text = format!("§cunknown server `{hostname}`");
        return reply(reader, &ping, "wakegate", &text).await;
    };
    let (service, config) = (&route.service, &route.config);
    let status = service.status();
    if let (State::Awake, Some(address)) = (status.state, status.address) {
        // Not a ticket: a server-list refresh must not count as activity.
        let header = config
            .proxy_protocol
            .then(|| {
                let local = reader.get_ref().local_addr().ok()?;
                Some(proxy_header::v2(peer, local))
            })
            .flatten();
        return forward(reader, Vec::new(), header, address, None).await;
    }
    service
        .metrics()
        .status_pings
        .fetch_add(1, Ordering::Relaxed);
    let text = plain(&motd(route, &status));
    reply(reader, &ping, &config.version_name, &text).await
}

async fn reply(
    reader: &mut FrameReader<TcpStream>,
    ping: &LegacyPing,
    version: &str,
    motd: &str,
) -> Result<(), End> {
    let status = LegacyStatus {
        version,
        motd,
        online: 0,
        max: 0,
    };
    let out = legacy::answer(ping, &status);
    let client = reader.get_mut();
    client.write_all(&out).await?;
    client.shutdown().await?;
    Ok(())
}

/// A text component as the one line of plain text (§ codes kept) legacy clients show.
fn plain(component: &Value) -> String {
    fn walk(value: &Value, out: &mut String) {
        match value {
            Value::String(text) => out.push_str(text),
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            Value::Object(map) => {
                if let Some(text) = map.get("text") {
                    walk(text, out);
                }
                if let Some(extra) = map.get("extra") {
                    walk(extra, out);
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    walk(component, &mut out);
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn components_flatten_to_one_line() {
        let motd = json!({ "text": "", "extra": [{ "text": "zzz", "color": "gray" }, "\n§7soon"] });
        assert_eq!(plain(&motd), "zzz §7soon");
        assert_eq!(plain(&json!({ "text": "§7sleeping" })), "§7sleeping");
    }
}
