//! BlueLM-V's token downsampler and MLP projector, as one graph after the vision
//! tower: each tile's `g x g` grid of features is zero-padded to an even grid and every
//! 2x2 block merged into one token (`SpaceToChannel`: 27x27xD -> 14x14x4D), then
//! `LayerNorm -> Linear -> GELU(erf) -> Linear` maps the tokens into the LLM's hidden
//! size. Token order is row-major over the block grid; channel order is the block's
//! (0,0),(0,1),(1,0),(1,1) cells (`../shared/golden/README.md` section 4).
//!
//! Graph interface: input `features f32[B*g*g, D]`, output `projected f32[B*t, H]`
//! with `t = ceil(g/2)^2` tokens a tile.

use crate::config::bad;
use crate::siglip::{synthetic_store, FEATURES};
use crate::{Result, WeightStore};
use npurt_graph::{Builder, Graph, TensorFact};

pub const PROJECTED: &str = "projected";

/// The projector's checkpoint names (vlm_tiny's `projector.safetensors`).
pub const LN: &str = "mm_projector.ln";
pub const FC1: &str = "mm_projector.fc1";
pub const FC2: &str = "mm_projector.fc2";

#[derive(Clone, Debug, PartialEq)]
pub struct ProjectorConfig {
    /// Vision feature width D.
    pub vision_hidden: usize,
    /// Tokens per side of a tile's feature grid (27 for 384/14).
    pub grid: usize,
    /// The merge factor (2: 2x2 blocks).
    pub merge: usize,
    /// fc1's output width.
    pub mlp_hidden: usize,
    /// The LLM's hidden size (fc2's output width).
    pub llm_hidden: usize,
    pub ln_eps: f32,
}

impl ProjectorConfig {
    /// The projector BlueLM-V puts after `tower` (as LLaVA's two-layer MLP: fc1 already
    /// maps to the LLM's width), merging `merge x merge` tokens, into an LLM of width
    /// `llm_hidden`.
    pub fn for_tower(
        tower: &crate::siglip::SiglipVisionConfig,
        merge: usize,
        llm_hidden: usize,
        ln_eps: f32,
    ) -> Self {
        ProjectorConfig {
            vision_hidden: tower.hidden_size,
            grid: tower.grid(),
            merge,
            mlp_hidden: llm_hidden,
            llm_hidden,
            ln_eps,
        }
    }

    /// Width of a merged token (the projector's input).
    pub fn merged_width(&self) -> usize {
        self.merge * self.merge * self.vision_hidden
    }
    /// Tokens a tile gives the LLM.
    pub fn tokens_per_tile(&self) -> usize {
        let g = self.grid.div_ceil(self.merge);
        g * g
    }

    /// Reads the widths from the weights (`mm_projector.{ln,fc1,fc2}`) and checks them
    /// against the vision tower: the LayerNorm and fc1 must take `merge^2 * D` inputs.
    pub fn from_weights(
        w: &WeightStore,
        vision_hidden: usize,
        grid: usize,
        merge: usize,
        ln_eps: f32,
    ) -> Result<Self> {
        if merge == 0 || grid == 0 {
            return Err(bad("merge", "grid and merge factor must be positive"));
        }
        let fc1 = w.fact(&format!("{FC1}.weight"))?.clone();
        let fc2 = w.fact(&format!("{FC2}.weight"))?.clone();
        if fc1.rank() != 2 || fc2.rank() != 2 {
            return Err(bad(
                "projector",
                format!("fc1 {fc1} / fc2 {fc2} must be matrices"),
            ));
        }
        let cfg = ProjectorConfig {
            vision_hidden,
            grid,
            merge,
            mlp_hidden: fc1.shape[0],
            llm_hidden: fc2.shape[0],
            ln_eps,
        };
        let input = cfg.merged_width();
        if fc1.shape[1] != input {
            return Err(bad(
                "projector",
                format!(
                    "fc1 takes {} inputs but the {merge}x{merge}-merged vision tokens are {input} wide ({}x{vision_hidden})",
                    fc1.shape[1],
                    merge * merge
                ),
            ));
        }
        for (name, shape) in projector_tensor_shapes(&cfg) {
            w.expect_shape(&name, &shape)?;
        }
        Ok(cfg)
    }
}

pub fn projector_tensor_shapes(cfg: &ProjectorConfig) -> Vec<(String, Vec<usize>)> {
    let (i, h, o) = (cfg.merged_width(), cfg.mlp_hidden, cfg.llm_hidden);
    vec![
        (format!("{LN}.weight"), vec![i]),
        (format!("{LN}.bias"), vec![i]),
        (format!("{FC1}.weight"), vec![h, i]),
        (format!("{FC1}.bias"), vec![h]),
        (format!("{FC2}.weight"), vec![o, h]),
        (format!("{FC2}.bias"), vec![o]),
    ]
}

/// Seeded random projector weights of `cfg`'s shapes (speed runs; see
/// `siglip::synthetic_weights`).
pub fn synthetic_weights(cfg: &ProjectorConfig, seed: u64) -> Result<WeightStore> {
    synthetic_store(&projector_tensor_shapes(cfg), seed)
}

/// Downsampler + projector for a static batch of `batch` tiles; with `taps`, the merged
/// tokens are also an output, `downsampled` `[B*t, merge^2 * D]`.
pub fn build(cfg: &ProjectorConfig, batch: usize, taps: bool) -> Result<Graph> {
    let (d, g, m) = (cfg.vision_hidden, cfg.grid, cfg.merge);
    let (i, h, o) = (cfg.merged_width(), cfg.mlp_hidden, cfg.llm_hidden);
    let mut b = Builder::new();
    let x = b.input(FEATURES, TensorFact::f32([batch * g * g, d]))?;
    let x = b.space_to_channel("downsample", x, [g, g], m)?;
    if taps {
        b.output("downsampled", x);
    }
    let w = |b: &mut Builder, n: &str, s: &[usize]| b.weight(n, TensorFact::f32(s));
    let (lw, lb) = (
        w(&mut b, &format!("{LN}.weight"), &[i])?,
        w(&mut b, &format!("{LN}.bias"), &[i])?,
    );
    let x = b.layer_norm("projector.ln", x, lw, lb, cfg.ln_eps)?;
    let (w1, b1) = (
        w(&mut b, &format!("{FC1}.weight"), &[h, i])?,
        w(&mut b, &format!("{FC1}.bias"), &[h])?,
    );
    let x = b.linear("projector.fc1", x, w1)?;
    let x = b.add("projector.fc1.bias", x, b1)?;
    let x = b.gelu("projector.gelu", x, false)?;
    let (w2, b2) = (
        w(&mut b, &format!("{FC2}.weight"), &[o, h])?,
        w(&mut b, &format!("{FC2}.bias"), &[o])?,
    );
    let x = b.linear("projector.fc2", x, w2)?;
    let x = b.add("projector.fc2.bias", x, b2)?;
    b.output(PROJECTED, x);
    Ok(b.finish()?)
}
