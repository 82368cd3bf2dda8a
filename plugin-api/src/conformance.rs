//! The behaviour suite every backend must pass.
//!
//! [`run`] exercises a backend through the [`StateBackend`] trait only, so the
//! same suite runs on a backend constructed in-process and on one loaded
//! from a `.so`. Every check uses fresh, randomly named scopes, so one
//! backend instance can run the suite any number of times, and a failure
//! panics with a message naming the check, the scope and the key.
//!
//! A backend may decline to store a value ([`Serialized::Inline`]); the
//! checks then skip what they cannot observe for that value. To check every
//! path, run the suite on a configuration that stores everything.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::{AssetScope, ErrorKind, Scope, Serialized, StateBackend, TaskScope};

/// Runs every check; panics on the first failure.
pub fn run(backend: &dyn StateBackend) {
    round_trips_every_json_kind(backend);
    round_trips_hostile_keys(backend);
    round_trips_asset_state(backend);
    overwrites_in_place(backend);
    references_are_deterministic(backend);
    isolates_scopes(backend);
    delete_is_idempotent(backend);
    clear_respects_map_indices(backend);
    clear_asset_scope(backend);
    survives_many_threads(backend);
    lists_what_it_holds(backend);
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn task(map_index: i64) -> TaskScope {
    TaskScope::new(unique("dag"), unique("run"), "task", map_index).unwrap()
}

fn set(backend: &dyn StateBackend, scope: &TaskScope, key: &str, value: &Value) -> Option<String> {
    let text = value.to_string();
    match backend.serialize_task_state(scope, key, &text) {
        Ok(Serialized::Reference(r)) => {
            assert!(!r.is_empty(), "serialize {scope} {key:?}: empty reference");
            Some(r)
        }
        Ok(Serialized::Inline) => None,
        Err(e) => panic!("serialize {scope} {key:?}: {e}"),
    }
}

fn get(backend: &dyn StateBackend, reference: &str) -> Value {
    let text = backend
        .deserialize_task_state(reference)
        .unwrap_or_else(|e| panic!("deserialize {reference:?}: {e}"));
    let mut visited = None;
    backend
        .visit_task_state(reference, &mut |t| visited = Some(t.to_vec()))
        .unwrap_or_else(|e| panic!("visit {reference:?}: {e}"));
    assert_eq!(
        visited.as_deref(),
        Some(text.as_bytes()),
        "visit_task_state must lend what deserialize_task_state returns"
    );
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("deserialize {reference:?} returned invalid JSON ({e}): {text}"))
}

fn assert_gone(backend: &dyn StateBackend, reference: &str, why: &str) {
    match backend.deserialize_task_state(reference) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!(
            "{why}: reading {reference:?} should say not found, said {e} ({})",
            e.kind()
        ),
        Ok(v) => panic!("{why}: {reference:?} still reads back {v}"),
    }
}

/// Strings, numbers, booleans, objects, arrays, unicode, and a 1 MiB string.
pub fn round_trips_every_json_kind(backend: &dyn StateBackend) {
    let scope = task(-1);
    let values = [
        json!("a string"),
        json!(42),
        json!(-1.5e300),
        json!(u64::MAX),
        json!(true),
        json!(false),
        json!({"job_id": "abc", "nested": {"list": [1, 2, {"x": null}]}}),
        json!([1, "two", 3.0, null, [], {}]),
        json!("ünïcødé ✓ 日本語 🦀 \u{0} \"quotes\" \\ back"),
        json!({}),
        json!([]),
        json!(""),
        Value::String("x".repeat(1 << 20)),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("kind-{i}");
        if let Some(r) = set(backend, &scope, &key, value) {
            assert_eq!(&get(backend, &r), value, "round trip of {key} in {scope}");
        }
    }
}

/// Keys with `/`, `..`, spaces, unicode and the longest allowed key.
pub fn round_trips_hostile_keys(backend: &dyn StateBackend) {
    let scope = task(0);
    let long = "k".repeat(crate::MAX_KEY_BYTES);
    let keys = [
        "plain",
        "a/b/c",
        "/leading",
        "trailing/",
        "..",
        "../../../../etc/passwd",
        ".",
        "./x",
        "with space",
        "ünïcødé/日本",
        "%2F",
        "a+b",
        "~",
        long.as_str(),
    ];
    let mut references = std::collections::HashSet::new();
    for key in keys {
        let value = json!({ "key": key });
        if let Some(r) = set(backend, &scope, key, &value) {
            assert!(
                references.insert(r.clone()),
                "key {key:?} reuses reference {r:?}"
            );
            assert_eq!(get(backend, &r), value, "round trip of key {key:?}");
        }
    }
}

/// Asset state by name, by uri, and by both.
pub fn round_trips_asset_state(backend: &dyn StateBackend) {
    let scopes = [
        AssetScope::by_name(unique("asset")).unwrap(),
        AssetScope::by_uri(format!("s3://bucket/{}/../x?y=1", unique("p"))).unwrap(),
        AssetScope::new(Some(unique("n")), Some(unique("file:///u"))).unwrap(),
    ];
    for scope in &scopes {
        let value = json!({"watermark": "2026-01-01", "asset": scope.to_string()});
        match backend.serialize_asset_state(scope, "wm", &value.to_string()) {
            Ok(Serialized::Reference(r)) => {
                let text = backend
                    .deserialize_asset_state(&r)
                    .unwrap_or_else(|e| panic!("deserialize asset {scope}: {e}"));
                let back: Value = serde_json::from_str(&text).expect("asset value is JSON");
                assert_eq!(back, value, "asset round trip in {scope}");
            }
            Ok(Serialized::Inline) => {}
            Err(e) => panic!("serialize asset {scope}: {e}"),
        }
    }
}

/// Writing a key again replaces its value.
pub fn overwrites_in_place(backend: &dyn StateBackend) {
    let scope = task(-1);
    let first = set(backend, &scope, "k", &json!({"v": 1}));
    let second = set(backend, &scope, "k", &json!({"v": 2}));
    if let (Some(a), Some(b)) = (first, second) {
        assert_eq!(a, b, "rewriting a key must keep its reference");
        assert_eq!(
            get(backend, &b),
            json!({"v": 2}),
            "rewrite must replace the value"
        );
    }
}

/// The same (scope, key) gives the same reference, whatever the value.
pub fn references_are_deterministic(backend: &dyn StateBackend) {
    let scope = task(-1);
    let value = json!("x".repeat(4096));
    let a = set(backend, &scope, "det", &value);
    let b = set(backend, &scope, "det", &value);
    assert_eq!(
        a, b,
        "same value and key twice must give the same reference"
    );
}

/// Two tasks, two map indices and two assets never see each other's values.
pub fn isolates_scopes(backend: &dyn StateBackend) {
    let t1 = task(-1);
    let t2 = task(-1);
    let m0 = task(0);
    let m1 = m0.with_map_index(1).unwrap();
    let scopes = [&t1, &t2, &m0, &m1];
    let mut refs = Vec::new();
    for (i, scope) in scopes.iter().enumerate() {
        refs.push(set(backend, scope, "same-key", &json!(i)));
    }
    for (i, r) in refs.iter().enumerate() {
        if let Some(r) = r {
            assert_eq!(
                get(backend, r),
                json!(i),
                "{} sees another scope's value",
                scopes[i]
            );
        }
    }
    let a1 = AssetScope::by_name(unique("a1")).unwrap();
    let a2 = AssetScope::by_name(unique("a2")).unwrap();
    let r1 = backend.serialize_asset_state(&a1, "k", "1").unwrap();
    let r2 = backend.serialize_asset_state(&a2, "k", "2").unwrap();
    if let (Serialized::Reference(r1), Serialized::Reference(r2)) = (r1, r2) {
        assert_ne!(r1, r2, "two assets share a reference");
        assert_eq!(backend.deserialize_asset_state(&r1).unwrap(), "1");
        assert_eq!(backend.deserialize_asset_state(&r2).unwrap(), "2");
    }
}

/// Deleting removes one key; deleting a missing key succeeds.
pub fn delete_is_idempotent(backend: &dyn StateBackend) {
    let scope = task(-1);
    let keep = set(backend, &scope, "keep", &json!("kept"));
    let gone = set(backend, &scope, "gone", &json!("deleted"));
    let as_scope = Scope::Task(scope.clone());
    backend
        .delete(&as_scope, "gone")
        .unwrap_or_else(|e| panic!("delete: {e}"));
    backend
        .delete(&as_scope, "gone")
        .unwrap_or_else(|e| panic!("deleting a deleted key must succeed: {e}"));
    backend
        .delete(&as_scope, "never-written")
        .unwrap_or_else(|e| panic!("deleting a missing key must succeed: {e}"));
    if let Some(r) = gone {
        assert_gone(backend, &r, "after delete");
    }
    if let Some(r) = keep {
        assert_eq!(
            get(backend, &r),
            json!("kept"),
            "delete removed another key"
        );
    }
}

/// Clear without `all_map_indices` removes one map index; with it, all of
/// them; another task of the same run keeps its values.
pub fn clear_respects_map_indices(backend: &dyn StateBackend) {
    let m0 = task(0);
    let m1 = m0.with_map_index(1).unwrap();
    let other = TaskScope::new(
        m0.dag_id(),
        m0.run_id(),
        format!("{}-other", m0.task_id()),
        0,
    )
    .unwrap();
    let r0 = set(backend, &m0, "a/b", &json!(0));
    let r1 = set(backend, &m1, "a/b", &json!(1));
    let ro = set(backend, &other, "a/b", &json!("other"));

    backend
        .clear(&Scope::Task(m0.clone()), false)
        .unwrap_or_else(|e| panic!("clear: {e}"));
    if let Some(r) = &r0 {
        assert_gone(backend, r, "after clear of map index 0");
    }
    if let Some(r) = &r1 {
        assert_eq!(
            get(backend, r),
            json!(1),
            "clear of map index 0 removed map index 1"
        );
    }

    backend
        .clear(&Scope::Task(m0.clone()), true)
        .unwrap_or_else(|e| panic!("clear all map indices: {e}"));
    if let Some(r) = &r1 {
        assert_gone(backend, r, "after clear with all_map_indices");
    }
    if let Some(r) = &ro {
        assert_eq!(
            get(backend, r),
            json!("other"),
            "clear removed another task's value"
        );
    }
    backend
        .clear(&Scope::Task(m0), true)
        .unwrap_or_else(|e| panic!("clearing an empty scope must succeed: {e}"));
}

/// Clearing an asset removes its keys and nothing else.
pub fn clear_asset_scope(backend: &dyn StateBackend) {
    let a = AssetScope::by_name(unique("clear")).unwrap();
    let b = AssetScope::by_name(format!("{}-b", a.name().unwrap())).unwrap();
    let ra = backend.serialize_asset_state(&a, "k", "\"a\"").unwrap();
    let rb = backend.serialize_asset_state(&b, "k", "\"b\"").unwrap();
    backend.clear(&Scope::Asset(a), false).unwrap();
    if let Serialized::Reference(r) = ra {
        match backend.deserialize_asset_state(&r) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            other => panic!("after clearing the asset, {r:?} gave {other:?}"),
        }
    }
    if let Serialized::Reference(r) = rb {
        assert_eq!(backend.deserialize_asset_state(&r).unwrap(), "\"b\"");
    }
}

/// Eight threads writing, reading and deleting at once.
pub fn survives_many_threads(backend: &dyn StateBackend) {
    let scope = task(-1);
    std::thread::scope(|s| {
        for t in 0..8 {
            let scope = &scope;
            s.spawn(move || {
                for i in 0..50 {
                    let key = format!("t{t}/k{}", i % 10);
                    let value = json!({"thread": t, "i": i, "pad": "p".repeat(i * 10)});
                    if let Some(r) = set(backend, scope, &key, &value) {
                        assert_eq!(get(backend, &r), value, "thread {t} read back {key}");
                    }
                    if i % 7 == 0 {
                        backend
                            .delete(&Scope::Task(scope.clone()), &key)
                            .unwrap_or_else(|e| panic!("thread {t} delete {key}: {e}"));
                    }
                }
            });
        }
    });
}

/// With the list capability, listing a scope reports exactly its objects.
pub fn lists_what_it_holds(backend: &dyn StateBackend) {
    let scope = task(3);
    let mut expected = Vec::new();
    for key in ["one", "two/three", ".."] {
        if let Some(r) = set(backend, &scope, key, &json!(key)) {
            expected.push((key.to_string(), r));
        }
    }
    let as_scope = Scope::Task(scope.clone());
    match backend.list(Some(&as_scope)) {
        Err(e) if e.kind() == ErrorKind::Unsupported => {}
        Err(e) => panic!("list: {e}"),
        Ok(objects) => {
            let mut got: Vec<(String, String)> = objects
                .into_iter()
                .map(|o| {
                    assert_eq!(
                        o.scope, as_scope,
                        "list returned an object of another scope"
                    );
                    (o.key, o.reference)
                })
                .collect();
            got.sort();
            expected.sort();
            assert_eq!(got, expected, "list of {scope}");
            let everything = backend
                .list(None)
                .unwrap_or_else(|e| panic!("list all: {e}"));
            for (key, _) in &expected {
                assert!(
                    everything
                        .iter()
                        .any(|o| o.scope == as_scope && &o.key == key),
                    "listing everything misses {key:?} of {scope}"
                );
            }
        }
    }
}
