//! The envelope that stands for an externally stored value:
//! `{"__airflow_state_ref__": "<reference>"}`, byte for byte what Airflow
//! 3.3 writes (Python's `json.dumps` with its defaults: a space after the
//! colon, non-ASCII escaped as `\uXXXX`), so tools that read Airflow's rows
//! read ours. Any other spelling of the same JSON object reads as an
//! envelope too.

use std::borrow::Cow;

use serde_json::Value;

/// The envelope's only key.
pub const MARKER: &str = "__airflow_state_ref__";

/// What every envelope this module writes starts with.
const PREFIX: &str = concat!("{\"", "__airflow_state_ref__", "\": ");

/// The stored text of an envelope around `reference`.
pub fn wrap(reference: &str) -> String {
    let mut out = String::with_capacity(reference.len() + PREFIX.len() + 3);
    out.push_str(PREFIX);
    push_python_json_string(&mut out, reference);
    out.push('}');
    out
}

/// Appends `text` as a JSON string the way Python's `json.dumps` writes it:
/// `"` and `\\` escaped, control characters as `\n`, `\t`, ... or `\u00XX`,
/// and every non-ASCII character as `\uXXXX` (UTF-16, lowercase hex).
fn push_python_json_string(out: &mut String, text: &str) {
    use std::fmt::Write;
    out.push('"');
    // References are printable ASCII without quotes or backslashes (the
    // layout makes them so): nothing to escape.
    // (Checked a block at a time without a branch per byte, which the
    // compiler vectorizes: this runs on every write.)
    if text.as_bytes().chunks(64).all(|block| {
        block.iter().fold(true, |plain, &b| {
            plain & (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\')
        })
    }) {
        out.push_str(text);
        out.push('"');
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Whether a user value would be mistaken for an envelope when read back.
pub fn carries_marker(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.contains_key(MARKER))
}

/// What a stored row holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored<'a> {
    /// The value itself.
    Inline(Value),
    /// A reference into the backend (borrowed from the row when it needs no
    /// unescaping).
    Reference(Cow<'a, str>),
}

/// The contents of a JSON string literal that has no escapes, borrowed.
fn plain_string(literal: &str) -> Option<&str> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    super::escape::needs_no_escape(inner.as_bytes()).then_some(inner)
}

/// Reads a row's text. `Err` describes a corrupt row: not JSON, or an
/// envelope whose reference is empty or not a string.
pub fn unwrap(text: &str) -> Result<Stored<'_>, String> {
    // Fast path for what `wrap` writes (and the spelling without the space
    // that statehost wrote before): read the reference without building a
    // map for the envelope (this runs on every read).
    let prefix = concat!("{\"", "__airflow_state_ref__", "\":");
    if let Some(rest) = text.strip_prefix(prefix)
        && let rest = rest.strip_prefix(' ').unwrap_or(rest)
        && let Some(literal) = rest.strip_suffix('}')
        && let Some(reference) = plain_string(literal)
            .map(Cow::Borrowed)
            .or_else(|| serde_json::from_str::<String>(literal).ok().map(Cow::Owned))
    {
        return if reference.is_empty() {
            Err("its envelope holds an empty reference".to_string())
        } else {
            Ok(Stored::Reference(reference))
        };
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the stored text is not JSON ({e})"))?;
    if let Value::Object(map) = &value
        && let Some(reference) = map.get(MARKER)
    {
        return match reference {
            Value::String(r) if !r.is_empty() => Ok(Stored::Reference(Cow::Owned(r.clone()))),
            Value::String(_) => Err("its envelope holds an empty reference".to_string()),
            other => Err(format!(
                "its envelope's reference is not a string but {other}"
            )),
        };
    }
    Ok(Stored::Inline(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_byte_compatible_and_round_trip() {
        // What Python's json.dumps({"__airflow_state_ref__": ref}) writes.
        assert_eq!(wrap("a/b"), r#"{"__airflow_state_ref__": "a/b"}"#);
        assert_eq!(wrap("q\"\\"), r#"{"__airflow_state_ref__": "q\"\\"}"#);
        assert_eq!(
            wrap("é\n\u{1}🦀"),
            r#"{"__airflow_state_ref__": "\u00e9\n\u0001\ud83e\udd80"}"#
        );
        // The spelling statehost wrote before still reads.
        assert_eq!(
            unwrap(r#"{"__airflow_state_ref__":"a/b"}"#).unwrap(),
            Stored::Reference("a/b".into())
        );
        assert_eq!(
            unwrap(&wrap("x y")).unwrap(),
            Stored::Reference("x y".into())
        );
        assert_eq!(
            unwrap("[1]").unwrap(),
            Stored::Inline(serde_json::json!([1]))
        );
    }

    #[test]
    fn the_fast_path_agrees_with_a_full_parse() {
        // Spaced or reordered envelopes (written by other tools) take the
        // slow path and mean the same.
        assert_eq!(
            unwrap(r#"{ "__airflow_state_ref__" : "a" }"#).unwrap(),
            Stored::Reference("a".into())
        );
        assert_eq!(
            unwrap(r#"{"__airflow_state_ref__":"a\u0041"}"#).unwrap(),
            Stored::Reference("aA".into())
        );
        // A marker prefix followed by more keys is still an envelope.
        assert_eq!(
            unwrap(r#"{"__airflow_state_ref__":"a","x":1}"#).unwrap(),
            Stored::Reference("a".into())
        );
        assert!(unwrap(r#"{"__airflow_state_ref__":""}"#).is_err());
        assert!(unwrap(r#"{"__airflow_state_ref__":[1]}"#).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_reference_survives_wrap_and_unwrap(reference in "\\PC{1,80}") {
            let wrapped = wrap(&reference);
            proptest::prop_assert_eq!(
                unwrap(&wrapped).unwrap(),
                Stored::Reference(reference.as_str().into())
            );
        }

        #[test]
        fn any_text_decodes_without_panicking(text in "\\PC{0,120}") {
            if let Ok(Stored::Reference(r)) = unwrap(&text) {
                proptest::prop_assert!(!r.is_empty());
            }
        }
    }

    #[test]
    fn corrupt_envelopes_are_errors() {
        assert!(
            unwrap(r#"{"__airflow_state_ref__":""}"#)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            unwrap(r#"{"__airflow_state_ref__":3}"#)
                .unwrap_err()
                .contains("not a string")
        );
        assert!(unwrap("{nope").is_err());
    }

    #[test]
    fn only_top_level_objects_with_the_marker_are_flagged() {
        assert!(carries_marker(
            &serde_json::json!({MARKER: "x", "other": 1})
        ));
        assert!(!carries_marker(
            &serde_json::json!({"nested": {MARKER: "x"}})
        ));
        assert!(!carries_marker(&serde_json::json!([MARKER])));
    }
}
