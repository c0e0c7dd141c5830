//! Lowering: each graph node becomes a list of dispatches (pipeline key, uniform
//! parameters, bindings, workgroup counts). Nothing here touches the GPU; the
//! executable resolves the bindings to buffers and records the dispatches.
//! Each shader's uniform and bindings are typed structs (`shader_args.rs`, checked
//! against the `.wgsl` files in `kernels/src/wgsl/` by its tests).

use super::buffers::WgpuBuffer;
use super::pipelines::PipelineKey;
use super::shader_args::{self as args, Bindings, RopeSpec, Uniform};
use super::variants::{KernelFamily, KernelVariants, TileSizes};
use crate::DeviceBuffer;
use npurt_graph::{
    Activation, DType, Epilogue, Graph, MatMulOperands, NodeId, Op, Prologue, RopeParams,
    RopeScaling, Step,
};
use std::sync::Arc;

/// Max workgroups per dispatch dimension (WebGPU's guaranteed limit).
pub(crate) const MAX_GROUPS: u32 = 65535;
/// Workgroup memory the `Tiled` kernels need at most: matmul.wgsl's gemm stages two
/// 64 x 9 tiles of f32 quads, the weight rows' affine maps and (NORM) the rows'
/// inverse RMS with its partial sums (19.8 KiB); attention.wgsl declares q, K/V and
/// score blocks for attention_rows plus attention's query row, its groups' key tiles
/// and their states to merge (27.2 KiB, counted whole in case a driver sizes the
/// module rather than the entry point).
pub(crate) const TILED_WORKGROUP_BYTES: u32 = {
    let gemm = 2 * 64 * 9 * 16 + 64 * 8 + (64 + 256) * 4;
    let rows = 1024 + 4128 + 256;
    let attention = (rows + MAX_HEAD_DIM as u32 + 4 * 64 + 4 * MAX_HEAD_DIM as u32 + 2 * 4) * 4;
    if gemm > attention {
        gemm
    } else {
        attention
    }
};
/// Workgroup memory of matmul.wgsl's gemm_coop: the f16 hi/lo activation and weight
/// tiles (64 rows of 40 each), the 64 x 64 f32 sums, and (NORM) the rows' inverse RMS
/// with its partial sums (37.3 KiB).
pub(crate) const COOP_WORKGROUP_BYTES: u32 = 2 * 2 * 64 * 40 * 2 + 64 * 64 * 4 + (64 + 256) * 4;
/// act_quant.wgsl's words per row and 32-value block (8 of i8, scale, sum).
const ACT_QUANT_WORDS: usize = 10;
/// attention.wgsl's `attention_rows` (query rows sharing K/V tiles): blocks of
/// `ROWS_BLOCK` rows, head_dim up to `ROWS_HEAD_DIM`.
const ROWS_BLOCK: usize = 8;
const ROWS_HEAD_DIM: usize = 128;
/// Rows up to which a matmul uses the GEMV kernel (matmul.wgsl `gemv`, whose per-row
/// partials live in registers: GEMV_ROWS of them per thread).
pub(crate) const GEMV_MAX_ROWS: usize = 8;
/// Workgroups below which a gemv keeps one column per thread (`LowerCtx::gemv_shape`):
/// about two per compute unit of a large GPU.
const GEMV_MIN_GROUPS: usize = 256;

/// matmul.wgsl gemv's per-node shape (`LowerCtx::gemv_shape`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GemvShape {
    /// Threads per column group (GEMV_LANES).
    pub lanes: u32,
    /// Output columns per thread (GEMV_R).
    pub cols: u32,
    /// K units each thread loads per step and column (GEMV_UNITS).
    pub units: u32,
}

impl GemvShape {
    /// The shape for an m x k x n matmul whose rows hold `units` K units (32-value
    /// blocks or quads), with up to `max_lanes` threads per column (a power of two)
    /// and `forced_cols` columns per thread (0: picked here).
    /// - Threads per column (`lanes`): the largest power of two up to `units` and
    ///   `max_lanes`. More threads per column put more of a decode step's weight
    ///   loads in flight at once, which is what bounds a GEMV on a GPU's memory; more
    ///   than the row has units would idle (SmolLM2's 576-wide rows hold 18 blocks:
    ///   16 lanes, not 32).
    /// - Columns per thread (`cols`): 4, else 2, where the grid keeps at least
    ///   `GEMV_MIN_GROUPS` workgroups and m <= 2 (the partials are cols x m registers);
    ///   each activation load then serves that many columns. `forced_cols` (from
    ///   `TileSizes::gemv_cols`) overrides it.
    /// - Units loaded per step and column (`units`): 2, or 1 for a GLU at 4 columns
    ///   (its gate and up rows: 8 loads in flight either way; more would cost
    ///   registers, and so threads resident, for no more bytes in flight).
    pub(crate) fn pick(
        max_lanes: u32,
        forced_cols: u32,
        m: usize,
        units: usize,
        n: usize,
        glu: bool,
    ) -> GemvShape {
        let fit = units.clamp(1, max_lanes as usize) as u32;
        let lanes = 1 << (31 - fit.leading_zeros());
        let groups = (64 / lanes) as usize;
        let cols = match forced_cols {
            0 => [4, 2]
                .into_iter()
                .find(|&c| m <= 2 && n.div_ceil(groups * c) >= GEMV_MIN_GROUPS)
                .unwrap_or(1),
            forced => forced as usize,
        };
        GemvShape {
            lanes,
            cols: cols as u32,
            units: if cols == 4 && glu { 1 } else { 2 },
        }
    }
}

/// attention.wgsl `MAX_HEAD_DIM`.
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// attention_combine.wgsl `MAX_SPLITS`: the most key ranges a decode row's attention
/// is split into.
pub(crate) const MAX_ATTENTION_SPLITS: usize = 32;
/// Workgroups a decode attention's grid is given by splitting its keys, where the
/// cache is long enough: a decode step has one (row, head) per query head, 9 for
/// SmolLM2-135M, which would leave all but 9 of a GPU's cores idle while one
/// workgroup per head walks a long context. 256 fills a datacenter GPU's 100-odd
/// cores twice; a phone GPU's few cores just run the ranges in turn.
const ATTENTION_SPLIT_GROUPS: usize = 256;
/// attention_split.wgsl `SPLIT_MIN_KEYS`: the shortest key range (one step of
/// `attention`).
const ATTENTION_STEP_KEYS: usize = 256;

/// The key ranges (attention.wgsl `SPLIT_KEYS`) each of a decode attention's `grid`
/// (rows x heads) rows is split into over a cache of `cache_rows`: `forced`
/// (`TileSizes::attn_splits`), else on a GPU enough for `ATTENTION_SPLIT_GROUPS`
/// workgroups but no more than the full cache has steps; 1 is no split. A CPU driver
/// gets none: lavapipe spends about 25 us on each workgroup of 256 threads, even one
/// that returns at once (SmolLM2's decode step at 16 tokens, tiled: 2.2 ms of
/// attention per layer unsplit, 4.1 ms in 8 ranges), and its cores are busy anyway.
fn attention_splits(forced: u32, cpu_driver: bool, grid: usize, cache_rows: usize) -> usize {
    match forced {
        0 if cpu_driver => 1,
        0 => ATTENTION_SPLIT_GROUPS
            .div_ceil(grid.max(1))
            .min(cache_rows.div_ceil(ATTENTION_STEP_KEYS))
            .clamp(1, MAX_ATTENTION_SPLITS),
        n => n as usize,
    }
}
/// transpose.wgsl handles up to 8 dims.
pub(crate) const MAX_TRANSPOSE_RANK: usize = 8;

/// What a binding refers to; resolved to a buffer per run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BindRef {
    /// This dispatch's uniform parameters.
    Params,
    /// Wherever node `id`'s value lives (bound source, weight, scratch slot, alias).
    Value(NodeId),
    /// Part `p` of the weight at node `id`.
    WeightPart(NodeId, usize),
    /// Temporary `i` of the node being lowered (scratch, live during the node only).
    Temp(usize),
    /// Constant buffer `i` of the node being lowered (uploaded at compile time).
    Const(usize),
    /// The run's kernel status words.
    Status,
}

pub(crate) struct Dispatch {
    pub key: PipelineKey,
    /// The uniform's bytes (a `shader_args` `Params`).
    pub params: Vec<u8>,
    pub bindings: Vec<(u32, BindRef)>,
    pub groups: [u32; 3],
    /// How `groups` covers the node's rows.
    pub rows: RowGrid,
}

/// How a dispatch's grid covers its node's output rows, so that a prefill chunk can
/// run on its valid rows only (`npurt_graph::rows`): for a node whose rows are the
/// chunk's token rows, the executable sizes such a grid to the first `n_valid` rows on
/// the GPU (valid_rows.wgsl) and dispatches it indirectly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowGrid {
    /// The grid does not map rows to workgroups in order: it always runs whole.
    Whole,
    /// A flat grid (`grid_1d`) of `threads` threads in groups of `wg`, thread `i`
    /// working on element `i` of the row-major output (or of a row-major block list):
    /// the first rows are the first threads.
    Flat { threads: u32, wg: u32 },
    /// Grid dimension `axis` counts blocks of `rows` rows, in order.
    Axis { axis: u32, rows: u32 },
}

impl Dispatch {
    fn new(key: PipelineKey, params: impl Uniform, bind: impl Bindings, groups: [u32; 3]) -> Self {
        Dispatch {
            key,
            params: bytemuck::bytes_of(&params).to_vec(),
            bindings: bind.entries(),
            groups,
            rows: RowGrid::Whole,
        }
    }

    /// A dispatch over a flat grid of `threads` in groups of `wg` (`grid_1d`), one
    /// thread per element (or block) of the row-major output.
    fn flat(
        key: PipelineKey,
        params: impl Uniform,
        bind: impl Bindings,
        threads: usize,
        wg: usize,
    ) -> Result<Self, String> {
        let mut d = Dispatch::new(key, params, bind, grid_1d(threads, wg)?);
        d.rows = RowGrid::Flat {
            threads: as_u32(threads, "threads")?,
            wg: wg as u32,
        };
        Ok(d)
    }

    /// This dispatch with its grid covering the rows as `rows` says.
    fn with_rows(mut self, rows: RowGrid) -> Self {
        self.rows = rows;
        self
    }
}

#[derive(Default)]
pub(crate) struct Lowered {
    pub dispatches: Vec<Dispatch>,
    /// Bytes of each temporary.
    pub temps: Vec<u64>,
    /// Contents of each constant buffer.
    pub consts: Vec<Vec<u8>>,
}

/// What lowering needs to know beyond the graph.
pub(crate) struct LowerCtx<'a> {
    pub graph: &'a Graph,
    pub kernels: KernelFamily,
    pub variants: KernelVariants,
    /// Nodes read in place from their input (`in_place_nodes`): no dispatch of their own.
    pub views: &'a [bool],
    /// KV writes paired into one dispatch (`kv_write_pairs`).
    pub kv_pairs: &'a [Option<NodeId>],
    /// The adapter's smallest subgroup size.
    pub subgroup_min: u32,
    /// Tile sizes (gemm rows, gemv columns per thread, attention key ranges).
    pub tiles: TileSizes,
    /// The adapter runs on the CPU (lavapipe): its few cores are kept busy by a
    /// decode step's heads already, so decode attention's keys are not split.
    pub cpu_driver: bool,
    /// Prepared weights by node index.
    pub weights: &'a [Option<Arc<dyn DeviceBuffer>>],
}

/// The nodes this backend reads in place rather than computes, each with no dispatch
/// of its own: column slices (`SliceCols`) whose every reader reads a row-strided
/// window of the sliced matrix (a RoPE's input, a KV write's new rows, a causal
/// attention's queries), and ropes whose every reader rotates as it reads
/// ([`fused_rope_reader`]); neither is a graph output. A decode step of a fused-QKV
/// LLaMA then runs five dispatches fewer per layer (three slices, two ropes).
pub(crate) fn in_place_nodes(g: &Graph) -> Vec<bool> {
    let readers = readers(g);
    let mut in_place: Vec<bool> = g
        .ids()
        .map(|id| match g.node(id).op {
            Op::SliceCols { .. } => readers[id.0].iter().all(|&(r, slot)| {
                let reader = &g.node(r).op;
                matches!((reader, slot), (Op::Rope { .. }, 0) | (Op::KvWrite, 1))
                    || (slot == 0 && is_causal_attention(reader))
            }),
            Op::Rope { .. } => {
                !readers[id.0].is_empty()
                    && readers[id.0]
                        .iter()
                        .all(|&(r, slot)| fused_rope_reader(g, id, r, slot))
            }
            _ => false,
        })
        .collect();
    for (_, id) in &g.outputs {
        in_place[id.0] = false;
    }
    in_place
}

/// KV writes run two to a dispatch (`kv_write.wgsl` KV_PAIR): a layer's K write and
/// the V write right after it, of the same cache shape and type, at the same
/// positions. `pairs[a] = Some(b)` and `pairs[b] = Some(a)`; the first (a < b) runs
/// both and the second no dispatch. Only nodes without a dispatch of their own may sit
/// between the two (sources, reshapes, in-place nodes), so everything the second
/// reads is computed before the first runs, and nothing in between reads a cache. The
/// two write different caches, neither reads the other's, and the second's new rows
/// are never a fused rope (the pair kernel rotates the first's only).
pub(crate) fn kv_write_pairs(g: &Graph, in_place: &[bool]) -> Vec<Option<NodeId>> {
    let mut pairs = vec![None; g.nodes.len()];
    // The node whose storage `id`'s value is (through KV writes, reshapes and
    // in-place nodes).
    let root = |mut id: NodeId| {
        while in_place[id.0] || matches!(g.node(id).op, Op::KvWrite | Op::Reshape { .. }) {
            id = g.node(id).inputs[0];
        }
        id
    };
    let no_dispatch = |id: NodeId| {
        let op = &g.node(id).op;
        op.is_source() || matches!(op, Op::Reshape { .. }) || in_place[id.0]
    };
    let ids: Vec<NodeId> = g.ids().collect();
    for (i, &a) in ids.iter().enumerate() {
        let na = g.node(a);
        if !matches!(na.op, Op::KvWrite) || pairs[a.0].is_some() {
            continue;
        }
        let Some(&b) = ids[i + 1..].iter().find(|&&x| !no_dispatch(x)) else {
            continue;
        };
        let nb = g.node(b);
        let pairable = matches!(nb.op, Op::KvWrite)
            && nb.inputs[2] == na.inputs[2]
            && g.fact(nb.inputs[0]) == g.fact(na.inputs[0])
            && g.fact(nb.inputs[1]).shape == g.fact(na.inputs[1]).shape
            && !(matches!(g.node(nb.inputs[1]).op, Op::Rope { .. }) && in_place[nb.inputs[1].0])
            && {
                let (ca, cb) = (root(na.inputs[0]), root(nb.inputs[0]));
                ca != cb && root(na.inputs[1]) != cb && root(nb.inputs[1]) != ca
            };
        if pairable {
            pairs[a.0] = Some(b);
            pairs[b.0] = Some(a);
        }
    }
    pairs
}

/// Every node's readers, as (reader, input slot).
fn readers(g: &Graph) -> Vec<Vec<(NodeId, usize)>> {
    let mut readers = vec![Vec::new(); g.nodes.len()];
    for id in g.ids() {
        for (slot, x) in g.node(id).inputs.iter().enumerate() {
            readers[x.0].push((id, slot));
        }
    }
    readers
}

fn is_causal_attention(op: &Op) -> bool {
    matches!(
        op,
        Op::Attention {
            mode: npurt_graph::AttentionMode::Causal,
            ..
        }
    )
}

/// Whether input `slot` of node `reader` may read rope `rope` by rotating the rope's
/// input as it reads it: a KV write's new rows (kv_write.wgsl ROPE) at the rope's
/// positions, or a causal attention's queries (q_load.wgsl ROPE_Q) at its positions
/// and with its head_dim.
fn fused_rope_reader(g: &Graph, rope: NodeId, reader: NodeId, slot: usize) -> bool {
    let (Op::Rope { params }, r) = (&g.node(rope).op, g.node(rope)) else {
        return false;
    };
    let n = g.node(reader);
    match &n.op {
        Op::KvWrite => slot == 1 && n.inputs[2] == r.inputs[1],
        Op::Attention { head_dim, .. } if is_causal_attention(&n.op) => {
            slot == 0
                && *head_dim == params.head_dim
                && n.inputs[3] == r.inputs[1]
                && n.inputs[4] == r.inputs[2]
        }
        _ => false,
    }
}

/// A rope's RopeSpec (rope_spec.wgsl), and the binding of its frequency table
/// (`inv_freq`), added to the node's constants: position-independent frequencies
/// computed here exactly as the reference does; dynamic NTK rescales in the shader
/// from pos + n_valid.
fn rope_spec(p: &RopeParams, consts: &mut Vec<Vec<u8>>) -> Result<(RopeSpec, BindRef), String> {
    let inv = npurt_kernels::reference::rope_inv_freq(p, 0);
    let (dynamic, factor, orig) = match p.scaling {
        RopeScaling::DynamicNtk {
            factor,
            original_max_position,
        } => (1, factor, original_max_position),
        _ => (0, 1.0, 0),
    };
    let spec = RopeSpec {
        head_dim: as_u32(p.head_dim, "rope head_dim")?,
        rotary_dim: as_u32(p.rotary_dim, "rotary_dim")?,
        dynamic_ntk: dynamic,
        theta: p.theta,
        factor,
        original_max_position: as_u32(orig, "original_max_position")?,
        _pad: [0; 2],
    };
    consts.push(inv.iter().flat_map(|v| v.to_le_bytes()).collect());
    Ok((spec, BindRef::Const(consts.len() - 1)))
}

impl LowerCtx<'_> {
    /// How a strided reader finds row t of `id`'s value in its storage: (row stride,
    /// column offset), in values. A view of a slice reads its input's rows, a fused
    /// rope its input's.
    pub(crate) fn strided(&self, id: NodeId) -> (usize, usize) {
        let n = self.graph.node(id);
        match n.op {
            Op::SliceCols { start, .. } if self.views[id.0] => {
                (self.graph.fact(n.inputs[0]).shape[1], start)
            }
            Op::Rope { .. } if self.views[id.0] => self.strided(n.inputs[0]),
            _ => (n.fact.shape[1], 0),
        }
    }

    /// The rope `id` is, when it is fused into its readers (`in_place_nodes`): its
    /// params and its n_valid input.
    fn fused_rope(&self, id: NodeId) -> Option<(&RopeParams, NodeId)> {
        let n = self.graph.node(id);
        match &n.op {
            Op::Rope { params } if self.views[id.0] => Some((params, n.inputs[2])),
            _ => None,
        }
    }

    /// matmul.wgsl's gemv shape for an m x k x n matmul on this device
    /// ([`GemvShape::pick`]): at most 16 threads per column through workgroup memory,
    /// or with the subgroup variant one subgroup, up to 32 (a column must not span
    /// two subgroups).
    pub(crate) fn gemv_shape(&self, m: usize, units: usize, n: usize, glu: bool) -> GemvShape {
        let max_lanes = if self.variants.subgroup {
            self.subgroup_min.min(32)
        } else {
            16
        };
        GemvShape::pick(max_lanes, self.tiles.gemv_cols, m, units, n, glu)
    }

    /// The prepared weight behind `id` (following reshapes), if `id` is one.
    pub(crate) fn weight(&self, mut id: NodeId) -> Option<&WgpuBuffer> {
        loop {
            let n = self.graph.node(id);
            match n.op {
                Op::Reshape { .. } => id = n.inputs[0],
                Op::Weight { .. } => {
                    return self.weights[id.0]
                        .as_ref()
                        .and_then(|b| WgpuBuffer::downcast(b.as_ref()).ok())
                }
                _ => return None,
            }
        }
    }
}

fn as_u32(v: usize, what: &str) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} ({v}) exceeds 32 bits"))
}

/// Workgroup counts for `threads` threads in groups of `wg`, folded into y past 65535.
pub(crate) fn grid_1d(threads: usize, wg: usize) -> Result<[u32; 3], String> {
    let groups = threads.div_ceil(wg).max(1);
    if groups <= MAX_GROUPS as usize {
        return Ok([groups as u32, 1, 1]);
    }
    let y = groups.div_ceil(MAX_GROUPS as usize);
    if y > MAX_GROUPS as usize {
        return Err(format!("{threads} threads exceed one dispatch"));
    }
    Ok([MAX_GROUPS, y as u32, 1])
}

const EW: usize = 256;

fn weight_defines(dtype: DType) -> Result<&'static [&'static str], String> {
    // (f16 goes through unpack2x16float on u32 words: no SHADER_F16 needed.)
    Ok(match dtype {
        DType::F32 => &["W_F32"],
        DType::F16 => &["W_F16", "W_HALF"],
        DType::BF16 => &["W_BF16", "W_HALF"],
        // W_OFFSET: the block's values are d * q + c with c != 0 (weights.wgsl
        // w_affine_from_bits).
        DType::Q4_0 => &["W_Q4_0", "W_BLOCKS", "W_OFFSET"],
        DType::Q4_1 => &["W_Q4_1", "W_BLOCKS", "W_OFFSET"],
        DType::Q8_0 => &["W_Q8_0", "W_BLOCKS"],
        DType::Q8Channel => &["W_Q8_CHANNEL"],
        d => return Err(format!("{d} weights are not supported by the wgpu backend")),
    })
}

/// A weight-like operand: the parts to bind (one for activations), with their rows
/// and scale offsets.
struct WeightOperand {
    dtype: DType,
    parts: Vec<(BindRef, std::ops::Range<usize>, u32)>,
}

fn weight_operand(cx: &LowerCtx, id: NodeId) -> WeightOperand {
    let fact = cx.graph.fact(id);
    match cx.weight(id) {
        Some(w) => WeightOperand {
            dtype: w.fact.dtype,
            parts: w
                .parts
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        BindRef::WeightPart(id_of_weight(cx, id), i),
                        p.layout.rows.clone(),
                        p.layout.scale_offset_words,
                    )
                })
                .collect(),
        },
        None => WeightOperand {
            dtype: fact.dtype,
            parts: vec![(BindRef::Value(id), 0..fact.rows().max(1), 0)],
        },
    }
}

fn id_of_weight(cx: &LowerCtx, mut id: NodeId) -> NodeId {
    while let Op::Reshape { .. } = cx.graph.node(id).op {
        id = cx.graph.node(id).inputs[0];
    }
    id
}

fn elementwise(
    entry: &'static str,
    n: usize,
    y_len: usize,
    cols: usize,
    x: BindRef,
    y: Option<BindRef>,
    out: BindRef,
) -> Result<Dispatch, String> {
    Dispatch::flat(
        PipelineKey::new("elementwise.wgsl", entry, &[]),
        args::elementwise::Params {
            n: as_u32(n, "elements")?,
            y_len: as_u32(y_len.max(1), "broadcast length")?,
            cols: as_u32(cols, "columns")?,
        },
        args::elementwise::Bindings { x, y, out },
        n,
        EW,
    )
}

/// Lowers node `id`. Sources and reshapes produce no dispatch.
pub(crate) fn lower(cx: &LowerCtx, id: NodeId) -> Result<Lowered, String> {
    let g = cx.graph;
    let node = g.node(id);
    let ins = &node.inputs;
    let out = BindRef::Value(id);
    let n_out = node.fact.elems().ok_or("output size overflows")?;
    let node_idx = as_u32(id.0, "node index")?;
    let mut l = Lowered::default();
    let d = &mut l.dispatches;
    match &node.op {
        Op::Input { .. } | Op::Weight { .. } | Op::State { .. } | Op::Reshape { .. } => {}
        Op::Add | Op::Mul => {
            let entry = if matches!(node.op, Op::Add) {
                "add"
            } else {
                "mul"
            };
            let y_len = g.fact(ins[1]).elems().unwrap_or(1);
            d.push(elementwise(
                entry,
                n_out,
                y_len,
                0,
                BindRef::Value(ins[0]),
                Some(BindRef::Value(ins[1])),
                out,
            )?);
        }
        Op::Silu => d.push(elementwise(
            "silu_op",
            n_out,
            1,
            0,
            BindRef::Value(ins[0]),
            None,
            out,
        )?),
        Op::Gelu { tanh } => d.push(elementwise(
            if *tanh { "gelu_tanh_op" } else { "gelu_erf_op" },
            n_out,
            1,
            0,
            BindRef::Value(ins[0]),
            None,
            out,
        )?),
        // norm.wgsl's entry points are named as the ops; the weight and (layer_norm)
        // bias are the op's further inputs, softmax has none.
        Op::RmsNorm { .. } | Op::LayerNorm { .. } | Op::Softmax => {
            let x = g.fact(ins[0]);
            let (rows, h) = (x.rows().max(1), x.last_dim());
            let eps = match node.op {
                Op::RmsNorm { eps } | Op::LayerNorm { eps } => eps,
                _ => 0.0,
            };
            let bind = args::norm::Bindings {
                x: BindRef::Value(ins[0]),
                weight: ins.get(1).map(|&w| BindRef::Value(w)),
                bias: ins.get(2).map(|&b| BindRef::Value(b)),
                out,
            };
            d.push(norm_dispatch(node.op.kind(), rows, h, eps, bind)?);
        }
        // Fused into its readers (kv_write.wgsl ROPE, q_load.wgsl ROPE_Q).
        Op::Rope { .. } if cx.views[id.0] => {}
        Op::Rope { params: p } => {
            let width = node.fact.shape[1];
            let (spec, inv_freq) = rope_spec(p, &mut l.consts)?;
            let (stride, offset) = cx.strided(ins[0]);
            l.dispatches.push(Dispatch::flat(
                PipelineKey::new("rope.wgsl", "rope", &[]),
                args::rope::Params {
                    n: as_u32(n_out, "elements")?,
                    width: as_u32(width, "width")?,
                    node: node_idx,
                    in_stride: as_u32(stride, "row stride")?,
                    in_offset: as_u32(offset, "column offset")?,
                    rope: spec,
                    ..Default::default()
                },
                args::rope::Bindings {
                    x: BindRef::Value(ins[0]),
                    pos_in: BindRef::Value(ins[1]),
                    n_valid_in: BindRef::Value(ins[2]),
                    inv_freq,
                    out,
                    status: BindRef::Status,
                },
                n_out,
                EW,
            )?);
            return Ok(l);
        }
        // Written by the first of its pair (KV_PAIR).
        Op::KvWrite if cx.kv_pairs[id.0].is_some_and(|a| a < id) => {}
        Op::KvWrite => {
            let cache = g.fact(ins[0]);
            let new = g.fact(ins[1]);
            let mut n = new.elems().ok_or("kv rows overflow")?;
            // An f16 cache is written a word (two values) per thread, an int8 one a
            // block (one KV head's row) per thread.
            let mut head_dim = 0;
            match cache.dtype {
                DType::F16 => n /= 2,
                DType::Q8Head { head_dim: hd } => {
                    head_dim = hd as usize;
                    n /= head_dim.max(1);
                }
                _ => {}
            }
            let (stride, offset) = cx.strided(ins[1]);
            let mut params = args::kv_write::Params {
                n: as_u32(n, "elements")?,
                width: as_u32(cache.shape[1], "width")?,
                cache_rows: as_u32(cache.shape[0], "cache rows")?,
                new_rows: as_u32(new.shape[0], "rows")?,
                node: node_idx,
                head_dim: as_u32(head_dim, "head_dim")?,
                src_stride: as_u32(stride, "row stride")?,
                src_offset: as_u32(offset, "column offset")?,
                ..Default::default()
            };
            let mut defines = kv_defines(cache.dtype).to_vec();
            let mut bind = args::kv_write::Bindings {
                new_rows: BindRef::Value(ins[1]),
                pos_in: BindRef::Value(ins[2]),
                cache: BindRef::Value(ins[0]),
                status: BindRef::Status,
                n_valid_in: None,
                inv_freq: None,
                v_rows: None,
                v_cache: None,
            };
            if let Some((p, n_valid)) = cx.fused_rope(ins[1]) {
                let (spec, inv_freq) = rope_spec(p, &mut l.consts)?;
                params.rope = spec;
                defines.push("ROPE");
                bind.n_valid_in = Some(BindRef::Value(n_valid));
                bind.inv_freq = Some(inv_freq);
            }
            let mut threads = n;
            if let Some(b) = cx.kv_pairs[id.0] {
                let bi = &g.node(b).inputs;
                let (v_stride, v_offset) = cx.strided(bi[1]);
                params.v_stride = as_u32(v_stride, "row stride")?;
                params.v_offset = as_u32(v_offset, "column offset")?;
                defines.push("KV_PAIR");
                bind.v_rows = Some(BindRef::Value(bi[1]));
                bind.v_cache = Some(BindRef::Value(bi[0]));
                threads = 2 * n;
            }
            l.dispatches.push(Dispatch::new(
                PipelineKey::new("kv_write.wgsl", "kv_write", &defines),
                params,
                bind,
                grid_1d(threads, EW)?,
            ));
            return Ok(l);
        }
        Op::Attention {
            n_heads,
            n_kv_heads,
            head_dim,
            scale,
            mode: npurt_graph::AttentionMode::Causal,
            ..
        } => {
            let t = g.fact(ins[0]).shape[0];
            let s = g.fact(ins[1]).shape[0];
            if *head_dim > MAX_HEAD_DIM {
                return Err(format!("head_dim {head_dim} > {MAX_HEAD_DIM}"));
            }
            let lanes = cx.kernels == KernelFamily::Lanes && head_dim % 4 == 0;
            let mut defines = kv_defines(g.fact(ins[1]).dtype).to_vec();
            let (q_stride, q_offset) = cx.strided(ins[0]);
            let mut params = args::attention::Params {
                t_rows: as_u32(t, "rows")?,
                n_heads: as_u32(*n_heads, "heads")?,
                n_kv_heads: as_u32(*n_kv_heads, "kv heads")?,
                head_dim: as_u32(*head_dim, "head_dim")?,
                s_rows: as_u32(s, "cache rows")?,
                scale: *scale,
                node: node_idx,
                q_stride: as_u32(q_stride, "q row stride")?,
                q_offset: as_u32(q_offset, "q offset")?,
                ..Default::default()
            };
            let mut bind = args::attention::Bindings {
                q: BindRef::Value(ins[0]),
                k_cache: BindRef::Value(ins[1]),
                v_cache: BindRef::Value(ins[2]),
                pos_in: Some(BindRef::Value(ins[3])),
                n_valid_in: Some(BindRef::Value(ins[4])),
                out,
                inv_freq: None,
                status: Some(BindRef::Status),
            };
            if let Some((p, _)) = cx.fused_rope(ins[0]) {
                let (spec, inv_freq) = rope_spec(p, &mut l.consts)?;
                params.rope = spec;
                defines.push("ROPE_Q");
                bind.inv_freq = Some(inv_freq);
            }
            let hd = format!("HEAD_DIM={head_dim}");
            defines.push(&hd);
            let (key, groups, rows) = if lanes {
                (
                    PipelineKey::new("attention_lanes.wgsl", "attention_lanes", &defines),
                    [
                        as_u32(t.div_ceil(64), "rows")?,
                        as_u32(*n_heads, "heads")?,
                        1,
                    ],
                    RowGrid::Axis { axis: 0, rows: 64 },
                )
            } else {
                let (entry, groups) = tiled_attention_entry(t, *n_heads, *head_dim)?;
                let rows = match entry {
                    "attention_rows" => ROWS_BLOCK as u32,
                    _ => 1,
                };
                (
                    PipelineKey::new("attention.wgsl", entry, &defines),
                    groups,
                    RowGrid::Axis { axis: 1, rows },
                )
            };
            if groups[0] > MAX_GROUPS || groups[1] > MAX_GROUPS {
                return Err("attention with more than 65535 heads or rows".into());
            }
            let splits = match key.entry {
                "attention" => {
                    attention_splits(cx.tiles.attn_splits, cx.cpu_driver, t * n_heads, s)
                }
                _ => 1,
            };
            if splits == 1 {
                l.dispatches
                    .push(Dispatch::new(key, params, bind, groups).with_rows(rows));
                return Ok(l);
            }
            // Flash-decoding: each of `splits` key ranges of a row and head is a
            // workgroup that leaves its softmax state in a temporary, and
            // attention_combine.wgsl merges them into the output.
            defines.push("SPLIT_KEYS");
            params.splits = splits as u32;
            let states = l.temps.len();
            l.temps
                .push((t * n_heads * splits * (head_dim + 2) * 4) as u64);
            bind.out = BindRef::Temp(states);
            l.dispatches.push(
                Dispatch::new(
                    PipelineKey::new("attention.wgsl", "attention", &defines),
                    params,
                    bind,
                    [groups[0], groups[1], splits as u32],
                )
                .with_rows(rows),
            );
            l.dispatches.push(
                Dispatch::new(
                    PipelineKey::new("attention_combine.wgsl", "attention_combine", &[]),
                    params,
                    args::attention_combine::Bindings {
                        states: BindRef::Temp(states),
                        pos_in: BindRef::Value(ins[3]),
                        n_valid_in: BindRef::Value(ins[4]),
                        out,
                    },
                    groups,
                )
                .with_rows(rows),
            );
            return Ok(l);
        }
        Op::Attention {
            n_heads,
            n_kv_heads,
            head_dim,
            scale,
            mode: npurt_graph::AttentionMode::Bidirectional { seq },
            precision,
        } => d.push(bidirectional_attention_dispatch(
            cx,
            [*n_heads, *n_kv_heads, *head_dim],
            *precision,
            *scale,
            *seq,
            g.fact(ins[0]).shape[0],
            [ins[0], ins[1], ins[2]],
            out,
            node_idx,
        )?),
        Op::SpaceToChannel { grid, block } => {
            let c = g.fact(ins[0]).shape[1];
            d.push(Dispatch::new(
                PipelineKey::new("space_to_channel.wgsl", "space_to_channel", &[]),
                args::space_to_channel::Params {
                    n: as_u32(n_out, "elements")?,
                    channels: as_u32(c, "channels")?,
                    grid_h: as_u32(grid[0], "grid height")?,
                    grid_w: as_u32(grid[1], "grid width")?,
                    block: as_u32(*block, "block")?,
                    cells_h: as_u32(grid[0].div_ceil(*block), "cells")?,
                    cells_w: as_u32(grid[1].div_ceil(*block), "cells")?,
                },
                args::space_to_channel::Bindings {
                    x: BindRef::Value(ins[0]),
                    out,
                },
                grid_1d(n_out, EW)?,
            ));
        }
        // A view: its readers read the input in place.
        Op::SliceCols { .. } if cx.views[id.0] => {}
        Op::SliceCols { start, len } => {
            let x = g.fact(ins[0]);
            d.push(Dispatch::flat(
                PipelineKey::new("rows.wgsl", "slice_cols", &[]),
                args::rows::Params {
                    n: as_u32(n_out, "elements")?,
                    rows: as_u32(x.shape[0], "rows")?,
                    in_width: as_u32(x.shape[1], "width")?,
                    start: as_u32(*start, "start")?,
                    out_width: as_u32(*len, "len")?,
                    node: node_idx,
                },
                args::rows::Bindings {
                    x: BindRef::Value(ins[0]),
                    out,
                    index_in: None,
                    status: None,
                },
                n_out,
                EW,
            )?);
        }
        Op::SelectRow => {
            let x = g.fact(ins[0]);
            let width = as_u32(x.shape[1], "width")?;
            d.push(Dispatch::new(
                PipelineKey::new("rows.wgsl", "select_row", &[]),
                args::rows::Params {
                    n: as_u32(n_out, "elements")?,
                    rows: as_u32(x.shape[0], "rows")?,
                    in_width: width,
                    start: 0,
                    out_width: width,
                    node: node_idx,
                },
                args::rows::Bindings {
                    x: BindRef::Value(ins[0]),
                    out,
                    index_in: Some(BindRef::Value(ins[1])),
                    status: Some(BindRef::Status),
                },
                grid_1d(n_out, EW)?,
            ));
        }
        Op::Transpose { perm } => {
            let shape = &g.fact(ins[0]).shape;
            if perm.len() > MAX_TRANSPOSE_RANK {
                return Err(format!(
                    "transpose of rank {} > {MAX_TRANSPOSE_RANK}",
                    perm.len()
                ));
            }
            let mut in_strides = vec![1usize; shape.len()];
            for i in (0..shape.len().saturating_sub(1)).rev() {
                in_strides[i] = in_strides[i + 1] * shape[i + 1];
            }
            let mut params = args::transpose::Params {
                n: as_u32(n_out, "elements")?,
                rank: perm.len() as u32,
                out_shape: [1; MAX_TRANSPOSE_RANK],
                ..Default::default()
            };
            for (i, &p) in perm.iter().enumerate() {
                params.out_shape[i] = as_u32(shape[p], "dim")?;
                params.in_stride[i] = as_u32(in_strides[p], "stride")?;
            }
            d.push(Dispatch::new(
                PipelineKey::new("transpose.wgsl", "transpose", &[]),
                params,
                args::transpose::Bindings {
                    x: BindRef::Value(ins[0]),
                    out,
                },
                grid_1d(n_out, EW)?,
            ));
        }
        Op::PatchEmbed { patch } => {
            let sh = &g.fact(ins[0]).shape;
            let dim = node.fact.shape[1];
            d.push(Dispatch::new(
                PipelineKey::new("patch_embed.wgsl", "patch_embed", &[]),
                args::patch_embed::Params {
                    n: as_u32(n_out, "elements")?,
                    channels_out: as_u32(dim, "channels")?,
                    channels_in: as_u32(sh[1], "channels")?,
                    height: as_u32(sh[2], "height")?,
                    width: as_u32(sh[3], "width")?,
                    patch_size: as_u32(*patch, "patch")?,
                    grid_h: as_u32(sh[2] / patch, "grid")?,
                    grid_w: as_u32(sh[3] / patch, "grid")?,
                },
                args::patch_embed::Bindings {
                    pixels: BindRef::Value(ins[0]),
                    weight: BindRef::Value(ins[1]),
                    bias: BindRef::Value(ins[2]),
                    out,
                },
                grid_1d(n_out, EW)?,
            ));
        }
        Op::Gather => {
            let table = weight_operand(cx, ins[0]);
            let tf = g.fact(ins[0]);
            let (vocab, width) = (tf.shape[0], tf.shape[1]);
            let tokens = g.fact(ins[1]).shape[0];
            let threads = tokens * width.div_ceil(4);
            for (w, rows, soff) in table.parts {
                d.push(Dispatch::flat(
                    PipelineKey::new("gather.wgsl", "gather", weight_defines(table.dtype)?),
                    args::gather::Params {
                        tokens: as_u32(tokens, "tokens")?,
                        width: as_u32(width, "width")?,
                        vocab: as_u32(vocab, "vocab")?,
                        row_begin: as_u32(rows.start, "row")?,
                        row_count: as_u32(rows.len(), "rows")?,
                        w_soff: soff,
                        node: node_idx,
                    },
                    args::gather::Bindings {
                        ids: BindRef::Value(ins[1]),
                        w,
                        out,
                        status: BindRef::Status,
                    },
                    threads,
                    EW,
                )?);
            }
        }
        Op::MatMul {
            transpose_b,
            act,
            prologue,
            epilogue,
        } => lower_matmul(cx, id, *transpose_b, *act, *prologue, *epilogue, &mut l)?,
    }
    Ok(l)
}

/// attention.wgsl's entry for `rows` query rows and its grid: `attention_rows` (blocks
/// of rows sharing each K/V tile) for prefill where the head fits its tiles, else
/// `attention` (a row per workgroup, its keys spread over the threads: decode).
fn tiled_attention_entry(
    rows: usize,
    n_heads: usize,
    head_dim: usize,
) -> Result<(&'static str, [u32; 3]), String> {
    let heads = as_u32(n_heads, "heads")?;
    Ok(if rows > 1 && head_dim <= ROWS_HEAD_DIM {
        (
            "attention_rows",
            [heads, as_u32(rows.div_ceil(ROWS_BLOCK), "row blocks")?, 1],
        )
    } else {
        ("attention", [heads, as_u32(rows, "rows")?, 1])
    })
}

/// The ViT's attention (`AttentionMode::Bidirectional`): attention.wgsl or
/// attention_lanes.wgsl with `BIDIRECTIONAL` (attention_i8.wgsl for integer products),
/// K/V read from the activations (bindings 2, 3) and the sequence length in the
/// cache-rows slot; no positions, nothing to check at run time. `heads` is `[n_heads,
/// n_kv_heads, head_dim]`, `ins` q, k, v.
#[allow(clippy::too_many_arguments)]
fn bidirectional_attention_dispatch(
    cx: &LowerCtx,
    [n_heads, n_kv_heads, head_dim]: [usize; 3],
    precision: npurt_graph::AttentionPrecision,
    scale: f32,
    seq: usize,
    rows: usize,
    ins: [NodeId; 3],
    out: BindRef,
    node_idx: u32,
) -> Result<Dispatch, String> {
    if head_dim > MAX_HEAD_DIM {
        return Err(format!("head_dim {head_dim} > {MAX_HEAD_DIM}"));
    }
    if seq == 0 || !rows.is_multiple_of(seq) {
        return Err(format!("{rows} rows are not whole sequences of {seq}"));
    }
    let lanes = cx.kernels == KernelFamily::Lanes && head_dim % 4 == 0;
    let hd = format!("HEAD_DIM={head_dim}");
    let (key, groups) = if precision == npurt_graph::AttentionPrecision::I8 {
        (
            PipelineKey::new("attention_i8.wgsl", "attention_i8", &[]),
            [as_u32(n_heads, "heads")?, as_u32(rows, "rows")?, 1],
        )
    } else if precision == npurt_graph::AttentionPrecision::F16 {
        // f16 operands, f32 sums (the definition's widest).
        let (entry, groups) = tiled_attention_entry(rows, n_heads, head_dim)?;
        (
            PipelineKey::new(
                "attention.wgsl",
                entry,
                &["BIDIRECTIONAL", "F16_OPERANDS", hd.as_str()],
            ),
            groups,
        )
    } else if lanes {
        (
            PipelineKey::new(
                "attention_lanes.wgsl",
                "attention_lanes",
                &["BIDIRECTIONAL", hd.as_str()],
            ),
            // 64-row groups of each sequence in turn (none straddles two).
            [
                as_u32(rows / seq * seq.div_ceil(64), "row groups")?,
                as_u32(n_heads, "heads")?,
                1,
            ],
        )
    } else {
        let (entry, groups) = tiled_attention_entry(rows, n_heads, head_dim)?;
        (
            PipelineKey::new("attention.wgsl", entry, &["BIDIRECTIONAL", hd.as_str()]),
            groups,
        )
    };
    if groups[0] > MAX_GROUPS || groups[1] > MAX_GROUPS {
        return Err("attention with more than 65535 heads or row groups".into());
    }
    let params = args::attention::Params {
        t_rows: as_u32(rows, "rows")?,
        n_heads: as_u32(n_heads, "heads")?,
        n_kv_heads: as_u32(n_kv_heads, "kv heads")?,
        head_dim: as_u32(head_dim, "head_dim")?,
        s_rows: as_u32(seq, "sequence rows")?,
        scale,
        node: node_idx,
        // q_load.wgsl: whole q rows, no rope.
        q_stride: as_u32(n_heads * head_dim, "q width")?,
        ..Default::default()
    };
    let [q, k, v] = ins.map(BindRef::Value);
    Ok(if precision == npurt_graph::AttentionPrecision::I8 {
        Dispatch::new(
            key,
            params,
            args::attention_i8::Bindings { q, k, v, out },
            groups,
        )
    } else {
        let bind = args::attention::Bindings {
            q,
            k_cache: k,
            v_cache: v,
            out,
            pos_in: None,
            n_valid_in: None,
            inv_freq: None,
            status: None,
        };
        Dispatch::new(key, params, bind, groups)
    })
}

/// Shader defines for a KV cache of this dtype (kv_load.wgsl, kv_write.wgsl).
fn kv_defines(dtype: DType) -> &'static [&'static str] {
    match dtype {
        DType::F16 => &["KV_F16"],
        DType::Q8Head { .. } => &["KV_Q8"],
        _ => &[],
    }
}

/// A norm.wgsl row operation over `rows` rows of `h` values: `rms_norm`, `layer_norm`
/// (which also takes a bias) or `softmax` (no weight; eps unused).
fn norm_dispatch(
    entry: &'static str,
    rows: usize,
    h: usize,
    eps: f32,
    bind: args::norm::Bindings,
) -> Result<Dispatch, String> {
    // One workgroup per row.
    Dispatch::flat(
        PipelineKey::new("norm.wgsl", entry, &[]),
        args::norm::Params {
            rows: as_u32(rows, "rows")?,
            h: as_u32(h, "row length")?,
            eps,
        },
        bind,
        rows,
        1,
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MatmulEntry {
    Lanes,
    Gemv,
    Gemm,
    GemmDot4,
    /// gemm on cooperative matrices (the `coop` variant).
    GemmCoop,
}

/// Whether a GEMM (the `Tiled` family's prefill kernel) multiplies packed i8: i8
/// activations on an integer weight format with the dot4 variant on. The activations
/// are then quantized per 32-value block (act_quant.wgsl). Elsewhere (decode's GEMV,
/// the lanes kernels) i8 activations are computed in f32, finer than i8 asks.
pub(crate) fn dot4_applies(
    variants: KernelVariants,
    act: npurt_graph::ActPrecision,
    weight: DType,
) -> bool {
    use npurt_graph::ActPrecision::{I8Row, I8};
    variants.dot4
        && matches!(act, I8 | I8Row)
        && matches!(
            weight,
            DType::Q4_0 | DType::Q4_1 | DType::Q8_0 | DType::Q8Channel
        )
}

/// One matmul dispatch over one weight part, with the kernel variants `cx` allows for
/// its entry point.
fn matmul_dispatch(
    cx: &LowerCtx,
    defines: &[&str],
    entry: MatmulEntry,
    params: args::matmul::Params,
    bind: args::matmul::Bindings,
) -> Result<Dispatch, String> {
    let (m, k, n) = (params.m as usize, params.k as usize, params.n as usize);
    // gemv's static shape (matmul.wgsl splits K in units of a block, W_BLOCKS, or a
    // quad), as defines.
    let mut gemv_shape = Vec::new();
    // (workgroups along N, along M, the entry point, how the grid covers the rows:
    // gemv takes all its rows in each workgroup).
    let (gx, gy, name, rows) = match entry {
        MatmulEntry::Gemv => {
            let unit = if defines.contains(&"W_BLOCKS") { 32 } else { 4 };
            let gemv = cx.gemv_shape(m, k.div_ceil(unit), n, defines.contains(&"GLU"));
            gemv_shape = vec![
                format!("GEMV_ROWS={m}"),
                format!("GEMV_LANES={}", gemv.lanes),
                format!("GEMV_R={}", gemv.cols),
                format!("GEMV_UNITS={}", gemv.units),
            ];
            // 64 threads, GEMV_LANES per group of GEMV_R columns.
            let g = grid_1d(n.div_ceil((64 / gemv.lanes * gemv.cols) as usize), 1)?;
            (g[0] as usize, g[1] as usize, "gemv", RowGrid::Whole)
        }
        MatmulEntry::Gemm | MatmulEntry::GemmDot4 | MatmulEntry::GemmCoop => {
            // matmul.wgsl's gemm: tiles of cx.tiles.gemm_rows rows (gemm_coop: 64) and 64
            // columns (32 with a GLU, whose gate and up rows share the weight tile).
            let cols = if defines.contains(&"GLU") { 32 } else { 64 };
            let (name, rows) = match entry {
                MatmulEntry::Gemm => ("gemm", cx.tiles.gemm_rows as usize),
                MatmulEntry::GemmDot4 => ("gemm_dot4", cx.tiles.gemm_rows as usize),
                _ => ("gemm_coop", 64),
            };
            let grid = RowGrid::Axis {
                axis: 1,
                rows: rows as u32,
            };
            (n.div_ceil(cols), m.div_ceil(rows), name, grid)
        }
        MatmulEntry::Lanes => {
            let rows = if m == 1 { 1 } else { 4 };
            let grid = RowGrid::Axis {
                axis: 1,
                rows: rows as u32,
            };
            (n.div_ceil(256), m.div_ceil(rows), "lanes", grid)
        }
    };
    if gx > MAX_GROUPS as usize || gy > MAX_GROUPS as usize {
        return Err(format!("matmul {}x{} exceeds one dispatch", m, n));
    }
    let mut defines = defines.to_vec();
    // The gemm's weight tile holds raw values (weights.wgsl w_raw_from_bits): exact in f16
    // for the integer formats and f16, not for f32 or bf16.
    let raw_fits_f16 = !defines.contains(&"W_F32") && !defines.contains(&"W_BF16");
    if matches!(entry, MatmulEntry::Gemm | MatmulEntry::GemmDot4) && cx.tiles.gemm_rows == 32 {
        defines.push("GEMM_ROWS_32");
    }
    if entry == MatmulEntry::Gemm && cx.variants.f16 && raw_fits_f16 {
        defines.push("GEMM_F16");
    }
    if entry == MatmulEntry::GemmCoop {
        defines.push("COOP");
    }
    if entry == MatmulEntry::Gemv {
        defines.extend(gemv_shape.iter().map(String::as_str));
        if cx.variants.subgroup {
            defines.push("GEMV_SUBGROUP");
        }
    }
    if entry == MatmulEntry::Lanes && m == 1 {
        defines.push("ROWS_1");
    }
    Ok(Dispatch::new(
        PipelineKey::new("matmul.wgsl", name, &defines),
        params,
        bind,
        [gx as u32, gy as u32, 1],
    )
    .with_rows(rows))
}

/// matmul.wgsl's defines for an epilogue: one flag per step (plus its activation),
/// applied by the shader's `write_out` in the list's fixed order.
pub(crate) fn epilogue_defines(epilogue: Epilogue) -> Vec<&'static str> {
    let act = |a: Activation, glu: bool| match (a, glu) {
        (Activation::Silu, true) => "GLU_SILU",
        (Activation::Gelu, true) => "GLU_GELU",
        (Activation::GeluTanh, true) => "GLU_GELU_TANH",
        (Activation::Silu, false) => "ACT_SILU",
        (Activation::Gelu, false) => "ACT_GELU",
        (Activation::GeluTanh, false) => "ACT_GELU_TANH",
    };
    let mut d = Vec::new();
    for &step in epilogue.steps() {
        match step {
            Step::Glu(a) => d.extend(["GLU", act(a, true)]),
            Step::Bias => d.push("HAS_BIAS"),
            Step::Act(a) => d.extend(["HAS_ACT", act(a, false)]),
            Step::Residual => d.push("HAS_RESIDUAL"),
        }
    }
    d
}

#[allow(clippy::too_many_arguments)]
fn lower_matmul(
    cx: &LowerCtx,
    id: NodeId,
    transpose_b: bool,
    act: npurt_graph::ActPrecision,
    prologue: Prologue,
    epilogue: Epilogue,
    l: &mut Lowered,
) -> Result<(), String> {
    let g = cx.graph;
    let ins = &g.node(id).inputs;
    let a = g.fact(ins[0]);
    let (m, k) = (a.shape[0], a.shape[1]);
    let slots = MatMulOperands::new(prologue, epilogue);
    // The norm prologue: the norm as an op (its norm.wgsl entry and eps), its weight
    // and, for a LayerNorm, its bias.
    let norm = (prologue.norm_op().zip(prologue.eps()).zip(slots.norm))
        .map(|((op, eps), w)| (op.kind(), eps, ins[w], slots.norm_bias.map(|b| ins[b])));
    // The prologue as its own dispatch into a temporary (a LayerNorm, the lanes kernels,
    // [K, N] weights, dot4's quantization pass); the activations as they are without
    // one.
    let separate_norm = |l: &mut Lowered| -> Result<BindRef, String> {
        let Some((entry, eps, w, bias)) = norm else {
            return Ok(BindRef::Value(ins[0]));
        };
        let t = l.temps.len();
        l.temps.push((m * k * 4) as u64);
        let bind = args::norm::Bindings {
            x: BindRef::Value(ins[0]),
            weight: Some(BindRef::Value(w)),
            bias: bias.map(BindRef::Value),
            out: BindRef::Temp(t),
        };
        l.dispatches.push(norm_dispatch(entry, m, k, eps, bind)?);
        Ok(BindRef::Temp(t))
    };
    let b = weight_operand(cx, ins[1]);
    let bf = g.fact(ins[1]);
    let out = BindRef::Value(id);
    let (m32, k32) = (as_u32(m, "rows")?, as_u32(k, "k")?);
    let mut defines: Vec<&str> = weight_defines(b.dtype)?.to_vec();
    if !transpose_b {
        // b is [K, N]; parts split K, so later parts accumulate. No epilogue here (the
        // graph only allows fused work on [N, K] weights).
        if !matches!(b.dtype, DType::F32 | DType::F16 | DType::BF16) || !epilogue.is_empty() {
            return Err("a [K, N] matmul weight must be f32/f16/bf16 without an epilogue".into());
        }
        defines.push("W_KN");
        let a_in = separate_norm(l)?;
        let n = as_u32(bf.shape[1], "n")?;
        let entry = match cx.kernels {
            KernelFamily::Lanes => MatmulEntry::Lanes,
            KernelFamily::Tiled if cx.variants.coop => MatmulEntry::GemmCoop,
            KernelFamily::Tiled => MatmulEntry::Gemm,
        };
        for (i, (w, rows, _)) in b.parts.into_iter().enumerate() {
            let params = args::matmul::Params {
                m: m32,
                k: as_u32(rows.len(), "k")?,
                n,
                ldo: n,
                lda: k32,
                a_k0: as_u32(rows.start, "k")?,
                w_ld: n,
                accumulate: (i > 0) as u32,
                ..Default::default()
            };
            let bind = args::matmul::Bindings {
                a: Some(a_in),
                w,
                out,
                bias: None,
                residual: None,
                aq: None,
                norm_w: None,
            };
            l.dispatches
                .push(matmul_dispatch(cx, &defines, entry, params, bind)?);
        }
        return Ok(());
    }
    let n_b = bf.shape[0];
    let mut entry = match cx.kernels {
        KernelFamily::Lanes => MatmulEntry::Lanes,
        KernelFamily::Tiled if m <= GEMV_MAX_ROWS => MatmulEntry::Gemv,
        KernelFamily::Tiled => MatmulEntry::Gemm,
    };
    if entry == MatmulEntry::Gemm && dot4_applies(cx.variants, act, b.dtype) {
        entry = MatmulEntry::GemmDot4;
        defines.push("DOT4");
    } else if entry == MatmulEntry::Gemm && cx.variants.coop {
        entry = MatmulEntry::GemmCoop;
    }
    // Every dispatch below shares these; each part sets its rows, scales and output.
    let mut base = args::matmul::Params {
        m: m32,
        k: k32,
        lda: k32,
        ..Default::default()
    };
    // The GEMV and the f32 GEMM fold an rms_norm prologue in: each workgroup computes
    // its rows' inverse RMS and scales the activations as it reads them (matmul.wgsl
    // NORM), which saves a dispatch and a round trip of the activations.
    let mut norm_w = None;
    let a_in = match norm {
        Some((_, eps, w, None))
            if matches!(prologue, Prologue::RmsNorm { .. })
                && matches!(
                    entry,
                    MatmulEntry::Gemv | MatmulEntry::Gemm | MatmulEntry::GemmCoop
                ) =>
        {
            defines.push("NORM");
            norm_w = Some(BindRef::Value(w));
            base.eps = eps;
            BindRef::Value(ins[0])
        }
        _ => separate_norm(l)?,
    };
    // gemm_dot4 reads the activations quantized per 32-value block (`aq`).
    let (a, aq) = if entry == MatmulEntry::GemmDot4 {
        let t = l.temps.len();
        let blocks = k.div_ceil(32);
        l.temps.push((m * blocks * ACT_QUANT_WORDS * 4) as u64);
        l.dispatches.push(Dispatch::flat(
            PipelineKey::new("act_quant.wgsl", "quantize_blocks", &[]),
            args::act_quant::Params {
                m: m32,
                k: k32,
                lda: k32,
            },
            args::act_quant::Bindings {
                a: a_in,
                aq: BindRef::Temp(t),
            },
            m * blocks,
            64,
        )?);
        (None, Some(BindRef::Temp(t)))
    } else {
        (Some(a_in), None)
    };
    let operands = |w: BindRef, out: BindRef| args::matmul::Bindings {
        a,
        w,
        out,
        bias: slots.bias.map(|i| BindRef::Value(ins[i])),
        residual: slots.residual.map(|i| BindRef::Value(ins[i])),
        aq,
        norm_w,
    };
    let n_b32 = as_u32(n_b, "n")?;
    // Gate and up rows in different parts: each part's raw product goes into a
    // temporary [M, 2N], combined afterwards. The combine kernel knows SwiGLU alone
    // (support.rs refuses other split GLU lists, so this error is a backstop).
    let split_glu = epilogue.glu().is_some() && b.parts.len() > 1;
    if split_glu && epilogue != Epilogue::SWIGLU {
        return Err(format!(
            "a GLU epilogue other than a bare SwiGLU ({epilogue}) over a split weight"
        ));
    }
    if !split_glu {
        defines.extend(epilogue_defines(epilogue));
    }
    if epilogue.glu().is_some() && !split_glu {
        let n = n_b32 / 2;
        let (w, _, soff) = b.parts[0].clone();
        let params = args::matmul::Params {
            n,
            ldo: n,
            w_soff: soff,
            up_row: n,
            ..base
        };
        let bind = operands(w, out);
        l.dispatches
            .push(matmul_dispatch(cx, &defines, entry, params, bind)?);
        return Ok(());
    }
    let dest = if split_glu {
        l.temps.push((m * n_b * 4) as u64);
        BindRef::Temp(l.temps.len() - 1)
    } else {
        out
    };
    for (w, rows, soff) in b.parts {
        let params = args::matmul::Params {
            n: as_u32(rows.len(), "n")?,
            n_base: as_u32(rows.start, "n")?,
            ldo: n_b32,
            w_soff: soff,
            ..base
        };
        let bind = operands(w, dest);
        l.dispatches
            .push(matmul_dispatch(cx, &defines, entry, params, bind)?);
    }
    if split_glu {
        let n = m * n_b / 2;
        l.dispatches
            .push(elementwise("swiglu", n, 1, n_b / 2, dest, None, out)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{attention_splits, GemvShape};

    /// Decode attention's key ranges on a GPU: SmolLM2's 9 heads over a 2048-row cache
    /// in 8 ranges (each a step of 256 keys at a full cache), a 2.7B's 32 heads in 8,
    /// none over a cache of one step or for a grid already wide (a 512-row chunk),
    /// at most 32; a forced count wins; a CPU driver splits nothing by itself.
    #[test]
    fn attention_splits_fill_a_gpu_with_long_caches_only() {
        assert_eq!(attention_splits(0, false, 9, 2048), 8);
        assert_eq!(attention_splits(0, false, 32, 4096), 8);
        assert_eq!(attention_splits(0, false, 9, 640), 3);
        assert_eq!(attention_splits(0, false, 9, 256), 1);
        assert_eq!(attention_splits(0, false, 512 * 9, 2048), 1);
        assert_eq!(attention_splits(0, false, 1, 1 << 20), 32);
        assert_eq!(attention_splits(4, false, 9, 100), 4);
        assert_eq!(attention_splits(0, true, 9, 2048), 1);
        assert_eq!(attention_splits(2, true, 9, 2048), 2);
    }

    fn shape(lanes: u32, cols: u32, units: u32) -> GemvShape {
        GemvShape { lanes, cols, units }
    }

    /// Decode GEMV shapes on a GPU with 32-wide subgroups: whole subgroups on long rows,
    /// fewer lanes on SmolLM2's 18-block rows, 4 columns per thread where the grid
    /// stays wide (a 2.7B model's matrices, SmolLM2's head), 1 where it would not.
    #[test]
    fn gemv_shapes_fit_rows_and_grids() {
        // 2.7B: q/k/v (K 2560 = 80 blocks, N 3840), gate/up (GLU, N 6912), down (K 6912).
        assert_eq!(GemvShape::pick(32, 0, 1, 80, 3840, false), shape(32, 4, 2));
        assert_eq!(GemvShape::pick(32, 0, 1, 80, 6912, true), shape(32, 4, 1));
        assert_eq!(GemvShape::pick(32, 0, 1, 216, 2560, false), shape(32, 4, 2));
        // SmolLM2 (K 576 = 18 blocks): o_proj N 576 keeps 1 column; the head 4.
        assert_eq!(GemvShape::pick(32, 0, 1, 18, 576, false), shape(16, 1, 2));
        assert_eq!(GemvShape::pick(32, 0, 1, 18, 49152, false), shape(16, 4, 2));
        // 2 columns where 4 would leave too few workgroups; 1 with many rows.
        assert_eq!(GemvShape::pick(32, 0, 1, 80, 1024, false), shape(32, 2, 2));
        assert_eq!(GemvShape::pick(32, 0, 3, 80, 49152, false), shape(32, 1, 2));
        // Forced counts win; workgroup-memory reductions cap lanes at 16.
        assert_eq!(GemvShape::pick(16, 2, 1, 80, 64, false), shape(16, 2, 2));
        assert_eq!(GemvShape::pick(32, 0, 1, 1, 8, false), shape(1, 1, 2));
    }
}
