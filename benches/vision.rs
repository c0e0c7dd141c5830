//! The vision encode at real size: SigLIP-so400m (27 layers, hidden 1152, MLP 4304,
//! 16 heads) + the 2x2 downsampler + a projector into a 2560-wide LLM, built from
//! SEEDED RANDOM WEIGHTS at run time (no trained weights are reachable offline; speed
//! does not depend on the values). One sample is the paper's 768x1536 image: a 2x4
//! grid + thumbnail = 9 tiles, 9 x 196 = 1764 image tokens, in batches of 4 (4+4+1).
//!
//! Per preset (w8a8, w8a16) and thread count (1, 2): criterion's time per image, and a
//! summary with the encoder blocks' GOP/s against the instruction's peak measured in
//! this run (`npurt encode-image --synthetic so400m` prints the same per stage).
//!
//! `cargo bench -p npurt-benches --bench vision` (about 3 minutes per configuration on
//! 2 cores: criterion's minimum of 10 samples of a multi-second encode).

use criterion::{BenchmarkId, Criterion, Throughput};
use npurt_graph::PrecisionPolicy;
use npurt_models::siglip::VisionFeature;
use npurt_runtime::{Runtime, VisionEncoder, VisionOptions};
use std::time::Duration;

const TILES: usize = 9;
const LLM_HIDDEN: usize = 2560;

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let rt = Runtime::new();
    let mut summary = Vec::new();
    let mut g = c.benchmark_group("vision/so400m_9tiles");
    for precision in [PrecisionPolicy::W8A8, PrecisionPolicy::W8A16] {
        for threads in [1, 2] {
            let opts = VisionOptions {
                threads: Some(threads),
                precision: precision.clone(),
                ..VisionOptions::default()
            };
            let enc =
                VisionEncoder::synthetic_so400m(&rt, LLM_HIDDEN, opts).expect("synthetic so400m");
            let pixels: Vec<f32> = (0..TILES * enc.tile_elems())
                .map(|i| ((i * 2654435761) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let macs = enc.config.encoder_macs_per_tile(VisionFeature::Last) * TILES as u64;
            g.throughput(Throughput::Elements(2 * macs));
            let id = BenchmarkId::new(precision.name, format!("t{threads}"));
            let mut last = None;
            g.bench_function(id, |b| {
                b.iter(|| last = Some(enc.encode(&pixels, TILES).expect("encode").timings))
            });
            if let Some(t) = last {
                // The matmuls' instruction peak, measured right after the samples.
                let peak = enc.matmul_peak(threads, Duration::from_millis(300));
                summary.push((
                    precision.name,
                    threads,
                    t,
                    2.0 * macs as f64 / (t.blocks_ms * 1e6),
                    peak,
                ));
            }
        }
    }
    g.finish();
    println!("\nSYNTHETIC weights (seeded random), so400m shapes, 9 tiles, batch 4; last sample:");
    println!(
        "| precision | threads | conv ms | blocks ms | project ms | total ms | blocks GOP/s | of the peak |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (p, t, tm, gops, peak) in summary {
        // w8a16's attainable peak is half the instruction's (two dot products per
        // product).
        let of_peak = match peak {
            Some((report, att)) => format!(
                "{:.0}% of {att:.0} GOP/s ({} x {t}{})",
                100.0 * gops / att,
                report.instruction,
                if att < report.gops { ", halved" } else { "" }
            ),
            None => "no peak measured".into(),
        };
        println!(
            "| {p} | {t} | {:.0} | {:.0} | {:.0} | {:.0} | {gops:.0} | {of_peak} |",
            tm.conv_ms, tm.blocks_ms, tm.project_ms, tm.total_ms
        );
    }
    c.final_summary();
}
