//! Host tensors: a fact plus typed storage. The currency between loaders, backends
//! (upload/download) and tests.

use npurt_graph::{DType, TensorFact};

#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    /// f16 values a backend computes with in host memory (KV caches); f16 checkpoint
    /// weights arrive as `Bytes`, like every other stored format.
    F16(Vec<half::f16>),
    /// Raw bytes of any other dtype (f16, bf16, quantized blocks), in storage order.
    Bytes(Vec<u8>),
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
        match &self.data {
            HostData::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            HostData::I32(v) => Some(v),
            _ => None,
        }
    }
    pub fn into_f32(self) -> Option<Vec<f32>> {
        match self.data {
            HostData::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn shape(&self) -> &[usize] {
        &self.fact.shape
    }
}
