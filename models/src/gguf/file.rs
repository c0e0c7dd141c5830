//! A parsed GGUF file: its metadata and validated tensor infos, typed metadata lookups,
//! and the `tokenizer.ggml.*` parts a tokenizer is built from.

use super::{GgmlType, GgufArray, GgufValue};
use crate::source::map_file;
use crate::tokenizer::BpeParts;
use crate::{ModelError, Result};
use npurt_graph::DType;
use std::collections::BTreeMap;
use std::path::Path;

/// One tensor info, validated: its data lies inside the file and does not overlap
/// another tensor's.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml dimensions, innermost first: `ne[0]` is the row length.
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section, as stored.
    pub offset: u64,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl GgufTensorInfo {
    pub fn n_dims(&self) -> usize {
        self.ne.len()
    }

    /// Row-major shape: `ne` reversed, so a matrix is `[rows = ne[1], cols = ne[0]]`.
    pub fn shape(&self) -> Vec<usize> {
        // Every dim is at most the element count, which the size check bounded by the
        // file length, so the conversion only saturates on a 32-bit host with a
        // >4 GiB tensor (and then the WeightStore's size check refuses it).
        self.ne
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    /// The runtime dtype, or `UnsupportedDType` naming this tensor.
    pub fn dtype(&self) -> Result<DType> {
        self.ggml_type
            .dtype()
            .ok_or_else(|| ModelError::UnsupportedDType {
                tensor: self.name.clone(),
                dtype: self.ggml_type.to_string(),
            })
    }
}

/// A parsed GGUF file: metadata and tensor infos (owned; the data stays in the file).
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// The path (or name) errors refer to.
    pub file_name: String,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    pub file_len: u64,
}

impl GgufFile {
    /// Parses and validates a whole GGUF file held in memory (typically a mapping).
    pub fn parse(bytes: &[u8], file_name: &str) -> Result<GgufFile> {
        super::parse::parse(bytes, file_name)
    }

    /// Maps and parses a file; the mapping is dropped (use [`load`](super::load) to keep tensors).
    pub fn open(path: &Path) -> Result<GgufFile> {
        let map = map_file(path)?;
        GgufFile::parse(&map, &path.display().to_string())
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get_u64(key).and_then(|x| u32::try_from(x).ok())
    }
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
    pub fn get_array(&self, key: &str) -> Option<&GgufArray> {
        self.get(key)?.as_array()
    }
    pub fn get_str_array(&self, key: &str) -> Option<&[String]> {
        match self.get_array(key)? {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }
    pub fn get_i32_array(&self, key: &str) -> Option<&[i32]> {
        match self.get_array(key)? {
            GgufArray::I32(v) => Some(v),
            _ => None,
        }
    }
    pub fn get_f32_array(&self, key: &str) -> Option<&[f32]> {
        match self.get_array(key)? {
            GgufArray::F32(v) => Some(v),
            _ => None,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Tensor counts per ggml type, most common first.
    pub fn type_counts(&self) -> Vec<(GgmlType, usize)> {
        let mut m: BTreeMap<GgmlType, usize> = BTreeMap::new();
        for t in &self.tensors {
            *m.entry(t.ggml_type).or_insert(0) += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// E.g. "GGUF v3, 272 tensors: q4_1 x210, f32 x61, q8_0 x1".
    pub fn summary(&self) -> String {
        let types: Vec<String> = self
            .type_counts()
            .iter()
            .map(|(t, n)| format!("{t} x{n}"))
            .collect();
        format!(
            "GGUF v{}, {} tensors: {}",
            self.version,
            self.tensors.len(),
            types.join(", ")
        )
    }

    /// A required integer key as usize, or `BadConfig` naming the key.
    pub(super) fn require_usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key).ok_or_else(|| bad_config(key, "missing"))?;
        let x = v.as_u64().ok_or_else(|| {
            bad_config(
                key,
                format!("expected a non-negative integer, found {}", v.type_name()),
            )
        })?;
        // Saturate: `LlamaConfig::validate` refuses anything this large by field name.
        Ok(usize::try_from(x).unwrap_or(usize::MAX))
    }

    pub(super) fn optional_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.require_usize(key).map(Some),
        }
    }

    pub(super) fn optional_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f32().map(Some).ok_or_else(|| {
                bad_config(key, format!("expected a float, found {}", v.type_name()))
            }),
        }
    }

    pub(super) fn optional_token_id(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| bad_config(key, "not a valid token id")),
        }
    }

    /// The `tokenizer.ggml.*` metadata, for [`crate::tokenizer::from_bpe_parts`].
    pub fn tokenizer_parts(&self) -> Result<BpeParts> {
        let tok_err = |msg: String| ModelError::Tokenizer(format!("{}: {msg}", self.file_name));
        let model = self
            .get_str("tokenizer.ggml.model")
            .ok_or_else(|| tok_err("tokenizer.ggml.model is missing or not a string".into()))?;
        let tokens = self.get_str_array("tokenizer.ggml.tokens").ok_or_else(|| {
            tok_err("tokenizer.ggml.tokens is missing or not a string array".into())
        })?;
        let merges = match self.get("tokenizer.ggml.merges") {
            None => Vec::new(),
            Some(_) => self
                .get_str_array("tokenizer.ggml.merges")
                .ok_or_else(|| tok_err("tokenizer.ggml.merges is not a string array".into()))?
                .to_vec(),
        };
        let token_types = match self.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(_) => self
                .get_i32_array("tokenizer.ggml.token_type")
                .ok_or_else(|| tok_err("tokenizer.ggml.token_type is not an i32 array".into()))?
                .to_vec(),
        };
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(tok_err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        }
        // llama.cpp's defaults when the flags are absent: SentencePiece ("llama") vocabs
        // add BOS, byte-level BPE ("gpt2") vocabs do not.
        let default_add_bos = model == "llama";
        Ok(BpeParts {
            model: model.to_string(),
            pre: self.get_str("tokenizer.ggml.pre").map(str::to_string),
            tokens: tokens.to_vec(),
            merges,
            token_types,
            bos_token_id: self.optional_token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: self.optional_token_id("tokenizer.ggml.eos_token_id")?,
            unknown_token_id: self.optional_token_id("tokenizer.ggml.unknown_token_id")?,
            padding_token_id: self.optional_token_id("tokenizer.ggml.padding_token_id")?,
            add_bos_token: self
                .get_bool("tokenizer.ggml.add_bos_token")
                .unwrap_or(default_add_bos),
            add_eos_token: self
                .get_bool("tokenizer.ggml.add_eos_token")
                .unwrap_or(false),
        })
    }

    /// The token string with id `id` (for chat templates' `bos_token`/`eos_token`).
    pub fn token_string(&self, id: Option<u32>) -> Option<&str> {
        let tokens = self.get_str_array("tokenizer.ggml.tokens")?;
        tokens.get(usize::try_from(id?).ok()?).map(String::as_str)
    }
}

pub(super) fn bad_config(field: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadConfig {
        field: field.into(),
        reason: reason.into(),
    }
}
