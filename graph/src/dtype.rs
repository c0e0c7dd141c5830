//! Element types, including quantized weight formats as first-class dtypes.
//!
//! Quantized formats are block formats: `block_elems` values along the innermost
//! (reduction) dimension share one block of `block_bytes` bytes. A tensor of a block
//! dtype must have an innermost dimension that is a multiple of the block size.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    I16,
    I8,
    /// GGUF Q4_0: 32 values, f16 scale d, 4-bit q in [0,16): x = d * (q - 8).
    Q4_0,
    /// GGUF Q4_1: 32 values, f16 scale d and f16 min m: x = d * q + m.
    Q4_1,
    /// GGUF Q8_0: 32 values, f16 scale d, i8 q: x = d * q.
    Q8_0,
    /// Q8 per output channel: a `[rows, cols]` matrix stored as all i8 values
    /// (row-major), then one f32 scale per row: x = scale[row] * q. Not a block format:
    /// its size depends on the row count, so use `TensorFact::bytes`.
    Q8Channel,
    /// The INT8 KV cache (`--kv-cache int8`): symmetric int8, one scale per token per
    /// KV head (BlueLM-V). A block is one head's row: `head_dim` i8 values `q`, then
    /// its f32 scale `s` (little endian): x = s * q, with s = max|x| / 127 (0 for a
    /// zero row). A cache `[S, n_kv * head_dim]` is `S * n_kv` blocks, row by row and
    /// head after head. `head_dim` is a multiple of 4, so blocks stay word aligned (the
    /// WGSL shaders read them as u32 words).
    Q8Head {
        head_dim: u16,
    },
}

impl DType {
    /// Every format a weight may be stored in (what the loaders produce and the
    /// backends' matmul and gather take), in declaration order. The one list: backend
    /// capabilities, conformance sweeps, tests and benches iterate it rather than keep
    /// their own, so a new format cannot be left out of one of them by accident.
    pub const WEIGHT_FORMATS: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q8_0,
        DType::Q8Channel,
    ];

    /// One of [`DType::WEIGHT_FORMATS`].
    pub fn is_weight_format(self) -> bool {
        Self::WEIGHT_FORMATS.contains(&self)
    }

    /// Values per block (1 for plain element types).
    pub const fn block_elems(self) -> usize {
        match self {
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 => 32,
            DType::Q8Head { head_dim } => head_dim as usize,
            _ => 1,
        }
    }

    /// Bytes per block (the element size for plain types).
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 => 1,
            DType::Q4_0 => 2 + 16,
            DType::Q4_1 => 2 + 2 + 16,
            DType::Q8_0 => 2 + 32,
            DType::Q8Channel => 1,
            DType::Q8Head { head_dim } => head_dim as usize + 4,
        }
    }

    pub const fn is_quantized(self) -> bool {
        self.block_elems() > 1 || matches!(self, DType::Q8Channel)
    }

    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Storage bytes for `elems` values, or `None` if `elems` is not a whole number of
    /// blocks or the size overflows. Callers use this to validate untrusted headers
    /// before allocating.
    pub fn storage_bytes(self, elems: usize) -> Option<usize> {
        if self == DType::Q8Channel
            || self.block_elems() == 0
            || !elems.is_multiple_of(self.block_elems())
        {
            return None;
        }
        (elems / self.block_elems()).checked_mul(self.block_bytes())
    }

    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q8_0 => "q8_0",
            DType::Q8Channel => "q8_channel",
            DType::Q8Head { .. } => "q8_head",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::Q8Head { head_dim } => write!(f, "q8_head{head_dim}"),
            _ => f.write_str(self.name()),
        }
    }
}
