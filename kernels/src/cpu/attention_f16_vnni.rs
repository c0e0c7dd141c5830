//! The f16 bidirectional attention on AVX512-VNNI CPUs without AVX512-FP16 (Zen 4, Ice
//! Lake): 16-bit integer tiles with `vpdpwssd` (32 products an instruction, twice the
//! f32 FMA's), in the layout of the AVX512-FP16 tiles (`attention_f16.rs`): the
//! operands come in pairs, which `vpdpwssd` sums within a lane, so a lane is one key
//! (scores) or one channel (`P V`) and no pair sums are added afterwards.
//!
//! Each operand row is quantized to integers with its own scale, as finely as the i32
//! sums allow ([`Q_MAX`] and friends): a query row to 12 bits, a key's K and V rows to
//! 13, a row of softmax weights to 12. That is at least the f16 operands' 11-bit
//! precision for each row's largest values (finer than f16's at the top of a row, and
//! coarser deep below it, where the products weigh least). The sums are exact integers,
//! taken to f32 at the end of a score and every [`FLUSH_KEYS`] keys of `P V`. The
//! conformance cases of `AttentionPrecision::F16` measure 2e-7 .. 5e-6 (threshold 1e-4;
//! the AVX512-FP16 tiles' f16 sums measure up to 1.5e-5, f32 sums of f16 operands
//! ~1e-7).
//!
//! V's per-key scales fold into the weights before those are quantized: `sum_j p_j
//! v_jc = sum_j (p_j s_j) vq_jc`, so the value tile is an integer sum over keys alone.

use super::attention_avx512::{first_lanes as lanes, pow2_ps};
use super::attention_f16::{I16Panel, KEY_STEP, MAX_HEAD_DIM, SCORE_ROWS};
use super::attention_panels::{Args, RowScratch};
use std::arch::x86_64::*;
use std::f32::consts::LOG2_E;

/// A query row's largest magnitude (12 bits).
pub(super) const Q_MAX: f32 = 2047.0;
/// A key's K or V row's largest magnitude (13 bits). A score sums at most
/// `MAX_HEAD_DIM` products of `Q_MAX * KV_MAX`: 2.146e9, under i32's 2.147e9.
pub(super) const KV_MAX: f32 = 4095.0;
/// A row of softmax weights' largest value (12 bits).
pub(super) const P_MAX: f32 = 2047.0;
/// Keys of `P V` summed in i32 before f32 takes the sum: `FLUSH_KEYS * P_MAX *
/// KV_MAX` is 2.146e9, under i32's 2.147e9.
pub(super) const FLUSH_KEYS: usize = 256;

const _: () = assert!(
    MAX_HEAD_DIM as f64 * Q_MAX as f64 * KV_MAX as f64 <= i32::MAX as f64
        && FLUSH_KEYS as f64 * P_MAX as f64 * KV_MAX as f64 <= i32::MAX as f64
);

/// `n` f32 at `x` times `c`, quantized to i16 at `dst` with the scale that maps their
/// largest magnitude to `qmax` (round to nearest even); returns that scale (0 for a
/// zero row, whose integers are 0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn to_i16(x: *const f32, n: usize, c: f32, qmax: f32, dst: *mut i16) -> f32 {
    let cv = _mm512_set1_ps(c);
    let mut mx = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY (whole body): masked to the n values the caller owns at both ends.
    unsafe {
        while i < n {
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes(n - i), x.add(i)), cv);
            mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
            i += 16;
        }
        let max = _mm512_reduce_max_ps(mx);
        let (scale, inv) = if max > 0.0 {
            (max / qmax, qmax / max)
        } else {
            (0.0, 0.0)
        };
        let k = _mm512_set1_ps(c * inv);
        i = 0;
        while i < n {
            let m = lanes(n - i);
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x.add(i)), k));
            _mm256_mask_storeu_epi16(dst.add(i), m, _mm512_cvtsepi32_epi16(q));
            i += 16;
        }
        scale
    }
}

/// The i16 pair at `p` in every pair of lanes (a `vpbroadcastd`, on a load port).
///
/// # Safety
/// `p` points at two readable i16.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bcast_pair(p: *const i16) -> __m512i {
    // SAFETY: the caller's contract.
    _mm512_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
}

/// Packs KV head `g` of sequence `b` into `panel` (layout: [`I16Panel`]).
///
/// # Safety
/// AVX-512 F/BW/VL; `panel` is `p.bytes` long, zeroed, 64-byte aligned.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pack_panel(a: &Args, p: &I16Panel, b: usize, g: usize, panel: &mut [u8]) {
    let (hd, npad, cpad) = (p.hd, p.npad, p.cpad);
    let base = panel.as_mut_ptr();
    let row = |j: usize| (b * a.seq + j) * a.kw + g * hd;
    // A key's K row (a zero pad dim after an odd head), and V rows of a key pair.
    let mut kq = [0i16; MAX_HEAD_DIM + 2];
    let mut vq = [[0i16; MAX_HEAD_DIM]; 2];
    // SAFETY (whole body): rows j < seq of sequence b exist in k and v; panel offsets
    // stay inside the layout `I16Panel::new` sized.
    unsafe {
        // Pairs are dwords: K's (two dims of a key) and V's (a channel of two keys).
        let kt = base.add(p.kt) as *mut u32;
        let vt = base.add(p.vt) as *mut u32;
        let sk = base.add(p.sk) as *mut f32;
        let sv = base.add(p.sv) as *mut f32;
        for j in 0..a.seq {
            sk.add(j).write(to_i16(
                a.k.as_ptr().add(row(j)),
                hd,
                1.0,
                KV_MAX,
                kq.as_mut_ptr(),
            ));
            let half = &mut vq[j % 2];
            sv.add(j).write(to_i16(
                a.v.as_ptr().add(row(j)),
                hd,
                1.0,
                KV_MAX,
                half.as_mut_ptr(),
            ));
            let kw = kq.as_ptr() as *const u32;
            for dp in 0..p.hd2 / 2 {
                kt.add(dp * npad + j).write(kw.add(dp).read_unaligned());
            }
            // A key pair's V, once both rows (or the last, unpaired one) are in.
            if j % 2 == 1 || j + 1 == a.seq {
                if j % 2 == 0 {
                    vq[1] = [0; MAX_HEAD_DIM];
                }
                for (c, (&v0, &v1)) in vq[0].iter().zip(&vq[1]).take(hd).enumerate() {
                    let pair = (v0 as u16 as u32) | ((v1 as u16 as u32) << 16);
                    vt.add((j / 2) * cpad + c).write(pair);
                }
            }
        }
    }
}

/// Query rows `rows` of head `h` of sequence `b` against the head's packed `panel`;
/// writes their outputs.
///
/// # Safety
/// AVX-512 F/BW/VL and VNNI; `panel` was packed by [`pack_panel`] for this head's KV
/// head; the scratch holds `I16Panel::scratch_bytes`; no other task writes these
/// output rows' head columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn row_block(
    a: &Args,
    p: &I16Panel,
    b: usize,
    h: usize,
    rows: std::ops::Range<usize>,
    panel: &[u8],
    sc: &mut RowScratch,
) {
    let p = *p;
    let (hd, hd2, npad) = (p.hd, p.hd2, p.npad);
    let base = panel.as_ptr();
    let qq = sc.q.as_mut_ptr() as *mut i16;
    let s = sc.s.as_mut_ptr() as *mut f32;
    let pq = sc.p.as_mut_ptr() as *mut i16;
    let mut i0 = rows.start;
    while i0 < rows.end {
        let mr = (rows.end - i0).min(SCORE_ROWS);
        let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); SCORE_ROWS];
        let mut sq = [0f32; SCORE_ROWS];
        // SAFETY (whole body): query rows i0..i0+mr exist; scratch and panel offsets
        // stay inside the sizes the caller fitted.
        unsafe {
            for (r, sq) in sq.iter_mut().enumerate().take(mr) {
                let x = a.q.as_ptr().add((b * a.seq + i0 + r) * a.q_stride + h * hd);
                // Scores in base 2: the softmax's exp becomes 2^x. An odd head's pad
                // dim is zero.
                *sq = to_i16(x, hd, a.scale * LOG2_E, Q_MAX, qq.add(r * hd2));
                if hd2 > hd {
                    qq.add(r * hd2 + hd).write(0);
                }
            }
            for j0 in (0..npad).step_by(KEY_STEP) {
                match mr {
                    8 => score_tile::<8>(qq, &sq, base, p, a.seq, j0, s, &mut mx),
                    7 => score_tile::<7>(qq, &sq, base, p, a.seq, j0, s, &mut mx),
                    6 => score_tile::<6>(qq, &sq, base, p, a.seq, j0, s, &mut mx),
                    5 => score_tile::<5>(qq, &sq, base, p, a.seq, j0, s, &mut mx),
                    4 => score_tile::<4>(qq, &sq, base, p, a.seq, j0, s, &mut mx),
                    3 => score_tile::<3>(qq, &sq, base, p, a.seq, j0, s, &mut mx),
                    2 => score_tile::<2>(qq, &sq, base, p, a.seq, j0, s, &mut mx),
                    _ => score_tile::<1>(qq, &sq, base, p, a.seq, j0, s, &mut mx),
                }
            }
            // Per row: 1 / sum of its weights times its weights' scale.
            let mut out_scale = [0f32; SCORE_ROWS];
            for (r, o) in out_scale.iter_mut().enumerate().take(mr) {
                let m = _mm512_reduce_max_ps(mx[r]);
                *o = softmax_i16(s.add(r * npad), m, base, p, a.seq, pq.add(r * npad));
            }
            let mut r0 = 0;
            while r0 < mr {
                let n = (mr - r0).min(4);
                let out = a.out.at((b * a.seq + i0 + r0) * a.qw + h * hd);
                let (pp, os) = (pq.add(r0 * npad), &out_scale[r0..]);
                let mut c0 = 0;
                while c0 < hd {
                    let nv = (hd - c0).div_ceil(16).min(3);
                    macro_rules! pass {
                        ($($v:literal),*) => {
                            match (n, nv) {
                                $((4, $v) => value_tile::<4, $v>(pp, os, base, p, a.seq, c0, out, a.qw),
                                  (3, $v) => value_tile::<3, $v>(pp, os, base, p, a.seq, c0, out, a.qw),
                                  (2, $v) => value_tile::<2, $v>(pp, os, base, p, a.seq, c0, out, a.qw),
                                  (_, $v) => value_tile::<1, $v>(pp, os, base, p, a.seq, c0, out, a.qw),)*
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

/// Scores of `MR` quantized query rows (scales `sq`) against keys `j0..j0 + 32`: i32
/// sums over the head dim (a lane per key), times the row's and each key's scale, as
/// f32 to row `r` of `s` (`npad` apart); `mx[r]` keeps the running max over the keys
/// `< seq`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn score_tile<const MR: usize>(
    qq: *const i16,
    sq: &[f32; SCORE_ROWS],
    panel: *const u8,
    p: I16Panel,
    seq: usize,
    j0: usize,
    s: *mut f32,
    mx: &mut [__m512; SCORE_ROWS],
) {
    let (hd2, npad) = (p.hd2, p.npad);
    let mut acc = [[_mm512_setzero_si512(); 2]; MR];
    // SAFETY (whole body): key pairs j0..j0+32 <= npad of every dim pair, query rows
    // of hd2 values, key scales and score rows of npad floats.
    unsafe {
        let kt = panel.add(p.kt) as *const i16;
        for dp in 0..hd2 / 2 {
            let kp = kt.add((dp * npad + j0) * 2);
            let k0 = _mm512_loadu_si512(kp as *const _);
            let k1 = _mm512_loadu_si512(kp.add(32) as *const _);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = bcast_pair(qq.add(r * hd2 + 2 * dp));
                acc[0] = _mm512_dpwssd_epi32(acc[0], x, k0);
                acc[1] = _mm512_dpwssd_epi32(acc[1], x, k1);
            }
        }
        let sk = panel.add(p.sk) as *const f32;
        for (r, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let j = j0 + 16 * v;
                let scale = _mm512_mul_ps(_mm512_set1_ps(sq[r]), _mm512_loadu_ps(sk.add(j)));
                let x = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale);
                _mm512_storeu_ps(s.add(r * npad + j), x);
                mx[r] = _mm512_mask_max_ps(mx[r], lanes(seq.saturating_sub(j)), mx[r], x);
            }
        }
    }
}

/// One row's softmax weights `2^(s - m)` for keys `< seq`, each times its key's V
/// scale, quantized to i16 at `pq` (0 for the padding up to `npad`); returns the
/// weights' scale over their f32 sum (what the value tile's sums are multiplied by).
/// `s` is overwritten.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn softmax_i16(
    s: *mut f32,
    m: f32,
    panel: *const u8,
    p: I16Panel,
    seq: usize,
    pq: *mut i16,
) -> f32 {
    let npad = p.npad;
    // SAFETY (whole body): s, the V scales and pq hold npad values.
    unsafe {
        let sv = panel.add(p.sv) as *const f32;
        let m = _mm512_set1_ps(m);
        let mut l = _mm512_setzero_ps();
        let mut wmax = _mm512_setzero_ps();
        let mut j = 0;
        while j < npad {
            let e = pow2_ps(_mm512_sub_ps(_mm512_loadu_ps(s.add(j)), m), 1.0);
            let e = _mm512_maskz_mov_ps(lanes(seq.saturating_sub(j)), e);
            l = _mm512_add_ps(l, e);
            let w = _mm512_mul_ps(e, _mm512_loadu_ps(sv.add(j)));
            wmax = _mm512_max_ps(wmax, _mm512_abs_ps(w));
            _mm512_storeu_ps(s.add(j), w);
            j += 16;
        }
        let (l, wmax) = (_mm512_reduce_add_ps(l), _mm512_reduce_max_ps(wmax));
        if wmax == 0.0 {
            std::ptr::write_bytes(pq, 0, npad);
            return 0.0;
        }
        let k = _mm512_set1_ps(P_MAX / wmax);
        j = 0;
        while j < npad {
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(s.add(j)), k));
            _mm256_storeu_si256(pq.add(j) as *mut __m256i, _mm512_cvtsepi32_epi16(q));
            j += 16;
        }
        wmax / P_MAX / l
    }
}

/// `P V` for `MR` rows over channels `c0 .. c0 + 16 NV` (of `hd`): `sum_j pq[j]
/// vq[j][c]` in i32 over runs of [`FLUSH_KEYS`] keys (a lane per channel), across runs
/// in f32, times the row's `out_scale`, written to `out` (row `r` at `r * qw`, channel
/// `c` at `c`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn value_tile<const MR: usize, const NV: usize>(
    pq: *const i16,
    out_scale: &[f32],
    panel: *const u8,
    p: I16Panel,
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
        let vt = panel.add(p.vt) as *const i16;
        let pairs = seq.div_ceil(2);
        let mut j0 = 0;
        while j0 < pairs {
            let j1 = (j0 + FLUSH_KEYS / 2).min(pairs);
            let mut acc = [[_mm512_setzero_si512(); NV]; MR];
            for jp in j0..j1 {
                let vp = vt.add((jp * cpad + c0) * 2);
                let mut vv = [_mm512_setzero_si512(); NV];
                for (n, vv) in vv.iter_mut().enumerate() {
                    *vv = _mm512_loadu_si512(vp.add(32 * n) as *const _);
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = bcast_pair(pq.add(r * npad + 2 * jp));
                    for n in 0..NV {
                        acc[n] = _mm512_dpwssd_epi32(acc[n], x, vv[n]);
                    }
                }
            }
            for (wide, acc) in wide.iter_mut().zip(&acc) {
                for (w, &a) in wide.iter_mut().zip(acc) {
                    *w = _mm512_add_ps(*w, _mm512_cvtepi32_ps(a));
                }
            }
            j0 = j1;
        }
        for (r, wide) in wide.iter().enumerate() {
            let os = _mm512_set1_ps(out_scale[r]);
            for (n, &x) in wide.iter().enumerate() {
                let c = c0 + 16 * n;
                _mm512_mask_storeu_ps(
                    out.add(r * qw + c),
                    lanes(hd.saturating_sub(c)),
                    _mm512_mul_ps(x, os),
                );
            }
        }
    }
}
