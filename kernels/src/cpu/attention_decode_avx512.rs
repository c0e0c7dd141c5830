//! The AVX-512 kernel of decode attention (`attention_decode.rs` says what both
//! kernels do): 16 keys' partial-sum vectors are folded into one vector of 16 scores
//! ([`fold4`], [`fold_lanes`]: 30 shuffles per 16 keys and query head, not 64 per 16
//! keys and 16 columns of a transpose), and up to 4 query heads keep their value
//! accumulators in registers (`HP x NV` zmm).

use super::attention_decode::{row_scales, walk_blocks, Block, DecodeArgs, State, DKB};
use super::kv_cache::{KvElem, KvKind};
use std::arch::x86_64::*;

/// Quads of 4 keys in a block.
const QUADS: usize = DKB / 4;
/// Query heads per pass over a K/V block: their value accumulators stay in registers
/// (`HP x NV` zmm). Larger groups take several passes.
const HP_MAX: usize = 4;

/// Runs keys `keys` for every query head into `st` (m, l, o per head).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn walk_range<C: KvElem>(
    a: &DecodeArgs<C>,
    keys: std::ops::Range<usize>,
    st: &mut State,
) {
    let (hd, n_heads) = (a.head_dim, a.n_kv * a.group);
    st.start(a, HP_MAX * DKB, n_heads * QUADS * 16);
    // SAFETY: forwarded from the caller.
    unsafe {
        match hd / 16 {
            2 => walk::<C, 2>(a, keys, st),
            4 => walk::<C, 4>(a, keys, st),
            5 => walk::<C, 5>(a, keys, st),
            6 => walk::<C, 6>(a, keys, st),
            _ => walk::<C, 8>(a, keys, st),
        }
    }
}

/// [`walk_range`] at `NV` vectors per head.
#[target_feature(enable = "avx512f")]
unsafe fn walk<C: KvElem, const NV: usize>(
    a: &DecodeArgs<C>,
    keys: std::ops::Range<usize>,
    st: &mut State,
) {
    // Query heads per pass: their value accumulators stay in registers.
    let per_pass = if NV <= 5 { HP_MAX } else { 2 };
    walk_blocks!(
        C, a, keys, 16 * NV, per_pass,
        scores(k, n, j, h0, hp) => match hp {
            1 => scores::<C, NV, 1>(k, a.kw, n, h0, j / 4, st),
            2 => scores::<C, NV, 2>(k, a.kw, n, h0, j / 4, st),
            3 => scores::<C, NV, 3>(k, a.kw, n, h0, j / 4, st),
            _ => scores::<C, NV, 4>(k, a.kw, n, h0, j / 4, st),
        },
        values(b, h0, hp) => match hp {
            1 => values::<C, NV, 1>(&b, h0, st),
            2 => values::<C, NV, 2>(&b, h0, st),
            3 => values::<C, NV, 3>(&b, h0, st),
            _ => values::<C, NV, 4>(&b, h0, st),
        },
    )
}

/// 16 values of a head row at `p`, as f32 (int8: the integers; the scale is applied
/// by the caller).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load16<C: KvElem>(p: *const C) -> __m512 {
    // SAFETY: the caller keeps 16 values at p inside the cache.
    unsafe {
        match C::KIND {
            KvKind::F32 => _mm512_loadu_ps(p as *const f32),
            KvKind::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
            KvKind::I8 => {
                _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
            }
        }
    }
}

/// [`row_scales`] of rows `j0..j0 + 16` as a vector.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn row_scales16<C: KvElem>(
    p: *const C,
    kw: usize,
    hd: usize,
    j0: usize,
    nk: usize,
) -> __m512 {
    // SAFETY: forwarded bounds; a 16-float array.
    unsafe { _mm512_loadu_ps(row_scales::<C, 16>(p, kw, hd, j0, nk).as_ptr()) }
}

/// Four vectors of per-lane partial sums (keys e = 0..3) folded to one: in each
/// 128-bit lane L, element e holds key e's sum over that lane's four values.
#[inline]
#[target_feature(enable = "avx512f")]
fn fold4(p: [__m512; 4]) -> __m512 {
    let t0 = _mm512_add_ps(
        _mm512_unpacklo_ps(p[0], p[1]),
        _mm512_unpackhi_ps(p[0], p[1]),
    );
    let t1 = _mm512_add_ps(
        _mm512_unpacklo_ps(p[2], p[3]),
        _mm512_unpackhi_ps(p[2], p[3]),
    );
    let (a, b) = (_mm512_castps_pd(t0), _mm512_castps_pd(t1));
    _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
    )
}

/// Four [`fold4`] results (keys 4i..4i + 3 in vector i) summed across their 128-bit
/// lanes: lane 4i + e of the result is key 4i + e's whole dot product.
#[inline]
#[target_feature(enable = "avx512f")]
fn fold_lanes(w: [__m512; 4]) -> __m512 {
    let x = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(w[0], w[1]),
        _mm512_shuffle_f32x4::<0xEE>(w[0], w[1]),
    );
    let y = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x44>(w[2], w[3]),
        _mm512_shuffle_f32x4::<0xEE>(w[2], w[3]),
    );
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(x, y),
        _mm512_shuffle_f32x4::<0xDD>(x, y),
    )
}

/// The scores of query heads `h0..h0 + HP` (one KV head's, `NV` vectors of head_dim)
/// for the `n` (1..=4) keys of quad `quad` of a block, whose first K row (the head's
/// column) is at `k`: one partial-sum vector per (key, head), folded ([`fold4`]) into
/// one vector per head in `st.w`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scores<C: KvElem, const NV: usize, const HP: usize>(
    k: *const C,
    kw: usize,
    n: usize,
    h0: usize,
    quad: usize,
    st: &mut State,
) {
    let hd = 16 * NV;
    debug_assert!(st.q.len() >= (h0 + HP) * hd && st.w.len() >= (h0 + HP) * QUADS * 16);
    let q = st.q.as_ptr().wrapping_add(h0 * hd);
    let w = st.w.as_mut_ptr().wrapping_add(h0 * QUADS * 16);
    // SAFETY: rows e < n and their first hd values are inside the cache, heads
    // h0..h0 + HP inside st's buffers (the caller's bounds).
    unsafe {
        let mut parts = [[_mm512_setzero_ps(); 4]; HP];
        for e in 0..n {
            let row = k.add(e * kw);
            let kr: [__m512; NV] = std::array::from_fn(|c| load16(row.add(16 * c)));
            for (h, part) in parts.iter_mut().enumerate() {
                let qh = q.add(h * hd);
                let mut acc = _mm512_mul_ps(_mm512_loadu_ps(qh), kr[0]);
                for (c, &kc) in kr.iter().enumerate().skip(1) {
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(qh.add(16 * c)), kc, acc);
                }
                part[e] = acc;
            }
        }
        for (h, part) in parts.iter().enumerate() {
            _mm512_storeu_ps(w.add((h * QUADS + quad) * 16), fold4(*part));
        }
    }
}

/// The block's online softmax step and `P @ V` for query heads `h0..h0 + HP`: their
/// scores from the folded quads in `st.w`, then the running (max, sum) and outputs.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn values<C: KvElem, const NV: usize, const HP: usize>(
    b: &Block<C>,
    h0: usize,
    st: &mut State,
) {
    let (hd, nk, kw) = (16 * NV, b.nk, b.kw);
    debug_assert!(st.o.len() >= (h0 + HP) * hd && st.p.len() >= HP * DKB);
    debug_assert!(st.w.len() >= (h0 + HP) * QUADS * 16);
    let w = st.w.as_ptr().wrapping_add(h0 * QUADS * 16);
    // SAFETY (whole body): rows j < nk and the first hd values of each (plus an int8
    // row's scale) are inside the caches; heads h0..h0 + HP are inside st's buffers
    // (the caller's bounds).
    unsafe {
        // Each half's four folded quads summed across lanes (lanes past nk are
        // masked below).
        let mut s = [[_mm512_setzero_ps(); 2]; HP];
        for half in 0..2 {
            if 16 * half >= nk {
                break;
            }
            let ks = row_scales16(b.k, kw, hd, 16 * half, nk);
            for (h, s) in s.iter_mut().enumerate() {
                let wq: [__m512; 4] = std::array::from_fn(|i| {
                    _mm512_loadu_ps(w.add((h * QUADS + 4 * half + i) * 16))
                });
                s[half] = _mm512_mul_ps(fold_lanes(wq), ks);
            }
        }
        // Online softmax over the block's nk keys.
        let masks = [
            super::attention_avx512::first_lanes(nk),
            super::attention_avx512::first_lanes(nk.saturating_sub(16)),
        ];
        let vs = [
            row_scales16(b.v, kw, hd, 0, nk),
            row_scales16(b.v, kw, hd, 16, nk),
        ];
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut corr = [0f32; HP];
        for (h, s) in s.iter().enumerate() {
            let mx = _mm512_mask_max_ps(neg_inf, masks[0], neg_inf, s[0]);
            let mx = _mm512_mask_max_ps(mx, masks[1], mx, s[1]);
            let (m_old, m_new) = (st.m[h0 + h], st.m[h0 + h].max(_mm512_reduce_max_ps(mx)));
            corr[h] = super::math::exp(m_old - m_new);
            let mv = _mm512_set1_ps(m_new);
            let p: [__m512; 2] = std::array::from_fn(|c| {
                _mm512_maskz_mov_ps(
                    masks[c],
                    super::attention_avx512::exp_ps(_mm512_sub_ps(s[c], mv)),
                )
            });
            st.l[h0 + h] = st.l[h0 + h] * corr[h] + _mm512_reduce_add_ps(_mm512_add_ps(p[0], p[1]));
            st.m[h0 + h] = m_new;
            for c in 0..2 {
                // int8: the V rows' scales, applied to the weights of their rows.
                _mm512_storeu_ps(
                    st.p.as_mut_ptr().add(h * DKB + 16 * c),
                    _mm512_mul_ps(p[c], vs[c]),
                );
            }
        }
        // P @ V into the running outputs, rescaled by the softmax correction.
        let o = st.o.as_mut_ptr().add(h0 * hd);
        let mut acc: [[__m512; NV]; HP] = std::array::from_fn(|h| {
            let cv = _mm512_set1_ps(corr[h]);
            std::array::from_fn(|c| _mm512_mul_ps(_mm512_loadu_ps(o.add(h * hd + 16 * c)), cv))
        });
        let pp = st.p.as_ptr();
        for j in 0..nk {
            let row = b.v.add(j * kw);
            let vr: [__m512; NV] = std::array::from_fn(|c| load16(row.add(16 * c)));
            for (h, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*pp.add(h * DKB + j));
                for (a, &vc) in acc.iter_mut().zip(&vr) {
                    *a = _mm512_fmadd_ps(x, vc, *a);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (c, &a) in acc.iter().enumerate() {
                _mm512_storeu_ps(o.add(h * hd + 16 * c), a);
            }
        }
    }
}
