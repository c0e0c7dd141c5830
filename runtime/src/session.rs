//! A `Session` is one conversation over a shared `Model`: its own KV cache (persistent
//! buffers sized for the context), its own scratch per compiled graph, and what each
//! context position holds (a token, or a row of an image's embeddings). Sessions are
//! independent: many run at once on one model, on any threads.

use crate::model::{invalid, CompiledGraph, GraphKind, Model};
use crate::multimodal::{ImageEmbeddings, PendingImage, PromptPart};
use crate::sampling::{Sampler, SamplingOptions};
use crate::speculative::{Drafter, PromptLookup, SpeculationStats, VERIFY_ROWS};
use crate::{Result, RuntimeError};
use npurt_backends::{Bindings, BufferUsage, DeviceBuffer, Executable, Profile, Scratch};
use npurt_graph::TensorFact;
use npurt_kernels::HostTensor;
use npurt_models::tokenizer::StreamDecoder;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-graph-kind buffers of one session (created on first use).
struct Runner {
    scratch: Box<dyn Scratch>,
    /// `ids` or `embeds`.
    input: Arc<dyn DeviceBuffer>,
    pos: Option<Arc<dyn DeviceBuffer>>,
    n_valid: Option<Arc<dyn DeviceBuffer>>,
    last_row: Option<Arc<dyn DeviceBuffer>>,
    output: Arc<dyn DeviceBuffer>,
}

/// What one context position holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Token(u32),
    /// Row `row` of the session's `image`-th image (counted from 0 in feeding order).
    Image {
        image: u32,
        row: u32,
    },
}

/// The rows of one graph execution.
enum ChunkRows<'a> {
    Ids(&'a [u32]),
    /// `n` rows of input embeddings, `[n, hidden]`.
    Embeds {
        data: Vec<f32>,
        n: usize,
    },
}

impl ChunkRows<'_> {
    fn len(&self) -> usize {
        match self {
            ChunkRows::Ids(ids) => ids.len(),
            ChunkRows::Embeds { n, .. } => *n,
        }
    }
}

/// How [`Session::feed_pending_reusing`] fed a prompt: positions kept from what the
/// session held, then positions fed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PromptReuse {
    pub reused: usize,
    pub fed: usize,
}

pub struct Session {
    model: Arc<Model>,
    kv: HashMap<String, Arc<dyn DeviceBuffer>>,
    runners: HashMap<GraphKind, Runner>,
    /// What each position of the KV cache holds, in order.
    positions: Vec<Position>,
    /// The token ids among `positions`, in order (the sampler's history).
    tokens: Vec<u32>,
    /// The id ([`ImageEmbeddings::id`]) of each image fed so far, by its number (their
    /// positions may have been truncated away since).
    image_ids: Vec<u64>,
    last_logits: Option<Vec<f32>>,
    /// This session's share of the model's memory budget.
    _reservation: crate::budget::Reservation,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    pub stop_at_eos: bool,
    /// Generation ends when the text contains one of these (it is cut before it).
    pub stop_strings: Vec<String>,
    /// What a prompt longer than the room left in the context gets.
    pub prompt_overflow: PromptOverflow,
    /// Draft tokens by prompt lookup and verify them in one execution
    /// ([`crate::speculative`]; `None`: one decode step a token). The text is the same
    /// either way, up to rounding at near-ties (see there).
    pub speculation: Option<PromptLookup>,
}

/// What happens to a prompt longer than the room left in the context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PromptOverflow {
    /// [`RuntimeError::ContextOverflow`], naming the sizes (the default).
    #[default]
    Error,
    /// A sliding window: keep the prompt's first `keep_first` tokens (a system prompt,
    /// the instructions) and its most recent tokens that fit, dropping the middle. Room
    /// is left for `max_tokens` new tokens, up to half of what is free.
    SlidingWindow { keep_first: usize },
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingOptions::default(),
            stop_at_eos: true,
            stop_strings: Vec::new(),
            prompt_overflow: PromptOverflow::Error,
            speculation: None,
        }
    }
}

/// A prompt after [`Session::fit_prompt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FittedPrompt {
    pub ids: Vec<u32>,
    /// Tokens dropped from the middle.
    pub dropped: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    ContextFull,
    /// The streaming callback asked to stop.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    /// New token ids (an EOS that stopped generation is included, as HF generate does).
    pub tokens: Vec<u32>,
    /// New text, without the stopping EOS or stop string.
    pub text: String,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    /// Prompt tokens a sliding window dropped (0 unless asked for and needed).
    pub prompt_dropped: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Drafts verified and kept (all zero without [`GenerateOptions::speculation`]).
    pub speculation: SpeculationStats,
}

impl Generation {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_time)
    }
    /// Decode throughput: tokens after the first (which prefill produced) per second.
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.tokens.len().saturating_sub(1), self.decode_time)
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

fn scalar(v: usize) -> HostTensor {
    HostTensor::i32([1], vec![v as i32])
}

impl Session {
    pub fn new(model: Arc<Model>) -> Result<Session> {
        // The KV cache and the arenas of every graph kind, reserved before allocating.
        let reservation = model.budget.reserve(
            format!(
                "a session (KV cache for {} positions + activations)",
                model.ctx
            ),
            model.session_bytes,
        )?;
        // Each KV cache lives on the backend that runs its attention; every graph kind
        // must agree on that, since they share the cache.
        let mut kv: HashMap<String, Arc<dyn DeviceBuffer>> = HashMap::new();
        let mut home: HashMap<&str, &str> = HashMap::new();
        let fact = TensorFact::new(
            model
                .options
                .precision
                .kv_cache
                .dtype(model.config.head_dim),
            [model.cache_rows, model.config.kv_width()],
        );
        for cg in model.graphs.values() {
            for (id, name) in &cg.states {
                let be = cg.exec.source_backend(*id).map(|b| b.name()).unwrap_or("?");
                match home.get(name.as_str()) {
                    Some(h) if *h != be => {
                        return Err(RuntimeError::InvalidOption {
                            option: "backend",
                            reason: format!(
                            "KV cache `{name}` is placed on `{h}` and `{be}` by different graphs"
                        ),
                        })
                    }
                    Some(_) => {}
                    None => {
                        home.insert(name, be);
                        kv.insert(
                            name.clone(),
                            cg.exec.alloc_source(*id, &fact, BufferUsage::State)?,
                        );
                    }
                }
            }
        }
        Ok(Session {
            model,
            kv,
            runners: HashMap::new(),
            positions: Vec::new(),
            tokens: Vec::new(),
            image_ids: Vec::new(),
            last_logits: None,
            _reservation: reservation,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// The token ids in the KV cache, in order (image positions are skipped: see
    /// [`Session::positions`]).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// What every position of the KV cache holds, in order.
    pub fn positions(&self) -> &[Position] {
        &self.positions
    }

    /// Positions used (tokens and image rows).
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Forgets everything (the KV cache is logically empty; nothing is reallocated).
    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Keeps the first `n` positions (cutting through an image keeps its first rows).
    /// Cache rows past `n` are stale but unreachable: a query only sees positions below
    /// its own, and they are rewritten first.
    pub fn truncate(&mut self, n: usize) {
        if n < self.positions.len() {
            self.positions.truncate(n);
            let kept = self
                .positions
                .iter()
                .filter(|p| matches!(p, Position::Token(_)))
                .count();
            self.tokens.truncate(kept);
            self.last_logits = None;
        }
    }

    /// Logits after the last fed token.
    pub fn last_logits(&self) -> Option<&[f32]> {
        self.last_logits.as_deref()
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        if let Some((index, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(RuntimeError::TokenOutOfRange {
                id: id as i64,
                index,
                vocab,
            });
        }
        self.check_room(ids.len())
    }

    fn check_room(&self, needed: usize) -> Result<()> {
        let used = self.positions.len();
        if used + needed > self.model.ctx {
            return Err(RuntimeError::ContextOverflow {
                needed,
                used,
                ctx: self.model.ctx,
            });
        }
        Ok(())
    }

    fn runner(&mut self, kind: GraphKind) -> Result<&mut Runner> {
        if !self.runners.contains_key(&kind) {
            let cg = self
                .model
                .graphs
                .get(&kind)
                .ok_or(RuntimeError::NotMultimodal)?;
            let x = &cg.exec;
            let act = BufferUsage::Activations;
            let out_id = cg
                .graph
                .output(cg.output)
                .ok_or_else(|| invalid("graph", format!("no output `{}`", cg.output)))?;
            let scalar = TensorFact::i32([1]);
            let opt = |id: Option<_>| id.map(|id| x.alloc_source(id, &scalar, act)).transpose();
            let r = Runner {
                scratch: x.new_scratch()?,
                input: x.alloc_source(cg.input, cg.graph.fact(cg.input), act)?,
                pos: opt(cg.pos)?,
                n_valid: opt(cg.n_valid)?,
                last_row: opt(cg.last_row)?,
                output: x.alloc_output(cg.output, cg.graph.fact(out_id))?,
            };
            self.runners.insert(kind, r);
        }
        Ok(self.runners.get_mut(&kind).expect("inserted above"))
    }

    /// Runs one graph execution over `rows` (at most the graph's rows) at the current
    /// position and returns its output (logits `[1, V]` or `[rows, V]`; embeddings for
    /// `EmbedTokens`). The caller records the positions it filled.
    fn run_chunk(&mut self, kind: GraphKind, rows: ChunkRows) -> Result<HostTensor> {
        self.run_chunk_profiled(kind, rows, None)
    }

    /// `run_chunk`, with `profile` set: the execution is profiled
    /// ([`Executable::profile`]) and the profile stored there.
    fn run_chunk_profiled(
        &mut self,
        kind: GraphKind,
        rows: ChunkRows,
        profile: Option<&mut Option<Profile>>,
    ) -> Result<HostTensor> {
        let model = self.model.clone();
        let cg: &CompiledGraph = model.graphs.get(&kind).ok_or(RuntimeError::NotMultimodal)?;
        let pos = self.positions.len();
        let n = rows.len();
        let input = match rows {
            ChunkRows::Ids(ids) => {
                let mut padded: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                padded.resize(cg.rows, 0);
                HostTensor::i32([cg.rows], padded)
            }
            ChunkRows::Embeds { mut data, .. } => {
                let h = model.config.hidden_size;
                data.resize(cg.rows * h, 0.0);
                HostTensor::f32([cg.rows, h], data)
            }
        };
        let kv: Vec<_> = cg
            .states
            .iter()
            .map(|(id, name)| (*id, self.kv[name].clone()))
            .collect();
        let x = cg.exec.clone();
        let write = |id, buf: &Arc<dyn DeviceBuffer>, t: HostTensor| -> Result<()> {
            let be = x
                .source_backend(id)
                .ok_or_else(|| invalid("graph", "input without a backend"))?;
            Ok(be.write(buf.as_ref(), &t)?)
        };
        let r = self.runner(kind)?;
        let mut sources = kv;
        let scalars = [
            (cg.pos, &r.pos, pos),
            (cg.n_valid, &r.n_valid, n),
            (cg.last_row, &r.last_row, n.saturating_sub(1)),
        ];
        write(cg.input, &r.input, input)?;
        sources.push((cg.input, r.input.clone()));
        for (id, buf, v) in scalars {
            if let (Some(id), Some(buf)) = (id, buf) {
                write(id, buf, scalar(v))?;
                sources.push((id, buf.clone()));
            }
        }
        let bindings = Bindings {
            sources,
            outputs: vec![(cg.output.into(), r.output.clone())],
        };
        match profile {
            None => x.run(&bindings, r.scratch.as_mut())?,
            Some(p) => *p = Some(x.profile(&bindings, r.scratch.as_mut())?),
        }
        let out_be = x
            .output_backend(cg.output)
            .ok_or_else(|| invalid("graph", "an output without a backend"))?;
        for be in &model.backends {
            be.synchronize()?;
        }
        Ok(out_be.read(r.output.as_ref())?)
    }

    /// Records fed token ids as the next positions.
    fn push_tokens(&mut self, ids: &[u32]) {
        self.positions
            .extend(ids.iter().map(|&i| Position::Token(i)));
        self.tokens.extend_from_slice(ids);
    }

    fn chunk_rows(&self) -> usize {
        self.model.graph(GraphKind::Prefill).rows
    }

    /// Feeds `ids` as one graph execution (at most one prefill chunk; one id is a
    /// decode step), like [`Session::feed`], and returns its per-node profile
    /// ([`Executable::profile`]: slower than `feed`, the results are the same).
    pub fn feed_profiled(&mut self, ids: &[u32]) -> Result<Profile> {
        self.check_ids(ids)?;
        if ids.is_empty() || ids.len() > self.chunk_rows() {
            return Err(invalid(
                "ids",
                format!(
                    "a profiled feed is one execution: 1 to {} ids, got {}",
                    self.chunk_rows(),
                    ids.len()
                ),
            ));
        }
        let kind = if ids.len() == 1 {
            GraphKind::Decode
        } else {
            GraphKind::Prefill
        };
        let mut profile = None;
        let out = self.run_chunk_profiled(kind, ChunkRows::Ids(ids), Some(&mut profile))?;
        self.push_tokens(ids);
        self.last_logits = out.into_f32();
        profile.ok_or_else(|| invalid("profile", "the run returned no profile"))
    }

    /// Feeds 1 to [`VERIFY_ROWS`] token ids in one execution of the `Verify` graph and
    /// returns the logits after each (`[ids.len()][vocab]`; the last is also
    /// `last_logits`): a sampled token and its draft.
    pub fn feed_verify(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_ids(ids)?;
        if ids.is_empty() || ids.len() > VERIFY_ROWS {
            return Err(invalid(
                "ids",
                format!(
                    "a verification feeds 1 to {VERIFY_ROWS} ids, got {}",
                    ids.len()
                ),
            ));
        }
        let out = self.run_chunk(GraphKind::Verify, ChunkRows::Ids(ids))?;
        self.push_tokens(ids);
        let vocab = self.model.config.vocab_size;
        let v = out
            .into_f32()
            .ok_or_else(|| invalid("graph", "verification logits are not f32"))?;
        let rows: Vec<Vec<f32>> = v
            .chunks_exact(vocab)
            .take(ids.len())
            .map(<[f32]>::to_vec)
            .collect();
        self.last_logits = rows.last().cloned();
        Ok(rows)
    }

    /// Feeds token ids (chunked prefill, or one decode step for a single token);
    /// afterwards `last_logits` holds the next-token logits.
    pub fn feed(&mut self, ids: &[u32]) -> Result<()> {
        self.check_ids(ids)?;
        let c = self.chunk_rows();
        for chunk in ids.chunks(c) {
            let kind = if chunk.len() == 1 {
                GraphKind::Decode
            } else {
                GraphKind::Prefill
            };
            let out = self.run_chunk(kind, ChunkRows::Ids(chunk))?;
            self.push_tokens(chunk);
            self.last_logits = out.into_f32();
        }
        Ok(())
    }

    /// Feeds raw text (tokenized as is; special-token strings map to their ids).
    pub fn feed_text(&mut self, text: &str) -> Result<Vec<u32>> {
        let ids = self.model.encode(text)?;
        self.feed(&ids)?;
        Ok(ids)
    }

    /// Starts a conversation: renders `messages` with the model's chat template
    /// (generation prompt added) into an empty session and feeds it. Returns the ids.
    pub fn feed_chat(&mut self, messages: &[npurt_models::ChatMessage]) -> Result<Vec<u32>> {
        let text = self.model.render_chat(messages)?;
        self.reset();
        self.feed_text(&text)
    }

    /// Feeds a prompt of text and images in chunks of the prefill size: a chunk holding
    /// image rows runs the embeddings graph, its text rows embedded by the model's
    /// token-embedding graph. The whole prompt is checked against the context first.
    pub fn feed_prompt(&mut self, parts: &[PromptPart<Arc<ImageEmbeddings>>]) -> Result<()> {
        self.feed_parts(parts, None).map(|_| ())
    }

    /// [`Session::feed_prompt`] returning the logits at the last `n` fed positions
    /// (fewer if the prompt is shorter). Only the chunks holding those positions run
    /// the every-row-logits graph.
    pub fn feed_prompt_last_logits(
        &mut self,
        parts: &[PromptPart<Arc<ImageEmbeddings>>],
        n: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let total: usize = parts
            .iter()
            .map(|p| match p {
                PromptPart::Text(ids) => ids.len(),
                PromptPart::Image(img) => img.tokens(),
            })
            .sum();
        self.feed_parts(parts, Some(total.saturating_sub(n)))
    }

    /// Feeds a prompt whose images may still be encoding: waits for each (only for
    /// what is left of its encode) and feeds the whole prompt. Returns how many
    /// positions were fed.
    pub fn feed_pending(&mut self, parts: &[PromptPart<&PendingImage>]) -> Result<usize> {
        let needed = parts.iter().map(PromptPart::positions).sum();
        self.check_room(needed)?;
        let ready = crate::multimodal::wait_parts(parts)?;
        self.feed_prompt(&ready)?;
        Ok(needed)
    }

    /// Feeds a whole prompt into a session that may already hold its start, as when a
    /// frontend prefilled the conversation and an image while the user was still
    /// typing ([`crate::Model::render_multimodal_chat_ahead`]). The positions the
    /// session holds that equal the prompt's first positions (the same tokens; the same
    /// rows of the same encode, by [`PendingImage::id`]) are kept, everything after
    /// them is truncated, and only the rest of the prompt is fed (waiting for its
    /// images). An image is kept or fed whole. When the session already holds the
    /// whole prompt, its logits are those of the prompt's end if nothing follows it;
    /// otherwise the last token (or image) is fed again.
    pub fn feed_pending_reusing(
        &mut self,
        parts: &[PromptPart<&PendingImage>],
    ) -> Result<PromptReuse> {
        let len = PromptPart::positions;
        let total: usize = parts.iter().map(len).sum();
        // The positions held that equal the prompt's start.
        let mut same = 0;
        'parts: for p in parts {
            match p {
                PromptPart::Text(ids) => {
                    for &t in ids {
                        if self.positions.get(same) != Some(&Position::Token(t)) {
                            break 'parts;
                        }
                        same += 1;
                    }
                }
                PromptPart::Image(img) => {
                    let n = img.plan().image_tokens;
                    let held = (0..n).all(|r| match self.positions.get(same + r) {
                        Some(&Position::Image { image, row }) => {
                            row as usize == r
                                && self.image_ids.get(image as usize) == Some(&img.id())
                        }
                        _ => false,
                    });
                    if !held {
                        break 'parts;
                    }
                    same += n;
                }
            }
        }
        if same == total && self.positions.len() == total && self.last_logits.is_some() {
            return Ok(PromptReuse {
                reused: total,
                fed: 0,
            });
        }
        if same == total {
            // The prompt's end must be fed again for its logits: its last token, or
            // its last part if that is an image.
            same -= match parts.iter().rev().find(|p| len(p) > 0) {
                Some(PromptPart::Text(_)) => 1,
                Some(image) => len(image),
                None => 0,
            };
        }
        // What follows the kept positions.
        let mut rest = Vec::new();
        let mut skip = same;
        for p in parts {
            let n = len(p);
            if skip >= n {
                skip -= n;
                continue;
            }
            rest.push(match p {
                PromptPart::Text(ids) => PromptPart::Text(ids[skip..].to_vec()),
                image => image.clone(),
            });
            skip = 0;
        }
        self.truncate(same);
        let fed = self.feed_pending(&rest)?;
        Ok(PromptReuse { reused: same, fed })
    }

    /// Feeds `parts`; returns the logits of every fed row from index `logits_from` on.
    fn feed_parts(
        &mut self,
        parts: &[PromptPart<Arc<ImageEmbeddings>>],
        logits_from: Option<usize>,
    ) -> Result<Vec<Vec<f32>>> {
        // Every row, in order: a token, or (part index, row) of an image.
        enum Row {
            Token(u32),
            Image(usize, usize),
        }
        let hidden = self.model.config.hidden_size;
        let mut rows = Vec::new();
        let mut ids = Vec::new();
        for (k, p) in parts.iter().enumerate() {
            match p {
                PromptPart::Text(t) => {
                    ids.extend_from_slice(t);
                    rows.extend(t.iter().map(|&i| Row::Token(i)));
                }
                PromptPart::Image(img) => {
                    if img.hidden != hidden || img.data.len() != img.tokens() * hidden {
                        return Err(invalid(
                            "image",
                            format!(
                                "embeddings of width {} ({} values for {} rows) do not fit an LLM of width {hidden}",
                                img.hidden,
                                img.data.len(),
                                img.tokens()
                            ),
                        ));
                    }
                    rows.extend((0..img.tokens()).map(|r| Row::Image(k, r)));
                }
            }
        }
        self.check_ids(&ids)?;
        self.check_room(rows.len())?;
        // Image numbers: the session's count plus the index among this prompt's images
        // (taken before any chunk runs, so rows fed before an error keep theirs).
        let mut image_no = HashMap::new();
        for (k, p) in parts.iter().enumerate() {
            if let PromptPart::Image(img) = p {
                image_no.insert(k, self.image_ids.len() as u32);
                self.image_ids.push(img.id);
            }
        }
        let vocab = self.model.config.vocab_size;
        let mut logits = Vec::new();
        let c = self.chunk_rows();
        for (k, chunk) in rows.chunks(c).enumerate() {
            let n = chunk.len();
            // Rows of this chunk whose logits are wanted start here (None: none are).
            let want = logits_from
                .filter(|&f| f < k * c + n)
                .map(|f| f.saturating_sub(k * c));
            let all_logits = want.is_some();
            let text: Vec<u32> = chunk
                .iter()
                .map(|r| match r {
                    Row::Token(i) => *i,
                    Row::Image(..) => 0,
                })
                .collect();
            let has_image = chunk.iter().any(|r| matches!(r, Row::Image(..)));
            let out = if !has_image {
                let kind = match (all_logits, n) {
                    (true, _) => GraphKind::PrefillAllLogits,
                    (false, 1) => GraphKind::Decode,
                    _ => GraphKind::Prefill,
                };
                self.run_chunk(kind, ChunkRows::Ids(&text))?
            } else {
                let mut data = if chunk.iter().any(|r| matches!(r, Row::Token(_))) {
                    let mut e = self
                        .run_chunk(GraphKind::EmbedTokens, ChunkRows::Ids(&text))?
                        .into_f32()
                        .ok_or_else(|| invalid("graph", "token embeddings are not f32"))?;
                    e.truncate(n * hidden);
                    e
                } else {
                    vec![0.0; n * hidden]
                };
                for (i, r) in chunk.iter().enumerate() {
                    if let Row::Image(k, row) = r {
                        let PromptPart::Image(img) = &parts[*k] else {
                            unreachable!("image rows come from image parts")
                        };
                        data[i * hidden..(i + 1) * hidden].copy_from_slice(img.row(*row));
                    }
                }
                let kind = if all_logits {
                    GraphKind::PrefillEmbedsAllLogits
                } else {
                    GraphKind::PrefillEmbeds
                };
                self.run_chunk(kind, ChunkRows::Embeds { data, n })?
            };
            for r in chunk {
                match r {
                    Row::Token(i) => {
                        self.positions.push(Position::Token(*i));
                        self.tokens.push(*i);
                    }
                    Row::Image(k, row) => self.positions.push(Position::Image {
                        image: image_no[k],
                        row: *row as u32,
                    }),
                }
            }
            let v = out.into_f32().unwrap_or_default();
            if let Some(first) = want {
                let rows = v.chunks_exact(vocab).take(n);
                self.last_logits = rows.clone().next_back().map(<[f32]>::to_vec);
                logits.extend(rows.skip(first).map(<[f32]>::to_vec));
            } else {
                self.last_logits = Some(v);
            }
        }
        Ok(logits)
    }

    /// Feeds ids and returns the logits at every fed position, `[ids.len()][vocab]`.
    pub fn feed_all_logits(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.feed_parts(&[PromptPart::Text(ids.to_vec())], Some(0))
    }

    /// `ids` as they fit the room left in the context under `overflow` (leaving room for
    /// up to `max_tokens` new tokens when windowing).
    pub fn fit_prompt(
        &self,
        ids: &[u32],
        overflow: PromptOverflow,
        max_tokens: usize,
    ) -> Result<FittedPrompt> {
        let free = self.model.ctx.saturating_sub(self.positions.len());
        match overflow {
            _ if ids.len() <= free => Ok(FittedPrompt {
                ids: ids.to_vec(),
                dropped: 0,
            }),
            PromptOverflow::Error => Err(RuntimeError::ContextOverflow {
                needed: ids.len(),
                used: self.positions.len(),
                ctx: self.model.ctx,
            }),
            PromptOverflow::SlidingWindow { keep_first } => {
                let room = free - max_tokens.min(free / 2);
                if keep_first >= room {
                    return Err(RuntimeError::InvalidOption {
                        option: "sliding window",
                        reason: format!(
                            "keeping the first {keep_first} tokens leaves no room for the rest: {room} positions are free for the prompt"
                        ),
                    });
                }
                let tail = room - keep_first;
                let mut kept = ids[..keep_first].to_vec();
                kept.extend_from_slice(&ids[ids.len() - tail..]);
                Ok(FittedPrompt {
                    dropped: ids.len() - kept.len(),
                    ids: kept,
                })
            }
        }
    }

    /// Feeds the prompt (if any), then generates, calling `on_text(piece, token)` as
    /// text becomes final; returning `false` from it stops generation. The last
    /// sampled token is not fed back (feed it, e.g. the EOS, to continue the chat).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str, u32) -> bool,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(opts.sampling.clone())?;
        if let Some(l) = &opts.speculation {
            l.validate()?;
        }
        let t0 = Instant::now();
        let prompt = self.fit_prompt(prompt, opts.prompt_overflow, opts.max_tokens)?;
        let prompt_dropped = prompt.dropped;
        let prompt = prompt.ids;
        if !prompt.is_empty() {
            self.feed(&prompt)?;
        }
        let prefill_time = t0.elapsed();
        // The logits the next token is drawn from.
        let mut logits = self.last_logits.take().ok_or(RuntimeError::EmptySession)?;
        let eos = if opts.stop_at_eos {
            self.model.eos_ids()
        } else {
            Vec::new()
        };
        let model = self.model.clone();
        let tok = &model.tokenizer;
        let mut decoder = StreamDecoder::new();
        let hold = opts
            .stop_strings
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let (mut text, mut emitted) = (String::new(), 0usize);
        let mut new_tokens = Vec::new();
        // Drafted tokens already in the cache but not yet drawn, each with the logits
        // after it, and what makes the drafts.
        let mut pending: VecDeque<(u32, Vec<f32>)> = VecDeque::new();
        let mut stats = SpeculationStats::default();
        let mut drafter = opts.speculation.as_ref().map(Drafter::new);
        let t1 = Instant::now();
        let mut stop = StopReason::MaxTokens;
        while new_tokens.len() < opts.max_tokens {
            // The sampler's history is what has been drawn, not the pending draft.
            let drawn = self.tokens.len() - pending.len();
            let id = sampler.sample(&logits, &self.tokens[..drawn]);
            new_tokens.push(id);
            if eos.contains(&id) {
                stop = StopReason::Eos;
                break;
            }
            text.push_str(&decoder.push(tok, id)?);
            if let Some(cut) = opts
                .stop_strings
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(cut);
                stop = StopReason::StopString;
                break;
            }
            // Emit all but a tail that could still start a stop string.
            let mut safe = text.len().saturating_sub(hold).max(emitted);
            while !text.is_char_boundary(safe) {
                safe -= 1;
            }
            if safe > emitted {
                let keep_going = on_text(&text[emitted..safe], id);
                emitted = safe;
                if !keep_going {
                    stop = StopReason::Cancelled;
                    break;
                }
            }
            let held = self.positions.len() - pending.len();
            if held >= self.model.ctx {
                stop = StopReason::ContextFull;
                break;
            }
            if new_tokens.len() == opts.max_tokens {
                break;
            }
            // A drafted token equal to the one drawn is already in the cache.
            match pending.pop_front() {
                Some((d, next)) if d == id => {
                    stats.accepted += 1;
                    logits = next;
                    if let Some(d) = &mut drafter {
                        d.kept(pending.is_empty());
                    }
                    continue;
                }
                Some(_) => {
                    self.truncate(held);
                    pending.clear();
                    if let Some(d) = &mut drafter {
                        d.rejected();
                    }
                }
                None => {}
            }
            // Feed the token drawn, and a draft after it if the history has one (no
            // longer than the tokens still to draw and the room left need).
            let most = (self.model.ctx - held - 1).min(opts.max_tokens - new_tokens.len() - 1);
            let draft = match &mut drafter {
                Some(d) => d.draft(&self.tokens, id, most),
                None => Vec::new(),
            };
            if draft.is_empty() {
                self.feed(&[id])?;
                logits = self.last_logits.take().ok_or(RuntimeError::EmptySession)?;
            } else {
                let mut ids = vec![id];
                ids.extend_from_slice(&draft);
                let mut rows = self.feed_verify(&ids)?.into_iter();
                logits = rows.next().ok_or(RuntimeError::EmptySession)?;
                pending.extend(draft.iter().copied().zip(rows));
                stats.verify_calls += 1;
                stats.drafted += draft.len();
            }
        }
        // The session keeps what was drawn, except the last token (not fed, as without
        // a draft), and the logits after it.
        if !pending.is_empty() {
            let held = self.positions.len() - pending.len();
            self.truncate(held);
        }
        self.last_logits = Some(logits);
        if stop != StopReason::Cancelled {
            text.push_str(&decoder.finish(tok)?);
            if emitted < text.len() {
                on_text(&text[emitted..], *new_tokens.last().unwrap_or(&0));
            }
        }
        Ok(Generation {
            tokens: new_tokens,
            text,
            stop,
            prompt_tokens: prompt.len(),
            prompt_dropped,
            prefill_time,
            decode_time: t1.elapsed(),
            speculation: stats,
        })
    }
}
