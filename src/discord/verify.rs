//! The check Discord asks of an interactions endpoint: an Ed25519 signature
//! (`X-Signature-Ed25519`) over `X-Signature-Timestamp` followed by the raw body, and a timestamp
//! recent enough that a recorded request cannot be replayed later.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use ed25519_dalek::{Signature, VerifyingKey};

/// How old a request's timestamp may be.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// How far ahead of our clock a timestamp may be.
pub const MAX_AHEAD: Duration = Duration::from_secs(60);

/// Why a request was refused; never quotes the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the request has no {0} header")]
    Missing(&'static str),
    #[error("the X-Signature-Ed25519 header is not a signature in hex")]
    Malformed,
    #[error("the timestamp is not within five minutes of wakegate's clock")]
    Stale,
    #[error("the signature does not match the application's public key")]
    BadSignature,
}

/// Checks a request's signature and timestamp against `key` at `now`.
pub fn verify(
    key: &VerifyingKey,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), Refused> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(Refused::Missing(name))
    };
    let signature = header("x-signature-ed25519")?;
    let timestamp = header("x-signature-timestamp")?;
    let bytes = hex32x2(signature).ok_or(Refused::Malformed)?;
    let signature = Signature::from_bytes(&bytes);
    let seconds: u64 = timestamp.trim().parse().map_err(|_| Refused::Stale)?;
    let sent = UNIX_EPOCH + Duration::from_secs(seconds);
    let fresh = match now.duration_since(sent) {
        Ok(age) => age <= MAX_AGE,
        Err(ahead) => ahead.duration() <= MAX_AHEAD,
    };
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    key.verify_strict(&message, &signature)
        .map_err(|_| Refused::BadSignature)?;
    // Checked after the signature, so the answer never tells an unsigned request about our clock.
    if !fresh {
        return Err(Refused::Stale);
    }
    Ok(())
}

fn hex32x2(text: &str) -> Option<[u8; 64]> {
    let text = text.trim();
    if text.len() != 128 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(key: &SigningKey, timestamp: &str, body: &[u8]) -> HeaderMap {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        let signature: String = key
            .sign(&message)
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut headers = HeaderMap::new();
        headers.insert("x-signature-ed25519", signature.parse().unwrap());
        headers.insert("x-signature-timestamp", timestamp.parse().unwrap());
        headers
    }

    #[test]
    fn signatures_over_timestamp_and_body_are_checked() {
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let public = key.verifying_key();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let body = br#"{"type":1}"#;
        let headers = signed(&key, "1700000000", body);
        assert_eq!(verify(&public, &headers, body, now), Ok(()));
        assert_eq!(
            verify(&public, &headers, br#"{"type":2}"#, now),
            Err(Refused::BadSignature)
        );
        let other = SigningKey::from_bytes(&[6u8; 32]).verifying_key();
        assert_eq!(
            verify(&other, &headers, body, now),
            Err(Refused::BadSignature)
        );
        // Five minutes old is fine, a second more is not; a minute ahead is fine, more is not.
        assert_eq!(verify(&public, &headers, body, now + MAX_AGE), Ok(()));
        assert_eq!(
            verify(
                &public,
                &headers,
                body,
                now + MAX_AGE + Duration::from_secs(1)
            ),
            Err(Refused::Stale)
        );
        assert_eq!(verify(&public, &headers, body, now - MAX_AHEAD), Ok(()));
        assert_eq!(
            verify(
                &public,
                &headers,
                body,
                now - MAX_AHEAD - Duration::from_secs(1)
            ),
            Err(Refused::Stale)
        );
        let mut missing = headers.clone();
        missing.remove("x-signature-timestamp");
        assert_eq!(
            verify(&public, &missing, body, now),
            Err(Refused::Missing("x-signature-timestamp"))
        );
        let mut garbled = headers;
        garbled.insert("x-signature-ed25519", "abc".parse().unwrap());
        assert_eq!(
            verify(&public, &garbled, body, now),
            Err(Refused::Malformed)
        );
    }
}
