//! GQA attention, same semantics as `reference::attention` (causal, over a KV cache:
//! the LLM) and `reference::attention_bidirectional` (every query sees all keys of its
//! own sequence, B sequences in one call: the ViT), in one flash-style kernel:
//!
//! - a task ([`block_task`]) takes a block of query rows and one KV head, so the
//!   `rows x group` query vectors sharing that head reuse every K/V block they load (at
//!   decode: the GQA group); scores and `P @ V` are register-tiled FMAs and the softmax
//!   is online (running max and sum per query vector). Even at decode this beats
//!   per-pair dot products, whose per-key horizontal sums cost more than transposing
//!   the K block. Any head_dim runs blocked: the value tiles take 72 (SigLIP-so400m) or
//!   80 columns in one pass, else 64-, 32-, 16-, 8- and 1-column steps;
//! - the two modes differ only in which keys a query row sees ([`Mask`]): the causal
//!   limit, or its own sequence's rows (a key offset per sequence). A bidirectional
//!   call's tasks are (sequence, KV head, row block), row blocks innermost, so
//!   consecutive tasks on both threads reuse one head's K/V from L2. The bidirectional
//!   mode also uses fused multiply-adds and vectorized softmax sums on the FMA paths
//!   (`FUSED`); the causal mode keeps unfused, in-order arithmetic on the blocks its
//!   mask cuts (and on the portable path), while its whole blocks on AVX2, AVX-512 and
//!   NEON run the bidirectional mode's hand-written tiles;
//! - decode on several threads also splits each head's keys ([`Plan::SplitKeys`]) and
//!   merges the parts ([`merge_partials`]). On AVX2 and AVX-512, decode with head_dim
//!   32 to 128 runs `attention_decode.rs` instead: per-key dot products over whole
//!   cache rows (one query row gives a KV head too few query vectors for register
//!   tiles).
//!
//! Portable Rust written for the vectorizer (plus an AVX-512 K transpose), compiled
//! for the baseline, AVX2+FMA and AVX-512 and picked at run time: at 512-token prefill
//! (and in every ViT layer) attention is a large share of the work, so it must never
//! run scalar. The score, softmax and value tiles of blocks every row sees whole are
//! hand-written for AVX-512 (`attention_avx512.rs`), AVX2 (`attention_avx2.rs`) and
//! NEON (`attention_neon.rs`).
//!
//! The caches are f32, f16 or int8 ([`KvElem`]); an f16 or int8 K/V block (int8: each
//! row's head block of `head_dim` i8 values and its scale, read straight from the
//! cache's bytes) is converted to f32 once when a task loads it, so the tiles below
//! always compute in f32.

use super::attention_qkv::Qkv;
use super::kv_cache::KvElem;
use super::{isa, Isa, SendPtr};
use crate::reference::{check_attention_args, AttentionDims, KernelError};
use std::cell::RefCell;

/// Keys per block: one score-tile row, and the unit of the online softmax.
pub(super) const KB: usize = 64;
/// Query vectors per register tile (`QT x KB` scores, `QT x 64` outputs: 16 zmm).
pub(super) const QT: usize = 4;
/// Query rows per task; with the GQA group this is `RB * group` query vectors that
/// share every K/V block they load.
const RB: usize = 16;
/// Query rows per task in bidirectional mode: more rows share each transposed K block
/// (its transpose was ~10% of the time at 16), and a task's scratch (44 KB at
/// head_dim 72) still about fits a 48 KB L1.
const RB_BIDIRECTIONAL: usize = 32;

/// K/V bytes decode prefetches before its tasks start (see `attention_f32`).
const UP_FRONT_PREFETCH_BYTES: usize = 256 * 1024;

/// 64-byte lines of f32, so every vector load of a scratch row starting at a multiple
/// of 16 values is one cache line, not two (the transposed K block is read 16 lanes at
/// a time at offsets `d * KB + 16c`; split loads halved the score loop's speed).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A growable f32 buffer that starts on a 64-byte boundary.
#[derive(Default)]
struct AlignedBuf(Vec<Line>);

impl AlignedBuf {
    /// Grows to at least `n` values (zero-filled).
    fn fit(&mut self, n: usize) {
        if self.len() < n {
            self.0.resize(n.div_ceil(16), Line::default());
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `Line` is 16 f32 with no padding (repr(C), 64 bytes).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const f32, self.0.len() * 16) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, and the borrow is unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut f32, self.0.len() * 16)
        }
    }
}

/// Per-task scratch, one per thread, grown on demand and reused across calls.
#[derive(Default)]
struct Scratch {
    /// Scaled queries, `nq_pad x hd`.
    q: AlignedBuf,
    /// Unnormalised outputs, `nq_pad x hd`.
    o: AlignedBuf,
    /// Running max and sum of exponentials per query vector.
    m: AlignedBuf,
    l: AlignedBuf,
    /// The current K block transposed, `hd x KB` (keys along the vector lanes).
    kt: AlignedBuf,
    /// Scores, then probabilities, `nq_pad x KB`.
    s: AlignedBuf,
    /// The current K and V blocks converted from an f16 cache; unused for f32 caches
    /// and activations, which are read in place. Grown by `KvElem::rows_f32`.
    kc: Vec<f32>,
    vc: Vec<f32>,
}

impl Scratch {
    /// Grows the buffers to at least `[q, o, m, l, kt, s]` values.
    fn fit(&mut self, sizes: [usize; 6]) {
        for (v, n) in [
            &mut self.q,
            &mut self.o,
            &mut self.m,
            &mut self.l,
            &mut self.kt,
            &mut self.s,
        ]
        .into_iter()
        .zip(sizes)
        {
            v.fit(n);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `a * b + c`: one fused multiply-add (`FUSED`, on the paths whose CPUs have FMA), or
/// a separately rounded multiply and add. Rust never contracts `a * b + c` by itself,
/// so unfused loops run a multiply and an add per FMA slot.
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `sum(x)`: with `FUSED`, sixteen partial sums (vectorized: f32 addition is not
/// associative, so the compiler keeps a sequential sum scalar); else in order.
#[inline(always)]
fn sum<const FUSED: bool>(x: &[f32]) -> f32 {
    if !FUSED {
        return x.iter().sum();
    }
    let mut acc = [0f32; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// `max(x)` with sixteen partial maxima (vectorized; max is exact, so the order does
/// not change the result).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let m = acc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    it.remainder().iter().fold(m, |m, &x| m.max(x))
}

/// `s[r][..] = q[r] . kt` for a `QT`-vector tile: `QT x KB` accumulators held in
/// registers over the head dimension (one K^T row load feeds `QT` FMAs per lane group).
#[inline(always)]
fn score_tile<const FUSED: bool>(q: &[f32], kt: &[f32], hd: usize, s: &mut [f32]) {
    let mut acc = [[0f32; KB]; QT];
    for d in 0..hd {
        let k: &[f32; KB] = kt[d * KB..][..KB].try_into().unwrap();
        for (r, a) in acc.iter_mut().enumerate() {
            let x = q[r * hd + d];
            for j in 0..KB {
                a[j] = madd::<FUSED>(x, k[j], a[j]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        s[r * KB..][..KB].copy_from_slice(a);
    }
}

/// `o[r][col..col+W] += sum_j p[r][j] * v[j][..W]` for a `QT`-vector tile over `nk`
/// keys, `W = DC + TAIL` columns; `v` starts at the first key's column `col` and has
/// row stride `kw`. Returns `W`, the columns done. The tail is a separate accumulator
/// array so that `DC` stays a whole number of vectors: a `[f32; 72]` row would be
/// vectorized 8 wide (72 is no multiple of 16) and spill.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn value_tile<const DC: usize, const TAIL: usize, const FUSED: bool>(
    p: &[f32],
    v: &[f32],
    kw: usize,
    nk: usize,
    o: &mut [f32],
    hd: usize,
    col: usize,
) -> usize {
    let mut acc = [[0f32; DC]; QT];
    let mut tail = [[0f32; TAIL]; QT];
    for (r, (a, t)) in acc.iter_mut().zip(&mut tail).enumerate() {
        a.copy_from_slice(&o[r * hd + col..][..DC]);
        t.copy_from_slice(&o[r * hd + col + DC..][..TAIL]);
    }
    for j in 0..nk {
        let vr: &[f32; DC] = v[j * kw..][..DC].try_into().unwrap();
        let vt: &[f32; TAIL] = v[j * kw + DC..][..TAIL].try_into().unwrap();
        for (r, (a, t)) in acc.iter_mut().zip(&mut tail).enumerate() {
            let pr = p[r * KB + j];
            for x in 0..DC {
                a[x] = madd::<FUSED>(pr, vr[x], a[x]);
            }
            for x in 0..TAIL {
                t[x] = madd::<FUSED>(pr, vt[x], t[x]);
            }
        }
    }
    for (r, (a, t)) in acc.iter().zip(&tail).enumerate() {
        o[r * hd + col..][..DC].copy_from_slice(a);
        o[r * hd + col + DC..][..TAIL].copy_from_slice(t);
    }
    DC + TAIL
}

/// `kt[d][j] = k[j][d]` for the `nk` keys of a block (`k` starts at the first key's
/// head column, row stride `kw`); keys `nk..KB` are zero. At decode the K rows are cold
/// (the weights streamed through the caches since the last token), so this is memory
/// bound: the AVX-512 path loads whole rows and transposes 16x16 tiles in registers
/// (any head_dim from 16 up: the last tile overlaps its neighbour when head_dim is not
/// a multiple of 16).
#[inline(always)]
fn transpose_k(path: Isa, k: &[f32], kw: usize, nk: usize, hd: usize, kt: &mut [f32]) {
    assert!((1..=KB).contains(&nk) && (nk - 1) * kw + hd <= k.len() && kt.len() >= hd * KB);
    #[cfg(target_arch = "x86_64")]
    if path == Isa::Avx512Vnni && hd >= 16 {
        // SAFETY: the CPU has AVX-512F (path), and the assert bounds every access.
        return unsafe { transpose_k_avx512(k, kw, nk, hd, kt) };
    }
    let _ = path;
    for j in 0..nk {
        for (d, &x) in k[j * kw..][..hd].iter().enumerate() {
            kt[d * KB + j] = x;
        }
    }
    for d in 0..hd {
        kt[d * KB + nk..(d + 1) * KB].fill(0.0);
    }
}

/// 16x16 tiles: 16 row loads, four rounds of in-lane and cross-lane shuffles (32-bit,
/// 64-bit, then 128-bit lanes twice), 16 column stores. Rows past `nk` are zeros.
/// `hd >= 16`; when it is not a multiple of 16 the last tile starts at `hd - 16` and
/// rewrites a few columns with the same values (72: tiles at 0, 16, 32, 48, 56).
/// `$load(offset)` reads 16 values of K from element `offset` as f32 (f32 or f16
/// rows: one body for both).
#[cfg(target_arch = "x86_64")]
macro_rules! transpose_tiles_avx512 {
    ($load:expr, $kw:expr, $nk:expr, $hd:expr, $kt:expr) => {{
        use std::arch::x86_64::*;
        let (kw, nk, hd, kt): (usize, usize, usize, &mut [f32]) = ($kw, $nk, $hd, $kt);
        for j0 in (0..KB).step_by(16) {
            for d0 in (0..hd).step_by(16) {
                let d0 = d0.min(hd - 16);
                let mut r = [_mm512_setzero_ps(); 16];
                for (j, rj) in r.iter_mut().enumerate() {
                    if j0 + j < nk {
                        *rj = $load((j0 + j) * kw + d0);
                    }
                }
                // 32-bit interleave of row pairs, then 64-bit interleave of pair pairs:
                // u[4i + e] holds, in 128-bit lane L, rows 4i..4i+3 at column 4L + e.
                let mut t = [_mm512_setzero_ps(); 16];
                for i in 0..8 {
                    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
                }
                let mut u = [_mm512_setzero_ps(); 16];
                for i in 0..4 {
                    let (a, b, c, d) = (
                        _mm512_castps_pd(t[4 * i]),
                        _mm512_castps_pd(t[4 * i + 2]),
                        _mm512_castps_pd(t[4 * i + 1]),
                        _mm512_castps_pd(t[4 * i + 3]),
                    );
                    u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
                    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
                    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
                    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
                }
                // A 4x4 transpose of 128-bit lanes across u[e], u[4+e], u[8+e], u[12+e]:
                // column 4L + e gathers lane L of each.
                let dst = kt.as_mut_ptr().add(d0 * KB + j0);
                for e in 0..4 {
                    let v0 = _mm512_shuffle_f32x4::<0x44>(u[e], u[4 + e]);
                    let v1 = _mm512_shuffle_f32x4::<0xEE>(u[e], u[4 + e]);
                    let v2 = _mm512_shuffle_f32x4::<0x44>(u[8 + e], u[12 + e]);
                    let v3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + e], u[12 + e]);
                    _mm512_storeu_ps(dst.add(e * KB), _mm512_shuffle_f32x4::<0x88>(v0, v2));
                    _mm512_storeu_ps(dst.add((4 + e) * KB), _mm512_shuffle_f32x4::<0xDD>(v0, v2));
                    _mm512_storeu_ps(dst.add((8 + e) * KB), _mm512_shuffle_f32x4::<0x88>(v1, v3));
                    _mm512_storeu_ps(dst.add((12 + e) * KB), _mm512_shuffle_f32x4::<0xDD>(v1, v3));
                }
            }
        }
    }};
}

/// `transpose_k` of f32 rows on AVX-512.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_k_avx512(k: &[f32], kw: usize, nk: usize, hd: usize, kt: &mut [f32]) {
    transpose_tiles_avx512!(
        |o: usize| _mm512_loadu_ps(k.as_ptr().add(o)),
        kw,
        nk,
        hd,
        kt
    )
}

/// `transpose_k` of an f16 cache's rows on AVX-512, widened as they load: no f32 copy
/// of the block to write and read back (`KvElem::rows_f32`); the values are the same
/// (every f16 is an f32). `attention/decode_2048` with f16 KV, three runs alternated
/// with the copy-then-transpose build: 11.4-12.1 -> 11.2-11.4 ms on one thread,
/// 6.45-6.54 -> 6.17-6.24 ms on two.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_k_f16_avx512(k: &[half::f16], kw: usize, nk: usize, hd: usize, kt: &mut [f32]) {
    assert!((1..=KB).contains(&nk) && (nk - 1) * kw + hd <= k.len() && kt.len() >= hd * KB);
    transpose_tiles_avx512!(
        |o: usize| _mm512_cvtph_ps(_mm256_loadu_si256(k.as_ptr().add(o) as *const __m256i)),
        kw,
        nk,
        hd,
        kt
    )
}

/// Asks for K and V rows `rows` (one head's `hd` columns each) to be brought into L1.
#[inline(always)]
fn prefetch_rows<C>(k: &[C], v: &[C], kw: usize, hd: usize, rows: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    for j in rows {
        // One prefetch per 64-byte line.
        for c in (0..hd).step_by(64 / std::mem::size_of::<C>()) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: prefetching is a hint and never faults; the addresses are in
            // bounds anyway (rows below n_keys, columns below hd).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(k[j * kw + c..].as_ptr() as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(v[j * kw + c..].as_ptr() as *const i8);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (k, v, kw, hd, rows);
}

/// Flash-style attention for one task: query rows `t0..t1` of the chunk, the query heads
/// of KV head `g`. Keys are visited in blocks of `KB`: K is transposed once per block
/// (amortised over all `nq` query vectors), scores come from register-tiled FMAs, the
/// online softmax rescales the running outputs, and `P @ V` is register-tiled too.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_task<C: KvElem, const FUSED: bool>(
    path: Isa,
    a: &Args<C>,
    g: usize,
    t0: usize,
    t1: usize,
    keys: std::ops::Range<usize>,
    sc: &mut Scratch,
) {
    let (hd, group) = (a.head_dim, a.group);
    let nq = (t1 - t0) * group;
    let nq_pad = nq.div_ceil(QT) * QT;
    for i in 0..nq_pad {
        let qs = &mut sc.q[i * hd..][..hd];
        if i < nq {
            let (t, h) = (t0 + i / group, g * group + i % group);
            for (d, x) in qs.iter_mut().zip(&a.q[t * a.q_stride + h * hd..][..hd]) {
                *d = x * a.scale;
            }
        } else {
            qs.fill(0.0);
        }
    }
    sc.o[..nq_pad * hd].fill(0.0);
    sc.m[..nq].fill(f32::NEG_INFINITY);
    sc.l[..nq].fill(0.0);
    // Keys each query row sees: `a.keys(t)`; this task visits `keys` of them (within
    // the rows' own sequence in bidirectional mode).
    // KV head `g`'s first row: `head_len` storage units per head (`hd` values, or an
    // int8 block of `hd` bytes and its scale); rows are `a.kw` units apart.
    let hl = C::head_len(hd);
    let (k, v) = (&a.k[g * hl..], &a.v[g * hl..]);
    // Software prefetch is for the causal mode's cold caches; the ViT's K/V were just
    // written by its projections and the hardware prefetchers keep up (prefetching
    // here cost 7% of the bidirectional time).
    let prefetch = matches!(a.mask, Mask::Causal { .. });
    if prefetch {
        prefetch_rows(k, v, a.kw, hl, keys.start..(keys.start + KB).min(keys.end));
    }
    // The path's hand-written tiles for whole key blocks, where it has them.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    let whole_block_tiles = WholeBlockTiles::for_path(path);
    for j0 in keys.clone().step_by(KB) {
        let nk = KB.min(keys.end - j0);
        // The next block's rows load while this one computes (at decode the cache is
        // cold: the weights streamed through since the last token).
        if prefetch {
            prefetch_rows(k, v, a.kw, hl, j0 + KB..(j0 + 2 * KB).min(keys.end));
        }
        let kj = &k[j0 * a.kw..];
        match C::as_f16(kj) {
            // An f16 cache on AVX-512: widened as the transpose loads it.
            #[cfg(target_arch = "x86_64")]
            Some(k16) if path == Isa::Avx512Vnni && hd >= 16 => {
                // SAFETY: the CPU has AVX-512F (path); the function checks the bounds.
                unsafe { transpose_k_f16_avx512(k16, a.kw, nk, hd, &mut sc.kt) }
            }
            _ => {
                let (kb, ks) = C::rows_f32(path, kj, nk, a.kw, hd, &mut sc.kc);
                transpose_k(path, kb, ks, nk, hd, &mut sc.kt);
            }
        }
        // On AVX2, AVX-512 and NEON, blocks that every row of the task sees whole (all of
        // them in bidirectional mode; in causal mode those below the first row's limit)
        // run register tiles with the softmax fused into the score tile. Causal prefill at
        // 1024 rows on AVX-512: attention 370-396 -> 275-282 ms a chunk (the diagonal
        // blocks keep the masked path below).
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        let whole = match a.mask {
            Mask::Bidirectional { .. } => true,
            Mask::Causal { .. } => j0 + nk <= a.keys(t0).end,
        };
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if let Some(tiles) = whole_block_tiles.filter(|_| whole) {
            for i0 in (0..nq_pad).step_by(QT) {
                // SAFETY: the tiles of `path`, whose CPU features this task runs with.
                unsafe {
                    (tiles.score_softmax)(
                        &sc.q[i0 * hd..],
                        &sc.kt,
                        hd,
                        nk,
                        &mut sc.m[i0..],
                        &mut sc.l[i0..],
                        &mut sc.s[i0 * KB..],
                        &mut sc.o[i0 * hd..],
                    )
                };
            }
            let (vb, vs) = C::rows_f32(path, &v[j0 * a.kw..], nk, a.kw, hd, &mut sc.vc);
            for i0 in (0..nq_pad).step_by(QT) {
                let (p, o) = (&sc.s[i0 * KB..], &mut sc.o[i0 * hd..]);
                // SAFETY: as above.
                unsafe { (tiles.value)(p, vb, vs, nk, o, hd) };
            }
            continue;
        }
        for i0 in (0..nq_pad).step_by(QT) {
            score_tile::<FUSED>(&sc.q[i0 * hd..], &sc.kt, hd, &mut sc.s[i0 * KB..]);
        }
        // Online softmax: mask each row's causal tail (none in bidirectional mode), fold
        // the block into (m, l) and rescale that row's running output.
        for i in 0..nq_pad {
            let s = &mut sc.s[i * KB..][..KB];
            let lim = if i < nq {
                a.keys(t0 + i / group).end.saturating_sub(j0).min(nk)
            } else {
                0
            };
            if lim == 0 {
                s.fill(0.0);
                continue;
            }
            let bmax = max(&s[..lim]);
            let m_new = sc.m[i].max(bmax);
            let corr = super::math::exp(sc.m[i] - m_new);
            for x in s[..lim].iter_mut() {
                *x = super::math::exp(*x - m_new);
            }
            s[lim..].fill(0.0);
            sc.l[i] = sc.l[i] * corr + sum::<FUSED>(&s[..lim]);
            sc.m[i] = m_new;
            if corr != 1.0 {
                sc.o[i * hd..][..hd].iter_mut().for_each(|o| *o *= corr);
            }
        }
        let (vb, vs) = C::rows_f32(path, &v[j0 * a.kw..], nk, a.kw, hd, &mut sc.vc);
        for i0 in (0..nq_pad).step_by(QT) {
            let (p, o) = (&sc.s[i0 * KB..], &mut sc.o[i0 * hd..]);
            // Widest tiles first; the narrow tails make any head_dim blocked. A head's
            // last 72 or 80 columns (SigLIP-so400m's 72) are one tile (18 or 20
            // accumulator registers): a second pass would broadcast every probability
            // again for 8 or 16 columns; siglip_tiny's 32 is one pass too. Tile widths
            // change no output's arithmetic, only how many columns share a pass.
            let mut col = 0;
            while col < hd {
                let (vc, oc) = (&vb[col..], &mut *o);
                col += match hd - col {
                    72 => value_tile::<64, 8, FUSED>(p, vc, vs, nk, oc, hd, col),
                    80 => value_tile::<64, 16, FUSED>(p, vc, vs, nk, oc, hd, col),
                    64.. => value_tile::<64, 0, FUSED>(p, vc, vs, nk, oc, hd, col),
                    32.. => value_tile::<32, 0, FUSED>(p, vc, vs, nk, oc, hd, col),
                    16.. => value_tile::<16, 0, FUSED>(p, vc, vs, nk, oc, hd, col),
                    8.. => value_tile::<8, 0, FUSED>(p, vc, vs, nk, oc, hd, col),
                    _ => value_tile::<1, 0, FUSED>(p, vc, vs, nk, oc, hd, col),
                };
            }
        }
    }
}

/// `score_softmax_tile(q, kt, hd, nk, m, l, s, o)` of a tiles module.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type ScoreSoftmaxTile =
    unsafe fn(&[f32], &[f32], usize, usize, &mut [f32], &mut [f32], &mut [f32], &mut [f32]);
/// `value_tile(p, v, kw, nk, o, hd)` of a tiles module.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
type ValueTile = unsafe fn(&[f32], &[f32], usize, usize, &mut [f32], usize);

/// The hand-written tiles of whole key blocks (`attention_avx512.rs`,
/// `attention_avx2.rs`, `attention_neon.rs`: the same signatures).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy)]
struct WholeBlockTiles {
    score_softmax: ScoreSoftmaxTile,
    value: ValueTile,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl WholeBlockTiles {
    /// The tiles of a path, where it has them.
    fn for_path(path: Isa) -> Option<Self> {
        #[cfg(target_arch = "aarch64")]
        use super::attention_neon as neon;
        #[cfg(target_arch = "x86_64")]
        use super::{attention_avx2 as avx2, attention_avx512 as avx512};
        let (score_softmax, value): (ScoreSoftmaxTile, ValueTile) = match path {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => (avx512::score_softmax_tile, avx512::value_tile),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma | Isa::Avx2Vnni => (avx2::score_softmax_tile, avx2::value_tile),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => (neon::score_softmax_tile, neon::value_tile),
            _ => return None,
        };
        Some(WholeBlockTiles {
            score_softmax,
            value,
        })
    }
}

/// Writes a block task's normalised outputs `o / l` for rows `t0..` of KV head `g`.
fn write_outputs<C>(a: &Args<C>, g: usize, t0: usize, nq: usize, sc: &Scratch) {
    let (hd, group) = (a.head_dim, a.group);
    for i in 0..nq {
        let (t, h) = (t0 + i / group, g * group + i % group);
        let inv = 1.0 / sc.l[i];
        // SAFETY: tasks own disjoint (row, KV head) ranges, so these head_dim slices of
        // the output are written by this task only.
        let out = unsafe { std::slice::from_raw_parts_mut(a.out.at(t * a.qw + h * hd), hd) };
        for (o, &x) in out.iter_mut().zip(&sc.o[i * hd..][..hd]) {
            *o = x * inv;
        }
    }
}

/// Floats per query vector in a split-keys partial result: `m`, `l`, then `o`.
pub(super) fn partial_len(hd: usize) -> usize {
    hd + 2
}

/// Folds the per-split partial results of one decode row into the output: the
/// standard log-sum-exp merge, `o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s`.
/// Query vector `i` of KV head `g` in split `si` is at `((g * splits + si) * group + i)`
/// partials of [`partial_len`] floats.
pub(super) fn merge_partials(
    hd: usize,
    group: usize,
    n_kv: usize,
    splits: usize,
    partials: &[f32],
    out: &mut [f32],
) {
    let pl = partial_len(hd);
    for g in 0..n_kv {
        for i in 0..group {
            let part = |si: usize| &partials[((g * splits + si) * group + i) * pl..][..pl];
            let m = (0..splits)
                .map(|si| part(si)[0])
                .fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out[(g * group + i) * hd..][..hd];
            o.fill(0.0);
            let mut l = 0.0;
            for si in 0..splits {
                let p = part(si);
                let w = super::math::exp(p[0] - m);
                l += w * p[1];
                o.iter_mut().zip(&p[2..]).for_each(|(o, x)| *o += w * x);
            }
            let inv = 1.0 / l;
            o.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

/// Which keys a query row sees.
#[derive(Clone, Copy)]
enum Mask {
    /// Row `t` of the chunk sits at position `pos + t` of a KV cache and sees keys up to
    /// that position; rows past the valid ones (`end = pos + n_valid`) see the valid
    /// keys (their outputs are padding).
    Causal { pos: usize, end: usize },
    /// The rows are sequences of `seq` rows, K/V rows alike: row `t` sees every key of
    /// its own sequence.
    Bidirectional { seq: usize },
}

/// The checked arguments of one call, shared by all tasks.
struct Args<'a, C> {
    q: &'a [f32],
    k: &'a [C],
    v: &'a [C],
    out: SendPtr,
    mask: Mask,
    /// Query rows in the call.
    t_rows: usize,
    /// The output's row width (`n_heads * head_dim`).
    qw: usize,
    /// q's row stride: `qw`, or wider where q is read in place ([`Qkv`]).
    q_stride: usize,
    /// K/V row stride in storage units (`C`): a cache's `n_kv * C::head_len(head_dim)`,
    /// or a fused q/k/v product's width ([`Qkv`]).
    kw: usize,
    head_dim: usize,
    group: usize,
    n_kv: usize,
    scale: f32,
}

impl<C> Args<'_, C> {
    /// The keys query row `t` sees (the causal mask and `n_valid`, or the sequence's
    /// offset and length, in one place).
    #[inline(always)]
    fn keys(&self, t: usize) -> std::ops::Range<usize> {
        match self.mask {
            Mask::Causal { pos, end } => 0..(pos + t).min(end - 1) + 1,
            Mask::Bidirectional { seq } => {
                let first = t / seq * seq;
                first..first + seq
            }
        }
    }

    /// Row blocks of `RB` (causal) or `RB_BIDIRECTIONAL` rows, none straddling two
    /// sequences.
    fn n_blocks(&self) -> usize {
        match self.mask {
            Mask::Causal { .. } => self.t_rows.div_ceil(RB) * self.n_kv,
            Mask::Bidirectional { seq } => {
                self.t_rows / seq * seq.div_ceil(RB_BIDIRECTIONAL) * self.n_kv
            }
        }
    }

    /// Block task `id`: (KV head, first row, end row). Causal calls put heads innermost
    /// (the order the LLM was tuned with); bidirectional ones put row blocks innermost,
    /// so the threads walk one sequence-head's K/V together while it is in L2.
    #[inline(always)]
    fn block(&self, id: usize) -> (usize, usize, usize) {
        match self.mask {
            Mask::Causal { .. } => {
                let (rb, g) = (id / self.n_kv, id % self.n_kv);
                (g, rb * RB, (rb * RB + RB).min(self.t_rows))
            }
            Mask::Bidirectional { seq } => {
                let per_seq = seq.div_ceil(RB_BIDIRECTIONAL);
                let (sg, rb) = (id / per_seq, id % per_seq);
                let (s, g) = (sg / self.n_kv, sg % self.n_kv);
                let t0 = s * seq + rb * RB_BIDIRECTIONAL;
                (g, t0, (t0 + RB_BIDIRECTIONAL).min((s + 1) * seq))
            }
        }
    }
}

/// How a call is cut into tasks.
#[derive(Clone, Copy)]
enum Plan {
    /// (row block, KV head) blocks over all the keys their rows see.
    Blocks,
    /// One query row (decode) with each KV head's keys cut into `splits` ranges of
    /// `per`: otherwise decode has only `n_kv_heads` tasks (3 for SmolLM2, which two
    /// threads share 2:1) and each waits on cold K/V rows alone. Partial results go to
    /// `partials` and are merged by the caller.
    SplitKeys {
        splits: usize,
        per: usize,
        partials: SendPtr,
    },
}

/// One unit of parallel work (see [`Plan`]).
#[inline(always)]
fn task<C: KvElem, const FUSED: bool>(
    path: Isa,
    a: &Args<C>,
    plan: Plan,
    id: usize,
    sc: &mut Scratch,
) {
    match plan {
        Plan::Blocks => {
            let (g, t0, t1) = a.block(id);
            let keys = a.keys(t0).start..a.keys(t1 - 1).end;
            block_task::<C, FUSED>(path, a, g, t0, t1, keys, sc);
            write_outputs(a, g, t0, (t1 - t0) * a.group, sc);
        }
        Plan::SplitKeys {
            splits,
            per,
            partials,
        } => {
            let (g, si) = (id / splits, id % splits);
            let n_keys = a.keys(0).end;
            block_task::<C, FUSED>(path, a, g, 0, 1, si * per..((si + 1) * per).min(n_keys), sc);
            let pl = partial_len(a.head_dim);
            for i in 0..a.group {
                // SAFETY: task (g, si) owns its `group * pl` floats of `partials`.
                let p = unsafe {
                    std::slice::from_raw_parts_mut(
                        partials.at(((g * splits + si) * a.group + i) * pl),
                        pl,
                    )
                };
                p[0] = sc.m[i];
                p[1] = sc.l[i];
                p[2..].copy_from_slice(&sc.o[i * a.head_dim..][..a.head_dim]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task_avx2<C: KvElem, const FUSED: bool>(
    a: &Args<C>,
    plan: Plan,
    id: usize,
    sc: &mut Scratch,
) {
    task::<C, FUSED>(Isa::Avx2Fma, a, plan, id, sc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn task_avx512<C: KvElem, const FUSED: bool>(
    a: &Args<C>,
    plan: Plan,
    id: usize,
    sc: &mut Scratch,
) {
    task::<C, FUSED>(Isa::Avx512Vnni, a, plan, id, sc)
}

/// Runs `n_tasks` tasks of `plan` on the current pool, on the best path this thread
/// may use, each with its thread's scratch.
fn run_tasks<C: KvElem>(a: &Args<C>, plan: Plan, n_tasks: usize) {
    let rows = match a.mask {
        Mask::Causal { .. } => RB,
        Mask::Bidirectional { .. } => RB_BIDIRECTIONAL,
    };
    let nq = (rows * a.group).div_ceil(QT) * QT;
    let hd = a.head_dim;
    let sizes = [nq * hd, nq * hd, nq, nq, hd * KB, nq * KB];
    let path = isa();
    // Fused multiply-adds and vectorized sums in the portable tiles where the CPU has
    // FMA, in the ViT's mode only: the causal (LLM) mode keeps its unfused, in-order
    // arithmetic there (its whole-block tiles and the decode kernels fuse, and
    // are within the same tolerances of the goldens; fusing the rest measured 2%).
    let fused = matches!(a.mask, Mask::Bidirectional { .. });
    super::pool::for_each(n_tasks, |id| {
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            sc.fit(sizes);
            match (path, fused) {
                // SAFETY: isa() reports these paths only when the CPU has the features.
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512Vnni, true) => unsafe { task_avx512::<C, true>(a, plan, id, sc) },
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512Vnni, false) => unsafe { task_avx512::<C, false>(a, plan, id, sc) },
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma | Isa::Avx2Vnni, true) => unsafe {
                    task_avx2::<C, true>(a, plan, id, sc)
                },
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma | Isa::Avx2Vnni, false) => unsafe {
                    task_avx2::<C, false>(a, plan, id, sc)
                },
                // AArch64 always has FMA (and NEON): the path's tiles, fused.
                #[cfg(target_arch = "aarch64")]
                (Isa::NeonDot, true) => task::<C, true>(Isa::NeonDot, a, plan, id, sc),
                #[cfg(target_arch = "aarch64")]
                (Isa::NeonDot, false) => task::<C, false>(Isa::NeonDot, a, plan, id, sc),
                // No FMA unit on the x86 baseline: `mul_add` would be a libm call.
                _ => task::<C, false>(Isa::Portable, a, plan, id, sc),
            }
        })
    });
}

/// Causal GQA attention (`Op::Attention`, `AttentionMode::Causal`) over f32, f16 or
/// int8 (`u8`: `DType::Q8Head` blocks) caches, computed in f32.
#[allow(clippy::too_many_arguments)]
pub fn attention_f32<C: KvElem>(
    q: &[f32],
    k_cache: &[C],
    v_cache: &[C],
    pos: usize,
    n_valid: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let kw = n_kv_heads * C::head_len(head_dim);
    let AttentionDims {
        qw, t_rows, end, ..
    } = check_attention_args(
        q, k_cache, v_cache, pos, n_valid, n_heads, n_kv_heads, head_dim, kw, out,
    )?;
    let group = n_heads / n_kv_heads;
    let a = Args {
        q,
        k: k_cache,
        v: v_cache,
        out: SendPtr(out.as_mut_ptr()),
        mask: Mask::Causal { pos, end },
        t_rows,
        qw,
        q_stride: qw,
        kw,
        head_dim,
        group,
        n_kv: n_kv_heads,
        scale,
    };
    // Decode on AVX2 and AVX-512: per-key dot products over whole cache rows, all heads
    // in one walk (`attention_decode.rs`).
    #[cfg(target_arch = "x86_64")]
    let path = isa();
    #[cfg(target_arch = "x86_64")]
    if t_rows == 1 && super::attention_decode::supports(path, head_dim) {
        let d = super::attention_decode::DecodeArgs {
            q,
            k: k_cache,
            v: v_cache,
            kw,
            head_dim,
            group,
            n_kv: n_kv_heads,
            n_keys: a.keys(0).end,
            scale,
        };
        super::attention_decode::attention_decode(path, &d, out);
        return Ok(());
    }
    // Decode on several threads: cut each head's keys (16-key multiples) so that there
    // are about four tasks per thread.
    let threads = super::pool::current_threads();
    let n_keys = a.keys(0).end;
    let splits = if t_rows == 1 && threads > 1 {
        (4 * threads).div_ceil(n_kv_heads).min(n_keys.div_ceil(16))
    } else {
        1
    };
    let per = n_keys.div_ceil(splits).div_ceil(16) * 16;
    let splits = n_keys.div_ceil(per);
    let mut partials = vec![
        0f32;
        if splits > 1 {
            n_kv_heads * splits * group * partial_len(head_dim)
        } else {
            0
        }
    ];
    let (plan, n_tasks) = if splits > 1 {
        (
            Plan::SplitKeys {
                splits,
                per,
                partials: SendPtr(partials.as_mut_ptr()),
            },
            n_kv_heads * splits,
        )
    } else {
        (Plan::Blocks, a.n_blocks())
    };
    if t_rows == 1 {
        // Decode: every K/V row this call reads is cold (the weights streamed through
        // the caches since the last token). Asking for the first ones, all heads, up
        // front lets the memory system fetch them in parallel instead of one block at
        // a time (tg128: +5-10%); capped to a quarter of L2, the tasks' own
        // block-ahead prefetch covers the rest.
        let row_bytes = 2 * kw * std::mem::size_of::<C>();
        let up_front = n_keys.min(UP_FRONT_PREFETCH_BYTES / row_bytes.max(1));
        prefetch_rows(k_cache, v_cache, kw, kw, 0..up_front);
    }
    run_tasks(&a, plan, n_tasks);
    if let Plan::SplitKeys { splits, .. } = plan {
        merge_partials(head_dim, group, n_kv_heads, splits, &partials, out);
    }
    Ok(())
}

/// Bidirectional GQA attention (`Op::Attention`, `AttentionMode::Bidirectional`, the
/// ViT): `q [B * seq, n_heads * head_dim]`, `k, v [B * seq, n_kv_heads * head_dim]`,
/// read in place ([`Qkv`]); every query row sees all `seq` keys of its own sequence. No
/// cache, no positions. `out` is dense, `[B * seq, n_heads * head_dim]`.
pub fn attention_bidirectional_f32(
    qkv: Qkv,
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let shape = qkv.check(seq, n_heads, n_kv_heads, head_dim, out)?;
    let a = Args {
        q: qkv.q,
        k: qkv.k,
        v: qkv.v,
        out: SendPtr(out.as_mut_ptr()),
        mask: Mask::Bidirectional { seq },
        t_rows: shape.rows,
        qw: shape.qw,
        q_stride: qkv.q_stride,
        kw: qkv.kv_stride,
        head_dim,
        group: n_heads / n_kv_heads,
        n_kv: n_kv_heads,
        scale,
    };
    run_tasks(&a, Plan::Blocks, a.n_blocks());
    Ok(())
}
