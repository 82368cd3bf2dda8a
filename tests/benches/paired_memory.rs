//! The memory backend's boundary ratio, in pairs (see `statehost_tests::paired`).

use statehost::backend::InProcess;
use statehost::plugin::LoadedBackend;
use statehost_memory::MemoryBackend;
use statehost_plugin_api::Capabilities;
use statehost_tests::{paired, release_library};

fn main() {
    let so = LoadedBackend::load(
        release_library("statehost_memory"),
        &serde_json::Value::Null,
        None,
    )
    .unwrap();
    let local = InProcess::new(MemoryBackend::new(), Capabilities::LIST);
    paired::run("memory", &so, &local, None);
}
