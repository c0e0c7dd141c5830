//! Criterion benches live in this package; see `kernels.rs`.
