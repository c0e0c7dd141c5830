//! A prefill chunk's valid rows. The chunk graphs are static, as an NPU needs them: `C`
//! rows, of which the run-time input `n_valid` says how many are tokens (the last
//! chunk of a prompt, a short chat turn, the text beside an image fill the rest with
//! padding). Every LLaMA op computes its output rows one by one from the same rows of
//! its input, and causal attention lets no query see a later position, so no padding
//! row ever reaches a valid row. A backend that can size its work at run time (the
//! CPU; wgpu, through indirect dispatches sized on the GPU) may therefore compute only
//! the first `n_valid` rows of those values ([`ValidRows`]); one that cannot computes
//! all `C`, with the same valid rows.

use crate::{AttentionMode, Graph, NodeId, Op};

/// Which values of a graph are computed row by row from the chunk's token rows, and
/// the input that says how many of those rows are valid.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidRows {
    /// The `n_valid` input (i32[1]) of the graph's causal attentions.
    pub n_valid: NodeId,
    /// The chunk's static row count `C`.
    pub rows: usize,
    /// Per node: its value's rows are the chunk's token rows, row `r` computed from
    /// row `r` of its row-wise inputs only (and, for causal attention, keys at earlier
    /// positions), so only the first `n_valid` rows need computing. (A KV write's
    /// value is its cache; it needs to write only the valid rows of its new rows,
    /// [`ValidRows::limits`].)
    pub token_rows: Vec<bool>,
}

/// The input whose rows an op's output rows are computed from, one by one (`None`: the
/// op mixes rows, or its output has no token rows).
fn row_operand(op: &Op) -> Option<usize> {
    match op {
        Op::Gather => Some(1),
        Op::MatMul { .. }
        | Op::SliceCols { .. }
        | Op::Add
        | Op::Mul
        | Op::RmsNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Rope { .. }
        | Op::Silu
        | Op::Gelu { .. }
        | Op::Softmax
        | Op::Attention {
            mode: AttentionMode::Causal,
            ..
        } => Some(0),
        _ => None,
    }
}

/// Whether `id` is a weight or a state (through reshapes): stored, not computed from
/// the chunk's rows.
fn is_parameter(g: &Graph, mut id: NodeId) -> bool {
    loop {
        match g.node(id).op {
            Op::Reshape { .. } => id = g.node(id).inputs[0],
            Op::Weight { .. } | Op::State { .. } => return true,
            _ => return false,
        }
    }
}

impl ValidRows {
    /// How many of the `len` elements of value `id` its first `n` rows hold: all of
    /// them unless its rows are the chunk's token rows.
    pub fn prefix(&self, id: NodeId, n: usize, len: usize) -> usize {
        match self.token_rows[id.0] {
            true => n * (len / self.rows),
            false => len,
        }
    }

    /// Whether node `id` needs to compute (or, a KV write, write) only the first
    /// `n_valid` rows.
    pub fn limits(&self, g: &Graph, id: NodeId) -> bool {
        match g.node(id).op {
            Op::KvWrite => self.token_rows[g.node(id).inputs[1].0],
            _ => self.token_rows[id.0],
        }
    }

    /// The valid-row structure of a chunk graph: `None` when the graph has no causal
    /// attention (nothing says which rows are valid), one row, attentions that
    /// disagree on `n_valid`, or a token-row value that an op other than the row-wise
    /// ones, `select_row` (which reads one valid row) or a graph output reads.
    pub fn of(g: &Graph) -> Option<ValidRows> {
        let mut found = None;
        for id in g.ids() {
            let n = g.node(id);
            if let Op::Attention {
                mode: AttentionMode::Causal,
                ..
            } = n.op
            {
                let here = (n.inputs[4], g.fact(n.inputs[0]).shape[0]);
                match found {
                    None => found = Some(here),
                    Some(f) if f != here => return None,
                    Some(_) => {}
                }
            }
        }
        let (n_valid, rows) = found?;
        if rows < 2 || !matches!(g.node(n_valid).op, Op::Input { .. }) {
            return None;
        }
        let leads = |x: NodeId| g.fact(x).shape.first() == Some(&rows);
        let mut token_rows = vec![false; g.nodes.len()];
        for id in g.ids() {
            let n = g.node(id);
            token_rows[id.0] = match (&n.op, row_operand(&n.op)) {
                // The chunk's ids or embeddings (not the scalars pos and n_valid).
                (Op::Input { .. }, _) => leads(id) && id != n_valid,
                // A product of two activations sums over the chunk's rows.
                (Op::MatMul { .. }, _) if token_rows[n.inputs[1].0] => false,
                (_, Some(i)) if token_rows[n.inputs[i].0] => {
                    // Every other activation with the rows' leading dimension and the
                    // same rank must be token rows too (a residual, an elementwise
                    // operand); a broadcast operand has another shape, and a weight or
                    // a cache is no activation (whatever its rows: a fused QKV weight
                    // of a 128-row chunk may have 128 rows).
                    let rank = g.fact(n.inputs[i]).rank();
                    n.inputs.iter().enumerate().all(|(j, &x)| {
                        j == i
                            || token_rows[x.0]
                            || is_parameter(g, x)
                            || !(leads(x) && g.fact(x).rank() == rank)
                    })
                }
                _ => false,
            };
        }
        // Every reader of a token-row value must compute rows alone, or read a valid
        // row only; an output's padding rows are unspecified (the CPU clears them).
        for id in g.ids() {
            let n = g.node(id);
            if token_rows[id.0] || matches!(n.op, Op::SelectRow | Op::KvWrite) {
                continue;
            }
            if n.inputs.iter().any(|x| token_rows[x.0]) {
                return None;
            }
        }
        Some(ValidRows {
            n_valid,
            rows,
            token_rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Builder, TensorFact};

    /// A one-head causal block over a 4-row chunk: q from the input, k/v written into
    /// caches, attention, then `tail` on its output.
    fn block(tail: impl Fn(&mut Builder, NodeId, NodeId) -> NodeId) -> Graph {
        let mut b = Builder::new();
        let x = b.input("x", TensorFact::f32([4, 8])).unwrap();
        let pos = b.input("pos", TensorFact::i32([1])).unwrap();
        let nv = b.input("n_valid", TensorFact::i32([1])).unwrap();
        let kc = b.state("k", TensorFact::f32([16, 8])).unwrap();
        let vc = b.state("v", TensorFact::f32([16, 8])).unwrap();
        let w = b.weight("w", TensorFact::f32([8, 8])).unwrap();
        let q = b.linear("q", x, w).unwrap();
        let kc = b.kv_write("kw", kc, q, pos).unwrap();
        let vc = b.kv_write("vw", vc, x, pos).unwrap();
        let a = b.attention("attn", q, kc, vc, pos, nv, 1, 1, 8).unwrap();
        let y = tail(&mut b, a, x);
        b.output("y", y);
        b.finish().unwrap()
    }

    #[test]
    fn row_wise_chains_are_marked_and_row_mixing_readers_decline() {
        let g = block(|b, a, x| b.add("res", a, x).unwrap());
        let v = ValidRows::of(&g).expect("a row-wise chunk");
        assert_eq!(v.rows, 4);
        let marked: Vec<&str> = g
            .ids()
            .filter(|&id| v.limits(&g, id))
            .map(|id| g.node(id).name.as_str())
            .collect();
        assert_eq!(marked, ["x", "q", "kw", "vw", "attn", "res"]);

        // A weight with as many rows as the chunk is a weight, not token rows to match.
        let g = block(|b, a, _| {
            let w = b.weight("w4", TensorFact::f32([4, 8])).unwrap();
            b.linear("o", a, w).unwrap()
        });
        let v = ValidRows::of(&g).expect("a weight of the chunk's rows");
        let o = g.ids().find(|&id| g.node(id).name == "o").unwrap();
        assert!(v.limits(&g, o));

        // A product of two activations (a x^T) mixes rows; a transpose moves them.
        let g = block(|b, a, x| {
            let mm = Op::MatMul {
                transpose_b: true,
                act: Default::default(),
                prologue: Default::default(),
                epilogue: Default::default(),
            };
            b.op("axt", mm, &[a, x]).unwrap()
        });
        assert_eq!(ValidRows::of(&g), None);
        let g = block(|b, a, _| b.transpose("t", a, &[1, 0]).unwrap());
        assert_eq!(ValidRows::of(&g), None);
    }
}
