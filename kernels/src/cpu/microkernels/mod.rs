//! Tile microkernels of the packed matmul: one call computes a 16-column tile of the
//! output (16 weight rows, see `packed.rs`) for `MR` activation rows of one group (see
//! `act_quant.rs`), over the whole k range, with every scale applied. The driver
//! (`matmul_packed.rs`) adds the epilogue.
//!
//! One file per ISA and weight family: `portable.rs` (any CPU, plain Rust),
//! `avx2_q4.rs`/`avx2_q8.rs`/`avx2_f32.rs` (AVX2+FMA+F16C, a tile as two 8-lane halves;
//! I8 via `vpmaddubsw`, I16 via `vpmaddwd` on nibbles unpacked to words),
//! `avx2_vnni.rs` (the AVX2 path's I8 and I16 kernels with 256-bit `vpdpbusd`, the
//! AVX-512 kernels' arithmetic on two 8-lane halves; compiled for both VNNI encodings),
//! `avx512_q4.rs`/`avx512_q8.rs`/`avx512_f32.rs` (AVX-512 BW + VNNI, a tile per zmm;
//! I8 and I16 both via `vpdpbusd`, I16 as two byte planes),
//! `neon_q4.rs`/`neon_q8.rs`/`neon_f32.rs` (AArch64 NEON + dot product, a tile as four
//! 4-row quarters; I8 and I16 via `sdot`/`udot` by element, I16 as two byte planes;
//! the instructions Rust's stable intrinsics lack in `neon_dot.rs`).
//!
//! Per (format, activation precision, ISA), [`select`] returns the activation plan
//! (`act_quant::ActPlan`) and kernels for row blocks of 1, 2, 4 and 8 rows (the AVX2
//! paths: up to 4, AVX2 has 16 vector registers). One- and two-row kernels are the
//! decode (GEMV) path: they split dependency chains over extra accumulators; the 4- and
//! 8-row kernels reuse each unpacked weight vector across rows (GEMM). Every quantized
//! kernel prefetches the weight stream ([`PREFETCH_AHEAD`]): the first row block of a
//! chunk reads each tile from DRAM, which a short prompt, a speculative draft's
//! verification or the last rows of a chunk also do.
//!
//! The kernels index small register arrays (`acc[r]`, `dot[r]`) by row in loops of
//! constant trip count: after unrolling every index is a constant and the arrays live
//! in registers, which is the point, so clippy's iterator suggestion is declined.
#![allow(clippy::needless_range_loop)]

use super::act_quant::{ActPlan, ActScratch, GROUP, Q4_I16_PERM, Q8_I16_PERM};
use super::packed::{Format, PackedMatrix, TILE_ROWS};
use super::Isa;
use npurt_graph::ActPrecision;

#[cfg(target_arch = "x86_64")]
mod avx2_f32;
#[cfg(target_arch = "x86_64")]
mod avx2_q4;
#[cfg(target_arch = "x86_64")]
mod avx2_q8;
#[cfg(target_arch = "x86_64")]
mod avx2_vnni;
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2_vnni::has_vex;
#[cfg(target_arch = "x86_64")]
mod avx512_f32;
#[cfg(target_arch = "x86_64")]
mod avx512_q4;
#[cfg(target_arch = "x86_64")]
mod avx512_q8;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon_dot;
#[cfg(target_arch = "aarch64")]
mod neon_f32;
#[cfg(target_arch = "aarch64")]
mod neon_q4;
#[cfg(target_arch = "aarch64")]
mod neon_q8;
mod portable;

/// A kernel's results: `[row of the block][column of the tile]`.
pub(crate) type TileOut = [[f32; TILE_ROWS]; GROUP];

/// Everything a microkernel reads, as raw pointers already offset to the tile and to
/// the first activation row of the block (row `r0` of group `g`). Pointers into arrays
/// the plan does not use are dangling and never read.
#[derive(Clone, Copy)]
pub(crate) struct Job {
    /// The tile's values and scales (see `packed.rs`).
    pub vals: *const u8,
    pub scales: *const u8,
    /// 32-value blocks per row (k for f32 weights).
    pub kb: usize,
    /// Tile bytes per block (values and scales; tiles are contiguous), for prefetching.
    pub block_bytes: usize,
    /// `[block][row][32]` i8 (or `[64]`: i16 byte planes) / i16 activations
    /// (`act_quant.rs`), from row `r0`.
    pub q8: *const i8,
    pub q16: *const i16,
    /// `[k][row]` f32 activations, from row `r0`.
    pub f: *const f32,
    /// `[block][row]` side data, from row `r0`.
    pub blk_scale: *const f32,
    pub blk_bias: *const i32,
    pub blk_sum: *const f32,
    /// `[row]` I16 scales, from row `r0`.
    pub row_scale: *const f32,
    /// Bytes from this tile to the next (tiles are contiguous): what a pair kernel
    /// ([`PairKernel`]) adds to reach its second tile.
    pub tile_bytes: usize,
}

impl Job {
    /// The job for tile `t` of `w` and rows `r0..` of group `g` of `act`.
    pub(crate) fn new(w: &PackedMatrix, t: usize, act: &ActScratch, g: usize, r0: usize) -> Job {
        let tile = w.tile(t).as_ptr();
        let (kb, k) = (act.kb, act.k);
        let blk = g * GROUP * kb + r0;
        Job {
            vals: tile,
            scales: tile.wrapping_add(w.scales_offset),
            kb: w.kb,
            block_bytes: w.tile_bytes / w.kb.max(1),
            q8: act
                .q8
                .as_ptr()
                .wrapping_add((g * GROUP * kb + r0) * act.q8_block_bytes),
            q16: act.q16.as_ptr().wrapping_add(g * GROUP * kb * 32 + r0 * 32),
            f: act.f.as_ptr().wrapping_add(g * GROUP * k + r0),
            blk_scale: act.blk_scale.as_ptr().wrapping_add(blk),
            blk_bias: act.blk_bias.as_ptr().wrapping_add(blk),
            blk_sum: act.blk_sum.as_ptr().wrapping_add(blk),
            row_scale: act.row_scale.as_ptr().wrapping_add(g * GROUP + r0),
            tile_bytes: w.tile_bytes,
        }
    }

    /// The same rows against the next tile.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn next_tile(&self) -> Job {
        Job {
            vals: self.vals.wrapping_add(self.tile_bytes),
            scales: self.scales.wrapping_add(self.tile_bytes),
            ..*self
        }
    }
}

/// How far ahead of the block being multiplied the quantized kernels prefetch weights
/// into L2. Decode reads every weight once from DRAM; the hardware prefetchers do not
/// run far enough ahead of a loop that spends ~40 instructions per 320-byte block (and
/// stop at 4 KiB pages), so single-thread GEMV streamed at ~10 GB/s on Zen 4 where a
/// plain read loop gets ~22. Measured on Zen 4 (Q4_1 x I8 GEMV, weights far beyond L3):
/// none 9.9 GB/s, 2 KiB 12.8, 4 KiB 15.0, 8 KiB 21.8, 16 KiB 20.1. `prefetcht1` (to
/// L2): into L1 the misses queue up behind its few fill buffers. The GEMM kernels
/// prefetch too: a 4-row prompt's tiles come from DRAM as a decode step's do, and without
/// it SmolLM2 prefilled 4 rows slower than 3 (464 against 548 tokens/s at w4a16, 2
/// threads; 772 with it), the 2.7B shape's 8 rows at 63 tokens/s (72 with it). Where a
/// tile is already cached the hint costs a few loads per block: 128-row chunks and the
/// so400m encoder's GEMMs measured level or faster.
pub(crate) const PREFETCH_AHEAD: usize = 8192;

/// Prefetches the tile bytes `PREFETCH_AHEAD` past block `b` (tiles are contiguous, so
/// this walks on into the next tiles). Prefetches never fault, so running past the end
/// of the matrix is harmless; the pointer is formed with wrapping arithmetic.
#[inline(always)]
pub(crate) fn prefetch_block(job: &Job, b: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = job.vals.wrapping_add(b * job.block_bytes + PREFETCH_AHEAD);
        let mut off = 0;
        while off < job.block_bytes {
            // SAFETY: a prefetch is a hint; it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(off) as *const i8) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (job, b);
}

/// A microkernel for a fixed row count. SAFETY contract: the CPU supports the kernel's
/// ISA, `job` was built by `Job::new` for a prepared `ActScratch` whose plan is the
/// kernel set's, and the block's rows exist.
pub(crate) type TileKernel = unsafe fn(&Job, &mut TileOut);

/// A kernel for `rows` rows of two adjacent tiles at once (`job`'s tile into the first
/// output, the next into the second), where sharing each activation load between two
/// weight tiles pays (see `avx512_q8::q8c_u8row_pair`). SAFETY contract: a
/// [`TileKernel`]'s, and the tile after `job`'s exists.
#[derive(Clone, Copy)]
pub(crate) struct PairKernel {
    pub rows: usize,
    pub kernel: unsafe fn(&Job, &mut TileOut, &mut TileOut),
}

/// The pair kernel for what [`select`] chose, where there is one: the whole-row
/// Q8Channel kernels on AVX-512 VNNI (the ViT's w8a8 and w8a16 matmuls). Its
/// activation plan is the kernel set's.
pub(crate) fn select_pair(format: Format, act: ActPrecision, isa: Isa) -> Option<PairKernel> {
    #[cfg(target_arch = "x86_64")]
    if (isa, format) == (Isa::Avx512Vnni, Format::Q8Channel) {
        // Eight rows x two tiles is 16 i32 chains; the byte-plane kernel keeps two
        // per row and tile, so four rows fill its registers as well.
        return match act {
            ActPrecision::I8Row => Some(PairKernel {
                rows: 8,
                kernel: avx512_q8::q8c_u8row_pair::<8>,
            }),
            ActPrecision::I16 => Some(PairKernel {
                rows: 4,
                kernel: avx512_q8::q8c_i16b_pair::<4>,
            }),
            _ => None,
        };
    }
    let _ = (format, act, isa);
    None
}

/// The kernels and activation plan for one (format, activation precision, ISA).
pub(crate) struct KernelSet {
    pub plan: ActPlan,
    /// Kernels for 1, 2, 4 and 8 rows (`None` where the ISA has too few registers).
    pub by_rows: [Option<TileKernel>; 4],
}

impl KernelSet {
    /// The largest supported row block of at most `rows` rows.
    pub(crate) fn pick(&self, rows: usize) -> (usize, TileKernel) {
        for (i, mr) in [8usize, 4, 2, 1].into_iter().enumerate() {
            if mr <= rows {
                if let Some(k) = self.by_rows[3 - i] {
                    return (mr, k);
                }
            }
        }
        // by_rows[0] is always present (every set has a 1-row kernel).
        (1, self.by_rows[0].unwrap_or(portable::f32w_f32::<1>))
    }
}

macro_rules! by_rows {
    ($m:ident :: $f:ident $(, $g:expr)*) => {
        [
            Some($m::$f::<$($g,)* 1> as TileKernel),
            Some($m::$f::<$($g,)* 2> as TileKernel),
            Some($m::$f::<$($g,)* 4> as TileKernel),
            Some($m::$f::<$($g,)* 8> as TileKernel),
        ]
    };
}

macro_rules! by_rows_4 {
    ($m:ident :: $f:ident $(, $g:expr)*) => {
        [Some($m::$f::<$($g,)* 1> as TileKernel), Some($m::$f::<$($g,)* 2> as TileKernel), Some($m::$f::<$($g,)* 4> as TileKernel), None]
    };
}

/// The kernel set for a weight format, an activation precision and an ISA.
pub(crate) fn select(format: Format, act: ActPrecision, isa: Isa) -> KernelSet {
    use ActPrecision as A;
    use Format as F;
    // Integer offsets folded into each block's accumulator start (see act_quant): Q4_0
    // stores q = x/d + 8, so sum((q - 8) a) = sum(q a) - 8 sum(a). VNNI multiplies u8 x
    // i8, so the Q8 kernels there flip signed weights to w + 128 and subtract 128 sum(a).
    let q4_off = |f: Format| if f == F::Q4_0 { 8 } else { 0 };
    // Per-row i8 (`I8Row`) runs the I8 kernels on activations whose blocks all carry
    // their row's scale, except where a kernel of its own pays: per-channel weights on
    // the VNNI paths and NEON (`q8c_u8row`, `q8c_i8row`: no per-block scaling at all;
    // on `avx2` the sign trick's ports bound the per-block kernel, and a whole-row one
    // measured level with it).
    // The `A::I8 | A::I8Row` arms below therefore only ever see `I8`.
    if act == A::I8Row {
        #[cfg(target_arch = "x86_64")]
        if (isa, format) == (Isa::Avx512Vnni, F::Q8Channel) {
            return KernelSet {
                plan: ActPlan::U8Row,
                by_rows: by_rows!(avx512_q8::q8c_u8row),
            };
        }
        // Signed activations with no block bias (offset 0): `q8c_i8row` keeps whole
        // rows in i32.
        #[cfg(target_arch = "aarch64")]
        if (isa, format) == (Isa::NeonDot, F::Q8Channel) {
            return KernelSet {
                plan: ActPlan::I8Row { offset: 0 },
                by_rows: by_rows_4!(neon_q8::q8c_i8row),
            };
        }
        #[cfg(target_arch = "x86_64")]
        if (isa, format) == (Isa::Avx2Vnni, F::Q8Channel) {
            use avx2_vnni::{evex, vex};
            let by_rows = if avx2_vnni::has_vex() {
                by_rows_4!(vex::q8c_u8row)
            } else {
                by_rows_4!(evex::q8c_u8row)
            };
            return KernelSet {
                plan: ActPlan::U8Row,
                by_rows,
            };
        }
        let mut set = select(format, A::I8, isa);
        set.plan = match set.plan {
            ActPlan::I8 { offset } => ActPlan::I8Row { offset },
            ActPlan::FakeI8 => ActPlan::FakeI8Row,
            plan => plan,
        };
        return set;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            use {avx512_f32 as f32w, avx512_q4 as q4, avx512_q8 as q8};
            match (format, act) {
                (F::Q4_0, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 { offset: 8 },
                    by_rows: by_rows!(q4::q4_i8, false),
                },
                (F::Q4_1, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 { offset: 0 },
                    by_rows: by_rows!(q4::q4_i8, true),
                },
                // I16 as byte planes through vpdpbusd (see avx512_q4::q4_i16b).
                (F::Q4_0, A::I16) => KernelSet {
                    plan: ActPlan::I16Bytes {
                        offset: 8,
                        hi_offset: 0,
                    },
                    by_rows: by_rows!(q4::q4_i16b, false),
                },
                (F::Q4_1, A::I16) => KernelSet {
                    plan: ActPlan::I16Bytes {
                        offset: 0,
                        hi_offset: 0,
                    },
                    by_rows: by_rows!(q4::q4_i16b, true),
                },
                (F::Q4_0, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows!(q4::q4_f32, false),
                },
                (F::Q4_1, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows!(q4::q4_f32, true),
                },
                (F::Q8_0, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 { offset: 128 },
                    by_rows: by_rows!(q8::q8_i8, false),
                },
                (F::Q8Channel, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 { offset: 128 },
                    by_rows: by_rows!(q8::q8_i8, true),
                },
                // The high-byte product runs on w + 128 (u8), hence 128 * 256 * sum(hi).
                (F::Q8_0, A::I16) => KernelSet {
                    plan: ActPlan::I16Bytes {
                        offset: 0,
                        hi_offset: 32768,
                    },
                    by_rows: by_rows!(q8::q8_i16b),
                },
                // One scale per weight row and per activation row: the sums stay in i32
                // across blocks, and the high-byte plane comes as u8 (`q8c_i16b`).
                (F::Q8Channel, A::I16) => KernelSet {
                    plan: ActPlan::I16BytesHiU8,
                    by_rows: by_rows!(q8::q8c_i16b),
                },
                (F::Q8_0, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows!(q8::q8_f32, false),
                },
                (F::Q8Channel, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows!(q8::q8_f32, true),
                },
                (F::F32, a) => KernelSet {
                    plan: f32_plan(a),
                    by_rows: by_rows!(f32w::f32w_f32),
                },
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Vnni => avx2_vnni_set(format, act, avx2_vnni::has_vex()),
        #[cfg(target_arch = "aarch64")]
        Isa::NeonDot => neon_set(format, act),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            use {avx2_f32 as f32w, avx2_q4 as q4, avx2_q8 as q8};
            match (format, act) {
                (F::Q4_0 | F::Q4_1, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 {
                        offset: q4_off(format),
                    },
                    by_rows: if format == F::Q4_1 {
                        by_rows_4!(q4::q4_i8, true)
                    } else {
                        by_rows_4!(q4::q4_i8, false)
                    },
                },
                (F::Q4_0 | F::Q4_1, A::I16) => KernelSet {
                    plan: ActPlan::I16 {
                        offset: q4_off(format),
                        perm: Some(&Q4_I16_PERM),
                    },
                    by_rows: if format == F::Q4_1 {
                        by_rows_4!(q4::q4_i16, true)
                    } else {
                        by_rows_4!(q4::q4_i16, false)
                    },
                },
                (F::Q4_0, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows_4!(q4::q4_f32, false),
                },
                (F::Q4_1, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows_4!(q4::q4_f32, true),
                },
                // AVX2 multiplies |w| by sign(w) * a (vpsignb), so no offset here.
                (F::Q8_0, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 { offset: 0 },
                    by_rows: by_rows_4!(q8::q8_i8, false),
                },
                (F::Q8Channel, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 { offset: 0 },
                    by_rows: by_rows_4!(q8::q8_i8, true),
                },
                (F::Q8_0, A::I16) => KernelSet {
                    plan: ActPlan::I16 {
                        offset: 0,
                        perm: Some(&Q8_I16_PERM),
                    },
                    by_rows: by_rows_4!(q8::q8_i16, false),
                },
                (F::Q8Channel, A::I16) => KernelSet {
                    plan: ActPlan::I16 {
                        offset: 0,
                        perm: Some(&Q8_I16_PERM),
                    },
                    by_rows: by_rows_4!(q8::q8_i16, true),
                },
                (F::Q8_0, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows_4!(q8::q8_f32, false),
                },
                (F::Q8Channel, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows_4!(q8::q8_f32, true),
                },
                (F::F32, a) => KernelSet {
                    plan: f32_plan(a),
                    by_rows: by_rows_4!(f32w::f32w_f32),
                },
            }
        }
        _ => {
            use portable as p;
            match (format, act) {
                (F::Q4_0 | F::Q4_1, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 {
                        offset: q4_off(format),
                    },
                    by_rows: if format == F::Q4_1 {
                        by_rows!(p::q4_i8, true)
                    } else {
                        by_rows!(p::q4_i8, false)
                    },
                },
                (F::Q4_0 | F::Q4_1, A::I16) => KernelSet {
                    plan: ActPlan::I16 {
                        offset: q4_off(format),
                        perm: None,
                    },
                    by_rows: if format == F::Q4_1 {
                        by_rows!(p::q4_i16, true)
                    } else {
                        by_rows!(p::q4_i16, false)
                    },
                },
                (F::Q4_0, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows!(p::q4_f32, false),
                },
                (F::Q4_1, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows!(p::q4_f32, true),
                },
                (F::Q8_0, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 { offset: 0 },
                    by_rows: by_rows!(p::q8_i8, false),
                },
                (F::Q8Channel, A::I8 | A::I8Row) => KernelSet {
                    plan: ActPlan::I8 { offset: 0 },
                    by_rows: by_rows!(p::q8_i8, true),
                },
                (F::Q8_0, A::I16) => KernelSet {
                    plan: ActPlan::I16 {
                        offset: 0,
                        perm: None,
                    },
                    by_rows: by_rows!(p::q8_i16, false),
                },
                (F::Q8Channel, A::I16) => KernelSet {
                    plan: ActPlan::I16 {
                        offset: 0,
                        perm: None,
                    },
                    by_rows: by_rows!(p::q8_i16, true),
                },
                (F::Q8_0, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows!(p::q8_f32, false),
                },
                (F::Q8Channel, A::F32) => KernelSet {
                    plan: ActPlan::F32,
                    by_rows: by_rows!(p::q8_f32, true),
                },
                (F::F32, a) => KernelSet {
                    plan: f32_plan(a),
                    by_rows: by_rows!(p::f32w_f32),
                },
            }
        }
    }
}

/// The `Isa::Avx2Vnni` set, with the kernels of the VEX or the EVEX instance (the
/// CPU must have that encoding). Same plans as the AVX-512 set: the kernels do its
/// arithmetic. f32 activations and f32 weights have no integer dot product to gain
/// from VNNI and take the AVX2 kernels.
#[cfg(target_arch = "x86_64")]
fn avx2_vnni_set(format: Format, act: ActPrecision, vex: bool) -> KernelSet {
    use avx2_vnni::{evex, vex};
    use ActPrecision as A;
    use Format as F;
    macro_rules! pick {
        ($f:ident, $g:expr) => {
            if vex {
                by_rows_4!(vex::$f, $g)
            } else {
                by_rows_4!(evex::$f, $g)
            }
        };
    }
    let (plan, by_rows) = match (format, act) {
        (F::Q4_0, A::I8 | A::I8Row) => (ActPlan::I8 { offset: 8 }, pick!(q4_i8, false)),
        (F::Q4_1, A::I8 | A::I8Row) => (ActPlan::I8 { offset: 0 }, pick!(q4_i8, true)),
        (F::Q4_0, A::I16) => (
            ActPlan::I16Bytes {
                offset: 8,
                hi_offset: 0,
            },
            pick!(q4_i16b, false),
        ),
        (F::Q4_1, A::I16) => (
            ActPlan::I16Bytes {
                offset: 0,
                hi_offset: 0,
            },
            pick!(q4_i16b, true),
        ),
        (F::Q8_0, A::I8 | A::I8Row) => (ActPlan::I8 { offset: 128 }, pick!(q8_i8, false)),
        (F::Q8Channel, A::I8 | A::I8Row) => (ActPlan::I8 { offset: 128 }, pick!(q8_i8, true)),
        (F::Q8_0, A::I16) => (
            ActPlan::I16Bytes {
                offset: 0,
                hi_offset: 32768,
            },
            pick!(q8_i16b, false),
        ),
        (F::Q8Channel, A::I16) => (
            ActPlan::I16BytesHiU8,
            if vex {
                [
                    Some(vex::q8c_i16b::<1> as TileKernel),
                    Some(vex::q8c_i16b::<2>),
                    None,
                    None,
                ]
            } else {
                [
                    Some(evex::q8c_i16b::<1> as TileKernel),
                    Some(evex::q8c_i16b::<2>),
                    None,
                    None,
                ]
            },
        ),
        _ => return select(format, act, Isa::Avx2Fma),
    };
    KernelSet { plan, by_rows }
}

/// The `Isa::NeonDot` set. Weights and activations are both signed `sdot` operands,
/// so the I8 plans carry only Q4_0's offset, and I16 comes as byte planes as on the
/// VNNI paths (`neon_q8.rs` says how the unsigned low plane meets signed weights).
/// Quantized weights with f32 activations have no dot product to gain and take the
/// portable kernels.
#[cfg(target_arch = "aarch64")]
fn neon_set(format: Format, act: ActPrecision) -> KernelSet {
    use ActPrecision as A;
    use Format as F;
    use {neon_f32 as f32w, neon_q4 as q4, neon_q8 as q8};
    let (plan, by_rows) = match (format, act) {
        (F::Q4_0, A::I8 | A::I8Row) => (ActPlan::I8 { offset: 8 }, by_rows_4!(q4::q4_i8, false)),
        (F::Q4_1, A::I8 | A::I8Row) => (ActPlan::I8 { offset: 0 }, by_rows_4!(q4::q4_i8, true)),
        (F::Q4_0, A::I16) => (
            ActPlan::I16Bytes {
                offset: 8,
                hi_offset: 0,
            },
            by_rows_4!(q4::q4_i16b, false),
        ),
        (F::Q4_1, A::I16) => (
            ActPlan::I16Bytes {
                offset: 0,
                hi_offset: 0,
            },
            by_rows_4!(q4::q4_i16b, true),
        ),
        (F::Q8_0, A::I8 | A::I8Row) => (ActPlan::I8 { offset: 0 }, by_rows_4!(q8::q8_i8, false)),
        (F::Q8Channel, A::I8 | A::I8Row) => {
            (ActPlan::I8 { offset: 0 }, by_rows_4!(q8::q8_i8, true))
        }
        (F::Q8_0 | F::Q8Channel, A::I16) => (
            ActPlan::I16Bytes {
                offset: 0,
                hi_offset: 0,
            },
            if format == F::Q8Channel {
                by_rows_4!(q8::q8_i16b, true)
            } else {
                by_rows_4!(q8::q8_i16b, false)
            },
        ),
        (F::F32, a) => (f32_plan(a), by_rows_4!(f32w::f32w_f32)),
        _ => return select(format, act, Isa::Portable),
    };
    KernelSet { plan, by_rows }
}

/// f32 weights with an integer activation policy: quantize-dequantize the activations
/// (same numerics as the integer kernels would give), then multiply in f32.
fn f32_plan(act: ActPrecision) -> ActPlan {
    match act {
        ActPrecision::F32 => ActPlan::F32,
        ActPrecision::I16 => ActPlan::FakeI16,
        ActPrecision::I8 => ActPlan::FakeI8,
        ActPrecision::I8Row => ActPlan::FakeI8Row,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{act_quant, pack};
    use npurt_graph::DType;

    /// `[row][column]` of `w` times the 8 rows of `a`, every tile through every kernel
    /// of `set`: one result per row-block size.
    fn run(set: &KernelSet, isa: Isa, w: &PackedMatrix, a: &[f32]) -> Vec<Vec<f32>> {
        let n = w.n();
        let mut s = ActScratch::default();
        act_quant::prepare(a, GROUP, w.k(), None, set.plan, isa, &mut s);
        let kernels = set.by_rows.iter().zip([1, 2, 4, 8]);
        kernels
            .filter_map(|(k, mr)| k.map(|k| (k, mr)))
            .map(|(kernel, mr)| {
                let mut out = vec![0f32; GROUP * n];
                for t in 0..n / TILE_ROWS {
                    for r0 in (0..GROUP).step_by(mr) {
                        let mut tile: TileOut = [[0f32; TILE_ROWS]; GROUP];
                        // SAFETY: the callers check the CPU has the kernels' ISA; `s` was
                        // prepared for the set's plan, all 8 rows and both tiles exist.
                        unsafe { kernel(&Job::new(w, t, &s, 0, r0), &mut tile) };
                        for r in 0..mr {
                            out[(r0 + r) * n + t * TILE_ROWS..][..TILE_ROWS]
                                .copy_from_slice(&tile[r]);
                        }
                    }
                }
                out
            })
            .collect()
    }

    /// Every kernel of every path this CPU runs, at every row-block size, against the
    /// portable kernels (the readable statement of what they compute) on the same
    /// activation integers: only the f32 steps may differ. Outputs of different rows and
    /// tiles differ in magnitude, so a wrong lane, row, scale or offset shows.
    #[test]
    fn every_path_kernel_set_matches_the_portable_kernels() {
        let mut seed = 0x0a11_u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        // Two tiles, five blocks; rows and weight rows of different magnitudes.
        let (n, k) = (32, 160);
        let a: Vec<f32> = (0..GROUP * k).map(|i| rnd() * (1 + i / k) as f32).collect();
        let mut checked = 0;
        for dtype in [
            DType::Q4_0,
            DType::Q4_1,
            DType::Q8_0,
            DType::Q8Channel,
            DType::F32,
        ] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| rnd() * (1 + i / k % 5) as f32 * 0.05)
                .collect();
            let raw = if dtype == DType::F32 {
                bytemuck::cast_slice(&x).to_vec()
            } else {
                crate::quant::quantize(dtype, &x, k).expect("quantize")
            };
            let w = pack(dtype, &raw, n, k).expect("pack");
            for act in [
                ActPrecision::F32,
                ActPrecision::I8,
                ActPrecision::I8Row,
                ActPrecision::I16,
            ] {
                let portable = select(w.format, act, Isa::Portable);
                let want = &run(&portable, Isa::Portable, &w, &a)[0];
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                for isa in Isa::supported() {
                    let set = select(w.format, act, isa);
                    for (i, got) in run(&set, isa, &w, &a).iter().enumerate() {
                        let (at, err) = got
                            .iter()
                            .zip(want)
                            .map(|(g, p)| (g - p).abs())
                            .enumerate()
                            .fold((0, 0f32), |m, (j, e)| if e > m.1 { (j, e) } else { m });
                        assert!(
                            err <= 1e-5 * scale,
                            "{dtype} x {} on {}: the {}-row kernel is off the portable one by \
                             {err} at row {} column {} (outputs up to {scale})",
                            act.name(),
                            isa.name(),
                            [1, 2, 4, 8][i],
                            at / n,
                            at % n
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 5 * 4 * 3, "only {checked} kernels compared");
    }

    /// The `Avx2Vnni` kernels do the AVX-512 kernels' arithmetic lane for lane, so they
    /// must agree with them bit for bit, at every row-block size, in both encodings (the
    /// VEX and EVEX instances are one `avx2_vnni::kernels!` source; each runs where the
    /// CPU has it). Against the portable kernels, whose f32 steps differ, only closely.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_vnni_kernels_equal_avx512_bit_for_bit() {
        let instances: Vec<(bool, &str)> = [(true, "vex"), (false, "evex")]
            .into_iter()
            .filter(|&(vex, _)| {
                if vex {
                    avx2_vnni::has_vex()
                } else {
                    Isa::Avx512Vnni.is_supported()
                }
            })
            .collect();
        if instances.is_empty() {
            eprintln!("no VNNI on this CPU: nothing to compare");
            return;
        }
        let mut seed = 0x5eed_u32;
        let mut rnd = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 23) as f32 - 1.0
        };
        // Two tiles, three blocks; rows of different magnitudes.
        let (n, k) = (32, 96);
        let a: Vec<f32> = (0..GROUP * k).map(|i| rnd() * (1 + i / k) as f32).collect();
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q8Channel] {
            let x: Vec<f32> = (0..n * k).map(|_| rnd() * 0.1).collect();
            let raw = crate::quant::quantize(dtype, &x, k).expect("quantize");
            let w = pack(dtype, &raw, n, k).expect("pack");
            for act in [ActPrecision::I8, ActPrecision::I16] {
                let mut results: Vec<(&str, Vec<Vec<f32>>)> = instances
                    .iter()
                    .map(|&(vex, name)| {
                        let set = avx2_vnni_set(w.format, act, vex);
                        (name, run(&set, Isa::Avx2Vnni, &w, &a))
                    })
                    .collect();
                // Q8Channel x I16 on AVX-512 keeps whole rows in i32 (`q8c_i16b`), so it
                // rounds differently from the per-block AVX2 kernels: compared closely
                // below, with the portable kernels, instead of bit for bit.
                let whole_row = dtype == DType::Q8Channel && act == ActPrecision::I16;
                let mut close = Vec::new();
                if Isa::Avx512Vnni.is_supported() {
                    let set = select(w.format, act, Isa::Avx512Vnni);
                    let got = run(&set, Isa::Avx512Vnni, &w, &a);
                    if whole_row {
                        close.extend(got);
                    } else {
                        results.push(("avx512", got));
                    }
                }
                let want = &results[0].1[0];
                for (name, per_rows) in &results {
                    for (i, got) in per_rows.iter().enumerate() {
                        assert!(
                            got.iter()
                                .zip(want)
                                .all(|(g, w)| g.to_bits() == w.to_bits()),
                            "{dtype} x {}: {name}'s {}-row kernel differs from {}'s 1-row one",
                            act.name(),
                            1 << i,
                            results[0].0
                        );
                    }
                }
                let set = select(w.format, act, Isa::Portable);
                let portable = &run(&set, Isa::Portable, &w, &a)[0];
                let scale = portable.iter().fold(0f32, |m, v| m.max(v.abs()));
                for got in std::iter::once(want).chain(&close) {
                    let err = got
                        .iter()
                        .zip(portable)
                        .fold(0f32, |m, (g, p)| m.max((g - p).abs()));
                    assert!(
                        err <= 1e-5 * scale,
                        "{dtype} x {}: off the portable kernels by {err} (outputs up to {scale})",
                        act.name()
                    );
                }
            }
        }
    }
}
