//! The GPU context: adapter selection, the device and queue, error scopes that turn
//! wgpu validation/out-of-memory errors into typed errors, and the deferred checks of
//! kernel status words (see `kernels/src/wgsl/status.wgsl`).

use super::counters::Counters;
use super::pipelines::PipelineCache;
use crate::{BackendError, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const NAME: &str = "wgpu";

pub(crate) fn unavailable(reason: impl Into<String>) -> BackendError {
    BackendError::Unavailable {
        backend: NAME.into(),
        reason: reason.into(),
    }
}

/// A kernel status word to check once the run that wrote it has finished. Checks are
/// reported to the thread that submitted the run (its `synchronize`), to whoever reads
/// one of the run's outputs, or to a later run on the same scratch that needs its
/// readback again (see `STATUS_RING`), so concurrent sessions never see each other's
/// errors.
pub(crate) struct StatusCheck {
    pub id: u64,
    pub thread: std::thread::ThreadId,
    /// MAP_READ copy of the run's status words.
    pub readback: ::wgpu::Buffer,
    /// The submission that writes `readback`: resolving the check waits for it alone.
    pub index: ::wgpu::SubmissionIndex,
    /// Executable label and node names, to name the failing node.
    pub label: Arc<str>,
    pub node_names: Arc<Vec<String>>,
    /// Cleared once checked, so the scratch may reuse the readback buffer.
    pub in_flight: Arc<std::sync::atomic::AtomicBool>,
}

pub(crate) struct GpuContext {
    pub device: ::wgpu::Device,
    pub queue: ::wgpu::Queue,
    pub info: ::wgpu::AdapterInfo,
    pub limits: ::wgpu::Limits,
    /// Largest bytes one storage binding may cover (weights are split into parts no
    /// larger; `WgpuOptions::max_binding_bytes` may lower it for testing).
    pub max_binding: u64,
    pub kernels: super::variants::KernelFamily,
    /// Optional instructions in use (resolved against the adapter's features).
    pub variants: super::variants::KernelVariants,
    /// Tile sizes of the tiled kernels.
    pub tiles: super::variants::TileSizes,
    /// How the profiler times nodes (resolved against the device's features).
    pub profile_timing: super::ProfileTiming,
    /// Nanoseconds per timestamp tick.
    pub timestamp_period: f32,
    pub pipelines: PipelineCache,
    pub counters: Counters,
    pending: Mutex<Vec<StatusCheck>>,
    next_buffer_id: AtomicU64,
    /// Mappable buffers for `read`, reused across calls.
    staging: Mutex<Vec<::wgpu::Buffer>>,
}

fn adapter_rank(t: ::wgpu::DeviceType) -> u8 {
    use ::wgpu::DeviceType::*;
    match t {
        DiscreteGpu => 0,
        IntegratedGpu => 1,
        VirtualGpu => 2,
        Other => 3,
        Cpu => 4,
    }
}

impl GpuContext {
    /// The device and its kernel choices. Variants left to the adapter (`variants`
    /// None) include cooperative matrices where offered; wgpu marks them experimental,
    /// so when the device refuses them or their shaders do not compile, the device is
    /// made again without them (asked for explicitly, such a failure is the error).
    pub(crate) fn new(
        backends: ::wgpu::Backends,
        max_binding_bytes: Option<u64>,
        kernels: Option<super::variants::KernelFamily>,
        variants: Option<super::variants::KernelVariants>,
        tiles: super::variants::TileSizes,
        profile_timing: Option<super::ProfileTiming>,
    ) -> Result<Arc<GpuContext>> {
        let create = |allow_coop| {
            Self::create(
                backends,
                max_binding_bytes,
                kernels,
                variants,
                tiles,
                profile_timing,
                allow_coop,
            )
        };
        let first = create(true);
        if variants.is_some() {
            return first;
        }
        match &first {
            Ok(ctx) if !ctx.variants.coop => first,
            Ok(ctx) => {
                match super::coop::check(ctx) {
                    Ok(()) => first,
                    Err(e) => {
                        log::warn!("wgpu: cooperative matrices unusable ({e}); using the kernels without them");
                        drop(first);
                        create(false)
                    }
                }
            }
            // Perhaps the device refused the experimental feature: once more without it.
            Err(_) => create(false).or(first),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        backends: ::wgpu::Backends,
        max_binding_bytes: Option<u64>,
        kernels: Option<super::variants::KernelFamily>,
        variants: Option<super::variants::KernelVariants>,
        tiles: super::variants::TileSizes,
        profile_timing: Option<super::ProfileTiming>,
        allow_coop: bool,
    ) -> Result<Arc<GpuContext>> {
        let mut desc = ::wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        // wgpu checks each indirect dispatch's counts with a dispatch of its own (and a
        // barrier) unless told not to: a prefill chunk's ~300 valid-row dispatches
        // would run twice as many. valid_rows.wgsl never writes more than the grid the
        // dispatch was compiled with, which is within the limits, so the check is
        // left out, except on D3D12 where `num_workgroups` needs it.
        // `WGPU_VALIDATION_INDIRECT_CALL=1` turns it back on.
        if !cfg!(windows) || !backends.contains(::wgpu::Backends::DX12) {
            desc.flags
                .remove(::wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL);
        }
        desc.flags = desc.flags.with_env();
        let instance = ::wgpu::Instance::new(desc);
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        // Prefer real GPUs; lavapipe (a CPU Vulkan driver) is the fallback CI runs on.
        adapters.sort_by_key(|a| adapter_rank(a.get_info().device_type));
        let adapter = adapters.into_iter().find(|a| a.get_downlevel_capabilities().flags.contains(::wgpu::DownlevelFlags::COMPUTE_SHADERS)).ok_or_else(|| {
            unavailable(format!(
                "no Vulkan/Metal/DX12 adapter with compute shaders found (backends {backends:?}): install mesa-vulkan-drivers (lavapipe) or a GPU driver"
            ))
        })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamp queries for the profiler, only those the adapter has (asking for a
        // missing feature fails device creation).
        let timestamps = adapter.features()
            & (::wgpu::Features::TIMESTAMP_QUERY
                | ::wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
                | ::wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
        // The optional instructions of the kernel variants, where the adapter has them
        // (and the caller did not switch them off).
        let offered = super::variants::KernelVariants {
            f16: adapter.features().contains(::wgpu::Features::SHADER_F16),
            // The GEMV puts a column's 4 to 16 threads inside one subgroup.
            subgroup: adapter.features().contains(::wgpu::Features::SUBGROUP)
                && info.subgroup_min_size >= 4
                && info.subgroup_min_size.is_power_of_two(),
            dot4: instance
                .wgsl_language_features()
                .contains(::wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct),
            coop: allow_coop && super::coop::offered(&adapter, &info, &limits),
        };
        let variants = match variants {
            Some(v) if v.and(offered) != v => {
                return Err(unavailable(format!(
                    "kernel variants `{}` asked for, but `{}` offers only `{}`",
                    v.name(),
                    info.name,
                    offered.name()
                )))
            }
            Some(v) => v,
            None => offered,
        };
        let mut features = timestamps;
        if variants.f16 {
            features |= ::wgpu::Features::SHADER_F16;
        }
        if variants.subgroup {
            features |= ::wgpu::Features::SUBGROUP;
        }
        let experimental = if variants.coop {
            features |=
                ::wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | ::wgpu::Features::SHADER_F16;
            // SAFETY: wgpu marks cooperative matrices experimental (its implementation
            // may still have bugs). Only matmul.wgsl's gemm_coop uses them, and the
            // conformance suite checks it on any adapter that offers them;
            // `NPURT_WGPU_VARIANTS` without `coop` keeps the device off the feature.
            unsafe { ::wgpu::ExperimentalFeatures::enabled() }
        } else {
            ::wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&::wgpu::DeviceDescriptor {
                label: Some("npurt"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: experimental,
                memory_hints: ::wgpu::MemoryHints::Performance,
                trace: ::wgpu::Trace::Off,
            }))
            .map_err(|e| unavailable(format!("adapter `{}` refused a device: {e}", info.name)))?;
        // Errors outside our error scopes must not panic the process (wgpu's default).
        device.on_uncaptured_error(Arc::new(|e: ::wgpu::Error| log::error!("wgpu: {e}")));
        device.set_device_lost_callback(|reason, msg| {
            log::error!("wgpu device lost ({reason:?}): {msg}")
        });
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding = max_binding_bytes.map(|m| m.min(binding)).unwrap_or(binding) & !3;
        log::info!(
            "wgpu adapter: {} ({:?}, {:?}), max storage binding {} bytes",
            info.name,
            info.backend,
            info.device_type,
            max_binding
        );
        // The tiled kernels need workgroup memory for their tiles (every GPU of the last
        // decade has 32 KiB); an adapter with less runs the lanes kernels, which use none.
        let tiles_fit =
            limits.max_compute_workgroup_storage_size >= super::ops::TILED_WORKGROUP_BYTES;
        let kernels = kernels.unwrap_or(
            if info.device_type == ::wgpu::DeviceType::Cpu || !tiles_fit {
                super::variants::KernelFamily::Lanes
            } else {
                super::variants::KernelFamily::Tiled
            },
        );
        if kernels == super::variants::KernelFamily::Tiled && !tiles_fit {
            return Err(unavailable(format!(
                "the tiled kernels need {} bytes of workgroup memory; `{}` has {}",
                super::ops::TILED_WORKGROUP_BYTES,
                info.name,
                limits.max_compute_workgroup_storage_size
            )));
        }
        use super::ProfileTiming as P;
        let best = if timestamps.contains(
            ::wgpu::Features::TIMESTAMP_QUERY | ::wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
        ) {
            P::InsidePasses
        } else if timestamps.contains(::wgpu::Features::TIMESTAMP_QUERY) {
            P::PassPerNode
        } else {
            P::HostPerNode
        };
        let profile_timing = match profile_timing {
            Some(P::InsidePasses) if best != P::InsidePasses => {
                return Err(unavailable(format!(
                    "profiling inside passes needs TIMESTAMP_QUERY_INSIDE_PASSES, which `{}` lacks",
                    info.name
                )))
            }
            Some(P::PassPerNode) if best == P::HostPerNode => {
                return Err(unavailable(format!(
                    "profiling with pass timestamps needs TIMESTAMP_QUERY, which `{}` lacks",
                    info.name
                )))
            }
            Some(t) => t,
            None => best,
        };
        let timestamp_period = queue.get_timestamp_period();
        log::info!("wgpu timestamp features {timestamps:?}, period {timestamp_period} ns");
        Ok(Arc::new(GpuContext {
            profile_timing,
            timestamp_period,
            kernels,
            variants,
            tiles,
            device,
            queue,
            info,
            limits,
            max_binding,
            pipelines: PipelineCache::default(),
            counters: Counters::default(),
            pending: Mutex::new(Vec::new()),
            next_buffer_id: AtomicU64::new(1),
            staging: Mutex::new(Vec::new()),
        }))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_buffer_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs `f` inside validation and out-of-memory error scopes; a captured error becomes
    /// `on_err(message, is_oom)`.
    pub(crate) fn scoped<T>(
        &self,
        f: impl FnOnce() -> T,
        on_err: impl FnOnce(String, bool) -> BackendError,
    ) -> Result<T> {
        let oom = self
            .device
            .push_error_scope(::wgpu::ErrorFilter::OutOfMemory);
        let validation = self
            .device
            .push_error_scope(::wgpu::ErrorFilter::Validation);
        let value = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        match (o, v) {
            (Some(e), _) => Err(on_err(e.to_string(), true)),
            (None, Some(e)) => Err(on_err(e.to_string(), false)),
            (None, None) => Ok(value),
        }
    }

    /// Creates a device buffer (counted: a run in steady state creates none).
    pub(crate) fn create_buffer(&self, desc: &::wgpu::BufferDescriptor) -> ::wgpu::Buffer {
        self.counters.buffer_created();
        self.device.create_buffer(desc)
    }

    /// Submits command buffers (counted: a run is one submission).
    pub(crate) fn submit(
        &self,
        cmds: impl IntoIterator<Item = ::wgpu::CommandBuffer>,
    ) -> ::wgpu::SubmissionIndex {
        self.counters.submitted();
        self.queue.submit(cmds)
    }

    pub(crate) fn wait_idle(&self) -> Result<()> {
        self.wait_for(None)
    }

    /// Waits for submission `index` (`None`: the latest). Counted: a run never waits.
    pub(crate) fn wait_for(&self, index: Option<::wgpu::SubmissionIndex>) -> Result<()> {
        self.counters.waited();
        self.device
            .poll(::wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            })
            .map(|_| ())
            .map_err(|e| BackendError::Execution {
                node: "<queue>".into(),
                reason: format!("waiting for the GPU failed: {e}"),
            })
    }

    pub(crate) fn add_check(&self, check: StatusCheck) {
        if let Ok(mut p) = self.pending.lock() {
            p.push(check);
        }
    }

    /// Waits for the whole queue, then reads the pending status words `select` picks
    /// (`Backend::synchronize`).
    pub(crate) fn synchronize_checks(&self, select: impl Fn(&StatusCheck) -> bool) -> Result<()> {
        self.wait_idle()?;
        self.resolve_checks(select)
    }

    /// Reads the pending status words `select` picks, waiting only for the submissions
    /// that write them (nothing when none is pending). Returns the first failure as an
    /// `Execution` error naming the node.
    pub(crate) fn resolve_checks(&self, select: impl Fn(&StatusCheck) -> bool) -> Result<()> {
        self.resolve_checks_after(None, select)
    }

    /// Like `resolve_checks`, but first waits for submission `index` (a handle's run,
    /// whose check someone else may have resolved already).
    pub(crate) fn resolve_checks_after(
        &self,
        index: Option<::wgpu::SubmissionIndex>,
        select: impl Fn(&StatusCheck) -> bool,
    ) -> Result<()> {
        if let Some(index) = index {
            self.wait_for(Some(index))?;
        }
        let checks: Vec<StatusCheck> = match self.pending.lock() {
            Ok(mut p) => {
                let (mine, rest) = std::mem::take(&mut *p).into_iter().partition(|c| select(c));
                *p = rest;
                mine
            }
            Err(_) => {
                return Err(BackendError::Execution {
                    node: "<queue>".into(),
                    reason: "status list poisoned".into(),
                })
            }
        };
        if checks.is_empty() {
            return Ok(());
        }
        // Waiting for each check's own submission (usually one) also fires its map
        // callback; later submissions, another session's included, are not waited for.
        for c in &checks {
            c.readback.map_async(::wgpu::MapMode::Read, .., |_| {});
        }
        for c in &checks {
            self.wait_for(Some(c.index.clone()))?;
        }
        self.counters.status_read(8 * checks.len() as u64);
        let mut first_error = None;
        for c in checks {
            let words = match c.readback.get_mapped_range(..) {
                Ok(view) => {
                    let b: &[u8] = &view;
                    [
                        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                    ]
                }
                Err(e) => {
                    first_error.get_or_insert(BackendError::Execution {
                        node: c.label.to_string(),
                        reason: format!("reading kernel status: {e}"),
                    });
                    [0, u32::MAX]
                }
            };
            c.readback.unmap();
            c.in_flight.store(false, Ordering::Release);
            if words[0] != 0 && first_error.is_none() {
                let node = c
                    .node_names
                    .get(words[1] as usize)
                    .cloned()
                    .unwrap_or_else(|| c.label.to_string());
                first_error = Some(BackendError::Execution {
                    node,
                    reason: describe_status(words[0]),
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Copies `size` bytes at `offset` of `src` to the host through a reused staging
    /// buffer.
    pub(crate) fn download(&self, src: &::wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let size4 = (size + 3) & !3;
        let staging = {
            let mut pool = self
                .staging
                .lock()
                .map_err(|_| BackendError::Binding("staging pool poisoned".into()))?;
            match pool.iter().position(|b| b.size() >= size4) {
                Some(i) => pool.swap_remove(i),
                None => self.scoped(
                    || {
                        self.create_buffer(&::wgpu::BufferDescriptor {
                            label: Some("npurt staging"),
                            size: size4.max(4),
                            usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        })
                    },
                    |_, _| BackendError::OutOfMemory {
                        what: "staging buffer".into(),
                        bytes: size4 as usize,
                    },
                )?,
            }
        };
        let mut enc = self
            .device
            .create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some("npurt read"),
            });
        enc.copy_buffer_to_buffer(src, offset, &staging, 0, size4);
        let index = self.submit([enc.finish()]);
        staging.map_async(::wgpu::MapMode::Read, ..size4, |_| {});
        self.wait_for(Some(index))?;
        self.counters.output_read(size);
        let data = {
            let view = staging
                .get_mapped_range(..size4)
                .map_err(|e| BackendError::Binding(format!("mapping a staging buffer: {e}")))?;
            view[..size as usize].to_vec()
        };
        staging.unmap();
        if let Ok(mut pool) = self.staging.lock() {
            // Keep a few; larger ones first so big reads find a home.
            pool.push(staging);
            pool.sort_by_key(|b| b.size());
            if pool.len() > 4 {
                pool.remove(0);
            }
        }
        Ok(data)
    }
}

/// The handle `WgpuExecutable::submit` returns: waits for its submission, then checks
/// that run's kernel status word. It holds the bound buffers until then (the scratch's
/// GPU buffers are reference-counted by wgpu itself).
pub(crate) struct GpuCompletion {
    ctx: Arc<GpuContext>,
    check: u64,
    index: ::wgpu::SubmissionIndex,
    done: Arc<AtomicBool>,
    _bindings: crate::Bindings,
}

impl GpuCompletion {
    pub(crate) fn new(
        ctx: Arc<GpuContext>,
        check: u64,
        index: ::wgpu::SubmissionIndex,
        bindings: crate::Bindings,
    ) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        // Fires on a later poll once everything submitted so far has finished.
        ctx.queue
            .on_submitted_work_done(move || flag.store(true, Ordering::Release));
        GpuCompletion {
            ctx,
            check,
            index,
            done,
            _bindings: bindings,
        }
    }
}

impl crate::Completion for GpuCompletion {
    fn is_complete(&self) -> bool {
        let _ = self.ctx.device.poll(::wgpu::PollType::Poll);
        self.done.load(Ordering::Acquire)
    }

    fn wait(self: Box<Self>) -> Result<crate::Finished> {
        let check = self.check;
        self.ctx
            .resolve_checks_after(Some(self.index.clone()), |c| c.id == check)?;
        Ok(crate::Finished { busy: None })
    }
}

fn describe_status(flags: u32) -> String {
    let mut what = Vec::new();
    if flags & 1 != 0 {
        what.push("a token id outside the embedding table");
    }
    if flags & 2 != 0 {
        what.push("run-time positions (pos/n_valid) outside the chunk or the KV cache");
    }
    if flags & 4 != 0 {
        what.push("a selected row outside the input");
    }
    format!(
        "the kernel rejected {} (that work was skipped)",
        what.join(" and ")
    )
}
