//! A storage layout that backends can share: one deterministic, relative,
//! `/`-separated path per (scope, key), safe to use as a file path or an
//! object name.
//!
//! ```text
//! task/<dag_id>/<run_id>/<task_id>/<map_index>/<key>
//! asset/name/<asset name>/<key>
//! asset/uri/<asset uri>/<key>
//! ```
//!
//! Every component is percent-encoded with everything but ASCII letters,
//! digits, `-` and `_` escaped, so `/`, `.` and `..` in a key or an id can
//! never form a separator or a parent reference, and distinct (scope, key)
//! pairs never share a path. A component whose encoding is longer than
//! [`MAX_SEGMENT_BYTES`] is cut into several segments, each but the last
//! ending in `+` (a character the encoding never produces), so every segment
//! fits in a file name on common filesystems.
//!
//! The path is also the reference the shipped backends hand back, so
//! [`parse_object_path`] recovers the scope and key from it.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::{AssetIdentity, AssetScope, Scope, TaskScope, validate_key};

/// The longest path segment produced, in bytes (file systems allow 255).
pub const MAX_SEGMENT_BYTES: usize = 240;

const ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

fn push_component(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push('/');
    }
    // Encode straight into `out`: this runs on every call of every backend.
    let start = out.len();
    if text.len() <= MAX_SEGMENT_BYTES
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        // The common case (ids and keys made of letters, digits, - and _)
        // needs no encoding.
        out.push_str(text);
        return;
    }
    out.extend(utf8_percent_encode(text, ENCODE));
    if out.len() - start <= MAX_SEGMENT_BYTES {
        return;
    }
    // Rare: cut a long component into segments, all but the last marked `+`.
    let encoded = out.split_off(start);
    let mut rest = encoded.as_str();
    while rest.len() > MAX_SEGMENT_BYTES {
        // The encoding is ASCII, so any byte index is a char boundary.
        let (head, tail) = rest.split_at(MAX_SEGMENT_BYTES);
        out.push_str(head);
        out.push_str("+/");
        rest = tail;
    }
    out.push_str(rest);
}

/// A string with room for a path built from `parts` (encoding may grow it).
fn path_buffer(parts: &[&str]) -> String {
    String::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 24)
}

/// The path of the directory (prefix) that holds every key of one task
/// instance, without a trailing `/`.
pub fn task_prefix(scope: &TaskScope) -> String {
    let mut out = task_all_maps_prefix(scope);
    push_map_index(&mut out, scope.map_index());
    out
}

fn push_map_index(out: &mut String, map_index: i64) {
    use std::fmt::Write;
    // Digits and `-` need no encoding.
    let _ = write!(out, "/{map_index}");
}

/// The prefix that holds every map index of a task (what `clear` with
/// `all_map_indices` removes), without a trailing `/`.
pub fn task_all_maps_prefix(scope: &TaskScope) -> String {
    let mut out = path_buffer(&[scope.dag_id(), scope.run_id(), scope.task_id()]);
    out.push_str("task");
    push_component(&mut out, scope.dag_id());
    push_component(&mut out, scope.run_id());
    push_component(&mut out, scope.task_id());
    out
}

/// The prefix that holds every key of an asset, without a trailing `/`.
pub fn asset_prefix(scope: &AssetScope) -> String {
    let mut out = String::from("asset");
    match scope.identity() {
        AssetIdentity::Name(name) => {
            out.push_str("/name");
            push_component(&mut out, name);
        }
        AssetIdentity::Uri(uri) => {
            out.push_str("/uri");
            push_component(&mut out, uri);
        }
    }
    out
}

/// The prefix of any scope.
pub fn scope_prefix(scope: &Scope) -> String {
    match scope {
        Scope::Task(t) => task_prefix(t),
        Scope::Asset(a) => asset_prefix(a),
    }
}

/// The prefix `clear` removes: the scope's, or for a task with
/// `all_map_indices`, the task's across map indices.
pub fn clear_prefix(scope: &Scope, all_map_indices: bool) -> String {
    match scope {
        Scope::Task(t) if all_map_indices => task_all_maps_prefix(t),
        _ => scope_prefix(scope),
    }
}

/// The path of one value.
pub fn object_path(scope: &Scope, key: &str) -> String {
    match scope {
        Scope::Task(t) => task_object_path(t, key),
        Scope::Asset(a) => asset_object_path(a, key),
    }
}

/// The path of one task-state value.
pub fn task_object_path(scope: &TaskScope, key: &str) -> String {
    let mut out = path_buffer(&[scope.dag_id(), scope.run_id(), scope.task_id(), key]);
    out.push_str("task");
    push_component(&mut out, scope.dag_id());
    push_component(&mut out, scope.run_id());
    push_component(&mut out, scope.task_id());
    push_map_index(&mut out, scope.map_index());
    push_component(&mut out, key);
    out
}

/// The path of one asset-state value.
pub fn asset_object_path(scope: &AssetScope, key: &str) -> String {
    let mut out = asset_prefix(scope);
    push_component(&mut out, key);
    out
}

/// Recovers (scope, key) from a path made by [`object_path`]; `None` for
/// anything this layout cannot have produced (use it to validate references
/// read back from storage or a database).
pub fn parse_object_path(path: &str) -> Option<(Scope, String)> {
    let mut components = Vec::new();
    let mut current = String::new();
    for segment in path.split('/') {
        if segment.is_empty() || !segment.bytes().all(is_segment_byte) {
            return None;
        }
        match segment.strip_suffix('+') {
            Some(head) if !head.is_empty() && !head.contains('+') => current.push_str(head),
            Some(_) => return None,
            None if segment.contains('+') => return None,
            None => {
                current.push_str(segment);
                components.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        return None;
    }
    let decoded = |i: usize| -> Option<String> {
        let raw: &String = components.get(i)?;
        // Only accept canonical encodings, so one (scope, key) has one path.
        let text = percent_decode_str(raw).decode_utf8().ok()?.into_owned();
        (utf8_percent_encode(&text, ENCODE).to_string() == *raw).then_some(text)
    };
    let (scope, key_index) = match components.first().map(String::as_str) {
        Some("task") if components.len() == 6 => {
            let map_index: i64 = decoded(4)?.parse().ok()?;
            let scope = TaskScope::new(decoded(1)?, decoded(2)?, decoded(3)?, map_index).ok()?;
            if scope.map_index().to_string() != decoded(4)? {
                return None;
            }
            (Scope::Task(scope), 5)
        }
        Some("asset") if components.len() == 4 => {
            let id = decoded(2)?;
            let scope = match components[1].as_str() {
                "name" => AssetScope::by_name(id).ok()?,
                "uri" => AssetScope::by_uri(id).ok()?,
                _ => return None,
            };
            (Scope::Asset(scope), 3)
        }
        _ => return None,
    };
    let key = decoded(key_index)?;
    validate_key(&key).ok()?;
    Some((scope, key))
}

fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'%' | b'+')
}
