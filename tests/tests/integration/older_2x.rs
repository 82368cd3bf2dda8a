//! The 2.x promise, both ways: the host serves a plugin built against the
//! frozen 2.2 boundary (`compat/plugin-api-2.2`), and a current plugin
//! answers a host built against it. `abi_stable` refuses a library whose
//! tables are shorter than the host's (a method appended to `AbiBackend`
//! made it refuse every 2.2 plugin: "too many fields"), so these fail the
//! day the boundary's layout changes within 2.x.

use std::sync::Arc;

use abi_stable::library::{RootModule, lib_header_from_path};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr};
use plugin_api_2_2 as frozen;
use serde_json::json;
use statehost::StateHost;
use statehost::backend::Backend;
use statehost::store::{SqliteLocation, SqliteStore};
use statehost_plugin_api::conformance::write_id;
use statehost_plugin_api::{ErrorKind, StateKey, TaskScope};
use statehost_tests::{exercise_accessors, library, loaded, short_grace};

fn scope() -> TaskScope {
    TaskScope::new("dag", "run", "task", -1).unwrap()
}

#[test]
fn a_2_2_plugin_is_served_through_the_frozen_methods() {
    let backend = loaded("fixture_v22_memory", json!({}), None);
    assert!(!backend.is_legacy());
    assert_eq!(backend.metadata().plugin_api_version, "2.2.0");

    // The host's interface: each call the accessors make.
    let (scope, other) = (scope(), TaskScope::new("dag", "run", "other", -1).unwrap());
    let at = StateKey::task(&scope, "k");
    let reference = backend
        .serialize_lent(at, write_id(), "\"v\"")
        .unwrap()
        .expect("the fixture keeps every value outside")
        .to_string();
    let text = backend.deserialize(&reference, Some(at)).unwrap();
    assert_eq!(text.as_bytes(), b"\"v\"");
    let err = backend
        .deserialize(&reference, Some(StateKey::task(&other, "k")))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        !backend
            .delete_object(&reference, Some(StateKey::task(&other, "k")))
            .unwrap()
    );
    assert!(backend.delete_object(&reference, Some(at)).unwrap());
    assert!(!backend.delete_object(&reference, None).unwrap());

    // The accessors over it.
    let dir = tempfile::tempdir().unwrap();
    let host = StateHost::builder(Arc::new(
        SqliteStore::open(SqliteLocation::File(dir.path().join("meta.db"))).unwrap(),
    ))
    .backend("frozen_memory", backend)
    .settings(short_grace())
    .build();
    exercise_accessors(&host, scope, || {});
}

struct Quiet;

impl frozen::AbiLogger for Quiet {
    fn log(&self, _level: u8, _target: RStr<'_>, _message: RStr<'_>) {}
}

#[test]
fn a_current_plugin_answers_a_2_2_host() {
    let header = lib_header_from_path(library("statehost_memory")).unwrap();
    let module = header
        .init_root_module::<frozen::PluginModuleRef>()
        .unwrap_or_else(|e| panic!("a 2.2 host cannot load a current plugin: {e}"));
    assert_eq!(frozen::PluginModuleRef::NAME, "statehost_plugin");
    let logger = frozen::AbiLogger_TO::from_value(Quiet, TD_Opaque);
    let backend = match (module.new_backend())("null".into(), "{}".into(), logger) {
        RResult::ROk(backend) => backend,
        RResult::RErr(e) => panic!("new_backend: {}", e.message),
    };
    let task = |task_id: &'static str| frozen::AbiScope {
        kind: 0,
        first: "dag".into(),
        run_id: "run".into(),
        task_id: task_id.into(),
        map_index: -1,
    };
    let id = write_id().as_u128();
    let id = frozen::AbiWriteId {
        high: (id >> 64) as u64,
        low: id as u64,
    };
    let reference = match backend.serialize(task("task"), "k".into(), id, "\"v\"".into()) {
        RResult::ROk(ROption::RSome(r)) => r,
        RResult::ROk(ROption::RNone) => panic!("the memory backend keeps every value outside"),
        RResult::RErr(e) => panic!("serialize: {}", e.message),
    };
    let owner = |task_id| {
        ROption::RSome(frozen::AbiOwner {
            scope: task(task_id),
            key: "k".into(),
        })
    };
    match backend.deserialize(reference.as_rstr(), owner("task")) {
        RResult::ROk(value) => assert_eq!(value.as_str(), "\"v\""),
        RResult::RErr(e) => panic!("deserialize: {}", e.message),
    }
    match backend.deserialize(reference.as_rstr(), owner("other")) {
        RResult::ROk(value) => panic!("read {value} as another task's"),
        // Invalid input: the reference names another task.
        RResult::RErr(e) => assert_eq!(e.kind, 4, "{}", e.message),
    }
    // Another task's delete is refused and leaves the object.
    assert!(matches!(
        backend.delete_object(reference.as_rstr(), owner("other")),
        RResult::RErr(_)
    ));
    assert!(matches!(
        backend.deserialize(reference.as_rstr(), ROption::RNone),
        RResult::ROk(_)
    ));
    assert!(matches!(
        backend.delete_object(reference.as_rstr(), owner("task")),
        RResult::ROk(true)
    ));
    assert!(matches!(
        backend.deserialize(reference.as_rstr(), ROption::RNone),
        RResult::RErr(_)
    ));
}
