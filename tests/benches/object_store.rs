//! The object_store plugin (release `.so`): set and get µs per operation
//! for 1 KiB and 1 MiB values, without codecs and with zstd + AES-256-GCM,
//! against `file://` (in `$STATEHOST_BENCH_DIR` or the temp directory) and,
//! when `STATEHOST_TEST_S3` names `moto_server`, against moto's S3 server on
//! loopback. Medians of several rounds; prints a table and writes
//! `target/criterion/object_store/results.json`.

use std::time::Instant;

use serde_json::{Value, json};
use statehost::plugin::LoadedBackend;
use statehost_plugin_api::conformance::write_id;
use statehost_plugin_api::{Serialized, StateBackend, StateKey, TaskScope};
use statehost_tests::{
    bench_dir, json_string_of, moto_options, release_library, start_moto, workspace_root,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measure(backend: &dyn StateBackend, size: usize, ops: usize) -> (f64, f64) {
    let scope = TaskScope::new("bench", "run", "task", -1).unwrap();
    let value = json_string_of(size).to_string();
    let mut sets = Vec::new();
    let mut gets = Vec::new();
    let at = StateKey::task(&scope, "k");
    let mut written = Vec::new();
    for round in 0..5 {
        let start = Instant::now();
        for _ in 0..ops {
            if let Serialized::Reference(r) = backend.serialize(at, write_id(), &value).unwrap() {
                written.push(r);
            }
        }
        if round > 0 {
            sets.push(start.elapsed().as_secs_f64() * 1e6 / ops as f64);
        }
        let reference = written.last().cloned().unwrap_or_default();
        let start = Instant::now();
        for _ in 0..ops {
            std::hint::black_box(backend.deserialize(&reference, Some(at)).unwrap());
        }
        if round > 0 {
            gets.push(start.elapsed().as_secs_f64() * 1e6 / ops as f64);
        }
        for r in written.drain(..) {
            backend.delete_object(&r, Some(at)).unwrap();
        }
    }
    (median(sets), median(gets))
}

fn main() {
    if std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|f| !"object_store".contains(f.as_str()))
    {
        return;
    }
    // SAFETY: set before the plugin, or any other thread, reads it.
    unsafe { std::env::set_var("STATEHOST_BENCH_KEY", "3c".repeat(32)) };
    let dir = bench_dir();
    let mut targets: Vec<(String, Value)> = vec![(
        "file".into(),
        json!({"url": format!("file://{}/objects", dir.path().display())}),
    )];
    let moto = std::env::var("STATEHOST_TEST_S3")
        .ok()
        .filter(|m| !m.is_empty());
    let _server = moto.map(|m| {
        let (server, port) = start_moto(&m, "statehost-bench");
        targets.push(("moto s3".into(), moto_options(port, "statehost-bench")));
        server
    });
    let mut results = Vec::new();
    println!(
        "{:<8} {:<11} {:>6} {:>12} {:>12}",
        "store", "codecs", "size", "set µs", "get µs"
    );
    for (name, options) in &targets {
        for codecs in ["none", "zstd+aes"] {
            let mut options = options.clone();
            if codecs != "none" {
                options["compression"] = json!("zstd");
                options["encryption_key_env"] = json!("STATEHOST_BENCH_KEY");
            }
            let backend =
                LoadedBackend::load(release_library("statehost_object_store"), &options, None)
                    .unwrap();
            for (size, label) in [(1 << 10, "1KiB"), (1 << 20, "1MiB")] {
                let ops = match (name.as_str(), size) {
                    ("file", 1024) => 400,
                    ("file", _) => 40,
                    (_, 1024) => 60,
                    _ => 10,
                };
                let (set, get) = measure(&backend, size, ops);
                println!("{name:<8} {codecs:<11} {label:>6} {set:>12.1} {get:>12.1}");
                results.push(json!({"store": name, "codecs": codecs, "size": label, "set_us": set, "get_us": get}));
            }
        }
    }
    let out = workspace_root().join("target/criterion/object_store");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.json"), Value::Array(results).to_string()).unwrap();
}
