//! The built library, loaded the way the host loads it.
//!
//! `cargo test` builds `libstatehost_template.so` among the test binaries
//! (the crate is a `cdylib`), and these tests load that file through the
//! host's own loader: what passes here is what the host will run.

use serde_json::json;
use statehost_plugin_api::ErrorKind;

fn library() -> std::path::PathBuf {
    statehost_plugin_test::built_library("statehost_template")
        .expect("libstatehost_template.so is not in the target directory; run `cargo build`")
}

#[test]
fn the_built_library_passes_the_conformance_suite() {
    let plugin = statehost_plugin_test::load(library(), json!({"endpoint": "mem://so"})).unwrap();
    assert_eq!(plugin.metadata().name, "template");
    plugin.conformance();
}

#[test]
fn bad_options_fail_construction_with_one_line_naming_the_key() {
    let err = statehost_plugin_test::load(library(), json!({"endpoint": 7})).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("endpoint") && text.contains("string"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    match err {
        statehost_plugin_test::Error::Construct { error, .. } => {
            assert_eq!(error.kind(), ErrorKind::Config)
        }
        other => panic!("expected a construction error, got {other}"),
    }
}
