//! CPU kernels the CPU backend runs, picked at run time by CPU feature detection
//! ([`isa`]) and threaded on npurt's spinning [`ThreadPool`] (`pool.rs`):
//!
//! - `matmul_f32`, [`attention_f32`] / [`attention_bidirectional_f32`] (causal over a
//!   KV cache, and the ViT's bidirectional mode, one flash-style kernel): portable Rust
//!   the compiler vectorizes, compiled for the baseline, AVX2+FMA and AVX-512, with
//!   hand-written AVX-512 tiles for the bidirectional mode (`attention_avx512.rs`) and
//!   AVX2 and AVX-512 decode kernels (`attention_decode.rs`);
//! - [`pack`] / [`matmul_packed`] / [`gather_packed`]: quantized weights (Q4_0, Q4_1,
//!   Q8_0, Q8Channel, f32) repacked once into 16-row interleaved tiles, multiplied by
//!   activations quantized on the fly (I16 per row, I8 per 32-value block, or f32) with
//!   hand-written microkernels per ISA (`microkernels/`: AVX2, AVX2/AVX-512 VNNI, and
//!   AArch64 NEON with the dot-product extension), the epilogue's steps walked
//!   on each output tile (`epilogue.rs`, also [`epilogue_f32`] for f32 weights), and
//!   the norm prologue (rms_norm or layer_norm) computed inside the activation
//!   quantization ([`matmul_packed_norm`]);
//! - [`rms_norm_f32`], [`layer_norm_f32`], [`rope_f32`], [`softmax_f32`], [`gelu_f32`]:
//!   vectorized RMSNorm, LayerNorm, RoPE, row softmax and GELU (erf and tanh; SiLU
//!   too, [`activation_f32`]);
//! - [`space_to_channel_f32`]: the ViT downsampler's pad + merge, as row copies;
//! - [`kv_write_f16`] and [`KvElem`]: f16 KV caches (attention reads f32 or f16);
//! - [`measure_peak`]: the instruction-peak microbenchmark (`vpdpbusd`, `vpdpwssd`,
//!   `vfmadd231ps`, or AArch64's `sdot` and `fmla`, in a tight loop) that kernel speeds
//!   are reported against.
//!
//! Outside x86-64 the x86 attention kernels are not compiled, which leaves parts of
//! their shared frames (`attention_panels.rs`, the i16 permutations) unused there.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

mod act_quant;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
#[cfg(target_arch = "x86_64")]
mod attention_decode;
#[cfg(target_arch = "x86_64")]
mod attention_decode_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_decode_avx512;
mod attention_f16;
#[cfg(target_arch = "x86_64")]
mod attention_f16_avx512;
#[cfg(target_arch = "x86_64")]
mod attention_f16_vnni;
mod attention_f32;
mod attention_i8;
#[cfg(target_arch = "x86_64")]
mod attention_i8_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_i8_avx512;
#[cfg(target_arch = "aarch64")]
mod attention_i8_neon;
mod attention_i8_portable;
#[cfg(target_arch = "aarch64")]
mod attention_neon;
mod attention_panels;
mod attention_qkv;
mod dispatch;
mod epilogue;
mod gelu_f32;
mod kv_cache;
mod layer_norm_f32;
mod math;
mod matmul_f32;
mod matmul_packed;
mod microkernels;
mod packed;
mod patch_embed_f32;
mod peak;
mod pool;
mod rms_norm_f32;
mod rope_f32;
mod slice_cols;
mod softmax_f32;
mod space_to_channel;
mod weight_memory;

pub use act_quant::RowNorm;
pub use attention_f16::attention_bidirectional_f16;
pub use attention_f32::{attention_bidirectional_f32, attention_f32};
pub use attention_i8::attention_bidirectional_i8;
pub use attention_qkv::Qkv;
pub use dispatch::{detected, isa, with_isa, Isa};
pub use epilogue::epilogue_f32;
pub use gelu_f32::{activation_f32, gelu_f32};
pub use kv_cache::{kv_write_f16, kv_write_q8head, KvElem, KvKind};
pub use layer_norm_f32::layer_norm_f32;
pub use matmul_f32::matmul_f32;
pub use matmul_packed::{matmul_packed, matmul_packed_norm, matmul_packed_with};
pub use packed::{gather_packed, pack, PackedMatrix, BLOCK, TILE_ROWS};
pub use patch_embed_f32::patch_embed_f32;
pub use peak::{i16_activation_peak, measure_peak, measure_peak_on, PeakKind, PeakReport};
pub use pool::{current_threads, ThreadPool};
pub use rms_norm_f32::rms_norm_f32;
pub use rope_f32::rope_f32;
pub use slice_cols::slice_cols_f32;
pub use softmax_f32::softmax_f32;
pub use space_to_channel::space_to_channel_f32;

/// A raw pointer that may cross threads. Used only where each task writes a disjoint
/// region of one output slice (documented at every use).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Method access so closures capture the whole (Send) wrapper, not the raw field.
    #[inline(always)]
    pub(crate) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
