//! NEON tiles of the integer bidirectional attention (`attention_i8.rs` says what runs
//! when): `Isa::NeonDot`, AArch64 with the dot-product extension. The AVX-512 kernel's
//! shape (`attention_i8_avx512.rs`) on 128-bit vectors:
//!
//! - [`NeonPanel`]: one KV head's K rows quantized per row and laid out
//!   `[dim/4][key][4]` (4 keys x 4 dims a vector; the dims padded with zeros to a
//!   multiple of 16, so a query row is whole 16-byte registers), V quantized per
//!   channel over the keys, stored as `u8 = v + 128` and laid out `[key/4][channel][4]`
//!   (4 channels x 4 keys a vector);
//! - per block of [`SCORE_ROWS`] query rows: the rows quantized to i8, the score tile
//!   (4 rows x 16 keys in 16 accumulators: `sdot` by element takes 4 query bytes out
//!   of a register holding 16, so one load of a query row serves four steps), the
//!   softmax to u8 weights, then `P V` (4 rows x up to 16 channels, `udot` by element
//!   on 4 weights out of a register holding 16).
//!
//! `sdot` multiplies i8 by i8, so the scores need no offset. The softmax weights are
//! u8, and `udot` multiplies u8 by u8: `P V` runs on `v + 128` and subtracts `128 *
//! sum(p)` per row, the softmax's sum. The u32 sums stay below 65536 * 255 * 255 < 2^32
//! (`MAX_I8_ATTENTION_SEQ` keys), and their difference is the i32 the reference
//! computes. The integers are the reference's and the f32 steps the AVX-512 kernel's
//! (scores in base 2, the softmax's `2^x` the same polynomial, fused the same way), so
//! the outputs equal that kernel's.
//!
//! Checked under qemu (the kernel tests); not yet timed on ARM hardware.

use super::attention_i8::{quantize_keys, quantize_values, MAX_PACKED_HEAD_DIM};
use super::attention_neon::first_lanes;
use super::attention_panels::{Args, PanelKernel, RowScratch};
use super::math::POW2_TAYLOR;
use super::microkernels::neon_dot::{for_lanes, sdot_lane, udot_lane};
use crate::reference::quantize_row_i8;
use std::arch::aarch64::*;
use std::f32::consts::LOG2_E;
use std::ops::Range;

/// Keys per score step (four vectors of 4), and the unit the keys are padded to.
const KEY_STEP: usize = 16;
/// Query rows per score tile and per value tile (16 accumulators).
const SCORE_ROWS: usize = 4;
/// Widest value pass in vectors of 4 channels.
const PASS_VECTORS: usize = 4;

/// Where one KV head's packed K and V live inside its panel (byte offsets, each a
/// multiple of 64).
#[derive(Clone, Copy, Debug)]
pub(super) struct NeonPanel {
    hd: usize,
    /// `hd` padded to 16 (zero dims).
    hd16: usize,
    /// Keys padded to [`KEY_STEP`] (zero keys and zero weights past `seq`).
    npad: usize,
    /// `[hd16 / 4][npad][4]` i8: dims `4g..4g+4` of key `j` at `(g * npad + j) * 4`.
    kt: usize,
    /// `[npad]` f32: each key row's scale.
    sk: usize,
    /// `[npad / 4][hd][4]` u8 `v + 128`: keys `4g..4g+4` of channel `c` at
    /// `(g * hd + c) * 4`.
    vt: usize,
    /// `[hd]` f32: each channel's scale.
    sv: usize,
    bytes: usize,
}

impl NeonPanel {
    /// The panel of sequences of `seq` rows and heads of `hd` (a multiple of 4, at most
    /// `MAX_PACKED_HEAD_DIM`).
    pub(super) fn new(seq: usize, hd: usize) -> Self {
        debug_assert!(hd.is_multiple_of(4) && hd <= MAX_PACKED_HEAD_DIM);
        let at64 = |x: usize| x.next_multiple_of(64);
        let hd16 = hd.next_multiple_of(16);
        let npad = seq.next_multiple_of(KEY_STEP);
        let kt = 0;
        let sk = at64(kt + hd16 * npad);
        let vt = at64(sk + 4 * npad);
        let sv = at64(vt + npad * hd);
        let bytes = at64(sv + 4 * hd);
        NeonPanel {
            hd,
            hd16,
            npad,
            kt,
            sk,
            vt,
            sv,
            bytes,
        }
    }
}

impl PanelKernel for NeonPanel {
    fn panel_bytes(&self) -> usize {
        self.bytes
    }
    /// [`SCORE_ROWS`] quantized query rows (`hd16` bytes each), their scores (`npad`
    /// f32 each) and u8 weights (`npad` bytes each).
    fn scratch_bytes(&self) -> [usize; 3] {
        [
            SCORE_ROWS * self.hd16,
            SCORE_ROWS * self.npad * 4,
            SCORE_ROWS * self.npad,
        ]
    }
    /// KV head `g` of sequence `b` into the zeroed panel (the reference's quantization).
    unsafe fn pack(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
        let (hd, npad) = (self.hd, self.npad);
        let (kt, rest) = panel.split_at_mut(self.sk);
        let (sk, rest) = rest.split_at_mut(self.vt - self.sk);
        let (vt, sv) = rest.split_at_mut(self.sv - self.vt);
        let sk: &mut [f32] = bytemuck::cast_slice_mut(&mut sk[..4 * npad]);
        let sv: &mut [f32] = bytemuck::cast_slice_mut(&mut sv[..4 * hd]);
        quantize_keys(a, b, g, hd, sk, |j, row| {
            for (d4, w) in row.chunks_exact(4).enumerate() {
                let o = (d4 * npad + j) * 4;
                kt[o..o + 4].copy_from_slice(bytemuck::cast_slice(w));
            }
        });
        quantize_values(a, b, g, hd, sv, |d, column| {
            for (j, &x) in column.iter().enumerate() {
                vt[(j / 4 * hd + d) * 4 + j % 4] = x as u8 ^ 0x80;
            }
        });
    }
    unsafe fn rows(
        &self,
        a: &Args,
        b: usize,
        h: usize,
        rows: Range<usize>,
        panel: &[u8],
        sc: &mut RowScratch,
    ) {
        // SAFETY: the trait's contract; `NeonPanel` runs only on `Isa::NeonDot`
        // (FEAT_DotProd).
        unsafe { row_block(self, a, b, h, rows, panel, sc) }
    }
}

/// Query rows `rows` of head `h` of sequence `b` against the head's packed `panel`;
/// writes their outputs.
///
/// # Safety
/// NEON with the dot-product extension; `panel` was packed for this head's KV head; the
/// scratch holds `scratch_bytes`; no other task writes these output rows' head columns.
#[target_feature(enable = "neon,dotprod")]
unsafe fn row_block(
    p: &NeonPanel,
    a: &Args,
    b: usize,
    h: usize,
    rows: Range<usize>,
    panel: &[u8],
    sc: &mut RowScratch,
) {
    let p = *p;
    let (hd, hd16, npad) = (p.hd, p.hd16, p.npad);
    let base = panel.as_ptr();
    let qq = sc.q.as_mut_ptr() as *mut i8;
    let s = sc.s.as_mut_ptr() as *mut f32;
    let pr = sc.p.as_mut_ptr() as *mut u8;
    let mut i0 = rows.start;
    while i0 < rows.end {
        let mr = (rows.end - i0).min(SCORE_ROWS);
        // The query scales times log2 e: scores come out in base 2.
        let mut c = [0f32; SCORE_ROWS];
        let mut mx = [vdupq_n_f32(f32::NEG_INFINITY); SCORE_ROWS];
        // SAFETY (whole body): query rows i0..i0+mr exist; scratch and panel offsets
        // stay inside the sizes the caller fitted (`NeonPanel`).
        unsafe {
            for (r, c) in c.iter_mut().enumerate().take(mr) {
                let x = (b * a.seq + i0 + r) * a.q_stride + h * hd;
                let row = std::slice::from_raw_parts_mut(qq.add(r * hd16), hd16);
                row[hd..].fill(0);
                *c = quantize_row_i8(&a.q[x..x + hd], &mut row[..hd]) * a.scale * LOG2_E;
            }
            for j0 in (0..npad).step_by(KEY_STEP) {
                match mr {
                    4 => score_tile::<4>(qq, &c, base, &p, a.seq, j0, s, &mut mx),
                    3 => score_tile::<3>(qq, &c, base, &p, a.seq, j0, s, &mut mx),
                    2 => score_tile::<2>(qq, &c, base, &p, a.seq, j0, s, &mut mx),
                    _ => score_tile::<1>(qq, &c, base, &p, a.seq, j0, s, &mut mx),
                }
            }
            let mut sums = [(0u32, 0f32); SCORE_ROWS];
            for (r, sum) in sums.iter_mut().enumerate().take(mr) {
                let m = vmaxvq_f32(mx[r]);
                *sum = softmax_u8(s.add(r * npad), m, a.seq, npad, pr.add(r * npad));
            }
            let out = a.out.at((b * a.seq + i0) * a.qw + h * hd);
            let mut c0 = 0;
            while c0 < hd {
                let nv = ((hd - c0) / 4).min(PASS_VECTORS);
                let job = ValueJob {
                    pr: pr.cast_const(),
                    sums: &sums,
                    panel: base,
                    p: &p,
                    seq: a.seq,
                    c0,
                    out,
                    qw: a.qw,
                };
                match nv {
                    4 => value_pass::<4>(mr, job),
                    3 => value_pass::<3>(mr, job),
                    2 => value_pass::<2>(mr, job),
                    _ => value_pass::<1>(mr, job),
                }
                c0 += 4 * nv;
            }
        }
        i0 += mr;
    }
}

/// Scores of `MR` quantized rows against keys `j0..j0 + 16`: `sum q k * c[r] * sk[j]`,
/// stored to row `r` of `s` (`npad` apart); `mx[r]` keeps the running max over the
/// keys `< seq`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
#[allow(clippy::too_many_arguments)]
unsafe fn score_tile<const MR: usize>(
    qq: *const i8,
    c: &[f32; SCORE_ROWS],
    panel: *const u8,
    p: &NeonPanel,
    seq: usize,
    j0: usize,
    s: *mut f32,
    mx: &mut [float32x4_t; SCORE_ROWS],
) {
    let (hd16, npad) = (p.hd16, p.npad);
    let mut acc = [[vdupq_n_s32(0); 4]; MR];
    // SAFETY (whole body): dim groups < hd16 / 4 and keys j0..j0+16 <= npad inside the
    // panel, query rows of hd16 bytes, score rows of npad floats.
    unsafe {
        let kt = panel.add(p.kt) as *const i8;
        for g16 in 0..hd16 / 16 {
            let q: [int8x16_t; MR] = std::array::from_fn(|r| vld1q_s8(qq.add(r * hd16 + 16 * g16)));
            for_lanes!(L, {
                let kp = kt.add(((4 * g16 + L as usize) * npad + j0) * 4);
                let k: [int8x16_t; 4] = std::array::from_fn(|v| vld1q_s8(kp.add(16 * v)));
                for (acc, &q) in acc.iter_mut().zip(&q) {
                    for (acc, &k) in acc.iter_mut().zip(&k) {
                        *acc = sdot_lane::<L>(*acc, k, q);
                    }
                }
            });
        }
        let sk = panel.add(p.sk) as *const f32;
        for (r, acc) in acc.iter().enumerate() {
            let cr = vdupq_n_f32(c[r]);
            for (v, &acc) in acc.iter().enumerate() {
                let j = j0 + 4 * v;
                let x = vmulq_f32(vmulq_f32(vcvtq_f32_s32(acc), cr), vld1q_f32(sk.add(j)));
                vst1q_f32(s.add(r * npad + j), x);
                let m = vmaxq_f32(mx[r], x);
                mx[r] = if j + 4 <= seq {
                    m
                } else {
                    vbslq_f32(first_lanes(seq.saturating_sub(j)), m, mx[r])
                };
            }
        }
    }
}

/// `c * 2^t` per lane for `t` in `[-30, 0]` (clamped): `attention_avx512::pow2_ps` on
/// 4 lanes, `2^n` built from its exponent bits.
#[inline]
#[target_feature(enable = "neon")]
fn pow2(t: float32x4_t, c: f32) -> float32x4_t {
    let t = vminq_f32(vmaxq_f32(t, vdupq_n_f32(-30.0)), vdupq_n_f32(0.0));
    let n = vrndnq_f32(t);
    let f = vsubq_f32(t, n);
    let mut e = vdupq_n_f32(c * POW2_TAYLOR[0]);
    for &k in &POW2_TAYLOR[1..] {
        e = vfmaq_f32(vdupq_n_f32(c * k), e, f);
    }
    let two_n = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(
        vcvtq_s32_f32(n),
        vdupq_n_s32(127),
    )));
    vmulq_f32(e, two_n)
}

/// One row's softmax weights from its base-2 scores and their max `m`: `round(255 *
/// 2^(s - m))` as u8 for keys `< seq`, 0 up to `npad`. Returns the weights' sum and
/// `1 / sum`.
///
/// # Safety
/// `s` holds `npad` floats and `p` `npad` bytes (a multiple of 16).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn softmax_u8(s: *const f32, m: f32, seq: usize, npad: usize, p: *mut u8) -> (u32, f32) {
    let m = vdupq_n_f32(m);
    let mut l = vdupq_n_u32(0);
    for j0 in (0..npad).step_by(16) {
        let q: [uint32x4_t; 4] = std::array::from_fn(|v| {
            let j = j0 + 4 * v;
            // SAFETY: j + 4 <= npad.
            let x = unsafe { vld1q_f32(s.add(j)) };
            // Round half to even, as `vcvtps2dq`; the weights are >= 0.
            let q = vreinterpretq_u32_s32(vcvtnq_s32_f32(pow2(vsubq_f32(x, m), 255.0)));
            vandq_u32(
                vminq_u32(q, vdupq_n_u32(255)),
                first_lanes(seq.saturating_sub(j)),
            )
        });
        for &q in &q {
            l = vaddq_u32(l, q);
        }
        let h = [
            vcombine_u16(vmovn_u32(q[0]), vmovn_u32(q[1])),
            vcombine_u16(vmovn_u32(q[2]), vmovn_u32(q[3])),
        ];
        // SAFETY: j0 + 16 <= npad.
        unsafe { vst1q_u8(p.add(j0), vcombine_u8(vmovn_u16(h[0]), vmovn_u16(h[1]))) };
    }
    let l = vaddvq_u32(l);
    (l, 1.0 / l as f32)
}

/// What one value tile reads and writes.
#[derive(Clone, Copy)]
struct ValueJob<'a> {
    /// The rows' u8 weights, `npad` apart.
    pr: *const u8,
    /// The rows' weight sums and their inverses.
    sums: &'a [(u32, f32); SCORE_ROWS],
    panel: *const u8,
    p: &'a NeonPanel,
    seq: usize,
    /// The tile's first channel.
    c0: usize,
    /// The first row's head columns; row `r` at `r * qw`.
    out: *mut f32,
    qw: usize,
}

/// The value tile of `mr` rows.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn value_pass<const NV: usize>(mr: usize, job: ValueJob) {
    // SAFETY: the caller's, for `value_tile`.
    unsafe {
        match mr {
            4 => value_tile::<4, NV>(job),
            3 => value_tile::<3, NV>(job),
            2 => value_tile::<2, NV>(job),
            _ => value_tile::<1, NV>(job),
        }
    }
}

/// `P V` for `MR` rows over channels `c0 .. c0 + 4 NV` (of `hd`): `sum_j p[j] (v[j][c]
/// + 128) - 128 sum_j p[j]` over the keys `< seq`, times the channel's scale and the
/// row's `1 / sum p`, written to `out` (row `r` at `r * qw`, channel `c` at `c`).
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn value_tile<const MR: usize, const NV: usize>(job: ValueJob) {
    let ValueJob {
        pr,
        sums,
        panel,
        p,
        seq,
        c0,
        out,
        qw,
    } = job;
    let (hd, npad) = (p.hd, p.npad);
    let mut acc = [[vdupq_n_u32(0); NV]; MR];
    // SAFETY (whole body): key groups < npad / 4, channels c0 + 4 NV <= hd, weight rows
    // of npad bytes; outputs inside the rows' head columns.
    unsafe {
        let vt = panel.add(p.vt);
        for g16 in 0..seq.div_ceil(16) {
            let w: [uint8x16_t; MR] =
                std::array::from_fn(|r| vld1q_u8(pr.add(r * npad + 16 * g16)));
            for_lanes!(L, {
                let vp = vt.add(((4 * g16 + L as usize) * hd + c0) * 4);
                let v: [uint8x16_t; NV] = std::array::from_fn(|n| vld1q_u8(vp.add(16 * n)));
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    for (acc, &v) in acc.iter_mut().zip(&v) {
                        *acc = udot_lane::<L>(*acc, v, w);
                    }
                }
            });
        }
        let sv = panel.add(p.sv) as *const f32;
        for (r, acc) in acc.iter().enumerate() {
            let (l, inv_l) = sums[r];
            let offset = vdupq_n_u32(128 * l);
            let il = vdupq_n_f32(inv_l);
            for (n, &acc) in acc.iter().enumerate() {
                let c = c0 + 4 * n;
                // Wrapping u32 arithmetic: the difference is the exact i32 sum.
                let dot = vreinterpretq_s32_u32(vsubq_u32(acc, offset));
                let x = vmulq_f32(vmulq_f32(vcvtq_f32_s32(dot), vld1q_f32(sv.add(c))), il);
                vst1q_f32(out.add(r * qw + c), x);
            }
        }
    }
}
