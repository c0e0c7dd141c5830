//! End-to-end criterion benches on the real SmolLM2 (fetched by scripts/fetch-model.sh):
//! prefill of one 128-token chunk and one decode step, per precision and thread count,
//! reported in tokens (elements) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use npurt_graph::PrecisionPolicy;
use npurt_runtime::{LoadOptions, Runtime, Session};
use std::path::PathBuf;
use std::time::Duration;

fn e2e(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-model.sh",
        path.display()
    );
    let ids: Vec<u32> = (0..128u32).map(|i| (i * 7919 + 13) % 49152).collect();
    for precision in [PrecisionPolicy::W4A16, PrecisionPolicy::W4A8] {
        for threads in [1, 2] {
            let model = Runtime::new()
                .load(
                    &path,
                    LoadOptions {
                        threads: Some(threads),
                        ctx: Some(512),
                        precision: precision.clone(),
                        ..Default::default()
                    },
                )
                .expect("load");
            let mut g = c.benchmark_group(format!("smollm2/{}/{threads}t", precision.name));
            g.sample_size(10).measurement_time(Duration::from_secs(3));
            let mut s = Session::new(model.clone()).unwrap();
            g.throughput(Throughput::Elements(128));
            g.bench_function("prefill128", |b| {
                b.iter(|| {
                    s.reset();
                    s.feed(&ids).unwrap();
                })
            });
            g.throughput(Throughput::Elements(1));
            s.reset();
            s.feed(&ids[..16]).unwrap();
            g.bench_function("decode@16", |b| {
                b.iter(|| {
                    s.truncate(16);
                    s.feed(&ids[16..17]).unwrap();
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, e2e);
criterion_main!(benches);
