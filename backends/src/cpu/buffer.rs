//! Host-memory buffers. The lock makes a buffer safe to share: weights are only ever
//! read-locked (many sessions at once); a session's state is write-locked by the one
//! run that updates it, so two runs can never interleave writes to one KV cache.

use crate::{BackendError, BufferUsage, DeviceBuffer, Result};
use npurt_graph::TensorFact;
use npurt_kernels::cpu::PackedMatrix;
use npurt_kernels::{HostData, HostTensor};
use std::any::Any;
use std::sync::RwLock;

pub struct CpuBuffer {
    pub(crate) fact: TensorFact,
    pub(crate) usage: BufferUsage,
    pub(crate) data: RwLock<HostData>,
    /// Quantized weights, repacked once into the kernels' tile layout (then `data` is
    /// empty: no f32 or raw copy is kept).
    pub(crate) packed: Option<PackedMatrix>,
}

impl CpuBuffer {
    pub(crate) fn new(t: HostTensor, usage: BufferUsage) -> Self {
        CpuBuffer {
            fact: t.fact,
            usage,
            data: RwLock::new(t.data),
            packed: None,
        }
    }

    pub(crate) fn packed(fact: TensorFact, packed: PackedMatrix) -> Self {
        CpuBuffer {
            fact,
            usage: BufferUsage::Weights,
            data: RwLock::new(HostData::Bytes(Vec::new())),
            packed: Some(packed),
        }
    }

    pub(crate) fn downcast(b: &dyn DeviceBuffer) -> Result<&CpuBuffer> {
        b.as_any().downcast_ref::<CpuBuffer>().ok_or_else(|| {
            BackendError::Binding(format!(
                "buffer {} does not belong to the cpu backend",
                b.fact()
            ))
        })
    }
}

impl DeviceBuffer for CpuBuffer {
    fn fact(&self) -> &TensorFact {
        &self.fact
    }
    fn usage(&self) -> BufferUsage {
        self.usage
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
