//! AVX2 register tiles of the f32 attention's whole key blocks: `attention_avx512.rs`'s
//! two tiles with the same signatures, on 8 lanes and 16 registers (`attention_f32.rs`
//! walks the blocks around them and picks the tiles by path):
//!
//! - [`score_softmax_tile`]: the `QT x KB` scores in 16-key steps of 8 accumulators
//!   (each step loads two K^T vectors of a head column once and broadcasts one query
//!   value per row), stored to the score rows; then per row the online softmax over
//!   them: block max, `exp`, the running (max, sum) and the rescale of the running
//!   outputs;
//! - [`value_tile`]: `P @ V` for `QT` rows in passes of up to 24 columns (12
//!   accumulators; SigLIP-so400m's 72 is three), each V row loaded once per key and
//!   reused by the `QT` rows.
//!
//! The portable tiles compiled for AVX2 keep a `QT x KB` score tile, 32 ymm registers
//! on a machine with 16, and spill. `exp` is `math::exp`'s polynomial as in the AVX-512
//! tiles; results differ from those only in the summation order of the softmax
//! denominators.

use super::attention_decode_avx2::{exp8, hmax8, hsum8};
use super::attention_f32::{KB, QT};
use std::arch::x86_64::*;

/// Keys per score step (two vectors).
const KEY_STEP: usize = 16;
/// Widest value pass in vectors (3 x 8 = 24 columns).
const MAX_PASS_VECTORS: usize = 3;

/// The first `n` of 8 i32 lanes set (all for `n >= 8`, none for 0): the mask of
/// `vmaskmovps` and `vblendvps`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn first_lanes(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// One `QT`-row tile of one key block: scores `q[r] . kt[..][j]` for the block's `nk`
/// keys, then the online softmax per row: the new running max `m[r]`, `s[r][j] =
/// exp(score - m[r])` (0 for keys past `nk`), `l[r] = l[r] * corr + sum_j s[r][j]`, and
/// the running outputs `o[r][..hd] *= corr`, where `corr = exp(old max - new max)`.
/// `q` holds `QT` rows of `hd` values, `kt` is `hd x KB` and 32-byte aligned (keys past
/// `nk` may hold anything), `s` holds `QT` rows of `KB`, `m`, `l` `QT` values and `o`
/// `QT` rows of `hd`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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
    debug_assert!(kt.as_ptr().align_offset(32) == 0);
    let (qp, kp, sp) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    for j0 in (0..nk).step_by(KEY_STEP) {
        let mut acc = [[_mm256_setzero_ps(); 2]; QT];
        for d in 0..hd {
            // SAFETY: d < hd, j0 + 16 <= KB: inside `kt` (asserted), aligned rows.
            unsafe {
                let k = [
                    _mm256_load_ps(kp.add(d * KB + j0)),
                    _mm256_load_ps(kp.add(d * KB + j0 + 8)),
                ];
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*qp.add(r * hd + d));
                    acc[0] = _mm256_fmadd_ps(x, k[0], acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, k[1], acc[1]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: r < QT, j0 + 16 <= KB: inside `s` (asserted).
            unsafe {
                _mm256_storeu_ps(sp.add(r * KB + j0), acc[0]);
                _mm256_storeu_ps(sp.add(r * KB + j0 + 8), acc[1]);
            }
        }
    }
    for r in 0..QT {
        // SAFETY (whole loop body): row r of `s` holds KB values; the vectors at
        // multiples of 8 below KB are inside it.
        unsafe {
            let row = sp.add(r * KB);
            let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
            for j in (0..nk).step_by(8) {
                let keys = _mm256_castsi256_ps(first_lanes(nk - j));
                let x = _mm256_loadu_ps(row.add(j));
                mx = _mm256_blendv_ps(mx, _mm256_max_ps(mx, x), keys);
            }
            let m_new = m[r].max(hmax8(mx));
            let corr = super::math::exp(m[r] - m_new);
            let mv = _mm256_set1_ps(m_new);
            let mut total = _mm256_setzero_ps();
            for j in (0..KB).step_by(8) {
                let p = if j < nk {
                    let keys = _mm256_castsi256_ps(first_lanes(nk - j));
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row.add(j)), mv));
                    _mm256_and_ps(e, keys)
                } else {
                    _mm256_setzero_ps()
                };
                total = _mm256_add_ps(total, p);
                _mm256_storeu_ps(row.add(j), p);
            }
            l[r] = l[r] * corr + hsum8(total);
            m[r] = m_new;
            if corr != 1.0 {
                let cv = _mm256_set1_ps(corr);
                let row = o.as_mut_ptr().add(r * hd);
                for col in (0..hd).step_by(8) {
                    let p = row.add(col);
                    if col + 8 <= hd {
                        _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), cv));
                    } else {
                        let mk = first_lanes(hd - col);
                        let x = _mm256_mul_ps(_mm256_maskload_ps(p, mk), cv);
                        _mm256_maskstore_ps(p, mk, x);
                    }
                }
            }
        }
    }
}

/// `o[r][..hd] += sum_{j < nk} p[r][j] * v[j][..hd]` for `r < QT`: `p` holds `QT` rows
/// of `KB` probabilities, `v` starts at the first key's head column with row stride
/// `kw`, `o` holds `QT` rows of `hd`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
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
        let width = (hd - col).min(8 * MAX_PASS_VECTORS);
        let pass = ValuePass {
            p,
            v,
            kw,
            nk,
            hd,
            col,
            tail: width - 8 * (width.div_ceil(8) - 1),
        };
        // SAFETY: columns col..col + width <= hd of every row, per the asserts.
        unsafe {
            match (width.div_ceil(8), pass.tail == 8) {
                (1, true) => value_pass::<1, false>(pass, o),
                (1, false) => value_pass::<1, true>(pass, o),
                (2, true) => value_pass::<2, false>(pass, o),
                (2, false) => value_pass::<2, true>(pass, o),
                (_, true) => value_pass::<3, false>(pass, o),
                (_, false) => value_pass::<3, true>(pass, o),
            }
        }
        col += width;
    }
}

/// One pass of [`value_tile`]: its arguments and the pass's columns.
#[derive(Clone, Copy)]
struct ValuePass<'a> {
    p: &'a [f32],
    v: &'a [f32],
    kw: usize,
    nk: usize,
    hd: usize,
    /// The pass's first column.
    col: usize,
    /// Columns in its last vector (1..=8).
    tail: usize,
}

/// Columns `col..col + 8 (NV - 1) + tail` in `QT x NV` accumulators; with `PARTIAL`
/// the last vector's loads and stores are masked to `tail` lanes (masked loads and
/// stores touch no memory outside the mask).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn value_pass<const NV: usize, const PARTIAL: bool>(a: ValuePass, o: &mut [f32]) {
    let tail = first_lanes(a.tail);
    let masked = |c: usize| PARTIAL && c + 1 == NV;
    let load = |x: *const f32, c: usize| {
        // SAFETY: the caller's bounds; a partial vector is masked.
        unsafe {
            if masked(c) {
                _mm256_maskload_ps(x, tail)
            } else {
                _mm256_loadu_ps(x)
            }
        }
    };
    let op = o.as_mut_ptr();
    // SAFETY (whole body): the caller's asserts bound rows r < QT of `o` and `p`, keys
    // j < nk of `v`, and the columns below hd.
    unsafe {
        let mut acc: [[__m256; NV]; QT] = std::array::from_fn(|r| {
            std::array::from_fn(|c| load(op.add(r * a.hd + a.col + 8 * c), c))
        });
        for j in 0..a.nk {
            let vp = a.v.as_ptr().add(j * a.kw + a.col);
            let vr: [__m256; NV] = std::array::from_fn(|c| load(vp.add(8 * c), c));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.p.as_ptr().add(r * KB + j));
                for (acc, &vc) in acc.iter_mut().zip(&vr) {
                    *acc = _mm256_fmadd_ps(x, vc, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (c, &x) in acc.iter().enumerate() {
                let dst = op.add(r * a.hd + a.col + 8 * c);
                if masked(c) {
                    _mm256_maskstore_ps(dst, tail, x);
                } else {
                    _mm256_storeu_ps(dst, x);
                }
            }
        }
    }
}
