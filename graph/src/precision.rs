//! Precision is a compile policy over one model graph, never a copy of the model.
//! A policy says which weight format and activation precision each module class gets;
//! the `quantize` pass applies it.

use crate::{ActPrecision, AttentionPrecision, DType};

/// Weight format for a module class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// Exactly this dtype (checkpoint tensors in other formats are converted).
    Exact(DType),
    /// A 4-bit format: the checkpoint's own Q4_0/Q4_1 when it has one (lossless
    /// import), else Q4_1 (asymmetric: lower error than Q4_0 at the same size).
    Q4,
    /// An 8-bit-or-better format: the checkpoint's own Q8_0 / f32 / f16 when it has
    /// one, else Q8_0.
    Q8OrBetter,
}

impl WeightFormat {
    /// Resolves the format for a tensor the checkpoint stores as `stored`.
    pub fn resolve(self, stored: DType) -> DType {
        match self {
            WeightFormat::Exact(d) => d,
            WeightFormat::Q4 => match stored {
                DType::Q4_0 | DType::Q4_1 => stored,
                _ => DType::Q4_1,
            },
            WeightFormat::Q8OrBetter => match stored {
                DType::Q8_0 | DType::F32 => stored,
                _ => DType::Q8_0,
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrecisionPolicy {
    pub name: &'static str,
    /// Projection/MLP matmul weights and the precision their inputs are quantized to.
    pub linear: WeightFormat,
    pub linear_act: ActPrecision,
    /// Embedding table (gather).
    pub embedding: WeightFormat,
    /// Output head (also the embedding table when tied, which then takes the head's format).
    pub head: WeightFormat,
    pub head_act: ActPrecision,
    /// KV cache type: f32, f16 (half the cache memory and the bytes decode attention
    /// reads per token; keys and values of a LLaMA fit f16's range), or int8
    /// ([`DType::Q8Head`]: about a quarter).
    pub kv_cache: KvCacheType,
    /// The products of the ViT's bidirectional attention: `I8` in the `a8` presets
    /// (integer `Q K^T` and `P V`), `F16` in the `a16` ones (BlueLM-V's FP16 ViT
    /// activations), `F32` in `f32`. The LLM's causal attention is f32 over `kv_cache`.
    pub attention: AttentionPrecision,
}

/// The KV cache's storage (`--kv-cache f32|f16|int8`). The int8 dtype carries the
/// model's head dim, so the policy names the kind and [`KvCacheType::dtype`] makes the
/// dtype for a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvCacheType {
    F32,
    F16,
    /// Symmetric int8, one f32 scale per token per KV head ([`DType::Q8Head`]).
    Int8,
}

impl KvCacheType {
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::Int8];

    /// The cache dtype for a model with this head dim.
    pub fn dtype(self, head_dim: usize) -> DType {
        match self {
            KvCacheType::F32 => DType::F32,
            KvCacheType::F16 => DType::F16,
            KvCacheType::Int8 => DType::Q8Head {
                head_dim: head_dim.min(u16::MAX as usize) as u16,
            },
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            KvCacheType::F32 => "f32",
            KvCacheType::F16 => "f16",
            KvCacheType::Int8 => "int8",
        }
    }

    pub fn by_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for KvCacheType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PrecisionPolicy {
    /// Reference: everything f32.
    pub const F32: Self = PrecisionPolicy {
        name: "f32",
        linear: WeightFormat::Exact(DType::F32),
        linear_act: ActPrecision::F32,
        embedding: WeightFormat::Exact(DType::F32),
        head: WeightFormat::Exact(DType::F32),
        head_act: ActPrecision::F32,
        kv_cache: KvCacheType::F32,
        attention: AttentionPrecision::F32,
    };
    pub const W8A16: Self = PrecisionPolicy {
        name: "w8a16",
        linear: WeightFormat::Exact(DType::Q8_0),
        linear_act: ActPrecision::I16,
        embedding: WeightFormat::Q8OrBetter,
        head: WeightFormat::Q8OrBetter,
        head_act: ActPrecision::I16,
        kv_cache: KvCacheType::F16,
        attention: AttentionPrecision::F16,
    };
    /// INT8 weights with INT8 activations (one scale per 32-value block): the fast
    /// vision preset (VNNI dot products on both operands).
    pub const W8A8: Self = PrecisionPolicy {
        name: "w8a8",
        linear: WeightFormat::Exact(DType::Q8_0),
        linear_act: ActPrecision::I8,
        embedding: WeightFormat::Q8OrBetter,
        head: WeightFormat::Q8OrBetter,
        head_act: ActPrecision::I8,
        kv_cache: KvCacheType::F16,
        attention: AttentionPrecision::I8,
    };
    /// The LLM default: INT4 weights, INT16 activations (BlueLM-V-3B), head at Q8+.
    pub const W4A16: Self = PrecisionPolicy {
        name: "w4a16",
        linear: WeightFormat::Q4,
        linear_act: ActPrecision::I16,
        embedding: WeightFormat::Q8OrBetter,
        head: WeightFormat::Q8OrBetter,
        head_act: ActPrecision::I16,
        kv_cache: KvCacheType::F16,
        attention: AttentionPrecision::F16,
    };
    pub const W4A8: Self = PrecisionPolicy {
        name: "w4a8",
        linear: WeightFormat::Q4,
        linear_act: ActPrecision::I8,
        embedding: WeightFormat::Q8OrBetter,
        head: WeightFormat::Q8OrBetter,
        head_act: ActPrecision::I8,
        kv_cache: KvCacheType::F16,
        attention: AttentionPrecision::I8,
    };

    pub const PRESETS: [Self; 5] = [Self::F32, Self::W8A16, Self::W8A8, Self::W4A16, Self::W4A8];

    pub fn by_name(name: &str) -> Option<Self> {
        Self::PRESETS.into_iter().find(|p| p.name == name)
    }

    pub fn names() -> Vec<&'static str> {
        Self::PRESETS.iter().map(|p| p.name).collect()
    }
}
