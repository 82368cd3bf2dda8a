//! End-to-end tests: plugins built by a nested cargo build, loaded from a
//! temporary plugin directory, driven through the library and the CLI.

use std::sync::Arc;

use serde_json::json;
use statehost::config::Config;
use statehost::plugin::{self, LoadedBackend};
use statehost_plugin_api::{ErrorKind, Scope, Serialized, StateBackend, TaskScope};
use statehost_tests::{Sandbox, library, text};

fn load(target: &str, options: serde_json::Value) -> LoadedBackend {
    LoadedBackend::load(library(target), &options, None)
        .unwrap_or_else(|e| panic!("loading {target}: {e}"))
}

/// Asserts a failed CLI run: the exit code, one line on stderr containing
/// every `needle`, and no panic text or backtrace.
fn assert_fails(output: &std::process::Output, code: i32, needles: &[&str]) {
    let (stdout, stderr) = text(output);
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "stderr should be one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    for bad in ["panicked at", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{bad:?} in {stderr}");
    }
}

#[test]
fn memory_plugin_passes_conformance_through_the_so() {
    let backend = load("statehost_memory", serde_json::Value::Null);
    assert_eq!(backend.metadata().name, "memory");
    statehost_plugin_api::conformance::run(&backend);
}

#[test]
fn fs_plugin_passes_conformance_through_the_so() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LoadedBackend::load(
        library("statehost_fs"),
        &json!({"root": "state"}),
        Some(dir.path()),
    )
    .unwrap();
    assert_eq!(backend.metadata().name, "fs");
    statehost_plugin_api::conformance::run(&backend);
    // Relative roots resolve against the config directory handed over.
    assert!(dir.path().join("state/task").is_dir());
}

#[test]
fn several_libraries_load_side_by_side() {
    // abi_stable's singleton loaders would return the first library for
    // every path; loading by path must not.
    let memory = load("statehost_memory", serde_json::Value::Null);
    let faulty = load("fixture_faulty", serde_json::Value::Null);
    assert_eq!(memory.metadata().name, "memory");
    assert_eq!(faulty.metadata().name, "faulty");
    let scope = TaskScope::new("d", "r", "t", -1).unwrap();
    let Serialized::Reference(r) = memory.serialize_task_state(&scope, "k", "1").unwrap() else {
        panic!("memory keeps values")
    };
    // The faulty plugin holds its own values: the memory plugin's are not there.
    assert_eq!(
        faulty.deserialize_task_state(&r).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn panics_in_a_plugin_become_errors_and_the_host_goes_on() {
    let backend = load(
        "fixture_faulty",
        json!({"ops": {"serialize_task_state": "panic", "delete": "error"}}),
    );
    let scope = TaskScope::new("d", "r", "t", -1).unwrap();
    // A thousand panics in a row: each one an error, the process alive.
    for _ in 0..1000 {
        let err = backend
            .serialize_task_state(&scope, "k", "\"v\"")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked);
        assert!(err.message().contains("injected panic"), "{err}");
    }
    // Other operations still work after the panics.
    let asset = statehost_plugin_api::AssetScope::by_name("a").unwrap();
    let Serialized::Reference(r) = backend.serialize_asset_state(&asset, "k", "[1]").unwrap()
    else {
        panic!("faulty keeps values")
    };
    assert_eq!(backend.deserialize_asset_state(&r).unwrap(), "[1]");
    let err = backend.delete(&Scope::Task(scope), "k").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[test]
fn the_process_keeps_one_backend_instance() {
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory"), ("statehost_fs", "fs")]);
    let path = sandbox.config("[workers]\nstate_backend = \"memory\"\n");
    let config = Config::parse(
        &std::fs::read_to_string(&path).unwrap(),
        Some(&path),
        sandbox.path().to_path_buf(),
        std::iter::empty(),
    )
    .unwrap();
    let a = plugin::shared_backend(&config).unwrap().unwrap();
    let b = plugin::shared_backend(&config).unwrap().unwrap();
    assert!(Arc::ptr_eq(&a, &b), "a second call must reuse the instance");

    // Shared across threads: what one writes the others read.
    let scope = TaskScope::new("d", "r", "t", -1).unwrap();
    let Serialized::Reference(r) = a.serialize_task_state(&scope, "k", "42").unwrap() else {
        panic!("memory keeps values")
    };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let shared = plugin::shared_backend(&config).unwrap().unwrap();
                assert_eq!(shared.deserialize_task_state(&r).unwrap(), "42");
            });
        }
    });

    let mut other = config.clone();
    other.state_backend = Some("fs".to_string());
    let err = plugin::shared_backend(&other).unwrap_err();
    assert!(err.to_string().contains("restart"), "{err}");
}

#[test]
fn plugins_lists_every_library_and_goes_on_past_broken_ones() {
    let sandbox = Sandbox::with_plugins(&[
        ("statehost_memory", "memory"),
        ("statehost_fs", "fs"),
        ("fixture_abi_mismatch", "changed"),
        ("fixture_not_a_plugin", "notaplugin"),
    ]);
    std::fs::write(
        sandbox.plugins_dir().join("libstatehost_text.so"),
        "#!/bin/sh\n",
    )
    .unwrap();
    sandbox.config("");

    let output = sandbox.run(&["plugins"], &[]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"))
            .to_string()
    };
    assert!(line("memory").contains("plugin-api 1.0.0"), "{stdout}");
    assert!(line("fs").contains("[list,sweep]"), "{stdout}");
    assert!(line("changed").contains("cannot load:"), "{stdout}");
    assert!(
        line("notaplugin").contains("not a statehost plugin"),
        "{stdout}"
    );
    assert!(line("text").contains("not a shared library"), "{stdout}");

    let output = sandbox.run(&["plugins", "--json"], &[]);
    let listing: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listing.len(), 5);
    let fs = listing.iter().find(|p| p["name"] == "fs").unwrap();
    assert_eq!(fs["plugin_api_version"], "1.0.0");
    assert_eq!(fs["capabilities"], json!(["list", "sweep"]));
    assert!(fs["description"].as_str().unwrap().contains("file"));
    let changed = listing.iter().find(|p| p["name"] == "changed").unwrap();
    assert!(changed["error"].as_str().unwrap().contains("1.0.0"));
}

#[test]
fn check_reports_the_loaded_backend() {
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
    sandbox.config("[workers]\nstate_store_backend = \"fs\"\n\n[backends.fs]\nroot = \"state\"\n");
    let output = sandbox.run(&["check"], &[]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.contains("ok: backend `fs` 0.1.0 (plugin-api 1.0.0)"),
        "{stdout}"
    );
    assert!(stdout.contains("capabilities: list, sweep"), "{stdout}");
    assert!(
        sandbox.path().join("state").is_dir(),
        "root is relative to the config"
    );
}

#[test]
fn plugin_log_records_come_out_of_the_host_logger() {
    let sandbox = Sandbox::with_plugins(&[("fixture_faulty", "faulty")]);
    sandbox.config("[workers]\nstate_backend = \"faulty\"\n");
    let output = sandbox.run(&["-v", "check"], &[]);
    let (_, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("faulty backend starting"))
        .unwrap_or_else(|| panic!("the plugin's info record is missing:\n{stderr}"));
    assert!(line.contains("statehost::plugin::faulty"), "{line}");
    // Filtered by the host's level: without -v, info records are dropped.
    let output = sandbox.run(&["check"], &[]);
    assert!(!text(&output).1.contains("faulty backend starting"));
}

#[test]
fn a_missing_plugin_lists_what_is_available() {
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory"), ("statehost_fs", "fs")]);
    sandbox.config("[workers]\nstate_backend = \"s3\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(
        &output,
        3,
        &[
            "no plugin `s3`",
            "libstatehost_s3.so",
            "available: fs, memory",
        ],
    );
}

#[test]
fn invalid_plugin_names_are_refused() {
    let sandbox = Sandbox::with_plugins(&[]);
    for name in ["..", "Fs", "fs.so", "my-backend"] {
        sandbox.config(&format!("[workers]\nstate_backend = \"{name}\"\n"));
        let output = sandbox.run(&["check"], &[]);
        assert_fails(&output, 2, &["is not a plugin name", &format!("{name:?}")]);
    }
}

#[test]
fn a_file_that_is_not_a_shared_library_is_refused() {
    let sandbox = Sandbox::with_plugins(&[]);
    std::fs::write(
        sandbox.plugins_dir().join("libstatehost_junk.so"),
        vec![0u8; 4096],
    )
    .unwrap();
    sandbox.config("[workers]\nstate_backend = \"junk\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(
        &output,
        3,
        &["libstatehost_junk.so", "not a shared library"],
    );
}

#[test]
fn a_shared_library_that_is_not_a_plugin_is_refused() {
    let sandbox = Sandbox::with_plugins(&[("fixture_not_a_plugin", "other")]);
    sandbox.config("[workers]\nstate_backend = \"other\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(
        &output,
        3,
        &[
            "libstatehost_other.so",
            "not a statehost plugin",
            "export_backend!",
        ],
    );
}

#[test]
fn a_plugin_built_against_a_changed_interface_is_refused_in_one_line() {
    let sandbox = Sandbox::with_plugins(&[("fixture_abi_mismatch", "changed")]);
    sandbox.config("[workers]\nstate_backend = \"changed\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(
        &output,
        3,
        &[
            "libstatehost_changed.so",
            "built against statehost-plugin-api 1.0.0",
            "rebuild",
        ],
    );
    // abi_stable's own report runs to kilobytes; ours stays short.
    assert!(output.stderr.len() < 400, "{}", text(&output).1);
}

#[test]
fn a_constructor_that_rejects_an_option_names_it() {
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
    sandbox.config(
        "[workers]\nstate_backend = \"fs\"\n\n[backends.fs]\nroot = \"s\"\nroot_dir = \"x\"\n",
    );
    let output = sandbox.run(&["check"], &[]);
    assert_fails(&output, 2, &["backend `fs`", "root_dir", "[backends.fs]"]);
}

#[test]
fn a_constructor_that_panics_is_an_error_not_a_crash() {
    let sandbox = Sandbox::with_plugins(&[("fixture_faulty", "faulty")]);
    sandbox
        .config("[workers]\nstate_backend = \"faulty\"\n\n[backends.faulty]\non_new = \"panic\"\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(
        &output,
        3,
        &[
            "backend `faulty`",
            "panicked",
            "injected panic in the constructor",
        ],
    );
}

#[test]
fn config_errors_name_the_key_and_line() {
    let sandbox = Sandbox::with_plugins(&[]);
    sandbox.config("[workers]\nstate_backend = \"fs\"\nstate_bakend = \"x\"\n");
    let output = sandbox.run(&["check"], &[]);
    // The sandbox writes three lines of [core] before the given text.
    assert_fails(&output, 2, &["statehost.toml:6", "state_bakend"]);

    sandbox.config("[workers]\nstate_backend = 7\n");
    let output = sandbox.run(&["check"], &[]);
    assert_fails(
        &output,
        2,
        &["statehost.toml:5", "state_backend", "invalid type"],
    );

    sandbox.config("");
    let output = sandbox.run(&["check"], &[("STATEHOST__WORKERS__BACKEND", "fs")]);
    assert_fails(
        &output,
        2,
        &[
            "STATEHOST__WORKERS__BACKEND",
            "STATEHOST__WORKERS__STATE_BACKEND",
        ],
    );
}

#[test]
fn environment_selects_the_plugin_directory_and_backend() {
    let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
    std::fs::write(sandbox.path().join("statehost.toml"), "").unwrap();
    let plugins = sandbox.plugins_dir();
    let output = sandbox.run(
        &["check"],
        &[
            ("STATEHOST__CORE__PLUGINS_DIR", plugins.to_str().unwrap()),
            ("STATEHOST__WORKERS__STATE_BACKEND", "memory"),
        ],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("backend `memory`"), "{stdout}");
}

// ---------------------------------------------------------------------------
// State through the loaded backends: envelope, accessors, store, gc, CLI.
// ---------------------------------------------------------------------------

mod state {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{Value, json};
    use statehost::config::StateStoreSettings;
    use statehost::plugin::LoadedBackend;
    use statehost::store::{SqliteLocation, SqliteStore};
    use statehost::{Error, Retention, StateHost};
    use statehost_plugin_api::{AssetScope, StateBackend, TaskScope};
    use statehost_tests::{Sandbox, library, text};

    fn host_with(
        backend: Option<(&str, serde_json::Value)>,
        dir: &std::path::Path,
        settings: StateStoreSettings,
    ) -> StateHost {
        let backend = backend.map(|(target, options)| {
            let loaded = LoadedBackend::load(library(target), &options, Some(dir)).unwrap();
            let name = loaded.metadata().name.clone();
            (name, Arc::new(loaded) as Arc<dyn StateBackend>)
        });
        let store = SqliteStore::open(SqliteLocation::File(dir.join("meta.db"))).unwrap();
        StateHost::from_parts(backend, Box::new(store), settings)
    }

    fn scope() -> TaskScope {
        TaskScope::new("dag", "run", "task", -1).unwrap()
    }

    fn stored(host: &StateHost, key: &str) -> Option<String> {
        host.rows()
            .unwrap()
            .into_iter()
            .find(|r| r.key == key)
            .map(|r| r.value)
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
        let row = stored(&host, "o").unwrap();
        assert_eq!(row, r#"{"__airflow_state_ref__":"task/dag/run/task/-1/o"}"#);
        assert!(dir.path().join("objects/task/dag/run/task/-1/o").is_file());

        state.delete("o").unwrap();
        assert_eq!(state.get("o").unwrap(), None);
        assert!(!dir.path().join("objects/task/dag/run/task/-1/o").exists());
        state.clear(false).unwrap();
        assert_eq!(state.get("s").unwrap(), None);
        assert!(host.rows().unwrap().is_empty());
        assert!(!dir.path().join("objects/task/dag/run/task/-1").exists());
    }

    #[test]
    fn bad_input_is_rejected_before_the_backend_is_called() {
        let dir = tempfile::tempdir().unwrap();
        // Every write panics in this backend: a rejection that reached it
        // would come back as a panic error, not as bad input.
        let host = host_with(
            Some((
                "fixture_faulty",
                json!({"ops": {"serialize_task_state": "panic"}}),
            )),
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
            host.rows().unwrap().is_empty(),
            "a failed set leaves no row"
        );
    }

    #[test]
    fn a_failed_backend_delete_leaves_an_orphan_that_gc_collects() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StateStoreSettings {
            orphan_grace_seconds: 0,
            ..Default::default()
        };
        let failing = host_with(
            Some(("fixture_faulty", json!({"ops": {"delete": "error"}}))),
            dir.path(),
            settings.clone(),
        );
        let state = failing.task_state(scope());
        state.set("k", &json!("v")).unwrap();
        let err = state.delete("k").unwrap_err();
        assert!(
            err.to_string().contains("injected failure in delete"),
            "{err}"
        );
        // Row first: the row is gone, so nothing dangles.
        assert_eq!(state.get("k").unwrap(), None);

        // The memory-backed faulty plugin instance still holds the object;
        // a gc with a working delete would remove it. Use fs to see it on disk.
        let dir = tempfile::tempdir().unwrap();
        let host = host_with(
            Some(("statehost_fs", json!({"root": "o"}))),
            dir.path(),
            settings,
        );
        let object = dir.path().join("o/task/dag/run/task/-1/orphan");
        std::fs::create_dir_all(object.parent().unwrap()).unwrap();
        std::fs::write(&object, "1").unwrap();
        host.task_state(scope()).set("kept", &json!(1)).unwrap();
        let report = host.gc(true, |_, _| {}).unwrap();
        assert_eq!(report.orphans, Some(1));
        assert!(object.exists(), "dry run deletes nothing");
        let report = host.gc(false, |_, _| {}).unwrap();
        assert_eq!(report.orphans, Some(1));
        assert!(!object.exists());
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
            .set_with_retention("short", &json!(1), Retention::For(Duration::ZERO))
            .unwrap();
        state
            .set_with_retention("forever", &json!(2), Retention::Never)
            .unwrap();
        state.set("default", &json!(3)).unwrap();
        assert_eq!(state.get("short").unwrap(), None);
        let rows = host.rows().unwrap();
        let expiry = |key: &str| rows.iter().find(|r| r.key == key).unwrap().expires_at;
        assert_eq!(expiry("forever"), None);
        let default = expiry("default").unwrap() - rows[0].updated_at;
        assert!(
            (29 * 86_400_000..=31 * 86_400_000).contains(&default),
            "{default}"
        );

        let report = host.gc(false, |_, _| {}).unwrap();
        assert_eq!((report.expired_rows, report.objects), (1, 1));
        assert!(!dir.path().join("o/task/dag/run/task/-1/short").exists());
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
        assert_eq!(host.rows().unwrap().len(), 1);
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
        assert_eq!(host.rows().unwrap().len(), 80);
    }

    #[test]
    fn clear_on_success_clears_and_a_backend_failure_does_not_fail_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_with(
            Some(("fixture_faulty", json!({"ops": {"clear": "error"}}))),
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
    fn cli_exit_codes() {
        let sandbox =
            Sandbox::with_plugins(&[("statehost_fs", "fs"), ("fixture_faulty", "faulty")]);
        sandbox.config(
            "[workers]\nstate_backend = \"fs\"\n[database]\nurl = \"sqlite://db/meta.db\"\n[backends.fs]\nroot = \"objects\"\n",
        );
        let task = [
            "task-state",
            "--dag-id",
            "d",
            "--run-id",
            "r",
            "--task-id",
            "t",
        ];
        let run = |args: &[&str], env: &[(&str, &str)]| {
            let all: Vec<&str> = task.iter().chain(args).copied().collect();
            sandbox.run(&all, env)
        };
        let out = run(&["set", "k", r#"{"v": [1, 2]}"#], &[]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        let out = run(&["get", "k"], &[]);
        assert_eq!(text(&out).0.trim(), r#"{"v":[1,2]}"#);
        assert_eq!(run(&["get", "missing"], &[]).status.code(), Some(1));
        assert_eq!(run(&["set", "k", "{not json"], &[]).status.code(), Some(2));
        assert_eq!(run(&["set", "", "1"], &[]).status.code(), Some(2));
        assert_eq!(
            sandbox.run(&["task-state", "get", "k"], &[]).status.code(),
            Some(2)
        );
        let out = run(
            &["set", "k2", "1"],
            &[
                ("STATEHOST__WORKERS__STATE_BACKEND", "faulty"),
                (
                    "STATEHOST__BACKENDS__FAULTY__OPS",
                    "{serialize_task_state = \"error\"}",
                ),
            ],
        );
        assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
        assert!(
            text(&out).1.contains("injected failure"),
            "{:?}",
            text(&out)
        );

        let out = sandbox.run(&["rows", "--json"], &[]);
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0]["value"],
            r#"{"__airflow_state_ref__":"task/d/r/t/-1/k"}"#
        );

        // With no backend, the envelope is reported, not handed back as the value.
        let out = run(&["get", "k"], &[("STATEHOST__WORKERS__STATE_BACKEND", "")]);
        assert_eq!(out.status.code(), Some(3));
        assert!(text(&out).1.contains("no backend is configured"));

        let out = sandbox.run(&["asset-state", "--name", "a", "set", "wm", "\"x\""], &[]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        let out = sandbox.run(&["asset-state", "--name", "a", "get", "wm"], &[]);
        assert_eq!(text(&out).0.trim(), "\"x\"");
        assert_eq!(
            sandbox
                .run(&["asset-state", "get", "wm"], &[])
                .status
                .code(),
            Some(2)
        );

        let out = sandbox.run(&["gc"], &[]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        assert!(text(&out).0.contains("0 expired rows"), "{:?}", text(&out));

        let out = sandbox.run(&["demo"], &[]);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        assert!(text(&out).0.contains("__airflow_state_ref__"));
    }
}

// ---------------------------------------------------------------------------
// Loading guards: checked before the library is loaded.
// ---------------------------------------------------------------------------

mod guards {
    use std::os::unix::fs::PermissionsExt;

    use statehost_tests::{Sandbox, library, text};

    use super::assert_fails;

    fn chmod(path: &std::path::Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_library_others_can_write_is_refused_unless_allowed() {
        let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
        let lib = sandbox.plugins_dir().join("libstatehost_memory.so");
        chmod(&lib, 0o775);
        sandbox.config("[workers]\nstate_backend = \"memory\"\n");
        let output = sandbox.run(&["check"], &[]);
        assert_fails(
            &output,
            3,
            &[
                "refused",
                "writable by group or others",
                "chmod go-w",
                "allow_insecure_plugin_permissions",
            ],
        );

        let output = sandbox.run(
            &["check"],
            &[("STATEHOST__CORE__ALLOW_INSECURE_PLUGIN_PERMISSIONS", "true")],
        );
        let (stdout, stderr) = text(&output);
        assert!(output.status.success(), "{stderr}");
        assert!(stdout.contains("backend `memory`"), "{stdout}");
        assert!(
            stderr.contains("WARN") && stderr.contains("writable by group or others"),
            "{stderr}"
        );

        // The listing applies the same guard and goes on.
        let output = sandbox.run(&["plugins"], &[]);
        assert!(text(&output).0.contains("refused"), "{:?}", text(&output));
    }

    #[test]
    fn a_plugin_directory_others_can_write_is_refused() {
        let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
        chmod(&sandbox.plugins_dir(), 0o777);
        sandbox.config("[workers]\nstate_backend = \"memory\"\n");
        let output = sandbox.run(&["check"], &[]);
        assert_fails(
            &output,
            3,
            &["the directory", "writable by group or others"],
        );
    }

    #[test]
    fn a_library_owned_by_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
        let lib = sandbox.plugins_dir().join("libstatehost_memory.so");
        std::os::unix::fs::chown(&lib, Some(4242), None).unwrap();
        sandbox.config("[workers]\nstate_backend = \"memory\"\n");
        let output = sandbox.run(&["check"], &[]);
        assert_fails(&output, 3, &["owned by uid 4242", "neither you"]);
    }

    #[test]
    fn a_symlink_out_of_the_plugin_directory_is_refused() {
        let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
        let outside = sandbox.path().join("elsewhere");
        std::fs::create_dir(&outside).unwrap();
        let target = outside.join("libstatehost_real.so");
        std::fs::copy(library("statehost_memory"), &target).unwrap();
        std::os::unix::fs::symlink(
            &target,
            sandbox.plugins_dir().join("libstatehost_linked.so"),
        )
        .unwrap();
        sandbox.config("[workers]\nstate_backend = \"linked\"\n");
        let output = sandbox.run(&["check"], &[]);
        assert_fails(&output, 3, &["refused", "outside the plugin directory"]);

        // A link that stays inside the directory is fine.
        std::os::unix::fs::symlink(
            sandbox.plugins_dir().join("libstatehost_memory.so"),
            sandbox.plugins_dir().join("libstatehost_alias.so"),
        )
        .unwrap();
        sandbox.config("[workers]\nstate_backend = \"alias\"\n");
        let output = sandbox.run(&["check"], &[]);
        assert!(output.status.success(), "{:?}", text(&output));
    }

    #[test]
    fn a_sha256_pin_must_match_the_loaded_bytes() {
        use sha2::Digest;
        let sandbox = Sandbox::with_plugins(&[("statehost_memory", "memory")]);
        let lib = sandbox.plugins_dir().join("libstatehost_memory.so");
        let actual: String = sha2::Sha256::digest(std::fs::read(&lib).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();

        sandbox.config(&format!(
            "[workers]\nstate_backend = \"memory\"\nstate_backend_sha256 = \"{}\"\n",
            actual.to_uppercase()
        ));
        let output = sandbox.run(&["check"], &[]);
        assert!(output.status.success(), "{:?}", text(&output));

        let wrong = "0".repeat(64);
        sandbox.config(&format!(
            "[workers]\nstate_backend = \"memory\"\nstate_backend_sha256 = \"{wrong}\"\n"
        ));
        let output = sandbox.run(&["check"], &[]);
        assert_fails(&output, 3, &["refused", &actual, &wrong]);

        sandbox.config("[workers]\nstate_backend = \"memory\"\nstate_backend_sha256 = \"abc\"\n");
        let output = sandbox.run(&["check"], &[]);
        assert_fails(&output, 2, &["state_backend_sha256", "64 hex digits"]);
    }
}

// ---------------------------------------------------------------------------
// Faults injected into a plugin: each one a clear error, the next call
// served, the store consistent.
// ---------------------------------------------------------------------------

mod faults {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{Value, json};
    use statehost::config::StateStoreSettings;
    use statehost::plugin::LoadedBackend;
    use statehost::store::{SqliteLocation, SqliteStore};
    use statehost::timeout::TimeoutBackend;
    use statehost::{Error, StateHost};
    use statehost_plugin_api::{AssetScope, ErrorKind, StateBackend, TaskScope};
    use statehost_tests::library;

    fn faulty(ops: Value) -> Arc<dyn StateBackend> {
        Arc::new(
            LoadedBackend::load(library("fixture_faulty"), &json!({ "ops": ops }), None).unwrap(),
        )
    }

    fn host(backend: Arc<dyn StateBackend>) -> StateHost {
        StateHost::from_parts(
            Some(("faulty".into(), backend)),
            Box::new(SqliteStore::open(SqliteLocation::Memory).unwrap()),
            StateStoreSettings {
                orphan_grace_seconds: 0,
                ..Default::default()
            },
        )
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
            let host = host(faulty(json!({ "serialize_task_state": fault })));
            let state = host.task_state(scope());
            let (got, message) = backend_error(state.set("k", &json!("v")).unwrap_err());
            assert_eq!(got, kind, "{fault}: {message}");
            assert!(message.contains(says), "{fault}: {message}");
            assert!(host.rows().unwrap().is_empty(), "{fault} left a row");
            // The next call (another operation) is served.
            let asset = host
                .asset_state(&AssetScope::by_name("a").unwrap())
                .unwrap();
            asset.set("k", &json!(1)).unwrap();
            assert_eq!(asset.get("k").unwrap(), Some(json!(1)), "{fault}");
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
            let host = host(faulty(json!({ "deserialize_task_state": fault })));
            let state = host.task_state(scope());
            state.set("k", &json!({"v": 1})).unwrap();
            let (_, message) = backend_error(state.get("k").unwrap_err());
            assert!(message.contains(says), "{fault}: {message}");
            assert_eq!(host.rows().unwrap().len(), 1, "{fault}");
            // Deleting still works: row first, then the object.
            state.delete("k").unwrap();
            assert!(host.rows().unwrap().is_empty());
        }
    }

    #[test]
    fn failed_delete_and_clear_remove_rows_first_and_gc_collects_the_objects() {
        let backend = faulty(json!({ "delete": "error", "clear": "panic" }));
        let host = host(backend.clone());
        let state = host.task_state(scope());
        state.set("a", &json!(1)).unwrap();
        state.set("b", &json!(2)).unwrap();
        assert!(state.delete("a").is_err());
        assert_eq!(state.get("a").unwrap(), None, "the row goes first");
        let (kind, _) = backend_error(state.clear(false).unwrap_err());
        assert_eq!(kind, ErrorKind::Panicked);
        assert!(host.rows().unwrap().is_empty(), "clear removed the rows");
        // Both objects are orphans now; this backend cannot delete, so gc
        // reports the failure instead of claiming success.
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
    fn a_slow_backend_meets_the_deadline_and_gc_collects_what_it_wrote_late() {
        let slow = faulty(json!({ "serialize_task_state": "slow:400" }));
        let limited: Arc<dyn StateBackend> =
            Arc::new(TimeoutBackend::new(slow.clone(), Duration::from_millis(50)));
        let host = host(limited);
        let state = host.task_state(scope());
        let (kind, message) = backend_error(state.set("k", &json!("v")).unwrap_err());
        assert_eq!(kind, ErrorKind::Unavailable);
        assert!(message.contains("within 50 ms"), "{message}");
        assert!(host.rows().unwrap().is_empty());
        // The late write lands in the background: an orphan for gc.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while slow.list(None).unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the late write never landed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let report = host.gc(false, |_, _| {}).unwrap();
        assert_eq!(report.orphans, Some(1));
        assert!(slow.list(None).unwrap().is_empty());
    }
}

// ---------------------------------------------------------------------------
// Durability: killed writers, concurrent processes, large values.
// ---------------------------------------------------------------------------

mod durability {
    use std::collections::{HashMap, HashSet};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use statehost::StateHost;
    use statehost::config::StateStoreSettings;
    use statehost::plugin::LoadedBackend;
    use statehost::store::{RowOwner, SqliteLocation, SqliteStore};
    use statehost_plugin_api::{Scope, StateBackend, TaskScope};
    use statehost_tests::{Sandbox, artifacts, check_value, library};

    const FS_CONFIG: &str = "[workers]\nstate_backend = \"fs\"\n\n[database]\nurl = \"sqlite://meta.db\"\n\n[state_store]\norphan_grace_seconds = 0\n\n[backends.fs]\nroot = \"objects\"\n";

    fn worker(config: &Path) -> Command {
        let mut command = Command::new(&artifacts().worker);
        command.arg(config).env_remove("RUST_LOG");
        command
    }

    /// The state the workers wrote, opened in this process.
    fn open(dir: &Path) -> (StateHost, Arc<dyn StateBackend>) {
        let backend: Arc<dyn StateBackend> = Arc::new(
            LoadedBackend::load(
                library("statehost_fs"),
                &json!({"root": dir.join("objects")}),
                None,
            )
            .unwrap(),
        );
        let store = SqliteStore::open(SqliteLocation::File(dir.join("meta.db"))).unwrap();
        let settings = StateStoreSettings {
            orphan_grace_seconds: 0,
            ..Default::default()
        };
        (
            StateHost::from_parts(
                Some(("fs".into(), backend.clone())),
                Box::new(store),
                settings,
            ),
            backend,
        )
    }

    fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                files_under(&entry.path(), out);
            } else {
                out.push(entry.path());
            }
        }
    }

    fn scope() -> TaskScope {
        TaskScope::new("crash_dag", "run", "task", -1).unwrap()
    }

    /// Runs `hammer` workers (one process each) and collects every write
    /// they acknowledged, per key, in order.
    fn hammer(
        sandbox: &Sandbox,
        config: &Path,
        workers: &[&str],
        threads: usize,
        ops: usize,
    ) -> HashMap<String, Vec<String>> {
        let children: Vec<_> = workers
            .iter()
            .map(|w| {
                let log = sandbox.path().join(format!("{w}.log"));
                let child = worker(config)
                    .args(["hammer", w, &threads.to_string(), &ops.to_string()])
                    .arg(&log)
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (child, log)
            })
            .collect();
        let mut acked: HashMap<String, Vec<String>> = HashMap::new();
        for (child, log) in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "a worker failed (no error may reach the caller, \"database is locked\" included): {}",
                String::from_utf8_lossy(&output.stderr)
            );
            for line in std::fs::read_to_string(log).unwrap().lines() {
                let (key, id) = line.split_once('\t').unwrap();
                acked
                    .entry(key.to_string())
                    .or_default()
                    .push(id.to_string());
            }
        }
        acked
    }

    /// Every acknowledged write stands: a key of one thread holds its last
    /// write (or nothing after its last delete); a shared key holds a value
    /// some worker wrote, whole.
    fn check_acknowledged(host: &StateHost, acked: &HashMap<String, Vec<String>>) {
        let state = host.task_state(scope());
        for (key, ids) in acked {
            let now = state.get(key).unwrap().map(|v| check_value(&v).unwrap());
            if key.starts_with('s') {
                let now = now.unwrap_or_else(|| panic!("{key} was written and never deleted"));
                assert!(
                    ids.contains(&now),
                    "{key} holds {now}, which no worker wrote"
                );
            } else {
                let last = ids.last().unwrap();
                let expected = (last != "-").then(|| last.clone());
                assert_eq!(now, expected, "{key}: an acknowledged write was lost");
            }
        }
    }

    #[test]
    fn killed_writers_leave_whole_values_and_a_sound_database() {
        let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
        let config = sandbox.config(FS_CONFIG);
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut interrupted = 0;
        for run in 0..60 {
            let mut child = worker(&config)
                .args(["crash", &(run + 1).to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(20 + seed % 150));
            if child.try_wait().unwrap().is_none() {
                interrupted += 1;
            }
            child.kill().unwrap(); // SIGKILL
            let output = child.wait_with_output().unwrap();
            assert!(
                !output.status.success(),
                "the worker stopped by itself: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(
            interrupted >= 50,
            "only {interrupted} kills hit a running worker"
        );

        let (host, backend) = open(sandbox.path());
        let state = host.task_state(scope());
        let mut present = 0;
        for k in 0..50 {
            match state.get(&format!("k{k}")) {
                Ok(None) => {}
                Ok(Some(value)) => {
                    check_value(&value).unwrap_or_else(|e| panic!("k{k}: {e}"));
                    present += 1;
                }
                Err(e) => panic!("k{k} cannot be read after the kills: {e}"),
            }
        }
        assert!(present > 0, "the workers never got a write in");

        let db = rusqlite::Connection::open(sandbox.path().join("meta.db")).unwrap();
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");

        host.gc(false, |_, _| {}).unwrap();
        let mut files = Vec::new();
        files_under(&sandbox.path().join("objects"), &mut files);
        let temp: Vec<_> = files
            .iter()
            .filter(|f| {
                f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .collect();
        assert!(temp.is_empty(), "gc left temporary files: {temp:?}");
        let rows: HashSet<String> = host
            .rows()
            .unwrap()
            .into_iter()
            .filter(|r| r.value.contains("__airflow_state_ref__"))
            .map(|r| r.key)
            .collect();
        for object in backend.list(None).unwrap() {
            assert!(
                rows.contains(&object.key),
                "gc left the orphan {}",
                object.reference
            );
        }
        assert_eq!(
            files.len(),
            rows.len(),
            "one file per row that points at one"
        );
    }

    #[test]
    fn two_processes_of_four_threads_lose_no_acknowledged_write() {
        let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
        let config = sandbox
            .config(&FS_CONFIG.replace("root = \"objects\"", "root = \"objects\"\nfsync = false"));
        let (threads, ops) = (4, 2500);
        let acked = hammer(&sandbox, &config, &["w0", "w1"], threads, ops);
        assert_eq!(2 * threads * ops, 20_000, "operations in all");
        let (host, _) = open(sandbox.path());
        check_acknowledged(&host, &acked);
        let rows_with_keys = host
            .rows()
            .unwrap()
            .into_iter()
            .filter(|r| matches!(&r.owner, RowOwner::Task(t) if *t == scope()))
            .count();
        assert!(rows_with_keys > 0);
    }

    /// A schema of its own on `STATEHOST_TEST_POSTGRES_URL`, dropped after.
    struct PgSchema {
        base: String,
        name: String,
    }

    impl PgSchema {
        fn create() -> Option<PgSchema> {
            let Ok(base) = std::env::var("STATEHOST_TEST_POSTGRES_URL") else {
                eprintln!(
                    "skipped: set STATEHOST_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1/test) to run against PostgreSQL"
                );
                return None;
            };
            let name = format!("statehost_workers_{}", std::process::id());
            let mut client = postgres::Client::connect(&base, postgres::NoTls).unwrap();
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
                ))
                .unwrap();
            Some(PgSchema { base, name })
        }

        fn url(&self) -> String {
            let sep = if self.base.contains('?') { '&' } else { '?' };
            format!("{}{sep}options=-csearch_path%3D{}", self.base, self.name)
        }
    }

    impl Drop for PgSchema {
        fn drop(&mut self) {
            if let Ok(mut client) = postgres::Client::connect(&self.base, postgres::NoTls) {
                let _ = client.batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name));
            }
        }
    }

    #[test]
    fn four_workers_share_one_postgresql_database() {
        let Some(schema) = PgSchema::create() else {
            return;
        };
        let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
        let config = sandbox.config(&format!(
            "[workers]\nstate_backend = \"fs\"\n\n[database]\nurl = \"{}\"\n\n[state_store]\norphan_grace_seconds = 0\n\n[backends.fs]\nroot = \"objects\"\nfsync = false\n",
            schema.url()
        ));
        let acked = hammer(&sandbox, &config, &["w0", "w1", "w2", "w3"], 2, 1000);

        // This process is a fifth worker: same database, same fs root.
        let backend: Arc<dyn StateBackend> = Arc::new(
            LoadedBackend::load(
                library("statehost_fs"),
                &json!({"root": sandbox.path().join("objects")}),
                None,
            )
            .unwrap(),
        );
        let store = statehost::pgstore::PostgresStore::open(&schema.url()).unwrap();
        let settings = StateStoreSettings {
            orphan_grace_seconds: 0,
            ..Default::default()
        };
        let host = StateHost::from_parts(
            Some(("fs".into(), backend.clone())),
            Box::new(store),
            settings,
        );
        check_acknowledged(&host, &acked);
        // No row points at nothing.
        for row in host.rows().unwrap() {
            if let RowOwner::Task(t) = &row.owner
                && t.task_id() != "expiring"
            {
                host.task_state(t.clone())
                    .get(&row.key)
                    .unwrap_or_else(|e| panic!("{t} {:?}: {e}", row.key));
            }
        }
        // What the workers let expire, gc here collects, rows and objects.
        let expiring = Scope::Task(TaskScope::new("crash_dag", "run", "expiring", -1).unwrap());
        let objects_before = backend.list(Some(&expiring)).unwrap().len();
        assert!(
            objects_before >= 4 * 2 * (1000 / 50),
            "{objects_before} expiring objects"
        );
        let report = host.gc(false, |_, _| {}).unwrap();
        assert_eq!(report.expired_rows, objects_before);
        assert!(backend.list(Some(&expiring)).unwrap().is_empty());
        assert!(
            host.rows()
                .unwrap()
                .iter()
                .all(|r| !matches!(&r.owner, RowOwner::Task(t) if t.task_id() == "expiring"))
        );
    }

    #[test]
    fn a_100_mib_value_passes_through_the_fs_backend_in_bounded_memory() {
        let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
        let config = sandbox
            .config(&FS_CONFIG.replace("root = \"objects\"", "root = \"objects\"\nfsync = false"));
        let output = worker(&config).args(["big", "100"]).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let peak_kib: u64 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        eprintln!("peak RSS for a 100 MiB value: {} MiB", peak_kib / 1024);
        // The value, its JSON text and the copy read back: a small multiple.
        assert!(
            peak_kib < 5 * 100 * 1024,
            "peak RSS {} MiB",
            peak_kib / 1024
        );
    }

    #[test]
    fn clearing_a_scope_with_ten_thousand_keys() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn StateBackend> = Arc::new(
            LoadedBackend::load(
                library("statehost_fs"),
                &json!({"root": dir.path().join("o"), "fsync": false}),
                None,
            )
            .unwrap(),
        );
        let host = StateHost::from_parts(
            Some(("fs".into(), backend.clone())),
            Box::new(SqliteStore::open(SqliteLocation::Memory).unwrap()),
            StateStoreSettings::default(),
        );
        let state = host.task_state(scope());
        for i in 0..10_000 {
            state.set(&format!("key/{i}"), &json!(i)).unwrap();
        }
        assert_eq!(
            backend.list(Some(&Scope::Task(scope()))).unwrap().len(),
            10_000
        );
        state.clear(false).unwrap();
        assert!(host.rows().unwrap().is_empty());
        assert!(backend.list(None).unwrap().is_empty());
    }
}

// ---------------------------------------------------------------------------
// The object_store plugin through its .so: memory:// and file:// always,
// S3 (moto) and Azure Blob (Azurite) on loopback when enabled.
// ---------------------------------------------------------------------------

mod object_store {
    use std::process::{Command, Stdio};
    use std::time::{SystemTime, UNIX_EPOCH};

    use serde_json::{Value, json};
    use statehost::plugin::LoadedBackend;
    use statehost_plugin_api::{Serialized, StateBackend, TaskScope};
    use statehost_tests::{Server, free_port, http, library, start_moto, wait_for};

    const KEY_VAR: &str = "STATEHOST_TEST_OBJECT_STORE_KEY";

    fn load(options: Value) -> LoadedBackend {
        // SAFETY: every test sets the same value; set before the plugin reads it.
        unsafe { std::env::set_var(KEY_VAR, "5a".repeat(32)) };
        LoadedBackend::load(library("statehost_object_store"), &options, None)
            .unwrap_or_else(|e| panic!("loading object_store with {options}: {e}"))
    }

    /// The suite, then the same with compression and encryption on; with
    /// `shared` storage (not memory://), each reads what the other wrote.
    fn run_suite(options: Value, shared: bool) {
        let plain = load(options.clone());
        statehost_plugin_api::conformance::run(&plain);
        let mut coded = options;
        coded["compression"] = json!("zstd");
        coded["encryption_key_env"] = json!(KEY_VAR);
        let coded = load(coded);
        statehost_plugin_api::conformance::run(&coded);
        if !shared {
            return;
        }
        // What the plain instance wrote, the coded one reads: objects say how.
        let scope = TaskScope::new("interop", "run", "t", -1).unwrap();
        let Serialized::Reference(r) = plain.serialize_task_state(&scope, "k", "[1,2]").unwrap()
        else {
            panic!("stored inline")
        };
        assert_eq!(coded.deserialize_task_state(&r).unwrap(), "[1,2]");
    }

    #[test]
    fn memory_urls_through_the_so() {
        run_suite(json!({"url": "memory://"}), false);
    }

    #[test]
    fn file_urls_through_the_so() {
        let dir = tempfile::tempdir().unwrap();
        run_suite(
            json!({"url": format!("file://{}/objects", dir.path().display())}),
            true,
        );
    }

    fn enabled(var: &str) -> Option<String> {
        match std::env::var(var) {
            Ok(command) if !command.is_empty() => Some(command),
            _ => {
                eprintln!("skipped: set {var} to the emulator's command to run this test");
                None
            }
        }
    }

    #[test]
    fn s3_against_moto() {
        let Some(moto) = enabled("STATEHOST_TEST_S3") else {
            return;
        };
        let (_server, port) = start_moto(&moto, "statehost-test");
        run_suite(statehost_tests::moto_options(port, "statehost-test"), true);
    }

    const AZURITE_ACCOUNT: &str = "devstoreaccount1";
    // Azurite's well-known development key (public, documented).
    const AZURITE_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// RFC 1123 date, as x-ms-date wants it.
    fn http_date(t: SystemTime) -> String {
        let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let weekday =
            ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        format!(
            "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
            months[(month - 1) as usize],
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }

    /// Creates a container with a SharedKey-signed request (the plugin, like
    /// object_store, reads and writes blobs but does not create containers).
    fn create_container(port: u16, container: &str) -> String {
        use base64::Engine;
        use hmac::Mac;
        let date = http_date(SystemTime::now());
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(AZURITE_KEY)
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        http(
            port,
            &format!(
                "PUT /{AZURITE_ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {AZURITE_ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
    }

    #[test]
    fn azure_blob_against_azurite() {
        let Some(azurite) = enabled("STATEHOST_TEST_AZURE") else {
            return;
        };
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let _server = Server(
            Command::new(azurite)
                .args([
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--silent",
                    "--skipApiVersionCheck",
                    "--loose",
                    "--location",
                ])
                .arg(data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start azurite-blob"),
        );
        wait_for(port, "Azurite");
        let status = create_container(port, "statehost");
        assert!(status.contains("201"), "creating the container: {status}");
        run_suite(
            json!({
                "url": "az://statehost/prefix",
                "max_retries": 1,
                "options": {
                    "azure_storage_account_name": AZURITE_ACCOUNT,
                    "azure_storage_account_key": AZURITE_KEY,
                    "azure_endpoint": format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
                    "azure_allow_http": "true",
                },
            }),
            true,
        );
    }
}
