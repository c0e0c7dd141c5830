//! CPU kernels the CPU backend runs: portable Rust written so the compiler vectorizes
//! it, compiled twice (baseline and AVX2+FMA) and picked at run time by CPU feature
//! detection, threaded with rayon. Hand-written SIMD microkernels for quantized
//! formats extend this module (one file per kernel family).

mod attention_f32;
mod dispatch;
mod matmul_f32;

pub use attention_f32::attention_f32;
pub use dispatch::{isa, Isa};
pub use matmul_f32::matmul_f32;

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
