//! AVX2 microkernels for Q4_0 / Q4_1 weights. A 16-row tile is processed as two 8-row
//! halves (bytes 0..32 and 32..64 of each 64-byte load; see `packed.rs`), lane `r` of
//! a ymm being weight row `8h + r`. 16 ymm registers allow at most 4 activation rows.
//!
//! I8 without VNNI: `vpmaddubsw` (u8 nibble x i8 activation, pairs summed to i16) then
//! `vpmaddwd` with ones to i32. i16 bound: one `vpmaddubsw` lane is at most
//! 2 * 15 * 127 = 3_810, so a whole block's 8 of them add up to at most 30_480 < 32_767
//! and are accumulated in i16 before one widening per block.
//! I16: `vpmaddwd` + `vpaddd`; bounds as in `avx512_q4.rs`.

use super::{prefetch_block, Job, TileOut, GROUP};
use std::arch::x86_64::*;

/// `d` (and `m` for Q4_1) of block `b` for rows `8h..8h+8`, as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scales<const HAS_MIN: bool>(
    job: &Job,
    b: usize,
    h: usize,
) -> (__m256, __m256) {
    // SAFETY: Q4_0 tiles hold kb * 32 scale bytes, Q4_1 kb * 64 ([d x 16, m x 16]).
    unsafe {
        if HAS_MIN {
            let p = job.scales.add(b * 64 + h * 16);
            (
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(32) as *const __m128i)),
            )
        } else {
            let p = job.scales.add(b * 32 + h * 16);
            (
                _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _mm256_setzero_ps(),
            )
        }
    }
}

#[inline(always)]
pub(super) unsafe fn bcast<T>(p: *const T, i: usize) -> __m256i {
    // SAFETY: callers pass a block pointer with at least i + 1 dwords.
    unsafe { _mm256_set1_epi32((p as *const i32).add(i).read_unaligned()) }
}

/// Q4 x I8.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_i8<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let mask = _mm256_set1_epi8(0x0f);
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
                let w = job.vals.add(b * 256 + h * 32);
                let a = job.q8.add(b * GROUP * 32);
                let mut s16 = [_mm256_setzero_si256(); MR];
                for l in 0..4 {
                    let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                    let lo = _mm256_and_si256(v, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                    for r in 0..MR {
                        let ar = a.add(r * 32);
                        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, bcast(ar, l)));
                        s16[r] =
                            _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, bcast(ar, l + 4)));
                    }
                }
                let (d, m) = scales::<HAS_MIN>(job, b, h);
                for r in 0..MR {
                    let mut dot = _mm256_madd_epi16(s16[r], ones);
                    if !HAS_MIN {
                        dot = _mm256_add_epi32(
                            dot,
                            _mm256_set1_epi32(*job.blk_bias.add(b * GROUP + r)),
                        );
                    }
                    let sa = _mm256_set1_ps(*job.blk_scale.add(b * GROUP + r));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d, sa), acc[r]);
                    if HAS_MIN {
                        acc[r] = _mm256_fmadd_ps(
                            m,
                            _mm256_set1_ps(*job.blk_sum.add(b * GROUP + r)),
                            acc[r],
                        );
                    }
                }
            }
        }
        for r in 0..MR {
            // SAFETY: out rows hold 16 f32.
            unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), acc[r]) };
        }
    }
}

/// Q4 x I16 (activation pairs in `act_quant::Q4_I16_PERM` order).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_i16<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let mask = _mm256_set1_epi16(0x000f);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); MR];
        for b in 0..job.kb {
            if h == 0 {
                prefetch_block(job, b);
            }
            // SAFETY: as in q4_i8.
            unsafe {
                let w = job.vals.add(b * 256 + h * 32);
                let a = job.q16.add(b * GROUP * 32);
                let mut dot = [_mm256_setzero_si256(); MR];
                if !HAS_MIN {
                    for (r, dot) in dot.iter_mut().enumerate() {
                        *dot = _mm256_set1_epi32(*job.blk_bias.add(b * GROUP + r));
                    }
                }
                for l in 0..4 {
                    let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                    let ws = [
                        _mm256_and_si256(v, mask),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask),
                        _mm256_and_si256(_mm256_srli_epi16::<8>(v), mask),
                        _mm256_srli_epi16::<12>(v),
                    ];
                    for (s, &wv) in ws.iter().enumerate() {
                        for r in 0..MR {
                            dot[r] = _mm256_add_epi32(
                                dot[r],
                                _mm256_madd_epi16(wv, bcast(a.add(r * 32), 4 * l + s)),
                            );
                        }
                    }
                }
                let (d, m) = scales::<HAS_MIN>(job, b, h);
                for r in 0..MR {
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), d, acc[r]);
                    if HAS_MIN {
                        acc[r] = _mm256_fmadd_ps(
                            m,
                            _mm256_set1_ps(*job.blk_sum.add(b * GROUP + r)),
                            acc[r],
                        );
                    }
                }
            }
        }
        for r in 0..MR {
            // SAFETY: row r0 + r exists; out rows hold 16 f32.
            unsafe {
                let s = _mm256_set1_ps(*job.row_scale.add(r));
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), _mm256_mul_ps(acc[r], s));
            }
        }
    }
}

/// Q4 x f32 (exact dequantization, then FMA; see `avx512_q4::q4_f32`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_f32<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let split = MR <= 2;
    let mask = _mm256_set1_epi8(0x0f);
    let byte = _mm256_set1_epi32(0xff);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); MR];
        let mut acc2 = [_mm256_setzero_ps(); MR];
        for b in 0..job.kb {
            // SAFETY: as in q4_i8.
            unsafe {
                let w = job.vals.add(b * 256 + h * 32);
                let (d, m) = scales::<HAS_MIN>(job, b, h);
                let m = if HAS_MIN {
                    m
                } else {
                    _mm256_mul_ps(d, _mm256_set1_ps(-8.0))
                };
                for l in 0..4 {
                    let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                    let halves = [
                        (_mm256_and_si256(v, mask), 4 * l),
                        (
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask),
                            16 + 4 * l,
                        ),
                    ];
                    for (x, base) in halves {
                        let qs = [
                            _mm256_and_si256(x, byte),
                            _mm256_and_si256(_mm256_srli_epi32::<8>(x), byte),
                            _mm256_and_si256(_mm256_srli_epi32::<16>(x), byte),
                            _mm256_srli_epi32::<24>(x),
                        ];
                        for (j, &q) in qs.iter().enumerate() {
                            let wf = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), d, m);
                            let av = job.f.add((b * 32 + base + j) * GROUP);
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
        }
        for r in 0..MR {
            let v = if split {
                _mm256_add_ps(acc[r], acc2[r])
            } else {
                acc[r]
            };
            // SAFETY: out rows hold 16 f32.
            unsafe { _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), v) };
        }
    }
}
