//! The consistency defects reported against deterministic references, one
//! test each, written against the API they were found in.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use statehost::config::StateStoreSettings;
use statehost::store::{MetadataStore, Row, SqliteLocation, SqliteStore};
use statehost::timeout::TimeoutBackend;
use statehost::{Result, StateHost};
use statehost_memory::MemoryBackend;
use statehost_plugin_api::{
    AssetScope, BackendError, Scope, Serialized, StateBackend, StoredObject, TaskScope,
};

/// The memory backend, made slow for values containing "slow" and hung
/// (for a minute) for values containing "hang".
#[derive(Debug, Default)]
struct Laggy {
    inner: MemoryBackend,
}

impl Laggy {
    fn lag(value: &str) {
        if value.contains("hang") {
            std::thread::sleep(Duration::from_secs(60));
        } else if value.contains("slow") {
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn objects(&self) -> Vec<StoredObject> {
        self.inner.list(None).unwrap()
    }
}

impl StateBackend for Laggy {
    fn serialize_task_state(
        &self,
        scope: &TaskScope,
        key: &str,
        value: &str,
    ) -> std::result::Result<Serialized, BackendError> {
        Laggy::lag(value);
        self.inner.serialize_task_state(scope, key, value)
    }
    fn deserialize_task_state(&self, reference: &str) -> std::result::Result<String, BackendError> {
        self.inner.deserialize_task_state(reference)
    }
    fn serialize_asset_state(
        &self,
        scope: &AssetScope,
        key: &str,
        value: &str,
    ) -> std::result::Result<Serialized, BackendError> {
        Laggy::lag(value);
        self.inner.serialize_asset_state(scope, key, value)
    }
    fn deserialize_asset_state(
        &self,
        reference: &str,
    ) -> std::result::Result<String, BackendError> {
        self.inner.deserialize_asset_state(reference)
    }
    fn delete(&self, scope: &Scope, key: &str) -> std::result::Result<(), BackendError> {
        self.inner.delete(scope, key)
    }
    fn clear(&self, scope: &Scope, all: bool) -> std::result::Result<(), BackendError> {
        self.inner.clear(scope, all)
    }
    fn list(&self, scope: Option<&Scope>) -> std::result::Result<Vec<StoredObject>, BackendError> {
        self.inner.list(scope)
    }
}

fn settings() -> StateStoreSettings {
    StateStoreSettings {
        orphan_grace_seconds: 0,
        ..Default::default()
    }
}

fn scope() -> TaskScope {
    TaskScope::new("dag", "run", "task", -1).unwrap()
}

fn with_deadline(backend: Arc<Laggy>, ms: u64) -> Arc<dyn StateBackend> {
    Arc::new(TimeoutBackend::new(backend, Duration::from_millis(ms)))
}

fn host(backend: Arc<dyn StateBackend>, store: Box<dyn MetadataStore>) -> StateHost {
    StateHost::from_parts(Some(("memory".into(), backend)), store, settings())
}

fn sqlite(dir: &std::path::Path) -> Box<dyn MetadataStore> {
    Box::new(SqliteStore::open(SqliteLocation::File(dir.join("meta.db"))).unwrap())
}

#[test]
fn a_late_write_never_overwrites_a_later_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let host = host(with_deadline(backend.clone(), 50), sqlite(dir.path()));
    let state = host.task_state(scope());
    assert!(state.set("k", &json!("A slow")).is_err(), "A times out");
    state.set("k", &json!("B")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(state.get("k").unwrap(), Some(json!("B")), "B was lost");
}

#[test]
fn a_late_write_does_not_bring_a_deleted_key_back_into_storage() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let host = host(with_deadline(backend.clone(), 50), sqlite(dir.path()));
    let state = host.task_state(scope());
    state.set("k", &json!("before")).unwrap();
    assert!(state.set("k", &json!("A slow")).is_err(), "A times out");
    state.delete("k").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(state.get("k").unwrap(), None);
    assert!(
        backend.objects().is_empty(),
        "the deleted key's object came back: {:?}",
        backend.objects()
    );
}

/// Races `set` against `delete`, `clear` and gc on one key from threads and
/// then checks that no row points at a missing object.
#[test]
fn delete_clear_and_gc_racing_set_leave_no_dangling_row() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let host = host(backend.clone(), sqlite(dir.path()));
    let rounds = 300;
    for round in 0..rounds {
        let state = host.task_state(scope());
        std::thread::scope(|s| {
            s.spawn(|| state.set("k", &json!(round)).unwrap());
            s.spawn(|| match round % 3 {
                0 => state.delete("k").unwrap(),
                1 => state.clear(false).unwrap(),
                _ => {
                    host.gc(false, |_, _| {}).unwrap();
                }
            });
        });
        if let Some(row) = host.rows().unwrap().into_iter().next() {
            assert!(
                state.get("k").is_ok(),
                "round {round}: the row {} points at nothing",
                row.value
            );
        }
    }
}

#[test]
fn replacing_an_external_value_with_an_inline_one_removes_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn StateBackend> = Arc::new(
        statehost::plugin::LoadedBackend::load(
            statehost_tests::library("statehost_memory"),
            &json!({"inline_threshold_bytes": 10}),
            None,
        )
        .unwrap(),
    );
    let host = host(inner.clone(), sqlite(dir.path()));
    let state = host.task_state(scope());
    state.set("k", &json!("a secret, stored outside")).unwrap();
    state.set("k", &json!(1)).unwrap();
    state.delete("k").unwrap();
    assert!(
        inner.list(None).unwrap().is_empty(),
        "the old object stays readable: {:?}",
        inner.list(None).unwrap()
    );
}

#[test]
fn asset_state_from_eight_threads_never_reports_a_locked_database() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(Arc::new(Laggy::default()), sqlite(dir.path()));
    let failures = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (host, failures) = (&host, &failures);
            s.spawn(move || {
                for i in 0..50 {
                    let asset =
                        AssetScope::by_name(format!("asset-{}", (t * 50 + i) % 40)).unwrap();
                    let result = host
                        .asset_state(&asset)
                        .and_then(|state| state.set("k", &json!(i)));
                    if let Err(e) = result {
                        eprintln!("{e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

fn threads_of_this_process() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_hung_plugin_costs_errors_not_a_thread_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let host = host(with_deadline(backend, 5), sqlite(dir.path()));
    let state = host.task_state(scope());
    let before = threads_of_this_process();
    for i in 0..200 {
        assert!(state.set(&format!("k{i}"), &json!("hang")).is_err());
    }
    let grown = threads_of_this_process().saturating_sub(before);
    assert!(
        grown <= 64,
        "{grown} threads were left behind by 200 hung calls"
    );
}

/// A store whose row writes fail, as when another process holds the
/// database's lock past the busy timeout.
struct LockedOut {
    inner: Box<dyn MetadataStore>,
}

impl MetadataStore for LockedOut {
    fn get_task(&self, scope: &TaskScope, key: &str, now: i64) -> Result<Option<String>> {
        self.inner.get_task(scope, key, now)
    }
    fn put_task(&self, _: &TaskScope, _: &str, _: &str, _: i64, _: Option<i64>) -> Result<()> {
        Err(statehost::Error::Store {
            message: "database is locked".into(),
        })
    }
    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.inner.delete_task(scope, key)
    }
    fn clear_task(&self, scope: &TaskScope, all: bool) -> Result<usize> {
        self.inner.clear_task(scope, all)
    }
    fn resolve_asset(&self, asset: &AssetScope) -> Result<AssetScope> {
        self.inner.resolve_asset(asset)
    }
    fn get_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        self.inner.get_asset(asset, key)
    }
    fn put_asset(&self, asset: &AssetScope, key: &str, value: &str, now: i64) -> Result<()> {
        self.inner.put_asset(asset, key, value, now)
    }
    fn delete_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        self.inner.delete_asset(asset, key)
    }
    fn clear_asset(&self, asset: &AssetScope) -> Result<usize> {
        self.inner.clear_asset(asset)
    }
    fn rows(&self) -> Result<Vec<Row>> {
        self.inner.rows()
    }
    fn expired_task_rows(&self, now: i64) -> Result<Vec<Row>> {
        self.inner.expired_task_rows(now)
    }
    fn delete_expired_task_row(&self, row: &Row, now: i64) -> Result<bool> {
        self.inner.delete_expired_task_row(row, now)
    }
}

#[test]
fn a_set_whose_row_write_fails_leaves_the_old_value_readable() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let good = host(backend.clone(), sqlite(dir.path()));
    good.task_state(scope()).set("k", &json!("old")).unwrap();
    let locked = host(
        backend,
        Box::new(LockedOut {
            inner: sqlite(dir.path()),
        }),
    );
    assert!(locked.task_state(scope()).set("k", &json!("new")).is_err());
    let value: Option<Value> = good.task_state(scope()).get("k").unwrap();
    assert_eq!(value, Some(json!("old")));
}
