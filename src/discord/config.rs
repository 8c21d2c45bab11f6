//! The `[discord]` table: the application, its secrets, the guilds it answers in, and which
//! Discord roles may do what to which services.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::de::{self, Secret};
use crate::config::diag::Problems;

/// Discord's REST API, version 10.
pub const DEFAULT_API_URL: &str = "https://discord.com/api/v10";

/// A validated `[discord]` table.
#[derive(Debug, Clone)]
pub struct Discord {
    pub application_id: u64,
    /// Checks the signature of every interaction.
    pub public_key: PublicKey,
    /// The bot token: sent as `Authorization: Bot …`, never printed.
    pub token: Secret,
    /// Interactions from other guilds are refused.
    pub guilds: Vec<u64>,
    /// Members with this role may do everything.
    pub admin_role: u64,
    /// Where Discord's REST API is (a stand-in in tests).
    pub api_url: String,
    pub roles: Vec<RoleGrant>,
    /// The category where each created server gets its private channel; none: no channels.
    pub category: Option<u64>,
    /// What becomes of that channel when its server ends.
    pub on_end: OnEnd,
    /// The interactions endpoint's own socket; none: on the API listener.
    pub listen: Option<crate::api::serve::Listen>,
}

/// What becomes of a created server's channel when the server ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnEnd {
    /// `DELETE /channels/{id}`: the channel and its messages are gone.
    #[default]
    Delete,
    /// Renamed `ended-NAME` and made read-only for the owner: the history stays for the admins.
    Archive,
}

/// The application's Ed25519 public key; its `Debug` does not print it.
#[derive(Clone)]
pub struct PublicKey(pub VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublicKey(****)")
    }
}

/// What one Discord role may do, and to which services.
#[derive(Debug, Clone)]
pub struct RoleGrant {
    pub id: u64,
    /// Service names; `*` covers every service.
    pub services: BTreeSet<String>,
    /// Template names (for create, and destroy/extend of what was created from them); `*`
    /// covers every template.
    pub templates: BTreeSet<String>,
    pub allow: BTreeSet<Permission>,
}

/// An action a role may be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    View,
    Start,
    Stop,
    /// Create a server from a template (`templates` of the role).
    Create,
    Destroy,
    Extend,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::View => "view",
            Permission::Start => "start",
            Permission::Stop => "stop",
            Permission::Create => "create",
            Permission::Destroy => "destroy",
            Permission::Extend => "extend",
        }
    }
}

impl Discord {
    /// Whether a member with `roles` may do `what` to `service`.
    pub fn allows(&self, roles: &[u64], service: &str, what: Permission) -> bool {
        roles.contains(&self.admin_role)
            || self
                .roles
                .iter()
                .any(|r| roles.contains(&r.id) && r.covers(service, what))
    }

    /// Whether a member with `roles` may do `what` (create, destroy, extend) with `template`.
    pub fn allows_template(&self, roles: &[u64], template: &str, what: Permission) -> bool {
        roles.contains(&self.admin_role)
            || self
                .roles
                .iter()
                .any(|r| roles.contains(&r.id) && r.covers_template(template, what))
    }

    /// The roles that would allow `what` with `template`, the admin role last.
    pub fn roles_allowing_template(&self, template: &str, what: Permission) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .roles
            .iter()
            .filter(|r| r.covers_template(template, what))
            .map(|r| r.id)
            .collect();
        ids.push(self.admin_role);
        ids.dedup();
        ids
    }

    /// The roles that would allow `what` on `service`, the admin role last.
    pub fn roles_allowing(&self, service: &str, what: Permission) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .roles
            .iter()
            .filter(|r| r.covers(service, what))
            .map(|r| r.id)
            .collect();
        ids.push(self.admin_role);
        ids.dedup();
        ids
    }
}

impl RoleGrant {
    fn covers_template(&self, template: &str, what: Permission) -> bool {
        self.allow.contains(&what)
            && (self.templates.contains("*") || self.templates.contains(template))
    }

    fn covers(&self, service: &str, what: Permission) -> bool {
        self.allow.contains(&what)
            && (self.services.contains("*") || self.services.contains(service))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscordConfig {
    application_id: Spanned<String>,
    public_key: Spanned<String>,
    token: Spanned<String>,
    guilds: Spanned<Vec<Spanned<String>>>,
    admin_role: Spanned<String>,
    api_url: Option<Spanned<String>>,
    category: Option<Spanned<String>>,
    #[serde(default)]
    on_end: OnEnd,
    listen: Option<crate::api::serve::ListenConfig>,
}

/// A `[[discord.role]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleConfig {
    id: Spanned<String>,
    #[serde(default)]
    services: Vec<Spanned<String>>,
    #[serde(default)]
    templates: Vec<Spanned<String>>,
    allow: Vec<Permission>,
}

/// Reads `[discord]` when there is one; `services` are the configured services and `templates`
/// the template names when they could be read, to check the roles' names against.
pub(crate) fn read_discord(
    value: Option<Spanned<DeValue<'_>>>,
    services: Option<&[String]>,
    templates: Option<&[String]>,
    problems: &mut Problems<'_>,
) -> Option<Option<Discord>> {
    let Some(value) = value else {
        return Some(None);
    };
    // Each `[[discord.role]]` is read apart, so that a mistake in one hides no other.
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        problems.add(
            Some(span),
            "`discord` must be a table",
            "write it as [discord]",
        );
        return None;
    };
    let role_configs: Vec<Option<RoleConfig>> = match table.remove("role") {
        None => Vec::new(),
        Some(roles) => {
            let roles_span = roles.span();
            match roles.into_inner() {
                DeValue::Array(items) => items.into_iter().map(|r| de::read(r, problems)).collect(),
                _ => {
                    problems.add(
                        Some(roles_span),
                        "`discord.role` must be an array of tables",
                        "write each role as a [[discord.role]] table",
                    );
                    vec![None]
                }
            }
        }
    };
    let c: Option<DiscordConfig> = de::read(Spanned::new(span, DeValue::Table(table)), problems);
    let mut ok = role_configs.iter().all(Option::is_some);
    let role_configs: Vec<RoleConfig> = role_configs.into_iter().flatten().collect();
    let c = c?;
    let mut snowflake = |text: &Spanned<String>, what: &str, problems: &mut Problems<'_>| match text
        .get_ref()
        .parse::<u64>()
    {
        Ok(id) if id > 0 => id,
        _ => {
            problems.add(
                    Some(text.span()),
                    format!("{what} `{}` is not a Discord id", text.get_ref()),
                    "copy the id with Discord's developer mode on (right click, Copy ID): digits only, written as a string",
                );
            ok = false;
            0
        }
    };
    let application_id = snowflake(&c.application_id, "application_id", problems);
    let admin_role = snowflake(&c.admin_role, "admin_role", problems);
    let category = c
        .category
        .as_ref()
        .map(|id| snowflake(id, "category", problems));
    let guilds: Vec<u64> = c
        .guilds
        .get_ref()
        .iter()
        .map(|g| snowflake(g, "guild", problems))
        .collect();
    let mut roles = Vec::new();
    for r in &role_configs {
        let id = snowflake(&r.id, "role id", problems);
        roles.push(RoleGrant {
            id,
            services: r.services.iter().map(|s| s.get_ref().clone()).collect(),
            templates: r.templates.iter().map(|s| s.get_ref().clone()).collect(),
            allow: r.allow.iter().copied().collect(),
        });
    }
    if guilds.is_empty() {
        problems.add(
            Some(c.guilds.span()),
            "`guilds` is empty: the bot would answer nowhere",
            "list the id of each Discord server (guild) the bot serves",
        );
        ok = false;
    }
    if let Some(services) = services {
        for r in &role_configs {
            for name in &r.services {
                let name_ref = name.get_ref();
                if name_ref != "*" && !services.contains(name_ref) {
                    let known: Vec<&str> = services.iter().map(String::as_str).collect();
                    problems.add(
                        Some(name.span()),
                        format!(
                            "[[discord.role]] names service `{name_ref}`, which is not configured"
                        ),
                        &format!(
                            "use one of: {}, or \"*\" for every service",
                            known.join(", ")
                        ),
                    );
                    ok = false;
                }
            }
        }
    }
    if let Some(templates) = templates {
        for r in &role_configs {
            for name in &r.templates {
                let name_ref = name.get_ref();
                if name_ref != "*" && !templates.iter().any(|t| t == name_ref) {
                    problems.add(
                        Some(name.span()),
                        format!(
                            "[[discord.role]] names template `{name_ref}`, which is not configured"
                        ),
                        &if templates.is_empty() {
                            "add a [[template]] of that name, or leave `templates` out".to_string()
                        } else {
                            format!(
                                "use one of: {}, or \"*\" for every template",
                                templates.join(", ")
                            )
                        },
                    );
                    ok = false;
                }
            }
        }
    }
    // The key is public, but it is never printed either: it is shown the same way as a secret.
    let public_key = match de::from_env(&c.public_key, problems) {
        Some(text) => match parse_public_key(text.expose()) {
            Some(key) => Some(PublicKey(key)),
            None => {
                problems.add(
                    Some(c.public_key.span()),
                    "`public_key` is not an Ed25519 public key in hex (64 characters)",
                    "copy PUBLIC KEY from the General Information page of the application in Discord's developer portal",
                );
                None
            }
        },
        None => None,
    };
    let token = match de::secret(&c.token, "the bot `token`", problems) {
        Some(token) if !token.expose().trim().is_empty() => Some(token),
        Some(_) => {
            problems.add(
                Some(c.token.span()),
                "`token` is empty",
                "copy the bot token from the Bot page of the application in Discord's developer portal, into an environment variable",
            );
            None
        }
        None => None,
    };
    let api_url = match c.api_url {
        None => DEFAULT_API_URL.to_string(),
        Some(url) => match crate::notify::http::Endpoint::parse(url.get_ref()) {
            Ok(_) => url.get_ref().trim_end_matches('/').to_string(),
            Err(why) => {
                problems.add(
                    Some(url.span()),
                    format!("`api_url` {why}"),
                    &format!("leave it out to use {DEFAULT_API_URL}"),
                );
                ok = false;
                String::new()
            }
        },
    };
    let listen = match c.listen {
        None => None,
        Some(listen) => {
            let read = crate::api::serve::read(listen, problems);
            ok &= read.is_some();
            read
        }
    };
    let (public_key, token) = (public_key?, token?);
    ok.then_some(Some(Discord {
        application_id,
        public_key,
        token,
        guilds,
        admin_role,
        api_url,
        roles,
        category,
        on_end: c.on_end,
        listen,
    }))
}

fn parse_public_key(hex: &str) -> Option<VerifyingKey> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    VerifyingKey::from_bytes(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(id: u64, services: &[&str], allow: &[Permission]) -> RoleGrant {
        RoleGrant {
            id,
            services: services.iter().map(|s| s.to_string()).collect(),
            templates: BTreeSet::new(),
            allow: allow.iter().copied().collect(),
        }
    }

    #[test]
    fn roles_allow_what_they_list_and_admins_everything() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let discord = Discord {
            application_id: 1,
            public_key: PublicKey(key),
            token: Secret::new("t"),
            guilds: vec![2],
            admin_role: 9,
            api_url: DEFAULT_API_URL.into(),
            category: None,
            on_end: OnEnd::Delete,
            listen: None,
            roles: vec![
                grant(10, &["survival"], &[Permission::View, Permission::Start]),
                grant(11, &["*"], &[Permission::View]),
            ],
        };
        assert!(discord.allows(&[10], "survival", Permission::Start));
        assert!(!discord.allows(&[10], "survival", Permission::Stop));
        assert!(!discord.allows(&[10], "creative", Permission::View));
        assert!(discord.allows(&[11], "creative", Permission::View));
        assert!(!discord.allows(&[11], "creative", Permission::Start));
        assert!(discord.allows(&[9], "creative", Permission::Destroy));
        assert!(!discord.allows(&[], "survival", Permission::View));
        assert_eq!(
            discord.roles_allowing("survival", Permission::Start),
            vec![10, 9]
        );
        assert_eq!(
            discord.roles_allowing("creative", Permission::Stop),
            vec![9]
        );
        assert!(!format!("{discord:?}").contains("\"t\""));
    }

    #[test]
    fn public_keys_are_64_hex_characters() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]).verifying_key();
        let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_public_key(&hex), Some(key));
        assert_eq!(parse_public_key(&hex[..62]), None);
        assert_eq!(parse_public_key(&"zz".repeat(32)), None);
    }
}
