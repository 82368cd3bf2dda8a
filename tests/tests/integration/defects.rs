//! The consistency defects reported against deterministic references, one
//! test each; every one failed on the code they were reported against.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use statehost::backend::{InProcess, Limits};
use statehost::store::{MetadataStore, Put, Row, Rows, SqliteLocation, SqliteStore};
use statehost::{Error, Result, StateHost};
use statehost_memory::MemoryBackend;
use statehost_plugin_api::{
    AssetScope, BackendError, Capabilities, ScopeRef, Serialized, StateBackend, StateKey,
    StoredObject, TaskScope, WriteId,
};
use statehost_tests::{deadline_ms, short_grace};

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
    fn serialize(
        &self,
        at: StateKey<'_>,
        write_id: WriteId,
        value: &str,
    ) -> std::result::Result<Serialized, BackendError> {
        Laggy::lag(value);
        self.inner.serialize(at, write_id, value)
    }
    fn deserialize(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> std::result::Result<String, BackendError> {
        self.inner.deserialize(reference, owner)
    }
    fn delete_object(
        &self,
        reference: &str,
        owner: Option<StateKey<'_>>,
    ) -> std::result::Result<bool, BackendError> {
        self.inner.delete_object(reference, owner)
    }
    fn delete(&self, at: StateKey<'_>) -> std::result::Result<(), BackendError> {
        self.inner.delete(at)
    }
    fn clear(&self, scope: ScopeRef<'_>, all: bool) -> std::result::Result<(), BackendError> {
        self.inner.clear(scope, all)
    }
    fn list(
        &self,
        scope: Option<ScopeRef<'_>>,
    ) -> std::result::Result<Vec<StoredObject>, BackendError> {
        self.inner.list(scope)
    }
}

fn scope() -> TaskScope {
    TaskScope::new("dag", "run", "task", -1).unwrap()
}

fn host(backend: Arc<Laggy>, store: Arc<dyn MetadataStore>, limits: Limits) -> StateHost {
    StateHost::builder(store)
        .backend(
            "memory",
            Arc::new(InProcess::new(backend, Capabilities::LIST)),
        )
        .settings(short_grace())
        .limits(limits)
        .build()
}

/// As [`host`], with the default orphan grace: eight writers queueing on
/// SQLite's lock (each commit flushed) can take longer than the short
/// grace's fence allows.
fn patient_host(backend: Arc<Laggy>, store: Arc<dyn MetadataStore>) -> StateHost {
    StateHost::builder(store)
        .backend(
            "memory",
            Arc::new(InProcess::new(backend, Capabilities::LIST)),
        )
        .build()
}

fn sqlite(dir: &std::path::Path) -> Arc<dyn MetadataStore> {
    Arc::new(SqliteStore::open(SqliteLocation::File(dir.join("meta.db"))).unwrap())
}

/// Waits until every call the host abandoned has ended.
fn settle(host: &StateHost) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while host.calls_in_flight() > 0 {
        assert!(std::time::Instant::now() < until, "calls never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_late_write_never_overwrites_a_later_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let host = host(backend.clone(), sqlite(dir.path()), deadline_ms(50));
    let state = host.task_state(scope());
    assert!(state.set("k", &json!("A slow")).is_err(), "A times out");
    state.set("k", &json!("B")).unwrap();
    settle(&host);
    assert_eq!(state.get("k").unwrap(), Some(json!("B")), "B was lost");
}

#[test]
fn a_late_write_does_not_bring_a_deleted_key_back_into_storage() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let host = host(backend.clone(), sqlite(dir.path()), deadline_ms(50));
    let state = host.task_state(scope());
    state.set("k", &json!("before")).unwrap();
    assert!(state.set("k", &json!("A slow")).is_err(), "A times out");
    state.delete("k").unwrap();
    settle(&host);
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
    let host = host(backend.clone(), sqlite(dir.path()), Limits::default());
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
        if let Some(row) = host.rows().unwrap().rows.into_iter().next() {
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
    let inner = statehost_tests::loaded(
        "statehost_memory",
        json!({"inline_threshold_bytes": 10}),
        None,
    );
    let host = statehost_tests::host_on(sqlite(dir.path()), Some(&inner), short_grace());
    let state = host.task_state(scope());
    state.set("k", &json!("a secret, stored outside")).unwrap();
    state.set("k", &json!(1)).unwrap();
    state.delete("k").unwrap();
    host.flush();
    assert!(
        inner.list(None).unwrap().is_empty(),
        "the old object stays readable: {:?}",
        inner.list(None).unwrap()
    );
}

#[test]
fn asset_state_from_eight_threads_never_reports_a_locked_database() {
    let dir = tempfile::tempdir().unwrap();
    let host = patient_host(Arc::new(Laggy::default()), sqlite(dir.path()));
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
    // Other tests start threads too: count in a process of its own.
    if !statehost_tests::in_own_process("defects::a_hung_plugin_costs_errors_not_a_thread_per_call")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let host = host(backend, sqlite(dir.path()), deadline_ms(5));
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
pub(crate) struct LockedOut {
    pub(crate) inner: Arc<dyn MetadataStore>,
}

fn locked() -> Error {
    Error::Store {
        message: "database is locked".into(),
    }
}

impl MetadataStore for LockedOut {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn now(&self) -> Result<i64> {
        self.inner.now()
    }
    fn gc_epoch(&self) -> Result<i64> {
        self.inner.gc_epoch()
    }
    fn get_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.inner.get_task(scope, key)
    }
    fn put_task(&self, _: &TaskScope, _: &str, _: &Put<'_>) -> Result<Option<String>> {
        Err(locked())
    }
    fn delete_task(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.inner.delete_task(scope, key)
    }
    fn clear_task(&self, scope: &TaskScope, all: bool) -> Result<Vec<Row>> {
        self.inner.clear_task(scope, all)
    }
    fn find_asset(&self, asset: &AssetScope) -> Result<Option<AssetScope>> {
        self.inner.find_asset(asset)
    }
    fn get_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        self.inner.get_asset(asset, key)
    }
    fn put_asset(
        &self,
        _: &AssetScope,
        _: &AssetScope,
        _: &str,
        _: &Put<'_>,
    ) -> Result<Option<String>> {
        Err(locked())
    }
    fn delete_asset(&self, asset: &AssetScope, key: &str) -> Result<Option<String>> {
        self.inner.delete_asset(asset, key)
    }
    fn clear_asset(&self, asset: &AssetScope) -> Result<Vec<Row>> {
        self.inner.clear_asset(asset)
    }
    fn rows(&self) -> Result<Rows> {
        self.inner.rows()
    }
    fn for_each_stored(&self, visit: &mut dyn FnMut(&str)) -> Result<usize> {
        self.inner.for_each_stored(visit)
    }
    fn expired_task_rows(&self, limit: usize) -> Result<Rows> {
        self.inner.expired_task_rows(limit)
    }
    fn delete_expired_task_rows(&self, limit: usize) -> Result<Rows> {
        self.inner.delete_expired_task_rows(limit)
    }
    fn delete_task_if_expired(&self, scope: &TaskScope, key: &str) -> Result<Option<String>> {
        self.inner.delete_task_if_expired(scope, key)
    }
}

#[test]
fn a_set_whose_row_write_fails_leaves_the_old_value_readable() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(Laggy::default());
    let good = host(backend.clone(), sqlite(dir.path()), Limits::default());
    good.task_state(scope()).set("k", &json!("old")).unwrap();
    let locked = host(
        backend.clone(),
        Arc::new(LockedOut {
            inner: sqlite(dir.path()),
        }),
        Limits::default(),
    );
    assert!(locked.task_state(scope()).set("k", &json!("new")).is_err());
    let value: Option<Value> = good.task_state(scope()).get("k").unwrap();
    assert_eq!(value, Some(json!("old")));
    // And the failed write left no object behind.
    assert_eq!(backend.objects().len(), 1);
}
