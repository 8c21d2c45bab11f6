//! The config reader (`config::parse`) on arbitrary text. It must never panic; a file it
//! refuses must come with at least one problem, each with a place in the file, a message and a
//! hint, and the whole error must render.
//!
//! The reader touches the world in two ways, both pinned here so a run is the same on every
//! machine: `"${VAR}"` values read the environment, which `init` replaces with a fixed one;
//! `page`, `icon`, `tls_cert` and `tls_key` name files it reads, so their values are swapped for
//! a name that exists nowhere before parsing (no mutation can make it read `/dev/zero`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use wakegate::config::{ConfigError, parse};

/// The keys whose value is a path the reader opens.
const FILE_KEYS: &[&str] = &["page", "icon", "tls_cert", "tls_key"];
const NO_FILE: &str = "\"wakegate-fuzz-no-such-file\"";

/// The only environment the reader sees: one secret long enough for a token, one too short.
const ENV: &[(&str, &str)] = &[
    ("WAKEGATE_FUZZ_TOKEN", "fuzz-token-0123456789abcdef"),
    ("WAKEGATE_FUZZ_SHORT", "short"),
];

fn pin_environment() {
    for (name, _) in std::env::vars_os() {
        // SAFETY: called once from `init`, before libFuzzer starts any thread, and nothing else
        // in this process reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    for (name, value) in ENV {
        // SAFETY: as above.
        unsafe { std::env::set_var(name, value) };
    }
}

/// The byte ranges of string values under `FILE_KEYS`, at any depth.
fn file_values(table: &DeTable<'_>, out: &mut Vec<std::ops::Range<usize>>) {
    for (key, value) in table.iter() {
        let is_file = FILE_KEYS.contains(&key.get_ref().as_ref());
        visit(value, is_file, out);
    }
}

fn visit(value: &Spanned<DeValue<'_>>, is_file: bool, out: &mut Vec<std::ops::Range<usize>>) {
    match value.get_ref() {
        DeValue::String(_) if is_file => out.push(value.span()),
        DeValue::Table(table) => file_values(table, out),
        DeValue::Array(items) => items.iter().for_each(|item| visit(item, false, out)),
        _ => {}
    }
}

/// The text with every file name replaced by one that does not exist.
fn without_files(text: &str) -> String {
    // A file that does not parse as TOML is refused before any file is read.
    let Ok(table) = DeTable::parse(text) else {
        return text.to_string();
    };
    let mut spans = Vec::new();
    file_values(table.get_ref(), &mut spans);
    spans.sort_by_key(|span| std::cmp::Reverse(span.start));
    let mut text = text.to_string();
    for span in spans {
        text.replace_range(span, NO_FILE);
    }
    text
}

fuzz_target!(init: pin_environment(), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = without_files(text);
    let lines = text.matches('\n').count() + 1;
    match parse(&text, "fuzz.toml") {
        Ok(config) => {
            assert!(!config.services.is_empty());
            // A secret read from the environment is never printed back.
            let printed = format!("{config:?}");
            for (_, secret) in ENV {
                assert!(text.contains(secret) || !printed.contains(secret), "{printed}");
            }
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            let ConfigError::Invalid { problems, .. } = &e else {
                unreachable!()
            };
            assert!(!problems.is_empty(), "refused without a reason");
            for p in problems {
                assert!(p.line >= 1 && p.line <= lines, "{p:?} in {lines} lines");
                assert!(p.column >= 1, "{p:?}");
                assert!(!p.message.trim().is_empty() && !p.hint.trim().is_empty(), "{p:?}");
            }
            let rendered = e.to_string();
            assert!(rendered.starts_with("fuzz.toml: "));
        }
        Err(e) => panic!("reading text cannot fail to read a file: {e}"),
    }
});
