//! Accessor set and get, µs per operation, one thread: the memory and fs
//! plugins (loaded from their `.so`) and no backend, on the SQLite store as
//! a file and in memory. 16-byte string values, 2,000 keys per round.
//!
//! ```sh
//! cargo build --release --workspace
//! cargo run --release -p statehost --example state_bench -- target/release
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use statehost::StateHost;
use statehost::config::StateStoreSettings;
use statehost::plugin::LoadedBackend;
use statehost::store::{SqliteLocation, SqliteStore};
use statehost_plugin_api::{StateBackend, TaskScope};

const KEYS: usize = 2_000;
const ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/release".into()),
    );
    let tmp = tempfile::tempdir().unwrap();
    let value = json!("0123456789abcd"); // 16 bytes of JSON
    println!(
        "{:<8} {:<14} {:>10} {:>10}",
        "backend", "store", "set µs", "get µs"
    );
    for backend in ["none", "memory", "fs"] {
        for store in ["sqlite file", "sqlite memory"] {
            let run = tmp
                .path()
                .join(format!("{backend}-{}", store.replace(' ', "-")));
            std::fs::create_dir_all(&run).unwrap();
            let loaded = match backend {
                "none" => None,
                name => {
                    let options = if name == "fs" {
                        json!({"root": "objects"})
                    } else {
                        json!(null)
                    };
                    let lib = dir.join(format!("libstatehost_{name}.so"));
                    let b = LoadedBackend::load(&lib, &options, Some(&run)).unwrap();
                    Some((name.to_string(), Arc::new(b) as Arc<dyn StateBackend>))
                }
            };
            let location = if store == "sqlite file" {
                SqliteLocation::File(run.join("meta.db"))
            } else {
                SqliteLocation::Memory
            };
            let host = StateHost::from_parts(
                loaded,
                Box::new(SqliteStore::open(location).unwrap()),
                StateStoreSettings::default(),
            );
            let state = host.task_state(TaskScope::new("bench", "run", "task", -1).unwrap());
            let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
            let mut sets = Vec::new();
            let mut gets = Vec::new();
            for _ in 0..ROUNDS {
                let start = Instant::now();
                for key in &keys {
                    state.set(key, &value).unwrap();
                }
                sets.push(start.elapsed().as_secs_f64() * 1e6 / KEYS as f64);
                let start = Instant::now();
                for key in &keys {
                    assert!(state.get(key).unwrap().is_some());
                }
                gets.push(start.elapsed().as_secs_f64() * 1e6 / KEYS as f64);
            }
            println!(
                "{backend:<8} {store:<14} {:>10.1} {:>10.1}",
                median(sets),
                median(gets)
            );
        }
    }
}
