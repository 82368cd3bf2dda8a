//! What replacing a value costs now that every write is an object of its
//! own: sets of fresh keys (nothing replaced) against sets that overwrite
//! one key (each replacing an object, which is deleted a call deadline
//! later), for the fs plugin and the object_store plugin on `file://`
//! (release `.so`, files in `$STATEHOST_BENCH_DIR` or the temp directory),
//! on the in-memory map store so that the backend is what is measured.
//!
//! "overwrite" is the caller's time per set; "overwrite + delete" also
//! waits until every replaced object is deleted (`StateHost::flush`), so the
//! difference to "fresh" is the cost of the delete. Medians of five rounds;
//! prints a table and writes `target/criterion/overwrite/results.json`.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use statehost::StateHost;
use statehost::plugin::LoadedBackend;
use statehost::store::MemoryStore;
use statehost_plugin_api::TaskScope;
use statehost_tests::{bench_dir, json_string_of, release_library, workspace_root};

const N: usize = 1000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per_set(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e6 / N as f64
}

fn measure(host: &StateHost, size: usize) -> (f64, f64, f64) {
    let value = json_string_of(size);
    let (mut fresh, mut over, mut with_delete) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..6 {
        let state =
            host.task_state(TaskScope::new("bench", format!("run{round}"), "t", -1).unwrap());
        let start = Instant::now();
        for i in 0..N {
            state.set(&format!("k{i}"), &value).unwrap();
        }
        let f = per_set(start);
        let start = Instant::now();
        for _ in 0..N {
            state.set("same", &value).unwrap();
        }
        let o = per_set(start);
        host.flush();
        let start = Instant::now();
        for _ in 0..N {
            state.set("same", &value).unwrap();
        }
        host.flush();
        let d = per_set(start);
        state.clear(false).unwrap();
        if round > 0 {
            fresh.push(f);
            over.push(o);
            with_delete.push(d);
        }
    }
    (median(fresh), median(over), median(with_delete))
}

fn main() {
    if std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|f| !"overwrite".contains(f.as_str()))
    {
        return;
    }
    let root = bench_dir();
    let mut results = Vec::new();
    println!(
        "{:<14} {:>6} {:>10} {:>10} {:>18}",
        "backend", "size", "fresh µs", "overwrite", "overwrite+delete"
    );
    for (name, library, options) in [
        (
            "fs",
            "statehost_fs",
            json!({"root": root.path().join("fs")}),
        ),
        (
            "object_store",
            "statehost_object_store",
            json!({"url": format!("file://{}/os", root.path().display())}),
        ),
    ] {
        let backend = LoadedBackend::load(release_library(library), &options, None).unwrap();
        let host = StateHost::builder(Arc::new(MemoryStore::new()))
            .backend(name, Arc::new(backend))
            .build();
        for size in [16usize, 1024] {
            let (fresh, over, with_delete) = measure(&host, size);
            println!("{name:<14} {size:>6} {fresh:>10.1} {over:>10.1} {with_delete:>18.1}");
            results.push(json!({
                "backend": name, "size": size,
                "fresh_us": fresh, "overwrite_us": over, "overwrite_delete_us": with_delete,
            }));
        }
    }
    let out = workspace_root().join("target/criterion/overwrite");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.json"), Value::Array(results).to_string()).unwrap();
}
