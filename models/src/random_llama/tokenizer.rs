//! The tokenizer of a random-weight model, as the `tokenizer.*` GGUF metadata: copied
//! from a real GGUF (llama.cpp then tokenizes as for that model), or a byte-level
//! vocabulary made up here (every text encodes, one token per byte). The HF form
//! (`tokenizer.json`, `tokenizer_config.json`) is built from the same metadata.

use crate::config::bad;
use crate::gguf::{GgufArray, GgufFile, GgufValue};
use crate::tokenizer::{from_bpe_parts, BpeParts};
use crate::{ModelError, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The smallest vocabulary the made-up byte-level one fits in: 256 bytes and 3 specials.
pub const BYTE_LEVEL_MIN_VOCAB: usize = 259;

/// The `tokenizer.*` metadata of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerKvs {
    kvs: Vec<(String, GgufValue)>,
    /// Where it came from, for messages.
    pub source: String,
}

impl TokenizerKvs {
    /// Every `tokenizer.*` key of a GGUF file (vocabulary, merges, token types, special
    /// ids, chat template). The file must describe a tokenizer npurt can build.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let kvs = file
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let t = TokenizerKvs {
            kvs,
            source: path.display().to_string(),
        };
        t.parts()?;
        Ok(t)
    }

    /// A byte-level BPE vocabulary of `vocab` tokens without merges: the 256 bytes (in
    /// GPT-2's byte-to-character form), `<|endoftext|>`, `<|im_start|>` (BOS),
    /// `<|im_end|>` (EOS), then `<|extra_N|>` fillers.
    pub fn byte_level(vocab: usize) -> Result<Self> {
        if vocab < BYTE_LEVEL_MIN_VOCAB {
            return Err(bad(
                "vocab_size",
                format!(
                    "{vocab} is too small for a made-up byte-level vocabulary (at least \
                     {BYTE_LEVEL_MIN_VOCAB}); give a tokenizer"
                ),
            ));
        }
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        tokens.extend(["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from));
        tokens.extend((tokens.len()..vocab).map(|i| format!("<|extra_{i}|>")));
        // llama.cpp token types: 1 normal, 3 control.
        let types = (0..vocab as i32)
            .map(|i| if (256..259).contains(&i) { 3 } else { 1 })
            .collect();
        let s = |x: &str| GgufValue::String(x.into());
        let kvs = vec![
            ("tokenizer.ggml.model".to_string(), s("gpt2")),
            // "default": the GPT-2 regex, in llama.cpp as in npurt.
            ("tokenizer.ggml.pre".to_string(), s("default")),
            (
                "tokenizer.ggml.tokens".to_string(),
                GgufValue::Array(GgufArray::String(tokens)),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                GgufValue::Array(GgufArray::I32(types)),
            ),
            // llama.cpp requires the key of a BPE vocabulary, even empty.
            (
                "tokenizer.ggml.merges".to_string(),
                GgufValue::Array(GgufArray::String(vec![])),
            ),
            (
                "tokenizer.ggml.bos_token_id".to_string(),
                GgufValue::U32(257),
            ),
            (
                "tokenizer.ggml.eos_token_id".to_string(),
                GgufValue::U32(258),
            ),
            (
                "tokenizer.ggml.unknown_token_id".to_string(),
                GgufValue::U32(256),
            ),
            (
                "tokenizer.ggml.padding_token_id".to_string(),
                GgufValue::U32(256),
            ),
            (
                "tokenizer.ggml.add_bos_token".to_string(),
                GgufValue::Bool(false),
            ),
        ];
        Ok(TokenizerKvs {
            kvs,
            source: format!("a byte-level vocabulary of {vocab} tokens"),
        })
    }

    pub fn kvs(&self) -> &[(String, GgufValue)] {
        &self.kvs
    }

    /// The metadata as a (tensorless) GGUF file, for its typed lookups.
    fn as_file(&self) -> GgufFile {
        GgufFile {
            file_name: self.source.clone(),
            version: 3,
            metadata: self.kvs.iter().cloned().collect(),
            tensors: vec![],
            alignment: crate::gguf::DEFAULT_ALIGNMENT,
            data_offset: 0,
            file_len: 0,
        }
    }

    fn parts(&self) -> Result<BpeParts> {
        self.as_file().tokenizer_parts()
    }

    /// Tokens in the vocabulary (the model's vocab size must equal it: llama.cpp sizes
    /// the embedding by it).
    pub fn token_count(&self) -> Result<usize> {
        Ok(self.parts()?.tokens.len())
    }

    /// (BOS id, EOS ids) for `config.json`.
    pub fn special_ids(&self) -> Result<(Option<u32>, Vec<u32>)> {
        let p = self.parts()?;
        Ok((p.bos_token_id, p.eos_token_id.into_iter().collect()))
    }

    /// `tokenizer.json` and `tokenizer_config.json` of the HF form: the tokenizer npurt
    /// builds from the metadata, serialized; BOS/EOS strings and the chat template.
    pub fn hf_files(&self) -> Result<(String, Value)> {
        let parts = self.parts()?;
        let json = from_bpe_parts(&parts)?
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer(format!("serializing {}: {e}", self.source)))?;
        let file = self.as_file();
        let mut cfg = json!({
            "bos_token": file.token_string(parts.bos_token_id),
            "eos_token": file.token_string(parts.eos_token_id),
            "add_bos_token": parts.add_bos_token,
        });
        if let Some(t) = file.get_str("tokenizer.chat_template") {
            cfg["chat_template"] = json!(t);
        }
        Ok((json, cfg))
    }
}

/// GPT-2's byte-to-character map: printable Latin-1 bytes stand for themselves, the
/// others for U+0100 onwards in byte order (so every byte is a visible character).
fn byte_char(b: u8) -> char {
    let printable = |x: u8| (b'!'..=b'~').contains(&x) || (0xa1..=0xac).contains(&x) || x >= 0xae;
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).unwrap_or('?')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_vocabulary_encodes_any_text() {
        assert_eq!(
            (byte_char(b'A'), byte_char(b' '), byte_char(b'\n')),
            ('A', 'Ġ', 'Ċ')
        );
        let t = TokenizerKvs::byte_level(300).unwrap();
        assert_eq!(t.token_count().unwrap(), 300);
        let tok = from_bpe_parts(&t.parts().unwrap()).unwrap();
        let ids = crate::tokenizer::encode(&tok, "hé\n<|im_end|>").unwrap();
        assert_eq!(ids, [b'h' as u32, 0xc3, 0xa9, 10, 258]);
        assert!(TokenizerKvs::byte_level(100).is_err());
    }
}
