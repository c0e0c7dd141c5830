//! AVX-512 VNNI tiles of the integer bidirectional attention (`attention_i8.rs` says
//! what runs when):
//!
//! - [`pack_panel`]: one KV head's K rows quantized and transposed to `[dim/4][key][4]`,
//!   V quantized per channel and transposed to `[key/4][channel][4]` (4x4 byte
//!   interleaves), so each `vpdpbusd` takes 16 keys (or 16 channels) x 4 products;
//! - [`row_block`]: for up to [`SCORE_ROWS`] query rows at a time, the rows quantized
//!   to `u8 = q + 128`, the score tile (8 rows x 32 keys in 16 accumulators, one
//!   broadcast of 4 query bytes per row and step), the softmax to u8 weights, then
//!   `P V` (4 rows x up to 80 channels in 20 accumulators, one broadcast of 4 weights
//!   per row and step).

use super::attention_avx512::{first_lanes as lanes, pow2_ps};
use super::attention_i8::{Panel, KEY_STEP, SCORE_ROWS};
use super::attention_panels::{Args, RowScratch};
use std::arch::x86_64::*;
use std::f32::consts::LOG2_E;

/// Max |x| over `n` floats at `x`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn amax(x: *const f32, n: usize) -> f32 {
    let mut m = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        // SAFETY: masked to the n floats the caller owns.
        let v = unsafe { _mm512_maskz_loadu_ps(lanes(n - i), x.add(i)) };
        m = _mm512_max_ps(m, _mm512_abs_ps(v));
        i += 16;
    }
    _mm512_reduce_max_ps(m)
}

/// `round_half_even(x * inv)` clamped to +-127, as 16 i8 (the reference's
/// `quantize_row_i8` on each lane: same product, `vcvtps2dq` rounds half to even).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn quantize16(x: __m512, inv: __m512) -> __m128i {
    let q = _mm512_cvtps_epi32(_mm512_mul_ps(x, inv));
    let q = _mm512_max_epi32(
        _mm512_min_epi32(q, _mm512_set1_epi32(127)),
        _mm512_set1_epi32(-127),
    );
    _mm512_cvtepi32_epi8(q)
}

/// `127 / amax` (0 for a zero row) and the scale `amax / 127`, as the reference.
#[inline(always)]
fn inv_and_scale(amax: f32) -> (f32, f32) {
    (if amax > 0.0 { 127.0 / amax } else { 0.0 }, amax / 127.0)
}

/// One row of `hd` floats quantized to `hd` bytes at `dst`, xor `flip` (0x80 turns i8
/// into `u8 = q + 128`). Returns the row's scale and the sum of its i8 values.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_row(x: *const f32, hd: usize, dst: *mut u8, flip: u8) -> (f32, i32) {
    // SAFETY (whole body): x holds hd floats, dst hd bytes; every access is masked.
    unsafe {
        let (inv, s) = inv_and_scale(amax(x, hd));
        let inv = _mm512_set1_ps(inv);
        let mut sum = _mm512_setzero_si512();
        let mut i = 0;
        while i < hd {
            let m = lanes(hd - i);
            let b = quantize16(_mm512_maskz_loadu_ps(m, x.add(i)), inv);
            sum = _mm512_add_epi32(sum, _mm512_cvtepi8_epi32(b));
            let b = _mm_xor_si128(b, _mm_set1_epi8(flip as i8));
            _mm_mask_storeu_epi8(dst.add(i) as *mut i8, m, b);
            i += 16;
        }
        (s, _mm512_reduce_add_epi32(sum))
    }
}

/// Packs KV head `g` of sequence `b` into `panel` (layout: [`Panel`]).
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `panel` is `p.bytes` long, zeroed and 64-byte aligned.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn pack_panel(a: &Args, p: &Panel, b: usize, g: usize, panel: &mut [u8]) {
    let (hd, npad, cpad) = (p.hd, p.npad, p.cpad);
    let base = panel.as_mut_ptr();
    let row = |j: usize| (b * a.seq + j) * a.kw + g * hd;
    // SAFETY (whole body): rows j < seq of sequence b exist in k and v (checked by the
    // caller); panel offsets stay inside the layout `Panel::new` sized.
    unsafe {
        // K: each key row quantized, its 4-byte groups scattered to [g][j].
        let kt = base.add(p.kt) as *mut u32;
        let ksum = base.add(p.ksum) as *mut i32;
        let sk = base.add(p.sk) as *mut f32;
        let mut kq = [0u8; 256];
        for j in 0..a.seq {
            let (s, sum) = quantize_row(a.k.as_ptr().add(row(j)), hd, kq.as_mut_ptr(), 0);
            for (d4, w) in kq[..hd].chunks_exact(4).enumerate() {
                kt.add(d4 * npad + j)
                    .write(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            }
            ksum.add(j).write(128 * sum);
            sk.add(j).write(s);
        }
        // V: one scale per channel over the keys.
        let sv = base.add(p.sv) as *mut f32;
        let mut inv = [0f32; 256];
        for c0 in (0..hd).step_by(16) {
            let m = lanes(hd - c0);
            let mut mx = _mm512_setzero_ps();
            for j in 0..a.seq {
                let x = _mm512_maskz_loadu_ps(m, a.v.as_ptr().add(row(j) + c0));
                mx = _mm512_max_ps(mx, _mm512_abs_ps(x));
            }
            let mut amaxes = [0f32; 16];
            _mm512_storeu_ps(amaxes.as_mut_ptr(), mx);
            for (c, &am) in amaxes.iter().enumerate().take(hd - c0) {
                let (i, s) = inv_and_scale(am);
                inv[c0 + c] = i;
                sv.add(c0 + c).write(s);
            }
        }
        // Four keys at a time: each 16-channel slice of the four rows interleaved to
        // [channel][4 keys] (bytes, then 16-bit pairs), 64 bytes per slice.
        let vt = base.add(p.vt);
        for j0 in (0..a.seq).step_by(4) {
            for c0 in (0..cpad).step_by(16) {
                let m = lanes(hd.saturating_sub(c0));
                let iv = _mm512_maskz_loadu_ps(m, inv.as_ptr().add(c0));
                let mut r = [_mm_setzero_si128(); 4];
                for (t, r) in r.iter_mut().enumerate() {
                    if j0 + t < a.seq && c0 < hd {
                        let x = _mm512_maskz_loadu_ps(m, a.v.as_ptr().add(row(j0 + t) + c0));
                        *r = quantize16(x, iv);
                    }
                }
                let t0 = _mm_unpacklo_epi8(r[0], r[1]);
                let t1 = _mm_unpackhi_epi8(r[0], r[1]);
                let t2 = _mm_unpacklo_epi8(r[2], r[3]);
                let t3 = _mm_unpackhi_epi8(r[2], r[3]);
                let dst = vt.add((j0 / 4 * cpad + c0) * 4) as *mut __m128i;
                _mm_storeu_si128(dst, _mm_unpacklo_epi16(t0, t2));
                _mm_storeu_si128(dst.add(1), _mm_unpackhi_epi16(t0, t2));
                _mm_storeu_si128(dst.add(2), _mm_unpacklo_epi16(t1, t3));
                _mm_storeu_si128(dst.add(3), _mm_unpackhi_epi16(t1, t3));
            }
        }
    }
}

/// Query rows `rows` (at most `ROW_BLOCK`) of head `h` of sequence `b` against the
/// head's packed `panel`; writes their outputs.
///
/// # Safety
/// AVX-512 F/BW/VL/VNNI; `panel` was packed by [`pack_panel`] for this head's KV head;
/// the scratch holds `SCORE_ROWS` rows of `hd` bytes, `npad` f32 and `npad` bytes; no
/// other task writes these output rows' head columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn row_block(
    a: &Args,
    p: &Panel,
    b: usize,
    h: usize,
    rows: std::ops::Range<usize>,
    panel: &[u8],
    sc: &mut RowScratch,
) {
    let p = *p;
    let (hd, npad) = (p.hd, p.npad);
    let base = panel.as_ptr();
    let qu = sc.q.as_mut_ptr() as *mut u8;
    let s = sc.s.as_mut_ptr() as *mut f32;
    let pr = sc.p.as_mut_ptr() as *mut u8;
    let mut i0 = rows.start;
    while i0 < rows.end {
        let mr = (rows.end - i0).min(SCORE_ROWS);
        // Scores are kept in base 2 (times log2 e), so the softmax's exp is a 2^x.
        let mut c = [0f32; SCORE_ROWS];
        let mut mx = [_mm512_set1_ps(f32::NEG_INFINITY); SCORE_ROWS];
        // SAFETY (whole body): query rows i0..i0+mr exist; scratch and panel offsets
        // stay inside the sizes the caller fitted (`Panel` layout).
        unsafe {
            for (r, c) in c.iter_mut().enumerate().take(mr) {
                let x = a.q.as_ptr().add((b * a.seq + i0 + r) * a.q_stride + h * hd);
                *c = quantize_row(x, hd, qu.add(r * hd), 0x80).0 * a.scale * LOG2_E;
            }
            for j0 in (0..npad).step_by(KEY_STEP) {
                match mr {
                    8 => score_tile::<8>(qu, &c, base, p, a.seq, j0, s, &mut mx),
                    7 => score_tile::<7>(qu, &c, base, p, a.seq, j0, s, &mut mx),
                    6 => score_tile::<6>(qu, &c, base, p, a.seq, j0, s, &mut mx),
                    5 => score_tile::<5>(qu, &c, base, p, a.seq, j0, s, &mut mx),
                    4 => score_tile::<4>(qu, &c, base, p, a.seq, j0, s, &mut mx),
                    3 => score_tile::<3>(qu, &c, base, p, a.seq, j0, s, &mut mx),
                    2 => score_tile::<2>(qu, &c, base, p, a.seq, j0, s, &mut mx),
                    _ => score_tile::<1>(qu, &c, base, p, a.seq, j0, s, &mut mx),
                }
            }
            let mut inv_l = [0f32; SCORE_ROWS];
            for (r, inv_l) in inv_l.iter_mut().enumerate().take(mr) {
                let m = _mm512_reduce_max_ps(mx[r]);
                *inv_l = softmax_u8(s.add(r * npad), m, a.seq, npad, pr.add(r * npad));
            }
            let mut r0 = 0;
            while r0 < mr {
                let n = (mr - r0).min(4);
                let out = a.out.at((b * a.seq + i0 + r0) * a.qw + h * hd);
                let (pp, il) = (pr.add(r0 * npad), &inv_l[r0..]);
                let mut c0 = 0;
                while c0 < hd {
                    let nv = (hd - c0).div_ceil(16).min(5);
                    macro_rules! pass {
                        ($($r:literal),*) => {
                            match (n, nv) {
                                $((4, $r) => value_tile::<4, $r>(pp, il, base, p, a.seq, c0, out, a.qw),
                                  (3, $r) => value_tile::<3, $r>(pp, il, base, p, a.seq, c0, out, a.qw),
                                  (2, $r) => value_tile::<2, $r>(pp, il, base, p, a.seq, c0, out, a.qw),
                                  (_, $r) => value_tile::<1, $r>(pp, il, base, p, a.seq, c0, out, a.qw),)*
                                _ => unreachable!("value passes are 1..=5 vectors"),
                            }
                        };
                    }
                    pass!(1, 2, 3, 4, 5);
                    c0 += 16 * nv;
                }
                r0 += n;
            }
        }
        i0 += mr;
    }
}

/// Scores of `MR` quantized rows against keys `j0..j0 + 32`:
/// `(sum (q + 128) k - 128 sum k) * c[r] * sk[j]`, stored to row `r` of `s` (`npad`
/// apart); `mx[r]` keeps the running max over the keys `< seq`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn score_tile<const MR: usize>(
    qu: *const u8,
    c: &[f32; SCORE_ROWS],
    panel: *const u8,
    p: Panel,
    seq: usize,
    j0: usize,
    s: *mut f32,
    mx: &mut [__m512; SCORE_ROWS],
) {
    let (hd, npad) = (p.hd, p.npad);
    let mut acc = [[_mm512_setzero_si512(); 2]; MR];
    // SAFETY (whole body): key vectors j0..j0+32 < npad of every dim group, query
    // rows of hd bytes, score rows of npad floats.
    unsafe {
        let kt = panel.add(p.kt);
        for g in 0..hd / 4 {
            let kp = kt.add((g * npad + j0) * 4);
            let k0 = _mm512_loadu_si512(kp as *const _);
            let k1 = _mm512_loadu_si512(kp.add(64) as *const _);
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32((qu.add(r * hd + 4 * g) as *const i32).read_unaligned());
                acc[0] = _mm512_dpbusd_epi32(acc[0], x, k0);
                acc[1] = _mm512_dpbusd_epi32(acc[1], x, k1);
            }
        }
        let ksum = panel.add(p.ksum) as *const i32;
        let sk = panel.add(p.sk) as *const f32;
        for (r, acc) in acc.iter().enumerate() {
            let cr = _mm512_set1_ps(c[r]);
            for (v, &acc) in acc.iter().enumerate() {
                let j = j0 + 16 * v;
                let dot = _mm512_sub_epi32(acc, _mm512_loadu_si512(ksum.add(j) as *const _));
                let x = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(dot), cr),
                    _mm512_loadu_ps(sk.add(j)),
                );
                _mm512_storeu_ps(s.add(r * npad + j), x);
                mx[r] = _mm512_mask_max_ps(mx[r], lanes(seq.saturating_sub(j)), mx[r], x);
            }
        }
    }
}

/// One row's softmax weights from its base-2 scores and their max `m`:
/// `round(255 * 2^(s - m))` as u8 for keys `< seq`, 0 for the padding up to `npad`.
/// Returns `1 / sum` of the u8 weights. `2^x` is [`pow2_ps`]'s polynomial: the weight
/// is only 8 bits, so the f32 `exp`'s full polynomial would be wasted on the one
/// 512-bit port pair the dot products also need. It can round a weight to the
/// neighbouring u8 where the reference's `exp` does not, which the op's definition
/// allows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn softmax_u8(s: *const f32, m: f32, seq: usize, npad: usize, p: *mut u8) -> f32 {
    // SAFETY (whole body): s holds npad floats, p npad bytes.
    unsafe {
        let m = _mm512_set1_ps(m);
        let mut l = _mm512_setzero_si512();
        let mut j = 0;
        while j < npad {
            let e = pow2_ps(_mm512_sub_ps(_mm512_loadu_ps(s.add(j)), m), 255.0);
            let q = _mm512_cvtps_epi32(e);
            let q = _mm512_maskz_min_epi32(lanes(seq.saturating_sub(j)), q, _mm512_set1_epi32(255));
            l = _mm512_add_epi32(l, q);
            _mm_storeu_si128(p.add(j) as *mut __m128i, _mm512_cvtepi32_epi8(q));
            j += 16;
        }
        1.0 / _mm512_reduce_add_epi32(l) as f32
    }
}

/// `P V` for `MR` rows over channels `c0 .. c0 + 16 NV` (of `hd`): `sum_j p[j] v[j][c]`
/// in i32 over the keys `< seq`, times the channel's scale and the row's `1 / sum p`,
/// written to `out` (row `r` at `r * qw`, channel `c` at `c`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn value_tile<const MR: usize, const NV: usize>(
    pr: *const u8,
    inv_l: &[f32],
    panel: *const u8,
    p: Panel,
    seq: usize,
    c0: usize,
    out: *mut f32,
    qw: usize,
) {
    let (hd, npad, cpad) = (p.hd, p.npad, p.cpad);
    let mut acc = [[_mm512_setzero_si512(); NV]; MR];
    // SAFETY (whole body): key groups < npad / 4, channel vectors < cpad / 16, weight
    // rows of npad bytes; output stores masked to the head's hd channels.
    unsafe {
        let vt = panel.add(p.vt);
        for g in 0..seq.div_ceil(4) {
            let vp = vt.add((g * cpad + c0) * 4);
            let mut vv = [_mm512_setzero_si512(); NV];
            for (n, vv) in vv.iter_mut().enumerate() {
                *vv = _mm512_loadu_si512(vp.add(64 * n) as *const _);
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x =
                    _mm512_set1_epi32((pr.add(r * npad + 4 * g) as *const i32).read_unaligned());
                for n in 0..NV {
                    acc[n] = _mm512_dpbusd_epi32(acc[n], x, vv[n]);
                }
            }
        }
        let sv = panel.add(p.sv) as *const f32;
        for (r, acc) in acc.iter().enumerate() {
            let il = _mm512_set1_ps(inv_l[r]);
            for (n, &acc) in acc.iter().enumerate() {
                let c = c0 + 16 * n;
                let x = _mm512_mul_ps(
                    _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_loadu_ps(sv.add(c))),
                    il,
                );
                _mm512_mask_storeu_ps(out.add(r * qw + c), lanes(hd.saturating_sub(c)), x);
            }
        }
    }
}
