//! statehost's half of the Airflow side-by-side comparison: the same
//! procedure as `bench/airflow_state_bench.py` (N = 20000 distinct keys of
//! one task: set each, get each, then set+get each; 16 B and 1 KiB values),
//! through the task-state accessor with no backend and with the memory and
//! fs plugins loaded from their `.so`, on the in-memory map store (the same
//! work as the dict that stands in for Airflow's Execution API).
//!
//! Each backend runs with the default call deadline (for fs, calls on a
//! pool thread; the memory plugin declares `never_blocks`, so its calls run
//! on the caller's thread anyway) and, as `<name>-inline`, without one
//! (calls on the caller's thread), so the deadline's cost shows.
//!
//! Writes `target/criterion/side_by_side/statehost.json`; `bench/report.py`
//! prints it next to Airflow's figures. For profiling, `STATEHOST_BENCH_ONLY`
//! runs one backend (`memory-inline`, ...), `STATEHOST_BENCH_SIZE` one value
//! size (`16` or `1024`) and `STATEHOST_BENCH_N` sets N.
//!
//! Every measurement runs `STATEHOST_BENCH_ROUNDS` times (3 by default),
//! each on a fresh host and store, and the median of each figure is kept:
//! this machine's clock moves by tens of per cent between runs, and for
//! seconds at a time. So when `STATEHOST_BENCH_AIRFLOW_PYTHON` names a
//! Python that has Airflow's task SDK (`bench/run.sh` sets it), Airflow's
//! half runs between our rounds, one round of `bench/airflow_state_bench.py`
//! after each of ours: both sides then see the same stretches of the
//! machine, and the ratio of each round pair is kept too
//! (`side_by_side/rounds.json`, whose median `bench/report.py` prints).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use statehost::StateHost;
use statehost::backend::Limits;
use statehost::plugin::LoadedBackend;
use statehost::store::MemoryStore;
use statehost_plugin_api::TaskScope;
use statehost_tests::{bench_dir, json_string_of, release_library, workspace_root};

const SIZES: [usize; 2] = [16, 1024];

const BACKENDS: [&str; 6] = [
    "none",
    "memory",
    "memory-inline",
    "memory-floor",
    "fs",
    "fs-inline",
];

fn main() {
    if std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|filter| !"side_by_side".contains(filter.as_str()))
    {
        return;
    }
    let root = bench_dir();
    let n: usize = std::env::var("STATEHOST_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let only = std::env::var("STATEHOST_BENCH_ONLY").ok();
    let only_size: Option<usize> = std::env::var("STATEHOST_BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok());
    let rounds: usize = std::env::var("STATEHOST_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
        .max(1);
    let airflow = std::env::var_os("STATEHOST_BENCH_AIRFLOW_PYTHON");
    let backends: Vec<&str> = BACKENDS
        .into_iter()
        .filter(|b| only.as_deref().is_none_or(|o| o == *b))
        .collect();
    let sizes: Vec<usize> = SIZES
        .into_iter()
        .filter(|s| only_size.is_none_or(|o| o == *s))
        .collect();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut by_backend = serde_json::Map::new();
        for backend in &backends {
            let mut by_size = serde_json::Map::new();
            for &size in &sizes {
                let t = if *backend == "memory-floor" {
                    floor(n, size)
                } else {
                    let dir = root.path().join(format!("{backend}-{size}-{round}"));
                    accessors(backend, n, size, &dir)
                };
                by_size.insert(
                    size.to_string(),
                    json!({"set": t.set, "get": t.get, "pair": t.pair}),
                );
            }
            by_backend.insert(backend.to_string(), Value::Object(by_size));
        }
        ours.push(Value::Object(by_backend));
        if let Some(python) = &airflow {
            let dir = root.path().join(format!("airflow-{round}"));
            theirs.push(airflow_round(python, &dir, n));
        }
    }
    let medians = medians_of(&ours);
    for (backend, by_size) in medians.as_object().into_iter().flatten() {
        for (size, t) in by_size.as_object().into_iter().flatten() {
            println!(
                "side_by_side/{backend}/{size}B: set {:.2} µs, get {:.2} µs, pair {:.2} µs (median of {rounds})",
                figure(&t["set"]),
                figure(&t["get"]),
                figure(&t["pair"])
            );
        }
    }
    let out = workspace_root().join("target/criterion/side_by_side");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("statehost.json"), medians.to_string()).unwrap();
    if airflow.is_some() {
        std::fs::write(out.join("airflow.json"), medians_of(&theirs).to_string()).unwrap();
        std::fs::write(
            out.join("rounds.json"),
            json!({"statehost": ours, "airflow": theirs}).to_string(),
        )
        .unwrap();
    }
}

/// One round of Airflow's accessors (`bench/airflow_state_bench.py`, every
/// backend and size), in a process of its own.
fn airflow_round(python: &std::ffi::OsStr, dir: &Path, n: usize) -> Value {
    std::fs::create_dir_all(dir).unwrap();
    let script = workspace_root().join("bench/airflow_state_bench.py");
    let output = std::process::Command::new(python)
        .arg(&script)
        .arg(dir)
        .arg(n.to_string())
        .env("STATEHOST_BENCH_ROUNDS", "1")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        output.status
    );
    let _ = std::fs::remove_dir_all(dir);
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{} printed no JSON: {e}", script.display()))
}

fn figure(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The median over rounds of every figure (backend, size, op) of the first
/// round.
fn medians_of(rounds: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for (backend, by_size) in rounds[0].as_object().into_iter().flatten() {
        let mut sizes = serde_json::Map::new();
        for (size, ops) in by_size.as_object().into_iter().flatten() {
            let mut figures = serde_json::Map::new();
            for op in ops.as_object().into_iter().flatten().map(|(op, _)| op) {
                let mut all: Vec<f64> = rounds
                    .iter()
                    .filter_map(|r| r[backend][size][op].as_f64())
                    .collect();
                all.sort_by(f64::total_cmp);
                figures.insert(op.clone(), json!(all[all.len() / 2]));
            }
            sizes.insert(size.clone(), Value::Object(figures));
        }
        out.insert(backend.clone(), Value::Object(sizes));
    }
    Value::Object(out)
}

/// Microseconds per operation of one round.
struct Timing {
    set: f64,
    get: f64,
    pair: f64,
}

/// Times `f` over every key, in µs per key.
fn per_key(keys: &[String], mut f: impl FnMut(&str)) -> f64 {
    let start = Instant::now();
    for k in keys {
        f(k);
    }
    start.elapsed().as_secs_f64() * 1e6 / keys.len() as f64
}

/// One round through the task-state accessor: N new keys set, read, then
/// set and read again.
fn accessors(backend: &str, n: usize, size: usize, dir: &std::path::Path) -> Timing {
    let (name, inline) = match backend.strip_suffix("-inline") {
        Some(name) => (name, true),
        None => (backend, false),
    };
    let mut builder = StateHost::builder(Arc::new(MemoryStore::new())).limits(Limits {
        deadline: if inline {
            None
        } else {
            Limits::default().deadline
        },
        ..Limits::default()
    });
    if name != "none" {
        let options = match name {
            "fs" => json!({"root": dir}),
            _ => serde_json::Value::Null,
        };
        let library = release_library(&format!("statehost_{name}"));
        let b = LoadedBackend::load(library, &options, None).unwrap();
        builder = builder.backend(name, Arc::new(b));
    }
    let host = builder.build();
    let state = host
        .task_state(TaskScope::new("bench_dag", "scheduled__2026-11-21", "extract", -1).unwrap());
    let value = json_string_of(size);
    let keys: Vec<String> = (0..n).map(|i| format!("key-{i}")).collect();
    let set = per_key(&keys, |k| state.set(k, &value).unwrap());
    let get = per_key(&keys, |k| {
        assert_eq!(state.get(k).unwrap().as_ref(), Some(&value));
    });
    let pair = per_key(&keys, |k| {
        state.set(k, &value).unwrap();
        state.get(k).unwrap();
    });
    Timing { set, get, pair }
}

/// The least work a memory-backend pair can do in this design, in plain
/// maps on one thread, without a check, a lock or the plugin boundary: a set
/// renders the value, mints a write id, stores the value under a new path,
/// writes the row's envelope and removes the object the row pointed at; a
/// get reads the row, takes the reference out of its envelope, copies the
/// value and parses it. Values are strings that need no escaping, rendered
/// and parsed as quoted text, as the accessors' fast path does. What the
/// accessors cost above this is the price of the checks, the boundary and
/// the consistency rules.
fn floor(n: usize, size: usize) -> Timing {
    use std::collections::HashMap;
    use std::hint::black_box;
    use std::time::{SystemTime, UNIX_EPOCH};

    use statehost_plugin_api::{StateKey, WriteId, layout};

    let scope = TaskScope::new("bench_dag", "scheduled__2026-11-21", "extract", -1).unwrap();
    let value = json_string_of(size);
    let plain = value.as_str().unwrap().to_string();
    let keys: Vec<String> = (0..n).map(|i| format!("key-{i}")).collect();
    type Map = HashMap<String, String, rustc_hash::FxBuildHasher>;
    let (mut objects, mut rows) = (Map::default(), Map::default());
    let mut random = 0x9e37_79b9_7f4a_7c15_u64;
    const MARK: &str = "{\"__airflow_state_ref__\": \"";
    let mut set = |rows: &mut Map, objects: &mut Map, key: &str| {
        // The JSON of a string that needs no escaping: itself in quotes.
        let text = format!("\"{}\"", black_box(&plain));
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let id = WriteId::from_parts(ms, u128::from(random) << 10);
        let path = layout::object_path(StateKey::task(&scope, key), id);
        let envelope = format!("{MARK}{path}\"}}");
        objects.insert(path, text);
        if let Some(old) = rows.insert(key.to_string(), envelope) {
            objects.remove(&old[MARK.len()..old.len() - 2]);
        }
    };
    let get = |rows: &Map, objects: &Map, key: &str| {
        let row = rows.get(key).unwrap().clone();
        let text = objects[&row[MARK.len()..row.len() - 2]].clone();
        serde_json::Value::String(text[1..text.len() - 1].to_string())
    };
    let set_us = per_key(&keys, |k| set(&mut rows, &mut objects, k));
    let get_us = per_key(&keys, |k| assert_eq!(get(&rows, &objects, k), value));
    let pair = per_key(&keys, |k| {
        set(&mut rows, &mut objects, k);
        black_box(get(&rows, &objects, k));
    });
    Timing {
        set: set_us,
        get: get_us,
        pair,
    }
}
