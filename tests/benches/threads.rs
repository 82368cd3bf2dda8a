//! Throughput of set+get pairs on the memory plugin (loaded from its `.so`)
//! and the in-memory map store, from 1 and from 2 threads, each thread on
//! its own task instance (as concurrent tasks are). Criterion reports the
//! wall time per pair; the throughput ratio is time(1 thread) / time(2).
//!
//! The worker threads live for the whole benchmark and are handed batches,
//! so thread start-up is not part of what is measured. A second group runs
//! the same split on a loop that shares nothing at all (render a 1 KiB JSON
//! value to text and parse it back): how far allocation-heavy work scales on
//! this machine and allocator, whatever statehost does.
//!
//! `STATEHOST_BENCH_LABEL=x` prefixes the group names (`x/threads/...`), so
//! a run under different allocator settings keeps its own results.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statehost::plugin::LoadedBackend;
use statehost::store::MemoryStore;
use statehost::{StateHost, TaskState};
use statehost_plugin_api::TaskScope;
use statehost_tests::{json_string_of, release_library};

type Job = Arc<dyn Fn(usize, u64) + Send + Sync>;

/// Threads that run `job(thread, n)` when told, between two barriers.
struct Workers {
    go: Vec<mpsc::Sender<u64>>,
    start: Arc<Barrier>,
    done: Arc<Barrier>,
}

impl Workers {
    fn new(threads: usize, job: Job) -> Workers {
        let start = Arc::new(Barrier::new(threads + 1));
        let done = Arc::new(Barrier::new(threads + 1));
        let go = (0..threads)
            .map(|t| {
                let (tx, rx) = mpsc::channel::<u64>();
                let (start, done, job) = (start.clone(), done.clone(), job.clone());
                std::thread::spawn(move || {
                    while let Ok(n) = rx.recv() {
                        start.wait();
                        job(t, n);
                        done.wait();
                    }
                });
                tx
            })
            .collect();
        Workers { go, start, done }
    }

    /// Wall time for `total` pairs split evenly over the threads.
    fn run(&self, total: u64) -> Duration {
        let per_thread = total.div_ceil(self.go.len() as u64);
        for tx in &self.go {
            tx.send(per_thread).unwrap();
        }
        self.start.wait();
        let begin = Instant::now();
        self.done.wait();
        let elapsed = begin.elapsed();
        // Scale to exactly `total` pairs.
        elapsed.mul_f64(total as f64 / (per_thread * self.go.len() as u64) as f64)
    }
}

fn threads(c: &mut Criterion) {
    let loaded = LoadedBackend::load(
        release_library("statehost_memory"),
        &serde_json::Value::Null,
        None,
    )
    .unwrap();
    let host = StateHost::builder(Arc::new(MemoryStore::new()))
        .backend("memory", Arc::new(loaded))
        .build();
    let label = std::env::var("STATEHOST_BENCH_LABEL")
        .map(|l| format!("{l}/"))
        .unwrap_or_default();
    let states: Vec<TaskState> = (0..2)
        .map(|t| {
            host.task_state(TaskScope::new("bench_dag", "run", format!("task_{t}"), -1).unwrap())
        })
        .collect();
    let pairs: Job = Arc::new(move |t, n| {
        let value = json_string_of(1 << 10);
        for i in 0..n {
            let key = if i % 2 == 0 { "a" } else { "b" };
            states[t].set(key, &value).unwrap();
            states[t].get(key).unwrap();
        }
    });
    let json_only: Job = Arc::new(|_, n| {
        let value = json_string_of(1 << 10);
        for _ in 0..n {
            let text = value.to_string();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            std::hint::black_box(back);
        }
    });
    for (name, job) in [
        ("memory/pair", pairs),
        ("serde_json/render+parse", json_only),
    ] {
        let mut group = c.benchmark_group(format!("{label}threads/{name}/1KiB"));
        group.throughput(Throughput::Elements(1));
        for threads in [1usize, 2] {
            let workers = Workers::new(threads, job.clone());
            group.bench_function(BenchmarkId::from_parameter(threads), |b| {
                b.iter_custom(|iters| workers.run(iters))
            });
        }
        group.finish();
    }
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
