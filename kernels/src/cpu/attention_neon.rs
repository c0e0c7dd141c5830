//! NEON register tiles of the f32 attention's whole key blocks: `attention_avx2.rs`'s
//! two tiles with the same signatures, on 4 lanes and AArch64's 32 vector registers
//! (`attention_f32.rs` walks the blocks around them and picks the tiles by path):
//!
//! - [`score_softmax_tile`]: the `QT x KB` scores in 16-key steps of 16 accumulators;
//!   `fmla` by element takes a query value out of a register holding 4 dims, so one
//!   load of 4 dims of a query row serves four steps. Then per row the online softmax
//!   over the stored scores: block max, `exp`, the running (max, sum) and the rescale
//!   of the running outputs;
//! - [`value_tile`]: `P @ V` for `QT` rows in passes of up to 16 columns (16
//!   accumulators), 4 weights of a row a register, each V row loaded once per key and
//!   reused by the `QT` rows.
//!
//! The portable tiles keep a `QT x KB` score tile, 64 registers on a machine with 32,
//! and spill. `exp` is `math::exp`'s polynomial, fused as in the x86 tiles. Checked
//! under qemu (the kernel tests); not yet timed on ARM hardware.

use super::attention_f32::{KB, QT};
use super::microkernels::neon_dot::for_lanes;
use std::arch::aarch64::*;

/// Keys per score step (four vectors).
const KEY_STEP: usize = 16;
/// Widest value pass in vectors (4 x 4 = 16 columns).
const MAX_PASS_VECTORS: usize = 4;

/// `e^x` per lane: `math::exp`'s range reduction and polynomial with fused
/// multiply-adds, `2^n` from its exponent bits (the x86 tiles' `exp_ps` / `exp8`).
#[inline]
#[target_feature(enable = "neon")]
fn exp4(x: float32x4_t) -> float32x4_t {
    use super::math::{EXP_LN2_HI as LN2_HI, EXP_LN2_LO as LN2_LO, EXP_POLY};
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3)), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let mut p = vdupq_n_f32(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let e = vaddq_f32(vfmaq_f32(r, vmulq_f32(p, r), r), vdupq_n_f32(1.0));
    // n is in [-126, 127] after the clamp: 2^n is a normal f32.
    let two_n = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(
        vcvtq_s32_f32(n),
        vdupq_n_s32(127),
    )));
    vmulq_f32(e, two_n)
}

/// The first `n` of 4 lanes set (all for `n >= 4`, none for 0).
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn first_lanes(n: usize) -> uint32x4_t {
    const IOTA: [u32; 4] = [0, 1, 2, 3];
    // SAFETY: IOTA is 4 readable u32.
    let iota = unsafe { vld1q_u32(IOTA.as_ptr()) };
    vcltq_u32(iota, vdupq_n_u32(n.min(4) as u32))
}

/// One `QT`-row tile of one key block: scores `q[r] . kt[..][j]` for the block's `nk`
/// keys, then the online softmax per row: the new running max `m[r]`, `s[r][j] =
/// exp(score - m[r])` (0 for keys past `nk`), `l[r] = l[r] * corr + sum_j s[r][j]`, and
/// the running outputs `o[r][..hd] *= corr`, where `corr = exp(old max - new max)`.
/// `q` holds `QT` rows of `hd` values, `kt` is `hd x KB` (keys past `nk` may hold
/// anything), `s` holds `QT` rows of `KB`, `m`, `l` `QT` values and `o` `QT` rows of
/// `hd`.
///
/// # Safety
/// AArch64 (NEON is baseline); the slices as above.
#[target_feature(enable = "neon")]
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
    let (qp, kp, sp) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
    for j0 in (0..nk).step_by(KEY_STEP) {
        let mut acc = [[vdupq_n_f32(0.0); 4]; QT];
        // SAFETY (whole block): dims d < hd and keys j0 + 16 <= KB inside `kt`, query
        // rows of hd values (asserted).
        unsafe {
            let kv = |d: usize| -> [float32x4_t; 4] {
                std::array::from_fn(|v| vld1q_f32(kp.add(d * KB + j0 + 4 * v)))
            };
            let mut d = 0;
            while d + 4 <= hd {
                let qv: [float32x4_t; QT] = std::array::from_fn(|r| vld1q_f32(qp.add(r * hd + d)));
                for_lanes!(L, {
                    let k = kv(d + L as usize);
                    for (acc, &qv) in acc.iter_mut().zip(&qv) {
                        for (acc, &k) in acc.iter_mut().zip(&k) {
                            *acc = vfmaq_laneq_f32::<L>(*acc, k, qv);
                        }
                    }
                });
                d += 4;
            }
            while d < hd {
                let k = kv(d);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = vdupq_n_f32(*qp.add(r * hd + d));
                    for (acc, &k) in acc.iter_mut().zip(&k) {
                        *acc = vfmaq_f32(*acc, k, x);
                    }
                }
                d += 1;
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, &acc) in acc.iter().enumerate() {
                    vst1q_f32(sp.add(r * KB + j0 + 4 * v), acc);
                }
            }
        }
    }
    for r in 0..QT {
        // SAFETY (whole loop body): row r of `s` holds KB values; the vectors at
        // multiples of 4 below KB are inside it, and columns below hd inside `o`.
        unsafe {
            let row = sp.add(r * KB);
            let mut mx = vdupq_n_f32(f32::NEG_INFINITY);
            for j in (0..nk).step_by(4) {
                let x = vld1q_f32(row.add(j));
                mx = vbslq_f32(first_lanes(nk - j), vmaxq_f32(mx, x), mx);
            }
            let m_new = m[r].max(vmaxvq_f32(mx));
            let corr = super::math::exp(m[r] - m_new);
            let mv = vdupq_n_f32(m_new);
            let mut total = vdupq_n_f32(0.0);
            for j in (0..KB).step_by(4) {
                let p = if j < nk {
                    let e = exp4(vsubq_f32(vld1q_f32(row.add(j)), mv));
                    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), first_lanes(nk - j)))
                } else {
                    vdupq_n_f32(0.0)
                };
                total = vaddq_f32(total, p);
                vst1q_f32(row.add(j), p);
            }
            l[r] = l[r] * corr + vaddvq_f32(total);
            m[r] = m_new;
            if corr != 1.0 {
                let orow = &mut o[r * hd..][..hd];
                let mut c = 0;
                while c + 4 <= hd {
                    let p = orow.as_mut_ptr().add(c);
                    vst1q_f32(p, vmulq_n_f32(vld1q_f32(p), corr));
                    c += 4;
                }
                orow[c..].iter_mut().for_each(|x| *x *= corr);
            }
        }
    }
}

/// `o[r][..hd] += sum_{j < nk} p[r][j] * v[j][..hd]` for `r < QT`: `p` holds `QT` rows
/// of `KB` probabilities, `v` starts at the first key's head column with row stride
/// `kw`, `o` holds `QT` rows of `hd`.
///
/// # Safety
/// AArch64 (NEON is baseline); the slices as above.
#[target_feature(enable = "neon")]
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
    while col + 4 <= hd {
        let nv = ((hd - col) / 4).min(MAX_PASS_VECTORS);
        // SAFETY: columns col..col + 4 nv <= hd of every row, per the asserts.
        unsafe {
            match nv {
                4 => value_pass::<4>(p, v, kw, nk, o, hd, col),
                3 => value_pass::<3>(p, v, kw, nk, o, hd, col),
                2 => value_pass::<2>(p, v, kw, nk, o, hd, col),
                _ => value_pass::<1>(p, v, kw, nk, o, hd, col),
            }
        }
        col += 4 * nv;
    }
    // The last hd % 4 columns, in the passes' order.
    for r in 0..QT {
        for c in col..hd {
            let o = &mut o[r * hd + c];
            *o = (0..nk).fold(*o, |a, j| p[r * KB + j].mul_add(v[j * kw + c], a));
        }
    }
}

/// One pass of [`value_tile`] over columns `col..col + 4 NV`, held in `QT x NV`
/// accumulators.
#[inline]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn value_pass<const NV: usize>(
    p: &[f32],
    v: &[f32],
    kw: usize,
    nk: usize,
    o: &mut [f32],
    hd: usize,
    col: usize,
) {
    let op = o.as_mut_ptr();
    // SAFETY (whole body): the caller's asserts bound rows r < QT of `o` and `p`, keys
    // j < nk of `v`, and the columns below hd.
    unsafe {
        let (pp, vp) = (p.as_ptr(), v.as_ptr().add(col));
        let mut acc: [[float32x4_t; NV]; QT] = std::array::from_fn(|r| {
            std::array::from_fn(|c| vld1q_f32(op.add(r * hd + col + 4 * c)))
        });
        let vrow = |j: usize| -> [float32x4_t; NV] {
            std::array::from_fn(|c| vld1q_f32(vp.add(j * kw + 4 * c)))
        };
        let mut j = 0;
        while j + 4 <= nk {
            let w: [float32x4_t; QT] = std::array::from_fn(|r| vld1q_f32(pp.add(r * KB + j)));
            for_lanes!(L, {
                let vr = vrow(j + L as usize);
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    for (acc, &vc) in acc.iter_mut().zip(&vr) {
                        *acc = vfmaq_laneq_f32::<L>(*acc, vc, w);
                    }
                }
            });
            j += 4;
        }
        while j < nk {
            let vr = vrow(j);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = vdupq_n_f32(*pp.add(r * KB + j));
                for (acc, &vc) in acc.iter_mut().zip(&vr) {
                    *acc = vfmaq_f32(*acc, vc, x);
                }
            }
            j += 1;
        }
        for (r, acc) in acc.iter().enumerate() {
            for (c, &a) in acc.iter().enumerate() {
                vst1q_f32(op.add(r * hd + col + 4 * c), a);
            }
        }
    }
}
