//! Diagnostics of a config file: every problem found, with its line:column and a hint that
//! says what to do. Readers of every subsystem add their problems here.

use std::ops::Range;

/// One problem found in a file: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: String,
}

/// Everything wrong with a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}; check the path, or pass --config FILE")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(path, problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

fn render(path: &str, problems: &[Problem]) -> String {
    let mut out = format!(
        "{path}: {} problem{} found",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str(&format!(
            "\n{path}:{}:{}: {}\n    hint: {}",
            p.line, p.column, p.message, p.hint
        ));
    }
    out
}

/// Collects problems with their place in the source.
pub(crate) struct Problems<'a> {
    source: &'a str,
    list: Vec<Problem>,
}

impl<'a> Problems<'a> {
    /// An empty list for problems in `source`.
    pub(crate) fn new(source: &'a str) -> Problems<'a> {
        Problems {
            source,
            list: Vec::new(),
        }
    }

    /// The problems found, in the order of the file.
    pub(crate) fn into_sorted(mut self) -> Vec<Problem> {
        self.list.sort_by_key(|p| (p.line, p.column));
        self.list
    }

    /// Records a problem at `span` (the top of the file without one).
    pub(crate) fn add(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: &str,
    ) {
        let (line, column) = span.map_or((1, 1), |s| line_col(self.source, s.start));
        self.list.push(Problem {
            line,
            column,
            message: message.into(),
            hint: hint.to_string(),
        });
    }

    /// Records a TOML syntax or type error, with a hint chosen by its message.
    pub(crate) fn add_toml(&mut self, e: toml::de::Error) {
        let message = e.message().trim().to_string();
        let hint = hint_for(&message);
        self.add(e.span(), message, hint);
    }
}

/// The 1-based line and column of a byte offset.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

fn hint_for(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or fix its spelling; `wakegate config example` shows every key"
    } else if message.contains("missing field") {
        "add the key; `wakegate config example` shows it with a comment"
    } else if message.contains("duration") {
        "durations are written like \"500ms\", \"30s\", \"10m\" or \"1h 30m\""
    } else if message.contains("socket address") {
        "write an address as \"IP:PORT\", e.g. \"127.0.0.1:7070\" or \"0.0.0.0:25565\""
    } else {
        "compare with `wakegate config example`"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
