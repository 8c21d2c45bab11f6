//! The server-list entry of a `minecraft` listener: the MOTD (plain text with § codes or a
//! JSON text component), the player sample lines and the server icon wakegate shows while the
//! service is not awake, and the short cache of the backend's own answer while it is.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tokio::time::Instant;

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
    Ok(format!("data:image/png;base64,{}", BASE64.encode(&bytes)))
}

/// The width and height of a PNG, from its signature and IHDR chunk (the `png` crate checks
/// the chunk's CRC and reads the header chunks up to the image data).
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .ok()?;
    let info = reader.info();
    Some((info.width, info.height))
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

#[cfg(test)]
mod tests {
    use super::*;

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
