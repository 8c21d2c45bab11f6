//! Shared readers for the config of every subsystem: one spanned value into its file type,
//! tagged tables, durations, `"${ENV}"` secrets and `host:port` addresses.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::diag::Problems;

/// Minimum length of a secret that guards something (API tokens, webhook signing keys): shorter ones can be guessed.
pub(crate) const MIN_SECRET_LEN: usize = 16;

pub(crate) use super::recover::read;

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

/// Reads a duration and keeps its place, for problems found after reading.
pub(crate) fn spanned_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Spanned<Duration>, D::Error> {
    let text = Spanned::<String>::deserialize(d)?;
    let span = text.span();
    let value = parse_duration(text.get_ref()).map_err(serde::de::Error::custom)?;
    Ok(Spanned::new(span, value))
}

/// Reads an optional duration and keeps its place.
pub(crate) fn optional_spanned_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Spanned<Duration>>, D::Error> {
    spanned_duration(d).map(Some)
}

/// Reads an optional duration.
pub(crate) fn optional_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// Reads a duration ("30s", "10m", "1h30m"); see [`parse_duration`].
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// The one way wakegate reads a duration, in its config, its command line and its API: one or
/// more groups of a whole number and a unit (`ms`, `s`, `m`, `h`, `d`) with nothing between
/// the two, as in "500ms", "30s", "10m", "1h30m", "1h 30m" or "2d"; spaces may separate the
/// groups. The error says why the text is not one, starting "`TEXT` is not a duration".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let not = |why: &str| format!("`{text}` is not a duration: {why}");
    let mut total = Duration::ZERO;
    let mut rest = text.trim_start();
    if rest.is_empty() {
        return Err(not("it is empty; write e.g. \"30s\""));
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            let word: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            return Err(not(&format!("`{word}` is not a number")));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| not("the number is too large"))?;
        rest = &rest[digits..];
        if rest.starts_with('.') || rest.starts_with(',') {
            return Err(not(
                "use whole numbers, e.g. \"1h30m\" rather than \"1.5h\"",
            ));
        }
        let unit: String = rest
            .chars()
            .take_while(|c| c.is_alphabetic() || *c == 'µ')
            .collect();
        rest = &rest[unit.len()..];
        let one = match unit.as_str() {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86400),
            "" if rest.trim_start().starts_with(|c: char| c.is_alphabetic()) => {
                let word: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphabetic())
                    .collect();
                return Err(not(&match word.as_str() {
                    "ms" | "s" | "m" | "h" | "d" => {
                        format!("write the unit right after the number (\"{number}{word}\")")
                    }
                    _ => not_a_unit(&word, number),
                }));
            }
            "" => return Err(not("it has no unit")),
            other => return Err(not(&not_a_unit(other, number))),
        };
        total = one
            .checked_mul(u32::try_from(number).map_err(|_| not("the number is too large"))?)
            .and_then(|d| total.checked_add(d))
            .ok_or_else(|| not("it is too long"))?;
        rest = rest.trim_start();
    }
    Ok(total)
}

/// Why `word` is no unit, with the one this grammar writes for it when another tool's word
/// (`min`, `seconds`, `hours`…) was meant.
fn not_a_unit(word: &str, number: u64) -> String {
    let meant = match word.to_ascii_lowercase().as_str() {
        "msec" | "msecs" | "millis" | "millisecond" | "milliseconds" => Some("ms"),
        "sec" | "secs" | "second" | "seconds" => Some("s"),
        "min" | "mins" | "minute" | "minutes" => Some("m"),
        "hr" | "hrs" | "hour" | "hours" => Some("h"),
        "day" | "days" => Some("d"),
        _ => None,
    };
    match meant {
        Some(unit) => format!("`{word}` is not a unit; write \"{number}{unit}\""),
        None => format!("`{word}` is not a unit"),
    }
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

/// The hint for a variable that is not set: secrets stay out of the file.
const UNSET_HINT: &str = "export it in the environment wakegate starts from (systemd: an EnvironmentFile=; a container: --env-file); a secret is read from the environment so that the file holds none";

/// Reads a value that may name variables (`"${VAR}"`): an unset one is a problem.
pub(crate) fn from_env(value: &Spanned<String>, problems: &mut Problems<'_>) -> Option<Secret> {
    match expand(value.get_ref()) {
        Ok(v) => Some(v),
        Err(var) => {
            problems.add(
                Some(value.span()),
                format!("environment variable `{var}` is not set"),
                UNSET_HINT,
            );
            None
        }
    }
}

/// Reads a secret: a value written inline (no `${VAR}` in it) is taken with a warning, since
/// anyone who reads the file has it; `what` names it in that warning ("the `secret` of token
/// `ci`").
pub(crate) fn secret(
    value: &Spanned<String>,
    what: &str,
    problems: &mut Problems<'_>,
) -> Option<Secret> {
    if !value.get_ref().is_empty() && !names_variable(value.get_ref()) {
        problems.warn(
            Some(value.span()),
            format!("{what} is written in the file"),
            "whoever can read the file (a backup, a repository, a pasted config) has it: put it in an environment variable and write \"${VARIABLE}\" here",
        );
    }
    from_env(value, problems)
}

/// Whether an environment variable's name says it holds a secret (`API_TOKEN`,
/// `DB_PASSWORD`, `AWS_SECRET_ACCESS_KEY`): its value written inline is warned about.
pub(crate) fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "passwd",
        "credential",
        "api_key",
        "apikey",
        "private_key",
        "authorization",
        "cookie",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Replaces `"${VAR}"` values with the variable's value, keeping them secret; a value written
/// inline under a name that looks secret is warned about. Every unset variable is reported.
pub(crate) fn expand_env(
    env: BTreeMap<String, Spanned<String>>,
    problems: &mut Problems<'_>,
) -> Option<Vec<(String, Secret)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (key, value) in env {
        let read = if looks_secret(&key) {
            secret(&value, &format!("the value of `{key}`"), problems)
        } else {
            from_env(&value, problems)
        };
        match read {
            Some(v) => out.push((key, v)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// Whether `value` holds at least one `${VAR}` reference.
fn names_variable(value: &str) -> bool {
    expand_with(value, |_| None).is_err()
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
    fn durations_follow_one_grammar() {
        let secs = |s: u64| Ok(Duration::from_secs(s));
        assert_eq!(parse_duration("30s"), secs(30));
        assert_eq!(parse_duration("10m"), secs(600));
        assert_eq!(parse_duration("1h30m"), secs(5400));
        assert_eq!(parse_duration("1h 30m"), secs(5400));
        assert_eq!(parse_duration("2d"), secs(172_800));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), secs(0));
        for (text, why) in [
            ("10 minutes", "`minutes` is not a unit; write \"10m\""),
            ("10", "it has no unit"),
            ("10min", "`min` is not a unit; write \"10m\""),
            ("2 Hours", "`Hours` is not a unit; write \"2h\""),
            ("3 fortnights", "`fortnights` is not a unit"),
            ("1.5h", "use whole numbers"),
            ("10 m", "write the unit right after the number (\"10m\")"),
            ("-5s", "`-5s` is not a number"),
            ("", "it is empty"),
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(
                e.starts_with(&format!("`{text}` is not a duration: {why}")),
                "{e}"
            );
        }
    }

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
