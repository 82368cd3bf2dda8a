//! The fs backend's boundary ratio, in pairs (see `statehost_tests::paired`).
//! Files go to `$STATEHOST_BENCH_DIR`.

use statehost::backend::InProcess;
use statehost::plugin::LoadedBackend;
use statehost_fs::FsBackend;
use statehost_plugin_api::Capabilities;
use statehost_tests::{bench_dir, paired, release_library};

fn main() {
    let root = bench_dir();
    let so = LoadedBackend::load(
        release_library("statehost_fs"),
        &serde_json::json!({"root": root.path().join("so")}),
        None,
    )
    .unwrap();
    let local = InProcess::new(
        FsBackend::open(root.path().join("in-process")).unwrap(),
        Capabilities::LIST,
    );
    paired::run("fs", &so, &local);
}
