//! The behaviour suite every backend must pass.
//!
//! [`run`] exercises a backend through the [`StateBackend`] trait only, so the
//! same suite runs on a backend constructed in-process and on one loaded
//! from a `.so`. Every check uses fresh, randomly named scopes, so one
//! backend instance can run the suite any number of times, and a failure
//! panics with a message naming the check, the scope and the key. The suite
//! clears every scope it wrote when it ends (even when a check fails), so
//! it can run against a real store.
//!
//! A backend may decline to store a value ([`Serialized::Inline`]); the
//! checks then skip what they cannot observe for that value. To check every
//! path, run the suite on a configuration that stores everything.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::{
    AssetScope, ErrorKind, Scope, ScopeRef, Serialized, StateBackend, StateKey, TaskScope, WriteId,
};

macro_rules! checks {
    ($($check:ident,)*) => {
        /// The checks, in the order they run.
        pub const CHECKS: &[&str] = &[$(stringify!($check)),*];
        const CHECK_FNS: &[for<'s, 'b> fn(&'s Suite<'b>)] = &[$(|suite| suite.$check()),*];
    };
}

checks! {
    round_trips_every_json_kind,
    round_trips_hostile_keys,
    round_trips_asset_state,
    each_write_is_an_object_of_its_own,
    delete_object_is_exact,
    references_must_belong_to_their_key,
    tampered_references_are_refused,
    another_writes_id_reaches_nothing,
    isolates_scopes,
    delete_removes_every_object_of_a_key,
    clear_respects_map_indices,
    clear_asset_scope,
    survives_many_threads,
    lists_what_it_holds,
}

/// Runs every check; panics on the first failure. Clears what it wrote.
pub fn run(backend: &dyn StateBackend) {
    run_reporting(backend, |_| {});
}

/// Runs every check, calling `starting` with each check's name (one of
/// [`CHECKS`]) before it runs; panics on the first failure, so the last
/// name reported is the check that failed. Clears what it wrote.
pub fn run_reporting(backend: &dyn StateBackend, mut starting: impl FnMut(&'static str)) {
    let suite = Suite {
        backend,
        written: Mutex::default(),
    };
    for (name, check) in CHECKS.iter().zip(CHECK_FNS) {
        starting(name);
        check(&suite);
    }
}

/// A fresh write id for each call, as the host mints them.
pub fn write_id() -> WriteId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let random = (u128::from(std::process::id()) << 64)
        | u128::from(COUNTER.fetch_add(1, Ordering::Relaxed))
        | (u128::from(now) << 96);
    WriteId::from_parts(now, random)
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

struct Suite<'a> {
    backend: &'a dyn StateBackend,
    /// Every scope written, cleared when the suite ends.
    written: Mutex<Vec<Scope>>,
}

impl Drop for Suite<'_> {
    fn drop(&mut self) {
        let written = std::mem::take(&mut *self.written.lock().unwrap_or_else(|p| p.into_inner()));
        for scope in written {
            // Best effort, also while a failed check unwinds.
            let _ = self.backend.clear(scope.as_ref(), true);
        }
    }
}

fn at<'a>(scope: &'a TaskScope, key: &'a str) -> StateKey<'a> {
    StateKey::task(scope, key)
}

impl Suite<'_> {
    fn task(&self, map_index: i64) -> TaskScope {
        let scope = TaskScope::new(unique("dag"), unique("run"), "task", map_index).unwrap();
        self.remember(Scope::Task(scope.clone()));
        scope
    }

    fn asset(&self, scope: AssetScope) -> AssetScope {
        self.remember(Scope::Asset(scope.clone()));
        scope
    }

    fn remember(&self, scope: Scope) {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(scope);
    }

    fn put(&self, at: StateKey<'_>, value: &Value) -> Option<String> {
        let text = value.to_string();
        match self.backend.serialize(at, write_id(), &text) {
            Ok(Serialized::Reference(r)) => {
                assert!(!r.is_empty(), "serialize {at}: empty reference");
                Some(r)
            }
            Ok(Serialized::Inline) => None,
            Err(e) => panic!("serialize {at}: {e}"),
        }
    }

    fn set(&self, scope: &TaskScope, key: &str, value: &Value) -> Option<String> {
        self.put(at(scope, key), value)
    }

    fn get(&self, reference: &str, owner: StateKey<'_>) -> Value {
        let text = self
            .backend
            .deserialize(reference, Some(owner))
            .unwrap_or_else(|e| panic!("deserialize {reference:?} of {owner}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("deserialize {reference:?} returned invalid JSON ({e}): {text}")
        })
    }

    fn assert_gone(&self, reference: &str, owner: StateKey<'_>, why: &str) {
        match self.backend.deserialize(reference, Some(owner)) {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!(
                "{why}: reading {reference:?} should say not found, said {e} ({})",
                e.kind()
            ),
            Ok(v) => panic!("{why}: {reference:?} still reads back {v}"),
        }
    }

    /// Strings, numbers, booleans, objects, arrays, unicode, and a 1 MiB string.
    fn round_trips_every_json_kind(&self) {
        let scope = self.task(-1);
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
            if let Some(r) = self.set(&scope, &key, value) {
                assert_eq!(
                    &self.get(&r, at(&scope, &key)),
                    value,
                    "round trip of {key} in {scope}"
                );
            }
        }
    }

    /// Keys with `/`, `..`, spaces, unicode, tildes and the longest allowed key.
    fn round_trips_hostile_keys(&self) {
        let scope = self.task(0);
        let long = "k".repeat(crate::MAX_KEY_BYTES);
        let long_unicode = "日".repeat(crate::MAX_KEY_BYTES / 3);
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
            "a~0123456789abcdef0123456789abcdef",
            long.as_str(),
            long_unicode.as_str(),
        ];
        let mut references = std::collections::HashSet::new();
        for key in keys {
            let value = json!({ "key": key });
            if let Some(r) = self.set(&scope, key, &value) {
                assert!(
                    references.insert(r.clone()),
                    "key {key:?} reuses reference {r:?}"
                );
                assert_eq!(
                    self.get(&r, at(&scope, key)),
                    value,
                    "round trip of key {key:?}"
                );
            }
        }
    }

    /// Asset state by name and by uri.
    fn round_trips_asset_state(&self) {
        let scopes = [
            self.asset(AssetScope::by_name(unique("asset")).unwrap()),
            self.asset(
                AssetScope::by_uri(format!("s3://bucket/{}/../x?y=1", unique("p"))).unwrap(),
            ),
            self.asset(AssetScope::by_uri(format!("file:///{}", "u/".repeat(400))).unwrap()),
        ];
        for scope in &scopes {
            let value = json!({"watermark": "2026-01-01", "asset": scope.to_string()});
            let key = StateKey::asset(scope, "wm");
            if let Some(r) = self.put(key, &value) {
                assert_eq!(self.get(&r, key), value, "asset round trip in {scope}");
            }
        }
    }

    /// Two writes of one key are two objects with two references, and the
    /// second leaves the first untouched.
    fn each_write_is_an_object_of_its_own(&self) {
        let scope = self.task(-1);
        let first = self.set(&scope, "k", &json!({"v": 1}));
        let second = self.set(&scope, "k", &json!({"v": 2}));
        if let (Some(a), Some(b)) = (first, second) {
            assert_ne!(a, b, "two writes of one key must give two references");
            assert_eq!(
                self.get(&a, at(&scope, "k")),
                json!({"v": 1}),
                "a later write changed an earlier write's object"
            );
            assert_eq!(self.get(&b, at(&scope, "k")), json!({"v": 2}));
        }
        // Even the same value twice is two objects.
        let value = json!("x".repeat(4096));
        let a = self.set(&scope, "same", &value);
        let b = self.set(&scope, "same", &value);
        if let (Some(a), Some(b)) = (a, b) {
            assert_ne!(
                a, b,
                "the same value written twice must give two references"
            );
        }
    }

    /// `delete_object` removes exactly one object; a deleted reference
    /// reads as not found; deleting again succeeds.
    fn delete_object_is_exact(&self) {
        let scope = self.task(-1);
        let key = at(&scope, "k");
        let old = self.set(&scope, "k", &json!("old"));
        let new = self.set(&scope, "k", &json!("new"));
        let (Some(old), Some(new)) = (old, new) else {
            return;
        };
        let removed = self
            .backend
            .delete_object(&old, Some(key))
            .unwrap_or_else(|e| panic!("delete_object {old:?}: {e}"));
        assert!(
            removed,
            "delete_object of an existing object answered false"
        );
        self.assert_gone(&old, key, "after delete_object");
        assert_eq!(
            self.get(&new, key),
            json!("new"),
            "delete_object removed another write's object"
        );
        self.backend
            .delete_object(&old, Some(key))
            .unwrap_or_else(|e| panic!("deleting a deleted object must succeed: {e}"));
        self.backend
            .delete_object(&old, None)
            .unwrap_or_else(|e| panic!("delete_object without an owner: {e}"));
    }

    /// A reference read with another key as its owner is refused, for
    /// reading and for deleting, and the object stays.
    fn references_must_belong_to_their_key(&self) {
        let scope = self.task(-1);
        let other = self.task(-1);
        let Some(r) = self.set(&scope, "mine", &json!("mine")) else {
            return;
        };
        for wrong in [at(&scope, "yours"), at(&other, "mine")] {
            match self.backend.deserialize(&r, Some(wrong)) {
                Err(e) if e.kind() == ErrorKind::InvalidInput => {}
                other => panic!("reading {r:?} as {wrong} must be refused, got {other:?}"),
            }
            match self.backend.delete_object(&r, Some(wrong)) {
                Err(e) if e.kind() == ErrorKind::InvalidInput => {}
                other => panic!("deleting {r:?} as {wrong} must be refused, got {other:?}"),
            }
        }
        assert_eq!(self.get(&r, at(&scope, "mine")), json!("mine"));
        // Without an owner (a caller that only has the reference) it reads.
        self.backend
            .deserialize(&r, None)
            .unwrap_or_else(|e| panic!("reading {r:?} without an owner: {e}"));
    }

    /// References that the backend never made are errors, never reads of
    /// something else.
    fn tampered_references_are_refused(&self) {
        let scope = self.task(-1);
        for reference in ["", "../../etc/passwd", "/etc/passwd", "..", "v2/../../x"] {
            match self.backend.deserialize(reference, Some(at(&scope, "k"))) {
                Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound) => {}
                other => panic!("reading the reference {reference:?} must fail, got {other:?}"),
            }
        }
    }

    /// A reference of the shared layout that names this key's path with
    /// another key's write id (a row altered to borrow it) reads and
    /// deletes nothing: a backend that finds objects by write id must still
    /// check the whole path. Skipped for references of another shape.
    fn another_writes_id_reaches_nothing(&self) {
        let scope = self.task(-1);
        let (mine, theirs) = (at(&scope, "mine"), at(&scope, "theirs"));
        let Some(real) = self.put(theirs, &json!("theirs")) else {
            return;
        };
        let Some(id) = crate::layout::parse_reference(&real).and_then(|p| p.write_id) else {
            return;
        };
        let forged = crate::layout::object_path(mine, id);
        for owner in [Some(mine), None] {
            match self.backend.deserialize(&forged, owner) {
                Err(e) if matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound) => {}
                other => panic!(
                    "reading {forged:?}, which borrows the write id of {real:?}, must fail, got {other:?}"
                ),
            }
            match self.backend.delete_object(&forged, owner) {
                Ok(false) => {}
                Err(e) if e.kind() == ErrorKind::InvalidInput => {}
                other => panic!(
                    "deleting {forged:?}, which borrows the write id of {real:?}, must delete nothing, got {other:?}"
                ),
            }
        }
        assert_eq!(self.get(&real, theirs), json!("theirs"));
    }

    /// Two tasks, two map indices and two assets never see each other's values.
    fn isolates_scopes(&self) {
        let t1 = self.task(-1);
        let t2 = self.task(-1);
        let m0 = self.task(0);
        let m1 = m0.with_map_index(1).unwrap();
        let scopes = [&t1, &t2, &m0, &m1];
        let mut refs = Vec::new();
        for (i, scope) in scopes.iter().enumerate() {
            refs.push(self.set(scope, "same-key", &json!(i)));
        }
        for (i, r) in refs.iter().enumerate() {
            if let Some(r) = r {
                assert_eq!(
                    self.get(r, at(scopes[i], "same-key")),
                    json!(i),
                    "{} sees another scope's value",
                    scopes[i]
                );
            }
        }
        let a1 = self.asset(AssetScope::by_name(unique("a1")).unwrap());
        let a2 = self.asset(AssetScope::by_name(unique("a2")).unwrap());
        let r1 = self.put(StateKey::asset(&a1, "k"), &json!(1));
        let r2 = self.put(StateKey::asset(&a2, "k"), &json!(2));
        if let (Some(r1), Some(r2)) = (r1, r2) {
            assert_ne!(r1, r2, "two assets share a reference");
            assert_eq!(self.get(&r1, StateKey::asset(&a1, "k")), json!(1));
            assert_eq!(self.get(&r2, StateKey::asset(&a2, "k")), json!(2));
        }
    }

    /// `delete` removes every object of one key and nothing else; deleting
    /// a missing key succeeds.
    fn delete_removes_every_object_of_a_key(&self) {
        let scope = self.task(-1);
        let keep = self.set(&scope, "keep", &json!("kept"));
        let gone = [
            self.set(&scope, "gone", &json!(1)),
            self.set(&scope, "gone", &json!(2)),
        ];
        let prefix = self.set(&scope, "gone/x", &json!("a key under the same name"));
        self.backend
            .delete(at(&scope, "gone"))
            .unwrap_or_else(|e| panic!("delete: {e}"));
        self.backend
            .delete(at(&scope, "gone"))
            .unwrap_or_else(|e| panic!("deleting a deleted key must succeed: {e}"));
        self.backend
            .delete(at(&scope, "never-written"))
            .unwrap_or_else(|e| panic!("deleting a missing key must succeed: {e}"));
        for r in gone.iter().flatten() {
            self.assert_gone(r, at(&scope, "gone"), "after delete of the key");
        }
        if let Some(r) = keep {
            assert_eq!(
                self.get(&r, at(&scope, "keep")),
                json!("kept"),
                "delete removed another key"
            );
        }
        if let Some(r) = prefix {
            assert_eq!(
                self.get(&r, at(&scope, "gone/x")),
                json!("a key under the same name"),
                "delete of `gone` removed `gone/x`"
            );
        }
    }

    /// Clear without `all_map_indices` removes one map index; with it, all of
    /// them; another task of the same run keeps its values.
    fn clear_respects_map_indices(&self) {
        let m0 = self.task(0);
        let m1 = m0.with_map_index(1).unwrap();
        let other = TaskScope::new(
            m0.dag_id(),
            m0.run_id(),
            format!("{}-other", m0.task_id()),
            0,
        )
        .unwrap();
        self.remember(Scope::Task(other.clone()));
        let r0 = self.set(&m0, "a/b", &json!(0));
        let r1 = self.set(&m1, "a/b", &json!(1));
        let ro = self.set(&other, "a/b", &json!("other"));

        self.backend
            .clear(ScopeRef::Task(m0.as_ref()), false)
            .unwrap_or_else(|e| panic!("clear: {e}"));
        if let Some(r) = &r0 {
            self.assert_gone(r, at(&m0, "a/b"), "after clear of map index 0");
        }
        if let Some(r) = &r1 {
            assert_eq!(
                self.get(r, at(&m1, "a/b")),
                json!(1),
                "clear of map index 0 removed map index 1"
            );
        }

        self.backend
            .clear(ScopeRef::Task(m0.as_ref()), true)
            .unwrap_or_else(|e| panic!("clear all map indices: {e}"));
        if let Some(r) = &r1 {
            self.assert_gone(r, at(&m1, "a/b"), "after clear with all_map_indices");
        }
        if let Some(r) = &ro {
            assert_eq!(
                self.get(r, at(&other, "a/b")),
                json!("other"),
                "clear removed another task's value"
            );
        }
        self.backend
            .clear(ScopeRef::Task(m0.as_ref()), true)
            .unwrap_or_else(|e| panic!("clearing an empty scope must succeed: {e}"));
    }

    /// Clearing an asset removes its keys and nothing else.
    fn clear_asset_scope(&self) {
        let a = self.asset(AssetScope::by_name(unique("clear")).unwrap());
        let b = self.asset(AssetScope::by_name(format!("{}-b", a.name().unwrap())).unwrap());
        let ra = self.put(StateKey::asset(&a, "k"), &json!("a"));
        let rb = self.put(StateKey::asset(&b, "k"), &json!("b"));
        self.backend
            .clear(ScopeRef::Asset(a.identity()), false)
            .unwrap_or_else(|e| panic!("clear {a}: {e}"));
        if let Some(r) = ra {
            self.assert_gone(&r, StateKey::asset(&a, "k"), "after clearing the asset");
        }
        if let Some(r) = rb {
            assert_eq!(self.get(&r, StateKey::asset(&b, "k")), json!("b"));
        }
    }

    /// Eight threads writing, reading and deleting at once.
    fn survives_many_threads(&self) {
        let scope = self.task(-1);
        std::thread::scope(|s| {
            for t in 0..8 {
                let scope = &scope;
                s.spawn(move || {
                    for i in 0..50 {
                        let key = format!("t{t}/k{}", i % 10);
                        let value = json!({"thread": t, "i": i, "pad": "p".repeat(i * 10)});
                        if let Some(r) = self.set(scope, &key, &value) {
                            assert_eq!(
                                self.get(&r, at(scope, &key)),
                                value,
                                "thread {t} read back {key}"
                            );
                            if i % 7 == 0 {
                                self.backend
                                    .delete_object(&r, Some(at(scope, &key)))
                                    .unwrap_or_else(|e| panic!("thread {t} delete {key}: {e}"));
                            }
                        }
                    }
                });
            }
        });
    }

    /// With the list capability, listing a scope reports exactly its
    /// objects, each with its reference, its write id and when it was
    /// written.
    fn lists_what_it_holds(&self) {
        let scope = self.task(3);
        let mut expected = Vec::new();
        for key in ["one", "two/three", "..", "one"] {
            let id = write_id();
            let value = json!(key).to_string();
            match self.backend.serialize(at(&scope, key), id, &value) {
                Ok(Serialized::Reference(r)) => expected.push((r, id)),
                Ok(Serialized::Inline) => {}
                Err(e) => panic!("serialize {key:?}: {e}"),
            }
        }
        let objects = match self.backend.list(Some(ScopeRef::Task(scope.as_ref()))) {
            Err(e) if e.kind() == ErrorKind::Unsupported => return,
            Err(e) => panic!("list: {e}"),
            Ok(objects) => objects,
        };
        let mut got: Vec<_> = objects
            .iter()
            .map(|o| {
                assert!(
                    o.modified.is_some(),
                    "list gave no modification time for {:?}",
                    o.reference
                );
                (
                    o.reference.clone(),
                    o.write_id
                        .unwrap_or_else(|| panic!("list gave no write id for {:?}", o.reference)),
                )
            })
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "list of {scope}");
        let everything = self
            .backend
            .list(None)
            .unwrap_or_else(|e| panic!("list all: {e}"));
        for (reference, _) in &expected {
            assert!(
                everything.iter().any(|o| &o.reference == reference),
                "listing everything misses {reference:?}"
            );
        }
    }
}
