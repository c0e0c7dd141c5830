//! The AVX2 kernel of decode attention (`attention_decode.rs` says what both kernels
//! do), for CPUs without AVX-512 (most laptops and desktops). With 16 ymm registers,
//! each key's partial-sum vector per query head is stored (`st.w`, one 8-lane vector
//! per key and head) and folded 8 keys at a time by horizontal adds ([`fold8`]);
//! `P @ V` keeps up to 3 query heads' accumulators in registers over 4 (or 2) column
//! vectors at a time.

use super::attention_decode::{row_scales, walk_blocks, Block, DecodeArgs, State, DKB};
use super::kv_cache::{KvElem, KvKind};
use std::arch::x86_64::*;

/// Query heads per pass: `HP x 4` value accumulators, a V vector and a broadcast
/// fit the 16 ymm registers.
const HP_MAX: usize = 3;

/// Runs keys `keys` for every query head into `st` (m, l, o per head).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn walk_range<C: KvElem>(
    a: &DecodeArgs<C>,
    keys: std::ops::Range<usize>,
    st: &mut State,
) {
    let (hd, n_heads) = (a.head_dim, a.n_kv * a.group);
    st.start(a, HP_MAX * DKB, n_heads * DKB * 8);
    // SAFETY: forwarded from the caller.
    unsafe {
        match hd / 8 {
            4 => walk::<C, 4>(a, keys, st),
            8 => walk::<C, 8>(a, keys, st),
            10 => walk::<C, 10>(a, keys, st),
            12 => walk::<C, 12>(a, keys, st),
            _ => walk::<C, 16>(a, keys, st),
        }
    }
}

/// [`walk_range`] at `NV` vectors of 8 per head.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn walk<C: KvElem, const NV: usize>(
    a: &DecodeArgs<C>,
    keys: std::ops::Range<usize>,
    st: &mut State,
) {
    walk_blocks!(
        C, a, keys, 8 * NV, HP_MAX,
        scores(k, n, j, h0, hp) => match hp {
            1 => scores::<C, NV, 1>(k, a.kw, n, h0, j, st),
            2 => scores::<C, NV, 2>(k, a.kw, n, h0, j, st),
            _ => scores::<C, NV, 3>(k, a.kw, n, h0, j, st),
        },
        values(b, h0, hp) => match hp {
            1 => values::<C, NV, 1>(&b, h0, st),
            2 => values::<C, NV, 2>(&b, h0, st),
            _ => values::<C, NV, 3>(&b, h0, st),
        },
    )
}

/// 8 values of a head row at `p`, as f32 (int8: the integers; the scale is applied
/// by the caller).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8<C: KvElem>(p: *const C) -> __m256 {
    // SAFETY: the caller keeps 8 values at p inside the cache.
    unsafe {
        match C::KIND {
            KvKind::F32 => _mm256_loadu_ps(p as *const f32),
            KvKind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            KvKind::I8 => {
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
            }
        }
    }
}

/// [`row_scales`] of rows `j0..j0 + 8` as a vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_scales8<C: KvElem>(
    p: *const C,
    kw: usize,
    hd: usize,
    j0: usize,
    nk: usize,
) -> __m256 {
    // SAFETY: forwarded bounds; an 8-float array.
    unsafe { _mm256_loadu_ps(row_scales::<C, 8>(p, kw, hd, j0, nk).as_ptr()) }
}

/// Eight keys' partial-sum vectors folded to one vector: lane e is key e's sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fold8(p: [__m256; 8]) -> __m256 {
    // Pairwise sums within 128-bit lanes, then across the two lanes.
    let u0 = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
    let u1 = _mm256_hadd_ps(_mm256_hadd_ps(p[4], p[5]), _mm256_hadd_ps(p[6], p[7]));
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(u0, u1),
        _mm256_permute2f128_ps::<0x31>(u0, u1),
    )
}

/// `e^x` per lane: `math::exp`'s range reduction and polynomial with fused
/// multiply-adds, `2^n` from its exponent bits (the AVX-512 kernel's `exp_ps`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn exp8(x: __m256) -> __m256 {
    use super::math::{EXP_LN2_HI as LN2_HI, EXP_LN2_LO as LN2_LO, EXP_POLY};
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let e = _mm256_add_ps(
        _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r),
        _mm256_set1_ps(1.0),
    );
    // n is in [-126, 127] after the clamp: 2^n is a normal f32.
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    _mm256_mul_ps(e, two_n)
}

/// Horizontal max and sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hmax8(x: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum8(x: __m256) -> f32 {
    let m = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_add_ss(m, _mm_shuffle_ps::<1>(m, m)))
}

/// The partial-sum vectors of query heads `h0..h0 + HP` for the `n` (1..=4) keys whose
/// first K row (the head's column) is at `k`, keys `j..j + n` of the block, into
/// `st.w` (one 8-lane vector per key and head).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores<C: KvElem, const NV: usize, const HP: usize>(
    k: *const C,
    kw: usize,
    n: usize,
    h0: usize,
    j: usize,
    st: &mut State,
) {
    let hd = 8 * NV;
    debug_assert!(st.q.len() >= (h0 + HP) * hd && st.w.len() >= (h0 + HP) * DKB * 8);
    let q = st.q.as_ptr().wrapping_add(h0 * hd);
    let w = st.w.as_mut_ptr().wrapping_add(h0 * DKB * 8);
    // SAFETY: rows e < n and their first hd values are inside the cache, heads
    // h0..h0 + HP and keys j + e < DKB inside st's buffers (the caller's bounds).
    unsafe {
        for e in 0..n {
            let row = k.add(e * kw);
            let mut acc = [_mm256_setzero_ps(); HP];
            for c in 0..NV {
                let kc = load8(row.add(8 * c));
                for (h, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(h * hd + 8 * c)), kc, *acc);
                }
            }
            for (h, &acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(w.add((h * DKB + j + e) * 8), acc);
            }
        }
    }
}

/// The block's online softmax step and `P @ V` for query heads `h0..h0 + HP`: their
/// scores folded from `st.w`, then the running (max, sum) and outputs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values<C: KvElem, const NV: usize, const HP: usize>(
    b: &Block<C>,
    h0: usize,
    st: &mut State,
) {
    let (hd, nk, kw) = (8 * NV, b.nk, b.kw);
    debug_assert!(st.o.len() >= (h0 + HP) * hd && st.p.len() >= HP * DKB);
    debug_assert!(st.w.len() >= (h0 + HP) * DKB * 8);
    let w = st.w.as_ptr().wrapping_add(h0 * DKB * 8);
    const NS: usize = DKB / 8;
    // SAFETY (whole body): rows j < nk and the first hd values of each (plus an int8
    // row's scale) are inside the caches; heads h0..h0 + HP are inside st's buffers
    // (the caller's bounds). Folded lanes of keys past nk hold stale sums and are
    // masked.
    unsafe {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let valid: [__m256; NS] = std::array::from_fn(|i| {
            let idx = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * i as i32));
            _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(nk as i32), idx))
        });
        let ks: [__m256; NS] = std::array::from_fn(|i| row_scales8(b.k, kw, hd, 8 * i, nk));
        let vs: [__m256; NS] = std::array::from_fn(|i| row_scales8(b.v, kw, hd, 8 * i, nk));
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut corr = [0f32; HP];
        for (h, corr) in corr.iter_mut().enumerate() {
            let s: [__m256; NS] = std::array::from_fn(|i| {
                if 8 * i >= nk {
                    return neg_inf;
                }
                let p = std::array::from_fn(|e| _mm256_loadu_ps(w.add((h * DKB + 8 * i + e) * 8)));
                _mm256_blendv_ps(neg_inf, _mm256_mul_ps(fold8(p), ks[i]), valid[i])
            });
            let mx = s.iter().fold(neg_inf, |m, &x| _mm256_max_ps(m, x));
            let (m_old, m_new) = (st.m[h0 + h], st.m[h0 + h].max(hmax8(mx)));
            *corr = super::math::exp(m_old - m_new);
            let mv = _mm256_set1_ps(m_new);
            let mut total = _mm256_setzero_ps();
            for (i, &si) in s.iter().enumerate() {
                let p = _mm256_and_ps(exp8(_mm256_sub_ps(si, mv)), valid[i]);
                total = _mm256_add_ps(total, p);
                // int8: the V rows' scales, applied to the weights of their rows.
                _mm256_storeu_ps(
                    st.p.as_mut_ptr().add(h * DKB + 8 * i),
                    _mm256_mul_ps(p, vs[i]),
                );
            }
            st.l[h0 + h] = st.l[h0 + h] * *corr + hsum8(total);
            st.m[h0 + h] = m_new;
        }
        // P @ V, 4 column vectors at a time (2 for head_dim 80).
        let o = st.o.as_mut_ptr().add(h0 * hd);
        if NV.is_multiple_of(4) {
            for c0 in (0..NV).step_by(4) {
                value_cols::<C, HP, 4>(b, o, hd, c0, &corr, st.p.as_ptr());
            }
        } else {
            for c0 in (0..NV).step_by(2) {
                value_cols::<C, HP, 2>(b, o, hd, c0, &corr, st.p.as_ptr());
            }
        }
    }
}

/// `o[h][8c0..8(c0 + CW)] = o * corr[h] + sum_j p[h][j] v[j][..]` for `HP` heads (`o`
/// rows `hd` apart, `p` rows `DKB` apart) over the block's rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn value_cols<C: KvElem, const HP: usize, const CW: usize>(
    b: &Block<C>,
    o: *mut f32,
    hd: usize,
    c0: usize,
    corr: &[f32; HP],
    p: *const f32,
) {
    // SAFETY: the caller's bounds (rows j < nk, columns below hd, heads below HP).
    unsafe {
        let mut acc: [[__m256; CW]; HP] = std::array::from_fn(|h| {
            let cv = _mm256_set1_ps(corr[h]);
            std::array::from_fn(|c| {
                _mm256_mul_ps(_mm256_loadu_ps(o.add(h * hd + 8 * (c0 + c))), cv)
            })
        });
        for j in 0..b.nk {
            let row = b.v.add(j * b.kw + 8 * c0);
            let vr: [__m256; CW] = std::array::from_fn(|c| load8(row.add(8 * c)));
            for (h, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*p.add(h * DKB + j));
                for (a, &vc) in acc.iter_mut().zip(&vr) {
                    *a = _mm256_fmadd_ps(x, vc, *a);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (c, &a) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(h * hd + 8 * (c0 + c)), a);
            }
        }
    }
}
