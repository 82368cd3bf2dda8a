//! What hosts sharing one backend in one process must share, and the order
//! gc keeps between making commits durable and deleting objects.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use statehost_memory::MemoryBackend;
use statehost_plugin_api::{
    AssetScope, BackendError, Capabilities, ScopeRef, Serialized, StateBackend, StateKey,
    StoredObject, TaskScope, WriteId, layout,
};

use crate::StateHost;
use crate::backend::{Backend, InProcess, Limits, Listed, Text, unsupported};
use crate::config::StateStoreSettings;
use crate::error::Result;
use crate::store::{
    MemoryStore, MetadataStore, Put, Row, Rows, SqliteLocation, SqliteStore, Synchronous,
};

type Log = Arc<Mutex<Vec<String>>>;
type Answer<T> = std::result::Result<T, BackendError>;

fn scope() -> TaskScope {
    TaskScope::new("dag", "run", "task", -1).unwrap()
}

fn limits(deadline_ms: u64, max_in_flight: usize) -> Limits {
    Limits {
        deadline: Some(Duration::from_millis(deadline_ms)),
        max_in_flight,
    }
}

/// The memory backend, hanging half a second on values containing "hang",
/// counting the calls running at once.
#[derive(Debug, Default)]
struct Counting {
    inner: MemoryBackend,
    now: AtomicUsize,
    most: AtomicUsize,
}

impl StateBackend for Counting {
    fn serialize(&self, at: StateKey<'_>, id: WriteId, value: &str) -> Answer<Serialized> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        if value.contains("hang") {
            std::thread::sleep(Duration::from_millis(500));
        }
        let answer = self.inner.serialize(at, id, value);
        self.now.fetch_sub(1, Ordering::SeqCst);
        answer
    }
    fn deserialize(&self, r: &str, o: Option<StateKey<'_>>) -> Answer<String> {
        self.inner.deserialize(r, o)
    }
    fn delete_object(&self, r: &str, o: Option<StateKey<'_>>) -> Answer<bool> {
        self.inner.delete_object(r, o)
    }
    fn delete(&self, at: StateKey<'_>) -> Answer<()> {
        self.inner.delete(at)
    }
    fn clear(&self, s: ScopeRef<'_>, all: bool) -> Answer<()> {
        self.inner.clear(s, all)
    }
}

#[test]
fn hosts_on_one_backend_share_its_in_flight_cap() {
    let counting = Arc::new(Counting::default());
    let backend: Arc<dyn Backend> = Arc::new(InProcess::new(counting.clone(), Capabilities::NONE));
    let mut errors = Vec::new();
    for i in 0..3 {
        let host = StateHost::builder(Arc::new(MemoryStore::new()))
            .backend("memory", backend.clone())
            .limits(limits(50, 1))
            .build();
        errors.push(
            host.task_state(scope())
                .set(&format!("k{i}"), &json!("hang"))
                .unwrap_err()
                .to_string(),
        );
    }
    // The first call hangs past its deadline; the other hosts' calls meet
    // the cap it still holds.
    assert!(errors[0].contains("within 50 ms"), "{}", errors[0]);
    assert!(
        errors[1..]
            .iter()
            .all(|e| e.contains("state_backend_max_in_flight = 1")),
        "{errors:?}"
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(counting.most.load(Ordering::SeqCst), 1);
}

/// A plugin-api 1.x backend: one object per key, overwritten in place.
#[derive(Debug, Default)]
struct InPlace {
    objects: Mutex<HashMap<String, String>>,
}

impl Backend for InPlace {
    fn unique_references(&self) -> bool {
        false
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
    fn serialize(&self, at: StateKey<'_>, _: WriteId, value: &str) -> Answer<Serialized> {
        if value.contains("hang") {
            std::thread::sleep(Duration::from_millis(500));
        }
        let reference = layout::key_prefix(at);
        self.objects
            .lock()
            .unwrap()
            .insert(reference.clone(), value.to_string());
        Ok(Serialized::Reference(reference))
    }
    fn deserialize(&self, reference: &str, _: Option<StateKey<'_>>) -> Answer<Text> {
        self.objects
            .lock()
            .unwrap()
            .get(reference)
            .cloned()
            .map(|value| {
                // A broken plugin's answer: the value with a byte that is
                // not UTF-8 after it.
                if value.contains("garbled") {
                    let mut bytes = value.into_bytes();
                    bytes.push(0xff);
                    Text::Plugin(bytes.into())
                } else {
                    Text::Host(value)
                }
            })
            .ok_or_else(|| BackendError::not_found(reference.to_string()))
    }
    fn delete_object(&self, _: &str, _: Option<StateKey<'_>>) -> Answer<bool> {
        Err(unsupported("1.x"))
    }
    fn delete(&self, at: StateKey<'_>) -> Answer<()> {
        self.objects.lock().unwrap().remove(&layout::key_prefix(at));
        Ok(())
    }
    fn clear(&self, _: ScopeRef<'_>, _: bool) -> Answer<()> {
        Ok(())
    }
    fn list(&self, _: Option<ScopeRef<'_>>) -> Answer<Vec<Listed>> {
        Err(unsupported("1.x"))
    }
    fn sweep(&self, _: SystemTime) -> Answer<usize> {
        Ok(0)
    }
}

#[test]
fn hosts_on_one_legacy_backend_share_its_fencing() {
    let backend: Arc<dyn Backend> = Arc::new(InPlace::default());
    let store: Arc<dyn MetadataStore> = Arc::new(MemoryStore::new());
    let host = || {
        StateHost::builder(store.clone())
            .backend("v1", backend.clone())
            .limits(limits(50, 8))
            .build()
    };
    let (a, b) = (host(), host());
    a.task_state(scope()).set("k", &json!("v1")).unwrap();
    assert!(a.task_state(scope()).set("k", &json!("v2 hang")).is_err());
    // The abandoned write still runs: the other host refuses the key too,
    // instead of writing a value the late write would overwrite.
    let err = b
        .task_state(scope())
        .set("k", &json!("v3"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("still running"), "{err}");
    std::thread::sleep(Duration::from_millis(800));
    b.task_state(scope()).set("k", &json!("v3")).unwrap();
    assert_eq!(a.task_state(scope()).get("k").unwrap(), Some(json!("v3")));
}

#[test]
fn a_legacy_value_that_is_not_utf8_is_not_overwritten() {
    // A 1.x write overwrites the key's only object, keeping the old value
    // to put back if the row write fails; one that is not UTF-8 cannot be
    // kept as it is, so the write is refused and nothing changes.
    let in_place = Arc::new(InPlace::default());
    let host = StateHost::builder(Arc::new(MemoryStore::new()))
        .backend("v1", in_place.clone())
        .limits(limits(1000, 8))
        .build();
    let state = host.task_state(scope());
    state.set("k", &json!("garbled")).unwrap();
    let err = state.set("k", &json!("new")).unwrap_err().to_string();
    assert!(
        err.contains("not UTF-8") && err.contains("delete the key"),
        "{err}"
    );
    let objects = in_place.objects.lock().unwrap().clone();
    assert_eq!(
        objects.into_values().collect::<Vec<_>>(),
        vec!["\"garbled\"".to_string()]
    );
    state.delete("k").unwrap();
    state.set("k", &json!("new")).unwrap();
    assert_eq!(state.get("k").unwrap(), Some(json!("new")));
}

/// A SQLite store that records when commits were made durable and when
/// references were read.
struct Logged {
    inner: SqliteStore,
    log: Log,
}

impl MetadataStore for Logged {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn now(&self) -> Result<i64> {
        self.inner.now()
    }
    fn gc_epoch(&self) -> Result<i64> {
        self.inner.gc_epoch()
    }
    fn get_task(&self, s: &TaskScope, k: &str) -> Result<Option<String>> {
        self.inner.get_task(s, k)
    }
    fn put_task(&self, s: &TaskScope, k: &str, p: &Put<'_>) -> Result<Option<String>> {
        self.inner.put_task(s, k, p)
    }
    fn delete_task(&self, s: &TaskScope, k: &str) -> Result<Option<String>> {
        self.inner.delete_task(s, k)
    }
    fn clear_task(&self, s: &TaskScope, all: bool) -> Result<Vec<Row>> {
        self.inner.clear_task(s, all)
    }
    fn find_asset(&self, a: &AssetScope) -> Result<Option<AssetScope>> {
        self.inner.find_asset(a)
    }
    fn get_asset(&self, c: &AssetScope, k: &str) -> Result<Option<String>> {
        self.inner.get_asset(c, k)
    }
    fn put_asset(
        &self,
        n: &AssetScope,
        c: &AssetScope,
        k: &str,
        p: &Put<'_>,
    ) -> Result<Option<String>> {
        self.inner.put_asset(n, c, k, p)
    }
    fn delete_asset(&self, c: &AssetScope, k: &str) -> Result<Option<String>> {
        self.inner.delete_asset(c, k)
    }
    fn clear_asset(&self, c: &AssetScope) -> Result<Vec<Row>> {
        self.inner.clear_asset(c)
    }
    fn rows(&self) -> Result<Rows> {
        self.inner.rows()
    }
    fn for_each_stored(&self, visit: &mut dyn FnMut(&str)) -> Result<usize> {
        self.log.lock().unwrap().push("references read".into());
        self.inner.for_each_stored(visit)
    }
    fn expired_task_rows(&self, limit: usize) -> Result<Rows> {
        self.inner.expired_task_rows(limit)
    }
    fn delete_expired_task_rows(&self, limit: usize) -> Result<Rows> {
        self.inner.delete_expired_task_rows(limit)
    }
    fn delete_task_if_expired(&self, s: &TaskScope, k: &str) -> Result<Option<String>> {
        self.inner.delete_task_if_expired(s, k)
    }
    fn sync(&self) -> Result<()> {
        self.log.lock().unwrap().push("sync".into());
        self.inner.sync()
    }
}

/// The memory backend, recording deletes in the same log.
#[derive(Debug)]
struct LoggedBackend {
    inner: MemoryBackend,
    log: Log,
}

impl StateBackend for LoggedBackend {
    fn serialize(&self, at: StateKey<'_>, id: WriteId, value: &str) -> Answer<Serialized> {
        self.inner.serialize(at, id, value)
    }
    fn deserialize(&self, r: &str, o: Option<StateKey<'_>>) -> Answer<String> {
        self.inner.deserialize(r, o)
    }
    fn delete_object(&self, r: &str, o: Option<StateKey<'_>>) -> Answer<bool> {
        self.log.lock().unwrap().push(format!("delete {r}"));
        self.inner.delete_object(r, o)
    }
    fn delete(&self, at: StateKey<'_>) -> Answer<()> {
        self.inner.delete(at)
    }
    fn clear(&self, s: ScopeRef<'_>, all: bool) -> Answer<()> {
        self.inner.clear(s, all)
    }
    fn list(&self, s: Option<ScopeRef<'_>>) -> Answer<Vec<StoredObject>> {
        self.inner.list(s)
    }
}

#[test]
fn gc_makes_commits_durable_before_it_deletes_an_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let log: Log = Arc::default();
    let store = Logged {
        inner: SqliteStore::open_with(
            SqliteLocation::File(dir.path().join("m.db")),
            Synchronous::Normal,
        )
        .unwrap(),
        log: log.clone(),
    };
    let backend = LoggedBackend {
        inner: MemoryBackend::new(),
        log: log.clone(),
    };
    let host = StateHost::builder(Arc::new(store))
        .in_process("memory", backend, Capabilities::LIST)
        .settings(StateStoreSettings {
            orphan_grace: Duration::from_secs(1),
            ..Default::default()
        })
        .limits(limits(10_000, 8))
        .build();
    let state = host.task_state(scope());
    state.set("k", &json!("old value")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    // Replaces the old object (its delete waits in the reaper's queue); the
    // new row is committed but, with synchronous = normal, not yet durable.
    state.set("k", &json!("new value")).unwrap();
    log.lock().unwrap().clear();
    host.gc(false, |_, _| {}).unwrap();
    let log = log.lock().unwrap().clone();
    let read = log.iter().position(|e| e == "references read").unwrap();
    let deleted = log
        .iter()
        .position(|e| e.starts_with("delete "))
        .expect("gc deleted the replaced object");
    assert!(
        log[read..deleted].iter().any(|e| e == "sync"),
        "no sync between reading the rows and deleting: {log:?}"
    );
}

/// A child that uses a host its parent opened, and drops it, still deletes
/// what its own writes replaced: the parent's insides are left as they are
/// there, but the child's own reaper is flushed.
#[test]
fn a_child_that_used_its_parents_host_flushes_its_own_reaper_on_drop() {
    let memory = Arc::new(MemoryBackend::new());
    let backend: Arc<dyn Backend> = Arc::new(InProcess::new(memory.clone(), Capabilities::LIST));
    let host = StateHost::builder(Arc::new(MemoryStore::new()))
        .backend("memory", backend)
        .limits(limits(60_000, 8))
        .build();
    // SAFETY: the child writes through the host, drops it, reads the
    // backend's objects and leaves with _exit; the parent waits for it.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        unsafe { libc::alarm(30) };
        let state = host.task_state(scope());
        let wrote = state
            .set("k", &json!(1))
            .and_then(|()| state.set("k", &json!(2)));
        drop(state);
        drop(host);
        let code = match (wrote, memory.list(None)) {
            (Ok(()), Ok(objects)) if objects.len() == 1 => 0,
            (Ok(()), Ok(_)) => 2,
            _ => 3,
        };
        unsafe { libc::_exit(code) };
    }
    assert_eq!(
        crate::process::exit_code(child),
        0,
        "2: the replaced object was not deleted when the child dropped the host"
    );
}
