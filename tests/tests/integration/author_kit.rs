//! The backend author's kit: the test-support crate on built libraries,
//! and the template, built and tested as the standalone crate it is.

use std::process::Command;

use serde_json::json;
use statehost_tests::{library, text, workspace_root};

#[test]
fn the_kit_runs_the_conformance_suite_on_a_built_library() {
    let plugin =
        statehost_plugin_test::load(library("statehost_fs"), json!({"root": "objects"})).unwrap();
    assert_eq!(plugin.metadata().name, "fs");
    let mut ran = Vec::new();
    plugin.check_reporting(|name| ran.push(name)).unwrap();
    assert_eq!(ran, statehost_plugin_test::CHECKS);
    // The relative root landed in the plugin's scratch directory, and the
    // suite left nothing there.
    let objects = plugin.dir().join("objects");
    assert!(objects.join("v2").is_dir());
    let dir = plugin.dir().to_path_buf();
    drop(plugin);
    assert!(!dir.exists(), "the scratch directory outlived the plugin");
}

#[test]
fn the_kit_names_the_check_a_backend_fails() {
    let plugin = statehost_plugin_test::load(
        library("fixture_faulty"),
        json!({"ops": {"delete_object": "fail:unavailable"}}),
    )
    .unwrap();
    let failure = plugin.check().unwrap_err();
    assert_eq!(failure.check, "delete_object_is_exact");
    assert!(
        failure.message.contains("injected unavailable failure"),
        "{failure}"
    );
}

#[test]
fn the_template_builds_and_passes_its_tests_standalone() {
    let template = workspace_root().join("examples/backend-template");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .current_dir(&template)
        .args(["test", "--locked"])
        // One target directory for everything: the template's dependencies
        // are the workspace's, already built.
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for test in [
        "passes_the_conformance_suite_in_process",
        "the_built_library_passes_the_conformance_suite",
        "bad_options_fail_construction_with_one_line_naming_the_key",
    ] {
        assert!(
            stdout.contains(&format!("{test} ... ok")),
            "{test} did not pass:\n{stdout}"
        );
    }
}
