//! The driver of the panel-based bidirectional attention kernels (the integer one,
//! `attention_i8.rs`, and the f16 one, `attention_f16.rs`). Per sequence, two phases on
//! the pool:
//!
//! 1. per KV head, its panel: K and V converted once into the layout the kernel's
//!    products stream (a [`PanelKernel`] says which and how large);
//! 2. per (head, block of query rows): the rows converted, the scores, the softmax,
//!    `P V`, and the outputs written.
//!
//! The panels of one sequence are the calling thread's, reused across calls; each pool
//! thread has its own phase-2 scratch.

use super::attention_qkv::{Qkv, QkvShape};
use super::{pool, SendPtr};
use std::cell::RefCell;
use std::ops::Range;

/// Query rows per phase-2 task.
const ROW_BLOCK: usize = 32;

/// 64 bytes on a 64-byte boundary: the unit of every buffer here, so each vector load
/// of a panel row is one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line([u8; 64]);

/// One call's arguments, shared by its tasks.
pub(super) struct Args<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub seq: usize,
    /// Query rows (whole sequences).
    pub rows: usize,
    /// The output's row width, `n_heads * head_dim`.
    pub qw: usize,
    /// Row strides of q and of k and v ([`Qkv`]).
    pub q_stride: usize,
    pub kw: usize,
    pub group: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub scale: f32,
    /// The output, `q`'s shape; task (head, rows) alone writes its rows' head columns.
    pub out: SendPtr,
}

impl<'a> Args<'a> {
    /// A call's arguments after `Qkv::check` gave their `shape`.
    pub(super) fn new(
        qkv: Qkv<'a>,
        seq: usize,
        shape: QkvShape,
        n_heads: usize,
        n_kv_heads: usize,
        scale: f32,
        out: &'a mut [f32],
    ) -> Self {
        Args {
            q: qkv.q,
            k: qkv.k,
            v: qkv.v,
            seq,
            rows: shape.rows,
            qw: shape.qw,
            q_stride: qkv.q_stride,
            kw: qkv.kv_stride,
            group: n_heads / n_kv_heads,
            n_heads,
            n_kv_heads,
            scale,
            out: SendPtr(out.as_mut_ptr()),
        }
    }
}

/// Per-thread scratch of phase 2, grown on demand to [`PanelKernel::scratch_bytes`].
#[derive(Default)]
pub(super) struct RowScratch {
    /// The converted query rows.
    pub q: Vec<Line>,
    /// Scores.
    pub s: Vec<Line>,
    /// Softmax weights.
    pub p: Vec<Line>,
}

/// One arithmetic of the panel attention.
pub(super) trait PanelKernel: Sync {
    /// Bytes of one KV head's panel (a multiple of 64).
    fn panel_bytes(&self) -> usize;
    /// Bytes of the phase-2 scratch buffers `[q, s, p]`.
    fn scratch_bytes(&self) -> [usize; 3];
    /// Phase 1: KV head `g` of sequence `b` into `panel` (zeroed, 64-byte aligned,
    /// `panel_bytes` long).
    ///
    /// # Safety
    /// The CPU has the features the kernel was chosen for; `a`'s slices hold sequence
    /// `b`.
    unsafe fn pack(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]);
    /// Phase 2: query rows `rows` (at most a row block) of head `h` of sequence `b`
    /// against its KV head's `panel`; writes their outputs.
    ///
    /// # Safety
    /// As `pack`, and `panel` was packed by it; the scratch holds `scratch_bytes`; no
    /// other task writes these output rows' head columns.
    unsafe fn rows(
        &self,
        a: &Args,
        b: usize,
        h: usize,
        rows: Range<usize>,
        panel: &[u8],
        sc: &mut RowScratch,
    );
}

fn fit(v: &mut Vec<Line>, bytes: usize) {
    let lines = bytes.div_ceil(64);
    if v.len() < lines {
        v.resize(lines, Line([0; 64]));
    }
}

thread_local! {
    /// The calling thread's panels (one sequence's KV heads), reused across calls.
    static PANELS: RefCell<Vec<Line>> = const { RefCell::new(Vec::new()) };
    static ROWS: RefCell<RowScratch> = RefCell::new(RowScratch::default());
}

/// Runs every sequence of `a` with `kernel`.
///
/// # Safety
/// The CPU has the features `kernel` needs; `a` was checked (whole sequences, matching
/// k/v/out).
pub(super) unsafe fn run<K: PanelKernel>(a: &Args, kernel: &K) {
    for b in 0..a.rows / a.seq {
        // SAFETY: the caller's contract.
        unsafe { run_sequence(a, kernel, b) };
    }
}

/// Sequence `b`: every KV head's panel, then every (head, row block).
///
/// # Safety
/// As [`run`].
unsafe fn run_sequence<K: PanelKernel>(a: &Args, kernel: &K, b: usize) {
    let pb = kernel.panel_bytes();
    PANELS.with(|panels| {
        let panels = &mut *panels.borrow_mut();
        fit(panels, a.n_kv_heads * pb);
        let base = panels.as_mut_ptr() as usize;
        pool::for_each(a.n_kv_heads, |g| {
            // SAFETY: task g alone writes panel g (pb bytes at g * pb, inside the
            // buffer); the features are the caller's contract (`run`).
            unsafe {
                let panel = std::slice::from_raw_parts_mut((base + g * pb) as *mut u8, pb);
                panel.fill(0);
                kernel.pack(a, b, g, panel);
            }
        });
        let blocks = a.seq.div_ceil(ROW_BLOCK);
        let [qb, sb, pbytes] = kernel.scratch_bytes();
        pool::for_each(a.n_heads * blocks, |id| {
            let (h, rb) = (id / blocks, id % blocks);
            let g = h / a.group;
            let i0 = rb * ROW_BLOCK;
            let i1 = (i0 + ROW_BLOCK).min(a.seq);
            ROWS.with(|sc| {
                let sc = &mut *sc.borrow_mut();
                fit(&mut sc.q, qb);
                fit(&mut sc.s, sb);
                fit(&mut sc.p, pbytes);
                // SAFETY: panel g was written by phase 1 and is only read now; the
                // task writes rows i0..i1 of head h only.
                unsafe {
                    let panel = std::slice::from_raw_parts((base + g * pb) as *const u8, pb);
                    kernel.rows(a, b, h, i0..i1, panel, sc);
                }
            });
        });
    });
}
