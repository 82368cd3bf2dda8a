//! The plugin boundary with the memory backend: the same call through the
//! loaded `.so`, through the trait in-process, and as a direct call on the
//! concrete type; and the floor, a plain map insert (serialize) or lookup
//! and copy (deserialize) of the same bytes. Serialize writes a new object
//! each time (as every write does); the objects are deleted between timed
//! batches.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statehost::backend::{Backend, InProcess};
use statehost::plugin::LoadedBackend;
use statehost_memory::MemoryBackend;
use statehost_plugin_api::conformance::write_id;
use statehost_plugin_api::{
    BackendPlugin, Capabilities, Serialized, StateBackend, StateKey, TaskScope, WriteId, layout,
};
use statehost_tests::{
    BENCH_SIZES, json_string_of, release_library, size_label, timed_lent_writes, timed_writes,
};

fn reference(backend: &dyn StateBackend, at: StateKey<'_>, value: &str) -> String {
    match backend.serialize(at, write_id(), value).unwrap() {
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
    // What the accessors call: the host's backend interface, which lends
    // the plugin's buffer instead of copying it.
    let host_side: &dyn Backend = &loaded;
    let host_in_process = InProcess::new(MemoryBackend::new(), Capabilities::LIST);
    let scope = TaskScope::new("bench_dag", "scheduled__2026-11-21", "extract", -1).unwrap();
    let at = StateKey::task(&scope, "key");

    for size in BENCH_SIZES {
        let value = json_string_of(size).to_string();
        let mut group =
            c.benchmark_group(format!("boundary/memory/serialize/{}", size_label(size)));
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
        group.bench_function(BenchmarkId::from_parameter("direct"), |b| {
            b.iter_custom(|iters| timed_writes(&direct, at, &value, iters))
        });
        group.bench_function(BenchmarkId::from_parameter("floor"), |b| {
            // The storage work alone: a new key's path and bytes in a map
            // (ids numbered, not minted: the timed calls get theirs ready).
            let mut map = HashMap::new();
            let (ms, mut n) = (write_id().unix_ms(), 0u128);
            b.iter(|| {
                n += 1;
                let path = layout::object_path(at, WriteId::from_parts(ms, n));
                map.insert(path, black_box(value.as_str()).to_string());
                if map.len() > 1000 {
                    map.clear();
                }
            })
        });
        group.finish();

        let mut group =
            c.benchmark_group(format!("boundary/memory/deserialize/{}", size_label(size)));
        group.throughput(Throughput::Bytes(size as u64));
        let r_loaded = reference(&loaded, at, &value);
        let r_local = reference(&in_process, at, &value);
        let r_direct = reference(&direct, at, &value);
        let r_host = match host_in_process.serialize(at, write_id(), &value).unwrap() {
            Serialized::Reference(r) => r,
            Serialized::Inline => unreachable!(),
        };
        group.bench_function(BenchmarkId::from_parameter("so"), |b| {
            let dyn_backend: &dyn StateBackend = &loaded;
            b.iter(|| dyn_backend.deserialize(black_box(&r_loaded), Some(at)))
        });
        group.bench_function(BenchmarkId::from_parameter("so-lent"), |b| {
            b.iter(|| host_side.deserialize(black_box(&r_loaded), Some(at)))
        });
        group.bench_function(BenchmarkId::from_parameter("trait"), |b| {
            let dyn_backend: &dyn StateBackend = &in_process;
            b.iter(|| dyn_backend.deserialize(black_box(&r_local), Some(at)))
        });
        group.bench_function(BenchmarkId::from_parameter("trait-host"), |b| {
            b.iter(|| host_in_process.deserialize(black_box(&r_host), Some(at)))
        });
        group.bench_function(BenchmarkId::from_parameter("direct"), |b| {
            b.iter(|| direct.deserialize(black_box(&r_direct), Some(at)))
        });
        group.bench_function(BenchmarkId::from_parameter("floor"), |b| {
            let mut map = HashMap::new();
            map.insert(r_direct.clone(), value.clone());
            b.iter(|| map.get(black_box(&r_direct)).cloned())
        });
        group.finish();
    }

    // The fixed cost of a call: a serialize the backend answers with
    // "keep inline" (its threshold is above the value), so no path is built
    // and nothing is stored; through the `.so` and in-process, both through
    // the host's backend interface.
    let options = serde_json::json!({"inline_threshold_bytes": 1 << 20});
    let loaded_inline =
        LoadedBackend::load(release_library("statehost_memory"), &options, None).unwrap();
    let local_inline = InProcess::new(
        <MemoryBackend as BackendPlugin>::new(
            &statehost_plugin_api::Options::new(options.clone()),
            &statehost_plugin_api::HostContext::new(),
        )
        .unwrap(),
        Capabilities::LIST,
    );
    let value = json_string_of(16).to_string();
    // Nothing is stored, so one id serves every call.
    let id = write_id();
    let mut group = c.benchmark_group("boundary/memory/call");
    for (name, backend) in [
        ("so-lent", &loaded_inline as &dyn Backend),
        ("trait", &local_inline as &dyn Backend),
    ] {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let kept = backend.serialize_lent(at, id, black_box(&value)).unwrap();
                assert!(kept.is_none());
            })
        });
    }
    group.finish();
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
