//! The request a backend gets: the client's, with hop-by-hop headers removed (an upgrade's
//! kept), `Host` and the path set for an HTTP/1.1 backend, and `X-Forwarded-*` added.

use std::fmt::Write as _;
use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{PathAndQuery, Uri};
use hyper::{Method, Request, Version};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Turns the client's request into the one the backend gets (see [`Proxy::forward`]); returns
/// whether it asks for an upgrade.
pub(super) fn prepare_request(req: &mut Request<Incoming>, client: SocketAddr, tls: bool) -> bool {
    let upgrade = req.version() == Version::HTTP_11 && asks_upgrade(req.headers());
    // HTTP/2 carries the host in the URI; HTTP/1.1 backends want it in `Host` and the path
    // alone on the request line.
    let host = match req.headers().get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if req.method() != Method::CONNECT
        && (req.uri().scheme().is_some() || req.uri().authority().is_some())
    {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    remove_hop_by_hop(headers, upgrade);
    let proto = if tls { "https" } else { "http" };
    let ip = client.ip().to_canonical();

    let mut forwarded_for = String::with_capacity(48);
    append_values(&mut forwarded_for, headers, &X_FORWARDED_FOR);
    let _ = write!(forwarded_for, "{ip}");

    let mut forwarded = String::with_capacity(80);
    append_values(&mut forwarded, headers, &header::FORWARDED);
    if ip.is_ipv6() {
        let _ = write!(forwarded, "for=\"[{ip}]\"");
    } else {
        let _ = write!(forwarded, "for={ip}");
    }
    if let Some(host) = &host {
        forwarded.push_str(";host=");
        quote_if_needed(&mut forwarded, host.as_bytes());
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);

    if let Ok(value) = HeaderValue::try_from(forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    if let Ok(value) = HeaderValue::try_from(forwarded) {
        headers.insert(header::FORWARDED, value);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        headers.entry(header::HOST).or_insert(host);
    }
    upgrade
}

/// The values of `name` already there, joined and followed by ", " (nothing if there are none).
fn append_values(out: &mut String, headers: &HeaderMap, name: &HeaderName) {
    for value in headers.get_all(name) {
        if let Ok(value) = value.to_str() {
            let value = value.trim();
            if !value.is_empty() {
                out.push_str(value);
                out.push_str(", ");
            }
        }
    }
}

/// A `Forwarded` parameter value: a token as it is, anything else as a quoted string.
fn quote_if_needed(out: &mut String, value: &[u8]) {
    let token = !value.is_empty()
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let text = String::from_utf8_lossy(value);
    if token {
        out.push_str(&text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Whether the request asks to switch protocols: `Upgrade` named in `Connection`. `h2c` is
/// between the client and us (our listener speaks HTTP/2 itself): never passed on.
fn asks_upgrade(headers: &HeaderMap) -> bool {
    let Some(upgrade) = headers.get(header::UPGRADE) else {
        return false;
    };
    if upgrade.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return false;
    }
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| has_token(value, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|value| {
        value
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Removes the headers that concern one hop only (RFC 9110 7.6.1): `Connection` and the
/// headers it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding` and
/// `Upgrade`. With `upgrade`, `Upgrade` stays and `Connection` says `upgrade` alone.
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages have one `Connection` header or none: no allocation for those.
    let mut connection = headers.get_all(header::CONNECTION).iter();
    let first = connection.next().cloned();
    let rest: Vec<HeaderValue> = connection.cloned().collect();
    if first.is_some() {
        headers.remove(header::CONNECTION);
    }
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',').map(str::trim) {
            if name.is_empty()
                || (upgrade && name.eq_ignore_ascii_case("upgrade"))
                || name.eq_ignore_ascii_case("close")
                || name.eq_ignore_ascii_case("keep-alive")
            {
                continue;
            }
            headers.remove(name);
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    if headers
        .keys()
        .any(|name| name.as_str().starts_with("proxy-"))
    {
        let proxy: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("proxy-"))
            .cloned()
            .collect();
        for name in proxy {
            headers.remove(name);
        }
    }
    if upgrade {
        if headers.contains_key(header::UPGRADE) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    } else {
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_others_stay() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Session"),
            ("connection", "close"),
            ("x-session", "abc"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
            ("cookie", "a=b"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["cookie", "x-kept"]);
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_only_the_upgrade_token() {
        let mut map = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAA"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(asks_upgrade(&map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["sec-websocket-key"], "k");
        assert!(!map.contains_key("http2-settings"));
    }

    #[test]
    fn h2c_and_a_lone_upgrade_header_are_no_upgrade() {
        assert!(!asks_upgrade(&headers(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c")
        ])));
        assert!(!asks_upgrade(&headers(&[("upgrade", "websocket")])));
    }

    #[test]
    fn forwarded_values_are_quoted_when_not_tokens() {
        let mut out = String::new();
        quote_if_needed(&mut out, b"example.com");
        assert_eq!(out, "example.com");
        out.clear();
        quote_if_needed(&mut out, b"example.com:8080");
        assert_eq!(out, "\"example.com:8080\"");
        out.clear();
        quote_if_needed(&mut out, b"a\"b");
        assert_eq!(out, "\"a\\\"b\"");
    }
}
