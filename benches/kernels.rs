//! CPU kernel benches: the packed quantized matmul (GEMV m = 1, decode; GEMM m = 128, a
//! prefill chunk) per weight format x activation precision, the f32 matmul baseline,
//! and whole-model matmul sweeps of SmolLM2-135M (decode step and a 128-token prefill
//! chunk) that read as tokens per second.
//!
//! Each benchmark runs in a dedicated kernel thread pool of 1 or 2 threads (`t1`/`t2` in the
//! id). Throughput is weight bytes per second for GEMV (memory-bound) and operations
//! (2 m n k) per second for GEMM, reported by criterion as elem/s = op/s; a summary
//! table with both (GB/s and GOP/s) for every benchmark is printed at the end.
//!
//! The SigLIP-so400m encoder's four matmuls (`vit_gemm/`: q/k/v 3456x1152, out
//! 1152x1152, fc1 4320x1152, fc2 1152x4320, on 2916 rows = a batch of 4 tiles) with the
//! vision presets' per-channel INT8 weights and i8-per-row (w8a8) or i16 (w8a16)
//! activations; the summary gives each as a fraction of the int8 dot-product peak
//! measured at the end of the same run (`vpdpbusd`, or `vpmaddubsw` + `vpmaddwd` on
//! `avx2`; for i16 the peak `i16_activation_peak` names: `vpdpbusd` halved, two per
//! product, or `vpmaddwd` on `avx2`).
//!
//! Also the ViT's bidirectional attention over one SigLIP-so400m tile (729 tokens, 16
//! heads of 72), in op/s (4 * heads * seq^2 * head_dim: QK^T and PV), and SmolLM2's
//! decode attention at 2048 tokens over all 30 layers' f32, f16 and int8 KV caches, in
//! tokens/s (elem/s).
//!
//! `cargo bench -p npurt-benches --bench kernels -- <filter>`; e.g. `-- gemv/q4_1_i8`,
//! `-- model`, `-- attention`. `NPURT_CPU_ISA=avx2vnni|avx2|portable` benches a lower kernel path.

use criterion::{BenchmarkId, Criterion, Throughput};
use npurt_graph::{ActPrecision, DType, Epilogue, SeededRng};
use npurt_kernels::cpu::{
    attention_bidirectional_f32, attention_f32, i16_activation_peak, isa, kv_write_q8head,
    matmul_f32, matmul_packed, measure_peak, pack, KvElem, PackedMatrix, PeakKind, Qkv, ThreadPool,
};
use std::cell::RefCell;
use std::time::Duration;

/// Shapes as `[n (out), k (in)]`: SmolLM2-135M's projections (576 wide, kv 192, MLP
/// 1536; 576x1536 is the down projection) and a 2.5B-class model's (2560, MLP 6912).
const SHAPES: [(usize, usize); 7] = [
    (576, 576),
    (192, 576),
    (1536, 576),
    (576, 1536),
    (2560, 2560),
    (6912, 2560),
    (2560, 6912),
];
/// The tied embedding / LM head of SmolLM2 (Q8_0).
const HEAD: (usize, usize) = (49152, 576);
const PREFILL_ROWS: usize = 128;
/// SigLIP-so400m's encoder matmuls `[n, k]` (the MLP padded to 4320) and the rows of a
/// batch of 4 tiles of 729 tokens.
const VIT_SHAPES: [(usize, usize); 4] = [(3456, 1152), (1152, 1152), (4320, 1152), (1152, 4320)];
const VIT_ROWS: usize = 4 * 729;

/// Random GGUF bytes for a `[n, k]` weight: plausible f16 scales, random quants. (Fast
/// for the ~100 MB model sweep; the values do not matter for speed.)
fn random_raw(dtype: DType, n: usize, k: usize, rng: &mut SeededRng) -> Vec<u8> {
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let mut out = Vec::with_capacity(n * k);
    match dtype {
        // i8 values, then one f32 scale per row.
        DType::Q8Channel => {
            out.extend((0..n * k).map(|_| rng.next_u64() as u8));
            (0..n).for_each(|_| out.extend_from_slice(&0.01f32.to_le_bytes()));
        }
        DType::F32 => (0..n * k)
            .for_each(|_| out.extend_from_slice(&(rng.uniform(-1.0, 1.0) * 0.1).to_le_bytes())),
        _ => {
            for _ in 0..n * k / 32 {
                out.extend_from_slice(&f16(0.01 + 0.01 * rng.uniform(-1.0, 1.0).abs()));
                match dtype {
                    DType::Q4_1 => out.extend_from_slice(&f16(-0.08)),
                    DType::Q4_0 => {}
                    _ => out.extend((0..16).map(|_| rng.next_u64() as u8)),
                }
                out.extend((0..16).map(|_| rng.next_u64() as u8));
            }
        }
    }
    out
}

fn pools() -> Vec<(usize, ThreadPool)> {
    [1, 2]
        .into_iter()
        .map(|t| (t, ThreadPool::new(t).expect("pool")))
        .collect()
}

/// (group/id, seconds per iteration, weight bytes, ops) of every benchmark run, for
/// the summary table.
struct Row {
    /// `group/function/parameter` as passed to criterion.
    id: String,
    bytes: usize,
    ops: usize,
}

thread_local! {
    static ROWS: RefCell<Vec<Row>> = const { RefCell::new(Vec::new()) };
}

fn quantized_matmuls(c: &mut Criterion) {
    let pools = pools();
    let mut rng = SeededRng::new(7);
    let mut cases: Vec<(DType, (usize, usize))> = Vec::new();
    for dtype in [DType::Q4_1, DType::Q4_0, DType::Q8_0] {
        cases.extend(SHAPES.iter().map(|&s| (dtype, s)));
    }
    cases.push((DType::Q8_0, HEAD));
    for (dtype, (n, k)) in cases {
        let raw = random_raw(dtype, n, k, &mut rng);
        let w = pack(dtype, &raw, n, k).expect("pack");
        drop(raw);
        for act in [ActPrecision::I8, ActPrecision::I16] {
            for m in [1, PREFILL_ROWS] {
                let kind = if m == 1 { "gemv" } else { "gemm" };
                bench_packed(c, &pools, &w, dtype, act, kind, m, &mut rng);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_packed(
    c: &mut Criterion,
    pools: &[(usize, ThreadPool)],
    w: &PackedMatrix,
    dtype: DType,
    act: ActPrecision,
    kind: &str,
    m: usize,
    rng: &mut SeededRng,
) {
    let (n, k) = (w.n(), w.k());
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut out = vec![0f32; m * n];
    let group_name = format!("{kind}/{}_{}", dtype.name(), act.name());
    let mut g = c.benchmark_group(&group_name);
    g.throughput(if m == 1 {
        Throughput::Bytes(w.bytes() as u64)
    } else {
        Throughput::Elements((2 * m * n * k) as u64)
    });
    for (t, pool) in pools {
        let id = BenchmarkId::new(format!("t{t}"), format!("{n}x{k}"));
        ROWS.with(|r| {
            r.borrow_mut().push(Row {
                id: format!("{group_name}/t{t}/{n}x{k}"),
                bytes: w.bytes(),
                ops: 2 * m * n * k,
            })
        });
        g.bench_function(id, |b| {
            pool.install(|| {
                b.iter(|| {
                    matmul_packed(&a, m, w, act, Epilogue::NONE, None, None, &mut out)
                        .expect("matmul")
                })
            })
        });
    }
    g.finish();
}

/// The so400m encoder's matmuls at the vision presets' formats (see the module docs).
fn vit_matmuls(c: &mut Criterion) {
    let pools = pools();
    let mut rng = SeededRng::new(11);
    for (n, k) in VIT_SHAPES {
        let raw = random_raw(DType::Q8Channel, n, k, &mut rng);
        let w = pack(DType::Q8Channel, &raw, n, k).expect("pack");
        drop(raw);
        for act in [ActPrecision::I8Row, ActPrecision::I16] {
            bench_packed(
                c,
                &pools,
                &w,
                DType::Q8Channel,
                act,
                "vit_gemm",
                VIT_ROWS,
                &mut rng,
            );
        }
    }
}

fn f32_baseline(c: &mut Criterion) {
    let pools = pools();
    let mut rng = SeededRng::new(9);
    for (n, k) in SHAPES {
        let w: Vec<f32> = (0..n * k).map(|_| rng.uniform(-1.0, 1.0) * 0.1).collect();
        for m in [1, PREFILL_ROWS] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let mut out = vec![0f32; m * n];
            let kind = if m == 1 { "gemv" } else { "gemm" };
            let group_name = format!("{kind}/f32_matmul_f32");
            let mut g = c.benchmark_group(&group_name);
            g.throughput(if m == 1 {
                Throughput::Bytes((4 * n * k) as u64)
            } else {
                Throughput::Elements((2 * m * n * k) as u64)
            });
            for (t, pool) in &pools {
                ROWS.with(|r| {
                    r.borrow_mut().push(Row {
                        id: format!("{group_name}/t{t}/{n}x{k}"),
                        bytes: 4 * n * k,
                        ops: 2 * m * n * k,
                    })
                });
                g.bench_function(BenchmarkId::new(format!("t{t}"), format!("{n}x{k}")), |b| {
                    pool.install(|| b.iter(|| matmul_f32(&a, &w, m, k, n, true, &mut out)))
                });
            }
            g.finish();
        }
    }
}

/// Bidirectional attention over one SigLIP-so400m tile: 27x27 = 729 tokens, 16 heads
/// of head_dim 72 (hidden 1152), as every encoder layer runs it.
fn vit_attention(c: &mut Criterion) {
    const SEQ: usize = 729;
    const HEADS: usize = 16;
    const HEAD_DIM: usize = 72;
    let mut rng = SeededRng::new(13);
    let w = HEADS * HEAD_DIM;
    let mut vec = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect() };
    let (q, k, v) = (vec(SEQ * w), vec(SEQ * w), vec(SEQ * w));
    let mut out = vec![0f32; SEQ * w];
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    let ops = 4 * HEADS * SEQ * SEQ * HEAD_DIM;
    let group_name = "attention/bidirectional_f32";
    let mut g = c.benchmark_group(group_name);
    g.throughput(Throughput::Elements(ops as u64));
    for (t, pool) in &pools() {
        let param = format!("so400m_{SEQ}x{HEADS}x{HEAD_DIM}");
        ROWS.with(|r| {
            r.borrow_mut().push(Row {
                id: format!("{group_name}/t{t}/{param}"),
                bytes: 3 * 4 * SEQ * w,
                ops,
            })
        });
        g.bench_function(BenchmarkId::new(format!("t{t}"), param), |b| {
            pool.install(|| {
                b.iter(|| {
                    let qkv = Qkv::dense(&q, &k, &v, [w, w]);
                    attention_bidirectional_f32(qkv, SEQ, HEADS, HEADS, HEAD_DIM, scale, &mut out)
                        .expect("valid shapes")
                })
            })
        });
    }
    g.finish();
}

/// SmolLM2-135M's decode attention at position 2047: one query row, 9 heads over 3 KV
/// heads of 64, in each of 30 layers with its own 2048-row K and V caches, so a step
/// reads every cache cold as the model does (f32 94 MiB, f16 47 MiB, int8 25 MiB).
/// Throughput in tokens (elem/s = tokens/s of attention alone).
fn decode_attention(c: &mut Criterion) {
    const LAYERS: usize = 30;
    const CACHE_ROWS: usize = 2048;
    const HEADS: usize = 9;
    const KV_HEADS: usize = 3;
    const HEAD_DIM: usize = 64;
    let kw = KV_HEADS * HEAD_DIM;
    let mut rng = SeededRng::new(17);
    let q: Vec<f32> = (0..HEADS * HEAD_DIM)
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let caches: Vec<Vec<f32>> = (0..2 * LAYERS)
        .map(|_| {
            (0..CACHE_ROWS * kw)
                .map(|_| rng.uniform(-1.0, 1.0))
                .collect()
        })
        .collect();
    let f16s: Vec<Vec<half::f16>> = caches
        .iter()
        .map(|c| c.iter().map(|&x| half::f16::from_f32(x)).collect())
        .collect();
    let int8s: Vec<Vec<u8>> = caches
        .iter()
        .map(|c| {
            let mut b = vec![0u8; CACHE_ROWS * KV_HEADS * (HEAD_DIM + 4)];
            kv_write_q8head(&mut b, c, kw, HEAD_DIM, 0).expect("fits");
            b
        })
        .collect();
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    fn step<C: KvElem>(caches: &[Vec<C>], q: &[f32], scale: f32, out: &mut [f32]) {
        for kv in caches.chunks_exact(2) {
            attention_f32(
                q,
                &kv[0],
                &kv[1],
                CACHE_ROWS - 1,
                1,
                HEADS,
                KV_HEADS,
                HEAD_DIM,
                scale,
                out,
            )
            .expect("valid shapes");
        }
    }
    let group_name = "attention/decode_2048";
    let mut g = c.benchmark_group(group_name);
    g.throughput(Throughput::Elements(1));
    let mut out = vec![0f32; HEADS * HEAD_DIM];
    for (t, pool) in &pools() {
        for kv in ["f32", "f16", "int8"] {
            let bytes = match kv {
                "f32" => 2 * LAYERS * CACHE_ROWS * kw * 4,
                "f16" => 2 * LAYERS * CACHE_ROWS * kw * 2,
                _ => 2 * LAYERS * CACHE_ROWS * KV_HEADS * (HEAD_DIM + 4),
            };
            let param = format!("smollm2_{kv}_kv");
            ROWS.with(|r| {
                r.borrow_mut().push(Row {
                    id: format!("{group_name}/t{t}/{param}"),
                    bytes,
                    ops: 4 * HEADS * CACHE_ROWS * HEAD_DIM * LAYERS,
                })
            });
            g.bench_function(BenchmarkId::new(format!("t{t}"), param), |b| {
                pool.install(|| {
                    b.iter(|| match kv {
                        "f32" => step(&caches, &q, scale, &mut out),
                        "f16" => step(&f16s, &q, scale, &mut out),
                        _ => step(&int8s, &q, scale, &mut out),
                    })
                })
            });
        }
    }
    g.finish();
}

/// SmolLM2-135M's matmuls for one step: 30 layers of q, k, v, o (576x576, 192x576 x2,
/// 576x576), fused gate+up with SwiGLU (3072x576) and down with residual (576x1536),
/// all Q4_1, then the Q8_0 LM head (49152x576). Every layer has its own weights, so a
/// decode step streams ~96 MB from DRAM like the real model. Throughput is in tokens
/// (elem/s = tokens/s).
fn model_sweep(c: &mut Criterion) {
    const LAYERS: usize = 30;
    let mut rng = SeededRng::new(11);
    let layer_shapes: [(usize, usize, Epilogue); 6] = [
        (576, 576, Epilogue::NONE),
        (192, 576, Epilogue::NONE),
        (192, 576, Epilogue::NONE),
        (576, 576, Epilogue::RESIDUAL),
        (3072, 576, Epilogue::SWIGLU),
        (576, 1536, Epilogue::RESIDUAL),
    ];
    let mut weights = Vec::new();
    for _ in 0..LAYERS {
        for &(n, k, epi) in &layer_shapes {
            weights.push((
                pack(DType::Q4_1, &random_raw(DType::Q4_1, n, k, &mut rng), n, k).expect("pack"),
                epi,
            ));
        }
    }
    let head = pack(
        DType::Q8_0,
        &random_raw(DType::Q8_0, HEAD.0, HEAD.1, &mut rng),
        HEAD.0,
        HEAD.1,
    )
    .expect("pack");
    let bytes: usize = weights.iter().map(|(w, _)| w.bytes()).sum::<usize>() + head.bytes();
    let pools = pools();
    for act in [ActPrecision::I8, ActPrecision::I16] {
        for m in [1, PREFILL_ROWS] {
            let kind = if m == 1 { "decode" } else { "prefill" };
            let group_name = format!("model/smollm2_{kind}_q4_1_{}", act.name());
            let mut g = c.benchmark_group(&group_name);
            g.throughput(Throughput::Elements(m as u64));
            let a: Vec<f32> = (0..m * 1536).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let res: Vec<f32> = (0..m * 576).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let mut out = vec![0f32; m * HEAD.0];
            // The head runs on one row (the last position) in both cases.
            let ops: usize = 2
                * (m * weights.iter().map(|(w, _)| w.n() * w.k()).sum::<usize>() + HEAD.0 * HEAD.1);
            for (t, pool) in &pools {
                ROWS.with(|r| {
                    r.borrow_mut().push(Row {
                        id: format!("{group_name}/t{t}/step"),
                        bytes,
                        ops,
                    })
                });
                g.bench_function(BenchmarkId::new(format!("t{t}"), "step"), |b| {
                    pool.install(|| {
                        b.iter(|| {
                            for (w, epi) in &weights {
                                let n_out = epi.out_cols(w.n()).expect("even GLU rows");
                                let resid = epi.has_residual().then(|| &res[..m * n_out]);
                                matmul_packed(
                                    &a[..m * w.k()],
                                    m,
                                    w,
                                    act,
                                    *epi,
                                    None,
                                    resid,
                                    &mut out[..m * n_out],
                                )
                                .expect("matmul");
                            }
                            // Decode runs the head on the last position only.
                            matmul_packed(
                                &a[..576],
                                1,
                                &head,
                                act,
                                Epilogue::NONE,
                                None,
                                None,
                                &mut out[..HEAD.0],
                            )
                            .expect("head");
                        })
                    })
                });
            }
            g.finish();
        }
    }
}

/// Median time of a finished benchmark from criterion's `estimates.json` (the median,
/// not the mean: on a shared 2-core machine a few samples are always preempted).
/// Only estimates written by this run count (`since`), so filtered-out benchmarks do not
/// show stale numbers.
fn mean_seconds(id: &str, since: std::time::SystemTime) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    // criterion's directory: the group with '/' made safe, then function and parameter.
    let (group, rest) = id
        .split_once('/')?
        .1
        .split_once('/')
        .map(|(a, b)| (format!("{}_{a}", id.split('/').next().unwrap_or("")), b))?;
    let path = format!("{dir}/criterion/{group}/{rest}/new/estimates.json");
    if std::fs::metadata(&path).and_then(|m| m.modified()).ok()? < since {
        return None;
    }
    let s = std::fs::read_to_string(path).ok()?;
    let i = s.find("\"median\"")?;
    let rest = &s[i..];
    let j = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let num: String = rest[j..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    num.parse::<f64>().ok().map(|ns| ns * 1e-9)
}

fn summary(since: std::time::SystemTime) {
    let rows = ROWS.with(|r| std::mem::take(&mut *r.borrow_mut()));
    // The ViT matmuls against the int8 dot-product peak (i16 rows: the peak
    // `i16_activation_peak` names), measured now (after the benches, so nothing else
    // runs) on as many threads as each row used.
    let (i16_kind, i16_per_product) = i16_activation_peak();
    let measure = |kind, t| Some(measure_peak(kind, t, Duration::from_millis(300))?.gops);
    let peaks: Vec<(usize, f64, f64)> = [1, 2]
        .into_iter()
        .filter_map(|t| Some((t, measure(PeakKind::Int8Dot, t)?, measure(i16_kind, t)?)))
        .collect();
    let vit: Vec<String> = rows
        .iter()
        .filter(|r| r.id.starts_with("vit_gemm/"))
        .filter_map(|r| {
            let s = mean_seconds(&r.id, since)?;
            let t = if r.id.contains("/t2/") { 2 } else { 1 };
            let &(_, peak8, peak16) = peaks.iter().find(|p| p.0 == t)?;
            let (peak, per_product) = if r.id.contains("_i16/") {
                (peak16, i16_per_product)
            } else {
                (peak8, 1.0)
            };
            let gops = r.ops as f64 / s * 1e-9;
            Some(format!(
                "{:<52} {:>7.1} GOP/s = {:>4.1}% of {:.0} GOP/s{}",
                r.id,
                gops,
                100.0 * gops * per_product / peak,
                peak,
                if per_product > 1.0 {
                    " / 2 (i16: two dot products per product)"
                } else {
                    ""
                }
            ))
        })
        .collect();
    println!(
        "\nsummary (kernels {}): median time, weight GB/s, GOP/s (model rows: ops of all matmuls)",
        isa().name()
    );
    println!(
        "{:<52} {:>11} {:>9} {:>9}",
        "benchmark", "time", "GB/s", "GOP/s"
    );
    for row in rows {
        let Some(s) = mean_seconds(&row.id, since) else {
            continue;
        };
        let time = if s < 1e-3 {
            format!("{:.1} us", s * 1e6)
        } else {
            format!("{:.2} ms", s * 1e3)
        };
        println!(
            "{:<52} {:>11} {:>9.1} {:>9.1}",
            row.id,
            time,
            row.bytes as f64 / s * 1e-9,
            row.ops as f64 / s * 1e-9
        );
    }
    if !vit.is_empty() {
        println!("\nSigLIP-so400m encoder matmuls (2916 rows) against the measured int8 dot-product peak:");
        vit.iter().for_each(|l| println!("{l}"));
    }
}

fn main() {
    let since = std::time::SystemTime::now();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .configure_from_args();
    quantized_matmuls(&mut c);
    vit_matmuls(&mut c);
    f32_baseline(&mut c);
    vit_attention(&mut c);
    decode_attention(&mut c);
    model_sweep(&mut c);
    c.final_summary();
    summary(since);
}
