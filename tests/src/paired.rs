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
//! A backend with a floor (fs: the bare write, fsync, rename and directory
//! fsync, or the bare read, of the same bytes) has a third block in each
//! round, and the host's overhead above the floor is the median of the
//! rounds' differences.
//!
//! `STATEHOST_BENCH_PAIRED_ROUNDS` (default 101) sets the rounds per cell;
//! `STATEHOST_BENCH_PAIRED_SIZES` (bytes, comma-separated, default every
//! size of the report) the sizes.
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

/// The operation a block times.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// A write of a new object.
    Serialize,
    /// A read of one object.
    Deserialize,
}

/// The least work an operation can do without the backend: times `calls`
/// of the bare operation on `value`'s bytes.
pub type Floor<'a> = &'a dyn Fn(Op, &str, u64) -> Duration;

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

/// One cell's medians, per call.
struct Cell {
    so_ns: f64,
    local_ns: f64,
    ratio: f64,
    ratio_q1: f64,
    ratio_q3: f64,
    /// With a floor: the floor, `.so` minus floor, and `.so` / floor.
    floor: Option<(f64, f64, f64)>,
}

fn pair(
    so: &dyn Backend,
    local: &dyn Backend,
    floor: Option<Floor<'_>>,
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
    // Calls per block, from a short calibration (after a warm-up).
    let r = reference(local);
    block(local, op, at, value, &r, 4);
    let probe = block(local, op, at, value, &r, 16) / 16;
    local.delete_object(&r, Some(at)).unwrap();
    let calls = (BLOCK.as_nanos() / probe.as_nanos().max(1)).clamp(4, 20_000) as u64;
    let per_call = |d: Duration| d.as_nanos() as f64 / calls as f64;
    let (mut so_ns, mut local_ns, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor_ns, mut over, mut over_ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Every round reads objects of its own, written just before in
        // turn: how the kernel happens to lay out one file (a tmpfs file
        // in large folios or in single pages) must not decide a whole cell.
        let (r_so, r_local) = if round % 2 == 0 {
            (reference(so), reference(local))
        } else {
            let r_local = reference(local);
            (reference(so), r_local)
        };
        // Each block goes first in turn.
        let mut times = [Duration::ZERO; 3];
        for i in 0..3 {
            let which = (round + i) % 3;
            times[which] = match which {
                0 => block(so, op, at, value, &r_so, calls),
                1 => block(local, op, at, value, &r_local, calls),
                _ => floor.map_or(Duration::ZERO, |f| f(op, value, calls)),
            };
        }
        for (backend, r) in [(so, &r_so), (local, &r_local)] {
            backend.delete_object(r, Some(at)).unwrap();
        }
        let [a, b, f] = times.map(per_call);
        so_ns.push(a);
        local_ns.push(b);
        ratios.push(a / b);
        if floor.is_some() {
            floor_ns.push(f);
            over.push(a - f);
            over_ratio.push(a / f);
        }
    }
    let (ratio_q1, ratio_q3) = quartiles(ratios.clone());
    Cell {
        so_ns: median(so_ns),
        local_ns: median(local_ns),
        ratio: median(ratios),
        ratio_q1,
        ratio_q3,
        floor: floor.map(|_| (median(floor_ns), median(over), median(over_ratio))),
    }
}

/// Measures every operation and size for one backend, `so` loaded and
/// `local` in-process, and `floor` when the backend has one; prints the
/// rows and writes the JSON file.
pub fn run(name: &str, so: &dyn Backend, local: &dyn Backend, floor: Option<Floor<'_>>) {
    let rounds: usize = std::env::var("STATEHOST_BENCH_PAIRED_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("STATEHOST_BENCH_PAIRED_ROUNDS: a number"))
        .unwrap_or(101);
    let sizes: Vec<usize> = match std::env::var("STATEHOST_BENCH_PAIRED_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|v| {
                v.trim()
                    .parse()
                    .expect("STATEHOST_BENCH_PAIRED_SIZES: sizes in bytes, e.g. 16,1024")
            })
            .collect(),
        Err(_) => BENCH_SIZES.to_vec(),
    };
    let scope = TaskScope::new("bench_dag", "scheduled__2026-11-21", "extract", -1).unwrap();
    let at = StateKey::task(&scope, "key");
    println!(
        "| backend | op | size | .so | in-process | .so / in-process (median) | quartiles | floor | .so − floor | .so / floor |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for (op_name, op) in [
        ("serialize", Op::Serialize),
        ("deserialize", Op::Deserialize),
    ] {
        for &size in &sizes {
            let value = json_string_of(size).to_string();
            let cell = pair(so, local, floor, op, at, &value, rounds);
            let label = size_label(size);
            let (floor_cols, floor_json) = match cell.floor {
                Some((f, over, r)) => (
                    format!("{f:.0} ns | {over:.0} ns | {r:.2}×"),
                    serde_json::json!({"floor_ns": f, "over_floor_ns": over, "over_floor_ratio": r}),
                ),
                None => ("– | – | –".to_string(), serde_json::json!({})),
            };
            println!(
                "| {name} | {op_name} | {label} | {:.0} ns | {:.0} ns | {:.2}× | {:.2}–{:.2} | {floor_cols} |",
                cell.so_ns, cell.local_ns, cell.ratio, cell.ratio_q1, cell.ratio_q3
            );
            let mut row = serde_json::json!({
                "backend": name, "op": op_name, "size": label,
                "so_ns": cell.so_ns, "local_ns": cell.local_ns,
                "ratio": cell.ratio, "ratio_q1": cell.ratio_q1, "ratio_q3": cell.ratio_q3,
                "rounds": rounds,
            });
            row.as_object_mut()
                .unwrap()
                .extend(floor_json.as_object().unwrap().clone());
            results.push(row);
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
