//! ggml tensor types: the ids a tensor info stores, llama.cpp's names and block sizes
//! for every type it writes, and which of them the runtime computes with.

use npurt_graph::DType;
use std::fmt;

/// A ggml tensor type id as stored in a tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(pub u32);

struct TypeInfo {
    id: u32,
    name: &'static str,
    block_elems: u64,
    block_bytes: u64,
}

const fn ty(id: u32, name: &'static str, block_elems: u64, block_bytes: u64) -> TypeInfo {
    TypeInfo {
        id,
        name,
        block_elems,
        block_bytes,
    }
}

/// Every ggml type llama.cpp writes (gguf-py's `GGML_QUANT_SIZES`). Knowing the sizes
/// of types we cannot compute with still lets us validate a file's layout and describe
/// it; only [`GgmlType::dtype`] decides what the runtime supports.
const GGML_TYPES: &[TypeInfo] = &[
    ty(0, "f32", 1, 4),
    ty(1, "f16", 1, 2),
    ty(2, "q4_0", 32, 18),
    ty(3, "q4_1", 32, 20),
    ty(6, "q5_0", 32, 22),
    ty(7, "q5_1", 32, 24),
    ty(8, "q8_0", 32, 34),
    ty(9, "q8_1", 32, 40),
    ty(10, "q2_k", 256, 84),
    ty(11, "q3_k", 256, 110),
    ty(12, "q4_k", 256, 144),
    ty(13, "q5_k", 256, 176),
    ty(14, "q6_k", 256, 210),
    ty(15, "q8_k", 256, 292),
    ty(16, "iq2_xxs", 256, 66),
    ty(17, "iq2_xs", 256, 74),
    ty(18, "iq3_xxs", 256, 98),
    ty(19, "iq1_s", 256, 50),
    ty(20, "iq4_nl", 32, 18),
    ty(21, "iq3_s", 256, 110),
    ty(22, "iq2_s", 256, 82),
    ty(23, "iq4_xs", 256, 136),
    ty(24, "i8", 1, 1),
    ty(25, "i16", 1, 2),
    ty(26, "i32", 1, 4),
    ty(27, "i64", 1, 8),
    ty(28, "f64", 1, 8),
    ty(29, "iq1_m", 256, 56),
    ty(30, "bf16", 1, 2),
    ty(34, "tq1_0", 256, 54),
    ty(35, "tq2_0", 256, 66),
    ty(39, "mxfp4", 32, 17),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    fn info(self) -> Option<&'static TypeInfo> {
        GGML_TYPES.iter().find(|t| t.id == self.0)
    }

    /// llama.cpp's name (`q4_1`), or `None` for an id this reader does not know.
    pub fn name(self) -> Option<&'static str> {
        self.info().map(|t| t.name)
    }

    /// The runtime dtype, for the types the kernels implement.
    pub fn dtype(self) -> Option<DType> {
        Some(match self.0 {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            8 => DType::Q8_0,
            30 => DType::BF16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block) for known types.
    pub fn block(self) -> Option<(u64, u64)> {
        self.info().map(|t| (t.block_elems, t.block_bytes))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "ggml type {}", self.0),
        }
    }
}
