//! A `Session` is one conversation over a shared `Model`: its own KV cache (persistent
//! buffers sized for the context), its own scratch per compiled graph, and the tokens
//! seen so far. Sessions are independent: many run at once on one model, on any threads.

use crate::model::{CompiledGraph, GraphKind, Model};
use crate::sampling::{Sampler, SamplingOptions};
use crate::{Result, RuntimeError};
use npurt_backends::{Bindings, BufferUsage, DeviceBuffer, Executable, Scratch};
use npurt_graph::TensorFact;
use npurt_kernels::HostTensor;
use npurt_models::tokenizer::StreamDecoder;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-graph-kind buffers of one session (created on first use).
struct Runner {
    scratch: Box<dyn Scratch>,
    ids: Arc<dyn DeviceBuffer>,
    pos: Arc<dyn DeviceBuffer>,
    n_valid: Arc<dyn DeviceBuffer>,
    last_row: Option<Arc<dyn DeviceBuffer>>,
    logits: Arc<dyn DeviceBuffer>,
}

pub struct Session {
    model: Arc<Model>,
    kv: HashMap<String, Arc<dyn DeviceBuffer>>,
    runners: HashMap<GraphKind, Runner>,
    tokens: Vec<u32>,
    last_logits: Option<Vec<f32>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingOptions,
    pub stop_at_eos: bool,
    /// Generation ends when the text contains one of these (it is cut before it).
    pub stop_strings: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampling: SamplingOptions::default(),
            stop_at_eos: true,
            stop_strings: Vec::new(),
        }
    }
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
    pub prefill_time: Duration,
    pub decode_time: Duration,
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
        // Each KV cache lives on the backend that runs its attention; every graph kind
        // must agree on that, since they share the cache.
        let mut kv: HashMap<String, Arc<dyn DeviceBuffer>> = HashMap::new();
        let mut home: HashMap<&str, &str> = HashMap::new();
        let fact = TensorFact::new(
            model.options.precision.kv_cache,
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
            tokens: Vec::new(),
            last_logits: None,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Tokens in the KV cache, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Forgets everything (the KV cache is logically empty; nothing is reallocated).
    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Keeps the first `n` tokens. Cache rows past `n` are stale but unreachable: a
    /// query only sees positions below its own, and they are rewritten first.
    pub fn truncate(&mut self, n: usize) {
        if n < self.tokens.len() {
            self.tokens.truncate(n);
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
        let used = self.tokens.len();
        if used + ids.len() > self.model.ctx {
            return Err(RuntimeError::ContextOverflow {
                needed: ids.len(),
                used,
                ctx: self.model.ctx,
            });
        }
        Ok(())
    }

    fn runner(&mut self, kind: GraphKind) -> Result<&mut Runner> {
        if !self.runners.contains_key(&kind) {
            let cg = self.model.graph(kind);
            let x = &cg.exec;
            let act = BufferUsage::Activations;
            let logits_fact = cg
                .graph
                .fact(
                    cg.graph
                        .output("logits")
                        .expect("llama graphs output logits"),
                )
                .clone();
            let scalar = TensorFact::i32([1]);
            let r = Runner {
                scratch: x.new_scratch()?,
                ids: x.alloc_source(cg.ids, &TensorFact::i32([cg.rows]), act)?,
                pos: x.alloc_source(cg.pos, &scalar, act)?,
                n_valid: x.alloc_source(cg.n_valid, &scalar, act)?,
                last_row: cg
                    .last_row
                    .map(|id| x.alloc_source(id, &scalar, act))
                    .transpose()?,
                logits: x.alloc_output("logits", &logits_fact)?,
            };
            self.runners.insert(kind, r);
        }
        Ok(self.runners.get_mut(&kind).expect("inserted above"))
    }

    /// Runs one graph execution over `ids` (at most `rows` of them) at the current
    /// position; returns the logits output ([1, V] or [rows, V]).
    fn run_chunk(&mut self, kind: GraphKind, ids: &[u32]) -> Result<HostTensor> {
        let model = self.model.clone();
        let cg: &CompiledGraph = model.graph(kind);
        let pos = self.tokens.len();
        let mut padded: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
        padded.resize(cg.rows, 0);
        let kv: Vec<_> = cg
            .states
            .iter()
            .map(|(id, name)| (*id, self.kv[name].clone()))
            .collect();
        let x = cg.exec.clone();
        let write = |id, buf: &Arc<dyn DeviceBuffer>, t: HostTensor| -> Result<()> {
            let be = x
                .source_backend(id)
                .ok_or_else(|| RuntimeError::InvalidOption {
                    option: "graph",
                    reason: "input without a backend".into(),
                })?;
            Ok(be.write(buf.as_ref(), &t)?)
        };
        let r = self.runner(kind)?;
        write(cg.ids, &r.ids, HostTensor::i32([cg.rows], padded))?;
        write(cg.pos, &r.pos, scalar(pos))?;
        write(cg.n_valid, &r.n_valid, scalar(ids.len()))?;
        let mut sources = kv;
        sources.extend([
            (cg.ids, r.ids.clone()),
            (cg.pos, r.pos.clone()),
            (cg.n_valid, r.n_valid.clone()),
        ]);
        if let (Some(id), Some(buf)) = (cg.last_row, &r.last_row) {
            write(id, buf, scalar(ids.len() - 1))?;
            sources.push((id, buf.clone()));
        }
        let bindings = Bindings {
            sources,
            outputs: vec![("logits".into(), r.logits.clone())],
        };
        x.run(&bindings, r.scratch.as_mut())?;
        let out_be = x
            .output_backend("logits")
            .ok_or_else(|| RuntimeError::InvalidOption {
                option: "graph",
                reason: "logits without a backend".into(),
            })?;
        for be in &model.backends {
            be.synchronize()?;
        }
        let out = out_be.read(r.logits.as_ref())?;
        self.tokens.extend_from_slice(ids);
        Ok(out)
    }

    fn chunk_rows(&self) -> usize {
        self.model.graph(GraphKind::Prefill).rows
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
            let out = self.run_chunk(kind, chunk)?;
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

    /// Feeds ids and returns the logits at every fed position, `[ids.len()][vocab]`.
    pub fn feed_all_logits(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_ids(ids)?;
        let vocab = self.model.config.vocab_size;
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.chunk_rows()) {
            let out = self.run_chunk(GraphKind::PrefillAllLogits, chunk)?;
            let v = out.into_f32().unwrap_or_default();
            rows.extend(v.chunks_exact(vocab).take(chunk.len()).map(<[f32]>::to_vec));
        }
        self.last_logits = rows.last().cloned();
        Ok(rows)
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
        let t0 = Instant::now();
        if !prompt.is_empty() {
            self.feed(prompt)?;
        }
        let prefill_time = t0.elapsed();
        if self.last_logits.is_none() {
            return Err(RuntimeError::EmptySession);
        }
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
        let t1 = Instant::now();
        let mut stop = StopReason::MaxTokens;
        while new_tokens.len() < opts.max_tokens {
            let logits = self
                .last_logits
                .as_deref()
                .ok_or(RuntimeError::EmptySession)?;
            let id = sampler.sample(logits, &self.tokens);
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
            if self.tokens.len() >= self.model.ctx {
                stop = StopReason::ContextFull;
                break;
            }
            if new_tokens.len() < opts.max_tokens {
                self.feed(&[id])?;
            }
        }
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
            prefill_time,
            decode_time: t1.elapsed(),
        })
    }
}
