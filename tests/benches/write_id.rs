//! Reading a write id from its text form, as every read and every delete of
//! an object does with the reference's last segment: statehost's parse
//! (`WriteId::from_str`) against the `uuid` crate's parser with the same
//! checks (lowercase, version 7).
//!
//! ```text
//! cargo bench -p statehost-tests --bench write_id
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use statehost_plugin_api::WriteId;
use statehost_plugin_api::conformance::write_id;

fn parses(c: &mut Criterion) {
    let text = write_id().to_string();
    let mut group = c.benchmark_group("write_id/parse");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::from_parameter("statehost"), |b| {
        b.iter(|| black_box(black_box(text.as_str()).parse::<WriteId>().is_ok()))
    });
    group.bench_function(BenchmarkId::from_parameter("uuid"), |b| {
        b.iter(|| {
            let text = black_box(text.as_str());
            let ok = !text.bytes().any(|b| b.is_ascii_uppercase())
                && uuid::Uuid::try_parse(text).is_ok_and(|id| id.get_version_num() == 7);
            black_box(ok)
        })
    });
    group.finish();
}

criterion_group!(benches, parses);
criterion_main!(benches);
