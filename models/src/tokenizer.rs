//! Tokenizers: the HF `tokenizers` crate, built either from a `tokenizer.json` or from
//! the `tokenizer.ggml.*` metadata of a GGUF file (byte-level BPE).

use crate::{ModelError, Result};
pub use tokenizers::Tokenizer;

/// What a GGUF file says about its BPE tokenizer (`tokenizer.ggml.*`), already
/// extracted from the metadata by the GGUF loader.
#[derive(Clone, Debug, Default)]
pub struct BpeParts {
    /// `tokenizer.ggml.model` (only "gpt2" = byte-level BPE is supported).
    pub model: String,
    /// `tokenizer.ggml.pre` (e.g. "smollm", "llama-bpe"): picks the pre-tokenizer regex.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// "left right" pairs, highest priority first.
    pub merges: Vec<String>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
}

/// Builds the tokenizer a GGUF file describes.
pub fn from_bpe_parts(parts: &BpeParts) -> Result<Tokenizer> {
    let _ = parts;
    Err(ModelError::Tokenizer("from_bpe_parts: not implemented yet".into()))
}

/// Loads a `tokenizer.json`.
pub fn from_file(path: &std::path::Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
}
