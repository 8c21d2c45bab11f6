//! The generic webhook: the event as JSON, with its id as idempotency key and an HMAC-SHA256
//! signature over `"{timestamp}.{body}"` so a receiver can tell it came from wakegate and is
//! fresh. README (Notifications) says how to verify it.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use hyper::body::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use sha2::Sha256;

use crate::event::Event;

/// The idempotency key: the event's id, the same on every retry.
pub const EVENT_ID: HeaderName = HeaderName::from_static("x-wakegate-event-id");
/// When this attempt was signed, in unix seconds (a fresh one on every retry).
pub const TIMESTAMP: HeaderName = HeaderName::from_static("x-wakegate-timestamp");
/// `sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` keyed with the secret.
pub const SIGNATURE: HeaderName = HeaderName::from_static("x-wakegate-signature");

/// The signature header's value for a body sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The body and headers of one delivery attempt.
pub fn request(event: &Event, secret: &[u8]) -> (Vec<(HeaderName, HeaderValue)>, Bytes) {
    let body = serde_json::to_vec(event).expect("an event always serializes");
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = sign(secret, timestamp, &body);
    let headers = vec![
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ),
        (EVENT_ID, HeaderValue::from(event.id)),
        (TIMESTAMP, HeaderValue::from(timestamp)),
        (
            SIGNATURE,
            HeaderValue::from_str(&signature).expect("hex is a valid header value"),
        ),
    ];
    (headers, Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Checked with: printf '1700000000.{"id":1}' | openssl dgst -sha256 -hmac 'secret'
        assert_eq!(
            sign(b"secret", 1_700_000_000, br#"{"id":1}"#),
            "sha256=3dd1b9aef568d75f6790a84bd2e5dfa1f44409eef3cbdbd3f10b837376100c11"
        );
    }
}
