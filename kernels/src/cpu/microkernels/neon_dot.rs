//! The AArch64 instructions the NEON microkernels need that Rust's stable intrinsics
//! lack, as one-instruction `asm!` blocks: `sdot`/`udot` by element (Armv8.2
//! FEAT_DotProd; `vdotq_laneq_s32` is still unstable) and `fcvtl` from f16 (`float16x4_t`
//! is unstable). Each block is `pure, nomem`, so the compiler schedules and allocates
//! around it as around an intrinsic.
//!
//! The by-element form is what makes the packed layout (`packed.rs`) work on 128-bit
//! vectors: a weight vector holds 4 bytes of 4 weight rows (one 32-bit lane per row),
//! and `sdot acc.4s, w.16b, a.4b[L]` multiplies every row's 4 bytes by the same 4
//! activation bytes, dword `L` of the activation register, and adds each row's sum into
//! its own lane: `vpdpbusd` with a broadcast operand, one quarter of a tile wide.

use std::arch::aarch64::*;
use std::arch::asm;

/// `acc[i] += sum_j w[4i + j] * a[4L + j]` (signed bytes).
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn sdot_lane<const L: i32>(
    mut acc: int32x4_t,
    w: int8x16_t,
    a: int8x16_t,
) -> int32x4_t {
    // SAFETY: the enclosing function requires FEAT_DotProd; registers only.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

/// `acc[i] += sum_j w[4i + j] * a[4L + j]` (unsigned bytes).
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn udot_lane<const L: i32>(
    mut acc: uint32x4_t,
    w: uint8x16_t,
    a: uint8x16_t,
) -> uint32x4_t {
    // SAFETY: as `sdot_lane`.
    unsafe {
        asm!(
            "udot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

/// Four little-endian f16 values at `p` as f32 (exact).
#[inline]
#[target_feature(enable = "neon")]
pub(super) unsafe fn f16x4(p: *const u8) -> float32x4_t {
    // SAFETY: callers pass 8 readable bytes; `fcvtl` is baseline AArch64.
    unsafe {
        let h = vld1_u16(p as *const u16);
        let out: float32x4_t;
        asm!(
            "fcvtl {o:v}.4s, {h:v}.4h",
            o = lateout(vreg) out,
            h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags)
        );
        out
    }
}

/// Runs `$body` four times with `const $l: i32` = 0, 1, 2, 3: the lane of a
/// by-element dot product must be a constant.
macro_rules! for_lanes {
    ($l:ident, $body:block) => {{
        {
            const $l: i32 = 0;
            $body
        }
        {
            const $l: i32 = 1;
            $body
        }
        {
            const $l: i32 = 2;
            $body
        }
        {
            const $l: i32 = 3;
            $body
        }
    }};
}
pub(crate) use for_lanes;
