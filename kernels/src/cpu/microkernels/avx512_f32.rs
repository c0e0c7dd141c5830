//! AVX-512 microkernel for f32 weights: per k one 64-byte load (16 rows) and one FMA
//! per activation row (the activation broadcast from memory).

use super::{prefetch_block, Job, TileOut, GROUP};
use std::arch::x86_64::*;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn f32w_f32<const MR: usize>(job: &Job, out: &mut TileOut) {
    let mut acc = [[_mm512_setzero_ps(); MR]; 4];
    // One or two rows: four independent chains (k mod 4) so the 4-cycle FMA latency
    // is hidden; with more rows the rows are the independent chains.
    let k4 = if MR <= 2 { job.kb / 4 * 4 } else { 0 };
    let mut kk = 0;
    // SAFETY (both loops): the tile holds k * 64 bytes; rows r0..r0+MR of the group exist.
    unsafe {
        while kk < k4 {
            for (c, acc) in acc.iter_mut().enumerate() {
                prefetch_block(job, kk + c);
                let w = _mm512_load_ps(job.vals.add((kk + c) * 64) as *const f32);
                let a = job.f.add((kk + c) * GROUP);
                for r in 0..MR {
                    acc[r] = _mm512_fmadd_ps(w, _mm512_set1_ps(*a.add(r)), acc[r]);
                }
            }
            kk += 4;
        }
        while kk < job.kb {
            if MR <= 2 {
                prefetch_block(job, kk);
            }
            let w = _mm512_load_ps(job.vals.add(kk * 64) as *const f32);
            let a = job.f.add(kk * GROUP);
            for r in 0..MR {
                acc[0][r] = _mm512_fmadd_ps(w, _mm512_set1_ps(*a.add(r)), acc[0][r]);
            }
            kk += 1;
        }
    }
    for r in 0..MR {
        let v = _mm512_add_ps(
            _mm512_add_ps(acc[0][r], acc[1][r]),
            _mm512_add_ps(acc[2][r], acc[3][r]),
        );
        // SAFETY: out rows hold 16 f32.
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), v) };
    }
}
