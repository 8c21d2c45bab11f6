//! The server-list entry of a `minecraft` listener: the MOTD (plain text with § codes or a
//! JSON text component), the player sample lines and the server icon wakegate shows while the
//! service is not awake, and the short cache of the backend's own answer while it is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::codec::{FrameReader, Handshake, Intent, MAX_FRAME, StatusRequest, StatusResponse};

/// A MOTD or message: plain text (§ codes allowed) or a JSON text component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    Plain(String),
    Json(Value),
}

impl Text {
    /// Text that starts with `{` or `[` is read as a JSON text component; anything else is
    /// plain text.
    pub fn parse(text: &str) -> Result<Text, String> {
        let trimmed = text.trim_start();
        if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
            return Ok(Text::Plain(text.to_string()));
        }
        let value: Value = serde_json::from_str(trimmed).map_err(|e| {
            format!("this MOTD starts like a JSON text component but is not JSON: {e}")
        })?;
        if let Value::Object(map) = &value
            && !["text", "translate", "extra", "keybind", "score", "selector"]
                .iter()
                .any(|k| map.contains_key(*k))
        {
            return Err(
                "this JSON text component has none of text, translate, extra, keybind, score \
                 or selector"
                    .to_string(),
            );
        }
        Ok(Text::Json(value))
    }

    /// The text as a component.
    pub fn component(&self) -> Value {
        match self {
            Text::Plain(text) => json!({ "text": text }),
            Text::Json(value) => value.clone(),
        }
    }

    /// The text followed by a new line holding `line` (plain text with § codes).
    pub fn with_line(&self, line: &str) -> Value {
        match self {
            Text::Plain(text) => json!({ "text": format!("{text}\n{line}") }),
            Text::Json(value) => json!({ "text": "", "extra": [value, format!("\n{line}")] }),
        }
    }
}

/// The largest icon file read: a 64×64 PNG is a few KB; the status JSON holds at most 32 KiB.
const MAX_ICON_BYTES: u64 = 24 * 1024;

/// Reads a server icon: a real 64×64 PNG, returned as the `data:image/png;base64,…` URI the
/// status JSON carries.
pub fn load_icon(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the icon {}: {e}", path.display()))?
        .len();
    if size > MAX_ICON_BYTES {
        return Err(format!(
            "the icon {} is {size} bytes; a server icon must stay under {MAX_ICON_BYTES} bytes",
            path.display()
        ));
    }
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read the icon {}: {e}", path.display()))?;
    let (width, height) = png_size(&bytes)
        .ok_or_else(|| format!("the icon {} is not a PNG image", path.display()))?;
    if (width, height) != (64, 64) {
        return Err(format!(
            "the icon {} is {width}×{height} pixels; Minecraft shows only 64×64 icons",
            path.display()
        ));
    }
    Ok(format!("data:image/png;base64,{}", base64(&bytes)))
}

/// The width and height of a PNG, from its signature and IHDR chunk (with its CRC checked).
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    let rest = bytes.strip_prefix(SIGNATURE)?;
    let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let chunk = rest.get(4..8 + 13)?;
    if length != 13 || &chunk[..4] != b"IHDR" {
        return None;
    }
    let crc = u32::from_be_bytes(rest.get(21..25)?.try_into().ok()?);
    if crc32(chunk) != crc {
        return None;
    }
    let width = u32::from_be_bytes(chunk[4..8].try_into().ok()?);
    let height = u32::from_be_bytes(chunk[8..12].try_into().ok()?);
    Some((width, height))
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What wakegate shows in the server list for a service that is not awake.
pub struct Entry<'a> {
    pub version_name: &'a str,
    pub motd: Value,
    pub sample: &'a [String],
    pub icon: Option<&'a str>,
}

/// The status JSON: the client's own protocol, so the list shows the server as compatible; no
/// players online, the sample lines shown when the mouse is over the player count.
pub fn status_json(protocol: i32, entry: &Entry<'_>) -> String {
    let sample: Vec<Value> = entry
        .sample
        .iter()
        .map(|line| json!({ "name": line, "id": "00000000-0000-0000-0000-000000000000" }))
        .collect();
    let mut value = json!({
        "version": { "name": entry.version_name, "protocol": protocol },
        "players": { "max": 0, "online": 0, "sample": sample },
        "description": entry.motd,
    });
    if let Some(icon) = entry.icon {
        value["favicon"] = json!(icon);
    }
    value.to_string()
}

/// Backend status answers kept for a short while, per client protocol (a server answers
/// each protocol with its own compatibility verdict).
#[derive(Debug)]
pub struct StatusCache {
    ttl: Duration,
    // A std Mutex: lookups and inserts never await.
    entries: Mutex<HashMap<i32, (Instant, String)>>,
}

/// Protocols remembered at most: clients speak a handful; anything more is a scan.
const MAX_CACHED: usize = 64;

impl StatusCache {
    pub fn new(ttl: Duration) -> StatusCache {
        StatusCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, protocol: i32) -> Option<String> {
        let entries = self.entries.lock().unwrap();
        let (at, json) = entries.get(&protocol)?;
        (at.elapsed() < self.ttl).then(|| json.clone())
    }

    pub fn put(&self, protocol: i32, json: String) {
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(protocol, (Instant::now(), json));
    }

    /// Forgets everything, when the service leaves `awake`.
    pub fn clear(&self) {
        self.entries.lock().unwrap().clear();
    }
}

/// Asks the backend for its status as the client would (its handshake, with intent status),
/// optionally behind a PROXY protocol header.
pub async fn fetch(
    address: SocketAddr,
    handshake: &Handshake,
    header: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<String, String> {
    let ask = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut out = header.unwrap_or_default();
        out.extend(
            Handshake {
                intent: Intent::Status,
                ..handshake.clone()
            }
            .encode()
            .map_err(|e| e.to_string())?,
        );
        out.extend(StatusRequest::Status.encode());
        stream.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut reader = FrameReader::new(stream);
        let frame = reader
            .next_frame(MAX_FRAME)
            .await
            .map_err(|e| e.to_string())?;
        match StatusResponse::parse(frame.body()).map_err(|e| e.to_string())? {
            StatusResponse::Status(json) => Ok(json),
            StatusResponse::Pong(_) => Err("a pong instead of a status".to_string()),
        }
    };
    tokio::time::timeout(timeout, ask)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn crc_matches_the_png_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[tokio::test(start_paused = true)]
    async fn cached_answers_expire_and_are_kept_per_protocol() {
        let cache = StatusCache::new(Duration::from_secs(2));
        cache.put(767, "new".into());
        cache.put(754, "old".into());
        tokio::time::advance(Duration::from_millis(1900)).await;
        assert_eq!(cache.get(767).as_deref(), Some("new"));
        assert_eq!(cache.get(754).as_deref(), Some("old"));
        assert_eq!(cache.get(47), None);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(cache.get(767), None);
        cache.put(767, "newer".into());
        cache.clear();
        assert_eq!(cache.get(767), None);
    }

    #[test]
    fn png_sizes_are_read_and_checked() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minecraft");
        let icon = load_icon(&dir.join("icon.png")).unwrap();
        assert!(
            icon.starts_with("data:image/png;base64,iVBORw0KGgo"),
            "{icon}"
        );
        let small = load_icon(&dir.join("icon-32x32.png")).unwrap_err();
        assert!(small.contains("32×32"), "{small}");
        // A PNG whose header was damaged is not taken for one.
        let mut bytes = std::fs::read(dir.join("icon.png")).unwrap();
        bytes[20] ^= 1;
        assert_eq!(png_size(&bytes), None);
    }

    #[test]
    fn motds_are_text_or_json() {
        assert_eq!(Text::parse("§7zzz"), Ok(Text::Plain("§7zzz".into())));
        let json = Text::parse(r#"{"text":"zzz","color":"gray"}"#).unwrap();
        assert_eq!(json.component()["color"], "gray");
        assert!(Text::parse("{not json").is_err());
        assert!(Text::parse(r#"{"color":"gray"}"#).is_err());
        assert_eq!(
            json.with_line("§7soon")["extra"][1],
            Value::String("\n§7soon".into())
        );
    }
}
