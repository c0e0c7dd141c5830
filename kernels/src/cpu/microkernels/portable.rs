//! Portable microkernels: plain Rust over the packed layout, correct on any CPU. They
//! read activations in natural order (the portable plans use no i16 permutation) and
//! use the same integer arithmetic as the SIMD kernels, so they double as a readable
//! statement of what those compute.

use super::{Job, TileOut, GROUP, TILE_ROWS};
use crate::cpu::packed::{q4_min_offset, q4_scale_offset, Format};
use half::f16;

/// Values of row `lane`, block `b` of a Q4 tile, in natural order (0..16).
#[inline(always)]
unsafe fn q4_block(vals: *const u8, b: usize, lane: usize) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        // SAFETY: the tile holds kb * 256 value bytes; b < kb, lane < 16.
        let byte = unsafe { *vals.add(b * 256 + (j / 4) * 64 + lane * 4 + j % 4) };
        q[j] = byte & 0x0f;
        q[j + 16] = byte >> 4;
    }
    q
}

/// Values of row `lane`, block `b` of a Q8 tile.
#[inline(always)]
unsafe fn q8_block(vals: *const u8, b: usize, lane: usize) -> [i8; 32] {
    let mut q = [0i8; 32];
    for (j, v) in q.iter_mut().enumerate() {
        // SAFETY: the tile holds kb * 512 value bytes; b < kb, lane < 16.
        *v = unsafe { *vals.add(b * 512 + (j / 4) * 64 + lane * 4 + j % 4) } as i8;
    }
    q
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: callers pass an offset inside the tile's scales.
    unsafe { f16::from_le_bytes([*p, *p.add(1)]).to_f32() }
}

#[inline(always)]
unsafe fn f32_at(p: *const u8) -> f32 {
    // SAFETY: callers pass an offset inside the tile's scales.
    unsafe { f32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]) }
}

fn q4_format(has_min: bool) -> Format {
    if has_min {
        Format::Q4_1
    } else {
        Format::Q4_0
    }
}

/// Q4 weights x I8 activations: per block `sum(q a) + bias` in i32 (bias = -8 sum(a)
/// for Q4_0), times `d * s_a`, plus `m * s_a * sum(a)` for Q4_1.
pub(crate) unsafe fn q4_i8<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let fmt = q4_format(HAS_MIN);
    for lane in 0..TILE_ROWS {
        let mut acc = [0f32; MR];
        for b in 0..job.kb {
            // SAFETY (whole body): offsets stay inside the tile and the prepared
            // activation arrays per the Job contract.
            unsafe {
                let q = q4_block(job.vals, b, lane);
                let d = f16_at(job.scales.add(q4_scale_offset(fmt, b, lane)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = job.q8.add((b * GROUP + r) * 32);
                    let mut dot = *job.blk_bias.add(b * GROUP + r);
                    for (j, &qj) in q.iter().enumerate() {
                        dot += qj as i32 * *a.add(j) as i32;
                    }
                    *acc += dot as f32 * (d * *job.blk_scale.add(b * GROUP + r));
                    if HAS_MIN {
                        let m = f16_at(job.scales.add(q4_min_offset(b, lane)));
                        *acc += m * *job.blk_sum.add(b * GROUP + r);
                    }
                }
            }
        }
        for r in 0..MR {
            out[r][lane] = acc[r];
        }
    }
}

/// Q4 weights x I16 activations (one scale per row, applied at the end).
pub(crate) unsafe fn q4_i16<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let fmt = q4_format(HAS_MIN);
    for lane in 0..TILE_ROWS {
        let mut acc = [0f32; MR];
        for b in 0..job.kb {
            // SAFETY: as in q4_i8.
            unsafe {
                let q = q4_block(job.vals, b, lane);
                let d = f16_at(job.scales.add(q4_scale_offset(fmt, b, lane)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = job.q16.add((b * GROUP + r) * 32);
                    let mut dot = *job.blk_bias.add(b * GROUP + r);
                    for (j, &qj) in q.iter().enumerate() {
                        dot += qj as i32 * *a.add(j) as i32;
                    }
                    *acc += dot as f32 * d;
                    if HAS_MIN {
                        let m = f16_at(job.scales.add(q4_min_offset(b, lane)));
                        *acc += m * *job.blk_sum.add(b * GROUP + r);
                    }
                }
            }
        }
        for r in 0..MR {
            // SAFETY: row r0 + r exists.
            out[r][lane] = acc[r] * unsafe { *job.row_scale.add(r) };
        }
    }
}

/// Q4 weights x f32 activations: dequantize exactly as `quant::dequantize`, then FMA.
pub(crate) unsafe fn q4_f32<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let fmt = q4_format(HAS_MIN);
    for lane in 0..TILE_ROWS {
        let mut acc = [0f32; MR];
        for b in 0..job.kb {
            // SAFETY: as in q4_i8.
            unsafe {
                let q = q4_block(job.vals, b, lane);
                let d = f16_at(job.scales.add(q4_scale_offset(fmt, b, lane)));
                let (m, bias) = if HAS_MIN {
                    (f16_at(job.scales.add(q4_min_offset(b, lane))), 0.0)
                } else {
                    (0.0, -8.0)
                };
                for (j, &qj) in q.iter().enumerate() {
                    let w = d * (qj as f32 + bias) + m;
                    let a = job.f.add((b * 32 + j) * GROUP);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        *acc += w * *a.add(r);
                    }
                }
            }
        }
        for r in 0..MR {
            out[r][lane] = acc[r];
        }
    }
}

/// Q8 weights (per-block f16 scale, or one f32 scale per row when `PER_ROW`) x I8.
pub(crate) unsafe fn q8_i8<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    for lane in 0..TILE_ROWS {
        let mut acc = [0f32; MR];
        for b in 0..job.kb {
            // SAFETY: as in q4_i8.
            unsafe {
                let q = q8_block(job.vals, b, lane);
                let d = if PER_ROW {
                    1.0
                } else {
                    f16_at(job.scales.add(b * 32 + lane * 2))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = job.q8.add((b * GROUP + r) * 32);
                    let mut dot = *job.blk_bias.add(b * GROUP + r);
                    for (j, &qj) in q.iter().enumerate() {
                        dot += qj as i32 * *a.add(j) as i32;
                    }
                    *acc += dot as f32 * (d * *job.blk_scale.add(b * GROUP + r));
                }
            }
        }
        // SAFETY: Q8Channel tiles store 16 f32 row scales.
        let rs = if PER_ROW {
            unsafe { f32_at(job.scales.add(lane * 4)) }
        } else {
            1.0
        };
        for r in 0..MR {
            out[r][lane] = acc[r] * rs;
        }
    }
}

/// Q8 weights x I16 activations.
pub(crate) unsafe fn q8_i16<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    for lane in 0..TILE_ROWS {
        let mut acc = [0f32; MR];
        for b in 0..job.kb {
            // SAFETY: as in q4_i8.
            unsafe {
                let q = q8_block(job.vals, b, lane);
                let d = if PER_ROW {
                    1.0
                } else {
                    f16_at(job.scales.add(b * 32 + lane * 2))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = job.q16.add((b * GROUP + r) * 32);
                    let mut dot = *job.blk_bias.add(b * GROUP + r);
                    for (j, &qj) in q.iter().enumerate() {
                        dot += qj as i32 * *a.add(j) as i32;
                    }
                    *acc += dot as f32 * d;
                }
            }
        }
        // SAFETY: as in q8_i8.
        let rs = if PER_ROW {
            unsafe { f32_at(job.scales.add(lane * 4)) }
        } else {
            1.0
        };
        for r in 0..MR {
            // SAFETY: row r0 + r exists.
            out[r][lane] = acc[r] * unsafe { *job.row_scale.add(r) } * rs;
        }
    }
}

/// Q8 weights x f32 activations.
pub(crate) unsafe fn q8_f32<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    for lane in 0..TILE_ROWS {
        let mut acc = [0f32; MR];
        for b in 0..job.kb {
            // SAFETY: as in q4_i8.
            unsafe {
                let q = q8_block(job.vals, b, lane);
                let d = if PER_ROW {
                    1.0
                } else {
                    f16_at(job.scales.add(b * 32 + lane * 2))
                };
                for (j, &qj) in q.iter().enumerate() {
                    let w = d * qj as f32;
                    let a = job.f.add((b * 32 + j) * GROUP);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        *acc += w * *a.add(r);
                    }
                }
            }
        }
        // SAFETY: as in q8_i8.
        let rs = if PER_ROW {
            unsafe { f32_at(job.scales.add(lane * 4)) }
        } else {
            1.0
        };
        for r in 0..MR {
            out[r][lane] = acc[r] * rs;
        }
    }
}

/// f32 weights (`[k][16 lanes]` per tile) x f32 activations.
pub(crate) unsafe fn f32w_f32<const MR: usize>(job: &Job, out: &mut TileOut) {
    let mut acc = [[0f32; TILE_ROWS]; MR];
    for kk in 0..job.kb {
        // SAFETY: the tile holds k * 64 bytes of f32 lanes; row r0 + r exists.
        unsafe {
            let w = job.vals.add(kk * 64) as *const f32;
            let a = job.f.add(kk * GROUP);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = *a.add(r);
                for (lane, acc) in acc.iter_mut().enumerate() {
                    *acc += w.add(lane).read_unaligned() * av;
                }
            }
        }
    }
    out[..MR].copy_from_slice(&acc);
}
