//! Loading and compiling: a checkpoint becomes a `Model` holding the backend's prepared
//! weights (once) and the ahead-of-time compiled static-shape graphs that sessions run:
//! a prefill chunk of C rows (logits for the last row, or for all rows) and a 1-row
//! decode step, all sharing the same weights and the same KV-cache state names.

use crate::budget::{MemoryBudget, Reservation};
use crate::partition::{compile_partitioned, Partitioned};
use crate::speculative::VERIFY_ROWS;
use crate::{Result, RuntimeError};
use npurt_backends::{Backend, BackendOptions, DeviceBuffer, Registry};
use npurt_graph::passes::{PassReport, Pipeline};
use npurt_graph::{Graph, NodeId, Op, PrecisionPolicy, TensorFact};
use npurt_models::llama::{self, InputKind, LlamaGraphOptions, LogitsMode};
use npurt_models::tokenizer::Tokenizer;
use npurt_models::{ChatTemplate, LlamaConfig, ModelSource, WeightStore};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The chunk size BlueLM-V-3B uses on the NPU ("t128").
pub const DEFAULT_CHUNK: usize = 128;
/// Default context when none is asked for (capped by the model's own maximum).
pub const DEFAULT_CTX: usize = 2048;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub backend: String,
    pub threads: Option<usize>,
    /// Prefill chunk rows (C).
    pub chunk: usize,
    /// Context length in tokens (`None`: min(model max, 2048)).
    pub ctx: Option<usize>,
    /// Weight formats and activation precisions (a compile policy; default w4a16:
    /// INT4 weights, INT16 activations, as BlueLM-V-3B runs its LLM).
    pub precision: PrecisionPolicy,
    /// Bytes the model's weights, sessions and images may plan for (`None`:
    /// [`crate::budget::DEFAULT_FRACTION`] of the machine's available memory).
    pub mem_budget: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            backend: "cpu".into(),
            threads: None,
            chunk: DEFAULT_CHUNK,
            ctx: None,
            precision: PrecisionPolicy::W4A16,
            mem_budget: None,
        }
    }
}

/// The executable graphs a model is compiled into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GraphKind {
    /// C rows, logits of the last valid row.
    Prefill,
    /// C rows, logits of every row.
    PrefillAllLogits,
    /// 1 row.
    Decode,
    /// `speculative::VERIFY_ROWS` rows, logits of every row: a sampled token and its
    /// draft, verified in one execution.
    Verify,
    /// C rows of input embeddings (a chunk holding image rows), logits of the last row.
    /// Multimodal models only.
    PrefillEmbeds,
    /// C rows of input embeddings, logits of every row. Multimodal models only.
    PrefillEmbedsAllLogits,
    /// C token ids to their embedding rows (the text rows of a mixed chunk).
    /// Multimodal models only.
    EmbedTokens,
}

impl GraphKind {
    /// Whether the graph takes `embeds` rows instead of token ids.
    pub fn takes_embeddings(self) -> bool {
        matches!(
            self,
            GraphKind::PrefillEmbeds | GraphKind::PrefillEmbedsAllLogits
        )
    }
}

/// One compiled static-shape graph and the ids of the sources the runtime binds.
pub struct CompiledGraph {
    pub kind: GraphKind,
    pub graph: Graph,
    /// The graph split across the model's backends (one segment when the preferred
    /// backend runs everything).
    pub exec: Arc<Partitioned>,
    pub rows: usize,
    /// The row input: `ids` ([rows] i32) or `embeds` ([rows, hidden] f32).
    pub input: NodeId,
    /// Position of the first row and the count of valid rows (absent from
    /// `EmbedTokens`, which has no position).
    pub pos: Option<NodeId>,
    pub n_valid: Option<NodeId>,
    pub last_row: Option<NodeId>,
    /// The output the runtime reads: `logits`, or `embeds` for `EmbedTokens`.
    pub output: &'static str,
    /// (state node, state name) for the KV cache.
    pub states: Vec<(NodeId, String)>,
    pub pass_reports: Vec<PassReport>,
}

pub struct Model {
    pub config: LlamaConfig,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub description: String,
    /// The preferred backend.
    pub backend: Arc<dyn Backend>,
    /// Backends in preference order: the preferred one, then the CPU fallback for
    /// nodes it does not support.
    pub backends: Vec<Arc<dyn Backend>>,
    pub options: LoadOptions,
    /// Context length sessions get.
    pub ctx: usize,
    /// KV-cache rows: ctx + chunk - 1, so a padded chunk written at any position that
    /// still has room for its valid rows stays inside the cache.
    pub cache_rows: usize,
    pub graphs: HashMap<GraphKind, CompiledGraph>,
    pub load_ms: f64,
    /// Bytes of the LLM's prepared weights.
    pub weight_bytes: usize,
    /// Prepared weights of every program of this model (LLM, vision encoder,
    /// projector), keyed by backend and weight name.
    pub(crate) prepared: Arc<PreparedWeights>,
    /// The image path of a multimodal (BlueLM-V) model.
    pub vision: Option<crate::multimodal::VisionPart>,
    /// How long each part took to load and compile, and the wall time.
    pub load_report: LoadReport,
    /// What the weights, sessions and images reserve against.
    pub budget: Arc<MemoryBudget>,
    /// Planned bytes of one session: its KV cache and the arenas of every graph kind.
    pub session_bytes: u64,
    /// The LLM weights' share of the budget.
    _weights: Reservation,
}

/// Load and compile times of a model's parts (ms). A multimodal model loads its vision
/// tower and its LLM on separate threads, so `wall_ms` is less than their sum.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct LoadReport {
    pub llm_ms: f64,
    /// 0 for a text-only model.
    pub vision_ms: f64,
    pub wall_ms: f64,
}

/// Owns the backend registry; loads models.
pub struct Runtime {
    registry: Registry,
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    /// A runtime with npurt's built-in backends registered.
    pub fn new() -> Self {
        Self::with_registry(Registry::with_builtin())
    }

    pub fn with_registry(registry: Registry) -> Self {
        crate::heap::map_large_blocks();
        Runtime { registry }
    }

    /// Register more backends here (vendor crates, tests).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// `backend`, then the CPU backend for the nodes it does not run (preference order).
    pub fn backends(&self, backend: &str, threads: Option<usize>) -> Result<Vec<Arc<dyn Backend>>> {
        let bopts = BackendOptions { threads };
        let mut backends = vec![self.registry.create(backend, &bopts)?];
        if backend != "cpu" {
            backends.push(self.registry.create("cpu", &bopts)?);
        }
        Ok(backends)
    }

    /// Loads a `.gguf` file, an HF LLaMA directory, or a BlueLM-V model directory
    /// (`"model_type": "bluelm_v"`: vision tower, projector and LLM, loaded on separate
    /// threads with the vision options of [`crate::VisionOptions::default`]).
    pub fn load(&self, path: &Path, opts: LoadOptions) -> Result<Arc<Model>> {
        if npurt_models::vlm::is_vlm_dir(path) {
            return self.load_multimodal(path, opts, crate::VisionOptions::default());
        }
        let t0 = Instant::now();
        let source = ModelSource::open(path)?;
        let backends = self.backends(&opts.backend, opts.threads)?;
        let mut model = Model::compile(source, backends, opts)?;
        model.load_ms = t0.elapsed().as_secs_f64() * 1e3;
        model.load_report = LoadReport {
            llm_ms: model.load_ms,
            vision_ms: 0.0,
            wall_ms: model.load_ms,
        };
        log::info!(
            "loaded {} on {} in {:.0} ms",
            model.description,
            model.backend.capabilities().device,
            model.load_ms
        );
        Ok(Arc::new(model))
    }
}

/// Prepared weights keyed by (backend, weight name): every graph a model (or a vision
/// program) compiles reads its weights from here, so each is materialized and
/// prepared once per backend however many graphs use it.
#[derive(Default)]
pub(crate) struct PreparedWeights {
    buffers: Mutex<HashMap<(String, String), Arc<dyn DeviceBuffer>>>,
}

impl PreparedWeights {
    /// Compiles `graph` over `backends`, preparing (or reusing) each weight it reads
    /// from `store`.
    pub(crate) fn compile(
        &self,
        graph: &Graph,
        backends: &[Arc<dyn Backend>],
        store: &WeightStore,
    ) -> Result<Partitioned> {
        let prepare = |be: &dyn Backend, id: NodeId| -> Result<Arc<dyn DeviceBuffer>> {
            let Op::Weight { name, fact, parts } = &graph.node(id).op else {
                return Err(invalid("graph", "prepare called on a non-weight"));
            };
            let key = (be.name().to_string(), name.clone());
            if let Some(b) = self
                .buffers
                .lock()
                .expect("weight cache poisoned")
                .get(&key)
            {
                return Ok(b.clone());
            }
            let tensor = store.materialize(name, parts, fact)?;
            let in_place = matches!(tensor.data, npurt_kernels::HostData::MappedF32(_));
            let buf = be.prepare_weight(name, tensor)?;
            // Unless the weight is read in place, the backend holds its own copy now:
            // drop the file's pages (they come back from the file if another backend or
            // a tied tensor reads them again).
            if !in_place {
                let sources = if parts.is_empty() {
                    std::slice::from_ref(name)
                } else {
                    parts.as_slice()
                };
                store.release(sources.iter().map(String::as_str));
            }
            Ok(self
                .buffers
                .lock()
                .expect("weight cache poisoned")
                .entry(key)
                .or_insert(buf)
                .clone())
        };
        compile_partitioned(graph, backends, &prepare)
    }

    /// Bytes of the prepared buffers `graphs` read (each buffer once).
    pub(crate) fn bytes_of<'a>(&self, graphs: impl IntoIterator<Item = &'a Graph>) -> usize {
        let names: std::collections::HashSet<&str> = graphs
            .into_iter()
            .flat_map(|g| g.sources("weight").into_iter().map(|(_, n, _)| n))
            .collect();
        self.buffers
            .lock()
            .expect("weight cache poisoned")
            .iter()
            .filter(|((_, n), _)| names.contains(n.as_str()))
            .map(|(_, b)| b.fact().bytes().unwrap_or(0))
            .sum()
    }

    /// Drops the cache's hold on the buffers `graphs` read (the programs that own them
    /// free them when they are dropped): releasing a part of a model.
    pub(crate) fn evict<'a>(&self, graphs: impl IntoIterator<Item = &'a Graph>) {
        let names: std::collections::HashSet<String> = graphs
            .into_iter()
            .flat_map(|g| {
                g.sources("weight")
                    .into_iter()
                    .map(|(_, n, _)| n.to_string())
            })
            .collect();
        self.buffers
            .lock()
            .expect("weight cache poisoned")
            .retain(|(_, n), _| !names.contains(n));
    }
}

/// Bytes of the distinct weights `graphs` read, at the formats the passes chose.
pub(crate) fn planned_weight_bytes<'a>(graphs: impl IntoIterator<Item = &'a Graph>) -> u64 {
    let mut seen = std::collections::HashMap::new();
    for g in graphs {
        for (_, name, fact) in g.sources("weight") {
            seen.entry(name.to_string())
                .or_insert(fact.bytes().unwrap_or(0) as u64);
        }
    }
    seen.values().sum()
}

pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidOption {
        option,
        reason: reason.into(),
    }
}

impl Model {
    /// Builds, optimises and compiles every graph kind over `backends` (preference
    /// order; nodes the first cannot run fall back to later ones), preparing each
    /// weight once per backend that needs it.
    pub fn compile(
        source: ModelSource,
        backends: Vec<Arc<dyn Backend>>,
        opts: LoadOptions,
    ) -> Result<Model> {
        let budget = MemoryBudget::new(opts.mem_budget);
        Self::compile_llm(source, backends, opts, Arc::default(), budget, false)
    }

    /// [`Model::compile`] into a shared weight cache; `embeddings` also compiles the
    /// graph kinds a multimodal prompt needs (chunks of input embeddings, and the token
    /// embedding lookup for their text rows).
    pub(crate) fn compile_llm(
        source: ModelSource,
        backends: Vec<Arc<dyn Backend>>,
        opts: LoadOptions,
        prepared: Arc<PreparedWeights>,
        budget: Arc<MemoryBudget>,
        embeddings: bool,
    ) -> Result<Model> {
        let backend = backends
            .first()
            .cloned()
            .ok_or_else(|| invalid("backend", "no backend given"))?;
        let cfg = source.config.clone();
        let ctx = opts
            .ctx
            .unwrap_or(DEFAULT_CTX.min(cfg.max_position_embeddings));
        let max_ctx = cfg.max_context();
        if ctx == 0 || ctx > max_ctx {
            return Err(invalid(
                "ctx",
                format!(
                    "{ctx} is outside 1..={max_ctx} (the model's trained context{})",
                    if max_ctx > cfg.max_position_embeddings {
                        ", extended by its rope scaling"
                    } else {
                        "; its rope scaling does not extend it"
                    }
                ),
            ));
        }
        if opts.chunk == 0 || opts.chunk > 4096 {
            return Err(invalid(
                "chunk",
                format!("{} is outside 1..=4096", opts.chunk),
            ));
        }
        let cache_rows = ctx + opts.chunk - 1;

        let mut kinds = vec![
            (GraphKind::Prefill, opts.chunk, LogitsMode::Last),
            (GraphKind::PrefillAllLogits, opts.chunk, LogitsMode::All),
            (GraphKind::Decode, 1, LogitsMode::Last),
            (GraphKind::Verify, VERIFY_ROWS, LogitsMode::All),
        ];
        if embeddings {
            kinds.extend([
                (GraphKind::PrefillEmbeds, opts.chunk, LogitsMode::Last),
                (
                    GraphKind::PrefillEmbedsAllLogits,
                    opts.chunk,
                    LogitsMode::All,
                ),
                (GraphKind::EmbedTokens, opts.chunk, LogitsMode::Last),
            ]);
        }
        let stored = Arc::new(source.weights.stored_dtypes());
        let mut built = Vec::new();
        for (kind, rows, logits) in kinds {
            let mut graph = if kind == GraphKind::EmbedTokens {
                llama::build_embed_tokens(&cfg, rows)?
            } else {
                llama::build(
                    &cfg,
                    &LlamaGraphOptions {
                        rows,
                        cache_rows,
                        logits,
                        input: if kind.takes_embeddings() {
                            InputKind::Embeddings
                        } else {
                            InputKind::Ids
                        },
                        taps: false,
                    },
                )?
            };
            let st = stored.clone();
            let reports = Pipeline::compile(
                opts.precision.clone(),
                Box::new(move |n| st.get(n).copied()),
            )
            .run(&mut graph)?;
            built.push((kind, rows, graph, reports));
        }

        // What the weights (at the compiled formats) and one session will take, reserved
        // before anything is prepared or allocated.
        let weights_planned = planned_weight_bytes(built.iter().map(|b| &b.2));
        let kv_bytes = (2 * cfg.num_hidden_layers) as u64
            * TensorFact::new(
                opts.precision.kv_cache.dtype(cfg.head_dim),
                [cache_rows, cfg.kv_width()],
            )
            .bytes()
            .unwrap_or(usize::MAX) as u64;
        let session_bytes = kv_bytes
            + built
                .iter()
                .map(|b| npurt_graph::plan::plan(&b.2, 64).arena_bytes)
                .sum::<u64>();
        let weights_reservation = budget.reserve(
            format!("the LLM weights ({})", opts.precision.name),
            weights_planned,
        )?;
        if weights_planned + session_bytes > budget.limit() {
            return Err(RuntimeError::OverBudget {
                what: format!("one session (KV cache for {ctx} positions + activations)"),
                needed: session_bytes,
                used: budget.used(),
                budget: budget.limit(),
            });
        }

        // Weights are materialized in the format each graph wants and prepared once per
        // (backend, weight): graph kinds share weight names, so the prefill and decode
        // graphs share one copy.
        let mut graphs = HashMap::new();
        for (kind, rows, graph, pass_reports) in built {
            let exec = Arc::new(prepared.compile(&graph, &backends, &source.weights)?);
            let find = |n: &str| {
                graph
                    .find_source("input", n)
                    .ok_or_else(|| invalid("graph", format!("compiled graph lacks input `{n}`")))
            };
            let states = graph
                .sources("state")
                .into_iter()
                .map(|(id, n, _)| (id, n.to_string()))
                .collect();
            let (input, output) = match kind {
                GraphKind::EmbedTokens => (find("ids")?, llama::EMBEDS),
                k if k.takes_embeddings() => (find("embeds")?, "logits"),
                _ => (find("ids")?, "logits"),
            };
            let cg = CompiledGraph {
                kind,
                rows,
                input,
                output,
                pos: graph.find_source("input", "pos"),
                n_valid: graph.find_source("input", "n_valid"),
                last_row: graph.find_source("input", "last_row"),
                states,
                exec,
                graph,
                pass_reports,
            };
            graphs.insert(kind, cg);
        }
        let weight_bytes = prepared.bytes_of(graphs.values().map(|g| &g.graph));
        Ok(Model {
            config: cfg,
            tokenizer: source.tokenizer,
            chat_template: source.chat_template,
            description: source.description,
            backend,
            backends,
            options: opts,
            ctx,
            cache_rows,
            graphs,
            load_ms: 0.0,
            weight_bytes,
            prepared,
            vision: None,
            load_report: LoadReport::default(),
            budget,
            session_bytes,
            _weights: weights_reservation,
        })
    }

    pub fn graph(&self, kind: GraphKind) -> &CompiledGraph {
        &self.graphs[&kind]
    }

    /// Token ids that end generation (config EOS ids plus the tokenizer's EOS).
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut v = self.config.eos_token_ids.clone();
        if let Some(t) = &self.chat_template {
            if let Some(id) = self.tokenizer.token_to_id(&t.eos_token) {
                v.push(id);
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Encodes text (no special tokens are added beyond what the tokenizer's
    /// post-processor adds; special-token strings in the text map to their ids).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(npurt_models::tokenizer::encode(&self.tokenizer, text)?)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(npurt_models::tokenizer::decode(&self.tokenizer, ids)?)
    }

    /// Renders a conversation with the model's chat template (generation prompt added).
    pub fn render_chat(&self, messages: &[npurt_models::ChatMessage]) -> Result<String> {
        let t = self
            .chat_template
            .as_ref()
            .ok_or(RuntimeError::NoChatTemplate)?;
        Ok(t.render(messages, true)?)
    }
}
