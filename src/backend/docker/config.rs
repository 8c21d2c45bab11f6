//! The config of the `docker` backend (`[service.backend]` with `type = "docker"` and its
//! `[service.backend.create]`), read into [`Docker`], and the `socket` key it shares with
//! `[discovery.docker]`. Reading needs no Docker: the socket is first tried at `run`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::de::{Secret, duration, expand_env, read};
use crate::config::diag::Problems;

/// The label every container wakegate creates carries, with the service's name: it is how a
/// container selected by nothing else is found again.
pub const CREATED_LABEL: &str = "wakegate.service";

/// A container, started and stopped (or paused) as the service wakes and sleeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Docker {
    /// Where the Docker API is: `None` takes `DOCKER_HOST`, then the usual sockets.
    pub socket: Option<String>,
    pub select: Select,
    pub address: Address,
    /// Pause instead of stopping.
    pub pause: bool,
    /// Remove the container after each stop (it is created again at the next wake).
    pub remove: bool,
    /// How long a stop waits for the container to exit before it is killed.
    pub stop_timeout: Duration,
    /// How to create the container when none matches.
    pub create: Option<Create>,
}

/// Which container: exactly one must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    Name(String),
    /// Every label must match (`key=value`).
    Labels(Vec<(String, String)>),
    /// The one wakegate created for this service (by [`CREATED_LABEL`]).
    Created,
}

impl std::fmt::Display for Select {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Select::Name(name) => write!(f, "container `{name}`"),
            Select::Labels(labels) => {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "the container labelled {}", labels.join(", "))
            }
            Select::Created => write!(f, "the container wakegate created for this service"),
        }
    }
}

/// Where the server listens once the container runs, read again on every wake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// The container's IP on this network, and the port it listens on. On the `host` network
    /// the server is on this host's loopback.
    Network { network: String, port: u16 },
    /// The host port Docker published for this container port (tcp).
    Published(u16),
    /// A `host:port` that does not change.
    Fixed(String),
}

/// `[service.backend.create]` with the backend's `image` and `network`: what a container
/// made by wakegate is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub image: String,
    /// Instead of the image's own command (none: the image's).
    pub command: Vec<String>,
    pub env: Vec<(String, Secret)>,
    pub ports: Vec<PortMap>,
    /// `source:destination[:options]`, as `docker run -v` takes them.
    pub volumes: Vec<String>,
    /// The network it joins (the backend's `network`).
    pub network: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Run a tiny init as PID 1 (signals reach the server, zombies are reaped).
    pub init: bool,
}

/// One published port: `[IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMap {
    /// `80/tcp`.
    pub container: String,
    pub host_ip: Option<String>,
    /// None: a port the engine picks.
    pub host_port: Option<u16>,
}

impl PortMap {
    /// Reads `docker run -p` syntax.
    pub fn parse(text: &str) -> Option<PortMap> {
        let (text, protocol) = match text.rsplit_once('/') {
            Some((rest, p @ ("tcp" | "udp" | "sctp"))) => (rest, p),
            Some(_) => return None,
            None => (text, "tcp"),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0);
        // An IPv6 host IP is written in brackets: [::1]:8080:80.
        let (host_ip, rest) = match text.strip_prefix('[') {
            Some(v6) => {
                let (ip, rest) = v6.split_once("]:")?;
                (Some(ip.to_string()), rest)
            }
            None => match text.matches(':').count() {
                2 => {
                    let (ip, rest) = text.split_once(':')?;
                    (Some(ip.to_string()), rest)
                }
                _ => (None, text),
            },
        };
        let (host_port, container) = match rest.split_once(':') {
            Some(("", container)) => (None, container),
            Some((host, container)) => (Some(port(host)?), container),
            None => (None, rest),
        };
        let container = port(container)?;
        Some(PortMap {
            container: format!("{container}/{protocol}"),
            host_ip: host_ip.filter(|ip| !ip.is_empty()),
            host_port,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerConfig {
    socket: Option<Spanned<String>>,
    container: Option<Spanned<String>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    image: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    network: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    #[serde(default)]
    sleep_mode: Option<Spanned<String>>,
    #[serde(default)]
    remove: Option<Spanned<bool>>,
    #[serde(default = "default_stop_timeout", deserialize_with = "duration")]
    stop_timeout: Duration,
    create: Option<Spanned<CreateConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConfig {
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    ports: Vec<Spanned<String>>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    init: bool,
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Reads a `docker` backend table (without its `type`).
pub(crate) fn read_docker(
    rest: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> Option<Docker> {
    let span = rest.span();
    let c: DockerConfig = read(rest, problems)?;
    let mut ok = true;
    let socket = match c.socket {
        None => Some(None),
        Some(socket) => check_socket(socket, problems).map(Some),
    };
    let select = match (c.container, c.labels) {
        (Some(name), None) if name.get_ref().trim().is_empty() => {
            problems.add(
                Some(name.span()),
                "`container` is empty",
                "name the container, as `docker ps -a` shows it",
            );
            None
        }
        (Some(name), None) => Some(Select::Name(name.into_inner())),
        (None, Some(labels)) if labels.get_ref().is_empty() => {
            problems.add(
                Some(labels.span()),
                "`labels` is empty: every container would match",
                "name the labels that select exactly one container, e.g. labels = { app = \"minecraft\" }",
            );
            None
        }
        (None, Some(labels)) => Some(Select::Labels(labels.into_inner().into_iter().collect())),
        (Some(name), Some(_)) => {
            problems.add(
                Some(name.span()),
                "both `container` and `labels` are set",
                "select the container one way: by `container` name or by `labels`",
            );
            None
        }
        (None, None) if c.image.is_some() => Some(Select::Created),
        (None, None) => {
            problems.add(
                Some(span.clone()),
                "the docker backend names no container",
                "add `container = \"NAME\"` or `labels = { app = \"...\" }`, or an `image` for wakegate to create it from",
            );
            None
        }
    };
    let address = read_address(
        c.address,
        c.port,
        c.network.as_ref(),
        span.clone(),
        problems,
    );
    let pause = match &c.sleep_mode {
        None => false,
        Some(mode) => match mode.get_ref().as_str() {
            "stop" => false,
            "pause" => true,
            other => {
                problems.add(
                    Some(mode.span()),
                    format!("unknown sleep_mode `{other}` for a docker backend"),
                    "use sleep_mode = \"stop\" (stop the container) or \"pause\" (freeze it: it keeps its memory and resumes in milliseconds)",
                );
                ok = false;
                false
            }
        },
    };
    let remove = c.remove.as_ref().is_some_and(|r| *r.get_ref());
    if let Some(r) = c.remove.as_ref().filter(|r| *r.get_ref()) {
        if c.image.is_none() {
            problems.add(
                Some(r.span()),
                "`remove = true` needs an `image`",
                "the container is removed at each sleep and created again at the next wake: add `image = \"...\"` (and [service.backend.create] if it needs settings)",
            );
            ok = false;
        }
        if pause {
            problems.add(
                Some(r.span()),
                "`remove = true` and sleep_mode = \"pause\" cannot go together",
                "a paused container is kept to be resumed; remove one of the two",
            );
            ok = false;
        }
    }
    let create = match (c.image, c.create) {
        (Some(image), create) => {
            if image.get_ref().trim().is_empty() {
                problems.add(
                    Some(image.span()),
                    "`image` is empty",
                    "name the image to create the container from, e.g. \"itzg/minecraft-server\"",
                );
                ok = false;
            }
            let create = create.map(Spanned::into_inner);
            read_create(
                image.into_inner(),
                create,
                c.network.as_ref().map(|n| n.get_ref().clone()),
                problems,
            )
            .map(Some)
        }
        (None, Some(create)) => {
            problems.add(
                Some(create.span()),
                "[service.backend.create] needs an `image`",
                "add `image = \"...\"` to the docker backend: wakegate creates the container from it when none matches",
            );
            None
        }
        (None, None) => Some(None),
    };
    ok.then_some(())?;
    Some(Docker {
        socket: socket?,
        select: select?,
        address: address?,
        pause,
        remove,
        stop_timeout: c.stop_timeout,
        create: create?,
    })
}

/// `socket`: a Unix socket's path (`/run/docker.sock` or `unix:///run/docker.sock`), or a
/// `tcp://host:port` daemon.
pub(crate) fn check_socket(socket: Spanned<String>, problems: &mut Problems<'_>) -> Option<String> {
    let text = socket.get_ref().trim();
    let valid = text.starts_with('/')
        || text
            .strip_prefix("unix://")
            .is_some_and(|p| p.starts_with('/'))
        || ["tcp://", "http://"]
            .iter()
            .any(|p| text.strip_prefix(p).is_some_and(|rest| rest.contains(':')));
    if valid {
        Some(text.to_string())
    } else {
        problems.add(
            Some(socket.span()),
            format!("socket `{text}` is not a Unix socket path or tcp://HOST:PORT"),
            "write where the Docker API listens, e.g. \"/var/run/docker.sock\", \"unix:///run/podman/podman.sock\" or \"tcp://127.0.0.1:2375\"",
        );
        None
    }
}

/// `address` (a fixed host:port), or `port` with `network` (the container's IP there) or
/// without (the host port Docker published for it).
fn read_address(
    address: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    network: Option<&Spanned<String>>,
    table: std::ops::Range<usize>,
    problems: &mut Problems<'_>,
) -> Option<Address> {
    match (address, port) {
        (Some(address), None) => {
            crate::config::de::check_address(address, problems).map(Address::Fixed)
        }
        (Some(_), Some(port)) => {
            problems.add(
                Some(port.span()),
                "both `address` and `port` are set",
                "keep `address` for a fixed host:port, or `port` (with `network`) to read the container's address on every wake",
            );
            None
        }
        (None, Some(port)) if *port.get_ref() == 0 => {
            problems.add(
                Some(port.span()),
                "port = 0 is not a port",
                "write the port the server listens on inside the container",
            );
            None
        }
        (None, Some(port)) => Some(match network {
            Some(network) => Address::Network {
                network: network.get_ref().clone(),
                port: *port.get_ref(),
            },
            None => Address::Published(*port.get_ref()),
        }),
        (None, None) => {
            problems.add(
                Some(table),
                "the docker backend does not say where the server listens",
                "add `port = ...` (the port inside the container: read from its published port, or with `network` from its IP there) or a fixed `address = \"host:port\"`",
            );
            None
        }
    }
}

fn read_create(
    image: String,
    c: Option<CreateConfig>,
    network: Option<String>,
    problems: &mut Problems<'_>,
) -> Option<Create> {
    let Some(c) = c else {
        return Some(Create {
            image,
            command: Vec::new(),
            env: Vec::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            network,
            labels: Vec::new(),
            init: false,
        });
    };
    let env = expand_env(c.env, problems);
    let mut ok = true;
    let mut ports = Vec::new();
    for text in c.ports {
        match PortMap::parse(text.get_ref()) {
            Some(port) => ports.push(port),
            None => {
                problems.add(
                    Some(text.span()),
                    format!("`{}` is not a port mapping", text.get_ref()),
                    "write it as `docker run -p` takes it: \"25565\", \"25565:25565\", \"127.0.0.1:8080:80\" or \"19132:19132/udp\"",
                );
                ok = false;
            }
        }
    }
    let mut volumes = Vec::new();
    for volume in c.volumes {
        let parts: Vec<&str> = volume.get_ref().split(':').collect();
        if !(2..=3).contains(&parts.len()) || parts[..2].iter().any(|p| p.is_empty()) {
            problems.add(
                Some(volume.span()),
                format!("`{}` is not a volume", volume.get_ref()),
                "write it as `docker run -v` takes it: \"NAME:/data\", \"/srv/world:/data\" or \"/srv/config:/config:ro\"",
            );
            ok = false;
        } else {
            volumes.push(volume.into_inner());
        }
    }
    if c.labels.contains_key(CREATED_LABEL) {
        problems.add(
            None,
            format!("label `{CREATED_LABEL}` is wakegate's own"),
            "remove it from [service.backend.create] labels: wakegate sets it to the service's name",
        );
        ok = false;
    }
    ok.then_some(())?;
    Some(Create {
        image,
        command: c.command,
        env: env?,
        ports,
        volumes,
        network,
        labels: c.labels.into_iter().collect(),
        init: c.init,
    })
}
