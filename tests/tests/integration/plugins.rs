//! Plugins: loading by path and by name, the one cached instance, the
//! conformance suite through the `.so`, plugins built against plugin-api
//! 1.x, and every way a library can fail to load, through the CLI.

use std::sync::Arc;

use serde_json::json;
use statehost::config::Config;
use statehost::plugin::{self, LoadedBackend};
use statehost_plugin_api::conformance::write_id;
use statehost_plugin_api::{ErrorKind, Serialized, StateBackend, StateKey, TaskScope};
use statehost_tests::{Sandbox, assert_fails, library, text};

fn load(target: &str, options: serde_json::Value) -> LoadedBackend {
    LoadedBackend::load(library(target), &options, None)
        .unwrap_or_else(|e| panic!("loading {target}: {e}"))
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
    assert!(dir.path().join("state/v2/task").is_dir());
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
    let at = StateKey::task(&scope, "k");
    let Serialized::Reference(r) = memory.serialize(at, write_id(), "1").unwrap() else {
        panic!("memory keeps values")
    };
    // The faulty plugin holds its own values: the memory plugin's are not there.
    assert_eq!(
        faulty.deserialize(&r, Some(at)).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn panics_in_a_plugin_become_errors_and_the_host_goes_on() {
    let backend = load(
        "fixture_faulty",
        json!({"ops": {"deserialize": "panic", "delete": "error"}}),
    );
    let scope = TaskScope::new("d", "r", "t", -1).unwrap();
    let at = StateKey::task(&scope, "k");
    let Serialized::Reference(r) = backend.serialize(at, write_id(), "\"v\"").unwrap() else {
        panic!("faulty keeps values")
    };
    // A thousand panics in a row: each one an error, the process alive.
    for _ in 0..1000 {
        let err = backend.deserialize(&r, Some(at)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked);
        assert!(err.message().contains("injected panic"), "{err}");
    }
    // Other operations still work after the panics.
    assert!(backend.delete_object(&r, Some(at)).unwrap());
    let err = backend.delete(at).unwrap_err();
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
    let at = StateKey::task(&scope, "k");
    let Serialized::Reference(r) = StateBackend::serialize(&*a, at, write_id(), "42").unwrap()
    else {
        panic!("memory keeps values")
    };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let shared = plugin::shared_backend(&config).unwrap().unwrap();
                assert_eq!(
                    StateBackend::deserialize(&*shared, &r, Some(at)).unwrap(),
                    "42"
                );
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
    let mark = sandbox.path().join("mark");
    let mark_env = [("STATEHOST_FIXTURE_MARK", mark.to_str().unwrap())];

    let output = sandbox.run(&["plugins"], &mark_env);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    // Listing read the files: no library's code ran.
    assert!(!mark.exists(), "listing loaded a library");
    let line = |stdout: &str, name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed:\n{stdout}"))
            .to_string()
    };
    let api = statehost_plugin_api::PLUGIN_API_VERSION;
    assert!(
        line(&stdout, "memory").contains(&format!("plugin-api {api}")),
        "{stdout}"
    );
    assert!(line(&stdout, "fs").contains("[list,sweep]"), "{stdout}");
    for name in ["changed", "notaplugin"] {
        let l = line(&stdout, name);
        assert!(
            l.contains("not a statehost plugin, or built with a plugin-api older than 2.1"),
            "{l}"
        );
        assert!(!l.contains("(loaded"), "{l}");
    }
    assert!(
        line(&stdout, "text").contains("not a shared library"),
        "{stdout}"
    );

    let output = sandbox.run(&["plugins", "--json"], &mark_env);
    let listing: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listing.len(), 5);
    let fs = listing.iter().find(|p| p["name"] == "fs").unwrap();
    assert_eq!(fs["plugin_api_version"], api);
    assert_eq!(fs["capabilities"], json!(["list", "sweep"]));
    assert_eq!(fs["loaded"], false);
    assert!(fs["description"].as_str().unwrap().contains("file"));
    assert!(!mark.exists(), "listing loaded a library");

    // --load asks the libraries without metadata, running their code, and
    // says so.
    let output = sandbox.run(&["plugins", "--load"], &mark_env);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(mark.exists(), "--load did not load the library");
    let changed = line(&stdout, "changed");
    assert!(
        changed.contains("1.0.0") && changed.contains("(loaded to ask it)"),
        "{changed}"
    );
    assert!(
        line(&stdout, "notaplugin").contains("exports no statehost root module"),
        "{stdout}"
    );
    assert!(!line(&stdout, "memory").contains("loaded"), "{stdout}");
}

#[test]
fn check_reports_the_loaded_backend() {
    let sandbox = Sandbox::with_plugins(&[("statehost_fs", "fs")]);
    sandbox.config("[workers]\nstate_store_backend = \"fs\"\n\n[backends.fs]\nroot = \"state\"\n");
    let output = sandbox.run(&["check"], &[]);
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    let api = statehost_plugin_api::PLUGIN_API_VERSION;
    assert!(
        stdout.contains(&format!("ok: backend `fs` 0.1.0 (plugin-api {api})")),
        "{stdout}"
    );
    assert!(stdout.contains("capabilities: list, sweep"), "{stdout}");
    // Checking creates nothing; the first write makes the root, relative
    // to the config.
    assert!(!sandbox.path().join("state").exists());
    let set: Vec<&str> = statehost_tests::TASK
        .iter()
        .chain(&["set", "k", "\"v\""])
        .copied()
        .collect();
    assert!(sandbox.run(&set, &[]).status.success());
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
    // A configuration mistake, like a bad option: exit 2.
    assert_fails(
        &output,
        2,
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
        // A path that names no plugin is a config mistake.
        2,
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
        // A path that names no plugin is a config mistake.
        2,
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
