//! Activation preparation for the packed matmul: dynamic quantization (I16: one scale
//! per row; I8: one scale per 32-value block) or a plain f32 copy, written in the
//! layout the microkernels broadcast from.
//!
//! # Layout
//!
//! Rows are taken in groups of [`GROUP`] = 8 (the largest row block a microkernel
//! computes at once; the last group is zero-padded). Within a group, data is ordered
//! block-major then row: `[group][block][row of 8][32 values]` for i8/i16 (64 bytes
//! for i16 as byte planes: 32 high bytes then 32 low bytes) and `[group][k][row of 8]`
//! for f32. A kernel working on rows `r0..r0+MR` of one group
//! then finds every row's operand for a block at one base pointer plus a constant
//! offset, instead of juggling MR row pointers (the ggml `block_q8_0x4` idea).
//! Per-block side data (`blk_scale`, `blk_bias`, `blk_sum`) is `[group][block][row]`.
//!
//! # Fused norms
//!
//! With a [`RowNorm`] (the matmul's norm prologue) each group of 8 rows is normalized
//! in the same pass, into a buffer that stays in the core's caches, and quantized from
//! there:
//! - RMSNorm: one read of `x` gives both `sum(x^2)` and `x * w`, which is quantized as
//!   usual, and the row's `rsqrt(mean(x^2) + eps)` is folded into its scales (a common
//!   factor of a row does not change the integers, only the scale);
//! - LayerNorm: its bias comes after the scale, so the rows are normalized whole, by
//!   the LayerNorm kernel's own row code (the fused result is the unfused one, bit for
//!   bit), and the normalized tensor is never written out.
//!
//! f32 plans store the normalized values themselves.
//!
//! Rounding is round-half-to-even (`vcvtps2dq`'s default, and `round_ties_even` in the
//! portable path), so every path produces the same integers.

use super::Isa;
use std::cell::RefCell;

/// The norm a matmul applies to its activation rows before quantizing them (its
/// prologue; `weight` and `bias` are `[k]`).
#[derive(Clone, Copy, Debug)]
pub enum RowNorm<'a> {
    /// `Prologue::RmsNorm`: `x * rsqrt(mean(x^2) + eps) * weight`.
    Rms { weight: &'a [f32], eps: f32 },
    /// `Prologue::LayerNorm`: `(x - mean) * rsqrt(var + eps) * weight + bias`.
    Layer {
        weight: &'a [f32],
        bias: &'a [f32],
        eps: f32,
    },
}

impl RowNorm<'_> {
    /// Whether the weight (and bias) are `k` values long.
    pub(crate) fn fits(&self, k: usize) -> bool {
        match *self {
            RowNorm::Rms { weight, .. } => weight.len() == k,
            RowNorm::Layer { weight, bias, .. } => weight.len() == k && bias.len() == k,
        }
    }
}

thread_local! {
    /// `x * w` for one group of rows under a [`RowNorm`] (reused: decode calls this
    /// for every matmul of every token).
    static NORMED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rows per activation group (the largest microkernel row block).
pub(crate) const GROUP: usize = 8;
const BLOCK: usize = 32;

/// How the activations are prepared for one matmul call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActPlan {
    /// f32, transposed per group: `f[group][k][row]`.
    F32,
    /// i8 per 32-value block (`q8`, `blk_scale`); `blk_bias = -offset * sum(q)` and
    /// `blk_sum = scale * sum(q)` per block.
    I8 {
        offset: i32,
    },
    /// i8 with one scale per row (`ActPrecision::I8Row`), in the I8 layout with the
    /// row's scale in every block's `blk_scale` (so the per-block I8 kernels compute it
    /// exactly) and in `row_scale` (for the kernels that accumulate whole rows).
    I8Row {
        offset: i32,
    },
    /// `I8Row`'s values stored as `u8 = q + 128` (the unsigned operand of `vpdpbusd`,
    /// so the weights stay signed: the kernel subtracts `128 * sum(w)` per weight row
    /// itself). Values and row scales only: its kernels keep whole rows in i32 and read
    /// no per-block data, so none is computed ([`ActPlan::whole_rows`]).
    U8Row,
    /// i16 with one scale per row (`q16`, `row_scale`); within each 32-value block
    /// position `p` holds value `perm[p]` (the order the kernel's weight unpacking
    /// produces); `blk_bias = -offset * sum(q)`, `blk_sum = sum(q)` as f32.
    I16 {
        offset: i32,
        perm: Option<&'static [u8; 32]>,
    },
    /// i16 with one scale per row like `I16`, stored as two byte planes per 32-value
    /// block and row in `q8`: the high bytes `q >> 8` (i8, 32 bytes) then the low bytes
    /// `q & 0xff` (u8, 32 bytes), both in natural order, so `q = 256 hi + lo` can be
    /// multiplied with `vpdpbusd` like I8 (see `avx512_q4::q4_i16b`).
    /// `blk_bias = -offset * sum(q) - hi_offset * sum(hi)`, `blk_sum = sum(q)` as f32.
    I16Bytes {
        offset: i32,
        hi_offset: i32,
    },
    /// `I16Bytes` with the high-byte plane stored as `u8 = hi + 128`, so both planes
    /// are `vpdpbusd`'s unsigned operand and the weights stay signed (the kernel
    /// subtracts `128 * sum(w)` per weight row from the high plane itself). Values and
    /// row scales only, as `U8Row`.
    I16BytesHiU8,
    /// The f32 layout holding quantize-then-dequantize values (f32 weights with an
    /// integer activation policy: the same numerics, computed in f32).
    FakeI8,
    FakeI8Row,
    FakeI16,
}

impl ActPlan {
    /// Plans whose kernels keep whole rows' dot products in i32 and read only the
    /// values and `row_scale`: no per-block scales, biases or sums are made for them
    /// (their per-block reductions were a third of the quantizer's time).
    pub(crate) fn whole_rows(self) -> bool {
        matches!(self, ActPlan::U8Row | ActPlan::I16BytesHiU8)
    }
}

/// The quantized activations, reused across calls (thread-local in the driver).
#[derive(Default)]
pub(crate) struct ActScratch {
    pub q8: Vec<i8>,
    pub q16: Vec<i16>,
    pub f: Vec<f32>,
    pub blk_scale: Vec<f32>,
    pub blk_bias: Vec<i32>,
    pub blk_sum: Vec<f32>,
    pub row_scale: Vec<f32>,
    /// Bytes per (block, row) in `q8`: 32 for I8, 64 for I16Bytes.
    pub q8_block_bytes: usize,
    /// Geometry of the last `prepare`: rows padded to whole groups, k, blocks per row.
    pub groups: usize,
    pub k: usize,
    pub kb: usize,
}

/// Sizes a scratch array without clearing it: every value a kernel reads is written by
/// `prepare` (pad rows of the last group are never read).
fn refill<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    v.resize(len, T::default());
}

/// Pair order of i16 activations for the Q4 I16 kernels: vector `v = 4L + s` of a
/// block takes nibble `s` (0..4) of both 16-bit words of each dword of load `L`; word 0
/// is GGUF quant bytes `4L, 4L+1`, word 1 bytes `4L+2, 4L+3`, and nibble `s` of a word
/// is the low (s even) or high (s odd) nibble of byte `s / 2`. A low nibble of byte `j`
/// is value `j`, a high nibble value `j + 16`.
pub(crate) const Q4_I16_PERM: [u8; 32] = {
    let mut p = [0u8; 32];
    let mut v = 0;
    while v < 16 {
        let (l, s) = (v / 4, v % 4);
        let base = 4 * l + s / 2 + 16 * (s % 2);
        p[2 * v] = base as u8;
        p[2 * v + 1] = (base + 2) as u8;
        v += 1;
    }
    p
};

/// Pair order of i16 activations for the Q8 I16 kernels: vector `v = 2L + h` holds the
/// sign-extended low (h = 0) or high (h = 1) bytes of the 16-bit words of load `L`,
/// i.e. values `4L + h` and `4L + h + 2`.
pub(crate) const Q8_I16_PERM: [u8; 32] = {
    let mut p = [0u8; 32];
    let mut v = 0;
    while v < 16 {
        let (l, h) = (v / 2, v % 2);
        p[2 * v] = (4 * l + h) as u8;
        p[2 * v + 1] = (4 * l + h + 2) as u8;
        v += 1;
    }
    p
};

/// Quantizes (or copies) `a [m, k]`, normalized by `norm` if given, into `s` for
/// `plan`. Large inputs are split over groups on the current kernel thread pool.
/// The caller checked `norm.fits(k)`.
pub(crate) fn prepare(
    a: &[f32],
    m: usize,
    k: usize,
    norm: Option<RowNorm>,
    plan: ActPlan,
    isa: Isa,
    s: &mut ActScratch,
) {
    let groups = m.div_ceil(GROUP);
    let kb = k.div_ceil(BLOCK);
    s.groups = groups;
    s.k = k;
    s.kb = kb;
    let uses_f = matches!(
        plan,
        ActPlan::F32 | ActPlan::FakeI8 | ActPlan::FakeI8Row | ActPlan::FakeI16
    );
    let uses_q8 = matches!(
        plan,
        ActPlan::I8 { .. }
            | ActPlan::I8Row { .. }
            | ActPlan::U8Row
            | ActPlan::I16Bytes { .. }
            | ActPlan::I16BytesHiU8
    );
    let uses_q16 = matches!(plan, ActPlan::I16 { .. });
    let uses_rs = matches!(
        plan,
        ActPlan::I16 { .. }
            | ActPlan::I16Bytes { .. }
            | ActPlan::I16BytesHiU8
            | ActPlan::I8Row { .. }
            | ActPlan::U8Row
            | ActPlan::FakeI16
    );
    let uses_blk = (uses_q8 || uses_q16) && !plan.whole_rows();
    s.q8_block_bytes = if matches!(plan, ActPlan::I16Bytes { .. } | ActPlan::I16BytesHiU8) {
        2 * BLOCK
    } else {
        BLOCK
    };
    // Per-group chunk length of each array, 0 where the plan does not use it.
    let fk = if uses_f { GROUP * k } else { 0 };
    let q8k = if uses_q8 {
        GROUP * kb * s.q8_block_bytes
    } else {
        0
    };
    let q16k = if uses_q16 { GROUP * kb * BLOCK } else { 0 };
    let bsk = if matches!(plan, ActPlan::I8 { .. } | ActPlan::I8Row { .. }) {
        GROUP * kb
    } else {
        0
    };
    let bk = if uses_blk { GROUP * kb } else { 0 };
    let rsk = if uses_rs { GROUP } else { 0 };
    refill(&mut s.f, groups * fk);
    refill(&mut s.q8, groups * q8k);
    refill(&mut s.q16, groups * q16k);
    refill(&mut s.blk_scale, groups * bsk);
    refill(&mut s.blk_bias, groups * bk);
    refill(&mut s.blk_sum, groups * bk);
    refill(&mut s.row_scale, groups * rsk);
    let per_group = |g: usize,
                     f: &mut [f32],
                     q8: &mut [i8],
                     q16: &mut [i16],
                     bs: &mut [f32],
                     bb: &mut [i32],
                     bsum: &mut [f32],
                     rs: &mut [f32]| {
        let rows_here = (m - g * GROUP).min(GROUP);
        let a = &a[g * GROUP * k..][..rows_here * k];
        let Some(norm) = norm else {
            dispatch_group(isa, a, rows_here, k, plan, f, q8, q16, bs, bb, bsum, rs);
            return;
        };
        NORMED.with(|buf| {
            let mut buf = buf.borrow_mut();
            refill(&mut buf, rows_here * k);
            let mut inv_rms = [0f32; GROUP];
            match norm {
                RowNorm::Rms { weight, eps } => {
                    for ((x, xw), inv) in a
                        .chunks_exact(k)
                        .zip(buf.chunks_exact_mut(k))
                        .zip(&mut inv_rms)
                    {
                        *inv = scale_row(x, weight, eps, !uses_f, xw);
                    }
                }
                RowNorm::Layer { weight, bias, eps } => {
                    super::layer_norm_f32::rows_on(isa, a, weight, bias, eps, &mut buf);
                }
            }
            dispatch_group(isa, &buf, rows_here, k, plan, f, q8, q16, bs, bb, bsum, rs);
            if uses_f || matches!(norm, RowNorm::Layer { .. }) {
                return; // the values themselves are normalized
            }
            for (r, &inv) in inv_rms[..rows_here].iter().enumerate() {
                if uses_rs {
                    rs[r] *= inv;
                }
                // The I8 plans' block scales (I8Row's too: its row scale in every block).
                if bsk > 0 {
                    for b in 0..kb {
                        bs[b * GROUP + r] *= inv;
                        bsum[b * GROUP + r] *= inv;
                    }
                }
            }
        });
    };
    let parallel = m >= 32 && m * k >= 1 << 15 && super::pool::current_threads() > 1;
    if !parallel {
        // The decode path: no allocation, groups in order.
        fn part<T>(v: &mut [T], g: usize, len: usize) -> &mut [T] {
            &mut v[g * len..(g + 1) * len]
        }
        for g in 0..groups {
            per_group(
                g,
                part(&mut s.f, g, fk),
                part(&mut s.q8, g, q8k),
                part(&mut s.q16, g, q16k),
                part(&mut s.blk_scale, g, bsk),
                part(&mut s.blk_bias, g, bk),
                part(&mut s.blk_sum, g, bk),
                part(&mut s.row_scale, g, rsk),
            );
        }
        return;
    }
    // Split every array into per-group chunks (unused arrays give empty chunks).
    fn chunks<T>(v: &mut [T], len: usize, groups: usize) -> Vec<&mut [T]> {
        if len == 0 {
            (0..groups).map(|_| <&mut [T]>::default()).collect()
        } else {
            v.chunks_mut(len).collect()
        }
    }
    let f = chunks(&mut s.f, fk, groups);
    let q8 = chunks(&mut s.q8, q8k, groups);
    let q16 = chunks(&mut s.q16, q16k, groups);
    let bs = chunks(&mut s.blk_scale, bsk, groups);
    let bb = chunks(&mut s.blk_bias, bk, groups);
    let bsum = chunks(&mut s.blk_sum, bk, groups);
    let rs = chunks(&mut s.row_scale, rsk, groups);
    let work: Vec<_> = f
        .into_iter()
        .zip(q8)
        .zip(q16)
        .zip(bs)
        .zip(bb)
        .zip(bsum)
        .zip(rs)
        .enumerate()
        .collect();
    debug_assert_eq!(work.len(), groups);
    super::pool::for_each_item(work, |(g, ((((((f, q8), q16), bs), bb), bsum), rs))| {
        per_group(g, f, q8, q16, bs, bb, bsum, rs)
    });
}

/// Writes `x * w` (times the row's `rsqrt(mean(x^2) + eps)` unless `defer_rms`) into
/// `out` and returns that factor.
#[inline]
fn scale_row(x: &[f32], weight: &[f32], eps: f32, defer_rms: bool, out: &mut [f32]) -> f32 {
    let ms = super::math::sum_squares(x) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    let r = if defer_rms { 1.0 } else { inv };
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * r * w;
    }
    inv
}

#[allow(clippy::too_many_arguments)]
fn dispatch_group(
    isa: Isa,
    a: &[f32],
    rows: usize,
    k: usize,
    plan: ActPlan,
    f: &mut [f32],
    q8: &mut [i8],
    q16: &mut [i16],
    bs: &mut [f32],
    bb: &mut [i32],
    bsum: &mut [f32],
    rs: &mut [f32],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is at most what `detected()` found on this CPU.
        Isa::Avx512Vnni => unsafe { group_avx512(a, rows, k, plan, f, q8, q16, bs, bb, bsum, rs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma | Isa::Avx2Vnni => unsafe {
            group_avx2(a, rows, k, plan, f, q8, q16, bs, bb, bsum, rs)
        },
        _ => group(a, rows, k, plan, f, q8, q16, bs, bb, bsum, rs),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_avx512(
    a: &[f32],
    rows: usize,
    k: usize,
    plan: ActPlan,
    f: &mut [f32],
    q8: &mut [i8],
    q16: &mut [i16],
    bs: &mut [f32],
    bb: &mut [i32],
    bsum: &mut [f32],
    rs: &mut [f32],
) {
    match plan {
        // SAFETY: the caller sized every array for `rows` rows of `k` (a multiple of 32).
        ActPlan::I8 { offset } => unsafe {
            avx512::i8_blocks::<true>(a, rows, k, offset, None, 0, q8, bs, bb, bsum)
        },
        // SAFETY: as above.
        ActPlan::I8Row { offset } => unsafe {
            avx512::i8_blocks::<true>(a, rows, k, offset, Some(rs), 0, q8, bs, bb, bsum)
        },
        // SAFETY: as above (no block arrays: `ActPlan::whole_rows`).
        ActPlan::U8Row => unsafe {
            avx512::i8_blocks::<false>(a, rows, k, 0, Some(rs), 0x80u8 as i8, q8, bs, bb, bsum)
        },
        // SAFETY: as above.
        ActPlan::I16Bytes { offset, hi_offset } => unsafe {
            avx512::i16_byte_planes::<true>(a, rows, k, offset, hi_offset, 0, q8, bb, bsum, rs)
        },
        // SAFETY: as above (no block arrays).
        ActPlan::I16BytesHiU8 => unsafe {
            avx512::i16_byte_planes::<false>(a, rows, k, 0, 0, 0x80u8 as i8, q8, bb, bsum, rs)
        },
        _ => group(a, rows, k, plan, f, q8, q16, bs, bb, bsum, rs),
    }
}

/// Explicit AVX-512 quantizers (the generic loops do not vectorize the per-block
/// reductions well). Same arithmetic as `group`: the maximum is exact in any order,
/// then `x * inv` and `vcvtps2dq` (round half to even) give the same integers.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK, GROUP};
    use std::arch::x86_64::*;

    /// `max |x|` over the `k` values (a multiple of 16) at `row`.
    ///
    /// SAFETY: `row` points at `k` readable f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_amax(row: *const f32, k: usize) -> f32 {
        let mut m = _mm512_setzero_ps();
        for i in (0..k).step_by(16) {
            // SAFETY: i + 16 <= k, per the contract.
            m = _mm512_max_ps(m, _mm512_abs_ps(unsafe { _mm512_loadu_ps(row.add(i)) }));
        }
        _mm512_reduce_max_ps(m)
    }

    /// I8 per 32-value block; with `row_scales` (`ActPlan::I8Row`) one scale per row,
    /// written there and, with `BLOCKS`, into every block's slot. The stored bytes are
    /// xor `flip` (0x80: `u8 = q + 128`, `ActPlan::U8Row`). Without `BLOCKS` (a plan
    /// that `whole_rows`) `bs`, `bb` and `bsum` are not touched and may be empty.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn i8_blocks<const BLOCKS: bool>(
        a: &[f32],
        rows: usize,
        k: usize,
        offset: i32,
        mut row_scales: Option<&mut [f32]>,
        flip: i8,
        q8: &mut [i8],
        bs: &mut [f32],
        bb: &mut [i32],
        bsum: &mut [f32],
    ) {
        let kb = k / BLOCK;
        // `prepare` sizes the arrays; checked anyway because the loop below does not
        // bounds-check (a failure would be a bug here, so it is loud in debug builds).
        let block_arrays = kb * GROUP * usize::from(BLOCKS);
        if a.len() < rows * k
            || q8.len() < kb * GROUP * BLOCK
            || bs.len() < block_arrays
            || bb.len() < block_arrays
            || bsum.len() < block_arrays
            || row_scales.as_ref().is_some_and(|rs| rs.len() < rows)
            || (!BLOCKS && row_scales.is_none())
        {
            debug_assert!(false, "act_quant::i8_blocks: arrays too small");
            return;
        }
        let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
        for r in 0..rows {
            // SAFETY: the check above bounds every access (r < rows).
            let row_scale = row_scales.as_deref_mut().map(|rs| unsafe {
                let s = row_amax(a.as_ptr().add(r * k), k) / 127.0;
                *rs.get_unchecked_mut(r) = s;
                s
            });
            for b in 0..kb {
                // SAFETY: the check above bounds every access (r < rows, b < kb).
                unsafe {
                    let x = a.as_ptr().add(r * k + b * BLOCK);
                    let x0 = _mm512_loadu_ps(x);
                    let x1 = _mm512_loadu_ps(x.add(16));
                    let s = row_scale.unwrap_or_else(|| {
                        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)))
                            / 127.0
                    });
                    let inv = _mm512_set1_ps(if s != 0.0 { 1.0 / s } else { 0.0 });
                    let q0 = _mm512_min_epi32(
                        _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x0, inv)), lo),
                        hi,
                    );
                    let q1 = _mm512_min_epi32(
                        _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x1, inv)), lo),
                        hi,
                    );
                    let i = b * GROUP + r;
                    let dst = q8.as_mut_ptr().add(i * BLOCK) as *mut __m128i;
                    let flip = _mm_set1_epi8(flip);
                    _mm_storeu_si128(dst, _mm_xor_si128(_mm512_cvtepi32_epi8(q0), flip));
                    _mm_storeu_si128(dst.add(1), _mm_xor_si128(_mm512_cvtepi32_epi8(q1), flip));
                    if !BLOCKS {
                        continue;
                    }
                    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                    *bs.get_unchecked_mut(i) = s;
                    *bb.get_unchecked_mut(i) = -offset * sum;
                    *bsum.get_unchecked_mut(i) = s * sum as f32;
                }
            }
        }
    }

    /// I16 as byte planes (`ActPlan::I16Bytes`): one scale per row, then per block the
    /// high bytes (i8, xor `hi_flip`: 0x80 stores `hi + 128`) and the low bytes (u8) of
    /// the rounded values; with `BLOCKS`, each block's bias and sum (`bb`, `bsum`,
    /// untouched and possibly empty without).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn i16_byte_planes<const BLOCKS: bool>(
        a: &[f32],
        rows: usize,
        k: usize,
        offset: i32,
        hi_offset: i32,
        hi_flip: i8,
        q8: &mut [i8],
        bb: &mut [i32],
        bsum: &mut [f32],
        rs: &mut [f32],
    ) {
        let kb = k / BLOCK;
        // As in `i8_blocks`.
        let block_arrays = kb * GROUP * usize::from(BLOCKS);
        if a.len() < rows * k
            || q8.len() < kb * GROUP * 2 * BLOCK
            || bb.len() < block_arrays
            || bsum.len() < block_arrays
            || rs.len() < rows
        {
            debug_assert!(false, "act_quant::i16_byte_planes: arrays too small");
            return;
        }
        let (lo, hi) = (_mm512_set1_epi32(-32767), _mm512_set1_epi32(32767));
        // SAFETY: the check above bounds every access.
        unsafe {
            for r in 0..rows {
                let row = a.as_ptr().add(r * k);
                let s = row_amax(row, k) / 32767.0;
                let inv = _mm512_set1_ps(if s != 0.0 { 1.0 / s } else { 0.0 });
                *rs.get_unchecked_mut(r) = s;
                for b in 0..kb {
                    let x = row.add(b * BLOCK);
                    let q0 = _mm512_min_epi32(
                        _mm512_max_epi32(
                            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), inv)),
                            lo,
                        ),
                        hi,
                    );
                    let q1 = _mm512_min_epi32(
                        _mm512_max_epi32(
                            _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x.add(16)), inv)),
                            lo,
                        ),
                        hi,
                    );
                    let i = b * GROUP + r;
                    let dst = q8.as_mut_ptr().add(i * 2 * BLOCK) as *mut __m128i;
                    // vpmovdb truncates: q >> 8 fits i8 (|q| <= 32767), q's low byte is lo.
                    let (h0, h1) = (_mm512_srai_epi32::<8>(q0), _mm512_srai_epi32::<8>(q1));
                    let flip = _mm_set1_epi8(hi_flip);
                    _mm_storeu_si128(dst, _mm_xor_si128(_mm512_cvtepi32_epi8(h0), flip));
                    _mm_storeu_si128(dst.add(1), _mm_xor_si128(_mm512_cvtepi32_epi8(h1), flip));
                    _mm_storeu_si128(dst.add(2), _mm512_cvtepi32_epi8(q0));
                    _mm_storeu_si128(dst.add(3), _mm512_cvtepi32_epi8(q1));
                    if !BLOCKS {
                        continue;
                    }
                    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
                    let sum_hi = _mm512_reduce_add_epi32(_mm512_add_epi32(h0, h1));
                    // |sum| <= 32 * 32767 and |sum_hi| <= 32 * 128: with offset <= 8 and
                    // hi_offset <= 32768 the bias stays below 2^28.
                    *bb.get_unchecked_mut(i) = -offset * sum - hi_offset * sum_hi;
                    *bsum.get_unchecked_mut(i) = sum as f32;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn group_avx2(
    a: &[f32],
    rows: usize,
    k: usize,
    plan: ActPlan,
    f: &mut [f32],
    q8: &mut [i8],
    q16: &mut [i16],
    bs: &mut [f32],
    bb: &mut [i32],
    bsum: &mut [f32],
    rs: &mut [f32],
) {
    group(a, rows, k, plan, f, q8, q16, bs, bb, bsum, rs)
}

#[inline(always)]
fn amax(x: &[f32]) -> f32 {
    // Eight partial maxima so the loop vectorizes (f32 max is not associative for the
    // compiler because of NaN; this order is explicit).
    let mut m = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            m[i] = m[i].max(c[i].abs());
        }
    }
    for v in chunks.remainder() {
        m[0] = m[0].max(v.abs());
    }
    m.iter().fold(0f32, |a, &b| a.max(b))
}

/// One group of up to `GROUP` rows (`a` is `rows * k` values); pad rows stay zero.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn group(
    a: &[f32],
    rows: usize,
    k: usize,
    plan: ActPlan,
    f: &mut [f32],
    q8: &mut [i8],
    q16: &mut [i16],
    bs: &mut [f32],
    bb: &mut [i32],
    bsum: &mut [f32],
    rs: &mut [f32],
) {
    match plan {
        ActPlan::F32 | ActPlan::FakeI8 | ActPlan::FakeI8Row | ActPlan::FakeI16 => {
            let mut tmp = [0f32; BLOCK];
            for r in 0..rows {
                let row = &a[r * k..][..k];
                let levels = if plan == ActPlan::FakeI8Row {
                    127.0
                } else {
                    32767.0
                };
                let row_scale = amax(row) / levels;
                let row_inv = if row_scale != 0.0 {
                    1.0 / row_scale
                } else {
                    0.0
                };
                for (b, x) in row.chunks(BLOCK).enumerate() {
                    let t = &mut tmp[..x.len()];
                    match plan {
                        ActPlan::F32 => t.copy_from_slice(x),
                        ActPlan::FakeI8 => {
                            let s = amax(x) / 127.0;
                            let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                            for (t, &v) in t.iter_mut().zip(x) {
                                *t = (v * inv).round_ties_even().clamp(-127.0, 127.0) * s;
                            }
                        }
                        _ => {
                            for (t, &v) in t.iter_mut().zip(x) {
                                *t = (v * row_inv).round_ties_even().clamp(-levels, levels)
                                    * row_scale;
                            }
                        }
                    }
                    for (j, &v) in t.iter().enumerate() {
                        f[(b * BLOCK + j) * GROUP + r] = v;
                    }
                }
            }
        }
        ActPlan::I8 { .. } | ActPlan::I8Row { .. } | ActPlan::U8Row => {
            let (offset, flip) = match plan {
                ActPlan::I8 { offset } | ActPlan::I8Row { offset } => (offset, 0),
                _ => (0, 0x80u8 as i8),
            };
            for r in 0..rows {
                let row = &a[r * k..][..k];
                let row_scale = matches!(plan, ActPlan::I8Row { .. } | ActPlan::U8Row)
                    .then(|| amax(row) / 127.0);
                if let Some(s) = row_scale {
                    rs[r] = s;
                }
                for (b, x) in row.chunks_exact(BLOCK).enumerate() {
                    let s = row_scale.unwrap_or_else(|| amax(x) / 127.0);
                    let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                    let dst = &mut q8[(b * GROUP + r) * BLOCK..][..BLOCK];
                    let mut sum = 0i32;
                    for (d, &v) in dst.iter_mut().zip(x) {
                        // |v * inv| <= 127 up to rounding of inv; the clamp guards it.
                        let q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i32;
                        *d = q as i8 ^ flip;
                        sum += q;
                    }
                    if plan.whole_rows() {
                        continue;
                    }
                    let i = b * GROUP + r;
                    bs[i] = s;
                    // |sum| <= 32 * 127 = 4064, so offset * sum fits easily (offset <= 128).
                    bb[i] = -offset * sum;
                    bsum[i] = s * sum as f32;
                }
            }
        }
        ActPlan::I16 { .. } | ActPlan::I16Bytes { .. } | ActPlan::I16BytesHiU8 => {
            let (offset, hi_offset, perm, planes) = match plan {
                ActPlan::I16 { offset, perm } => (offset, 0, perm, false),
                ActPlan::I16Bytes { offset, hi_offset } => (offset, hi_offset, None, true),
                // I16BytesHiU8: no block bias, the high plane flipped below.
                _ => (0, 0, None, true),
            };
            let hi_flip = if plan == ActPlan::I16BytesHiU8 {
                0x80u8 as i8
            } else {
                0
            };
            let mut tmp = [0i16; BLOCK];
            for r in 0..rows {
                let row = &a[r * k..][..k];
                let s = amax(row) / 32767.0;
                let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                rs[r] = s;
                for (b, x) in row.chunks_exact(BLOCK).enumerate() {
                    let mut sum = 0i32;
                    for (t, &v) in tmp.iter_mut().zip(x) {
                        let q = (v * inv).round_ties_even().clamp(-32767.0, 32767.0) as i32;
                        *t = q as i16;
                        sum += q;
                    }
                    if planes {
                        let dst = &mut q8[(b * GROUP + r) * 2 * BLOCK..][..2 * BLOCK];
                        let mut sum_hi = 0i32;
                        for (j, &q) in tmp.iter().enumerate() {
                            dst[j] = (q >> 8) as i8 ^ hi_flip;
                            dst[BLOCK + j] = q as i8;
                            sum_hi += (q >> 8) as i32;
                        }
                        if plan.whole_rows() {
                            continue;
                        }
                        let i = b * GROUP + r;
                        bb[i] = -offset * sum - hi_offset * sum_hi;
                        bsum[i] = sum as f32;
                        continue;
                    }
                    let dst = &mut q16[(b * GROUP + r) * BLOCK..][..BLOCK];
                    match perm {
                        Some(p) => {
                            for (d, &src) in dst.iter_mut().zip(p.iter()) {
                                *d = tmp[src as usize];
                            }
                        }
                        None => dst.copy_from_slice(&tmp),
                    }
                    let i = b * GROUP + r;
                    // |sum| <= 32 * 32767 < 2^21: exact in f32, and offset (<= 8 here)
                    // times it fits i32.
                    bb[i] = -offset * sum;
                    bsum[i] = sum as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations() {
        for p in [Q4_I16_PERM, Q8_I16_PERM] {
            let mut seen = [false; 32];
            p.iter().for_each(|&i| seen[i as usize] = true);
            assert!(seen.iter().all(|&s| s));
        }
    }
}
