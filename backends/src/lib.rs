//! npurt-backends: the [`Backend`] contract and the backends that ship with npurt.
//!
//! The contract follows ggml-backend's split (device / buffer / executor) and ONNX
//! Runtime's execution providers (a backend compiles a whole claimed subgraph into one
//! executable, as an NPU SDK does):
//!
//! - a backend describes itself ([`Capabilities`]) and answers per node whether it can
//!   run it ([`Backend::supports`]);
//! - it allocates [`DeviceBuffer`]s tagged [`BufferUsage::Weights`] or activations/state;
//! - it prepares (repacks) each weight once ([`Backend::prepare_weight`]);
//! - it compiles a (sub)graph into an [`Executable`] that runs against [`Bindings`];
//! - it synchronises ([`Backend::synchronize`]), or hands back a [`Completion`] per
//!   submitted run ([`Executable::submit`]) so the runtime can keep two streams busy
//!   (BlueLM-V pipelines the Conv2D of one batch against the ViT blocks of the last).
//!
//! Backends are open: the runtime only ever holds `Arc<dyn Backend>` and finds them in
//! a [`Registry`], so a vendor's crate plugs in without editing npurt.

mod completion;
/// The backend conformance suite (every op vs the reference kernels, by NMSE).
pub mod conformance;
#[cfg(feature = "cpu")]
pub mod cpu;
/// Per-node timing of one run ([`Executable::profile`]).
mod limits;
pub mod profile;
mod registry;
#[cfg(feature = "wgpu")]
pub mod wgpu;
mod worker;

pub use completion::{Completion, Finished, Ready};
pub use limits::{DeviceLimits, Peak};
pub use profile::{HostTimes, KindTime, NodeTime, Profile, TimeSource};
pub use registry::{BackendOptions, Registry, MAX_THREADS};
pub use worker::WorkerExecutable;

use npurt_graph::{DType, Graph, NodeId, TensorFact};
use npurt_kernels::HostTensor;
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend `{backend}` does not support node `{node}`: {reason}")]
    Unsupported {
        backend: String,
        node: String,
        reason: String,
    },
    #[error("backend `{backend}` is not available: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error("invalid backend option `{option}`: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("no backend named `{0}` is registered (known: {1})")]
    UnknownBackend(String, String),
    #[error("binding error: {0}")]
    Binding(String),
    #[error("out of memory allocating {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: usize },
    #[error("execution failed at node `{node}`: {reason}")]
    Execution { node: String, reason: String },
    /// [`Executable::profile`] on an executable that does not implement it.
    #[error("this executable does not support profiling: {0}")]
    ProfilingUnsupported(String),
}

pub type Result<T, E = BackendError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferUsage {
    /// Read-only weights, prepared once and shared by every session.
    Weights,
    /// Per-session persistent state (KV cache).
    State,
    /// Inputs/outputs and intermediate values.
    Activations,
}

/// What a backend is and what it can run.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub name: String,
    /// e.g. "portable Rust, 2 threads", "lavapipe (Vulkan, CPU)".
    pub device: String,
    /// The kernels in use, for bench tables and logs: e.g. `avx512+vnni` (the CPU's
    /// instruction path) or `tiled (f16+subgroup+dot4)` (a wgpu kernel family and its
    /// optional instructions).
    pub kernels: String,
    /// Activation dtypes it computes in.
    pub compute_dtypes: Vec<DType>,
    /// Weight dtypes it accepts in `prepare_weight`.
    pub weight_dtypes: Vec<DType>,
    /// Largest single buffer it can allocate.
    pub max_buffer_bytes: usize,
    /// True for host-memory backends (no transfers needed to or from the CPU).
    pub host_memory: bool,
}

/// A buffer owned by a backend. The runtime treats it as opaque; a backend downcasts
/// its own buffers through `as_any`.
pub trait DeviceBuffer: Send + Sync {
    fn fact(&self) -> &TensorFact;
    fn usage(&self) -> BufferUsage;
    fn as_any(&self) -> &dyn Any;
}

/// Buffers bound to a graph's sources and outputs for one run, keyed by the source
/// node (inputs, weights, states) or the output name.
#[derive(Clone, Default)]
pub struct Bindings {
    pub sources: Vec<(NodeId, Arc<dyn DeviceBuffer>)>,
    pub outputs: Vec<(String, Arc<dyn DeviceBuffer>)>,
}

impl Bindings {
    pub fn source(&self, id: NodeId) -> Option<&Arc<dyn DeviceBuffer>> {
        self.sources.iter().find(|(n, _)| *n == id).map(|(_, b)| b)
    }
    pub fn output(&self, name: &str) -> Option<&Arc<dyn DeviceBuffer>> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, b)| b)
    }
}

/// Per-user (per-session) scratch memory of an executable: intermediates live here so
/// one compiled executable can serve many sessions at once.
pub trait Scratch: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A compiled (sub)graph.
///
/// Two ways to run it:
/// - [`Executable::run`] runs (or, on a device with a queue, enqueues) the graph;
///   [`Backend::synchronize`] then waits for everything the calling thread submitted.
/// - [`Executable::submit`] starts the graph and returns a [`Completion`] for this one
///   run; [`Completion::wait`] returns once it has finished (outputs readable, errors
///   reported). Between the two the caller is free to run other work, e.g. another
///   stage on another backend: that is how two streams overlap.
///
/// Rules for the caller of `submit`, until the handle has been waited on (or dropped):
/// do not read the bound outputs and do not run again with the same scratch. The
/// implementation keeps what the run touches alive (the bindings are `Arc`s it may
/// clone; a scratch that must outlive the call is reference-counted inside it), so a
/// caller breaking these rules sees stale data or waits, never undefined behaviour.
pub trait Executable: Send + Sync {
    /// Allocates scratch for one concurrent user.
    fn new_scratch(&self) -> Result<Box<dyn Scratch>>;
    /// Runs the graph. Every source must be bound except weights, which the backend
    /// captured at compile time; every graph output must be bound to a buffer.
    fn run(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<()>;

    /// Starts the graph and returns a handle on this run (see the trait docs). Errors
    /// found before the work starts (bindings) come back here, errors of the work
    /// itself from [`Completion::wait`].
    ///
    /// The default runs [`Executable::run`] on the calling thread, timing it, and
    /// returns an already finished [`Ready`] handle, so every backend supports `submit`
    /// unchanged; concurrency then comes from the caller (e.g. a [`WorkerExecutable`]
    /// runs submissions on its own thread). A backend whose `run` only enqueues work
    /// should override this with a handle that waits for that work (the wgpu backend
    /// does); with the default, `wait` only means "submitted", and the caller still
    /// needs [`Backend::synchronize`].
    fn submit(
        &self,
        bindings: &Bindings,
        scratch: &mut dyn Scratch,
    ) -> Result<Box<dyn Completion>> {
        let t0 = Instant::now();
        self.run(bindings, scratch)?;
        Ok(Box::new(Ready::new(Finished {
            busy: Some(t0.elapsed()),
        })))
    }

    /// Runs the graph once like [`Executable::run`] (same bindings, same results,
    /// finished when it returns) and times every compute node
    /// ([`profile::is_compute`]), plus the host's share of an ordinary run. Slower
    /// than `run`: use it to find where the time goes, not to measure throughput.
    ///
    /// The default returns [`BackendError::ProfilingUnsupported`], so a backend
    /// without a profiler still compiles and its callers get a typed error.
    fn profile(&self, _bindings: &Bindings, _scratch: &mut dyn Scratch) -> Result<Profile> {
        Err(BackendError::ProfilingUnsupported(
            "the backend does not implement Executable::profile".into(),
        ))
    }
}

/// Whether a backend can run a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    Supported,
    Unsupported(String),
}

pub trait Backend: Send + Sync {
    fn capabilities(&self) -> &Capabilities;

    fn name(&self) -> &str {
        &self.capabilities().name
    }

    /// Can this backend run node `id` of `graph` (op, dtypes, shapes, limits)?
    fn supports(&self, graph: &Graph, id: NodeId) -> Support;

    /// Allocates a zero-filled buffer.
    fn alloc(&self, fact: &TensorFact, usage: BufferUsage) -> Result<Arc<dyn DeviceBuffer>>;

    /// Uploads a weight and repacks it into this backend's layout, once.
    fn prepare_weight(&self, name: &str, tensor: HostTensor) -> Result<Arc<dyn DeviceBuffer>>;

    /// Compiles `graph` (all of whose nodes this backend supports). `weights` are the
    /// prepared buffers of the graph's weight sources, by node id.
    fn compile(
        &self,
        graph: &Graph,
        weights: &[(NodeId, Arc<dyn DeviceBuffer>)],
    ) -> Result<Arc<dyn Executable>>;

    fn write(&self, buf: &dyn DeviceBuffer, data: &HostTensor) -> Result<()>;
    fn read(&self, buf: &dyn DeviceBuffer) -> Result<HostTensor>;
    /// Copies rows `[0, rows)` of a 2-D buffer into another of the same width (KV-cache
    /// truncation and session forks use it).
    fn copy_rows(&self, src: &dyn DeviceBuffer, dst: &dyn DeviceBuffer, rows: usize) -> Result<()>;

    /// The kernel this backend runs for node `id` (for `npurt inspect` and logs), e.g.
    /// `matmul[q4_1 x i16 +swiglu, avx512]`.
    fn kernel_name(&self, graph: &Graph, id: NodeId) -> String {
        let n = graph.node(id);
        match &n.op {
            npurt_graph::Op::MatMul {
                act,
                prologue,
                epilogue,
                ..
            } => {
                format!(
                    "matmul[{}{} x {}{}]",
                    prologue.name(),
                    graph.fact(n.inputs[1]).dtype,
                    act.name(),
                    epilogue.name()
                )
            }
            op => op.kind().to_string(),
        }
    }

    /// Whether `buf`, made by another backend instance, can be bound as a source of
    /// this backend's executables as it is, with no copy (a CPU backend reads any host
    /// buffer). Buffers of this instance always can.
    fn can_bind(&self, _buf: &dyn DeviceBuffer) -> bool {
        false
    }

    /// Measures the device's memory bandwidth and arithmetic peaks with microbenchmark
    /// kernels (about a second), so speeds can be quoted as fractions of them. `None`
    /// for backends on the host's memory: `npurt bench` measures the host itself.
    fn measure_limits(&self) -> Result<Option<DeviceLimits>> {
        Ok(None)
    }

    /// Waits for all submitted work (a no-op on synchronous backends).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// Checks that every node of `graph` is supported; the first unsupported one is an error.
pub fn check_support(backend: &dyn Backend, graph: &Graph) -> Result<()> {
    for id in graph.ids() {
        if let Support::Unsupported(reason) = backend.supports(graph, id) {
            return Err(BackendError::Unsupported {
                backend: backend.name().to_string(),
                node: graph.node(id).name.clone(),
                reason,
            });
        }
    }
    Ok(())
}
