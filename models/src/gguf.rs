//! GGUF (v2/v3) reader over a memory-mapped file, and the llama loader built on it.
//!
//! Layout (all little-endian): magic "GGUF", u32 version, u64 tensor count, u64 KV count,
//! the metadata KV pairs, the tensor infos, then (after padding to `general.alignment`)
//! the data section that tensor offsets are relative to.
//!
//! Every count, length and offset in the file is untrusted. The parser never sizes an
//! allocation by a header field before checking that the remaining bytes could hold
//! that many items, uses checked arithmetic for every offset, and reports problems as
//! typed errors naming the field or tensor; it never panics on any input.

use crate::config::LlamaConfig;
use crate::source::{check_llama_shapes, map_file};
use crate::tokenizer::BpeParts;
use crate::weights::{UnpermuteRope, WeightEntry};
use crate::{ModelError, Result, WeightStore};
use memmap2::Mmap;
use npurt_graph::{DType, RopeScaling, TensorFact};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent (the GGUF spec's default).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Larger alignments are legal but no writer uses them; refusing them keeps padding
/// arithmetic far from overflow.
const MAX_ALIGNMENT: u64 = 1 << 16;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Real files nest arrays at most once or twice; the bound keeps a hostile file from
/// recursing the parser into a stack overflow.
const MAX_ARRAY_DEPTH: usize = 8;
/// Smallest possible encodings, used to bound counts by the bytes left in the file:
/// a tensor info is name length (8) + n_dims (4) + type (4) + offset (8); a KV pair is
/// key length (8) + value type (4) + at least one value byte.
const MIN_TENSOR_INFO_BYTES: u64 = 24;
const MIN_KV_BYTES: u64 = 13;

// ---------------------------------------------------------------------------------------
// Metadata values

/// GGUF metadata value type ids (the spec's `gguf_metadata_value_type`).
pub mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(GgufArray),
}

/// A metadata array. Arrays are homogeneous, so they are stored typed: an array of
/// 100 MB of u8 costs 100 MB, not 100M enum values.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
}

impl GgufValue {
    /// The GGUF value type id (see [`value_type`]).
    pub fn type_id(&self) -> u32 {
        use value_type as t;
        match self {
            GgufValue::U8(_) => t::U8,
            GgufValue::I8(_) => t::I8,
            GgufValue::U16(_) => t::U16,
            GgufValue::I16(_) => t::I16,
            GgufValue::U32(_) => t::U32,
            GgufValue::I32(_) => t::I32,
            GgufValue::U64(_) => t::U64,
            GgufValue::I64(_) => t::I64,
            GgufValue::F32(_) => t::F32,
            GgufValue::F64(_) => t::F64,
            GgufValue::Bool(_) => t::BOOL,
            GgufValue::String(_) => t::STRING,
            GgufValue::Array(_) => t::ARRAY,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::Array(_) => "array",
            other => type_name(other.type_id()),
        }
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(x) => Some(x.into()),
            GgufValue::U16(x) => Some(x.into()),
            GgufValue::U32(x) => Some(x.into()),
            GgufValue::U64(x) => Some(x),
            GgufValue::I8(x) => u64::try_from(x).ok(),
            GgufValue::I16(x) => u64::try_from(x).ok(),
            GgufValue::I32(x) => u64::try_from(x).ok(),
            GgufValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(x) => Some(x.into()),
            GgufValue::I16(x) => Some(x.into()),
            GgufValue::I32(x) => Some(x.into()),
            GgufValue::I64(x) => Some(x),
            _ => self.as_u64().and_then(|x| i64::try_from(x).ok()),
        }
    }

    /// f32 or f64 (narrowed); writers sometimes store float hyperparameters as f64.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(x) => Some(x),
            GgufValue::F64(x) => Some(x as f32),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl GgufArray {
    /// The GGUF value type id of the elements.
    pub fn elem_type_id(&self) -> u32 {
        use value_type as t;
        match self {
            GgufArray::U8(_) => t::U8,
            GgufArray::I8(_) => t::I8,
            GgufArray::U16(_) => t::U16,
            GgufArray::I16(_) => t::I16,
            GgufArray::U32(_) => t::U32,
            GgufArray::I32(_) => t::I32,
            GgufArray::U64(_) => t::U64,
            GgufArray::I64(_) => t::I64,
            GgufArray::F32(_) => t::F32,
            GgufArray::F64(_) => t::F64,
            GgufArray::Bool(_) => t::BOOL,
            GgufArray::String(_) => t::STRING,
            GgufArray::Array(_) => t::ARRAY,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::F64(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Name of a GGUF value type id, for messages.
pub fn type_name(id: u32) -> &'static str {
    use value_type as t;
    match id {
        t::U8 => "u8",
        t::I8 => "i8",
        t::U16 => "u16",
        t::I16 => "i16",
        t::U32 => "u32",
        t::I32 => "i32",
        t::F32 => "f32",
        t::BOOL => "bool",
        t::STRING => "string",
        t::ARRAY => "array",
        t::U64 => "u64",
        t::I64 => "i64",
        t::F64 => "f64",
        _ => "unknown",
    }
}

/// Fixed encoded size of a scalar value type (`None` for string, array, unknown).
fn scalar_size(id: u32) -> Option<usize> {
    use value_type as t;
    match id {
        t::U8 | t::I8 | t::BOOL => Some(1),
        t::U16 | t::I16 => Some(2),
        t::U32 | t::I32 | t::F32 => Some(4),
        t::U64 | t::I64 | t::F64 => Some(8),
        _ => None,
    }
}

/// Smallest encoding of one array element of type `id`: strings carry an 8-byte length,
/// nested arrays a 4-byte type and an 8-byte count.
fn min_elem_size(id: u32) -> Option<u64> {
    match id {
        value_type::STRING => Some(8),
        value_type::ARRAY => Some(12),
        other => scalar_size(other).map(|s| s as u64),
    }
}

// ---------------------------------------------------------------------------------------
// ggml tensor types

/// A ggml tensor type id as stored in a tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(pub u32);

struct TypeInfo {
    id: u32,
    name: &'static str,
    block_elems: u64,
    block_bytes: u64,
}

const fn ty(id: u32, name: &'static str, block_elems: u64, block_bytes: u64) -> TypeInfo {
    TypeInfo {
        id,
        name,
        block_elems,
        block_bytes,
    }
}

/// Every ggml type llama.cpp writes (gguf-py's `GGML_QUANT_SIZES`). Knowing the sizes
/// of types we cannot compute with still lets us validate a file's layout and describe
/// it; only [`GgmlType::dtype`] decides what the runtime supports.
const GGML_TYPES: &[TypeInfo] = &[
    ty(0, "f32", 1, 4),
    ty(1, "f16", 1, 2),
    ty(2, "q4_0", 32, 18),
    ty(3, "q4_1", 32, 20),
    ty(6, "q5_0", 32, 22),
    ty(7, "q5_1", 32, 24),
    ty(8, "q8_0", 32, 34),
    ty(9, "q8_1", 32, 40),
    ty(10, "q2_k", 256, 84),
    ty(11, "q3_k", 256, 110),
    ty(12, "q4_k", 256, 144),
    ty(13, "q5_k", 256, 176),
    ty(14, "q6_k", 256, 210),
    ty(15, "q8_k", 256, 292),
    ty(16, "iq2_xxs", 256, 66),
    ty(17, "iq2_xs", 256, 74),
    ty(18, "iq3_xxs", 256, 98),
    ty(19, "iq1_s", 256, 50),
    ty(20, "iq4_nl", 32, 18),
    ty(21, "iq3_s", 256, 110),
    ty(22, "iq2_s", 256, 82),
    ty(23, "iq4_xs", 256, 136),
    ty(24, "i8", 1, 1),
    ty(25, "i16", 1, 2),
    ty(26, "i32", 1, 4),
    ty(27, "i64", 1, 8),
    ty(28, "f64", 1, 8),
    ty(29, "iq1_m", 256, 56),
    ty(30, "bf16", 1, 2),
    ty(34, "tq1_0", 256, 54),
    ty(35, "tq2_0", 256, 66),
    ty(39, "mxfp4", 32, 17),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const BF16: GgmlType = GgmlType(30);

    fn info(self) -> Option<&'static TypeInfo> {
        GGML_TYPES.iter().find(|t| t.id == self.0)
    }

    /// llama.cpp's name (`q4_1`), or `None` for an id this reader does not know.
    pub fn name(self) -> Option<&'static str> {
        self.info().map(|t| t.name)
    }

    /// The runtime dtype, for the types the kernels implement.
    pub fn dtype(self) -> Option<DType> {
        Some(match self.0 {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            8 => DType::Q8_0,
            30 => DType::BF16,
            _ => return None,
        })
    }

    /// (values per block, bytes per block) for known types.
    pub fn block(self) -> Option<(u64, u64)> {
        self.info().map(|t| (t.block_elems, t.block_bytes))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "ggml type {}", self.0),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The file

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
        Parser {
            r: Reader {
                buf: bytes,
                pos: 0,
                file: file_name,
            },
        }
        .file()
    }

    /// Maps and parses a file; the mapping is dropped (use [`load`] to keep tensors).
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
    fn require_usize(&self, key: &str) -> Result<usize> {
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

    fn optional_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.require_usize(key).map(Some),
        }
    }

    fn optional_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f32().map(Some).ok_or_else(|| {
                bad_config(key, format!("expected a float, found {}", v.type_name()))
            }),
        }
    }

    fn optional_token_id(&self, key: &str) -> Result<Option<u32>> {
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

fn bad_config(field: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Parsing

/// A bounds-checked little-endian cursor. Every read either returns bytes that exist or
/// a `Truncated` error saying what was being read.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    fn truncated(&self, what: String, needed: u64) -> ModelError {
        ModelError::Truncated {
            file: self.file.into(),
            what,
            offset: self.pos as u64,
            needed,
            len: self.len(),
        }
    }

    fn lying(&self, field: String, detail: String) -> ModelError {
        ModelError::LyingHeader {
            file: self.file.into(),
            field,
            detail,
        }
    }

    fn take(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(self.truncated(what(), n as u64)),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Checks that `count` items of at least `min_size` bytes each could still be read,
    /// before anything is reserved for them. More than the whole file could hold is a
    /// lie; more than what is left is a truncation.
    fn check_count(
        &self,
        count: u64,
        min_size: u64,
        field: impl FnOnce() -> String,
    ) -> Result<usize> {
        let needed = count.checked_mul(min_size);
        match needed {
            Some(n) if n <= self.remaining() => Ok(usize::try_from(count).unwrap_or(usize::MAX)),
            Some(n) if n <= self.len() => Err(self.truncated(field(), n)),
            _ => {
                let detail = format!(
                    "{count} items of at least {min_size} bytes cannot fit in a {}-byte file",
                    self.len()
                );
                Err(self.lying(field(), detail))
            }
        }
    }

    /// A GGUF string: u64 length, then UTF-8 bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(|| format!("length of {}", what()))?;
        let n = self.check_count(len, 1, || format!("length of {}", what()))?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ModelError::BadFormat {
            file: self.file.into(),
            format: "GGUF",
            detail: format!("{} is not valid UTF-8", what()),
        })
    }
}

/// Copies a slice whose length the caller guarantees (from `chunks_exact`) into an array.
fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(c);
    a
}

struct Parser<'a> {
    r: Reader<'a>,
}

impl Parser<'_> {
    fn bad_format(&self, detail: String) -> ModelError {
        ModelError::BadFormat {
            file: self.r.file.into(),
            format: "GGUF",
            detail,
        }
    }

    fn file(mut self) -> Result<GgufFile> {
        let version = self.header()?;
        let tensor_count = self.r.u64(|| "tensor_count".into())?;
        let kv_count = self.r.u64(|| "kv_count".into())?;
        self.check_header_counts(tensor_count, kv_count)?;

        let metadata = self.metadata(kv_count)?;
        let alignment = self.alignment(&metadata)?;
        let mut tensors = self.tensor_infos(tensor_count)?;
        let data_offset = align_up(self.r.pos as u64, alignment).ok_or_else(|| {
            self.r
                .lying("data section offset".into(), "overflows".into())
        })?;
        self.place_tensors(&mut tensors, data_offset, alignment)?;
        Ok(GgufFile {
            file_name: self.r.file.into(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_len: self.r.len(),
        })
    }

    /// Magic and version; returns the version.
    fn header(&mut self) -> Result<u32> {
        if self.r.buf.len() < 8 {
            return Err(self.bad_format(format!(
                "file is only {} bytes, shorter than a GGUF header",
                self.r.buf.len()
            )));
        }
        let magic: [u8; 4] = self.r.array(|| "magic".into())?;
        if magic != GGUF_MAGIC {
            return Err(self.bad_format(format!("magic is {magic:02x?}, expected \"GGUF\"")));
        }
        let version = self.r.u32(|| "version".into())?;
        match version {
            2 | 3 => Ok(version),
            1 => Err(self.bad_format("GGUF v1 (32-bit counts) is not supported".into())),
            v if matches!(v.swap_bytes(), 2 | 3) => {
                Err(self.bad_format("big-endian GGUF is not supported".into()))
            }
            v => Err(self.bad_format(format!("unsupported GGUF version {v}"))),
        }
    }

    /// Each tensor info and KV pair takes a minimum number of bytes, so counts that the
    /// rest of the file could not possibly hold are lies, caught before any loop.
    fn check_header_counts(&self, tensor_count: u64, kv_count: u64) -> Result<()> {
        let remaining = self.r.remaining();
        let tensor_bytes = tensor_count
            .checked_mul(MIN_TENSOR_INFO_BYTES)
            .filter(|&n| n <= remaining);
        let Some(tensor_bytes) = tensor_bytes else {
            let detail = format!(
                "{tensor_count} tensor infos cannot fit in the {remaining} bytes after the header"
            );
            return Err(self.r.lying("tensor_count".into(), detail));
        };
        let kv_bytes = kv_count
            .checked_mul(MIN_KV_BYTES)
            .filter(|&n| n <= remaining - tensor_bytes);
        if kv_bytes.is_none() {
            let detail = format!("{kv_count} metadata entries (plus {tensor_count} tensor infos) cannot fit in the {remaining} bytes after the header");
            return Err(self.r.lying("kv_count".into(), detail));
        }
        Ok(())
    }

    fn metadata(&mut self, kv_count: u64) -> Result<BTreeMap<String, GgufValue>> {
        let mut metadata = BTreeMap::new();
        for i in 0..kv_count {
            let key = self.r.string(&|| format!("key of metadata entry #{i}"))?;
            let ty = self
                .r
                .u32(|| format!("value type of metadata key `{key}`"))?;
            let value = self.value(ty, &key)?;
            if metadata.contains_key(&key) {
                return Err(self.r.lying(key, "duplicate metadata key".into()));
            }
            metadata.insert(key, value);
        }
        Ok(metadata)
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<GgufValue> {
        use value_type as t;
        let what = || format!("value of metadata key `{key}`");
        Ok(match ty {
            t::U8 => GgufValue::U8(u8::from_le_bytes(self.r.array(what)?)),
            t::I8 => GgufValue::I8(i8::from_le_bytes(self.r.array(what)?)),
            t::U16 => GgufValue::U16(u16::from_le_bytes(self.r.array(what)?)),
            t::I16 => GgufValue::I16(i16::from_le_bytes(self.r.array(what)?)),
            t::U32 => GgufValue::U32(u32::from_le_bytes(self.r.array(what)?)),
            t::I32 => GgufValue::I32(i32::from_le_bytes(self.r.array(what)?)),
            t::U64 => GgufValue::U64(u64::from_le_bytes(self.r.array(what)?)),
            t::I64 => GgufValue::I64(i64::from_le_bytes(self.r.array(what)?)),
            t::F32 => GgufValue::F32(f32::from_le_bytes(self.r.array(what)?)),
            t::F64 => GgufValue::F64(f64::from_le_bytes(self.r.array(what)?)),
            t::BOOL => GgufValue::Bool(self.r.array::<1>(what)?[0] != 0),
            t::STRING => GgufValue::String(self.r.string(&what)?),
            t::ARRAY => GgufValue::Array(self.array_value(key, 1)?),
            other => {
                return Err(self.r.lying(
                    format!("metadata key `{key}`"),
                    format!("unknown value type {other}"),
                ))
            }
        })
    }

    /// An array: element type, u64 count, elements. `depth` counts nesting levels.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<GgufArray> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.r.lying(
                format!("metadata key `{key}`"),
                format!("arrays nested more than {MAX_ARRAY_DEPTH} deep"),
            ));
        }
        let elem = self
            .r
            .u32(|| format!("array element type of metadata key `{key}`"))?;
        let count = self
            .r
            .u64(|| format!("array length of metadata key `{key}`"))?;
        let Some(min) = min_elem_size(elem) else {
            return Err(self.r.lying(
                format!("metadata key `{key}`"),
                format!("unknown array element type {elem}"),
            ));
        };
        let n = self.r.check_count(count, min, || {
            format!("array length of metadata key `{key}`")
        })?;
        if let Some(size) = scalar_size(elem) {
            // `check_count` proved n * size <= remaining, so this cannot overflow.
            let raw = self
                .r
                .take(n * size, || format!("array of metadata key `{key}`"))?;
            return Ok(scalar_array(elem, raw));
        }
        if elem == value_type::STRING {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(
                    self.r
                        .string(&|| format!("element #{i} of metadata key `{key}`"))?,
                );
            }
            return Ok(GgufArray::String(v));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.array_value(key, depth + 1)?);
        }
        Ok(GgufArray::Array(v))
    }

    fn alignment(&self, metadata: &BTreeMap<String, GgufValue>) -> Result<u64> {
        let Some(v) = metadata.get("general.alignment") else {
            return Ok(DEFAULT_ALIGNMENT);
        };
        match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= MAX_ALIGNMENT => Ok(a),
            _ => Err(self.r.lying(
                "general.alignment".into(),
                format!("{v:?} is not a power of two in 1..={MAX_ALIGNMENT}"),
            )),
        }
    }

    fn tensor_infos(&mut self, tensor_count: u64) -> Result<Vec<GgufTensorInfo>> {
        // `check_header_counts` bounded tensor_count by the file size.
        let mut tensors = Vec::with_capacity(usize::try_from(tensor_count).unwrap_or(0));
        let mut names = HashSet::new();
        for i in 0..tensor_count {
            let t = self.tensor_info(i)?;
            if !names.insert(t.name.clone()) {
                return Err(self.r.lying(
                    format!("tensor `{}`", t.name),
                    "duplicate tensor name".into(),
                ));
            }
            tensors.push(t);
        }
        Ok(tensors)
    }

    fn tensor_info(&mut self, i: u64) -> Result<GgufTensorInfo> {
        let name = self.r.string(&|| format!("name of tensor #{i}"))?;
        let n_dims = self.r.u32(|| format!("n_dims of tensor `{name}`"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.r.lying(
                format!("tensor `{name}` n_dims"),
                format!("{n_dims} is outside 1..={MAX_DIMS}"),
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let x = self.r.u64(|| format!("dimension {d} of tensor `{name}`"))?;
            if x == 0 {
                return Err(self.r.lying(
                    format!("tensor `{name}` shape"),
                    format!("dimension {d} is 0"),
                ));
            }
            ne.push(x);
        }
        let ggml_type = GgmlType(self.r.u32(|| format!("type of tensor `{name}`"))?);
        let offset = self.r.u64(|| format!("offset of tensor `{name}`"))?;
        let size = self.tensor_size(&name, ggml_type, &ne)?;
        Ok(GgufTensorInfo {
            name,
            ne,
            ggml_type,
            offset,
            file_offset: 0,
            size,
        })
    }

    /// Bytes of a tensor's data: whole blocks along `ne[0]`, checked for overflow.
    fn tensor_size(&self, name: &str, ggml_type: GgmlType, ne: &[u64]) -> Result<u64> {
        let Some((block_elems, block_bytes)) = ggml_type.block() else {
            return Err(ModelError::UnsupportedDType {
                tensor: name.into(),
                dtype: ggml_type.to_string(),
            });
        };
        let row = ne.first().copied().unwrap_or(1);
        if row % block_elems != 0 {
            let detail = format!(
                "row length {row} is not a multiple of the {ggml_type} block size {block_elems}"
            );
            return Err(self.r.lying(format!("tensor `{name}` shape"), detail));
        }
        let elems = ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        elems
            .and_then(|e| (e / block_elems).checked_mul(block_bytes))
            .ok_or_else(|| {
                self.r.lying(
                    format!("tensor `{name}` shape"),
                    format!("{ne:?} overflows"),
                )
            })
    }

    /// Resolves each tensor's absolute range and checks it: aligned, inside the file,
    /// and not overlapping another tensor.
    fn place_tensors(
        &self,
        tensors: &mut [GgufTensorInfo],
        data_offset: u64,
        alignment: u64,
    ) -> Result<()> {
        let len = self.r.len();
        for t in tensors.iter_mut() {
            if t.offset % alignment != 0 {
                return Err(self.r.lying(
                    format!("tensor `{}` offset", t.name),
                    format!(
                        "{} is not a multiple of the alignment {alignment}",
                        t.offset
                    ),
                ));
            }
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(t.size));
            match (start, end) {
                (Some(start), Some(end)) if end <= len => t.file_offset = start,
                _ => {
                    let what = format!("data of tensor `{}`", t.name);
                    let offset = start.unwrap_or(u64::MAX);
                    return Err(ModelError::Truncated {
                        file: self.r.file.into(),
                        what,
                        offset,
                        needed: t.size,
                        len,
                    });
                }
            }
        }
        let mut order: Vec<&GgufTensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for pair in order.windows(2) {
            if let [a, b] = pair {
                // Both ends were checked against the file length above: no overflow.
                if a.offset + a.size > b.offset {
                    return Err(self.r.lying(
                        format!("tensor `{}` offset", b.name),
                        format!("overlaps tensor `{}`", a.name),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn scalar_array(elem: u32, raw: &[u8]) -> GgufArray {
    use value_type as t;
    macro_rules! conv {
        ($variant:ident, $ty:ty) => {
            GgufArray::$variant(
                raw.chunks_exact(std::mem::size_of::<$ty>())
                    .map(|c| <$ty>::from_le_bytes(le(c)))
                    .collect(),
            )
        };
    }
    match elem {
        t::U8 => GgufArray::U8(raw.to_vec()),
        t::I8 => conv!(I8, i8),
        t::U16 => conv!(U16, u16),
        t::I16 => conv!(I16, i16),
        t::U32 => conv!(U32, u32),
        t::I32 => conv!(I32, i32),
        t::U64 => conv!(U64, u64),
        t::I64 => conv!(I64, i64),
        t::F32 => conv!(F32, f32),
        t::F64 => conv!(F64, f64),
        // Only BOOL is left among the scalar types `scalar_size` admits.
        _ => GgufArray::Bool(raw.iter().map(|&b| b != 0).collect()),
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? / alignment * alignment)
}

// ---------------------------------------------------------------------------------------
// The llama loader

/// Loads a llama-architecture GGUF: config from `llama.*` metadata, every tensor
/// registered under its HF name (q/k rows un-permuted), shapes checked against the config.
pub fn load(path: &Path) -> Result<(LlamaConfig, WeightStore, GgufFile)> {
    let map = map_file(path)?;
    let file = GgufFile::parse(&map, &path.display().to_string())?;
    let cfg = llama_config(&file)?;
    let store = llama_weights(&file, &cfg, map)?;
    check_llama_shapes(&cfg, &store)?;
    Ok((cfg, store, file))
}

/// `LlamaConfig` from the `llama.*` and `tokenizer.ggml.*` metadata, validated.
pub fn llama_config(f: &GgufFile) -> Result<LlamaConfig> {
    match f.get_str("general.architecture") {
        Some("llama") => {}
        Some(other) => {
            return Err(bad_config(
                "general.architecture",
                format!("`{other}` is not supported (only llama)"),
            ))
        }
        None => {
            return Err(bad_config(
                "general.architecture",
                "missing or not a string",
            ))
        }
    }
    let hidden_size = f.require_usize("llama.embedding_length")?;
    let num_attention_heads = f.require_usize("llama.attention.head_count")?;
    let head_dim = match f.optional_usize("llama.attention.key_length")? {
        Some(h) => h,
        None => match f.optional_usize("llama.rope.dimension_count")? {
            Some(h) => h,
            None => hidden_size.checked_div(num_attention_heads).unwrap_or(0),
        },
    };
    let vocab_size = match f.optional_usize("llama.vocab_size")? {
        Some(v) => v,
        None => f
            .get_str_array("tokenizer.ggml.tokens")
            .map(<[String]>::len)
            .ok_or_else(|| {
                bad_config(
                    "llama.vocab_size",
                    "missing, and no tokenizer.ggml.tokens to count",
                )
            })?,
    };
    let max_position_embeddings = f.require_usize("llama.context_length")?;
    let eos = f.optional_token_id("tokenizer.ggml.eos_token_id")?;
    // Chat models end turns with EOT; generation should stop at either.
    let eot = f.optional_token_id("tokenizer.ggml.eot_token_id")?;
    let mut eos_token_ids: Vec<u32> = eos.into_iter().collect();
    eos_token_ids.extend(eot.filter(|t| Some(*t) != eos));
    let cfg = LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: f.require_usize("llama.feed_forward_length")?,
        num_hidden_layers: f.require_usize("llama.block_count")?,
        num_attention_heads,
        num_key_value_heads: f
            .optional_usize("llama.attention.head_count_kv")?
            .unwrap_or(num_attention_heads),
        head_dim,
        rms_norm_eps: f
            .optional_f32("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| bad_config("llama.attention.layer_norm_rms_epsilon", "missing"))?,
        rope_theta: f.optional_f32("llama.rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling: rope_scaling(f, max_position_embeddings)?,
        max_position_embeddings,
        tie_word_embeddings: f.tensor("output.weight").is_none(),
        attention_bias: f.tensors.iter().any(|t| {
            t.name.starts_with("blk.") && t.name.ends_with(".bias") && t.name.contains(".attn_")
        }),
        embed_layer_norm: None,
        bos_token_id: f.optional_token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// `llama.rope.scaling.*` (llama.cpp's names), or the older `llama.rope.scale_linear`.
fn rope_scaling(f: &GgufFile, context_length: usize) -> Result<RopeScaling> {
    let factor = |key: &str| -> Result<f32> {
        f.optional_f32(key)?
            .filter(|x| *x > 0.0 && x.is_finite())
            .ok_or_else(|| bad_config(key, "missing or not positive"))
    };
    let kind = match f.get("llama.rope.scaling.type") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| bad_config("llama.rope.scaling.type", "not a string"))?,
        ),
    };
    match kind {
        None if f.get("llama.rope.scale_linear").is_some() => Ok(RopeScaling::Linear {
            factor: factor("llama.rope.scale_linear")?,
        }),
        None | Some("none") => Ok(RopeScaling::None),
        Some("linear") => Ok(RopeScaling::Linear {
            factor: factor("llama.rope.scaling.factor")?,
        }),
        Some("dynamic") => Ok(RopeScaling::DynamicNtk {
            factor: factor("llama.rope.scaling.factor")?,
            original_max_position: f
                .optional_usize("llama.rope.scaling.original_context_length")?
                .unwrap_or(context_length),
        }),
        Some(other) => Err(bad_config(
            "llama.rope.scaling.type",
            format!("rope scaling `{other}` is not supported"),
        )),
    }
}

/// Where a llama GGUF tensor goes in the HF naming.
enum Mapping {
    Hf { name: String, unpermute: bool },
    Unsupported(&'static str),
    Unknown,
}

fn hf_mapping(gguf_name: &str, n_layers: usize) -> Mapping {
    let hf = |name: String, unpermute| Mapping::Hf { name, unpermute };
    match gguf_name {
        "token_embd.weight" => return hf("model.embed_tokens.weight".into(), false),
        "output_norm.weight" => return hf("model.norm.weight".into(), false),
        "output.weight" => return hf("lm_head.weight".into(), false),
        "rope_freqs.weight" => {
            return Mapping::Unsupported(
                "per-dimension RoPE frequency factors (Llama 3.1 style) are not supported",
            )
        }
        _ => {}
    }
    let Some((layer, suffix)) = gguf_name
        .strip_prefix("blk.")
        .and_then(|rest| rest.split_once('.'))
    else {
        return Mapping::Unknown;
    };
    // Digits only: `parse` would also accept "+1", which would alias layer 1.
    let layer = match layer
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| layer.parse::<usize>().ok())
        .flatten()
    {
        Some(l) if l < n_layers => l,
        _ => return Mapping::Unknown,
    };
    let (hf_suffix, unpermute) = match suffix {
        "attn_q.weight" => ("self_attn.q_proj.weight", true),
        "attn_k.weight" => ("self_attn.k_proj.weight", true),
        "attn_v.weight" => ("self_attn.v_proj.weight", false),
        "attn_output.weight" => ("self_attn.o_proj.weight", false),
        "attn_v.bias" => ("self_attn.v_proj.bias", false),
        "attn_output.bias" => ("self_attn.o_proj.bias", false),
        // Un-permuting a 1-D bias is not something the WeightStore's row permutation
        // describes; no llama GGUF we target has one.
        "attn_q.bias" | "attn_k.bias" => {
            return Mapping::Unsupported(
                "q/k projection biases (row-permuted in GGUF) are not supported",
            )
        }
        "ffn_gate.weight" => ("mlp.gate_proj.weight", false),
        "ffn_up.weight" => ("mlp.up_proj.weight", false),
        "ffn_down.weight" => ("mlp.down_proj.weight", false),
        "attn_norm.weight" => ("input_layernorm.weight", false),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", false),
        _ => return Mapping::Unknown,
    };
    hf(format!("model.layers.{layer}.{hf_suffix}"), unpermute)
}

/// Registers every tensor of `file` (mapped as `map`) under its HF name.
fn llama_weights(file: &GgufFile, cfg: &LlamaConfig, map: Arc<Mmap>) -> Result<WeightStore> {
    let mut store = WeightStore::new();
    let file_idx = store.add_file(map);
    for t in &file.tensors {
        let dtype = t.dtype()?;
        let (name, unpermute) = match hf_mapping(&t.name, cfg.num_hidden_layers) {
            Mapping::Hf { name, unpermute } => (name, unpermute),
            Mapping::Unsupported(why) => return Err(bad_config(&t.name, why)),
            Mapping::Unknown => {
                let detail = format!(
                    "unexpected tensor `{}` for a {}-layer llama",
                    t.name, cfg.num_hidden_layers
                );
                return Err(ModelError::BadFormat {
                    file: file.file_name.clone(),
                    format: "llama GGUF",
                    detail,
                });
            }
        };
        let to_usize = |x: u64| {
            usize::try_from(x).map_err(|_| ModelError::LyingHeader {
                file: file.file_name.clone(),
                field: format!("tensor `{}` offset", t.name),
                detail: "does not fit this platform's address space".into(),
            })
        };
        let shape = t.shape();
        // A q/k matrix whose rows are not whole heads cannot be un-permuted; register it
        // as stored so that `check_llama_shapes` reports the shape the config expects.
        let whole_heads = shape.len() == 2 && shape[0] % cfg.head_dim == 0;
        let entry = WeightEntry {
            fact: TensorFact::new(dtype, shape),
            file: file_idx,
            offset: to_usize(t.file_offset)?,
            len: to_usize(t.size)?,
            unpermute: (unpermute && whole_heads).then_some(UnpermuteRope {
                head_dim: cfg.head_dim,
            }),
        };
        store.insert(name, entry, &file.file_name)?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testfiles::{self, GgufWriter, TinyLlama};

    fn parse(bytes: &[u8]) -> Result<GgufFile> {
        GgufFile::parse(bytes, "test.gguf")
    }

    #[test]
    fn metadata_of_every_type_round_trips() {
        let nested = GgufArray::Array(vec![
            GgufArray::I32(vec![1, -2]),
            GgufArray::String(vec!["x".into()]),
            GgufArray::Array(vec![GgufArray::Bool(vec![true])]),
        ]);
        let values = vec![
            ("u8", GgufValue::U8(200)),
            ("i8", GgufValue::I8(-5)),
            ("u16", GgufValue::U16(60000)),
            ("i16", GgufValue::I16(-30000)),
            ("u32", GgufValue::U32(4_000_000_000)),
            ("i32", GgufValue::I32(-7)),
            ("u64", GgufValue::U64(1 << 50)),
            ("i64", GgufValue::I64(-(1 << 50))),
            ("f32", GgufValue::F32(1.5)),
            ("f64", GgufValue::F64(-2.25)),
            ("bool", GgufValue::Bool(true)),
            ("str", GgufValue::String("héllo".into())),
            ("arr.u8", GgufValue::Array(GgufArray::U8(vec![1, 2, 3]))),
            ("arr.f64", GgufValue::Array(GgufArray::F64(vec![0.5]))),
            (
                "arr.str",
                GgufValue::Array(GgufArray::String(vec!["a".into(), "".into()])),
            ),
            ("arr.empty", GgufValue::Array(GgufArray::U64(vec![]))),
            ("arr.nested", GgufValue::Array(nested)),
        ];
        let mut w = GgufWriter::new();
        for (k, v) in &values {
            w.kv(k, v.clone());
        }
        let (bytes, _) = w.build();
        let f = parse(&bytes).unwrap();
        assert_eq!(f.metadata.len(), values.len());
        for (k, v) in &values {
            assert_eq!(f.get(k), Some(v), "{k}");
        }
        assert_eq!(f.get_u64("u8"), Some(200));
        assert_eq!(f.get_u64("i32"), None, "negative ints are not u64");
        assert_eq!(f.get_i64("i64"), Some(-(1 << 50)));
        assert_eq!(f.get_f32("f64"), Some(-2.25));
        assert_eq!(f.get_str("str"), Some("héllo"));
        assert_eq!(f.get_str_array("arr.str").map(<[String]>::len), Some(2));
        assert!(f.tensors.is_empty());
    }

    #[test]
    fn version_2_is_accepted_and_1_refused() {
        let mut w = GgufWriter::new();
        w.version = 2;
        assert_eq!(parse(&w.build().0).unwrap().version, 2);
        w.version = 1;
        assert!(matches!(
            parse(&w.build().0),
            Err(ModelError::BadFormat { .. })
        ));
    }

    #[test]
    fn tiny_llama_loads_with_config_and_exact_values() {
        let tiny = TinyLlama::default();
        let path = testfiles::temp_path("tiny_llama.gguf");
        std::fs::write(&path, tiny.gguf().0).unwrap();
        let (cfg, store, file) = load(&path).unwrap();
        std::fs::remove_file(&path).ok();

        assert_eq!(
            (
                cfg.num_hidden_layers,
                cfg.hidden_size,
                cfg.intermediate_size
            ),
            (tiny.layers, tiny.hidden, tiny.inter)
        );
        assert_eq!(
            (
                cfg.num_attention_heads,
                cfg.num_key_value_heads,
                cfg.head_dim
            ),
            (tiny.heads, tiny.kv_heads, tiny.head_dim)
        );
        assert_eq!(cfg.vocab_size, tiny.vocab);
        assert_eq!(cfg.rope_theta, 100000.0);
        assert_eq!(cfg.rms_norm_eps, 1e-5);
        assert_eq!(cfg.max_position_embeddings, 256);
        assert!(cfg.tie_word_embeddings);
        assert_eq!(
            (cfg.bos_token_id, cfg.eos_token_ids.clone()),
            (Some(1), vec![2])
        );
        assert!(!store.contains("lm_head.weight"));
        assert_eq!(
            file.summary(),
            format!(
                "GGUF v3, {} tensors: q4_1 x{}, f32 x{}, q8_0 x{}",
                2 + 9 * tiny.layers,
                5 * tiny.layers,
                3 * tiny.layers + 1,
                tiny.layers + 1
            )
        );

        // Q8_0 embedding, no permutation: exact.
        let emb = store.to_f32("model.embed_tokens.weight").unwrap();
        assert_eq!(emb.shape(), [tiny.vocab, tiny.hidden]);
        let emb = emb.as_f32().unwrap();
        for r in 0..tiny.vocab {
            for c in 0..tiny.hidden {
                assert_eq!(
                    emb[r * tiny.hidden + c],
                    testfiles::pattern_value(GgmlType::Q8_0, r, c),
                    "embed[{r},{c}]"
                );
            }
        }
    }

    /// HF row `d` of each head is GGUF row `2 * (d % (hd/2)) + d / (hd/2)`, written out
    /// here independently of `UnpermuteRope`.
    fn gguf_row_of_hf_row(r: usize, head_dim: usize) -> usize {
        let (head, d) = (r / head_dim, r % head_dim);
        let half = head_dim / 2;
        head * head_dim + if d < half { 2 * d } else { 2 * (d - half) + 1 }
    }

    #[test]
    fn q_and_k_rows_are_unpermuted() {
        let tiny = TinyLlama::default();
        let path = testfiles::temp_path("tiny_llama_perm.gguf");
        std::fs::write(&path, tiny.gguf().0).unwrap();
        let (cfg, store, _) = load(&path).unwrap();
        std::fs::remove_file(&path).ok();

        // q is F32, k is Q4_1 in the tiny model: both must come out in HF row order.
        for (name, ty, rows) in [
            ("q_proj", GgmlType::F32, cfg.q_width()),
            ("k_proj", GgmlType::Q4_1, cfg.kv_width()),
        ] {
            for layer in 0..tiny.layers {
                let t = store
                    .to_f32(&format!("model.layers.{layer}.self_attn.{name}.weight"))
                    .unwrap();
                assert_eq!(t.shape(), [rows, tiny.hidden]);
                let v = t.as_f32().unwrap();
                for r in 0..rows {
                    let src = gguf_row_of_hf_row(r, tiny.head_dim);
                    for c in 0..tiny.hidden {
                        assert_eq!(
                            v[r * tiny.hidden + c],
                            testfiles::pattern_value(ty, src, c),
                            "{name} row {r} col {c}"
                        );
                    }
                }
            }
        }
        // Spot checks of the permutation itself (head_dim 16, half 8).
        assert_eq!(gguf_row_of_hf_row(1, 16), 2);
        assert_eq!(gguf_row_of_hf_row(8, 16), 1);
        assert_eq!(gguf_row_of_hf_row(16 + 9, 16), 16 + 3);
        // v is not permuted.
        let v = store
            .to_f32("model.layers.0.self_attn.v_proj.weight")
            .unwrap();
        assert_eq!(
            v.as_f32().unwrap()[tiny.hidden],
            testfiles::pattern_value(TinyLlama::V_TYPE, 1, 0)
        );
    }

    #[test]
    fn untied_output_becomes_lm_head() {
        let tiny = TinyLlama::default();
        let mut w = tiny.gguf_writer();
        w.tensor(
            "output.weight",
            &[tiny.hidden as u64, tiny.vocab as u64],
            GgmlType::F32,
            testfiles::pattern_bytes(GgmlType::F32, tiny.vocab, tiny.hidden),
        );
        let path = testfiles::temp_path("tiny_llama_untied.gguf");
        std::fs::write(&path, w.build().0).unwrap();
        let (cfg, store, _) = load(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(!cfg.tie_word_embeddings);
        assert_eq!(
            store.fact("lm_head.weight").unwrap().shape,
            [tiny.vocab, tiny.hidden]
        );
    }

    #[test]
    fn unsupported_type_names_the_tensor() {
        let tiny = TinyLlama::default();
        let mut w = tiny.gguf_writer();
        w.tensor(
            "output.weight",
            &[256, tiny.vocab as u64],
            GgmlType::Q6_K,
            vec![0; 210 * tiny.vocab],
        );
        let f = parse(&w.build().0).unwrap();
        assert_eq!(
            f.tensor("output.weight").unwrap().ggml_type.to_string(),
            "q6_k"
        );
        let err = f.tensor("output.weight").unwrap().dtype().unwrap_err();
        assert!(
            matches!(&err, ModelError::UnsupportedDType { tensor, dtype } if tensor == "output.weight" && dtype == "q6_k"),
            "{err}"
        );
    }

    #[test]
    fn tokenizer_parts_come_from_metadata() {
        let f = parse(&TinyLlama::default().gguf().0).unwrap();
        let p = f.tokenizer_parts().unwrap();
        assert_eq!(p.model, "gpt2");
        assert_eq!(p.tokens.len(), TinyLlama::default().vocab);
        assert_eq!(p.token_types.len(), p.tokens.len());
        assert_eq!(
            (p.bos_token_id, p.eos_token_id, p.add_bos_token),
            (Some(1), Some(2), false)
        );
        assert_eq!(f.token_string(Some(2)), Some("<|im_end|>"));
        assert_eq!(f.token_string(Some(1_000_000)), None);
    }

    #[test]
    fn misaligned_and_overlapping_offsets_are_lies() {
        let tiny = TinyLlama::default();
        let (bytes, layout) = tiny.gguf();
        let (_, at) = layout.tensor_offset_fields[1];
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&1u64.to_le_bytes());
        assert!(
            matches!(parse(&b), Err(ModelError::LyingHeader { field, .. }) if field.contains("offset"))
        );
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
        let err = parse(&b).unwrap_err();
        assert!(
            matches!(err, ModelError::LyingHeader { .. }) && err.to_string().contains("overlaps"),
            "{err}"
        );
    }

    #[test]
    fn absurd_alignment_is_refused() {
        let mut w = GgufWriter::new();
        w.kv("general.alignment", GgufValue::U32(3));
        let err = parse(&w.build().0).unwrap_err();
        assert!(err.to_string().contains("general.alignment"), "{err}");
    }
}
