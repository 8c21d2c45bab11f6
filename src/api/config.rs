//! The API's `[[gateway.token]]` tables: bearer tokens and their roles, and the rule that an
//! API reachable from the network has at least one.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::config::de::{MIN_SECRET_LEN, Secret, secret};
use crate::config::diag::Problems;

/// An API token and what it may do.
#[derive(Debug, Clone)]
pub struct Token {
    pub name: String,
    pub secret: Secret,
    pub role: Role,
    /// The templates it may create, destroy and extend services of (with `operate`); `None`:
    /// every template. An `admin` token may use them all.
    pub templates: Option<Vec<String>>,
    /// For the `agent` role: the services it may report for.
    pub services: Vec<String>,
}

/// What a token may do; `read`, `operate` and `admin` each include the ones before them.
/// `agent` stands apart, below them all: it may only report for its own services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Only report activity (and take pre-stop requests) for the token's `services`: the
    /// token of a `wakegate agent`.
    Agent,
    /// See services, events and metrics.
    Read,
    /// Also wake, sleep and hold leases.
    Operate,
    /// Everything.
    Admin,
}

/// A `[[gateway.token]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenConfig {
    name: Spanned<String>,
    secret: Spanned<String>,
    role: Role,
    templates: Option<Vec<String>>,
    services: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Checks the tokens (`None` for a table that could not be read, already reported) and that an
/// API bound to `api` beyond loopback has one. `configured` are the names of the services,
/// when they could all be read, to check the services of agent tokens against (created
/// services cannot have one: their names are given at run time).
pub(crate) fn read_tokens(
    token_configs: Vec<Option<TokenConfig>>,
    api: &Spanned<SocketAddr>,
    configured: Option<&[String]>,
    problems: &mut Problems<'_>,
) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    // A token that could not be read was reported already.
    let mut ok = token_configs.iter().all(Option::is_some);
    let mut names = std::collections::HashSet::new();
    for t in token_configs.into_iter().flatten() {
        let services = match (t.role, t.services) {
            (Role::Agent, Some(services)) if !services.get_ref().is_empty() => {
                for name in services.get_ref() {
                    if configured.is_some_and(|all| !all.contains(name.get_ref())) {
                        problems.add(
                            Some(name.span()),
                            format!(
                                "agent token `{}` names service `{}`, which is not configured",
                                t.name.get_ref(),
                                name.get_ref()
                            ),
                            "name the [[service]] whose host runs the agent",
                        );
                        ok = false;
                    }
                }
                services
                    .into_inner()
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect()
            }
            (Role::Agent, services) => {
                problems.add(
                    Some(services.map_or(t.name.span(), |s| s.span())),
                    format!("agent token `{}` names no service", t.name.get_ref()),
                    "list the services it reports for, e.g. services = [\"survival\"]",
                );
                ok = false;
                Vec::new()
            }
            (_, Some(services)) => {
                problems.add(
                    Some(services.span()),
                    format!(
                        "token `{}` has `services`, which only an agent token has",
                        t.name.get_ref()
                    ),
                    "remove `services`, or set role = \"agent\" for a token that only reports activity",
                );
                ok = false;
                Vec::new()
            }
            (_, None) => Vec::new(),
        };
        if !names.insert(t.name.get_ref().clone()) {
            problems.add(
                Some(t.name.span()),
                format!("token name `{}` is used twice", t.name.get_ref()),
                "give every [[gateway.token]] its own name",
            );
            ok = false;
        }
        let what = format!("the secret of token `{}`", t.name.get_ref());
        match secret(&t.secret, &what, problems) {
            Some(secret) if secret.expose().len() >= MIN_SECRET_LEN => tokens.push(Token {
                name: t.name.into_inner(),
                secret,
                role: t.role,
                templates: t.templates,
                services,
            }),
            Some(_) => {
                problems.add(
                    Some(t.secret.span()),
                    format!("{what} is too short to be safe"),
                    "use at least 16 characters, e.g. from `openssl rand -hex 32`, kept in an environment variable",
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    let span = api.span();
    let api = *api.get_ref();
    if tokens.is_empty() && ok && !api.ip().is_loopback() {
        problems.add(
            Some(span),
            format!("the API on {api} is reachable from the network but no [[gateway.token]] is configured"),
            "add a [[gateway.token]] with a secret, or bind the API to 127.0.0.1",
        );
        ok = false;
    }
    ok.then_some(tokens)
}
