//! Integer bidirectional attention (`AttentionPrecision::I8`, the ViT's w8a8) on the
//! CPU: the arithmetic of `reference::attention_bidirectional_i8`, with VNNI dot
//! products for both `Q K^T` and `P V`. Per sequence, two phases on the pool:
//!
//! 1. per KV head, its [`Panel`]: K quantized per row and laid out for `vpdpbusd` (16
//!    keys x 4 dims a vector), V quantized per channel over the keys and laid out the
//!    other way (16 channels x 4 keys a vector);
//! 2. per (head, block of query rows): the rows quantized (as `u8 = q + 128`: `vpdpbusd`
//!    multiplies u8 by i8, and `128 * sum(k)` per key is subtracted after), the scores
//!    in i32, the softmax's u8 weights, `P V` in i32 (`attention_i8_avx512.rs`).
//!
//! The integers equal the reference's (same products, same round-half-to-even); only
//! `exp` differs, which can move a weight to the neighbouring u8. Without AVX-512 VNNI,
//! or with a head_dim that is not a multiple of 4, the reference's loop runs.

use super::{isa, pool, Isa, SendPtr};
use crate::reference::{self, check_bidirectional_args, KernelError, MAX_I8_ATTENTION_SEQ};
use std::cell::RefCell;

/// Keys per score step (two vectors of 16).
pub(super) const KEY_STEP: usize = 32;
/// The widest head the packing's stack rows take.
pub(super) const MAX_PACKED_HEAD_DIM: usize = 256;
/// Query rows per phase-2 task.
const ROW_BLOCK: usize = 32;
/// Query rows per score tile (16 accumulators: 8 rows x 2 key vectors).
pub(super) const SCORE_ROWS: usize = 8;

/// 64 bytes on a 64-byte boundary: the unit of every buffer here, so each vector load
/// of a panel row is one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line([u8; 64]);

/// Where one KV head's packed K and V live inside its panel (byte offsets, each a
/// multiple of 64).
#[derive(Clone, Copy, Debug)]
pub(super) struct Panel {
    pub hd: usize,
    /// Keys padded to [`KEY_STEP`] (zero keys: score 0, masked out of the softmax).
    pub npad: usize,
    /// Channels padded to 16.
    pub cpad: usize,
    /// `[hd / 4][npad][4]` i8: dims `4g..4g+4` of key `j` at `(g * npad + j) * 4`.
    pub kt: usize,
    /// `[npad]` i32: `128 * sum_d k[j][d]`, the `u8 = q + 128` correction.
    pub ksum: usize,
    /// `[npad]` f32: each key row's scale.
    pub sk: usize,
    /// `[npad / 4][cpad][4]` i8: keys `4g..4g+4` of channel `c` at `(g * cpad + c) * 4`.
    pub vt: usize,
    /// `[cpad]` f32: each channel's scale.
    pub sv: usize,
    /// Bytes of one panel.
    pub bytes: usize,
}

impl Panel {
    fn new(seq: usize, hd: usize) -> Self {
        let npad = seq.next_multiple_of(KEY_STEP);
        let cpad = hd.next_multiple_of(16);
        let kt = 0;
        let ksum = kt + hd * npad;
        let sk = ksum + 4 * npad;
        let vt = sk + 4 * npad;
        let sv = vt + npad * cpad;
        let bytes = (sv + 4 * cpad).next_multiple_of(64);
        Panel {
            hd,
            npad,
            cpad,
            kt,
            ksum,
            sk,
            vt,
            sv,
            bytes,
        }
    }
}

/// Per-thread scratch of phase 2, grown on demand.
#[derive(Default)]
pub(super) struct RowScratch {
    /// [`SCORE_ROWS`] quantized query rows (`u8 = q + 128`, `hd` bytes each).
    pub qu: Vec<Line>,
    /// Scores, [`SCORE_ROWS`] x `npad` f32.
    pub s: Vec<Line>,
    /// Softmax weights, [`SCORE_ROWS`] x `npad` u8.
    pub p: Vec<Line>,
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

/// Bidirectional attention with integer products (`Op::Attention`,
/// `AttentionPrecision::I8`): `q [B * seq, n_heads * head_dim]`, `k, v [B * seq,
/// n_kv_heads * head_dim]`, as `reference::attention_bidirectional_i8` defines it.
#[allow(clippy::too_many_arguments)]
pub fn attention_bidirectional_i8(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let (qw, kw, rows) =
        check_bidirectional_args(q, k, v, seq, n_heads, n_kv_heads, head_dim, out)?;
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512Vnni
        && head_dim.is_multiple_of(4)
        && head_dim <= MAX_PACKED_HEAD_DIM
        && seq <= MAX_I8_ATTENTION_SEQ
    {
        let a = Args {
            q,
            k,
            v,
            seq,
            qw,
            kw,
            group: n_heads / n_kv_heads,
            n_heads,
            n_kv_heads,
            scale,
            panel: Panel::new(seq, head_dim),
            out: SendPtr(out.as_mut_ptr()),
        };
        for b in 0..rows / seq {
            run_sequence(&a, b);
        }
        return Ok(());
    }
    let _ = (qw, kw, rows);
    reference::attention_bidirectional_i8(q, k, v, seq, n_heads, n_kv_heads, head_dim, scale, out)
}

/// One call's arguments, shared by its tasks.
#[allow(dead_code)]
pub(super) struct Args<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub seq: usize,
    pub qw: usize,
    pub kw: usize,
    pub group: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub scale: f32,
    pub panel: Panel,
    /// The output, `q`'s shape; task (head, rows) alone writes its rows' head columns.
    pub out: SendPtr,
}

/// Sequence `b`: every KV head's panel, then every (head, row block).
#[cfg(target_arch = "x86_64")]
fn run_sequence(a: &Args, b: usize) {
    let pb = a.panel.bytes;
    PANELS.with(|panels| {
        let panels = &mut *panels.borrow_mut();
        fit(panels, a.n_kv_heads * pb);
        let base = panels.as_mut_ptr() as usize;
        pool::for_each(a.n_kv_heads, |g| {
            // SAFETY: task g alone writes panel g (pb bytes at g * pb, inside the
            // buffer); isa() reported AVX-512 VNNI.
            unsafe {
                let panel = std::slice::from_raw_parts_mut((base + g * pb) as *mut u8, pb);
                super::attention_i8_avx512::pack_panel(a, b, g, panel);
            }
        });
        let blocks = a.seq.div_ceil(ROW_BLOCK);
        pool::for_each(a.n_heads * blocks, |id| {
            let (h, rb) = (id / blocks, id % blocks);
            let g = h / a.group;
            let i0 = rb * ROW_BLOCK;
            let i1 = (i0 + ROW_BLOCK).min(a.seq);
            ROWS.with(|sc| {
                let sc = &mut *sc.borrow_mut();
                fit(&mut sc.qu, SCORE_ROWS * a.panel.hd);
                fit(&mut sc.s, SCORE_ROWS * a.panel.npad * 4);
                fit(&mut sc.p, SCORE_ROWS * a.panel.npad);
                // SAFETY: panel g was written by phase 1 and is only read now; the
                // task writes rows i0..i1 of head h only; AVX-512 VNNI as above.
                unsafe {
                    let panel = std::slice::from_raw_parts((base + g * pb) as *const u8, pb);
                    super::attention_i8_avx512::row_block(a, b, h, i0..i1, panel, sc);
                }
            });
        });
    });
}
