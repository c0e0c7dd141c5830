//! AVX512-FP16 tiles of the f16 bidirectional attention (`attention_f16.rs` says what
//! runs when, and why the operands come in pairs): [`pack_panel`] converts one KV
//! head's K (transposed) and V to paired f16; [`row_block`] runs up to [`SCORE_ROWS`]
//! query rows at a time through the score tile, the f32 softmax and the value tile.

use super::attention_avx512::{first_lanes as lanes, pow2_ps};
use super::attention_f16::{F16Panel, FLUSH_KEYS, KEY_STEP, MAX_HEAD_DIM, SCORE_ROWS};
use super::attention_panels::{Args, RowScratch};
use std::arch::x86_64::*;
use std::f32::consts::LOG2_E;

/// Rounding of every f32 -> f16 conversion: to nearest, ties to even.
const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// `n` f32 at `x` times `c`, rounded to f16 at `dst`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn to_f16(x: *const f32, n: usize, c: f32, dst: *mut u16) {
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        // SAFETY: masked to the n values the caller owns at both ends.
        unsafe {
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x.add(i)), _mm512_set1_ps(c));
            _mm256_mask_storeu_epi16(dst.add(i) as *mut i16, m, _mm512_cvtps_ph::<RNE>(v));
        }
        i += 16;
    }
}

/// The 16 pair sums of an f16 vector of pairs, in f32: lane `i` is `x[2i] + x[2i + 1]`.
#[inline]
#[target_feature(enable = "avx512f,avx512fp16")]
fn pair_sums(x: __m512h) -> __m512 {
    let i = _mm512_castph_si512(x);
    let lo = _mm512_cvtph_ps(_mm512_castsi512_si256(i));
    let hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(i));
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    _mm512_add_ps(
        _mm512_permutex2var_ps(lo, even, hi),
        _mm512_permutex2var_ps(lo, odd, hi),
    )
}

/// The f16 pair at `p` (two u16) in every pair of lanes: a `vpbroadcastd`, which runs
/// on a load port alone.
///
/// # Safety
/// `p` points at two readable u16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512fp16")]
unsafe fn bcast_pair(p: *const u16) -> __m512h {
    // SAFETY: the caller's contract.
    _mm512_castsi512_ph(_mm512_set1_epi32(unsafe {
        (p as *const i32).read_unaligned()
    }))
}

/// Packs KV head `g` of sequence `b` into `panel` (layout: [`F16Panel`]).
///
/// # Safety
/// AVX-512 F/BW/VL and AVX512-FP16; `panel` is `p.bytes` long, zeroed, 64-byte aligned.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16")]
pub(super) unsafe fn pack_panel(a: &Args, p: &F16Panel, b: usize, g: usize, panel: &mut [u8]) {
    let (hd, npad, cpad) = (p.hd, p.npad, p.cpad);
    let base = panel.as_mut_ptr();
    let row = |j: usize| (b * a.seq + j) * a.kw + g * hd;
    let mut kh = [0u16; MAX_HEAD_DIM];
    let mut vh = [0u16; MAX_HEAD_DIM];
    // SAFETY (whole body): rows j < seq of sequence b exist in k and v; panel offsets
    // stay inside the layout `F16Panel::new` sized.
    unsafe {
        let kt = base.add(p.kt) as *mut u16;
        let vt = base.add(p.vt) as *mut u16;
        for j in 0..a.seq {
            to_f16(a.k.as_ptr().add(row(j)), hd, 1.0, kh.as_mut_ptr());
            to_f16(a.v.as_ptr().add(row(j)), hd, 1.0, vh.as_mut_ptr());
            for d in 0..hd {
                kt.add(((d / 2) * npad + j) * 2 + d % 2).write(kh[d]);
                vt.add(((j / 2) * cpad + d) * 2 + j % 2).write(vh[d]);
            }
        }
    }
}

/// Query rows `rows` of head `h` of sequence `b` against the head's packed `panel`;
/// writes their outputs.
///
/// # Safety
/// AVX-512 F/BW/VL and AVX512-FP16; `panel` was packed by [`pack_panel`] for this
/// head's KV head; the scratch holds `F16Panel::scratch_bytes`; no other task writes
/// these output rows' head columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16")]
pub(super) unsafe fn row_block(
    a: &Args,
    p: &F16Panel,
    b: usize,
    h: usize,
    rows: std::ops::Range<usize>,
    panel: &[u8],
    sc: &mut RowScratch,
) {
    let p = *p;
    let (hd, hd2, npad) = (p.hd, p.hd2, p.npad);
    let base = panel.as_ptr();
    let qh = sc.q.as_mut_ptr() as *mut u16;
    let s = sc.s.as_mut_ptr() as *mut f32;
    let ph = sc.p.as_mut_ptr() as *mut u16;
    let mut i0 = rows.start;
    while i0 < rows.end {
        let mr = (rows.end - i0).min(SCORE_ROWS);
        let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); SCORE_ROWS];
        // SAFETY (whole body): query rows i0..i0+mr exist; scratch and panel offsets
        // stay inside the sizes the caller fitted.
        unsafe {
            for r in 0..mr {
                let x = a.q.as_ptr().add((b * a.seq + i0 + r) * a.q_stride + h * hd);
                // Scores in base 2: the softmax's exp becomes 2^x. An odd head's pad
                // dim is zero.
                to_f16(x, hd, a.scale * LOG2_E, qh.add(r * hd2));
                if hd2 > hd {
                    qh.add(r * hd2 + hd).write(0);
                }
            }
            for j0 in (0..npad).step_by(KEY_STEP) {
                match mr {
                    8 => score_tile::<8>(qh, base, p, a.seq, j0, s, &mut mx),
                    7 => score_tile::<7>(qh, base, p, a.seq, j0, s, &mut mx),
                    6 => score_tile::<6>(qh, base, p, a.seq, j0, s, &mut mx),
                    5 => score_tile::<5>(qh, base, p, a.seq, j0, s, &mut mx),
                    4 => score_tile::<4>(qh, base, p, a.seq, j0, s, &mut mx),
                    3 => score_tile::<3>(qh, base, p, a.seq, j0, s, &mut mx),
                    2 => score_tile::<2>(qh, base, p, a.seq, j0, s, &mut mx),
                    _ => score_tile::<1>(qh, base, p, a.seq, j0, s, &mut mx),
                }
            }
            let mut inv_l = [0f32; SCORE_ROWS];
            for (r, inv_l) in inv_l.iter_mut().enumerate().take(mr) {
                let m = _mm512_reduce_max_ps(mx[r]);
                *inv_l = softmax_f16(s.add(r * npad), m, a.seq, npad, ph.add(r * npad));
            }
            let mut r0 = 0;
            while r0 < mr {
                let n = (mr - r0).min(4);
                let out = a.out.at((b * a.seq + i0 + r0) * a.qw + h * hd);
                let (pp, il) = (ph.add(r0 * npad), &inv_l[r0..]);
                let mut c0 = 0;
                while c0 < hd {
                    let nv = (hd - c0).div_ceil(16).min(3);
                    macro_rules! pass {
                        ($($v:literal),*) => {
                            match (n, nv) {
                                $((4, $v) => value_tile::<4, $v>(pp, il, base, p, a.seq, c0, out, a.qw),
                                  (3, $v) => value_tile::<3, $v>(pp, il, base, p, a.seq, c0, out, a.qw),
                                  (2, $v) => value_tile::<2, $v>(pp, il, base, p, a.seq, c0, out, a.qw),
                                  (_, $v) => value_tile::<1, $v>(pp, il, base, p, a.seq, c0, out, a.qw),)*
                                _ => unreachable!("value passes are 1..=3 vectors"),
                            }
                        };
                    }
                    pass!(1, 2, 3);
                    c0 += 16 * nv;
                }
                r0 += n;
            }
        }
        i0 += mr;
    }
}

/// Scores of `MR` f16 query rows against keys `j0..j0 + 32`, summed over the head dim
/// in f16 (each lane over every other dim, the pair added in f32), stored as f32 to row
/// `r` of `s` (`npad` apart); `mx[r]` keeps the running max over the keys `< seq`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16")]
#[allow(clippy::too_many_arguments)]
unsafe fn score_tile<const MR: usize>(
    qh: *const u16,
    panel: *const u8,
    p: F16Panel,
    seq: usize,
    j0: usize,
    s: *mut f32,
    mx: &mut [__m512; SCORE_ROWS],
) {
    let (hd2, npad) = (p.hd2, p.npad);
    let mut acc = [[_mm512_setzero_ph(); 2]; MR];
    // SAFETY (whole body): key pairs j0..j0+32 <= npad of every dim pair, query rows
    // of hd2 values, score rows of npad floats.
    unsafe {
        let kt = panel.add(p.kt) as *const u16;
        for dp in 0..hd2 / 2 {
            let kp = kt.add((dp * npad + j0) * 2);
            let k0 = _mm512_castsi512_ph(_mm512_loadu_si512(kp as *const _));
            let k1 = _mm512_castsi512_ph(_mm512_loadu_si512(kp.add(32) as *const _));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = bcast_pair(qh.add(r * hd2 + 2 * dp));
                acc[0] = _mm512_fmadd_ph(x, k0, acc[0]);
                acc[1] = _mm512_fmadd_ph(x, k1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let j = j0 + 16 * v;
                let x = pair_sums(acc);
                _mm512_storeu_ps(s.add(r * npad + j), x);
                mx[r] = _mm512_mask_max_ps(mx[r], lanes(seq.saturating_sub(j)), mx[r], x);
            }
        }
    }
}

/// One row's softmax weights `2^(s - m)` as f16 for keys `< seq` (0 for the padding up
/// to `npad`); returns `1 / sum` of the f32 weights.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn softmax_f16(s: *const f32, m: f32, seq: usize, npad: usize, p: *mut u16) -> f32 {
    // SAFETY (whole body): s holds npad floats, p npad values.
    unsafe {
        let m = _mm512_set1_ps(m);
        let mut l = _mm512_setzero_ps();
        let mut j = 0;
        while j < npad {
            let e = pow2_ps(_mm512_sub_ps(_mm512_loadu_ps(s.add(j)), m), 1.0);
            let e = _mm512_maskz_mov_ps(lanes(seq.saturating_sub(j)), e);
            l = _mm512_add_ps(l, e);
            _mm256_storeu_si256(p.add(j) as *mut __m256i, _mm512_cvtps_ph::<RNE>(e));
            j += 16;
        }
        1.0 / _mm512_reduce_add_ps(l)
    }
}

/// `P V` for `MR` rows over channels `c0 .. c0 + 16 NV` (of `hd`): `sum_j p[j] v[j][c]`
/// in f16 over runs of [`FLUSH_KEYS`] keys (each lane over every other key, the pair
/// added in f32), across runs in f32, times the row's `1 / sum p`, written to `out`
/// (row `r` at `r * qw`, channel `c` at `c`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16")]
#[allow(clippy::too_many_arguments)]
unsafe fn value_tile<const MR: usize, const NV: usize>(
    ph: *const u16,
    inv_l: &[f32],
    panel: *const u8,
    p: F16Panel,
    seq: usize,
    c0: usize,
    out: *mut f32,
    qw: usize,
) {
    let (hd, npad, cpad) = (p.hd, p.npad, p.cpad);
    let mut wide = [[_mm512_setzero_ps(); NV]; MR];
    // SAFETY (whole body): key pairs < npad / 2, channel vectors < cpad / 16, weight
    // rows of npad values (zero past seq); output stores masked to the head's hd
    // channels.
    unsafe {
        let vt = panel.add(p.vt) as *const u16;
        let pairs = seq.div_ceil(2);
        let mut j0 = 0;
        while j0 < pairs {
            let j1 = (j0 + FLUSH_KEYS / 2).min(pairs);
            let mut acc = [[_mm512_setzero_ph(); NV]; MR];
            for jp in j0..j1 {
                let vp = vt.add((jp * cpad + c0) * 2);
                let mut vv = [_mm512_setzero_ph(); NV];
                for (n, vv) in vv.iter_mut().enumerate() {
                    *vv = _mm512_castsi512_ph(_mm512_loadu_si512(vp.add(32 * n) as *const _));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = bcast_pair(ph.add(r * npad + 2 * jp));
                    for n in 0..NV {
                        acc[n] = _mm512_fmadd_ph(x, vv[n], acc[n]);
                    }
                }
            }
            for (wide, acc) in wide.iter_mut().zip(&acc) {
                for (w, &a) in wide.iter_mut().zip(acc) {
                    *w = _mm512_add_ps(*w, pair_sums(a));
                }
            }
            j0 = j1;
        }
        for (r, wide) in wide.iter().enumerate() {
            let il = _mm512_set1_ps(inv_l[r]);
            for (n, &x) in wide.iter().enumerate() {
                let c = c0 + 16 * n;
                _mm512_mask_storeu_ps(
                    out.add(r * qw + c),
                    lanes(hd.saturating_sub(c)),
                    _mm512_mul_ps(x, il),
                );
            }
        }
    }
}
