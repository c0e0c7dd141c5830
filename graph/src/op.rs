//! The op set: one enum variant per IR node kind, each with its shape/type rule.
//!
//! The IR is deliberately narrow (tract's lesson): an op only knows its attributes and
//! how to infer its output fact. Kernels live in `npurt-kernels`, per-backend lowering
//! in `npurt-backends`. Conventions:
//! - activations are row-major `[rows, features]`; a "row" is one token position;
//! - `MatMul { transpose_b: true }` takes `b` as `[N, K]` (PyTorch `Linear.weight`
//!   layout), `transpose_b: false` takes `b` as `[K, N]`;
//! - position inputs (`pos`, `n_valid`) are `i32[1]` scalars bound at run time, so
//!   one static-shape graph serves every chunk of a prompt.

use crate::{Activation, DType, Epilogue, TensorFact};

/// How RoPE frequencies are scaled (HF `rope_scaling` / `rope_parameters`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// HF "dynamic" NTK: the base grows once the sequence exceeds `original_max_position`.
    DynamicNtk {
        factor: f32,
        original_max_position: usize,
    },
    /// Llama 3.x wavelength-banded scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeParams {
    pub head_dim: usize,
    /// Dimensions rotated per head (HF `partial_rotary_factor`; = head_dim for Llama).
    pub rotary_dim: usize,
    pub theta: f32,
    pub scaling: RopeScaling,
}

/// Precision a matmul quantizes its activations to before multiplying (the compile
/// policy picks it per module). Scales are dynamic, computed from the data at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ActPrecision {
    #[default]
    F32,
    /// i16 with one scale per row (BlueLM-V's INT16 LLM activations).
    I16,
    /// i8 with one scale per 32-value block (matches the weight groups; VNNI dot products).
    I8,
    /// i8 with one scale per row: coarser than `I8`, but with per-channel weights
    /// (`Q8Channel`) no block needs a scale of its own, so the VNNI dot products run a
    /// whole row in i32 (the ViT's w8a8). A backend may compute it as `I8` or finer.
    I8Row,
}

impl ActPrecision {
    pub fn name(self) -> &'static str {
        match self {
            ActPrecision::F32 => "f32",
            ActPrecision::I16 => "i16",
            ActPrecision::I8 => "i8",
            ActPrecision::I8Row => "i8row",
        }
    }
}

/// Work fused into a matmul's input stage: the activation row is transformed while it
/// is read for quantization, so the transformed f32 tensor never exists. Its weight
/// (and bias) follow `a, b` (before the epilogue's extra inputs).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Prologue {
    #[default]
    None,
    /// `a` is replaced by `rms_norm(a, w, eps)` (`w [K]`): the pre-attention and
    /// pre-MLP norms of a LLaMA block, computed in the matmul's activation
    /// quantization pass (one read of the residual stream, no normalized copy).
    RmsNorm { eps: f32 },
    /// `a` is replaced by `layer_norm(a, w, b, eps)` (`w [K]`, `b [K]`, as
    /// [`Op::LayerNorm`]): the pre-attention and pre-MLP norms of a pre-LN ViT block and
    /// the projector's input norm, computed the same way.
    LayerNorm { eps: f32 },
}

impl Prologue {
    pub fn extra_inputs(self) -> usize {
        match self {
            Prologue::None => 0,
            Prologue::RmsNorm { .. } => 1,
            Prologue::LayerNorm { .. } => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Prologue::None => "",
            Prologue::RmsNorm { .. } => "rms_norm+",
            Prologue::LayerNorm { .. } => "layer_norm+",
        }
    }
    /// The norm's epsilon.
    pub fn eps(self) -> Option<f32> {
        match self {
            Prologue::None => None,
            Prologue::RmsNorm { eps } | Prologue::LayerNorm { eps } => Some(eps),
        }
    }
    /// The norm this prologue computes, as its own op (same inputs after `a`).
    pub fn norm_op(self) -> Option<Op> {
        match self {
            Prologue::None => None,
            Prologue::RmsNorm { eps } => Some(Op::RmsNorm { eps }),
            Prologue::LayerNorm { eps } => Some(Op::LayerNorm { eps }),
        }
    }
}

/// Where a matmul's optional operands sit in its input list: `a, b`, then the
/// prologue's weight and bias, then the epilogue's inputs in step order (bias,
/// residual), each only when present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMulOperands {
    pub norm: Option<usize>,
    /// A LayerNorm prologue's bias.
    pub norm_bias: Option<usize>,
    pub bias: Option<usize>,
    pub residual: Option<usize>,
}

impl MatMulOperands {
    pub fn new(prologue: Prologue, epilogue: Epilogue) -> Self {
        let mut next = 2;
        let mut take = |present: bool| {
            present.then(|| {
                next += 1;
                next - 1
            })
        };
        MatMulOperands {
            norm: take(prologue != Prologue::None),
            norm_bias: take(matches!(prologue, Prologue::LayerNorm { .. })),
            bias: take(epilogue.has_bias()),
            residual: take(epilogue.has_residual()),
        }
    }
}

/// Which keys a query row of [`Op::Attention`] sees, and where K/V come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionMode {
    /// The LLM: `(q, k_cache, v_cache, pos i32[1], n_valid i32[1])`; query `t`
    /// (absolute position `pos+t`) sees cache rows `0 ..= pos+t`, and never rows at or
    /// past `pos + n_valid` (padding of the last chunk). The output rows `t >= n_valid`
    /// are padding too: their values are unspecified, and a backend may skip every
    /// row-wise value's padding rows in such a chunk (`crate::rows`).
    Causal,
    /// The ViT: `(q, k, v)`, all `[B * seq, width]` activations (no cache, no
    /// positions); the rows are `B` independent sequences of `seq` tokens (a batch of
    /// image tiles) and every query sees every key of its own sequence.
    Bidirectional { seq: usize },
}

/// The arithmetic of [`Op::Attention`]'s two products (`Q K^T` and `P V`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AttentionPrecision {
    /// Both products and the softmax in f32.
    #[default]
    F32,
    /// Integer products (the ViT's w8a8; bidirectional mode only), per sequence and
    /// head: `q` and `k` rows quantized to i8 with one scale per row (`amax / 127`,
    /// round half to even), `v` with one scale per channel over the sequence's keys;
    /// scores `(q_i . k_j) * s_q * scale * s_k` from i32 dot products; the softmax's
    /// `p = exp(s - max)` rounded to u8 `round(255 p)`; the output
    /// `(sum_j p_j v_j) * s_v / sum_j p_j` from i32 sums. `P`'s weights thus sum to one
    /// exactly, and every product is a VNNI `u8 x i8` dot.
    I8,
    /// f16 operands (the ViT's w8a16; bidirectional mode only): `q`, `k` and `v`
    /// rounded to f16 and multiplied in f16, the sums over the head dim and over the
    /// keys in f16 or wider (a backend sums at least runs of 32 keys in f32), the
    /// softmax in f32 with its weights rounded to f16 for `P V`.
    F16,
}

impl AttentionPrecision {
    pub fn name(self) -> &'static str {
        match self {
            AttentionPrecision::F32 => "f32",
            AttentionPrecision::I8 => "i8",
            AttentionPrecision::F16 => "f16",
        }
    }
}

impl AttentionMode {
    pub fn arity(self) -> usize {
        match self {
            AttentionMode::Causal => 5,
            AttentionMode::Bidirectional { .. } => 3,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AttentionMode::Causal => "causal",
            AttentionMode::Bidirectional { .. } => "bidirectional",
        }
    }
}

/// The longest sequence [`AttentionPrecision::I8`] takes: its `P V` sums stay in i32
/// (`seq * 255 * 127 < 2^31`).
pub const MAX_I8_ATTENTION_SEQ: usize = 65536;

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A run-time input (token ids, embeddings, positions), bound per execution.
    Input {
        name: String,
        fact: TensorFact,
    },
    /// A constant weight, prepared (repacked) once by the backend. `parts` empty: the
    /// checkpoint tensor `name`; otherwise the rows of these checkpoint tensors
    /// concatenated in order (fused q/k/v or gate/up weights). `fact.dtype` is the
    /// format the compiled graph wants; the loader converts (losslessly if the
    /// checkpoint already stores that format).
    Weight {
        name: String,
        fact: TensorFact,
        parts: Vec<String>,
    },
    /// Persistent per-session state (the KV cache), bound per session.
    State {
        name: String,
        fact: TensorFact,
    },
    /// Embedding lookup: `(table [V, H], ids i32[T]) -> [T, H]`.
    Gather,
    /// `(a [M, K], b, extra..) -> [M, N]`, see module docs for `transpose_b`; `a` is
    /// transformed by `prologue` and quantized to `act` on the fly; `epilogue` adds
    /// fused output work. [`MatMulOperands`] says where the extra inputs are.
    MatMul {
        transpose_b: bool,
        act: ActPrecision,
        prologue: Prologue,
        epilogue: Epilogue,
    },
    /// Conv2D patch embedding (kernel = stride = `patch`, no padding), the ViT stem:
    /// `(pixels [B, C, H, W], weight [D, C*patch*patch], bias [D])` ->
    /// `[B * (H/patch) * (W/patch), D]`, patches row-major within each image.
    /// The weight is the PyTorch conv weight `[D, C, p, p]` flattened per out channel.
    PatchEmbed {
        patch: usize,
    },
    /// Columns `start .. start+len` of `x [M, N]` (splits a fused q/k/v output).
    SliceCols {
        start: usize,
        len: usize,
    },
    /// Elementwise; `b` may broadcast over leading dims (its shape a suffix of `a`'s).
    Add,
    Mul,
    /// `(x [.., H], w [H]) -> x * rsqrt(mean(x^2) + eps) * w`.
    RmsNorm {
        eps: f32,
    },
    /// `(x [.., H], w [H], b [H])`.
    LayerNorm {
        eps: f32,
    },
    /// HF rotate_half RoPE on `x [T, heads * head_dim]` at positions `pos + t`:
    /// `(x, pos i32[1], n_valid i32[1])` (n_valid drives dynamic NTK scaling).
    Rope {
        params: RopeParams,
    },
    /// Write `new [T, D]` (f32) into rows `pos .. pos+T` of `cache [S, D]` (f32; f16:
    /// each value rounded to the nearest f16, ties to even; or `Q8Head`: each head's
    /// row quantized, scale = max|x|/127, q = round(x/scale) half away from zero):
    /// `(cache, new, pos i32[1]) -> cache'`. The output aliases the cache state.
    KvWrite,
    /// GQA attention of `q [T, nh*hd]` over keys/values `[S, nkv*hd]` -> `[T, nh*hd]`,
    /// computed in f32 or, bidirectional only, with integer products (`precision`,
    /// [`AttentionPrecision`]). `mode` says which keys a query sees and what the inputs
    /// are ([`AttentionMode`]): causal over an f32/f16/int8 KV cache for the LLM,
    /// bidirectional within each sequence of a batch for the ViT. Query head `h` uses KV
    /// head `h / (nh / nkv)` (HF repeat_kv).
    Attention {
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
        scale: f32,
        mode: AttentionMode,
        precision: AttentionPrecision,
    },
    /// The ViT token downsampler's layout step: `x [B * h * w, C]` (each image a
    /// row-major `h x w` token grid) zero-padded at the bottom/right to multiples of
    /// `block`, then each `block x block` cell merged into one token by concatenating
    /// channels in row-major cell order:
    /// `out[b, i*w2 + j, (dr*block + dc)*C + c] = x[b, block*i+dr, block*j+dc, c]`
    /// (`w2 = ceil(w/block)`, zero outside the grid) -> `[B * h2 * w2, block*block*C]`.
    /// BlueLM-V's 2x2 merge: 27x27x1152 -> 14x14x4608.
    SpaceToChannel {
        grid: [usize; 2],
        block: usize,
    },
    Silu,
    /// Exact (erf) GELU, or the tanh approximation.
    Gelu {
        tanh: bool,
    },
    /// Softmax over the last dimension.
    Softmax,
    Reshape {
        shape: Vec<usize>,
    },
    /// Permutes dimensions; `perm[i]` is the input dim that becomes output dim `i`.
    Transpose {
        perm: Vec<usize>,
    },
    /// `(x [T, H], index i32[1]) -> [1, H]`: one row chosen at run time
    /// (the last valid position of a padded chunk feeds the output head).
    SelectRow,
}

/// Why an op rejected its inputs; the graph wraps it with the node's name.
pub type InferError = String;

fn same_fact(a: &TensorFact, b: &TensorFact, what: &str) -> Result<(), InferError> {
    if a != b {
        return Err(format!("{what}: {a} vs {b}"));
    }
    Ok(())
}

fn want_dtype(f: &TensorFact, d: DType, what: &str) -> Result<(), InferError> {
    if f.dtype != d {
        return Err(format!("{what} must be {d}, got {f}"));
    }
    Ok(())
}

fn want_scalar_i32(f: &TensorFact, what: &str) -> Result<(), InferError> {
    if f.dtype != DType::I32 || f.elems() != Some(1) {
        return Err(format!("{what} must be i32[1], got {f}"));
    }
    Ok(())
}

fn want_rank(f: &TensorFact, r: usize, what: &str) -> Result<(), InferError> {
    if f.rank() != r {
        return Err(format!("{what} must have rank {r}, got {f}"));
    }
    Ok(())
}

/// KV caches hold f32, f16 or int8 blocks of one head (the precision policy's
/// `kv_cache`); an int8 cache's blocks must be `head_dim` long (`head_dim` given when
/// the reader knows it).
fn want_kv_dtype(f: &TensorFact, head_dim: Option<usize>) -> Result<(), InferError> {
    match f.dtype {
        DType::F32 | DType::F16 => Ok(()),
        DType::Q8Head { head_dim: b }
            if b > 0 && b % 4 == 0 && head_dim.is_none_or(|hd| hd == b as usize) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "a KV cache must be f32, f16 or q8_head blocks of head_dim (a multiple of 4), got {f}"
        )),
    }
}

fn want_float(f: &TensorFact, what: &str) -> Result<(), InferError> {
    if !f.dtype.is_float() {
        return Err(format!("{what} must be a float tensor, got {f}"));
    }
    Ok(())
}

impl Op {
    /// Short kind name, used in logs, `npurt inspect` and conformance tables.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Weight { .. } => "weight",
            Op::State { .. } => "state",
            Op::Gather => "gather",
            Op::MatMul { .. } => "matmul",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::RmsNorm { .. } => "rms_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Rope { .. } => "rope",
            Op::KvWrite => "kv_write",
            Op::Attention { .. } => "attention",
            Op::SpaceToChannel { .. } => "space_to_channel",
            Op::Silu => "silu",
            Op::Gelu { .. } => "gelu",
            Op::Softmax => "softmax",
            Op::Reshape { .. } => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::SelectRow => "select_row",
            Op::SliceCols { .. } => "slice_cols",
            Op::PatchEmbed { .. } => "patch_embed",
        }
    }

    /// The pointwise activation a standalone `silu`/`gelu` node computes (what
    /// `FuseActivation` folds into a matmul's epilogue).
    pub fn activation(&self) -> Option<Activation> {
        match self {
            Op::Silu => Some(Activation::Silu),
            Op::Gelu { tanh } => Some(Activation::gelu(*tanh)),
            _ => None,
        }
    }

    /// Graph sources (no inputs, bound from outside).
    pub fn is_source(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Weight { .. } | Op::State { .. }
        )
    }

    pub fn arity(&self) -> usize {
        match self {
            Op::Input { .. } | Op::Weight { .. } | Op::State { .. } => 0,
            Op::Silu
            | Op::Gelu { .. }
            | Op::Softmax
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::SliceCols { .. }
            | Op::SpaceToChannel { .. } => 1,
            Op::MatMul {
                prologue, epilogue, ..
            } => 2 + prologue.extra_inputs() + epilogue.extra_inputs(),
            Op::Gather | Op::Add | Op::Mul | Op::RmsNorm { .. } | Op::SelectRow => 2,
            Op::LayerNorm { .. } | Op::Rope { .. } | Op::KvWrite | Op::PatchEmbed { .. } => 3,
            Op::Attention { mode, .. } => mode.arity(),
        }
    }

    /// Shape and type inference: the output fact for these input facts, or why not.
    pub fn output_fact(&self, inputs: &[&TensorFact]) -> Result<TensorFact, InferError> {
        if inputs.len() != self.arity() {
            return Err(format!(
                "{} takes {} inputs, got {}",
                self.kind(),
                self.arity(),
                inputs.len()
            ));
        }
        match self {
            Op::Input { fact, .. } | Op::Weight { fact, .. } | Op::State { fact, .. } => {
                fact.elems().ok_or("shape overflows")?;
                if fact.bytes().is_none() {
                    return Err(format!(
                        "{fact} is not a whole number of {} blocks",
                        fact.dtype
                    ));
                }
                Ok(fact.clone())
            }
            Op::Gather => {
                let (table, ids) = (inputs[0], inputs[1]);
                want_rank(table, 2, "gather table")?;
                want_dtype(ids, DType::I32, "gather ids")?;
                want_rank(ids, 1, "gather ids")?;
                Ok(TensorFact::f32([ids.shape[0], table.shape[1]]))
            }
            Op::MatMul {
                transpose_b,
                prologue,
                epilogue,
                ..
            } => {
                let (a, b) = (inputs[0], inputs[1]);
                want_rank(a, 2, "matmul a")?;
                want_rank(b, 2, "matmul b")?;
                want_float(a, "matmul a")?;
                let (bk, n) = if *transpose_b {
                    (b.shape[1], b.shape[0])
                } else {
                    (b.shape[0], b.shape[1])
                };
                if a.shape[1] != bk {
                    return Err(format!(
                        "matmul inner dims differ: a {a}, b {b} (transpose_b={transpose_b})"
                    ));
                }
                if (b.dtype.is_quantized() || !epilogue.is_empty()) && !transpose_b {
                    return Err(
                        "quantized or fused matmul weights must be [N, K] (transpose_b)".into(),
                    );
                }
                // The step order is valid by construction (`Epilogue::new`/`then`); what
                // is left to check is that the operands fit the steps.
                let n = epilogue.out_cols(n).ok_or_else(|| {
                    format!("{epilogue} matmul needs an even number of weight rows, got {b}")
                })?;
                let mut extra = inputs[2..].iter();
                let want = [a.shape[1]];
                let bad = |f: &TensorFact| f.shape != want || !f.dtype.is_float();
                let norm = prologue.norm_op().map_or("", |op| op.kind());
                for what in ["weight", "bias"].iter().take(prologue.extra_inputs()) {
                    if extra.next().is_none_or(|f| bad(f)) {
                        return Err(format!("matmul {norm} {what} must be [{}]", a.shape[1]));
                    }
                }
                if epilogue.has_bias() && extra.next().map(|f| f.shape != [n]).unwrap_or(true) {
                    return Err(format!("matmul bias must be [{n}]"));
                }
                if epilogue.has_residual()
                    && extra
                        .next()
                        .map(|f| f.shape != [a.shape[0], n])
                        .unwrap_or(true)
                {
                    return Err(format!("matmul residual must be [{}, {n}]", a.shape[0]));
                }
                Ok(TensorFact::f32([a.shape[0], n]))
            }
            Op::PatchEmbed { patch } => {
                let (x, w, b) = (inputs[0], inputs[1], inputs[2]);
                want_rank(x, 4, "patch_embed pixels")?;
                want_float(x, "patch_embed pixels")?;
                let (bt, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
                if *patch == 0 || h < *patch || wd < *patch {
                    return Err(format!("patch {patch} does not fit {x}"));
                }
                let d = w.shape.first().copied().unwrap_or(0);
                if w.rank() != 2 || w.shape[1] != c * patch * patch || b.shape != [d] {
                    return Err(format!(
                        "patch_embed weight must be [D, {}] and bias [D], got {w} and {b}",
                        c * patch * patch
                    ));
                }
                Ok(TensorFact::f32([bt * (h / patch) * (wd / patch), d]))
            }
            Op::SliceCols { start, len } => {
                let x = inputs[0];
                want_rank(x, 2, "slice_cols input")?;
                if *len == 0 || start + len > x.shape[1] {
                    return Err(format!("slice_cols {start}..{} outside {x}", start + len));
                }
                Ok(TensorFact::new(x.dtype, [x.shape[0], *len]))
            }
            Op::Add | Op::Mul => {
                let (a, b) = (inputs[0], inputs[1]);
                want_float(a, "lhs")?;
                want_float(b, "rhs")?;
                if b.rank() > a.rank() || a.shape[a.rank() - b.rank()..] != b.shape[..] {
                    return Err(format!("cannot broadcast {b} onto {a}"));
                }
                Ok(TensorFact::f32(a.shape.clone()))
            }
            Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
                let x = inputs[0];
                want_float(x, "norm input")?;
                for (i, p) in inputs[1..].iter().enumerate() {
                    if p.shape != [x.last_dim()] {
                        return Err(format!(
                            "norm parameter {} must be [{}], got {p}",
                            i + 1,
                            x.last_dim()
                        ));
                    }
                }
                Ok(TensorFact::f32(x.shape.clone()))
            }
            Op::Rope { params } => {
                let x = inputs[0];
                want_rank(x, 2, "rope input")?;
                want_scalar_i32(inputs[1], "rope pos")?;
                want_scalar_i32(inputs[2], "rope n_valid")?;
                if params.head_dim == 0 || !x.shape[1].is_multiple_of(params.head_dim) {
                    return Err(format!(
                        "rope: width {} is not a multiple of head_dim {}",
                        x.shape[1], params.head_dim
                    ));
                }
                if params.rotary_dim % 2 != 0 || params.rotary_dim > params.head_dim {
                    return Err(format!(
                        "rope: rotary_dim {} must be even and <= head_dim",
                        params.rotary_dim
                    ));
                }
                Ok(x.clone())
            }
            Op::KvWrite => {
                let (cache, new) = (inputs[0], inputs[1]);
                want_rank(cache, 2, "kv cache")?;
                want_kv_dtype(cache, None)?;
                want_dtype(new, DType::F32, "kv rows")?;
                want_rank(new, 2, "kv rows")?;
                want_scalar_i32(inputs[2], "kv_write pos")?;
                if cache.shape[1] != new.shape[1] || new.shape[0] > cache.shape[0] {
                    return Err(format!("kv_write: cannot write {new} into {cache}"));
                }
                Ok(cache.clone())
            }
            Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                mode,
                precision,
                ..
            } => {
                let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
                if *precision != AttentionPrecision::F32 {
                    let AttentionMode::Bidirectional { seq } = mode else {
                        return Err(format!("{} attention is bidirectional only (the causal mode's precision is its KV cache type)", precision.name()));
                    };
                    // The integer form's i32 sum over the keys: 255 * 127 per key.
                    if *precision == AttentionPrecision::I8 && *seq > MAX_I8_ATTENTION_SEQ {
                        return Err(format!(
                            "int8 attention over sequences of {seq} rows (at most {MAX_I8_ATTENTION_SEQ})"
                        ));
                    }
                }
                want_rank(q, 2, "attention q")?;
                same_fact(k, v, "attention k/v differ")?;
                want_rank(k, 2, "attention k")?;
                match mode {
                    AttentionMode::Causal => {
                        want_kv_dtype(k, Some(*head_dim))?;
                        want_scalar_i32(inputs[3], "attention pos")?;
                        want_scalar_i32(inputs[4], "attention n_valid")?;
                    }
                    AttentionMode::Bidirectional { seq } => {
                        want_dtype(k, DType::F32, "bidirectional attention k/v")?;
                        if *seq == 0 || q.shape[0] % seq != 0 || k.shape[0] != q.shape[0] {
                            return Err(format!(
                                "bidirectional attention: q {q} and k/v {k} are not whole sequences of {seq} rows"
                            ));
                        }
                    }
                }
                if *n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
                    return Err(format!(
                        "attention: {n_heads} heads not divisible by {n_kv_heads} kv heads"
                    ));
                }
                if q.shape[1] != n_heads * head_dim || k.shape[1] != n_kv_heads * head_dim {
                    return Err(format!("attention: q {q} / kv {k} do not match {n_heads}x{head_dim} / {n_kv_heads}x{head_dim}"));
                }
                Ok(TensorFact::f32(q.shape.clone()))
            }
            Op::SpaceToChannel { grid, block } => {
                let x = inputs[0];
                want_rank(x, 2, "space_to_channel input")?;
                want_float(x, "space_to_channel input")?;
                let [h, w] = *grid;
                if h == 0 || w == 0 || *block == 0 || !x.shape[0].is_multiple_of(h * w) {
                    return Err(format!(
                        "space_to_channel: {x} is not a batch of {h}x{w} token grids (block {block})"
                    ));
                }
                let images = x.shape[0] / (h * w);
                let cells = h.div_ceil(*block) * w.div_ceil(*block);
                Ok(TensorFact::f32([
                    images * cells,
                    block * block * x.shape[1],
                ]))
            }
            Op::Silu | Op::Gelu { .. } | Op::Softmax => {
                want_float(inputs[0], "activation input")?;
                Ok(TensorFact::f32(inputs[0].shape.clone()))
            }
            Op::Reshape { shape } => {
                let x = inputs[0];
                let out = TensorFact::new(x.dtype, shape.clone());
                if out.elems() != x.elems() {
                    return Err(format!(
                        "reshape {x} to {shape:?} changes the element count"
                    ));
                }
                Ok(out)
            }
            Op::Transpose { perm } => {
                let x = inputs[0];
                let mut seen = vec![false; x.rank()];
                if perm.len() != x.rank()
                    || perm
                        .iter()
                        .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
                {
                    return Err(format!(
                        "transpose: {perm:?} is not a permutation of {x}'s dims"
                    ));
                }
                Ok(TensorFact::new(
                    x.dtype,
                    perm.iter().map(|&p| x.shape[p]).collect::<Vec<_>>(),
                ))
            }
            Op::SelectRow => {
                want_rank(inputs[0], 2, "select_row input")?;
                want_scalar_i32(inputs[1], "select_row index")?;
                Ok(TensorFact::new(inputs[0].dtype, [1, inputs[0].shape[1]]))
            }
        }
    }
}
