//! Task-state accessors, one thread: set, get, and a set+get pair, for no
//! backend and the memory and fs plugins (loaded from their `.so`), on the
//! SQLite store (file and in-memory) and the in-memory map store. The fs
//! plugin's root and the SQLite file go to `$STATEHOST_BENCH_DIR`, else the
//! system temp directory.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statehost::config::StateStoreSettings;
use statehost::plugin::LoadedBackend;
use statehost::store::{MemoryStore, MetadataStore, SqliteLocation, SqliteStore};
use statehost::{StateHost, TaskState};
use statehost_plugin_api::TaskScope;
use statehost_tests::{BENCH_SIZES, bench_dir, json_string_of, release_library, size_label};

const BACKENDS: [&str; 3] = ["none", "memory", "fs"];
const STORES: [&str; 3] = ["sqlite-file", "sqlite-memory", "map"];

fn host(backend: &str, store: &str, dir: &std::path::Path) -> StateHost {
    let store: Arc<dyn MetadataStore> = match store {
        "sqlite-file" => {
            Arc::new(SqliteStore::open(SqliteLocation::File(dir.join("meta.db"))).unwrap())
        }
        "sqlite-memory" => Arc::new(SqliteStore::open(SqliteLocation::Memory).unwrap()),
        _ => Arc::new(MemoryStore::new()),
    };
    let settings = StateStoreSettings {
        // Measure every size inline too.
        max_value_bytes: 0,
        ..StateStoreSettings::default()
    };
    let mut builder = StateHost::builder(store).settings(settings);
    if backend != "none" {
        let options = match backend {
            "fs" => serde_json::json!({"root": dir.join("objects")}),
            _ => serde_json::Value::Null,
        };
        let library = release_library(&format!("statehost_{backend}"));
        let loaded = LoadedBackend::load(library, &options, None).unwrap();
        builder = builder.backend(backend, Arc::new(loaded));
    }
    builder.build()
}

fn accessors(c: &mut Criterion) {
    let scope = TaskScope::new("bench_dag", "scheduled__2026-11-21", "extract", -1).unwrap();
    for backend in BACKENDS {
        for store in STORES {
            let dir = bench_dir();
            let state: TaskState = host(backend, store, dir.path()).task_state(scope.clone());
            for size in BENCH_SIZES {
                let value = json_string_of(size);
                let mut group =
                    c.benchmark_group(format!("accessor/{backend}/{store}/{}", size_label(size)));
                group.throughput(Throughput::Elements(1));
                state.set("key", &value).unwrap();
                group.bench_function(BenchmarkId::from_parameter("set"), |b| {
                    b.iter(|| state.set("key", black_box(&value)).unwrap())
                });
                group.bench_function(BenchmarkId::from_parameter("get"), |b| {
                    b.iter(|| state.get(black_box("key")).unwrap())
                });
                group.bench_function(BenchmarkId::from_parameter("pair"), |b| {
                    b.iter(|| {
                        state.set("key", black_box(&value)).unwrap();
                        state.get(black_box("key")).unwrap()
                    })
                });
                group.finish();
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(15)
        .warm_up_time(std::time::Duration::from_millis(200))
        .measurement_time(std::time::Duration::from_millis(800));
    targets = accessors
}
criterion_main!(benches);
