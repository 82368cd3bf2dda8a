//! The path-keyed store helper: one safe, relative, `/`-separated path per
//! object, usable as a file path or an object name, and the one validator
//! of references read back from a database.
//!
//! ```text
//! v2/task/<dag_id>/<run_id>/<task_id>/<map_index>/<key>/<write id>
//! v2/asset/name/<asset name>/<key>/<write id>
//! v2/asset/uri/<asset uri>/<key>/<write id>
//! ```
//!
//! Every component is percent-encoded with everything but ASCII letters,
//! digits, `-` and `_` escaped, so `/`, `.` and `..` in an id or a key can
//! never form a separator or a parent reference, and distinct scopes and
//! keys never share a path. A component whose encoding is longer than
//! [`MAX_COMPONENT_BYTES`] is stored as the first bytes of its encoding, a
//! `~` (which the encoding never produces) and 32 hex digits of the
//! SHA-256 of the component, so every segment fits in a file name and a
//! whole path (at most [`MAX_PATH_BYTES`]) fits in the object names of
//! S3, Google Cloud Storage and Azure Blob Storage (1024 bytes) with room
//! for a prefix. Such a path still names its scope and key uniquely, but
//! [`parse_reference`] cannot give them back.
//!
//! Each write of a value is an object of its own, named by its
//! [`WriteId`]; the objects of one key share the directory (prefix)
//! [`key_prefix`]. The path is also the reference the shipped backends
//! hand back, so:
//!
//! * [`object_path`] is where a write goes;
//! * [`check_reference`] validates a reference from the database before it
//!   is read or deleted: it must be a path this layout makes, and, when the
//!   row it came from is known, an object of that row's scope and key;
//! * [`key_prefix`], [`scope_prefix`] and [`clear_prefix`] are what
//!   `delete` and `clear` remove.
//!
//! References written by plugin-api 1.x backends
//! (`task/<dag_id>/<run_id>/<task_id>/<map_index>/<key>`, one per key,
//! overwritten in place) are still accepted by [`check_reference`], so
//! rows written before an upgrade keep reading back; they carry no write
//! id. The `v2/` prefix keeps the two apart: a 1.x listing never parses a
//! path of this layout as its own.

use std::fmt::Write;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

use crate::{
    AssetIdentity, AssetScope, BackendError, Scope, ScopeRef, StateKey, TaskScope, WriteId,
    validate_key,
};

/// The first segment of every path of this layout.
pub const LAYOUT_PREFIX: &str = "v2";

/// Components whose encoding is longer than this are hashed.
pub const MAX_COMPONENT_BYTES: usize = 120;

/// How much of a hashed component's encoding is kept, for people reading
/// a listing.
const HASHED_KEEP_BYTES: usize = 64;

/// The longest path [`object_path`] makes, in bytes.
pub const MAX_PATH_BYTES: usize =
    LAYOUT_PREFIX.len() + "/task".len() + 4 * (1 + MAX_COMPONENT_BYTES) + 1 + 20 + 1 + 36;

const ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

const fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// [`is_plain`] of every byte value.
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_plain(b as u8);
        b += 1;
    }
    table
};

/// Whether every byte is plain: a table lookup per byte, folded without a
/// branch (this runs on every call, over every component of a path, and
/// components are mostly shorter than a vector register).
fn all_plain(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(true, |plain, &b| plain & PLAIN[usize::from(b)])
}

/// The bytes a component's plain percent-encoding takes.
fn encoded_len(text: &str) -> usize {
    text.bytes().map(|b| if is_plain(b) { 1 } else { 3 }).sum()
}

// Paths are written through `fmt::Write`: into a `String` to build one, or
// into a `Matching` to compare one with a reference without building it.
// The common case (ids and keys of letters, digits, - and _) needs no
// encoding, and stays small enough to inline into every caller.
#[inline]
fn push_component<W: Write>(out: &mut W, text: &str) {
    let _ = out.write_str("/");
    if text.len() <= MAX_COMPONENT_BYTES && all_plain(text.as_bytes()) {
        let _ = out.write_str(text);
        return;
    }
    push_encoded(out, text);
}

/// A component that needs escaping, or hashing when it is too long.
#[cold]
#[inline(never)]
fn push_encoded<W: Write>(out: &mut W, text: &str) {
    if encoded_len(text) <= MAX_COMPONENT_BYTES {
        for chunk in utf8_percent_encode(text, ENCODE) {
            let _ = out.write_str(chunk);
        }
        return;
    }
    // Keep a readable head, cut before an escape, then the hash.
    let mut head = String::with_capacity(HASHED_KEEP_BYTES + 33);
    for chunk in utf8_percent_encode(text, ENCODE) {
        head.push_str(chunk);
        if head.len() >= HASHED_KEEP_BYTES {
            break;
        }
    }
    let mut keep = HASHED_KEEP_BYTES.min(head.len());
    while head.as_bytes()[keep - 1] == b'%' || head.as_bytes()[keep - 2] == b'%' {
        keep -= 1;
    }
    head.truncate(keep);
    head.push('~');
    let digest = Sha256::digest(text.as_bytes());
    for byte in &digest[..16] {
        let _ = write!(head, "{byte:02x}");
    }
    let _ = out.write_str(&head);
}

fn push_map_index<W: Write>(out: &mut W, map_index: i64) {
    // Digits and `-` need no encoding. (Formatted by hand: this runs on
    // every call, and the common values are small.)
    if map_index == -1 {
        let _ = out.write_str("/-1");
        return;
    }
    let mut digits = [0u8; 21];
    let mut at = digits.len();
    let negative = map_index < 0;
    let mut n = map_index.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if negative {
        at -= 1;
        digits[at] = b'-';
    }
    let _ = out.write_char('/');
    let _ = out.write_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

fn task_all_maps<W: Write>(out: &mut W, dag_id: &str, run_id: &str, task_id: &str) {
    let _ = out.write_str(LAYOUT_PREFIX);
    let _ = out.write_str("/task");
    push_component(out, dag_id);
    push_component(out, run_id);
    push_component(out, task_id);
}

fn with_capacity(parts: &[&str]) -> String {
    String::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 64)
}

fn push_scope<W: Write>(out: &mut W, scope: ScopeRef<'_>) {
    match scope {
        ScopeRef::Task(t) => {
            task_all_maps(out, t.dag_id(), t.run_id(), t.task_id());
            push_map_index(out, t.map_index());
        }
        ScopeRef::Asset(AssetIdentity::Name(name)) => {
            let _ = out.write_str(LAYOUT_PREFIX);
            let _ = out.write_str("/asset/name");
            push_component(out, name);
        }
        ScopeRef::Asset(AssetIdentity::Uri(uri)) => {
            let _ = out.write_str(LAYOUT_PREFIX);
            let _ = out.write_str("/asset/uri");
            push_component(out, uri);
        }
    }
}

fn scope_parts<'a>(scope: &ScopeRef<'a>) -> [&'a str; 3] {
    match scope {
        ScopeRef::Task(t) => [t.dag_id(), t.run_id(), t.task_id()],
        ScopeRef::Asset(AssetIdentity::Name(s) | AssetIdentity::Uri(s)) => [s, "", ""],
    }
}

/// Compares what is written into it with a text, as it goes.
struct Matching<'a> {
    rest: &'a str,
    matches: bool,
}

impl Write for Matching<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.matches {
            match self.rest.strip_prefix(s) {
                Some(rest) => self.rest = rest,
                None => self.matches = false,
            }
        }
        Ok(())
    }
}

/// What follows [`key_prefix`]`(at)` in `reference`, if it starts with it;
/// compared without building the prefix.
fn after_key_prefix<'a>(reference: &'a str, at: StateKey<'_>) -> Option<&'a str> {
    let mut matching = Matching {
        rest: reference,
        matches: true,
    };
    push_scope(&mut matching, at.scope);
    push_component(&mut matching, at.key);
    matching.matches.then_some(matching.rest)
}

/// The prefix (directory) that holds every object of a scope, without a
/// trailing `/`.
pub fn scope_prefix(scope: ScopeRef<'_>) -> String {
    let mut out = with_capacity(&scope_parts(&scope));
    push_scope(&mut out, scope);
    out
}

/// The prefix `clear` removes: the scope's, or for a task with
/// `all_map_indices`, the task's across its map indices. No trailing `/`.
pub fn clear_prefix(scope: ScopeRef<'_>, all_map_indices: bool) -> String {
    match scope {
        ScopeRef::Task(t) if all_map_indices => {
            let mut out = with_capacity(&scope_parts(&scope));
            task_all_maps(&mut out, t.dag_id(), t.run_id(), t.task_id());
            out
        }
        _ => scope_prefix(scope),
    }
}

/// The prefix (directory) that holds every object of one key, without a
/// trailing `/`.
pub fn key_prefix(at: StateKey<'_>) -> String {
    let [a, b, c] = scope_parts(&at.scope);
    let mut out = with_capacity(&[a, b, c, at.key]);
    push_scope(&mut out, at.scope);
    push_component(&mut out, at.key);
    out
}

/// Where one write of a value goes: [`key_prefix`]`/<write id>`.
pub fn object_path(at: StateKey<'_>, write_id: WriteId) -> String {
    let mut out = key_prefix(at);
    out.push('/');
    out.push_str(write_id.encode(&mut [0; 36]));
    out
}

/// What a reference says about the object it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPath {
    /// The write that made the object; `None` for a 1.x reference.
    pub write_id: Option<WriteId>,
    /// The scope and key it belongs to; `None` when a component of the
    /// path is hashed (too long to spell out).
    pub owner: Option<(Scope, String)>,
}

/// Parses a path made by [`object_path`] (or by the 1.x layout); `None`
/// for anything else. Use [`check_reference`] to validate a reference read
/// from a database: it also checks the owner, and says what is wrong.
pub fn parse_reference(reference: &str) -> Option<ObjectPath> {
    let segments: Vec<&str> = reference.split('/').collect();
    if segments.first() != Some(&LAYOUT_PREFIX) {
        return legacy::parse(reference).map(|(scope, key)| ObjectPath {
            write_id: None,
            owner: Some((scope, key)),
        });
    }
    let write_id: WriteId = segments.last()?.parse().ok()?;
    let components = &segments[..segments.len() - 1];
    let decoded = |i: usize| -> Option<Option<String>> { decode_component(components.get(i)?) };
    let owner = match components.get(1).copied() {
        Some("task") if components.len() == 7 => {
            let map_index = components[5];
            let parsed: i64 = map_index.parse().ok()?;
            if parsed.to_string() != map_index || parsed < -1 {
                return None;
            }
            let (dag, run, task, key) = (decoded(2)?, decoded(3)?, decoded(4)?, decoded(6)?);
            match (dag, run, task, key) {
                (Some(d), Some(r), Some(t), Some(k)) => {
                    let scope = TaskScope::new(d, r, t, parsed).ok()?;
                    validate_key(&k).ok()?;
                    Some((Scope::Task(scope), k))
                }
                _ => None,
            }
        }
        Some("asset") if components.len() == 5 => {
            let (id, key) = (decoded(3)?, decoded(4)?);
            let by_name = match components[2] {
                "name" => true,
                "uri" => false,
                _ => return None,
            };
            match (id, key) {
                (Some(id), Some(k)) => {
                    let scope = if by_name {
                        AssetScope::by_name(id)
                    } else {
                        AssetScope::by_uri(id)
                    }
                    .ok()?;
                    validate_key(&k).ok()?;
                    Some((Scope::Asset(scope), k))
                }
                _ => None,
            }
        }
        _ => return None,
    };
    Some(ObjectPath {
        write_id: Some(write_id),
        owner,
    })
}

/// Decodes one component: `Some(Some(text))` for a spelled-out component,
/// `Some(None)` for a hashed one, `None` for anything this layout never
/// makes.
fn decode_component(raw: &str) -> Option<Option<String>> {
    if raw.is_empty() {
        return None;
    }
    if let Some((head, hash)) = raw.split_once('~') {
        let plain_head = head.bytes().all(|b| is_plain(b) || b == b'%');
        let hex = hash.len() == 32
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        return (plain_head && hex && !head.is_empty()).then_some(None);
    }
    if raw.len() > MAX_COMPONENT_BYTES {
        return None;
    }
    // Only canonical encodings: one (scope, key) has one path.
    let text = percent_decode_str(raw).decode_utf8().ok()?.into_owned();
    let canonical = if text.bytes().all(is_plain) {
        text == raw
    } else {
        utf8_percent_encode(&text, ENCODE).to_string() == raw
    };
    canonical.then_some(Some(text))
}

/// Validates a reference read back from a database before it is read or
/// deleted: it must be a path this layout (or the 1.x layout) makes, and
/// when `owner` is given (the scope and key of the row it came from) it
/// must name an object of that scope and key, so a tampered row cannot
/// make a backend read or delete another key's object. Answers the
/// object's write id (`None` for a 1.x reference).
///
/// With an owner this compares the reference with the owner's path as it
/// goes, without building or decoding anything: it runs on every read.
pub fn check_reference(
    reference: &str,
    owner: Option<StateKey<'_>>,
) -> Result<Option<WriteId>, BackendError> {
    if let Some(owner) = owner {
        if let Some(rest) = after_key_prefix(reference, owner)
            && let Some(id) = rest.strip_prefix('/')
            && let Ok(write_id) = id.parse::<WriteId>()
        {
            return Ok(Some(write_id));
        }
        if !reference.starts_with("v2/") && legacy::object_path(owner) == reference {
            return Ok(None);
        }
        return Err(BackendError::invalid_input(
            if parse_reference(reference).is_some() {
                format!(
                    "the reference {} does not belong to {owner}; the row was altered",
                    quote_short(reference)
                )
            } else {
                format!(
                    "{} is not a reference this backend makes",
                    quote_short(reference)
                )
            },
        ));
    }
    match parse_reference(reference) {
        Some(parsed) => Ok(parsed.write_id),
        None => Err(BackendError::invalid_input(format!(
            "{} is not a reference this backend makes",
            quote_short(reference)
        ))),
    }
}

/// A reference for a message, cut to a sane length.
fn quote_short(reference: &str) -> String {
    const SHOW: usize = 160;
    if reference.len() <= SHOW {
        return format!("{reference:?}");
    }
    let mut end = SHOW;
    while !reference.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &reference[..end], reference.len())
}

/// The 1.x layout (one object per key, overwritten in place), read only so
/// that references written before an upgrade keep working.
mod legacy {
    use super::*;

    const MAX_SEGMENT_BYTES: usize = 240;

    fn push(out: &mut String, text: &str) {
        if !out.is_empty() {
            out.push('/');
        }
        let start = out.len();
        out.extend(utf8_percent_encode(text, ENCODE));
        if out.len() - start <= MAX_SEGMENT_BYTES {
            return;
        }
        let encoded = out.split_off(start);
        let mut rest = encoded.as_str();
        while rest.len() > MAX_SEGMENT_BYTES {
            let (head, tail) = rest.split_at(MAX_SEGMENT_BYTES);
            out.push_str(head);
            out.push_str("+/");
            rest = tail;
        }
        out.push_str(rest);
    }

    /// The 1.x path of a key.
    pub(super) fn object_path(at: StateKey<'_>) -> String {
        let mut out = String::new();
        match at.scope {
            ScopeRef::Task(t) => {
                out.push_str("task");
                push(&mut out, t.dag_id());
                push(&mut out, t.run_id());
                push(&mut out, t.task_id());
                out.push_str(&format!("/{}", t.map_index()));
            }
            ScopeRef::Asset(AssetIdentity::Name(name)) => {
                out.push_str("asset/name");
                push(&mut out, name);
            }
            ScopeRef::Asset(AssetIdentity::Uri(uri)) => {
                out.push_str("asset/uri");
                push(&mut out, uri);
            }
        }
        push(&mut out, at.key);
        out
    }

    fn is_segment_byte(b: u8) -> bool {
        is_plain(b) || matches!(b, b'%' | b'+')
    }

    /// Recovers (scope, key) from a 1.x path.
    pub(super) fn parse(path: &str) -> Option<(Scope, String)> {
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
            let text = percent_decode_str(raw).decode_utf8().ok()?.into_owned();
            (utf8_percent_encode(&text, ENCODE).to_string() == *raw).then_some(text)
        };
        let (scope, key_index) = match components.first().map(String::as_str) {
            Some("task") if components.len() == 6 => {
                let map_index: i64 = decoded(4)?.parse().ok()?;
                let scope =
                    TaskScope::new(decoded(1)?, decoded(2)?, decoded(3)?, map_index).ok()?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_test_of_plain_bytes_agrees_with_the_byte_test() {
        for b in 0..=u8::MAX {
            assert_eq!(all_plain(&[b]), is_plain(b), "{b:#x}");
            assert_eq!(all_plain(&[b'a', b, b'Z']), is_plain(b), "{b:#x}");
            let long: Vec<u8> = (0..100).map(|i| if i == 77 { b } else { b'x' }).collect();
            assert_eq!(all_plain(&long), is_plain(b), "{b:#x}");
        }
        assert!(all_plain(b""));
    }

    fn task(dag: &str, map_index: i64) -> Scope {
        Scope::Task(TaskScope::new(dag, "run 1", "t", map_index).unwrap())
    }

    fn id(n: u128) -> WriteId {
        WriteId::from_parts(1_700_000_000_000, n)
    }

    fn at<'a>(scope: &'a Scope, key: &'a str) -> StateKey<'a> {
        StateKey {
            scope: scope.as_ref(),
            key,
        }
    }

    #[test]
    fn paths_escape_separators_and_dots() {
        let scope = task("d/../x", -1);
        let path = object_path(at(&scope, "../../etc/passwd"), id(1));
        assert!(
            path.starts_with("v2/task/d%2F%2E%2E%2Fx/run%201/t/-1/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd/")
        );
        assert!(
            path.split('/')
                .all(|s| s != ".." && s != "." && !s.is_empty())
        );
    }

    #[test]
    fn paths_round_trip_through_parse_unless_hashed() {
        let cases = [
            (task("dag", 3), "k".to_string()),
            (
                Scope::Asset(AssetScope::by_uri("s3://b/p?x=1").unwrap()),
                "a b".to_string(),
            ),
            (
                Scope::Asset(AssetScope::by_name("é~+").unwrap()),
                "+%".to_string(),
            ),
        ];
        for (scope, key) in cases {
            let path = object_path(at(&scope, &key), id(7));
            let parsed = parse_reference(&path).unwrap();
            assert_eq!(parsed.write_id, Some(id(7)));
            assert_eq!(parsed.owner, Some((scope.clone(), key.clone())));
            assert!(check_reference(&path, Some(at(&scope, &key))).is_ok());
        }
    }

    #[test]
    fn long_components_are_hashed_and_paths_stay_short() {
        let long = "é/".repeat(340);
        let scope = Scope::Task(TaskScope::new(&long, &long, &long, 12).unwrap());
        let key = "日".repeat(170);
        let path = object_path(at(&scope, &key), id(3));
        assert!(path.len() <= MAX_PATH_BYTES, "{} bytes", path.len());
        assert!(path.split('/').all(|s| s.len() <= MAX_COMPONENT_BYTES));
        let parsed = parse_reference(&path).unwrap();
        assert_eq!(parsed.owner, None);
        assert_eq!(parsed.write_id, Some(id(3)));
        assert!(check_reference(&path, Some(at(&scope, &key))).is_ok());
        // Another long key with the same head is another path.
        let other = format!("{}x", "日".repeat(169));
        assert!(check_reference(&path, Some(at(&scope, &other))).is_err());
    }

    #[test]
    fn a_reference_must_belong_to_its_row() {
        let a = task("a", 0);
        let b = task("b", 0);
        let path = object_path(at(&a, "k"), id(1));
        let err = check_reference(&path, Some(at(&b, "k"))).unwrap_err();
        assert!(err.message().contains("does not belong"), "{err}");
        assert!(check_reference(&path, Some(at(&a, "k2"))).is_err());
        assert!(check_reference(&path, Some(at(&a, "k"))).is_ok());
        assert!(check_reference(&path, None).is_ok());
        // A 1.x reference belongs to the key it spells.
        let old = "task/a/run%201/t/0/k";
        assert_eq!(parse_reference(old).unwrap().write_id, None);
        assert!(check_reference(old, Some(at(&a, "k"))).is_ok());
        assert!(check_reference(old, Some(at(&b, "k"))).is_err());
    }

    #[test]
    fn parse_rejects_what_the_layout_never_makes() {
        let good = object_path(at(&task("d", 0), "k"), id(1));
        let wid = id(1).to_string();
        for bad in [
            String::new(),
            format!("v2/task/d/r/t/0/{wid}"),
            format!("v2/task/d/r/t/00/k/{wid}"),
            format!("v2/task/d/r/t/0/%6B/{wid}"),
            format!("v2/task/d/r/t/0/../{wid}"),
            format!("/v2/task/d/r/t/0/k/{wid}"),
            format!("v2/asset/other/x/k/{wid}"),
            format!("v2/task/d/r/t/-2/k/{wid}"),
            format!("v2/task/d/r/t/0/k~zz/{wid}"),
            "v2/task/d/r/t/0/k/not-a-write-id".to_string(),
            format!("{good}/extra"),
            "task/d/r/t/0/a+b".to_string(),
        ] {
            assert_eq!(parse_reference(&bad), None, "{bad}");
            assert!(check_reference(&bad, None).is_err(), "{bad}");
        }
    }

    use proptest::prelude::*;

    fn any_scope() -> impl Strategy<Value = Scope> {
        // Text with separators, dots, escapes, tildes, unicode and long runs.
        let text = "([a-z/._%+~ -]|é|日|\\.\\.){1,80}";
        prop_oneof![
            (text, text, text, -1i64..5).prop_filter_map("valid task", |(d, r, t, m)| {
                TaskScope::new(d, r, t, m).ok().map(Scope::Task)
            }),
            text.prop_filter_map("valid asset", |n| AssetScope::by_name(n)
                .ok()
                .map(Scope::Asset)),
            text.prop_filter_map("valid asset", |u| AssetScope::by_uri(u)
                .ok()
                .map(Scope::Asset)),
        ]
    }

    proptest! {
        #[test]
        fn every_path_stays_under_the_root_and_checks_back(
            scope in any_scope(),
            key in "([a-z/._%+~ -]|é|\\.\\.){1,60}",
            bits in any::<u128>(),
        ) {
            let write_id = id(bits);
            let path = object_path(at(&scope, &key), write_id);
            prop_assert!(!path.starts_with('/'));
            prop_assert!(path.len() <= MAX_PATH_BYTES);
            for segment in path.split('/') {
                prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
            }
            let checked = check_reference(&path, Some(at(&scope, &key))).unwrap();
            prop_assert_eq!(checked, Some(write_id));
            let parsed = parse_reference(&path).unwrap();
            prop_assert_eq!(parsed.write_id, Some(write_id));
            if let Some(owner) = parsed.owner {
                prop_assert_eq!(owner, (scope.clone(), key.clone()));
            }
            prop_assert_eq!(&key_prefix(at(&scope, &key)), &path[..path.len() - 37]);
        }

        #[test]
        fn distinct_scopes_and_keys_never_share_a_path(
            a in any_scope(), ka in "[a-z/.]{1,8}",
            b in any_scope(), kb in "[a-z/.]{1,8}",
        ) {
            if (&a, &ka) != (&b, &kb) {
                prop_assert_ne!(key_prefix(at(&a, &ka)), key_prefix(at(&b, &kb)));
                let path = object_path(at(&a, &ka), id(1));
                prop_assert!(check_reference(&path, Some(at(&b, &kb))).is_err());
            }
        }
    }

    #[test]
    fn prefixes_nest() {
        let scope = task("d", 2);
        let key = key_prefix(at(&scope, "k"));
        let own = scope_prefix(scope.as_ref());
        let all = clear_prefix(scope.as_ref(), true);
        assert!(key.starts_with(&format!("{own}/")));
        assert!(own.starts_with(&format!("{all}/")));
        assert_eq!(clear_prefix(scope.as_ref(), false), own);
    }
}
