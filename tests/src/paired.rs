//! The boundary's price as a ratio, measured in pairs: each round times a
//! block of calls through the loaded `.so` and a block of the same calls on
//! the same backend in-process, back to back (in alternating order), both
//! through the host's backend interface the accessors and the Python
//! package use. The figure is the median over rounds of each round's ratio.
//!
//! Criterion times one function after another, seconds apart; on a shared
//! machine whose speed drifts by tens of percent within a minute, that
//! drift lands in the ratio. Two blocks a few milliseconds apart see the
//! same machine, so their ratio does not carry it.
//!
//! `STATEHOST_BENCH_PAIRED_ROUNDS` (default 101) sets the rounds per cell.
//! The benches `paired_memory` and `paired_fs` (one plugin per binary: the
//! plugins' crates each define the root-module symbol) print a table and
//! write `target/criterion/boundary_paired/<backend>.json` for the report.

use std::hint::black_box;
use std::time::{Duration, Instant};

use statehost::backend::Backend;
use statehost_plugin_api::conformance::write_id;
use statehost_plugin_api::{StateKey, TaskScope};

use crate::{BENCH_SIZES, json_string_of, size_label, timed_lent_writes, workspace_root};

/// How long one block should take: long enough that the clock's cost
/// vanishes, short enough that the machine does not change within a pair.
const BLOCK: Duration = Duration::from_millis(3);

#[derive(Clone, Copy)]
enum Op {
    Serialize,
    Deserialize,
}

/// Times `calls` calls of `op` on `backend`; `reference` is an object of
/// the value for reads.
fn block(
    backend: &dyn Backend,
    op: Op,
    at: StateKey<'_>,
    value: &str,
    reference: &str,
    calls: u64,
) -> Duration {
    match op {
        Op::Serialize => timed_lent_writes(backend, at, value, calls),
        Op::Deserialize => {
            let start = Instant::now();
            for _ in 0..calls {
                let text = backend
                    .deserialize(black_box(reference), Some(at))
                    .unwrap_or_else(|e| panic!("deserialize: {e}"));
                black_box(text.as_bytes());
            }
            start.elapsed()
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn quartiles(mut xs: Vec<f64>) -> (f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 4], xs[xs.len() * 3 / 4])
}

struct Cell {
    so_ns: f64,
    local_ns: f64,
    ratio: f64,
    ratio_q1: f64,
    ratio_q3: f64,
}

fn pair(
    so: &dyn Backend,
    local: &dyn Backend,
    op: Op,
    at: StateKey<'_>,
    value: &str,
    rounds: usize,
) -> Cell {
    let reference = |backend: &dyn Backend| {
        backend
            .serialize_lent(at, write_id(), value)
            .unwrap()
            .expect("the backend keeps the value outside")
            .to_string()
    };
    let (r_so, r_local) = (reference(so), reference(local));
    // Calls per block, from a short calibration (after a warm-up).
    block(local, op, at, value, &r_local, 4);
    let probe = block(local, op, at, value, &r_local, 16) / 16;
    let calls = (BLOCK.as_nanos() / probe.as_nanos().max(1)).clamp(4, 20_000) as u64;
    let (mut so_ns, mut local_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = block(so, op, at, value, &r_so, calls);
            (a, block(local, op, at, value, &r_local, calls))
        } else {
            let b = block(local, op, at, value, &r_local, calls);
            (block(so, op, at, value, &r_so, calls), b)
        };
        let (a, b) = (a.as_nanos() as f64, b.as_nanos() as f64);
        so_ns.push(a / calls as f64);
        local_ns.push(b / calls as f64);
        ratios.push(a / b);
    }
    for (backend, r) in [(so, &r_so), (local, &r_local)] {
        backend.delete_object(r, Some(at)).unwrap();
    }
    let (ratio_q1, ratio_q3) = quartiles(ratios.clone());
    Cell {
        so_ns: median(so_ns),
        local_ns: median(local_ns),
        ratio: median(ratios),
        ratio_q1,
        ratio_q3,
    }
}

/// Measures every operation and size for one backend, `so` loaded and
/// `local` in-process; prints the rows and writes the JSON file.
pub fn run(name: &str, so: &dyn Backend, local: &dyn Backend) {
    let rounds: usize = std::env::var("STATEHOST_BENCH_PAIRED_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("STATEHOST_BENCH_PAIRED_ROUNDS: a number"))
        .unwrap_or(101);
    let scope = TaskScope::new("bench_dag", "scheduled__2026-11-21", "extract", -1).unwrap();
    let at = StateKey::task(&scope, "key");
    println!("| backend | op | size | .so | in-process | .so / in-process (median) | quartiles |");
    println!("|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for (op_name, op) in [
        ("serialize", Op::Serialize),
        ("deserialize", Op::Deserialize),
    ] {
        for size in BENCH_SIZES {
            let value = json_string_of(size).to_string();
            let cell = pair(so, local, op, at, &value, rounds);
            let label = size_label(size);
            println!(
                "| {name} | {op_name} | {label} | {:.0} ns | {:.0} ns | {:.2}× | {:.2}–{:.2} |",
                cell.so_ns, cell.local_ns, cell.ratio, cell.ratio_q1, cell.ratio_q3
            );
            results.push(serde_json::json!({
                "backend": name, "op": op_name, "size": label,
                "so_ns": cell.so_ns, "local_ns": cell.local_ns,
                "ratio": cell.ratio, "ratio_q1": cell.ratio_q1, "ratio_q3": cell.ratio_q3,
                "rounds": rounds,
            }));
        }
    }
    let out = workspace_root().join("target/criterion/boundary_paired");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::Value::Array(results).to_string(),
    )
    .unwrap();
}
