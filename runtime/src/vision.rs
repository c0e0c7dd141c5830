//! The vision program: a SigLIP tower (and optionally BlueLM-V's downsampler +
//! projector) compiled ahead of time for a static batch of B tiles, run over an
//! image's tiles batch by batch.
//!
//! Three compiled stages, each its own graph so a stage can run on another backend and
//! be timed on its own:
//! 1. `embed`: Conv2D patch embedding + position embedding;
//! 2. `encoder`: the encoder blocks (+ post-layernorm for the last feature layer);
//! 3. `projector` (when the model has one): 2x2 merge, LayerNorm, fc1, GELU, fc2.
//!
//! Pipelining (BlueLM-V Fig. 6, [`VisionOptions::pipeline`], on by default): the embed
//! stage gets a stream of its own, so the Conv2D of batch i+1 runs while the blocks of
//! batch i do. Its graph is compiled for a CPU backend instance of its own
//! ([`VisionOptions::embed_threads`] threads: with `wgpu` preferred, the Conv2D runs on
//! the CPU and the blocks on the GPU; with the CPU alone, on separate threads) and
//! submitted through a [`WorkerExecutable`], whose [`Executable::submit`] returns at
//! once; the blocks and projector are submitted on the calling thread (asynchronously
//! where their backend is). No backend is special-cased here: each stage is submitted
//! and waited on through the backend contract.
//!
//! The last batch is padded with zero tiles and their rows are discarded: results do
//! not depend on B (each tile attends only within itself).

mod stage;

use crate::model::{invalid, PreparedWeights};
use crate::partition::Partitioned;
use crate::{Result, Runtime, RuntimeError};
use npurt_backends::{Backend, Executable, WorkerExecutable};
use npurt_graph::passes::{PassReport, Pipeline};
use npurt_graph::{Graph, NodeId, PrecisionPolicy, TensorFact};
use npurt_kernels::HostTensor;
use npurt_models::projector::{self, ProjectorConfig};
use npurt_models::siglip::{
    self, SiglipGraphOptions, SiglipVisionConfig, VisionFeature, VisionStage,
};
use npurt_models::WeightStore;
use stage::{valid_rows, StageInput, StageRunner};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// BlueLM-V encodes 4 tiles per NPU call (1, 2, 4 and 6 were measured; 4 was fastest).
pub const DEFAULT_BATCH: usize = 4;

/// The seed of the synthetic (random-weight) towers; their projectors' is one more.
pub use npurt_models::siglip::SYNTHETIC_SEED;

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
    /// Also return the tower's features when a projector follows (without one they
    /// are the output and always returned). Off, an encode does not hold them: 30 MB
    /// for 9 so400m tiles.
    pub tower_features: bool,
    /// Run the Conv2D patch embedding of batch i+1 on its own stream while the encoder
    /// blocks of batch i run (default); off, the stages run one after another on
    /// `backend` (the sequential baseline).
    pub pipeline: bool,
    /// Threads of the embed stream's own CPU backend when pipelined (>= 1; the
    /// Conv2D is well under 1% of the encoder's work).
    pub embed_threads: usize,
    /// The memory budget the encoder's weights and arenas are reserved against (a
    /// multimodal model shares its LLM's); `None`: no budget.
    pub budget: Option<Arc<crate::budget::MemoryBudget>>,
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
            tower_features: true,
            pipeline: true,
            embed_threads: 1,
            budget: None,
        }
    }
}

/// One compiled stage and the names it binds.
pub struct VisionStageProgram {
    pub name: &'static str,
    pub graph: Graph,
    pub exec: Arc<Partitioned>,
    /// What a run is submitted to: `exec`, or a worker running it on its own thread
    /// (the pipelined embed stage).
    stream: Arc<dyn Executable>,
    input: NodeId,
    input_fact: TensorFact,
    /// Every graph output (the stage's value first, then taps) and its fact.
    outputs: Vec<(String, TensorFact)>,
    pub pass_reports: Vec<PassReport>,
}

/// Times of one `encode` call (ms): each stage's time summed over the batches, the
/// wall time, and what the pipeline hid.
#[derive(Clone, Copy, Debug, Default)]
pub struct EncodeTimings {
    pub conv_ms: f64,
    pub blocks_ms: f64,
    pub project_ms: f64,
    /// Wall time of the whole call (pipelined when `pipelined`).
    pub total_ms: f64,
    /// The stage times added up: about what the call takes with the stages one after
    /// another.
    pub sequential_ms: f64,
    /// Latency hidden by running stages at once: `sequential_ms - total_ms`, floored at
    /// 0 (a sequential run hides nothing; its host overhead makes the difference
    /// slightly negative).
    pub hidden_ms: f64,
    pub pipelined: bool,
}

/// What `encode` returns for `tiles` tiles.
pub struct VisionOutput {
    pub tiles: usize,
    /// `[tiles * N, D]` tower features (the configured feature layer); empty when a
    /// projector follows and `VisionOptions::tower_features` is off.
    pub features: Vec<f32>,
    /// `[tiles * t, H]` projected tokens, thumbnail's first, when there is a projector.
    pub projected: Option<Vec<f32>>,
    /// With `VisionOptions::taps`: intermediates by HF name, rows of these tiles only.
    pub taps: std::collections::BTreeMap<String, Vec<f32>>,
    pub timings: EncodeTimings,
}

pub struct VisionEncoder {
    pub config: SiglipVisionConfig,
    pub projector_config: Option<ProjectorConfig>,
    pub options: VisionOptions,
    pub description: String,
    /// Built from seeded random weights (speed runs): its outputs mean nothing.
    pub synthetic: bool,
    /// The preferred backend first, then the CPU fallback (as `Runtime::backends`).
    pub backends: Vec<Arc<dyn Backend>>,
    /// The backends the embed stage is compiled for: a CPU instance of its own when
    /// pipelined, else `backends`.
    pub embed_backends: Vec<Arc<dyn Backend>>,
    /// The stages compiled for the static batch B.
    pub stages: Vec<VisionStageProgram>,
    /// The same stages for one tile (when B > 1): the tiles past the last full batch.
    pub tail_stages: Vec<VisionStageProgram>,
    /// Bytes of the prepared weights of every stage.
    pub weight_bytes: usize,
    /// Planned activation arena bytes of every stage graph (both batch sizes): with
    /// `weight_bytes`, the encoder's memory floor.
    pub arena_bytes: u64,
    pub load_ms: f64,
    /// The encoder's share of its model's memory budget, if it has one.
    _reservation: Option<crate::budget::Reservation>,
    /// Scratch and I/O buffers of the stages; one encode at a time holds them.
    runners: Mutex<Vec<Vec<StageRunner>>>,
}

/// Where the stages run: `main` (the preferred backend, then the CPU fallback) for the
/// blocks and projector; `embed` for the Conv2D stage, a CPU backend instance (and
/// thread pool) of its own when pipelined, else `main`.
struct StageBackends {
    main: Vec<Arc<dyn Backend>>,
    embed: Vec<Arc<dyn Backend>>,
}

impl StageBackends {
    fn new(rt: &Runtime, opts: &VisionOptions, main: Vec<Arc<dyn Backend>>) -> Result<Self> {
        let embed = if opts.pipeline {
            if opts.embed_threads == 0 {
                return Err(invalid("embed_threads", "the embed stream needs a thread"));
            }
            rt.backends("cpu", Some(opts.embed_threads))?
        } else {
            main.clone()
        };
        Ok(StageBackends { main, embed })
    }
}

/// The vision presets: `PrecisionPolicy` with every matmul treated as a linear layer,
/// and the preset's INT8 weights one scale per output channel (`Q8Channel`) instead of
/// per 32-value block. With per-row activation scales (i16, and i8 per row for `w8a8`)
/// no block then carries a scale of its own, so the VNNI kernels accumulate whole rows
/// in i32 (`q8c_i16b`, `q8c_u8row`) instead of converting and rescaling every block.
fn vision_policy(p: &PrecisionPolicy) -> PrecisionPolicy {
    use npurt_graph::{ActPrecision, DType, WeightFormat};
    let linear = match p.linear {
        WeightFormat::Exact(DType::Q8_0) => WeightFormat::Exact(DType::Q8Channel),
        other => other,
    };
    let act = match p.linear_act {
        ActPrecision::I8 if linear == WeightFormat::Exact(DType::Q8Channel) => ActPrecision::I8Row,
        other => other,
    };
    PrecisionPolicy {
        linear,
        linear_act: act,
        head: linear,
        head_act: act,
        embedding: linear,
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
        Self::load_into(
            rt,
            dir,
            projector_file,
            opts,
            backends,
            &PreparedWeights::default(),
        )
    }

    /// [`VisionEncoder::load`] over given backends, preparing weights into a cache a
    /// multimodal model shares between its programs (`rt` makes the pipelined embed
    /// stage's own CPU backend).
    pub(crate) fn load_into(
        rt: &Runtime,
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
        let backends = StageBackends::new(rt, &opts, backends)?;
        let mut enc = Self::compile(
            backends, prepared, cfg, weights, projector, opts, desc, false,
        )?;
        enc.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        Ok(enc)
    }

    /// The peak the encoder's matmuls can reach on this CPU with `threads` threads
    /// ([`crate::bench::cpu_matmul_peak`] for its activation precision).
    pub fn matmul_peak(
        &self,
        threads: usize,
        duration: std::time::Duration,
    ) -> Option<(npurt_kernels::cpu::PeakReport, f64)> {
        crate::bench::cpu_matmul_peak(self.options.precision.linear_act, threads, duration)
    }

    /// Operations (2 per multiply-add) of the matmuls and attention products that
    /// encode `tiles` tiles: the tower's blocks and the projector.
    pub fn ops(&self, tiles: usize) -> f64 {
        let tower = self.config.encoder_macs_per_tile(self.options.feature);
        let projector = self.projector_config.as_ref().map_or(0, |pc| {
            pc.tokens_per_tile()
                * (pc.merged_width() * pc.mlp_hidden + pc.mlp_hidden * pc.llm_hidden)
        });
        2.0 * (tower as f64 + projector as f64) * tiles as f64
    }

    /// SigLIP-so400m's real shapes with seeded random weights, and a projector into an
    /// LLM of width `llm_hidden` (BlueLM-V-3B's is 2560): for speed runs.
    pub fn synthetic_so400m(rt: &Runtime, llm_hidden: usize, opts: VisionOptions) -> Result<Self> {
        Self::synthetic(rt, SiglipVisionConfig::so400m(), llm_hidden, opts)
    }

    /// A tower of `cfg`'s shapes with seeded random weights ([`SYNTHETIC_SEED`]) and a
    /// projector into an LLM of width `llm_hidden`: the weights
    /// `npurt make-model --shape bluelm-v-3b` writes at seed 0 for such a tower.
    pub fn synthetic(
        rt: &Runtime,
        cfg: SiglipVisionConfig,
        llm_hidden: usize,
        opts: VisionOptions,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let weights = siglip::synthetic_weights(&cfg, SYNTHETIC_SEED)?;
        let pc = ProjectorConfig::for_tower(&cfg, opts.merge, llm_hidden, opts.projector_ln_eps);
        let pw = projector::synthetic_weights(&pc, SYNTHETIC_SEED + 1)?;
        let desc = if cfg == SiglipVisionConfig::so400m() {
            format!("synthetic SigLIP-so400m (seeded random weights) + projector to {llm_hidden}")
        } else {
            format!(
                "synthetic SigLIP ({} layers, hidden {}; seeded random weights) + projector to {llm_hidden}",
                cfg.num_hidden_layers, cfg.hidden_size
            )
        };
        let backends = StageBackends::new(rt, &opts, rt.backends(&opts.backend, opts.threads)?)?;
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
        backends: StageBackends,
        prepared: &PreparedWeights,
        cfg: SiglipVisionConfig,
        weights: WeightStore,
        projector: Option<(ProjectorConfig, WeightStore)>,
        opts: VisionOptions,
        description: String,
        synthetic: bool,
    ) -> Result<Self> {
        let StageBackends {
            main: backends,
            embed: embed_backends,
        } = backends;
        let policy = vision_policy(&opts.precision);
        // One stage set for the static batch B, and, when B > 1, one for single tiles:
        // an image's tiles beyond its last full batch run one at a time instead of in a
        // padded batch (9 tiles: 4 + 4 + 1 tile slots, not 4 + 4 + 4). Both sets read
        // the same weights (prepared once).
        let mut sets = Vec::new();
        for batch in [opts.batch, 1]
            .into_iter()
            .take(if opts.batch > 1 { 2 } else { 1 })
        {
            let tower = |stage| SiglipGraphOptions {
                batch,
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
                    projector::build(pc, batch, opts.taps)?,
                    pw,
                    siglip::FEATURES,
                    projector::PROJECTED,
                ));
            }
            let mut compiled = Vec::with_capacity(parts.len());
            for (name, mut graph, store, input_name, output) in parts {
                let stored = store.stored_dtypes();
                let pass_reports =
                    Pipeline::compile(policy.clone(), Box::new(move |n| stored.get(n).copied()))
                        .run(&mut graph)?;
                compiled.push((name, graph, store, input_name, output, pass_reports));
            }
            sets.push(compiled);
        }
        // The weights at their compiled formats and the stages' arenas, reserved before
        // anything is prepared (released with the encoder).
        let arena_bytes = sets
            .iter()
            .flatten()
            .map(|c| npurt_graph::plan::plan(&c.1, 64).arena_bytes)
            .sum::<u64>();
        let reservation = match &opts.budget {
            Some(b) => Some(b.reserve(
                format!(
                    "the vision encoder ({}, batch {})",
                    opts.precision.name, opts.batch
                ),
                crate::model::planned_weight_bytes(sets.iter().flatten().map(|c| &c.1))
                    + arena_bytes,
            )?),
            None => None,
        };
        let mut stage_sets = Vec::with_capacity(sets.len());
        for compiled in sets {
            let mut stages = Vec::with_capacity(compiled.len());
            for (name, graph, store, input_name, output, pass_reports) in compiled {
                stages.push(Self::stage(
                    &opts,
                    &backends,
                    &embed_backends,
                    prepared,
                    (name, graph, store, input_name, output, pass_reports),
                )?);
            }
            stage_sets.push(stages);
        }
        let tail_stages = if stage_sets.len() > 1 {
            stage_sets.pop().expect("two sets")
        } else {
            Vec::new()
        };
        let stages = stage_sets.pop().expect("one set");
        let weight_bytes = prepared.bytes_of(stages.iter().chain(&tail_stages).map(|s| &s.graph));
        let mut enc = VisionEncoder {
            config: cfg,
            projector_config: projector.map(|(pc, _)| pc),
            options: opts,
            description,
            synthetic,
            backends,
            embed_backends,
            stages,
            tail_stages,
            weight_bytes,
            arena_bytes,
            load_ms: 0.0,
            runners: Mutex::new(Vec::new()),
            _reservation: reservation,
        };
        // Scratch and output buffers are allocated (and their pages touched) at load,
        // as an NPU runtime does, so the first encode does not pay for page faults (an
        // input buffer when a stage's input first has to be copied in).
        enc.runners = Mutex::new(enc.new_runners()?);
        crate::heap::return_free_memory();
        Ok(enc)
    }

    /// Compiles one stage graph on its backends (the embed stage on its own stream when
    /// pipelined).
    #[allow(clippy::type_complexity)]
    fn stage(
        opts: &VisionOptions,
        backends: &[Arc<dyn Backend>],
        embed_backends: &[Arc<dyn Backend>],
        prepared: &PreparedWeights,
        (name, graph, store, input_name, output, pass_reports): (
            &'static str,
            Graph,
            &WeightStore,
            &str,
            &'static str,
            Vec<PassReport>,
        ),
    ) -> Result<VisionStageProgram> {
        let pipelined = opts.pipeline && name == "embed";
        let stage_backends = if name == "embed" {
            embed_backends
        } else {
            backends
        };
        let exec = Arc::new(prepared.compile(&graph, stage_backends, store)?);
        let stream: Arc<dyn Executable> = if pipelined {
            Arc::new(WorkerExecutable::spawn("vision-embed", exec.clone())?)
        } else {
            exec.clone()
        };
        let input = graph
            .find_source("input", input_name)
            .ok_or_else(|| invalid("graph", format!("{name} graph lacks input `{input_name}`")))?;
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
        Ok(VisionStageProgram {
            name,
            input,
            input_fact: graph.fact(input).clone(),
            outputs,
            exec,
            stream,
            graph,
            pass_reports,
        })
    }

    /// Every compiled stage graph (the batch-B set, then the single-tile set).
    pub fn all_stages(&self) -> impl Iterator<Item = &VisionStageProgram> {
        self.stages.iter().chain(&self.tail_stages)
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

    /// Runners of the batch-B stages, then of the single-tile stages. The embed
    /// stage's outputs get two slots: one batch's embeddings stay bound to the blocks
    /// while the next batch's embed writes the other.
    fn new_runners(&self) -> Result<Vec<Vec<StageRunner>>> {
        [&self.stages, &self.tail_stages]
            .into_iter()
            .filter(|set| !set.is_empty())
            .map(|set| {
                (0..)
                    .zip(set)
                    .map(|(i, st)| StageRunner::new(st, if i == 0 { 2 } else { 1 }))
                    .collect()
            })
            .collect()
    }

    /// Encodes `tiles` tiles of `pixels` (`[tiles, C, S, S]`, normalised) in batches of
    /// B; returns the features (and projected tokens) of exactly those tiles.
    ///
    /// Pipelined, batch k+1's embed is submitted (to its worker) before batch k's
    /// blocks run, and waited on once they and the projector are done; sequentially,
    /// after them.
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
        // Per stage set: its embed runner, and the runners of its later stages.
        let (mut embeds, mut rests): (Vec<_>, Vec<_>) = runners
            .iter_mut()
            .map(|set| set.split_first_mut().expect("a set has stages"))
            .unzip();
        let sets = [&self.stages, &self.tail_stages];
        // The runs: full batches of B on the first set, then the remaining tiles one
        // at a time on the single-tile set (or one padded batch when B is 1 or no
        // single-tile set was compiled).
        let b = self.options.batch;
        let full = if self.tail_stages.is_empty() {
            tiles.div_ceil(b)
        } else {
            tiles / b
        };
        let jobs: Vec<(usize, usize, usize)> = (0..full)
            .map(|k| (k * b, b.min(tiles - k * b), 0))
            .chain((full * b..tiles).map(|start| (start, 1, 1)))
            .collect();
        let pixels_of = |&(start, valid, set): &(usize, usize, usize)| {
            let st = &sets[set][0];
            let mut batch = pixels[start * per_tile..(start + valid) * per_tile].to_vec();
            batch.resize(st.input_fact.elems().unwrap_or(0), 0.0);
            StageInput::Host(HostTensor::f32(st.input_fact.shape.clone(), batch))
        };
        let mut out = Collected::new(self, tiles);
        let mut t = EncodeTimings {
            pipelined: self.options.pipeline,
            ..EncodeTimings::default()
        };
        let pipeline = self.options.pipeline;
        // Dropped on an early return, the in-flight embed still finishes first (its
        // handle waits), before the runners are unlocked.
        let embed = |runner: &mut StageRunner, job: (usize, usize, usize)| {
            let st = &sets[job.2][0];
            runner.load(st, pixels_of(&job))?;
            runner.start(st)
        };
        let first = jobs[0].2;
        let mut next = Some(embed(embeds[first], jobs[0])?);
        for (k, job) in jobs.iter().enumerate() {
            let (_, valid, set) = *job;
            let stages = sets[set];
            let batch = stages[0].input_fact.shape[0];
            let run = next
                .take()
                .ok_or_else(|| invalid("vision", "no embed in flight"))?;
            t.conv_ms += embeds[set].finish(&stages[0], run)?;
            out.keep(0, &stages[0], embeds[set], batch, valid)?;
            // The blocks' input: the embed output where it lies (the next batch's
            // embed, submitted before the blocks run, writes the other slot).
            let value = embeds[set].value(&stages[0])?;
            let later = &mut rests[set];
            later[0].load(&stages[1], value)?;
            let following = jobs.get(k + 1);
            if let (Some(&nj), true) = (following, pipeline) {
                next = Some(embed(embeds[nj.2], nj)?);
            }
            for i in 1..stages.len() {
                let (st, r) = (&stages[i], &mut later[i - 1]);
                let run = r.start(st)?;
                let ms = r.finish(st, run)?;
                match i {
                    1 => t.blocks_ms += ms,
                    _ => t.project_ms += ms,
                }
                out.keep(i, st, r, batch, valid)?;
                if let Some(st_next) = stages.get(i + 1) {
                    let value = later[i - 1].value(st)?;
                    later[i].load(st_next, value)?;
                }
            }
            if let (Some(&nj), false) = (following, pipeline) {
                next = Some(embed(embeds[nj.2], nj)?);
            }
        }
        t.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        t.sequential_ms = t.conv_ms + t.blocks_ms + t.project_ms;
        t.hidden_ms = (t.sequential_ms - t.total_ms).max(0.0);
        Ok(VisionOutput {
            tiles,
            features: out.features.unwrap_or_default(),
            projected: out.projected,
            taps: out.taps,
            timings: t,
        })
    }
}

/// What `encode` gathers from the batches: the valid tiles' rows of each stage.
struct Collected {
    /// `None`: the features are not wanted.
    features: Option<Vec<f32>>,
    projected: Option<Vec<f32>>,
    taps: std::collections::BTreeMap<String, Vec<f32>>,
}

impl Collected {
    fn new(enc: &VisionEncoder, tiles: usize) -> Self {
        let (n, d) = (enc.config.tokens(), enc.config.hidden_size);
        let want_features = enc.options.tower_features || enc.projector_config.is_none();
        Collected {
            features: want_features.then(|| Vec::with_capacity(tiles * n * d)),
            projected: enc
                .projector_config
                .as_ref()
                .map(|p| Vec::with_capacity(tiles * p.tokens_per_tile() * p.llm_hidden)),
            taps: Default::default(),
        }
    }

    /// Keeps the first `valid` of `batch` tiles' rows of stage `i`'s outputs (its
    /// value, then taps), reading back only what is kept.
    fn keep(
        &mut self,
        i: usize,
        st: &VisionStageProgram,
        runner: &StageRunner,
        batch: usize,
        valid: usize,
    ) -> Result<()> {
        for (j, (tap, _)) in st.outputs.iter().enumerate().skip(1) {
            let o = runner.read(st, j)?;
            self.taps
                .entry(tap.clone())
                .or_default()
                .extend_from_slice(valid_rows(&o, batch, valid)?);
        }
        let dst = match (i, &mut self.projected) {
            (0, _) => return Ok(()),
            (1, _) => match &mut self.features {
                Some(f) => f,
                None => return Ok(()),
            },
            (_, Some(p)) => p,
            (_, None) => return Err(invalid("vision", "a projector stage without a projector")),
        };
        dst.extend_from_slice(valid_rows(&runner.read(st, 0)?, batch, valid)?);
        Ok(())
    }
}
