//! What only the wgpu backend has, on top of the conformance suite (which checks
//! every op against the reference kernels, on both kernel families here): weights
//! split across bindings, run-time values the kernels validate, submit handles,
//! pipeline and bind-group reuse, what `supports` declines, adapter reporting, and
//! SmolLM2 end to end against HF goldens.
//!
//! CI has no GPU: these run on Mesa's lavapipe (scripts/test.sh installs it). A missing
//! adapter fails the tests, it never skips them.

use npurt_backends::wgpu::{KernelFamily, KernelVariants, WgpuBackend, WgpuOptions};
use npurt_backends::{Backend, BackendError, Bindings, BufferUsage, Support};
use npurt_graph::{
    ActPrecision, DType, Epilogue, Graph, NodeId, Op, Prologue, RopeParams, RopeScaling, SeededRng,
    TensorFact,
};
use npurt_kernels::{quant, reference as r, HostTensor};
use std::collections::HashMap;
use std::sync::OnceLock;

/// One backend for the whole binary: tests run on it concurrently.
fn be() -> &'static WgpuBackend {
    static B: OnceLock<WgpuBackend> = OnceLock::new();
    B.get_or_init(|| {
        WgpuBackend::new(WgpuOptions::default()).unwrap_or_else(|e| panic!("wgpu backend: {e}"))
    })
}

/// Both matmul kernel families (the adapter picks one by default: `Lanes` on CPU
/// drivers, `Tiled` on GPUs), so CI on lavapipe checks the GPU kernels too.
fn both() -> [&'static WgpuBackend; 2] {
    static TILED: OnceLock<WgpuBackend> = OnceLock::new();
    static LANES: OnceLock<WgpuBackend> = OnceLock::new();
    let make = |k| {
        WgpuBackend::new(WgpuOptions {
            kernels: Some(k),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("wgpu backend: {e}"))
    };
    [
        TILED.get_or_init(|| make(KernelFamily::Tiled)),
        LANES.get_or_init(|| make(KernelFamily::Lanes)),
    ]
}

/// A backend whose bindings are capped at `bytes`, so small weights split into parts.
fn small_binding_backend(bytes: u64, matmul: KernelFamily) -> WgpuBackend {
    WgpuBackend::new(WgpuOptions {
        max_binding_bytes: Some(bytes),
        kernels: Some(matmul),
        ..Default::default()
    })
    .expect("wgpu backend")
}

fn assert_close(what: &str, ours: &[f32], want: &[f32], rel: f32) {
    assert_eq!(ours.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-6);
    let mut worst = (0f32, 0usize);
    for (i, (a, b)) in ours.iter().zip(want).enumerate() {
        let d = (a - b).abs();
        assert!(!a.is_nan(), "{what}: NaN at {i}");
        if d > worst.0 {
            worst = (d, i);
        }
    }
    assert!(
        worst.0 <= rel * scale,
        "{what}: max diff {} at {} (ours {}, ref {}) > {rel} x {scale}",
        worst.0,
        worst.1,
        ours[worst.1],
        want[worst.1]
    );
}

/// Graph-building shorthand.
struct G {
    g: Graph,
}

impl G {
    fn new() -> Self {
        G { g: Graph::new() }
    }
    fn input(&mut self, name: &str, fact: TensorFact) -> NodeId {
        self.g
            .add(
                name,
                Op::Input {
                    name: name.into(),
                    fact,
                },
                &[],
            )
            .unwrap()
    }
    fn weight(&mut self, name: &str, fact: TensorFact) -> NodeId {
        self.g
            .add(
                name,
                Op::Weight {
                    name: name.into(),
                    fact,
                    parts: vec![],
                },
                &[],
            )
            .unwrap()
    }
    fn state(&mut self, name: &str, fact: TensorFact) -> NodeId {
        self.g
            .add(
                name,
                Op::State {
                    name: name.into(),
                    fact,
                },
                &[],
            )
            .unwrap()
    }
    fn op(&mut self, name: &str, op: Op, ins: &[NodeId]) -> NodeId {
        self.g.add(name, op, ins).unwrap()
    }
    fn out(&mut self, name: &str, id: NodeId) {
        self.g.set_output(name, id);
    }
}

/// Sources for one run, by source name.
#[derive(Default)]
struct Feeds {
    inputs: Vec<(&'static str, HostTensor)>,
    weights: Vec<(&'static str, HostTensor)>,
}

fn f32s(t: HostTensor) -> Vec<f32> {
    t.into_f32().expect("f32 output")
}

/// Prepares the weights, compiles `g`, runs it once on `feeds`; returns the outputs.
fn run_on(
    be: &dyn Backend,
    g: &Graph,
    feeds: &Feeds,
) -> Result<HashMap<String, Vec<f32>>, BackendError> {
    let mut weights = Vec::new();
    for (id, name, _) in g.sources("weight") {
        let (_, t) = feeds
            .weights
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no weight {name}"));
        weights.push((id, be.prepare_weight(name, t.clone())?));
    }
    let exec = be.compile(g, &weights)?;
    let mut b = Bindings::default();
    for (name, t) in &feeds.inputs {
        let buf = be.alloc(&t.fact, BufferUsage::Activations)?;
        be.write(buf.as_ref(), t)?;
        b.sources.push((
            g.find_source("input", name)
                .unwrap_or_else(|| panic!("no input {name}")),
            buf,
        ));
    }
    for (name, id) in &g.outputs {
        b.outputs.push((
            name.clone(),
            be.alloc(g.fact(*id), BufferUsage::Activations)?,
        ));
    }
    let mut scratch = exec.new_scratch()?;
    exec.run(&b, scratch.as_mut())?;
    be.synchronize()?;
    let mut outputs = HashMap::new();
    for (name, buf) in &b.outputs {
        outputs.insert(name.clone(), f32s(be.read(buf.as_ref())?));
    }
    Ok(outputs)
}

/// An f32 causal GQA attention over a KV cache (`[q, k_cache, v_cache, pos, n_valid]`),
/// scale 0.25.
fn causal_attention(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Op {
    Op::Attention {
        n_heads,
        n_kv_heads,
        head_dim,
        scale: 0.25,
        mode: npurt_graph::AttentionMode::Causal,
        precision: npurt_graph::AttentionPrecision::F32,
    }
}

fn scalar(v: i32) -> HostTensor {
    HostTensor::i32([1], vec![v])
}

/// The backend conformance suite (every op of the IR against the reference kernels,
/// by NMSE) on one kernel family: every case passes and none is declined, since on
/// wgpu nothing may fall back to the CPU. The per-op sweeps (shapes, formats,
/// epilogues, rope scalings, wide-range GELU) live in the suite, where every backend
/// meets them; this file keeps what only wgpu has.
fn conformance_passes_without_declining(be: &WgpuBackend) {
    let report = npurt_backends::conformance::run_suite(be, None);
    println!("{report}");
    let unsupported: Vec<String> = report
        .rows
        .iter()
        .filter(|r| {
            matches!(
                r.status,
                npurt_backends::conformance::Status::Unsupported(_)
            )
        })
        .map(|r| format!("{}/{}: {:?}", r.op, r.case, r.status))
        .collect();
    assert!(
        unsupported.is_empty(),
        "unsupported on wgpu ({:?}):\n{}",
        be.kernel_family(),
        unsupported.join("\n")
    );
    assert_eq!(report.failed(), 0, "{:?}:\n{report}", be.kernel_family());
    assert!(report.passed() > 0, "{report}");
}

#[test]
fn conformance_tiled_kernels() {
    conformance_passes_without_declining(both()[0]);
}

#[test]
fn conformance_lanes_kernels() {
    conformance_passes_without_declining(both()[1]);
}

/// What lavapipe offers: every optional instruction but cooperative matrices (no
/// matrix units).
const LAVAPIPE_VARIANTS: KernelVariants = KernelVariants {
    coop: false,
    ..KernelVariants::ALL
};

/// The tiled kernels' optional instructions (f16 tiles, subgroup shuffles, packed i8
/// dot products) are on by default where the adapter has them, and lavapipe has all
/// of them, so `conformance_tiled_kernels` runs them; their plain fallbacks (what an
/// adapter without them runs) meet the matmul cases here, the only op they change.
/// Cooperative matrices, which lavapipe lacks, are a typed error when asked for.
#[test]
fn conformance_tiled_kernels_without_optional_instructions() {
    assert_eq!(
        both()[0].kernel_variants(),
        LAVAPIPE_VARIANTS,
        "lavapipe should offer every kernel variant but coop, so the conformance suite runs them"
    );
    let coop = WgpuBackend::new(WgpuOptions {
        variants: Some(KernelVariants::parse("coop").unwrap()),
        ..Default::default()
    });
    assert!(
        matches!(&coop, Err(BackendError::Unavailable { reason, .. })
            if reason.contains("`coop` asked for") && reason.contains("f16+subgroup+dot4")),
        "{:?}",
        coop.err()
    );
    let kernels = tiled_matmul_conformance(
        WgpuOptions {
            variants: Some(KernelVariants::PLAIN),
            ..Default::default()
        },
        "(plain)",
    );
    assert_eq!(kernels, "tiled (plain)");
}

/// The conformance suite's cases of `op` on a tiled backend with these options
/// (variants, tile sizes): none fails, at least `min_cases` run, and the backend's
/// kernels description, which is returned, ends with `kernels_end` (what the options
/// force).
fn tiled_conformance(op: &str, min_cases: usize, opts: WgpuOptions, kernels_end: &str) -> String {
    let be = WgpuBackend::new(WgpuOptions {
        kernels: Some(KernelFamily::Tiled),
        ..opts
    })
    .expect("wgpu backend");
    let report = npurt_backends::conformance::run_suite(&be, Some(op));
    assert_eq!(report.failed(), 0, "{report}");
    assert!(report.passed() >= min_cases, "{report}");
    let kernels = be.capabilities().kernels.clone();
    assert!(kernels.ends_with(kernels_end), "{kernels}");
    kernels
}

/// `WgpuBackend::new` refuses these options with a typed `Unavailable` error whose
/// reason names `what`.
fn assert_refused(opts: WgpuOptions, what: &str) {
    let bad = WgpuBackend::new(opts);
    assert!(
        matches!(&bad, Err(BackendError::Unavailable { reason, .. }) if reason.contains(what)),
        "{:?}",
        bad.err()
    );
}

/// `tiled_conformance` of the matmul cases (over a hundred).
fn tiled_matmul_conformance(opts: WgpuOptions, kernels_end: &str) -> String {
    tiled_conformance("matmul", 100, opts, kernels_end)
}

/// The tiled GEMM's 32-row tiles (`NPURT_WGPU_GEMM_ROWS=32`, for GPUs a 64-row grid
/// leaves idle) meet the matmul cases too, with and without the optional
/// instructions; a tile height other than 32 or 64 is refused with a typed error.
#[test]
fn conformance_tiled_gemm_with_32_row_tiles() {
    for variants in [LAVAPIPE_VARIANTS, KernelVariants::PLAIN] {
        tiled_matmul_conformance(
            WgpuOptions {
                variants: Some(variants),
                gemm_rows: Some(32),
                ..Default::default()
            },
            ", 32-row gemm tiles)",
        );
    }
    assert_refused(
        WgpuOptions {
            gemm_rows: Some(48),
            ..Default::default()
        },
        "48 rows",
    );
}

/// The GEMV with 2 and 4 output columns per thread (picked per node for wide
/// matrices, which the conformance cases are not; `NPURT_WGPU_GEMV_COLS` forces it)
/// meets the matmul cases, with subgroup and with workgroup-memory reductions; a
/// count other than 1, 2 or 4 is refused with a typed error.
#[test]
fn conformance_tiled_gemv_with_several_columns_per_thread() {
    for (variants, cols) in [(LAVAPIPE_VARIANTS, 2), (KernelVariants::PLAIN, 4)] {
        tiled_matmul_conformance(
            WgpuOptions {
                variants: Some(variants),
                gemv_cols: Some(cols),
                ..Default::default()
            },
            &format!(", {cols}-column gemv threads)"),
        );
    }
    assert_refused(
        WgpuOptions {
            gemv_cols: Some(3),
            ..Default::default()
        },
        "3 columns",
    );
}

/// Decode attention with each row's keys split into ranges, a workgroup each, merged
/// by a second dispatch (flash-decoding; picked per node for long caches on GPUs,
/// forced by `NPURT_WGPU_ATTN_SPLITS`) meets the attention cases with 2 ranges and
/// with 32, most of them empty; more ranges than the merge holds is refused with a
/// typed error.
#[test]
fn conformance_tiled_attention_with_split_keys() {
    for splits in [2, 32] {
        tiled_conformance(
            "attention",
            50,
            WgpuOptions {
                attn_splits: Some(splits),
                ..Default::default()
            },
            &format!(", attention keys in {splits} ranges)"),
        );
    }
    assert_refused(
        WgpuOptions {
            attn_splits: Some(33),
            ..Default::default()
        },
        "33 ranges",
    );
}

/// A decode step's attention with its keys split runs two dispatches (the attention,
/// then the merge), on the tiled kernels only; lavapipe is a CPU driver, which
/// splits nothing by itself (`attention_splits` picks for GPUs), so the count is
/// forced. Its output over 1000 keys (4 ranges of 256, the last short) is the CPU
/// backend's; positions past the cache are a typed error, and the next run is right
/// again.
#[test]
fn split_decode_attention_runs_two_dispatches_and_checks_positions() {
    let (nh, nkv, hd, cache_rows) = (4, 2, 16, 1024);
    let mut g = G::new();
    let q = g.input("q", TensorFact::f32([1, nh * hd]));
    let k_cache = g.input("k_cache", TensorFact::f32([cache_rows, nkv * hd]));
    let v_cache = g.input("v_cache", TensorFact::f32([cache_rows, nkv * hd]));
    let pos = g.input("pos", TensorFact::i32([1]));
    let nv = g.input("n_valid", TensorFact::i32([1]));
    let y = g.op(
        "attention",
        causal_attention(nh, nkv, hd),
        &[q, k_cache, v_cache, pos, nv],
    );
    g.out("y", y);
    let [tiled, lanes] = both();
    let dispatches = |be: &WgpuBackend| be.compile_wgpu(&g.g, &[]).unwrap().dispatch_count();
    assert_eq!(dispatches(tiled), 1, "lavapipe splits nothing by itself");
    assert_eq!(dispatches(lanes), 1);
    let with = |kernels, splits| {
        WgpuBackend::new(WgpuOptions {
            kernels: Some(kernels),
            attn_splits: Some(splits),
            ..Default::default()
        })
        .unwrap()
    };
    assert_eq!(dispatches(&with(KernelFamily::Tiled, 1)), 1);
    assert_eq!(dispatches(&with(KernelFamily::Lanes, 4)), 1);
    let split = with(KernelFamily::Tiled, 4);
    assert_eq!(dispatches(&split), 2);

    let kv = cache_rows * nkv * hd;
    let feeds = |p: i32| Feeds {
        inputs: vec![
            (
                "q",
                HostTensor::f32(
                    [1, nh * hd],
                    SeededRng::new(900).uniform_vec(nh * hd, -2.0, 2.0),
                ),
            ),
            (
                "k_cache",
                HostTensor::f32(
                    [cache_rows, nkv * hd],
                    SeededRng::new(901).uniform_vec(kv, -2.0, 2.0),
                ),
            ),
            (
                "v_cache",
                HostTensor::f32(
                    [cache_rows, nkv * hd],
                    SeededRng::new(902).uniform_vec(kv, -2.0, 2.0),
                ),
            ),
            ("pos", scalar(p)),
            ("n_valid", scalar(1)),
        ],
        weights: vec![],
    };
    let cpu = npurt_backends::cpu::CpuBackend::new(Default::default());
    let want = run_on(&cpu, &g.g, &feeds(999)).unwrap();
    let got = run_on(&split, &g.g, &feeds(999)).unwrap();
    assert_close("split attention", &got["y"], &want["y"], 1e-5);
    match run_on(&split, &g.g, &feeds(cache_rows as i32)) {
        Err(BackendError::Execution { node, reason }) => {
            assert_eq!(node, "attention", "{reason}");
            assert!(reason.contains("positions"), "{reason}");
        }
        other => panic!("expected a positions error, got {other:?}"),
    }
    let again = run_on(&split, &g.g, &feeds(999)).unwrap();
    assert_close(
        "split attention after an error",
        &again["y"],
        &want["y"],
        1e-5,
    );
}

#[test]
fn kernel_variants_parse_and_name() {
    let v = KernelVariants::parse("f16,dot4").unwrap();
    assert!(v.f16 && v.dot4 && !v.subgroup && !v.coop);
    assert_eq!(v.name(), "f16+dot4");
    assert_eq!(
        KernelVariants::parse("dot4+coop").unwrap().name(),
        "dot4+coop"
    );
    assert_eq!(KernelVariants::parse("all").unwrap(), KernelVariants::ALL);
    assert_eq!(KernelVariants::parse("plain").unwrap().name(), "plain");
    let e = KernelVariants::parse("f16,warp").unwrap_err();
    assert!(e.contains("`warp`"), "{e}");
}

/// The microbenchmarks `npurt bench` quotes speeds against: a copy bandwidth and one
/// peak per instruction the kernels in use rely on, all finite and positive.
#[test]
fn device_limits_are_measured() {
    let be = both()[0];
    let l = be
        .measure_limits()
        .expect("probes run")
        .expect("a device backend measures its limits");
    assert!(l.copy_gb_s.is_finite() && l.copy_gb_s > 0.0, "{l:?}");
    let names: Vec<&str> = l.peaks.iter().map(|p| p.arithmetic).collect();
    assert_eq!(names, ["f32 fma", "f16 fma", "i8 dot4"], "{l:?}");
    assert!(
        l.peaks
            .iter()
            .all(|p| p.ops_per_s.is_finite() && p.ops_per_s > 0.0),
        "{l:?}"
    );
    // The host backend has no device of its own to measure.
    let cpu = npurt_backends::cpu::CpuBackend::new(Default::default());
    assert!(cpu.measure_limits().unwrap().is_none());
}
#[test]
fn adapter_is_reported() {
    let caps = be().capabilities();
    assert_eq!(caps.name, "wgpu");
    assert!(!caps.device.is_empty());
    assert!(
        caps.weight_dtypes.contains(&DType::Q4_0) && caps.weight_dtypes.contains(&DType::Q8Channel)
    );
    eprintln!(
        "wgpu adapter: {} (binding limit {} bytes)",
        caps.device,
        be().max_binding_bytes()
    );
}

#[test]
fn no_adapter_is_a_typed_unavailable_error() {
    match WgpuBackend::new(WgpuOptions {
        backends: npurt_backends::wgpu::Backends::empty(),
        ..Default::default()
    }) {
        Err(BackendError::Unavailable { backend, reason }) => {
            assert_eq!(backend, "wgpu");
            assert!(reason.contains("mesa-vulkan-drivers"), "{reason}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("an empty backend set found an adapter"),
    }
}

fn weight_tensor(dt: DType, rows: usize, cols: usize, values: &[f32]) -> (HostTensor, Vec<f32>) {
    let fact = TensorFact::new(dt, [rows, cols]);
    let t = if dt == DType::F32 {
        HostTensor::f32([rows, cols], values.to_vec())
    } else {
        HostTensor::bytes(fact, quant::quantize(dt, values, cols).unwrap()).unwrap()
    };
    let mut deq = vec![0f32; rows * cols];
    match &t.data {
        npurt_kernels::HostData::F32(v) => deq.copy_from_slice(v),
        npurt_kernels::HostData::Bytes(b) => {
            assert!(quant::dequantize_matrix(dt, b, cols, &mut deq))
        }
        _ => unreachable!(),
    }
    (t, deq)
}

struct MatmulCase {
    dt: DType,
    m: usize,
    k: usize,
    n: usize,
    transpose_b: bool,
    /// An rms_norm prologue (LLaMA's attention and MLP inputs).
    norm: bool,
    epilogue: Epilogue,
}

/// The rms_norm prologue's eps in `check_matmul`.
const NORM_EPS: f32 = 1e-5;

fn check_matmul(be: &dyn Backend, c: &MatmulCase, seed: u64) {
    let mut rng = SeededRng::new(seed);
    let n_b = if c.epilogue.glu().is_some() {
        2 * c.n
    } else {
        c.n
    };
    let a = rng.uniform_vec(c.m * c.k, -1.0, 1.0);
    let (wrows, wcols) = if c.transpose_b {
        (n_b, c.k)
    } else {
        (c.k, n_b)
    };
    let (w, deq) = weight_tensor(
        c.dt,
        wrows,
        wcols,
        &rng.uniform_vec(wrows * wcols, -1.0, 1.0),
    );
    let bias = rng.uniform_vec(c.n, -1.0, 1.0);
    let residual = rng.uniform_vec(c.m * c.n, -1.0, 1.0);
    let norm_w = rng.uniform_vec(c.k, 0.5, 1.5);
    let mut g = G::new();
    let ai = g.input("a", TensorFact::f32([c.m, c.k]));
    let wi = g.weight("w", TensorFact::new(c.dt, [wrows, wcols]));
    let mut ins = vec![ai, wi];
    if c.norm {
        ins.push(g.weight("norm", TensorFact::f32([c.k])));
    }
    if c.epilogue.has_bias() {
        ins.push(g.weight("bias", TensorFact::f32([c.n])));
    }
    if c.epilogue.has_residual() {
        ins.push(g.input("residual", TensorFact::f32([c.m, c.n])));
    }
    let o = g.op(
        "mm",
        Op::MatMul {
            transpose_b: c.transpose_b,
            act: ActPrecision::F32,
            prologue: if c.norm {
                Prologue::RmsNorm { eps: NORM_EPS }
            } else {
                Prologue::None
            },
            epilogue: c.epilogue,
        },
        &ins,
    );
    g.out("y", o);
    let feeds = Feeds {
        inputs: vec![
            ("a", HostTensor::f32([c.m, c.k], a.clone())),
            ("residual", HostTensor::f32([c.m, c.n], residual.clone())),
        ]
        .into_iter()
        .filter(|(n, _)| *n == "a" || c.epilogue.has_residual())
        .collect(),
        weights: vec![
            ("w", w),
            ("bias", HostTensor::f32([c.n], bias.clone())),
            ("norm", HostTensor::f32([c.k], norm_w.clone())),
        ],
    };
    let ran = run_on(be, &g.g, &feeds).unwrap_or_else(|e| panic!("{e}"));
    let wbytes = TensorFact::new(c.dt, [wrows, wcols]).bytes().unwrap() as u64;
    if wbytes > be.capabilities().max_buffer_bytes as u64 {
        let parts = WgpuBackend::weight_parts(
            be.prepare_weight("w", feeds.weights[0].1.clone())
                .unwrap()
                .as_ref(),
        );
        assert!(
            parts >= 2,
            "a {wbytes} byte {} weight should be split",
            c.dt
        );
    }
    let mut a_in = a.clone();
    if c.norm {
        for (row, x) in a_in.chunks_mut(c.k).zip(a.chunks(c.k)) {
            r::rms_norm(x, &norm_w, NORM_EPS, row);
        }
    }
    let mut pre = vec![0f32; c.m * n_b];
    r::matmul(&a_in, &deq, c.m, c.k, n_b, c.transpose_b, &mut pre);
    let mut want = vec![0f32; c.m * c.n];
    r::epilogue(
        &pre,
        c.m,
        n_b,
        c.epilogue,
        c.epilogue.has_bias().then_some(&bias[..]),
        c.epilogue.has_residual().then_some(&residual[..]),
        &mut want,
    );
    let what = format!(
        "matmul {} {}x{}x{} transpose_b={} norm={} {:?}",
        c.dt, c.m, c.k, c.n, c.transpose_b, c.norm, c.epilogue
    );
    assert_close(&what, &ran["y"], &want, 2e-5 * (c.k as f32).sqrt());
}

/// LLaMA's RoPE (`rq`, `rk`) on q and k at positions (pos, n_valid).
fn ropes(
    g: &mut G,
    [q, k]: [NodeId; 2],
    [pos, nv]: [NodeId; 2],
    head_dim: usize,
) -> (NodeId, NodeId) {
    let params = RopeParams {
        head_dim,
        rotary_dim: head_dim,
        theta: 10000.0,
        scaling: RopeScaling::None,
    };
    let rq = g.op(
        "rq",
        Op::Rope {
            params: params.clone(),
        },
        &[q, pos, nv],
    );
    let rk = g.op("rk", Op::Rope { params }, &[k, pos, nv]);
    (rq, rk)
}

/// Column slices read only by RoPE (and KV writes) are views: no copy dispatch, the
/// readers read the sliced matrix in place, with the CPU backend's values. A slice that
/// is a graph output is still copied.
#[test]
fn column_slices_feeding_rope_are_read_in_place() {
    let mut g = G::new();
    let qkv = g.input("qkv", TensorFact::f32([3, 24]));
    let pos = g.input("pos", TensorFact::i32([1]));
    let nv = g.input("n_valid", TensorFact::i32([1]));
    let slice =
        |g: &mut G, name: &str, start: usize| g.op(name, Op::SliceCols { start, len: 8 }, &[qkv]);
    let (q, k, v) = (
        slice(&mut g, "q", 0),
        slice(&mut g, "k", 8),
        slice(&mut g, "v", 16),
    );
    let (rq, rk) = ropes(&mut g, [q, k], [pos, nv], 4);
    let sum = g.op("sum", Op::Add, &[rq, rk]);
    g.out("sum", sum);
    g.out("v", v);
    let mut rng = SeededRng::new(77);
    let feeds = Feeds {
        inputs: vec![
            (
                "qkv",
                HostTensor::f32([3, 24], rng.uniform_vec(72, -2.0, 2.0)),
            ),
            ("pos", HostTensor::i32([1], vec![5])),
            ("n_valid", HostTensor::i32([1], vec![3])),
        ],
        weights: vec![],
    };
    let cpu = npurt_backends::cpu::CpuBackend::new(Default::default());
    let want = run_on(&cpu, &g.g, &feeds).unwrap();
    for be in both() {
        let got = run_on(be, &g.g, &feeds).unwrap();
        for name in ["sum", "v"] {
            assert_close(name, &got[name], &want[name], 1e-6);
        }
        // Two RoPEs, the add and the output slice's copy: q and k are read in place.
        let exec = be.compile_wgpu(&g.g, &[]).unwrap();
        assert_eq!(exec.dispatch_count(), 4);
    }
}

/// A LLaMA attention block (fused q/k/v matrix, two ropes, two KV writes, attention)
/// runs two dispatches: the slices are read in place, k is rotated by its KV write
/// and q by the attention's query loads, and the V write shares the K write's
/// dispatch. The conformance suite's `attention block.*` cases check the values of
/// the same chain.
#[test]
fn an_attention_block_runs_two_dispatches() {
    let (nh, nkv, hd) = (4, 2, 16);
    let (qw, kw) = (nh * hd, nkv * hd);
    let mut g = G::new();
    let qkv = g.input("qkv", TensorFact::f32([1, qw + 2 * kw]));
    let pos = g.input("pos", TensorFact::i32([1]));
    let nv = g.input("n_valid", TensorFact::i32([1]));
    let k_cache = g.state("k_cache", TensorFact::f32([8, kw]));
    let v_cache = g.state("v_cache", TensorFact::f32([8, kw]));
    let q = g.op("q", Op::SliceCols { start: 0, len: qw }, &[qkv]);
    let k = g.op("k", Op::SliceCols { start: qw, len: kw }, &[qkv]);
    let v = g.op(
        "v",
        Op::SliceCols {
            start: qw + kw,
            len: kw,
        },
        &[qkv],
    );
    let (rq, rk) = ropes(&mut g, [q, k], [pos, nv], hd);
    let kc = g.op("write_k", Op::KvWrite, &[k_cache, rk, pos]);
    let vc = g.op("write_v", Op::KvWrite, &[v_cache, v, pos]);
    let y = g.op(
        "attention",
        causal_attention(nh, nkv, hd),
        &[rq, kc, vc, pos, nv],
    );
    g.out("y", y);
    for be in both() {
        assert_eq!(be.compile_wgpu(&g.g, &[]).unwrap().dispatch_count(), 2);
    }
}

/// A prefill chunk runs its valid rows only (`npurt_graph::rows`): every dispatch of a
/// 128-row chunk (a norm, matmuls, causal attention, elementwise ops) takes its
/// workgroup counts from `n_valid` on the GPU. A workgroup covers a block of rows (the
/// tiled GEMM 64), so on a fresh scratch the rows past the valid rows' last 64-row
/// block are never written (zeros), while a backend with `padded_rows` computes them;
/// the valid rows agree with the CPU and, bit for bit, with the padded run. An
/// `n_valid` past the chunk is the attention's typed error, and the grids stay in
/// bounds.
#[test]
fn a_chunk_dispatches_its_valid_rows_only() {
    let (rows, width, nh, nkv, hd, cache_rows) = (128, 32, 2, 1, 16, 256);
    let mut g = G::new();
    let x = g.input("x", TensorFact::f32([rows, width]));
    let pos = g.input("pos", TensorFact::i32([1]));
    let nv = g.input("n_valid", TensorFact::i32([1]));
    let k_cache = g.input("k_cache", TensorFact::f32([cache_rows, nkv * hd]));
    let v_cache = g.input("v_cache", TensorFact::f32([cache_rows, nkv * hd]));
    let norm_w = g.weight("norm", TensorFact::f32([width]));
    let wq = g.weight("wq", TensorFact::f32([nh * hd, width]));
    let wo = g.weight("wo", TensorFact::f32([width, nh * hd]));
    let linear = Op::MatMul {
        transpose_b: true,
        act: ActPrecision::F32,
        prologue: Prologue::None,
        epilogue: Epilogue::NONE,
    };
    let h = g.op("norm", Op::RmsNorm { eps: 1e-5 }, &[x, norm_w]);
    let q = g.op("q", linear.clone(), &[h, wq]);
    let a = g.op(
        "attention",
        causal_attention(nh, nkv, hd),
        &[q, k_cache, v_cache, pos, nv],
    );
    let o = g.op("o", linear, &[a, wo]);
    let r = g.op("residual", Op::Add, &[o, x]);
    let y = g.op("y", Op::Silu, &[r]);
    g.out("y", y);

    let mut rng = SeededRng::new(77);
    let mut f32s =
        |shape: [usize; 2]| HostTensor::f32(shape, rng.uniform_vec(shape[0] * shape[1], -1.0, 1.0));
    let (xv, kv, vv) = (
        f32s([rows, width]),
        f32s([cache_rows, nkv * hd]),
        f32s([cache_rows, nkv * hd]),
    );
    let weights = vec![
        ("norm", HostTensor::f32([width], vec![1.25; width])),
        ("wq", f32s([nh * hd, width])),
        ("wo", f32s([width, nh * hd])),
    ];
    let feeds = |n: i32| Feeds {
        inputs: vec![
            ("x", xv.clone()),
            ("pos", scalar(3)),
            ("n_valid", scalar(n)),
            ("k_cache", kv.clone()),
            ("v_cache", vv.clone()),
        ],
        weights: weights.clone(),
    };
    let dispatches = |be: &WgpuBackend| {
        let w: Vec<_> =
            g.g.sources("weight")
                .into_iter()
                .map(|(id, name, _)| {
                    let t = &weights.iter().find(|(n, _)| *n == name).unwrap().1;
                    (id, be.prepare_weight(name, t.clone()).unwrap())
                })
                .collect();
        let e = be.compile_wgpu(&g.g, &w).unwrap();
        (e.valid_row_dispatches(), e.dispatch_count())
    };
    let cpu = npurt_backends::cpu::CpuBackend::new(Default::default());
    for (be, kernels) in both()
        .into_iter()
        .zip([KernelFamily::Tiled, KernelFamily::Lanes])
    {
        let padded = WgpuBackend::new(WgpuOptions {
            kernels: Some(kernels),
            padded_rows: true,
            ..Default::default()
        })
        .unwrap();
        let k = kernels.name();
        assert_eq!(
            dispatches(be),
            (6, 6),
            "{k}: every dispatch follows n_valid"
        );
        assert_eq!(dispatches(&padded).0, 0, "{k}: padded rows");
        // Where the rows no workgroup of `n` valid rows reaches begin.
        let untouched = |n: usize| n.div_ceil(64) * 64 * width;
        for n in [128, 40, 1] {
            let what = format!("{k}, {n} valid rows");
            let valid = n as usize * width;
            let want = run_on(&cpu, &g.g, &feeds(n)).unwrap();
            let ours = run_on(be, &g.g, &feeds(n)).unwrap();
            let all = run_on(&padded, &g.g, &feeds(n)).unwrap();
            assert_close(&what, &ours["y"][..valid], &want["y"][..valid], 1e-5);
            assert!(
                ours["y"][..valid] == all["y"][..valid],
                "{what}: padded run differs"
            );
            let skipped = untouched(n as usize);
            assert!(
                ours["y"][skipped..].iter().all(|&v| v == 0.0),
                "{what}: padding rows were computed"
            );
            assert!(
                all["y"][skipped..].iter().all(|&v| v != 0.0),
                "{what}: the padded run skipped rows"
            );
        }
        match run_on(be, &g.g, &feeds(rows as i32 + 1)) {
            Err(BackendError::Execution { node, .. }) => assert_eq!(node, "attention", "{k}"),
            other => panic!("{k}: n_valid past the chunk gave {other:?}"),
        }
        let again = run_on(be, &g.g, &feeds(1)).unwrap();
        assert!(
            again["y"][untouched(1)..].iter().all(|&v| v == 0.0),
            "{k}: after the error"
        );
    }
}

/// Two KV writes share a dispatch only into different caches: a second write into the
/// first's cache (the same rows written twice, the second winning) stays a dispatch of
/// its own, after the first.
#[test]
fn kv_writes_pair_only_into_different_caches() {
    for same_cache in [false, true] {
        let mut g = G::new();
        let x = g.input("x", TensorFact::f32([2, 8]));
        let y = g.input("y", TensorFact::f32([2, 8]));
        let pos = g.input("pos", TensorFact::i32([1]));
        let c1 = g.state("c1", TensorFact::f32([4, 8]));
        let c2 = g.state("c2", TensorFact::f32([4, 8]));
        let w1 = g.op("w1", Op::KvWrite, &[c1, x, pos]);
        let second = if same_cache { w1 } else { c2 };
        let w2 = g.op("w2", Op::KvWrite, &[second, y, pos]);
        let row = g.input("row", TensorFact::i32([1]));
        let sel = g.op("sel", Op::SelectRow, &[w2, row]);
        g.out("y", sel);
        let want = if same_cache { 3 } else { 2 };
        for be in both() {
            let n = be.compile_wgpu(&g.g, &[]).unwrap().dispatch_count();
            assert_eq!(n, want, "same cache: {same_cache}");
        }
    }
}

#[test]
fn weights_split_across_bindings() {
    // 16 KiB bindings: every weight below spans several parts (activations still fit
    // one binding); gather and matmul run one dispatch per part, [K, N] parts
    // accumulate, a split SwiGLU goes through a temporary, an rms_norm prologue is
    // fused into each part's dispatch (the GEMV and GEMM) or run once before them.
    let mut seed = 300;
    for kernels in [KernelFamily::Tiled, KernelFamily::Lanes] {
        let small = small_binding_backend(16384, kernels);
        for dt in DType::WEIGHT_FORMATS {
            for (m, norm, epilogue) in [
                (1, false, Epilogue::NONE),
                (9, false, Epilogue::BIAS_RESIDUAL),
                (3, false, Epilogue::SWIGLU),
                (6, false, Epilogue::SWIGLU),
                (12, false, Epilogue::BIAS),
                (2, true, Epilogue::NONE),
                (3, true, Epilogue::SWIGLU),
                (10, true, Epilogue::SWIGLU),
                (
                    5,
                    false,
                    Epilogue::new(&[
                        npurt_graph::Step::Bias,
                        npurt_graph::Step::Act(npurt_graph::Activation::Gelu),
                        npurt_graph::Step::Residual,
                    ])
                    .expect("a valid list"),
                ),
            ] {
                seed += 1;
                let n = if epilogue.glu().is_some() { 150 } else { 300 };
                check_matmul(
                    &small,
                    &MatmulCase {
                        dt,
                        m,
                        k: 128,
                        n,
                        transpose_b: true,
                        norm,
                        epilogue,
                    },
                    seed,
                );
            }
        }
        for dt in [DType::F32, DType::F16] {
            for m in [1, 20] {
                seed += 1;
                check_matmul(
                    &small,
                    &MatmulCase {
                        dt,
                        m,
                        k: 200,
                        n: 50,
                        transpose_b: false,
                        norm: false,
                        epilogue: Epilogue::NONE,
                    },
                    seed,
                );
            }
        }
    }
    let small = small_binding_backend(16384, KernelFamily::Lanes);
    let mut rng = SeededRng::new(seed);
    for dt in [DType::F32, DType::Q8_0, DType::Q4_1] {
        let (vocab, width) = (600, 64);
        let (table, deq) =
            weight_tensor(dt, vocab, width, &rng.uniform_vec(vocab * width, -1.0, 1.0));
        let buf = small.prepare_weight("t", table.clone()).unwrap();
        assert!(
            WgpuBackend::weight_parts(buf.as_ref()) >= 2,
            "{dt} table should be split"
        );
        assert_eq!(
            small.read(buf.as_ref()).unwrap(),
            table,
            "{dt}: reading a split weight back"
        );
        let ids: Vec<i32> = (0..9).map(|_| rng.below(vocab) as i32).collect();
        let mut g = G::new();
        let t = g.weight("table", TensorFact::new(dt, [vocab, width]));
        let i = g.input("ids", TensorFact::i32([ids.len()]));
        let o = g.op("gather", Op::Gather, &[t, i]);
        g.out("x", o);
        let ran = run_on(
            &small,
            &g.g,
            &Feeds {
                inputs: vec![("ids", HostTensor::i32([ids.len()], ids.clone()))],
                weights: vec![("table", table)],
            },
        )
        .unwrap();
        let mut want = vec![0f32; ids.len() * width];
        r::gather(&deq, width, &ids, &mut want).unwrap();
        assert_close(&format!("split gather {dt}"), &ran["x"], &want, 0.0);
    }
}

#[test]
fn matmul_weight_larger_than_one_binding() {
    // f32 [36000, 1024] is 147 MB, past lavapipe's 128 MiB storage binding limit.
    let (n, k, m) = (36000, 1024, 3);
    let mut rng = SeededRng::new(400);
    let a = rng.uniform_vec(m * k, -1.0, 1.0);
    let w = rng.uniform_vec(n * k, -1.0, 1.0);
    let buf = be()
        .prepare_weight("big", HostTensor::f32([n, k], w.clone()))
        .unwrap();
    let parts = WgpuBackend::weight_parts(buf.as_ref());
    if (n * k * 4) as u64 > be().max_binding_bytes() {
        assert!(
            parts >= 2,
            "a {} byte weight must be split (limit {})",
            n * k * 4,
            be().max_binding_bytes()
        );
    }
    let mut g = G::new();
    let ai = g.input("a", TensorFact::f32([m, k]));
    let wi = g.weight("big", TensorFact::f32([n, k]));
    let o = g.op(
        "mm",
        Op::MatMul {
            transpose_b: true,
            act: ActPrecision::F32,
            prologue: Prologue::None,
            epilogue: Epilogue::NONE,
        },
        &[ai, wi],
    );
    g.out("y", o);
    let exec = be().compile(&g.g, &[(wi, buf)]).unwrap();
    let abuf = be()
        .alloc(&TensorFact::f32([m, k]), BufferUsage::Activations)
        .unwrap();
    be().write(abuf.as_ref(), &HostTensor::f32([m, k], a.clone()))
        .unwrap();
    let ybuf = be()
        .alloc(&TensorFact::f32([m, n]), BufferUsage::Activations)
        .unwrap();
    let b = Bindings {
        sources: vec![(ai, abuf)],
        outputs: vec![("y".into(), ybuf.clone())],
    };
    exec.run(&b, exec.new_scratch().unwrap().as_mut()).unwrap();
    be().synchronize().unwrap();
    let ours = f32s(be().read(ybuf.as_ref()).unwrap());
    drop(exec);
    let mut want = vec![0f32; m * n];
    r::matmul(&a, &w, m, k, n, true, &mut want);
    assert_close(
        &format!("matmul f32 [{n}, {k}] in {parts} parts"),
        &ours,
        &want,
        1e-5 * (k as f32).sqrt(),
    );
}

#[test]
fn bad_run_time_values_are_typed_errors_and_the_backend_recovers() {
    let mut g = G::new();
    let t = g.weight("table", TensorFact::f32([10, 8]));
    let ids = g.input("ids", TensorFact::i32([3]));
    let x = g.op("embed", Op::Gather, &[t, ids]);
    let pos = g.input("pos", TensorFact::i32([1]));
    let cache = g.state("cache", TensorFact::f32([4, 8]));
    let w = g.op("write", Op::KvWrite, &[cache, x, pos]);
    let row = g.input("row", TensorFact::i32([1]));
    let sel = g.op("sel", Op::SelectRow, &[w, row]);
    g.out("y", sel);
    let be = be();
    let table = be
        .prepare_weight(
            "table",
            HostTensor::f32([10, 8], (0..80).map(|i| i as f32).collect()),
        )
        .unwrap();
    let exec = be.compile(&g.g, &[(t, table)]).unwrap();
    let alloc = |f: TensorFact, v: HostTensor| {
        let b = be.alloc(&f, BufferUsage::Activations).unwrap();
        be.write(b.as_ref(), &v).unwrap();
        b
    };
    let kv = be
        .alloc(&TensorFact::f32([4, 8]), BufferUsage::State)
        .unwrap();
    let y = be
        .alloc(&TensorFact::f32([1, 8]), BufferUsage::Activations)
        .unwrap();
    let mut scratch = exec.new_scratch().unwrap();
    let mut attempt = |id_vals: Vec<i32>, p: i32, r: i32| {
        let b = Bindings {
            sources: vec![
                (
                    ids,
                    alloc(TensorFact::i32([3]), HostTensor::i32([3], id_vals)),
                ),
                (pos, alloc(TensorFact::i32([1]), scalar(p))),
                (row, alloc(TensorFact::i32([1]), scalar(r))),
                (cache, kv.clone()),
            ],
            outputs: vec![("y".into(), y.clone())],
        };
        exec.run(&b, scratch.as_mut())
            .and_then(|_| be.synchronize())
    };
    let expect_err = |res: Result<(), BackendError>, node: &str, what: &str| match res {
        Err(BackendError::Execution { node: n, reason }) => {
            assert_eq!(n, node, "{reason}");
            assert!(reason.contains(what), "{reason}");
        }
        other => panic!("expected an execution error at {node}, got {other:?}"),
    };
    expect_err(attempt(vec![1, 10, 2], 0, 0), "embed", "token id");
    expect_err(attempt(vec![1, -1, 2], 0, 0), "embed", "token id");
    expect_err(attempt(vec![1, 2, 3], 2, 0), "write", "positions");
    expect_err(attempt(vec![1, 2, 3], 0, 4), "sel", "row");
    attempt(vec![4, 5, 6], 1, 3).expect("a good run after failed ones");
    assert_eq!(
        f32s(be.read(y.as_ref()).unwrap()),
        (48..56).map(|i| i as f32).collect::<Vec<_>>()
    );
}

/// `Executable::submit` on wgpu is asynchronous: the handle waits for that submission
/// (on any thread) and reports that run's kernel errors, then the outputs are ready.
#[test]
fn submit_returns_a_handle_that_waits_and_reports_its_run() {
    let mut g = G::new();
    let t = g.weight("table", TensorFact::f32([10, 8]));
    let ids = g.input("ids", TensorFact::i32([3]));
    let x = g.op("embed", Op::Gather, &[t, ids]);
    g.out("y", x);
    let be = be();
    let table = be
        .prepare_weight(
            "table",
            HostTensor::f32([10, 8], (0..80).map(|i| i as f32).collect()),
        )
        .unwrap();
    let exec = be.compile(&g.g, &[(t, table)]).unwrap();
    let y = be
        .alloc(&TensorFact::f32([3, 8]), BufferUsage::Activations)
        .unwrap();
    let mut scratch = exec.new_scratch().unwrap();
    let mut submit = |id_vals: Vec<i32>| {
        let buf = be
            .alloc(&TensorFact::i32([3]), BufferUsage::Activations)
            .unwrap();
        be.write(buf.as_ref(), &HostTensor::i32([3], id_vals))
            .unwrap();
        let b = Bindings {
            sources: vec![(ids, buf)],
            outputs: vec![("y".into(), y.clone())],
        };
        exec.submit(&b, scratch.as_mut()).expect("submit")
    };
    match submit(vec![1, 10, 2]).wait() {
        Err(BackendError::Execution { node, reason }) => {
            assert_eq!(node, "embed", "{reason}");
            assert!(reason.contains("token id"), "{reason}");
        }
        other => panic!("expected the run's token-id error, got {other:?}"),
    }
    let handle = submit(vec![4, 5, 6]);
    std::thread::spawn(move || handle.wait())
        .join()
        .unwrap()
        .expect("a good run after a failed one, waited on another thread");
    assert_eq!(
        f32s(be.read(y.as_ref()).unwrap()),
        (32..56).map(|i| i as f32).collect::<Vec<_>>()
    );
    let handle = submit(vec![0, 0, 0]);
    handle.wait().unwrap();
    be.synchronize().expect("nothing left for synchronize");
}

/// No fixed per-run cost: once a session's first run has built its bind groups, a run
/// creates no pipeline, buffer or bind group, is one submission with no host wait
/// (two runs back to back on one scratch included: the second does not wait for the
/// first's status words), and reading the outputs back copies exactly their bytes
/// (plus 8 bytes of status words per run).
#[test]
fn repeated_runs_create_nothing_wait_for_nothing_and_read_back_only_outputs() {
    let mut rng = SeededRng::new(700);
    let (m, k, n) = (9, 64, 48);
    let mut g = G::new();
    let a = g.input("a", TensorFact::f32([m, k]));
    let w = g.weight("w", TensorFact::new(DType::Q4_0, [n, k]));
    let mm = g.op(
        "mm",
        Op::MatMul {
            transpose_b: true,
            act: ActPrecision::I16,
            prologue: Prologue::None,
            epilogue: Epilogue::NONE,
        },
        &[a, w],
    );
    let s = g.op("s", Op::Silu, &[mm]);
    g.out("y", s);
    let (wt, deq) = weight_tensor(DType::Q4_0, n, k, &rng.uniform_vec(n * k, -1.0, 1.0));
    // A backend of its own: the counters are per device, and other tests run
    // concurrently on the shared one.
    let be = WgpuBackend::new(WgpuOptions::default()).expect("wgpu backend");
    let wb = be.prepare_weight("w", wt).unwrap();
    let exec = be.compile(&g.g, &[(w, wb.clone())]).unwrap();
    let pipelines = be.pipeline_count();
    let _again = be.compile(&g.g, &[(w, wb)]).unwrap();
    assert_eq!(
        be.pipeline_count(),
        pipelines,
        "compiling the same graph again compiles no pipeline"
    );
    let mut scratch = exec.new_scratch().unwrap();
    let ab = be
        .alloc(&TensorFact::f32([m, k]), BufferUsage::Activations)
        .unwrap();
    let yb = be
        .alloc(&TensorFact::f32([m, n]), BufferUsage::Activations)
        .unwrap();
    let b = Bindings {
        sources: vec![(a, ab.clone())],
        outputs: vec![("y".into(), yb.clone())],
    };
    let output_bytes = (m * n * 4) as u64;
    for round in 0..4 {
        let av = rng.uniform_vec(m * k, -1.0, 1.0);
        be.write(ab.as_ref(), &HostTensor::f32([m, k], av.clone()))
            .unwrap();
        let before = be.counters();
        exec.run(&b, scratch.as_mut()).unwrap();
        exec.run(&b, scratch.as_mut()).unwrap();
        let runs = be.counters() - before;
        be.synchronize().unwrap();
        let got = f32s(be.read(yb.as_ref()).unwrap());
        let all = be.counters() - before;
        if round > 0 {
            // Round 0 builds the bind groups and the read's staging buffer.
            assert_eq!(
                (all.buffers, all.bind_groups),
                (0, 0),
                "round {round}: a run in steady state creates nothing: {all:?}"
            );
            assert_eq!(
                (runs.submissions, runs.host_waits),
                (2, 0),
                "round {round}: a run is one submission and never waits: {runs:?}"
            );
            assert_eq!(
                all.output_bytes_read, output_bytes,
                "round {round}: read back the output's bytes only: {all:?}"
            );
            assert_eq!(
                all.status_bytes_read, 16,
                "round {round}: 8 bytes of status words per run: {all:?}"
            );
        }
        assert_eq!(be.pipeline_count(), pipelines, "round {round}: no pipeline");
        let mut pre = vec![0f32; m * n];
        r::matmul(&av, &deq, m, k, n, true, &mut pre);
        let mut want = vec![0f32; pre.len()];
        r::silu(&pre, &mut want);
        assert_close(&format!("round {round}"), &got, &want, 1e-5);
    }
}

#[test]
fn supports_refuses_what_it_cannot_run() {
    let mut g = G::new();
    let a = g.input("a", TensorFact::f32([4, 32]));
    let w8 = g.weight("w8", TensorFact::new(DType::I8, [4, 32]));
    let i16in = g.input("h", TensorFact::new(DType::I16, [4, 32]));
    let wf = g.weight("wf", TensorFact::f32([8, 32]));
    let mm = g.op(
        "mm",
        Op::MatMul {
            transpose_b: true,
            act: ActPrecision::F32,
            prologue: Prologue::None,
            epilogue: Epilogue::NONE,
        },
        &[a, wf],
    );
    let be = be();
    assert!(matches!(be.supports(&g.g, w8), Support::Unsupported(_)));
    assert!(matches!(be.supports(&g.g, i16in), Support::Unsupported(_)));
    assert_eq!(be.supports(&g.g, mm), Support::Supported);
    let r = be.prepare_weight(
        "w8",
        HostTensor::bytes(TensorFact::new(DType::I8, [4, 32]), vec![0; 128]).unwrap(),
    );
    assert!(
        matches!(r, Err(BackendError::Unsupported { .. })),
        "{:?}",
        r.err()
    );
    // A computed value past the binding limit cannot be bound.
    let small = small_binding_backend(1024, KernelFamily::Lanes);
    let mut g = G::new();
    let x = g.input("x", TensorFact::f32([64, 8]));
    let y = g.op("y", Op::Silu, &[x]);
    assert!(
        matches!(small.supports(&g.g, y), Support::Unsupported(r) if r.contains("binding limit"))
    );
}

#[test]
fn weights_read_back_as_written() {
    let mut rng = SeededRng::new(800);
    for dt in DType::WEIGHT_FORMATS {
        let (t, _) = weight_tensor(dt, 5, 64, &rng.uniform_vec(5 * 64, -1.0, 1.0));
        let b = be().prepare_weight("w", t.clone()).unwrap();
        assert_eq!(be().read(b.as_ref()).unwrap(), t, "{dt}");
    }
    let s = be()
        .alloc(&TensorFact::f32([6, 3]), BufferUsage::State)
        .unwrap();
    let d = be()
        .alloc(&TensorFact::f32([6, 3]), BufferUsage::State)
        .unwrap();
    let v: Vec<f32> = (0..18).map(|i| i as f32).collect();
    be().write(s.as_ref(), &HostTensor::f32([6, 3], v.clone()))
        .unwrap();
    be().copy_rows(s.as_ref(), d.as_ref(), 4).unwrap();
    let got = f32s(be().read(d.as_ref()).unwrap());
    assert_eq!(&got[..12], &v[..12]);
    assert!(got[12..].iter().all(|&x| x == 0.0));
    assert!(be().copy_rows(s.as_ref(), d.as_ref(), 7).is_err());
}

mod smollm2 {
    //! SmolLM2-135M-Instruct through the runtime on the wgpu backend, against the HF
    //! goldens (../shared/golden/smollm2), at fp32 and at the runtime's default
    //! precision (w4a16; the GPU computes its activations in f32): nothing falls back
    //! to the CPU, the top-1 id (and its logit within 1e-3 x the row's range) at every
    //! position of every prompt, and every greedy continuation token for token.
    use npurt_graph::PrecisionPolicy;
    use npurt_runtime::{GenerateOptions, LoadOptions, Model, Runtime, Session};
    use npurt_tests::*;
    use std::sync::{Arc, OnceLock};

    fn load(precision: PrecisionPolicy) -> Arc<Model> {
        Runtime::new()
            .load(
                &smollm2_gguf(),
                LoadOptions {
                    backend: "wgpu".into(),
                    ctx: Some(256),
                    precision,
                    ..Default::default()
                },
            )
            .expect("load SmolLM2 on wgpu")
    }

    fn default_precision() -> Arc<Model> {
        static M: OnceLock<Arc<Model>> = OnceLock::new();
        M.get_or_init(|| load(LoadOptions::default().precision))
            .clone()
    }

    fn fp32() -> Arc<Model> {
        static M: OnceLock<Arc<Model>> = OnceLock::new();
        M.get_or_init(|| load(PrecisionPolicy::F32)).clone()
    }

    fn runs_entirely_on_wgpu(m: Arc<Model>) {
        assert_eq!(m.backend.name(), "wgpu");
        for cg in m.graphs.values() {
            let report = cg.exec.report();
            assert_eq!(
                report.fallback_nodes, 0,
                "{:?} graph falls back:\n{report}",
                cg.kind
            );
        }
    }

    fn top1_logits_match(m: Arc<Model>) {
        let p = read_json("smollm2/prompts.json");
        let g = GoldenTensors::open("smollm2/logits.safetensors");
        for (i, prompt) in p["prompts"].as_array().expect("prompts").iter().enumerate() {
            let ids: Vec<u32> = golden_ids(&prompt["ids"]);
            let (shape, top_ids) = g.i32(&format!("p{i}.topk_ids"));
            let (_, top_vals) = g.f32(&format!("p{i}.topk_vals"));
            let k = shape[1];
            let rows = Session::new(m.clone())
                .unwrap()
                .feed_all_logits(&ids)
                .unwrap();
            assert_eq!(rows.len(), ids.len());
            for (t, row) in rows.iter().enumerate() {
                let range = row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    - row.iter().copied().fold(f32::INFINITY, f32::min);
                assert_eq!(
                    npurt_runtime::sampling::argmax(row) as i32,
                    top_ids[t * k],
                    "p{i} position {t}: top-1 id"
                );
                let (id, v) = (top_ids[t * k] as usize, top_vals[t * k]);
                assert!(
                    (row[id] - v).abs() <= 1e-3 * range,
                    "p{i} position {t}: top-1 logit {} vs HF {v}",
                    row[id]
                );
            }
        }
    }

    fn greedy_continuations_match(m: Arc<Model>) {
        let g = read_json("smollm2/greedy.json");
        for case in g["results"].as_array().unwrap() {
            let ids: Vec<u32> = golden_ids(&case["prompt_ids"]);
            let want: Vec<u32> = golden_ids(&case["new_ids"]);
            let mut s = Session::new(m.clone()).unwrap();
            let out = s
                .generate(
                    &ids,
                    &GenerateOptions {
                        max_tokens: want.len(),
                        ..Default::default()
                    },
                    |_, _| true,
                )
                .unwrap();
            assert_eq!(
                out.tokens, want,
                "{} ({}): greedy continuation",
                case["name"], m.options.precision.name
            );
            eprintln!(
                "{} ({}): prefill {:.1} tok/s, decode {:.1} tok/s on wgpu",
                case["name"],
                m.options.precision.name,
                out.prefill_tok_s(),
                out.decode_tok_s()
            );
        }
    }

    #[test]
    fn smollm2_runs_entirely_on_wgpu() {
        runs_entirely_on_wgpu(default_precision());
        runs_entirely_on_wgpu(fp32());
    }

    #[test]
    fn smollm2_top1_logits_match_hf_at_every_position() {
        top1_logits_match(default_precision());
    }

    #[test]
    fn smollm2_fp32_top1_logits_match_hf_at_every_position() {
        top1_logits_match(fp32());
    }

    #[test]
    fn smollm2_greedy_continuations_match_hf() {
        greedy_continuations_match(default_precision());
    }

    #[test]
    fn smollm2_fp32_greedy_continuations_match_hf() {
        greedy_continuations_match(fp32());
    }
}
