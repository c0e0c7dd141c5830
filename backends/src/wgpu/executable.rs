//! A compiled graph on the GPU: the lowered dispatches with their pipelines and
//! parameters, the memory plan, and per-session scratch. `run` records the whole graph
//! into one command encoder (one compute pass), copies the outputs into their bound
//! buffers and submits once. A prefill chunk's row-wise dispatches take their
//! workgroup counts from its `n_valid` on the GPU (`RowGrids`). Bind groups are built once per scratch and set of bound
//! buffers, and reused by every later run that binds the same buffers. A run never
//! waits on the host: its kernel status words go to a readback of its own
//! (`STATUS_RING` per scratch), checked later by `synchronize`, `read` or a handle.

use super::buffers::{self, WgpuBuffer};
use super::device::{GpuCompletion, GpuContext, StatusCheck};
use super::ops::{self, BindRef, LowerCtx, RowGrid};
use super::pipelines::{self, PipelineKey};
use super::shader_args::{self as args, PARAMS_BINDING};
use super::ProfileTiming;
use crate::profile::ms;
use crate::{
    BackendError, Bindings, BufferUsage, Completion, DeviceBuffer, Executable, HostTimes, NodeTime,
    Profile, Result, Scratch, TimeSource,
};
use npurt_graph::plan::{self, SlotPlan, Storage};
use npurt_graph::rows::ValidRows;
use npurt_graph::{Graph, NodeId, Op};
use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Bind-group sets kept per scratch (one per distinct set of bound buffers).
const BIND_CACHE_ENTRIES: usize = 4;

/// A binding resolved against the memory plan.
#[derive(Clone, Copy, Debug)]
enum Resolved {
    Params {
        offset: u64,
        size: u64,
    },
    Bound(usize),
    WeightPart(NodeId, usize),
    Slot(usize),
    Const(usize),
    Status,
    /// The scratch's valid-row grids (`RowGrids`).
    Grids,
}

struct Step {
    node: NodeId,
    pipeline: Arc<::wgpu::ComputePipeline>,
    bindings: Vec<(u32, Resolved)>,
    groups: [u32; 3],
    /// Where in the scratch's valid-row grids this dispatch reads its workgroup counts
    /// (`None`: `groups`, the whole grid).
    indirect: Option<u64>,
}

/// A prefill chunk's valid rows on the GPU (`npurt_graph::rows`): the first dispatch
/// of each run (valid_rows.wgsl) writes, for every dispatch of a row-wise node, the
/// workgroups that cover the chunk's first `n_valid` rows into the scratch's grid
/// buffer, and those dispatches read their counts from it. A 16-row chunk of a
/// 128-row graph then costs its 16 rows, and the host never reads `n_valid`.
struct RowGrids {
    pipeline: Arc<::wgpu::ComputePipeline>,
    bindings: Vec<(u32, Resolved)>,
    /// Entries in the table: dispatches sized by `n_valid`.
    count: u32,
}

/// Bytes of one indirect dispatch's workgroup counts (x, y, z).
const INDIRECT_BYTES: u64 = 12;

pub struct WgpuExecutable {
    ctx: Arc<GpuContext>,
    id: u64,
    graph: Graph,
    label: Arc<str>,
    node_names: Arc<Vec<String>>,
    plan: SlotPlan,
    steps: Vec<Step>,
    /// Every dispatch's uniform parameters, each at an aligned offset.
    params: ::wgpu::Buffer,
    consts: Vec<::wgpu::Buffer>,
    weights: Vec<Option<Arc<dyn DeviceBuffer>>>,
    /// Bound nodes written by the graph (KV caches).
    written: Vec<bool>,
    /// A chunk graph's valid-row grids (`None`: every dispatch runs its whole grid).
    row_grids: Option<RowGrids>,
}

/// Runs one scratch may have in flight before a submit waits for the oldest one's
/// status words. Each has a readback of its own, so a run never waits for the run
/// before it (a session's next chunk is recorded and submitted while the GPU still
/// runs the last one).
const STATUS_RING: usize = 4;

/// The readback of one run's kernel status words.
struct StatusSlot {
    readback: ::wgpu::Buffer,
    /// Set while the run's check is pending; cleared by whoever resolves it.
    in_flight: Arc<AtomicBool>,
    /// That check's id.
    check: u64,
}

pub struct WgpuScratch {
    exec_id: u64,
    slots: Vec<::wgpu::Buffer>,
    status: ::wgpu::Buffer,
    ring: Vec<StatusSlot>,
    /// The ring slot the next run copies its status words into.
    next: usize,
    /// The valid-row grids' workgroup counts (`RowGrids`), written by each run.
    grids: Option<::wgpu::Buffer>,
    bind_cache: Vec<(Vec<u64>, BindSet)>,
}

/// A run's bind groups for one set of bound buffers: one per step, and the valid-row
/// grids' own.
struct BindSet {
    steps: Vec<::wgpu::BindGroup>,
    grids: Option<::wgpu::BindGroup>,
}

impl Scratch for WgpuScratch {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

static NEXT_EXEC: AtomicU64 = AtomicU64::new(1);

fn compile_err(graph: &Graph, id: NodeId, reason: impl Into<String>) -> BackendError {
    BackendError::Unsupported {
        backend: "wgpu".into(),
        node: graph.node(id).name.clone(),
        reason: reason.into(),
    }
}

impl WgpuExecutable {
    /// `padded_rows`: run a prefill chunk's padding rows too (`WgpuOptions::padded_rows`).
    pub(crate) fn new(
        ctx: Arc<GpuContext>,
        graph: &Graph,
        weights: &[(NodeId, Arc<dyn DeviceBuffer>)],
        padded_rows: bool,
    ) -> Result<Self> {
        let n = graph.nodes.len();
        let mut w: Vec<Option<Arc<dyn DeviceBuffer>>> = vec![None; n];
        for (id, node) in graph.nodes.iter().enumerate() {
            if let Op::Weight { name, .. } = &node.op {
                let (_, b) = weights.iter().find(|(wid, _)| wid.0 == id).ok_or_else(|| {
                    BackendError::Binding(format!("weight `{name}` was not prepared"))
                })?;
                if b.fact() != &node.fact {
                    return Err(BackendError::Binding(format!(
                        "weight `{name}` is {}, the graph wants {}",
                        b.fact(),
                        node.fact
                    )));
                }
                WgpuBuffer::downcast(b.as_ref())?;
                w[id] = Some(b.clone());
            }
        }

        let views = ops::in_place_nodes(graph);
        let kv_pairs = ops::kv_write_pairs(graph, &views);
        let cx = LowerCtx {
            graph,
            kernels: ctx.kernels,
            variants: ctx.variants,
            views: &views,
            kv_pairs: &kv_pairs,
            subgroup_min: ctx.info.subgroup_min_size,
            tiles: ctx.tiles,
            cpu_driver: ctx.info.device_type == ::wgpu::DeviceType::Cpu,
            weights: &w,
        };
        let mut lowered = Vec::with_capacity(n);
        for id in graph.ids() {
            lowered.push(ops::lower(&cx, id).map_err(|r| compile_err(graph, id, r))?);
        }
        let temps: Vec<Vec<u64>> = lowered.iter().map(|l| l.temps.clone()).collect();
        let plan = plan::plan_slots(graph, &temps, &views);
        for (s, &bytes) in plan.slot_bytes.iter().enumerate() {
            if bytes > ctx.max_binding {
                return Err(BackendError::OutOfMemory {
                    what: format!(
                        "scratch slot {s} (over the adapter's {} byte binding limit)",
                        ctx.max_binding
                    ),
                    bytes: bytes as usize,
                });
            }
        }

        // KV writes must land in a bound state, computed rows must not be the cache.
        let mut written = vec![false; plan.bound.len()];
        for id in graph.ids() {
            if let Op::KvWrite = graph.node(id).op {
                let cache = plan.storage[plan::root(graph, id).0];
                match cache {
                    Storage::Bound(b)
                        if matches!(graph.node(plan.bound[b]).op, Op::State { .. }) =>
                    {
                        written[b] = true
                    }
                    _ => return Err(compile_err(graph, id, "kv_write must write into a state")),
                }
                if plan.storage[plan::root(graph, graph.node(id).inputs[1]).0] == cache {
                    return Err(compile_err(graph, id, "kv_write rows alias the cache"));
                }
            }
        }

        // Parameters: one aligned slot per dispatch, uploaded once.
        let align = u64::from(ctx.limits.min_uniform_buffer_offset_alignment).max(16);
        let mut params_bytes: Vec<u8> = Vec::new();
        let mut push_params = |bytes: &[u8]| {
            let offset = (params_bytes.len() as u64).div_ceil(align) * align;
            params_bytes.resize(offset as usize, 0);
            // A uniform binding's size is a multiple of 16 bytes.
            let size = (bytes.len() as u64).div_ceil(16) * 16;
            params_bytes.extend(bytes);
            params_bytes.resize(offset as usize + size as usize, 0);
            Resolved::Params { offset, size }
        };
        let resolve_value = |v: NodeId| match plan.storage[plan::root(graph, v).0] {
            Storage::Bound(k) => Resolved::Bound(k),
            Storage::Slot(s) => Resolved::Slot(s),
            Storage::Weight(wid) => Resolved::WeightPart(wid, 0),
        };
        let valid_rows = if padded_rows {
            None
        } else {
            ValidRows::of(graph)
        };
        let mut grid_table: Vec<args::valid_rows::GridEntry> = Vec::new();
        let mut consts = Vec::new();
        let mut steps = Vec::new();
        for (i, l) in lowered.into_iter().enumerate() {
            let id = NodeId(i);
            let const_base = consts.len();
            for (c, data) in l.consts.iter().enumerate() {
                consts.push(buffers::create_init(
                    &ctx,
                    &format!("{} const {c}", graph.node(id).name),
                    &pad4(data),
                )?);
            }
            for d in l.dispatches {
                let params_at = push_params(&d.params);
                let pipeline = pipelines::get(&ctx, &d.key)?;
                let bindings = d
                    .bindings
                    .iter()
                    .map(|&(b, r)| {
                        let res = match r {
                            BindRef::Params => params_at,
                            BindRef::Status => Resolved::Status,
                            BindRef::Const(c) => Resolved::Const(const_base + c),
                            BindRef::Temp(t) => Resolved::Slot(plan.temp_slots[i][t]),
                            BindRef::WeightPart(wid, p) => Resolved::WeightPart(wid, p),
                            BindRef::Value(v) => resolve_value(v),
                        };
                        (b, res)
                    })
                    .collect();
                let grid = valid_rows
                    .as_ref()
                    .filter(|v| v.limits(graph, id))
                    .and_then(|v| grid_entry(d.rows, d.groups, v.rows));
                let indirect = grid.map(|e| {
                    grid_table.push(e);
                    (grid_table.len() as u64 - 1) * INDIRECT_BYTES
                });
                steps.push(Step {
                    node: id,
                    pipeline,
                    bindings,
                    groups: d.groups,
                    indirect,
                });
            }
        }
        let row_grids = match &valid_rows {
            Some(v) if !grid_table.is_empty() => {
                let params = args::valid_rows::Params {
                    grids: grid_table.len() as u32,
                    rows: v.rows as u32,
                };
                let params_at = push_params(bytemuck::bytes_of(&params));
                consts.push(buffers::create_init(
                    &ctx,
                    "valid-row grids",
                    bytemuck::cast_slice(&grid_table),
                )?);
                let table = Resolved::Const(consts.len() - 1);
                let b = args::valid_rows::NUMBERS;
                Some(RowGrids {
                    pipeline: pipelines::get(
                        &ctx,
                        &PipelineKey::new("valid_rows.wgsl", "valid_row_grids", &[]),
                    )?,
                    bindings: vec![
                        (PARAMS_BINDING, params_at),
                        (b.n_valid_in, resolve_value(v.n_valid)),
                        (b.grids, table),
                        (b.out, Resolved::Grids),
                    ],
                    count: grid_table.len() as u32,
                })
            }
            _ => None,
        };
        for s in &steps {
            for &(_, r) in &s.bindings {
                if let Resolved::WeightPart(wid, p) = r {
                    let parts = w[wid.0]
                        .as_ref()
                        .and_then(|b| WgpuBuffer::downcast(b.as_ref()).ok())
                        .map(|b| b.parts.len())
                        .unwrap_or(0);
                    if p >= parts {
                        return Err(compile_err(
                            graph,
                            s.node,
                            format!(
                                "weight `{}` is split into {parts} parts; this op needs it whole",
                                graph.node(wid).name
                            ),
                        ));
                    }
                }
            }
        }
        let params = create_uniform(&ctx, &pad4(&params_bytes))?;
        let id = NEXT_EXEC.fetch_add(1, Ordering::Relaxed);
        let label: Arc<str> =
            format!("wgpu graph #{id} ({} nodes, {} dispatches)", n, steps.len()).into();
        let exec = WgpuExecutable {
            ctx,
            id,
            graph: graph.clone(),
            label,
            node_names: Arc::new(graph.nodes.iter().map(|n| n.name.clone()).collect()),
            plan,
            steps,
            params,
            consts,
            weights: w,
            written,
            row_grids,
        };
        log::debug!(
            "{}: {} scratch slots, {} bytes; {} dispatches sized by n_valid",
            exec.label,
            exec.plan.slot_bytes.len(),
            exec.plan.slot_bytes.iter().sum::<u64>(),
            exec.valid_row_dispatches()
        );
        Ok(exec)
    }

    /// Dispatches whose grids follow a chunk's valid rows (0 where every row runs).
    pub fn valid_row_dispatches(&self) -> usize {
        self.steps.iter().filter(|s| s.indirect.is_some()).count()
    }

    /// Dispatches recorded per run.
    pub fn dispatch_count(&self) -> usize {
        self.steps.len()
    }

    /// Scratch slots (buffers) one session of this executable allocates.
    pub fn scratch_slots(&self) -> usize {
        self.plan.slot_bytes.len()
    }

    fn bound_buffers<'a>(&self, bindings: &'a Bindings) -> Result<Vec<&'a WgpuBuffer>> {
        let g = &self.graph;
        let mut out: Vec<&WgpuBuffer> = Vec::with_capacity(self.plan.bound.len());
        for (k, &id) in self.plan.bound.iter().enumerate() {
            let name = &g.node(id).name;
            let b = bindings
                .source(id)
                .ok_or_else(|| BackendError::Binding(format!("`{name}` is not bound")))?;
            if b.fact() != g.fact(id) {
                return Err(BackendError::Binding(format!(
                    "`{name}` bound to a {} buffer, needs {}",
                    b.fact(),
                    g.fact(id)
                )));
            }
            let wb = WgpuBuffer::downcast(b.as_ref())?;
            wb.whole()?;
            if self.written[k] && wb.usage == BufferUsage::Weights {
                return Err(BackendError::Binding(format!(
                    "state `{name}` is bound to a weights buffer"
                )));
            }
            if out.iter().any(|o| o.id == wb.id) {
                return Err(BackendError::Binding(format!(
                    "`{name}` is bound to a buffer already bound to another source"
                )));
            }
            out.push(wb);
        }
        Ok(out)
    }

    fn bind_groups(&self, scratch: &WgpuScratch, bound: &[&WgpuBuffer]) -> Result<BindSet> {
        let steps = self
            .steps
            .iter()
            .map(|step| {
                let node = &self.graph.node(step.node).name;
                self.bind_group(scratch, bound, &step.pipeline, &step.bindings, node)
            })
            .collect::<Result<Vec<_>>>()?;
        let grids = match &self.row_grids {
            Some(g) => Some(self.bind_group(
                scratch,
                bound,
                &g.pipeline,
                &g.bindings,
                "valid-row grids",
            )?),
            None => None,
        };
        Ok(BindSet { steps, grids })
    }

    /// The bind group of one dispatch's resolved bindings (`what` names it in errors).
    fn bind_group(
        &self,
        scratch: &WgpuScratch,
        bound: &[&WgpuBuffer],
        pipeline: &::wgpu::ComputePipeline,
        bindings: &[(u32, Resolved)],
        what: &str,
    ) -> Result<::wgpu::BindGroup> {
        let weight_part = |wid: NodeId, p: usize| -> Result<&::wgpu::Buffer> {
            let b = self.weights[wid.0]
                .as_ref()
                .ok_or_else(|| BackendError::Binding("weight missing".into()))?;
            let wb = WgpuBuffer::downcast(b.as_ref())?;
            wb.parts
                .get(p)
                .map(|part| &part.buffer)
                .ok_or_else(|| BackendError::Binding("weight part missing".into()))
        };
        let mut entries = Vec::with_capacity(bindings.len());
        for &(binding, r) in bindings {
            let (buffer, offset, size) = match r {
                Resolved::Params { offset, size } => {
                    (&self.params, offset, std::num::NonZeroU64::new(size))
                }
                Resolved::Bound(k) => (bound[k].whole()?, 0, None),
                Resolved::WeightPart(wid, p) => (weight_part(wid, p)?, 0, None),
                Resolved::Slot(s) => (&scratch.slots[s], 0, None),
                Resolved::Const(c) => (&self.consts[c], 0, None),
                Resolved::Status => (&scratch.status, 0, None),
                Resolved::Grids => (
                    scratch
                        .grids
                        .as_ref()
                        .ok_or_else(|| BackendError::Binding("no valid-row grids".into()))?,
                    0,
                    None,
                ),
            };
            entries.push(::wgpu::BindGroupEntry {
                binding,
                resource: ::wgpu::BindingResource::Buffer(::wgpu::BufferBinding {
                    buffer,
                    offset,
                    size,
                }),
            });
        }
        let layout = pipeline.get_bind_group_layout(0);
        self.ctx.counters.bind_group_created();
        self.ctx.scoped(
            || {
                self.ctx
                    .device
                    .create_bind_group(&::wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &layout,
                        entries: &entries,
                    })
            },
            |msg, _| BackendError::Execution {
                node: what.to_string(),
                reason: format!("bind group: {msg}"),
            },
        )
    }

    /// Records the valid-row grids' dispatch (before every step that reads them).
    fn record_grids(&self, pass: &mut ::wgpu::ComputePass, set: &BindSet) {
        if let (Some(g), Some(bg)) = (&self.row_grids, &set.grids) {
            pass.set_pipeline(&g.pipeline);
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(g.count.div_ceil(64), 1, 1);
        }
    }

    /// Records step `i`: its whole grid, or the one the valid-row grids hold for it.
    fn record_step(
        &self,
        pass: &mut ::wgpu::ComputePass,
        scratch: &WgpuScratch,
        set: &BindSet,
        i: usize,
    ) {
        let step = &self.steps[i];
        pass.set_pipeline(&step.pipeline);
        pass.set_bind_group(0, &set.steps[i], &[]);
        match (step.indirect, &scratch.grids) {
            (Some(offset), Some(grids)) => pass.dispatch_workgroups_indirect(grids, offset),
            _ => pass.dispatch_workgroups(step.groups[0], step.groups[1], step.groups[2]),
        }
    }

    fn storage_buffer<'a>(
        &'a self,
        scratch: &'a WgpuScratch,
        bound: &[&'a WgpuBuffer],
        id: NodeId,
    ) -> Result<&'a ::wgpu::Buffer> {
        match self.plan.storage[plan::root(&self.graph, id).0] {
            Storage::Bound(k) => bound[k].whole(),
            Storage::Slot(s) => Ok(&scratch.slots[s]),
            Storage::Weight(wid) => {
                let b = self.weights[wid.0]
                    .as_ref()
                    .ok_or_else(|| BackendError::Binding("weight missing".into()))?;
                let wb = WgpuBuffer::downcast(b.as_ref())?;
                if wb.fact.dtype.is_quantized() {
                    return Err(BackendError::Binding(format!(
                        "cannot output the repacked weight `{}`",
                        self.graph.node(wid).name
                    )));
                }
                wb.whole()
            }
        }
    }
}

/// The valid-row table's entry for a dispatch of a token-row node in a chunk of
/// `rows` rows (`None`: its grid does not follow the rows one by one, so it runs
/// whole).
fn grid_entry(grid: RowGrid, groups: [u32; 3], rows: usize) -> Option<args::valid_rows::GridEntry> {
    use args::valid_rows::{AXIS, FLAT};
    let (kind, a, b) = match grid {
        RowGrid::Whole => return None,
        RowGrid::Flat { threads, wg } => {
            let threads = threads as usize;
            if rows == 0 || !threads.is_multiple_of(rows) {
                return None;
            }
            (FLAT, (threads / rows) as u32, wg)
        }
        RowGrid::Axis { axis, rows: per } => {
            // The grid along `axis` must be the chunk's blocks of rows, no more.
            let dim = *groups.get(axis as usize)?;
            if per == 0 || dim as usize != rows.div_ceil(per as usize) {
                return None;
            }
            (AXIS, axis, per)
        }
    };
    Some(args::valid_rows::GridEntry {
        kind,
        a,
        b,
        _pad: 0,
        whole: [groups[0], groups[1], groups[2], 0],
    })
}

fn pad4(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(4).max(1) * 4, 0);
    v
}

fn create_uniform(ctx: &GpuContext, data: &[u8]) -> Result<::wgpu::Buffer> {
    let buffer = ctx.scoped(
        || {
            ctx.create_buffer(&::wgpu::BufferDescriptor {
                label: Some("npurt params"),
                size: data.len() as u64,
                usage: ::wgpu::BufferUsages::UNIFORM | ::wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: true,
            })
        },
        |msg, _| BackendError::OutOfMemory {
            what: format!("params: {msg}"),
            bytes: data.len(),
        },
    )?;
    buffer
        .get_mapped_range_mut(..)
        .map_err(|e| BackendError::Binding(format!("mapping params: {e}")))?
        .copy_from_slice(data);
    buffer.unmap();
    Ok(buffer)
}

impl Executable for WgpuExecutable {
    fn new_scratch(&self) -> Result<Box<dyn Scratch>> {
        let ctx = &self.ctx;
        let slots = self
            .plan
            .slot_bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| buffers::create_storage(ctx, &format!("scratch slot {i}"), b))
            .collect::<Result<Vec<_>>>()?;
        let status = buffers::create_storage(ctx, "kernel status", 8)?;
        let ring = (0..STATUS_RING)
            .map(|_| {
                let readback = ctx.scoped(
                    || {
                        ctx.create_buffer(&::wgpu::BufferDescriptor {
                            label: Some("kernel status readback"),
                            size: 8,
                            usage: ::wgpu::BufferUsages::MAP_READ | ::wgpu::BufferUsages::COPY_DST,
                            mapped_at_creation: false,
                        })
                    },
                    |msg, _| BackendError::OutOfMemory {
                        what: format!("status readback: {msg}"),
                        bytes: 8,
                    },
                )?;
                Ok(StatusSlot {
                    readback,
                    in_flight: Arc::new(AtomicBool::new(false)),
                    check: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let grids = match &self.row_grids {
            Some(g) => Some(ctx.scoped(
                || {
                    ctx.create_buffer(&::wgpu::BufferDescriptor {
                        label: Some("valid-row grids"),
                        size: u64::from(g.count) * INDIRECT_BYTES,
                        usage: ::wgpu::BufferUsages::STORAGE | ::wgpu::BufferUsages::INDIRECT,
                        mapped_at_creation: false,
                    })
                },
                |msg, _| BackendError::OutOfMemory {
                    what: format!("valid-row grids: {msg}"),
                    bytes: (u64::from(g.count) * INDIRECT_BYTES) as usize,
                },
            )?),
            None => None,
        };
        Ok(Box::new(WgpuScratch {
            exec_id: self.id,
            slots,
            status,
            ring,
            next: 0,
            grids,
            bind_cache: Vec::new(),
        }))
    }

    fn run(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<()> {
        self.enqueue(bindings, scratch, None).map(|_| ())
    }

    /// An ordinary run timed on the host (recording, submit, waiting, reading the
    /// outputs back), then one run timed per node as the device's features allow
    /// ([`super::ProfileTiming`]).
    fn profile(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<Profile> {
        let ctx = &self.ctx;
        let mut host = HostTimes::default();
        let t0 = Instant::now();
        let (check, index) = self.enqueue(bindings, scratch, Some(&mut host))?;
        let t = Instant::now();
        ctx.resolve_checks_after(Some(index), |c| c.id == check)?;
        host.wait_ms = ms(t.elapsed());
        let t = Instant::now();
        for (name, id) in &self.graph.outputs {
            let b = bindings
                .output(name)
                .ok_or_else(|| BackendError::Binding(format!("output `{name}` is not bound")))?;
            let bytes = self.graph.fact(*id).bytes().unwrap_or(0) as u64;
            ctx.download(WgpuBuffer::downcast(b.as_ref())?.whole()?, 0, bytes)?;
        }
        host.readback_ms = ms(t.elapsed());
        host.total_ms = ms(t0.elapsed());

        let spans = self.node_spans();
        let times = self.run_per_node(bindings, scratch, &spans)?;
        let source = match ctx.profile_timing {
            ProfileTiming::HostPerNode => TimeSource::Host,
            _ => TimeSource::Gpu,
        };
        let nodes = spans
            .iter()
            .zip(times)
            .map(|((id, _), ms)| {
                let n = self.graph.node(*id);
                NodeTime {
                    node: n.name.clone(),
                    op: n.op.kind().to_string(),
                    ms,
                    source,
                }
            })
            .collect();
        Ok(Profile {
            method: format!("wgpu ({}): {}", ctx.info.name, ctx.profile_timing.name()),
            nodes,
            host,
        })
    }

    /// Enqueues the run like `run`; the handle waits for that submission and checks
    /// its kernel status word.
    fn submit(
        &self,
        bindings: &Bindings,
        scratch: &mut dyn Scratch,
    ) -> Result<Box<dyn Completion>> {
        let (check, index) = self.enqueue(bindings, scratch, None)?;
        Ok(Box::new(GpuCompletion::new(
            self.ctx.clone(),
            check,
            index,
            bindings.clone(),
        )))
    }
}

impl WgpuExecutable {
    /// Checks the bindings, settles the scratch's previous status check and finds (or
    /// builds) the bind groups: what every run does before recording.
    fn prepare<'s, 'b>(
        &self,
        bindings: &'b Bindings,
        scratch: &'s mut dyn Scratch,
    ) -> Result<Prepared<'s, 'b>> {
        let scratch = scratch
            .as_any_mut()
            .downcast_mut::<WgpuScratch>()
            .ok_or_else(|| BackendError::Binding("scratch from another backend".into()))?;
        if scratch.exec_id != self.id {
            return Err(BackendError::Binding(
                "scratch from another executable".into(),
            ));
        }
        let bound = self.bound_buffers(bindings)?;
        let mut outputs = Vec::with_capacity(self.graph.outputs.len());
        for (name, id) in &self.graph.outputs {
            let ob = bindings
                .output(name)
                .ok_or_else(|| BackendError::Binding(format!("output `{name}` is not bound")))?;
            if ob.fact() != self.graph.fact(*id) {
                return Err(BackendError::Binding(format!(
                    "output `{name}` bound to a {} buffer, needs {}",
                    ob.fact(),
                    self.graph.fact(*id)
                )));
            }
            let wb = WgpuBuffer::downcast(ob.as_ref())?;
            if bound.iter().any(|b| b.id == wb.id) {
                return Err(BackendError::Binding(format!(
                    "output `{name}` is bound to a source buffer"
                )));
            }
            outputs.push((*id, wb));
        }
        // The ring slot this run copies its status into must be checked before it is
        // reused: only when STATUS_RING runs are in flight does that wait (for the
        // oldest, not for the queue).
        let slot = &scratch.ring[scratch.next];
        if slot.in_flight.load(Ordering::Acquire) {
            let oldest = slot.check;
            self.ctx.resolve_checks(|c| c.id == oldest)?;
        }

        let key: Vec<u64> = bound.iter().map(|b| b.id).collect();
        let groups_at = match scratch.bind_cache.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let groups = self.bind_groups(scratch, &bound)?;
                if scratch.bind_cache.len() >= BIND_CACHE_ENTRIES {
                    scratch.bind_cache.remove(0);
                }
                scratch.bind_cache.push((key, groups));
                scratch.bind_cache.len() - 1
            }
        };
        Ok(Prepared {
            scratch,
            bound,
            outputs,
            groups_at,
        })
    }

    /// Records the copies of the outputs and of the status words at the end of a run.
    fn record_tail(&self, p: &Prepared, enc: &mut ::wgpu::CommandEncoder) -> Result<()> {
        for (id, dst) in &p.outputs {
            let src = self.storage_buffer(p.scratch, &p.bound, *id)?;
            let bytes = self.graph.fact(*id).bytes().unwrap_or(0) as u64;
            enc.copy_buffer_to_buffer(src, 0, dst.whole()?, 0, bytes.div_ceil(4) * 4);
        }
        let slot = &p.scratch.ring[p.scratch.next];
        enc.copy_buffer_to_buffer(&p.scratch.status, 0, &slot.readback, 0, 8);
        Ok(())
    }

    /// Submits `enc` and registers the run's status check.
    fn submit_checked(
        &self,
        p: &mut Prepared,
        enc: ::wgpu::CommandEncoder,
    ) -> Result<(u64, ::wgpu::SubmissionIndex)> {
        let ctx = &self.ctx;
        let index = ctx.scoped(
            || ctx.submit([enc.finish()]),
            |msg, _| BackendError::Execution {
                node: self.label.to_string(),
                reason: msg,
            },
        )?;
        let check = ctx.next_id();
        for (_, dst) in &p.outputs {
            dst.last_run.store(check, Ordering::Release);
        }
        let slot = &mut p.scratch.ring[p.scratch.next];
        slot.in_flight.store(true, Ordering::Release);
        slot.check = check;
        ctx.add_check(StatusCheck {
            id: check,
            thread: std::thread::current().id(),
            readback: slot.readback.clone(),
            index: index.clone(),
            label: self.label.clone(),
            node_names: self.node_names.clone(),
            in_flight: slot.in_flight.clone(),
        });
        p.scratch.next = (p.scratch.next + 1) % STATUS_RING;
        Ok((check, index))
    }

    fn reset_status(&self, p: &Prepared) {
        self.ctx
            .queue
            .write_buffer(&p.scratch.status, 0, &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    }

    fn new_encoder(&self) -> ::wgpu::CommandEncoder {
        self.ctx
            .device
            .create_command_encoder(&::wgpu::CommandEncoderDescriptor {
                label: Some(&self.label),
            })
    }

    /// Records and submits one run; returns its status check id and submission. With
    /// `times`, the time spent recording and submitting goes into it.
    fn enqueue(
        &self,
        bindings: &Bindings,
        scratch: &mut dyn Scratch,
        times: Option<&mut HostTimes>,
    ) -> Result<(u64, ::wgpu::SubmissionIndex)> {
        let t0 = times.is_some().then(Instant::now);
        let mut p = self.prepare(bindings, scratch)?;
        self.reset_status(&p);
        let mut enc = self.new_encoder();
        {
            let set = &p.scratch.bind_cache[p.groups_at].1;
            let mut pass = enc.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                label: Some(&self.label),
                timestamp_writes: None,
            });
            self.record_grids(&mut pass, set);
            for i in 0..self.steps.len() {
                self.record_step(&mut pass, p.scratch, set, i);
            }
        }
        self.record_tail(&p, &mut enc)?;
        let t1 = t0.map(|_| Instant::now());
        let r = self.submit_checked(&mut p, enc)?;
        if let (Some(t), Some(t0), Some(t1)) = (times, t0, t1) {
            t.record_ms = ms(t1 - t0);
            t.submit_ms = ms(t1.elapsed());
        }
        Ok(r)
    }

    /// The compute nodes in graph order with the range of their dispatches.
    fn node_spans(&self) -> Vec<(NodeId, std::ops::Range<usize>)> {
        let mut spans = Vec::new();
        let mut at = 0;
        for id in self.graph.ids() {
            let start = at;
            while at < self.steps.len() && self.steps[at].node == id {
                at += 1;
            }
            if crate::profile::is_compute(&self.graph.node(id).op) {
                spans.push((id, start..at));
            }
        }
        spans
    }

    /// One run timed per node (the outputs and status are written as by `run`);
    /// returns each compute node's milliseconds, in `node_spans` order. A node with no
    /// dispatch of its own (read in place, or run by its pair) takes 0 ms: its work is
    /// in its readers' time, and it gets no timestamps whose overhead would count.
    fn run_per_node(
        &self,
        bindings: &Bindings,
        scratch: &mut dyn Scratch,
        spans: &[(NodeId, std::ops::Range<usize>)],
    ) -> Result<Vec<f64>> {
        let ctx = &self.ctx;
        let mut p = self.prepare(bindings, scratch)?;
        self.reset_status(&p);
        let mut times = vec![0f64; spans.len()];
        let dispatch = |pass: &mut ::wgpu::ComputePass,
                        scratch: &WgpuScratch,
                        set: &BindSet,
                        r: &std::ops::Range<usize>| {
            for i in r.clone() {
                self.record_step(pass, scratch, set, i);
            }
        };
        // The valid-row grids first, untimed (a few words per dispatch): in a pass of
        // their own, which the passes after see.
        let grids_pass = |enc: &mut ::wgpu::CommandEncoder, p: &Prepared| {
            let mut pass = enc.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                label: Some("valid-row grids"),
                timestamp_writes: None,
            });
            self.record_grids(&mut pass, &p.scratch.bind_cache[p.groups_at].1);
        };
        let timing = ctx.profile_timing;
        if timing == ProfileTiming::HostPerNode {
            if self.row_grids.is_some() {
                let mut enc = self.new_encoder();
                grids_pass(&mut enc, &p);
                ctx.wait_for(Some(ctx.submit([enc.finish()])))?;
            }
            for (k, (_, r)) in spans.iter().enumerate() {
                if r.is_empty() {
                    continue;
                }
                let t = Instant::now();
                let mut enc = self.new_encoder();
                {
                    let set = &p.scratch.bind_cache[p.groups_at].1;
                    let mut pass = enc.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                        label: Some(&self.label),
                        timestamp_writes: None,
                    });
                    dispatch(&mut pass, p.scratch, set, r);
                }
                let index = ctx.submit([enc.finish()]);
                ctx.wait_for(Some(index))?;
                times[k] = ms(t.elapsed());
            }
            let mut enc = self.new_encoder();
            self.record_tail(&p, &mut enc)?;
            let (check, index) = self.submit_checked(&mut p, enc)?;
            ctx.resolve_checks_after(Some(index), |c| c.id == check)?;
            return Ok(times);
        }

        // Timestamp queries, for the nodes with dispatches: `InsidePasses` writes one
        // before the first node and one after each node (timed + 1), `PassPerNode` two
        // per node (its pass's begin and end). Query sets hold at most MAX_QUERIES each.
        let timed: Vec<usize> = (0..spans.len())
            .filter(|&k| !spans[k].1.is_empty())
            .collect();
        let inside = timing == ProfileTiming::InsidePasses;
        let queries = if inside {
            timed.len() + 1
        } else {
            2 * timed.len()
        } as u32;
        let sets: Vec<::wgpu::QuerySet> = (0..queries.div_ceil(MAX_QUERIES))
            .map(|s| {
                ctx.device.create_query_set(&::wgpu::QuerySetDescriptor {
                    label: Some("npurt profile"),
                    ty: ::wgpu::QueryType::Timestamp,
                    count: MAX_QUERIES.min(queries - s * MAX_QUERIES),
                })
            })
            .collect();
        let at = |q: u32| (&sets[(q / MAX_QUERIES) as usize], q % MAX_QUERIES);
        let bytes = u64::from(queries) * 8;
        let resolve = ctx.create_buffer(&::wgpu::BufferDescriptor {
            label: Some("npurt profile resolve"),
            size: bytes,
            usage: ::wgpu::BufferUsages::QUERY_RESOLVE | ::wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut enc = self.new_encoder();
        grids_pass(&mut enc, &p);
        {
            let binds = &p.scratch.bind_cache[p.groups_at].1;
            if inside {
                let mut pass = enc.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                    label: Some(&self.label),
                    timestamp_writes: None,
                });
                let (set, i) = at(0);
                pass.write_timestamp(set, i);
                for (q, &k) in timed.iter().enumerate() {
                    dispatch(&mut pass, p.scratch, binds, &spans[k].1);
                    let (set, i) = at(q as u32 + 1);
                    pass.write_timestamp(set, i);
                }
            } else {
                for (q, &k) in timed.iter().enumerate() {
                    let (set, i) = at(2 * q as u32);
                    let (set_end, j) = at(2 * q as u32 + 1);
                    // A pair never straddles two sets: MAX_QUERIES is even.
                    debug_assert!(std::ptr::eq(set, set_end));
                    let mut pass = enc.begin_compute_pass(&::wgpu::ComputePassDescriptor {
                        label: Some(&self.graph.node(spans[k].0).name),
                        timestamp_writes: Some(::wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(i),
                            end_of_pass_write_index: Some(j),
                        }),
                    });
                    dispatch(&mut pass, p.scratch, binds, &spans[k].1);
                }
            }
        }
        for (s, set) in sets.iter().enumerate() {
            let first = s as u32 * MAX_QUERIES;
            let n = MAX_QUERIES.min(queries - first);
            enc.resolve_query_set(set, 0..n, &resolve, u64::from(first) * 8);
        }
        self.record_tail(&p, &mut enc)?;
        let (check, index) = self.submit_checked(&mut p, enc)?;
        ctx.resolve_checks_after(Some(index), |c| c.id == check)?;
        let raw = ctx.download(&resolve, 0, bytes)?;
        let ticks: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let period_ms = f64::from(ctx.timestamp_period) / 1e6;
        for (q, &k) in timed.iter().enumerate() {
            let (a, b) = if inside {
                (ticks[q], ticks[q + 1])
            } else {
                (ticks[2 * q], ticks[2 * q + 1])
            };
            times[k] = b.saturating_sub(a) as f64 * period_ms;
        }
        Ok(times)
    }
}

/// Queries per timestamp query set (wgpu's limit is 4096; even, so begin/end pairs
/// stay in one set).
const MAX_QUERIES: u32 = 4096;

/// A run's checked bindings and its scratch, ready to record.
struct Prepared<'s, 'b> {
    scratch: &'s mut WgpuScratch,
    bound: Vec<&'b WgpuBuffer>,
    outputs: Vec<(NodeId, &'b WgpuBuffer)>,
    groups_at: usize,
}
