//! The one SigLIP vision-tower graph builder (HF `SiglipVisionModel`), beside
//! `llama.rs`: the same builder serves every size (siglip_tiny, so400m) and every
//! precision (a compile policy applied by the pass pipeline, never a copy).
//!
//! The tower is built as two stages so the runtime can run them on different
//! backends and overlap them (BlueLM-V pipelines the Conv2D against the blocks):
//! - [`VisionStage::Embed`]: `pixels f32[B, C, S, S]` -> `embeddings f32[B*N, D]`
//!   (Conv2D patch embedding, then the learned position embedding; N = (S/p)^2);
//! - [`VisionStage::Encoder`]: `embeddings f32[B*N, D]` -> `features f32[B*N, D]`
//!   (pre-LN encoder blocks with bidirectional attention within each tile, then the
//!   post-layernorm when the feature layer is the last one).
//!
//! Weight names are HF's without the `vision_model.` prefix (loaders strip it).

use crate::config::bad;
use crate::{Result, WeightStore};
use npurt_graph::{Builder, Graph, NodeId, TensorFact};
use serde_json::Value;

/// `SiglipVisionConfig` fields npurt uses.
#[derive(Clone, Debug, PartialEq)]
pub struct SiglipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    /// `gelu_pytorch_tanh` (SigLIP's) or exact `gelu`.
    pub gelu_tanh: bool,
    pub layer_norm_eps: f32,
}

/// Which hidden state the tower outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VisionFeature {
    /// `last_hidden_state`: the last block's output after `post_layernorm`.
    #[default]
    Last,
    /// `hidden_states[-2]`: the input of the last block (LLaVA's choice), no post-LN;
    /// the last block is not computed at all.
    SecondLast,
}

impl VisionFeature {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "last" | "last_hidden_state" => Some(VisionFeature::Last),
            "second_last" | "second-last" | "hidden_states[-2]" | "-2" => {
                Some(VisionFeature::SecondLast)
            }
            _ => None,
        }
    }
}

/// Upper bounds on a credible config (checked before any shape is multiplied out).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 256;
const MAX_IMAGE: usize = 4096;
/// Quantized weight blocks hold 32 values along K.
const MLP_ALIGN: usize = 32;

impl SiglipVisionConfig {
    /// SigLIP-so400m-patch14-384, the vision tower of BlueLM-V-3B.
    pub fn so400m() -> Self {
        SiglipVisionConfig {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 384,
            patch_size: 14,
            gelu_tanh: true,
            layer_norm_eps: 1e-6,
        }
    }

    /// From an HF `config.json`: a `SiglipVisionConfig`, or a full `SiglipConfig`
    /// (its `vision_config`). Missing fields take HF's defaults.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let v = v.get("vision_config").unwrap_or(v);
        if !v.is_object() {
            return Err(bad("config", "is not a JSON object"));
        }
        let int = |k: &str, default: usize| -> Result<usize> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(k, format!("{x} is not a non-negative integer"))),
            }
        };
        let act = match v.get("hidden_act").and_then(Value::as_str) {
            None | Some("gelu_pytorch_tanh") | Some("gelu_new") | Some("gelu_fast") => true,
            Some("gelu") => false,
            Some(other) => return Err(bad("hidden_act", format!("`{other}` is not supported"))),
        };
        let eps = match v.get("layer_norm_eps") {
            None | Some(Value::Null) => 1e-6,
            Some(x) => x
                .as_f64()
                .ok_or_else(|| bad("layer_norm_eps", format!("{x} is not a number")))?
                as f32,
        };
        let cfg = SiglipVisionConfig {
            hidden_size: int("hidden_size", 768)?,
            intermediate_size: int("intermediate_size", 3072)?,
            num_hidden_layers: int("num_hidden_layers", 12)?,
            num_attention_heads: int("num_attention_heads", 12)?,
            num_channels: int("num_channels", 3)?,
            image_size: int("image_size", 224)?,
            patch_size: int("patch_size", 16)?,
            gelu_tanh: act,
            layer_norm_eps: eps,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The HF `config.json` of a `SiglipVisionModel` of this shape: what
    /// [`SiglipVisionConfig::from_hf_json`] reads back as `self`.
    pub fn to_hf_json(&self) -> Value {
        serde_json::json!({
            "architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model",
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_channels": self.num_channels, "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_act": if self.gelu_tanh { "gelu_pytorch_tanh" } else { "gelu" },
            "layer_norm_eps": self.layer_norm_eps, "vision_use_head": false,
        })
    }

    pub fn validate(&self) -> Result<()> {
        let within = |field: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(bad(field, format!("{v} is outside 1..={max}")))
            } else {
                Ok(())
            }
        };
        within("hidden_size", self.hidden_size, MAX_DIM)?;
        within("intermediate_size", self.intermediate_size, MAX_DIM)?;
        within("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?;
        within("num_attention_heads", self.num_attention_heads, MAX_DIM)?;
        within("num_channels", self.num_channels, 16)?;
        within("image_size", self.image_size, MAX_IMAGE)?;
        within("patch_size", self.patch_size, self.image_size)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err(bad(
                "layer_norm_eps",
                format!("{} is not a small positive number", self.layer_norm_eps),
            ));
        }
        Ok(())
    }

    /// The MLP width the graphs use: `intermediate_size` rounded up to whole 32-value
    /// blocks (so400m: 4304 -> 4320), so fc1's output rows and fc2's input columns take
    /// INT8 block formats. The loaders zero-pad fc1's extra rows and bias and fc2's extra
    /// columns ([`pad_mlp`]): gelu(0) = 0 and zero columns add nothing, so this is exact.
    pub fn mlp_width(&self) -> usize {
        self.intermediate_size.next_multiple_of(MLP_ALIGN)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Patches per side (the conv has no padding: leftover pixels are ignored).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens per image tile.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Multiply-accumulates of one tile through the encoder blocks (matmuls and
    /// attention), for GOP/s figures.
    pub fn encoder_macs_per_tile(&self, feature: VisionFeature) -> u64 {
        let (n, d, f) = (
            self.tokens() as u64,
            self.hidden_size as u64,
            self.intermediate_size as u64,
        );
        let per_layer = n * (4 * d * d + 2 * d * f) + 2 * n * n * d;
        per_layer * self.layers_run(feature) as u64
    }
    /// Encoder blocks computed for a feature layer.
    pub fn layers_run(&self, feature: VisionFeature) -> usize {
        match feature {
            VisionFeature::Last => self.num_hidden_layers,
            VisionFeature::SecondLast => self.num_hidden_layers - 1,
        }
    }
}

/// Every tensor the tower has, with its HF shape.
pub fn siglip_tensor_shapes(cfg: &SiglipVisionConfig) -> Vec<(String, Vec<usize>)> {
    let (d, f, c, p) = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_channels,
        cfg.patch_size,
    );
    let mut v = vec![
        (
            "embeddings.patch_embedding.weight".to_string(),
            vec![d, c, p, p],
        ),
        ("embeddings.patch_embedding.bias".to_string(), vec![d]),
        (
            "embeddings.position_embedding.weight".to_string(),
            vec![cfg.tokens(), d],
        ),
    ];
    for l in 0..cfg.num_hidden_layers {
        let t = |s: &str| format!("encoder.layers.{l}.{s}");
        for ln in ["layer_norm1", "layer_norm2"] {
            v.push((t(&format!("{ln}.weight")), vec![d]));
            v.push((t(&format!("{ln}.bias")), vec![d]));
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            v.push((t(&format!("self_attn.{proj}.weight")), vec![d, d]));
            v.push((t(&format!("self_attn.{proj}.bias")), vec![d]));
        }
        v.push((t("mlp.fc1.weight"), vec![f, d]));
        v.push((t("mlp.fc1.bias"), vec![f]));
        v.push((t("mlp.fc2.weight"), vec![d, f]));
        v.push((t("mlp.fc2.bias"), vec![d]));
    }
    v.push(("post_layernorm.weight".into(), vec![d]));
    v.push(("post_layernorm.bias".into(), vec![d]));
    v
}

/// Checks the weights against the config: every tensor present with its shape, no
/// encoder layer beyond the configured count, the conv's patch size. Errors name the
/// tensor and both shapes.
pub fn check_siglip_shapes(cfg: &SiglipVisionConfig, w: &WeightStore) -> Result<()> {
    let conv = "embeddings.patch_embedding.weight";
    if let Ok(f) = w.fact(conv) {
        if f.rank() == 4 && (f.shape[2] != cfg.patch_size || f.shape[3] != cfg.patch_size) {
            return Err(bad(
                "patch_size",
                format!(
                    "config says {} but `{conv}` is {:?} (a {}x{} kernel)",
                    cfg.patch_size, f.shape, f.shape[2], f.shape[3]
                ),
            ));
        }
    }
    for (name, shape) in siglip_tensor_shapes(cfg) {
        w.expect_shape(&name, &shape)?;
    }
    let extra = format!("encoder.layers.{}.", cfg.num_hidden_layers);
    if let Some(n) = w.names().find(|n| n.starts_with(&extra)) {
        return Err(bad(
            "num_hidden_layers",
            format!(
                "config says {} but the weights have `{n}`",
                cfg.num_hidden_layers
            ),
        ));
    }
    Ok(())
}

/// Loads an HF SigLIP vision directory (`config.json` + safetensors): names with or
/// without the `vision_model.` prefix; the weights are checked against the config.
pub fn load_dir(dir: &std::path::Path) -> Result<(SiglipVisionConfig, WeightStore)> {
    let cfg =
        SiglipVisionConfig::from_hf_json(&crate::source::read_json(&dir.join("config.json"))?)?;
    let mut w = crate::hf_dir::load_weights(dir)?;
    w.strip_prefix("vision_model.");
    check_siglip_shapes(&cfg, &w)?;
    pad_mlp(&cfg, &mut w)?;
    Ok((cfg, w))
}

/// Zero-pads each layer's MLP from `intermediate_size` to [`SiglipVisionConfig::mlp_width`]
/// (checked weights in, the graphs' shapes out; a no-op when already aligned).
pub fn pad_mlp(cfg: &SiglipVisionConfig, w: &mut WeightStore) -> Result<()> {
    let (d, f) = (cfg.hidden_size, cfg.mlp_width());
    if f == cfg.intermediate_size {
        return Ok(());
    }
    for l in 0..cfg.num_hidden_layers {
        let t = |s: &str| format!("encoder.layers.{l}.mlp.{s}");
        w.pad_f32(&t("fc1.weight"), &[f, d])?;
        w.pad_f32(&t("fc1.bias"), &[f])?;
        w.pad_f32(&t("fc2.weight"), &[d, f])?;
    }
    Ok(())
}

/// Which part of the tower a graph computes (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionStage {
    Embed,
    Encoder,
}

#[derive(Clone, Debug)]
pub struct SiglipGraphOptions {
    /// Tiles per execution (the static batch B).
    pub batch: usize,
    pub stage: VisionStage,
    pub feature: VisionFeature,
    /// Also output HF-named intermediates (`patch_embeds`, `hidden_states_{k}`).
    pub taps: bool,
}

/// Graph interface names the runtime binds.
pub const PIXELS: &str = "pixels";
pub const EMBEDDINGS: &str = "embeddings";
pub const FEATURES: &str = "features";

struct Ctx<'a> {
    b: Builder,
    cfg: &'a SiglipVisionConfig,
    opts: &'a SiglipGraphOptions,
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
    /// `x @ W^T + b` (the fusion passes fold the bias into the matmul).
    fn linear_bias(
        &mut self,
        name: &str,
        x: NodeId,
        weight: &str,
        out: usize,
        inp: usize,
    ) -> Result<NodeId> {
        let w = self.w(&format!("{weight}.weight"), &[out, inp])?;
        let b = self.w(&format!("{weight}.bias"), &[out])?;
        let y = self.b.linear(name, x, w)?;
        Ok(self.b.add(&format!("{name}.bias"), y, b)?)
    }
    fn layer_norm(&mut self, name: &str, x: NodeId, weight: &str, eps: f32) -> Result<NodeId> {
        let d = self.cfg.hidden_size;
        let w = self.w(&format!("{weight}.weight"), &[d])?;
        let b = self.w(&format!("{weight}.bias"), &[d])?;
        Ok(self.b.layer_norm(name, x, w, b, eps)?)
    }

    fn embed(&mut self) -> Result<NodeId> {
        let cfg = self.cfg;
        let (bt, c, s, p, d) = (
            self.opts.batch,
            cfg.num_channels,
            cfg.image_size,
            cfg.patch_size,
            cfg.hidden_size,
        );
        let n = cfg.tokens();
        let pixels = self.b.input(PIXELS, TensorFact::f32([bt, c, s, s]))?;
        let w = self.w("embeddings.patch_embedding.weight", &[d, c * p * p])?;
        let bias = self.w("embeddings.patch_embedding.bias", &[d])?;
        let patches = self.b.op(
            "embeddings.patch_embedding",
            npurt_graph::Op::PatchEmbed { patch: p },
            &[pixels, w, bias],
        )?;
        self.tap("patch_embeds", patches);
        // The position table [N, D] broadcasts over the batch of [B, N, D].
        let pos = self.w("embeddings.position_embedding.weight", &[n, d])?;
        let x = self.b.reshape("embeddings.tiles", patches, &[bt, n, d])?;
        let x = self.b.add("embeddings.position", x, pos)?;
        Ok(self.b.reshape("embeddings.rows", x, &[bt * n, d])?)
    }

    fn block(&mut self, l: usize, x: NodeId) -> Result<NodeId> {
        let cfg = self.cfg;
        let (d, f, eps) = (cfg.hidden_size, cfg.mlp_width(), cfg.layer_norm_eps);
        let p = format!("encoder.layers.{l}");
        self.b.push_scope(format!("layers.{l}"));
        let h = self.layer_norm("ln1", x, &format!("{p}.layer_norm1"), eps)?;
        let q = self.linear_bias("q", h, &format!("{p}.self_attn.q_proj"), d, d)?;
        let k = self.linear_bias("k", h, &format!("{p}.self_attn.k_proj"), d, d)?;
        let v = self.linear_bias("v", h, &format!("{p}.self_attn.v_proj"), d, d)?;
        let a = self.b.attention_bidirectional(
            "attn",
            [q, k, v],
            cfg.num_attention_heads,
            cfg.head_dim(),
            cfg.tokens(),
        )?;
        let o = self.linear_bias("o", a, &format!("{p}.self_attn.out_proj"), d, d)?;
        let x = self.b.add("attn.residual", x, o)?;
        let h = self.layer_norm("ln2", x, &format!("{p}.layer_norm2"), eps)?;
        let u = self.linear_bias("fc1", h, &format!("{p}.mlp.fc1"), f, d)?;
        let u = self.b.gelu("gelu", u, cfg.gelu_tanh)?;
        let m = self.linear_bias("fc2", u, &format!("{p}.mlp.fc2"), d, f)?;
        let x = self.b.add("mlp.residual", x, m)?;
        self.b.pop_scope();
        Ok(x)
    }

    fn encoder(&mut self) -> Result<NodeId> {
        let cfg = self.cfg;
        let rows = self.opts.batch * cfg.tokens();
        let mut x = self
            .b
            .input(EMBEDDINGS, TensorFact::f32([rows, cfg.hidden_size]))?;
        let layers = cfg.layers_run(self.opts.feature);
        for l in 0..layers {
            x = self.block(l, x)?;
            self.tap(&format!("hidden_states_{}", l + 1), x);
        }
        if self.opts.feature == VisionFeature::Last {
            x = self.layer_norm("post_layernorm", x, "post_layernorm", cfg.layer_norm_eps)?;
        }
        Ok(x)
    }
}

/// Builds one stage of the tower for a static batch of tiles.
pub fn build(cfg: &SiglipVisionConfig, opts: &SiglipGraphOptions) -> Result<Graph> {
    cfg.validate()?;
    if opts.batch == 0 || opts.batch > 64 {
        return Err(bad(
            "batch",
            format!("{} tiles is outside 1..=64", opts.batch),
        ));
    }
    if opts.feature == VisionFeature::SecondLast && cfg.num_hidden_layers < 2 {
        return Err(bad(
            "vision_feature",
            "the second-to-last hidden state needs at least 2 layers",
        ));
    }
    let mut cx = Ctx {
        b: Builder::new(),
        cfg,
        opts,
    };
    let (name, out) = match opts.stage {
        VisionStage::Embed => (EMBEDDINGS, cx.embed()?),
        VisionStage::Encoder => (FEATURES, cx.encoder()?),
    };
    cx.b.output(name, out);
    Ok(cx.b.finish()?)
}

/// The seed of the synthetic towers (`encode-image --synthetic`) and of
/// `make-model --shape bluelm-v-3b` at `--seed 0`; the projector's is one more.
pub const SYNTHETIC_SEED: u64 = 0x5EED_0400;

/// Seeded random weights of `cfg`'s shapes, roughly like a trained tower's (uniform
/// noise: LayerNorm weights 1 +- std 0.1, biases std 0.02, other weights std 0.04),
/// the MLP padded as a loaded checkpoint's is ([`pad_mlp`]): for speed runs of
/// real shapes when no trained checkpoint is at hand. Not a model: its outputs mean
/// nothing.
pub fn synthetic_weights(cfg: &SiglipVisionConfig, seed: u64) -> Result<WeightStore> {
    cfg.validate()?;
    let mut w = synthetic_store(&siglip_tensor_shapes(cfg), seed)?;
    pad_mlp(cfg, &mut w)?;
    Ok(w)
}

/// Fills each tensor by its role (LayerNorm weight, bias, other) from a seeded
/// generator; shared by the synthetic tower and projector.
pub(crate) fn synthetic_store(shapes: &[(String, Vec<usize>)], seed: u64) -> Result<WeightStore> {
    WeightStore::synthetic_f32(shapes, move |name, v| {
        let mut rng = WeightStore::tensor_rng(seed, name);
        let is_norm = name.contains("norm") || name.contains(".ln.");
        let (base, spread) = if is_norm && name.ends_with(".weight") {
            (1.0, 0.1)
        } else if name.ends_with(".bias") {
            (0.0, 0.02)
        } else {
            (0.0, 0.04)
        };
        for x in v.iter_mut() {
            // Uniform in [-1, 1) scaled by sqrt(3): unit variance.
            *x = base + spread * (rng.uniform(-1.0, 1.0) * 1.732_050_8);
        }
    })
}
