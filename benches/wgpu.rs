//! wgpu backend benches: quantized matmul as GEMV (m = 1, a decode step) and GEMM
//! (m = 128, a prefill chunk; f32 activations, and i8 ones as `gemm_i8`) for Q4_0 and
//! Q8_0 weights at SmolLM2 (576x576, 576x1536)
//! and 2.7B-class (2560x2560, and 2560x6912 as its MLP's down projection) shapes, and causal GQA attention (SmolLM2 heads) over a
//! 2048-row KV cache (decode at position 2000 also with its keys unsplit). Each iteration is one executable run (one submit) followed by
//! `synchronize`, so the clock stops only when the GPU is done. Throughput is weight
//! bytes per second (criterion's B/s); GEMM GOP/s = 2 m n k / time is printed too, as
//! a fraction of the device's peak for the arithmetic used (f32 FMA; packed i8 dot
//! products for `gemm_i8` where the dot4 variant is on), and GEMV's weight GB/s as a
//! fraction of its copy bandwidth, both measured at start (`Backend::measure_limits`).
//! Each matmul's line gives those rates twice: per run (wall clock, submit and wait
//! included) and for the kernel alone, from GPU timestamps (`Executable::profile`),
//! where the adapter has them: on a fast GPU a small kernel's run is mostly overhead.
//!
//! `cargo bench -p npurt-benches --bench wgpu -- <filter>`, e.g. `-- gemv/q4_0`. Runs on
//! whatever adapter wgpu picks (lavapipe without a GPU; `WGPU_BACKEND` to choose).

use criterion::{BenchmarkId, Criterion, Throughput};
use npurt_backends::wgpu::{WgpuBackend, WgpuOptions};
use npurt_backends::{
    Backend, Bindings, BufferUsage, DeviceBuffer, DeviceLimits, Executable, Scratch, TimeSource,
};
use npurt_graph::{
    ActPrecision, DType, Epilogue, Graph, NodeId, Op, Prologue, SeededRng, TensorFact,
};
use npurt_kernels::HostTensor;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `[n (out), k (in)]`.
const SHAPES: [(usize, usize); 4] = [(576, 576), (576, 1536), (2560, 2560), (2560, 6912)];
const PREFILL_ROWS: usize = 128;
/// Profiled runs per matmul for its kernel time (the fastest counts).
const GPU_RUNS: usize = 20;

/// A compiled graph with its buffers bound, ready to run repeatedly.
struct Prepared {
    exec: Arc<dyn Executable>,
    bindings: Bindings,
    scratch: Box<dyn Scratch>,
}

impl Prepared {
    fn new(
        be: &WgpuBackend,
        g: &Graph,
        weights: Vec<(NodeId, Arc<dyn DeviceBuffer>)>,
        inputs: Vec<(NodeId, HostTensor)>,
        states: &[NodeId],
    ) -> Prepared {
        let exec = be.compile(g, &weights).expect("compile");
        let mut bindings = Bindings::default();
        for (id, t) in inputs {
            let b = be.alloc(&t.fact, BufferUsage::Activations).expect("alloc");
            be.write(b.as_ref(), &t).expect("write");
            bindings.sources.push((id, b));
        }
        for &id in states {
            bindings.sources.push((
                id,
                be.alloc(g.fact(id), BufferUsage::State)
                    .expect("alloc state"),
            ));
        }
        for (name, id) in &g.outputs {
            bindings.outputs.push((
                name.clone(),
                be.alloc(g.fact(*id), BufferUsage::Activations)
                    .expect("alloc"),
            ));
        }
        let scratch = exec.new_scratch().expect("scratch");
        Prepared {
            exec,
            bindings,
            scratch,
        }
    }

    /// The fastest GPU time of one run's nodes over `runs` profiled runs; `None` where
    /// the profiler times nodes with the host clock (no timestamp queries).
    fn gpu_seconds(&mut self, runs: usize) -> Option<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..runs {
            let p = self
                .exec
                .profile(&self.bindings, self.scratch.as_mut())
                .ok()?;
            if p.nodes.iter().any(|n| n.source != TimeSource::Gpu) {
                return None;
            }
            best = best.min(p.nodes_ms() * 1e-3);
        }
        Some(best)
    }

    fn run(&mut self, be: &WgpuBackend) {
        self.exec
            .run(&self.bindings, self.scratch.as_mut())
            .expect("run");
        be.synchronize().expect("synchronize");
    }
}

/// `y = a @ w^T` with `a` [m, k] at activation precision `act`, `w` [n, k] of `dt`.
fn matmul(
    be: &WgpuBackend,
    dt: DType,
    act: ActPrecision,
    m: usize,
    n: usize,
    k: usize,
) -> Prepared {
    let mut rng = SeededRng::new(7);
    let mut g = Graph::new();
    let a = g
        .add(
            "a",
            Op::Input {
                name: "a".into(),
                fact: TensorFact::f32([m, k]),
            },
            &[],
        )
        .unwrap();
    let w = g
        .add(
            "w",
            Op::Weight {
                name: "w".into(),
                fact: TensorFact::new(dt, [n, k]),
                parts: vec![],
            },
            &[],
        )
        .unwrap();
    let y = g
        .add(
            "y",
            Op::MatMul {
                transpose_b: true,
                act,
                prologue: Prologue::None,
                epilogue: Epilogue::NONE,
            },
            &[a, w],
        )
        .unwrap();
    g.set_output("y", y);
    let bytes = npurt_kernels::quant::quantize(dt, &rng.uniform_vec(n * k, -1.0, 1.0), k)
        .expect("quantize");
    let wt = HostTensor::bytes(TensorFact::new(dt, [n, k]), bytes).expect("weight bytes");
    let wb = be.prepare_weight("w", wt).expect("prepare");
    Prepared::new(
        be,
        &g,
        vec![(w, wb)],
        vec![(
            a,
            HostTensor::f32([m, k], rng.uniform_vec(m * k, -1.0, 1.0)),
        )],
        &[],
    )
}

fn bench_matmul(c: &mut Criterion, be: &WgpuBackend, limits: Option<&DeviceLimits>) {
    let (dot4, coop) = (be.kernel_variants().dot4, be.kernel_variants().coop);
    for (kind, m, act) in [
        ("gemv", 1, ActPrecision::F32),
        ("gemm", PREFILL_ROWS, ActPrecision::F32),
        ("gemm_i8", PREFILL_ROWS, ActPrecision::I8),
    ] {
        // The ceiling each kind is quoted against.
        let peak = |l: &DeviceLimits| match kind {
            "gemv" => Some((l.copy_gb_s * 1e9, "the copy bandwidth")),
            "gemm_i8" if dot4 => l.peak("i8 dot4").map(|p| (p, "the i8 dot4 peak")),
            // gemm_coop: 3 f16 matrix products per multiply-add counted.
            "gemm" if coop => l.peak("f16 matrix").map(|p| (p, "the f16 matrix peak")),
            _ => l.peak("f32 fma").map(|p| (p, "the f32 FMA peak")),
        };
        let mut group = c.benchmark_group(kind);
        for dt in [DType::Q4_0, DType::Q8_0] {
            for (n, k) in SHAPES {
                let weight_bytes = TensorFact::new(dt, [n, k]).bytes().unwrap_or(0) as u64;
                group.throughput(Throughput::Bytes(weight_bytes));
                let mut p = matmul(be, dt, act, m, n, k);
                let id = BenchmarkId::new(format!("{}", dt), format!("{n}x{k}"));
                // Fastest per-iteration time seen, for the GOP/s / GB/s summary line.
                let best = std::cell::Cell::new(f64::INFINITY);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let t0 = Instant::now();
                        for _ in 0..iters {
                            p.run(be);
                        }
                        let t = t0.elapsed();
                        best.set(best.get().min(t.as_secs_f64() / iters.max(1) as f64));
                        t
                    })
                });
                // The rates of one time: GOP/s, weight GB/s and the fraction of the
                // kind's ceiling.
                let rates = |s: f64| {
                    let ops = 2.0 * (m * n * k) as f64 / s;
                    let bytes = weight_bytes as f64 / s;
                    let of = limits.and_then(peak).map(|(p, what)| {
                        let rate = if kind == "gemv" { bytes } else { ops };
                        format!(" = {:.1}% of {what}", 100.0 * rate / p)
                    });
                    format!(
                        "{:.2} GOP/s, {:.2} GB/s of weights{}",
                        ops / 1e9,
                        bytes / 1e9,
                        of.unwrap_or_default()
                    )
                };
                let s = best.get();
                if s.is_finite() {
                    // A run's wall time includes its submit and wait, which dwarf a
                    // small kernel on a fast GPU: the kernel's own time is its GPU
                    // timestamps, where the adapter has them.
                    let kernel = p.gpu_seconds(GPU_RUNS).map(|g| {
                        format!("; kernel {:.1} us (GPU timestamps): {}", g * 1e6, rates(g))
                    });
                    println!(
                        "{kind}/{dt}/{n}x{k}: {} per run{}",
                        rates(s),
                        kernel.unwrap_or_default()
                    );
                }
            }
        }
        group.finish();
    }
}

fn bench_attention(c: &mut Criterion, default_be: &WgpuBackend) {
    // SmolLM2: 9 query heads, 3 KV heads, head_dim 64; a 2048-row cache.
    let (nh, nkv, hd, cache) = (9, 3, 64, 2048);
    let mut group = c.benchmark_group("attention");
    // Decode also with its keys unsplit (`NPURT_WGPU_ATTN_SPLITS=1`): what the split
    // into key ranges (flash-decoding, the default on GPUs) is worth at depth.
    let unsplit = WgpuBackend::new(WgpuOptions {
        attn_splits: Some(1),
        ..Default::default()
    });
    let unsplit = match &unsplit {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("unsplit attention not benched: {e}");
            None
        }
    };
    let cases = [
        (1, 2000, Some(default_be), ""),
        (1, 2000, unsplit, "_unsplit"),
        (PREFILL_ROWS, 512, Some(default_be), ""),
    ];
    for (rows, pos, be, label) in cases {
        let Some(be) = be else { continue };
        let mut rng = SeededRng::new(9);
        let mut g = Graph::new();
        let input = |g: &mut Graph, name: &str, fact: TensorFact| {
            g.add(
                name,
                Op::Input {
                    name: name.into(),
                    fact,
                },
                &[],
            )
            .unwrap()
        };
        let q = input(&mut g, "q", TensorFact::f32([rows, nh * hd]));
        let p = input(&mut g, "pos", TensorFact::i32([1]));
        let nv = input(&mut g, "n_valid", TensorFact::i32([1]));
        let kc = g
            .add(
                "k",
                Op::State {
                    name: "k".into(),
                    fact: TensorFact::f32([cache, nkv * hd]),
                },
                &[],
            )
            .unwrap();
        let vc = g
            .add(
                "v",
                Op::State {
                    name: "v".into(),
                    fact: TensorFact::f32([cache, nkv * hd]),
                },
                &[],
            )
            .unwrap();
        let o = g
            .add(
                "attn",
                Op::Attention {
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    scale: 0.125,
                    mode: npurt_graph::AttentionMode::Causal,
                    precision: npurt_graph::AttentionPrecision::F32,
                },
                &[q, kc, vc, p, nv],
            )
            .unwrap();
        g.set_output("o", o);
        let inputs = vec![
            (
                q,
                HostTensor::f32([rows, nh * hd], rng.uniform_vec(rows * nh * hd, -1.0, 1.0)),
            ),
            (p, HostTensor::i32([1], vec![pos as i32])),
            (nv, HostTensor::i32([1], vec![rows as i32])),
        ];
        let mut prep = Prepared::new(be, &g, vec![], inputs, &[kc, vc]);
        // K and V rows read per run (each query row reads its causal prefix).
        let keys: usize = (0..rows).map(|t| pos + t + 1).sum();
        group.throughput(Throughput::Bytes((keys * 2 * nkv * hd * 4) as u64));
        group.bench_function(
            BenchmarkId::new("gqa9x3x64", format!("t{rows}_pos{pos}{label}")),
            |b| b.iter(|| prep.run(be)),
        );
    }
    group.finish();
}

fn main() {
    let be = match WgpuBackend::new(WgpuOptions::default()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wgpu benches skipped: {e}");
            return;
        }
    };
    println!(
        "wgpu adapter: {}, kernels {}",
        be.adapter(),
        be.capabilities().kernels
    );
    let limits = match be.measure_limits() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("device limits not measured: {e}");
            None
        }
    };
    if let Some(l) = &limits {
        println!("measured {}", l.summary());
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    bench_matmul(&mut c, &be, limits.as_ref());
    bench_attention(&mut c, &be);
    c.final_summary();
}
