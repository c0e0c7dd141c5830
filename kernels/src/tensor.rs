//! Host tensors: a fact plus typed storage. The currency between loaders, backends
//! (upload/download) and tests.

use npurt_graph::{DType, TensorFact};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    /// f32 values read in place from a file mapping (a checkpoint's norms and biases,
    /// which need no repacking): read-only, never copied.
    MappedF32(MappedF32),
    I32(Vec<i32>),
    /// f16 values a backend computes with in host memory (KV caches); f16 checkpoint
    /// weights arrive as `Bytes`, like every other stored format.
    F16(Vec<half::f16>),
    /// Raw bytes of any other dtype (f16, bf16, quantized blocks), in storage order.
    Bytes(Vec<u8>),
}

/// A run of f32 values inside a byte mapping that outlives it (the owner is kept
/// alive here). Construction checks the range and alignment.
#[derive(Clone)]
pub struct MappedF32 {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    offset: usize,
    len: usize,
}

impl MappedF32 {
    /// `len` f32 values at byte `offset` of `owner`, if they lie inside it, 4-byte
    /// aligned, on a little-endian host (checkpoints store little-endian).
    pub fn new(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        offset: usize,
        len: usize,
    ) -> Option<Self> {
        let bytes = (*owner).as_ref();
        let end = offset.checked_add(len.checked_mul(4)?)?;
        let ok = cfg!(target_endian = "little")
            && end <= bytes.len()
            && (bytes.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<f32>());
        ok.then_some(MappedF32 { owner, offset, len })
    }

    pub fn as_slice(&self) -> &[f32] {
        let bytes = &(*self.owner).as_ref()[self.offset..self.offset + 4 * self.len];
        // Checked at construction: in bounds and aligned; every bit pattern is an f32.
        bytemuck::cast_slice(bytes)
    }
}

impl std::fmt::Debug for MappedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedF32({} values at byte {})", self.len, self.offset)
    }
}

impl PartialEq for MappedF32 {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl HostData {
    /// The f32 values, owned or mapped.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            HostData::F32(v) => Some(v),
            HostData::MappedF32(m) => Some(m.as_slice()),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub fact: TensorFact,
    pub data: HostData,
}

impl HostTensor {
    pub fn f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        let fact = TensorFact::f32(shape);
        assert_eq!(
            fact.elems(),
            Some(data.len()),
            "HostTensor::f32: shape {fact} vs {} values",
            data.len()
        );
        HostTensor {
            fact,
            data: HostData::F32(data),
        }
    }
    pub fn i32(shape: impl Into<Vec<usize>>, data: Vec<i32>) -> Self {
        let fact = TensorFact::i32(shape);
        assert_eq!(
            fact.elems(),
            Some(data.len()),
            "HostTensor::i32: shape {fact} vs {} values",
            data.len()
        );
        HostTensor {
            fact,
            data: HostData::I32(data),
        }
    }
    /// Raw storage bytes for a non-f32/i32 dtype; `None` if the length does not match.
    pub fn bytes(fact: TensorFact, data: Vec<u8>) -> Option<Self> {
        (fact.bytes() == Some(data.len())).then_some(HostTensor {
            fact,
            data: HostData::Bytes(data),
        })
    }
    /// f32 values stored as f16 (rounded to nearest, ties to even).
    pub fn f16_from_f32(shape: impl Into<Vec<usize>>, data: &[f32]) -> Self {
        let fact = TensorFact::new(DType::F16, shape);
        assert_eq!(
            fact.elems(),
            Some(data.len()),
            "HostTensor::f16_from_f32: shape {fact} vs {} values",
            data.len()
        );
        HostTensor {
            fact,
            data: HostData::F16(data.iter().map(|&x| half::f16::from_f32(x)).collect()),
        }
    }
    pub fn zeros(fact: &TensorFact) -> Self {
        let n = fact.elems().expect("zeros: shape overflows");
        let data = match fact.dtype {
            DType::F32 => HostData::F32(vec![0.0; n]),
            DType::I32 => HostData::I32(vec![0; n]),
            DType::F16 => HostData::F16(vec![half::f16::ZERO; n]),
            d => HostData::Bytes(vec![
                0;
                d.storage_bytes(n).expect("zeros: not whole blocks")
            ]),
        };
        HostTensor {
            fact: fact.clone(),
            data,
        }
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        self.data.as_f32()
    }
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            HostData::I32(v) => Some(v),
            _ => None,
        }
    }
    /// The f32 values as a vector (a mapped tensor is copied out).
    pub fn into_f32(self) -> Option<Vec<f32>> {
        match self.data {
            HostData::F32(v) => Some(v),
            HostData::MappedF32(m) => Some(m.as_slice().to_vec()),
            _ => None,
        }
    }
    pub fn shape(&self) -> &[usize] {
        &self.fact.shape
    }
}
