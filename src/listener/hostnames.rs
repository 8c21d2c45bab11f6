//! The `hostnames` key of the listeners that route by name (`http`, `minecraft`).

use toml::Spanned;

use crate::config::diag::Problems;

/// Whose hostnames a listener lists: players' server-list names, or web names that may start
/// with `*.`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hostnames {
    Minecraft,
    Http,
}

/// Checks a listener's `hostnames` and returns them lower-cased without a trailing dot.
pub(crate) fn read_hostnames(
    names: &[Spanned<String>],
    kind: Hostnames,
    problems: &mut Problems<'_>,
) -> Option<Vec<String>> {
    let mut ok = true;
    let mut hostnames: Vec<String> = Vec::new();
    for name in names {
        let host = name.get_ref().trim_end_matches('.').to_lowercase();
        let (valid, hint) = match kind {
            Hostnames::Minecraft => (
                !host.is_empty()
                    && host.len() <= 255
                    && host
                        .chars()
                        .all(|ch| ch.is_alphanumeric() || matches!(ch, '.' | '-' | '_')),
                "write the names players type in their server list, e.g. \"mc.example.com\"",
            ),
            Hostnames::Http => {
                let plain = host.strip_prefix("*.").unwrap_or(&host);
                (
                    !plain.is_empty()
                        && host.len() <= 255
                        && plain
                            .chars()
                            .all(|ch| ch.is_alphanumeric() || matches!(ch, '.' | '-' | '_'))
                        && plain.split('.').all(|label| !label.is_empty())
                        && (plain.len() == host.len() || plain.contains('.')),
                    "write the names people type in their browser, e.g. \"app.example.com\", or \"*.example.com\" for every name one level below example.com",
                )
            }
        };
        if !valid {
            problems.add(
                Some(name.span()),
                format!("`{}` is not a hostname", name.get_ref()),
                hint,
            );
            ok = false;
        } else if hostnames.contains(&host) {
            problems.add(
                Some(name.span()),
                format!("hostname `{host}` is listed twice"),
                "list each hostname once",
            );
            ok = false;
        } else {
            hostnames.push(host);
        }
    }
    ok.then_some(hostnames)
}
