//! Decode attention: one query row (the LLM's step after its prefill) over an f32, f16
//! or int8 KV cache, every query head of every KV head in one walk of the cache, with
//! a kernel per x86 vector width (`attention_decode_avx512.rs`,
//! `attention_decode_avx2.rs`). This file cuts the keys into ranges, one per thread,
//! holds each task's running softmax state and merges the ranges.
//!
//! Why not the flash tiles of `attention_f32.rs`: with one row, a KV head has only its
//! GQA group of query vectors (3 for SmolLM2), so transposing each K block for
//! register tiles costs more shuffles than the tile has multiply-adds, and a 4-vector
//! tile wastes a quarter of them on padding. Both kernels instead:
//!
//! - compute **scores** as per-key dot products (one K row widened once, fused
//!   multiply-adds per query head), and fold the keys' partial-sum vectors into
//!   vectors of scores with shuffle trees;
//! - run **the softmax** online over 32-key blocks ([`DKB`]), on the score vectors;
//! - widen each V row once for **`P @ V`** and add it into several query heads'
//!   register accumulators;
//! - read **memory** as a stream: a task walks its range of whole cache rows 4 rows at
//!   a time for every KV head (the K rows by the dot products, the V rows by one load
//!   per line), so each line is first read in address order, which the hardware
//!   prefetchers follow. Read head by head, 128 bytes of every 384-byte row at
//!   SmolLM2's shape, the same bytes came at 9.7 GB/s on one core of this machine
//!   against 23 GB/s in order; the softmax and `P @ V` then run head by head over the
//!   block's rows, which are in L1;
//! - read **int8 rows** (`DType::Q8Head`) as integers and apply their scales to the
//!   scores and the probabilities, not to every value.
//!
//! Results equal `reference::attention` up to f32 rounding (another summation order,
//! fused multiply-adds). `attention_f32` calls this for one-row calls on the AVX2 and
//! AVX-512 paths with `head_dim` 32, 64, 80, 96 or 128.

use super::kv_cache::{KvElem, KvKind};
use super::{Isa, SendPtr};
use std::cell::RefCell;

/// Keys per online-softmax block: two score vectors per query head.
pub(super) const DKB: usize = 32;

/// Whether [`attention_decode`] runs on `path` at this head size.
pub(super) fn supports(path: Isa, head_dim: usize) -> bool {
    matches!(path, Isa::Avx2Fma | Isa::Avx2Vnni | Isa::Avx512Vnni)
        && matches!(head_dim, 32 | 64 | 80 | 96 | 128)
}

/// The decode call's checked arguments: `q` is the row's `n_kv * group` heads of
/// `head_dim` values, the caches' rows are `kw` storage units apart, keys `0..n_keys`
/// are visible.
pub(super) struct DecodeArgs<'a, C> {
    pub q: &'a [f32],
    pub k: &'a [C],
    pub v: &'a [C],
    pub kw: usize,
    pub head_dim: usize,
    pub group: usize,
    pub n_kv: usize,
    pub n_keys: usize,
    pub scale: f32,
}

/// One task's running state for every query head: scaled queries, running max, sum
/// and unnormalised output, and one pass's probabilities.
#[derive(Default)]
pub(super) struct State {
    pub q: Vec<f32>,
    pub m: Vec<f32>,
    pub l: Vec<f32>,
    pub o: Vec<f32>,
    pub p: Vec<f32>,
    /// The kernel's partial scores of a block (its own layout).
    pub w: Vec<f32>,
}

impl State {
    /// Starts a task: the row's queries times `scale`, maxima -inf, sums and outputs 0,
    /// and `p_len`, `w_len` floats of the kernel's scratch.
    pub fn start<C>(&mut self, a: &DecodeArgs<C>, p_len: usize, w_len: usize) {
        let n = a.n_kv * a.group * a.head_dim;
        self.q.clear();
        self.q.extend(a.q[..n].iter().map(|x| x * a.scale));
        self.m.clear();
        self.m.resize(a.n_kv * a.group, f32::NEG_INFINITY);
        self.l.clear();
        self.l.resize(a.n_kv * a.group, 0.0);
        self.o.clear();
        self.o.resize(n, 0.0);
        self.p.resize(p_len, 0.0);
        self.w.resize(w_len, 0.0);
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// `out [n_kv * group * head_dim] = softmax(q k^T * scale) v` for one query row. The
/// keys are cut into ranges of whole 32-key blocks, one per thread; each task walks its
/// range for all heads, and the ranges' partial softmax states are merged by
/// [`super::attention_f32::merge_partials`].
/// `path` is AVX-512 or AVX2; [`supports`] holds for `a.head_dim`.
pub(super) fn attention_decode<C: KvElem>(path: Isa, a: &DecodeArgs<C>, out: &mut [f32]) {
    let (hd, n_heads) = (a.head_dim, a.n_kv * a.group);
    assert!(supports(path, hd) && a.n_keys >= 1 && out.len() >= n_heads * hd);
    assert!(a.q.len() >= n_heads * hd);
    let hl = C::head_len(hd);
    assert!(a.kw >= a.n_kv * hl);
    assert!(a.k.len() >= (a.n_keys - 1) * a.kw + a.n_kv * hl);
    assert!(a.v.len() >= (a.n_keys - 1) * a.kw + a.n_kv * hl);
    let threads = super::pool::current_threads();
    let blocks = a.n_keys.div_ceil(DKB);
    // One range per thread: the longest streams. Four per thread measured 5-10% slower
    // on two threads (each range start is a new stream for the prefetchers).
    let splits = threads.min(blocks);
    let per = blocks.div_ceil(splits) * DKB;
    let splits = a.n_keys.div_ceil(per);
    let pl = super::attention_f32::partial_len(hd);
    let mut partials = vec![0f32; if splits > 1 { n_heads * splits * pl } else { 0 }];
    let (parts, dst) = (SendPtr(partials.as_mut_ptr()), SendPtr(out.as_mut_ptr()));
    super::pool::for_each(splits, |si| {
        STATE.with(|st| {
            let st = &mut *st.borrow_mut();
            let keys = si * per..((si + 1) * per).min(a.n_keys);
            // SAFETY: `path` is one this CPU has (`isa()`); the asserts above bound every
            // row and head the task reads.
            unsafe {
                match path {
                    Isa::Avx512Vnni => super::attention_decode_avx512::walk_range(a, keys, st),
                    _ => super::attention_decode_avx2::walk_range(a, keys, st),
                }
            }
            for h in 0..n_heads {
                let (m, l, o) = (st.m[h], st.l[h], &st.o[h * hd..][..hd]);
                if splits == 1 {
                    // SAFETY: one task: it alone writes the output's n_heads * hd values.
                    let d = unsafe { std::slice::from_raw_parts_mut(dst.at(h * hd), hd) };
                    d.iter_mut().zip(o).for_each(|(d, &x)| *d = x / l);
                } else {
                    // Head h = (g, i) of split si, as `merge_partials` reads them.
                    let (g, i) = (h / a.group, h % a.group);
                    let at = ((g * splits + si) * a.group + i) * pl;
                    // SAFETY: task si owns its heads' partials.
                    let p = unsafe { std::slice::from_raw_parts_mut(parts.at(at), pl) };
                    p[0] = m;
                    p[1] = l;
                    p[2..].copy_from_slice(o);
                }
            }
        })
    });
    if splits > 1 {
        super::attention_f32::merge_partials(hd, a.group, a.n_kv, splits, &partials, out);
    }
}

/// The scales of rows `j0..j0 + N` (those past `nk`: 0) of an int8 head column at `p`
/// (each row's `hd` bytes are followed by its f32 scale); all 1 for float caches,
/// whose kernels multiply by them all the same.
///
/// # Safety
/// Rows `j0..nk` of the column, and their scales, are inside the cache.
#[inline(always)]
pub(super) unsafe fn row_scales<C: KvElem, const N: usize>(
    p: *const C,
    kw: usize,
    hd: usize,
    j0: usize,
    nk: usize,
) -> [f32; N] {
    if C::KIND != KvKind::I8 {
        return [1.0; N];
    }
    let mut s = [0f32; N];
    for (j, s) in s.iter_mut().enumerate().take(nk.saturating_sub(j0)) {
        // SAFETY: row j0 + j < nk is inside the cache; its scale follows its hd bytes.
        *s = unsafe { (p.add((j0 + j) * kw + hd) as *const f32).read_unaligned() };
    }
    s
}

/// One KV head's rows of a block: `nk` rows from `k` and `v` (their first row's head
/// column), `kw` storage units apart.
pub(super) struct Block<C> {
    pub k: *const C,
    pub v: *const C,
    pub kw: usize,
    pub nk: usize,
}

/// The walk both kernels make over a task's keys (see the module doc), in blocks of
/// [`DKB`]: the scores 4 rows at a time for every KV head, `scores(k, n, j, h0, hp)`
/// for `n` rows from K pointer `k` (keys `j..j + n` of the block) and query heads
/// `h0..h0 + hp`, with the V rows' lines touched in the same order; then per KV head
/// the softmax and `P @ V`, `values(b, h0, hp)` over [`Block`] `b`. At most `per_pass`
/// query heads a call. A macro, so that the kernels' calls inline under their own
/// target features.
macro_rules! walk_blocks {
    (
        $c:ty, $a:expr, $keys:expr, $head_dim:expr, $per_pass:expr,
        scores($k:ident, $n:ident, $j:ident, $h0:ident, $hp:ident) => $scores:expr,
        values($b:ident, $vh0:ident, $vhp:ident) => $values:expr $(,)?
    ) => {{
        let (a, keys, per_pass) = ($a, $keys, $per_pass);
        let hl = <$c as KvElem>::head_len($head_dim);
        let row_bytes = a.kw * std::mem::size_of::<$c>();
        for j0 in keys.clone().step_by(DKB) {
            let nk = DKB.min(keys.end - j0);
            // SAFETY (both phases): rows j0..j0 + nk < n_keys and every head's columns
            // are inside the caches (asserted by `attention_decode`); heads < n_heads
            // are inside the task's state.
            unsafe {
                // Scores, 4 rows at a time, every head: each line is first read in
                // address order (K by the dot products, V by one load per line).
                for quad in 0..nk.div_ceil(4) {
                    let ($j, $n) = (4 * quad, (nk - 4 * quad).min(4));
                    for g in 0..a.n_kv {
                        let $k = a.k.as_ptr().add((j0 + $j) * a.kw + g * hl);
                        for $h0 in (g * a.group..(g + 1) * a.group).step_by(per_pass) {
                            let $hp = per_pass.min((g + 1) * a.group - $h0);
                            $scores;
                        }
                    }
                    let v = a.v.as_ptr().add((j0 + $j) * a.kw) as *const u8;
                    for off in (0..$n * row_bytes).step_by(64) {
                        std::ptr::read_volatile(v.add(off));
                    }
                }
                // Softmax and P @ V, head by head (the block's rows are in L1 now).
                for g in 0..a.n_kv {
                    let at = j0 * a.kw + g * hl;
                    let $b = Block {
                        k: a.k.as_ptr().add(at),
                        v: a.v.as_ptr().add(at),
                        kw: a.kw,
                        nk,
                    };
                    for $vh0 in (g * a.group..(g + 1) * a.group).step_by(per_pass) {
                        let $vhp = per_pass.min((g + 1) * a.group - $vh0);
                        $values;
                    }
                }
            }
        }
    }};
}
pub(super) use walk_blocks;
