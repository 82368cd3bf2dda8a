//! The UTF-8 check of a plugin's references and of values read back as
//! text (`statehost::backend::utf8`, a vectorised check) against std's
//! `std::str::from_utf8`, on the benches' values (ASCII, as
//! `json_string_of` makes them) and on text with a two-byte character in
//! every dozen bytes.
//!
//! ```text
//! cargo bench -p statehost-tests --bench utf8
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statehost_tests::{BENCH_SIZES, json_string_of, size_label};

fn mixed_text(bytes: usize) -> String {
    let mut text: String = "héllo wörld ".chars().cycle().take(bytes).collect();
    while text.len() > bytes {
        text.pop();
    }
    text
}

fn checks(c: &mut Criterion) {
    // 96 B: about a reference's length.
    let sizes = [BENCH_SIZES[0], 96]
        .into_iter()
        .chain(BENCH_SIZES[1..].iter().copied());
    for size in sizes {
        let ascii = json_string_of(size).to_string();
        let mixed = mixed_text(size);
        for (kind, text) in [("ascii", ascii), ("mixed", mixed)] {
            let bytes = text.as_bytes();
            let mut group = c.benchmark_group(format!("utf8/{kind}/{}", size_label(size)));
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(2));
            group.bench_function(BenchmarkId::from_parameter("std"), |b| {
                b.iter(|| std::str::from_utf8(black_box(bytes)).is_ok())
            });
            group.bench_function(BenchmarkId::from_parameter("statehost"), |b| {
                b.iter(|| statehost::backend::utf8(black_box(bytes)).is_ok())
            });
            group.finish();
        }
    }
}

criterion_group!(benches, checks);
criterion_main!(benches);
