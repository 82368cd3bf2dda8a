//! The metadata stores under concurrent workers: 1, 4 and 16 threads, each
//! a task of its own, doing set then get of a 16-byte value (no backend, so
//! the store is all that is measured), on the SQLite file (WAL, with
//! `synchronous` full (with this process's writes sharing commits, and
//! each alone) and normal, on a real disk: `$STATEHOST_DISK_DIR`,
//! else `target/bench-disk`, never tmpfs, where a flush costs nothing) and, when
//! `STATEHOST_TEST_POSTGRES_URL` is set, PostgreSQL over loopback (in a
//! schema of its own). Prints set and get µs per operation (mean latency
//! seen by a worker) and total throughput; writes
//! `target/criterion/stores/results.json`.

use std::time::Instant;

use serde_json::{Value, json};
use std::sync::Arc;

use statehost::StateHost;
use statehost::store::{MetadataStore, SqliteLocation, SqliteStore, Synchronous};
use statehost_plugin_api::TaskScope;
use statehost_tests::workspace_root;

const OPS_PER_WORKER: usize = 400;

/// A temporary directory on a real disk.
fn disk_dir() -> tempfile::TempDir {
    let base = std::env::var_os("STATEHOST_DISK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/bench-disk"));
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn run(store: Arc<dyn MetadataStore>, workers: usize) -> (f64, f64, f64) {
    let host = StateHost::builder(store).build();
    let value = json!("0123456789abcd");
    let start = Instant::now();
    let per_worker: Vec<(f64, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let host = host.clone();
                let value = &value;
                s.spawn(move || {
                    let state = host
                        .task_state(TaskScope::new("bench", "run", format!("w{w}"), -1).unwrap());
                    let (mut set, mut get) = (0.0, 0.0);
                    for i in 0..OPS_PER_WORKER {
                        let key = format!("k{}", i % 16);
                        let t = Instant::now();
                        state.set(&key, value).unwrap();
                        set += t.elapsed().as_secs_f64();
                        let t = Instant::now();
                        state.get(&key).unwrap();
                        get += t.elapsed().as_secs_f64();
                    }
                    (set, get)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let n = (workers * OPS_PER_WORKER) as f64;
    let set_us = per_worker.iter().map(|p| p.0).sum::<f64>() / n * 1e6;
    let get_us = per_worker.iter().map(|p| p.1).sum::<f64>() / n * 1e6;
    (set_us, get_us, 2.0 * n / wall)
}

fn main() {
    if std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|f| !"stores".contains(f.as_str()))
    {
        return;
    }
    let dir = disk_dir();
    let pg = std::env::var("STATEHOST_TEST_POSTGRES_URL")
        .ok()
        .map(|base| {
            let schema = format!("statehost_bench_{}", std::process::id());
            let mut client = postgres::Client::connect(&base, postgres::NoTls).unwrap();
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
                ))
                .unwrap();
            let sep = if base.contains('?') { '&' } else { '?' };
            (
                base.clone(),
                schema.clone(),
                format!("{base}{sep}options=-csearch_path%3D{schema}"),
            )
        });
    let mut results = Vec::new();
    println!(
        "{:<18} {:>8} {:>10} {:>10} {:>14}",
        "store", "workers", "set µs", "get µs", "ops/s"
    );
    for workers in [1usize, 4, 16] {
        let mut stores: Vec<(&str, Arc<dyn MetadataStore>)> = vec![
            (
                "sqlite-full",
                Arc::new(
                    SqliteStore::open(SqliteLocation::File(
                        dir.path().join(format!("full{workers}.db")),
                    ))
                    .unwrap(),
                ),
            ),
            (
                "sqlite-full-alone",
                Arc::new(
                    SqliteStore::open(SqliteLocation::File(
                        dir.path().join(format!("alone{workers}.db")),
                    ))
                    .unwrap()
                    .with_group_commit(false),
                ),
            ),
            (
                "sqlite-normal",
                Arc::new(
                    SqliteStore::open_with(
                        SqliteLocation::File(dir.path().join(format!("normal{workers}.db"))),
                        Synchronous::Normal,
                    )
                    .unwrap(),
                ),
            ),
        ];
        if let Some((_, _, url)) = &pg {
            stores.push((
                "postgresql",
                Arc::new(
                    statehost::store::PostgresStore::open(url, std::time::Duration::from_secs(30))
                        .unwrap(),
                ),
            ));
        }
        for (name, store) in stores {
            let (set, get, throughput) = run(store, workers);
            println!("{name:<18} {workers:>8} {set:>10.1} {get:>10.1} {throughput:>14.0}");
            results.push(json!({"store": name, "workers": workers, "set_us": set, "get_us": get, "ops_per_s": throughput}));
        }
    }
    if let Some((base, schema, _)) = pg
        && let Ok(mut client) = postgres::Client::connect(&base, postgres::NoTls)
    {
        let _ = client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
    }
    let out = workspace_root().join("target/criterion/stores");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.json"), Value::Array(results).to_string()).unwrap();
}
