//! Values as users give them: JSON text parsed with every number's digits
//! kept, and the one object key that cannot round-trip refused.

use serde_json::Value;

use super::escape::needs_no_escape;
use crate::error::{Error, Result};

/// How deep arrays and objects may nest: the JSON parser stops there (a
/// stack guard).
pub const MAX_JSON_DEPTH: usize = 128;

/// The object key serde_json uses inside to carry a number's text. An
/// object with it reads back as a number, so a value holding one is
/// refused rather than changed.
const NUMBER_KEY: &str = "$serde_json::private::Number";

/// Parses a value's JSON text, keeping every number as written.
///
/// ```
/// let v = statehost::state::parse_value("[18446744073709551616]").unwrap();
/// assert_eq!(v.to_string(), "[18446744073709551616]");
/// ```
pub fn parse_value(text: &str) -> Result<Value> {
    // Checked in the text: parsing would already have turned such an
    // object into a number.
    if text.contains(NUMBER_KEY) && has_number_key_in_text(text) {
        return Err(number_key_error());
    }
    serde_json::from_str(text).map_err(|e| Error::InvalidInput {
        message: if e.to_string().starts_with("recursion limit exceeded") {
            format!(
                "the value nests arrays and objects deeper than {MAX_JSON_DEPTH} levels; store a flatter value"
            )
        } else {
            format!("the value is not JSON ({e}); quote strings as JSON, e.g. '\"text\"'")
        },
    })
}

/// A value's JSON text, as serde_json writes it; a string that needs no
/// escaping is copied between quotes instead of escaped byte by byte.
pub(crate) fn render(value: &Value) -> String {
    if let Value::String(text) = value
        && needs_no_escape(text.as_bytes())
    {
        let mut out = String::with_capacity(text.len() + 2);
        out.push('"');
        out.push_str(text);
        out.push('"');
        return out;
    }
    value.to_string()
}

/// Parses the JSON text a backend returned, whose bytes are not yet known
/// to be UTF-8 (a plugin can hand over anything). A string without escapes
/// is taken as it is, after the UTF-8 check; anything else goes through
/// serde_json. `Err` says what is wrong, for a message.
pub(crate) fn parse_backend_json(bytes: &[u8]) -> std::result::Result<Value, String> {
    if let [b'"', inner @ .., b'"'] = bytes
        && needs_no_escape(inner)
    {
        return crate::backend::utf8(inner)
            .map(|text| Value::String(text.to_owned()))
            .map_err(|_| "it returned bytes that are not UTF-8".to_string());
    }
    serde_json::from_slice::<Value>(bytes).map_err(|e| {
        if crate::backend::utf8(bytes).is_err() {
            "it returned bytes that are not UTF-8".to_string()
        } else {
            format!("it returned text that is not JSON ({e})")
        }
    })
}

/// Refuses a value that would not read back as it is: one holding an
/// object with serde_json's number key. `text` is the value rendered; the
/// walk runs only when the key appears in it, and neither runs for a value
/// that is not an object or an array (no key to hold).
pub(crate) fn check_round_trip(value: &Value, text: &str) -> Result<()> {
    if !matches!(value, Value::Object(_) | Value::Array(_)) {
        return Ok(());
    }
    if text.contains(NUMBER_KEY) && has_number_key(value) {
        return Err(number_key_error());
    }
    Ok(())
}

fn has_number_key(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key(NUMBER_KEY) || map.values().any(has_number_key),
        Value::Array(items) => items.iter().any(has_number_key),
        _ => false,
    }
}

/// Whether the key appears as an object key in JSON text: quoted, and
/// followed (after blanks) by a colon. Inside a string its quotes would be
/// escaped, so a match is a key.
fn has_number_key_in_text(text: &str) -> bool {
    let quoted = format!("\"{NUMBER_KEY}\"");
    text.match_indices(&quoted).any(|(at, m)| {
        text[at + m.len()..]
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with(':')
    })
}

fn number_key_error() -> Error {
    Error::InvalidInput {
        message: format!(
            "the value holds an object with the key {NUMBER_KEY:?}, which the JSON library reserves for numbers (it would read back as a number); rename that key"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The fast paths agree with serde_json on every string, escaped
        /// or not (control characters, quotes, backslashes, non-ASCII).
        #[test]
        fn plain_strings_render_and_parse_as_serde_json_does(
            text in "(?s).{0,80}",
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            plain in "[^\"\\\\\\p{Cc}]{0,150}",
            damage in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 0x20u8..=0xffu8), 0..3),
        ) {
            let value = Value::String(text);
            let rendered = render(&value);
            proptest::prop_assert_eq!(&rendered, &value.to_string());
            proptest::prop_assert_eq!(parse_backend_json(rendered.as_bytes()), Ok(value));
            let mut quoted = vec![b'"'];
            quoted.extend(&junk);
            quoted.push(b'"');
            let theirs = serde_json::from_slice::<Value>(&quoted).ok();
            proptest::prop_assert_eq!(parse_backend_json(&quoted).ok(), theirs);
            // Text that takes the fast path (no quote, backslash or control
            // character), long enough for the vectorised check's blocks,
            // with bytes overwritten: valid or not, the answer is
            // serde_json's.
            let mut quoted = format!("\"{plain}\"").into_bytes();
            let inner = quoted.len() - 2;
            for (at, byte) in damage {
                if inner > 0 && byte != b'"' && byte != b'\\' {
                    quoted[1 + at.index(inner)] = byte;
                }
            }
            let theirs = serde_json::from_slice::<Value>(&quoted).ok();
            proptest::prop_assert_eq!(parse_backend_json(&quoted).ok(), theirs);
        }
    }

    #[test]
    fn the_fast_paths_refuse_what_needs_escaping() {
        assert_eq!(
            parse_backend_json(b"\"\xff\""),
            Err("it returned bytes that are not UTF-8".to_string())
        );
        assert!(parse_backend_json(b"\"a\"b\"").is_err());
    }

    #[test]
    fn long_values_are_checked_for_utf8_to_their_last_byte() {
        // Past the vectorised check's blocks: multi-byte characters across
        // block edges read back; one bad byte anywhere, in a string or in
        // other JSON, is refused.
        let good = "é🦀x".repeat(300);
        assert_eq!(
            parse_backend_json(format!("\"{good}\"").as_bytes()),
            Ok(Value::String(good.clone()))
        );
        for at in [0, 63, 64, 1000, good.len() - 1] {
            let mut bytes = format!("\"{good}\"").into_bytes();
            bytes[1 + at] = 0xff;
            assert_eq!(
                parse_backend_json(&bytes),
                Err("it returned bytes that are not UTF-8".to_string()),
                "bad byte at {at}"
            );
            let mut listed = format!("[\"{good}\"]").into_bytes();
            listed[2 + at] = 0xff;
            assert_eq!(
                parse_backend_json(&listed),
                Err("it returned bytes that are not UTF-8".to_string()),
                "bad byte at {at}, in a list"
            );
        }
        // A character cut short at the end, after other characters, and
        // at and beside the vectorised check's block edges.
        let mut cut = format!("\"{}", &good[..good.len() - 1]).into_bytes();
        cut.truncate(cut.len() - 2);
        cut.push(b'"');
        let mut cuts = vec![cut];
        for len in [63, 64, 65, 127, 128, 129, 1024] {
            let mut inner = "x".repeat(len - 2).into_bytes();
            inner.extend_from_slice(&"🦀".as_bytes()[..2]);
            cuts.push([&b"\""[..], &inner, b"\""].concat());
            cuts.push([&b"[\""[..], &inner, b"\"]"].concat());
        }
        for bytes in cuts {
            assert_eq!(
                parse_backend_json(&bytes),
                Err("it returned bytes that are not UTF-8".to_string()),
                "{} bytes",
                bytes.len()
            );
        }
    }

    #[test]
    fn numbers_keep_their_text() {
        for text in [
            "18446744073709551616",
            "-1.000000000000000000001",
            "[1e400]",
        ] {
            let v = parse_value(text).unwrap();
            assert_eq!(v.to_string().replace("e+", "e"), text);
        }
    }

    #[test]
    fn the_number_key_is_refused_as_a_key_only() {
        for text in [
            r#"{"$serde_json::private::Number":"12"}"#,
            r#"{"a":[{"$serde_json::private::Number" : "x"}]}"#,
        ] {
            let e = parse_value(text).unwrap_err().to_string();
            assert!(e.contains("reserves"), "{e}");
        }
        // As a string it is just text.
        let v = parse_value(r#"["$serde_json::private::Number"]"#).unwrap();
        check_round_trip(&v, &v.to_string()).unwrap();
        // Built in code, it is caught when rendered.
        let v = serde_json::json!({"a": {"$serde_json::private::Number": "1"}});
        assert!(check_round_trip(&v, &v.to_string()).is_err());
    }

    #[test]
    fn depth_is_named() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = parse_value(&deep).unwrap_err().to_string();
        assert!(e.contains("deeper than 128 levels"), "{e}");
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        parse_value(&fine).unwrap();
    }
}
