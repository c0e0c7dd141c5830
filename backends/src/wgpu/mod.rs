//! The wgpu compute backend: WGSL kernels (`kernels/src/wgsl/`) on any Vulkan, Metal or
//! DX12 adapter, including Mesa's lavapipe (a CPU Vulkan driver) on machines without
//! a GPU.
//!
//! - Weights are uploaded once in `prepare_weight`, repacked into aligned segments
//!   and split into row parts no larger than the adapter's storage binding limit.
//!   Quantized formats (Q4_0, Q4_1, Q8_0, Q8Channel) and f16/bf16 are dequantized
//!   inside the shaders (f16 through `unpack2x16float`, so SHADER_F16 is not needed).
//! - `compile` lowers every node to dispatches, plans scratch memory (`npurt_graph::plan::plan_slots`: greedy reuse by
//!   lifetime), compiles pipelines once per (shader, entry, defines) and uploads every
//!   dispatch's parameters into one uniform buffer.
//! - `run` records the whole graph into one command encoder and submits once; bind
//!   groups are cached per scratch and set of bound buffers.
//! - Matmuls compute in f32 whatever `ActPrecision` asks (finer than I16/I8), except
//!   the tiled GEMM's dot4 variant, which multiplies i8 activations (quantized per
//!   32-value block) by integer weights with packed 4x8 dot products.
//! - Matmul and attention come in two kernel families ([`KernelFamily`]), chosen per
//!   adapter: register tiles with lane-shared loads for CPU drivers, workgroup-memory
//!   tiles for GPUs.
//! - Run-time scalars (pos, n_valid, last_row) stay on the GPU; kernels validate them
//!   and report through a status word that `synchronize`/`read` turn into a typed
//!   error, since a submitted run cannot return one.

mod buffers;
mod coop;
mod counters;
mod device;
mod executable;
mod ops;
mod pipelines;
mod probe;
mod shader_args;
mod support;
mod variants;
mod weights;

pub use ::wgpu::{Backends, Features};
pub use buffers::WgpuBuffer;
pub use counters::WgpuCounters;
pub use executable::WgpuExecutable;
pub use variants::{KernelFamily, KernelVariants, TileSizes};

use crate::{
    Backend, BackendError, BufferUsage, Capabilities, DeviceBuffer, Executable, Result, Support,
};
use device::GpuContext;
use npurt_graph::{DType, Graph, NodeId, TensorFact};
use npurt_kernels::{HostData, HostTensor};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct WgpuOptions {
    /// Graphics APIs to look for adapters on. Defaults to `WGPU_BACKEND` from the
    /// environment (e.g. `vulkan`), else all of Vulkan/Metal/DX12.
    pub backends: ::wgpu::Backends,
    /// Lowers the per-binding size limit (weights are split into parts no larger);
    /// `None` uses the adapter's `max_storage_buffer_binding_size`. Tests use it to
    /// exercise splitting on small tensors.
    pub max_binding_bytes: Option<u64>,
    /// Matmul/attention kernel family; `None` picks by adapter: `Lanes` on CPU drivers
    /// (lavapipe), `Tiled` on GPUs. `NPURT_WGPU_KERNELS=lanes|tiled` overrides the
    /// default (both are tested on lavapipe).
    pub kernels: Option<KernelFamily>,
    /// Optional instructions of the `Tiled` kernels (f16 arithmetic, subgroup
    /// reductions, packed i8 dot products); `None` reads `NPURT_WGPU_VARIANTS`
    /// (`plain`, `all`, or a list such as `f16,dot4`) and without it uses every one the
    /// adapter offers. Asking for one the adapter lacks, or an unknown name, is
    /// `BackendError::Unavailable`.
    pub variants: Option<KernelVariants>,
    /// Rows per tile of the tiled GEMM: 64 (default) or 32, which doubles the
    /// workgroups of a matrix for GPUs a 64-row grid leaves idle. `None` reads
    /// `NPURT_WGPU_GEMM_ROWS=32|64`; another value is `BackendError::Unavailable`.
    pub gemm_rows: Option<u32>,
    /// Output columns per thread of the tiled GEMV: 1, 2 or 4 (each activation load
    /// serves that many columns). `None` reads `NPURT_WGPU_GEMV_COLS=1|2|4`, else picks
    /// per node by the size of its grid; another value is `BackendError::Unavailable`.
    pub gemv_cols: Option<u32>,
    /// Key ranges each row of the tiled decode attention is split into, each its own
    /// workgroup, merged by a second dispatch (flash-decoding): 1 (no split) ..
    /// `MAX_ATTENTION_SPLITS`. `None` reads `NPURT_WGPU_ATTN_SPLITS`, else picks per
    /// node from its heads and cache length; another value is
    /// `BackendError::Unavailable`.
    pub attn_splits: Option<u32>,
    /// How `Executable::profile` times nodes; `None` picks the best the adapter
    /// offers. `NPURT_WGPU_PROFILE=inside|pass|host` overrides the default.
    pub profile_timing: Option<ProfileTiming>,
    /// Run a prefill chunk's padding rows too, as a static-shape device does (for
    /// comparisons; `NPURT_WGPU_PADDED_ROWS=1`). By default a chunk's row-wise
    /// dispatches are sized to its valid rows on the GPU (`npurt_graph::rows`).
    pub padded_rows: bool,
}

/// How the wgpu backend's profiler times each node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileTiming {
    /// Timestamps written between the nodes inside one compute pass (needs
    /// `TIMESTAMP_QUERY_INSIDE_PASSES`).
    InsidePasses,
    /// One compute pass per node with the pass's begin/end timestamps (needs
    /// `TIMESTAMP_QUERY`).
    PassPerNode,
    /// One submission per node, waited for, timed with the host clock (any adapter).
    HostPerNode,
}

impl ProfileTiming {
    pub fn name(self) -> &'static str {
        match self {
            ProfileTiming::InsidePasses => "GPU timestamps inside one pass",
            ProfileTiming::PassPerNode => "GPU timestamps, one pass per node",
            ProfileTiming::HostPerNode => {
                "host wall time, one submission per node (no timestamp queries)"
            }
        }
    }
}

impl Default for WgpuOptions {
    fn default() -> Self {
        let kernels = match std::env::var("NPURT_WGPU_KERNELS").as_deref() {
            Ok("lanes") => Some(KernelFamily::Lanes),
            Ok("tiled") => Some(KernelFamily::Tiled),
            _ => None,
        };
        let profile_timing = match std::env::var("NPURT_WGPU_PROFILE").as_deref() {
            Ok("inside") => Some(ProfileTiming::InsidePasses),
            Ok("pass") => Some(ProfileTiming::PassPerNode),
            Ok("host") => Some(ProfileTiming::HostPerNode),
            _ => None,
        };
        WgpuOptions {
            backends: ::wgpu::Backends::from_env().unwrap_or(::wgpu::Backends::PRIMARY),
            max_binding_bytes: None,
            kernels,
            variants: None,
            gemm_rows: None,
            gemv_cols: None,
            attn_splits: None,
            profile_timing,
            padded_rows: std::env::var("NPURT_WGPU_PADDED_ROWS").is_ok_and(|v| v == "1"),
        }
    }
}

pub struct WgpuBackend {
    caps: Capabilities,
    ctx: Arc<GpuContext>,
    padded_rows: bool,
}

impl WgpuBackend {
    /// Opens the best adapter (a GPU, else lavapipe). No adapter is
    /// `BackendError::Unavailable` naming the driver to install.
    pub fn new(opts: WgpuOptions) -> Result<Self> {
        let variants = match (opts.variants, std::env::var("NPURT_WGPU_VARIANTS")) {
            (Some(v), _) => Some(v),
            (None, Ok(s)) => Some(
                KernelVariants::parse(&s)
                    .map_err(|e| device::unavailable(format!("NPURT_WGPU_VARIANTS: {e}")))?,
            ),
            (None, Err(_)) => None,
        };
        // An option, else its environment variable, else the default.
        let knob = |opt: Option<u32>, var: &str, default: u32| match (opt, std::env::var(var)) {
            (Some(v), _) => Ok(v),
            (None, Ok(s)) => s
                .trim()
                .parse()
                .map_err(|_| device::unavailable(format!("{var}={s:?} is not a number"))),
            (None, Err(_)) => Ok(default),
        };
        let tiles = TileSizes {
            gemm_rows: knob(
                opts.gemm_rows,
                "NPURT_WGPU_GEMM_ROWS",
                TileSizes::DEFAULT.gemm_rows,
            )?,
            gemv_cols: knob(
                opts.gemv_cols,
                "NPURT_WGPU_GEMV_COLS",
                TileSizes::DEFAULT.gemv_cols,
            )?,
            attn_splits: knob(
                opts.attn_splits,
                "NPURT_WGPU_ATTN_SPLITS",
                TileSizes::DEFAULT.attn_splits,
            )?,
        };
        if tiles.gemm_rows != 32 && tiles.gemm_rows != 64 {
            return Err(device::unavailable(format!(
                "GEMM tiles of {} rows (NPURT_WGPU_GEMM_ROWS / WgpuOptions::gemm_rows): 32 or 64",
                tiles.gemm_rows
            )));
        }
        if ![0, 1, 2, 4].contains(&tiles.gemv_cols) {
            return Err(device::unavailable(format!(
                "GEMV threads of {} columns (NPURT_WGPU_GEMV_COLS / WgpuOptions::gemv_cols): 1, 2 or 4",
                tiles.gemv_cols
            )));
        }
        if tiles.attn_splits as usize > ops::MAX_ATTENTION_SPLITS {
            return Err(device::unavailable(format!(
                "attention keys in {} ranges (NPURT_WGPU_ATTN_SPLITS / WgpuOptions::attn_splits): 1 to {}",
                tiles.attn_splits,
                ops::MAX_ATTENTION_SPLITS
            )));
        }
        let ctx = GpuContext::new(
            opts.backends,
            opts.max_binding_bytes,
            opts.kernels,
            variants,
            tiles,
            opts.profile_timing,
        )?;
        let info = &ctx.info;
        let caps = Capabilities {
            name: "wgpu".into(),
            device: format!(
                "{} ({:?}, {:?}, driver {} {})",
                info.name, info.backend, info.device_type, info.driver, info.driver_info
            )
            .replace(", driver  )", ")"),
            kernels: match ctx.kernels {
                // The optional instructions serve the tiled kernels only.
                KernelFamily::Lanes => "lanes".into(),
                KernelFamily::Tiled => {
                    format!("tiled ({}{})", ctx.variants.name(), ctx.tiles.describe())
                }
            },
            compute_dtypes: vec![DType::F32],
            weight_dtypes: support::WEIGHT_DTYPES.to_vec(),
            max_buffer_bytes: ctx.max_binding as usize,
            host_memory: false,
        };
        Ok(WgpuBackend {
            caps,
            ctx,
            padded_rows: opts.padded_rows,
        })
    }

    /// The adapter's name and API, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu)".
    pub fn adapter(&self) -> &str {
        &self.caps.device
    }

    /// Largest bytes one binding covers (weights are split into parts no larger).
    pub fn max_binding_bytes(&self) -> u64 {
        self.ctx.max_binding
    }

    /// The matmul kernel family in use.
    pub fn kernel_family(&self) -> KernelFamily {
        self.ctx.kernels
    }

    /// The optional instructions the `Tiled` kernels use on this device.
    pub fn kernel_variants(&self) -> KernelVariants {
        self.ctx.variants
    }

    /// How `Executable::profile` times nodes on this device.
    pub fn profile_timing(&self) -> ProfileTiming {
        self.ctx.profile_timing
    }

    /// The timestamp features the adapter offers (and the device enabled).
    pub fn timestamp_features(&self) -> ::wgpu::Features {
        self.ctx.device.features()
    }

    /// Distinct compute pipelines compiled so far.
    pub fn pipeline_count(&self) -> usize {
        self.ctx.pipelines.len()
    }

    /// What the device has done so far (buffers and bind groups created, submissions,
    /// host waits, bytes read back); subtract two snapshots to see one run's share.
    pub fn counters(&self) -> WgpuCounters {
        self.ctx.counters.snapshot()
    }

    /// `Backend::compile`, returning the wgpu executable itself (its dispatch count and
    /// scratch slots can be inspected).
    pub fn compile_wgpu(
        &self,
        graph: &Graph,
        weights: &[(NodeId, Arc<dyn DeviceBuffer>)],
    ) -> Result<WgpuExecutable> {
        crate::check_support(self, graph)?;
        WgpuExecutable::new(self.ctx.clone(), graph, weights, self.padded_rows)
    }

    /// Parts a prepared weight is split into.
    pub fn weight_parts(buf: &dyn DeviceBuffer) -> usize {
        WgpuBuffer::downcast(buf)
            .map(|b| b.parts.len())
            .unwrap_or(0)
    }

    fn same_device(b: &dyn DeviceBuffer) -> Result<&WgpuBuffer> {
        WgpuBuffer::downcast(b)
    }
}

impl Backend for WgpuBackend {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn supports(&self, graph: &Graph, id: NodeId) -> Support {
        support::supports(graph, id, self.ctx.max_binding)
    }

    /// e.g. `matmul[q4_0 x f32 +swiglu, lanes]`: activations are always f32 here.
    fn kernel_name(&self, graph: &Graph, id: NodeId) -> String {
        let n = graph.node(id);
        let family = self.ctx.kernels.name();
        match &n.op {
            npurt_graph::Op::MatMul {
                prologue,
                epilogue,
                act,
                ..
            } => {
                let w = graph.fact(n.inputs[1]).dtype;
                // Prefill runs the tiled GEMM; its i8 variant multiplies packed i8.
                let rows = graph.fact(n.inputs[0]).shape[0];
                let i8 = self.ctx.kernels == KernelFamily::Tiled
                    && rows > ops::GEMV_MAX_ROWS
                    && ops::dot4_applies(self.ctx.variants, *act, w);
                let (a, family) = if i8 {
                    ("i8", "tiled dot4")
                } else {
                    ("f32", family)
                };
                format!(
                    "matmul[{}{w} x {a}{}, {family}]",
                    prologue.name(),
                    epilogue.name()
                )
            }
            npurt_graph::Op::Attention { head_dim, .. } => {
                format!(
                    "attention[{}]",
                    if self.ctx.kernels == KernelFamily::Lanes && head_dim % 4 == 0 {
                        "lanes"
                    } else {
                        "tiled"
                    }
                )
            }
            op => op.kind().to_string(),
        }
    }

    fn alloc(&self, fact: &TensorFact, usage: BufferUsage) -> Result<Arc<dyn DeviceBuffer>> {
        Ok(buffers::into_arc(buffers::alloc(&self.ctx, fact, usage)?))
    }

    fn prepare_weight(&self, name: &str, tensor: HostTensor) -> Result<Arc<dyn DeviceBuffer>> {
        if !support::WEIGHT_DTYPES.contains(&tensor.fact.dtype) && tensor.fact.dtype != DType::I32 {
            return Err(BackendError::Unsupported {
                backend: "wgpu".into(),
                node: name.into(),
                reason: format!("{} weights", tensor.fact.dtype),
            });
        }
        Ok(buffers::into_arc(buffers::upload_weight(
            &self.ctx, name, &tensor,
        )?))
    }

    fn compile(
        &self,
        graph: &Graph,
        weights: &[(NodeId, Arc<dyn DeviceBuffer>)],
    ) -> Result<Arc<dyn Executable>> {
        Ok(Arc::new(self.compile_wgpu(graph, weights)?))
    }

    fn write(&self, buf: &dyn DeviceBuffer, data: &HostTensor) -> Result<()> {
        let b = Self::same_device(buf)?;
        if b.fact != data.fact {
            return Err(BackendError::Binding(format!(
                "cannot write {} into a {} buffer",
                data.fact, b.fact
            )));
        }
        let src = weights::host_bytes(data);
        let (cols, rows) = (b.fact.last_dim(), b.fact.rows().max(1));
        for part in &b.parts {
            let packed = if b.usage == BufferUsage::Weights {
                weights::pack(b.fact.dtype, cols, rows, &src, &part.layout)
            } else {
                src.to_vec()
            };
            let mut packed = packed;
            packed.resize(packed.len().div_ceil(4) * 4, 0);
            self.ctx.queue.write_buffer(&part.buffer, 0, &packed);
        }
        Ok(())
    }

    fn read(&self, buf: &dyn DeviceBuffer) -> Result<HostTensor> {
        let b = Self::same_device(buf)?;
        // The read's copy is queued behind the run that wrote this buffer, so it waits
        // for it anyway: report kernel errors of that run and of this thread's runs.
        let writer = b.last_run.load(std::sync::atomic::Ordering::Acquire);
        let me = std::thread::current().id();
        self.ctx
            .resolve_checks(|c| c.id == writer || c.thread == me)?;
        let bytes = b
            .fact
            .bytes()
            .ok_or_else(|| BackendError::Binding(format!("{} has no byte size", b.fact)))?;
        let data = if b.usage == BufferUsage::Weights {
            let (cols, rows) = (b.fact.last_dim(), b.fact.rows().max(1));
            let mut out = vec![0u8; bytes];
            for part in &b.parts {
                let packed = self.ctx.download(&part.buffer, 0, part.layout.bytes)?;
                weights::unpack(b.fact.dtype, cols, rows, &packed, &part.layout, &mut out);
            }
            out
        } else {
            self.ctx.download(b.whole()?, 0, bytes as u64)?
        };
        let t = weights::host_tensor(&b.fact, data).ok_or_else(|| {
            BackendError::Binding(format!("read back {} of the wrong size", b.fact))
        })?;
        // f16 values npurt computes (KV caches) come back as values; weights as bytes.
        Ok(match (&t.data, b.usage) {
            (HostData::Bytes(raw), u)
                if b.fact.dtype == DType::F16 && u != BufferUsage::Weights =>
            {
                let v = raw
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                HostTensor {
                    fact: t.fact,
                    data: HostData::F16(v),
                }
            }
            _ => t,
        })
    }

    fn copy_rows(&self, src: &dyn DeviceBuffer, dst: &dyn DeviceBuffer, rows: usize) -> Result<()> {
        let (s, d) = (Self::same_device(src)?, Self::same_device(dst)?);
        if s.fact.rank() != 2
            || s.fact != d.fact
            || rows > s.fact.shape[0]
            || !matches!(
                s.fact.dtype,
                DType::F32 | DType::I32 | DType::F16 | DType::Q8Head { .. }
            )
        {
            return Err(BackendError::Binding(format!(
                "copy_rows: {rows} rows from {} to {}",
                s.fact, d.fact
            )));
        }
        if s.id == d.id || rows == 0 {
            return Ok(());
        }
        // f16 states have an even width and int8 blocks whole words (support.rs), so
        // this is a multiple of 4 bytes.
        let bytes = TensorFact::new(s.fact.dtype, [rows, s.fact.shape[1]])
            .bytes()
            .ok_or_else(|| BackendError::Binding(format!("copy_rows: {}", s.fact)))?
            as u64;
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some("npurt copy_rows"),
            });
        enc.copy_buffer_to_buffer(s.whole()?, 0, d.whole()?, 0, bytes);
        self.ctx.submit([enc.finish()]);
        Ok(())
    }

    fn measure_limits(&self) -> Result<Option<crate::DeviceLimits>> {
        probe::measure(&self.ctx).map(Some)
    }

    /// Waits for the queue and reports kernel errors of the runs this thread submitted.
    fn synchronize(&self) -> Result<()> {
        let me = std::thread::current().id();
        self.ctx.synchronize_checks(|c| c.thread == me)
    }
}
