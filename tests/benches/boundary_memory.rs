//! The plugin boundary with the memory backend: the same call through the
//! loaded `.so`, through the trait in-process, and as a direct call on the
//! concrete type; and the floor, a plain map insert (serialize) or lookup
//! and copy (deserialize) of the same bytes.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statehost::plugin::LoadedBackend;
use statehost_memory::MemoryBackend;
use statehost_plugin_api::{Serialized, StateBackend, TaskScope, layout};
use statehost_tests::{BENCH_SIZES, json_string_of, release_library, size_label};

fn reference(backend: &dyn StateBackend, scope: &TaskScope, value: &str) -> String {
    match backend.serialize_task_state(scope, "key", value).unwrap() {
        Serialized::Reference(r) => r,
        Serialized::Inline => panic!("the memory backend stores every value by default"),
    }
}

fn boundary(c: &mut Criterion) {
    let loaded = LoadedBackend::load(
        release_library("statehost_memory"),
        &serde_json::Value::Null,
        None,
    )
    .unwrap();
    let in_process = MemoryBackend::new();
    let direct = MemoryBackend::new();
    let scope = TaskScope::new("bench_dag", "scheduled__2026-11-21", "extract", -1).unwrap();

    for size in BENCH_SIZES {
        let value = json_string_of(size).to_string();
        let mut group =
            c.benchmark_group(format!("boundary/memory/serialize/{}", size_label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter("so"), |b| {
            let dyn_backend: &dyn StateBackend = &loaded;
            b.iter(|| dyn_backend.serialize_task_state(&scope, "key", black_box(&value)))
        });
        group.bench_function(BenchmarkId::from_parameter("trait"), |b| {
            let dyn_backend: &dyn StateBackend = &in_process;
            b.iter(|| dyn_backend.serialize_task_state(&scope, "key", black_box(&value)))
        });
        group.bench_function(BenchmarkId::from_parameter("direct"), |b| {
            b.iter(|| direct.serialize_task_state(&scope, "key", black_box(&value)))
        });
        group.bench_function(BenchmarkId::from_parameter("floor"), |b| {
            // The storage work alone: replace the bytes under a ready key.
            let mut map = BTreeMap::new();
            let path = layout::task_object_path(&scope, "key");
            map.insert(path.clone(), String::new());
            b.iter(|| {
                let slot = map.get_mut(black_box(&path)).unwrap();
                slot.clear();
                slot.push_str(black_box(&value));
            })
        });
        group.finish();

        let mut group =
            c.benchmark_group(format!("boundary/memory/deserialize/{}", size_label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        let r_loaded = reference(&loaded, &scope, &value);
        let r_local = reference(&in_process, &scope, &value);
        let r_direct = reference(&direct, &scope, &value);
        group.bench_function(BenchmarkId::from_parameter("so"), |b| {
            let dyn_backend: &dyn StateBackend = &loaded;
            b.iter(|| dyn_backend.deserialize_task_state(black_box(&r_loaded)))
        });
        group.bench_function(BenchmarkId::from_parameter("so-visit"), |b| {
            // What the accessors use: the text is read where the plugin made it.
            let dyn_backend: &dyn StateBackend = &loaded;
            b.iter(|| {
                let mut len = 0;
                dyn_backend
                    .visit_task_state(black_box(&r_loaded), &mut |t| len = t.len())
                    .unwrap();
                len
            })
        });
        group.bench_function(BenchmarkId::from_parameter("trait"), |b| {
            let dyn_backend: &dyn StateBackend = &in_process;
            b.iter(|| dyn_backend.deserialize_task_state(black_box(&r_local)))
        });
        group.bench_function(BenchmarkId::from_parameter("direct"), |b| {
            b.iter(|| direct.deserialize_task_state(black_box(&r_direct)))
        });
        group.bench_function(BenchmarkId::from_parameter("floor"), |b| {
            let mut map = BTreeMap::new();
            map.insert(r_direct.clone(), value.clone());
            b.iter(|| map.get(black_box(&r_direct)).cloned())
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    targets = boundary
}
criterion_main!(benches);
