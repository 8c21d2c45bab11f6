//! An event as it is published live: one allocation shared by every consumer of the broadcast,
//! with its wire forms (the JSON of the API streams, a Server-Sent Events frame) made once, by
//! the first consumer that needs them, whatever the number of subscribers.

use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::Event;

/// A published event; cloning it is a reference count.
#[derive(Debug, Clone)]
pub struct Published(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    event: Event,
    json: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
}

impl Published {
    pub fn new(event: Event) -> Published {
        Published(Arc::new(Inner {
            event,
            json: OnceLock::new(),
            sse: OnceLock::new(),
        }))
    }

    pub fn event(&self) -> &Event {
        &self.0.event
    }

    /// The event as the API shows it: one line of JSON (UTF-8, no line break).
    pub fn json(&self) -> &Bytes {
        self.0.json.get_or_init(|| {
            // An `Event` is plain data (strings, numbers, a JSON value): it always serializes.
            Bytes::from(serde_json::to_vec(&self.0.event).unwrap_or_default())
        })
    }

    /// The event as one Server-Sent Events frame: `id`, `event` (its kind) and `data` (the
    /// JSON), ended by a blank line.
    pub fn sse(&self) -> &Bytes {
        self.0.sse.get_or_init(|| {
            let (event, json) = (&self.0.event, self.json());
            let mut frame = Vec::with_capacity(json.len() + 48);
            frame.extend_from_slice(
                format!("id: {}\nevent: {}\ndata: ", event.id, event.kind.as_str()).as_bytes(),
            );
            frame.extend_from_slice(json);
            frame.extend_from_slice(b"\n\n");
            Bytes::from(frame)
        })
    }
}

impl Deref for Published {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.0.event
    }
}

impl From<Event> for Published {
    fn from(event: Event) -> Published {
        Published::new(event)
    }
}

impl PartialEq for Published {
    fn eq(&self, other: &Published) -> bool {
        self.0.event == other.0.event
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::event::{Kind, State};

    #[test]
    fn its_wire_forms_are_the_event_once_serialized() {
        let event = Event {
            id: 42,
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            service: "mc".into(),
            kind: Kind::Transition,
            state: State::Awake,
            reason: "line one\nline two".into(),
            detail: serde_json::json!({ "previous": "waking" }),
        };
        let published = Published::new(event.clone());
        let json: serde_json::Value = serde_json::from_slice(published.json()).unwrap();
        assert_eq!(json, serde_json::to_value(&event).unwrap());
        assert!(!published.json().contains(&b'\n'));
        let frame = std::str::from_utf8(published.sse()).unwrap();
        let expected = format!(
            "id: 42\nevent: transition\ndata: {}\n\n",
            std::str::from_utf8(published.json()).unwrap()
        );
        assert_eq!(frame, expected);
        // Every clone shares the same bytes.
        let clone = published.clone();
        assert_eq!(clone.json().as_ptr(), published.json().as_ptr());
    }
}
