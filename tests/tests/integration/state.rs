//! State through the loaded backends: the envelope, the accessors, the
//! store, retention and gc.

use std::time::Duration;

use serde_json::{Value, json};
use statehost::config::StateStoreSettings;
use statehost::{Error, Retention, StateHost};
use statehost_plugin_api::{AssetScope, ScopeRef, StateBackend, TaskScope};
use statehost_tests::{host_on, loaded, short_grace, sqlite_in, wait_out_grace};

fn host_with(
    backend: Option<(&str, serde_json::Value)>,
    dir: &std::path::Path,
    settings: StateStoreSettings,
) -> StateHost {
    let backend = backend.map(|(target, options)| loaded(target, options, Some(dir)));
    host_on(sqlite_in(dir), backend.as_ref(), settings)
}

fn scope() -> TaskScope {
    TaskScope::new("dag", "run", "task", -1).unwrap()
}

fn stored(host: &StateHost, key: &str) -> Option<String> {
    host.rows()
        .unwrap()
        .rows
        .into_iter()
        .find(|r| r.key == key)
        .map(|r| r.value)
}

/// The reference in a row's envelope.
fn reference(host: &StateHost, key: &str) -> String {
    let row = stored(host, key).unwrap_or_else(|| panic!("no row for {key}"));
    match statehost::envelope::unwrap(&row).unwrap() {
        statehost::envelope::Stored::Reference(r) => r.into_owned(),
        other => panic!("{key} is stored inline: {other:?}"),
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn values_go_to_the_fs_plugin_and_rows_hold_the_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(
        Some(("statehost_fs", json!({"root": "objects"}))),
        dir.path(),
        StateStoreSettings::default(),
    );
    let state = host.task_state(scope());
    let big = Value::String("x".repeat(1 << 20));
    for (key, value) in [
        ("s", json!("text")),
        ("o", json!({"a": [1, 2]})),
        ("n", json!(7)),
        ("big", big),
    ] {
        state.set(key, &value).unwrap();
        assert_eq!(state.get(key).unwrap(), Some(value));
    }
    // Byte for byte what Airflow writes: json.dumps of the envelope.
    let r = reference(&host, "o");
    assert_eq!(
        stored(&host, "o").unwrap(),
        format!(r#"{{"__airflow_state_ref__": "{r}"}}"#)
    );
    assert!(r.starts_with("v2/task/dag/run/task/-1/o/"), "{r}");
    assert!(dir.path().join("objects").join(&r).is_file());

    // A new write is a new object; the one it replaced goes once readers
    // had their chance (flush: now).
    state.set("o", &json!("second")).unwrap();
    let second = reference(&host, "o");
    assert_ne!(second, r);
    host.flush();
    assert!(!dir.path().join("objects").join(&r).exists());
    assert!(dir.path().join("objects").join(&second).is_file());

    state.delete("o").unwrap();
    assert_eq!(state.get("o").unwrap(), None);
    assert!(!dir.path().join("objects").join(&second).exists());
    state.clear(false).unwrap();
    assert_eq!(state.get("s").unwrap(), None);
    assert!(host.rows().unwrap().rows.is_empty());
    host.flush();
    assert_eq!(
        files_under(&dir.path().join("objects")),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn bad_input_is_rejected_before_the_backend_is_called() {
    let dir = tempfile::tempdir().unwrap();
    // Every write panics in this backend: a rejection that reached it
    // would come back as a panic error, not as bad input.
    let host = host_with(
        Some(("fixture_faulty", json!({"ops": {"serialize": "panic"}}))),
        dir.path(),
        StateStoreSettings::default(),
    );
    let state = host.task_state(scope());
    let long = "k".repeat(513);
    for (key, value) in [
        ("", json!(1)),
        (long.as_str(), json!(1)),
        ("a\u{7}", json!(1)),
        ("ok", Value::Null),
        ("ok", json!({"__airflow_state_ref__": "x"})),
    ] {
        let err = state.set(key, &value).unwrap_err();
        assert!(
            matches!(err, Error::InvalidInput { .. }),
            "{key:?} {value}: {err}"
        );
    }
    let err = state.set("ok", &json!(1)).unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
    assert!(
        host.rows().unwrap().rows.is_empty(),
        "a failed set leaves no row"
    );
}

#[test]
fn a_failed_backend_delete_leaves_an_orphan_that_gc_collects() {
    let dir = tempfile::tempdir().unwrap();
    let settings = short_grace();
    let failing = host_with(
        Some(("fixture_faulty", json!({"ops": {"delete_object": "error"}}))),
        dir.path(),
        settings.clone(),
    );
    let state = failing.task_state(scope());
    state.set("k", &json!("v")).unwrap();
    let err = state.delete("k").unwrap_err();
    assert!(
        err.to_string()
            .contains("injected failure in delete_object"),
        "{err}"
    );
    // Row first: the row is gone, so nothing dangles.
    assert_eq!(state.get("k").unwrap(), None);

    // An object no row points at, on disk: gc removes it once it is older
    // than the grace, and leaves the referenced one.
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(
        Some(("statehost_fs", json!({"root": "o"}))),
        dir.path(),
        settings.clone(),
    );
    host.task_state(scope()).set("kept", &json!(1)).unwrap();
    host.task_state(scope()).set("orphan", &json!(2)).unwrap();
    let orphan = dir.path().join("o").join(reference(&host, "orphan"));
    // Forget the row behind statehost's back: the object is an orphan.
    host.store().delete_task(&scope(), "orphan").unwrap();
    let report = host.gc(false, |_, _| {}).unwrap();
    assert_eq!(report.orphans, Some(0), "too young to collect");
    assert!(orphan.exists());
    wait_out_grace(&settings);
    let report = host.gc(true, |_, _| {}).unwrap();
    assert_eq!(report.orphans, Some(1));
    assert!(orphan.exists(), "dry run deletes nothing");
    let report = host.gc(false, |_, _| {}).unwrap();
    assert_eq!(report.orphans, Some(1));
    assert!(!orphan.exists());
    assert_eq!(
        host.task_state(scope()).get("kept").unwrap(),
        Some(json!(1))
    );
}

#[test]
fn expired_rows_read_as_absent_and_gc_removes_them_and_their_objects() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(
        Some(("statehost_fs", json!({"root": "o", "fsync": false}))),
        dir.path(),
        StateStoreSettings::default(),
    );
    let state = host.task_state(scope());
    state
        .set_with_retention("short", &json!(1), Retention::For(Duration::from_millis(1)))
        .unwrap();
    // (A zero retention means "never", as in the config.)
    std::thread::sleep(Duration::from_millis(20));
    let short = dir.path().join("o").join(reference(&host, "short"));
    state
        .set_with_retention("forever", &json!(2), Retention::Never)
        .unwrap();
    state.set("default", &json!(3)).unwrap();
    assert_eq!(state.get("short").unwrap(), None);
    let rows = host.rows().unwrap().rows;
    let row = |key: &str| rows.iter().find(|r| r.key == key).unwrap();
    assert_eq!(row("forever").expires_at, None);
    let default = row("default").expires_at.unwrap() - row("default").updated_at;
    assert_eq!(default, 30 * 86_400_000, "30 days after the write");

    let report = host.gc(false, |_, _| {}).unwrap();
    assert_eq!((report.expired_rows, report.objects), (1, 1));
    assert!(!short.exists());
    assert_eq!(state.get("forever").unwrap(), Some(json!(2)));
}

#[test]
fn an_asset_by_name_and_by_uri_shares_rows_and_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(
        Some(("statehost_memory", Value::Null)),
        dir.path(),
        StateStoreSettings::default(),
    );
    let both = AssetScope::new(Some("orders".into()), Some("s3://lake/orders".into())).unwrap();
    host.asset_state(&both)
        .unwrap()
        .set("wm", &json!("2026-11-01"))
        .unwrap();
    let by_uri = host
        .asset_state(&AssetScope::by_uri("s3://lake/orders").unwrap())
        .unwrap();
    assert_eq!(by_uri.get("wm").unwrap(), Some(json!("2026-11-01")));
    let by_name = host
        .asset_state(&AssetScope::by_name("orders").unwrap())
        .unwrap();
    by_name.set("wm", &json!("2026-11-02")).unwrap();
    assert_eq!(by_uri.get("wm").unwrap(), Some(json!("2026-11-02")));
    assert_eq!(host.rows().unwrap().rows.len(), 1);
    let clash = AssetScope::new(Some("orders".into()), Some("s3://other".into())).unwrap();
    assert!(matches!(
        host.asset_state(&clash),
        Err(Error::InvalidInput { .. })
    ));

    let other = AssetScope::by_name("customers").unwrap();
    let states = host.assets(vec![both.clone(), other]).unwrap();
    let err = states.single().unwrap_err().to_string();
    assert!(
        err.contains("2 assets") && err.contains("pick one"),
        "{err}"
    );
    assert_eq!(
        states
            .get(&AssetScope::by_uri("s3://lake/orders").unwrap())
            .unwrap()
            .get("wm")
            .unwrap(),
        Some(json!("2026-11-02"))
    );
    assert!(host.assets(vec![both]).unwrap().single().is_ok());
}

#[test]
fn reading_or_clearing_an_asset_registers_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(
        Some(("statehost_memory", Value::Null)),
        dir.path(),
        StateStoreSettings::default(),
    );
    let asset = AssetScope::new(Some("a".into()), Some("s3://b/x".into())).unwrap();
    let state = host.asset_state(&asset).unwrap();
    assert_eq!(state.get("k").unwrap(), None);
    state.delete("k").unwrap();
    state.clear().unwrap();
    assert_eq!(host.store().find_asset(&asset).unwrap(), None);
    // The uri read above was not bound to `a`: the right one still works.
    let right = AssetScope::new(Some("a".into()), Some("s3://b/right".into())).unwrap();
    host.asset_state(&right)
        .unwrap()
        .set("k", &json!(1))
        .unwrap();
    assert_eq!(
        host.asset_state(&AssetScope::by_uri("s3://b/right").unwrap())
            .unwrap()
            .get("k")
            .unwrap(),
        Some(json!(1))
    );
}

#[test]
fn without_a_backend_values_stay_inline_within_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(
        None,
        dir.path(),
        StateStoreSettings {
            max_value_bytes: 16,
            ..Default::default()
        },
    );
    let state = host.task_state(scope());
    state.set("k", &json!({"a": 1})).unwrap();
    assert_eq!(stored(&host, "k").unwrap(), r#"{"a":1}"#);
    assert_eq!(state.get("k").unwrap(), Some(json!({"a": 1})));
    let err = state
        .set("big", &json!("x".repeat(20)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_value_bytes") && err.contains("state backend"),
        "{err}"
    );

    // A row written by a backend cannot be read without one.
    let with_backend = host_with(
        Some(("statehost_memory", Value::Null)),
        dir.path(),
        StateStoreSettings::default(),
    );
    with_backend
        .task_state(scope())
        .set("ext", &json!("v"))
        .unwrap();
    let err = state.get("ext").unwrap_err().to_string();
    assert!(
        err.contains("no backend is configured") && err.contains("ext"),
        "{err}"
    );
}

#[test]
fn many_threads_share_one_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(
        Some(("statehost_fs", json!({"root": "o", "fsync": false}))),
        dir.path(),
        StateStoreSettings::default(),
    );
    std::thread::scope(|s| {
        for t in 0..8 {
            let host = host.clone();
            s.spawn(move || {
                let state =
                    host.task_state(TaskScope::new("dag", "run", format!("t{t}"), -1).unwrap());
                for i in 0..100 {
                    let key = format!("k{}", i % 10);
                    state.set(&key, &json!({"t": t, "i": i})).unwrap();
                    assert_eq!(state.get(&key).unwrap(), Some(json!({"t": t, "i": i})));
                }
            });
        }
    });
    assert_eq!(host.rows().unwrap().rows.len(), 80);
    // Every replaced object goes: one file per row remains.
    host.flush();
    assert_eq!(files_under(&dir.path().join("o")).len(), 80);
}

#[test]
fn clear_on_success_clears_and_a_backend_failure_does_not_fail_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let host = host_with(
        Some(("fixture_faulty", json!({"ops": {"delete_object": "error"}}))),
        dir.path(),
        StateStoreSettings {
            clear_on_success: true,
            ..Default::default()
        },
    );
    host.task_state(scope()).set("k", &json!(1)).unwrap();
    host.on_task_success(&scope()).unwrap();
    assert_eq!(host.task_state(scope()).get("k").unwrap(), None);
}

#[test]
fn clear_on_success_removes_rows_and_objects() {
    let dir = tempfile::tempdir().unwrap();
    let backend = loaded("statehost_memory", Value::Null, None);
    let host = host_on(
        sqlite_in(dir.path()),
        Some(&backend),
        StateStoreSettings {
            clear_on_success: true,
            ..Default::default()
        },
    );
    let other = TaskScope::new("dag", "run", "task", 0).unwrap();
    host.task_state(scope()).set("k", &json!(1)).unwrap();
    host.task_state(other.clone()).set("k", &json!(2)).unwrap();
    host.on_task_success(&scope()).unwrap();
    assert_eq!(host.task_state(scope()).get("k").unwrap(), None);
    assert!(
        backend
            .list(Some(ScopeRef::Task(scope().as_ref())))
            .unwrap()
            .is_empty()
    );
    assert_eq!(host.task_state(other).get("k").unwrap(), Some(json!(2)));
}
