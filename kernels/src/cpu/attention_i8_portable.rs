//! The integer bidirectional attention's portable panel kernel (`attention_i8.rs` says
//! what runs when): the portable path, and head sizes that are not a multiple of 4 (no
//! real model's). Plain Rust that the compiler vectorizes, run per (head, row block) on
//! the pool by the panel driver, where the reference runs one scalar loop on one
//! thread.
//!
//! The panel keeps K row-major (a score is one contiguous dot product of `hd` bytes)
//! and V transposed, channel-major (an output is one contiguous dot product of `seq`
//! weights). Quantization, the products and every f32 step are the reference's, in its
//! order; only `exp` is `math::exp` (within 2 ulp of libm, and vectorizable), which may
//! round a softmax weight to the neighbouring u8, as the IR allows.

use super::attention_i8::{quantize_keys, quantize_values};
use super::attention_panels::{Args, PanelKernel, RowScratch};
use super::math;
use crate::reference::{quantize_prob, quantize_row_i8};
use std::ops::Range;

/// One KV head's panel: byte offsets, each a multiple of 64.
#[derive(Clone, Copy, Debug)]
pub(super) struct PortablePanel {
    hd: usize,
    seq: usize,
    /// `[seq][hd]` i8: the key rows, each quantized with its own scale.
    kq: usize,
    /// `[seq]` f32: the key rows' scales.
    sk: usize,
    /// `[hd][seq]` i8: the value channels, each quantized over the keys.
    vt: usize,
    /// `[hd]` f32: the channels' scales.
    sv: usize,
    bytes: usize,
}

impl PortablePanel {
    pub(super) fn new(seq: usize, hd: usize) -> Self {
        let at64 = |x: usize| x.next_multiple_of(64);
        let kq = 0;
        let sk = at64(kq + seq * hd);
        let vt = at64(sk + 4 * seq);
        let sv = at64(vt + hd * seq);
        let bytes = at64(sv + 4 * hd);
        PortablePanel {
            hd,
            seq,
            kq,
            sk,
            vt,
            sv,
            bytes,
        }
    }

    /// Packs KV head `g` of sequence `b` (the reference's quantization).
    fn pack_generic(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
        let (hd, seq) = (self.hd, self.seq);
        let (k_part, rest) = panel.split_at_mut(self.sk);
        let (sk_part, rest) = rest.split_at_mut(self.vt - self.sk);
        let (vt_part, sv_part) = rest.split_at_mut(self.sv - self.vt);
        let kq: &mut [i8] = bytemuck::cast_slice_mut(&mut k_part[..seq * hd]);
        let sk: &mut [f32] = bytemuck::cast_slice_mut(&mut sk_part[..4 * seq]);
        quantize_keys(a, b, g, hd, sk, |j, row| {
            kq[j * hd..(j + 1) * hd].copy_from_slice(row)
        });
        let vt: &mut [i8] = bytemuck::cast_slice_mut(&mut vt_part[..hd * seq]);
        let sv: &mut [f32] = bytemuck::cast_slice_mut(&mut sv_part[..4 * hd]);
        quantize_values(a, b, g, hd, sv, |d, column| {
            vt[d * seq..(d + 1) * seq].copy_from_slice(column)
        });
    }

    /// Query rows `rows` of head `h` of sequence `b`, one at a time.
    ///
    /// # Safety
    /// The panel driver's (`PanelKernel::rows`): the scratch holds `scratch_bytes`, and
    /// no other task writes these rows' head `h` columns.
    #[inline(always)]
    unsafe fn rows_generic(
        &self,
        a: &Args,
        b: usize,
        h: usize,
        rows: Range<usize>,
        panel: &[u8],
        sc: &mut RowScratch,
    ) {
        let (hd, seq) = (self.hd, self.seq);
        let kq: &[i8] = bytemuck::cast_slice(&panel[self.kq..self.kq + seq * hd]);
        let sk: &[f32] = bytemuck::cast_slice(&panel[self.sk..self.sk + 4 * seq]);
        let vt: &[i8] = bytemuck::cast_slice(&panel[self.vt..self.vt + hd * seq]);
        let sv: &[f32] = bytemuck::cast_slice(&panel[self.sv..self.sv + 4 * hd]);
        // SAFETY: the scratch lines hold `scratch_bytes` (the driver's `fit`), 64-byte
        // aligned, and are this task's alone.
        let (qq, s, p) = unsafe {
            (
                std::slice::from_raw_parts_mut(sc.q.as_mut_ptr() as *mut i8, hd),
                std::slice::from_raw_parts_mut(sc.s.as_mut_ptr() as *mut f32, seq),
                std::slice::from_raw_parts_mut(sc.p.as_mut_ptr() as *mut u8, seq),
            )
        };
        for i in rows {
            let (t, col) = (b * a.seq + i, h * hd);
            let row = t * a.q_stride + col;
            let c = quantize_row_i8(&a.q[row..row + hd], qq) * a.scale;
            for (j, s) in s.iter_mut().enumerate() {
                *s = dot_i8(qq, &kq[j * hd..(j + 1) * hd]) as f32 * c * sk[j];
            }
            let m = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            for (p, &s) in p.iter_mut().zip(s.iter()) {
                *p = quantize_prob(math::exp(s - m));
            }
            let l: i32 = p.iter().map(|&p| i32::from(p)).sum();
            let inv_l = 1.0 / l as f32;
            for d in 0..hd {
                let acc = dot_u8_i8(p, &vt[d * seq..(d + 1) * seq]);
                // SAFETY: this task alone writes head h's columns of rows `rows` (the
                // panel driver's contract); the value is inside `out` ([rows, qw]).
                unsafe { *a.out.0.add(t * a.qw + col + d) = acc as f32 * sv[d] * inv_l };
            }
        }
    }
}

/// `sum a b` of two i8 slices in i32 (|sum| <= hd * 127^2: exact).
#[inline(always)]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// `sum p v` of u8 weights and i8 values in i32 (<= seq * 255 * 127: exact below
/// 66k keys, past `MAX_I8_ATTENTION_SEQ`).
#[inline(always)]
fn dot_u8_i8(p: &[u8], v: &[i8]) -> i32 {
    p.iter()
        .zip(v)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

impl PanelKernel for PortablePanel {
    fn panel_bytes(&self) -> usize {
        self.bytes
    }
    /// One quantized query row, its scores and its u8 weights.
    fn scratch_bytes(&self) -> [usize; 3] {
        [self.hd, 4 * self.seq, self.seq]
    }
    unsafe fn pack(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
        self.pack_generic(a, b, g, panel)
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
        // SAFETY: the trait's contract.
        unsafe { self.rows_generic(a, b, h, rows, panel, sc) }
    }
}
