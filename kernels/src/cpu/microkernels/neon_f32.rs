//! AArch64 NEON microkernel for f32 weights: per k four 16-byte loads (rows 0..4 ..
//! 12..16) and one `fmla` per quarter and activation row; up to 4 rows (16
//! accumulators of AArch64's 32 vector registers).

use super::neon_q4::store;
use super::{Job, TileOut, GROUP};
use std::arch::aarch64::*;

#[target_feature(enable = "neon")]
pub(crate) unsafe fn f32w_f32<const MR: usize>(job: &Job, out: &mut TileOut) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
    for kk in 0..job.kb {
        // SAFETY: the tile holds k * 64 bytes; rows r0..r0+MR of the group exist.
        unsafe {
            let p = job.vals.add(kk * 64) as *const f32;
            let w: [float32x4_t; 4] = std::array::from_fn(|q| vld1q_f32(p.add(4 * q)));
            let a = job.f.add(kk * GROUP);
            for r in 0..MR {
                let x = *a.add(r);
                for q in 0..4 {
                    acc[r][q] = vfmaq_n_f32(acc[r][q], w[q], x);
                }
            }
        }
    }
    // SAFETY: four quarters of 16 lanes.
    unsafe { store(&acc, out, 0) }
}
