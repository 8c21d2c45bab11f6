//! Shared readers for the config of every subsystem: one spanned value into its file type,
//! tagged tables, humantime durations, `"${ENV}"` secrets and `host:port` addresses.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use super::diag::Problems;

/// Minimum length of a secret that guards something (API tokens, webhook signing keys): shorter ones can be guessed.
pub(crate) const MIN_SECRET_LEN: usize = 16;

/// Deserializes one spanned value, recording its problem on failure.
pub(crate) fn read<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> Option<T> {
    T::deserialize(ValueDeserializer::from(value))
        .map_err(|e| problems.add_toml(e))
        .ok()
}

/// Splits the `type` key off a tagged table, so the rest can be read by the variant's struct.
pub(crate) fn split_type<'i>(
    value: Spanned<DeValue<'i>>,
    what: &str,
    kinds: &str,
    problems: &mut Problems<'_>,
) -> Option<(String, Spanned<DeValue<'i>>)> {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        problems.add(
            Some(span),
            format!("{what} must be a table"),
            "see `wakegate config example`",
        );
        return None;
    };
    let Some(kind) = table.remove("type") else {
        problems.add(
            Some(span),
            format!("{what} has no `type`"),
            &format!("add `type = ...` with one of: {kinds}"),
        );
        return None;
    };
    let kind_span = kind.span();
    let Some(kind) = kind.get_ref().as_str().map(str::to_string) else {
        problems.add(
            Some(kind_span),
            format!("{what} `type` must be a string"),
            &format!("use one of: {kinds}"),
        );
        return None;
    };
    Some((kind, Spanned::new(kind_span, DeValue::Table(table))))
}

/// Reads a humantime duration and keeps its place, for problems found after reading.
pub(crate) fn spanned_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Spanned<Duration>, D::Error> {
    let text = Spanned::<String>::deserialize(d)?;
    let span = text.span();
    let value = humantime::parse_duration(text.get_ref()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{}` is not a duration ({e}); write it like \"30s\", \"10m\" or \"1h 30m\"",
            text.get_ref()
        ))
    })?;
    Ok(Spanned::new(span, value))
}

/// Reads an optional humantime duration and keeps its place.
pub(crate) fn optional_spanned_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Spanned<Duration>>, D::Error> {
    spanned_duration(d).map(Some)
}

/// Reads an optional humantime duration.
pub(crate) fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Reads a humantime duration ("30s", "10m", "1h 30m").
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write it like \"30s\", \"10m\" or \"1h 30m\""
        ))
    })
}

/// A value that may come from `"${ENV_VAR}"` and is never printed back.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that must not be printed.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The real value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Whether `text` is `host:port` with a host and a port above 0.
pub(crate) fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// A backend address must be `host:port`; the host is resolved on every wake.
pub(crate) fn check_address(
    address: Spanned<String>,
    problems: &mut Problems<'_>,
) -> Option<String> {
    let text = address.get_ref();
    if is_host_port(text) {
        Some(address.into_inner())
    } else {
        problems.add(
            Some(address.span()),
            format!("backend address `{text}` is not host:port"),
            "write where the server listens, e.g. \"127.0.0.1:25566\" or \"mc.internal:25565\"",
        );
        None
    }
}

/// Replaces `"${VAR}"` values with the variable's value, keeping them secret.
pub(crate) fn expand_env(
    env: BTreeMap<String, Spanned<String>>,
    problems: &mut Problems<'_>,
) -> Option<Vec<(String, Secret)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in env {
        match expand(value.get_ref()) {
            Ok(v) => out.push((key, v)),
            Err(var) => {
                ok = false;
                problems.add(
                    Some(value.span()),
                    format!("environment variable `{var}` is not set"),
                    "export it before starting wakegate, or write the value itself",
                );
            }
        }
    }
    ok.then_some(out)
}

/// Replaces each `${VAR}` (a name of letters, digits and `_`) with the variable's value, as in
/// `"Bearer ${TOKEN}"`; the rest is taken literally. The error is the first unset variable.
pub fn expand(value: &str) -> Result<Secret, String> {
    expand_with(value, |var| std::env::var(var).ok())
}

fn expand_with(value: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Secret, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_len];
        if name.is_empty() || !after[name_len..].starts_with('}') {
            // Not a reference: kept as written.
            out.push_str(&rest[..start + 2]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..start]);
        out.push_str(&lookup(name).ok_or_else(|| name.to_string())?);
        rest = &after[name_len + 1..];
    }
    out.push_str(rest);
    Ok(Secret(out))
}

#[cfg(test)]
mod expand_tests {
    use super::*;

    #[test]
    fn references_are_replaced_wherever_they_are_and_the_rest_kept() {
        let env = |name: &str| (name == "TOKEN").then(|| "s3cret".to_string());
        let expand = |text: &str| expand_with(text, env).map(|s| s.expose().to_string());
        assert_eq!(expand("${TOKEN}"), Ok("s3cret".into()));
        assert_eq!(expand("Bearer ${TOKEN}"), Ok("Bearer s3cret".into()));
        assert_eq!(expand("${TOKEN}:${TOKEN}"), Ok("s3cret:s3cret".into()));
        assert_eq!(
            expand("plain $ and ${ and ${x-y}"),
            Ok("plain $ and ${ and ${x-y}".into())
        );
        assert_eq!(expand("Bearer ${UNSET}"), Err("UNSET".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_expand_and_never_print() {
        // PATH is set for every test process; setting a variable of our own would need unsafe.
        let path = std::env::var("PATH").unwrap();
        let secret = expand("${PATH}").unwrap();
        assert_eq!(secret.expose(), path);
        assert_eq!(format!("{secret:?}"), "Secret(****)");
        assert_eq!(
            expand("${WAKEGATE_TEST_NOT_SET_ANYWHERE}").unwrap_err(),
            "WAKEGATE_TEST_NOT_SET_ANYWHERE"
        );
        assert_eq!(expand("plain").unwrap().expose(), "plain");
    }
}
