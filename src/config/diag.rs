//! Diagnostics of a config file: every problem found, with its line:column and a hint that
//! says what to do, and the warnings about what is allowed but unwise. Readers of every
//! subsystem add theirs here.

use std::ops::Range;

/// One problem (or warning) found in a file: where, what, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: String,
}

impl Problem {
    /// "FILE:LINE:COL: MESSAGE; HINT", for a warning printed on one line.
    pub fn one_line(&self, path: &str) -> String {
        format!(
            "{path}:{}:{}: {}; {}",
            self.line, self.column, self.message, self.hint
        )
    }
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

/// How durations are written, for every message about one.
pub(crate) const DURATION_HINT: &str = "write a whole number and its unit (ms, s, m, h, d) with nothing between them, several in a row for a sum: \"500ms\", \"30s\", \"10m\", \"1h30m\" (or \"1h 30m\"), \"2d\"";

/// Collects problems and warnings with their place in the source.
pub(crate) struct Problems<'a> {
    source: &'a str,
    list: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Stand-in values handed out so far (see [`Problems::stand_in_span`]).
    stand_ins: usize,
}

impl<'a> Problems<'a> {
    /// An empty list for problems in `source`.
    pub(crate) fn new(source: &'a str) -> Problems<'a> {
        Problems {
            source,
            list: Vec::new(),
            warnings: Vec::new(),
            stand_ins: 0,
        }
    }

    /// The problems found, in the order of the file.
    pub(crate) fn into_sorted(self) -> Vec<Problem> {
        self.into_parts().0
    }

    /// The problems and the warnings found, each in the order of the file.
    pub(crate) fn into_parts(mut self) -> (Vec<Problem>, Vec<Problem>) {
        self.list.sort_by_key(|p| (p.line, p.column));
        self.warnings.sort_by_key(|p| (p.line, p.column));
        (self.list, self.warnings)
    }

    /// Whether nothing is wrong so far.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// A place past the end of the file, for a value that stands in for a missing one so that
    /// the rest of its table can still be checked: what is found about it is not reported (the
    /// missing key is).
    pub(crate) fn stand_in_span(&mut self) -> Range<usize> {
        self.stand_ins += 1;
        let at = self.source.len() + self.stand_ins;
        at..at
    }

    fn place(&self, span: Option<Range<usize>>) -> Option<(usize, usize)> {
        match span {
            None => Some((1, 1)),
            Some(s) if s.start > self.source.len() => None,
            Some(s) => Some(line_col(self.source, s.start)),
        }
    }

    /// Records a problem at `span` (the top of the file without one).
    pub(crate) fn add(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: &str,
    ) {
        // About a stand-in: the missing key it stands for is reported instead.
        let Some((line, column)) = self.place(span) else {
            return;
        };
        self.list.push(Problem {
            line,
            column,
            message: message.into(),
            hint: hint.to_string(),
        });
    }

    /// Records a warning: the file is valid, but this is unwise.
    pub(crate) fn warn(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: &str,
    ) {
        let Some((line, column)) = self.place(span) else {
            return;
        };
        self.warnings.push(Problem {
            line,
            column,
            message: message.into(),
            hint: hint.to_string(),
        });
    }

    /// Records a TOML syntax or type error in words of our own, with a hint.
    pub(crate) fn add_toml(&mut self, e: toml::de::Error) {
        let (message, hint) = explain(e.message().trim());
        self.add(e.span(), message, &hint);
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

/// The name among `candidates` that `word` most likely misspells, if one is close enough.
pub(crate) fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (*c, strsim::jaro_winkler(word, c)))
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

/// The names between backticks after "expected" in serde's messages ("expected one of `a`,
/// `b`", "expected `a` or `b`").
fn expected_names(message: &str) -> Vec<&str> {
    let Some((_, list)) = message.split_once("expected") else {
        return Vec::new();
    };
    list.split('`').skip(1).step_by(2).collect()
}

/// A serde or TOML message and its hint, in wakegate's words.
fn explain(message: &str) -> (String, String) {
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('`'))
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_string())
    };
    if let Some(key) = quoted("unknown field ") {
        let known = expected_names(message);
        let list = if known.is_empty() {
            "this table takes no keys".to_string()
        } else {
            format!("the keys here are: {}", known.join(", "))
        };
        return match closest(&key, &known) {
            Some(near) => (
                format!("unknown key `{key}`: did you mean `{near}`?"),
                format!("fix its spelling; {list}"),
            ),
            None => (
                format!("unknown key `{key}`"),
                format!(
                    "remove the key or fix its spelling; {list} (`wakegate config example` explains each)"
                ),
            ),
        };
    }
    if let Some(value) = quoted("unknown variant ") {
        let known = expected_names(message);
        let hint = match closest(&value, &known) {
            Some(near) => format!("did you mean `{near}`?"),
            None => "use one of the values listed".to_string(),
        };
        return (message.to_string(), hint);
    }
    if let Some(key) = quoted("missing field ") {
        return (
            format!("missing key `{key}`"),
            "add the key; `wakegate config example` shows it with a comment".to_string(),
        );
    }
    let hint = if message.contains("is not a duration") {
        DURATION_HINT
    } else if message.contains("socket address") {
        "write an address as \"IP:PORT\", e.g. \"127.0.0.1:7070\" or \"0.0.0.0:25565\""
    } else {
        "compare with `wakegate config example`"
    };
    (message.to_string(), hint.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn a_misspelt_key_is_told_its_likely_name() {
        let (message, hint) = explain(
            "unknown field `idle_timout`, expected one of `name`, `idle_timeout`, `min_awake`",
        );
        assert_eq!(
            message,
            "unknown key `idle_timout`: did you mean `idle_timeout`?"
        );
        assert_eq!(
            hint,
            "fix its spelling; the keys here are: name, idle_timeout, min_awake"
        );
        let (message, _) = explain("unknown field `colour`, expected `start` or `stop`");
        assert_eq!(message, "unknown key `colour`");
        let (_, hint) = explain("unknown variant `admn`, expected one of `read`, `admin`");
        assert_eq!(hint, "did you mean `admin`?");
    }
}
