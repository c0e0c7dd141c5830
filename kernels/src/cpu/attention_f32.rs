//! Causal GQA attention, same semantics as `reference::attention`, in two shapes:
//!
//! - flash-style blocks ([`block_task`]), for prefill chunks and decode alike. A task
//!   takes a block of query rows and one KV head, so the `rows x group` query vectors
//!   sharing that head reuse every K/V block they load (at decode: the GQA group);
//!   scores and `P @ V` are register-tiled FMAs and the softmax is online (running max
//!   and sum per query vector). Even at decode this beats per-pair dot products, whose
//!   per-key horizontal sums cost more than transposing the K block. Decode on several
//!   threads also splits each head's keys ([`Plan::SplitKeys`]) and merges the parts;
//! - per (query, head) pair ([`pair`]): the fallback for head_dims that are not a
//!   multiple of 16.
//!
//! Both are portable Rust written for the vectorizer (plus an AVX-512 K transpose),
//! compiled for the baseline, AVX2+FMA and AVX-512 and picked at run time: at 512-token
//! prefill attention is a large share of the work, so it must never run scalar.
//!
//! The caches are f32 or f16 ([`KvElem`]); an f16 K/V block is converted to f32 once
//! when a task loads it, so the tiles below always compute in f32.

use super::kv_cache::KvElem;
use super::{isa, Isa, SendPtr};
use crate::reference::{check_attention_args, AttentionDims, KernelError};
use std::cell::RefCell;

const LANES: usize = 16;

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Exact chunks, so the 16-lane body has no bounds checks and vectorizes.
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0f32; LANES];
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One (query, head) pair: `out = softmax(q . K[kv_off..] * scale) @ V`, over keys
/// `0..=last`, using `scores` as scratch (and `row` for converted f16 rows).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pair<C: KvElem>(
    path: Isa,
    q: &[f32],
    k_cache: &[C],
    v_cache: &[C],
    kw: usize,
    kv_off: usize,
    last: usize,
    scale: f32,
    scores: &mut [f32],
    row: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = q.len();
    let mut max = f32::NEG_INFINITY;
    for (j, s) in scores[..=last].iter_mut().enumerate() {
        let (k, _) = C::rows_f32(path, &k_cache[j * kw + kv_off..], 1, kw, hd, row);
        *s = dot(q, &k[..hd]) * scale;
        max = max.max(*s);
    }
    // Vectorizable exp (math.rs) over all scores, then the sum.
    for s in scores[..=last].iter_mut() {
        *s = super::math::exp(*s - max);
    }
    let sum: f32 = scores[..=last].iter().sum();
    out.fill(0.0);
    for (j, &p) in scores[..=last].iter().enumerate() {
        let (v, _) = C::rows_f32(path, &v_cache[j * kw + kv_off..], 1, kw, hd, row);
        for (o, &x) in out.iter_mut().zip(&v[..hd]) {
            *o += p * x;
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Keys per block: one score-tile row, and the unit of the online softmax.
const KB: usize = 64;
/// Query vectors per register tile (`QT x KB` scores, `QT x 64` outputs: 16 zmm).
const QT: usize = 4;
/// Query rows per task; with the GQA group this is `RB * group` query vectors that
/// share every K/V block they load.
const RB: usize = 16;

/// K/V bytes decode prefetches before its tasks start (see `attention_f32`).
const UP_FRONT_PREFETCH_BYTES: usize = 256 * 1024;

/// Per-task scratch, one per thread, grown on demand and reused across calls.
#[derive(Default)]
struct Scratch {
    /// Scaled queries, `nq_pad x hd`.
    q: Vec<f32>,
    /// Unnormalised outputs, `nq_pad x hd`.
    o: Vec<f32>,
    /// Running max and sum of exponentials per query vector.
    m: Vec<f32>,
    l: Vec<f32>,
    /// The current K block transposed, `hd x KB` (keys along the vector lanes).
    kt: Vec<f32>,
    /// Scores, then probabilities, `nq_pad x KB`.
    s: Vec<f32>,
    /// The current K and V blocks (or one row, for pairs) converted from an f16 cache;
    /// unused for f32 caches, which are read in place. Grown by `KvElem::rows_f32`.
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
            if v.len() < n {
                v.resize(n, 0.0);
            }
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `s[r][..] = q[r] . kt` for a `QT`-vector tile: `QT x KB` accumulators held in
/// registers over the head dimension (one K^T row load feeds `QT` FMAs per lane group).
#[inline(always)]
fn score_tile(q: &[f32], kt: &[f32], hd: usize, s: &mut [f32]) {
    let mut acc = [[0f32; KB]; QT];
    for d in 0..hd {
        let k: &[f32; KB] = kt[d * KB..][..KB].try_into().unwrap();
        for (r, a) in acc.iter_mut().enumerate() {
            let x = q[r * hd + d];
            for j in 0..KB {
                a[j] += x * k[j];
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        s[r * KB..][..KB].copy_from_slice(a);
    }
}

/// `o[r][col..col+DC] += sum_j p[r][j] * v[j][..DC]` for a `QT`-vector tile over `nk`
/// keys; `v` starts at the first key's column `col` and has row stride `kw`.
#[inline(always)]
fn value_tile<const DC: usize>(
    p: &[f32],
    v: &[f32],
    kw: usize,
    nk: usize,
    o: &mut [f32],
    hd: usize,
    col: usize,
) {
    let mut acc = [[0f32; DC]; QT];
    for (r, a) in acc.iter_mut().enumerate() {
        a.copy_from_slice(&o[r * hd + col..][..DC]);
    }
    for j in 0..nk {
        let vr: &[f32; DC] = v[j * kw..][..DC].try_into().unwrap();
        for (r, a) in acc.iter_mut().enumerate() {
            let pr = p[r * KB + j];
            for x in 0..DC {
                a[x] += pr * vr[x];
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        o[r * hd + col..][..DC].copy_from_slice(a);
    }
}

/// `kt[d][j] = k[j][d]` for the `nk` keys of a block (`k` starts at the first key's
/// head column, row stride `kw`); keys `nk..KB` are zero. At decode the K rows are cold
/// (the weights streamed through the caches since the last token), so this is memory
/// bound: the AVX-512 path loads whole rows and transposes 16x16 tiles in registers.
#[inline(always)]
fn transpose_k(path: Isa, k: &[f32], kw: usize, nk: usize, hd: usize, kt: &mut [f32]) {
    assert!((1..=KB).contains(&nk) && (nk - 1) * kw + hd <= k.len() && kt.len() >= hd * KB);
    #[cfg(target_arch = "x86_64")]
    if path == Isa::Avx512Vnni && hd.is_multiple_of(16) {
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
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_k_avx512(k: &[f32], kw: usize, nk: usize, hd: usize, kt: &mut [f32]) {
    use std::arch::x86_64::*;
    for j0 in (0..KB).step_by(16) {
        for d0 in (0..hd).step_by(16) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (j, rj) in r.iter_mut().enumerate() {
                if j0 + j < nk {
                    *rj = _mm512_loadu_ps(k.as_ptr().add((j0 + j) * kw + d0));
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
fn block_task<C: KvElem>(
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
            for (d, x) in qs.iter_mut().zip(&a.q[t * a.qw + h * hd..][..hd]) {
                *d = x * a.scale;
            }
        } else {
            qs.fill(0.0);
        }
    }
    sc.o[..nq_pad * hd].fill(0.0);
    sc.m[..nq].fill(f32::NEG_INFINITY);
    sc.l[..nq].fill(0.0);
    // Keys each query row sees: 0..=a.last(t); this task visits `keys` of them.
    let (k, v) = (&a.k[g * hd..], &a.v[g * hd..]);
    prefetch_rows(k, v, a.kw, hd, keys.start..(keys.start + KB).min(keys.end));
    for j0 in keys.clone().step_by(KB) {
        let nk = KB.min(keys.end - j0);
        // The next block's rows load while this one computes (at decode the cache is
        // cold: the weights streamed through since the last token).
        prefetch_rows(k, v, a.kw, hd, j0 + KB..(j0 + 2 * KB).min(keys.end));
        let (kb, ks) = C::rows_f32(path, &k[j0 * a.kw..], nk, a.kw, hd, &mut sc.kc);
        transpose_k(path, kb, ks, nk, hd, &mut sc.kt);
        for i0 in (0..nq_pad).step_by(QT) {
            score_tile(&sc.q[i0 * hd..], &sc.kt, hd, &mut sc.s[i0 * KB..]);
        }
        // Online softmax: mask each row's causal tail, fold the block into (m, l) and
        // rescale that row's running output.
        for i in 0..nq_pad {
            let s = &mut sc.s[i * KB..][..KB];
            let lim = if i < nq {
                (a.last(t0 + i / group) + 1).saturating_sub(j0).min(nk)
            } else {
                0
            };
            if lim == 0 {
                s.fill(0.0);
                continue;
            }
            let bmax = s[..lim].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let m_new = sc.m[i].max(bmax);
            let corr = super::math::exp(sc.m[i] - m_new);
            for x in s[..lim].iter_mut() {
                *x = super::math::exp(*x - m_new);
            }
            s[lim..].fill(0.0);
            sc.l[i] = sc.l[i] * corr + s[..lim].iter().sum::<f32>();
            sc.m[i] = m_new;
            if corr != 1.0 {
                sc.o[i * hd..][..hd].iter_mut().for_each(|o| *o *= corr);
            }
        }
        let (vb, vs) = C::rows_f32(path, &v[j0 * a.kw..], nk, a.kw, hd, &mut sc.vc);
        for i0 in (0..nq_pad).step_by(QT) {
            let (p, o) = (&sc.s[i0 * KB..], &mut sc.o[i0 * hd..]);
            let mut col = 0;
            while col + 64 <= hd {
                value_tile::<64>(p, &vb[col..], vs, nk, o, hd, col);
                col += 64;
            }
            while col < hd {
                value_tile::<16>(p, &vb[col..], vs, nk, o, hd, col);
                col += 16;
            }
        }
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
fn partial_len(hd: usize) -> usize {
    hd + 2
}

/// Folds the per-split partial results of one decode row into the output: the
/// standard log-sum-exp merge, `o = sum_s e^(m_s - M) o_s / sum_s e^(m_s - M) l_s`.
fn merge_splits<C>(a: &Args<C>, n_kv: usize, splits: usize, partials: &[f32], out: &mut [f32]) {
    let (hd, group) = (a.head_dim, a.group);
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

/// The checked arguments of one call, shared by all tasks.
struct Args<'a, C> {
    q: &'a [f32],
    k: &'a [C],
    v: &'a [C],
    out: SendPtr,
    pos: usize,
    end: usize,
    qw: usize,
    kw: usize,
    head_dim: usize,
    group: usize,
    scale: f32,
}

impl<C> Args<'_, C> {
    /// The last key query row `t` sees: its own position, or the last valid one for
    /// padded rows (the causal mask and `n_valid` in one place).
    #[inline(always)]
    fn last(&self, t: usize) -> usize {
        (self.pos + t).min(self.end - 1)
    }
}

/// How a call is cut into tasks.
#[derive(Clone, Copy)]
enum Plan {
    /// (query row, head) pairs: the fallback for odd head_dims.
    Pairs,
    /// (row block, KV head) blocks over all keys.
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
fn task<C: KvElem>(
    path: Isa,
    a: &Args<C>,
    plan: Plan,
    n_heads: usize,
    id: usize,
    sc: &mut Scratch,
) {
    let hd = a.head_dim;
    let n_kv = n_heads / a.group;
    let t_rows = a.q.len() / a.qw;
    if let Plan::Blocks = plan {
        let (rb, g) = (id / n_kv, id % n_kv);
        let (t0, t1) = (rb * RB, (rb * RB + RB).min(t_rows));
        block_task(path, a, g, t0, t1, 0..a.last(t1 - 1) + 1, sc);
        write_outputs(a, g, t0, (t1 - t0) * a.group, sc);
    } else if let Plan::SplitKeys {
        splits,
        per,
        partials,
    } = plan
    {
        let (g, si) = (id / splits, id % splits);
        block_task(
            path,
            a,
            g,
            0,
            1,
            si * per..((si + 1) * per).min(a.last(0) + 1),
            sc,
        );
        let pl = partial_len(hd);
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
            p[2..].copy_from_slice(&sc.o[i * hd..][..hd]);
        }
    } else {
        let (t, h) = (id / n_heads, id % n_heads);
        // SAFETY: each (t, h) pair writes only its own head_dim slice of row t.
        let o = unsafe { std::slice::from_raw_parts_mut(a.out.at(t * a.qw + h * hd), hd) };
        pair(
            path,
            &a.q[t * a.qw + h * hd..][..hd],
            a.k,
            a.v,
            a.kw,
            (h / a.group) * hd,
            a.last(t),
            a.scale,
            &mut sc.s,
            &mut sc.kc,
            o,
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn task_avx2<C: KvElem>(
    a: &Args<C>,
    plan: Plan,
    n_heads: usize,
    id: usize,
    sc: &mut Scratch,
) {
    task(Isa::Avx2Fma, a, plan, n_heads, id, sc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn task_avx512<C: KvElem>(
    a: &Args<C>,
    plan: Plan,
    n_heads: usize,
    id: usize,
    sc: &mut Scratch,
) {
    task(Isa::Avx512Vnni, a, plan, n_heads, id, sc)
}

/// Causal GQA attention (`Op::Attention`) over f32 or f16 caches, computed in f32.
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
    let AttentionDims {
        qw,
        kw,
        t_rows,
        end,
    } = check_attention_args(
        q, k_cache, v_cache, pos, n_valid, n_heads, n_kv_heads, head_dim, out,
    )?;
    let group = n_heads / n_kv_heads;
    let a = Args {
        q,
        k: k_cache,
        v: v_cache,
        out: SendPtr(out.as_mut_ptr()),
        pos,
        end,
        qw,
        kw,
        head_dim,
        group,
        scale,
    };
    // The value tiles need head_dim in 16-lane steps.
    let blocked = head_dim.is_multiple_of(16);
    // Decode on several threads: cut each head's keys (16-key multiples) so that there
    // are about four tasks per thread.
    let threads = super::pool::current_threads();
    let n_keys = a.last(0) + 1;
    let splits = if blocked && t_rows == 1 && threads > 1 {
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
    let (plan, n_tasks) = match (blocked, splits > 1) {
        (false, _) => (Plan::Pairs, t_rows * n_heads),
        (true, false) => (Plan::Blocks, t_rows.div_ceil(RB) * n_kv_heads),
        (true, true) => (
            Plan::SplitKeys {
                splits,
                per,
                partials: SendPtr(partials.as_mut_ptr()),
            },
            n_kv_heads * splits,
        ),
    };
    let nq_pad = (RB * group).div_ceil(QT) * QT;
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
    let path = isa();
    let (nq, hd) = if blocked { (nq_pad, head_dim) } else { (0, 0) };
    let sizes = [
        nq * hd,
        nq * hd,
        nq,
        nq,
        hd * KB,
        if blocked { nq * KB } else { end },
    ];
    super::pool::for_each(n_tasks, |id| {
        SCRATCH.with(|sc| {
            let sc = &mut *sc.borrow_mut();
            sc.fit(sizes);
            match path {
                // SAFETY: isa() reports these paths only when the CPU has the features.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => unsafe { task_avx512(&a, plan, n_heads, id, sc) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma | Isa::Avx2Vnni => unsafe { task_avx2(&a, plan, n_heads, id, sc) },
                _ => task(Isa::Portable, &a, plan, n_heads, id, sc),
            }
        })
    });
    if let Plan::SplitKeys { splits, .. } = plan {
        merge_splits(&a, n_kv_heads, splits, &partials, out);
    }
    Ok(())
}
