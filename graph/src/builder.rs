//! A thin builder over `Graph::add` that scopes node names (`layers.3.attn.q`) so model
//! code reads like the model and errors point at the exact layer.

use crate::{
    ActPrecision, AttentionMode, AttentionPrecision, Epilogue, Graph, GraphError, NodeId, Op,
    Prologue, RopeParams, TensorFact,
};

pub struct Builder {
    pub graph: Graph,
    scope: Vec<String>,
}

type R = Result<NodeId, GraphError>;

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub fn new() -> Self {
        Builder {
            graph: Graph::new(),
            scope: Vec::new(),
        }
    }

    pub fn push_scope(&mut self, s: impl Into<String>) {
        self.scope.push(s.into());
    }
    pub fn pop_scope(&mut self) {
        self.scope.pop();
    }

    fn scoped(&self, name: &str) -> String {
        if self.scope.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.scope.join("."), name)
        }
    }

    pub fn op(&mut self, name: &str, op: Op, inputs: &[NodeId]) -> R {
        let n = self.scoped(name);
        self.graph.add(n, op, inputs)
    }

    pub fn input(&mut self, name: &str, fact: TensorFact) -> R {
        self.graph.add(
            name,
            Op::Input {
                name: name.into(),
                fact,
            },
            &[],
        )
    }
    /// Weights are named by their full (checkpoint) name, not the scope. Declaring the
    /// same weight again returns the existing node (tied embeddings use one table twice);
    /// a different fact for the same name is an error at validation.
    pub fn weight(&mut self, name: &str, fact: TensorFact) -> R {
        if let Some(id) = self.graph.find_source("weight", name) {
            if *self.graph.fact(id) == fact {
                return Ok(id);
            }
        }
        self.graph.add(
            name,
            Op::Weight {
                name: name.into(),
                fact,
                parts: Vec::new(),
            },
            &[],
        )
    }
    pub fn state(&mut self, name: &str, fact: TensorFact) -> R {
        self.graph.add(
            name,
            Op::State {
                name: name.into(),
                fact,
            },
            &[],
        )
    }
    pub fn gather(&mut self, name: &str, table: NodeId, ids: NodeId) -> R {
        self.op(name, Op::Gather, &[table, ids])
    }
    /// `x [M,K] @ w^T` with `w` stored `[N, K]` (PyTorch Linear).
    pub fn linear(&mut self, name: &str, x: NodeId, w: NodeId) -> R {
        self.op(
            name,
            Op::MatMul {
                transpose_b: true,
                act: ActPrecision::F32,
                prologue: Prologue::None,
                epilogue: Epilogue::NONE,
            },
            &[x, w],
        )
    }
    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId) -> R {
        self.op(name, Op::Add, &[a, b])
    }
    pub fn mul(&mut self, name: &str, a: NodeId, b: NodeId) -> R {
        self.op(name, Op::Mul, &[a, b])
    }
    pub fn rms_norm(&mut self, name: &str, x: NodeId, w: NodeId, eps: f32) -> R {
        self.op(name, Op::RmsNorm { eps }, &[x, w])
    }
    pub fn layer_norm(&mut self, name: &str, x: NodeId, w: NodeId, b: NodeId, eps: f32) -> R {
        self.op(name, Op::LayerNorm { eps }, &[x, w, b])
    }
    pub fn rope(
        &mut self,
        name: &str,
        x: NodeId,
        pos: NodeId,
        n_valid: NodeId,
        params: RopeParams,
    ) -> R {
        self.op(name, Op::Rope { params }, &[x, pos, n_valid])
    }
    pub fn kv_write(&mut self, name: &str, cache: NodeId, new: NodeId, pos: NodeId) -> R {
        self.op(name, Op::KvWrite, &[cache, new, pos])
    }
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        name: &str,
        q: NodeId,
        k: NodeId,
        v: NodeId,
        pos: NodeId,
        n_valid: NodeId,
        n_heads: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> R {
        let scale = 1.0 / (head_dim as f32).sqrt();
        self.op(
            name,
            Op::Attention {
                n_heads,
                n_kv_heads,
                head_dim,
                scale,
                mode: AttentionMode::Causal,
                precision: AttentionPrecision::F32,
            },
            &[q, k, v, pos, n_valid],
        )
    }
    /// ViT attention: every query sees every key of its own `seq`-row sequence
    /// (`q, k, v [B*seq, heads*head_dim]`, no cache), scale `1/sqrt(head_dim)`.
    pub fn attention_bidirectional(
        &mut self,
        name: &str,
        [q, k, v]: [NodeId; 3],
        n_heads: usize,
        head_dim: usize,
        seq: usize,
    ) -> R {
        let scale = 1.0 / (head_dim as f32).sqrt();
        self.op(
            name,
            Op::Attention {
                n_heads,
                n_kv_heads: n_heads,
                head_dim,
                scale,
                mode: AttentionMode::Bidirectional { seq },
                precision: AttentionPrecision::F32,
            },
            &[q, k, v],
        )
    }
    /// Zero-pad each `grid` of tokens to a multiple of `block` and merge every
    /// `block x block` cell into one token (the ViT token downsampler).
    pub fn space_to_channel(&mut self, name: &str, x: NodeId, grid: [usize; 2], block: usize) -> R {
        self.op(name, Op::SpaceToChannel { grid, block }, &[x])
    }
    pub fn silu(&mut self, name: &str, x: NodeId) -> R {
        self.op(name, Op::Silu, &[x])
    }
    pub fn gelu(&mut self, name: &str, x: NodeId, tanh: bool) -> R {
        self.op(name, Op::Gelu { tanh }, &[x])
    }
    pub fn softmax(&mut self, name: &str, x: NodeId) -> R {
        self.op(name, Op::Softmax, &[x])
    }
    pub fn reshape(&mut self, name: &str, x: NodeId, shape: &[usize]) -> R {
        self.op(
            name,
            Op::Reshape {
                shape: shape.to_vec(),
            },
            &[x],
        )
    }
    pub fn transpose(&mut self, name: &str, x: NodeId, perm: &[usize]) -> R {
        self.op(
            name,
            Op::Transpose {
                perm: perm.to_vec(),
            },
            &[x],
        )
    }
    pub fn select_row(&mut self, name: &str, x: NodeId, index: NodeId) -> R {
        self.op(name, Op::SelectRow, &[x, index])
    }
    pub fn output(&mut self, name: &str, id: NodeId) {
        self.graph.set_output(name, id);
    }
    pub fn finish(self) -> Result<Graph, GraphError> {
        self.graph.validate()?;
        Ok(self.graph)
    }
}
