//! `[discovery]`: where services are discovered at run time. Only `[discovery.docker]` today:
//! the Docker API's socket, and the shared `http` and `minecraft` sockets that discovered
//! services join by hostname (bound at start, like a template's).

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::backend::docker::config::check_socket;
use crate::config::de::read;
use crate::config::diag::Problems;

/// Where services are discovered.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub docker: Option<DockerDiscovery>,
}

/// `[discovery.docker]`: containers labelled `wakegate.enable=true` become services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerDiscovery {
    /// Where the Docker API is: `None` takes `DOCKER_HOST`, then the usual sockets.
    pub socket: Option<String>,
    /// Shared `http` sockets discovered services may join (the first is the default).
    pub http: Vec<SocketAddr>,
    /// Shared `minecraft` sockets discovered services may join (the first is the default).
    pub minecraft: Vec<SocketAddr>,
}

impl Discovery {
    /// The shared sockets discovered services join: their bind, and whether it is a
    /// `minecraft` one (else `http`).
    pub fn shared_binds(&self) -> Vec<(SocketAddr, bool)> {
        let Some(docker) = &self.docker else {
            return Vec::new();
        };
        let http = docker.http.iter().map(|b| (*b, false));
        http.chain(docker.minecraft.iter().map(|b| (*b, true)))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscoveryConfig {
    docker: Option<Spanned<DockerConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DockerConfig {
    socket: Option<Spanned<String>>,
    #[serde(default)]
    http: Vec<Spanned<SocketAddr>>,
    #[serde(default)]
    minecraft: Vec<Spanned<SocketAddr>>,
}

/// Reads the `[discovery]` table.
pub(crate) fn read_discovery(
    value: Option<Spanned<DeValue<'_>>>,
    problems: &mut Problems<'_>,
) -> Option<Discovery> {
    let Some(value) = value else {
        return Some(Discovery::default());
    };
    let c: DiscoveryConfig = read(value, problems)?;
    let Some(docker) = c.docker else {
        return Some(Discovery::default());
    };
    let docker = docker.into_inner();
    let socket = match docker.socket {
        None => Some(None),
        Some(socket) => check_socket(socket, problems).map(Some),
    };
    let mut ok = true;
    let mut seen = Vec::new();
    for bind in docker.http.iter().chain(&docker.minecraft) {
        if seen.contains(bind.get_ref()) {
            problems.add(
                Some(bind.span()),
                format!("{} is listed twice in [discovery.docker]", bind.get_ref()),
                "give each shared socket one protocol and list it once",
            );
            ok = false;
        }
        if bind.get_ref().port() == 0 {
            problems.add(
                Some(bind.span()),
                "a shared socket cannot have port 0",
                "give it the port clients use, e.g. \"0.0.0.0:80\"",
            );
            ok = false;
        }
        seen.push(*bind.get_ref());
    }
    ok.then_some(())?;
    Some(Discovery {
        docker: Some(DockerDiscovery {
            socket: socket?,
            http: docker.http.into_iter().map(Spanned::into_inner).collect(),
            minecraft: docker
                .minecraft
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
        }),
    })
}
