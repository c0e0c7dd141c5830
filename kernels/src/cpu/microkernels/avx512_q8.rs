//! AVX-512 (BW + VNNI) microkernels for Q8_0 / Q8Channel weights (i8 values; per-block
//! f16 scales, or one f32 scale per row when `PER_ROW`). Lane `r` of a tile is weight
//! row `r`, as in `avx512_q4.rs`; a block is 8 loads of 64 bytes (4 values per row).
//!
//! I8: `vpdpbusd` multiplies u8 x i8, so the weights are flipped to `w + 128` (0..255,
//! one `vpxord`) and the accumulator starts at `-128 * sum(a)` (`blk_bias`). i32 bound
//! per block: 32 * 255 * 127 = 1_036_320 plus the bias (<= 520_192): far below 2^31.
//! I16: the activations as two byte planes through `vpdpbusd` as well (`q8_i16b`;
//! sign-extending the weights to i16 for `vpdpwssd` measured 1.2-1.4x slower).

use super::{prefetch_block, Job, TileOut, GROUP};
use std::arch::x86_64::*;

#[inline(always)]
unsafe fn bcast<T>(p: *const T, i: usize) -> __m512i {
    // SAFETY: callers pass a block pointer with at least i + 1 dwords.
    unsafe { _mm512_set1_epi32((p as *const i32).add(i).read_unaligned()) }
}

/// Block `b`'s 16 f16 scales as f32 (Q8_0 only).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn block_scales(job: &Job, b: usize) -> __m512 {
    // SAFETY: Q8_0 tiles hold kb * 32 scale bytes.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(job.scales.add(b * 32) as *const __m256i)) }
}

/// Q8Channel: the 16 rows' f32 scales.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn row_scales(job: &Job) -> __m512 {
    // SAFETY: Q8Channel tiles hold 16 f32 scales.
    unsafe { _mm512_loadu_ps(job.scales as *const f32) }
}

/// Q8 x I8 via `vpdpbusd` on `w + 128`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8_i8<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let split = MR <= 2;
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..job.kb {
        prefetch_block(job, b);
        // SAFETY (whole body): offsets stay inside the tile and the prepared activation
        // arrays, per the Job contract.
        unsafe {
            let w = job.vals.add(b * 512);
            let a = job.q8.add(b * GROUP * 32);
            let mut dot = [_mm512_setzero_si512(); MR];
            let mut dot2 = [_mm512_setzero_si512(); MR];
            for (r, dot) in dot.iter_mut().enumerate() {
                *dot = _mm512_set1_epi32(*job.blk_bias.add(b * GROUP + r));
            }
            for l in 0..8 {
                let v = _mm512_xor_si512(_mm512_load_si512(w.add(l * 64) as *const _), flip);
                for r in 0..MR {
                    let x = bcast(a.add(r * 32), l);
                    if split && l % 2 == 1 {
                        dot2[r] = _mm512_dpbusd_epi32(dot2[r], v, x);
                    } else {
                        dot[r] = _mm512_dpbusd_epi32(dot[r], v, x);
                    }
                }
            }
            let d = if PER_ROW {
                _mm512_set1_ps(1.0)
            } else {
                block_scales(job, b)
            };
            for r in 0..MR {
                let tot = if split {
                    _mm512_add_epi32(dot[r], dot2[r])
                } else {
                    dot[r]
                };
                let sa = _mm512_set1_ps(*job.blk_scale.add(b * GROUP + r));
                let s = if PER_ROW { sa } else { _mm512_mul_ps(d, sa) };
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), s, acc[r]);
            }
        }
    }
    for r in 0..MR {
        // SAFETY: out rows hold 16 f32; Q8Channel tiles hold row scales.
        unsafe {
            let v = if PER_ROW {
                _mm512_mul_ps(acc[r], row_scales(job))
            } else {
                acc[r]
            };
            _mm512_storeu_ps(out[r].as_mut_ptr(), v);
        }
    }
}

/// Q8 x f32: `d * q` (exact for Q8_0) then FMA; Q8Channel applies its row scale last.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8_f32<const PER_ROW: bool, const MR: usize>(job: &Job, out: &mut TileOut) {
    let split = MR <= 2;
    let mut acc = [_mm512_setzero_ps(); MR];
    let mut acc2 = [_mm512_setzero_ps(); MR];
    for b in 0..job.kb {
        // SAFETY: as in q8_i8.
        unsafe {
            let w = job.vals.add(b * 512);
            let d = if PER_ROW {
                _mm512_set1_ps(1.0)
            } else {
                block_scales(job, b)
            };
            for l in 0..8 {
                let v = _mm512_load_si512(w.add(l * 64) as *const _);
                let qs = [
                    _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(v)),
                    _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(v)),
                    _mm512_srai_epi32::<24>(_mm512_slli_epi32::<8>(v)),
                    _mm512_srai_epi32::<24>(v),
                ];
                for (j, &q) in qs.iter().enumerate() {
                    let qf = _mm512_cvtepi32_ps(q);
                    let wf = if PER_ROW { qf } else { _mm512_mul_ps(qf, d) };
                    let av = job.f.add((b * 32 + 4 * l + j) * GROUP);
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
    for r in 0..MR {
        // SAFETY: out rows hold 16 f32; Q8Channel tiles hold row scales.
        unsafe {
            let mut v = if split {
                _mm512_add_ps(acc[r], acc2[r])
            } else {
                acc[r]
            };
            if PER_ROW {
                v = _mm512_mul_ps(v, row_scales(job));
            }
            _mm512_storeu_ps(out[r].as_mut_ptr(), v);
        }
    }
}

/// Q8 x I16 via `vpdpbusd` on byte planes (`ActPlan::I16Bytes`, see
/// `avx512_q4::q4_i16b`): `sum(w a) = 256 sum(w hi) + sum(w lo)`. The high-byte product
/// takes `w + 128` as the u8 operand (corrected by `blk_bias = -128 * 256 * sum(hi)`),
/// the low-byte product takes the low bytes (broadcast into a register) as the u8
/// operand and the signed weights as they are. Bounds per block: 256 * 32 * 255 * 128 =
/// 267_386_880, the bias 32768 * 4096 = 134_217_728, and 32 * 128 * 255 = 1_044_480:
/// their sum stays below 2^31. Q8_0 only: Q8Channel (one scale per row) takes
/// [`q8c_i16b`], which needs no per-block conversion.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8_i16b<const MR: usize>(job: &Job, out: &mut TileOut) {
    let split = MR <= 2;
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); MR];
    for b in 0..job.kb {
        prefetch_block(job, b);
        // SAFETY (whole body): offsets stay inside the tile and the prepared activation
        // arrays (64 bytes per block and row), per the Job contract.
        unsafe {
            let w = job.vals.add(b * 512);
            let a = job.q8.add(b * GROUP * 64);
            let mut hi = [_mm512_setzero_si512(); MR];
            let mut hi2 = [_mm512_setzero_si512(); MR];
            let mut lo = [_mm512_setzero_si512(); MR];
            let mut lo2 = [_mm512_setzero_si512(); MR];
            for l in 0..8 {
                let v = _mm512_load_si512(w.add(l * 64) as *const _);
                let u = _mm512_xor_si512(v, flip);
                for r in 0..MR {
                    let ar = a.add(r * 64);
                    if split && l % 2 == 1 {
                        hi2[r] = _mm512_dpbusd_epi32(hi2[r], u, bcast(ar, l));
                        lo2[r] = _mm512_dpbusd_epi32(lo2[r], bcast(ar.add(32), l), v);
                    } else {
                        hi[r] = _mm512_dpbusd_epi32(hi[r], u, bcast(ar, l));
                        lo[r] = _mm512_dpbusd_epi32(lo[r], bcast(ar.add(32), l), v);
                    }
                }
            }
            let d = block_scales(job, b);
            for r in 0..MR {
                let (h, l) = if split {
                    (
                        _mm512_add_epi32(hi[r], hi2[r]),
                        _mm512_add_epi32(lo[r], lo2[r]),
                    )
                } else {
                    (hi[r], lo[r])
                };
                let bias = _mm512_set1_epi32(*job.blk_bias.add(b * GROUP + r));
                let tot = _mm512_cvtepi32_ps(_mm512_add_epi32(
                    _mm512_add_epi32(_mm512_slli_epi32::<8>(h), l),
                    bias,
                ));
                acc[r] = _mm512_fmadd_ps(tot, d, acc[r]);
            }
        }
    }
    for r in 0..MR {
        // SAFETY: row r0 + r exists; out rows hold 16 f32.
        unsafe {
            let v = _mm512_mul_ps(acc[r], _mm512_set1_ps(*job.row_scale.add(r)));
            _mm512_storeu_ps(out[r].as_mut_ptr(), v);
        }
    }
}

/// Blocks accumulated in i32 before [`q8c_i16b`] converts to f32: each plane's sum over
/// 256 blocks (8192 values) is at most 8192 * 255 * 128 = 267_386_880 < 2^31 (also
/// the stretch of `avx2_vnni`'s whole-row kernel).
pub(super) const LONG_BLOCKS: usize = 256;

/// Stores the whole-row kernels' f32 sums scaled by the tile's 16 weight-row scales and
/// each activation row's scale.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn store_row_scaled<const MR: usize>(job: &Job, acc: &[__m512; MR], out: &mut TileOut) {
    for r in 0..MR {
        // SAFETY: row r0 + r exists; out rows hold 16 f32; Q8Channel tiles hold row
        // scales.
        unsafe {
            let s = _mm512_mul_ps(row_scales(job), _mm512_set1_ps(*job.row_scale.add(r)));
            _mm512_storeu_ps(out[r].as_mut_ptr(), _mm512_mul_ps(acc[r], s));
        }
    }
}

/// Q8Channel x I16 (byte planes, as [`q8_i16b`]) with the dot products kept in i32
/// across blocks: one weight scale per row and one activation scale per row leave no
/// per-block factor, so the high- and low-byte sums run over [`LONG_BLOCKS`] blocks at a
/// time and are converted once, where the per-block path spends five vector operations
/// per row and block on converting (a quarter of the SigLIP encoder's time). Both
/// planes are `vpdpbusd`'s unsigned operand (`ActPlan::I16BytesHiU8` stores the high
/// bytes as `hi + 128`) and the weights its signed one as stored, so nothing is flipped
/// per load; the high plane's first stretch starts at `-128 * sum(w)` per weight row
/// (kept in the tile).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8c_i16b<const MR: usize>(job: &Job, out: &mut TileOut) {
    // SAFETY: the kernel's contract is `whole_rows`' for one tile; the block offsets
    // stay inside the tile and the prepared activations (64 bytes per block and row).
    unsafe {
        whole_rows::<1, MR, 2>(
            [job],
            [out],
            |b, sums| {
                prefetch_block(job, b);
                let w = job.vals.add(b * 512);
                let a = job.q8.add(b * GROUP * 64);
                for l in 0..8 {
                    let v = _mm512_load_si512(w.add(l * 64) as *const _);
                    for r in 0..MR {
                        let ar = a.add(r * 64);
                        sums[0][0][r] = _mm512_dpbusd_epi32(sums[0][0][r], bcast(ar, l), v);
                        sums[1][0][r] = _mm512_dpbusd_epi32(sums[1][0][r], bcast(ar.add(32), l), v);
                    }
                }
            },
            hi_lo,
        )
    }
}

/// Q8Channel x I8 with one scale per activation row, the activations stored as
/// `u8 = q + 128` (`ActPlan::U8Row`): like [`q8c_i16b`], no per-block factor, so the
/// dot products stay in i32 over [`LONG_BLOCKS`] blocks. The activations are
/// `vpdpbusd`'s unsigned operand and the weights its signed one as they are stored, so
/// a block is eight weight loads and eight `vpdpbusd` per row and nothing else (flipping
/// the weights instead cost one `vpxord` per load on the ports the dot products use);
/// the first stretch starts at `-128 * sum(w)` per weight row (kept in the tile). Bound
/// per stretch: 8192 * 255 * 127 plus 128 * 127 * 8192, below 2^31.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8c_u8row<const MR: usize>(job: &Job, out: &mut TileOut) {
    // Two chains per row (even and odd loads): vpdpbusd's latency (5) times its
    // throughput (2) wants ten in flight, eight rows alone give eight.
    // SAFETY: as `q8c_i16b` (32 bytes per block and row).
    unsafe {
        whole_rows::<1, MR, 2>(
            [job],
            [out],
            |b, sums| {
                prefetch_block(job, b);
                let w = job.vals.add(b * 512);
                let a = job.q8.add(b * GROUP * 32);
                for l in 0..8 {
                    let v = _mm512_load_si512(w.add(l * 64) as *const _);
                    for r in 0..MR {
                        let x = bcast(a.add(r * 32), l);
                        let s = &mut sums[l % 2][0][r];
                        *s = _mm512_dpbusd_epi32(*s, x, v);
                    }
                }
            },
            |[even, odd]| _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd)),
        )
    }
}

/// [`q8c_u8row`] for two adjacent tiles at once (`job`'s and the next): each
/// activation broadcast feeds two `vpdpbusd`. With one tile a block is as many
/// broadcast loads as dot products plus the weight loads, which the two load ports
/// issue more slowly than the two dot-product ports retire them; two tiles make it
/// ten loads per sixteen dot products (the sixteen chains also cover `vpdpbusd`'s
/// latency without splitting rows).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8c_u8row_pair<const MR: usize>(
    job: &Job,
    out: &mut TileOut,
    out2: &mut TileOut,
) {
    let job2 = job.next_tile();
    // SAFETY: as `q8c_u8row`, for both tiles (the pair kernel's contract: the second
    // exists).
    unsafe {
        whole_rows::<2, MR, 1>(
            [job, &job2],
            [out, out2],
            |b, sums| {
                let w = job.vals.add(b * 512);
                let w2 = job2.vals.add(b * 512);
                let a = job.q8.add(b * GROUP * 32);
                for l in 0..8 {
                    let v = _mm512_load_si512(w.add(l * 64) as *const _);
                    let v2 = _mm512_load_si512(w2.add(l * 64) as *const _);
                    for r in 0..MR {
                        let x = bcast(a.add(r * 32), l);
                        sums[0][0][r] = _mm512_dpbusd_epi32(sums[0][0][r], x, v);
                        sums[0][1][r] = _mm512_dpbusd_epi32(sums[0][1][r], x, v2);
                    }
                }
            },
            |[dot]| _mm512_cvtepi32_ps(dot),
        )
    }
}

/// [`q8c_i16b`] for two adjacent tiles at once (`job`'s and the next), as
/// [`q8c_u8row_pair`]: per row two broadcasts (the byte planes) feed four `vpdpbusd`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn q8c_i16b_pair<const MR: usize>(
    job: &Job,
    out: &mut TileOut,
    out2: &mut TileOut,
) {
    let job2 = job.next_tile();
    // SAFETY: as `q8c_i16b`, for both tiles (the pair kernel's contract: the second
    // exists).
    unsafe {
        whole_rows::<2, MR, 2>(
            [job, &job2],
            [out, out2],
            |b, sums| {
                let w = job.vals.add(b * 512);
                let w2 = job2.vals.add(b * 512);
                let a = job.q8.add(b * GROUP * 64);
                for l in 0..8 {
                    let v = _mm512_load_si512(w.add(l * 64) as *const _);
                    let v2 = _mm512_load_si512(w2.add(l * 64) as *const _);
                    for r in 0..MR {
                        let ar = a.add(r * 64);
                        let (xh, xl) = (bcast(ar, l), bcast(ar.add(32), l));
                        sums[0][0][r] = _mm512_dpbusd_epi32(sums[0][0][r], xh, v);
                        sums[1][0][r] = _mm512_dpbusd_epi32(sums[1][0][r], xl, v);
                        sums[0][1][r] = _mm512_dpbusd_epi32(sums[0][1][r], xh, v2);
                        sums[1][1][r] = _mm512_dpbusd_epi32(sums[1][1][r], xl, v2);
                    }
                }
            },
            hi_lo,
        )
    }
}

/// The byte-plane kernels' stretch in f32: `256 * hi + lo`.
#[inline(always)]
fn hi_lo([hi, lo]: [__m512i; 2]) -> __m512 {
    // SAFETY: only called from the kernels above, compiled with AVX-512 F.
    unsafe {
        _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(hi),
            _mm512_set1_ps(256.0),
            _mm512_cvtepi32_ps(lo),
        )
    }
}

/// The frame of the whole-row kernels, for `T` adjacent tiles (`jobs`) and `MR` rows:
/// `P` planes of i32 sums per tile and row, plane 0 starting at the tile's
/// `-128 * sum(w)` per weight row (undoing the activations' `+ 128`), run over
/// stretches of [`LONG_BLOCKS`] blocks by `block(b, sums)`; after each stretch `fold`
/// turns a (tile, row)'s planes into f32, and the totals are stored scaled into `outs`.
///
/// # Safety
/// A [`TileKernel`](super::TileKernel)'s contract for every job; the tiles are
/// Q8Channel (16 i32 row sums after their 16 f32 scales).
#[inline(always)]
unsafe fn whole_rows<const T: usize, const MR: usize, const P: usize>(
    jobs: [&Job; T],
    outs: [&mut TileOut; T],
    mut block: impl FnMut(usize, &mut [[[__m512i; MR]; T]; P]),
    fold: impl Fn([__m512i; P]) -> __m512,
) {
    // SAFETY: the caller's contract.
    let bias: [__m512i; T] = std::array::from_fn(|t| unsafe { row_sum_bias(jobs[t]) });
    let mut acc = [[_mm512_setzero_ps(); MR]; T];
    let kb = jobs[0].kb;
    let mut b0 = 0;
    while b0 < kb {
        let b1 = (b0 + LONG_BLOCKS).min(kb);
        let mut sums = [[[_mm512_setzero_si512(); MR]; T]; P];
        if b0 == 0 {
            for t in 0..T {
                sums[0][t] = [bias[t]; MR];
            }
        }
        for b in b0..b1 {
            block(b, &mut sums);
        }
        for t in 0..T {
            for r in 0..MR {
                let planes: [__m512i; P] = std::array::from_fn(|p| sums[p][t][r]);
                acc[t][r] = _mm512_add_ps(acc[t][r], fold(planes));
            }
        }
        b0 = b1;
    }
    for (t, out) in outs.into_iter().enumerate() {
        // SAFETY: the caller's contract.
        unsafe { store_row_scaled(jobs[t], &acc[t], out) }
    }
}

/// `-128 * sum(w)` per weight row of `job`'s tile: where the whole-row kernels' sums
/// start, undoing the activations' `+ 128` (`ActPlan::U8Row`, `I16BytesHiU8`).
///
/// # Safety
/// `job`'s tile is Q8Channel (16 i32 row sums after its 16 f32 scales).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn row_sum_bias(job: &Job) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        _mm512_mullo_epi32(
            _mm512_loadu_si512(job.scales.add(64) as *const _),
            _mm512_set1_epi32(-128),
        )
    }
}
