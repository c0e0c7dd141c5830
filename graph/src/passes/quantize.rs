//! Applies a `PrecisionPolicy`: sets each weight's storage format and each matmul's
//! activation precision, by the role the weight plays (found from its consumers, not
//! its name): embedding table, output head (a matmul producing a graph output), or
//! linear layer. A tied embedding/head table gets the head's format. KV cache states
//! (the caches `kv_write` writes) get the policy's `kv_cache` type, and bidirectional
//! attention the policy's `attention` precision.

use super::Pass;
use crate::{
    ActPrecision, AttentionMode, DType, Graph, GraphError, KvCacheType, NodeId, Op,
    PrecisionPolicy, TensorFact, WeightFormat,
};

/// The checkpoint's stored dtype of a weight (by checkpoint name).
pub type StoredDType = Box<dyn Fn(&str) -> Option<DType> + Send + Sync>;

pub struct Quantize {
    pub policy: PrecisionPolicy,
    pub stored: StoredDType,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    None,
    Linear,
    Embedding,
    Head,
}

impl Quantize {
    fn roles(g: &Graph) -> Vec<Role> {
        let outputs: Vec<NodeId> = g.outputs.iter().map(|(_, id)| *id).collect();
        let mut role = vec![Role::None; g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            match &n.op {
                Op::Gather => {
                    let t = n.inputs[0].0;
                    if role[t] != Role::Head {
                        role[t] = Role::Embedding;
                    }
                }
                Op::MatMul {
                    transpose_b: true, ..
                } => {
                    let w = n.inputs[1].0;
                    if outputs.contains(&NodeId(i)) {
                        role[w] = Role::Head;
                    } else if role[w] == Role::None {
                        role[w] = Role::Linear;
                    }
                }
                _ => {}
            }
        }
        role
    }
}

impl Quantize {
    /// Gives every cache state the policy's cache type, and each write (which aliases
    /// its cache) the cache's fact. The int8 type's blocks are one KV head's row, so
    /// its head dim comes from the causal attention reading the cache (through its
    /// write). Writes follow their cache in node order, so one pass suffices.
    fn set_kv_caches(g: &mut Graph, kv: KvCacheType) -> Result<bool, GraphError> {
        let caches: Vec<NodeId> = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::KvWrite))
            .map(|n| n.inputs[0])
            .collect();
        // The head dim each cache is read with.
        let mut head_dim_of = vec![None; g.nodes.len()];
        for n in &g.nodes {
            if let Op::Attention {
                head_dim,
                mode: AttentionMode::Causal,
                ..
            } = n.op
            {
                for &x in &n.inputs[1..3] {
                    let cache = match g.nodes[x.0].op {
                        Op::KvWrite => g.nodes[x.0].inputs[0],
                        _ => x,
                    };
                    head_dim_of[cache.0] = Some(head_dim);
                }
            }
        }
        let mut changed = false;
        for i in 0..g.nodes.len() {
            let n = &g.nodes[i];
            let fact = match &n.op {
                Op::State { .. } if caches.contains(&NodeId(i)) => {
                    let head_dim = match (kv, head_dim_of.get(i).copied().flatten()) {
                        (KvCacheType::Int8, Some(hd))
                            if hd.is_multiple_of(4) && hd <= u16::MAX as usize =>
                        {
                            hd
                        }
                        (KvCacheType::Int8, hd) => {
                            return Err(GraphError::IllFormed {
                                node: n.name.clone(),
                                op: "state",
                                reason: format!(
                                    "an int8 KV cache needs a causal attention reading it with a head_dim that is a multiple of 4, got {hd:?}"
                                ),
                            })
                        }
                        (_, hd) => hd.unwrap_or(0),
                    };
                    TensorFact::new(kv.dtype(head_dim), n.fact.shape.clone())
                }
                Op::KvWrite => g.nodes[n.inputs[0].0].fact.clone(),
                _ => continue,
            };
            let n = &mut g.nodes[i];
            if n.fact != fact {
                changed = true;
                n.fact = fact.clone();
                if let Op::State { fact: f, .. } = &mut n.op {
                    *f = fact;
                }
            }
        }
        Ok(changed)
    }
}

impl Pass for Quantize {
    fn name(&self) -> &'static str {
        "quantize"
    }

    fn run(&self, g: &mut Graph) -> Result<bool, GraphError> {
        let roles = Self::roles(g);
        let mut changed = false;
        let mut act_of = vec![None; g.nodes.len()];
        for (i, n) in g.nodes.iter_mut().enumerate() {
            let Op::Weight { name, fact, parts } = &mut n.op else {
                continue;
            };
            let (format, act) = match roles[i] {
                Role::None => continue,
                Role::Linear => (self.policy.linear, self.policy.linear_act),
                Role::Embedding => (self.policy.embedding, ActPrecision::F32),
                Role::Head => (self.policy.head, self.policy.head_act),
            };
            let checkpoint_name = parts.first().unwrap_or(name);
            let stored = (self.stored)(checkpoint_name).unwrap_or(DType::F32);
            let mut dtype = format.resolve(stored);
            // Whole 32-value blocks for every quantized format, Q8Channel included: the
            // integer kernels quantize activations in 32-value blocks (`ActPrecision`).
            let align = if dtype.is_quantized() {
                dtype.block_elems().max(32)
            } else {
                1
            };
            if fact.rank() != 2 || fact.last_dim() % align != 0 {
                dtype = WeightFormat::Exact(DType::F32).resolve(stored);
            }
            if fact.dtype != dtype {
                fact.dtype = dtype;
                n.fact.dtype = dtype;
                changed = true;
            }
            act_of[i] = Some(if dtype.is_quantized() {
                act
            } else {
                ActPrecision::F32
            });
        }
        changed |= Self::set_kv_caches(g, self.policy.kv_cache)?;
        for n in g.nodes.iter_mut() {
            if let Op::MatMul { act, .. } = &mut n.op {
                if let Some(want) = act_of[n.inputs[1].0] {
                    if *act != want {
                        *act = want;
                        changed = true;
                    }
                }
            }
            if let Op::Attention {
                mode: AttentionMode::Bidirectional { .. },
                precision,
                ..
            } = &mut n.op
            {
                if *precision != self.policy.attention {
                    *precision = self.policy.attention;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}
