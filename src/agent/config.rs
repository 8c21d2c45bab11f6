//! The agent's two configs: its own file (`agent.toml`: where the gateway is, what to measure,
//! the dead man's switch and the pre-stop command), read into [`Agent`]; and the gateway's
//! `[service.agent]` table, read into [`ServiceAgent`] by the service's reader.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::de::{Secret, duration, read, spanned_duration};
use crate::config::diag::{ConfigError, Problems};
use crate::notify::http::Endpoint;

// ---------------------------------------------------------------------------------------------
// The gateway's side: `[service.agent]`.

/// What the gateway does with a service's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAgent {
    /// How long a stop waits for the agent's pre-stop command before stopping anyway.
    pub pre_stop_timeout: Duration,
    /// The longest a report keeps the service awake without a new one, whatever its
    /// `valid_for` says.
    pub max_valid_for: Duration,
}

impl Default for ServiceAgent {
    fn default() -> ServiceAgent {
        ServiceAgent {
            pre_stop_timeout: default_pre_stop_timeout(),
            max_valid_for: default_max_valid_for(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceAgentConfig {
    #[serde(default = "default_pre_stop_timeout", deserialize_with = "duration")]
    pre_stop_timeout: Duration,
    #[serde(
        default = "default_spanned_max_valid_for",
        deserialize_with = "spanned_duration"
    )]
    max_valid_for: Spanned<Duration>,
}

fn default_pre_stop_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_valid_for() -> Duration {
    Duration::from_secs(600)
}
fn default_spanned_max_valid_for() -> Spanned<Duration> {
    Spanned::new(0..0, default_max_valid_for())
}

/// Reads `[service.agent]`; its defaults without one.
pub(crate) fn read_service_agent(
    value: Option<Spanned<DeValue<'_>>>,
    problems: &mut Problems<'_>,
) -> Option<ServiceAgent> {
    let Some(value) = value else {
        return Some(ServiceAgent::default());
    };
    let c: ServiceAgentConfig = read(value, problems)?;
    if *c.max_valid_for.get_ref() < Duration::from_secs(1) {
        problems.add(
            Some(c.max_valid_for.span()),
            "max_valid_for must be at least 1s",
            "set it above the agents' report_interval, e.g. \"10m\"",
        );
        return None;
    }
    Some(ServiceAgent {
        pre_stop_timeout: c.pre_stop_timeout,
        max_valid_for: c.max_valid_for.into_inner(),
    })
}

// ---------------------------------------------------------------------------------------------
// The agent's own file.

/// A validated `agent.toml`.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The gateway's API, without a trailing `/` (`https://gate.example.com`).
    pub gateway: String,
    pub service: String,
    pub token: Secret,
    /// Trust only the certificates of this PEM file (a private CA), not the public roots.
    pub ca_file: Option<PathBuf>,
    /// This host's name in the gateway's events.
    pub host: String,
    /// A report at least this often, and one whenever the figures change.
    pub report_interval: Duration,
    /// How often the figures are measured.
    pub check_interval: Duration,
    /// Established TCP connections whose local port is one of these count.
    pub ports: Vec<u16>,
    /// A Minecraft Java server whose players (from a status ping) count.
    pub minecraft: Option<SocketAddr>,
    /// A command (`sh -c`) that prints a count of users.
    pub count_command: Option<String>,
    /// The dead man's switch: with no answer from the gateway for `dead_man` and no activity
    /// for `idle_timeout`, `shutdown_command` runs.
    pub dead_man: Duration,
    pub idle_timeout: Duration,
    pub shutdown_command: Option<String>,
    /// What to run before the gateway stops the service (a world save).
    pub pre_stop: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentConfig {
    gateway: Spanned<String>,
    service: Spanned<String>,
    token: Spanned<String>,
    ca_file: Option<Spanned<PathBuf>>,
    host: Option<String>,
    #[serde(
        default = "default_report_interval",
        deserialize_with = "spanned_duration"
    )]
    report_interval: Spanned<Duration>,
    #[serde(
        default = "default_check_interval",
        deserialize_with = "spanned_duration"
    )]
    check_interval: Spanned<Duration>,
    #[serde(default)]
    ports: Vec<u16>,
    minecraft: Option<SocketAddr>,
    count_command: Option<String>,
    #[serde(default = "default_dead_man", deserialize_with = "spanned_duration")]
    dead_man: Spanned<Duration>,
    #[serde(default = "default_idle_timeout", deserialize_with = "duration")]
    idle_timeout: Duration,
    shutdown_command: Option<String>,
    pre_stop: Option<String>,
}

fn default_report_interval() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(30))
}
fn default_check_interval() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(5))
}
fn default_dead_man() -> Spanned<Duration> {
    Spanned::new(0..0, Duration::from_secs(15 * 60))
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(10 * 60)
}

/// Reads and validates an agent's config file.
pub fn load(path: &Path) -> Result<Agent, ConfigError> {
    load_with_warnings(path).map(|(agent, _)| agent)
}

/// As [`load`], with what the file holds that is allowed but unwise (a token written inline),
/// each as "FILE:LINE:COL: what; what to do".
pub fn load_with_warnings(path: &Path) -> Result<(Agent, Vec<String>), ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_with_warnings(&source, &path.display().to_string())
}

/// Validates an agent's config text; `origin` names it in messages.
pub fn parse(source: &str, origin: &str) -> Result<Agent, ConfigError> {
    parse_with_warnings(source, origin).map(|(agent, _)| agent)
}

/// As [`parse`], with the warnings.
pub fn parse_with_warnings(
    source: &str,
    origin: &str,
) -> Result<(Agent, Vec<String>), ConfigError> {
    let mut problems = Problems::new(source);
    let agent = parse_into(source, &mut problems);
    let (problems, warnings) = problems.into_parts();
    match agent {
        Some(agent) if problems.is_empty() => {
            Ok((agent, warnings.iter().map(|w| w.one_line(origin)).collect()))
        }
        _ => Err(ConfigError::Invalid {
            path: origin.to_string(),
            problems,
        }),
    }
}

fn parse_into(source: &str, problems: &mut Problems<'_>) -> Option<Agent> {
    let root = match toml::de::DeTable::parse(source) {
        Ok(root) => root,
        Err(e) => {
            problems.add_toml(e);
            return None;
        }
    };
    let span = root.span();
    let c: AgentConfig = read(
        Spanned::new(span, DeValue::Table(root.into_inner())),
        problems,
    )?;
    let mut ok = true;

    let gateway = c.gateway.get_ref().trim_end_matches('/').to_string();
    match Endpoint::parse(&gateway) {
        Err(why) => {
            problems.add(
                Some(c.gateway.span()),
                format!("gateway `{gateway}` {why}"),
                "write the gateway's API URL, e.g. \"https://gate.example.com\"",
            );
            ok = false;
        }
        Ok(endpoint) if !gateway.starts_with("https://") && !is_loopback(endpoint.host()) => {
            problems.add(
                Some(c.gateway.span()),
                format!(
                    "gateway `{gateway}` is plain http to another host: the token would cross the network in clear"
                ),
                "use https:// (with ca_file for a private CA); http:// is only for a gateway on this host",
            );
            ok = false;
        }
        Ok(_) => {}
    }
    let service = c.service.get_ref();
    if service.is_empty()
        || !service
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        problems.add(
            Some(c.service.span()),
            format!("service name `{service}` is not allowed"),
            "write the name of the [[service]] in the gateway's config",
        );
        ok = false;
    }
    let token = match crate::config::de::secret(&c.token, "the agent `token`", problems) {
        Some(token) if !token.expose().is_empty() => Some(token),
        Some(_) => {
            problems.add(
                Some(c.token.span()),
                "the token is empty",
                "write the secret of a [[gateway.token]] with role = \"agent\", e.g. \"${WAKEGATE_AGENT_TOKEN}\"",
            );
            None
        }
        None => None,
    };
    if let Some(ca) = &c.ca_file
        && let Err(e) = read_roots(ca.get_ref())
    {
        problems.add(
            Some(ca.span()),
            e,
            "give a PEM file with the certificate of the CA that signed the gateway's certificate",
        );
        ok = false;
    }
    let (report, check) = (*c.report_interval.get_ref(), *c.check_interval.get_ref());
    if report < Duration::from_secs(1) {
        problems.add(
            Some(c.report_interval.span()),
            "report_interval must be at least 1s",
            "a report every 30s (the default) is plenty: changes are sent at once anyway",
        );
        ok = false;
    }
    if check.is_zero() || check > report {
        problems.add(
            Some(c.check_interval.span()),
            "check_interval must be above zero and at most report_interval",
            "measure every few seconds, e.g. \"5s\" (the default)",
        );
        ok = false;
    }
    if *c.dead_man.get_ref() <= report {
        problems.add(
            Some(c.dead_man.span()),
            "dead_man must be longer than report_interval",
            "give the gateway time to come back, e.g. \"15m\" (the default)",
        );
        ok = false;
    }
    if c.ports.is_empty() && c.minecraft.is_none() && c.count_command.is_none() {
        problems.add(
            Some(span_of_top()),
            "the agent measures nothing",
            "add `ports = [25565]`, `minecraft = \"127.0.0.1:25565\"` or a `count_command`",
        );
        ok = false;
    }
    let host = c.host.unwrap_or_else(hostname);
    (ok && token.is_some()).then(|| Agent {
        gateway,
        service: c.service.into_inner(),
        token: token.unwrap_or_else(|| Secret::new("")),
        ca_file: c.ca_file.map(Spanned::into_inner),
        host,
        report_interval: report,
        check_interval: check,
        ports: c.ports,
        minecraft: c.minecraft,
        count_command: c.count_command,
        dead_man: c.dead_man.into_inner(),
        idle_timeout: c.idle_timeout,
        shutdown_command: c.shutdown_command,
        pre_stop: c.pre_stop,
    })
}

/// The top of the file, for problems of the file as a whole.
fn span_of_top() -> std::ops::Range<usize> {
    0..0
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The kernel's name for this host.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// The certificates of a PEM file, as the only roots to trust.
pub fn read_roots(path: &Path) -> Result<tokio_rustls::rustls::RootCertStore, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("ca_file {} is not PEM: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_file {} holds a bad certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file {} holds no certificate", path.display()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(text, "agent.toml") {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| p.message).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn a_small_file_gets_its_defaults() {
        let agent = parse(
            "gateway = \"https://gate.example.com/\"\nservice = \"survival\"\ntoken = \"t0k3n\"\nports = [25565]\n",
            "agent.toml",
        )
        .unwrap();
        assert_eq!(agent.gateway, "https://gate.example.com");
        assert_eq!(agent.report_interval, Duration::from_secs(30));
        assert_eq!(agent.check_interval, Duration::from_secs(5));
        assert_eq!(agent.dead_man, Duration::from_secs(900));
        assert_eq!(agent.idle_timeout, Duration::from_secs(600));
        assert!(agent.shutdown_command.is_none() && agent.pre_stop.is_none());
        assert!(!agent.host.is_empty());
        assert_eq!(format!("{:?}", agent.token), "Secret(****)");
    }

    #[test]
    fn the_deployed_example_is_valid() {
        let text = include_str!("../../deploy/agent.toml")
            .replace("${WAKEGATE_AGENT_TOKEN}", "agent-secret-0123456789");
        let agent = parse(&text, "deploy/agent.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(agent.ports, [25565]);
        assert_eq!(
            agent.shutdown_command.as_deref(),
            Some("systemctl poweroff")
        );
        assert!(agent.pre_stop.is_some() && agent.minecraft.is_some());
    }

    #[test]
    fn mistakes_are_reported_together() {
        let found = problems(
            "gateway = \"http://gate.example.com\"\nservice = \"Survival\"\ntoken = \"${WAKEGATE_TEST_UNSET_TOKEN}\"\nreport_interval = \"10s\"\ncheck_interval = \"20s\"\ndead_man = \"5s\"\n",
        );
        let expected = [
            "gateway `http://gate.example.com` is plain http to another host: the token would cross the network in clear",
            "service name `Survival` is not allowed",
            "environment variable `WAKEGATE_TEST_UNSET_TOKEN` is not set",
            "check_interval must be above zero and at most report_interval",
            "dead_man must be longer than report_interval",
            "the agent measures nothing",
        ];
        for message in expected {
            assert!(found.iter().any(|f| f == message), "{message}: {found:#?}");
        }
        assert!(
            problems(
                "gateway = \"http://127.0.0.1:7070\"\nservice = \"a\"\ntoken = \"x\"\nports = [1]\n"
            )
            .is_empty()
        );
        let found = problems(
            "gateway = \"https://g\"\nservice = \"a\"\ntoken = \"x\"\nports = [1]\nca_file = \"/nonexistent/ca.pem\"\ncolour = 1\n",
        );
        assert!(found.iter().any(|f| f.contains("colour")), "{found:#?}");
    }

    #[test]
    fn the_service_table_is_bounded() {
        let read = |text: &str| {
            let source = format!("[agent]\n{text}");
            let mut problems = Problems::new(&source);
            let mut root = toml::de::DeTable::parse(&source).unwrap().into_inner();
            let agent = read_service_agent(root.remove("agent"), &mut problems);
            (agent, problems.into_sorted())
        };
        let (agent, _) = read("pre_stop_timeout = \"2m\"");
        assert_eq!(
            agent.unwrap(),
            ServiceAgent {
                pre_stop_timeout: Duration::from_secs(120),
                max_valid_for: Duration::from_secs(600),
            }
        );
        let (agent, problems) = read("max_valid_for = \"0s\"");
        assert!(agent.is_none());
        assert_eq!(problems[0].message, "max_valid_for must be at least 1s");
    }
}
