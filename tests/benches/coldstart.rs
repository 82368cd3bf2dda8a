//! Cold start: load and construct each shipped plugin in a fresh process
//! (dlopen, abi_stable's layout check, metadata, constructor), 31 samples
//! each; prints the median and writes it to
//! `target/criterion/coldstart/<plugin>.json` for the report.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use statehost::plugin::LoadedBackend;
use statehost_tests::{bench_dir, release_library, workspace_root};

const SAMPLES: usize = 31;

fn child(path: &str, options: &str) {
    let options: serde_json::Value = serde_json::from_str(options).unwrap();
    let start = Instant::now();
    let backend = LoadedBackend::load(Path::new(path), &options, None).unwrap();
    let elapsed = start.elapsed();
    std::hint::black_box(&backend);
    println!("{}", elapsed.as_nanos());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path, options] = args.as_slice()
        && flag == "--child"
    {
        child(path, options);
        return;
    }
    // `cargo bench -- <filter>` passes extra arguments; a filter that does
    // not name cold start skips it.
    if let Some(filter) = args.iter().skip(1).find(|a| !a.starts_with('-'))
        && !"coldstart".contains(filter.as_str())
    {
        return;
    }
    let root = bench_dir();
    let out_dir = workspace_root().join("target/criterion/coldstart");
    std::fs::create_dir_all(&out_dir).unwrap();
    for (name, options) in [
        ("memory", serde_json::Value::Null),
        ("fs", serde_json::json!({"root": root.path()})),
    ] {
        let library = release_library(&format!("statehost_{name}"));
        let mut samples: Vec<f64> = (0..SAMPLES)
            .map(|_| {
                let out = Command::new(std::env::current_exe().unwrap())
                    .args(["--child", library.to_str().unwrap(), &options.to_string()])
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
        samples.sort_by(f64::total_cmp);
        let median = samples[SAMPLES / 2];
        println!(
            "coldstart/{name}: median {:.1} µs (min {:.1}, max {:.1}) over {SAMPLES} fresh processes",
            median / 1e3,
            samples[0] / 1e3,
            samples[SAMPLES - 1] / 1e3
        );
        std::fs::write(
            out_dir.join(format!("{name}.json")),
            serde_json::json!({"median_ns": median, "samples": SAMPLES}).to_string(),
        )
        .unwrap();
    }
}
