//! npurt-kernels: everything that computes.
//!
//! - [`tensor`]: host tensors;
//! - [`quant`]: quantized block formats (dequantization is the import path and oracle);
//! - [`reference`]: one plain scalar kernel per IR op: the oracle every backend's
//!   conformance case is checked against. Written for clarity, not speed.

pub mod cpu;
pub mod quant;
pub mod reference;
pub mod tensor;
pub mod wgsl;

pub use tensor::{HostData, HostTensor, MappedF32};
