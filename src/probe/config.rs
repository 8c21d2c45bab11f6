//! Reading a readiness or health probe table (`[service.readiness]`, `[[service.health]]`)
//! into a [`Check`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::{Check, Probe, tls};
use crate::config::de::{duration, read};
use crate::config::diag::Problems;

/// The keys of a probe table other than `type` (and, for a health check, its schedule).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    url: Option<Spanned<String>>,
    method: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    status: Vec<u16>,
    body_contains: Option<String>,
    pattern: Option<Spanned<String>>,
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    timeout: Duration,
    /// PEM certificates of the authorities an `https://` URL's certificate may be signed by.
    ca_file: Option<Spanned<PathBuf>>,
    /// Accept any certificate of an `https://` URL.
    insecure: Option<Spanned<bool>>,
    /// What a `udp` probe sends (`hex:…` or `text:…`).
    payload: Option<Spanned<String>>,
    /// The port a `udp` probe sends to, when not the backend address's.
    port: Option<Spanned<u16>>,
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Reads a probe of `kind` from a table without its `type`.
/// `readiness` allows the `log` and `container` probes, which only a wake can wait for.
pub(crate) fn read_probe(
    kind: &str,
    rest: Spanned<DeValue<'_>>,
    readiness: bool,
    problems: &mut Problems<'_>,
) -> Option<Check> {
    let span = rest.span();
    let c: ProbeConfig = read(rest, problems)?;
    let only = |key: &str, problems: &mut Problems<'_>, span: Range<usize>| {
        problems.add(
            Some(span),
            format!("`{key}` does not belong to a `{kind}` probe"),
            "remove it; `wakegate config example` shows the keys of each probe type",
        );
        None
    };
    if kind != "udp"
        && let Some(payload) = &c.payload
    {
        return only("payload", problems, payload.span());
    }
    if kind != "udp"
        && kind != "bedrock"
        && let Some(port) = &c.port
    {
        return only("port", problems, port.span());
    }
    let probe = match kind {
        "bedrock" => {
            for (key, span) in [
                ("url", c.url.as_ref().map(|u| u.span())),
                ("pattern", c.pattern.as_ref().map(|p| p.span())),
                ("ca_file", c.ca_file.as_ref().map(|c| c.span())),
                ("insecure", c.insecure.as_ref().map(|i| i.span())),
            ] {
                if let Some(span) = span {
                    return only(key, problems, span);
                }
            }
            Probe::Bedrock {
                port: c.port.map(Spanned::into_inner),
            }
        }
        "udp" => {
            for (key, span) in [
                ("url", c.url.as_ref().map(|u| u.span())),
                ("pattern", c.pattern.as_ref().map(|p| p.span())),
                ("ca_file", c.ca_file.as_ref().map(|c| c.span())),
                ("insecure", c.insecure.as_ref().map(|i| i.span())),
            ] {
                if let Some(span) = span {
                    return only(key, problems, span);
                }
            }
            let Some(payload) = c.payload else {
                problems.add(
                    Some(span),
                    "a udp probe needs a `payload`",
                    "give a datagram the backend answers, e.g. payload = \"hex:…\" (a DNS query for a DNS server)",
                );
                return None;
            };
            match crate::listener::udp::config::parse_bytes(payload.get_ref()) {
                Ok(bytes) if !bytes.is_empty() => Probe::Udp {
                    payload: bytes,
                    port: c.port.map(Spanned::into_inner),
                },
                Ok(_) => {
                    problems.add(
                        Some(payload.span()),
                        "the udp probe's `payload` is empty",
                        "give a datagram the backend answers",
                    );
                    return None;
                }
                Err(e) => {
                    problems.add(
                        Some(payload.span()),
                        e,
                        "e.g. payload = \"hex:0001\" or payload = \"text:PING\"",
                    );
                    return None;
                }
            }
        }
        "tcp" | "minecraft" => {
            if let Some(url) = &c.url {
                return only("url", problems, url.span());
            }
            if let Some(pattern) = &c.pattern {
                return only("pattern", problems, pattern.span());
            }
            if let Some(ca_file) = &c.ca_file {
                return only("ca_file", problems, ca_file.span());
            }
            if let Some(insecure) = &c.insecure {
                return only("insecure", problems, insecure.span());
            }
            if kind == "tcp" {
                Probe::Tcp
            } else {
                Probe::Minecraft
            }
        }
        "http" => {
            let Some(url) = c.url else {
                problems.add(
                    Some(span),
                    "an http probe needs a `url`",
                    "e.g. url = \"http://{address}/healthz\" ({address} is the backend's address)",
                );
                return None;
            };
            let secure = url.get_ref().starts_with("https://");
            if !secure && !url.get_ref().starts_with("http://") {
                problems.add(
                    Some(url.span()),
                    format!("`{}` is not an http:// or https:// URL", url.get_ref()),
                    "use http://{address}/path, or https://HOST/path for a name its certificate holds",
                );
                return None;
            }
            let https = read_https(secure, c.ca_file, c.insecure, problems)?;
            // A value may come from the environment (a token): it is never printed.
            let mut headers = Vec::new();
            let mut headers_ok = true;
            for (name, value) in c.headers {
                let secret_header = matches!(
                    name.to_ascii_lowercase().as_str(),
                    "authorization" | "proxy-authorization" | "cookie"
                ) || crate::config::de::looks_secret(&name.replace('-', "_"));
                let read = if secret_header {
                    let what = format!("the value of header `{name}`");
                    crate::config::de::secret(&value, &what, problems)
                } else {
                    crate::config::de::from_env(&value, problems)
                };
                match read {
                    Some(secret) => headers.push((name, secret)),
                    None => headers_ok = false,
                }
            }
            if !headers_ok {
                return None;
            }
            let method = match &c.method {
                None => hyper::Method::GET,
                Some(m) => match hyper::Method::from_bytes(m.get_ref().as_bytes()) {
                    Ok(method) => method,
                    Err(_) => {
                        problems.add(
                            Some(m.span()),
                            format!("`{}` is not an HTTP method", m.get_ref()),
                            "use GET, HEAD or POST",
                        );
                        return None;
                    }
                },
            };
            Probe::Http {
                url: url.into_inner(),
                method,
                headers,
                status: c.status,
                body_contains: c.body_contains,
                https,
            }
        }
        "log" if readiness => {
            if let Some(ca_file) = &c.ca_file {
                return only("ca_file", problems, ca_file.span());
            }
            if let Some(insecure) = &c.insecure {
                return only("insecure", problems, insecure.span());
            }
            let Some(pattern) = c.pattern else {
                problems.add(
                    Some(span),
                    "a log probe needs a `pattern`",
                    "e.g. pattern = 'Done \\(' for a Minecraft server",
                );
                return None;
            };
            match regex::Regex::new(pattern.get_ref()) {
                Ok(re) => Probe::LogLine(re),
                Err(e) => {
                    // The regex error draws the pattern over several lines; its last says why.
                    let why = e.to_string();
                    let why = why
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim_start_matches("error: ");
                    problems.add(
                        Some(pattern.span()),
                        format!("`{}` is not a regular expression: {why}", pattern.get_ref()),
                        "check the pattern's syntax (Rust regex)",
                    );
                    return None;
                }
            }
        }
        "container" if readiness => {
            let set = [
                ("url", c.url.as_ref().map(|v| v.span())),
                ("pattern", c.pattern.as_ref().map(|v| v.span())),
                ("ca_file", c.ca_file.as_ref().map(|v| v.span())),
                ("insecure", c.insecure.as_ref().map(|v| v.span())),
            ];
            if let Some((key, Some(span))) = set.into_iter().find(|(_, s)| s.is_some()) {
                return only(key, problems, span);
            }
            Probe::Container
        }
        other => {
            let kinds = if readiness {
                "tcp, http, minecraft, bedrock, udp, log, container"
            } else {
                "tcp, http, minecraft, bedrock, udp"
            };
            problems.add(
                Some(span),
                format!("unknown probe type `{other}`"),
                &format!("use one of: {kinds}"),
            );
            return None;
        }
    };
    Some(Check {
        probe,
        timeout: c.timeout,
        proxy_header: false,
    })
}

/// The TLS settings of an http probe: `None` when a problem was reported, `Some(None)` for an
/// `http://` URL.
fn read_https(
    secure: bool,
    ca_file: Option<Spanned<PathBuf>>,
    insecure: Option<Spanned<bool>>,
    problems: &mut Problems<'_>,
) -> Option<Option<tls::Https>> {
    if !secure {
        if let Some(key) = ca_file
            .as_ref()
            .map(|c| ("ca_file", c.span()))
            .or(insecure.as_ref().map(|i| ("insecure", i.span())))
        {
            problems.add(
                Some(key.1),
                format!("`{}` applies to https:// URLs only", key.0),
                "remove it, or probe an https:// URL",
            );
            return None;
        }
        return Some(None);
    }
    let insecure_set = insecure.as_ref().is_some_and(|i| *i.get_ref());
    if let (Some(ca_file), true) = (&ca_file, insecure_set) {
        problems.add(
            Some(ca_file.span()),
            "`ca_file` and `insecure = true` are both set",
            "keep ca_file (the certificate is checked against it) and remove insecure",
        );
        return None;
    }
    match tls::Https::new(
        ca_file.as_ref().map(|c| c.get_ref().as_path()),
        insecure_set,
    ) {
        Ok(https) => Some(Some(https)),
        Err(e) => {
            problems.add(
                ca_file.map(|c| c.span()),
                e,
                "give a PEM file with the certificate of the authority that signed the server's",
            );
            None
        }
    }
}
