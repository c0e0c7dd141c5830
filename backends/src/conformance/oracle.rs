//! The oracle: evaluates a (small) graph node by node with the scalar reference
//! kernels of `npurt_kernels::reference`, in f32, on dequantized weights.
//!
//! Activation precision (`MatMul { act }`) is deliberately ignored: the oracle is the
//! exact product, and each case's threshold states how much i16/i8 activation
//! quantization may cost. Integer attention (`AttentionPrecision::I8`) is different:
//! its quantization steps are part of the op's definition (per-row and per-channel
//! scales, u8 softmax weights), so the oracle runs the reference's emulation of them.

use super::case::{CaseData, Compared};
use npurt_graph::{
    AttentionMode, AttentionPrecision, DType, Graph, MatMulOperands, NodeId, Op, Prologue,
};
use npurt_kernels::{quant, reference as r, HostData, HostTensor};

/// A node's value in the oracle.
#[derive(Clone, Debug)]
enum Value {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// The reference values of every compared item of `case`, in `case.compared` order.
pub fn expected(case: &CaseData) -> Result<Vec<Vec<f32>>, String> {
    let values = evaluate(&case.graph, &case.sources)?;
    case.compared
        .iter()
        .map(|c| {
            let id = match c {
                Compared::Output(name) | Compared::OutputRows(name, _) => {
                    case.graph
                        .output(name)
                        .ok_or_else(|| format!("no output `{name}`"))?
                }
                Compared::State(state) => final_state_value(&case.graph, *state),
            };
            match &values[id.0] {
                Value::F32(v) => Ok(c.kept(case.graph.fact(id), v.clone())),
                Value::I32(_) => Err(format!(
                    "compared value `{}` is not f32",
                    case.graph.node(id).name
                )),
            }
        })
        .collect()
}

/// The node holding a state's contents after a run: its last write, or the state itself.
fn final_state_value(graph: &Graph, state: NodeId) -> NodeId {
    let mut cur = state;
    for id in graph.ids() {
        let n = graph.node(id);
        if matches!(n.op, Op::KvWrite) && n.inputs[0] == cur {
            cur = id;
        }
    }
    cur
}

fn host_to_value(t: &HostTensor) -> Result<Value, String> {
    Ok(match &t.data {
        HostData::F32(v) => Value::F32(v.clone()),
        HostData::MappedF32(m) => Value::F32(m.as_slice().to_vec()),
        HostData::I32(v) => Value::I32(v.clone()),
        HostData::F16(v) => Value::F32(v.iter().map(|x| x.to_f32()).collect()),
        HostData::Bytes(b) => {
            let n = t.fact.elems().ok_or("shape overflows")?;
            let mut out = vec![0f32; n];
            if !quant::dequantize_matrix(t.fact.dtype, b, t.fact.last_dim(), &mut out) {
                return Err(format!("cannot dequantize {}", t.fact));
            }
            Value::F32(out)
        }
    })
}

fn evaluate(graph: &Graph, sources: &[(NodeId, HostTensor)]) -> Result<Vec<Value>, String> {
    let mut vals: Vec<Value> = Vec::with_capacity(graph.nodes.len());
    for id in graph.ids() {
        let node = graph.node(id);
        let f = |i: usize| -> Result<&[f32], String> {
            match &vals[node.inputs[i].0] {
                Value::F32(v) => Ok(v),
                Value::I32(_) => Err(format!("input {i} of `{}` is not f32", node.name)),
            }
        };
        let int = |i: usize| -> Result<&[i32], String> {
            match &vals[node.inputs[i].0] {
                Value::I32(v) => Ok(v),
                Value::F32(_) => Err(format!("input {i} of `{}` is not i32", node.name)),
            }
        };
        let scalar = |i: usize| -> Result<usize, String> {
            match int(i)? {
                [v] if *v >= 0 => Ok(*v as usize),
                other => Err(format!(
                    "input {i} of `{}` must be a non-negative scalar, got {other:?}",
                    node.name
                )),
            }
        };
        let in_fact = |i: usize| graph.fact(node.inputs[i]);
        let mut out = vec![
            0f32;
            if matches!(
                node.fact.dtype,
                DType::F32 | DType::F16 | DType::Q8Head { .. }
            ) {
                node.fact.elems().unwrap_or(0)
            } else {
                0
            }
        ];
        let kerr = |e: r::KernelError| format!("`{}`: {e}", node.name);
        match &node.op {
            Op::Input { .. } | Op::Weight { .. } | Op::State { .. } => {
                let t = sources
                    .iter()
                    .find(|(n, _)| *n == id)
                    .map(|(_, t)| t)
                    .ok_or_else(|| format!("source `{}` has no data", node.name))?;
                vals.push(host_to_value(t)?);
                continue;
            }
            Op::Gather => r::gather(f(0)?, node.fact.shape[1], int(1)?, &mut out).map_err(kerr)?,
            Op::MatMul {
                transpose_b,
                prologue,
                epilogue,
                ..
            } => {
                let (m, k) = (in_fact(0).shape[0], in_fact(0).shape[1]);
                let n_b = if *transpose_b {
                    in_fact(1).shape[0]
                } else {
                    in_fact(1).shape[1]
                };
                let slots = MatMulOperands::new(*prologue, *epilogue);
                let opt = |slot: Option<usize>| slot.map(f).transpose();
                // The prologue, unfused: the plain reference norm, then the product.
                let mut a = f(0)?.to_vec();
                match (prologue, opt(slots.norm)?, opt(slots.norm_bias)?) {
                    (Prologue::RmsNorm { eps }, Some(w), _) => r::rms_norm(f(0)?, w, *eps, &mut a),
                    (Prologue::LayerNorm { eps }, Some(w), Some(b)) => {
                        r::layer_norm(f(0)?, w, b, *eps, &mut a)
                    }
                    _ => {}
                }
                let mut pre = vec![0f32; m * n_b];
                r::matmul(&a, f(1)?, m, k, n_b, *transpose_b, &mut pre);
                let (bias, residual) = (opt(slots.bias)?, opt(slots.residual)?);
                r::epilogue(&pre, m, n_b, *epilogue, bias, residual, &mut out);
            }
            Op::PatchEmbed { patch } => {
                let s = &in_fact(0).shape;
                r::patch_embed(
                    f(0)?,
                    [s[0], s[1], s[2], s[3]],
                    f(1)?,
                    f(2)?,
                    *patch,
                    &mut out,
                );
            }
            Op::SliceCols { start, len } => {
                r::slice_cols(f(0)?, in_fact(0).shape[1], *start, *len, &mut out)
            }
            Op::Add => r::add(f(0)?, f(1)?, &mut out),
            Op::Mul => r::mul(f(0)?, f(1)?, &mut out),
            Op::RmsNorm { eps } => r::rms_norm(f(0)?, f(1)?, *eps, &mut out),
            Op::LayerNorm { eps } => r::layer_norm(f(0)?, f(1)?, f(2)?, *eps, &mut out),
            Op::Rope { params } => r::rope(
                f(0)?,
                node.fact.shape[1],
                params,
                scalar(1)?,
                scalar(2)?,
                &mut out,
            ),
            Op::KvWrite => {
                out.copy_from_slice(f(0)?);
                r::kv_write(&mut out, f(1)?, node.fact.shape[1], scalar(2)?).map_err(kerr)?;
                if node.fact.dtype == DType::F16 {
                    // An f16 cache holds each written value rounded to nearest even
                    // (the rows already there are f16 values: rounding keeps them).
                    for x in out.iter_mut() {
                        *x = half::f16::from_f32(*x).to_f32();
                    }
                }
                if let DType::Q8Head { head_dim } = node.fact.dtype {
                    // An int8 cache holds each written head row quantized (the other
                    // rows keep their dequantized values): the reference write into a
                    // scratch cache of the written rows, read back.
                    let (hd, width) = (head_dim as usize, node.fact.shape[1]);
                    let (pos, new) = (scalar(2)?, f(1)?);
                    let rows = new.len() / width;
                    let mut blocks = vec![0u8; rows * width / hd * (hd + 4)];
                    r::kv_write_q8head(&mut blocks, new, width, hd, 0).map_err(kerr)?;
                    let back = r::dequantize_kv_q8head(&blocks, hd);
                    out[pos * width..(pos + rows) * width].copy_from_slice(&back);
                }
            }
            Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                mode: AttentionMode::Causal,
                ..
            } => r::attention(
                f(0)?,
                f(1)?,
                f(2)?,
                scalar(3)?,
                scalar(4)?,
                *n_heads,
                *n_kv_heads,
                *head_dim,
                *scale,
                &mut out,
            )
            .map_err(kerr)?,
            Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                mode: AttentionMode::Bidirectional { seq },
                precision,
            } => (match precision {
                AttentionPrecision::F32 => r::attention_bidirectional,
                AttentionPrecision::I8 => r::attention_bidirectional_i8,
                AttentionPrecision::F16 => r::attention_bidirectional_f16,
            })(
                f(0)?,
                f(1)?,
                f(2)?,
                *seq,
                *n_heads,
                *n_kv_heads,
                *head_dim,
                *scale,
                &mut out,
            )
            .map_err(kerr)?,
            Op::SpaceToChannel { grid, block } => {
                r::space_to_channel(f(0)?, *grid, *block, in_fact(0).shape[1], &mut out)
            }
            Op::Silu => r::silu(f(0)?, &mut out),
            Op::Gelu { tanh } => r::gelu(f(0)?, *tanh, &mut out),
            Op::Softmax => r::softmax(f(0)?, node.fact.last_dim(), &mut out),
            Op::Reshape { .. } => {
                vals.push(vals[node.inputs[0].0].clone());
                continue;
            }
            Op::Transpose { perm } => r::transpose(f(0)?, &in_fact(0).shape, perm, &mut out),
            Op::SelectRow => {
                let idx =
                    i32::try_from(scalar(1)?).map_err(|_| "row index overflows".to_string())?;
                r::select_row(f(0)?, node.fact.shape[1], idx, &mut out).map_err(kerr)?
            }
        }
        vals.push(Value::F32(out));
    }
    Ok(vals)
}
