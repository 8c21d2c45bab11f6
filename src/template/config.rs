//! The `[[template]]` tables: a service skeleton (`[template.service]`, the keys of a
//! `[[service]]` but its name) whose strings may hold `{name}`, `{port}` and `{backend_port}`,
//! how long a created service lives, and how many may exist. A template is checked once with
//! sample values, so a mistake in its skeleton shows at `config check`, not at the first
//! `create`.

use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::de::{duration, optional_duration, read};
use crate::config::diag::Problems;
use crate::listener::config::Listen;
use crate::service::config::Service;

/// A template services are created from at run time.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    /// The `[template.service]` table, placeholders unfilled.
    skeleton: toml::Table,
    /// Where `{port}` is taken from.
    pub ports: Option<RangeInclusive<u16>>,
    /// Where `{backend_port}` is taken from.
    pub backend_ports: Option<RangeInclusive<u16>>,
    /// How long a created service lives before it ends, unless extended.
    pub lifetime: Duration,
    /// The longest an extension may take it, counted from its creation.
    pub max_lifetime: Option<Duration>,
    /// How long before the deadline a warning event goes out, longest first.
    pub warnings: Vec<Duration>,
    /// End it (not only stop it) once it goes to sleep after having been awake.
    pub end_when_idle: bool,
    pub max_per_owner: Option<usize>,
    pub max_total: Option<usize>,
}

/// What fills a template's placeholders for one created service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Values {
    pub name: String,
    pub port: Option<u16>,
    pub backend_port: Option<u16>,
}

impl Template {
    /// The service created with these values; an `Err` lists what is wrong with it.
    pub fn service(&self, values: &Values) -> Result<Service, String> {
        let mut table = self.skeleton.clone();
        for (_, value) in table.iter_mut() {
            fill(value, values);
        }
        table.insert("name".into(), toml::Value::String(values.name.clone()));
        crate::service::config::from_table(&table)
    }

    /// The sample values a template is checked with.
    fn sample(&self) -> Values {
        Values {
            name: format!("{}-1", self.name),
            port: Some(self.ports.as_ref().map_or(30000, |r| *r.start())),
            backend_port: Some(self.backend_ports.as_ref().map_or(30001, |r| *r.start())),
        }
    }

    /// Its `http` and `minecraft` entries (their bind is the same for every created service):
    /// the shared sockets its services join by hostname.
    pub fn shared_listeners(&self) -> Vec<Listen> {
        self.service(&self.sample())
            .map(|s| {
                s.listeners
                    .into_iter()
                    .filter(|l| !matches!(l, Listen::Tcp { .. }) && !l.is_udp())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the skeleton uses a placeholder.
    fn uses(&self, placeholder: &str) -> bool {
        fn any(value: &toml::Value, placeholder: &str) -> bool {
            match value {
                toml::Value::String(s) => s.contains(placeholder),
                toml::Value::Array(items) => items.iter().any(|v| any(v, placeholder)),
                toml::Value::Table(t) => t.values().any(|v| any(v, placeholder)),
                _ => false,
            }
        }
        self.skeleton.values().any(|v| any(v, placeholder))
    }
}

/// Replaces the placeholders in every string of a value.
fn fill(value: &mut toml::Value, values: &Values) {
    match value {
        toml::Value::String(s) => {
            let mut out = s.replace("{name}", &values.name);
            if let Some(port) = values.port {
                out = out.replace("{port}", &port.to_string());
            }
            if let Some(port) = values.backend_port {
                out = out.replace("{backend_port}", &port.to_string());
            }
            *s = out;
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| fill(v, values)),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| fill(v, values)),
        _ => {}
    }
}

/// The keys of a `[[template]]` other than `service`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateConfig {
    name: Spanned<String>,
    ports: Option<Spanned<String>>,
    backend_ports: Option<Spanned<String>>,
    #[serde(default = "default_lifetime", deserialize_with = "duration")]
    lifetime: Duration,
    #[serde(default, deserialize_with = "optional_duration")]
    max_lifetime: Option<Duration>,
    #[serde(default = "default_warnings")]
    warnings: Vec<Spanned<String>>,
    #[serde(default)]
    end_when_idle: bool,
    max_per_owner: Option<usize>,
    max_total: Option<usize>,
}

fn default_lifetime() -> Duration {
    Duration::from_secs(4 * 3600)
}
fn default_warnings() -> Vec<Spanned<String>> {
    ["10m", "1m"]
        .into_iter()
        .map(|w| Spanned::new(0..0, w.to_string()))
        .collect()
}

/// Reads the `[[template]]` array. `owned` is the same array read as plain TOML values (the
/// skeletons are kept, to be filled at each creation); `services` are the configured names a
/// created service may not take.
pub(crate) fn read_templates(
    value: Spanned<DeValue<'_>>,
    owned: Option<&toml::Value>,
    problems: &mut Problems<'_>,
) -> Option<Vec<Template>> {
    let span = value.span();
    let DeValue::Array(items) = value.into_inner() else {
        problems.add(
            Some(span),
            "`template` must be an array of tables",
            "write each template as a [[template]] table",
        );
        return None;
    };
    let owned = owned.and_then(toml::Value::as_array);
    let mut templates = Vec::new();
    let mut names = HashSet::new();
    let mut ok = true;
    for (i, item) in items.into_iter().enumerate() {
        let skeleton = owned
            .and_then(|o| o.get(i))
            .and_then(|t| t.get("service"))
            .and_then(toml::Value::as_table)
            .cloned();
        match read_template(item, skeleton, problems) {
            Some((template, name_span)) => {
                if !names.insert(template.name.clone()) {
                    problems.add(
                        Some(name_span),
                        format!("template name `{}` is used twice", template.name),
                        "give every [[template]] its own name",
                    );
                    ok = false;
                }
                templates.push(template);
            }
            None => ok = false,
        }
    }
    ok.then_some(templates)
}

fn read_template(
    item: Spanned<DeValue<'_>>,
    skeleton: Option<toml::Table>,
    problems: &mut Problems<'_>,
) -> Option<(Template, std::ops::Range<usize>)> {
    let span = item.span();
    let DeValue::Table(mut table) = item.into_inner() else {
        problems.add(
            Some(span),
            "each `template` must be a table",
            "write each template as a [[template]] table",
        );
        return None;
    };
    let service = table.remove("service");
    let fields =
        read::<TemplateConfig>(Spanned::new(span.clone(), DeValue::Table(table)), problems)?;
    let name_span = fields.name.span();
    let name = fields.name.into_inner();
    let mut ok = valid_name(&name);
    if !ok {
        problems.add(
            Some(name_span.clone()),
            format!("template name `{name}` is not allowed"),
            "names use only a-z, 0-9 and '-', e.g. \"survival\"",
        );
    }
    let service_span = service.as_ref().map_or(span.clone(), |s| s.span());
    let (Some(_), Some(skeleton)) = (service, skeleton) else {
        problems.add(
            Some(span),
            format!("template `{name}` has no [template.service]"),
            "add a [template.service] table with the keys of a [[service]] (but `name`), e.g. its [template.service.backend] and [[template.service.listen]]",
        );
        return None;
    };
    if skeleton.contains_key("name") {
        problems.add(
            Some(service_span.clone()),
            format!("template `{name}` names its service"),
            "remove `name` from [template.service]: each created service gets its own, as {name} in the other keys",
        );
        ok = false;
    }
    let mut range = |text: &Option<Spanned<String>>, key: &str| match text {
        None => Some(None),
        Some(text) => match parse_range(text.get_ref()) {
            Some(r) => Some(Some(r)),
            None => {
                problems.add(
                    Some(text.span()),
                    format!("`{key}` = \"{}\" is not a port range", text.get_ref()),
                    "write FIRST-LAST with 1 <= FIRST <= LAST <= 65535, e.g. \"30000-30100\"",
                );
                None
            }
        },
    };
    let ports = range(&fields.ports, "ports");
    let backend_ports = range(&fields.backend_ports, "backend_ports");
    let mut warnings = Vec::new();
    for w in &fields.warnings {
        match crate::config::de::parse_duration(w.get_ref()) {
            Ok(d) => warnings.push(d),
            Err(e) => {
                problems.add(
                    Some(w.span()),
                    format!("warning {e}"),
                    crate::config::diag::DURATION_HINT,
                );
                ok = false;
            }
        }
    }
    warnings.sort_unstable_by(|a, b| b.cmp(a));
    if let Some(max) = fields.max_lifetime
        && max < fields.lifetime
    {
        problems.add(
            Some(name_span.clone()),
            format!("template `{name}` has a max_lifetime shorter than its lifetime"),
            "make max_lifetime at least the lifetime, or remove it",
        );
        ok = false;
    }
    let template = Template {
        name: name.clone(),
        skeleton,
        ports: ports?,
        backend_ports: backend_ports?,
        lifetime: fields.lifetime,
        max_lifetime: fields.max_lifetime,
        warnings,
        end_when_idle: fields.end_when_idle,
        max_per_owner: fields.max_per_owner,
        max_total: fields.max_total,
    };
    for (placeholder, range, key) in [
        ("{port}", &template.ports, "ports"),
        ("{backend_port}", &template.backend_ports, "backend_ports"),
    ] {
        if template.uses(placeholder) && range.is_none() {
            problems.add(
                Some(service_span.clone()),
                format!("template `{name}` uses {placeholder} but has no `{key}`"),
                &format!("add e.g. {key} = \"30000-30100\" to the [[template]]"),
            );
            ok = false;
        }
    }
    // Checked as it would be created, with sample values (a stand-in port where the range is
    // missing, reported above).
    let sample = template.sample();
    match template.service(&sample) {
        Ok(service) => {
            for listen in &service.listeners {
                let (hostnames, tls) = match listen {
                    Listen::Tcp { .. } => continue,
                    Listen::Udp(_) | Listen::Bedrock(_) => {
                        problems.add(
                            Some(service_span.clone()),
                            format!("template `{name}` has a udp or bedrock listener"),
                            "services created from templates take tcp, http and minecraft listeners only; configure a UDP service as a [[service]]",
                        );
                        ok = false;
                        continue;
                    }
                    Listen::Http(h) => (&h.hostnames, h.tls.is_some()),
                    Listen::Minecraft(m) => (&m.hostnames, false),
                };
                let problem = if listen.bind().port() == 0 {
                    Some((
                        "shares a socket on port 0".to_string(),
                        "give its http or minecraft listener a fixed port, e.g. bind = \"0.0.0.0:443\"",
                    ))
                } else if !hostnames.iter().any(|h| h.contains(&sample.name)) {
                    Some((
                        "has an http or minecraft listener without {name} in its hostnames"
                            .to_string(),
                        "every created service needs its own hostname on a shared socket, e.g. hostnames = [\"{name}.mc.example.com\"]",
                    ))
                } else if tls {
                    Some((
                        "has an http listener with TLS".to_string(),
                        "certificates are read at start: put a configured service with the certificate (a wildcard) on the same bind, or a TLS proxy in front",
                    ))
                } else {
                    None
                };
                if let Some((what, hint)) = problem {
                    problems.add(
                        Some(service_span.clone()),
                        format!("template `{name}` {what}"),
                        hint,
                    );
                    ok = false;
                }
            }
            if service
                .listeners
                .iter()
                .any(|l| matches!(l, Listen::Tcp { .. }) && l.bind().port() != 0)
                && !template.uses("{port}")
            {
                problems.add(
                    Some(name_span.clone()),
                    format!(
                        "every service created from template `{name}` would bind the same port"
                    ),
                    "bind its tcp listener to {port} and give the template a `ports` range",
                );
                ok = false;
            }
        }
        Err(why) => {
            problems.add(
                Some(service_span),
                format!(
                    "template `{name}`, as created with name `{}`: {why}",
                    sample.name
                ),
                "fix [template.service]: it takes the keys of a [[service]]",
            );
            ok = false;
        }
    }
    ok.then_some((template, name_span))
}

/// Whether a name may be given to a service: `a-z`, `0-9` and `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `FIRST-LAST`, or a single port.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let (first, last) = (
        first.trim().parse::<u16>().ok()?,
        last.trim().parse::<u16>().ok()?,
    );
    (first >= 1 && first <= last).then_some(first..=last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(parse_range("30000-30100"), Some(30000..=30100));
        assert_eq!(parse_range("25565"), Some(25565..=25565));
        assert_eq!(parse_range("10-5"), None);
        assert_eq!(parse_range("0-5"), None);
        assert_eq!(parse_range("a-b"), None);
    }

    #[test]
    fn names() {
        assert!(valid_name("mc-alice-2"));
        assert!(!valid_name("Alice"));
        assert!(!valid_name(""));
        assert!(!valid_name("a_b"));
    }
}
