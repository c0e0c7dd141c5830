//! CPU quantized kernels against the scalar reference: `pack` + `matmul_packed` for
//! every weight format x activation precision x epilogue x kernel path this machine
//! supports x {1, 2} threads, on shapes that are not multiples of the tile sizes; the
//! packing is lossless; `gather_packed`; bad inputs are errors, not panics.
//!
//! The oracle is `reference::matmul` on the dequantized weights with the exact f32
//! activations, then `reference::epilogue`. Integer activation policies are lossy by
//! design, so each case compares with a normalised mean squared error (NMSE, as ggml's
//! test-backend-ops) against a threshold written next to it with its reason.

use npurt_graph::{ActPrecision, DType, Epilogue, SeededRng};
use npurt_kernels::cpu::{
    gather_packed, matmul_packed, pack, with_isa, Isa, PackedMatrix, ThreadPool,
};
use npurt_kernels::{quant, reference};

/// Activations with a different magnitude per row and a few outliers, as real hidden
/// states have (outliers are what per-block I8 scales are for).
fn activations(rng: &mut SeededRng, m: usize, k: usize) -> Vec<f32> {
    let mut a = Vec::with_capacity(m * k);
    for i in 0..m {
        let s = 0.5 + (i % 7) as f32;
        for p in 0..k {
            let mut v = rng.uniform(-1.0, 1.0) * s;
            if (p * 31 + i * 7) % 97 == 0 {
                v *= 8.0;
            }
            a.push(v);
        }
    }
    a
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut err, mut sig) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite output {g}");
        err += (g as f64 - w as f64).powi(2);
        sig += (w as f64).powi(2);
    }
    err / sig.max(1e-30)
}

/// The activations the kernels actually multiply: quantized as the spec says (I16: one
/// scale `max|row| / 32767` per row; I8: one scale `max|block| / 127` per 32 values; both
/// round half to even) and dequantized. The reference on these is the tight oracle.
fn fake_quantize(a: &[f32], m: usize, k: usize, act: ActPrecision) -> Vec<f32> {
    let q = |x: &[f32], levels: f32, out: &mut Vec<f32>| {
        let s = x.iter().fold(0f32, |acc, v| acc.max(v.abs())) / levels;
        let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
        out.extend(
            x.iter()
                .map(|v| (v * inv).round_ties_even().clamp(-levels, levels) * s),
        );
    };
    let mut out = Vec::with_capacity(a.len());
    match act {
        ActPrecision::F32 => out.extend_from_slice(a),
        ActPrecision::I16 => a.chunks(k).for_each(|row| q(row, 32767.0, &mut out)),
        ActPrecision::I8 => a
            .chunks(k)
            .for_each(|row| row.chunks(32).for_each(|b| q(b, 127.0, &mut out))),
        ActPrecision::I8Row => a.chunks(k).for_each(|row| q(row, 127.0, &mut out)),
    }
    assert_eq!(out.len(), m * k);
    out
}

/// Error against the reference on the kernel's own quantized activations: only the
/// order of f32 operations differs (integer dot products are exact), so this is tight
/// for every precision (worst observed ~1e-13). Normalised by the output's energy plus
/// that of the products' magnitudes (`|a| @ |w|^T`), so an output that cancels to
/// nearly zero is judged by the rounding its terms allow, not by its own size.
const EXACT_NMSE: f64 = 1e-10;

/// NMSE against the f32 oracle (exact activations), calibrated on this suite's data
/// (worst observed in the comments) with a wide margin:
/// - F32: the kernels dequantize exactly; only the summation order differs (~1e-14);
/// - I16: one scale per row, step max|a| / 32767; with these rows' 8x outliers setting
///   the scale the rounding noise is ~1.5e-8 of the signal (~3e-8 observed);
/// - I8: one scale per 32-value block, step max|block| / 127: ~2e-5 of the signal in
///   plain blocks, 64x that in blocks holding an 8x outlier (~1/3 of them here), so
///   ~3e-4 on average and up to ~7e-4 observed with few outputs;
/// - I8Row: one scale per row, step max|row| / 127: every value is quantized with the
///   step of the row's 8x outliers, so the plain blocks lose what I8 keeps (~2.1e-3
///   observed).
///
/// Only asserted with at least 32 outputs: NMSE of a handful of dot products is
/// dominated by whichever one happens to be near zero.
fn threshold(act: ActPrecision) -> f64 {
    match act {
        ActPrecision::F32 => 1e-10,
        ActPrecision::I16 => 3e-7,
        ActPrecision::I8 => 3e-3,
        ActPrecision::I8Row => 2e-2,
    }
}

/// Worst NMSE seen per (activation precision, oracle), printed by each test.
static WORST: std::sync::Mutex<[[f64; 2]; 4]> = std::sync::Mutex::new([[0.0; 2]; 4]);

fn record(act: ActPrecision, oracle: usize, e: f64) {
    let i = ACTS.iter().position(|a| *a == act).unwrap_or(0);
    let mut w = WORST.lock().unwrap_or_else(|p| p.into_inner());
    w[i][oracle] = w[i][oracle].max(e);
}

fn report() {
    let w = *WORST.lock().unwrap_or_else(|p| p.into_inner());
    for (i, act) in ACTS.iter().enumerate() {
        eprintln!(
            "worst NMSE act={}: vs quantized-activation oracle {:.2e}, vs f32 oracle {:.2e}",
            act.name(),
            w[i][0],
            w[i][1]
        );
    }
}

/// The weight formats the matmul tests sweep: every one but BF16, which packs to f32
/// exactly as F16 does (`packing_is_lossless` checks BF16's packing).
fn formats() -> impl Iterator<Item = DType> {
    DType::WEIGHT_FORMATS
        .into_iter()
        .filter(|&d| d != DType::BF16)
}
const ACTS: [ActPrecision; 4] = [
    ActPrecision::I8,
    ActPrecision::I8Row,
    ActPrecision::I16,
    ActPrecision::F32,
];
/// LLaMA's lists, the ViT's (`+bias+gelu`, `+bias+gelu_tanh+residual`) and a GELU-gated
/// GLU with steps behind it.
fn epilogues() -> Vec<Epilogue> {
    use npurt_graph::{Activation, Step};
    let list = |steps: &[Step]| Epilogue::new(steps).expect("a valid list");
    vec![
        Epilogue::NONE,
        Epilogue::BIAS,
        Epilogue::RESIDUAL,
        Epilogue::BIAS_RESIDUAL,
        Epilogue::SWIGLU,
        list(&[Step::Bias, Step::Act(Activation::Gelu)]),
        list(&[Step::Bias, Step::Act(Activation::GeluTanh), Step::Residual]),
        list(&[Step::Glu(Activation::Gelu), Step::Bias]),
    ]
}

/// One weight matrix: its raw storage, the dequantized oracle values, and the packing.
struct Weight {
    dtype: DType,
    n: usize,
    k: usize,
    deq: Vec<f32>,
    packed: PackedMatrix,
}

fn weight(rng: &mut SeededRng, dtype: DType, n: usize, k: usize) -> Weight {
    // Rows of different magnitudes, so per-row and per-block scales matter.
    let mut x = Vec::with_capacity(n * k);
    for r in 0..n {
        let s = 0.05 * (1 + r % 5) as f32;
        x.extend(rng.uniform_vec(k, -s, s));
    }
    let raw = quant::quantize(dtype, &x, k).expect("quantize");
    let mut deq = vec![0f32; n * k];
    assert!(quant::dequantize_matrix(dtype, &raw, k, &mut deq));
    let packed = pack(dtype, &raw, n, k).unwrap_or_else(|e| panic!("pack {dtype} [{n}, {k}]: {e}"));
    Weight {
        dtype,
        n,
        k,
        deq,
        packed,
    }
}

fn pools() -> Vec<(usize, ThreadPool)> {
    [1, 2]
        .into_iter()
        .map(|t| (t, ThreadPool::new(t).expect("thread pool")))
        .collect()
}

/// Checks one (weight, activations, act, epilogue) case on every given path and
/// thread count against both oracles.
#[allow(clippy::too_many_arguments)]
fn check(
    w: &Weight,
    a: &[f32],
    m: usize,
    act: ActPrecision,
    epi: Epilogue,
    pools: &[(usize, ThreadPool)],
    rng: &mut SeededRng,
    isas: &[Isa],
    threads: &[usize],
) {
    let n_out = epi.out_cols(w.n).expect("even rows for a GLU");
    let bias = epi.has_bias().then(|| rng.uniform_vec(n_out, -1.0, 1.0));
    let residual = epi
        .has_residual()
        .then(|| rng.uniform_vec(m * n_out, -1.0, 1.0));
    let oracle = |a: &[f32]| {
        let pre = reference_product(w, a, m);
        let mut want = vec![0f32; m * n_out];
        reference::epilogue(
            &pre,
            m,
            w.n,
            epi,
            bias.as_deref(),
            residual.as_deref(),
            &mut want,
        );
        want
    };
    let a_q = fake_quantize(a, m, w.k, act);
    let want_exact = oracle(&a_q);
    let magnitude: f64 = {
        let abs_a: Vec<f32> = a_q.iter().map(|v| v.abs()).collect();
        let abs_w: Vec<f32> = w.deq.iter().map(|v| v.abs()).collect();
        let mut mag = vec![0f32; m * w.n];
        reference::matmul(&abs_a, &abs_w, m, w.k, w.n, true, &mut mag);
        mag.iter().map(|&v| (v as f64).powi(2)).sum()
    };
    let want_f32 = if act == ActPrecision::F32 {
        want_exact.clone()
    } else {
        oracle(a)
    };
    for &isa in isas {
        for (t, pool) in pools.iter().filter(|(t, _)| threads.contains(t)) {
            let mut got = vec![f32::NAN; m * n_out];
            pool.install(|| {
                with_isa(isa, || {
                    matmul_packed(
                        a,
                        m,
                        &w.packed,
                        act,
                        epi,
                        bias.as_deref(),
                        residual.as_deref(),
                        &mut got,
                    )
                })
            })
            .unwrap_or_else(|e| panic!("{}: {e}", w.dtype));
            let what = format!(
                "{} [{}, {}] m={m} act={} {epi:?} isa={} threads={t}",
                w.dtype,
                w.n,
                w.k,
                act.name(),
                isa.name()
            );
            let energy: f64 = want_exact.iter().map(|&v| (v as f64).powi(2)).sum();
            let e = nmse(&got, &want_exact) * energy.max(1e-30) / (energy + magnitude).max(1e-30);
            record(act, 0, e);
            assert!(
                e <= EXACT_NMSE,
                "{what}: NMSE vs the quantized-activation oracle {e:.3e} > {EXACT_NMSE:.0e}"
            );
            let e = nmse(&got, &want_f32);
            if m * n_out >= 32 {
                record(act, 1, e);
                assert!(
                    e <= threshold(act),
                    "{what}: NMSE vs the f32 oracle {e:.3e} > {:.0e}",
                    threshold(act)
                );
            }
        }
    }
}

fn reference_product(w: &Weight, a: &[f32], m: usize) -> Vec<f32> {
    let mut pre = vec![0f32; m * w.n];
    reference::matmul(a, &w.deq, m, w.k, w.n, true, &mut pre);
    pre
}

/// The full cross product of format x act x epilogue x ISA x threads, on small shapes
/// (rows 1, 5 and 17 exercise every row-block size of the microkernels).
#[test]
fn every_format_act_epilogue_isa_and_thread_count() {
    let isas = Isa::supported();
    eprintln!(
        "kernel paths under test: {:?}",
        isas.iter().map(|i| i.name()).collect::<Vec<_>>()
    );
    // A run meant for one path (scripts/test-aarch64.sh: neon+dotprod under qemu) must
    // not pass on the portable kernels alone because the CPU lacked it.
    if let Ok(want) = std::env::var("NPURT_REQUIRE_ISA") {
        assert!(
            isas.iter().any(|i| i.name() == want),
            "NPURT_REQUIRE_ISA={want}, but this CPU offers only {isas:?}"
        );
    }
    let pools = pools();
    let mut rng = SeededRng::new(0x5eed_0001);
    for dtype in formats() {
        // 64 rows: SwiGLU halves of 32 = two whole tiles (the fused path); k = 576 so that
        // m = 5 and 17 are large enough to be split over both threads.
        let w = weight(&mut rng, dtype, 64, 576);
        for m in [1, 5, 17] {
            let a = activations(&mut rng, m, w.k);
            for act in ACTS {
                for epi in epilogues() {
                    check(&w, &a, m, act, epi, &pools, &mut rng, &isas, &[1, 2]);
                }
            }
        }
    }
    report();
}

/// The norm prologues (`matmul_packed_norm`) on every path, format and activation
/// precision, at 1 and 2 threads, with m = 1, 5 and 130 (one and several row groups, the
/// parallel quantization path): each must give what normalizing first gives.
/// - rms_norm, against the reference norm: the norm's factor goes into the scales
///   instead of the values, so an i8/i16 value may round the other way at a tie; the
///   tolerance admits that and nothing like a wrong scale;
/// - layer_norm, against `layer_norm_f32` on the same path: the prologue normalizes
///   with that kernel's row code, so the results are equal bit for bit.
#[test]
fn norm_prologues_on_every_path() {
    use npurt_kernels::cpu::{layer_norm_f32, matmul_packed_norm, RowNorm};
    let pools = pools();
    let mut rng = SeededRng::new(0x5eed_0003);
    for dtype in formats() {
        let w = weight(&mut rng, dtype, 48, 576);
        let mut norm_w = || -> Vec<f32> {
            let v = rng.uniform_vec(w.k, -0.5, 0.5);
            v.iter().map(|x| 1.0 + x).collect()
        };
        let (rms_w, ln_w) = (norm_w(), norm_w());
        let ln_b = rng.uniform_vec(w.k, -0.5, 0.5);
        let norms = [
            RowNorm::Rms {
                weight: &rms_w,
                eps: 1e-5,
            },
            RowNorm::Layer {
                weight: &ln_w,
                bias: &ln_b,
                eps: 1e-6,
            },
        ];
        for m in [1, 5, 130] {
            // A mean away from zero, as a ViT's residual stream has (LayerNorm removes it).
            let a: Vec<f32> = activations(&mut rng, m, w.k)
                .iter()
                .map(|x| x + 2.0)
                .collect();
            for norm in norms {
                for act in ACTS {
                    for isa in Isa::supported() {
                        for (t, pool) in &pools {
                            let run = |fused: bool| {
                                let mut out = vec![f32::NAN; m * w.n];
                                pool.install(|| {
                                    with_isa(isa, || {
                                        let e = Epilogue::NONE;
                                        if fused {
                                            return matmul_packed_norm(
                                                &a, m, norm, &w.packed, act, e, None, None,
                                                &mut out,
                                            );
                                        }
                                        let mut normed = vec![0f32; a.len()];
                                        match norm {
                                            RowNorm::Rms { weight, eps } => {
                                                reference::rms_norm(&a, weight, eps, &mut normed)
                                            }
                                            RowNorm::Layer { weight, bias, eps } => {
                                                layer_norm_f32(&a, weight, bias, eps, &mut normed)?
                                            }
                                        }
                                        matmul_packed(
                                            &normed, m, &w.packed, act, e, None, None, &mut out,
                                        )
                                    })
                                })
                                .unwrap();
                                out
                            };
                            let (fused, unfused) = (run(true), run(false));
                            let kind = match norm {
                                RowNorm::Rms { .. } => "rms_norm",
                                RowNorm::Layer { .. } => "layer_norm",
                            };
                            let label = format!(
                                "{dtype} m={m} act={} isa={} threads={t} {kind}",
                                act.name(),
                                isa.name()
                            );
                            if let RowNorm::Layer { .. } = norm {
                                assert!(fused == unfused, "{label}: the fused norm differs");
                                continue;
                            }
                            let e = nmse(&fused, &unfused);
                            let tol = if act == ActPrecision::F32 {
                                1e-10
                            } else {
                                1e-6
                            };
                            assert!(e <= tol, "{label}: fused norm NMSE {e:.2e}");
                        }
                    }
                }
            }
        }
    }
}

/// Odd shapes: m in {1, 2, 3, 5, 9, 17, 64, 130}, k in {32, 96, 576, 1536, 8224}, n in {1, 3, 13, 17,
/// 65, 200, 577} (plus even n for SwiGLU, fused when n/2 is a multiple of 16 and
/// through the unaligned fallback otherwise), each on every path and thread count; the
/// epilogue rotates so each appears across shapes and formats.
#[test]
fn odd_shapes_on_every_path() {
    let isas = Isa::supported();
    let pools = pools();
    let shapes: [(usize, usize, usize); 16] = [
        (1, 32, 1),
        (2, 96, 3),
        (3, 576, 13),
        (5, 1536, 65),
        (17, 32, 200),
        (64, 96, 577),
        (130, 576, 65),
        (1, 1536, 577),
        (17, 576, 13),
        (130, 32, 3),
        (64, 1536, 200),
        (2, 576, 1),
        (5, 96, 1152),
        (130, 96, 200),
        // k past 256 blocks: the whole-row i32 kernels (`q8c_*`) convert in stretches.
        (9, 8224, 17),
        // 130 rows of 8224: 2 to 6 row slabs (`matmul_packed` quantizes at most 1 MiB
        // of activations at a time), the last one partial.
        (130, 8224, 17),
    ];
    let mut rng = SeededRng::new(0x5eed_0002);
    for (fi, dtype) in formats().enumerate() {
        for (si, &(m, k, n)) in shapes.iter().enumerate() {
            let w = weight(&mut rng, dtype, n, k);
            let a = activations(&mut rng, m, k);
            for (ai, act) in ACTS.into_iter().enumerate() {
                let choices: Vec<Epilogue> = epilogues()
                    .into_iter()
                    .filter(|e| e.out_cols(n).is_some())
                    .collect();
                let epi = choices[(fi + si + ai) % choices.len()];
                check(&w, &a, m, act, epi, &pools, &mut rng, &isas, &[1, 2]);
            }
        }
    }
    report();
}

/// Packing is lossless: every format's packed matrix dequantizes to exactly what
/// `quant::dequantize_matrix` gives from the GGUF bytes, bit for bit.
#[test]
fn packing_is_lossless() {
    let mut rng = SeededRng::new(0x5eed_0003);
    for dtype in DType::WEIGHT_FORMATS {
        for (n, k) in [(1, 32), (13, 96), (577, 64), (40, 1536)] {
            let mut x = rng.uniform_vec(n * k, -2.0, 2.0);
            // Exercise extremes: a zero block, and GGUF's raw -128 in Q8_0.
            x[..32].iter_mut().for_each(|v| *v = 0.0);
            let mut raw = quant::quantize(dtype, &x, k).unwrap();
            if dtype == DType::Q8_0 && raw.len() >= 34 * 2 {
                raw[34 + 2] = 0x80;
            }
            let mut want = vec![0f32; n * k];
            assert!(quant::dequantize_matrix(dtype, &raw, k, &mut want));
            let p = pack(dtype, &raw, n, k).unwrap();
            let mut got = vec![0f32; n * k];
            p.dequantize_rows(0..n, &mut got).unwrap();
            let same = got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits());
            assert!(
                same,
                "{dtype} [{n}, {k}]: packed values differ from quant::dequantize"
            );
            if dtype.is_quantized() {
                // The packed size is the GGUF size plus the last tile's zero padding.
                let tiles = n.div_ceil(16);
                assert!(
                    p.bytes() >= raw.len() && p.bytes() <= raw.len() / n * tiles * 16 + tiles * 64,
                    "{dtype}: {} bytes",
                    p.bytes()
                );
            }
        }
    }
}

#[test]
fn gather_rows_and_bad_ids() {
    let mut rng = SeededRng::new(0x5eed_0004);
    for dtype in [DType::Q8_0, DType::Q4_1, DType::Q4_0] {
        let w = weight(&mut rng, dtype, 37, 64);
        let ids = [0, 36, 5, 5, 17];
        let mut got = vec![0f32; ids.len() * 64];
        gather_packed(&w.packed, &ids, &mut got).unwrap();
        let mut want = vec![0f32; ids.len() * 64];
        reference::gather(&w.deq, 64, &ids, &mut want).unwrap();
        assert_eq!(got, want, "{dtype}");
        for bad in [37, -1, i32::MAX] {
            let e = gather_packed(&w.packed, &[1, bad], &mut got[..128]).unwrap_err();
            assert!(
                e.0.contains(&bad.to_string()),
                "error should name id {bad}: {e}"
            );
        }
        assert!(gather_packed(&w.packed, &[1], &mut got[..63]).is_err());
    }
}

#[test]
fn bad_inputs_are_errors() {
    let mut rng = SeededRng::new(0x5eed_0005);
    // Wrong byte counts, k not a whole number of blocks, empty, non-weight dtypes.
    assert!(pack(DType::Q4_1, &[0u8; 19], 1, 32).is_err());
    assert!(pack(DType::Q4_0, &[0u8; 18], 1, 16).is_err());
    assert!(pack(DType::Q8Channel, &[0u8; 33], 1, 32).is_err());
    assert!(pack(DType::Q8_0, &[], 0, 32).is_err());
    assert!(pack(DType::I8, &[0u8; 32], 1, 32).is_err());
    assert!(pack(DType::Q4_1, &[0u8; 20], usize::MAX / 2, 64).is_err());
    let w = weight(&mut rng, DType::Q4_1, 20, 64);
    let a = rng.uniform_vec(2 * 64, -1.0, 1.0);
    let mut out = vec![0f32; 2 * 20];
    let mut out_half = vec![0f32; 2 * 10];
    let bias = vec![0f32; 20];
    let res = [0f32; 40];
    let act = ActPrecision::I8;
    assert!(matmul_packed(
        &a[..127],
        2,
        &w.packed,
        act,
        Epilogue::NONE,
        None,
        None,
        &mut out
    )
    .is_err());
    assert!(matmul_packed(
        &a,
        2,
        &w.packed,
        act,
        Epilogue::NONE,
        None,
        None,
        &mut out[..39]
    )
    .is_err());
    assert!(matmul_packed(&a, 2, &w.packed, act, Epilogue::BIAS, None, None, &mut out).is_err());
    assert!(matmul_packed(
        &a,
        2,
        &w.packed,
        act,
        Epilogue::BIAS,
        Some(&bias[..19]),
        None,
        &mut out
    )
    .is_err());
    assert!(matmul_packed(
        &a,
        2,
        &w.packed,
        act,
        Epilogue::RESIDUAL,
        None,
        Some(&res[..39]),
        &mut out
    )
    .is_err());
    assert!(matmul_packed(
        &a,
        2,
        &w.packed,
        act,
        Epilogue::NONE,
        Some(&bias),
        None,
        &mut out
    )
    .is_err());
    assert!(matmul_packed(
        &a,
        2,
        &w.packed,
        act,
        Epilogue::SWIGLU,
        None,
        None,
        &mut out
    )
    .is_err());
    matmul_packed(
        &a,
        2,
        &w.packed,
        act,
        Epilogue::SWIGLU,
        None,
        None,
        &mut out_half,
    )
    .unwrap();
    let odd = weight(&mut rng, DType::Q4_1, 21, 64);
    assert!(matmul_packed(
        &a,
        2,
        &odd.packed,
        act,
        Epilogue::SWIGLU,
        None,
        None,
        &mut out_half
    )
    .is_err());
    // m = 0 is an empty product, not an error.
    matmul_packed(&[], 0, &w.packed, act, Epilogue::NONE, None, None, &mut []).unwrap();
}

/// Concurrent calls from several threads on one pool (as sessions sharing a backend
/// make) each get their own activation scratch, the pool to themselves or an inline
/// run, and the right answer.
#[test]
fn concurrent_calls_in_one_pool() {
    let mut rng = SeededRng::new(0x5eed_0007);
    let w = weight(&mut rng, DType::Q4_1, 96, 576);
    let inputs: Vec<(usize, Vec<f32>)> = [1, 3, 8, 17, 64, 2, 9, 33]
        .iter()
        .map(|&m| (m, activations(&mut rng, m, 576)))
        .collect();
    let want: Vec<Vec<f32>> = inputs
        .iter()
        .map(|(m, a)| {
            let mut o = vec![0f32; m * 96];
            matmul_packed(
                a,
                *m,
                &w.packed,
                ActPrecision::I8,
                Epilogue::NONE,
                None,
                None,
                &mut o,
            )
            .unwrap();
            o
        })
        .collect();
    let pool = ThreadPool::new(2).unwrap();
    for _ in 0..4 {
        let (pool, packed) = (&pool, &w.packed);
        let got: Vec<Vec<f32>> = std::thread::scope(|s| {
            let calls: Vec<_> = inputs
                .iter()
                .map(|(m, a)| {
                    s.spawn(move || {
                        pool.install(|| {
                            let mut o = vec![0f32; m * 96];
                            matmul_packed(
                                a,
                                *m,
                                packed,
                                ActPrecision::I8,
                                Epilogue::NONE,
                                None,
                                None,
                                &mut o,
                            )
                            .unwrap();
                            o
                        })
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(got, want);
    }
}

/// Non-finite activations must not crash any path (the values are garbage in, garbage
/// out, but the process survives).
#[test]
fn non_finite_activations_do_not_panic() {
    let mut rng = SeededRng::new(0x5eed_0006);
    let w = weight(&mut rng, DType::Q4_1, 32, 64);
    let mut a = rng.uniform_vec(3 * 64, -1.0, 1.0);
    a[5] = f32::NAN;
    a[70] = f32::INFINITY;
    a[140] = f32::NEG_INFINITY;
    let mut out = vec![0f32; 3 * 32];
    for isa in Isa::supported() {
        for act in ACTS {
            with_isa(isa, || {
                matmul_packed(&a, 3, &w.packed, act, Epilogue::NONE, None, None, &mut out)
            })
            .unwrap();
        }
    }
}

fn to_f16(x: &[f32]) -> Vec<half::f16> {
    x.iter().map(|&v| half::f16::from_f32(v)).collect()
}

/// Attention on every path this CPU has, at 1 and 2 threads, against the reference:
/// prefill chunks over several query and key blocks (with a causal edge and padded
/// rows), decode over contexts that are split across threads and merged, head_dims
/// that are not multiples of 16 (the value tiles' 8- and 1-column tails), and the
/// bidirectional mode (batches of sequences that are not multiples of the row or key
/// blocks, GQA).
#[test]
fn attention_every_path_matches_reference() {
    use npurt_kernels::cpu::{attention_bidirectional_f32, attention_f32, Qkv};
    // (heads, kv heads, head_dim, rows, cache rows, pos, n_valid)
    let cases = [
        (9, 3, 64, 40, 200, 100, 40),
        (9, 3, 64, 128, 300, 130, 97),
        (9, 3, 64, 1, 300, 0, 1),
        (9, 3, 64, 1, 300, 37, 1),
        (9, 3, 64, 1, 300, 250, 1),
        (6, 2, 80, 1, 100, 70, 1),
        // Decode shapes of the AVX-512 decode kernel: MHA, groups of 4 to 8 (passes of
        // up to four query heads, two at head_dim 96 and 128), head_dims 32 to 128,
        // keys that are not whole 16- or 32-key blocks, one key, several splits.
        (8, 1, 128, 1, 100, 77, 1),
        (4, 4, 32, 1, 50, 16, 1),
        (12, 2, 96, 1, 70, 40, 1),
        (10, 2, 64, 1, 600, 530, 1),
        (8, 2, 80, 1, 40, 0, 1),
        (2, 2, 128, 1, 1100, 1099, 1),
        (4, 4, 32, 5, 40, 20, 5),
        (2, 2, 24, 3, 16, 5, 3),
        (2, 1, 72, 20, 64, 30, 17),
        (3, 3, 13, 4, 9, 2, 4),
    ];
    let pools = pools();
    let mut rng = SeededRng::new(0x5eed_0a77);
    for (nh, nkv, hd, rows, cache, pos, n_valid) in cases {
        let q = rng.uniform_vec(rows * nh * hd, -2.0, 2.0);
        let k = rng.uniform_vec(cache * nkv * hd, -2.0, 2.0);
        let v = rng.uniform_vec(cache * nkv * hd, -1.0, 1.0);
        // The same caches stored as f16; their reference is the f32 attention over the
        // f16-rounded values.
        let (k16, v16) = (to_f16(&k), to_f16(&v));
        let widen = |x: &[half::f16]| x.iter().map(|h| h.to_f32()).collect::<Vec<f32>>();
        let scale = 1.0 / (hd as f32).sqrt();
        let mut want = vec![0f32; q.len()];
        reference::attention(&q, &k, &v, pos, n_valid, nh, nkv, hd, scale, &mut want).unwrap();
        let mut want16 = vec![0f32; q.len()];
        let (kw, vw) = (widen(&k16), widen(&v16));
        reference::attention(&q, &kw, &vw, pos, n_valid, nh, nkv, hd, scale, &mut want16).unwrap();
        // And as an int8 cache (`DType::Q8Head`): its reference reads the dequantized
        // values.
        let to_q8 = |x: &[f32]| {
            let mut c = vec![0u8; cache * nkv * (hd + 4)];
            reference::kv_write_q8head(&mut c, x, nkv * hd, hd, 0).unwrap();
            c
        };
        let (k8, v8) = (to_q8(&k), to_q8(&v));
        let (kd, vd) = (
            reference::dequantize_kv_q8head(&k8, hd),
            reference::dequantize_kv_q8head(&v8, hd),
        );
        let mut want8 = vec![0f32; q.len()];
        reference::attention(&q, &kd, &vd, pos, n_valid, nh, nkv, hd, scale, &mut want8).unwrap();
        for isa in Isa::supported() {
            for ((t, pool), kv) in pools
                .iter()
                .flat_map(|p| [(p, "f32"), (p, "f16"), (p, "int8")])
            {
                let mut got = vec![f32::NAN; q.len()];
                pool.install(|| {
                    with_isa(isa, || match kv {
                        "f16" => attention_f32(
                            &q, &k16, &v16, pos, n_valid, nh, nkv, hd, scale, &mut got,
                        ),
                        "int8" => {
                            attention_f32(&q, &k8, &v8, pos, n_valid, nh, nkv, hd, scale, &mut got)
                        }
                        _ => attention_f32(&q, &k, &v, pos, n_valid, nh, nkv, hd, scale, &mut got),
                    })
                })
                .unwrap();
                let want = match kv {
                    "f16" => &want16,
                    "int8" => &want8,
                    _ => &want,
                };
                // Rows past n_valid are padding: any finite value will do.
                let valid = n_valid * nh * hd;
                let e = nmse(&got[..valid], &want[..valid]);
                assert!(
                    e < 1e-10,
                    "attention {nh}/{nkv} hd{hd} rows{rows} pos{pos} n_valid{n_valid} kv={kv} isa={} threads={t}: nmse {e:e}",
                    isa.name()
                );
                assert!(got.iter().all(|x| x.is_finite()));
            }
        }
    }
    // Bidirectional: the same sweep as the i8 and f16 variants, against the f32
    // reference within 1e-10.
    attention_variant_matches_reference(
        "f32",
        attention_bidirectional_f32,
        reference::attention_bidirectional,
        1e-10,
        f64::MIN_POSITIVE,
        0x5eed_0b1d,
    );
    // Bad dense shapes are checked by the sweep above. Strides narrower than a row, or
    // rows past the end of an operand, are errors; ranges that overlap are read as they
    // are.
    let (x, mut out) = (vec![0f32; 10 * 24], vec![0f32; 10 * 8]);
    for (width, cols, ok) in [
        (24, [0, 8, 16], true),
        (12, [0, 4, 8], true),
        (24, [0, 8, 17], false),
        (7, [0, 0, 0], false),
    ] {
        let qkv = Qkv::columns_of(&x, width, cols);
        let got = attention_bidirectional_f32(qkv, 5, 2, 2, 4, 0.5, &mut out);
        assert_eq!(got.is_ok(), ok, "width {width}, columns {cols:?}: {got:?}");
    }
}

/// A bidirectional attention kernel's signature (q, k, v read in place, seq, heads, kv
/// heads, head_dim, scale, out).
type AttentionKernel = fn(
    npurt_kernels::cpu::Qkv,
    usize,
    usize,
    usize,
    usize,
    f32,
    &mut [f32],
) -> Result<(), reference::KernelError>;

/// `kernel` on dense `q`, `k`, `v` in `pool` on path `isa`, and again on the same
/// values as the column ranges of one fused `[rows, q + 2 kv]` product read in place
/// (`Qkv::columns_of`, as the CPU backend passes a ViT's q/k/v): the two must be equal
/// bit for bit. Returns the dense run's output.
fn in_place_matches_dense(
    kernel: AttentionKernel,
    [q, k, v]: [&[f32]; 3],
    [seq, nh, nkv, hd]: [usize; 4],
    scale: f32,
    pool: &ThreadPool,
    isa: Isa,
) -> Vec<f32> {
    use npurt_kernels::cpu::Qkv;
    let (qw, kw) = (nh * hd, nkv * hd);
    let width = qw + 2 * kw;
    let fused: Vec<f32> = (0..q.len() / qw)
        .flat_map(|r| [&q[r * qw..][..qw], &k[r * kw..][..kw], &v[r * kw..][..kw]])
        .flatten()
        .copied()
        .collect();
    let run = |qkv: Qkv| {
        let mut out = vec![f32::NAN; q.len()];
        pool.install(|| with_isa(isa, || kernel(qkv, seq, nh, nkv, hd, scale, &mut out)))
            .unwrap();
        out
    };
    let dense = run(Qkv::dense(q, k, v, [qw, kw]));
    let in_place = run(Qkv::columns_of(&fused, width, [0, qw, qw + kw]));
    assert!(
        dense == in_place,
        "{nh}/{nkv} hd{hd} seq{seq} isa={}: q/k/v read in place differ from dense ones",
        isa.name()
    );
    dense
}

/// A reference bidirectional attention's signature (dense q, k, v, seq, heads, kv
/// heads, head_dim, scale, out).
type AttentionFn = fn(
    &[f32],
    &[f32],
    &[f32],
    usize,
    usize,
    usize,
    usize,
    f32,
    &mut [f32],
) -> Result<(), reference::KernelError>;

/// `kernel` on every path this CPU has, at 1 and 2 threads, against `reference` within
/// `nmse` (printed), over sequences that are not multiples of 4, 16, 32 or 64 keys,
/// head_dims of one to eight vectors with tails, GQA and one so400m head batch. Also
/// checks `reference` itself within `to_f32` of f32 attention, and that bad shapes are
/// errors.
fn attention_variant_matches_reference(
    name: &str,
    kernel: AttentionKernel,
    reference: AttentionFn,
    nmse_max: f64,
    to_f32: f64,
    seed: u64,
) {
    let mut rng = SeededRng::new(seed);
    let pools = pools();
    for (nh, nkv, hd, seqs, seq) in [
        (4, 4, 72, 2, 129),
        (3, 1, 32, 3, 50),
        (2, 2, 80, 1, 17),
        (2, 2, 128, 1, 40),
        (2, 2, 64, 2, 65),
        (2, 2, 24, 2, 7),
        (1, 1, 13, 3, 1),
        (16, 16, 72, 1, 729),
    ] {
        let q = rng.uniform_vec(seqs * seq * nh * hd, -2.0, 2.0);
        let k = rng.uniform_vec(seqs * seq * nkv * hd, -2.0, 2.0);
        let v = rng.uniform_vec(seqs * seq * nkv * hd, -1.0, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut exact = vec![0f32; q.len()];
        reference::attention_bidirectional(&q, &k, &v, seq, nh, nkv, hd, scale, &mut exact)
            .unwrap();
        let mut want = vec![0f32; q.len()];
        reference(&q, &k, &v, seq, nh, nkv, hd, scale, &mut want).unwrap();
        let e = nmse(&want, &exact);
        println!("{name} reference {nh}/{nkv} hd{hd} {seqs}x{seq}: nmse {e:.2e} to f32");
        assert!(
            e < to_f32,
            "{name} reference {nh}/{nkv} hd{hd} {seqs}x{seq}: nmse {e:e} to f32"
        );
        for isa in Isa::supported() {
            for (t, pool) in &pools {
                let got = in_place_matches_dense(
                    kernel,
                    [&q, &k, &v],
                    [seq, nh, nkv, hd],
                    scale,
                    pool,
                    isa,
                );
                let e = nmse(&got, &want);
                println!(
                    "  isa={} threads={t}: nmse {e:.2e} to the reference",
                    isa.name()
                );
                assert!(
                    e < nmse_max,
                    "{name} attention {nh}/{nkv} hd{hd} {seqs}x{seq} isa={} threads={t}: nmse {e:e}",
                    isa.name()
                );
            }
        }
    }
    let (q, mut out) = (vec![0f32; 10 * 8], vec![0f32; 10 * 8]);
    for (k, seq, nkv) in [
        (&q[..], 3, 2),
        (&q[..8], 5, 2),
        (&q[..], 5, 3),
        (&q[..], 0, 2),
    ] {
        let qkv = npurt_kernels::cpu::Qkv::dense(&q, k, k, [8, nkv * 4]);
        assert!(kernel(qkv, seq, 2, nkv, 4, 0.5, &mut out).is_err());
    }
}

/// Integer attention (`AttentionPrecision::I8`) against the reference's emulation: the
/// integers are the same, only `exp` may move a softmax weight to the neighbouring u8
/// (NMSE ~1e-8 at most; a wrong key offset, scale or byte order is ~1). The emulation
/// itself stays within 1e-3 of f32 attention.
#[test]
fn int8_attention_every_path_matches_reference() {
    attention_variant_matches_reference(
        "int8",
        npurt_kernels::cpu::attention_bidirectional_i8,
        reference::attention_bidirectional_i8,
        1e-6,
        1e-3,
        0x5eed_00a8,
    );
}

/// f16 attention (`AttentionPrecision::F16`) against the reference (f16-rounded
/// operands summed in f32): the AVX512-FP16 tiles sum in f16 (NMSE ~1e-5, the
/// conformance threshold is 1e-4), the VNNI tiles in 16-bit integers (~5e-6); the
/// other paths run the f32 kernel (~1e-7).
#[test]
fn f16_attention_every_path_matches_reference() {
    attention_variant_matches_reference(
        "f16",
        npurt_kernels::cpu::attention_bidirectional_f16,
        reference::attention_bidirectional_f16,
        5e-5,
        1e-5,
        0x5eed_00f1,
    );
}

/// LayerNorm on every path this CPU has, at 1 and 2 threads (rows enough for the
/// parallel path): odd widths, the ViT's 1152 and MLP 4304, a mean far from zero (a
/// one-pass variance would lose digits there). The oracle is the same two-pass formula
/// in f64: the reference kernel's sequential f32 sum of the mean is itself off by up
/// to ~1e-5 at these widths and offsets (centering magnifies the mean's rounding by
/// `|x| / std`), so the kernel is held to the exact value within 1e-6 of that scale
/// and to the reference within the reference's own error.
#[test]
fn layer_norm_every_path_matches_reference() {
    use npurt_kernels::cpu::layer_norm_f32;
    let pools = pools();
    let mut rng = SeededRng::new(0x5eed_1a7e);
    for (rows, h, offset) in [
        (3, 1, 0.0),
        (7, 13, 20.0),
        (5, 65, 20.0),
        (9, 72, 0.0),
        (70, 1152, 20.0),
        (70, 1152, 0.0),
        (2, 4304, 5.0),
    ] {
        let x: Vec<f32> = rng
            .uniform_vec(rows * h, -3.0, 3.0)
            .iter()
            .map(|v| v + offset)
            .collect();
        let w = rng.uniform_vec(h, -1.0, 1.0);
        let b = rng.uniform_vec(h, -0.5, 0.5);
        let eps = 1e-6;
        let mut want = vec![0f32; x.len()];
        reference::layer_norm(&x, &w, &b, eps, &mut want);
        // Exact (f64) outputs and each value's error scale.
        let mut exact = vec![0f64; x.len()];
        let mut scale = vec![0f64; x.len()];
        for (r, row) in x.chunks(h).enumerate() {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for i in 0..h {
                let (xi, wi) = (row[i] as f64, w[i] as f64);
                exact[r * h + i] = (xi - mean) * inv * wi + b[i] as f64;
                scale[r * h + i] = (xi.abs() * inv).max(1.0) * wi.abs().max(1.0);
            }
        }
        let ref_err = (0..x.len())
            .map(|i| (want[i] as f64 - exact[i]).abs() / scale[i])
            .fold(0f64, f64::max);
        for isa in Isa::supported() {
            for (t, pool) in &pools {
                let mut got = vec![f32::NAN; x.len()];
                pool.install(|| with_isa(isa, || layer_norm_f32(&x, &w, &b, eps, &mut got)))
                    .unwrap();
                for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                    let (e_exact, e_ref) = ((g as f64 - exact[i]).abs(), (g - r).abs() as f64);
                    assert!(
                        e_exact <= 1e-6 * scale[i] && e_ref <= (1e-6 + ref_err) * scale[i],
                        "layer_norm {rows}x{h}+{offset} isa={} threads={t} [{i}]: {g} vs reference {r}, exact {}",
                        isa.name(),
                        exact[i]
                    );
                }
            }
        }
    }
    let mut out = vec![0f32; 6];
    assert!(layer_norm_f32(&[0.0; 6], &[1.0; 4], &[0.0; 4], 1e-5, &mut out).is_err());
}
