//! The escape check every set runs over a string value and every get over
//! what the plugin returned (`statehost::state::needs_no_escape`), on the
//! benches' values (`json_string_of`'s text, which needs no escaping, so
//! every byte is read) and on a 96-byte text, about a reference's length.
//!
//! ```text
//! cargo bench -p statehost-tests --bench escape
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use statehost_tests::{BENCH_SIZES, json_string_of, size_label};

fn checks(c: &mut Criterion) {
    let sizes = [BENCH_SIZES[0], 96]
        .into_iter()
        .chain(BENCH_SIZES[1..].iter().copied());
    let mut group = c.benchmark_group("escape");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for size in sizes {
        let value = json_string_of(size);
        let text = value.as_str().expect("a string");
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(BenchmarkId::from_parameter(size_label(size)), |b| {
            b.iter(|| statehost::state::needs_no_escape(black_box(text.as_bytes())))
        });
    }
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
