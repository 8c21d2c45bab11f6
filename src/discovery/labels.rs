//! A container's `wakegate.*` labels, read into the table of a `[[service]]` whose backend is
//! that container; the service itself is then read like any other (`service::config`). Each
//! label is checked on its own first, so that a mistake names the label.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::config::DockerDiscovery;
use crate::template::config::valid_name;

/// The label that makes a container a service.
pub const ENABLE: &str = "wakegate.enable";

/// Every label read, with what it sets (for the README and the unknown-label message).
pub const LABELS: [&str; 13] = [
    ENABLE,
    "wakegate.name",
    "wakegate.listen",
    "wakegate.bind",
    "wakegate.hostname",
    "wakegate.port",
    "wakegate.network",
    "wakegate.address",
    "wakegate.idle_timeout",
    "wakegate.wake_timeout",
    "wakegate.sleep_mode",
    "wakegate.stop_timeout",
    // Set by wakegate on the containers it creates; not a setting.
    crate::backend::docker::config::CREATED_LABEL,
];

/// A label that does not make sense: which, its value, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLabel {
    pub label: String,
    pub value: String,
    pub why: String,
}

impl std::fmt::Display for BadLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "label `{}={}`: {}", self.label, self.value, self.why)
    }
}

/// What a container is, for its service.
#[derive(Debug, Clone)]
pub struct Container<'a> {
    pub id: &'a str,
    /// Without the leading `/`.
    pub name: &'a str,
    pub labels: &'a HashMap<String, String>,
}

impl Container<'_> {
    /// The service's name: `wakegate.name`, else the container's name.
    pub fn service_name(&self) -> &str {
        self.labels
            .get("wakegate.name")
            .map_or(self.name, String::as_str)
    }
}

/// The `[[service]]` table the container's labels describe, its backend the container (by id,
/// through the API at `socket`).
pub fn service_table(
    container: &Container<'_>,
    discovery: &DockerDiscovery,
    socket: &str,
) -> Result<toml::Table, BadLabel> {
    let labels = container.labels;
    let bad = |label: &str, why: String| BadLabel {
        label: label.to_string(),
        value: labels.get(label).cloned().unwrap_or_default(),
        why,
    };
    if let Some(unknown) = labels
        .keys()
        .filter(|k| k.starts_with("wakegate.") && !LABELS.contains(&k.as_str()))
        .min()
    {
        return Err(bad(
            unknown,
            format!(
                "unknown label; the labels read are {}",
                LABELS[..12].join(", ")
            ),
        ));
    }
    let name = container.service_name();
    if !valid_name(name) {
        let why =
            format!("`{name}` is not a service name: names use only a-z, 0-9 and '-' (at most 63)");
        return Err(match labels.get("wakegate.name") {
            Some(_) => bad("wakegate.name", why),
            None => BadLabel {
                label: "wakegate.name".into(),
                value: String::new(),
                why: format!(
                    "{why}; the container's name is used when the label is missing, so set it"
                ),
            },
        });
    }
    let mut service = toml::Table::new();
    service.insert("name".into(), name.into());
    for key in ["idle_timeout", "wake_timeout"] {
        let label = format!("wakegate.{key}");
        if let Some(value) = labels.get(&label) {
            duration(value).map_err(|why| bad(&label, why))?;
            service.insert(key.into(), value.as_str().into());
        }
    }

    let mut backend = toml::Table::new();
    backend.insert("type".into(), "docker".into());
    backend.insert("socket".into(), socket.into());
    backend.insert("container".into(), container.id.into());
    if let Some(port) = labels.get("wakegate.port") {
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("wakegate.port", "not a port (1-65535)".into()))?;
        backend.insert("port".into(), i64::from(port).into());
    }
    if let Some(network) = labels.get("wakegate.network") {
        backend.insert("network".into(), network.as_str().into());
    }
    if let Some(address) = labels.get("wakegate.address") {
        let valid = crate::config::de::is_host_port(address);
        if !valid {
            return Err(bad("wakegate.address", "not host:port".into()));
        }
        backend.insert("address".into(), address.as_str().into());
    }
    match (labels.get("wakegate.port"), labels.get("wakegate.address")) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "wakegate.address",
                "both wakegate.port and wakegate.address are set; keep one".into(),
            ));
        }
        (None, None) => {
            return Err(BadLabel {
                label: "wakegate.port".into(),
                value: String::new(),
                why: "missing: give the port the server listens on in the container (or wakegate.address)".into(),
            });
        }
        _ => {}
    }
    if let Some(mode) = labels.get("wakegate.sleep_mode") {
        if !matches!(mode.as_str(), "stop" | "pause") {
            return Err(bad("wakegate.sleep_mode", "use stop or pause".into()));
        }
        backend.insert("sleep_mode".into(), mode.as_str().into());
    }
    if let Some(timeout) = labels.get("wakegate.stop_timeout") {
        duration(timeout).map_err(|why| bad("wakegate.stop_timeout", why))?;
        backend.insert("stop_timeout".into(), timeout.as_str().into());
    }
    service.insert("backend".into(), backend.into());

    service.insert(
        "listen".into(),
        toml::Value::Array(vec![listener(labels, discovery, &bad)?.into()]),
    );
    Ok(service)
}

/// The `[[service.listen]]` of the labels: its type, its bind (a shared socket of
/// `[discovery.docker]` by default) and its hostnames.
fn listener(
    labels: &HashMap<String, String>,
    discovery: &DockerDiscovery,
    bad: &dyn Fn(&str, String) -> BadLabel,
) -> Result<toml::Table, BadLabel> {
    let kind = labels.get("wakegate.listen").map_or("tcp", String::as_str);
    let shared = match kind {
        "tcp" => None,
        "http" => Some(&discovery.http),
        "minecraft" => Some(&discovery.minecraft),
        _ => return Err(bad("wakegate.listen", "use tcp, http or minecraft".into())),
    };
    let bind = match labels.get("wakegate.bind") {
        Some(text) => text
            .parse::<SocketAddr>()
            .map_err(|_| bad("wakegate.bind", "not IP:PORT, e.g. 0.0.0.0:25565".into()))?,
        None => match shared.and_then(|s| s.first()) {
            Some(bind) => *bind,
            None if kind == "tcp" => {
                return Err(BadLabel {
                    label: "wakegate.bind".into(),
                    value: String::new(),
                    why: "missing: a tcp service needs the IP:PORT it listens on".into(),
                });
            }
            None => {
                return Err(BadLabel {
                    label: "wakegate.listen".into(),
                    value: kind.into(),
                    why: format!(
                        "no shared {kind} socket: list one in [discovery.docker] {kind} = [\"0.0.0.0:PORT\"]"
                    ),
                });
            }
        },
    };
    let mut listen = toml::Table::new();
    listen.insert("type".into(), kind.into());
    listen.insert("bind".into(), bind.to_string().into());
    if let Some(names) = labels.get("wakegate.hostname") {
        if kind == "tcp" {
            return Err(bad(
                "wakegate.hostname",
                "a tcp listener does not route by hostname; set wakegate.listen to http or minecraft".into(),
            ));
        }
        let names: Vec<toml::Value> = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(toml::Value::from)
            .collect();
        listen.insert("hostnames".into(), toml::Value::Array(names));
    }
    Ok(listen)
}

fn duration(text: &str) -> Result<(), String> {
    crate::config::de::parse_duration(text)
        .map(drop)
        .map_err(|e| format!("{e}; write it like 30s, 10m or 1h30m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery() -> DockerDiscovery {
        DockerDiscovery {
            socket: None,
            http: vec!["0.0.0.0:8080".parse().unwrap()],
            minecraft: Vec::new(),
        }
    }

    fn table(labels: &[(&str, &str)]) -> Result<toml::Table, BadLabel> {
        let labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let container = Container {
            id: "0123abcd",
            name: "web",
            labels: &labels,
        };
        service_table(&container, &discovery(), "unix:///run/docker.sock")
    }

    #[test]
    fn labels_make_a_service_that_reads_like_a_configured_one() {
        let table = table(&[
            (ENABLE, "true"),
            ("wakegate.name", "blog"),
            ("wakegate.listen", "http"),
            (
                "wakegate.hostname",
                "blog.example.com, www.blog.example.com",
            ),
            ("wakegate.port", "80"),
            ("wakegate.network", "web"),
            ("wakegate.idle_timeout", "15m"),
            ("wakegate.sleep_mode", "pause"),
        ])
        .unwrap();
        let service = crate::service::config::from_table(&table).unwrap();
        assert_eq!(service.name, "blog");
        assert_eq!(service.idle_timeout, std::time::Duration::from_secs(900));
        let crate::backend::config::Backend::Docker(docker) = service.backend else {
            panic!("not docker")
        };
        assert!(docker.pause);
        assert_eq!(
            docker.select,
            crate::backend::docker::config::Select::Name("0123abcd".into())
        );
        let crate::listener::config::Listen::Http(http) = &service.listeners[0] else {
            panic!("not http")
        };
        assert_eq!(http.bind, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(http.hostnames, ["blog.example.com", "www.blog.example.com"]);
    }

    #[test]
    fn a_tcp_service_by_the_container_name_with_a_fixed_address() {
        let table = table(&[
            ("wakegate.bind", "127.0.0.1:4000"),
            ("wakegate.address", "127.0.0.1:4001"),
        ])
        .unwrap();
        let service = crate::service::config::from_table(&table).unwrap();
        assert_eq!(service.name, "web");
        assert_eq!(
            service.listeners[0].bind(),
            "127.0.0.1:4000".parse().unwrap()
        );
    }

    #[test]
    fn each_bad_label_is_named() {
        for (labels, label, why) in [
            (
                vec![("wakegate.port", "http")],
                "wakegate.port",
                "not a port",
            ),
            (
                vec![("wakegate.port", "80"), ("wakegate.idle_timeout", "soon")],
                "wakegate.idle_timeout",
                "not a duration",
            ),
            (
                vec![("wakegate.port", "80"), ("wakegate.listen", "udp")],
                "wakegate.listen",
                "tcp, http or minecraft",
            ),
            (
                vec![("wakegate.port", "80"), ("wakegate.idle", "5m")],
                "wakegate.idle",
                "unknown label",
            ),
            (
                vec![("wakegate.port", "80"), ("wakegate.name", "Web_1")],
                "wakegate.name",
                "not a service name",
            ),
            (
                vec![("wakegate.bind", "1.2.3.4:5")],
                "wakegate.port",
                "missing",
            ),
            (vec![("wakegate.port", "80")], "wakegate.bind", "missing"),
            (
                vec![("wakegate.port", "80"), ("wakegate.listen", "minecraft")],
                "wakegate.listen",
                "no shared minecraft socket",
            ),
            (
                vec![
                    ("wakegate.port", "80"),
                    ("wakegate.bind", "1.2.3.4:5"),
                    ("wakegate.sleep_mode", "freeze"),
                ],
                "wakegate.sleep_mode",
                "stop or pause",
            ),
            (
                vec![("wakegate.port", "80"), ("wakegate.bind", "localhost")],
                "wakegate.bind",
                "not IP:PORT",
            ),
        ] {
            let err = table(&labels).unwrap_err();
            assert_eq!(err.label, label, "{labels:?}: {err}");
            assert!(err.why.contains(why), "{labels:?}: {err}");
        }
    }
}
