//! Scalar reference kernels: one per IR op, the oracle for every backend's
//! conformance cases. Plain loops, f32 math with f64 only where HF does better than
//! f32 would (none so far), no threading, no SIMD. Row-major slices everywhere.
//!
//! Each kernel checks what it cannot trust (token ids, run-time positions) and returns
//! a `KernelError` instead of panicking; shapes are the caller's contract (the graph
//! already validated them).

mod attention;
mod elementwise;
mod gather;
mod kv_write;
mod layout;
mod matmul;
mod norm;
mod rope;

pub use attention::{
    attention, attention_bidirectional, attention_bidirectional_f16, attention_bidirectional_i8,
    attention_q8head, MAX_I8_ATTENTION_SEQ,
};
pub(crate) use attention::{check_args as check_attention_args, Dims as AttentionDims};
pub(crate) use attention::{quantize_prob, quantize_row_i8};
pub use elementwise::{activation, add, erf, gelu, gelu_erf, gelu_tanh, mul, silu, softmax};
pub use gather::gather;
pub(crate) use kv_write::kv_write_range;
pub use kv_write::{dequantize_kv_q8head, kv_write, kv_write_q8head};
pub use layout::{patch_embed, select_row, slice_cols, space_to_channel, transpose};
pub use matmul::{epilogue, matmul};
pub use norm::{layer_norm, rms_norm};
pub use rope::{rope, rope_inv_freq};

/// A run-time value a kernel cannot accept (bad token id, position past the cache).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct KernelError(pub String);
