//! Integer bidirectional attention (`AttentionPrecision::I8`, the ViT's w8a8) on the
//! CPU: the arithmetic of `reference::attention_bidirectional_i8`, with VNNI dot
//! products for both `Q K^T` and `P V`, run by the panel driver
//! (`attention_panels.rs`):
//!
//! - a KV head's [`Panel`]: K quantized per row and laid out for `vpdpbusd` (16 keys x
//!   4 dims a vector), V quantized per channel over the keys and laid out the other way
//!   (16 channels x 4 keys a vector);
//! - a block of query rows: quantized as `u8 = q + 128` (`vpdpbusd` multiplies u8 by
//!   i8, and `128 * sum(k)` per key is subtracted after), the scores in i32, the
//!   softmax's u8 weights, `P V` in i32 (`attention_i8_avx512.rs`).
//!
//! The integers equal the reference's (same products, same round-half-to-even); only
//! `exp` differs, which can move a weight to the neighbouring u8. On the x86 AVX2 paths
//! the same tiles run on 8 lanes (`attention_i8_avx2.rs`: `vpmaddubsw`, or 256-bit
//! `vpdpbusd` with AVX-VNNI), and on AArch64 on 128-bit vectors
//! (`attention_i8_neon.rs`: `sdot`, and `udot` on `v + 128`). Elsewhere (the portable
//! path), or with a head_dim that is not a multiple of 4, the portable panel kernel runs
//! (`attention_i8_portable.rs`: the reference's arithmetic, vectorized by the compiler
//! and threaded by the same driver).

#[cfg(target_arch = "x86_64")]
use super::attention_i8_avx2::{Avx2Panel, Dots};
#[cfg(target_arch = "aarch64")]
use super::attention_i8_neon::NeonPanel;
use super::attention_i8_portable::PortablePanel;
use super::attention_panels::{self, Args, PanelKernel, RowScratch};
use super::attention_qkv::Qkv;
use super::{isa, Isa};
use crate::reference::{self, quantize_row_i8, KernelError, MAX_I8_ATTENTION_SEQ};

/// Keys per score step (two vectors of 16).
pub(super) const KEY_STEP: usize = 32;
/// Query rows per score tile (16 accumulators: 8 rows x 2 key vectors).
pub(super) const SCORE_ROWS: usize = 8;
/// The widest head the packing's stack rows take.
pub(super) const MAX_PACKED_HEAD_DIM: usize = 256;

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

#[cfg(target_arch = "x86_64")]
impl PanelKernel for Panel {
    fn panel_bytes(&self) -> usize {
        self.bytes
    }
    /// [`SCORE_ROWS`] quantized query rows (`hd` bytes each), their scores (`npad`
    /// f32 each) and u8 weights (`npad` bytes each).
    fn scratch_bytes(&self) -> [usize; 3] {
        [
            SCORE_ROWS * self.hd,
            SCORE_ROWS * self.npad * 4,
            SCORE_ROWS * self.npad,
        ]
    }
    unsafe fn pack(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
        // SAFETY: the trait's contract (AVX-512 VNNI, checked by the caller).
        unsafe { super::attention_i8_avx512::pack_panel(a, self, b, g, panel) }
    }
    unsafe fn rows(
        &self,
        a: &Args,
        b: usize,
        h: usize,
        rows: std::ops::Range<usize>,
        panel: &[u8],
        sc: &mut RowScratch,
    ) {
        // SAFETY: the trait's contract.
        unsafe { super::attention_i8_avx512::row_block(a, self, b, h, rows, panel, sc) }
    }
}

/// KV head `g` of sequence `b`'s key rows, each quantized to i8 with its own scale as
/// the reference does (`quantize_row_i8`): the scale of key `j` goes to `sk[j]` and its
/// `hd` bytes to `store(j, row)`, which lays them out for a panel.
pub(super) fn quantize_keys(
    a: &Args,
    b: usize,
    g: usize,
    hd: usize,
    sk: &mut [f32],
    mut store: impl FnMut(usize, &[i8]),
) {
    let mut row = vec![0i8; hd];
    for (j, sk) in sk.iter_mut().enumerate().take(a.seq) {
        let at = (b * a.seq + j) * a.kw + g * hd;
        *sk = quantize_row_i8(&a.k[at..at + hd], &mut row);
        store(j, &row);
    }
}

/// KV head `g` of sequence `b`'s value channels, each quantized to i8 over the
/// sequence's keys as the reference does: the scale of channel `d` goes to `sv[d]` and
/// its `seq` bytes to `store(d, column)`.
pub(super) fn quantize_values(
    a: &Args,
    b: usize,
    g: usize,
    hd: usize,
    sv: &mut [f32],
    mut store: impl FnMut(usize, &[i8]),
) {
    let (mut column, mut cq) = (vec![0f32; a.seq], vec![0i8; a.seq]);
    for (d, sv) in sv.iter_mut().enumerate().take(hd) {
        for (j, c) in column.iter_mut().enumerate() {
            *c = a.v[(b * a.seq + j) * a.kw + g * hd + d];
        }
        *sv = quantize_row_i8(&column, &mut cq);
        store(d, &cq);
    }
}

/// Bidirectional attention with integer products (`Op::Attention`,
/// `AttentionPrecision::I8`): `q [B * seq, n_heads * head_dim]`, `k, v [B * seq,
/// n_kv_heads * head_dim]` read in place ([`Qkv`]), as
/// `reference::attention_bidirectional_i8` defines it.
pub fn attention_bidirectional_i8(
    qkv: Qkv,
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let shape = qkv.check(seq, n_heads, n_kv_heads, head_dim, out)?;
    if seq > MAX_I8_ATTENTION_SEQ {
        // The reference's typed error.
        let [q, k, v] = qkv.to_dense(shape);
        return reference::attention_bidirectional_i8(
            &q, &k, &v, seq, n_heads, n_kv_heads, head_dim, scale, out,
        );
    }
    let a = Args::new(qkv, seq, shape, n_heads, n_kv_heads, scale, out);
    // The tiled kernels take whole 4-value groups of a head, at most this wide.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    let tiled = head_dim.is_multiple_of(4) && head_dim <= MAX_PACKED_HEAD_DIM;
    #[cfg(target_arch = "x86_64")]
    if tiled {
        match isa() {
            Isa::Avx512Vnni => {
                // SAFETY: isa() reported AVX-512 VNNI; the arguments were checked.
                unsafe { attention_panels::run(&a, &Panel::new(seq, head_dim)) };
                return Ok(());
            }
            isa @ (Isa::Avx2Fma | Isa::Avx2Vnni) => {
                let panel = Avx2Panel::new(seq, head_dim, Dots::for_isa(isa));
                // SAFETY: an AVX2 path, whose CPU has the instructions `Dots::for_isa`
                // picked; the arguments were checked.
                unsafe { attention_panels::run(&a, &panel) };
                return Ok(());
            }
            _ => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if tiled && isa() == Isa::NeonDot {
        // SAFETY: NeonDot is only detected with FEAT_DotProd (dispatch.rs); the
        // arguments were checked.
        unsafe { attention_panels::run(&a, &NeonPanel::new(seq, head_dim)) };
        return Ok(());
    }
    // SAFETY: the portable kernel needs no CPU feature; the arguments were checked.
    unsafe { attention_panels::run(&a, &PortablePanel::new(seq, head_dim)) };
    Ok(())
}
