//! The CPU backend: host buffers, portable kernels (runtime-dispatched SIMD where the
//! kernels crate has it), rayon threads.

mod buffer;
mod executable;

use crate::{Backend, BackendError, BufferUsage, Capabilities, DeviceBuffer, Executable, Result, Support};
use buffer::CpuBuffer;
use executable::CpuExecutable;
use npurt_graph::{DType, Graph, NodeId, Op, TensorFact};
use npurt_kernels::{HostData, HostTensor};
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct CpuOptions {
    /// Worker threads; `None` uses rayon's global pool (one per core).
    pub threads: Option<usize>,
}

pub struct CpuBackend {
    caps: Capabilities,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl CpuBackend {
    pub fn new(opts: CpuOptions) -> Self {
        let pool = opts.threads.and_then(|n| match rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build() {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                log::warn!("cannot build a {n}-thread pool ({e}); using the global pool");
                None
            }
        });
        let threads = pool.as_ref().map(|p| p.current_num_threads()).unwrap_or_else(rayon::current_num_threads);
        let caps = Capabilities {
            name: "cpu".into(),
            device: format!("host CPU, {threads} threads, kernels {}", npurt_kernels::cpu::isa().name()),
            compute_dtypes: vec![DType::F32],
            weight_dtypes: vec![DType::F32],
            max_buffer_bytes: isize::MAX as usize,
            host_memory: true,
        };
        CpuBackend { caps, pool }
    }

    pub fn threads(&self) -> usize {
        self.pool.as_ref().map(|p| p.current_num_threads()).unwrap_or_else(rayon::current_num_threads)
    }
}

impl Backend for CpuBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn supports(&self, graph: &Graph, id: NodeId) -> Support {
        let n = graph.node(id);
        let non_f32 = |x: &TensorFact| !matches!(x.dtype, DType::F32 | DType::I32);
        match &n.op {
            Op::Weight { fact, .. } | Op::State { fact, .. } if fact.dtype != DType::F32 => {
                Support::Unsupported(format!("{} tensors need the quantized CPU kernels", fact.dtype))
            }
            _ if non_f32(&n.fact) || n.inputs.iter().any(|i| non_f32(graph.fact(*i))) => Support::Unsupported("only f32 activations".into()),
            _ => Support::Supported,
        }
    }

    fn alloc(&self, fact: &TensorFact, usage: BufferUsage) -> Result<Arc<dyn DeviceBuffer>> {
        let bytes = fact.bytes().ok_or_else(|| BackendError::OutOfMemory { what: fact.to_string(), bytes: usize::MAX })?;
        let n = fact.elems().unwrap_or(0);
        let data = match fact.dtype {
            DType::F32 => {
                let mut v = Vec::new();
                v.try_reserve_exact(n).map_err(|_| BackendError::OutOfMemory { what: fact.to_string(), bytes })?;
                v.resize(n, 0f32);
                HostData::F32(v)
            }
            DType::I32 => HostData::I32(vec![0; n]),
            _ => {
                let mut v = Vec::new();
                v.try_reserve_exact(bytes).map_err(|_| BackendError::OutOfMemory { what: fact.to_string(), bytes })?;
                v.resize(bytes, 0u8);
                HostData::Bytes(v)
            }
        };
        Ok(Arc::new(CpuBuffer::new(HostTensor { fact: fact.clone(), data }, usage)))
    }

    fn prepare_weight(&self, name: &str, tensor: HostTensor) -> Result<Arc<dyn DeviceBuffer>> {
        if tensor.fact.dtype != DType::F32 {
            return Err(BackendError::Unsupported { backend: "cpu".into(), node: name.into(), reason: format!("{} weights", tensor.fact.dtype) });
        }
        Ok(Arc::new(CpuBuffer::new(tensor, BufferUsage::Weights)))
    }

    fn compile(&self, graph: &Graph, weights: &[(NodeId, Arc<dyn DeviceBuffer>)]) -> Result<Arc<dyn Executable>> {
        crate::check_support(self, graph)?;
        Ok(Arc::new(CpuExecutable::new(graph, weights, self.pool.clone())?))
    }

    fn write(&self, buf: &dyn DeviceBuffer, data: &HostTensor) -> Result<()> {
        let b = CpuBuffer::downcast(buf)?;
        if b.fact != data.fact {
            return Err(BackendError::Binding(format!("cannot write {} into a {} buffer", data.fact, b.fact)));
        }
        *b.data.write().map_err(|_| BackendError::Binding("buffer poisoned".into()))? = data.data.clone();
        Ok(())
    }

    fn read(&self, buf: &dyn DeviceBuffer) -> Result<HostTensor> {
        let b = CpuBuffer::downcast(buf)?;
        let data = b.data.read().map_err(|_| BackendError::Binding("buffer poisoned".into()))?.clone();
        Ok(HostTensor { fact: b.fact.clone(), data })
    }

    fn copy_rows(&self, src: &dyn DeviceBuffer, dst: &dyn DeviceBuffer, rows: usize) -> Result<()> {
        let (s, d) = (CpuBuffer::downcast(src)?, CpuBuffer::downcast(dst)?);
        let width = s.fact.last_dim();
        if s.fact.rank() != 2 || s.fact != d.fact || rows > s.fact.shape[0] {
            return Err(BackendError::Binding(format!("copy_rows: {rows} rows from {} to {}", s.fact, d.fact)));
        }
        if std::ptr::eq(s, d) {
            return Ok(());
        }
        let sg = s.data.read().map_err(|_| BackendError::Binding("buffer poisoned".into()))?;
        let mut dg = d.data.write().map_err(|_| BackendError::Binding("buffer poisoned".into()))?;
        match (&*sg, &mut *dg) {
            (HostData::F32(a), HostData::F32(b)) => b[..rows * width].copy_from_slice(&a[..rows * width]),
            _ => return Err(BackendError::Binding("copy_rows: f32 buffers only".into())),
        }
        Ok(())
    }
}
