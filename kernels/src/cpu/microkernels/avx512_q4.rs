//! AVX-512 (BW + VNNI) microkernels for Q4_0 / Q4_1 weights. A tile (16 weight rows)
//! is one zmm: lane `r` is weight row `r`, so `vpdpbusd` sums 4 products of one row
//! and nothing is ever reduced horizontally.
//!
//! Per 32-value block and 16 rows the weights are 4 loads of 64 bytes; `w & 0x0f` and
//! `(w >> 4) & 0x0f` of load `L` are values `4L..4L+4` and `16+4L..16+4L+4` of every
//! row as unsigned bytes, the `u8` operand of `vpdpbusd`. The activation operand is
//! one dword of the row's block broadcast to all lanes (`{1to16}` from memory).
//!
//! I16 activations go through the same instruction as two byte planes (`q4_i16b`):
//! unpacking nibbles to i16 words for `vpdpwssd` (as the AVX2 kernels do with
//! `vpmaddwd`) costs 28 ALU ops per block against 8, and measured 1.3-1.7x slower.
//!
//! i32 bounds per block: I8: |sum q a| <= 32 * 15 * 127 = 60_960, plus the Q4_0 bias
//! |8 sum a| <= 32_512; I16: see `q4_i16b`. All far below 2^31. The block sum is
//! converted to f32 (exact below 2^24) and scaled there, since every block has its own
//! scale.

use super::{prefetch_block, Job, TileOut, GROUP};
use std::arch::x86_64::*;

/// `d` (and `m` for Q4_1) of block `b` for the 16 rows, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn scales<const HAS_MIN: bool>(job: &Job, b: usize) -> (__m512, __m512) {
    // SAFETY: Q4_0 tiles hold kb * 32 scale bytes, Q4_1 kb * 64 ([d x 16, m x 16]).
    unsafe {
        if HAS_MIN {
            let p = job.scales.add(b * 64);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            let m = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i));
            (d, m)
        } else {
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(job.scales.add(b * 32) as *const __m256i));
            (d, _mm512_setzero_ps())
        }
    }
}

/// Broadcast of dword `i` of the i8/i16 block at `p`.
#[inline(always)]
unsafe fn bcast<T>(p: *const T, i: usize) -> __m512i {
    // SAFETY: callers pass a block pointer with at least i + 1 dwords.
    unsafe { _mm512_set1_epi32((p as *const i32).add(i).read_unaligned()) }
}

/// Q4 x I8 via `vpdpbusd` (u8 nibbles x i8 activations).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q4_i8<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    // With one or two rows a block is a chain of 8 dependent vpdpbusd per row; split it
    // over two accumulators (low / high nibbles) so latency does not bound the loop.
    let split = MR <= 2;
    let mask = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..job.kb {
        prefetch_block(job, b);
        // SAFETY (whole body): offsets stay inside the tile (kb blocks) and the prepared
        // activation arrays (rows r0..r0+MR of the group), per the Job contract.
        unsafe {
            let w = job.vals.add(b * 256);
            let a = job.q8.add(b * GROUP * 32);
            let mut dot = [_mm512_setzero_si512(); MR];
            let mut dot_hi = [_mm512_setzero_si512(); MR];
            if !HAS_MIN {
                for (r, dot) in dot.iter_mut().enumerate() {
                    *dot = _mm512_set1_epi32(*job.blk_bias.add(b * GROUP + r));
                }
            }
            for l in 0..4 {
                let v = _mm512_load_si512(w.add(l * 64) as *const _);
                let lo = _mm512_and_si512(v, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                for r in 0..MR {
                    let ar = a.add(r * 32);
                    dot[r] = _mm512_dpbusd_epi32(dot[r], lo, bcast(ar, l));
                    if split {
                        dot_hi[r] = _mm512_dpbusd_epi32(dot_hi[r], hi, bcast(ar, l + 4));
                    } else {
                        dot[r] = _mm512_dpbusd_epi32(dot[r], hi, bcast(ar, l + 4));
                    }
                }
            }
            let (d, m) = scales::<HAS_MIN>(job, b);
            for r in 0..MR {
                let tot = if split {
                    _mm512_add_epi32(dot[r], dot_hi[r])
                } else {
                    dot[r]
                };
                let sa = _mm512_set1_ps(*job.blk_scale.add(b * GROUP + r));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), _mm512_mul_ps(d, sa), acc[r]);
                if HAS_MIN {
                    acc[r] =
                        _mm512_fmadd_ps(m, _mm512_set1_ps(*job.blk_sum.add(b * GROUP + r)), acc[r]);
                }
            }
        }
    }
    for r in 0..MR {
        // SAFETY: out rows hold 16 f32.
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), acc[r]) };
    }
}

/// Q4 x f32: each value dequantized exactly as `quant::dequantize` (`d * q + m` with an
/// exact product, so one FMA rounds the same way), then FMA with the activation.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q4_f32<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let split = MR <= 2;
    let mask = _mm512_set1_epi8(0x0f);
    let byte = _mm512_set1_epi32(0xff);
    let mut acc = [_mm512_setzero_ps(); MR];
    let mut acc2 = [_mm512_setzero_ps(); MR];
    for b in 0..job.kb {
        // SAFETY: as in q4_i8.
        unsafe {
            let w = job.vals.add(b * 256);
            let (d, m) = scales::<HAS_MIN>(job, b);
            // Q4_0: x = d * (q - 8) = d * q + (-8 d), both products exact.
            let m = if HAS_MIN {
                m
            } else {
                _mm512_mul_ps(d, _mm512_set1_ps(-8.0))
            };
            for l in 0..4 {
                let v = _mm512_load_si512(w.add(l * 64) as *const _);
                let halves = [
                    (_mm512_and_si512(v, mask), 4 * l),
                    (
                        _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
                        16 + 4 * l,
                    ),
                ];
                for (x, base) in halves {
                    let qs = [
                        _mm512_and_si512(x, byte),
                        _mm512_and_si512(_mm512_srli_epi32::<8>(x), byte),
                        _mm512_and_si512(_mm512_srli_epi32::<16>(x), byte),
                        _mm512_srli_epi32::<24>(x),
                    ];
                    for (j, &q) in qs.iter().enumerate() {
                        let wf = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), d, m);
                        let av = job.f.add((b * 32 + base + j) * GROUP);
                        for r in 0..MR {
                            let x = _mm512_set1_ps(*av.add(r));
                            if split && j % 2 == 1 {
                                acc2[r] = _mm512_fmadd_ps(wf, x, acc2[r]);
                            } else {
                                acc[r] = _mm512_fmadd_ps(wf, x, acc[r]);
                            }
                        }
                    }
                }
            }
        }
    }
    for r in 0..MR {
        let v = if split {
            _mm512_add_ps(acc[r], acc2[r])
        } else {
            acc[r]
        };
        // SAFETY: out rows hold 16 f32.
        unsafe { _mm512_storeu_ps(out[r].as_mut_ptr(), v) };
    }
}

/// Q4 x I16 via `vpdpbusd` on byte planes (`ActPlan::I16Bytes`): with `a = 256 hi + lo`,
/// `sum(q a) = 256 sum(q hi) + sum(q lo)`. The first sum is the I8 kernel's (u8 nibbles
/// x i8 high bytes, broadcast from memory); in the second both factors are unsigned,
/// so the nibbles (0..15, valid i8) take the signed operand and the low bytes the u8
/// one, broadcast into a register. Half the ALU work of unpacking nibbles to i16 words
/// for `vpdpwssd` (8 instead of 28 ops per block), the same number of dot products.
/// Bounds per block: |256 sum(q hi)| <= 256 * 32 * 15 * 128 = 15_728_640 and
/// sum(q lo) <= 32 * 15 * 255 = 122_400, plus the Q4_0 bias: far below 2^31.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q4_i16b<const HAS_MIN: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    // One or two rows: four chains per row (high/low plane x low/high nibbles) so the
    // 16 dependent vpdpbusd of a block do not serialize on latency.
    let split = MR <= 2;
    let mask = _mm512_set1_epi8(0x0f);
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..job.kb {
        prefetch_block(job, b);
        // SAFETY (whole body): offsets stay inside the tile and the prepared activation
        // arrays (64 bytes per block and row), per the Job contract.
        unsafe {
            let w = job.vals.add(b * 256);
            let a = job.q8.add(b * GROUP * 64);
            let mut hi = [_mm512_setzero_si512(); MR];
            let mut hi2 = [_mm512_setzero_si512(); MR];
            let mut lo = [_mm512_setzero_si512(); MR];
            let mut lo2 = [_mm512_setzero_si512(); MR];
            for l in 0..4 {
                let v = _mm512_load_si512(w.add(l * 64) as *const _);
                let q_lo = _mm512_and_si512(v, mask);
                let q_hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
                for r in 0..MR {
                    let ar = a.add(r * 64);
                    let lb = ar.add(32);
                    hi[r] = _mm512_dpbusd_epi32(hi[r], q_lo, bcast(ar, l));
                    lo[r] = _mm512_dpbusd_epi32(lo[r], bcast(lb, l), q_lo);
                    if split {
                        hi2[r] = _mm512_dpbusd_epi32(hi2[r], q_hi, bcast(ar, l + 4));
                        lo2[r] = _mm512_dpbusd_epi32(lo2[r], bcast(lb, l + 4), q_hi);
                    } else {
                        hi[r] = _mm512_dpbusd_epi32(hi[r], q_hi, bcast(ar, l + 4));
                        lo[r] = _mm512_dpbusd_epi32(lo[r], bcast(lb, l + 4), q_hi);
                    }
                }
            }
            let (d, m) = scales::<HAS_MIN>(job, b);
            for r in 0..MR {
                let (h, l) = if split {
                    (
                        _mm512_add_epi32(hi[r], hi2[r]),
                        _mm512_add_epi32(lo[r], lo2[r]),
                    )
                } else {
                    (hi[r], lo[r])
                };
                let mut tot = _mm512_add_epi32(_mm512_slli_epi32::<8>(h), l);
                if !HAS_MIN {
                    tot =
                        _mm512_add_epi32(tot, _mm512_set1_epi32(*job.blk_bias.add(b * GROUP + r)));
                }
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), d, acc[r]);
                if HAS_MIN {
                    acc[r] =
                        _mm512_fmadd_ps(m, _mm512_set1_ps(*job.blk_sum.add(b * GROUP + r)), acc[r]);
                }
            }
        }
    }
    for r in 0..MR {
        // SAFETY: row r0 + r exists; out rows hold 16 f32.
        unsafe {
            let s = _mm512_set1_ps(*job.row_scale.add(r));
            _mm512_storeu_ps(out[r].as_mut_ptr(), _mm512_mul_ps(acc[r], s));
        }
    }
}
