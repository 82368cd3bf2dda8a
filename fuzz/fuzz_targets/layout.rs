//! Key and scope validation with the storage layout: every valid (scope,
//! key) maps to a relative path that stays under the root and parses back
//! to itself, so two different (scope, key) pairs never share a path.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use statehost_plugin_api::{AssetScope, Scope, TaskScope, layout, validate_key};

#[derive(Debug, Arbitrary)]
enum Input {
    Task(String, String, String, i64),
    AssetName(String),
    AssetUri(String),
}

fn scope(input: Input) -> Option<Scope> {
    match input {
        Input::Task(d, r, t, m) => TaskScope::new(d, r, t, m).ok().map(Scope::Task),
        Input::AssetName(n) => AssetScope::by_name(n).ok().map(Scope::Asset),
        Input::AssetUri(u) => AssetScope::by_uri(u).ok().map(Scope::Asset),
    }
}

fn check(scope: &Scope, key: &str) -> String {
    let path = layout::object_path(scope, key);
    assert!(!path.starts_with('/'), "absolute: {path}");
    for segment in path.split('/') {
        assert!(!segment.is_empty() && segment != "." && segment != "..", "{path}");
        assert!(segment.len() <= layout::MAX_SEGMENT_BYTES + 1, "{path}");
    }
    let parsed = layout::parse_object_path(&path);
    assert_eq!(parsed.as_ref(), Some(&(scope.clone(), key.to_string())), "{path}");
    path
}

fuzz_target!(|data: (Input, String, Input, String)| {
    let (a, ka, b, kb) = data;
    let (Some(a), Some(b)) = (scope(a), scope(b)) else {
        return;
    };
    if validate_key(&ka).is_err() || validate_key(&kb).is_err() {
        return;
    }
    let pa = check(&a, &ka);
    let pb = check(&b, &kb);
    if (a, ka) != (b, kb) {
        assert_ne!(pa, pb, "two different (scope, key) pairs share a path");
    }
});
