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
        if valid && kind == Hostnames::Http && !name.get_ref().is_ascii() {
            // A browser sends an international name in its ASCII form (IDNA), and a Host
            // header cannot carry any other: this name would never match a request.
            problems.add(
                Some(name.span()),
                format!("`{}` is not an ASCII hostname", name.get_ref()),
                "browsers send international names in their ASCII form: write that (e.g. \"xn--bcher-kva.example\" for bücher.example)",
            );
            ok = false;
        } else if !valid {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(names: &[&str], kind: Hostnames) -> (Option<Vec<String>>, Vec<String>) {
        let spanned: Vec<Spanned<String>> = names
            .iter()
            .map(|n| Spanned::new(0..1, n.to_string()))
            .collect();
        let mut problems = Problems::new("x");
        let read = read_hostnames(&spanned, kind, &mut problems);
        let messages = problems
            .into_sorted()
            .into_iter()
            .map(|p| p.message)
            .collect();
        (read, messages)
    }

    #[test]
    fn names_are_lower_cased_without_their_trailing_dot() {
        let (read, _) = read(&["App.Example.COM.", "*.Example.com"], Hostnames::Http);
        assert_eq!(read.unwrap(), ["app.example.com", "*.example.com"]);
    }

    /// Found by the host_routing fuzz target: a name no Host header can carry was accepted.
    #[test]
    fn an_http_name_must_be_ascii_as_browsers_send_it() {
        for name in ["bücher.example", "*.bücher.example", "\u{212a}.example"] {
            let (read, messages) = read(&[name], Hostnames::Http);
            assert!(read.is_none(), "{name}");
            assert_eq!(messages, [format!("`{name}` is not an ASCII hostname")]);
        }
        // A Minecraft client sends the name as typed.
        let (read, _) = read(&["bücher.example"], Hostnames::Minecraft);
        assert_eq!(read.unwrap(), ["bücher.example"]);
    }
}
