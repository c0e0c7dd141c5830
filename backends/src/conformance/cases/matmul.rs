//! MatMul: every weight format x layout x activation precision x prologue (none,
//! rms_norm, layer_norm) x epilogue the IR allows, over shapes that are not multiples of any tile or workgroup size
//! (M in {1, 7, 33, 40}, K in {32, 37, 64, 65, 96, 576}, N in {1, 7, 13, 37, 65, 200}).
//! Odd K (37, 65) only where the format has no blocks. Not the full cross
//! product: each axis is swept against a fixed point of the others, which keeps the
//! suite fast while still hitting every (format, shape) edge a kernel special-cases.
//!
//! Epilogues are step lists (`npurt_graph::Epilogue`); the ViT's (`+bias+gelu`,
//! `+bias+gelu_tanh`, `+bias+residual`, `+bias+gelu+residual`) and a bare `+silu` run
//! against every weight format at every activation precision ([`vit_epilogues`]);
//! every list runs at decode and over two row tiles ([`EPILOGUE_DECODE`]).

use super::{MATMUL, MATMUL_I16, MATMUL_I8, MATMUL_I8_GLU, MATMUL_I8_ROW};
use crate::conformance::case::{Case, CaseBuilder, Compared};
use npurt_graph::{ActPrecision, Activation, DType, Epilogue, GraphError, Op, Prologue, Step};
use npurt_kernels::HostTensor;

/// (M, K, N): together they cover every M, K and N value at least once.
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 32, 1),
    (7, 96, 13),
    (33, 576, 65),
    (1, 576, 200),
    (7, 32, 200),
    (33, 96, 13),
];

/// K that is no multiple of 2, 4 or a block (the formats without blocks allow it):
/// a decode row and a prefill shape with N under any tile width.
const ODD_K: [(usize, usize, usize); 2] = [(1, 37, 65), (33, 65, 7)];

/// Every epilogue at decode (one row, a GEMV kernel where a backend has one) and at
/// 40 rows (a second, partial tile of rows), N odd.
const EPILOGUE_DECODE: (usize, usize, usize) = (1, 64, 37);
const EPILOGUE_ROWS: (usize, usize, usize) = (40, 64, 37);

/// A GLU whose halved N (32) is whole 16-column tiles: the CPU packed kernel applies
/// it in its tile stage (other N take the multiply-then-combine path).
const GLU_TILES: (usize, usize, usize) = (7, 96, 32);

/// An epilogue from its step list (every list used here is valid).
fn steps(list: &[Step]) -> Epilogue {
    Epilogue::new(list).unwrap_or_default()
}

/// A GELU-gated GLU with steps behind it.
fn gated_gelu_tanh_bias_residual() -> Epilogue {
    steps(&[Step::Glu(Activation::GeluTanh), Step::Bias, Step::Residual])
}

/// The epilogue lists a ViT and its projector meet, plus a lone activation.
fn vit_epilogues() -> [Epilogue; 5] {
    use Activation::{Gelu, GeluTanh, Silu};
    [
        steps(&[Step::Bias, Step::Act(Gelu)]),
        steps(&[Step::Bias, Step::Act(GeluTanh)]),
        Epilogue::BIAS_RESIDUAL,
        steps(&[Step::Bias, Step::Act(Gelu), Step::Residual]),
        steps(&[Step::Act(Silu)]),
    ]
}

#[derive(Clone, Copy)]
struct Spec {
    weight: DType,
    transpose_b: bool,
    act: ActPrecision,
    prologue: Prologue,
    epilogue: Epilogue,
    m: usize,
    k: usize,
    n: usize,
}

impl Spec {
    fn new(weight: DType, (m, k, n): (usize, usize, usize)) -> Self {
        Spec {
            weight,
            transpose_b: true,
            act: ActPrecision::F32,
            prologue: Prologue::None,
            epilogue: Epilogue::NONE,
            m,
            k,
            n,
        }
    }
    /// The rms_norm prologue (eps as SmolLM2's).
    fn rms_norm(self) -> Self {
        Spec {
            prologue: Prologue::RmsNorm { eps: 1e-5 },
            ..self
        }
    }
    /// The layer_norm prologue (eps as SigLIP's).
    fn layer_norm(self) -> Self {
        Spec {
            prologue: Prologue::LayerNorm { eps: 1e-6 },
            ..self
        }
    }
    fn act(self, act: ActPrecision) -> Self {
        Spec { act, ..self }
    }
    fn epilogue(self, epilogue: Epilogue) -> Self {
        Spec { epilogue, ..self }
    }
    fn kn(self) -> Self {
        Spec {
            transpose_b: false,
            ..self
        }
    }

    /// e.g. `q4_0.nk.rms_norm+i8+swiglu.7x96x13` (weight, b layout, prologue,
    /// activation precision and epilogue, MxKxN), so `matmul/q4_0` filters one format.
    fn name(&self) -> String {
        let layout = if self.transpose_b { "nk" } else { "kn" };
        format!(
            "{}.{layout}.{}{}{}.{}x{}x{}",
            self.weight,
            self.prologue.name(),
            self.act.name(),
            self.epilogue.name(),
            self.m,
            self.k,
            self.n
        )
    }

    fn threshold(&self) -> f64 {
        match self.act {
            ActPrecision::F32 => MATMUL,
            ActPrecision::I16 => MATMUL_I16,
            ActPrecision::I8 if self.epilogue.glu().is_some() => MATMUL_I8_GLU,
            ActPrecision::I8 => MATMUL_I8,
            ActPrecision::I8Row => MATMUL_I8_ROW,
        }
    }

    fn case(self) -> Case {
        Case::new("matmul", self.name(), self.threshold(), move |cb| {
            self.build(cb)
        })
    }

    fn build(&self, cb: &mut CaseBuilder) -> Result<Compared, GraphError> {
        let &Spec {
            weight,
            transpose_b,
            act,
            prologue,
            epilogue,
            m,
            k,
            n,
        } = self;
        let a = activations(cb, "a", m, k)?;
        let rows = if epilogue.glu().is_some() { 2 * n } else { n };
        let shape = if transpose_b { [rows, k] } else { [k, rows] };
        let b = cb.weight("b", weight, &shape, -1.0, 1.0)?;
        let mut inputs = vec![a, b];
        if prologue != Prologue::None {
            inputs.push(cb.weight("norm", DType::F32, &[k], 0.5, 1.5)?);
        }
        if let Prologue::LayerNorm { .. } = prologue {
            inputs.push(cb.weight("norm_bias", DType::F32, &[k], -0.5, 0.5)?);
        }
        if epilogue.has_bias() {
            inputs.push(cb.weight("bias", DType::F32, &[n], -1.0, 1.0)?);
        }
        if epilogue.has_residual() {
            inputs.push(cb.input("residual", &[m, n], -4.0, 4.0)?);
        }
        let y = cb.op(
            Op::MatMul {
                transpose_b,
                act,
                prologue,
                epilogue,
            },
            &inputs,
        )?;
        Ok(cb.output(y))
    }
}

/// LLM-like activations: uniform in [-1, 1] with every 37th value an 8x outlier, so
/// the i8/i16 cases see the dynamic range their scales must absorb.
fn activations(
    cb: &mut CaseBuilder,
    name: &str,
    m: usize,
    k: usize,
) -> Result<npurt_graph::NodeId, GraphError> {
    let mut v = cb.rng().uniform_vec(m * k, -1.0, 1.0);
    v.iter_mut().step_by(37).for_each(|x| *x *= 8.0);
    cb.input_data(name, HostTensor::f32([m, k], v))
}

pub(super) fn cases() -> Vec<Case> {
    let mut specs = Vec::new();
    // f32 weights: every shape, both layouts.
    specs.extend(SHAPES.iter().map(|&s| Spec::new(DType::F32, s)));
    specs.extend(
        [SHAPES[0], SHAPES[1], SHAPES[3]]
            .iter()
            .map(|&s| Spec::new(DType::F32, s).kn()),
    );
    // Half-precision weights: both layouts (the IR allows [K, N] for them).
    for w in [DType::F16, DType::BF16] {
        specs.extend(
            [SHAPES[1], SHAPES[2], SHAPES[4]]
                .iter()
                .map(|&s| Spec::new(w, s)),
        );
        specs.push(Spec::new(w, SHAPES[5]).kn());
    }
    // Odd K: the float formats in both layouts, per-channel int8 as [N, K].
    for w in [DType::F32, DType::F16, DType::BF16] {
        for s in ODD_K {
            specs.push(Spec::new(w, s));
            specs.push(Spec::new(w, s).kn());
        }
    }
    specs.extend(ODD_K.iter().map(|&s| Spec::new(DType::Q8Channel, s)));
    // Quantized weights ([N, K] only, the IR's rule): the edge shapes.
    let quantized = DType::WEIGHT_FORMATS
        .into_iter()
        .filter(|w| w.is_quantized());
    for w in quantized {
        specs.extend(
            [SHAPES[0], SHAPES[1], SHAPES[2], SHAPES[3]]
                .iter()
                .map(|&s| Spec::new(w, s)),
        );
    }
    // Quantized activations against every weight format, plus a big-K case each.
    for act in [ActPrecision::I16, ActPrecision::I8] {
        specs.extend(
            DType::WEIGHT_FORMATS
                .iter()
                .map(|&w| Spec::new(w, SHAPES[1]).act(act)),
        );
        specs.extend(
            [DType::F32, DType::Q4_1, DType::Q8_0]
                .iter()
                .map(|&w| Spec::new(w, SHAPES[2]).act(act)),
        );
    }
    // i8 activations where a GEMM multiplies them as i8 (wgpu's dot4 variant): every
    // integer format over two row tiles, alone and under a GLU, and per-channel int8
    // with K no multiple of a block (nor of 4).
    for w in [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q8Channel] {
        let s = Spec::new(w, EPILOGUE_ROWS).act(ActPrecision::I8);
        specs.extend([s, s.epilogue(Epilogue::SWIGLU)]);
    }
    for act in [ActPrecision::I8, ActPrecision::I8Row] {
        specs.push(Spec::new(DType::Q8Channel, ODD_K[1]).act(act));
    }
    // Epilogues: each on f32 and on the two formats the precision policies use.
    for epi in [
        Epilogue::BIAS,
        Epilogue::RESIDUAL,
        Epilogue::BIAS_RESIDUAL,
        Epilogue::SWIGLU,
    ] {
        for w in [DType::F32, DType::Q4_1, DType::Q8_0] {
            specs.push(Spec::new(w, SHAPES[1]).epilogue(epi));
        }
        specs.push(Spec::new(DType::F32, SHAPES[3]).epilogue(epi));
    }
    // Every epilogue list (the LLM's, a ViT's, a GLU with steps behind it) at decode
    // on the formats an LLM ships, and over two row tiles on f32 and q4_0.
    let every_epilogue = [
        Epilogue::BIAS,
        Epilogue::RESIDUAL,
        Epilogue::BIAS_RESIDUAL,
        Epilogue::SWIGLU,
        vit_epilogues()[0],
        steps(&[Step::Bias, Step::Act(Activation::GeluTanh), Step::Residual]),
        gated_gelu_tanh_bias_residual(),
    ];
    for epi in every_epilogue {
        for w in [
            DType::F32,
            DType::F16,
            DType::Q4_0,
            DType::Q8_0,
            DType::Q4_1,
        ] {
            specs.push(Spec::new(w, EPILOGUE_DECODE).epilogue(epi));
        }
        for w in [DType::F32, DType::Q4_0] {
            specs.push(Spec::new(w, EPILOGUE_ROWS).epilogue(epi));
        }
    }
    // The ViT's lists: every weight format at every activation precision, plus the
    // shapes with partial tiles and several row groups, and decode.
    for epi in vit_epilogues() {
        for act in [ActPrecision::F32, ActPrecision::I16, ActPrecision::I8] {
            specs.extend(
                DType::WEIGHT_FORMATS
                    .iter()
                    .map(|&w| Spec::new(w, SHAPES[1]).act(act).epilogue(epi)),
            );
        }
        for w in [DType::F32, DType::Q8Channel] {
            specs.push(Spec::new(w, SHAPES[2]).act(ActPrecision::I8).epilogue(epi));
            // The vision tower's w8a8: per-channel weights, i8 activations per row.
            specs.push(
                Spec::new(w, SHAPES[2])
                    .act(ActPrecision::I8Row)
                    .epilogue(epi),
            );
            specs.push(Spec::new(w, SHAPES[3]).act(ActPrecision::I16).epilogue(epi));
        }
    }
    // GLUs: SwiGLU and GELU-gated, on whole tiles and with steps behind them.
    let glus = [
        Epilogue::SWIGLU,
        steps(&[Step::Glu(Activation::Gelu)]),
        gated_gelu_tanh_bias_residual(),
    ];
    for epi in glus {
        for (w, act) in [
            (DType::F32, ActPrecision::F32),
            (DType::Q4_1, ActPrecision::I16),
            (DType::Q8_0, ActPrecision::I8),
        ] {
            specs.push(Spec::new(w, GLU_TILES).act(act).epilogue(epi));
            specs.push(Spec::new(w, SHAPES[1]).act(act).epilogue(epi));
        }
    }
    // The shipping combinations: INT4 LLM weights with INT16 activations (BlueLM-V's
    // LLM), INT8 weights with i8 activations, each with the fused epilogues they meet.
    for epi in [Epilogue::SWIGLU, Epilogue::RESIDUAL, Epilogue::BIAS] {
        specs.push(
            Spec::new(DType::Q4_0, SHAPES[5])
                .act(ActPrecision::I16)
                .epilogue(epi),
        );
        specs.push(
            Spec::new(DType::Q8Channel, SHAPES[5])
                .act(ActPrecision::I8)
                .epilogue(epi),
        );
    }
    // The rms_norm prologue (folded into the activation quantization on the CPU):
    // every weight format at each activation precision, a multi-group and a decode
    // shape, and with the epilogues a LLaMA block puts behind it.
    for act in [ActPrecision::F32, ActPrecision::I16, ActPrecision::I8] {
        specs.extend(
            DType::WEIGHT_FORMATS
                .iter()
                .map(|&w| Spec::new(w, SHAPES[1]).act(act).rms_norm()),
        );
        for w in [DType::Q4_1, DType::Q8_0] {
            specs.push(Spec::new(w, SHAPES[2]).act(act).rms_norm());
            specs.push(Spec::new(w, SHAPES[3]).act(act).rms_norm());
        }
    }
    for epi in [
        Epilogue::SWIGLU,
        Epilogue::RESIDUAL,
        Epilogue::BIAS_RESIDUAL,
    ] {
        for act in [ActPrecision::I16, ActPrecision::I8] {
            specs.push(
                Spec::new(DType::Q4_1, SHAPES[5])
                    .act(act)
                    .rms_norm()
                    .epilogue(epi),
            );
        }
    }
    // The layer_norm prologue (a pre-LN ViT block's norms and the projector's, folded
    // into the activation quantization on the CPU): per-channel int8 at each
    // activation precision, f32 weights (the prologue before an f32 product), a
    // per-block format, several row groups, decode, and the epilogues the norms'
    // readers have (q/k/v +bias, fc1 +bias+gelu_tanh).
    let acts = [
        ActPrecision::F32,
        ActPrecision::I16,
        ActPrecision::I8,
        ActPrecision::I8Row,
    ];
    specs.extend(
        acts.iter()
            .map(|&act| Spec::new(DType::Q8Channel, SHAPES[1]).act(act).layer_norm()),
    );
    specs.push(Spec::new(DType::F32, SHAPES[1]).layer_norm());
    specs.push(
        Spec::new(DType::Q4_1, SHAPES[1])
            .act(ActPrecision::I8)
            .layer_norm(),
    );
    for act in [ActPrecision::I16, ActPrecision::I8Row] {
        let s = Spec::new(DType::Q8Channel, SHAPES[2]).act(act).layer_norm();
        specs.push(s);
        specs.push(s.epilogue(vit_epilogues()[1]));
    }
    specs.push(
        Spec::new(DType::Q8Channel, SHAPES[3])
            .act(ActPrecision::I8Row)
            .layer_norm()
            .epilogue(Epilogue::BIAS),
    );
    // The lists above overlap (the ViT's +bias+residual on f32 is also a plain
    // epilogue case): each case once, in first-declared order.
    let mut seen = std::collections::HashSet::new();
    specs.retain(|s| seen.insert(s.name()));
    let mut cases: Vec<Case> = specs.into_iter().map(Spec::case).collect();
    // Activation x activation (b computed at run time, not a prepared weight).
    cases.push(Case::new("matmul", "act_b.kn.f32.7x96x13", MATMUL, |cb| {
        let a = activations(cb, "a", 7, 96)?;
        let b = cb.input("b", &[96, 13], -1.0, 1.0)?;
        let y = cb.op(
            Op::MatMul {
                transpose_b: false,
                act: ActPrecision::F32,
                prologue: Prologue::None,
                epilogue: Epilogue::NONE,
            },
            &[a, b],
        )?;
        Ok(cb.output(y))
    }));
    cases
}
