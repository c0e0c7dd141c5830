//! AVX2 tiles of the integer bidirectional attention (`attention_i8.rs` says what runs
//! when): the x86 paths without AVX-512 VNNI, `Isa::Avx2Fma` and `Isa::Avx2Vnni`. The
//! AVX-512 kernel's shape (`attention_i8_avx512.rs`) on 8 lanes:
//!
//! - [`Avx2Panel`]: one KV head's K rows quantized per row and laid out `[dim/4][key][4]`
//!   (8 keys x 4 dims a vector), V quantized per channel over the keys, widened to i16
//!   and laid out `[key/2][channel][2]` (8 channels x 2 keys a vector);
//! - per block of [`SCORE_ROWS`] query rows: the rows quantized to i8, the score tile (4
//!   rows x 16 keys in 8 accumulators, one broadcast of 4 query bytes per row and step),
//!   the softmax to u8 weights (kept as u16), then `P V` (4 rows x up to 24 channels,
//!   one broadcast of 2 weights per row and step).
//!
//! The products. `vpmaddubsw` multiplies u8 by i8, so the scores take the sign trick:
//! `|k| x sign(q, k)`, whose pairs stay under 2 * 127 * 127 < 2^15 and never saturate,
//! then `vpmaddwd` by ones widens them to i32. The softmax weights go up to 255, where a
//! pair could saturate, so `P V` multiplies i16 pairs with `vpmaddwd`. With VNNI
//! (`Isa::Avx2Vnni`) the same operands go to `vpdpbusd` and `vpdpwssd`, VEX- or
//! EVEX-encoded (`microkernels/avx2_vnni.rs` says why both): the [`tiles!`] body is
//! compiled once per [`Dots`].
//!
//! The integers are the reference's. The f32 steps are the AVX-512 kernel's (scores in
//! base 2, the softmax's `2^x` a polynomial), which may round a weight to the
//! neighbouring u8, as the op's definition allows.

use super::attention_avx2::first_lanes;
use super::attention_decode_avx2::hmax8;
use super::attention_i8::{quantize_keys, quantize_values, MAX_PACKED_HEAD_DIM};
use super::attention_panels::{Args, PanelKernel, RowScratch};
use super::math::POW2_TAYLOR;
use super::Isa;
use crate::reference::quantize_row_i8;
use std::arch::x86_64::*;
use std::f32::consts::LOG2_E;
use std::ops::Range;

/// Keys per score step (two vectors of 8).
const KEY_STEP: usize = 16;
/// Query rows per score tile and per value tile (8 score accumulators).
const SCORE_ROWS: usize = 4;
/// Widest value pass in vectors of 8 channels (12 accumulators at 4 rows).
const PASS_VECTORS: usize = 3;

/// The dot-product instructions a panel's tiles use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dots {
    /// `vpmaddubsw` + `vpmaddwd` (AVX2).
    Plain,
    /// `{vex} vpdpbusd` / `vpdpwssd` (AVX-VNNI).
    Vex,
    /// EVEX `vpdpbusd` / `vpdpwssd` on ymm (AVX512-VNNI + VL).
    Evex,
}

impl Dots {
    /// The instructions of an AVX2 path.
    pub(super) fn for_isa(isa: Isa) -> Dots {
        match isa {
            Isa::Avx2Vnni if super::microkernels::has_vex() => Dots::Vex,
            Isa::Avx2Vnni => Dots::Evex,
            _ => Dots::Plain,
        }
    }
}

/// Where one KV head's packed K and V live inside its panel (byte offsets, each a
/// multiple of 64).
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx2Panel {
    hd: usize,
    /// Keys padded to [`KEY_STEP`] (zero keys and zero weights past `seq`).
    npad: usize,
    /// Channels padded to 8.
    cpad: usize,
    /// `[hd / 4][npad][4]` i8: dims `4g..4g+4` of key `j` at `(g * npad + j) * 4`.
    kt: usize,
    /// `[npad]` f32: each key row's scale.
    sk: usize,
    /// `[npad / 2][cpad][2]` i16: keys `2g, 2g+1` of channel `c` at `(g * cpad + c) * 2`.
    vt: usize,
    /// `[cpad]` f32: each channel's scale.
    sv: usize,
    bytes: usize,
    dots: Dots,
}

impl Avx2Panel {
    /// The panel of sequences of `seq` rows and heads of `hd` (a multiple of 4, at most
    /// `MAX_PACKED_HEAD_DIM`).
    pub(super) fn new(seq: usize, hd: usize, dots: Dots) -> Self {
        debug_assert!(hd.is_multiple_of(4) && hd <= MAX_PACKED_HEAD_DIM);
        let at64 = |x: usize| x.next_multiple_of(64);
        let npad = seq.next_multiple_of(KEY_STEP);
        let cpad = hd.next_multiple_of(8);
        let kt = 0;
        let sk = at64(kt + hd * npad);
        let vt = at64(sk + 4 * npad);
        let sv = at64(vt + 2 * npad * cpad);
        let bytes = at64(sv + 4 * cpad);
        Avx2Panel {
            hd,
            npad,
            cpad,
            kt,
            sk,
            vt,
            sv,
            bytes,
            dots,
        }
    }

    /// Packs KV head `g` of sequence `b` (the reference's quantization) into a zeroed
    /// panel.
    #[inline(always)]
    fn pack_generic(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
        let (hd, npad, cpad) = (self.hd, self.npad, self.cpad);
        let (kt, rest) = panel.split_at_mut(self.sk);
        let (sk, rest) = rest.split_at_mut(self.vt - self.sk);
        let (vt, sv) = rest.split_at_mut(self.sv - self.vt);
        let sk: &mut [f32] = bytemuck::cast_slice_mut(&mut sk[..4 * npad]);
        let vt: &mut [i16] = bytemuck::cast_slice_mut(&mut vt[..2 * npad * cpad]);
        let sv: &mut [f32] = bytemuck::cast_slice_mut(&mut sv[..4 * cpad]);
        quantize_keys(a, b, g, hd, sk, |j, row| {
            for (d4, w) in row.chunks_exact(4).enumerate() {
                let o = (d4 * npad + j) * 4;
                kt[o..o + 4].copy_from_slice(bytemuck::cast_slice(w));
            }
        });
        quantize_values(a, b, g, hd, sv, |d, column| {
            for (j, &x) in column.iter().enumerate() {
                vt[(j / 2 * cpad + d) * 2 + j % 2] = i16::from(x);
            }
        });
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn pack_avx2(p: &Avx2Panel, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
    p.pack_generic(a, b, g, panel)
}

impl PanelKernel for Avx2Panel {
    fn panel_bytes(&self) -> usize {
        self.bytes
    }
    /// [`SCORE_ROWS`] quantized query rows (`hd` bytes each), their scores (`npad` f32
    /// each) and weights (`npad` u16 each).
    fn scratch_bytes(&self) -> [usize; 3] {
        [
            SCORE_ROWS * self.hd,
            SCORE_ROWS * self.npad * 4,
            SCORE_ROWS * self.npad * 2,
        ]
    }
    unsafe fn pack(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
        // SAFETY: the trait's contract (an AVX2 path: AVX2, FMA and F16C).
        unsafe { pack_avx2(self, a, b, g, panel) }
    }
    unsafe fn rows(
        &self,
        a: &Args,
        b: usize,
        h: usize,
        rows: Range<usize>,
        panel: &[u8],
        sc: &mut RowScratch,
    ) {
        // SAFETY: the trait's contract; `dots` came from the running path
        // (`Dots::for_isa`), whose CPU has the instructions.
        unsafe {
            match self.dots {
                Dots::Plain => plain::rows(self, a, b, h, rows, panel, sc),
                Dots::Vex => vex::rows(self, a, b, h, rows, panel, sc),
                Dots::Evex => evex::rows(self, a, b, h, rows, panel, sc),
            }
        }
    }
}

/// `c * 2^t` per lane for `t` in `[-30, 0]` (clamped): `attention_avx512::pow2_ps` on
/// 8 lanes, `2^n` built from its exponent bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pow2(t: __m256, c: f32) -> __m256 {
    let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_set1_ps(-30.0)), _mm256_setzero_ps());
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
    let f = _mm256_sub_ps(t, n);
    let mut e = _mm256_set1_ps(c * POW2_TAYLOR[0]);
    for &k in &POW2_TAYLOR[1..] {
        e = _mm256_fmadd_ps(e, f, _mm256_set1_ps(c * k));
    }
    let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    _mm256_mul_ps(e, two_n)
}

/// One row's softmax weights from its base-2 scores and their max `m`: `round(255 *
/// 2^(s - m))` for keys `< seq`, 0 up to `npad`, stored as u16. Returns `1 / sum`.
///
/// # Safety
/// `s` holds `npad` floats and `p` `npad` u16 (a multiple of 8).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_u8(s: *const f32, m: f32, seq: usize, npad: usize, p: *mut u16) -> f32 {
    let m = _mm256_set1_ps(m);
    let mut l = _mm256_setzero_si256();
    for j in (0..npad).step_by(8) {
        // SAFETY: j + 8 <= npad.
        let x = unsafe { _mm256_loadu_ps(s.add(j)) };
        let q = _mm256_min_epi32(
            _mm256_cvtps_epi32(pow2(_mm256_sub_ps(x, m), 255.0)),
            _mm256_set1_epi32(255),
        );
        let q = _mm256_and_si256(q, first_lanes(seq.saturating_sub(j)));
        l = _mm256_add_epi32(l, q);
        // u16 lanes 0-3 and 4-7 sit in qwords 0 and 2 of the packed vector.
        let w = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(q, _mm256_setzero_si256()));
        // SAFETY: as above.
        unsafe { _mm_storeu_si128(p.add(j) as *mut __m128i, _mm256_castsi256_si128(w)) };
    }
    let l = _mm_add_epi32(_mm256_castsi256_si128(l), _mm256_extracti128_si256::<1>(l));
    let l = _mm_add_epi32(l, _mm_unpackhi_epi64(l, l));
    let l = _mm_add_epi32(l, _mm_shuffle_epi32::<1>(l));
    1.0 / _mm_cvtsi128_si32(l) as f32
}

/// `acc + sum of 4 products |u| x s` per i32 lane without VNNI (see the module comment
/// for why it cannot saturate).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4_plain(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    _mm256_add_epi32(
        acc,
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
    )
}

/// `acc + sum of 2 i16 products` per i32 lane without VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_plain(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
}

/// What one value tile reads and writes.
#[derive(Clone, Copy)]
struct ValueJob<'a> {
    /// The rows' u16 weights, `npad` apart.
    pr: *const u16,
    /// The rows' `1 / sum` of their weights.
    inv_l: &'a [f32; SCORE_ROWS],
    panel: *const u8,
    p: &'a Avx2Panel,
    seq: usize,
    /// The tile's first channel.
    c0: usize,
    /// The first row's head columns; row `r` at `r * qw`.
    out: *mut f32,
    qw: usize,
}

/// The row-block kernel for one set of instructions: `$dot4(acc, u8, i8)` and
/// `$dot2(acc, i16, i16)` add dot products of 4 and 2 into i32 lanes.
macro_rules! tiles {
    ($features:literal, $dot4:path, $dot2:path) => {
        use super::*;

        /// Query rows `rows` of head `h` of sequence `b` against the head's packed
        /// `panel`; writes their outputs.
        ///
        /// # Safety
        /// The CPU has `$features`; `panel` was packed for this head's KV head; the
        /// scratch holds `scratch_bytes`; no other task writes these output rows' head
        /// columns.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn rows(
            p: &Avx2Panel,
            a: &Args,
            b: usize,
            h: usize,
            rows: Range<usize>,
            panel: &[u8],
            sc: &mut RowScratch,
        ) {
            let p = *p;
            let (hd, npad) = (p.hd, p.npad);
            let base = panel.as_ptr();
            let qq = sc.q.as_mut_ptr() as *mut i8;
            let s = sc.s.as_mut_ptr() as *mut f32;
            let pr = sc.p.as_mut_ptr() as *mut u16;
            let mut i0 = rows.start;
            while i0 < rows.end {
                let mr = (rows.end - i0).min(SCORE_ROWS);
                // The query scales times log2 e: scores come out in base 2.
                let mut c = [0f32; SCORE_ROWS];
                let mut mx = [_mm256_set1_ps(f32::NEG_INFINITY); SCORE_ROWS];
                // SAFETY (whole body): query rows i0..i0+mr exist; scratch and panel
                // offsets stay inside the sizes the caller fitted (`Avx2Panel`).
                unsafe {
                    for (r, c) in c.iter_mut().enumerate().take(mr) {
                        let x = (b * a.seq + i0 + r) * a.q_stride + h * hd;
                        let row = std::slice::from_raw_parts_mut(qq.add(r * hd), hd);
                        *c = quantize_row_i8(&a.q[x..x + hd], row) * a.scale * LOG2_E;
                    }
                    for j0 in (0..npad).step_by(KEY_STEP) {
                        match mr {
                            4 => score_tile::<4>(qq, &c, base, &p, a.seq, j0, s, &mut mx),
                            3 => score_tile::<3>(qq, &c, base, &p, a.seq, j0, s, &mut mx),
                            2 => score_tile::<2>(qq, &c, base, &p, a.seq, j0, s, &mut mx),
                            _ => score_tile::<1>(qq, &c, base, &p, a.seq, j0, s, &mut mx),
                        }
                    }
                    let mut inv_l = [0f32; SCORE_ROWS];
                    for (r, inv_l) in inv_l.iter_mut().enumerate().take(mr) {
                        let m = hmax8(mx[r]);
                        *inv_l = softmax_u8(s.add(r * npad), m, a.seq, npad, pr.add(r * npad));
                    }
                    let out = a.out.at((b * a.seq + i0) * a.qw + h * hd);
                    let mut c0 = 0;
                    while c0 < hd {
                        let nv = (hd - c0).div_ceil(8).min(PASS_VECTORS);
                        let job = ValueJob {
                            pr: pr.cast_const(),
                            inv_l: &inv_l,
                            panel: base,
                            p: &p,
                            seq: a.seq,
                            c0,
                            out,
                            qw: a.qw,
                        };
                        match nv {
                            3 => value_pass::<3>(mr, job),
                            2 => value_pass::<2>(mr, job),
                            _ => value_pass::<1>(mr, job),
                        }
                        c0 += 8 * nv;
                    }
                }
                i0 += mr;
            }
        }

        /// Scores of `MR` quantized rows against keys `j0..j0 + 16`: `sum q k * c[r] *
        /// sk[j]`, stored to row `r` of `s` (`npad` apart); `mx[r]` keeps the running
        /// max over the keys `< seq`.
        #[inline]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn score_tile<const MR: usize>(
            qq: *const i8,
            c: &[f32; SCORE_ROWS],
            panel: *const u8,
            p: &Avx2Panel,
            seq: usize,
            j0: usize,
            s: *mut f32,
            mx: &mut [__m256; SCORE_ROWS],
        ) {
            let (hd, npad) = (p.hd, p.npad);
            let mut acc = [[_mm256_setzero_si256(); 2]; MR];
            // SAFETY (whole body): key vectors j0..j0+16 <= npad of every dim group,
            // query rows of hd bytes, score rows of npad floats.
            unsafe {
                let kt = panel.add(p.kt);
                for g in 0..hd / 4 {
                    let kp = kt.add((g * npad + j0) * 4);
                    let k = [
                        _mm256_loadu_si256(kp as *const __m256i),
                        _mm256_loadu_si256(kp.add(32) as *const __m256i),
                    ];
                    // |k| (never -128: quantized to +-127).
                    let u = [_mm256_sign_epi8(k[0], k[0]), _mm256_sign_epi8(k[1], k[1])];
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_set1_epi32(
                            (qq.add(r * hd + 4 * g) as *const i32).read_unaligned(),
                        );
                        acc[0] = $dot4(acc[0], u[0], _mm256_sign_epi8(x, k[0]));
                        acc[1] = $dot4(acc[1], u[1], _mm256_sign_epi8(x, k[1]));
                    }
                }
                let sk = panel.add(p.sk) as *const f32;
                for (r, acc) in acc.iter().enumerate() {
                    let cr = _mm256_set1_ps(c[r]);
                    for (v, &acc) in acc.iter().enumerate() {
                        let j = j0 + 8 * v;
                        let x = _mm256_mul_ps(
                            _mm256_mul_ps(_mm256_cvtepi32_ps(acc), cr),
                            _mm256_loadu_ps(sk.add(j)),
                        );
                        _mm256_storeu_ps(s.add(r * npad + j), x);
                        let m = _mm256_max_ps(mx[r], x);
                        mx[r] = if j + 8 <= seq {
                            m
                        } else {
                            let keys = _mm256_castsi256_ps(first_lanes(seq.saturating_sub(j)));
                            _mm256_blendv_ps(mx[r], m, keys)
                        };
                    }
                }
            }
        }

        /// The value tile of `mr` rows.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn value_pass<const NV: usize>(mr: usize, job: ValueJob) {
            // SAFETY: the caller's, for `value_tile`.
            unsafe {
                match mr {
                    4 => value_tile::<4, NV>(job),
                    3 => value_tile::<3, NV>(job),
                    2 => value_tile::<2, NV>(job),
                    _ => value_tile::<1, NV>(job),
                }
            }
        }

        /// `P V` for `MR` rows over channels `c0 .. c0 + 8 NV` (of `hd`): `sum_j p[j]
        /// v[j][c]` in i32 over the keys `< seq`, times the channel's scale and the
        /// row's `1 / sum p`, written to `out` (row `r` at `r * qw`, channel `c` at
        /// `c`).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn value_tile<const MR: usize, const NV: usize>(job: ValueJob) {
            let ValueJob {
                pr,
                inv_l,
                panel,
                p,
                seq,
                c0,
                out,
                qw,
            } = job;
            let (hd, npad, cpad) = (p.hd, p.npad, p.cpad);
            let mut acc = [[_mm256_setzero_si256(); NV]; MR];
            // SAFETY (whole body): key pairs < npad / 2, channel vectors < cpad / 8,
            // weight rows of npad u16; stores masked to the head's hd channels.
            unsafe {
                let vt = panel.add(p.vt) as *const i16;
                for g in 0..seq.div_ceil(2) {
                    let vp = vt.add((g * cpad + c0) * 2);
                    let mut vv = [_mm256_setzero_si256(); NV];
                    for (n, vv) in vv.iter_mut().enumerate() {
                        *vv = _mm256_loadu_si256(vp.add(16 * n) as *const __m256i);
                    }
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_set1_epi32(
                            (pr.add(r * npad + 2 * g) as *const i32).read_unaligned(),
                        );
                        for n in 0..NV {
                            acc[n] = $dot2(acc[n], vv[n], x);
                        }
                    }
                }
                let sv = panel.add(p.sv) as *const f32;
                for (r, acc) in acc.iter().enumerate() {
                    let il = _mm256_set1_ps(inv_l[r]);
                    for (n, &acc) in acc.iter().enumerate() {
                        let c = c0 + 8 * n;
                        let x = _mm256_mul_ps(
                            _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_loadu_ps(sv.add(c))),
                            il,
                        );
                        let o = out.add(r * qw + c);
                        if c + 8 <= hd {
                            _mm256_storeu_ps(o, x);
                        } else {
                            _mm256_maskstore_ps(o, first_lanes(hd - c), x);
                        }
                    }
                }
            }
        }
    };
}

/// `vpmaddubsw` + `vpmaddwd` (`Isa::Avx2Fma`).
mod plain {
    tiles!("avx2,fma,f16c", dot4_plain, dot2_plain);
}

/// VEX-encoded `vpdpbusd` / `vpdpwssd` (AVX-VNNI).
mod vex {
    tiles!(
        "avx2,fma,f16c,avxvnni",
        _mm256_dpbusd_avx_epi32,
        _mm256_dpwssd_avx_epi32
    );
}

/// EVEX-encoded `vpdpbusd` / `vpdpwssd` on ymm (AVX512-VNNI with AVX512VL).
mod evex {
    tiles!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        _mm256_dpbusd_epi32,
        _mm256_dpwssd_epi32
    );
}
