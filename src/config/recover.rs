//! Reading a table past its first mistake. serde stops at the first error of a struct, so
//! [`read`] notes the problem, takes the faulty key out (or puts a stand-in where a key is
//! missing), and reads again, until the struct reads or nothing more can be learnt: every
//! unknown key, bad value and missing key of a table is reported in one run.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue, ValueDeserializer};

use super::diag::Problems;

/// Deserializes one spanned value, recording every problem found in it. `None` when it cannot
/// be read even with its faulty keys taken out; else the value, read from what was sound
/// (the file is then refused for the problems recorded, and the value only serves the checks
/// that follow).
pub(crate) fn read<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    problems: &mut Problems<'_>,
) -> Option<T> {
    let mut value = value;
    // Keys taken out for a bad value, by the span of their table: their absence is no news.
    let mut taken: Vec<(Range<usize>, String)> = Vec::new();
    let mut attempt = T::deserialize(ValueDeserializer::from(value.clone()));
    // Each round takes a key out or fills one in, so the rounds are bounded by the file's
    // size; the cap guards against a deserializer that keeps failing in the same place.
    for _ in 0..256 {
        let e = match attempt {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let Some(span) = e.span() else {
            problems.add_toml(e);
            return None;
        };
        if let Some(key) = missing_key(e.message()) {
            let table_span = span.clone();
            if !taken.contains(&(table_span.clone(), key.clone())) {
                problems.add_toml(e);
            }
            attempt = fill_in::<T>(&mut value, &table_span, &key, problems)?;
            continue;
        }
        let root = value.span();
        let outcome = take_out(&mut value, &span);
        problems.add_toml(e);
        match outcome {
            Some(Some(entry)) => taken.push(entry),
            Some(None) => {}
            None => return None,
        }
        if span == root {
            return None;
        }
        attempt = T::deserialize(ValueDeserializer::from(value.clone()));
    }
    None
}

/// "missing field `x`" names `x`.
fn missing_key(message: &str) -> Option<String> {
    let rest = message.trim().strip_prefix("missing field `")?;
    Some(rest.split_once('`')?.0.to_string())
}

/// Puts a stand-in for the missing `key` in the table at `table_span`: the first kind of value
/// the reader takes there. `None` when none fits (a missing table, say); else the next attempt.
fn fill_in<T: DeserializeOwned>(
    value: &mut Spanned<DeValue<'_>>,
    table_span: &Range<usize>,
    key: &str,
    problems: &mut Problems<'_>,
) -> Option<Result<T, toml::de::Error>> {
    let at = problems.stand_in_span();
    let candidates = [
        DeValue::String(DeString::Borrowed("")),
        DeValue::Integer(Default::default()),
        DeValue::Boolean(false),
        DeValue::Array(DeArray::new()),
        DeValue::Float(Default::default()),
        DeValue::Table(DeTable::new()),
    ];
    for candidate in candidates {
        let table = table_at(value, table_span)?;
        table.insert(
            Spanned::new(at.clone(), DeString::Owned(key.to_string())),
            Spanned::new(at.clone(), candidate),
        );
        let attempt = T::deserialize(ValueDeserializer::from(value.clone()));
        match &attempt {
            Err(e) if e.span().is_some_and(|s| s.start >= at.start) => {
                table_at(value, table_span)?.remove(key);
            }
            _ => return Some(attempt),
        }
    }
    None
}

/// The table whose span is `span`, the root included.
fn table_at<'v, 'i>(
    value: &'v mut Spanned<DeValue<'i>>,
    span: &Range<usize>,
) -> Option<&'v mut DeTable<'i>> {
    if value.span() == *span {
        return match value.get_mut() {
            DeValue::Table(table) => Some(table),
            _ => None,
        };
    }
    match value.get_mut() {
        DeValue::Table(table) => table.iter_mut().find_map(|(_, v)| table_at(v, span)),
        DeValue::Array(items) => items.iter_mut().find_map(|v| table_at(v, span)),
        _ => None,
    }
}

/// Takes out the innermost entry the error at `span` is about: a key, a value, or a whole
/// table or array that is wrong as such. `Some(Some((table span, key)))` for a key taken out
/// of a table, `Some(None)` for an item taken out of an array, `None` when nothing holds the
/// span (or it is the value itself).
fn take_out(
    value: &mut Spanned<DeValue<'_>>,
    span: &Range<usize>,
) -> Option<Option<(Range<usize>, String)>> {
    let own = value.span();
    let within = |s: &Range<usize>| s.start <= span.start && span.end <= s.end.max(s.start + 1);
    match value.get_mut() {
        DeValue::Table(table) => {
            let mut hit = None;
            for (k, v) in table.iter_mut() {
                if within(&k.span()) {
                    hit = Some(k.get_ref().to_string());
                    break;
                }
                if matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
                    if let Some(found) = take_out(v, span) {
                        return Some(found);
                    }
                    if v.span() == *span {
                        hit = Some(k.get_ref().to_string());
                        break;
                    }
                } else if within(&v.span()) {
                    hit = Some(k.get_ref().to_string());
                    break;
                }
            }
            let key = hit?;
            table.remove(key.as_str());
            Some(Some((own, key)))
        }
        DeValue::Array(items) => {
            let mut hit = None;
            for (i, v) in items.iter_mut().enumerate() {
                if matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_))
                    && let Some(found) = take_out(v, span)
                {
                    return Some(found);
                }
                if v.span() == *span || within(&v.span()) {
                    hit = Some(i);
                    break;
                }
            }
            let i = hit?;
            let mut rest: Vec<_> = std::mem::replace(items, DeArray::new())
                .into_iter()
                .collect();
            rest.remove(i);
            *items = rest.into_iter().collect();
            Some(None)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        name: String,
        address: String,
        #[serde(default, deserialize_with = "crate::config::de::duration")]
        idle_timeout: Duration,
        #[serde(default)]
        count: u32,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    fn problems_of(source: &str) -> Vec<String> {
        let mut problems = Problems::new(source);
        let root = DeTable::parse(source).unwrap();
        let span = root.span();
        let _ = read::<Sample>(
            Spanned::new(span, DeValue::Table(root.into_inner())),
            &mut problems,
        );
        problems
            .into_sorted()
            .into_iter()
            .map(|p| format!("{}:{}: {}", p.line, p.column, p.message))
            .collect()
    }

    #[test]
    fn every_mistake_of_a_table_is_reported() {
        let found = problems_of(
            "name = \"web\"\nidle_timout = \"10m\"\nidle_timeout = \"10 minutes\"\ncount = -1\n[inner]\nport = \"x\"\nhost = 1\n",
        );
        assert_eq!(
            found,
            [
                "1:1: missing key `address`",
                "2:1: unknown key `idle_timout`: did you mean `idle_timeout`?",
                "3:16: `10 minutes` is not a duration: `minutes` is not a unit; write \"10m\"",
                "4:9: invalid value: integer `-1`, expected u32",
                "6:8: invalid type: string \"x\", expected u16",
                "7:1: unknown key `host`",
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn a_missing_key_does_not_hide_the_others() {
        let found = problems_of("idle_timeout = \"10\"\n");
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found[0].ends_with("missing key `address`") || found[0].ends_with("missing key `name`")
        );
        assert!(
            found
                .iter()
                .any(|p| p == "1:16: `10` is not a duration: it has no unit"),
            "{found:#?}"
        );
    }
}
