//! Text components as network NBT, the form 1.20.3 and later expect in a configuration
//! disconnect (earlier versions take JSON text).

use serde_json::Value;

use super::error::{CodecError, Result};

/// Text components deeper than this are refused when they are converted to NBT.
const MAX_TEXT_DEPTH: usize = 64;

// NBT tag types.
const TAG_END: u8 = 0;
const TAG_BYTE: u8 = 1;
const TAG_INT: u8 = 3;
const TAG_LONG: u8 = 4;
const TAG_DOUBLE: u8 = 6;
const TAG_STRING: u8 = 8;
const TAG_LIST: u8 = 9;
const TAG_COMPOUND: u8 = 10;

/// Writes a JSON text component as network NBT (a root tag without a name): objects become
/// compounds, strings strings, booleans bytes, numbers ints, longs or doubles. NBT lists hold
/// one type, so in a list that mixes them every element becomes a compound component
/// (`"a"` → `{"text": "a"}`), which means the same to the client.
pub(super) fn put_text_nbt(out: &mut Vec<u8>, text: &Value) -> Result<()> {
    out.push(nbt_tag(text));
    put_nbt_payload(out, text, 0)
}

fn nbt_tag(value: &Value) -> u8 {
    match value {
        Value::Null | Value::String(_) => TAG_STRING,
        Value::Bool(_) => TAG_BYTE,
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => TAG_INT,
            Some(_) => TAG_LONG,
            None => TAG_DOUBLE,
        },
        Value::Array(_) => TAG_LIST,
        Value::Object(_) => TAG_COMPOUND,
    }
}

fn put_nbt_payload(out: &mut Vec<u8>, value: &Value, depth: usize) -> Result<()> {
    if depth > MAX_TEXT_DEPTH {
        return Err(CodecError::BadText("it is nested too deeply"));
    }
    match value {
        Value::Null => put_nbt_string(out, ""),
        Value::String(s) => put_nbt_string(out, s),
        Value::Bool(b) => {
            out.push(u8::from(*b));
            Ok(())
        }
        Value::Number(n) => {
            match (nbt_tag(value), n.as_i64()) {
                (TAG_INT, Some(i)) => out.extend_from_slice(&(i as i32).to_be_bytes()),
                (TAG_LONG, Some(i)) => out.extend_from_slice(&i.to_be_bytes()),
                _ => out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_be_bytes()),
            }
            Ok(())
        }
        Value::Array(items) => {
            let tag = items.first().map_or(TAG_END, nbt_tag);
            let mixed = items.iter().any(|item| nbt_tag(item) != tag);
            out.push(if mixed { TAG_COMPOUND } else { tag });
            out.extend_from_slice(&(items.len() as i32).to_be_bytes());
            for item in items {
                if mixed && !item.is_object() {
                    put_nbt_payload(out, &as_component(item), depth + 1)?;
                } else {
                    put_nbt_payload(out, item, depth + 1)?;
                }
            }
            Ok(())
        }
        Value::Object(fields) => {
            for (key, field) in fields {
                if field.is_null() {
                    continue;
                }
                out.push(nbt_tag(field));
                put_nbt_string(out, key)?;
                put_nbt_payload(out, field, depth + 1)?;
            }
            out.push(TAG_END);
            Ok(())
        }
    }
}

/// A list element that is not a compound, as the compound component that means the same.
fn as_component(item: &Value) -> Value {
    match item {
        Value::Array(_) => serde_json::json!({ "text": "", "extra": item }),
        Value::String(s) => serde_json::json!({ "text": s }),
        Value::Null => serde_json::json!({ "text": "" }),
        other => serde_json::json!({ "text": other.to_string() }),
    }
}

/// NBT strings are Java's "modified UTF-8": a u16 byte length, NUL as two bytes, and
/// characters beyond the Basic Multilingual Plane as two 3-byte surrogates.
fn put_nbt_string(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    for c in s.chars() {
        match c {
            '\0' => out.extend_from_slice(&[0xc0, 0x80]),
            c if (c as u32) < 0x80 => out.push(c as u8),
            c if (c as u32) < 0x10000 => {
                let mut utf8 = [0; 3];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
            c => {
                let mut units = [0; 2];
                for unit in c.encode_utf16(&mut units) {
                    let unit = *unit;
                    out.extend_from_slice(&[
                        0xe0 | (unit >> 12) as u8,
                        0x80 | ((unit >> 6) & 0x3f) as u8,
                        0x80 | (unit & 0x3f) as u8,
                    ]);
                }
            }
        }
    }
    let length = u16::try_from(out.len() - start - 2)
        .map_err(|_| CodecError::BadText("a string is longer than 65,535 bytes"))?;
    out[start..start + 2].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minecraft::testing::*;
    use serde_json::json;

    #[test]
    fn text_components_become_nbt_with_modified_utf8_and_uniform_lists() {
        let mut out = Vec::new();
        put_text_nbt(&mut out, &json!("a\u{0}😀")).unwrap();
        // NUL as c0 80 and the emoji as two 3-byte surrogates.
        assert_eq!(out, hex("08 0009 61 c080 eda0bd edb880"));
        let mut out = Vec::new();
        // Keys in order, so the output is the same whether serde_json keeps order or sorts.
        put_text_nbt(
            &mut out,
            &json!({"big": 5_000_000_000i64, "bold": true, "extra": ["x", {"text": "y"}], "f": 0.5, "gone": null, "n": 300}),
        )
        .unwrap();
        let expected = [
            hex("0a"),
            hex("04 0003 626967 000000012a05f200"),
            hex("01 0004 626f6c64 01"),
            // A mixed list: both elements as compounds.
            hex("09 0005 6578747261 0a 00000002"),
            hex("08 0004 74657874 0001 78 00"),
            hex("08 0004 74657874 0001 79 00"),
            hex("06 0001 66 3fe0000000000000"),
            hex("03 0001 6e 0000012c"),
            hex("00"),
        ]
        .concat();
        assert_eq!(out, expected);
        let mut out = Vec::new();
        put_text_nbt(&mut out, &json!({"extra": []})).unwrap();
        assert_eq!(out, hex("0a 09 0005 6578747261 00 00000000 00"));
        let mut deep = json!("x");
        for _ in 0..100 {
            deep = json!({ "extra": [deep] });
        }
        assert!(matches!(
            put_text_nbt(&mut Vec::new(), &deep),
            Err(CodecError::BadText(_))
        ));
        assert!(put_text_nbt(&mut Vec::new(), &json!("x".repeat(70_000))).is_err());
    }
}
