//! The one LLaMA-family graph builder. Every variant (SmolLM2, Llama 2/3, BlueLM's
//! stable-embedding LayerNorm, attention biases, tied or untied heads) is a config
//! switch here, and every static shape (a 128-token prefill chunk, a 1-token decode
//! step) is a build option, not another copy of the model.
//!
//! Graph interface (names the runtime binds):
//! - inputs: `ids` i32[T] (or `embeds` f32[T, hidden]), `pos` i32[1] (position of row
//!   0), `n_valid` i32[1] (rows that are real tokens; the rest is padding), and with
//!   `LogitsMode::Last` `last_row` i32[1] (= n_valid - 1);
//! - states: `kv.{layer}.k`, `kv.{layer}.v` f32[cache_rows, kv_heads*head_dim];
//! - outputs: `logits` f32[T or 1, vocab]; with `taps`, HF `output_hidden_states`
//!   names (`h0`.., `h{L}_prenorm`, `final_norm`, `l0.q_rope`, ...).

use crate::{LlamaConfig, Result};
use npurt_graph::{Builder, Graph, NodeId, RopeParams, TensorFact};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsMode {
    /// Logits for every row (perplexity, `npurt logits`).
    All,
    /// Logits for row `last_row` only (generation: 1/T of the head's cost).
    Last,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Token ids, embedded by the graph.
    Ids,
    /// Precomputed input embeddings (e.g. projected image tokens spliced with text).
    Embeddings,
}

#[derive(Clone, Debug)]
pub struct LlamaGraphOptions {
    /// Rows per execution (the static chunk size; 1 for decode).
    pub rows: usize,
    /// KV-cache rows.
    pub cache_rows: usize,
    pub logits: LogitsMode,
    pub input: InputKind,
    /// Also output HF-named intermediate tensors (tests, debugging).
    pub taps: bool,
}

/// HF checkpoint names of the tensors a layer uses.
pub fn layer_weight(layer: usize, name: &str) -> String {
    format!("model.layers.{layer}.{name}")
}

/// Name of the LM head weight (the embedding table when tied).
pub fn head_weight(cfg: &LlamaConfig) -> &'static str {
    if cfg.tie_word_embeddings {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    }
}

pub fn kv_state_names(layer: usize) -> [String; 2] {
    [format!("kv.{layer}.k"), format!("kv.{layer}.v")]
}

struct Ctx<'a> {
    b: Builder,
    cfg: &'a LlamaConfig,
    opts: &'a LlamaGraphOptions,
    pos: NodeId,
    n_valid: NodeId,
}

impl Ctx<'_> {
    fn w(&mut self, name: &str, shape: &[usize]) -> Result<NodeId> {
        Ok(self.b.weight(name, TensorFact::f32(shape))?)
    }

    fn tap(&mut self, name: &str, id: NodeId) {
        if self.opts.taps {
            self.b.output(name, id);
        }
    }

    /// `x @ W^T (+ b)` for a Linear named `prefix` (`....q_proj`).
    fn linear(
        &mut self,
        prefix: &str,
        x: NodeId,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<NodeId> {
        let w = self.w(&format!("{prefix}.weight"), &[out, inp])?;
        let short = prefix.rsplit('.').next().unwrap_or(prefix);
        let y = self.b.linear(short, x, w)?;
        if !bias {
            return Ok(y);
        }
        let bv = self.w(&format!("{prefix}.bias"), &[out])?;
        Ok(self.b.add(&format!("{short}.bias"), y, bv)?)
    }

    fn layer(&mut self, l: usize, x: NodeId) -> Result<NodeId> {
        let c = self.cfg;
        let (h, qw, kw, bias) = (c.hidden_size, c.q_width(), c.kv_width(), c.attention_bias);
        self.b.push_scope(format!("layers.{l}"));
        let ln1 = self.w(&layer_weight(l, "input_layernorm.weight"), &[h])?;
        let a_in = self.b.rms_norm("input_layernorm", x, ln1, c.rms_norm_eps)?;
        let p = |n: &str| layer_weight(l, &format!("self_attn.{n}"));
        let q = self.linear(&p("q_proj"), a_in, qw, h, bias)?;
        let k = self.linear(&p("k_proj"), a_in, kw, h, bias)?;
        let v = self.linear(&p("v_proj"), a_in, kw, h, bias)?;
        let rope = RopeParams {
            head_dim: c.head_dim,
            rotary_dim: c.head_dim,
            theta: c.rope_theta,
            scaling: c.rope_scaling.clone(),
        };
        let q_rope = self
            .b
            .rope("q_rope", q, self.pos, self.n_valid, rope.clone())?;
        let k_rope = self.b.rope("k_rope", k, self.pos, self.n_valid, rope)?;
        let [kn, vn] = kv_state_names(l);
        let k_cache = self
            .b
            .state(&kn, TensorFact::f32([self.opts.cache_rows, kw]))?;
        let v_cache = self
            .b
            .state(&vn, TensorFact::f32([self.opts.cache_rows, kw]))?;
        let k_cache = self.b.kv_write("k_write", k_cache, k_rope, self.pos)?;
        let v_cache = self.b.kv_write("v_write", v_cache, v, self.pos)?;
        let att = self.b.attention(
            "attention",
            q_rope,
            k_cache,
            v_cache,
            self.pos,
            self.n_valid,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )?;
        let o = self.linear(&p("o_proj"), att, h, qw, bias)?;
        if l == 0 {
            for (name, id) in [
                ("l0.attn_in", a_in),
                ("l0.q", q),
                ("l0.k", k),
                ("l0.v", v),
                ("l0.q_rope", q_rope),
                ("l0.k_rope", k_rope),
                ("l0.attn_out", o),
            ] {
                self.tap(name, id);
            }
        }
        let x = self.b.add("attn_residual", x, o)?;
        let ln2 = self.w(&layer_weight(l, "post_attention_layernorm.weight"), &[h])?;
        let m_in = self
            .b
            .rms_norm("post_attention_layernorm", x, ln2, c.rms_norm_eps)?;
        let m = |n: &str| layer_weight(l, &format!("mlp.{n}"));
        let inter = c.intermediate_size;
        let gate = self.linear(&m("gate_proj"), m_in, inter, h, false)?;
        let up = self.linear(&m("up_proj"), m_in, inter, h, false)?;
        let act = self.b.silu("silu", gate)?;
        let gated = self.b.mul("swiglu", act, up)?;
        let down = self.linear(&m("down_proj"), gated, h, inter, false)?;
        let out = self.b.add("mlp_residual", x, down)?;
        self.b.pop_scope();
        Ok(out)
    }
}

/// Builds the decoder graph for `cfg` at the static shapes in `opts`.
pub fn build(cfg: &LlamaConfig, opts: &LlamaGraphOptions) -> Result<Graph> {
    cfg.validate()?;
    let (t, h) = (opts.rows, cfg.hidden_size);
    let mut b = Builder::new();
    let pos = b.input("pos", TensorFact::i32([1]))?;
    let n_valid = b.input("n_valid", TensorFact::i32([1]))?;
    let mut ctx = Ctx {
        b,
        cfg,
        opts,
        pos,
        n_valid,
    };

    let mut x = match opts.input {
        InputKind::Ids => {
            let ids = ctx.b.input("ids", TensorFact::i32([t]))?;
            let table = ctx.w("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
            ctx.b.gather("embed_tokens", table, ids)?
        }
        InputKind::Embeddings => ctx.b.input("embeds", TensorFact::f32([t, h]))?,
    };
    if let Some(eps) = cfg.embed_layer_norm {
        let w = ctx.w("model.embed_layer_norm.weight", &[h])?;
        let bias = ctx.w("model.embed_layer_norm.bias", &[h])?;
        x = ctx.b.layer_norm("embed_layer_norm", x, w, bias, eps)?;
    }
    for l in 0..cfg.num_hidden_layers {
        ctx.tap(&format!("h{l}"), x);
        x = ctx.layer(l, x)?;
    }
    ctx.tap(&format!("h{}_prenorm", cfg.num_hidden_layers), x);
    if opts.logits == LogitsMode::Last {
        // The norm is per row, so the last row is picked first: one row normalized
        // instead of a chunk, and the norm can then fuse into the head's matmul.
        let last = ctx.b.input("last_row", TensorFact::i32([1]))?;
        x = ctx.b.select_row("last_row", x, last)?;
    }
    let norm_w = ctx.w("model.norm.weight", &[h])?;
    let y = ctx.b.rms_norm("norm", x, norm_w, cfg.rms_norm_eps)?;
    ctx.tap("final_norm", y);
    let head = ctx.w(head_weight(cfg), &[cfg.vocab_size, h])?;
    let logits = ctx.b.linear("lm_head", y, head)?;
    ctx.b.output("logits", logits);
    Ok(ctx.b.finish()?)
}

/// Name of the embedding-table output of [`build_embed_tokens`].
pub const EMBEDS: &str = "embeds";

/// The token-embedding lookup alone: `ids` [rows] -> `embeds` [rows, hidden], the rows an
/// [`InputKind::Embeddings`] graph takes. A multimodal prompt's chunk that mixes text and
/// image rows embeds its text rows with this graph (same weight name, so the same
/// prepared table) and splices the image rows in.
pub fn build_embed_tokens(cfg: &LlamaConfig, rows: usize) -> Result<Graph> {
    cfg.validate()?;
    let mut b = Builder::new();
    let ids = b.input("ids", TensorFact::i32([rows]))?;
    let table = b.weight(
        "model.embed_tokens.weight",
        TensorFact::f32([cfg.vocab_size, cfg.hidden_size]),
    )?;
    let x = b.gather("embed_tokens", table, ids)?;
    b.output(EMBEDS, x);
    Ok(b.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny() -> LlamaConfig {
        LlamaConfig::from_hf_json(&json!({"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "tie_word_embeddings": true,
            "attention_bias": true, "use_stable_embedding": true}))
        .unwrap()
    }

    #[test]
    fn builds_every_variant() {
        let cfg = tiny();
        for (logits, input, taps) in [
            (LogitsMode::All, InputKind::Ids, true),
            (LogitsMode::Last, InputKind::Embeddings, false),
        ] {
            let g = build(
                &cfg,
                &LlamaGraphOptions {
                    rows: 8,
                    cache_rows: 40,
                    logits,
                    input,
                    taps,
                },
            )
            .unwrap();
            let out = g.fact(g.output("logits").unwrap());
            assert_eq!(
                out.shape,
                if logits == LogitsMode::All {
                    vec![8, 64]
                } else {
                    vec![1, 64]
                }
            );
            assert_eq!(g.sources("state").len(), 4);
            // q, k, v, o biases + embed layer norm present.
            assert!(g
                .find_source("weight", "model.layers.1.self_attn.o_proj.bias")
                .is_some());
            assert!(g
                .find_source("weight", "model.embed_layer_norm.bias")
                .is_some());
            assert!(g.find_source("weight", "lm_head.weight").is_none());
        }
    }

    /// Runs `graph` on the CPU backend with weights from `w` (parts concatenated).
    fn run_cpu(
        graph: &Graph,
        w: &std::collections::HashMap<String, Vec<f32>>,
        ids: &[i32],
    ) -> Vec<f32> {
        use npurt_backends::{
            cpu::{CpuBackend, CpuOptions},
            Backend, Bindings, BufferUsage,
        };
        use npurt_graph::Op;
        use npurt_kernels::HostTensor;
        let be = CpuBackend::new(CpuOptions::default());
        let mut weights = Vec::new();
        for id in graph.ids() {
            if let Op::Weight { name, fact, parts } = &graph.node(id).op {
                let names = if parts.is_empty() {
                    vec![name.clone()]
                } else {
                    parts.clone()
                };
                let data: Vec<f32> = names.iter().flat_map(|n| w[n].iter().copied()).collect();
                weights.push((
                    id,
                    be.prepare_weight(name, HostTensor::f32(fact.shape.clone(), data))
                        .unwrap(),
                ));
            }
        }
        let exec = be.compile(graph, &weights).unwrap();
        let mut b = Bindings::default();
        for (name, v) in [
            ("ids", ids.to_vec()),
            ("pos", vec![0]),
            ("n_valid", vec![ids.len() as i32]),
        ] {
            let t = HostTensor::i32([v.len()], v);
            let buf = be.alloc(&t.fact, BufferUsage::Activations).unwrap();
            be.write(buf.as_ref(), &t).unwrap();
            b.sources
                .push((graph.find_source("input", name).unwrap(), buf));
        }
        for (id, _, fact) in graph.sources("state") {
            b.sources
                .push((id, be.alloc(fact, BufferUsage::State).unwrap()));
        }
        let out = graph.fact(graph.output("logits").unwrap()).clone();
        b.outputs.push((
            "logits".into(),
            be.alloc(&out, BufferUsage::Activations).unwrap(),
        ));
        exec.run(&b, exec.new_scratch().unwrap().as_mut()).unwrap();
        be.read(b.output("logits").unwrap().as_ref())
            .unwrap()
            .into_f32()
            .unwrap()
    }

    #[test]
    fn fused_graph_computes_what_the_plain_graph_does() {
        use npurt_graph::passes::Pipeline;
        use npurt_graph::PrecisionPolicy;
        let cfg = tiny();
        let opts = LlamaGraphOptions {
            rows: 5,
            cache_rows: 8,
            logits: LogitsMode::All,
            input: InputKind::Ids,
            taps: false,
        };
        let plain = build(&cfg, &opts).unwrap();
        let mut fused = plain.clone();
        let reports = Pipeline::compile(PrecisionPolicy::F32, Box::new(|_| None))
            .run(&mut fused)
            .unwrap();
        assert!(reports.iter().any(|r| r.pass == "fuse-swiglu" && r.changed));
        // Per layer: one qkv matmul (+bias), one o_proj (+bias+residual), one gate+up
        // (+swiglu), one down (+residual); plus the head.
        let kinds = fused.op_histogram();
        let count = |k: &str| {
            kinds
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, c)| *c)
                .unwrap_or(0)
        };
        assert_eq!(count("matmul"), 4 * cfg.num_hidden_layers + 1, "{fused}");
        assert_eq!(count("slice_cols"), 3 * cfg.num_hidden_layers);
        assert_eq!(count("add") + count("mul") + count("silu"), 0, "{fused}");
        let mut rng = npurt_graph::SeededRng::new(7);
        let mut w = std::collections::HashMap::new();
        for (_, name, fact) in plain.sources("weight") {
            let n = fact.elems().unwrap();
            let base = if name.contains("norm") { 1.0 } else { 0.0 };
            let v: Vec<f32> = (0..n).map(|_| base + rng.uniform(-0.2, 0.2)).collect();
            w.insert(name.to_string(), v);
        }
        let ids = [3, 17, 42, 0, 63];
        let (a, b) = (run_cpu(&plain, &w, &ids), run_cpu(&fused, &w, &ids));
        let d = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d < 1e-5, "fused graph differs by {d}");

        // With quantized activations each layer's rms_norms fold into the matmul they
        // feed (q/k/v, gate+up); the final one stays: W8A16 keeps an f32 checkpoint's
        // head in f32, which quantizes nothing. The numerics are the conformance
        // suite's and the golden tests' business.
        let mut quantized = plain.clone();
        Pipeline::compile(PrecisionPolicy::W8A16, Box::new(|_| None))
            .run(&mut quantized)
            .unwrap();
        let with_norm = quantized
            .nodes
            .iter()
            .filter(|n| {
                matches!(
                    n.op,
                    npurt_graph::Op::MatMul {
                        prologue: npurt_graph::Prologue::RmsNorm { .. },
                        ..
                    }
                )
            })
            .count();
        let norms = quantized.nodes.iter().filter(|n| n.op.kind() == "rms_norm");
        assert_eq!(norms.count(), 1, "{quantized}");
        assert_eq!(with_norm, 2 * cfg.num_hidden_layers, "{quantized}");
    }
}
