//! f16 bidirectional attention (`AttentionPrecision::F16`, the ViT's w8a16: BlueLM-V
//! runs its ViT with FP16 activations) on the CPU: `q`, `k` and `v` rounded to f16 and
//! multiplied with AVX512-FP16 (`vfmadd231ph`, 32 lanes: twice the f32 FMA's), run by
//! the panel driver (`attention_panels.rs`):
//!
//! - a KV head's [`F16Panel`]: K transposed to `[dim pair][key][2]` (16 keys x 2 dims a
//!   vector), V as `[key pair][channel][2]` (16 channels x 2 keys a vector), both f16;
//! - a block of query rows: the rows (times `scale * log2 e`) in f16, the scores summed
//!   over the head dim in f16 (8 rows x 32 keys in 16 accumulators), then in f32 the
//!   softmax (base 2), its weights rounded to f16, and `P V` summed in f16 over runs of
//!   [`FLUSH_KEYS`] keys and across them in f32 (`attention_f16_avx512.rs`).
//!
//! Why pairs: `vfmadd231ph` has no 16-bit broadcast that stays off the FMA ports (a
//! `vpbroadcastw` is a shuffle, on the port the second FMA unit shares), so with one
//! f16 broadcast per multiply the tiles ran at two thirds of the FMA rate. A pair of
//! f16 is a dword, which `vpbroadcastd` brings in on a load port alone: each lane then
//! sums every other dim (or key), and the two halves of a pair are added once per tile.
//!
//! The reference (`reference::attention_bidirectional_f16`) rounds the inputs and sums
//! in f32; the f16 sums here stay within the conformance threshold of it. Without
//! AVX512-FP16 but with AVX512-VNNI (Zen 4), the same pairs run as 16-bit integers
//! ([`I16Panel`], `attention_f16_vnni.rs`: `vpdpwssd`, also twice the f32 FMA's
//! products); elsewhere the f32 kernel runs, which the definition allows (wider sums).

use super::attention_panels::{self, Args, PanelKernel, RowScratch};
use super::attention_qkv::Qkv;
use super::{isa, Isa};
use crate::reference::KernelError;

/// Keys per score step (two vectors of 16 keys, each with two dims).
pub(super) const KEY_STEP: usize = 32;
/// Query rows per score tile.
pub(super) const SCORE_ROWS: usize = 8;
/// Keys summed in f16 before the f32 partial sums take them (bounds the f16 sum's
/// growth, hence its rounding).
pub(super) const FLUSH_KEYS: usize = 32;
/// The widest head the tiles' stack rows take.
pub(super) const MAX_HEAD_DIM: usize = 256;

/// One KV head's f16 K and V inside its panel (byte offsets, multiples of 64).
#[derive(Clone, Copy, Debug)]
pub(super) struct F16Panel {
    pub hd: usize,
    /// The head dim rounded up to even (a zero dim pads an odd one).
    pub hd2: usize,
    /// Keys padded to [`KEY_STEP`] (zero keys, masked out of the softmax).
    pub npad: usize,
    /// Channels padded to 16.
    pub cpad: usize,
    /// `[hd2 / 2][npad][2]` f16: dim `d` of key `j` at
    /// `(((d / 2) * npad + j) * 2 + d % 2) * 2`.
    pub kt: usize,
    /// `[npad / 2][cpad][2]` f16: channel `c` of key `j` at
    /// `(((j / 2) * cpad + c) * 2 + j % 2) * 2`.
    pub vt: usize,
    pub bytes: usize,
}

impl F16Panel {
    fn new(seq: usize, hd: usize) -> Self {
        let npad = seq.next_multiple_of(KEY_STEP);
        let hd2 = hd.next_multiple_of(2);
        let cpad = hd.next_multiple_of(16);
        let kt = 0;
        let vt = (2 * hd2 * npad).next_multiple_of(64);
        F16Panel {
            hd,
            hd2,
            npad,
            cpad,
            kt,
            vt,
            bytes: (vt + 2 * npad * cpad).next_multiple_of(64),
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl PanelKernel for F16Panel {
    fn panel_bytes(&self) -> usize {
        self.bytes
    }
    /// [`SCORE_ROWS`] f16 query rows, their f32 scores and f16 weights (`npad` each).
    fn scratch_bytes(&self) -> [usize; 3] {
        pair_tile_scratch(self.hd2, self.npad)
    }
    unsafe fn pack(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
        // SAFETY: the trait's contract (AVX512-FP16, checked by the caller).
        unsafe { super::attention_f16_avx512::pack_panel(a, self, b, g, panel) }
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
        unsafe { super::attention_f16_avx512::row_block(a, self, b, h, rows, panel, sc) }
    }
}

/// The row scratch of the pair tiles (f16 or i16): [`SCORE_ROWS`] 16-bit query rows,
/// their f32 scores and 16-bit weights.
#[cfg(target_arch = "x86_64")]
fn pair_tile_scratch(hd2: usize, npad: usize) -> [usize; 3] {
    [
        SCORE_ROWS * hd2 * 2,
        SCORE_ROWS * npad * 4,
        SCORE_ROWS * npad * 2,
    ]
}

/// One KV head's K and V as 16-bit integers inside its panel, in [`F16Panel`]'s
/// layout (pairs of dims for K, pairs of keys for V), with each key's K and V scale
/// (`attention_f16_vnni.rs`).
#[derive(Clone, Copy, Debug)]
pub(super) struct I16Panel {
    pub hd: usize,
    pub hd2: usize,
    pub npad: usize,
    pub cpad: usize,
    /// `[hd2 / 2][npad][2]` i16, as [`F16Panel::kt`].
    pub kt: usize,
    /// `[npad / 2][cpad][2]` i16, as [`F16Panel::vt`].
    pub vt: usize,
    /// `[npad]` f32: each key's K scale (0 for the padding keys).
    pub sk: usize,
    /// `[npad]` f32: each key's V scale.
    pub sv: usize,
    pub bytes: usize,
}

impl I16Panel {
    fn new(seq: usize, hd: usize) -> Self {
        let f = F16Panel::new(seq, hd);
        let sk = f.bytes;
        let sv = sk + 4 * f.npad;
        I16Panel {
            hd,
            hd2: f.hd2,
            npad: f.npad,
            cpad: f.cpad,
            kt: f.kt,
            vt: f.vt,
            sk,
            sv,
            bytes: (sv + 4 * f.npad).next_multiple_of(64),
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl PanelKernel for I16Panel {
    fn panel_bytes(&self) -> usize {
        self.bytes
    }
    /// [`SCORE_ROWS`] i16 query rows, their f32 scores and i16 weights (`npad` each).
    fn scratch_bytes(&self) -> [usize; 3] {
        pair_tile_scratch(self.hd2, self.npad)
    }
    unsafe fn pack(&self, a: &Args, b: usize, g: usize, panel: &mut [u8]) {
        // SAFETY: the trait's contract (AVX-512 with VNNI, checked by the caller).
        unsafe { super::attention_f16_vnni::pack_panel(a, self, b, g, panel) }
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
        unsafe { super::attention_f16_vnni::row_block(a, self, b, h, rows, panel, sc) }
    }
}

/// Whether this CPU multiplies f16 natively (AVX512-FP16).
fn has_fp16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512fp16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Bidirectional attention in f16 (`Op::Attention`, `AttentionPrecision::F16`): `q
/// [B * seq, n_heads * head_dim]`, `k, v [B * seq, n_kv_heads * head_dim]` read in
/// place ([`Qkv`]).
pub fn attention_bidirectional_f16(
    qkv: Qkv,
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512Vnni && head_dim <= MAX_HEAD_DIM {
        let shape = qkv.check(seq, n_heads, n_kv_heads, head_dim, out)?;
        let a = Args::new(qkv, seq, shape, n_heads, n_kv_heads, scale, out);
        // SAFETY: the CPU has AVX-512 with VNNI (and AVX512-FP16 for the f16 tiles);
        // the arguments were checked.
        unsafe {
            match has_fp16() {
                true => attention_panels::run(&a, &F16Panel::new(seq, head_dim)),
                false => attention_panels::run(&a, &I16Panel::new(seq, head_dim)),
            }
        };
        return Ok(());
    }
    super::attention_bidirectional_f32(qkv, seq, n_heads, n_kv_heads, head_dim, scale, out)
}
