//! Discord webhooks: one embed per event, coloured by the service's state, and the rate limit
//! Discord announces (HTTP 429 with `Retry-After` and `retry_after`) honoured.

use std::time::Duration;

use hyper::body::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::webhook::EVENT_ID;
use crate::event::{Event, Kind, State, format_time};

/// Discord's limits on an embed's description and on a field's value, in characters.
const MAX_DESCRIPTION: usize = 4096;
const MAX_FIELD: usize = 1024;

/// The colour of an embed for the state a service is in.
pub fn colour(state: State) -> u32 {
    match state {
        State::Asleep => 0x95a5a6,   // grey
        State::Waking => 0xf39c12,   // amber
        State::Awake => 0x2ecc71,    // green
        State::Stopping => 0x3498db, // blue
        State::Failed => 0xe74c3c,   // red
    }
}

/// The JSON Discord is sent for an event.
pub fn message(event: &Event) -> Value {
    let title = match event.kind {
        Kind::Transition => format!("{} {}", event.service, event.state.phrase()),
        kind => format!("{}: {}", event.service, kind.as_str()),
    };
    let mut fields = Vec::new();
    for key in ["address", "client", "exit"] {
        let value = match event.detail.get(key) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Null) | None => continue,
            Some(Value::String(_)) => continue,
            Some(other) => other.to_string(),
        };
        fields.push(json!({ "name": key, "value": truncate(&value, MAX_FIELD), "inline": true }));
    }
    let mut embed = json!({
        "title": title,
        "color": colour(event.state),
        "fields": fields,
        "timestamp": format_time(event.time),
        "footer": { "text": format!("wakegate event #{}", event.id) },
    });
    // Discord refuses an empty description.
    if !event.reason.is_empty() {
        embed["description"] = json!(truncate(&event.reason, MAX_DESCRIPTION));
    }
    json!({
        "embeds": [embed],
        // A reason may quote a server's output: never let it ping anyone.
        "allowed_mentions": { "parse": [] },
    })
}

/// The body and headers of one delivery. Discord ignores the event id header; it is sent so a
/// proxy in between could drop a repeat.
pub fn request(event: &Event) -> (Vec<(HeaderName, HeaderValue)>, Bytes) {
    let body = serde_json::to_vec(&message(event)).expect("JSON always serializes");
    let headers = vec![
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (EVENT_ID, HeaderValue::from(event.id)),
    ];
    (headers, Bytes::from(body))
}

/// The wait Discord asks for in the body of a 429: `retry_after`, in seconds, maybe fractional.
pub fn retry_after(body: &[u8]) -> Option<Duration> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let seconds = value.get("retry_after")?.as_f64()?;
    Duration::try_from_secs_f64(seconds).ok()
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if text[cut..].chars().nth(1).is_some() => format!("{}…", &text[..cut]),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::from_millis;

    #[test]
    fn an_embed_says_what_happened_in_the_state_colour() {
        let event = Event {
            id: 42,
            time: from_millis(1_700_000_000_000),
            service: "survival".into(),
            kind: Kind::Transition,
            state: State::Failed,
            reason: "the backend stopped on its own while awake: exit code 1".into(),
            detail: json!({ "exit": "exit code 1", "log_tail": "boom", "previous": "awake" }),
        };
        let m = message(&event);
        let embed = &m["embeds"][0];
        assert_eq!(embed["title"], "survival has failed");
        assert_eq!(embed["color"], 0xe74c3c);
        assert_eq!(embed["description"], event.reason);
        assert_eq!(embed["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(
            embed["fields"],
            json!([{ "name": "exit", "value": "exit code 1", "inline": true }])
        );
        assert_eq!(embed["footer"]["text"], "wakegate event #42");

        let lease = Event {
            kind: Kind::Lease,
            state: State::Awake,
            ..event
        };
        assert_eq!(message(&lease)["embeds"][0]["title"], "survival: lease");
    }

    #[test]
    fn retry_after_may_be_fractional() {
        let body =
            br#"{"message": "You are being rate limited.", "retry_after": 0.25, "global": false}"#;
        assert_eq!(retry_after(body), Some(Duration::from_millis(250)));
        assert_eq!(retry_after(b"{}"), None);
        assert_eq!(retry_after(br#"{"retry_after": -1}"#), None);
        assert_eq!(retry_after(b"not json"), None);
    }

    #[test]
    fn long_texts_are_cut_to_discord_limits() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate(&"é".repeat(5000), 4096).chars().count(), 4096);
    }
}
