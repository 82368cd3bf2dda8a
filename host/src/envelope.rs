//! The envelope that stands for an externally stored value:
//! `{"__airflow_state_ref__":"<reference>"}`, byte for byte what Airflow 3.3
//! writes, so tools that read Airflow's rows read ours.

use serde_json::Value;

/// The envelope's only key.
pub const MARKER: &str = "__airflow_state_ref__";

/// The stored text of an envelope around `reference`.
pub fn wrap(reference: &str) -> String {
    let mut out = String::with_capacity(reference.len() + MARKER.len() + 8);
    out.push_str("{\"");
    out.push_str(MARKER);
    out.push_str("\":");
    // serde_json escapes exactly as JSON requires.
    out.push_str(&Value::String(reference.to_string()).to_string());
    out.push('}');
    out
}

/// Whether a user value would be mistaken for an envelope when read back.
pub fn carries_marker(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.contains_key(MARKER))
}

/// What a stored row holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// The value itself.
    Inline(Value),
    /// A reference into the backend.
    Reference(String),
}

/// Reads a row's text. `Err` describes a corrupt row: not JSON, or an
/// envelope whose reference is empty or not a string.
pub fn unwrap(text: &str) -> Result<Stored, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the stored text is not JSON ({e})"))?;
    if let Value::Object(map) = &value
        && let Some(reference) = map.get(MARKER)
    {
        return match reference {
            Value::String(r) if !r.is_empty() => Ok(Stored::Reference(r.clone())),
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
