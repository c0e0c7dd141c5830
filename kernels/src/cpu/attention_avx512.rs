//! AVX-512 register tiles of the bidirectional (ViT) attention, the loops that do its
//! arithmetic (`attention_f32.rs` walks the key blocks and query tiles around them and
//! writes the normalised outputs):
//!
//! - [`score_softmax_tile`]: `QT x KB` scores in 16 zmm accumulators (each step loads
//!   the four K^T vectors of one head column once and broadcasts one query value per
//!   row), then the online softmax on the registers: block max, `exp`, the running
//!   (max, sum) and the rescale of the running outputs;
//! - [`value_tile`]: `P @ V` for `QT` rows over a head's columns in passes of up to 80
//!   (five vectors, the last one masked: SigLIP-so400m's 72 is one pass with 20
//!   accumulators), each V row loaded once per key and reused by the `QT` rows.
//!
//! The portable tiles did the same arithmetic through the vectorizer at a quarter of
//! the FMA peak: it re-read K^T from memory for every row, spilled the value tile's
//! accumulators, and ran the softmax row by row (at head_dim 72 that bookkeeping cost as
//! much as the score FMAs). Results differ from the portable `FUSED` path only in the
//! summation order of the softmax denominators.

use super::attention_f32::{KB, QT};
use std::arch::x86_64::*;

/// Widest value pass in vectors (5 x 16 = 80 columns).
const MAX_PASS_VECTORS: usize = 5;

/// The first `n` lanes of a vector (all 16 when `n >= 16`).
#[inline(always)]
pub(super) fn first_lanes(n: usize) -> __mmask16 {
    match n {
        n if n >= 16 => 0xFFFF,
        n => (1u16 << n) - 1,
    }
}

/// The lanes of vector `c` (keys `16c..16c + 16` of a block) that are among the block's
/// first `nk` keys.
#[inline(always)]
fn key_mask(nk: usize, c: usize) -> __mmask16 {
    first_lanes(nk.saturating_sub(16 * c))
}

/// `e^x` per lane: `math::exp`'s range reduction and polynomial, with fused
/// multiply-adds.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn exp_ps(x: __m512) -> __m512 {
    use super::math::{EXP_LN2_HI as LN2_HI, EXP_LN2_LO as LN2_LO, EXP_POLY};
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.3)),
        _mm512_set1_ps(88.0),
    );
    // n = round(x log2 e), r = x - n ln 2 (in two parts).
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let e = _mm512_add_ps(
        _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
        _mm512_set1_ps(1.0),
    );
    // 2^n from its exponent bits (n in [-126, 127] after the clamp).
    _mm512_scalef_ps(e, n)
}

/// `c * 2^t` per lane for `t <= 0` (clamped at -30, below which a softmax weight of 8 or
/// 11 bits is 0 anyway): `math::POW2_TAYLOR` on the fraction, scaled by `vscalefps`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn pow2_ps(t: __m512, c: f32) -> __m512 {
    use super::math::POW2_TAYLOR as TAYLOR;
    let t = _mm512_max_ps(t, _mm512_set1_ps(-30.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm512_sub_ps(t, n);
    let mut e = _mm512_set1_ps(c * TAYLOR[0]);
    for &k in &TAYLOR[1..] {
        e = _mm512_fmadd_ps(e, f, _mm512_set1_ps(c * k));
    }
    _mm512_scalef_ps(e, n)
}

/// One `QT`-row tile of one key block: scores `q[r] . kt[..][j]` for the block's `nk`
/// keys, then the online softmax per row: the new running max `m[r]`, `s[r][j] =
/// exp(score - m[r])` (0 for keys past `nk`), `l[r] = l[r] * corr + sum_j s[r][j]`, and
/// the running outputs `o[r][..hd] *= corr`, where `corr = exp(old max - new max)`.
/// `q` holds `QT` rows of `hd` values, `kt` is `hd x KB` and 64-byte aligned (keys past
/// `nk` may hold anything), `s` holds `QT` rows of `KB`, `m`, `l` `QT` values and `o`
/// `QT` rows of `hd`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn score_softmax_tile(
    q: &[f32],
    kt: &[f32],
    hd: usize,
    nk: usize,
    m: &mut [f32],
    l: &mut [f32],
    s: &mut [f32],
    o: &mut [f32],
) {
    assert!((1..=KB).contains(&nk) && q.len() >= QT * hd && kt.len() >= hd * KB);
    assert!(m.len() >= QT && l.len() >= QT && s.len() >= QT * KB && o.len() >= QT * hd);
    debug_assert!(kt.as_ptr().align_offset(64) == 0);
    let mut acc = [[_mm512_setzero_ps(); KB / 16]; QT];
    let (qp, kp) = (q.as_ptr(), kt.as_ptr());
    for d in 0..hd {
        // SAFETY: d < hd and the asserts bound every read; kt rows are 64-byte aligned
        // (KB = 64 values per row from an aligned start).
        unsafe {
            let k: [__m512; KB / 16] =
                std::array::from_fn(|c| _mm512_load_ps(kp.add(d * KB + 16 * c)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*qp.add(r * hd + d));
                for (a, &kc) in acc.iter_mut().zip(&k) {
                    *a = _mm512_fmadd_ps(x, kc, *a);
                }
            }
        }
    }
    let masks: [__mmask16; KB / 16] = std::array::from_fn(|c| key_mask(nk, c));
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    for (r, acc) in acc.iter().enumerate() {
        let mut mx = neg_inf;
        for (&a, &mk) in acc.iter().zip(&masks) {
            mx = _mm512_mask_max_ps(mx, mk, mx, a);
        }
        let m_new = m[r].max(_mm512_reduce_max_ps(mx));
        let corr = super::math::exp(m[r] - m_new);
        let mv = _mm512_set1_ps(m_new);
        let mut total = _mm512_setzero_ps();
        for (c, (&a, &mk)) in acc.iter().zip(&masks).enumerate() {
            let p = _mm512_maskz_mov_ps(mk, exp_ps(_mm512_sub_ps(a, mv)));
            total = _mm512_add_ps(total, p);
            // SAFETY: r < QT, 16c + 16 <= KB: inside `s` (asserted).
            unsafe { _mm512_storeu_ps(s.as_mut_ptr().add(r * KB + 16 * c), p) };
        }
        l[r] = l[r] * corr + _mm512_reduce_add_ps(total);
        m[r] = m_new;
        if corr != 1.0 {
            let cv = _mm512_set1_ps(corr);
            let row = &mut o[r * hd..][..hd];
            let mut col = 0;
            while col < hd {
                let mk = first_lanes(hd - col);
                // SAFETY: lanes col.. under the mask are below hd, inside `row`.
                unsafe {
                    let p = row.as_mut_ptr().add(col);
                    _mm512_mask_storeu_ps(p, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, p), cv));
                }
                col += 16;
            }
        }
    }
}

/// `o[r][..hd] += sum_{j < nk} p[r][j] * v[j][..hd]` for `r < QT`: `p` holds `QT` rows
/// of `KB` probabilities, `v` starts at the first key's head column with row stride
/// `kw`, `o` holds `QT` rows of `hd`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn value_tile(
    p: &[f32],
    v: &[f32],
    kw: usize,
    nk: usize,
    o: &mut [f32],
    hd: usize,
) {
    assert!(nk <= KB && p.len() >= QT * KB && o.len() >= QT * hd);
    assert!(nk == 0 || (nk - 1) * kw + hd <= v.len());
    let mut col = 0;
    while col < hd {
        let rest = hd - col;
        let width = if rest <= 16 * MAX_PASS_VECTORS {
            rest
        } else {
            64
        };
        let tail = first_lanes(width - 16 * (width.div_ceil(16) - 1));
        // SAFETY: columns col..col + width < hd of every row, per the asserts.
        unsafe {
            match width.div_ceil(16) {
                1 => value_pass::<1>(p, v, kw, nk, o, hd, col, tail),
                2 => value_pass::<2>(p, v, kw, nk, o, hd, col, tail),
                3 => value_pass::<3>(p, v, kw, nk, o, hd, col, tail),
                4 => value_pass::<4>(p, v, kw, nk, o, hd, col, tail),
                _ => value_pass::<5>(p, v, kw, nk, o, hd, col, tail),
            }
        }
        col += width;
    }
}

/// One pass of [`value_tile`] over columns `col..col + 16 (NV - 1) + popcount(tail)`,
/// held in `QT x NV` accumulators; the last vector's lanes are masked by `tail`
/// (masked loads and stores touch no memory outside the mask).
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn value_pass<const NV: usize>(
    p: &[f32],
    v: &[f32],
    kw: usize,
    nk: usize,
    o: &mut [f32],
    hd: usize,
    col: usize,
    tail: __mmask16,
) {
    let mask = |c: usize| if c + 1 == NV { tail } else { 0xFFFF };
    let op = o.as_mut_ptr();
    // SAFETY (whole body): the caller's asserts bound rows r < QT of `o` and `p`, keys
    // j < nk of `v`, and the masked columns below hd.
    unsafe {
        let mut acc: [[__m512; NV]; QT] = std::array::from_fn(|r| {
            std::array::from_fn(|c| _mm512_maskz_loadu_ps(mask(c), op.add(r * hd + col + 16 * c)))
        });
        for j in 0..nk {
            let vp = v.as_ptr().add(j * kw + col);
            let vr: [__m512; NV] =
                std::array::from_fn(|c| _mm512_maskz_loadu_ps(mask(c), vp.add(16 * c)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*p.as_ptr().add(r * KB + j));
                for (a, &vc) in acc.iter_mut().zip(&vr) {
                    *a = _mm512_fmadd_ps(x, vc, *a);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (c, &a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(op.add(r * hd + col + 16 * c), mask(c), a);
            }
        }
    }
}
