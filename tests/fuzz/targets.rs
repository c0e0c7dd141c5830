//! The loaders under test, each behind [`Loader`]: its seed files, how its inputs are
//! mutated, and one run of the real loader on an input (through a file where the
//! loader reads files, so the path-based code is what runs). A run returns whether the
//! input was accepted; a typed error is a rejection; a panic propagates to the driver.
//! Accepted inputs are used a little further (a template rendered, weights dequantized,
//! an image tiled), since a loader that accepts something must hand back usable data.

use super::mutate;
use super::rng::{Draws, Rng};
use super::seeds;
use super::Loader;
use npurt_models::source::llama_tensor_shapes;
use npurt_models::{hf_dir, siglip, tokenizer, vlm, ChatMessage, LlamaConfig, ModelSource};
use npurt_runtime::image as img;
use std::path::{Path, PathBuf};

/// A scratch directory for one loader on one thread, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(target: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("npurt-fuzz-{}-{target}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write a fuzz input");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Largest input a mutation may grow to: twice the largest seed, plus room.
fn max_len(seeds: &[Vec<u8>]) -> usize {
    2 * seeds.iter().map(Vec::len).max().unwrap_or(0) + 4096
}

/// The conversation accepted templates are rendered with (roles a template may
/// special-case, non-ASCII content, an empty message).
fn messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Wie spät ist es? 東京"),
        ChatMessage::new("assistant", ""),
        ChatMessage::new("user", "t3 w6 w7"),
    ]
}

/// Uses a loaded model source: renders its template, encodes text, dequantizes each
/// tensor of up to 1 Mi elements.
fn exercise_source(src: &ModelSource) {
    if let Some(t) = &src.chat_template {
        let _ = t.render(&messages(), true);
    }
    let _ = tokenizer::encode(&src.tokenizer, "t3 w6 hello <|im_start|>");
    let names: Vec<String> = src.weights.names().map(str::to_string).collect();
    for name in names {
        let small = src
            .weights
            .fact(&name)
            .ok()
            .and_then(|f| f.elems())
            .is_some_and(|n| n <= 1 << 20);
        if small {
            let _ = src.weights.to_f32(&name);
        }
    }
}

/// A typed error is a rejection; formatting it must not panic either.
fn rejected(e: impl std::fmt::Display) -> bool {
    let _ = e.to_string();
    false
}

// ---------------------------------------------------------------------------------------

/// GGUF: the whole `ModelSource::open` path (parse, llama config, weights, tokenizer,
/// chat template) on a `.gguf` file.
pub struct Gguf {
    seeds: Vec<Vec<u8>>,
    /// Per seed: offsets of its counts, lengths, type ids and tensor offsets.
    fields: Vec<Vec<usize>>,
    scratch: Scratch,
}

impl Gguf {
    pub(super) fn new() -> Self {
        let (seeds, fields) = seeds::gguf();
        Gguf {
            seeds,
            fields,
            scratch: Scratch::new("gguf"),
        }
    }
}

impl Loader for Gguf {
    fn name(&self) -> &'static str {
        "gguf"
    }
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }
    fn mutate(&self, rng: &mut Rng, seed: usize) -> Vec<u8> {
        let mut out = self.seeds[seed].clone();
        let fields = &self.fields[seed];
        // Half the inputs hit a known field: byte flips alone rarely land on the one
        // length that matters among kilobytes of tensor data.
        if !fields.is_empty() && rng.one_in(2) {
            for _ in 0..1 + rng.below(2) {
                let at = *rng.pick(fields);
                mutate::field(rng, &mut out, at);
            }
        }
        if rng.one_in(2) || out == self.seeds[seed] {
            mutate::bytes(rng, &mut out, &self.seeds, max_len(&self.seeds));
        }
        out
    }
    fn run(&mut self, input: &[u8]) -> bool {
        let path = self.scratch.write("model.gguf", input);
        match ModelSource::open(&path) {
            Ok(src) => {
                exercise_source(&src);
                true
            }
            Err(e) => rejected(e),
        }
    }
}

// ---------------------------------------------------------------------------------------

/// safetensors: `parse_safetensors` on the bytes, its ranges checked against the
/// input; accepted files are then registered and dequantized through a file.
pub struct Safetensors {
    seeds: Vec<Vec<u8>>,
    scratch: Scratch,
}

impl Safetensors {
    pub(super) fn new() -> Self {
        Safetensors {
            seeds: seeds::safetensors(),
            scratch: Scratch::new("safetensors"),
        }
    }
}

/// A safetensors file's (header JSON, data) split, if the length prefix is sane.
fn split_safetensors(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    Some((b.get(8..8usize.checked_add(n)?)?, &b[8 + n..]))
}

impl Loader for Safetensors {
    fn name(&self) -> &'static str {
        "safetensors"
    }
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }
    fn mutate(&self, rng: &mut Rng, seed: usize) -> Vec<u8> {
        let seed_bytes = &self.seeds[seed];
        let max = max_len(&self.seeds);
        match split_safetensors(seed_bytes) {
            // Half the time the header is mutated as JSON (shapes, offsets, dtypes set
            // to edge values) and the length prefix rewritten to match.
            Some((header, data)) if rng.one_in(2) => {
                let mut h = mutate::json_text(rng, header, &[], max);
                if rng.one_in(8) {
                    h.extend(std::iter::repeat_n(b' ', rng.below(64)));
                }
                let mut out = (h.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(&h);
                let keep = if rng.one_in(4) {
                    rng.below(data.len() + 1)
                } else {
                    data.len()
                };
                out.extend_from_slice(&data[..keep]);
                out
            }
            _ => {
                let mut out = seed_bytes.clone();
                mutate::bytes(rng, &mut out, &self.seeds, max);
                out
            }
        }
    }
    fn run(&mut self, input: &[u8]) -> bool {
        let tensors = match hf_dir::parse_safetensors(input, "fuzz.safetensors") {
            Ok(t) => t,
            Err(e) => return rejected(e),
        };
        for t in &tensors {
            // The parser's promise: every range lies in the file, and is the size of
            // the shape and dtype. Anything else would be read out of bounds later.
            let end = t.offset.checked_add(t.len).expect("tensor range overflows");
            assert!(end <= input.len(), "tensor {} ends past the file", t.name);
            let elems: usize = t.shape.iter().product();
            let fact = npurt_graph::TensorFact::new(t.dtype, t.shape.clone());
            assert_eq!(
                fact.bytes(),
                Some(t.len),
                "tensor {} ({elems} elements)",
                t.name
            );
        }
        let path = self.scratch.write("model.safetensors", input);
        let mut store = npurt_models::WeightStore::new();
        if let Err(e) = hf_dir::add_safetensors(&mut store, &path) {
            return rejected(e);
        }
        for t in &tensors {
            if t.shape.iter().product::<usize>() <= 1 << 20 {
                let _ = store.to_f32(&t.name);
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------------------

/// `config.json`: the LLaMA config (HF) and the SigLIP vision config parsers, and what
/// follows a valid config (the tensor shapes it implies).
pub struct ConfigJson {
    seeds: Vec<Vec<u8>>,
}

impl ConfigJson {
    pub(super) fn new() -> Self {
        ConfigJson {
            seeds: seeds::config_json(),
        }
    }
}

impl Loader for ConfigJson {
    fn name(&self) -> &'static str {
        "config_json"
    }
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }
    fn mutate(&self, rng: &mut Rng, seed: usize) -> Vec<u8> {
        mutate::json_text(rng, &self.seeds[seed], &self.seeds, max_len(&self.seeds))
    }
    fn run(&mut self, input: &[u8]) -> bool {
        let v: serde_json::Value = match serde_json::from_slice(input) {
            Ok(v) => v,
            Err(e) => return rejected(e),
        };
        let llama = match LlamaConfig::from_hf_json(&v) {
            Ok(cfg) => {
                let _ = (cfg.max_context(), cfg.q_width(), cfg.kv_width());
                let _ = llama_tensor_shapes(&cfg);
                true
            }
            Err(e) => rejected(e),
        };
        let vision = match siglip::SiglipVisionConfig::from_hf_json(&v) {
            Ok(cfg) => {
                let _ = (cfg.tokens(), cfg.head_dim(), cfg.mlp_width());
                true
            }
            Err(e) => rejected(e),
        };
        llama || vision
    }
}

// ---------------------------------------------------------------------------------------

/// `tokenizer_config.json`: an HF model directory (the tiny llama) opened with a
/// mutated `tokenizer_config.json` (its chat template, BOS/EOS strings).
pub struct TokenizerConfig {
    seeds: Vec<Vec<u8>>,
    scratch: Scratch,
}

impl TokenizerConfig {
    pub(super) fn new() -> Self {
        let scratch = Scratch::new("tokenizer_config");
        npurt_models::testfiles::TinyLlama::default()
            .write_hf_dir(&scratch.0)
            .expect("write the tiny HF directory");
        TokenizerConfig {
            seeds: seeds::tokenizer_config(),
            scratch,
        }
    }
}

impl Loader for TokenizerConfig {
    fn name(&self) -> &'static str {
        "tokenizer_config"
    }
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }
    fn mutate(&self, rng: &mut Rng, seed: usize) -> Vec<u8> {
        let max = max_len(&self.seeds);
        let seed_bytes = &self.seeds[seed];
        // A third of the time the template inside is mutated as a template.
        if rng.one_in(3) {
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(seed_bytes) {
                if let Some(t) = v.get("chat_template").and_then(|t| t.as_str()) {
                    let t = mutate::template_text(rng, t.as_bytes(), &[], max);
                    v["chat_template"] = String::from_utf8_lossy(&t).into_owned().into();
                    return serde_json::to_vec(&v).unwrap_or_default();
                }
            }
        }
        mutate::json_text(rng, seed_bytes, &self.seeds, max)
    }
    fn run(&mut self, input: &[u8]) -> bool {
        self.scratch.write("tokenizer_config.json", input);
        match ModelSource::open(&self.scratch.0) {
            Ok(src) => {
                if let Some(t) = &src.chat_template {
                    let _ = t.render(&messages(), true);
                }
                true
            }
            Err(e) => rejected(e),
        }
    }
}

// ---------------------------------------------------------------------------------------

/// Chat templates: compiled, then rendered on a small conversation.
pub struct ChatTemplate {
    seeds: Vec<Vec<u8>>,
}

impl ChatTemplate {
    pub(super) fn new() -> Self {
        ChatTemplate {
            seeds: seeds::chat_templates(),
        }
    }
}

impl Loader for ChatTemplate {
    fn name(&self) -> &'static str {
        "chat_template"
    }
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }
    fn mutate(&self, rng: &mut Rng, seed: usize) -> Vec<u8> {
        mutate::template_text(rng, &self.seeds[seed], &self.seeds, max_len(&self.seeds))
    }
    fn run(&mut self, input: &[u8]) -> bool {
        let src = String::from_utf8_lossy(input).into_owned();
        let t = match npurt_models::ChatTemplate::new(src, "<|im_start|>", "<|im_end|>") {
            Ok(t) => t,
            Err(e) => return rejected(e),
        };
        match t.render(&messages(), true) {
            Ok(_) => true,
            Err(e) => rejected(e),
        }
    }
}

// ---------------------------------------------------------------------------------------

/// Images: decoded under small limits (1 Mi pixels, 1 MiB files), then planned and
/// preprocessed into small tiles.
pub struct Image {
    seeds: Vec<Vec<u8>>,
}

impl Image {
    pub(super) fn new() -> Self {
        Image {
            seeds: seeds::images(),
        }
    }
}

impl Loader for Image {
    fn name(&self) -> &'static str {
        "image"
    }
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }
    fn mutate(&self, rng: &mut Rng, seed: usize) -> Vec<u8> {
        let mut out = self.seeds[seed].clone();
        mutate::bytes(rng, &mut out, &self.seeds, max_len(&self.seeds));
        out
    }
    fn run(&mut self, input: &[u8]) -> bool {
        let limits = img::DecodeLimits {
            max_pixels: 1 << 20,
            max_file_bytes: 1 << 20,
        };
        let image = match img::decode_bytes(input, "fuzz-image", &limits) {
            Ok(i) => i,
            Err(e) => return rejected(e),
        };
        // Tiles of 28 pixels (2x2 patches of 14), so preprocessing stays cheap.
        let opts = img::TilingOptions {
            max_tiles: 4,
            tile: 28,
            ..img::TilingOptions::default()
        };
        match img::plan(image.width(), image.height(), &opts)
            .and_then(|p| img::preprocess(&image, &p))
        {
            Ok(_) => true,
            Err(e) => rejected(e),
        }
    }
}

// ---------------------------------------------------------------------------------------

/// The BlueLM-V model directory: `config.json` mutated in a directory laid out like
/// `scripts/make-vlm-tiny.sh`'s (vision and projector from the goldens, the tiny llama
/// as the LLM), loaded with `VlmConfig::load`; then the vision config it points at.
pub struct ModelDir {
    seeds: Vec<Vec<u8>>,
    scratch: Scratch,
}

impl ModelDir {
    pub(super) fn new() -> Self {
        let scratch = Scratch::new("model_dir");
        seeds::write_vlm_dir(&scratch.0);
        ModelDir {
            seeds: seeds::vlm_configs(),
            scratch,
        }
    }
}

impl Loader for ModelDir {
    fn name(&self) -> &'static str {
        "model_dir"
    }
    fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }
    fn mutate(&self, rng: &mut Rng, seed: usize) -> Vec<u8> {
        mutate::json_text(rng, &self.seeds[seed], &self.seeds, max_len(&self.seeds))
    }
    fn run(&mut self, input: &[u8]) -> bool {
        let dir: &Path = &self.scratch.0;
        std::fs::write(dir.join("config.json"), input).expect("write config.json");
        let _ = vlm::is_vlm_dir(dir);
        match vlm::VlmConfig::load(dir) {
            Ok(cfg) => {
                // Follow what a load reads next: the vision tower's config.
                let vision = std::fs::read(cfg.vision.join("config.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                if let Some(v) = vision {
                    let _ = siglip::SiglipVisionConfig::from_hf_json(&v);
                }
                true
            }
            Err(e) => rejected(e),
        }
    }
}
