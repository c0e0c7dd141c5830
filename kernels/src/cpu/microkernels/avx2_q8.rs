//! AVX2 microkernels for Q8_0 / Q8Channel weights (two 8-row halves per tile, as in
//! `avx2_q4.rs`).
//!
//! I8 without VNNI uses the sign trick: `vpmaddubsw(|w|, sign(w) * a)` (u8 x i8). A lane
//! is at most 2 * 128 * 127 = 32_512 < 32_767, so it never saturates, but two of them
//! could: each is widened with `vpmaddwd` by ones before accumulating in i32 (per block
//! |sum| <= 32 * 128 * 127 = 520_192). I16: `vpmaddwd` on sign-extended weights.

use super::{prefetch_block, Job, TileOut, GROUP};
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn bcast<T>(p: *const T, i: usize) -> __m256i {
    // SAFETY: callers pass a block pointer with at least i + 1 dwords.
    unsafe { _mm256_set1_epi32((p as *const i32).add(i).read_unaligned()) }
}

/// Block `b`'s f16 scales of rows `8h..8h+8` (Q8_0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block_scales(job: &Job, b: usize, h: usize) -> __m256 {
    // SAFETY: Q8_0 tiles hold kb * 32 scale bytes.
    unsafe {
        _mm256_cvtph_ps(_mm_loadu_si128(
            job.scales.add(b * 32 + h * 16) as *const __m128i
        ))
    }
}

/// Q8Channel: f32 scales of rows `8h..8h+8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn row_scales(job: &Job, h: usize) -> __m256 {
    // SAFETY: Q8Channel tiles hold 16 f32 scales.
    unsafe { _mm256_loadu_ps((job.scales as *const f32).add(8 * h)) }
}

/// Q8 x I8 (sign trick).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_i8<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let ones = _mm256_set1_epi16(1);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..job.kb {
            if h == 0 {
                prefetch_block(job, b);
            }
            // SAFETY (whole body): offsets stay inside the tile and the prepared
            // activation arrays, per the Job contract.
            unsafe {
                let w = job.vals.add(b * 512 + h * 32);
                let a = job.q8.add(b * GROUP * 32);
                let mut dot = [_mm256_setzero_si256(); MR];
                for l in 0..8 {
                    let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                    let av = _mm256_sign_epi8(v, v);
                    for r in 0..MR {
                        let x = _mm256_sign_epi8(bcast(a.add(r * 32), l), v);
                        dot[r] = _mm256_add_epi32(
                            dot[r],
                            _mm256_madd_epi16(_mm256_maddubs_epi16(av, x), ones),
                        );
                    }
                }
                let d = if PER_ROW {
                    _mm256_set1_ps(1.0)
                } else {
                    block_scales(job, b, h)
                };
                for r in 0..MR {
                    let sa = _mm256_set1_ps(*job.blk_scale.add(b * GROUP + r));
                    let s = if PER_ROW { sa } else { _mm256_mul_ps(d, sa) };
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), s, acc[r]);
                }
            }
        }
        for r in 0..MR {
            // SAFETY: out rows hold 16 f32; Q8Channel tiles hold row scales.
            unsafe {
                let v = if PER_ROW {
                    _mm256_mul_ps(acc[r], row_scales(job, h))
                } else {
                    acc[r]
                };
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), v);
            }
        }
    }
}

/// Q8 x I16 (activation pairs in `act_quant::Q8_I16_PERM` order).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_i16<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..job.kb {
            if h == 0 {
                prefetch_block(job, b);
            }
            // SAFETY: as in q8_i8.
            unsafe {
                let w = job.vals.add(b * 512 + h * 32);
                let a = job.q16.add(b * GROUP * 32);
                let mut dot = [_mm256_setzero_si256(); MR];
                for l in 0..8 {
                    let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                    let lo = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(v));
                    let hi = _mm256_srai_epi16::<8>(v);
                    for r in 0..MR {
                        let ar = a.add(r * 32);
                        dot[r] = _mm256_add_epi32(dot[r], _mm256_madd_epi16(lo, bcast(ar, 2 * l)));
                        dot[r] =
                            _mm256_add_epi32(dot[r], _mm256_madd_epi16(hi, bcast(ar, 2 * l + 1)));
                    }
                }
                for r in 0..MR {
                    let tot = _mm256_cvtepi32_ps(dot[r]);
                    acc[r] = if PER_ROW {
                        _mm256_add_ps(tot, acc[r])
                    } else {
                        _mm256_fmadd_ps(tot, block_scales(job, b, h), acc[r])
                    };
                }
            }
        }
        for r in 0..MR {
            // SAFETY: row r0 + r exists; out rows hold 16 f32.
            unsafe {
                let mut v = _mm256_mul_ps(acc[r], _mm256_set1_ps(*job.row_scale.add(r)));
                if PER_ROW {
                    v = _mm256_mul_ps(v, row_scales(job, h));
                }
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), v);
            }
        }
    }
}

/// Q8 x f32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_f32<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let split = MR <= 2;
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); MR];
        let mut acc2 = [_mm256_setzero_ps(); MR];
        for b in 0..job.kb {
            // SAFETY: as in q8_i8.
            unsafe {
                let w = job.vals.add(b * 512 + h * 32);
                let d = if PER_ROW {
                    _mm256_set1_ps(1.0)
                } else {
                    block_scales(job, b, h)
                };
                for l in 0..8 {
                    let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                    let qs = [
                        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(v)),
                        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<16>(v)),
                        _mm256_srai_epi32::<24>(_mm256_slli_epi32::<8>(v)),
                        _mm256_srai_epi32::<24>(v),
                    ];
                    for (j, &q) in qs.iter().enumerate() {
                        let qf = _mm256_cvtepi32_ps(q);
                        let wf = if PER_ROW { qf } else { _mm256_mul_ps(qf, d) };
                        let av = job.f.add((b * 32 + 4 * l + j) * GROUP);
                        for r in 0..MR {
                            let x = _mm256_set1_ps(*av.add(r));
                            if split && j % 2 == 1 {
                                acc2[r] = _mm256_fmadd_ps(wf, x, acc2[r]);
                            } else {
                                acc[r] = _mm256_fmadd_ps(wf, x, acc[r]);
                            }
                        }
                    }
                }
            }
        }
        for r in 0..MR {
            // SAFETY: out rows hold 16 f32; Q8Channel tiles hold row scales.
            unsafe {
                let mut v = if split {
                    _mm256_add_ps(acc[r], acc2[r])
                } else {
                    acc[r]
                };
                if PER_ROW {
                    v = _mm256_mul_ps(v, row_scales(job, h));
                }
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), v);
            }
        }
    }
}
