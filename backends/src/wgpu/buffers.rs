//! Device buffers. Activations and states are one storage buffer each; weights are one
//! buffer per part (see `weights.rs`) so no binding exceeds the adapter's limit. Every
//! buffer has a process-unique id: bind groups are cached by the ids they bind.

use super::device::GpuContext;
use super::weights::{self, PartLayout};
use crate::{BackendError, BufferUsage, DeviceBuffer, Result};
use npurt_graph::TensorFact;
use std::any::Any;
use std::sync::Arc;

pub(crate) struct Part {
    pub buffer: ::wgpu::Buffer,
    pub layout: PartLayout,
}

pub struct WgpuBuffer {
    pub(crate) fact: TensorFact,
    pub(crate) usage: BufferUsage,
    pub(crate) id: u64,
    pub(crate) parts: Vec<Part>,
    /// Status check of the last run that wrote this buffer as an output (0: none), so
    /// reading it reports that run's kernel errors.
    pub(crate) last_run: std::sync::atomic::AtomicU64,
}

impl WgpuBuffer {
    pub(crate) fn downcast(b: &dyn DeviceBuffer) -> Result<&WgpuBuffer> {
        b.as_any().downcast_ref::<WgpuBuffer>().ok_or_else(|| {
            BackendError::Binding(format!(
                "buffer {} does not belong to the wgpu backend",
                b.fact()
            ))
        })
    }

    /// The single buffer of an activation or state value (or a one-part weight).
    pub(crate) fn whole(&self) -> Result<&::wgpu::Buffer> {
        match self.parts.as_slice() {
            [p] => Ok(&p.buffer),
            _ => Err(BackendError::Binding(format!(
                "{} buffer is split into {} parts and cannot be bound whole",
                self.fact,
                self.parts.len()
            ))),
        }
    }
}

impl DeviceBuffer for WgpuBuffer {
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

const STORAGE_USAGE: ::wgpu::BufferUsages = ::wgpu::BufferUsages::STORAGE
    .union(::wgpu::BufferUsages::COPY_SRC)
    .union(::wgpu::BufferUsages::COPY_DST);

/// A zero-filled storage buffer of `bytes`, rounded up to 16 so shaders may view any
/// buffer as `array<vec4<..>>`.
pub(crate) fn create_storage(ctx: &GpuContext, label: &str, bytes: u64) -> Result<::wgpu::Buffer> {
    let size = ((bytes + 15) & !15).max(16);
    if size > ctx.limits.max_buffer_size {
        return Err(BackendError::OutOfMemory {
            what: format!(
                "{label} (adapter max buffer size {})",
                ctx.limits.max_buffer_size
            ),
            bytes: size as usize,
        });
    }
    ctx.scoped(
        || {
            ctx.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: STORAGE_USAGE,
                mapped_at_creation: false,
            })
        },
        |msg, _| BackendError::OutOfMemory {
            what: format!("{label}: {msg}"),
            bytes: size as usize,
        },
    )
}

/// A storage buffer holding `data` (padded to 16 bytes), written through a mapping
/// at creation so no staging copy lingers in the queue.
pub(crate) fn create_init(ctx: &GpuContext, label: &str, data: &[u8]) -> Result<::wgpu::Buffer> {
    let size = ((data.len() as u64 + 15) & !15).max(16);
    let buffer = ctx.scoped(
        || {
            ctx.create_buffer(&::wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: STORAGE_USAGE,
                mapped_at_creation: true,
            })
        },
        |msg, _| BackendError::OutOfMemory {
            what: format!("{label}: {msg}"),
            bytes: size as usize,
        },
    )?;
    {
        let mut view = buffer
            .get_mapped_range_mut(..)
            .map_err(|e| BackendError::Binding(format!("mapping {label}: {e}")))?;
        view.slice(..data.len()).copy_from_slice(data);
    }
    buffer.unmap();
    Ok(buffer)
}

/// Allocates a zero-filled buffer for `fact`.
pub(crate) fn alloc(ctx: &GpuContext, fact: &TensorFact, usage: BufferUsage) -> Result<WgpuBuffer> {
    let bytes = fact.bytes().ok_or_else(|| BackendError::OutOfMemory {
        what: fact.to_string(),
        bytes: usize::MAX,
    })? as u64;
    let label = format!("{fact}");
    let parts = if usage == BufferUsage::Weights {
        let layouts = weights::plan(fact, ctx.max_binding).map_err(BackendError::Binding)?;
        layouts
            .into_iter()
            .map(|layout| {
                Ok(Part {
                    buffer: create_storage(ctx, &label, layout.bytes)?,
                    layout,
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let rows = fact.rows().max(1);
        vec![Part {
            buffer: create_storage(ctx, &label, bytes)?,
            layout: PartLayout {
                rows: 0..rows,
                bytes: (bytes + 3) & !3,
                scale_offset_words: 0,
            },
        }]
    };
    Ok(WgpuBuffer {
        fact: fact.clone(),
        usage,
        id: ctx.next_id(),
        parts,
        last_run: Default::default(),
    })
}

/// Uploads a weight, repacked and split into parts.
pub(crate) fn upload_weight(
    ctx: &GpuContext,
    name: &str,
    t: &npurt_kernels::HostTensor,
) -> Result<WgpuBuffer> {
    let fact = &t.fact;
    let bad = |reason: String| BackendError::Binding(format!("weight `{name}`: {reason}"));
    let src = weights::host_bytes(t);
    if Some(src.len()) != fact.bytes() {
        return Err(bad(format!("{} bytes of data for {fact}", src.len())));
    }
    let layouts = weights::plan(fact, ctx.max_binding).map_err(bad)?;
    let (cols, rows) = (fact.last_dim(), fact.rows().max(1));
    let mut parts = Vec::with_capacity(layouts.len());
    for layout in layouts {
        let packed = weights::pack(fact.dtype, cols, rows, &src, &layout);
        parts.push(Part {
            buffer: create_init(ctx, name, &packed)?,
            layout,
        });
    }
    Ok(WgpuBuffer {
        fact: fact.clone(),
        usage: BufferUsage::Weights,
        id: ctx.next_id(),
        parts,
        last_run: Default::default(),
    })
}

pub(crate) fn into_arc(b: WgpuBuffer) -> Arc<dyn DeviceBuffer> {
    Arc::new(b)
}
