//! Plugins built against plugin-api 1.0 (one object per key, overwritten in
//! place): they keep loading, and the host serves them with in-process
//! fencing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use statehost::StateHost;
use statehost::store::{SqliteLocation, SqliteStore};
use statehost_tests::{Sandbox, deadline_ms, exercise_accessors, loaded, short_grace, text};

use crate::defects::LockedOut;

fn host(
    dir: &std::path::Path,
    options: serde_json::Value,
    limits: statehost::backend::Limits,
) -> StateHost {
    let backend = loaded("fixture_v1_memory", options, None);
    assert!(backend.is_legacy());
    StateHost::builder(Arc::new(
        SqliteStore::open(SqliteLocation::File(dir.join("meta.db"))).unwrap(),
    ))
    .backend("legacy_memory", backend)
    .settings(short_grace())
    .limits(limits)
    .build()
}

fn scope() -> statehost_plugin_api::TaskScope {
    statehost_plugin_api::TaskScope::new("dag", "run", "task", -1).unwrap()
}

#[test]
fn a_1_0_plugin_loads_and_check_says_what_it_lacks() {
    let sandbox = Sandbox::with_plugins(&[("fixture_v1_memory", "legacy_memory")]);
    sandbox.config("[workers]\nstate_backend = \"legacy_memory\"\n");
    let output = sandbox.run(&["check"], &[]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("backend `legacy_memory`") && stdout.contains("plugin-api 1.0.0"),
        "{stdout}"
    );
    let warning: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("in-process fencing"))
        .collect();
    assert_eq!(warning.len(), 1, "{stdout}");
    assert!(
        warning[0].contains("within this process only") && warning[0].contains("rebuild"),
        "{}",
        warning[0]
    );
}

#[test]
fn a_1_0_plugin_serves_task_and_asset_state() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), json!({}), Default::default());
    exercise_accessors(&host, scope(), || {
        // One object per key, overwritten in place.
        let row = host.rows().unwrap().rows.remove(0).value;
        assert_eq!(
            row,
            r#"{"__airflow_state_ref__": "task/dag/run/task/-1/k"}"#
        );
    });
}

#[test]
fn with_a_1_0_plugin_a_failed_row_write_puts_the_old_value_back() {
    let dir = tempfile::tempdir().unwrap();
    let backend = loaded("fixture_v1_memory", json!({}), None);
    let store: Arc<dyn statehost::store::MetadataStore> =
        Arc::new(SqliteStore::open(SqliteLocation::File(dir.path().join("meta.db"))).unwrap());
    let good = StateHost::builder(store.clone())
        .backend("legacy_memory", backend.clone())
        .build();
    good.task_state(scope()).set("k", &json!("old")).unwrap();
    let locked = StateHost::builder(Arc::new(LockedOut { inner: store }))
        .backend("legacy_memory", backend)
        .build();
    assert!(locked.task_state(scope()).set("k", &json!("new")).is_err());
    assert_eq!(
        good.task_state(scope()).get("k").unwrap(),
        Some(json!("old"))
    );
}

#[test]
fn with_a_1_0_plugin_a_key_whose_write_timed_out_refuses_writes_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path(), json!({"slow_ms": 400}), deadline_ms(50));
    let state = host.task_state(scope());
    state.set("k", &json!("before")).unwrap();
    let err = state
        .set("k", &json!("a slow write"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("within 50 ms"), "{err}");
    let err = state.set("k", &json!("next")).unwrap_err().to_string();
    assert!(err.contains("still running"), "{err}");
    assert!(
        state.get("k").is_err(),
        "the object may hold the failed write"
    );
    // Another key is not held up.
    state.set("other", &json!(1)).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while host.calls_in_flight() > 0 {
        assert!(std::time::Instant::now() < until);
        std::thread::sleep(Duration::from_millis(10));
    }
    // The late write was undone: the failed value never shows.
    assert_eq!(state.get("k").unwrap(), Some(json!("before")));
    state.set("k", &json!("next")).unwrap();
    assert_eq!(state.get("k").unwrap(), Some(json!("next")));
}
