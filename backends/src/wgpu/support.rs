//! `supports()`: what this backend can run, answered per node before compiling, so the
//! runtime never gets a silently wrong result: unsupported dtypes, shapes past the
//! kernels' limits and values too large for one binding are refused with the reason.

use super::ops;
use crate::Support;
use npurt_graph::{DType, Graph, NodeId, Op, TensorFact};

/// Weight formats the shaders dequantize (weights.wgsl): all of them.
pub(crate) const WEIGHT_DTYPES: [DType; 7] = DType::WEIGHT_FORMATS;

fn unsupported(reason: impl Into<String>) -> Support {
    Support::Unsupported(reason.into())
}

pub(crate) fn supports(graph: &Graph, id: NodeId, max_binding: u64) -> Support {
    let node = graph.node(id);
    let fact = |i: usize| graph.fact(node.inputs[i]);
    let is_weight = |i: usize| {
        matches!(
            graph
                .node(npurt_graph::plan::root(graph, node.inputs[i]))
                .op,
            Op::Weight { .. }
        )
    };
    let too_big = |f: &TensorFact| f.bytes().map(|b| b as u64 > max_binding).unwrap_or(true);
    let f32_or_i32 = |f: &TensorFact| matches!(f.dtype, DType::F32 | DType::I32);

    // Values computed or bound per run are single bindings; only weights feeding a
    // matmul or gather may exceed the binding limit (they are split into parts).
    if !node.op.is_source() && too_big(&node.fact) {
        return unsupported(format!(
            "{} exceeds the adapter's storage binding limit of {max_binding} bytes",
            node.fact
        ));
    }
    for (i, &x) in node.inputs.iter().enumerate() {
        let splittable =
            is_weight(i) && matches!((&node.op, i), (Op::MatMul { .. }, 1) | (Op::Gather, 0));
        if !splittable && too_big(graph.fact(x)) {
            return unsupported(format!(
                "input {} ({}) exceeds the adapter's storage binding limit of {max_binding} bytes",
                graph.node(x).name,
                graph.fact(x)
            ));
        }
    }

    match &node.op {
        Op::Input { fact, .. } => {
            if f32_or_i32(fact) {
                Support::Supported
            } else {
                unsupported(format!("{} inputs (f32 and i32 only)", fact.dtype))
            }
        }
        Op::State { fact, .. } => match fact.dtype {
            DType::F32 => Support::Supported,
            // Stored as words of two f16: rows must not end mid-word.
            DType::F16 if fact.last_dim() % 2 == 0 => Support::Supported,
            // int8 blocks of whole u32 words (the shaders pack 4 int8 per word).
            DType::Q8Head { head_dim } if head_dim % 4 == 0 => Support::Supported,
            _ => unsupported(format!(
                "{} states (f32, f16 with an even row width, or int8 q8_head)",
                fact.dtype
            )),
        },
        Op::Weight { fact, .. } => {
            if WEIGHT_DTYPES.contains(&fact.dtype) || fact.dtype == DType::I32 {
                Support::Supported
            } else {
                unsupported(format!("{} weights", fact.dtype))
            }
        }
        Op::Gather => {
            let t = fact(0);
            if !WEIGHT_DTYPES.contains(&t.dtype) {
                unsupported(format!("gather from a {} table", t.dtype))
            } else if !is_weight(0) && t.dtype != DType::F32 {
                unsupported("gather from a computed non-f32 table")
            } else {
                Support::Supported
            }
        }
        Op::MatMul {
            transpose_b,
            epilogue,
            ..
        } => {
            let (a, b) = (fact(0), fact(1));
            // A weight over the binding limit is split into parts; a GLU whose gate and
            // up rows land in different parts is combined by a kernel that knows only
            // the bare SwiGLU.
            if epilogue.glu().is_some() && *epilogue != npurt_graph::Epilogue::SWIGLU && too_big(b)
            {
                return unsupported(format!(
                    "epilogue {epilogue} over a weight split across bindings"
                ));
            }
            if a.dtype != DType::F32 {
                return unsupported(format!("matmul activations must be f32, got {}", a.dtype));
            }
            if !WEIGHT_DTYPES.contains(&b.dtype) {
                return unsupported(format!("matmul weights of dtype {}", b.dtype));
            }
            if !is_weight(1) && b.dtype != DType::F32 {
                return unsupported("a computed (non-weight) matmul operand must be f32");
            }
            if !transpose_b && !matches!(b.dtype, DType::F32 | DType::F16 | DType::BF16) {
                return unsupported("[K, N] matmul weights must be f32/f16/bf16");
            }
            if node.inputs[2..]
                .iter()
                .any(|&x| graph.fact(x).dtype != DType::F32)
            {
                return unsupported("matmul bias/residual must be f32");
            }
            let n = if *transpose_b { b.shape[0] } else { b.shape[1] };
            if a.shape[0].div_ceil(32) > ops::MAX_GROUPS as usize
                || n.div_ceil(32) > ops::MAX_GROUPS as usize
            {
                return unsupported("matmul larger than one dispatch");
            }
            Support::Supported
        }
        Op::Reshape { .. } | Op::Transpose { .. } | Op::SliceCols { .. } | Op::SelectRow => {
            if !f32_or_i32(fact(0)) {
                return unsupported(format!(
                    "{} of {} values (32-bit values only)",
                    node.op.kind(),
                    fact(0).dtype
                ));
            }
            if is_weight(0) && !matches!(node.op, Op::Reshape { .. }) && fact(0).dtype != DType::F32
            {
                return unsupported("layout ops on non-f32 weights");
            }
            if let Op::Transpose { perm } = &node.op {
                if perm.len() > ops::MAX_TRANSPOSE_RANK {
                    return unsupported(format!(
                        "transpose of rank {} (at most {})",
                        perm.len(),
                        ops::MAX_TRANSPOSE_RANK
                    ));
                }
            }
            Support::Supported
        }
        Op::Attention { head_dim, .. } if *head_dim > ops::MAX_HEAD_DIM => {
            unsupported(format!("head_dim {head_dim} > {}", ops::MAX_HEAD_DIM))
        }
        Op::Attention {
            n_heads,
            mode: npurt_graph::AttentionMode::Bidirectional { seq },
            ..
        } if fact(0).shape[0] > ops::MAX_GROUPS as usize
            || *n_heads > ops::MAX_GROUPS as usize
            || fact(0).shape[0] / (*seq).max(1) * seq.div_ceil(64) > ops::MAX_GROUPS as usize =>
        {
            unsupported("bidirectional attention over more than 65535 rows, row groups or heads")
        }
        _ => {
            // Everything else computes on f32 values; run-time scalars are i32.
            for (i, &x) in node.inputs.iter().enumerate() {
                let f = graph.fact(x);
                let scalar = matches!(
                    (&node.op, i),
                    (Op::Rope { .. }, 1 | 2) | (Op::KvWrite, 2) | (Op::Attention { .. }, 3 | 4)
                );
                let cache = matches!(
                    (&node.op, i),
                    (Op::KvWrite, 0) | (Op::Attention { .. }, 1 | 2)
                );
                let ok = if scalar {
                    f.dtype == DType::I32
                } else if cache {
                    matches!(f.dtype, DType::F32 | DType::F16 | DType::Q8Head { .. })
                } else {
                    f.dtype == DType::F32
                };
                if !ok {
                    return unsupported(format!(
                        "{} input {i} is {} (f32 values only)",
                        node.op.kind(),
                        f.dtype
                    ));
                }
            }
            Support::Supported
        }
    }
}
