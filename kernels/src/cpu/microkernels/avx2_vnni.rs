//! AVX2 microkernels with 256-bit `vpdpbusd` (`Isa::Avx2Vnni`) for the integer
//! activation plans: Q4 / Q8 weights x I8, and x I16 as byte planes.
//!
//! A tile is two 8-row halves as in `avx2_q4.rs` (lane `r` of a ymm is weight row
//! `8h + r`); per half the arithmetic is that of the AVX-512 kernels (`avx512_q4.rs`,
//! `avx512_q8.rs`) on 8 lanes: the same activation plans (I8 with the Q4_0 / Q8 offsets
//! in `blk_bias`, I16 as `ActPlan::I16Bytes`), the same i32 bounds, and the same f32
//! operations per lane in the same order, so the two paths agree bit for bit. Against
//! the `vpmaddubsw` + `vpmaddwd` kernels of `avx2_q4.rs` / `avx2_q8.rs` this saves the
//! widening and, for Q8, the sign trick.
//!
//! The instruction has two encodings with the same semantics: VEX (`avxvnni`, Alder
//! Lake and later, Zen 5) and EVEX (`avx512vnni` + `avx512vl`, Ice Lake and later, Zen
//! 4; CPUs with both exist, Zen 4 has only EVEX). Each needs its own target feature,
//! so one source, the `kernels!` macro, is compiled twice: `vex` and `evex`. `has_vex`
//! tells which one a CPU running `Avx2Vnni` can use.

use super::avx2_q4::{bcast, scales};
use super::avx2_q8::{block_scales, row_scales};
use super::avx512_q8::LONG_BLOCKS;
use super::{prefetch_block, Job, TileOut, GROUP};
use std::arch::x86_64::*;

/// Whether this CPU has the VEX encoding. `Isa::Avx2Vnni` is only selected on CPUs that
/// have it or AVX512-VNNI with VL (see `dispatch::detected`), so where this is false
/// the `evex` instance runs.
pub(crate) fn has_vex() -> bool {
    // std caches the CPUID result: one relaxed atomic load.
    std::arch::is_x86_feature_detected!("avxvnni")
}

/// A 64-byte weight load's two 8-row halves (bytes 0..32, 32..64).
///
/// # Safety
/// `p` points at 64 readable bytes.
#[inline(always)]
unsafe fn halves(p: *const u8) -> [__m256i; 2] {
    // SAFETY: the caller's contract.
    unsafe {
        [
            _mm256_loadu_si256(p as *const __m256i),
            _mm256_loadu_si256(p.add(32) as *const __m256i),
        ]
    }
}

/// The frame of the whole-row kernels (`avx512_q8::whole_rows` for one tile, both 8-row
/// halves at once): two planes of i32 sums per (row, half), plane 0 starting at the
/// tile's `-128 * sum(w)` per weight row (undoing the activations' `+ 128`:
/// `ActPlan::U8Row`, `I16BytesHiU8`), run over
/// stretches of `LONG_BLOCKS` blocks by `block(b, sums)` (`sums[plane][row][half]`);
/// after each stretch `fold` turns a (row, half)'s planes into f32, and the totals are
/// stored scaled by the weight rows' and the activation row's scales (the AVX-512
/// kernels' order).
///
/// # Safety
/// A [`TileKernel`](super::TileKernel)'s contract; the tile is Q8Channel (16 i32 row
/// sums after its 16 f32 scales); the caller has AVX2, FMA and F16C.
#[inline(always)]
unsafe fn whole_rows<const MR: usize>(
    job: &Job,
    out: &mut TileOut,
    mut block: impl FnMut(usize, &mut [[[__m256i; 2]; MR]; 2]),
    fold: impl Fn(__m256i, __m256i) -> __m256,
) {
    // SAFETY (whole body): the caller's contract.
    unsafe {
        let bias: [__m256i; 2] = std::array::from_fn(|h| {
            let sums = _mm256_loadu_si256(job.scales.add(64 + 32 * h) as *const __m256i);
            _mm256_mullo_epi32(sums, _mm256_set1_epi32(-128))
        });
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let mut b0 = 0;
        while b0 < job.kb {
            let b1 = (b0 + LONG_BLOCKS).min(job.kb);
            let mut sums = [[[_mm256_setzero_si256(); 2]; MR]; 2];
            if b0 == 0 {
                sums[0] = [bias; MR];
            }
            for b in b0..b1 {
                block(b, &mut sums);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                for (h, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_add_ps(*acc, fold(sums[0][r][h], sums[1][r][h]));
                }
            }
            b0 = b1;
        }
        for (r, acc) in acc.iter().enumerate() {
            for (h, &acc) in acc.iter().enumerate() {
                let s = _mm256_mul_ps(row_scales(job, h), _mm256_set1_ps(*job.row_scale.add(r)));
                _mm256_storeu_ps(out[r].as_mut_ptr().add(8 * h), _mm256_mul_ps(acc, s));
            }
        }
    }
}

/// The kernels, for one encoding: `$features` are the target features and `$dpbusd`
/// the `vpdpbusd` intrinsic (`acc + u8 x i8` dot products of 4, per i32 lane).
macro_rules! kernels {
    ($features:literal, $dpbusd:ident) => {
        use super::*;

        /// Q4 x I8 (see `avx512_q4::q4_i8`).
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q4_i8<const HAS_MIN: bool, const MR: usize>(
            job: &Job,
            out: &mut TileOut,
        ) {
            // One or two rows: split each row's chain of 8 dependent vpdpbusd per block
            // over two accumulators (low / high nibbles) so latency does not bound it.
            let split = MR <= 2;
            let mask = _mm256_set1_epi8(0x0f);
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
                        let mut dot = [_mm256_setzero_si256(); MR];
                        let mut dot_hi = [_mm256_setzero_si256(); MR];
                        if !HAS_MIN {
                            for (r, dot) in dot.iter_mut().enumerate() {
                                *dot = _mm256_set1_epi32(*job.blk_bias.add(b * GROUP + r));
                            }
                        }
                        for l in 0..4 {
                            let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                            let lo = _mm256_and_si256(v, mask);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                            for r in 0..MR {
                                let ar = a.add(r * 32);
                                dot[r] = $dpbusd(dot[r], lo, bcast(ar, l));
                                if split {
                                    dot_hi[r] = $dpbusd(dot_hi[r], hi, bcast(ar, l + 4));
                                } else {
                                    dot[r] = $dpbusd(dot[r], hi, bcast(ar, l + 4));
                                }
                            }
                        }
                        let (d, m) = scales::<HAS_MIN>(job, b, h);
                        for r in 0..MR {
                            let tot = if split {
                                _mm256_add_epi32(dot[r], dot_hi[r])
                            } else {
                                dot[r]
                            };
                            let sa = _mm256_set1_ps(*job.blk_scale.add(b * GROUP + r));
                            acc[r] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(tot),
                                _mm256_mul_ps(d, sa),
                                acc[r],
                            );
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

        /// Q4 x I16 on byte planes (see `avx512_q4::q4_i16b`): `256 sum(q hi) +
        /// sum(q lo)`, the nibbles taking the i8 operand in the low-byte product.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q4_i16b<const HAS_MIN: bool, const MR: usize>(
            job: &Job,
            out: &mut TileOut,
        ) {
            // One or two rows: four chains per row (plane x nibble half).
            let split = MR <= 2;
            let mask = _mm256_set1_epi8(0x0f);
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); MR];
                for b in 0..job.kb {
                    if h == 0 {
                        prefetch_block(job, b);
                    }
                    // SAFETY (whole body): offsets stay inside the tile and the prepared
                    // activation arrays (64 bytes per block and row), per the Job contract.
                    unsafe {
                        let w = job.vals.add(b * 256 + h * 32);
                        let a = job.q8.add(b * GROUP * 64);
                        let mut hi = [_mm256_setzero_si256(); MR];
                        let mut hi2 = [_mm256_setzero_si256(); MR];
                        let mut lo = [_mm256_setzero_si256(); MR];
                        let mut lo2 = [_mm256_setzero_si256(); MR];
                        for l in 0..4 {
                            let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                            let q_lo = _mm256_and_si256(v, mask);
                            let q_hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                            for r in 0..MR {
                                let ar = a.add(r * 64);
                                let lb = ar.add(32);
                                hi[r] = $dpbusd(hi[r], q_lo, bcast(ar, l));
                                lo[r] = $dpbusd(lo[r], bcast(lb, l), q_lo);
                                if split {
                                    hi2[r] = $dpbusd(hi2[r], q_hi, bcast(ar, l + 4));
                                    lo2[r] = $dpbusd(lo2[r], bcast(lb, l + 4), q_hi);
                                } else {
                                    hi[r] = $dpbusd(hi[r], q_hi, bcast(ar, l + 4));
                                    lo[r] = $dpbusd(lo[r], bcast(lb, l + 4), q_hi);
                                }
                            }
                        }
                        let (d, m) = scales::<HAS_MIN>(job, b, h);
                        for r in 0..MR {
                            let (hs, ls) = if split {
                                (
                                    _mm256_add_epi32(hi[r], hi2[r]),
                                    _mm256_add_epi32(lo[r], lo2[r]),
                                )
                            } else {
                                (hi[r], lo[r])
                            };
                            let mut tot = _mm256_add_epi32(_mm256_slli_epi32::<8>(hs), ls);
                            if !HAS_MIN {
                                tot = _mm256_add_epi32(
                                    tot,
                                    _mm256_set1_epi32(*job.blk_bias.add(b * GROUP + r)),
                                );
                            }
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), d, acc[r]);
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

        /// Q8 x I8 on `w + 128` (see `avx512_q8::q8_i8`).
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q8_i8<const PER_ROW: bool, const MR: usize>(
            job: &Job,
            out: &mut TileOut,
        ) {
            let split = MR <= 2;
            let flip = _mm256_set1_epi8(-128);
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
                        let mut dot2 = [_mm256_setzero_si256(); MR];
                        for (r, dot) in dot.iter_mut().enumerate() {
                            *dot = _mm256_set1_epi32(*job.blk_bias.add(b * GROUP + r));
                        }
                        for l in 0..8 {
                            let v = _mm256_xor_si256(
                                _mm256_loadu_si256(w.add(l * 64) as *const __m256i),
                                flip,
                            );
                            for r in 0..MR {
                                let x = bcast(a.add(r * 32), l);
                                if split && l % 2 == 1 {
                                    dot2[r] = $dpbusd(dot2[r], v, x);
                                } else {
                                    dot[r] = $dpbusd(dot[r], v, x);
                                }
                            }
                        }
                        let d = if PER_ROW {
                            _mm256_set1_ps(1.0)
                        } else {
                            block_scales(job, b, h)
                        };
                        for r in 0..MR {
                            let tot = if split {
                                _mm256_add_epi32(dot[r], dot2[r])
                            } else {
                                dot[r]
                            };
                            let sa = _mm256_set1_ps(*job.blk_scale.add(b * GROUP + r));
                            let s = if PER_ROW { sa } else { _mm256_mul_ps(d, sa) };
                            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), s, acc[r]);
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

        /// Q8Channel x I8 with one scale per activation row, stored as `u8 = q + 128`
        /// (`ActPlan::U8Row`): `avx512_q8::q8c_u8row` on ymm. The weights are
        /// `vpdpbusd`'s signed operand as stored, the sums start at `-128 * sum(w)` per
        /// weight row and stay in i32 over `LONG_BLOCKS` blocks (no per-block factor),
        /// and both 8-row halves of the tile run in one pass, so each activation
        /// broadcast feeds two `vpdpbusd` (against one load and one `vpxor` per
        /// `vpdpbusd` in the per-block `q8_i8`). Same integers and f32 steps as the
        /// AVX-512 kernel.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q8c_u8row<const MR: usize>(job: &Job, out: &mut TileOut) {
            // One or two rows: split each (row, half) chain over even and odd loads
            // (the frame's two planes), so latency does not bound it (four chains are
            // too few for vpdpbusd).
            let split = MR <= 2;
            // SAFETY: the frame's contract; the block offsets stay inside the tile and
            // the prepared activations (32 bytes per block and row).
            unsafe {
                whole_rows::<MR>(
                    job,
                    out,
                    |b, sums| {
                        prefetch_block(job, b);
                        let w = job.vals.add(b * 512);
                        let a = job.q8.add(b * GROUP * 32);
                        for l in 0..8 {
                            let v = halves(w.add(l * 64));
                            let c = if split { l % 2 } else { 0 };
                            for r in 0..MR {
                                let x = bcast(a.add(r * 32), l);
                                for h in 0..2 {
                                    sums[c][r][h] = $dpbusd(sums[c][r][h], x, v[h]);
                                }
                            }
                        }
                    },
                    |even, odd| _mm256_cvtepi32_ps(_mm256_add_epi32(even, odd)),
                )
            }
        }

        /// Q8Channel x I16 on byte planes with one scale per activation row
        /// (`ActPlan::I16BytesHiU8`: both planes unsigned, the high one as `hi + 128`):
        /// `avx512_q8::q8c_i16b` on ymm, the sums kept in i32 over `LONG_BLOCKS`
        /// blocks as in [`q8c_u8row`], both halves of the tile in one pass. Per row
        /// and half that is two chains (the planes), so at most two rows fit the 16
        /// registers.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q8c_i16b<const MR: usize>(job: &Job, out: &mut TileOut) {
            // SAFETY: as `q8c_u8row`, with 64 activation bytes per block and row (the
            // high plane, then the low one).
            unsafe {
                whole_rows::<MR>(
                    job,
                    out,
                    |b, sums| {
                        prefetch_block(job, b);
                        let w = job.vals.add(b * 512);
                        let a = job.q8.add(b * GROUP * 64);
                        for l in 0..8 {
                            let v = halves(w.add(l * 64));
                            for r in 0..MR {
                                let ar = a.add(r * 64);
                                let x = [bcast(ar, l), bcast(ar.add(32), l)];
                                for (p, &x) in x.iter().enumerate() {
                                    for h in 0..2 {
                                        sums[p][r][h] = $dpbusd(sums[p][r][h], x, v[h]);
                                    }
                                }
                            }
                        }
                    },
                    |hi, lo| {
                        _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(hi),
                            _mm256_set1_ps(256.0),
                            _mm256_cvtepi32_ps(lo),
                        )
                    },
                )
            }
        }

        /// Q8 x I16 on byte planes (see `avx512_q8::q8_i16b`): the high-byte product on
        /// `w + 128`, the low-byte one with the low bytes as the u8 operand.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q8_i16b<const PER_ROW: bool, const MR: usize>(
            job: &Job,
            out: &mut TileOut,
        ) {
            let split = MR <= 2;
            let flip = _mm256_set1_epi8(-128);
            for h in 0..2 {
                let mut acc = [_mm256_setzero_ps(); MR];
                for b in 0..job.kb {
                    if h == 0 {
                        prefetch_block(job, b);
                    }
                    // SAFETY (whole body): offsets stay inside the tile and the prepared
                    // activation arrays (64 bytes per block and row), per the Job contract.
                    unsafe {
                        let w = job.vals.add(b * 512 + h * 32);
                        let a = job.q8.add(b * GROUP * 64);
                        let mut hi = [_mm256_setzero_si256(); MR];
                        let mut hi2 = [_mm256_setzero_si256(); MR];
                        let mut lo = [_mm256_setzero_si256(); MR];
                        let mut lo2 = [_mm256_setzero_si256(); MR];
                        for l in 0..8 {
                            let v = _mm256_loadu_si256(w.add(l * 64) as *const __m256i);
                            let u = _mm256_xor_si256(v, flip);
                            for r in 0..MR {
                                let ar = a.add(r * 64);
                                if split && l % 2 == 1 {
                                    hi2[r] = $dpbusd(hi2[r], u, bcast(ar, l));
                                    lo2[r] = $dpbusd(lo2[r], bcast(ar.add(32), l), v);
                                } else {
                                    hi[r] = $dpbusd(hi[r], u, bcast(ar, l));
                                    lo[r] = $dpbusd(lo[r], bcast(ar.add(32), l), v);
                                }
                            }
                        }
                        let d = if PER_ROW {
                            _mm256_set1_ps(1.0)
                        } else {
                            block_scales(job, b, h)
                        };
                        for r in 0..MR {
                            let (hs, ls) = if split {
                                (
                                    _mm256_add_epi32(hi[r], hi2[r]),
                                    _mm256_add_epi32(lo[r], lo2[r]),
                                )
                            } else {
                                (hi[r], lo[r])
                            };
                            let bias = _mm256_set1_epi32(*job.blk_bias.add(b * GROUP + r));
                            let tot = _mm256_cvtepi32_ps(_mm256_add_epi32(
                                _mm256_add_epi32(_mm256_slli_epi32::<8>(hs), ls),
                                bias,
                            ));
                            acc[r] = if PER_ROW {
                                _mm256_add_ps(tot, acc[r])
                            } else {
                                _mm256_fmadd_ps(tot, d, acc[r])
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
    };
}

/// VEX-encoded (`{vex} vpdpbusd`, AVX-VNNI).
pub(crate) mod vex {
    kernels!("avx2,fma,f16c,avxvnni", _mm256_dpbusd_avx_epi32);
}

/// EVEX-encoded (AVX512-VNNI with AVX512VL, on ymm registers).
pub(crate) mod evex {
    kernels!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        _mm256_dpbusd_epi32
    );
}
