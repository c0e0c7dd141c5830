//! AArch64 NEON + dot-product microkernels for Q4_0 / Q4_1 weights (`Isa::NeonDot`).
//!
//! A 16-row tile is four 128-bit quarters: quarter `c` of a 64-byte load holds 4 bytes
//! of rows `4c..4c+4`, one 32-bit lane per row, so `sdot`/`udot` by element
//! (`neon_dot.rs`) sums 4 products of one row per lane, as `vpdpbusd` does on the
//! AVX-512 kernels' zmm. `w & 0x0f` and `w >> 4` of load `L` are values `4L..4L+4` and
//! `16+4L..` of each row (GGUF's nibble order), matched by dword `L` of the row's first
//! and second 16 activation bytes. Nibbles are 0..15, so the same bytes serve as the
//! signed operand of `sdot` and the unsigned operand of `udot`.
//!
//! AArch64 has 32 vector registers: a call covers `NC` quarters for `MR` rows at a
//! time (1 x 4, 2 x 2, 4 x 1 quarters), in as many passes as the tile needs; a pass
//! re-reads its activations, a few bytes per block, and its weight bytes come from the
//! lines the first pass brought in.
//!
//! i32 bounds per block as on x86 (`avx512_q4.rs`): I8 |sum q a| <= 60_960 plus the
//! Q4_0 bias; I16 as byte planes: |256 sum(q hi)| <= 256 * 32 * 15 * 128 = 15.7e6, sum(q
//! lo) <= 122_400. Each block's sum is exact in f32 and scaled there.

use super::neon_dot::{f16x4, for_lanes, sdot_lane, udot_lane};
use super::{Job, TileOut, GROUP};
use std::arch::aarch64::*;

/// `d` and (Q4_1) `m` of block `b` for rows `4q..4q+4`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn scales<const HAS_MIN: bool>(job: &Job, b: usize, q: usize) -> (float32x4_t, float32x4_t) {
    // SAFETY: Q4_0 tiles hold kb * 32 scale bytes, Q4_1 kb * 64 ([d x 16, m x 16]).
    unsafe {
        if HAS_MIN {
            let p = job.scales.add(b * 64 + q * 8);
            (f16x4(p), f16x4(p.add(32)))
        } else {
            (f16x4(job.scales.add(b * 32 + q * 8)), vdupq_n_f32(0.0))
        }
    }
}

/// Quarter `q` of load `l` of block `b` as (low nibbles, high nibbles).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn nibbles(job: &Job, b: usize, l: usize, q: usize) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: the tile holds kb * 256 value bytes; l < 4, q < 4.
    let raw = unsafe { vld1q_u8(job.vals.add(b * 256 + l * 64 + q * 16)) };
    (vandq_u8(raw, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(raw))
}

/// Stores `acc[r][c]` (quarter `q0 + c`) to the output rows.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn store<const MR: usize, const NC: usize>(
    acc: &[[float32x4_t; NC]; MR],
    out: &mut TileOut,
    q0: usize,
) {
    for r in 0..MR {
        for c in 0..NC {
            // SAFETY: (q0 + c) * 4 + 4 <= 16 lanes.
            unsafe { vst1q_f32(out[r].as_mut_ptr().add((q0 + c) * 4), acc[r][c]) };
        }
    }
}

/// The two 16-byte halves of the first 32 bytes of rows `0..MR` of an activation block
/// (`row_bytes` apart: 32 for I8, 64 for I16's byte planes).
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn halves<const MR: usize>(
    a: *const i8,
    row_bytes: usize,
) -> [[int8x16_t; 2]; MR] {
    // SAFETY: callers pass a block with MR rows of row_bytes >= 32.
    std::array::from_fn(|r| unsafe {
        [
            vld1q_s8(a.add(r * row_bytes)),
            vld1q_s8(a.add(r * row_bytes + 16)),
        ]
    })
}

/// The per-block I8 kernels' step: `acc += (lo + hi + bias) * d * s_a` for block `b`
/// of each row, with `d` the weights' block scales of each quarter.
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn add_block_i8<const MR: usize, const NC: usize>(
    acc: &mut [[float32x4_t; NC]; MR],
    lo: &[[int32x4_t; NC]; MR],
    hi: &[[int32x4_t; NC]; MR],
    d: [float32x4_t; NC],
    job: &Job,
    b: usize,
) {
    let side = b * GROUP;
    for r in 0..MR {
        // SAFETY: block b's side data of rows r0..r0+MR exists (the Job contract).
        let (bias, sa) = unsafe { (*job.blk_bias.add(side + r), *job.blk_scale.add(side + r)) };
        for c in 0..NC {
            let dot = vaddq_s32(vaddq_s32(lo[r][c], hi[r][c]), vdupq_n_s32(bias));
            acc[r][c] = vfmaq_f32(acc[r][c], vcvtq_f32_s32(dot), vmulq_n_f32(d[c], sa));
        }
    }
}

/// The per-block I16 (byte-plane) kernels' step: `acc += (256 hi + lo + bias) * d` for
/// block `b` of each row (the activation row's scale comes once, at the end).
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn add_block_i16<const MR: usize, const NC: usize>(
    acc: &mut [[float32x4_t; NC]; MR],
    hi: &[[int32x4_t; NC]; MR],
    lo: &[[int32x4_t; NC]; MR],
    d: [float32x4_t; NC],
    job: &Job,
    b: usize,
) {
    for r in 0..MR {
        // SAFETY: block b's side data of rows r0..r0+MR exists (the Job contract).
        let bias = vdupq_n_s32(unsafe { *job.blk_bias.add(b * GROUP + r) });
        for c in 0..NC {
            let dot = vaddq_s32(vshlq_n_s32::<8>(hi[r][c]), vaddq_s32(lo[r][c], bias));
            acc[r][c] = vfmaq_f32(acc[r][c], vcvtq_f32_s32(dot), d[c]);
        }
    }
}

/// Q4_1's offset term: `acc += m * blk_sum` for block `b` of each row.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn add_block_min<const MR: usize, const NC: usize>(
    acc: &mut [[float32x4_t; NC]; MR],
    m: [float32x4_t; NC],
    job: &Job,
    b: usize,
) {
    for r in 0..MR {
        // SAFETY: block b's side data of rows r0..r0+MR exists (the Job contract).
        let sum = unsafe { *job.blk_sum.add(b * GROUP + r) };
        for c in 0..NC {
            acc[r][c] = vfmaq_n_f32(acc[r][c], m[c], sum);
        }
    }
}

/// Runs `$part::<.., MR, NC>` over the tile's four quarters, `NC = 4 / MR` at a time.
macro_rules! quarters {
    ($part:ident $(:: <$($g:ident),*>)?, $job:expr, $out:expr) => {
        match MR {
            1 => $part::<$($($g,)*)? MR, 4>($job, $out, 0),
            2 => {
                $part::<$($($g,)*)? MR, 2>($job, $out, 0);
                $part::<$($($g,)*)? MR, 2>($job, $out, 2);
            }
            _ => {
                for q in 0..4 {
                    $part::<$($($g,)*)? MR, 1>($job, $out, q);
                }
            }
        }
    };
}
pub(super) use quarters;

/// Q4 x I8: `sdot` of nibbles and i8 activations, two chains (low and high nibbles)
/// per row and quarter, scaled per block.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn q4_i8<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    // SAFETY: the Job contract, as every part's.
    unsafe { quarters!(q4_i8_part::<HAS_MIN>, job, out) }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn q4_i8_part<const HAS_MIN: bool, const MR: usize, const NC: usize>(
    job: &Job,
    out: &mut TileOut,
    q0: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); NC]; MR];
    for b in 0..job.kb {
        // SAFETY (whole body): offsets stay inside the tile (kb blocks) and the prepared
        // activation arrays (rows r0..r0+MR of the group), per the Job contract.
        unsafe {
            let a = halves::<MR>(job.q8.add(b * GROUP * 32), 32);
            let mut lo = [[vdupq_n_s32(0); NC]; MR];
            let mut hi = [[vdupq_n_s32(0); NC]; MR];
            for_lanes!(L, {
                for c in 0..NC {
                    let (wl, wh) = nibbles(job, b, L as usize, q0 + c);
                    let (wl, wh) = (vreinterpretq_s8_u8(wl), vreinterpretq_s8_u8(wh));
                    for r in 0..MR {
                        lo[r][c] = sdot_lane::<L>(lo[r][c], wl, a[r][0]);
                        hi[r][c] = sdot_lane::<L>(hi[r][c], wh, a[r][1]);
                    }
                }
            });
            let dm: [_; NC] = std::array::from_fn(|c| scales::<HAS_MIN>(job, b, q0 + c));
            add_block_i8(&mut acc, &lo, &hi, dm.map(|(d, _)| d), job, b);
            if HAS_MIN {
                add_block_min(&mut acc, dm.map(|(_, m)| m), job, b);
            }
        }
    }
    // SAFETY: q0 + NC <= 4.
    unsafe { store(&acc, out, q0) }
}

/// Q4 x I16 as byte planes (`ActPlan::I16Bytes`): `q = 256 hi + lo`, so a block's sum
/// is `256 sdot(w, hi) + udot(w, lo)`, one scale per row applied at the end.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn q4_i16b<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    // SAFETY: the Job contract, as every part's.
    unsafe { quarters!(q4_i16b_part::<HAS_MIN>, job, out) }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn q4_i16b_part<const HAS_MIN: bool, const MR: usize, const NC: usize>(
    job: &Job,
    out: &mut TileOut,
    q0: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); NC]; MR];
    for b in 0..job.kb {
        // SAFETY: as in q4_i8_part; a block row is 64 bytes here (high plane, low plane).
        unsafe {
            let a = job.q8.add(b * GROUP * 64);
            let hi_a = halves::<MR>(a, 64);
            let lo_a = halves::<MR>(a.add(32), 64).map(|h| h.map(|v| vreinterpretq_u8_s8(v)));
            let mut hi = [[vdupq_n_s32(0); NC]; MR];
            let mut lo = [[vdupq_n_u32(0); NC]; MR];
            for_lanes!(L, {
                for c in 0..NC {
                    let (wl, wh) = nibbles(job, b, L as usize, q0 + c);
                    let (sl, sh) = (vreinterpretq_s8_u8(wl), vreinterpretq_s8_u8(wh));
                    for r in 0..MR {
                        hi[r][c] = sdot_lane::<L>(hi[r][c], sl, hi_a[r][0]);
                        hi[r][c] = sdot_lane::<L>(hi[r][c], sh, hi_a[r][1]);
                        lo[r][c] = udot_lane::<L>(lo[r][c], wl, lo_a[r][0]);
                        lo[r][c] = udot_lane::<L>(lo[r][c], wh, lo_a[r][1]);
                    }
                }
            });
            let lo = lo.map(|row| row.map(|v| vreinterpretq_s32_u32(v)));
            let dm: [_; NC] = std::array::from_fn(|c| scales::<HAS_MIN>(job, b, q0 + c));
            add_block_i16(&mut acc, &hi, &lo, dm.map(|(d, _)| d), job, b);
            if HAS_MIN {
                add_block_min(&mut acc, dm.map(|(_, m)| m), job, b);
            }
        }
    }
    for r in 0..MR {
        // SAFETY: row r0 + r exists.
        let s = unsafe { *job.row_scale.add(r) };
        for c in 0..NC {
            acc[r][c] = vmulq_n_f32(acc[r][c], s);
        }
    }
    // SAFETY: q0 + NC <= 4.
    unsafe { store(&acc, out, q0) }
}
