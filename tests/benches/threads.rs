//! Throughput of set+get pairs on the memory plugin (loaded from its `.so`)
//! and the in-memory map store, from 1 and from 2 threads, each thread on
//! its own task instance (as concurrent tasks are). Criterion reports the
//! wall time per pair; the throughput ratio is time(1 thread) / time(2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statehost::StateHost;
use statehost::config::StateStoreSettings;
use statehost::memstore::MemoryStore;
use statehost::plugin::LoadedBackend;
use statehost_plugin_api::{StateBackend, TaskScope};
use statehost_tests::{json_string_of, release_library};

fn threads(c: &mut Criterion) {
    let loaded = LoadedBackend::load(
        release_library("statehost_memory"),
        &serde_json::Value::Null,
        None,
    )
    .unwrap();
    let host = StateHost::from_parts(
        Some(("memory".into(), Arc::new(loaded) as Arc<dyn StateBackend>)),
        Box::new(MemoryStore::new()),
        StateStoreSettings::default(),
    );
    let value = json_string_of(1 << 10);
    let mut group = c.benchmark_group("threads/memory/pair/1KiB");
    group.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        group.bench_function(BenchmarkId::from_parameter(threads), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads as u64);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let state = host.task_state(
                            TaskScope::new("bench_dag", "run", format!("task_{t}"), -1).unwrap(),
                        );
                        let value = &value;
                        s.spawn(move || {
                            for i in 0..per_thread {
                                let key = if i % 2 == 0 { "a" } else { "b" };
                                state.set(key, value).unwrap();
                                state.get(key).unwrap();
                            }
                        });
                    }
                });
                let elapsed = start.elapsed();
                // Report time per pair in total, so throughput compares directly.
                Duration::from_secs_f64(
                    elapsed.as_secs_f64() * iters as f64 / (per_thread * threads as u64) as f64,
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = threads
}
criterion_main!(benches);
