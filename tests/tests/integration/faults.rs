//! Faults injected into a plugin: each one a clear error, the next call
//! served, the store consistent.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use statehost::plugin::LoadedBackend;
use statehost::store::{SqliteLocation, SqliteStore};
use statehost::{Error, StateHost};
use statehost_plugin_api::{AssetScope, ErrorKind, StateBackend, TaskScope};
use statehost_tests::{deadline_ms, loaded, short_grace, wait_out_grace};

fn faulty(ops: Value) -> Arc<LoadedBackend> {
    loaded("fixture_faulty", json!({ "ops": ops }), None)
}

fn host(backend: Arc<LoadedBackend>) -> StateHost {
    host_limited(backend, statehost::backend::Limits::default())
}

fn host_limited(backend: Arc<LoadedBackend>, limits: statehost::backend::Limits) -> StateHost {
    StateHost::builder(Arc::new(SqliteStore::open(SqliteLocation::Memory).unwrap()))
        .backend("faulty", backend)
        .settings(short_grace())
        .limits(limits)
        .build()
}

fn scope() -> TaskScope {
    TaskScope::new("dag", "run", "task", -1).unwrap()
}

fn backend_error(err: Error) -> (ErrorKind, String) {
    match err {
        Error::Backend { error, .. } => (error.kind(), error.to_string()),
        other => panic!("expected a backend error, got {other}"),
    }
}

#[test]
fn a_failed_write_leaves_no_row_and_the_next_call_works() {
    for (fault, kind, says) in [
        ("panic", ErrorKind::Panicked, "injected panic"),
        ("error", ErrorKind::Unavailable, "injected failure"),
        ("empty", ErrorKind::InvalidInput, "empty reference"),
        ("non_utf8", ErrorKind::InvalidInput, "not UTF-8"),
    ] {
        let host = host(faulty(json!({ "serialize": fault })));
        let state = host.task_state(scope());
        let (got, message) = backend_error(state.set("k", &json!("v")).unwrap_err());
        assert_eq!(got, kind, "{fault}: {message}");
        assert!(message.contains(says), "{fault}: {message}");
        assert!(host.rows().unwrap().rows.is_empty(), "{fault} left a row");
        // The next calls (other operations) are served.
        let asset = host
            .asset_state(&AssetScope::by_name("a").unwrap())
            .unwrap();
        assert_eq!(asset.get("k").unwrap(), None, "{fault}");
        host.gc(false, |_, _| {}).unwrap();
    }
}

#[test]
fn a_failed_read_is_an_error_and_the_row_stays() {
    for (fault, says) in [
        ("malformed", "not JSON"),
        ("non_utf8", "UTF-8"),
        ("panic", "injected panic"),
        ("error", "injected failure"),
    ] {
        let host = host(faulty(json!({ "deserialize": fault })));
        let state = host.task_state(scope());
        state.set("k", &json!({"v": 1})).unwrap();
        let (_, message) = backend_error(state.get("k").unwrap_err());
        assert!(message.contains(says), "{fault}: {message}");
        assert_eq!(host.rows().unwrap().rows.len(), 1, "{fault}");
        // Deleting still works: row first, then the object.
        state.delete("k").unwrap();
        assert!(host.rows().unwrap().rows.is_empty());
    }
}

#[test]
fn failed_delete_and_clear_remove_rows_first_and_gc_collects_the_objects() {
    let backend = faulty(json!({ "delete_object": "error" }));
    let host = host(backend.clone());
    let state = host.task_state(scope());
    state.set("a", &json!(1)).unwrap();
    state.set("b", &json!(2)).unwrap();
    let err = state.delete("a").unwrap_err();
    assert!(
        matches!(err, Error::Cleanup { .. }) && err.to_string().contains("injected failure"),
        "{err}"
    );
    assert_eq!(state.get("a").unwrap(), None, "the row goes first");
    let err = state.clear(false).unwrap_err();
    assert!(
        matches!(err, Error::Cleanup { .. }) && err.to_string().contains("rows are removed"),
        "{err}"
    );
    assert!(
        host.rows().unwrap().rows.is_empty(),
        "clear removed the rows"
    );
    // Both objects are orphans now; this backend cannot delete, so gc
    // reports the failure instead of claiming success.
    wait_out_grace(host.settings());
    assert!(host.gc(false, |_, _| {}).is_err());
    assert_eq!(backend.list(None).unwrap().len(), 2);
}

#[test]
fn a_malformed_listing_stops_gc_before_it_deletes_anything() {
    let backend = faulty(json!({ "list": "malformed" }));
    let host = host(backend.clone());
    host.task_state(scope()).set("kept", &json!(1)).unwrap();
    let message = host.gc(false, |_, _| {}).unwrap_err().to_string();
    assert!(message.contains("empty reference"), "{message}");
    assert_eq!(
        host.task_state(scope()).get("kept").unwrap(),
        Some(json!(1))
    );
}

#[test]
fn a_write_that_ends_after_its_deadline_is_deleted_when_it_ends() {
    let slow = faulty(json!({ "serialize": "slow:400" }));
    let host = host_limited(slow.clone(), deadline_ms(50));
    let state = host.task_state(scope());
    let (kind, message) = backend_error(state.set("k", &json!("v")).unwrap_err());
    assert_eq!(kind, ErrorKind::Unavailable);
    assert!(message.contains("within 50 ms"), "{message}");
    assert!(host.rows().unwrap().rows.is_empty());
    // The late write lands in the background, and its object goes as soon
    // as it does: a set reported as failed leaves nothing in storage.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while host.calls_in_flight() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the late write never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(slow.list(None).unwrap().is_empty(), "{:?}", slow.list(None));
}

#[test]
fn a_constructor_past_the_deadline_is_an_error() {
    let library = LoadedBackend::load(
        statehost_tests::library("fixture_faulty"),
        &Value::Null,
        None,
    )
    .unwrap();
    drop(library);
    let library = statehost::plugin::load_library(
        statehost_tests::library("fixture_faulty"),
        &Default::default(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = LoadedBackend::construct(
        library,
        &statehost::config::BackendOptions::new(json!({"on_new": "slow:2000"})),
        None,
        Some(Duration::from_millis(100)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("did not start within 100 ms") && err.contains("backend `faulty`"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
}
