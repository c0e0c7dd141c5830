//! AVX2 microkernel for f32 weights: per k two 32-byte loads (rows 0..8, 8..16) and one
//! FMA per half and activation row.

use super::{prefetch_block, Job, TileOut, GROUP};
use std::arch::x86_64::*;

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f32w_f32<const MR: usize>(job: &Job, out: &mut TileOut) {
    // acc[chain][half][row]; one or two rows use two chains (k mod 2) to hide latency.
    let mut acc = [[[_mm256_setzero_ps(); MR]; 2]; 2];
    let k2 = if MR <= 2 { job.kb / 2 * 2 } else { 0 };
    let mut kk = 0;
    // SAFETY (both loops): the tile holds k * 64 bytes; rows r0..r0+MR of the group exist.
    unsafe {
        while kk < k2 {
            for (c, acc) in acc.iter_mut().enumerate() {
                prefetch_block(job, kk + c);
                let p = job.vals.add((kk + c) * 64) as *const f32;
                let w = [_mm256_load_ps(p), _mm256_load_ps(p.add(8))];
                let a = job.f.add((kk + c) * GROUP);
                for r in 0..MR {
                    let x = _mm256_set1_ps(*a.add(r));
                    acc[0][r] = _mm256_fmadd_ps(w[0], x, acc[0][r]);
                    acc[1][r] = _mm256_fmadd_ps(w[1], x, acc[1][r]);
                }
            }
            kk += 2;
        }
        while kk < job.kb {
            if MR <= 2 {
                prefetch_block(job, kk);
            }
            let p = job.vals.add(kk * 64) as *const f32;
            let w = [_mm256_load_ps(p), _mm256_load_ps(p.add(8))];
            let a = job.f.add(kk * GROUP);
            for r in 0..MR {
                let x = _mm256_set1_ps(*a.add(r));
                acc[0][0][r] = _mm256_fmadd_ps(w[0], x, acc[0][0][r]);
                acc[0][1][r] = _mm256_fmadd_ps(w[1], x, acc[0][1][r]);
            }
            kk += 1;
        }
    }
    for r in 0..MR {
        for h in 0..2 {
            // SAFETY: out rows hold 16 f32.
            unsafe {
                _mm256_storeu_ps(
                    out[r].as_mut_ptr().add(8 * h),
                    _mm256_add_ps(acc[0][h][r], acc[1][h][r]),
                )
            };
        }
    }
}
