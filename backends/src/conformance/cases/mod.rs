//! The case catalogue, one module per op family, and the thresholds they use.
//!
//! How the thresholds were chosen. NMSE is `sum(err^2) / sum(ref^2)`, so one output
//! element that is completely wrong (error ~ its own size) costs about `1 / elems`. The
//! biggest outputs here (a whole 729-token ViT sequence) have 105,000 elements (1e-5
//! per wrong element), so every threshold at or below 1e-6 fails a single wrong
//! element; only the i8 threshold,
//! which must absorb real quantization noise, is above that, and it still fails any
//! wrong scale, block order or nibble order (those give NMSE ~ 1).

mod attention;
mod elementwise;
mod layout;
mod matmul;

use super::case::Case;
use npurt_graph::Op;

/// Copies (f32 gather, reshape, transpose, select_row, slice_cols, kv_write): values
/// are moved, never computed, so they must come back bit for bit.
pub const EXACT: f64 = 0.0;

/// kv_write into an int8 (`Q8Head`) cache, compared by dequantized values. The CPU
/// quantizes with the reference's own function (NMSE 0); a GPU whose reciprocal is a
/// few ulp off may round a value that sits on a half step the other way: one step in
/// one value of these 1920-value caches is NMSE ~1e-7, so 1e-6 admits a few such ties,
/// while a wrong scale, head block or byte order in one head row is NMSE > 1e-3.
pub const KV_INT8_WRITE: f64 = 1e-6;

/// One or two correctly rounded f32 operations per value (add, mul, dequantizing a
/// gathered row). IEEE add/mul are exact on every backend; 1e-12 admits only FMA
/// contraction or a different dequantization order (about 1 ulp, NMSE ~ 1e-14).
pub const ROUNDING: f64 = 1e-12;

/// exp / erf / tanh / rsqrt ops (silu, gelu, softmax, rms_norm, layer_norm). ggml's
/// test-backend-ops default; GPU intrinsics a few ulp off give NMSE ~ 1e-13.
pub const TRANSCENDENTAL: f64 = 1e-7;

/// RoPE. WGSL/Vulkan only promise sin/cos to 2^-11 absolute (on [-pi, pi]), which is
/// NMSE ~ 3e-7 if a backend relies on them; a swapped pair or a wrong frequency
/// band is NMSE > 1e-2.
pub const ROPE: f64 = 1e-6;

/// Attention: two reductions over up to 40 keys plus a softmax; a backend that keeps
/// scores in f16 would land near 1e-7. A key read past `pos + n_valid` is > 1e-3.
pub const ATTENTION: f64 = 1e-6;

/// Integer attention (`AttentionPrecision::I8`) against the reference's emulation of
/// it: the integers are exact, but a backend's `exp` may round a softmax weight to the
/// neighbouring u8. The CPU's 2^x polynomial measures up to 1e-8 on these cases,
/// lavapipe 7e-9. f32 attention in its place measures 3e-5 .. 4e-4, and a wrong key
/// offset, scale or byte order far more, so both fail.
pub const ATTENTION_I8: f64 = 1e-6;

/// f16 attention (`AttentionPrecision::F16`) against the reference's f16-rounded
/// operands summed in f32: a backend summing in f16 (the CPU's AVX512-FP16 tiles: 72
/// products per score, runs of 32 keys in `P V`) measures up to 1.5e-5 here, the CPU's
/// 16-bit integer tiles on VNNI (operands quantized per row to 12-13 bits) up to 5e-6;
/// f32 sums measure ~1e-7 (the operands' rounding) and pass, as the definition allows.
/// A wrong key offset or normalisation is NMSE > 1e-2.
pub const ATTENTION_F16: f64 = 1e-4;

/// MatMul with f32 activations (any weight format: the oracle multiplies the
/// dequantized weights, so format rounding is not counted). Reordered f32 sums are
/// ~1e-13; staging activations through f16 is ~1e-7 and passes.
pub const MATMUL: f64 = 1e-6;

/// MatMul with i16 activations (one scale per row, round to nearest). Calibrated by
/// the `activation_thresholds_admit_an_exact_quantizer_with_margin` test: an exact i16
/// implementation measures NMSE <= 7e-9 on these cases (8x outliers included), so
/// 1e-6 leaves 150x, and i16 is held to the same bar as f32 activations.
pub const MATMUL_I16: f64 = 1e-6;

/// MatMul with i8 activations (one scale per 32-value block, round to nearest).
/// Calibrated likewise: an exact i8 implementation measures NMSE 6e-5 .. 2.1e-4 here
/// (a block holding an 8x outlier loses most of its resolution; the worst case is the
/// SwiGLU product behind an rms_norm prologue); 2.5e-3 leaves 10x and still fails any
/// wrong scale, block layout or sign (NMSE ~ 1).
pub const MATMUL_I8: f64 = 2.5e-3;

/// MatMul with i8 activations and a gated (GLU) epilogue: the gate's and the up
/// projection's quantization errors multiply through `act(gate) * up`, so an exact i8
/// implementation measures up to 3.0e-4 on whole-tile GLU cases; 5e-3 keeps the 10x
/// margin and still fails any wrong scale, layout or sign.
pub const MATMUL_I8_GLU: f64 = 5e-3;

/// MatMul with i8 activations, one scale per row (the ViT's w8a8): a row's largest
/// value sets every block's step, so an exact implementation measures more than with
/// `I8` (calibrated like `MATMUL_I8`, keeping a 10x margin; a wrong scale, layout or
/// sign still measures NMSE ~ 1).
pub const MATMUL_I8_ROW: f64 = 2e-2;

/// Every compute op kind of the IR, in `graph/src/op.rs` order.
pub const OP_KINDS: [&str; 18] = [
    "gather",
    "matmul",
    "patch_embed",
    "slice_cols",
    "add",
    "mul",
    "rms_norm",
    "layer_norm",
    "rope",
    "kv_write",
    "attention",
    "space_to_channel",
    "silu",
    "gelu",
    "softmax",
    "reshape",
    "transpose",
    "select_row",
];

/// Position of an op in [`OP_KINDS`] (`None` for sources). The match is exhaustive on
/// purpose: adding an op to the IR does not compile until the suite knows about it.
pub fn op_index(op: &Op) -> Option<usize> {
    let kind = match op {
        Op::Input { .. } | Op::Weight { .. } | Op::State { .. } => return None,
        Op::Gather
        | Op::MatMul { .. }
        | Op::PatchEmbed { .. }
        | Op::SliceCols { .. }
        | Op::Add
        | Op::Mul
        | Op::RmsNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Rope { .. }
        | Op::KvWrite
        | Op::Attention { .. }
        | Op::SpaceToChannel { .. }
        | Op::Silu
        | Op::Gelu { .. }
        | Op::Softmax
        | Op::Reshape { .. }
        | Op::Transpose { .. }
        | Op::SelectRow => op.kind(),
    };
    OP_KINDS.iter().position(|k| *k == kind)
}

/// Every case, grouped by op in IR order, cases of one op in declaration order.
pub fn all() -> Vec<Case> {
    let mut v = layout::cases();
    v.extend(matmul::cases());
    v.extend(elementwise::cases());
    v.extend(attention::cases());
    v.sort_by_key(|c| {
        OP_KINDS
            .iter()
            .position(|k| *k == c.op)
            .unwrap_or(OP_KINDS.len())
    });
    v
}
