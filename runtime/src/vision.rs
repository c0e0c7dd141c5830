//! The vision program: a SigLIP tower (and optionally BlueLM-V's downsampler +
//! projector) compiled ahead of time for a static batch of B tiles, run over an
//! image's tiles batch by batch.
//!
//! Three compiled stages, each its own graph so a stage can run on another backend and
//! be timed on its own (BlueLM-V pipelines the Conv2D of batch i+1 against the blocks
//! of batch i):
//! 1. `embed`: Conv2D patch embedding + position embedding;
//! 2. `encoder`: the encoder blocks (+ post-layernorm for the last feature layer);
//! 3. `projector` (when the model has one): 2x2 merge, LayerNorm, fc1, GELU, fc2.
//!
//! The last batch is padded with zero tiles and their rows are discarded: results do
//! not depend on B (each tile attends only within itself).

use crate::model::{invalid, PreparedWeights};
use crate::partition::Partitioned;
use crate::{Result, Runtime, RuntimeError};
use npurt_backends::{Backend, Bindings, BufferUsage, DeviceBuffer, Executable, Scratch};
use npurt_graph::passes::{PassReport, Pipeline};
use npurt_graph::{Graph, NodeId, PrecisionPolicy, TensorFact};
use npurt_kernels::HostTensor;
use npurt_models::projector::{self, ProjectorConfig};
use npurt_models::siglip::{
    self, SiglipGraphOptions, SiglipVisionConfig, VisionFeature, VisionStage,
};
use npurt_models::WeightStore;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// BlueLM-V encodes 4 tiles per NPU call (1, 2, 4 and 6 were measured; 4 was fastest).
pub const DEFAULT_BATCH: usize = 4;

/// The seed of the synthetic (random-weight) towers and projectors.
pub const SYNTHETIC_SEED: u64 = 0x5EED_0400;

#[derive(Clone, Debug)]
pub struct VisionOptions {
    pub backend: String,
    pub threads: Option<usize>,
    /// Tiles per compiled execution (B).
    pub batch: usize,
    /// Weight formats and activation precisions; the vision default is `w8a16` (INT8
    /// weights, 16-bit activations, as BlueLM-V runs its ViT). The policy's head and
    /// embedding classes do not apply: every vision matmul is a "linear".
    pub precision: PrecisionPolicy,
    pub feature: VisionFeature,
    /// The projector's LayerNorm eps (`projector_ln_eps` of a BlueLM-V model dir).
    pub projector_ln_eps: f32,
    /// The token merge factor of the downsampler (2: 2x2 blocks).
    pub merge: usize,
    /// Also return HF-named intermediates (`patch_embeds`, `hidden_states_{k}`):
    /// tests and debugging.
    pub taps: bool,
}

impl Default for VisionOptions {
    fn default() -> Self {
        VisionOptions {
            backend: "cpu".into(),
            threads: None,
            batch: DEFAULT_BATCH,
            precision: PrecisionPolicy::W8A16,
            feature: VisionFeature::Last,
            projector_ln_eps: 1e-5,
            merge: 2,
            taps: false,
        }
    }
}

/// One compiled stage and the names it binds.
pub struct VisionStageProgram {
    pub name: &'static str,
    pub graph: Graph,
    pub exec: Arc<Partitioned>,
    input: NodeId,
    input_fact: TensorFact,
    /// Every graph output (the stage's value first, then taps) and its fact.
    outputs: Vec<(String, TensorFact)>,
    pub pass_reports: Vec<PassReport>,
}

/// Wall time of each stage over one `encode` call (ms); the stages run one after
/// another here, so they add up to about `total_ms`.
#[derive(Clone, Copy, Debug, Default)]
pub struct EncodeTimings {
    pub conv_ms: f64,
    pub blocks_ms: f64,
    pub project_ms: f64,
    pub total_ms: f64,
}

/// What `encode` returns for `tiles` tiles.
pub struct VisionOutput {
    pub tiles: usize,
    /// `[tiles * N, D]` tower features (the configured feature layer).
    pub features: Vec<f32>,
    /// `[tiles * t, H]` projected tokens, thumbnail's first, when there is a projector.
    pub projected: Option<Vec<f32>>,
    /// With `VisionOptions::taps`: intermediates by HF name, rows of these tiles only.
    pub taps: std::collections::BTreeMap<String, Vec<f32>>,
    pub timings: EncodeTimings,
}

/// The rows of the first `valid` tiles of a stage output computed for `batch` tiles
/// (the padding tiles' rows are dropped).
fn valid_rows(o: &HostTensor, batch: usize, valid: usize) -> Result<&[f32]> {
    let vals = o
        .as_f32()
        .ok_or_else(|| invalid("vision", "a stage output is not f32"))?;
    Ok(&vals[..vals.len() / batch * valid])
}

/// Buffers and scratch of the three stages (one encode at a time per encoder).
struct StageRunner {
    scratch: Box<dyn Scratch>,
    input: Arc<dyn DeviceBuffer>,
    outputs: Vec<Arc<dyn DeviceBuffer>>,
}

pub struct VisionEncoder {
    pub config: SiglipVisionConfig,
    pub projector_config: Option<ProjectorConfig>,
    pub options: VisionOptions,
    pub description: String,
    /// Built from seeded random weights (speed runs): its outputs mean nothing.
    pub synthetic: bool,
    pub backends: Vec<Arc<dyn Backend>>,
    pub stages: Vec<VisionStageProgram>,
    pub weight_bytes: usize,
    pub load_ms: f64,
    /// Scratch and I/O buffers of the stages; one encode at a time holds them.
    runners: Mutex<Vec<StageRunner>>,
}

/// The vision presets: `PrecisionPolicy` with every matmul treated as a linear layer.
fn vision_policy(p: &PrecisionPolicy) -> PrecisionPolicy {
    PrecisionPolicy {
        head: p.linear,
        head_act: p.linear_act,
        embedding: p.linear,
        ..p.clone()
    }
}

impl VisionEncoder {
    /// Loads an HF SigLIP vision directory and, if given, a projector safetensors
    /// file (`mm_projector.{ln,fc1,fc2}`).
    pub fn load(
        rt: &Runtime,
        dir: &Path,
        projector_file: Option<&Path>,
        opts: VisionOptions,
    ) -> Result<Self> {
        let backends = rt.backends(&opts.backend, opts.threads)?;
        Self::load_into(dir, projector_file, opts, backends, &PreparedWeights::default())
    }

    /// [`VisionEncoder::load`] over given backends, preparing weights into a cache a
    /// multimodal model shares between its programs.
    pub(crate) fn load_into(
        dir: &Path,
        projector_file: Option<&Path>,
        opts: VisionOptions,
        backends: Vec<Arc<dyn Backend>>,
        prepared: &PreparedWeights,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let (cfg, weights) = siglip::load_dir(dir)?;
        let projector = match projector_file {
            None => None,
            Some(p) => {
                let mut w = WeightStore::new();
                npurt_models::hf_dir::add_safetensors(&mut w, p)?;
                let pc = ProjectorConfig::from_weights(
                    &w,
                    cfg.hidden_size,
                    cfg.grid(),
                    opts.merge,
                    opts.projector_ln_eps,
                )?;
                Some((pc, w))
            }
        };
        let desc = format!(
            "SigLIP {} ({} layers, hidden {})",
            dir.display(),
            cfg.num_hidden_layers,
            cfg.hidden_size
        );
        let mut enc = Self::compile(
            backends, prepared, cfg, weights, projector, opts, desc, false,
        )?;
        enc.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(enc)
    }

    /// SigLIP-so400m's real shapes with seeded random weights, and a projector into an
    /// LLM of width `llm_hidden` (BlueLM-V-3B's is 2560): for speed runs.
    pub fn synthetic_so400m(rt: &Runtime, llm_hidden: usize, opts: VisionOptions) -> Result<Self> {
        let t0 = Instant::now();
        let cfg = SiglipVisionConfig::so400m();
        let weights = siglip::synthetic_weights(&cfg, SYNTHETIC_SEED)?;
        let pc = ProjectorConfig {
            vision_hidden: cfg.hidden_size,
            grid: cfg.grid(),
            merge: opts.merge,
            mlp_hidden: llm_hidden,
            llm_hidden,
            ln_eps: opts.projector_ln_eps,
        };
        let pw = projector::synthetic_weights(&pc, SYNTHETIC_SEED + 1)?;
        let desc =
            format!("synthetic SigLIP-so400m (seeded random weights) + projector to {llm_hidden}");
        let backends = rt.backends(&opts.backend, opts.threads)?;
        let prepared = PreparedWeights::default();
        let mut enc = Self::compile(
            backends,
            &prepared,
            cfg,
            weights,
            Some((pc, pw)),
            opts,
            desc,
            true,
        )?;
        enc.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(enc)
    }

    #[allow(clippy::too_many_arguments)]
    fn compile(
        backends: Vec<Arc<dyn Backend>>,
        prepared: &PreparedWeights,
        cfg: SiglipVisionConfig,
        weights: WeightStore,
        projector: Option<(ProjectorConfig, WeightStore)>,
        opts: VisionOptions,
        description: String,
        synthetic: bool,
    ) -> Result<Self> {
        let policy = vision_policy(&opts.precision);
        let mut stages = Vec::new();
        let tower = |stage| SiglipGraphOptions {
            batch: opts.batch,
            stage,
            feature: opts.feature,
            taps: opts.taps,
        };
        // (stage, graph, its weights, input name, output name)
        let mut parts: Vec<(&'static str, Graph, &WeightStore, &str, &'static str)> = vec![
            (
                "embed",
                siglip::build(&cfg, &tower(VisionStage::Embed))?,
                &weights,
                siglip::PIXELS,
                siglip::EMBEDDINGS,
            ),
            (
                "encoder",
                siglip::build(&cfg, &tower(VisionStage::Encoder))?,
                &weights,
                siglip::EMBEDDINGS,
                siglip::FEATURES,
            ),
        ];
        if let Some((pc, pw)) = &projector {
            parts.push((
                "projector",
                projector::build(pc, opts.batch, opts.taps)?,
                pw,
                siglip::FEATURES,
                projector::PROJECTED,
            ));
        }
        for (name, mut graph, store, input_name, output) in parts {
            let stored = store.stored_dtypes();
            let pass_reports =
                Pipeline::compile(policy.clone(), Box::new(move |n| stored.get(n).copied()))
                    .run(&mut graph)?;
            let exec = Arc::new(prepared.compile(&graph, &backends, store)?);
            let input = graph.find_source("input", input_name).ok_or_else(|| {
                invalid("graph", format!("{name} graph lacks input `{input_name}`"))
            })?;
            if graph.output(output).is_none() {
                return Err(invalid(
                    "graph",
                    format!("{name} graph lacks output `{output}`"),
                ));
            }
            let mut outputs: Vec<(String, TensorFact)> = graph
                .outputs
                .iter()
                .map(|(n, id)| (n.clone(), graph.fact(*id).clone()))
                .collect();
            outputs.sort_by_key(|(n, _)| n != output);
            stages.push(VisionStageProgram {
                name,
                input,
                input_fact: graph.fact(input).clone(),
                outputs,
                exec,
                graph,
                pass_reports,
            });
        }
        let weight_bytes = prepared.bytes_of(stages.iter().map(|s| &s.graph));
        let mut enc = VisionEncoder {
            config: cfg,
            projector_config: projector.map(|(pc, _)| pc),
            options: opts,
            description,
            synthetic,
            backends,
            stages,
            weight_bytes,
            load_ms: 0.0,
            runners: Mutex::new(Vec::new()),
        };
        // Scratch and I/O buffers are allocated (and their pages touched) at load, as
        // an NPU runtime does, so the first encode does not pay for page faults.
        enc.runners = Mutex::new(enc.new_runners()?);
        Ok(enc)
    }

    /// Tokens a tile gives the LLM (after the downsampler), or the tower's tokens a
    /// tile without a projector.
    pub fn tokens_per_tile(&self) -> usize {
        match &self.projector_config {
            Some(p) => p.tokens_per_tile(),
            None => self.config.tokens(),
        }
    }

    /// The pixel tensor one tile takes: `[C, S, S]` elements.
    pub fn tile_elems(&self) -> usize {
        let s = self.config.image_size;
        self.config.num_channels * s * s
    }

    fn new_runners(&self) -> Result<Vec<StageRunner>> {
        self.stages
            .iter()
            .map(|st| {
                let x = &st.exec;
                Ok(StageRunner {
                    scratch: x.new_scratch()?,
                    input: x.alloc_source(st.input, &st.input_fact, BufferUsage::Activations)?,
                    outputs: st
                        .outputs
                        .iter()
                        .map(|(n, f)| x.alloc_output(n, f))
                        .collect::<std::result::Result<_, _>>()?,
                })
            })
            .collect()
    }

    /// Encodes `tiles` tiles of `pixels` (`[tiles, C, S, S]`, normalised) in batches of
    /// B; returns the features (and projected tokens) of exactly those tiles.
    pub fn encode(&self, pixels: &[f32], tiles: usize) -> Result<VisionOutput> {
        let t0 = Instant::now();
        let per_tile = self.tile_elems();
        if tiles == 0 || Some(pixels.len()) != tiles.checked_mul(per_tile) {
            let s = self.config.image_size;
            return Err(RuntimeError::InvalidOption {
                option: "pixels",
                reason: format!(
                    "{} values are not {tiles} tiles of {}x{s}x{s}",
                    pixels.len(),
                    self.config.num_channels
                ),
            });
        }
        let mut runners = self
            .runners
            .lock()
            .map_err(|_| invalid("vision", "a previous encode panicked"))?;
        let b = self.options.batch;
        let (n, d) = (self.config.tokens(), self.config.hidden_size);
        let mut features = Vec::with_capacity(tiles * n * d);
        let mut projected = self
            .projector_config
            .as_ref()
            .map(|p| Vec::with_capacity(tiles * p.tokens_per_tile() * p.llm_hidden));
        let mut t = EncodeTimings::default();
        let mut taps = std::collections::BTreeMap::new();
        for start in (0..tiles).step_by(b) {
            let valid = b.min(tiles - start);
            let mut batch = pixels[start * per_tile..(start + valid) * per_tile].to_vec();
            batch.resize(b * per_tile, 0.0);
            let mut value = HostTensor::f32(self.stages[0].input_fact.shape.clone(), batch);
            for (i, (st, r)) in self.stages.iter().zip(runners.iter_mut()).enumerate() {
                let ts = Instant::now();
                let mut outs = self.run_stage(st, r, &value)?;
                let ms = ts.elapsed().as_secs_f64() * 1e3;
                {
                    let kept = outs
                        .iter()
                        .map(|o| valid_rows(o, b, valid))
                        .collect::<Result<Vec<_>>>()?;
                    for ((tap, _), rows) in st.outputs.iter().zip(&kept).skip(1) {
                        taps.entry(tap.clone())
                            .or_insert_with(Vec::new)
                            .extend_from_slice(rows);
                    }
                    match i {
                        0 => t.conv_ms += ms,
                        1 => {
                            t.blocks_ms += ms;
                            features.extend_from_slice(kept[0]);
                        }
                        _ => {
                            t.project_ms += ms;
                            projected
                                .as_mut()
                                .expect("a projector stage")
                                .extend_from_slice(kept[0]);
                        }
                    }
                }
                value = outs.swap_remove(0);
            }
        }
        t.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(VisionOutput {
            tiles,
            features,
            projected,
            taps,
            timings: t,
        })
    }

    /// Runs one stage on `input` (its whole static batch) and reads its outputs back
    /// (the stage's value first, then taps).
    fn run_stage(
        &self,
        st: &VisionStageProgram,
        r: &mut StageRunner,
        input: &HostTensor,
    ) -> Result<Vec<HostTensor>> {
        let x = &st.exec;
        let missing = || {
            invalid(
                "graph",
                format!("{} stage has no backend for its input/output", st.name),
            )
        };
        let in_be = x.source_backend(st.input).ok_or_else(missing)?;
        in_be.write(r.input.as_ref(), input)?;
        let bindings = Bindings {
            sources: vec![(st.input, r.input.clone())],
            outputs: st
                .outputs
                .iter()
                .map(|(n, _)| n.clone())
                .zip(r.outputs.iter().cloned())
                .collect(),
        };
        x.run(&bindings, r.scratch.as_mut())?;
        for be in &self.backends {
            be.synchronize()?;
        }
        st.outputs
            .iter()
            .zip(&r.outputs)
            .map(|((n, _), buf)| {
                Ok(x.output_backend(n)
                    .ok_or_else(missing)?
                    .read(buf.as_ref())?)
            })
            .collect()
    }
}
