//! HTTP host routing: the host a request names (`listener::http::request_host`: Host header or
//! absolute URI, port, case and trailing dot) against a routing table (`listener::route`) of
//! fuzzer-chosen hostnames, both raw and as the config reader accepts them for `http`
//! listeners sharing one port. It must never panic, and:
//! - a host is routed only to an entry that names it (exactly or by `*.parent`) or to the
//!   default, and to nothing only when no entry names it and there is no default;
//! - `*.parent` matches one non-empty label before `.parent`: never `parent` itself, nor a name
//!   that merely ends with it;
//! - every hostname the config reader accepts can be named by a request, in any case, with a
//!   trailing dot or a port, and leads to its own entry; a name one label below a wildcard
//!   leads to that entry unless another names it exactly or by an earlier wildcard.
//!
//! The input is text, one instruction a line, so seeds read like a config and its requests:
//! `entry [default] NAME...` (an entry; names are split at spaces), `host VALUE` (a Host
//! header), `uri AUTHORITY` (an `http://AUTHORITY/` target), `label LABEL` (a label to put
//! before each wildcard). Each name the config reader accepts is also requested in several
//! spellings.
#![no_main]

use std::fmt::Write;

use http::Request;
use http::header::HOST;
use libfuzzer_sys::fuzz_target;
use wakegate::config::parse;
use wakegate::listener::config::Listen;
use wakegate::listener::http::request_host;
use wakegate::listener::route::{Named, Routes, host_matches};

/// What a line of the input asks for.
#[derive(Default)]
struct Input<'a> {
    entries: Vec<Entry>,
    hosts: Vec<&'a str>,
    uris: Vec<&'a str>,
    labels: Vec<&'a str>,
}

impl<'a> Input<'a> {
    fn read(text: &'a str) -> Input<'a> {
        let mut input = Input::default();
        for line in text.lines() {
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            match kind {
                "entry" => {
                    let mut names: Vec<String> = rest.split(' ').map(str::to_string).collect();
                    names.retain(|n| !n.is_empty());
                    let default = names.first().is_some_and(|n| n == "default");
                    if default {
                        names.remove(0);
                    }
                    input.entries.push(Entry {
                        hostnames: names,
                        default,
                    });
                }
                "host" => input.hosts.push(rest),
                "uri" => input.uris.push(rest),
                "label" => input.labels.push(rest),
                _ => {}
            }
        }
        input
    }
}

/// The spellings every accepted name is requested in: case, trailing dot, port.
const SPELLINGS: &[Spelling] = &[
    Spelling {
        case: 0,
        dot: false,
        port: None,
    },
    Spelling {
        case: u64::MAX,
        dot: false,
        port: None,
    },
    Spelling {
        case: 0x5555_5555_5555_5555,
        dot: true,
        port: None,
    },
    Spelling {
        case: 0xaaaa_aaaa_aaaa_aaaa,
        dot: false,
        port: Some(8080),
    },
    Spelling {
        case: 1,
        dot: true,
        port: Some(0),
    },
];

/// Upper-case letters where `case` has bits set, a trailing dot, a port.
#[derive(Debug, Clone, Copy)]
struct Spelling {
    case: u64,
    dot: bool,
    port: Option<u16>,
}

struct Entry {
    hostnames: Vec<String>,
    default: bool,
}

impl Named for Entry {
    fn hostnames(&self) -> &[String] {
        &self.hostnames
    }
    fn is_default(&self) -> bool {
        self.default
    }
}

fn spell(host: &str, spelling: Spelling) -> String {
    let mut out: String = host
        .chars()
        .enumerate()
        .map(|(i, c)| match spelling.case >> (i % 64) & 1 {
            1 => c.to_ascii_uppercase(),
            _ => c,
        })
        .collect();
    if spelling.dot {
        out.push('.');
    }
    if let Some(port) = spelling.port {
        write!(out, ":{port}").unwrap();
    }
    out
}

/// The host a request with this Host header is routed by; `None` if it is no header value.
fn host_of_header(value: &str) -> Option<String> {
    let request = Request::builder()
        .uri("/")
        .header(HOST, value)
        .body(())
        .ok()?;
    Some(request_host(&request))
}

fn host_of_uri(authority: &str) -> Option<String> {
    let request = Request::builder()
        .uri(format!("http://{authority}/"))
        .body(())
        .ok()?;
    request.uri().host()?;
    Some(request_host(&request))
}

/// Whether an entry names a host, exactly or by a wildcard.
fn names(entry: &Entry, host: &str) -> bool {
    entry
        .hostnames
        .iter()
        .any(|h| h == host || host_matches(h, host))
}

/// The routing invariants for any host, on any table.
fn check_find(entries: &[Entry], routes: &Routes<Entry>, has_default: bool, host: &str) {
    match routes.find(host) {
        Some((i, entry)) => {
            assert!(entry.hostnames == entries[i].hostnames && entry.default == entries[i].default);
            assert!(
                names(entry, host) || (has_default && !entries.iter().any(|e| names(e, host))),
                "{host:?} went to entry {i}, which does not name it"
            );
            if let Some(exact) = entries
                .iter()
                .position(|e| e.hostnames.iter().any(|h| h == host))
            {
                assert_eq!(i, exact, "{host:?} is named exactly by entry {exact}");
            }
        }
        None => assert!(
            !has_default && !entries.iter().any(|e| names(e, host)),
            "{host:?} found no entry"
        ),
    }
}

fn check_pattern(pattern: &str, host: &str) {
    let matched = host_matches(pattern, host);
    match pattern.strip_prefix("*.") {
        None => assert_eq!(matched, pattern == host),
        Some(parent) => {
            assert!(!host_matches(pattern, parent));
            assert!(!host_matches(pattern, &format!("x{parent}")));
            if matched {
                let label = &host[..host.len() - parent.len() - 1];
                assert!(!label.is_empty() && !label.contains('.'));
                assert_eq!(&host[label.len()..], format!(".{parent}"));
            }
        }
    }
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' || c == '\u{7f}' => write!(out, "\\u{:04X}", u32::from(c)).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The entries as `http` listeners of services sharing one port, as the config reader accepts
/// them (lower-cased, without trailing dots), or `None` where it refuses them.
fn validated(specs: &[Entry]) -> Option<Vec<Entry>> {
    let mut text = String::new();
    for (i, spec) in specs.iter().enumerate() {
        let hostnames: Vec<String> = spec.hostnames.iter().map(|h| quote(h)).collect();
        write!(
            text,
            "[[service]]\nname = \"s{i}\"\n[service.backend]\ntype = \"exec\"\nstart = \"true\"\n\
             stop = \"true\"\naddress = \"127.0.0.1:9\"\n[[service.listen]]\ntype = \"http\"\n\
             bind = \"127.0.0.1:8080\"\nhostnames = [{}]\ndefault = {}\n",
            hostnames.join(", "),
            spec.default
        )
        .unwrap();
    }
    let config = parse(&text, "fuzz.toml").ok()?;
    let entries = config
        .services
        .iter()
        .map(|service| match &service.listeners[..] {
            [Listen::Http(http)] => Entry {
                hostnames: http.hostnames.clone(),
                default: http.default,
            },
            other => panic!("one http listener was written, not {}", other.len()),
        })
        .collect();
    Some(entries)
}

/// Every name an entry lists, spelled as a request may spell it, routes where it must.
fn check_own_names(entries: &[Entry], routes: &Routes<Entry>, has_default: bool, labels: &[&str]) {
    for (index, entry) in entries.iter().enumerate() {
        for pattern in &entry.hostnames {
            let hosts: Vec<String> = match pattern.strip_prefix("*.") {
                None => vec![pattern.clone()],
                Some(parent) => {
                    // Its parent goes wherever names nobody lists go: never by this pattern.
                    check_find(entries, routes, has_default, parent);
                    labels
                        .iter()
                        .map(|l| dns_label(l))
                        .chain(["x".to_string(), "www".to_string()])
                        .map(|label| format!("{label}.{parent}"))
                        .collect()
                }
            };
            for host in hosts {
                for &spelling in SPELLINGS {
                    let spelled = spell(&host, spelling);
                    let routed = host_of_header(&spelled).unwrap_or_else(|| {
                        panic!(
                            "the config takes {pattern:?}, but no Host header can say {spelled:?}"
                        )
                    });
                    assert_eq!(routed, host, "Host: {spelled}");
                    let (i, found) = routes
                        .find(&routed)
                        .expect("a name an entry lists is routed");
                    if pattern.starts_with("*.") {
                        // Another entry may name it exactly, or an earlier one by a wildcard.
                        assert!(
                            i == index
                                || found.hostnames.contains(&host)
                                || (i < index && names(found, &host)),
                            "{host:?} went to entry {i}, not {index}"
                        );
                    } else {
                        assert_eq!(i, index, "{host:?} is listed by entry {index}");
                    }
                }
            }
        }
    }
}

/// A valid DNS label made of the letters, digits and dashes of `text`.
fn dns_label(text: &str) -> String {
    let label: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(63)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if label.is_empty() {
        "x".to_string()
    } else {
        label
    }
}

fn copy(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .map(|e| Entry {
            hostnames: e.hostnames.clone(),
            default: e.default,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let input = Input::read(&text);
    if input.entries.len() > 6 || input.hosts.len() + input.uris.len() > 32 {
        return;
    }
    let hosts: Vec<String> = input
        .hosts
        .iter()
        .filter_map(|h| host_of_header(h))
        .chain(input.uris.iter().filter_map(|u| host_of_uri(u)))
        .collect();
    for host in &hosts {
        assert!(
            !host.ends_with('.') && !host.bytes().any(|b| b.is_ascii_uppercase()),
            "{host:?}"
        );
    }

    // Raw patterns, whatever their spelling: nothing panics, the invariants hold.
    let raw = &input.entries;
    for lone_takes_all in [false, true] {
        let routes = Routes::new(copy(raw), lone_takes_all);
        let has_default = raw.iter().any(|e| e.default || e.hostnames.is_empty())
            || (lone_takes_all && raw.len() == 1);
        for host in &hosts {
            check_find(raw, &routes, has_default, host);
            for pattern in raw.iter().flat_map(|e| &e.hostnames) {
                check_pattern(pattern, host);
            }
        }
    }

    // The same entries as the config reader takes them.
    let Some(entries) = validated(raw) else {
        return;
    };
    let has_default = entries.iter().any(|e| e.default || e.hostnames.is_empty());
    let routes = Routes::new(copy(&entries), false);
    for host in &hosts {
        check_find(&entries, &routes, has_default, host);
    }
    check_own_names(&entries, &routes, has_default, &input.labels);
});
