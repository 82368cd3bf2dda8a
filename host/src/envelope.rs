//! The envelope that stands for an externally stored value:
//! `{"__airflow_state_ref__":"<reference>"}`, byte for byte what Airflow 3.3
//! writes, so tools that read Airflow's rows read ours.

use std::borrow::Cow;

use serde_json::Value;

/// The envelope's only key.
pub const MARKER: &str = "__airflow_state_ref__";

/// The stored text of an envelope around `reference`.
pub fn wrap(reference: &str) -> String {
    let mut out = Vec::with_capacity(reference.len() + MARKER.len() + 8);
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(MARKER.as_bytes());
    out.extend_from_slice(b"\":");
    // serde_json escapes exactly as JSON requires; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, reference);
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
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

/// Reads a row's text. `Err` describes a corrupt row: not JSON, or an
/// envelope whose reference is empty or not a string.
pub fn unwrap(text: &str) -> Result<Stored<'_>, String> {
    // Fast path for what `wrap` writes: read the reference without building
    // a map for the envelope (this runs on every read).
    let prefix = concat!("{\"", "__airflow_state_ref__", "\":");
    if let Some(rest) = text.strip_prefix(prefix)
        && let Some(literal) = rest.strip_suffix('}')
        && let Some(reference) = serde_json::from_str::<&str>(literal)
            .map(Cow::Borrowed)
            .ok()
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
        assert_eq!(wrap("a/b"), r#"{"__airflow_state_ref__":"a/b"}"#);
        assert_eq!(wrap("q\"\\"), r#"{"__airflow_state_ref__":"q\"\\"}"#);
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
