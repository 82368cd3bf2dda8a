//! The fs backend's boundary ratio and its overhead above the bare file
//! operations, in pairs (see `statehost_tests::paired`). Files go to
//! `$STATEHOST_BENCH_DIR`.

use std::time::{Duration, Instant};

use statehost::backend::InProcess;
use statehost::plugin::LoadedBackend;
use statehost_fs::FsBackend;
use statehost_plugin_api::Capabilities;
use statehost_tests::paired::{self, Op};
use statehost_tests::{bench_dir, fs_floor_write, release_library, timed_floor_writes};

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
    let floor_dir = root.path().join("floor");
    std::fs::create_dir_all(&floor_dir).unwrap();
    let target = floor_dir.join("value");
    // Writes of the value's bytes as the fs backend makes them durable, or
    // reads of them back into memory as text.
    let floor = |op: Op, value: &str, calls: u64| -> Duration {
        match op {
            Op::Serialize => timed_floor_writes(&floor_dir, value.as_bytes(), calls),
            Op::Deserialize => {
                fs_floor_write(&floor_dir, &target, value.as_bytes());
                let start = Instant::now();
                for _ in 0..calls {
                    std::hint::black_box(std::fs::read_to_string(&target).unwrap());
                }
                start.elapsed()
            }
        }
    };
    paired::run("fs", &so, &local, Some(&floor));
}
