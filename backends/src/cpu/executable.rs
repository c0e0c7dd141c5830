//! The CPU executable: the compiled graph walked in topological order, each node
//! calling its CPU kernel. Intermediates live in one per-session arena laid out by the
//! graph's memory plan (`npurt_graph::plan`): values live at the same time never share
//! memory, dead ones are reused. The arena is allocated once with the scratch, so no
//! node's output is allocated during a run. A run does still allocate, in sizes set by
//! the graph rather than by the data:
//! - its bookkeeping: the list of bound sources, their locks and a node-to-lock table
//!   (O(nodes) small vectors, every run);
//! - some kernels' temporaries: the f32-weight matmul's prologue and GLU products (the
//!   f32 reference preset) and `matmul_f32`'s transposed B for a `[K, N]` operand;
//!   rope's frequency and cos/sin rows; patch_embed's im2col columns; the task lists of
//!   the threaded paths; the packed matmul's multiply-then-epilogue buffer for a GLU
//!   whose N is not whole tiles.
//!
//! The quantized activations and attention's blocks live in per-thread scratch that
//! grows to the largest call and is then reused, so a steady decode loop does not
//! allocate for them.

use super::buffer::CpuBuffer;
use crate::{
    BackendError, Bindings, BufferUsage, DeviceBuffer, Executable, NodeTime, Profile, Result,
    Scratch, TimeSource,
};
use npurt_graph::plan::{self, Placement};
use npurt_graph::rows::ValidRows;
use npurt_graph::{AttentionMode, AttentionPrecision, Graph, MatMulOperands, NodeId, Op, Prologue};
use npurt_kernels::cpu::ThreadPool;
use npurt_kernels::{cpu as k, reference as r, HostData};
use std::any::Any;
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

/// Where a node's value lives during a run.
#[derive(Clone, Debug)]
enum Loc {
    /// A bound or captured source buffer (index into the run's guards).
    Source,
    /// Another node's storage: a KV write is the cache it updated, a reshape its input.
    Alias(NodeId),
    /// Columns `start..` of the `[rows, width]` value of `src` (an arena value), read in
    /// place: a q, k or v slice of a fused q/k/v product that only bidirectional
    /// attentions read ([`bidirectional_views`]).
    View {
        src: NodeId,
        start: usize,
        width: usize,
    },
    /// These f32 elements of the arena.
    Arena(std::ops::Range<usize>),
}

/// Arena offsets are multiples of a cache line.
const ARENA_ALIGN: u64 = 64;

/// The column slices this backend reads in place rather than copies: the q, k and v
/// of bidirectional attentions whose three operands are slices of one value (a fused
/// q/k/v product; the attention kernels take row strides, [`k::Qkv`]), when nothing
/// else reads them. An attention reads all three in place or none. Graph outputs are
/// always computed.
pub(crate) fn bidirectional_views(graph: &Graph) -> Vec<bool> {
    let n = graph.nodes.len();
    let slice_src = |x: NodeId| match graph.node(x).op {
        Op::SliceCols { .. } => Some(graph.node(x).inputs[0]),
        _ => None,
    };
    let is_bidirectional = |op: &Op| {
        matches!(
            op,
            Op::Attention {
                mode: AttentionMode::Bidirectional { .. },
                ..
            }
        )
    };
    let of_one_value = |ins: &[NodeId]| {
        let first = slice_src(ins[0]);
        first.is_some() && ins.iter().all(|&x| slice_src(x) == first)
    };
    // Start from every slice such an attention reads, then drop those something else
    // reads, and the other operands of an attention with a dropped one, until nothing
    // changes (a slice may feed two attentions).
    let mut view = vec![false; n];
    for node in graph.nodes.iter().filter(|n| is_bidirectional(&n.op)) {
        if of_one_value(&node.inputs) {
            node.inputs.iter().for_each(|x| view[x.0] = true);
        }
    }
    for (_, id) in &graph.outputs {
        view[id.0] = false;
    }
    loop {
        let mut changed = false;
        for node in &graph.nodes {
            let in_place = is_bidirectional(&node.op)
                && of_one_value(&node.inputs)
                && node.inputs.iter().all(|x| view[x.0]);
            for x in &node.inputs {
                if view[x.0] && !in_place {
                    view[x.0] = false;
                    changed = true;
                }
            }
        }
        if !changed {
            return view;
        }
    }
}

pub struct CpuExecutable {
    graph: Graph,
    loc: Vec<Loc>,
    /// f32 elements of the arena.
    arena_len: usize,
    weights: Vec<Option<Arc<dyn DeviceBuffer>>>,
    pool: Option<Arc<ThreadPool>>,
    /// A prefill chunk's row-wise values ([`ValidRows`]): each run computes only the
    /// rows its `n_valid` input says are tokens (`None`: every row, as compiled).
    valid_rows: Option<ValidRows>,
}

/// The arena: `len` f32 from element `start` of `buf`, which puts its first element on
/// a 64-byte boundary. The plan aligns every value to 64 bytes from the arena's start,
/// but a large `Vec` from the allocator starts 16 bytes into a page, and then every
/// "aligned" row and 64-byte vector of the kernels straddled two cache lines (the
/// matmul outputs' stores most: each took two lines' worth of the store buffer).
struct CpuScratch {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl CpuScratch {
    fn arena(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl Scratch for CpuScratch {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

enum Guard<'a> {
    Read(RwLockReadGuard<'a, HostData>),
    Write(RwLockWriteGuard<'a, HostData>),
}

impl Guard<'_> {
    fn data(&self) -> &HostData {
        match self {
            Guard::Read(g) => g,
            Guard::Write(g) => g,
        }
    }
}

/// A K/V operand of attention as stored.
enum KvRef<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
    /// An int8 cache's raw bytes (`DType::Q8Head` blocks).
    Q8Head(&'a [u8]),
}

fn exec_err(graph: &Graph, id: NodeId, reason: impl Into<String>) -> BackendError {
    BackendError::Execution {
        node: graph.node(id).name.clone(),
        reason: reason.into(),
    }
}

impl CpuExecutable {
    /// `padded_rows`: compute a chunk's padding rows too, as a static-shape device
    /// does (`CpuOptions::padded_rows`).
    pub(crate) fn new(
        graph: &Graph,
        weights: &[(NodeId, Arc<dyn DeviceBuffer>)],
        pool: Option<Arc<ThreadPool>>,
        padded_rows: bool,
    ) -> Result<Self> {
        let mut w: Vec<Option<Arc<dyn DeviceBuffer>>> = vec![None; graph.nodes.len()];
        for (id, n) in graph.nodes.iter().enumerate() {
            if let Op::Weight { name, .. } = &n.op {
                let (_, b) = weights.iter().find(|(wid, _)| wid.0 == id).ok_or_else(|| {
                    BackendError::Binding(format!("weight `{name}` was not prepared"))
                })?;
                if b.fact() != &n.fact {
                    return Err(BackendError::Binding(format!(
                        "weight `{name}` is {}, the graph wants {}",
                        b.fact(),
                        n.fact
                    )));
                }
                CpuBuffer::downcast(b.as_ref())?;
                w[id] = Some(b.clone());
            }
        }
        let views = bidirectional_views(graph);
        let plan = plan::plan_with_views(graph, ARENA_ALIGN, &views);
        let loc = plan
            .placement
            .iter()
            .enumerate()
            .map(|(i, p)| match (*p, &graph.nodes[i].op) {
                (Placement::Source, _) => Loc::Source,
                (Placement::Alias(src), Op::SliceCols { start, .. }) if views[i] => Loc::View {
                    src,
                    start: *start,
                    width: graph.fact(graph.nodes[i].inputs[0]).shape[1],
                },
                (Placement::Alias(r), _) => Loc::Alias(r),
                (Placement::Arena { offset, bytes }, _) => {
                    let start = (offset / 4) as usize;
                    Loc::Arena(start..start + (bytes / 4) as usize)
                }
            })
            .collect();
        Ok(CpuExecutable {
            graph: graph.clone(),
            loc,
            arena_len: (plan.arena_bytes / 4) as usize,
            weights: w,
            pool,
            valid_rows: if padded_rows {
                None
            } else {
                ValidRows::of(graph)
            },
        })
    }

    fn resolve(&self, id: NodeId) -> NodeId {
        match self.loc[id.0] {
            Loc::Alias(s) => s,
            _ => id,
        }
    }

    /// A view's source value, first column and the source's row width.
    fn view(&self, id: NodeId) -> Option<(NodeId, usize, usize)> {
        match self.loc[id.0] {
            Loc::View { src, start, width } => Some((src, start, width)),
            _ => None,
        }
    }

    /// The arena range of `id`'s value (through aliases), if it lives in the arena.
    fn arena_range(&self, id: NodeId) -> Option<std::ops::Range<usize>> {
        match &self.loc[self.resolve(id).0] {
            Loc::Arena(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// A KV write: the new rows (arena or bound; the first `rows` of them when given)
    /// into the state's cache at `pos`.
    fn kv_write(
        &self,
        id: NodeId,
        arena: &[f32],
        guards: &mut [Guard],
        guard_of: &[usize],
        rows: Option<usize>,
    ) -> Result<()> {
        let g = &self.graph;
        let node = g.node(id);
        let ins = &node.inputs;
        let pos = match guards.get(guard_of[ins[2].0]).map(Guard::data) {
            Some(HostData::I32(v)) if v.len() == 1 && v[0] >= 0 => v[0] as usize,
            _ => {
                return Err(exec_err(
                    g,
                    id,
                    "kv_write pos must be a non-negative i32 scalar",
                ))
            }
        };
        let new_id = self.resolve(ins[1]);
        // Rows bound from outside (a partition's transfer, a one-op conformance graph)
        // are copied first: their guard and the cache's cannot both be borrowed while
        // the cache is written.
        let bound_rows;
        let new: &[f32] = match &self.loc[new_id.0] {
            Loc::Arena(r) => &arena[r.clone()],
            _ => match guards
                .get(guard_of[new_id.0])
                .and_then(|g| g.data().as_f32())
            {
                Some(v) => {
                    bound_rows = v.to_vec();
                    &bound_rows
                }
                _ => return Err(exec_err(g, id, "kv_write rows must be f32")),
            },
        };
        let state = self.resolve(ins[0]);
        let width = node.fact.shape[1];
        let new = match rows {
            Some(n) => &new[..n * width],
            None => new,
        };
        match &mut guards[guard_of[state.0]] {
            Guard::Write(gd) => match &mut **gd {
                HostData::F32(cache) => {
                    r::kv_write(cache, new, width, pos).map_err(|e| exec_err(g, id, e.0))
                }
                HostData::F16(cache) => {
                    k::kv_write_f16(cache, new, width, pos).map_err(|e| exec_err(g, id, e.0))
                }
                HostData::Bytes(cache) => match node.fact.dtype {
                    npurt_graph::DType::Q8Head { head_dim } => {
                        k::kv_write_q8head(cache, new, width, head_dim as usize, pos)
                            .map_err(|e| exec_err(g, id, e.0))
                    }
                    d => Err(exec_err(
                        g,
                        id,
                        format!("a {d} kv cache on the cpu backend"),
                    )),
                },
                _ => Err(exec_err(
                    g,
                    id,
                    "kv cache must be f32, f16 or int8 on the cpu backend",
                )),
            },
            Guard::Read(_) => Err(exec_err(g, id, "kv cache must be a State buffer")),
        }
    }

    /// Runs the graph; with `profile`, timing each node into it.
    fn run_inner(
        &self,
        bindings: &Bindings,
        scratch: &mut CpuScratch,
        mut profile: Option<&mut Profile>,
    ) -> Result<()> {
        let t_start = Instant::now();
        let g = &self.graph;
        // Lock every source once for the whole run.
        let mut bufs: Vec<(NodeId, Arc<dyn DeviceBuffer>)> = Vec::new();
        for id in g.ids().filter(|id| g.node(*id).op.is_source()) {
            let b = match &self.weights[id.0] {
                Some(w) => w.clone(),
                None => bindings.source(id).cloned().ok_or_else(|| {
                    BackendError::Binding(format!("`{}` is not bound", g.node(id).name))
                })?,
            };
            if b.fact() != g.fact(id) {
                return Err(BackendError::Binding(format!(
                    "`{}` bound to a {} buffer, needs {}",
                    g.node(id).name,
                    b.fact(),
                    g.fact(id)
                )));
            }
            bufs.push((id, b));
        }
        // One buffer bound to two sources would be locked twice (a deadlock for a
        // state): sort the buffer addresses and look for neighbours (this runs every
        // decode step over ~250 sources, so not pairwise).
        let mut addrs: Vec<(*const (), NodeId)> = bufs
            .iter()
            .map(|(id, b)| (Arc::as_ptr(b) as *const (), *id))
            .collect();
        addrs.sort_unstable_by_key(|(p, _)| *p as usize);
        if let Some(w) = addrs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(BackendError::Binding(format!(
                "`{}` is bound to a buffer already bound to another source",
                g.node(w[1].1).name
            )));
        }
        let mut guard_of = vec![usize::MAX; g.nodes.len()];
        let mut guards = Vec::with_capacity(bufs.len());
        for (i, (id, b)) in bufs.iter().enumerate() {
            let cb = CpuBuffer::downcast(b.as_ref())?;
            guard_of[id.0] = i;
            let poisoned = || {
                BackendError::Binding(format!(
                    "buffer of `{}` was poisoned by a panic",
                    g.node(*id).name
                ))
            };
            guards.push(if cb.usage == BufferUsage::State {
                Guard::Write(cb.data.write().map_err(|_| poisoned())?)
            } else {
                Guard::Read(cb.data.read().map_err(|_| poisoned())?)
            });
        }

        // The chunk's valid rows, where only they are computed.
        let valid = match &self.valid_rows {
            None => None,
            Some(v) => match guards.get(guard_of[v.n_valid.0]).map(Guard::data) {
                Some(HostData::I32(x))
                    if x.len() == 1 && (0..=v.rows as i64).contains(&(x[0] as i64)) =>
                {
                    Some((v, x[0] as usize))
                }
                _ => {
                    return Err(exec_err(
                        g,
                        v.n_valid,
                        format!("must be an i32 scalar in 0..={}", v.rows),
                    ))
                }
            },
        };
        let rows_of = |id: NodeId| valid.and_then(|(v, n)| v.limits(g, id).then_some(n));

        let t_bound = Instant::now();
        match profile {
            None => {
                for id in g.ids() {
                    self.run_node(id, scratch.arena(), &mut guards, &guard_of, rows_of(id))?;
                }
            }
            Some(ref mut p) => {
                for id in g.ids() {
                    let t = Instant::now();
                    self.run_node(id, scratch.arena(), &mut guards, &guard_of, rows_of(id))?;
                    let node = g.node(id);
                    if crate::profile::is_compute(&node.op) {
                        p.nodes.push(NodeTime {
                            node: node.name.clone(),
                            op: node.op.kind().to_string(),
                            ms: crate::profile::ms(t.elapsed()),
                            source: TimeSource::Host,
                        });
                    }
                }
                p.host.record_ms = crate::profile::ms(t_bound - t_start);
                p.host.compute_ms = crate::profile::ms(t_bound.elapsed());
            }
        }
        let t_out = Instant::now();

        for (name, id) in &g.outputs {
            let ob = bindings
                .output(name)
                .ok_or_else(|| BackendError::Binding(format!("output `{name}` is not bound")))?;
            let cb = CpuBuffer::downcast(ob.as_ref())?;
            let src = self.resolve(*id);
            let data: &[f32] = match &self.loc[src.0] {
                Loc::Arena(r) => &scratch.arena()[r.clone()],
                _ => match guards[guard_of[src.0]].data().as_f32() {
                    Some(v) => v,
                    None => {
                        return Err(BackendError::Binding(format!("output `{name}` is not f32")))
                    }
                },
            };
            let mut dst = cb
                .data
                .write()
                .map_err(|_| BackendError::Binding(format!("output `{name}` buffer poisoned")))?;
            // Rows past the valid ones were not computed: they read as zeros.
            let computed = valid.map_or(data.len(), |(v, n)| v.prefix(src, n, data.len()));
            match &mut *dst {
                HostData::F32(v) if v.len() == data.len() => {
                    v[..computed].copy_from_slice(&data[..computed]);
                    v[computed..].fill(0.0);
                }
                _ => {
                    return Err(BackendError::Binding(format!(
                        "output `{name}` buffer is not f32{:?}",
                        g.fact(*id).shape
                    )))
                }
            }
        }
        if let Some(p) = profile {
            p.host.readback_ms = crate::profile::ms(t_out.elapsed());
            p.host.total_ms = crate::profile::ms(t_start.elapsed());
        }
        Ok(())
    }

    /// Runs node `id` (a no-op for sources and aliases). `rows`: compute only the
    /// first `rows` rows of a chunk's row-wise value ([`ValidRows`]), reading the same
    /// rows of its row-wise inputs.
    fn run_node(
        &self,
        id: NodeId,
        arena: &mut [f32],
        guards: &mut [Guard],
        guard_of: &[usize],
        rows: Option<usize>,
    ) -> Result<()> {
        let g = &self.graph;
        let node = g.node(id);
        if let Op::KvWrite = node.op {
            return self.kv_write(id, arena, guards, guard_of, rows);
        }
        let Loc::Arena(range) = self.loc[id.0].clone() else {
            return Ok(()); // sources and aliases are not computed
        };
        // The output's elements, and the arena on either side of them (where every
        // input lives: the plan never overlaps values live at the same node).
        let (lo, rest) = arena.split_at_mut(range.start);
        let (out, hi) = rest.split_at_mut(range.len());
        // The valid rows of a row-wise value: a prefix of its elements.
        let first_rows = |x: NodeId, len: usize| match (rows, &self.valid_rows) {
            (Some(n), Some(v)) => v.prefix(x, n, len),
            _ => len,
        };
        let out = &mut out[..first_rows(id, range.len())];
        {
            let arena_of = |x: NodeId| -> Result<&[f32]> {
                let r = self.arena_range(x).expect("caller checked");
                if r.end <= range.start {
                    Ok(&lo[r])
                } else if r.start >= range.end {
                    Ok(&hi[r.start - range.end..r.end - range.end])
                } else {
                    Err(exec_err(
                        g,
                        id,
                        "the memory plan overlaps an input with the output",
                    ))
                }
            };
            let full_f32_of = |x: NodeId| -> Result<&[f32]> {
                let x = self.resolve(x);
                match self.loc[x.0] {
                    Loc::Arena(_) => arena_of(x),
                    Loc::View { .. } => Err(exec_err(
                        g,
                        id,
                        format!("`{}` is read in place by attention only", g.node(x).name),
                    )),
                    _ => match guards[guard_of[x.0]].data().as_f32() {
                        Some(v) => Ok(v),
                        _ => Err(exec_err(
                            g,
                            id,
                            format!("input `{}` is not f32 on the cpu backend", g.node(x).name),
                        )),
                    },
                }
            };
            // An input as this node reads it: a row-wise input's valid rows only.
            let f32_of = |x: NodeId| -> Result<&[f32]> {
                let v = full_f32_of(x)?;
                Ok(&v[..first_rows(x, v.len())])
            };
            // Attention's K/V: f32 values, or an f16 or int8 cache state.
            let kv_of = |x: NodeId| -> Result<KvRef> {
                let x = self.resolve(x);
                match self.loc[x.0] {
                    Loc::Arena(_) => Ok(KvRef::F32(arena_of(x)?)),
                    _ => match guards[guard_of[x.0]].data() {
                        HostData::F32(v) => Ok(KvRef::F32(v)),
                        HostData::F16(v) => Ok(KvRef::F16(v)),
                        HostData::Bytes(v)
                            if matches!(g.fact(x).dtype, npurt_graph::DType::Q8Head { .. }) =>
                        {
                            Ok(KvRef::Q8Head(v))
                        }
                        _ => Err(exec_err(
                            g,
                            id,
                            format!("`{}` is not an f32, f16 or int8 tensor", g.node(x).name),
                        )),
                    },
                }
            };
            let scalar = |x: NodeId| -> Result<usize> {
                match guards.get(guard_of[x.0]).map(Guard::data) {
                    Some(HostData::I32(v)) if v.len() == 1 && v[0] >= 0 => Ok(v[0] as usize),
                    _ => Err(exec_err(
                        g,
                        id,
                        format!("`{}` must be a non-negative i32 scalar", g.node(x).name),
                    )),
                }
            };
            let ins = &node.inputs;
            let kerr = |e: r::KernelError| exec_err(g, id, e.0);
            // A weight repacked for the fused quantized kernels.
            let packed = |x: NodeId| {
                self.weights[x.0]
                    .as_ref()
                    .and_then(|b| CpuBuffer::downcast(b.as_ref()).ok())
                    .and_then(|c| c.packed.as_ref())
            };
            match &node.op {
                Op::Gather => {
                    let ids = match guards.get(guard_of[ins[1].0]).map(Guard::data) {
                        Some(HostData::I32(v)) => &v[..first_rows(ins[1], v.len())],
                        _ => return Err(exec_err(g, id, "gather ids must be a bound i32 input")),
                    };
                    match packed(ins[0]) {
                        Some(table) => k::gather_packed(table, ids, out).map_err(kerr)?,
                        None => r::gather(f32_of(ins[0])?, node.fact.shape[1], ids, out)
                            .map_err(kerr)?,
                    }
                }
                Op::MatMul {
                    transpose_b,
                    act,
                    prologue,
                    epilogue,
                } => {
                    let slots = MatMulOperands::new(*prologue, *epilogue);
                    let opt = |slot: Option<usize>| slot.map(|i| f32_of(ins[i])).transpose();
                    let (bias, residual) = (opt(slots.bias)?, opt(slots.residual)?);
                    let norm = match (*prologue, opt(slots.norm)?, opt(slots.norm_bias)?) {
                        (Prologue::RmsNorm { eps }, Some(weight), _) => {
                            Some(k::RowNorm::Rms { weight, eps })
                        }
                        (Prologue::LayerNorm { eps }, Some(weight), Some(bias)) => {
                            Some(k::RowNorm::Layer { weight, bias, eps })
                        }
                        _ => None,
                    };
                    let a = f32_of(ins[0])?;
                    let m = a.len() / g.fact(ins[0]).shape[1];
                    if let Some(w) = packed(ins[1]) {
                        match norm {
                            Some(norm) => k::matmul_packed_norm(
                                a, m, norm, w, *act, *epilogue, bias, residual, out,
                            ),
                            None => k::matmul_packed(a, m, w, *act, *epilogue, bias, residual, out),
                        }
                        .map_err(kerr)?;
                    } else {
                        // f32 weights (the f32 preset, or activation x activation):
                        // prologue into a temporary, multiply, then the epilogue.
                        let mut normed = Vec::new();
                        if let Some(nm) = norm {
                            normed.resize(a.len(), 0f32);
                            match nm {
                                k::RowNorm::Rms { weight, eps } => {
                                    k::rms_norm_f32(a, weight, eps, &mut normed)
                                }
                                k::RowNorm::Layer { weight, bias, eps } => {
                                    k::layer_norm_f32(a, weight, bias, eps, &mut normed)
                                }
                            }
                            .map_err(kerr)?;
                        }
                        let a = if norm.is_some() { &normed[..] } else { a };
                        let b = g.fact(ins[1]);
                        let kk = g.fact(ins[0]).shape[1];
                        let n_b = if *transpose_b { b.shape[0] } else { b.shape[1] };
                        let b = f32_of(ins[1])?;
                        if epilogue.glu().is_some() {
                            // The GLU reads gate and up columns of the wider product.
                            let mut pre = vec![0f32; m * n_b];
                            k::matmul_f32(a, b, m, kk, n_b, *transpose_b, &mut pre);
                            k::epilogue_f32(Some(&pre), m, n_b, *epilogue, bias, residual, out)
                                .map_err(kerr)?;
                        } else {
                            // The product straight into `out`, the steps in place.
                            k::matmul_f32(a, b, m, kk, n_b, *transpose_b, out);
                            if !epilogue.is_empty() {
                                k::epilogue_f32(None, m, n_b, *epilogue, bias, residual, out)
                                    .map_err(kerr)?;
                            }
                        }
                    }
                }
                Op::PatchEmbed { patch } => {
                    let sh = &g.fact(ins[0]).shape;
                    k::patch_embed_f32(
                        f32_of(ins[0])?,
                        [sh[0], sh[1], sh[2], sh[3]],
                        f32_of(ins[1])?,
                        f32_of(ins[2])?,
                        *patch,
                        out,
                    )
                    .map_err(kerr)?;
                }
                Op::SliceCols { start, len } => {
                    k::slice_cols_f32(f32_of(ins[0])?, g.fact(ins[0]).shape[1], *start, *len, out)
                        .map_err(kerr)?
                }
                Op::Add => r::add(f32_of(ins[0])?, f32_of(ins[1])?, out),
                Op::Mul => r::mul(f32_of(ins[0])?, f32_of(ins[1])?, out),
                Op::RmsNorm { eps } => {
                    k::rms_norm_f32(f32_of(ins[0])?, f32_of(ins[1])?, *eps, out).map_err(kerr)?
                }
                Op::LayerNorm { eps } => {
                    k::layer_norm_f32(f32_of(ins[0])?, f32_of(ins[1])?, f32_of(ins[2])?, *eps, out)
                        .map_err(kerr)?
                }
                Op::Rope { params } => {
                    k::rope_f32(
                        f32_of(ins[0])?,
                        node.fact.shape[1],
                        params,
                        scalar(ins[1])?,
                        scalar(ins[2])?,
                        out,
                    );
                }
                Op::Attention {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    scale,
                    mode: AttentionMode::Bidirectional { seq },
                    precision,
                } => {
                    let kernel = match precision {
                        AttentionPrecision::F32 => k::attention_bidirectional_f32,
                        AttentionPrecision::I8 => k::attention_bidirectional_i8,
                        AttentionPrecision::F16 => k::attention_bidirectional_f16,
                    };
                    // q, k and v in place in the fused product they were sliced from, or
                    // as they are.
                    let qkv = match [ins[0], ins[1], ins[2]].map(|x| self.view(x)) {
                        [Some((src, q0, width)), Some((_, k0, _)), Some((_, v0, _))] => {
                            k::Qkv::columns_of(f32_of(src)?, width, [q0, k0, v0])
                        }
                        _ => k::Qkv::dense(
                            f32_of(ins[0])?,
                            f32_of(ins[1])?,
                            f32_of(ins[2])?,
                            [n_heads * head_dim, n_kv_heads * head_dim],
                        ),
                    };
                    kernel(qkv, *seq, *n_heads, *n_kv_heads, *head_dim, *scale, out)
                        .map_err(kerr)?
                }
                Op::SpaceToChannel { grid, block } => k::space_to_channel_f32(
                    f32_of(ins[0])?,
                    *grid,
                    *block,
                    g.fact(ins[0]).shape[1],
                    out,
                )
                .map_err(kerr)?,
                Op::Attention {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    scale,
                    mode: AttentionMode::Causal,
                    ..
                } => {
                    let (q, pos, n_valid) = (f32_of(ins[0])?, scalar(ins[3])?, scalar(ins[4])?);
                    let (nh, nkv, hd, sc) = (*n_heads, *n_kv_heads, *head_dim, *scale);
                    match (kv_of(ins[1])?, kv_of(ins[2])?) {
                        (KvRef::F32(kc), KvRef::F32(vc)) => {
                            k::attention_f32(q, kc, vc, pos, n_valid, nh, nkv, hd, sc, out)
                        }
                        (KvRef::F16(kc), KvRef::F16(vc)) => {
                            k::attention_f32(q, kc, vc, pos, n_valid, nh, nkv, hd, sc, out)
                        }
                        (KvRef::Q8Head(kc), KvRef::Q8Head(vc)) => {
                            k::attention_f32(q, kc, vc, pos, n_valid, nh, nkv, hd, sc, out)
                        }
                        _ => return Err(exec_err(g, id, "k and v caches differ in type")),
                    }
                    .map_err(kerr)?;
                }
                Op::Silu => k::activation_f32(f32_of(ins[0])?, npurt_graph::Activation::Silu, out)
                    .map_err(kerr)?,
                Op::Gelu { tanh } => k::gelu_f32(f32_of(ins[0])?, *tanh, out).map_err(kerr)?,
                Op::Softmax => {
                    k::softmax_f32(f32_of(ins[0])?, node.fact.last_dim(), out).map_err(kerr)?
                }
                Op::Transpose { perm } => {
                    r::transpose(f32_of(ins[0])?, &g.fact(ins[0]).shape, perm, out)
                }
                Op::SelectRow => {
                    let idx = scalar(ins[1])?;
                    r::select_row(f32_of(ins[0])?, node.fact.shape[1], idx as i32, out)
                        .map_err(kerr)?;
                }
                Op::KvWrite => unreachable!("written above"),
                Op::Reshape { .. } => unreachable!("a reshape aliases its input"),
                Op::Input { .. } | Op::Weight { .. } | Op::State { .. } => {
                    unreachable!("sources are not computed")
                }
            }
        }
        Ok(())
    }
}

impl Executable for CpuExecutable {
    fn new_scratch(&self) -> Result<Box<dyn Scratch>> {
        // Up to 15 more f32 to start on a 64-byte boundary.
        let mut buf = Vec::new();
        buf.try_reserve_exact(self.arena_len + 15)
            .map_err(|_| BackendError::OutOfMemory {
                what: "the activation arena".into(),
                bytes: self.arena_len * 4,
            })?;
        buf.resize(self.arena_len + 15, 0.0);
        let start = buf.as_ptr().align_offset(64).min(15);
        Ok(Box::new(CpuScratch {
            buf,
            start,
            len: self.arena_len,
        }))
    }

    fn run(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<()> {
        let scratch = scratch
            .as_any_mut()
            .downcast_mut::<CpuScratch>()
            .ok_or_else(|| BackendError::Binding("scratch from another executable".into()))?;
        match &self.pool {
            Some(p) => p.install(|| self.run_inner(bindings, scratch, None)),
            None => self.run_inner(bindings, scratch, None),
        }
    }

    /// Times each node with the host clock (the kernels run on this host).
    fn profile(&self, bindings: &Bindings, scratch: &mut dyn Scratch) -> Result<Profile> {
        let scratch = scratch
            .as_any_mut()
            .downcast_mut::<CpuScratch>()
            .ok_or_else(|| BackendError::Binding("scratch from another executable".into()))?;
        let threads = self.pool.as_ref().map_or(1, |p| p.threads());
        let mut p = Profile {
            method: format!("cpu ({threads} threads), the host clock around each node"),
            nodes: Vec::new(),
            host: Default::default(),
        };
        match &self.pool {
            Some(pool) => pool.install(|| self.run_inner(bindings, scratch, Some(&mut p)))?,
            None => self.run_inner(bindings, scratch, Some(&mut p))?,
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::bidirectional_views;
    use npurt_graph::{Builder, Op, TensorFact};

    /// q, k and v slices of one product read only by a bidirectional attention are
    /// views; a slice anything else reads, or of another value, is copied.
    #[test]
    fn only_slices_of_one_product_read_by_bidirectional_attention_are_views() {
        let mut b = Builder::new();
        let x = b.input("qkv", TensorFact::f32([10, 24])).unwrap();
        let y = b.input("other", TensorFact::f32([10, 24])).unwrap();
        let cols =
            |b: &mut Builder, x, start| b.op("s", Op::SliceCols { start, len: 8 }, &[x]).unwrap();
        let (q, k, v) = (cols(&mut b, x, 0), cols(&mut b, x, 8), cols(&mut b, x, 16));
        let a = b.attention_bidirectional("a", [q, k, v], 2, 4, 5).unwrap();
        // v also read by an add: every slice of this attention is copied.
        let (q2, k2, v2) = (cols(&mut b, x, 0), cols(&mut b, x, 8), cols(&mut b, x, 16));
        let a2 = b
            .attention_bidirectional("a2", [q2, k2, v2], 2, 4, 5)
            .unwrap();
        let s = b.add("sum", v2, v2).unwrap();
        // k from another value.
        let (q3, k3, v3) = (cols(&mut b, x, 0), cols(&mut b, y, 8), cols(&mut b, x, 16));
        let a3 = b
            .attention_bidirectional("a3", [q3, k3, v3], 2, 4, 5)
            .unwrap();
        for (name, id) in [("a", a), ("a2", a2), ("s", s), ("a3", a3)] {
            b.output(name, id);
        }
        let g = b.finish().unwrap();
        let views = bidirectional_views(&g);
        let viewed: Vec<usize> = (0..views.len()).filter(|&i| views[i]).collect();
        assert_eq!(viewed, [q.0, k.0, v.0], "{g}");
    }
}
