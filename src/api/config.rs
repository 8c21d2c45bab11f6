//! The API's `[[gateway.token]]` tables: bearer tokens and their roles, and the rule that an
//! API reachable from the network has at least one.

use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

use crate::config::de::{MIN_SECRET_LEN, Secret, expand};
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
}

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
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
}

/// Checks the tokens (`None` for a table that could not be read, already reported) and that an
/// API bound to `api` beyond loopback has one.
pub(crate) fn read_tokens(
    token_configs: Vec<Option<TokenConfig>>,
    api: &Spanned<SocketAddr>,
    problems: &mut Problems<'_>,
) -> Option<Vec<Token>> {
    let mut tokens = Vec::new();
    // A token that could not be read was reported already.
    let mut ok = token_configs.iter().all(Option::is_some);
    let mut names = std::collections::HashSet::new();
    for t in token_configs.into_iter().flatten() {
        if !names.insert(t.name.get_ref().clone()) {
            problems.add(
                Some(t.name.span()),
                format!("token name `{}` is used twice", t.name.get_ref()),
                "give every [[gateway.token]] its own name",
            );
            ok = false;
        }
        match expand(t.secret.get_ref()) {
            Ok(secret) if secret.expose().len() >= MIN_SECRET_LEN => tokens.push(Token {
                name: t.name.into_inner(),
                secret,
                role: t.role,
                templates: t.templates,
            }),
            Ok(_) => {
                problems.add(
                    Some(t.secret.span()),
                    format!("the secret of token `{}` is too short to be safe", t.name.get_ref()),
                    "use at least 16 characters, e.g. from `openssl rand -hex 32`, kept in an environment variable",
                );
                ok = false;
            }
            Err(var) => {
                problems.add(
                    Some(t.secret.span()),
                    format!("environment variable `{var}` is not set"),
                    "export it before starting wakegate, or write the value itself",
                );
                ok = false;
            }
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
