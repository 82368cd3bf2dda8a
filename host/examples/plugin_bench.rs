//! Quick measurements of the plugin boundary (the full suite lives in the
//! criterion benches):
//!
//! * cold load + construct of each shipped plugin, each sample in a fresh
//!   process;
//! * one `serialize_task_state` / `deserialize_task_state` call with a
//!   1 KiB value through the loaded memory plugin, against the same backend
//!   linked in-process and called through the trait.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo run --release -p statehost --example plugin_bench -- target/release
//! ```

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use statehost::plugin::LoadedBackend;
use statehost_plugin_api::{
    BackendPlugin, HostContext, Options, Serialized, StateBackend, TaskScope,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// In a child: load and construct one plugin, print the microseconds.
fn cold(path: &Path, options: &str) {
    let options: serde_json::Value = serde_json::from_str(options).unwrap();
    let start = Instant::now();
    let backend = LoadedBackend::load(path, &options, None).unwrap();
    let elapsed = start.elapsed();
    black_box(&backend);
    println!("{}", elapsed.as_secs_f64() * 1e6);
}

/// Microseconds per call of `f`, median of `rounds` rounds of `n` calls.
fn per_call(rounds: usize, n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n {
        f();
    }
    let samples = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    median(samples)
}

fn calls(name: &str, backend: &dyn StateBackend) -> (f64, f64) {
    let scope = TaskScope::new("bench_dag", "run", "task", -1).unwrap();
    let value = serde_json::Value::String("x".repeat(1022)).to_string();
    assert_eq!(value.len(), 1024);
    let Serialized::Reference(reference) =
        backend.serialize_task_state(&scope, "k", &value).unwrap()
    else {
        panic!("{name} kept the value inline")
    };
    let set = per_call(15, 100_000, || {
        black_box(
            backend
                .serialize_task_state(&scope, "k", black_box(&value))
                .unwrap(),
        );
    });
    let get = per_call(15, 100_000, || {
        black_box(
            backend
                .deserialize_task_state(black_box(&reference))
                .unwrap(),
        );
    });
    (set, get)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--cold" {
        cold(Path::new(&args[2]), &args[3]);
        return;
    }
    let dir = PathBuf::from(args.get(1).map(String::as_str).unwrap_or("target/release"));
    let state = tempfile::tempdir().unwrap();
    let plugins = [
        ("memory", "null".to_string()),
        ("fs", serde_json::json!({"root": state.path()}).to_string()),
    ];
    println!("cold load + construct, fresh process each, 21 samples:");
    for (name, options) in &plugins {
        let path = dir.join(format!("libstatehost_{name}.so"));
        let samples = (0..21)
            .map(|_| {
                let out = Command::new(std::env::current_exe().unwrap())
                    .args(["--cold", path.to_str().unwrap(), options])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<f64>()
                    .unwrap()
            })
            .collect();
        println!("  {name:<8} median {:>8.1} µs", median(samples));
    }

    let loaded = LoadedBackend::load(
        &dir.join("libstatehost_memory.so"),
        &serde_json::Value::Null,
        None,
    )
    .unwrap();
    let local = <statehost_memory::MemoryBackend as BackendPlugin>::new(
        &Options::default(),
        &HostContext::new(),
    )
    .unwrap();
    let (so_set, so_get) = calls("loaded", &loaded);
    let (in_set, in_get) = calls("in-process", &local);
    println!("memory backend, 1 KiB value, µs per call (median of 15 x 100k):");
    println!(
        "  serialize   .so {so_set:.3}   in-process {in_set:.3}   ratio {:.2}",
        so_set / in_set
    );
    println!(
        "  deserialize .so {so_get:.3}   in-process {in_get:.3}   ratio {:.2}",
        so_get / in_get
    );
}
