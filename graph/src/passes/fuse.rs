//! Fusion passes that turn the builders' plain LLaMA and ViT graphs into the few fat
//! kernels an NPU (or a good CPU kernel) wants:
//! - `FuseBias`: `add(matmul, bias weight)` -> matmul with a bias epilogue;
//! - `FuseSwiGlu`: `mul(act(x @ Wg), x @ Wu)` -> one matmul over `[Wg; Wu]` with a GLU
//!   epilogue (SwiGLU for LLaMA's silu; reads `x` once, one launch);
//! - `FuseSharedInput`: plain matmuls reading the same activation (q, k, v) -> one
//!   matmul over the row-concatenated weights, then `slice_cols` per original output;
//! - `FuseResidual`: `add(x, matmul)` where the matmul has no other reader -> the
//!   matmul with a residual step appended to its epilogue;
//! - `FuseActivation`: `gelu(matmul)` / `silu(matmul)` where the matmul has no other
//!   reader and its epilogue is empty or a bias -> the matmul with the activation step
//!   (ViT MLP fc1 and the projector: `+bias+gelu`);
//! - `FuseNormQuant`: `rms_norm(x, w)` or `layer_norm(x, w, b)` read only by
//!   quantizing matmuls -> those matmuls with the norm as their prologue, so the norm
//!   is computed in the pass that quantizes their activations (runs last: the other
//!   fusions match plain matmuls).
//!
//! Epilogues are lists ([`Epilogue`]): each pass appends its step with
//! [`Epilogue::then`], which refuses a step that would break the list's order, so a
//! ViT MLP becomes `matmul[+bias+gelu]` then `matmul[+bias+residual]` one step at a
//! time, with no pass knowing the combinations.

use super::rewrite::{apply, use_counts, Rewrite};
use super::Pass;
use crate::{ActPrecision, Epilogue, Graph, GraphError, NodeId, Op, Prologue, Step, TensorFact};

/// Name for a fused weight made of `parts` (`...q_proj.weight` + `...k_proj.weight` ->
/// `...q_proj+k_proj.weight`).
fn fused_name(parts: &[String]) -> String {
    let stem = |s: &str| {
        s.strip_suffix(".weight")
            .or_else(|| s.strip_suffix(".bias"))
            .unwrap_or(s)
            .to_string()
    };
    let first = stem(&parts[0]);
    let (prefix, _) = first.rsplit_once('.').unwrap_or(("", &first));
    let suffix = if parts[0].ends_with(".bias") {
        "bias"
    } else {
        "weight"
    };
    let leaves: Vec<String> = parts
        .iter()
        .map(|p| stem(p).rsplit('.').next().unwrap_or_default().to_string())
        .collect();
    format!("{prefix}.{}.{suffix}", leaves.join("+"))
}

/// Emits a weight whose rows are the rows of `weights` (old-graph Weight nodes).
fn concat_weights(rw: &mut Rewrite, weights: &[NodeId]) -> Result<NodeId, GraphError> {
    let mut parts = Vec::new();
    let mut rows = 0;
    let first = rw.old.fact(weights[0]).clone();
    for &w in weights {
        match &rw.old.node(w).op {
            Op::Weight {
                name,
                parts: p,
                fact,
            } => {
                if p.is_empty() {
                    parts.push(name.clone());
                } else {
                    parts.extend(p.iter().cloned());
                }
                rows += fact.shape[0];
            }
            _ => unreachable!("callers pass weight nodes"),
        }
    }
    let mut shape = first.shape.clone();
    shape[0] = rows;
    let fact = TensorFact::new(first.dtype, shape);
    let name = fused_name(&parts);
    rw.new
        .add(name.clone(), Op::Weight { name, fact, parts }, &[])
}

/// A pass built an epilogue out of order: a bug in the pass, reported as the node's
/// ill-formedness rather than a panic.
fn ill_formed(rw: &Rewrite, id: NodeId, e: crate::EpilogueError) -> GraphError {
    GraphError::IllFormed {
        node: rw.old.node(id).name.clone(),
        op: rw.old.node(id).op.kind(),
        reason: e.to_string(),
    }
}

fn is_weight(g: &Graph, id: NodeId) -> bool {
    matches!(g.node(id).op, Op::Weight { .. })
}

/// A plain `x @ W^T` (no prologue or epilogue) with a weight operand.
fn plain_matmul(g: &Graph, id: NodeId) -> Option<(NodeId, NodeId, ActPrecision)> {
    match g.node(id).op {
        Op::MatMul {
            transpose_b: true,
            act,
            prologue: Prologue::None,
            epilogue,
        } if epilogue.is_empty() && is_weight(g, g.node(id).inputs[1]) => {
            Some((g.node(id).inputs[0], g.node(id).inputs[1], act))
        }
        _ => None,
    }
}

pub struct FuseBias;

impl Pass for FuseBias {
    fn name(&self) -> &'static str {
        "fuse-bias"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, GraphError> {
        let uses = use_counts(g);
        apply(g, |rw, id| {
            let n = rw.old.node(id);
            if !matches!(n.op, Op::Add) {
                return Ok(None);
            }
            let (mm, bias) = (n.inputs[0], n.inputs[1]);
            let Some((x, w, act)) = plain_matmul(rw.old, mm) else {
                return Ok(None);
            };
            if uses[mm.0] != 1 || !is_weight(rw.old, bias) || rw.old.fact(bias).rank() != 1 {
                return Ok(None);
            }
            let ins = [rw.get(x), rw.get(w), rw.get(bias)];
            let name = rw.old.node(mm).name.clone();
            Ok(Some(rw.new.add(
                name,
                Op::MatMul {
                    transpose_b: true,
                    act,
                    prologue: Prologue::None,
                    epilogue: Epilogue::BIAS,
                },
                &ins,
            )?))
        })
    }
}

pub struct FuseSwiGlu;

impl Pass for FuseSwiGlu {
    fn name(&self) -> &'static str {
        "fuse-swiglu"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, GraphError> {
        let uses = use_counts(g);
        apply(g, |rw, id| {
            let n = rw.old.node(id);
            if !matches!(n.op, Op::Mul) {
                return Ok(None);
            }
            let (act_node, up) = (n.inputs[0], n.inputs[1]);
            let Some(gate_act) = rw.old.node(act_node).op.activation() else {
                return Ok(None);
            };
            if uses[act_node.0] != 1 {
                return Ok(None);
            }
            let gate = rw.old.node(act_node).inputs[0];
            let (Some((xg, wg, ag)), Some((xu, wu, au))) =
                (plain_matmul(rw.old, gate), plain_matmul(rw.old, up))
            else {
                return Ok(None);
            };
            if xg != xu
                || ag != au
                || uses[gate.0] != 1
                || uses[up.0] != 1
                || rw.old.fact(wg) != rw.old.fact(wu)
            {
                return Ok(None);
            }
            let w = concat_weights(rw, &[wg, wu])?;
            let x = rw.get(xg);
            let glu = Step::Glu(gate_act);
            let name = format!("{}+{glu}", rw.old.node(gate).name);
            Ok(Some(
                rw.new.add(
                    name,
                    Op::MatMul {
                        transpose_b: true,
                        act: ag,
                        prologue: Prologue::None,
                        epilogue: Epilogue::NONE
                            .then(glu)
                            .map_err(|e| ill_formed(rw, id, e))?,
                    },
                    &[x, w],
                )?,
            ))
        })
    }
}

pub struct FuseSharedInput;

impl Pass for FuseSharedInput {
    fn name(&self) -> &'static str {
        "fuse-shared-input"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, GraphError> {
        // Group plain and bias matmuls by what must agree to share one weight matrix:
        // (input, weight dtype, K, activation precision, epilogue).
        let key = |m: NodeId| {
            let n = g.node(m);
            let wf = g.fact(n.inputs[1]);
            let Op::MatMul { act, epilogue, .. } = n.op else {
                unreachable!("only matmuls are keyed")
            };
            (n.inputs[0], wf.dtype, wf.shape[1], act, epilogue)
        };
        let mut groups: Vec<Vec<NodeId>> = Vec::new();
        for id in g.ids() {
            let n = g.node(id);
            let Op::MatMul {
                transpose_b: true,
                prologue: Prologue::None,
                epilogue,
                ..
            } = n.op
            else {
                continue;
            };
            if !(epilogue.is_empty() || epilogue == Epilogue::BIAS)
                || !is_weight(g, n.inputs[1])
                || (epilogue == Epilogue::BIAS && !is_weight(g, n.inputs[2]))
            {
                continue;
            }
            match groups.iter_mut().find(|grp| key(grp[0]) == key(id)) {
                Some(grp) => grp.push(id),
                None => groups.push(vec![id]),
            }
        }
        groups.retain(|grp| grp.len() > 1);
        if groups.is_empty() {
            return Ok(false);
        }
        apply(g, |rw, id| {
            let Some(grp) = groups.iter().find(|grp| grp[0] == id) else {
                return Ok(None);
            };
            let n = rw.old.node(id);
            let Op::MatMul { act, epilogue, .. } = n.op else {
                unreachable!()
            };
            let weights: Vec<NodeId> = grp.iter().map(|m| rw.old.node(*m).inputs[1]).collect();
            let w = concat_weights(rw, &weights)?;
            let mut ins = vec![rw.get(n.inputs[0]), w];
            if epilogue == Epilogue::BIAS {
                let biases: Vec<NodeId> = grp.iter().map(|m| rw.old.node(*m).inputs[2]).collect();
                ins.push(concat_weights(rw, &biases)?);
            }
            let names: Vec<&str> = grp.iter().map(|m| rw.old.node(*m).name.as_str()).collect();
            let fused = rw.new.add(
                names.join("+"),
                Op::MatMul {
                    transpose_b: true,
                    act,
                    prologue: Prologue::None,
                    epilogue,
                },
                &ins,
            )?;
            let mut start = 0;
            let mut first = None;
            for &m in grp {
                let len = rw.old.fact(m).shape[1];
                let s = rw.new.add(
                    rw.old.node(m).name.clone(),
                    Op::SliceCols { start, len },
                    &[fused],
                )?;
                start += len;
                if m == id {
                    first = Some(s);
                } else {
                    rw.map[m.0] = Some(s);
                }
            }
            Ok(first)
        })
    }
}

pub struct FuseResidual;

impl Pass for FuseResidual {
    fn name(&self) -> &'static str {
        "fuse-residual"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, GraphError> {
        let uses = use_counts(g);
        apply(g, |rw, id| {
            let n = rw.old.node(id);
            if !matches!(n.op, Op::Add) {
                return Ok(None);
            }
            for (mm, x) in [(n.inputs[1], n.inputs[0]), (n.inputs[0], n.inputs[1])] {
                let mn = rw.old.node(mm);
                let Op::MatMul {
                    transpose_b: true,
                    act,
                    prologue,
                    epilogue,
                } = mn.op
                else {
                    continue;
                };
                // Any list a residual may end (`then` refuses a second one).
                let Ok(epi) = epilogue.then(Step::Residual) else {
                    continue;
                };
                if uses[mm.0] != 1 || rw.old.fact(x) != rw.old.fact(mm) || x == mm {
                    continue;
                }
                let mut ins: Vec<NodeId> = mn.inputs.iter().map(|&i| rw.get(i)).collect();
                ins.push(rw.get(x));
                let name = format!("{}+residual", mn.name);
                return Ok(Some(rw.new.add(
                    name,
                    Op::MatMul {
                        transpose_b: true,
                        act,
                        prologue,
                        epilogue: epi,
                    },
                    &ins,
                )?));
            }
            Ok(None)
        })
    }
}

pub struct FuseActivation;

impl Pass for FuseActivation {
    fn name(&self) -> &'static str {
        "fuse-activation"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, GraphError> {
        let uses = use_counts(g);
        apply(g, |rw, id| {
            let n = rw.old.node(id);
            let Some(activation) = n.op.activation() else {
                return Ok(None);
            };
            let mm = n.inputs[0];
            let mn = rw.old.node(mm);
            let Op::MatMul {
                transpose_b: true,
                act,
                prologue,
                epilogue,
            } = mn.op
            else {
                return Ok(None);
            };
            // Only behind an empty list or a bias: after a residual the activation would
            // move inside the sum, and a GLU already has its own activation (a gated
            // product is LLaMA's FuseSwiGlu pattern, matched before this pass runs).
            if uses[mm.0] != 1 || epilogue.glu().is_some() {
                return Ok(None);
            }
            let Ok(epi) = epilogue.then(Step::Act(activation)) else {
                return Ok(None);
            };
            let ins: Vec<NodeId> = mn.inputs.iter().map(|&i| rw.get(i)).collect();
            let name = format!("{}+{}", mn.name, activation.name());
            Ok(Some(rw.new.add(
                name,
                Op::MatMul {
                    transpose_b: true,
                    act,
                    prologue,
                    epilogue: epi,
                },
                &ins,
            )?))
        })
    }
}

pub struct FuseNormQuant;

impl FuseNormQuant {
    /// The norm nodes every reader of which is a matmul that quantizes its activations
    /// (`act` not f32) and reads the norm as `a` only, as the prologue they become.
    fn fusable(g: &Graph) -> Vec<Option<Prologue>> {
        let outputs: Vec<NodeId> = g.outputs.iter().map(|(_, id)| *id).collect();
        let mut eps: Vec<Option<Prologue>> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| match n.op {
                _ if outputs.contains(&NodeId(i)) => None,
                Op::RmsNorm { eps } => Some(Prologue::RmsNorm { eps }),
                Op::LayerNorm { eps } => Some(Prologue::LayerNorm { eps }),
                _ => None,
            })
            .collect();
        let mut read = vec![false; g.nodes.len()];
        for n in &g.nodes {
            let quantizing_reader = matches!(
                n.op,
                Op::MatMul {
                    transpose_b: true,
                    prologue: Prologue::None,
                    act: ActPrecision::I16 | ActPrecision::I8 | ActPrecision::I8Row,
                    ..
                }
            );
            for (slot, x) in n.inputs.iter().enumerate() {
                read[x.0] = true;
                if !(quantizing_reader && slot == 0) {
                    eps[x.0] = None;
                }
            }
        }
        eps.iter().zip(read).map(|(e, r)| e.filter(|_| r)).collect()
    }
}

impl Pass for FuseNormQuant {
    fn name(&self) -> &'static str {
        "fuse-norm-quant"
    }
    fn run(&self, g: &mut Graph) -> Result<bool, GraphError> {
        let fusable = Self::fusable(g);
        if fusable.iter().all(Option::is_none) {
            return Ok(false);
        }
        apply(g, |rw, id| {
            let n = rw.old.node(id);
            let Op::MatMul {
                transpose_b,
                act,
                epilogue,
                ..
            } = n.op
            else {
                return Ok(None);
            };
            let norm = n.inputs[0];
            let Some(prologue) = fusable[norm.0] else {
                return Ok(None);
            };
            // The norm's x, the matmul's weight, the norm's weight (and bias), then the
            // matmul's epilogue operands.
            let norm_ins = &rw.old.node(norm).inputs;
            let mut ins = vec![rw.get(norm_ins[0]), rw.get(n.inputs[1])];
            ins.extend(norm_ins[1..].iter().map(|&i| rw.get(i)));
            ins.extend(n.inputs[2..].iter().map(|&i| rw.get(i)));
            let name = format!("{}+{}", rw.old.node(norm).name, n.name);
            Ok(Some(rw.new.add(
                name,
                Op::MatMul {
                    transpose_b,
                    act,
                    prologue,
                    epilogue,
                },
                &ins,
            )?))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::passes::{Pipeline, StoredDType};
    use crate::{Activation, Builder, Epilogue, Graph, Op, PrecisionPolicy, Step, TensorFact};

    /// A pre-LN ViT block's matmul tail written with plain ops, as a graph builder
    /// emits it: attention output `x + (o(attn) + bo)`, then the MLP
    /// `fc2(gelu(fc1(h) + b1)) + b2 + h`.
    fn vit_block(tanh: bool) -> Graph {
        let (t, d, f) = (5, 32, 64);
        let mut b = Builder::new();
        let x = b.input("x", TensorFact::f32([t, d])).unwrap();
        let attn = b.input("attn", TensorFact::f32([t, d])).unwrap();
        let w = |b: &mut Builder, name: &str, shape: &[usize]| {
            b.weight(name, TensorFact::f32(shape.to_vec())).unwrap()
        };
        let (wo, bo) = (w(&mut b, "o.weight", &[d, d]), w(&mut b, "o.bias", &[d]));
        let (w1, b1) = (
            w(&mut b, "fc1.weight", &[f, d]),
            w(&mut b, "fc1.bias", &[f]),
        );
        let (w2, b2) = (
            w(&mut b, "fc2.weight", &[d, f]),
            w(&mut b, "fc2.bias", &[d]),
        );
        let o = b.linear("o", attn, wo).unwrap();
        let o = b.add("o_bias", o, bo).unwrap();
        let h = b.add("attn_residual", x, o).unwrap();
        let f1 = b.linear("fc1", h, w1).unwrap();
        let f1 = b.add("fc1_bias", f1, b1).unwrap();
        let g = b.gelu("gelu", f1, tanh).unwrap();
        let f2 = b.linear("fc2", g, w2).unwrap();
        let f2 = b.add("fc2_bias", f2, b2).unwrap();
        let y = b.add("mlp_residual", f2, h).unwrap();
        b.output("y", y);
        b.finish().unwrap()
    }

    fn epilogues(g: &Graph) -> Vec<(String, Epilogue)> {
        g.nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::MatMul { epilogue, .. } => Some((n.name.clone(), epilogue)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn vit_block_fuses_into_bias_gelu_and_bias_residual() {
        for (tanh, act) in [(true, Activation::GeluTanh), (false, Activation::Gelu)] {
            for policy in [PrecisionPolicy::F32, PrecisionPolicy::W4A8] {
                let mut g = vit_block(tanh);
                let stored: StoredDType = Box::new(|_| None);
                Pipeline::compile(policy, stored).run(&mut g).unwrap();
                let want = [
                    ("o+residual", Epilogue::BIAS_RESIDUAL),
                    (
                        if tanh { "fc1+gelu_tanh" } else { "fc1+gelu" },
                        Epilogue::new(&[Step::Bias, Step::Act(act)]).unwrap(),
                    ),
                    ("fc2+residual", Epilogue::BIAS_RESIDUAL),
                ];
                let got = epilogues(&g);
                let got: Vec<(&str, Epilogue)> = got.iter().map(|(n, e)| (&n[..], *e)).collect();
                assert_eq!(got, want, "{g}");
                let kinds: Vec<&str> = g.nodes.iter().map(|n| n.op.kind()).collect();
                assert!(
                    !kinds.iter().any(|k| matches!(*k, "add" | "gelu")),
                    "{kinds:?}"
                );
            }
        }
    }

    /// A layer_norm read only by a quantizing matmul becomes its prologue (inputs `x,
    /// W, norm weight, norm bias`); one that another op also reads stays, and at f32
    /// (no quantization pass to fold it into) nothing is folded.
    #[test]
    fn layer_norm_folds_into_the_quantizing_matmul_that_alone_reads_it() {
        use crate::{NodeId, Prologue};
        let build = || {
            let mut b = Builder::new();
            let x = b.input("x", TensorFact::f32([5, 32])).unwrap();
            let w = |b: &mut Builder, name: &str, shape: &[usize]| {
                b.weight(name, TensorFact::f32(shape.to_vec())).unwrap()
            };
            let (g1, b1) = (w(&mut b, "ln1.weight", &[32]), w(&mut b, "ln1.bias", &[32]));
            let (g2, b2) = (w(&mut b, "ln2.weight", &[32]), w(&mut b, "ln2.bias", &[32]));
            let (w1, w2) = (
                w(&mut b, "fc1.weight", &[32, 32]),
                w(&mut b, "fc2.weight", &[32, 32]),
            );
            let h1 = b.layer_norm("ln1", x, g1, b1, 1e-6).unwrap();
            let y1 = b.linear("fc1", h1, w1).unwrap();
            let h2 = b.layer_norm("ln2", y1, g2, b2, 1e-6).unwrap();
            let y2 = b.linear("fc2", h2, w2).unwrap();
            // ln2 is read by the residual add too (and fc2, producing the output, is the
            // head: quantized as well).
            let y2 = b.add("shared", y2, h2).unwrap();
            b.output("y", y2);
            b.finish().unwrap()
        };
        for (policy, folds) in [(PrecisionPolicy::W8A8, true), (PrecisionPolicy::F32, false)] {
            let mut g = build();
            let stored: StoredDType = Box::new(|_| None);
            Pipeline::compile(policy, stored).run(&mut g).unwrap();
            let norms: Vec<&str> = g
                .nodes
                .iter()
                .filter(|n| n.op.kind() == "layer_norm")
                .map(|n| &n.name[..])
                .collect();
            assert_eq!(
                norms,
                if folds {
                    vec!["ln2"]
                } else {
                    vec!["ln1", "ln2"]
                },
                "{g}"
            );
            let fc1 = g.nodes.iter().find(|n| n.name.ends_with("fc1")).unwrap();
            let Op::MatMul { prologue, .. } = fc1.op else {
                panic!("{g}")
            };
            if !folds {
                assert_eq!(prologue, Prologue::None, "{g}");
                continue;
            }
            assert_eq!(prologue, Prologue::LayerNorm { eps: 1e-6 }, "{g}");
            assert_eq!(fc1.name, "ln1+fc1");
            let names: Vec<&str> = fc1
                .inputs
                .iter()
                .map(|&NodeId(i)| &g.nodes[i].name[..])
                .collect();
            assert_eq!(names, ["x", "fc1.weight", "ln1.weight", "ln1.bias"], "{g}");
        }
    }

    #[test]
    fn activation_is_not_fused_behind_a_residual_or_into_a_shared_product() {
        let mut b = Builder::new();
        let x = b.input("x", TensorFact::f32([3, 8])).unwrap();
        let w = b.weight("w", TensorFact::f32([8, 8])).unwrap();
        let y = b.linear("y", x, w).unwrap();
        let r = b.add("r", x, y).unwrap();
        // gelu(x + y @ w): the activation would have to move inside the residual sum.
        let g1 = b.gelu("g1", r, false).unwrap();
        // A matmul read twice keeps its raw output for the other reader.
        let z = b.linear("z", g1, w).unwrap();
        let g2 = b.silu("g2", z).unwrap();
        b.output("g2", g2);
        b.output("z", z);
        let mut g = b.finish().unwrap();
        let stored: StoredDType = Box::new(|_| None);
        Pipeline::compile(PrecisionPolicy::F32, stored)
            .run(&mut g)
            .unwrap();
        let got = epilogues(&g);
        assert_eq!(
            got.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
            [Epilogue::RESIDUAL, Epilogue::NONE],
            "{g}"
        );
        assert_eq!(
            g.op_histogram()
                .iter()
                .filter(|(k, _)| *k == "gelu" || *k == "silu")
                .count(),
            2
        );
    }
}
