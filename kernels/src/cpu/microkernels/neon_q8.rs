//! AArch64 NEON + dot-product microkernels for Q8_0 / Q8Channel weights
//! (`Isa::NeonDot`). The tile layout and the quarter passes are `neon_q4.rs`'s; a
//! block is 8 loads, load `L` being values `4L..4L+4` of each row as i8, matched by
//! dword `L` (`L < 4`) or `L - 4` of the row's two 16-byte activation halves.
//!
//! Weights and I8 activations are both signed, `sdot`'s operands, so nothing is
//! flipped. I16 activations come as byte planes (`ActPlan::I16Bytes`), whose low
//! plane is unsigned: without Armv8.6's mixed-sign `usdot` it goes through `sdot` as
//! `lo - 128` (one `eor`), and `128 sum(w)` is added back per block from a third dot
//! product against ones.
//!
//! i32 bounds: per block |sum w a| <= 32 * 127 * 128 = 520_192, so the I16 block sum
//! `256 hi + lo` stays below 1.4e8; whole rows of I8 (`q8c_i8row`) below 2^31 up to
//! k = 132k.

use super::neon_dot::{f16x4, for_lanes, sdot_lane};
use super::neon_q4::{add_block_i16, add_block_i8, halves, quarters, store};
use super::{Job, TileOut, GROUP};
use std::arch::aarch64::*;

/// Quarter `q` of load `l` of block `b`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn weights(job: &Job, b: usize, l: usize, q: usize) -> int8x16_t {
    // SAFETY: the tile holds kb * 512 value bytes; l < 8, q < 4.
    unsafe { vld1q_s8(job.vals.add(b * 512 + l * 64 + q * 16) as *const i8) }
}

/// Block `b`'s f16 scale for rows `4q..4q+4` (Q8_0), or 1 (Q8Channel: per row).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_scale<const PER_ROW: bool>(job: &Job, b: usize, q: usize) -> float32x4_t {
    if PER_ROW {
        vdupq_n_f32(1.0)
    } else {
        // SAFETY: Q8_0 tiles hold kb * 32 scale bytes.
        unsafe { f16x4(job.scales.add(b * 32 + q * 8)) }
    }
}

/// The f32 row scales of rows `4q..4q+4` (Q8Channel), or 1 (Q8_0).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn row_scales<const PER_ROW: bool>(job: &Job, q: usize) -> float32x4_t {
    if PER_ROW {
        // SAFETY: Q8Channel tiles start their scales with 16 f32 row scales.
        unsafe { vld1q_f32(job.scales.add(q * 16) as *const f32) }
    } else {
        vdupq_n_f32(1.0)
    }
}

/// Block `b`'s I8 dot products of rows `0..MR` and quarters `q0..q0 + NC`, added to
/// `lo` (loads 0..4) and `hi` (loads 4..8): two chains per row and quarter.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn add_i8_dots<const MR: usize, const NC: usize>(
    job: &Job,
    b: usize,
    q0: usize,
    lo: &mut [[int32x4_t; NC]; MR],
    hi: &mut [[int32x4_t; NC]; MR],
) {
    // SAFETY: offsets stay inside the tile (kb blocks) and the prepared activation
    // arrays (rows r0..r0+MR of the group), per the Job contract.
    unsafe {
        let a = halves::<MR>(job.q8.add(b * GROUP * 32), 32);
        for_lanes!(L, {
            for c in 0..NC {
                let w0 = weights(job, b, L as usize, q0 + c);
                let w1 = weights(job, b, L as usize + 4, q0 + c);
                for r in 0..MR {
                    lo[r][c] = sdot_lane::<L>(lo[r][c], w0, a[r][0]);
                    hi[r][c] = sdot_lane::<L>(hi[r][c], w1, a[r][1]);
                }
            }
        });
    }
}

/// Q8 x I8, scaled per block: `sdot`, two chains (loads 0..4 and 4..8) per row and
/// quarter.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn q8_i8<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    // SAFETY: the Job contract, as every part's.
    unsafe { quarters!(q8_i8_part::<PER_ROW>, job, out) }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn q8_i8_part<const PER_ROW: bool, const MR: usize, const NC: usize>(
    job: &Job,
    out: &mut TileOut,
    q0: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); NC]; MR];
    for b in 0..job.kb {
        let mut lo = [[vdupq_n_s32(0); NC]; MR];
        let mut hi = [[vdupq_n_s32(0); NC]; MR];
        // SAFETY: block b < kb of this quarter range, per the Job contract.
        unsafe {
            add_i8_dots(job, b, q0, &mut lo, &mut hi);
            let d = std::array::from_fn(|c| block_scale::<PER_ROW>(job, b, q0 + c));
            add_block_i8(&mut acc, &lo, &hi, d, job, b);
        }
    }
    for c in 0..NC {
        // SAFETY: q0 + c < 4.
        let rs = unsafe { row_scales::<PER_ROW>(job, q0 + c) };
        for r in 0..MR {
            acc[r][c] = vmulq_f32(acc[r][c], rs);
        }
    }
    // SAFETY: q0 + NC <= 4.
    unsafe { store(&acc, out, q0) }
}

/// Q8Channel x I8 with one scale per activation row (`ActPlan::I8Row`, offset 0, so
/// no block bias): nothing varies per block, so the sums stay in i32 over the whole
/// row and are scaled once.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn q8c_i8row<const MR: usize>(job: &Job, out: &mut TileOut) {
    // SAFETY: the Job contract, as every part's.
    unsafe { quarters!(q8c_i8row_part, job, out) }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn q8c_i8row_part<const MR: usize, const NC: usize>(
    job: &Job,
    out: &mut TileOut,
    q0: usize,
) {
    let mut lo = [[vdupq_n_s32(0); NC]; MR];
    let mut hi = [[vdupq_n_s32(0); NC]; MR];
    for b in 0..job.kb {
        // SAFETY: as in q8_i8_part.
        unsafe { add_i8_dots(job, b, q0, &mut lo, &mut hi) };
    }
    let mut acc = [[vdupq_n_f32(0.0); NC]; MR];
    for c in 0..NC {
        // SAFETY: q0 + c < 4.
        let rs = unsafe { row_scales::<true>(job, q0 + c) };
        for r in 0..MR {
            // SAFETY: row r0 + r exists.
            let s = unsafe { *job.row_scale.add(r) };
            let dot = vcvtq_f32_s32(vaddq_s32(lo[r][c], hi[r][c]));
            acc[r][c] = vmulq_f32(vmulq_n_f32(dot, s), rs);
        }
    }
    // SAFETY: q0 + NC <= 4.
    unsafe { store(&acc, out, q0) }
}

/// Q8 x I16 as byte planes (`ActPlan::I16Bytes`, no offsets): per block
/// `256 sdot(w, hi) + sdot(w, lo - 128) + 128 sum(w)`, scaled per block (Q8_0's `d`),
/// then by the activation row's scale (and Q8Channel's row scale).
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn q8_i16b<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    // SAFETY: the Job contract, as every part's.
    unsafe { quarters!(q8_i16b_part::<PER_ROW>, job, out) }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn q8_i16b_part<const PER_ROW: bool, const MR: usize, const NC: usize>(
    job: &Job,
    out: &mut TileOut,
    q0: usize,
) {
    let ones = vdupq_n_s8(1);
    let flip = vdupq_n_s8(i8::MIN);
    let mut acc = [[vdupq_n_f32(0.0); NC]; MR];
    for b in 0..job.kb {
        // SAFETY: as in q8_i8_part; a block row is 64 bytes here (high plane, low plane).
        unsafe {
            let a = job.q8.add(b * GROUP * 64);
            let hi_a = halves::<MR>(a, 64);
            let lo_a = halves::<MR>(a.add(32), 64).map(|h| h.map(|v| veorq_s8(v, flip)));
            let mut hi = [[vdupq_n_s32(0); NC]; MR];
            let mut lo = [[vdupq_n_s32(0); NC]; MR];
            let mut wsum = [vdupq_n_s32(0); NC];
            for_lanes!(L, {
                for c in 0..NC {
                    let w0 = weights(job, b, L as usize, q0 + c);
                    let w1 = weights(job, b, L as usize + 4, q0 + c);
                    wsum[c] = sdot_lane::<L>(wsum[c], w0, ones);
                    wsum[c] = sdot_lane::<L>(wsum[c], w1, ones);
                    for r in 0..MR {
                        hi[r][c] = sdot_lane::<L>(hi[r][c], w0, hi_a[r][0]);
                        hi[r][c] = sdot_lane::<L>(hi[r][c], w1, hi_a[r][1]);
                        lo[r][c] = sdot_lane::<L>(lo[r][c], w0, lo_a[r][0]);
                        lo[r][c] = sdot_lane::<L>(lo[r][c], w1, lo_a[r][1]);
                    }
                }
            });
            let lo = std::array::from_fn(|r| {
                std::array::from_fn(|c| vaddq_s32(lo[r][c], vshlq_n_s32::<7>(wsum[c])))
            });
            let d = std::array::from_fn(|c| block_scale::<PER_ROW>(job, b, q0 + c));
            add_block_i16(&mut acc, &hi, &lo, d, job, b);
        }
    }
    for c in 0..NC {
        // SAFETY: q0 + c < 4.
        let rs = unsafe { row_scales::<PER_ROW>(job, q0 + c) };
        for r in 0..MR {
            // SAFETY: row r0 + r exists.
            let s = unsafe { *job.row_scale.add(r) };
            acc[r][c] = vmulq_f32(vmulq_n_f32(acc[r][c], s), rs);
        }
    }
    // SAFETY: q0 + NC <= 4.
    unsafe { store(&acc, out, q0) }
}
