//! The CPU backend: host buffers, portable kernels (runtime-dispatched SIMD where the
//! kernels crate has it), threaded on the kernels' spinning thread pool.

mod buffer;
mod executable;

use crate::{
    Backend, BackendError, BufferUsage, Capabilities, DeviceBuffer, Executable, Result, Support,
};
use buffer::CpuBuffer;
use executable::CpuExecutable;
use npurt_graph::{DType, Graph, NodeId, Op, TensorFact};
use npurt_kernels::cpu::ThreadPool;
use npurt_kernels::{HostData, HostTensor};
use std::sync::Arc;

/// Whether weights of this dtype are repacked for the fused quantized kernels: the
/// quantized weight formats (the others are held as f32).
fn packs(dtype: DType) -> bool {
    dtype.is_quantized() && dtype.is_weight_format()
}

#[derive(Clone, Debug, Default)]
pub struct CpuOptions {
    /// Kernel threads; `None` uses the kernels' global pool (one per core).
    pub threads: Option<usize>,
    /// Compute a prefill chunk's padding rows too, as a static-shape device does (for
    /// comparisons; `NPURT_CPU_PADDED_ROWS=1` in the registry). By default a chunk
    /// costs its valid rows only (`npurt_graph::rows`).
    pub padded_rows: bool,
}

pub struct CpuBackend {
    caps: Capabilities,
    pool: Option<Arc<ThreadPool>>,
    padded_rows: bool,
}

impl CpuBackend {
    pub fn new(opts: CpuOptions) -> Self {
        let pool = opts.threads.and_then(|n| match ThreadPool::new(n) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                log::warn!("cannot build a {n}-thread pool ({e}); using the global pool");
                None
            }
        });
        let threads = pool
            .as_ref()
            .map(|p| p.threads())
            .unwrap_or_else(npurt_kernels::cpu::current_threads);
        let caps = Capabilities {
            name: "cpu".into(),
            device: format!(
                "host CPU, {threads} threads, kernels {}",
                npurt_kernels::cpu::isa().name()
            ),
            kernels: npurt_kernels::cpu::isa().name().into(),
            compute_dtypes: vec![DType::F32],
            weight_dtypes: DType::WEIGHT_FORMATS.to_vec(),
            max_buffer_bytes: isize::MAX as usize,
            host_memory: true,
        };
        CpuBackend {
            caps,
            pool,
            padded_rows: opts.padded_rows,
        }
    }

    pub fn threads(&self) -> usize {
        self.pool
            .as_ref()
            .map(|p| p.threads())
            .unwrap_or_else(npurt_kernels::cpu::current_threads)
    }
}

impl Backend for CpuBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn supports(&self, graph: &Graph, id: NodeId) -> Support {
        let n = graph.node(id);
        // Float weights are widened to f32 at prepare time; quantized ones are packed
        // for the fused kernels, which serve matmuls (as `b`) and embedding gathers.
        let f32_like =
            |x: &TensorFact| matches!(x.dtype, DType::F32 | DType::I32 | DType::F16 | DType::BF16);
        let packable = |x: &TensorFact| packs(x.dtype) && x.rank() == 2;
        match &n.op {
            Op::State { fact, .. }
                if !matches!(fact.dtype, DType::F32 | DType::F16 | DType::Q8Head { .. }) =>
            {
                Support::Unsupported(format!("{} state (f32, f16 and int8 only)", fact.dtype))
            }
            // An int8 (q8_head) KV cache: the state, and the write aliasing it.
            Op::State { .. } | Op::KvWrite if matches!(n.fact.dtype, DType::Q8Head { .. }) => {
                Support::Supported
            }
            Op::Weight { fact, .. } if f32_like(fact) => Support::Supported,
            // The packed kernels run whole 32-value blocks of K; a per-channel int8
            // weight (no blocks in the IR) of another width is declined here rather
            // than failing later in `prepare_weight`.
            Op::Weight { fact, .. }
                if packable(fact) && !fact.last_dim().is_multiple_of(npurt_kernels::cpu::BLOCK) =>
            {
                Support::Unsupported(format!(
                    "{} weights with {} columns (packed in blocks of {})",
                    fact.dtype,
                    fact.last_dim(),
                    npurt_kernels::cpu::BLOCK
                ))
            }
            Op::Weight { fact, .. } if packable(fact) => {
                let users_ok =
                    graph
                        .nodes
                        .iter()
                        .filter(|u| u.inputs.contains(&id))
                        .all(|u| match u.op {
                            Op::MatMul {
                                transpose_b: true, ..
                            } => u.inputs[1] == id && !u.inputs[2..].contains(&id),
                            Op::Gather => u.inputs[0] == id,
                            _ => false,
                        });
                if users_ok {
                    Support::Supported
                } else {
                    Support::Unsupported(format!(
                        "{} weights only feed matmul (as weights) or gather",
                        fact.dtype
                    ))
                }
            }
            Op::Weight { fact, .. } => Support::Unsupported(format!("{} weights", fact.dtype)),
            _ if !f32_like(&n.fact) => {
                Support::Unsupported(format!("{} activations", n.fact.dtype))
            }
            _ => {
                let bad = n.inputs.iter().map(|i| graph.fact(*i)).find(|f| {
                    let int8_kv = matches!(n.op, Op::Attention { .. })
                        && matches!(f.dtype, DType::Q8Head { .. });
                    !f32_like(f) && !packable(f) && !int8_kv
                });
                match bad {
                    Some(f) => Support::Unsupported(format!("input {f}")),
                    None => Support::Supported,
                }
            }
        }
    }

    fn kernel_name(&self, graph: &Graph, id: NodeId) -> String {
        let n = graph.node(id);
        let isa = npurt_kernels::cpu::isa().name();
        match &n.op {
            Op::MatMul {
                act,
                prologue,
                epilogue,
                ..
            } => {
                let w = graph.fact(n.inputs[1]).dtype;
                let kernel = if packs(w) {
                    "matmul_packed"
                } else {
                    "matmul_f32"
                };
                format!(
                    "{kernel}[{}{w} x {}{}, {isa}]",
                    prologue.name(),
                    act.name(),
                    epilogue.name()
                )
            }
            Op::Gather => format!("gather[{}]", graph.fact(n.inputs[0]).dtype),
            Op::Attention {
                mode: npurt_graph::AttentionMode::Causal,
                ..
            } => format!(
                "attention_f32[{} kv, flash blocks, online softmax, {isa}]",
                graph.fact(n.inputs[1]).dtype
            ),
            Op::Attention {
                mode: npurt_graph::AttentionMode::Bidirectional { seq },
                precision: npurt_graph::AttentionPrecision::F32,
                ..
            } => format!(
                "attention_bidirectional_f32[sequences of {seq}, flash blocks, online softmax, {isa}]"
            ),
            Op::Attention {
                mode: npurt_graph::AttentionMode::Bidirectional { seq },
                precision: npurt_graph::AttentionPrecision::I8,
                ..
            } => format!(
                "attention_bidirectional_i8[sequences of {seq}, int8 dot-product panels, u8 softmax, {isa}]"
            ),
            Op::Attention {
                mode: npurt_graph::AttentionMode::Bidirectional { seq },
                precision: npurt_graph::AttentionPrecision::F16,
                ..
            } => format!(
                "attention_bidirectional_f16[sequences of {seq}, vfmadd231ph panels where the CPU has AVX512-FP16, vpdpwssd i16 panels with AVX512-VNNI alone, else f32, {isa}]"
            ),
            Op::SpaceToChannel { .. } => "space_to_channel_f32[row copies]".into(),
            Op::SliceCols { .. } if executable::bidirectional_views(graph)[id.0] => {
                "slice_cols[read in place by the attention]".into()
            }
            Op::SliceCols { .. } => "slice_cols_f32[row copies]".into(),
            Op::KvWrite if n.fact.dtype == DType::F16 => "kv_write_f16".into(),
            Op::KvWrite if matches!(n.fact.dtype, DType::Q8Head { .. }) => {
                format!("kv_write_q8head[{}]", n.fact.dtype)
            }
            Op::RmsNorm { .. } => format!("rms_norm_f32[{isa}]"),
            Op::PatchEmbed { .. } => format!("patch_embed_f32[im2col + packed f32 matmul, {isa}]"),
            Op::LayerNorm { .. } => format!("layer_norm_f32[{isa}]"),
            Op::Softmax => format!("softmax_f32[{isa}]"),
            Op::Gelu { tanh } => format!("gelu_f32[{}, {isa}]", if *tanh { "tanh" } else { "erf" }),
            Op::Silu => format!("activation_f32[silu, {isa}]"),
            Op::Rope { .. } => "rope_f32[shared angles]".into(),
            op => format!("{}[reference]", op.kind()),
        }
    }

    fn alloc(&self, fact: &TensorFact, usage: BufferUsage) -> Result<Arc<dyn DeviceBuffer>> {
        let bytes = fact.bytes().ok_or_else(|| BackendError::OutOfMemory {
            what: fact.to_string(),
            bytes: usize::MAX,
        })?;
        let n = fact.elems().unwrap_or(0);
        // Reserved fallibly: a lying config asks for absurd sizes, which must be an error.
        fn zeroed<T: Clone>(len: usize, zero: T, oom: impl Fn() -> BackendError) -> Result<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(len).map_err(|_| oom())?;
            v.resize(len, zero);
            Ok(v)
        }
        let oom = || BackendError::OutOfMemory {
            what: fact.to_string(),
            bytes,
        };
        let data = match fact.dtype {
            DType::F32 => HostData::F32(zeroed(n, 0f32, oom)?),
            DType::I32 => HostData::I32(vec![0; n]),
            DType::F16 => HostData::F16(zeroed(n, half::f16::ZERO, oom)?),
            _ => HostData::Bytes(zeroed(bytes, 0u8, oom)?),
        };
        Ok(Arc::new(CpuBuffer::new(
            HostTensor {
                fact: fact.clone(),
                data,
            },
            usage,
        )))
    }

    fn prepare_weight(&self, name: &str, tensor: HostTensor) -> Result<Arc<dyn DeviceBuffer>> {
        let fact = tensor.fact.clone();
        let unsupported = |reason: String| BackendError::Unsupported {
            backend: "cpu".into(),
            node: name.into(),
            reason,
        };
        match (&tensor.data, fact.dtype) {
            // f32 read in place from the file mapping when the loader could, else owned.
            (HostData::F32(_) | HostData::MappedF32(_), DType::F32) => {
                Ok(Arc::new(CpuBuffer::new(tensor, BufferUsage::Weights)))
            }
            (HostData::Bytes(raw), DType::F16 | DType::BF16) => {
                let mut v = vec![0f32; fact.elems().unwrap_or(0)];
                if !npurt_kernels::quant::dequantize(fact.dtype, raw, &mut v) {
                    return Err(unsupported(format!(
                        "{} bytes do not match {fact}",
                        raw.len()
                    )));
                }
                Ok(Arc::new(CpuBuffer::new(
                    HostTensor {
                        fact,
                        data: HostData::F32(v),
                    },
                    BufferUsage::Weights,
                )))
            }
            (HostData::Bytes(raw), d) if packs(d) && fact.rank() == 2 => {
                let packed = npurt_kernels::cpu::pack(d, raw, fact.shape[0], fact.shape[1])
                    .map_err(|e| unsupported(e.0))?;
                Ok(Arc::new(CpuBuffer::packed(fact, packed)))
            }
            _ => Err(unsupported(format!("{fact} weights"))),
        }
    }

    fn compile(
        &self,
        graph: &Graph,
        weights: &[(NodeId, Arc<dyn DeviceBuffer>)],
    ) -> Result<Arc<dyn Executable>> {
        crate::check_support(self, graph)?;
        Ok(Arc::new(CpuExecutable::new(
            graph,
            weights,
            self.pool.clone(),
            self.padded_rows,
        )?))
    }

    fn write(&self, buf: &dyn DeviceBuffer, data: &HostTensor) -> Result<()> {
        let b = CpuBuffer::downcast(buf)?;
        // The storage must be the variant `alloc` made (f16 buffers hold f16 values).
        let same_storage = matches!(
            (b.fact.dtype, &data.data),
            (DType::F32, HostData::F32(_))
                | (DType::I32, HostData::I32(_))
                | (DType::F16, HostData::F16(_))
        ) || !matches!(b.fact.dtype, DType::F32 | DType::I32 | DType::F16)
            && matches!(data.data, HostData::Bytes(_));
        if b.fact != data.fact || !same_storage {
            return Err(BackendError::Binding(format!(
                "cannot write {} into a {} buffer",
                data.fact, b.fact
            )));
        }
        *b.data
            .write()
            .map_err(|_| BackendError::Binding("buffer poisoned".into()))? = data.data.clone();
        Ok(())
    }

    fn read(&self, buf: &dyn DeviceBuffer) -> Result<HostTensor> {
        let b = CpuBuffer::downcast(buf)?;
        let data = b
            .data
            .read()
            .map_err(|_| BackendError::Binding("buffer poisoned".into()))?
            .clone();
        Ok(HostTensor {
            fact: b.fact.clone(),
            data,
        })
    }

    fn can_bind(&self, buf: &dyn DeviceBuffer) -> bool {
        buf.as_any().is::<CpuBuffer>()
    }

    fn copy_rows(&self, src: &dyn DeviceBuffer, dst: &dyn DeviceBuffer, rows: usize) -> Result<()> {
        let (s, d) = (CpuBuffer::downcast(src)?, CpuBuffer::downcast(dst)?);
        let width = s.fact.last_dim();
        if s.fact.rank() != 2 || s.fact != d.fact || rows > s.fact.shape[0] {
            return Err(BackendError::Binding(format!(
                "copy_rows: {rows} rows from {} to {}",
                s.fact, d.fact
            )));
        }
        if std::ptr::eq(s, d) {
            return Ok(());
        }
        let sg = s
            .data
            .read()
            .map_err(|_| BackendError::Binding("buffer poisoned".into()))?;
        let mut dg = d
            .data
            .write()
            .map_err(|_| BackendError::Binding("buffer poisoned".into()))?;
        match (&*sg, &mut *dg) {
            (HostData::F32(a), HostData::F32(b)) => {
                b[..rows * width].copy_from_slice(&a[..rows * width])
            }
            (HostData::F16(a), HostData::F16(b)) => {
                b[..rows * width].copy_from_slice(&a[..rows * width])
            }
            // Block rows (an int8 cache): whole rows of blocks.
            (HostData::Bytes(a), HostData::Bytes(b)) if s.fact.dtype.is_quantized() => {
                let n = s.fact.dtype.storage_bytes(rows * width).ok_or_else(|| {
                    BackendError::Binding(format!(
                        "copy_rows: {} rows are not whole blocks",
                        s.fact
                    ))
                })?;
                b[..n].copy_from_slice(&a[..n])
            }
            _ => {
                return Err(BackendError::Binding(
                    "copy_rows: f32, f16 or int8 buffers only".into(),
                ))
            }
        }
        Ok(())
    }
}
