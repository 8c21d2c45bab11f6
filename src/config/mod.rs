//! The config file as a whole: loading, the `[gateway]` table and the checks across services.
//! Strict structs read from TOML (`*Config`) are validated into the runtime types the rest of
//! wakegate uses; every problem in a file is collected, not just the first. Each subsystem
//! reads its own tables (`service::config`, `backend::config`, `listener::config`, …) with the
//! shared readers of [`de`] and reports to [`diag`].

pub mod de;
pub mod diag;
mod recover;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::api::config::{Token, TokenConfig, read_tokens};
use crate::listener::config::Listen;
use crate::service::config::{Service, ServicesRead, read_services};
use de::{duration, read};
use diag::Problems;
pub use diag::{ConfigError, Problem};

/// The commented template printed by `wakegate config example`.
pub const EXAMPLE: &str = include_str!("../../examples/wakegate.toml");

// ---------------------------------------------------------------------------------------------
// Runtime types: what the gateway runs on once a file has been validated.

/// A whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: Gateway,
    pub services: Vec<Service>,
    /// Where events are delivered (`[[notify]]`).
    pub notify: Vec<crate::notify::Target>,
    /// The Discord bot (`[discord]`), when there is one.
    pub discord: Option<crate::discord::Discord>,
    /// What services may be created from at run time (`[[template]]`).
    pub templates: Vec<crate::template::config::Template>,
    /// Where services are discovered at run time (`[discovery]`).
    pub discovery: crate::discovery::config::Discovery,
    /// What reading the file found allowed but unwise (a secret written inline), each as
    /// "FILE:LINE:COL: what; what to do".
    pub file_warnings: Vec<String>,
    /// What the file said, as plain TOML values (`${VAR}` not yet replaced): what a reload
    /// compares, table by table, to tell what changed (empty for a config built in code).
    pub source: toml::Table,
}

impl Config {
    /// What is allowed but weakens the setup: `config check` prints it, and wakegate logs it
    /// at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = self.file_warnings.clone();
        for service in &self.services {
            let checks = std::iter::once(("readiness probe", &service.readiness))
                .chain(service.health.iter().map(|h| ("health check", &h.check)));
            for (what, check) in checks {
                if let crate::probe::Probe::Http {
                    url,
                    https: Some(https),
                    ..
                } = &check.probe
                    && https.insecure
                {
                    warnings.push(format!(
                        "service `{}`: the {what} of {url} accepts any certificate (insecure = true): anyone between wakegate and the server can answer it; prefer ca_file",
                        service.name
                    ));
                }
            }
            warnings.extend(
                handoff_warnings(service).map(|w| format!("service `{}`: {w}", service.name)),
            );
        }
        warnings
    }
}

/// The warnings of the `minecraft` listeners of `service` that hand players to the server.
fn handoff_warnings(service: &Service) -> impl Iterator<Item = String> + '_ {
    use crate::backend::config::Backend;
    let fixed = match &service.backend {
        Backend::Exec(exec) => Some(exec.address.as_str()),
        Backend::Process(process) => Some(process.address.as_str()),
        Backend::Docker(docker) => match &docker.address {
            crate::backend::docker::config::Address::Fixed(address) => Some(address.as_str()),
            _ => None,
        },
        Backend::Ec2(_) | Backend::Ecs(_) => None,
    };
    service
        .listeners
        .iter()
        .flat_map(move |listener| match listener {
            Listen::Minecraft(m) => crate::listener::minecraft::config::handoff_warnings(
                m,
                service.idle_timeout,
                service.policy.player_poll,
                fixed,
            ),
            _ => Vec::new(),
        })
}

/// Settings of the daemon itself.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub data_dir: PathBuf,
    /// Where the store lives: SQLite in the data dir, or a PostgreSQL database.
    pub store: crate::store::Location,
    /// This gateway among those sharing a PostgreSQL store: `id` and `lease`.
    pub member: crate::store::Membership,
    pub api: SocketAddr,
    /// How long open connections may go on after SIGINT/SIGTERM before they are closed.
    pub shutdown_grace: Duration,
    /// Reload the config when its file changes, as SIGHUP does.
    pub watch_config: bool,
    /// Bearer tokens of the API; none means an open API, allowed only on loopback.
    pub tokens: Vec<Token>,
    /// Origins allowed to call the API from a browser page served elsewhere (CORS).
    pub cors_origins: Vec<String>,
    /// A socket of its own for the agents' reports (`[gateway.agents]`), with wakegate's TLS.
    pub agents: Option<crate::api::serve::Listen>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayConfig {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    store: Option<Spanned<String>>,
    /// This gateway's name among those sharing a PostgreSQL store.
    id: Option<Spanned<String>>,
    /// How long a gateway's lease on a service lasts without renewal (PostgreSQL only).
    #[serde(default, deserialize_with = "de::optional_spanned_duration")]
    lease: Option<Spanned<Duration>>,
    #[serde(default = "default_api")]
    api: Spanned<SocketAddr>,
    #[serde(default = "default_grace", deserialize_with = "duration")]
    shutdown_grace: Duration,
    #[serde(default)]
    watch_config: bool,
    #[serde(default)]
    cors_origins: Vec<String>,
    agents: Option<crate::api::serve::ListenConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            data_dir: default_data_dir(),
            store: None,
            id: None,
            lease: None,
            api: default_api(),
            shutdown_grace: default_grace(),
            watch_config: false,
            cors_origins: Vec::new(),
            agents: None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./wakegate-data")
}
fn default_api() -> Spanned<SocketAddr> {
    Spanned::new(0..0, SocketAddr::from(([127, 0, 0, 1], 7070)))
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&source, &path.display().to_string())
}

/// Where a client reaches the API of the gateway `path` configures: its `[gateway] api`, and
/// nothing else of the file (whose secrets are the server's, not the client's). An API bound
/// to every address (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn api_address(path: &Path) -> Result<SocketAddr, ConfigError> {
    let origin = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: origin.clone(),
        source,
    })?;
    let mut problems = Problems::new(&source);
    let api = match DeTable::parse(&source) {
        Err(e) => {
            problems.add_toml(e);
            None
        }
        Ok(root) => match root.get_ref().get("gateway").map(|g| g.get_ref()) {
            Some(DeValue::Table(gateway)) => match gateway.get("api") {
                Some(api) => read::<Spanned<SocketAddr>>(api.clone(), &mut problems),
                None => Some(default_api()),
            },
            _ => Some(default_api()),
        },
    };
    match api {
        Some(api) if problems.is_empty() => {
            let mut api = api.into_inner();
            if api.ip().is_unspecified() {
                api.set_ip(match api {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            Ok(api)
        }
        _ => Err(ConfigError::Invalid {
            path: origin,
            problems: problems.into_sorted(),
        }),
    }
}

/// Validates config text; `origin` names it in messages.
pub fn parse(source: &str, origin: &str) -> Result<Config, ConfigError> {
    let mut problems = Problems::new(source);
    let config = parse_into(source, &mut problems);
    let (problems, warnings) = problems.into_parts();
    match config {
        Some(mut config) if problems.is_empty() => {
            config.file_warnings = warnings.iter().map(|w| w.one_line(origin)).collect();
            // It parsed above, so this does too.
            config.source = source.parse().unwrap_or_default();
            Ok(config)
        }
        _ => Err(ConfigError::Invalid {
            path: origin.to_string(),
            problems,
        }),
    }
}

/// The tables the top level holds.
const TOP_LEVEL: [&str; 6] = [
    "gateway",
    "service",
    "template",
    "notify",
    "discord",
    "discovery",
];

/// Reads every part of the file, each apart, and checks across them with whatever could be
/// read: a mistake in one part never hides those of another.
fn parse_into(source: &str, problems: &mut Problems<'_>) -> Option<Config> {
    let (root, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        for e in syntax {
            problems.add_toml(e);
        }
        return None;
    }
    let mut root = root.into_inner();
    let (gateway, tokens) = match root.remove("gateway") {
        Some(value) => read_gateway_tables(value, problems),
        None => (Some(GatewayConfig::default()), Vec::new()),
    };
    let discovery = crate::discovery::config::read_discovery(root.remove("discovery"), problems);
    let discovers = discovery.as_ref().is_some_and(|d| d.docker.is_some());
    let read = match root.remove("service") {
        Some(value) => read_services(value, problems),
        // Services discovered from containers may be all there is.
        None if discovers => ServicesRead {
            services: Some(Vec::new()),
            names: Some(Vec::new()),
            binds: Vec::new(),
        },
        None => {
            problems.add(
                None,
                "no [[service]] is configured",
                "add at least one [[service]] with a [service.backend] and a [[service.listen]]",
            );
            ServicesRead::default()
        }
    };
    crate::listener::clash::check_binds(&read.binds, problems);
    let names = read.names.as_deref();
    let notify = crate::notify::read_targets(root.remove("notify"), names, problems);
    let templates = match root.remove("template") {
        // The skeletons are kept as plain values, to be filled at each creation.
        Some(value) => {
            let owned = toml::from_str::<toml::Table>(source).ok();
            crate::template::config::read_templates(
                value,
                owned.as_ref().and_then(|t| t.get("template")),
                problems,
            )
        }
        None => Some(Vec::new()),
    };
    let template_names: Option<Vec<String>> = templates
        .as_ref()
        .map(|t| t.iter().map(|t| t.name.clone()).collect());
    let discord = crate::discord::config::read_discord(
        root.remove("discord"),
        names,
        template_names.as_deref(),
        problems,
    );
    for (key, _) in root.iter() {
        let key_name = key.get_ref();
        let message = match diag::closest(key_name, &TOP_LEVEL) {
            Some(near) => format!("unknown top-level key `{key_name}`: did you mean `{near}`?"),
            None => format!("unknown top-level key `{key_name}`"),
        };
        problems.add(
            Some(key.span()),
            message,
            "the top level holds only [gateway], [[service]], [[template]], [[notify]], [discord] and [discovery] tables",
        );
    }
    let gateway = gateway.and_then(|g| read_gateway(g, tokens, names, problems));
    Some(Config {
        gateway: gateway?,
        services: read.services?,
        notify: notify?,
        discord: discord?,
        templates: templates?,
        discovery: discovery?,
        file_warnings: Vec::new(),
        source: toml::Table::new(),
    })
}

/// Reads `[gateway]`, and each of its `[[gateway.token]]` tables apart, so that every mistake
/// is reported.
fn read_gateway_tables(
    value: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> (Option<GatewayConfig>, Vec<Option<TokenConfig>>) {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        problems.add(
            Some(span),
            "`gateway` must be a table",
            "write it as [gateway]",
        );
        return (None, Vec::new());
    };
    let tokens = match table.remove("token") {
        None => Vec::new(),
        Some(tokens) => {
            let token_span = tokens.span();
            match tokens.into_inner() {
                DeValue::Array(items) => items.into_iter().map(|t| read(t, problems)).collect(),
                _ => {
                    problems.add(
                        Some(token_span),
                        "`gateway.token` must be an array of tables",
                        "write each token as a [[gateway.token]] table",
                    );
                    vec![None]
                }
            }
        }
    };
    let gateway = read::<GatewayConfig>(Spanned::new(span, DeValue::Table(table)), problems);
    (gateway, tokens)
}

fn read_gateway(
    c: GatewayConfig,
    tokens: Vec<Option<TokenConfig>>,
    services: Option<&[String]>,
    problems: &mut Problems<'_>,
) -> Option<Gateway> {
    let member = read_member(&c, problems);
    let agents = match c.agents {
        None => Some(None),
        Some(agents) => crate::api::serve::read(agents, problems).map(Some),
    };
    let store = match &c.store {
        None => Some(crate::store::Location::Sqlite),
        Some(text) => match crate::store::Location::parse(text.get_ref()) {
            Ok(location) => Some(location),
            Err((problem, hint)) => {
                problems.add(Some(text.span()), problem, hint);
                None
            }
        },
    };
    let tokens = read_tokens(tokens, &c.api, services, problems)?;
    Some(Gateway {
        data_dir: c.data_dir,
        store: store?,
        member: member?,
        api: c.api.into_inner(),
        shutdown_grace: c.shutdown_grace,
        watch_config: c.watch_config,
        tokens,
        cors_origins: c.cors_origins,
        agents: agents?,
    })
}

/// `id` and `lease`: who this gateway is to the others sharing its PostgreSQL store.
fn read_member(c: &GatewayConfig, problems: &mut Problems<'_>) -> Option<crate::store::Membership> {
    let mut member = crate::store::Membership::default();
    let mut ok = true;
    if let Some(id) = &c.id {
        let text = id.get_ref();
        if text.is_empty() || text.len() > 64 || text.chars().any(|c| c.is_control()) {
            problems.add(
                Some(id.span()),
                "`id` must be 1 to 64 printable characters",
                "name the gateway as you would a host (\"gw-1\"); each gateway sharing a store needs its own",
            );
            ok = false;
        }
        member.id = text.clone();
    }
    if let Some(lease) = &c.lease {
        if *lease.get_ref() < Duration::from_secs(1) {
            problems.add(
                Some(lease.span()),
                "`lease` must be at least 1s",
                "the owner renews every third of it; 15s (the default) suits most setups",
            );
            ok = false;
        }
        member.lease = *lease.get_ref();
    }
    ok.then_some(member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_with_its_line() {
        let src = r#"
[gateway]
api = "nowhere"

[[service]]
name = "Bad Name"
idle_timeout = "ten minutes"
[service.backend]
type = "exec"
start = "true"
stop = "true"
address = "127.0.0.1:9"
colour = "blue"
[[service.listen]]
type = "tcp"
bind = "127.0.0.1:7000"
"#;
        let ConfigError::Invalid { problems, .. } = parse(src, "x.toml").unwrap_err() else {
            panic!("expected Invalid")
        };
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        // The bad name is found although the same table holds a bad duration.
        assert_eq!(lines, vec![3, 6, 7, 13], "{problems:#?}");
        assert!(problems[3].message.contains("colour"));
    }
}
