//! The plugin boundary with the fs backend: through the loaded `.so`,
//! in-process through the trait, and the floor: the same bytes written to a
//! temporary file, flushed, renamed to a new name and the directory
//! flushed (what the fs backend does with `fsync = true`), or read back.
//!
//! Files go to `$STATEHOST_BENCH_DIR` (set it to /dev/shm for tmpfs), else
//! the system temp directory.

use std::fs;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statehost::plugin::LoadedBackend;
use statehost_fs::FsBackend;
use statehost_plugin_api::conformance::write_id;
use statehost_plugin_api::{Serialized, StateBackend, StateKey, TaskScope};
use statehost_tests::{
    BENCH_SIZES, bench_dir, fs_floor_write, json_string_of, release_library, size_label,
    timed_floor_writes, timed_lent_writes, timed_writes,
};

fn boundary(c: &mut Criterion) {
    let root = bench_dir();
    let loaded = LoadedBackend::load(
        release_library("statehost_fs"),
        &serde_json::json!({"root": root.path().join("so")}),
        None,
    )
    .unwrap();
    let in_process = FsBackend::open(root.path().join("in-process")).unwrap();
    let floor_dir = root.path().join("floor");
    fs::create_dir_all(&floor_dir).unwrap();
    let floor_file = floor_dir.join("value");
    let scope = TaskScope::new("bench_dag", "scheduled__2026-11-21", "extract", -1).unwrap();
    let at = StateKey::task(&scope, "key");

    for size in BENCH_SIZES {
        let value = json_string_of(size).to_string();
        let mut group = c.benchmark_group(format!("boundary/fs/serialize/{}", size_label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter("so"), |b| {
            b.iter_custom(|iters| timed_writes(&loaded, at, &value, iters))
        });
        group.bench_function(BenchmarkId::from_parameter("so-lent"), |b| {
            b.iter_custom(|iters| timed_lent_writes(&loaded, at, &value, iters))
        });
        group.bench_function(BenchmarkId::from_parameter("trait"), |b| {
            b.iter_custom(|iters| timed_writes(&in_process, at, &value, iters))
        });
        group.bench_function(BenchmarkId::from_parameter("floor"), |b| {
            b.iter_custom(|iters| timed_floor_writes(&floor_dir, value.as_bytes(), iters))
        });
        group.finish();

        let mut group = c.benchmark_group(format!("boundary/fs/deserialize/{}", size_label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        let Serialized::Reference(r) = loaded.serialize(at, write_id(), &value).unwrap() else {
            panic!("fs stores every value by default")
        };
        let Serialized::Reference(r_local) = in_process.serialize(at, write_id(), &value).unwrap()
        else {
            panic!("fs stores every value by default")
        };
        group.bench_function(BenchmarkId::from_parameter("so"), |b| {
            let backend: &dyn StateBackend = &loaded;
            b.iter(|| backend.deserialize(black_box(&r), Some(at)).unwrap())
        });
        group.bench_function(BenchmarkId::from_parameter("so-lent"), |b| {
            let backend: &dyn statehost::backend::Backend = &loaded;
            b.iter(|| backend.deserialize(black_box(&r), Some(at)).unwrap())
        });
        group.bench_function(BenchmarkId::from_parameter("trait"), |b| {
            let backend: &dyn StateBackend = &in_process;
            b.iter(|| backend.deserialize(black_box(&r_local), Some(at)).unwrap())
        });
        group.bench_function(BenchmarkId::from_parameter("floor"), |b| {
            fs_floor_write(&floor_dir, &floor_file, value.as_bytes());
            b.iter(|| fs::read_to_string(black_box(&floor_file)).unwrap())
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = boundary
}
criterion_main!(benches);
